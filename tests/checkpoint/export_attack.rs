//! Hostile review of export (relocation, X1–X6 of `docs/protocols.md`): GC in the target root
//! between any two steps, a coordinator claiming the target job mid-export, two exports at once,
//! exports into the root they read from, invalid target jobs, canonical savepoints, crashes
//! (dropped futures) and failures at every step followed by GC, the source discarded mid-copy,
//! late-landing commit swaps, and the live coordinator's id blocks. Each test is named after the
//! property it checks; a test that fails names a defect.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rockpoint::store::ObjectVersion;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, JobEnd, RestoreSource, SnapshotKind,
    Store, export_snapshot,
};

// ---------------------------------------------------------------------------------------------
// A scripting hook: hold, fail, or make ambiguous the n-th call of an operation on the TARGET.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Hold,
    Fail,
    Ambiguous,
}

struct Rule {
    op: &'static str,
    needle: String,
    /// The first matching call this rule acts on (0-based).
    nth: usize,
    /// Act on every matching call from `nth` on (else only the `nth`).
    every: bool,
    action: Action,
    seen: AtomicUsize,
    reached: tokio::sync::watch::Sender<bool>,
    released: tokio::sync::watch::Sender<bool>,
}

impl Rule {
    async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(8), rx.wait_for(|r| *r))
            .await
            .unwrap_or_else(|_| panic!("{} {} #{} never reached", self.op, self.needle, self.nth));
    }
    fn release(&self) {
        self.released.send_replace(true);
    }
}

#[derive(Default)]
struct Script {
    rules: Mutex<Vec<Arc<Rule>>>,
}

