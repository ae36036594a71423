//! Replaying the event stream through a [`ChainState`].

use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use bytes::Bytes;
use futures::StreamExt;

use crate::nats::stream::{LedgerConn, StreamError};
use crate::verify::{ChainError, ChainState, Checked, ForeignMessage, VerifiedEvent};

/// Messages folded per verification batch.
pub const REPLAY_CHUNK: usize = 2048;

/// What a replay found.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Verified events folded by this replay.
    pub verified: u64,
    /// Every foreign message, by stream sequence.
    pub foreign: Vec<ForeignMessage>,
    /// The chain break that stopped the replay, if any.
    pub chain_break: Option<ChainError>,
    /// Last stream sequence folded.
    pub last_seq: u64,
}

impl ReplayReport {
    /// True when every message was a valid, linked event.
    pub fn is_clean(&self) -> bool {
        self.foreign.is_empty() && self.chain_break.is_none()
    }
}

/// Reads raw stored messages `from..=to` in order and hands them to `on_chunk` in chunks;
/// `on_chunk` returns false to stop early. Reading runs in its own task, one chunk ahead of
/// `on_chunk`, so network and verification overlap. Sequences with no message (deleted) are
/// simply absent.
pub async fn read_range<F>(
    conn: &LedgerConn,
    from: u64,
    to: u64,
    mut on_chunk: F,
) -> Result<(), StreamError>
where
    F: FnMut(Vec<(u64, Bytes)>) -> bool,
{
    if from > to {
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_chunks(conn.clone(), from, to, tx));
    while let Some(chunk) = rx.recv().await {
        // Verification is CPU-bound (and parallel inside); keep it off the async workers' toes.
        let multi_thread = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let go_on = if multi_thread {
            tokio::task::block_in_place(|| on_chunk(chunk))
        } else {
            on_chunk(chunk)
        };
        if !go_on {
            reader.abort();
            return Ok(());
        }
    }
    match reader.await {
        Ok(r) => r,
        Err(e) => Err(StreamError::Nats(format!("reader task failed: {e}"))),
    }
}

async fn read_chunks(
    conn: LedgerConn,
    from: u64,
    to: u64,
    tx: tokio::sync::mpsc::Sender<Vec<(u64, Bytes)>>,
) -> Result<(), StreamError> {
    let stream = conn
        .js
        .get_stream(conn.names.stream())
        .await
        .map_err(|e| StreamError::Nats(e.to_string()))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| StreamError::Nats(e.to_string()))?;
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| StreamError::Nats(e.to_string()))?;
    let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
    loop {
        // The stream is append-only and `to` exists, so the consumer always has more to
        // deliver until we pass `to`; a long silence means the server is gone.
        let next = tokio::time::timeout(Duration::from_secs(30), msgs.next()).await;
        let msg = match next {
            Err(_) => return Err(StreamError::Nats("replay stalled for 30 s".into())),
            Ok(None) => return Err(StreamError::Nats("replay consumer closed".into())),
            Ok(Some(Err(e))) => return Err(StreamError::Nats(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        let info = msg.info().map_err(|e| StreamError::Nats(e.to_string()))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        // An ordered consumer recreated before its first delivery restarts from sequence 1
        // (async-nats 0.51 uses DeliverPolicy::All then); skip anything before `from`.
        if seq < from {
            continue;
        }
        if seq > to {
            break;
        }
        chunk.push((seq, msg.message.payload.clone()));
        let done = seq >= to || pending == 0;
        if (chunk.len() >= REPLAY_CHUNK || done)
            && tx.send(std::mem::take(&mut chunk)).await.is_err()
        {
            return Ok(()); // the consumer of chunks stopped early
        }
        if done {
            break;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(chunk).await;
    }
    Ok(())
}

/// Replays from `state.last_seq() + 1` up to the stream's current last sequence, folding every
/// message into `state`. `progress(last_folded_seq, target_seq)` is called after each chunk.
pub async fn replay(
    conn: &LedgerConn,
    state: &mut ChainState,
    progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, StreamError> {
    replay_each(conn, state, progress, |_| {}).await
}

/// [`replay`], handing every verified event to `on_event` as it is folded.
pub async fn replay_each(
    conn: &LedgerConn,
    state: &mut ChainState,
    mut progress: impl FnMut(u64, u64),
    mut on_event: impl FnMut(&VerifiedEvent),
) -> Result<ReplayReport, StreamError> {
    let target = conn.last_seq().await?;
    let mut report = ReplayReport {
        last_seq: state.last_seq(),
        ..Default::default()
    };
    read_range(conn, state.last_seq() + 1, target, |chunk| {
        let (out, err) = state.check_batch(chunk);
        for c in out {
            match c {
                Checked::Event(v) => {
                    report.verified += 1;
                    on_event(&v);
                }
                Checked::Foreign(f) => report.foreign.push(f),
            }
        }
        report.last_seq = state.last_seq();
        progress(report.last_seq, target);
        match err {
            Some(e) => {
                report.chain_break = Some(e);
                false
            }
            None => true,
        }
    })
    .await?;
    Ok(report)
}
