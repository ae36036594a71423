//! The `keyledger` binary: ledger set-up, verification, history and a guided demo; the service
//! (`serve`), operator administration (`issuer`, `platform`), tokens (`token`) and the service's
//! operations (`key <verb>`), see [`cli`].
#![forbid(unsafe_code)]

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use ledger::custody::{self, Argon2Params, Protection, Secrets, UnsealShare};
use ledger::event::{
    Actor, Grant, GrantAdded, GrantConditions, Grantee, KeySpec, KeyState, KeyType, KeyUse,
    KeysUsed, Operation,
};
use ledger::nats::genesis::initialise;
use ledger::nats::{replay, Appender, AppenderConfig, LedgerConn, ReplayReport, StreamSettings};
use ledger::sign::{Draft, EventSigner};
use ledger::{Bytes32, ChainState, Checked, EventBody, KeyId, LedgerId, RequestId, TenantId};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "keyledger",
    version,
    about = "A key manager whose every operation is a signed, hash-chained event on NATS JetStream"
)]
struct Cli {
    /// NATS server URL(s), comma separated.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_NATS",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Ledger id (names the stream and is signed into every event).
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_LEDGER",
        default_value = "default"
    )]
    ledger: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the streams, the root/writer/master keys (sealed in a keystore), genesis and the
    /// first writer's enrolment.
    Init(InitArgs),
    /// Replay the whole stream and verify every event; exits non-zero on any problem.
    Verify {
        /// Pin the ledger's root public key (hex); without it the genesis key is trusted on first use.
        #[arg(long)]
        root_key: Option<String>,
    },
    /// Print the verified history.
    History {
        /// Only events about this key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Walk one key through its life (create, rotate, use, grant, destroy) and verify the chain.
    Demo(UnsealArgs),
    /// Run a service replica (needs the keystore) until SIGINT or SIGTERM.
    Serve(cli::serve::ServeArgs),
    /// Token issuers: create an issuer key; trust or revoke an issuer (needs the keystore).
    Issuer {
        #[command(subcommand)]
        cmd: cli::admin::IssuerCmd,
    },
    /// Platforms: enrol or revoke an attested platform (needs the keystore).
    Platform {
        #[command(subcommand)]
        cmd: cli::admin::PlatformCmd,
    },
    /// Bearer tokens: mint one with an issuer key file.
    Token {
        #[command(subcommand)]
        cmd: cli::tokens::TokenCmd,
    },
    /// Key operations through the service (token: --token or KEYLEDGER_TOKEN). Service errors
    /// exit 1, usage and infrastructure problems 2.
    Key(cli::key::KeyCommand),
    /// Compliance report for a time range (HTML with charts, JSON or CSV), from a full replay
    /// and verification of the stream; exits 1 when the chain does not verify cleanly.
    Report(cli::report::ReportArgs),
    /// Audit views through the service: a key's history, a principal's or a platform's
    /// activity, refusals (token: --token or KEYLEDGER_TOKEN).
    Activity(cli::audit_views::ActivityCommand),
    /// Audit: verify the log against its signed checkpoints (from the stream or an offline
    /// bundle), inclusion and consistency proofs, export bundles.
    Audit {
        #[command(subcommand)]
        cmd: cli::audit::AuditCmd,
    },
    /// A witness: cosigns checkpoints it checked against the log; refuses rollbacks and forks.
    Witness {
        #[command(subcommand)]
        cmd: cli::audit::WitnessCmd,
    },
}

#[derive(Args)]
struct InitArgs {
    /// Where to write the keystore (created 0600, never overwritten).
    #[arg(long, default_value = ".keyledger/keystore.json")]
    keystore: PathBuf,
    /// Protect the keystore with the passphrase in this environment variable (Argon2id).
    #[arg(long, conflicts_with = "shares")]
    passphrase_env: Option<String>,
    /// Protect the keystore with this many Shamir unseal shares instead.
    #[arg(long, requires = "threshold")]
    shares: Option<u8>,
    /// Shares needed to unseal.
    #[arg(long)]
    threshold: Option<u8>,
    /// Directory for the share files (one file per share, 0600).
    #[arg(long, default_value = ".keyledger/shares")]
    share_dir: PathBuf,
    /// Stream replicas (1 on a laptop, 3 in production).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Argon2id memory cost in KiB.
    #[arg(long, default_value_t = 65536)]
    argon2_m_kib: u32,
}

