//! `keyledger key <verb>`: one verb per service operation, named as the operation (except
//! `generate-data-key`, which is `data-key`), each one call of [`api::client::Client`].
//!
//! Output is a few aligned lines by default (a bare value where there is one: a ciphertext, a
//! signature, a plaintext), the result object as JSON with `--json`. Key material and data keys
//! come back sealed to an X25519 transport key generated here for the one request, and are
//! opened here: they never cross NATS in clear.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::{Args, Subcommand};
use ledger::event::{KeyState, KeyType, Operation};
use ledger::transport::{TransportContext, TransportSealed, TransportSecret};
use ledger::{Bytes32, KeyId, LedgerId, RequestId};
use serde_json::json;
use zeroize::Zeroizing;

use api::client::{CallOptions, Client, ClientError};
use api::wire::*;

use super::{print_json, utc};
use crate::{connect, Cli};

/// Environment variable with the bearer token.
pub const TOKEN_ENV: &str = "KEYLEDGER_TOKEN";

#[derive(Args)]
pub struct KeyCommand {
    /// Bearer token (every verb but `nonce` needs one).
    #[arg(long, global = true, env = TOKEN_ENV, hide_env_values = true)]
    token: Option<String>,
    /// Seconds to wait for the service's reply.
    #[arg(long, global = true, default_value_t = 30)]
    timeout_s: u64,
    #[command(subcommand)]
    verb: KeyVerb,
}

#[derive(Subcommand)]
pub enum KeyVerb {
    /// Create a key; the service generates version 1.
    Create(CreateOpts),
    /// Import existing material as version 1 of a new key.
    Import(ImportOpts),
    /// Show a key: state, versions, grants.
    Describe {
        /// Key id.
        key: String,
    },
    /// List the tenant's keys, one line per key.
    List(ListOpts),
    /// Generate a new version and make it the latest.
    Rotate {
        /// Key id.
        key: String,
    },
    /// Raise the minimum version used to encrypt and/or decrypt.
    SetVersions {
        /// Key id.
        key: String,
        #[arg(long)]
        min_encrypt: Option<u32>,
        #[arg(long)]
        min_decrypt: Option<u32>,
    },
    /// Make a pre-active or suspended key active.
    Activate(StateOpts),
    /// Suspend a key (no use until activated again).
    Suspend(StateOpts),
    /// Deactivate a key (decrypt and verify only).
    Deactivate(StateOpts),
    /// Mark a key compromised (decrypt and verify only, flagged).
    Compromise {
        /// Key id.
        key: String,
        #[arg(long)]
        reason: String,
        /// When the compromise happened, ms since the epoch (default: now).
        #[arg(long)]
        at_ms: Option<u64>,
    },
    /// Schedule the key's destruction after a waiting period (the key is unusable meanwhile).
    ScheduleDestroy {
        /// Key id.
        key: String,
        /// Waiting period in seconds (default and minimum: the service's).
        #[arg(long)]
        wait_s: Option<u64>,
    },
    /// Cancel a scheduled destruction.
    CancelDestroy {
        /// Key id.
        key: String,
    },
    /// Destroy the key once its scheduled destruction is due, or only old versions.
    Destroy {
        /// Key id.
        key: String,
        /// Destroy only this version (repeatable; each below the minimum decryption version).
        #[arg(long = "version")]
        versions: Vec<u32>,
    },
    /// Grant operations on a key to a principal, role, tenant or platform group.
    Grant(GrantOpts),
    /// Revoke a grant.
    Revoke {
        /// Key id.
        key: String,
        grant_id: String,
    },
    /// Export a version's material (exportable keys), sealed to a one-time transport key and
    /// opened here; prints it base64.
    GetMaterial {
        /// Key id.
        key: String,
        /// Default: the latest version.
        #[arg(long)]
        version: Option<u32>,
        /// Split keys: the share (1-based) to release.
        #[arg(long)]
        share: Option<u8>,
    },
    /// Encrypt with the latest version; prints `kl:v<version>:<base64>`.
    Encrypt {
        /// Key id.
        key: String,
        #[command(flatten)]
        input: PlaintextInput,
        /// Associated data (must be given again to decrypt).
        #[arg(long)]
        aad: Option<String>,
    },
    /// Decrypt; prints the plaintext (UTF-8 as text, otherwise base64).
    Decrypt {
        /// Key id.
        key: String,
        /// `kl:v<version>:<base64>`.
        ciphertext: String,
        #[arg(long)]
        aad: Option<String>,
    },
    /// Re-encrypt a ciphertext under the latest version without revealing the plaintext.
    Rewrap {
        /// Key id.
        key: String,
        /// `kl:v<version>:<base64>`.
        ciphertext: String,
        #[arg(long)]
        aad: Option<String>,
    },
    /// Generate a data key, returned encrypted under the key (and with --with-plaintext also in
    /// clear, sealed to a one-time transport key and opened here).
    DataKey {
        /// Key id.
        key: String,
        /// Data key length: 16 or 32.
        #[arg(long, default_value_t = 32)]
        bytes: usize,
        #[arg(long)]
        with_plaintext: bool,
        #[arg(long)]
        aad: Option<String>,
    },
    /// Sign a message (ed25519 keys); prints the signature.
    Sign {
        /// Key id.
        key: String,
        #[arg(long)]
        message: String,
    },
    /// Verify a signature; exits 1 when it does not hold.
    Verify {
        /// Key id.
        key: String,
        #[arg(long)]
        message: String,
        #[arg(long)]
        signature: String,
    },
    /// MAC a message (hmac-sha256 keys); prints the MAC.
    Mac {
        /// Key id.
        key: String,
        #[arg(long)]
        message: String,
    },
    /// Verify a MAC; exits 1 when it does not hold.
    VerifyMac {
        /// Key id.
        key: String,
        #[arg(long)]
        message: String,
        #[arg(long)]
        mac: String,
    },
    /// N random bytes from the service, base64.
    Random { bytes: usize },
    /// A fresh attestation nonce (needs no token; also a liveness probe).
    Nonce,
}

