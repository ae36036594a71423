//! # projector
//!
//! Will fold verified ledger events (`ledger::VerifiedEvent`, never raw events) into the key
//! state and audit views. Nothing is built here yet: the key-state projector is the work of the
//! key-service issue. This crate exists now so the dependency direction api → projector → ledger
//! is fixed from the start.
#![forbid(unsafe_code)]
