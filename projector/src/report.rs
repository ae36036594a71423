//! The compliance report (DESIGN.md §6): what an auditor or compliance officer asks of a ledger
//! for a time range, every figure traceable to the verified events behind it.
//!
//! [`ComplianceReport::build`] (or [`ReportBuilder`], fed one event at a time during a replay)
//! folds verified events into the views it needs — [`KeyStates`], [`Trust`], [`AuditIndex`] —
//! and produces a plain, serde-serialisable struct. It is pure: no IO, no clock (the caller
//! fills [`ComplianceReport::generated_ms`] and [`ComplianceReport::checkpoint`]).
//!
//! ## The range
//! `[from_ms, to_ms)` in event time (the writer's `time_ms`), like [`crate::audit::AuditQuery`].
//! - **As of `to_ms`** (inventory, rotation, compromised and destroyed keys): the views folded
//!   from every verified event with `time_ms < to_ms`, in stream order. Events at or after
//!   `to_ms` are not folded at all (their number is reported in [`Activity::events_after`]).
//! - **Within the range** (access, refusals, trust changes, activity): records whose event time
//!   is in `[from_ms, to_ms)`.
//! - **Use after compromise**: every use (an itemised `KeysUsed` use or a `MaterialAccessed`)
//!   of a key compromised as of `to_ms`, at or after the key's `compromised_at_ms` — which may
//!   precede the `KeyCompromised` event (a backdated compromise) and even `from_ms`; each use
//!   says whether it is in the range.
//!
//! ## Evidence
//! Every figure carries an [`Evidence`]: the distinct stream sequences of the events it was
//! computed from, ascending, at most [`MAX_SEQS`] of them, and how many there are in all. Each
//! sequence names a verified event an auditor can look up (`keyledger history`) and verify.
//! Figures and their sequences need not be equal in number: one `KeysUsed` event itemises
//! several uses, and one `RequestRefused` event may stand for many refusals (`count`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ledger::event::KeyState;
use ledger::nats::ReplayReport;
use ledger::{ChainState, EventBody, KeyId, VerifiedEvent};
use serde::{Deserialize, Serialize};

use crate::audit::{describe_event, AuditIndex};
use crate::trust::Trust;
use crate::KeyStates;

/// The report's format name, in every report.
pub const FORMAT: &str = "keyledger-compliance-report/1";

/// At most this many sequences (and key references) are listed per figure; the total is
/// always given.
pub const MAX_SEQS: usize = 1000;

// ---- evidence -------------------------------------------------------------------------------

/// The events behind one figure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Distinct stream sequences, ascending; the first [`MAX_SEQS`] when there are more.
    pub seqs: Vec<u64>,
    /// How many distinct sequences there are in all.
    pub total: u64,
}

impl Evidence {
    /// Evidence from sequences in any order (sorted and deduplicated here).
    pub fn from_seqs(seqs: impl IntoIterator<Item = u64>) -> Evidence {
        let all: BTreeSet<u64> = seqs.into_iter().collect();
        Evidence {
            total: all.len() as u64,
            seqs: all.into_iter().take(MAX_SEQS).collect(),
        }
    }

    /// True when some sequences are not listed.
    pub fn truncated(&self) -> bool {
        (self.seqs.len() as u64) < self.total
    }
}

/// Collects an [`Evidence`] from sequences arriving in non-decreasing order (stream order).
#[derive(Clone, Debug, Default)]
struct SeqAcc {
    seqs: Vec<u64>,
    total: u64,
    last: Option<u64>,
}

impl SeqAcc {
    fn push(&mut self, seq: u64) {
        if self.last == Some(seq) {
            return;
        }
        debug_assert!(
            self.last.is_none_or(|l| l < seq),
            "sequences in stream order"
        );
        self.last = Some(seq);
        self.total += 1;
        if self.seqs.len() < MAX_SEQS {
            self.seqs.push(seq);
        }
    }

    fn evidence(&self) -> Evidence {
        Evidence {
            seqs: self.seqs.clone(),
            total: self.total,
        }
    }
}

/// A counter with its evidence.
#[derive(Clone, Debug, Default)]
struct Tally {
    count: u64,
    seqs: SeqAcc,
}

impl Tally {
    fn add(&mut self, n: u64, seq: u64) {
        self.count += n;
        self.seqs.push(seq);
    }
}

// ---- the report -----------------------------------------------------------------------------

/// `[from_ms, to_ms)` in event time (milliseconds since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    pub from_ms: u64,
    pub to_ms: u64,
}

impl TimeRange {
    pub fn contains(&self, t: u64) -> bool {
        t >= self.from_ms && t < self.to_ms
    }
}

/// One headline figure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figure {
    /// Stable identifier (`keys`, `rotation_overdue`, ...).
    pub metric: String,
    /// Human label.
    pub label: String,
    pub value: u64,
    pub evidence: Evidence,
}

/// A named count (an operation, an event type, a code, a principal).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub name: String,
    pub count: u64,
    pub evidence: Evidence,
}

/// How the chain verified, from the replay the report was built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub ledger: String,
    /// Every stored message was a verified, linked event, the stream's configuration protects
    /// history, and there is at least one event.
    pub ok: bool,
    pub events_verified: u64,
    /// Last stream sequence examined.
    pub last_seq: u64,
    /// The ledger's root public key (hex), as pinned by genesis.
    pub root_key: Option<String>,
    /// Whether the caller pinned the root key (otherwise trusted on first use).
    pub root_pinned: bool,
    pub head: Option<HeadStatus>,
    /// Foreign messages (not valid events of this ledger), the first [`MAX_SEQS`].
    pub foreign: Vec<ForeignEntry>,
    pub foreign_total: u64,
    /// The chain break that stopped verification, if any: nothing after it is in the report.
    pub chain_break: Option<ChainBreak>,
    /// The event stream's configuration does not protect history (deletes, purges, limits).
    pub stream_problem: Option<String>,
}

