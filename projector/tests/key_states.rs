//! KeyStates folds verified events deterministically and idempotently.

use ledger::event::*;
use ledger::seal::SealedMaterial;
use ledger::{Bytes32, KeyId, TenantId, VerifiedEvent};
use projector::KeyStates;

mod common;
use common::verified;

fn material(version: u32) -> VersionMaterial {
    VersionMaterial {
        version,
        sealed: vec![SealedMaterial {
            dek_id: Bytes32([version as u8; 32]),
            nonce: vec![0; 12],
            ciphertext: vec![version as u8; 48],
        }],
        public_key: None,
    }
}

fn key(k: &str) -> KeyId {
    KeyId::new(k).unwrap()
}

fn spec(k: &str) -> KeySpec {
    KeySpec {
        key: key(k),
        tenant: TenantId::new("acme").unwrap(),
        name: format!("key {k}"),
        key_type: KeyType::Aes256Gcm,
        state: KeyState::Active,
        exportable: false,
        rotation_period_s: Some(86_400),
        split: None,
        labels: vec![],
    }
}

fn fold(events: &[VerifiedEvent]) -> KeyStates {
    let mut s = KeyStates::new();
    for v in events {
        s.apply(v);
    }
    s
}

fn life() -> Vec<EventBody> {
    let grant = Grant {
        grant_id: "g1".into(),
        grantee: Grantee::Principal("bob".into()),
        operations: vec![Operation::Decrypt],
        conditions: GrantConditions {
            require_platform: false,
            measurement: None,
            not_before_ms: None,
            not_after_ms: None,
        },
    };
    vec![
        KeyCreated {
            spec: spec("k1"),
            material: material(1),
        }
        .into(),
        KeyCreated {
            spec: spec("k2"),
            material: material(1),
        }
        .into(),
        KeyRotated {
            key: key("k1"),
            material: material(2),
        }
        .into(),
        KeyVersionsBounded {
            key: key("k1"),
            min_encrypt_version: 2,
            min_decrypt_version: 1,
        }
        .into(),
        GrantAdded {
            key: key("k1"),
            grant: grant.clone(),
        }
        .into(),
        GrantAdded {
            key: key("k1"),
            grant: Grant {
                grant_id: "g2".into(),
                ..grant
            },
        }
        .into(),
        GrantRevoked {
            key: key("k1"),
            grant_id: "g1".into(),
        }
        .into(),
        KeyDestructionScheduled {
            key: key("k2"),
            destroy_after_ms: 99,
        }
        .into(),
        KeyDestructionCancelled { key: key("k2") }.into(),
        KeyCompromised {
            key: key("k1"),
            from: KeyState::Active,
            compromised_at_ms: 7,
            reason: "leak".into(),
        }
        .into(),
        KeyDestroyed {
            key: key("k1"),
            versions: vec![1, 2],
            erased_deks: vec![Bytes32([1; 32]), Bytes32([2; 32])],
        }
        .into(),
        KeyStateChanged {
            key: key("k2"),
            from: KeyState::Active,
            to: KeyState::Suspended,
            reason: "maintenance".into(),
        }
        .into(),
        KeyRotated {
            key: key("nope"),
            material: material(2),
        }
        .into(),
    ]
}

#[test]
fn a_keys_life_is_folded() {
    let events = verified(life());
    let s = fold(&events);
    assert_eq!(s.len(), 2);
    let k1 = s.get(&key("k1")).unwrap();
    assert_eq!(k1.state, KeyState::DestroyedCompromised);
    assert_eq!(k1.compromised_at_ms, Some(7));
    assert_eq!(k1.versions.len(), 2);
    assert!(k1.versions.values().all(|v| v.destroyed));
    assert_eq!(k1.latest_version().unwrap().version, 2);
    assert_eq!((k1.min_encrypt_version, k1.min_decrypt_version), (2, 1));
    assert_eq!(k1.grants.keys().collect::<Vec<_>>(), vec!["g2"]);
    // The creating event's request id is kept: it is part of the material's sealing context.
    assert_eq!(
        k1.versions[&2].created_by,
        events[4].event().request_id,
        "v2 was created by the KeyRotated event"
    );
    let k2 = s.get(&key("k2")).unwrap();
    assert_eq!(k2.state, KeyState::Suspended);
    assert_eq!(k2.destroy_after_ms, None);
    assert_eq!(s.of_tenant(&TenantId::new("acme").unwrap()).count(), 2);
    // The rotation of an unknown key is kept as an anomaly at its sequence, not dropped.
    let last = events.last().unwrap().seq();
    assert_eq!(s.anomalies().len(), 1);
    assert_eq!(s.anomalies()[0].seq, last);
    assert_eq!(s.last_seq(), last);
}

#[test]
fn folding_is_idempotent_and_deterministic() {
    let events = verified(life());
    let once = fold(&events);
    let mut twice = fold(&events);
    for v in &events {
        twice.apply(v);
    }
    assert_eq!(once, twice, "re-applying folded sequences changes nothing");
    let mut resumed = fold(&events[..7]);
    for v in &events[3..] {
        resumed.apply(v);
    }
    assert_eq!(
        once, resumed,
        "resuming from a prefix equals a rebuild from sequence 1"
    );
}
