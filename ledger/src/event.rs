//! The event model: every fact the ledger records.
//!
//! An [`Event`] is the signed body of one ledger entry. Its encoding (see `canonical`) is
//! positional MessagePack, so **field order is the schema**: once a type has landed, fields are
//! never reordered, removed or retyped. A change makes a new event type (or a new `format`), and
//! the golden vectors under `ledger/test-vectors/` prove the old encodings still decode.
//!
//! Events are past-tense facts. Key material only ever appears sealed ([`SealedMaterial`]).

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use crate::bytes32::{Bytes32, EventHash};
use crate::ids::{KeyId, LedgerId, RequestId, TenantId};
pub use crate::quote::Quote;
pub use crate::seal::SealedMaterial;
use crate::string_enum;

/// The only event format this code writes and reads.
pub const EVENT_FORMAT: u16 = 1;

/// One ledger entry's signed content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// [`EVENT_FORMAT`].
    pub format: u16,
    /// The ledger this event belongs to; an event is never valid in another ledger.
    pub ledger: LedgerId,
    /// Position in the chain of valid events: genesis is 0, each next event adds 1.
    pub index: u64,
    /// Chain hash of the previous valid event (all zero for genesis).
    pub prev: EventHash,
    /// Milliseconds since the Unix epoch, as the writer saw it (never a float).
    pub time_ms: u64,
    /// Who asked for this.
    pub actor: Actor,
    /// Digest of the caller's security context (platform evidence), if any.
    pub context: Option<Bytes32>,
    /// The request this event records; also its `Nats-Msg-Id`.
    pub request_id: RequestId,
    /// Id of the signing key (`crypto::signer_id` of its public key).
    pub signer: Bytes32,
    /// What happened.
    pub body: EventBody,
}

/// The authenticated caller behind an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Token subject, or `system:<name>` for the ledger's own operations.
    pub principal: String,
    pub tenant: Option<TenantId>,
    pub token_id: Option<String>,
}

impl Actor {
    /// The ledger acting on its own behalf (genesis, enrolment, maintenance).
    pub fn system(name: &str) -> Actor {
        Actor {
            principal: format!("system:{name}"),
            tenant: None,
            token_id: None,
        }
    }
}

string_enum! {
    /// Kinds of key object.
    pub enum KeyType {
        Aes128Gcm => "aes128-gcm",
        Aes256Gcm => "aes256-gcm",
        HmacSha256 => "hmac-sha256",
        Ed25519 => "ed25519",
        X25519 => "x25519",
        Secret => "secret",
        Passphrase => "passphrase",
        /// Material that arrived wrapped by someone else's key and is stored as given.
        Wrapped => "wrapped",
    }
}

string_enum! {
    /// Key lifecycle states (NIST SP 800-57 / KMIP).
    pub enum KeyState {
        PreActive => "pre-active",
        Active => "active",
        Suspended => "suspended",
        Deactivated => "deactivated",
        Compromised => "compromised",
        Destroyed => "destroyed",
        DestroyedCompromised => "destroyed-compromised",
    }
}

string_enum! {
    /// Operations on keys, as named in grants, uses and refusals.
    pub enum Operation {
        Create => "create",
        Import => "import",
        Describe => "describe",
        List => "list",
        Rotate => "rotate",
        SetVersions => "set-versions",
        Activate => "activate",
        Suspend => "suspend",
        Deactivate => "deactivate",
        Compromise => "compromise",
        ScheduleDestroy => "schedule-destroy",
        CancelDestroy => "cancel-destroy",
        Destroy => "destroy",
        Grant => "grant",
        Revoke => "revoke",
        GetMaterial => "get-material",
        Encrypt => "encrypt",
        Decrypt => "decrypt",
        Rewrap => "rewrap",
        GenerateDataKey => "generate-data-key",
        Sign => "sign",
        Verify => "verify",
        Mac => "mac",
        VerifyMac => "verify-mac",
        Random => "random",
    }
}

string_enum! {
    /// What an enrolled signing key may sign.
    pub enum SignerRole {
        /// Ordinary events (key operations, trust changes).
        Writer => "writer",
        /// Checkpoints of the Merkle tree.
        Checkpointer => "checkpointer",
    }
}

