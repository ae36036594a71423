//! Following the ledger live: the projection a service serves from.
//!
//! A [`Follower`] tails the event stream with an ordered consumer, verifies every message
//! through its own [`ChainState`] (fail closed) and folds the verified events into [`Views`].
//! - A foreign message is never folded: it raises an alarm (an `error` log line and an entry in
//!   [`Views::foreign`]) and following goes on.
//! - A break in the chain of valid events halts the projection for good: [`Views::halted`]
//!   names the sequence, and every wait on this follower fails from then on, so a service built
//!   on it stops serving instead of answering from a view it can no longer trust.
//!
//! Consistency: [`Follower::wait_for`] waits until a given sequence is folded (a replica's own
//! writes); [`Follower::sync`] asks the stream leader for its last sequence and waits until that
//! is folded, so a read after any acknowledged write, on any replica, sees it. Concurrent
//! `sync` calls share one round trip to the leader.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};

use ledger::nats::{LedgerConn, StreamError};
use ledger::{Bytes32, ChainError, ChainState, Checked, ForeignMessage};

use crate::trust::Trust;
use crate::KeyStates;

/// Messages folded per chunk at most.
const CHUNK: usize = 1024;
/// How long the consumer may stay silent before we check it is not stalled.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Everything the service reads, folded from verified events only.
#[derive(Debug, Default)]
pub struct Views {
    pub keys: KeyStates,
    pub trust: Trust,
    /// Audit records by key, principal, platform and refusal.
    pub audit: crate::audit::AuditIndex,
    /// RFC 6962 Merkle tree over the verified events' stored entries (leaf i = chain index i).
    pub tree: ledger::merkle::Tree,
    /// Last stream sequence folded (verified event or foreign message).
    pub last_seq: u64,
    /// Foreign messages met, by sequence (each also logged as an alarm).
    pub foreign: Vec<ForeignMessage>,
    /// The chain break that halted this projection.
    pub halted: Option<ChainError>,
    /// Recent request ids and the sequence of their event (for answering retried requests).
    pub requests: RecentRequests,
}

/// Request ids of the latest [`RecentRequests::KEEP`] events, with their sequences.
#[derive(Debug, Default)]
pub struct RecentRequests {
    by_id: std::collections::HashMap<ledger::RequestId, u64>,
    order: std::collections::VecDeque<ledger::RequestId>,
}

impl RecentRequests {
    pub const KEEP: usize = 200_000;

    fn insert(&mut self, id: &ledger::RequestId, seq: u64) {
        if self.by_id.insert(id.clone(), seq).is_none() {
            self.order.push_back(id.clone());
            if self.order.len() > Self::KEEP {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }
    }

    /// The sequence of the event that recorded `id`, if it is among the recent ones.
    pub fn get(&self, id: &ledger::RequestId) -> Option<u64> {
        self.by_id.get(id).copied()
    }
}

/// Why a wait on the projection failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    #[error("projection halted: {0}")]
    Halted(ChainError),
    #[error("projection did not reach seq {seq} within {waited:?}")]
    Timeout { seq: u64, waited: Duration },
    #[error("stream: {0}")]
    Stream(String),
    #[error("follower stopped")]
    Stopped,
}

struct Shared {
    views: RwLock<Views>,
    applied: watch::Sender<u64>,
}

/// Handle to a running projection. Cheap to clone.
#[derive(Clone)]
pub struct Follower {
    shared: Arc<Shared>,
    barrier: mpsc::Sender<oneshot::Sender<Result<u64, FollowError>>>,
    wait_limit: Duration,
}

impl Follower {
    /// Starts following from sequence 1 and returns once the projection has caught up with the
    /// stream as it was at the call (or failed closed on a chain break).
    pub async fn start(
        conn: LedgerConn,
        pinned_root: Option<Bytes32>,
    ) -> Result<Follower, FollowError> {
        let (applied, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            views: RwLock::new(Views::default()),
            applied,
        });
        let state = ChainState::new(conn.names.ledger.clone(), pinned_root);
        tokio::spawn(tail(conn.clone(), shared.clone(), state));
        let (btx, brx) = mpsc::channel(1024);
        let follower = Follower {
            shared,
            barrier: btx,
            wait_limit: Duration::from_secs(30),
        };
        tokio::spawn(barrier_task(conn, follower.clone_weak(), brx));
        follower.sync().await?;
        Ok(follower)
    }

    fn clone_weak(&self) -> (Arc<Shared>, Duration) {
        (self.shared.clone(), self.wait_limit)
    }

    /// Reads the views (a short read lock: do not await inside `f`).
    pub fn read<R>(&self, f: impl FnOnce(&Views) -> R) -> R {
        // Invariant: a panic while folding would poison the lock; folding does not panic, and
        // a poisoned view is still the last consistent one we had.
        let g = self.shared.views.read().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// Last sequence folded.
    pub fn applied(&self) -> u64 {
        *self.shared.applied.borrow()
    }

    pub fn halted(&self) -> Option<ChainError> {
        self.read(|v| v.halted.clone())
    }

    /// Waits until `seq` is folded.
    pub async fn wait_for(&self, seq: u64) -> Result<(), FollowError> {
        wait_applied(&self.shared, seq, self.wait_limit).await
    }

    /// Waits until everything the stream held when this was called is folded; returns that
    /// sequence.
    pub async fn sync(&self) -> Result<u64, FollowError> {
        if let Some(e) = self.halted() {
            return Err(FollowError::Halted(e));
        }
        let (tx, rx) = oneshot::channel();
        self.barrier
            .send(tx)
            .await
            .map_err(|_| FollowError::Stopped)?;
        rx.await.map_err(|_| FollowError::Stopped)?
    }
}

