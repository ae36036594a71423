//! # projector
//!
//! Folds verified ledger events into views. It takes `ledger::VerifiedEvent` only (never a raw
//! `Event`), so nothing unverified can reach a view, and it never publishes anything.
//!
//! - [`KeyStates`]: the current state of every key (versions with their sealed material,
//!   lifecycle state, version bounds, grants, scheduled destruction).
//! - [`trust::Trust`]: trusted token issuers, enrolled platforms, spent quote nonces.
//!
//! Folding is deterministic and idempotent by stream sequence, so a view rebuilt from sequence 1
//! equals one kept live.
//!
//! Identity and policy are decided here too, from those views, with no IO: [`token`] (bearer
//! JWTs), [`attest`] (nonces and platform quotes), [`policy`] (the one decision per request) and
//! [`refusals`] (recording refusals without letting a flood exhaust the ledger). Audit views and
//! snapshots come with the audit issue.
#![forbid(unsafe_code)]

pub mod attest;
pub mod audit;
pub mod live;
pub mod policy;
pub mod refusals;
pub mod report;
pub mod token;
pub mod trust;

use std::collections::BTreeMap;

use ledger::event::{Grant, KeySpec, KeyState, SealedMaterial, VersionMaterial};
use ledger::{EventBody, KeyId, RequestId, TenantId, VerifiedEvent};

/// One key version as the ledger knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionView {
    pub version: u32,
    /// Stream sequence of the event that created the version.
    pub created_seq: u64,
    pub created_ms: u64,
    /// Request id of that event: part of the material's sealing context.
    pub created_by: RequestId,
    pub sealed: Vec<SealedMaterial>,
    pub public_key: Option<Vec<u8>>,
    /// The version's data keys were erased.
    pub destroyed: bool,
}

/// The current state of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyView {
    /// What the key is, as created or imported (its `state` field is the *initial* state).
    pub spec: KeySpec,
    pub state: KeyState,
    pub imported: bool,
    /// Imported keys: the foreign key that wraps the material, if it arrived wrapped.
    pub wrapped_by: Option<String>,
    pub versions: BTreeMap<u32, VersionView>,
    pub min_encrypt_version: u32,
    pub min_decrypt_version: u32,
    pub grants: BTreeMap<String, Grant>,
    pub destroy_after_ms: Option<u64>,
    pub compromised_at_ms: Option<u64>,
    pub created_seq: u64,
    pub updated_seq: u64,
}

impl KeyView {
    /// The newest version (the one that encrypts).
    pub fn latest_version(&self) -> Option<&VersionView> {
        self.versions.values().next_back()
    }
}

/// An event that could not be applied to the view: a fact the writers should never have
/// recorded (for example a rotation of an unknown key). Kept, by sequence, never dropped silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub seq: u64,
    pub event_type: &'static str,
    pub problem: String,
}

/// The key-state view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyStates {
    keys: BTreeMap<KeyId, KeyView>,
    last_seq: u64,
    anomalies: Vec<Anomaly>,
}

impl KeyStates {
    pub fn new() -> KeyStates {
        KeyStates::default()
    }

