//! Chain verification over in-memory stored messages (no NATS): a clean chain verifies the same
//! way in any batching, and every kind of tampering is classified exactly (foreign message or
//! chain break).

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use ledger::canonical;
use ledger::entry;
use ledger::event::*;
use ledger::sign::{chain_and_sign, ChainTip, Draft, EventSigner, SignedEntry};
use ledger::{
    Bytes32, ChainError, ChainState, Checked, EventHash, ForeignReason, KeyId, LedgerId, RequestId,
    TenantId,
};

const LEDGER: &str = "ledger-test";
const T0: u64 = 1_767_225_600_000;

fn ledger_id() -> LedgerId {
    LedgerId::new(LEDGER).unwrap()
}

fn key(seed: u8) -> EventSigner {
    EventSigner::new(SigningKey::from_bytes(&[seed; 32]))
}

fn root() -> EventSigner {
    key(1)
}

fn writer() -> EventSigner {
    key(2)
}

fn writer2() -> EventSigner {
    key(3)
}

fn stranger() -> EventSigner {
    key(4)
}

fn draft(request: &str, body: impl Into<EventBody>) -> Draft {
    Draft {
        request_id: RequestId::new(request).unwrap(),
        actor: Actor {
            principal: "svc-test".into(),
            tenant: Some(TenantId::new("acme").unwrap()),
            token_id: None,
        },
        context: None,
        body: body.into(),
    }
}

fn genesis_body(root: &EventSigner) -> LedgerCreated {
    LedgerCreated {
        root_key: root.public_key(),
        kek_id: Bytes32([9; 32]),
    }
}

fn enrol_body(s: &EventSigner, label: &str) -> SignerEnrolled {
    SignerEnrolled {
        signer: s.id(),
        public_key: s.public_key(),
        role: SignerRole::Writer,
        label: label.into(),
    }
}

/// An ordinary writer event; index 5 is a `RequestRefused` with `count` 200 (`cc c8`).
fn writer_body(i: u64) -> EventBody {
    let key = KeyId::new(format!("k-{}", i % 7)).unwrap();
    let tenant = TenantId::new("acme").unwrap();
    match i % 4 {
        0 => KeyStateChanged {
            key,
            from: KeyState::PreActive,
            to: KeyState::Active,
            reason: format!("event {i}"),
        }
        .into(),
        1 => RequestRefused {
            key: Some(key),
            tenant: Some(tenant),
            operation: Operation::Decrypt,
            code: "forbidden".into(),
            reason: "no grant".into(),
            count: 200,
            first_ms: T0,
            last_ms: T0 + i,
        }
        .into(),
        2 => KeysUsed {
            uses: (0..(i % 3 + 1))
                .map(|u| KeyUse {
                    key: key.clone(),
                    tenant: tenant.clone(),
                    version: u as u32 + 1,
                    operation: Operation::Encrypt,
                    principal: "svc-test".into(),
                    request_id: RequestId::new(format!("use-{i}-{u}")).unwrap(),
                    context: None,
                })
                .collect(),
        }
        .into(),
        _ => MaterialAccessed {
            key,
            version: 1,
            sealed_to: Some(Bytes32([i as u8; 32])),
        }
        .into(),
    }
}

/// Builds a ledger in memory: stored messages at stream sequences 1, 2, ...
struct Builder {
    ledger: LedgerId,
    tip: ChainTip,
    entries: Vec<SignedEntry>,
}

impl Builder {
    /// Genesis by the root, then the root enrols `writer()`.
    fn new() -> Builder {
        let mut b = Builder {
            ledger: ledger_id(),
            tip: ChainTip::GENESIS,
            entries: Vec::new(),
        };
        b.push(&root(), draft("genesis", genesis_body(&root())));
        b.push(&root(), draft("enrol-1", enrol_body(&writer(), "writer-1")));
        b
    }

    /// Genesis, enrolment and `n` writer events (indexes 2..n+2), signed in one batch.
    fn with_events(n: u64) -> Builder {
        let mut b = Builder::new();
        b.writer_events(&writer(), n);
        b
    }

    fn writer_events(&mut self, by: &EventSigner, n: u64) {
        let first = self.tip.next_index;
        let drafts: Vec<Draft> = (first..first + n)
            .map(|i| draft(&format!("req-{i}"), writer_body(i)))
            .collect();
        let (signed, tip) = chain_and_sign(by, &self.ledger, self.tip, T0 + first, &drafts);
        self.tip = tip;
        self.entries.extend(signed);
    }

    fn push(&mut self, by: &EventSigner, d: Draft) {
        let (signed, tip) =
            chain_and_sign(by, &self.ledger, self.tip, T0 + self.tip.next_index, &[d]);
        self.tip = tip;
        self.entries.extend(signed);
    }

    /// An entry that is NOT appended to the chain: signed by `by` at `tip` of `ledger`.
    fn off_chain(
        &self,
        by: &EventSigner,
        ledger: &LedgerId,
        tip: ChainTip,
        body: impl Into<EventBody>,
    ) -> Bytes {
        let (mut signed, _) = chain_and_sign(by, ledger, tip, T0, &[draft("off-chain", body)]);
        signed.pop().unwrap().entry
    }

