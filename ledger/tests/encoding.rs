//! Canonical encoding of events, frozen.
//!
//! - Golden vectors (`ledger/test-vectors/events-v1.json`): one or more deterministic samples of
//!   every `EventBody` variant, chained and signed with fixed Ed25519 keys. The file is written
//!   once with `KEYLEDGER_WRITE_VECTORS=1`; otherwise every field is recomputed and compared, the
//!   stored entries are decoded and verified on their own, and any difference fails. Never
//!   regenerate the file to make this test pass: a difference means old events no longer decode
//!   or verify the same way.
//! - Canonical refusals: alternative spellings of the same value are refused by
//!   `canonical::decode`.
//! - Property tests: `decode(encode(e)) == e` for arbitrary events, and encoding is deterministic.

use std::collections::BTreeSet;

use bytes::Bytes;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use proptest::prelude::*;
use serde::Serialize;
use serde_bytes::ByteBuf;
use serde_json::{json, Value};

use ledger::canonical::{self, DecodeError};
use ledger::entry;
use ledger::event::*;
use ledger::sign::{chain_and_sign, ChainTip, Draft, EventSigner};
use ledger::{Bytes32, ChainState, Checked, KeyId, LedgerId, RequestId, TenantId};

const VECTOR_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/events-v1.json");
/// Event types added after `events-v1.json` froze (tags appended to `EventBody::TAGS`).
const VECTOR_PATH_2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/events-v1-2.json");

/// One frozen vector file: its samples and how many of `EventBody::TAGS` existed when it was
/// written. Files are never rewritten; a new event type gets its samples in a new file.
struct Generation {
    path: &'static str,
    samples: fn() -> Vec<Sample>,
    tag_count: usize,
    description: &'static str,
}

fn generations() -> [Generation; 2] {
    [
        Generation {
            path: VECTOR_PATH,
            samples,
            tag_count: 22,
            description: "keyledger events v1: canonical MessagePack bodies, BLAKE3 chain hashes and \
            Ed25519-signed framed entries of every event type, as one valid chain. \
            entry = 0x01 || u32be(len(body)) || body || sig[64]; \
            sig = Ed25519(\"keyledger/event-sig/v1\\n\" || body), checked with verify_strict; \
            chain_hash = BLAKE3-derive_key(\"keyledger 2026-11 event chain v1\", body); \
            signer_id = BLAKE3-derive_key(\"keyledger 2026-11 signer id v1\", public_key). \
            See ledger/src/{event,canonical,entry}.rs and ledger/tests/encoding.rs. \
            Written once with KEYLEDGER_WRITE_VECTORS=1; never regenerate.",
        },
        Generation {
            path: VECTOR_PATH_2,
            samples: samples_2,
            tag_count: 23,
            description: "keyledger events v1, second file: event types added after events-v1.json \
            froze (PlatformAttested; quote = ledger/src/quote.rs), as one valid chain of their own \
            (genesis, writer enrolment, the new types, writer retirement). Same framing, signature, \
            chain and signer-id rules as events-v1.json. \
            Written once with KEYLEDGER_WRITE_VECTORS=1; never regenerate.",
        },
    ]
}

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600_000;
const LEDGER: &str = "ledger-vectors-1";
const ROOT_SEED: u8 = 1;
const WRITER_SEED: u8 = 2;

// ---- fixed sample data ------------------------------------------------------------------------

fn seq<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn b32(start: u8) -> Bytes32 {
    Bytes32(seq(start))
}

