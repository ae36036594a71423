//! Checkable by someone who does not trust the operator: signed checkpoints, inclusion and
//! consistency proofs, export bundles, offline verification, and the witness.
//!
//! - The log: leaf `i` of an RFC 6962 Merkle tree is the stored entry of the valid event with
//!   chain index `i` (`ledger::merkle`). Foreign messages are not leaves.
//! - Checkpoints: C2SP tlog-checkpoint notes (origin `keyledger/<ledger>`), signed with the
//!   writer key under the key name = origin, published to `keyledger.<ledger>.cp.log` (message
//!   id `cp-<size>`: replicas publishing the same checkpoint store it once — Ed25519 signatures
//!   are deterministic, so their notes are identical). Witnesses publish cosigned copies to
//!   `keyledger.<ledger>.cp.witness.<name>`.
//! - Who signs checkpoints is itself in the chain: a note is accepted if it is signed by a key
//!   the root enrolled as a writer. An auditor needs only the root key.
//! - A bundle holds every stored message up to a checkpoint's size (from genesis, so it verifies
//!   alone), the root key, and the checkpoints: `verify_bundle` needs no NATS.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use ledger::checkpoint::{Checkpoint, KeyKind, Note, VerifiedCheckpoint, VerifierKey};
use ledger::merkle::{self, Hash, Tree};
use ledger::nats::{LedgerConn, StreamError};
use ledger::{Bytes32, ChainError, ChainState, Checked, EventBody, ForeignMessage, LedgerId};

/// Why an audit could not be carried out (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    #[error("nats: {0}")]
    Nats(String),
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("no event at stream sequence {0}")]
    NoSuchEvent(u64),
    #[error("no checkpoint covers stream sequence {0} yet")]
    NotCheckpointed(u64),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

fn nats(e: impl std::fmt::Display) -> AuditError {
    AuditError::Nats(e.to_string())
}

/// The log as an auditor rebuilt it: chain verified, tree built, writers known.
pub struct Rebuilt {
    pub ledger: LedgerId,
    pub state: ChainState,
    pub tree: Tree,
    /// Stream sequence of each leaf (index = chain index).
    pub leaf_seqs: Vec<u64>,
    /// Every writer key the root ever enrolled.
    pub writers: Vec<Bytes32>,
    pub foreign: Vec<ForeignMessage>,
    pub chain_break: Option<ChainError>,
    /// The raw stored messages, when asked to keep them (for bundles).
    pub messages: Vec<(u64, Bytes)>,
}

impl Rebuilt {
    pub fn new(ledger: LedgerId, pinned_root: Option<Bytes32>) -> Rebuilt {
        Rebuilt {
            state: ChainState::new(ledger.clone(), pinned_root),
            ledger,
            tree: Tree::new(),
            leaf_seqs: Vec::new(),
            writers: Vec::new(),
            foreign: Vec::new(),
            chain_break: None,
            messages: Vec::new(),
        }
    }

    /// Folds stored messages in order (stops at a chain break, which is recorded).
    pub fn fold(&mut self, msgs: Vec<(u64, Bytes)>, keep: bool) {
        if self.chain_break.is_some() {
            return;
        }
        if keep {
            self.messages.extend(msgs.iter().cloned());
        }
        let (out, err) = self.state.check_batch(msgs);
        for c in out {
            match c {
                Checked::Event(v) => {
                    if let EventBody::SignerEnrolled(e) = &v.event().body {
                        if e.role == ledger::event::SignerRole::Writer {
                            self.writers.push(e.public_key);
                        }
                    }
                    self.tree.push_leaf(v.entry());
                    self.leaf_seqs.push(v.seq());
                }
                Checked::Foreign(f) => self.foreign.push(f),
            }
        }
        self.chain_break = err;
    }

    /// The chain index of the event stored at `seq`.
    pub fn index_of(&self, seq: u64) -> Option<u64> {
        self.leaf_seqs.binary_search(&seq).ok().map(|i| i as u64)
    }

    pub fn origin(&self) -> String {
        ledger::checkpoint::ledger_origin("keyledger", &self.ledger)
    }

    /// Log verifier keys: every enrolled writer, under the origin's name.
    pub fn log_keys(&self) -> Vec<VerifierKey> {
        log_keys(&self.origin(), &self.writers)
    }

