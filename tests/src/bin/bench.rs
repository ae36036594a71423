//! Benchmark harness: starts its own nats-server (or a 3-node cluster), runs the
//! raw NATS reference measurements and the ledger's and service's own, and prints two tables:
//! append/replay (events/s) and service (ops/s, p50/p99 latency).
//!
//! ```text
//! cargo run --release -p keyledger-tests --bin bench -- [--events N] [--payload BYTES]
//!     [--batch N] [--window N] [--cluster]
//!     [--service | --service-only] [--service-ops N] [--clients N] [--connections N] [--write-ops N]
//!     [--latency-ops N]
//! ```
//!
//! The default run is the append/replay part; `--service` adds the service part and
//! `--service-only` runs it alone. (The service part is not in the default run because at default
//! sizes it currently takes minutes: every operation waits for a one-event atomic batch commit.)
//! The service part (DESIGN.md §8, "Service") measures, on the same server and in this process:
//! raw request-reply; raw request-reply where the responder first stores the request in a
//! file stream and awaits the PubAck (the floor of a durably recorded operation); keyledger
//! `encrypt` through one service replica; keyledger grant/revoke (writes, never coalesced).
//! Throughput uses `--clients` concurrent callers sharing `min(--clients, --connections)`
//! connections round-robin; latency uses one sequential caller.
//!
//! Every measurement gets its own fresh stream. To add one (e.g. the ledger's
//! signed chained append), write an `async fn measure_x(ctx: &BenchCtx) ->
//! Result<Rate>` and add one `table.push(..)` line in [`run_append`]; service-style
//! measurements (throughput + latency) go in [`measure_service`].

use std::time::Instant;

use anyhow::{bail, ensure, Context as _, Result};
use async_nats::jetstream;
use bytes::Bytes;
use clap::Parser;
use keyledger_tests::baseline::{
    self, bench_stream_config, create_stream_retrying, make_payloads, Latency, Rate, Responder,
};
use keyledger_tests::harness::{NatsCluster, NatsServer};
use keyledger_tests::report::{print_service_table, print_table, Row, ServiceRow};
use keyledger_tests::servicebench::{ServiceBench, PLAINTEXT_LEN};

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    about = "keyledger benchmark: raw NATS baselines (and ledger figures) on a private server"
)]
struct Args {
    /// Events per measurement.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Raw payload size in bytes; default: the size of the ledger's benchmark event, so raw and
    /// ledger rows move the same bytes.
    #[arg(long)]
    payload: Option<usize>,
    /// Messages per ADR-50 atomic batch (1..=1000).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Outstanding acks for the pipelined publish baseline.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Run against a 3-node loopback cluster with R3 streams instead of one node.
    #[arg(long)]
    cluster: bool,
    /// Also run the service part (request-reply baselines, keyledger encrypt and grant/revoke).
    #[arg(long)]
    service: bool,
    /// Run only the service part.
    #[arg(long, conflicts_with = "service")]
    service_only: bool,
    /// Operations per service throughput measurement (raw request-reply baselines and
    /// keyledger encrypt).
    #[arg(long, default_value_t = 50_000)]
    service_ops: u64,
    /// Concurrent callers of the service throughput measurements.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Client connections the callers share round-robin (at most `--clients`).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Grant/revoke operations of the keyledger write measurement (default: a fifth of
    /// `--service-ops`); 0 skips it.
    #[arg(long)]
    write_ops: Option<u64>,
    /// Sequential operations per latency measurement (after a warm-up of 200).
    #[arg(long, default_value_t = 2_000)]
    latency_ops: usize,
}

/// The servers under test; dropping it kills them.
enum Servers {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Servers {
    fn start(cluster: bool) -> Result<Self> {
        Ok(if cluster {
            Self::Cluster(NatsCluster::start(3).context("starting the 3-node cluster")?)
        } else {
            Self::Single(NatsServer::start().context("starting nats-server")?)
        })
    }

