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

/// Every key type of DESIGN.md §4 is created (or imported) and used through the client:
/// AES-128/256 (encrypt), HMAC (mac/verify-mac), Ed25519 (sign/verify), X25519, secrets and
/// passphrases (exported sealed to a transport key), imported wrapped keys (stored as given),
/// and a 2-of-3 split key (used whole, released one share at a time; any two shares recombine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_through_the_client() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(90, async {
        let l = Ledger::init(&url, "types", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let admin = l
            .client(&url, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;
        let app = l.client(&url, &l.token("app", "acme", &[])).await?;
        let all_ops = [
            Operation::Encrypt,
            Operation::Decrypt,
            Operation::Sign,
            Operation::Verify,
            Operation::Mac,
            Operation::VerifyMac,
            Operation::GetMaterial,
        ];
        let make = |args: CreateArgs| {
            let admin = admin.clone();
            async move {
                let k = admin.create(&args).await?;
                admin
                    .grant(&grant(
                        &k.key,
                        WireGrantee::Principal("app".into()),
                        &all_ops,
                    ))
                    .await?;
                anyhow::Ok(k)
            }
        };
        // AES-128.
        let a128 = make(typed("a128", KeyType::Aes128Gcm)).await?;
        let c = app.encrypt(&a128.key, b"short key", None).await?;
        assert_eq!(
            app.decrypt(&a128.key, &c.ciphertext, None)
                .await?
                .plaintext
                .0,
            b"short key"
        );
        // HMAC.
        let h = make(typed("hmac", KeyType::HmacSha256)).await?;
        let tag = app.mac(&h.key, b"message").await?;
        assert!(app.verify_mac(&h.key, b"message", &tag.mac).await?);
        assert!(!app.verify_mac(&h.key, b"messagf", &tag.mac).await?);
        assert_eq!(
            code(app.encrypt(&h.key, b"x", None).await),
            "wrong-key-type"
        );
        // Ed25519: the public key is published; signatures verify locally too.
        let e = make(typed("ed", KeyType::Ed25519)).await?;
        let pk = e.versions[0].public_key.clone().context("public key")?;
        let sig = app.sign(&e.key, b"release v1").await?;
        assert!(app.verify(&e.key, b"release v1", &sig.signature).await?);
        assert!(!app.verify(&e.key, b"release v2", &sig.signature).await?);
        let (_, raw_sig) =
            parse_versioned(&sig.signature, "signature").map_err(|e| anyhow::anyhow!(e.message))?;
        assert!(api::crypto::verify(&pk.0, b"release v1", &raw_sig));
        // Exportable material of every other kind, sealed to a transport key.
        let tk = TransportSecret::generate();
        let export = |key: &str| GetMaterialArgs {
            key: key.into(),
            version: None,
            share: None,
            transport_key: Some(B64(tk.public().0.to_vec())),
        };
        for t in [KeyType::X25519, KeyType::Secret, KeyType::Passphrase] {
            let mut args = typed(&format!("{t}"), t);
            args.exportable = true;
            let k = make(args).await?;
            let m = app
                .get_material(&export(&k.key), &CallOptions::default())
                .await?;
            let plain = open_sealed(&l, &tk, &k.key, 1, &m.sealed)?;
            match t {
                KeyType::X25519 => {
                    let seed: [u8; 32] = plain[..].try_into()?;
                    let public =
                        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(seed));
                    assert_eq!(
                        k.versions[0].public_key.as_ref().unwrap().0,
                        public.to_bytes()
                    );
                }
                KeyType::Passphrase => assert!(std::str::from_utf8(&plain)?.len() >= 24),
                _ => assert_eq!(plain.len(), 32),
            }
            // Without a transport key material never leaves.
            let mut bare = export(&k.key);
            bare.transport_key = None;
            assert_eq!(
                code(app.get_material(&bare, &CallOptions::default()).await),
                "transport-key-required"
            );
        }
        // Not exportable: refused even with a grant.
        assert_eq!(
            code(
                app.get_material(&export(&a128.key), &CallOptions::default())
                    .await
            ),
            "not-exportable"
        );
        // Imported wrapped key: stored as given, returned as given.
        let blob = b"\x01wrapped-by-hsm-blob".to_vec();
        let w = admin
            .import(&ImportArgs {
                name: "from hsm".into(),
                key_type: KeyType::Wrapped,
                material: B64(blob.clone()),
                wrapped_by: Some("hsm-kek-7".into()),
                exportable: true,
                rotation_period_s: None,
                labels: BTreeMap::new(),
            })
            .await?;
        assert!(w.imported && w.wrapped_by.as_deref() == Some("hsm-kek-7"));
        admin
            .grant(&grant(
                &w.key,
                WireGrantee::Principal("app".into()),
                &[Operation::GetMaterial],
            ))
            .await?;
        let m = app
            .get_material(&export(&w.key), &CallOptions::default())
            .await?;
        assert_eq!(open_sealed(&l, &tk, &w.key, 1, &m.sealed)?.to_vec(), blob);
        // BYOK AES key: ciphertexts made locally with the same format decrypt in the service.
        let mine = [0x42u8; 32];
        let byok = admin
            .import(&ImportArgs {
                name: "byok".into(),
                key_type: KeyType::Aes256Gcm,
                material: B64(mine.to_vec()),
                wrapped_by: None,
                exportable: false,
                rotation_period_s: None,
                labels: BTreeMap::new(),
            })
            .await?;
        admin
            .grant(&grant(
                &byok.key,
                WireGrantee::Principal("app".into()),
                &[Operation::Decrypt],
            ))
            .await?;
        let local =
            api::crypto::encrypt(KeyType::Aes256Gcm, &mine, &byok.key, 1, b"made here", b"")
                .map_err(|e| anyhow::anyhow!(e))?;
        let pt = app.decrypt(&byok.key, &versioned(1, &local), None).await?;
        assert_eq!(pt.plaintext.0, b"made here");
        // Split key: used whole, released share by share; two shares recombine the material.
        let mut sargs = typed("split", KeyType::Aes256Gcm);
        sargs.split = Some(SplitArgs {
            threshold: 2,
            shares: 3,
        });
        sargs.exportable = true;
        let s = make(sargs).await?;
        assert_eq!(
            s.split,
            Some(SplitArgs {
                threshold: 2,
                shares: 3
            })
        );
        let sc = app.encrypt(&s.key, b"split secret", None).await?;
        assert_eq!(
            app.decrypt(&s.key, &sc.ciphertext, None).await?.plaintext.0,
            b"split secret"
        );
        let mut whole = export(&s.key);
        assert_eq!(
            code(app.get_material(&whole, &CallOptions::default()).await),
            "invalid-argument"
        );
        let mut shares = Vec::new();
        for i in [1u8, 3] {
            whole.share = Some(i);
            let m = app.get_material(&whole, &CallOptions::default()).await?;
            shares.push(open_sealed(&l, &tk, &s.key, 1, &m.sealed)?);
        }
        let material = api::crypto::combine(2, &shares).map_err(|e| anyhow::anyhow!(e))?;
        let (_, ct) =
            parse_versioned(&sc.ciphertext, "c").map_err(|e| anyhow::anyhow!(e.message))?;
        let opened = api::crypto::decrypt(KeyType::Aes256Gcm, &material, &s.key, 1, &ct, b"")
            .map_err(|e| anyhow::anyhow!(e))?;
        assert_eq!(&opened[..], b"split secret");
        // Random bytes.
        assert_eq!(admin.random(48).await?.len(), 48);
        assert_eq!(code(admin.random(4096).await), "invalid-argument");
        svc.stop().await;
        let (report, _) = l.verify().await?;
        ensure!(report.is_clean());
        Ok(())
    })
    .await
}