    /// The tip right before the event of `index`.
    fn tip_before(&self, index: usize) -> ChainTip {
        ChainTip {
            next_index: index as u64,
            prev: if index == 0 {
                Bytes32::ZERO
            } else {
                self.entries[index - 1].hash
            },
        }
    }

    fn msgs(&self) -> Vec<(u64, Bytes)> {
        number(self.entries.iter().map(|e| e.entry.clone()).collect())
    }
}

/// A small-order Ed25519 point (the identity, y = 1): a valid encoding but a weak key.
fn weak_key() -> Bytes32 {
    let mut k = [0u8; 32];
    k[0] = 1;
    Bytes32(k)
}

/// Stores payloads at stream sequences 1, 2, ...
fn number(payloads: Vec<Bytes>) -> Vec<(u64, Bytes)> {
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, p))
        .collect()
}

/// What a test compares: per stored message, verified (with index and hash) or foreign (why).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Ev {
        seq: u64,
        index: u64,
        hash: EventHash,
    },
    Foreign {
        seq: u64,
        reason: ForeignReason,
    },
}

fn summarize(c: &Checked) -> Out {
    match c {
        Checked::Event(v) => {
            assert_eq!(
                v.hash(),
                entry::chain_hash(entry::split(v.entry()).unwrap().0)
            );
            Out::Ev {
                seq: v.seq(),
                index: v.event().index,
                hash: v.hash(),
            }
        }
        Checked::Foreign(f) => Out::Foreign {
            seq: f.seq,
            reason: f.reason.clone(),
        },
    }
}

/// Folds `msgs` into `state` in batches of `batch` and returns the outcomes up to the first
/// chain break and that break. After a break, checks that the state stays halted.
fn check_in(
    state: &mut ChainState,
    msgs: Vec<(u64, Bytes)>,
    batch: usize,
) -> (Vec<Out>, Option<ChainError>) {
    let mut out = Vec::new();
    let mut it = msgs.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<_> = it.by_ref().take(batch).collect();
        let (checked, err) = state.check_batch(chunk);
        out.extend(checked.iter().map(summarize));
        if let Some(e) = err {
            assert_eq!(state.halted(), Some(&e), "a chain break halts the state");
            let head = state.head();
            let last_seq = state.last_seq();
            // Halted: every later call returns the same error and changes nothing.
            let again = state.check_batch(vec![(u64::MAX, Bytes::from_static(b"anything"))]);
            assert!(again.0.is_empty());
            assert_eq!(
                again.1.as_ref(),
                Some(&e),
                "halted state returns the same error"
            );
            assert_eq!(state.check(2_000_000, Bytes::new()).unwrap_err(), e);
            assert_eq!(state.head(), head);
            assert_eq!(state.last_seq(), last_seq);
            return (out, Some(e));
        }
    }
    (out, None)
}

/// Fresh state (optionally pinned), everything in one batch.
fn check(pinned: Option<Bytes32>, msgs: Vec<(u64, Bytes)>) -> (Vec<Out>, Option<ChainError>) {
    check_in(&mut ChainState::new(ledger_id(), pinned), msgs, usize::MAX)
}

/// The outcome of the untampered messages `seqs` of `b` (by position `seq - 1`).
fn events(b: &Builder, seqs: std::ops::RangeInclusive<u64>) -> Vec<Out> {
    seqs.map(|s| {
        let e = &b.entries[(s - 1) as usize];
        Out::Ev {
            seq: s,
            index: e.event.index,
            hash: e.hash,
        }
    })
    .collect()
}

fn ev_at(seq: u64, e: &SignedEntry) -> Out {
    Out::Ev {
        seq,
        index: e.event.index,
        hash: e.hash,
    }
}

// ---- clean chains -----------------------------------------------------------------------------

#[test]
fn clean_chain_verifies_in_any_batching() {
    let b = Builder::with_events(298);
    assert_eq!(b.entries.len(), 300);
    let msgs = b.msgs();
    let expected = events(&b, 1..=300);
    let mut reference = None;
    for batch in [usize::MAX, 1, 2, 7, 63, 64, 65, 128, 299] {
        let mut state = ChainState::new(ledger_id(), Some(root().public_key()));
        let (out, err) = check_in(&mut state, msgs.clone(), batch);
        assert_eq!(err, None, "batch {batch}");
        assert_eq!(out, expected, "batch {batch}");
        let head = state.head().unwrap();
        assert_eq!(head.index, 299);
        assert_eq!(head.hash, b.entries[299].hash);
        assert_eq!(head.hash, b.tip.prev);
        assert_eq!(head.seq, 300);
        assert_eq!(state.last_seq(), 300);
        assert_eq!(state.counts(), (300, 0));
        assert_eq!(state.tip(), b.tip);
        assert_eq!(state.root_key(), Some(root().public_key()));
        assert!(state.is_active_writer(&writer().id()));
        assert!(!state.is_active_writer(&root().id()));
        let summary = (out, head, state.counts());
        match &reference {
            None => reference = Some(summary),
            Some(r) => assert_eq!(r, &summary, "batch {batch} differs"),
        }
    }
}

