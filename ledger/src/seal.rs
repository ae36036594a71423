//! Sealing key material with AES-256-GCM, arranged for crypto-shredding (DESIGN.md §4).
//!
//! Two layers:
//!
//! * **Material** (the bytes of one key version) is sealed under its own random data key (DEK).
//!   The result, [`SealedMaterial`], is carried inside signed events. Its associated data is
//!   [`SealContext::aad`], which binds it to ledger, key, version and the request (event) that
//!   created it, so sealed material cannot be replayed into another place.
//! * **The DEK** is sealed under the master key ([`Kek`]). The result, [`SealedDek`], lives
//!   *outside* the event stream, in an erasable DEK store keyed by [`SealContext::dek_id`].
//!   Erasing that entry makes the material unrecoverable from every stored byte, while the
//!   events (which only hold `SealedMaterial`) still verify.
//!
//! This module does no IO. Every derived value is domain-separated: ids come from BLAKE3
//! `derive_key` with a context string of their own, and each AEAD layer has its own
//! associated-data prefix.
//!
//! Nonces are random (96 bits, from the OS). A DEK seals exactly one message, so its nonce can
//! never repeat; the KEK wraps one DEK per key version (plus rewraps), so the usual random-nonce
//! bound for AES-GCM (about 2^32 messages per key) is the budget that KEK rotation
//! ([`rewrap_dek`]) must respect.

use std::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::bytes32::Bytes32;
use crate::ids::{KeyId, LedgerId, RequestId};

/// BLAKE3 `derive_key` context for [`Kek::id`].
const KEK_ID_CONTEXT: &str = "keyledger 2026-11 kek id v1";
/// BLAKE3 `derive_key` context for [`SealContext::dek_id`].
const DEK_ID_CONTEXT: &str = "keyledger 2026-11 dek id v1";
/// Prefix of the material AEAD's associated data ([`SealContext::aad`]).
const MATERIAL_AAD_PREFIX: &[u8] = b"keyledger/material/v1\0";
/// Prefix of the associated data of one share of a split key.
const SHARE_AAD_PREFIX: &[u8] = b"keyledger/material-share/v1\0";
/// Prefix of the DEK-wrapping AEAD's associated data.
const DEK_AAD_PREFIX: &[u8] = b"keyledger/dek/v1\0";

/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of a DEK (and of a KEK).
pub const KEY_LEN: usize = 32;

/// Why sealing or unsealing failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The sealed DEK was sealed under KEK `expected`, but the KEK supplied has id `found`.
    #[error("sealed DEK belongs to KEK {expected}, but the KEK supplied is {found}")]
    WrongKek { expected: Bytes32, found: Bytes32 },
    /// A sealed value names DEK `found`, but the sealing context derives `expected`.
    #[error(
        "DEK id mismatch: the sealing context derives {expected}, the sealed value names {found}"
    )]
    DekMismatch { expected: Bytes32, found: Bytes32 },
    /// A nonce is not 12 bytes long.
    #[error("AES-GCM nonce is {len} bytes, expected 12")]
    BadNonceLength { len: usize },
    /// Authentication failed: wrong key, wrong context, or tampered bytes.
    #[error("decryption failed: wrong key, wrong context or tampered ciphertext")]
    Decrypt,
    /// Encryption refused the input (AES-GCM's length limit, about 64 GiB).
    #[error("encryption failed: plaintext of {len} bytes is too long for AES-GCM")]
    Encrypt { len: usize },
    /// The operating system's random number generator failed.
    #[error("operating system random number generator failed")]
    Rng(#[source] rand_core::Error),
    /// Bytes that do not decode, or do not re-encode to themselves.
    #[error("malformed sealed value: {0}")]
    Encoding(String),
}

/// The master key (KEK): 32 random bytes, zeroized on drop.
///
/// Its `Debug` prints only [`Kek::id`], never the key bytes.
pub struct Kek(Zeroizing<[u8; KEY_LEN]>);

impl Kek {
    /// A fresh KEK from the operating system's random number generator.
    ///
    /// Panics if the OS random number generator fails (as `SigningKey::generate` does).
    pub fn generate() -> Kek {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(&mut k[..]);
        Kek(k)
    }

