//! Entry framing, chain hashing and the domain strings. Plain functions, no IO.
//!
//! ```text
//! entry = 0x01 || u32be(len(body)) || body || signature[64]
//! body  = canonical MessagePack of `Event`
//! sig   = Ed25519(signer, "keyledger/event-sig/v1\n" || body)         (checked with verify_strict)
//! chain = BLAKE3-derive_key("keyledger 2026-11 event chain v1", body)  (the next event's `prev`)
//! ```
//! The chain hash covers the signed body (which holds `prev`, so it covers all history); the
//! signature sits outside it so a batch of events can be chained first and signed in parallel.
//! The Merkle layer (RFC 6962) hashes the whole entry, signature included.

use crate::bytes32::{Bytes32, EventHash};

/// The only framing version.
pub const ENTRY_VERSION: u8 = 1;
/// Prefix of every event signature's message.
pub const EVENT_SIG_DOMAIN: &[u8] = b"keyledger/event-sig/v1\n";
/// BLAKE3 `derive_key` context of the chain hash.
pub const CHAIN_CONTEXT: &str = "keyledger 2026-11 event chain v1";
/// BLAKE3 `derive_key` context of signer ids.
pub const SIGNER_ID_CONTEXT: &str = "keyledger 2026-11 signer id v1";
/// Largest entry accepted (well under NATS' default 1 MiB max payload, headers included).
pub const MAX_ENTRY_LEN: usize = 512 * 1024;

const HEADER_LEN: usize = 5;
const SIG_LEN: usize = 64;

/// Why bytes are not a well-formed entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("entry of {len} bytes is too short")]
    TooShort { len: usize },
    #[error("entry of {len} bytes exceeds the {MAX_ENTRY_LEN}-byte limit")]
    TooLong { len: usize },
    #[error("unknown entry version {0}")]
    Version(u8),
    #[error("declared body length {declared} does not fit an entry of {len} bytes")]
    Length { declared: usize, len: usize },
}

/// Frames a signed body.
pub fn frame(body: &[u8], sig: &[u8; 64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + SIG_LEN);
    out.push(ENTRY_VERSION);
    // Invariant: bodies are bounded by MAX_ENTRY_LEN, far below u32::MAX.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(sig);
    out
}

/// Splits an entry into its body and signature.
pub fn split(entry: &[u8]) -> Result<(&[u8], [u8; 64]), FrameError> {
    if entry.len() > MAX_ENTRY_LEN {
        return Err(FrameError::TooLong { len: entry.len() });
    }
    if entry.len() < HEADER_LEN + SIG_LEN {
        return Err(FrameError::TooShort { len: entry.len() });
    }
    if entry[0] != ENTRY_VERSION {
        return Err(FrameError::Version(entry[0]));
    }
    let declared = u32::from_be_bytes([entry[1], entry[2], entry[3], entry[4]]) as usize;
    if HEADER_LEN + declared + SIG_LEN != entry.len() {
        return Err(FrameError::Length {
            declared,
            len: entry.len(),
        });
    }
    let body = &entry[HEADER_LEN..HEADER_LEN + declared];
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&entry[HEADER_LEN + declared..]);
    Ok((body, sig))
}

/// The chain hash of a signed body.
pub fn chain_hash(body: &[u8]) -> EventHash {
    let mut h = blake3::Hasher::new_derive_key(CHAIN_CONTEXT);
    h.update(body);
    Bytes32(*h.finalize().as_bytes())
}

/// The message an event signature covers.
pub fn signing_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(EVENT_SIG_DOMAIN.len() + body.len());
    m.extend_from_slice(EVENT_SIG_DOMAIN);
    m.extend_from_slice(body);
    m
}

/// A signer's id: a hash of its Ed25519 public key.
pub fn signer_id(public_key: &[u8; 32]) -> Bytes32 {
    Bytes32(blake3::derive_key(SIGNER_ID_CONTEXT, public_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_refusals() {
        let body = b"hello";
        let sig = [7u8; 64];
        let e = frame(body, &sig);
        assert_eq!(split(&e).unwrap(), (&body[..], sig));
        let mut bad = e.clone();
        bad[0] = 2;
        assert_eq!(split(&bad), Err(FrameError::Version(2)));
        let mut bad = e.clone();
        bad.push(0);
        assert!(matches!(split(&bad), Err(FrameError::Length { .. })));
        assert!(matches!(split(&e[..10]), Err(FrameError::TooShort { .. })));
    }

    #[test]
    fn chain_hash_is_domain_separated() {
        assert_ne!(chain_hash(b"x").0, *blake3::hash(b"x").as_bytes());
        assert_ne!(chain_hash(b"x").0, signer_id(&[0u8; 32]).0);
    }
}
