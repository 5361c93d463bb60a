//! The kill loop: a child process runs a keyed-state workload with a checkpoint after every round
//! against a local root; the driver SIGKILLs it at random moments, restarts it, and verifies the
//! latest checkpoint (and every retained one) against a model of the workload, hundreds of times.
//!
//! The workload is a deterministic function of the seed and the round number, and the round is part
//! of the state, so the verifier knows exactly which state a checkpoint must hold without the child
//! ever writing an oracle: it replays rounds 1..=r into an in-memory model.
//!
//! `rockpoint-killloop drive --rounds 500 --seed 7` (the long tier); the quick tier runs from
//! `tests/fault_kill_loop.rs`. On failure the driver prints the seed and the round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, ClaimMode, GcOptions,
    KeyGroupRange, KeyedStateBackend, LocalStore, RestoreSource, RestoreTarget, Store, SweepMode,
    collect_garbage,
};

const MAX_PARALLELISM: u32 = 64;
const PARALLELISM: u32 = 2;
const KEYS: u64 = 2_000;
const JOB: &str = "killjob";

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kill and restart the child `rounds` times, verifying after every kill.
    Drive {
        /// Kill/verify rounds.
        #[arg(long, default_value_t = 50)]
        rounds: u32,
        /// Seed of the kill timing and of the workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Working directory (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Longest time the child runs before it is killed, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        max_run_ms: u64,
    },
    /// The workload (started by `drive`).
    Child {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match args.command {
            Command::Drive {
                rounds,
                seed,
                dir,
                max_run_ms,
            } => drive(rounds, seed, dir, max_run_ms).await,
            Command::Child { dir, seed } => child(&dir, seed).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// xorshift64*: small, deterministic, good enough for workloads and timings.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One operation of the workload.
enum Op {
    Put(u64, Vec<u8>),
    Delete(u64),
    Append(u64, u32),
}

/// The operations of round `round` (a pure function of seed and round).
fn round_ops(seed: u64, round: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let count = if round == 1 {
        KEYS * 2
    } else {
        200 + rng.next() % 400
    };
    (0..count)
        .map(|_| {
            let r = rng.next();
            let key = r % KEYS;
            match (r >> 32) % 10 {
                0 => Op::Delete(key),
                1..=3 => Op::Append(key, (r >> 16) as u32),
                _ => Op::Put(key, vec![(r >> 8) as u8; 16 + (r >> 40) as usize % 200]),
            }
        })
        .collect()
}

#[derive(Default, PartialEq, Debug)]
struct Model {
    values: BTreeMap<u64, Vec<u8>>,
    lists: BTreeMap<u64, Vec<u32>>,
}

fn model_after(seed: u64, rounds: u64) -> Model {
    let mut model = Model::default();
    for round in 1..=rounds {
        for op in round_ops(seed, round) {
            match op {
                Op::Put(k, v) => {
                    model.values.insert(k, v);
                }
                Op::Delete(k) => {
                    model.values.remove(&k);
                }
                Op::Append(k, x) => model.lists.entry(k).or_default().push(x),
            }
        }
    }
    model
}

fn ranges() -> Vec<KeyGroupRange> {
    (0..PARALLELISM)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, PARALLELISM, i).expect("valid split"))
        .collect()
}

fn backend_settings() -> BackendSettings {
    BackendSettings {
        write_buffer_size_bytes: 256 << 10,
        target_file_size_bytes: 256 << 10,
        ..BackendSettings::default()
    }
}

fn checkpoint_settings() -> CheckpointSettings {
    CheckpointSettings {
        retained: 2,
        ..CheckpointSettings::default()
    }
}

fn route(backends: &[KeyedStateBackend], key: u64) -> &KeyedStateBackend {
    let group = rockpoint::key_group_of(
        &rmp_serde::to_vec(&key).expect("u64 encodes"),
        MAX_PARALLELISM,
    );
    backends
        .iter()
        .find(|b| b.key_groups().contains(group))
        .expect("ranges cover all groups")
}

/// The states the child writes: values (put and deleted), lists (appended) and the round marker.
const VALUES: rockpoint::ValueStateDescriptor<u64, Vec<u8>> =
    rockpoint::ValueStateDescriptor::new("values");
const LISTS: rockpoint::ListStateDescriptor<u64, u32> =
    rockpoint::ListStateDescriptor::new("lists");
const META: rockpoint::ValueStateDescriptor<String, u64> =
    rockpoint::ValueStateDescriptor::new("meta");

fn round_of(backends: &[KeyedStateBackend]) -> Result<u64> {
    // The round lives in backend 0 under a key of its own range (key group of key 0 decides which).
    let mut round = 0;
    for backend in backends {
        if let Some(r) = backend.state(&META)?.get(&meta_key(backend))? {
            round = round.max(r);
        }
    }
    Ok(round)
}

/// A key of the "meta" state that falls in `backend`'s range.
fn meta_key(backend: &KeyedStateBackend) -> String {
    (0..)
        .map(|i| format!("round-{i}"))
        .find(|k| {
            let group =
                rockpoint::key_group_of(&rmp_serde::to_vec(k).expect("encodes"), MAX_PARALLELISM);
            backend.key_groups().contains(group)
        })
        .expect("some key maps to every range")
}

