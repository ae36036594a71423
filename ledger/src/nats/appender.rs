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
use crate::ids::RequestId;
use crate::nats::batch::{BatchError, BatchOutcome, BatchPublisher, OutMsg, MAX_BATCH};
use crate::nats::reader::read_range;
use crate::nats::stream::{LedgerConn, StreamError};
use crate::sign::{chain_and_sign, now_ms, Draft, EventSigner};
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
    #[error("event of {len} bytes is too large")]
    TooLarge { len: usize },
    #[error("appender stopped")]
    Stopped,
    #[error("stream: {0}")]
    Stream(String),
}

type Reply = oneshot::Sender<Result<Vec<Receipt>, AppendError>>;

struct Job {
    drafts: Vec<Draft>,
    reply: Reply,
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
            recent: Recent::default(),
            broken: None,
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
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { drafts, reply })
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
}

impl Recent {
    fn insert(&mut self, time_ms: u64, id: RequestId, r: Receipt) {
        if self.by_id.insert(id.clone(), r).is_none() {
            self.order.push_back((time_ms, id));
        }
    }
    fn expire(&mut self, now_ms: u64, window: Duration) {
        let cutoff = now_ms.saturating_sub(window.as_millis() as u64);
        while let Some((t, _)) = self.order.front() {
            if *t >= cutoff {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.by_id.remove(&id);
            }
        }
    }
}

struct Pending {
    job: usize,
    pos: usize,
    draft: Draft,
}

struct Task {
    conn: LedgerConn,
    signer: EventSigner,
    state: ChainState,
    config: AppenderConfig,
    publisher: BatchPublisher,
    recent: Recent,
    broken: Option<ChainError>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let max_batch = self.config.max_batch.clamp(1, MAX_BATCH);
        while let Some(first) = rx.recv().await {
            let mut n = first.drafts.len();
            let mut jobs = vec![first];
            while n < max_batch {
                match rx.try_recv() {
                    Ok(j) => {
                        n += j.drafts.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            self.serve(jobs, max_batch).await;
        }
    }

    async fn serve(&mut self, jobs: Vec<Job>, max_batch: usize) {
        let mut results: Vec<Result<Vec<Option<Receipt>>, AppendError>> = jobs
            .iter()
            .map(|j| Ok(vec![None; j.drafts.len()]))
            .collect();
        let mut pending = Vec::new();
        let mut replies = Vec::with_capacity(jobs.len());
        for (ji, job) in jobs.into_iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            for d in &job.drafts {
                if !seen.insert(d.request_id.clone()) {
                    results[ji] = Err(AppendError::DuplicateInCall(d.request_id.clone()));
                }
            }
            if results[ji].is_ok() {
                for (pos, draft) in job.drafts.into_iter().enumerate() {
                    pending.push(Pending {
                        job: ji,
                        pos,
                        draft,
                    });
                }
            }
            replies.push(job.reply);
        }
        let mut pending: VecDeque<Pending> = pending.into();
        while !pending.is_empty() {
            let take = pending.len().min(max_batch);
            let batch: Vec<Pending> = pending.drain(..take).collect();
            match self.commit(batch).await {
                Ok(done) => {
                    for (p, r) in done {
                        if let Ok(v) = &mut results[p.job] {
                            v[p.pos] = Some(r);
                        }
                    }
                }
                Err((e, failed)) => {
                    for p in failed.iter().chain(pending.iter()) {
                        results[p.job] = Err(e.clone());
                    }
                    pending.clear();
                }
            }
        }
        for (reply, res) in replies.into_iter().zip(results) {
            let res = res.and_then(|v| {
                v.into_iter()
                    .map(|r| r.ok_or(AppendError::Stopped))
                    .collect()
            });
            let _ = reply.send(res);
        }
    }

    /// Commits one batch's worth of drafts, retrying as the module doc describes.
    async fn commit(
        &mut self,
        mut batch: Vec<Pending>,
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
            if batch.is_empty() {
                return Ok(done);
            }
            let needs_root = batch.iter().any(|p| p.draft.body.needs_root());
            if !needs_root && !self.state.is_active_writer(&self.signer.id()) {
                return Err((AppendError::NotAWriter, batch));
            }
            let drafts: Vec<Draft> = batch.iter().map(|p| p.draft.clone()).collect();
            let (signed, _) = chain_and_sign(
                &self.signer,
                self.state.ledger(),
                self.state.tip(),
                now_ms(),
                &drafts,
            );
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
            let outcome = self
                .publisher
                .publish(&msgs, Some(expected), self.config.commit_timeout)
                .await;
            match outcome {
                Ok(BatchOutcome::Committed { last_seq }) => {
                    let first = last_seq + 1 - signed.len() as u64;
                    if first != expected + 1 {
                        // The server honoured the expected sequence, so this cannot happen;
                        // re-read rather than trust our arithmetic.
                        last_problem = format!("commit at {first}, expected {}", expected + 1);
                        self.catch_up().await.map_err(|e| (e, Vec::new()))?;
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
                        done.push((p, r));
                    }
                    return Ok(done);
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
                Checked::Event(v) => {
                    let r = Receipt {
                        seq: v.seq(),
                        index: v.event().index,
                        hash: v.hash(),
                        already_present: true,
                    };
                    self.recent
                        .insert(v.event().time_ms, v.event().request_id.clone(), r);
                }
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
        let report = crate::nats::reader::replay(&conn, &mut state, |_, _| {})
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
        let appender = Appender::start(conn, signer, state, config).await?;
        Ok((appender, report))
    }
}