fn key_id(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn req(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

fn signer(seed: u8) -> EventSigner {
    EventSigner::new(SigningKey::from_bytes(&[seed; 32]))
}

fn user(principal: &str, tenant_id: Option<&str>, token: Option<&str>) -> Actor {
    Actor {
        principal: principal.to_string(),
        tenant: tenant_id.map(tenant),
        token_id: token.map(str::to_string),
    }
}

fn sealed(start: u8, ct_len: usize) -> SealedMaterial {
    SealedMaterial {
        dek_id: b32(start),
        nonce: seq::<12>(start.wrapping_add(0x40)).to_vec(),
        ciphertext: (0..ct_len)
            .map(|i| start.wrapping_mul(7) ^ i as u8)
            .collect(),
    }
}

/// One sample: who signs it and what it records.
struct Sample {
    root: bool,
    draft: Draft,
}

fn sample(
    root: bool,
    request: &str,
    actor: Actor,
    context: Option<Bytes32>,
    body: impl Into<EventBody>,
) -> Sample {
    Sample {
        root,
        draft: Draft {
            request_id: req(request),
            actor,
            context,
            body: body.into(),
        },
    }
}

/// The samples in chain order: genesis, enrolment of the writer, one or more samples of every
/// other variant signed by the writer, and finally the retirement of the writer by the root.
/// Integers sit on the MessagePack width boundaries and strings on the fixstr/str8/str16 ones.
fn samples() -> Vec<Sample> {
    let root = signer(ROOT_SEED);
    let writer = signer(WRITER_SEED);
    let admin = || user("admin@example.com", Some("acme"), Some("tok-0001"));
    let app = || user("svc-payments", Some("acme"), None);
    let ops = || user("ops:carol", None, Some("tok-ops-9"));
    let anon = || user("", None, None);
    let k = || key_id("k-payments_01");
    let spec = KeySpec {
        key: k(),
        tenant: tenant("acme"),
        name: "payments signing key".to_string(),
        key_type: KeyType::Aes256Gcm,
        state: KeyState::Active,
        exportable: false,
        rotation_period_s: Some(7_776_000),
        split: None,
        labels: vec![
            Label {
                name: "env".into(),
                value: "prod".into(),
            },
            Label {
                name: "note".into(),
                // 40 bytes: str8.
                value: "é✓ non-ASCII label value, NFC: café…".into(),
            },
            Label {
                name: "team".into(),
                // 300 bytes: str16.
                value: "p".repeat(300),
            },
        ],
    };
    let imported = KeySpec {
        key: key_id(&"K".repeat(64)),
        tenant: tenant("globex"),
        // 31 bytes: the longest fixstr.
        name: "n".repeat(31),
        key_type: KeyType::Ed25519,
        state: KeyState::PreActive,
        exportable: true,
        rotation_period_s: None,
        split: Some(SplitSpec {
            threshold: 2,
            shares: 3,
        }),
        labels: vec![],
    };
    let grant = |id: &str, grantee: Grantee, operations: Vec<Operation>, conditions| GrantAdded {
        key: k(),
        grant: Grant {
            grant_id: id.to_string(),
            grantee,
            operations,
            conditions,
        },
    };
    let no_conditions = GrantConditions {
        require_platform: false,
        measurement: None,
        not_before_ms: None,
        not_after_ms: None,
    };
    let key_use = |version, operation, principal: &str, request: &str, context| KeyUse {
        key: k(),
        tenant: tenant("acme"),
        version,
        operation,
        principal: principal.to_string(),
        request_id: req(request),
        context,
    };
    vec![
        sample(
            true,
            "genesis",
            Actor::system("init"),
            None,
            LedgerCreated {
                root_key: root.public_key(),
                kek_id: b32(0x10),
            },
        ),
        sample(
            true,
            "enrol-writer-1",
            Actor::system("enrol"),
            None,
            SignerEnrolled {
                signer: writer.id(),
                public_key: writer.public_key(),
                role: SignerRole::Writer,
                label: "writer-1".into(),
            },
        ),
        sample(
            false,
            "issuer-trust-1",
            admin(),
            Some(b32(0x20)),
            IssuerTrusted {
                issuer: "https://issuer.example/".into(),
                public_key: b32(0x30),
                tenants: vec![tenant("acme"), tenant("globex")],
            },
        ),
        sample(
            false,
            "issuer-trust-2",
            ops(),
            None,
            IssuerTrusted {
                issuer: "https://all.example/".into(),
                public_key: b32(0x31),
                tenants: vec![],
            },
        ),
        sample(
            false,
            "issuer-revoke-1",
            ops(),
            Some(b32(0x21)),
            IssuerRevoked {
                issuer: "https://all.example/".into(),
                reason: "signing key leaked".into(),
            },
        ),
        sample(
            false,
            "platform-enrol-1",
            ops(),
            None,
            PlatformEnrolled {
                platform: "tee-node-1".into(),
                attestation_key: b32(0x40),
                group: "sev-snp".into(),
                measurements: vec![b32(0x50), b32(0x60), b32(0xf0)],
            },
        ),
        sample(
            false,
            "platform-revoke-1",
            ops(),
            None,
            PlatformRevoked {
                platform: "tee-node-1".into(),
                reason: "decommissioned".into(),
            },
        ),
        sample(
            false,
            "kek-rotate-1",
            Actor::system("maintenance"),
            None,
            MasterKeyRotated {
                old_kek_id: b32(0x10),
                new_kek_id: b32(0x70),
            },
        ),
        sample(
            false,
            "create-1",
            admin(),
            Some(b32(0x22)),
            KeyCreated {
                spec: spec.clone(),
                material: VersionMaterial {
                    version: 1,
                    sealed: vec![sealed(0x80, 48)],
                    public_key: None,
                },
            },
        ),
        sample(
            false,
            "import-1",
            admin(),
            None,
            KeyImported {
                spec: imported.clone(),
                material: VersionMaterial {
                    version: 1,
                    sealed: vec![sealed(0x90, 80), sealed(0xa0, 80), sealed(0xb0, 80)],
                    public_key: Some(ByteBuf::from(seq::<32>(0xc0).to_vec())),
                },
                wrapped_by: Some("hsm-kek-7".into()),
            },
        ),
        sample(
            false,
            "import-2",
            admin(),
            None,
            KeyImported {
                spec: KeySpec {
                    key: key_id("k-wrapped"),
                    key_type: KeyType::Wrapped,
                    labels: vec![],
                    ..spec.clone()
                },
                material: VersionMaterial {
                    version: 1,
                    sealed: vec![],
                    public_key: Some(ByteBuf::new()),
                },
                wrapped_by: None,
            },
        ),
        sample(
            false,
            "rotate-1",
            app(),
            None,
            KeyRotated {
                key: k(),
                material: VersionMaterial {
                    // 256: uint16.
                    version: 256,
                    sealed: vec![sealed(0xd0, 0)],
                    public_key: None,
                },
            },
        ),
        sample(
            false,
            "state-1",
            admin(),
            None,
            KeyStateChanged {
                key: k(),
                from: KeyState::Active,
                to: KeyState::Suspended,
                reason: String::new(),
            },
        ),
        sample(
            false,
            "compromise-1",
            admin(),
            Some(b32(0x23)),
            KeyCompromised {
                key: k(),
                from: KeyState::Suspended,
                compromised_at_ms: T0 - 86_400_000,
                reason: "laptop stolen — 盗難".into(),
            },
        ),
        sample(
            false,
            "bound-1",
            admin(),
            None,
            KeyVersionsBounded {
                key: k(),
                // 127 (fixint) and 128 (uint8).
                min_encrypt_version: 128,
                min_decrypt_version: 127,
            },
        ),
        sample(
            false,
            "destroy-schedule-1",
            admin(),
            None,
            KeyDestructionScheduled {
                key: k(),
                destroy_after_ms: T0 + 30 * 86_400_000,
            },
        ),
        sample(
            false,
            "destroy-cancel-1",
            admin(),
            None,
            KeyDestructionCancelled { key: k() },
        ),
        sample(
            false,
            "destroy-1",
            admin(),
            None,
            KeyDestroyed {
                key: k(),
                // 65535 (uint16), 65536 and u32::MAX (uint32).
                versions: vec![1, 65_535, 65_536, u32::MAX],
                erased_deks: vec![b32(0x80), b32(0xd0)],
            },
        ),
        sample(
            false,
            "grant-1",
            admin(),
            None,
            grant(
                "g-principal",
                Grantee::Principal("svc-payments".into()),
                vec![Operation::Encrypt, Operation::Decrypt],
                GrantConditions {
                    require_platform: true,
                    measurement: Some(b32(0x60)),
                    not_before_ms: Some(0),
                    not_after_ms: Some(u64::MAX),
                },
            ),
        ),
        sample(
            false,
            "grant-2",
            admin(),
            None,
            grant(
                "g-role",
                Grantee::Role("auditor".into()),
                vec![Operation::Describe, Operation::List],
                no_conditions.clone(),
            ),
        ),
        sample(
            false,
            "grant-3",
            admin(),
            None,
            grant(
                "g-tenant",
                Grantee::Tenant(tenant("globex")),
                vec![],
                GrantConditions {
                    not_before_ms: Some(T0),
                    ..no_conditions.clone()
                },
            ),
        ),
        sample(
            false,
            "grant-4",
            admin(),
            None,
            grant(
                "g-platform",
                Grantee::PlatformGroup("sev-snp".into()),
                Operation::ALL.to_vec(),
                no_conditions,
            ),
        ),
        sample(
            false,
            "grant-revoke-1",
            admin(),
            None,
            GrantRevoked {
                key: k(),
                grant_id: "g-role".into(),
            },
        ),
        sample(
            false,
            "material-1",
            app(),
            Some(b32(0x24)),
            MaterialAccessed {
                key: k(),
                version: 2,
                sealed_to: Some(b32(0xe0)),
            },
        ),
        sample(
            false,
            "material-2",
            app(),
            None,
            MaterialAccessed {
                key: k(),
                version: 0,
                sealed_to: None,
            },
        ),
        sample(
            false,
            "uses-1",
            Actor::system("batcher"),
            None,
            KeysUsed {
                uses: vec![
                    key_use(1, Operation::Encrypt, "svc-payments", "u-1", None),
                    key_use(
                        2,
                        Operation::Decrypt,
                        "svc-payments",
                        "u-2",
                        Some(b32(0x25)),
                    ),
                    key_use(u32::MAX, Operation::Mac, "svc-other", "u-3", None),
                ],
            },
        ),
        sample(
            false,
            "uses-2",
            Actor::system("batcher"),
            None,
            KeysUsed { uses: vec![] },
        ),
        sample(
            false,
            "refused-1",
            app(),
            Some(b32(0x26)),
            RequestRefused {
                key: Some(k()),
                tenant: Some(tenant("acme")),
                operation: Operation::GetMaterial,
                code: "forbidden".into(),
                reason: "key is not exportable".into(),
                count: 200,
                first_ms: T0,
                last_ms: T0 + 59_999,
            },
        ),
        sample(
            false,
            "refused-2",
            anon(),
            None,
            RequestRefused {
                key: None,
                tenant: None,
                operation: Operation::Random,
                code: "unauthenticated".into(),
                reason: String::new(),
                count: 1,
                first_ms: 0,
                last_ms: u64::MAX,
            },
        ),
        sample(
            true,
            "retire-writer-1",
            Actor::system("enrol"),
            Some(b32(0x27)),
            SignerRetired {
                signer: writer.id(),
                reason: "scheduled rotation".into(),
            },
        ),
    ]
}

/// Samples of the event types added after `events-v1.json` froze, in a chain of their own.
fn samples_2() -> Vec<Sample> {
    let writer = signer(WRITER_SEED);
    let attester = SigningKey::from_bytes(&[3; 32]);
    // The same genesis and writer enrolment as the first file.
    let mut out: Vec<Sample> = samples().into_iter().take(2).collect();
    out.extend([
        sample(
            false,
            "q-0001",
            user("svc-batch", Some("acme"), Some("tok-77")),
            None,
            PlatformAttested {
                group: "sev-snp".into(),
                quote: Quote::sign(&attester, "tee-node-1", b32(0x70), b32(0x50), b32(0x90)),
            },
        ),
        sample(
            true,
            "retire-writer-1",
            Actor::system("enrol"),
            None,
            SignerRetired {
                signer: writer.id(),
                reason: "end of vectors".into(),
            },
        ),
    ]);
    out
}

/// Chains and signs the first file's samples.
fn signed_samples() -> Vec<ledger::sign::SignedEntry> {
    sign_samples(samples())
}

/// Chains and signs samples: sample `i` has index `i` and time `T0 + i` seconds.
fn sign_samples(samples: Vec<Sample>) -> Vec<ledger::sign::SignedEntry> {
    let root = signer(ROOT_SEED);
    let writer = signer(WRITER_SEED);
    let ledger = LedgerId::new(LEDGER).unwrap();
    let mut tip = ChainTip::GENESIS;
    let mut out = Vec::new();
    for (i, s) in samples.into_iter().enumerate() {
        let by = if s.root { &root } else { &writer };
        let (mut signed, next) =
            chain_and_sign(by, &ledger, tip, T0 + 1_000 * i as u64, &[s.draft]);
        tip = next;
        out.push(signed.pop().unwrap());
    }
    out
}

fn string_forms<T: std::fmt::Display>(all: &[T]) -> Value {
    all.iter().map(|v| v.to_string()).collect()
}

fn vectors(generation: &Generation) -> Value {
    let root = signer(ROOT_SEED);
    let writer = signer(WRITER_SEED);
    let signer_json = |name: &str, seed: u8, s: &EventSigner| {
        json!({
            "name": name,
            "secret_seed": hex::encode([seed; 32]),
            "public_key": s.public_key().to_hex(),
            "signer_id": s.id().to_hex(),
        })
    };
    let events: Vec<Value> = sign_samples((generation.samples)())
        .iter()
        .map(|s| {
            let (body, sig) = entry::split(&s.entry).unwrap();
            json!({
                "tag": s.event.body.tag(),
                "index": s.event.index,
                "request_id": s.event.request_id.as_str(),
                "signer_id": s.event.signer.to_hex(),
                "body": hex::encode(body),
                "chain_hash": s.hash.to_hex(),
                "signature": hex::encode(sig),
                "entry": hex::encode(&s.entry),
            })
        })
        .collect();
    json!({
        "description": generation.description,
        "event_format": EVENT_FORMAT,
        "entry_version": entry::ENTRY_VERSION,
        "event_sig_domain": String::from_utf8(entry::EVENT_SIG_DOMAIN.to_vec()).unwrap(),
        "chain_context": entry::CHAIN_CONTEXT,
        "signer_id_context": entry::SIGNER_ID_CONTEXT,
        "ledger": LEDGER,
        "signers": [
            signer_json("root", ROOT_SEED, &root),
            signer_json("writer", WRITER_SEED, &writer),
        ],
        "tags": &EventBody::TAGS[..generation.tag_count],
        "string_enums": {
            "KeyType": string_forms(KeyType::ALL),
            "KeyState": string_forms(KeyState::ALL),
            "Operation": string_forms(Operation::ALL),
            "SignerRole": string_forms(SignerRole::ALL),
        },
        "events": events,
    })
}

fn hex_field(v: &Value, k: &str) -> Vec<u8> {
    hex::decode(v[k].as_str().unwrap_or_else(|| panic!("field {k} missing"))).unwrap()
}

// ---- golden vectors -------------------------------------------------------------------------

#[test]
fn samples_cover_every_event_type() {
    let covered: BTreeSet<&str> = generations()
        .iter()
        .flat_map(|g| (g.samples)())
        .map(|s| s.draft.body.tag())
        .collect();
    let last = generations().last().unwrap().tag_count;
    assert_eq!(
        last,
        EventBody::TAGS.len(),
        "a new event type needs a new vector file"
    );
    let all: BTreeSet<&str> = EventBody::TAGS.iter().copied().collect();
    assert_eq!(all.len(), EventBody::TAGS.len(), "duplicate tag");
    let missing: Vec<_> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "event types without a golden vector: {missing:?}"
    );
    assert_eq!(covered, all);
}

#[test]
fn golden_vectors() {
    for g in &generations() {
        check_golden(g);
    }
}

#[test]
fn golden_vectors_decode_and_verify() {
    for g in &generations() {
        check_decode_and_verify(g);
    }
}

fn check_golden(g: &Generation) {
    let computed = vectors(g);
    let missing = !std::path::Path::new(g.path).exists();
    if missing && std::env::var_os("KEYLEDGER_WRITE_VECTORS").is_some_and(|v| v == "1") {
        let dir = std::path::Path::new(g.path).parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let text = serde_json::to_string_pretty(&computed).unwrap() + "\n";
        std::fs::write(g.path, text).unwrap();
        eprintln!("wrote {}", g.path);
        return;
    }
    let text = std::fs::read_to_string(g.path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it once with KEYLEDGER_WRITE_VECTORS=1",
            g.path
        )
    });
    let stored: Value = serde_json::from_str(&text).unwrap();

    // Field by field first, for a readable failure.
    let (s_events, c_events) = (
        stored["events"].as_array().unwrap(),
        computed["events"].as_array().unwrap(),
    );
    assert_eq!(
        s_events.len(),
        c_events.len(),
        "number of event vectors changed"
    );
    for (i, (s, c)) in s_events.iter().zip(c_events).enumerate() {
        for field in [
            "tag",
            "index",
            "request_id",
            "signer_id",
            "body",
            "chain_hash",
            "signature",
            "entry",
        ] {
            assert_eq!(
                s[field], c[field],
                "event vector {i} ({}): field {field} changed: the stored vectors are frozen",
                s["tag"]
            );
        }
    }
    for field in [
        "event_format",
        "entry_version",
        "event_sig_domain",
        "chain_context",
        "signer_id_context",
        "ledger",
        "signers",
        "tags",
        "string_enums",
    ] {
        assert_eq!(
            stored[field], computed[field],
            "{field} changed: the stored vectors are frozen"
        );
    }
    assert_eq!(
        stored, computed,
        "event encoding changed: the stored vectors are frozen"
    );
}

