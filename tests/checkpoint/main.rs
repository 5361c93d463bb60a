//! Checkpoints: retention, cancellation, concurrency and subsumption, corruption, GC, cost, and the
//! scripted multi-writer and hostile schedules. One test binary for the area (one link of RocksDB);
//! `cargo test --test checkpoint <module>::` runs one file's tests.

#[path = "../common/mod.rs"]
mod common;

mod attack;
mod cancellation;
mod check_root;
mod concurrency;
mod corruption;
mod cost;
mod delete;
mod delete_attack;
mod export_attack;
mod finished_attack;
mod gc;
mod hostile;
mod job_retention;
mod metrics;
mod multihost;
mod multiwriter;
mod relocate;
mod rescale;
mod rescale_attack;
mod resume_loop;
mod root_attack;
mod root_marker;
mod s3_attack;
mod savepoints;
