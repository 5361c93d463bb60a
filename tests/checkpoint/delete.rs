//! Deleting committed snapshots on an operator's request (P-steps, `admin::delete_snapshot`):
//! what it removes, what GC then frees, what it refuses, and the schedules with a live
//! coordinator, a job restored from the snapshot and a GC pass at grace 0 in between.

use crate::common;

use common::*;
use rockpoint::admin::{
    DeleteOptions, DeleteOutcome, PrunePolicy, delete_snapshot, inspect_root, job_record,
    plan_prune,
};
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, ErrorKind, JobEnd, RestoreSource,
    SnapshotKind, Store,
};

fn at(path: &str) -> RestoreSource {
    RestoreSource::Metadata(path.to_owned())
}

const DELETE: DeleteOptions = DeleteOptions {
    force: false,
    dry_run: false,
    clock_margin: std::time::Duration::from_secs(30),
};

/// Shared files (by path) and every object under `jobs/`.
async fn listing(store: &dyn Store) -> TestResult<Vec<String>> {
    objects(store).await
}

/// A stopped job with three retained checkpoints, each after a compaction (so each has files of its
/// own): deleting the middle one removes its metadata and private files, GC then frees exactly
/// what `freed_by` said, and the other two still restore to their state.
#[tokio::test]
async fn deleting_a_checkpoint_of_a_stopped_job_frees_what_only_it_referenced() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let settings = CheckpointSettings {
        retained: 3,
        ..CheckpointSettings::default()
    };
    let c = CheckpointCoordinator::open(store.clone(), "job", settings).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 3_000)?;
    let mut done = Vec::new();
    let mut oracles = Vec::new();
    for _ in 0..3 {
        job.write(3_000)?;
        for backend in &job.backends {
            backend.compact()?;
        }
        done.push(c.checkpoint(&job.refs()).await?);
        oracles.push(job.scan()?);
    }
    c.shutdown(JobEnd::Suspended).await?;
    gc_now(&*store).await?;
    let middle = done[1].metadata.metadata_path();
    let view = inspect_root(&*store, None).await?;
    let expected_freed = view.freed_by([middle.as_str()]);
    assert!(
        expected_freed > 0,
        "the middle checkpoint has files of its own"
    );

    let report = delete_snapshot(&*store, &at(&middle), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    assert_eq!(
        (report.kind, report.id),
        (SnapshotKind::Checkpoint, done[1].id())
    );
    let record = job_record(&*store, "job").await?.expect("a record");
    assert_eq!(record.retained, vec![done[0].id(), done[2].id()]);
    let dir_prefix = middle.trim_end_matches("_metadata");
    assert!(
        listing(&*store)
            .await?
            .iter()
            .all(|p| !p.starts_with(dir_prefix)),
        "metadata and private files are gone"
    );
    let before: u64 = store.list("").await?.iter().map(|o| o.size).sum();
    let gc = gc_now(&*store).await?;
    let after: u64 = store.list("").await?.iter().map(|o| o.size).sum();
    // The private files went with the delete; GC frees the shared files only it referenced.
    let private: u64 = done[1]
        .metadata
        .backends
        .iter()
        .flat_map(|b| b.private_files.iter().map(|f| f.size))
        .sum();
    assert_eq!(before - after, expected_freed - private, "gc: {gc:?}");
    for (i, kept) in [0, 2].into_iter().enumerate() {
        let scan = restore_scan(&*store, &done[kept].metadata.metadata_path(), dir.path()).await?;
        assert!(scan == oracles[kept], "checkpoint {i} kept its state");
    }
    // Deleted twice: not found, nothing written.
    let again = delete_snapshot(&*store, &at(&middle), &DELETE).await;
    assert_eq!(again.unwrap_err().kind(), ErrorKind::NotFound);
    Ok(())
}

