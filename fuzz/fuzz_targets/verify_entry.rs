//! Arbitrary bytes as stored message seq 3, after the genesis and enrolment of the golden-vector
//! ledger: verification must never panic, and bytes that are not a genuinely signed entry are
//! always foreign: never chained, never a chain break.
#![no_main]

use bytes::Bytes;
use ledger::canonical;
use ledger::entry;
use ledger::{Checked, Event};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    // The decoders on the raw bytes and, when they are framed, on the body.
    let _ = canonical::decode::<Event>(data);
    if let Ok((body, _sig)) = entry::split(data) {
        if let Ok(e) = canonical::decode::<Event>(body) {
            assert_eq!(
                canonical::encode(&e),
                body,
                "decode accepted non-canonical bytes"
            );
        }
    }

    let v = common::Vectors::get();
    let mut state = v.state();
    let mut msgs = v.prefix();
    msgs.push((3, Bytes::copy_from_slice(data)));
    let (out, err) = state.check_batch(msgs);
    assert!(
        matches!(out.first(), Some(Checked::Event(_)))
            && matches!(out.get(1), Some(Checked::Event(_))),
        "the genuine prefix must verify: {out:?} {err:?}"
    );
    if v.is_genuine(data) {
        return; // a genuine entry may verify (index 2), be stale or be a gap
    }
    assert!(err.is_none(), "junk broke the chain: {err:?}");
    assert_eq!(out.len(), 3);
    assert!(
        matches!(out[2], Checked::Foreign(_)),
        "junk verified: {:?}",
        out[2]
    );
    assert_eq!(state.head().map(|h| h.index), Some(1));
    assert_eq!(state.counts(), (2, 1));
});
