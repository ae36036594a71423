//! Shared by the fuzz targets: the golden-vector ledger (`ledger/test-vectors/events-v1.json`),
//! a valid chain of genuinely signed entries of every event type.

use bytes::Bytes;
use ledger::{Bytes32, ChainState, LedgerId};

pub struct Vectors {
    pub ledger: LedgerId,
    pub root_key: Bytes32,
    /// The framed entries, index `i` at position `i`.
    pub entries: Vec<Bytes>,
}

impl Vectors {
    fn load() -> Vectors {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../ledger/test-vectors/events-v1.json"))
                .expect("vector file");
        let hex32 = |s: &serde_json::Value| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s.as_str().expect("hex"), &mut out).expect("32 bytes of hex");
            Bytes32(out)
        };
        Vectors {
            ledger: LedgerId::new(v["ledger"].as_str().expect("ledger")).expect("ledger id"),
            root_key: hex32(&v["signers"][0]["public_key"]),
            entries: v["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| {
                    Bytes::from(hex::decode(e["entry"].as_str().expect("entry")).expect("hex"))
                })
                .collect(),
        }
    }

    pub fn get() -> &'static Vectors {
        static V: std::sync::OnceLock<Vectors> = std::sync::OnceLock::new();
        V.get_or_init(Vectors::load)
    }

    /// Genesis (seq 1) and the writer's enrolment (seq 2).
    pub fn prefix(&self) -> Vec<(u64, Bytes)> {
        vec![(1, self.entries[0].clone()), (2, self.entries[1].clone())]
    }

    /// A fresh state pinned to the vectors' root key.
    pub fn state(&self) -> ChainState {
        ChainState::new(self.ledger.clone(), Some(self.root_key))
    }

    /// Whether `data` is one of the genuinely signed entries.
    pub fn is_genuine(&self, data: &[u8]) -> bool {
        self.entries.iter().any(|e| &e[..] == data)
    }
}
