//! The main job: a keyed word count over generated text on 4 backends (128 key groups), checkpointed
//! every round to a local root; then a simulated crash (everything in memory and on the local disks
//! is dropped), a restore from the latest retained checkpoint's path into a new job, and a check that
//! the restored state equals what the job had at that checkpoint. Exits non-zero if it does not.
//!
//! `cargo run --bin rockpoint-demo [-- --dir DIR --rounds N --words-per-round N]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, KeyGroupRange,
    KeyedStateBackend, LocalStore, RestoreSource, RestoreTarget, Store, ValueState, key_group_of,
};

const MAX_PARALLELISM: u32 = 128;
const PARALLELISM: u32 = 4;

/// Word count with incremental checkpoints, a crash and a verified restore.
#[derive(Parser)]
struct Args {
    /// Working directory (default: a new temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rounds of input; one checkpoint per round.
    #[arg(long, default_value_t = 8)]
    rounds: u32,
    /// Words processed per round.
    #[arg(long, default_value_t = 50_000)]
    words_per_round: u32,
}

/// Word → how often it was seen, in every backend.
const COUNTS: rockpoint::ValueStateDescriptor<String, u64> =
    rockpoint::ValueStateDescriptor::new("counts");

struct Job {
    backends: Vec<KeyedStateBackend>,
    counts: Vec<ValueState<String, u64>>,
}

impl Job {
    fn from_backends(backends: Vec<KeyedStateBackend>) -> rockpoint::Result<Self> {
        let counts = backends
            .iter()
            .map(|b| b.state(&COUNTS))
            .collect::<rockpoint::Result<_>>()?;
        Ok(Job { backends, counts })
    }

    /// The backend owning `word`'s key group.
    fn route(&self, word: &String) -> usize {
        let bytes = rmp_serde::to_vec(word).expect("a string encodes");
        let group = key_group_of(&bytes, MAX_PARALLELISM);
        self.backends
            .iter()
            .position(|b| b.key_groups().contains(group))
            .expect("the backends cover every key group")
    }

    fn count(&self, word: String) -> rockpoint::Result<()> {
        let state = &self.counts[self.route(&word)];
        let n = state.get(&word)?.unwrap_or(0);
        state.put(&word, &(n + 1))
    }

    fn scan(&self) -> rockpoint::Result<BTreeMap<String, u64>> {
        let mut all = BTreeMap::new();
        for state in &self.counts {
            for entry in state.entries(None)? {
                let (word, n) = entry?;
                all.insert(word, n);
            }
        }
        Ok(all)
    }

    fn refs(&self) -> Vec<&KeyedStateBackend> {
        self.backends.iter().collect()
    }
}

/// A deterministic word generator (xorshift), Zipf-like: a few words are very common.
struct Words(u64);

impl Words {
    fn next_word(&mut self) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let r = (self.0 % 1_000_000) as f64 / 1_000_000.0;
        let rank = (r * r * r * 20_000.0) as u64;
        format!("word{rank:05}")
    }
}