impl Script {
    fn add(
        &self,
        op: &'static str,
        needle: &str,
        nth: usize,
        every: bool,
        action: Action,
    ) -> Arc<Rule> {
        let rule = Arc::new(Rule {
            op,
            needle: needle.to_owned(),
            nth,
            every,
            action,
            seen: AtomicUsize::new(0),
            reached: tokio::sync::watch::channel(false).0,
            released: tokio::sync::watch::channel(false).0,
        });
        self.rules.lock().unwrap().push(rule.clone());
        rule
    }
    fn hold(&self, op: &'static str, needle: &str, nth: usize) -> Arc<Rule> {
        self.add(op, needle, nth, false, Action::Hold)
    }
    fn fail(&self, op: &'static str, needle: &str, nth: usize) -> Arc<Rule> {
        self.add(op, needle, nth, true, Action::Fail)
    }
    /// The rules acting on this call (`before`: counts it).
    fn acting(&self, op: &Op<'_>, count: bool) -> Vec<Arc<Rule>> {
        let rules = self.rules.lock().unwrap().clone();
        let subject = op.subject();
        rules
            .into_iter()
            .filter(|r| r.op == op.name() && subject.contains(&r.needle))
            .filter(|r| {
                let n = if count {
                    r.seen.fetch_add(1, Ordering::SeqCst)
                } else {
                    r.seen.load(Ordering::SeqCst).saturating_sub(1)
                };
                n == r.nth || (r.every && n > r.nth)
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl Hook for Script {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        for rule in self.acting(op, true) {
            match rule.action {
                Action::Hold => {
                    rule.reached.send_replace(true);
                    let mut rx = rule.released.subscribe();
                    let _ = rx.wait_for(|r| *r).await;
                }
                Action::Fail => {
                    rule.reached.send_replace(true);
                    return Err(std::io::Error::other(format!(
                        "injected failure of {} {}",
                        op.name(),
                        op.subject()
                    ))
                    .into());
                }
                Action::Ambiguous => {}
            }
        }
        Ok(())
    }

    async fn after(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        for rule in self.acting(op, false) {
            if rule.action == Action::Ambiguous {
                rule.reached.send_replace(true);
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "ambiguous: applied, reported failed",
                )
                .into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn metadata(path: &str) -> RestoreSource {
    RestoreSource::Metadata(path.to_owned())
}

/// A source root with one savepoint of a small two-backend job.
struct Source {
    store: Arc<dyn Store>,
    coordinator: CheckpointCoordinator,
    job: TestJob,
    path: String,
    scan: Scan,
}

async fn source(dir: &Path, settings: CheckpointSettings) -> TestResult<Source> {
    let store = local_store(&dir.join("source"))?;
    source_in(dir, store, settings).await
}

async fn source_in(
    dir: &Path,
    store: Arc<dyn Store>,
    settings: CheckpointSettings,
) -> TestResult<Source> {
    let coordinator = CheckpointCoordinator::open(store.clone(), "job", settings).await?;
    let mut job = TestJob::open(&dir.join("job"), 2, 500)?;
    job.write(1_500)?;
    let savepoint = coordinator.savepoint(&job.refs()).await?;
    let scan = job.scan()?;
    Ok(Source {
        store,
        coordinator,
        job,
        path: savepoint.path(),
        scan,
    })
}

fn id_of(metadata_path: &str) -> u64 {
    metadata_path
        .rsplit('/')
        .nth(1)
        .and_then(|dir| dir.rsplit('-').next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("no id in `{metadata_path}`"))
}

async fn record(store: &dyn Store, job: &str) -> TestResult<rockpoint::admin::JobRecord> {
    Ok(rockpoint::admin::job_record(store, job)
        .await?
        .expect("the job has a record"))
}

type Running<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = rockpoint::Result<rockpoint::ExportReport>> + 'a>,
>;

/// An export (parallelism 1) driven on this task (its future is not `Send`-general enough for
/// `tokio::spawn`).
fn start<'a>(from: &'a dyn Store, source: &'a RestoreSource, to: &'a dyn Store) -> Running<'a> {
    Box::pin(export_snapshot(from, source, to, None, 1, None))
}

/// Polls `export` until `gate` holds one of its calls.
async fn until(export: &mut Running<'_>, gate: &Rule) {
    tokio::select! {
        done = export.as_mut() => panic!(
            "the export ended before {} {} #{}: {:?}",
            gate.op, gate.needle, gate.nth, done.map(|r| r.metadata_path)
        ),
        () = gate.reached() => {}
    }
}

fn gc_options(margin: Duration) -> rockpoint::GcOptions {
    rockpoint::GcOptions {
        grace_period: Duration::ZERO,
        mode: rockpoint::SweepMode::Delete,
        incomplete_min_age: Duration::ZERO,
        clock_margin: margin,
    }
}

async fn paths(store: &dyn Store, prefix: &str) -> TestResult<Vec<String>> {
    Ok(store
        .list(prefix)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect())
}

/// The points of an export at which a target-store call can be held or failed:
/// (op, subject needle, n-th matching call, step).
const STEPS: &[(&str, &str, usize, &str)] = &[
    ("put_if", "/_job", 0, "X1 swap"),
    ("put", "/read-sp-", 0, "X2 pin"),
    ("list", "gc/", 0, "X2 intent wait"),
    ("head", "shared/", 0, "X3 head"),
    ("put_file", "shared/", 0, "X3 upload"),
    ("put_file", "/sp-", 0, "X4 private file"),
    ("put", "/_metadata", 0, "X5 metadata"),
    ("put_if", "/_job", 1, "X6 swap"),
];

// ---------------------------------------------------------------------------------------------
// GC in the target root
// ---------------------------------------------------------------------------------------------

/// GC at grace 0 in the TARGET root while the export is held before each of its steps, and right
/// after X6: nothing the savepoint needs is deleted and the target job is not fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_at_grace_zero_in_the_target_before_every_export_step_deletes_nothing_it_needs()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    for (i, &(op, needle, nth, step)) in STEPS.iter().enumerate() {
        let raw = local_store(&dir.path().join(format!("target-{i}")))?;
        let (target, script) = with_hook(raw.clone(), Script::default());
        let gate = script.hold(op, needle, nth);
        let source = metadata(&src.path);
        let mut export = start(&*src.store, &source, &*target);
        until(&mut export, &gate).await;
        for _ in 0..2 {
            let report = gc_now(&*raw).await?;
            assert!(report.fenced_jobs.is_empty(), "{step}: {report:?}");
        }
        gate.release();
        let report = export.await.map_err(|e| format!("{step}: {e}"))?;
        // Right after X6 (the target pin still lives), then twice more.
        for _ in 0..3 {
            gc_now(&*raw).await?;
            let scan = restore_scan(&*raw, &report.metadata_path, dir.path())
                .await
                .map_err(|e| format!("{step}: {e}"))?;
            assert!(scan == src.scan, "{step}: restores another state");
        }
        assert!(
            record(&*raw, "job")
                .await?
                .savepoints
                .contains(&id_of(&report.metadata_path)),
            "{step}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A coordinator of the target job claiming it mid-export
// ---------------------------------------------------------------------------------------------

/// A coordinator of the target job opens (claim O1, recovery O2 deleting uncommitted ids below
/// its block) while the export is held at X4, X5 or X6: the export restarts under a new id and
/// commits; nothing of the abandoned id is left; the coordinator's checkpoints never collide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_claiming_the_target_job_between_x1_and_x6_never_loses_the_export()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    for (i, &(op, needle, nth, step)) in STEPS[4..].iter().enumerate() {
        let raw = local_store(&dir.path().join(format!("target-{i}")))?;
        let (target, script) = with_hook(raw.clone(), Script::default());
        let gate = script.hold(op, needle, nth);
        let source = metadata(&src.path);
        let mut export = start(&*src.store, &source, &*target);
        until(&mut export, &gate).await;
        let first = record(&*raw, "job").await?.next_id - 1;
        let live =
            CheckpointCoordinator::open(raw.clone(), "job", CheckpointSettings::default()).await?;
        gate.release();
        let report = export.await.map_err(|e| format!("{step}: {e}"))?;
        let id = id_of(&report.metadata_path);
        assert_ne!(
            id, first,
            "{step}: committed under the id the claim abandoned"
        );
        let left = paths(&*raw, &format!("jobs/job/sp-{first:020}/")).await?;
        assert!(left.is_empty(), "{step}: left {left:?}");
        let running = TestJob::open(&dir.path().join(format!("running-{i}")), 1, 10)?;
        running.backends[0].state(&VALUES)?.put(&1, &vec![1])?;
        let done = live.checkpoint(&running.refs()).await?;
        assert_ne!(done.id(), id, "{step}");
        live.shutdown(JobEnd::Suspended).await?;
        for _ in 0..2 {
            gc_now(&*raw).await?;
        }
        assert!(
            restore_scan(&*raw, &report.metadata_path, dir.path()).await? == src.scan,
            "{step}"
        );
    }
    Ok(())
}

/// GC fences the target job (its coordinator crashed, lease expired) while the export is held at
/// X5: the fence moves `epoch_first_id` past the export's id, which X6 takes for a claim. The
/// export must still commit (it restarts under a new id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_fencing_an_expired_target_job_mid_export_does_not_lose_the_export() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let raw = local_store(&dir.path().join("target"))?;
    {
        let crashed = CheckpointCoordinator::open(
            raw.clone(),
            "job",
            CheckpointSettings {
                lease: Duration::from_millis(300),
                ..CheckpointSettings::default()
            },
        )
        .await?;
        drop(crashed);
    }
    let (target, script) = with_hook(raw.clone(), Script::default());
    let gate = script.hold("put", "/_metadata", 0);
    let source = metadata(&src.path);
    let mut export = start(&*src.store, &source, &*target);
    until(&mut export, &gate).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = rockpoint::collect_garbage(&*raw, &gc_options(Duration::ZERO)).await?;
    assert_eq!(report.fenced_jobs, vec!["job".to_owned()]);
    gate.release();
    let report = export.await?;
    for _ in 0..2 {
        rockpoint::collect_garbage(&*raw, &gc_options(Duration::ZERO)).await?;
    }
    assert!(restore_scan(&*raw, &report.metadata_path, dir.path()).await? == src.scan);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Concurrent exports, exports into the same root, names, formats
// ---------------------------------------------------------------------------------------------

/// Two exports into one target job at once — one held at its X1 swap while the other runs
/// through, then both in parallel — get distinct ids and both restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exports_into_one_job_at_once_get_distinct_ids_and_both_restore() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut src = source(dir.path(), CheckpointSettings::default()).await?;
    src.job.write(800)?;
    let later = src.coordinator.checkpoint(&src.job.refs()).await?;
    let later_scan = src.job.scan()?;
    let raw = local_store(&dir.path().join("target"))?;
    let (target, script) = with_hook(raw.clone(), Script::default());
    let gate = script.hold("put_if", "/_job", 0);
    let (first, second) = (metadata(&src.path), metadata(&later.path()));
    let mut a = start(&*src.store, &first, &*target);
    until(&mut a, &gate).await;
    let b = start(&*src.store, &second, &*target).await?;
    gate.release();
    let a = a.await?;
    let (c, d) = tokio::join!(
        start(&*src.store, &first, &*target),
        start(&*src.store, &second, &*target)
    );
    let (c, d) = (c?, d?);
    let mut ids: Vec<u64> = [&a, &b, &c, &d]
        .iter()
        .map(|r| id_of(&r.metadata_path))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "{a:?} {b:?} {c:?} {d:?}");
    assert_eq!(record(&*raw, "job").await?.savepoints, ids);
    for _ in 0..2 {
        gc_now(&*raw).await?;
    }
    for (r, expected) in [
        (&a, &src.scan),
        (&b, &later_scan),
        (&c, &src.scan),
        (&d, &later_scan),
    ] {
        assert!(restore_scan(&*raw, &r.metadata_path, dir.path()).await? == *expected);
    }
    Ok(())
}

/// An export from a root into ITSELF, under the source's own job (whose coordinator lives and
/// keeps checkpointing) and under another job; then the source checkpoint is subsumed, the job
/// finishes (discarding its checkpoints) and GC runs twice: both savepoints restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_into_its_own_root_survives_the_source_being_subsumed_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut src = source(dir.path(), CheckpointSettings::default()).await?;
    src.job.write(700)?;
    let chk = src.coordinator.checkpoint(&src.job.refs()).await?;
    let at_chk = src.job.scan()?;
    let store = src.store.clone();
    let same = export_snapshot(
        &*store,
        &RestoreSource::Latest("job".into()),
        &*store,
        None,
        2,
        None,
    )
    .await?;
    let other = export_snapshot(
        &*store,
        &metadata(&chk.path()),
        &*store,
        Some("other"),
        2,
        None,
    )
    .await?;
    assert!(same.metadata_path.starts_with("jobs/job/sp-"), "{same:?}");
    assert!(
        other.metadata_path.starts_with("jobs/other/sp-"),
        "{other:?}"
    );
    assert_eq!(
        same.objects_copied, other.objects_copied,
        "only private files are copied"
    );
    for _ in 0..3 {
        src.job.write(300)?;
        let done = src.coordinator.checkpoint(&src.job.refs()).await?;
        assert_ne!(done.id(), id_of(&same.metadata_path));
    }
    src.coordinator.shutdown(JobEnd::Finished).await?;
    for _ in 0..2 {
        gc_now(&*store).await?;
    }
    assert!(restore_scan(&*store, &same.metadata_path, dir.path()).await? == at_chk);
    assert!(restore_scan(&*store, &other.metadata_path, dir.path()).await? == at_chk);
    assert!(restore_scan(&*store, &src.path, dir.path()).await? == src.scan);
    let second = gc_now(&*store).await?;
    assert!(
        second.is_empty(),
        "GC deleted something the third time: {second:?}"
    );
    Ok(())
}

