//! The decision function over tokens, quotes, roles, grants, conditions and tenants.
//!
//! Table-driven through one `check` helper, then a property test: `decide` agrees with an
//! independent statement of the rules, so no request outside every role and grant is allowed
//! (and none inside is refused).

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use zeroize::Zeroizing;

use ledger::event::*;
use ledger::quote::Quote;
use ledger::seal::{Kek, SealedMaterial};
use ledger::sign::Draft;
use ledger::{Bytes32, KeyId, RequestId, TenantId};
use projector::attest::{NonceIssuer, NONCE_TTL_MS};
use projector::policy::{decide, Basis, Decision, Inputs, Request, Role};
use projector::token::{mint_token, Claims, IssuerKey};
use projector::trust::Trust;
use projector::KeyStates;

mod common;

/// 2027-01-15T08:00:00Z.
const NOW_MS: u64 = 1_800_000_000_000;
const NOW_S: u64 = NOW_MS / 1000;
const HOUR_MS: u64 = 3_600_000;

fn tenant(t: &str) -> TenantId {
    TenantId::new(t).unwrap()
}

fn key(k: &str) -> KeyId {
    KeyId::new(k).unwrap()
}

fn issuer_key(seed: u8) -> IssuerKey {
    IssuerKey::from_seed(Zeroizing::new([seed; 32]))
}

fn platform_key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn m(b: u8) -> Bytes32 {
    Bytes32([b; 32])
}

fn nonces() -> NonceIssuer {
    NonceIssuer::from_kek(&Kek::from_bytes(Zeroizing::new([42; 32])))
}

fn spec(k: &str, t: &str) -> KeySpec {
    KeySpec {
        key: key(k),
        tenant: tenant(t),
        name: k.into(),
        key_type: KeyType::Aes256Gcm,
        state: KeyState::Active,
        exportable: true,
        rotation_period_s: None,
        split: None,
        labels: vec![],
    }
}

fn created(k: &str, t: &str) -> EventBody {
    KeyCreated {
        spec: spec(k, t),
        material: VersionMaterial {
            version: 1,
            sealed: vec![SealedMaterial {
                dek_id: Bytes32([1; 32]),
                nonce: vec![0; 12],
                ciphertext: vec![0; 48],
            }],
            public_key: None,
        },
    }
    .into()
}

fn grant(k: &str, id: &str, grantee: Grantee, ops: &[Operation], c: GrantConditions) -> EventBody {
    GrantAdded {
        key: key(k),
        grant: Grant {
            grant_id: id.into(),
            grantee,
            operations: ops.to_vec(),
            conditions: c,
        },
    }
    .into()
}

fn none() -> GrantConditions {
    GrantConditions {
        require_platform: false,
        measurement: None,
        not_before_ms: None,
        not_after_ms: None,
    }
}

