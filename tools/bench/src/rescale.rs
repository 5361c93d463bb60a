//! The rescaling report (`--rescale`): one state of `size` bytes of 1 KiB incompressible values
//! (max parallelism 128), checkpointed at parallelism 2 and at 4 into a local root. Side by side,
//! alternating, `--cycles` times each:
//!
//! - rescale-out: the parallelism-2 checkpoint restored at 4 (every target clipped);
//! - rescale-in: the parallelism-4 checkpoint restored at 2 (every target merged);
//! - plain restores of the same checkpoints at their own parallelism (the same bytes downloaded);
//! - re-ingest: every key written again through the state API into fresh backends of the new
//!   parallelism, then flushed (what a job without rescaling restore would do, counting neither
//!   reading the keys back nor checkpointing them).
//!
//! Then the bytes the first checkpoint after each rescale uploads, versus its full size.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, KeyGroupRange, KeyedStateBackend,
    LocalStore, RestoreSource, RestoreTarget, Store,
};
use rockpoint_bench::{SEED, VALUE_BYTES, VALUES, drop_page_cache, human, median, settings};

const MAX_PARALLELISM: u32 = 128;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn ranges(parallelism: u32) -> Vec<KeyGroupRange> {
    (0..parallelism)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i).expect("range"))
        .collect()
}

/// Writes every key `0..keys` with its value through the state API into backends of
/// `parallelism` under `dir`, and flushes them.
fn ingest(dir: &Path, parallelism: u32, keys: u64) -> BoxResult<Vec<KeyedStateBackend>> {
    let backends: Vec<KeyedStateBackend> = ranges(parallelism)
        .into_iter()
        .enumerate()
        .map(|(i, range)| {
            KeyedStateBackend::open(
                dir.join(format!("b{i}")),
                MAX_PARALLELISM,
                range,
                settings(),
            )
        })
        .collect::<Result<_, _>>()?;
    let states = backends
        .iter()
        .map(|b| b.state(&VALUES))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rng = SEED;
    for key in 0..keys {
        let value = rockpoint_bench::random_value(&mut rng);
        let group = rockpoint::key_group_of(&rmp_serde_key(key), MAX_PARALLELISM);
        let i = backends
            .iter()
            .position(|b| b.key_groups().contains(group))
            .expect("a backend owns every key group");
        states[i].put(&key, &value)?;
    }
    for backend in &backends {
        backend.flush()?;
    }
    Ok(backends)
}

/// The MessagePack encoding of a `u64` key (what `key_group_of` hashes).
fn rmp_serde_key(key: u64) -> Vec<u8> {
    rmp_serde::to_vec(&key).expect("a u64 encodes")
}

/// Restores `source` at `parallelism` through a coordinator of a fresh job; returns the time and
/// the backends.
async fn restore_at(
    store: &Arc<dyn Store>,
    source: &RestoreSource,
    dir: &Path,
    job: &str,
    parallelism: u32,
) -> BoxResult<(Duration, CheckpointCoordinator, Vec<KeyedStateBackend>)> {
    let coordinator =
        CheckpointCoordinator::open(store.clone(), job, CheckpointSettings::default()).await?;
    let targets: Vec<RestoreTarget> = ranges(parallelism)
        .into_iter()
        .enumerate()
        .map(|(i, key_groups)| RestoreTarget {
            dir: dir.join(format!("{job}-{i}")),
            key_groups,
            settings: settings(),
        })
        .collect();
    drop_page_cache();
    let start = Instant::now();
    let backends = coordinator
        .restore(source, &targets, ClaimMode::NoClaim)
        .await?;
    Ok((start.elapsed(), coordinator, backends))
}

struct Measured {
    name: &'static str,
    times: Vec<Duration>,
}

/// Runs the report; returns its markdown.
pub fn run(runtime: &tokio::runtime::Runtime, size: u64, cycles: usize) -> BoxResult<String> {
    runtime.block_on(run_async(size, cycles))
}