    fn urls(&self) -> Vec<String> {
        match self {
            Self::Single(server) => vec![server.url()],
            Self::Cluster(cluster) => cluster.urls(),
        }
    }

    fn replicas(&self) -> usize {
        match self {
            Self::Single(_) => 1,
            Self::Cluster(cluster) => cluster.len(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Single(_) => "single node, R1".to_owned(),
            Self::Cluster(c) => format!("{}-node loopback cluster, R{}", c.len(), c.len()),
        }
    }
}

/// Everything a measurement needs.
struct BenchCtx {
    args: Args,
    /// The server URLs, comma-separated.
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    payloads: Vec<Bytes>,
}

impl BenchCtx {
    /// Creates (or replaces) a file stream `name` on subject `subject` for one measurement.
    async fn fresh_stream(&self, name: &str, subject: &str, atomic: bool) -> Result<()> {
        // A leftover stream would skew the numbers; a missing one is the normal case.
        let _ = self.js.delete_stream(name).await;
        create_stream_retrying(
            &self.js,
            bench_stream_config(name, subject, self.replicas, atomic),
        )
        .await?;
        Ok(())
    }
}

// --- measurements ---------------------------------------------------------------------------

/// Plain publishes, `--window` acks in flight, no preconditions.
async fn measure_raw_pipelined(ctx: &BenchCtx) -> Result<Rate> {
    ctx.fresh_stream("BENCH_RAW_PIPELINED", "bench.raw.pipelined", false)
        .await?;
    baseline::raw_pipelined_publish(
        &ctx.js,
        "bench.raw.pipelined",
        &ctx.payloads,
        ctx.args.window,
    )
    .await
}

/// ADR-50 atomic batches of `--batch`, expected-last-sequence + msg-id, one in flight.
async fn measure_raw_atomic_batch(ctx: &BenchCtx) -> Result<Rate> {
    ctx.fresh_stream("BENCH_RAW_ATOMIC", "bench.raw.atomic", true)
        .await?;
    baseline::raw_atomic_batch_publish(
        &ctx.client,
        "BENCH_RAW_ATOMIC",
        "bench.raw.atomic",
        &ctx.payloads,
        ctx.args.batch,
    )
    .await
}

/// Ordered pull consumer over a stream holding `--events` messages (filled untimed).
async fn measure_raw_ordered_replay(ctx: &BenchCtx) -> Result<Rate> {
    ctx.fresh_stream("BENCH_RAW_REPLAY", "bench.raw.replay", false)
        .await?;
    baseline::raw_pipelined_publish(&ctx.js, "bench.raw.replay", &ctx.payloads, ctx.args.window)
        .await
        .context("filling the replay stream")?;
    baseline::raw_ordered_replay(&ctx.js, "BENCH_RAW_REPLAY", ctx.payloads.len() as u64).await
}

/// The ledger under test, set up untimed: streams, genesis, writer enrolment.
struct BenchLedger {
    conn: ledger::nats::LedgerConn,
    secrets: ledger::custody::Secrets,
}

async fn bench_ledger(ctx: &BenchCtx) -> Result<BenchLedger> {
    use ledger::nats::{LedgerConn, StreamSettings};
    let ledger_id = ledger::LedgerId::new("bench")?;
    let conn = LedgerConn::new(ctx.client.clone(), ledger_id);
    let _ = ctx.js.delete_stream(conn.names.stream()).await;
    let _ = ctx.js.delete_stream(conn.names.dek_stream()).await;
    let secrets = ledger::custody::Secrets::generate();
    let settings = StreamSettings {
        replicas: ctx.replicas,
        ..StreamSettings::default()
    };
    ledger::nats::genesis::initialise(
        &conn,
        &settings,
        ledger::sign::EventSigner::new(secrets.root.clone()),
        secrets.writer_public(),
        secrets.kek.id(),
    )
    .await?;
    Ok(BenchLedger { conn, secrets })
}

/// The benchmark's event: one itemised key use (what high-volume operations record).
fn bench_draft(i: usize) -> ledger::sign::Draft {
    use ledger::event::{Actor, KeyUse, KeysUsed, Operation};
    let tenant = ledger::TenantId::new("bench-tenant").expect("valid id");
    ledger::sign::Draft {
        request_id: ledger::RequestId::new(format!("bench-{i:012}")).expect("valid id"),
        actor: Actor {
            principal: "bench-service".into(),
            tenant: Some(tenant.clone()),
            token_id: Some("tok-0001".into()),
        },
        context: Some(ledger::Bytes32([7; 32])),
        body: KeysUsed {
            uses: vec![KeyUse {
                key: ledger::KeyId::new("bench-key").expect("valid id"),
                tenant,
                version: 1,
                operation: Operation::Encrypt,
                principal: "bench-service".into(),
                request_id: ledger::RequestId::new(format!("use-{i:012}")).expect("valid id"),
                context: None,
            }],
        }
        .into(),
    }
}

/// Size of one framed benchmark entry (raw baselines publish payloads of this size).
fn bench_entry_size() -> usize {
    let signer = ledger::sign::EventSigner::new(ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
    let ledger_id = ledger::LedgerId::new("bench").expect("valid id");
    let (signed, _) = ledger::sign::chain_and_sign(
        &signer,
        &ledger_id,
        ledger::sign::ChainTip::GENESIS,
        ledger::sign::now_ms(),
        &[bench_draft(0)],
    );
    signed[0].entry.len()
}

/// Signed, chained events durably stored: `--events` drafts submitted concurrently (so the
/// appender's queue always holds the next batch), timed until the last receipt.
async fn measure_ledger_append(ctx: &BenchCtx, bl: &BenchLedger) -> Result<Rate> {
    use ledger::nats::{Appender, AppenderConfig};
    let config = AppenderConfig {
        max_batch: ctx.args.batch,
        ..AppenderConfig::default()
    };
    let (appender, _) = Appender::open(
        bl.conn.clone(),
        ledger::sign::EventSigner::new(bl.secrets.writer.clone()),
        Some(bl.secrets.root_public()),
        config,
        false,
    )
    .await?;
    let drafts: Vec<_> = (0..ctx.payloads.len()).map(bench_draft).collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in drafts.chunks(ctx.args.batch) {
        let (a, chunk) = (appender.clone(), chunk.to_vec());
        tasks.spawn(async move { a.append_all(chunk).await });
    }
    let mut stored = 0u64;
    while let Some(r) = tasks.join_next().await {
        stored += r?.context("append")?.len() as u64;
    }
    let rate = Rate::since(stored, started);
    if stored != ctx.payloads.len() as u64 {
        bail!("stored {stored} of {} events", ctx.payloads.len());
    }
    Ok(rate)
}

/// Replay from sequence 1 with full verification (framing, canonical decoding, signatures,
/// signer registry, chain links).
async fn measure_ledger_replay(bl: &BenchLedger) -> Result<Rate> {
    let mut state =
        ledger::ChainState::new(bl.conn.names.ledger.clone(), Some(bl.secrets.root_public()));
    let started = Instant::now();
    let report = ledger::nats::replay(&bl.conn, &mut state, |_, _| {}).await?;
    let rate = Rate::since(report.verified, started);
    if !report.is_clean() {
        bail!("benchmark ledger does not verify: {report:?}");
    }
    Ok(rate)
}

/// The same verification over messages already in memory: the CPU cost alone, no NATS.
async fn measure_ledger_verify_in_memory(bl: &BenchLedger) -> Result<Rate> {
    let last = bl.conn.last_seq().await?;
    let mut msgs = Vec::new();
    ledger::nats::reader::read_range(&bl.conn, 1, last, |chunk| {
        msgs.push(chunk);
        true
    })
    .await?;
    let mut state =
        ledger::ChainState::new(bl.conn.names.ledger.clone(), Some(bl.secrets.root_public()));
    let started = Instant::now();
    let mut verified = 0u64;
    for chunk in msgs {
        let (out, err) = state.check_batch(chunk);
        if let Some(e) = err {
            bail!("benchmark ledger does not verify: {e}");
        }
        verified += out.len() as u64;
    }
    Ok(Rate::since(verified, started))
}

// --- service --------------------------------------------------------------------------------

/// Request and reply size of the raw request-reply baselines.
const RR_PAYLOAD: usize = 100;

/// Untimed sequential calls before each latency measurement.
const LATENCY_WARMUP: usize = 200;

/// Subject of the plain responder, and of the storing responder and its stream.
const RR_PLAIN_SUBJECT: &str = "bench.rr.plain";
const RR_STORED_SUBJECT: &str = "bench.rr.stored";
const RR_STREAM: &str = "BENCH_RR_STORE";
const RR_STREAM_SUBJECT: &str = "bench.rr.store";
const ATOMIC1_STREAM: &str = "BENCH_ATOMIC_SINGLE";
const ATOMIC1_SUBJECT: &str = "bench.atomic.single";

/// The service part's rows and notes.
struct ServiceResults {
    rows: Vec<ServiceRow>,
    notes: Vec<String>,
}

fn service_row(name: String, rate: Rate, latency: &Latency) -> ServiceRow {
    eprintln!(
        "  {name}: {} ops in {:.3} s = {:.0}/s; p50 {} us, p99 {} us ({} sequential)",
        rate.events,
        rate.elapsed.as_secs_f64(),
        rate.per_sec(),
        latency.p50().as_micros(),
        latency.p99().as_micros(),
        latency.count()
    );
    ServiceRow::new(name, rate, latency)
}

/// Raw request-reply against `responder` (already started on `subject`): throughput of
/// `--clients` requesters over `requesters` (after one untimed request each), then latency of
/// one.
async fn measure_request_reply(
    ctx: &BenchCtx,
    requesters: &[async_nats::Client],
    subject: &str,
) -> Result<(Rate, Latency)> {
    let payload = Bytes::from(vec![b'q'; RR_PAYLOAD]);
    let clients = ctx.args.clients;
    baseline::raw_request_throughput(
        requesters,
        subject,
        payload.clone(),
        RR_PAYLOAD,
        clients,
        clients as u64,
    )
    .await
    .context("request-reply warm-up")?;
    let rate = baseline::raw_request_throughput(
        requesters,
        subject,
        payload.clone(),
        RR_PAYLOAD,
        clients,
        ctx.args.service_ops,
    )
    .await?;
    let latency = baseline::raw_request_latency(
        &requesters[0],
        subject,
        payload,
        RR_PAYLOAD,
        LATENCY_WARMUP,
        ctx.args.latency_ops,
    )
    .await?;
    Ok((rate, latency))
}

/// The service part: the two request-reply baselines, then keyledger on the same server.
async fn measure_service(ctx: &BenchCtx) -> Result<ServiceResults> {
    let args = &ctx.args;
    let connections = args.clients.min(args.connections);
    let url = ctx.url.as_str();
    let mut requesters = Vec::with_capacity(connections);
    for _ in 0..connections {
        requesters.push(keyledger_tests::fixture::connect(url).await?);
    }
    let responder_conn = keyledger_tests::fixture::connect(url).await?;
    let reply = Bytes::from(vec![b'r'; RR_PAYLOAD]);
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // (a) Plain request-reply: the responder answers inline.
    let responder = Responder::start(
        responder_conn.clone(),
        RR_PLAIN_SUBJECT,
        reply.clone(),
        None,
    )
    .await?;
    baseline::wait_for_responder(&requesters, RR_PLAIN_SUBJECT).await?;
    let (rate, latency) = measure_request_reply(ctx, &requesters, RR_PLAIN_SUBJECT)
        .await
        .context("raw request-reply")?;
    responder.stop();
    rows.push(service_row(
        format!("raw request-reply ({RR_PAYLOAD} B each way)"),
        rate,
        &latency,
    ));

    // (b) The responder stores each request (file stream, R1/R3) and awaits the PubAck first.
    ctx.fresh_stream(RR_STREAM, RR_STREAM_SUBJECT, false)
        .await?;
    let responder = Responder::start(
        responder_conn.clone(),
        RR_STORED_SUBJECT,
        reply,
        Some((
            jetstream::new(responder_conn.clone()),
            RR_STREAM_SUBJECT.to_owned(),
        )),
    )
    .await?;
    baseline::wait_for_responder(&requesters, RR_STORED_SUBJECT).await?;
    let (rate, latency) = measure_request_reply(ctx, &requesters, RR_STORED_SUBJECT)
        .await
        .context("raw request-reply + publish ack")?;
    responder.stop();
    let stored = ctx
        .js
        .get_stream(RR_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    let requests =
        args.clients as u64 + args.service_ops + (LATENCY_WARMUP + args.latency_ops) as u64;
    ensure!(
        stored == requests,
        "the storing responder stored {stored} of {requests} requests"
    );
    let floor = service_row(
        format!("raw request-reply + publish ack (file, R{})", ctx.replicas),
        rate,
        &latency,
    );
    rows.push(floor.clone());

    // Context: one sequential one-message atomic batch commit (the ledger's append unit).
    ctx.fresh_stream(ATOMIC1_STREAM, ATOMIC1_SUBJECT, true)
        .await?;
    // Few samples: this is context, and each may take tens of milliseconds.
    let event = ctx.payloads[0].clone();
    let size = event.len();
    let atomic = baseline::raw_atomic_single_latency(
        &ctx.client,
        ATOMIC1_STREAM,
        ATOMIC1_SUBJECT,
        event,
        20,
        args.latency_ops.min(300),
    )
    .await
    .context("one-message atomic batch latency")?;
    let note = format!(
        "context: one-message atomic batch commit ({size} B, expected seq + msg-id), \
         {} sequential: p50 {} us, p99 {} us",
        atomic.count(),
        atomic.p50().as_micros(),
        atomic.p99().as_micros()
    );
    eprintln!("  {note}");
    notes.push(note);

    // (c) keyledger: a fresh ledger and one replica, set up untimed.
    let bench = ServiceBench::start(
        url,
        ctx.replicas,
        api::service::ServiceConfig::default(),
        connections,
        args.clients,
    )
    .await
    .context("setting up the service benchmark")?;
    let measured = async {
        let rate = bench
            .encrypt_throughput(args.clients, args.service_ops)
            .await
            .context("keyledger encrypt throughput")?;
        let latency = bench
            .encrypt_latency(LATENCY_WARMUP, args.latency_ops)
            .await
            .context("keyledger encrypt latency")?;
        let encrypt = service_row(
            format!("keyledger encrypt ({PLAINTEXT_LEN} B plaintext)"),
            rate,
            &latency,
        )
        .against(&floor);
        notes.push(targets(&encrypt));
        rows.push(encrypt);
        let write_ops = args.write_ops.unwrap_or(args.service_ops / 5);
        if write_ops > 0 {
            let rate = bench
                .write_throughput(args.clients, write_ops)
                .await
                .context("keyledger grant/revoke throughput")?;
            let latency = bench
                .write_latency(LATENCY_WARMUP, args.latency_ops)
                .await
                .context("keyledger grant/revoke latency")?;
            rows.push(
                service_row(
                    "keyledger grant/revoke (one event each)".to_owned(),
                    rate,
                    &latency,
                )
                .against(&floor),
            );
        }
        let summary = bench.check_recorded().await?;
        eprintln!("  {summary}");
        notes.push(summary);
        anyhow::Ok(())
    }
    .await;
    // Stop the replica whatever happened; a measurement error is the one to report.
    let stopped = bench.stop().await;
    measured?;
    stopped?;
    Ok(ServiceResults { rows, notes })
}

/// DESIGN.md §8 targets for the encrypt row.
fn targets(encrypt: &ServiceRow) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let ops = encrypt.rate.per_sec();
    let p50 = encrypt.p50_ratio();
    format!(
        "DESIGN.md §8 targets: encrypt >= 20000 ops/s on 2 cores: {ops:.0} ({}); \
         p50 <= 2x raw request-reply + publish ack: {} ({})",
        verdict(ops >= 20_000.0),
        p50.map_or("-".to_owned(), |r| format!("{r:.2}x")),
        verdict(p50.is_some_and(|r| r <= 2.0))
    )
}

// --- driver ---------------------------------------------------------------------------------

/// Collects rows; baselines are referred to by the name of an earlier row.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    /// Adds a row named `name`, compared with the earlier row named `baseline`.
    fn push(&mut self, name: impl Into<String>, rate: Rate, baseline: Option<&str>) -> Result<()> {
        let name = name.into();
        eprintln!(
            "  {name}: {} events in {:.3} s = {:.0}/s",
            rate.events,
            rate.elapsed.as_secs_f64(),
            rate.per_sec()
        );
        let row = match baseline {
            None => Row::new(name, rate),
            Some(base) => match self.rows.iter().find(|r| r.name == base) {
                Some(base) => Row::with_baseline(name, rate, base),
                None => bail!("baseline row {base:?} has not been measured"),
            },
        };
        self.rows.push(row);
        Ok(())
    }
}

/// Both parts' results (the append part is empty with `--service`).
struct Results {
    rows: Vec<Row>,
    service: Option<ServiceResults>,
}

async fn run(ctx: &BenchCtx) -> Result<Results> {
    let rows = if ctx.args.service_only {
        Vec::new()
    } else {
        run_append(ctx).await?
    };
    let service = if ctx.args.service || ctx.args.service_only {
        eprintln!("service:");
        Some(measure_service(ctx).await?)
    } else {
        None
    };
    Ok(Results { rows, service })
}

async fn run_append(ctx: &BenchCtx) -> Result<Vec<Row>> {
    let pipelined = format!("raw pipelined publish (window {})", ctx.args.window);
    let atomic = format!(
        "raw atomic batch publish (batch {}, expected seq + msg-id)",
        ctx.args.batch
    );
    let replay = "raw ordered replay".to_owned();

    let mut table = Table::default();
    table.push(&pipelined, measure_raw_pipelined(ctx).await?, None)?;
    table.push(
        &atomic,
        measure_raw_atomic_batch(ctx).await?,
        Some(&pipelined),
    )?;
    table.push(&replay, measure_raw_ordered_replay(ctx).await?, None)?;
    let bl = bench_ledger(ctx).await?;
    table.push(
        format!("ledger signed chained append (batch {})", ctx.args.batch),
        measure_ledger_append(ctx, &bl).await?,
        Some(&atomic),
    )?;
    table.push(
        "ledger verified replay",
        measure_ledger_replay(&bl).await?,
        Some(&replay),
    )?;
    table.push(
        "ledger verification in memory (no NATS)",
        measure_ledger_verify_in_memory(&bl).await?,
        None,
    )?;
    let (from_stream, from_bundle) = measure_audit_verify(&bl).await?;
    table.push(
        "audit verify from the stream (chain + Merkle tree)",
        from_stream,
        Some(&replay),
    )?;
    table.push(
        "audit verify from a bundle (no NATS)",
        from_bundle,
        Some(&replay),
    )?;
    measure_proof_at_a_million();
    Ok(table.rows)
}

/// `keyledger audit verify`'s work: rebuild the log (chain verified, Merkle tree built) from the
/// stream, and again from an export bundle of the same events with no NATS.
async fn measure_audit_verify(bl: &BenchLedger) -> Result<(Rate, Rate)> {
    let root = Some(bl.secrets.root_public());
    let started = Instant::now();
    let r = api::audit::rebuild(&bl.conn, root, true, |_, _| {}).await?;
    let from_stream = Rate::since(r.tree.size(), started);
    if r.chain_break.is_some() || !r.foreign.is_empty() {
        bail!("benchmark ledger does not verify");
    }
    let note = ledger::checkpoint::Checkpoint::new(
        bl.conn.names.origin(),
        r.tree.size(),
        r.tree.current_root(),
    )?
    .sign(&bl.conn.names.origin(), &bl.secrets.writer)?
    .to_string();
    let bundle = api::audit::export(&r, 1, &[note], &[])?;
    let text = serde_json::to_string(&bundle)?;
    let started = Instant::now();
    let parsed: api::audit::Bundle = serde_json::from_str(&text)?;
    let (_, report) = api::audit::verify_bundle(&parsed, root, &[])?;
    let from_bundle = Rate::since(report.events, started);
    if !report.ok {
        bail!("bundle does not verify: {report:?}");
    }
    Ok((from_stream, from_bundle))
}

/// Time to produce (and check) an inclusion proof in a log of 1,048,576 entries.
fn measure_proof_at_a_million() {
    let n: u64 = 1 << 20;
    let mut tree = ledger::merkle::Tree::new();
    let started = Instant::now();
    for i in 0..n {
        tree.push_leaf(&i.to_be_bytes());
    }
    let built = started.elapsed();
    let root = tree.current_root();
    let rounds = 1000u64;
    let started = Instant::now();
    let mut longest = std::time::Duration::ZERO;
    for k in 0..rounds {
        let index = (k * 7_919 * 131) % n;
        let t = Instant::now();
        let proof = tree.inclusion_proof(index, n).expect("in range");
        longest = longest.max(t.elapsed());
        let leaf = tree.leaf(index).expect("in range");
        ledger::merkle::verify_inclusion(&leaf, index, n, &proof, &root).expect("proof verifies");
    }
    let per = started.elapsed() / rounds as u32;
    eprintln!(
        "inclusion proof at {n} entries: tree built in {:.2} s; proof + check {:.1} us on average, longest proof {:.1} us ({rounds} proofs)",
        built.as_secs_f64(),
        per.as_secs_f64() * 1e6,
        longest.as_secs_f64() * 1e6
    );
}

fn main() -> Result<()> {
    // Warnings (e.g. the appender retrying) go to stderr; RUST_LOG overrides.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    if args.events == 0 {
        bail!("--events must be positive");
    }
    if args.service_ops == 0 || args.clients == 0 || args.connections == 0 {
        bail!("--service-ops, --clients and --connections must be positive");
    }
    if args.latency_ops == 0 {
        bail!("--latency-ops must be positive");
    }
    let payload = args.payload.unwrap_or_else(bench_entry_size);
    let started = Instant::now();
    // Servers are started (blocking) before the runtime and dropped (killed) after it.
    let servers = Servers::start(args.cluster)?;
    eprintln!(
        "nats-server {} ({}) at {}",
        keyledger_tests::harness::NATS_SERVER_VERSION,
        servers.describe(),
        servers.urls().join(",")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let title = format!(
        "keyledger bench: {} events x {} B, {}",
        args.events,
        payload,
        servers.describe()
    );
    let service_title = format!(
        "keyledger service: {} ops, {} concurrent clients over {} connections (round-robin), \
         1 service replica in this process, {} cores; latency: 1 client, {} sequential after {} \
         warm-up; {}",
        args.service_ops,
        args.clients,
        args.clients.min(args.connections),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.latency_ops,
        LATENCY_WARMUP,
        servers.describe()
    );
    let results = runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .connect(servers.urls())
            .await
            .context("connecting to nats-server")?;
        let ctx = BenchCtx {
            url: servers.urls().join(","),
            js: jetstream::new(client.clone()),
            client,
            replicas: servers.replicas(),
            payloads: make_payloads(args.events, payload),
            args,
        };
        // On Ctrl-C, return normally so the servers are dropped (killed) below.
        tokio::select! {
            rows = run(&ctx) => rows,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })?;
    drop(runtime);
    drop(servers);
    if !results.rows.is_empty() {
        println!();
        print_table(&title, &results.rows);
    }
    if let Some(service) = &results.service {
        println!();
        print_service_table(&service_title, &service.rows);
        for note in &service.notes {
            println!("{note}");
        }
    }
    eprintln!("total wall time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