/// The views every case runs against, and the nonce a recorded quote already spent.
struct World {
    keys: KeyStates,
    trust: Trust,
    spent_nonce: Bytes32,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        use Operation as O;
        let spent_nonce = nonces().issue(NOW_MS);
        let spent_quote = Quote::sign(&platform_key(20), "host-1", spent_nonce, m(1), m(9));
        let bodies: Vec<EventBody> = vec![
            IssuerTrusted {
                issuer: "idp".into(),
                public_key: Bytes32(issuer_key(10).public_key()),
                tenants: vec![tenant("acme"), tenant("globex")],
            }
            .into(),
            IssuerTrusted {
                issuer: "idp-acme".into(),
                public_key: Bytes32(issuer_key(11).public_key()),
                tenants: vec![tenant("acme")],
            }
            .into(),
            IssuerTrusted {
                issuer: "idp-old".into(),
                public_key: Bytes32(issuer_key(12).public_key()),
                tenants: vec![],
            }
            .into(),
            IssuerRevoked {
                issuer: "idp-old".into(),
                reason: "retired".into(),
            }
            .into(),
            PlatformEnrolled {
                platform: "host-1".into(),
                attestation_key: Bytes32(platform_key(20).verifying_key().to_bytes()),
                group: "tee".into(),
                measurements: vec![m(1), m(2)],
            }
            .into(),
            PlatformEnrolled {
                platform: "host-2".into(),
                attestation_key: Bytes32(platform_key(21).verifying_key().to_bytes()),
                group: "tee".into(),
                measurements: vec![m(1)],
            }
            .into(),
            PlatformRevoked {
                platform: "host-2".into(),
                reason: "decommissioned".into(),
            }
            .into(),
            PlatformEnrolled {
                platform: "host-3".into(),
                attestation_key: Bytes32(platform_key(22).verifying_key().to_bytes()),
                group: "batch".into(),
                measurements: vec![m(3)],
            }
            .into(),
            PlatformAttested {
                group: "tee".into(),
                quote: spent_quote,
            }
            .into(),
            created("k-acme", "acme"),
            created("k-globex", "globex"),
            grant(
                "k-acme",
                "g1-alice",
                Grantee::Principal("alice".into()),
                &[O::Encrypt, O::Decrypt],
                none(),
            ),
            grant(
                "k-acme",
                "g2-users",
                Grantee::Role("key-user".into()),
                &[O::Encrypt],
                none(),
            ),
            grant(
                "k-acme",
                "g3-tee",
                Grantee::PlatformGroup("tee".into()),
                &[O::GetMaterial],
                GrantConditions {
                    measurement: Some(m(1)),
                    ..none()
                },
            ),
            grant(
                "k-acme",
                "g4-bob",
                Grantee::Principal("bob".into()),
                &[O::Sign],
                GrantConditions {
                    require_platform: true,
                    ..none()
                },
            ),
            grant(
                "k-acme",
                "g5-carol",
                Grantee::Principal("carol".into()),
                &[O::Decrypt],
                GrantConditions {
                    not_before_ms: Some(NOW_MS + HOUR_MS),
                    not_after_ms: Some(NOW_MS + 2 * HOUR_MS),
                    ..none()
                },
            ),
            grant(
                "k-acme",
                "g6-tenant",
                Grantee::Tenant(tenant("acme")),
                &[O::Verify],
                none(),
            ),
            // A grant naming another tenant must never reach across.
            grant(
                "k-acme",
                "g7-cross",
                Grantee::Tenant(tenant("globex")),
                &[O::Encrypt, O::Mac],
                none(),
            ),
            grant(
                "k-acme",
                "g8-dave",
                Grantee::Principal("dave".into()),
                &[O::Mac],
                GrantConditions {
                    not_after_ms: Some(NOW_MS - 1),
                    ..none()
                },
            ),
            grant(
                "k-globex",
                "g1-alice",
                Grantee::Principal("alice".into()),
                &[O::Encrypt],
                none(),
            ),
        ];
        let mut keys = KeyStates::new();
        let mut trust = Trust::new();
        for v in common::verified(bodies) {
            keys.apply(&v);
            trust.apply(&v);
        }
        assert!(keys.anomalies().is_empty(), "{:?}", keys.anomalies());
        assert!(trust.anomalies().is_empty(), "{:?}", trust.anomalies());
        World {
            keys,
            trust,
            spent_nonce,
        }
    })
}

/// How a case's token is made.
#[derive(Clone, Copy, Debug)]
enum Tok {
    Absent,
    /// Issued by "idp" (seed 10): subject, tenant, roles.
    Good(&'static str, &'static str, &'static [&'static str]),
    Expired,
    NotYet,
    WrongKey,
    RevokedIssuer,
    UnknownIssuer,
    IssuerNotForTenant,
    AlgNone,
    Garbage,
}

fn claims(sub: &str, t: &str, roles: &[&str], iss: &str) -> Claims {
    Claims {
        iss: iss.into(),
        sub: sub.into(),
        tenant: tenant(t),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        iat: NOW_S - 10,
        nbf: NOW_S - 10,
        exp: NOW_S + 600,
        jti: format!("tok-{sub}"),
    }
}