/// The stored bytes stand on their own: they decode to the samples and their signatures and
/// hashes check with nothing but the file.
fn check_decode_and_verify(g: &Generation) {
    let text = std::fs::read_to_string(g.path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it once with KEYLEDGER_WRITE_VECTORS=1",
            g.path
        )
    });
    let stored: Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<(Bytes32, VerifyingKey)> = stored["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let pk: [u8; 32] = hex_field(s, "public_key").try_into().unwrap();
            let id = Bytes32(hex_field(s, "signer_id").try_into().unwrap());
            assert_eq!(entry::signer_id(&pk), id, "signer id of {}", s["name"]);
            let seed: [u8; 32] = hex_field(s, "secret_seed").try_into().unwrap();
            assert_eq!(SigningKey::from_bytes(&seed).verifying_key().to_bytes(), pk);
            (id, VerifyingKey::from_bytes(&pk).unwrap())
        })
        .collect();
    let signed = sign_samples((g.samples)());
    let events = stored["events"].as_array().unwrap();
    assert_eq!(events.len(), signed.len());
    let mut prev = Bytes32::ZERO;
    let mut msgs = Vec::new();
    for (i, (v, sample)) in events.iter().zip(&signed).enumerate() {
        let entry_bytes = hex_field(v, "entry");
        let (body, sig) = entry::split(&entry_bytes).unwrap();
        assert_eq!(body, &hex_field(v, "body")[..], "vector {i}: body");
        assert_eq!(
            &sig[..],
            &hex_field(v, "signature")[..],
            "vector {i}: signature"
        );
        let event: Event = canonical::decode(body).unwrap_or_else(|e| panic!("vector {i}: {e}"));
        assert_eq!(
            event, sample.event,
            "vector {i}: decodes to a different event"
        );
        assert_eq!(event.body.tag(), v["tag"].as_str().unwrap());
        assert_eq!(event.index, i as u64);
        assert_eq!(
            event.prev, prev,
            "vector {i}: prev is the previous chain hash"
        );
        let hash = entry::chain_hash(body);
        assert_eq!(
            hash.to_hex(),
            v["chain_hash"].as_str().unwrap(),
            "vector {i}: chain hash"
        );
        prev = hash;
        let signer_id = Bytes32(hex_field(v, "signer_id").try_into().unwrap());
        assert_eq!(event.signer, signer_id);
        let (_, key) = keys
            .iter()
            .find(|(id, _)| *id == signer_id)
            .expect("signer listed");
        key.verify_strict(&entry::signing_message(body), &Signature::from_bytes(&sig))
            .unwrap_or_else(|e| panic!("vector {i}: signature does not verify: {e}"));
        msgs.push((i as u64 + 1, Bytes::from(entry_bytes)));
    }
    // And the whole file is one valid ledger under its pinned root.
    let root = Bytes32(
        hex_field(&stored["signers"][0], "public_key")
            .try_into()
            .unwrap(),
    );
    let mut state = ChainState::new(LedgerId::new(LEDGER).unwrap(), Some(root));
    let (out, err) = state.check_batch(msgs);
    assert_eq!(err, None);
    for c in &out {
        assert!(matches!(c, Checked::Event(_)), "{c:?}");
    }
    assert_eq!(state.head().unwrap().hash, prev);
    assert!(
        !state.is_active_writer(&signer(WRITER_SEED).id()),
        "retired by the last vector"
    );
}