/// Invalid target job names are refused (`Invalid`) before anything is written in either root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_target_job_name_is_refused_before_anything_is_written() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let target = local_store(&dir.path().join("target"))?;
    let long = "x".repeat(129);
    for name in [
        "",
        "a/b",
        "../x",
        ".x",
        "x y",
        "é",
        "a\0b",
        long.as_str(),
        "_job/..",
    ] {
        let error = export_snapshot(
            &*src.store,
            &metadata(&src.path),
            &*target,
            Some(name),
            2,
            None,
        )
        .await
        .expect_err(name);
        assert_eq!(error.kind(), ErrorKind::Invalid, "`{name}`: {error}");
    }
    assert!(objects(&*target).await?.is_empty());
    assert!(paths(&*src.store, "pins/").await?.is_empty());
    Ok(())
}

/// A canonical savepoint exported (into its own root, under another job) keeps its format and
/// its kind, and restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canonical_savepoint_export_keeps_its_format_and_restores() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let canonical = src.coordinator.savepoint_canonical(&src.job.refs()).await?;
    let report = export_snapshot(
        &*src.store,
        &metadata(&canonical.path()),
        &*src.store,
        Some("moved"),
        2,
        None,
    )
    .await?;
    let (_, exported) =
        rockpoint::restore::read_metadata(&*src.store, &metadata(&report.metadata_path)).await?;
    assert_eq!(
        exported.format,
        rockpoint::format::SnapshotFormat::Canonical
    );
    assert_eq!(exported.kind, SnapshotKind::Savepoint);
    assert_eq!(exported.job_id, "moved");
    for _ in 0..2 {
        gc_now(&*src.store).await?;
    }
    assert!(restore_scan(&*src.store, &report.metadata_path, dir.path()).await? == src.scan);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Crashes and failures at every step
