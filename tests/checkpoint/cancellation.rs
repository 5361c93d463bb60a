//! Cancellation policies and job end states (Flink semantics), and the regression tests for
//! FLINK-26985 / FLINK-7268: a job restored from another job's retained checkpoint must never lose
//! the shared files it reuses when either job discards its own checkpoints.

use crate::common;

use common::s3::Root;
use common::*;
use rockpoint::{
    CancellationPolicy, CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, RestoreSource,
};

fn settings(retained: usize, cancellation: CancellationPolicy) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        cancellation,
        ..CheckpointSettings::default()
    }
}

async fn shared_file_survives_delete_on_cancel_of_the_job_it_was_restored_from(
    on: Root,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let a = CheckpointCoordinator::open(
        store.clone(),
        "job-a",
        settings(2, CancellationPolicy::DeleteOnCancellation),
    )
    .await?;
    let mut job_a = TestJob::open(&dir.path().join("a"), 2, 2_000)?;
    job_a.write(4_000)?;
    for b in &job_a.backends {
        b.flush()?; // SSTs that B will certainly still hold
    }
    let chk_a = a.checkpoint(&job_a.refs()).await?;

    // Job B restores A's checkpoint without claiming it and checkpoints on top of it.
    let b = CheckpointCoordinator::open(
        store.clone(),
        "job-b",
        settings(1, CancellationPolicy::RetainOnCancellation),
    )
    .await?;
    let mut job_b = restore_job(
        &b,
        &RestoreSource::Metadata(chk_a.path()),
        &dir.path().join("b"),
        2,
        2_000,
        ClaimMode::NoClaim,
    )
    .await?;
    job_b.write(200)?;
    let chk_b = b.checkpoint(&job_b.refs()).await?;
    let expected_b = job_b.scan()?;
    assert!(chk_b.reused_bytes() > 0, "B reuses A's files");

    // A is cancelled with DeleteOnCancellation: its checkpoints go, B's files stay.
    a.shutdown(JobEnd::Cancelled).await?;
    let all = objects(&*store).await?;
    assert!(
        !all.iter()
            .any(|p| p.starts_with("jobs/job-a/") && p != "jobs/job-a/_job"),
        "A's checkpoints are removed (its job record stays, so ids are never reused): {all:?}"
    );
    assert_eq!(
        restore_scan(&*store, &chk_b.path(), dir.path()).await?,
        expected_b
    );
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(referenced, present, "only files B references remain");

    // B keeps checkpointing and subsuming its own checkpoints: still exact.
    for _ in 0..3 {
        job_b.write(200)?;
        let next = b.checkpoint(&job_b.refs()).await?;
        assert_eq!(
            restore_scan(&*store, &next.path(), dir.path()).await?,
            job_b.scan()?
        );
    }
    Ok(())
}

async fn flink_26985_new_job_never_deletes_files_of_the_retained_checkpoint_it_restored(
    on: Root,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let a = CheckpointCoordinator::open(
        store.clone(),
        "job-a",
        settings(1, CancellationPolicy::RetainOnCancellation),
    )
    .await?;
    let mut job_a = TestJob::open(&dir.path().join("a"), 2, 2_000)?;
    job_a.write(4_000)?;
    let chk_a = a.checkpoint(&job_a.refs()).await?;
    let expected_a = job_a.scan()?;
    a.shutdown(JobEnd::Cancelled).await?;
    drop(job_a);

    // B restores, then checkpoints many times with retained = 1 (subsuming its own checkpoints),
    // compacting away the restored SSTs, then finishes (discarding all of its checkpoints).
    let b = CheckpointCoordinator::open(
        store.clone(),
        "job-b",
        settings(1, CancellationPolicy::DeleteOnCancellation),
    )
    .await?;
    let mut job_b = restore_job(
        &b,
        &RestoreSource::Metadata(chk_a.path()),
        &dir.path().join("b"),
        2,
        2_000,
        ClaimMode::NoClaim,
    )
    .await?;
    for _ in 0..5 {
        job_b.write(3_000)?;
        b.checkpoint(&job_b.refs()).await?;
    }
    b.shutdown(JobEnd::Finished).await?;
    assert!(b.retained().is_empty());

    // A's retained checkpoint is whole: it restores exactly.
    assert_eq!(
        restore_scan(&*store, &chk_a.path(), dir.path()).await?,
        expected_a
    );
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(
        referenced, present,
        "B left nothing behind and took nothing of A's"
    );
    Ok(())
}

