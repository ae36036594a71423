//! The Python example client (`examples/python/keyledger_example.py`, official `nats-py` and the
//! standard library only) against a real service: it proves API.md is enough for a client in
//! another language, and its requests leave the events they should in the ledger.
//!
//! Needs `python3` with pip (the pinned nats-py is installed into `.tools/python` by
//! `scripts/install-python-deps.sh`). Without python3 the test fails; it never skips.

use std::io::{Read as _, Seek as _};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use keyledger_tests::fixture::{test_config, Ledger};
use keyledger_tests::harness::{workspace_root, NatsServer};
use ledger::event::{EventBody, Grantee, KeyType, Operation};
use ledger::nats::StreamSettings;

/// The user principal the example acts as.
const USER: &str = "py-user";
/// The tenant of both tokens.
const TENANT: &str = "acme";
/// Upper bound for installing nats-py (a download from PyPI on a fresh machine).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Upper bound for the example itself.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a finished child process left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with its output in temporary files (so a chatty child never blocks
/// on a full pipe), killing it after `timeout`. Blocking: call it from `spawn_blocking`.
fn run_with_timeout(mut cmd: Command, what: &str, timeout: Duration) -> Result<Finished> {
    let mut out = tempfile::tempfile().context("temporary stdout file")?;
    let mut err = tempfile::tempfile().context("temporary stderr file")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            bail!("{what} did not finish within {timeout:?}; killed. stdout so far:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    out.rewind()?;
    out.read_to_string(&mut stdout)?;
    err.rewind()?;
    err.read_to_string(&mut stderr)?;
    Ok(Finished {
        status,
        stdout,
        stderr,
    })
}

/// Fails (never skips) when python3 is missing, naming what to install.
fn require_python3() -> Result<()> {
    match Command::new("python3")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "`python3 --version` failed ({}): {}; the Python example test needs python3 with \
             pip (e.g. `apt-get install python3 python3-pip`)",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => bail!(
            "python3 is not installed ({e}); the Python example test needs python3 with pip \
             (e.g. `apt-get install python3 python3-pip`)"
        ),
    }
}

/// Installs nats-py with the repository's script; returns the directory to use as PYTHONPATH.
fn install_python_deps(root: &Path) -> Result<String> {
    let mut cmd = Command::new("bash");
    cmd.arg("scripts/install-python-deps.sh").current_dir(root);
    let done = run_with_timeout(cmd, "scripts/install-python-deps.sh", INSTALL_TIMEOUT)?;
    ensure!(
        done.status.success(),
        "scripts/install-python-deps.sh failed: {}",
        done.describe()
    );
    let dir = done
        .stdout
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    ensure!(
        Path::new(&dir).join("nats").is_dir(),
        "install-python-deps.sh printed {dir:?}, which holds no nats package: {}",
        done.describe()
    );
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_speaks_the_documented_api() -> Result<()> {
    require_python3()?;
    let root = workspace_root();
    let pythonpath = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || install_python_deps(&root)).await??
    };

    let server = NatsServer::start()?;
    let url = server.url();
    let l = Ledger::init(&url, "pyexample", &StreamSettings::default()).await?;
    let svc = l.replica(&url, test_config()).await?;
    let admin_token = l.token("py-admin", TENANT, &["tenant-admin"]);
    let user_token = l.token(USER, TENANT, &[]);

    let mut cmd = Command::new("python3");
    cmd.arg("examples/python/keyledger_example.py")
        .current_dir(&root)
        .env("PYTHONPATH", &pythonpath)
        // Keep the source tree clean of __pycache__.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("KEYLEDGER_NATS", &url)
        .env("KEYLEDGER_LEDGER", &l.id)
        .env("KEYLEDGER_ADMIN_TOKEN", &admin_token)
        .env("KEYLEDGER_USER_TOKEN", &user_token)
        .env("KEYLEDGER_USER", USER);
    let done = tokio::task::spawn_blocking(move || {
        run_with_timeout(cmd, "examples/python/keyledger_example.py", EXAMPLE_TIMEOUT)
    })
    .await??;
    ensure!(
        done.status.success(),
        "the Python example failed: {}",
        done.describe()
    );
    ensure!(
        done.stdout.lines().any(|l| l == "python example: OK"),
        "the Python example exited 0 without its OK line: {}",
        done.describe()
    );
    // Shown with --nocapture: what the example did.
    print!("{}", done.stdout);
    svc.stop().await;

    // The ledger verifies and holds what the example did.
    let (report, events) = l.verify().await?;
    ensure!(report.is_clean(), "ledger verifies: {report:?}");
    let created: Vec<_> = events
        .iter()
        .filter_map(|v| match &v.event().body {
            EventBody::KeyCreated(k) => Some(k.spec.clone()),
            _ => None,
        })
        .collect();
    ensure!(
        created.len() == 1,
        "one KeyCreated (the retried create adds none): {created:?}"
    );
    let key = &created[0];
    ensure!(
        key.key_type == KeyType::Aes256Gcm && key.tenant.as_str() == TENANT,
        "created {key:?}"
    );
    let granted = events.iter().any(|v| match &v.event().body {
        EventBody::GrantAdded(g) => {
            g.key == key.key
                && g.grant.grantee == Grantee::Principal(USER.into())
                && g.grant.operations == [Operation::Encrypt, Operation::Decrypt]
        }
        _ => false,
    });
    ensure!(
        granted,
        "no GrantAdded of encrypt+decrypt on {} to {USER}",
        key.key
    );
    let mut used = Vec::new();
    for v in &events {
        if let EventBody::KeysUsed(u) = &v.event().body {
            used.extend(
                u.uses
                    .iter()
                    .filter(|x| x.principal == USER && x.key == key.key)
                    .map(|x| x.operation),
            );
        }
    }
    for op in [Operation::Encrypt, Operation::Decrypt] {
        ensure!(
            used.contains(&op),
            "no KeysUsed itemising {op} by {USER}: {used:?}"
        );
    }
    let refused: Vec<&str> = events
        .iter()
        .filter_map(|v| match &v.event().body {
            EventBody::RequestRefused(r) => Some(r.code.as_str()),
            _ => None,
        })
        .collect();
    for code in ["forbidden", "decrypt-failed", "token-missing"] {
        ensure!(
            refused.contains(&code),
            "no RequestRefused {code}: {refused:?}"
        );
    }
    Ok(())
}
