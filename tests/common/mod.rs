//! Helpers shared by the checkpoint tests: a job of several backends with a deterministic workload,
//! whole-state scans (the oracle), and restores.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointMetadata, ClaimMode, KeyGroupRange,
    KeyedStateBackend, LocalStore, RestoreSource, RestoreTarget, Store,
};

pub mod s3;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

pub const MAX_PARALLELISM: u32 = 128;

/// Every row of every state of every backend, by (state, row key).
pub type Scan = BTreeMap<(String, Vec<u8>), Vec<u8>>;

/// Small memtables so that a few thousand writes produce SSTs, flushes and compactions.
pub fn settings() -> BackendSettings {
    BackendSettings {
        write_buffer_size_bytes: 256 << 10,
        target_file_size_bytes: 256 << 10,
        ..BackendSettings::default()
    }
}

/// Where a shared file lives, spelled from the documented layout (docs/protocols.md) rather than
/// taken from the library: a change of the on-disk layout must fail the tests that use it.
pub fn shared_path(hash: &rockpoint::format::ContentHash) -> String {
    let hex = hash.to_hex();
    format!("shared/{}/{hex}", &hex[..2])
}

pub fn ranges(parallelism: u32) -> Vec<KeyGroupRange> {
    (0..parallelism)
        .map(|i| KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i).unwrap())
        .collect()
}

/// The S3 test server's bucket through object_store's own client, for what `Store` does not
/// expose (multipart upload ids, raw parts).
pub fn raw_s3() -> TestResult<Arc<object_store::aws::AmazonS3>> {
    let mut raw = object_store::aws::AmazonS3Builder::new().with_bucket_name(s3::BUCKET);
    for (key, value) in s3::S3Server::get().options().config {
        raw = raw.with_config(key.parse::<object_store::aws::AmazonS3ConfigKey>()?, value);
    }
    Ok(Arc::new(raw.build()?))
}

pub fn local_store(dir: &Path) -> TestResult<Arc<dyn Store>> {
    Ok(Arc::new(LocalStore::new(dir)?))
}

/// The value, list and map state every test job writes.
pub const VALUES: rockpoint::ValueStateDescriptor<u64, Vec<u8>> =
    rockpoint::ValueStateDescriptor::new("values");
pub const LISTS: rockpoint::ListStateDescriptor<u64, u32> =
    rockpoint::ListStateDescriptor::new("lists");
pub const MAPS: rockpoint::MapStateDescriptor<u64, u16, Vec<u8>> =
    rockpoint::MapStateDescriptor::new("maps");

/// A job: backends with a value, a list and a map state, and a deterministic key/value generator.
pub struct TestJob {
    pub backends: Vec<KeyedStateBackend>,
    pub dirs: Vec<PathBuf>,
    rng: u64,
    pub keys: u64,
}

impl TestJob {
    pub fn open(base: &Path, parallelism: u32, keys: u64) -> TestResult<Self> {
        let mut backends = Vec::new();
        let mut dirs = Vec::new();
        for (i, range) in ranges(parallelism).into_iter().enumerate() {
            let dir = base.join(format!("backend-{i}"));
            backends.push(KeyedStateBackend::open(
                &dir,
                MAX_PARALLELISM,
                range,
                settings(),
            )?);
            dirs.push(dir);
        }
        Ok(TestJob::from_backends(backends, dirs, keys))
    }

