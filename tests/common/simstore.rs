//! `SimStore`: an in-memory object store for deterministic simulation (FoundationDB / VOPR style).
//!
//! Every object lives in one map behind a mutex; `list` is strongly consistent and sorted, `put_if`
//! is a real compare-and-swap over versions drawn from one global counter. Every operation of the
//! engine passes through a seeded fault scheduler that, with configurable probabilities,
//! * delays it (a sleep of 0–3 ms or a few `yield_now`s), which reorders concurrent operations;
//! * fails it before applying it (`Unavailable`);
//! * applies it and then reports failure (an ambiguous outcome) — only for `put`, `put_file`,
//!   `put_if` and `delete`.
//!
//! At every `delete` of a `shared/…` object the store checks G3 against a frozen copy of the map
//! taken atomically with the delete (first with `checking::referenced_now`, then classifying
//! the references): a violation is recorded (with the step number) if a complete checkpoint (one
//! its job record lists) references the object, or a live pin that is older than every GC deletion
//! intent naming it (such a pin was there for the deleting pass's second listing). A live pin
//! written *after* the intent is not a violation: by the reuser rule its writer sees the intent,
//! waits, and uploads the file again (`docs/protocols.md`, "References, reuse and deletion").
//!
//! `raw()` is a fault-free view of the same map (for the test's own reads), `frozen()` an
//! independent fault-free copy (for consistent invariant checks while actors keep running).
//!
//! With a backing store ([`SimStore::with_backing`], the S3 test server), the simulation runs
//! against the real server: every operation that survives its fault is executed there, reads
//! answer from there (so the server's conditional writes, entity tags and list-after-write
//! consistency are what the engine meets), and the map mirrors each mutation that succeeded for the
//! checkers. Mutations are serialized (one at a time at the server, mirrored in the same order),
//! so the mirror never reorders two writes of one object.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::stream::BoxStream;
use rockpoint::format::ContentHash;
use rockpoint::store::{ObjectInfo, ObjectVersion, WriteMode};
use rockpoint::{Store, SweepMode};

/// A small, fast, seedable RNG (splitmix64).
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// Probabilities of the fault scheduler, per operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultConfig {
    /// Delay the operation (reorders concurrent operations).
    pub delay: f64,
    /// Fail it before applying it.
    pub fail: f64,
    /// Apply it, then report failure (mutations only).
    pub ambiguous: f64,
    /// Whether mutations of GC deletion intents (`gc/…`) may fail or be ambiguous. A leftover
    /// intent blocks every reuser of the hashes it names until it expires (10 min), which stalls a
    /// simulation; off by default (see the report in `tests/sim/multiwriter.rs`).
    pub intent_faults: bool,
}

/// Counters of one store (all views share them).
#[derive(Debug, Default)]
pub struct SimStats {
    pub steps: AtomicU64,
    pub delays: AtomicU64,
    pub failed_before: AtomicU64,
    pub ambiguous: AtomicU64,
    pub shared_deletes_checked: AtomicU64,
}

#[derive(Clone, Debug)]
struct Object {
    data: Bytes,
    version: u64,
    /// The version that first created the object (kept when it is replaced).
    created: u64,
    modified: SystemTime,
}

#[derive(Debug, Default)]
struct Shared {
    objects: Mutex<BTreeMap<String, Object>>,
    next_version: AtomicU64,
    rng: Mutex<Option<SimRng>>,
    faults: Mutex<FaultConfig>,
    stats: SimStats,
    violations: Mutex<Vec<String>>,
    /// Every operation (`ROCKPOINT_SIM_TRACE=1`), for explaining a violation.
    trace: Mutex<Option<Vec<String>>>,
    /// The real store every operation also runs on (see the module docs).
    backing: std::sync::OnceLock<Arc<dyn Store>>,
    /// Serializes mutations on the backing store and their mirroring.
    mutations: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    FailBefore,
    Ambiguous,
}

/// The simulated store. Clones share the map; see the module docs.
#[derive(Clone)]
pub struct SimStore {
    shared: Arc<Shared>,
    faulty: bool,
    name: Arc<str>,
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimStore({})", self.name)
    }
}

fn unavailable(what: &str, path: &str) -> rockpoint::Error {
    std::io::Error::other(format!("simulated failure: {what} `{path}`")).into()
}

