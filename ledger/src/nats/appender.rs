//! The appender: chains, signs and commits events in atomic batches.
//!
//! One task per writer owns the chain tip. Requests queue on a channel; the task takes up to
//! `max_batch` of them, chains them onto the tip, signs them in parallel and commits them as one
//! ADR-50 atomic batch whose first message expects the stream's last sequence. While a batch
//! commits, the next one fills in the channel. Outcomes:
//! - committed: every request of the batch is answered with its receipt (seq, index, hash);
//! - refused (another writer or a stray publisher got in first): re-read the stream from the
//!   leader, verify what was added, and re-chain the batch onto the new tip;
//! - unknown (ack timeout, leader election): back off, re-read the stream; any of our request ids
//!   now stored are answered from there, the rest are re-chained. The expected-sequence check
//!   makes it impossible for a late copy to be stored as well.
//!
//! A request id already in the ledger (within `dedupe_window`) is answered with the stored
//! event's receipt and not appended again. A break in the chain stops the appender for good.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::bytes32::EventHash;
use crate::ids::{KeyId, RequestId};
use crate::nats::batch::{
    BatchError, BatchOutcome, BatchPublisher, OutMsg, ERR_BATCH_DUPLICATE_MSG_ID, MAX_BATCH,
};
use crate::nats::reader::read_range;
use crate::nats::stream::{LedgerConn, StreamError};
use crate::sign::{chain_and_sign, now_ms, ChainTip, Draft, EventSigner, SignedEntry};
use crate::verify::{ChainError, ChainState, Checked};

/// Tuning of the appender.
#[derive(Clone, Debug)]
pub struct AppenderConfig {
    /// Events per atomic batch (1..=1000).
    pub max_batch: usize,
    /// How long to wait for a batch's commit reply before treating its fate as unknown.
    pub commit_timeout: Duration,
    /// Attempts per batch (refusals and unknown outcomes) before giving up.
    pub max_attempts: u32,
    /// Request ids are remembered this long (match the stream's duplicate window or more).
    pub dedupe_window: Duration,
    /// Queue length in events.
    pub queue: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        AppenderConfig {
            max_batch: 256,
            commit_timeout: Duration::from_secs(5),
            max_attempts: 50,
            dedupe_window: Duration::from_secs(600),
            queue: 16_384,
        }
    }
}

/// Where an event was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Stream sequence.
    pub seq: u64,
    /// Chain index.
    pub index: u64,
    pub hash: EventHash,
    /// The request id was already in the ledger before this call; nothing new was appended.
    pub already_present: bool,
}

/// Why an append failed. `ChainBroken` and `NotAWriter` are permanent.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("the ledger's chain is broken; appender stopped: {0}")]
    ChainBroken(ChainError),
    #[error("this writer's key is not an active enrolled writer of the ledger")]
    NotAWriter,
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    #[error("request id {0} appears twice in one call")]
    DuplicateInCall(RequestId),
    #[error("request id {0} was already used, too long ago for its receipt to be known")]
    DuplicateUnknown(RequestId),
    #[error("event of {len} bytes is too large")]
    TooLarge { len: usize },
    /// A guarded key changed since the caller read it (optimistic concurrency). `actual` is
    /// `u64::MAX` when an earlier call in the same batch changes it.
    #[error("key {key} changed concurrently (expected its last change at seq {expected}, found {actual})")]
    Conflict {
        key: KeyId,
        expected: u64,
        actual: u64,
    },
    #[error("appender stopped")]
    Stopped,
    #[error("stream: {0}")]
    Stream(String),
}

type Reply = oneshot::Sender<Result<Vec<Receipt>, AppendError>>;

struct Job {
    drafts: Vec<Draft>,
    guards: Vec<KeyGuard>,
    reply: Reply,
}

/// A precondition of an append: the key's last state-changing event
/// ([`crate::EventBody::changed_key`]) is still at `expected` (0: the key does not exist) when
/// the call's first event is chained. Checked by the appender, which alone sees the chain's true
/// order, so two writers deciding on the same key state cannot both append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGuard {
    pub key: KeyId,
    pub expected: u64,
}