// ---------------------------------------------------------------------------------------------

/// The export future dropped while held before each step: nothing is committed, GC twice deletes
/// nothing the second time, and everything left is held only by the export's unexpired pins (the
/// target's reader pin names the id and every hash; GC removes them once the pins expire).
/// A later export of the same snapshot commits and restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_dropped_before_any_step_commits_nothing_and_gc_twice_is_idempotent() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let (_, source_metadata) =
        rockpoint::restore::read_metadata(&*src.store, &metadata(&src.path)).await?;
    let hashes: std::collections::BTreeSet<String> = source_metadata
        .shared_hashes()
        .map(|h| shared_path(&h))
        .collect();
    for (i, &(op, needle, nth, step)) in STEPS.iter().enumerate() {
        let raw = local_store(&dir.path().join(format!("target-{i}")))?;
        let (target, script) = with_hook(raw.clone(), Script::default());
        let gate = script.hold(op, needle, nth);
        let source = metadata(&src.path);
        let mut export = start(&*src.store, &source, &*target);
        until(&mut export, &gate).await;
        drop(export);
        gate.release();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(rec) = rockpoint::admin::job_record(&*raw, "job").await? {
            assert!(rec.savepoints.is_empty(), "{step}: half-committed {rec:?}");
        }
        gc_now(&*raw).await?;
        let second = gc_now(&*raw).await?;
        assert!(second.is_empty(), "{step}: second GC deleted {second:?}");
        for path in objects(&*raw).await? {
            let held = path == "jobs/job/_job"
                || path.starts_with("pins/job/read-sp-")
                || path.starts_with("jobs/job/sp-")
                || hashes.contains(&path);
            assert!(held, "{step}: `{path}` is left and no pin holds it");
        }
        let report = export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 2, None)
            .await
            .map_err(|e| format!("{step}: {e}"))?;
        assert!(restore_scan(&*raw, &report.metadata_path, dir.path()).await? == src.scan);
    }
    Ok(())
}

