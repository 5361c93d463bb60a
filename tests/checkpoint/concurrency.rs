//! Concurrent checkpoints, aborts and subsumption, with the regression tests named after the bugs
//! they would catch coming back (see BRIEF.md, "What went wrong before us").

use crate::common;

use std::time::Duration;

use common::*;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, GcOptions, JobEnd, SnapshotKind, Store,
    SweepMode, collect_garbage,
};

fn settings(retained: usize, max_concurrent: usize) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        max_concurrent,
        ..CheckpointSettings::default()
    }
}

/// Waits until `shutdown` has closed the coordinator (and so cancelled what is in flight).
async fn wait_until_shut_down(c: &CheckpointCoordinator) {
    while !c.is_shut_down() {
        tokio::time::sleep(Duration::from_millis(5)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_in_flight_while_a_third_is_subsumed_keep_what_they_reuse() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 3)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(4_000)?;
    job.backends[0].flush()?;
    c.checkpoint(&job.refs()).await?; // checkpoint 1, retained

    // Tickets 2 and 3 are in flight; 3 snapshots first (it reuses checkpoint 1's files), then the
    // state is rewritten and compacted so that 2's snapshot no longer holds them.
    let t2 = c.trigger(SnapshotKind::Checkpoint)?;
    let t3 = c.trigger(SnapshotKind::Checkpoint)?;
    let p3 = job.backends[0].snapshot(&t3)?;
    let expected_3 = job.scan()?;
    let h3 = p3.upload(&*store).await?;
    job.write(20_000)?;
    job.backends[0].flush()?;
    job.backends[0].compact()?;
    let p2 = job.backends[0].snapshot(&t2)?;
    let h2 = p2.upload(&*store).await?;
    let reused_by_3: Vec<_> = h3.shared_files.iter().map(|f| f.hash).collect();
    assert!(
        reused_by_3
            .iter()
            .any(|h| !h2.shared_files.iter().any(|f| f.hash == *h)),
        "the workload must make 3 reuse files that 2 does not reference"
    );

    // 2 completes: checkpoint 1 is subsumed and discarded while 3 is still in flight.
    c.complete(&t2, vec![h2]).await?;
    let done_3 = c.complete(&t3, vec![h3]).await?;
    assert_eq!(
        restore_scan(&*store, &done_3.path(), dir.path()).await?,
        expected_3
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_23949_abort_cleanup_keeps_files_a_later_checkpoint_reused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 2)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(4_000)?;
    // 2 and 3 snapshot the same files; 2 uploads them first and then fails; 3 finds them present.
    let t2 = c.trigger(SnapshotKind::Checkpoint)?;
    let t3 = c.trigger(SnapshotKind::Checkpoint)?;
    let p2 = job.backends[0].snapshot(&t2)?;
    let p3 = job.backends[0].snapshot(&t3)?;
    let expected = job.scan()?;
    let h2 = p2.upload(&*store).await?;
    let h3 = p3.upload(&*store).await?;
    assert!(
        h2.uploaded_bytes > 0 && h3.reused_bytes > 0,
        "3 reuses what 2 uploaded"
    );
    c.abort(&t2).await?;
    let err = c
        .complete(&t2, vec![h2])
        .await
        .expect_err("an aborted checkpoint never commits");
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    let done = c.complete(&t3, vec![h3]).await?;
    assert_eq!(
        restore_scan(&*store, &done.path(), dir.path()).await?,
        expected
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_25395_savepoint_neither_resets_the_base_nor_loses_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(6_000)?;
    let first = c.checkpoint(&job.refs()).await?;
    let savepoint = c.savepoint(&job.refs()).await?;
    let savepoint_state = job.scan()?;
    assert_eq!(
        savepoint.uploaded_bytes(),
        new_bytes(&savepoint.metadata, &[&first.metadata])
    );
    job.write(100)?;
    let after = c.checkpoint(&job.refs()).await?;
    assert_eq!(
        after.uploaded_bytes(),
        new_bytes(&after.metadata, &[&savepoint.metadata, &first.metadata]),
        "the checkpoint after a savepoint is incremental"
    );
    assert!(after.uploaded_bytes() < after.metadata.full_size_bytes / 2);
    for _ in 0..3 {
        job.write(6_000)?;
        c.checkpoint(&job.refs()).await?;
    }
    c.shutdown(JobEnd::Finished).await?;
    assert_eq!(
        restore_scan(&*store, &savepoint.path(), dir.path()).await?,
        savepoint_state
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_29913_same_local_name_different_content_never_collide() -> TestResult {
    // Four fresh backends go through the same open/register/flush sequence, so RocksDB gives their
    // different SSTs the same names (000010.sst, …). Keyed by content, nothing collides: every
    // retained checkpoint restores exactly, through subsumptions that delete old files.
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(2, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 4, 4_000)?;
    let mut oracles = std::collections::BTreeMap::new();
    let mut shared_name_seen = false;
    for _ in 0..4 {
        job.write(4_000)?;
        for b in &job.backends {
            b.flush()?;
        }
        let done = c.checkpoint(&job.refs()).await?;
        let names: Vec<std::collections::BTreeSet<&str>> = done
            .metadata
            .backends
            .iter()
            .map(|b| {
                b.shared_files
                    .iter()
                    .map(|f| f.local_name.as_str())
                    .collect()
            })
            .collect();
        shared_name_seen |= names[0]
            .iter()
            .any(|n| names[1..].iter().any(|other| other.contains(n)));
        oracles.insert(done.path(), job.scan()?);
    }
    assert!(shared_name_seen, "the backends' SSTs share names");
    for m in c.retained() {
        let path = m.metadata_path();
        assert_eq!(
            restore_scan(&*store, &path, dir.path()).await?,
            oracles[&path],
            "{path}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_upload_leaves_no_orphans_and_gc_twice_deletes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, faults) = with_hook(
        local_store(&dir.path().join("root"))?,
        UploadFaults::default(),
    );
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    let first = c.checkpoint(&job.refs()).await?;
    let first_scan = job.scan()?;
    let before = objects(&*store).await?;
    job.write(4_000)?;

    faults.close_gate();
    let started = faults
        .uploads_started
        .load(std::sync::atomic::Ordering::SeqCst);
    let running = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move {
            let refs: Vec<_> = backends.iter().collect();
            c.checkpoint(&refs).await
        })
    };
    faults.wait_for_uploads(started + 2).await;
    let cancel = {
        let c = c.clone();
        tokio::spawn(async move { c.shutdown(JobEnd::Cancelled).await })
    };
    wait_until_shut_down(&c).await;
    faults.open_gate();
    let outcome = running.await?;
    assert_eq!(outcome.err().map(|e| e.kind()), Some(ErrorKind::Cancelled));
    cancel.await??;

    // The abort removed the checkpoint's records; what it uploaded is unreferenced, and one GC
    // pass removes it (only GC deletes shared files).
    collect_garbage(&*store, &gc_now()).await?;
    let after = objects(&*store).await?;
    assert_eq!(after, before, "the aborted checkpoint left nothing behind");
    let gc = collect_garbage(&*store, &gc_now()).await?;
    assert!(
        gc.is_empty(),
        "GC run twice deletes nothing the second time: {gc:?}"
    );
    assert_eq!(
        restore_scan(&*store, &first.path(), dir.path()).await?,
        first_scan,
        "the retained checkpoint still restores exactly"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flink_30461_interrupted_upload_is_cleaned_by_recovery_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, faults) = with_hook(
        local_store(&dir.path().join("root"))?,
        UploadFaults::default(),
    );
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    {
        let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
        c.checkpoint(&job.refs()).await?;
        job.write(4_000)?;
        // The process "dies" mid-upload: the upload future is dropped after some files landed.
        faults.close_gate();
        let started = faults
            .uploads_started
            .load(std::sync::atomic::Ordering::SeqCst);
        let ticket = c.trigger(SnapshotKind::Checkpoint)?;
        let pending = job.backends[0].snapshot(&ticket)?;
        let partial = pending.upload(&*store);
        tokio::pin!(partial);
        faults.open_gate();
        faults
            .fail_uploads_after
            .store(started + 1, std::sync::atomic::Ordering::SeqCst);
        assert!(
            partial.as_mut().await.is_err(),
            "the upload was interrupted"
        );
        // No abort, no shutdown: the coordinator is simply dropped.
    }
    faults
        .fail_uploads_after
        .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    let leftovers = objects(&*store).await?;
    assert!(
        leftovers.iter().any(|p| p.starts_with("pins/")),
        "the crash left a pin: {leftovers:?}"
    );

    // Startup recovery of the job aborts the interrupted checkpoint.
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(
        referenced, present,
        "recovery removed the interrupted checkpoint's uploads"
    );
    assert!(
        objects(&*store)
            .await?
            .iter()
            .all(|p| !p.starts_with("pins/"))
    );
    let gc = collect_garbage(&*store, &gc_now()).await?;
    assert!(gc.is_empty(), "{gc:?}");
    let next = c.checkpoint(&job.refs()).await?;
    assert!(
        next.id() > 2,
        "ids continue after the interrupted checkpoint 2 (from the new epoch's block): {}",
        next.id()
    );
    assert_eq!(
        restore_scan(&*store, &next.path(), dir.path()).await?,
        job.scan()?
    );
    Ok(())
}

/// An upload that lands but reports failure fails its checkpoint; the abort removes what landed
/// (nothing references it), the previous checkpoint still restores, and the next checkpoint of the
/// same state uploads the file again and restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_upload_fails_the_checkpoint_and_leaves_nothing_behind() -> TestResult {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir()?;
    let (store, faults) = with_hook(
        local_store(&dir.path().join("root"))?,
        UploadFaults::default(),
    );
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    let first = c.checkpoint(&job.refs()).await?;
    let first_scan = job.scan()?;
    job.write(3_000)?;
    job.backends[0].flush()?; // a new SST, so the next checkpoint certainly uploads
    let started = faults.uploads_started.load(Ordering::SeqCst);
    faults.ambiguous_uploads.store(true, Ordering::SeqCst);
    let failed = c.checkpoint(&job.refs()).await;
    faults.ambiguous_uploads.store(false, Ordering::SeqCst);
    assert!(failed.is_err(), "an upload reported failed: {failed:?}");
    assert!(
        faults.uploads_started.load(Ordering::SeqCst) > started,
        "the failed checkpoint did upload"
    );
    // Nothing of the failed checkpoint survives: no pin, no record, no unreferenced shared file.
    let after_abort = objects(&*store).await?;
    assert!(
        after_abort
            .iter()
            .all(|p| !p.starts_with("pins/") && !p.contains("chk-00000000000000000002")),
        "{after_abort:?}"
    );
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(referenced, present, "the ambiguous upload was removed");
    assert!(collect_garbage(&*store, &gc_now()).await?.is_empty());
    assert_eq!(c.latest().map(|m| m.checkpoint_id), Some(first.id()));
    assert_eq!(
        restore_scan(&*store, &first.path(), dir.path()).await?,
        first_scan
    );
    // The same state checkpoints fine once the store behaves.
    let next = c.checkpoint(&job.refs()).await?;
    assert!(next.uploaded_bytes() > 0);
    assert_eq!(
        restore_scan(&*store, &next.path(), dir.path()).await?,
        job.scan()?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_commit_is_treated_as_committed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, faults) = with_hook(
        local_store(&dir.path().join("root"))?,
        UploadFaults::default(),
    );
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(2_000)?;
    faults
        .ambiguous_metadata
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let done = c.checkpoint(&job.refs()).await?;
    assert_eq!(
        restore_scan(&*store, &done.path(), dir.path()).await?,
        job.scan()?
    );
    Ok(())
}

/// A process killed mid-upload leaves `<backend>/staging/<job>-chk-N` (hard links to the SSTs it
/// was shipping, which pin their disk space after compaction drops them). Nothing of a fresh
/// instance can be using it, so reopening the backend removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_left_by_a_killed_process_is_removed_on_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(2_000)?;
    job.backends[0].flush()?;
    c.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;
    // What a SIGKILL after A1 leaves: a staging directory holding links to live SSTs.
    let staging = job.dirs[0].join("staging").join("job-chk-7");
    std::fs::create_dir_all(&staging)?;
    for entry in std::fs::read_dir(job.dirs[0].join("db"))? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".sst") {
            std::fs::hard_link(entry.path(), staging.join(entry.file_name()))?;
        }
    }
    assert!(
        std::fs::read_dir(&staging)?.next().is_some(),
        "staging holds links"
    );
    let dirs = job.dirs.clone();
    drop(job);
    let reopened = TestJob::from_backends(
        vec![rockpoint::KeyedStateBackend::open(
            &dirs[0],
            MAX_PARALLELISM,
            ranges(1)[0],
            common::settings(),
        )?],
        dirs.clone(),
        1_000,
    );
    assert!(
        !dirs[0].join("staging").exists(),
        "the reopened backend removed the leftover staging directory"
    );
    assert_eq!(reopened.scan()?, expected);
    c.checkpoint(&reopened.refs()).await?;
    Ok(())
}

