//! Bearer token verification (`projector::token::verify_token`) against one trusted issuer with
//! a fixed seed. The first input byte selects the mode (`data[0] % 3`), the rest is the input:
//!
//! 0. raw: the bytes (lossily as UTF-8) are the token;
//! 1. mutate: edit operations applied to a valid token minted by the trusted issuer (4 bytes
//!    each: operation, position as u16 little-endian, byte);
//! 2. signed: fuzzer-chosen header and payload JSON (split at the first 0xff byte; without one,
//!    the bytes are the payload under the minted header), base64url-encoded and correctly signed
//!    by the trusted issuer's key, or by a stranger's (bit 0 of `data[0] / 3`). This reaches the
//!    claim checks, the tenant check and the clock.
//!
//! Properties: never panics; there is no unsigned path (whenever a token is accepted, or refused
//! for a reason checked only after the signature, its signature verifies with ed25519-dalek's
//! `verify_strict` under the trusted key over `header "." payload`, its `iss` is the trusted
//! issuer and the claims hold for the tenant and the clock); a mutated token is accepted only if
//! it is exactly the minted one; a stranger's signature is never accepted.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ledger::TenantId;
use libfuzzer_sys::fuzz_target;
use projector::token::{
    mint_token, verify_token, Claims, IssuerKey, IssuerStatus, TokenError, CLOCK_SKEW_SECS,
};
use zeroize::Zeroizing;

const ISSUER: &str = "issuer-fuzz";
const REVOKED: &str = "issuer-revoked";
const SEED: [u8; 32] = [0x5e; 32];
const STRANGER_SEED: [u8; 32] = [0xa7; 32];
/// 2027-01-15T08:00:00Z plus a fraction of a second, in milliseconds.
const NOW_MS: u64 = 1_800_000_000_123;
const NOW: u64 = NOW_MS / 1000;
const MINTED_HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT"}"#;

struct Fixture {
    public_key: [u8; 32],
    tenants: Vec<TenantId>,
    signer: SigningKey,
    stranger: SigningKey,
    minted: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let issuer = IssuerKey::from_seed(Zeroizing::new(SEED));
        let signer = SigningKey::from_bytes(&SEED);
        assert_eq!(signer.verifying_key().to_bytes(), issuer.public_key());
        let claims = Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            tenant: TenantId::new("t1").expect("tenant id"),
            roles: vec!["reader".into(), "writer".into()],
            iat: NOW - 600,
            nbf: NOW - 600,
            exp: NOW + 3600,
            jti: "tok-1".into(),
        };
        let minted = mint_token(&issuer, &claims);
        let f = Fixture {
            public_key: issuer.public_key(),
            tenants: vec![
                TenantId::new("t1").expect("tenant id"),
                TenantId::new("t2").expect("tenant id"),
            ],
            signer,
            stranger: SigningKey::from_bytes(&STRANGER_SEED),
            minted,
        };
        assert_eq!(
            verify(&f, &f.minted),
            Ok(claims),
            "the minted token must verify"
        );
        f
    })
}

fn verify(f: &Fixture, token: &str) -> Result<Claims, TokenError> {
    verify_token(token, NOW_MS, |iss| match iss {
        ISSUER => IssuerStatus::Trusted {
            public_key: &f.public_key,
            tenants: &f.tenants,
        },
        REVOKED => IssuerStatus::Revoked,
        _ => IssuerStatus::Unknown,
    })
}

/// Independently of `verify_token`: the token is three parts whose third is an Ed25519
/// signature by the trusted key over the first two, exactly as they appear.
fn signed_by_trusted_key(f: &Fixture, token: &str) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(format!("{} parts", parts.len()));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|e| format!("signature base64: {e}"))?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|v: Vec<u8>| format!("signature of {} bytes", v.len()))?;
    let key = VerifyingKey::from_bytes(&f.public_key).map_err(|e| format!("key: {e}"))?;
    let input = &token[..parts[0].len() + 1 + parts[1].len()];
    key.verify_strict(input.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|e| format!("verify_strict: {e}"))
}

fn check(f: &Fixture, token: &str) -> Result<Claims, TokenError> {
    let got = verify(f, token);
    let vouched = match &got {
        Ok(_)
        | Err(TokenError::IssuerNotForTenant { .. })
        | Err(TokenError::NotYetValid { .. })
        | Err(TokenError::Expired { .. }) => true,
        Err(_) => false,
    };
    if vouched {
        if let Err(why) = signed_by_trusted_key(f, token) {
            panic!("unsigned path: {got:?} for {token:?}, whose signature fails: {why}");
        }
    }
    if let Ok(c) = &got {
        assert_eq!(c.iss, ISSUER, "accepted for another issuer: {token:?}");
        assert!(
            f.tenants.contains(&c.tenant),
            "accepted for tenant {}: {token:?}",
            c.tenant
        );
        assert!(
            c.nbf.max(c.iat).saturating_sub(CLOCK_SKEW_SECS) <= NOW
                && c.exp.saturating_add(CLOCK_SKEW_SECS) > NOW
                && c.exp >= c.nbf,
            "accepted outside its validity: {c:?}"
        );
        for (claim, v) in [("iss", &c.iss), ("sub", &c.sub), ("jti", &c.jti)] {
            assert!(
                !v.is_empty() && v.len() <= projector::token::MAX_NAME_LEN,
                "accepted a bad {claim}: {c:?}"
            );
        }
    }
    got
}

/// Applies 4-byte edit operations to `token`.
fn mutate(token: &str, ops: &[u8]) -> Vec<u8> {
    let mut t = token.as_bytes().to_vec();
    for op in ops.chunks_exact(4) {
        let pos = u16::from_le_bytes([op[1], op[2]]) as usize;
        let b = op[3];
        match op[0] % 5 {
            0 => {
                if !t.is_empty() {
                    let i = pos % t.len();
                    t[i] = b;
                }
            }
            1 => {
                let i = pos % (t.len() + 1);
                t.insert(i, b);
            }
            2 => {
                if !t.is_empty() {
                    let i = pos % t.len();
                    t.remove(i);
                }
            }
            3 => {
                if !t.is_empty() {
                    let i = pos % t.len();
                    t[i] ^= 1 << (b % 8);
                }
            }
            _ => t.truncate(pos % (t.len() + 1)),
        }
    }
    t
}

fn sign(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let sig = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(sig.to_bytes(), &mut token);
    token
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    match selector % 3 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            let _ = check(f, &token);
        }
        1 => {
            let bytes = mutate(&f.minted, rest);
            let token = String::from_utf8_lossy(&bytes);
            if check(f, &token).is_ok() {
                assert_eq!(
                    token, f.minted,
                    "a token other than the minted one verified"
                );
            }
        }
        _ => {
            let (header, payload) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (MINTED_HEADER.as_bytes(), rest),
            };
            let by_stranger = (selector / 3) & 1 == 1;
            let key = if by_stranger { &f.stranger } else { &f.signer };
            let token = sign(key, header, payload);
            let got = check(f, &token);
            if by_stranger {
                assert!(
                    !matches!(
                        got,
                        Ok(_)
                            | Err(TokenError::IssuerNotForTenant { .. })
                            | Err(TokenError::NotYetValid { .. })
                            | Err(TokenError::Expired { .. })
                    ),
                    "a stranger's signature was vouched for: {got:?} {token:?}"
                );
            }
        }
    }
});