/// The newest retained checkpoint is what the job resumes from: refused (nothing written) unless
/// forced; a dry run writes nothing either.
#[tokio::test]
async fn the_newest_checkpoint_is_refused_unless_forced() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let settings = CheckpointSettings {
        retained: 3,
        ..CheckpointSettings::default()
    };
    let c = CheckpointCoordinator::open(store.clone(), "job", settings).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 500)?;
    job.write(500)?;
    let first = c.checkpoint(&job.refs()).await?;
    job.write(500)?;
    let newest = c.checkpoint(&job.refs()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    let objects_before = listing(&*store).await?;

    let refused = delete_snapshot(&*store, &RestoreSource::Latest("job".into()), &DELETE).await?;
    assert_eq!(refused.id, newest.id());
    assert!(
        matches!(&refused.outcome, DeleteOutcome::Refused { reasons } if reasons[0].contains("newest")),
        "{refused:?}"
    );
    let dry = DeleteOptions {
        dry_run: true,
        ..DELETE
    };
    let would = delete_snapshot(&*store, &at(&first.metadata.metadata_path()), &dry).await?;
    assert_eq!(would.outcome, DeleteOutcome::WouldDelete);
    assert_eq!(listing(&*store).await?, objects_before, "nothing written");

    let forced = DeleteOptions {
        force: true,
        ..DELETE
    };
    let report = delete_snapshot(&*store, &RestoreSource::Latest("job".into()), &forced).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    let record = job_record(&*store, "job").await?.expect("a record");
    assert_eq!(record.retained, vec![first.id()]);
    Ok(())
}

/// A job restored from a savepoint without claim needs it until its own first checkpoint: deleting
/// the savepoint meanwhile is refused, naming that job; afterwards it is deleted, GC at grace 0
/// runs, and the restored job's checkpoint still restores to its state.
#[tokio::test]
async fn a_savepoint_a_restored_job_still_needs_is_refused_until_its_first_checkpoint() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let a = CheckpointCoordinator::open(store.clone(), "a", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 2, 2_000)?;
    job.write(3_000)?;
    let savepoint = a.savepoint(&job.refs()).await?;
    a.shutdown(JobEnd::Finished).await?;
    let path = savepoint.metadata.metadata_path();

    let b = CheckpointCoordinator::open(store.clone(), "b", CheckpointSettings::default()).await?;
    let mut restored = restore_job(
        &b,
        &at(&path),
        &dir.path().join("b"),
        2,
        2_000,
        ClaimMode::NoClaim,
    )
    .await?;
    let refused = delete_snapshot(&*store, &at(&path), &DELETE).await?;
    match &refused.outcome {
        DeleteOutcome::Refused { reasons } => assert!(
            reasons
                .iter()
                .any(|r| r.contains("job `b` restored from it")),
            "{reasons:?}"
        ),
        other => panic!("deleting a savepoint job b needs: {other:?}"),
    }
    gc_now(&*store).await?;

    restored.write(1_000)?;
    let own = b.checkpoint(&restored.refs()).await?;
    let oracle = restored.scan()?;
    // The restore pin is released once a checkpoint superseded it.
    let report = delete_snapshot(&*store, &at(&path), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted, "{report:?}");
    assert!(
        job_record(&*store, "a")
            .await?
            .expect("record")
            .savepoints
            .is_empty()
    );
    gc_now(&*store).await?;
    let scan = restore_scan(&*store, &own.metadata.metadata_path(), dir.path()).await?;
    assert!(
        scan == oracle,
        "job b's own checkpoint survived the delete and GC"
    );
    b.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// A savepoint of a running job is handed to its coordinator, which deletes it only once no
