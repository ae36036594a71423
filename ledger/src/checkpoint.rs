//! Signed checkpoints: C2SP `tlog-checkpoint` bodies in C2SP `signed-note`s, signed with Ed25519
//! by the log and cosigned by witnesses with C2SP `tlog-cosignature` v1. Plain code, no IO.
//!
//! ```text
//! checkpoint body  = <origin> "\n" <tree size, decimal> "\n" base64(<RFC 6962 root>) "\n" *(<extension> "\n")
//! signed note      = <text> "\n" 1*("— " <key name> " " base64(<key id, u32be> || <signature>) "\n")
//! key id           = SHA-256(<key name> || "\n" || <type> || <public key>)[:4]
//!   type 0x01      = Ed25519 over the note text                           (the log's signature)
//!   type 0x04      = tlog-cosignature/v1: signature = u64be(time) || Ed25519 over
//!                    "cosignature/v1\ntime <time>\n" || <note text>        (a witness's cosignature)
//! verifier key     = <key name> "+" hex8(<key id>) "+" base64(<type> || <public key>)
//! ```
//!
//! For keyledger the origin (and the log's key name) is a parameter, by convention
//! `<host>/<ledger id>` ([`ledger_origin`]); the tree is [`crate::merkle`], whose leaf `i` is the
//! stored entry of the event with chain index `i`.
//!
//! Verification follows `signed-note`: signatures from unknown keys (name and key id not both
//! matching a configured key) are ignored and reported; a signature from a known key that fails
//! rejects the whole note; a note with no verified signature is rejected. Signatures are checked
//! with `verify_strict`, and weak (small-order) public keys are refused, as for events.
//! Cosignature timestamps are returned, not judged: this module has no clock.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::ids::LedgerId;
use crate::merkle::Hash;

/// Signature type of plain Ed25519 note signatures (signed-note).
pub const SIG_TYPE_ED25519: u8 = 0x01;
/// Signature type of timestamped Ed25519 witness cosignatures (tlog-cosignature v1).
pub const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;
/// Most signature lines accepted in one note (the spec asks for at least 16; Go's note package
/// allows 100).
pub const MAX_SIGNATURES: usize = 100;
/// Header line of the message a v1 cosignature signs.
pub const COSIGNATURE_V1_HEADER: &str = "cosignature/v1\n";

const SIG_LINE_PREFIX: &str = "\u{2014} ";
const ED25519_SIG_LEN: usize = 64;
const COSIGNATURE_LEN: usize = 8 + ED25519_SIG_LEN;

/// The checkpoint origin of a keyledger ledger: `<prefix>/<ledger id>`, e.g.
/// `keyledger.example/prod-eu`.
pub fn ledger_origin(prefix: &str, ledger: &LedgerId) -> String {
    format!("{prefix}/{}", ledger.as_str())
}

/// A signed-note key id: the first four bytes (big-endian) of
/// `SHA-256(name || "\n" || sig_type || public_key)`.
pub fn key_id(name: &str, sig_type: u8, public_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([sig_type]);
    h.update(public_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Key names are non-empty and hold no Unicode space, no `+` and no control character.
fn valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

/// The first byte below U+0020 other than a newline, if any.
fn control_char(s: &str) -> Option<u8> {
    s.bytes().find(|&b| b < 0x20 && b != b'\n')
}

// ---- errors -----------------------------------------------------------------------------------

/// Why a note cannot be built, parsed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    #[error("note is not valid UTF-8")]
    NotUtf8,
    #[error("note holds control character {0:#04x}")]
    ControlCharacter(u8),
    #[error("note text must be non-empty and end with a newline")]
    TextNotTerminated,
    #[error("note has no signature block after a blank line")]
    NoSignatureBlock,
    #[error("signature line {line} is malformed")]
    BadSignatureLine { line: usize },
    #[error("invalid key name {0:?}")]
    BadKeyName(String),
    #[error("note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("cosignature timestamp {0} exceeds 2^63 - 1")]
    TimestampTooLarge(u64),
    #[error("signature by known key {name}+{key_id:08x} does not verify")]
    InvalidSignature { name: String, key_id: u32 },
    #[error("no signature from a known key ({unknown} from unknown keys)")]
    NoKnownSignature { unknown: usize },
}

/// Why a verifier key string or set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VkeyError {
    #[error("verifier key is not <name>+<hex key id>+<base64 key>")]
    Format,
    #[error("invalid key name {0:?}")]
    BadKeyName(String),
    #[error("key id is not 8 lowercase hex digits")]
    BadKeyId,
    #[error("key is not canonical standard base64")]
    BadBase64,
    #[error("unsupported signature type {0:#04x}")]
    UnsupportedType(u8),
    #[error("public key of {0} bytes, want 32")]
    BadKeyLength(usize),
    #[error("public key is not a valid Ed25519 point")]
    BadKey,
    #[error("public key is weak (small order)")]
    WeakKey,
    #[error("key id {found:08x} does not match the key's {expected:08x}")]
    KeyIdMismatch { expected: u32, found: u32 },
    #[error("two different keys share name and key id {name}+{key_id:08x}")]
    Ambiguous { name: String, key_id: u32 },
}

