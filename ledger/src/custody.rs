//! Custody of the service's own secrets: the root of trust (DESIGN.md §4).
//!
//! The service holds three secrets ([`Secrets`]): the ledger's root signing key (signs genesis
//! and signer enrolment), the writer signing key (signs ordinary events) and the master key
//! ([`Kek`]). At rest they live in a keystore file, sealed with AES-256-GCM under a key derived
//! from an unseal key `U` that is never stored:
//!
//! * [`Protection::Passphrase`]: `U = Argon2id(passphrase, salt)` (Argon2 v0x13), or
//! * [`Protection::Shares`]: `U` is random and split into k-of-n Shamir shares over GF(256)
//!   ([`UnsealShare`], text form `klshare1-…`), handed to operators and never stored with the
//!   keystore.
//!
//! The file key is `BLAKE3 derive_key("keyledger 2026-11 keystore file key v1", U)`. The file is
//! JSON with a format tag (`keyledger-keystore/v1`); every header field (format, ledger, public
//! keys, KEK id, protection parameters) is bound into the AEAD's associated data, so editing the
//! header makes opening fail. After decryption the keys are checked against the header.
//!
//! Only this module of `ledger`'s crypto does file IO (creating, reading the keystore and share
//! files). The header read by [`read_keystore_info`] is *unauthenticated* until the keystore is
//! opened. Room is left for HSM (PKCS#11) or TPM providers as further protection kinds.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::bytes32::Bytes32;
use crate::ids::LedgerId;
use crate::seal::{aead_open, aead_seal, ct_eq32, random_bytes, Kek, KEY_LEN, NONCE_LEN};

/// Format tag of the keystore file.
pub const KEYSTORE_FORMAT: &str = "keyledger-keystore/v1";
/// Prefix of the text form of an [`UnsealShare`].
pub const SHARE_PREFIX: &str = "klshare1-";

const KEYSTORE_AAD_PREFIX: &[u8] = b"keyledger/keystore/v1\0";
const FILE_KEY_CONTEXT: &str = "keyledger 2026-11 keystore file key v1";
const SHARE_CHECK_CONTEXT: &str = "keyledger 2026-11 unseal share check v1";
const KDF_NAME: &str = "argon2id-v19";
const SHARE_SCHEME: &str = "shamir-gf256";
const PASSPHRASE_KIND: &str = "passphrase";
const SHARES_KIND: &str = "shares";
/// root signing key || writer signing key || KEK.
const SECRETS_LEN: usize = 3 * KEY_LEN;
const SALT_LEN: usize = 16;
const SHARE_CHECK_LEN: usize = 4;
/// A keystore file is a few hundred bytes; refuse to read anything absurd.
const MAX_KEYSTORE_LEN: u64 = 64 * 1024;
/// Upper bounds on Argon2 costs, so a tampered header cannot make opening exhaust the machine.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

/// Why a keystore or share operation failed.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists { path: PathBuf },
    #[error("keystore is not valid JSON for {KEYSTORE_FORMAT}: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unsupported keystore format {found:?}, expected {KEYSTORE_FORMAT:?}")]
    UnsupportedFormat { found: String },
    #[error("malformed keystore: bad {field}")]
    MalformedKeystore { field: &'static str },
    #[error("keystore file is larger than {MAX_KEYSTORE_LEN} bytes")]
    KeystoreTooLarge,
    #[error("keystore is protected by {found}, not {expected}")]
    WrongProtection {
        expected: &'static str,
        found: &'static str,
    },
    #[error("invalid protection parameters: {reason}")]
    InvalidProtection { reason: &'static str },
    #[error("empty passphrase")]
    EmptyPassphrase,
    #[error("argon2 refused the parameters: {0}")]
    Kdf(argon2::Error),
    #[error("operating system random number generator failed")]
    Rng(#[source] rand_core::Error),
    #[error("Shamir split did not recover the unseal key")]
    ShareSplit,
    #[error("not an unseal share: {reason}")]
    ShareFormat { reason: &'static str },
    /// The share's checksum does not match: a typo or a damaged copy.
    #[error("unseal share {index} is corrupted (checksum mismatch)")]
    CorruptShare { index: u8 },
    #[error("unseal share is for ledger {found}, the keystore is for {expected}")]
    ShareLedgerMismatch { expected: LedgerId, found: LedgerId },
    /// The share belongs to another keystore (another share set); refused before any crypto.
    #[error("unseal share {index} belongs to share set {found}, this keystore's is {expected}")]
    ForeignShare {
        index: u8,
        expected: ShareSetId,
        found: ShareSetId,
    },
    #[error("unseal share index {index} is out of range 1..={count}")]
    ShareIndexOutOfRange { index: u8, count: u8 },
    #[error("unseal share {index} given more than once")]
    DuplicateShare { index: u8 },
    #[error("{given} distinct unseal share(s) given, {needed} needed")]
    NotEnoughShares { needed: u8, given: usize },
    /// Decryption failed: wrong passphrase or shares, or the keystore file was modified.
    #[error("wrong passphrase or unseal shares, or the keystore was modified")]
    WrongUnsealSecret,
    /// Decrypted secrets do not match the header: the keystore was written inconsistently.
    #[error("decrypted {which} does not match the keystore header")]
    KeysMismatch { which: &'static str },
}

/// The service's secrets. Zeroized on drop (the signing keys through ed25519-dalek's `zeroize`
/// feature, the KEK through [`Kek`]); deliberately no `Debug`.
pub struct Secrets {
    pub root: SigningKey,
    pub writer: SigningKey,
    pub kek: Kek,
}

impl Secrets {
    /// Fresh secrets from the operating system's random number generator (panics if it fails).
    pub fn generate() -> Secrets {
        Secrets {
            root: SigningKey::generate(&mut OsRng),
            writer: SigningKey::generate(&mut OsRng),
            kek: Kek::generate(),
        }
    }

    pub fn root_public(&self) -> Bytes32 {
        Bytes32(self.root.verifying_key().to_bytes())
    }

    pub fn writer_public(&self) -> Bytes32 {
        Bytes32(self.writer.verifying_key().to_bytes())
    }
}

/// Argon2id cost parameters (memory in KiB, passes, lanes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes, 1 lane.
    fn default() -> Self {
        Argon2Params {
            m_cost_kib: 65536,
            t_cost: 3,
            p_cost: 1,
        }
    }
}

/// How a new keystore is protected.
pub enum Protection {
    /// `U = Argon2id(passphrase, random salt)`. The passphrase is used as UTF-8 bytes, without
    /// normalisation.
    Passphrase {
        passphrase: Zeroizing<String>,
        params: Argon2Params,
    },
    /// `U` is random and split into `count` shares, any `threshold` of which recover it.
    Shares { threshold: u8, count: u8 },
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::Passphrase { params, .. } => f
                .debug_struct("Passphrase")
                .field("passphrase", &"<redacted>")
                .field("params", params)
                .finish(),
            Protection::Shares { threshold, count } => f
                .debug_struct("Shares")
                .field("threshold", threshold)
                .field("count", count)
                .finish(),
        }
    }
}

/// The public description of a keystore's protection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtectionKind {
    Passphrase { params: Argon2Params },
    Shares { threshold: u8, count: u8 },
}