#[test]
fn verified_events_carry_the_stored_bytes() {
    let b = Builder::with_events(5);
    let mut state = ChainState::new(ledger_id(), None);
    let (out, err) = state.check_batch(b.msgs());
    assert_eq!(err, None);
    for (c, e) in out.iter().zip(&b.entries) {
        let Checked::Event(v) = c else {
            panic!("{c:?}")
        };
        assert_eq!(v.entry(), &e.entry);
        assert_eq!(v.event(), &e.event);
        assert_eq!(v.hash(), e.hash);
    }
}

#[test]
fn sequences_may_skip() {
    // JetStream sequences of deleted foreign messages leave holes; only order matters.
    let b = Builder::with_events(4);
    let msgs: Vec<(u64, Bytes)> = b
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (10 * i as u64 + 3, e.entry.clone()))
        .collect();
    let (out, err) = check(None, msgs);
    assert_eq!(err, None);
    assert_eq!(out.len(), 6);
    assert!(out.iter().all(|o| matches!(o, Out::Ev { .. })));
}

// ---- tampering, table-driven --------------------------------------------------------------------

/// Where a field starts in the body of an event: after the array header and the fields before it.
fn time_offset(e: &Event) -> usize {
    1 + canonical::encode(&e.format).len()
        + canonical::encode(&e.ledger).len()
        + canonical::encode(&e.index).len()
        + canonical::encode(&e.prev).len()
}

fn signer_offset(e: &Event) -> usize {
    time_offset(e)
        + canonical::encode(&e.time_ms).len()
        + canonical::encode(&e.actor).len()
        + canonical::encode(&e.context).len()
        + canonical::encode(&e.request_id).len()
}

/// Offset of `count` in the body of a `RequestRefused` (the payload is the end of the body).
fn count_offset(e: &Event) -> usize {
    let EventBody::RequestRefused(r) = &e.body else {
        panic!("not a refusal")
    };
    let body_len = canonical::encode(e).len();
    let payload_len = canonical::encode(r).len();
    body_len - payload_len
        + 1
        + canonical::encode(&r.key).len()
        + canonical::encode(&r.tenant).len()
        + canonical::encode(&r.operation).len()
        + canonical::encode(&r.code).len()
        + canonical::encode(&r.reason).len()
}

const BODY: usize = 5; // entry header: version + u32 length

fn flip(entry: &Bytes, at: usize, mask: u8) -> Bytes {
    let mut v = entry.to_vec();
    v[at] ^= mask;
    Bytes::from(v)
}

struct Case {
    name: &'static str,
    pinned: Option<Bytes32>,
    msgs: Vec<(u64, Bytes)>,
    out: Vec<Out>,
    err: Option<ChainError>,
}

fn foreign(seq: u64, reason: ForeignReason) -> Out {
    Out::Foreign { seq, reason }
}