#[test]
fn string_enum_forms_are_frozen() {
    // The forms in the vector file are compared by `golden_vectors`; here: they are distinct and
    // parse back.
    fn check<T>(all: &[T])
    where
        T: std::fmt::Display
            + std::str::FromStr
            + PartialEq
            + std::fmt::Debug
            + Serialize
            + serde::de::DeserializeOwned,
    {
        let forms: BTreeSet<String> = all.iter().map(|v| v.to_string()).collect();
        assert_eq!(forms.len(), all.len(), "duplicate string form");
        for v in all {
            let s = v.to_string();
            assert!(matches!(s.parse::<T>(), Ok(ref p) if p == v), "{s}");
            assert_eq!(
                canonical::encode(v),
                canonical::encode(&s),
                "{s} encodes as its string"
            );
            assert_eq!(&canonical::decode::<T>(&canonical::encode(v)).unwrap(), v);
        }
    }
    check(KeyType::ALL);
    check(KeyState::ALL);
    check(Operation::ALL);
    check(SignerRole::ALL);
    for (v, s) in KeyType::ALL.iter().map(|v| (v, v.as_str())) {
        assert_eq!(v.to_string(), s);
    }
}

// ---- canonical refusals -----------------------------------------------------------------------

/// A writer event with a `count` of 200 (`cc c8`) and a small index.
fn refusal_sample() -> Event {
    signed_samples()
        .into_iter()
        .find(|s| s.event.request_id.as_str() == "refused-1")
        .unwrap()
        .event
}