impl ProtectionKind {
    fn name(&self) -> &'static str {
        match self {
            ProtectionKind::Passphrase { .. } => PASSPHRASE_KIND,
            ProtectionKind::Shares { .. } => SHARES_KIND,
        }
    }
}

/// What a keystore says about itself, readable without any secret. Unauthenticated until the
/// keystore is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeystoreInfo {
    pub ledger: LedgerId,
    pub root_public: Bytes32,
    pub writer_public: Bytes32,
    pub kek_id: Bytes32,
    pub protection: ProtectionKind,
}

/// Random id of one split of an unseal key; every share carries it, so shares of another
/// keystore are refused by id before any crypto.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShareSetId(pub [u8; 16]);

impl fmt::Display for ShareSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ShareSetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShareSetId({self})")
    }
}

/// One Shamir share of an unseal key. Zeroized on drop; `Debug` omits the share bytes.
///
/// Text form (all hex lowercase):
///
/// ```text
/// klshare1-<ledger>-<index>-<share: 64 hex>-<share set id: 32 hex>-<check: 8 hex>
/// ```
///
/// `index` is the share's x coordinate in decimal (1..=255). `check` is the first 4 bytes of
/// BLAKE3 `derive_key("keyledger 2026-11 unseal share check v1", <text before "-check">)`,
/// a typo check (not a secret). Ledger ids may contain `-`; the text is parsed from the right.
#[derive(Clone)]
pub struct UnsealShare {
    ledger: LedgerId,
    index: u8,
    value: Zeroizing<[u8; KEY_LEN]>,
    share_set: ShareSetId,
}

impl fmt::Debug for UnsealShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealShare")
            .field("ledger", &self.ledger)
            .field("index", &self.index)
            .field("share_set", &self.share_set)
            .finish_non_exhaustive()
    }
}

impl UnsealShare {
    pub fn ledger(&self) -> &LedgerId {
        &self.ledger
    }

    /// The share's x coordinate (1..=255).
    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn share_set(&self) -> ShareSetId {
        self.share_set
    }

    /// Everything before `-<check>`, canonical (lowercase hex).
    fn body(&self) -> Zeroizing<String> {
        // Sized up front (with room for the check appended by `to_text`), so the buffer never
        // reallocates and leaves an unzeroized copy of the share behind.
        let ledger = self.ledger.as_str();
        let mut out = Zeroizing::new(String::with_capacity(
            SHARE_PREFIX.len() + ledger.len() + 4 + 3 + 2 * KEY_LEN + 32 + 1 + 2 * SHARE_CHECK_LEN,
        ));
        out.push_str(SHARE_PREFIX);
        out.push_str(ledger);
        out.push('-');
        out.push_str(&self.index.to_string());
        out.push('-');
        out.push_str(&Zeroizing::new(hex::encode(&self.value[..])));
        out.push('-');
        out.push_str(&self.share_set.to_string());
        out
    }

    fn check(body: &str) -> [u8; SHARE_CHECK_LEN] {
        let full = Zeroizing::new(blake3::derive_key(SHARE_CHECK_CONTEXT, body.as_bytes()));
        let mut out = [0u8; SHARE_CHECK_LEN];
        out.copy_from_slice(&full[..SHARE_CHECK_LEN]);
        out
    }

    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = self.body();
        let check = Self::check(&text);
        text.push('-');
        text.push_str(&hex::encode(check));
        text
    }

    /// Parses [`UnsealShare::to_text`]; surrounding whitespace is ignored and hex may be in
    /// either case. A checksum mismatch is [`CustodyError::CorruptShare`].
    pub fn parse(s: &str) -> Result<UnsealShare, CustodyError> {
        let fmt_err = |reason| CustodyError::ShareFormat { reason };
        let rest = s
            .trim()
            .strip_prefix(SHARE_PREFIX)
            .ok_or(fmt_err("missing klshare1- prefix"))?;
        let mut parts = rest.rsplitn(5, '-');
        let (Some(check), Some(set), Some(value), Some(index), Some(ledger)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(fmt_err("too few fields"));
        };
        let ledger = LedgerId::new(ledger).map_err(|_| fmt_err("invalid ledger id"))?;
        let index: u8 = match index.parse::<u8>() {
            Ok(i) if i != 0 && index == i.to_string() => i,
            _ => return Err(fmt_err("index is not a number in 1..=255")),
        };
        let mut v = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(value, &mut v[..])
            .map_err(|_| fmt_err("share is not 64 hex digits"))?;
        let mut set_id = [0u8; 16];
        hex::decode_to_slice(set, &mut set_id)
            .map_err(|_| fmt_err("share set id is not 32 hex digits"))?;
        let mut given_check = [0u8; SHARE_CHECK_LEN];
        hex::decode_to_slice(check, &mut given_check)
            .map_err(|_| fmt_err("check is not 8 hex digits"))?;
        let share = UnsealShare {
            ledger,
            index,
            value: v,
            share_set: ShareSetId(set_id),
        };
        let want = Self::check(&share.body());
        if !bool::from(want.ct_eq(&given_check)) {
            return Err(CustodyError::CorruptShare { index });
        }
        Ok(share)
    }
}

// ---- file format ---------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeystoreFile {
    format: String,
    ledger: LedgerId,
    root_public: String,
    writer_public: String,
    kek_id: String,
    protection: FileProtection,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum FileProtection {
    Passphrase {
        kdf: String,
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: String,
    },
    Shares {
        scheme: String,
        threshold: u8,
        count: u8,
        share_set_id: String,
    },
}

/// Parsed protection parameters of a keystore, including the non-secret values needed to
/// derive `U` (salt) or to check shares (share set id).
#[derive(Clone, Copy)]
enum HeaderProtection {
    Passphrase {
        params: Argon2Params,
        salt: [u8; SALT_LEN],
    },
    Shares {
        threshold: u8,
        count: u8,
        share_set: ShareSetId,
    },
}

impl HeaderProtection {
    fn kind(&self) -> ProtectionKind {
        match *self {
            HeaderProtection::Passphrase { params, .. } => ProtectionKind::Passphrase { params },
            HeaderProtection::Shares {
                threshold, count, ..
            } => ProtectionKind::Shares { threshold, count },
        }
    }
}

/// The authenticated header fields of a keystore.
#[derive(Clone)]
struct Header {
    ledger: LedgerId,
    root_public: Bytes32,
    writer_public: Bytes32,
    kek_id: Bytes32,
    protection: HeaderProtection,
}

impl Header {
    fn info(&self) -> KeystoreInfo {
        KeystoreInfo {
            ledger: self.ledger.clone(),
            root_public: self.root_public,
            writer_public: self.writer_public,
            kek_id: self.kek_id,
            protection: self.protection.kind(),
        }
    }