#[derive(Args)]
pub struct CreateOpts {
    /// Display name.
    #[arg(long)]
    name: String,
    /// aes128-gcm, aes256-gcm, hmac-sha256, ed25519, x25519, secret, passphrase.
    #[arg(long = "type")]
    key_type: KeyType,
    /// The material may be exported (get-material).
    #[arg(long)]
    exportable: bool,
    /// Rotation period in seconds (describe shows when rotation is due).
    #[arg(long)]
    rotation_period_s: Option<u64>,
    /// Split the material T-of-N (Shamir); shares are released one at a time.
    #[arg(long, value_name = "T/N", value_parser = parse_split)]
    split: Option<(u8, u8)>,
    /// A label `name=value` (repeatable).
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Create in state pre-active instead of active.
    #[arg(long)]
    pre_active: bool,
}

#[derive(Args)]
pub struct ImportOpts {
    #[arg(long)]
    name: String,
    /// Key type (`wrapped`: a blob wrapped by a foreign key, stored as given).
    #[arg(long = "type")]
    key_type: KeyType,
    #[command(flatten)]
    material: MaterialInput,
    /// Name of the foreign key that wraps the material (type `wrapped`).
    #[arg(long)]
    wrapped_by: Option<String>,
    #[arg(long)]
    exportable: bool,
    #[arg(long)]
    rotation_period_s: Option<u64>,
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct MaterialInput {
    /// The material, standard base64 (visible in the process list; prefer --material-file).
    #[arg(long)]
    material_b64: Option<String>,
    /// Read the raw material from this file.
    #[arg(long)]
    material_file: Option<PathBuf>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct PlaintextInput {
    /// The plaintext, as UTF-8 text.
    #[arg(long)]
    plaintext: Option<String>,
    /// Read the plaintext from this file (`-`: standard input).
    #[arg(long = "in", value_name = "FILE")]
    input: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListOpts {
    /// Only keys in this state.
    #[arg(long)]
    state: Option<KeyState>,
    /// Only keys of this type.
    #[arg(long = "type")]
    key_type: Option<KeyType>,
    /// Only keys carrying this label, `name=value`.
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    name_prefix: Option<String>,
    /// Page size (service default 100, at most 1000).
    #[arg(long)]
    limit: Option<usize>,
    /// Continue after this key (the previous page's `next`).
    #[arg(long)]
    after: Option<String>,
}

#[derive(Args)]
pub struct StateOpts {
    /// Key id.
    key: String,
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args)]
pub struct GrantOpts {
    /// Key id.
    key: String,
    #[command(flatten)]
    grantee: GranteeOpts,
    /// An operation to allow (repeatable, or comma separated): encrypt, decrypt, rewrap,
    /// generate-data-key, sign, verify, mac, verify-mac, get-material, describe, ...
    #[arg(long = "op", value_name = "OP", required = true, value_delimiter = ',')]
    operations: Vec<Operation>,
    /// Only for requests presenting a verified platform quote.
    #[arg(long)]
    require_platform: bool,
    /// Only for platforms reporting this measurement (32 bytes, base64).
    #[arg(long)]
    measurement_b64: Option<String>,
    /// Valid from, ms since the epoch.
    #[arg(long)]
    not_before_ms: Option<u64>,
    /// Valid until, ms since the epoch.
    #[arg(long)]
    not_after_ms: Option<u64>,
    /// Grant id (default: chosen by the service).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct GranteeOpts {
    /// A principal (a token's `sub`).
    #[arg(long)]
    principal: Option<String>,
    /// Every holder of a role.
    #[arg(long)]
    role: Option<String>,
    /// The key's whole tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Attested platforms of a group.
    #[arg(long)]
    platform_group: Option<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected NAME=VALUE".into()),
    }
}

fn parse_split(s: &str) -> Result<(u8, u8), String> {
    let bad = || "expected THRESHOLD/SHARES, e.g. 2/3".to_string();
    let (t, n) = s.split_once('/').ok_or_else(bad)?;
    Ok((
        t.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    ))
}

fn decode_b64(s: &str, flag: &str) -> Result<Zeroizing<Vec<u8>>> {
    STANDARD
        .decode(s.trim())
        .map(Zeroizing::new)
        .with_context(|| format!("{flag} is not standard base64"))
}

fn read_input(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(buf)
}

fn aad(a: &Option<String>) -> Option<&[u8]> {
    a.as_deref().map(str::as_bytes)
}

/// Runs a key verb. A service error prints `error: <code>: <message>` on stderr and exits 1;
/// other failures (no NATS, no service, bad files) are the caller's exit-2 errors.
pub async fn key(cli: &Cli, k: &KeyCommand) -> Result<ExitCode> {
    match run(cli, k).await {
        Ok(code) => Ok(code),
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Service { code, message, .. }) => {
                eprintln!("error: {code}: {message}");
                if cli.json {
                    print_json(&json!({"error": {"code": code, "message": message}}))?;
                }
                Ok(ExitCode::from(1))
            }
            _ => Err(e),
        },
    }
}

