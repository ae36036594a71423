//! Platform attestation: fresh nonces handed out by the service and the verification of the quote
//! a platform answers with.
//!
//! Nonces are stateless for the service and unforgeable for callers, so any replica can check a
//! nonce another replica issued:
//! ```text
//! nonce = u64be(expiry_ms) || random[8] || BLAKE3-keyed(nonce_key, expiry_ms || random)[..16]
//! nonce_key = BLAKE3-derive_key("keyledger 2026-11 quote nonce v1", KEK)
//! ```
//! A nonce is spent by the `PlatformAttested` event that records the quote using it; the event's
//! request id is derived from the nonce ([`attestation_request_id`]), so two replicas racing to
//! spend one nonce collide on JetStream's duplicate detection and only one succeeds.

use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use ledger::quote::{Quote, QuoteSignatureError, MAX_PLATFORM_LEN};
use ledger::seal::Kek;
use ledger::{Bytes32, RequestId};

use crate::trust::Trust;

/// How long a nonce stays valid after it is issued.
pub const NONCE_TTL_MS: u64 = 120_000;
const NONCE_KEY_CONTEXT: &str = "keyledger 2026-11 quote nonce v1";

/// Issues and checks nonces. Every replica derives the same key from the KEK.
pub struct NonceIssuer {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceIssuer(..)")
    }
}

impl NonceIssuer {
    pub fn from_kek(kek: &Kek) -> NonceIssuer {
        NonceIssuer {
            key: Zeroizing::new(blake3::derive_key(
                NONCE_KEY_CONTEXT,
                &kek.expose_bytes()[..],
            )),
        }
    }

    fn tag(&self, head: &[u8]) -> [u8; 16] {
        let full = blake3::keyed_hash(&self.key, head);
        let mut t = [0u8; 16];
        t.copy_from_slice(&full.as_bytes()[..16]);
        t
    }

    /// A fresh nonce valid until `now_ms + NONCE_TTL_MS`.
    pub fn issue(&self, now_ms: u64) -> Bytes32 {
        let mut n = [0u8; 32];
        n[..8].copy_from_slice(&now_ms.saturating_add(NONCE_TTL_MS).to_be_bytes());
        rand::rngs::OsRng.fill_bytes(&mut n[8..16]);
        let tag = self.tag(&n[..16]);
        n[16..].copy_from_slice(&tag);
        Bytes32(n)
    }

    /// Checks that `nonce` was issued by a replica of this ledger and has not expired.
    pub fn check(&self, nonce: &Bytes32, now_ms: u64) -> Result<(), AttestError> {
        let tag = self.tag(&nonce.0[..16]);
        if !bool::from(tag.ct_eq(&nonce.0[16..])) {
            return Err(AttestError::ForeignNonce);
        }
        let expiry = nonce_expiry_ms(nonce);
        if now_ms > expiry {
            return Err(AttestError::Stale {
                expired_ms: expiry,
                now_ms,
            });
        }
        Ok(())
    }
}

/// When a nonce expires (its first eight bytes).
pub fn nonce_expiry_ms(nonce: &Bytes32) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&nonce.0[..8]);
    u64::from_be_bytes(b)
}

/// Request id of the `PlatformAttested` event that spends `nonce`: `q-` and 48 hex digits.
pub fn attestation_request_id(nonce: &Bytes32) -> RequestId {
    // Invariant: "q-" + 48 hex digits is 50 characters of the allowed alphabet.
    RequestId::new(format!("q-{}", hex::encode(&nonce.0[..24]))).expect("hex request ids are valid")
}

/// A platform whose quote verified for this request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedPlatform {
    pub platform: String,
    pub group: String,
    pub measurement: Bytes32,
    pub transport_key: Bytes32,
    pub quote: Quote,
    /// `quote.digest()`: the `context` of the request's events.
    pub digest: Bytes32,
}

