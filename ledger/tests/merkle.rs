//! The Merkle and checkpoint layer: RFC 6962 / RFC 9162 trees and proofs, C2SP signed notes,
//! checkpoints and cosignatures.
//!
//! - Known answers (`ledger/test-vectors/merkle-v1.json`, every section names its source): the
//!   RFC 6962 test tree of transparency-dev/merkle (roots, node hashes, proofs), the RFC 9162
//!   §2.1.5 example, every inclusion and consistency probe of transparency-dev/merkle's
//!   `testdata` (happy paths and tampered proofs), a real CT log (Argon 2020: an inclusion proof
//!   in a tree of 961,984,013 leaves and a consistency proof), Go's `sumdb/note` keys and notes
//!   (signatures reproduced byte for byte), the C2SP signed-note and tlog-cosignature examples,
//!   Go's sumdb tree body, and a keyledger checkpoint over the frozen event chain of
//!   `events-v1.json`, computed by an independent Python script. Never regenerated.
//! - Properties: for random sizes up to 300, every proof matches the RFC's recursive definition
//!   and verifies, and any single-bit change of proof, leaf, root, index or sizes fails;
//!   checkpoint sign → format → parse → verify round trips, and any tampering fails.
//! - Timing: proofs at one million leaves, printed (run with `--nocapture`), not asserted.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use serde_json::Value;

use ledger::checkpoint::{
    key_id, ledger_origin, Checkpoint, CheckpointError, KeyKind, Note, NoteError, NoteSignature,
    VerifiedCheckpoint, VerifierKey, Verifiers, VkeyError, SIG_TYPE_COSIGNATURE_V1,
};
use ledger::merkle::{
    leaf_hash, node_hash, verify_consistency, verify_inclusion, Frontier, Hash, Tree, TreeError,
    VerifyError, EMPTY_ROOT,
};
use ledger::{Bytes32, ChainState, Checked, LedgerId};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/merkle-v1.json");
const EVENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/events-v1.json");

fn vectors() -> Value {
    serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("merkle-v1.json")).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a u64: {v}"))
}

fn hx(v: &Value) -> Hash {
    hex::decode(s(v)).unwrap().try_into().unwrap()
}

fn hx_list(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(hx).collect()
}

fn b64(v: &Value) -> Vec<u8> {
    B64.decode(s(v)).unwrap()
}

fn b64_32(v: &Value) -> Hash {
    b64(v).try_into().unwrap()
}

fn reference_mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = largest_pow2_below(n);
            node_hash(&reference_mth(&leaves[..k]), &reference_mth(&leaves[k..]))
        }
    }
}

fn largest_pow2_below(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// RFC 9162 §2.1.3.1 `PATH`, written straight from the definition.
fn reference_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    if d.len() == 1 {
        return vec![];
    }
    let k = largest_pow2_below(d.len());
    let (mut p, sib) = if m < k {
        (reference_path(m, &d[..k]), reference_mth(&d[k..]))
    } else {
        (reference_path(m - k, &d[k..]), reference_mth(&d[..k]))
    };
    p.push(sib);
    p
}

/// RFC 9162 §2.1.4.1 `SUBPROOF`, written straight from the definition.
fn reference_subproof(m: usize, d: &[Hash], known: bool) -> Vec<Hash> {
    if m == d.len() {
        return if known {
            vec![]
        } else {
            vec![reference_mth(d)]
        };
    }
    let k = largest_pow2_below(d.len());
    let (mut p, sib) = if m <= k {
        (
            reference_subproof(m, &d[..k], known),
            reference_mth(&d[k..]),
        )
    } else {
        (
            reference_subproof(m - k, &d[k..], false),
            reference_mth(&d[..k]),
        )
    };
    p.push(sib);
    p
}

// ---- RFC 6962 test tree -------------------------------------------------------------------------

#[test]
fn rfc6962_roots_and_node_hashes() {
    let v = vectors();
    let t = &v["rfc6962"];
    let leaves: Vec<Vec<u8>> = t["leaves_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| hex::decode(s(l)).unwrap())
        .collect();
    let nodes: Vec<Vec<Hash>> = t["node_hashes_hex"]
        .as_array()
        .unwrap()
        .iter()
        .map(hx_list)
        .collect();
    let roots = hx_list(&t["roots_hex"]);
    assert_eq!(roots.len(), leaves.len() + 1);
    assert_eq!(roots[0], EMPTY_ROOT);

    let mut tree = Tree::new();
    let mut frontier = Frontier::new();
    for (i, leaf) in leaves.iter().enumerate() {
        assert_eq!(leaf_hash(leaf), nodes[0][i], "leaf hash {i}");
        assert_eq!(tree.push_leaf(leaf), i as u64);
        frontier.push(leaf_hash(leaf));
    }
    for (n, want) in roots.iter().enumerate() {
        assert_eq!(tree.root(n as u64).unwrap(), *want, "root of {n}");
    }
    assert_eq!(frontier.root(), roots[8]);
    assert_eq!(tree.current_root(), roots[8]);
    // Every complete subtree: level l, index i covers leaves [i·2^l, (i+1)·2^l).
    for (l, row) in nodes.iter().enumerate().skip(1) {
        for (i, want) in row.iter().enumerate() {
            let got = node_hash(&nodes[l - 1][2 * i], &nodes[l - 1][2 * i + 1]);
            assert_eq!(got, *want, "node {l}/{i}");
        }
    }
}

#[test]
fn rfc6962_published_proofs() {
    let v = vectors();
    let t = &v["rfc6962"];
    let tree = Tree::from_leaf_hashes(hx_list(&t["node_hashes_hex"][0]));
    let roots = hx_list(&t["roots_hex"]);
    for p in t["inclusion_proofs"].as_array().unwrap() {
        let (index, size, want) = (u(&p["index"]), u(&p["size"]), hx_list(&p["proof_hex"]));
        assert_eq!(tree.inclusion_proof(index, size).unwrap(), want, "{p}");
        let leaf = tree.leaf(index).unwrap();
        verify_inclusion(&leaf, index, size, &want, &roots[size as usize]).unwrap();
    }
    for p in t["consistency_proofs"].as_array().unwrap() {
        let (old, new, want) = (
            u(&p["old_size"]),
            u(&p["new_size"]),
            hx_list(&p["proof_hex"]),
        );
        assert_eq!(tree.consistency_proof(old, new).unwrap(), want, "{p}");
        verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &want).unwrap();
    }
}

