//! Integration tests of the ledger foundation against a real nats-server (one per test, started
//! by the harness, loopback only):
//!
//! * several writer processes (same writer key, separate connections) appending concurrently
//!   produce one unbroken chain, every request stored exactly once, on one node and on an R3
//!   stream of a three-node cluster with one writer per node;
//! * a stray publisher slipping a message in while a writer is busy is reported as one foreign
//!   message and the writer chains on around it;
//! * a request id is stored once, whether repeated on the same appender, by a freshly opened
//!   appender, across a server restart or SIGKILL, or after a writer with a skewed clock stored
//!   it;
//! * every tamper class (altered bytes, missing event, forged signer, swapped pair, an event of
//!   another ledger, a stale copy) is detected and named by stream sequence;
//! * no plaintext key material reaches any stored byte (streams, store directory, keystore and
//!   share files), and destroying a key erases its data key from disk (crypto-shredding);
//! * the appender fails closed on a stream that allows deletion, and `initialise` refuses a
//!   stream that already holds messages;
//! * the `keyledger` CLI: init, verify (exit codes, JSON), demo with Shamir shares.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bytes::Bytes;
use ed25519_dalek::SigningKey;
use keyledger_tests::harness::{NatsCluster, NatsServer};
use ledger::custody::{self, Argon2Params, Protection, Secrets};
use ledger::event::{Actor, KeySpec, KeyState, KeyStateChanged, KeyType};
use ledger::nats::dek::{DekError, DekStore};
use ledger::nats::genesis::{initialise, InitError};
use ledger::nats::reader::read_range;
use ledger::nats::stream::event_stream_config;
use ledger::nats::{
    replay, AppendError, Appender, AppenderConfig, KeyGuard, LedgerConn, Receipt, ReplayReport,
    StreamError, StreamSettings,
};
use ledger::seal::SealedMaterial;
use ledger::sign::{chain_and_sign, now_ms, Draft, EventSigner, SignedEntry};
use ledger::{
    Bytes32, ChainError, ChainState, Checked, EventBody, ForeignMessage, ForeignReason, KeyId,
    LedgerId, RequestId, TenantId,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Runs a test body with an upper bound on its duration.
async fn within<T>(secs: u64, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .map_err(|_| anyhow!("test body did not finish within {secs} s"))?
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

async fn ledger_conn(url: &str, ledger: &str) -> Result<LedgerConn> {
    Ok(LedgerConn::new(connect(url).await?, LedgerId::new(ledger)?))
}

/// Waits (bounded) until `client` is connected again after a server restart.
async fn wait_connected(client: &async_nats::Client) -> Result<()> {
    for _ in 0..400 {
        if client.connection_state() == async_nats::connection::State::Connected {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("client did not reconnect within 10 s")
}

/// Creates ledger `id` with fresh secrets: genesis at seq 1, the writer's enrolment at seq 2.
async fn setup(url: &str, id: &str, settings: &StreamSettings) -> Result<(LedgerConn, Secrets)> {
    let secrets = Secrets::generate();
    let conn = ledger_conn(url, id).await?;
    let receipts = initialise(
        &conn,
        settings,
        EventSigner::new(secrets.root.clone()),
        secrets.writer_public(),
        secrets.kek.id(),
    )
    .await?;
    let seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    ensure!(seqs == [1, 2], "genesis and enrolment at {seqs:?}");
    Ok((conn, secrets))
}

/// Opens a writer with the ledger's writer key (as a writer process would).
async fn open_writer(
    conn: &LedgerConn,
    secrets: &Secrets,
    accept_unsafe: bool,
) -> Result<Appender> {
    let (appender, report) = Appender::open(
        conn.clone(),
        EventSigner::new(secrets.writer.clone()),
        Some(secrets.root_public()),
        AppenderConfig::default(),
        accept_unsafe,
    )
    .await?;
    ensure!(report.chain_break.is_none(), "opened on a broken chain");
    Ok(appender)
}

fn draft(reason: &str) -> Draft {
    Draft {
        request_id: RequestId::random(),
        actor: Actor::system("test"),
        context: None,
        body: KeyStateChanged {
            key: KeyId::new("k1").expect("valid key id"),
            from: KeyState::Active,
            to: KeyState::Suspended,
            reason: reason.to_owned(),
        }
        .into(),
    }
}

fn drafts(prefix: &str, n: usize) -> Vec<Draft> {
    (0..n).map(|i| draft(&format!("{prefix}-{i}"))).collect()
}

/// Replays the whole stream with the root key pinned.
async fn verify(conn: &LedgerConn, root: Bytes32) -> Result<ReplayReport> {
    let mut state = ChainState::new(conn.names.ledger.clone(), Some(root));
    Ok(replay(conn, &mut state, |_, _| {}).await?)
}

/// Every outcome of a full verification, and the chain break if any.
async fn check_all(
    conn: &LedgerConn,
    root: Bytes32,
) -> Result<(Vec<Checked>, Option<ChainError>, ChainState)> {
    let last = conn.last_seq().await?;
    let mut state = ChainState::new(conn.names.ledger.clone(), Some(root));
    let mut out = Vec::new();
    let mut broken = None;
    read_range(conn, 1, last, |chunk| {
        let (o, e) = state.check_batch(chunk);
        out.extend(o);
        broken = e;
        broken.is_none()
    })
    .await?;
    Ok((out, broken, state))
}

/// Every raw message of the event stream.
async fn raw_events(conn: &LedgerConn) -> Result<Vec<(u64, Bytes)>> {
    let last = conn.last_seq().await?;
    let mut all = Vec::new();
    read_range(conn, 1, last, |chunk| {
        all.extend(chunk);
        true
    })
    .await?;
    Ok(all)
}

/// Every raw message of a stream, by direct get (works for the DEK stream too).
async fn raw_stream(conn: &LedgerConn, name: &str) -> Result<Vec<(u64, Bytes)>> {
    let mut stream = conn.js.get_stream(name).await?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        match stream.get_raw_message(seq).await {
            Ok(m) => out.push((seq, m.payload)),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

async fn raw_entry(conn: &LedgerConn, seq: u64) -> Result<Bytes> {
    let stream = conn.js.get_stream(conn.names.stream()).await?;
    Ok(stream.get_raw_message(seq).await?.payload)
}

/// A stray publisher: plain JetStream publish into the ledger's subjects. Returns the sequence.
async fn raw_publish(conn: &LedgerConn, payload: impl Into<Bytes>) -> Result<u64> {
    let subject = format!("keyledger.{}.ev._._", conn.names.ledger);
    Ok(conn
        .js
        .publish(subject, payload.into())
        .await?
        .await?
        .sequence)
}

fn foreign(seq: u64, reason: ForeignReason) -> ForeignMessage {
    ForeignMessage { seq, reason }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    ensure!(!out.is_empty(), "no files under {}", dir.display());
    Ok(out)
}

/// Which of `needles` (name, bytes) occur in which files under `dir`.
fn scan_dir(dir: &Path, needles: &[(String, Vec<u8>)]) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for f in files_under(dir)? {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        for (name, n) in needles {
            if contains(&bytes, n) {
                found.push((name.clone(), f.clone()));
            }
        }
    }
    Ok(found)
}

/// A key version's sealed material as recorded by its `KeyCreated`/`KeyRotated` event.
#[derive(Clone, Debug)]
struct Recorded {
    key: KeyId,
    version: u32,
    sealed: SealedMaterial,
    created_by: RequestId,
}

async fn recorded_versions(conn: &LedgerConn, root: Bytes32) -> Result<Vec<Recorded>> {
    let (out, broken, _) = check_all(conn, root).await?;
    ensure!(broken.is_none(), "chain broken: {broken:?}");
    let mut found = Vec::new();
    for c in out {
        let Checked::Event(v) = c else {
            bail!("unexpected foreign message {c:?}")
        };
        let e = v.event();
        let (key, vm) = match &e.body {
            EventBody::KeyCreated(k) => (&k.spec.key, &k.material),
            EventBody::KeyRotated(k) => (&k.key, &k.material),
            _ => continue,
        };
        ensure!(vm.sealed.len() == 1, "one sealing per version");
        found.push(Recorded {
            key: key.clone(),
            version: vm.version,
            sealed: vm.sealed[0].clone(),
            created_by: e.request_id.clone(),
        });
    }
    Ok(found)
}

/// A second handle on the same master key (the service's copy for `KeyOps`).
fn copy_kek(kek: &ledger::seal::Kek) -> ledger::seal::Kek {
    ledger::seal::Kek::from_bytes(zeroize::Zeroizing::new(*kek.expose_bytes()))
}

fn spec(key: &str, key_type: KeyType) -> Result<KeySpec> {
    Ok(KeySpec {
        key: KeyId::new(key)?,
        tenant: TenantId::new("acme")?,
        name: format!("test key {key}"),
        key_type,
        state: KeyState::Active,
        exportable: false,
        rotation_period_s: None,
        split: None,
        labels: vec![],
    })
}

fn alice() -> Actor {
    Actor {
        principal: "alice".into(),
        tenant: Some(TenantId::new("acme").expect("valid tenant")),
        token_id: None,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Concurrent writers
// ---------------------------------------------------------------------------------------------

/// Three writer processes (the same enrolled writer key on three connections, as replicas of
/// the service would be) append 400 events each, 20 concurrent `append_all` calls of 20 per
/// writer, all at once. The result is one chain of 1,202 verified events in which every request
/// is stored exactly once, where its receipt says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_append_concurrently_into_one_chain() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(80, async {
        let (conn, secrets) = setup(&url, "three", &StreamSettings::default()).await?;
        let mut writers = Vec::new();
        for _ in 0..3 {
            let c = ledger_conn(&url, "three").await?;
            writers.push(open_writer(&c, &secrets, false).await?);
        }
        let mut tasks = Vec::new();
        for (w, app) in writers.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let calls = (0..20).map(|b| {
                    let app = app.clone();
                    let batch = drafts(&format!("w{w}-b{b}"), 20);
                    async move {
                        let ids: Vec<RequestId> =
                            batch.iter().map(|d| d.request_id.clone()).collect();
                        let receipts = app.append_all(batch).await?;
                        Ok::<_, AppendError>(ids.into_iter().zip(receipts).collect::<Vec<_>>())
                    }
                });
                let all = futures::future::try_join_all(calls).await?;
                Ok::<_, AppendError>(all.into_iter().flatten().collect::<Vec<_>>())
            }));
        }
        let mut receipts: HashMap<RequestId, Receipt> = HashMap::new();
        for t in tasks {
            for (id, r) in t.await?? {
                ensure!(!r.already_present, "{id} reported as already present");
                ensure!(
                    receipts.insert(id.clone(), r).is_none(),
                    "{id} answered twice"
                );
            }
        }
        assert_eq!(receipts.len(), 1200);
        let seqs: HashSet<u64> = receipts.values().map(|r| r.seq).collect();
        assert_eq!(seqs.len(), 1200, "every receipt names its own sequence");
        assert_eq!(seqs.iter().min(), Some(&3));
        assert_eq!(seqs.iter().max(), Some(&1202));

        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(report.verified, 2 + 1200);
        assert!(
            report.is_clean(),
            "{:?} {:?}",
            report.foreign,
            report.chain_break
        );
        assert_eq!(report.last_seq, 1202);

        let (out, broken, _) = check_all(&conn, secrets.root_public()).await?;
        assert_eq!(broken, None);
        let mut seen: HashMap<RequestId, u32> = HashMap::new();
        for c in &out {
            let Checked::Event(v) = c else {
                bail!("foreign message {c:?}")
            };
            *seen.entry(v.event().request_id.clone()).or_default() += 1;
            if let Some(r) = receipts.get(&v.event().request_id) {
                assert_eq!(
                    (r.seq, r.index, r.hash),
                    (v.seq(), v.event().index, v.hash()),
                    "receipt of {} matches the stored event",
                    v.event().request_id
                );
            }
        }
        assert_eq!(seen.len(), 1202);
        for id in receipts.keys() {
            assert_eq!(seen.get(id), Some(&1), "request {id} stored exactly once");
        }
        Ok(())
    })
    .await
}

