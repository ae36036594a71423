//! The wire format of the keyledger service: subjects, request and reply bodies, error codes.
//! Every type that crosses NATS is defined here and only here; ledger types are not wire types.
//!
//! - Subjects: `keyledger.v1.<ledger>.<operation>` (operation names as in [`OPERATIONS`]).
//! - Bodies are JSON objects by default; MessagePack maps when the request carries the header
//!   `Content-Type: application/msgpack` (the reply then is MessagePack too). The schema is the
//!   same in both.
//! - A request body holds the common fields `token` (bearer JWT), `request_id` (optional
//!   idempotency key chosen by the caller), `quote` (optional platform evidence), and the
//!   operation's own fields. Unknown fields are refused.
//! - Binary values are standard base64 strings (with padding). Ciphertexts, signatures and MACs
//!   are strings `kl:v<version>:<base64>` that name the key version that made them.
//! - A reply is `{"ok": <result>, "seq": <ledger sequence>}` or
//!   `{"error": {"code": "<stable code>", "message": "<text>"}}`. Error replies also carry the
//!   NATS service headers `Nats-Service-Error` (the message) and `Nats-Service-Error-Code`
//!   (an HTTP-like status), and `Keyledger-Error` (the stable code).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use ledger::event::{KeyState, KeyType, Operation};

/// Version segment of every subject.
pub const API_VERSION: &str = "v1";
/// Largest request body accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Content type that selects MessagePack.
pub const MSGPACK: &str = "application/msgpack";
/// Header with the stable error code on error replies.
pub const ERROR_CODE_HEADER: &str = "Keyledger-Error";
/// Largest `random` request, in bytes.
pub const MAX_RANDOM_BYTES: usize = 1024;
/// Largest page of `list`.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Largest page of the audit views (`audit-*`).
pub const MAX_AUDIT_LIMIT: usize = 1000;
/// Default page of the audit views.
pub const DEFAULT_AUDIT_LIMIT: usize = 100;

/// The service's operations: subject suffixes, in documentation order.
pub const OPERATIONS: &[&str] = &[
    "nonce",
    "create",
    "import",
    "describe",
    "list",
    "rotate",
    "set-versions",
    "activate",
    "suspend",
    "deactivate",
    "compromise",
    "schedule-destroy",
    "cancel-destroy",
    "destroy",
    "grant",
    "revoke",
    "get-material",
    "encrypt",
    "decrypt",
    "rewrap",
    "generate-data-key",
    "sign",
    "verify",
    "mac",
    "verify-mac",
    "random",
    "audit-key",
    "audit-principal",
    "audit-platform",
    "audit-refusals",
];

/// The subject prefix of one ledger's service.
pub fn subject_prefix(ledger: &str) -> String {
    format!("keyledger.{API_VERSION}.{ledger}")
}

/// Body encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    /// From a request's `Content-Type` header value (absent: JSON).
    pub fn from_content_type(ct: Option<&str>) -> Encoding {
        match ct {
            Some(ct) if ct.trim().eq_ignore_ascii_case(MSGPACK) => Encoding::MsgPack,
            _ => Encoding::Json,
        }
    }

    pub fn encode<T: Serialize>(self, v: &T) -> Vec<u8> {
        // Invariant: wire types are plain data (strings, numbers, maps with string keys); neither
        // encoder can fail on them when writing to memory.
        match self {
            Encoding::Json => serde_json::to_vec(v).expect("wire types encode as JSON"),
            Encoding::MsgPack => {
                rmp_serde::to_vec_named(v).expect("wire types encode as MessagePack")
            }
        }
    }

    /// Decodes a body into a JSON value tree (MessagePack maps to the same tree).
    pub fn decode_value(self, body: &[u8]) -> Result<serde_json::Value, WireError> {
        match self {
            Encoding::Json => serde_json::from_slice(body).map_err(|e| {
                WireError::new(
                    ErrorCode::MalformedRequest,
                    format!("body is not valid JSON: {e}"),
                )
            }),
            Encoding::MsgPack => {
                let mut cursor = std::io::Cursor::new(body);
                let v: serde_json::Value = rmp_serde::from_read(&mut cursor).map_err(|e| {
                    WireError::new(
                        ErrorCode::MalformedRequest,
                        format!("body is not valid MessagePack: {e}"),
                    )
                })?;
                // Like JSON, one value and nothing after it.
                if cursor.position() != body.len() as u64 {
                    return Err(WireError::new(
                        ErrorCode::MalformedRequest,
                        "trailing bytes after the MessagePack body",
                    ));
                }
                Ok(v)
            }
        }
    }
}

