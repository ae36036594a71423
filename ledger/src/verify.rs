//! Chain verification: the only way to obtain a [`VerifiedEvent`].
//!
//! [`ChainState`] folds stored messages in stream order. Each message is either
//! - a **verified event**: well framed, canonical, of this ledger, signed (strictly) by a signer
//!   enrolled and active at that point, allowed to sign that kind of event, and linked: its
//!   `index` is the next index and its `prev` the hash of the last verified event;
//! - a **foreign message**: anything that is not a valid event of this ledger (unparseable,
//!   non-canonical, another ledger, unknown/retired signer, bad signature, a stale copy of an
//!   earlier event). It is never chained and always reported;
//! - or a **chain break** (fail closed): a validly signed event that skips ahead of the next index
//!   or whose `prev` differs, i.e. a valid event is missing, altered or reordered. The state is
//!   then halted and every later call returns the same error.
//!
//! Signatures of a batch are checked with Ed25519 batch verification in parallel chunks; a
//! failing chunk is re-checked one by one with `verify_strict` to name the bad entry. Weak
//! (small-order) signer keys are refused at enrolment, which batch verification relies on.

use std::collections::HashMap;

use bytes::Bytes;
use ed25519_dalek::{Signature, VerifyingKey};
use rayon::prelude::*;

use crate::bytes32::{Bytes32, EventHash};
use crate::canonical;
use crate::entry;
use crate::event::{Event, EventBody, SignerRole, EVENT_FORMAT};
use crate::ids::LedgerId;

/// An event whose framing, encoding, signature, signer and chain link were all checked.
/// Only this module can make one (the fields are private).
#[derive(Clone, Debug)]
pub struct VerifiedEvent {
    seq: u64,
    hash: EventHash,
    event: Event,
    entry: Bytes,
}

impl VerifiedEvent {
    /// Stream sequence the event was stored at.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Its chain hash (the next event's `prev`).
    pub fn hash(&self) -> EventHash {
        self.hash
    }
    pub fn event(&self) -> &Event {
        &self.event
    }
    /// The stored bytes.
    pub fn entry(&self) -> &Bytes {
        &self.entry
    }
    pub fn into_event(self) -> Event {
        self.event
    }
}

/// Why a stored message is not part of the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForeignReason {
    #[error("not a ledger entry: {0}")]
    Malformed(String),
    #[error("non-canonical encoding")]
    NonCanonical,
    #[error("unknown event format {0}")]
    Format(u16),
    #[error("event of another ledger ({found})")]
    WrongLedger { found: String },
    #[error("signed by unknown signer {signer}")]
    UnknownSigner { signer: Bytes32 },
    #[error("signed by retired signer {signer}")]
    RetiredSigner { signer: Bytes32 },
    #[error("signer {signer} may not sign {event_type}")]
    NotAuthorized {
        signer: Bytes32,
        event_type: &'static str,
    },
    #[error("bad signature by {signer}")]
    BadSignature { signer: Bytes32 },
    #[error("copy of earlier event index {index}")]
    Stale { index: u64 },
    #[error("invalid signer enrolment: {0}")]
    InvalidEnrolment(&'static str),
    #[error("genesis root key {found} is not the pinned root key {pinned}")]
    UntrustedGenesis { pinned: Bytes32, found: Bytes32 },
}

/// A stored message that is not part of the chain, by stream sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignMessage {
    pub seq: u64,
    pub reason: ForeignReason,
}

/// The outcome for one stored message.
// Most outcomes are events; boxing them would cost an allocation per event on replay.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Checked {
    Event(VerifiedEvent),
    Foreign(ForeignMessage),
}

/// A break in the chain of valid events. Verification and projection stop here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("chain broken at stream sequence {seq}: event index {index} links to {found}, but the last valid event hashes to {expected}")]
    BrokenLink {
        seq: u64,
        index: u64,
        expected: EventHash,
        found: EventHash,
    },
    #[error("chain gap at stream sequence {seq}: expected event index {expected_index}, found {found_index} (a valid event is missing, altered or out of order{})", .last_foreign.map(|s| format!("; see foreign message at sequence {s}")).unwrap_or_default())]
    Gap {
        seq: u64,
        expected_index: u64,
        found_index: u64,
        last_foreign: Option<u64>,
    },
    #[error("stream sequence went backwards at {seq} (after {last})")]
    SeqRegression { seq: u64, last: u64 },
}