/// An export failing at each step (injected error, not a crash): the failure is reported, the
/// source's reader pin is removed, the target job's record only lost an id, and two GC passes at
/// grace 0 leave nothing of the export (G4) — the second deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_export_at_any_step_leaves_only_a_consumed_id_and_gc_removes_the_rest()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    for (i, &(op, needle, nth, step)) in STEPS.iter().enumerate().skip(1) {
        let raw = local_store(&dir.path().join(format!("target-{i}")))?;
        let (target, script) = with_hook(raw.clone(), Script::default());
        script.fail(op, needle, nth);
        let error = export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 2, None)
            .await
            .expect_err(step);
        assert_ne!(error.kind(), ErrorKind::Fenced, "{step}: {error}");
        let source_pins = paths(&*src.store, "pins/").await?;
        assert!(
            source_pins.is_empty(),
            "{step}: source pins left {source_pins:?}"
        );
        let rec = record(&*raw, "job").await?;
        assert!(rec.savepoints.is_empty(), "{step}: {rec:?}");
        assert_eq!(rec.next_id, 2, "{step}: {rec:?}");
        gc_now(&*raw).await?;
        let second = gc_now(&*raw).await?;
        assert!(second.is_empty(), "{step}: second GC deleted {second:?}");
        let left: Vec<String> = objects(&*raw)
            .await?
            .into_iter()
            .filter(|p| p != "jobs/job/_job")
            .collect();
        if step == "X6 swap" {
            // Every record write fails from X6 on: whether X6 landed cannot be settled, so nothing
            // is removed (a swap still in flight could commit it). The id stays in `exporting`
            // and the export's pin holds what it wrote until it expires; then GC removes it.
            assert!(rec.exporting.contains(&1), "{step}: {rec:?}");
            let held = |p: &String| {
                p.starts_with("pins/job/read-sp-")
                    || p.starts_with("jobs/job/sp-")
                    || p.starts_with("shared/")
            };
            assert!(left.iter().all(held), "{step}: left {left:?}");
            continue;
        }
        assert!(rec.exporting.is_empty(), "{step}: {rec:?}");
        assert!(
            left.is_empty(),
            "{step}: the failed export left {left:?} after two GC passes"
        );
    }
    Ok(())
}