    /// Canonical associated data binding every header field (frozen for v1):
    ///
    /// ```text
    /// "keyledger/keystore/v1\0" lp(format) lp(ledger) root_public[32] writer_public[32] kek_id[32]
    /// passphrase: lp("passphrase") lp("argon2id-v19") u32be(m) u32be(t) u32be(p) lp(salt)
    /// shares:     lp("shares") lp("shamir-gf256") u8(threshold) u8(count) lp(share_set_id)
    /// ```
    ///
    /// where `lp(x) = u32be(len(x)) || x`.
    fn aad(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(KEYSTORE_AAD_PREFIX);
        lp(&mut out, KEYSTORE_FORMAT.as_bytes());
        lp(&mut out, self.ledger.as_str().as_bytes());
        out.extend_from_slice(self.root_public.as_bytes());
        out.extend_from_slice(self.writer_public.as_bytes());
        out.extend_from_slice(self.kek_id.as_bytes());
        match &self.protection {
            HeaderProtection::Passphrase { params, salt } => {
                lp(&mut out, PASSPHRASE_KIND.as_bytes());
                lp(&mut out, KDF_NAME.as_bytes());
                out.extend_from_slice(&params.m_cost_kib.to_be_bytes());
                out.extend_from_slice(&params.t_cost.to_be_bytes());
                out.extend_from_slice(&params.p_cost.to_be_bytes());
                lp(&mut out, salt);
            }
            HeaderProtection::Shares {
                threshold,
                count,
                share_set,
            } => {
                lp(&mut out, SHARES_KIND.as_bytes());
                lp(&mut out, SHARE_SCHEME.as_bytes());
                out.push(*threshold);
                out.push(*count);
                lp(&mut out, &share_set.0);
            }
        }
        out
    }

    fn to_file(&self, nonce: &[u8; NONCE_LEN], ciphertext: &[u8]) -> KeystoreFile {
        KeystoreFile {
            format: KEYSTORE_FORMAT.to_owned(),
            ledger: self.ledger.clone(),
            root_public: self.root_public.to_hex(),
            writer_public: self.writer_public.to_hex(),
            kek_id: self.kek_id.to_hex(),
            protection: match self.protection {
                HeaderProtection::Passphrase { params, salt } => FileProtection::Passphrase {
                    kdf: KDF_NAME.to_owned(),
                    m_cost_kib: params.m_cost_kib,
                    t_cost: params.t_cost,
                    p_cost: params.p_cost,
                    salt: hex::encode(salt),
                },
                HeaderProtection::Shares {
                    threshold,
                    count,
                    share_set,
                } => FileProtection::Shares {
                    scheme: SHARE_SCHEME.to_owned(),
                    threshold,
                    count,
                    share_set_id: share_set.to_string(),
                },
            },
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        }
    }
}

/// `u32be(len(b)) || b`; every `b` here is at most 64 bytes.
fn lp(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}

fn hex_array<const N: usize>(s: &str, field: &'static str) -> Result<[u8; N], CustodyError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| CustodyError::MalformedKeystore { field })?;
    Ok(out)
}

/// A parsed keystore file: header, nonce and ciphertext.
struct Parsed {
    header: Header,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

fn parse_file(text: &str) -> Result<Parsed, CustodyError> {
    let f: KeystoreFile = serde_json::from_str(text).map_err(CustodyError::Json)?;
    if f.format != KEYSTORE_FORMAT {
        return Err(CustodyError::UnsupportedFormat { found: f.format });
    }
    let protection = match f.protection {
        FileProtection::Passphrase {
            kdf,
            m_cost_kib,
            t_cost,
            p_cost,
            salt,
        } => {
            if kdf != KDF_NAME {
                return Err(CustodyError::MalformedKeystore { field: "kdf" });
            }
            let params = Argon2Params {
                m_cost_kib,
                t_cost,
                p_cost,
            };
            check_argon2_params(&params)?;
            HeaderProtection::Passphrase {
                params,
                salt: hex_array(&salt, "salt")?,
            }
        }
        FileProtection::Shares {
            scheme,
            threshold,
            count,
            share_set_id,
        } => {
            if scheme != SHARE_SCHEME {
                return Err(CustodyError::MalformedKeystore { field: "scheme" });
            }
            check_share_params(threshold, count)?;
            HeaderProtection::Shares {
                threshold,
                count,
                share_set: ShareSetId(hex_array(&share_set_id, "share_set_id")?),
            }
        }
    };
    let ciphertext = hex::decode(&f.ciphertext).map_err(|_| CustodyError::MalformedKeystore {
        field: "ciphertext",
    })?;
    Ok(Parsed {
        header: Header {
            ledger: f.ledger,
            root_public: Bytes32(hex_array(&f.root_public, "root_public")?),
            writer_public: Bytes32(hex_array(&f.writer_public, "writer_public")?),
            kek_id: Bytes32(hex_array(&f.kek_id, "kek_id")?),
            protection,
        },
        nonce: hex_array(&f.nonce, "nonce")?,
        ciphertext,
    })
}

fn check_argon2_params(p: &Argon2Params) -> Result<(), CustodyError> {
    if p.m_cost_kib > MAX_M_COST_KIB || p.t_cost > MAX_T_COST || p.p_cost > MAX_P_COST {
        return Err(CustodyError::InvalidProtection {
            reason: "argon2 costs above the supported maximum (4 GiB, 64 passes, 64 lanes)",
        });
    }
    argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(KEY_LEN))
        .map(|_| ())
        .map_err(CustodyError::Kdf)
}

fn check_share_params(threshold: u8, count: u8) -> Result<(), CustodyError> {
    if threshold == 0 {
        return Err(CustodyError::InvalidProtection {
            reason: "share threshold must be at least 1",
        });
    }
    if count < threshold {
        return Err(CustodyError::InvalidProtection {
            reason: "share count must be at least the threshold",
        });
    }
    Ok(())
}

fn argon2_unseal_key(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    p: &Argon2Params,
) -> Result<Zeroizing<[u8; KEY_LEN]>, CustodyError> {
    let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(KEY_LEN))
        .map_err(CustodyError::Kdf)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut u = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase, salt, &mut u[..])
        .map_err(CustodyError::Kdf)?;
    Ok(u)
}

fn file_key(u: &[u8; KEY_LEN]) -> Zeroizing<[u8; KEY_LEN]> {
    Zeroizing::new(blake3::derive_key(FILE_KEY_CONTEXT, u))
}

