//! Hostile schedules against backends on several hosts (ticket and handle wire forms, `complete`),
//! `trigger_driven` (a `checkpoint()` waiting for a dropped one's cleanup) and two coordinators
//! of one job on S3. A test named after a defect fails on the code it was written against; the
//! others pin down behaviour that holds.

use crate::common;

use std::time::Duration;

use common::gates::Gates;
use common::hooked::with_hook;
use common::s3::Root;
use common::*;
use rockpoint::{
    BackendHandle, CheckpointCoordinator, CheckpointSettings, CheckpointTicket, ErrorKind, JobEnd,
    SnapshotKind,
};

fn cfg(retained: usize, max_concurrent: usize) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        max_concurrent,
        ..CheckpointSettings::default()
    }
}

/// Objects of checkpoint `id` of `job`: its snapshot pins and its directory.
async fn leftovers_of(store: &dyn rockpoint::Store, job: &str, id: u64) -> TestResult<Vec<String>> {
    let pins = format!("pins/{job}/chk-{id:020}-");
    let dir = format!("jobs/{job}/chk-{id:020}/");
    Ok(objects(store)
        .await?
        .into_iter()
        .filter(|p| p.starts_with(&pins) || p.starts_with(&dir))
        .collect())
}

/// DEFECT (G4; the ticket's own docs promise the opposite): the wire copy of a ticket has a
/// cancellation flag of its own, so a remote worker still uploading after the coordinator
/// aborted does not stop, and the pin protocol's "abort sets the flag before it lists pins"
/// (A5) no longer holds: the worker's pin and private files land after the abort (and after
/// the next commit's `sweep_aborted`). The pin's owner is the coordinator's live epoch, so GC
/// keeps it — and every shared file it names — and keeps the private files as the live owner's
/// business, for as long as that coordinator lives. `to_bytes` says what the worker leaves "is
/// unreferenced once the coordinator's abort removed the checkpoint's pins, and GC removes it".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_remote_worker_after_abort_leaves_live_pins_that_gc_never_removes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "late", cfg(1, 2)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    let ticket = c.trigger(SnapshotKind::Checkpoint)?;
    let id = ticket.checkpoint_id();
    let remote = CheckpointTicket::from_bytes(&ticket.to_bytes()?)?;
    // The coordinator gives up on the worker (timeout) and aborts; the job goes on.
    c.abort(&ticket).await?;
    job.write(500)?;
    c.checkpoint(&job.refs()).await?;
    // The worker, slow but alive, finishes its upload now.
    let handle = job.backends[0].snapshot(&remote)?.upload(&*store).await;
    let late_upload_ok = handle.is_ok();
    if let Ok(handle) = handle {
        let refused = c.complete(&remote, vec![handle]).await;
        assert!(refused.is_err(), "an aborted checkpoint was committed");
    }
    gc_now(&*store).await?;
    let left = leftovers_of(&*store, "late", id).await?;
    assert!(
        left.is_empty(),
        "after the abort, the next commit and a GC pass (grace 0), the aborted checkpoint {id}'s \
         late worker (upload ok: {late_upload_ok}) left {left:?}"
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// DEFECT (G1: "everything it references was durable first"): `complete` checks a handle's
/// shape (ranges, parallelism, private paths) but not that what it references is in the root.
/// A worker whose root is misconfigured (another prefix or bucket) — or any handle naming files
/// that were never uploaded — is committed: the checkpoint is "complete", subsumes the older
/// good ones, and cannot be restored. One HEAD per file the handle uploaded (not in the
/// ticket's known set) would catch it at a cost that grows with the change only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_commits_a_handle_whose_files_were_never_uploaded_to_the_root() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let elsewhere = local_store(&dir.path().join("wrong-root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "g1", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    let ticket = c.trigger(SnapshotKind::Checkpoint)?;
    let remote = CheckpointTicket::from_bytes(&ticket.to_bytes()?)?;
    let handle = job.backends[0]
        .snapshot(&remote)?
        .upload(&*elsewhere)
        .await?;
    let handle = BackendHandle::from_bytes(&handle.to_bytes()?)?;
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
        "a checkpoint whose files are not in the root was committed (restore: {restorable:?})"
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// HOLDS (G2/G5): handles whose key groups overlap are refused by `complete` before anything
/// is committed. DEFECT (G4) found on the way: the refusal frees the slot without B2 — the
/// checkpoint's pins (owner: the live epoch) and private files stay, kept by GC while the
/// coordinator lives, and `sweep_aborted` never sees them (the id is not in `aborted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handles_in_complete_leave_the_checkpoints_pins_and_files_behind() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(store.clone(), "overlap", cfg(1, 1)).await?;
    let mut one = TestJob::open(&dir.path().join("one"), 1, 2_000)?;
    let mut two = TestJob::open(&dir.path().join("two"), 2, 2_000)?;
    one.write(2_000)?;
    two.write(2_000)?;
    let ticket = c.trigger(SnapshotKind::Checkpoint)?;
    let id = ticket.checkpoint_id();
    let remote = CheckpointTicket::from_bytes(&ticket.to_bytes()?)?;
    // Backend 0..128 and backend 0..64: overlapping ranges (a stale worker of another parallelism).
    let a = one.backends[0].snapshot(&remote)?.upload(&*store).await?;
    let b = two.backends[0].snapshot(&remote)?.upload(&*store).await?;
    let err = c
        .complete(&ticket, vec![a, b])
        .await
        .err()
        .ok_or("overlapping handles were committed")?;
    assert!(err.to_string().contains("overlap"), "{err}");
    assert!(c.latest().is_none(), "nothing committed");
    gc_now(&*store).await?;
    let left = leftovers_of(&*store, "overlap", id).await?;
    assert!(
        left.is_empty(),
        "the refused checkpoint {id} left {left:?} after a GC pass ({:?}: {err})",
        err.kind()
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// HOLDS (G7 on S3): a second coordinator of the same job on the S3 root fences the first;
/// the first's next checkpoint fails `Fenced`, and the second's checkpoints restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_of_one_job_on_s3_fence() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Root::S3.store(&dir.path().join("root")).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(1_000)?;
    let old = CheckpointCoordinator::open(store.clone(), "twice", cfg(1, 1)).await?;
    old.checkpoint(&job.refs()).await?;
    let new = CheckpointCoordinator::open(store.clone(), "twice", cfg(1, 1)).await?;
    job.write(300)?;
    let stale = old.checkpoint(&job.refs()).await;
    assert_eq!(
        stale.as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::Fenced),
        "{:?}",
        stale.map(|d| d.id())
    );
    let done = new.checkpoint(&job.refs()).await?;
    assert_eq!(
        restore_scan(&*store, &done.path(), &dir.path().join("r")).await?,
        job.scan()?
    );
    new.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// DEFECT (liveness; a regression of ff96f01): `checkpoint()` after a dropped one now waits for
/// the dropped one's cleanup with no bound. The change's comment says the cleanup's "store calls
/// time out like any other"; nothing in `Store` or `LocalStore` times out (a hung NFS mount, a
/// wedged hook). Before the change the call failed `Busy` at once and the caller could retry or
/// report; now it hangs as long as the cleanup does. Here the cleanup's record swap never
/// returns; the next `checkpoint()` should come back (`Busy`) within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_after_a_dropped_one_hangs_while_its_cleanup_hangs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, gates) = with_hook(local_store(&dir.path().join("root"))?, Gates::default());
    let c = CheckpointCoordinator::open(store.clone(), "job", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    // The cleanup's first store call never returns.
    let _cleanup = common::gates::drop_checkpoint_holding_its_cleanup(&c, &job, &gates).await;
    let next = tokio::time::timeout(Duration::from_secs(10), c.checkpoint(&job.refs())).await;
    assert!(
        next.is_ok(),
        "checkpoint() did not return within 10 s while a dropped checkpoint's cleanup hung"
    );
    Ok(())
}

/// HOLDS: a `checkpoint()` waiting for a dropped one's cleanup ends when the job shuts down
/// meanwhile (`Cancelled`, not a ticket of a closed job), and the shutdown ends too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_checkpoint_waits_for_a_dropped_ones_cleanup() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, gates) = with_hook(local_store(&dir.path().join("root"))?, Gates::default());
    let c = CheckpointCoordinator::open(store.clone(), "job", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    let cleanup = common::gates::drop_checkpoint_holding_its_cleanup(&c, &job, &gates).await;
    let waiting = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move {
            let refs: Vec<_> = backends.iter().collect();
            c.checkpoint(&refs).await.map(|d| d.id())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shutdown = {
        let c = c.clone();
        tokio::spawn(async move { c.shutdown(JobEnd::Suspended).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    cleanup.release();
    let waited = tokio::time::timeout(Duration::from_secs(30), waiting).await??;
    assert_eq!(
        waited.as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::Cancelled),
        "{waited:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), shutdown).await???;
    Ok(())
}