#[derive(Args)]
struct UnsealArgs {
    #[arg(long, default_value = ".keyledger/keystore.json")]
    keystore: PathBuf,
    /// Unseal with the passphrase in this environment variable.
    #[arg(long)]
    passphrase_env: Option<String>,
    /// Unseal with these share files (as many as the threshold).
    #[arg(long = "share-file")]
    share_files: Vec<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        // stdout closed early (`keyledger ... | head`): not worth an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn connect(cli: &Cli) -> Result<LedgerConn> {
    let ledger = LedgerId::new(cli.ledger.clone())?;
    let urls: Vec<String> = cli.nats.split(',').map(|s| s.trim().to_string()).collect();
    let client = async_nats::ConnectOptions::new()
        .name("keyledger")
        .connect(urls)
        .await
        .with_context(|| format!("connecting to NATS at {}", cli.nats))?;
    Ok(LedgerConn::new(client, ledger))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.cmd {
        Cmd::Init(a) => init(&cli, a).await,
        Cmd::Verify { root_key } => verify(&cli, root_key.as_deref()).await,
        Cmd::History { key } => history(&cli, key.as_deref()).await,
        Cmd::Demo(a) => demo(&cli, a).await,
        Cmd::Serve(a) => cli::serve::serve(&cli, a).await,
        Cmd::Issuer { cmd } => cli::admin::issuer(&cli, cmd).await,
        Cmd::Platform { cmd } => cli::admin::platform(&cli, cmd).await,
        Cmd::Token { cmd } => cli::tokens::token(&cli, cmd),
        Cmd::Key(k) => cli::key::key(&cli, k).await,
        Cmd::Report(a) => cli::report::report(&cli, a).await,
        Cmd::Audit { cmd } => cli::audit::audit_cmd(&cli, cmd).await,
        Cmd::Witness { cmd } => cli::audit::witness_cmd(&cli, cmd).await,
        Cmd::Activity(a) => cli::audit_views::activity(&cli, a).await,
    }
}

fn passphrase_from_env(var: &str) -> Result<Zeroizing<String>> {
    let p = std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
    Ok(Zeroizing::new(p))
}

fn unseal(a: &UnsealArgs) -> Result<Secrets> {
    if let Some(var) = &a.passphrase_env {
        let p = passphrase_from_env(var)?;
        return Ok(custody::open_with_passphrase(&a.keystore, &p)?);
    }
    if a.share_files.is_empty() {
        bail!("give --passphrase-env VAR or --share-file FILE (as many as the threshold)");
    }
    let mut shares = Vec::new();
    for f in &a.share_files {
        let text = Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        );
        shares.push(UnsealShare::parse(text.trim())?);
    }
    Ok(custody::open_with_shares(&a.keystore, &shares)?)
}