    /// Judges a log checkpoint note against this log.
    pub fn check_checkpoint(&self, note: &str, cosigners: &[VerifierKey]) -> CheckpointCheck {
        check_checkpoint(
            note,
            &self.origin(),
            &self.log_keys(),
            cosigners,
            &self.tree,
        )
    }
}

/// Verifier keys for the log: each writer key, named by the origin.
pub fn log_keys(origin: &str, writers: &[Bytes32]) -> Vec<VerifierKey> {
    writers
        .iter()
        .filter_map(|w| VerifyingKey::from_bytes(&w.0).ok())
        .filter_map(|k| VerifierKey::new(origin, KeyKind::Ed25519, k).ok())
        .collect()
}

/// What a checkpoint says about the log an auditor holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CheckpointCheck {
    /// Signed by an enrolled writer, and the log's tree of that size has that root.
    Consistent { size: u64, root: String },
    /// The checkpoint commits to more events than the log holds: the tail was truncated (or
    /// the stream rolled back).
    Truncated { size: u64, have: u64 },
    /// Same size, another root: history was rewritten (a fork).
    Forked {
        size: u64,
        expected_root: String,
        found_root: String,
    },
    /// Not a valid checkpoint of this log (signature, origin, format).
    Invalid { reason: String },
}

impl CheckpointCheck {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckpointCheck::Consistent { .. })
    }
}

fn b64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

/// Judges `note` (a log checkpoint, possibly cosigned) against `tree`.
pub fn check_checkpoint(
    note: &str,
    origin: &str,
    log_keys: &[VerifierKey],
    cosigners: &[VerifierKey],
    tree: &Tree,
) -> CheckpointCheck {
    let mut last_err = String::from("no enrolled writer key");
    let verified =
        log_keys.iter().find_map(
            |k| match VerifiedCheckpoint::open(note, origin, k, cosigners) {
                Ok(v) => Some(v),
                Err(e) => {
                    last_err = e.to_string();
                    None
                }
            },
        );
    let Some(v) = verified else {
        return CheckpointCheck::Invalid { reason: last_err };
    };
    let c = v.checkpoint();
    if c.size > tree.size() {
        return CheckpointCheck::Truncated {
            size: c.size,
            have: tree.size(),
        };
    }
    match tree.root(c.size) {
        Ok(r) if r == c.root => CheckpointCheck::Consistent {
            size: c.size,
            root: b64(&c.root),
        },
        Ok(r) => CheckpointCheck::Forked {
            size: c.size,
            expected_root: b64(&c.root),
            found_root: b64(&r),
        },
        Err(e) => CheckpointCheck::Invalid {
            reason: e.to_string(),
        },
    }
}

impl Rebuilt {
    /// Folds what the stream gained since the last fold (a witness keeps its log this way).
    pub async fn catch_up(&mut self, conn: &LedgerConn, keep: bool) -> Result<(), AuditError> {
        let target = conn.last_seq().await?;
        let from = self.state.last_seq() + 1;
        ledger::nats::reader::read_range(conn, from, target, |chunk| {
            self.fold(chunk, keep);
            self.chain_break.is_none()
        })
        .await?;
        Ok(())
    }
}

