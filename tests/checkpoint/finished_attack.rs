//! Hostile review of `JobRecord::finished_below` (GC treats snapshot pins and leftovers of ended ids
//! of the live epoch as dead), of `check_foreign_handles` (C1 for handles not uploaded by this
//! process) and of `FreeSlot` (the slot of a dropped `checkpoint()` is freed even if its cleanup
//! task is cancelled). A test named after a defect fails on the code it was written against; the
//! others pin down behaviour that holds.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use common::gates::Gates;
use common::hooked::{Hook, Op, with_hook};
use common::*;
use rockpoint::admin::JobRecord;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, RestoreSource, SnapshotKind,
    Store,
};

fn cfg(retained: usize, max_concurrent: usize) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        max_concurrent,
        ..CheckpointSettings::default()
    }
}

/// Gates, plus an independent check of the premise of the `finished_below` rule on every job
/// record that is written: within one epoch, `finished_below` never goes down, and no swap makes
/// an id below the previous record's `finished_below` complete (retained or a savepoint). If a
/// swap did, GC could already have judged that id's pins dead and its files GC's.
#[derive(Default)]
struct Watch {
    gates: Gates,
    last: Mutex<HashMap<String, JobRecord>>,
    violations: Mutex<Vec<String>>,
    swaps: std::sync::atomic::AtomicU64,
}

impl Watch {
    fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Hook for Watch {
    async fn before(&self, op: &Op<'_>, store: &dyn Store) -> rockpoint::Result<()> {
        Hook::before(&self.gates, op, store).await
    }

    async fn after(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        if let Op::PutIf { path, data, .. } = *op
            && let Some(job) = path
                .strip_prefix("jobs/")
                .and_then(|p| p.strip_suffix("/_job"))
        {
            self.swaps
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = checking::decode_job(data);
            let mut last = self.last.lock().unwrap();
            if let Some(prev) = last.get(job) {
                let complete = |r: &JobRecord| -> BTreeSet<u64> {
                    r.retained.iter().chain(&r.savepoints).copied().collect()
                };
                let before = complete(prev);
                let known: BTreeSet<u64> = before.iter().chain(&prev.discarding).copied().collect();
                if next.epoch == prev.epoch {
                    if next.finished_below < prev.finished_below {
                        self.violations.lock().unwrap().push(format!(
                            "job `{job}` epoch {}: finished_below went down {} -> {}",
                            next.epoch, prev.finished_below, next.finished_below
                        ));
                    }
                    for id in complete(&next).difference(&known) {
                        if *id < prev.finished_below {
                            self.violations.lock().unwrap().push(format!(
                                "job `{job}` epoch {}: id {id} became complete although the \
                                 previous record said every id below {} had ended",
                                next.epoch, prev.finished_below
                            ));
                        }
                    }
                }
            }
            last.insert(job.to_owned(), next);
        }
        Ok(())
    }
}

/// DEFECT (liveness of `shutdown`, and of every later `checkpoint()`: the `FreeSlot` fix is
/// incomplete). `AbortOnDrop` builds the `FreeSlot` guard *inside* the spawned task's body, so it
/// exists only once the task was polled. A runtime that shuts down right after the
/// `checkpoint()` future was dropped (a per-request runtime, a `block_on` that ends with the drop)
/// drops the queued task without polling it: no guard, no `remove_pending`. The slot stays taken
/// forever — `shutdown` waits for it without end, every `checkpoint()` fails `Busy` after its 5 s
/// wait, and `finished_below` is stuck below that id (GC keeps every later leftover). The comment
/// says "A runtime shutting down may cancel this task: the slot is freed anyway."
/// Fix: create the guard before `spawn` and move it into the task (`let free = FreeSlot(..);
/// runtime.spawn(async move { let _free = free; .. })`), so dropping the unpolled task frees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_checkpoint_whose_cleanup_task_is_never_polled_keeps_its_slot_forever() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let (store, gates) = with_hook(local_store(&dir.path().join("root"))?, Gates::default());
    let c = CheckpointCoordinator::open(store.clone(), "slot", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    {
        let (c, gates, backends) = (c.clone(), gates.clone(), job.backends.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let upload = gates.hold(&["put_file", "stage_file"], "");
                let refs: Vec<_> = backends.iter().collect();
                let mut checkpoint = Box::pin(c.checkpoint(&refs));
                tokio::select! {
                    done = &mut checkpoint => panic!("finished while held: {:?}", done.map(|d| d.id())),
                    _ = upload.reached() => {}
                }
                // The cleanup is spawned on this runtime, which ends right after.
                drop(checkpoint);
                upload.release();
            });
            drop(runtime);
        })
        .join()
        .map_err(|_| "the short-lived runtime's thread panicked")?;
    }
    let shutdown =
        tokio::time::timeout(Duration::from_secs(20), c.shutdown(JobEnd::Suspended)).await;
    assert!(
        shutdown.is_ok(),
        "shutdown did not return within 20 s: the slot of a checkpoint dropped on a runtime that \
         shut down before its cleanup task ran is never freed"
    );
    shutdown??;
    Ok(())
}