    pub fn from_bytes(b: Zeroizing<[u8; KEY_LEN]>) -> Kek {
        Kek(b)
    }

    /// The raw key bytes. Only for key custody (sealing the KEK at rest); never log them.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Public identifier of this KEK: BLAKE3 `derive_key("keyledger 2026-11 kek id v1", kek)`.
    pub fn id(&self) -> Bytes32 {
        Bytes32(blake3::derive_key(KEK_ID_CONTEXT, &self.0[..]))
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek").field("id", &self.id()).finish()
    }
}

/// Binds sealed material to its place: ledger, key, version and the request (event) that
/// created it.
#[derive(Clone, Copy, Debug)]
pub struct SealContext<'a> {
    pub ledger: &'a LedgerId,
    pub key: &'a KeyId,
    pub version: u32,
    pub request_id: &'a RequestId,
    /// For split keys: which Shamir share (1-based) this is. `None` for whole material.
    pub share: Option<u8>,
}

impl SealContext<'_> {
    /// Associated data of the material AEAD (frozen encoding):
    ///
    /// ```text
    /// "keyledger/material/v1\0"
    /// u32be(len(ledger))     ledger
    /// u32be(len(key))        key
    /// u32be(version)                      (fixed width, so no length prefix)
    /// u32be(len(request_id)) request_id
    /// ```
    ///
    /// A share of a split key (`share: Some(i)`) uses the prefix
    /// `"keyledger/material-share/v1\0"` and appends `u8(i)`, so each share has its own DEK.
    pub fn aad(&self) -> Vec<u8> {
        let (l, k, r) = (
            self.ledger.as_str().as_bytes(),
            self.key.as_str().as_bytes(),
            self.request_id.as_str().as_bytes(),
        );
        let mut out =
            Vec::with_capacity(MATERIAL_AAD_PREFIX.len() + 16 + l.len() + k.len() + r.len());
        out.extend_from_slice(match self.share {
            None => MATERIAL_AAD_PREFIX,
            Some(_) => SHARE_AAD_PREFIX,
        });
        push_len_prefixed(&mut out, l);
        push_len_prefixed(&mut out, k);
        out.extend_from_slice(&self.version.to_be_bytes());
        push_len_prefixed(&mut out, r);
        if let Some(i) = self.share {
            out.push(i);
        }
        out
    }

    /// Where the sealed DEK of this context is stored: BLAKE3
    /// `derive_key("keyledger 2026-11 dek id v1", aad())`.
    pub fn dek_id(&self) -> Bytes32 {
        Bytes32(blake3::derive_key(DEK_ID_CONTEXT, &self.aad()))
    }
}

/// Appends `u32be(len(b)) || b`. Ids are at most 64 bytes, so the length always fits.
fn push_len_prefixed(out: &mut Vec<u8>, b: &[u8]) {
    // Invariant: callers pass validated ids (<= 64 bytes); saturating keeps this total anyway.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

/// Key material sealed under its own data key (DEK); this is what signed events carry.
/// The encoding is frozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedMaterial {
    pub dek_id: Bytes32,
    /// 12 bytes.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// AES-256-GCM ciphertext || tag, AAD = [`SealContext::aad`].
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A DEK sealed under the KEK; stored outside the event stream (in an erasable DEK store),
/// so erasing it crypto-shreds the material while the event chain still verifies.
/// The encoding is frozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedDek {
    pub kek_id: Bytes32,
    pub dek_id: Bytes32,
    /// 12 bytes.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// AES-256-GCM(KEK, dek) ciphertext || tag, AAD = `"keyledger/dek/v1\0" || dek_id || kek_id`.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl SealedDek {
    /// MessagePack, array form (`rmp_serde::to_vec`). This is the value stored in the DEK store.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Invariant: serialising a struct of byte strings into a Vec cannot fail; rmp-serde's
        // only errors here would be writer IO errors (impossible for Vec) or unsupported types
        // (there are none).
        rmp_serde::to_vec(self).expect("SealedDek always serialises")
    }

    /// Decodes [`SealedDek::to_bytes`]. Refuses any input that does not re-encode to the
    /// identical bytes (trailing bytes, map form, non-minimal integers, ...).
    pub fn from_bytes(b: &[u8]) -> Result<SealedDek, SealError> {
        let d: SealedDek =
            rmp_serde::from_slice(b).map_err(|e| SealError::Encoding(e.to_string()))?;
        if d.to_bytes() != b {
            return Err(SealError::Encoding(
                "sealed DEK is not in canonical encoding".to_owned(),
            ));
        }
        Ok(d)
    }
}