async fn run(cli: &Cli, k: &KeyCommand) -> Result<ExitCode> {
    let token = match (&k.verb, &k.token) {
        (_, Some(t)) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        (KeyVerb::Nonce, _) => None,
        _ => bail!("give --token TOKEN or set {TOKEN_ENV}"),
    };
    let conn = connect(cli).await?;
    let ledger = conn.names.ledger.clone();
    let mut client = Client::new(conn.client.clone(), ledger.as_str())
        .with_timeout(Duration::from_secs(k.timeout_s.max(1)));
    if let Some(t) = token {
        client = client.with_token(t);
    }
    let json = cli.json;
    match &k.verb {
        KeyVerb::Create(o) => {
            let args = CreateArgs {
                name: o.name.clone(),
                key_type: o.key_type,
                exportable: o.exportable,
                rotation_period_s: o.rotation_period_s,
                split: o
                    .split
                    .map(|(threshold, shares)| SplitArgs { threshold, shares }),
                labels: o.labels.iter().cloned().collect(),
                pre_active: o.pre_active,
            };
            show_key(json, &client.create(&args).await?)
        }
        KeyVerb::Import(o) => {
            let material = match (&o.material.material_b64, &o.material.material_file) {
                (Some(b), _) => decode_b64(b, "--material-b64")?,
                (None, Some(f)) => read_input(f)?,
                (None, None) => bail!("give --material-b64 or --material-file"),
            };
            let args = ImportArgs {
                name: o.name.clone(),
                key_type: o.key_type,
                material: B64(material.to_vec()),
                wrapped_by: o.wrapped_by.clone(),
                exportable: o.exportable,
                rotation_period_s: o.rotation_period_s,
                labels: o.labels.iter().cloned().collect(),
            };
            show_key(json, &client.import(&args).await?)
        }
        KeyVerb::Describe { key } => show_key(json, &client.describe(key).await?),
        KeyVerb::List(o) => {
            let args = ListArgs {
                state: o.state,
                key_type: o.key_type,
                label: o.label.clone(),
                name_prefix: o.name_prefix.clone(),
                limit: o.limit,
                after: o.after.clone(),
            };
            let list = client.list(&args).await?;
            if json {
                print_json(&list)?;
            } else {
                for d in &list.keys {
                    outln!(
                        "{:<26} {:<12} {:<22} v{:<4} {}",
                        d.key,
                        d.key_type,
                        d.state,
                        d.latest_version,
                        d.name
                    )?;
                }
                if let Some(next) = &list.next {
                    eprintln!("(more: --after {next})");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Rotate { key } => show_key(json, &client.rotate(key).await?),
        KeyVerb::SetVersions {
            key,
            min_encrypt,
            min_decrypt,
        } => {
            if min_encrypt.is_none() && min_decrypt.is_none() {
                bail!("give --min-encrypt and/or --min-decrypt");
            }
            let args = SetVersionsArgs {
                key: key.clone(),
                min_encrypt_version: *min_encrypt,
                min_decrypt_version: *min_decrypt,
            };
            show_key(json, &client.set_versions(&args).await?)
        }
        KeyVerb::Activate(o) => state(json, &client, "activate", o).await,
        KeyVerb::Suspend(o) => state(json, &client, "suspend", o).await,
        KeyVerb::Deactivate(o) => state(json, &client, "deactivate", o).await,
        KeyVerb::Compromise { key, reason, at_ms } => {
            let args = CompromiseArgs {
                key: key.clone(),
                reason: reason.clone(),
                compromised_at_ms: *at_ms,
            };
            show_key(json, &client.compromise(&args).await?)
        }
        KeyVerb::ScheduleDestroy { key, wait_s } => {
            show_key(json, &client.schedule_destroy(key, *wait_s).await?)
        }
        KeyVerb::CancelDestroy { key } => show_key(json, &client.cancel_destroy(key).await?),
        KeyVerb::Destroy { key, versions } => {
            let versions = (!versions.is_empty()).then(|| versions.clone());
            show_key(json, &client.destroy(key, versions).await?)
        }
        KeyVerb::Grant(o) => {
            let g = &o.grantee;
            let grantee = match (&g.principal, &g.role, &g.tenant, &g.platform_group) {
                (Some(p), _, _, _) => WireGrantee::Principal(p.clone()),
                (_, Some(r), _, _) => WireGrantee::Role(r.clone()),
                (_, _, Some(t), _) => WireGrantee::Tenant(t.clone()),
                (_, _, _, Some(pg)) => WireGrantee::PlatformGroup(pg.clone()),
                _ => bail!("give one of --principal, --role, --tenant, --platform-group"),
            };
            let measurement = match &o.measurement_b64 {
                Some(m) => Some(B64(decode_b64(m, "--measurement-b64")?.to_vec())),
                None => None,
            };
            let args = GrantArgs {
                key: o.key.clone(),
                grantee,
                operations: o.operations.clone(),
                conditions: WireConditions {
                    require_platform: o.require_platform,
                    measurement,
                    not_before_ms: o.not_before_ms,
                    not_after_ms: o.not_after_ms,
                },
                grant_id: o.id.clone(),
            };
            let r = client.grant(&args).await?;
            if json {
                print_json(&r)?;
            } else {
                outln!("{}", r.grant_id)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Revoke { key, grant_id } => show_key(json, &client.revoke(key, grant_id).await?),
        KeyVerb::GetMaterial {
            key,
            version,
            share,
        } => {
            let secret = TransportSecret::generate();
            let args = GetMaterialArgs {
                key: key.clone(),
                version: *version,
                share: *share,
                transport_key: Some(B64(secret.public().0.to_vec())),
            };
            let r = client.get_material(&args, &CallOptions::default()).await?;
            let material = open_sealed(&secret, &ledger, &r.key, r.version, &r.sealed)?;
            let b64 = Zeroizing::new(STANDARD.encode(&material[..]));
            if json {
                let out = Zeroizing::new(serde_json::to_string(&json!({
                    "key": r.key,
                    "version": r.version,
                    "share": r.share,
                    "material": b64.as_str(),
                }))?);
                outln!("{}", out.as_str())?;
            } else {
                outln!("{}", b64.as_str())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Encrypt { key, input, aad: a } => {
            let plaintext = match (&input.plaintext, &input.input) {
                (Some(p), _) => Zeroizing::new(p.as_bytes().to_vec()),
                (None, Some(f)) => read_input(f)?,
                (None, None) => bail!("give --plaintext or --in"),
            };
            let r = client.encrypt(key, &plaintext, aad(a)).await?;
            show_ciphertext(json, &r)
        }
        KeyVerb::Decrypt {
            key,
            ciphertext,
            aad: a,
        } => {
            let r = client.decrypt(key, ciphertext.trim(), aad(a)).await?;
            if json {
                let out = Zeroizing::new(serde_json::to_string(&r)?);
                outln!("{}", out.as_str())?;
            } else {
                match std::str::from_utf8(&r.plaintext.0) {
                    Ok(text) => outln!("{text}")?,
                    Err(_) => outln!(
                        "{}",
                        Zeroizing::new(STANDARD.encode(&r.plaintext.0)).as_str()
                    )?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Rewrap {
            key,
            ciphertext,
            aad: a,
        } => {
            let r = client.rewrap(key, ciphertext.trim(), aad(a)).await?;
            show_ciphertext(json, &r)
        }
        KeyVerb::DataKey {
            key,
            bytes,
            with_plaintext,
            aad: a,
        } => {
            if !matches!(bytes, 16 | 32) {
                bail!("--bytes must be 16 or 32");
            }
            let secret = with_plaintext.then(TransportSecret::generate);
            let args = DataKeyArgs {
                key: key.clone(),
                bytes: Some(*bytes),
                aad: a.as_ref().map(|s| B64(s.as_bytes().to_vec())),
                with_plaintext: *with_plaintext,
                transport_key: secret.as_ref().map(|s| B64(s.public().0.to_vec())),
            };
            let r = client
                .generate_data_key(&args, &CallOptions::default())
                .await?;
            let plaintext = match (&secret, &r.plaintext_sealed) {
                (Some(s), Some(sealed)) => Some(Zeroizing::new(
                    STANDARD.encode(&open_sealed(s, &ledger, &r.key, r.version, sealed)?[..]),
                )),
                (Some(_), None) => bail!("the service returned no sealed data key"),
                _ => None,
            };
            if json {
                let out = Zeroizing::new(serde_json::to_string(&json!({
                    "key": r.key,
                    "version": r.version,
                    "ciphertext": r.ciphertext,
                    "plaintext": plaintext.as_ref().map(|p| p.as_str()),
                }))?);
                outln!("{}", out.as_str())?;
            } else {
                outln!("ciphertext  {}", r.ciphertext)?;
                if let Some(p) = &plaintext {
                    outln!("plaintext   {}", p.as_str())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Sign { key, message } => {
            let r = client.sign(key, message.as_bytes()).await?;
            if json {
                print_json(&r)?;
            } else {
                outln!("{}", r.signature)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Verify {
            key,
            message,
            signature,
        } => {
            let valid = client
                .verify(key, message.as_bytes(), signature.trim())
                .await?;
            show_valid(json, key, valid)
        }
        KeyVerb::Mac { key, message } => {
            let r = client.mac(key, message.as_bytes()).await?;
            if json {
                print_json(&r)?;
            } else {
                outln!("{}", r.mac)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::VerifyMac { key, message, mac } => {
            let valid = client
                .verify_mac(key, message.as_bytes(), mac.trim())
                .await?;
            show_valid(json, key, valid)
        }
        KeyVerb::Random { bytes } => {
            let r = Zeroizing::new(client.random(*bytes).await?);
            let b64 = Zeroizing::new(STANDARD.encode(&r[..]));
            if json {
                print_json(&json!({ "random": b64.as_str() }))?;
            } else {
                outln!("{}", b64.as_str())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyVerb::Nonce => {
            let r = client.nonce().await?;
            if json {
                print_json(&r)?;
            } else {
                outln!("{}", STANDARD.encode(&r.nonce.0))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn state(json: bool, client: &Client, op: &str, o: &StateOpts) -> Result<ExitCode> {
    show_key(
        json,
        &client.change_state(op, &o.key, o.reason.as_deref()).await?,
    )
}

/// Opens material the service sealed to `secret` for `key`/`version` of this ledger.
fn open_sealed(
    secret: &TransportSecret,
    ledger: &LedgerId,
    key: &str,
    version: u32,
    s: &SealedForTransport,
) -> Result<Zeroizing<Vec<u8>>> {
    let b32 = |v: &B64, what: &str| -> Result<Bytes32> {
        Ok(Bytes32(v.0.as_slice().try_into().with_context(|| {
            format!("sealed reply: {what} is not 32 bytes")
        })?))
    };
    let sealed = TransportSealed {
        ephemeral_public: b32(&s.ephemeral_public, "ephemeral_public")?,
        recipient: b32(&s.recipient, "recipient")?,
        nonce: serde_bytes::ByteBuf::from(s.nonce.0.clone()),
        ciphertext: serde_bytes::ByteBuf::from(s.ciphertext.0.clone()),
    };
    let key = KeyId::new(key).context("sealed reply: key id")?;
    let request_id = RequestId::new(s.request_id.clone()).context("sealed reply: request id")?;
    secret
        .open(
            &TransportContext {
                ledger,
                key: &key,
                version,
                request_id: &request_id,
            },
            &sealed,
        )
        .context("opening the sealed reply")
}

fn show_ciphertext(json: bool, r: &CiphertextResult) -> Result<ExitCode> {
    if json {
        print_json(r)?;
    } else {
        outln!("{}", r.ciphertext)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show_valid(json: bool, key: &str, valid: bool) -> Result<ExitCode> {
    if json {
        print_json(&ValidResult {
            key: key.to_owned(),
            valid,
        })?;
    } else {
        outln!("{}", if valid { "valid" } else { "invalid" })?;
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn grantee(g: &WireGrantee) -> String {
    match g {
        WireGrantee::Principal(p) => format!("principal {p}"),
        WireGrantee::Role(r) => format!("role {r}"),
        WireGrantee::Tenant(t) => format!("tenant {t}"),
        WireGrantee::PlatformGroup(g) => format!("platform group {g}"),
    }
}

fn show_key(json: bool, d: &KeyDescription) -> Result<ExitCode> {
    if json {
        print_json(d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let row = |k: &str, v: &str| outln!("{k:<12} {v}");
    row("key", &d.key)?;
    row("name", &d.name)?;
    row("tenant", &d.tenant)?;
    let imported = if d.imported { " (imported)" } else { "" };
    row("type", &format!("{}{imported}", d.key_type))?;
    row("state", &d.state.to_string())?;
    row(
        "versions",
        &format!(
            "latest {}, min encrypt {}, min decrypt {}",
            d.latest_version, d.min_encrypt_version, d.min_decrypt_version
        ),
    )?;
    for v in &d.versions {
        let mut s = format!(
            "v{} created {} (seq {})",
            v.version,
            utc(v.created_ms),
            v.created_seq
        );
        if let Some(p) = &v.public_key {
            s.push_str(&format!(" public {}", STANDARD.encode(&p.0)));
        }
        if v.destroyed {
            s.push_str(" DESTROYED");
        }
        row("", &s)?;
    }
    row("exportable", if d.exportable { "yes" } else { "no" })?;
    if let Some(p) = d.rotation_period_s {
        let due = d
            .rotation_due_ms
            .map_or(String::new(), |t| format!(", next due {}", utc(t)));
        row("rotation", &format!("every {p} s{due}"))?;
    }
    if let Some(s) = &d.split {
        row("split", &format!("{} of {} shares", s.threshold, s.shares))?;
    }
    if let Some(w) = &d.wrapped_by {
        row("wrapped by", w)?;
    }
    if !d.labels.is_empty() {
        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row("labels", &labels.join(", "))?;
    }
    for g in &d.grants {
        let ops: Vec<&str> = g.operations.iter().map(|o| o.as_str()).collect();
        let mut s = format!("{} {}: {}", g.grant_id, grantee(&g.grantee), ops.join(", "));
        let c = &g.conditions;
        if c.require_platform {
            s.push_str("; attested platform");
        }
        if let Some(m) = &c.measurement {
            s.push_str(&format!("; measurement {}", hex::encode(&m.0)));
        }
        if let Some(t) = c.not_before_ms {
            s.push_str(&format!("; from {}", utc(t)));
        }
        if let Some(t) = c.not_after_ms {
            s.push_str(&format!("; until {}", utc(t)));
        }
        row("grant", &s)?;
    }
    if let Some(t) = d.destroy_after_ms {
        row("destroy", &format!("scheduled, due {}", utc(t)))?;
    }
    if let Some(t) = d.compromised_at_ms {
        row("compromised", &utc(t))?;
    }
    row(
        "ledger seq",
        &format!("created {}, updated {}", d.created_seq, d.updated_seq),
    )?;
    Ok(ExitCode::SUCCESS)
}