/// Replaces the one occurrence of `needle` in `hay`.
fn replace_once(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let hits: Vec<usize> = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "needle {} must occur exactly once",
        hex::encode(needle)
    );
    let at = hits[0];
    [&hay[..at], with, &hay[at + needle.len()..]].concat()
}

/// Offset of `event.index` in its canonical encoding: after the array header, format and ledger.
fn index_offset(e: &Event) -> usize {
    1 + canonical::encode(&e.format).len() + canonical::encode(&e.ledger).len()
}

fn assert_malformed(r: Result<Event, DecodeError>, what: &str) {
    match r {
        Err(DecodeError::Malformed(_)) => {}
        other => panic!("{what}: expected Malformed, got {other:?}"),
    }
}

fn assert_non_canonical(r: Result<Event, DecodeError>, what: &str) {
    match r {
        Err(DecodeError::NonCanonical { .. }) => {}
        other => panic!("{what}: expected NonCanonical, got {other:?}"),
    }
}

/// The positional form of an `Event`, spelled out as a tuple: proves the field order is the
/// schema and lets a test change one element.
#[allow(clippy::type_complexity)]
fn event_tuple<B: Serialize>(
    e: &Event,
    body: B,
) -> (
    u16,
    &LedgerId,
    u64,
    Bytes32,
    u64,
    &Actor,
    Option<Bytes32>,
    &RequestId,
    Bytes32,
    B,
) {
    (
        e.format,
        &e.ledger,
        e.index,
        e.prev,
        e.time_ms,
        &e.actor,
        e.context,
        &e.request_id,
        e.signer,
        body,
    )
}

fn refused_payload(e: &Event) -> &RequestRefused {
    match &e.body {
        EventBody::RequestRefused(r) => r,
        other => panic!("not a refusal: {other:?}"),
    }
}

#[test]
fn canonical_form_is_positional_array() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    assert_eq!(bytes[0], 0x9a, "Event is a 10-element array");
    let tuple =
        rmp_serde::to_vec(&event_tuple(&e, ("RequestRefused", refused_payload(&e)))).unwrap();
    assert_eq!(tuple, bytes, "field order is the schema");
    assert_eq!(canonical::decode::<Event>(&bytes).unwrap(), e);
}

#[test]
fn refuses_map_form() {
    let e = refusal_sample();
    let named = rmp_serde::to_vec_named(&e).unwrap();
    assert_ne!(named, canonical::encode(&e));
    assert_eq!(named[0] & 0xf0, 0x80, "to_vec_named writes a map");
    // rmp-serde itself accepts the map form for the same value...
    assert_eq!(rmp_serde::from_slice::<Event>(&named).unwrap(), e);
    // ...canonical decoding does not.
    assert_non_canonical(canonical::decode::<Event>(&named), "map form");
}

#[test]
fn refuses_non_minimal_integers() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    let at = index_offset(&e);
    assert!(e.index < 128);
    assert_eq!(bytes[at], e.index as u8, "index is a positive fixint");
    // uint64, uint32, uint16, uint8 and int8 spellings of the same index.
    let mut spellings: Vec<Vec<u8>> = vec![
        [&[0xcf][..], &e.index.to_be_bytes()].concat(),
        [&[0xce][..], &(e.index as u32).to_be_bytes()].concat(),
        [&[0xcd][..], &(e.index as u16).to_be_bytes()].concat(),
        vec![0xcc, e.index as u8],
        vec![0xd0, e.index as u8],
    ];
    for s in spellings.drain(..) {
        let forged = [&bytes[..at], &s[..], &bytes[at + 1..]].concat();
        // Same value...
        assert_eq!(rmp_serde::from_slice::<Event>(&forged).unwrap(), e);
        // ...refused, and reported as non-canonical.
        match canonical::decode::<Event>(&forged) {
            Err(DecodeError::NonCanonical { len, reencoded_len }) => {
                assert_eq!(len, bytes.len() + s.len() - 1);
                assert_eq!(reencoded_len, bytes.len());
            }
            other => panic!(
                "index spelled {}: expected NonCanonical, got {other:?}",
                hex::encode(&s)
            ),
        }
    }
    // A u32 inside the body: count 200 is `cc c8`; as uint32 it is refused.
    let payload = canonical::encode(refused_payload(&e));
    let wide = replace_once(&payload, &[0xcc, 0xc8], &[0xce, 0, 0, 0, 0xc8]);
    let forged = replace_once(&bytes, &payload, &wide);
    assert_non_canonical(canonical::decode::<Event>(&forged), "count as uint32");
}

#[test]
fn refuses_non_minimal_string_header() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    let ledger = canonical::encode(&e.ledger);
    assert_eq!(ledger[0], 0xa0 | LEDGER.len() as u8, "fixstr");
    let str8 = [&[0xd9, LEDGER.len() as u8][..], LEDGER.as_bytes()].concat();
    let forged = replace_once(&bytes, &ledger, &str8);
    assert_non_canonical(canonical::decode::<Event>(&forged), "ledger id as str8");
}

#[test]
fn refuses_trailing_bytes() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    for tail in [&[0xc0][..], &[0x00], &bytes[..]] {
        let forged = [&bytes[..], tail].concat();
        assert!(
            canonical::decode::<Event>(&forged).is_err(),
            "trailing {}",
            hex::encode(tail)
        );
        assert_non_canonical(canonical::decode::<Event>(&forged), "trailing bytes");
    }
}

#[test]
fn refuses_truncation() {
    let bytes = canonical::encode(&refusal_sample());
    for n in 0..bytes.len() {
        assert_malformed(
            canonical::decode::<Event>(&bytes[..n]),
            &format!("prefix of {n} bytes"),
        );
    }
}