impl ChainError {
    /// The stream sequence at which the break was detected.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::BrokenLink { seq, .. }
            | ChainError::Gap { seq, .. }
            | ChainError::SeqRegression { seq, .. } => *seq,
        }
    }
}

/// What a signing key is allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    Root,
    Enrolled(SignerRole),
}

#[derive(Debug, Clone)]
struct SignerInfo {
    key: VerifyingKey,
    authority: Authority,
    active: bool,
}

/// The last verified event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub index: u64,
    pub hash: EventHash,
    pub seq: u64,
}

/// Verification state of one ledger: signer registry, head of the chain of valid events and
/// the last stream sequence seen.
#[derive(Debug, Clone)]
pub struct ChainState {
    ledger: LedgerId,
    pinned_root: Option<Bytes32>,
    root: Option<Bytes32>,
    signers: HashMap<Bytes32, SignerInfo>,
    head: Option<Head>,
    last_seq: u64,
    last_foreign: Option<u64>,
    halted: Option<ChainError>,
    verified: u64,
    foreign: u64,
}

/// A message parsed far enough to check its signature.
struct Parsed {
    seq: u64,
    entry: Bytes,
    event: Event,
    body_range: (usize, usize),
    sig: [u8; 64],
}

/// Whether a signature was checked in the batch pass, or must be checked when folded.
#[derive(Clone, Copy)]
enum SigCheck {
    Done(bool),
    Pending,
}

enum Stage {
    Parsed(Box<Parsed>),
    Foreign(ForeignMessage),
}

impl ChainState {
    /// Fresh state for `ledger`. With `pinned_root`, the genesis event must carry that root key
    /// (an auditor pins it; otherwise the first genesis is trusted on first use).
    pub fn new(ledger: LedgerId, pinned_root: Option<Bytes32>) -> ChainState {
        ChainState {
            ledger,
            pinned_root,
            root: None,
            signers: HashMap::new(),
            head: None,
            last_seq: 0,
            last_foreign: None,
            halted: None,
            verified: 0,
            foreign: 0,
        }
    }

