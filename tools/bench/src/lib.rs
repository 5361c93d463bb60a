//! The checkpoint comparison shared by the criterion benches (`benches/`) and the report tool
//! (`rockpoint-benchreport`, `src/main.rs`).
//!
//! One backend holds `state_bytes` of incompressible 1 KiB values. A *cycle* first changes a fraction
//! of the keys, then measures on the same DB:
//!
//! 1. the pause, with the change still in the memtable: rockpoint's synchronous phase (the
//!    checkpoint is then aborted, so it does not move the baseline) versus a Flink-style synchronous
//!    phase (flush + RocksDB `Checkpoint` into a directory);
//! 2. after waiting for compactions and a global `sync` (untimed, so every contender starts from the
//!    same quiet disk), the same delta three ways: rockpoint's end-to-end checkpoint to a local root,
//!    RocksDB's BackupEngine incremental backup, and the floor — `cp` of exactly the SSTs new since
//!    the previous cycle, then `sync` of those files.
//!
//! `unflushed_cycle` measures what rockpoint does by default instead: checkpoint with the change in
//! the memtable, shipping the WAL written since the previous checkpoint.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, KeyGroupRange, KeyedStateBackend,
    LocalStore, Store, ValueState,
};
use rocksdb::backup::{BackupEngine, BackupEngineOptions};

pub const VALUE_BYTES: usize = 1024;
/// The one state every bench backend holds.
pub const VALUES: rockpoint::ValueStateDescriptor<u64, Vec<u8>> =
    rockpoint::ValueStateDescriptor::new("values");

/// What one cycle measured.
#[derive(Clone, Debug, Default)]
pub struct Cycle {
    /// rockpoint's synchronous pause with the change in the memtable.
    pub pause: Duration,
    /// Flink-style synchronous phase: flush + Checkpoint.
    pub flink_pause: Duration,
    /// rockpoint end-to-end on the flushed delta.
    pub e2e: Duration,
    /// Bytes it uploaded.
    pub uploaded: u64,
    /// BackupEngine incremental backup of the same delta.
    pub backup: Duration,
    /// cp + sync of the new SSTs.
    pub floor: Duration,
    /// Bytes of SSTs new since the previous cycle.
    pub new_sst_bytes: u64,
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub backend: KeyedStateBackend,
    pub values: ValueState<u64, Vec<u8>>,
    pub coordinator: CheckpointCoordinator,
    pub store: Arc<dyn Store>,
    pub keys: u64,
    backup: BackupEngine,
    floor_dir: PathBuf,
    floor_seen: HashSet<String>,
    rng: u64,
}

pub fn settings() -> BackendSettings {
    BackendSettings::default()
}

impl Fixture {
    /// A backend with `state_bytes` of state, checkpointed, backed up and copied once (untimed).
    pub async fn new(state_bytes: u64) -> Fixture {
        let dir = tempfile::tempdir_in(bench_dir()).expect("bench directory");
        let backend = KeyedStateBackend::open(
            dir.path().join("backend"),
            128,
            KeyGroupRange::all(128).unwrap(),
            settings(),
        )
        .expect("backend opens");
        let values = backend.state(&VALUES).expect("state registers");
        let store: Arc<dyn Store> =
            Arc::new(LocalStore::new(dir.path().join("root")).expect("store"));
        let coordinator =
            CheckpointCoordinator::open(store.clone(), "bench", CheckpointSettings::default())
                .await
                .expect("coordinator");
        let backup_dir = dir.path().join("backup");
        let backup = BackupEngine::open(
            &BackupEngineOptions::new(&backup_dir).expect("backup options"),
            &rocksdb::Env::new().expect("env"),
        )
        .expect("backup engine");
        let floor_dir = dir.path().join("floor");
        std::fs::create_dir_all(&floor_dir).expect("floor directory");
        let keys = (state_bytes / VALUE_BYTES as u64).max(1);
        let mut fixture = Fixture {
            dir,
            backend,
            values,
            coordinator,
            store,
            keys,
            backup,
            floor_dir,
            floor_seen: HashSet::new(),
            rng: SEED,
        };
        for key in 0..keys {
            let value = fixture.value();
            fixture.values.put(&key, &value).expect("write");
        }
        fixture.backend.flush().expect("flush");
        fixture
            .coordinator
            .checkpoint(&[&fixture.backend])
            .await
            .expect("first checkpoint");
        fixture
            .backup
            .create_new_backup_flush(fixture.backend.rocksdb(), true)
            .expect("first backup");
        fixture.copy_new_ssts();
        fixture
    }

