//! `keyledger audit` (verify the log against its checkpoints, prove inclusion and consistency,
//! export and verify bundles offline) and `keyledger witness` (cosign checkpoints after checking
//! them against the log it rebuilt itself; refuse rollbacks and forks). See [`api::audit`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use api::audit::{self, Bundle, CheckpointCheck, Rebuilt, WitnessState};
use ledger::checkpoint::VerifierKey;
use ledger::custody;
use ledger::Bytes32;

use super::now_s;
use crate::{connect, progress_bar, Cli};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the whole log — chain, Merkle tree, every published checkpoint — from the stream
    /// (progress bar) or from a bundle (no NATS needed). Exit 1 on any problem.
    Verify {
        /// Verify this export bundle instead of the stream.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// The ledger's root public key (hex) as you know it; default: the genesis/bundle's.
        #[arg(long)]
        root_key: Option<String>,
        /// A checkpoint note you saved earlier (or a witness's): the log must still contain it
        /// (detects truncation and rollback) with the same root (detects forks).
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// Witness verifier keys (C2SP vkey) whose cosignatures count.
        #[arg(long)]
        witness_key: Vec<String>,
    },
    /// Print the latest log checkpoint (save it: `audit verify --checkpoint` checks against it).
    Checkpoint,
    /// An inclusion proof for the event at stream sequence SEQ against the latest checkpoint
    /// that covers it (JSON; verify offline with `audit check-proof`).
    Prove {
        seq: u64,
        #[arg(long)]
        root_key: Option<String>,
    },
    /// Check an inclusion proof offline.
    CheckProof {
        file: PathBuf,
        /// The log key (C2SP vkey) you trust; default: the one in the proof.
        #[arg(long)]
        log_key: Option<String>,
    },
    /// A consistency proof between two published checkpoints (default: the first and the latest).
    Consistency {
        #[arg(long)]
        old_size: Option<u64>,
        #[arg(long)]
        new_size: Option<u64>,
        #[arg(long)]
        root_key: Option<String>,
    },
    /// Check a consistency proof offline.
    CheckConsistency {
        file: PathBuf,
        #[arg(long)]
        log_key: Option<String>,
    },
    /// Export a bundle: every stored message up to the latest checkpoint, the root key and the
    /// checkpoints, for offline verification.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// First stream sequence of interest (the bundle still starts at genesis so its chain
        /// verifies alone).
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
        #[arg(long)]
        root_key: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum WitnessCmd {
    /// Create a witness key (sealed file; passphrase from --passphrase-env) and print its vkey.
    NewKey {
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "KEYLEDGER_WITNESS_PASSPHRASE")]
        passphrase_env: String,
        #[arg(long, default_value_t = 65536)]
        argon2_m_kib: u32,
    },
    /// Watch the log: rebuild it from the stream, check each new checkpoint against it and
    /// against the last one witnessed (state file), cosign and publish; refuse rollbacks and
    /// forks (exit 1).
    Run {
        #[arg(long)]
        name: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "KEYLEDGER_WITNESS_PASSPHRASE")]
        passphrase_env: String,
        /// Where the last witnessed checkpoint is kept.
        #[arg(long)]
        state: PathBuf,
        /// The ledger's root public key (hex).
        #[arg(long)]
        root_key: Option<String>,
        /// Check and cosign once, then exit.
        #[arg(long)]
        once: bool,
        #[arg(long, default_value_t = 5)]
        interval_s: u64,
    },
}

fn root(h: Option<&String>) -> Result<Option<Bytes32>> {
    h.map(|h| Bytes32::from_hex(h.trim()).context("--root-key must be 64 hex digits"))
        .transpose()
}

fn show(cli: &Cli, v: &impl serde::Serialize) -> Result<()> {
    let text = if cli.json {
        serde_json::to_string(v)?
    } else {
        serde_json::to_string_pretty(v)?
    };
    outln!("{text}")?;
    Ok(())
}

async fn rebuilt(cli: &Cli, root_key: Option<&String>, keep: bool) -> Result<Rebuilt> {
    let conn = connect(cli).await?;
    let bar = progress_bar(cli.json);
    let r = audit::rebuild(&conn, root(root_key)?, keep, |done, target| {
        bar.set_length(target);
        bar.set_position(done);
    })
    .await?;
    bar.finish_and_clear();
    Ok(r)
}