#[test]
fn rfc9162_example_tree_of_seven() {
    let v = vectors();
    let e = &v["rfc9162_example"];
    let leaves = hx_list(&v["rfc6962"]["node_hashes_hex"][0]);
    let size = u(&e["size"]);
    let tree = Tree::from_leaf_hashes(leaves[..size as usize].iter().copied());
    let [a, b, c, d, e_, f, j] = <[Hash; 7]>::try_from(&leaves[..7]).unwrap();
    let (g, h, i) = (node_hash(&a, &b), node_hash(&c, &d), node_hash(&e_, &f));
    let (k, l) = (node_hash(&g, &h), node_hash(&i, &j));
    let name = |n: &Value| match s(n) {
        "a" => a,
        "b" => b,
        "c" => c,
        "d" => d,
        "e" => e_,
        "f" => f,
        "g" => g,
        "h" => h,
        "i" => i,
        "j" => j,
        "k" => k,
        "l" => l,
        other => panic!("unknown node {other}"),
    };
    let names = |p: &Value| p.as_array().unwrap().iter().map(name).collect::<Vec<_>>();
    let root = tree.current_root();
    assert_eq!(root, node_hash(&k, &l));
    for p in e["inclusion"].as_array().unwrap() {
        let index = u(&p["index"]);
        let want = names(&p["proof"]);
        assert_eq!(tree.inclusion_proof(index, size).unwrap(), want, "{p}");
        verify_inclusion(&leaves[index as usize], index, size, &want, &root).unwrap();
    }
    for p in e["consistency"].as_array().unwrap() {
        let old = u(&p["old_size"]);
        let want = names(&p["proof"]);
        assert_eq!(tree.consistency_proof(old, size).unwrap(), want, "{p}");
        verify_consistency(old, size, &tree.root(old).unwrap(), &root, &want).unwrap();
    }
}

// ---- transparency-dev/merkle probes --------------------------------------------------------------

/// Decodes a base64 field that must hold exactly 32 bytes; `None` if it does not (such inputs
/// cannot even be expressed through the typed API).
fn probe_hash(v: &Value) -> Option<Hash> {
    B64.decode(s(v)).ok()?.try_into().ok()
}

fn probe_proof(v: &Value) -> Option<Vec<Hash>> {
    match v {
        Value::Null => Some(vec![]),
        Value::Array(a) => a.iter().map(probe_hash).collect(),
        _ => panic!("bad proof {v}"),
    }
}

#[test]
fn transparency_dev_probes() {
    let v = vectors();
    let probes = &v["transparency_dev_probes"];
    let (mut accepted, mut refused, mut untyped) = (0, 0, 0);

    for p in probes["inclusion"].as_array().unwrap() {
        let want_err = p["wantErr"].as_bool().unwrap();
        let args = (
            probe_hash(&p["leafHash"]),
            probe_proof(&p["proof"]),
            probe_hash(&p["root"]),
        );
        let (Some(leaf), Some(proof), Some(root)) = args else {
            assert!(want_err, "inclusion probe {} must fail", s(&p["file"]));
            untyped += 1;
            continue;
        };
        let got = verify_inclusion(&leaf, u(&p["leafIdx"]), u(&p["treeSize"]), &proof, &root);
        assert_eq!(
            got.is_err(),
            want_err,
            "inclusion probe {}: {got:?}",
            s(&p["file"])
        );
        if want_err {
            refused += 1
        } else {
            accepted += 1
        }
    }

    // Go's verifier compares equal-size roots as byte strings of any length; this one probe
    // is accepted there with 12-byte roots, and is checked here with 32-byte equal roots.
    const GO_ONLY: &str = "sizes are equal (one) and proof is empty";
    for p in probes["consistency"].as_array().unwrap() {
        let want_err = p["wantErr"].as_bool().unwrap();
        let (size1, size2) = (u(&p["size1"]), u(&p["size2"]));
        let args = (
            probe_hash(&p["root1"]),
            probe_hash(&p["root2"]),
            probe_proof(&p["proof"]),
        );
        let (Some(root1), Some(root2), Some(proof)) = args else {
            if !want_err {
                assert_eq!(s(&p["desc"]), GO_ONLY, "{}", s(&p["file"]));
                let r = [7u8; 32];
                assert_eq!(verify_consistency(size1, size2, &r, &r, &[]), Ok(()));
            }
            untyped += 1;
            continue;
        };
        let got = verify_consistency(size1, size2, &root1, &root2, &proof);
        assert_eq!(
            got.is_err(),
            want_err,
            "consistency probe {}: {got:?}",
            s(&p["file"])
        );
        if want_err {
            refused += 1
        } else {
            accepted += 1
        }
    }
    println!(
        "transparency-dev probes: {accepted} accepted, {refused} refused, {untyped} not 32-byte \
         (refused by type)"
    );
    assert_eq!((accepted, refused, untyped), (11, 132, 53));
}