    /// Last stream sequence folded.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn get(&self, key: &KeyId) -> Option<&KeyView> {
        self.keys.get(key)
    }

    /// Keys of one tenant, in key-id order.
    pub fn of_tenant<'a>(&'a self, tenant: &'a TenantId) -> impl Iterator<Item = &'a KeyView> {
        self.keys.values().filter(move |k| &k.spec.tenant == tenant)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }

    /// Folds one verified event. Events at or below the last folded sequence are ignored
    /// (replay is idempotent).
    pub fn apply(&mut self, v: &VerifiedEvent) {
        if v.seq() <= self.last_seq {
            return;
        }
        self.last_seq = v.seq();
        let e = v.event();
        if let Err(problem) = self.fold(v.seq(), e.time_ms, &e.request_id, &e.body) {
            self.anomalies.push(Anomaly {
                seq: v.seq(),
                event_type: e.body.tag(),
                problem,
            });
        }
    }

    fn key_mut(&mut self, key: &KeyId, seq: u64) -> Result<&mut KeyView, String> {
        let k = self
            .keys
            .get_mut(key)
            .ok_or_else(|| format!("unknown key {key}"))?;
        k.updated_seq = seq;
        Ok(k)
    }

    fn fold(
        &mut self,
        seq: u64,
        time_ms: u64,
        request_id: &RequestId,
        body: &EventBody,
    ) -> Result<(), String> {
        let version_view = |m: &VersionMaterial| VersionView {
            version: m.version,
            created_seq: seq,
            created_ms: time_ms,
            created_by: request_id.clone(),
            sealed: m.sealed.clone(),
            public_key: m.public_key.as_ref().map(|b| b.to_vec()),
            destroyed: false,
        };
        let new_key =
            |spec: &KeySpec, m: &VersionMaterial, wrapped_by: Option<&String>, imported| KeyView {
                spec: spec.clone(),
                state: spec.state,
                imported,
                wrapped_by: wrapped_by.cloned(),
                versions: BTreeMap::from([(m.version, version_view(m))]),
                min_encrypt_version: m.version,
                min_decrypt_version: 1,
                grants: BTreeMap::new(),
                destroy_after_ms: None,
                compromised_at_ms: None,
                created_seq: seq,
                updated_seq: seq,
            };
        match body {
            EventBody::KeyCreated(e) => {
                if self.keys.contains_key(&e.spec.key) {
                    return Err(format!("key {} already exists", e.spec.key));
                }
                let view = new_key(&e.spec, &e.material, None, false);
                self.keys.insert(e.spec.key.clone(), view);
            }
            EventBody::KeyImported(e) => {
                if self.keys.contains_key(&e.spec.key) {
                    return Err(format!("key {} already exists", e.spec.key));
                }
                let view = new_key(&e.spec, &e.material, e.wrapped_by.as_ref(), true);
                self.keys.insert(e.spec.key.clone(), view);
            }
            EventBody::KeyRotated(e) => {
                let vv = version_view(&e.material);
                let k = self.key_mut(&e.key, seq)?;
                if k.versions.contains_key(&e.material.version) {
                    return Err(format!("version {} exists", e.material.version));
                }
                k.versions.insert(e.material.version, vv);
            }
            EventBody::KeyStateChanged(e) => self.key_mut(&e.key, seq)?.state = e.to,
            EventBody::KeyCompromised(e) => {
                let k = self.key_mut(&e.key, seq)?;
                k.state = KeyState::Compromised;
                k.compromised_at_ms = Some(e.compromised_at_ms);
            }
            EventBody::KeyVersionsBounded(e) => {
                let k = self.key_mut(&e.key, seq)?;
                k.min_encrypt_version = e.min_encrypt_version;
                k.min_decrypt_version = e.min_decrypt_version;
            }
            EventBody::KeyDestructionScheduled(e) => {
                self.key_mut(&e.key, seq)?.destroy_after_ms = Some(e.destroy_after_ms)
            }
            EventBody::KeyDestructionCancelled(e) => {
                self.key_mut(&e.key, seq)?.destroy_after_ms = None
            }
            EventBody::KeyDestroyed(e) => {
                let k = self.key_mut(&e.key, seq)?;
                for v in &e.versions {
                    match k.versions.get_mut(v) {
                        Some(vv) => vv.destroyed = true,
                        None => return Err(format!("unknown version {v}")),
                    }
                }
                if k.versions.values().all(|v| v.destroyed) {
                    k.state = match k.state {
                        KeyState::Compromised | KeyState::DestroyedCompromised => {
                            KeyState::DestroyedCompromised
                        }
                        _ => KeyState::Destroyed,
                    };
                    k.destroy_after_ms = None;
                }
            }
            EventBody::GrantAdded(e) => {
                let k = self.key_mut(&e.key, seq)?;
                k.grants.insert(e.grant.grant_id.clone(), e.grant.clone());
            }
            EventBody::GrantRevoked(e) => {
                let k = self.key_mut(&e.key, seq)?;
                if k.grants.remove(&e.grant_id).is_none() {
                    return Err(format!("unknown grant {}", e.grant_id));
                }
            }
            // Uses, accesses, refusals and system events do not change key state.
            _ => {}
        }
        Ok(())
    }
}
