//! GC of a root: removes exactly the unreferenced objects older than the grace period, is a dry run
//! unless told otherwise, honours pins, and deletes nothing the second time.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::s3::Root;
use common::*;
use rockpoint::format::ContentHash;
use rockpoint::store::WriteMode;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, GcOptions, SnapshotKind, SweepMode, collect_garbage,
};

async fn gc_removes_exactly_the_orphans_and_is_idempotent(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = on.store(&root).await?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(3_000)?;
    let done = c.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;
    // The job stops (its lease is released): GC may judge what its epoch left. While a coordinator
    // holds the job, GC leaves the ids of its reserved block to it (they may be in flight).
    c.shutdown(rockpoint::JobEnd::Suspended).await?;

    // Orphans: an unreferenced shared file, private files of a checkpoint that never committed, a
    // stale pin, and a temporary file of an interrupted write.
    let orphan = Bytes::from_static(b"an orphaned upload");
    let orphan_hash = ContentHash::of(&orphan);
    store
        .put(
            &shared_path(&orphan_hash),
            orphan.clone(),
            WriteMode::Replace,
        )
        .await?;
    store
        .put(
            "jobs/job/chk-00000000000000000099/kg-00000-00064/OPTIONS-000007",
            Bytes::from_static(b"x"),
            WriteMode::CreateOnly,
        )
        .await?;
    // A local root's interrupted write leaves a temporary file; an object store shows none (an
    // abandoned multipart upload is not an object).
    let local = on == Root::Local;
    if local {
        std::fs::write(root.join("shared").join(".leftover.tmp-123"), b"partial")?;
    }
    let before = objects(&*store).await?;

    // Within the grace period nothing goes.
    let young = collect_garbage(
        &*store,
        &GcOptions {
            grace_period: Duration::from_secs(3600),
            mode: SweepMode::Delete,
            ..GcOptions::default()
        },
    )
    .await?;
    assert!(young.is_empty(), "{young:?}");
    // A dry run reports and deletes nothing.
    let dry = collect_garbage(
        &*store,
        &GcOptions {
            grace_period: Duration::ZERO,
            mode: SweepMode::DryRun,
            incomplete_min_age: Duration::ZERO,
            ..GcOptions::default()
        },
    )
    .await?;
    assert_eq!(dry.shared_files, vec![shared_path(&orphan_hash)]);
    assert_eq!(dry.private_files.len(), 1);
    assert_eq!(dry.incomplete.len(), usize::from(local), "{dry:?}");
    assert_eq!(objects(&*store).await?, before);
    assert_eq!(
        root.join("shared").join(".leftover.tmp-123").exists(),
        local
    );

    let real = collect_garbage(
        &*store,
        &GcOptions {
            grace_period: Duration::ZERO,
            mode: SweepMode::Delete,
            incomplete_min_age: Duration::ZERO,
            ..GcOptions::default()
        },
    )
    .await?;
    assert_eq!(
        (
            real.shared_files.len(),
            real.private_files.len(),
            real.incomplete.len()
        ),
        (1, 1, usize::from(local))
    );
    assert!(!root.join("shared").join(".leftover.tmp-123").exists());
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(referenced, present, "exactly the referenced files remain");
    let again = collect_garbage(
        &*store,
        &GcOptions {
            grace_period: Duration::ZERO,
            mode: SweepMode::Delete,
            incomplete_min_age: Duration::ZERO,
            ..GcOptions::default()
        },
    )
    .await?;
    assert!(
        again.is_empty(),
        "GC run twice deletes nothing the second time: {again:?}"
    );
    assert_eq!(
        restore_scan(&*store, &done.path(), dir.path()).await?,
        expected
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_during_an_uncommitted_upload_keeps_its_files() -> TestResult {
    // SlateDB RFC-0029: an uploaded-but-uncommitted file must not be collected.
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(3_000)?;
    let ticket = c.trigger(SnapshotKind::Checkpoint)?;
    let handle = job.backends[0].snapshot(&ticket)?.upload(&*store).await?;
    let expected = job.scan()?;
    // Age every uploaded file past the grace period: only the in-flight checkpoint's pin (young)
    // stands between them and GC.
    let aged = std::time::SystemTime::now() - Duration::from_secs(7200);
    for object in store.list("shared/").await? {
        let file = std::fs::File::options()
            .write(true)
            .open(dir.path().join("root").join(&object.path))?;
        file.set_modified(aged)?;
    }
    let gc = collect_garbage(
        &*store,
        &GcOptions {
            grace_period: Duration::from_secs(3600),
            mode: SweepMode::Delete,
            ..GcOptions::default()
        },
    )
    .await?;
    assert!(
        gc.is_empty(),
        "the pin protects the uncommitted upload: {gc:?}"
    );
    let done = c.complete(&ticket, vec![handle]).await?;
    assert_eq!(
        restore_scan(&*store, &done.path(), dir.path()).await?,
        expected
    );
    Ok(())
}

/// A snapshot stages new SSTs as temporary files before publishing them: GC from cron at grace
/// period 0 must not sweep them from under an upload in flight (they are kept until
/// `incomplete_min_age`, one hour by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_at_grace_zero_keeps_young_temporaries_of_uploads_in_flight() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = local_store(&root)?;
    std::fs::create_dir_all(root.join("shared"))?;
    let staged = root.join("shared").join(".staged.tmp-in-flight");
    std::fs::write(&staged, b"being uploaded")?;
    let report = collect_garbage(
        &*store,
        &GcOptions {
            grace_period: Duration::ZERO,
            mode: SweepMode::Delete,
            ..GcOptions::default()
        },
    )
    .await?;
    assert!(report.incomplete.is_empty(), "{report:?}");
    assert!(staged.exists(), "a young temporary survives GC at grace 0");
    Ok(())
}

/// `admin::inspect_root` lists exactly the committed checkpoints of every job (what the job
/// record retains, savepoints included), and its exclusive size is what deleting one would free.
async fn admin_view_lists_committed_checkpoints_and_exclusive_bytes(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let settings = CheckpointSettings {
        retained: 2,
        ..CheckpointSettings::default()
    };
    let a = CheckpointCoordinator::open(store.clone(), "job-a", settings.clone()).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 2, 1_000)?;
    job.write(2_000)?;
    a.checkpoint(&job.refs()).await?;
    job.write(2_000)?;
    let second = a.checkpoint(&job.refs()).await?;
    job.write(2_000)?;
    let third = a.checkpoint(&job.refs()).await?; // subsumes the first (retained: 2)
    let savepoint = a.savepoint(&job.refs()).await?;
    let b = CheckpointCoordinator::open(store.clone(), "job-b", settings).await?;
    let mut other = TestJob::open(&dir.path().join("b"), 1, 500)?;
    other.write(1_000)?;
    let only_b = b.checkpoint(&other.refs()).await?;

    let view = rockpoint::admin::inspect_root(&*store, None).await?;
    assert!(view.unreadable.is_empty(), "{:?}", view.unreadable);
    let listed: Vec<(String, u64)> = view
        .checkpoints()
        .map(|c| (c.job_id.clone(), c.id))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("job-a".to_owned(), second.id()),
            ("job-a".to_owned(), third.id()),
            ("job-a".to_owned(), savepoint.id()),
            ("job-b".to_owned(), only_b.id()),
        ]
    );
    let jobs: Vec<&str> = view.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(jobs, ["job-a", "job-b"]);
    assert!(view.jobs.iter().all(|j| j.record.is_some()));

    // Sizes agree with the metadata; a job alone in the root shares nothing with the others.
    for summary in view.checkpoints() {
        let (_, metadata) = rockpoint::restore::read_metadata(
            &*store,
            &rockpoint::RestoreSource::Metadata(summary.path.clone()),
        )
        .await?;
        assert_eq!(summary.full_bytes, metadata.full_size_bytes);
        assert_eq!(summary.checkpointed_bytes, metadata.checkpointed_size_bytes);
        assert!(summary.exclusive_bytes <= summary.full_bytes);
    }
    let b_summary = view.checkpoints().find(|c| c.job_id == "job-b").unwrap();
    assert_eq!(b_summary.exclusive_bytes, b_summary.full_bytes);
    assert!(view.referenced_bytes <= view.stored_bytes);

    // The filter shows one job; an id that is not a job id is refused, not read.
    let only = rockpoint::admin::inspect_root(&*store, Some("job-b")).await?;
    assert_eq!(only.jobs.len(), 1);
    let bad = rockpoint::admin::inspect_root(&*store, Some("../..")).await;
    assert_eq!(bad.unwrap_err().kind(), rockpoint::ErrorKind::Invalid);

    a.shutdown(rockpoint::JobEnd::Suspended).await?;
    b.shutdown(rockpoint::JobEnd::Suspended).await?;
    Ok(())
}