#[test]
fn refuses_bytes32_spelled_otherwise() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    let signer = canonical::encode(&e.signer);
    assert_eq!(signer.len(), 34);
    assert_eq!(&signer[..2], &[0xc4, 0x20], "Bytes32 is bin8 of 32 bytes");
    // As an array of 32 integers (serde's default for [u8; 32]).
    let as_array = rmp_serde::to_vec(&e.signer.0).unwrap();
    assert_eq!(as_array[0], 0xdc, "array16");
    let forged = replace_once(&bytes, &signer, &as_array);
    assert_malformed(canonical::decode::<Event>(&forged), "Bytes32 as array");
    // As the same bytes in a bin16 (non-minimal length).
    let bin16 = [&[0xc5, 0x00, 0x20][..], &e.signer.0].concat();
    let forged = replace_once(&bytes, &signer, &bin16);
    assert_non_canonical(canonical::decode::<Event>(&forged), "Bytes32 as bin16");
    // Too short and too long.
    for len in [31usize, 33] {
        let other = [&[0xc4, len as u8][..], &vec![7u8; len]].concat();
        let forged = replace_once(&bytes, &signer, &other);
        assert_malformed(
            canonical::decode::<Event>(&forged),
            &format!("Bytes32 of {len} bytes"),
        );
    }
    // As a string.
    let as_str = [&[0xd9, 0x20][..], &[b'a'; 32]].concat();
    let forged = replace_once(&bytes, &signer, &as_str);
    assert_malformed(canonical::decode::<Event>(&forged), "Bytes32 as str");
}

#[test]
fn refuses_unknown_event_tag() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    let tag = canonical::encode(&"RequestRefused");
    for other in ["RequestRefusex", "requestRefused", "KeyCreatedXXXX"] {
        let forged = replace_once(&bytes, &tag, &canonical::encode(&other));
        match canonical::decode::<Event>(&forged) {
            Err(DecodeError::Malformed(m)) => assert!(m.contains("unknown event type"), "{m}"),
            r => panic!("tag {other}: expected Malformed, got {r:?}"),
        }
    }
    // A known tag with another variant's payload is refused too.
    let forged = replace_once(&bytes, &tag, &canonical::encode(&"KeyCreated"));
    assert_malformed(
        canonical::decode::<Event>(&forged),
        "KeyCreated tag on a RequestRefused",
    );
}

#[test]
fn refuses_wrong_arity() {
    let e = refusal_sample();
    let bytes = canonical::encode(&e);
    let payload = refused_payload(&e);
    // Event with 11 elements (an extra nil at the end).
    let eleven = [&[0x9b][..], &bytes[1..], &[0xc0]].concat();
    assert_malformed(canonical::decode::<Event>(&eleven), "Event of 11 elements");
    // Event with 9 elements (no body).
    let nine = rmp_serde::to_vec(&(
        e.format,
        &e.ledger,
        e.index,
        e.prev,
        e.time_ms,
        &e.actor,
        e.context,
        &e.request_id,
        e.signer,
    ))
    .unwrap();
    assert_eq!(nine[0], 0x99);
    assert_malformed(canonical::decode::<Event>(&nine), "Event of 9 elements");
    // Body of 1 and of 3 elements.
    let one = rmp_serde::to_vec(&event_tuple(&e, ("RequestRefused",))).unwrap();
    assert_malformed(canonical::decode::<Event>(&one), "body [tag]");
    let three = rmp_serde::to_vec(&event_tuple(&e, ("RequestRefused", payload, 0u8))).unwrap();
    assert_malformed(canonical::decode::<Event>(&three), "body [tag, payload, 0]");
    // Payload with one field missing and one too many.
    let short = (
        &payload.key,
        &payload.tenant,
        payload.operation,
        &payload.code,
        &payload.reason,
        payload.count,
        payload.first_ms,
    );
    let forged = rmp_serde::to_vec(&event_tuple(&e, ("RequestRefused", short))).unwrap();
    assert_malformed(canonical::decode::<Event>(&forged), "payload of 7 fields");
    let long = (
        &payload.key,
        &payload.tenant,
        payload.operation,
        &payload.code,
        &payload.reason,
        payload.count,
        payload.first_ms,
        payload.last_ms,
        0u8,
    );
    let forged = rmp_serde::to_vec(&event_tuple(&e, ("RequestRefused", long))).unwrap();
    assert_malformed(canonical::decode::<Event>(&forged), "payload of 9 fields");
    // A grantee of three elements.
    let grant = Grant {
        grant_id: "g".into(),
        grantee: Grantee::Role("r".into()),
        operations: vec![],
        conditions: GrantConditions {
            require_platform: false,
            measurement: None,
            not_before_ms: None,
            not_after_ms: None,
        },
    };
    let good = canonical::encode(&grant);
    let grantee = canonical::encode(&grant.grantee);
    let bad = replace_once(
        &good,
        &grantee,
        &rmp_serde::to_vec(&("role", "r", 0u8)).unwrap(),
    );
    assert!(
        canonical::decode::<Grant>(&bad).is_err(),
        "grantee of 3 elements"
    );
}

#[test]
fn refuses_absent_option_instead_of_nil() {
    // `context: None` is an explicit nil; dropping it shifts every later field.
    let e = signed_samples()
        .into_iter()
        .find(|s| s.event.context.is_none())
        .unwrap()
        .event;
    let without = rmp_serde::to_vec(&(
        e.format,
        &e.ledger,
        e.index,
        e.prev,
        e.time_ms,
        &e.actor,
        &e.request_id,
        e.signer,
        &e.body,
    ))
    .unwrap();
    assert!(canonical::decode::<Event>(&without).is_err());
}

/// Deeply nested junk where the body allows any value (an extra element) must be refused, not
/// overflow the stack: a stack overflow aborts the whole process (every verifier reading the
/// stream), so one published message would take the service down.
///
/// rmp-serde stops at depth 1024, but an unoptimised build spends about 4 KiB of stack per level
/// (serde's `IgnoredAny` through rmp-serde), so a 2 MiB thread (the default for std, tokio and
/// rayon threads) overflows from about 500 levels. The check runs in a child process so that an
/// overflow fails this test instead of aborting the test binary.
#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "deep_nesting_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEYLEDGER_DEEP_NESTING_CHILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "decoding deeply nested MessagePack crashed the process ({}); stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child half of `deep_nesting_is_refused_without_overflowing_the_stack` (a no-op otherwise).
#[test]
fn deep_nesting_child() {
    if std::env::var_os("KEYLEDGER_DEEP_NESTING_CHILD").is_none() {
        return;
    }
    let e = refusal_sample();
    let payload = refused_payload(&e);
    // The body's extra element is the very last byte: replace it with nested arrays.
    let three = rmp_serde::to_vec(&event_tuple(&e, ("RequestRefused", payload, 0u8))).unwrap();
    assert_eq!(*three.last().unwrap(), 0);
    for depth in [10usize, 100, 500, 1_000, 1_023, 1_024, 100_000] {
        let mut forged = three[..three.len() - 1].to_vec();
        forged.extend(std::iter::repeat_n(0x91u8, depth));
        forged.push(0xc0);
        eprintln!("nesting {depth}");
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                assert_malformed(
                    canonical::decode::<Event>(&forged),
                    &format!("nesting {depth}"),
                )
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

// ---- properties -------------------------------------------------------------------------------

fn id_string() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,64}".prop_filter("\"_\" alone is reserved", |s| s != "_")
}

