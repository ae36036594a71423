//! Audit views: who did what to which key, from which platform, and what was refused.
//!
//! [`AuditIndex`] folds verified events into *records* — one per fact an auditor asks about:
//! one per event, except `KeysUsed`, which gives one record per itemised use — and indexes them
//! by key, by principal, by platform and by refusal. Every record names the stream sequence of
//! the event it came from, so any answer is traceable to events an auditor can verify.
//!
//! Platforms: a request that presented a verified quote records `PlatformAttested` (naming the
//! platform) and its other events carry the quote's digest as `context`; the index resolves that
//! digest back to the platform, so an operation is attributed to the platform that performed it.

use std::collections::{BTreeMap, HashMap};

use ledger::event::{KeyState, Operation};
use ledger::{Bytes32, EventBody, KeyId, VerifiedEvent};

/// One auditable fact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Stream sequence of the event.
    pub seq: u64,
    /// Position within the event (the use's index in a `KeysUsed`, else 0); `(seq, sub)` orders
    /// and identifies records.
    pub sub: u32,
    pub time_ms: u64,
    /// The event type.
    pub event: &'static str,
    /// For uses and refusals: the operation; for lifecycle events: the operation that made them.
    pub operation: Option<Operation>,
    pub principal: String,
    pub tenant: Option<String>,
    pub token_id: Option<String>,
    pub key: Option<KeyId>,
    pub version: Option<u32>,
    /// The platform that presented a quote for this request, if any.
    pub platform: Option<String>,
    /// Refusals: the code and how many refusals the record stands for.
    pub refusal: Option<(String, u32)>,
    /// Request id (of the use, for itemised uses).
    pub request_id: String,
    /// A short human description.
    pub detail: String,
}

/// What to select.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records at or after this time.
    pub from_ms: Option<u64>,
    /// Only records before this time.
    pub to_ms: Option<u64>,
    /// Only records after this `(seq, sub)` (paging: pass the last record's).
    pub after: Option<(u64, u32)>,
    /// At most this many records (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Only this tenant's records (the service sets it to the caller's tenant).
    pub tenant: Option<String>,
}

/// Indexes of [`AuditRecord`]s.
#[derive(Debug, Default)]
pub struct AuditIndex {
    records: Vec<AuditRecord>,
    by_key: HashMap<KeyId, Vec<usize>>,
    by_principal: HashMap<String, Vec<usize>>,
    by_platform: HashMap<String, Vec<usize>>,
    refusals: Vec<usize>,
    /// Quote digest -> platform.
    contexts: HashMap<Bytes32, String>,
    last_seq: u64,
}

fn op_of(body: &EventBody) -> Option<Operation> {
    Some(match body {
        EventBody::KeyCreated(_) => Operation::Create,
        EventBody::KeyImported(_) => Operation::Import,
        EventBody::KeyRotated(_) => Operation::Rotate,
        EventBody::KeyStateChanged(e) => match e.to {
            KeyState::Active => Operation::Activate,
            KeyState::Suspended => Operation::Suspend,
            _ => Operation::Deactivate,
        },
        EventBody::KeyCompromised(_) => Operation::Compromise,
        EventBody::KeyVersionsBounded(_) => Operation::SetVersions,
        EventBody::KeyDestructionScheduled(_) => Operation::ScheduleDestroy,
        EventBody::KeyDestructionCancelled(_) => Operation::CancelDestroy,
        EventBody::KeyDestroyed(_) => Operation::Destroy,
        EventBody::GrantAdded(_) => Operation::Grant,
        EventBody::GrantRevoked(_) => Operation::Revoke,
        EventBody::MaterialAccessed(_) => Operation::GetMaterial,
        EventBody::RequestRefused(e) => e.operation,
        _ => return None,
    })
}