fn ranges() -> Vec<KeyGroupRange> {
    (0..PARALLELISM)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, PARALLELISM, i).expect("valid split"))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // RUST_LOG selects what the library logs (default: warnings, e.g. cleanup that GC finishes).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let temp = tempfile::tempdir()?;
    let work = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let root = work.join("checkpoints");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root)?);
    let settings = CheckpointSettings {
        retained: 3,
        ..CheckpointSettings::default()
    };
    println!(
        "rockpoint demo: word count on {PARALLELISM} backends, checkpoints in {}",
        root.display()
    );

    // Run the job, checkpointing every round and remembering what the state was at each checkpoint.
    let coordinator =
        CheckpointCoordinator::open(store.clone(), "wordcount", settings.clone()).await?;
    let mut backends = Vec::new();
    for (i, range) in ranges().into_iter().enumerate() {
        backends.push(KeyedStateBackend::open(
            work.join(format!("run-1/backend-{i}")),
            MAX_PARALLELISM,
            range,
            BackendSettings::default(),
        )?);
    }
    let job = Job::from_backends(backends)?;
    let mut words = Words(0x5eed);
    let mut expected_at = BTreeMap::new();
    for round in 1..=args.rounds {
        for _ in 0..args.words_per_round {
            job.count(words.next_word())?;
        }
        let done = coordinator.checkpoint(&job.refs()).await?;
        expected_at.insert(done.path(), job.scan()?);
        let files = |count: fn(&rockpoint::BackendHandle) -> u64| -> u64 {
            done.metadata.backends.iter().map(count).sum()
        };
        println!(
            "checkpoint {:>2}: {:>9} (pause {:>9}), uploaded {:>10} in {:>3} files, reused {:>10} in {:>3} files, full size {:>10}",
            done.id(),
            human_duration(done.duration),
            human_duration(done.sync_pause),
            human_bytes(done.uploaded_bytes()),
            files(|b| b.uploaded_files),
            human_bytes(done.reused_bytes()),
            files(|b| b.reused_files),
            human_bytes(done.metadata.full_size_bytes)
        );
        if round == args.rounds {
            // Work after the last checkpoint is lost in the crash, as it would be.
            for _ in 0..args.words_per_round / 2 {
                job.count(words.next_word())?;
            }
        }
    }
    let retained: Vec<String> = coordinator
        .retained()
        .iter()
        .map(|m| m.metadata_path())
        .collect();
    println!("retained checkpoints: {retained:?}");

    // "Crash": drop everything in memory and the local disks of the job.
    drop(job);
    drop(coordinator);
    std::fs::remove_dir_all(work.join("run-1"))?;
    println!("crashed: in-memory state and local backend directories are gone");

    // Restore a new job from the latest retained checkpoint's path, and verify.
    let latest = rockpoint::restore::latest_checkpoint(&*store, "wordcount")
        .await?
        .ok_or("no checkpoint to restore")?;
    let restored_job =
        CheckpointCoordinator::open(store.clone(), "wordcount-resumed", settings).await?;
    let targets: Vec<RestoreTarget> = ranges()
        .into_iter()
        .enumerate()
        .map(|(i, key_groups)| RestoreTarget {
            dir: work.join(format!("run-2/backend-{i}")),
            key_groups,
            settings: BackendSettings::default(),
        })
        .collect();
    let started = std::time::Instant::now();
    let backends = restored_job
        .restore(
            &RestoreSource::Metadata(latest.clone()),
            &targets,
            ClaimMode::NoClaim,
        )
        .await?;
    let restore_time = started.elapsed();
    let job = Job::from_backends(backends)?;
    let restored = job.scan()?;
    let expected = &expected_at[&latest];
    let total: u64 = restored.values().sum();
    println!(
        "restored {latest} in {}: {} distinct words, {total} counted; top: {:?}",
        human_duration(restore_time),
        restored.len(),
        top(&restored, 3)
    );
    if &restored != expected {
        eprintln!("VERIFY FAILED: restored state differs from the state at {latest}");
        std::process::exit(1);
    }
    println!("verified: the restored state equals the state at that checkpoint");

    for _ in 0..args.words_per_round {
        job.count(words.next_word())?;
    }
    let after = restored_job.checkpoint(&job.refs()).await?;
    println!(
        "first checkpoint after restore: {}, uploaded {}, reused {} (only new files move)",
        human_duration(after.duration),
        human_bytes(after.uploaded_bytes()),
        human_bytes(after.reused_bytes())
    );
    // Subsumption removed the records of checkpoints 1–5; their shared files are GC's (safe next
    // to the live job, at any grace period).
    let gc = rockpoint::collect_garbage(
        &*store,
        &rockpoint::GcOptions {
            grace_period: std::time::Duration::ZERO,
            mode: rockpoint::SweepMode::Delete,
            ..rockpoint::GcOptions::default()
        },
    )
    .await?;
    println!(
        "gc next to the live job: removed {} shared files ({}) no checkpoint or pin references, in {} requests",
        gc.shared_files.len(),
        human_bytes(gc.reclaimed_bytes),
        gc.requests
    );
    restored_job.shutdown(JobEnd::Cancelled).await?;
    Ok(())
}

fn top(counts: &BTreeMap<String, u64>, n: usize) -> Vec<(&String, &u64)> {
    let mut all: Vec<_> = counts.iter().collect();
    all.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    all.truncate(n);
    all
}

/// `1.5 KiB`, `12.0 MiB`: binary units, one decimal; plain bytes below 1 KiB.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `850 µs`, `12.3 ms`, `4.20 s`: three significant figures or so, in the unit that fits.
fn human_duration(duration: std::time::Duration) -> String {
    let us = duration.as_micros();
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", duration.as_secs_f64())
    }
}