// ---- a real CT log -------------------------------------------------------------------------------

#[test]
fn ct_argon2020_real_log_proofs() {
    let v = vectors();
    let a = &v["ct_argon2020"];
    let size = u(&a["tree_size"]);
    let root = b64_32(&a["root"]);
    let leaf = leaf_hash(&b64(&a["leaf_input"]));
    let index = u(&a["leaf_index"]);
    let path: Vec<Hash> = a["audit_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64_32)
        .collect();
    verify_inclusion(&leaf, index, size, &path, &root).unwrap();
    assert!(verify_inclusion(&leaf, index + 1, size, &path, &root).is_err());
    // (`size + 1` would still verify against this root: the proof binds the size only through
    // the root, which is why size and root must come from one signed checkpoint.)

    let old = u(&a["old_size"]);
    let old_root = b64_32(&a["old_root"]);
    let cons: Vec<Hash> = a["consistency"]
        .as_array()
        .unwrap()
        .iter()
        .map(b64_32)
        .collect();
    verify_consistency(old, size, &old_root, &root, &cons).unwrap();
    assert_eq!(
        verify_consistency(old, size, &root, &root, &cons),
        Err(VerifyError::OldRootMismatch)
    );
    assert!(verify_consistency(old + 1, size, &old_root, &root, &cons).is_err());
}

// ---- keyledger: the frozen event chain as leaves -----------------------------------------------

/// Folds `events-v1.json` through `ChainState` with a foreign message slipped in, and builds the
/// tree from the verified events only: leaf i is the entry of the event with chain index i.
fn keyledger_tree() -> (Tree, Vec<Bytes>) {
    let events: Value = serde_json::from_str(&std::fs::read_to_string(EVENTS).unwrap()).unwrap();
    let root_key = Bytes32(
        hex::decode(s(&events["signers"][0]["public_key"]))
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let mut state = ChainState::new(LedgerId::new(s(&events["ledger"])).unwrap(), Some(root_key));
    let mut msgs = Vec::new();
    let mut seq = 0;
    for (i, e) in events["events"].as_array().unwrap().iter().enumerate() {
        if i == 5 {
            seq += 1;
            msgs.push((seq, Bytes::from_static(b"not an entry")));
        }
        seq += 1;
        msgs.push((seq, Bytes::from(hex::decode(s(&e["entry"])).unwrap())));
    }
    let (out, err) = state.check_batch(msgs);
    assert_eq!(err, None);
    let mut tree = Tree::new();
    let mut entries = Vec::new();
    let mut foreign = 0;
    for c in out {
        match c {
            Checked::Event(ev) => {
                let index = tree.push_leaf(ev.entry());
                assert_eq!(index, ev.event().index, "leaf index is the chain index");
                entries.push(ev.entry().clone());
            }
            Checked::Foreign(_) => foreign += 1,
        }
    }
    assert_eq!(foreign, 1);
    (tree, entries)
}

#[test]
fn keyledger_event_chain_tree() {
    let v = vectors();
    let k = &v["keyledger"];
    let (tree, _) = keyledger_tree();
    assert_eq!(tree.size(), u(&k["leaf_count"]));
    let roots = hx_list(&k["roots_hex"]);
    for (n, want) in roots.iter().enumerate() {
        assert_eq!(tree.root(n as u64).unwrap(), *want, "root of {n}");
    }
    for p in k["inclusion"].as_array().unwrap() {
        let (index, size, want) = (u(&p["index"]), u(&p["size"]), hx_list(&p["proof_hex"]));
        assert_eq!(tree.inclusion_proof(index, size).unwrap(), want, "{p}");
        let leaf = tree.leaf(index).unwrap();
        verify_inclusion(&leaf, index, size, &want, &roots[size as usize]).unwrap();
    }
    for p in k["consistency"].as_array().unwrap() {
        let (old, new, want) = (
            u(&p["old_size"]),
            u(&p["new_size"]),
            hx_list(&p["proof_hex"]),
        );
        assert_eq!(tree.consistency_proof(old, new).unwrap(), want, "{p}");
        verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &want).unwrap();
    }
}

#[test]
fn keyledger_checkpoint_golden() {
    let v = vectors();
    let c = &v["keyledger"]["checkpoint"];
    let (tree, _) = keyledger_tree();
    let origin = s(&c["origin"]);
    assert_eq!(
        origin,
        ledger_origin(
            "keyledger.example",
            &LedgerId::new("ledger-vectors-1").unwrap()
        )
    );
    let log = SigningKey::from_bytes(&hx(&c["log_seed_hex"]));
    let witness = SigningKey::from_bytes(&hx(&c["witness_seed_hex"]));
    let time = u(&c["cosignature_time"]);

    let cp = Checkpoint::new(origin, tree.size(), tree.current_root()).unwrap();
    assert_eq!(cp.body(), s(&c["body"]));
    let mut note = cp.sign(origin, &log).unwrap();
    note.cosign(s(&c["witness_name"]), &witness, time).unwrap();
    assert_eq!(note.to_string(), s(&c["note"]));

    let log_key = VerifierKey::new(origin, KeyKind::Ed25519, log.verifying_key()).unwrap();
    let wit_key = VerifierKey::new(
        s(&c["witness_name"]),
        KeyKind::CosignatureV1,
        witness.verifying_key(),
    )
    .unwrap();
    assert_eq!(log_key.to_string(), s(&c["log_vkey"]));
    assert_eq!(wit_key.to_string(), s(&c["witness_vkey"]));
    assert_eq!(VerifierKey::parse(s(&c["log_vkey"])).unwrap(), log_key);
    assert_eq!(VerifierKey::parse(s(&c["witness_vkey"])).unwrap(), wit_key);

    let opened = VerifiedCheckpoint::open(s(&c["note"]), origin, &log_key, &[wit_key]).unwrap();
    assert_eq!(opened.checkpoint(), &cp);
    let cosigs: Vec<_> = opened.cosignatures().collect();
    assert_eq!(cosigs.len(), 1);
    assert_eq!(cosigs[0].name(), s(&c["witness_name"]));
    assert_eq!(cosigs[0].timestamp(), Some(time));
    assert!(opened.note().unknown().is_empty());
}

// ---- signed notes: Go sumdb/note and C2SP vectors -----------------------------------------------

/// A Go `sumdb/note` signer key: `PRIVATE+KEY+<name>+<hex id>+base64(0x01 || seed)`.
fn go_signer(skey: &str) -> (String, SigningKey) {
    let rest = skey.strip_prefix("PRIVATE+KEY+").unwrap();
    let (name, rest) = rest.split_once('+').unwrap();
    let (_id, key) = rest.split_once('+').unwrap();
    let raw = B64.decode(key).unwrap();
    assert_eq!(raw[0], 0x01);
    (
        name.to_owned(),
        SigningKey::from_bytes(&raw[1..].try_into().unwrap()),
    )
}

#[test]
fn go_note_signatures_reproduce_byte_for_byte() {
    let v = vectors();
    let g = &v["signed_note"]["go"];
    let text = s(&g["text"]);
    let (name, peter) = go_signer(s(&g["peter_skey"]));
    let peter_vkey = VerifierKey::parse(s(&g["peter_vkey"])).unwrap();
    assert_eq!(peter_vkey.key_id(), 0xc74f20a3);
    assert_eq!(peter_vkey.public_key(), &peter.verifying_key());
    assert_eq!(peter_vkey.to_string(), s(&g["peter_vkey"]));

    let mut note = Note::new(text).unwrap();
    note.sign(&name, &peter).unwrap();
    let peter_line = s(&g["peter_sig_line"]);
    assert_eq!(note.to_string(), format!("{text}\n{peter_line}\n"));

    // ExampleSign_add_signatures: EnochRoot's key comes from an all-zero seed.
    let enoch = SigningKey::from_bytes(&hx(&g["enoch_seed_hex"]));
    let enoch_vkey = VerifierKey::parse(s(&g["enoch_vkey"])).unwrap();
    assert_eq!(
        enoch_vkey,
        VerifierKey::new("EnochRoot", KeyKind::Ed25519, enoch.verifying_key()).unwrap()
    );
    let mut opened = Note::parse(&note.to_string()).unwrap();
    opened.sign("EnochRoot", &enoch).unwrap();
    let enoch_line = s(&g["enoch_sig_line"]);
    let both = format!("{text}\n{peter_line}\n{enoch_line}\n");
    assert_eq!(opened.to_string(), both);

    // Re-signing replaces, never duplicates.
    opened.sign("EnochRoot", &enoch).unwrap();
    assert_eq!(opened.to_string(), both);
}

#[test]
fn go_note_open_semantics() {
    let v = vectors();
    let g = &v["signed_note"]["go"];
    let text = s(&g["text"]);
    let peter = VerifierKey::parse(s(&g["peter_vkey"])).unwrap();
    let enoch = VerifierKey::parse(s(&g["enoch_vkey"])).unwrap();
    let (ps, es) = (
        format!("{}\n", s(&g["peter_sig_line"])),
        format!("{}\n", s(&g["enoch_sig_line"])),
    );
    let msg = format!("{text}\n{ps}{es}");
    let note = Note::parse(&msg).unwrap();
    assert_eq!(note.text(), text);

    // One known, one unknown: the unknown one is ignored and reported.
    let only_peter = Verifiers::new([peter.clone()]).unwrap();
    let n = note.verify(&only_peter).unwrap();
    assert_eq!(n.verified().len(), 1);
    assert_eq!(
        (n.verified()[0].name(), n.verified()[0].key_id()),
        ("PeterNeumann", 0xc74f20a3)
    );
    assert_eq!(n.unknown().len(), 1);
    assert_eq!(
        (n.unknown()[0].name.as_str(), n.unknown()[0].key_id),
        ("EnochRoot", 0xaf0cfe78)
    );

    // Both known.
    let both = Verifiers::new([peter.clone(), enoch.clone(), enoch.clone()]).unwrap();
    let n = note.verify(&both).unwrap();
    assert_eq!(n.verified().len(), 2);
    assert!(n.unknown().is_empty());

    // None known.
    assert_eq!(
        note.verify(&Verifiers::default()),
        Err(NoteError::NoKnownSignature { unknown: 2 })
    );

    // Repeated lines are dropped; a second, different Enoch line is one more unknown signature.
    let tampered_enoch = format!("{}ABCD{}", &es[..60], &es[60..]);
    let msg = format!("{text}\n{ps}{ps}{es}{es}{tampered_enoch}");
    let n = Note::parse(&msg).unwrap().verify(&only_peter).unwrap();
    assert_eq!(n.verified().len(), 1);
    assert_eq!(n.unknown().len(), 2);

    // A known key whose signature fails rejects the whole note.
    let bad = format!("{text}\n{}ABCD{}", &ps[..60], &ps[60..]);
    assert_eq!(
        Note::parse(&bad).unwrap().verify(&only_peter),
        Err(NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            key_id: 0xc74f20a3
        })
    );

    // Too many signatures.
    let many = format!("{text}\n{}", ps.repeat(101));
    assert_eq!(Note::parse(&many), Err(NoteError::TooManySignatures));

    // Malformed notes (TestOpen's badMsgs).
    for m in g["malformed_notes"].as_array().unwrap() {
        assert!(Note::parse(s(m)).is_err(), "{m}");
    }
    let mut invalid_utf8 = b"\xff".to_vec();
    invalid_utf8.extend_from_slice(format!("{text}\n{ps}").as_bytes());
    assert_eq!(Note::from_bytes(&invalid_utf8), Err(NoteError::NotUtf8));
}

