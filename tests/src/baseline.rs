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
//! * [`raw_request_throughput`] / [`raw_request_latency`] against a [`Responder`]: plain
//!   request-reply, and request-reply where the responder first stores the request in a
//!   JetStream stream and awaits its PubAck (the floor of a service operation that durably
//!   records one message per request).
//!
//! The load drivers [`drive_concurrent`] and [`measure_latency`] are shared with the keyledger
//! service measurements, so raw and service figures are taken the same way.
//!
//! The atomic batch baseline runs the ledger's own ADR-50 code
//! ([`ledger::nats::batch::BatchPublisher`]) on pre-built messages, so the ratio isolates
//! the cost of chaining, signing and verifying.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// How long one operation of [`drive_concurrent`] or [`measure_latency`] may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`wait_for_responder`] waits for a new subscription to be known to the server(s).
pub const RESPONDER_READY_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One-message ADR-50 atomic batches (expected last sequence + msg-id, through the ledger's
/// [`BatchPublisher`]) published one after another to `subject` of `stream` (created with
/// `allow_atomic_publish: true`): `warmup` untimed, then `samples` timed. Each message is
/// `payload` (ids differ). The latency of one commit is the floor of one chained append, so
/// of every operation that waits for its event.
pub async fn raw_atomic_single_latency(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
    payload: Bytes,
    warmup: usize,
    samples: usize,
) -> Result<Latency> {
    let js = jetstream::new(client.clone());
    let mut head = js
        .get_stream(stream)
        .await
        .with_context(|| format!("looking up stream {stream}"))?
        .cached_info()
        .state
        .last_sequence;
    let run = run_id();
    let mut publisher = BatchPublisher::new(client.clone()).await?;
    let mut times = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        let msg = [OutMsg {
            subject: subject.to_owned(),
            msg_id: format!("{run}-{i}"),
            payload: payload.clone(),
        }];
        let started = Instant::now();
        match publisher
            .publish(&msg, Some(head), BATCH_REPLY_TIMEOUT)
            .await
            .with_context(|| format!("single-message batch {i}"))?
        {
            BatchOutcome::Committed { last_seq } => {
                ensure!(
                    last_seq == head + 1,
                    "batch {i} committed at {last_seq}, expected {}",
                    head + 1
                );
                head = last_seq;
            }
            BatchOutcome::Refused {
                err_code,
                description,
            } => bail!("single-message batch {i} refused: {err_code} {description}"),
        }
        if i >= warmup {
            times.push(started.elapsed());
        }
    }
    Ok(Latency::from_samples(times))
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

// ---------------------------------------------------------------------------------------------
// Load drivers and latency samples (shared with the service measurements)
// ---------------------------------------------------------------------------------------------

/// Latencies of one sequential client, sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latency {
    sorted: Vec<Duration>,
}

impl Latency {
    /// Sorts `samples`.
    pub fn from_samples(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self { sorted: samples }
    }

    /// Number of samples.
    pub fn count(&self) -> usize {
        self.sorted.len()
    }

    /// The `p`-th percentile (0 < p <= 100), nearest rank; zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    pub fn p50(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }
}

/// Runs `total` operations on `concurrency` workers (tokio tasks): each worker claims the next
/// operation number from a shared counter and awaits `op(worker, number)` until all are
/// claimed. Each operation must finish within [`OP_TIMEOUT`]; the first error or timeout fails
/// the measurement (the other workers are aborted). The clock runs from the first claim to the
/// last completion.
pub async fn drive_concurrent<F, Fut>(concurrency: usize, total: u64, op: F) -> Result<Rate>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    ensure!(concurrency >= 1, "concurrency must be at least 1");
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let started = Instant::now();
    for worker in 0..concurrency {
        let (op, next, done) = (op.clone(), next.clone(), done.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::timeout(OP_TIMEOUT, op(worker, i))
                    .await
                    .map_err(|_| {
                        anyhow!("operation {i} (worker {worker}) took over {OP_TIMEOUT:?}")
                    })?
                    .with_context(|| format!("operation {i} (worker {worker})"))?;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // Dropping the set on an early return aborts the remaining workers.
    while let Some(joined) = workers.join_next().await {
        joined.context("a load worker panicked")??;
    }
    let rate = Rate::since(done.load(Ordering::Relaxed), started);
    ensure!(rate.events == total, "completed {} of {total}", rate.events);
    Ok(rate)
}

/// One client, one operation at a time: `warmup` untimed calls of `op`, then `samples` timed
/// ones. Each must finish within [`OP_TIMEOUT`].
pub async fn measure_latency<F, Fut>(warmup: usize, samples: usize, mut op: F) -> Result<Latency>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut times = Vec::with_capacity(samples);
    for i in 0..(warmup + samples) as u64 {
        let started = Instant::now();
        tokio::time::timeout(OP_TIMEOUT, op(i))
            .await
            .map_err(|_| anyhow!("sequential operation {i} took over {OP_TIMEOUT:?}"))?
            .with_context(|| format!("sequential operation {i}"))?;
        if i >= warmup as u64 {
            times.push(started.elapsed());
        }
    }
    Ok(Latency::from_samples(times))
}

// ---------------------------------------------------------------------------------------------
// Request-reply
// ---------------------------------------------------------------------------------------------

