//! Raw NATS reference figures for the benchmark harness.
//!
//! Each function measures what plain JetStream can do on the same server, in the
//! same run, as the ledger's own measurements, so the benchmark can print a
//! "ratio vs raw NATS" column:
//!
//! * [`raw_atomic_batch_publish`]: ADR-50 atomic batches, one in flight, with
//!   `Nats-Expected-Last-Sequence` on each batch's first message and `Nats-Msg-Id`
//!   on every message (the closest raw analogue of a chained, deduplicated append);
//! * [`raw_pipelined_publish`]: plain publishes with a sliding window of un-awaited
//!   acks and no preconditions (the throughput ceiling);
//! * [`raw_ordered_replay`]: an ordered pull consumer reading the stream from the
//!   start (the replay ceiling).
//!
//! The ADR-50 protocol pieces ([`batch_headers`], [`parse_batch_reply`],
//! [`await_batch_outcome`]) are public so they can be compared with, or reused by,
//! the ledger's own implementation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt as _;
use serde::Deserialize;

/// ADR-50: the server refuses batches with more messages than this.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// ADR-50: longest allowed `Nats-Batch-Id`.
pub const MAX_BATCH_ID_LEN: usize = 64;

/// How long [`raw_atomic_batch_publish`] waits for a batch's replies.
pub const BATCH_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`raw_ordered_replay`] waits for the next message before giving up.
pub const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`create_stream_retrying`] keeps retrying (cluster start-up, elections).
pub const STREAM_CREATE_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Rate
// ---------------------------------------------------------------------------------------------

/// A throughput measurement: `events` processed in `elapsed` wall time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Number of events (messages) processed.
    pub events: u64,
    /// Wall time the processing took.
    pub elapsed: Duration,
}

impl Rate {
    /// Builds a rate from a count and the instant the measurement started.
    pub fn since(events: u64, started: Instant) -> Self {
        Self {
            events,
            elapsed: started.elapsed(),
        }
    }

    /// Events per second (0 for an empty or instantaneous measurement).
    pub fn per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers shared by the benchmark and tests
// ---------------------------------------------------------------------------------------------

/// `n` payloads of `size` bytes each; every payload starts with its index so no
/// two are equal.
pub fn make_payloads(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| {
            let mut buf = format!("{i:016x}").into_bytes();
            buf.resize(size.max(buf.len()), b'x');
            buf.truncate(size);
            Bytes::from(buf)
        })
        .collect()
}

/// A file-storage stream config for benchmarks: `name`, one subject, `replicas`
/// copies, and ADR-50 atomic publish enabled or not.
pub fn bench_stream_config(
    name: &str,
    subject: &str,
    replicas: usize,
    atomic: bool,
) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_atomic_publish: atomic,
        ..Default::default()
    }
}

/// Creates a stream, retrying for up to [`STREAM_CREATE_TIMEOUT`] while a fresh
/// cluster is still electing leaders or learning its peers.
pub async fn create_stream_retrying(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream> {
    let deadline = Instant::now() + STREAM_CREATE_TIMEOUT;
    let mut backoff = Duration::from_millis(50);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(stream = %config.name, error = %err, "stream create failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "creating stream {} (gave up after {STREAM_CREATE_TIMEOUT:?})",
                        config.name
                    )
                })
            }
        }
    }
}

/// A random 16-hex-digit identifier for batch and message ids of one run.
fn run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

// ---------------------------------------------------------------------------------------------
// ADR-50 atomic batch protocol
// ---------------------------------------------------------------------------------------------

/// What the server said about an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The whole batch was stored; `last_seq` is the stream sequence of its last message.
    Committed {
        /// Stream sequence of the batch's last (commit) message.
        last_seq: u64,
    },
    /// Nothing of the batch was stored (e.g. `err_code` 10071: wrong last sequence).
    Refused {
        /// JetStream API error code (`err_code`), e.g. 10071.
        err_code: u64,
        /// The server's description of the error.
        description: String,
    },
}

