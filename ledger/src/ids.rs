//! Validated identifiers. Every id that can appear in a NATS subject is restricted to
//! `[A-Za-z0-9_-]`, 1..=64 characters, so it can never inject a `.`, `*`, `>` or whitespace.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: must be 1 to 64 characters of [A-Za-z0-9_-], not \"_\" alone")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

fn valid_token(s: &str) -> bool {
    // "_" alone is reserved: it stands for "none" in subjects.
    !s.is_empty()
        && s != "_"
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

macro_rules! token_id {
    ($(#[$m:meta])* $name:ident, $kind:literal) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                if valid_token(&s) {
                    Ok($name(s))
                } else {
                    Err(InvalidId { kind: $kind, value: s })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                $name::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

token_id!(
    /// Names one ledger (one stream, one chain). Part of every signed event and every
    /// sealing context, so an event or ciphertext from one ledger is refused by another.
    LedgerId,
    "ledger id"
);
token_id!(
    /// A key's id, unique within its ledger.
    KeyId,
    "key id"
);
token_id!(
    /// A tenant; tenants are isolated from one another.
    TenantId,
    "tenant id"
);
token_id!(
    /// The caller's request id: also the `Nats-Msg-Id` of the event that records the request,
    /// so a retried request can never be appended twice.
    RequestId,
    "request id"
);

impl RequestId {
    /// A fresh random request id (128 bits, hex).
    pub fn random() -> RequestId {
        let b: [u8; 16] = rand::random();
        RequestId(hex::encode(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules() {
        for ok in ["a", "key-1", "K_2", &"x".repeat(64)] {
            assert!(KeyId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "_", "a.b", "a*", "a>", "a b", "é", &"x".repeat(65)] {
            assert!(KeyId::new(bad).is_err(), "{bad}");
        }
    }
}