/// k-of-n split of a key's material (Shamir over the material).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSpec {
    pub threshold: u8,
    pub shares: u8,
}

/// A free-form label; labels are kept sorted by name, names unique.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

/// What a key is, fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    pub key: KeyId,
    pub tenant: TenantId,
    pub name: String,
    pub key_type: KeyType,
    /// State the key starts in (pre-active or active).
    pub state: KeyState,
    /// Whether the material may ever be released to a caller.
    pub exportable: bool,
    /// Rotation policy: rotate at least this often (seconds).
    pub rotation_period_s: Option<u64>,
    pub split: Option<SplitSpec>,
    pub labels: Vec<Label>,
}

/// One key version's material, sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMaterial {
    pub version: u32,
    /// One sealed blob, or one per share for a split key.
    pub sealed: Vec<SealedMaterial>,
    /// Public half of an asymmetric pair (not secret).
    pub public_key: Option<ByteBuf>,
}

/// Who a grant is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grantee {
    Principal(String),
    Role(String),
    Tenant(TenantId),
    PlatformGroup(String),
}

impl Grantee {
    fn tag(&self) -> &'static str {
        match self {
            Grantee::Principal(_) => "principal",
            Grantee::Role(_) => "role",
            Grantee::Tenant(_) => "tenant",
            Grantee::PlatformGroup(_) => "platform-group",
        }
    }

    fn value(&self) -> &str {
        match self {
            Grantee::Principal(s) | Grantee::Role(s) | Grantee::PlatformGroup(s) => s,
            Grantee::Tenant(t) => t.as_str(),
        }
    }
}

impl Serialize for Grantee {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.tag(), self.value()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Grantee {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (tag, value): (String, String) = Deserialize::deserialize(d)?;
        Ok(match tag.as_str() {
            "principal" => Grantee::Principal(value),
            "role" => Grantee::Role(value),
            "tenant" => Grantee::Tenant(TenantId::new(value).map_err(de::Error::custom)?),
            "platform-group" => Grantee::PlatformGroup(value),
            other => return Err(de::Error::custom(format!("unknown grantee kind {other:?}"))),
        })
    }
}

/// Conditions that must hold when a grant is used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantConditions {
    /// The caller must present a verified platform quote.
    pub require_platform: bool,
    /// ... reporting exactly this measurement.
    pub measurement: Option<Bytes32>,
    pub not_before_ms: Option<u64>,
    pub not_after_ms: Option<u64>,
}

/// A per-key permission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub grantee: Grantee,
    pub operations: Vec<Operation>,
    pub conditions: GrantConditions,
}

/// One itemised use of a key inside a [`KeysUsed`] event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUse {
    pub key: KeyId,
    pub tenant: TenantId,
    pub version: u32,
    pub operation: Operation,
    pub principal: String,
    pub request_id: RequestId,
    pub context: Option<Bytes32>,
}

// ---- event payloads -------------------------------------------------------------------------

/// Genesis: pins the ledger's root public key. Signed by that root key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCreated {
    pub root_key: Bytes32,
    pub kek_id: Bytes32,
}

/// A signing key may now sign events of its role. Signed by the root key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerEnrolled {
    pub signer: Bytes32,
    pub public_key: Bytes32,
    pub role: SignerRole,
    pub label: String,
}

/// A signing key may no longer sign. Signed by the root key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignerRetired {
    pub signer: Bytes32,
    pub reason: String,
}

/// Tokens signed by this issuer key are trusted (for the listed tenants; empty = all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerTrusted {
    pub issuer: String,
    pub public_key: Bytes32,
    pub tenants: Vec<TenantId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerRevoked {
    pub issuer: String,
    pub reason: String,
}

/// A platform's attestation key and the measurements it is expected to report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformEnrolled {
    pub platform: String,
    pub attestation_key: Bytes32,
    pub group: String,
    pub measurements: Vec<Bytes32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRevoked {
    pub platform: String,
    pub reason: String,
}

