//! The audit views (`audit-key`, `audit-principal`, `audit-platform`, `audit-refusals`) end to
//! end, against a real nats-server: a scripted scenario (create, grants, uses, a refused and
//! then granted decrypt, rotation, an attested export from a platform, suspension, a flood of
//! refusals), then every view checked against the verified ledger — each record names an event
//! that is there, of the same type, with the same principal and operation — plus paging, time
//! ranges, tenant isolation, the roles the tenant-wide views need, and `keyledger activity`
//! through the binary.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ed25519_dalek::SigningKey;

use api::client::{CallOptions, Client, ClientError};
use api::wire::*;
use keyledger_tests::binary::{keyledger_bin, run};
use keyledger_tests::fixture::{test_config, Ledger};
use keyledger_tests::harness::NatsServer;
use ledger::event::{EventBody, KeyType, Operation, PlatformEnrolled};
use ledger::nats::StreamSettings;
use ledger::quote::Quote;
use ledger::transport::TransportSecret;
use ledger::{Bytes32, VerifiedEvent};

const LEDGER: &str = "auditviews";

async fn within<T>(secs: u64, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .with_context(|| format!("timed out after {secs} s"))?
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Ok(v) => format!("ok: {v:?}"),
        Err(ClientError::Service { code, .. }) => code,
        Err(e) => format!("client error: {e}"),
    }
}

fn aes(name: &str, exportable: bool) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        key_type: KeyType::Aes256Gcm,
        exportable,
        rotation_period_s: None,
        split: None,
        labels: Default::default(),
        pre_active: false,
    }
}

fn grant(key: &str, grantee: WireGrantee, ops: &[Operation]) -> GrantArgs {
    GrantArgs {
        key: key.into(),
        grantee,
        operations: ops.to_vec(),
        conditions: WireConditions::default(),
        grant_id: None,
    }
}

fn key_args(key: &str, limit: Option<usize>, after: Option<String>) -> AuditKeyArgs {
    AuditKeyArgs {
        key: key.into(),
        from_ms: None,
        to_ms: None,
        after,
        limit,
    }
}

/// `(event, operation, principal)` of a record, for comparing histories.
fn shape(r: &AuditRecordWire) -> (String, Option<Operation>, String) {
    (r.event.clone(), r.operation, r.principal.clone())
}

/// Every record names an event of the verified ledger: the same type, and the same principal
/// and operation (of the itemised use, for `KeysUsed`).
fn check_against_ledger(
    what: &str,
    records: &[AuditRecordWire],
    events: &HashMap<u64, VerifiedEvent>,
) -> Result<()> {
    for r in records {
        let v = events
            .get(&r.seq)
            .with_context(|| format!("{what}: seq {} is not a verified event", r.seq))?;
        let e = v.event();
        ensure!(
            e.body.tag() == r.event,
            "{what}: seq {} is {} in the ledger, {} in the view",
            r.seq,
            e.body.tag(),
            r.event
        );
        ensure!(e.time_ms == r.time_ms, "{what}: seq {} time differs", r.seq);
        match &e.body {
            EventBody::KeysUsed(u) => {
                let x = u
                    .uses
                    .get(r.sub as usize)
                    .with_context(|| format!("{what}: seq {} has no use {}", r.seq, r.sub))?;
                ensure!(
                    x.principal == r.principal
                        && Some(x.operation) == r.operation
                        && Some(x.key.as_str()) == r.key.as_deref()
                        && x.request_id.as_str() == r.request_id,
                    "{what}: use {}.{} differs from the ledger: {r:?} vs {x:?}",
                    r.seq,
                    r.sub
                );
            }
            other => {
                ensure!(r.sub == 0, "{what}: {}.{} of a single event", r.seq, r.sub);
                ensure!(
                    e.actor.principal == r.principal && e.request_id.as_str() == r.request_id,
                    "{what}: seq {} actor/request differs: {r:?}",
                    r.seq
                );
                ensure!(
                    other.key().map(|k| k.as_str()) == r.key.as_deref(),
                    "{what}: seq {} key differs",
                    r.seq
                );
                if let EventBody::RequestRefused(x) = other {
                    ensure!(
                        r.refusal_code.as_deref() == Some(x.code.as_str())
                            && r.refusal_count == Some(x.count)
                            && r.operation == Some(x.operation),
                        "{what}: refusal at seq {} differs: {r:?}",
                        r.seq
                    );
                }
            }
        }
    }
    Ok(())
}