// ---- errors ---------------------------------------------------------------------------------

ledger::string_enum! {
    /// Stable error codes. Policy refusals use the policy's own codes (`Refused`).
    pub enum ErrorCode {
        /// The body is not a JSON/MessagePack object (or is truncated).
        MalformedRequest => "malformed-request",
        /// A field is missing, unknown, of the wrong type, or has a refused value.
        InvalidArgument => "invalid-argument",
        PayloadTooLarge => "payload-too-large",
        KeyNotFound => "key-not-found",
        /// The key's type does not support the operation.
        WrongKeyType => "wrong-key-type",
        /// The key's state does not allow the operation.
        WrongKeyState => "wrong-key-state",
        /// The version named does not exist, is destroyed, or is below the key's minimum.
        VersionNotUsable => "version-not-usable",
        /// The ciphertext or its associated data does not authenticate.
        DecryptFailed => "decrypt-failed",
        /// The key may not be exported.
        NotExportable => "not-exportable",
        /// Material may only leave sealed to a transport key.
        TransportKeyRequired => "transport-key-required",
        /// Scheduled destruction is not due yet (or not scheduled).
        DestructionNotDue => "destruction-not-due",
        /// The key changed concurrently; retry.
        Conflict => "conflict",
        /// The projection halted on a chain break: the service fails closed.
        LedgerHalted => "ledger-halted",
        /// NATS or the stream failed; retry.
        Unavailable => "unavailable",
        Internal => "internal",
    }
}

impl ErrorCode {
    /// The HTTP-like status of `Nats-Service-Error-Code`.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::MalformedRequest
            | ErrorCode::InvalidArgument
            | ErrorCode::DecryptFailed
            | ErrorCode::TransportKeyRequired
            | ErrorCode::WrongKeyType => 400,
            ErrorCode::KeyNotFound => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::WrongKeyState
            | ErrorCode::VersionNotUsable
            | ErrorCode::NotExportable
            | ErrorCode::DestructionNotDue
            | ErrorCode::Conflict => 409,
            ErrorCode::LedgerHalted | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// An error reply: a stable code (an [`ErrorCode`] string, or a policy refusal code such as
/// `token-expired` or `forbidden`), its HTTP-like status and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code: code.as_str(),
            status: code.status(),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> WireError {
        WireError::new(ErrorCode::InvalidArgument, message)
    }

    /// A policy refusal: 401 when the caller is not authenticated, 404 for `key-not-found`
    /// (another tenant's key looks exactly like a missing one), 400 for `key-missing`, 403
    /// otherwise.
    pub fn refused(code: &'static str, authenticated: bool, message: impl Into<String>) -> Self {
        let status = match code {
            _ if !authenticated => 401,
            "key-not-found" => 404,
            "key-missing" => 400,
            _ => 403,
        };
        WireError {
            code,
            status,
            message: message.into(),
        }
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.code == code.as_str()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.to_owned(),
            message: self.message.clone(),
        }
    }
}

/// The `error` object of a reply. `code` is an [`ErrorCode`] string, or for refusals the
/// policy's code (`token-missing`, `token-expired`, `forbidden`, `platform-required`, ...;
/// see API.md), with `status` 401 or 403.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// A reply body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    Ok { ok: T, seq: u64 },
    Error { error: ErrorBody },
}

// ---- binary values --------------------------------------------------------------------------

/// Bytes as a standard base64 string. Zeroized on drop (it may hold plaintext).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl Drop for B64 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|e| serde::de::Error::custom(format!("not standard base64: {e}")))
    }
}

/// A 32-byte value as base64.
pub fn b64_32(v: &B64, field: &str) -> Result<[u8; 32], WireError> {
    v.0.as_slice()
        .try_into()
        .map_err(|_| WireError::invalid(format!("{field} must be 32 bytes")))
}

// ---- request envelope -----------------------------------------------------------------------

/// Platform evidence as sent by a caller (see `ledger::quote`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireQuote {
    pub platform: String,
    pub nonce: B64,
    pub measurement: B64,
    pub transport_key: B64,
    pub signature: B64,
}

/// The common fields of every request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Common {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<WireQuote>,
}

/// A decoded request: common fields and the operation's arguments.
#[derive(Debug)]
pub struct Decoded<T> {
    pub common: Common,
    pub args: T,
}