#[test]
fn go_vkey_manglings_are_refused() {
    let v = vectors();
    let vkey = s(&v["signed_note"]["go"]["peter_vkey"]);
    assert!(VerifierKey::parse(vkey).is_ok());
    let b = vkey.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i != 0 || j != b.len() {
                let sub = std::str::from_utf8(&b[i..j]).unwrap();
                assert!(VerifierKey::parse(sub).is_err(), "{sub}");
            }
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] += 1;
        let m = String::from_utf8(m).unwrap();
        assert!(VerifierKey::parse(&m).is_err(), "{m}");
    }
    // From TestNewVerifier: wrong key length and unknown algorithm, each with a matching id.
    // (Go decodes the first to 36 bytes; its last base64 character has non-zero padding bits,
    // which the strict decoder here refuses before the length is even looked at.)
    assert_eq!(
        VerifierKey::parse(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        ),
        Err(VkeyError::BadBase64)
    );
    assert_eq!(
        VerifierKey::parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(VkeyError::UnsupportedType(0x65))
    );
}

#[test]
fn c2sp_signed_note_example() {
    let v = vectors();
    let c = &v["signed_note"]["c2sp"];
    let key = VerifierKey::parse(s(&c["vkey"])).unwrap();
    assert_eq!(
        (key.name(), key.key_id(), key.kind()),
        ("example.com/foo", 0x530d903a, KeyKind::Ed25519)
    );
    assert_eq!(key.to_string(), s(&c["vkey"]));
    let note = Note::parse(s(&c["note"])).unwrap();
    assert_eq!(note.to_string(), s(&c["note"]));
    let n = note.verify(&Verifiers::new([key]).unwrap()).unwrap();
    assert_eq!(n.text(), "This is an example message.\n");
    assert_eq!(n.verified().len(), 1);
}

