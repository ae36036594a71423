//! A foreign message must not change how the messages after it verify: arbitrary bytes at seq 3,
//! then the genuine next event (index 2) at seq 4. Whatever the junk is (unless it is itself a
//! genuine entry), the genuine event verifies, in one batch and one message at a time alike.
#![no_main]

use bytes::Bytes;
use ledger::{ChainState, Checked};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fn outcome(state: &mut ChainState, msgs: Vec<(u64, Bytes)>, batch: usize) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in msgs.chunks(batch) {
        let (checked, err) = state.check_batch(chunk.to_vec());
        out.extend(checked.iter().map(|c| match c {
            Checked::Event(v) => format!(
                "event seq {} index {} hash {}",
                v.seq(),
                v.event().index,
                v.hash()
            ),
            Checked::Foreign(f) => format!("foreign seq {}: {}", f.seq, f.reason),
        }));
        if let Some(e) = err {
            out.push(format!("chain error: {e}"));
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let v = common::Vectors::get();
    if v.is_genuine(data) {
        return;
    }
    let mut msgs = v.prefix();
    msgs.push((3, Bytes::copy_from_slice(data)));
    msgs.push((4, v.entries[2].clone()));
    let whole = outcome(&mut v.state(), msgs.clone(), msgs.len());
    let single = outcome(&mut v.state(), msgs, 1);
    assert_eq!(whole.len(), 4, "{whole:#?}");
    assert!(
        whole[2].starts_with("foreign seq 3"),
        "junk verified: {whole:#?}"
    );
    assert!(
        whole[3].starts_with("event seq 4 index 2"),
        "a foreign message changed how the next genuine event verifies: {whole:#?}"
    );
    assert_eq!(whole, single, "the outcome depends on batching");
});
