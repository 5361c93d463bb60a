//! GC of a root: removes exactly the unreferenced objects older than the grace period, is a dry run
//! unless told otherwise, honours pins, and deletes nothing the second time.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rockpoint::format::ContentHash;
use rockpoint::store::WriteMode;
use rockpoint::{collect_garbage, CheckpointCoordinator, CheckpointSettings, GcOptions, SnapshotKind, SweepMode};

fn shared_path(hash: &ContentHash) -> String {
    let hex = hash.to_hex();
    format!("shared/{}/{hex}", &hex[..2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_exactly_the_orphans_and_is_idempotent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = local_store(&root)?;
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
    std::fs::write(root.join("shared").join(".leftover.tmp-123"), b"partial")?;
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
    assert_eq!(dry.incomplete.len(), 1, "{dry:?}");
    assert_eq!(objects(&*store).await?, before);
    assert!(root.join("shared").join(".leftover.tmp-123").exists());

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
        (1, 1, 1)
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
