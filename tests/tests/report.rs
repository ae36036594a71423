//! The compliance report end to end, against a real nats-server: a scripted scenario through
//! the service with known figures (inventory by type, state and tenant; a key overdue for
//! rotation; accesses by two principals and one attested platform; a refusal flood; a
//! compromised key used afterwards; a destroyed key; issuer and platform changes), then
//! - the report built in-process over the whole range: the exact figures, every cited sequence
//!   is a verified event of the matching type (and the figures agree with a recount from the raw
//!   events), the CSV parses (five columns per row) and the JSON round-trips;
//! - `keyledger report` (the binary) writes the same figures as JSON, CSV and HTML and exits 0;
//!   the HTML is self-contained, escapes caller-controlled text, and headless Chromium (Debian's,
//!   installed by `scripts/install-chromium.sh`) renders it into a PNG screenshot, copied to
//!   `/tmp/keyledger-report.png`;
//! - after a stray message lands in the stream, the report is still written, names the foreign
//!   message by sequence, and the binary exits 1.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use ed25519_dalek::SigningKey;

use api::client::{CallOptions, ClientError};
use api::report_render;
use api::wire::*;
use keyledger_tests::binary::{keyledger_bin, run_for as run, Run};
use keyledger_tests::fixture::{token_with, Ledger};
use keyledger_tests::harness::NatsServer;
use ledger::event::{
    EventBody, IssuerRevoked, IssuerTrusted, KeyType, Operation, PlatformEnrolled,
};
use ledger::nats::StreamSettings;
use ledger::quote::Quote;
use ledger::transport::TransportSecret;
use ledger::{Bytes32, ChainState, LedgerId, VerifiedEvent};
use projector::report::{ChainStatus, ComplianceReport, Evidence};
use projector::token::IssuerKey;

const LEDGER: &str = "compliance";
/// A principal name an attacker chose (tokens may carry any `sub`).
const EVIL: &str = "<img src=x onerror=alert(1)>\"'&evil";
const SCREENSHOT_COPY: &str = "/tmp/keyledger-report.png";
/// The rendered page, copied next to the screenshot for a human to open.
const HTML_COPY: &str = "/tmp/keyledger-report.html";

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

fn create(name: &str, key_type: KeyType, rotation_period_s: Option<u64>) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        key_type,
        exportable: false,
        rotation_period_s,
        split: None,
        labels: BTreeMap::new(),
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

