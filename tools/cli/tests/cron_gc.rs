//! `rockpoint gc --confirm --grace-secs 0` run from cron, back to back, next to a live job — the
//! operator's report against an earlier build, where that loop deleted log segments of checkpoints
//! in flight (the job kept reporting success, then every retained checkpoint failed `verify`) and
//! OPTIONS files of committed ones. Through the real binary: a job in this process writes three
//! states (value, list, map) on two backends with small memtables (flushes, compactions, MANIFEST
//! roll-overs: SSTs are replaced and logs grow) and checkpoints every 50–200 ms; a thread runs the
//! GC loop, another `verify latest:<job>` and, for the newest acknowledged checkpoint, `verify` and
//! a merging `restore` compared with the oracle (what the job had written when it triggered that
//! checkpoint). At the end every retained checkpoint must verify and restore exactly its oracle
//! state, and every GC pass must have exited 0.
//!
//! Quick tier (default `cargo test`): 18 s on a local root, 10 s on S3 (SeaweedFS). Long tier:
//! `ROCKPOINT_CRON_GC_SECS=600 cargo test -p rockpoint-cli --test cron_gc -- --nocapture` (seconds,
//! both roots). `ROCKPOINT_CRON_GC_ROGUE=1` replaces the GC binary, on the local root only, by a
//! deleter that ignores pins and intents (it deletes every shared file no committed metadata
//! references, as the defective build effectively did): the test must then fail — the proof that
//! it can. `ROCKPOINT_CRON_GC_BIN=PATH` runs another `rockpoint` binary (e.g. a copy, so that a
//! long run does not meet a concurrent `cargo build` relinking the one in the target directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, JobEnd, KeyGroupRange,
    KeyedStateBackend, ListStateDescriptor, MapStateDescriptor, RestoreSource, Store,
    ValueStateDescriptor,
};

mod common;
use common::TestResult;

const JOB: &str = "cron";
const MAX_PARALLELISM: u32 = 32;
const VALUES: ValueStateDescriptor<u64, u64> = ValueStateDescriptor::new("values");
const LISTS: ListStateDescriptor<u64, u64> = ListStateDescriptor::new("lists");
const MAPS: MapStateDescriptor<u64, u64, String> = MapStateDescriptor::new("maps");

/// Everything the job has written: what a restore of a checkpoint must give back, exactly.
#[derive(Clone, Debug, Default, PartialEq)]
struct Oracle {
    values: BTreeMap<u64, u64>,
    lists: BTreeMap<u64, Vec<u64>>,
    maps: BTreeMap<(u64, u64), String>,
}

impl Oracle {
    /// A full scan of every state of `backend`.
    fn scan(backend: &KeyedStateBackend) -> rockpoint::Result<Oracle> {
        let mut all = Oracle::default();
        for entry in backend.state(&VALUES)?.entries(None)? {
            let (k, v) = entry?;
            all.values.insert(k, v);
        }
        for entry in backend.state(&LISTS)?.entries(None)? {
            let (k, v) = entry?;
            all.lists.insert(k, v);
        }
        for entry in backend.state(&MAPS)?.all_entries(None)? {
            let (k, uk, v) = entry?;
            all.maps.insert((k, uk), v);
        }
        Ok(all)
    }

    fn describe(&self) -> String {
        format!(
            "{} values, {} lists, {} map entries",
            self.values.len(),
            self.lists.len(),
            self.maps.len()
        )
    }
}

/// A deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn settings() -> BackendSettings {
    // The smallest memtables, SSTs and MANIFEST the settings allow: flushes and compactions replace
    // SSTs within seconds, and the MANIFEST rolls over (its log chain restarts).
    BackendSettings {
        write_buffer_size_bytes: 64 << 10,
        target_file_size_bytes: 64 << 10,
        max_manifest_file_size_bytes: 64 << 10,
        ..BackendSettings::default()
    }
}

