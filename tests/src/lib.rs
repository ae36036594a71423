#![forbid(unsafe_code)]
//! End-to-end test support for keyledger: a real `nats-server` harness
//! ([`harness`]), raw NATS reference measurements ([`baseline`]) and result tables
//! ([`report`]) for the benchmark binary.

pub mod baseline;
pub mod binary;
pub mod fixture;
pub mod harness;
pub mod report;
pub mod servicebench;