#[test]
fn c2sp_cosigned_checkpoint_example() {
    let v = vectors();
    let c = &v["checkpoint"]["c2sp_cosigned"];
    let note = Note::parse(s(&c["note"])).unwrap();
    assert_eq!(note.to_string(), s(&c["note"]));
    let cp = Checkpoint::parse(note.text()).unwrap();
    assert_eq!(cp.origin, s(&c["origin"]));
    assert_eq!(cp.size, u(&c["size"]));
    assert_eq!(cp.root, b64_32(&c["root"]));
    assert!(cp.extensions.is_empty());
    assert_eq!(cp.body(), note.text());

    let [log, witness] = note.signatures() else {
        panic!("two signatures expected")
    };
    assert_eq!(log.name, s(&c["origin"]));
    assert_eq!(format!("{:08x}", log.key_id), s(&c["log_key_id"]));
    assert_eq!(log.signature.len(), 64);
    assert_eq!(witness.name, s(&c["witness_name"]));
    assert_eq!(format!("{:08x}", witness.key_id), s(&c["witness_key_id"]));
    assert_eq!(witness.signature.len(), 8 + 64);
    let time = u64::from_be_bytes(witness.signature[..8].try_into().unwrap());
    assert_eq!(time, u(&c["cosignature_timestamp"]));

    // The keys are not published: nothing verifies, both are reported as unknown.
    assert_eq!(
        note.verify(&Verifiers::default()),
        Err(NoteError::NoKnownSignature { unknown: 2 })
    );
}

#[test]
fn go_sumdb_tree_body() {
    let v = vectors();
    let g = &v["checkpoint"]["go_sumdb_tree"];
    let cp = Checkpoint::parse(s(&g["body"])).unwrap();
    assert_eq!(cp.origin, s(&g["origin"]));
    assert_eq!(cp.size, u(&g["size"]));
    assert_eq!(cp.root, leaf_hash(s(&g["root_is_leaf_hash_of"]).as_bytes()));
    assert_eq!(cp.body(), s(&g["body"]));
    for bad in g["bad_bodies"].as_array().unwrap() {
        assert!(Checkpoint::parse(s(bad)).is_err(), "{bad}");
    }
    // Lines after the root are extension lines.
    let with_ext = format!("{}{}", s(&g["body"]), "JOE\n".repeat(1000));
    assert_eq!(Checkpoint::parse(&with_ext).unwrap().extensions.len(), 1000);
}

// ---- checkpoints: round trips and tampering --------------------------------------------------------

const ORIGIN: &str = "keyledger.example/prod-eu";
const WITNESS: &str = "witness.example/w1";

struct Fixture {
    log: SigningKey,
    witness: SigningKey,
    log_key: VerifierKey,
    wit_key: VerifierKey,
}

fn fixture() -> Fixture {
    let log = SigningKey::from_bytes(&[21; 32]);
    let witness = SigningKey::from_bytes(&[22; 32]);
    let log_key = VerifierKey::new(ORIGIN, KeyKind::Ed25519, log.verifying_key()).unwrap();
    let wit_key =
        VerifierKey::new(WITNESS, KeyKind::CosignatureV1, witness.verifying_key()).unwrap();
    Fixture {
        log,
        witness,
        log_key,
        wit_key,
    }
}

