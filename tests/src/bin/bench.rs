//! Benchmark harness: starts its own nats-server (or a 3-node cluster), runs the
//! raw NATS reference measurements and prints one table.
//!
//! ```text
//! cargo run --release -p keyledger-tests --bin bench -- [--events N] [--payload BYTES]
//!     [--batch N] [--window N] [--cluster]
//! ```
//!
//! Every measurement gets its own fresh stream. To add one (e.g. the ledger's
//! signed chained append), write an `async fn measure_x(ctx: &BenchCtx) ->
//! Result<Rate>` and add one `table.push(..)` line in [`run`].

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream;
use bytes::Bytes;
use clap::Parser;
use keyledger_tests::baseline::{
    self, bench_stream_config, create_stream_retrying, make_payloads, Rate,
};
use keyledger_tests::harness::{NatsCluster, NatsServer};
use keyledger_tests::report::{print_table, Row};

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

async fn run(ctx: &BenchCtx) -> Result<Vec<Row>> {
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
    Ok(table.rows)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.events == 0 {
        bail!("--events must be positive");
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
    let rows = runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .connect(servers.urls())
            .await
            .context("connecting to nats-server")?;
        let ctx = BenchCtx {
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
    println!();
    print_table(&title, &rows);
    eprintln!("total wall time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