fn scan(backends: &[KeyedStateBackend]) -> Result<Model> {
    let mut model = Model::default();
    for backend in backends {
        for entry in backend.state(&VALUES)?.entries(None)? {
            let (k, v) = entry?;
            model.values.insert(k, v);
        }
        for entry in backend.state(&LISTS)?.entries(None)? {
            let (k, v) = entry?;
            model.lists.insert(k, v);
        }
    }
    Ok(model)
}

fn restore_targets(base: &Path) -> Vec<RestoreTarget> {
    ranges()
        .into_iter()
        .enumerate()
        .map(|(i, key_groups)| RestoreTarget {
            dir: base.join(format!("backend-{i}")),
            key_groups,
            settings: backend_settings(),
        })
        .collect()
}

async fn child(dir: &Path, seed: u64) -> Result<()> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.join("root"))?);
    let coordinator =
        CheckpointCoordinator::open(store.clone(), JOB, checkpoint_settings()).await?;
    let run = dir.join(format!("run-{}", std::process::id()));
    let backends = match coordinator.latest() {
        Some(latest) => {
            coordinator
                .restore(
                    &RestoreSource::Metadata(latest.metadata_path()),
                    &restore_targets(&run),
                    ClaimMode::NoClaim,
                )
                .await?
        }
        None => restore_targets(&run)
            .into_iter()
            .map(|t| KeyedStateBackend::open(&t.dir, MAX_PARALLELISM, t.key_groups, t.settings))
            .collect::<rockpoint::Result<Vec<_>>>()?,
    };
    let mut round = round_of(&backends)?;
    loop {
        round += 1;
        for op in round_ops(seed, round) {
            match op {
                Op::Put(k, v) => route(&backends, k).state(&VALUES)?.put(&k, &v)?,
                Op::Delete(k) => route(&backends, k).state(&VALUES)?.clear(&k)?,
                Op::Append(k, x) => route(&backends, k).state(&LISTS)?.add(&k, &x)?,
            }
        }
        for backend in &backends {
            backend.state(&META)?.put(&meta_key(backend), &round)?;
        }
        let refs: Vec<&KeyedStateBackend> = backends.iter().collect();
        let done = coordinator.checkpoint(&refs).await?;
        println!(
            "round {round} checkpoint {} uploaded {}",
            done.id(),
            done.uploaded_bytes()
        );
    }
}

/// Verifies the root after a kill: recovery, every retained checkpoint against the model, GC exact.
async fn verify(dir: &Path, seed: u64, attempt: u32) -> Result<u64> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.join("root"))?);
    let coordinator =
        CheckpointCoordinator::open(store.clone(), JOB, checkpoint_settings()).await?;
    let mut latest_round = 0;
    for metadata in coordinator.retained() {
        let base = dir.join(format!("verify-{attempt}-{}", metadata.checkpoint_id));
        let mut backends = Vec::new();
        for target in restore_targets(&base) {
            backends.push(
                rockpoint::restore_backend(
                    &*store,
                    &RestoreSource::Metadata(metadata.metadata_path()),
                    &target,
                    4,
                    None,
                )
                .await?,
            );
        }
        let round = round_of(&backends)?;
        let restored = scan(&backends)?;
        if restored != model_after(seed, round) {
            return Err(format!(
                "checkpoint {} (round {round}) does not hold the state of round {round}",
                metadata.checkpoint_id
            )
            .into());
        }
        latest_round = latest_round.max(round);
        drop(backends);
        std::fs::remove_dir_all(&base)?;
    }
    let gc = GcOptions {
        grace_period: Duration::ZERO,
        mode: SweepMode::Delete,
        ..GcOptions::default()
    };
    collect_garbage(&*store, &gc).await?;
    let second = collect_garbage(&*store, &gc).await?;
    if !second.is_empty() {
        return Err(format!("a second GC deleted something: {second:?}").into());
    }
    let mut referenced = std::collections::BTreeSet::new();
    for metadata in coordinator
        .retained()
        .iter()
        .chain(coordinator.savepoints().iter())
    {
        referenced.extend(metadata.shared_hashes());
    }
    let present = store.list("shared/").await?.len();
    if present != referenced.len() {
        return Err(format!(
            "{present} shared files present but {} referenced",
            referenced.len()
        )
        .into());
    }
    Ok(latest_round)
}

async fn drive(rounds: u32, seed: u64, dir: Option<PathBuf>, max_run_ms: u64) -> Result<()> {
    let temp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let exe = std::env::current_exe()?;
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut latest_round = 0;
    let mut advanced = 0;
    for attempt in 1..=rounds {
        let mut child = std::process::Command::new(&exe)
            .args(["child", "--dir"])
            .arg(&dir)
            .args(["--seed", &seed.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let run_ms = 50 + rng.next() % max_run_ms.max(1);
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                e.read_to_string(&mut stderr)?;
            }
            return Err(format!(
                "seed {seed}, round {attempt}: the child exited by itself ({status}): {stderr}"
            )
            .into());
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        let round = verify(&dir, seed, attempt)
            .await
            .map_err(|e| format!("seed {seed}, round {attempt}: verification failed: {e}"))?;
        if round < latest_round {
            return Err(format!("seed {seed}, round {attempt}: the latest checkpoint went back from round {latest_round} to {round}").into());
        }
        if round > latest_round {
            advanced += 1;
        }
        latest_round = round;
        // Old run directories of killed children are local scratch.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("run-") {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    println!(
        "kill loop: seed {seed}, {rounds} kills, {advanced} of them after new checkpoints, workload round {latest_round} reached, \
         every retained checkpoint verified after every kill, 0 violations, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