/// The last verified event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadStatus {
    pub index: u64,
    pub seq: u64,
    /// Chain hash, hex.
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignEntry {
    pub seq: u64,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    pub seq: u64,
    pub error: String,
}

impl ChainStatus {
    /// The status of a replay from the start of the stream into `state`.
    pub fn from_replay(
        state: &ChainState,
        replay: &ReplayReport,
        root_pinned: bool,
        stream_problem: Option<String>,
    ) -> ChainStatus {
        let head = state.head().map(|h| HeadStatus {
            index: h.index,
            seq: h.seq,
            hash: h.hash.to_hex(),
        });
        let ok = replay.is_clean() && stream_problem.is_none() && head.is_some();
        ChainStatus {
            ledger: state.ledger().to_string(),
            ok,
            events_verified: replay.verified,
            last_seq: replay.last_seq,
            root_key: state.root_key().map(|k| k.to_hex()),
            root_pinned,
            head,
            foreign: replay
                .foreign
                .iter()
                .take(MAX_SEQS)
                .map(|f| ForeignEntry {
                    seq: f.seq,
                    reason: f.reason.to_string(),
                })
                .collect(),
            foreign_total: replay.foreign.len() as u64,
            chain_break: replay.chain_break.as_ref().map(|e| ChainBreak {
                seq: e.seq(),
                error: e.to_string(),
            }),
            stream_problem,
        }
    }
}

/// The latest checkpoint of the ledger's Merkle tree, as the caller checked it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStatus {
    /// Number of events the checkpoint covers (tree size).
    pub size: u64,
    /// Merkle root, hex.
    pub root: String,
    /// Whether its signature(s) and root were verified against the replayed events.
    pub verified: bool,
    /// Stream sequence of the checkpoint message in the checkpoint stream, if known.
    pub seq: Option<u64>,
    /// Checkpoint time, if known.
    pub time_ms: Option<u64>,
    /// Free-form detail (who signed, witnesses, why verification failed).
    pub detail: String,
}

/// Events in and around the range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// Verified events with time in the range.
    pub events_in_range: u64,
    /// ... before `from_ms` (folded into the as-of views only).
    pub events_before: u64,
    /// ... at or after `to_ms` (not folded at all).
    pub events_after: u64,
    /// Events in the range by type.
    pub by_type: Vec<Count>,
    pub evidence: Evidence,
}

/// A key in an inventory group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRef {
    pub key: String,
    /// The event that created (or imported) the key.
    pub created_seq: u64,
    /// The event that set the key's state as of `to_ms`.
    pub state_seq: u64,
}

/// Keys of one type, state or tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryGroup {
    pub name: String,
    pub count: u64,
    /// The first [`MAX_SEQS`] keys, in key-id order.
    pub keys: Vec<KeyRef>,
    /// By type and tenant: the creating events; by state: the events that set the state.
    pub evidence: Evidence,
}

/// One key as of `to_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub key: String,
    pub tenant: String,
    pub name: String,
    pub key_type: String,
    pub state: String,
    pub imported: bool,
    pub created_seq: u64,
    pub created_ms: u64,
    pub state_seq: u64,
    pub latest_version: u32,
    pub latest_version_seq: u64,
    pub rotation_period_s: Option<u64>,
}

/// Keys as of `to_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub as_of_ms: u64,
    /// The last stream sequence folded (the last event with time before `to_ms`).
    pub as_of_seq: u64,
    pub total: u64,
    pub by_type: Vec<InventoryGroup>,
    pub by_state: Vec<InventoryGroup>,
    pub by_tenant: Vec<InventoryGroup>,
    /// Every key, in key-id order.
    pub keys: Vec<KeyRow>,
}

/// An active key whose latest version is older than its rotation period allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverdueKey {
    pub key: String,
    pub tenant: String,
    pub key_type: String,
    pub latest_version: u32,
    /// When the latest version was created, and by which event.
    pub version_created_ms: u64,
    pub version_seq: u64,
    pub rotation_period_s: u64,
    /// `version_created_ms + rotation_period_s * 1000`.
    pub due_ms: u64,
    /// `to_ms - due_ms`.
    pub overdue_ms: u64,
    /// The version's event and the key's creating event (which carries the rotation policy).
    pub evidence: Evidence,
}

/// Operations by one principal or platform in the range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRow {
    /// Principal, or platform id.
    pub name: String,
    /// Operations (records) in all.
    pub total: u64,
    /// Distinct keys operated on.
    pub keys: u64,
    /// Per operation, most frequent first.
    pub operations: Vec<Count>,
    pub evidence: Evidence,
}

/// Operations on keys in the range: uses, accesses and lifecycle operations (not refusals).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    pub total: u64,
    pub by_principal: Vec<AccessRow>,
    /// Operations performed from an attested platform (a verified quote), by platform.
    pub by_platform: Vec<AccessRow>,
    /// Operations without a platform quote.
    pub unattested: u64,
    pub evidence: Evidence,
}