/// checkpoint in flight was given its files. The schedule: ticket T1 snapshots files the savepoint
/// has; the savepoint is deleted; a compaction replaces those files and T2 commits (the owner adopts
/// the deletion); GC at grace 0 runs; T1 uploads and commits. T1 must restore: the owner may not
/// discard the savepoint while T1, which reuses its files without checking them, is in flight.
#[tokio::test]
async fn a_savepoint_of_a_running_job_outlives_the_checkpoints_in_flight_that_reuse_it()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let settings = CheckpointSettings {
        retained: 3,
        max_concurrent: 2,
        ..CheckpointSettings::default()
    };
    let c = CheckpointCoordinator::open(store.clone(), "job", settings).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 2_000)?;
    job.write(4_000)?;
    job.backends[0].compact()?;
    let savepoint = c.savepoint(&job.refs()).await?;
    let sp_path = savepoint.metadata.metadata_path();

    // T1 records the savepoint's SSTs (known to the ticket: never checked at upload).
    let t1 = c.trigger(SnapshotKind::Checkpoint)?;
    let pending = job.backends[0].snapshot(&t1)?;
    let t1_oracle = job.scan()?;

    let report = delete_snapshot(&*store, &at(&sp_path), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    assert!(
        job_record(&*store, "job")
            .await?
            .expect("record")
            .discarding
            .contains(&savepoint.id())
    );

    // The savepoint's SSTs are replaced; T2 (a savepoint: it does not subsume T1) commits, and
    // with its swap the owner adopts the delete.
    job.write(4_000)?;
    job.backends[0].compact()?;
    let t2 = c.savepoint(&job.refs()).await?;
    assert_eq!(
        c.savepoints()
            .iter()
            .map(|m| m.checkpoint_id)
            .collect::<Vec<_>>(),
        vec![t2.id()],
        "the owner adopted the deletion"
    );
    gc_now(&*store).await?;

    let handle = pending.upload(&*store).await?;
    let t1_done = c.complete(&t1, vec![handle]).await?;
    gc_now(&*store).await?;
    let scan = restore_scan(&*store, &t1_done.metadata.metadata_path(), dir.path()).await?;
    assert!(scan == t1_oracle, "T1 lost files the deleted savepoint had");
    let scan = restore_scan(&*store, &t2.metadata.metadata_path(), dir.path()).await?;
    assert!(scan == job.scan()?, "T2 restores");

    // Once no ticket uses it, the owner removes the savepoint's records (next swap).
    job.write(100)?;
    c.checkpoint(&job.refs()).await?;
    let sp_dir = sp_path.trim_end_matches("_metadata");
    assert!(
        listing(&*store)
            .await?
            .iter()
            .all(|p| !p.starts_with(sp_dir)),
        "the owner discarded the deleted savepoint's records"
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// A coordinator whose lease expired (its process stopped renewing it, with a checkpoint in
/// flight): the delete fences the job in the same swap, so that coordinator, were it only paused,
/// could no longer commit a checkpoint that trusted the deleted snapshot's files. While the lease
/// was live, the same delete would have been handed to the owner.
#[tokio::test]
async fn deleting_from_a_job_whose_lease_expired_fences_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 500)?;
    let (first, ticket, pending) = {
        let c = CheckpointCoordinator::open(
            store.clone(),
            "job",
            CheckpointSettings {
                retained: 3,
                lease: std::time::Duration::from_millis(300),
                ..CheckpointSettings::default()
            },
        )
        .await?;
        job.write(500)?;
        let first = c.checkpoint(&job.refs()).await?;
        job.write(500)?;
        c.checkpoint(&job.refs()).await?;
        let ticket = c.trigger(SnapshotKind::Checkpoint)?;
        let pending = job.backends[0].snapshot(&ticket)?;
        (first, ticket, pending)
        // The coordinator is dropped without shutdown: nothing renews its lease any more.
    };
    let live = delete_snapshot(
        &*store,
        &at(&first.metadata.metadata_path()),
        &DeleteOptions {
            dry_run: true,
            ..DELETE
        },
    )
    .await?;
    assert_eq!(live.outcome, DeleteOutcome::WouldDelete);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let record = job_record(&*store, "job").await?.expect("record");
    let no_margin = DeleteOptions {
        clock_margin: std::time::Duration::ZERO,
        ..DELETE
    };
    let report = delete_snapshot(&*store, &at(&first.metadata.metadata_path()), &no_margin).await?;
    assert_eq!(report.outcome, DeleteOutcome::Deleted);
    let after = job_record(&*store, "job").await?.expect("record");
    assert_eq!(after.epoch, record.epoch + 1, "fenced in the same swap");
    assert_eq!(after.owner, None);
    // What a fenced epoch's commit then meets is tested with fencing (multiwriter.rs); here:
    // the snapshot in flight and its ticket are simply abandoned.
    drop((ticket, pending));
    let record = job_record(&*store, "job").await?.expect("record");
    assert!(!record.retained.contains(&first.id()));
    Ok(())
}

