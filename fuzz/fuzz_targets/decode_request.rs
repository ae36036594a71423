//! Request decoding (`api::wire`): arbitrary bytes as a JSON body and as a MessagePack body,
//! decoded into the argument type of every operation of `api::service` `dispatch`.
//!
//! - Never panics.
//! - An error is always one of the stable `ErrorCode` strings, with that code's status, in
//!   400..=413 (a body can only be malformed, invalid or too large).
//! - When decoding succeeds, `encode_request` and decoding again (in the same encoding and in the
//!   other one) gives equal common fields and equal arguments.
//! - The two encodings share one schema: when the bytes are a JSON (MessagePack) document, the
//!   same document transcoded to MessagePack (JSON) decodes to the same result (documents nested
//!   deeper than JSON's limit excepted, see `MAX_TRANSCODED_DEPTH`).
//! - `parse_versioned` on the bytes as a string: never panics; on success `versioned` of the
//!   result is the input itself (the form is canonical) and parses back to the same.
#![no_main]

use std::fmt::Debug;

use api::wire::{
    decode_request, encode_request, parse_versioned, versioned, CompromiseArgs, CreateArgs,
    DataKeyArgs, Decoded, DecryptArgs, DestroyArgs, Encoding, EncryptArgs, ErrorCode,
    GetMaterialArgs, GrantArgs, ImportArgs, KeyArgs, ListArgs, MessageArgs, NoArgs, RandomArgs,
    RevokeArgs, ScheduleDestroyArgs, SetVersionsArgs, StateArgs, VerifyArgs, VerifyMacArgs,
    WireError, MAX_REQUEST_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

const ENCODINGS: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

fn other(enc: Encoding) -> Encoding {
    match enc {
        Encoding::Json => Encoding::MsgPack,
        Encoding::MsgPack => Encoding::Json,
    }
}

/// The error is a stable wire error of a request that could not be decoded.
fn check_error(e: &WireError, what: &str) {
    let code = ErrorCode::ALL
        .iter()
        .find(|c| c.as_str() == e.code)
        .unwrap_or_else(|| panic!("{what}: unstable error code {:?}: {e:?}", e.code));
    assert_eq!(
        e.status,
        code.status(),
        "{what}: status of {}: {e:?}",
        e.code
    );
    assert!(
        (400..=413).contains(&e.status),
        "{what}: status {} for a request body: {e:?}",
        e.status
    );
}

/// Decodes `body` as `T` and checks the outcome; `Err(code)` when it was refused.
fn decode_one<T>(enc: Encoding, body: &[u8], what: &str) -> Result<Decoded<T>, &'static str>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    match decode_request::<T>(enc, body) {
        Ok(d) => {
            // Round trip, in the same encoding and in the other one.
            for enc2 in [enc, other(enc)] {
                let again = encode_request(enc2, &d.common, &d.args);
                let d2 = decode_request::<T>(enc2, &again).unwrap_or_else(|e| {
                    panic!(
                        "{what}: {enc:?} body decoded to {d:?}, re-encoded as {enc2:?} \
                         ({again:?}), refused: {e:?}"
                    )
                });
                assert_eq!(d2.common, d.common, "{what}: common fields via {enc2:?}");
                assert_eq!(d2.args, d.args, "{what}: arguments via {enc2:?}");
            }
            Ok(d)
        }
        Err(e) => {
            check_error(&e, what);
            Err(e.code)
        }
    }
}

/// Decodes `body` (and, when given, the same document in the other encoding) as `T`.
fn check_type<T>(enc: Encoding, body: &[u8], twin: Option<&[u8]>) -> Result<(), &'static str>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let what = std::any::type_name::<T>();
    let got = decode_one::<T>(enc, body, what);
    if let Some(twin) = twin {
        let twin_got = decode_one::<T>(other(enc), twin, what);
        match (&got, &twin_got) {
            (Ok(a), Ok(b)) => {
                assert_eq!(
                    a.common, b.common,
                    "{what}: {enc:?} and its transcoding differ"
                );
                assert_eq!(a.args, b.args, "{what}: {enc:?} and its transcoding differ");
            }
            (Err(a), Err(b)) => assert_eq!(a, b, "{what}: {enc:?} and its transcoding differ"),
            _ => panic!(
                "{what}: {enc:?} body {body:?} gave {got:?}, the same document as {:?} {twin:?} \
                 gave {twin_got:?}",
                other(enc)
            ),
        }
    }
    got.map(|_| ())
}

