//! # api
//!
//! The keyledger service surface: key operations over the ledger and the `keyledger` binary
//! (server and CLI). Depends on `projector` and `ledger`; nothing depends on it.
#![forbid(unsafe_code)]

pub mod audit;
pub mod client;
pub mod crypto;
pub mod keyops;
pub mod report_render;
pub mod service;
pub mod wire;