fn token(t: Tok) -> Option<String> {
    let alice = || claims("alice", "acme", &[], "idp");
    Some(match t {
        Tok::Absent => return None,
        Tok::Good(sub, ten, roles) => mint_token(&issuer_key(10), &claims(sub, ten, roles, "idp")),
        Tok::Expired => mint_token(
            &issuer_key(10),
            &Claims {
                exp: NOW_S - 3600,
                iat: NOW_S - 7200,
                nbf: NOW_S - 7200,
                ..alice()
            },
        ),
        Tok::NotYet => mint_token(
            &issuer_key(10),
            &Claims {
                nbf: NOW_S + 3600,
                exp: NOW_S + 7200,
                ..alice()
            },
        ),
        Tok::WrongKey => mint_token(&issuer_key(99), &alice()),
        Tok::RevokedIssuer => mint_token(
            &issuer_key(12),
            &Claims {
                iss: "idp-old".into(),
                ..alice()
            },
        ),
        Tok::UnknownIssuer => mint_token(
            &issuer_key(10),
            &Claims {
                iss: "idp-x".into(),
                ..alice()
            },
        ),
        Tok::IssuerNotForTenant => mint_token(
            &issuer_key(11),
            &claims("erin", "globex", &["tenant-admin"], "idp-acme"),
        ),
        Tok::AlgNone => {
            use base64::Engine;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                e.encode(br#"{"alg":"none","typ":"JWT"}"#),
                e.encode(serde_json::to_vec(&alice()).unwrap())
            )
        }
        Tok::Garbage => "not-a-token".into(),
    })
}

