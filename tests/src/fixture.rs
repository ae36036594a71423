//! A running keyledger for tests and benchmarks: an initialised ledger on a real NATS server
//! (or cluster), service replicas, a trusted token issuer, and clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use zeroize::Zeroizing;

use api::client::Client;
use api::service::{self, Running, ServiceConfig};
use ledger::custody::Secrets;
use ledger::event::{Actor, EventBody, IssuerTrusted};
use ledger::nats::genesis::initialise;
use ledger::nats::{Appender, AppenderConfig, LedgerConn, Receipt, ReplayReport, StreamSettings};
use ledger::seal::Kek;
use ledger::sign::{Draft, EventSigner};
use ledger::{Bytes32, ChainState, LedgerId, RequestId, TenantId};
use projector::token::{mint_token, Claims, IssuerKey};

/// The issuer name tokens of [`Ledger::token`] carry.
pub const ISSUER: &str = "test-idp";

/// Connects to `url` (several comma-separated URLs for a cluster).
pub async fn connect(url: &str) -> Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)));
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .context("server url")?;
    Ok(async_nats::connect_with_options(servers, opts).await?)
}

/// An initialised ledger with a trusted issuer.
pub struct Ledger {
    pub id: String,
    pub secrets: Secrets,
    pub issuer: IssuerKey,
    /// An administrative writer (issuer trust, platform enrolment), like an operator's CLI.
    pub admin: Appender,
    pub conn: LedgerConn,
}

impl Ledger {
    /// Initialises ledger `id` on `url` and trusts [`ISSUER`] for every tenant.
    pub async fn init(url: &str, id: &str, settings: &StreamSettings) -> Result<Ledger> {
        let conn = LedgerConn::new(connect(url).await?, LedgerId::new(id)?);
        let secrets = Secrets::generate();
        // A fresh cluster may not place an R3 stream yet (peers still coming online).
        let mut created = conn.create_streams(settings).await;
        for _ in 0..40 {
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            created = conn.create_streams(settings).await;
        }
        created?;
        initialise(
            &conn,
            settings,
            EventSigner::new(secrets.root.clone()),
            secrets.writer_public(),
            secrets.kek.id(),
        )
        .await?;
        let (admin, report) = Appender::open(
            conn.clone(),
            EventSigner::new(secrets.writer.clone()),
            Some(secrets.root_public()),
            AppenderConfig::default(),
            false,
        )
        .await?;
        ensure!(report.is_clean(), "fresh ledger verifies");
        let issuer = IssuerKey::generate();
        let ledger = Ledger {
            id: id.to_owned(),
            secrets,
            issuer,
            admin,
            conn,
        };
        ledger
            .record(IssuerTrusted {
                issuer: ISSUER.into(),
                public_key: Bytes32(ledger.issuer.public_key()),
                tenants: vec![],
            })
            .await?;
        Ok(ledger)
    }

    /// Appends an administrative event (as the operator's CLI does).
    pub async fn record(&self, body: impl Into<EventBody>) -> Result<Receipt> {
        Ok(self
            .admin
            .append(Draft {
                request_id: RequestId::random(),
                actor: Actor::system("operator"),
                context: None,
                body: body.into(),
            })
            .await?)
    }

    pub fn kek(&self) -> Arc<Kek> {
        Arc::new(Kek::from_bytes(Zeroizing::new(
            *self.secrets.kek.expose_bytes(),
        )))
    }

    /// Starts a service replica on its own connection to `url`.
    pub async fn replica(&self, url: &str, config: ServiceConfig) -> Result<Running> {
        let conn = LedgerConn::new(connect(url).await?, LedgerId::new(&self.id)?);
        let (appender, _) = Appender::open(
            conn.clone(),
            EventSigner::new(self.secrets.writer.clone()),
            Some(self.secrets.root_public()),
            AppenderConfig::default(),
            false,
        )
        .await?;
        Ok(service::start(
            conn,
            appender,
            self.kek(),
            Some(self.secrets.root_public()),
            config,
        )
        .await?)
    }

    /// A token of [`ISSUER`] for `sub` in `tenant` with `roles`, valid for an hour.
    pub fn token(&self, sub: &str, tenant: &str, roles: &[&str]) -> String {
        token_with(&self.issuer, ISSUER, sub, tenant, roles)
    }

    /// A client on its own connection to `url` with a token.
    pub async fn client(&self, url: &str, token: &str) -> Result<Client> {
        Ok(Client::new(connect(url).await?, &self.id).with_token(token))
    }

    /// [`Ledger::verify`], retried (bounded) on infrastructure errors, for use right after a
    /// node was lost.
    pub async fn verify_retrying(&self) -> Result<(ReplayReport, Vec<ledger::VerifiedEvent>)> {
        let mut last = None;
        for _ in 0..20 {
            match self.verify().await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
    }

    /// Replays and verifies the whole ledger, root pinned.
    pub async fn verify(&self) -> Result<(ReplayReport, Vec<ledger::VerifiedEvent>)> {
        let mut state = ChainState::new(LedgerId::new(&self.id)?, Some(self.secrets.root_public()));
        let mut events = Vec::new();
        let report = ledger::nats::reader::replay_each(
            &self.conn,
            &mut state,
            |_, _| {},
            |v| events.push(v.clone()),
        )
        .await?;
        Ok((report, events))
    }
}

/// A token signed by `issuer` under the name `iss`.
pub fn token_with(
    issuer: &IssuerKey,
    iss: &str,
    sub: &str,
    tenant: &str,
    roles: &[&str],
) -> String {
    let now = ledger::sign::now_ms() / 1000;
    mint_token(
        issuer,
        &Claims {
            iss: iss.into(),
            sub: sub.into(),
            // Invariant: tests pass valid tenant names.
            tenant: TenantId::new(tenant).expect("valid tenant"),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: format!("tok-{}", RequestId::random()),
        },
    )
}

/// Service settings for tests: a one-second minimum destruction wait.
pub fn test_config() -> ServiceConfig {
    ServiceConfig {
        min_destroy_wait: Duration::from_secs(1),
        refusal_interval: Duration::from_millis(200),
        ..ServiceConfig::default()
    }
}
