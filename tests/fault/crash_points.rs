//! Crash-point enumeration (ALICE / CrashMonkey style) over the store's filesystem seam.
//!
//! Each workload runs once against a simulated filesystem that records every mutating operation
//! (create, write, fsync, link, rename, unlink, mkdir, rmdir, directory fsync). For every k, the
//! filesystem a crash before operation k leaves is rebuilt by replaying the first k operations —
//! once keeping unsynced data (process crash), once dropping it (power loss). Then recovery runs (each
//! job's coordinator opens: startup recovery; then GC with no grace period), and the test checks:
//!
//! * every committed checkpoint restores to a full scan equal to the oracle taken at its snapshot,
//!   and every checkpoint acknowledged before the crash is still there unless a newer one of its job
//!   (or a shutdown that discards) was already under way;
//! * no delete ever removed a shared file that a metadata record or a pin listed at that moment —
//!   in the original run and in every recovery;
//! * after recovery and GC exactly the referenced shared files remain, and a second GC deletes nothing;
//! * recovery is idempotent: a crash in the middle of recovery, then recovery again, passes the same
//!   checks.
//!
//! The workloads that exist to delete (subsume — after a compaction replaced the first checkpoint's
//! SSTs —, abort, cancel with delete, GC) must delete shared files in their trace, or the test fails:
//! a workload that deletes nothing would prove nothing about deletion. Reversing the discard order
//! (shared files before the commit record) makes the delete-time check fail in four workloads.
//!
//! The default run explores every crash point of every workload. `ROCKPOINT_CRASH_STRIDE=N` explores
//! every N-th only (for quick local iterations).

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::checking::{DeleteChecker, referenced_now, shared};
use common::simfs::{Loss, SimFs, TraceOp};
use common::*;
use rockpoint::format::ContentHash;
use rockpoint::store::WriteMode;
use rockpoint::{
    BackendHandle, CancellationPolicy, CheckpointCoordinator, CheckpointSettings, ClaimMode,
    GcOptions, JobEnd, LocalStore, RestoreSource, SnapshotKind, Store, SweepMode, collect_garbage,
};

const ROOT: &str = "/sim/root";

/// What a workload run recorded.
#[derive(Default)]
struct Record {
    /// Oracle scan per metadata path, taken at the snapshot (before the commit).
    oracles: BTreeMap<String, Scan>,
    /// Checkpoints acknowledged as complete, with the number of operations done by then.
    acknowledged: Vec<(String, u64)>,
    /// Operation index at which a job began discarding all its checkpoints (shutdown with delete).
    discards_all_from: HashMap<String, u64>,
}

struct Ctx {
    sim: SimFs,
    store: Arc<dyn Store>,
    checker: Arc<DeleteChecker>,
    local: PathBuf,
    record: Record,
}

impl Ctx {
    fn new(local: &Path) -> TestResult<Self> {
        let sim = SimFs::new();
        let inner: Arc<dyn Store> = Arc::new(LocalStore::with_fs(ROOT, Arc::new(sim.clone()))?);
        let (store, checker) = with_hook(inner, DeleteChecker::default());
        Ok(Ctx {
            sim,
            store,
            checker,
            local: local.to_path_buf(),
            record: Record::default(),
        })
    }

    fn job(&self, name: &str, parallelism: u32) -> TestResult<TestJob> {
        let mut job = TestJob::open(&self.local.join(name), parallelism, 400)?;
        job.write(600)?;
        Ok(job)
    }

    /// A checkpoint through the split API, recording the oracle at the snapshot.
    async fn checkpoint(
        &mut self,
        c: &CheckpointCoordinator,
        job: &TestJob,
        kind: SnapshotKind,
    ) -> TestResult<String> {
        let ticket = c.trigger(kind)?;
        let prefix = if kind == SnapshotKind::Checkpoint {
            "chk"
        } else {
            "sp"
        };
        let path = format!(
            "jobs/{}/{prefix}-{:020}/_metadata",
            c.job_id(),
            ticket.checkpoint_id()
        );
        let mut pending = Vec::new();
        for backend in &job.backends {
            pending.push(backend.snapshot(&ticket)?);
        }
        self.record.oracles.insert(path.clone(), job.scan()?);
        let mut handles: Vec<BackendHandle> = Vec::new();
        for p in pending {
            handles.push(p.upload(&*self.store).await?);
        }
        c.complete(&ticket, handles).await?;
        self.record
            .acknowledged
            .push((path.clone(), self.sim.ops()));
        Ok(path)
    }