/// Why a checkpoint cannot be built, parsed or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error(transparent)]
    Note(#[from] NoteError),
    #[error(transparent)]
    Key(#[from] VkeyError),
    #[error("checkpoint text must end with a newline")]
    TextNotTerminated,
    #[error("checkpoint has fewer than 3 lines")]
    TooFewLines,
    #[error("checkpoint line {line} is empty")]
    EmptyLine { line: usize },
    #[error("checkpoint holds control character {0:#04x}")]
    ControlCharacter(u8),
    #[error("tree size is not a decimal u64 without leading zeros")]
    BadSize,
    #[error("root is not the canonical base64 of 32 bytes")]
    BadRoot,
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    OriginMismatch { expected: String, found: String },
    #[error("the log key must be an Ed25519 (type 0x01) key")]
    LogKeyNotEd25519,
    #[error("checkpoint is not signed by the log key {name}+{key_id:08x}")]
    LogSignatureMissing { name: String, key_id: u32 },
}

// ---- checkpoints ------------------------------------------------------------------------------

/// A tlog-checkpoint: the commitment to the tree of the first `size` leaves of the log `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// Opaque extension lines (NOT RECOMMENDED by the spec; monitors cannot audit them).
    pub extensions: Vec<String>,
}

fn check_line(line: &str, number: usize) -> Result<(), CheckpointError> {
    if line.is_empty() {
        return Err(CheckpointError::EmptyLine { line: number });
    }
    if let Some(c) = line.bytes().find(|&b| b < 0x20) {
        return Err(CheckpointError::ControlCharacter(c));
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint without extension lines. The origin must be one non-empty line.
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: Hash,
    ) -> Result<Checkpoint, CheckpointError> {
        let c = Checkpoint {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        };
        c.check()?;
        Ok(c)
    }

    /// Checks that every line is non-empty and free of control characters (newlines included).
    pub fn check(&self) -> Result<(), CheckpointError> {
        check_line(&self.origin, 1)?;
        for (i, e) in self.extensions.iter().enumerate() {
            check_line(e, 4 + i)?;
        }
        Ok(())
    }

    /// The note text: origin, size and root lines, then any extension lines.
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a note text as a checkpoint. Strict: the size has no leading zeros, the root is
    /// canonical padded base64 of exactly 32 bytes, and no line is empty.
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        let Some(text) = text.strip_suffix('\n') else {
            return Err(CheckpointError::TextNotTerminated);
        };
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < 3 {
            return Err(CheckpointError::TooFewLines);
        }
        for (i, l) in lines.iter().enumerate() {
            check_line(l, i + 1)?;
        }
        let size_line = lines[1];
        if !size_line.bytes().all(|b| b.is_ascii_digit())
            || (size_line.len() > 1 && size_line.starts_with('0'))
        {
            return Err(CheckpointError::BadSize);
        }
        let size = size_line
            .parse::<u64>()
            .map_err(|_| CheckpointError::BadSize)?;
        let root: Hash = B64
            .decode(lines[2])
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(CheckpointError::BadRoot)?;
        Ok(Checkpoint {
            origin: lines[0].to_owned(),
            size,
            root,
            extensions: lines[3..].iter().map(|l| (*l).to_owned()).collect(),
        })
    }

    /// A note of this checkpoint signed by the log (Ed25519, type 0x01). The key name should be
    /// the origin.
    pub fn sign(&self, key_name: &str, key: &SigningKey) -> Result<Note, CheckpointError> {
        self.check()?;
        let mut note = Note::new(self.body())?;
        note.sign(key_name, key)?;
        Ok(note)
    }
}