/// Where the CLI finds the root, and what the job writes through.
struct Root {
    arg: String,
    env: Vec<(&'static str, String)>,
    store: Arc<dyn Store>,
    /// The directory of a local root (the rogue deleter works on it).
    local: Option<PathBuf>,
}

impl Root {
    fn cli(&self, args: &[&str]) -> Output {
        let binary = std::env::var_os("ROCKPOINT_CRON_GC_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_rockpoint").into());
        let mut command = Command::new(binary);
        command.arg("--root").arg(&self.arg).args(args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.output().expect("the rockpoint binary runs")
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[derive(Default)]
struct Counts {
    checkpoints: AtomicU64,
    gc_passes: AtomicU64,
    deleted_objects: AtomicU64,
    deleted_shared: AtomicU64,
    verified: AtomicU64,
    restores_verified: AtomicU64,
    subsumed_before_read: AtomicU64,
}

/// What the threads share: the oracle of every acknowledged checkpoint, the first failure seen.
struct Shared {
    oracle: Mutex<BTreeMap<u64, Oracle>>,
    failures: Mutex<Vec<String>>,
    /// The first message of a read that found its checkpoint subsumed, for the report.
    subsumed_message: Mutex<Option<String>>,
    stop: AtomicBool,
    counts: Counts,
}

impl Shared {
    fn fail(&self, why: String) {
        eprintln!("FAILURE: {why}");
        self.failures.lock().unwrap().push(why);
        self.stop.store(true, Ordering::SeqCst);
    }
    fn subsumed(&self, message: String) {
        self.counts
            .subsumed_before_read
            .fetch_add(1, Ordering::SeqCst);
        self.subsumed_message.lock().unwrap().get_or_insert(message);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn seconds(default: u64) -> u64 {
    std::env::var("ROCKPOINT_CRON_GC_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The job: writes between checkpoints, a flush every 5th round, a full compaction every 17th; the
/// oracle of each acknowledged checkpoint is what had been written when it was triggered.
fn run_job(
    store: Arc<dyn Store>,
    dir: PathBuf,
    shared: Arc<Shared>,
    opened: std::sync::mpsc::Sender<()>,
    until: Instant,
) -> TestResult {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let coordinator = CheckpointCoordinator::open(
            store,
            JOB,
            CheckpointSettings {
                retained: 3,
                ..CheckpointSettings::default()
            },
        )
        .await?;
        let _ = opened.send(());
        let backends = (0..2)
            .map(|i| {
                KeyedStateBackend::open(
                    dir.join(format!("backend-{i}")),
                    MAX_PARALLELISM,
                    KeyGroupRange::for_operator(MAX_PARALLELISM, 2, i)?,
                    settings(),
                )
            })
            .collect::<rockpoint::Result<Vec<_>>>()?;
        let owner = |key: u64| -> usize {
            let group = rockpoint::key_group_of(&rmp_serde::to_vec(&key).unwrap(), MAX_PARALLELISM);
            backends
                .iter()
                .position(|b| b.key_groups().contains(group))
                .unwrap()
        };
        let values = backends
            .iter()
            .map(|b| b.state(&VALUES))
            .collect::<rockpoint::Result<Vec<_>>>()?;
        let lists = backends
            .iter()
            .map(|b| b.state(&LISTS))
            .collect::<rockpoint::Result<Vec<_>>>()?;
        let maps = backends
            .iter()
            .map(|b| b.state(&MAPS))
            .collect::<rockpoint::Result<Vec<_>>>()?;
        let refs: Vec<&KeyedStateBackend> = backends.iter().collect();
        let mut model = Oracle::default();
        let mut rng = Rng(0x00c0_ffee_5eed);
        let mut round = 0u64;
        while Instant::now() < until && !shared.stopped() {
            round += 1;
            for _ in 0..300 {
                match rng.below(10) {
                    0..=3 => {
                        let (k, v) = (rng.below(4_000), rng.next());
                        values[owner(k)].put(&k, &v)?;
                        model.values.insert(k, v);
                    }
                    4 => {
                        let k = rng.below(4_000);
                        values[owner(k)].clear(&k)?;
                        model.values.remove(&k);
                    }
                    5 | 6 => {
                        let (k, e) = (rng.below(500), rng.next());
                        lists[owner(k)].add(&k, &e)?;
                        model.lists.entry(k).or_default().push(e);
                    }
                    7 => {
                        let k = rng.below(500);
                        if rng.below(4) == 0 {
                            lists[owner(k)].clear(&k)?;
                            model.lists.remove(&k);
                        }
                    }
                    8 => {
                        let (k, uk) = (rng.below(300), rng.below(30));
                        let v = format!("{:x}", rng.next()).repeat(1 + rng.below(12) as usize);
                        maps[owner(k)].put(&k, &uk, &v)?;
                        model.maps.insert((k, uk), v);
                    }
                    _ => {
                        let (k, uk) = (rng.below(300), rng.below(30));
                        maps[owner(k)].remove(&k, &uk)?;
                        model.maps.remove(&(k, uk));
                    }
                }
            }
            if round.is_multiple_of(5) {
                for b in &backends {
                    b.flush()?;
                }
            }
            if round.is_multiple_of(17) {
                for b in &backends {
                    b.compact()?;
                }
            }
            let at_trigger = model.clone();
            match coordinator.checkpoint(&refs).await {
                Ok(done) => {
                    shared.oracle.lock().unwrap().insert(done.id(), at_trigger);
                    shared.counts.checkpoints.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => shared.fail(format!("checkpoint of round {round} failed: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50 + rng.below(150))).await;
        }
        // Everything is kept for the final checks (as at a failover).
        coordinator.shutdown(JobEnd::Suspended).await?;
        Ok(())
    })
}

/// `gc --confirm --grace-secs 0`, back to back, each pass exiting 0.
fn gc_loop(root: &Root, shared: &Shared, rogue: bool) {
    while !shared.stopped() {
        if rogue {
            let deleted = rogue_delete(root.local.as_deref().expect("a local root"));
            shared.counts.gc_passes.fetch_add(1, Ordering::SeqCst);
            shared
                .counts
                .deleted_objects
                .fetch_add(deleted, Ordering::SeqCst);
            shared
                .counts
                .deleted_shared
                .fetch_add(deleted, Ordering::SeqCst);
            continue;
        }
        gc_pass(root, shared);
    }
}

fn gc_pass(root: &Root, shared: &Shared) {
    let output = root.cli(&["--json", "gc", "--confirm", "--grace-secs", "0"]);
    if !output.status.success() {
        shared.fail(format!("gc --confirm --grace-secs 0: {}", text(&output)));
        return;
    }
    let report: serde_json::Value = match serde_json::from_slice(&output.stdout) {
        Ok(report) => report,
        Err(e) => {
            return shared.fail(format!(
                "gc printed no JSON report ({e}): {}",
                text(&output)
            ));
        }
    };
    let count = |field: &str| report[field].as_array().map_or(0, |a| a.len() as u64);
    let shared_files = count("shared_files");
    let all = shared_files + count("private_files") + count("pins") + count("incomplete");
    if !report["unreadable"].as_array().is_none_or(|a| a.is_empty()) {
        shared.fail(format!("gc found unreadable records: {report}"));
    }
    shared.counts.gc_passes.fetch_add(1, Ordering::SeqCst);
    shared
        .counts
        .deleted_objects
        .fetch_add(all, Ordering::SeqCst);
    shared
        .counts
        .deleted_shared
        .fetch_add(shared_files, Ordering::SeqCst);
}

/// The defective deleter, for the proof that this test fails: every shared file that no committed
/// checkpoint's metadata references is deleted — no pins, no intent, no second listing.
fn rogue_delete(root: &Path) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = rockpoint::LocalStore::new(root).unwrap();
        let Ok(view) = rockpoint::admin::inspect_root(&store, None).await else {
            return 0;
        };
        let mut referenced = std::collections::HashSet::new();
        for checkpoint in view.checkpoints() {
            let source = RestoreSource::Metadata(checkpoint.path.clone());
            match rockpoint::restore::read_metadata(&store, &source).await {
                Ok((_, metadata)) => {
                    referenced.extend(metadata.shared_hashes().map(|h| h.to_hex()))
                }
                Err(_) => return 0,
            }
        }
        let mut deleted = 0;
        for fan in std::fs::read_dir(root.join("shared")).into_iter().flatten() {
            for file in std::fs::read_dir(fan.unwrap().path()).into_iter().flatten() {
                let path = file.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if !name.starts_with('.')
                    && !referenced.contains(&name)
                    && std::fs::remove_file(&path).is_ok()
                {
                    deleted += 1;
                }
            }
        }
        deleted
    })
}

/// Verifies `<job>/<id>` and restores it (both backends merged into one, all key groups) through
/// the CLI, and compares the restored state with the oracle.
fn check_checkpoint(
    root: &Root,
    id: u64,
    expected: &Oracle,
    scratch: &Path,
    live: bool,
) -> Result<Checked, String> {
    let reference = format!("{JOB}/{id}");
    let verified = root.cli(&["verify", &reference]);
    if live && let Some(why) = subsumed(&verified) {
        return Ok(Checked::Subsumed(why));
    }
    if !verified.status.success() {
        return Err(format!("verify {reference}: {}", text(&verified)));
    }
    let target = scratch.join(format!("restore-{id}-{}", rand_suffix()));
    let restored = root.cli(&[
        "restore",
        &reference,
        "--key-groups",
        &format!("0..{MAX_PARALLELISM}"),
        "--target",
        &target.to_string_lossy(),
    ]);
    if live && let Some(why) = subsumed(&restored) {
        if target.exists() {
            return Err(format!(
                "a failed restore of {reference} left its target: {}",
                text(&restored)
            ));
        }
        return Ok(Checked::Subsumed(why));
    }
    if !restored.status.success() {
        return Err(format!("restore {reference}: {}", text(&restored)));
    }
    let state = KeyedStateBackend::open(
        &target,
        MAX_PARALLELISM,
        KeyGroupRange::all(MAX_PARALLELISM).unwrap(),
        settings(),
    )
    .and_then(|backend| Oracle::scan(&backend))
    .map_err(|e| format!("opening the restore of {reference}: {e}"))?;
    let _ = std::fs::remove_dir_all(&target);
    if &state != expected {
        return Err(format!(
            "restore of {reference} differs from its oracle: restored {}, expected {}",
            state.describe(),
            expected.describe()
        ));
    }
    Ok(Checked::Equal)
}

/// What a read of a checkpoint gave while the job ran.
enum Checked {
    /// Verified, and restored equal to its oracle.
    Equal,
    /// Not found (exit 3): subsumed before the CLI pinned it, or (`latest:`) no checkpoint yet.
    Subsumed(String),
}

/// `Some(message)` if `output` is the CLI's "not found" (exit 3): a read racing subsumption (or
/// the job's first checkpoint), allowed while the job runs; never at the end.
fn subsumed(output: &Output) -> Option<String> {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code() == Some(3)).then_some(stderr)
}

fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// While the job runs: `verify latest:<job>`, then the newest acknowledged checkpoint verified and
/// restored against its oracle.
fn checker_loop(root: &Root, shared: &Shared, scratch: &Path) {
    while !shared.stopped() {
        let latest = root.cli(&["verify", &format!("latest:{JOB}")]);
        match latest.status.code() {
            Some(0) => {
                shared.counts.verified.fetch_add(1, Ordering::SeqCst);
            }
            // No checkpoint yet, or subsumed between the record's read and the pin: not damage.
            Some(3) => shared.subsumed(String::from_utf8_lossy(&latest.stderr).into_owned()),
            _ => shared.fail(format!("verify latest:{JOB}: {}", text(&latest))),
        }
        let newest = shared
            .oracle
            .lock()
            .unwrap()
            .last_key_value()
            .map(|(id, state)| (*id, state.clone()));
        if let Some((id, expected)) = newest {
            match check_checkpoint(root, id, &expected, scratch, true) {
                Ok(Checked::Equal) => {
                    shared.counts.verified.fetch_add(1, Ordering::SeqCst);
                    shared
                        .counts
                        .restores_verified
                        .fetch_add(1, Ordering::SeqCst);
                }
                Ok(Checked::Subsumed(why)) => shared.subsumed(why),
                Err(why) => shared.fail(why),
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn cron_gc_next_to_a_live_job(root: Root, dir: &Path, secs: u64, rogue: bool) -> TestResult {
    let shared = Arc::new(Shared {
        oracle: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(Vec::new()),
        subsumed_message: Mutex::new(None),
        stop: AtomicBool::new(false),
        counts: Counts::default(),
    });
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let (opened_tx, opened) = std::sync::mpsc::channel();
    let job = {
        let (store, dir, shared) = (root.store.clone(), dir.join("job"), shared.clone());
        std::thread::spawn(move || {
            run_job(store, dir, shared, opened_tx, until).map_err(|e| e.to_string())
        })
    };
    // The coordinator's claim marks the root; the CLI refuses an unmarked location.
    let _ = opened.recv_timeout(Duration::from_secs(60));
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch)?;
    std::thread::scope(|s| {
        s.spawn(|| gc_loop(&root, &shared, rogue));
        s.spawn(|| checker_loop(&root, &shared, &scratch));
        let result = job.join().expect("the job thread does not panic");
        shared.stop.store(true, Ordering::SeqCst);
        if let Err(e) = result {
            shared.fail(format!("the job failed: {e}"));
        }
    });
    let job_secs = started.elapsed().as_secs_f64();

    // After the job: one more pass (all subsumed files go), then every retained checkpoint.
    if !rogue {
        gc_pass(&root, &shared);
    } else {
        rogue_delete(root.local.as_deref().unwrap());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let view = runtime.block_on(rockpoint::admin::inspect_root(&*root.store, Some(JOB)))?;
    let retained: Vec<u64> = view.checkpoints().map(|c| c.id).collect();
    let oracle = shared.oracle.lock().unwrap().clone();
    if retained.is_empty() {
        shared.fail("no checkpoint is retained".into());
    }
    for id in &retained {
        match oracle.get(id) {
            None => shared.fail(format!("retained checkpoint {id} was never acknowledged")),
            Some(expected) => match check_checkpoint(&root, *id, expected, &scratch, false) {
                Ok(_) => {
                    shared.counts.verified.fetch_add(1, Ordering::SeqCst);
                    shared
                        .counts
                        .restores_verified
                        .fetch_add(1, Ordering::SeqCst);
                }
                Err(why) => shared.fail(why),
            },
        }
    }
    let c = &shared.counts;
    println!(
        "cron gc ({}{}): {job_secs:.1} s of job, {} checkpoints, {} gc passes (all exit 0), {} objects deleted ({} shared files), {} verifies and {} restores equal to the oracle ({} at the end: retained {retained:?}), {} reads found nothing to read (exit 3: no checkpoint yet, or subsumed before the pin)",
        root.arg,
        if rogue { ", ROGUE deleter" } else { "" },
        c.checkpoints.load(Ordering::SeqCst),
        c.gc_passes.load(Ordering::SeqCst),
        c.deleted_objects.load(Ordering::SeqCst),
        c.deleted_shared.load(Ordering::SeqCst),
        c.verified.load(Ordering::SeqCst),
        c.restores_verified.load(Ordering::SeqCst),
        retained.len(),
        c.subsumed_before_read.load(Ordering::SeqCst),
    );
    if let Some(message) = shared.subsumed_message.lock().unwrap().as_deref() {
        println!("  (first such read said: {})", message.trim());
    }
    println!(
        "  the last acknowledged checkpoint held {}",
        oracle
            .last_key_value()
            .map_or("nothing".into(), |(_, o)| o.describe())
    );
    let failures = shared.failures.lock().unwrap();
    if !failures.is_empty() {
        return Err(format!("{} failure(s); first: {}", failures.len(), failures[0]).into());
    }
    assert!(
        c.checkpoints.load(Ordering::SeqCst) >= 10,
        "the job checkpointed"
    );
    assert!(
        c.gc_passes.load(Ordering::SeqCst) >= 3,
        "GC ran while it did"
    );
    assert!(
        c.deleted_shared.load(Ordering::SeqCst) > 0,
        "GC freed subsumed shared files"
    );
    Ok(())
}

#[test]
fn cron_gc_at_grace_zero_keeps_every_checkpoint_of_a_live_job_on_a_local_root() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("root");
    let root = Root {
        arg: path.to_string_lossy().into_owned(),
        env: Vec::new(),
        store: common::local_store(&path)?,
        local: Some(path),
    };
    let rogue = std::env::var_os("ROCKPOINT_CRON_GC_ROGUE").is_some();
    cron_gc_next_to_a_live_job(root, dir.path(), seconds(18), rogue)
}

#[test]
fn cron_gc_at_grace_zero_keeps_every_checkpoint_of_a_live_job_on_s3() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = common::s3::S3Server::get();
    let key = dir.path().join("root");
    let store = tokio::runtime::Runtime::new()?.block_on(server.root(&key))?;
    let root = Root {
        arg: common::s3::root_url(&key),
        env: server.env(),
        store,
        local: None,
    };
    cron_gc_next_to_a_live_job(root, dir.path(), seconds(10), false)
}
