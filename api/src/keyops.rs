//! Key operations that touch material: generate, seal, store the data keys, record the event,
//! open a version, destroy (crypto-shred). The service's request handlers build on these.
//!
//! Order of effects: a version's sealed DEK is stored before the event that names it (an orphan
//! DEK after a crash is harmless ciphertext); destruction appends `KeyDestroyed` first and then
//! erases the DEKs, so no erasure ever happens without its evidence (a crash in between leaves
//! a recorded destruction whose erasure is simply repeated).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ledger::event::{
    Actor, KeyCreated, KeyDestroyed, KeyRotated, KeySpec, KeyType, SplitSpec, VersionMaterial,
};
use ledger::nats::dek::{DekError, DekStore};
use ledger::nats::{AppendError, Appender, LedgerConn, Receipt};
use ledger::seal::{
    seal_material, seal_material_under, unseal_material, Kek, SealContext, SealError,
    SealedMaterial,
};
use ledger::sign::Draft;
use ledger::{Bytes32, KeyId, RequestId};
use rand::RngCore;
use serde_bytes::ByteBuf;
use zeroize::Zeroizing;

/// Failures of key operations: refusals (`Unsupported`), infrastructure, integrity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyOpError {
    #[error("key type {0} cannot be generated; import it instead")]
    Unsupported(KeyType),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Dek(#[from] DekError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    Crypto(crate::crypto::CryptoError),
    #[error("no such share")]
    NoSuchShare,
}

/// A version's freshly generated material: the secret (zeroized on drop) and, for key pairs,
/// the public half.
pub struct Material {
    pub secret: Zeroizing<Vec<u8>>,
    pub public: Option<Vec<u8>>,
}

/// Generates material for `key_type` from the OS random generator.
pub fn generate_material(key_type: KeyType) -> Result<Material, KeyOpError> {
    let random = |n: usize| {
        let mut v = Zeroizing::new(vec![0u8; n]);
        rand::rngs::OsRng.fill_bytes(&mut v);
        v
    };
    Ok(match key_type {
        KeyType::Aes128Gcm => Material {
            secret: random(16),
            public: None,
        },
        KeyType::Aes256Gcm | KeyType::HmacSha256 | KeyType::Secret => Material {
            secret: random(32),
            public: None,
        },
        KeyType::Ed25519 => {
            let sk = SigningKey::generate(&mut rand::rngs::OsRng);
            Material {
                secret: Zeroizing::new(sk.to_bytes().to_vec()),
                public: Some(sk.verifying_key().to_bytes().to_vec()),
            }
        }
        KeyType::X25519 => {
            let sk = x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
            let pk = x25519_dalek::PublicKey::from(&sk);
            Material {
                secret: Zeroizing::new(sk.to_bytes().to_vec()),
                public: Some(pk.to_bytes().to_vec()),
            }
        }
        KeyType::Passphrase => {
            // 24 characters from a 64-symbol alphabet: 144 bits.
            const ALPHABET: &[u8] =
                b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-_.:+=!";
            let raw = random(24);
            Material {
                secret: Zeroizing::new(
                    raw.iter()
                        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
                        .collect(),
                ),
                public: None,
            }
        }
        KeyType::Wrapped => return Err(KeyOpError::Unsupported(key_type)),
    })
}

/// Material-handling key operations over one ledger.
#[derive(Clone)]
pub struct KeyOps {
    conn: LedgerConn,
    appender: Appender,
    kek: Arc<Kek>,
    deks: DekStore,
}

impl KeyOps {
    pub fn new(conn: LedgerConn, appender: Appender, kek: Arc<Kek>) -> KeyOps {
        let deks = DekStore::new(conn.clone());
        KeyOps {
            conn,
            appender,
            kek,
            deks,
        }
    }

    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    /// Seals `secret` as `version` of `key` (storing its DEK) under `request_id`.
    async fn seal_version(
        &self,
        key: &KeyId,
        version: u32,
        request_id: &RequestId,
        material: &Material,
    ) -> Result<VersionMaterial, KeyOpError> {
        let ctx = SealContext {
            ledger: &self.conn.names.ledger,
            key,
            version,
            request_id,
            share: None,
        };
        let sealed = self.seal_idempotent(key, &ctx, &material.secret).await?;
        Ok(VersionMaterial {
            version,
            sealed: vec![sealed],
            public_key: material.public.clone().map(ByteBuf::from),
        })
    }

    /// Seals under a fresh DEK and stores it; if the store already holds a DEK for this
    /// context (a retried request that sealed before), seals under that one instead, so the
    /// event's material always opens with the stored DEK.
    async fn seal_idempotent(
        &self,
        key: &KeyId,
        ctx: &SealContext<'_>,
        plaintext: &[u8],
    ) -> Result<SealedMaterial, KeyOpError> {
        if let Ok(existing) = self.deks.get(key, &ctx.dek_id()).await {
            return Ok(seal_material_under(&self.kek, ctx, plaintext, &existing)?);
        }
        let (sealed, dek) = seal_material(&self.kek, ctx, plaintext)?;
        let (_, duplicate) = self.deks.put(key, &dek).await?;
        if duplicate {
            let existing = self.deks.get(key, &ctx.dek_id()).await?;
            return Ok(seal_material_under(&self.kek, ctx, plaintext, &existing)?);
        }
        Ok(sealed)
    }

