//! Platform quotes: what a compute host presents to prove which platform it is and what it runs.
//! Plain functions, no IO.
//!
//! A platform holds an Ed25519 attestation key, enrolled by a `PlatformEnrolled` event together
//! with the measurement digests it may report. To be trusted for one request it signs a fresh
//! nonce handed out by the service, its current measurement digest and an X25519 transport public
//! key (material released to it is sealed to that key, see [`crate::transport`]).
//!
//! Frozen encoding:
//! ```text
//! message = "keyledger/quote/v1\n"
//!           || u32be(len(platform)) || platform
//!           || nonce[32] || measurement[32] || transport_key[32]
//! signature = Ed25519(attestation_key, message)            (checked with verify_strict)
//! digest    = BLAKE3-derive_key("keyledger 2026-11 quote v1", message || signature)
//! ```
//! The digest is what an operation's event carries as its `context`; the quote itself is recorded
//! once in a `PlatformAttested` event, so an auditor can re-check the signature.

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::bytes32::Bytes32;

/// Prefix of every quote signature's message.
pub const QUOTE_SIG_DOMAIN: &[u8] = b"keyledger/quote/v1\n";
/// BLAKE3 `derive_key` context of quote digests.
pub const QUOTE_DIGEST_CONTEXT: &str = "keyledger 2026-11 quote v1";
/// Longest platform id accepted.
pub const MAX_PLATFORM_LEN: usize = 128;

/// A signed platform quote. The encoding is frozen (it is recorded in `PlatformAttested`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub platform: String,
    pub nonce: Bytes32,
    pub measurement: Bytes32,
    pub transport_key: Bytes32,
    /// 64-byte Ed25519 signature over [`Quote::message`].
    pub signature: ByteBuf,
}

/// Why a quote's signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuoteSignatureError {
    #[error("quote is malformed: {0}")]
    Malformed(&'static str),
    #[error("quote signature does not verify under the platform's attestation key")]
    BadSignature,
}

impl Quote {
    /// The signed message (see the module doc).
    pub fn message(
        platform: &str,
        nonce: &Bytes32,
        measurement: &Bytes32,
        transport_key: &Bytes32,
    ) -> Vec<u8> {
        let p = platform.as_bytes();
        let mut m = Vec::with_capacity(QUOTE_SIG_DOMAIN.len() + 4 + p.len() + 96);
        m.extend_from_slice(QUOTE_SIG_DOMAIN);
        // Invariant: platform ids are checked against MAX_PLATFORM_LEN before use; saturating
        // keeps this total for any input anyway.
        m.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.extend_from_slice(p);
        m.extend_from_slice(&nonce.0);
        m.extend_from_slice(&measurement.0);
        m.extend_from_slice(&transport_key.0);
        m
    }

    /// Signs a quote (what a platform does; used by tests, tools and the example client).
    pub fn sign(
        attestation_key: &SigningKey,
        platform: &str,
        nonce: Bytes32,
        measurement: Bytes32,
        transport_key: Bytes32,
    ) -> Quote {
        use ed25519_dalek::Signer;
        let sig = attestation_key.sign(&Quote::message(
            platform,
            &nonce,
            &measurement,
            &transport_key,
        ));
        Quote {
            platform: platform.to_owned(),
            nonce,
            measurement,
            transport_key,
            signature: ByteBuf::from(sig.to_bytes().to_vec()),
        }
    }

    /// Checks the shape and the signature under `attestation_key`.
    pub fn check_signature(&self, attestation_key: &Bytes32) -> Result<(), QuoteSignatureError> {
        if self.platform.is_empty() || self.platform.len() > MAX_PLATFORM_LEN {
            return Err(QuoteSignatureError::Malformed("platform id length"));
        }
        let sig: [u8; 64] = self.signature[..]
            .try_into()
            .map_err(|_| QuoteSignatureError::Malformed("signature is not 64 bytes"))?;
        let key = VerifyingKey::from_bytes(&attestation_key.0)
            .map_err(|_| QuoteSignatureError::BadSignature)?;
        if key.is_weak() {
            return Err(QuoteSignatureError::BadSignature);
        }
        key.verify_strict(
            &Quote::message(
                &self.platform,
                &self.nonce,
                &self.measurement,
                &self.transport_key,
            ),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| QuoteSignatureError::BadSignature)
    }

    /// The quote's digest (see the module doc): what operation events carry as `context`.
    pub fn digest(&self) -> Bytes32 {
        let mut h = blake3::Hasher::new_derive_key(QUOTE_DIGEST_CONTEXT);
        h.update(&Quote::message(
            &self.platform,
            &self.nonce,
            &self.measurement,
            &self.transport_key,
        ));
        h.update(&self.signature);
        Bytes32(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn good() -> (SigningKey, Quote) {
        let k = key(7);
        let q = Quote::sign(
            &k,
            "host-1",
            Bytes32([1; 32]),
            Bytes32([2; 32]),
            Bytes32([3; 32]),
        );
        (k, q)
    }

    fn pk(k: &SigningKey) -> Bytes32 {
        Bytes32(k.verifying_key().to_bytes())
    }

    #[test]
    fn signed_quote_checks() {
        let (k, q) = good();
        assert_eq!(q.check_signature(&pk(&k)), Ok(()));
    }

    #[test]
    fn every_field_is_covered_by_the_signature() {
        let (k, q) = good();
        type Mutation = Box<dyn Fn(&mut Quote)>;
        let mutations: Vec<(&str, Mutation)> = vec![
            ("platform", Box::new(|q| q.platform.push('x'))),
            ("nonce", Box::new(|q| q.nonce.0[31] ^= 1)),
            ("measurement", Box::new(|q| q.measurement.0[0] ^= 1)),
            ("transport key", Box::new(|q| q.transport_key.0[5] ^= 0x80)),
            ("signature", Box::new(|q| q.signature[10] ^= 1)),
        ];
        for (what, m) in mutations {
            let mut bad = q.clone();
            m(&mut bad);
            assert_eq!(
                bad.check_signature(&pk(&k)),
                Err(QuoteSignatureError::BadSignature),
                "{what}"
            );
            assert_ne!(bad.digest(), q.digest(), "{what} changes the digest");
        }
        assert_eq!(
            q.check_signature(&pk(&key(8))),
            Err(QuoteSignatureError::BadSignature),
            "other key"
        );
    }

    #[test]
    fn malformed_quotes_are_named() {
        let (k, mut q) = good();
        q.signature.pop();
        assert!(matches!(
            q.check_signature(&pk(&k)),
            Err(QuoteSignatureError::Malformed(_))
        ));
        let (k, mut q) = good();
        q.platform = String::new();
        assert!(matches!(
            q.check_signature(&pk(&k)),
            Err(QuoteSignatureError::Malformed(_))
        ));
    }

    #[test]
    fn length_prefix_separates_platform_from_nonce() {
        let a = Quote::message(
            "ab",
            &Bytes32([0; 32]),
            &Bytes32([0; 32]),
            &Bytes32([0; 32]),
        );
        let b = Quote::message("a", &Bytes32([0; 32]), &Bytes32([0; 32]), &Bytes32([0; 32]));
        assert_ne!(a[..b.len()], b[..]);
    }
}