/// The master key changed; every data key was re-sealed under the new one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterKeyRotated {
    pub old_kek_id: Bytes32,
    pub new_kek_id: Bytes32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub spec: KeySpec,
    pub material: VersionMaterial,
}

/// Bring-your-own-key: material supplied by the caller (possibly already wrapped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyImported {
    pub spec: KeySpec,
    pub material: VersionMaterial,
    /// Name of the foreign key that wraps the material, when it arrived wrapped.
    pub wrapped_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    pub key: KeyId,
    pub material: VersionMaterial,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStateChanged {
    pub key: KeyId,
    pub from: KeyState,
    pub to: KeyState,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCompromised {
    pub key: KeyId,
    pub from: KeyState,
    /// When the compromise is believed to have happened (may precede this event).
    pub compromised_at_ms: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionsBounded {
    pub key: KeyId,
    pub min_encrypt_version: u32,
    pub min_decrypt_version: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDestructionScheduled {
    pub key: KeyId,
    pub destroy_after_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDestructionCancelled {
    pub key: KeyId,
}

/// The key's data keys were erased: its material is unrecoverable from every stored byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDestroyed {
    pub key: KeyId,
    pub versions: Vec<u32>,
    pub erased_deks: Vec<Bytes32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantAdded {
    pub key: KeyId,
    pub grant: Grant,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRevoked {
    pub key: KeyId,
    pub grant_id: String,
}

/// Material was released to a caller (sealed to its transport key when it gave one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterialAccessed {
    pub key: KeyId,
    pub version: u32,
    pub sealed_to: Option<Bytes32>,
}

/// A caller presented a verified platform quote (fresh nonce, enrolled attestation key, expected
/// measurement). Operation events of that request carry `quote.digest()` as their `context`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformAttested {
    /// The platform's group at the time (as enrolled), for grants naming platform groups.
    pub group: String,
    pub quote: Quote,
}

/// Cryptographic uses of keys, several to one event, each itemised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysUsed {
    pub uses: Vec<KeyUse>,
}

/// A request was refused. `count` > 1 aggregates identical refusals in `[first_ms, last_ms]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRefused {
    pub key: Option<KeyId>,
    pub tenant: Option<TenantId>,
    pub operation: Operation,
    pub code: String,
    pub reason: String,
    pub count: u32,
    pub first_ms: u64,
    pub last_ms: u64,
}

macro_rules! event_body {
    ($($variant:ident => $tag:literal),+ $(,)?) => {
        /// What happened. Encodes as `[tag, payload]` with a frozen string tag per variant.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum EventBody { $($variant($variant)),+ }

        impl EventBody {
            /// The frozen type tag.
            pub fn tag(&self) -> &'static str {
                match self { $(EventBody::$variant(_) => $tag),+ }
            }

            /// Every tag, for documentation and tests.
            pub const TAGS: &'static [&'static str] = &[$($tag),+];
        }

        $(impl From<$variant> for EventBody {
            fn from(v: $variant) -> Self { EventBody::$variant(v) }
        })+

        impl Serialize for EventBody {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut t = s.serialize_tuple(2)?;
                match self {
                    $(EventBody::$variant(v) => { t.serialize_element($tag)?; t.serialize_element(v)?; })+
                }
                t.end()
            }
        }

        impl<'de> Deserialize<'de> for EventBody {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = EventBody;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an event body [tag, payload]")
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventBody, A::Error> {
                        let tag: String = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                        let body = match tag.as_str() {
                            $($tag => EventBody::$variant(seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?),)+
                            other => return Err(de::Error::custom(format!("unknown event type {other:?}"))),
                        };
                        if seq.next_element::<de::IgnoredAny>()?.is_some() {
                            return Err(de::Error::invalid_length(3, &self));
                        }
                        Ok(body)
                    }
                }
                d.deserialize_tuple(2, V)
            }
        }
    };
}