/// Replays the ledger (root pinned) and returns its events with the report's chain status.
async fn replay(l: &Ledger) -> Result<(Vec<VerifiedEvent>, ChainStatus)> {
    let mut state = ChainState::new(LedgerId::new(&l.id)?, Some(l.secrets.root_public()));
    let mut events = Vec::new();
    let report = ledger::nats::reader::replay_each(
        &l.conn,
        &mut state,
        |_, _| {},
        |v| events.push(v.clone()),
    )
    .await?;
    Ok((
        events,
        ChainStatus::from_replay(&state, &report, true, None),
    ))
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

/// Key ids of the scenario.
struct Keys {
    pay: String,
    rot: String,
    old: String,
    sig: String,
    mac: String,
    globex: String,
}

/// Runs the scenario; returns the key ids.
async fn scenario(l: &Ledger, url: &str) -> Result<Keys> {
    let admin = l
        .client(url, &l.token("ann", "acme", &["tenant-admin"]))
        .await?;
    let gus = l
        .client(url, &l.token("gus", "globex", &["tenant-admin"]))
        .await?;
    let alice = l.client(url, &l.token("alice", "acme", &[])).await?;
    let bob = l.client(url, &l.token("bob", "acme", &[])).await?;
    let mallory = l.client(url, &l.token("mallory", "acme", &[])).await?;
    let evil = l.client(url, &l.token(EVIL, "acme", &[])).await?;
    let workload = l.client(url, &l.token("workload", "acme", &[])).await?;

    // Issuer trusted and revoked; a platform enrolled.
    let idp2 = IssuerKey::generate();
    l.record(IssuerTrusted {
        issuer: "idp-2".into(),
        public_key: Bytes32(idp2.public_key()),
        tenants: vec![ledger::TenantId::new("acme")?],
    })
    .await?;
    let c2 = l
        .client(
            url,
            &token_with(&idp2, "idp-2", "ann2", "acme", &["auditor"]),
        )
        .await?;
    c2.list(&ListArgs::default()).await?;
    l.record(IssuerRevoked {
        issuer: "idp-2".into(),
        reason: "rotated out".into(),
    })
    .await?;
    let attest = SigningKey::from_bytes(&[77; 32]);
    let measurement = [0x5au8; 32];
    l.record(PlatformEnrolled {
        platform: "tee-1".into(),
        attestation_key: Bytes32(attest.verifying_key().to_bytes()),
        group: "confidential".into(),
        measurements: vec![Bytes32(measurement)],
    })
    .await?;

    // Keys: 3 AES-256 + 1 Ed25519 + 1 HMAC in acme, 1 AES-256 in globex.
    let day = Some(86_400);
    let pay = admin
        .create(&create("payments", KeyType::Aes256Gcm, day))
        .await?
        .key;
    let rot = admin
        .create(&create("short-rotation", KeyType::Aes256Gcm, Some(1)))
        .await?
        .key;
    let rot_created = Instant::now();
    let old = admin
        .create(&create("legacy", KeyType::Aes256Gcm, day))
        .await?
        .key;
    let sig = admin
        .create(&create("signing", KeyType::Ed25519, day))
        .await?
        .key;
    let mac = admin
        .create(&create("tokens", KeyType::HmacSha256, None))
        .await?
        .key;
    let globex = gus
        .create(&create("globex-data", KeyType::Aes256Gcm, day))
        .await?
        .key;

    // Grants and uses by two principals, and one by an attested platform.
    let p = |s: &str| WireGrantee::Principal(s.into());
    admin
        .grant(&grant(
            &pay,
            p("alice"),
            &[Operation::Encrypt, Operation::Decrypt],
        ))
        .await?;
    admin
        .grant(&grant(&pay, p("bob"), &[Operation::Decrypt]))
        .await?;
    admin
        .grant(&grant(&sig, p("alice"), &[Operation::Sign]))
        .await?;
    admin
        .grant(&grant(&mac, p("bob"), &[Operation::Mac]))
        .await?;
    admin
        .grant(&GrantArgs {
            key: pay.clone(),
            grantee: WireGrantee::PlatformGroup("confidential".into()),
            operations: vec![Operation::Encrypt],
            conditions: WireConditions {
                require_platform: true,
                measurement: Some(B64(measurement.to_vec())),
                ..WireConditions::default()
            },
            grant_id: Some("tee-only".into()),
        })
        .await?;
    let c1 = alice.encrypt(&pay, b"card 4111", None).await?;
    bob.decrypt(&pay, &c1.ciphertext, None).await?;
    alice.sign(&sig, b"release 1.0").await?;
    bob.mac(&mac, b"session").await?;
    let tk = TransportSecret::generate();
    let n = workload.nonce().await?;
    let quote = Quote::sign(
        &attest,
        "tee-1",
        Bytes32(n.nonce.0.as_slice().try_into()?),
        Bytes32(measurement),
        tk.public(),
    );
    let attested: CiphertextResult = workload
        .call(
            "encrypt",
            &EncryptArgs {
                key: pay.clone(),
                plaintext: B64(b"model weights".to_vec()),
                aad: None,
            },
            &CallOptions {
                request_id: None,
                quote: Some(quote),
            },
        )
        .await?
        .result;
    ensure!(attested.version == 1);
    // A rotation: the signing key's latest version is 2 (and not overdue).
    ensure!(admin.rotate(&sig).await?.latest_version == 2);

    // A refusal flood by mallory (no grant), and a refusal by a principal named like markup.
    for _ in 0..20 {
        ensure!(code(mallory.decrypt(&pay, &c1.ciphertext, None).await) == "forbidden");
    }
    let evil_code = code(evil.describe("k-no-such-key").await);
    ensure!(
        evil_code != "ok" && !evil_code.starts_with("client error"),
        "{evil_code}"
    );

    // Compromise, then a use after it (compromised keys still decrypt).
    admin
        .compromise(&CompromiseArgs {
            key: pay.clone(),
            reason: "leaked <b>in</b> a log".into(),
            compromised_at_ms: None,
        })
        .await?;
    ensure!(bob.decrypt(&pay, &c1.ciphertext, None).await?.plaintext.0 == b"card 4111");

    // Destruction after the (test) minimum wait of one second.
    admin.schedule_destroy(&old, Some(1)).await?;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    admin.destroy(&old, None).await?;

    // The short-rotation key is overdue 1.5 s after its creation.
    let since = rot_created.elapsed();
    if since < Duration::from_millis(1_500) {
        tokio::time::sleep(Duration::from_millis(1_500) - since).await;
    }
    // Let the refusal aggregation interval pass so counted refusals are recorded.
    tokio::time::sleep(Duration::from_millis(600)).await;
    Ok(Keys {
        pay,
        rot,
        old,
        sig,
        mac,
        globex,
    })
}

// ---------------------------------------------------------------------------------------------
// Checking a report
// ---------------------------------------------------------------------------------------------

fn names<'a>(it: impl Iterator<Item = (&'a str, u64)>) -> BTreeMap<String, u64> {
    it.map(|(n, c)| (n.to_owned(), c)).collect()
}

