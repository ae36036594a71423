//! Stream names, subjects and settings, defined once; creation and the fail-closed start-up check.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::Client;

use crate::event::Event;
use crate::ids::LedgerId;

/// Names of everything one ledger uses on NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerNames {
    pub ledger: LedgerId,
}

impl LedgerNames {
    pub fn new(ledger: LedgerId) -> LedgerNames {
        LedgerNames { ledger }
    }
    /// The event stream: `KEYLEDGER_<ledger>`.
    pub fn stream(&self) -> String {
        format!("KEYLEDGER_{}", self.ledger)
    }
    /// Every event subject: `keyledger.<ledger>.ev.>`.
    pub fn event_subjects(&self) -> String {
        format!("keyledger.{}.ev.>", self.ledger)
    }
    /// `keyledger.<ledger>.ev.<tenant or _>.<key or _>`: consumers filter by tenant and key.
    pub fn event_subject(&self, event: &Event) -> String {
        format!(
            "keyledger.{}.ev.{}.{}",
            self.ledger,
            event.tenant().map_or("_", |t| t.as_str()),
            event.body.key().map_or("_", |k| k.as_str())
        )
    }
    /// The erasable data-key stream: `KEYLEDGER_<ledger>_DEK`.
    pub fn dek_stream(&self) -> String {
        format!("KEYLEDGER_{}_DEK", self.ledger)
    }
    pub fn dek_subjects(&self) -> String {
        format!("keyledger.{}.dek.>", self.ledger)
    }
    /// Signed checkpoints and witness cosignatures: `KEYLEDGER_<ledger>_CP`.
    pub fn checkpoint_stream(&self) -> String {
        format!("KEYLEDGER_{}_CP", self.ledger)
    }
    pub fn checkpoint_subjects(&self) -> String {
        format!("keyledger.{}.cp.>", self.ledger)
    }
    /// Checkpoints signed by the log (a writer): `keyledger.<ledger>.cp.log`.
    pub fn checkpoint_subject(&self) -> String {
        format!("keyledger.{}.cp.log", self.ledger)
    }
    /// Checkpoints cosigned by witness `name`: `keyledger.<ledger>.cp.witness.<name>`.
    pub fn witness_subject(&self, name: &str) -> String {
        format!("keyledger.{}.cp.witness.{name}", self.ledger)
    }
    /// The checkpoint origin (C2SP tlog-checkpoint): `keyledger/<ledger>`.
    pub fn origin(&self) -> String {
        crate::checkpoint::ledger_origin("keyledger", &self.ledger)
    }
}

/// Settings of the event stream.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    /// 1 on a laptop, 3 in production.
    pub replicas: usize,
    pub duplicate_window: Duration,
    /// DANGER: lets messages be deleted from the event stream. Only for tests that must
    /// simulate a removed event; a ledger opened on such a stream accepts it only when
    /// `danger_accept_unsafe_stream` is set too.
    pub danger_allow_delete: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            danger_allow_delete: false,
        }
    }
}

/// Stream set-up failures. `Unsafe` is a refusal: the stream exists but could let history be
/// rewritten, so keyledger will not run on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("stream {stream} is unsafe for a ledger: {problem}")]
    Unsafe { stream: String, problem: String },
    #[error("stream {stream} not found (run `keyledger init` first)")]
    Missing { stream: String },
    #[error("nats: {0}")]
    Nats(String),
}

fn nats_err(e: impl std::fmt::Display) -> StreamError {
    StreamError::Nats(e.to_string())
}

/// The event stream's configuration.
pub fn event_stream_config(names: &LedgerNames, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: names.stream(),
        subjects: vec![names.event_subjects()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        duplicate_window: s.duplicate_window,
        deny_delete: !s.danger_allow_delete,
        deny_purge: true,
        allow_rollup: false,
        discard: stream::DiscardPolicy::New,
        allow_atomic_publish: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The data-key stream: messages may be (securely) erased one by one; never purged.
pub fn dek_stream_config(names: &LedgerNames, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: names.dek_stream(),
        subjects: vec![names.dek_subjects()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        duplicate_window: s.duplicate_window,
        deny_delete: false,
        deny_purge: true,
        allow_rollup: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// The checkpoint stream: evidence, never deleted or purged.
pub fn checkpoint_stream_config(names: &LedgerNames, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: names.checkpoint_stream(),
        subjects: vec![names.checkpoint_subjects()],
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        duplicate_window: s.duplicate_window,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Checks that an existing event stream still protects history. `get_or_create_stream` never
/// reconciles config, so this runs at every start-up.
pub fn check_event_stream(cfg: &stream::Config, accept_unsafe: bool) -> Result<(), StreamError> {
    let mut problems = Vec::new();
    if !cfg.deny_delete && !accept_unsafe {
        problems.push("deny_delete is off");
    }
    if !cfg.deny_purge {
        problems.push("deny_purge is off");
    }
    if cfg.allow_rollup {
        problems.push("rollup is allowed");
    }
    if !cfg.allow_atomic_publish {
        problems.push("atomic batch publish is off");
    }
    if cfg.max_messages > 0 || cfg.max_bytes > 0 || cfg.max_age > Duration::ZERO {
        problems.push("limits would delete events");
    }
    if cfg.max_messages_per_subject > 0 {
        problems.push("per-subject limits would delete events");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StreamError::Unsafe {
            stream: cfg.name.clone(),
            problem: problems.join(", "),
        })
    }
}

/// A connection to one ledger's streams.
#[derive(Clone)]
pub struct LedgerConn {
    pub client: Client,
    pub js: jetstream::Context,
    pub names: LedgerNames,
}

impl LedgerConn {
    pub fn new(client: Client, ledger: LedgerId) -> LedgerConn {
        let js = jetstream::new(client.clone());
        LedgerConn {
            client,
            js,
            names: LedgerNames::new(ledger),
        }
    }

    /// Creates both streams if missing, then checks the event stream (fail closed).
    pub async fn create_streams(&self, s: &StreamSettings) -> Result<(), StreamError> {
        let ev = self
            .js
            .get_or_create_stream(event_stream_config(&self.names, s))
            .await
            .map_err(nats_err)?;
        check_event_stream(&ev.cached_info().config, s.danger_allow_delete)?;
        self.js
            .get_or_create_stream(dek_stream_config(&self.names, s))
            .await
            .map_err(nats_err)?;
        self.js
            .get_or_create_stream(checkpoint_stream_config(&self.names, s))
            .await
            .map_err(nats_err)?;
        Ok(())
    }

    /// Opens the event stream of an initialised ledger and checks it (fail closed).
    pub async fn event_stream(&self, accept_unsafe: bool) -> Result<stream::Stream, StreamError> {
        let st = self
            .js
            .get_stream(self.names.stream())
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    StreamError::Missing {
                        stream: self.names.stream(),
                    }
                }
                _ => nats_err(e),
            })?;
        check_event_stream(&st.cached_info().config, accept_unsafe)?;
        Ok(st)
    }

    /// The event stream's last sequence, asked of the stream leader.
    pub async fn last_seq(&self) -> Result<u64, StreamError> {
        // `get_stream` asks the leader for the stream's info: one round trip, fresh state.
        let st = self
            .js
            .get_stream(self.names.stream())
            .await
            .map_err(nats_err)?;
        Ok(st.cached_info().state.last_sequence)
    }
}
