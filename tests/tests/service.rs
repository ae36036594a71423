//! The key service end to end, against a real nats-server: every operation through the Rust
//! client, policy decisions through events, refusals in the ledger, bad input, replicas.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ed25519_dalek::SigningKey;
use zeroize::Zeroizing;

use api::client::{CallOptions, Client, ClientError};
use api::wire::*;
use keyledger_tests::fixture::{connect, test_config, token_with, Ledger, ISSUER};
use keyledger_tests::harness::{NatsCluster, NatsServer};
use ledger::event::{
    EventBody, IssuerRevoked, IssuerTrusted, KeyState, KeyType, Operation, PlatformEnrolled,
};
use ledger::nats::StreamSettings;
use ledger::quote::Quote;
use ledger::transport::{TransportContext, TransportSecret};
use ledger::{Bytes32, KeyId, LedgerId, RequestId};
use projector::token::IssuerKey;

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

fn aes(name: &str) -> CreateArgs {
    typed(name, KeyType::Aes256Gcm)
}

fn typed(name: &str, key_type: KeyType) -> CreateArgs {
    CreateArgs {
        name: name.into(),
        key_type,
        exportable: false,
        rotation_period_s: Some(86_400),
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

/// All `RequestRefused` codes in the ledger with their counts.
async fn refusals(l: &Ledger) -> Result<HashMap<String, u64>> {
    let (report, events) = l.verify().await?;
    ensure!(report.is_clean(), "ledger verifies: {report:?}");
    let mut out = HashMap::new();
    for v in events {
        if let EventBody::RequestRefused(r) = &v.event().body {
            *out.entry(r.code.clone()).or_default() += u64::from(r.count);
        }
    }
    Ok(out)
}

/// Opens material sealed to `secret` for `key`/`version`.
fn open_sealed(
    l: &Ledger,
    secret: &TransportSecret,
    key: &str,
    version: u32,
    s: &SealedForTransport,
) -> Result<Zeroizing<Vec<u8>>> {
    let sealed = ledger::transport::TransportSealed {
        ephemeral_public: Bytes32(s.ephemeral_public.0.as_slice().try_into()?),
        recipient: Bytes32(s.recipient.0.as_slice().try_into()?),
        nonce: serde_bytes::ByteBuf::from(s.nonce.0.clone()),
        ciphertext: serde_bytes::ByteBuf::from(s.ciphertext.0.clone()),
    };
    let ledger_id = LedgerId::new(&l.id)?;
    let key = KeyId::new(key)?;
    let request_id = RequestId::new(s.request_id.clone())?;
    Ok(secret.open(
        &TransportContext {
            ledger: &ledger_id,
            key: &key,
            version,
            request_id: &request_id,
        },
        &sealed,
    )?)
}

// ---------------------------------------------------------------------------------------------

/// A key's whole life through the client: create, encrypt/decrypt with associated data,
/// rotate, old ciphertexts still decrypt, rewrap to the latest version, data keys with and
/// without plaintext, grant and revoke, minimum versions, scheduled destruction (not due, then
/// due), destroy, and decrypting with a destroyed version fails. The ledger verifies and holds
/// every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_whole_life_through_the_client() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(90, async {
        let l = Ledger::init(&url, "life", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let admin = l
            .client(&url, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;
        let alice = l.client(&url, &l.token("alice", "acme", &[])).await?;

        let k = admin.create(&aes("payments")).await?;
        assert_eq!(
            (k.state, k.latest_version, k.tenant.as_str()),
            (KeyState::Active, 1, "acme")
        );
        let key = k.key.clone();
        // Using material needs a grant, even for the tenant admin.
        assert_eq!(code(admin.encrypt(&key, b"x", None).await), "forbidden");
        let g = admin
            .grant(&grant(
                &key,
                WireGrantee::Principal("alice".into()),
                &[
                    Operation::Encrypt,
                    Operation::Decrypt,
                    Operation::Rewrap,
                    Operation::GenerateDataKey,
                ],
            ))
            .await?;
        let c1 = alice.encrypt(&key, b"card 4111", Some(b"order-1")).await?;
        assert!(c1.ciphertext.starts_with("kl:v1:"), "{}", c1.ciphertext);
        let p1 = alice
            .decrypt(&key, &c1.ciphertext, Some(b"order-1"))
            .await?;
        assert_eq!(p1.plaintext.0, b"card 4111");
        assert_eq!(
            code(alice.decrypt(&key, &c1.ciphertext, Some(b"order-2")).await),
            "decrypt-failed"
        );
        let r = admin.rotate(&key).await?;
        assert_eq!(r.latest_version, 2);
        let c2 = alice.encrypt(&key, b"new", None).await?;
        assert_eq!(c2.version, 2);
        assert_eq!(
            alice
                .decrypt(&key, &c1.ciphertext, Some(b"order-1"))
                .await?
                .version,
            1,
            "old ciphertexts decrypt after rotation"
        );
        let rw = alice.rewrap(&key, &c1.ciphertext, Some(b"order-1")).await?;
        assert!(rw.ciphertext.starts_with("kl:v2:"));
        assert_eq!(
            alice
                .decrypt(&key, &rw.ciphertext, Some(b"order-1"))
                .await?
                .plaintext
                .0,
            b"card 4111"
        );
        // Data keys: without plaintext, and with it sealed to a transport key.
        let dk = alice
            .generate_data_key(
                &DataKeyArgs {
                    key: key.clone(),
                    bytes: None,
                    aad: None,
                    with_plaintext: false,
                    transport_key: None,
                },
                &CallOptions::default(),
            )
            .await?;
        assert!(dk.plaintext_sealed.is_none());
        let wrapped_dk = alice.decrypt(&key, &dk.ciphertext, None).await?;
        assert_eq!(wrapped_dk.plaintext.0.len(), 32);
        let mut args = DataKeyArgs {
            key: key.clone(),
            bytes: Some(16),
            aad: None,
            with_plaintext: true,
            transport_key: None,
        };
        assert_eq!(
            code(
                alice
                    .generate_data_key(&args, &CallOptions::default())
                    .await
            ),
            "transport-key-required"
        );
        let tk = TransportSecret::generate();
        args.transport_key = Some(B64(tk.public().0.to_vec()));
        let dk2 = alice
            .generate_data_key(&args, &CallOptions::default())
            .await?;
        let plain = open_sealed(&l, &tk, &key, 2, dk2.plaintext_sealed.as_ref().unwrap())?;
        assert_eq!(plain.len(), 16);
        assert_eq!(
            alice
                .decrypt(&key, &dk2.ciphertext, None)
                .await?
                .plaintext
                .0,
            plain.to_vec(),
            "the sealed data key is the one the ciphertext wraps"
        );
        // Minimum decryption version: v1 ciphertexts stop decrypting.
        let b = admin
            .set_versions(&SetVersionsArgs {
                key: key.clone(),
                min_encrypt_version: None,
                min_decrypt_version: Some(2),
            })
            .await?;
        assert_eq!(b.min_decrypt_version, 2);
        assert_eq!(
            code(alice.decrypt(&key, &c1.ciphertext, Some(b"order-1")).await),
            "version-not-usable"
        );
        // Revoke: alice is refused again.
        admin.revoke(&key, &g.grant_id).await?;
        assert_eq!(code(alice.encrypt(&key, b"x", None).await), "forbidden");
        // Destroy version 1 only (below the minimum), then the whole key after its wait.
        let d1 = admin.destroy(&key, Some(vec![1])).await?;
        assert!(d1.versions[0].destroyed && !d1.versions[1].destroyed);
        assert_eq!(code(admin.destroy(&key, None).await), "destruction-not-due");
        let s = admin.schedule_destroy(&key, None).await?;
        assert!(s.destroy_after_ms.is_some());
        assert_eq!(code(admin.destroy(&key, None).await), "destruction-not-due");
        admin.cancel_destroy(&key).await?;
        let cancelled = admin.describe(&key).await?;
        assert!(cancelled.destroy_after_ms.is_none());
        admin.schedule_destroy(&key, Some(1)).await?;
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let gone = admin.destroy(&key, None).await?;
        assert_eq!(gone.state, KeyState::Destroyed);
        // Decrypting with a destroyed version fails (state and material both gone).
        let a2 = l.client(&url, &l.token("alice", "acme", &[])).await?;
        admin
            .grant(&grant(
                &key,
                WireGrantee::Principal("alice".into()),
                &[Operation::Decrypt],
            ))
            .await
            .expect_err("no grants on destroyed keys");
        assert_eq!(
            code(a2.decrypt(&key, &rw.ciphertext, Some(b"order-1")).await),
            "forbidden"
        );
        svc.stop().await;

        let (report, events) = l.verify().await?;
        ensure!(report.is_clean(), "{report:?}");
        let tags: Vec<&str> = events.iter().map(|v| v.event().body.tag()).collect();
        for t in [
            "KeyCreated",
            "GrantAdded",
            "KeysUsed",
            "KeyRotated",
            "KeyVersionsBounded",
            "GrantRevoked",
            "KeyDestroyed",
            "KeyDestructionScheduled",
            "KeyDestructionCancelled",
            "RequestRefused",
        ] {
            ensure!(tags.contains(&t), "no {t} in {tags:?}");
        }
        Ok(())
    })
    .await
}