fn ambiguous(what: &str, path: &str) -> rockpoint::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("simulated ambiguous outcome: {what} `{path}` was applied, reported failed"),
    )
    .into()
}

fn not_found(path: &str) -> rockpoint::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("no object `{path}`")).into()
}

fn conflict(what: &str, path: &str) -> rockpoint::Error {
    std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!("{what} `{path}`"),
    )
    .into()
}

/// A `Corruption` error. `rockpoint::Error` has no public constructor of that kind; parsing an
/// invalid hash yields one, with the message embedded.
fn corruption(message: String) -> rockpoint::Error {
    message.parse::<ContentHash>().expect_err("not a hash")
}

impl SimStore {
    /// A store whose faulty view draws faults from `seed`.
    pub fn new(name: &str, seed: u64, faults: FaultConfig) -> Self {
        let shared = Shared::default();
        *shared.rng.lock().unwrap() = Some(SimRng::new(seed.wrapping_mul(31).wrapping_add(7)));
        *shared.faults.lock().unwrap() = faults;
        shared.next_version.store(1, Ordering::Relaxed);
        if std::env::var("ROCKPOINT_SIM_TRACE").is_ok_and(|v| v != "0") {
            *shared.trace.lock().unwrap() = Some(Vec::new());
        }
        SimStore {
            shared: Arc::new(shared),
            faulty: true,
            name: name.into(),
        }
    }

    /// Like [`new`](Self::new), on `backing` (an empty root of a real store): see the module docs.
    pub fn with_backing(
        name: &str,
        seed: u64,
        faults: FaultConfig,
        backing: Arc<dyn Store>,
    ) -> Self {
        let store = Self::new(name, seed, faults);
        let _ = store.shared.backing.set(backing);
        store
    }

    fn backing(&self) -> Option<&Arc<dyn Store>> {
        self.shared.backing.get()
    }

    /// A fault-free view of the same objects (not counted as steps, no G3 check).
    pub fn raw(&self) -> SimStore {
        SimStore {
            shared: self.shared.clone(),
            faulty: false,
            name: format!("{}/raw", self.name).into(),
        }
    }

    /// An independent, fault-free copy of the objects as they are now.
    pub fn frozen(&self) -> SimStore {
        let objects = self.shared.objects.lock().unwrap().clone();
        Self::from_objects(objects, &format!("{}/frozen", self.name))
    }

    fn from_objects(objects: BTreeMap<String, Object>, name: &str) -> SimStore {
        let shared = Shared::default();
        *shared.objects.lock().unwrap() = objects;
        shared.next_version.store(u64::MAX / 2, Ordering::Relaxed);
        SimStore {
            shared: Arc::new(shared),
            faulty: false,
            name: name.into(),
        }
    }

    /// Changes the fault probabilities (e.g. to none for the final checks).
    pub fn set_faults(&self, faults: FaultConfig) {
        *self.shared.faults.lock().unwrap() = faults;
    }

    pub fn stats(&self) -> &SimStats {
        &self.shared.stats
    }

    pub fn steps(&self) -> u64 {
        self.shared.stats.steps.load(Ordering::Relaxed)
    }

