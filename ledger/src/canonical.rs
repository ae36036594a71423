//! Canonical MessagePack: one value, one byte string.
//!
//! Encoding is rmp-serde's positional (array) form with `bin` byte strings, no maps, no floats
//! and explicit string tags for enums (see `event`). Decoding accepts only bytes that re-encode
//! to themselves, which rejects the map form, non-minimal integers, `str`-for-`bin`, trailing
//! bytes and every other alternative spelling of the same value.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why bytes were not a canonical encoding of the expected type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("malformed MessagePack: {0}")]
    Malformed(String),
    #[error("non-canonical encoding: re-encodes to {reencoded_len} bytes that differ from the {len} given")]
    NonCanonical { len: usize, reencoded_len: usize },
}

/// Encodes `v` canonically.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Invariant: serialising our own types into a Vec cannot fail: they contain no maps with
    // non-string keys, no sequences of unknown length and the writer is infallible.
    rmp_serde::to_vec(v).expect("canonical encoding of a ledger type cannot fail")
}

/// Decodes `bytes` and insists they are the canonical encoding of the value.
pub fn decode<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    let v: T = rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let again = encode(&v);
    if again != bytes {
        return Err(DecodeError::NonCanonical {
            len: bytes.len(),
            reencoded_len: again.len(),
        });
    }
    Ok(v)
}