/// An export whose target pin write (X2) lands but is reported failed: the export fails, and the
/// pin it wrote is left behind as a live reader pin for an hour (READER_PIN_LIFETIME_MS), holding
/// every hash of the snapshot: two GC passes do not remove it (G4; minor: it expires). Cause:
/// `Export::attempt` (src/checkpoint/relocate.rs:140-142) returns with `?` on an error of the pin
/// put itself, before any cleanup (`pin_for_reading`, resolve.rs:95-101, has the same pattern for
/// the source pin and for restores).
///
/// A defect the hostile review of the export found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_target_pin_write_leaves_a_live_pin_that_gc_cannot_remove() -> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let raw = local_store(&dir.path().join("target"))?;
    let (target, script) = with_hook(raw.clone(), Script::default());
    script.add("put", "/read-sp-", 0, false, Action::Ambiguous);
    export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 2, None)
        .await
        .expect_err("the pin write was reported failed");
    gc_now(&*raw).await?;
    gc_now(&*raw).await?;
    let pins = paths(&*raw, "pins/").await?;
    assert!(
        pins.is_empty(),
        "a failed export left a live pin after two GC passes: {pins:?}"
    );
    Ok(())
}

/// The source job subsumes (discards) the exported checkpoint and GC runs in the SOURCE root while
/// the export is held mid-copy: the source reader pin keeps everything; the export commits and
/// restores; afterwards the source pin is gone and GC removes the discarded checkpoint's records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_discarded_and_collected_mid_copy_does_not_break_the_export() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut src = source(dir.path(), CheckpointSettings::default()).await?;
    src.job.write(700)?;
    let chk = src.coordinator.checkpoint(&src.job.refs()).await?;
    let at_chk = src.job.scan()?;
    let raw = local_store(&dir.path().join("target"))?;
    let (target, script) = with_hook(raw.clone(), Script::default());
    let gate = script.hold("put_file", "/sp-", 0);
    let source = metadata(&chk.path());
    let mut export = start(&*src.store, &source, &*target);
    until(&mut export, &gate).await;
    for _ in 0..2 {
        src.job.write(300)?;
        for b in &src.job.backends {
            b.flush()?;
            b.compact()?;
        }
        src.coordinator.checkpoint(&src.job.refs()).await?;
    }
    src.coordinator.shutdown(JobEnd::Finished).await?;
    for _ in 0..2 {
        gc_now(&*src.store).await?;
    }
    gate.release();
    let report = export.await?;
    assert!(restore_scan(&*raw, &report.metadata_path, dir.path()).await? == at_chk);
    assert!(paths(&*src.store, "pins/").await?.is_empty());
    for _ in 0..2 {
        gc_now(&*src.store).await?;
    }
    let left = paths(&*src.store, &format!("jobs/job/chk-{:020}/", chk.id())).await?;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Defects
// ---------------------------------------------------------------------------------------------