/// Splits a body into its common fields and the operation's arguments, refusing unknown fields.
pub fn decode_request<T: DeserializeOwned>(
    encoding: Encoding,
    body: &[u8],
) -> Result<Decoded<T>, WireError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(WireError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "request of {} bytes exceeds {MAX_REQUEST_BYTES}",
                body.len()
            ),
        ));
    }
    let value = if body.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        encoding.decode_value(body)?
    };
    let serde_json::Value::Object(mut map) = value else {
        return Err(WireError::new(
            ErrorCode::MalformedRequest,
            "body must be an object",
        ));
    };
    let mut common = serde_json::Map::new();
    for k in ["token", "request_id", "quote"] {
        if let Some(v) = map.remove(k) {
            common.insert(k.to_owned(), v);
        }
    }
    let common: Common = serde_json::from_value(serde_json::Value::Object(common))
        .map_err(|e| WireError::invalid(e.to_string()))?;
    let args: T = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| WireError::invalid(e.to_string()))?;
    Ok(Decoded { common, args })
}

/// Encodes a request (for clients): common fields merged into the arguments' object.
pub fn encode_request<T: Serialize>(encoding: Encoding, common: &Common, args: &T) -> Vec<u8> {
    // Invariant: argument types serialise to JSON objects.
    let mut v = serde_json::to_value(args).expect("arguments encode");
    if let (serde_json::Value::Object(m), Ok(serde_json::Value::Object(c))) =
        (&mut v, serde_json::to_value(common))
    {
        m.extend(c);
    }
    encoding.encode(&v)
}