/// A checkpoint whose note carries a valid signature by the expected log key, with its verified
/// cosignatures. Only [`VerifiedCheckpoint::open`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    checkpoint: Checkpoint,
    note: VerifiedNote,
}

impl VerifiedCheckpoint {
    /// Parses and verifies a signed checkpoint note.
    ///
    /// Accepts it only if: the note is well formed; every signature from `log_key` or a
    /// `cosigners` key verifies (unknown keys are ignored and reported by
    /// [`note`](Self::note)); the log's Ed25519 signature is among them; the body is a valid
    /// checkpoint whose origin is exactly `origin`. A witness quorum is the caller's policy over
    /// [`cosignatures`](Self::cosignatures).
    pub fn open(
        note_text: &str,
        origin: &str,
        log_key: &VerifierKey,
        cosigners: &[VerifierKey],
    ) -> Result<VerifiedCheckpoint, CheckpointError> {
        if log_key.kind() != KeyKind::Ed25519 {
            return Err(CheckpointError::LogKeyNotEd25519);
        }
        let note = Note::parse(note_text)?;
        let mut keys = Vec::with_capacity(1 + cosigners.len());
        keys.push(log_key.clone());
        keys.extend(cosigners.iter().cloned());
        let verifiers = Verifiers::new(keys)?;
        let verified = note.verify(&verifiers)?;
        if !verified
            .verified()
            .iter()
            .any(|s| s.name() == log_key.name() && s.key_id() == log_key.key_id())
        {
            return Err(CheckpointError::LogSignatureMissing {
                name: log_key.name().to_owned(),
                key_id: log_key.key_id(),
            });
        }
        let checkpoint = Checkpoint::parse(verified.text())?;
        if checkpoint.origin != origin {
            return Err(CheckpointError::OriginMismatch {
                expected: origin.to_owned(),
                found: checkpoint.origin,
            });
        }
        Ok(VerifiedCheckpoint {
            checkpoint,
            note: verified,
        })
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The verified note: every verified signature, and the ignored unknown ones.
    pub fn note(&self) -> &VerifiedNote {
        &self.note
    }

    /// The verified witness cosignatures (type 0x04), each with its timestamp.
    pub fn cosignatures(&self) -> impl Iterator<Item = &VerifiedSignature> {
        self.note
            .verified()
            .iter()
            .filter(|s| s.kind() == KeyKind::CosignatureV1)
    }
}

// ---- verifier keys ----------------------------------------------------------------------------

/// The signature types this module signs and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyKind {
    /// Plain Ed25519 over the note text (type 0x01): the log's checkpoint signature.
    Ed25519,
    /// tlog-cosignature v1 (type 0x04): a witness's timestamped Ed25519 cosignature.
    CosignatureV1,
}

impl KeyKind {
    /// The signed-note signature type byte.
    pub fn sig_type(self) -> u8 {
        match self {
            KeyKind::Ed25519 => SIG_TYPE_ED25519,
            KeyKind::CosignatureV1 => SIG_TYPE_COSIGNATURE_V1,
        }
    }

    fn from_sig_type(t: u8) -> Option<KeyKind> {
        match t {
            SIG_TYPE_ED25519 => Some(KeyKind::Ed25519),
            SIG_TYPE_COSIGNATURE_V1 => Some(KeyKind::CosignatureV1),
            _ => None,
        }
    }
}

/// A named public key that verifies note signatures of one type. Its text form is the C2SP
/// verifier key (`vkey`) `<name>+<hex key id>+<base64(type || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: u32,
    kind: KeyKind,
    key: VerifyingKey,
}