fn dek_aad(dek_id: &Bytes32, kek_id: &Bytes32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DEK_AAD_PREFIX.len() + 64);
    aad.extend_from_slice(DEK_AAD_PREFIX);
    aad.extend_from_slice(dek_id.as_bytes());
    aad.extend_from_slice(kek_id.as_bytes());
    aad
}

/// Seals `plaintext` for `ctx` under a fresh random DEK, and seals that DEK under `kek`.
///
/// Store the [`SealedDek`] under `SealedDek::dek_id` in the erasable DEK store; put the
/// [`SealedMaterial`] in the event.
pub fn seal_material(
    kek: &Kek,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
) -> Result<(SealedMaterial, SealedDek), SealError> {
    let dek: Zeroizing<[u8; KEY_LEN]> = random_bytes().map_err(SealError::Rng)?;
    let nonce_m: [u8; NONCE_LEN] = *random_bytes().map_err(SealError::Rng)?;
    let nonce_d: [u8; NONCE_LEN] = *random_bytes().map_err(SealError::Rng)?;
    seal_material_with(kek, ctx, plaintext, &dek, nonce_m, nonce_d)
}

/// Deterministic core of [`seal_material`]: caller-chosen DEK and nonces. Only for
/// `seal_material` itself and for golden test vectors; reusing a nonce breaks AES-GCM.
pub(crate) fn seal_material_with(
    kek: &Kek,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
    dek: &[u8; KEY_LEN],
    nonce_m: [u8; NONCE_LEN],
    nonce_d: [u8; NONCE_LEN],
) -> Result<(SealedMaterial, SealedDek), SealError> {
    let dek_id = ctx.dek_id();
    let kek_id = kek.id();
    let material = SealedMaterial {
        dek_id,
        nonce: nonce_m.to_vec(),
        ciphertext: aead_seal(dek, &nonce_m, &ctx.aad(), plaintext).map_err(|_| {
            SealError::Encrypt {
                len: plaintext.len(),
            }
        })?,
    };
    let sealed_dek = SealedDek {
        kek_id,
        dek_id,
        nonce: nonce_d.to_vec(),
        ciphertext: aead_seal(
            kek.expose_bytes(),
            &nonce_d,
            &dek_aad(&dek_id, &kek_id),
            dek,
        )
        .map_err(|_| SealError::Encrypt { len: KEY_LEN })?,
    };
    Ok((material, sealed_dek))
}

/// Opens sealed material. Checks, before any decryption, that `m.dek_id == ctx.dek_id() ==
/// d.dek_id`, that `d` was sealed under `kek`, and the nonce lengths; then unwraps the DEK and
/// decrypts. An authentication failure is [`SealError::Decrypt`].
pub fn unseal_material(
    kek: &Kek,
    ctx: &SealContext<'_>,
    m: &SealedMaterial,
    d: &SealedDek,
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let expected = ctx.dek_id();
    for found in [m.dek_id, d.dek_id] {
        if !ct_eq32(&expected, &found) {
            return Err(SealError::DekMismatch { expected, found });
        }
    }
    let dek = unwrap_dek(kek, d)?;
    let nonce = nonce_array(&m.nonce)?;
    aead_open(&dek, &nonce, &ctx.aad(), &m.ciphertext).map_err(|_| SealError::Decrypt)
}