// ---- arguments ------------------------------------------------------------------------------

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitArgs {
    pub threshold: u8,
    pub shares: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    #[serde(default)]
    pub exportable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitArgs>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Create in state `pre-active` instead of `active`.
    #[serde(default)]
    pub pre_active: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportArgs {
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    /// The material (for type `wrapped`: the wrapped blob, stored as given).
    pub material: B64,
    /// Name of the foreign key that wraps the material (type `wrapped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_by: Option<String>,
    #[serde(default)]
    pub exportable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_s: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyArgs {
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateArgs {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompromiseArgs {
    pub key: String,
    pub reason: String,
    /// When the compromise is believed to have happened (default: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromised_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVersionsArgs {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_encrypt_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_decrypt_version: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDestroyArgs {
    pub key: String,
    /// Waiting period in seconds (default and minimum: the service's configured minimum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyArgs {
    pub key: String,
    /// Destroy only these versions (each below the key's minimum decryption version); without
    /// it, the whole key, once its scheduled destruction is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<u32>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<KeyState>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub key_type: Option<KeyType>,
    /// `name=value`: keys carrying this label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Who a grant is for: exactly one of the fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WireGrantee {
    Principal(String),
    Role(String),
    Tenant(String),
    PlatformGroup(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireConditions {
    #[serde(default)]
    pub require_platform: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<B64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantArgs {
    pub key: String,
    pub grantee: WireGrantee,
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub conditions: WireConditions,
    /// Chosen by the service when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeArgs {
    pub key: String,
    pub grant_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetMaterialArgs {
    pub key: String,
    /// Default: the latest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Split keys: which share (1-based) to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u8>,
    /// X25519 public key to seal the material to (required unless a quote gives one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_key: Option<B64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptArgs {
    pub key: String,
    pub plaintext: B64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<B64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptArgs {
    pub key: String,
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<B64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyArgs {
    pub key: String,
    /// 16 or 32 (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<B64>,
    /// Also return the data key, sealed to `transport_key` (or the quote's key).
    #[serde(default)]
    pub with_plaintext: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_key: Option<B64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageArgs {
    pub key: String,
    pub message: B64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyArgs {
    pub key: String,
    pub message: B64,
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyMacArgs {
    pub key: String,
    pub message: B64,
    pub mac: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomArgs {
    pub bytes: usize,
}

// ---- audit views ----------------------------------------------------------------------------
//
// The four `audit-*` operations share the selection fields `from_ms`, `to_ms` (records with
// `from_ms <= time_ms < to_ms`), `after` (a page's `next`: `"<seq>.<sub>"`) and `limit`.

/// `audit-key`: the history of one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditKeyArgs {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    /// The `next` of the previous page (`"<seq>.<sub>"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Page size (default 100, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `audit-principal`: the activity of one principal (a token's `sub`) in the caller's tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPrincipalArgs {
    pub principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `audit-platform`: what was done from one attested platform, in the caller's tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPlatformArgs {
    pub platform: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `audit-refusals`: the caller's tenant's refused requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRefusalsArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Formats an audit cursor `"<seq>.<sub>"`.
pub fn audit_cursor(seq: u64, sub: u32) -> String {
    format!("{seq}.{sub}")
}

/// Parses an audit cursor `"<seq>.<sub>"` (decimal, no sign, no leading zeros but `0`).
pub fn parse_audit_cursor(s: &str) -> Result<(u64, u32), WireError> {
    let bad = || WireError::invalid("after must be of the form <seq>.<sub>, as in a page's next");
    let (seq, sub) = s.split_once('.').ok_or_else(bad)?;
    let num = |x: &str| {
        !x.is_empty()
            && x.len() <= 20
            && x.bytes().all(|c| c.is_ascii_digit())
            && (x == "0" || !x.starts_with('0'))
    };
    if !num(seq) || !num(sub) {
        return Err(bad());
    }
    Ok((
        seq.parse().map_err(|_| bad())?,
        sub.parse().map_err(|_| bad())?,
    ))
}

// ---- results --------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceResult {
    pub nonce: B64,
    pub expires_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDescription {
    pub version: u32,
    pub created_ms: u64,
    pub created_seq: u64,
    pub destroyed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<B64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantDescription {
    pub grant_id: String,
    pub grantee: WireGrantee,
    pub operations: Vec<Operation>,
    pub conditions: WireConditions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDescription {
    pub key: String,
    pub tenant: String,
    pub name: String,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    pub state: KeyState,
    pub exportable: bool,
    pub imported: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_s: Option<u64>,
    /// When the latest version is due for rotation under `rotation_period_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_due_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitArgs>,
    pub labels: BTreeMap<String, String>,
    pub latest_version: u32,
    pub min_encrypt_version: u32,
    pub min_decrypt_version: u32,
    pub versions: Vec<VersionDescription>,
    pub grants: Vec<GrantDescription>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_after_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromised_at_ms: Option<u64>,
    pub created_seq: u64,
    pub updated_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyDescription>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantResult {
    pub key: String,
    pub grant_id: String,
}

/// Material sealed to the caller's X25519 transport key (`ledger::transport`): open with the
/// transport secret; the AEAD's associated data binds ledger, key, version and `request_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedForTransport {
    pub ephemeral_public: B64,
    pub recipient: B64,
    pub nonce: B64,
    pub ciphertext: B64,
    /// The ledger request id the sealing is bound to.
    pub request_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaterialResult {
    pub key: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u8>,
    pub sealed: SealedForTransport,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CiphertextResult {
    pub key: String,
    pub version: u32,
    pub ciphertext: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaintextResult {
    pub key: String,
    pub version: u32,
    pub plaintext: B64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKeyResult {
    pub key: String,
    pub version: u32,
    pub ciphertext: String,
    /// The data key sealed to the transport key (`with_plaintext`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext_sealed: Option<SealedForTransport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureResult {
    pub key: String,
    pub version: u32,
    pub signature: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacResult {
    pub key: String,
    pub version: u32,
    pub mac: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidResult {
    pub key: String,
    pub valid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RandomResult {
    pub random: B64,
}

/// One audit record: a fact of the ledger, traceable to the event at stream sequence `seq`.
/// An event gives one record, except `KeysUsed`, which gives one per itemised use (`sub` is
/// the use's index; 0 otherwise).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecordWire {
    /// Stream sequence of the event.
    pub seq: u64,
    /// Position within the event (`(seq, sub)` orders and identifies records).
    pub sub: u32,
    /// The event's time, ms since the epoch.
    pub time_ms: u64,
    /// The event type (`KeyCreated`, `KeysUsed`, `RequestRefused`, `PlatformAttested`, ...).
    pub event: String,
    /// The operation: of a use or refusal, or the one that made a lifecycle event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    pub principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// The attested platform the request came from, if it presented a quote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Refusals: the stable code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_code: Option<String>,
    /// Refusals: how many refused requests the record stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_count: Option<u32>,
    /// The ledger request id (of the use, for itemised uses).
    pub request_id: String,
    /// A short human description.
    pub detail: String,
}

/// Result of the `audit-*` operations: records in ledger order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecordWire>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Result of state changes (rotate, activate, schedule-destroy, destroy, ...): the key as it is
/// after the change.
pub type KeyResult = KeyDescription;

// ---- versioned tokens: kl:v<version>:<base64> -----------------------------------------------

/// Formats `kl:v<version>:<base64(bytes)>`.
pub fn versioned(version: u32, bytes: &[u8]) -> String {
    format!("kl:v{version}:{}", STANDARD.encode(bytes))
}

/// Parses `kl:v<version>:<base64>`.
pub fn parse_versioned(s: &str, field: &str) -> Result<(u32, Vec<u8>), WireError> {
    let bad = || WireError::invalid(format!("{field} is not of the form kl:v<version>:<base64>"));
    let rest = s.strip_prefix("kl:v").ok_or_else(bad)?;
    let (v, b) = rest.split_once(':').ok_or_else(bad)?;
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|c| c.is_ascii_digit()) || v.starts_with('0')
    {
        return Err(bad());
    }
    let version: u32 = v.parse().map_err(|_| bad())?;
    let bytes = STANDARD.decode(b.as_bytes()).map_err(|_| bad())?;
    Ok((version, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_round_trip_and_refusals() {
        let s = versioned(12, b"abc");
        assert_eq!(s, "kl:v12:YWJj");
        assert_eq!(parse_versioned(&s, "c").unwrap(), (12, b"abc".to_vec()));
        for bad in [
            "",
            "kl:v:YWJj",
            "kl:v0:YWJj",
            "kl:v01:YWJj",
            "kl:vx:YWJj",
            "kl:v1",
            "kl:v1:%%%",
            "vault:v1:YWJj",
            "kl:v99999999999:YWJj",
        ] {
            assert!(parse_versioned(bad, "c").is_err(), "{bad}");
        }
    }

    #[test]
    fn common_fields_are_split_and_unknown_fields_refused() {
        let body = br#"{"token":"t","request_id":"r1","key":"k1","plaintext":"AA=="}"#;
        let d: Decoded<EncryptArgs> = decode_request(Encoding::Json, body).unwrap();
        assert_eq!(d.common.token.as_deref(), Some("t"));
        assert_eq!(d.args.key, "k1");
        let unknown = br#"{"token":"t","key":"k1","plaintext":"AA==","extra":1}"#;
        let e = decode_request::<EncryptArgs>(Encoding::Json, unknown).unwrap_err();
        assert!(e.is(ErrorCode::InvalidArgument));
        assert!(e.message.contains("extra"), "{}", e.message);
        let wrong_type = br#"{"key":5,"plaintext":"AA=="}"#;
        assert_eq!(
            decode_request::<EncryptArgs>(Encoding::Json, wrong_type)
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument.as_str()
        );
        for malformed in [&b"{\"key\":"[..], b"[1,2]", b"nul", b"\xff"] {
            assert_eq!(
                decode_request::<EncryptArgs>(Encoding::Json, malformed)
                    .unwrap_err()
                    .code,
                ErrorCode::MalformedRequest.as_str(),
                "{malformed:?}"
            );
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            decode_request::<NoArgs>(Encoding::Json, &big)
                .unwrap_err()
                .code,
            ErrorCode::PayloadTooLarge.as_str()
        );
    }

    #[test]
    fn msgpack_trailing_bytes_are_refused() {
        let mut body = rmp_serde::to_vec_named(&serde_json::json!({"key": "k"})).unwrap();
        assert!(decode_request::<KeyArgs>(Encoding::MsgPack, &body).is_ok());
        body.push(0xc0);
        let e = decode_request::<KeyArgs>(Encoding::MsgPack, &body).unwrap_err();
        assert!(e.is(ErrorCode::MalformedRequest), "{e:?}");
    }

    #[test]
    fn msgpack_and_json_share_one_schema() {
        let common = Common {
            token: Some("t".into()),
            request_id: None,
            quote: None,
        };
        let args = EncryptArgs {
            key: "k1".into(),
            plaintext: B64(b"hi".to_vec()),
            aad: None,
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let body = encode_request(enc, &common, &args);
            let d: Decoded<EncryptArgs> = decode_request(enc, &body).unwrap();
            assert_eq!((d.common, d.args), (common.clone(), args.clone()));
        }
    }

    #[test]
    fn audit_cursors_round_trip_and_refusals() {
        assert_eq!(parse_audit_cursor(&audit_cursor(42, 3)).unwrap(), (42, 3));
        assert_eq!(parse_audit_cursor("0.0").unwrap(), (0, 0));
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "1.2.3",
            "01.2",
            "1.02",
            "-1.0",
            "1.x",
            "99999999999999999999.0",
            "1.4294967296",
            " 1.2",
        ] {
            assert!(parse_audit_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_error_code_has_a_status() {
        for c in ErrorCode::ALL {
            assert!((400..600).contains(&c.status()), "{c}");
        }
    }
}
