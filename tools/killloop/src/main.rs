//! The kill loop: a child process runs a keyed-state workload with a checkpoint after every round
//! against a root (a local directory, or any root `rockpoint::open_root` opens, such as
//! `s3://bucket/prefix`); the driver SIGKILLs it at random moments, restarts it, and verifies the
//! latest checkpoint (and every retained one) against a model of the workload, hundreds of times.
//!
//! The workload is a deterministic function of the seed and the round number, and the round is part
//! of the state, so the verifier knows exactly which state a checkpoint must hold without the child
//! ever writing an oracle: it replays rounds 1..=r into an in-memory model. The child's only output
//! is its acknowledgements (`ack <round> <checkpoint id>`, one line per completed checkpoint); after
//! every kill the last one must still be retained and restore to the state of its round.
//!
//! After every kill the driver also runs GC twice (the second pass must find nothing) and lists
//! the whole root: only the job record, the retained checkpoints' records and private files and
//! exactly the shared files they reference may remain; no pin, no GC intent, and (local root) no
//! temporary file.
//!
//! `rockpoint-killloop drive --rounds 500 --seed 7` (the long tier, local root);
//! `--root s3://bucket/prefix` runs it against S3, with the endpoint and credentials from the
//! `AWS_*` environment (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`). The quick tier runs from `tests/fault_kill_loop.rs`, on both roots.
//! On failure the driver prints the seed and the round.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, ClaimMode, GcOptions,
    KeyGroupRange, KeyedStateBackend, RestoreSource, RestoreTarget, RootOptions, Store, SweepMode,
    collect_garbage, open_root,
};
use serde_bytes::ByteBuf;

const MAX_PARALLELISM: u32 = 64;
const PARALLELISM: u32 = 2;
const KEYS: u64 = 2_000;
const JOB: &str = "killjob";
/// Size of a big value (`--big-every`): above the 8 MiB an object store takes in one request, so
/// the WAL segment and the SST holding it go up as multipart uploads.
const BIG_VALUE_BYTES: usize = 10 << 20;
/// Big values rotate over this many keys.
const BIG_KEYS: u64 = 2;
/// An object store's record of a multipart upload (`uploads/<nonce>`) vouches for its uploader
/// for a lease (60 s, renewed while parts go up); GC aborts the upload and deletes the record only
/// once the lease has run out. So a killed child's record may outlive the kill by the lease, and
/// no record may be older than this (the lease, plus margin) after a GC pass.
const UPLOAD_RECORD_MAX_AGE: Duration = Duration::from_secs(90);

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
        /// Working directory: the children's and the verifier's backends, the children's output,
        /// and the root unless `--root` is given (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The checkpoint root: a local directory or a URL `rockpoint::open_root` takes
        /// (`s3://bucket/prefix`, `file:///…`); object store endpoint and credentials come from
        /// the environment (`AWS_*`). Use a fresh one. Default: `<dir>/root`.
        #[arg(long)]
        root: Option<String>,
        /// Longest time the child runs before it is killed, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        max_run_ms: u64,
        /// Every this many workload rounds, one 10 MiB incompressible value is put (so some
        /// uploads are multipart on an object store); 0: never.
        #[arg(long, default_value_t = 0)]
        big_every: u64,
    },
    /// The workload (started by `drive`).
    Child {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        root: String,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 0)]
        big_every: u64,
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
                root,
                max_run_ms,
                big_every,
            } => {
                let workload = Workload { seed, big_every };
                drive(rounds, workload, dir, root, max_run_ms).await
            }
            Command::Child {
                dir,
                root,
                seed,
                big_every,
            } => child(&dir, &root, &Workload { seed, big_every }).await,
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
    /// Put `Workload::big_value(round)` in the blobs state.
    Big(u64, u64),
}

/// The workload: a pure function of the seed and the round.
struct Workload {
    seed: u64,
    big_every: u64,
}

impl Workload {
    /// The operations of round `round`.
    fn round_ops(&self, round: u64) -> Vec<Op> {
        let mut rng = Rng::new(self.seed ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let count = if round == 1 {
            KEYS * 2
        } else {
            200 + rng.next() % 400
        };
        let mut ops: Vec<Op> = (0..count)
            .map(|_| {
                let r = rng.next();
                let key = r % KEYS;
                match (r >> 32) % 10 {
                    0 => Op::Delete(key),
                    1..=3 => Op::Append(key, (r >> 16) as u32),
                    _ => Op::Put(key, vec![(r >> 8) as u8; 16 + (r >> 40) as usize % 200]),
                }
            })
            .collect();
        if self.big_every > 0 && round.is_multiple_of(self.big_every) {
            ops.push(Op::Big((round / self.big_every) % BIG_KEYS, round));
        }
        ops
    }

    /// 10 MiB of random bytes (no block compression shrinks them).
    fn big_value(&self, round: u64) -> ByteBuf {
        let mut rng = Rng::new(self.seed ^ round.wrapping_mul(0xA076_1D64_78BD_642F) ^ 0xB16);
        let mut value = vec![0u8; BIG_VALUE_BYTES];
        for chunk in value.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
        }
        ByteBuf::from(value)
    }