/// Headers for message `index` (0-based) of an atomic batch of `len` messages.
///
/// Always sets `Nats-Batch-Id` and `Nats-Batch-Sequence` (`index + 1`); the last
/// message also gets `Nats-Batch-Commit: 1`. `msg_id` becomes `Nats-Msg-Id`;
/// `expected_last_seq` becomes `Nats-Expected-Last-Sequence` and belongs on the
/// first message only. The first and last messages must be published with a reply
/// subject, the others without.
pub fn batch_headers(
    batch_id: &str,
    index: usize,
    len: usize,
    msg_id: Option<&str>,
    expected_last_seq: Option<u64>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_BATCH_ID, batch_id);
    headers.insert(NATS_BATCH_SEQUENCE, (index + 1).to_string());
    if index + 1 == len {
        headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
    }
    if let Some(id) = msg_id {
        headers.insert(NATS_MESSAGE_ID, id);
    }
    if let Some(seq) = expected_last_seq {
        headers.insert(NATS_EXPECTED_LAST_SEQUENCE, seq.to_string());
    }
    headers
}

/// The JSON the server sends back for a batch message (or any JetStream publish).
#[derive(Debug, Deserialize)]
struct RawBatchReply {
    #[serde(default)]
    error: Option<RawApiError>,
    #[serde(default)]
    seq: Option<u64>,
}

/// The `error` object of a JetStream API reply.
#[derive(Debug, Deserialize)]
struct RawApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Parses the payload of a reply to a batch message.
///
/// * empty payload: `Ok(None)` (the first message of a batch was accepted);
/// * `{"error":{..}}`: `Some(Refused { .. })`;
/// * `{"stream":..,"seq":N,"batch":..,"count":..}`: `Some(Committed { last_seq: N })`.
pub fn parse_batch_reply(payload: &[u8]) -> Result<Option<BatchOutcome>> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let reply: RawBatchReply = serde_json::from_slice(payload).with_context(|| {
        format!(
            "malformed batch reply: {:?}",
            String::from_utf8_lossy(payload)
        )
    })?;
    match (reply.error, reply.seq) {
        (Some(err), _) => Ok(Some(BatchOutcome::Refused {
            err_code: err.err_code,
            description: err.description,
        })),
        (None, Some(last_seq)) => Ok(Some(BatchOutcome::Committed { last_seq })),
        (None, None) => bail!(
            "batch reply has neither error nor seq: {:?}",
            String::from_utf8_lossy(payload)
        ),
    }
}

/// Waits on `replies` (a subscription covering both reply subjects) for the
/// outcome of one batch.
///
/// `start_reply` is the reply subject of the batch's first message (`None` for a
/// one-message batch, whose only message is also the commit). An error reply to
/// the first message ends the wait at once with `Refused`; otherwise the commit
/// reply decides. Replies on other subjects (left over from earlier batches) are
/// ignored. A 503 status (no responders: no stream, or a leader election) and
/// the `timeout` are errors.
pub async fn await_batch_outcome(
    replies: &mut async_nats::Subscriber,
    start_reply: Option<&str>,
    commit_reply: &str,
    timeout: Duration,
) -> Result<BatchOutcome> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, replies.next())
            .await
            .map_err(|_| anyhow!("no batch commit reply within {timeout:?}"))?
            .ok_or_else(|| anyhow!("reply subscription closed"))?;
        let subject = message.subject.as_str();
        let is_commit = subject == commit_reply;
        if !is_commit && start_reply != Some(subject) {
            continue;
        }
        if let Some(status) = message.status {
            if status == StatusCode::NO_RESPONDERS {
                bail!("no responders for the batch (stream missing or electing a leader)");
            }
            if status != StatusCode::OK {
                bail!(
                    "batch reply status {status}: {}",
                    message.description.as_deref().unwrap_or("")
                );
            }
        }
        match parse_batch_reply(&message.payload)? {
            Some(outcome) if is_commit => return Ok(outcome),
            None if is_commit => bail!("empty reply to a batch commit"),
            Some(refused @ BatchOutcome::Refused { .. }) => return Ok(refused),
            Some(BatchOutcome::Committed { last_seq }) => {
                bail!("first message of a batch acknowledged as committed at seq {last_seq}")
            }
            None => {} // the batch was started; wait for the commit
        }
    }
}