    fn next(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    fn value(&mut self) -> Vec<u8> {
        random_value(&mut self.rng)
    }

    /// Overwrites `rate` of the keys (chosen at random) with new values.
    pub fn change(&mut self, rate: f64) {
        let values = self.values.clone();
        self.change_in(&values, rate);
    }

    /// Overwrites `rate` of the keys of `values` (chosen at random) with new values.
    fn change_in(&mut self, values: &ValueState<u64, Vec<u8>>, rate: f64) {
        let count = ((self.keys as f64) * rate).ceil() as u64;
        for _ in 0..count {
            let key = self.next() % self.keys;
            let value = self.value();
            values.put(&key, &value).expect("write");
        }
    }

    /// Restores the latest checkpoint into a new job without claiming it, changes `rate` of the
    /// keys there and checkpoints that job once (it is then finished, which discards its
    /// checkpoint). Returns (bytes its first checkpoint uploaded, WAL written since the restore +
    /// bytes of SSTs the restored checkpoint did not hold, bytes the restore brought back).
    pub async fn first_checkpoint_after_restore(&mut self, rate: f64) -> (u64, u64, u64) {
        let latest = self.coordinator.latest().expect("a checkpoint");
        let coordinator = CheckpointCoordinator::open(
            self.store.clone(),
            "bench-restored",
            CheckpointSettings::default(),
        )
        .await
        .expect("coordinator of the restored job");
        let target = self
            .dir
            .path()
            .join(format!("restored-job-{}", latest.checkpoint_id));
        let backend = coordinator
            .restore(
                &rockpoint::RestoreSource::Metadata(latest.metadata_path()),
                &[rockpoint::RestoreTarget {
                    dir: target.clone(),
                    key_groups: KeyGroupRange::all(128).unwrap(),
                    settings: settings(),
                }],
                rockpoint::ClaimMode::NoClaim,
            )
            .await
            .expect("restore")
            .pop()
            .expect("one backend");
        let values = backend.state(&VALUES).expect("restored state");
        let db_dir = backend.dir().join("db");
        let wal_before = Self::wal_sizes_in(&db_dir);
        self.change_in(&values, rate);
        let wal = Self::wal_written(&wal_before, &Self::wal_sizes_in(&db_dir));
        let done = coordinator
            .checkpoint(&[&backend])
            .await
            .expect("first checkpoint after the restore");
        let new_ssts = new_shared_bytes(&done.metadata, &latest);
        coordinator
            .shutdown(rockpoint::JobEnd::Finished)
            .await
            .expect("finish the restored job");
        drop(values);
        drop(backend);
        std::fs::remove_dir_all(&target).expect("remove the restored job");
        (
            done.uploaded_bytes(),
            wal + new_ssts,
            latest.backends[0].full_size_bytes(),
        )
    }

    fn db_dir(&self) -> PathBuf {
        self.backend.dir().join("db")
    }

    /// Sizes of the live WAL files, by name.
    fn wal_sizes(&self) -> std::collections::HashMap<String, u64> {
        Self::wal_sizes_in(&self.db_dir())
    }

    /// Sizes of the live WAL files of the DB in `db_dir`, by name.
    fn wal_sizes_in(db_dir: &std::path::Path) -> std::collections::HashMap<String, u64> {
        std::fs::read_dir(db_dir)
            .expect("db dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| {
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                (e.file_name().to_string_lossy().into_owned(), len)
            })
            .collect()
    }