/// How a case's quote is made.
#[derive(Clone, Copy, Debug)]
enum Q {
    Absent,
    /// Platform, its key seed, measurement byte.
    Good(&'static str, u8, u8),
    Stale,
    Replayed,
    ForeignNonce,
    UnknownPlatform,
    RevokedPlatform,
    WrongSignature,
}

fn quote(q: Q) -> Option<Quote> {
    let fresh = || nonces().issue(NOW_MS);
    let sign = |p: &str, seed: u8, nonce: Bytes32, meas: u8| {
        Quote::sign(&platform_key(seed), p, nonce, m(meas), m(0x77))
    };
    Some(match q {
        Q::Absent => return None,
        Q::Good(p, seed, meas) => sign(p, seed, fresh(), meas),
        Q::Stale => sign("host-1", 20, nonces().issue(NOW_MS - NONCE_TTL_MS - 1), 1),
        Q::Replayed => sign("host-1", 20, world().spent_nonce, 1),
        Q::ForeignNonce => sign("host-1", 20, Bytes32([5; 32]), 1),
        Q::UnknownPlatform => sign("host-9", 20, fresh(), 1),
        Q::RevokedPlatform => sign("host-2", 21, fresh(), 1),
        Q::WrongSignature => sign("host-1", 21, fresh(), 1),
    })
}

fn run(t: Tok, q: Q, op: Operation, k: Option<&str>) -> Decision {
    let w = world();
    let token = token(t);
    let quote = quote(q);
    let key = k.map(key);
    let nonces = nonces();
    decide(
        &Request {
            token: token.as_deref(),
            quote: quote.as_ref(),
            operation: op,
            key: key.as_ref(),
        },
        &Inputs {
            keys: &w.keys,
            trust: &w.trust,
            nonces: &nonces,
            now_ms: NOW_MS,
            tokens: None,
        },
    )
}

/// Name, token, quote, operation, key, expected outcome.
type Case = (
    &'static str,
    Tok,
    Q,
    Operation,
    Option<&'static str>,
    &'static str,
);

/// `expect`: `role:<role>`, `grant:<id>` or a refusal code.
fn check(name: &str, t: Tok, q: Q, op: Operation, k: Option<&str>, expect: &str) {
    let got = match run(t, q, op, k) {
        Decision::Allow(a) => match a.basis {
            Basis::Role(r) => format!("role:{r}"),
            Basis::Grant(g) => format!("grant:{g}"),
        },
        Decision::Refuse(r) => r.code().to_string(),
    };
    assert_eq!(got, expect, "case {name}");
}

#[test]
fn decision_table() {
    use Operation as O;
    use Q::Absent as NoQ;
    let alice = Tok::Good("alice", "acme", &[]);
    let admin = Tok::Good("root-ann", "acme", &["tenant-admin"]);
    let keyadmin = Tok::Good("kim", "acme", &["key-admin"]);
    let user = Tok::Good("uma", "acme", &["key-user"]);
    let auditor = Tok::Good("aud", "acme", &["auditor"]);
    let globex_admin = Tok::Good("gus", "globex", &["tenant-admin", "key-user"]);
    let ka = Some("k-acme");
    let kg = Some("k-globex");
    let h1 = Q::Good("host-1", 20, 1);
    let cases: &[Case] = &[
        // Tokens.
        (
            "no token",
            Tok::Absent,
            NoQ,
            O::Encrypt,
            ka,
            "token-missing",
        ),
        (
            "garbage token",
            Tok::Garbage,
            NoQ,
            O::Encrypt,
            ka,
            "token-malformed",
        ),
        (
            "alg none",
            Tok::AlgNone,
            NoQ,
            O::Encrypt,
            ka,
            "token-algorithm",
        ),
        (
            "expired",
            Tok::Expired,
            NoQ,
            O::Encrypt,
            ka,
            "token-expired",
        ),
        (
            "not yet valid",
            Tok::NotYet,
            NoQ,
            O::Encrypt,
            ka,
            "token-not-yet-valid",
        ),
        (
            "wrong key",
            Tok::WrongKey,
            NoQ,
            O::Encrypt,
            ka,
            "token-signature",
        ),
        (
            "revoked issuer",
            Tok::RevokedIssuer,
            NoQ,
            O::Encrypt,
            ka,
            "issuer-revoked",
        ),
        (
            "unknown issuer",
            Tok::UnknownIssuer,
            NoQ,
            O::Encrypt,
            ka,
            "issuer-unknown",
        ),
        (
            "issuer not for tenant",
            Tok::IssuerNotForTenant,
            NoQ,
            O::List,
            None,
            "issuer-tenant",
        ),
        // Roles.
        (
            "admin creates",
            admin,
            NoQ,
            O::Create,
            None,
            "role:tenant-admin",
        ),
        (
            "admin grants",
            admin,
            NoQ,
            O::Grant,
            ka,
            "role:tenant-admin",
        ),
        (
            "admin destroys",
            admin,
            NoQ,
            O::Destroy,
            ka,
            "role:tenant-admin",
        ),
        (
            "admin may not decrypt by role",
            admin,
            NoQ,
            O::Decrypt,
            ka,
            "forbidden",
        ),
        (
            "admin may not export by role",
            admin,
            NoQ,
            O::GetMaterial,
            ka,
            "forbidden",
        ),
        (
            "key admin rotates",
            keyadmin,
            NoQ,
            O::Rotate,
            ka,
            "role:key-admin",
        ),
        (
            "key admin schedules",
            keyadmin,
            NoQ,
            O::ScheduleDestroy,
            ka,
            "role:key-admin",
        ),
        (
            "key admin may not destroy",
            keyadmin,
            NoQ,
            O::Destroy,
            ka,
            "forbidden",
        ),
        (
            "key admin may not grant",
            keyadmin,
            NoQ,
            O::Grant,
            ka,
            "forbidden",
        ),
        ("key user lists", user, NoQ, O::List, None, "role:key-user"),
        (
            "key user may not create",
            user,
            NoQ,
            O::Create,
            None,
            "forbidden",
        ),
        (
            "key user encrypts by role grant",
            user,
            NoQ,
            O::Encrypt,
            ka,
            "grant:g2-users",
        ),
        (
            "key user may not decrypt",
            user,
            NoQ,
            O::Decrypt,
            ka,
            "forbidden",
        ),
        (
            "auditor describes",
            auditor,
            NoQ,
            O::Describe,
            ka,
            "role:auditor",
        ),
        (
            "auditor may not rotate",
            auditor,
            NoQ,
            O::Rotate,
            ka,
            "forbidden",
        ),
        (
            "no role may not list",
            alice,
            NoQ,
            O::List,
            None,
            "forbidden",
        ),
        (
            "unknown role string is ignored",
            Tok::Good("x", "acme", &["root", "Tenant-Admin"]),
            NoQ,
            O::Create,
            None,
            "forbidden",
        ),
        // Grants.
        (
            "alice encrypts",
            alice,
            NoQ,
            O::Encrypt,
            ka,
            "grant:g1-alice",
        ),
        (
            "alice decrypts",
            alice,
            NoQ,
            O::Decrypt,
            ka,
            "grant:g1-alice",
        ),
        ("alice may not sign", alice, NoQ, O::Sign, ka, "forbidden"),
        (
            "whole tenant verifies",
            Tok::Good("zed", "acme", &[]),
            NoQ,
            O::Verify,
            ka,
            "grant:g6-tenant",
        ),
        (
            "carol before her window",
            Tok::Good("carol", "acme", &[]),
            NoQ,
            O::Decrypt,
            ka,
            "grant-not-valid-now",
        ),
        (
            "dave after his window",
            Tok::Good("dave", "acme", &[]),
            NoQ,
            O::Mac,
            ka,
            "grant-not-valid-now",
        ),
        (
            "bob without platform",
            Tok::Good("bob", "acme", &[]),
            NoQ,
            O::Sign,
            ka,
            "platform-required",
        ),
        (
            "bob with platform",
            Tok::Good("bob", "acme", &[]),
            h1,
            O::Sign,
            ka,
            "grant:g4-bob",
        ),
        (
            "tee export unattested",
            alice,
            NoQ,
            O::GetMaterial,
            ka,
            "forbidden",
        ),
        (
            "tee export attested",
            alice,
            h1,
            O::GetMaterial,
            ka,
            "grant:g3-tee",
        ),
        (
            "tee export other measurement",
            alice,
            Q::Good("host-1", 20, 2),
            O::GetMaterial,
            ka,
            "measurement-mismatch",
        ),
        (
            "other group",
            alice,
            Q::Good("host-3", 22, 3),
            O::GetMaterial,
            ka,
            "forbidden",
        ),
        // Quotes.
        (
            "stale quote",
            alice,
            Q::Stale,
            O::Encrypt,
            ka,
            "quote-stale",
        ),
        (
            "replayed quote",
            alice,
            Q::Replayed,
            O::Encrypt,
            ka,
            "quote-replayed",
        ),
        (
            "forged nonce",
            alice,
            Q::ForeignNonce,
            O::Encrypt,
            ka,
            "quote-nonce-unknown",
        ),
        (
            "unknown platform",
            alice,
            Q::UnknownPlatform,
            O::Encrypt,
            ka,
            "platform-unknown",
        ),
        (
            "revoked platform",
            alice,
            Q::RevokedPlatform,
            O::Encrypt,
            ka,
            "platform-revoked",
        ),
        (
            "quote signed by another key",
            alice,
            Q::WrongSignature,
            O::Encrypt,
            ka,
            "quote-signature",
        ),
        (
            "unenrolled measurement",
            alice,
            Q::Good("host-1", 20, 7),
            O::Encrypt,
            ka,
            "quote-measurement",
        ),
        // Tenants.
        (
            "other tenant's key looks absent",
            alice,
            NoQ,
            O::Encrypt,
            kg,
            "key-not-found",
        ),
        (
            "missing key",
            alice,
            NoQ,
            O::Encrypt,
            Some("k-nope"),
            "key-not-found",
        ),
        (
            "admin of other tenant",
            globex_admin,
            NoQ,
            O::Destroy,
            ka,
            "key-not-found",
        ),
        (
            "cross-tenant grantee never applies",
            globex_admin,
            NoQ,
            O::Encrypt,
            ka,
            "key-not-found",
        ),
        (
            "globex admin on own key",
            globex_admin,
            NoQ,
            O::Rotate,
            kg,
            "role:tenant-admin",
        ),
        (
            "key operation without key",
            alice,
            NoQ,
            O::Encrypt,
            None,
            "key-missing",
        ),
    ];
    for (name, t, q, op, k, expect) in cases {
        check(name, *t, *q, *op, *k, expect);
    }
}

#[test]
fn other_tenants_key_is_refused_exactly_like_a_missing_one() {
    let t = Tok::Good("gus", "globex", &["tenant-admin"]);
    let (Decision::Refuse(a), Decision::Refuse(b)) = (
        run(t, Q::Absent, Operation::Describe, Some("k-acme")),
        run(t, Q::Absent, Operation::Describe, Some("k-none")),
    ) else {
        panic!("both refused")
    };
    assert_eq!(
        (a.code(), a.cause.to_string()),
        (b.code(), b.cause.to_string())
    );
}

#[test]
fn allowed_requests_record_who_and_which_platform() {
    let Decision::Allow(a) = run(
        Tok::Good("bob", "acme", &[]),
        Q::Good("host-1", 20, 1),
        Operation::Sign,
        Some("k-acme"),
    ) else {
        panic!("allowed")
    };
    let actor = a.actor();
    assert_eq!(actor.principal, "bob");
    assert_eq!(actor.tenant, Some(tenant("acme")));
    assert_eq!(actor.token_id.as_deref(), Some("tok-bob"));
    let p = a.platform.as_ref().unwrap();
    assert_eq!((p.platform.as_str(), p.group.as_str()), ("host-1", "tee"));
    let rid = RequestId::new("r-1").unwrap();
    let drafts: Vec<Draft> = a.drafts(rid.clone(), KeyDestructionCancelled { key: key("k-acme") });
    assert_eq!(drafts.len(), 2);
    let EventBody::PlatformAttested(pa) = &drafts[0].body else {
        panic!("attestation first")
    };
    assert_eq!(pa.quote.digest(), p.digest);
    assert_eq!(drafts[0].context, Some(p.digest));
    assert_eq!(drafts[1].context, Some(p.digest));
    assert_eq!(drafts[1].request_id, rid);
    assert_ne!(drafts[0].request_id, rid);

    let Decision::Refuse(r) = run(
        Tok::Good("bob", "acme", &[]),
        Q::Absent,
        Operation::Sign,
        Some("k-acme"),
    ) else {
        panic!("refused")
    };
    assert_eq!(r.actor.unwrap().principal, "bob");
    assert_eq!(r.tenant, Some(tenant("acme")));
    assert_eq!(r.key, Some(key("k-acme")));
}

#[test]
fn issuer_rotation_revocation_and_platform_changes_follow_the_events() {
    let new_key = issuer_key(13);
    let mut bodies: Vec<EventBody> = vec![IssuerTrusted {
        issuer: "idp".into(),
        public_key: Bytes32(issuer_key(10).public_key()),
        tenants: vec![],
    }
    .into()];
    let mut trust = Trust::new();
    let status = |trust: &Trust, k: &IssuerKey| {
        projector::token::verify_token(
            &mint_token(k, &claims("a", "acme", &[], "idp")),
            NOW_MS,
            |iss| match trust.issuer(iss) {
                None => projector::token::IssuerStatus::Unknown,
                Some(i) if i.revoked.is_some() => projector::token::IssuerStatus::Revoked,
                Some(i) => projector::token::IssuerStatus::Trusted {
                    public_key: &i.public_key,
                    tenants: &i.tenants,
                },
            },
        )
        .map(|_| ())
        .map_err(|e| e.code())
    };
    for v in common::verified(bodies.clone()) {
        trust.apply(&v);
    }
    assert_eq!(status(&trust, &issuer_key(10)), Ok(()));
    bodies.push(
        IssuerTrusted {
            issuer: "idp".into(),
            public_key: Bytes32(new_key.public_key()),
            tenants: vec![],
        }
        .into(),
    );
    for v in common::verified(bodies.clone()) {
        trust.apply(&v);
    }
    assert_eq!(
        status(&trust, &issuer_key(10)),
        Err("token-signature"),
        "old key after rotation"
    );
    assert_eq!(status(&trust, &new_key), Ok(()));
    assert_eq!(trust.issuer("idp").unwrap().key_count, 2);
    bodies.push(
        IssuerRevoked {
            issuer: "idp".into(),
            reason: "x".into(),
        }
        .into(),
    );
    for v in common::verified(bodies.clone()) {
        trust.apply(&v);
    }
    assert_eq!(status(&trust, &new_key), Err("issuer-revoked"));
    // Revoking an unknown issuer is an anomaly, kept by sequence.
    bodies.push(
        IssuerRevoked {
            issuer: "nobody".into(),
            reason: "x".into(),
        }
        .into(),
    );
    let events = common::verified(bodies);
    for v in &events {
        trust.apply(v);
    }
    assert_eq!(trust.anomalies().len(), 1);
    assert_eq!(trust.anomalies()[0].seq, events.last().unwrap().seq());
}

// ---- property: decide agrees with the rules, stated independently ----------------------------

/// The operations each role allows, written out as a table (not via `Role::allows`).
fn role_table(role: &str) -> &'static [Operation] {
    use Operation as O;
    match role {
        "tenant-admin" => &[
            O::Create,
            O::Import,
            O::Describe,
            O::List,
            O::Rotate,
            O::SetVersions,
            O::Activate,
            O::Suspend,
            O::Deactivate,
            O::Compromise,
            O::ScheduleDestroy,
            O::CancelDestroy,
            O::Destroy,
            O::Grant,
            O::Revoke,
            O::Random,
        ],
        "key-admin" => &[
            O::Create,
            O::Import,
            O::Describe,
            O::List,
            O::Rotate,
            O::SetVersions,
            O::Activate,
            O::Suspend,
            O::Deactivate,
            O::Compromise,
            O::ScheduleDestroy,
            O::CancelDestroy,
            O::Random,
        ],
        "key-user" => &[O::Describe, O::List, O::Random],
        "auditor" => &[O::Describe, O::List],
        _ => &[],
    }
}