/// Replays the event stream into a [`Rebuilt`] log; `progress(done, target)` after each chunk.
pub async fn rebuild(
    conn: &LedgerConn,
    pinned_root: Option<Bytes32>,
    keep_messages: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<Rebuilt, AuditError> {
    let target = conn.last_seq().await?;
    let mut r = Rebuilt::new(conn.names.ledger.clone(), pinned_root);
    ledger::nats::reader::read_range(conn, 1, target, |chunk| {
        r.fold(chunk, keep_messages);
        progress(r.state.last_seq(), target);
        r.chain_break.is_none()
    })
    .await?;
    Ok(r)
}

// ---- checkpoints on NATS ------------------------------------------------------------------------

/// Signs and publishes a checkpoint of the first `size` leaves (idempotent: message id
/// `cp-<size>`). Returns the note text.
pub async fn publish_checkpoint(
    conn: &LedgerConn,
    key: &SigningKey,
    size: u64,
    root: Hash,
) -> Result<String, AuditError> {
    let origin = conn.names.origin();
    let note = Checkpoint::new(origin.clone(), size, root)
        .and_then(|c| c.sign(&origin, key))
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let text = note.to_string();
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(Bytes::from(text.clone()))
        .message_id(format!("cp-{size}"));
    conn.js
        .send_publish(conn.names.checkpoint_subject(), msg)
        .await
        .map_err(nats)?
        .await
        .map_err(nats)?;
    Ok(text)
}

/// Publishes a witness's cosigned copy of a checkpoint.
pub async fn publish_cosigned(
    conn: &LedgerConn,
    witness: &str,
    note: &Note,
    size: u64,
) -> Result<(), AuditError> {
    let msg = async_nats::jetstream::message::PublishMessage::build()
        .payload(Bytes::from(note.to_string()))
        .message_id(format!("w-{witness}-{size}"));
    conn.js
        .send_publish(conn.names.witness_subject(witness), msg)
        .await
        .map_err(nats)?
        .await
        .map_err(nats)?;
    Ok(())
}

/// Every note published on `subject` (log checkpoints or one witness's), in order.
pub async fn notes(conn: &LedgerConn, subject: &str) -> Result<Vec<String>, AuditError> {
    let stream = conn
        .js
        .get_stream(conn.names.checkpoint_stream())
        .await
        .map_err(nats)?;
    let info = stream.cached_info().clone();
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(nats)?;
    let mut msgs = consumer.messages().await.map_err(nats)?;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
            Err(_) => return Err(AuditError::Nats("reading checkpoints stalled".into())),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(nats(e)),
            Ok(Some(Ok(m))) => {
                let pending = m.info().map_err(nats)?.pending;
                out.push(String::from_utf8_lossy(&m.payload).into_owned());
                if pending == 0 {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// The latest note on `subject`, if any.
pub async fn latest_note(conn: &LedgerConn, subject: &str) -> Result<Option<String>, AuditError> {
    let stream = conn
        .js
        .get_stream(conn.names.checkpoint_stream())
        .await
        .map_err(nats)?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some(String::from_utf8_lossy(&m.payload).into_owned())),
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            Ok(None)
        }
        Err(e) => Err(nats(e)),
    }
}

// ---- proofs -------------------------------------------------------------------------------------

fn hexs(hs: &[Hash]) -> Vec<String> {
    hs.iter().map(hex::encode).collect()
}

fn unhex32(s: &str, what: &str) -> Result<Hash, AuditError> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| AuditError::Bundle(format!("{what} is not 32 bytes of hex")))
}

/// An inclusion proof for one event against a signed checkpoint; verifiable offline with
/// [`check_inclusion`] and by any RFC 6962 verifier (SHA-256 leaf `0x00 || entry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    pub ledger: String,
    pub origin: String,
    pub seq: u64,
    pub index: u64,
    /// The stored entry (hex): its leaf hash is SHA-256(0x00 || entry).
    pub entry: String,
    pub leaf_hash: String,
    pub tree_size: u64,
    pub root: String,
    pub proof: Vec<String>,
    /// The signed checkpoint note the root comes from.
    pub checkpoint: String,
    /// The verifier key (C2SP vkey) of the writer that signed it.
    pub log_key: String,
}

/// Proves the event at `seq` is in the latest log checkpoint that covers it.
pub fn prove(
    r: &Rebuilt,
    seq: u64,
    checkpoint_notes: &[String],
) -> Result<InclusionProof, AuditError> {
    let index = r.index_of(seq).ok_or(AuditError::NoSuchEvent(seq))?;
    let keys = r.log_keys();
    let mut best: Option<(Checkpoint, String, VerifierKey)> = None;
    for n in checkpoint_notes {
        for k in &keys {
            if let Ok(v) = VerifiedCheckpoint::open(n, &r.origin(), k, &[]) {
                let c = v.checkpoint().clone();
                if c.size > index
                    && c.size <= r.tree.size()
                    && best.as_ref().is_none_or(|(b, _, _)| c.size > b.size)
                {
                    best = Some((c, n.clone(), k.clone()));
                }
            }
        }
    }
    let (c, note, key) = best.ok_or(AuditError::NotCheckpointed(seq))?;
    let proof = r
        .tree
        .inclusion_proof(index, c.size)
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let leaf = r.tree.leaf(index).unwrap_or_default();
    let entry = r
        .messages
        .iter()
        .find(|(s, _)| *s == seq)
        .map(|(_, b)| hex::encode(b))
        .unwrap_or_default();
    Ok(InclusionProof {
        ledger: r.ledger.to_string(),
        origin: r.origin(),
        seq,
        index,
        entry,
        leaf_hash: hex::encode(leaf),
        tree_size: c.size,
        root: hex::encode(c.root),
        proof: hexs(&proof),
        checkpoint: note,
        log_key: key.to_string(),
    })
}