    /// The state after rounds `1..=rounds`.
    fn model_after(&self, rounds: u64) -> Model {
        let mut model = Model::default();
        let mut big = BTreeMap::new();
        for round in 1..=rounds {
            for op in self.round_ops(round) {
                match op {
                    Op::Put(k, v) => {
                        model.values.insert(k, v);
                    }
                    Op::Delete(k) => {
                        model.values.remove(&k);
                    }
                    Op::Append(k, x) => model.lists.entry(k).or_default().push(x),
                    Op::Big(k, r) => {
                        big.insert(k, r);
                    }
                }
            }
        }
        // Only the last big value of each key is built.
        for (k, r) in big {
            model.blobs.insert(k, self.big_value(r));
        }
        model
    }
}

#[derive(Default, PartialEq, Debug)]
struct Model {
    values: BTreeMap<u64, Vec<u8>>,
    lists: BTreeMap<u64, Vec<u32>>,
    blobs: BTreeMap<u64, ByteBuf>,
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

/// The states the child writes: values (put and deleted), lists (appended), blobs (big values, one
/// MessagePack binary each) and the round marker.
const VALUES: rockpoint::ValueStateDescriptor<u64, Vec<u8>> =
    rockpoint::ValueStateDescriptor::new("values");
const LISTS: rockpoint::ListStateDescriptor<u64, u32> =
    rockpoint::ListStateDescriptor::new("lists");
const BLOBS: rockpoint::ValueStateDescriptor<u64, ByteBuf> =
    rockpoint::ValueStateDescriptor::new("blobs");
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
        for entry in backend.state(&BLOBS)?.entries(None)? {
            let (k, v) = entry?;
            model.blobs.insert(k, v);
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

/// Opens the root at `root` (a path or a URL; object store settings from the environment).
async fn open(root: &str) -> Result<Arc<dyn Store>> {
    open_root(root, &RootOptions::default())
        .await
        .map_err(|e| format!("opening the root `{root}`: {e}").into())
}

/// The local directory of `root`, if it is one (its temporary files are checked with std::fs).
fn local_dir(root: &str) -> Option<PathBuf> {
    match root.split_once("://") {
        None => Some(PathBuf::from(root)),
        Some(("file", path)) => Some(PathBuf::from(path)),
        Some(_) => None,
    }
}

async fn child(dir: &Path, root: &str, workload: &Workload) -> Result<()> {
    let store = open(root).await?;
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
        for op in workload.round_ops(round) {
            match op {
                Op::Put(k, v) => route(&backends, k).state(&VALUES)?.put(&k, &v)?,
                Op::Delete(k) => route(&backends, k).state(&VALUES)?.clear(&k)?,
                Op::Append(k, x) => route(&backends, k).state(&LISTS)?.add(&k, &x)?,
                Op::Big(k, r) => route(&backends, k)
                    .state(&BLOBS)?
                    .put(&k, &workload.big_value(r))?,
            }
        }
        for backend in &backends {
            backend.state(&META)?.put(&meta_key(backend), &round)?;
        }
        let refs: Vec<&KeyedStateBackend> = backends.iter().collect();
        let done = coordinator.checkpoint(&refs).await?;
        // The acknowledgement (stdout is line-buffered: one write per line). From here on the
        // checkpoint must survive any kill.
        println!(
            "ack {round} {} uploaded {}",
            done.id(),
            done.uploaded_bytes()
        );
    }
}

/// An acknowledged checkpoint: the child's `ack <round> <id>` line.
#[derive(Clone, Copy, Debug)]
struct Ack {
    round: u64,
    id: u64,
}

/// The acknowledgements in a child's output (complete lines only).
fn read_acks(path: &Path) -> Result<Vec<Ack>> {
    let mut acks = Vec::new();
    let text = std::fs::read(path)?;
    for line in BufReader::new(&text[..]).lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ack") {
            continue;
        }
        let (Some(round), Some(id)) = (words.next(), words.next()) else {
            continue;
        };
        acks.push(Ack {
            round: round.parse()?,
            id: id.parse()?,
        });
    }
    Ok(acks)
}

