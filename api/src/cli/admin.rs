//! Operator administration: trust and revoke token issuers, enrol and revoke platforms. These
//! are appended straight to the ledger by a writer opened with the keystore (like `demo`), not
//! through the service: they decide who may call the service at all.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ledger::event::{IssuerRevoked, IssuerTrusted, PlatformEnrolled, PlatformRevoked};
use ledger::quote::MAX_PLATFORM_LEN;
use ledger::{Bytes32, TenantId};
use projector::token::MAX_NAME_LEN;

use super::{append_operator_event, open_writer, print_receipt};
use crate::{connect, unseal, Cli, UnsealArgs};

#[derive(Subcommand)]
pub enum IssuerCmd {
    /// Create a token issuer key, sealed in a file under a passphrase; prints its public key.
    New(super::tokens::IssuerNewArgs),
    /// Trust an issuer's tokens (appends `IssuerTrusted`; needs the keystore).
    Trust {
        /// Issuer name: the `iss` of its tokens.
        #[arg(long)]
        name: String,
        /// The issuer's Ed25519 public key, 64 hex digits (from `keyledger issuer new`).
        #[arg(long)]
        public_key: String,
        /// Trust it only for these tenants (repeatable; none: every tenant).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        #[command(flatten)]
        unseal: UnsealArgs,
    },
    /// Stop trusting an issuer's tokens (appends `IssuerRevoked`; needs the keystore).
    Revoke {
        #[arg(long)]
        name: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        unseal: UnsealArgs,
    },
}

#[derive(Subcommand)]
pub enum PlatformCmd {
    /// Enrol a platform's attestation key and expected measurements (appends
    /// `PlatformEnrolled`; needs the keystore).
    Enrol(PlatformEnrolArgs),
    /// Revoke a platform (appends `PlatformRevoked`; needs the keystore).
    Revoke {
        #[arg(long)]
        platform: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        unseal: UnsealArgs,
    },
}

#[derive(Args)]
pub struct PlatformEnrolArgs {
    /// Platform id, as it signs its quotes.
    #[arg(long)]
    platform: String,
    /// The platform's Ed25519 attestation public key, 64 hex digits.
    #[arg(long)]
    attestation_key: String,
    /// Platform group (grants may name it).
    #[arg(long)]
    group: String,
    /// A measurement digest the platform may report, 64 hex digits (repeatable).
    #[arg(long = "measurement", required = true)]
    measurements: Vec<String>,
    #[command(flatten)]
    unseal: UnsealArgs,
}

fn hex32(s: &str, flag: &str) -> Result<Bytes32> {
    Bytes32::from_hex(s.trim()).with_context(|| format!("{flag} must be 64 hex digits"))
}

fn check_text(what: &str, s: &str, max: usize) -> Result<()> {
    anyhow::ensure!(
        !s.trim().is_empty() && s.len() <= max && !s.chars().any(char::is_control),
        "{what} must be 1-{max} bytes of printable text"
    );
    Ok(())
}

async fn record(
    cli: &Cli,
    unseal_args: &UnsealArgs,
    what: &str,
    body: impl Into<ledger::EventBody>,
) -> Result<ExitCode> {
    let secrets = unseal(unseal_args)?;
    let conn = connect(cli).await?;
    let appender = open_writer(&conn, &secrets).await?;
    let r = append_operator_event(&appender, body).await?;
    print_receipt(cli.json, what, &r)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn issuer(cli: &Cli, cmd: &IssuerCmd) -> Result<ExitCode> {
    match cmd {
        IssuerCmd::New(a) => super::tokens::issuer_new(cli, a),
        IssuerCmd::Trust {
            name,
            public_key,
            tenants,
            unseal,
        } => {
            check_text("--name", name, MAX_NAME_LEN)?;
            let public_key = hex32(public_key, "--public-key")?;
            let tenants = tenants
                .iter()
                .map(|t| TenantId::new(t.clone()).with_context(|| format!("--tenant {t:?}")))
                .collect::<Result<Vec<_>>>()?;
            let body = IssuerTrusted {
                issuer: name.clone(),
                public_key,
                tenants,
            };
            record(cli, unseal, &format!("issuer {name} trusted"), body).await
        }
        IssuerCmd::Revoke {
            name,
            reason,
            unseal,
        } => {
            check_text("--name", name, MAX_NAME_LEN)?;
            check_text("--reason", reason, 1024)?;
            let body = IssuerRevoked {
                issuer: name.clone(),
                reason: reason.clone(),
            };
            record(cli, unseal, &format!("issuer {name} revoked"), body).await
        }
    }
}

pub async fn platform(cli: &Cli, cmd: &PlatformCmd) -> Result<ExitCode> {
    match cmd {
        PlatformCmd::Enrol(a) => {
            check_text("--platform", &a.platform, MAX_PLATFORM_LEN)?;
            check_text("--group", &a.group, 256)?;
            let body = PlatformEnrolled {
                platform: a.platform.clone(),
                attestation_key: hex32(&a.attestation_key, "--attestation-key")?,
                group: a.group.clone(),
                measurements: a
                    .measurements
                    .iter()
                    .map(|m| hex32(m, "--measurement"))
                    .collect::<Result<_>>()?,
            };
            let what = format!("platform {} enrolled", a.platform);
            record(cli, &a.unseal, &what, body).await
        }
        PlatformCmd::Revoke {
            platform,
            reason,
            unseal,
        } => {
            check_text("--platform", platform, MAX_PLATFORM_LEN)?;
            check_text("--reason", reason, 1024)?;
            let body = PlatformRevoked {
                platform: platform.clone(),
                reason: reason.clone(),
            };
            record(cli, unseal, &format!("platform {platform} revoked"), body).await
        }
    }
}