fn signed(f: &Fixture, size: u64, root: Hash) -> String {
    let mut note = Checkpoint::new(ORIGIN, size, root)
        .unwrap()
        .sign(ORIGIN, &f.log)
        .unwrap();
    note.cosign(WITNESS, &f.witness, 1_767_225_600).unwrap();
    note.to_string()
}

fn open(f: &Fixture, text: &str) -> Result<VerifiedCheckpoint, CheckpointError> {
    VerifiedCheckpoint::open(text, ORIGIN, &f.log_key, std::slice::from_ref(&f.wit_key))
}

#[test]
fn checkpoint_tampering_fails() {
    let f = fixture();
    let root = leaf_hash(b"root");
    let good = signed(&f, 1000, root);
    let opened = open(&f, &good).unwrap();
    assert_eq!(opened.checkpoint().size, 1000);
    assert_eq!(opened.cosignatures().count(), 1);

    let invalid_log = Err(CheckpointError::Note(NoteError::InvalidSignature {
        name: ORIGIN.into(),
        key_id: f.log_key.key_id(),
    }));
    // Changed size, root and origin: the log signature no longer verifies.
    let other_root = B64.encode(leaf_hash(b"other"));
    let bad_size = good.replacen("\n1000\n", "\n1001\n", 1);
    let bad_root = good.replacen(&B64.encode(root), &other_root, 1);
    let bad_origin = good.replacen("prod-eu\n1000", "prod-us\n1000", 1);
    for t in [&bad_size, &bad_root, &bad_origin] {
        assert_ne!(*t, good);
        assert_eq!(open(&f, t).map(|_| ()), invalid_log.clone(), "{t}");
    }
    // A changed signature byte.
    let mut note = Note::parse(&good).unwrap();
    let mut sig = note.signatures()[0].clone();
    sig.signature[10] ^= 1;
    note.add_signature(sig).unwrap();
    assert_eq!(open(&f, &note.to_string()).map(|_| ()), invalid_log);
    // A changed cosignature timestamp.
    let mut note = Note::parse(&good).unwrap();
    let mut cosig = note.signatures()[1].clone();
    cosig.signature[7] ^= 1;
    note.add_signature(cosig).unwrap();
    assert_eq!(
        open(&f, &note.to_string()).map(|_| ()),
        Err(CheckpointError::Note(NoteError::InvalidSignature {
            name: WITNESS.into(),
            key_id: f.wit_key.key_id()
        }))
    );
    // Another log's checkpoint, or the right note opened for another origin.
    assert!(matches!(
        VerifiedCheckpoint::open(&good, "keyledger.example/other", &f.log_key, &[]),
        Err(CheckpointError::OriginMismatch { .. })
    ));
    // Signed only by an unknown key, or only cosigned.
    let stranger = SigningKey::from_bytes(&[23; 32]);
    let by_stranger = Checkpoint::new(ORIGIN, 1000, root)
        .unwrap()
        .sign(ORIGIN, &stranger)
        .unwrap()
        .to_string();
    assert_eq!(
        open(&f, &by_stranger).map(|_| ()),
        Err(CheckpointError::Note(NoteError::NoKnownSignature {
            unknown: 1
        }))
    );
    let mut only_cosigned = Note::new(Checkpoint::new(ORIGIN, 1000, root).unwrap().body()).unwrap();
    only_cosigned.cosign(WITNESS, &f.witness, 5).unwrap();
    assert!(matches!(
        open(&f, &only_cosigned.to_string()),
        Err(CheckpointError::LogSignatureMissing { .. })
    ));
    // The log key must be a plain Ed25519 key.
    assert_eq!(
        VerifiedCheckpoint::open(&good, ORIGIN, &f.wit_key, &[]).map(|_| ()),
        Err(CheckpointError::LogKeyNotEd25519)
    );
}

#[test]
fn unknown_keys_are_ignored_and_reported() {
    let f = fixture();
    let mut note = Note::parse(&signed(&f, 7, leaf_hash(b"x"))).unwrap();
    // A stranger's cosignature, and a line under a known name with a wrong key id.
    note.cosign("witness.example/w2", &SigningKey::from_bytes(&[24; 32]), 9)
        .unwrap();
    note.add_signature(NoteSignature {
        name: WITNESS.into(),
        key_id: f.wit_key.key_id() ^ 1,
        signature: vec![0; 72],
    })
    .unwrap();
    let opened = open(&f, &note.to_string()).unwrap();
    assert_eq!(opened.cosignatures().count(), 1);
    let unknown: Vec<_> = opened
        .note()
        .unknown()
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(unknown, ["witness.example/w2", WITNESS]);
}