async fn end_states_keep_or_discard_as_documented(on: Root) -> TestResult {
    for (end, policy, kept) in [
        (
            JobEnd::Cancelled,
            CancellationPolicy::RetainOnCancellation,
            true,
        ),
        (
            JobEnd::Cancelled,
            CancellationPolicy::DeleteOnCancellation,
            false,
        ),
        (
            JobEnd::Finished,
            CancellationPolicy::RetainOnCancellation,
            false,
        ),
        (
            JobEnd::Failed,
            CancellationPolicy::DeleteOnCancellation,
            true,
        ),
        (
            JobEnd::Suspended,
            CancellationPolicy::DeleteOnCancellation,
            true,
        ),
    ] {
        let dir = tempfile::tempdir()?;
        let store = on.store(&dir.path().join("root")).await?;
        let c = CheckpointCoordinator::open(store.clone(), "job", settings(2, policy)).await?;
        let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
        job.write(2_000)?;
        c.checkpoint(&job.refs()).await?;
        let savepoint = c.savepoint(&job.refs()).await?;
        let savepoint_state = job.scan()?;
        job.write(500)?;
        let last = c.checkpoint(&job.refs()).await?;
        let expected = job.scan()?;
        c.shutdown(end).await?;

        let all = objects(&*store).await?;
        let checkpoints = all
            .iter()
            .filter(|p| p.contains("/chk-") && p.ends_with("_metadata"))
            .count();
        assert_eq!(
            checkpoints,
            if kept { 2 } else { 0 },
            "{end:?} with {policy:?}: {all:?}"
        );
        if kept {
            assert_eq!(
                restore_scan(&*store, &last.path(), dir.path()).await?,
                expected
            );
            // The job resumes: a new coordinator of the same job recovers its retained checkpoints.
            let resumed =
                CheckpointCoordinator::open(store.clone(), "job", settings(2, policy)).await?;
            assert_eq!(resumed.retained().len(), 2);
            assert_eq!(resumed.latest().map(|m| m.checkpoint_id), Some(last.id()));
        }
        // Savepoints are never deleted by the engine.
        assert_eq!(
            restore_scan(&*store, &savepoint.path(), dir.path()).await?,
            savepoint_state
        );
        let (referenced, present) = shared_sets(&*store).await?;
        assert_eq!(
            referenced, present,
            "{end:?}: exactly the referenced files remain"
        );
    }
    Ok(())
}

async fn claim_mode_transfers_ownership(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let a = CheckpointCoordinator::open(
        store.clone(),
        "job-a",
        settings(1, CancellationPolicy::RetainOnCancellation),
    )
    .await?;
    let mut job_a = TestJob::open(&dir.path().join("a"), 1, 1_000)?;
    job_a.write(2_000)?;
    let chk_a = a.checkpoint(&job_a.refs()).await?;
    let expected = job_a.scan()?;
    a.shutdown(JobEnd::Cancelled).await?;

    let b = CheckpointCoordinator::open(
        store.clone(),
        "job-b",
        settings(1, CancellationPolicy::DeleteOnCancellation),
    )
    .await?;
    let job_b = restore_job(
        &b,
        &RestoreSource::Metadata(chk_a.path()),
        &dir.path().join("b"),
        1,
        1_000,
        ClaimMode::Claim,
    )
    .await?;
    assert_eq!(job_b.scan()?, expected);
    // The claimed checkpoint is B's now: A's record no longer retains it (so nothing restores it
    // as A's), and its leftover records go with A's next recovery or, A being stopped, with GC.
    let record_a = rockpoint::admin::job_record(&*store, "job-a")
        .await?
        .expect("A has a record");
    assert!(!record_a.is_complete(chk_a.id()), "{record_a:?}");
    assert_eq!(
        rockpoint::restore::read_metadata(&*store, &RestoreSource::Metadata(chk_a.path()))
            .await
            .err()
            .map(|e| e.kind()),
        Some(rockpoint::ErrorKind::NotFound),
        "the claimed record moved to job B"
    );
    gc_now(&*store).await?;
    assert!(store.head(&chk_a.path()).await?.is_none());
    let adopted = b.latest().expect("B owns the claimed checkpoint");
    assert_eq!(
        restore_scan(&*store, &adopted.metadata_path(), dir.path()).await?,
        expected
    );
    b.shutdown(JobEnd::Cancelled).await?;
    gc_now(&*store).await?;
    let all = objects(&*store).await?;
    assert!(
        all.iter().all(|p| !p.starts_with("shared/")),
        "B discarded what it claimed (GC freed its files): {all:?}"
    );
    Ok(())
}

crate::on_both_roots!(
    shared_file_survives_delete_on_cancel_of_the_job_it_was_restored_from,
    flink_26985_new_job_never_deletes_files_of_the_retained_checkpoint_it_restored,
    end_states_keep_or_discard_as_documented,
    claim_mode_transfers_ownership,
);
