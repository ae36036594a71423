//! Recording refusals without letting a flood of them exhaust the ledger.
//!
//! Every refused request must leave evidence (DESIGN.md §2 invariant 5), but an attacker who can
//! send requests must not be able to grow the ledger by one signed event per request. The
//! [`RefusalLog`] aggregates: refusals with the same *bucket* (principal, tenant, operation,
//! code) inside one interval share events.
//!
//! - The first refusal of a bucket in an interval is recorded at once, as its own
//!   `RequestRefused` with `count = 1` and the request's own request id.
//! - Further refusals of that bucket in the interval are only counted. When the interval ends
//!   ([`RefusalLog::due`]) one `RequestRefused` records how many there were (`count`), the first
//!   and last time (`first_ms`, `last_ms`), and the key if they all named the same one.
//! - The number of open buckets is bounded; when it is full the oldest bucket is closed early
//!   (its count recorded), so memory stays bounded and no refusal goes uncounted.
//!
//! So a flood costs at most one immediate event per bucket and interval plus one summary event
//! per bucket and interval, whatever its rate. Unauthenticated refusals (bad tokens) have no
//! trustworthy principal and share one bucket per code and operation.

use std::collections::HashMap;

use rand::RngCore;

use ledger::event::{Actor, Operation, RequestRefused};
use ledger::sign::Draft;
use ledger::{KeyId, RequestId, TenantId};

use crate::policy::Refusal;

/// One refusal, whatever refused it.
struct Parts {
    actor: Option<Actor>,
    tenant: Option<TenantId>,
    operation: Operation,
    code: &'static str,
    reason: String,
    key: Option<KeyId>,
    context: Option<ledger::Bytes32>,
}

/// How refusals are bucketed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Bucket {
    principal: Option<String>,
    tenant: Option<TenantId>,
    operation: Operation,
    code: &'static str,
}

#[derive(Clone, Debug)]
struct Open {
    opened_ms: u64,
    /// Refusals after the first, not yet recorded.
    pending: u32,
    first_ms: u64,
    last_ms: u64,
    /// The key all pending refusals named, if they named one and the same.
    key: Option<Option<KeyId>>,
    actor: Option<Actor>,
    reason: String,
}

/// Aggregates refusals into `RequestRefused` drafts.
#[derive(Debug)]
pub struct RefusalLog {
    interval_ms: u64,
    max_open: usize,
    open: HashMap<Bucket, Open>,
}

impl RefusalLog {
    /// `interval_ms`: length of an aggregation window; `max_open`: bound on open buckets.
    pub fn new(interval_ms: u64, max_open: usize) -> RefusalLog {
        RefusalLog {
            interval_ms: interval_ms.max(1),
            max_open: max_open.max(1),
            open: HashMap::new(),
        }
    }

    /// Open buckets (for tests and metrics).
    pub fn open_buckets(&self) -> usize {
        self.open.len()
    }

    /// Records one refusal. Returns the drafts to append now: the refusal itself when it opens a
    /// bucket, and the summary of a bucket closed early to make room.
    pub fn record(&mut self, r: &Refusal, request_id: &RequestId, now_ms: u64) -> Vec<Draft> {
        self.record_parts(
            Parts {
                actor: r.actor.clone(),
                tenant: r.tenant.clone(),
                operation: r.operation,
                code: r.code(),
                reason: r.cause.to_string(),
                key: r.key.clone(),
                context: r.context,
            },
            request_id,
            now_ms,
        )
    }

    /// Records a request that policy allowed but the operation refused (wrong key state, bad
    /// argument, ...), under the operation's own error code.
    #[allow(clippy::too_many_arguments)]
    pub fn record_code(
        &mut self,
        code: &'static str,
        reason: &str,
        actor: Actor,
        operation: Operation,
        key: Option<KeyId>,
        context: Option<ledger::Bytes32>,
        request_id: &RequestId,
        now_ms: u64,
    ) -> Vec<Draft> {
        let tenant = actor.tenant.clone();
        self.record_parts(
            Parts {
                actor: Some(actor),
                tenant,
                operation,
                code,
                reason: reason.to_owned(),
                key,
                context,
            },
            request_id,
            now_ms,
        )
    }