/// Encrypts the secrets under `U` for `header`; returns nonce and ciphertext.
fn seal_secrets(
    header: &Header,
    u: &[u8; KEY_LEN],
    secrets: &Secrets,
) -> Result<([u8; NONCE_LEN], Vec<u8>), CustodyError> {
    let mut plain = Zeroizing::new([0u8; SECRETS_LEN]);
    plain[..KEY_LEN].copy_from_slice(secrets.root.as_bytes());
    plain[KEY_LEN..2 * KEY_LEN].copy_from_slice(secrets.writer.as_bytes());
    plain[2 * KEY_LEN..].copy_from_slice(secrets.kek.expose_bytes());
    let nonce: [u8; NONCE_LEN] = *random_bytes().map_err(CustodyError::Rng)?;
    // 96 bytes are far below AES-GCM's length limit.
    let ciphertext = aead_seal(&file_key(u), &nonce, &header.aad(), &plain[..]).map_err(|_| {
        CustodyError::InvalidProtection {
            reason: "AES-GCM refused to encrypt",
        }
    })?;
    Ok((nonce, ciphertext))
}

/// Decrypts the secrets with `U` and checks them against the header.
fn open_secrets(parsed: &Parsed, u: &[u8; KEY_LEN]) -> Result<Secrets, CustodyError> {
    let h = &parsed.header;
    let plain = aead_open(&file_key(u), &parsed.nonce, &h.aad(), &parsed.ciphertext)
        .map_err(|_| CustodyError::WrongUnsealSecret)?;
    if plain.len() != SECRETS_LEN {
        return Err(CustodyError::MalformedKeystore {
            field: "ciphertext",
        });
    }
    let key_at = |i: usize| -> Zeroizing<[u8; KEY_LEN]> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&plain[i * KEY_LEN..(i + 1) * KEY_LEN]);
        k
    };
    let secrets = Secrets {
        root: SigningKey::from_bytes(&key_at(0)),
        writer: SigningKey::from_bytes(&key_at(1)),
        kek: Kek::from_bytes(key_at(2)),
    };
    if !ct_eq32(&secrets.root_public(), &h.root_public) {
        return Err(CustodyError::KeysMismatch {
            which: "root signing key",
        });
    }
    if !ct_eq32(&secrets.writer_public(), &h.writer_public) {
        return Err(CustodyError::KeysMismatch {
            which: "writer signing key",
        });
    }
    if !ct_eq32(&secrets.kek.id(), &h.kek_id) {
        return Err(CustodyError::KeysMismatch { which: "KEK" });
    }
    Ok(secrets)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CustodyError + '_ {
    move |source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CustodyError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            CustodyError::Io {
                path: path.to_owned(),
                source,
            }
        }
    }
}

/// Creates `dir` (and missing ancestors) with mode 0700 if it does not exist.
fn ensure_private_dir(dir: &Path) -> Result<(), CustodyError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Writes `parts` to a new file at `path` (mode 0600, `create_new`), synced. On failure a file
/// this call created is removed again.
fn write_new_file(path: &Path, parts: &[&[u8]]) -> Result<(), CustodyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    let written = parts
        .iter()
        .try_for_each(|p| f.write_all(p))
        .and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = fs::remove_file(path);
        return Err(io_err(path)(e));
    }
    Ok(())
}

fn read_parsed(path: &Path) -> Result<Parsed, CustodyError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(MAX_KEYSTORE_LEN + 1).read_to_string(&mut text))
        .map_err(io_err(path))?;
    if text.len() as u64 > MAX_KEYSTORE_LEN {
        return Err(CustodyError::KeystoreTooLarge);
    }
    parse_file(&text)
}

/// Creates a keystore at `path` holding `secrets`, protected as `protection` says.
///
/// Refuses to overwrite an existing file. The file is created with mode 0600; a missing parent
/// directory is created with mode 0700. Returns the keystore's description and, for
/// [`Protection::Shares`], the `count` unseal shares (to hand out; they are not stored anywhere),
/// or no shares for a passphrase.
pub fn create_keystore(
    path: &Path,
    ledger: &LedgerId,
    secrets: &Secrets,
    protection: &Protection,
) -> Result<(KeystoreInfo, Vec<UnsealShare>), CustodyError> {
    // Validate everything cheap before the (deliberately slow) key derivation.
    match protection {
        Protection::Passphrase { passphrase, params } => {
            if passphrase.is_empty() {
                return Err(CustodyError::EmptyPassphrase);
            }
            check_argon2_params(params)?;
        }
        Protection::Shares { threshold, count } => check_share_params(*threshold, *count)?,
    }
    if path.symlink_metadata().is_ok() {
        return Err(CustodyError::AlreadyExists {
            path: path.to_owned(),
        });
    }

    let (header_protection, u, shares) = match protection {
        Protection::Passphrase { passphrase, params } => {
            let salt: [u8; SALT_LEN] = *random_bytes().map_err(CustodyError::Rng)?;
            let u = argon2_unseal_key(passphrase.as_bytes(), &salt, params)?;
            let hp = HeaderProtection::Passphrase {
                params: *params,
                salt,
            };
            (hp, u, Vec::new())
        }
        Protection::Shares { threshold, count } => {
            let u: Zeroizing<[u8; KEY_LEN]> = random_bytes().map_err(CustodyError::Rng)?;
            let share_set = ShareSetId(*random_bytes().map_err(CustodyError::Rng)?);
            let shares = split(ledger, share_set, &u, *threshold, *count)?;
            let hp = HeaderProtection::Shares {
                threshold: *threshold,
                count: *count,
                share_set,
            };
            (hp, u, shares)
        }
    };

    let header = Header {
        ledger: ledger.clone(),
        root_public: secrets.root_public(),
        writer_public: secrets.writer_public(),
        kek_id: secrets.kek.id(),
        protection: header_protection,
    };
    let (nonce, ciphertext) = seal_secrets(&header, &u, secrets)?;
    let file = header.to_file(&nonce, &ciphertext);
    // Invariant: the file struct holds only strings and integers, which always serialise.
    let json = serde_json::to_string_pretty(&file).expect("keystore JSON always serialises");

    if let Some(parent) = path.parent() {
        ensure_private_dir(parent)?;
    }
    write_new_file(path, &[json.as_bytes(), b"\n"])?;
    Ok((header.info(), shares))
}

/// Splits `u` into `count` shares (x = 1..=count) and checks that `threshold` of them recover it.
fn split(
    ledger: &LedgerId,
    share_set: ShareSetId,
    u: &[u8; KEY_LEN],
    threshold: u8,
    count: u8,
) -> Result<Vec<UnsealShare>, CustodyError> {
    let sharks = blahaj::Sharks(threshold);
    let mut shares = Vec::with_capacity(usize::from(count));
    for s in sharks.dealer(&u[..]).take(usize::from(count)) {
        let bytes = Zeroizing::new(Vec::from(&s));
        let (Some((&index, value)), true) = (bytes.split_first(), bytes.len() == 1 + KEY_LEN)
        else {
            return Err(CustodyError::ShareSplit);
        };
        let mut v = Zeroizing::new([0u8; KEY_LEN]);
        v.copy_from_slice(value);
        shares.push(UnsealShare {
            ledger: ledger.clone(),
            index,
            value: v,
            share_set,
        });
    }
    let recovered = recover(
        threshold,
        &shares[..usize::from(threshold).min(shares.len())],
    )?;
    if shares.len() != usize::from(count) || !bool::from(recovered.ct_eq(u)) {
        return Err(CustodyError::ShareSplit);
    }
    Ok(shares)
}