/// What one verification found.
struct Verified {
    latest_round: u64,
    checkpoints: usize,
    /// Objects GC deleted (shared files, private files, pins, temporary files).
    collected: usize,
    /// Startup probe objects of killed children (`probes/…`), which nothing removes.
    probes: usize,
    /// Upload records of killed children still under their lease.
    upload_records: usize,
}

/// Verifies the root after a kill: recovery, every retained checkpoint against the model, the
/// last acknowledged checkpoint retained, GC exact, nothing else left in the root.
async fn verify(
    root: &str,
    dir: &Path,
    workload: &Workload,
    attempt: u32,
    acked: Option<Ack>,
) -> Result<Verified> {
    let store = open(root).await?;
    let coordinator =
        CheckpointCoordinator::open(store.clone(), JOB, checkpoint_settings()).await?;
    let mut latest_round = 0;
    let mut rounds = BTreeMap::new();
    let retained = coordinator.retained();
    for metadata in &retained {
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
        if restored != workload.model_after(round) {
            return Err(format!(
                "checkpoint {} (round {round}) does not hold the state of round {round}",
                metadata.checkpoint_id
            )
            .into());
        }
        rounds.insert(metadata.checkpoint_id, round);
        latest_round = latest_round.max(round);
        drop(backends);
        std::fs::remove_dir_all(&base)?;
    }
    // The last acknowledged checkpoint restores to its round; it may be gone only if as many newer
    // checkpoints as are retained have replaced it (committed by later children, or by the same
    // one after the acknowledgement, unacknowledged because of the kill).
    if let Some(ack) = acked {
        match rounds.get(&ack.id) {
            Some(&round) if round == ack.round => {}
            Some(&round) => {
                return Err(format!(
                    "acknowledged checkpoint {} of round {} restores to round {round}",
                    ack.id, ack.round
                )
                .into());
            }
            None => {
                let newer = rounds.keys().filter(|&&id| id > ack.id).count();
                if newer < checkpoint_settings().retained || latest_round <= ack.round {
                    return Err(format!(
                        "acknowledged checkpoint {} (round {}) is lost; retained (id: round): {rounds:?}",
                        ack.id, ack.round
                    )
                    .into());
                }
            }
        }
    }
    // The child is dead: nothing is in flight, so GC may take everything unreferenced at once.
    let gc = GcOptions {
        grace_period: Duration::ZERO,
        incomplete_min_age: Duration::ZERO,
        mode: SweepMode::Delete,
        ..GcOptions::default()
    };
    let first = collect_garbage(&*store, &gc).await?;
    if !first.unreadable.is_empty() {
        return Err(format!("GC found unreadable records: {:?}", first.unreadable).into());
    }
    let second = collect_garbage(&*store, &gc).await?;
    if !second.is_empty() {
        return Err(format!("a second GC deleted something: {second:?}").into());
    }
    let (probes, upload_records) = check_leftovers(root, &*store, &coordinator).await?;
    Ok(Verified {
        latest_round,
        checkpoints: retained.len(),
        collected: first.shared_files.len()
            + first.private_files.len()
            + first.pins.len()
            + first.incomplete.len(),
        probes,
        upload_records,
    })
}