    fn record_parts(&mut self, r: Parts, request_id: &RequestId, now_ms: u64) -> Vec<Draft> {
        let bucket = Bucket {
            principal: r.actor.as_ref().map(|a| a.principal.clone()),
            tenant: r.tenant.clone(),
            operation: r.operation,
            code: r.code,
        };
        let mut out = Vec::new();
        if let Some(o) = self.open.get_mut(&bucket) {
            if now_ms < o.opened_ms.saturating_add(self.interval_ms) {
                if o.pending == 0 {
                    o.first_ms = now_ms;
                    o.key = Some(r.key.clone());
                } else if o.key.as_ref() != Some(&r.key) {
                    o.key = Some(None);
                }
                o.pending = o.pending.saturating_add(1);
                o.last_ms = now_ms;
                o.reason = r.reason.clone();
                return out;
            }
            // The bucket's interval is over: close it and open a new one below.
            if let Some(o) = self.open.remove(&bucket) {
                out.extend(summary(&bucket, &o));
            }
        }
        if self.open.len() >= self.max_open {
            if let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, o)| o.opened_ms)
                .map(|(b, _)| b.clone())
            {
                if let Some(o) = self.open.remove(&oldest) {
                    out.extend(summary(&oldest, &o));
                }
            }
        }
        self.open.insert(
            bucket,
            Open {
                opened_ms: now_ms,
                pending: 0,
                first_ms: now_ms,
                last_ms: now_ms,
                key: None,
                actor: r.actor.clone(),
                reason: r.reason.clone(),
            },
        );
        out.push(Draft {
            request_id: request_id.clone(),
            actor: actor_of(r.actor.as_ref()),
            context: r.context,
            body: RequestRefused {
                key: r.key.clone(),
                tenant: r.tenant.clone(),
                operation: r.operation,
                code: r.code.to_owned(),
                reason: r.reason.clone(),
                count: 1,
                first_ms: now_ms,
                last_ms: now_ms,
            }
            .into(),
        });
        out
    }

    /// Closes the buckets whose interval has ended and returns their summaries.
    pub fn due(&mut self, now_ms: u64) -> Vec<Draft> {
        let interval = self.interval_ms;
        let mut closed: Vec<(Bucket, Open)> = Vec::new();
        self.open.retain(|b, o| {
            let keep = now_ms < o.opened_ms.saturating_add(interval);
            if !keep {
                closed.push((b.clone(), o.clone()));
            }
            keep
        });
        closed.sort_by_key(|(_, o)| o.opened_ms);
        closed.iter().filter_map(|(b, o)| summary(b, o)).collect()
    }

    /// Closes every bucket (on shutdown).
    pub fn drain(&mut self) -> Vec<Draft> {
        self.due(u64::MAX)
    }
}

fn actor_of(a: Option<&Actor>) -> Actor {
    a.cloned().unwrap_or_else(|| Actor {
        principal: "unauthenticated".into(),
        tenant: None,
        token_id: None,
    })
}

/// The summary event of a closed bucket, if it counted anything beyond its first refusal.
fn summary(b: &Bucket, o: &Open) -> Option<Draft> {
    if o.pending == 0 {
        return None;
    }
    Some(Draft {
        request_id: fresh_request_id(),
        actor: actor_of(o.actor.as_ref()),
        context: None,
        body: RequestRefused {
            key: o.key.clone().flatten(),
            tenant: b.tenant.clone(),
            operation: b.operation,
            code: b.code.to_owned(),
            reason: o.reason.clone(),
            count: o.pending,
            first_ms: o.first_ms,
            last_ms: o.last_ms,
        }
        .into(),
    })
}

