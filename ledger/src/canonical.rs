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

/// Deepest nesting any ledger type uses is well under this; deeper input is refused before the
/// recursive decoder sees it (a stack overflow would abort every process reading the stream).
pub const MAX_DEPTH: usize = 32;

/// Decodes `bytes` and insists they are the canonical encoding of the value.
pub fn decode<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, DecodeError> {
    check_shape(bytes, MAX_DEPTH)?;
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

/// Walks one MessagePack value without recursion and refuses nesting deeper than `max_depth`,
/// truncated input and trailing bytes.
fn check_shape(bytes: &[u8], max_depth: usize) -> Result<(), DecodeError> {
    let bad = |what: &str| DecodeError::Malformed(what.to_string());
    let mut pos = 0usize;
    // Values still to read at each open level (the outermost level holds exactly one value).
    let mut pending: Vec<u64> = vec![1];
    let take = |pos: &mut usize, n: usize| -> Result<u64, DecodeError> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| bad("truncated"))?;
        let v = bytes[*pos..end]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        *pos = end;
        Ok(v)
    };
    while let Some(left) = pending.last_mut() {
        if *left == 0 {
            pending.pop();
            continue;
        }
        *left -= 1;
        let marker = take(&mut pos, 1)? as u8;
        // (bytes to skip, nested values to open)
        let (skip, open): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (take(&mut pos, 1)?, 0),
            0xc5 | 0xda => (take(&mut pos, 2)?, 0),
            0xc6 | 0xdb => (take(&mut pos, 4)?, 0),
            0xc7 => (take(&mut pos, 1)? + 1, 0),
            0xc8 => (take(&mut pos, 2)? + 1, 0),
            0xc9 => (take(&mut pos, 4)? + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, take(&mut pos, 2)?),
            0xdd => (0, take(&mut pos, 4)?),
            0xde => (0, 2 * take(&mut pos, 2)?),
            0xdf => (0, 2 * take(&mut pos, 4)?),
            0xc1 => return Err(bad("reserved marker 0xc1")),
        };
        let skip = usize::try_from(skip).map_err(|_| bad("length overflow"))?;
        take_skip(bytes, &mut pos, skip).ok_or_else(|| bad("truncated"))?;
        if open > 0 {
            if open > (bytes.len() - pos) as u64 {
                return Err(bad("container longer than the input"));
            }
            if pending.len() >= max_depth {
                return Err(bad("nesting too deep"));
            }
            pending.push(open);
        }
    }
    if pos != bytes.len() {
        return Err(DecodeError::NonCanonical {
            len: bytes.len(),
            reencoded_len: pos,
        });
    }
    Ok(())
}

fn take_skip(bytes: &[u8], pos: &mut usize, n: usize) -> Option<()> {
    let end = pos.checked_add(n).filter(|e| *e <= bytes.len())?;
    *pos = end;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_check_refuses_depth_truncation_and_trailing_bytes() {
        let ok = encode(&(1u8, vec![vec![2u8]], "x"));
        assert!(check_shape(&ok, MAX_DEPTH).is_ok());
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0xc0);
        assert!(matches!(
            check_shape(&deep, MAX_DEPTH),
            Err(DecodeError::Malformed(_))
        ));
        assert!(check_shape(&ok[..ok.len() - 1], MAX_DEPTH).is_err());
        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(check_shape(&trailing, MAX_DEPTH).is_err());
        assert!(check_shape(&[0xdd, 0xff, 0xff, 0xff, 0xff], MAX_DEPTH).is_err());
    }
}