/// A short human description of an event (for histories and reports).
pub fn describe_event(body: &EventBody) -> String {
    match body {
        EventBody::KeyCreated(e) => format!("{} created {} v1", e.spec.key_type, e.spec.state),
        EventBody::KeyImported(e) => format!("{} imported", e.spec.key_type),
        EventBody::KeyRotated(e) => format!("rotated to v{}", e.material.version),
        EventBody::KeyStateChanged(e) => format!("{} -> {} ({})", e.from, e.to, e.reason),
        EventBody::KeyCompromised(e) => {
            format!(
                "{} -> compromised since {} ({})",
                e.from, e.compromised_at_ms, e.reason
            )
        }
        EventBody::KeyVersionsBounded(e) => format!(
            "min encrypt v{}, min decrypt v{}",
            e.min_encrypt_version, e.min_decrypt_version
        ),
        EventBody::KeyDestructionScheduled(e) => format!("destroy after {}", e.destroy_after_ms),
        EventBody::KeyDestructionCancelled(_) => "destruction cancelled".into(),
        EventBody::KeyDestroyed(e) => format!(
            "versions {:?} destroyed, {} data keys erased",
            e.versions,
            e.erased_deks.len()
        ),
        EventBody::GrantAdded(e) => {
            let ops: Vec<String> = e.grant.operations.iter().map(|o| o.to_string()).collect();
            format!(
                "grant {} to {:?}: {}",
                e.grant.grant_id,
                e.grant.grantee,
                ops.join(",")
            )
        }
        EventBody::GrantRevoked(e) => format!("grant {} revoked", e.grant_id),
        EventBody::MaterialAccessed(e) => format!(
            "material v{} released{}",
            e.version,
            if e.sealed_to.is_some() {
                " sealed to a transport key"
            } else {
                ""
            }
        ),
        EventBody::RequestRefused(e) => format!("refused {}: {}", e.code, e.reason),
        EventBody::PlatformAttested(e) => {
            format!("platform {} ({}) attested", e.quote.platform, e.group)
        }
        EventBody::IssuerTrusted(e) => format!("issuer {} trusted", e.issuer),
        EventBody::IssuerRevoked(e) => format!("issuer {} revoked ({})", e.issuer, e.reason),
        EventBody::PlatformEnrolled(e) => format!("platform {} enrolled ({})", e.platform, e.group),
        EventBody::PlatformRevoked(e) => {
            format!("platform {} revoked ({})", e.platform, e.reason)
        }
        EventBody::SignerEnrolled(e) => format!("signer {} enrolled as {}", e.label, e.role),
        EventBody::SignerRetired(e) => format!("signer retired ({})", e.reason),
        other => other.tag().to_owned(),
    }
}

