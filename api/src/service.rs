//! The `keyledger` NATS micro service: one endpoint per operation under
//! `keyledger.v1.<ledger>.<operation>` (see [`crate::wire`]), discoverable through
//! `$SRV.PING/INFO/STATS`. Several replicas may serve one ledger at once (queue group).
//!
//! Every request goes the same way:
//! 1. decode (bad input gets `malformed-request` / `invalid-argument` / `payload-too-large`);
//! 2. read barrier: the projection catches up with the stream leader, so a read after any
//!    acknowledged write — on any replica — sees it ([`projector::live::Follower::sync`]);
//! 3. one policy decision ([`projector::policy::decide`]); a refusal is recorded
//!    ([`projector::refusals::RefusalLog`]) and answered with its code; an allowed request that
//!    presented a quote first records `PlatformAttested` (which spends the quote's nonce);
//! 4. the operation: its checks against the key's state (a failure is recorded as a refusal),
//!    its cryptography, and its event, appended guarded by the key state it was decided on
//!    ([`ledger::nats::KeyGuard`]): if another replica changed the key meanwhile, the append is
//!    refused and the operation re-decided (up to 3 times) — writes never fork and never apply
//!    twice;
//! 5. the reply, only once the event is durably stored and folded into this replica's view.
//!
//! Uses of keys (encrypt, decrypt, sign, describe, ...) are coalesced: concurrent uses share one
//! `KeysUsed` event, each itemised with its principal and request id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::service::{Request as NatsRequest, ServiceExt};
use async_nats::HeaderMap;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Semaphore};
use zeroize::Zeroizing;

use ledger::event::{
    Actor, Grant, GrantAdded, GrantConditions, GrantRevoked, Grantee, KeyCompromised, KeyCreated,
    KeyDestroyed, KeyDestructionCancelled, KeyDestructionScheduled, KeyImported, KeyRotated,
    KeySpec, KeyState, KeyStateChanged, KeyType, KeyUse, KeyVersionsBounded, KeysUsed, Label,
    MaterialAccessed, Operation, SplitSpec,
};
use ledger::nats::{AppendError, Appender, KeyGuard, LedgerConn, Receipt};
use ledger::quote::Quote;
use ledger::seal::Kek;
use ledger::sign::{now_ms, Draft};
use ledger::transport::{seal_to, TransportContext};
use ledger::{Bytes32, KeyId, RequestId, TenantId};
use projector::attest::{AttestError, NonceIssuer, NONCE_TTL_MS};
use projector::audit::{AuditIndex, AuditQuery, AuditRecord};
use projector::live::{FollowError, Follower};
use projector::policy::{decide, Allowed, Cause, Decision, Inputs, Refusal, Request, Role};
use projector::refusals::RefusalLog;
use projector::token::TokenCache;
use projector::KeyView;

use crate::crypto;
use crate::keyops::{generate_material, KeyOps, Material};
use crate::wire::*;

/// Tuning and policy knobs of a service replica.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Shortest (and default) waiting period of a scheduled destruction.
    pub min_destroy_wait: Duration,
    /// Aggregation interval of repeated refusals.
    pub refusal_interval: Duration,
    /// Uses recorded in one `KeysUsed` event at most.
    pub max_uses_per_event: usize,
    /// `KeysUsed` appends in flight at once.
    pub uses_in_flight: usize,
    /// Requests handled at once; more wait.
    pub max_concurrent_requests: usize,
    /// Opened key versions kept in memory (zeroized when dropped).
    pub material_cache: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            min_destroy_wait: Duration::from_secs(7 * 24 * 3600),
            refusal_interval: Duration::from_secs(1),
            max_uses_per_event: 256,
            uses_in_flight: 4,
            max_concurrent_requests: 4096,
            material_cache: 10_000,
        }
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("projection: {0}")]
    Follow(#[from] FollowError),
    #[error("nats service: {0}")]
    Nats(String),
}

type Cache = HashMap<(KeyId, u32), Arc<Zeroizing<Vec<u8>>>>;

struct UseJob {
    key_use: KeyUse,
    guard: KeyGuard,
    reply: oneshot::Sender<Result<Receipt, AppendError>>,
}

struct Inner {
    ops: KeyOps,
    follower: Follower,
    nonces: NonceIssuer,
    tokens: TokenCache,
    refusals: Mutex<RefusalLog>,
    uses: mpsc::Sender<UseJob>,
    cache: Mutex<Cache>,
    config: ServiceConfig,
}

/// A running service replica.
pub struct Running {
    service: async_nats::service::Service,
    serve: tokio::task::JoinHandle<()>,
    inner: Arc<Inner>,
}

impl Running {
    /// The projection this replica serves from.
    pub fn follower(&self) -> &Follower {
        &self.inner.follower
    }

    /// Stops taking requests, records pending refusal counts, and stops the service.
    pub async fn stop(self) {
        self.serve.abort();
        let drafts = self
            .inner
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain();
        if !drafts.is_empty() {
            if let Err(e) = self.inner.ops.appender().append_all(drafts).await {
                tracing::error!(error = %e, "could not record pending refusal counts");
            }
        }
        let _ = self.service.stop().await;
    }
}

/// Starts a replica: follows the ledger (returns once caught up), then serves.
pub async fn start(
    conn: LedgerConn,
    appender: Appender,
    kek: Arc<Kek>,
    pinned_root: Option<Bytes32>,
    config: ServiceConfig,
) -> Result<Running, StartError> {
    let follower = Follower::start(conn.clone(), pinned_root).await?;
    let nonces = NonceIssuer::from_kek(&kek);
    let ledger = conn.names.ledger.clone();
    let client = conn.client.clone();
    let ops = KeyOps::new(conn, appender.clone(), kek);
    let (uses_tx, uses_rx) = mpsc::channel(65_536);
    let inner = Arc::new(Inner {
        ops,
        follower,
        nonces,
        tokens: TokenCache::new(100_000),
        refusals: Mutex::new(RefusalLog::new(
            config.refusal_interval.as_millis() as u64,
            10_000,
        )),
        uses: uses_tx,
        cache: Mutex::new(HashMap::new()),
        config: config.clone(),
    });
    tokio::spawn(use_coalescer(
        appender,
        uses_rx,
        config.max_uses_per_event.max(1),
        config.uses_in_flight.max(1),
    ));
    tokio::spawn(refusal_flusher(Arc::downgrade(&inner)));

    let service = client
        .service_builder()
        .description(format!("keyledger key manager, ledger {ledger}"))
        .start("keyledger", env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;
    let group = service.group(subject_prefix(ledger.as_str()));
    let mut endpoints = Vec::new();
    for op in OPERATIONS {
        let ep = group
            .endpoint(*op)
            .await
            .map_err(|e| StartError::Nats(e.to_string()))?;
        endpoints.push(ep.map(move |r| (*op, r)).boxed());
    }
    let mut all = futures::stream::select_all(endpoints);
    let limit = Arc::new(Semaphore::new(config.max_concurrent_requests.max(1)));
    let serving = inner.clone();
    let serve = tokio::spawn(async move {
        while let Some((op, req)) = all.next().await {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let inner = serving.clone();
            tokio::spawn(async move {
                handle(&inner, op, req).await;
                drop(permit);
            });
        }
    });
    Ok(Running {
        service,
        serve,
        inner,
    })
}

async fn handle(inner: &Inner, op: &'static str, req: NatsRequest) {
    let ct = req
        .message
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.as_str().to_owned());
    let enc = Encoding::from_content_type(ct.as_deref());
    // A panic in one handler must not take the replica down or leave the caller hanging.
    let result = std::panic::AssertUnwindSafe(inner.dispatch(op, enc, &req.message.payload))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            tracing::error!(op, "handler panicked");
            Err(WireError::new(ErrorCode::Internal, "internal error"))
        });
    let mut headers = HeaderMap::new();
    if enc == Encoding::MsgPack {
        headers.insert("Content-Type", MSGPACK);
    }
    let body = match result {
        Ok((ok, seq)) => enc.encode(&Reply::Ok { ok, seq }),
        Err(e) => {
            let one_line: String = e
                .message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            headers.insert(async_nats::service::NATS_SERVICE_ERROR, one_line.as_str());
            headers.insert(
                async_nats::service::NATS_SERVICE_ERROR_CODE,
                e.status.to_string().as_str(),
            );
            headers.insert(ERROR_CODE_HEADER, e.code);
            enc.encode(&Reply::<()>::Error { error: e.body() })
        }
    };
    if let Err(e) = req.respond_with_headers(Ok(body.into()), headers).await {
        tracing::warn!(op, error = %e, "could not send reply");
    }
}

type Out = Result<(serde_json::Value, u64), WireError>;