/// Holds every compare-and-swap of the job record while `hold` is set (and says when one waits).
#[derive(Default)]
struct SwapGate {
    hold: std::sync::atomic::AtomicBool,
    waiting: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Hook for SwapGate {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        if matches!(op, Op::PutIf { .. }) && self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            let released = self.release.notified();
            self.waiting.notify_one();
            released.await;
        }
        Ok(())
    }
}

/// A `checkpoint()` future dropped while it aborts after a failed upload (here: while the abort's
/// job-record swap is held) must still free its slot: shutdown returns, the next checkpoint works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_dropped_during_its_abort_frees_its_slot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (faulty, faults) = with_hook(
        local_store(&dir.path().join("root"))?,
        UploadFaults::default(),
    );
    let (store, gate) = with_hook(faulty, SwapGate::default());
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(2_000)?;
    c.checkpoint(&job.refs()).await?;
    job.write(2_000)?;
    job.backends[0].flush()?;

    // The upload fails, so the checkpoint aborts; its abort's swap is held, and then the future
    // is dropped (the task is aborted).
    let started = faults
        .uploads_started
        .load(std::sync::atomic::Ordering::SeqCst);
    faults
        .fail_uploads_after
        .store(started, std::sync::atomic::Ordering::SeqCst);
    gate.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting = gate.waiting.notified();
    let running = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move { c.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
    };
    waiting.await;
    running.abort();
    let _ = running.await;
    faults
        .fail_uploads_after
        .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    gate.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    gate.release.notify_waiters();

    let next = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match c.checkpoint(&job.refs()).await {
                Err(e) if e.to_string().contains("already in flight") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| "the dropped checkpoint's slot was never freed")??;
    assert_eq!(
        restore_scan(&*store, &next.path(), dir.path()).await?,
        job.scan()?
    );
    tokio::time::timeout(Duration::from_secs(30), c.shutdown(JobEnd::Suspended))
        .await
        .map_err(|_| "shutdown waited forever for the dropped checkpoint")??;
    Ok(())
}