/// A responder task on one subject; dropping it (or [`Responder::stop`]) ends the task and its
/// subscription.
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
}

impl Responder {
    /// Subscribes `client` to `subject` and answers every request with `reply`; an empty request
    /// is a probe ([`wait_for_responder`]) and is answered at once, never stored. With `store =
    /// Some((js, stream_subject))` each request's payload is first published to
    /// `stream_subject` and the reply sent only once its PubAck arrived (requests are handled
    /// concurrently, one task each, as a service would); a failed store is answered with an
    /// empty payload, which [`raw_request_throughput`] and [`raw_request_latency`] report as an
    /// error. Without a store the reply is sent inline, the cheapest possible responder.
    /// Call [`wait_for_responder`] before sending requests from other connections.
    pub async fn start(
        client: async_nats::Client,
        subject: &str,
        reply: Bytes,
        store: Option<(jetstream::Context, String)>,
    ) -> Result<Self> {
        let mut requests = client
            .subscribe(Subject::from(subject))
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        client.flush().await.context("flushing the subscription")?;
        let task = tokio::spawn(async move {
            let store = store.map(|(js, s)| (js, Subject::from(s)));
            while let Some(request) = requests.next().await {
                let Some(reply_to) = request.reply else {
                    continue;
                };
                match &store {
                    _ if request.payload.is_empty() => {
                        let _ = client.publish(reply_to, reply.clone()).await;
                    }
                    None => {
                        let _ = client.publish(reply_to, reply.clone()).await;
                    }
                    Some((js, stream_subject)) => {
                        let (client, js, reply) = (client.clone(), js.clone(), reply.clone());
                        let stream_subject = stream_subject.clone();
                        tokio::spawn(async move {
                            let stored = tokio::time::timeout(OP_TIMEOUT, async {
                                js.publish(stream_subject, request.payload).await?.await?;
                                Ok::<_, anyhow::Error>(())
                            })
                            .await;
                            let body = match stored {
                                Ok(Ok(())) => reply,
                                _ => Bytes::new(),
                            };
                            let _ = client.publish(reply_to, body).await;
                        });
                    }
                }
            }
        });
        Ok(Self { task })
    }

    /// Ends the responder.
    pub fn stop(self) {}
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until a probe (an empty request) to `subject` from each of `clients` is answered:
/// a flush does not wait for the server to register a subscription, and in a cluster the
/// interest must also reach the other nodes. Gives up after [`RESPONDER_READY_TIMEOUT`].
pub async fn wait_for_responder(clients: &[async_nats::Client], subject: &str) -> Result<()> {
    let deadline = Instant::now() + RESPONDER_READY_TIMEOUT;
    for client in clients {
        loop {
            let probe = client.send_request(
                subject.to_owned(),
                async_nats::Request::new()
                    .payload(Bytes::new())
                    .timeout(Some(Duration::from_secs(1))),
            );
            match probe.await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(subject, error = %e, "responder not reachable yet");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("no responder on {subject} after {RESPONDER_READY_TIMEOUT:?}")
                    })
                }
            }
        }
    }
    Ok(())
}

async fn one_request(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    reply_size: usize,
) -> Result<()> {
    let reply = client.request(subject.to_owned(), payload).await?;
    ensure!(
        reply.payload.len() == reply_size,
        "reply of {} bytes, expected {reply_size} (the responder could not store the request?)",
        reply.payload.len()
    );
    Ok(())
}

/// `total` requests of `payload` to `subject` from `concurrency` requesters sharing
/// `clients` round-robin (requester `w` uses connection `w % clients.len()`); every reply must
/// be `reply_size` bytes.
pub async fn raw_request_throughput(
    clients: &[async_nats::Client],
    subject: &str,
    payload: Bytes,
    reply_size: usize,
    concurrency: usize,
    total: u64,
) -> Result<Rate> {
    ensure!(!clients.is_empty(), "no connections");
    let clients: Arc<[async_nats::Client]> = clients.into();
    let subject: Arc<str> = subject.into();
    drive_concurrent(concurrency, total, move |worker, _| {
        let (clients, subject, payload) = (clients.clone(), subject.clone(), payload.clone());
        async move {
            one_request(
                &clients[worker % clients.len()],
                &subject,
                payload,
                reply_size,
            )
            .await
        }
    })
    .await
}

/// One requester, sequential requests: `warmup` untimed, then `samples` timed.
pub async fn raw_request_latency(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    reply_size: usize,
    warmup: usize,
    samples: usize,
) -> Result<Latency> {
    measure_latency(warmup, samples, |_| {
        one_request(client, subject, payload.clone(), reply_size)
    })
    .await
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
    fn latency_percentiles_nearest_rank() {
        let l = Latency::from_samples((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(l.count(), 100);
        assert_eq!(l.p50(), Duration::from_micros(50));
        assert_eq!(l.p99(), Duration::from_micros(99));
        assert_eq!(l.percentile(100.0), Duration::from_micros(100));
        let one = Latency::from_samples(vec![Duration::from_micros(7)]);
        assert_eq!(
            (one.p50(), one.p99()),
            (Duration::from_micros(7), Duration::from_micros(7))
        );
        assert_eq!(Latency::from_samples(vec![]).p99(), Duration::ZERO);
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