fn arb_key() -> impl Strategy<Value = KeyId> {
    id_string().prop_map(|s| KeyId::new(s).unwrap())
}

fn arb_tenant() -> impl Strategy<Value = TenantId> {
    id_string().prop_map(|s| TenantId::new(s).unwrap())
}

fn arb_request() -> impl Strategy<Value = RequestId> {
    id_string().prop_map(|s| RequestId::new(s).unwrap())
}

fn arb_ledger() -> impl Strategy<Value = LedgerId> {
    id_string().prop_map(|s| LedgerId::new(s).unwrap())
}

fn arb_b32() -> impl Strategy<Value = Bytes32> {
    any::<[u8; 32]>().prop_map(Bytes32)
}

/// Any text, including control characters and non-ASCII, across the str length markers.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "(?s).{0,40}",
        1 => "(?s).{30,300}",
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_key_type() -> impl Strategy<Value = KeyType> {
    proptest::sample::select(KeyType::ALL)
}

fn arb_state() -> impl Strategy<Value = KeyState> {
    proptest::sample::select(KeyState::ALL)
}

fn arb_op() -> impl Strategy<Value = Operation> {
    proptest::sample::select(Operation::ALL)
}

fn arb_actor() -> impl Strategy<Value = Actor> {
    (
        text(),
        proptest::option::of(arb_tenant()),
        proptest::option::of(text()),
    )
        .prop_map(|(principal, tenant, token_id)| Actor {
            principal,
            tenant,
            token_id,
        })
}

fn arb_label() -> impl Strategy<Value = Label> {
    (text(), text()).prop_map(|(name, value)| Label { name, value })
}

fn arb_spec() -> impl Strategy<Value = KeySpec> {
    (
        arb_key(),
        arb_tenant(),
        text(),
        arb_key_type(),
        arb_state(),
        any::<bool>(),
        proptest::option::of(any::<u64>()),
        proptest::option::of((any::<u8>(), any::<u8>())),
        proptest::collection::vec(arb_label(), 0..6),
    )
        .prop_map(
            |(key, tenant, name, key_type, state, exportable, rotation_period_s, split, labels)| {
                KeySpec {
                    key,
                    tenant,
                    name,
                    key_type,
                    state,
                    exportable,
                    rotation_period_s,
                    split: split.map(|(threshold, shares)| SplitSpec { threshold, shares }),
                    labels,
                }
            },
        )
}

fn arb_sealed() -> impl Strategy<Value = SealedMaterial> {
    (arb_b32(), bytes(16), bytes(300)).prop_map(|(dek_id, nonce, ciphertext)| SealedMaterial {
        dek_id,
        nonce,
        ciphertext,
    })
}

fn arb_material() -> impl Strategy<Value = VersionMaterial> {
    (
        any::<u32>(),
        proptest::collection::vec(arb_sealed(), 0..4),
        proptest::option::of(bytes(70).prop_map(ByteBuf::from)),
    )
        .prop_map(|(version, sealed, public_key)| VersionMaterial {
            version,
            sealed,
            public_key,
        })
}

fn arb_grantee() -> impl Strategy<Value = Grantee> {
    prop_oneof![
        text().prop_map(Grantee::Principal),
        text().prop_map(Grantee::Role),
        arb_tenant().prop_map(Grantee::Tenant),
        text().prop_map(Grantee::PlatformGroup),
    ]
}