/// Grantee kind and value, operations, require platform, measurement, window (hours from now).
type GrantCase = (
    u8,
    u8,
    Vec<Operation>,
    bool,
    Option<u8>,
    Option<i8>,
    Option<i8>,
);

#[derive(Clone, Debug)]
struct Scenario {
    grants: Vec<GrantCase>,
    sub: u8,
    tenant: bool,
    roles: Vec<u8>,
    op: Operation,
    key_is_acme: Option<bool>,
    quote: Option<u8>,
}

const PRINCIPALS: [&str; 3] = ["p0", "p1", "p2"];
const ROLES: [&str; 5] = ["tenant-admin", "key-admin", "key-user", "auditor", "other"];
const GROUPS: [&str; 2] = ["tee", "batch"];

fn scenario() -> impl Strategy<Value = Scenario> {
    let op = prop::sample::select(Operation::ALL.to_vec());
    let grant = (
        0u8..4,
        0u8..5,
        prop::collection::vec(prop::sample::select(Operation::ALL.to_vec()), 0..4),
        any::<bool>(),
        prop::option::of(1u8..3),
        prop::option::of(-2i8..3),
        prop::option::of(-2i8..3),
    );
    (
        prop::collection::vec(grant, 0..5),
        0u8..3,
        any::<bool>(),
        prop::collection::vec(0u8..5, 0..3),
        op,
        prop::option::of(any::<bool>()),
        prop::option::of(0u8..3),
    )
        .prop_map(
            |(grants, sub, tenant, roles, op, key_is_acme, quote)| Scenario {
                grants,
                sub,
                tenant,
                roles,
                op,
                key_is_acme,
                quote,
            },
        )
}