/// The production shape: an R3 ledger on a three-node cluster, one writer connected to each
/// node (so two of them reach the stream leader through another node), appending concurrently.
/// One chain, every request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_on_a_three_node_cluster_append_into_one_chain() -> Result<()> {
    let cluster = NatsCluster::start(3)?;
    within(80, async {
        let settings = StreamSettings {
            replicas: 3,
            ..Default::default()
        };
        // A fresh cluster may not place an R3 stream yet (peers still coming online).
        let first = ledger_conn(&cluster.url(0), "cluster").await?;
        let mut created = first.create_streams(&settings).await;
        for _ in 0..40 {
            if created.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            created = first.create_streams(&settings).await;
        }
        created.context("creating the R3 streams")?;
        let (conn, secrets) = setup(&cluster.url(0), "cluster", &settings)
            .await
            .context("initialising")?;
        let mut writers = Vec::new();
        for i in 0..3 {
            let c = ledger_conn(&cluster.url(i), "cluster").await?;
            writers.push(
                open_writer(&c, &secrets, false)
                    .await
                    .with_context(|| format!("opening writer {i}"))?,
            );
        }
        let mut tasks = Vec::new();
        for (w, app) in writers.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let calls = (0..10).map(|b| {
                    let app = app.clone();
                    let batch = drafts(&format!("w{w}-b{b}"), 20);
                    async move { app.append_all(batch).await }
                });
                let all = futures::future::try_join_all(calls).await?;
                Ok::<_, AppendError>(all.into_iter().flatten().collect::<Vec<_>>())
            }));
        }
        let mut seqs = HashSet::new();
        for (w, t) in tasks.into_iter().enumerate() {
            for r in t.await?.with_context(|| format!("writer {w}"))? {
                assert!(seqs.insert(r.seq), "seq {} answered twice", r.seq);
            }
        }
        assert_eq!(seqs.len(), 600);
        for i in 0..3 {
            let c = ledger_conn(&cluster.url(i), "cluster").await?;
            let report = verify(&c, secrets.root_public())
                .await
                .with_context(|| format!("verifying through node {i}"))?;
            assert!(
                report.is_clean(),
                "node {i}: {:?} {:?}",
                report.foreign,
                report.chain_break
            );
            assert_eq!(report.verified, 602, "node {i}");
        }
        let count = stored_request_ids(&conn, secrets.root_public()).await?;
        assert_eq!(count.len(), 602);
        assert!(count.values().all(|&n| n == 1));
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. A stray publisher while a writer is busy
// ---------------------------------------------------------------------------------------------

