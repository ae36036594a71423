//! The keyledger service under load, for the benchmark harness (DESIGN.md §8, "Service").
//!
//! [`ServiceBench::start`] sets up, untimed, a fresh ledger and one service replica (in this
//! process) on a real nats-server, an AES-256-GCM key created by a tenant admin and granted
//! `encrypt` to the benchmark principal, plus one key per write worker, and a few client
//! connections that the load workers share round-robin. The measurements then use the load
//! drivers of [`crate::baseline`], so they are taken exactly like the raw request-reply
//! baselines:
//!
//! * `encrypt` of a [`PLAINTEXT_LEN`]-byte plaintext: a use of a key, recorded (coalesced with
//!   concurrent uses) in a `KeysUsed` event that is durably appended before the reply;
//! * `grant` / `revoke` alternating on the worker's own key: writes that change a key's state,
//!   one guarded event each, never coalesced.
//!
//! [`ServiceBench::check_recorded`] then replays the ledger and checks that every
//! acknowledged operation is in it exactly once; [`ServiceBench::stop`] stops the replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};

use api::client::{Client, ClientError};
use api::service::{Running, ServiceConfig};
use api::wire::{CreateArgs, GrantArgs, WireConditions, WireGrantee};
use ledger::event::{EventBody, KeyType, Operation};
use ledger::nats::StreamSettings;

use crate::baseline::{drive_concurrent, measure_latency, Latency, Rate};
use crate::fixture::{connect, Ledger};

/// Plaintext bytes per `encrypt`.
pub const PLAINTEXT_LEN: usize = 64;

/// The ledger the measurements use.
pub const LEDGER_ID: &str = "bench-svc";

/// Tenant of every key and token.
pub const TENANT: &str = "bench";

/// The principal granted `encrypt`.
pub const USER: &str = "bench-user";