async fn init(cli: &Cli, a: &InitArgs) -> Result<ExitCode> {
    let conn = connect(cli).await?;
    let protection = match (&a.passphrase_env, a.shares, a.threshold) {
        (Some(var), None, _) => Protection::Passphrase {
            passphrase: passphrase_from_env(var)?,
            params: Argon2Params {
                m_cost_kib: a.argon2_m_kib,
                ..Argon2Params::default()
            },
        },
        (None, Some(count), Some(threshold)) => Protection::Shares { threshold, count },
        _ => bail!("give either --passphrase-env VAR or --shares N --threshold K"),
    };
    let secrets = Secrets::generate();
    let (info, shares) =
        custody::create_keystore(&a.keystore, &conn.names.ledger, &secrets, &protection)?;
    let share_paths = custody::write_share_files(&a.share_dir, &shares)?;
    let root = EventSigner::new(secrets.root.clone());
    let settings = StreamSettings {
        replicas: a.replicas,
        ..StreamSettings::default()
    };
    let receipts = initialise(&conn, &settings, root, info.writer_public, info.kek_id).await?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "ledger": conn.names.ledger.as_str(),
                "stream": conn.names.stream(),
                "root_key": info.root_public.to_hex(),
                "writer_key": info.writer_public.to_hex(),
                "kek_id": info.kek_id.to_hex(),
                "keystore": a.keystore,
                "share_files": share_paths,
                "genesis_seq": receipts.first().map(|r| r.seq),
            })
        );
    } else {
        println!(
            "initialised ledger {} (stream {})",
            conn.names.ledger,
            conn.names.stream()
        );
        println!(
            "  root key     {}   <- pin this for audits: keyledger verify --root-key ...",
            info.root_public
        );
        println!("  writer key   {}", info.writer_public);
        println!("  master key   id {}", info.kek_id);
        println!("  keystore     {} (sealed; 0600)", a.keystore.display());
        for p in &share_paths {
            println!("  unseal share {}", p.display());
        }
        for r in &receipts {
            println!(
                "  appended     seq {} index {} hash {}",
                r.seq,
                r.index,
                r.hash.short()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(json: bool) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} verifying [{bar:40}] {pos}/{len} seq ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

async fn replay_all(
    cli: &Cli,
    conn: &LedgerConn,
    pinned: Option<Bytes32>,
) -> Result<(ChainState, ReplayReport, Duration)> {
    conn.event_stream(true).await?;
    let mut state = ChainState::new(conn.names.ledger.clone(), pinned);
    let pb = progress_bar(cli.json);
    let t = Instant::now();
    let report = replay(conn, &mut state, |seq, target| {
        pb.set_length(target);
        pb.set_position(seq);
    })
    .await?;
    pb.finish_and_clear();
    Ok((state, report, t.elapsed()))
}

async fn verify(cli: &Cli, root_key: Option<&str>) -> Result<ExitCode> {
    let conn = connect(cli).await?;
    let pinned = match root_key {
        Some(h) => Some(Bytes32::from_hex(h).context("--root-key must be 64 hex digits")?),
        None => None,
    };
    let unsafe_stream = conn.event_stream(false).await.err();
    let (state, report, elapsed) = replay_all(cli, &conn, pinned).await?;
    let head = state.head();
    let ok = report.is_clean() && unsafe_stream.is_none() && head.is_some();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "ledger": conn.names.ledger.as_str(),
                "ok": ok,
                "verified": report.verified,
                "last_seq": report.last_seq,
                "head": head.map(|h| serde_json::json!({"index": h.index, "hash": h.hash.to_hex(), "seq": h.seq})),
                "root_key": state.root_key().map(|k| k.to_hex()),
                "foreign": report.foreign.iter().map(|f| serde_json::json!({"seq": f.seq, "reason": f.reason.to_string()})).collect::<Vec<_>>(),
                "chain_break": report.chain_break.as_ref().map(|e| serde_json::json!({"seq": e.seq(), "error": e.to_string()})),
                "stream_problem": unsafe_stream.as_ref().map(|e| e.to_string()),
                "seconds": elapsed.as_secs_f64(),
            })
        );
    } else {
        let rate = report.verified as f64 / elapsed.as_secs_f64().max(1e-9);
        println!(
            "ledger {}: {} events verified up to stream sequence {} in {:.2}s ({:.0} events/s)",
            conn.names.ledger,
            report.verified,
            report.last_seq,
            elapsed.as_secs_f64(),
            rate
        );
        if let Some(k) = state.root_key() {
            println!(
                "  root key {k}{}",
                if pinned.is_some() {
                    " (pinned)"
                } else {
                    " (trusted on first use; pin it with --root-key)"
                }
            );
        }
        if let Some(h) = head {
            println!(
                "  head     index {} at seq {} hash {}",
                h.index, h.seq, h.hash
            );
        }
        if let Some(e) = &unsafe_stream {
            println!("  PROBLEM  {e}");
        }
        for f in &report.foreign {
            println!("  FOREIGN  seq {}: {}", f.seq, f.reason);
        }
        if let Some(e) = &report.chain_break {
            println!("  BROKEN   {e}");
        }
        println!(
            "{}",
            if ok {
                "OK: the chain verifies"
            } else {
                "FAILED: see above"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn describe(body: &EventBody) -> String {
    match body {
        EventBody::LedgerCreated(e) => format!("root key {}", e.root_key.short()),
        EventBody::KeysUsed(e) => e
            .uses
            .iter()
            .map(|u| format!("{} v{} by {}", u.operation, u.version, u.principal))
            .collect::<Vec<_>>()
            .join(", "),
        other => projector::audit::describe_event(other),
    }
}

async fn history(cli: &Cli, key: Option<&str>) -> Result<ExitCode> {
    let conn = connect(cli).await?;
    conn.event_stream(true).await?;
    let mut state = ChainState::new(conn.names.ledger.clone(), None);
    let last = conn.last_seq().await?;
    let mut rows = Vec::new();
    let mut broken = None;
    ledger::nats::reader::read_range(&conn, 1, last, |chunk| {
        let (out, err) = state.check_batch(chunk);
        rows.extend(out);
        broken = err;
        broken.is_none()
    })
    .await?;
    for c in &rows {
        match c {
            Checked::Event(v) => {
                let e = v.event();
                if key.is_some_and(|k| e.body.key().map(|x| x.as_str()) != Some(k)) {
                    continue;
                }
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"seq": v.seq(), "index": e.index, "hash": v.hash().to_hex(), "time_ms": e.time_ms,
                            "type": e.body.tag(), "key": e.body.key().map(|k| k.as_str()), "principal": e.actor.principal,
                            "request_id": e.request_id.as_str(), "detail": describe(&e.body)})
                    );
                } else {
                    println!(
                        "seq {:>6}  #{:<6} {}  {:<24} {:<12} {:<18} {}",
                        v.seq(),
                        e.index,
                        v.hash().short(),
                        e.body.tag(),
                        e.body.key().map_or("-", |k| k.as_str()),
                        e.actor.principal,
                        describe(&e.body)
                    );
                }
            }
            Checked::Foreign(f) => println!("seq {:>6}  FOREIGN: {}", f.seq, f.reason),
        }
    }
    if let Some(e) = broken {
        println!("BROKEN: {e}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn demo(cli: &Cli, a: &UnsealArgs) -> Result<ExitCode> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let secrets = unseal(a)?;
    let conn = connect(cli).await?;
    let writer = EventSigner::new(secrets.writer.clone());
    let root_public = secrets.root_public();
    let (appender, _) = Appender::open(
        conn.clone(),
        writer,
        Some(root_public),
        AppenderConfig::default(),
        false,
    )
    .await?;
    let ops = api::keyops::KeyOps::new(conn.clone(), appender.clone(), Arc::new(secrets.kek));
    let tenant = TenantId::new("acme")?;
    let key = KeyId::new(format!("demo-{}", &RequestId::random().as_str()[..8]))?;
    let alice = Actor {
        principal: "alice".into(),
        tenant: Some(tenant.clone()),
        token_id: Some("demo-token".into()),
    };
    let say = |what: &str, r: &ledger::nats::Receipt| {
        println!(
            "{what:<44} -> seq {:>5} index {:>5} hash {}",
            r.seq,
            r.index,
            r.hash.short()
        )
    };

    // 1. Create (version 1) and rotate (version 2).
    let create_req = RequestId::random();
    let spec = KeySpec {
        key: key.clone(),
        tenant: tenant.clone(),
        name: "volume encryption".into(),
        key_type: KeyType::Aes256Gcm,
        state: KeyState::Active,
        exportable: false,
        rotation_period_s: Some(90 * 86400),
        split: None,
        labels: vec![],
    };
    let r = ops.create(alice.clone(), create_req.clone(), spec).await?;
    say(&format!("create {key} (aes256-gcm, v1)"), &r);
    let rotate_req = RequestId::random();
    let r = ops
        .rotate(
            alice.clone(),
            rotate_req.clone(),
            &key,
            KeyType::Aes256Gcm,
            2,
        )
        .await?;
    say("rotate to v2", &r);

    // 2. Use v2: encrypt and decrypt with the unsealed material, each use itemised in the ledger.
    let (v2_sealed, _) = find_version(&conn, &key, 2).await?;
    let material = ops.open(&key, 2, &rotate_req, &v2_sealed).await?;
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&material)
        .context("v2 material is not an AES-256 key")?;
    let nonce = [7u8; 12];
    let ct = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: b"attack at dawn",
                aad: b"volume-42",
            },
        )
        .map_err(|_| anyhow::anyhow!("encryption failed"))?;
    let pt = cipher
        .decrypt(
            (&nonce).into(),
            Payload {
                msg: &ct,
                aad: b"volume-42",
            },
        )
        .map_err(|_| anyhow::anyhow!("decryption failed"))?;
    let uses = [Operation::Encrypt, Operation::Decrypt]
        .into_iter()
        .map(|op| KeyUse {
            key: key.clone(),
            tenant: tenant.clone(),
            version: 2,
            operation: op,
            principal: "alice".into(),
            request_id: RequestId::random(),
            context: None,
        })
        .collect();
    let r = appender
        .append(Draft {
            request_id: RequestId::random(),
            actor: alice.clone(),
            context: None,
            body: KeysUsed { uses }.into(),
        })
        .await?;
    say(
        &format!("encrypt+decrypt with v2 ({} bytes round trip)", pt.len()),
        &r,
    );

    // 3. Grant bob decrypt.
    let r = appender
        .append(Draft {
            request_id: RequestId::random(),
            actor: alice.clone(),
            context: None,
            body: GrantAdded {
                key: key.clone(),
                grant: Grant {
                    grant_id: "g1".into(),
                    grantee: Grantee::Principal("bob".into()),
                    operations: vec![Operation::Decrypt],
                    conditions: GrantConditions {
                        require_platform: false,
                        measurement: None,
                        not_before_ms: None,
                        not_after_ms: None,
                    },
                },
            }
            .into(),
        })
        .await?;
    say("grant bob decrypt", &r);

    // 4. Destroy both versions (crypto-shred), then show the material cannot be opened.
    let (v1_sealed, _) = find_version(&conn, &key, 1).await?;
    let r = ops
        .destroy(
            alice.clone(),
            RequestId::random(),
            &key,
            &[(1, vec![v1_sealed.dek_id]), (2, vec![v2_sealed.dek_id])],
        )
        .await?;
    say("destroy v1, v2 (data keys erased)", &r);
    match ops.open(&key, 2, &rotate_req, &v2_sealed).await {
        Err(e) => println!("{:<44} -> refused: {e}", "open v2 after destroy"),
        Ok(_) => bail!("destroyed material could still be opened"),
    }
    println!();
    history(cli, Some(key.as_str())).await?;
    println!();
    verify(cli, Some(&root_public.to_hex())).await
}

/// Finds a version's sealed material (and the request that sealed it) in the key-state
/// projection rebuilt from the verified chain.
async fn find_version(
    conn: &LedgerConn,
    key: &KeyId,
    version: u32,
) -> Result<(ledger::seal::SealedMaterial, RequestId)> {
    let mut state = ChainState::new(conn.names.ledger.clone(), None);
    let mut keys = projector::KeyStates::new();
    let report =
        ledger::nats::reader::replay_each(conn, &mut state, |_, _| {}, |v| keys.apply(v)).await?;
    if let Some(e) = report.chain_break {
        bail!("{e}");
    }
    let v = keys
        .get(key)
        .and_then(|k| k.versions.get(&version))
        .with_context(|| format!("{key} v{version} not found"))?;
    let sealed = v
        .sealed
        .first()
        .cloned()
        .context("version has no sealed material")?;
    Ok((sealed, v.created_by.clone()))
}
