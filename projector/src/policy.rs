//! Who may do what to which key: one decision per request, made from the ledger's own views.
//!
//! [`decide`] takes the request's security context (bearer token, optional platform quote), the
//! operation and the target key, and the views folded from verified events ([`KeyStates`],
//! [`Trust`]). It returns [`Decision::Allow`] with what the request's events must record, or
//! [`Decision::Refuse`] with a stable code. It does no IO and appends nothing: the service
//! appends the allowed operation's events ([`Allowed::drafts`]) or the refusal
//! ([`crate::refusals::RefusalLog`]).
//!
//! The rules, in order:
//! 1. A token is required and must verify ([`crate::token::verify_token`]) under an issuer the
//!    ledger trusts for the token's tenant.
//! 2. A quote, if presented, must verify ([`crate::attest::verify_quote`]); a bad quote refuses
//!    the request even when no grant needs it.
//! 3. Tenants are isolated: a key of another tenant is answered exactly like a key that does not
//!    exist (`key-not-found`), so a request never learns another tenant's key exists.
//! 4. A role held by the token allows the operations of [`Role::allows`] on the tenant's keys.
//!    Using a key's material (encrypt, decrypt, sign, MAC, export, ...) is never given by a role:
//!    it needs a grant on that key.
//! 5. A grant on the key allows its operations to its grantee (a principal, a role, the key's
//!    whole tenant, or a platform group whose attested platform presents the request) when all
//!    its conditions hold (verified platform, measurement, validity window).
//! 6. Otherwise the request is refused (`forbidden`, or the condition that failed when a grant
//!    would have matched but for its conditions).

use ledger::event::{Actor, Grant, Grantee, Operation, PlatformAttested};
use ledger::sign::Draft;
use ledger::{Bytes32, EventBody, KeyId, RequestId, TenantId};

use crate::attest::{
    attestation_request_id, verify_quote, AttestError, AttestedPlatform, NonceIssuer,
};
use crate::token::{verify_token, Claims, IssuerStatus, TokenCache, TokenError};
use crate::trust::Trust;
use crate::{KeyStates, KeyView};

ledger::string_enum! {
    /// Tenant-wide roles a token can carry.
    pub enum Role {
        /// Everything about the tenant's keys except using their material.
        TenantAdmin => "tenant-admin",
        /// Key lifecycle (create, rotate, state changes, scheduling destruction); no grants, no
        /// immediate destruction.
        KeyAdmin => "key-admin",
        /// Sees the tenant's keys; uses them only through grants.
        KeyUser => "key-user",
        /// Read-only.
        Auditor => "auditor",
    }
}

impl Role {
    /// Operations the role allows on every key of its tenant (and tenant-wide operations).
    pub fn allows(self, op: Operation) -> bool {
        use Operation as O;
        match self {
            Role::TenantAdmin => matches!(
                op,
                O::Create
                    | O::Import
                    | O::Describe
                    | O::List
                    | O::Rotate
                    | O::SetVersions
                    | O::Activate
                    | O::Suspend
                    | O::Deactivate
                    | O::Compromise
                    | O::ScheduleDestroy
                    | O::CancelDestroy
                    | O::Destroy
                    | O::Grant
                    | O::Revoke
                    | O::Random
            ),
            Role::KeyAdmin => matches!(
                op,
                O::Create
                    | O::Import
                    | O::Describe
                    | O::List
                    | O::Rotate
                    | O::SetVersions
                    | O::Activate
                    | O::Suspend
                    | O::Deactivate
                    | O::Compromise
                    | O::ScheduleDestroy
                    | O::CancelDestroy
                    | O::Random
            ),
            Role::KeyUser => matches!(op, O::Describe | O::List | O::Random),
            Role::Auditor => matches!(op, O::Describe | O::List),
        }
    }
}

/// Operations that act on one existing key (the request must name it).
pub fn targets_key(op: Operation) -> bool {
    !matches!(
        op,
        Operation::Create | Operation::Import | Operation::List | Operation::Random
    )
}

/// One request, as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The bearer token (compact JWS), if the request carried one.
    pub token: Option<&'a str>,
    /// Platform evidence, if the request carried a quote.
    pub quote: Option<&'a ledger::quote::Quote>,
    pub operation: Operation,
    /// The key acted on ([`targets_key`] operations).
    pub key: Option<&'a KeyId>,
}

/// What policy reads: the views and the clock.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub keys: &'a KeyStates,
    pub trust: &'a Trust,
    pub nonces: &'a NonceIssuer,
    pub now_ms: u64,
    /// Verified tokens to reuse (same answers, less work); `None` verifies every time.
    pub tokens: Option<&'a TokenCache>,
}