    /// WAL bytes written between two measurements: growth of files seen before, all of new ones
    /// (a WAL that was deleted meanwhile, after a flush, subtracts nothing).
    fn wal_written(
        before: &std::collections::HashMap<String, u64>,
        after: &std::collections::HashMap<String, u64>,
    ) -> u64 {
        after
            .iter()
            .map(|(name, len)| len.saturating_sub(before.get(name).copied().unwrap_or(0)))
            .sum()
    }

    /// One timed BackupEngine incremental backup (old backups purged untimed).
    pub fn backup_once(&mut self) -> Duration {
        let start = Instant::now();
        self.backup
            .create_new_backup_flush(self.backend.rocksdb(), false)
            .expect("backup");
        let elapsed = start.elapsed();
        self.backup.purge_old_backups(1).expect("purge old backups");
        elapsed
    }

    /// One timed floor copy of the SSTs new since the last one.
    pub fn floor_once(&mut self) -> Duration {
        self.copy_new_ssts().0
    }

    /// The floor: cp + sync of the SSTs not copied before. Returns (time, bytes).
    fn copy_new_ssts(&mut self) -> (Duration, u64) {
        // Compaction must not delete a listed SST before cp reads it (untimed, like RocksDB's own
        // Checkpoint and BackupEngine do internally).
        self.backend
            .rocksdb()
            .disable_file_deletions()
            .expect("disable deletions");
        let copied = self.copy_listed_ssts();
        self.backend
            .rocksdb()
            .enable_file_deletions()
            .expect("enable deletions");
        copied
    }