/// DEFECT (G1: "everything it references was durable first"). `check_foreign_handles` trusts
/// every handle that was uploaded in this process with this ticket (or a clone of it), whatever
/// store it was uploaded to: `PendingSnapshot::upload` takes any `&dyn Store` and records the
/// handle in the ticket's `uploaded` list. A backend given the wrong store (another prefix,
/// bucket or directory: the misconfiguration the check was written for) with the coordinator's
/// own ticket is committed unchecked; the checkpoint is "complete", subsumes the good ones, and
/// cannot be restored. Fix: record the store with the handle (`uploaded` keyed by the store's
/// identity, e.g. `describe()` or the `Arc` pointer of the coordinator's store) and trust only
/// handles uploaded to the coordinator's root; or check every handle whose new objects were not
/// uploaded through `self.st()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_trusts_a_handle_uploaded_with_its_own_ticket_to_another_root() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let elsewhere = local_store(&dir.path().join("wrong-root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "g1same", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    let ticket = c.trigger(SnapshotKind::Checkpoint)?;
    // The same process, the coordinator's own ticket, the wrong root.
    let handle = job.backends[0]
        .snapshot(&ticket.clone())?
        .upload(&*elsewhere)
        .await?;
    let committed = c.complete(&ticket, vec![handle]).await;
    let restorable = match &committed {
        Ok(done) => restore_scan(&*store, &done.path(), &dir.path().join("r"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(_) => Ok(()),
    };
    assert!(
        committed.is_err(),
        "a checkpoint whose files are only in another root was committed (restore: {restorable:?})"
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// HOLDS (G3 under the `finished_below` rule): a savepoint triggered first and completed last
/// stays in flight while three checkpoints commit after it (each swap writes `finished_below`,
/// which must stay at or below the savepoint's id), and a GC pass at grace 0 in between keeps its
/// pins and files: the savepoint then commits and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_in_flight_across_later_commits_keeps_its_pins_and_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, watch) = with_hook(local_store(&dir.path().join("root"))?, Watch::default());
    let c = CheckpointCoordinator::open(store.clone(), "spkeep", cfg(1, 3)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    let sp = c.trigger(SnapshotKind::Savepoint)?;
    let expected = job.scan()?;
    let handle = job.backends[0].snapshot(&sp)?.upload(&*store).await?;
    for _ in 0..3 {
        job.write(3_000)?;
        job.delete(500)?;
        c.checkpoint(&job.refs()).await?;
    }
    let record = rockpoint::admin::job_record(&*store, "spkeep")
        .await?
        .ok_or("no record")?;
    assert!(
        record.finished_below <= sp.checkpoint_id(),
        "finished_below {} passed the in-flight savepoint {}",
        record.finished_below,
        sp.checkpoint_id()
    );
    let report = gc_now(&*store).await?;
    assert!(
        !report
            .pins
            .iter()
            .any(|p| p.contains(&format!("sp-{:020}-", sp.checkpoint_id()))),
        "GC removed the in-flight savepoint's pin: {:?}",
        report.pins
    );
    let done = c.complete(&sp, vec![handle]).await?;
    assert_eq!(
        restore_scan(&*store, &done.path(), &dir.path().join("r")).await?,
        expected
    );
    c.shutdown(JobEnd::Suspended).await?;
    assert_eq!(watch.violations(), Vec::<String>::new());
    Ok(())
}

/// HOLDS (G1/G3 for claims, R6): while a claim's metadata write is held (its private-file copies
/// already under the claiming job's directory), the claiming job commits a savepoint (a record
/// swap) and GC runs at grace 0. The claim's id is in `claiming`, so `finished_below` stays at or
/// below it and GC leaves the copies as the live owner's business; the claim then commits and
/// the claimed checkpoint restores exactly. (Without `claiming`, `finished_below` would pass the
/// id and GC would delete the copies of a claim that is about to commit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_in_flight_keeps_its_copies_through_another_swap_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, watch) = with_hook(local_store(&dir.path().join("root"))?, Watch::default());
    let src = CheckpointCoordinator::open(store.clone(), "src", cfg(2, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    src.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;
    src.shutdown(JobEnd::Suspended).await?;

    let cl = CheckpointCoordinator::open(store.clone(), "cl", cfg(2, 2)).await?;
    let first = rockpoint::admin::job_record(&*store, "cl")
        .await?
        .ok_or("no record")?
        .epoch_first_id;
    let held = watch
        .gates
        .hold(&["put"], &format!("=jobs/cl/chk-{first:020}/_metadata"));
    let restoring = {
        let cl = cl.clone();
        let base = dir.path().join("claimed");
        tokio::spawn(async move {
            restore_job(
                &cl,
                &RestoreSource::Latest("src".into()),
                &base,
                1,
                2_000,
                ClaimMode::Claim,
            )
            .await
            .map(|tj| tj.scan().map_err(|e| e.to_string()))
            .map_err(|e| e.to_string())
        })
    };
    tokio::time::timeout(Duration::from_secs(60), held.reached()).await?;
    let copies: Vec<String> = objects(&*store)
        .await?
        .into_iter()
        .filter(|p| p.starts_with(&format!("jobs/cl/chk-{first:020}/")))
        .collect();
    assert!(!copies.is_empty(), "the claim copied no private file");
    // Another swap of the claiming job while the claim is in flight, then GC.
    let mut other = TestJob::open(&dir.path().join("other"), 1, 500)?;
    other.write(500)?;
    cl.savepoint(&other.refs()).await?;
    let record = rockpoint::admin::job_record(&*store, "cl")
        .await?
        .ok_or("no record")?;
    assert!(
        record.finished_below <= first,
        "finished_below {} passed the claim in flight (id {first})",
        record.finished_below
    );
    gc_now(&*store).await?;
    let left: Vec<String> = objects(&*store)
        .await?
        .into_iter()
        .filter(|p| p.starts_with(&format!("jobs/cl/chk-{first:020}/")))
        .collect();
    assert_eq!(
        left, copies,
        "GC removed a claim's copies while it was in flight"
    );
    held.release();
    let scan = tokio::time::timeout(Duration::from_secs(60), restoring).await????;
    assert_eq!(scan, expected);
    let claimed = cl.latest().ok_or("the claim committed nothing")?;
    assert_eq!(claimed.checkpoint_id, first);
    gc_now(&*store).await?;
    assert_eq!(
        restore_scan(&*store, &claimed.metadata_path(), &dir.path().join("r")).await?,
        expected
    );
    cl.shutdown(JobEnd::Suspended).await?;
    assert_eq!(watch.violations(), Vec::<String>::new());
    Ok(())
}

/// HOLDS: a mixed schedule of one coordinator — manual tickets completed out of order, an abort,
/// a `checkpoint()` future dropped mid-upload and another dropped mid-commit (its record swap
/// held), savepoints, and GC passes at grace 0 between them — never writes a record that makes
/// an id complete below the previous record's `finished_below`, never lowers it, and every
/// retained checkpoint and savepoint restores at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_below_premise_holds_over_a_mixed_schedule() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, watch) = with_hook(local_store(&dir.path().join("root"))?, Watch::default());
    let c = CheckpointCoordinator::open(store.clone(), "mix", cfg(2, 3)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    let mut oracle = HashMap::new();
    for round in 0..3u64 {
        job.write(2_000)?;
        job.backends[0].flush()?;
        // A savepoint and a checkpoint in flight by hand; a driven checkpoint commits past them.
        let sp = c.trigger(SnapshotKind::Savepoint)?;
        let sp_scan = job.scan()?;
        let sp_handle = job.backends[0].snapshot(&sp)?.upload(&*store).await?;
        let doomed = c.trigger(SnapshotKind::Checkpoint)?;
        let _late = job.backends[0].snapshot(&doomed)?.upload(&*store).await?;
        job.write(700)?;
        gc_now(&*store).await?;
        c.abort(&doomed).await?;
        let done = c.checkpoint(&job.refs()).await?;
        oracle.insert(done.id(), job.scan()?);
        gc_now(&*store).await?;
        let sp_done = c.complete(&sp, vec![sp_handle]).await?;
        oracle.insert(sp_done.id(), sp_scan);
        // A checkpoint() dropped mid-upload, and one dropped while its commit swap is held.
        job.write(500)?;
        for needle in ["", "_job"] {
            let ops: &[&'static str] = if needle.is_empty() {
                &["put_file", "stage_file"]
            } else {
                &["put_if"]
            };
            let gate = watch.gates.hold(ops, needle);
            {
                let refs = job.refs();
                let mut checkpoint = Box::pin(c.checkpoint(&refs));
                tokio::select! {
                    done = &mut checkpoint => {
                        // Nothing matched before the end (e.g. nothing new to upload).
                        let done = done?;
                        oracle.insert(done.id(), job.scan()?);
                    }
                    _ = gate.reached() => {}
                }
                drop(checkpoint);
            }
            gate.release();
            gc_now(&*store).await?;
        }
        let _ = round;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = c.checkpoint(&job.refs()).await?;
        oracle.insert(done.id(), job.scan()?);
        gc_now(&*store).await?;
    }
    let record = rockpoint::admin::job_record(&*store, "mix")
        .await?
        .ok_or("no record")?;
    for id in record.retained.iter().chain(&record.savepoints) {
        let kind = if record.savepoints.contains(id) {
            "sp"
        } else {
            "chk"
        };
        let path = format!("jobs/mix/{kind}-{id:020}/_metadata");
        let scan = restore_scan(&*store, &path, &dir.path().join(format!("r{id}"))).await?;
        if let Some(expected) = oracle.get(id) {
            assert_eq!(&scan, expected, "checkpoint {id} restored another state");
        }
    }
    c.shutdown(JobEnd::Suspended).await?;
    assert!(
        watch.swaps.load(std::sync::atomic::Ordering::Relaxed) > 10,
        "the watch saw too few record swaps"
    );
    assert_eq!(watch.violations(), Vec::<String>::new());
    Ok(())
}
