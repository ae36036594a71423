//! Building signed entries: chaining drafts onto a head and signing them (in parallel).

use bytes::Bytes;
use ed25519_dalek::{Signer as _, SigningKey};
use rayon::prelude::*;

use crate::bytes32::{Bytes32, EventHash};
use crate::canonical;
use crate::entry;
use crate::event::{Actor, Event, EventBody, EVENT_FORMAT};
use crate::ids::{LedgerId, RequestId};

/// An Ed25519 key that signs events. The secret zeroizes on drop; there is no `Debug`.
pub struct EventSigner {
    key: SigningKey,
    id: Bytes32,
    public: Bytes32,
}

impl EventSigner {
    pub fn new(key: SigningKey) -> EventSigner {
        let public = Bytes32(key.verifying_key().to_bytes());
        EventSigner {
            id: entry::signer_id(&public.0),
            public,
            key,
        }
    }

    /// `entry::signer_id` of the public key.
    pub fn id(&self) -> Bytes32 {
        self.id
    }

    pub fn public_key(&self) -> Bytes32 {
        self.public
    }

    fn sign_body(&self, body: &[u8]) -> [u8; 64] {
        self.key.sign(&entry::signing_message(body)).to_bytes()
    }
}

/// What a writer wants recorded; the appender chains and signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub request_id: RequestId,
    pub actor: Actor,
    pub context: Option<Bytes32>,
    pub body: EventBody,
}

/// A chained, signed event, ready to publish.
#[derive(Clone, Debug)]
pub struct SignedEntry {
    pub event: Event,
    pub hash: EventHash,
    /// The framed bytes to store.
    pub entry: Bytes,
}

/// The point a new event chains onto: the next index and the previous valid event's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTip {
    pub next_index: u64,
    pub prev: EventHash,
}

impl ChainTip {
    /// Tip of an empty ledger: genesis comes next.
    pub const GENESIS: ChainTip = ChainTip {
        next_index: 0,
        prev: Bytes32::ZERO,
    };
}

/// Chains `drafts` onto `tip` (assigning index and prev) and signs them, using every core.
/// Returns the entries and the new tip.
pub fn chain_and_sign(
    signer: &EventSigner,
    ledger: &LedgerId,
    tip: ChainTip,
    time_ms: u64,
    drafts: &[Draft],
) -> (Vec<SignedEntry>, ChainTip) {
    let mut tip = tip;
    let mut bodies = Vec::with_capacity(drafts.len());
    for d in drafts {
        let event = Event {
            format: EVENT_FORMAT,
            ledger: ledger.clone(),
            index: tip.next_index,
            prev: tip.prev,
            time_ms,
            actor: d.actor.clone(),
            context: d.context,
            request_id: d.request_id.clone(),
            signer: signer.id(),
            body: d.body.clone(),
        };
        let body = canonical::encode(&event);
        let hash = entry::chain_hash(&body);
        tip = ChainTip {
            next_index: tip.next_index + 1,
            prev: hash,
        };
        bodies.push((event, body, hash));
    }
    let signed = if bodies.len() >= 16 {
        bodies
            .into_par_iter()
            .map(|(event, body, hash)| finish(signer, event, body, hash))
            .collect()
    } else {
        bodies
            .into_iter()
            .map(|(event, body, hash)| finish(signer, event, body, hash))
            .collect()
    };
    (signed, tip)
}

fn finish(signer: &EventSigner, event: Event, body: Vec<u8>, hash: EventHash) -> SignedEntry {
    let sig = signer.sign_body(&body);
    SignedEntry {
        event,
        hash,
        entry: Bytes::from(entry::frame(&body, &sig)),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
