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
//! The atomic batch baseline runs the ledger's own ADR-50 code
//! ([`ledger::nats::batch::BatchPublisher`]) on pre-built messages, so the ratio isolates
//! the cost of chaining, signing and verifying.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt as _;
use ledger::nats::batch::{BatchOutcome, BatchPublisher, OutMsg};

/// ADR-50: the server refuses batches with more messages than this.
pub const MAX_ATOMIC_BATCH: usize = 1000;

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
// ADR-50 atomic batch publish (the ledger's own protocol code, without signing or chaining)
// ---------------------------------------------------------------------------------------------

/// ADR-50 atomic batch publish of pre-built `payloads` to `subject` (which must belong to
/// `stream`, created with `allow_atomic_publish: true`), through the same
/// [`ledger::nats::batch::BatchPublisher`] the appender uses: batches of `batch_size`
/// (1..=1000), one in flight, `Nats-Expected-Last-Sequence` on each batch's first message
/// (following each commit's PubAck) and a unique `Nats-Msg-Id` on every message. This is the
/// ceiling of an unforkable append. Any refusal is an error.
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
    let run = run_id();
    let batches: Vec<Vec<OutMsg>> = payloads
        .chunks(batch_size)
        .enumerate()
        .map(|(b, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(i, payload)| OutMsg {
                    subject: subject.to_owned(),
                    msg_id: format!("{run}-{}", b * batch_size + i),
                    payload: payload.clone(),
                })
                .collect()
        })
        .collect();
    let mut publisher = BatchPublisher::new(client.clone()).await?;
    let started = Instant::now();
    for (b, batch) in batches.iter().enumerate() {
        match publisher
            .publish(batch, Some(head), BATCH_REPLY_TIMEOUT)
            .await
            .with_context(|| format!("batch {b} (expected head {head})"))?
        {
            BatchOutcome::Committed { last_seq } => {
                ensure!(
                    last_seq == head + batch.len() as u64,
                    "batch {b} of {} committed at seq {last_seq}, expected {}",
                    batch.len(),
                    head + batch.len() as u64
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
