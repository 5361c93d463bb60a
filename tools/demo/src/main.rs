//! The main job: a keyed word count over generated text on 4 backends (128 key groups), checkpointed
//! every round to a local root; then a simulated crash (everything in memory and on the local disks
//! is dropped), a restart of the job from its latest retained checkpoint's path (a new coordinator
//! of the same job: it fences the crashed one), and a check that the restored state equals what the
//! job had at that checkpoint. Exits non-zero if it does not.
//!
//! Run again with the same `--dir`, it resumes the job from its latest checkpoint (the counts then
//! include every run); `--fresh` deletes what an earlier run left there and starts from empty
//! state. On exit it says where the root is, or that it removed it (the default temporary
//! directory; `--keep` keeps it).
//!
//! `cargo run --bin rockpoint-demo [-- --dir DIR --fresh --keep --rounds N --words-per-round N]`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;
use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, KeyGroupRange,
    KeyedStateBackend, LocalStore, RestoreSource, RestoreTarget, Store, ValueState, key_group_of,
};

/// Set once stdout's reader went away: the demo then runs to its end (and cleans up) silently.
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `println!` that goes quiet when its reader went away (`rockpoint-demo | head -1`) instead of
/// panicking on the broken pipe, so the run still ends normally and removes what it should.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        use std::sync::atomic::Ordering;
        if !STDOUT_GONE.load(Ordering::Relaxed) {
            let mut stdout = std::io::stdout().lock();
            if writeln!(stdout, $($arg)*).and_then(|()| stdout.flush()).is_err() {
                STDOUT_GONE.store(true, Ordering::Relaxed);
            }
        }
    }};
}

const MAX_PARALLELISM: u32 = 128;
const PARALLELISM: u32 = 4;
const JOB: &str = "wordcount";

/// Word count with incremental checkpoints, a crash and a verified restore.
#[derive(Parser)]
struct Args {
    /// Working directory: the root (`DIR/checkpoints`) and the backends' local directories. Kept
    /// at the end; run again with the same DIR to resume the job from its latest checkpoint.
    /// Default: a new temporary directory, removed at the end (unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Delete what an earlier run left in --dir (its root and backend directories) and start the
    /// job from empty state.
    #[arg(long, requires = "dir")]
    fresh: bool,
    /// Keep the temporary directory (and its root) instead of removing it at the end.
    #[arg(long, conflicts_with = "dir")]
    keep: bool,
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

/// The backends of one run of the job: restored from `source` if there is one, else empty.
async fn open_job(
    coordinator: &CheckpointCoordinator,
    source: Option<&str>,
    dir: &Path,
) -> rockpoint::Result<Job> {
    // Local backend directories are the job's scratch space, never its state of record (that is
    // the checkpoint): whatever an earlier process left there goes.
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| {
            rockpoint::Error::with_source(
                rockpoint::ErrorKind::Internal,
                format!("removing {}", dir.display()),
                e,
            )
        })?;
    }
    let backend_dir = |i: usize| dir.join(format!("backend-{i}"));
    let backends = match source {
        None => ranges()
            .into_iter()
            .enumerate()
            .map(|(i, range)| {
                KeyedStateBackend::open(
                    backend_dir(i),
                    MAX_PARALLELISM,
                    range,
                    BackendSettings::default(),
                )
            })
            .collect::<rockpoint::Result<Vec<_>>>()?,
        Some(path) => {
            let targets: Vec<RestoreTarget> = ranges()
                .into_iter()
                .enumerate()
                .map(|(i, key_groups)| RestoreTarget {
                    dir: backend_dir(i),
                    key_groups,
                    settings: BackendSettings::default(),
                })
                .collect();
            coordinator
                .restore(
                    &RestoreSource::Metadata(path.to_owned()),
                    &targets,
                    ClaimMode::NoClaim,
                )
                .await?
        }
    };
    Job::from_backends(backends)
}