/// After GC, the root holds exactly the job record, the retained checkpoints' records and private
/// files, and the shared files they reference: no pin, no intent, no orphan, and on an object
/// store no `uploads/` record older than [`UPLOAD_RECORD_MAX_AGE`] (GC at `incomplete_min_age` 0
/// aborts every tracked multipart upload of a killed child once its lease has run out, and
/// deletes its record). Returns the number of startup probe objects left by children killed while
/// opening the root (reported, not an error: nothing references or removes them) and of upload
/// records still under their lease. On a local root, no temporary file may remain either; an
/// object store has none (an object appears whole or not at all; an interrupted multipart upload
/// is not listed).
async fn check_leftovers(
    root: &str,
    store: &dyn Store,
    coordinator: &CheckpointCoordinator,
) -> Result<(usize, usize)> {
    let kept = coordinator
        .retained()
        .into_iter()
        .chain(coordinator.savepoints())
        .collect::<Vec<_>>();
    let checkpoint_dirs: Vec<String> = kept
        .iter()
        .map(|m| {
            let path = m.metadata_path();
            path[..=path.rfind('/').expect("a metadata path has a directory")].to_owned()
        })
        .collect();
    let referenced: BTreeSet<String> = kept
        .iter()
        .flat_map(|m| m.shared_hashes())
        .map(|h| {
            let hex = h.to_hex();
            format!("shared/{}/{hex}", &hex[..2])
        })
        .collect();
    let job_record = format!("jobs/{JOB}/_job");
    let mut shared = BTreeSet::new();
    let mut probes = 0;
    let mut upload_records = 0;
    let mut unexpected = Vec::new();
    for object in store.list("").await? {
        let path = object.path;
        if path.starts_with("shared/") {
            shared.insert(path);
        } else if path.starts_with("probes/") {
            probes += 1;
        } else if path.starts_with("uploads/")
            && object.modified.elapsed().unwrap_or_default() < UPLOAD_RECORD_MAX_AGE
        {
            upload_records += 1;
        } else if path != job_record
            && path != "rockpoint-root"
            && !checkpoint_dirs.iter().any(|d| path.starts_with(d))
        {
            unexpected.push(path);
        }
    }
    if !unexpected.is_empty() {
        return Err(format!(
            "after GC the root still holds {} objects nothing needs: {:?}",
            unexpected.len(),
            &unexpected[..unexpected.len().min(10)]
        )
        .into());
    }
    if shared != referenced {
        let extra: Vec<_> = shared.difference(&referenced).take(5).collect();
        let missing: Vec<_> = referenced.difference(&shared).take(5).collect();
        return Err(format!(
            "{} shared files present but {} referenced (unreferenced: {extra:?}, missing: {missing:?})",
            shared.len(),
            referenced.len()
        )
        .into());
    }
    if let Some(dir) = local_dir(root) {
        let temporary = temporary_files(&dir)?;
        if !temporary.is_empty() {
            return Err(format!(
                "after GC (incomplete_min_age 0) temporary files remain: {temporary:?}"
            )
            .into());
        }
    }
    Ok((probes, upload_records))
}

/// Temporary files (`.<name>.tmp-<nonce>`) under a local root.
fn temporary_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp-") {
                    found.push(entry.path());
                }
            }
        }
    }
    Ok(found)
}

async fn drive(
    rounds: u32,
    workload: Workload,
    dir: Option<PathBuf>,
    root: Option<String>,
    max_run_ms: u64,
) -> Result<()> {
    let seed = workload.seed;
    let temp = tempfile::tempdir()?;
    let dir = dir.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let root = root.unwrap_or_else(|| dir.join("root").to_string_lossy().into_owned());
    let exe = std::env::current_exe()?;
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut latest_round = 0;
    let mut advanced = 0;
    let mut acks = 0;
    let mut last_ack: Option<Ack> = None;
    let mut verified = 0;
    let mut collected = 0;
    let mut probes = 0;
    let mut upload_records = 0;
    let mut most_upload_records = 0;
    for attempt in 1..=rounds {
        let out = dir.join(format!("child-{attempt}.out"));
        let err = dir.join(format!("child-{attempt}.err"));
        let mut child = std::process::Command::new(&exe)
            .args(["child", "--dir"])
            .arg(&dir)
            .args(["--root", &root])
            .args(["--seed", &seed.to_string()])
            .args(["--big-every", &workload.big_every.to_string()])
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let run_ms = 50 + rng.next() % max_run_ms.max(1);
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        if let Some(status) = child.try_wait()? {
            let stderr = std::fs::read_to_string(&err).unwrap_or_default();
            return Err(format!(
                "seed {seed}, round {attempt}: the child exited by itself ({status}): {stderr}"
            )
            .into());
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        let new_acks = read_acks(&out)?;
        acks += new_acks.len();
        if let Some(ack) = new_acks.last() {
            last_ack = Some(*ack);
        }
        let found = verify(&root, &dir, &workload, attempt, last_ack)
            .await
            .map_err(|e| format!("seed {seed}, round {attempt}: verification failed: {e}"))?;
        let round = found.latest_round;
        if round < latest_round {
            return Err(format!("seed {seed}, round {attempt}: the latest checkpoint went back from round {latest_round} to {round}").into());
        }
        if round > latest_round {
            advanced += 1;
        }
        latest_round = round;
        verified += found.checkpoints;
        collected += found.collected;
        probes = found.probes;
        upload_records = found.upload_records;
        most_upload_records = most_upload_records.max(upload_records);
        // Old run directories and outputs of killed children are local scratch.
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("run-") {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if name.starts_with("child-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let mode = if local_dir(&root).is_some() {
        "local"
    } else {
        "object store"
    };
    println!(
        "kill loop ({mode} root {root}): seed {seed}, {rounds} kills, {advanced} of them after new checkpoints, \
         {acks} checkpoints acknowledged, the last one retained after every kill, workload round {latest_round} reached, \
         {verified} retained checkpoints restored and verified, {collected} objects collected by GC, \
         {probes} startup probe objects left, {upload_records} upload records under lease left \
         (at most {most_upload_records} after a kill), 0 violations, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