/// While one writer appends 2,000 events in chunks, another connection publishes junk into the
/// stream. The writer answers every request, the junk is the only foreign message (at the
/// sequence its PubAck named), and no event links to anything but the last valid one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intruding_publish_is_foreign_and_the_writer_chains_on() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(60, async {
        let (conn, secrets) = setup(&url, "intruded", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        let writer = tokio::spawn(async move {
            let mut receipts = Vec::new();
            for b in 0..100 {
                receipts.extend(app.append_all(drafts(&format!("b{b}"), 20)).await?);
            }
            Ok::<_, AppendError>(receipts)
        });

        let intruder = ledger_conn(&url, "intruded").await?;
        let mut seen = 0;
        for _ in 0..5000 {
            seen = intruder.last_seq().await?;
            if seen >= 300 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        ensure!(seen >= 300, "the writer never got to 300 events");
        let junk_seq = raw_publish(&intruder, &b"intruder"[..]).await?;

        let receipts = writer.await??;
        assert_eq!(receipts.len(), 2000);
        let last = receipts.last().map(|r| r.seq).unwrap_or(0);
        ensure!(
            junk_seq > 300 && junk_seq < last,
            "the intruder (seq {junk_seq}) did not land mid-run (writer's last seq {last})"
        );
        for (i, w) in receipts.windows(2).enumerate() {
            assert!(w[0].seq < w[1].seq, "receipts in order at {i}");
            assert_eq!(w[0].index + 1, w[1].index, "indices consecutive at {i}");
        }
        assert!(receipts
            .iter()
            .all(|r| r.seq != junk_seq && !r.already_present));
        assert_eq!(last, 2003);

        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(
            report.foreign,
            vec![foreign(
                junk_seq,
                ForeignReason::Malformed("entry of 8 bytes is too short".into())
            )]
        );
        assert_eq!(report.chain_break, None);
        assert_eq!(report.verified, 2002);
        assert_eq!(report.last_seq, 2003);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. Request ids are stored once
// ---------------------------------------------------------------------------------------------

/// Counts stored events by request id (the chain must verify cleanly).
async fn stored_request_ids(conn: &LedgerConn, root: Bytes32) -> Result<HashMap<RequestId, u32>> {
    let (out, broken, _) = check_all(conn, root).await?;
    ensure!(broken.is_none(), "chain broken: {broken:?}");
    let mut count: HashMap<RequestId, u32> = HashMap::new();
    for c in &out {
        let Checked::Event(v) = c else {
            bail!("foreign message {c:?}")
        };
        *count.entry(v.event().request_id.clone()).or_default() += 1;
    }
    Ok(count)
}

/// The same request id appended again on the same appender: right away, across a graceful
/// server restart, and across a SIGKILL of the server right after the ack. Each time the second
/// answer is the first receipt with `already_present`, and the stream holds the event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_id_on_one_writer_is_stored_once() -> Result<()> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let (conn, secrets, app, d1) = within(30, async {
        let (conn, secrets) = setup(&url, "dedupe", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        let d1 = draft("once");
        let r1 = app.append(d1.clone()).await?;
        assert_eq!((r1.seq, r1.index, r1.already_present), (3, 2, false));
        let again = app.append(d1.clone()).await?;
        assert_eq!(
            again,
            Receipt {
                already_present: true,
                ..r1
            }
        );
        assert_eq!(conn.last_seq().await?, 3, "nothing appended by the repeat");
        Ok((conn, secrets, app, d1))
    })
    .await?;

    // Graceful restart between the two appends.
    let d2 = draft("across restart");
    let r2 = within(20, async { Ok(app.append(d2.clone()).await?) }).await?;
    assert_eq!(r2.seq, 4);
    server.restart()?;
    within(30, async {
        wait_connected(&conn.client).await?;
        let both = app
            .append_all(vec![d2.clone(), draft("after restart")])
            .await?;
        assert_eq!(
            both[0],
            Receipt {
                already_present: true,
                ..r2
            }
        );
        assert_eq!((both[1].seq, both[1].already_present), (5, false));
        Ok(())
    })
    .await?;

    // SIGKILL right after an acknowledged append: the event survives, and is not stored twice.
    let d3 = draft("across kill -9");
    let r3 = within(20, async { Ok(app.append(d3.clone()).await?) }).await?;
    assert_eq!(r3.seq, 6);
    server.kill9()?;
    server.restart()?;
    within(40, async {
        wait_connected(&conn.client).await?;
        let both = app
            .append_all(vec![d3.clone(), draft("after kill")])
            .await?;
        assert_eq!(
            both[0],
            Receipt {
                already_present: true,
                ..r3
            }
        );
        assert_eq!((both[1].seq, both[1].already_present), (7, false));

        let count = stored_request_ids(&conn, secrets.root_public()).await?;
        for d in [&d1, &d2, &d3] {
            assert_eq!(
                count.get(&d.request_id),
                Some(&1),
                "{} stored once",
                d.request_id
            );
        }
        assert_eq!(
            count.len(),
            2 + 5,
            "genesis, enrolment, d1, d2, after-restart, d3, after-kill"
        );
        assert_eq!(conn.last_seq().await?, 7);
        Ok(())
    })
    .await
}

/// A request already in the ledger, appended by a writer process that did not store it (a
/// freshly opened appender: its own replay, no memory of the first append; as after a crash
/// that lost the ack, or a client retrying against another replica). The answer must be the
/// stored event's receipt with `already_present`, and nothing may be appended; requests
/// batched with it must still be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_id_from_a_fresh_writer_is_stored_once() -> Result<()> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let (conn, secrets, d1, r1) = within(30, async {
        let (conn, secrets) = setup(&url, "dedupe2", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        let d1 = draft("once");
        let r1 = app.append(d1.clone()).await?;
        assert_eq!((r1.seq, r1.already_present), (3, false));
        Ok((conn, secrets, d1, r1))
    })
    .await?;

    within(30, async {
        let c2 = ledger_conn(&url, "dedupe2").await?;
        let app2 = open_writer(&c2, &secrets, false).await?;
        let again = app2.append(d1.clone()).await?;
        assert_eq!(
            again,
            Receipt {
                already_present: true,
                ..r1
            }
        );
        assert_eq!(
            conn.last_seq().await?,
            3,
            "nothing appended by the fresh writer"
        );
        Ok(())
    })
    .await?;

    // The same after a SIGKILL of the server and a restart of the writer process, with the
    // repeated request batched together with a new one.
    server.kill9()?;
    server.restart()?;
    within(40, async {
        let c3 = ledger_conn(&url, "dedupe2").await?;
        let app3 = open_writer(&c3, &secrets, false).await?;
        let both = app3.append_all(vec![d1.clone(), draft("new")]).await?;
        assert_eq!(
            both[0],
            Receipt {
                already_present: true,
                ..r1
            }
        );
        assert_eq!((both[1].seq, both[1].already_present), (4, false));
        let count = stored_request_ids(&c3, secrets.root_public()).await?;
        assert_eq!(count.get(&d1.request_id), Some(&1));
        assert_eq!(count.len(), 2 + 2);
        Ok(())
    })
    .await
}

