//! Hostile schedules against `admin::delete_snapshot` (P1–P4 of `docs/protocols.md`, "Delete a
//! committed snapshot"): a delete racing a live coordinator's commit and lease renewal, a ticket
//! given the deleted snapshot's hashes with GC at grace 0 in between, a paused owner whose lease
//! expired, restores between their pin and their record check, two deletes at once, a claim of
//! the job in the middle, a crash between P3 and P4, an exported savepoint deleted while its
//! export pin lives, and a checkpoint claimed from another job. Each test is named after the
//! property it checks; three failed first (marked "Was a DEFECT", each with its fix).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::gates::Gates;
use common::*;
use rockpoint::admin::{DeleteOptions, DeleteOutcome, DeleteReport, delete_snapshot, job_record};
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, ErrorKind, JobEnd, RestoreSource,
    SnapshotKind, Store, export_snapshot,
};

fn at(path: &str) -> RestoreSource {
    RestoreSource::Metadata(path.to_owned())
}

const DELETE: DeleteOptions = DeleteOptions {
    force: false,
    dry_run: false,
    clock_margin: Duration::from_secs(30),
};

const FORCE: DeleteOptions = DeleteOptions {
    force: true,
    dry_run: false,
    clock_margin: Duration::from_secs(30),
};

/// `jobs/<job>/<chk|sp>-<id:020>/`: the directory of a snapshot's metadata and private files.
fn snapshot_dir(job: &str, kind: SnapshotKind, id: u64) -> String {
    let prefix = match kind {
        SnapshotKind::Checkpoint => "chk",
        SnapshotKind::Savepoint => "sp",
    };
    format!("jobs/{job}/{prefix}-{id:020}/")
}

async fn under(store: &dyn Store, prefix: &str) -> TestResult<Vec<String>> {
    Ok(objects(store)
        .await?
        .into_iter()
        .filter(|p| p.starts_with(prefix))
        .collect())
}

/// Runs `delete_snapshot` on its own task (so a test can hold one of its store calls).
fn spawn_delete(
    store: Arc<dyn Store>,
    path: String,
    options: DeleteOptions,
) -> tokio::task::JoinHandle<rockpoint::Result<DeleteReport>> {
    tokio::spawn(async move { delete_snapshot(&*store, &at(&path), &options).await })
}

/// A stopped job (lease released) with `n` retained checkpoints, each after a compaction (so each
/// has SSTs of its own); returns the checkpoints and the state each holds.
async fn stopped_job(
    store: &Arc<dyn Store>,
    base: &std::path::Path,
    job_id: &str,
    n: usize,
) -> TestResult<(Vec<rockpoint::CompletedCheckpoint>, Vec<Scan>)> {
    let c = CheckpointCoordinator::open(
        store.clone(),
        job_id,
        CheckpointSettings {
            retained: n.max(1),
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&base.join(job_id), 1, 1_000)?;
    let mut done = Vec::new();
    let mut oracles = Vec::new();
    for _ in 0..n {
        job.write(1_500)?;
        job.backends[0].compact()?;
        done.push(c.checkpoint(&job.refs()).await?);
        oracles.push(job.scan()?);
    }
    c.shutdown(JobEnd::Suspended).await?;
    Ok((done, oracles))
}

// ---------------------------------------------------------------------------------------------
// P2 → P3: a reader that pins after the refusal check and checks the record before the swap.
// ---------------------------------------------------------------------------------------------

/// Schedule: job `a` is stopped with checkpoints c1 < c2. `delete a/c1` runs P1–P2 (no reader pin:
/// nothing refused) and is held just before its P3 swap. Meanwhile job `b` restores from c1
/// without claim: R4 writes its restore pin and checks `a`'s record, which still lists c1 — the
/// restore succeeds. The delete's swap then lands and P4 deletes c1's metadata (its private files
/// stay: D2 sees b's pin). Job `b` has not completed a checkpoint of its own — exactly what P2(b)
/// promises to refuse ("it would restore it again after a failure") — and b then fails: its
/// restart restores c1 again, and finds it gone.
///
// Was a DEFECT (fixed by P3b: after the swap the pins are listed again, and a live one undoes
// the swap): P2 lists reader pins *before* the P3 swap with nothing re-checked after it, and R4's
// check (pin, then the record lists it) passes in between: the refusal of P2(b) has a window, and
// the delete removes the snapshot a just-restored job depends on. Fix: follow the deleter rule
// for the decision too — after the P3 swap succeeded, list the reader pins again; a live pin
// that was not there at P2 means a reader may have passed R4 before the swap, so (before P4 / the
// owner's discard) put the id back with a second swap (it is still there: nothing was deleted),
// and report `Refused`. Alternatively, make the swap first move the id to a "deleting" list that
// R4 treats as not listed, then re-list pins, then finish.
#[tokio::test]
async fn a_restore_pinning_between_p2_and_p3_is_refused_or_keeps_its_source() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (done, oracles) = stopped_job(&raw, dir.path(), "a", 2).await?;
    let c1 = done[0].metadata.metadata_path();

    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let swap = gates.hold(&["put_if"], "jobs/a/_job");
    let delete = spawn_delete(hooked, c1.clone(), DELETE);
    swap.reached().await; // P1–P2 done, P3 not sent

    let b = CheckpointCoordinator::open(raw.clone(), "b", CheckpointSettings::default()).await?;
    let restored = restore_job(
        &b,
        &at(&c1),
        &dir.path().join("b"),
        1,
        1_000,
        ClaimMode::NoClaim,
    )
    .await?;
    assert!(restored.scan()? == oracles[0], "b restored c1");
    swap.release();
    let report = delete.await??;

    // Job b fails before its first checkpoint; its restart restores from c1 again.
    drop(restored);
    drop(b);
    gc_now(&*raw).await?;
    let b2 = CheckpointCoordinator::open(raw.clone(), "b", CheckpointSettings::default()).await?;
    let again = restore_job(
        &b2,
        &at(&c1),
        &dir.path().join("b-again"),
        1,
        1_000,
        ClaimMode::NoClaim,
    )
    .await;
    assert!(
        again.is_ok(),
        "job b restored from a/c1 and had no checkpoint of its own, yet the delete went through \
         ({:?}); b's restart cannot restore: {:?}",
        report.outcome,
        again.err()
    );
    Ok(())
}