/// Handle to a running appender. Cheap to clone.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts an appender over `state`, which must already be caught up with the stream
    /// (typically from [`crate::nats::replay`]). `signer` must be an active enrolled writer,
    /// unless the ledger is empty (`init` appends genesis with the root key).
    pub async fn start(
        conn: LedgerConn,
        signer: EventSigner,
        state: ChainState,
        config: AppenderConfig,
    ) -> Result<Appender, AppendError> {
        Appender::start_with(conn, signer, state, config, Recent::default()).await
    }

    async fn start_with(
        conn: LedgerConn,
        signer: EventSigner,
        state: ChainState,
        config: AppenderConfig,
        recent: Recent,
    ) -> Result<Appender, AppendError> {
        if let Some(e) = state.halted() {
            return Err(AppendError::ChainBroken(e.clone()));
        }
        let publisher = BatchPublisher::new(conn.client.clone())
            .await
            .map_err(|e| AppendError::Stream(e.to_string()))?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let task = Task {
            conn,
            signer,
            state,
            config,
            publisher,
            recent,
            broken: None,
            jobs: HashMap::new(),
            next_job: 0,
            queue: VecDeque::new(),
            presigned: None,
        };
        tokio::spawn(task.run(rx));
        Ok(Appender { tx })
    }

    /// Appends one event and waits until it is durably stored.
    pub async fn append(&self, draft: Draft) -> Result<Receipt, AppendError> {
        let mut r = self.append_all(vec![draft]).await?;
        r.pop().ok_or(AppendError::Stopped)
    }

    /// Appends several events (in order, possibly over several batches) and waits for all.
    pub async fn append_all(&self, drafts: Vec<Draft>) -> Result<Vec<Receipt>, AppendError> {
        self.append_guarded(drafts, Vec::new()).await
    }

    /// Appends several events if every guard holds when the first is chained; otherwise
    /// nothing is appended and the call fails with [`AppendError::Conflict`]. The events of one
    /// call are kept in one atomic batch when they fit.
    pub async fn append_guarded(
        &self,
        drafts: Vec<Draft>,
        guards: Vec<KeyGuard>,
    ) -> Result<Vec<Receipt>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                drafts,
                guards,
                reply,
            })
            .await
            .map_err(|_| AppendError::Stopped)?;
        rx.await.map_err(|_| AppendError::Stopped)?
    }
}

/// Request ids seen recently, with their receipts.
#[derive(Default)]
struct Recent {
    by_id: HashMap<RequestId, Receipt>,
    order: VecDeque<(u64, RequestId)>,
    /// Per key, the sequence of its last state-changing event (for [`KeyGuard`]s).
    touched: HashMap<KeyId, u64>,
}

impl Recent {
    fn insert(&mut self, time_ms: u64, id: RequestId, r: Receipt) {
        if self.by_id.insert(id.clone(), r).is_none() {
            self.order.push_back((time_ms, id));
        }
    }
    /// Remembers a verified event of the chain (ours or another writer's).
    fn remember(&mut self, v: &crate::verify::VerifiedEvent) {
        let e = v.event();
        let r = Receipt {
            seq: v.seq(),
            index: e.index,
            hash: v.hash(),
            already_present: true,
        };
        self.insert(e.time_ms, e.request_id.clone(), r);
        self.touch(e, v.seq());
    }

    fn touch(&mut self, e: &crate::Event, seq: u64) {
        if let Some(k) = e.body.changed_key() {
            self.touched.insert(k.clone(), seq);
        }
    }

    /// Forgets ids older than `window` by the events' own clocks, but always keeps the most
    /// recent [`RECENT_KEEP`] ids: a writer whose clock lags must not make its events look old
    /// while the server's duplicate window (server clock) still knows them.
    fn expire(&mut self, now_ms: u64, window: Duration) {
        let cutoff = now_ms.saturating_sub(window.as_millis() as u64);
        while self.order.len() > RECENT_KEEP {
            match self.order.front() {
                Some((t, _)) if *t < cutoff => {
                    if let Some((_, id)) = self.order.pop_front() {
                        self.by_id.remove(&id);
                    }
                }
                _ => break,
            }
        }
    }
}

/// Request ids always remembered, whatever their events' timestamps say.
pub const RECENT_KEEP: usize = 100_000;

struct Pending {
    job: u64,
    pos: usize,
    draft: Draft,
}

