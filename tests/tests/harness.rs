//! Integration tests of the nats-server harness itself, against real servers.
//!
//! * a single node keeps a file stream's messages across a graceful `restart()`
//!   and across `kill9()` + `restart()`;
//! * a 3-node cluster accepts an R3 stream, keeps accepting publishes after the
//!   stream leader is SIGKILLed, and the killed node rejoins with `restart(i)`;
//! * the raw baselines run end to end on a single node.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use keyledger_tests::baseline::{self, create_stream_retrying, make_payloads};
use keyledger_tests::harness::{NatsCluster, NatsServer};
use ledger::nats::batch::{BatchOutcome, BatchPublisher, OutMsg};

/// Ack timeout for test contexts: short, so a dead leader is noticed quickly.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a publish may be retried while a cluster re-elects.
const FAILOVER_BUDGET: Duration = Duration::from_secs(20);

fn context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .build(client)
}

fn file_stream(name: &str, subject: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Publishes `count` messages `<prefix>-<i>` one by one, awaiting every ack.
async fn publish_n(js: &jetstream::Context, subject: &str, prefix: &str, count: u64) -> Result<()> {
    for i in 0..count {
        js.publish(subject.to_owned(), Bytes::from(format!("{prefix}-{i}")))
            .await?
            .await
            .with_context(|| format!("ack for {prefix}-{i}"))?;
    }
    Ok(())
}

/// Number of messages the stream currently holds (asks the stream leader).
async fn message_count(js: &jetstream::Context, name: &str) -> Result<u64> {
    let mut stream = js.get_stream(name).await?;
    Ok(stream.info().await?.state.messages)
}

/// Publishes one message with a fixed `Nats-Msg-Id`, retrying on the errors a
/// leader election produces (503 → `StreamNotFound`, `TimedOut`, broken pipe),
/// for at most [`FAILOVER_BUDGET`]. Returns the ack's stream sequence.
async fn publish_retrying(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Bytes,
) -> Result<u64> {
    let deadline = Instant::now() + FAILOVER_BUDGET;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(msg_id);
        let outcome = match js.send_publish(subject.to_owned(), message).await {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(ack) => return Ok(ack.sequence),
            Err(err)
                if matches!(
                    err.kind(),
                    PublishErrorKind::StreamNotFound
                        | PublishErrorKind::TimedOut
                        | PublishErrorKind::BrokenPipe
                        | PublishErrorKind::Other
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                bail!("publish {msg_id} failed after {attempts} attempts: {err}")
            }
        }
    }
}

