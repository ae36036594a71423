//! Shared by the projector's tests: verified events built by the real verifier.
#![allow(dead_code)]

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use ledger::event::*;
use ledger::sign::{chain_and_sign, ChainTip, Draft, EventSigner};
use ledger::{Bytes32, ChainState, Checked, LedgerId, RequestId, VerifiedEvent};

pub fn ledger_id() -> LedgerId {
    LedgerId::new("proj").unwrap()
}

pub fn draft(body: EventBody) -> Draft {
    Draft {
        request_id: RequestId::random(),
        actor: Actor::system("test"),
        context: None,
        body,
    }
}

/// Genesis, enrolment and `bodies` (as system drafts) as verified events.
pub fn verified(bodies: Vec<EventBody>) -> Vec<VerifiedEvent> {
    verified_drafts(bodies.into_iter().map(draft).collect())
}

/// Genesis, enrolment and `drafts` as verified events (sequence = position from 1).
pub fn verified_drafts(drafts: Vec<Draft>) -> Vec<VerifiedEvent> {
    let root = EventSigner::new(SigningKey::from_bytes(&[1; 32]));
    let writer = EventSigner::new(SigningKey::from_bytes(&[2; 32]));
    let system = vec![
        draft(
            LedgerCreated {
                root_key: root.public_key(),
                kek_id: Bytes32::ZERO,
            }
            .into(),
        ),
        draft(
            SignerEnrolled {
                signer: writer.id(),
                public_key: writer.public_key(),
                role: SignerRole::Writer,
                label: "w".into(),
            }
            .into(),
        ),
    ];
    let (mut entries, tip) = chain_and_sign(&root, &ledger_id(), ChainTip::GENESIS, 1, &system);
    entries.extend(chain_and_sign(&writer, &ledger_id(), tip, 2, &drafts).0);
    let msgs: Vec<(u64, Bytes)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e.entry.clone()))
        .collect();
    let (out, err) = ChainState::new(ledger_id(), None).check_batch(msgs);
    assert!(err.is_none());
    out.into_iter()
        .map(|c| match c {
            Checked::Event(v) => v,
            Checked::Foreign(f) => panic!("foreign {f:?}"),
        })
        .collect()
}