impl VerifierKey {
    /// A verifier for `name`'s signatures of `kind` under `key`. Weak keys are refused.
    pub fn new(name: &str, kind: KeyKind, key: VerifyingKey) -> Result<VerifierKey, VkeyError> {
        if !valid_key_name(name) {
            return Err(VkeyError::BadKeyName(name.to_owned()));
        }
        if key.is_weak() {
            return Err(VkeyError::WeakKey);
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key_id: key_id(name, kind.sig_type(), key.as_bytes()),
            kind,
            key,
        })
    }

    /// Parses a verifier key string. Strict: the key id is 8 lowercase hex digits and must match
    /// the key, the base64 is canonical, the type is 0x01 or 0x04 and the key 32 bytes.
    pub fn parse(vkey: &str) -> Result<VerifierKey, VkeyError> {
        let (name, rest) = vkey.split_once('+').ok_or(VkeyError::Format)?;
        let (id_hex, key_b64) = rest.split_once('+').ok_or(VkeyError::Format)?;
        if !valid_key_name(name) {
            return Err(VkeyError::BadKeyName(name.to_owned()));
        }
        if id_hex.len() != 8
            || !id_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(VkeyError::BadKeyId);
        }
        let found = u32::from_str_radix(id_hex, 16).map_err(|_| VkeyError::BadKeyId)?;
        let raw = B64.decode(key_b64).map_err(|_| VkeyError::BadBase64)?;
        let (&sig_type, public) = raw.split_first().ok_or(VkeyError::BadKeyLength(0))?;
        let kind = KeyKind::from_sig_type(sig_type).ok_or(VkeyError::UnsupportedType(sig_type))?;
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| VkeyError::BadKeyLength(public.len()))?;
        let expected = key_id(name, sig_type, &public);
        if expected != found {
            return Err(VkeyError::KeyIdMismatch { expected, found });
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|_| VkeyError::BadKey)?;
        VerifierKey::new(name, kind, key)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks one signature (the bytes after the key id) over `text`; for a cosignature, returns
    /// its timestamp.
    fn verify(&self, text: &str, sig: &[u8]) -> Result<Option<u64>, ()> {
        match self.kind {
            KeyKind::Ed25519 => {
                let sig = Signature::from_slice(sig).map_err(|_| ())?;
                self.key
                    .verify_strict(text.as_bytes(), &sig)
                    .map_err(|_| ())?;
                Ok(None)
            }
            KeyKind::CosignatureV1 => {
                if sig.len() != COSIGNATURE_LEN {
                    return Err(());
                }
                let (time, sig) = sig.split_at(8);
                let mut t = [0u8; 8];
                t.copy_from_slice(time);
                let time = u64::from_be_bytes(t);
                if time > i64::MAX as u64 {
                    return Err(());
                }
                let sig = Signature::from_slice(sig).map_err(|_| ())?;
                self.key
                    .verify_strict(&cosignature_v1_message(time, text), &sig)
                    .map_err(|_| ())?;
                Ok(Some(time))
            }
        }
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = Vec::with_capacity(33);
        raw.push(self.kind.sig_type());
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.key_id, B64.encode(raw))
    }
}

/// A set of known keys, at most one per (name, key id).
#[derive(Debug, Clone, Default)]
pub struct Verifiers {
    keys: Vec<VerifierKey>,
}

impl Verifiers {
    /// Refuses two *different* keys with the same name and key id; exact repeats are merged.
    pub fn new(keys: impl IntoIterator<Item = VerifierKey>) -> Result<Verifiers, VkeyError> {
        let mut out: Vec<VerifierKey> = Vec::new();
        for k in keys {
            match out
                .iter()
                .find(|o| o.name == k.name && o.key_id == k.key_id)
            {
                Some(o) if *o == k => {}
                Some(_) => {
                    return Err(VkeyError::Ambiguous {
                        name: k.name,
                        key_id: k.key_id,
                    })
                }
                None => out.push(k),
            }
        }
        Ok(Verifiers { keys: out })
    }

    fn find(&self, name: &str, key_id: u32) -> Option<&VerifierKey> {
        self.keys
            .iter()
            .find(|k| k.name == name && k.key_id == key_id)
    }
}

// ---- notes ------------------------------------------------------------------------------------

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: u32,
    /// The signature bytes after the key id (for a v1 cosignature: timestamp || signature).
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The signature line, without its newline.
    pub fn line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIG_LINE_PREFIX}{} {}", self.name, B64.encode(raw))
    }
}

/// A signed note: a text and its signatures (unverified until [`Note::verify`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    text: String,
    signatures: Vec<NoteSignature>,
}

/// The message a tlog-cosignature v1 signs.
fn cosignature_v1_message(time: u64, text: &str) -> Vec<u8> {
    format!("{COSIGNATURE_V1_HEADER}time {time}\n{text}").into_bytes()
}