/// ADR-50 atomic batch publish of `payloads` to `subject` (which must belong to
/// `stream`, created with `allow_atomic_publish: true`).
///
/// Messages and headers are built before the clock starts. Batches of
/// `batch_size` (1..=1000) are sent one at a time: the first message carries
/// `Nats-Expected-Last-Sequence: <head>` and every message a unique `Nats-Msg-Id`;
/// the head starts at the stream's last sequence and then follows each commit's
/// PubAck. First and last messages are published with replies on one wildcard
/// inbox subscription, so wire order is kept. Any refusal is an error.
pub async fn raw_atomic_batch_publish(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    payloads: &[Bytes],
    batch_size: usize,
) -> Result<Rate> {
    ensure!(
        (1..=MAX_ATOMIC_BATCH).contains(&batch_size),
        "batch size {batch_size} outside 1..={MAX_ATOMIC_BATCH}"
    );
    let js = jetstream::new(client.clone());
    let mut head = js
        .get_stream(stream)
        .await
        .with_context(|| format!("looking up stream {stream}"))?
        .cached_info()
        .state
        .last_sequence;
    let subject = Subject::from(subject);
    let run = run_id();
    let batches: Vec<Vec<(HeaderMap, Bytes)>> = payloads
        .chunks(batch_size)
        .enumerate()
        .map(|(b, chunk)| {
            let batch_id = format!("{run}-{b}");
            debug_assert!(batch_id.len() <= MAX_BATCH_ID_LEN);
            chunk
                .iter()
                .enumerate()
                .map(|(i, payload)| {
                    let msg_id = format!("{run}-{}", b * batch_size + i);
                    let headers = batch_headers(&batch_id, i, chunk.len(), Some(&msg_id), None);
                    (headers, payload.clone())
                })
                .collect()
        })
        .collect();

    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(format!("{inbox}.*"))
        .await
        .context("subscribing to the batch reply inbox")?;

    let started = Instant::now();
    for (b, batch) in batches.into_iter().enumerate() {
        let len = batch.len();
        let start_reply = format!("{inbox}.s{b}");
        let commit_reply = format!("{inbox}.c{b}");
        for (i, (mut headers, payload)) in batch.into_iter().enumerate() {
            if i == 0 {
                // The only header that depends on the previous commit.
                headers.insert(NATS_EXPECTED_LAST_SEQUENCE, head.to_string());
            }
            let reply = if i + 1 == len {
                Some(&commit_reply)
            } else if i == 0 {
                Some(&start_reply)
            } else {
                None
            };
            match reply {
                Some(reply) => {
                    client
                        .publish_with_reply_and_headers(
                            subject.clone(),
                            reply.clone(),
                            headers,
                            payload,
                        )
                        .await?
                }
                None => {
                    client
                        .publish_with_headers(subject.clone(), headers, payload)
                        .await?
                }
            }
        }
        let start_reply = (len > 1).then_some(start_reply.as_str());
        match await_batch_outcome(
            &mut replies,
            start_reply,
            &commit_reply,
            BATCH_REPLY_TIMEOUT,
        )
        .await
        .with_context(|| format!("batch {b} (expected head {head})"))?
        {
            BatchOutcome::Committed { last_seq } => {
                ensure!(
                    last_seq == head + len as u64,
                    "batch {b} of {len} committed at seq {last_seq}, expected {}",
                    head + len as u64
                );
                head = last_seq;
            }
            BatchOutcome::Refused {
                err_code,
                description,
            } => bail!("batch {b} refused: {err_code} {description}"),
        }
    }
    Ok(Rate::since(payloads.len() as u64, started))
}

// ---------------------------------------------------------------------------------------------
// Pipelined publish and ordered replay
// ---------------------------------------------------------------------------------------------