/// Why an operation was allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Basis {
    Role(Role),
    Grant(String),
}

/// An allowed request and what its events must record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub claims: Claims,
    pub platform: Option<AttestedPlatform>,
    pub operation: Operation,
    pub key: Option<KeyId>,
    pub basis: Basis,
}

impl Allowed {
    /// Principal, tenant and token id, as every event of the request records them.
    pub fn actor(&self) -> Actor {
        Actor {
            principal: self.claims.sub.clone(),
            tenant: Some(self.claims.tenant.clone()),
            token_id: Some(self.claims.jti.clone()),
        }
    }

    /// The events' `context`: the digest of the verified quote, if one was presented.
    pub fn context(&self) -> Option<Bytes32> {
        self.platform.as_ref().map(|p| p.digest)
    }

    /// The `PlatformAttested` event that spends the quote's nonce and names the platform; the
    /// service appends it in the same call as the operation's event, before it.
    pub fn attestation_draft(&self) -> Option<Draft> {
        let p = self.platform.as_ref()?;
        Some(Draft {
            request_id: attestation_request_id(&p.quote.nonce),
            actor: self.actor(),
            context: Some(p.digest),
            body: PlatformAttested {
                group: p.group.clone(),
                quote: p.quote.clone(),
            }
            .into(),
        })
    }

    /// The draft of the operation's own event.
    pub fn draft(&self, request_id: RequestId, body: impl Into<EventBody>) -> Draft {
        Draft {
            request_id,
            actor: self.actor(),
            context: self.context(),
            body: body.into(),
        }
    }

    /// Everything to append for this request, in order.
    pub fn drafts(&self, request_id: RequestId, body: impl Into<EventBody>) -> Vec<Draft> {
        let mut out: Vec<Draft> = self.attestation_draft().into_iter().collect();
        out.push(self.draft(request_id, body));
        out
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    #[error("the request carries no bearer token")]
    TokenMissing,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Attestation(#[from] AttestError),
    #[error("the request names no key")]
    KeyMissing,
    /// Also the answer for another tenant's key.
    #[error("no such key")]
    KeyNotFound,
    #[error("no role or grant allows {0} on this key")]
    Forbidden(Operation),
    #[error("grant {grant:?} requires a verified platform")]
    PlatformRequired { grant: String },
    #[error("grant {grant:?} requires another platform measurement")]
    MeasurementMismatch { grant: String },
    #[error("grant {grant:?} is not valid at this time")]
    OutsideWindow { grant: String },
}

impl Cause {
    /// The stable code of the refusal (API error code and `RequestRefused.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Cause::TokenMissing => "token-missing",
            Cause::Token(e) => e.code(),
            Cause::Attestation(e) => e.code(),
            Cause::KeyMissing => "key-missing",
            Cause::KeyNotFound => "key-not-found",
            Cause::Forbidden(_) => "forbidden",
            Cause::PlatformRequired { .. } => "platform-required",
            Cause::MeasurementMismatch { .. } => "measurement-mismatch",
            Cause::OutsideWindow { .. } => "grant-not-valid-now",
        }
    }
}

/// A refused request and what its `RequestRefused` event records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub cause: Cause,
    /// The authenticated caller, when the token verified.
    pub actor: Option<Actor>,
    pub tenant: Option<TenantId>,
    pub operation: Operation,
    pub key: Option<KeyId>,
    /// Digest of a verified quote, when one was presented.
    pub context: Option<Bytes32>,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        self.cause.code()
    }
}