impl Note {
    /// An unsigned note. The text must be non-empty, end with a newline and hold no control
    /// character other than newlines.
    pub fn new(text: impl Into<String>) -> Result<Note, NoteError> {
        let text = text.into();
        if !text.ends_with('\n') {
            return Err(NoteError::TextNotTerminated);
        }
        if let Some(c) = control_char(&text) {
            return Err(NoteError::ControlCharacter(c));
        }
        Ok(Note {
            text,
            signatures: Vec::new(),
        })
    }

    /// The note text (including its final newline).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The signature lines, in order, exact repeats removed.
    pub fn signatures(&self) -> &[NoteSignature] {
        &self.signatures
    }

    /// Adds (or replaces) the Ed25519 signature (type 0x01) of `key_name` with `key`.
    pub fn sign(&mut self, key_name: &str, key: &SigningKey) -> Result<(), NoteError> {
        if !valid_key_name(key_name) {
            return Err(NoteError::BadKeyName(key_name.to_owned()));
        }
        let signature = key.sign(self.text.as_bytes()).to_bytes().to_vec();
        self.put(NoteSignature {
            name: key_name.to_owned(),
            key_id: key_id(key_name, SIG_TYPE_ED25519, key.verifying_key().as_bytes()),
            signature,
        })
    }

    /// Adds (or replaces) the tlog-cosignature v1 (type 0x04) of witness `key_name` with `key`,
    /// made at `timestamp` (POSIX seconds). The note text should be a checkpoint the witness
    /// has checked to be consistent with everything it cosigned before for that origin.
    pub fn cosign(
        &mut self,
        key_name: &str,
        key: &SigningKey,
        timestamp: u64,
    ) -> Result<(), NoteError> {
        if !valid_key_name(key_name) {
            return Err(NoteError::BadKeyName(key_name.to_owned()));
        }
        if timestamp > i64::MAX as u64 {
            return Err(NoteError::TimestampTooLarge(timestamp));
        }
        let sig = key.sign(&cosignature_v1_message(timestamp, &self.text));
        let mut signature = Vec::with_capacity(COSIGNATURE_LEN);
        signature.extend_from_slice(&timestamp.to_be_bytes());
        signature.extend_from_slice(&sig.to_bytes());
        self.put(NoteSignature {
            name: key_name.to_owned(),
            key_id: key_id(
                key_name,
                SIG_TYPE_COSIGNATURE_V1,
                key.verifying_key().as_bytes(),
            ),
            signature,
        })
    }

    /// Adds a signature made elsewhere (e.g. a witness's cosignature line), replacing any
    /// signature with the same name and key id. Not checked here: see [`Note::verify`].
    pub fn add_signature(&mut self, sig: NoteSignature) -> Result<(), NoteError> {
        if !valid_key_name(&sig.name) {
            return Err(NoteError::BadKeyName(sig.name));
        }
        if sig.signature.is_empty() {
            return Err(NoteError::BadSignatureLine {
                line: self.signatures.len() + 1,
            });
        }
        self.put(sig)
    }

    fn put(&mut self, sig: NoteSignature) -> Result<(), NoteError> {
        self.signatures
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        self.signatures.push(sig);
        Ok(())
    }

    /// Parses a signed note from bytes (which must be UTF-8).
    pub fn from_bytes(bytes: &[u8]) -> Result<Note, NoteError> {
        Note::parse(std::str::from_utf8(bytes).map_err(|_| NoteError::NotUtf8)?)
    }