/// A request stored by a writer replica whose clock runs 15 minutes behind (its event carries
/// that writer's `time_ms`), then retried on a correctly clocked writer within the stream's
/// duplicate window, batched with a new request. The server refuses any batch holding the
/// duplicate message id (10201); the writer must still answer the retried request from the
/// chain and store the new one, not fail both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_request_id_from_a_writer_with_a_skewed_clock_is_stored_once() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let (conn, secrets) = setup(&url, "skewed", &StreamSettings::default()).await?;
        // The skewed replica commits its event exactly as an appender does: one atomic batch,
        // expected last sequence, the request id as Nats-Msg-Id.
        let (_, broken, state) = check_all(&conn, secrets.root_public()).await?;
        assert_eq!(broken, None);
        let d1 = draft("from the skewed replica");
        let skewed_now = now_ms() - 15 * 60 * 1000;
        let (signed, _) = chain_and_sign(
            &EventSigner::new(secrets.writer.clone()),
            &conn.names.ledger,
            state.tip(),
            skewed_now,
            std::slice::from_ref(&d1),
        );
        let mut publisher = ledger::nats::batch::BatchPublisher::new(conn.client.clone()).await?;
        let outcome = publisher
            .publish(
                &[ledger::nats::batch::OutMsg {
                    subject: conn.names.event_subject(&signed[0].event),
                    msg_id: d1.request_id.to_string(),
                    payload: signed[0].entry.clone(),
                }],
                Some(state.last_seq()),
                Duration::from_secs(5),
            )
            .await?;
        assert_eq!(
            outcome,
            ledger::nats::batch::BatchOutcome::Committed { last_seq: 3 }
        );

        let app = open_writer(&conn, &secrets, false).await?;
        let both = app.append_all(vec![d1.clone(), draft("new")]).await?;
        assert_eq!(
            both[0],
            Receipt {
                seq: 3,
                index: 2,
                hash: signed[0].hash,
                already_present: true
            }
        );
        assert_eq!((both[1].seq, both[1].already_present), (4, false));
        let count = stored_request_ids(&conn, secrets.root_public()).await?;
        assert_eq!(count.get(&d1.request_id), Some(&1));
        assert_eq!(count.len(), 2 + 2);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. Tampering
// ---------------------------------------------------------------------------------------------

/// A copy of a stored event with one body byte changed (the actor's principal, so it still
/// decodes canonically) is published by a stray publisher; the writer then keeps appending.
/// Verify names that sequence (bad signature by the writer) and the chain around it is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_altered_byte_is_foreign_bad_signature() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let (conn, secrets) = setup(&url, "altered", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        let first = app.append_all(drafts("before", 5)).await?;
        assert_eq!(first.last().map(|r| r.seq), Some(7));

        let mut entry = raw_entry(&conn, 5).await?.to_vec();
        let at = entry
            .windows(b"system:test".len())
            .position(|w| w == b"system:test")
            .context("principal in the stored entry")?;
        entry[at] = b'S';
        let bad_seq = raw_publish(&conn, entry).await?;
        assert_eq!(bad_seq, 8);

        let after = app.append_all(drafts("after", 5)).await?;
        let seqs: Vec<u64> = after.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [9, 10, 11, 12, 13]);
        assert_eq!(after[0].index, 7, "the altered copy took no index");

        let writer_id = EventSigner::new(secrets.writer.clone()).id();
        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(
            report.foreign,
            vec![foreign(
                8,
                ForeignReason::BadSignature { signer: writer_id }
            )]
        );
        assert_eq!(report.chain_break, None);
        assert_eq!(report.verified, 12);
        Ok(())
    })
    .await
}

/// A deleted event (on a stream that, dangerously, allows deletion) breaks the chain: verify
/// stops at the next event with a gap, and no writer will open on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_missing_event_is_a_gap() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let settings = StreamSettings {
            danger_allow_delete: true,
            ..Default::default()
        };
        let (conn, secrets) = setup(&url, "missing", &settings).await?;
        let app = open_writer(&conn, &secrets, true).await?;
        let r = app.append_all(drafts("ev", 10)).await?;
        assert_eq!((r[0].seq, r[9].seq), (3, 12));
        assert_eq!(r[2].index, 4, "seq 5 holds index 4");

        let stream = conn.js.get_stream(conn.names.stream()).await?;
        assert!(stream.delete_message(5).await?);

        let expected = ChainError::Gap {
            seq: 6,
            expected_index: 4,
            found_index: 5,
            last_foreign: None,
        };
        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(report.chain_break, Some(expected.clone()));
        assert_eq!(report.chain_break.as_ref().map(ChainError::seq), Some(6));
        assert_eq!(report.verified, 4);
        assert!(report.foreign.is_empty());

        let c2 = ledger_conn(&url, "missing").await?;
        match Appender::open(
            c2,
            EventSigner::new(secrets.writer.clone()),
            Some(secrets.root_public()),
            AppenderConfig::default(),
            true,
        )
        .await
        {
            Err(AppendError::ChainBroken(e)) => assert_eq!(e, expected),
            Err(e) => bail!("expected ChainBroken, got {e}"),
            Ok(_) => bail!("a writer opened on a broken chain"),
        }
        Ok(())
    })
    .await
}

/// An event correctly chained onto the head but signed by a key the ledger never enrolled is
/// foreign (unknown signer) at its sequence; the real writer's next events chain past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_forged_signer_is_foreign_unknown_signer() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let (conn, secrets) = setup(&url, "forged", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        app.append_all(drafts("before", 3)).await?;

        let (_, broken, state) = check_all(&conn, secrets.root_public()).await?;
        assert_eq!(broken, None);
        let tip = state.tip();
        assert_eq!(tip.next_index, 5);
        let forger = EventSigner::new(SigningKey::from_bytes(&rand::random::<[u8; 32]>()));
        let (signed, _) = chain_and_sign(
            &forger,
            &conn.names.ledger,
            tip,
            now_ms(),
            &[draft("forged")],
        );
        let forged_seq = raw_publish(&conn, signed[0].entry.clone()).await?;
        assert_eq!(forged_seq, 6);

        let after = app.append_all(drafts("after", 2)).await?;
        assert_eq!(
            after.iter().map(|r| (r.seq, r.index)).collect::<Vec<_>>(),
            [(7, 5), (8, 6)]
        );
        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(
            report.foreign,
            vec![foreign(
                6,
                ForeignReason::UnknownSigner {
                    signer: forger.id()
                }
            )]
        );
        assert_eq!(report.chain_break, None);
        assert_eq!(report.verified, 7);
        Ok(())
    })
    .await
}

/// Two events legitimately signed by the writer key, chained in order, stored in reverse
/// order: the chain breaks at the first stored one (expected index i, found i + 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_swapped_pair_is_a_gap() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let (conn, secrets) = setup(&url, "swapped", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        app.append_all(drafts("before", 3)).await?;
        drop(app);

        let (_, broken, state) = check_all(&conn, secrets.root_public()).await?;
        assert_eq!(broken, None);
        let tip = state.tip();
        assert_eq!(tip.next_index, 5);
        let writer = EventSigner::new(secrets.writer.clone());
        let (signed, _): (Vec<SignedEntry>, _) = chain_and_sign(
            &writer,
            &conn.names.ledger,
            tip,
            now_ms(),
            &[draft("first"), draft("second")],
        );
        assert_eq!((signed[0].event.index, signed[1].event.index), (5, 6));
        assert_eq!(raw_publish(&conn, signed[1].entry.clone()).await?, 6);
        assert_eq!(raw_publish(&conn, signed[0].entry.clone()).await?, 7);

        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(
            report.chain_break,
            Some(ChainError::Gap {
                seq: 6,
                expected_index: 5,
                found_index: 6,
                last_foreign: None,
            })
        );
        assert_eq!(report.verified, 5);
        assert!(report.foreign.is_empty());

        // In the right order the same two entries would have verified.
        let mut fresh = ChainState::new(conn.names.ledger.clone(), Some(secrets.root_public()));
        let (out, err) = fresh.check_batch(
            raw_events(&conn)
                .await?
                .into_iter()
                .take(5)
                .chain([(6, signed[0].entry.clone()), (7, signed[1].entry.clone())])
                .collect(),
        );
        assert_eq!(err, None);
        assert_eq!(out.len(), 7);
        Ok(())
    })
    .await
}

