//! Fault injection: every crash point of the store's filesystem (`crash_points`), random damage
//! (`corruption`), and the named fault points (`failpoints`, only with the `failpoints` feature:
//! `cargo test --features failpoints --test fault`). One test binary for the area (one link of
//! RocksDB).
//!
//! Every test here runs in parallel with the others: fault points are configured on a registry
//! each test creates and hands to its own coordinators (never a process-wide one), and the
//! environment variables (`ROCKPOINT_CRASH_STRIDE`, `ROCKPOINT_CORRUPTION_ROUNDS`) are only read.

#[path = "../common/mod.rs"]
mod common;

mod corruption;
mod crash_points;
#[cfg(feature = "failpoints")]
mod failpoints;