    /// Parses a signed note: the text, a blank line, then one or more signature lines. The text
    /// ends at the last blank line. Exact repeats of a signature line are dropped.
    pub fn parse(s: &str) -> Result<Note, NoteError> {
        if let Some(c) = control_char(s) {
            return Err(NoteError::ControlCharacter(c));
        }
        let split = s.rfind("\n\n").ok_or(NoteError::NoSignatureBlock)?;
        let (text, block) = (&s[..=split], &s[split + 2..]);
        if block.is_empty() {
            return Err(NoteError::NoSignatureBlock);
        }
        if !block.ends_with('\n') {
            return Err(NoteError::BadSignatureLine {
                line: block.split('\n').count(),
            });
        }
        let mut signatures: Vec<NoteSignature> = Vec::new();
        for (i, line) in block.split_terminator('\n').enumerate() {
            if i >= MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            let bad = || NoteError::BadSignatureLine { line: i + 1 };
            let rest = line.strip_prefix(SIG_LINE_PREFIX).ok_or_else(bad)?;
            let (name, b64) = rest.split_once(' ').ok_or_else(bad)?;
            if !valid_key_name(name) {
                return Err(NoteError::BadKeyName(name.to_owned()));
            }
            let raw = B64.decode(b64).map_err(|_| bad())?;
            if raw.len() < 5 {
                return Err(bad());
            }
            let sig = NoteSignature {
                name: name.to_owned(),
                key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
                signature: raw[4..].to_vec(),
            };
            if !signatures.contains(&sig) {
                signatures.push(sig);
            }
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Verifies the signatures against known keys (C2SP signed-note rules): unknown keys are
    /// ignored and reported; any failing signature from a known key rejects the note (every
    /// line of a known key is checked, repeats included); at least one known key must have
    /// signed. Each known key appears at most once in the result.
    pub fn verify(&self, known: &Verifiers) -> Result<VerifiedNote, NoteError> {
        let mut verified = Vec::new();
        let mut unknown = Vec::new();
        for s in &self.signatures {
            let Some(key) = known.find(&s.name, s.key_id) else {
                unknown.push(s.clone());
                continue;
            };
            let timestamp =
                key.verify(&self.text, &s.signature)
                    .map_err(|()| NoteError::InvalidSignature {
                        name: s.name.clone(),
                        key_id: s.key_id,
                    })?;
            // A key counts once: a second (also valid) cosignature by one witness at another
            // time must not count twice towards a quorum. The first is kept.
            if verified
                .iter()
                .any(|v: &VerifiedSignature| v.name == s.name && v.key_id == s.key_id)
            {
                continue;
            }
            verified.push(VerifiedSignature {
                name: s.name.clone(),
                key_id: s.key_id,
                kind: key.kind,
                timestamp,
            });
        }
        if verified.is_empty() {
            return Err(NoteError::NoKnownSignature {
                unknown: unknown.len(),
            });
        }
        Ok(VerifiedNote {
            text: self.text.clone(),
            verified,
            unknown,
        })
    }
}

/// The signed note text: the text, a blank line, one line per signature.
impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        f.write_str("\n")?;
        for s in &self.signatures {
            writeln!(f, "{}", s.line())?;
        }
        Ok(())
    }
}

/// A note with at least one signature verified by a known key. Only [`Note::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    text: String,
    verified: Vec<VerifiedSignature>,
    unknown: Vec<NoteSignature>,
}

impl VerifiedNote {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Signatures that verified under a known key, in note order.
    pub fn verified(&self) -> &[VerifiedSignature] {
        &self.verified
    }

    /// Signatures from keys not configured: ignored, reported here.
    pub fn unknown(&self) -> &[NoteSignature] {
        &self.unknown
    }
}

/// One verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    name: String,
    key_id: u32,
    kind: KeyKind,
    timestamp: Option<u64>,
}

impl VerifiedSignature {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The cosignature's timestamp (POSIX seconds); `None` for a plain Ed25519 signature.
    pub fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        for ok in [
            "a",
            "example.com/log42",
            "PeterNeumann",
            "keyledger.example/prod-eu",
        ] {
            assert!(valid_key_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a+b", "a\u{a0}b", "a\tb", "a\u{2003}"] {
            assert!(!valid_key_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn text_rules() {
        assert_eq!(Note::new("abc"), Err(NoteError::TextNotTerminated));
        assert_eq!(Note::new(""), Err(NoteError::TextNotTerminated));
        assert_eq!(Note::new("a\x01b\n"), Err(NoteError::ControlCharacter(1)));
        assert!(Note::new("a\n\nb\n").is_ok());
    }

    #[test]
    fn checkpoint_lines() {
        let c = Checkpoint::new("o", 0, [0u8; 32]).unwrap();
        assert_eq!(
            c.body(),
            "o\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        );
        assert_eq!(Checkpoint::parse(&c.body()).unwrap(), c);
        assert_eq!(
            Checkpoint::new("", 1, [0; 32]),
            Err(CheckpointError::EmptyLine { line: 1 })
        );
        assert_eq!(
            Checkpoint::new("a\nb", 1, [0; 32]),
            Err(CheckpointError::ControlCharacter(b'\n'))
        );
        for bad in ["01", "-1", "+1", "1 ", "18446744073709551616", "0x1", ""] {
            let t = format!("o\n{bad}\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
            assert!(Checkpoint::parse(&t).is_err(), "{bad:?}");
        }
    }
}
