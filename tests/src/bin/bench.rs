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
    /// Payload size in bytes.
    #[arg(long, default_value_t = 300)]
    payload: usize,
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
    // Ledger rows go here, e.g.
    // table.push("ledger signed chained append", measure_ledger_append(ctx).await?, Some(&atomic))?;
    // table.push("ledger verified replay", measure_ledger_replay(ctx).await?, Some(&replay))?;
    Ok(table.rows)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.events == 0 {
        bail!("--events must be positive");
    }
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
        args.payload,
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
            payloads: make_payloads(args.events, args.payload),
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