/// Why a quote is refused. Each has a stable code ([`AttestError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("quote is malformed: {0}")]
    Malformed(&'static str),
    #[error("the quote's nonce was not issued by this service")]
    ForeignNonce,
    #[error("the quote's nonce expired at {expired_ms} (now {now_ms}); ask for a fresh nonce")]
    Stale { expired_ms: u64, now_ms: u64 },
    #[error("the quote's nonce was already used (event seq {seq})")]
    Replayed { seq: u64 },
    #[error("platform {0:?} is not enrolled")]
    UnknownPlatform(String),
    #[error("platform {0:?} is revoked")]
    RevokedPlatform(String),
    #[error("the quote's signature does not verify under the platform's attestation key")]
    BadSignature,
    #[error("platform {platform:?} reported a measurement it is not enrolled with")]
    UnexpectedMeasurement { platform: String },
}

impl AttestError {
    pub fn code(&self) -> &'static str {
        match self {
            AttestError::Malformed(_) => "quote-malformed",
            AttestError::ForeignNonce => "quote-nonce-unknown",
            AttestError::Stale { .. } => "quote-stale",
            AttestError::Replayed { .. } => "quote-replayed",
            AttestError::UnknownPlatform(_) => "platform-unknown",
            AttestError::RevokedPlatform(_) => "platform-revoked",
            AttestError::BadSignature => "quote-signature",
            AttestError::UnexpectedMeasurement { .. } => "quote-measurement",
        }
    }
}

/// Verifies a quote against the trust view. Order: shape, our nonce, freshness, not spent,
/// platform enrolled and not revoked, signature, measurement among those enrolled.
pub fn verify_quote(
    quote: &Quote,
    nonces: &NonceIssuer,
    trust: &Trust,
    now_ms: u64,
) -> Result<AttestedPlatform, AttestError> {
    if quote.platform.is_empty() || quote.platform.len() > MAX_PLATFORM_LEN {
        return Err(AttestError::Malformed("platform id length"));
    }
    if quote.signature.len() != 64 {
        return Err(AttestError::Malformed("signature is not 64 bytes"));
    }
    nonces.check(&quote.nonce, now_ms)?;
    if let Some(seq) = trust.nonce_spent(&quote.nonce) {
        return Err(AttestError::Replayed { seq });
    }
    let p = trust
        .platform(&quote.platform)
        .ok_or_else(|| AttestError::UnknownPlatform(quote.platform.clone()))?;
    if p.revoked.is_some() {
        return Err(AttestError::RevokedPlatform(quote.platform.clone()));
    }
    quote
        .check_signature(&p.attestation_key)
        .map_err(|e| match e {
            QuoteSignatureError::Malformed(m) => AttestError::Malformed(m),
            _ => AttestError::BadSignature,
        })?;
    if !p.measurements.contains(&quote.measurement) {
        return Err(AttestError::UnexpectedMeasurement {
            platform: quote.platform.clone(),
        });
    }
    Ok(AttestedPlatform {
        platform: p.platform.clone(),
        group: p.group.clone(),
        measurement: quote.measurement,
        transport_key: quote.transport_key,
        quote: quote.clone(),
        digest: quote.digest(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> NonceIssuer {
        NonceIssuer::from_kek(&Kek::from_bytes(Zeroizing::new([9; 32])))
    }

    #[test]
    fn issued_nonces_check_until_they_expire() {
        let n = issuer().issue(1_000);
        assert_eq!(issuer().check(&n, 1_000), Ok(()), "another replica");
        assert_eq!(issuer().check(&n, 1_000 + NONCE_TTL_MS), Ok(()));
        assert!(matches!(
            issuer().check(&n, 1_001 + NONCE_TTL_MS),
            Err(AttestError::Stale { .. })
        ));
        assert_ne!(issuer().issue(1_000), n, "random part");
    }

    #[test]
    fn forged_or_altered_nonces_are_refused() {
        let n = issuer().issue(1_000);
        for i in 0..32 {
            let mut bad = n;
            bad.0[i] ^= 1;
            assert_eq!(
                issuer().check(&bad, 1_000),
                Err(AttestError::ForeignNonce),
                "byte {i}"
            );
        }
        let other = NonceIssuer::from_kek(&Kek::from_bytes(Zeroizing::new([8; 32])));
        assert_eq!(other.check(&n, 1_000), Err(AttestError::ForeignNonce));
    }

    #[test]
    fn attestation_request_ids_are_valid_and_distinct() {
        let a = issuer().issue(5);
        let b = issuer().issue(5);
        assert_ne!(attestation_request_id(&a), attestation_request_id(&b));
        assert_eq!(attestation_request_id(&a).as_str().len(), 50);
    }
}