/// Checks an inclusion proof with nothing but its contents and the log key the verifier trusts
/// (`trusted_log_key`; by default the one in the proof).
pub fn check_inclusion(
    p: &InclusionProof,
    trusted_log_key: Option<&str>,
) -> Result<(), AuditError> {
    let key = VerifierKey::parse(trusted_log_key.unwrap_or(&p.log_key))
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let v = VerifiedCheckpoint::open(&p.checkpoint, &p.origin, &key, &[])
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let c = v.checkpoint();
    let root = unhex32(&p.root, "root")?;
    if c.size != p.tree_size || c.root != root {
        return Err(AuditError::Checkpoint(
            "the proof's tree size or root is not the checkpoint's".into(),
        ));
    }
    let leaf = if p.entry.is_empty() {
        unhex32(&p.leaf_hash, "leaf_hash")?
    } else {
        let entry = hex::decode(&p.entry).map_err(|_| AuditError::Bundle("entry hex".into()))?;
        let h = merkle::leaf_hash(&entry);
        if hex::encode(h) != p.leaf_hash {
            return Err(AuditError::Checkpoint(
                "leaf hash is not the entry's".into(),
            ));
        }
        h
    };
    let proof: Vec<Hash> = p
        .proof
        .iter()
        .map(|s| unhex32(s, "proof"))
        .collect::<Result<_, _>>()?;
    merkle::verify_inclusion(&leaf, p.index, c.size, &proof, &c.root)
        .map_err(|e| AuditError::Checkpoint(format!("inclusion: {e}")))
}

/// A consistency proof between two signed checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    pub origin: String,
    pub old_checkpoint: String,
    pub new_checkpoint: String,
    pub old_size: u64,
    pub new_size: u64,
    pub proof: Vec<String>,
    pub log_key: String,
}

/// Proves that the checkpoint of size `old` is a prefix of the one of size `new`.
pub fn prove_consistency(
    r: &Rebuilt,
    old: &str,
    new: &str,
) -> Result<ConsistencyProof, AuditError> {
    let open = |n: &str| {
        r.log_keys().into_iter().find_map(|k| {
            VerifiedCheckpoint::open(n, &r.origin(), &k, &[])
                .ok()
                .map(|v| (v.checkpoint().clone(), k))
        })
    };
    let (o, key) =
        open(old).ok_or_else(|| AuditError::Checkpoint("old checkpoint invalid".into()))?;
    let (n, _) =
        open(new).ok_or_else(|| AuditError::Checkpoint("new checkpoint invalid".into()))?;
    let proof = r
        .tree
        .consistency_proof(o.size, n.size)
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    Ok(ConsistencyProof {
        origin: r.origin(),
        old_checkpoint: old.to_owned(),
        new_checkpoint: new.to_owned(),
        old_size: o.size,
        new_size: n.size,
        proof: hexs(&proof),
        log_key: key.to_string(),
    })
}

/// Checks a consistency proof with nothing but its contents and a trusted log key.
pub fn check_consistency(
    p: &ConsistencyProof,
    trusted_log_key: Option<&str>,
) -> Result<(), AuditError> {
    let key = VerifierKey::parse(trusted_log_key.unwrap_or(&p.log_key))
        .map_err(|e| AuditError::Checkpoint(e.to_string()))?;
    let open = |n: &str| {
        VerifiedCheckpoint::open(n, &p.origin, &key, &[])
            .map(|v| v.checkpoint().clone())
            .map_err(|e| AuditError::Checkpoint(e.to_string()))
    };
    let (o, n) = (open(&p.old_checkpoint)?, open(&p.new_checkpoint)?);
    let proof: Vec<Hash> = p
        .proof
        .iter()
        .map(|s| unhex32(s, "proof"))
        .collect::<Result<_, _>>()?;
    merkle::verify_consistency(o.size, n.size, &o.root, &n.root, &proof)
        .map_err(|e| AuditError::Checkpoint(format!("consistency: {e}")))
}