    fn copy_listed_ssts(&mut self) -> (Duration, u64) {
        let mut new = Vec::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(self.db_dir()).expect("db dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sst") && !self.floor_seen.contains(&name) {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
                new.push(entry.path());
                self.floor_seen.insert(name);
            }
        }
        let elapsed = cp_and_sync(&new, &self.floor_dir);
        // Keep the floor's copies to the live set, like the other two keep theirs.
        let live: HashSet<String> = std::fs::read_dir(self.db_dir())
            .expect("db dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for entry in std::fs::read_dir(&self.floor_dir)
            .expect("floor dir")
            .flatten()
        {
            if !live.contains(&*entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        (elapsed, bytes)
    }

    /// Waits for background flushes and compactions, then flushes dirty pages system-wide (untimed).
    pub fn quiesce(&self) {
        self.backend
            .rocksdb()
            .wait_for_compact(&rocksdb::WaitForCompactOptions::default())
            .expect("wait for compactions");
        std::process::Command::new("sync")
            .status()
            .expect("sync runs");
    }

    /// One measured cycle after changing `rate` of the keys (see the module docs).
    pub async fn cycle(&mut self, rate: f64) -> Cycle {
        self.change(rate);
        let mut cycle = Cycle::default();
        // 1. Pauses on the same memtable. rockpoint's checkpoint is aborted after its sync phase.
        let ticket = self
            .coordinator
            .trigger(rockpoint::SnapshotKind::Checkpoint)
            .expect("trigger");
        let pending = self.backend.snapshot(&ticket).expect("sync phase");
        cycle.pause = pending.sync_pause();
        drop(pending);
        self.coordinator.abort(&ticket).await.expect("abort");
        let flink_dir = self.dir.path().join("flink-checkpoint");
        let start = Instant::now();
        self.backend.flush().expect("flush");
        rocksdb::checkpoint::Checkpoint::new(self.backend.rocksdb())
            .expect("checkpoint object")
            .create_checkpoint(&flink_dir)
            .expect("RocksDB checkpoint");
        cycle.flink_pause = start.elapsed();
        std::fs::remove_dir_all(&flink_dir).expect("remove Flink-style checkpoint");
        // 2. The same quiesced delta three ways.
        self.quiesce();
        let done = self
            .coordinator
            .checkpoint(&[&self.backend])
            .await
            .expect("checkpoint");
        cycle.e2e = done.duration;
        cycle.uploaded = done.uploaded_bytes();
        self.quiesce();
        cycle.backup = self.backup_once();
        self.quiesce();
        let (floor, bytes) = self.copy_new_ssts();
        cycle.floor = floor;
        cycle.new_sst_bytes = bytes;
        cycle
    }

    /// rockpoint's default path: change `rate` of the keys (keep it below the memtable size), then
    /// checkpoint without flushing. Returns (pause, end-to-end, uploaded bytes, bytes that were new:
    /// WAL written plus SSTs the checkpoint references that its predecessor did not).
    pub async fn unflushed_cycle(&mut self, rate: f64) -> (Duration, Duration, u64, u64) {
        let previous = self.coordinator.latest().expect("a checkpoint");
        let wal_before = self.wal_sizes();
        self.change(rate);
        let wal = Self::wal_written(&wal_before, &self.wal_sizes());
        self.quiesce();
        let done = self
            .coordinator
            .checkpoint(&[&self.backend])
            .await
            .expect("checkpoint");
        let new_ssts = new_shared_bytes(&done.metadata, &previous);
        (
            done.sync_pause,
            done.duration,
            done.uploaded_bytes(),
            wal + new_ssts,
        )
    }

    /// Restores the latest checkpoint into a fresh directory, then copies the very same stored
    /// objects with `cp` + `sync` (the floor). Page caches are dropped before each (where allowed)
    /// so both read from disk. Returns (restore time, floor time, bytes).
    pub async fn restore_vs_floor(&mut self) -> (Duration, Duration, u64) {
        let latest = self.coordinator.latest().expect("a checkpoint");
        let target = self
            .dir
            .path()
            .join(format!("restore-{}", latest.checkpoint_id));
        let handle = latest.backends[0].clone();
        drop_page_cache();
        let start = Instant::now();
        let restored = rockpoint::restore_backend(
            &*self.store,
            &rockpoint::RestoreSource::Metadata(latest.metadata_path()),
            &rockpoint::RestoreTarget {
                dir: target.clone(),
                key_groups: handle.key_groups,
                settings: settings(),
            },
            8,
            None,
        )
        .await
        .expect("restore");
        let restore_time = start.elapsed();
        drop(restored);
        std::fs::remove_dir_all(&target).expect("remove restore");
        // The floor: the same stored objects, copied and synced.
        let root = self.dir.path().join("root");
        let mut sources: Vec<PathBuf> = handle
            .shared_hashes()
            .map(|hash| {
                let hex = hash.to_hex();
                root.join("shared").join(&hex[..2]).join(&hex)
            })
            .collect();
        sources.extend(handle.private_files.iter().map(|f| root.join(&f.path)));
        sources.sort();
        sources.dedup();
        let copy_dir = self.dir.path().join("floor-restore");
        std::fs::create_dir_all(&copy_dir).expect("dir");
        let bytes = handle.full_size_bytes();
        drop_page_cache();
        let floor = cp_and_sync(&sources, &copy_dir);
        std::fs::remove_dir_all(&copy_dir).expect("remove copy");
        (restore_time, floor, bytes)
    }
}

/// The seed of the value generator of every bench state.
pub const SEED: u64 = 0x5EED_1234_ABCD_0001;

/// The next value of a xorshift64 generator.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// An incompressible value of [`VALUE_BYTES`].
pub fn random_value(state: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_BYTES);
    while out.len() < VALUE_BYTES {
        out.extend_from_slice(&xorshift(state).to_le_bytes());
    }
    out
}

/// Fills `buf` with incompressible bytes from the bench generator seeded with `state`.
pub fn fill_random(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let word = xorshift(state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// The state of [`Fixture`] alone (same values, same generator and seed), without the local root
/// and the contenders: for benches that bring their own store (the S3 report).
pub struct BenchState {
    pub backend: KeyedStateBackend,
    pub values: ValueState<u64, Vec<u8>>,
    pub keys: u64,
    rng: u64,
}

impl BenchState {
    /// A backend in `dir/backend` holding `state_bytes` of state, flushed and compacted.
    pub fn build(dir: &std::path::Path, state_bytes: u64) -> BenchState {
        let backend = KeyedStateBackend::open(
            dir.join("backend"),
            128,
            KeyGroupRange::all(128).unwrap(),
            settings(),
        )
        .expect("backend opens");
        let values = backend.state(&VALUES).expect("state registers");
        let keys = (state_bytes / VALUE_BYTES as u64).max(1);
        let mut state = BenchState {
            backend,
            values,
            keys,
            rng: SEED,
        };
        for key in 0..keys {
            let value = random_value(&mut state.rng);
            state.values.put(&key, &value).expect("write");
        }
        state.backend.flush().expect("flush");
        state.quiesce();
        state
    }

    /// Overwrites `rate` of the keys (chosen at random) with new values, then flushes.
    pub fn change_and_flush(&mut self, rate: f64) {
        let count = ((self.keys as f64) * rate).ceil() as u64;
        for _ in 0..count {
            let key = xorshift(&mut self.rng) % self.keys;
            let value = random_value(&mut self.rng);
            self.values.put(&key, &value).expect("write");
        }
        self.backend.flush().expect("flush");
    }

    /// The RocksDB directory of the backend.
    pub fn db_dir(&self) -> PathBuf {
        self.backend.dir().join("db")
    }

    /// Waits for background flushes and compactions, then flushes dirty pages system-wide (untimed).
    pub fn quiesce(&self) {
        self.backend
            .rocksdb()
            .wait_for_compact(&rocksdb::WaitForCompactOptions::default())
            .expect("wait for compactions");
        std::process::Command::new("sync")
            .status()
            .expect("sync runs");
    }
}

/// The copy floor: `cp` of `sources` into `dir`, then `sync` of exactly the copies and `dir`.
/// Returns the time both took.
fn cp_and_sync(sources: &[PathBuf], dir: &std::path::Path) -> Duration {
    let start = Instant::now();
    if sources.is_empty() {
        return start.elapsed();
    }
    let status = std::process::Command::new("cp")
        .args(sources)
        .arg(dir)
        .status()
        .expect("cp runs");
    assert!(status.success(), "cp failed");
    let copies = sources
        .iter()
        .map(|p| dir.join(p.file_name().expect("a file name")));
    let status = std::process::Command::new("sync")
        .args(copies)
        .arg(dir)
        .status()
        .expect("sync runs");
    assert!(status.success(), "sync failed");
    start.elapsed()
}

/// Bytes of the shared files of `checkpoint` that `previous` did not hold.
fn new_shared_bytes(
    checkpoint: &rockpoint::CheckpointMetadata,
    previous: &rockpoint::CheckpointMetadata,
) -> u64 {
    let known: HashSet<_> = previous.shared_hashes().collect();
    checkpoint.backends[0]
        .shared_files
        .iter()
        .filter(|f| !known.contains(&f.hash))
        .map(|f| f.size)
        .sum()
}

/// Writes back dirty pages and drops the page cache, if this process may (root); else only syncs.
pub fn drop_page_cache() {
    std::process::Command::new("sync")
        .status()
        .expect("sync runs");
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Where bench state lives: `ROCKPOINT_BENCH_DIR` or the system temp directory.
pub fn bench_dir() -> PathBuf {
    std::env::var_os("ROCKPOINT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    read_status_kib("VmHWM:") * 1024
}

/// Current resident memory (VmRSS), in bytes.
pub fn rss_bytes() -> u64 {
    read_status_kib("VmRSS:") * 1024
}

fn read_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Parses sizes like `100MiB`, `1GiB`.
pub fn parse_size(text: &str) -> u64 {
    let text = text.trim();
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number.parse().unwrap_or_else(|_| panic!("bad size {text}"));
    let scale = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unknown unit {other}"),
    };
    (n * scale) as u64
}

pub fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}