pub async fn audit_cmd(cli: &Cli, cmd: &AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Verify {
            bundle,
            root_key,
            checkpoint,
            witness_key,
        } => {
            let cosigners: Vec<VerifierKey> = witness_key
                .iter()
                .map(|k| VerifierKey::parse(k).context("--witness-key"))
                .collect::<Result<_>>()?;
            let (r, mut report) = match bundle {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let b: Bundle =
                        serde_json::from_str(&text).context("not a keyledger bundle")?;
                    audit::verify_bundle(&b, root(root_key.as_ref())?, &cosigners)?
                }
                None => {
                    let r = rebuilt(cli, root_key.as_ref(), false).await?;
                    let conn = connect(cli).await?;
                    let notes = audit::notes(&conn, &conn.names.checkpoint_subject()).await?;
                    let mut witnessed = Vec::new();
                    for k in &cosigners {
                        witnessed.extend(
                            audit::notes(&conn, &conn.names.witness_subject(k.name())).await?,
                        );
                    }
                    let report =
                        audit::AuditReport::from_rebuilt(&r, &notes, &witnessed, &cosigners);
                    (r, report)
                }
            };
            for path in checkpoint {
                let note = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let check = r.check_checkpoint(&note, &cosigners);
                report.ok &= check.is_ok();
                report.checkpoints.push(check);
            }
            if cli.json {
                super::print_json(&report)?;
            } else {
                outln!(
                    "ledger {}: {} events, tree root {}",
                    report.ledger,
                    report.events,
                    report.root
                )?;
                for f in &report.foreign {
                    outln!("FOREIGN  {f}")?;
                }
                if let Some(b) = &report.chain_break {
                    outln!("BROKEN   {b}")?;
                }
                for c in &report.checkpoints {
                    let line = match c {
                        CheckpointCheck::Consistent { size, .. } => format!("ok       checkpoint of size {size}"),
                        CheckpointCheck::Truncated { size, have } => format!(
                            "TRUNCATED checkpoint of size {size}, but the log holds {have} events (tail removed or rolled back)"
                        ),
                        CheckpointCheck::Forked { size, .. } => format!(
                            "FORKED   the log's tree of size {size} has another root than the checkpoint (history rewritten)"
                        ),
                        CheckpointCheck::Invalid { reason } => format!("INVALID  checkpoint: {reason}"),
                    };
                    outln!("{line}")?;
                }
                if !cosigners.is_empty() {
                    outln!(
                        "{} checkpoint(s) cosigned by a listed witness",
                        report.witnessed
                    )?;
                }
                outln!(
                    "{}",
                    if report.ok {
                        "OK: the log verifies against its checkpoints"
                    } else {
                        "FAILED"
                    }
                )?;
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCmd::Checkpoint => {
            let conn = connect(cli).await?;
            match audit::latest_note(&conn, &conn.names.checkpoint_subject()).await? {
                Some(n) => {
                    outln!("{}", n.trim_end())?;
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!("no checkpoint has been published yet"),
            }
        }
        AuditCmd::Prove { seq, root_key } => {
            let r = rebuilt(cli, root_key.as_ref(), true).await?;
            let conn = connect(cli).await?;
            let notes = audit::notes(&conn, &conn.names.checkpoint_subject()).await?;
            let p = audit::prove(&r, *seq, &notes)?;
            audit::check_inclusion(&p, None)?;
            show(cli, &p)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::CheckProof { file, log_key } => {
            let p: audit::InclusionProof = serde_json::from_str(&std::fs::read_to_string(file)?)
                .context("not an inclusion proof")?;
            match audit::check_inclusion(&p, log_key.as_deref()) {
                Ok(()) => {
                    outln!(
                        "OK: event seq {} (index {}) is in the log of size {} with root {}",
                        p.seq,
                        p.index,
                        p.tree_size,
                        p.root
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: proof-invalid: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCmd::Consistency {
            old_size,
            new_size,
            root_key,
        } => {
            let r = rebuilt(cli, root_key.as_ref(), false).await?;
            let conn = connect(cli).await?;
            let notes = audit::notes(&conn, &conn.names.checkpoint_subject()).await?;
            let sized: Vec<(u64, &String)> = notes
                .iter()
                .filter_map(|n| match r.check_checkpoint(n, &[]) {
                    CheckpointCheck::Consistent { size, .. } => Some((size, n)),
                    _ => None,
                })
                .collect();
            let pick = |want: Option<u64>, first: bool| {
                let mut it = sized.iter();
                match want {
                    Some(w) => it.find(|(s, _)| *s == w).map(|(_, n)| (*n).clone()),
                    None if first => sized
                        .iter()
                        .min_by_key(|(s, _)| *s)
                        .map(|(_, n)| (*n).clone()),
                    None => sized
                        .iter()
                        .max_by_key(|(s, _)| *s)
                        .map(|(_, n)| (*n).clone()),
                }
            };
            let (Some(old), Some(new)) = (pick(*old_size, true), pick(*new_size, false)) else {
                bail!("no published checkpoint of those sizes");
            };
            let p = audit::prove_consistency(&r, &old, &new)?;
            audit::check_consistency(&p, None)?;
            show(cli, &p)?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::CheckConsistency { file, log_key } => {
            let p: audit::ConsistencyProof = serde_json::from_str(&std::fs::read_to_string(file)?)
                .context("not a consistency proof")?;
            match audit::check_consistency(&p, log_key.as_deref()) {
                Ok(()) => {
                    outln!(
                        "OK: the log of size {} is a prefix of the log of size {}",
                        p.old_size,
                        p.new_size
                    )?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: proof-invalid: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCmd::Export {
            out,
            from_seq,
            root_key,
        } => {
            let r = rebuilt(cli, root_key.as_ref(), true).await?;
            let conn = connect(cli).await?;
            let notes = audit::notes(&conn, &conn.names.checkpoint_subject()).await?;
            let b = audit::export(&r, *from_seq, &notes, &[])?;
            let text = serde_json::to_string(&b)?;
            std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
            outln!(
                "wrote {}: {} messages up to seq {}, {} checkpoint(s)",
                out.display(),
                b.messages.len(),
                b.to_seq,
                b.checkpoints.len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn witness_secret(path: &std::path::Path, env: &str) -> Result<(String, SigningKey)> {
    let pass = Zeroizing::new(std::env::var(env).with_context(|| format!("{env} is not set"))?);
    let (label, seed) = custody::open_sealed_key_file(path, &pass)?;
    Ok((label, SigningKey::from_bytes(&seed)))
}

pub async fn witness_cmd(cli: &Cli, cmd: &WitnessCmd) -> Result<ExitCode> {
    match cmd {
        WitnessCmd::NewKey {
            name,
            out,
            passphrase_env,
            argon2_m_kib,
        } => {
            let pass = Zeroizing::new(
                std::env::var(passphrase_env)
                    .with_context(|| format!("{passphrase_env} is not set"))?,
            );
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            custody::write_sealed_key_file(
                out,
                name,
                &key.to_bytes(),
                &pass,
                custody::Argon2Params {
                    m_cost_kib: *argon2_m_kib,
                    ..custody::Argon2Params::default()
                },
            )?;
            outln!("{}", audit::witness_key(name, &key)?)?;
            Ok(ExitCode::SUCCESS)
        }
        WitnessCmd::Run {
            name,
            key,
            passphrase_env,
            state,
            root_key,
            once,
            interval_s,
        } => {
            let (_, signing) = witness_secret(key, passphrase_env)?;
            let conn = connect(cli).await?;
            let mut r = Rebuilt::new(conn.names.ledger.clone(), root(root_key.as_ref())?);
            loop {
                r.catch_up(&conn, false).await?;
                if let Some(b) = &r.chain_break {
                    eprintln!("error: chain-broken: {b}");
                    return Ok(ExitCode::from(1));
                }
                let previous: Option<WitnessState> = match std::fs::read_to_string(state) {
                    Ok(t) => Some(serde_json::from_str(&t).context("witness state file")?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e).context("reading the witness state"),
                };
                let Some(note) =
                    audit::latest_note(&conn, &conn.names.checkpoint_subject()).await?
                else {
                    if *once {
                        bail!("no checkpoint to witness yet");
                    }
                    tokio::time::sleep(Duration::from_secs(*interval_s)).await;
                    continue;
                };
                let fresh = previous
                    .as_ref()
                    .is_none_or(|p| p.note.split("\n\n").next() != note.split("\n\n").next());
                if fresh {
                    match audit::witness(&r, previous.as_ref(), &note, name, &signing, now_s()) {
                        Ok((cosigned, new_state)) => {
                            // Persist before publishing: a witness never forgets what it signed.
                            let tmp = state.with_extension("tmp");
                            std::fs::write(&tmp, serde_json::to_string_pretty(&new_state)?)?;
                            std::fs::rename(&tmp, state)?;
                            audit::publish_cosigned(&conn, name, &cosigned, new_state.size).await?;
                            if cli.json {
                                super::print_json(&new_state)?;
                            } else {
                                outln!(
                                    "cosigned checkpoint of size {} (root {})",
                                    new_state.size,
                                    new_state.root
                                )?;
                            }
                        }
                        Err(refusal) => {
                            eprintln!("error: witness-refused: {refusal}");
                            if cli.json {
                                super::print_json(&refusal)?;
                            }
                            return Ok(ExitCode::from(1));
                        }
                    }
                }
                if *once {
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_secs(*interval_s)).await;
            }
        }
    }
}