    /// G3 violations recorded at delete time (and records unreadable at that moment).
    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }

    pub fn record_violation(&self, message: String) {
        self.shared.violations.lock().unwrap().push(message);
    }

    /// The object's bytes, read directly (no fault, never yields).
    pub fn peek(&self, path: &str) -> Option<Bytes> {
        self.shared
            .objects
            .lock()
            .unwrap()
            .get(path)
            .map(|o| o.data.clone())
    }

    pub fn contains(&self, path: &str) -> bool {
        self.shared.objects.lock().unwrap().contains_key(path)
    }

    /// Every path starting with `prefix`, read directly.
    pub fn paths(&self, prefix: &str) -> Vec<String> {
        self.shared
            .objects
            .lock()
            .unwrap()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The job record of `job`, decoded directly (no fault, never yields).
    pub fn job_record(&self, job: &str) -> Option<rockpoint::admin::JobRecord> {
        self.peek(&format!("jobs/{job}/_job"))
            .map(|b| super::checking::decode_job(&b))
    }

    /// The recorded trace (empty unless `ROCKPOINT_SIM_TRACE=1`).
    pub fn trace(&self) -> Vec<String> {
        self.shared
            .trace
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_default()
    }

    fn log(&self, what: &str, path: &str, fault: Fault) {
        if !self.faulty {
            return;
        }
        if let Some(trace) = self.shared.trace.lock().unwrap().as_mut() {
            let extra = match fault {
                Fault::None => "",
                Fault::FailBefore => " [failed before]",
                Fault::Ambiguous => " [applied, reported failed]",
            };
            trace.push(format!(
                "{:>6} {:>13} {what} {path}{extra}",
                self.steps(),
                now_ms() % 100_000_000
            ));
        }
    }

    /// Draws this operation's fault and delay; counts the step. Fault-free views return at once.
    async fn schedule(&self, mutation: bool, path: &str) -> Fault {
        self.schedule_inner(mutation, path).await
    }

    async fn schedule_inner(&self, mutation: bool, path: &str) -> Fault {
        if !self.faulty {
            return Fault::None;
        }
        let stats = &self.shared.stats;
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let config = *self.shared.faults.lock().unwrap();
        let (delay, fault) = {
            let mut guard = self.shared.rng.lock().unwrap();
            let rng = guard.as_mut().expect("faulty store has an rng");
            let delay = if rng.chance(config.delay) {
                Some(rng.below(8))
            } else {
                None
            };
            let protected = !config.intent_faults && path.starts_with("gc/");
            let fault = if rng.chance(config.fail) {
                Fault::FailBefore
            } else if mutation && rng.chance(config.ambiguous) {
                Fault::Ambiguous
            } else {
                Fault::None
            };
            // Only the mutations of an intent are protected (see `FaultConfig::intent_faults`).
            let fault = if protected && mutation {
                Fault::None
            } else {
                fault
            };
            (delay, fault)
        };
        if let Some(d) = delay {
            stats.delays.fetch_add(1, Ordering::Relaxed);
            if d < 4 {
                tokio::time::sleep(Duration::from_micros(d * 1000 + 50)).await;
            } else {
                for _ in 0..(d - 2) {
                    tokio::task::yield_now().await;
                }
            }
        }
        match fault {
            Fault::FailBefore => {
                stats.failed_before.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Ambiguous => {
                stats.ambiguous.fetch_add(1, Ordering::Relaxed);
            }
            Fault::None => {}
        }
        fault
    }

    fn apply_put(&self, path: &str, data: Bytes) {
        let version = self.shared.next_version.fetch_add(1, Ordering::Relaxed);
        let mut objects = self.shared.objects.lock().unwrap();
        let created = objects.get(path).map_or(version, |o| o.created);
        objects.insert(
            path.to_owned(),
            Object {
                data,
                version,
                created,
                modified: SystemTime::now(),
            },
        );
    }

    fn created(&self, path: &str) -> Option<u64> {
        self.shared
            .objects
            .lock()
            .unwrap()
            .get(path)
            .map(|o| o.created)
    }

    /// G3 at delete time: whether a complete checkpoint or a live pin in `frozen` (the root right
    /// before the delete) references `path`.
    async fn check_g3(&self, frozen: SimStore, path: &str) {
        let steps = self.steps();
        let judged = std::panic::AssertUnwindSafe(super::checking::referenced_now(&frozen))
            .catch_unwind()
            .await;
        let problem = match judged {
            Ok(Ok(referenced)) if referenced.contains(path) => {
                let (complete, live_pins) = references(&frozen, path).await;
                let hex = path.rsplit('/').next().unwrap_or_default();
                let intents: Vec<u64> = frozen
                    .paths("gc/")
                    .iter()
                    .filter(|intent| {
                        frozen
                            .peek(intent)
                            .is_some_and(|b| b.windows(hex.len()).any(|w| w == hex.as_bytes()))
                    })
                    .filter_map(|intent| frozen.created(intent))
                    .collect();
                let first_intent = intents.iter().min().copied().unwrap_or(u64::MAX);
                // A live pin written after every intent naming the file may lose it: its writer
                // sees the intent, waits, and uploads the file again (the reuser rule). A pin
                // older than every such intent was there for the deleting pass's second listing.
                let older_pins: Vec<&String> = live_pins
                    .iter()
                    .filter(|(_, created)| *created < first_intent)
                    .map(|(pin, _)| pin)
                    .collect();
                if !complete.is_empty() || !older_pins.is_empty() {
                    Some(format!(
                        "G3: deleted {path} while referenced by complete checkpoints {complete:?} / \
                         live pins older than every intent naming it {older_pins:?}: {}",
                        explain(&frozen, path)
                    ))
                } else {
                    None
                }
            }
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!(
                "G1/G3: the root was unreadable (fault-free) right before deleting {path}: {e}"
            )),
            Err(_) => Some(format!(
                "G3 check panicked right before deleting {path} (a record does not decode)"
            )),
        };
        if let Some(problem) = problem {
            self.record_violation(format!("[store step {steps}] {problem}"));
        }
    }
}