/// Schedule: a restore reads c1's metadata (R1–R3) and is held before it writes its reader pin;
/// the delete runs P1–P4 (nothing refuses it), GC at grace 0 runs; the restore continues. It must
/// fail `NotFound` at its record check (R4), never `Corruption`, and leave no pin behind.
#[tokio::test]
async fn a_restore_that_read_the_metadata_before_the_delete_fails_not_found() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (done, _) = stopped_job(&raw, dir.path(), "a", 2).await?;
    let c1 = done[0].metadata.metadata_path();

    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let pin = gates.hold(&["put"], "pins/a/read-chk-");
    let target = dir.path().join("restored");
    let restore_store = hooked.clone();
    let restore_path = c1.clone();
    let restore = tokio::spawn(async move {
        let source = at(&restore_path);
        let (_, metadata) = rockpoint::restore::read_metadata(&*restore_store, &source).await?;
        rockpoint::restore_backend(
            &*restore_store,
            &source,
            &rockpoint::RestoreTarget {
                dir: target,
                key_groups: metadata.backends[0].key_groups,
                settings: settings(),
            },
            4,
            None,
        )
        .await
        .map(|_| ())
    });
    pin.reached().await;
    let report = delete_snapshot(&*raw, &at(&c1), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    gc_now(&*raw).await?;
    pin.release();
    let err = restore
        .await?
        .expect_err("the restore of a deleted checkpoint");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        under(&*raw, "pins/a/").await?.is_empty(),
        "the failed restore removed its pin"
    );
    gc_now(&*raw).await?;
    assert!(
        under(
            &*raw,
            &snapshot_dir("a", SnapshotKind::Checkpoint, done[0].id())
        )
        .await?
        .is_empty()
    );
    let scan = restore_scan(&*raw, &done[1].metadata.metadata_path(), dir.path()).await?;
    assert!(!scan.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A live owner.
// ---------------------------------------------------------------------------------------------

/// Schedule: a live coordinator retains c1 c2 c3 and commits c4; its C4 swap is held before it is
/// sent; `delete c2` swaps first (HandedToOwner); the commit swap conflicts, the coordinator
/// re-reads, adopts and commits. It is never fenced, c4 is acknowledged and retained, the owner
/// removes c2's records (once c4's ticket, which was given c2's hashes, ended), and after GC at
/// grace 0 every retained checkpoint restores to its state.
#[tokio::test]
async fn a_delete_racing_a_live_commit_is_adopted_without_fencing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let c = CheckpointCoordinator::open(
        hooked,
        "job",
        CheckpointSettings {
            retained: 3,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    let mut done = Vec::new();
    let mut oracles = Vec::new();
    for _ in 0..3 {
        job.write(1_500)?;
        job.backends[0].compact()?;
        done.push(c.checkpoint(&job.refs()).await?);
        oracles.push(job.scan()?);
    }
    let epoch = c.epoch();
    job.write(1_000)?;
    let commit_swap = gates.hold(&["put_if"], "jobs/job/_job");
    let c2 = done[1].metadata.metadata_path();
    let refs = job.refs();
    let (c4, report) = tokio::join!(c.checkpoint(&refs), async {
        commit_swap.reached().await;
        let report = delete_snapshot(&*raw, &at(&c2), &DELETE).await;
        commit_swap.release();
        report
    });
    drop(refs);
    let c4 = c4?;
    oracles.push(job.scan()?);
    assert_eq!(report?.outcome, DeleteOutcome::HandedToOwner);
    assert_eq!(c.epoch(), epoch, "never fenced");
    let record = job_record(&*raw, "job").await?.expect("record");
    assert_eq!(
        record.retained,
        vec![done[0].id(), done[2].id(), c4.id()],
        "c4 acknowledged and retained"
    );
    job.write(100)?;
    let c5 = c.checkpoint(&job.refs()).await?;
    oracles.push(job.scan()?);
    assert!(
        under(
            &*raw,
            &snapshot_dir("job", SnapshotKind::Checkpoint, done[1].id())
        )
        .await?
        .is_empty(),
        "the owner removed the deleted checkpoint's records"
    );
    gc_now(&*raw).await?;
    for (kept, oracle) in [
        (&done[2], &oracles[2]),
        (&c4, &oracles[3]),
        (&c5, &oracles[4]),
    ] {
        let scan = restore_scan(&*raw, &kept.metadata.metadata_path(), dir.path()).await?;
        assert!(scan == *oracle, "checkpoint {} restores", kept.id());
    }
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// Schedule: a live coordinator (lease 600 ms) has c1 and c2 (c2 with SSTs of its own, the ones
/// the live DB still has); ticket T1 snapshots (its known set holds c2's hashes: it will never
/// check them); `delete --force c2` (the newest) is handed to the owner; the lease renewal adopts
/// the deletion; GC at grace 0 runs; T1 uploads and commits. T1 must restore: the owner keeps
/// c2's metadata while T1 is in flight. Afterwards the owner removes c2's records.
#[tokio::test]
async fn a_ticket_given_a_deleted_checkpoints_hashes_survives_gc_at_grace_0() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(
        store.clone(),
        "job",
        CheckpointSettings {
            retained: 3,
            lease: Duration::from_millis(600),
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].compact()?;
    let c1 = c.checkpoint(&job.refs()).await?;
    job.write(3_000)?;
    job.backends[0].compact()?;
    let c2 = c.checkpoint(&job.refs()).await?;
    let t1 = c.trigger(SnapshotKind::Checkpoint)?;
    let pending = job.backends[0].snapshot(&t1)?;
    let t1_oracle = job.scan()?;

    let report = delete_snapshot(&*store, &at(&c2.metadata.metadata_path()), &FORCE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    // The owner adopts at its lease renewal (every 200 ms); its SSTs are compacted away.
    job.write(3_000)?;
    job.backends[0].compact()?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        c.retained()
            .iter()
            .map(|m| m.checkpoint_id)
            .collect::<Vec<_>>(),
        vec![c1.id()],
        "the owner adopted the deletion"
    );
    gc_now(&*store).await?;

    let handle = pending.upload(&*store).await?;
    let t1_done = c.complete(&t1, vec![handle]).await?;
    gc_now(&*store).await?;
    let scan = restore_scan(&*store, &t1_done.metadata.metadata_path(), dir.path()).await?;
    assert!(
        scan == t1_oracle,
        "T1 reused the deleted checkpoint's files"
    );
    assert!(
        under(
            &*store,
            &snapshot_dir("job", SnapshotKind::Checkpoint, c2.id())
        )
        .await?
        .is_empty(),
        "the owner removed c2's records once T1 ended"
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// Schedule: a coordinator (lease 300 ms) has c1 and c2 and a ticket T1 that was given c2's
/// hashes; its lease renewal stalls (the process is paused: the renewal's swap is held). The
/// lease expires; `delete --force c2` fences the job in its swap and deletes c2's records; GC at
/// grace 0 removes c2's files. The coordinator resumes: its renewal finds itself fenced, and T1's
/// commit fails `Fenced` — it never acknowledges a checkpoint that references the deleted files.
#[tokio::test]
async fn a_paused_owner_past_its_lease_is_fenced_by_the_delete_and_never_acknowledges() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let c = CheckpointCoordinator::open(
        hooked.clone(),
        "job",
        CheckpointSettings {
            retained: 3,
            lease: Duration::from_millis(300),
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].compact()?;
    let c1 = c.checkpoint(&job.refs()).await?;
    let c1_oracle = job.scan()?;
    job.write(3_000)?;
    job.backends[0].compact()?;
    let c2 = c.checkpoint(&job.refs()).await?;
    let t1 = c.trigger(SnapshotKind::Checkpoint)?;
    let pending = job.backends[0].snapshot(&t1)?;
    let renewal = gates.hold(&["put_if"], "jobs/job/_job");
    renewal.reached().await;
    tokio::time::sleep(Duration::from_millis(400)).await;

    let no_margin = DeleteOptions {
        clock_margin: Duration::ZERO,
        ..FORCE
    };
    let report = delete_snapshot(&*raw, &at(&c2.metadata.metadata_path()), &no_margin).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    gc_now(&*raw).await?;
    renewal.release();
    let upload = pending.upload(&*hooked).await;
    let committed = match upload {
        Ok(handle) => c.complete(&t1, vec![handle]).await,
        Err(e) => Err(e),
    };
    let err = committed.expect_err("a fenced coordinator acknowledged a checkpoint");
    assert!(
        matches!(err.kind(), ErrorKind::Fenced | ErrorKind::Cancelled),
        "{err}"
    );
    let record = job_record(&*raw, "job").await?.expect("record");
    assert_eq!(record.retained, vec![c1.id()]);
    gc_now(&*raw).await?;
    let scan = restore_scan(&*raw, &c1.metadata.metadata_path(), dir.path()).await?;
    assert!(scan == c1_oracle, "c1 intact");
    Ok(())
}

/// Schedule: a live coordinator (lease 600 ms) that is idle (no checkpoint for a while: a job
/// with a long interval, or back-pressured) gets c1 handed to it by a delete. The report says
/// "the job's live coordinator deletes its records at its next record swap (within a third of its
/// lease)"; after several renewals and a GC pass at grace 0, c1's records must be gone.
///
// Was a DEFECT (fixed: a successful renewal runs `release_ready`): the lease renewal adopts the record (the id enters `discard_queue`) but never runs
// `release_ready`; only a commit, abort, claim, recovery or shutdown does. GC leaves the id alone
// too (`orphaned_records`: an id in `discarding` of a live owner is the owner's business). So the
// metadata and private files of a deleted snapshot stay for as long as the job does not
// checkpoint — contrary to `DeleteOutcome::HandedToOwner`'s doc. Fix: call `release_ready` after a
// successful renewal in `spawn_lease_renewal` (it only discards ids no ticket uses), or document
// that the records go with the owner's next checkpoint.
#[tokio::test]
async fn an_idle_owner_removes_a_snapshot_handed_to_it_within_its_lease_renewals() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(
        store.clone(),
        "job",
        CheckpointSettings {
            retained: 3,
            lease: Duration::from_millis(600),
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    let mut done = Vec::new();
    for _ in 0..3 {
        job.write(1_000)?;
        done.push(c.checkpoint(&job.refs()).await?);
    }
    let report = delete_snapshot(&*store, &at(&done[0].metadata.metadata_path()), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    gc_now(&*store).await?;
    let left = under(
        &*store,
        &snapshot_dir("job", SnapshotKind::Checkpoint, done[0].id()),
    )
    .await?;
    c.shutdown(JobEnd::Suspended).await?;
    assert!(
        left.is_empty(),
        "three lease renewals and a GC pass later, the deleted checkpoint's records remain: {left:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Exported savepoints.
// ---------------------------------------------------------------------------------------------

/// Schedule: a running job; a checkpoint is exported into the same root as savepoint S of the
/// job (the CLI's `savepoint`); S is deleted at once (its export pin is marked `export_target`:
/// not a refusal) and handed to the owner; the owner's next checkpoint discards S — D1 deletes
/// its metadata, D2 sees the export pin and leaves the private files to GC, and the id leaves
/// `discarding`. The export pin then expires (modelled by removing it, as GC does with a dead
/// pin). GC at grace 0, twice: S's private files must be gone — nothing else will ever delete
/// them while the owner lives.
///
// Was a DEFECT (fixed: a discard stopped by a reader pin keeps its id in `discarding` and the
// owner retries it at every swap): `gc::orphaned_records` treats every id at or above the owner's `epoch_first_id` and
// `finished_below` as the live owner's business unless it is in `exporting`. An export's id is
// above the owner's own ids (X1 takes `next_id`) and leaves `exporting` at X6; once the owner
// discarded it (D2 saw the pin, so D3 was skipped) and D4 dropped it from `discarding`, its
// private files are nobody's: the owner forgot the id, GC spares it until the owner stops or its
// own id blocks pass it. Suggested fix: keep an id in `discarding` until D3 actually ran (a
// discard stopped by a reader pin is retried by a later `release_ready`, or left in `discarding`
// where GC collects it once no reader pin remains — make `owners_business` false for ids in
// `discarding` whose metadata is gone); or let GC count an id as the owner's only if it lies in a
// block the owner reserved (record the end of the owner's own blocks in the job record).
#[tokio::test]
async fn a_deleted_exported_savepoint_is_collected_while_its_owner_lives() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(
        store.clone(),
        "job",
        CheckpointSettings {
            retained: 3,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(1_000)?;
    let c1 = c.checkpoint(&job.refs()).await?;
    job.write(1_000)?;
    c.checkpoint(&job.refs()).await?;
    let exported = export_snapshot(
        &*store,
        &at(&c1.metadata.metadata_path()),
        &*store,
        None,
        1,
        None,
    )
    .await?;
    let record = job_record(&*store, "job").await?.expect("record");
    let sp = *record
        .savepoints
        .last()
        .expect("the export committed a savepoint");
    assert_eq!(
        exported.metadata_path,
        format!(
            "{}_metadata",
            snapshot_dir("job", SnapshotKind::Savepoint, sp)
        )
    );
    let report = delete_snapshot(&*store, &at(&exported.metadata_path), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    job.write(100)?;
    c.checkpoint(&job.refs()).await?;
    job.write(100)?;
    c.checkpoint(&job.refs()).await?;
    let record = job_record(&*store, "job").await?.expect("record");
    // While the export pin lives, D2 keeps the private files and the owner keeps the id in
    // `discarding` (it retries at each swap), so it is never forgotten.
    assert!(!record.savepoints.contains(&sp) && record.discarding.contains(&sp));
    let sp_dir = snapshot_dir("job", SnapshotKind::Savepoint, sp);
    assert!(
        !under(&*store, &sp_dir)
            .await?
            .contains(&exported.metadata_path),
        "the owner deleted the metadata"
    );
    // The export pin expires; GC removes it as dead (modelled: removed).
    for pin in under(&*store, &format!("pins/job/read-sp-{sp:020}-")).await? {
        store.delete(&pin).await?;
    }
    gc_now(&*store).await?;
    // The owner's next swap (a checkpoint here; a lease renewal at the latest) finishes D3–D4.
    job.write(100)?;
    c.checkpoint(&job.refs()).await?;
    gc_now(&*store).await?;
    job.write(100)?;
    c.checkpoint(&job.refs()).await?;
    let record = job_record(&*store, "job").await?.expect("record");
    assert!(!record.discarding.contains(&sp), "D4 ran once D3 did");
    let left = under(&*store, &sp_dir).await?;
    c.shutdown(JobEnd::Suspended).await?;
    assert!(
        left.is_empty(),
        "the deleted savepoint's private files are never collected while its job runs: {left:?}"
    );
    Ok(())
}

/// Schedule: a stopped job; an export commits savepoint S into it (its id above the last owner's
/// block); S is deleted while the export pin lives (not refused: the pin is the export's
/// `export_target` guard); P4 leaves the private files (D2 sees the pin). GC at grace 0 keeps
/// them while the pin lives and collects them once it is gone; the job's checkpoints restore.
#[tokio::test]
async fn a_deleted_exported_savepoint_of_a_stopped_job_is_collected_once_its_pin_is_gone()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (done, oracles) = stopped_job(&store, dir.path(), "job", 2).await?;
    let exported = export_snapshot(
        &*store,
        &at(&done[1].metadata.metadata_path()),
        &*store,
        None,
        1,
        None,
    )
    .await?;
    let sp = *job_record(&*store, "job")
        .await?
        .expect("record")
        .savepoints
        .last()
        .expect("savepoint");
    let report = delete_snapshot(&*store, &at(&exported.metadata_path), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    gc_now(&*store).await?;
    let sp_dir = snapshot_dir("job", SnapshotKind::Savepoint, sp);
    for pin in under(&*store, &format!("pins/job/read-sp-{sp:020}-")).await? {
        store.delete(&pin).await?;
    }
    gc_now(&*store).await?;
    assert!(under(&*store, &sp_dir).await?.is_empty(), "collected");
    for (kept, oracle) in done.iter().zip(&oracles) {
        let scan = restore_scan(&*store, &kept.metadata.metadata_path(), dir.path()).await?;
        assert!(scan == *oracle);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deletes racing deletes, claims and crashes.
// ---------------------------------------------------------------------------------------------

/// Schedule: two deletes of c1 of a stopped job; the first is held before its P3 swap, the second
/// runs to the end; the first then loses its swap, re-reads, and finds c1 gone (`NotFound`).
/// c1 is deleted exactly once; c2 restores after GC.
#[tokio::test]
async fn two_deletes_of_one_id_at_once_delete_it_once() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (done, oracles) = stopped_job(&raw, dir.path(), "a", 2).await?;
    let c1 = done[0].metadata.metadata_path();
    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let swap = gates.hold(&["put_if"], "jobs/a/_job");
    let first = spawn_delete(hooked, c1.clone(), DELETE);
    swap.reached().await;
    let second = delete_snapshot(&*raw, &at(&c1), &DELETE).await?;
    assert_eq!(second.outcome, DeleteOutcome::Deleted);
    let epoch = job_record(&*raw, "a").await?.expect("record").epoch;
    swap.release();
    let first = first.await?;
    assert_eq!(
        first.as_ref().map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound),
        "{first:?}"
    );
    let record = job_record(&*raw, "a").await?.expect("record");
    assert_eq!(record.retained, vec![done[1].id()]);
    assert_eq!(record.epoch, epoch);
    gc_now(&*raw).await?;
    assert!(
        under(
            &*raw,
            &snapshot_dir("a", SnapshotKind::Checkpoint, done[0].id())
        )
        .await?
        .is_empty()
    );
    let scan = restore_scan(&*raw, &done[1].metadata.metadata_path(), dir.path()).await?;
    assert!(scan == oracles[1]);
    Ok(())
}

/// Schedule: a stopped job; `delete c1` is held before its P3 swap; a coordinator opens the job
/// (O1 claims it: the delete's swap loses). The delete decides again: now the owner is live, so
/// c1 goes to it (`HandedToOwner`); the owner removes c1's records with its next checkpoint.
#[tokio::test]
async fn a_claim_between_p1_and_p3_makes_the_delete_hand_the_id_to_the_new_owner() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (done, oracles) = stopped_job(&raw, dir.path(), "a", 3).await?;
    let c1 = done[0].metadata.metadata_path();
    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let swap = gates.hold(&["put_if"], "jobs/a/_job");
    let delete = spawn_delete(hooked, c1.clone(), DELETE);
    swap.reached().await;
    let c = CheckpointCoordinator::open(
        raw.clone(),
        "a",
        CheckpointSettings {
            retained: 3,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let epoch = c.epoch();
    swap.release();
    let report = delete.await??;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    let mut job = restore_job(
        &c,
        &at(&done[2].metadata.metadata_path()),
        &dir.path().join("resumed"),
        1,
        1_000,
        ClaimMode::NoClaim,
    )
    .await?;
    assert!(job.scan()? == oracles[2]);
    job.write(100)?;
    let next = c.checkpoint(&job.refs()).await?;
    assert_eq!(c.epoch(), epoch, "the owner is never fenced");
    assert!(
        under(
            &*raw,
            &snapshot_dir("a", SnapshotKind::Checkpoint, done[0].id())
        )
        .await?
        .is_empty(),
        "the new owner removed c1's records"
    );
    gc_now(&*raw).await?;
    let scan = restore_scan(&*raw, &next.metadata.metadata_path(), dir.path()).await?;
    assert!(scan == job.scan()?);
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// Schedule: a stopped job; `delete c1` swaps (P3) and is held before P4's metadata delete; a
/// coordinator opens the job (O1, then O2 deletes c1's records as leftovers of an id below its
/// block); the delete resumes and deletes what is already gone. Deletes are idempotent: the
/// delete reports `Deleted`, nothing of c1 is left, the job checkpoints on.
#[tokio::test]
async fn a_claim_between_p3_and_p4_and_the_delete_both_finish() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (done, _) = stopped_job(&raw, dir.path(), "a", 2).await?;
    let c1 = done[0].metadata.metadata_path();
    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let p4 = gates.hold(&["delete"], &c1);
    let delete = spawn_delete(hooked, c1.clone(), DELETE);
    p4.reached().await;
    let c = CheckpointCoordinator::open(raw.clone(), "a", CheckpointSettings::default()).await?;
    assert!(
        under(
            &*raw,
            &snapshot_dir("a", SnapshotKind::Checkpoint, done[0].id())
        )
        .await?
        .is_empty(),
        "O2 removed c1's records"
    );
    p4.release();
    let report = delete.await??;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    let mut job = TestJob::open(&dir.path().join("fresh"), 1, 100)?;
    job.write(100)?;
    c.checkpoint(&job.refs()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// Schedule (crash between P3 and P4), three ways: (1) a stopped job, (2) a job whose lease
/// expired (P3 fences it), (3) a savepoint an export committed into a stopped job (its id above
/// every block the owner reserved). The delete future is dropped while P4's metadata delete is
/// held (a crash after the decision). GC at grace 0 collects the snapshot's records in every
/// case; the job's other checkpoints restore.
#[tokio::test]
async fn a_delete_crashing_between_p3_and_p4_leaves_only_what_gc_collects() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    // (1) and (3): a stopped job with an exported savepoint.
    let (done, oracles) = stopped_job(&raw, dir.path(), "a", 2).await?;
    let exported = export_snapshot(
        &*raw,
        &at(&done[1].metadata.metadata_path()),
        &*raw,
        None,
        1,
        None,
    )
    .await?;
    for pin in under(&*raw, "pins/a/read-sp-").await? {
        raw.delete(&pin).await?; // the export pin expired
    }
    // (2): a job whose coordinator stopped renewing its lease.
    let mut expired_job = TestJob::open(&dir.path().join("x"), 1, 500)?;
    let expired = {
        let c = CheckpointCoordinator::open(
            raw.clone(),
            "x",
            CheckpointSettings {
                retained: 3,
                lease: Duration::from_millis(300),
                ..CheckpointSettings::default()
            },
        )
        .await?;
        let mut ids = Vec::new();
        for _ in 0..2 {
            expired_job.write(500)?;
            expired_job.backends[0].compact()?;
            ids.push(c.checkpoint(&expired_job.refs()).await?);
        }
        ids
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let no_margin = DeleteOptions {
        clock_margin: Duration::ZERO,
        ..DELETE
    };
    for path in [
        done[0].metadata.metadata_path(),
        exported.metadata_path.clone(),
        expired[0].metadata.metadata_path(),
    ] {
        let (hooked, gates) = with_hook(raw.clone(), Gates::default());
        let p4 = gates.hold(&["delete"], &path);
        let options = no_margin.clone();
        let source = at(&path);
        let mut delete =
            Box::pin(async move { delete_snapshot(&*hooked, &source, &options).await });
        tokio::select! {
            r = &mut delete => panic!("the delete finished while P4 was held: {r:?}"),
            _ = p4.reached() => {}
        }
        drop(delete); // crash
        p4.release();
        assert!(
            objects(&*raw).await?.contains(&path),
            "P4 never ran: {path}"
        );
    }
    assert_eq!(
        job_record(&*raw, "x").await?.expect("record").owner,
        None,
        "fenced"
    );
    gc_now(&*raw).await?;
    gc_now(&*raw).await?;
    for path in [
        done[0].metadata.metadata_path(),
        exported.metadata_path.clone(),
        expired[0].metadata.metadata_path(),
    ] {
        let dir_of = path.trim_end_matches("_metadata");
        let left = under(&*raw, dir_of).await?;
        assert!(left.is_empty(), "never collected: {left:?}");
    }
    let scan = restore_scan(&*raw, &done[1].metadata.metadata_path(), dir.path()).await?;
    assert!(scan == oracles[1]);
    restore_scan(&*raw, &expired[1].metadata.metadata_path(), dir.path()).await?;
    Ok(())
}

/// Schedule: job `b` claims checkpoint c1 of stopped job `a` (R6: a copy becomes b's checkpoint
/// Y with `claimed_from`; `a` drops c1). b checkpoints on (Y2); Y is deleted while b runs (handed
/// to b); b checkpoints again; GC at grace 0. b's latest and a's c2 restore; deleting a's c1 is
/// `NotFound` (it left `a`'s record at the claim).
#[tokio::test]
async fn deleting_a_claimed_checkpoint_keeps_both_jobs_restorable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (done, oracles) = stopped_job(&store, dir.path(), "a", 2).await?;
    let b = CheckpointCoordinator::open(
        store.clone(),
        "b",
        CheckpointSettings {
            retained: 3,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = restore_job(
        &b,
        &at(&done[0].metadata.metadata_path()),
        &dir.path().join("b"),
        1,
        1_000,
        ClaimMode::Claim,
    )
    .await?;
    let claimed = b.retained();
    assert_eq!(claimed.len(), 1, "the claim is b's checkpoint");
    let y = claimed[0].metadata_path();
    let gone = delete_snapshot(&*store, &at(&done[0].metadata.metadata_path()), &DELETE).await;
    assert_eq!(gone.unwrap_err().kind(), ErrorKind::NotFound);
    job.write(500)?;
    job.backends[0].compact()?;
    b.checkpoint(&job.refs()).await?;
    let report = delete_snapshot(&*store, &at(&y), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    job.write(500)?;
    let latest = b.checkpoint(&job.refs()).await?;
    gc_now(&*store).await?;
    let scan = restore_scan(&*store, &latest.metadata.metadata_path(), dir.path()).await?;
    assert!(scan == job.scan()?, "b's latest restores");
    let scan = restore_scan(&*store, &done[1].metadata.metadata_path(), dir.path()).await?;
    assert!(scan == oracles[1], "a's c2 restores");
    assert!(
        !objects(&*store).await?.contains(&y),
        "the owner removed the deleted claim's metadata"
    );
    b.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// Schedule: a live coordinator (lease 600 ms); its lease renewal's swap is held before it is
/// sent; `delete c1` swaps first (HandedToOwner); the renewal conflicts, re-reads (same epoch,
/// same owner), adopts the deletion and renews. The coordinator is never fenced nor poisoned:
/// it checkpoints on, and that checkpoint removes c1's records.
#[tokio::test]
async fn a_delete_racing_a_lease_renewal_neither_fences_nor_poisons_the_owner() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (hooked, gates) = with_hook(raw.clone(), Gates::default());
    let c = CheckpointCoordinator::open(
        hooked,
        "job",
        CheckpointSettings {
            retained: 3,
            lease: Duration::from_millis(600),
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    let mut done = Vec::new();
    for _ in 0..2 {
        job.write(1_000)?;
        done.push(c.checkpoint(&job.refs()).await?);
    }
    let epoch = c.epoch();
    let renewal = gates.hold(&["put_if"], "jobs/job/_job");
    renewal.reached().await;
    let report = delete_snapshot(&*raw, &at(&done[0].metadata.metadata_path()), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    renewal.release();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = job_record(&*raw, "job").await?.expect("record");
    assert_eq!(record.epoch, epoch);
    assert!(
        record.lease_until_ms > rockpoint_now_ms(),
        "the lease was renewed"
    );
    job.write(100)?;
    let next = c.checkpoint(&job.refs()).await?;
    assert_eq!(c.epoch(), epoch, "never fenced");
    assert!(
        under(
            &*raw,
            &snapshot_dir("job", SnapshotKind::Checkpoint, done[0].id())
        )
        .await?
        .is_empty()
    );
    gc_now(&*raw).await?;
    let scan = restore_scan(&*raw, &next.metadata.metadata_path(), dir.path()).await?;
    assert!(scan == job.scan()?);
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

fn rockpoint_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