/// An event of ledger B published into ledger A's stream is foreign (another ledger) at its
/// sequence, whoever signed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_event_of_another_ledger_is_foreign() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let (a, secrets_a) = setup(&url, "ledger-a", &StreamSettings::default()).await?;
        let (b, secrets_b) = setup(&url, "ledger-b", &StreamSettings::default()).await?;
        let app_a = open_writer(&a, &secrets_a, false).await?;
        let app_b = open_writer(&b, &secrets_b, false).await?;
        app_a.append_all(drafts("a", 2)).await?;
        app_b.append_all(drafts("b", 2)).await?;

        let from_b = raw_entry(&b, 3).await?;
        let seq = raw_publish(&a, from_b).await?;
        assert_eq!(seq, 5);
        let after = app_a.append(draft("a-after")).await?;
        assert_eq!((after.seq, after.index), (6, 4));

        let report = verify(&a, secrets_a.root_public()).await?;
        assert_eq!(
            report.foreign,
            vec![foreign(
                5,
                ForeignReason::WrongLedger {
                    found: "ledger-b".into()
                }
            )]
        );
        assert_eq!(report.chain_break, None);
        assert_eq!(report.verified, 5);
        // Ledger B is untouched.
        let report_b = verify(&b, secrets_b.root_public()).await?;
        assert!(report_b.is_clean());
        assert_eq!(report_b.verified, 4);
        Ok(())
    })
    .await
}

/// A byte-exact copy of an old, legitimately stored event published again is foreign (stale
/// copy of that index); the chain goes on from the real head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_replayed_old_event_is_foreign_stale() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let (conn, secrets) = setup(&url, "stale", &StreamSettings::default()).await?;
        let app = open_writer(&conn, &secrets, false).await?;
        app.append_all(drafts("before", 4)).await?;
        let old = raw_entry(&conn, 4).await?;
        let seq = raw_publish(&conn, old).await?;
        assert_eq!(seq, 7);
        let after = app.append(draft("after")).await?;
        assert_eq!((after.seq, after.index), (8, 6));

        let report = verify(&conn, secrets.root_public()).await?;
        assert_eq!(
            report.foreign,
            vec![foreign(7, ForeignReason::Stale { index: 3 })]
        );
        assert_eq!(report.chain_break, None);
        assert_eq!(report.verified, 7);
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 5. No plaintext key material at rest
// ---------------------------------------------------------------------------------------------

/// Creates and rotates keys of every generatable type, opens every version to learn its
/// plaintext, and looks for each plaintext in every stored message of both streams and in every
/// file of the server's store directory; and for the service's own secrets in keystore and
/// share files. Positive controls prove each scan would have seen the bytes it looks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_key_material_in_any_stored_byte() -> Result<()> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let (conn, secrets) = within(20, setup(&url, "plain", &StreamSettings::default())).await?;

    // Keystore (passphrase) and share files for these secrets.
    let tmp = tempfile::tempdir()?;
    let own_secrets: Vec<(String, Vec<u8>)> = vec![
        ("root signing key".into(), secrets.root.to_bytes().to_vec()),
        (
            "writer signing key".into(),
            secrets.writer.to_bytes().to_vec(),
        ),
        ("master key".into(), secrets.kek.expose_bytes().to_vec()),
    ];
    let ks = tmp.path().join("ks.json");
    custody::create_keystore(
        &ks,
        &conn.names.ledger,
        &secrets,
        &Protection::Passphrase {
            passphrase: zeroize::Zeroizing::new("correct horse battery staple".into()),
            params: Argon2Params {
                m_cost_kib: 1024,
                t_cost: 1,
                p_cost: 1,
            },
        },
    )?;
    let ks2 = tmp.path().join("ks-shares.json");
    let (_, shares) = custody::create_keystore(
        &ks2,
        &conn.names.ledger,
        &secrets,
        &Protection::Shares {
            threshold: 2,
            count: 3,
        },
    )?;
    let share_files = custody::write_share_files(&tmp.path().join("shares"), &shares)?;
    assert_eq!(share_files.len(), 3);
    // The files really hold these secrets (sealed): they open back to them.
    let back = custody::open_with_passphrase(&ks, "correct horse battery staple")?;
    assert_eq!(back.kek.expose_bytes(), secrets.kek.expose_bytes());
    let back = custody::open_with_shares(&ks2, &shares[1..])?;
    assert_eq!(back.root.to_bytes(), secrets.root.to_bytes());
    let mut needles = Vec::new();
    for (name, b) in &own_secrets {
        needles.push((format!("{name} (raw)"), b.clone()));
        needles.push((format!("{name} (hex)"), hex::encode(b).into_bytes()));
        needles.push((format!("{name} (HEX)"), hex::encode_upper(b).into_bytes()));
    }
    let found = scan_dir(tmp.path(), &needles)?;
    assert!(
        found.is_empty(),
        "secrets found in keystore/share files: {found:?}"
    );
    // Control: the same scan does see what is meant to be there (public key, in hex).
    let control = vec![(
        "root public key".to_string(),
        secrets.root_public().to_hex().into_bytes(),
    )];
    let found = scan_dir(tmp.path(), &control)?;
    assert_eq!(
        found.len(),
        2,
        "root public key in both keystore headers: {found:?}"
    );

    let kek = Arc::new(copy_kek(&secrets.kek));
    let root_public = secrets.root_public();

    let (plaintexts, sealed_blobs, dek_blobs) = within(40, async {
        let app = open_writer(&conn, &secrets, false).await?;
        let ops = api::keyops::KeyOps::new(conn.clone(), app, kek.clone());
        let types = [
            KeyType::Aes128Gcm,
            KeyType::Aes256Gcm,
            KeyType::HmacSha256,
            KeyType::Ed25519,
            KeyType::X25519,
            KeyType::Secret,
        ];
        for (i, t) in types.iter().enumerate() {
            let key = format!("key-{i}");
            ops.create(alice(), RequestId::random(), spec(&key, *t)?)
                .await?;
            ops.rotate(alice(), RequestId::random(), &KeyId::new(&key)?, *t, 2)
                .await?;
        }
        let versions = recorded_versions(&conn, root_public).await?;
        assert_eq!(versions.len(), 12);
        let deks = DekStore::new(conn.clone());
        let mut plaintexts = Vec::new();
        let mut sealed_blobs = Vec::new();
        let mut dek_blobs = Vec::new();
        for v in &versions {
            let p = ops
                .open(&v.key, v.version, &v.created_by, &v.sealed)
                .await?;
            assert!(p.len() == 16 || p.len() == 32, "{} v{}", v.key, v.version);
            plaintexts.push((format!("{} v{} plaintext", v.key, v.version), p.to_vec()));
            sealed_blobs.push((
                format!("{} v{} sealed material", v.key, v.version),
                v.sealed.ciphertext.clone(),
            ));
            dek_blobs.push((
                format!("{} v{} sealed DEK", v.key, v.version),
                deks.get(&v.key, &v.sealed.dek_id).await?.to_bytes(),
            ));
        }
        let distinct: HashSet<&Vec<u8>> = plaintexts.iter().map(|(_, p)| p).collect();
        assert_eq!(distinct.len(), 12, "every version has its own material");

        // Every stored message of both streams.
        let events = raw_events(&conn).await?;
        let dek_msgs = raw_stream(&conn, &conn.names.dek_stream()).await?;
        assert_eq!(events.len(), 2 + 12);
        assert_eq!(dek_msgs.len(), 12);
        for (seq, m) in events.iter().chain(&dek_msgs) {
            for (name, p) in &plaintexts {
                assert!(
                    !contains(m, p),
                    "{name} found in a stored message (seq {seq})"
                );
                assert!(
                    !contains(m, hex::encode(p).as_bytes()),
                    "{name} (hex) at seq {seq}"
                );
            }
        }
        // Controls: the sealed forms are where they belong.
        for (name, c) in &sealed_blobs {
            assert!(
                events.iter().any(|(_, m)| contains(m, c)),
                "{name} not in events"
            );
        }
        for (name, d) in &dek_blobs {
            assert!(
                dek_msgs.iter().any(|(_, m)| contains(m, d)),
                "{name} not in DEK stream"
            );
        }
        Ok((plaintexts, sealed_blobs, dek_blobs))
    })
    .await?;

    // Every byte the server wrote, after a graceful stop (everything flushed).
    server.stop()?;
    let mut needles = plaintexts.clone();
    for (name, p) in &plaintexts {
        needles.push((format!("{name} (hex)"), hex::encode(p).into_bytes()));
    }
    let found = scan_dir(server.store_dir(), &needles)?;
    assert!(
        found.is_empty(),
        "plaintext key material on disk: {found:?}"
    );
    let controls: Vec<(String, Vec<u8>)> = sealed_blobs.into_iter().chain(dek_blobs).collect();
    let found: HashSet<String> = scan_dir(server.store_dir(), &controls)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        found.len(),
        24,
        "every sealed blob is visible to the disk scan"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Crypto-shredding