/// Lagrange interpolation of `U` from shares already checked to be distinct and enough.
fn recover(
    threshold: u8,
    shares: &[UnsealShare],
) -> Result<Zeroizing<[u8; KEY_LEN]>, CustodyError> {
    let mut points = Vec::with_capacity(shares.len());
    for s in shares {
        let mut bytes = Zeroizing::new(Vec::with_capacity(1 + KEY_LEN));
        bytes.push(s.index);
        bytes.extend_from_slice(&s.value[..]);
        // blahaj::Share zeroizes itself on drop (its default `zeroize_memory` feature).
        let share = blahaj::Share::try_from(&bytes[..]).map_err(|_| CustodyError::ShareFormat {
            reason: "share too short",
        })?;
        points.push(share);
    }
    let secret = Zeroizing::new(blahaj::Sharks(threshold).recover(&points).map_err(|_| {
        CustodyError::NotEnoughShares {
            needed: threshold,
            given: shares.len(),
        }
    })?);
    if secret.len() != KEY_LEN {
        return Err(CustodyError::ShareSplit);
    }
    let mut u = Zeroizing::new([0u8; KEY_LEN]);
    u.copy_from_slice(&secret);
    Ok(u)
}

/// Writes one file per share into `dir` (created 0700 if missing), each mode 0600 and
/// `create_new`, named `<ledger>-<share set id>-share-<index>.txt`, holding the share's text
/// form and a newline. If any file cannot be written, the files written by this call are
/// removed again. Returns the paths in the order of `shares`.
pub fn write_share_files(dir: &Path, shares: &[UnsealShare]) -> Result<Vec<PathBuf>, CustodyError> {
    ensure_private_dir(dir)?;
    let mut written: Vec<PathBuf> = Vec::with_capacity(shares.len());
    for s in shares {
        let path = dir.join(format!(
            "{}-{}-share-{}.txt",
            s.ledger, s.share_set, s.index
        ));
        let text = s.to_text();
        if let Err(e) = write_new_file(&path, &[text.as_bytes(), b"\n"]) {
            for p in &written {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
        written.push(path);
    }
    Ok(written)
}

/// Reads a keystore's header. Needs no secret; the result is unauthenticated until the
/// keystore is opened.
pub fn read_keystore_info(path: &Path) -> Result<KeystoreInfo, CustodyError> {
    Ok(read_parsed(path)?.header.info())
}

/// Opens a passphrase-protected keystore. A wrong passphrase (or a modified file) is
/// [`CustodyError::WrongUnsealSecret`].
pub fn open_with_passphrase(path: &Path, passphrase: &str) -> Result<Secrets, CustodyError> {
    let parsed = read_parsed(path)?;
    let HeaderProtection::Passphrase { params, salt } = parsed.header.protection else {
        return Err(CustodyError::WrongProtection {
            expected: PASSPHRASE_KIND,
            found: parsed.header.protection.kind().name(),
        });
    };
    let u = argon2_unseal_key(passphrase.as_bytes(), &salt, &params)?;
    open_secrets(&parsed, &u)
}

/// Opens a share-protected keystore.
///
/// Before any crypto, refuses shares of another ledger ([`CustodyError::ShareLedgerMismatch`]),
/// of another keystore ([`CustodyError::ForeignShare`]), with an index beyond the share count,
/// given twice ([`CustodyError::DuplicateShare`]), or fewer than the threshold
/// ([`CustodyError::NotEnoughShares`]). Shares that recover the wrong key (damaged values with a
/// valid check) are [`CustodyError::WrongUnsealSecret`].
pub fn open_with_shares(path: &Path, shares: &[UnsealShare]) -> Result<Secrets, CustodyError> {
    let parsed = read_parsed(path)?;
    let h = &parsed.header;
    let HeaderProtection::Shares {
        threshold,
        count,
        share_set,
    } = h.protection
    else {
        return Err(CustodyError::WrongProtection {
            expected: SHARES_KIND,
            found: h.protection.kind().name(),
        });
    };
    let mut seen = [false; 256];
    for s in shares {
        if s.ledger != h.ledger {
            return Err(CustodyError::ShareLedgerMismatch {
                expected: h.ledger.clone(),
                found: s.ledger.clone(),
            });
        }
        if s.share_set != share_set {
            return Err(CustodyError::ForeignShare {
                index: s.index,
                expected: share_set,
                found: s.share_set,
            });
        }
        if s.index == 0 || s.index > count {
            return Err(CustodyError::ShareIndexOutOfRange {
                index: s.index,
                count,
            });
        }
        let slot = &mut seen[usize::from(s.index)];
        if *slot {
            return Err(CustodyError::DuplicateShare { index: s.index });
        }
        *slot = true;
    }
    if shares.len() < usize::from(threshold) {
        return Err(CustodyError::NotEnoughShares {
            needed: threshold,
            given: shares.len(),
        });
    }
    let u = recover(threshold, shares)?;
    open_secrets(&parsed, &u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn small() -> Argon2Params {
        Argon2Params {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }

    fn pass(p: &str) -> Protection {
        Protection::Passphrase {
            passphrase: Zeroizing::new(p.to_owned()),
            params: small(),
        }
    }

    fn ledger(s: &str) -> LedgerId {
        LedgerId::new(s).unwrap()
    }

    /// The error of a result whose success type has no `Debug` (like [`Secrets`]).
    fn err<T>(r: Result<T, CustodyError>) -> CustodyError {
        match r {
            Ok(_) => panic!("expected an error, got success"),
            Err(e) => e,
        }
    }

    fn same_secrets(a: &Secrets, b: &Secrets) {
        assert_eq!(a.root.as_bytes(), b.root.as_bytes());
        assert_eq!(a.writer.as_bytes(), b.writer.as_bytes());
        assert_eq!(a.kek.expose_bytes(), b.kek.expose_bytes());
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// A 2-of-3 share keystore in a fresh directory.
    struct SharesFixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        secrets: Secrets,
        shares: Vec<UnsealShare>,
    }

    fn shares_fixture(l: &str) -> SharesFixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore.json");
        let secrets = Secrets::generate();
        let (info, shares) = create_keystore(
            &path,
            &ledger(l),
            &secrets,
            &Protection::Shares {
                threshold: 2,
                count: 3,
            },
        )
        .unwrap();
        assert_eq!(
            info.protection,
            ProtectionKind::Shares {
                threshold: 2,
                count: 3
            }
        );
        assert_eq!(shares.len(), 3);
        SharesFixture {
            _dir: dir,
            path,
            secrets,
            shares,
        }
    }

    #[test]
    fn passphrase_create_open() {
        let dir = tempfile::tempdir().unwrap();
        // The parent directory does not exist yet: it is created 0700.
        let path = dir.path().join("state").join("keystore.json");
        let secrets = Secrets::generate();
        let l = ledger("prod-eu");
        let (info, shares) = create_keystore(&path, &l, &secrets, &pass("correct horse")).unwrap();
        assert!(shares.is_empty());
        assert_eq!(
            info,
            KeystoreInfo {
                ledger: l.clone(),
                root_public: secrets.root_public(),
                writer_public: secrets.writer_public(),
                kek_id: secrets.kek.id(),
                protection: ProtectionKind::Passphrase { params: small() },
            }
        );
        assert_eq!(read_keystore_info(&path).unwrap(), info);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);

        let opened = open_with_passphrase(&path, "correct horse").unwrap();
        same_secrets(&secrets, &opened);

        for wrong in ["correct horsE", "", "correct horse "] {
            assert!(matches!(
                err(open_with_passphrase(&path, wrong)),
                CustodyError::WrongUnsealSecret
            ));
        }
        assert!(matches!(
            err(open_with_shares(&path, &[])),
            CustodyError::WrongProtection {
                expected: "shares",
                found: "passphrase"
            }
        ));

        // Never overwrites, and leaves the existing file alone.
        let before = fs::read(&path).unwrap();
        let other = Secrets::generate();
        assert!(matches!(
            create_keystore(&path, &l, &other, &pass("x")),
            Err(CustodyError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn refuses_bad_protection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let s = Secrets::generate();
        let l = ledger("l");
        let check = |p: Protection| {
            let e = create_keystore(&path, &l, &s, &p).map(|_| ()).unwrap_err();
            assert!(
                matches!(
                    e,
                    CustodyError::InvalidProtection { .. }
                        | CustodyError::Kdf(_)
                        | CustodyError::EmptyPassphrase
                ),
                "{p:?}: {e:?}"
            );
        };
        check(Protection::Shares {
            threshold: 0,
            count: 3,
        });
        check(Protection::Shares {
            threshold: 4,
            count: 3,
        });
        check(pass(""));
        for params in [
            Argon2Params {
                m_cost_kib: 1,
                ..small()
            },
            Argon2Params {
                t_cost: 0,
                ..small()
            },
            Argon2Params {
                m_cost_kib: MAX_M_COST_KIB + 1,
                ..small()
            },
        ] {
            check(Protection::Passphrase {
                passphrase: Zeroizing::new("p".into()),
                params,
            });
        }
        assert!(!path.exists());
    }

    #[test]
    fn shares_open() {
        let f = shares_fixture("ledger-with-dashes");
        assert_eq!(mode(&f.path), 0o600);
        let s = &f.shares;
        let idx: Vec<u8> = s.iter().map(|s| s.index()).collect();
        assert_eq!(idx, [1, 2, 3]);
        for pick in [[0, 1], [1, 2], [0, 2], [2, 0]] {
            let chosen = [s[pick[0]].clone(), s[pick[1]].clone()];
            let opened = open_with_shares(&f.path, &chosen).unwrap();
            same_secrets(&f.secrets, &opened);
        }
        same_secrets(&f.secrets, &open_with_shares(&f.path, s).unwrap());

        // Share texts round trip, also from a file with surrounding whitespace.
        for share in s {
            let text = share.to_text();
            assert!(
                text.starts_with("klshare1-ledger-with-dashes-"),
                "{}",
                *text
            );
            let back = UnsealShare::parse(&format!("  {}\n", *text)).unwrap();
            assert_eq!(*back.to_text(), *text);
            assert_eq!(back.ledger().as_str(), "ledger-with-dashes");
            let upper = UnsealShare::parse(&text.to_uppercase().replacen(
                "KLSHARE1-LEDGER-WITH-DASHES",
                "klshare1-ledger-with-dashes",
                1,
            ))
            .unwrap();
            assert_eq!(*upper.to_text(), *text);
        }
        assert!(matches!(
            err(open_with_passphrase(&f.path, "x")),
            CustodyError::WrongProtection { .. }
        ));
    }

    #[test]
    fn shares_refused() {
        let f = shares_fixture("l1");
        let other = shares_fixture("l1");
        let other_ledger = shares_fixture("l2");
        let s = &f.shares;
        let open = |shares: &[UnsealShare]| err(open_with_shares(&f.path, shares));

        assert!(matches!(
            open(&[]),
            CustodyError::NotEnoughShares {
                needed: 2,
                given: 0
            }
        ));
        assert!(matches!(
            open(&s[..1]),
            CustodyError::NotEnoughShares {
                needed: 2,
                given: 1
            }
        ));
        assert!(matches!(
            open(&[s[0].clone(), s[0].clone()]),
            CustodyError::DuplicateShare { index: 1 }
        ));
        // The other keystore's share with the same index is refused by set id, not by crypto.
        match open(&[s[0].clone(), other.shares[1].clone()]) {
            CustodyError::ForeignShare {
                index: 2,
                expected,
                found,
            } => {
                assert_eq!(expected, s[0].share_set());
                assert_eq!(found, other.shares[1].share_set());
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            open(&[s[0].clone(), other_ledger.shares[1].clone()]),
            CustodyError::ShareLedgerMismatch { .. }
        ));
        let mut out_of_range = s[0].clone();
        out_of_range.index = 4;
        assert!(matches!(
            open(&[s[1].clone(), out_of_range]),
            CustodyError::ShareIndexOutOfRange { index: 4, count: 3 }
        ));

        // A damaged value with a valid check recovers the wrong key.
        let mut bad = s[1].clone();
        bad.value[5] ^= 0x01;
        let bad = UnsealShare::parse(&bad.to_text()).unwrap();
        assert!(matches!(
            open(&[s[0].clone(), bad]),
            CustodyError::WrongUnsealSecret
        ));

        // A typo in the text is caught by the check before it is ever used.
        let text = s[1].to_text();
        let pos = text.len() - 20; // inside the share set id
        let mut typo = text.as_bytes().to_vec();
        typo[pos] = if typo[pos] == b'0' { b'1' } else { b'0' };
        let typo = String::from_utf8(typo).unwrap();
        assert!(matches!(
            UnsealShare::parse(&typo),
            Err(CustodyError::CorruptShare { index: 2 })
        ));
        let value_pos = text.find("-2-").unwrap() + 3;
        let mut typo = text.as_bytes().to_vec();
        typo[value_pos] = if typo[value_pos] == b'a' { b'b' } else { b'a' };
        assert!(matches!(
            UnsealShare::parse(&String::from_utf8(typo).unwrap()),
            Err(CustodyError::CorruptShare { index: 2 })
        ));
        for junk in [
            "",
            "klshare1-",
            "klshare2-l1-1-00-00-00",
            &text.replacen("-2-", "-0-", 1),
            &text.replacen("-2-", "-02-", 1),
            &text.replacen("-2-", "-256-", 1),
            &text[..text.len() - 1],
            &text.replacen("klshare1-l1-", "klshare1-l.1-", 1),
        ] {
            assert!(
                matches!(
                    UnsealShare::parse(junk),
                    Err(CustodyError::ShareFormat { .. })
                ),
                "{junk}"
            );
        }
    }

    #[test]
    fn share_files() {
        let f = shares_fixture("l1");
        let dir = f._dir.path().join("shares");
        let paths = write_share_files(&dir, &f.shares).unwrap();
        assert_eq!(paths.len(), 3);
        assert_eq!(mode(&dir), 0o700);
        let mut read = Vec::new();
        for (p, s) in paths.iter().zip(&f.shares) {
            assert_eq!(mode(p), 0o600, "{}", p.display());
            let text = fs::read_to_string(p).unwrap();
            assert_eq!(text, format!("{}\n", *s.to_text()));
            read.push(UnsealShare::parse(&text).unwrap());
        }
        same_secrets(&f.secrets, &open_with_shares(&f.path, &read[1..]).unwrap());
        // Never overwrites; a failed call leaves no partial set behind.
        fs::remove_file(&paths[0]).unwrap();
        assert!(matches!(
            write_share_files(&dir, &f.shares),
            Err(CustodyError::AlreadyExists { .. })
        ));
        assert!(!paths[0].exists());
        assert!(paths[1].exists());
    }

    fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
        use base64::Engine;
        vec![
            secret.to_vec(),
            hex::encode(secret).into_bytes(),
            hex::encode_upper(secret).into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(secret)
                .into_bytes(),
        ]
    }

    fn assert_absent(haystack: &[u8], secret: &[u8], what: &str) {
        for form in forms(secret) {
            assert!(
                !haystack.windows(form.len()).any(|w| w == form),
                "{what} leaks a secret"
            );
        }
    }

    #[test]
    fn secrets_never_stored_in_clear() {
        let f = shares_fixture("l1");
        let secrets: [&[u8]; 3] = [
            f.secrets.root.as_bytes(),
            f.secrets.writer.as_bytes(),
            f.secrets.kek.expose_bytes(),
        ];
        let u = recover(2, &f.shares[..2]).unwrap();
        let ks = fs::read(&f.path).unwrap();
        for s in secrets.iter().chain([&&u[..]]) {
            assert_absent(&ks, s, "keystore file");
        }
        let paths = write_share_files(&f._dir.path().join("s"), &f.shares).unwrap();
        for p in &paths {
            let b = fs::read(p).unwrap();
            for s in secrets.iter().chain([&&u[..]]) {
                assert_absent(&b, s, "share file");
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let s = Secrets::generate();
        create_keystore(&path, &ledger("l1"), &s, &pass("pw")).unwrap();
        let ks = fs::read(&path).unwrap();
        for secret in [s.root.as_bytes(), s.writer.as_bytes(), s.kek.expose_bytes()] {
            assert_absent(&ks, secret, "passphrase keystore");
        }
    }

    /// Rewrites the keystore's JSON with `edit`.
    fn edit_file(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        edit(&mut v);
        fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }

    #[test]
    fn header_edits_break_opening() {
        type Edit = fn(&mut serde_json::Value);
        let edits: [(&str, Edit); 7] = [
            ("swap public keys", |v| {
                let r = v["root_public"].clone();
                v["root_public"] = v["writer_public"].clone();
                v["writer_public"] = r;
            }),
            ("writer_public", |v| {
                v["writer_public"] = hex::encode([7u8; 32]).into();
            }),
            ("kek_id", |v| v["kek_id"] = hex::encode([1u8; 32]).into()),
            ("ledger", |v| v["ledger"] = "other".into()),
            ("t_cost", |v| v["protection"]["t_cost"] = 2.into()),
            ("m_cost", |v| v["protection"]["m_cost_kib"] = 128.into()),
            ("salt", |v| {
                v["protection"]["salt"] = hex::encode([0u8; 16]).into();
            }),
        ];
        let secrets = Secrets::generate();
        for (what, edit) in edits {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("k.json");
            create_keystore(&path, &ledger("l1"), &secrets, &pass("pw")).unwrap();
            edit_file(&path, edit);
            let e = err(open_with_passphrase(&path, "pw"));
            assert!(
                matches!(e, CustodyError::WrongUnsealSecret),
                "{what}: {e:?}"
            );
        }

        // Share keystores: raising the threshold or count is caught by the AEAD as well.
        let f = shares_fixture("l1");
        edit_file(&f.path, |v| v["protection"]["count"] = 4.into());
        assert!(matches!(
            err(open_with_shares(&f.path, &f.shares)),
            CustodyError::WrongUnsealSecret
        ));
        let f = shares_fixture("l1");
        edit_file(&f.path, |v| v["protection"]["threshold"] = 1.into());
        assert!(matches!(
            err(open_with_shares(&f.path, &f.shares[..1])),
            CustodyError::WrongUnsealSecret
        ));
    }

    #[test]
    fn malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let secrets = Secrets::generate();
        create_keystore(&path, &ledger("l1"), &secrets, &pass("pw")).unwrap();
        let original = fs::read_to_string(&path).unwrap();
        let check = |edit: &dyn Fn(&mut serde_json::Value), want: fn(&CustodyError) -> bool| {
            fs::write(&path, &original).unwrap();
            edit_file(&path, edit);
            let e = read_keystore_info(&path).unwrap_err();
            assert!(want(&e), "{e:?}");
        };
        check(&|v| v["format"] = "keyledger-keystore/v2".into(), |e| {
            matches!(e, CustodyError::UnsupportedFormat { .. })
        });
        check(&|v| v["extra"] = 1.into(), |e| {
            matches!(e, CustodyError::Json(_))
        });
        check(&|v| v["protection"]["extra"] = 1.into(), |e| {
            matches!(e, CustodyError::Json(_))
        });
        check(&|v| v["ledger"] = "a.b".into(), |e| {
            matches!(e, CustodyError::Json(_))
        });
        check(&|v| v["kek_id"] = "00".into(), |e| {
            matches!(e, CustodyError::MalformedKeystore { field: "kek_id" })
        });
        check(&|v| v["nonce"] = "zz".into(), |e| {
            matches!(e, CustodyError::MalformedKeystore { field: "nonce" })
        });
        check(&|v| v["protection"]["kdf"] = "scrypt".into(), |e| {
            matches!(e, CustodyError::MalformedKeystore { field: "kdf" })
        });
        check(&|v| v["protection"]["m_cost_kib"] = u32::MAX.into(), |e| {
            matches!(e, CustodyError::InvalidProtection { .. })
        });
        fs::write(&path, vec![b' '; MAX_KEYSTORE_LEN as usize + 1]).unwrap();
        assert!(matches!(
            read_keystore_info(&path),
            Err(CustodyError::KeystoreTooLarge)
        ));
        assert!(matches!(
            read_keystore_info(&dir.path().join("missing.json")),
            Err(CustodyError::Io { .. })
        ));
    }

    /// A keystore whose ciphertext authenticates but whose header names other keys (which only
    /// a writer holding `U` could produce) is refused after decryption.
    #[test]
    fn decrypted_keys_must_match_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let secrets = Secrets::generate();
        create_keystore(&path, &ledger("l1"), &secrets, &pass("pw")).unwrap();
        let parsed = read_parsed(&path).unwrap();
        let HeaderProtection::Passphrase { params, salt } = parsed.header.protection else {
            panic!()
        };
        let u = argon2_unseal_key(b"pw", &salt, &params).unwrap();
        for which in ["root signing key", "writer signing key", "KEK"] {
            let mut header = parsed.header.clone();
            let other = Bytes32([3; 32]);
            match which {
                "root signing key" => header.root_public = other,
                "writer signing key" => header.writer_public = other,
                _ => header.kek_id = other,
            }
            let (nonce, ct) = seal_secrets(&header, &u, &secrets).unwrap();
            let json = serde_json::to_string(&header.to_file(&nonce, &ct)).unwrap();
            fs::write(&path, json).unwrap();
            match err(open_with_passphrase(&path, "pw")) {
                CustodyError::KeysMismatch { which: w } => assert_eq!(w, which),
                e => panic!("{which}: {e:?}"),
            }
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let f = shares_fixture("l1");
        let s = &f.shares[0];
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&hex::encode(&s.value[..])), "{dbg}");
        let dbg = format!("{:?}", pass("hunter2"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}

// ---- sealed key files -----------------------------------------------------------------------

const KEY_FILE_MAGIC: &str = "keyledger-sealed-key v1";
const KEY_FILE_CONTEXT: &str = "keyledger 2026-11 sealed key file v1";

/// Writes a 32-byte secret (an operator's token-issuer seed, a platform's attestation seed) to a
/// new file (mode 0600), sealed with AES-256-GCM under `Argon2id(passphrase)`:
/// ```text
/// keyledger-sealed-key v1
/// label <label>
/// argon2 <m_cost_kib> <t_cost> <p_cost>
/// salt <hex16>
/// nonce <hex12>
/// ciphertext <hex48>
/// ```
/// The associated data is every line before `ciphertext`, so the header cannot be altered.
pub fn write_sealed_key_file(
    path: &Path,
    label: &str,
    secret: &[u8; KEY_LEN],
    passphrase: &str,
    params: Argon2Params,
) -> Result<(), CustodyError> {
    if label.is_empty() || label.len() > 128 || label.chars().any(|c| c.is_control()) {
        return Err(CustodyError::InvalidProtection {
            reason: "label must be 1-128 printable characters",
        });
    }
    check_argon2_params(&params)?;
    let salt: [u8; SALT_LEN] = *random_bytes().map_err(CustodyError::Rng)?;
    let nonce: [u8; NONCE_LEN] = *random_bytes().map_err(CustodyError::Rng)?;
    let header = format!(
        "{KEY_FILE_MAGIC}\nlabel {label}\nargon2 {} {} {}\nsalt {}\nnonce {}\n",
        params.m_cost_kib,
        params.t_cost,
        params.p_cost,
        hex::encode(salt),
        hex::encode(nonce)
    );
    let u = argon2_unseal_key(passphrase.as_bytes(), &salt, &params)?;
    let k = Zeroizing::new(blake3::derive_key(KEY_FILE_CONTEXT, &u[..]));
    let ct = aead_seal(&k, &nonce, header.as_bytes(), secret).map_err(|_| {
        CustodyError::InvalidProtection {
            reason: "AES-GCM refused to encrypt",
        }
    })?;
    if let Some(dir) = path.parent() {
        ensure_private_dir(dir)?;
    }
    let line = format!("ciphertext {}\n", hex::encode(ct));
    write_new_file(path, &[header.as_bytes(), line.as_bytes()])
}

/// Opens a file written by [`write_sealed_key_file`]; returns its label and secret.
pub fn open_sealed_key_file(
    path: &Path,
    passphrase: &str,
) -> Result<(String, Zeroizing<[u8; KEY_LEN]>), CustodyError> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(4096).read_to_string(&mut text))
        .map_err(io_err(path))?;
    let malformed = |field| CustodyError::MalformedKeystore { field };
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != 6 || lines[0] != KEY_FILE_MAGIC {
        return Err(malformed("sealed key file header"));
    }
    let value = |i: usize, name: &'static str| {
        lines[i]
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(malformed(name))
    };
    let label = value(1, "label")?.to_owned();
    let costs: Vec<u32> = value(2, "argon2")?
        .split(' ')
        .map(|x| x.parse().map_err(|_| malformed("argon2")))
        .collect::<Result<_, _>>()?;
    let [m, t, p] = costs[..] else {
        return Err(malformed("argon2"));
    };
    let params = Argon2Params {
        m_cost_kib: m,
        t_cost: t,
        p_cost: p,
    };
    check_argon2_params(&params)?;
    let salt: [u8; SALT_LEN] = hex_array(value(3, "salt")?, "salt")?;
    let nonce: [u8; NONCE_LEN] = hex_array(value(4, "nonce")?, "nonce")?;
    let ct = hex::decode(value(5, "ciphertext")?).map_err(|_| malformed("ciphertext"))?;
    let header_len: usize = lines[..5].iter().map(|l| l.len() + 1).sum();
    let u = argon2_unseal_key(passphrase.as_bytes(), &salt, &params)?;
    let k = Zeroizing::new(blake3::derive_key(KEY_FILE_CONTEXT, &u[..]));
    let plain = aead_open(&k, &nonce, &text.as_bytes()[..header_len], &ct)
        .map_err(|_| CustodyError::WrongUnsealSecret)?;
    let secret: [u8; KEY_LEN] = plain[..].try_into().map_err(|_| malformed("ciphertext"))?;
    Ok((label, Zeroizing::new(secret)))
}

#[cfg(test)]
mod sealed_key_file_tests {
    use super::*;

    #[test]
    fn round_trip_wrong_passphrase_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("issuer.key");
        let params = Argon2Params {
            m_cost_kib: 256,
            t_cost: 1,
            p_cost: 1,
        };
        write_sealed_key_file(&path, "idp", &[7; 32], "pw", params).unwrap();
        let (label, s) = open_sealed_key_file(&path, "pw").unwrap();
        assert_eq!((label.as_str(), *s), ("idp", [7; 32]));
        assert!(matches!(
            open_sealed_key_file(&path, "wrong"),
            Err(CustodyError::WrongUnsealSecret)
        ));
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&hex::encode([7u8; 32])), "sealed, not plain");
        fs::write(&path, text.replace("label idp", "label idq")).unwrap();
        assert!(
            open_sealed_key_file(&path, "pw").is_err(),
            "header is authenticated"
        );
        assert!(matches!(
            write_sealed_key_file(&path, "idp", &[7; 32], "pw", params),
            Err(CustodyError::AlreadyExists { .. })
        ));
    }
}