/// Refusals of one code or one principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalGroup {
    pub name: String,
    /// Refusals (the sum of the events' `count`s).
    pub count: u64,
    /// `RequestRefused` events.
    pub events: u64,
    /// By principal (for a code) or by code (for a principal).
    pub breakdown: Vec<Count>,
    pub evidence: Evidence,
}

/// Refused requests in the range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    pub total: u64,
    pub events: u64,
    pub by_code: Vec<RefusalGroup>,
    pub by_principal: Vec<RefusalGroup>,
    pub evidence: Evidence,
}

/// A key compromised as of `to_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompromisedKey {
    pub key: String,
    pub tenant: String,
    /// When the compromise is believed to have happened.
    pub compromised_at_ms: u64,
    /// When it was recorded (the `KeyCompromised` event's time) and where.
    pub recorded_ms: u64,
    pub seq: u64,
    pub from_state: String,
    pub reason: String,
    /// State as of `to_ms` (compromised, or destroyed-compromised).
    pub state: String,
    /// Whether the `KeyCompromised` event is in the range.
    pub in_range: bool,
}

/// A key destroyed as of `to_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyedKey {
    pub key: String,
    pub tenant: String,
    /// The `KeyDestroyed` event that destroyed its last versions.
    pub destroyed_ms: u64,
    pub seq: u64,
    /// Versions destroyed by that event.
    pub versions: Vec<u32>,
    pub erased_deks: u64,
    pub state: String,
    pub in_range: bool,
}

/// A use of a key at or after its compromise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseAfterCompromise {
    pub key: String,
    pub tenant: Option<String>,
    pub operation: String,
    pub principal: String,
    pub platform: Option<String>,
    pub version: Option<u32>,
    pub time_ms: u64,
    /// The use's event, and the use's position in it (`KeysUsed`).
    pub seq: u64,
    pub sub: u32,
    pub request_id: String,
    pub compromised_at_ms: u64,
    /// The `KeyCompromised` event.
    pub compromise_seq: u64,
    pub in_range: bool,
}

/// A change of who may sign events, issue tokens or attest (and master key rotations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustChange {
    pub seq: u64,
    pub time_ms: u64,
    /// The event type.
    pub event: String,
    /// `signer`, `issuer`, `platform` or `master-key`.
    pub kind: String,
    /// The signer id, issuer name or platform id.
    pub subject: String,
    pub detail: String,
    pub principal: String,
}

/// An event the views could not apply (see [`crate::Anomaly`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyRow {
    pub seq: u64,
    pub event: String,
    /// `keys` or `trust`.
    pub view: String,
    pub problem: String,
}

/// The compliance report. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceReport {
    /// [`FORMAT`].
    pub format: String,
    pub ledger: String,
    pub range: TimeRange,
    /// Filled by the caller (the report itself reads no clock).
    pub generated_ms: Option<u64>,
    /// Headline figures, each with its evidence.
    pub summary: Vec<Figure>,
    pub chain: ChainStatus,
    /// Filled by the caller when it checked a checkpoint; `None` when unknown.
    pub checkpoint: Option<CheckpointStatus>,
    pub activity: Activity,
    pub inventory: Inventory,
    pub rotation_overdue: Vec<OverdueKey>,
    pub access: Access,
    pub refusals: Refusals,
    pub compromised: Vec<CompromisedKey>,
    pub destroyed: Vec<DestroyedKey>,
    pub use_after_compromise: Vec<UseAfterCompromise>,
    pub trust_changes: Vec<TrustChange>,
    pub anomalies: Vec<AnomalyRow>,
}

impl ComplianceReport {
    /// Builds the report for `range = (from_ms, to_ms)` from verified events in stream order
    /// (normally every verified event of the ledger) and the replay's chain status.
    pub fn build<'a>(
        range: (u64, u64),
        events: impl IntoIterator<Item = &'a VerifiedEvent>,
        chain: ChainStatus,
    ) -> ComplianceReport {
        let mut b = ReportBuilder::new(range);
        for v in events {
            b.apply(v);
        }
        b.finish(chain)
    }

    /// A summary figure by metric id.
    pub fn figure(&self, metric: &str) -> Option<&Figure> {
        self.summary.iter().find(|f| f.metric == metric)
    }
}

// ---- building -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Compromise {
    seq: u64,
    time_ms: u64,
    at_ms: u64,
    from: KeyState,
    reason: String,
}

#[derive(Clone, Debug)]
struct Destruction {
    seq: u64,
    time_ms: u64,
    versions: Vec<u32>,
    erased: u64,
}

/// Builds a [`ComplianceReport`] one verified event at a time (in stream order).
#[derive(Debug)]
pub struct ReportBuilder {
    range: TimeRange,
    keys: KeyStates,
    trust: Trust,
    audit: AuditIndex,
    /// Key -> the event that set its current state.
    state_seq: HashMap<KeyId, u64>,
    compromises: HashMap<KeyId, Compromise>,
    destructions: HashMap<KeyId, Destruction>,
    trust_changes: Vec<TrustChange>,
    by_type: BTreeMap<&'static str, Tally>,
    in_range: SeqAcc,
    before: u64,
    after: u64,
    last_folded: u64,
}

impl ReportBuilder {
    pub fn new((from_ms, to_ms): (u64, u64)) -> ReportBuilder {
        ReportBuilder {
            range: TimeRange { from_ms, to_ms },
            keys: KeyStates::new(),
            trust: Trust::new(),
            audit: AuditIndex::new(),
            state_seq: HashMap::new(),
            compromises: HashMap::new(),
            destructions: HashMap::new(),
            trust_changes: Vec::new(),
            by_type: BTreeMap::new(),
            in_range: SeqAcc::default(),
            before: 0,
            after: 0,
            last_folded: 0,
        }
    }

