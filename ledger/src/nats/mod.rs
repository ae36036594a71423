//! The only part of `ledger` that does IO: JetStream streams, the atomic-batch appender, the
//! replaying reader and the erasable data-key store.

pub mod appender;
pub mod batch;
pub mod dek;
pub mod genesis;
pub mod reader;
pub mod stream;

pub use appender::{AppendError, Appender, AppenderConfig, KeyGuard, Receipt};
pub use reader::{replay, ReplayReport};
pub use stream::{LedgerConn, LedgerNames, StreamError, StreamSettings};