fn out<T: Serialize>(v: T, seq: u64) -> Out {
    serde_json::to_value(v)
        .map(|v| (v, seq))
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(
    enc: Encoding,
    body: &[u8],
) -> Result<(Common, T), WireError> {
    let d = decode_request::<T>(enc, body)?;
    Ok((d.common, d.args))
}

/// A request past policy.
struct Authorized {
    allowed: Allowed,
    request_id: RequestId,
    /// The caller chose the request id (an idempotency key): a retry is answered from the
    /// ledger instead of being applied again.
    idempotent: bool,
}

impl Authorized {
    fn tenant(&self) -> &TenantId {
        &self.allowed.claims.tenant
    }
}

fn key_id(s: &str) -> Result<KeyId, WireError> {
    KeyId::new(s).map_err(|_| WireError::invalid("key must be 1-64 characters of [A-Za-z0-9_-]"))
}

fn follow_err(e: FollowError) -> WireError {
    match e {
        FollowError::Halted(c) => WireError::new(
            ErrorCode::LedgerHalted,
            format!("the ledger's chain is broken; the service fails closed: {c}"),
        ),
        other => WireError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

fn append_err(e: AppendError) -> WireError {
    match e {
        AppendError::Conflict { key, .. } => WireError::new(
            ErrorCode::Conflict,
            format!("key {key} changed concurrently; retry"),
        ),
        AppendError::ChainBroken(c) => WireError::new(
            ErrorCode::LedgerHalted,
            format!("the ledger's chain is broken; the service fails closed: {c}"),
        ),
        AppendError::TooLarge { len } => {
            WireError::invalid(format!("the resulting event of {len} bytes is too large"))
        }
        other => WireError::new(ErrorCode::Unavailable, other.to_string()),
    }
}

fn wire_quote(q: &WireQuote) -> Result<Quote, WireError> {
    Ok(Quote {
        platform: q.platform.clone(),
        nonce: Bytes32(b64_32(&q.nonce, "quote.nonce")?),
        measurement: Bytes32(b64_32(&q.measurement, "quote.measurement")?),
        transport_key: Bytes32(b64_32(&q.transport_key, "quote.transport_key")?),
        signature: serde_bytes::ByteBuf::from(q.signature.0.clone()),
    })
}

fn state_err(view: &KeyView, op: Operation) -> WireError {
    WireError::new(
        ErrorCode::WrongKeyState,
        format!(
            "key {} is {}; {op} is not allowed",
            view.spec.key, view.state
        ),
    )
}

/// Keys usable to protect (encrypt, sign, MAC, export, generate data keys).
fn can_protect(v: &KeyView) -> bool {
    v.state == KeyState::Active && v.destroy_after_ms.is_none()
}

/// Keys usable to process (decrypt, verify): NIST allows deactivated and compromised keys to
/// process data they protected before.
fn can_process(v: &KeyView) -> bool {
    matches!(
        v.state,
        KeyState::Active | KeyState::Deactivated | KeyState::Compromised
    ) && v.destroy_after_ms.is_none()
}

fn is_destroyed(s: KeyState) -> bool {
    matches!(s, KeyState::Destroyed | KeyState::DestroyedCompromised)
}

fn check_type(v: &KeyView, ok: &[KeyType], op: Operation) -> Result<(), WireError> {
    if ok.contains(&v.spec.key_type) {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::WrongKeyType,
            format!(
                "{op} needs a key of type {ok:?}; {} is {}",
                v.spec.key, v.spec.key_type
            ),
        ))
    }
}

fn describe(v: &KeyView) -> KeyDescription {
    let latest = v.latest_version();
    KeyDescription {
        key: v.spec.key.to_string(),
        tenant: v.spec.tenant.to_string(),
        name: v.spec.name.clone(),
        key_type: v.spec.key_type,
        state: v.state,
        exportable: v.spec.exportable,
        imported: v.imported,
        wrapped_by: v.wrapped_by.clone(),
        rotation_period_s: v.spec.rotation_period_s,
        rotation_due_ms: v
            .spec
            .rotation_period_s
            .and_then(|p| latest.map(|l| l.created_ms.saturating_add(p.saturating_mul(1000)))),
        split: v.spec.split.as_ref().map(|s| SplitArgs {
            threshold: s.threshold,
            shares: s.shares,
        }),
        labels: v
            .spec
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.value.clone()))
            .collect(),
        latest_version: latest.map_or(0, |l| l.version),
        min_encrypt_version: v.min_encrypt_version,
        min_decrypt_version: v.min_decrypt_version,
        versions: v
            .versions
            .values()
            .map(|x| VersionDescription {
                version: x.version,
                created_ms: x.created_ms,
                created_seq: x.created_seq,
                destroyed: x.destroyed,
                public_key: x.public_key.clone().map(B64),
            })
            .collect(),
        grants: v.grants.values().map(grant_description).collect(),
        destroy_after_ms: v.destroy_after_ms,
        compromised_at_ms: v.compromised_at_ms,
        created_seq: v.created_seq,
        updated_seq: v.updated_seq,
    }
}

fn grant_description(g: &Grant) -> GrantDescription {
    GrantDescription {
        grant_id: g.grant_id.clone(),
        grantee: match &g.grantee {
            Grantee::Principal(p) => WireGrantee::Principal(p.clone()),
            Grantee::Role(r) => WireGrantee::Role(r.clone()),
            Grantee::Tenant(t) => WireGrantee::Tenant(t.to_string()),
            Grantee::PlatformGroup(g) => WireGrantee::PlatformGroup(g.clone()),
        },
        operations: g.operations.clone(),
        conditions: WireConditions {
            require_platform: g.conditions.require_platform,
            measurement: g.conditions.measurement.map(|m| B64(m.0.to_vec())),
            not_before_ms: g.conditions.not_before_ms,
            not_after_ms: g.conditions.not_after_ms,
        },
    }
}

/// Deterministic ids derived from the ledger request id, so a retried request names the same
/// key or grant.
fn derived_id(prefix: &str, request_id: &RequestId, what: &str) -> String {
    let h = blake3::derive_key(
        "keyledger 2026-11 derived id v1",
        format!("{what}\0{request_id}").as_bytes(),
    );
    format!("{prefix}{}", hex::encode(&h[..12]))
}

fn check_name(what: &str, s: &str, max: usize) -> Result<(), WireError> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(WireError::invalid(format!(
            "{what} must be 1-{max} bytes of printable text"
        )));
    }
    Ok(())
}

fn labels(map: &std::collections::BTreeMap<String, String>) -> Result<Vec<Label>, WireError> {
    if map.len() > 32 {
        return Err(WireError::invalid("at most 32 labels"));
    }
    map.iter()
        .map(|(k, v)| {
            check_name("label name", k, 128)?;
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(WireError::invalid(
                    "label values are at most 256 printable bytes",
                ));
            }
            Ok(Label {
                name: k.clone(),
                value: v.clone(),
            })
        })
        .collect()
}

/// The selection of an audit view (its tenant is set once the caller is known).
fn audit_query(
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<AuditQuery, WireError> {
    let limit = limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
    if limit == 0 || limit > MAX_AUDIT_LIMIT {
        return Err(WireError::invalid(format!(
            "limit must be 1-{MAX_AUDIT_LIMIT}"
        )));
    }
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if t <= f {
            return Err(WireError::invalid("to_ms must be after from_ms"));
        }
    }
    Ok(AuditQuery {
        from_ms,
        to_ms,
        after: after.map(parse_audit_cursor).transpose()?,
        limit: Some(limit),
        tenant: None,
    })
}

fn audit_record(r: &AuditRecord) -> AuditRecordWire {
    AuditRecordWire {
        seq: r.seq,
        sub: r.sub,
        time_ms: r.time_ms,
        event: r.event.to_owned(),
        operation: r.operation,
        principal: r.principal.clone(),
        tenant: r.tenant.clone(),
        token_id: r.token_id.clone(),
        key: r.key.as_ref().map(|k| k.to_string()),
        version: r.version,
        platform: r.platform.clone(),
        refusal_code: r.refusal.as_ref().map(|(c, _)| c.clone()),
        refusal_count: r.refusal.as_ref().map(|(_, n)| *n),
        request_id: r.request_id.clone(),
        detail: r.detail.clone(),
    }
}