#[async_trait::async_trait]
impl Store for SimStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> rockpoint::Result<()> {
        let fault = self.schedule(true, path).await;
        self.log("put", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("put", path));
        }
        if let Some(backing) = self.backing() {
            let _order = self.shared.mutations.lock().await;
            backing.put(path, data.clone(), mode).await?;
            self.apply_put(path, data);
            return ambiguous_or(fault, "put", path);
        }
        if mode == WriteMode::CreateOnly && self.contains(path) {
            return Err(conflict("put (create-only): object exists", path));
        }
        self.apply_put(path, data);
        if fault == Fault::Ambiguous {
            return Err(ambiguous("put", path));
        }
        Ok(())
    }

    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> rockpoint::Result<()> {
        let fault = self.schedule(true, path).await;
        self.log("put_file", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("put_file", path));
        }
        let data = {
            use std::io::{Read, Seek, SeekFrom};
            let mut input = std::fs::File::open(file)?;
            input.seek(SeekFrom::Start(offset))?;
            let mut data = Vec::with_capacity(len as usize);
            let mut hasher = blake3::Hasher::new();
            let mut chunk = vec![0u8; 64 << 10];
            let mut left = len;
            while left > 0 {
                let want = left.min(chunk.len() as u64) as usize;
                let n = input.read(&mut chunk[..want])?;
                if n == 0 {
                    break;
                }
                hasher.update(&chunk[..n]);
                data.extend_from_slice(&chunk[..n]);
                left -= n as u64;
            }
            let actual = ContentHash::from(hasher.finalize());
            if actual != expected || data.len() as u64 != len {
                return Err(corruption(format!(
                    "put_file {path}: {} bytes hash to {actual}, expected {len} bytes hashing to {expected}",
                    data.len()
                )));
            }
            Bytes::from(data)
        };
        if let Some(backing) = self.backing() {
            let _order = self.shared.mutations.lock().await;
            backing.put_file(path, file, offset, len, expected).await?;
            self.apply_put(path, data);
            return ambiguous_or(fault, "put_file", path);
        }
        self.apply_put(path, data);
        if fault == Fault::Ambiguous {
            return Err(ambiguous("put_file", path));
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> rockpoint::Result<Bytes> {
        let fault = self.schedule(false, path).await;
        self.log("get", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("get", path));
        }
        if let Some(backing) = self.backing() {
            return backing.get(path).await;
        }
        self.peek(path).ok_or_else(|| not_found(path))
    }

    async fn get_versioned(&self, path: &str) -> rockpoint::Result<Option<(Bytes, ObjectVersion)>> {
        let fault = self.schedule(false, path).await;
        self.log("get_versioned", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("get_versioned", path));
        }
        if let Some(backing) = self.backing() {
            return backing.get_versioned(path).await;
        }
        Ok(self
            .shared
            .objects
            .lock()
            .unwrap()
            .get(path)
            .map(|o| (o.data.clone(), ObjectVersion(o.version.to_string()))))
    }

    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> rockpoint::Result<ObjectVersion> {
        let fault = self.schedule(true, path).await;
        self.log("put_if", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("put_if", path));
        }
        if let Some(backing) = self.backing() {
            let _order = self.shared.mutations.lock().await;
            let version = backing.put_if(path, data.clone(), expected).await?;
            self.apply_put(path, data);
            return ambiguous_or(fault, "put_if", path).map(|()| version);
        }
        let version = {
            let mut objects = self.shared.objects.lock().unwrap();
            let current = objects.get(path).map(|o| o.version.to_string());
            if current.as_deref() != expected.map(|v| v.0.as_str()) {
                return Err(conflict(
                    &format!(
                        "put_if: version is {current:?}, expected {:?}",
                        expected.map(|v| &v.0)
                    ),
                    path,
                ));
            }
            let version = self.shared.next_version.fetch_add(1, Ordering::Relaxed);
            let created = objects.get(path).map_or(version, |o| o.created);
            objects.insert(
                path.to_owned(),
                Object {
                    data,
                    version,
                    created,
                    modified: SystemTime::now(),
                },
            );
            version
        };
        if fault == Fault::Ambiguous {
            return Err(ambiguous("put_if", path));
        }
        Ok(ObjectVersion(version.to_string()))
    }

    async fn get_stream(
        &self,
        path: &str,
    ) -> rockpoint::Result<(u64, BoxStream<'static, rockpoint::Result<Bytes>>)> {
        let fault = self.schedule(false, path).await;
        self.log("get_stream", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("get_stream", path));
        }
        if let Some(backing) = self.backing() {
            return backing.get_stream(path).await;
        }
        let data = self.peek(path).ok_or_else(|| not_found(path))?;
        let size = data.len() as u64;
        let chunks: Vec<rockpoint::Result<Bytes>> = (0..data.len())
            .step_by(64 << 10)
            .map(|start| Ok(data.slice(start..(start + (64 << 10)).min(data.len()))))
            .collect();
        Ok((size, Box::pin(futures::stream::iter(chunks))))
    }

    async fn head(&self, path: &str) -> rockpoint::Result<Option<ObjectInfo>> {
        let fault = self.schedule(false, path).await;
        self.log("head", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("head", path));
        }
        if let Some(backing) = self.backing() {
            return backing.head(path).await;
        }
        Ok(self
            .shared
            .objects
            .lock()
            .unwrap()
            .get(path)
            .map(|o| ObjectInfo {
                path: path.to_owned(),
                size: o.data.len() as u64,
                modified: o.modified,
            }))
    }

    async fn delete(&self, path: &str) -> rockpoint::Result<()> {
        let fault = self.schedule(true, path).await;
        self.log("delete", path, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("delete", path));
        }
        let _order = match self.backing() {
            Some(backing) => {
                let order = self.shared.mutations.lock().await;
                backing.delete(path).await?;
                Some(order)
            }
            None => None,
        };
        let frozen = {
            let mut objects = self.shared.objects.lock().unwrap();
            let check = self.faulty && path.starts_with("shared/") && objects.contains_key(path);
            let frozen = check.then(|| objects.clone());
            objects.remove(path);
            frozen
        };
        if let Some(frozen) = frozen {
            self.shared
                .stats
                .shared_deletes_checked
                .fetch_add(1, Ordering::Relaxed);
            self.check_g3(Self::from_objects(frozen, "g3-check"), path)
                .await;
        }
        if fault == Fault::Ambiguous {
            return Err(ambiguous("delete", path));
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> rockpoint::Result<Vec<ObjectInfo>> {
        let fault = self.schedule(false, prefix).await;
        self.log("list", prefix, fault);
        if fault == Fault::FailBefore {
            return Err(unavailable("list", prefix));
        }
        if let Some(backing) = self.backing() {
            return backing.list(prefix).await;
        }
        Ok(self
            .shared
            .objects
            .lock()
            .unwrap()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, o)| ObjectInfo {
                path: k.clone(),
                size: o.data.len() as u64,
                modified: o.modified,
            })
            .collect())
    }

    async fn sweep_incomplete(
        &self,
        older_than: Duration,
        mode: SweepMode,
    ) -> rockpoint::Result<Vec<String>> {
        if self.schedule(false, "").await == Fault::FailBefore {
            return Err(unavailable("sweep_incomplete", ""));
        }
        if let Some(backing) = self.backing() {
            return backing.sweep_incomplete(older_than, mode).await;
        }
        Ok(Vec::new())
    }

    fn describe(&self) -> String {
        match self.backing() {
            Some(backing) => format!("sim://{} on {}", self.name, backing.describe()),
            None => format!("sim://{}", self.name),
        }
    }
}