/// `wordcount/8` for `jobs/wordcount/chk-00000000000000000008/_metadata`.
fn short_ref(metadata_path: &str) -> String {
    metadata_path
        .rsplit('/')
        .nth(1)
        .and_then(|dir| dir.strip_prefix("chk-"))
        .and_then(|id| id.parse::<u64>().ok())
        .map_or_else(|| metadata_path.to_owned(), |id| format!("{JOB}/{id}"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // RUST_LOG selects what the library logs (default: warnings, e.g. cleanup that GC finishes).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (temp, work) = match &args.dir {
        Some(dir) => (None, dir.clone()),
        None => match tempfile::Builder::new().prefix("rockpoint-demo-").tempdir() {
            Ok(temp) => {
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
            Err(e) => {
                eprintln!("error: creating a temporary directory: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let root = work.join("checkpoints");
    let result = run(&args, &work, &root).await;
    if let Err(e) = &result {
        eprintln!("error: {e}");
    }
    // Whatever happened, say where the root is (or that it is gone).
    match temp {
        Some(temp) if !args.keep => {
            let path = temp.path().display().to_string();
            match temp.close() {
                Ok(()) => say!(
                    "removed the temporary directory {path} with its root; pass --keep (or --dir DIR) to keep it"
                ),
                Err(e) => eprintln!("could not remove the temporary directory {path}: {e}"),
            }
        }
        temp => {
            // --keep, or --dir: nothing is removed.
            if let Some(temp) = temp {
                let _ = temp.keep();
            }
            say!(
                "root kept at {0}: try `cargo run --bin rockpoint -- --root {0} list`",
                root.display()
            );
            if let Some(dir) = &args.dir {
                say!(
                    "run again with --dir {} to resume the job from its latest checkpoint, or add --fresh to start over",
                    dir.display()
                );
            }
        }
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

async fn run(args: &Args, work: &Path, root: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if args.fresh {
        for leftover in [root.to_path_buf(), work.join("run-1"), work.join("run-2")] {
            if leftover.exists() {
                std::fs::remove_dir_all(&leftover)?;
                say!("--fresh: removed {}", leftover.display());
            }
        }
    }
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(root)?);
    let settings = CheckpointSettings {
        retained: 3,
        ..CheckpointSettings::default()
    };
    say!(
        "rockpoint demo: word count on {PARALLELISM} backends, checkpoints in {}",
        root.display()
    );

    // An earlier run with this --dir: resume its job from its latest checkpoint, never start from
    // empty state next to its checkpoints.
    let previous = rockpoint::restore::latest_checkpoint(&*store, JOB).await?;
    let coordinator = CheckpointCoordinator::open(store.clone(), JOB, settings.clone()).await?;
    let job = open_job(&coordinator, previous.as_deref(), &work.join("run-1")).await?;
    // The text goes on where the checkpoint left it: each run reads new words.
    let mut words = Words(0x5eed);
    if let Some(path) = &previous {
        let resumed = job.scan()?;
        let total: u64 = resumed.values().sum();
        say!(
            "resumed from {} (an earlier run in this directory): {} distinct words, {total} counted; counting goes on from there (--fresh starts over)",
            short_ref(path),
            resumed.len()
        );
        words = Words(0x5eed ^ total.rotate_left(17) ^ 0x9e37_79b9);
    }

    // Run the job, checkpointing every round and remembering what the state was at each checkpoint.
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
        say!(
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
        .map(|m| short_ref(&m.metadata_path()))
        .collect();
    say!("retained checkpoints: {retained:?}");

    // "Crash": drop everything in memory and the local disks of the job.
    drop(job);
    drop(coordinator);
    std::fs::remove_dir_all(work.join("run-1"))?;
    say!("crashed: in-memory state and local backend directories are gone");

    // Restart the job from its latest retained checkpoint's path, and verify. The new coordinator
    // claims the job: the crashed one, were it still running, would be fenced.
    let latest = rockpoint::restore::latest_checkpoint(&*store, JOB)
        .await?
        .ok_or("no checkpoint to restore")?;
    let restarted = CheckpointCoordinator::open(store.clone(), JOB, settings).await?;
    let started = std::time::Instant::now();
    let job = open_job(&restarted, Some(&latest), &work.join("run-2")).await?;
    let restore_time = started.elapsed();
    let restored = job.scan()?;
    let expected = expected_at
        .get(&latest)
        .ok_or_else(|| format!("{latest} is not a checkpoint of this run"))?;
    let total: u64 = restored.values().sum();
    say!(
        "restored {} in {}: {} distinct words, {total} counted; top: {:?}",
        short_ref(&latest),
        human_duration(restore_time),
        restored.len(),
        top(&restored, 3)
    );
    if &restored != expected {
        return Err(
            format!("VERIFY FAILED: restored state differs from the state at {latest}").into(),
        );
    }
    say!("verified: the restored state equals the state at that checkpoint");

    for _ in 0..args.words_per_round {
        job.count(words.next_word())?;
    }
    let after = restarted.checkpoint(&job.refs()).await?;
    let total: u64 = job.scan()?.values().sum();
    say!(
        "first checkpoint after restore: {} ({}), uploaded {}, reused {} (only new files move); {total} words counted",
        short_ref(&after.path()),
        human_duration(after.duration),
        human_bytes(after.uploaded_bytes()),
        human_bytes(after.reused_bytes())
    );
    // Subsumption removed the records of the older checkpoints; their shared files are GC's (safe
    // next to the live job, at any grace period).
    let gc = rockpoint::collect_garbage(
        &*store,
        &rockpoint::GcOptions {
            grace_period: std::time::Duration::ZERO,
            mode: rockpoint::SweepMode::Delete,
            ..rockpoint::GcOptions::default()
        },
    )
    .await?;
    say!(
        "gc next to the live job: removed {} shared files ({}) no checkpoint or pin references, in {} requests",
        gc.shared_files.len(),
        human_bytes(gc.reclaimed_bytes),
        gc.requests
    );
    // Suspended, as at a failover: the checkpoints stay, and the next run with this --dir resumes
    // from the last one.
    restarted.shutdown(JobEnd::Suspended).await?;
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