/// A caller's request, answered when all its drafts are stored (or one fails).
struct JobState {
    reply: Reply,
    guards: Vec<KeyGuard>,
    receipts: Vec<Option<Receipt>>,
    left: usize,
}

/// The next batch, chained and signed while the previous one commits.
struct Presigned {
    base: ChainTip,
    expected: u64,
    ids: Vec<RequestId>,
    signed: Vec<SignedEntry>,
}

struct Task {
    conn: LedgerConn,
    signer: EventSigner,
    state: ChainState,
    config: AppenderConfig,
    publisher: BatchPublisher,
    recent: Recent,
    broken: Option<ChainError>,
    jobs: HashMap<u64, JobState>,
    next_job: u64,
    queue: VecDeque<Pending>,
    presigned: Option<Presigned>,
}

impl Task {
    fn max_batch(&self) -> usize {
        self.config.max_batch.clamp(1, MAX_BATCH)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        loop {
            if self.queue.is_empty() {
                match rx.recv().await {
                    Some(job) => self.enqueue(job),
                    None => break,
                }
            }
            self.drain(&mut rx);
            let take = self.batch_len();
            let batch: Vec<Pending> = self.queue.drain(..take).collect();
            if batch.is_empty() {
                continue;
            }
            match self.commit(batch, &mut rx).await {
                Ok(done) => {
                    for (p, r) in done {
                        self.resolve(p, r);
                    }
                }
                Err((e, failed)) => {
                    for p in failed {
                        self.fail(p.job, e.clone());
                    }
                    if matches!(e, AppendError::ChainBroken(_) | AppendError::NotAWriter) {
                        let queued: Vec<u64> = self.queue.drain(..).map(|p| p.job).collect();
                        for job in queued {
                            self.fail(job, e.clone());
                        }
                    }
                }
            }
        }
    }

    /// How many queued drafts the next batch takes: up to `max_batch`, shortened so that a job
    /// which fits in one batch is not split across two.
    fn batch_len(&self) -> usize {
        let take = self.queue.len().min(self.max_batch());
        if take == self.queue.len() {
            return take;
        }
        let boundary = self.queue[take].job;
        // Back up to the first draft of the job that would be split, unless it began the batch.
        let start = (0..take)
            .rev()
            .take_while(|&i| self.queue[i].job == boundary)
            .last()
            .unwrap_or(take);
        if start == 0 {
            take
        } else {
            start
        }
    }

    /// The first failing guard of `job`, as a conflict.
    fn guard_conflict(&self, job: u64) -> Option<AppendError> {
        let js = self.jobs.get(&job)?;
        js.guards.iter().find_map(|g| {
            let actual = self.recent.touched.get(&g.key).copied().unwrap_or(0);
            (actual != g.expected).then(|| AppendError::Conflict {
                key: g.key.clone(),
                expected: g.expected,
                actual,
            })
        })
    }