    /// Folds one verified event (events must come in stream order; repeats are ignored).
    pub fn apply(&mut self, v: &VerifiedEvent) {
        let seq = v.seq();
        if seq <= self.last_folded {
            return;
        }
        let e = v.event();
        if e.time_ms >= self.range.to_ms {
            self.after += 1;
            return;
        }
        self.last_folded = seq;
        let in_range = self.range.contains(e.time_ms);
        if in_range {
            self.in_range.push(seq);
            self.by_type.entry(e.body.tag()).or_default().add(1, seq);
        } else {
            self.before += 1;
        }

        // Key state: note which event set each key's state.
        let changed = e.body.changed_key().cloned();
        let before = changed
            .as_ref()
            .and_then(|k| self.keys.get(k))
            .map(|k| k.state);
        let anomalies = self.keys.anomalies().len();
        self.keys.apply(v);
        let applied = self.keys.anomalies().len() == anomalies;
        if let (Some(key), true) = (changed, applied) {
            let after = self.keys.get(&key).map(|k| k.state);
            if after.is_some() && after != before {
                self.state_seq.insert(key.clone(), seq);
            }
            match &e.body {
                EventBody::KeyCompromised(c) => {
                    self.compromises.insert(
                        key,
                        Compromise {
                            seq,
                            time_ms: e.time_ms,
                            at_ms: c.compromised_at_ms,
                            from: c.from,
                            reason: c.reason.clone(),
                        },
                    );
                }
                EventBody::KeyDestroyed(d)
                    if after.is_some_and(is_destroyed) && !before.is_some_and(is_destroyed) =>
                {
                    self.destructions.insert(
                        key,
                        Destruction {
                            seq,
                            time_ms: e.time_ms,
                            versions: d.versions.clone(),
                            erased: d.erased_deks.len() as u64,
                        },
                    );
                }
                _ => {}
            }
        }
        self.trust.apply(v);
        self.audit.apply(v);

        if in_range {
            if let Some((kind, subject, detail)) = trust_change(&e.body) {
                self.trust_changes.push(TrustChange {
                    seq,
                    time_ms: e.time_ms,
                    event: e.body.tag().to_owned(),
                    kind: kind.to_owned(),
                    subject,
                    detail,
                    principal: e.actor.principal.clone(),
                });
            }
        }
    }

    /// The report, given the chain status of the replay that fed this builder.
    pub fn finish(self, chain: ChainStatus) -> ComplianceReport {
        let range = self.range;
        let inventory = self.inventory();
        let rotation_overdue = self.rotation_overdue();
        let access = self.access();
        let refusals = self.refusals();
        let (compromised, destroyed) = self.compromised_and_destroyed();
        let use_after_compromise = self.use_after_compromise();
        let activity = Activity {
            events_in_range: self.in_range.total,
            events_before: self.before,
            events_after: self.after,
            by_type: sorted_counts(self.by_type.iter().map(|(t, c)| ((*t).to_owned(), c))),
            evidence: self.in_range.evidence(),
        };
        let mut anomalies: Vec<AnomalyRow> = self
            .keys
            .anomalies()
            .iter()
            .map(|a| (a, "keys"))
            .chain(self.trust.anomalies().iter().map(|a| (a, "trust")))
            .map(|(a, view)| AnomalyRow {
                seq: a.seq,
                event: a.event_type.to_owned(),
                view: view.to_owned(),
                problem: a.problem.clone(),
            })
            .collect();
        anomalies.sort_by_key(|a| a.seq);

        let fig = |metric: &str, label: &str, value: u64, evidence: Evidence| Figure {
            metric: metric.to_owned(),
            label: label.to_owned(),
            value,
            evidence,
        };
        let summary = vec![
            fig(
                "keys",
                "Keys (as of the end of the range)",
                inventory.total,
                Evidence::from_seqs(inventory.keys.iter().map(|k| k.created_seq)),
            ),
            fig(
                "events_in_range",
                "Events in the range",
                activity.events_in_range,
                activity.evidence.clone(),
            ),
            fig(
                "rotation_overdue",
                "Keys overdue for rotation",
                rotation_overdue.len() as u64,
                Evidence::from_seqs(rotation_overdue.iter().map(|o| o.version_seq)),
            ),
            fig(
                "operations",
                "Operations on keys",
                access.total,
                access.evidence.clone(),
            ),
            fig(
                "refusals",
                "Refused requests",
                refusals.total,
                refusals.evidence.clone(),
            ),
            fig(
                "compromised",
                "Compromised keys",
                compromised.len() as u64,
                Evidence::from_seqs(compromised.iter().map(|c| c.seq)),
            ),
            fig(
                "use_after_compromise",
                "Uses after compromise",
                use_after_compromise.len() as u64,
                Evidence::from_seqs(use_after_compromise.iter().map(|u| u.seq)),
            ),
            fig(
                "destroyed",
                "Destroyed keys",
                destroyed.len() as u64,
                Evidence::from_seqs(destroyed.iter().map(|d| d.seq)),
            ),
            fig(
                "trust_changes",
                "Signer, issuer and platform changes",
                self.trust_changes.len() as u64,
                Evidence::from_seqs(self.trust_changes.iter().map(|t| t.seq)),
            ),
            fig(
                "foreign_messages",
                "Foreign messages in the stream",
                chain.foreign_total,
                Evidence::from_seqs(chain.foreign.iter().map(|f| f.seq)),
            ),
            fig(
                "chain_breaks",
                "Chain breaks",
                u64::from(chain.chain_break.is_some()),
                Evidence::from_seqs(chain.chain_break.iter().map(|b| b.seq)),
            ),
            fig(
                "anomalies",
                "Events the views could not apply",
                anomalies.len() as u64,
                Evidence::from_seqs(anomalies.iter().map(|a| a.seq)),
            ),
        ];

        ComplianceReport {
            format: FORMAT.to_owned(),
            ledger: chain.ledger.clone(),
            range,
            generated_ms: None,
            summary,
            chain,
            checkpoint: None,
            activity,
            inventory,
            rotation_overdue,
            access,
            refusals,
            compromised,
            destroyed,
            use_after_compromise,
            trust_changes: self.trust_changes,
            anomalies,
        }
    }