    pub fn from_backends(backends: Vec<KeyedStateBackend>, dirs: Vec<PathBuf>, keys: u64) -> Self {
        TestJob {
            backends,
            dirs,
            rng: 0x1234_5678_9abc_def1,
            keys,
        }
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn backend_for(&self, key: u64) -> usize {
        let group = rockpoint::key_group_of(&rmp_serde::to_vec(&key).unwrap(), MAX_PARALLELISM);
        self.backends
            .iter()
            .position(|b| b.key_groups().contains(group))
            .unwrap()
    }

    /// Writes `count` updates to random keys of `0..keys` across all three states.
    pub fn write(&mut self, count: u64) -> TestResult {
        for _ in 0..count {
            let r = self.next();
            let key = r % self.keys;
            let backend = &self.backends[self.backend_for(key)];
            let value = vec![(r >> 8) as u8; 64 + (r % 64) as usize];
            match (r >> 20) % 4 {
                0 | 1 => backend.state(&VALUES)?.put(&key, &value)?,
                2 => backend.state(&LISTS)?.add(&key, &((r >> 32) as u32))?,
                _ => backend
                    .state(&MAPS)?
                    .put(&key, &((r >> 40) as u16 % 8), &value)?,
            }
        }
        Ok(())
    }

    /// Deletes about `count` random keys' values.
    pub fn delete(&mut self, count: u64) -> TestResult {
        for _ in 0..count {
            let key = self.next() % self.keys;
            let backend = &self.backends[self.backend_for(key)];
            backend.state(&VALUES)?.clear(&key)?;
        }
        Ok(())
    }

    pub fn refs(&self) -> Vec<&KeyedStateBackend> {
        self.backends.iter().collect()
    }

    pub fn scan(&self) -> TestResult<Scan> {
        scan_backends(&self.backends)
    }
}

pub fn scan_backends(backends: &[KeyedStateBackend]) -> TestResult<Scan> {
    let mut all = Scan::new();
    for backend in backends {
        for (state, rows) in backend.scan_raw()? {
            for (key, value) in rows {
                assert!(
                    all.insert((state.clone(), key), value).is_none(),
                    "a row lives in two backends"
                );
            }
        }
    }
    Ok(all)
}

/// Every row of each backend lies in the backend's own key groups: a key group a rescaling restore
/// clipped away, or that leaked into a neighbour, fails here.
pub fn assert_in_own_key_groups(backends: &[KeyedStateBackend]) -> TestResult {
    for backend in backends {
        for (state, rows) in backend.scan_raw()? {
            for (key, _) in rows {
                let group = u32::from(u16::from_be_bytes([key[0], key[1]]));
                assert!(
                    backend.key_groups().contains(group),
                    "state `{state}`: key group {group} leaked into backend {}",
                    backend.key_groups()
                );
            }
        }
    }
    Ok(())
}

/// Restores every backend of the checkpoint at `path` (outside any job) and scans them.
pub async fn restore_scan(store: &dyn Store, path: &str, base: &Path) -> TestResult<Scan> {
    let (_, metadata) =
        rockpoint::restore::read_metadata(store, &RestoreSource::Metadata(path.to_owned())).await?;
    let mut backends = Vec::new();
    for (i, handle) in metadata.backends.iter().enumerate() {
        let target = RestoreTarget {
            dir: base.join(format!("restore-{}-{i}", rockpoint_test_nonce())),
            key_groups: handle.key_groups,
            settings: settings(),
        };
        backends.push(
            rockpoint::restore_backend(
                store,
                &RestoreSource::Metadata(path.to_owned()),
                &target,
                4,
                None,
            )
            .await?,
        );
    }
    scan_backends(&backends)
}

/// Restores all backends of `source` into a job coordinated by `coordinator`.
pub async fn restore_job(
    coordinator: &CheckpointCoordinator,
    source: &RestoreSource,
    base: &Path,
    parallelism: u32,
    keys: u64,
    mode: ClaimMode,
) -> TestResult<TestJob> {
    let targets: Vec<RestoreTarget> = ranges(parallelism)
        .into_iter()
        .enumerate()
        .map(|(i, key_groups)| RestoreTarget {
            dir: base.join(format!("backend-{i}")),
            key_groups,
            settings: settings(),
        })
        .collect();
    let backends = coordinator.restore(source, &targets, mode).await?;
    let dirs = targets.into_iter().map(|t| t.dir).collect();
    Ok(TestJob::from_backends(backends, dirs, keys))
}

pub fn rockpoint_test_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Bytes a checkpoint had to upload given its predecessor: shared files and segments whose hash the
/// predecessor (or any of `known`) did not reference, plus its private files.
pub fn new_bytes(metadata: &CheckpointMetadata, known: &[&CheckpointMetadata]) -> u64 {
    use std::collections::HashSet;
    let seen: HashSet<_> = known.iter().flat_map(|m| m.shared_hashes()).collect();
    let mut counted = HashSet::new();
    let mut total = 0;
    for backend in &metadata.backends {
        for file in &backend.shared_files {
            if !seen.contains(&file.hash) && counted.insert(file.hash) {
                total += file.size;
            }
        }
        for log in &backend.log_files {
            for segment in &log.segments {
                if !seen.contains(&segment.hash) && counted.insert(segment.hash) {
                    total += segment.size;
                }
            }
        }
        total += backend.private_files.iter().map(|f| f.size).sum::<u64>();
    }
    total
}

/// Every object path in the store.
/// (The root marker `rockpoint-root`, written by the first claim and kept, is not listed.)
pub async fn objects(store: &dyn Store) -> TestResult<Vec<String>> {
    Ok(store
        .list("")
        .await?
        .into_iter()
        .map(|o| o.path)
        .filter(|p| p != "rockpoint-root")
        .collect())
}

/// Runs a GC pass that deletes whatever is unreferenced, whatever its age (grace period 0): the
/// coordinators delete only their jobs' own records; shared files are GC's.
pub async fn gc_now(store: &dyn Store) -> TestResult<rockpoint::GcReport> {
    Ok(rockpoint::collect_garbage(
        store,
        &rockpoint::GcOptions {
            grace_period: std::time::Duration::ZERO,
            mode: rockpoint::SweepMode::Delete,
            incomplete_min_age: std::time::Duration::ZERO,
            ..rockpoint::GcOptions::default()
        },
    )
    .await?)
}

/// After a GC pass (`gc_now`): the shared files every complete checkpoint in the store references,
/// and every shared file present.
pub async fn shared_sets(
    store: &dyn Store,
) -> TestResult<(
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
)> {
    gc_now(store).await?;
    let mut referenced = std::collections::BTreeSet::new();
    for object in store.list("jobs/").await? {
        if object.path.ends_with("/_metadata") {
            let metadata = match rockpoint::restore::read_metadata(
                store,
                &RestoreSource::Metadata(object.path.clone()),
            )
            .await
            {
                Ok((_, metadata)) => metadata,
                Err(e) if e.kind() == rockpoint::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for hash in metadata.shared_hashes() {
                let hex = hash.to_hex();
                referenced.insert(format!("shared/{}/{hex}", &hex[..2]));
            }
        }
    }
    let present = store
        .list("shared/")
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    Ok((referenced, present))
}

/// A hook for scripting races and failures of uploads (`put_file`, and `publish_staged` of the
/// bytes `stage_file` read): uploads can be held at a gate, fail after a number of uploads started,
/// or land and report failure (an ambiguous outcome); and the commit record's write can be made
/// ambiguous. Wrap a store with it through [`with_hook`].
pub struct UploadFaults {
    gate: tokio::sync::watch::Sender<bool>,
    pub uploads_started: std::sync::atomic::AtomicU64,
    pub fail_uploads_after: std::sync::atomic::AtomicU64,
    pub ambiguous_uploads: std::sync::atomic::AtomicBool,
    pub ambiguous_metadata: std::sync::atomic::AtomicBool,
}

impl Default for UploadFaults {
    fn default() -> Self {
        UploadFaults {
            gate: tokio::sync::watch::channel(true).0,
            uploads_started: 0.into(),
            fail_uploads_after: u64::MAX.into(),
            ambiguous_uploads: false.into(),
            ambiguous_metadata: false.into(),
        }
    }
}

impl UploadFaults {
    /// Holds every upload that starts from now on until `open_gate`.
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub async fn wait_for_uploads(&self, n: u64) {
        while self
            .uploads_started
            .load(std::sync::atomic::Ordering::SeqCst)
            < n
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[async_trait::async_trait]
impl hooked::Hook for UploadFaults {
    async fn before(&self, op: &hooked::Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        use std::sync::atomic::Ordering;
        if !op.is_upload() {
            return Ok(());
        }
        let n = self.uploads_started.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.subscribe();
        while !*gate.borrow_and_update() {
            if gate.changed().await.is_err() {
                break;
            }
        }
        if n >= self.fail_uploads_after.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected upload failure").into());
        }
        Ok(())
    }

    async fn after(&self, op: &hooked::Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        use std::sync::atomic::Ordering;
        if op.is_upload() && self.ambiguous_uploads.load(Ordering::SeqCst) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "ambiguous: uploaded, reported failed",
            )
            .into());
        }
        if let hooked::Op::Put { path, .. } = op
            && path.ends_with("/_metadata")
            && self.ambiguous_metadata.swap(false, Ordering::SeqCst)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "ambiguous: written, reported failed",
            )
            .into());
        }
        Ok(())
    }
}

pub mod checking;
pub mod gates;
pub mod hooked;
pub mod simfs;
pub mod simstore;

#[allow(unused_imports)] // each binary uses some
pub use hooked::{Hook, HookedStore, Op, with_hook};