    /// Seals `material` as `version` of `key`: whole, or for a split key as `shares` Shamir
    /// shares (any `threshold` recombine it), each under its own DEK. DEKs are stored first.
    pub async fn seal_version_split(
        &self,
        key: &KeyId,
        version: u32,
        request_id: &RequestId,
        material: &Material,
        split: Option<&SplitSpec>,
    ) -> Result<VersionMaterial, KeyOpError> {
        let Some(split) = split else {
            return self.seal_version(key, version, request_id, material).await;
        };
        let shares = crate::crypto::split(&material.secret, split.threshold, split.shares)
            .map_err(KeyOpError::Crypto)?;
        let mut sealed = Vec::with_capacity(shares.len());
        for (i, share) in shares.iter().enumerate() {
            let ctx = SealContext {
                ledger: &self.conn.names.ledger,
                key,
                version,
                request_id,
                // Invariant: at most 255 shares (`split` takes a u8 count).
                share: Some(u8::try_from(i + 1).unwrap_or(u8::MAX)),
            };
            sealed.push(self.seal_idempotent(key, &ctx, share).await?);
        }
        Ok(VersionMaterial {
            version,
            sealed,
            public_key: material.public.clone().map(ByteBuf::from),
        })
    }

    /// Opens one share (1-based) of a split key's version, or the whole material when
    /// `share` is `None`.
    pub async fn open_part(
        &self,
        key: &KeyId,
        version: u32,
        created_by: &RequestId,
        sealed: &[SealedMaterial],
        share: Option<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyOpError> {
        let idx = share.map_or(0, |s| usize::from(s).saturating_sub(1));
        let m = sealed.get(idx).ok_or(KeyOpError::NoSuchShare)?;
        let dek = self.deks.get(key, &m.dek_id).await?;
        let ctx = SealContext {
            ledger: &self.conn.names.ledger,
            key,
            version,
            request_id: created_by,
            share,
        };
        Ok(unseal_material(&self.kek, &ctx, m, &dek)?)
    }

    /// Opens a version's whole material, recombining a split key from its first `threshold`
    /// shares that open.
    pub async fn open_material(
        &self,
        key: &KeyId,
        version: u32,
        created_by: &RequestId,
        sealed: &[SealedMaterial],
        split: Option<&SplitSpec>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyOpError> {
        let Some(split) = split else {
            return self.open_part(key, version, created_by, sealed, None).await;
        };
        let mut shares = Vec::new();
        for i in 1..=split.shares {
            if shares.len() == usize::from(split.threshold) {
                break;
            }
            if let Ok(s) = self
                .open_part(key, version, created_by, sealed, Some(i))
                .await
            {
                shares.push(s);
            }
        }
        crate::crypto::combine(split.threshold, &shares).map_err(KeyOpError::Crypto)
    }

    /// Securely erases data keys (after their `KeyDestroyed` event is stored).
    pub async fn erase_deks(&self, key: &KeyId, dek_ids: &[Bytes32]) -> Result<(), KeyOpError> {
        for dek in dek_ids {
            self.deks.erase(key, dek).await?;
        }
        Ok(())
    }

    pub fn ledger(&self) -> &ledger::LedgerId {
        &self.conn.names.ledger
    }

    /// Creates a key with freshly generated version-1 material.
    pub async fn create(
        &self,
        actor: Actor,
        request_id: RequestId,
        spec: KeySpec,
    ) -> Result<Receipt, KeyOpError> {
        let material = generate_material(spec.key_type)?;
        let vm = self
            .seal_version(&spec.key, 1, &request_id, &material)
            .await?;
        let draft = Draft {
            request_id,
            actor,
            context: None,
            body: KeyCreated { spec, material: vm }.into(),
        };
        Ok(self.appender.append(draft).await?)
    }

    /// Adds `version` with freshly generated material.
    pub async fn rotate(
        &self,
        actor: Actor,
        request_id: RequestId,
        key: &KeyId,
        key_type: KeyType,
        version: u32,
    ) -> Result<Receipt, KeyOpError> {
        let material = generate_material(key_type)?;
        let vm = self
            .seal_version(key, version, &request_id, &material)
            .await?;
        let draft = Draft {
            request_id,
            actor,
            context: None,
            body: KeyRotated {
                key: key.clone(),
                material: vm,
            }
            .into(),
        };
        Ok(self.appender.append(draft).await?)
    }

    /// Opens one version's material. `created_by` is the request id of the event that sealed it.
    pub async fn open(
        &self,
        key: &KeyId,
        version: u32,
        created_by: &RequestId,
        sealed: &SealedMaterial,
    ) -> Result<Zeroizing<Vec<u8>>, KeyOpError> {
        let dek = self.deks.get(key, &sealed.dek_id).await?;
        let ctx = SealContext {
            ledger: &self.conn.names.ledger,
            key,
            version,
            request_id: created_by,
            share: None,
        };
        Ok(unseal_material(&self.kek, &ctx, sealed, &dek)?)
    }

    /// Destroys the given versions: records `KeyDestroyed`, then securely erases their DEKs.
    pub async fn destroy(
        &self,
        actor: Actor,
        request_id: RequestId,
        key: &KeyId,
        versions: &[(u32, Vec<Bytes32>)],
    ) -> Result<Receipt, KeyOpError> {
        let erased_deks: Vec<Bytes32> = versions.iter().flat_map(|(_, d)| d.clone()).collect();
        let draft = Draft {
            request_id,
            actor,
            context: None,
            body: KeyDestroyed {
                key: key.clone(),
                versions: versions.iter().map(|(v, _)| *v).collect(),
                erased_deks: erased_deks.clone(),
            }
            .into(),
        };
        let receipt = self.appender.append(draft).await?;
        for dek in &erased_deks {
            self.deks.erase(key, dek).await?;
        }
        Ok(receipt)
    }
}