#[test]
fn cosignature_rules() {
    let f = fixture();
    let mut note = Note::new(Checkpoint::new(ORIGIN, 1, [1; 32]).unwrap().body()).unwrap();
    assert_eq!(
        note.cosign(WITNESS, &f.witness, 1 << 63),
        Err(NoteError::TimestampTooLarge(1 << 63))
    );
    assert_eq!(
        note.sign("bad name", &f.log),
        Err(NoteError::BadKeyName("bad name".into()))
    );
    note.cosign(WITNESS, &f.witness, (1 << 63) - 1).unwrap();
    assert_eq!(
        note.signatures()[0].key_id,
        key_id(
            WITNESS,
            SIG_TYPE_COSIGNATURE_V1,
            f.witness.verifying_key().as_bytes()
        )
    );
    // A cosignature does not verify as a plain signature of the same key, and vice versa.
    let as_plain = VerifierKey::new(WITNESS, KeyKind::Ed25519, f.witness.verifying_key()).unwrap();
    assert_ne!(as_plain.key_id(), f.wit_key.key_id());
    assert_eq!(
        note.verify(&Verifiers::new([as_plain]).unwrap()),
        Err(NoteError::NoKnownSignature { unknown: 1 })
    );
    let n = note
        .verify(&Verifiers::new([f.wit_key.clone()]).unwrap())
        .unwrap();
    assert_eq!(n.verified()[0].timestamp(), Some((1 << 63) - 1));

    // Two valid cosignatures of one witness (different times) count once; a bad second one
    // rejects the note.
    let mut later = Note::new(note.text()).unwrap();
    later.cosign(WITNESS, &f.witness, 5).unwrap();
    let twice = format!("{note}{}\n", later.signatures()[0].line());
    let wit = Verifiers::new([f.wit_key.clone()]).unwrap();
    let n = Note::parse(&twice).unwrap().verify(&wit).unwrap();
    assert_eq!(n.verified().len(), 1);
    assert_eq!(n.verified()[0].timestamp(), Some((1 << 63) - 1));
    let mut bad = later.signatures()[0].clone();
    bad.signature[0] ^= 1;
    let twice_bad = format!("{note}{}\n", bad.line());
    assert!(matches!(
        Note::parse(&twice_bad).unwrap().verify(&wit),
        Err(NoteError::InvalidSignature { .. })
    ));
}

#[test]
fn tree_refusals() {
    let tree = Tree::from_leaf_hashes((0..10u64).map(|i| leaf_hash(&i.to_be_bytes())));
    assert_eq!(
        tree.inclusion_proof(3, 11),
        Err(TreeError::SizeBeyondTree { size: 11, len: 10 })
    );
    assert_eq!(
        tree.inclusion_proof(10, 10),
        Err(TreeError::IndexBeyondSize {
            index: 10,
            size: 10
        })
    );
    assert_eq!(
        tree.consistency_proof(3, 11),
        Err(TreeError::SizeBeyondTree { size: 11, len: 10 })
    );
    assert_eq!(tree.leaf(10), None);
    let root = tree.current_root();
    let leaf = tree.leaf(3).unwrap();
    let proof = tree.inclusion_proof(3, 10).unwrap();
    assert_eq!(
        verify_inclusion(&leaf, 3, 10, &proof[..proof.len() - 1], &root),
        Err(VerifyError::ProofTooShort {
            len: proof.len() - 1
        })
    );
    let mut long = proof.clone();
    long.push(root);
    assert_eq!(
        verify_inclusion(&leaf, 3, 10, &long, &root),
        Err(VerifyError::ProofTooLong { len: long.len() })
    );
    assert_eq!(
        verify_consistency(4, 10, &tree.root(4).unwrap(), &root, &[]),
        Err(VerifyError::EmptyProof)
    );
    assert_eq!(
        verify_consistency(10, 4, &root, &root, &[]),
        Err(VerifyError::OldSizeBeyondNew { old: 10, new: 4 })
    );
    assert_eq!(
        verify_consistency(4, 4, &root, &root, &[root]),
        Err(VerifyError::ProofForEqualSizes { len: 1 })
    );
}

// ---- properties ------------------------------------------------------------------------------------

