//! The deterministic multi-writer simulation, alone in its binary so that its long tier runs on
//! its own (see `multiwriter.rs` for the commands):
//! `ROCKPOINT_SIM_SEEDS=2000 cargo test --release --features failpoints --test sim -- --nocapture`.

#[path = "../common/mod.rs"]
mod common;

mod multiwriter;