/// Records are in ledger order and each appears once.
fn check_order(what: &str, records: &[AuditRecordWire]) -> Result<()> {
    for w in records.windows(2) {
        ensure!(
            (w[0].seq, w[0].sub) < (w[1].seq, w[1].sub),
            "{what}: out of order or repeated: {}.{} then {}.{}",
            w[0].seq,
            w[0].sub,
            w[1].seq,
            w[1].sub
        );
    }
    Ok(())
}

/// Follows `next` of a tenant-wide view to the end (bounded).
async fn all_refusals(c: &Client) -> Result<Vec<AuditRecordWire>> {
    let mut out = Vec::new();
    let mut after = None;
    for _ in 0..100 {
        let p = c
            .audit_refusals(&AuditRefusalsArgs {
                after: after.take(),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        out.extend(p.records);
        match p.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
    bail!("refusals did not end within 100 pages")
}

async fn verified(l: &Ledger) -> Result<HashMap<u64, VerifiedEvent>> {
    let (report, events) = l.verify().await?;
    ensure!(report.is_clean(), "ledger verifies: {report:?}");
    Ok(events.into_iter().map(|v| (v.seq(), v)).collect())
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_views_agree_with_the_ledger() -> Result<()> {
    let bin = keyledger_bin()?;
    let server = NatsServer::start()?;
    let url = server.url();
    within(150, async {
        let l = Ledger::init(&url, LEDGER, &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let as_ = |sub: &str, tenant: &str, roles: &[&str]| l.token(sub, tenant, roles);
        let admin = l.client(&url, &as_("ann", "acme", &["tenant-admin"])).await?;
        let audrey_token = as_("audrey", "acme", &["auditor"]);
        let auditor = l.client(&url, &audrey_token).await?;
        let alice = l.client(&url, &as_("alice", "acme", &[])).await?;
        let bob = l.client(&url, &as_("bob", "acme", &[])).await?;
        let mallory = l.client(&url, &as_("mallory", "acme", &[])).await?;
        let workload = l.client(&url, &as_("workload", "acme", &[])).await?;
        let kurt = l.client(&url, &as_("kurt", "acme", &["key-user"])).await?;
        let gail = l.client(&url, &as_("gail", "globex", &["auditor"])).await?;

        // ---- the scenario ----------------------------------------------------------------
        let attest = SigningKey::from_bytes(&[77; 32]);
        let measurement = [0x5au8; 32];
        l.record(PlatformEnrolled {
            platform: "tee-1".into(),
            attestation_key: Bytes32(attest.verifying_key().to_bytes()),
            group: "confidential".into(),
            measurements: vec![Bytes32(measurement)],
        })
        .await?;
        let k = admin.create(&aes("audited", true)).await?.key;
        admin
            .grant(&grant(
                &k,
                WireGrantee::Principal("alice".into()),
                &[Operation::Encrypt],
            ))
            .await?;
        admin
            .grant(&GrantArgs {
                key: k.clone(),
                grantee: WireGrantee::PlatformGroup("confidential".into()),
                operations: vec![Operation::GetMaterial],
                conditions: WireConditions {
                    require_platform: true,
                    measurement: Some(B64(measurement.to_vec())),
                    ..WireConditions::default()
                },
                grant_id: Some("tee-only".into()),
            })
            .await?;
        let mut ciphertext = String::new();
        for i in 0..3 {
            ciphertext = alice
                .encrypt(&k, format!("record {i}").as_bytes(), None)
                .await?
                .ciphertext;
        }
        assert_eq!(code(bob.decrypt(&k, &ciphertext, None).await), "forbidden");
        admin
            .grant(&grant(
                &k,
                WireGrantee::Principal("bob".into()),
                &[Operation::Decrypt],
            ))
            .await?;
        assert_eq!(bob.decrypt(&k, &ciphertext, None).await?.plaintext.0, b"record 2");
        admin.rotate(&k).await?;
        let tk = TransportSecret::generate();
        let n = workload.nonce().await?;
        let quote = Quote::sign(
            &attest,
            "tee-1",
            Bytes32(n.nonce.0.as_slice().try_into()?),
            Bytes32(measurement),
            tk.public(),
        );
        let m = workload
            .get_material(
                &GetMaterialArgs {
                    key: k.clone(),
                    version: None,
                    share: None,
                    transport_key: None,
                },
                &CallOptions {
                    request_id: None,
                    quote: Some(quote),
                },
            )
            .await?;
        assert_eq!(m.version, 2);
        admin
            .change_state("suspend", &k, Some("audit test"))
            .await?;
        // A flood of refusals by mallory, on another key.
        let other = admin.create(&aes("other", false)).await?.key;
        let flood = futures::future::join_all(
            (0..50).map(|_| mallory.encrypt(&other, b"let me in", None)),
        )
        .await;
        for r in flood {
            assert_eq!(code(r), "forbidden");
        }
        // Wait (bounded) until the aggregated refusals are recorded.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = verified(&l).await?;
            let counted: u64 = events
                .values()
                .filter_map(|v| match &v.event().body {
                    EventBody::RequestRefused(r) if v.event().actor.principal == "mallory" => {
                        Some(u64::from(r.count))
                    }
                    _ => None,
                })
                .sum();
            if counted == 50 {
                break;
            }
            ensure!(
                counted < 50 && Instant::now() < deadline,
                "mallory's refusals counted {counted}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // ---- another tenant sees nothing (checked before it leaves refusals of its own) ----
        let none = gail.audit_refusals(&AuditRefusalsArgs::default()).await?;
        ensure!(none.records.is_empty() && none.next.is_none(), "{none:?}");
        for who in ["alice", "mallory", "ann"] {
            let p = gail
                .audit_principal(&AuditPrincipalArgs {
                    principal: who.into(),
                    ..Default::default()
                })
                .await?;
            ensure!(p.records.is_empty(), "globex sees {who}: {p:?}");
        }
        let p = gail
            .audit_platform(&AuditPlatformArgs {
                platform: "tee-1".into(),
                ..Default::default()
            })
            .await?;
        ensure!(p.records.is_empty(), "globex sees tee-1: {p:?}");
        assert_eq!(
            code(gail.audit_key(&key_args(&k, None, None)).await),
            "key-not-found"
        );
        assert_eq!(
            code(gail.audit_key(&key_args("k-no-such-key", None, None)).await),
            "key-not-found"
        );

        // ---- key history -------------------------------------------------------------------
        let history = auditor.audit_key(&key_args(&k, Some(1000), None)).await?;
        ensure!(history.next.is_none(), "one page: {:?}", history.next);
        let enc = Some(Operation::Encrypt);
        let expected: Vec<(String, Option<Operation>, String)> = [
            ("KeyCreated", Some(Operation::Create), "ann"),
            ("GrantAdded", Some(Operation::Grant), "ann"),
            ("GrantAdded", Some(Operation::Grant), "ann"),
            ("KeysUsed", enc, "alice"),
            ("KeysUsed", enc, "alice"),
            ("KeysUsed", enc, "alice"),
            ("RequestRefused", Some(Operation::Decrypt), "bob"),
            ("GrantAdded", Some(Operation::Grant), "ann"),
            ("KeysUsed", Some(Operation::Decrypt), "bob"),
            ("KeyRotated", Some(Operation::Rotate), "ann"),
            ("MaterialAccessed", Some(Operation::GetMaterial), "workload"),
            ("KeyStateChanged", Some(Operation::Suspend), "ann"),
        ]
        .into_iter()
        .map(|(e, o, p)| (e.to_owned(), o, p.to_owned()))
        .collect();
        let got: Vec<_> = history.records.iter().map(shape).collect();
        assert_eq!(got, expected, "key history");
        let refused = &history.records[6];
        assert_eq!(refused.refusal_code.as_deref(), Some("forbidden"));
        assert_eq!(refused.refusal_count, Some(1));
        let accessed = &history.records[10];
        assert_eq!(accessed.platform.as_deref(), Some("tee-1"));
        assert_eq!(accessed.version, Some(2));
        assert_eq!(history.records[9].version, Some(2));
        for r in &history.records {
            assert_eq!(r.key.as_deref(), Some(k.as_str()));
            assert_eq!(r.tenant.as_deref(), Some("acme"));
        }

        // Paging, two at a time: every record exactly once, in order. Each page is itself a
        // describe of the key, so the history grows by one per page; the walk still ends, and a
        // full read afterwards is the walk plus the last page's own use.
        let mut paged: Vec<AuditRecordWire> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let p = auditor.audit_key(&key_args(&k, Some(2), after.take())).await?;
            pages += 1;
            ensure!(p.records.len() <= 2, "page of {}", p.records.len());
            ensure!(pages <= 100, "paging does not end");
            paged.extend(p.records);
            match p.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        check_order("paged key history", &paged)?;
        ensure!(
            paged.len() > history.records.len(),
            "paged {} records",
            paged.len()
        );
        assert_eq!(&paged[..history.records.len()], &history.records[..]);
        for r in &paged[history.records.len()..] {
            assert_eq!(
                shape(r),
                (
                    "KeysUsed".to_owned(),
                    Some(Operation::Describe),
                    "audrey".to_owned()
                ),
                "only the auditor's own reads follow"
            );
        }
        let full = auditor.audit_key(&key_args(&k, Some(1000), None)).await?;
        assert_eq!(full.records.len(), paged.len() + 1);
        assert_eq!(&full.records[..paged.len()], &paged[..]);
        assert_eq!(
            shape(full.records.last().context("last")?).1,
            Some(Operation::Describe)
        );

        // A time range: exactly the records of the full history inside it.
        let (from, to) = (history.records[9].time_ms, history.records[11].time_ms + 1);
        let ranged = auditor
            .audit_key(&AuditKeyArgs {
                from_ms: Some(from),
                to_ms: Some(to),
                limit: Some(1000),
                ..key_args(&k, None, None)
            })
            .await?;
        let want: Vec<_> = full
            .records
            .iter()
            .filter(|r| r.time_ms >= from && r.time_ms < to)
            .cloned()
            .collect();
        ensure!(
            want.len() >= 3
                && ranged.records.len() >= want.len()
                && ranged.records[..want.len()] == want[..],
            "range [{from}, {to}): {:?} vs {want:?}",
            ranged.records
        );
        for r in &ranged.records[want.len()..] {
            // Only a read made after `full` can still fall into the range's last millisecond.
            assert_eq!(shape(r).1, Some(Operation::Describe));
        }
        // Bad selections.
        for bad in [
            AuditKeyArgs {
                limit: Some(0),
                ..key_args(&k, None, None)
            },
            AuditKeyArgs {
                limit: Some(1001),
                ..key_args(&k, None, None)
            },
            key_args(&k, None, Some("12".into())),
            AuditKeyArgs {
                from_ms: Some(10),
                to_ms: Some(10),
                ..key_args(&k, None, None)
            },
        ] {
            assert_eq!(code(auditor.audit_key(&bad).await), "invalid-argument", "{bad:?}");
        }

        // ---- principal, platform, refusals ---------------------------------------------------
        // The tenant-wide views reach no key and record nothing (once pending refusal counts
        // are flushed, the stream stands still while they are read).
        tokio::time::sleep(Duration::from_millis(600)).await;
        let still = l.conn.last_seq().await?;
        let alice_activity = auditor
            .audit_principal(&AuditPrincipalArgs {
                principal: "alice".into(),
                ..Default::default()
            })
            .await?;
        let encrypts: Vec<_> = alice_activity
            .records
            .iter()
            .filter(|r| r.operation == Some(Operation::Encrypt))
            .collect();
        assert_eq!(encrypts.len(), 3, "{alice_activity:?}");
        assert_eq!(alice_activity.records.len(), 3, "alice did nothing else");
        for r in &alice_activity.records {
            assert_eq!(r.key.as_deref(), Some(k.as_str()));
            assert_eq!(r.principal, "alice");
        }

        let tee = auditor
            .audit_platform(&AuditPlatformArgs {
                platform: "tee-1".into(),
                ..Default::default()
            })
            .await?;
        let events: Vec<&str> = tee.records.iter().map(|r| r.event.as_str()).collect();
        assert_eq!(events, ["PlatformAttested", "MaterialAccessed"], "{tee:?}");
        assert!(tee.records.iter().all(|r| r.principal == "workload"
            && r.platform.as_deref() == Some("tee-1")));
        assert_eq!(tee.records[1].operation, Some(Operation::GetMaterial));
        assert_eq!(tee.records[1].key.as_deref(), Some(k.as_str()));

        ensure!(
            l.conn.last_seq().await? == still,
            "a tenant-wide view appended an event"
        );

        // A key-user may read a key's history but not the tenant-wide views; that refusal is
        // recorded like any other.
        kurt.audit_key(&key_args(&k, Some(1), None)).await?;
        assert_eq!(
            code(
                kurt.audit_principal(&AuditPrincipalArgs {
                    principal: "alice".into(),
                    ..Default::default()
                })
                .await
            ),
            "forbidden"
        );
        assert_eq!(
            code(kurt.audit_refusals(&AuditRefusalsArgs::default()).await),
            "forbidden"
        );
        assert_eq!(
            code(alice.audit_refusals(&AuditRefusalsArgs::default()).await),
            "forbidden"
        );

        let refusals = all_refusals(&auditor).await?;
        check_order("refusals", &refusals)?;
        let total: u64 = refusals
            .iter()
            .map(|r| u64::from(r.refusal_count.unwrap_or(0)))
            .sum();
        ensure!(total >= 51, "refusals counted {total}: {refusals:?}");
        let mallory_total: u64 = refusals
            .iter()
            .filter(|r| r.principal == "mallory")
            .inspect(|r| {
                assert_eq!(r.refusal_code.as_deref(), Some("forbidden"));
                assert_eq!(r.operation, Some(Operation::Encrypt));
            })
            .map(|r| u64::from(r.refusal_count.unwrap_or(0)))
            .sum();
        assert_eq!(mallory_total, 50);
        ensure!(
            refusals.iter().any(|r| r.principal == "kurt"
                && r.refusal_code.as_deref() == Some("forbidden")
                && r.operation == Some(Operation::List)),
            "kurt's refusal is recorded"
        );
        for r in &refusals {
            assert_eq!(r.tenant.as_deref(), Some("acme"), "{r:?}");
        }
        // Globex sees exactly its own refusals now, none of acme's.
        let theirs = all_refusals(&gail).await?;
        ensure!(
            !theirs.is_empty()
                && theirs.iter().all(|r| r.tenant.as_deref() == Some("globex")
                    && r.principal == "gail"
                    && r.refusal_code.as_deref() == Some("key-not-found")),
            "{theirs:?}"
        );

        // ---- every record is in the verified ledger ---------------------------------------
        let events = verified(&l).await?;
        for (what, records) in [
            ("key history", &full.records),
            ("paged key history", &paged),
            ("ranged key history", &ranged.records),
            ("alice", &alice_activity.records),
            ("tee-1", &tee.records),
            ("refusals", &refusals),
            ("globex refusals", &theirs),
        ] {
            check_against_ledger(what, records, &events)?;
        }
        // The tenant-wide views recorded nothing: no event by audrey but her key reads.
        for v in events.values() {
            let e = v.event();
            if e.actor.principal == "audrey" {
                ensure!(
                    matches!(&e.body, EventBody::KeysUsed(u) if u.uses.iter().all(|x| x.operation == Operation::Describe)),
                    "unexpected event by the auditor: {}",
                    e.body.tag()
                );
            }
        }

        // ---- through the binary --------------------------------------------------------------
        let before = auditor.audit_key(&key_args(&k, Some(1000), None)).await?;
        let url2 = url.clone();
        let (bin2, tok, key) = (bin.clone(), audrey_token.clone(), k.clone());
        let out = tokio::task::spawn_blocking(move || {
            run(&mut command(
                &bin2,
                &url2,
                &["--json", "activity", "key", &key, "--all", "--limit", "2"],
                &[("KEYLEDGER_TOKEN", tok.as_str())],
            ))
        })
        .await??
        .ok("activity key --json --all")?;
        let cli_page: AuditPage = serde_json::from_value(out.json()?)?;
        ensure!(cli_page.next.is_none(), "{:?}", cli_page.next);
        // The walk covers the history as it stood at its first page: everything `before` saw,
        // plus `before`'s own read.
        assert_eq!(cli_page.records.len(), before.records.len() + 1);
        assert_eq!(&cli_page.records[..before.records.len()], &before.records[..]);
        check_against_ledger("cli", &cli_page.records, &verified(&l).await?)?;
        // The table, and a refusal through the binary (exit 1, code on stderr).
        let (bin3, url3, tok3, key3) = (bin.clone(), url.clone(), audrey_token.clone(), k.clone());
        let table = tokio::task::spawn_blocking(move || {
            run(&mut command(
                &bin3,
                &url3,
                &["activity", "key", &key3, "--limit", "3", "--token", &tok3],
                &[],
            ))
        })
        .await??
        .ok("activity key")?;
        let lines: Vec<&str> = table.stdout.lines().collect();
        ensure!(lines.len() == 4, "header and 3 rows: {}", table.stdout);
        ensure!(
            lines[0].contains("SEQ") && lines[1].contains("KeyCreated") && lines[1].contains("ann"),
            "{}",
            table.stdout
        );
        ensure!(table.stderr.contains("--after"), "{}", table.stderr);
        let kurt_token = l.token("kurt", "acme", &["key-user"]);
        let (bin4, url4) = (bin.clone(), url.clone());
        let refused = tokio::task::spawn_blocking(move || {
            run(&mut command(
                &bin4,
                &url4,
                &["activity", "refusals", "--since", "1h"],
                &[("KEYLEDGER_TOKEN", kurt_token.as_str())],
            ))
        })
        .await??;
        ensure!(
            refused.code == Some(1) && refused.stderr.contains("forbidden"),
            "exit {:?}: {}",
            refused.code,
            refused.stderr
        );

        svc.stop().await;
        let (report, _) = l.verify().await?;
        ensure!(report.is_clean(), "{report:?}");
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Running the binary (as in tests/cli_service.rs)
// ---------------------------------------------------------------------------------------------

/// A `keyledger` command against `url` and [`LEDGER`], with a clean environment for the
/// variables it reads.
fn command(bin: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--nats", url, "--ledger", LEDGER])
        .args(args)
        .env_remove("KEYLEDGER_NATS")
        .env_remove("KEYLEDGER_LEDGER")
        .env_remove("KEYLEDGER_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}