    fn inventory(&self) -> Inventory {
        let mut keys = Vec::new();
        for k in self.all_keys() {
            let latest = k.latest_version();
            keys.push(KeyRow {
                key: k.spec.key.to_string(),
                tenant: k.spec.tenant.to_string(),
                name: k.spec.name.clone(),
                key_type: k.spec.key_type.to_string(),
                state: k.state.to_string(),
                imported: k.imported,
                created_seq: k.created_seq,
                created_ms: k.versions.values().next().map_or(0, |v| v.created_ms),
                state_seq: self
                    .state_seq
                    .get(&k.spec.key)
                    .copied()
                    .unwrap_or(k.created_seq),
                latest_version: latest.map_or(0, |v| v.version),
                latest_version_seq: latest.map_or(k.created_seq, |v| v.created_seq),
                rotation_period_s: k.spec.rotation_period_s,
            });
        }
        let group = |name_of: &dyn Fn(&KeyRow) -> String, by_state: bool| {
            let mut groups: BTreeMap<String, Vec<&KeyRow>> = BTreeMap::new();
            for k in &keys {
                groups.entry(name_of(k)).or_default().push(k);
            }
            let mut out: Vec<InventoryGroup> = groups
                .into_iter()
                .map(|(name, ks)| InventoryGroup {
                    name,
                    count: ks.len() as u64,
                    evidence: Evidence::from_seqs(ks.iter().map(|k| {
                        if by_state {
                            k.state_seq
                        } else {
                            k.created_seq
                        }
                    })),
                    keys: ks
                        .iter()
                        .take(MAX_SEQS)
                        .map(|k| KeyRef {
                            key: k.key.clone(),
                            created_seq: k.created_seq,
                            state_seq: k.state_seq,
                        })
                        .collect(),
                })
                .collect();
            out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            out
        };
        let by_type = group(&|k| k.key_type.clone(), false);
        let by_state = group(&|k| k.state.clone(), true);
        let by_tenant = group(&|k| k.tenant.clone(), false);
        Inventory {
            as_of_ms: self.range.to_ms,
            as_of_seq: self.last_folded,
            total: keys.len() as u64,
            by_type,
            by_state,
            by_tenant,
            keys,
        }
    }

    /// Every key, in key-id order.
    fn all_keys(&self) -> impl Iterator<Item = &crate::KeyView> {
        let mut ids: Vec<&KeyId> = self.state_seq.keys().collect();
        // Keys whose state never changed after creation are in `state_seq` too (creation
        // changes the state from nothing), so this lists every key.
        ids.sort();
        ids.into_iter().filter_map(|id| self.keys.get(id))
    }

    fn rotation_overdue(&self) -> Vec<OverdueKey> {
        let to = self.range.to_ms;
        let mut out = Vec::new();
        for k in self.all_keys() {
            let (Some(period), Some(latest)) = (k.spec.rotation_period_s, k.latest_version())
            else {
                continue;
            };
            if k.state != KeyState::Active {
                continue;
            }
            let due_ms = latest
                .created_ms
                .saturating_add(period.saturating_mul(1000));
            if due_ms < to {
                out.push(OverdueKey {
                    key: k.spec.key.to_string(),
                    tenant: k.spec.tenant.to_string(),
                    key_type: k.spec.key_type.to_string(),
                    latest_version: latest.version,
                    version_created_ms: latest.created_ms,
                    version_seq: latest.created_seq,
                    rotation_period_s: period,
                    due_ms,
                    overdue_ms: to - due_ms,
                    evidence: Evidence::from_seqs([latest.created_seq, k.created_seq]),
                });
            }
        }
        // Most overdue first.
        out.sort_by(|a, b| a.due_ms.cmp(&b.due_ms).then_with(|| a.key.cmp(&b.key)));
        out
    }