impl Inner {
    async fn dispatch(&self, op: &str, enc: Encoding, body: &[u8]) -> Out {
        match op {
            "nonce" => {
                let (_, NoArgs {}) = decode(enc, body)?;
                let now = now_ms();
                out(
                    NonceResult {
                        nonce: B64(self.nonces.issue(now).0.to_vec()),
                        expires_ms: now + NONCE_TTL_MS,
                    },
                    self.follower.applied(),
                )
            }
            "create" => {
                let (c, a) = decode(enc, body)?;
                self.create(c, a).await
            }
            "import" => {
                let (c, a) = decode(enc, body)?;
                self.import(c, a).await
            }
            "describe" => {
                let (c, a): (_, KeyArgs) = decode(enc, body)?;
                self.describe(c, a).await
            }
            "list" => {
                let (c, a) = decode(enc, body)?;
                self.list(c, a).await
            }
            "rotate" => {
                let (c, a) = decode(enc, body)?;
                self.rotate(c, a).await
            }
            "set-versions" => {
                let (c, a) = decode(enc, body)?;
                self.set_versions(c, a).await
            }
            "activate" | "suspend" | "deactivate" => {
                let (c, a) = decode(enc, body)?;
                self.change_state(c, a, op).await
            }
            "compromise" => {
                let (c, a) = decode(enc, body)?;
                self.compromise(c, a).await
            }
            "schedule-destroy" => {
                let (c, a) = decode(enc, body)?;
                self.schedule_destroy(c, a).await
            }
            "cancel-destroy" => {
                let (c, a) = decode(enc, body)?;
                self.cancel_destroy(c, a).await
            }
            "destroy" => {
                let (c, a) = decode(enc, body)?;
                self.destroy(c, a).await
            }
            "grant" => {
                let (c, a) = decode(enc, body)?;
                self.grant(c, a).await
            }
            "revoke" => {
                let (c, a) = decode(enc, body)?;
                self.revoke(c, a).await
            }
            "get-material" => {
                let (c, a) = decode(enc, body)?;
                self.get_material(c, a).await
            }
            "encrypt" => {
                let (c, a) = decode(enc, body)?;
                self.encrypt(c, a).await
            }
            "decrypt" => {
                let (c, a) = decode(enc, body)?;
                self.decrypt(c, a, Operation::Decrypt).await
            }
            "rewrap" => {
                let (c, a) = decode(enc, body)?;
                self.decrypt(c, a, Operation::Rewrap).await
            }
            "generate-data-key" => {
                let (c, a) = decode(enc, body)?;
                self.data_key(c, a).await
            }
            "sign" => {
                let (c, a): (_, MessageArgs) = decode(enc, body)?;
                self.sign_or_mac(c, a, Operation::Sign).await
            }
            "mac" => {
                let (c, a): (_, MessageArgs) = decode(enc, body)?;
                self.sign_or_mac(c, a, Operation::Mac).await
            }
            "verify" => {
                let (c, a) = decode(enc, body)?;
                self.verify(c, a).await
            }
            "verify-mac" => {
                let (c, a) = decode(enc, body)?;
                self.verify_mac(c, a).await
            }
            "random" => {
                let (c, a) = decode(enc, body)?;
                self.random(c, a).await
            }
            "audit-key" => {
                let (c, a) = decode(enc, body)?;
                self.audit_key(c, a).await
            }
            "audit-principal" => {
                let (c, a) = decode(enc, body)?;
                self.audit_principal(c, a).await
            }
            "audit-platform" => {
                let (c, a) = decode(enc, body)?;
                self.audit_platform(c, a).await
            }
            "audit-refusals" => {
                let (c, a) = decode(enc, body)?;
                self.audit_refusals(c, a).await
            }
            other => Err(WireError::invalid(format!("unknown operation {other}"))),
        }
    }

    // ---- the common path ------------------------------------------------------------------

    async fn sync(&self) -> Result<u64, WireError> {
        self.follower.sync().await.map_err(follow_err)
    }

    async fn authorize(
        &self,
        c: &Common,
        op: Operation,
        key: Option<&KeyId>,
    ) -> Result<Authorized, WireError> {
        self.sync().await?;
        let quote = c.quote.as_ref().map(wire_quote).transpose()?;
        let now = now_ms();
        let decision = self.follower.read(|v| {
            decide(
                &Request {
                    token: c.token.as_deref(),
                    quote: quote.as_ref(),
                    operation: op,
                    key,
                },
                &Inputs {
                    keys: &v.keys,
                    trust: &v.trust,
                    nonces: &self.nonces,
                    now_ms: now,
                    tokens: Some(&self.tokens),
                },
            )
        });
        let allowed = match decision {
            Decision::Refuse(r) => return Err(self.refuse(r).await),
            Decision::Allow(a) => a,
        };
        let request_id = match &c.request_id {
            None => RequestId::random(),
            Some(id) => {
                if id.is_empty() || id.len() > 128 {
                    return Err(WireError::invalid("request_id must be 1-128 bytes"));
                }
                // Scoped to the caller, so no principal can take another's request id.
                let h = blake3::derive_key(
                    "keyledger 2026-11 client request id v1",
                    format!("{}\0{}\0{id}", allowed.claims.tenant, allowed.claims.sub).as_bytes(),
                );
                RequestId::new(format!("c-{}", hex::encode(&h[..20])))
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            }
        };
        if let Some(d) = allowed.attestation_draft() {
            let r = self.ops.appender().append(d).await.map_err(append_err)?;
            if r.already_present {
                // Another request (possibly on another replica) spent this nonce first.
                let refusal = Refusal {
                    cause: Cause::Attestation(AttestError::Replayed { seq: r.seq }),
                    actor: Some(allowed.actor()),
                    tenant: Some(allowed.claims.tenant.clone()),
                    operation: op,
                    key: key.cloned(),
                    context: allowed.context(),
                };
                return Err(self.refuse(refusal).await);
            }
        }
        Ok(Authorized {
            allowed,
            request_id,
            idempotent: c.request_id.is_some(),
        })
    }