fn arb_grant() -> impl Strategy<Value = Grant> {
    (
        text(),
        arb_grantee(),
        proptest::collection::vec(arb_op(), 0..8),
        (
            any::<bool>(),
            proptest::option::of(arb_b32()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
        ),
    )
        .prop_map(
            |(
                grant_id,
                grantee,
                operations,
                (require_platform, measurement, not_before_ms, not_after_ms),
            )| Grant {
                grant_id,
                grantee,
                operations,
                conditions: GrantConditions {
                    require_platform,
                    measurement,
                    not_before_ms,
                    not_after_ms,
                },
            },
        )
}

fn arb_use() -> impl Strategy<Value = KeyUse> {
    (
        arb_key(),
        arb_tenant(),
        any::<u32>(),
        arb_op(),
        text(),
        arb_request(),
        proptest::option::of(arb_b32()),
    )
        .prop_map(
            |(key, tenant, version, operation, principal, request_id, context)| KeyUse {
                key,
                tenant,
                version,
                operation,
                principal,
                request_id,
                context,
            },
        )
}

fn arb_role() -> impl Strategy<Value = SignerRole> {
    proptest::sample::select(SignerRole::ALL)
}

fn arb_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        1 => (arb_b32(), arb_b32()).prop_map(|(root_key, kek_id)| LedgerCreated { root_key, kek_id }.into()),
        1 => (arb_b32(), arb_b32(), arb_role(), text()).prop_map(|(signer, public_key, role, label)| {
            SignerEnrolled {
                signer,
                public_key,
                role,
                label,
            }
            .into()
        }),
        1 => (arb_b32(), text()).prop_map(|(signer, reason)| SignerRetired { signer, reason }.into()),
        1 => (text(), arb_b32(), proptest::collection::vec(arb_tenant(), 0..4)).prop_map(
            |(issuer, public_key, tenants)| IssuerTrusted {
                issuer,
                public_key,
                tenants
            }
            .into()
        ),
        1 => (text(), text()).prop_map(|(issuer, reason)| IssuerRevoked { issuer, reason }.into()),
        1 => (text(), arb_b32(), text(), proptest::collection::vec(arb_b32(), 0..4)).prop_map(
            |(platform, attestation_key, group, measurements)| PlatformEnrolled {
                platform,
                attestation_key,
                group,
                measurements,
            }
            .into()
        ),
        1 => (text(), text()).prop_map(|(platform, reason)| PlatformRevoked { platform, reason }.into()),
        1 => (arb_b32(), arb_b32())
            .prop_map(|(old_kek_id, new_kek_id)| MasterKeyRotated { old_kek_id, new_kek_id }.into()),
        3 => (arb_spec(), arb_material()).prop_map(|(spec, material)| KeyCreated { spec, material }.into()),
        1 => (arb_spec(), arb_material(), proptest::option::of(text())).prop_map(
            |(spec, material, wrapped_by)| KeyImported {
                spec,
                material,
                wrapped_by
            }
            .into()
        ),
        1 => (arb_key(), arb_material()).prop_map(|(key, material)| KeyRotated { key, material }.into()),
        1 => (arb_key(), arb_state(), arb_state(), text())
            .prop_map(|(key, from, to, reason)| KeyStateChanged { key, from, to, reason }.into()),
        1 => (arb_key(), arb_state(), any::<u64>(), text()).prop_map(|(key, from, compromised_at_ms, reason)| {
            KeyCompromised {
                key,
                from,
                compromised_at_ms,
                reason,
            }
            .into()
        }),
        1 => (arb_key(), any::<u32>(), any::<u32>()).prop_map(|(key, min_encrypt_version, min_decrypt_version)| {
            KeyVersionsBounded {
                key,
                min_encrypt_version,
                min_decrypt_version,
            }
            .into()
        }),
        1 => (arb_key(), any::<u64>())
            .prop_map(|(key, destroy_after_ms)| KeyDestructionScheduled { key, destroy_after_ms }.into()),
        1 => arb_key().prop_map(|key| KeyDestructionCancelled { key }.into()),
        1 => (
            arb_key(),
            proptest::collection::vec(any::<u32>(), 0..6),
            proptest::collection::vec(arb_b32(), 0..6)
        )
            .prop_map(|(key, versions, erased_deks)| KeyDestroyed {
                key,
                versions,
                erased_deks
            }
            .into()),
        3 => (arb_key(), arb_grant()).prop_map(|(key, grant)| GrantAdded { key, grant }.into()),
        1 => (arb_key(), text()).prop_map(|(key, grant_id)| GrantRevoked { key, grant_id }.into()),
        1 => (arb_key(), any::<u32>(), proptest::option::of(arb_b32()))
            .prop_map(|(key, version, sealed_to)| MaterialAccessed { key, version, sealed_to }.into()),
        3 => proptest::collection::vec(arb_use(), 0..20).prop_map(|uses| KeysUsed { uses }.into()),
        3 => (
            proptest::option::of(arb_key()),
            proptest::option::of(arb_tenant()),
            arb_op(),
            text(),
            text(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(key, tenant, operation, code, reason, count, first_ms, last_ms)| {
                RequestRefused {
                    key,
                    tenant,
                    operation,
                    code,
                    reason,
                    count,
                    first_ms,
                    last_ms,
                }
                .into()
            }),
        1 => (text(), text(), arb_b32(), arb_b32(), arb_b32(), bytes(80)).prop_map(
            |(group, platform, nonce, measurement, transport_key, signature)| {
                PlatformAttested {
                    group,
                    quote: Quote {
                        platform,
                        nonce,
                        measurement,
                        transport_key,
                        signature: ByteBuf::from(signature),
                    },
                }
                .into()
            }
        ),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        any::<u16>(),
        arb_ledger(),
        any::<u64>(),
        arb_b32(),
        any::<u64>(),
        arb_actor(),
        proptest::option::of(arb_b32()),
        arb_request(),
        arb_b32(),
        arb_body(),
    )
        .prop_map(
            |(format, ledger, index, prev, time_ms, actor, context, request_id, signer, body)| {
                Event {
                    format,
                    ledger,
                    index,
                    prev,
                    time_ms,
                    actor,
                    context,
                    request_id,
                    signer,
                    body,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn prop_round_trip(e in arb_event()) {
        let bytes = canonical::encode(&e);
        let back: Event = canonical::decode(&bytes).map_err(|err| TestCaseError::fail(format!("{err}")))?;
        prop_assert_eq!(&back, &e);
        // Deterministic: same value, same bytes; and the decoded value re-encodes identically.
        prop_assert_eq!(canonical::encode(&e.clone()), bytes.clone());
        prop_assert_eq!(canonical::encode(&back), bytes);
    }

    #[test]
    fn prop_map_form_and_trailing_bytes_refused(e in arb_event(), extra in any::<u8>()) {
        let named = rmp_serde::to_vec_named(&e).unwrap();
        prop_assert!(canonical::decode::<Event>(&named).is_err());
        let mut longer = canonical::encode(&e);
        longer.push(extra);
        prop_assert!(canonical::decode::<Event>(&longer).is_err());
    }

    #[test]
    fn prop_strict_prefix_refused(e in arb_event(), cut in any::<proptest::sample::Index>()) {
        let bytes = canonical::encode(&e);
        let n = cut.index(bytes.len());
        prop_assert!(canonical::decode::<Event>(&bytes[..n]).is_err());
    }

    /// Chaining and signing is deterministic and the framed entry round-trips.
    #[test]
    fn prop_signed_entry_deterministic(
        seed in any::<[u8; 32]>(),
        ledger in arb_ledger(),
        index in 0u64..u64::MAX,
        prev in arb_b32(),
        time_ms in any::<u64>(),
        actor in arb_actor(),
        context in proptest::option::of(arb_b32()),
        request_id in arb_request(),
        body in arb_body(),
    ) {
        let draft = Draft { request_id, actor, context, body };
        let tip = ChainTip { next_index: index, prev };
        let signer = EventSigner::new(SigningKey::from_bytes(&seed));
        let (a, tip_a) = chain_and_sign(&signer, &ledger, tip, time_ms, std::slice::from_ref(&draft));
        let (b, tip_b) = chain_and_sign(&signer, &ledger, tip, time_ms, &[draft]);
        prop_assert_eq!(&a[0].entry, &b[0].entry);
        prop_assert_eq!(tip_a, tip_b);
        prop_assert_eq!(tip_a.prev, a[0].hash);
        let (body, sig) = entry::split(&a[0].entry).unwrap();
        prop_assert_eq!(canonical::decode::<Event>(body).unwrap(), a[0].event.clone());
        prop_assert_eq!(entry::chain_hash(body), a[0].hash);
        let key = SigningKey::from_bytes(&seed).verifying_key();
        prop_assert!(key.verify_strict(&entry::signing_message(body), &Signature::from_bytes(&sig)).is_ok());
    }
}