/// The exclusive size `inspect_root` reports for a checkpoint is exactly what discarding it frees:
/// its private files (deleted by the coordinator) plus the shared files GC then removes.
async fn admin_exclusive_bytes_are_what_discarding_frees(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = on.store(&root).await?;
    let settings = CheckpointSettings {
        retained: 2,
        ..CheckpointSettings::default()
    };
    let c = CheckpointCoordinator::open(store.clone(), "job", settings).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(3_000)?;
    let first = c.checkpoint(&job.refs()).await?;
    job.write(3_000)?;
    for backend in &job.backends {
        backend.flush()?;
    }
    c.checkpoint(&job.refs()).await?;
    let view = rockpoint::admin::inspect_root(&*store, None).await?;
    let summary = view
        .checkpoints()
        .find(|s| s.id == first.id())
        .unwrap()
        .clone();
    let private: u64 = first
        .metadata
        .backends
        .iter()
        .flat_map(|b| b.private_files.iter().map(|f| f.size))
        .sum();
    assert!(
        summary.exclusive_bytes > private,
        "the first checkpoint owns some SSTs alone"
    );

    job.write(3_000)?;
    c.checkpoint(&job.refs()).await?; // retained: 2, so the first is discarded
    c.shutdown(rockpoint::JobEnd::Suspended).await?;
    let shared_bytes = |store: std::sync::Arc<dyn rockpoint::Store>| async move {
        let listed = store.list("shared/").await?;
        Ok::<u64, rockpoint::Error>(listed.iter().map(|o| o.size).sum())
    };
    let before = shared_bytes(store.clone()).await?;
    rockpoint::collect_garbage(
        &*store,
        &rockpoint::GcOptions {
            grace_period: std::time::Duration::ZERO,
            mode: rockpoint::SweepMode::Delete,
            ..rockpoint::GcOptions::default()
        },
    )
    .await?;
    let after = shared_bytes(store.clone()).await?;
    assert_eq!(before - after, summary.exclusive_bytes - private);
    Ok(())
}