impl AuditIndex {
    pub fn new() -> AuditIndex {
        AuditIndex::default()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Folds one verified event; idempotent by sequence.
    pub fn apply(&mut self, v: &VerifiedEvent) {
        if v.seq() <= self.last_seq {
            return;
        }
        self.last_seq = v.seq();
        let e = v.event();
        if let EventBody::PlatformAttested(p) = &e.body {
            self.contexts
                .insert(p.quote.digest(), p.quote.platform.clone());
        }
        let platform = match &e.body {
            EventBody::PlatformAttested(p) => Some(p.quote.platform.clone()),
            _ => e.context.and_then(|c| self.contexts.get(&c).cloned()),
        };
        let base = AuditRecord {
            seq: v.seq(),
            sub: 0,
            time_ms: e.time_ms,
            event: e.body.tag(),
            operation: op_of(&e.body),
            principal: e.actor.principal.clone(),
            tenant: e.tenant().map(|t| t.to_string()),
            token_id: e.actor.token_id.clone(),
            key: e.body.key().cloned(),
            version: match &e.body {
                EventBody::KeyCreated(x) => Some(x.material.version),
                EventBody::KeyImported(x) => Some(x.material.version),
                EventBody::KeyRotated(x) => Some(x.material.version),
                EventBody::MaterialAccessed(x) => Some(x.version),
                _ => None,
            },
            platform,
            refusal: match &e.body {
                EventBody::RequestRefused(r) => Some((r.code.clone(), r.count)),
                _ => None,
            },
            request_id: e.request_id.to_string(),
            detail: describe_event(&e.body),
        };
        match &e.body {
            EventBody::KeysUsed(u) => {
                for (i, x) in u.uses.iter().enumerate() {
                    let platform = x
                        .context
                        .and_then(|c| self.contexts.get(&c).cloned())
                        .or(base.platform.clone());
                    self.push(AuditRecord {
                        sub: u32::try_from(i).unwrap_or(u32::MAX),
                        operation: Some(x.operation),
                        principal: x.principal.clone(),
                        tenant: Some(x.tenant.to_string()),
                        key: Some(x.key.clone()),
                        version: Some(x.version),
                        platform,
                        request_id: x.request_id.to_string(),
                        detail: format!("{} v{}", x.operation, x.version),
                        ..base.clone()
                    });
                }
            }
            _ => self.push(base),
        }
    }

    fn push(&mut self, r: AuditRecord) {
        let i = self.records.len();
        if let Some(k) = &r.key {
            self.by_key.entry(k.clone()).or_default().push(i);
        }
        self.by_principal
            .entry(r.principal.clone())
            .or_default()
            .push(i);
        if let Some(p) = &r.platform {
            self.by_platform.entry(p.clone()).or_default().push(i);
        }
        if r.refusal.is_some() {
            self.refusals.push(i);
        }
        self.records.push(r);
    }

    fn select<'a>(&'a self, ids: &'a [usize], q: &AuditQuery) -> Vec<&'a AuditRecord> {
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        // Records are in sequence order, so paging by sequence is a binary search.
        let start = match q.after {
            Some(after) => ids.partition_point(|i| {
                let r = &self.records[*i];
                (r.seq, r.sub) <= after
            }),
            None => 0,
        };
        ids[start..]
            .iter()
            .map(|i| &self.records[*i])
            .filter(|r| q.from_ms.is_none_or(|t| r.time_ms >= t))
            .filter(|r| q.to_ms.is_none_or(|t| r.time_ms < t))
            .filter(|r| {
                q.tenant
                    .as_ref()
                    .is_none_or(|t| r.tenant.as_deref() == Some(t.as_str()))
            })
            .take(limit)
            .collect()
    }

    /// History of one key: every version, state change, grant, use, access and refusal.
    pub fn key_history(&self, key: &KeyId, q: &AuditQuery) -> Vec<&AuditRecord> {
        self.by_key
            .get(key)
            .map_or_else(Vec::new, |ids| self.select(ids, q))
    }

    /// Everything one principal did (or was refused).
    pub fn principal_activity(&self, principal: &str, q: &AuditQuery) -> Vec<&AuditRecord> {
        self.by_principal
            .get(principal)
            .map_or_else(Vec::new, |ids| self.select(ids, q))
    }

    /// Everything done from one attested platform.
    pub fn platform_activity(&self, platform: &str, q: &AuditQuery) -> Vec<&AuditRecord> {
        self.by_platform
            .get(platform)
            .map_or_else(Vec::new, |ids| self.select(ids, q))
    }

    /// Refusals, each with its code and count.
    pub fn refusals(&self, q: &AuditQuery) -> Vec<&AuditRecord> {
        self.select(&self.refusals, q)
    }

    /// Every record (for reports), in sequence order.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }

    /// Refusal counts by code over a time range (for reports).
    pub fn refusal_counts(&self, q: &AuditQuery) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let all = AuditQuery {
            limit: Some(usize::MAX),
            ..q.clone()
        };
        for r in self
            .refusals
            .iter()
            .map(|i| &self.records[*i])
            .filter(|r| all.from_ms.is_none_or(|t| r.time_ms >= t))
            .filter(|r| all.to_ms.is_none_or(|t| r.time_ms < t))
        {
            if let Some((code, n)) = &r.refusal {
                *out.entry(code.clone()).or_default() += u64::from(*n);
            }
        }
        out
    }
}