    /// Records a refusal (aggregated, see `RefusalLog`) and returns its error.
    async fn refuse(&self, r: Refusal) -> WireError {
        let drafts = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&r, &RequestId::random(), now_ms());
        if !drafts.is_empty() {
            if let Err(e) = self.ops.appender().append_all(drafts).await {
                tracing::error!(error = %e, "could not record a refusal");
            }
        }
        WireError::refused(r.code(), r.actor.is_some(), r.cause.to_string())
    }

    /// Records an allowed request that failed on the key's state, type or input, and returns
    /// the error. Infrastructure failures are not refusals and are not recorded.
    async fn fail(&self, auth: &Authorized, key: &KeyId, op: Operation, e: WireError) -> WireError {
        if matches!(e.status, 500 | 503) || e.is(ErrorCode::Conflict) {
            return e;
        }
        let drafts = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record_code(
                e.code,
                &e.message,
                auth.allowed.actor(),
                op,
                Some(key.clone()),
                auth.allowed.context(),
                &RequestId::random(),
                now_ms(),
            );
        if !drafts.is_empty() {
            if let Err(err) = self.ops.appender().append_all(drafts).await {
                tracing::error!(error = %err, "could not record a refusal");
            }
        }
        e
    }

    fn view(&self, key: &KeyId, tenant: &TenantId) -> Result<KeyView, WireError> {
        self.follower
            .read(|v| {
                v.keys
                    .get(key)
                    .filter(|k| &k.spec.tenant == tenant)
                    .cloned()
            })
            .ok_or_else(|| WireError::new(ErrorCode::KeyNotFound, "no such key"))
    }

    async fn commit(
        &self,
        drafts: Vec<Draft>,
        guards: Vec<KeyGuard>,
    ) -> Result<Vec<Receipt>, WireError> {
        let r = self
            .ops
            .appender()
            .append_guarded(drafts, guards)
            .await
            .map_err(append_err)?;
        if let Some(last) = r.iter().map(|r| r.seq).max() {
            self.follower.wait_for(last).await.map_err(follow_err)?;
        }
        Ok(r)
    }

    /// Decides and appends a change of one key, re-deciding on a concurrent change. `build`
    /// sees the key as of the decision and returns the drafts to append (or a refusal).
    async fn mutate<'a, T: Send + 'a>(
        &'a self,
        auth: &'a Authorized,
        key: &'a KeyId,
        op: Operation,
        build: impl Fn(KeyView) -> BoxFuture<'a, Result<(Vec<Draft>, T), WireError>>,
    ) -> Result<(T, KeyDescription, u64), WireError> {
        self.mutate_or_replay(auth, key, op, build)
            .await
            .and_then(|(t, d, seq)| match t {
                Some(t) => Ok((t, d, seq)),
                None => Err(WireError::new(
                    ErrorCode::Internal,
                    "replayed request without a result",
                )),
            })
    }

    /// [`Inner::mutate`]; a retried request (same caller-chosen request id, already in the
    /// ledger) is answered with the key as it is now and the original event's sequence, and
    /// `None` for the build result.
    async fn mutate_or_replay<'a, T: Send + 'a>(
        &'a self,
        auth: &'a Authorized,
        key: &'a KeyId,
        op: Operation,
        build: impl Fn(KeyView) -> BoxFuture<'a, Result<(Vec<Draft>, T), WireError>>,
    ) -> Result<(Option<T>, KeyDescription, u64), WireError> {
        if auth.idempotent {
            if let Some(seq) = self.follower.read(|v| v.requests.get(&auth.request_id)) {
                let now = self.view(key, auth.tenant())?;
                return Ok((None, describe(&now), seq));
            }
        }
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                self.sync().await?;
            }
            let view = self.view(key, auth.tenant())?;
            let expected = view.updated_seq;
            let (drafts, extra) = match build(view).await {
                Ok(x) => x,
                Err(e) => return Err(self.fail(auth, key, op, e).await),
            };
            let guard = KeyGuard {
                key: key.clone(),
                expected,
            };
            match self.commit(drafts, vec![guard]).await {
                Ok(r) => {
                    let seq = r.iter().map(|r| r.seq).max().unwrap_or(0);
                    let after = self.view(key, auth.tenant())?;
                    return Ok((Some(extra), describe(&after), seq));
                }
                Err(e) if e.is(ErrorCode::Conflict) && attempt < 2 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Records one use of a key (coalesced with concurrent uses into one `KeysUsed`), guarded
    /// by the key state it was decided on. Returns the event's sequence.
    async fn record_use(
        &self,
        auth: &Authorized,
        view: &KeyView,
        version: u32,
        op: Operation,
    ) -> Result<u64, WireError> {
        let (reply, rx) = oneshot::channel();
        let job = UseJob {
            key_use: KeyUse {
                key: view.spec.key.clone(),
                tenant: view.spec.tenant.clone(),
                version,
                operation: op,
                principal: auth.allowed.claims.sub.clone(),
                request_id: auth.request_id.clone(),
                context: auth.allowed.context(),
            },
            guard: KeyGuard {
                key: view.spec.key.clone(),
                expected: view.updated_seq,
            },
            reply,
        };
        self.uses
            .send(job)
            .await
            .map_err(|_| WireError::new(ErrorCode::Unavailable, "use recorder stopped"))?;
        let receipt = rx
            .await
            .map_err(|_| WireError::new(ErrorCode::Unavailable, "use recorder stopped"))?
            .map_err(append_err)?;
        Ok(receipt.seq)
    }

    /// A key version's material, opened (and cached in memory, zeroized on eviction).
    async fn material(
        &self,
        view: &KeyView,
        version: u32,
    ) -> Result<Arc<Zeroizing<Vec<u8>>>, WireError> {
        let key = &view.spec.key;
        let v = view.versions.get(&version).ok_or_else(|| {
            WireError::new(
                ErrorCode::VersionNotUsable,
                format!("key {key} has no version {version}"),
            )
        })?;
        if v.destroyed {
            self.cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(key.clone(), version));
            return Err(WireError::new(
                ErrorCode::VersionNotUsable,
                format!("version {version} of key {key} was destroyed"),
            ));
        }
        if let Some(m) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(key.clone(), version))
        {
            return Ok(m.clone());
        }
        let m = self
            .ops
            .open_material(
                key,
                version,
                &v.created_by,
                &v.sealed,
                view.spec.split.as_ref(),
            )
            .await
            .map_err(|e| {
                tracing::error!(key = %key, version, error = %e, "cannot open key material");
                WireError::new(
                    ErrorCode::Unavailable,
                    format!("cannot open version {version} of key {key}"),
                )
            })?;
        let m = Arc::new(m);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.config.material_cache {
            cache.clear();
        }
        cache.insert((key.clone(), version), m.clone());
        Ok(m)
    }

    fn forget(&self, key: &KeyId) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(k, _), _| k != key);
    }

    fn transport_key(&self, auth: &Authorized, given: Option<&B64>) -> Result<Bytes32, WireError> {
        let quoted = auth.allowed.platform.as_ref().map(|p| p.transport_key);
        let given = given
            .map(|b| b64_32(b, "transport_key").map(Bytes32))
            .transpose()?;
        match (quoted, given) {
            (Some(q), Some(g)) if q != g => Err(WireError::invalid(
                "transport_key differs from the one in the quote",
            )),
            (Some(q), _) => Ok(q),
            (None, Some(g)) => Ok(g),
            (None, None) => Err(WireError::new(
                ErrorCode::TransportKeyRequired,
                "material leaves only sealed: give transport_key (X25519) or a quote",
            )),
        }
    }

    fn sealed_for(
        &self,
        recipient: &Bytes32,
        key: &KeyId,
        version: u32,
        request_id: &RequestId,
        plaintext: &[u8],
    ) -> Result<SealedForTransport, WireError> {
        let s = seal_to(
            recipient,
            &TransportContext {
                ledger: self.ops.ledger(),
                key,
                version,
                request_id,
            },
            plaintext,
        )
        .map_err(|e| WireError::invalid(format!("transport_key: {e}")))?;
        Ok(SealedForTransport {
            ephemeral_public: B64(s.ephemeral_public.0.to_vec()),
            recipient: B64(s.recipient.0.to_vec()),
            nonce: B64(s.nonce.to_vec()),
            ciphertext: B64(s.ciphertext.to_vec()),
            request_id: request_id.to_string(),
        })
    }

    // ---- lifecycle ------------------------------------------------------------------------

    async fn create(&self, c: Common, a: CreateArgs) -> Out {
        check_name("name", &a.name, 256)?;
        let labels = labels(&a.labels)?;
        if a.key_type == KeyType::Wrapped {
            return Err(WireError::new(
                ErrorCode::WrongKeyType,
                "wrapped keys cannot be generated; import them",
            ));
        }
        let split = match &a.split {
            None => None,
            Some(s) if s.threshold >= 2 && s.shares >= s.threshold && s.shares <= 16 => {
                Some(SplitSpec {
                    threshold: s.threshold,
                    shares: s.shares,
                })
            }
            Some(_) => {
                return Err(WireError::invalid(
                    "split needs 2 <= threshold <= shares <= 16",
                ))
            }
        };
        if a.rotation_period_s == Some(0) {
            return Err(WireError::invalid("rotation_period_s must be positive"));
        }
        let auth = self.authorize(&c, Operation::Create, None).await?;
        let key = key_id(&derived_id("k", &auth.request_id, "key"))?;
        let spec = KeySpec {
            key: key.clone(),
            tenant: auth.tenant().clone(),
            name: a.name,
            key_type: a.key_type,
            state: if a.pre_active {
                KeyState::PreActive
            } else {
                KeyState::Active
            },
            exportable: a.exportable,
            rotation_period_s: a.rotation_period_s,
            split,
            labels,
        };
        let material = generate_material(a.key_type)
            .map_err(|e| WireError::new(ErrorCode::WrongKeyType, e.to_string()))?;
        self.new_key(&auth, spec, material, false, None).await
    }

    async fn import(&self, c: Common, a: ImportArgs) -> Out {
        check_name("name", &a.name, 256)?;
        let labels = labels(&a.labels)?;
        let material = crypto::check_import(a.key_type, &a.material.0)
            .map_err(|e| WireError::invalid(e.to_string()))?;
        match (&a.wrapped_by, a.key_type) {
            (Some(w), KeyType::Wrapped) => check_name("wrapped_by", w, 256)?,
            (None, KeyType::Wrapped) => {
                return Err(WireError::invalid("wrapped keys need wrapped_by"))
            }
            (Some(_), _) => return Err(WireError::invalid("wrapped_by is only for type wrapped")),
            (None, _) => {}
        }
        let auth = self.authorize(&c, Operation::Import, None).await?;
        let key = key_id(&derived_id("k", &auth.request_id, "key"))?;
        let spec = KeySpec {
            key,
            tenant: auth.tenant().clone(),
            name: a.name,
            key_type: a.key_type,
            state: KeyState::Active,
            exportable: a.exportable,
            rotation_period_s: a.rotation_period_s,
            split: None,
            labels,
        };
        self.new_key(&auth, spec, material, true, a.wrapped_by)
            .await
    }

    async fn new_key(
        &self,
        auth: &Authorized,
        spec: KeySpec,
        material: Material,
        imported: bool,
        wrapped_by: Option<String>,
    ) -> Out {
        let key = spec.key.clone();
        // A retried request finds its key already made.
        if let Ok(v) = self.view(&key, auth.tenant()) {
            return out(describe(&v), v.created_seq);
        }
        let vm = self
            .ops
            .seal_version_split(&key, 1, &auth.request_id, &material, spec.split.as_ref())
            .await
            .map_err(|e| WireError::new(ErrorCode::Unavailable, e.to_string()))?;
        let body: ledger::EventBody = if imported {
            KeyImported {
                spec,
                material: vm,
                wrapped_by,
            }
            .into()
        } else {
            KeyCreated { spec, material: vm }.into()
        };
        let r = self
            .commit(
                vec![auth.allowed.draft(auth.request_id.clone(), body)],
                vec![KeyGuard {
                    key: key.clone(),
                    expected: 0,
                }],
            )
            .await;
        match r {
            Ok(r) => {
                let v = self.view(&key, auth.tenant())?;
                out(describe(&v), r[0].seq)
            }
            // Retried concurrently: the key exists now.
            Err(e) if e.is(ErrorCode::Conflict) => {
                self.sync().await?;
                let v = self.view(&key, auth.tenant())?;
                out(describe(&v), v.created_seq)
            }
            Err(e) => Err(e),
        }
    }

    async fn describe(&self, c: Common, a: KeyArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, Operation::Describe, Some(&key)).await?;
        let view = self.view(&key, auth.tenant())?;
        let version = view.latest_version().map_or(0, |v| v.version);
        let seq = self
            .record_use(&auth, &view, version, Operation::Describe)
            .await?;
        out(describe(&view), seq)
    }

    async fn list(&self, c: Common, a: ListArgs) -> Out {
        let limit = a.limit.unwrap_or(100);
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Err(WireError::invalid(format!(
                "limit must be 1-{MAX_LIST_LIMIT}"
            )));
        }
        let label = match &a.label {
            None => None,
            Some(l) => Some(
                l.split_once('=')
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .ok_or_else(|| WireError::invalid("label filter is name=value"))?,
            ),
        };
        let after = a.after.as_deref().map(key_id).transpose()?;
        let auth = self.authorize(&c, Operation::List, None).await?;
        let tenant = auth.tenant().clone();
        let (keys, more, seq) = self.follower.read(|v| {
            let mut page = Vec::new();
            let mut more = false;
            for k in v.keys.of_tenant(&tenant) {
                if after.as_ref().is_some_and(|a| &k.spec.key <= a) {
                    continue;
                }
                let ok = a.state.is_none_or(|s| k.state == s)
                    && a.key_type.is_none_or(|t| k.spec.key_type == t)
                    && a.name_prefix
                        .as_ref()
                        .is_none_or(|p| k.spec.name.starts_with(p.as_str()))
                    && label.as_ref().is_none_or(|(n, val)| {
                        k.spec
                            .labels
                            .iter()
                            .any(|l| &l.name == n && &l.value == val)
                    });
                if !ok {
                    continue;
                }
                if page.len() == limit {
                    more = true;
                    break;
                }
                page.push(describe(k));
            }
            (page, more, v.last_seq)
        });
        let next = if more {
            keys.last().map(|k| k.key.clone())
        } else {
            None
        };
        out(KeyList { keys, next }, seq)
    }

    async fn rotate(&self, c: Common, a: KeyArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, Operation::Rotate, Some(&key)).await?;
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::Rotate, |v| {
                let auth = &auth;
                async move {
                    if !matches!(v.state, KeyState::Active | KeyState::PreActive)
                        || v.destroy_after_ms.is_some()
                    {
                        return Err(state_err(&v, Operation::Rotate));
                    }
                    if v.imported {
                        return Err(WireError::new(
                            ErrorCode::WrongKeyType,
                            "imported keys are rotated by importing new material as a new key",
                        ));
                    }
                    let version = v.latest_version().map_or(1, |l| l.version + 1);
                    let material = generate_material(v.spec.key_type)
                        .map_err(|e| WireError::new(ErrorCode::WrongKeyType, e.to_string()))?;
                    let vm = self
                        .ops
                        .seal_version_split(
                            &v.spec.key,
                            version,
                            &auth.request_id,
                            &material,
                            v.spec.split.as_ref(),
                        )
                        .await
                        .map_err(|e| WireError::new(ErrorCode::Unavailable, e.to_string()))?;
                    let body = KeyRotated {
                        key: v.spec.key.clone(),
                        material: vm,
                    };
                    Ok((
                        vec![auth.allowed.draft(auth.request_id.clone(), body)],
                        version,
                    ))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    async fn set_versions(&self, c: Common, a: SetVersionsArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self
            .authorize(&c, Operation::SetVersions, Some(&key))
            .await?;
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::SetVersions, |v| {
                let (auth, a) = (&auth, &a);
                async move {
                    if is_destroyed(v.state) {
                        return Err(state_err(&v, Operation::SetVersions));
                    }
                    let latest = v.latest_version().map_or(0, |l| l.version);
                    let dec = a.min_decrypt_version.unwrap_or(v.min_decrypt_version);
                    // Raising the decryption minimum raises the encryption minimum with it.
                    let enc = a
                        .min_encrypt_version
                        .unwrap_or(v.min_encrypt_version.max(dec));
                    if !(1 <= dec && dec <= enc && enc <= latest) {
                        return Err(WireError::invalid(format!(
                            "need 1 <= min_decrypt_version ({dec}) <= min_encrypt_version ({enc}) <= latest version ({latest})"
                        )));
                    }
                    if v.versions.get(&enc).is_none_or(|x| x.destroyed) {
                        return Err(WireError::new(
                            ErrorCode::VersionNotUsable,
                            format!("version {enc} is destroyed"),
                        ));
                    }
                    let body = KeyVersionsBounded {
                        key: v.spec.key.clone(),
                        min_encrypt_version: enc,
                        min_decrypt_version: dec,
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], ()))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    async fn change_state(&self, c: Common, a: StateArgs, op: &str) -> Out {
        let (operation, to, from): (Operation, KeyState, &[KeyState]) = match op {
            "activate" => (
                Operation::Activate,
                KeyState::Active,
                &[KeyState::PreActive, KeyState::Suspended],
            ),
            "suspend" => (Operation::Suspend, KeyState::Suspended, &[KeyState::Active]),
            _ => (
                Operation::Deactivate,
                KeyState::Deactivated,
                &[KeyState::PreActive, KeyState::Active, KeyState::Suspended],
            ),
        };
        if let Some(r) = &a.reason {
            check_name("reason", r, 1024)?;
        }
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, operation, Some(&key)).await?;
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, operation, |v| {
                let (auth, a) = (&auth, &a);
                async move {
                    if !from.contains(&v.state) {
                        return Err(state_err(&v, operation));
                    }
                    let body = KeyStateChanged {
                        key: v.spec.key.clone(),
                        from: v.state,
                        to,
                        reason: a.reason.clone().unwrap_or_default(),
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], ()))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    async fn compromise(&self, c: Common, a: CompromiseArgs) -> Out {
        check_name("reason", &a.reason, 1024)?;
        let key = key_id(&a.key)?;
        let auth = self
            .authorize(&c, Operation::Compromise, Some(&key))
            .await?;
        let now = now_ms();
        if a.compromised_at_ms.is_some_and(|t| t > now) {
            return Err(WireError::invalid("compromised_at_ms is in the future"));
        }
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::Compromise, |v| {
                let (auth, a) = (&auth, &a);
                async move {
                    if is_destroyed(v.state) || v.state == KeyState::Compromised {
                        return Err(state_err(&v, Operation::Compromise));
                    }
                    let body = KeyCompromised {
                        key: v.spec.key.clone(),
                        from: v.state,
                        compromised_at_ms: a.compromised_at_ms.unwrap_or(now),
                        reason: a.reason.clone(),
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], ()))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    async fn schedule_destroy(&self, c: Common, a: ScheduleDestroyArgs) -> Out {
        let key = key_id(&a.key)?;
        let min = self.config.min_destroy_wait.as_secs();
        let wait = a.wait_s.unwrap_or(min);
        if wait < min || wait > 10 * 365 * 24 * 3600 {
            return Err(WireError::invalid(format!(
                "wait_s must be at least {min} (the service's minimum waiting period) and at most ten years"
            )));
        }
        let auth = self
            .authorize(&c, Operation::ScheduleDestroy, Some(&key))
            .await?;
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::ScheduleDestroy, |v| {
                let auth = &auth;
                async move {
                    if is_destroyed(v.state) || v.destroy_after_ms.is_some() {
                        return Err(state_err(&v, Operation::ScheduleDestroy));
                    }
                    let body = KeyDestructionScheduled {
                        key: v.spec.key.clone(),
                        destroy_after_ms: now_ms().saturating_add(wait.saturating_mul(1000)),
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], ()))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    async fn cancel_destroy(&self, c: Common, a: KeyArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self
            .authorize(&c, Operation::CancelDestroy, Some(&key))
            .await?;
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::CancelDestroy, |v| {
                let auth = &auth;
                async move {
                    if v.destroy_after_ms.is_none() {
                        return Err(WireError::new(
                            ErrorCode::DestructionNotDue,
                            "no destruction is scheduled",
                        ));
                    }
                    let body = KeyDestructionCancelled {
                        key: v.spec.key.clone(),
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], ()))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    async fn destroy(&self, c: Common, a: DestroyArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, Operation::Destroy, Some(&key)).await?;
        let (deks, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::Destroy, |v| {
                let (auth, a) = (&auth, &a);
                async move {
                    let versions: Vec<u32> = match &a.versions {
                        None => {
                            match v.destroy_after_ms {
                                Some(t) if now_ms() >= t => {}
                                Some(t) => {
                                    return Err(WireError::new(
                                        ErrorCode::DestructionNotDue,
                                        format!("destruction is scheduled for {t} (ms since epoch)"),
                                    ))
                                }
                                None => {
                                    return Err(WireError::new(
                                        ErrorCode::DestructionNotDue,
                                        "schedule the destruction first (schedule-destroy)",
                                    ))
                                }
                            }
                            v.versions
                                .values()
                                .filter(|x| !x.destroyed)
                                .map(|x| x.version)
                                .collect()
                        }
                        Some(list) => {
                            if list.is_empty() {
                                return Err(WireError::invalid("versions is empty"));
                            }
                            for n in list {
                                let ok = v
                                    .versions
                                    .get(n)
                                    .is_some_and(|x| !x.destroyed && *n < v.min_decrypt_version);
                                if !ok {
                                    return Err(WireError::new(
                                        ErrorCode::VersionNotUsable,
                                        format!(
                                            "version {n} must exist, not be destroyed, and be below the minimum decryption version {}",
                                            v.min_decrypt_version
                                        ),
                                    ));
                                }
                            }
                            let mut l = list.clone();
                            l.sort_unstable();
                            l.dedup();
                            l
                        }
                    };
                    if versions.is_empty() {
                        return Err(state_err(&v, Operation::Destroy));
                    }
                    let deks: Vec<Bytes32> = versions
                        .iter()
                        .filter_map(|n| v.versions.get(n))
                        .flat_map(|x| x.sealed.iter().map(|s| s.dek_id))
                        .collect();
                    let body = KeyDestroyed {
                        key: v.spec.key.clone(),
                        versions,
                        erased_deks: deks.clone(),
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], deks))
                }
                .boxed()
            })
            .await?;
        // The event is stored; now crypto-shred (repeated harmlessly if this crashes midway;
        // a retried request repeats the erasure of every destroyed version).
        let deks = match deks {
            Some(d) => d,
            None => self
                .view(&key, auth.tenant())?
                .versions
                .values()
                .filter(|v| v.destroyed)
                .flat_map(|v| v.sealed.iter().map(|s| s.dek_id))
                .collect(),
        };
        self.forget(&key);
        self.ops.erase_deks(&key, &deks).await.map_err(|e| {
            WireError::new(ErrorCode::Unavailable, format!("erasing data keys: {e}"))
        })?;
        out(d, seq)
    }

    async fn grant(&self, c: Common, a: GrantArgs) -> Out {
        let key = key_id(&a.key)?;
        if a.operations.is_empty() {
            return Err(WireError::invalid("operations is empty"));
        }
        if let Some(op) = a
            .operations
            .iter()
            .find(|o| !projector::policy::targets_key(**o))
        {
            return Err(WireError::invalid(format!(
                "{op} is not an operation on a key"
            )));
        }
        let mut ops = a.operations.clone();
        ops.sort();
        ops.dedup();
        let conditions = GrantConditions {
            require_platform: a.conditions.require_platform,
            measurement: a
                .conditions
                .measurement
                .as_ref()
                .map(|m| b64_32(m, "conditions.measurement").map(Bytes32))
                .transpose()?,
            not_before_ms: a.conditions.not_before_ms,
            not_after_ms: a.conditions.not_after_ms,
        };
        if let (Some(b), Some(e)) = (conditions.not_before_ms, conditions.not_after_ms) {
            if b >= e {
                return Err(WireError::invalid(
                    "not_before_ms must precede not_after_ms",
                ));
            }
        }
        if let Some(g) = &a.grant_id {
            KeyId::new(g.as_str()).map_err(|_| {
                WireError::invalid("grant_id must be 1-64 characters of [A-Za-z0-9_-]")
            })?;
        }
        let auth = self.authorize(&c, Operation::Grant, Some(&key)).await?;
        let grantee = match &a.grantee {
            WireGrantee::Principal(p) => {
                check_name("principal", p, 256)?;
                Grantee::Principal(p.clone())
            }
            WireGrantee::Role(r) => {
                r.parse::<Role>().map_err(|_| {
                    WireError::invalid(format!(
                        "unknown role {r:?} (tenant-admin, key-admin, key-user, auditor)"
                    ))
                })?;
                Grantee::Role(r.clone())
            }
            WireGrantee::Tenant(t) => {
                if t != auth.tenant().as_str() {
                    return Err(WireError::invalid(
                        "a grant can only name the key's own tenant",
                    ));
                }
                Grantee::Tenant(auth.tenant().clone())
            }
            WireGrantee::PlatformGroup(g) => {
                check_name("platform group", g, 128)?;
                Grantee::PlatformGroup(g.clone())
            }
        };
        let grant_id = a
            .grant_id
            .clone()
            .unwrap_or_else(|| derived_id("g", &auth.request_id, "grant"));
        let (gid, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::Grant, |v| {
                let (auth, grant_id, grantee, ops, conditions) =
                    (&auth, &grant_id, &grantee, &ops, &conditions);
                async move {
                    if is_destroyed(v.state) {
                        return Err(state_err(&v, Operation::Grant));
                    }
                    if v.grants.contains_key(grant_id) {
                        return Err(WireError::invalid(format!(
                            "grant {grant_id} already exists"
                        )));
                    }
                    let body = GrantAdded {
                        key: v.spec.key.clone(),
                        grant: Grant {
                            grant_id: grant_id.clone(),
                            grantee: grantee.clone(),
                            operations: ops.clone(),
                            conditions: conditions.clone(),
                        },
                    };
                    Ok((
                        vec![auth.allowed.draft(auth.request_id.clone(), body)],
                        grant_id.clone(),
                    ))
                }
                .boxed()
            })
            .await?;
        let _ = d;
        out(
            GrantResult {
                key: key.to_string(),
                grant_id: gid.unwrap_or(grant_id),
            },
            seq,
        )
    }

    async fn revoke(&self, c: Common, a: RevokeArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, Operation::Revoke, Some(&key)).await?;
        let (_, d, seq) = self
            .mutate_or_replay(&auth, &key, Operation::Revoke, |v| {
                let (auth, a) = (&auth, &a);
                async move {
                    if !v.grants.contains_key(&a.grant_id) {
                        return Err(WireError::invalid(format!(
                            "no grant {} on this key",
                            a.grant_id
                        )));
                    }
                    let body = GrantRevoked {
                        key: v.spec.key.clone(),
                        grant_id: a.grant_id.clone(),
                    };
                    Ok((vec![auth.allowed.draft(auth.request_id.clone(), body)], ()))
                }
                .boxed()
            })
            .await?;
        out(d, seq)
    }

    // ---- material and cryptography --------------------------------------------------------

    async fn get_material(&self, c: Common, a: GetMaterialArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self
            .authorize(&c, Operation::GetMaterial, Some(&key))
            .await?;
        let op = Operation::GetMaterial;
        let recipient = match self.transport_key(&auth, a.transport_key.as_ref()) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(&auth, &key, op, e).await),
        };
        let (result, _, seq) = self
            .mutate(&auth, &key, op, |v| {
                let (auth, a, recipient) = (&auth, &a, &recipient);
                async move {
                    if !v.spec.exportable {
                        return Err(WireError::new(
                            ErrorCode::NotExportable,
                            format!("key {} is not exportable", v.spec.key),
                        ));
                    }
                    if !matches!(v.state, KeyState::Active | KeyState::Deactivated)
                        || v.destroy_after_ms.is_some()
                    {
                        return Err(state_err(&v, op));
                    }
                    let version = a
                        .version
                        .unwrap_or_else(|| v.latest_version().map_or(0, |l| l.version));
                    let vv = v
                        .versions
                        .get(&version)
                        .filter(|x| !x.destroyed)
                        .ok_or_else(|| {
                            WireError::new(
                                ErrorCode::VersionNotUsable,
                                format!("version {version} does not exist or was destroyed"),
                            )
                        })?;
                    let plaintext = match (&v.spec.split, a.share) {
                        (Some(s), Some(i)) if (1..=s.shares).contains(&i) => self
                            .ops
                            .open_part(&v.spec.key, version, &vv.created_by, &vv.sealed, Some(i))
                            .await
                            .map_err(|e| WireError::new(ErrorCode::Unavailable, e.to_string()))?,
                        (Some(_), _) => {
                            return Err(WireError::invalid(
                                "split keys are released one share at a time: give share (1-based)",
                            ))
                        }
                        (None, Some(_)) => {
                            return Err(WireError::invalid("share is only for split keys"))
                        }
                        (None, None) => Zeroizing::new(self.material(&v, version).await?.to_vec()),
                    };
                    let sealed = self.sealed_for(
                        recipient,
                        &v.spec.key,
                        version,
                        &auth.request_id,
                        &plaintext,
                    )?;
                    let body = MaterialAccessed {
                        key: v.spec.key.clone(),
                        version,
                        sealed_to: Some(*recipient),
                    };
                    Ok((
                        vec![auth.allowed.draft(auth.request_id.clone(), body)],
                        MaterialResult {
                            key: v.spec.key.to_string(),
                            version,
                            share: a.share,
                            sealed,
                        },
                    ))
                }
                .boxed()
            })
            .await?;
        out(result, seq)
    }

    /// The common shape of cryptographic uses: decide, check, compute, record the use (guarded
    /// by the key state the check saw), reply. Re-decided on a concurrent change of the key.
    async fn use_key<'a, T: Send + 'a>(
        &'a self,
        auth: &'a Authorized,
        key: &'a KeyId,
        op: Operation,
        run: impl Fn(KeyView) -> BoxFuture<'a, Result<(u32, T), WireError>>,
    ) -> Result<(T, u64), WireError> {
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                self.sync().await?;
            }
            let view = self.view(key, auth.tenant())?;
            let (version, result) = match run(view.clone()).await {
                Ok(x) => x,
                Err(e) => return Err(self.fail(auth, key, op, e).await),
            };
            match self.record_use(auth, &view, version, op).await {
                Ok(seq) => return Ok((result, seq)),
                Err(e) if e.is(ErrorCode::Conflict) && attempt < 2 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn encrypt(&self, c: Common, a: EncryptArgs) -> Out {
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, Operation::Encrypt, Some(&key)).await?;
        let (r, seq) = self
            .use_key(&auth, &key, Operation::Encrypt, |v| {
                let a = &a;
                async move {
                    check_type(
                        &v,
                        &[KeyType::Aes128Gcm, KeyType::Aes256Gcm],
                        Operation::Encrypt,
                    )?;
                    if !can_protect(&v) {
                        return Err(state_err(&v, Operation::Encrypt));
                    }
                    let version = v.latest_version().map_or(0, |l| l.version);
                    let m = self.material(&v, version).await?;
                    let aad = a.aad.as_ref().map_or(&[][..], |x| &x.0[..]);
                    let ct = crypto::encrypt(
                        v.spec.key_type,
                        &m,
                        v.spec.key.as_str(),
                        version,
                        &a.plaintext.0,
                        aad,
                    )
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
                    Ok((
                        version,
                        CiphertextResult {
                            key: v.spec.key.to_string(),
                            version,
                            ciphertext: versioned(version, &ct),
                        },
                    ))
                }
                .boxed()
            })
            .await?;
        out(r, seq)
    }

    /// Decrypts, and for `rewrap` encrypts the plaintext again under the latest version.
    async fn decrypt(&self, c: Common, a: DecryptArgs, op: Operation) -> Out {
        let key = key_id(&a.key)?;
        let (version, ct) = parse_versioned(&a.ciphertext, "ciphertext")?;
        let auth = self.authorize(&c, op, Some(&key)).await?;
        let (r, seq) = self
            .use_key(&auth, &key, op, |v| {
                let (a, ct) = (&a, &ct);
                async move {
                    check_type(&v, &[KeyType::Aes128Gcm, KeyType::Aes256Gcm], op)?;
                    let usable = if op == Operation::Rewrap {
                        can_protect(&v)
                    } else {
                        can_process(&v)
                    };
                    if !usable {
                        return Err(state_err(&v, op));
                    }
                    if version < v.min_decrypt_version {
                        return Err(WireError::new(
                            ErrorCode::VersionNotUsable,
                            format!(
                                "version {version} is below the key's minimum decryption version {}",
                                v.min_decrypt_version
                            ),
                        ));
                    }
                    let m = self.material(&v, version).await?;
                    let aad = a.aad.as_ref().map_or(&[][..], |x| &x.0[..]);
                    let pt = crypto::decrypt(
                        v.spec.key_type,
                        &m,
                        v.spec.key.as_str(),
                        version,
                        ct,
                        aad,
                    )
                    .map_err(|e| WireError::new(ErrorCode::DecryptFailed, e.to_string()))?;
                    if op == Operation::Decrypt {
                        let r = PlaintextResult {
                            key: v.spec.key.to_string(),
                            version,
                            plaintext: B64(pt.to_vec()),
                        };
                        return serde_json::to_value(r)
                            .map(|x| (version, x))
                            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()));
                    }
                    let latest = v.latest_version().map_or(0, |l| l.version);
                    let m2 = self.material(&v, latest).await?;
                    let ct2 = crypto::encrypt(
                        v.spec.key_type,
                        &m2,
                        v.spec.key.as_str(),
                        latest,
                        &pt,
                        aad,
                    )
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
                    let r = CiphertextResult {
                        key: v.spec.key.to_string(),
                        version: latest,
                        ciphertext: versioned(latest, &ct2),
                    };
                    serde_json::to_value(r)
                        .map(|x| (latest, x))
                        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
                }
                .boxed()
            })
            .await?;
        Ok((r, seq))
    }

    async fn data_key(&self, c: Common, a: DataKeyArgs) -> Out {
        let key = key_id(&a.key)?;
        let n = a.bytes.unwrap_or(32);
        if n != 16 && n != 32 {
            return Err(WireError::invalid("bytes must be 16 or 32"));
        }
        let op = Operation::GenerateDataKey;
        let auth = self.authorize(&c, op, Some(&key)).await?;
        let recipient = if a.with_plaintext {
            match self.transport_key(&auth, a.transport_key.as_ref()) {
                Ok(r) => Some(r),
                Err(e) => return Err(self.fail(&auth, &key, op, e).await),
            }
        } else {
            None
        };
        let (r, seq) = self
            .use_key(&auth, &key, op, |v| {
                let (a, auth, recipient) = (&a, &auth, &recipient);
                async move {
                    check_type(&v, &[KeyType::Aes128Gcm, KeyType::Aes256Gcm], op)?;
                    if !can_protect(&v) {
                        return Err(state_err(&v, op));
                    }
                    let version = v.latest_version().map_or(0, |l| l.version);
                    let m = self.material(&v, version).await?;
                    let mut dk = Zeroizing::new(vec![0u8; n]);
                    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut dk);
                    let aad = a.aad.as_ref().map_or(&[][..], |x| &x.0[..]);
                    let ct = crypto::encrypt(
                        v.spec.key_type,
                        &m,
                        v.spec.key.as_str(),
                        version,
                        &dk,
                        aad,
                    )
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
                    let plaintext_sealed = match recipient {
                        Some(r) => {
                            Some(self.sealed_for(r, &v.spec.key, version, &auth.request_id, &dk)?)
                        }
                        None => None,
                    };
                    Ok((
                        version,
                        DataKeyResult {
                            key: v.spec.key.to_string(),
                            version,
                            ciphertext: versioned(version, &ct),
                            plaintext_sealed,
                        },
                    ))
                }
                .boxed()
            })
            .await?;
        out(r, seq)
    }

    async fn sign_or_mac(&self, c: Common, a: MessageArgs, op: Operation) -> Out {
        let key = key_id(&a.key)?;
        let auth = self.authorize(&c, op, Some(&key)).await?;
        let (r, seq) = self
            .use_key(&auth, &key, op, |v| {
                let a = &a;
                async move {
                    let want = if op == Operation::Sign {
                        KeyType::Ed25519
                    } else {
                        KeyType::HmacSha256
                    };
                    check_type(&v, &[want], op)?;
                    if !can_protect(&v) {
                        return Err(state_err(&v, op));
                    }
                    let version = v.latest_version().map_or(0, |l| l.version);
                    let m = self.material(&v, version).await?;
                    let value = if op == Operation::Sign {
                        let sig = crypto::sign(&m, &a.message.0)
                            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
                        serde_json::to_value(SignatureResult {
                            key: v.spec.key.to_string(),
                            version,
                            signature: versioned(version, &sig),
                        })
                    } else {
                        serde_json::to_value(MacResult {
                            key: v.spec.key.to_string(),
                            version,
                            mac: versioned(version, &crypto::mac(&m, &a.message.0)),
                        })
                    }
                    .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
                    Ok((version, value))
                }
                .boxed()
            })
            .await?;
        Ok((r, seq))
    }

    async fn verify(&self, c: Common, a: VerifyArgs) -> Out {
        let key = key_id(&a.key)?;
        let (version, sig) = parse_versioned(&a.signature, "signature")?;
        let op = Operation::Verify;
        let auth = self.authorize(&c, op, Some(&key)).await?;
        let (r, seq) = self
            .use_key(&auth, &key, op, |v| {
                let (a, sig) = (&a, &sig);
                async move {
                    check_type(&v, &[KeyType::Ed25519], op)?;
                    if !can_process(&v) {
                        return Err(state_err(&v, op));
                    }
                    let vv = v
                        .versions
                        .get(&version)
                        .filter(|x| !x.destroyed && version >= v.min_decrypt_version)
                        .ok_or_else(|| {
                            WireError::new(
                                ErrorCode::VersionNotUsable,
                                format!(
                                    "version {version} does not exist, was destroyed, or is below the minimum"
                                ),
                            )
                        })?;
                    let public = vv.public_key.clone().unwrap_or_default();
                    Ok((
                        version,
                        ValidResult {
                            key: v.spec.key.to_string(),
                            valid: crypto::verify(&public, &a.message.0, sig),
                        },
                    ))
                }
                .boxed()
            })
            .await?;
        out(r, seq)
    }

    async fn verify_mac(&self, c: Common, a: VerifyMacArgs) -> Out {
        let key = key_id(&a.key)?;
        let (version, tag) = parse_versioned(&a.mac, "mac")?;
        let op = Operation::VerifyMac;
        let auth = self.authorize(&c, op, Some(&key)).await?;
        let (r, seq) = self
            .use_key(&auth, &key, op, |v| {
                let (a, tag) = (&a, &tag);
                async move {
                    check_type(&v, &[KeyType::HmacSha256], op)?;
                    if !can_process(&v) {
                        return Err(state_err(&v, op));
                    }
                    if version < v.min_decrypt_version {
                        return Err(WireError::new(
                            ErrorCode::VersionNotUsable,
                            format!("version {version} is below the minimum"),
                        ));
                    }
                    let m = self.material(&v, version).await?;
                    Ok((
                        version,
                        ValidResult {
                            key: v.spec.key.to_string(),
                            valid: crypto::verify_mac(&m, &a.message.0, tag),
                        },
                    ))
                }
                .boxed()
            })
            .await?;
        out(r, seq)
    }

    // ---- audit views ----------------------------------------------------------------------

    /// The history of one key, for whoever may describe it; recorded as a `describe` use.
    async fn audit_key(&self, c: Common, a: AuditKeyArgs) -> Out {
        let key = key_id(&a.key)?;
        let q = audit_query(a.from_ms, a.to_ms, a.after.as_deref(), a.limit)?;
        let auth = self.authorize(&c, Operation::Describe, Some(&key)).await?;
        let view = self.view(&key, auth.tenant())?;
        let q = AuditQuery {
            tenant: Some(auth.tenant().to_string()),
            ..q
        };
        // The page as of the read barrier; the use it records comes after it.
        let (page, _) = self.audit_page(&q, |ix, q| ix.key_history(&key, q));
        let version = view.latest_version().map_or(0, |v| v.version);
        let seq = self
            .record_use(&auth, &view, version, Operation::Describe)
            .await?;
        out(page, seq)
    }

    async fn audit_principal(&self, c: Common, a: AuditPrincipalArgs) -> Out {
        check_name("principal", &a.principal, 256)?;
        let q = audit_query(a.from_ms, a.to_ms, a.after.as_deref(), a.limit)?;
        let principal = a.principal;
        self.audit_tenant_wide(&c, "audit-principal", q, |ix, q| {
            ix.principal_activity(&principal, q)
        })
        .await
    }

    async fn audit_platform(&self, c: Common, a: AuditPlatformArgs) -> Out {
        check_name("platform", &a.platform, 128)?;
        let q = audit_query(a.from_ms, a.to_ms, a.after.as_deref(), a.limit)?;
        let platform = a.platform;
        self.audit_tenant_wide(&c, "audit-platform", q, |ix, q| {
            ix.platform_activity(&platform, q)
        })
        .await
    }

    async fn audit_refusals(&self, c: Common, a: AuditRefusalsArgs) -> Out {
        let q = audit_query(a.from_ms, a.to_ms, a.after.as_deref(), a.limit)?;
        self.audit_tenant_wide(&c, "audit-refusals", q, |ix, q| ix.refusals(q))
            .await
    }

    /// A tenant-wide view: authorized as `list`, then restricted to the roles `tenant-admin`
    /// and `auditor` (anyone else is refused `forbidden`, recorded like every refusal). Reaches
    /// no key, so it records no event.
    async fn audit_tenant_wide(
        &self,
        c: &Common,
        what: &str,
        q: AuditQuery,
        select: impl for<'a> Fn(&'a AuditIndex, &AuditQuery) -> Vec<&'a AuditRecord>,
    ) -> Out {
        let auth = self.authorize(c, Operation::List, None).await?;
        let may_audit = auth
            .allowed
            .claims
            .roles
            .iter()
            .any(|r| matches!(r.parse::<Role>(), Ok(Role::TenantAdmin) | Ok(Role::Auditor)));
        if !may_audit {
            let e = WireError::refused(
                "forbidden",
                true,
                format!("{what} needs the role tenant-admin or auditor"),
            );
            let drafts = self
                .refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record_code(
                    e.code,
                    &e.message,
                    auth.allowed.actor(),
                    Operation::List,
                    None,
                    auth.allowed.context(),
                    &RequestId::random(),
                    now_ms(),
                );
            if !drafts.is_empty() {
                if let Err(err) = self.ops.appender().append_all(drafts).await {
                    tracing::error!(error = %err, "could not record a refusal");
                }
            }
            return Err(e);
        }
        let q = AuditQuery {
            tenant: Some(auth.tenant().to_string()),
            ..q
        };
        let (page, seq) = self.audit_page(&q, select);
        out(page, seq)
    }

    /// One page of an audit view, and the last sequence folded. `next` is set only when a
    /// record follows the page's last one under the same selection.
    fn audit_page(
        &self,
        q: &AuditQuery,
        select: impl for<'a> Fn(&'a AuditIndex, &AuditQuery) -> Vec<&'a AuditRecord>,
    ) -> (AuditPage, u64) {
        let limit = q.limit.unwrap_or(DEFAULT_AUDIT_LIMIT);
        self.follower.read(|v| {
            let records = select(&v.audit, q);
            let more = match records.last() {
                Some(last) if records.len() >= limit => {
                    let probe = AuditQuery {
                        after: Some((last.seq, last.sub)),
                        limit: Some(1),
                        ..q.clone()
                    };
                    !select(&v.audit, &probe).is_empty()
                }
                _ => false,
            };
            let next = if more {
                records.last().map(|r| audit_cursor(r.seq, r.sub))
            } else {
                None
            };
            let records = records.into_iter().map(audit_record).collect();
            (AuditPage { records, next }, v.last_seq)
        })
    }

    async fn random(&self, c: Common, a: RandomArgs) -> Out {
        if a.bytes == 0 || a.bytes > MAX_RANDOM_BYTES {
            return Err(WireError::invalid(format!(
                "bytes must be 1-{MAX_RANDOM_BYTES}"
            )));
        }
        let auth = self.authorize(&c, Operation::Random, None).await?;
        let _ = auth;
        let mut b = vec![0u8; a.bytes];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
        out(RandomResult { random: B64(b) }, self.follower.applied())
    }
}

