//! The audit index agrees with the events it folded: per key, per principal, per platform,
//! refusals; paging and time ranges.

use ed25519_dalek::SigningKey;
use ledger::event::*;
use ledger::quote::Quote;
use ledger::seal::SealedMaterial;
use ledger::sign::Draft;
use ledger::{Bytes32, KeyId, RequestId, TenantId};
use projector::audit::{AuditIndex, AuditQuery};

mod common;

fn actor(p: &str) -> Actor {
    Actor {
        principal: p.into(),
        tenant: Some(TenantId::new("acme").unwrap()),
        token_id: Some(format!("tok-{p}")),
    }
}

fn d(p: &str, context: Option<Bytes32>, body: impl Into<EventBody>) -> Draft {
    Draft {
        request_id: RequestId::random(),
        actor: actor(p),
        context,
        body: body.into(),
    }
}

fn key() -> KeyId {
    KeyId::new("k1").unwrap()
}

fn use_of(p: &str, op: Operation, context: Option<Bytes32>) -> KeyUse {
    KeyUse {
        key: key(),
        tenant: TenantId::new("acme").unwrap(),
        version: 1,
        operation: op,
        principal: p.into(),
        request_id: RequestId::random(),
        context,
    }
}

#[test]
fn views_agree_with_the_events() {
    let quote = Quote::sign(
        &SigningKey::from_bytes(&[4; 32]),
        "tee-1",
        Bytes32([1; 32]),
        Bytes32([2; 32]),
        Bytes32([3; 32]),
    );
    let digest = quote.digest();
    let drafts = vec![
        d(
            "ann",
            None,
            KeyCreated {
                spec: KeySpec {
                    key: key(),
                    tenant: TenantId::new("acme").unwrap(),
                    name: "k".into(),
                    key_type: KeyType::Aes256Gcm,
                    state: KeyState::Active,
                    exportable: true,
                    rotation_period_s: None,
                    split: None,
                    labels: vec![],
                },
                material: VersionMaterial {
                    version: 1,
                    sealed: vec![SealedMaterial {
                        dek_id: Bytes32([9; 32]),
                        nonce: vec![0; 12],
                        ciphertext: vec![0; 48],
                    }],
                    public_key: None,
                },
            },
        ),
        d(
            "bob",
            Some(digest),
            PlatformAttested {
                group: "tee".into(),
                quote,
            },
        ),
        d(
            "bob",
            Some(digest),
            MaterialAccessed {
                key: key(),
                version: 1,
                sealed_to: Some(Bytes32([3; 32])),
            },
        ),
        d(
            "svc",
            None,
            KeysUsed {
                uses: vec![
                    use_of("alice", Operation::Encrypt, None),
                    use_of("bob", Operation::Decrypt, Some(digest)),
                    use_of("alice", Operation::Decrypt, None),
                ],
            },
        ),
        d(
            "mallory",
            None,
            RequestRefused {
                key: Some(key()),
                tenant: Some(TenantId::new("acme").unwrap()),
                operation: Operation::Decrypt,
                code: "forbidden".into(),
                reason: "no grant".into(),
                count: 5,
                first_ms: 1,
                last_ms: 2,
            },
        ),
        d(
            "ann",
            None,
            KeyStateChanged {
                key: key(),
                from: KeyState::Active,
                to: KeyState::Suspended,
                reason: "x".into(),
            },
        ),
    ];
    let events = common::verified_drafts(drafts);
    let mut a = AuditIndex::new();
    for v in &events {
        a.apply(v);
        a.apply(v); // idempotent
    }
    let all = AuditQuery::default();
    let history = a.key_history(&key(), &all);
    let ops: Vec<Option<Operation>> = history.iter().map(|r| r.operation).collect();
    assert_eq!(
        ops,
        vec![
            Some(Operation::Create),
            Some(Operation::GetMaterial),
            Some(Operation::Encrypt),
            Some(Operation::Decrypt),
            Some(Operation::Decrypt),
            Some(Operation::Decrypt),
            Some(Operation::Suspend),
        ]
    );
    // Every record is traceable to its event's sequence.
    for r in &history {
        let ev = events.iter().find(|v| v.seq() == r.seq).unwrap();
        assert_eq!(ev.event().body.tag(), r.event);
    }
    let alice = a.principal_activity("alice", &all);
    assert_eq!(alice.len(), 2);
    assert!(alice.iter().all(|r| r.platform.is_none()));
    let bob = a.principal_activity("bob", &all);
    assert_eq!(bob.len(), 3, "attestation, access, decrypt");
    assert!(bob.iter().all(|r| r.platform.as_deref() == Some("tee-1")));
    let tee = a.platform_activity("tee-1", &all);
    assert_eq!(tee.len(), 3);
    let refused = a.refusals(&all);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].refusal, Some(("forbidden".into(), 5)));
    assert_eq!(a.refusal_counts(&all).get("forbidden"), Some(&5));
    // Paging by sequence, limits, time ranges, tenants.
    let page1 = a.key_history(
        &key(),
        &AuditQuery {
            limit: Some(3),
            ..all.clone()
        },
    );
    let cursor = |r: &projector::audit::AuditRecord| Some((r.seq, r.sub));
    let page2 = a.key_history(
        &key(),
        &AuditQuery {
            limit: Some(3),
            after: cursor(page1[2]),
            ..all.clone()
        },
    );
    let page3 = a.key_history(
        &key(),
        &AuditQuery {
            limit: Some(3),
            after: cursor(page2[2]),
            ..all.clone()
        },
    );
    assert_eq!(
        (page1.len(), page2.len(), page3.len()),
        (3, 3, 1),
        "pages split inside an event lose nothing"
    );
    let paged: Vec<_> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|r| (r.seq, r.sub))
        .collect();
    let whole: Vec<_> = history.iter().map(|r| (r.seq, r.sub)).collect();
    assert_eq!(paged, whole);
    let t = history[0].time_ms;
    assert!(a
        .key_history(
            &key(),
            &AuditQuery {
                from_ms: Some(t + 1),
                ..all.clone()
            }
        )
        .is_empty());
    assert_eq!(
        a.key_history(
            &key(),
            &AuditQuery {
                to_ms: Some(t + 1),
                ..all.clone()
            }
        )
        .len(),
        7
    );
    assert!(a
        .key_history(
            &key(),
            &AuditQuery {
                tenant: Some("globex".into()),
                ..all.clone()
            }
        )
        .is_empty());
}