/// How long [`ServiceBench::stop`] waits for the replica to stop.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-call timeout of the benchmark's clients (the drivers bound each call too).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`ServiceBench::start`] waits for the replica to answer every client connection.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A ledger, one service replica and the clients to load it.
pub struct ServiceBench {
    ledger: Ledger,
    service: Option<Running>,
    /// `encrypt` callers (principal [`USER`]), one per connection.
    users: Arc<[Client]>,
    /// Tenant admins (grant and revoke), one per connection.
    admins: Arc<[Client]>,
    /// The key [`USER`] may encrypt with.
    key: Arc<str>,
    /// One key per write worker.
    write_keys: Arc<[String]>,
    /// Per write key: the grant to revoke next, if any.
    pending_grants: Arc<[Mutex<Option<String>>]>,
    /// Acknowledged operations, warm-ups included.
    encrypts: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

fn stored_settings(replicas: usize) -> StreamSettings {
    StreamSettings {
        replicas,
        ..StreamSettings::default()
    }
}

impl ServiceBench {
    /// Initialises ledger [`LEDGER_ID`] on `url` (comma-separated for a cluster) with streams of
    /// `replicas` copies, starts one replica with `config`, creates the keys (one for `encrypt`,
    /// `write_workers` for grant/revoke) and opens `connections` client connections.
    pub async fn start(
        url: &str,
        replicas: usize,
        config: ServiceConfig,
        connections: usize,
        write_workers: usize,
    ) -> Result<Self> {
        ensure!(connections >= 1, "at least one client connection");
        let ledger = Ledger::init(url, LEDGER_ID, &stored_settings(replicas))
            .await
            .context("initialising the benchmark ledger")?;
        let service = ledger
            .replica(url, config)
            .await
            .context("starting the service replica")?;
        let user_token = ledger.token(USER, TENANT, &[]);
        let admin_token = ledger.token("bench-admin", TENANT, &["tenant-admin"]);
        let mut users = Vec::with_capacity(connections);
        let mut admins = Vec::with_capacity(connections);
        for _ in 0..connections {
            let nats = connect(url)
                .await
                .context("connecting a benchmark client")?;
            users.push(
                Client::new(nats.clone(), LEDGER_ID)
                    .with_token(user_token.clone())
                    .with_timeout(CALL_TIMEOUT),
            );
            admins.push(
                Client::new(nats, LEDGER_ID)
                    .with_token(admin_token.clone())
                    .with_timeout(CALL_TIMEOUT),
            );
        }
        wait_until_serving(&users).await?;
        let admin = admins[0].clone();
        let key = admin
            .create(&aes("bench-encrypt"))
            .await
            .context("creating the encrypt key")?
            .key;
        admin
            .grant(&GrantArgs {
                key: key.clone(),
                grantee: WireGrantee::Principal(USER.into()),
                operations: vec![Operation::Encrypt],
                conditions: WireConditions::default(),
                grant_id: None,
            })
            .await
            .context("granting encrypt")?;
        let write_keys = futures::future::try_join_all((0..write_workers.max(1)).map(|w| {
            let admin = admins[w % admins.len()].clone();
            async move {
                anyhow::Ok(
                    admin
                        .create(&aes(&format!("bench-write-{w}")))
                        .await
                        .with_context(|| format!("creating write key {w}"))?
                        .key,
                )
            }
        }))
        .await?;
        let pending_grants = write_keys.iter().map(|_| Mutex::new(None)).collect();
        Ok(Self {
            ledger,
            service: Some(service),
            users: users.into(),
            admins: admins.into(),
            key: key.into(),
            write_keys: write_keys.into(),
            pending_grants,
            encrypts: Arc::new(AtomicU64::new(0)),
            writes: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Number of client connections.
    pub fn connections(&self) -> usize {
        self.users.len()
    }

    /// One `encrypt` on connection `conn % connections`.
    fn encrypt_op(&self) -> impl Fn(usize, u64) -> OpFut + Send + Sync + 'static {
        let (users, key, count) = (self.users.clone(), self.key.clone(), self.encrypts.clone());
        move |conn, i| {
            let (users, key, count) = (users.clone(), key.clone(), count.clone());
            Box::pin(async move {
                let mut plaintext = [b'p'; PLAINTEXT_LEN];
                plaintext[..8].copy_from_slice(&i.to_be_bytes());
                let r = users[conn % users.len()]
                    .encrypt(&key, &plaintext, None)
                    .await?;
                ensure!(!r.ciphertext.is_empty(), "empty ciphertext");
                count.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        }
    }

    /// `encrypt` throughput: `concurrency` workers, `total` calls, after one untimed call per
    /// worker.
    pub async fn encrypt_throughput(&self, concurrency: usize, total: u64) -> Result<Rate> {
        drive_concurrent(concurrency, concurrency as u64, self.encrypt_op())
            .await
            .context("encrypt warm-up")?;
        drive_concurrent(concurrency, total, self.encrypt_op()).await
    }

    /// `encrypt` latency of one sequential client.
    pub async fn encrypt_latency(&self, warmup: usize, samples: usize) -> Result<Latency> {
        let op = self.encrypt_op();
        measure_latency(warmup, samples, |i| op(0, i)).await
    }

    /// The next write on write key `worker`: revoke its pending grant if it has one, otherwise
    /// grant `encrypt` to a principal of its own.
    fn write_op(&self) -> impl Fn(usize, u64) -> OpFut + Send + Sync + 'static {
        let (admins, keys, pending, count) = (
            self.admins.clone(),
            self.write_keys.clone(),
            self.pending_grants.clone(),
            self.writes.clone(),
        );
        move |worker, _| {
            let (admins, keys, pending, count) =
                (admins.clone(), keys.clone(), pending.clone(), count.clone());
            Box::pin(async move {
                let admin = &admins[worker % admins.len()];
                let key = &keys[worker % keys.len()];
                let slot = &pending[worker % keys.len()];
                // The worker owns its slot: no other task touches it between take and put.
                let grant = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                match grant {
                    Some(grant_id) => {
                        admin.revoke(key, &grant_id).await?;
                    }
                    None => {
                        let g = admin
                            .grant(&GrantArgs {
                                key: key.clone(),
                                grantee: WireGrantee::Principal(format!("bench-grantee-{worker}")),
                                operations: vec![Operation::Encrypt],
                                conditions: WireConditions::default(),
                                grant_id: None,
                            })
                            .await?;
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(g.grant_id);
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        }
    }

    /// Grant/revoke throughput: `concurrency` workers (at most one per write key), `total`
    /// writes, after one untimed write per worker.
    pub async fn write_throughput(&self, concurrency: usize, total: u64) -> Result<Rate> {
        ensure!(
            concurrency <= self.write_keys.len(),
            "{concurrency} write workers but {} write keys",
            self.write_keys.len()
        );
        drive_concurrent(concurrency, concurrency as u64, self.write_op())
            .await
            .context("grant/revoke warm-up")?;
        drive_concurrent(concurrency, total, self.write_op()).await
    }

    /// Grant/revoke latency of one sequential client (write key 0), each call timed alone.
    pub async fn write_latency(&self, warmup: usize, samples: usize) -> Result<Latency> {
        let op = self.write_op();
        measure_latency(warmup, samples, |i| op(0, i)).await
    }

    /// Replays and verifies the ledger and checks that it records every acknowledged `encrypt`
    /// (as an itemised use) and every grant and revoke, exactly once. Returns a summary.
    pub async fn check_recorded(&self) -> Result<String> {
        let (report, events) = self.ledger.verify().await.context("replaying the ledger")?;
        ensure!(
            report.is_clean(),
            "the benchmark ledger does not verify: {report:?}"
        );
        let (mut uses_events, mut encrypts, mut writes) = (0u64, 0u64, 0u64);
        for v in &events {
            match &v.event().body {
                EventBody::KeysUsed(k) => {
                    uses_events += 1;
                    encrypts += k
                        .uses
                        .iter()
                        .filter(|u| u.operation == Operation::Encrypt)
                        .count() as u64;
                }
                EventBody::GrantAdded(_) | EventBody::GrantRevoked(_) => writes += 1,
                _ => {}
            }
        }
        // The setup granted `encrypt` once.
        let acked = (
            self.encrypts.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed) + 1,
        );
        ensure!(
            (encrypts, writes) == acked,
            "the ledger records {encrypts} encrypts and {writes} grants/revokes; \
             {} and {} were acknowledged",
            acked.0,
            acked.1
        );
        Ok(format!(
            "ledger verifies: {} events; {encrypts} encrypts in {uses_events} KeysUsed events \
             ({:.1} uses per event), {writes} grants/revokes",
            events.len(),
            encrypts as f64 / uses_events.max(1) as f64
        ))
    }

    /// Stops the replica (bounded by [`STOP_TIMEOUT`]) and closes the clients.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(service) = self.service.take() {
            tokio::time::timeout(STOP_TIMEOUT, service.stop())
                .await
                .context("stopping the service replica")?;
        }
        Ok(())
    }
}

/// Waits until every client's connection reaches the replica (`nonce` records nothing): the
/// replica's subscriptions may not be registered yet, or (in a cluster) not yet known to the
/// node a client is connected to.
async fn wait_until_serving(clients: &[Client]) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for client in clients {
        loop {
            match client.nonce().await {
                Ok(_) => break,
                Err(ClientError::NoResponders(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    return Err(e).context("waiting for the service replica to answer");
                }
            }
        }
    }
    Ok(())
}

/// The future of one benchmark operation.
type OpFut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;

fn aes(name: &str) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        key_type: KeyType::Aes256Gcm,
        exportable: false,
        rotation_period_s: None,
        split: None,
        labels: BTreeMap::new(),
        pre_active: false,
    }
}