fn leaves(n: u64, salt: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(&[salt.to_be_bytes(), i.to_be_bytes()].concat()))
        .collect()
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut h = *h;
    h[bit / 8 % 32] ^= 1 << (bit % 8);
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_inclusion(size in 1u64..=300, salt in any::<u64>(), pick in any::<u64>(), bit in 0usize..256, ibit in 0u32..64, other in any::<u64>()) {
        let more = leaves(size + 64, salt);
        let all = &more[..size as usize];
        let tree = Tree::from_leaf_hashes(more.iter().copied());
        let root = tree.root(size).unwrap();
        prop_assert_eq!(root, reference_mth(all));
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).unwrap();
            prop_assert_eq!(&proof, &reference_path(index as usize, all));
            prop_assert!(verify_inclusion(&all[index as usize], index, size, &proof, &root).is_ok());
        }
        // Single-bit mutations of one proof.
        let index = pick % size;
        let leaf = all[index as usize];
        let proof = tree.inclusion_proof(index, size).unwrap();
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i], bit);
            prop_assert!(verify_inclusion(&leaf, index, size, &p, &root).is_err());
        }
        prop_assert!(verify_inclusion(&flip(&leaf, bit), index, size, &proof, &root).is_err());
        prop_assert!(verify_inclusion(&leaf, index, size, &proof, &flip(&root, bit)).is_err());
        prop_assert!(verify_inclusion(&leaf, index ^ (1 << ibit), size, &proof, &root).is_err());
        // Another size with that size's own root (a size alone is bound only through its root).
        let other = 1 + other % (size + 64);
        if other != size {
            prop_assert!(verify_inclusion(&leaf, index, other, &proof, &tree.root(other).unwrap()).is_err());
        }
        if !proof.is_empty() {
            prop_assert!(verify_inclusion(&leaf, index, size, &proof[1..], &root).is_err());
        }
    }

    #[test]
    fn prop_consistency(new in 1u64..=300, old_pick in any::<u64>(), salt in any::<u64>(), bit in 0usize..256, sbit in 0u32..64, other in any::<u64>()) {
        let more = leaves(new + 64, salt);
        let all = &more[..new as usize];
        let tree = Tree::from_leaf_hashes(more.iter().copied());
        let old = 1 + old_pick % new;
        let (old_root, new_root) = (tree.root(old).unwrap(), tree.root(new).unwrap());
        let proof = tree.consistency_proof(old, new).unwrap();
        let want = if old < new { reference_subproof(old as usize, all, true) } else { vec![] };
        prop_assert_eq!(&proof, &want);
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof).is_ok());
        // Every old size against this new size.
        for m in 1..=new {
            let p = tree.consistency_proof(m, new).unwrap();
            prop_assert!(verify_consistency(m, new, &tree.root(m).unwrap(), &new_root, &p).is_ok());
        }
        // Single-bit mutations.
        for i in 0..proof.len() {
            let mut p = proof.clone();
            p[i] = flip(&p[i], bit);
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &p).is_err());
        }
        prop_assert!(verify_consistency(old, new, &flip(&old_root, bit), &new_root, &proof).is_err());
        prop_assert!(verify_consistency(old, new, &old_root, &flip(&new_root, bit), &proof).is_err());
        prop_assert!(verify_consistency(old ^ (1 << sbit), new, &old_root, &new_root, &proof).is_err());
        // Another new size with that size's own root.
        let other = old + other % (new + 65 - old);
        if other != new {
            prop_assert!(verify_consistency(old, other, &old_root, &tree.root(other).unwrap(), &proof).is_err());
        }
        if !proof.is_empty() {
            prop_assert!(verify_consistency(old, new, &old_root, &new_root, &proof[..proof.len() - 1]).is_err());
        }
    }

    #[test]
    fn prop_frontier_matches_tree(n in 0u64..600, salt in any::<u64>()) {
        let all = leaves(n, salt);
        let mut frontier = Frontier::new();
        for h in &all {
            frontier.push(*h);
        }
        prop_assert_eq!(frontier.size(), n);
        prop_assert_eq!(frontier.root(), Tree::from_leaf_hashes(all).current_root());
    }

    #[test]
    fn prop_checkpoint_round_trip(
        host in "[a-z]{1,12}\\.[a-z]{2,6}",
        ledger in "[A-Za-z0-9_-]{2,20}",
        size in any::<u64>(),
        root in any::<[u8; 32]>(),
        ext in proptest::option::of("[ -~]{1,30}"),
        seed in any::<[u8; 32]>(),
        time in 0u64..(1 << 63),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let origin = ledger_origin(&host, &LedgerId::new(ledger).unwrap());
        let mut cp = Checkpoint::new(origin.clone(), size, root).unwrap();
        cp.extensions.extend(ext);
        let log = SigningKey::from_bytes(&seed);
        let witness = SigningKey::from_bytes(&[seed[0] ^ 0x5a; 32]);
        let mut note = cp.sign(&origin, &log).unwrap();
        note.cosign(WITNESS, &witness, time).unwrap();
        let text = note.to_string();
        prop_assert_eq!(Note::parse(&text).unwrap(), note);
        let log_key = VerifierKey::parse(
            &VerifierKey::new(&origin, KeyKind::Ed25519, log.verifying_key()).unwrap().to_string()
        ).unwrap();
        let wit_key = VerifierKey::new(WITNESS, KeyKind::CosignatureV1, witness.verifying_key()).unwrap();
        let opened = VerifiedCheckpoint::open(&text, &origin, &log_key, std::slice::from_ref(&wit_key)).unwrap();
        prop_assert_eq!(opened.checkpoint(), &cp);
        prop_assert_eq!(opened.cosignatures().next().unwrap().timestamp(), Some(time));

        // Any change to one byte of the body (kept ASCII, so the note stays UTF-8) is refused.
        let body_len = cp.body().len();
        let i = at.index(body_len);
        let mut bytes = text.clone().into_bytes();
        let changed = bytes[i] ^ (1 << bit);
        prop_assume!(changed.is_ascii() && changed != bytes[i]);
        bytes[i] = changed;
        let tampered = String::from_utf8(bytes).unwrap();
        prop_assert!(VerifiedCheckpoint::open(&tampered, &origin, &log_key, std::slice::from_ref(&wit_key)).is_err());
    }
}

// ---- timing --------------------------------------------------------------------------------------

#[test]
fn proof_timing_at_one_million_leaves() {
    const N: u64 = 1 << 20;
    let t = Instant::now();
    let mut tree = Tree::new();
    for i in 0..N {
        tree.push_leaf(&i.to_le_bytes());
    }
    let build = t.elapsed();
    let t = Instant::now();
    let root = tree.current_root();
    let root_time = t.elapsed();

    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut incl_total, mut incl_max) = (Duration::ZERO, Duration::ZERO);
    let (mut cons_total, mut cons_max) = (Duration::ZERO, Duration::ZERO);
    let (mut verify_total, runs) = (Duration::ZERO, 200u32);
    for _ in 0..runs {
        let index = next() % N;
        let t = Instant::now();
        let p = tree.inclusion_proof(index, N).unwrap();
        let d = t.elapsed();
        incl_total += d;
        incl_max = incl_max.max(d);
        let t = Instant::now();
        verify_inclusion(&tree.leaf(index).unwrap(), index, N, &p, &root).unwrap();
        verify_total += t.elapsed();

        let old = 1 + next() % (N - 1);
        let t = Instant::now();
        let p = tree.consistency_proof(old, N).unwrap();
        let d = t.elapsed();
        cons_total += d;
        cons_max = cons_max.max(d);
        let old_root = tree.root(old).unwrap();
        verify_consistency(old, N, &old_root, &root, &p).unwrap();
    }
    println!(
        "merkle timing, {N} leaves ({} build): append {:.2?} total ({:.0} ns/leaf), root {:.2?}; \
         inclusion proof avg {:.2?} max {:.2?}; consistency proof avg {:.2?} max {:.2?}; \
         inclusion verify avg {:.2?} ({runs} random proofs each)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        build,
        build.as_nanos() as f64 / N as f64,
        root_time,
        incl_total / runs,
        incl_max,
        cons_total / runs,
        cons_max,
        verify_total / runs,
    );
}