/// A live coordinator's checkpoint, deleted: handed to the owner (no fence), which removes its
/// records at its next swap; the job goes on checkpointing and every retained checkpoint restores.
#[tokio::test]
async fn deleting_a_checkpoint_of_a_running_job_hands_it_to_the_coordinator() -> TestResult {
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
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    let mut done = Vec::new();
    for _ in 0..3 {
        job.write(1_000)?;
        done.push(c.checkpoint(&job.refs()).await?);
    }
    let epoch = c.epoch();
    let oldest = done[0].metadata.metadata_path();
    let report = delete_snapshot(&*store, &at(&oldest), &DELETE).await?;
    assert_eq!(report.outcome, DeleteOutcome::HandedToOwner);
    job.write(1_000)?;
    let next = c.checkpoint(&job.refs()).await?;
    assert_eq!(c.epoch(), epoch, "never fenced");
    assert!(
        listing(&*store)
            .await?
            .iter()
            .all(|p| !p.starts_with(oldest.trim_end_matches("_metadata"))),
        "the owner removed the deleted checkpoint's records"
    );
    let record = job_record(&*store, "job").await?.expect("record");
    assert_eq!(record.retained, vec![done[1].id(), done[2].id(), next.id()]);
    gc_now(&*store).await?;
    for kept in [&done[1], &done[2], &next] {
        restore_scan(&*store, &kept.metadata.metadata_path(), dir.path()).await?;
    }
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

fn rockpoint_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The prune plan: keeps the newest checkpoint of each job whatever the policy, the last N, and
/// every savepoint unless asked; refuses a policy without a rule.
#[tokio::test]
async fn prune_keeps_what_the_policy_says_and_the_newest_checkpoint() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let settings = CheckpointSettings {
        retained: 5,
        ..CheckpointSettings::default()
    };
    let c = CheckpointCoordinator::open(store.clone(), "job", settings).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 500)?;
    let mut ids = Vec::new();
    for round in 0..5 {
        job.write(200)?;
        let done = if round == 2 {
            c.savepoint(&job.refs()).await?
        } else {
            c.checkpoint(&job.refs()).await?
        };
        ids.push(done.id());
    }
    c.shutdown(JobEnd::Suspended).await?;
    let view = inspect_root(&*store, None).await?;
    let none = PrunePolicy::default();
    assert_eq!(
        plan_prune(&view, &none, rockpoint_now_ms())
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    let policy = PrunePolicy {
        keep_last: Some(2),
        ..PrunePolicy::default()
    };
    let plan = plan_prune(&view, &policy, rockpoint_now_ms())?;
    let deleted: Vec<u64> = plan
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.snapshot.id)
        .collect();
    // Checkpoints 0, 1, 3, 4 (ids); the savepoint (2) is kept: the last two checkpoints stay.
    assert_eq!(deleted, vec![ids[1], ids[0]]);
    let keep_one = PrunePolicy {
        keep_last: Some(0),
        savepoints: true,
        ..PrunePolicy::default()
    };
    let plan = plan_prune(&view, &keep_one, rockpoint_now_ms())?;
    let kept: Vec<u64> = plan
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.snapshot.id)
        .collect();
    assert_eq!(kept, vec![ids[4]], "the newest checkpoint, always");
    let within = PrunePolicy {
        keep_within: Some(std::time::Duration::from_secs(3600)),
        savepoints: true,
        ..PrunePolicy::default()
    };
    assert!(
        plan_prune(&view, &within, rockpoint_now_ms())?
            .iter()
            .all(|d| d.keep)
    );
    Ok(())
}
