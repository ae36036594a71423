//! The trust view: which token issuers and which platforms the ledger trusts right now, and which
//! quote nonces have been spent. Folded from verified events only, like every view.
//!
//! - `IssuerTrusted` trusts an issuer's Ed25519 key (for some tenants or all); a later
//!   `IssuerTrusted` of the same issuer rotates its key (tokens of the old key stop verifying);
//!   `IssuerRevoked` revokes it until it is trusted again.
//! - `PlatformEnrolled` enrols a platform's attestation key, group and expected measurements
//!   (re-enrolment replaces them); `PlatformRevoked` revokes it.
//! - `PlatformAttested` spends the quote's nonce, on every replica that folds it.

use std::collections::{BTreeMap, HashMap};

use ledger::{Bytes32, EventBody, TenantId, VerifiedEvent};

use crate::Anomaly;

/// Why and when trust was withdrawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub seq: u64,
    pub reason: String,
}

/// A token issuer as the ledger knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerView {
    pub issuer: String,
    pub public_key: [u8; 32],
    /// Tenants whose tokens it may sign; empty means every tenant.
    pub tenants: Vec<TenantId>,
    /// Sequence of the `IssuerTrusted` event that set the current key.
    pub trusted_seq: u64,
    /// How many keys this issuer has had (1 = never rotated).
    pub key_count: u32,
    pub revoked: Option<Revocation>,
}

/// An enrolled platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformView {
    pub platform: String,
    pub attestation_key: Bytes32,
    pub group: String,
    pub measurements: Vec<Bytes32>,
    pub enrolled_seq: u64,
    pub revoked: Option<Revocation>,
}

/// Issuers, platforms and spent nonces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    issuers: BTreeMap<String, IssuerView>,
    platforms: BTreeMap<String, PlatformView>,
    /// Spent nonce -> (sequence of its `PlatformAttested`, the nonce's expiry).
    spent: HashMap<Bytes32, (u64, u64)>,
    last_seq: u64,
    anomalies: Vec<Anomaly>,
}

impl Trust {
    pub fn new() -> Trust {
        Trust::default()
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn issuer(&self, name: &str) -> Option<&IssuerView> {
        self.issuers.get(name)
    }

    pub fn issuers(&self) -> impl Iterator<Item = &IssuerView> {
        self.issuers.values()
    }

    pub fn platform(&self, id: &str) -> Option<&PlatformView> {
        self.platforms.get(id)
    }

    pub fn platforms(&self) -> impl Iterator<Item = &PlatformView> {
        self.platforms.values()
    }

    /// The sequence of the `PlatformAttested` event that spent `nonce`, if one did.
    pub fn nonce_spent(&self, nonce: &Bytes32) -> Option<u64> {
        self.spent.get(nonce).map(|(seq, _)| *seq)
    }

    pub fn anomalies(&self) -> &[Anomaly] {
        &self.anomalies
    }

    /// Folds one verified event; idempotent by sequence.
    pub fn apply(&mut self, v: &VerifiedEvent) {
        if v.seq() <= self.last_seq {
            return;
        }
        self.last_seq = v.seq();
        let e = v.event();
        if let Err(problem) = self.fold(v.seq(), e.time_ms, &e.body) {
            self.anomalies.push(Anomaly {
                seq: v.seq(),
                event_type: e.body.tag(),
                problem,
            });
        }
    }

    fn fold(&mut self, seq: u64, time_ms: u64, body: &EventBody) -> Result<(), String> {
        match body {
            EventBody::IssuerTrusted(e) => {
                let key_count = self.issuers.get(&e.issuer).map_or(0, |i| i.key_count) + 1;
                self.issuers.insert(
                    e.issuer.clone(),
                    IssuerView {
                        issuer: e.issuer.clone(),
                        public_key: e.public_key.0,
                        tenants: e.tenants.clone(),
                        trusted_seq: seq,
                        key_count,
                        revoked: None,
                    },
                );
            }
            EventBody::IssuerRevoked(e) => {
                let i = self
                    .issuers
                    .get_mut(&e.issuer)
                    .ok_or_else(|| format!("unknown issuer {:?}", e.issuer))?;
                i.revoked = Some(Revocation {
                    seq,
                    reason: e.reason.clone(),
                });
            }
            EventBody::PlatformEnrolled(e) => {
                self.platforms.insert(
                    e.platform.clone(),
                    PlatformView {
                        platform: e.platform.clone(),
                        attestation_key: e.attestation_key,
                        group: e.group.clone(),
                        measurements: e.measurements.clone(),
                        enrolled_seq: seq,
                        revoked: None,
                    },
                );
            }
            EventBody::PlatformRevoked(e) => {
                let p = self
                    .platforms
                    .get_mut(&e.platform)
                    .ok_or_else(|| format!("unknown platform {:?}", e.platform))?;
                p.revoked = Some(Revocation {
                    seq,
                    reason: e.reason.clone(),
                });
            }
            EventBody::PlatformAttested(e) => {
                let expiry = crate::attest::nonce_expiry_ms(&e.quote.nonce);
                // Forget nonces that expired long before this event: they can never verify
                // again, so remembering them is not needed to refuse a replay. Pruning by event
                // time keeps the fold deterministic.
                if self.spent.len() >= 4096 && self.spent.len().is_power_of_two() {
                    let horizon = time_ms.saturating_sub(crate::attest::NONCE_TTL_MS);
                    self.spent.retain(|_, (_, exp)| *exp >= horizon);
                }
                if let Some((first, _)) = self.spent.insert(e.quote.nonce, (seq, expiry)) {
                    self.spent.insert(e.quote.nonce, (first, expiry));
                    return Err(format!("nonce already spent at seq {first}"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