/// X6's swap is sent, times out (its outcome unknown) and the read-back in `swap_job` fails too;
/// the export then reads the record once (`committed`, relocate.rs:187/465), finds the id not
/// listed and removes the metadata, the private files and the pin — and only then does the
/// in-flight swap land (an object store applying a timed-out request). The record now lists a
/// savepoint whose metadata is gone: a committed snapshot that does not restore (G1, G2).
/// The coordinator guards the same situation with a no-op swap before deleting (`abort_by_id`);
/// the export only reads.
///
/// A defect the hostile review of the export found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_landing_x6_swap_after_the_failed_export_cleaned_up_commits_a_savepoint_without_metadata()
-> TestResult {
    struct LateSwap {
        put_ifs: AtomicUsize,
        stashed: Mutex<Option<(String, Bytes, Option<ObjectVersion>)>>,
        fail_read: std::sync::atomic::AtomicBool,
        landed: std::sync::atomic::AtomicBool,
    }
    #[async_trait::async_trait]
    impl Hook for LateSwap {
        async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
            match *op {
                Op::PutIf {
                    path,
                    data,
                    expected,
                } if path.ends_with("/_job")
                    && self.put_ifs.fetch_add(1, Ordering::SeqCst) == 1 =>
                {
                    *self.stashed.lock().unwrap() =
                        Some((path.to_owned(), data.clone(), expected.cloned()));
                    self.fail_read.store(true, Ordering::SeqCst);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "X6 swap timed out (still in flight)",
                    )
                    .into());
                }
                Op::GetVersioned { path }
                    if path.ends_with("/_job") && self.fail_read.swap(false, Ordering::SeqCst) =>
                {
                    return Err(std::io::Error::other("read-back failed").into());
                }
                _ => {}
            }
            Ok(())
        }
        async fn after(&self, op: &Op<'_>, store: &dyn Store) -> rockpoint::Result<()> {
            if let Op::Delete { path } = *op
                && path.contains("/read-sp-")
            {
                let stashed = self.stashed.lock().unwrap().take();
                if let Some((path, data, expected)) = stashed {
                    // The timed-out request is applied now.
                    if store.put_if(&path, data, expected.as_ref()).await.is_ok() {
                        self.landed.store(true, Ordering::SeqCst);
                    }
                }
            }
            Ok(())
        }
    }
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let raw = local_store(&dir.path().join("target"))?;
    let (target, hook) = with_hook(
        raw.clone(),
        LateSwap {
            put_ifs: AtomicUsize::new(0),
            stashed: Mutex::new(None),
            fail_read: false.into(),
            landed: false.into(),
        },
    );
    let outcome = export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 2, None).await;
    let rec = record(&*raw, "job").await?;
    for &id in &rec.savepoints {
        let path = format!("jobs/job/sp-{id:020}/_metadata");
        let restored = restore_scan(&*raw, &path, dir.path()).await;
        assert!(
            matches!(&restored, Ok(scan) if *scan == src.scan),
            "savepoint {id} is committed in the record (the late swap landed: {}; the export \
             returned {:?}) but does not restore: {:?}",
            hook.landed.load(Ordering::SeqCst),
            outcome
                .as_ref()
                .map(|r| r.metadata_path.clone())
                .map_err(|e| e.to_string()),
            restored.err().map(|e| e.to_string())
        );
    }
    Ok(())
}