/// The exact figures of the scenario.
fn check_figures(r: &ComplianceReport, k: &Keys, events: &[VerifiedEvent]) -> Result<()> {
    let inv = &r.inventory;
    ensure!(inv.total == 6, "keys: {}", inv.total);
    let by = |g: &[projector::report::InventoryGroup]| {
        names(g.iter().map(|g| (g.name.as_str(), g.count)))
    };
    assert_eq!(
        by(&inv.by_type),
        BTreeMap::from([
            ("aes256-gcm".to_owned(), 4),
            ("ed25519".to_owned(), 1),
            ("hmac-sha256".to_owned(), 1)
        ])
    );
    assert_eq!(
        by(&inv.by_state),
        BTreeMap::from([
            ("active".to_owned(), 4),
            ("compromised".to_owned(), 1),
            ("destroyed".to_owned(), 1)
        ])
    );
    assert_eq!(
        by(&inv.by_tenant),
        BTreeMap::from([("acme".to_owned(), 5), ("globex".to_owned(), 1)])
    );
    let group_keys = |g: &[projector::report::InventoryGroup], name: &str| -> Vec<String> {
        g.iter()
            .find(|g| g.name == name)
            .map(|g| g.keys.iter().map(|k| k.key.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        group_keys(&inv.by_state, "compromised"),
        vec![k.pay.clone()]
    );
    assert_eq!(group_keys(&inv.by_state, "destroyed"), vec![k.old.clone()]);
    assert_eq!(group_keys(&inv.by_tenant, "globex"), vec![k.globex.clone()]);
    let mut active = group_keys(&inv.by_state, "active");
    active.sort();
    let mut want = vec![
        k.rot.clone(),
        k.sig.clone(),
        k.mac.clone(),
        k.globex.clone(),
    ];
    want.sort();
    assert_eq!(active, want);
    let sig_row = inv
        .keys
        .iter()
        .find(|x| x.key == k.sig)
        .context("signing key row")?;
    ensure!(sig_row.latest_version == 2 && sig_row.key_type == "ed25519");

    // Rotation: exactly the short-rotation key, due one second after its creation.
    ensure!(
        r.rotation_overdue.len() == 1,
        "overdue: {:?}",
        r.rotation_overdue
    );
    let o = &r.rotation_overdue[0];
    ensure!(o.key == k.rot && o.latest_version == 1 && o.rotation_period_s == 1);
    ensure!(o.due_ms == o.version_created_ms + 1000 && o.due_ms < r.range.to_ms);
    ensure!(o.overdue_ms == r.range.to_ms - o.due_ms);

    // Access by principal: uses by two principals, lifecycle by the admins, one attested use.
    let ops = |name: &str| -> BTreeMap<String, u64> {
        r.access
            .by_principal
            .iter()
            .find(|a| a.name == name)
            .map(|a| names(a.operations.iter().map(|o| (o.name.as_str(), o.count))))
            .unwrap_or_default()
    };
    assert_eq!(
        ops("alice"),
        BTreeMap::from([("encrypt".to_owned(), 1), ("sign".to_owned(), 1)])
    );
    assert_eq!(
        ops("bob"),
        BTreeMap::from([("decrypt".to_owned(), 2), ("mac".to_owned(), 1)])
    );
    assert_eq!(ops("workload"), BTreeMap::from([("encrypt".to_owned(), 1)]));
    assert_eq!(ops("gus"), BTreeMap::from([("create".to_owned(), 1)]));
    let ann = ops("ann");
    for (op, n) in [
        ("create", 5),
        ("grant", 5),
        ("rotate", 1),
        ("compromise", 1),
        ("schedule-destroy", 1),
        ("destroy", 1),
    ] {
        ensure!(ann.get(op) == Some(&n), "ann {op}: {ann:?}");
    }
    ensure!(ops("mallory").is_empty(), "refusals are not accesses");
    // By platform: the one attested encryption.
    ensure!(
        r.access.by_platform.len() == 1,
        "{:?}",
        r.access.by_platform
    );
    let tee = &r.access.by_platform[0];
    ensure!(tee.name == "tee-1" && tee.total == 1 && tee.operations[0].name == "encrypt");
    ensure!(r.access.total == r.access.unattested + 1);

    // Refusals: mallory's flood (aggregated into fewer events) and the markup principal.
    let mallory = r
        .refusals
        .by_principal
        .iter()
        .find(|g| g.name == "mallory")
        .context("mallory's refusals")?;
    ensure!(
        mallory.count >= 20,
        "mallory refused {} times",
        mallory.count
    );
    ensure!(
        mallory.count == 20,
        "exactly the 20 refusals: {}",
        mallory.count
    );
    ensure!(
        mallory.breakdown.len() == 1 && mallory.breakdown[0].name == "forbidden",
        "{:?}",
        mallory.breakdown
    );
    ensure!(mallory.events <= 20 && mallory.evidence.total == mallory.events);
    let forbidden = r
        .refusals
        .by_code
        .iter()
        .find(|g| g.name == "forbidden")
        .context("forbidden refusals")?;
    ensure!(forbidden.count >= 20);
    ensure!(r.refusals.by_principal.iter().any(|g| g.name == EVIL));
    // Recount from the raw events.
    let mut raw: HashMap<String, u64> = HashMap::new();
    for v in events {
        if let EventBody::RequestRefused(x) = &v.event().body {
            *raw.entry(v.event().actor.principal.clone()).or_default() += u64::from(x.count);
        }
    }
    for g in &r.refusals.by_principal {
        ensure!(raw.get(&g.name) == Some(&g.count), "{}: {raw:?}", g.name);
    }
    ensure!(r.refusals.total == raw.values().sum::<u64>());

    // Compromised, use after compromise, destroyed.
    ensure!(r.compromised.len() == 1 && r.compromised[0].key == k.pay);
    let c = &r.compromised[0];
    ensure!(c.state == "compromised" && c.reason == "leaked <b>in</b> a log" && c.in_range);
    ensure!(
        r.use_after_compromise.len() == 1,
        "use after compromise: {:?}",
        r.use_after_compromise
    );
    let u = &r.use_after_compromise[0];
    ensure!(
        (u.key.as_str(), u.operation.as_str(), u.principal.as_str())
            == (k.pay.as_str(), "decrypt", "bob"),
        "{u:?}"
    );
    ensure!(u.time_ms >= c.compromised_at_ms && u.compromise_seq == c.seq && u.seq > c.seq);
    ensure!(r.destroyed.len() == 1 && r.destroyed[0].key == k.old);
    ensure!(r.destroyed[0].versions == vec![1] && r.destroyed[0].state == "destroyed");

    // Signer, issuer and platform changes.
    let changes: Vec<(&str, &str)> = r
        .trust_changes
        .iter()
        .map(|t| (t.event.as_str(), t.subject.as_str()))
        .collect();
    let want = [
        ("IssuerTrusted", keyledger_tests::fixture::ISSUER),
        ("IssuerTrusted", "idp-2"),
        ("IssuerRevoked", "idp-2"),
        ("PlatformEnrolled", "tee-1"),
    ];
    for w in want {
        ensure!(changes.contains(&w), "{w:?} not in {changes:?}");
    }
    ensure!(
        changes.iter().filter(|c| c.0 == "SignerEnrolled").count() == 1,
        "the genesis writer enrolment: {changes:?}"
    );
    ensure!(changes.len() == 5, "{changes:?}");

    // Chain and checkpoint.
    let ch = &r.chain;
    ensure!(ch.ok && ch.root_pinned && ch.foreign.is_empty() && ch.chain_break.is_none());
    ensure!(ch.events_verified == events.len() as u64);
    ensure!(ch.head.as_ref().map(|h| h.seq) == events.last().map(|v| v.seq()));
    ensure!(r.checkpoint.is_none(), "no checkpoint known to the report");
    ensure!(r.anomalies.is_empty(), "{:?}", r.anomalies);
    for (metric, value) in [
        ("keys", 6),
        ("rotation_overdue", 1),
        ("compromised", 1),
        ("use_after_compromise", 1),
        ("destroyed", 1),
        ("trust_changes", 5),
        ("foreign_messages", 0),
        ("chain_breaks", 0),
    ] {
        let f = r
            .figure(metric)
            .with_context(|| format!("figure {metric}"))?;
        ensure!(f.value == value, "{metric}: {} != {value}", f.value);
    }
    ensure!(r.figure("refusals").map(|f| f.value) == Some(r.refusals.total));
    Ok(())
}

/// Checks one citation: what cites it, the sequence, the event types that may support it.
type Cite<'a> = dyn FnMut(&str, u64, &[&str]) -> Result<()> + 'a;

/// Every sequence the report cites is a verified event of a type that can support the figure.
fn check_citations(r: &ComplianceReport, events: &[VerifiedEvent]) -> Result<usize> {
    let by_seq: HashMap<u64, &VerifiedEvent> = events.iter().map(|v| (v.seq(), v)).collect();
    let mut checked = 0usize;
    let mut cite = |what: &str, seq: u64, types: &[&str]| -> Result<()> {
        let v = by_seq
            .get(&seq)
            .with_context(|| format!("{what}: seq {seq} is not a verified event"))?;
        let tag = v.event().body.tag();
        ensure!(
            types.is_empty() || types.contains(&tag),
            "{what}: seq {seq} is {tag}, expected one of {types:?}"
        );
        checked += 1;
        Ok(())
    };
    let created = &["KeyCreated", "KeyImported"][..];
    let state_setting = &[
        "KeyCreated",
        "KeyImported",
        "KeyStateChanged",
        "KeyCompromised",
        "KeyDestroyed",
    ][..];
    let versions = &["KeyCreated", "KeyImported", "KeyRotated"][..];
    let trust = &[
        "SignerEnrolled",
        "SignerRetired",
        "IssuerTrusted",
        "IssuerRevoked",
        "PlatformEnrolled",
        "PlatformRevoked",
        "MasterKeyRotated",
    ][..];
    let op_types = |op: &str| -> &'static [&'static str] {
        match op {
            "create" => &["KeyCreated"],
            "import" => &["KeyImported"],
            "rotate" => &["KeyRotated"],
            "activate" | "suspend" | "deactivate" => &["KeyStateChanged"],
            "compromise" => &["KeyCompromised"],
            "set-versions" => &["KeyVersionsBounded"],
            "schedule-destroy" => &["KeyDestructionScheduled"],
            "cancel-destroy" => &["KeyDestructionCancelled"],
            "destroy" => &["KeyDestroyed"],
            "grant" => &["GrantAdded"],
            "revoke" => &["GrantRevoked"],
            "get-material" => &["MaterialAccessed", "KeysUsed"],
            _ => &["KeysUsed"],
        }
    };
    let all = |what: &str, e: &Evidence, types: &[&str], cite: &mut Cite| -> Result<()> {
        ensure!(e.total >= e.seqs.len() as u64, "{what}: total below listed");
        ensure!(
            e.seqs.windows(2).all(|w| w[0] < w[1]),
            "{what}: seqs ascending and distinct"
        );
        for s in &e.seqs {
            cite(what, *s, types)?;
        }
        Ok(())
    };

    for f in &r.summary {
        let types: &[&str] = match f.metric.as_str() {
            "keys" => created,
            "rotation_overdue" => versions,
            "refusals" => &["RequestRefused"],
            "compromised" => &["KeyCompromised"],
            "use_after_compromise" => &["KeysUsed", "MaterialAccessed"],
            "destroyed" => &["KeyDestroyed"],
            "trust_changes" => trust,
            _ => &[],
        };
        all(
            &format!("summary {}", f.metric),
            &f.evidence,
            types,
            &mut cite,
        )?;
    }
    for t in &r.activity.by_type {
        all("activity", &t.evidence, &[t.name.as_str()], &mut cite)?;
    }
    let inv = &r.inventory;
    for (name, groups, types) in [
        ("by type", &inv.by_type, created),
        ("by state", &inv.by_state, state_setting),
        ("by tenant", &inv.by_tenant, created),
    ] {
        for g in groups {
            all(
                &format!("inventory {name} {}", g.name),
                &g.evidence,
                types,
                &mut cite,
            )?;
            ensure!(g.evidence.total == g.count, "one evidence event per key");
            for k in &g.keys {
                cite("inventory key created", k.created_seq, created)?;
                cite("inventory key state", k.state_seq, state_setting)?;
            }
        }
    }
    for k in &inv.keys {
        cite("key row created", k.created_seq, created)?;
        cite("key row state", k.state_seq, state_setting)?;
        cite("key row latest version", k.latest_version_seq, versions)?;
        let v = by_seq[&k.created_seq];
        ensure!(v.event().body.key().map(|x| x.as_str()) == Some(k.key.as_str()));
    }
    for o in &r.rotation_overdue {
        cite("overdue version", o.version_seq, versions)?;
        all("overdue", &o.evidence, versions, &mut cite)?;
        ensure!(by_seq[&o.version_seq].event().time_ms == o.version_created_ms);
    }
    for rows in [&r.access.by_principal, &r.access.by_platform] {
        for a in rows {
            all(&format!("access {}", a.name), &a.evidence, &[], &mut cite)?;
            for op in &a.operations {
                all(
                    &format!("access {} {}", a.name, op.name),
                    &op.evidence,
                    op_types(&op.name),
                    &mut cite,
                )?;
            }
        }
    }
    for groups in [&r.refusals.by_code, &r.refusals.by_principal] {
        for g in groups {
            all(
                &format!("refusals {}", g.name),
                &g.evidence,
                &["RequestRefused"],
                &mut cite,
            )?;
            for b in &g.breakdown {
                all(
                    "refusal breakdown",
                    &b.evidence,
                    &["RequestRefused"],
                    &mut cite,
                )?;
            }
        }
    }
    for c in &r.compromised {
        cite("compromised", c.seq, &["KeyCompromised"])?;
        match &by_seq[&c.seq].event().body {
            EventBody::KeyCompromised(e) => {
                ensure!(e.key.as_str() == c.key && e.compromised_at_ms == c.compromised_at_ms)
            }
            _ => bail!("not a compromise"),
        }
    }
    for u in &r.use_after_compromise {
        cite(
            "use after compromise",
            u.seq,
            &["KeysUsed", "MaterialAccessed"],
        )?;
        cite(
            "use after compromise: compromise",
            u.compromise_seq,
            &["KeyCompromised"],
        )?;
        match &by_seq[&u.seq].event().body {
            EventBody::KeysUsed(e) => {
                let x = e.uses.get(u.sub as usize).context("use index")?;
                ensure!(
                    x.key.as_str() == u.key
                        && x.principal == u.principal
                        && x.operation.to_string() == u.operation
                );
            }
            EventBody::MaterialAccessed(e) => ensure!(e.key.as_str() == u.key),
            _ => bail!("not a use"),
        }
    }
    for d in &r.destroyed {
        cite("destroyed", d.seq, &["KeyDestroyed"])?;
        ensure!(by_seq[&d.seq].event().body.key().map(|x| x.as_str()) == Some(d.key.as_str()));
    }
    for t in &r.trust_changes {
        cite("trust change", t.seq, &[t.event.as_str()])?;
        ensure!(trust.contains(&t.event.as_str()));
    }
    if let Some(h) = &r.chain.head {
        cite("head", h.seq, &[])?;
    }
    Ok(checked)
}

/// Recounts uses per (principal, operation) from the raw events and compares with the report.
fn check_use_counts(r: &ComplianceReport, events: &[VerifiedEvent]) -> Result<()> {
    let mut raw: BTreeMap<(String, String), u64> = BTreeMap::new();
    for v in events {
        if let EventBody::KeysUsed(u) = &v.event().body {
            for x in &u.uses {
                *raw.entry((x.principal.clone(), x.operation.to_string()))
                    .or_default() += 1;
            }
        }
    }
    let mut reported: BTreeMap<(String, String), u64> = BTreeMap::new();
    for a in &r.access.by_principal {
        for o in &a.operations {
            if op_is_use(&o.name) {
                reported.insert((a.name.clone(), o.name.clone()), o.count);
            }
        }
    }
    ensure!(raw == reported, "uses: raw {raw:?} vs report {reported:?}");
    Ok(())
}

fn op_is_use(op: &str) -> bool {
    matches!(
        op,
        "encrypt"
            | "decrypt"
            | "rewrap"
            | "generate-data-key"
            | "sign"
            | "verify"
            | "mac"
            | "verify-mac"
    )
}

/// A minimal RFC 4180 parser: records of fields (quoted fields may hold commas, quotes and
/// line breaks).
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => {
                    quoted = false;
                    ensure!(
                        matches!(chars.peek(), None | Some(',') | Some('\r') | Some('\n')),
                        "text after a closing quote"
                    );
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            '"' => bail!("quote inside an unquoted field: {field:?}"),
            ',' => {
                row.push(std::mem::take(&mut field));
                at_start = true;
            }
            '\r' => {
                ensure!(chars.next() == Some('\n'), "CR without LF");
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                at_start = true;
            }
            '\n' => bail!("bare LF line end"),
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    ensure!(!quoted, "unterminated quoted field");
    ensure!(
        field.is_empty() && row.is_empty(),
        "last record not terminated"
    );
    Ok(rows)
}

fn check_csv(csv: &str, r: &ComplianceReport, k: &Keys) -> Result<()> {
    let rows = parse_csv(csv)?;
    ensure!(rows.len() > 50, "{} rows", rows.len());
    assert_eq!(
        rows[0],
        report_render::CSV_HEADER.map(String::from).to_vec()
    );
    for (i, row) in rows.iter().enumerate() {
        ensure!(row.len() == 5, "row {i} has {} columns: {row:?}", row.len());
        // The seqs column is numbers separated by spaces.
        ensure!(
            row[4]
                .split(' ')
                .filter(|s| !s.is_empty())
                .all(|s| s.parse::<u64>().is_ok())
                || i == 0,
            "row {i} seqs: {:?}",
            row[4]
        );
    }
    let find = |section: &str, item: &str, metric: &str| -> Option<&Vec<String>> {
        rows.iter()
            .find(|r| r[0] == section && r[1] == item && r[2] == metric)
    };
    let value = |section: &str, item: &str, metric: &str| -> Result<String> {
        Ok(find(section, item, metric)
            .with_context(|| format!("csv row {section}/{item}/{metric}"))?[3]
            .clone())
    };
    ensure!(value("inventory_by_type", "aes256-gcm", "keys")? == "4");
    ensure!(value("inventory_by_state", "compromised", "keys")? == "1");
    ensure!(value("inventory_by_tenant", "acme", "keys")? == "5");
    ensure!(value("inventory_key", &k.pay, "state")? == "compromised");
    ensure!(value("refusals_by_principal", "mallory", "refusals")? == "20");
    ensure!(value("refusals_by_principal", EVIL, "refusals")?.parse::<u64>()? >= 1);
    let overdue = find("rotation_overdue", &k.rot, "due_ms").context("overdue row")?;
    ensure!(overdue[3] == r.rotation_overdue[0].due_ms.to_string());
    let seqs: Vec<u64> = overdue[4]
        .split(' ')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    ensure!(seqs == r.rotation_overdue[0].evidence.seqs);
    let uac = find("use_after_compromise", &k.pay, "use").context("use after compromise row")?;
    ensure!(uac[3].starts_with("decrypt v1 by bob"), "{:?}", uac[3]);
    ensure!(uac[4] == r.use_after_compromise[0].seq.to_string());
    ensure!(value("compromised", &k.pay, "reason")? == "leaked <b>in</b> a log");
    ensure!(find("destroyed", &k.old, "state").is_some());
    ensure!(find("trust_changes", "idp-2", "IssuerRevoked").is_some());
    ensure!(find("trust_changes", "tee-1", "PlatformEnrolled").is_some());
    ensure!(value("chain", "", "ok")? == "true");
    Ok(())
}

fn check_html(html: &str, r: &ComplianceReport, k: &Keys) -> Result<()> {
    ensure!(html.starts_with("<!DOCTYPE html>"));
    ensure!(html.matches("<svg").count() >= 5, "charts");
    // Self-contained: nothing to fetch, nothing to run.
    for banned in [
        "<script", "http://", "https://", "<link", "<img", "<iframe", "url(", "@import",
    ] {
        ensure!(!html.contains(banned), "the HTML contains {banned:?}");
    }
    ensure!(
        html.contains("default-src 'none'"),
        "a CSP that forbids loading"
    );
    // Caller-controlled text is escaped.
    ensure!(!html.contains(EVIL));
    ensure!(html.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;evil"));
    ensure!(!html.contains("<b>in</b>") && html.contains("leaked &lt;b&gt;in&lt;/b&gt; a log"));
    for needle in [
        r.ledger.as_str(),
        k.rot.as_str(),
        k.pay.as_str(),
        k.old.as_str(),
        "CHAIN VERIFIED",
        "CHECKPOINT: unknown",
        "Keys by type",
        "Refusals by code",
        "Use after compromise",
        "mallory",
        "tee-1",
        "idp-2",
    ] {
        ensure!(html.contains(needle), "the HTML lacks {needle:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The binary and Chromium
// ---------------------------------------------------------------------------------------------

/// `keyledger report` against the scenario's ledger.
fn cli_report(
    bin: &Path,
    url: &str,
    root_key: &str,
    to_ms: u64,
    format: &str,
    out: &Path,
) -> Result<Run> {
    let mut cmd = Command::new(bin);
    cmd.args(["--nats", url, "--ledger", LEDGER, "report"])
        .args(["--from", "1970-01-01T00:00:00Z", "--to", &to_ms.to_string()])
        .args(["--format", format, "--root-key", root_key])
        .arg("--out")
        .arg(out)
        .env_remove("KEYLEDGER_NATS")
        .env_remove("KEYLEDGER_LEDGER")
        .env("RUST_LOG", "warn");
    run(&mut cmd, Duration::from_secs(120))
}

/// Installs Chromium with the project's script if missing; fails (never skips) when it cannot.
fn chromium() -> Result<PathBuf> {
    let script = keyledger_tests::harness::workspace_root().join("scripts/install-chromium.sh");
    let r = run(
        Command::new("bash").arg(&script),
        Duration::from_secs(1_200),
    )?;
    ensure!(
        r.code == Some(0),
        "Chromium is needed to render the HTML report and {} could not install it (exit {:?}):\n{}",
        script.display(),
        r.code,
        r.stderr
    );
    let bin = PathBuf::from(r.stdout.trim());
    ensure!(bin.is_file(), "install-chromium.sh printed {:?}", r.stdout);
    Ok(bin)
}

/// Renders `html` with headless Chromium into `png`.
fn screenshot(chromium: &Path, html: &Path, png: &Path, profile: &Path) -> Result<()> {
    let mut cmd = Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,2400",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", png.display()))
    .arg(format!("file://{}", html.display()));
    let r = run(&mut cmd, Duration::from_secs(120))?;
    ensure!(
        r.code == Some(0) && png.is_file(),
        "chromium exit {:?}, no screenshot at {}:\nstdout: {}\nstderr: {}",
        r.code,
        png.display(),
        r.stdout,
        r.stderr
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_report_end_to_end() -> Result<()> {
    // Chromium and the binary first (slow the first time), outside the NATS timeout.
    let chromium = tokio::task::spawn_blocking(chromium).await??;
    let bin = tokio::task::spawn_blocking(keyledger_bin).await??;
    let server = NatsServer::start()?;
    let url = server.url();
    let dir = tempfile::tempdir()?;
    within(240, async {
        let l = Ledger::init(&url, LEDGER, &StreamSettings::default()).await?;
        let svc = l
            .replica(&url, keyledger_tests::fixture::test_config())
            .await?;
        let keys = scenario(&l, &url).await?;
        svc.stop().await;

        // In-process, over the whole range.
        let (events, chain) = replay(&l).await?;
        let to_ms = ledger::sign::now_ms() + 1;
        let report = ComplianceReport::build((0, to_ms), &events, chain);
        check_figures(&report, &keys, &events)?;
        let cited = check_citations(&report, &events)?;
        ensure!(cited > 50, "only {cited} citations checked");
        check_use_counts(&report, &events)?;
        let json = report_render::to_json(&report)?;
        let back: ComplianceReport = serde_json::from_str(&json)?;
        ensure!(back == report, "the JSON round-trips");
        check_csv(&report_render::to_csv(&report), &report, &keys)?;
        check_html(&report_render::to_html(&report), &report, &keys)?;

        // A narrower range: nothing happens after `to`, the inventory is as of `to`.
        let first_key_ms = events
            .iter()
            .find(|v| matches!(v.event().body, EventBody::KeyCreated(_)))
            .map(|v| v.event().time_ms)
            .context("a key")?;
        let early = ComplianceReport::build((0, first_key_ms), &events, replay(&l).await?.1);
        ensure!(early.inventory.total == 0 && early.access.total == 0);
        ensure!(early.activity.events_after > 0 && early.refusals.total == 0);

        // The binary: JSON (same figures), CSV, HTML; exit 0 on a clean chain.
        let root = l.secrets.root_public().to_hex();
        let (bin2, url2, root2) = (bin.clone(), url.clone(), root.clone());
        let dir_path = dir.path().to_path_buf();
        let runs = tokio::task::spawn_blocking(move || -> Result<Vec<(String, Run, PathBuf)>> {
            let mut out = Vec::new();
            for format in ["json", "csv", "html"] {
                let path = dir_path.join(format!("report.{format}"));
                let r = cli_report(&bin2, &url2, &root2, to_ms, format, &path)?;
                out.push((format.to_owned(), r, path));
            }
            Ok(out)
        })
        .await??;
        let mut html_path = None;
        for (format, r, path) in &runs {
            ensure!(
                r.code == Some(0),
                "keyledger report --format {format}: exit {:?}\n{}\n{}",
                r.code,
                r.stdout,
                r.stderr
            );
            let text = std::fs::read_to_string(path)?;
            match format.as_str() {
                "json" => {
                    let cli: ComplianceReport = serde_json::from_str(&text)?;
                    ensure!(cli.generated_ms.is_some());
                    ensure!(cli.inventory == report.inventory, "CLI inventory differs");
                    ensure!(cli.rotation_overdue == report.rotation_overdue);
                    ensure!(cli.access == report.access);
                    ensure!(cli.refusals == report.refusals);
                    ensure!(cli.compromised == report.compromised);
                    ensure!(cli.use_after_compromise == report.use_after_compromise);
                    ensure!(cli.destroyed == report.destroyed);
                    ensure!(cli.trust_changes == report.trust_changes);
                    ensure!(cli.chain == report.chain);
                    ensure!(cli.summary == report.summary);
                }
                "csv" => check_csv(&text, &report, &keys)?,
                _ => {
                    check_html(&text, &report, &keys)?;
                    html_path = Some(path.clone());
                }
            }
        }

        // Headless Chromium renders the page.
        let html_path = html_path.context("html report")?;
        let png = dir.path().join("report.png");
        let profile = dir.path().join("chromium-profile");
        let (c, h, p) = (chromium.clone(), html_path.clone(), png.clone());
        tokio::task::spawn_blocking(move || screenshot(&c, &h, &p, &profile)).await??;
        let bytes = std::fs::read(&png)?;
        ensure!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "not a PNG: {:?}",
            &bytes[..bytes.len().min(8)]
        );
        ensure!(
            bytes.len() > 10 * 1024,
            "screenshot only {} bytes",
            bytes.len()
        );
        std::fs::copy(&png, SCREENSHOT_COPY)
            .with_context(|| format!("copying the screenshot to {SCREENSHOT_COPY}"))?;
        std::fs::copy(&html_path, HTML_COPY)
            .with_context(|| format!("copying the report to {HTML_COPY}"))?;
        eprintln!(
            "compliance report screenshot: {SCREENSHOT_COPY} ({} bytes)",
            bytes.len()
        );

        // A stray message in the stream: the report is written, names it, and exits 1.
        let junk_seq = l
            .conn
            .js
            .publish(format!("keyledger.{LEDGER}.ev._._"), "not an event".into())
            .await?
            .await?
            .sequence;
        let (bin2, url2, root2) = (bin.clone(), url.clone(), root.clone());
        let path = dir.path().join("foreign.json");
        let p2 = path.clone();
        let to2 = ledger::sign::now_ms() + 1;
        let r =
            tokio::task::spawn_blocking(move || cli_report(&bin2, &url2, &root2, to2, "json", &p2))
                .await??;
        ensure!(
            r.code == Some(1),
            "exit {:?} with a foreign message\n{}",
            r.code,
            r.stderr
        );
        ensure!(r.stderr.contains("FOREIGN"), "{}", r.stderr);
        let bad: ComplianceReport = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        ensure!(!bad.chain.ok && bad.chain.foreign_total == 1);
        ensure!(bad.chain.foreign[0].seq == junk_seq);
        ensure!(
            bad.figure("foreign_messages")
                .map(|f| f.evidence.seqs.clone())
                == Some(vec![junk_seq])
        );
        ensure!(
            (&bad.inventory.keys, &bad.inventory.by_state)
                == (&report.inventory.keys, &report.inventory.by_state),
            "foreign messages change no figure"
        );
        let html = report_render::to_html(&bad);
        ensure!(html.contains("1 FOREIGN MESSAGE"));
        Ok(())
    })
    .await
}