/// Retries `stream.info()` until the stream reports a leader, bounded.
async fn stream_leader(js: &jetstream::Context, name: &str) -> Result<String> {
    let deadline = Instant::now() + FAILOVER_BUDGET;
    loop {
        let leader = match js.get_stream(name).await {
            Ok(mut stream) => stream
                .info()
                .await
                .ok()
                .and_then(|info| info.cluster.as_ref().and_then(|c| c.leader.clone())),
            Err(_) => None,
        };
        match leader {
            Some(leader) if !leader.is_empty() => return Ok(leader),
            _ if Instant::now() >= deadline => bail!("stream {name} has no leader"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_keeps_messages_across_restart_and_kill9() -> Result<()> {
    let mut server = NatsServer::start()?;
    assert!(server.url().starts_with("nats://127.0.0.1:"));
    let port = server.port();
    let store = server.store_dir().to_path_buf();

    let js = context(async_nats::connect(server.url()).await?);
    js.create_stream(file_stream("HARNESS", "harness.>", 1))
        .await?;
    publish_n(&js, "harness.a", "before", 10).await?;
    drop(js);

    server.restart()?;
    let log = std::fs::read_to_string(server.log_path())?;
    assert!(log.contains("Server Exiting"), "restart stops gracefully");
    assert_eq!(server.port(), port, "restart keeps the port");
    assert_eq!(server.store_dir(), store, "restart keeps the store");
    let js = context(async_nats::connect(server.url()).await?);
    assert_eq!(message_count(&js, "HARNESS").await?, 10);
    publish_n(&js, "harness.a", "between", 5).await?;
    drop(js);

    server.kill9()?;
    assert!(!server.is_running());
    server.restart()?;
    let js = context(async_nats::connect(server.url()).await?);
    assert_eq!(message_count(&js, "HARNESS").await?, 15);
    let ack = js
        .publish("harness.a", Bytes::from_static(b"after"))
        .await?
        .await?;
    assert_eq!(ack.sequence, 16, "sequence continues after kill -9");
    let stream = js.get_stream("HARNESS").await?;
    let last = stream.get_last_raw_message_by_subject("harness.a").await?;
    assert_eq!(&last.payload[..], b"after");
    drop(js);

    server.stop()?;
    assert!(!server.is_running());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_r3_survives_kill9_of_the_stream_leader() -> Result<()> {
    let mut cluster = NatsCluster::start(3)?;
    assert_eq!(cluster.urls().len(), 3);
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.urls())
        .await?;
    let js = context(client);
    create_stream_retrying(&js, file_stream("HARNESS_R3", "r3.>", 3)).await?;

    for i in 0..20u64 {
        let seq =
            publish_retrying(&js, "r3.a", &format!("m{i}"), Bytes::from(format!("{i}"))).await?;
        ensure!(seq == i + 1, "message m{i} stored at {seq}");
    }

    let leader = stream_leader(&js, "HARNESS_R3").await?;
    let victim = cluster
        .index_of(&leader)
        .with_context(|| format!("leader {leader} is not a cluster node"))?;
    cluster.kill9(victim)?;

    // The next publish succeeds once a new leader is elected (retried, same msg-id).
    let seq = publish_retrying(&js, "r3.a", "m20", Bytes::from_static(b"20")).await?;
    assert_eq!(seq, 21);
    let new_leader = stream_leader(&js, "HARNESS_R3").await?;
    assert_ne!(new_leader, leader, "a surviving node leads the stream");
    assert_eq!(message_count(&js, "HARNESS_R3").await?, 21);

    // The killed node comes back on its old ports and store, and catches up.
    cluster.restart(victim)?;
    let seq = publish_retrying(&js, "r3.a", "m21", Bytes::from_static(b"21")).await?;
    assert_eq!(seq, 22);
    let deadline = Instant::now() + FAILOVER_BUDGET;
    loop {
        let (status, body) = cluster.node(victim).monitor_get("/jsz?streams=true")?;
        ensure!(status == 200, "/jsz answered {status}");
        let jsz: serde_json::Value = serde_json::from_str(&body)?;
        let messages = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|acc| acc["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == "HARNESS_R3")
            .and_then(|s| s["state"]["messages"].as_u64());
        if messages == Some(22) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "restarted node reports {messages:?} messages, expected 22"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_baselines_run_on_a_single_node() -> Result<()> {
    let server = NatsServer::start()?;
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client.clone());
    let payloads = make_payloads(1_000, 64);

    js.create_stream(baseline::bench_stream_config("B_PIPE", "b.pipe", 1, false))
        .await?;
    let rate = baseline::raw_pipelined_publish(&js, "b.pipe", &payloads, 64).await?;
    assert_eq!(rate.events, 1_000);
    assert_eq!(message_count(&js, "B_PIPE").await?, 1_000);

    js.create_stream(baseline::bench_stream_config(
        "B_ATOMIC", "b.atomic", 1, true,
    ))
    .await?;
    // 1000 = 3 full batches of 300 + one of 100; a 1-message batch is covered too.
    let rate =
        baseline::raw_atomic_batch_publish(&client, "B_ATOMIC", "b.atomic", &payloads, 300).await?;
    assert_eq!(rate.events, 1_000);
    let rate =
        baseline::raw_atomic_batch_publish(&client, "B_ATOMIC", "b.atomic", &payloads[..1], 300)
            .await?;
    assert_eq!(rate.events, 1);
    assert_eq!(message_count(&js, "B_ATOMIC").await?, 1_001);

    let rate = baseline::raw_ordered_replay(&js, "B_PIPE", 1_000).await?;
    assert_eq!(rate.events, 1_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_batch_with_stale_head_is_refused_whole() -> Result<()> {
    let server = NatsServer::start()?;
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client.clone());
    js.create_stream(baseline::bench_stream_config("B_STALE", "b.stale", 1, true))
        .await?;
    js.publish("b.stale", Bytes::from_static(b"intruder"))
        .await?
        .await?;

    // A batch expecting head 0 while the stream is at 1.
    let mut publisher = BatchPublisher::new(client.clone()).await?;
    let msgs: Vec<OutMsg> = (0..3)
        .map(|i| OutMsg {
            subject: "b.stale".into(),
            msg_id: format!("stale-{i}"),
            payload: Bytes::from(format!("{i}")),
        })
        .collect();
    let outcome = publisher
        .publish(&msgs, Some(0), baseline::BATCH_REPLY_TIMEOUT)
        .await?;
    match outcome {
        BatchOutcome::Refused { err_code, .. } => assert_eq!(err_code, 10071),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(message_count(&js, "B_STALE").await?, 1, "nothing stored");
    Ok(())
}
