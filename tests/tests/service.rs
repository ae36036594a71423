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

/// Operation, content type, body.
type RawRequest = (&'static str, Option<&'static str>, Vec<u8>);

/// Bad input gets a clear error with a stable code (body, header, status), in JSON and
/// MessagePack, and the service keeps serving: malformed and truncated bodies, non-objects,
/// wrong types, unknown fields, oversized payloads, invalid values, unknown keys, wrong key
/// state, wrong key type, wrong tenant, bad ciphertexts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_stable_errors_and_the_service_keeps_serving() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(90, async {
        let l = Ledger::init(&url, "badinput", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let admin_token = l.token("ann", "acme", &["tenant-admin"]);
        let admin = l.client(&url, &admin_token).await?;
        let k = admin.create(&aes("k")).await?;
        let hmac = admin.create(&typed("h", KeyType::HmacSha256)).await?;
        admin
            .grant(&grant(&k.key, WireGrantee::Principal("ann".into()), &[Operation::Encrypt, Operation::Decrypt, Operation::Mac]))
            .await?;
        admin
            .grant(&grant(&hmac.key, WireGrantee::Principal("ann".into()), &[Operation::Encrypt]))
            .await?;
        let raw = Client::new(connect(&url).await?, &l.id);
        let tok = serde_json::to_string(&admin_token)?;
        let json = |op: &'static str, body: String| (op, None::<&str>, body.into_bytes());
        let big = format!(r#"{{"token":{tok},"key":"{}","plaintext":"{}"}}"#, k.key, "A".repeat(70_000));
        let cases: Vec<(RawRequest, &str, u16)> = vec![
            (json("encrypt", "{not json".into()), "malformed-request", 400),
            (json("encrypt", format!(r#"{{"token":{tok},"key":"#)), "malformed-request", 400),
            (json("encrypt", "[1,2,3]".into()), "malformed-request", 400),
            (json("encrypt", "\"a string\"".into()), "malformed-request", 400),
            (("encrypt", Some(MSGPACK), b"\xc1\xff\x00".to_vec()), "malformed-request", 400),
            (json("encrypt", format!(r#"{{"token":{tok},"key":7,"plaintext":"AA=="}}"#)), "invalid-argument", 400),
            (json("encrypt", format!(r#"{{"token":{tok},"key":"{}","plaintext":"%%%"}}"#, k.key)), "invalid-argument", 400),
            (json("encrypt", format!(r#"{{"token":{tok},"key":"{}","plaintext":"AA==","colour":"red"}}"#, k.key)), "invalid-argument", 400),
            (json("encrypt", format!(r#"{{"token":{tok},"key":"{}"}}"#, k.key)), "invalid-argument", 400),
            (json("encrypt", format!(r#"{{"token":5,"key":"{}","plaintext":"AA=="}}"#, k.key)), "invalid-argument", 400),
            (json("encrypt", big), "payload-too-large", 413),
            (json("encrypt", format!(r#"{{"token":{tok},"key":"has space","plaintext":"AA=="}}"#)), "invalid-argument", 400),
            (json("create", format!(r#"{{"token":{tok},"name":"x","type":"rot13"}}"#)), "invalid-argument", 400),
            (json("create", format!(r#"{{"token":{tok},"name":"","type":"aes256-gcm"}}"#)), "invalid-argument", 400),
            (json("create", format!(r#"{{"token":{tok},"name":"w","type":"wrapped"}}"#)), "wrong-key-type", 400),
            (json("create", format!(r#"{{"token":{tok},"name":"s","type":"aes256-gcm","split":{{"threshold":5,"shares":3}}}}"#)), "invalid-argument", 400),
            (json("list", format!(r#"{{"token":{tok},"limit":0}}"#)), "invalid-argument", 400),
            (json("random", format!(r#"{{"token":{tok},"bytes":-1}}"#)), "invalid-argument", 400),
            (json("describe", format!(r#"{{"token":{tok},"key":"k-unknown"}}"#)), "key-not-found", 404),
            (json("encrypt", format!(r#"{{"token":{tok},"key":"{}","plaintext":"AA=="}}"#, hmac.key)), "wrong-key-type", 400),
            (json("decrypt", format!(r#"{{"token":{tok},"key":"{}","ciphertext":"vault:v1:abc"}}"#, k.key)), "invalid-argument", 400),
            (json("decrypt", format!(r#"{{"token":{tok},"key":"{}","ciphertext":"kl:v1:AAAA"}}"#, k.key)), "decrypt-failed", 400),
            (json("decrypt", format!(r#"{{"token":{tok},"key":"{}","ciphertext":"kl:v9:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}"#, k.key)), "version-not-usable", 409),
            (json("schedule-destroy", format!(r#"{{"token":{tok},"key":"{}","wait_s":0}}"#, k.key)), "invalid-argument", 400),
            (json("encrypt", format!(r#"{{"key":"{}","plaintext":"AA=="}}"#, k.key)), "token-missing", 401),
        ];
        for ((op, ct, body), want, status) in cases {
            let mut h = async_nats::HeaderMap::new();
            if let Some(ct) = ct {
                h.insert("Content-Type", ct);
            }
            let msg = raw.raw(op, h, body.clone()).await?;
            let enc = if ct.is_some() { Encoding::MsgPack } else { Encoding::Json };
            let got = api::client::decode_reply::<serde_json::Value>(enc, &msg);
            match got {
                Err(ClientError::Service { code, status: s, message }) => {
                    ensure!(code == want, "{op} {:?}: got {code} ({message}), want {want}", String::from_utf8_lossy(&body[..body.len().min(80)]));
                    ensure!(s == status, "{op}: status {s}, want {status}");
                    ensure!(!message.is_empty());
                    let headers = msg.headers.as_ref().context("error headers")?;
                    ensure!(headers.get(ERROR_CODE_HEADER).map(|v| v.as_str()) == Some(want));
                    ensure!(headers.get(async_nats::service::NATS_SERVICE_ERROR).is_some());
                }
                other => bail!("{op}: expected {want}, got {other:?}"),
            }
        }
        // Wrong key state: a suspended key refuses encryption; the refusal is recorded.
        admin.change_state("suspend", &k.key, Some("maintenance")).await?;
        assert_eq!(code(admin.encrypt(&k.key, b"x", None).await), "wrong-key-state");
        assert_eq!(code(admin.change_state("suspend", &k.key, None).await), "wrong-key-state");
        admin.change_state("activate", &k.key, None).await?;
        // Every unknown field is refused by every operation.
        for op in OPERATIONS {
            let msg = raw
                .raw(op, async_nats::HeaderMap::new(), format!(r#"{{"token":{tok},"surprise":1}}"#).into_bytes())
                .await?;
            let e = api::client::decode_reply::<serde_json::Value>(Encoding::Json, &msg).expect_err(op);
            ensure!(e.code() == Some("invalid-argument"), "{op}: {e:?}");
        }
        // Still serving, in both encodings.
        let c = admin.encrypt(&k.key, b"still here", None).await?;
        let mp = admin.clone().with_msgpack();
        assert_eq!(mp.decrypt(&k.key, &c.ciphertext, None).await?.plaintext.0, b"still here");
        assert_eq!(code(mp.describe("k-nope").await), "key-not-found");
        tokio::time::sleep(Duration::from_millis(400)).await;
        svc.stop().await;
        let r = refusals(&l).await?;
        for c in ["wrong-key-state", "key-not-found", "wrong-key-type", "decrypt-failed", "version-not-usable", "token-missing"] {
            ensure!(r.contains_key(c), "{c} not recorded: {r:?}");
        }
        Ok(())
    })
    .await
}

/// Discovery: `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` of the `keyledger` service answer, and
/// INFO lists an endpoint per operation under the versioned prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_discoverable() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(60, async {
        let l = Ledger::init(&url, "disco", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let nc = connect(&url).await?;
        let ping = nc.request("$SRV.PING.keyledger", "".into()).await?;
        let ping: serde_json::Value = serde_json::from_slice(&ping.payload)?;
        assert_eq!(ping["name"], "keyledger");
        let info = nc.request("$SRV.INFO.keyledger", "".into()).await?;
        let info: serde_json::Value = serde_json::from_slice(&info.payload)?;
        let subjects: Vec<String> = info["endpoints"]
            .as_array()
            .context("endpoints")?
            .iter()
            .map(|e| e["subject"].as_str().unwrap_or_default().to_owned())
            .collect();
        for op in OPERATIONS {
            let s = format!("keyledger.v1.disco.{op}");
            ensure!(subjects.contains(&s), "{s} not in {subjects:?}");
        }
        let stats = nc.request("$SRV.STATS.keyledger", "".into()).await?;
        let stats: serde_json::Value = serde_json::from_slice(&stats.payload)?;
        assert_eq!(stats["name"], "keyledger");
        svc.stop().await;
        Ok(())
    })
    .await
}

/// Counts, over the verified ledger: `KeyCreated` per key, key-use request ids, and the
/// projection's anomalies (events a writer should never have recorded).
async fn ledger_counts(l: &Ledger) -> Result<(HashMap<String, u32>, HashMap<String, u32>, usize)> {
    let (report, events) = l.verify_retrying().await?;
    ensure!(report.is_clean(), "{report:?}");
    let mut created = HashMap::new();
    let mut uses = HashMap::new();
    let mut keys = projector::KeyStates::new();
    for v in &events {
        keys.apply(v);
        match &v.event().body {
            EventBody::KeyCreated(k) => *created.entry(k.spec.key.to_string()).or_default() += 1,
            EventBody::KeysUsed(u) => {
                for x in &u.uses {
                    *uses.entry(x.request_id.to_string()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    Ok((created, uses, keys.anomalies().len()))
}

/// Runs the concurrent workload of the replica tests: `clients` clients, each creating a key
/// (with a request id, retried once), encrypting, rotating and decrypting, plus all of them
/// rotating one shared key at once. Returns the keys created.
async fn concurrent_workload(l: &Ledger, urls: &[String], clients: usize) -> Result<Vec<String>> {
    let admin = l
        .client(&urls[0], &l.token("ann", "acme", &["tenant-admin"]))
        .await?;
    let shared = admin.create(&aes("shared")).await?;
    let mut tasks = Vec::new();
    for i in 0..clients {
        let url = urls[i % urls.len()].clone();
        let c = l
            .client(&url, &l.token(&format!("c{i}"), "acme", &["tenant-admin"]))
            .await?;
        let shared = shared.key.clone();
        tasks.push(tokio::spawn(async move {
            let opts = CallOptions {
                request_id: Some(format!("create-{i}")),
                quote: None,
            };
            let a: api::client::Answer<KeyDescription> =
                c.call("create", &aes(&format!("k{i}")), &opts).await?;
            // A retry of the same request (possibly on the other replica) names the same key.
            let again: api::client::Answer<KeyDescription> =
                c.call("create", &aes(&format!("k{i}")), &opts).await?;
            ensure!(again.result.key == a.result.key, "retry made another key");
            let key = a.result.key;
            c.grant(&grant(
                &key,
                WireGrantee::Principal(format!("c{i}")),
                &[Operation::Encrypt, Operation::Decrypt],
            ))
            .await?;
            // Read-your-writes: the grant is visible to the very next request, on any replica.
            let ct = c
                .encrypt(&key, format!("secret {i}").as_bytes(), None)
                .await?;
            let r = c.rotate(&key).await?;
            ensure!(r.latest_version == 2, "rotation seen at once");
            let pt = c.decrypt(&key, &ct.ciphertext, None).await?;
            ensure!(pt.plaintext.0 == format!("secret {i}").as_bytes());
            // Everyone rotates the shared key at once: each acknowledged rotation is a version.
            let shared_rot = match c.rotate(&shared).await {
                Ok(d) => Some(d.latest_version),
                Err(e) if e.code() == Some("conflict") => None,
                Err(e) => return Err(e.into()),
            };
            anyhow::Ok((key, shared_rot))
        }));
    }
    let mut keys = Vec::new();
    let mut rotations = 0u32;
    for t in tasks {
        let (k, rot) = t.await??;
        keys.push(k);
        rotations += u32::from(rot.is_some());
    }
    let after = admin.describe(&shared.key).await?;
    ensure!(rotations >= 1, "some shared rotation succeeded");
    ensure!(
        after.latest_version == 1 + rotations,
        "acknowledged rotations {rotations} == versions added {}",
        after.latest_version - 1
    );
    Ok(keys)
}

/// Two service replicas (own connections, appenders and projections) serve 24 concurrent
/// clients: one chain that verifies, every acknowledged create exactly once (also when retried
/// with the same request id), every acknowledged rotation exactly one version, reads see
/// preceding writes, and the projection records no anomaly (no write applied twice or on a
/// stale state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_concurrent_clients_into_one_chain() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(120, async {
        let l = Ledger::init(&url, "replicas", &StreamSettings::default()).await?;
        let a = l.replica(&url, test_config()).await?;
        let b = l.replica(&url, test_config()).await?;
        let keys = concurrent_workload(&l, std::slice::from_ref(&url), 24).await?;
        a.stop().await;
        b.stop().await;
        let (created, uses, anomalies) = ledger_counts(&l).await?;
        ensure!(anomalies == 0, "{anomalies} anomalies");
        for k in &keys {
            ensure!(
                created.get(k) == Some(&1),
                "{k} created {:?} times",
                created.get(k)
            );
        }
        ensure!(created.len() == keys.len() + 1);
        ensure!(uses.values().all(|n| *n == 1), "a use recorded twice");
        Ok(())
    })
    .await
}

/// The docker-compose topology on loopback: a three-node JetStream cluster, the stream at three
/// replicas, two service replicas on different nodes, clients on the third. The same workload;
/// then a node is killed and the service keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_three_node_cluster() -> Result<()> {
    let mut cluster = NatsCluster::start(3)?;
    let urls = cluster.urls();
    let all = urls.join(",");
    let settings = StreamSettings {
        replicas: 3,
        ..StreamSettings::default()
    };
    let l = within(60, Ledger::init(&all, "cluster", &settings)).await?;
    let a = within(
        60,
        l.replica(&format!("{},{}", urls[0], urls[1]), test_config()),
    )
    .await?;
    let b = within(
        60,
        l.replica(&format!("{},{}", urls[2], urls[1]), test_config()),
    )
    .await?;
    let clients = [urls[1].clone(), urls[0].clone()];
    let mut keys = within(180, concurrent_workload(&l, &clients, 12)).await?;
    // Lose a node outright; clients and replicas reconnect, the R3 stream keeps its quorum.
    cluster.kill9(1)?;
    let survivors = format!("{},{}", urls[0], urls[2]);
    let after = within(120, async {
        let admin = l
            .client(&survivors, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;
        // The first calls may land while the stream elects a new leader; retry boundedly.
        let mut created = None;
        for _ in 0..40 {
            match admin.create(&aes("after-loss")).await {
                Ok(k) => {
                    created = Some(k);
                    break;
                }
                Err(e) if matches!(e.code(), Some("unavailable") | None) => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Err(e) => return Err(e.into()),
            }
        }
        let k = created.context("service did not recover from the loss of a node")?;
        admin.rotate(&k.key).await?;
        anyhow::Ok(k.key)
    })
    .await?;
    keys.push(after);
    a.stop().await;
    b.stop().await;
    let (created, uses, anomalies) = within(60, ledger_counts(&l)).await?;
    ensure!(anomalies == 0, "{anomalies} anomalies");
    for k in &keys {
        ensure!(
            created.get(k) == Some(&1),
            "{k} created {:?} times",
            created.get(k)
        );
    }
    ensure!(uses.values().all(|n| *n == 1), "a use recorded twice");
    Ok(())
}

/// A request retried with the same caller-chosen request id (lost reply, client restart) is
/// answered from the ledger and never applied twice: creates name the same key, grants the
/// same grant, state changes answer with the original event's sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_are_answered_from_the_ledger() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(60, async {
        let l = Ledger::init(&url, "retries", &StreamSettings::default()).await?;
        let a = l.replica(&url, test_config()).await?;
        let b = l.replica(&url, test_config()).await?;
        let admin = l
            .client(&url, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;
        let opts = |id: &str| CallOptions {
            request_id: Some(id.into()),
            quote: None,
        };
        let k: api::client::Answer<KeyDescription> =
            admin.call("create", &aes("r"), &opts("c1")).await?;
        let key = k.result.key.clone();
        let g = grant(
            &key,
            WireGrantee::Role("key-user".into()),
            &[Operation::Encrypt],
        );
        let mut grants = Vec::new();
        for _ in 0..3 {
            let r: api::client::Answer<GrantResult> = admin.call("grant", &g, &opts("g1")).await?;
            grants.push((r.result.grant_id, r.seq));
        }
        ensure!(grants.windows(2).all(|w| w[0] == w[1]), "{grants:?}");
        let s = StateArgs {
            key: key.clone(),
            reason: Some("maintenance".into()),
        };
        let mut seqs = Vec::new();
        for _ in 0..3 {
            let r: api::client::Answer<KeyDescription> =
                admin.call("suspend", &s, &opts("s1")).await?;
            ensure!(r.result.state == KeyState::Suspended);
            seqs.push(r.seq);
        }
        ensure!(seqs.windows(2).all(|w| w[0] == w[1]), "{seqs:?}");
        // Another principal using the same request id is a different request.
        let other = l
            .client(&url, &l.token("bob", "acme", &["tenant-admin"]))
            .await?;
        let act: Result<api::client::Answer<KeyDescription>, _> = other
            .call(
                "activate",
                &StateArgs {
                    key: key.clone(),
                    reason: None,
                },
                &opts("s1"),
            )
            .await;
        ensure!(act?.result.state == KeyState::Active);
        a.stop().await;
        b.stop().await;
        let (report, events) = l.verify().await?;
        ensure!(report.is_clean());
        let count = |tag: &str| {
            events
                .iter()
                .filter(|v| v.event().body.tag() == tag)
                .count()
        };
        ensure!(
            count("KeyCreated") == 1 && count("GrantAdded") == 1 && count("KeyStateChanged") == 2
        );
        ensure!(count("RequestRefused") == 0, "retries are not refusals");
        Ok(())
    })
    .await
}

/// Lifecycle states and listing: pre-active keys cannot be used until activated; suspended
/// keys not at all; deactivated and compromised keys only decrypt; listing filters by state,
/// type, label and name prefix and pages with `after`/`next`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_states_and_listing() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    within(90, async {
        let l = Ledger::init(&url, "states", &StreamSettings::default()).await?;
        let svc = l.replica(&url, test_config()).await?;
        let admin = l
            .client(&url, &l.token("ann", "acme", &["tenant-admin"]))
            .await?;
        let keyadmin = l
            .client(&url, &l.token("kim", "acme", &["key-admin"]))
            .await?;
        let auditor = l
            .client(&url, &l.token("aud", "acme", &["auditor"]))
            .await?;
        let mut args = aes("pre");
        args.pre_active = true;
        args.labels.insert("env".into(), "prod".into());
        let k = keyadmin.create(&args).await?;
        assert_eq!(k.state, KeyState::PreActive);
        let key = k.key.clone();
        admin
            .grant(&grant(
                &key,
                WireGrantee::Role("key-admin".into()),
                &[Operation::Encrypt, Operation::Decrypt],
            ))
            .await?;
        assert_eq!(
            code(keyadmin.encrypt(&key, b"x", None).await),
            "wrong-key-state"
        );
        assert_eq!(
            keyadmin.change_state("activate", &key, None).await?.state,
            KeyState::Active
        );
        let ct = keyadmin.encrypt(&key, b"data", None).await?;
        keyadmin
            .change_state("suspend", &key, Some("incident 7"))
            .await?;
        assert_eq!(
            code(keyadmin.decrypt(&key, &ct.ciphertext, None).await),
            "wrong-key-state"
        );
        keyadmin.change_state("activate", &key, None).await?;
        keyadmin
            .change_state("deactivate", &key, Some("retired"))
            .await?;
        assert_eq!(
            code(keyadmin.encrypt(&key, b"x", None).await),
            "wrong-key-state"
        );
        assert_eq!(
            keyadmin
                .decrypt(&key, &ct.ciphertext, None)
                .await?
                .plaintext
                .0,
            b"data"
        );
        assert_eq!(
            code(keyadmin.change_state("activate", &key, None).await),
            "wrong-key-state"
        );
        let c = keyadmin
            .compromise(&CompromiseArgs {
                key: key.clone(),
                reason: "leaked in a log".into(),
                compromised_at_ms: Some(1_700_000_000_000),
            })
            .await?;
        assert_eq!(
            (c.state, c.compromised_at_ms),
            (KeyState::Compromised, Some(1_700_000_000_000))
        );
        assert_eq!(
            keyadmin
                .decrypt(&key, &ct.ciphertext, None)
                .await?
                .plaintext
                .0,
            b"data"
        );
        assert_eq!(
            code(keyadmin.encrypt(&key, b"x", None).await),
            "wrong-key-state"
        );
        // Roles: key admins may not destroy or grant; auditors only look.
        assert_eq!(code(keyadmin.destroy(&key, None).await), "forbidden");
        assert_eq!(auditor.describe(&key).await?.state, KeyState::Compromised);
        assert_eq!(code(auditor.rotate(&key).await), "forbidden");
        // Listing.
        for i in 0..5 {
            let mut a = typed(
                &format!("batch-{i}"),
                if i % 2 == 0 {
                    KeyType::Ed25519
                } else {
                    KeyType::HmacSha256
                },
            );
            a.labels.insert("team".into(), "ml".into());
            admin.create(&a).await?;
        }
        let by_type = auditor
            .list(&ListArgs {
                key_type: Some(KeyType::Ed25519),
                ..ListArgs::default()
            })
            .await?;
        assert_eq!(by_type.keys.len(), 3);
        let by_state = auditor
            .list(&ListArgs {
                state: Some(KeyState::Compromised),
                ..ListArgs::default()
            })
            .await?;
        assert_eq!(by_state.keys.len(), 1);
        let by_label = auditor
            .list(&ListArgs {
                label: Some("team=ml".into()),
                ..ListArgs::default()
            })
            .await?;
        assert_eq!(by_label.keys.len(), 5);
        let by_prefix = auditor
            .list(&ListArgs {
                name_prefix: Some("batch-".into()),
                limit: Some(2),
                ..ListArgs::default()
            })
            .await?;
        assert_eq!(by_prefix.keys.len(), 2);
        let mut seen: Vec<String> = by_prefix.keys.iter().map(|k| k.key.clone()).collect();
        let mut next = by_prefix.next.clone();
        let mut pages = 1;
        while let Some(after) = next {
            let page = auditor
                .list(&ListArgs {
                    name_prefix: Some("batch-".into()),
                    limit: Some(2),
                    after: Some(after),
                    ..ListArgs::default()
                })
                .await?;
            seen.extend(page.keys.iter().map(|k| k.key.clone()));
            next = page.next;
            pages += 1;
            ensure!(pages < 10, "paging does not end");
        }
        assert_eq!((seen.len(), pages), (5, 3));
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "pages in key order, no repeats");
        // Another tenant sees none of it.
        let globex = l
            .client(&url, &l.token("gus", "globex", &["tenant-admin"]))
            .await?;
        assert!(globex.list(&ListArgs::default()).await?.keys.is_empty());
        svc.stop().await;
        let (report, _) = l.verify().await?;
        ensure!(report.is_clean());
        Ok(())
    })
    .await
}