    fn access(&self) -> Access {
        #[derive(Default)]
        struct Acc {
            total: u64,
            keys: BTreeSet<String>,
            ops: BTreeMap<String, Tally>,
            seqs: SeqAcc,
        }
        impl Acc {
            fn add(&mut self, op: String, key: Option<&KeyId>, seq: u64) {
                self.total += 1;
                if let Some(k) = key {
                    self.keys.insert(k.to_string());
                }
                self.ops.entry(op).or_default().add(1, seq);
                self.seqs.push(seq);
            }
            fn row(self, name: String) -> AccessRow {
                AccessRow {
                    name,
                    total: self.total,
                    keys: self.keys.len() as u64,
                    operations: sorted_counts(self.ops.iter().map(|(o, t)| (o.clone(), t))),
                    evidence: self.seqs.evidence(),
                }
            }
        }
        let mut by_principal: BTreeMap<String, Acc> = BTreeMap::new();
        let mut by_platform: BTreeMap<String, Acc> = BTreeMap::new();
        let (mut total, mut unattested, mut seqs) = (0, 0, SeqAcc::default());
        for r in self.audit.records() {
            let Some(op) = r.operation else { continue };
            if r.refusal.is_some() || !self.range.contains(r.time_ms) {
                continue;
            }
            total += 1;
            seqs.push(r.seq);
            let op = op.to_string();
            by_principal.entry(r.principal.clone()).or_default().add(
                op.clone(),
                r.key.as_ref(),
                r.seq,
            );
            match &r.platform {
                Some(p) => by_platform
                    .entry(p.clone())
                    .or_default()
                    .add(op, r.key.as_ref(), r.seq),
                None => unattested += 1,
            }
        }
        let rows = |m: BTreeMap<String, Acc>| {
            let mut v: Vec<AccessRow> = m.into_iter().map(|(n, a)| a.row(n)).collect();
            v.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
            v
        };
        Access {
            total,
            by_principal: rows(by_principal),
            by_platform: rows(by_platform),
            unattested,
            evidence: seqs.evidence(),
        }
    }

    fn refusals(&self) -> Refusals {
        #[derive(Default)]
        struct Acc {
            count: u64,
            events: u64,
            breakdown: BTreeMap<String, Tally>,
            seqs: SeqAcc,
        }
        impl Acc {
            fn add(&mut self, other: &str, n: u64, seq: u64) {
                self.count += n;
                self.events += 1;
                self.breakdown
                    .entry(other.to_owned())
                    .or_default()
                    .add(n, seq);
                self.seqs.push(seq);
            }
        }
        let mut by_code: BTreeMap<String, Acc> = BTreeMap::new();
        let mut by_principal: BTreeMap<String, Acc> = BTreeMap::new();
        let (mut total, mut events, mut seqs) = (0, 0, SeqAcc::default());
        for r in self.audit.records() {
            let Some((code, n)) = &r.refusal else {
                continue;
            };
            if !self.range.contains(r.time_ms) {
                continue;
            }
            let n = u64::from(*n);
            total += n;
            events += 1;
            seqs.push(r.seq);
            by_code
                .entry(code.clone())
                .or_default()
                .add(&r.principal, n, r.seq);
            by_principal
                .entry(r.principal.clone())
                .or_default()
                .add(code, n, r.seq);
        }
        let groups = |m: BTreeMap<String, Acc>| {
            let mut v: Vec<RefusalGroup> = m
                .into_iter()
                .map(|(name, a)| RefusalGroup {
                    name,
                    count: a.count,
                    events: a.events,
                    breakdown: sorted_counts(a.breakdown.iter().map(|(n, t)| (n.clone(), t))),
                    evidence: a.seqs.evidence(),
                })
                .collect();
            v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            v
        };
        Refusals {
            total,
            events,
            by_code: groups(by_code),
            by_principal: groups(by_principal),
            evidence: seqs.evidence(),
        }
    }

    fn compromised_and_destroyed(&self) -> (Vec<CompromisedKey>, Vec<DestroyedKey>) {
        let mut compromised = Vec::new();
        let mut destroyed = Vec::new();
        for k in self.all_keys() {
            let key = &k.spec.key;
            if matches!(
                k.state,
                KeyState::Compromised | KeyState::DestroyedCompromised
            ) {
                if let Some(c) = self.compromises.get(key) {
                    compromised.push(CompromisedKey {
                        key: key.to_string(),
                        tenant: k.spec.tenant.to_string(),
                        compromised_at_ms: c.at_ms,
                        recorded_ms: c.time_ms,
                        seq: c.seq,
                        from_state: c.from.to_string(),
                        reason: c.reason.clone(),
                        state: k.state.to_string(),
                        in_range: self.range.contains(c.time_ms),
                    });
                }
            }
            if is_destroyed(k.state) {
                if let Some(d) = self.destructions.get(key) {
                    destroyed.push(DestroyedKey {
                        key: key.to_string(),
                        tenant: k.spec.tenant.to_string(),
                        destroyed_ms: d.time_ms,
                        seq: d.seq,
                        versions: d.versions.clone(),
                        erased_deks: d.erased,
                        state: k.state.to_string(),
                        in_range: self.range.contains(d.time_ms),
                    });
                }
            }
        }
        compromised.sort_by_key(|c| c.seq);
        destroyed.sort_by_key(|d| d.seq);
        (compromised, destroyed)
    }

    fn use_after_compromise(&self) -> Vec<UseAfterCompromise> {
        let compromised: HashMap<&KeyId, (u64, u64)> = self
            .all_keys()
            .filter_map(|k| {
                let at = k.compromised_at_ms?;
                let c = self.compromises.get(&k.spec.key)?;
                Some((&k.spec.key, (at, c.seq)))
            })
            .collect();
        if compromised.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for r in self.audit.records() {
            if !matches!(r.event, "KeysUsed" | "MaterialAccessed") {
                continue;
            }
            let Some(key) = &r.key else { continue };
            let Some(&(at, compromise_seq)) = compromised.get(key) else {
                continue;
            };
            if r.time_ms < at {
                continue;
            }
            out.push(UseAfterCompromise {
                key: key.to_string(),
                tenant: r.tenant.clone(),
                operation: r
                    .operation
                    .map_or_else(|| r.event.to_owned(), |o| o.to_string()),
                principal: r.principal.clone(),
                platform: r.platform.clone(),
                version: r.version,
                time_ms: r.time_ms,
                seq: r.seq,
                sub: r.sub,
                request_id: r.request_id.clone(),
                compromised_at_ms: at,
                compromise_seq,
                in_range: self.range.contains(r.time_ms),
            });
        }
        out
    }
}