/// Seals `plaintext` for `ctx` under an already stored DEK of that context (a retried sealing
/// whose first DEK is the one the DEK store kept). Fresh random nonce.
pub fn seal_material_under(
    kek: &Kek,
    ctx: &SealContext<'_>,
    plaintext: &[u8],
    existing: &SealedDek,
) -> Result<SealedMaterial, SealError> {
    let expected = ctx.dek_id();
    if !ct_eq32(&expected, &existing.dek_id) {
        return Err(SealError::DekMismatch {
            expected,
            found: existing.dek_id,
        });
    }
    let dek = unwrap_dek(kek, existing)?;
    let nonce: [u8; NONCE_LEN] = *random_bytes().map_err(SealError::Rng)?;
    Ok(SealedMaterial {
        dek_id: expected,
        nonce: nonce.to_vec(),
        ciphertext: aead_seal(&dek, &nonce, &ctx.aad(), plaintext).map_err(|_| {
            SealError::Encrypt {
                len: plaintext.len(),
            }
        })?,
    })
}

/// Re-seals a DEK under a new KEK (for KEK rotation) without touching the material.
pub fn rewrap_dek(old: &Kek, new: &Kek, d: &SealedDek) -> Result<SealedDek, SealError> {
    let dek = unwrap_dek(old, d)?;
    let nonce: [u8; NONCE_LEN] = *random_bytes().map_err(SealError::Rng)?;
    let kek_id = new.id();
    let ciphertext = aead_seal(
        new.expose_bytes(),
        &nonce,
        &dek_aad(&d.dek_id, &kek_id),
        &dek[..],
    )
    .map_err(|_| SealError::Encrypt { len: KEY_LEN })?;
    Ok(SealedDek {
        kek_id,
        dek_id: d.dek_id,
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Checks the KEK id and nonce, then decrypts the DEK.
fn unwrap_dek(kek: &Kek, d: &SealedDek) -> Result<Zeroizing<[u8; KEY_LEN]>, SealError> {
    let found = kek.id();
    if !ct_eq32(&d.kek_id, &found) {
        return Err(SealError::WrongKek {
            expected: d.kek_id,
            found,
        });
    }
    let nonce = nonce_array(&d.nonce)?;
    let plain = aead_open(
        kek.expose_bytes(),
        &nonce,
        &dek_aad(&d.dek_id, &d.kek_id),
        &d.ciphertext,
    )
    .map_err(|_| SealError::Decrypt)?;
    let mut dek = Zeroizing::new([0u8; KEY_LEN]);
    if plain.len() != KEY_LEN {
        // Authenticated under our KEK and AAD yet not a DEK: only a buggy sealer could do this.
        return Err(SealError::Encoding(format!(
            "unwrapped DEK is {} bytes, expected {KEY_LEN}",
            plain.len()
        )));
    }
    dek.copy_from_slice(&plain);
    Ok(dek)
}

fn nonce_array(n: &[u8]) -> Result<[u8; NONCE_LEN], SealError> {
    n.try_into()
        .map_err(|_| SealError::BadNonceLength { len: n.len() })
}

/// Constant-time equality of two 32-byte values.
pub(crate) fn ct_eq32(a: &Bytes32, b: &Bytes32) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// `N` bytes from the operating system's random number generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, rand_core::Error> {
    let mut b = Zeroizing::new([0u8; N]);
    OsRng.try_fill_bytes(&mut b[..])?;
    Ok(b)
}

/// AES-256-GCM encryption: returns ciphertext || tag. Fails only beyond AES-GCM's length limit.
pub(crate) fn aead_seal(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, aes_gcm::Error> {
    let cipher = Aes256Gcm::new(key.into());
    // Exact capacity, so the buffer never reallocates and leaves a plaintext copy behind; it is
    // zeroized if encryption refuses (the only case in which it would still hold plaintext).
    let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
    buf.extend_from_slice(plaintext);
    let tag = cipher.encrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut buf[..])?;
    buf.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *buf))
}