    pub fn ledger(&self) -> &LedgerId {
        &self.ledger
    }
    /// The last verified event, if any.
    pub fn head(&self) -> Option<Head> {
        self.head
    }
    /// The last stream sequence folded (verified or foreign).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    /// The root public key pinned by genesis.
    pub fn root_key(&self) -> Option<Bytes32> {
        self.root
            .and_then(|id| self.signers.get(&id))
            .map(|s| Bytes32(s.key.to_bytes()))
    }
    pub fn halted(&self) -> Option<&ChainError> {
        self.halted.as_ref()
    }
    /// Counts of verified events and foreign messages folded so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.verified, self.foreign)
    }
    /// Whether `signer` may currently sign ordinary events.
    pub fn is_active_writer(&self, signer: &Bytes32) -> bool {
        matches!(self.signers.get(signer), Some(s) if s.active && s.authority == Authority::Enrolled(SignerRole::Writer))
    }

    /// Where the next event chains on.
    pub fn tip(&self) -> crate::sign::ChainTip {
        match self.head {
            None => crate::sign::ChainTip::GENESIS,
            Some(h) => crate::sign::ChainTip {
                next_index: h.index + 1,
                prev: h.hash,
            },
        }
    }

    /// Folds one stored message.
    pub fn check(&mut self, seq: u64, entry: Bytes) -> Result<Checked, ChainError> {
        let (mut out, err) = self.check_batch(vec![(seq, entry)]);
        match err {
            Some(e) => Err(e),
            // Invariant: a batch of one without error yields exactly one outcome.
            None => Ok(out.pop().expect("one outcome per message")),
        }
    }

    /// Folds stored messages in stream order. Returns the outcomes up to the first chain break
    /// and that break, if any (after which the state stays halted).
    pub fn check_batch(&mut self, msgs: Vec<(u64, Bytes)>) -> (Vec<Checked>, Option<ChainError>) {
        self.check_inner(msgs, false)
    }

    fn check_inner(
        &mut self,
        msgs: Vec<(u64, Bytes)>,
        own_signatures: bool,
    ) -> (Vec<Checked>, Option<ChainError>) {
        if let Some(e) = &self.halted {
            return (Vec::new(), Some(e.clone()));
        }
        // 1. Parse (framing, canonical decoding, format, ledger) in parallel.
        let staged: Vec<Stage> = if msgs.len() >= 64 {
            msgs.into_par_iter()
                .map(|(seq, entry)| self.parse(seq, entry))
                .collect()
        } else {
            msgs.into_iter()
                .map(|(seq, entry)| self.parse(seq, entry))
                .collect()
        };
        // 2. The key for each signature, from the registry as it stood before this batch (and
        //    a genesis event's own root key). Signers enrolled inside the batch are checked one
        //    by one when folded, against the registry at that point: an unverified enrolment
        //    must never decide which key a later event is checked with.
        let keys: Vec<Option<VerifyingKey>> = staged
            .iter()
            .map(|s| match s {
                // Genesis events are rare: checked when folded, with the key that applies then.
                Stage::Parsed(p) if matches!(p.event.body, EventBody::LedgerCreated(_)) => None,
                Stage::Parsed(p) => self.signers.get(&p.event.signer).map(|i| i.key),
                Stage::Foreign(_) => None,
            })
            .collect();
        // 3. Signatures, in parallel chunks.
        let sig_ok = if own_signatures {
            vec![true; staged.len()]
        } else {
            check_signatures(&staged, &keys)
        };
        // 4. Registry, authority and chain link, in order.
        let mut out = Vec::with_capacity(staged.len());
        for ((stage, key), ok) in staged.into_iter().zip(keys).zip(sig_ok) {
            let seq = match &stage {
                Stage::Parsed(p) => p.seq,
                Stage::Foreign(f) => f.seq,
            };
            if seq <= self.last_seq {
                let e = ChainError::SeqRegression {
                    seq,
                    last: self.last_seq,
                };
                self.halted = Some(e.clone());
                return (out, Some(e));
            }
            let sig = match key {
                Some(_) => SigCheck::Done(ok),
                None => SigCheck::Pending,
            };
            match self.fold(stage, sig) {
                Ok(c) => {
                    self.last_seq = seq;
                    if let Checked::Foreign(f) = &c {
                        self.foreign += 1;
                        self.last_foreign = Some(f.seq);
                    } else {
                        self.verified += 1;
                    }
                    out.push(c);
                }
                Err(e) => {
                    self.halted = Some(e.clone());
                    return (out, Some(e));
                }
            }
        }
        (out, None)
    }

    fn parse(&self, seq: u64, entry: Bytes) -> Stage {
        let foreign = |reason| Stage::Foreign(ForeignMessage { seq, reason });
        let (body, sig) = match entry::split(&entry) {
            Ok(x) => x,
            Err(e) => return foreign(ForeignReason::Malformed(e.to_string())),
        };
        let event: Event = match canonical::decode(body) {
            Ok(ev) => ev,
            Err(canonical::DecodeError::NonCanonical { .. }) => {
                return foreign(ForeignReason::NonCanonical)
            }
            Err(e) => return foreign(ForeignReason::Malformed(e.to_string())),
        };
        if event.format != EVENT_FORMAT {
            return foreign(ForeignReason::Format(event.format));
        }
        if event.ledger != self.ledger {
            return foreign(ForeignReason::WrongLedger {
                found: event.ledger.to_string(),
            });
        }
        let start = 5;
        let body_range = (start, start + body.len());
        Stage::Parsed(Box::new(Parsed {
            seq,
            entry,
            event,
            body_range,
            sig,
        }))
    }

    fn fold(&mut self, stage: Stage, sig: SigCheck) -> Result<Checked, ChainError> {
        let p = match stage {
            Stage::Foreign(f) => return Ok(Checked::Foreign(f)),
            Stage::Parsed(p) => *p,
        };
        let seq = p.seq;
        let foreign = |reason| Ok(Checked::Foreign(ForeignMessage { seq, reason }));
        let signer = p.event.signer;
        let is_genesis = matches!(p.event.body, EventBody::LedgerCreated(_));
        // Signer and authority.
        if is_genesis && self.head.is_none() {
            if let EventBody::LedgerCreated(g) = &p.event.body {
                if let Some(pinned) = self.pinned_root {
                    if pinned != g.root_key {
                        return foreign(ForeignReason::UntrustedGenesis {
                            pinned,
                            found: g.root_key,
                        });
                    }
                }
                if entry::signer_id(&g.root_key.0) != signer {
                    return foreign(ForeignReason::UnknownSigner { signer });
                }
                if genesis_key(&p.event).is_none_or(|k| k.is_weak()) {
                    return foreign(ForeignReason::InvalidEnrolment("invalid or weak root key"));
                }
            }
        } else {
            let Some(info) = self.signers.get(&signer) else {
                return foreign(ForeignReason::UnknownSigner { signer });
            };
            if !info.active {
                return foreign(ForeignReason::RetiredSigner { signer });
            }
            let allowed = match info.authority {
                Authority::Root => p.event.body.needs_root(),
                Authority::Enrolled(SignerRole::Writer) => !p.event.body.needs_root(),
                Authority::Enrolled(SignerRole::Checkpointer) => false,
            };
            if !allowed {
                return foreign(ForeignReason::NotAuthorized {
                    signer,
                    event_type: p.event.body.tag(),
                });
            }
        }
        let sig_ok = match sig {
            SigCheck::Done(ok) => ok,
            // Genesis, or a signer enrolled earlier in this batch: check now, against the
            // genesis event's own root key (first genesis) or the registry's key.
            SigCheck::Pending => {
                let key = if is_genesis && self.head.is_none() {
                    genesis_key(&p.event)
                } else {
                    self.signers.get(&signer).map(|info| info.key)
                };
                let body = &p.entry[p.body_range.0..p.body_range.1];
                key.is_some_and(|k| {
                    k.verify_strict(
                        &entry::signing_message(body),
                        &Signature::from_bytes(&p.sig),
                    )
                    .is_ok()
                })
            }
        };
        if !sig_ok {
            return foreign(ForeignReason::BadSignature { signer });
        }
        // Chain link.
        let expected_index = self.head.map_or(0, |h| h.index + 1);
        let expected_prev = self.head.map_or(Bytes32::ZERO, |h| h.hash);
        if p.event.index < expected_index {
            return foreign(ForeignReason::Stale {
                index: p.event.index,
            });
        }
        if p.event.index > expected_index {
            return Err(ChainError::Gap {
                seq,
                expected_index,
                found_index: p.event.index,
                last_foreign: self.last_foreign,
            });
        }
        if p.event.prev != expected_prev {
            return Err(ChainError::BrokenLink {
                seq,
                index: p.event.index,
                expected: expected_prev,
                found: p.event.prev,
            });
        }
        if is_genesis != (expected_index == 0) {
            // Genesis must be first and only first; anything else at index 0 is not ours.
            return foreign(ForeignReason::NotAuthorized {
                signer,
                event_type: p.event.body.tag(),
            });
        }
        // Registry effects.
        match &p.event.body {
            EventBody::LedgerCreated(g) => {
                // Invariant: genesis_key() parsed this key to check the signature.
                let key = VerifyingKey::from_bytes(&g.root_key.0).map_err(|_| ChainError::Gap {
                    seq,
                    expected_index,
                    found_index: p.event.index,
                    last_foreign: None,
                })?;
                self.root = Some(signer);
                self.signers.insert(
                    signer,
                    SignerInfo {
                        key,
                        authority: Authority::Root,
                        active: true,
                    },
                );
            }
            EventBody::SignerEnrolled(e) => {
                let key = match VerifyingKey::from_bytes(&e.public_key.0) {
                    Ok(k) if !k.is_weak() => k,
                    _ => return foreign(ForeignReason::InvalidEnrolment("invalid or weak key")),
                };
                if entry::signer_id(&e.public_key.0) != e.signer {
                    return foreign(ForeignReason::InvalidEnrolment("signer id mismatch"));
                }
                if self.signers.contains_key(&e.signer) {
                    return foreign(ForeignReason::InvalidEnrolment("already enrolled"));
                }
                self.signers.insert(
                    e.signer,
                    SignerInfo {
                        key,
                        authority: Authority::Enrolled(e.role),
                        active: true,
                    },
                );
            }
            EventBody::SignerRetired(e) => match self.signers.get_mut(&e.signer) {
                Some(s) if s.authority != Authority::Root => s.active = false,
                _ => return foreign(ForeignReason::InvalidEnrolment("unknown signer retired")),
            },
            _ => {}
        }
        let hash = entry::chain_hash(&p.entry[p.body_range.0..p.body_range.1]);
        self.head = Some(Head {
            index: p.event.index,
            hash,
            seq,
        });
        Ok(Checked::Event(VerifiedEvent {
            seq,
            hash,
            event: p.event,
            entry: p.entry,
        }))
    }

    /// Advances the state over entries this process just signed and saw committed at
    /// `first_seq..`. Their signatures are not re-checked (we made them); links, registry
    /// effects and authority are, exactly as for any other event.
    pub(crate) fn accept_own(
        &mut self,
        first_seq: u64,
        entries: &[crate::sign::SignedEntry],
    ) -> Result<(), ChainError> {
        let msgs = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (first_seq + i as u64, e.entry.clone()))
            .collect::<Vec<_>>();
        let (out, err) = self.check_inner(msgs, true);
        if let Some(e) = err {
            return Err(e);
        }
        debug_assert!(out.iter().all(|c| matches!(c, Checked::Event(_))));
        Ok(())
    }
}