fn is_destroyed(s: KeyState) -> bool {
    matches!(s, KeyState::Destroyed | KeyState::DestroyedCompromised)
}

/// Counts, most frequent first, then by name.
fn sorted_counts<'a>(it: impl Iterator<Item = (String, &'a Tally)>) -> Vec<Count> {
    let mut v: Vec<Count> = it
        .map(|(name, t)| Count {
            name,
            count: t.count,
            evidence: t.seqs.evidence(),
        })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    v
}

/// `(kind, subject, detail)` of a signer, issuer, platform or master-key change.
fn trust_change(body: &EventBody) -> Option<(&'static str, String, String)> {
    Some(match body {
        EventBody::SignerEnrolled(e) => (
            "signer",
            e.signer.to_hex(),
            format!(
                "signer {} enrolled as {} (public key {})",
                e.label,
                e.role,
                e.public_key.to_hex()
            ),
        ),
        EventBody::SignerRetired(e) => (
            "signer",
            e.signer.to_hex(),
            format!("signer retired ({})", e.reason),
        ),
        EventBody::IssuerTrusted(e) => (
            "issuer",
            e.issuer.clone(),
            format!(
                "issuer {} trusted with key {} for {}",
                e.issuer,
                e.public_key.to_hex(),
                if e.tenants.is_empty() {
                    "every tenant".to_owned()
                } else {
                    e.tenants
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ),
        EventBody::IssuerRevoked(e) => ("issuer", e.issuer.clone(), describe_event(body)),
        EventBody::PlatformEnrolled(e) => (
            "platform",
            e.platform.clone(),
            format!(
                "platform {} enrolled in group {} with {} measurement(s), attestation key {}",
                e.platform,
                e.group,
                e.measurements.len(),
                e.attestation_key.to_hex()
            ),
        ),
        EventBody::PlatformRevoked(e) => ("platform", e.platform.clone(), describe_event(body)),
        EventBody::MasterKeyRotated(e) => (
            "master-key",
            e.new_kek_id.to_hex(),
            format!(
                "master key {} replaced by {}",
                e.old_kek_id.to_hex(),
                e.new_kek_id.to_hex()
            ),
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ed25519_dalek::SigningKey;
    use ledger::event::*;
    use ledger::seal::SealedMaterial;
    use ledger::sign::{chain_and_sign, ChainTip, Draft, EventSigner};
    use ledger::{Bytes32, Checked, KeyId, LedgerId, RequestId, TenantId};

    use super::*;

    fn actor(p: &str) -> Actor {
        Actor {
            principal: p.into(),
            tenant: Some(TenantId::new("acme").unwrap()),
            token_id: None,
        }
    }

    fn draft(p: &str, body: impl Into<EventBody>) -> Draft {
        Draft {
            request_id: RequestId::random(),
            actor: actor(p),
            context: None,
            body: body.into(),
        }
    }

    fn k(id: &str) -> KeyId {
        KeyId::new(id).unwrap()
    }

    fn created(id: &str, key_type: KeyType, rotation_period_s: Option<u64>) -> KeyCreated {
        KeyCreated {
            spec: KeySpec {
                key: k(id),
                tenant: TenantId::new("acme").unwrap(),
                name: id.into(),
                key_type,
                state: KeyState::Active,
                exportable: false,
                rotation_period_s,
                split: None,
                labels: vec![],
            },
            material: VersionMaterial {
                version: 1,
                sealed: vec![SealedMaterial {
                    dek_id: Bytes32([9; 32]),
                    nonce: vec![0; 12],
                    ciphertext: vec![0; 48],
                }],
                public_key: None,
            },
        }
    }

    fn used(id: &str, p: &str, op: Operation) -> KeysUsed {
        KeysUsed {
            uses: vec![KeyUse {
                key: k(id),
                tenant: TenantId::new("acme").unwrap(),
                version: 1,
                operation: op,
                principal: p.into(),
                request_id: RequestId::random(),
                context: None,
            }],
        }
    }

    /// Genesis and enrolment at time 1, then each draft at its time, as verified events.
    fn chain(timed: Vec<(u64, Draft)>) -> (Vec<VerifiedEvent>, ChainStatus) {
        let ledger = LedgerId::new("rep").unwrap();
        let root = EventSigner::new(SigningKey::from_bytes(&[1; 32]));
        let writer = EventSigner::new(SigningKey::from_bytes(&[2; 32]));
        let system = vec![
            draft(
                "system:init",
                LedgerCreated {
                    root_key: root.public_key(),
                    kek_id: Bytes32::ZERO,
                },
            ),
            draft(
                "system:init",
                SignerEnrolled {
                    signer: writer.id(),
                    public_key: writer.public_key(),
                    role: SignerRole::Writer,
                    label: "w".into(),
                },
            ),
        ];
        let (mut entries, mut tip) = chain_and_sign(&root, &ledger, ChainTip::GENESIS, 1, &system);
        for (t, d) in timed {
            let (e, next) = chain_and_sign(&writer, &ledger, tip, t, &[d]);
            entries.extend(e);
            tip = next;
        }
        let msgs: Vec<(u64, Bytes)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e.entry.clone()))
            .collect();
        let mut state = ChainState::new(ledger, None);
        let (out, err) = state.check_batch(msgs);
        assert!(err.is_none());
        let events: Vec<VerifiedEvent> = out
            .into_iter()
            .map(|c| match c {
                Checked::Event(v) => v,
                Checked::Foreign(f) => panic!("foreign {f:?}"),
            })
            .collect();
        let replay = ReplayReport {
            verified: events.len() as u64,
            last_seq: state.last_seq(),
            ..ReplayReport::default()
        };
        let status = ChainStatus::from_replay(&state, &replay, false, None);
        (events, status)
    }

    #[test]
    fn range_as_of_and_use_after_a_backdated_compromise() {
        let (events, status) = chain(vec![
            (
                1_000,
                draft("ann", created("k1", KeyType::Aes256Gcm, Some(10))),
            ), // seq 3
            (
                1_000,
                draft("ann", created("k4", KeyType::Aes256Gcm, Some(5))),
            ), // seq 4
            (
                2_000,
                draft("ann", created("k2", KeyType::HmacSha256, None)),
            ), // seq 5
            (
                2_000,
                draft("alice", used("k1", "alice", Operation::Decrypt)),
            ), // seq 6
            (3_000, draft("bob", used("k1", "bob", Operation::Decrypt))), // seq 7
            (
                4_000,
                draft(
                    "ann",
                    KeyCompromised {
                        key: k("k1"),
                        from: KeyState::Active,
                        compromised_at_ms: 2_500,
                        reason: "found on a paste site".into(),
                    },
                ),
            ), // seq 8
            (
                5_000,
                draft("carol", used("k1", "carol", Operation::Decrypt)),
            ), // seq 9
            (
                6_000,
                draft(
                    "mallory",
                    RequestRefused {
                        key: Some(k("k1")),
                        tenant: None,
                        operation: Operation::Decrypt,
                        code: "forbidden".into(),
                        reason: "no grant".into(),
                        count: 7,
                        first_ms: 5_500,
                        last_ms: 6_000,
                    },
                ),
            ), // seq 10
            (
                7_000,
                draft(
                    "ann",
                    KeyDestroyed {
                        key: k("k2"),
                        versions: vec![1],
                        erased_deks: vec![Bytes32([9; 32])],
                    },
                ),
            ), // seq 11
            (50_000, draft("ann", created("k3", KeyType::Ed25519, None))), // seq 12
        ]);
        assert!(status.ok);
        let r = ComplianceReport::build((2_500, 20_000), &events, status);

        // As of 20 s: k3 (created later) is not there.
        assert_eq!(r.inventory.total, 3);
        assert_eq!(r.inventory.as_of_seq, 11);
        assert_eq!(
            (
                r.activity.events_before,
                r.activity.events_in_range,
                r.activity.events_after
            ),
            (6, 5, 1)
        );
        let state = |name: &str| {
            r.inventory
                .by_state
                .iter()
                .find(|g| g.name == name)
                .cloned()
        };
        let c = state("compromised").unwrap();
        assert_eq!(
            (c.count, c.keys[0].key.as_str(), c.keys[0].state_seq),
            (1, "k1", 8)
        );
        assert_eq!(c.evidence.seqs, vec![8]);
        let d = state("destroyed").unwrap();
        assert_eq!((d.keys[0].key.as_str(), d.keys[0].state_seq), ("k2", 11));
        assert_eq!(state("active").unwrap().keys[0].state_seq, 4);

        // Only the active key is overdue (k1 is compromised).
        assert_eq!(r.rotation_overdue.len(), 1);
        let o = &r.rotation_overdue[0];
        assert_eq!(
            (o.key.as_str(), o.due_ms, o.overdue_ms, o.version_seq),
            ("k4", 6_000, 14_000, 4)
        );

        // Uses at or after the (backdated) compromise, even before the compromise event.
        let uses: Vec<(&str, u64, bool)> = r
            .use_after_compromise
            .iter()
            .map(|u| (u.principal.as_str(), u.seq, u.in_range))
            .collect();
        assert_eq!(uses, vec![("bob", 7, true), ("carol", 9, true)]);
        assert!(r.use_after_compromise.iter().all(|u| u.compromise_seq == 8));
        assert_eq!(r.compromised[0].compromised_at_ms, 2_500);
        assert_eq!(r.destroyed[0].seq, 11);

        // Access and refusals only in the range: alice's use at 2 s is before it.
        let names: Vec<&str> = r
            .access
            .by_principal
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert!(!names.contains(&"alice"), "{names:?}");
        let ann = r
            .access
            .by_principal
            .iter()
            .find(|a| a.name == "ann")
            .unwrap();
        assert_eq!(ann.total, 2, "compromise and destroy");
        assert_eq!((r.refusals.total, r.refusals.events), (7, 1));
        assert_eq!(r.refusals.by_principal[0].name, "mallory");
        assert_eq!(r.refusals.by_principal[0].evidence.seqs, vec![10]);
        assert!(r.trust_changes.is_empty(), "enrolment was before the range");
        assert_eq!(
            r.figure("use_after_compromise").unwrap().evidence.seqs,
            vec![7, 9]
        );
    }

    #[test]
    fn evidence_is_capped_with_its_total() {
        let e = Evidence::from_seqs((1..=1500).rev().chain([3, 3]));
        assert_eq!((e.seqs.len(), e.total, e.seqs[0]), (MAX_SEQS, 1500, 1));
        assert!(e.truncated());
        let mut acc = SeqAcc::default();
        for s in [1, 1, 2, 5, 5, 9] {
            acc.push(s);
        }
        assert_eq!(acc.evidence(), Evidence::from_seqs([1, 2, 5, 9]));
    }
}
