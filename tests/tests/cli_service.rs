//! The `keyledger` binary as operators and users run it, against a real nats-server: `init`,
//! `issuer new` + `issuer trust`, `serve` as a child process, `token issue`, the `key` verbs
//! (create, grant, encrypt/decrypt, rotate, rewrap, data keys opened locally, describe, list,
//! sign/verify, get-material, schedule/cancel destruction, random), a refusal (exit 1, its code
//! on stderr), usage errors (exit 2), a graceful SIGTERM, and `verify` of the resulting chain.
//!
//! Every child process is bounded (killed after 60 s); `serve` is killed when the test ends,
//! whatever happened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use keyledger_tests::binary::{keyledger_bin, run, RUN_TIMEOUT};
use keyledger_tests::harness::NatsServer;

/// Upper bound on the service answering after `serve` starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const LEDGER: &str = "clisvc";
const KEYSTORE_PASS: (&str, &str) = (
    "KL_TEST_KEYSTORE_PASS",
    "keystore passphrase for the cli test",
);
const ISSUER_PASS: (&str, &str) = (
    "KEYLEDGER_ISSUER_PASSPHRASE",
    "issuer passphrase for the cli test",
);

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

/// A `keyledger` command against `url` and [`LEDGER`], with a clean environment for the
/// variables it reads and the passphrases set.
fn command(bin: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--nats", url, "--ledger", LEDGER])
        .args(args)
        .env_remove("KEYLEDGER_NATS")
        .env_remove("KEYLEDGER_LEDGER")
        .env_remove("KEYLEDGER_TOKEN")
        .env(KEYSTORE_PASS.0, KEYSTORE_PASS.1)
        .env(ISSUER_PASS.0, ISSUER_PASS.1)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The `serve` child: killed when dropped, whatever the test did.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(bin: &Path, url: &str, keystore: &str, log: PathBuf) -> Result<Server> {
        let file = std::fs::File::create(&log)?;
        let child = command(
            bin,
            url,
            &[
                "serve",
                "--keystore",
                keystore,
                "--passphrase-env",
                KEYSTORE_PASS.0,
                "--min-destroy-wait-s",
                "1",
            ],
            &[],
        )
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .context("spawning keyledger serve")?;
        Ok(Server { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    fn terminate(&mut self) -> Result<Option<i32>> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "serve did not stop within {RUN_TIMEOUT:?} of SIGTERM\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

/// Standard base64 of `n` bytes has this length (with padding).
fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// `init` → `issuer new` → `issuer trust` → `serve` → `token issue` (tenant admin and user) →
/// the key verbs through the service → a refusal (exit 1, `forbidden`) → usage errors (exit 2)
/// → SIGTERM (exit 0) → `verify` (exit 0).
#[test]
fn operator_and_user_drive_the_service_through_the_cli() -> Result<()> {
    let server = NatsServer::start()?;
    let url = server.url();
    let bin = keyledger_bin()?;
    let tmp = tempfile::tempdir()?;
    let path = |s: &str| tmp.path().join(s).to_string_lossy().into_owned();
    let (keystore, shares, issuer_file) = (path("keystore.json"), path("shares"), path("idp.key"));
    let cli = |args: &[&str]| run(&mut command(&bin, &url, args, &[]));
    let as_token = |token: &str, args: &[&str]| {
        run(&mut command(
            &bin,
            &url,
            args,
            &[("KEYLEDGER_TOKEN", token)],
        ))
    };

    // --- operator: ledger, issuer, trust ---
    let init = cli(&[
        "--json",
        "init",
        "--keystore",
        &keystore,
        "--passphrase-env",
        KEYSTORE_PASS.0,
        "--argon2-m-kib",
        "1024",
        "--share-dir",
        &shares,
    ])?
    .ok("init")?;
    let root_key = init.json()?["root_key"]
        .as_str()
        .context("root_key")?
        .to_owned();

    let issuer = cli(&[
        "issuer",
        "new",
        "--name",
        "test-idp",
        "--out",
        &issuer_file,
        "--argon2-m-kib",
        "1024",
    ])?
    .ok("issuer new")?;
    let issuer_public = issuer.line();
    ensure!(
        issuer_public.len() == 64 && issuer_public.bytes().all(|c| c.is_ascii_hexdigit()),
        "issuer new prints the public key hex: {issuer_public:?}"
    );
    let sealed_file = std::fs::read_to_string(&issuer_file)?;
    ensure!(
        sealed_file.contains("label test-idp"),
        "issuer key file is labelled with the issuer name"
    );
    let again = cli(&[
        "issuer",
        "new",
        "--name",
        "test-idp",
        "--out",
        &issuer_file,
        "--argon2-m-kib",
        "1024",
    ])?;
    ensure!(
        again.code == Some(2),
        "issuer new never overwrites a key file: {:?} {}",
        again.code,
        again.stderr
    );

    let trust = cli(&[
        "--json",
        "issuer",
        "trust",
        "--name",
        "test-idp",
        "--public-key",
        &issuer_public,
        "--tenant",
        "acme",
        "--keystore",
        &keystore,
        "--passphrase-env",
        KEYSTORE_PASS.0,
    ])?
    .ok("issuer trust")?;
    ensure!(
        trust.json()?["seq"].as_u64() == Some(3),
        "IssuerTrusted follows genesis and the writer's enrolment: {}",
        trust.stdout
    );

    // --- tokens ---
    let token = |sub: &str, role: &str| -> Result<String> {
        Ok(cli(&[
            "token",
            "issue",
            "--issuer-key",
            &issuer_file,
            "--subject",
            sub,
            "--tenant",
            "acme",
            "--role",
            role,
            "--ttl-s",
            "3600",
        ])?
        .ok("token issue")?
        .line())
    };
    let admin = token("olga", "tenant-admin")?;
    let user = token("alice", "key-user")?;
    ensure!(
        admin.split('.').count() == 3 && user.split('.').count() == 3,
        "tokens are compact JWS"
    );
    let claims = cli(&[
        "--json",
        "token",
        "issue",
        "--issuer-key",
        &issuer_file,
        "--subject",
        "bob",
        "--tenant",
        "acme",
        "--ttl-s",
        "60",
    ])?
    .ok("token issue --json")?
    .json()?;
    ensure!(claims["claims"]["iss"] == "test-idp", "{claims}");
    let (iat, exp) = (&claims["claims"]["iat"], &claims["claims"]["exp"]);
    ensure!(
        iat.as_u64().map(|i| i + 60) == exp.as_u64(),
        "exp = iat + ttl: {claims}"
    );
    let bad_role = cli(&[
        "token",
        "issue",
        "--issuer-key",
        &issuer_file,
        "--subject",
        "x",
        "--tenant",
        "acme",
        "--role",
        "superuser",
    ])?;
    ensure!(
        bad_role.code == Some(2),
        "unknown role: {}",
        bad_role.stderr
    );

    // --- the service ---
    let mut serve = Server::start(&bin, &url, &keystore, tmp.path().join("serve.log"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let probe = cli(&["key", "nonce", "--timeout-s", "5"])?;
        if probe.code == Some(0) {
            ensure!(
                probe.line().len() == b64_len(32),
                "nonce: {:?}",
                probe.stdout
            );
            break;
        }
        if let Ok(Some(status)) = serve.child.try_wait() {
            bail!("serve exited early ({status}):\n{}", serve.log());
        }
        if Instant::now() > deadline {
            bail!(
                "the service did not answer within {READY_TIMEOUT:?}: {}\n{}",
                probe.stderr,
                serve.log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    // Create (tenant admin) and grant alice.
    let created = as_token(
        &admin,
        &[
            "--json",
            "key",
            "create",
            "--name",
            "volume key",
            "--type",
            "aes256-gcm",
            "--rotation-period-s",
            "86400",
            "--label",
            "env=test",
        ],
    )?
    .ok("key create")?
    .json()?;
    let key = created["key"].as_str().context("key id")?.to_owned();
    ensure!(created["state"] == "active", "{created}");
    ensure!(created["latest_version"] == 1, "{created}");
    ensure!(created["labels"]["env"] == "test", "{created}");

    let grant = as_token(
        &admin,
        &[
            "key",
            "grant",
            &key,
            "--principal",
            "alice",
            "--op",
            "encrypt,decrypt",
            "--op",
            "rewrap",
            "--op",
            "generate-data-key",
        ],
    )?
    .ok("key grant")?;
    ensure!(!grant.line().is_empty(), "grant prints its id");

    // Encrypt and decrypt as alice, with associated data.
    let ct1 = as_token(
        &user,
        &[
            "key",
            "encrypt",
            &key,
            "--plaintext",
            "attack at dawn",
            "--aad",
            "volume-42",
        ],
    )?
    .ok("key encrypt")?
    .line();
    ensure!(ct1.starts_with("kl:v1:"), "{ct1}");
    let pt = as_token(&user, &["key", "decrypt", &key, &ct1, "--aad", "volume-42"])?
        .ok("key decrypt")?
        .line();
    ensure!(pt == "attack at dawn", "round trip: {pt:?}");
    let wrong_aad = as_token(&user, &["key", "decrypt", &key, &ct1, "--aad", "volume-43"])?;
    ensure!(
        wrong_aad.code == Some(1) && wrong_aad.stderr.contains("decrypt-failed"),
        "wrong associated data: {:?} {}",
        wrong_aad.code,
        wrong_aad.stderr
    );

    // Rotate (admin) and rewrap (alice): the rewrapped ciphertext names v2 and decrypts.
    let rotated = as_token(&admin, &["key", "rotate", &key])?.ok("key rotate")?;
    ensure!(
        rotated.stdout.contains("latest 2"),
        "human output: {}",
        rotated.stdout
    );
    let ct2 = as_token(&user, &["key", "rewrap", &key, &ct1, "--aad", "volume-42"])?
        .ok("key rewrap")?
        .line();
    ensure!(ct2.starts_with("kl:v2:"), "{ct2}");
    let pt2 = as_token(
        &user,
        &["--json", "key", "decrypt", &key, &ct2, "--aad", "volume-42"],
    )?
    .ok("key decrypt v2")?
    .json()?;
    ensure!(pt2["version"] == 2, "{pt2}");
    ensure!(
        pt2["plaintext"] == "YXR0YWNrIGF0IGRhd24=",
        "--json gives base64: {pt2}"
    );

    // A data key with its plaintext, opened locally; the service decrypts the wrapped copy to
    // the same bytes.
    let dk = as_token(
        &user,
        &["--json", "key", "data-key", &key, "--with-plaintext"],
    )?
    .ok("key data-key")?
    .json()?;
    let dk_ct = dk["ciphertext"].as_str().context("data key ciphertext")?;
    let dk_pt = dk["plaintext"].as_str().context("data key plaintext")?;
    ensure!(dk_ct.starts_with("kl:v2:"), "{dk}");
    ensure!(dk_pt.len() == b64_len(32), "{dk}");
    let unwrapped = as_token(&user, &["--json", "key", "decrypt", &key, dk_ct])?
        .ok("decrypt data key")?
        .json()?;
    ensure!(
        unwrapped["plaintext"] == dk_pt,
        "locally opened data key = service-decrypted one"
    );
    let dk16 = as_token(&user, &["--json", "key", "data-key", &key, "--bytes", "16"])?
        .ok("key data-key --bytes 16")?
        .json()?;
    ensure!(
        dk16["plaintext"].is_null(),
        "no plaintext unless asked: {dk16}"
    );

    // Describe and list.
    let described = as_token(&admin, &["--json", "key", "describe", &key])?
        .ok("key describe")?
        .json()?;
    ensure!(described["latest_version"] == 2, "{described}");
    ensure!(
        described["versions"].as_array().map(Vec::len) == Some(2),
        "{described}"
    );
    ensure!(
        described["grants"][0]["grantee"]["principal"] == "alice",
        "{described}"
    );
    let human = as_token(&admin, &["key", "describe", &key])?.ok("key describe (human)")?;
    for want in [
        "aes256-gcm",
        "active",
        "latest 2",
        "principal alice",
        "env=test",
    ] {
        ensure!(human.stdout.contains(want), "{want:?} in {}", human.stdout);
    }
    let list = as_token(&user, &["key", "list"])?.ok("key list")?;
    let lines: Vec<&str> = list.stdout.lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].starts_with(&key) && lines[0].contains("volume key"),
        "one line per key: {}",
        list.stdout
    );

    // A refusal: alice may not rotate. Exit 1, the code on stderr; the key is unchanged.
    let refused = as_token(&user, &["key", "rotate", &key])?;
    ensure!(
        refused.code == Some(1),
        "refused rotate exits 1: {:?} {}",
        refused.code,
        refused.stderr
    );
    ensure!(
        refused.stderr.starts_with("error: forbidden: "),
        "{}",
        refused.stderr
    );
    let refused_json = as_token(&user, &["--json", "key", "rotate", &key])?;
    ensure!(refused_json.code == Some(1), "{}", refused_json.stderr);
    ensure!(
        refused_json.json()?["error"]["code"] == "forbidden",
        "{}",
        refused_json.stdout
    );

    // Usage and infrastructure problems exit 2.
    let no_token = cli(&["key", "describe", &key])?;
    ensure!(
        no_token.code == Some(2) && no_token.stderr.contains("KEYLEDGER_TOKEN"),
        "no token: {:?} {}",
        no_token.code,
        no_token.stderr
    );
    let two_inputs = as_token(
        &user,
        &["key", "encrypt", &key, "--plaintext", "a", "--in", "-"],
    )?;
    ensure!(two_inputs.code == Some(2), "{}", two_inputs.stderr);

    // Sign and verify (exit 1 when the signature does not hold).
    let signer = as_token(
        &admin,
        &[
            "--json",
            "key",
            "create",
            "--name",
            "release signing",
            "--type",
            "ed25519",
        ],
    )?
    .ok("create ed25519")?
    .json()?;
    let signer = signer["key"].as_str().context("signer id")?.to_owned();
    as_token(
        &admin,
        &[
            "key",
            "grant",
            &signer,
            "--principal",
            "alice",
            "--op",
            "sign,verify",
        ],
    )?
    .ok("grant sign")?;
    let sig = as_token(&user, &["key", "sign", &signer, "--message", "v1.2.3"])?
        .ok("key sign")?
        .line();
    ensure!(sig.starts_with("kl:v1:"), "{sig}");
    let good = as_token(
        &user,
        &[
            "key",
            "verify",
            &signer,
            "--message",
            "v1.2.3",
            "--signature",
            &sig,
        ],
    )?;
    ensure!(
        good.code == Some(0) && good.line() == "valid",
        "{:?} {}",
        good.code,
        good.stdout
    );
    let forged = as_token(
        &user,
        &[
            "key",
            "verify",
            &signer,
            "--message",
            "v6.6.6",
            "--signature",
            &sig,
        ],
    )?;
    ensure!(
        forged.code == Some(1) && forged.line() == "invalid",
        "{:?} {} {}",
        forged.code,
        forged.stdout,
        forged.stderr
    );

    // Export an exportable key: the material arrives sealed and is opened by the CLI.
    let exportable = as_token(
        &admin,
        &[
            "--json",
            "key",
            "create",
            "--name",
            "exported",
            "--type",
            "aes128-gcm",
            "--exportable",
        ],
    )?
    .ok("create exportable")?
    .json()?;
    let exportable = exportable["key"]
        .as_str()
        .context("exportable id")?
        .to_owned();
    as_token(
        &admin,
        &[
            "key",
            "grant",
            &exportable,
            "--principal",
            "alice",
            "--op",
            "get-material",
        ],
    )?
    .ok("grant get-material")?;
    let material = as_token(&user, &["--json", "key", "get-material", &exportable])?
        .ok("key get-material")?
        .json()?;
    ensure!(material["version"] == 1, "{material}");
    ensure!(
        material["material"].as_str().map(str::len) == Some(b64_len(16)),
        "{material}"
    );

    // Schedule destruction, then cancel it.
    let scheduled = as_token(
        &admin,
        &[
            "--json",
            "key",
            "schedule-destroy",
            &key,
            "--wait-s",
            "3600",
        ],
    )?
    .ok("key schedule-destroy")?
    .json()?;
    ensure!(scheduled["destroy_after_ms"].is_u64(), "{scheduled}");
    let blocked = as_token(&user, &["key", "encrypt", &key, "--plaintext", "x"])?;
    ensure!(
        blocked.code == Some(1) && blocked.stderr.contains("wrong-key-state"),
        "a key scheduled for destruction cannot be used: {:?} {}",
        blocked.code,
        blocked.stderr
    );
    let cancelled = as_token(&admin, &["--json", "key", "cancel-destroy", &key])?
        .ok("key cancel-destroy")?
        .json()?;
    ensure!(cancelled["destroy_after_ms"].is_null(), "{cancelled}");
    ensure!(cancelled["state"] == "active", "{cancelled}");

    // Randomness.
    let random = as_token(&user, &["key", "random", "16"])?
        .ok("key random")?
        .line();
    ensure!(random.len() == b64_len(16), "{random:?}");

    // The remaining verbs: import, lifecycle states, set-versions, revoke, MAC, destroy,
    // nonce; operator revocations.
    let ok_json = |token: &str, args: &[&str], what: &str| -> Result<serde_json::Value> {
        as_token(token, args)?.ok(what)?.json()
    };
    let imported = ok_json(
        &admin,
        &[
            "--json",
            "key",
            "import",
            "--name",
            "byok",
            "--type",
            "hmac-sha256",
            "--material-b64",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ],
        "key import",
    )?;
    ensure!(imported["imported"] == true, "{imported}");
    let hk = imported["key"].as_str().context("imported id")?.to_owned();
    let g = ok_json(
        &admin,
        &[
            "--json",
            "key",
            "grant",
            &hk,
            "--principal",
            "alice",
            "--op",
            "mac,verify-mac",
        ],
        "grant mac",
    )?;
    let grant_id = g["grant_id"].as_str().context("grant id")?.to_owned();
    let tag = as_token(&user, &["key", "mac", &hk, "--message", "invoice 7"])?
        .ok("key mac")?
        .line();
    ensure!(tag.starts_with("kl:v1:"), "{tag}");
    as_token(
        &user,
        &[
            "key",
            "verify-mac",
            &hk,
            "--message",
            "invoice 7",
            "--mac",
            &tag,
        ],
    )?
    .ok("verify-mac")?;
    let bad_mac = as_token(
        &user,
        &[
            "key",
            "verify-mac",
            &hk,
            "--message",
            "invoice 8",
            "--mac",
            &tag,
        ],
    )?;
    ensure!(
        bad_mac.code == Some(1),
        "a wrong MAC exits 1: {:?}",
        bad_mac.code
    );
    // The MAC is what HMAC-SHA-256 with the imported material gives.
    let (_, raw_tag) =
        api::wire::parse_versioned(&tag, "mac").map_err(|e| anyhow::anyhow!(e.message))?;
    ensure!(api::crypto::verify_mac(
        b"0123456789abcdef0123456789abcdef",
        b"invoice 7",
        &raw_tag
    ));
    ok_json(
        &admin,
        &["--json", "key", "revoke", &hk, &grant_id],
        "key revoke",
    )?;
    let revoked = as_token(&user, &["key", "mac", &hk, "--message", "x"])?;
    ensure!(
        revoked.code == Some(1) && revoked.stderr.contains("forbidden"),
        "{}",
        revoked.stderr
    );
    for (verb, state) in [
        ("suspend", "suspended"),
        ("activate", "active"),
        ("deactivate", "deactivated"),
    ] {
        let d = ok_json(
            &admin,
            &["--json", "key", verb, &hk, "--reason", "cli test"],
            verb,
        )?;
        ensure!(d["state"] == state, "{verb}: {d}");
    }
    let c = ok_json(
        &admin,
        &[
            "--json",
            "key",
            "compromise",
            &hk,
            "--reason",
            "pasted in a chat",
        ],
        "compromise",
    )?;
    ensure!(
        c["state"] == "compromised" && c["compromised_at_ms"].is_u64(),
        "{c}"
    );
    as_token(&admin, &["key", "rotate", &key])?.ok("rotate again")?;
    let sv = ok_json(
        &admin,
        &["--json", "key", "set-versions", &key, "--min-decrypt", "2"],
        "set-versions",
    )?;
    ensure!(sv["min_decrypt_version"] == 2, "{sv}");
    let old = ok_json(
        &admin,
        &["--json", "key", "destroy", &key, "--version", "1"],
        "destroy v1",
    )?;
    ensure!(old["versions"][0]["destroyed"] == true, "{old}");
    as_token(&admin, &["key", "schedule-destroy", &key, "--wait-s", "1"])?.ok("schedule")?;
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    let gone = ok_json(&admin, &["--json", "key", "destroy", &key], "destroy")?;
    ensure!(gone["state"] == "destroyed", "{gone}");
    let nonce = cli(&["--json", "key", "nonce"])?.ok("nonce")?.json()?;
    ensure!(
        nonce["nonce"].as_str().is_some_and(|n| n.len() == 44),
        "{nonce}"
    );
    let listed = as_token(&admin, &["key", "list", "--state", "compromised"])?.ok("list")?;
    ensure!(listed.stdout.contains(&hk), "{}", listed.stdout);
    let operator = |args: &[&str], what: &str| -> Result<()> {
        let mut a = args.to_vec();
        a.extend(["--keystore", &keystore, "--passphrase-env", KEYSTORE_PASS.0]);
        cli(&a)?.ok(what).map(drop)
    };
    let attestation_key = hex::encode([0x11u8; 32]);
    operator(
        &[
            "platform",
            "enrol",
            "--platform",
            "tee-9",
            "--attestation-key",
            &hex::encode(
                ed25519_dalek::SigningKey::from_bytes(&[9; 32])
                    .verifying_key()
                    .to_bytes(),
            ),
            "--group",
            "tee",
            "--measurement",
            &attestation_key,
        ],
        "platform enrol",
    )?;
    operator(
        &[
            "platform",
            "revoke",
            "--platform",
            "tee-9",
            "--reason",
            "decommissioned",
        ],
        "platform revoke",
    )?;
    operator(
        &[
            "issuer",
            "revoke",
            "--name",
            "test-idp",
            "--reason",
            "rotated out",
        ],
        "issuer revoke",
    )?;
    let after_revoke = as_token(&admin, &["key", "list"])?;
    ensure!(
        after_revoke.code == Some(1) && after_revoke.stderr.contains("issuer-revoked"),
        "a revoked issuer's tokens are refused at once: {}",
        after_revoke.stderr
    );

    // Graceful stop, then the whole chain verifies, root pinned.
    let code = serve.terminate()?;
    ensure!(
        code == Some(0),
        "serve exit on SIGTERM: {code:?}\n{}",
        serve.log()
    );
    let log = serve.log();
    ensure!(
        log.contains("serving ledger clisvc on keyledger.v1.clisvc.>"),
        "serve announces its subjects: {log}"
    );
    ensure!(
        log.contains("SIGTERM: stopping") && log.contains("stopped"),
        "{log}"
    );
    let verified = cli(&["--json", "verify", "--root-key", &root_key])?.ok("verify")?;
    let v = verified.json()?;
    ensure!(v["ok"] == true, "{v}");
    ensure!(v["foreign"] == serde_json::json!([]), "{v}");
    ensure!(
        v["verified"].as_u64().is_some_and(|n| n > 10),
        "the service's events are in the chain: {v}"
    );
    Ok(())
}
