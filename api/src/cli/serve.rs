//! `keyledger serve`: one service replica (see [`api::service`]) until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use ledger::Bytes32;
use tokio::signal::unix::{signal, SignalKind};

use super::open_writer;
use crate::{connect, unseal, Cli, UnsealArgs};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    unseal: UnsealArgs,
    /// Shortest (and default) waiting period of a scheduled destruction, in seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    min_destroy_wait_s: u64,
    /// Pin the ledger's root public key (hex); default: the keystore's root key. A pin that
    /// differs from the keystore's is refused.
    #[arg(long)]
    root_key: Option<String>,
    /// Publish a signed checkpoint after this many new events...
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// ... or after this many seconds (if any event arrived).
    #[arg(long, default_value_t = 10)]
    checkpoint_interval_s: u64,
}

pub async fn serve(cli: &Cli, a: &ServeArgs) -> Result<ExitCode> {
    let secrets = unseal(&a.unseal)?;
    let root_public = secrets.root_public();
    if let Some(h) = &a.root_key {
        let pinned = Bytes32::from_hex(h.trim()).context("--root-key must be 64 hex digits")?;
        if pinned != root_public {
            bail!("--root-key {pinned} is not the keystore's root key {root_public}");
        }
    }
    // Installed before serving, so a signal right after the "serving" line is not lost.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let conn = connect(cli).await?;
    let appender = open_writer(&conn, &secrets).await?;
    let ledger = conn.names.ledger.clone();
    let config = api::service::ServiceConfig {
        min_destroy_wait: Duration::from_secs(a.min_destroy_wait_s),
        ..api::service::ServiceConfig::default()
    };
    let kek = Arc::new(secrets.kek);
    api::audit::ensure_checkpoint_stream(&conn)
        .await
        .context("creating the checkpoint stream")?;
    let cp_conn = conn.clone();
    let running = api::service::start(conn, appender, kek, Some(root_public), config)
        .await
        .context("starting the service")?;
    let checkpointer = api::audit::spawn_checkpointer(
        cp_conn,
        running.follower().clone(),
        secrets.writer.clone(),
        a.checkpoint_every,
        Duration::from_secs(a.checkpoint_interval_s.max(1)),
    );
    eprintln!(
        "keyledger: serving ledger {ledger} on {}.> ({} operations) from seq {}",
        api::wire::subject_prefix(ledger.as_str()),
        api::wire::OPERATIONS.len(),
        running.follower().applied()
    );
    let why = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    eprintln!("keyledger: {why}: stopping");
    checkpointer.abort();
    running.stop().await;
    eprintln!("keyledger: stopped");
    Ok(ExitCode::SUCCESS)
}
