//! Token issuers for small deployments and tests: `issuer new` creates an Ed25519 issuer key in
//! a passphrase-sealed file, `token issue` mints a bearer token with it. A deployment with its
//! own identity provider trusts that provider's key instead and never uses these.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use ledger::custody::{self, Argon2Params};
use ledger::{Bytes32, RequestId, TenantId};
use projector::policy::Role;
use projector::token::{mint_token, Claims, IssuerKey, MAX_NAME_LEN};

use super::{now_s, print_json};
use crate::{passphrase_from_env, Cli};

/// Default environment variable holding an issuer key file's passphrase.
pub const ISSUER_PASSPHRASE_ENV: &str = "KEYLEDGER_ISSUER_PASSPHRASE";

#[derive(Args)]
pub struct IssuerNewArgs {
    /// Issuer name: the `iss` of the tokens it mints (and the name to trust).
    #[arg(long)]
    name: String,
    /// Where to write the sealed key file (created 0600, never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Environment variable holding the passphrase that seals the file.
    #[arg(long, default_value = ISSUER_PASSPHRASE_ENV)]
    passphrase_env: String,
    /// Argon2id memory cost in KiB.
    #[arg(long, default_value_t = Argon2Params::default().m_cost_kib)]
    argon2_m_kib: u32,
}

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Mint a bearer token with an issuer key file; prints the token.
    Issue(TokenIssueArgs),
}

#[derive(Args)]
pub struct TokenIssueArgs {
    /// The issuer key file (from `keyledger issuer new`).
    #[arg(long)]
    issuer_key: PathBuf,
    /// Environment variable holding the key file's passphrase.
    #[arg(long, default_value = ISSUER_PASSPHRASE_ENV)]
    passphrase_env: String,
    /// The principal (`sub`).
    #[arg(long)]
    subject: String,
    /// The tenant.
    #[arg(long)]
    tenant: String,
    /// A role (repeatable): tenant-admin, key-admin, key-user, auditor.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_s: u64,
}

pub fn issuer_new(cli: &Cli, a: &IssuerNewArgs) -> Result<ExitCode> {
    anyhow::ensure!(
        !a.name.is_empty() && a.name.len() <= 128 && !a.name.chars().any(char::is_control),
        "--name must be 1-128 printable characters"
    );
    let passphrase = passphrase_from_env(&a.passphrase_env)?;
    anyhow::ensure!(
        !passphrase.is_empty(),
        "the passphrase in {} is empty",
        a.passphrase_env
    );
    let key = IssuerKey::generate();
    let params = Argon2Params {
        m_cost_kib: a.argon2_m_kib,
        ..Argon2Params::default()
    };
    custody::write_sealed_key_file(&a.out, &a.name, &key.seed(), &passphrase, params)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let public = Bytes32(key.public_key());
    if cli.json {
        print_json(&serde_json::json!({
            "issuer": a.name,
            "public_key": public.to_hex(),
            "file": a.out,
        }))?;
    } else {
        outln!("{}", public.to_hex())?;
        eprintln!(
            "issuer {} written to {} (sealed; 0600); trust it with: keyledger issuer trust --name {} --public-key {}",
            a.name,
            a.out.display(),
            a.name,
            public.to_hex()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn token(cli: &Cli, cmd: &TokenCmd) -> Result<ExitCode> {
    let TokenCmd::Issue(a) = cmd;
    let passphrase = passphrase_from_env(&a.passphrase_env)?;
    let (iss, seed) = custody::open_sealed_key_file(&a.issuer_key, &passphrase)
        .with_context(|| format!("opening {}", a.issuer_key.display()))?;
    let key = IssuerKey::from_seed(seed);
    anyhow::ensure!(
        !a.subject.is_empty() && a.subject.len() <= MAX_NAME_LEN,
        "--subject must be 1-{MAX_NAME_LEN} bytes"
    );
    anyhow::ensure!(a.ttl_s > 0, "--ttl-s must be positive");
    let tenant = TenantId::new(a.tenant.clone()).context("--tenant")?;
    for r in &a.roles {
        r.parse::<Role>().map_err(|_| {
            let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
            anyhow::anyhow!("unknown --role {r:?} (one of {})", known.join(", "))
        })?;
    }
    let now = now_s();
    let claims = Claims {
        iss,
        sub: a.subject.clone(),
        tenant,
        roles: a.roles.clone(),
        iat: now,
        nbf: now,
        exp: now.saturating_add(a.ttl_s),
        jti: format!("tok-{}", RequestId::random()),
    };
    let token = mint_token(&key, &claims);
    if cli.json {
        print_json(&serde_json::json!({
            "token": token,
            "claims": claims,
        }))?;
    } else {
        outln!("{token}")?;
    }
    Ok(ExitCode::SUCCESS)
}