// ---- bundles ------------------------------------------------------------------------------------

pub const BUNDLE_FORMAT: &str = "keyledger-audit-bundle/1";

/// An export for offline verification: every stored message from genesis up to the latest
/// checkpoint (so the chain verifies alone), the root key, the enrolled signer keys, the
/// checkpoints (log-signed and witness-cosigned) with consistency proofs between them.
/// `from_seq` marks the range of interest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub ledger: String,
    pub origin: String,
    /// Root public key (hex) of the ledger, as pinned by its genesis.
    pub root_key: String,
    pub from_seq: u64,
    pub to_seq: u64,
    /// `(stream sequence, stored message as hex)`, every message `1..=to_seq`.
    pub messages: Vec<(u64, String)>,
    /// Writer keys the root enrolled (hex), i.e. the keys that may sign events and checkpoints.
    pub signers: Vec<String>,
    pub checkpoints: Vec<String>,
    /// Consistency proofs between consecutive checkpoints: the published checkpoints are one
    /// append-only log.
    pub consistency: Vec<ConsistencyProof>,
    pub witness_notes: Vec<String>,
}

/// Builds a bundle from a rebuilt log (kept messages) up to its latest consistent checkpoint.
pub fn export(
    r: &Rebuilt,
    from_seq: u64,
    checkpoints: &[String],
    witness_notes: &[String],
) -> Result<Bundle, AuditError> {
    let latest = checkpoints
        .iter()
        .filter_map(|n| match r.check_checkpoint(n, &[]) {
            CheckpointCheck::Consistent { size, .. } => Some((size, n.clone())),
            _ => None,
        })
        .max_by_key(|(s, _)| *s)
        .ok_or(AuditError::NotCheckpointed(from_seq))?;
    let size = latest.0;
    // The stream sequence of the last leaf the checkpoint covers.
    let to_seq = r.leaf_seqs[(size - 1) as usize];
    let included: Vec<String> = checkpoints
        .iter()
        .filter(|n| {
            Note::parse(n)
                .ok()
                .and_then(|n| Checkpoint::parse(n.text()).ok())
                .is_some_and(|c| c.size <= size)
        })
        .cloned()
        .collect();
    let root_key = r
        .state
        .root_key()
        .map(|k| k.to_hex())
        .ok_or_else(|| AuditError::Bundle("no genesis".into()))?;
    Ok(Bundle {
        format: BUNDLE_FORMAT.into(),
        ledger: r.ledger.to_string(),
        origin: r.origin(),
        root_key,
        from_seq,
        to_seq,
        messages: r
            .messages
            .iter()
            .filter(|(s, _)| *s <= to_seq)
            .map(|(s, b)| (*s, hex::encode(b)))
            .collect(),
        signers: r.writers.iter().map(|w| w.to_hex()).collect(),
        consistency: {
            let mut sized: Vec<(u64, &String)> = included
                .iter()
                .filter_map(|n| match r.check_checkpoint(n, &[]) {
                    CheckpointCheck::Consistent { size, .. } => Some((size, n)),
                    _ => None,
                })
                .collect();
            sized.sort_by_key(|(s, _)| *s);
            sized.dedup_by_key(|(s, _)| *s);
            sized
                .windows(2)
                .map(|w| prove_consistency(r, w[0].1, w[1].1))
                .collect::<Result<_, _>>()?
        },
        checkpoints: included,
        witness_notes: witness_notes.to_vec(),
    })
}

/// What verifying a bundle (or the stream) found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub ledger: String,
    pub events: u64,
    pub tree_size: u64,
    pub root: String,
    pub foreign: Vec<String>,
    pub chain_break: Option<String>,
    pub checkpoints: Vec<CheckpointCheck>,
    /// Checkpoints cosigned by at least one witness and consistent.
    pub witnessed: usize,
    pub ok: bool,
}