fn genesis_key(event: &Event) -> Option<VerifyingKey> {
    match &event.body {
        EventBody::LedgerCreated(g) => VerifyingKey::from_bytes(&g.root_key.0).ok(),
        _ => None,
    }
}

const SIG_CHUNK: usize = 256;

fn check_signatures(staged: &[Stage], keys: &[Option<VerifyingKey>]) -> Vec<bool> {
    let items: Vec<(usize, &Parsed, VerifyingKey)> = staged
        .iter()
        .zip(keys)
        .enumerate()
        .filter_map(|(i, (s, k))| match (s, k) {
            (Stage::Parsed(p), Some(k)) => Some((i, p.as_ref(), *k)),
            _ => None,
        })
        .collect();
    let mut ok = vec![false; staged.len()];
    let results: Vec<(usize, bool)> = items
        .par_chunks(SIG_CHUNK)
        .flat_map_iter(|chunk| verify_chunk(chunk).into_iter())
        .collect();
    for (i, r) in results {
        ok[i] = r;
    }
    ok
}

fn verify_chunk(chunk: &[(usize, &Parsed, VerifyingKey)]) -> Vec<(usize, bool)> {
    let msgs: Vec<Vec<u8>> = chunk
        .iter()
        .map(|(_, p, _)| entry::signing_message(&p.entry[p.body_range.0..p.body_range.1]))
        .collect();
    let sigs: Vec<Signature> = chunk
        .iter()
        .map(|(_, p, _)| Signature::from_bytes(&p.sig))
        .collect();
    let keys: Vec<VerifyingKey> = chunk.iter().map(|(_, _, k)| *k).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();
    if chunk.len() > 1 && ed25519_dalek::verify_batch(&refs, &sigs, &keys).is_ok() {
        return chunk.iter().map(|(i, _, _)| (*i, true)).collect();
    }
    chunk
        .iter()
        .zip(refs.iter().zip(&sigs))
        .map(|((i, _, k), (m, s))| (*i, k.verify_strict(m, s).is_ok()))
        .collect()
}