/// Files are shared across jobs (a job restored without claim reuses its source's files), so a
/// view of one job still sizes against every job of the root: filtering shows fewer jobs, never
/// more exclusive bytes.
async fn admin_view_of_one_job_sizes_against_the_whole_root(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let a =
        CheckpointCoordinator::open(store.clone(), "job-a", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 2, 1_000)?;
    job.write(3_000)?;
    let source = a.checkpoint(&job.refs()).await?;
    let b =
        CheckpointCoordinator::open(store.clone(), "job-b", CheckpointSettings::default()).await?;
    let restored = restore_job(
        &b,
        &rockpoint::RestoreSource::Metadata(source.path()),
        &dir.path().join("b"),
        2,
        1_000,
        rockpoint::ClaimMode::NoClaim,
    )
    .await?;
    b.checkpoint(&restored.refs()).await?;

    let whole = rockpoint::admin::inspect_root(&*store, None).await?;
    let only_b = rockpoint::admin::inspect_root(&*store, Some("job-b")).await?;
    let b_whole: Vec<_> = whole
        .checkpoints()
        .filter(|c| c.job_id == "job-b")
        .cloned()
        .collect();
    let b_alone: Vec<_> = only_b.checkpoints().cloned().collect();
    assert_eq!(b_alone, b_whole);
    assert!(
        b_alone[0].exclusive_bytes < b_alone[0].full_bytes,
        "job-b shares job-a's files: {:?}",
        b_alone[0]
    );
    assert_eq!(only_b.referenced_bytes, whole.referenced_bytes);
    a.shutdown(rockpoint::JobEnd::Suspended).await?;
    b.shutdown(rockpoint::JobEnd::Suspended).await?;
    Ok(())
}

crate::on_both_roots!(
    gc_removes_exactly_the_orphans_and_is_idempotent,
    admin_view_lists_committed_checkpoints_and_exclusive_bytes,
    admin_exclusive_bytes_are_what_discarding_frees,
    admin_view_of_one_job_sizes_against_the_whole_root,
);