async fn wait_applied(shared: &Shared, seq: u64, limit: Duration) -> Result<(), FollowError> {
    let mut rx = shared.applied.subscribe();
    let fut = async {
        loop {
            if *rx.borrow_and_update() >= seq {
                return Ok(());
            }
            let halted = shared
                .views
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .halted
                .clone();
            if let Some(e) = halted {
                return Err(FollowError::Halted(e));
            }
            if rx.changed().await.is_err() {
                return Err(FollowError::Stopped);
            }
        }
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(FollowError::Timeout { seq, waited: limit }),
    }
}

/// Serves `sync` calls: each round asks the leader once for the last sequence, waits until it
/// is folded, and answers every caller that was waiting when the round began.
async fn barrier_task(
    conn: LedgerConn,
    (shared, limit): (Arc<Shared>, Duration),
    mut rx: mpsc::Receiver<oneshot::Sender<Result<u64, FollowError>>>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let result = match conn.last_seq().await {
            Ok(target) => wait_applied(&shared, target, limit).await.map(|_| target),
            Err(e) => Err(FollowError::Stream(e.to_string())),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// The tailing loop: (re)creates an ordered consumer from the next sequence and folds what it
/// delivers, chunk by chunk, until the chain breaks.
async fn tail(conn: LedgerConn, shared: Arc<Shared>, mut state: ChainState) {
    let mut attempt = 0u32;
    loop {
        match tail_once(&conn, &shared, &mut state).await {
            Ok(()) => return, // halted
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "projection consumer failed; resuming");
                tokio::time::sleep(Duration::from_millis((50u64 << attempt.min(5)).min(2_000)))
                    .await;
            }
        }
    }
}

async fn tail_once(
    conn: &LedgerConn,
    shared: &Shared,
    state: &mut ChainState,
) -> Result<(), StreamError> {
    let from = state.last_seq() + 1;
    let nats = |e: &dyn std::fmt::Display| StreamError::Nats(e.to_string());
    let stream = conn
        .js
        .get_stream(conn.names.stream())
        .await
        .map_err(|e| nats(&e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut msgs = consumer.messages().await.map_err(|e| nats(&e))?;
    loop {
        let mut chunk: Vec<(u64, Bytes)> = Vec::new();
        // Wait for one message, then take whatever else is already there. A consumer that
        // stays silent while the stream has moved on (its node was lost, say) is replaced.
        let mut next = loop {
            match tokio::time::timeout(STALL_CHECK, msgs.next()).await {
                Ok(n) => break n,
                Err(_) => {
                    let last = conn.last_seq().await?;
                    if last > state.last_seq() {
                        return Err(StreamError::Nats(format!(
                            "consumer stalled at {} while the stream is at {last}",
                            state.last_seq()
                        )));
                    }
                }
            }
        };
        loop {
            let msg = match next {
                None => return Err(StreamError::Nats("consumer closed".into())),
                Some(Err(e)) => return Err(nats(&e)),
                Some(Ok(m)) => m,
            };
            let info = msg.info().map_err(|e| nats(&e))?;
            let seq = info.stream_sequence;
            // Redeliveries after a consumer reset start earlier than we are; skip them.
            let last = chunk.last().map_or(state.last_seq(), |(s, _)| *s);
            if seq > last {
                chunk.push((seq, msg.message.payload.clone()));
            }
            if chunk.len() >= CHUNK {
                break;
            }
            match msgs.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
        if chunk.is_empty() {
            continue;
        }
        let (out, err) = state.check_batch(chunk);
        let mut views = shared.views.write().unwrap_or_else(|p| p.into_inner());
        for c in out {
            match c {
                Checked::Event(v) => {
                    views.keys.apply(&v);
                    views.trust.apply(&v);
                    views.audit.apply(&v);
                    views.tree.push_leaf(v.entry());
                    views.requests.insert(&v.event().request_id, v.seq());
                }
                Checked::Foreign(f) => {
                    tracing::error!(seq = f.seq, reason = %f.reason, "ALARM: foreign message in the ledger stream; not folded");
                    views.foreign.push(f);
                }
            }
        }
        views.last_seq = state.last_seq();
        if let Some(e) = err {
            tracing::error!(error = %e, "chain broken: projection halted");
            views.halted = Some(e);
            drop(views);
            // Wake every waiter so it sees the halt.
            shared.applied.send_modify(|_| {});
            return Ok(());
        }
        let last = views.last_seq;
        drop(views);
        shared.applied.send_replace(last);
    }
}