    /// Takes waiting jobs off the channel until two batches are queued.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Job>) {
        while self.queue.len() < 2 * self.max_batch() {
            match rx.try_recv() {
                Ok(job) => self.enqueue(job),
                Err(_) => break,
            }
        }
    }

    fn enqueue(&mut self, job: Job) {
        let mut seen = std::collections::HashSet::new();
        if let Some(d) = job.drafts.iter().find(|d| !seen.insert(&d.request_id)) {
            let _ = job
                .reply
                .send(Err(AppendError::DuplicateInCall(d.request_id.clone())));
            return;
        }
        if job.drafts.is_empty() {
            let _ = job.reply.send(Ok(Vec::new()));
            return;
        }
        let id = self.next_job;
        self.next_job += 1;
        let n = job.drafts.len();
        for (pos, draft) in job.drafts.into_iter().enumerate() {
            self.queue.push_back(Pending {
                job: id,
                pos,
                draft,
            });
        }
        self.jobs.insert(
            id,
            JobState {
                reply: job.reply,
                guards: job.guards,
                receipts: vec![None; n],
                left: n,
            },
        );
    }

    fn resolve(&mut self, p: Pending, r: Receipt) {
        let Some(js) = self.jobs.get_mut(&p.job) else {
            return; // the job already failed
        };
        js.receipts[p.pos] = Some(r);
        js.left -= 1;
        if js.left == 0 {
            if let Some(js) = self.jobs.remove(&p.job) {
                let receipts = js.receipts.into_iter().flatten().collect();
                let _ = js.reply.send(Ok(receipts));
            }
        }
    }

    fn fail(&mut self, job: u64, e: AppendError) {
        if let Some(js) = self.jobs.remove(&job) {
            let _ = js.reply.send(Err(e));
        }
    }

    /// Chains and signs `drafts` onto the current tip, reusing the presigned batch if it was
    /// made for exactly this tip, expected sequence and these requests.
    fn signed_for(&mut self, drafts: &[Draft]) -> Vec<SignedEntry> {
        let tip = self.state.tip();
        let expected = self.state.last_seq();
        if let Some(p) = self.presigned.take() {
            if p.base == tip
                && p.expected == expected
                && p.ids.len() == drafts.len()
                && p.ids.iter().zip(drafts).all(|(a, d)| *a == d.request_id)
            {
                return p.signed;
            }
        }
        chain_and_sign(&self.signer, self.state.ledger(), tip, now_ms(), drafts).0
    }

    /// While `signed` commits, chains and signs the next queued batch on top of it.
    fn presign_next(&mut self, signed: &[SignedEntry], expected_after: u64) {
        let Some(last) = signed.last() else { return };
        let base = ChainTip {
            next_index: last.event.index + 1,
            prev: last.hash,
        };
        let take = self.queue.len().min(self.max_batch());
        if take == 0 {
            return;
        }
        let drafts: Vec<Draft> = self
            .queue
            .iter()
            .take(take)
            .filter(|p| !self.recent.by_id.contains_key(&p.draft.request_id))
            .map(|p| p.draft.clone())
            .collect();
        if drafts.is_empty() || drafts.iter().any(|d| d.body.needs_root()) {
            return;
        }
        let (next, _) = chain_and_sign(&self.signer, self.state.ledger(), base, now_ms(), &drafts);
        self.presigned = Some(Presigned {
            base,
            expected: expected_after,
            ids: drafts.into_iter().map(|d| d.request_id).collect(),
            signed: next,
        });
    }

    /// Commits one batch's worth of drafts, retrying as the module doc describes.
    async fn commit(
        &mut self,
        mut batch: Vec<Pending>,
        rx: &mut mpsc::Receiver<Job>,
    ) -> Result<Vec<(Pending, Receipt)>, (AppendError, Vec<Pending>)> {
        let mut done = Vec::with_capacity(batch.len());
        let mut last_problem = String::new();
        for attempt in 0..self.config.max_attempts {
            if let Some(e) = &self.broken {
                return Err((AppendError::ChainBroken(e.clone()), batch));
            }
            // Requests already in the ledger are answered from it.
            self.recent.expire(now_ms(), self.config.dedupe_window);
            let (known, rest): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|p| self.recent.by_id.contains_key(&p.draft.request_id));
            for p in known {
                let mut r = self.recent.by_id[&p.draft.request_id];
                r.already_present = true;
                done.push((p, r));
            }
            batch = rest;
            // Guards are checked against the chain as this writer knows it right now (after any
            // catch-up), before the batch is chained; a failed job's drafts leave the batch.
            let firsts: Vec<u64> = batch.iter().filter(|p| p.pos == 0).map(|p| p.job).collect();
            // A guard that does not match may only mean this writer is behind the state the
            // caller decided on (another writer appended since): re-read before judging.
            if firsts.iter().any(|j| self.guard_conflict(*j).is_some()) {
                self.presigned = None;
                if let Err(e) = self.catch_up().await {
                    return Err((e, batch));
                }
            }
            // Jobs earlier in this batch that change a key supersede the state later jobs'
            // guards name: those later jobs conflict, exactly as if the earlier ones had
            // committed first (they will, in this order).
            let mut changing: std::collections::HashSet<KeyId> = std::collections::HashSet::new();
            let mut failed: Vec<(u64, AppendError)> = Vec::new();
            for p in &batch {
                if p.pos == 0 {
                    let conflict = self.guard_conflict(p.job).or_else(|| {
                        let js = self.jobs.get(&p.job)?;
                        js.guards
                            .iter()
                            .find(|g| changing.contains(&g.key))
                            .map(|g| AppendError::Conflict {
                                key: g.key.clone(),
                                expected: g.expected,
                                actual: u64::MAX,
                            })
                    });
                    if let Some(e) = conflict {
                        failed.push((p.job, e));
                        continue;
                    }
                }
                if failed.iter().any(|(j, _)| *j == p.job) {
                    continue;
                }
                if let Some(k) = p.draft.body.changed_key() {
                    changing.insert(k.clone());
                }
            }
            for (job, e) in failed {
                // Nothing of a conflicting call is appended.
                self.fail(job, e);
                batch.retain(|p| p.job != job);
                self.queue.retain(|p| p.job != job);
            }
            if batch.is_empty() {
                return Ok(done);
            }
            let needs_root = batch.iter().any(|p| p.draft.body.needs_root());
            if !needs_root && !self.state.is_active_writer(&self.signer.id()) {
                return Err((AppendError::NotAWriter, batch));
            }
            let drafts: Vec<Draft> = batch.iter().map(|p| p.draft.clone()).collect();
            let signed = self.signed_for(&drafts);
            if let Some(big) = signed
                .iter()
                .find(|s| s.entry.len() > crate::entry::MAX_ENTRY_LEN)
            {
                return Err((
                    AppendError::TooLarge {
                        len: big.entry.len(),
                    },
                    batch,
                ));
            }
            let msgs: Vec<OutMsg> = signed
                .iter()
                .map(|s| OutMsg {
                    subject: self.conn.names.event_subject(&s.event),
                    msg_id: s.event.request_id.to_string(),
                    payload: s.entry.clone(),
                })
                .collect();
            let expected = self.state.last_seq();
            let outcome = match self.publisher.send(&msgs, Some(expected)).await {
                Ok(sent) => {
                    // Overlap: sign the next batch while the server commits this one.
                    self.drain(rx);
                    self.presign_next(&signed, expected + signed.len() as u64);
                    self.publisher
                        .outcome(sent, self.config.commit_timeout)
                        .await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(BatchOutcome::Committed { last_seq }) => {
                    let first = (last_seq + 1).saturating_sub(signed.len() as u64);
                    if first != expected + 1 {
                        // The server honoured the expected sequence, so this cannot happen;
                        // re-read rather than trust our arithmetic.
                        last_problem = format!("commit at {first}, expected {}", expected + 1);
                        self.presigned = None;
                        if let Err(e) = self.catch_up().await {
                            return Err((e, batch));
                        }
                        continue;
                    }
                    if let Err(e) = self.state.accept_own(first, &signed) {
                        self.broken = Some(e.clone());
                        return Err((AppendError::ChainBroken(e), batch));
                    }
                    for (i, (p, s)) in batch.into_iter().zip(&signed).enumerate() {
                        let r = Receipt {
                            seq: first + i as u64,
                            index: s.event.index,
                            hash: s.hash,
                            already_present: false,
                        };
                        self.recent
                            .insert(s.event.time_ms, s.event.request_id.clone(), r);
                        self.recent.touch(&s.event, r.seq);
                        done.push((p, r));
                    }
                    return Ok(done);
                }
                Ok(BatchOutcome::Refused {
                    err_code,
                    description: _,
                }) if err_code == ERR_BATCH_DUPLICATE_MSG_ID => {
                    // A request id the server's duplicate window knows but we do not (it is
                    // older than our memory). Re-read; if that does not explain it, isolate the
                    // duplicate: the rest of the batch goes back to the queue, and a lone
                    // duplicate is refused alone instead of failing the whole batch.
                    self.presigned = None;
                    if let Err(e) = self.catch_up().await {
                        return Err((e, batch));
                    }
                    if batch
                        .iter()
                        .any(|p| self.recent.by_id.contains_key(&p.draft.request_id))
                    {
                        continue;
                    }
                    if batch.len() > 1 {
                        for p in batch.drain(1..).rev() {
                            self.queue.push_front(p);
                        }
                        continue;
                    }
                    let id = batch[0].draft.request_id.clone();
                    return Err((AppendError::DuplicateUnknown(id), batch));
                }
                Ok(BatchOutcome::Refused {
                    err_code,
                    description,
                }) => {
                    last_problem = format!("refused ({err_code}): {description}");
                    tracing::debug!(attempt, err_code, %description, "batch refused; re-reading head");
                }
                Err(e @ (BatchError::TimedOut(_) | BatchError::NoResponders)) => {
                    last_problem = e.to_string();
                    tracing::warn!(attempt, error = %e, "batch outcome unknown; re-reading head");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    last_problem = e.to_string();
                    tracing::warn!(attempt, error = %e, "batch not sent");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
            self.presigned = None;
            if let Err(e) = self.catch_up().await {
                if let AppendError::ChainBroken(_) = e {
                    return Err((e, batch));
                }
                last_problem = e.to_string();
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        Err((
            AppendError::Exhausted {
                attempts: self.config.max_attempts,
                last: last_problem,
            },
            batch,
        ))
    }

    /// Reads what others appended since our last sequence (from the leader) and verifies it.
    async fn catch_up(&mut self) -> Result<(), AppendError> {
        let target = self
            .conn
            .last_seq()
            .await
            .map_err(|e| AppendError::Stream(e.to_string()))?;
        let from = self.state.last_seq() + 1;
        if target < from {
            return Ok(());
        }
        let mut msgs: Vec<(u64, Bytes)> = Vec::new();
        if target - from < 32 {
            let stream = self
                .conn
                .js
                .get_stream(self.conn.names.stream())
                .await
                .map_err(|e| AppendError::Stream(e.to_string()))?;
            for seq in from..=target {
                match stream.get_raw_message(seq).await {
                    Ok(m) => msgs.push((seq, m.payload)),
                    Err(e)
                        if e.kind()
                            == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(AppendError::Stream(e.to_string())),
                }
            }
        } else {
            read_range(&self.conn, from, target, |chunk| {
                msgs.extend(chunk);
                true
            })
            .await
            .map_err(|e: StreamError| AppendError::Stream(e.to_string()))?;
        }
        let (out, err) = self.state.check_batch(msgs);
        for c in out {
            match c {
                Checked::Event(v) => self.recent.remember(&v),
                Checked::Foreign(f) => {
                    tracing::error!(seq = f.seq, reason = %f.reason, "ALARM: foreign message in the ledger stream");
                }
            }
        }
        if let Some(e) = err {
            tracing::error!(error = %e, "chain broken; appender stops");
            self.broken = Some(e.clone());
            return Err(AppendError::ChainBroken(e));
        }
        Ok(())
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((25u64 << attempt.min(5)).min(1000))
}

impl Appender {
    /// Opens a writer on an initialised ledger: checks the stream (fail closed), replays and
    /// verifies the whole chain, then starts appending with `signer`. Foreign messages found on
    /// the way are in the returned report (and logged as alarms); a chain break refuses to start.
    pub async fn open(
        conn: LedgerConn,
        signer: EventSigner,
        pinned_root: Option<crate::bytes32::Bytes32>,
        config: AppenderConfig,
        danger_accept_unsafe_stream: bool,
    ) -> Result<(Appender, crate::nats::reader::ReplayReport), AppendError> {
        conn.event_stream(danger_accept_unsafe_stream)
            .await
            .map_err(|e| AppendError::Stream(e.to_string()))?;
        let mut state = ChainState::new(conn.names.ledger.clone(), pinned_root);
        // Replay and verify everything; remember the request ids of the dedupe window so a
        // request retried across a restart is answered from the chain, not appended again.
        let now = now_ms();
        let mut recent = Recent::default();
        let report = crate::nats::reader::replay_each(
            &conn,
            &mut state,
            |_, _| {},
            |v| {
                recent.remember(v);
                recent.expire(now, config.dedupe_window);
            },
        )
        .await
        .map_err(|e| AppendError::Stream(e.to_string()))?;
        for f in &report.foreign {
            tracing::error!(seq = f.seq, reason = %f.reason, "ALARM: foreign message in the ledger stream");
        }
        if let Some(e) = &report.chain_break {
            return Err(AppendError::ChainBroken(e.clone()));
        }
        if !state.is_active_writer(&signer.id()) {
            return Err(AppendError::NotAWriter);
        }
        let appender = Appender::start_with(conn, signer, state, config, recent).await?;
        Ok((appender, report))
    }
}