/// Every argument type of `dispatch`. The checks before the arguments are decoded (size, syntax,
/// "an object") do not depend on the type: once the first type is refused for one of those,
/// the others would be refused identically, so they are skipped.
fn check_all(enc: Encoding, body: &[u8], twin: Option<&[u8]>) {
    match check_type::<NoArgs>(enc, body, twin) {
        Err(c) if c == ErrorCode::MalformedRequest.as_str() => return,
        Err(c) if c == ErrorCode::PayloadTooLarge.as_str() => return,
        _ => {}
    }
    let _ = check_type::<CreateArgs>(enc, body, twin);
    let _ = check_type::<ImportArgs>(enc, body, twin);
    let _ = check_type::<KeyArgs>(enc, body, twin);
    let _ = check_type::<ListArgs>(enc, body, twin);
    let _ = check_type::<StateArgs>(enc, body, twin);
    let _ = check_type::<CompromiseArgs>(enc, body, twin);
    let _ = check_type::<SetVersionsArgs>(enc, body, twin);
    let _ = check_type::<ScheduleDestroyArgs>(enc, body, twin);
    let _ = check_type::<DestroyArgs>(enc, body, twin);
    let _ = check_type::<GrantArgs>(enc, body, twin);
    let _ = check_type::<RevokeArgs>(enc, body, twin);
    let _ = check_type::<GetMaterialArgs>(enc, body, twin);
    let _ = check_type::<EncryptArgs>(enc, body, twin);
    let _ = check_type::<DecryptArgs>(enc, body, twin);
    let _ = check_type::<DataKeyArgs>(enc, body, twin);
    let _ = check_type::<MessageArgs>(enc, body, twin);
    let _ = check_type::<VerifyArgs>(enc, body, twin);
    let _ = check_type::<VerifyMacArgs>(enc, body, twin);
    let _ = check_type::<RandomArgs>(enc, body, twin);
}

/// Nesting depth of a document (a scalar is 0).
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// serde_json refuses documents nested deeper than 128 (`malformed-request`); rmp_serde takes
/// up to 1024 levels. Deeper documents are not transcoded: no argument type is nested more than
/// a few levels, so either way such a body is refused, only with a different code.
const MAX_TRANSCODED_DEPTH: usize = 120;

/// The document `body` holds, in the other encoding (when it is one and both fit the limits).
fn transcode(enc: Encoding, body: &[u8]) -> Option<Vec<u8>> {
    if body.is_empty() || body.len() > MAX_REQUEST_BYTES {
        return None;
    }
    let value = enc.decode_value(body).ok()?;
    if depth(&value) > MAX_TRANSCODED_DEPTH {
        return None;
    }
    let twin = other(enc).encode(&value);
    (twin.len() <= MAX_REQUEST_BYTES).then_some(twin)
}

fuzz_target!(|data: &[u8]| {
    for enc in ENCODINGS {
        let twin = transcode(enc, data);
        check_all(enc, data, twin.as_deref());
    }

    if let Ok(s) = std::str::from_utf8(data) {
        let parsed = parse_versioned(s, "fuzz");
        if let Err(e) = &parsed {
            check_error(e, "parse_versioned");
        }
        if let Ok((v, bytes)) = parsed {
            let formatted = versioned(v, &bytes);
            assert_eq!(
                parse_versioned(&formatted, "fuzz"),
                Ok((v, bytes)),
                "versioned does not parse back: {formatted:?}"
            );
            assert_eq!(
                formatted, s,
                "parse_versioned accepted a non-canonical form"
            );
        }
    }
});