    /// Changes state and flushes, so the next checkpoint has new SSTs and reuses old ones.
    fn change(job: &mut TestJob) -> TestResult {
        job.write(150)?;
        for b in &job.backends {
            b.flush()?;
        }
        Ok(())
    }
}

fn settings(retained: usize, cancellation: CancellationPolicy) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        max_concurrent: 2,
        cancellation,
        transfer_parallelism: 1,
        ..CheckpointSettings::default()
    }
}

type Jobs = Vec<(&'static str, CheckpointSettings)>;

/// The workloads: each returns the jobs whose coordinators recovery must open.
async fn workload(name: &str, ctx: &mut Ctx) -> TestResult<Jobs> {
    let retain = CancellationPolicy::RetainOnCancellation;
    match name {
        "first_checkpoint" => {
            let s = settings(1, retain);
            let c = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let job = ctx.job("a", 1)?;
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            Ok(vec![("a", s)])
        }
        "incremental_dedup" => {
            let s = settings(2, retain);
            let c = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let mut job = ctx.job("a", 2)?;
            for b in &job.backends {
                b.flush()?;
            }
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            Ctx::change(&mut job)?;
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            Ok(vec![("a", s)])
        }
        "subsume" => {
            let s = settings(1, retain);
            let c = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let mut job = ctx.job("a", 1)?;
            for round in 0..3 {
                Ctx::change(&mut job)?;
                if round == 1 {
                    // Compaction replaces the SSTs of checkpoint 1, so subsuming it deletes them.
                    for b in &job.backends {
                        b.compact()?;
                    }
                }
                ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            }
            // Subsumption removed the records; GC frees the shared files nothing references.
            collect_garbage(&*ctx.store, &gc_now()).await?;
            Ok(vec![("a", s)])
        }
        "abort" => {
            let s = settings(1, retain);
            let c = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let mut job = ctx.job("a", 1)?;
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            Ctx::change(&mut job)?;
            let ticket = c.trigger(SnapshotKind::Checkpoint)?;
            let handle = job.backends[0]
                .snapshot(&ticket)?
                .upload(&*ctx.store)
                .await?;
            drop(handle);
            c.abort(&ticket).await?;
            collect_garbage(&*ctx.store, &gc_now()).await?;
            Ok(vec![("a", s)])
        }
        "cancel_retain" | "cancel_delete" => {
            let policy = if name == "cancel_retain" {
                retain
            } else {
                CancellationPolicy::DeleteOnCancellation
            };
            let s = settings(2, policy);
            let c = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let mut job = ctx.job("a", 1)?;
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            ctx.checkpoint(&c, &job, SnapshotKind::Savepoint).await?;
            Ctx::change(&mut job)?;
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            if policy == CancellationPolicy::DeleteOnCancellation {
                ctx.record
                    .discards_all_from
                    .insert("a".into(), ctx.sim.ops());
            }
            c.shutdown(JobEnd::Cancelled).await?;
            collect_garbage(&*ctx.store, &gc_now()).await?;
            Ok(vec![("a", s)])
        }
        "restore" => {
            let s = settings(1, retain);
            let a = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let mut job = ctx.job("a", 1)?;
            Ctx::change(&mut job)?;
            let source = ctx.checkpoint(&a, &job, SnapshotKind::Checkpoint).await?;
            let sb = settings(1, CancellationPolicy::DeleteOnCancellation);
            let b = CheckpointCoordinator::open(ctx.store.clone(), "b", sb.clone()).await?;
            let dir = ctx.local.join("b");
            let mut restored = restore_job(
                &b,
                &RestoreSource::Metadata(source),
                &dir,
                1,
                400,
                ClaimMode::NoClaim,
            )
            .await?;
            Ctx::change(&mut restored)?;
            ctx.checkpoint(&b, &restored, SnapshotKind::Checkpoint)
                .await?;
            ctx.record
                .discards_all_from
                .insert("b".into(), ctx.sim.ops());
            b.shutdown(JobEnd::Finished).await?;
            Ok(vec![("a", s), ("b", sb)])
        }
        "gc" => {
            let s = settings(1, retain);
            let c = CheckpointCoordinator::open(ctx.store.clone(), "a", s.clone()).await?;
            let job = ctx.job("a", 1)?;
            ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
            let orphan = Bytes::from_static(b"orphaned upload");
            ctx.store
                .put(
                    &shared(&ContentHash::of(&orphan)),
                    orphan,
                    WriteMode::Replace,
                )
                .await?;
            ctx.store
                .put(
                    "jobs/a/chk-00000000000000000077/kg-00000-00128/OPTIONS-000001",
                    Bytes::from_static(b"o"),
                    WriteMode::CreateOnly,
                )
                .await?;
            collect_garbage(&*ctx.store, &gc_now()).await?;
            Ok(vec![("a", s)])
        }
        other => panic!("unknown workload {other}"),
    }
}

fn gc_now() -> GcOptions {
    GcOptions {
        grace_period: Duration::ZERO,
        mode: SweepMode::Delete,
        incomplete_min_age: Duration::ZERO,
        ..GcOptions::default()
    }
}

/// Opens a store over `fs` with the G3 checker.
fn store_over(fs: &SimFs) -> TestResult<(Arc<dyn Store>, Arc<DeleteChecker>)> {
    let inner: Arc<dyn Store> = Arc::new(LocalStore::with_fs(ROOT, Arc::new(fs.clone()))?);
    Ok(with_hook(inner, DeleteChecker::default()))
}

/// Startup recovery of every job, then GC.
async fn recover(store: &Arc<dyn Store>, jobs: &Jobs) -> TestResult {
    for (job, settings) in jobs {
        CheckpointCoordinator::open(store.clone(), job, settings.clone()).await?;
    }
    collect_garbage(&**store, &gc_now()).await?;
    Ok(())
}

/// Restored scans of committed checkpoints, by path (a restore is a function of verified bytes).
type ScanCache = HashMap<String, Scan>;

/// All checks on a recovered root. Returns the number of committed checkpoints checked.
async fn check_recovered(
    store: &Arc<dyn Store>,
    record: &Record,
    crash_op: u64,
    local: &Path,
    cache: &mut ScanCache,
) -> TestResult<usize> {
    // Complete = listed by its job record (G1: then its metadata and files must all be there).
    let mut committed = BTreeSet::new();
    for object in store.list("jobs/").await? {
        if let Some(job) = object
            .path
            .strip_prefix("jobs/")
            .and_then(|p| p.strip_suffix("/_job"))
        {
            let record = common::checking::decode_job(&store.get(&object.path).await?);
            for id in &record.retained {
                committed.insert(format!("jobs/{job}/chk-{id:020}/_metadata"));
            }
            for id in &record.savepoints {
                committed.insert(format!("jobs/{job}/sp-{id:020}/_metadata"));
            }
        }
    }
    // Every committed checkpoint is whole and restores to its oracle.
    for path in &committed {
        let oracle = record
            .oracles
            .get(path)
            .ok_or_else(|| format!("committed {path} was never snapshotted"))?;
        let (_, metadata) =
            rockpoint::restore::read_metadata(&**store, &RestoreSource::Metadata(path.clone()))
                .await?;
        for hash in metadata.shared_hashes() {
            let bytes = read_all(&**store, &shared(&hash))
                .await
                .map_err(|e| format!("{path}: {e}"))?;
            if ContentHash::of(&bytes) != hash {
                return Err(format!("{path}: shared file {hash} is corrupt").into());
            }
        }
        if !cache.contains_key(path) {
            cache.insert(path.clone(), restore_scan(&**store, path, local).await?);
        }
        if &cache[path] != oracle {
            return Err(format!("{path} restores to a state other than its oracle").into());
        }
    }
    // Acknowledged checkpoints survive unless a newer one of the job, or a discarding shutdown, began.
    for (path, acked_at) in &record.acknowledged {
        if *acked_at > crash_op || committed.contains(path) {
            continue;
        }
        let job = path.split('/').nth(1).unwrap_or_default();
        let newer = committed
            .iter()
            .any(|p| p.split('/').nth(1) == Some(job) && p.contains("/chk-") && p > path);
        let discarding = record
            .discards_all_from
            .get(job)
            .is_some_and(|from| *from <= crash_op);
        let savepoint = path.contains("/sp-");
        if savepoint || !(newer || discarding) {
            return Err(
                format!("acknowledged {path} is gone after a crash at op {crash_op}").into(),
            );
        }
    }
    // Exactly the referenced shared files remain; a second GC deletes nothing.
    let referenced = referenced_now(&**store).await?;
    let present: BTreeSet<String> = store
        .list("shared/")
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    if referenced != present {
        return Err(format!(
            "after recovery and GC: referenced {referenced:?} but present {present:?}"
        )
        .into());
    }
    let again = collect_garbage(&**store, &gc_now()).await?;
    if !again.is_empty() {
        return Err(format!("a second GC deleted something: {again:?}").into());
    }
    Ok(committed.len())
}

async fn read_all(store: &dyn Store, path: &str) -> rockpoint::Result<Vec<u8>> {
    use futures::StreamExt;
    let (_, mut stream) = store.get_stream(path).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// Recovery ops needed on `fs` (measured on a copy), to pick a crash point inside recovery.
async fn recovery_ops(fs: &SimFs, jobs: &Jobs) -> TestResult<u64> {
    let copy = fs.crash_state(Loss::Nothing);
    let (store, _) = store_over(&copy)?;
    recover(&store, jobs).await?;
    Ok(copy.ops())
}

/// Workloads whose point is deleting shared files (checked on their trace).
const DELETING_WORKLOADS: &[&str] = &["subsume", "abort", "cancel_delete", "gc"];

/// A committed content-addressed object `shared/<h0h1>/<hash>` (not a temporary file).
fn is_shared_object(path: &Path) -> bool {
    let parent = path.parent().and_then(|p| p.parent());
    parent.and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("shared"))
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Explores every crash point of workload `name`: (operations, shared files deleted, crash states).
async fn explore(name: &str) -> TestResult<(usize, usize, usize)> {
    let dir = tempfile::tempdir()?;
    let mut ctx = Ctx::new(&dir.path().join("run"))?;
    let jobs = workload(name, &mut ctx).await?;
    let trace: Vec<TraceOp> = ctx.sim.trace();
    let shared_deletes = trace
        .iter()
        .filter(|op| matches!(op, TraceOp::Unlink(p) if is_shared_object(p)))
        .count();
    if DELETING_WORKLOADS.contains(&name) {
        assert!(
            shared_deletes > 0,
            "{name}: the workload must delete shared files, or its crash points prove nothing about deletion"
        );
    }
    let violations = ctx.checker.violations();
    assert!(
        violations.is_empty(),
        "{name}: G3 violated during the run: {violations:?}"
    );
    let stride: usize = std::env::var("ROCKPOINT_CRASH_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut cache = ScanCache::new();
    let mut explored = 0;
    let mut points: Vec<usize> = (0..=trace.len()).step_by(stride.max(1)).collect();
    if points.last() != Some(&trace.len()) {
        points.push(trace.len()); // the state after everything (every acknowledgement) always counts
    }
    for k in points {
        let before = SimFs::replay(&trace[..k]);
        for loss in [Loss::Nothing, Loss::Unsynced] {
            let fs = before.crash_state(loss);
            let context = format!("{name}: crash before op {k} of {} ({loss:?})", trace.len());
            // A crash in the middle of recovery first, then a full recovery.
            let total = recovery_ops(&fs, &jobs)
                .await
                .map_err(|e| format!("{context}: recovery failed: {e}"))?;
            if total > 0 {
                let interrupted = fs.crash_state(Loss::Nothing);
                interrupted.crash_before((k as u64 * 7919) % total);
                // Opening the store itself may be what crashes.
                if let Ok((store, checker)) = store_over(&interrupted) {
                    let _ = recover(&store, &jobs).await;
                    assert!(
                        checker.violations().is_empty(),
                        "{context}: G3 in interrupted recovery: {:?}",
                        checker.violations()
                    );
                }
                let fs_after = interrupted.crash_state(loss);
                let (store, checker) = store_over(&fs_after)?;
                recover(&store, &jobs).await.map_err(|e| {
                    format!("{context}: recovery after an interrupted recovery: {e}")
                })?;
                check_recovered(&store, &ctx.record, k as u64, dir.path(), &mut cache)
                    .await
                    .map_err(|e| format!("{context}, recovery interrupted then rerun: {e}"))?;
                assert!(
                    checker.violations().is_empty(),
                    "{context}: {:?}",
                    checker.violations()
                );
            }
            let (store, checker) = store_over(&fs)?;
            recover(&store, &jobs)
                .await
                .map_err(|e| format!("{context}: recovery failed: {e}"))?;
            check_recovered(&store, &ctx.record, k as u64, dir.path(), &mut cache)
                .await
                .map_err(|e| format!("{context}: {e}"))?;
            assert!(
                checker.violations().is_empty(),
                "{context}: {:?}",
                checker.violations()
            );
            explored += 1;
        }
    }
    Ok((trace.len(), shared_deletes, explored))
}

macro_rules! crash_points {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() -> TestResult {
            let (ops, deletes, explored) = explore($name).await?;
            println!("crash points: workload {} has {ops} operations ({deletes} deletions of shared files); explored {explored} crash states, 0 violations", $name);
            Ok(())
        }
    )*};
}

crash_points! {
    crash_points_first_checkpoint => "first_checkpoint",
    crash_points_incremental_dedup => "incremental_dedup",
    crash_points_subsume => "subsume",
    crash_points_abort => "abort",
    crash_points_cancel_retain => "cancel_retain",
    crash_points_cancel_delete => "cancel_delete",
    crash_points_restore => "restore",
    crash_points_gc => "gc",
}

/// Disk full (ENOSPC) at each operation of a checkpoint, one at a time: that checkpoint fails cleanly
/// (or, past its commit point, completes), and after recovery the root passes every check above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_at_every_operation_of_a_checkpoint() -> TestResult {
    let settings = settings(1, CancellationPolicy::RetainOnCancellation);
    let jobs: Jobs = vec![("a", settings.clone())];
    // Measure the operations of the second checkpoint once.
    let (start, end) = {
        let dir = tempfile::tempdir()?;
        let mut ctx = Ctx::new(&dir.path().join("run"))?;
        let c = CheckpointCoordinator::open(ctx.store.clone(), "a", settings.clone()).await?;
        let mut job = ctx.job("a", 1)?;
        ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
        Ctx::change(&mut job)?;
        let start = ctx.sim.ops();
        ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
        (start, ctx.sim.ops())
    };
    let (mut failed, mut completed) = (0, 0);
    for k in start..end {
        let dir = tempfile::tempdir()?;
        let mut ctx = Ctx::new(&dir.path().join("run"))?;
        let c = CheckpointCoordinator::open(ctx.store.clone(), "a", settings.clone()).await?;
        let mut job = ctx.job("a", 1)?;
        ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await?;
        Ctx::change(&mut job)?;
        ctx.sim.fail_at(k, std::io::ErrorKind::StorageFull);
        match ctx.checkpoint(&c, &job, SnapshotKind::Checkpoint).await {
            Ok(_) => completed += 1,
            Err(_) => failed += 1,
        }
        // Background flushes make op counts vary slightly between runs: never let an unfired
        // injection hit recovery.
        ctx.sim.fail_at(u64::MAX, std::io::ErrorKind::StorageFull);
        drop(c);
        assert!(
            ctx.checker.violations().is_empty(),
            "disk full at op {k}: {:?}",
            ctx.checker.violations()
        );
        let (store, checker) = store_over(&ctx.sim)?;
        recover(&store, &jobs)
            .await
            .map_err(|e| format!("disk full at op {k}: recovery: {e}"))?;
        let mut cache = ScanCache::new();
        check_recovered(&store, &ctx.record, u64::MAX, dir.path(), &mut cache)
            .await
            .map_err(|e| format!("disk full at op {k}: {e}"))?;
        assert!(
            checker.violations().is_empty(),
            "disk full at op {k}: {:?}",
            checker.violations()
        );
    }
    println!(
        "disk full: injected at each of {} operations of a checkpoint; {failed} failed cleanly, {completed} completed past the commit point, 0 violations",
        end - start
    );
    Ok(())
}