async fn run_async(size: u64, cycles: usize) -> BoxResult<String> {
    let dir = tempfile::tempdir_in(rockpoint_bench::bench_dir())?;
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("root"))?);
    let keys = (size / VALUE_BYTES as u64).max(1);
    let mut sources = Vec::new();
    for parallelism in [2u32, 4] {
        eprintln!("building {} at parallelism {parallelism}…", human(size));
        let backends = ingest(
            &dir.path().join(format!("src-{parallelism}")),
            parallelism,
            keys,
        )?;
        for backend in &backends {
            backend
                .rocksdb()
                .wait_for_compact(&rocksdb::WaitForCompactOptions::default())?;
        }
        let coordinator = CheckpointCoordinator::open(
            store.clone(),
            &format!("p{parallelism}"),
            CheckpointSettings::default(),
        )
        .await?;
        let refs: Vec<&KeyedStateBackend> = backends.iter().collect();
        let done = coordinator.checkpoint(&refs).await?;
        let full = done.metadata.full_size_bytes;
        sources.push((
            parallelism,
            RestoreSource::Metadata(done.metadata.metadata_path()),
            full,
        ));
        coordinator.shutdown(JobEnd::Suspended).await?;
    }
    let (p2, p4) = (&sources[0], &sources[1]);
    let mut rows = [
        Measured {
            name: "rescale-out 2→4",
            times: Vec::new(),
        },
        Measured {
            name: "plain restore 2→2",
            times: Vec::new(),
        },
        Measured {
            name: "re-ingest at 4",
            times: Vec::new(),
        },
        Measured {
            name: "rescale-in 4→2",
            times: Vec::new(),
        },
        Measured {
            name: "plain restore 4→4",
            times: Vec::new(),
        },
        Measured {
            name: "re-ingest at 2",
            times: Vec::new(),
        },
    ];
    let mut first_after = Vec::new();
    for cycle in 0..cycles {
        eprintln!("cycle {}/{cycles}", cycle + 1);
        let work = dir.path().join(format!("cycle-{cycle}"));
        for (row, (source, parallelism)) in [
            (0usize, (&p2.1, 4u32)),
            (1, (&p2.1, 2)),
            (3, (&p4.1, 2)),
            (4, (&p4.1, 4)),
        ] {
            let job = format!("r{row}c{cycle}");
            let (time, coordinator, backends) =
                restore_at(&store, source, &work, &job, parallelism).await?;
            rows[row].times.push(time);
            if cycle == 0 && (row == 0 || row == 3) {
                let refs: Vec<&KeyedStateBackend> = backends.iter().collect();
                let done = coordinator.checkpoint(&refs).await?;
                first_after.push((
                    rows[row].name,
                    done.metadata.checkpointed_size_bytes,
                    done.metadata.full_size_bytes,
                ));
            }
            drop(backends);
            coordinator.shutdown(JobEnd::Suspended).await?;
            // Each measured restore goes before the next (the disk holds a few copies at most).
            std::fs::remove_dir_all(&work)?;
        }
        for (row, parallelism) in [(2usize, 4u32), (5, 2)] {
            let into = work.join(format!("ingest-{parallelism}"));
            drop_page_cache();
            let start = Instant::now();
            let backends = ingest(&into, parallelism, keys)?;
            rows[row].times.push(start.elapsed());
            drop(backends);
            std::fs::remove_dir_all(&work)?;
        }
    }
    let med = |i: usize| median(rows[i].times.clone());
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let ratio = |a: Duration, b: Duration| format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64());
    let mut out = String::new();
    out.push_str(&format!(
        "# Rescaling restore\n\n{} of state ({keys} keys of 1 KiB incompressible values, max \
         parallelism 128) checkpointed at parallelism 2 ({} stored) and 4 ({} stored) into a local \
         root; medians of {cycles} alternating cycles; page cache dropped before each restore when \
         the process may.\n\n",
        human(size),
        human(p2.2),
        human(p4.2)
    ));
    out.push_str("| operation | median | all runs |\n|---|---|---|\n");
    for row in &rows {
        let all: Vec<String> = row.times.iter().map(|t| secs(*t)).collect();
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            row.name,
            secs(median(row.times.clone())),
            all.join(", ")
        ));
    }
    out.push_str(&format!(
        "\n| ratio | value | goal |\n|---|---|---|\n\
         | re-ingest at 4 / rescale-out 2→4 | {} | ≥ 5× |\n\
         | re-ingest at 2 / rescale-in 4→2 | {} | ≥ 5× |\n\
         | rescale-out 2→4 / plain restore 2→2 (same bytes) | {} | ≤ 1.5× |\n\
         | rescale-in 4→2 / plain restore 4→4 (same bytes) | {} | ≤ 1.5× |\n",
        ratio(med(2), med(0)),
        ratio(med(5), med(3)),
        ratio(med(0), med(1)),
        ratio(med(3), med(4)),
    ));
    out.push_str("\n| first checkpoint after | uploaded | full size |\n|---|---|---|\n");
    for (name, uploaded, full) in first_after {
        out.push_str(&format!(
            "| {name} | {} | {} |\n",
            human(uploaded),
            human(full)
        ));
    }
    Ok(out)
}