/// Identity and policy through the ledger (issue 3): issuer trust and revocation take effect
/// without a restart; a grant that requires attestation refuses an unattested caller and
/// releases material to an attested one sealed to its quote's transport key; stale, replayed,
/// forged and unexpected-measurement quotes are refused; every refusal is in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decisions_follow_the_ledger() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(90, async {
        let l = Ledger::init(&url, "policy", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let admin = l
            .client(&url, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;

        // A second issuer: unknown, then trusted, then revoked — no restart.
        let idp2 = IssuerKey::generate();
        let tok2 = token_with(&idp2, "idp-2", "ann2", "acme", &["tenant-admin"]);
        let c2 = l.client(&url, &tok2).await?;
        assert_eq!(code(c2.list(&ListArgs::default()).await), "issuer-unknown");
        l.record(IssuerTrusted {
            issuer: "idp-2".into(),
            public_key: Bytes32(idp2.public_key()),
            tenants: vec![ledger::TenantId::new("acme")?],
        })
        .await?;
        c2.list(&ListArgs::default()).await?;
        let globex = l
            .client(
                &url,
                &token_with(&idp2, "idp-2", "g", "globex", &["tenant-admin"]),
            )
            .await?;
        assert_eq!(
            code(globex.list(&ListArgs::default()).await),
            "issuer-tenant"
        );
        l.record(IssuerRevoked {
            issuer: "idp-2".into(),
            reason: "rotated out".into(),
        })
        .await?;
        assert_eq!(code(c2.list(&ListArgs::default()).await), "issuer-revoked");
        // Rotation of the main issuer's key: old tokens stop verifying.
        let fresh = IssuerKey::generate();
        let old_token = l.token("ann", "acme", &["tenant-admin"]);
        l.record(IssuerTrusted {
            issuer: ISSUER.into(),
            public_key: Bytes32(fresh.public_key()),
            tenants: vec![],
        })
        .await?;
        let stale = l.client(&url, &old_token).await?;
        assert_eq!(
            code(stale.list(&ListArgs::default()).await),
            "token-signature"
        );
        let admin = admin.with_token(token_with(&fresh, ISSUER, "ann", "acme", &["tenant-admin"]));
        let tok = |sub: &str| token_with(&fresh, ISSUER, sub, "acme", &[]);

        // A platform and a key whose export needs attestation with a given measurement.
        let attest = SigningKey::from_bytes(&[77; 32]);
        let measurement = [0x5au8; 32];
        l.record(PlatformEnrolled {
            platform: "tee-1".into(),
            attestation_key: Bytes32(attest.verifying_key().to_bytes()),
            group: "confidential".into(),
            measurements: vec![Bytes32(measurement)],
        })
        .await?;
        let mut args = aes("model-key");
        args.exportable = true;
        let k = admin.create(&args).await?;
        admin
            .grant(&GrantArgs {
                key: k.key.clone(),
                grantee: WireGrantee::PlatformGroup("confidential".into()),
                operations: vec![Operation::GetMaterial, Operation::Decrypt],
                conditions: WireConditions {
                    require_platform: true,
                    measurement: Some(B64(measurement.to_vec())),
                    ..WireConditions::default()
                },
                grant_id: Some("tee-only".into()),
            })
            .await?;
        let workload = l.client(&url, &tok("workload")).await?;
        let tk = TransportSecret::generate();
        let req = GetMaterialArgs {
            key: k.key.clone(),
            version: None,
            share: None,
            transport_key: Some(B64(tk.public().0.to_vec())),
        };
        // Unattested: refused.
        assert_eq!(
            code(workload.get_material(&req, &CallOptions::default()).await),
            "forbidden"
        );
        // Attested: fresh nonce, quote over it, material sealed to the quote's key.
        let quote_for = |nonce: &[u8], meas: [u8; 32], key: &SigningKey| -> Result<Quote> {
            Ok(Quote::sign(
                key,
                "tee-1",
                Bytes32(nonce.try_into()?),
                Bytes32(meas),
                tk.public(),
            ))
        };
        let n = workload.nonce().await?;
        let q = quote_for(&n.nonce.0, measurement, &attest)?;
        let opts = CallOptions {
            request_id: None,
            quote: Some(q.clone()),
        };
        let mut quoted_req = req.clone();
        quoted_req.transport_key = None;
        let m = workload.get_material(&quoted_req, &opts).await?;
        let material = open_sealed(&l, &tk, &k.key, 1, &m.sealed)?;
        assert_eq!(material.len(), 32);
        // The released material is the key: it decrypts what the service encrypts.
        admin
            .grant(&grant(
                &k.key,
                WireGrantee::Principal("ann".into()),
                &[Operation::Encrypt],
            ))
            .await?;
        let c = admin.encrypt(&k.key, b"weights", None).await?;
        let (_, ct) =
            parse_versioned(&c.ciphertext, "c").map_err(|e| anyhow::anyhow!(e.message))?;
        let plain = api::crypto::decrypt(KeyType::Aes256Gcm, &material, &k.key, 1, &ct, b"")
            .map_err(|e| anyhow::anyhow!(e))?;
        assert_eq!(&plain[..], b"weights");
        // Replayed quote, forged signature, unexpected measurement, foreign nonce.
        assert_eq!(
            code(workload.get_material(&quoted_req, &opts).await),
            "quote-replayed"
        );
        let n2 = workload.nonce().await?;
        let forged = quote_for(&n2.nonce.0, measurement, &SigningKey::from_bytes(&[78; 32]))?;
        assert_eq!(
            code(
                workload
                    .get_material(
                        &quoted_req,
                        &CallOptions {
                            request_id: None,
                            quote: Some(forged)
                        }
                    )
                    .await
            ),
            "quote-signature"
        );
        let n3 = workload.nonce().await?;
        let other_meas = quote_for(&n3.nonce.0, [0x5b; 32], &attest)?;
        assert_eq!(
            code(
                workload
                    .get_material(
                        &quoted_req,
                        &CallOptions {
                            request_id: None,
                            quote: Some(other_meas)
                        }
                    )
                    .await
            ),
            "quote-measurement"
        );
        let made_up = quote_for(&[9u8; 32], measurement, &attest)?;
        assert_eq!(
            code(
                workload
                    .get_material(
                        &quoted_req,
                        &CallOptions {
                            request_id: None,
                            quote: Some(made_up)
                        }
                    )
                    .await
            ),
            "quote-nonce-unknown"
        );
        // No token, garbage token, other tenant.
        let anon = Client::new(connect(&url).await?, &l.id);
        assert_eq!(code(anon.describe(&k.key).await), "token-missing");
        let garbage = anon.clone().with_token("a.b.c");
        assert_eq!(code(garbage.describe(&k.key).await), "token-malformed");
        let other = l
            .client(
                &url,
                &token_with(&fresh, ISSUER, "gus", "globex", &["tenant-admin"]),
            )
            .await?;
        assert_eq!(code(other.describe(&k.key).await), "key-not-found");
        assert_eq!(code(other.describe("k-no-such-key").await), "key-not-found");
        // Wait for the aggregation interval so counted refusals are recorded too.
        tokio::time::sleep(Duration::from_millis(600)).await;
        svc.stop().await;

        let (report, events) = l.verify().await?;
        ensure!(report.is_clean(), "{report:?}");
        let r = refusals(&l).await?;
        for c in [
            "issuer-unknown",
            "issuer-tenant",
            "issuer-revoked",
            "token-signature",
            "forbidden",
            "quote-replayed",
            "quote-signature",
            "quote-measurement",
            "quote-nonce-unknown",
            "token-missing",
            "token-malformed",
            "key-not-found",
        ] {
            ensure!(
                r.get(c).copied().unwrap_or(0) >= 1,
                "refusal {c} not in the ledger: {r:?}"
            );
        }
        ensure!(
            r["key-not-found"] >= 2,
            "both key-not-found refusals counted: {r:?}"
        );
        // The attested access names the platform and carries the quote's digest.
        let attested: Vec<_> = events
            .iter()
            .filter_map(|v| match &v.event().body {
                EventBody::PlatformAttested(p) => Some((v.event().clone(), p.clone())),
                _ => None,
            })
            .collect();
        ensure!(
            attested.len() == 1,
            "one PlatformAttested: {}",
            attested.len()
        );
        let (pa_event, pa) = &attested[0];
        assert_eq!(pa.quote.platform, "tee-1");
        assert_eq!(pa.group, "confidential");
        assert_eq!(pa_event.actor.principal, "workload");
        let accessed = events
            .iter()
            .find(|v| matches!(v.event().body, EventBody::MaterialAccessed(_)))
            .context("MaterialAccessed")?;
        assert_eq!(accessed.event().context, Some(pa.quote.digest()));
        assert_eq!(accessed.event().actor.principal, "workload");
        assert!(accessed.event().actor.token_id.is_some());
        Ok(())
    })
    .await
}