/// The standard chain: genesis (seq 1), enrolment (seq 2), writer events of index 2..=9
/// (seq 3..=10). The victim is index 5 (seq 6), a `RequestRefused`.
fn tamper_cases() -> Vec<Case> {
    let b = Builder::with_events(8);
    let n = b.entries.len() as u64;
    assert_eq!(n, 10);
    let victim = 5usize;
    let v = &b.entries[victim];
    let vseq = victim as u64 + 1;
    let w = writer();
    let gap_after_victim = |last_foreign| {
        Some(ChainError::Gap {
            seq: vseq + 1,
            expected_index: victim as u64,
            found_index: victim as u64 + 1,
            last_foreign,
        })
    };
    // The victim replaced by `bad`, everything else as stored.
    let replaced = |bad: Bytes| {
        let mut m = b.msgs();
        m[victim].1 = bad;
        m
    };
    // `extra` inserted before the victim (all later sequences shift by one).
    let inserted = |extra: Bytes| {
        let mut p: Vec<Bytes> = b.entries.iter().map(|e| e.entry.clone()).collect();
        p.insert(victim, extra);
        number(p)
    };
    let before_victim = events(&b, 1..=vseq - 1);
    // Outcome of `inserted`: the extra message at `vseq`, then the rest, one sequence later.
    let after_insert = |extra: Out| {
        let mut o = before_victim.clone();
        o.push(extra);
        o.extend(
            b.entries[victim..]
                .iter()
                .enumerate()
                .map(|(i, e)| ev_at(vseq + 1 + i as u64, e)),
        );
        o
    };
    // Outcome of tampering the victim in place when events follow it.
    let foreign_victim = |reason| {
        let mut o = before_victim.clone();
        o.push(foreign(vseq, reason));
        o
    };
    let time_byte = BODY + time_offset(&v.event) + 8; // last byte of the uint64
    assert_eq!(v.entry[BODY + time_offset(&v.event)], 0xcf);
    let count_byte = BODY + count_offset(&v.event);
    assert_eq!(&v.entry[count_byte..count_byte + 2], &[0xcc, 0xc8]);
    let signer_byte = BODY + signer_offset(&v.event) + 2 + 7;
    let mut flipped_signer = w.id();
    flipped_signer.0[7] ^= 0x10;
    let last = b.entries.last().unwrap();

    vec![
        Case {
            name: "body byte flipped in time_ms: bad signature, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, time_byte, 0x01)),
            out: foreign_victim(ForeignReason::BadSignature { signer: w.id() }),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "body byte flipped so an integer is non-minimal: non-canonical, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, count_byte + 1, 0x80)),
            out: foreign_victim(ForeignReason::NonCanonical),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "event array header flipped: malformed, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, BODY, 0x01)),
            out: foreign_victim(ForeignReason::Malformed(
                canonical::decode::<Event>(&flip(&v.entry, BODY, 0x01)[BODY..v.entry.len() - 64])
                    .unwrap_err()
                    .to_string(),
            )),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "format byte flipped: unknown format, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, BODY + 1, 0x02)),
            out: foreign_victim(ForeignReason::Format(3)),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "signer id flipped: unknown signer, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, signer_byte, 0x10)),
            out: foreign_victim(ForeignReason::UnknownSigner { signer: flipped_signer }),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "signature byte flipped: bad signature, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, v.entry.len() - 1, 0x40)),
            out: foreign_victim(ForeignReason::BadSignature { signer: w.id() }),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "frame version flipped: malformed, then gap",
            pinned: None,
            msgs: replaced(flip(&v.entry, 0, 0x02)),
            out: foreign_victim(ForeignReason::Malformed("unknown entry version 3".into())),
            err: gap_after_victim(Some(vseq)),
        },
        Case {
            name: "last event tampered: foreign, no break (nothing follows)",
            pinned: None,
            msgs: {
                let mut m = b.msgs();
                let l = m.len() - 1;
                m[l].1 = flip(&last.entry, BODY + time_offset(&last.event) + 8, 0x01);
                m
            },
            out: {
                let mut o = events(&b, 1..=n - 1);
                o.push(foreign(n, ForeignReason::BadSignature { signer: w.id() }));
                o
            },
            err: None,
        },
        Case {
            name: "event dropped: gap at the next sequence",
            pinned: None,
            msgs: b.msgs().into_iter().filter(|(s, _)| *s != vseq).collect(),
            out: before_victim.clone(),
            err: gap_after_victim(None),
        },
        Case {
            name: "two events swapped: gap at the first",
            pinned: None,
            msgs: {
                let mut m = b.msgs();
                let (x, y) = (m[victim].1.clone(), m[victim + 1].1.clone());
                m[victim].1 = y;
                m[victim + 1].1 = x;
                m
            },
            out: before_victim.clone(),
            err: Some(ChainError::Gap {
                seq: vseq,
                expected_index: victim as u64,
                found_index: victim as u64 + 1,
                last_foreign: None,
            }),
        },
        Case {
            name: "older event duplicated: stale, chain goes on",
            pinned: None,
            msgs: inserted(b.entries[3].entry.clone()),
            out: after_insert(foreign(vseq, ForeignReason::Stale { index: 3 })),
            err: None,
        },
        Case {
            name: "genesis duplicated: stale, chain goes on",
            pinned: None,
            msgs: inserted(b.entries[0].entry.clone()),
            out: after_insert(foreign(vseq, ForeignReason::Stale { index: 0 })),
            err: None,
        },
        Case {
            name: "enrolment duplicated: stale, chain goes on",
            pinned: None,
            msgs: inserted(b.entries[1].entry.clone()),
            out: after_insert(foreign(vseq, ForeignReason::Stale { index: 1 })),
            err: None,
        },
        Case {
            name: "event signed by an unknown key: foreign, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(&stranger(), &b.ledger, b.tip_before(victim), writer_body(5))),
            out: after_insert(foreign(vseq, ForeignReason::UnknownSigner { signer: stranger().id() })),
            err: None,
        },
        Case {
            name: "event of another ledger: foreign, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(
                &w,
                &LedgerId::new("other-ledger").unwrap(),
                b.tip_before(victim),
                writer_body(5),
            )),
            out: after_insert(foreign(
                vseq,
                ForeignReason::WrongLedger {
                    found: "other-ledger".into(),
                },
            )),
            err: None,
        },
        Case {
            name: "writer signs an enrolment: not authorized, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(&w, &b.ledger, b.tip_before(victim), enrol_body(&stranger(), "sneaky"))),
            out: after_insert(foreign(
                vseq,
                ForeignReason::NotAuthorized {
                    signer: w.id(),
                    event_type: "SignerEnrolled",
                },
            )),
            err: None,
        },
        Case {
            name: "writer signs a retirement: not authorized, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(
                &w,
                &b.ledger,
                b.tip_before(victim),
                SignerRetired {
                    signer: w.id(),
                    reason: "x".into(),
                },
            )),
            out: after_insert(foreign(
                vseq,
                ForeignReason::NotAuthorized {
                    signer: w.id(),
                    event_type: "SignerRetired",
                },
            )),
            err: None,
        },
        Case {
            name: "root signs an ordinary event: not authorized, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(&root(), &b.ledger, b.tip_before(victim), writer_body(5))),
            out: after_insert(foreign(
                vseq,
                ForeignReason::NotAuthorized {
                    signer: root().id(),
                    event_type: "RequestRefused",
                },
            )),
            err: None,
        },
        Case {
            name: "second genesis by the root at the right place: not authorized, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(&root(), &b.ledger, b.tip_before(victim), genesis_body(&root()))),
            out: after_insert(foreign(
                vseq,
                ForeignReason::NotAuthorized {
                    signer: root().id(),
                    event_type: "LedgerCreated",
                },
            )),
            err: None,
        },
        Case {
            name: "root re-enrols an enrolled signer: invalid enrolment, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(&root(), &b.ledger, b.tip_before(victim), enrol_body(&w, "again"))),
            out: after_insert(foreign(vseq, ForeignReason::InvalidEnrolment("already enrolled"))),
            err: None,
        },
        Case {
            name: "root enrols a weak (small-order) key: invalid enrolment, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(
                &root(),
                &b.ledger,
                b.tip_before(victim),
                SignerEnrolled {
                    signer: entry::signer_id(&weak_key().0),
                    public_key: weak_key(),
                    role: SignerRole::Writer,
                    label: "weak".into(),
                },
            )),
            out: after_insert(foreign(vseq, ForeignReason::InvalidEnrolment("invalid or weak key"))),
            err: None,
        },
        Case {
            name: "root enrols a key under another signer id: invalid enrolment, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(
                &root(),
                &b.ledger,
                b.tip_before(victim),
                SignerEnrolled {
                    signer: Bytes32([0x55; 32]),
                    ..enrol_body(&stranger(), "mismatch")
                },
            )),
            out: after_insert(foreign(vseq, ForeignReason::InvalidEnrolment("signer id mismatch"))),
            err: None,
        },
        Case {
            name: "root retires itself: invalid, chain goes on",
            pinned: None,
            msgs: inserted(b.off_chain(
                &root(),
                &b.ledger,
                b.tip_before(victim),
                SignerRetired {
                    signer: root().id(),
                    reason: "x".into(),
                },
            )),
            out: after_insert(foreign(vseq, ForeignReason::InvalidEnrolment("unknown signer retired"))),
            err: None,
        },
        Case {
            name: "pinned root mismatch: untrusted genesis, nothing verifies",
            pinned: Some(stranger().public_key()),
            msgs: b.msgs(),
            out: {
                let mut o = vec![
                    foreign(
                        1,
                        ForeignReason::UntrustedGenesis {
                            pinned: stranger().public_key(),
                            found: root().public_key(),
                        },
                    ),
                    foreign(2, ForeignReason::UnknownSigner { signer: root().id() }),
                ];
                o.extend((3..=n).map(|s| foreign(s, ForeignReason::UnknownSigner { signer: w.id() })));
                o
            },
            err: None,
        },
        Case {
            name: "pinned root matches: clean",
            pinned: Some(root().public_key()),
            msgs: b.msgs(),
            out: events(&b, 1..=n),
            err: None,
        },
        Case {
            name: "prev altered, index right, re-signed by the writer: broken link",
            pinned: None,
            msgs: replaced(b.off_chain(
                &w,
                &b.ledger,
                ChainTip {
                    next_index: victim as u64,
                    prev: Bytes32([0xee; 32]),
                },
                writer_body(5),
            )),
            out: before_victim.clone(),
            err: Some(ChainError::BrokenLink {
                seq: vseq,
                index: victim as u64,
                expected: b.entries[victim - 1].hash,
                found: Bytes32([0xee; 32]),
            }),
        },
        Case {
            name: "properly signed event skipping an index: gap",
            pinned: None,
            msgs: replaced(b.off_chain(
                &w,
                &b.ledger,
                ChainTip {
                    next_index: victim as u64 + 3,
                    prev: b.entries[victim - 1].hash,
                },
                writer_body(5),
            )),
            out: before_victim.clone(),
            err: Some(ChainError::Gap {
                seq: vseq,
                expected_index: victim as u64,
                found_index: victim as u64 + 3,
                last_foreign: None,
            }),
        },
        Case {
            name: "stream sequence goes backwards",
            pinned: None,
            msgs: {
                let mut m = b.msgs();
                m[victim].0 = vseq + 1;
                m[victim + 1].0 = vseq;
                m
            },
            out: {
                let mut o = before_victim.clone();
                o.push(ev_at(vseq + 1, v));
                o
            },
            err: Some(ChainError::SeqRegression {
                seq: vseq,
                last: vseq + 1,
            }),
        },
        Case {
            name: "stream sequence repeats",
            pinned: None,
            msgs: {
                let mut m = b.msgs();
                m[victim].0 = vseq - 1;
                m
            },
            out: events(&b, 1..=vseq - 1),
            err: Some(ChainError::SeqRegression {
                seq: vseq - 1,
                last: vseq - 1,
            }),
        },
        Case {
            name: "stream sequence 0",
            pinned: None,
            msgs: {
                let mut m = b.msgs();
                m[0].0 = 0;
                m
            },
            out: vec![],
            err: Some(ChainError::SeqRegression { seq: 0, last: 0 }),
        },
        Case {
            name: "random junk message: malformed, chain goes on",
            pinned: None,
            msgs: inserted(Bytes::from_static(b"\x01\x00\x00\x00\x01\xc0 not a signature, just some junk bytes here to fill sixty-four")),
            // The decoder's message is not part of the contract: "" matches any.
            out: after_insert(foreign(vseq, ForeignReason::Malformed(String::new()))),
            err: None,
        },
    ]
}