fn grantee_of(kind: u8, v: u8) -> Grantee {
    match kind {
        0 => Grantee::Principal(PRINCIPALS[v as usize % 3].into()),
        1 => Grantee::Role(ROLES[v as usize % 5].into()),
        2 => Grantee::Tenant(tenant(if v.is_multiple_of(2) {
            "acme"
        } else {
            "globex"
        })),
        _ => Grantee::PlatformGroup(GROUPS[v as usize % 2].into()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decide_matches_the_rules(s in scenario()) {
        use Operation as O;
        // Views: the issuer, two platforms, a key per tenant and the scenario's grants on k-acme.
        let mut bodies: Vec<EventBody> = vec![
            IssuerTrusted { issuer: "idp".into(), public_key: Bytes32(issuer_key(10).public_key()), tenants: vec![] }.into(),
            PlatformEnrolled { platform: "h-tee".into(), attestation_key: Bytes32(platform_key(20).verifying_key().to_bytes()), group: "tee".into(), measurements: vec![m(1), m(2)] }.into(),
            PlatformEnrolled { platform: "h-batch".into(), attestation_key: Bytes32(platform_key(21).verifying_key().to_bytes()), group: "batch".into(), measurements: vec![m(1)] }.into(),
            created("k-acme", "acme"),
            created("k-globex", "globex"),
        ];
        let window = |o: Option<i8>| o.map(|h| (NOW_MS as i64 + i64::from(h) * HOUR_MS as i64) as u64);
        for (i, (kind, v, ops, req_p, meas, nb, na)) in s.grants.iter().enumerate() {
            bodies.push(grant("k-acme", &format!("g{i}"), grantee_of(*kind, *v), ops, GrantConditions {
                require_platform: *req_p,
                measurement: meas.map(m),
                not_before_ms: window(*nb),
                not_after_ms: window(*na),
            }));
        }
        let mut keys = KeyStates::new();
        let mut trust = Trust::new();
        for v in common::verified(bodies) {
            keys.apply(&v);
            trust.apply(&v);
        }
        let sub = PRINCIPALS[s.sub as usize];
        let caller_tenant = if s.tenant { "acme" } else { "globex" };
        let roles: Vec<&str> = s.roles.iter().map(|r| ROLES[*r as usize]).collect();
        let token = mint_token(&issuer_key(10), &claims(sub, caller_tenant, &roles, "idp"));
        // quote: 0 = tee platform measuring 1, 1 = tee platform measuring 2, 2 = batch platform.
        let q = s.quote.map(|q| match q {
            0 => Quote::sign(&platform_key(20), "h-tee", nonces().issue(NOW_MS), m(1), m(9)),
            1 => Quote::sign(&platform_key(20), "h-tee", nonces().issue(NOW_MS), m(2), m(9)),
            _ => Quote::sign(&platform_key(21), "h-batch", nonces().issue(NOW_MS), m(1), m(9)),
        });
        let key_name = s.key_is_acme.map(|a| if a { "k-acme" } else { "k-globex" });
        let key_id = key_name.map(key);
        let n = nonces();
        let cache = projector::token::TokenCache::new(4);
        let request = Request { token: Some(&token), quote: q.as_ref(), operation: s.op, key: key_id.as_ref() };
        let with = |tokens| Inputs { keys: &keys, trust: &trust, nonces: &n, now_ms: NOW_MS, tokens };
        let d = decide(&request, &with(None));
        // The token cache changes the cost, never the answer (a miss, then a hit).
        prop_assert_eq!(&decide(&request, &with(Some(&cache))), &d);
        prop_assert_eq!(&decide(&request, &with(Some(&cache))), &d);

        // The rules, stated independently.
        let by_role = roles.iter().any(|r| role_table(r).contains(&s.op));
        let tenant_wide = matches!(s.op, O::Create | O::Import | O::List | O::Random);
        let platform = s.quote.map(|q| (if q == 2 { "batch" } else { "tee" }, if q == 1 { m(2) } else { m(1) }));
        let expected = if tenant_wide {
            by_role
        } else {
            match key_name {
                None => false,
                Some(k) if (k == "k-acme") != (caller_tenant == "acme") => false,
                Some("k-globex") => by_role,
                Some(_) => by_role || s.grants.iter().any(|(kind, v, ops, req_p, meas, nb, na)| {
                    let who = match grantee_of(*kind, *v) {
                        Grantee::Principal(p) => p == sub,
                        Grantee::Role(r) => roles.contains(&r.as_str()) && r != "other",
                        Grantee::Tenant(t) => t.as_str() == caller_tenant,
                        Grantee::PlatformGroup(g) => platform.is_some_and(|(pg, _)| pg == g),
                    };
                    let in_window = window(*nb).is_none_or(|t| NOW_MS >= t) && window(*na).is_none_or(|t| NOW_MS <= t);
                    let needs_platform = *req_p || meas.is_some() || *kind == 3;
                    let platform_ok = !needs_platform || platform.is_some();
                    let meas_ok = match (meas, platform) {
                        (Some(want), Some((_, got))) => m(*want) == got,
                        _ => true,
                    };
                    ops.contains(&s.op) && who && in_window && platform_ok && meas_ok
                }),
            }
        };
        prop_assert_eq!(d.is_allowed(), expected, "decision {:?}", d);
        if let Decision::Allow(a) = &d {
            prop_assert_eq!(a.claims.tenant.as_str(), caller_tenant);
            if let (Some(k), false) = (key_name, tenant_wide) {
                prop_assert!(keys.get(&key(k)).unwrap().spec.tenant.as_str() == caller_tenant, "never another tenant's key");
            }
            if let Basis::Role(r) = a.basis {
                prop_assert!(roles.contains(&r.as_str()));
                prop_assert!(Role::allows(r, s.op));
            }
        }
    }
}
