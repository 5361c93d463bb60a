//! Keyed state: typed states against in-memory models, the key-group vectors, range iteration,
//! and the errors of misuse and damage. One test binary for the area (one link of RocksDB);
//! `cargo test --test keyed_state <module>::` runs one file's tests.

mod errors;
mod key_groups;
mod model;
mod ranges;
