//! The cryptography the service performs with key material: data encryption, signatures, MACs,
//! split-key shares and checks of imported material. Plain functions, no IO.
//!
//! Data ciphertexts (frozen):
//! ```text
//! ciphertext = nonce[12] || AES-GCM(key version's material, nonce, plaintext, aad')
//! aad'       = "keyledger/data/v1\0" || u32be(len(key id)) || key id || u32be(version) || aad
//! ```
//! so a ciphertext cannot be passed off as another key's or another version's. On the wire it is
//! `kl:v<version>:<base64(ciphertext)>`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use ledger::event::KeyType;

use crate::keyops::Material;

const DATA_AAD_PREFIX: &[u8] = b"keyledger/data/v1\0";
const NONCE_LEN: usize = 12;

/// Why a cryptographic operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("ciphertext or associated data does not authenticate")]
    Decrypt,
    #[error("material does not fit key type {key_type}: {reason}")]
    BadMaterial {
        key_type: KeyType,
        reason: &'static str,
    },
    #[error("key type {0} does not support this operation")]
    WrongType(KeyType),
    #[error("shares do not recombine: {0}")]
    Shares(&'static str),
}

fn data_aad(key: &str, version: u32, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_AAD_PREFIX.len() + 8 + key.len() + aad.len());
    out.extend_from_slice(DATA_AAD_PREFIX);
    // Invariant: key ids are at most 64 bytes.
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(aad);
    out
}

