//! Export (relocation, X1–X6): a snapshot copied with its closure into another root restores
//! exactly there, copies only what the target lacks, survives GC and discards in both roots, fails
//! whole on a damaged source, and goes along with a live coordinator and a concurrent GC of the
//! target job's root.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::s3::Root;
use common::*;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, JobEnd, RestoreSource, export_snapshot,
};

fn metadata(path: &str) -> RestoreSource {
    RestoreSource::Metadata(path.to_owned())
}

/// The savepoint ids the target job's record lists.
async fn savepoints(store: &dyn rockpoint::Store, job: &str) -> TestResult<Vec<u64>> {
    Ok(rockpoint::admin::job_record(store, job)
        .await?
        .map(|r| r.savepoints)
        .unwrap_or_default())
}

async fn exported_snapshots_restore_exactly_in_another_root_and_survive_gc_in_both(
    on: Root,
) -> TestResult {
    let dir = tempfile::tempdir()?;
    let source = local_store(&dir.path().join("source"))?;
    let target = on.store(&dir.path().join("target")).await?;
    let c = CheckpointCoordinator::open(
        source.clone(),
        "job",
        CheckpointSettings {
            retained: 1,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    let savepoint = c.savepoint(&job.refs()).await?;
    let at_savepoint = job.scan()?;

    let first = export_snapshot(
        &*source,
        &metadata(&savepoint.path()),
        &*target,
        None,
        4,
        None,
    )
    .await?;
    assert!(first.metadata_path.starts_with("jobs/job/sp-"), "{first:?}");
    assert!(
        first.objects_copied > 0 && first.bytes_copied > 0,
        "{first:?}"
    );
    assert_eq!(first.objects_present, 0, "an empty root holds nothing");
    assert_eq!(
        restore_scan(&*target, &first.metadata_path, dir.path()).await?,
        at_savepoint
    );

    // A later checkpoint of the same job shares most files: only the new ones are copied.
    job.write(1_000)?;
    let checkpoint = c.checkpoint(&job.refs()).await?;
    let at_checkpoint = job.scan()?;
    let second = export_snapshot(
        &*source,
        &metadata(&checkpoint.path()),
        &*target,
        None,
        4,
        None,
    )
    .await?;
    assert!(second.objects_present > 0, "{second:?}");
    assert_ne!(second.metadata_path, first.metadata_path);
    assert_eq!(savepoints(&*target, "job").await?.len(), 2);
    let (_, exported) =
        rockpoint::restore::read_metadata(&*target, &metadata(&second.metadata_path)).await?;
    assert_eq!(exported.kind, rockpoint::SnapshotKind::Savepoint);
    assert_eq!(exported.claimed_from, None);

    // GC of the target root deletes nothing the savepoints need.
    gc_now(&*target).await?;
    assert_eq!(
        restore_scan(&*target, &first.metadata_path, dir.path()).await?,
        at_savepoint
    );
    // The source job discards the exported checkpoint and its root is collected: the target is
    // a root of its own.
    for _ in 0..2 {
        job.write(500)?;
        c.checkpoint(&job.refs()).await?;
    }
    assert!(
        c.retained()
            .iter()
            .all(|m| m.checkpoint_id != checkpoint.id())
    );
    c.shutdown(JobEnd::Suspended).await?;
    gc_now(&*source).await?;
    gc_now(&*target).await?;
    assert_eq!(
        restore_scan(&*target, &second.metadata_path, dir.path()).await?,
        at_checkpoint
    );
    assert_eq!(
        restore_scan(&*target, &first.metadata_path, dir.path()).await?,
        at_savepoint
    );
    Ok(())
}

crate::on_both_roots!(exported_snapshots_restore_exactly_in_another_root_and_survive_gc_in_both);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canonical_savepoint_is_exported_under_another_job() -> TestResult {
    let dir = tempfile::tempdir()?;
    let source = local_store(&dir.path().join("source"))?;
    let target = local_store(&dir.path().join("target"))?;
    let c =
        CheckpointCoordinator::open(source.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(2_000)?;
    let savepoint = c.savepoint_canonical(&job.refs()).await?;
    let report = export_snapshot(
        &*source,
        &metadata(&savepoint.path()),
        &*target,
        Some("moved"),
        4,
        None,
    )
    .await?;
    assert!(
        report.metadata_path.starts_with("jobs/moved/sp-"),
        "{report:?}"
    );
    assert_eq!(
        report.objects_copied, 2,
        "one stream per backend, nothing shared"
    );
    assert_eq!(
        restore_scan(&*target, &report.metadata_path, dir.path()).await?,
        job.scan()?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_source_object_fails_the_export_and_commits_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let source_dir = dir.path().join("source");
    let source = local_store(&source_dir)?;
    let target = local_store(&dir.path().join("target"))?;
    let c =
        CheckpointCoordinator::open(source.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(3_000)?;
    let savepoint = c.savepoint(&job.refs()).await?;
    let (_, recorded) =
        rockpoint::restore::read_metadata(&*source, &metadata(&savepoint.path())).await?;
    let damaged = recorded.shared_hashes().next().expect("a shared file");
    let file = source_dir.join(shared_path(&damaged));
    let mut bytes = std::fs::read(&file)?;
    bytes[0] ^= 0xff;
    std::fs::write(&file, bytes)?;

    let error = export_snapshot(
        &*source,
        &metadata(&savepoint.path()),
        &*target,
        None,
        4,
        None,
    )
    .await
    .expect_err("a damaged source must not export");
    assert_eq!(error.kind(), ErrorKind::Corruption, "{error}");
    assert!(error.to_string().contains(&damaged.to_hex()), "{error}");
    assert!(savepoints(&*target, "job").await?.is_empty());
    let written: Vec<String> = objects(&*target)
        .await?
        .into_iter()
        .filter(|p| p.contains("/sp-") || p.starts_with("pins/"))
        .collect();
    assert!(written.is_empty(), "the failed export left {written:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_into_a_job_with_a_live_coordinator_keeps_both_restorable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let source = local_store(&dir.path().join("source"))?;
    let target = local_store(&dir.path().join("target"))?;
    let c =
        CheckpointCoordinator::open(source.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    let savepoint = c.savepoint(&job.refs()).await?;
    let at_savepoint = job.scan()?;

    // The target root's job of the same name runs and checkpoints throughout the export.
    let live =
        CheckpointCoordinator::open(target.clone(), "job", CheckpointSettings::default()).await?;
    let mut running = TestJob::open(&dir.path().join("running"), 2, 2_000)?;
    let checkpointing = async {
        let mut last = None;
        for _ in 0..6 {
            running.write(500)?;
            last = Some(live.checkpoint(&running.refs()).await?);
        }
        Ok::<_, Box<dyn std::error::Error>>(last.expect("checkpoints").path())
    };
    let exported = metadata(&savepoint.path());
    let exporting = export_snapshot(&*source, &exported, &*target, None, 2, None);
    let (last, report) = tokio::join!(checkpointing, exporting);
    let (last, report) = (last?, report?);
    let at_last = running.scan()?;
    // And after it, with the record the export changed.
    running.write(500)?;
    let after = live.checkpoint(&running.refs()).await?;
    let at_after = running.scan()?;

    let record = rockpoint::admin::job_record(&*target, "job")
        .await?
        .expect("a record");
    let id: u64 = report
        .metadata_path
        .trim_start_matches("jobs/job/sp-")
        .trim_end_matches("/_metadata")
        .parse()?;
    assert!(record.savepoints.contains(&id), "{record:?}");
    assert!(
        !record.retained.contains(&id),
        "ids never collide: {record:?}"
    );
    assert_eq!(
        restore_scan(&*target, &report.metadata_path, dir.path()).await?,
        at_savepoint
    );
    assert_eq!(
        restore_scan(&*target, &after.path(), dir.path()).await?,
        at_after
    );
    if record.retained.contains(&last_id(&last)) {
        assert_eq!(restore_scan(&*target, &last, dir.path()).await?, at_last);
    }
    live.shutdown(JobEnd::Suspended).await?;
    gc_now(&*target).await?;
    assert_eq!(
        restore_scan(&*target, &report.metadata_path, dir.path()).await?,
        at_savepoint
    );
    assert_eq!(
        restore_scan(&*target, &after.path(), dir.path()).await?,
        at_after
    );
    Ok(())
}

fn last_id(path: &str) -> u64 {
    path.trim_start_matches("jobs/job/chk-")
        .trim_end_matches("/_metadata")
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_running_during_the_export_never_breaks_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let source = local_store(&dir.path().join("source"))?;
    let target = local_store(&dir.path().join("target"))?;
    let c =
        CheckpointCoordinator::open(source.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;

    let stop = Arc::new(AtomicBool::new(false));
    let gc = tokio::spawn({
        let (target, stop) = (target.clone(), stop.clone());
        async move {
            let mut passes = 0u64;
            // Grace 0 for shared files and records; temporaries of writes in flight keep the
            // default minimum age (a pass that swept them would break any concurrent writer).
            let options = rockpoint::GcOptions {
                grace_period: std::time::Duration::ZERO,
                mode: rockpoint::SweepMode::Delete,
                ..rockpoint::GcOptions::default()
            };
            while !stop.load(Ordering::SeqCst) {
                rockpoint::collect_garbage(&*target, &options)
                    .await
                    .map_err(|e| e.to_string())?;
                passes += 1;
            }
            Ok::<_, String>(passes)
        }
    });
    let mut exported = Vec::new();
    for _ in 0..3 {
        job.write(2_000)?;
        let savepoint = c.savepoint(&job.refs()).await?;
        let report = export_snapshot(
            &*source,
            &metadata(&savepoint.path()),
            &*target,
            None,
            4,
            None,
        )
        .await?;
        exported.push((report.metadata_path, job.scan()?));
    }
    stop.store(true, Ordering::SeqCst);
    let passes = gc.await??;
    assert!(passes > 0);
    gc_now(&*target).await?;
    for (path, expected) in &exported {
        assert_eq!(&restore_scan(&*target, path, dir.path()).await?, expected);
    }
    assert_eq!(savepoints(&*target, "job").await?.len(), 3);
    Ok(())
}

/// An export takes its id from the record's `next_id` (X1), right after the live coordinator's
/// block. The coordinator then checkpoints past the end of that block: it never hands out the
/// export's id (its blocks are only what its own swaps reserved), so `chk-<id>` never sits next
/// to `sp-<id>`. Before the fix, adopting the record the export changed made the id its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_coordinator_never_hands_out_the_id_an_export_took() -> TestResult {
    let dir = tempfile::tempdir()?;
    let source = local_store(&dir.path().join("source"))?;
    let target = local_store(&dir.path().join("target"))?;
    let c =
        CheckpointCoordinator::open(source.clone(), "src", CheckpointSettings::default()).await?;
    let job = TestJob::open(&dir.path().join("job"), 1, 10)?;
    job.backends[0].state(&VALUES)?.put(&1, &vec![1])?;
    let savepoint = c.savepoint(&job.refs()).await?;

    let settings = CheckpointSettings {
        retained: 1,
        ..CheckpointSettings::default()
    };
    let live = CheckpointCoordinator::open(target.clone(), "job", settings).await?;
    let running = TestJob::open(&dir.path().join("running"), 1, 10)?;
    let block_end = rockpoint::admin::job_record(&*target, "job")
        .await?
        .expect("a record")
        .next_id;
    let report = export_snapshot(
        &*source,
        &metadata(&savepoint.path()),
        &*target,
        Some("job"),
        2,
        None,
    )
    .await?;
    assert_eq!(
        report.metadata_path,
        format!("jobs/job/sp-{block_end:020}/_metadata")
    );
    let mut ids = Vec::new();
    while ids.last().is_none_or(|&id| id <= block_end) {
        let done = live.checkpoint(&running.refs()).await?;
        ids.push(done.id());
    }
    assert!(
        !ids.contains(&block_end),
        "the export's id {block_end} was handed out again"
    );
    assert_eq!(ids[ids.len() - 2..], [block_end - 1, block_end + 1]);
    live.shutdown(JobEnd::Suspended).await?;
    Ok(())
}