/// An export into a job whose coordinator lives fails at X5, and its best-effort cleanup cannot
/// delete the private files it wrote (the warning says "GC removes it"); its pin is removed. GC
/// at grace 0, twice: the leftovers stay. Cause: `orphaned_records` (src/checkpoint/gc.rs:389-394)
/// treats every id at or above the owner's `epoch_first_id` and `finished_below` as the live
/// owner's business — but the export's id came from X1, above the owner's block, and the owner's
/// `finished_below` (coordinator/record.rs:110-119, from its own next id) stays below it until
/// the coordinator hands out ids past it (up to ~1000 checkpoints) or the job is claimed again.
/// The same holds for every leftover of a crashed export once its pin expired (G4).
///
/// A defect the hostile review of the export found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_failed_export_into_a_job_with_a_live_coordinator_are_never_collected()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let raw = local_store(&dir.path().join("target"))?;
    let live =
        CheckpointCoordinator::open(raw.clone(), "job", CheckpointSettings::default()).await?;
    let running = TestJob::open(&dir.path().join("running"), 1, 10)?;
    running.backends[0].state(&VALUES)?.put(&1, &vec![1])?;
    live.checkpoint(&running.refs()).await?;
    let (target, script) = with_hook(raw.clone(), Script::default());
    script.fail("put", "/_metadata", 0);
    script.fail("delete", "jobs/job/sp-", 0);
    export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 2, None)
        .await
        .expect_err("X5 fails");
    assert!(
        paths(&*raw, "pins/job/read-sp-").await?.is_empty(),
        "the pin was removed"
    );
    let before = paths(&*raw, "jobs/job/sp-").await?;
    assert!(!before.is_empty(), "the cleanup was to fail");
    live.checkpoint(&running.refs()).await?;
    for _ in 0..2 {
        gc_now(&*raw).await?;
    }
    let left = paths(&*raw, "jobs/job/sp-").await?;
    live.shutdown(JobEnd::Suspended).await?;
    assert!(
        left.is_empty(),
        "two GC passes left the failed export's records while the coordinator lives: {left:?}"
    );
    Ok(())
}

/// The same failed export into a job without a live coordinator: GC removes the leftovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_failed_export_into_a_job_without_a_coordinator_are_collected() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let raw = local_store(&dir.path().join("target"))?;
    let (target, script) = with_hook(raw.clone(), Script::default());
    script.fail("put", "/_metadata", 0);
    script.fail("delete", "jobs/job/sp-", 0);
    export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 2, None)
        .await
        .expect_err("X5 fails");
    assert!(!paths(&*raw, "jobs/job/sp-").await?.is_empty());
    for _ in 0..2 {
        gc_now(&*raw).await?;
    }
    let left = paths(&*raw, "jobs/job/sp-").await?;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// 512 exports into a job (here failing right after X1, as a retrying cron job's would; committed
/// ones take ids the same way) while its coordinator lives. The coordinator extends its id block
/// only when `record.next_id - its next id < ID_LOW_WATER` (coordinator/record.rs:121), so ids
/// taken by exports count as its own reserve: after its block [1, 1025) runs out it is `Busy`
/// forever — no commit or lease renewal ever reserves more, although the message says one will.
///
/// A defect the hostile review of the export found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_taking_half_a_block_of_ids_leave_the_live_coordinator_unable_to_checkpoint()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let src = source(dir.path(), CheckpointSettings::default()).await?;
    let raw = local_store(&dir.path().join("target"))?;
    let live = CheckpointCoordinator::open(
        raw.clone(),
        "job",
        CheckpointSettings {
            max_concurrent: 64,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let (target, script) = with_hook(raw.clone(), Script::default());
    script.fail("put", "/read-sp-", 0);
    for _ in 0..512 {
        export_snapshot(&*src.store, &metadata(&src.path), &*target, None, 1, None)
            .await
            .expect_err("X2 fails");
    }
    let mut handed = 0u64;
    let mut busy = None;
    'outer: while handed < 1100 {
        let mut tickets = Vec::new();
        for _ in 0..64 {
            match live.trigger(SnapshotKind::Checkpoint) {
                Ok(ticket) => tickets.push(ticket),
                Err(e) => {
                    busy = Some(e.to_string());
                    for ticket in &tickets {
                        live.abort(ticket).await?;
                    }
                    // A commit or lease renewal would now reserve more: the abort's swap is one.
                    match live.trigger(SnapshotKind::Checkpoint) {
                        Ok(ticket) => {
                            handed += tickets.len() as u64 + 1;
                            live.abort(&ticket).await?;
                            busy = None;
                            continue 'outer;
                        }
                        Err(_) => break 'outer,
                    }
                }
            }
        }
        handed += tickets.len() as u64;
        for ticket in &tickets {
            live.abort(ticket).await?;
        }
    }
    assert!(
        busy.is_none() && handed >= 1100,
        "the live coordinator stopped after {handed} ids: {busy:?} (record: {:?})",
        record(&*raw, "job").await?
    );
    Ok(())
}