// ---------------------------------------------------------------------------------------------

/// Destroying a key version records `KeyDestroyed` and erases its sealed DEK: the version can no
/// longer be opened, the DEK's bytes are gone from every file of the store directory (they were
/// there before), another key's DEK is untouched, and the chain still verifies after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_crypto_shreds_the_data_key() -> Result<()> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let (conn, secrets) = within(20, setup(&url, "shred", &StreamSettings::default())).await?;
    let root_public = secrets.root_public();
    let app = within(20, open_writer(&conn, &secrets, false)).await?;
    let ops = api::keyops::KeyOps::new(conn.clone(), app, Arc::new(copy_kek(&secrets.kek)));
    let deks = DekStore::new(conn.clone());
    let doomed = KeyId::new("doomed")?;
    let kept = KeyId::new("kept")?;

    let (v_doomed, v_kept, doomed_dek, kept_dek, plain) = within(30, async {
        ops.create(
            alice(),
            RequestId::random(),
            spec("doomed", KeyType::Aes256Gcm)?,
        )
        .await?;
        ops.create(
            alice(),
            RequestId::random(),
            spec("kept", KeyType::Aes256Gcm)?,
        )
        .await?;
        let versions = recorded_versions(&conn, root_public).await?;
        let find = |k: &KeyId| {
            versions
                .iter()
                .find(|v| &v.key == k)
                .cloned()
                .context("recorded version")
        };
        let (v_doomed, v_kept) = (find(&doomed)?, find(&kept)?);
        let doomed_dek = deks.get(&doomed, &v_doomed.sealed.dek_id).await?.to_bytes();
        let kept_dek = deks.get(&kept, &v_kept.sealed.dek_id).await?.to_bytes();
        let plain = ops
            .open(&doomed, 1, &v_doomed.created_by, &v_doomed.sealed)
            .await?
            .to_vec();
        Ok((v_doomed, v_kept, doomed_dek, kept_dek, plain))
    })
    .await?;
    let needles = vec![
        ("doomed sealed DEK".to_string(), doomed_dek.clone()),
        ("kept sealed DEK".to_string(), kept_dek.clone()),
    ];

    // Before: both sealed DEKs are on disk (so the scan below can fail).
    server.stop()?;
    let before: HashSet<String> = scan_dir(server.store_dir(), &needles)?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        before.len(),
        2,
        "both sealed DEKs on disk before destroy: {before:?}"
    );
    server.restart()?;

    let destroyed = within(30, async {
        wait_connected(&conn.client).await?;
        let r = ops
            .destroy(
                alice(),
                RequestId::random(),
                &doomed,
                &[(1, vec![v_doomed.sealed.dek_id])],
            )
            .await?;
        match ops
            .open(&doomed, 1, &v_doomed.created_by, &v_doomed.sealed)
            .await
        {
            Err(api::keyops::KeyOpError::Dek(DekError::NotFound { dek_id })) => {
                assert_eq!(dek_id, v_doomed.sealed.dek_id)
            }
            Err(e) => bail!("expected DEK NotFound, got {e}"),
            Ok(_) => bail!("destroyed material could still be opened"),
        }
        // The other key is untouched.
        ops.open(&kept, 1, &v_kept.created_by, &v_kept.sealed)
            .await?;
        Ok(r)
    })
    .await?;

    // After: the doomed DEK is gone from every file; the kept one is still there.
    server.stop()?;
    let mut after_needles = needles.clone();
    after_needles.push(("doomed plaintext".to_string(), plain));
    let after: Vec<(String, PathBuf)> = scan_dir(server.store_dir(), &after_needles)?;
    let after_names: HashSet<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        !after_names.contains("doomed sealed DEK"),
        "the destroyed version's sealed DEK is still on disk: {after:?}"
    );
    assert!(!after_names.contains("doomed plaintext"));
    assert!(after_names.contains("kept sealed DEK"), "{after:?}");
    server.restart()?;

    within(30, async {
        let fresh = ledger_conn(&url, "shred").await?;
        let report = verify(&fresh, root_public).await?;
        assert!(
            report.is_clean(),
            "{:?} {:?}",
            report.foreign,
            report.chain_break
        );
        assert_eq!(report.verified, 2 + 2 + 1);
        let (out, _, _) = check_all(&fresh, root_public).await?;
        let last = out.last().context("events")?;
        let Checked::Event(v) = last else {
            bail!("last message is foreign")
        };
        assert_eq!(v.seq(), destroyed.seq);
        match &v.event().body {
            EventBody::KeyDestroyed(d) => {
                assert_eq!(d.key, doomed);
                assert_eq!(d.versions, vec![1]);
                assert_eq!(d.erased_deks, vec![v_doomed.sealed.dek_id]);
            }
            other => bail!("expected KeyDestroyed, got {}", other.tag()),
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 7. Fail closed
// ---------------------------------------------------------------------------------------------

/// A ledger stream that allows deletion is refused by the appender (unless the caller
/// explicitly accepts the danger) and by `initialise` with safe settings; `initialise` refuses a
/// stream that already holds messages, even a single stray one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_or_used_streams_are_refused() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(40, async {
        let danger = StreamSettings {
            danger_allow_delete: true,
            ..Default::default()
        };
        // A stream created by hand with deletion allowed.
        let conn = ledger_conn(&url, "unsafe").await?;
        conn.js
            .create_stream(event_stream_config(&conn.names, &danger))
            .await?;
        let secrets = Secrets::generate();
        match initialise(
            &conn,
            &StreamSettings::default(),
            EventSigner::new(secrets.root.clone()),
            secrets.writer_public(),
            secrets.kek.id(),
        )
        .await
        {
            Err(InitError::Stream(StreamError::Unsafe { stream, problem })) => {
                assert_eq!(stream, "KEYLEDGER_unsafe");
                assert!(problem.contains("deny_delete"), "{problem}");
            }
            Err(e) => bail!("expected Unsafe, got {e}"),
            Ok(_) => bail!("initialised an unsafe stream with safe settings"),
        }
        assert_eq!(conn.last_seq().await?, 0, "nothing appended");
        // Knowingly dangerous set-up (as tests that delete events do), then a normal writer.
        initialise(
            &conn,
            &danger,
            EventSigner::new(secrets.root.clone()),
            secrets.writer_public(),
            secrets.kek.id(),
        )
        .await?;
        match Appender::open(
            conn.clone(),
            EventSigner::new(secrets.writer.clone()),
            Some(secrets.root_public()),
            AppenderConfig::default(),
            false,
        )
        .await
        {
            Err(AppendError::Stream(msg)) => {
                assert!(msg.contains("deny_delete"), "{msg}");
                assert!(msg.contains("KEYLEDGER_unsafe"), "{msg}");
            }
            Err(e) => bail!("expected a stream refusal, got {e}"),
            Ok(_) => bail!("a writer opened on a stream that allows deletion"),
        }
        open_writer(&conn, &secrets, true).await?;

        // A used stream: initialised already, or holding one stray message.
        let (used, s2) = setup(&url, "used", &StreamSettings::default()).await?;
        match initialise(
            &used,
            &StreamSettings::default(),
            EventSigner::new(s2.root.clone()),
            s2.writer_public(),
            s2.kek.id(),
        )
        .await
        {
            Err(InitError::AlreadyInitialised { ledger, events }) => {
                assert_eq!((ledger.as_str(), events), ("used", 2));
            }
            Err(e) => bail!("expected AlreadyInitialised, got {e}"),
            Ok(_) => bail!("initialised a ledger twice"),
        }
        let stray = ledger_conn(&url, "stray").await?;
        stray.create_streams(&StreamSettings::default()).await?;
        raw_publish(&stray, &b"first!"[..]).await?;
        match initialise(
            &stray,
            &StreamSettings::default(),
            EventSigner::new(s2.root.clone()),
            s2.writer_public(),
            s2.kek.id(),
        )
        .await
        {
            Err(InitError::AlreadyInitialised { events: 1, .. }) => {}
            Err(e) => bail!("expected AlreadyInitialised, got {e}"),
            Ok(_) => bail!("initialised over a stray message"),
        }
        // A writer refuses a ledger it is not enrolled in.
        let other = Secrets::generate();
        match Appender::open(
            used.clone(),
            EventSigner::new(other.writer.clone()),
            Some(s2.root_public()),
            AppenderConfig::default(),
            false,
        )
        .await
        {
            Err(AppendError::NotAWriter) => {}
            Err(e) => bail!("expected NotAWriter, got {e}"),
            Ok(_) => bail!("an unenrolled key opened a writer"),
        }
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 8. The CLI
// ---------------------------------------------------------------------------------------------

/// Newest modification time of the sources the `keyledger` binary is built from.
fn newest_source(root: &Path) -> Result<std::time::SystemTime> {
    let mut newest = std::fs::metadata(root.join("Cargo.lock"))?.modified()?;
    for krate in ["ledger", "projector", "api"] {
        let mut files = files_under(&root.join(krate).join("src"))?;
        files.push(root.join(krate).join("Cargo.toml"));
        for f in files {
            newest = newest.max(std::fs::metadata(&f)?.modified()?);
        }
    }
    Ok(newest)
}

/// Locates the `keyledger` binary in this test's target dir, building it first if it is missing
/// or older than its sources (`cargo build` is skipped when fresh: the target dir is shared and
/// its lock may be held by other builds for minutes).
fn keyledger_bin() -> Result<PathBuf> {
    // This test runs from <target>/<profile>/deps/; the binary lives in <target>/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary location")?
        .to_path_buf();
    let bin = profile_dir.join("keyledger");
    let root = keyledger_tests::harness::workspace_root();
    let fresh = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Ok(built) => built >= newest_source(&root)?,
        Err(_) => false,
    };
    if fresh {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "api", "--bin", "keyledger"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().context("running cargo build for keyledger")?;
    ensure!(
        status.success(),
        "cargo build -p api --bin keyledger failed"
    );
    ensure!(bin.is_file(), "{} missing after build", bin.display());
    Ok(bin)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_cli(bin: &Path, url: &str, ledger: &str, args: &[&str]) -> Result<Run> {
    let mut child = std::process::Command::new(bin)
        .args(["--nats", url, "--ledger", ledger])
        .args(args)
        .env("PASS", "cli test passphrase")
        .env_remove("KEYLEDGER_NATS")
        .env_remove("KEYLEDGER_LEDGER")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Bounded: kill the child if it hangs.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("keyledger {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok(Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn json_of(run: &Run) -> Result<serde_json::Value> {
    serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("JSON output: {:?} (stderr {:?})", run.stdout, run.stderr))
}

/// `keyledger init` (passphrase), `verify --json` (exit 0, ok), junk published, `verify` again
/// (exit 1, the junk's sequence reported); `init` with 2-of-3 Shamir shares, `demo` with two
/// share files (exit 0) and with one (refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_init_verify_and_demo() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    let bin = tokio::task::spawn_blocking(keyledger_bin).await??;
    let tmp = tempfile::tempdir()?;
    let p = |s: &str| tmp.path().join(s).to_string_lossy().into_owned();
    let (ks, shares) = (p("ks.json"), p("shares"));
    let (ks2, shares2) = (p("ks2.json"), p("shares2"));

    let (b, u) = (bin.clone(), url.clone());
    let init = tokio::task::spawn_blocking(move || {
        run_cli(
            &b,
            &u,
            "cli1",
            &[
                "--json",
                "init",
                "--keystore",
                &ks,
                "--passphrase-env",
                "PASS",
                "--argon2-m-kib",
                "1024",
                "--share-dir",
                &shares,
            ],
        )
    })
    .await??;
    assert_eq!(init.code, Some(0), "init: {}", init.stderr);
    let j = json_of(&init)?;
    assert_eq!(j["genesis_seq"], 1);
    assert_eq!(j["stream"], "KEYLEDGER_cli1");
    let root_key = j["root_key"].as_str().context("root_key")?.to_owned();

    let (b, u, rk) = (bin.clone(), url.clone(), root_key.clone());
    let ok = tokio::task::spawn_blocking(move || {
        run_cli(&b, &u, "cli1", &["--json", "verify", "--root-key", &rk])
    })
    .await??;
    assert_eq!(ok.code, Some(0), "verify: {} {}", ok.stdout, ok.stderr);
    let j = json_of(&ok)?;
    assert_eq!(j["ok"], true);
    assert_eq!(j["verified"], 2);
    assert_eq!(j["foreign"], serde_json::json!([]));

    let conn = within(10, ledger_conn(&url, "cli1")).await?;
    let junk = within(10, raw_publish(&conn, &b"junk"[..])).await?;
    assert_eq!(junk, 3);
    let (b, u) = (bin.clone(), url.clone());
    let bad = tokio::task::spawn_blocking(move || run_cli(&b, &u, "cli1", &["--json", "verify"]))
        .await??;
    assert_eq!(
        bad.code,
        Some(1),
        "verify after junk: {} {}",
        bad.stdout,
        bad.stderr
    );
    let j = json_of(&bad)?;
    assert_eq!(j["ok"], false);
    assert_eq!(j["verified"], 2);
    assert_eq!(j["foreign"][0]["seq"], 3);
    assert_eq!(j["foreign"].as_array().map(Vec::len), Some(1));
    assert_eq!(j["chain_break"], serde_json::Value::Null);

    // Shamir: 2 of 3.
    let (b, u, k2, s2) = (bin.clone(), url.clone(), ks2.clone(), shares2.clone());
    let init2 = tokio::task::spawn_blocking(move || {
        run_cli(
            &b,
            &u,
            "cli2",
            &[
                "--json",
                "init",
                "--keystore",
                &k2,
                "--shares",
                "3",
                "--threshold",
                "2",
                "--share-dir",
                &s2,
            ],
        )
    })
    .await??;
    assert_eq!(init2.code, Some(0), "init --shares: {}", init2.stderr);
    let j = json_of(&init2)?;
    let files: Vec<String> = j["share_files"]
        .as_array()
        .context("share_files")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    assert_eq!(files.len(), 3);

    let (b, u, k2, f) = (bin.clone(), url.clone(), ks2.clone(), files.clone());
    let demo = tokio::task::spawn_blocking(move || {
        run_cli(
            &b,
            &u,
            "cli2",
            &[
                "demo",
                "--keystore",
                &k2,
                "--share-file",
                &f[0],
                "--share-file",
                &f[2],
            ],
        )
    })
    .await??;
    assert_eq!(demo.code, Some(0), "demo: {}\n{}", demo.stdout, demo.stderr);
    assert!(
        demo.stdout.contains("OK: the chain verifies"),
        "{}",
        demo.stdout
    );

    let (b, u, k2, f) = (bin.clone(), url.clone(), ks2.clone(), files.clone());
    let one = tokio::task::spawn_blocking(move || {
        run_cli(
            &b,
            &u,
            "cli2",
            &["demo", "--keystore", &k2, "--share-file", &f[1]],
        )
    })
    .await??;
    assert_ne!(
        one.code,
        Some(0),
        "demo with one share of 2: {}",
        one.stdout
    );
    assert!(one.stderr.contains("needed"), "{}", one.stderr);

    // The demo's events verify, pinned to the root key of the share-protected keystore.
    let info = custody::read_keystore_info(Path::new(&ks2))?;
    let conn2 = within(10, ledger_conn(&url, "cli2")).await?;
    let report = within(20, verify(&conn2, info.root_public)).await?;
    assert!(report.is_clean());
    assert!(report.verified > 2, "demo appended events");
    Ok(())
}

/// A request id the server's duplicate window knows but the writer cannot find in the chain
/// (here: a stray message that took the id) is refused alone with `DuplicateUnknown`; the other
/// requests batched with it are still stored, and the writer keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_duplicate_request_id_is_isolated() -> Result<()> {
    let server = NatsServer::start()?;
    within(60, async {
        let (conn, secrets) = setup(&server.url(), "dupiso", &StreamSettings::default()).await?;
        let appender = open_writer(&conn, &secrets, false).await?;
        let taken = draft("taken");
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(Bytes::from_static(b"stray"))
            .message_id(taken.request_id.to_string());
        let stray_seq = conn
            .js
            .send_publish(format!("keyledger.{}.ev._._", conn.names.ledger), msg)
            .await?
            .await?
            .sequence;
        let others = drafts("other", 5);
        let mut call = vec![taken.clone()];
        call.extend(others.clone());
        match appender.append_all(call).await {
            Err(ledger::nats::AppendError::DuplicateUnknown(id)) => {
                ensure!(id == taken.request_id, "refused {id}, not the taken id")
            }
            other => bail!("expected DuplicateUnknown, got {other:?}"),
        }
        let later = appender.append(draft("later")).await?;
        ensure!(!later.already_present);
        let stored = stored_request_ids_allowing_foreign(&conn, secrets.root_public()).await?;
        for d in &others {
            ensure!(
                stored.get(&d.request_id) == Some(&1),
                "{} not stored once",
                d.request_id
            );
        }
        ensure!(
            !stored.contains_key(&taken.request_id),
            "the taken id was appended"
        );
        let report = verify(&conn, secrets.root_public()).await?;
        ensure!(report.chain_break.is_none());
        ensure!(report.foreign.iter().map(|f| f.seq).collect::<Vec<_>>() == [stray_seq]);
        Ok(())
    })
    .await
}

async fn stored_request_ids_allowing_foreign(
    conn: &LedgerConn,
    root: Bytes32,
) -> Result<HashMap<RequestId, u32>> {
    let (out, broken, _) = check_all(conn, root).await?;
    ensure!(broken.is_none(), "chain broken: {broken:?}");
    let mut count: HashMap<RequestId, u32> = HashMap::new();
    for c in &out {
        if let Checked::Event(v) = c {
            *count.entry(v.event().request_id.clone()).or_default() += 1;
        }
    }
    Ok(count)
}

// ---------------------------------------------------------------------------------------------
// Optimistic concurrency on keys
// ---------------------------------------------------------------------------------------------

fn on_key(key: &str, reason: &str) -> Result<Draft> {
    Ok(Draft {
        request_id: RequestId::random(),
        actor: alice(),
        context: None,
        body: KeyStateChanged {
            key: KeyId::new(key)?,
            from: KeyState::Active,
            to: KeyState::Suspended,
            reason: reason.to_owned(),
        }
        .into(),
    })
}

/// Two writer replicas both decide on the state of key k1 as of its last change; both append
/// guarded by that state. Exactly one wins; the other gets `Conflict` naming the winner's seq
/// and appends nothing, also when the loser had not yet seen the winner's event (it learns it
/// when its batch is refused for the expected stream sequence). A guard for "key absent" (0)
/// fails once the key exists; guards of other keys are independent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_appends_on_one_key_never_both_apply() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(60, async {
        let (conn, secrets) = setup(&url, "guards", &StreamSettings::default()).await?;
        let a = open_writer(&conn, &secrets, false).await?;
        let b = open_writer(&ledger_conn(&url, "guards").await?, &secrets, false).await?;
        let k1 = KeyId::new("k1")?;
        let created = a
            .append_guarded(
                vec![on_key("k1", "first change")?],
                vec![KeyGuard {
                    key: k1.clone(),
                    expected: 0,
                }],
            )
            .await?;
        assert_eq!(created[0].seq, 3);
        // b has not seen seq 3; its guard "k1 absent" must still fail.
        let err = b
            .append_guarded(
                vec![on_key("k1", "stale absent")?],
                vec![KeyGuard {
                    key: k1.clone(),
                    expected: 0,
                }],
            )
            .await
            .expect_err("k1 exists");
        assert!(
            matches!(
                &err,
                AppendError::Conflict {
                    expected: 0,
                    actual: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        // Both race with the same expectation, many rounds.
        let mut expected = 3;
        for round in 0..20 {
            let g = || {
                vec![KeyGuard {
                    key: k1.clone(),
                    expected,
                }]
            };
            let (ra, rb) = tokio::join!(
                a.append_guarded(vec![on_key("k1", &format!("a{round}"))?], g()),
                b.append_guarded(vec![on_key("k1", &format!("b{round}"))?], g()),
            );
            let winners: Vec<u64> = [&ra, &rb]
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|v| v[0].seq))
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {ra:?} {rb:?}");
            let loser = if ra.is_ok() { rb } else { ra };
            match loser {
                Err(AppendError::Conflict { actual, .. }) => assert_eq!(actual, winners[0]),
                other => panic!("round {round}: {other:?}"),
            }
            expected = winners[0];
        }
        // Unguarded appends and other keys are unaffected.
        let other = a
            .append_guarded(
                vec![on_key("k2", "independent")?],
                vec![KeyGuard {
                    key: KeyId::new("k2")?,
                    expected: 0,
                }],
            )
            .await?;
        assert_eq!(other[0].seq, expected + 1);
        let report = verify(&conn, secrets.root_public()).await?;
        assert!(report.is_clean());
        assert_eq!(conn.last_seq().await?, 2 + 1 + 20 + 1);
        Ok(())
    })
    .await
}