/// Encrypts with an AES-GCM key version.
pub fn encrypt(
    key_type: KeyType,
    material: &[u8],
    key: &str,
    version: u32,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let aad = data_aad(key, version, aad);
    let payload = Payload {
        msg: plaintext,
        aad: &aad,
    };
    let n = Nonce::from_slice(&nonce);
    let bad = |reason| CryptoError::BadMaterial { key_type, reason };
    let ct = match key_type {
        KeyType::Aes128Gcm => Aes128Gcm::new_from_slice(material)
            .map_err(|_| bad("length"))?
            .encrypt(n, payload),
        KeyType::Aes256Gcm => Aes256Gcm::new_from_slice(material)
            .map_err(|_| bad("length"))?
            .encrypt(n, payload),
        other => return Err(CryptoError::WrongType(other)),
    }
    .map_err(|_| bad("encryption failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts what [`encrypt`] made with the same key, version and associated data.
pub fn decrypt(
    key_type: KeyType,
    material: &[u8],
    key: &str,
    version: u32,
    ciphertext: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if ciphertext.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ct) = ciphertext.split_at(NONCE_LEN);
    let aad = data_aad(key, version, aad);
    let payload = Payload { msg: ct, aad: &aad };
    let n = Nonce::from_slice(nonce);
    let bad = |reason| CryptoError::BadMaterial { key_type, reason };
    let pt = match key_type {
        KeyType::Aes128Gcm => Aes128Gcm::new_from_slice(material)
            .map_err(|_| bad("length"))?
            .decrypt(n, payload),
        KeyType::Aes256Gcm => Aes256Gcm::new_from_slice(material)
            .map_err(|_| bad("length"))?
            .decrypt(n, payload),
        other => return Err(CryptoError::WrongType(other)),
    }
    .map_err(|_| CryptoError::Decrypt)?;
    Ok(Zeroizing::new(pt))
}

fn ed25519(material: &[u8]) -> Result<SigningKey, CryptoError> {
    let seed: [u8; 32] = material.try_into().map_err(|_| CryptoError::BadMaterial {
        key_type: KeyType::Ed25519,
        reason: "seed must be 32 bytes",
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Ed25519 signature with a version's seed.
pub fn sign(material: &[u8], message: &[u8]) -> Result<[u8; 64], CryptoError> {
    Ok(ed25519(material)?.sign(message).to_bytes())
}

/// Checks an Ed25519 signature against a version's public key (`verify_strict`).
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(pk), Ok(sig)) = (
        <[u8; 32]>::try_from(public_key),
        <[u8; 64]>::try_from(signature),
    ) else {
        return false;
    };
    VerifyingKey::from_bytes(&pk).is_ok_and(|vk| {
        vk.verify_strict(message, &Signature::from_bytes(&sig))
            .is_ok()
    })
}

/// HMAC-SHA-256.
pub fn mac(material: &[u8], message: &[u8]) -> Vec<u8> {
    // Invariant: HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(material).expect("HMAC takes any key");
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

/// Checks an HMAC-SHA-256 tag in constant time.
pub fn verify_mac(material: &[u8], message: &[u8], tag: &[u8]) -> bool {
    // Invariant: HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(material).expect("HMAC takes any key");
    m.update(message);
    m.verify_slice(tag).is_ok()
}

/// Splits material into `count` Shamir shares over GF(256) (`blahaj`), any `threshold` of
/// which recombine it. Each share is `x || y[len]`.
pub fn split(
    material: &[u8],
    threshold: u8,
    count: u8,
) -> Result<Vec<Zeroizing<Vec<u8>>>, CryptoError> {
    if threshold < 2 || count < threshold {
        return Err(CryptoError::Shares("need 2 <= threshold <= shares"));
    }
    let shares: Vec<Zeroizing<Vec<u8>>> = blahaj::Sharks(threshold)
        .dealer(material)
        .take(usize::from(count))
        .map(|s| Zeroizing::new(Vec::from(&s)))
        .collect();
    let back = combine(threshold, &shares[..usize::from(threshold)])?;
    if shares.len() != usize::from(count) || back.as_slice() != material {
        return Err(CryptoError::Shares("split did not recombine"));
    }
    Ok(shares)
}

/// Recombines material from at least `threshold` shares made by [`split`].
pub fn combine(
    threshold: u8,
    shares: &[Zeroizing<Vec<u8>>],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let points: Vec<blahaj::Share> = shares
        .iter()
        .map(|s| blahaj::Share::try_from(&s[..]).map_err(|_| CryptoError::Shares("malformed")))
        .collect::<Result<_, _>>()?;
    blahaj::Sharks(threshold)
        .recover(&points)
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Shares("not enough shares"))
}

/// Checks imported material against its type and derives the public half of key pairs.
pub fn check_import(key_type: KeyType, material: &[u8]) -> Result<Material, CryptoError> {
    let bad = |reason| CryptoError::BadMaterial { key_type, reason };
    let secret = Zeroizing::new(material.to_vec());
    let public = match key_type {
        KeyType::Aes128Gcm if material.len() != 16 => return Err(bad("must be 16 bytes")),
        KeyType::Aes256Gcm if material.len() != 32 => return Err(bad("must be 32 bytes")),
        KeyType::HmacSha256 if !(16..=64).contains(&material.len()) => {
            return Err(bad("must be 16 to 64 bytes"))
        }
        KeyType::Ed25519 => Some(ed25519(material)?.verifying_key().to_bytes().to_vec()),
        KeyType::X25519 => {
            let seed: [u8; 32] = material.try_into().map_err(|_| bad("must be 32 bytes"))?;
            let sk = x25519_dalek::StaticSecret::from(seed);
            Some(x25519_dalek::PublicKey::from(&sk).to_bytes().to_vec())
        }
        KeyType::Passphrase if std::str::from_utf8(material).is_err() => {
            return Err(bad("must be UTF-8"))
        }
        _ if material.is_empty() || material.len() > 8192 => {
            return Err(bad("must be 1 to 8192 bytes"))
        }
        _ => None,
    };
    Ok(Material { secret, public })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertexts_are_bound_to_key_version_and_aad() {
        let m = [7u8; 32];
        let ct = encrypt(KeyType::Aes256Gcm, &m, "k1", 2, b"hello", b"ctx").unwrap();
        let ok = decrypt(KeyType::Aes256Gcm, &m, "k1", 2, &ct, b"ctx").unwrap();
        assert_eq!(&ok[..], b"hello");
        for (key, v, aad) in [("k2", 2, &b"ctx"[..]), ("k1", 3, b"ctx"), ("k1", 2, b"")] {
            assert_eq!(
                decrypt(KeyType::Aes256Gcm, &m, key, v, &ct, aad),
                Err(CryptoError::Decrypt)
            );
        }
        let mut bad = ct.clone();
        bad[20] ^= 1;
        assert_eq!(
            decrypt(KeyType::Aes256Gcm, &m, "k1", 2, &bad, b"ctx"),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(
            decrypt(KeyType::Aes256Gcm, &m, "k1", 2, &ct[..10], b"ctx"),
            Err(CryptoError::Decrypt)
        );
        let ct128 = encrypt(KeyType::Aes128Gcm, &m[..16], "k", 1, b"x", b"").unwrap();
        assert_eq!(
            &decrypt(KeyType::Aes128Gcm, &m[..16], "k", 1, &ct128, b"").unwrap()[..],
            b"x"
        );
    }

    #[test]
    fn signatures_and_macs() {
        let seed = [3u8; 32];
        let public = check_import(KeyType::Ed25519, &seed)
            .unwrap()
            .public
            .unwrap();
        let sig = sign(&seed, b"msg").unwrap();
        assert!(verify(&public, b"msg", &sig));
        assert!(!verify(&public, b"msh", &sig));
        assert!(!verify(&public, b"msg", &sig[..63]));
        let tag = mac(b"0123456789abcdef", b"m");
        assert!(verify_mac(b"0123456789abcdef", b"m", &tag));
        assert!(!verify_mac(b"0123456789abcdef", b"n", &tag));
        assert!(!verify_mac(b"0123456789abcdef", b"m", &tag[..31]));
    }

    #[test]
    fn shares_recombine_from_any_threshold() {
        let secret = [9u8; 32];
        let shares = split(&secret, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        for pick in [[0, 1, 2], [1, 3, 4], [0, 2, 4]] {
            let chosen: Vec<_> = pick.iter().map(|&i| shares[i].clone()).collect();
            assert_eq!(&combine(3, &chosen).unwrap()[..], &secret);
        }
        let two: Vec<_> = shares[..2].to_vec();
        assert!(combine(3, &two).is_err() || combine(3, &two).unwrap()[..] != secret);
        assert!(split(&secret, 1, 3).is_err());
        assert!(split(&secret, 4, 3).is_err());
    }

    #[test]
    fn imports_are_checked() {
        assert!(check_import(KeyType::Aes256Gcm, &[0; 31]).is_err());
        assert!(check_import(KeyType::Aes128Gcm, &[0; 16]).is_ok());
        assert!(check_import(KeyType::HmacSha256, &[0; 8]).is_err());
        assert!(check_import(KeyType::Passphrase, b"\xff\xfe").is_err());
        assert!(check_import(KeyType::Secret, b"").is_err());
        assert!(check_import(KeyType::X25519, &[1; 32])
            .unwrap()
            .public
            .is_some());
    }
}