/// Foreign reasons compare exactly, except `Malformed`, whose message is the decoder's: for an
/// expected `Malformed("")` any message matches.
fn same(expected: &[Out], got: &[Out]) -> bool {
    expected.len() == got.len()
        && expected.iter().zip(got).all(|(e, g)| match (e, g) {
            (
                Out::Foreign {
                    seq: s1,
                    reason: ForeignReason::Malformed(m1),
                },
                Out::Foreign {
                    seq: s2,
                    reason: ForeignReason::Malformed(m2),
                },
            ) => s1 == s2 && (m1.is_empty() || m1 == m2),
            _ => e == g,
        })
}

#[test]
fn tampering_is_classified_exactly() {
    let mut failures = Vec::new();
    for case in tamper_cases() {
        for batch in [usize::MAX, 1, 3] {
            let (out, err) = check_in(
                &mut ChainState::new(ledger_id(), case.pinned),
                case.msgs.clone(),
                batch,
            );
            if !same(&case.out, &out) || err != case.err {
                failures.push(format!(
                    "{} (batch {batch}):\n  expected {:?}\n       got {:?}\n  expected error {:?}\n       got error {:?}",
                    case.name,
                    case.out.iter().filter(|o| matches!(o, Out::Foreign { .. })).collect::<Vec<_>>(),
                    out.iter().filter(|o| matches!(o, Out::Foreign { .. })).collect::<Vec<_>>(),
                    case.err,
                    err
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn retired_signer_is_refused_and_others_go_on() {
    let mut b = Builder::new();
    b.push(
        &root(),
        draft("enrol-2", enrol_body(&writer2(), "writer-2")),
    );
    b.writer_events(&writer(), 2); // indexes 3, 4
    b.push(
        &root(),
        draft(
            "retire-1",
            SignerRetired {
                signer: writer().id(),
                reason: "rotated".into(),
            },
        ),
    ); // index 5
    let late = b.off_chain(&writer(), &b.ledger, b.tip, writer_body(6));
    b.writer_events(&writer2(), 3); // indexes 6..=8
    let mut payloads: Vec<Bytes> = b.entries.iter().map(|e| e.entry.clone()).collect();
    payloads.insert(6, late);
    for batch in [usize::MAX, 1, 4] {
        let mut state = ChainState::new(ledger_id(), None);
        let (out, err) = check_in(&mut state, number(payloads.clone()), batch);
        assert_eq!(err, None);
        let mut expected = events(&b, 1..=6);
        expected.push(foreign(
            7,
            ForeignReason::RetiredSigner {
                signer: writer().id(),
            },
        ));
        expected.extend(
            b.entries[6..]
                .iter()
                .enumerate()
                .map(|(i, e)| ev_at(8 + i as u64, e)),
        );
        assert_eq!(out, expected, "batch {batch}");
        assert!(!state.is_active_writer(&writer().id()));
        assert!(state.is_active_writer(&writer2().id()));
        assert_eq!(state.counts(), (9, 1));
    }
}

#[test]
fn halted_state_stays_halted_across_calls() {
    let b = Builder::with_events(8);
    let mut m = b.msgs();
    m.remove(4); // index 4 missing
    let mut state = ChainState::new(ledger_id(), None);
    let (out, err) = state.check_batch(m[..6].to_vec());
    let e = err.expect("gap");
    assert_eq!(e.seq(), 6);
    assert_eq!(out.len(), 4);
    // Later calls, valid or not, return the same error and fold nothing.
    for _ in 0..3 {
        let (out, err) = state.check_batch(m[6..].to_vec());
        assert!(out.is_empty());
        assert_eq!(err.as_ref(), Some(&e));
    }
    assert_eq!(state.check(100, b.entries[4].entry.clone()).unwrap_err(), e);
    assert_eq!(state.head().unwrap().index, 3);
    assert_eq!(state.halted(), Some(&e));
}

#[test]
fn sequence_regression_across_calls() {
    let b = Builder::with_events(3);
    let m = b.msgs();
    let mut state = ChainState::new(ledger_id(), None);
    assert_eq!(state.check_batch(m[..3].to_vec()).1, None);
    let err = state.check(3, m[3].1.clone()).unwrap_err();
    assert_eq!(err, ChainError::SeqRegression { seq: 3, last: 3 });
    assert_eq!(state.check(4, m[3].1.clone()).unwrap_err(), err);
}

/// Regression: a *foreign* message must not influence how later events are verified.
///
/// A stored `SignerEnrolled` that is itself refused (here: signed by an unknown key) names the
/// writer's signer id with the attacker's public key. Within one `check_batch`, the candidate
/// key of every later event by that signer id then comes from this forged enrolment instead of
/// the real one (verify.rs, step 2: the overlay takes every parsed `SignerEnrolled`, refused or
/// not, and the last one wins), while step 4 only checks that the signer id is enrolled. So:
/// - an event the attacker signs with its own key, in the writer's name, VERIFIES;
/// - the writer's genuine events in the same batch fail (BadSignature, then a chain gap);
/// - and the outcome depends on how the messages are split into batches.
///
/// Verified one message at a time, the forged event is refused. Anyone who can publish one
/// message to the stream between an enrolment and the writer's first event can do this, and a
/// later replay (2048 messages per batch) accepts the forgery.
#[test]
fn foreign_enrolment_does_not_poison_signature_keys() {
    let attacker = stranger();
    let mut b = Builder::new(); // genesis (seq 1), enrolment of writer() (seq 2)
    let after_enrol = b.tip;
    let forged_enrolment = b.off_chain(
        &attacker,
        &b.ledger,
        after_enrol,
        SignerEnrolled {
            signer: writer().id(),
            public_key: attacker.public_key(),
            role: SignerRole::Writer,
            label: "evil".into(),
        },
    );
    // The attacker signs an event in the writer's name, chained right after the enrolment.
    let forged_event = forge(
        4,
        Event {
            body: writer_body(2),
            ..event_at(after_enrol, writer().id())
        },
    );
    b.writer_events(&writer(), 3); // genuine indexes 2..=4
    let mut payloads: Vec<Bytes> = b.entries.iter().map(|e| e.entry.clone()).collect();
    payloads.insert(2, forged_enrolment);
    payloads.insert(3, forged_event);
    // seq 1 genesis, 2 enrolment, 3 forged enrolment, 4 forged event, 5.. genuine events.
    let mut expected = events(&b, 1..=2);
    expected.push(foreign(
        3,
        ForeignReason::UnknownSigner {
            signer: attacker.id(),
        },
    ));
    expected.push(foreign(
        4,
        ForeignReason::BadSignature {
            signer: writer().id(),
        },
    ));
    expected.extend(
        b.entries[2..]
            .iter()
            .enumerate()
            .map(|(i, e)| ev_at(5 + i as u64, e)),
    );
    let mut results = Vec::new();
    for batch in [1, usize::MAX] {
        let got = check_in(
            &mut ChainState::new(ledger_id(), None),
            number(payloads.clone()),
            batch,
        );
        results.push((batch, got));
    }
    for (batch, (out, err)) in &results {
        assert!(
            !out.iter().any(|o| matches!(o, Out::Ev { seq: 4, .. })),
            "batch {batch}: an event signed by the attacker's key in the writer's name was VERIFIED: {out:#?}"
        );
        assert_eq!(err, &None, "batch {batch}");
        assert_eq!(out, &expected, "batch {batch}");
    }
}

/// The same poisoning through a refused `LedgerCreated` whose `signer` field names the root and
/// whose `root_key` is the attacker's: for the rest of the batch that holds the genuine genesis,
/// the attacker's key stands in for the root's. The attacker then enrols its own writer key in
/// the root's name, and its writer events verify; the genuine events become stale and the chain
/// breaks. A replay from the start reads the first 2048 messages in one batch, so this works for
/// anyone who can publish to the stream early in the ledger's life.
#[test]
fn foreign_genesis_does_not_poison_signature_keys() {
    let attacker = stranger();
    let b = Builder::with_events(3); // genesis (0), enrolment (1), writer events 2..=4
    let after_enrol = b.tip_before(2);
    let forged_genesis = forge(
        4,
        Event {
            body: genesis_body(&attacker).into(),
            ..event_at(after_enrol, root().id())
        },
    );
    let forged_enrolment = forge(
        4,
        Event {
            body: enrol_body(&attacker, "evil").into(),
            ..event_at(after_enrol, root().id())
        },
    );
    let forged_enrolment_hash = entry::chain_hash(entry::split(&forged_enrolment).unwrap().0);
    let forged_write = forge(
        4,
        Event {
            body: writer_body(3),
            ..event_at(
                ChainTip {
                    next_index: 3,
                    prev: forged_enrolment_hash,
                },
                attacker.id(),
            )
        },
    );
    let mut payloads: Vec<Bytes> = b.entries.iter().map(|e| e.entry.clone()).collect();
    payloads.splice(2..2, [forged_genesis, forged_enrolment, forged_write]);
    // seq 1 genesis, 2 enrolment, 3..=5 forgeries, 6..=8 genuine writer events.
    let mut expected = events(&b, 1..=2);
    expected.push(foreign(
        3,
        ForeignReason::BadSignature {
            signer: root().id(),
        },
    ));
    expected.push(foreign(
        4,
        ForeignReason::BadSignature {
            signer: root().id(),
        },
    ));
    expected.push(foreign(
        5,
        ForeignReason::UnknownSigner {
            signer: attacker.id(),
        },
    ));
    expected.extend(
        b.entries[2..]
            .iter()
            .enumerate()
            .map(|(i, e)| ev_at(6 + i as u64, e)),
    );
    for batch in [1, usize::MAX] {
        let (out, err) = check_in(
            &mut ChainState::new(ledger_id(), None),
            number(payloads.clone()),
            batch,
        );
        assert!(
            !out.iter().any(|o| matches!(o, Out::Ev { seq: 4 | 5, .. })),
            "batch {batch}: the attacker enrolled its own key in the root's name: {out:#?}"
        );
        assert_eq!((out, err), (expected.clone(), None), "batch {batch}");
    }
}

/// An event of this ledger at `tip`, in `signer`'s name (body to be filled in).
fn event_at(tip: ChainTip, signer: Bytes32) -> Event {
    Event {
        format: EVENT_FORMAT,
        ledger: ledger_id(),
        index: tip.next_index,
        prev: tip.prev,
        time_ms: T0,
        actor: Actor::system("evil"),
        context: None,
        request_id: RequestId::new("forged").unwrap(),
        signer,
        body: KeyDestructionCancelled {
            key: KeyId::new("k").unwrap(),
        }
        .into(),
    }
}

/// Frames `event` signed by the key of `seed`, whatever `event.signer` says.
fn forge(seed: u8, event: Event) -> Bytes {
    let body = canonical::encode(&event);
    let sig = ed25519_dalek::Signer::sign(
        &SigningKey::from_bytes(&[seed; 32]),
        &entry::signing_message(&body),
    );
    Bytes::from(entry::frame(&body, &sig.to_bytes()))
}

// ---- properties -------------------------------------------------------------------------------

fn small_chain() -> &'static (Builder, Vec<Out>) {
    static CHAIN: std::sync::OnceLock<(Builder, Vec<Out>)> = std::sync::OnceLock::new();
    CHAIN.get_or_init(|| {
        let b = Builder::with_events(5);
        let n = b.entries.len() as u64;
        let expected = events(&b, 1..=n);
        (b, expected)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Any single-byte change to any stored message: the chain no longer verifies identically.
    #[test]
    fn prop_any_mutation_fails_verification(
        which in any::<proptest::sample::Index>(),
        pos in any::<proptest::sample::Index>(),
        mask in 1u8..=255,
        batch in prop_oneof![Just(usize::MAX), Just(1usize), Just(2usize)],
    ) {
        let (b, clean) = small_chain();
        let mut msgs = b.msgs();
        let i = which.index(msgs.len());
        let at = pos.index(msgs[i].1.len());
        msgs[i].1 = flip(&msgs[i].1, at, mask);
        let (out, err) = check_in(&mut ChainState::new(ledger_id(), None), msgs, batch);
        prop_assert!(
            err.is_some() || &out != clean,
            "message {} byte {} ^ {:#04x} still verifies identically", i, at, mask
        );
        // More precisely: the mutated message itself is foreign, or the chain broke at or before it.
        let seq = i as u64 + 1;
        let foreign_there = out.iter().any(|o| matches!(o, Out::Foreign { seq: s, .. } if *s == seq));
        let broke_by_then = err.as_ref().is_some_and(|e| e.seq() <= seq);
        prop_assert!(foreign_there || broke_by_then, "message {} byte {}: {:?} {:?}", i, at, out, err);
    }

    /// Arbitrary bytes never panic and are foreign.
    #[test]
    fn prop_random_bytes_are_foreign(
        junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
        framed in any::<bool>(),
    ) {
        let (b, _) = small_chain();
        let mut state = ChainState::new(ledger_id(), None);
        let prefix = b.msgs();
        let n = prefix.len() as u64;
        prop_assert_eq!(state.check_batch(prefix).1, None);
        let msgs: Vec<(u64, Bytes)> = junk
            .into_iter()
            .enumerate()
            .map(|(i, j)| {
                let payload = if framed {
                    // Well framed, so the body reaches the decoder.
                    entry::frame(&j, &[0u8; 64])
                } else {
                    j
                };
                (n + 1 + i as u64, Bytes::from(payload))
            })
            .collect();
        let count = msgs.len();
        let (out, err) = state.check_batch(msgs);
        prop_assert_eq!(err, None);
        prop_assert_eq!(out.len(), count);
        prop_assert!(out.iter().all(|c| matches!(c, Checked::Foreign(_))));
        prop_assert_eq!(state.head().unwrap().index, n - 1);
    }

    /// Junk bodies that decode as *events* (random fields, right ledger) are foreign too.
    #[test]
    fn prop_random_signed_events_are_foreign(seed in any::<[u8; 32]>(), index in 0u64..20, prev in any::<[u8; 32]>()) {
        let (b, _) = small_chain();
        let mut state = ChainState::new(ledger_id(), None);
        let prefix = b.msgs();
        let n = prefix.len() as u64;
        prop_assert_eq!(state.check_batch(prefix).1, None);
        let signer = EventSigner::new(SigningKey::from_bytes(&seed));
        let (signed, _) = chain_and_sign(
            &signer,
            &ledger_id(),
            ChainTip { next_index: index, prev: Bytes32(prev) },
            T0,
            &[draft("junk", writer_body(index))],
        );
        let (out, err) = state.check_batch(vec![(n + 1, signed[0].entry.clone())]);
        prop_assert_eq!(err, None);
        prop_assert!(matches!(&out[0], Checked::Foreign(_)), "{:?}", out[0]);
    }
}
