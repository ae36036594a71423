//! # ledger
//!
//! The event model of keyledger and everything that makes it checkable: canonical encoding,
//! the BLAKE3 chain, Ed25519 signatures, chain verification, sealing of key material, custody of
//! the service's own secrets, and the JetStream appender and reader.
//!
//! Everything except [`nats`] (NATS) and [`custody`] (the keystore file) is plain synchronous code
//! with no IO. This crate depends on no
//! other workspace crate and knows nothing of projections or the API.
#![forbid(unsafe_code)]

pub mod bytes32;
pub mod canonical;
pub mod checkpoint;
pub mod custody;
pub mod entry;
pub mod event;
pub mod ids;
pub mod merkle;
pub mod nats;
pub mod quote;
pub mod seal;
pub mod sign;
mod strenum;
pub mod transport;
pub mod verify;

pub use bytes32::{Bytes32, EventHash};
pub use event::{Event, EventBody};
pub use ids::{KeyId, LedgerId, RequestId, TenantId};
pub use verify::{ChainError, ChainState, Checked, ForeignMessage, ForeignReason, VerifiedEvent};
