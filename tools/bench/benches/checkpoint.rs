//! Checkpoint latency by state size and change rate, each against what users would use instead:
//!
//! * `sync_pause/<size>/<rate>`: how long the operator is blocked — rockpoint's synchronous phase
//!   versus a Flink-style one (flush + RocksDB `Checkpoint`), both with the change in the memtable;
//! * `checkpoint/<size>/<rate>`: end-to-end checkpoint of a flushed delta — rockpoint to a local
//!   root, RocksDB's BackupEngine incremental backup, and the floor (`cp` of the new SSTs + `sync`).
//!
//! Every iteration first changes `rate` of the keys (untimed). Sizes come from
//! `ROCKPOINT_BENCH_SIZES` (default `100MiB,1GiB`; add `4GiB` where the disk allows). Under
//! `cargo test` the bench runs once on a tiny state so it never rots. Side-by-side ratios of the
//! same deltas come from `cargo run --release --bin rockpoint-benchreport` (see benches/README.md).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rockpoint_bench::{Fixture, parse_size};

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn sizes() -> Vec<(String, u64)> {
    let default = if bench_mode() { "100MiB,1GiB" } else { "4MiB" };
    std::env::var("ROCKPOINT_BENCH_SIZES")
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| (s.trim().to_owned(), parse_size(s)))
        .collect()
}

fn rates() -> Vec<f64> {
    if bench_mode() {
        vec![0.01, 0.1, 1.0]
    } else {
        vec![0.1]
    }
}

/// Total time of `iters` runs of `contender`, each on a fresh delta: `rate` of the keys changed,
/// flushed, compactions waited for and dirty pages synced (all untimed).
fn after_each_flushed_change(
    fixture: &mut Fixture,
    rate: f64,
    iters: u64,
    mut contender: impl FnMut(&mut Fixture) -> Duration,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        fixture.change(rate);
        fixture.backend.flush().unwrap();
        fixture.quiesce();
        total += contender(fixture);
    }
    total
}

fn checkpoint_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (label, bytes) in sizes() {
        let mut fixture = runtime.block_on(Fixture::new(bytes));
        for rate in rates() {
            let rate_label = format!("{}%", rate * 100.0);
            let mut group = c.benchmark_group(format!("sync_pause/{label}/{rate_label}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(5));
            group.bench_function("rockpoint", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        fixture.change(rate);
                        let ticket = fixture
                            .coordinator
                            .trigger(rockpoint::SnapshotKind::Checkpoint)
                            .unwrap();
                        let pending = fixture.backend.snapshot(&ticket).unwrap();
                        total += pending.sync_pause();
                        let handle = runtime.block_on(pending.upload(&*fixture.store)).unwrap();
                        runtime
                            .block_on(fixture.coordinator.complete(&ticket, vec![handle]))
                            .unwrap();
                    }
                    total
                })
            });
            group.bench_function("flink_style_flush_and_checkpoint", |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        fixture.change(rate);
                        let dir = fixture.dir.path().join(format!("flink-{i}"));
                        let start = Instant::now();
                        fixture.backend.flush().unwrap();
                        rocksdb::checkpoint::Checkpoint::new(fixture.backend.rocksdb())
                            .unwrap()
                            .create_checkpoint(&dir)
                            .unwrap();
                        total += start.elapsed();
                        std::fs::remove_dir_all(&dir).unwrap();
                    }
                    total
                })
            });
            group.finish();

            let mut group = c.benchmark_group(format!("checkpoint/{label}/{rate_label}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(10));
            group.bench_function("rockpoint", |b| {
                b.iter_custom(|iters| {
                    after_each_flushed_change(&mut fixture, rate, iters, |f| {
                        let start = Instant::now();
                        runtime
                            .block_on(f.coordinator.checkpoint(&[&f.backend]))
                            .unwrap();
                        start.elapsed()
                    })
                })
            });
            group.bench_function("backup_engine", |b| {
                b.iter_custom(|iters| {
                    after_each_flushed_change(&mut fixture, rate, iters, Fixture::backup_once)
                })
            });
            group.bench_function("cp_sync_floor", |b| {
                b.iter_custom(|iters| {
                    after_each_flushed_change(&mut fixture, rate, iters, Fixture::floor_once)
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, checkpoint_benches);
criterion_main!(benches);