/// Plain JetStream publishes of `payloads` to `subject`, keeping at most `window`
/// acks outstanding (oldest awaited first); no headers, no preconditions.
pub async fn raw_pipelined_publish(
    js: &jetstream::Context,
    subject: &str,
    payloads: &[Bytes],
    window: usize,
) -> Result<Rate> {
    ensure!(window >= 1, "window must be at least 1");
    let subject = Subject::from(subject);
    let mut inflight: VecDeque<jetstream::context::PublishAckFuture> =
        VecDeque::with_capacity(window);
    let mut acked = 0u64;
    let started = Instant::now();
    for payload in payloads {
        if inflight.len() >= window {
            if let Some(ack) = inflight.pop_front() {
                ack.await.context("awaiting a pipelined publish ack")?;
                acked += 1;
            }
        }
        inflight.push_back(js.publish(subject.clone(), payload.clone()).await?);
    }
    for ack in inflight {
        ack.await.context("awaiting a pipelined publish ack")?;
        acked += 1;
    }
    let rate = Rate::since(acked, started);
    ensure!(
        acked == payloads.len() as u64,
        "acked {acked} of {}",
        payloads.len()
    );
    Ok(rate)
}

/// Reads `stream_name` from its first message with an ordered pull consumer
/// (`DeliverPolicy::All`) until `expected` messages have arrived. Each message must
/// arrive within [`REPLAY_IDLE_TIMEOUT`]; the clock includes consumer creation.
pub async fn raw_ordered_replay(
    js: &jetstream::Context,
    stream_name: &str,
    expected: u64,
) -> Result<Rate> {
    let stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("looking up stream {stream_name}"))?;
    let started = Instant::now();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("creating the ordered consumer")?;
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    let mut bytes = 0usize;
    while read < expected {
        let message = tokio::time::timeout(REPLAY_IDLE_TIMEOUT, messages.next())
            .await
            .map_err(|_| {
                anyhow!("replay stalled after {read} of {expected} messages ({REPLAY_IDLE_TIMEOUT:?} idle)")
            })?
            .ok_or_else(|| anyhow!("ordered consumer ended after {read} of {expected}"))?
            .context("ordered consumer error")?;
        bytes += message.payload.len();
        read += 1;
    }
    let rate = Rate::since(read, started);
    tracing::debug!(read, bytes, "ordered replay done");
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_adr50() {
        let first = batch_headers("b", 0, 3, Some("m0"), Some(7));
        assert_eq!(first.get(NATS_BATCH_ID).map(|v| v.as_str()), Some("b"));
        assert_eq!(
            first.get(NATS_BATCH_SEQUENCE).map(|v| v.as_str()),
            Some("1")
        );
        assert_eq!(first.get(NATS_MESSAGE_ID).map(|v| v.as_str()), Some("m0"));
        assert_eq!(
            first.get(NATS_EXPECTED_LAST_SEQUENCE).map(|v| v.as_str()),
            Some("7")
        );
        assert!(first.get(NATS_BATCH_COMMIT).is_none());
        let last = batch_headers("b", 2, 3, None, None);
        assert_eq!(last.get(NATS_BATCH_SEQUENCE).map(|v| v.as_str()), Some("3"));
        assert_eq!(last.get(NATS_BATCH_COMMIT).map(|v| v.as_str()), Some("1"));
        assert!(last.get(NATS_EXPECTED_LAST_SEQUENCE).is_none());
    }

    #[test]
    fn replies_parse() -> Result<()> {
        assert_eq!(parse_batch_reply(b"")?, None);
        assert_eq!(
            parse_batch_reply(br#"{"stream":"S","seq":42,"batch":"b","count":3}"#)?,
            Some(BatchOutcome::Committed { last_seq: 42 })
        );
        assert_eq!(
            parse_batch_reply(
                br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}"#
            )?,
            Some(BatchOutcome::Refused {
                err_code: 10071,
                description: "wrong last sequence: 5".into()
            })
        );
        assert!(parse_batch_reply(b"{}").is_err());
        assert!(parse_batch_reply(b"nope").is_err());
        Ok(())
    }

    #[test]
    fn payloads_are_distinct_and_sized() {
        let p = make_payloads(3, 300);
        assert!(p.iter().all(|b| b.len() == 300));
        assert_ne!(p[0], p[1]);
        assert_eq!(make_payloads(1, 4)[0].len(), 4);
    }

    #[test]
    fn rate_per_sec() {
        let r = Rate {
            events: 100,
            elapsed: Duration::from_millis(500),
        };
        assert!((r.per_sec() - 200.0).abs() < 1e-9);
        assert_eq!(
            Rate {
                events: 1,
                elapsed: Duration::ZERO
            }
            .per_sec(),
            0.0
        );
    }
}