/// Coalesces uses into `KeysUsed` events: takes what is waiting (up to `max` uses), appends one
/// event guarded by each key's state as its uses saw it, answers every waiter; up to
/// `in_flight` such appends at once.
async fn use_coalescer(
    appender: Appender,
    mut rx: mpsc::Receiver<UseJob>,
    max: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    let mut carry: Vec<UseJob> = Vec::new();
    loop {
        if carry.is_empty() {
            match rx.recv().await {
                Some(j) => carry.push(j),
                None => return,
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        while carry.len() < max {
            match rx.try_recv() {
                Ok(j) => carry.push(j),
                Err(_) => break,
            }
        }
        // One event's uses must agree on each key's expected state; others wait a round.
        let mut expected: HashMap<KeyId, u64> = HashMap::new();
        let mut now: Vec<UseJob> = Vec::new();
        let mut later: Vec<UseJob> = Vec::new();
        for j in carry.drain(..) {
            let e = *expected
                .entry(j.guard.key.clone())
                .or_insert(j.guard.expected);
            if e == j.guard.expected && now.len() < max {
                now.push(j);
            } else {
                later.push(j);
            }
        }
        carry = later;
        let appender = appender.clone();
        tokio::spawn(async move {
            let first = &now[0].key_use;
            let same = now.iter().all(|j| {
                j.key_use.principal == first.principal && j.key_use.tenant == first.tenant
            });
            let actor = if same {
                Actor {
                    principal: first.principal.clone(),
                    tenant: Some(first.tenant.clone()),
                    token_id: None,
                }
            } else {
                Actor::system("service")
            };
            let guards: Vec<KeyGuard> = expected
                .into_iter()
                .map(|(key, expected)| KeyGuard { key, expected })
                .collect();
            let draft = Draft {
                request_id: RequestId::random(),
                actor,
                context: None,
                body: KeysUsed {
                    uses: now.iter().map(|j| j.key_use.clone()).collect(),
                }
                .into(),
            };
            let r = appender.append_guarded(vec![draft], guards).await;
            for j in now {
                let _ = j.reply.send(match &r {
                    Ok(v) => v.first().copied().ok_or(AppendError::Stopped),
                    Err(e) => Err(e.clone()),
                });
            }
            drop(permit);
        });
    }
}

/// Records the counts of aggregated refusals when their interval ends.
async fn refusal_flusher(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let every = i.config.refusal_interval.max(Duration::from_millis(50));
        let drafts = i
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due(now_ms());
        if !drafts.is_empty() {
            if let Err(e) = i.ops.appender().append_all(drafts).await {
                tracing::error!(error = %e, "could not record aggregated refusals");
            }
        }
        drop(i);
        tokio::time::sleep(every).await;
    }
}