/// AES-256-GCM decryption into a zeroizing buffer. aes-gcm checks the tag before decrypting,
/// so on failure no plaintext is produced.
pub(crate) fn aead_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, aes_gcm::Error> {
    let cipher = Aes256Gcm::new(key.into());
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher.decrypt_in_place(Nonce::from_slice(nonce), aad, &mut *buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Ids {
        ledger: LedgerId,
        key: KeyId,
        version: u32,
        request: RequestId,
    }

    impl Ids {
        fn new(ledger: &str, key: &str, version: u32, request: &str) -> Ids {
            Ids {
                ledger: LedgerId::new(ledger).unwrap(),
                key: KeyId::new(key).unwrap(),
                version,
                request: RequestId::new(request).unwrap(),
            }
        }
        fn ctx(&self) -> SealContext<'_> {
            SealContext {
                ledger: &self.ledger,
                key: &self.key,
                version: self.version,
                request_id: &self.request,
                share: None,
            }
        }
    }

    fn base() -> Ids {
        Ids::new("ledger-1", "key_A", 7, "req-0001")
    }

    /// Opens `(m, d)` with `kek` in `ids`' context, and checks the outcome against `want`
    /// (`Ok(plaintext)` or a predicate on the error).
    fn check(
        what: &str,
        kek: &Kek,
        ids: &Ids,
        m: &SealedMaterial,
        d: &SealedDek,
        want: Result<&[u8], fn(&SealError) -> bool>,
    ) {
        let got = unseal_material(kek, &ids.ctx(), m, d);
        match (got, want) {
            (Ok(p), Ok(w)) => assert_eq!(&p[..], w, "{what}"),
            (Err(e), Err(pred)) => assert!(pred(&e), "{what}: unexpected error {e:?}"),
            (Ok(_), Err(_)) => panic!("{what}: opened, but should have failed"),
            (Err(e), Ok(_)) => panic!("{what}: failed with {e:?}"),
        }
    }

    fn is_decrypt(e: &SealError) -> bool {
        matches!(e, SealError::Decrypt)
    }
    fn is_dek_mismatch(e: &SealError) -> bool {
        matches!(e, SealError::DekMismatch { .. })
    }
    fn is_wrong_kek(e: &SealError) -> bool {
        matches!(e, SealError::WrongKek { .. })
    }
    fn is_bad_nonce(e: &SealError) -> bool {
        matches!(e, SealError::BadNonceLength { .. })
    }

    const PLAIN: &[u8] = b"the key material";

    #[test]
    fn shares_of_a_split_key_have_their_own_dek_and_aad() {
        let ids = Ids::new("l", "k", 1, "r");
        let whole = ids.ctx();
        let one = SealContext {
            share: Some(1),
            ..ids.ctx()
        };
        let two = SealContext {
            share: Some(2),
            ..ids.ctx()
        };
        let dek_ids = [whole.dek_id(), one.dek_id(), two.dek_id()];
        assert_ne!(dek_ids[0], dek_ids[1]);
        assert_ne!(dek_ids[1], dek_ids[2]);
        assert!(one.aad().starts_with(SHARE_AAD_PREFIX));
        assert_eq!(one.aad().last(), Some(&1));
        let kek = Kek::generate();
        let (m, d) = seal_material(&kek, &one, b"share one").unwrap();
        assert_eq!(
            &unseal_material(&kek, &one, &m, &d).unwrap()[..],
            b"share one"
        );
        assert!(unseal_material(&kek, &two, &m, &d).is_err());
        assert!(unseal_material(&kek, &whole, &m, &d).is_err());
    }

    #[test]
    fn round_trip() {
        let kek = Kek::generate();
        let ids = base();
        let (m, d) = seal_material(&kek, &ids.ctx(), PLAIN).unwrap();
        assert_eq!(m.nonce.len(), NONCE_LEN);
        assert_eq!(m.ciphertext.len(), PLAIN.len() + TAG_LEN);
        assert_eq!(d.ciphertext.len(), KEY_LEN + TAG_LEN);
        assert_eq!(m.dek_id, ids.ctx().dek_id());
        assert_eq!(d.dek_id, m.dek_id);
        assert_eq!(d.kek_id, kek.id());
        check("round trip", &kek, &ids, &m, &d, Ok(PLAIN));
        // Fresh DEK and nonces each time.
        let (m2, d2) = seal_material(&kek, &ids.ctx(), PLAIN).unwrap();
        assert_ne!(m.ciphertext, m2.ciphertext);
        assert_ne!(d.ciphertext, d2.ciphertext);
        check("second seal", &kek, &ids, &m2, &d2, Ok(PLAIN));
    }

    #[test]
    fn every_context_field_is_bound() {
        let kek = Kek::generate();
        let ids = base();
        let (m, d) = seal_material(&kek, &ids.ctx(), PLAIN).unwrap();
        let changed = [
            ("ledger", Ids::new("ledger-2", "key_A", 7, "req-0001")),
            ("key", Ids::new("ledger-1", "key_B", 7, "req-0001")),
            ("version", Ids::new("ledger-1", "key_A", 8, "req-0001")),
            ("request", Ids::new("ledger-1", "key_A", 7, "req-0002")),
            // Field boundaries are unambiguous: moving a character between fields changes aad.
            ("boundary", Ids::new("ledger-1k", "ey_A", 7, "req-0001")),
        ];
        for (what, other) in &changed {
            assert_ne!(other.ctx().aad(), ids.ctx().aad(), "{what}");
            check(what, &kek, other, &m, &d, Err(is_dek_mismatch));
            // Rewriting the ids to the other context does not help: the DEK's AAD binds dek_id.
            let mut m2 = m.clone();
            let mut d2 = d.clone();
            m2.dek_id = other.ctx().dek_id();
            d2.dek_id = other.ctx().dek_id();
            check(what, &kek, other, &m2, &d2, Err(is_decrypt));
        }
        // Only one of the two ids disagreeing is caught as well.
        let mut m2 = m.clone();
        m2.dek_id = Bytes32([9; 32]);
        check("material dek_id", &kek, &ids, &m2, &d, Err(is_dek_mismatch));
        let mut d2 = d.clone();
        d2.dek_id = Bytes32([9; 32]);
        check("dek dek_id", &kek, &ids, &m, &d2, Err(is_dek_mismatch));
    }

    #[test]
    fn tampering_fails() {
        let kek = Kek::generate();
        let ids = base();
        let (m, d) = seal_material(&kek, &ids.ctx(), PLAIN).unwrap();
        for i in 0..m.ciphertext.len() {
            let mut t = m.clone();
            t.ciphertext[i] ^= 0x01;
            check("material ciphertext", &kek, &ids, &t, &d, Err(is_decrypt));
        }
        for i in 0..d.ciphertext.len() {
            let mut t = d.clone();
            t.ciphertext[i] ^= 0x80;
            check("dek ciphertext", &kek, &ids, &m, &t, Err(is_decrypt));
        }
        let mut t = m.clone();
        t.nonce[0] ^= 1;
        check("material nonce", &kek, &ids, &t, &d, Err(is_decrypt));
        let mut t = d.clone();
        t.nonce[11] ^= 1;
        check("dek nonce", &kek, &ids, &m, &t, Err(is_decrypt));
        let mut t = m.clone();
        t.ciphertext.truncate(TAG_LEN - 1);
        check("short ciphertext", &kek, &ids, &t, &d, Err(is_decrypt));
        let mut t = m.clone();
        t.nonce.pop();
        check(
            "short material nonce",
            &kek,
            &ids,
            &t,
            &d,
            Err(is_bad_nonce),
        );
        let mut t = d.clone();
        t.nonce.push(0);
        check("long dek nonce", &kek, &ids, &m, &t, Err(is_bad_nonce));
    }

    #[test]
    fn wrong_kek() {
        let kek = Kek::generate();
        let other = Kek::generate();
        let ids = base();
        let (m, d) = seal_material(&kek, &ids.ctx(), PLAIN).unwrap();
        match unseal_material(&other, &ids.ctx(), &m, &d) {
            Err(SealError::WrongKek { expected, found }) => {
                assert_eq!(expected, kek.id());
                assert_eq!(found, other.id());
            }
            r => panic!("expected WrongKek, got {:?}", r.map(|_| ())),
        }
        // Claiming the other KEK's id does not help.
        let mut d2 = d.clone();
        d2.kek_id = other.id();
        check("forged kek id", &other, &ids, &m, &d2, Err(is_decrypt));
    }

    #[test]
    fn rewrap() {
        let old = Kek::generate();
        let new = Kek::generate();
        let ids = base();
        let (m, d) = seal_material(&old, &ids.ctx(), PLAIN).unwrap();
        let d2 = rewrap_dek(&old, &new, &d).unwrap();
        assert_eq!(d2.kek_id, new.id());
        assert_eq!(d2.dek_id, d.dek_id);
        assert_ne!(d2.nonce, d.nonce);
        check("new kek opens", &new, &ids, &m, &d2, Ok(PLAIN));
        check("old kek refused", &old, &ids, &m, &d2, Err(is_wrong_kek));
        let mut forged = d2.clone();
        forged.kek_id = old.id();
        check(
            "old kek, forged id",
            &old,
            &ids,
            &m,
            &forged,
            Err(is_decrypt),
        );
        // The new KEK cannot rewrap the old sealed DEK.
        assert!(matches!(
            rewrap_dek(&new, &old, &d),
            Err(SealError::WrongKek { .. })
        ));
        // The original still opens with the old KEK (rewrap does not touch it).
        check("old still opens old", &old, &ids, &m, &d, Ok(PLAIN));
    }

    #[test]
    fn sealed_dek_bytes() {
        let kek = Kek::generate();
        let ids = base();
        let (_, d) = seal_material(&kek, &ids.ctx(), PLAIN).unwrap();
        let b = d.to_bytes();
        // Array of 4: bin8(32), bin8(32), bin8(12), bin8(48).
        assert_eq!(b[0], 0x94);
        assert_eq!(b.len(), 1 + (2 + 32) * 2 + (2 + 12) + (2 + 48));
        assert_eq!(SealedDek::from_bytes(&b).unwrap(), d);
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(matches!(
            SealedDek::from_bytes(&trailing),
            Err(SealError::Encoding(_))
        ));
        let named = rmp_serde::to_vec_named(&d).unwrap();
        assert!(matches!(
            SealedDek::from_bytes(&named),
            Err(SealError::Encoding(_))
        ));
        assert!(matches!(
            SealedDek::from_bytes(&b[..b.len() - 1]),
            Err(SealError::Encoding(_))
        ));
    }

    #[test]
    fn kek_debug_hides_bytes() {
        let kek = Kek::from_bytes(Zeroizing::new([0xab; 32]));
        let dbg = format!("{kek:?}");
        assert!(!dbg.contains("abab"), "{dbg}");
        assert!(dbg.contains(&kek.id().to_hex()), "{dbg}");
    }

    #[test]
    fn aad_layout() {
        let ids = Ids::new("L", "KK", 0x01020304, "RRR");
        let mut want = b"keyledger/material/v1\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 1, b'L']);
        want.extend_from_slice(&[0, 0, 0, 2, b'K', b'K']);
        want.extend_from_slice(&[1, 2, 3, 4]);
        want.extend_from_slice(&[0, 0, 0, 3, b'R', b'R', b'R']);
        assert_eq!(ids.ctx().aad(), want);
        assert_eq!(
            ids.ctx().dek_id().0,
            blake3::derive_key("keyledger 2026-11 dek id v1", &want)
        );
    }

    // ---- golden vectors -------------------------------------------------------------------

    const VECTOR_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/seal-v1.json");

    fn seq<const N: usize>(start: u8) -> [u8; N] {
        let mut a = [0u8; N];
        for (i, b) in a.iter_mut().enumerate() {
            *b = start.wrapping_add(i as u8);
        }
        a
    }

    fn vector_case(ids: &Ids, plaintext: &[u8], kek_start: u8) -> serde_json::Value {
        let kek_bytes: [u8; 32] = seq(kek_start);
        let kek = Kek::from_bytes(Zeroizing::new(kek_bytes));
        let dek: [u8; 32] = seq(kek_start.wrapping_add(0x20));
        let nonce_m: [u8; 12] = seq(0xa0);
        let nonce_d: [u8; 12] = seq(0xb0);
        let ctx = ids.ctx();
        let (m, d) = seal_material_with(&kek, &ctx, plaintext, &dek, nonce_m, nonce_d).unwrap();
        let opened = unseal_material(&kek, &ctx, &m, &d).unwrap();
        assert_eq!(&opened[..], plaintext);
        serde_json::json!({
            "ledger": ids.ledger.as_str(),
            "key": ids.key.as_str(),
            "version": ids.version,
            "request_id": ids.request.as_str(),
            "plaintext": hex::encode(plaintext),
            "kek": hex::encode(kek_bytes),
            "dek": hex::encode(dek),
            "nonce_material": hex::encode(nonce_m),
            "nonce_dek": hex::encode(nonce_d),
            "kek_id": kek.id().to_hex(),
            "aad": hex::encode(ctx.aad()),
            "dek_id": ctx.dek_id().to_hex(),
            "material_ciphertext": hex::encode(&m.ciphertext),
            "dek_ciphertext": hex::encode(&d.ciphertext),
            "sealed_material_msgpack": hex::encode(rmp_serde::to_vec(&m).unwrap()),
            "sealed_dek_bytes": hex::encode(d.to_bytes()),
        })
    }

    fn vectors() -> serde_json::Value {
        serde_json::json!({
            "description": "keyledger seal v1: AES-256-GCM material under a DEK, DEK under a KEK. \
                See ledger/src/seal.rs. Written once with KEYLEDGER_WRITE_VECTORS=1; never regenerate.",
            "cases": [
                vector_case(&base(), b"keyledger test material v1", 0x00),
                vector_case(&Ids::new("L", "k-2", u32::MAX, "0123456789abcdef"), b"", 0x40),
            ],
        })
    }

    #[test]
    fn golden_vectors() {
        let computed = vectors();
        if std::env::var_os("KEYLEDGER_WRITE_VECTORS").is_some_and(|v| v == "1") {
            let dir = std::path::Path::new(VECTOR_PATH).parent().unwrap();
            std::fs::create_dir_all(dir).unwrap();
            let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
            std::fs::write(VECTOR_PATH, text).unwrap();
            eprintln!("wrote {VECTOR_PATH}");
            return;
        }
        let text = std::fs::read_to_string(VECTOR_PATH).unwrap_or_else(|e| {
            panic!("{VECTOR_PATH}: {e}; create it once with KEYLEDGER_WRITE_VECTORS=1")
        });
        let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            stored, computed,
            "seal encoding changed: the stored vectors are frozen"
        );
        // The stored bytes decode and open on their own.
        for case in stored["cases"].as_array().unwrap() {
            let h = |k: &str| hex::decode(case[k].as_str().unwrap()).unwrap();
            let ids = Ids::new(
                case["ledger"].as_str().unwrap(),
                case["key"].as_str().unwrap(),
                u32::try_from(case["version"].as_u64().unwrap()).unwrap(),
                case["request_id"].as_str().unwrap(),
            );
            let kek = Kek::from_bytes(Zeroizing::new(h("kek").try_into().unwrap()));
            let m: SealedMaterial = rmp_serde::from_slice(&h("sealed_material_msgpack")).unwrap();
            let d = SealedDek::from_bytes(&h("sealed_dek_bytes")).unwrap();
            let p = unseal_material(&kek, &ids.ctx(), &m, &d).unwrap();
            assert_eq!(&p[..], &h("plaintext")[..]);
        }
    }

    // ---- properties -----------------------------------------------------------------------

    fn id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,64}".prop_filter("\"_\" alone is reserved", |s| s != "_")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn prop_round_trip(
            plaintext in proptest::collection::vec(any::<u8>(), 0..1024),
            ledger in id(), key in id(), version in any::<u32>(), request in id(),
        ) {
            let kek = Kek::generate();
            let ids = Ids::new(&ledger, &key, version, &request);
            let (m, d) = seal_material(&kek, &ids.ctx(), &plaintext).unwrap();
            let d = SealedDek::from_bytes(&d.to_bytes()).unwrap();
            let m: SealedMaterial =
                rmp_serde::from_slice(&rmp_serde::to_vec(&m).unwrap()).unwrap();
            let p = unseal_material(&kek, &ids.ctx(), &m, &d).unwrap();
            prop_assert_eq!(&p[..], &plaintext[..]);
        }

        #[test]
        fn prop_aad_injective(
            a in (id(), id(), any::<u32>(), id()),
            b in (id(), id(), any::<u32>(), id()),
        ) {
            let x = Ids::new(&a.0, &a.1, a.2, &a.3);
            let y = Ids::new(&b.0, &b.1, b.2, &b.3);
            prop_assert_eq!(a == b, x.ctx().aad() == y.ctx().aad());
        }
    }
}
