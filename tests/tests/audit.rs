//! Checkpoints, proofs, bundles and the witness, against a real nats-server: a replica publishes
//! signed checkpoints; inclusion and consistency proofs verify offline; a tampered bundle, a
//! truncated tail, a rollback and a fork are each detected and named.

use std::future::Future;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use ed25519_dalek::SigningKey;

use api::audit::{self, Bundle, CheckpointCheck, Rebuilt, WitnessRefusal};
use api::wire::*;
use keyledger_tests::fixture::{test_config, Ledger};
use keyledger_tests::harness::NatsServer;
use ledger::event::{Actor, KeyState, KeyStateChanged, KeyType, Operation};
use ledger::nats::StreamSettings;
use ledger::sign::{chain_and_sign, Draft, EventSigner};
use ledger::{KeyId, LedgerId, RequestId};

async fn within<T>(secs: u64, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .with_context(|| format!("timed out after {secs} s"))?
}

fn aes(name: &str) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        key_type: KeyType::Aes256Gcm,
        exportable: false,
        rotation_period_s: None,
        split: None,
        labels: Default::default(),
        pre_active: false,
    }
}

/// Waits until a published log checkpoint covers the whole current log.
async fn checkpointed(l: &Ledger) -> Result<(Rebuilt, Vec<String>)> {
    for _ in 0..100 {
        let r = audit::rebuild(&l.conn, Some(l.secrets.root_public()), true, |_, _| {}).await?;
        let notes = audit::notes(&l.conn, &l.conn.names.checkpoint_subject()).await?;
        let covered = notes
            .iter()
            .any(|n| matches!(r.check_checkpoint(n, &[]), CheckpointCheck::Consistent { size, .. } if size == r.tree.size()));
        if covered {
            return Ok((r, notes));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no checkpoint covered the log")
}

/// A log built from `msgs` (a prefix of the real one, or a rewritten one).
fn log_of(ledger: &str, root: ledger::Bytes32, msgs: Vec<(u64, Bytes)>) -> Rebuilt {
    let mut r = Rebuilt::new(LedgerId::new(ledger).unwrap(), Some(root));
    r.fold(msgs, true);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_proofs_bundles_and_the_witness() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(120, async {
        let l = Ledger::init(&url, "audit", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let cp = audit::spawn_checkpointer(
            l.conn.clone(),
            svc.follower().clone(),
            l.secrets.writer.clone(),
            5,
            Duration::from_millis(200),
        );
        let admin = l
            .client(&url, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;
        let k = admin.create(&aes("audited")).await?;
        admin
            .grant(&GrantArgs {
                key: k.key.clone(),
                grantee: WireGrantee::Principal("ann".into()),
                operations: vec![Operation::Encrypt],
                conditions: WireConditions::default(),
                grant_id: None,
            })
            .await?;
        let (first, first_notes) = checkpointed(&l).await?;
        for i in 0..6 {
            admin
                .encrypt(&k.key, format!("m{i}").as_bytes(), None)
                .await?;
        }
        admin.rotate(&k.key).await?;
        let (r, notes) = checkpointed(&l).await?;
        ensure!(notes.len() >= 2, "several checkpoints: {}", notes.len());

        // The whole log verifies against every checkpoint.
        let report = audit::AuditReport::from_rebuilt(&r, &notes, &[], &[]);
        ensure!(report.ok, "{report:?}");
        ensure!(report.checkpoints.iter().all(CheckpointCheck::is_ok));

        // Inclusion proof of the key's creation, checked offline; any change fails.
        let created_seq = k.created_seq;
        let proof = audit::prove(&r, created_seq, &notes)?;
        audit::check_inclusion(&proof, None)?;
        let json = serde_json::to_string(&proof)?;
        let proof: audit::InclusionProof = serde_json::from_str(&json)?;
        audit::check_inclusion(&proof, None)?;
        let mut bad = proof.clone();
        bad.index += 1;
        ensure!(audit::check_inclusion(&bad, None).is_err(), "another index");
        let mut bad = proof.clone();
        let mut entry = hex::decode(&bad.entry)?;
        entry[20] ^= 1;
        bad.entry = hex::encode(entry);
        ensure!(audit::check_inclusion(&bad, None).is_err(), "altered entry");
        if let Some(p) = proof.proof.first() {
            let mut bad = proof.clone();
            bad.proof[0] = hex::encode([0u8; 32]);
            ensure!(
                *p != bad.proof[0] && audit::check_inclusion(&bad, None).is_err(),
                "altered path"
            );
        }
        let other_key = audit::witness_key("someone", &SigningKey::from_bytes(&[5; 32]))?;
        ensure!(
            audit::check_inclusion(&proof, Some(&other_key.to_string())).is_err(),
            "a log key the auditor does not trust"
        );

        // Consistency between the first and the latest checkpoint.
        let old = first_notes.last().context("first checkpoint")?;
        let new = notes.last().context("latest")?;
        let c = audit::prove_consistency(&r, old, new)?;
        ensure!(c.old_size == first.tree.size() && c.new_size == r.tree.size());
        audit::check_consistency(&c, None)?;
        let mut bad = c.clone();
        if !bad.proof.is_empty() {
            bad.proof.pop();
            ensure!(
                audit::check_consistency(&bad, None).is_err(),
                "truncated proof"
            );
        }

        // A bundle verifies with no NATS; tampering is detected and named.
        let b = audit::export(&r, 1, &notes, &[])?;
        let (_, rep) = audit::verify_bundle(&b, Some(l.secrets.root_public()), &[])?;
        ensure!(rep.ok && rep.events == r.tree.size(), "{rep:?}");
        let text = serde_json::to_string(&b)?;
        let b2: Bundle = serde_json::from_str(&text)?;
        ensure!(audit::verify_bundle(&b2, None, &[])?.1.ok);
        // (a) one byte of one event altered: foreign at that sequence, and the next event no
        // longer links (the break names its sequence).
        let mut t = b.clone();
        let victim = t.messages.len() / 2;
        let (vseq, vhex) = t.messages[victim].clone();
        let mut bytes = hex::decode(&vhex)?;
        bytes[30] ^= 0x40;
        t.messages[victim].1 = hex::encode(bytes);
        let (_, rep) = audit::verify_bundle(&t, Some(l.secrets.root_public()), &[])?;
        ensure!(!rep.ok);
        ensure!(
            rep.foreign
                .iter()
                .any(|f| f.starts_with(&format!("seq {vseq}:"))),
            "the altered event is named: {rep:?}"
        );
        ensure!(
            rep.chain_break
                .as_deref()
                .is_some_and(|b| b.contains(&format!("{}", vseq + 1))),
            "{rep:?}"
        );
        // (b) one event removed: a gap at the next sequence.
        let mut t = b.clone();
        let (gone, _) = t.messages.remove(victim);
        let (_, rep) = audit::verify_bundle(&t, Some(l.secrets.root_public()), &[])?;
        ensure!(
            !rep.ok
                && rep
                    .chain_break
                    .as_deref()
                    .is_some_and(|b| b.contains(&format!("{}", gone + 1))),
            "{rep:?}"
        );
        // (c) a checkpoint altered: invalid.
        let mut t = b.clone();
        let last = t.checkpoints.len() - 1;
        t.checkpoints[last] = t.checkpoints[last].replacen(
            &format!("\n{}\n", r.tree.size()),
            &format!("\n{}\n", r.tree.size() - 1),
            1,
        );
        let (_, rep) = audit::verify_bundle(&t, Some(l.secrets.root_public()), &[])?;
        ensure!(
            !rep.ok
                && rep
                    .checkpoints
                    .iter()
                    .any(|c| matches!(c, CheckpointCheck::Invalid { .. })),
            "{rep:?}"
        );
        // (d) a bundle under another root key is refused from genesis on.
        let stranger = ledger::Bytes32(SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes());
        let (_, rep) = audit::verify_bundle(&b, Some(stranger), &[])?;
        ensure!(!rep.ok, "{rep:?}");

        // (e) the bundle carries the enrolled signers and consistency proofs between its
        // checkpoints; altering either is detected.
        ensure!(
            b.signers == vec![l.secrets.writer_public().to_hex()],
            "{:?}",
            b.signers
        );
        ensure!(
            !b.consistency.is_empty(),
            "consistency proofs between checkpoints"
        );
        let mut t = b.clone();
        t.signers.push(stranger.to_hex());
        ensure!(
            !audit::verify_bundle(&t, Some(l.secrets.root_public()), &[])?
                .1
                .ok,
            "extra signer"
        );
        let mut t = b.clone();
        if let Some(p) = t.consistency.iter_mut().find(|p| !p.proof.is_empty()) {
            p.proof[0] = hex::encode([1u8; 32]);
            ensure!(
                !audit::verify_bundle(&t, Some(l.secrets.root_public()), &[])?
                    .1
                    .ok,
                "altered consistency proof"
            );
        }

        // The witness: cosigns what it checked, publishes it; the cosignature verifies.
        let wkey = SigningKey::from_bytes(&[7; 32]);
        let wvkey = audit::witness_key("witness-1", &wkey)?;
        let now = 1_800_000_000;
        let (cosigned, state) = audit::witness(&r, None, new, "witness-1", &wkey, now)
            .map_err(|e| anyhow::anyhow!(e))?;
        audit::publish_cosigned(&l.conn, "witness-1", &cosigned, state.size).await?;
        let witnessed = audit::notes(&l.conn, &l.conn.names.witness_subject("witness-1")).await?;
        let rep =
            audit::AuditReport::from_rebuilt(&r, &notes, &witnessed, std::slice::from_ref(&wvkey));
        ensure!(rep.ok && rep.witnessed == 1, "{rep:?}");

        // Rollback: an older checkpoint offered after a newer one was witnessed.
        match audit::witness(&r, Some(&state), old, "witness-1", &wkey, now + 1) {
            Err(WitnessRefusal::Rollback { witnessed, offered }) => {
                ensure!(witnessed == r.tree.size() && offered == first.tree.size())
            }
            other => bail!("rollback not refused: {other:?}"),
        }
        // Truncated tail: the stream now holds fewer events than a witnessed (or auditor-saved)
        // checkpoint commits to.
        let keep = r.leaf_seqs[(first.tree.size() + 2) as usize];
        let prefix: Vec<(u64, Bytes)> = r
            .messages
            .iter()
            .filter(|(s, _)| *s <= keep)
            .cloned()
            .collect();
        let truncated = log_of("audit", l.secrets.root_public(), prefix.clone());
        match truncated.check_checkpoint(&state.note, &[]) {
            CheckpointCheck::Truncated { size, have } => {
                ensure!(size == r.tree.size() && have < size)
            }
            other => bail!("truncation not detected: {other:?}"),
        }
        match audit::witness(&truncated, Some(&state), new, "witness-1", &wkey, now + 2) {
            Err(WitnessRefusal::Truncated { .. }) => {}
            other => bail!("witness did not refuse a truncated log: {other:?}"),
        }
        // Fork: history rewritten after the prefix (validly signed by the writer key, as a
        // rogue operator could), grown past the witnessed size, with a fresh signed checkpoint.
        let writer = EventSigner::new(l.secrets.writer.clone());
        let tip = truncated.state.tip();
        let drafts: Vec<Draft> = (0..(r.tree.size() - truncated.tree.size() + 2))
            .map(|i| Draft {
                request_id: RequestId::random(),
                actor: Actor::system("rogue"),
                context: None,
                body: KeyStateChanged {
                    key: KeyId::new(&k.key).unwrap(),
                    from: KeyState::Active,
                    to: KeyState::Suspended,
                    reason: format!("rewritten {i}"),
                }
                .into(),
            })
            .collect();
        let (signed, _) = chain_and_sign(&writer, &LedgerId::new("audit")?, tip, 1, &drafts);
        let mut forked_msgs = prefix;
        let mut seq = keep;
        for s in signed {
            seq += 1;
            forked_msgs.push((seq, s.entry));
        }
        let forked = log_of("audit", l.secrets.root_public(), forked_msgs);
        ensure!(
            forked.chain_break.is_none() && forked.foreign.is_empty(),
            "the fork is a valid chain on its own"
        );
        match forked.check_checkpoint(&state.note, &[]) {
            CheckpointCheck::Forked { size, .. } => ensure!(size == r.tree.size()),
            other => bail!("fork not detected: {other:?}"),
        }
        let rogue_note = ledger::checkpoint::Checkpoint::new(
            l.conn.names.origin(),
            forked.tree.size(),
            forked.tree.current_root(),
        )?
        .sign(&l.conn.names.origin(), &l.secrets.writer)?
        .to_string();
        match audit::witness(
            &forked,
            Some(&state),
            &rogue_note,
            "witness-1",
            &wkey,
            now + 3,
        ) {
            Err(WitnessRefusal::Fork { size }) => ensure!(size == r.tree.size()),
            other => bail!("witness cosigned a fork: {other:?}"),
        }
        // Consistency from the witnessed checkpoint to the rogue one cannot be proven.
        ensure!(
            audit::prove_consistency(&forked, &state.note, &rogue_note).is_err()
                || audit::check_consistency(
                    &audit::prove_consistency(&forked, &state.note, &rogue_note)?,
                    None
                )
                .is_err()
        );

        cp.abort();
        svc.stop().await;
        Ok(())
    })
    .await
}