impl AuditReport {
    pub fn from_rebuilt(
        r: &Rebuilt,
        notes: &[String],
        witness_notes: &[String],
        cosigners: &[VerifierKey],
    ) -> AuditReport {
        let checkpoints: Vec<CheckpointCheck> =
            notes.iter().map(|n| r.check_checkpoint(n, &[])).collect();
        let witnessed = witness_notes
            .iter()
            .filter(|n| !cosigners.is_empty() && r.check_checkpoint(n, cosigners).is_ok())
            .count();
        let ok = r.foreign.is_empty()
            && r.chain_break.is_none()
            && checkpoints.iter().all(CheckpointCheck::is_ok);
        AuditReport {
            ledger: r.ledger.to_string(),
            events: r.tree.size(),
            tree_size: r.tree.size(),
            root: hex::encode(r.tree.current_root()),
            foreign: r
                .foreign
                .iter()
                .map(|f| format!("seq {}: {}", f.seq, f.reason))
                .collect(),
            chain_break: r.chain_break.as_ref().map(|e| e.to_string()),
            checkpoints,
            witnessed,
            ok,
        }
    }
}

/// Verifies a bundle with no NATS: the chain from genesis under the root key (the bundle's, or
/// `pinned_root` when the auditor has its own copy), the tree, and every checkpoint in it.
pub fn verify_bundle(
    b: &Bundle,
    pinned_root: Option<Bytes32>,
    cosigners: &[VerifierKey],
) -> Result<(Rebuilt, AuditReport), AuditError> {
    if b.format != BUNDLE_FORMAT {
        return Err(AuditError::Bundle(format!("unknown format {:?}", b.format)));
    }
    let ledger = LedgerId::new(&b.ledger).map_err(|e| AuditError::Bundle(e.to_string()))?;
    let root = match pinned_root {
        Some(r) => r,
        None => Bytes32(unhex32(&b.root_key, "root_key")?),
    };
    let mut r = Rebuilt::new(ledger, Some(root));
    let mut msgs = Vec::with_capacity(b.messages.len());
    let mut last = 0;
    for (seq, h) in &b.messages {
        if *seq <= last {
            return Err(AuditError::Bundle(format!("sequence {seq} out of order")));
        }
        last = *seq;
        let bytes =
            hex::decode(h).map_err(|_| AuditError::Bundle(format!("seq {seq}: not hex")))?;
        msgs.push((*seq, Bytes::from(bytes)));
    }
    r.fold(msgs, false);
    if r.origin() != b.origin {
        return Err(AuditError::Bundle(
            "origin does not match the ledger".into(),
        ));
    }
    let mut report = AuditReport::from_rebuilt(&r, &b.checkpoints, &b.witness_notes, cosigners);
    // The listed signers must be exactly the writers the chain enrolled, and every
    // consistency proof must hold under one of them.
    let listed: Vec<String> = r.writers.iter().map(|w| w.to_hex()).collect();
    if listed != b.signers {
        report.ok = false;
        report.checkpoints.push(CheckpointCheck::Invalid {
            reason: "the bundle's signer list is not the chain's enrolled writers".into(),
        });
    }
    for p in &b.consistency {
        let held = r.log_keys().iter().any(|k| {
            k.to_string() == p.log_key && check_consistency(p, Some(&k.to_string())).is_ok()
        });
        if !held {
            report.ok = false;
            report.checkpoints.push(CheckpointCheck::Invalid {
                reason: format!(
                    "consistency proof {} -> {} does not hold",
                    p.old_size, p.new_size
                ),
            });
        }
    }
    Ok((r, report))
}

// ---- the witness --------------------------------------------------------------------------------

/// What a witness remembers: the last checkpoint it cosigned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    pub origin: String,
    pub size: u64,
    /// Hex root of that size.
    pub root: String,
    /// The cosigned note.
    pub note: String,
}

/// Why a witness refuses to cosign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[non_exhaustive]
pub enum WitnessRefusal {
    #[error("checkpoint is not valid for this log: {0}")]
    Invalid(String),
    #[error("rollback: the log offers size {offered}, but size {witnessed} was witnessed")]
    Rollback { witnessed: u64, offered: u64 },
    #[error("fork: the log's tree of size {size} no longer has the witnessed root")]
    Fork { size: u64 },
    #[error("the checkpoint commits to {size} events but the log holds {have} (truncated)")]
    Truncated { size: u64, have: u64 },
}