event_body! {
    LedgerCreated => "LedgerCreated",
    SignerEnrolled => "SignerEnrolled",
    SignerRetired => "SignerRetired",
    IssuerTrusted => "IssuerTrusted",
    IssuerRevoked => "IssuerRevoked",
    PlatformEnrolled => "PlatformEnrolled",
    PlatformRevoked => "PlatformRevoked",
    MasterKeyRotated => "MasterKeyRotated",
    KeyCreated => "KeyCreated",
    KeyImported => "KeyImported",
    KeyRotated => "KeyRotated",
    KeyStateChanged => "KeyStateChanged",
    KeyCompromised => "KeyCompromised",
    KeyVersionsBounded => "KeyVersionsBounded",
    KeyDestructionScheduled => "KeyDestructionScheduled",
    KeyDestructionCancelled => "KeyDestructionCancelled",
    KeyDestroyed => "KeyDestroyed",
    GrantAdded => "GrantAdded",
    GrantRevoked => "GrantRevoked",
    MaterialAccessed => "MaterialAccessed",
    KeysUsed => "KeysUsed",
    RequestRefused => "RequestRefused",
    // Added after the first vectors froze: new types only ever append (events-v1-2.json).
    PlatformAttested => "PlatformAttested",
}

impl EventBody {
    /// Events only the root key may sign.
    pub fn needs_root(&self) -> bool {
        matches!(
            self,
            EventBody::LedgerCreated(_)
                | EventBody::SignerEnrolled(_)
                | EventBody::SignerRetired(_)
        )
    }

    /// The key whose *state* this event changes (creation, material, lifecycle, bounds,
    /// destruction, grants), if any. Uses, accesses and refusals change no state. The appender's
    /// optimistic concurrency ([`crate::nats::KeyGuard`]) and the projector's `updated_seq`
    /// both follow this.
    pub fn changed_key(&self) -> Option<&KeyId> {
        match self {
            EventBody::KeyCreated(e) => Some(&e.spec.key),
            EventBody::KeyImported(e) => Some(&e.spec.key),
            EventBody::KeyRotated(e) => Some(&e.key),
            EventBody::KeyStateChanged(e) => Some(&e.key),
            EventBody::KeyCompromised(e) => Some(&e.key),
            EventBody::KeyVersionsBounded(e) => Some(&e.key),
            EventBody::KeyDestructionScheduled(e) => Some(&e.key),
            EventBody::KeyDestructionCancelled(e) => Some(&e.key),
            EventBody::KeyDestroyed(e) => Some(&e.key),
            EventBody::GrantAdded(e) => Some(&e.key),
            EventBody::GrantRevoked(e) => Some(&e.key),
            _ => None,
        }
    }

    /// The key this event is about, if exactly one.
    pub fn key(&self) -> Option<&KeyId> {
        match self {
            EventBody::KeyCreated(e) => Some(&e.spec.key),
            EventBody::KeyImported(e) => Some(&e.spec.key),
            EventBody::KeyRotated(e) => Some(&e.key),
            EventBody::KeyStateChanged(e) => Some(&e.key),
            EventBody::KeyCompromised(e) => Some(&e.key),
            EventBody::KeyVersionsBounded(e) => Some(&e.key),
            EventBody::KeyDestructionScheduled(e) => Some(&e.key),
            EventBody::KeyDestructionCancelled(e) => Some(&e.key),
            EventBody::KeyDestroyed(e) => Some(&e.key),
            EventBody::GrantAdded(e) => Some(&e.key),
            EventBody::GrantRevoked(e) => Some(&e.key),
            EventBody::MaterialAccessed(e) => Some(&e.key),
            EventBody::KeysUsed(e) => {
                let first = &e.uses.first()?.key;
                e.uses.iter().all(|u| &u.key == first).then_some(first)
            }
            EventBody::RequestRefused(e) => e.key.as_ref(),
            _ => None,
        }
    }
}

impl Event {
    /// The tenant an event belongs to (for subjects and isolation), if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        match &self.body {
            EventBody::KeyCreated(e) => Some(&e.spec.tenant),
            EventBody::KeyImported(e) => Some(&e.spec.tenant),
            EventBody::RequestRefused(e) => e.tenant.as_ref().or(self.actor.tenant.as_ref()),
            _ => self.actor.tenant.as_ref(),
        }
    }
}