/// The outcome of [`decide`]. (Short-lived, one per request: the size difference between the
/// variants does not matter, so `Allowed` is not boxed.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Refuse(Refusal),
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// Decides one request. Pure: same inputs, same decision.
pub fn decide(req: &Request<'_>, inputs: &Inputs<'_>) -> Decision {
    let mut refusal = Refusal {
        cause: Cause::TokenMissing,
        actor: None,
        tenant: None,
        operation: req.operation,
        key: req.key.cloned(),
        context: None,
    };
    let refuse = |mut r: Refusal, cause: Cause| {
        r.cause = cause;
        Decision::Refuse(r)
    };
    let Some(token) = req.token else {
        return refuse(refusal, Cause::TokenMissing);
    };
    let verified = match inputs.tokens {
        Some(cache) => cache.verify(token, inputs.now_ms, |iss| issuer_status(inputs.trust, iss)),
        None => verify_token(token, inputs.now_ms, |iss| issuer_status(inputs.trust, iss)),
    };
    let claims = match verified {
        Ok(c) => c,
        Err(e) => return refuse(refusal, e.into()),
    };
    refusal.actor = Some(Actor {
        principal: claims.sub.clone(),
        tenant: Some(claims.tenant.clone()),
        token_id: Some(claims.jti.clone()),
    });
    refusal.tenant = Some(claims.tenant.clone());
    let platform = match req.quote {
        None => None,
        Some(q) => match verify_quote(q, inputs.nonces, inputs.trust, inputs.now_ms) {
            Ok(p) => Some(p),
            Err(e) => return refuse(refusal, e.into()),
        },
    };
    refusal.context = platform.as_ref().map(|p| p.digest);
    let roles: Vec<Role> = claims
        .roles
        .iter()
        .filter_map(|r| r.parse::<Role>().ok())
        .collect();
    let allow = |basis: Basis, key: Option<KeyId>| {
        Decision::Allow(Allowed {
            claims: claims.clone(),
            platform: platform.clone(),
            operation: req.operation,
            key,
            basis,
        })
    };

    if !targets_key(req.operation) {
        return match roles.iter().find(|r| r.allows(req.operation)) {
            Some(r) => allow(Basis::Role(*r), None),
            None => refuse(refusal, Cause::Forbidden(req.operation)),
        };
    }
    let Some(key_id) = req.key else {
        return refuse(refusal, Cause::KeyMissing);
    };
    let Some(key) = inputs
        .keys
        .get(key_id)
        .filter(|k| k.spec.tenant == claims.tenant)
    else {
        return refuse(refusal, Cause::KeyNotFound);
    };
    if let Some(r) = roles.iter().find(|r| r.allows(req.operation)) {
        return allow(Basis::Role(*r), Some(key_id.clone()));
    }
    match grant_for(
        key,
        &claims,
        &roles,
        platform.as_ref(),
        req.operation,
        inputs.now_ms,
    ) {
        Ok(grant) => allow(Basis::Grant(grant.grant_id.clone()), Some(key_id.clone())),
        Err(cause) => refuse(refusal, cause),
    }
}

fn issuer_status<'t>(trust: &'t Trust, iss: &str) -> IssuerStatus<'t> {
    match trust.issuer(iss) {
        None => IssuerStatus::Unknown,
        Some(i) if i.revoked.is_some() => IssuerStatus::Revoked,
        Some(i) => IssuerStatus::Trusted {
            public_key: &i.public_key,
            tenants: &i.tenants,
        },
    }
}

/// Whether `grantee` names this caller.
fn grantee_matches(
    grantee: &Grantee,
    key: &KeyView,
    claims: &Claims,
    roles: &[Role],
    platform: Option<&AttestedPlatform>,
) -> bool {
    match grantee {
        Grantee::Principal(p) => *p == claims.sub,
        Grantee::Role(r) => r.parse::<Role>().is_ok_and(|r| roles.contains(&r)),
        // A grant never reaches across tenants: only the key's own tenant can be named.
        Grantee::Tenant(t) => *t == claims.tenant && *t == key.spec.tenant,
        Grantee::PlatformGroup(g) => platform.is_some_and(|p| p.group == *g),
    }
}

/// The first grant (in grant-id order) that allows `op` to this caller now; otherwise the most
/// telling reason: a failed condition of a grant that otherwise matched, or `forbidden`.
fn grant_for<'k>(
    key: &'k KeyView,
    claims: &Claims,
    roles: &[Role],
    platform: Option<&AttestedPlatform>,
    op: Operation,
    now_ms: u64,
) -> Result<&'k Grant, Cause> {
    let mut failed: Option<Cause> = None;
    for g in key.grants.values() {
        if !g.operations.contains(&op) || !grantee_matches(&g.grantee, key, claims, roles, platform)
        {
            continue;
        }
        match check_conditions(g, platform, now_ms) {
            Ok(()) => return Ok(g),
            Err(c) => {
                failed.get_or_insert(c);
            }
        }
    }
    Err(failed.unwrap_or(Cause::Forbidden(op)))
}

fn check_conditions(
    g: &Grant,
    platform: Option<&AttestedPlatform>,
    now_ms: u64,
) -> Result<(), Cause> {
    let c = &g.conditions;
    let grant = || g.grant_id.clone();
    if c.not_before_ms.is_some_and(|t| now_ms < t) || c.not_after_ms.is_some_and(|t| now_ms > t) {
        return Err(Cause::OutsideWindow { grant: grant() });
    }
    let needs_platform = c.require_platform
        || c.measurement.is_some()
        || matches!(g.grantee, Grantee::PlatformGroup(_));
    if needs_platform && platform.is_none() {
        return Err(Cause::PlatformRequired { grant: grant() });
    }
    if let (Some(m), Some(p)) = (&c.measurement, platform) {
        if p.measurement != *m {
            return Err(Cause::MeasurementMismatch { grant: grant() });
        }
    }
    Ok(())
}