/// The witness's decision: checks `note` against the log it rebuilt itself (`r`) and against
/// what it witnessed before, then cosigns. The new state is returned; the caller persists it
/// before publishing the cosignature.
pub fn witness(
    r: &Rebuilt,
    previous: Option<&WitnessState>,
    note: &str,
    name: &str,
    key: &SigningKey,
    now_secs: u64,
) -> Result<(Note, WitnessState), WitnessRefusal> {
    let check = r.check_checkpoint(note, &[]);
    let (size, root) = match check {
        CheckpointCheck::Consistent { size, .. } => (size, r.tree.root(size).unwrap_or_default()),
        CheckpointCheck::Truncated { size, have } => {
            return Err(WitnessRefusal::Truncated { size, have })
        }
        CheckpointCheck::Forked { size, .. } => return Err(WitnessRefusal::Fork { size }),
        CheckpointCheck::Invalid { reason } => return Err(WitnessRefusal::Invalid(reason)),
    };
    if let Some(p) = previous {
        if size < p.size {
            return Err(WitnessRefusal::Rollback {
                witnessed: p.size,
                offered: size,
            });
        }
        // The witnessed prefix must still have the witnessed root in the log as it is now.
        let now_root = r.tree.root(p.size).map(hex::encode).unwrap_or_default();
        if now_root != p.root {
            return Err(WitnessRefusal::Fork { size: p.size });
        }
        if size == p.size && hex::encode(root) != p.root {
            return Err(WitnessRefusal::Fork { size });
        }
    }
    let mut n = Note::parse(note).map_err(|e| WitnessRefusal::Invalid(e.to_string()))?;
    n.cosign(name, key, now_secs)
        .map_err(|e| WitnessRefusal::Invalid(e.to_string()))?;
    let state = WitnessState {
        origin: r.origin(),
        size,
        root: hex::encode(root),
        note: n.to_string(),
    };
    Ok((n, state))
}

/// A witness's verifier key (tlog-cosignature v1) for `name`.
pub fn witness_key(name: &str, key: &SigningKey) -> Result<VerifierKey, AuditError> {
    VerifierKey::new(name, KeyKind::CosignatureV1, key.verifying_key())
        .map_err(|e| AuditError::Checkpoint(e.to_string()))
}

/// Leaf sequences by chain index, for reports (`index -> seq`).
pub fn leaf_seq_map(r: &Rebuilt) -> BTreeMap<u64, u64> {
    r.leaf_seqs
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64, *s))
        .collect()
}

// ---- the checkpointer ---------------------------------------------------------------------------

/// Creates the checkpoint stream if missing, with the event stream's replication (ledgers made
/// before checkpoints existed get one at their first `serve`).
pub async fn ensure_checkpoint_stream(conn: &LedgerConn) -> Result<(), AuditError> {
    let ev = conn
        .js
        .get_stream(conn.names.stream())
        .await
        .map_err(nats)?;
    let cfg = &ev.cached_info().config;
    let settings = ledger::nats::StreamSettings {
        replicas: cfg.num_replicas.max(1),
        duplicate_window: cfg.duplicate_window,
        danger_allow_delete: false,
    };
    conn.js
        .get_or_create_stream(ledger::nats::stream::checkpoint_stream_config(
            &conn.names,
            &settings,
        ))
        .await
        .map_err(nats)?;
    Ok(())
}

/// Publishes a signed checkpoint of the replica's projection whenever it has grown by `every`
/// events or `interval` has passed since the last one (and it grew). Stops publishing for good
/// if the projection halts on a chain break.
pub fn spawn_checkpointer(
    conn: LedgerConn,
    follower: projector::live::Follower,
    key: SigningKey,
    every: u64,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_size = 0u64;
        let mut last_at = tokio::time::Instant::now();
        let tick = interval
            .min(Duration::from_millis(200))
            .max(Duration::from_millis(20));
        loop {
            tokio::time::sleep(tick).await;
            if follower.halted().is_some() {
                tracing::error!("projection halted: no more checkpoints from this replica");
                return;
            }
            let (size, root) = follower.read(|v| (v.tree.size(), v.tree.current_root()));
            let due = size >= last_size + every.max(1) || last_at.elapsed() >= interval;
            if size > last_size && due {
                match publish_checkpoint(&conn, &key, size, root).await {
                    Ok(_) => {
                        last_size = size;
                        last_at = tokio::time::Instant::now();
                    }
                    Err(e) => tracing::warn!(error = %e, size, "could not publish a checkpoint"),
                }
            }
        }
    })
}