#[derive(serde::Deserialize)]
struct PinBody {
    hashes: Vec<String>,
    owner: PinOwner,
}

#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
enum PinOwner {
    Epoch { job: String, epoch: u64 },
    Reader { expires_at_ms: u64 },
}

/// `Ok`, or the ambiguous-outcome error of an operation that was applied.
fn ambiguous_or(fault: Fault, what: &str, path: &str) -> rockpoint::Result<()> {
    if fault == Fault::Ambiguous {
        Err(ambiguous(what, path))
    } else {
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Who references the shared object `path` in `frozen` (for violation messages): the job records,
/// the complete checkpoints and the pins that name it.
pub fn explain(frozen: &SimStore, path: &str) -> String {
    let now = now_ms();
    let mut out = Vec::new();
    let mut records = std::collections::HashMap::new();
    for job_path in frozen.paths("jobs/") {
        if let Some(job) = job_path
            .strip_prefix("jobs/")
            .and_then(|p| p.strip_suffix("/_job"))
        {
            let record = super::checking::decode_job(&frozen.peek(&job_path).unwrap());
            out.push(format!(
                "record {job}: epoch {} owner {:?} lease {:+} ms from now, first id {}, retained {:?}, savepoints {:?}, discarding {:?}",
                record.epoch,
                record.owner,
                record.lease_until_ms as i64 - now as i64,
                record.epoch_first_id,
                record.retained,
                record.savepoints,
                record.discarding
            ));
            records.insert(job.to_owned(), record);
        }
    }
    let hex = path.rsplit('/').next().unwrap_or_default();
    for meta in frozen.paths("jobs/") {
        if !meta.ends_with("/_metadata") {
            continue;
        }
        let Some(bytes) = frozen.peek(&meta) else {
            continue;
        };
        // The metadata body is MessagePack; the hash appears as a hex string inside it.
        if bytes.windows(hex.len()).any(|w| w == hex.as_bytes()) {
            out.push(format!("referenced by {meta}"));
        }
    }
    for pin in frozen.paths("pins/") {
        let bytes = frozen.peek(&pin).unwrap();
        let Ok(body) = rmp_serde::from_slice::<PinBody>(&bytes[52.min(bytes.len())..]) else {
            out.push(format!("undecodable pin {pin}"));
            continue;
        };
        if body.hashes.iter().any(|h| h == hex) {
            let live = match &body.owner {
                PinOwner::Reader { expires_at_ms } => *expires_at_ms >= now,
                PinOwner::Epoch { job, epoch } => {
                    super::checking::epoch_pin_live(&pin, job, *epoch, &records)
                }
            };
            out.push(format!(
                "pinned by {pin} (owner {:?}, live {live})",
                body.owner
            ));
        }
    }
    for intent in frozen.paths("gc/") {
        out.push(format!("intent {intent} present"));
    }
    out.join("; ")
}

/// The complete checkpoints (metadata paths) and live pins (path, creation version) of `frozen`
/// that reference the shared object `path`.
async fn references(frozen: &SimStore, path: &str) -> (Vec<String>, Vec<(String, u64)>) {
    let now = now_ms();
    let hex = path.rsplit('/').next().unwrap_or_default().to_owned();
    let mut records = std::collections::HashMap::new();
    let mut complete = Vec::new();
    for job_path in frozen.paths("jobs/") {
        let Some(job) = job_path
            .strip_prefix("jobs/")
            .and_then(|p| p.strip_suffix("/_job"))
        else {
            continue;
        };
        let record = super::checking::decode_job(&frozen.peek(&job_path).unwrap());
        for (kind, ids) in [("chk", &record.retained), ("sp", &record.savepoints)] {
            for id in ids {
                let meta = format!("jobs/{job}/{kind}-{id:020}/_metadata");
                if let Ok((_, metadata)) = rockpoint::restore::read_metadata(
                    frozen,
                    &rockpoint::RestoreSource::Metadata(meta.clone()),
                )
                .await
                    && metadata.shared_hashes().any(|h| h.to_hex() == hex)
                {
                    complete.push(meta);
                }
            }
        }
        records.insert(job.to_owned(), record);
    }
    let mut pins = Vec::new();
    for pin in frozen.paths("pins/") {
        let bytes = frozen.peek(&pin).unwrap();
        let Ok(body) = rmp_serde::from_slice::<PinBody>(&bytes[52.min(bytes.len())..]) else {
            continue;
        };
        let live = match &body.owner {
            PinOwner::Reader { expires_at_ms } => *expires_at_ms >= now,
            PinOwner::Epoch { job, epoch } => {
                super::checking::epoch_pin_live(&pin, job, *epoch, &records)
            }
        };
        if live && body.hashes.contains(&hex) {
            pins.push((pin.clone(), frozen.created(&pin).unwrap_or(0)));
        }
    }
    (complete, pins)
}