/// A request id for a summary event: `rf-` and 32 random hex digits.
fn fresh_request_id() -> RequestId {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    // Invariant: "rf-" + 32 hex digits is a valid request id.
    RequestId::new(format!("rf-{}", hex::encode(b))).expect("hex request ids are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Cause;
    use ledger::EventBody;

    fn refusal(principal: Option<&str>, key: Option<&str>, cause: Cause) -> Refusal {
        Refusal {
            cause,
            actor: principal.map(|p| Actor {
                principal: p.into(),
                tenant: Some(TenantId::new("acme").unwrap()),
                token_id: Some("t".into()),
            }),
            tenant: principal.map(|_| TenantId::new("acme").unwrap()),
            operation: Operation::Decrypt,
            key: key.map(|k| KeyId::new(k).unwrap()),
            context: None,
        }
    }

    fn rid(i: u32) -> RequestId {
        RequestId::new(format!("r{i}")).unwrap()
    }

    fn counted(drafts: &[Draft]) -> u64 {
        drafts
            .iter()
            .map(|d| match &d.body {
                EventBody::RequestRefused(r) => u64::from(r.count),
                _ => panic!("not a refusal"),
            })
            .sum()
    }

    #[test]
    fn a_flood_costs_two_events_per_bucket_and_interval_and_loses_no_count() {
        let mut log = RefusalLog::new(1_000, 64);
        let mut drafts = Vec::new();
        for i in 0..10_000u32 {
            let r = refusal(Some("mallory"), Some("k1"), Cause::KeyNotFound);
            drafts.extend(log.record(&r, &rid(i), u64::from(i / 100)));
        }
        assert_eq!(drafts.len(), 1, "only the first is recorded at once");
        drafts.extend(log.due(10_000));
        assert_eq!(drafts.len(), 2);
        assert_eq!(counted(&drafts), 10_000);
        let EventBody::RequestRefused(s) = &drafts[1].body else {
            unreachable!()
        };
        assert_eq!((s.count, s.first_ms, s.last_ms), (9_999, 0, 99));
        assert_eq!(s.key, Some(KeyId::new("k1").unwrap()));
        assert_eq!(drafts[0].request_id, rid(0));
    }

    #[test]
    fn new_interval_opens_a_new_bucket() {
        let mut log = RefusalLog::new(100, 64);
        let r = refusal(Some("bob"), Some("k1"), Cause::KeyNotFound);
        let mut d = Vec::new();
        for t in [0, 10, 150, 160] {
            d.extend(log.record(&r, &rid(t as u32), t));
        }
        d.extend(log.drain());
        assert_eq!(d.len(), 4, "{d:#?}");
        assert_eq!(counted(&d), 4);
    }

    #[test]
    fn mixed_keys_are_counted_without_a_key() {
        let mut log = RefusalLog::new(1_000, 64);
        let mut d = log.record(
            &refusal(Some("bob"), Some("k1"), Cause::KeyNotFound),
            &rid(1),
            0,
        );
        d.extend(log.record(
            &refusal(Some("bob"), Some("k2"), Cause::KeyNotFound),
            &rid(2),
            1,
        ));
        d.extend(log.record(
            &refusal(Some("bob"), Some("k3"), Cause::KeyNotFound),
            &rid(3),
            2,
        ));
        d.extend(log.drain());
        let EventBody::RequestRefused(s) = &d[1].body else {
            unreachable!()
        };
        assert_eq!((s.count, s.key.clone()), (2, None));
    }

    #[test]
    fn buckets_are_bounded_and_closing_early_keeps_counts() {
        let mut log = RefusalLog::new(1_000_000, 8);
        let mut d = Vec::new();
        let mut n = 0u64;
        for round in 0..3u32 {
            for p in 0..20u32 {
                let r = refusal(Some(&format!("p{p}")), None, Cause::KeyNotFound);
                d.extend(log.record(&r, &rid(round * 100 + p), n));
                n += 1;
            }
            assert!(log.open_buckets() <= 8);
        }
        d.extend(log.drain());
        assert_eq!(counted(&d), n);
    }

    #[test]
    fn unauthenticated_refusals_share_a_bucket_per_code() {
        let mut log = RefusalLog::new(1_000, 64);
        let mut d = Vec::new();
        for i in 0..50 {
            let r = refusal(None, None, Cause::TokenMissing);
            d.extend(log.record(&r, &rid(i), 5));
        }
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].actor.principal, "unauthenticated");
        d.extend(log.drain());
        assert_eq!(counted(&d), 50);
    }
}