/// Fails staging of the first backend's SSTs at once and holds the second backend's at a gate.
#[derive(Default)]
struct OneBackendFails {
    failing_dir: std::sync::Mutex<Option<std::path::PathBuf>>,
    gate: tokio::sync::Notify,
    open: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
    /// Operations that entered the store and have not come back (dropped mid-flight if > 0 once
    /// every caller returned).
    inside: std::sync::atomic::AtomicI64,
}

#[async_trait::async_trait]
impl common::hooked::Hook for OneBackendFails {
    async fn before(
        &self,
        op: &common::hooked::Op<'_>,
        _store: &dyn rockpoint::Store,
    ) -> rockpoint::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let common::hooked::Op::StageFile { file, .. } = op else {
            return Ok(());
        };
        self.inside.fetch_add(1, SeqCst);
        let failing = self.failing_dir.lock().unwrap().clone();
        if failing.is_some_and(|dir| file.starts_with(dir)) {
            // Fail only once the other backend is inside the store.
            while self.held.load(SeqCst) == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            self.failed.fetch_add(1, SeqCst);
            self.inside.fetch_sub(1, SeqCst);
            return Err(rockpoint::Error::new(
                ErrorKind::Unavailable,
                "injected: staging failed",
            ));
        }
        self.held.fetch_add(1, SeqCst);
        while !self.open.load(SeqCst) {
            let notified = self.gate.notified();
            if self.open.load(SeqCst) {
                break;
            }
            notified.await;
        }
        Ok(())
    }

    async fn after(
        &self,
        op: &common::hooked::Op<'_>,
        _store: &dyn rockpoint::Store,
    ) -> rockpoint::Result<()> {
        if matches!(op, common::hooked::Op::StageFile { .. }) {
            self.inside
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

/// Defect found by `abort_mid_upload_leaves_no_orphans_and_gc_twice_deletes_nothing` (2 runs in
/// 100 under load): when one backend's upload failed, `checkpoint()` returned while the other
/// backends' uploads were dropped mid-flight, so their blocking writes could land after the caller
/// (and a GC pass) moved on. `checkpoint()` must return only once every upload has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_returns_only_after_every_upload_has_ended() -> TestResult {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir()?;
    let (store, hook) = with_hook(
        local_store(&dir.path().join("root"))?,
        OneBackendFails::default(),
    );
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    for backend in &job.backends {
        backend.flush()?;
    }
    *hook.failing_dir.lock().unwrap() = Some(job.dirs[0].clone());
    let running = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move {
            let refs: Vec<_> = backends.iter().collect();
            c.checkpoint(&refs).await
        })
    };
    while hook.failed.load(SeqCst) == 0 || hook.held.load(SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The first backend failed; the second is inside the store. The checkpoint may not report
    // its failure while that upload is still running.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !running.is_finished(),
        "checkpoint() returned while another backend's upload was still in the store"
    );
    hook.open.store(true, SeqCst);
    hook.gate.notify_waiters();
    let outcome = running.await?;
    assert!(outcome.is_err(), "a backend failed: the checkpoint fails");
    assert_eq!(
        hook.inside.load(SeqCst),
        0,
        "every store operation of the checkpoint came back before checkpoint() returned"
    );
    Ok(())
}
