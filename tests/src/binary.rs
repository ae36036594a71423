//! Running the `keyledger` binary from tests: built once per test process (when missing or
//! older than its sources), each run bounded by a timeout with its output captured.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Upper bound on any one CLI run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Newest modification time of the sources the `keyledger` binary is built from.
fn newest_source(root: &Path) -> Result<std::time::SystemTime> {
    let mut newest = std::fs::metadata(root.join("Cargo.lock"))?.modified()?;
    for krate in ["ledger", "projector", "api"] {
        let mut files = vec![root.join(krate).join("Cargo.toml")];
        files_under(&root.join(krate).join("src"), &mut files)?;
        for f in files {
            newest = newest.max(std::fs::metadata(&f)?.modified()?);
        }
    }
    Ok(newest)
}

/// Locates the `keyledger` binary next to this test's profile dir, building it first if it is
/// missing or older than its sources (as `tests/ledger.rs` does).
fn build_keyledger() -> Result<PathBuf> {
    // This test runs from <target>/<profile>/deps/; the binary lives in <target>/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary location")?
        .to_path_buf();
    let bin = profile_dir.join("keyledger");
    let root = crate::harness::workspace_root();
    let fresh = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Ok(built) => built >= newest_source(&root)?,
        Err(_) => false,
    };
    if fresh {
        return Ok(bin);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
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

/// The binary, built at most once per test process.
pub fn keyledger_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| build_keyledger().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A finished run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self, what: &str) -> Result<Run> {
        ensure!(
            self.code == Some(0),
            "{what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(self.stdout.trim())
            .with_context(|| format!("JSON output: {:?} (stderr {:?})", self.stdout, self.stderr))
    }

    pub fn line(&self) -> String {
        self.stdout.trim().to_owned()
    }
}

/// Runs one command to completion (killed after [`RUN_TIMEOUT`]).
pub fn run(cmd: &mut Command) -> Result<Run> {
    run_for(cmd, RUN_TIMEOUT)
}

/// Runs one command to completion (killed after `timeout`).
pub fn run_for(cmd: &mut Command, timeout: Duration) -> Result<Run> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning keyledger")?;
    // Read the pipes on threads so a chatty child can never block on a full pipe.
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            bail!("keyledger {cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Run {
        code: status.code(),
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}
