//! Resume loop: retain on cancel → drop everything in memory → restore from the checkpoint's path
//! into a new job → write more → checkpoint → cancel, three rounds. The state is verified each
//! round, and the first checkpoint after each restore uploads only files that were not in the
//! checkpoint it was restored from.

use crate::common;

use common::s3::Root;
use common::*;
use rockpoint::{
    CancellationPolicy, CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, RestoreSource,
};

async fn resume_loop_restores_exactly_and_reuploads_nothing(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let settings = CheckpointSettings {
        retained: 2,
        cancellation: CancellationPolicy::RetainOnCancellation,
        ..CheckpointSettings::default()
    };
    let keys = 3_000;

    let coordinator =
        CheckpointCoordinator::open(store.clone(), "round-0", settings.clone()).await?;
    let mut job = TestJob::open(&dir.path().join("round-0"), 2, keys)?;
    job.write(keys * 2)?;
    // SSTs that every later round still holds (so reuse is certain, not a race with flushes).
    for b in &job.backends {
        b.flush()?;
    }
    let mut last = coordinator.checkpoint(&job.refs()).await?;
    let mut expected = job.scan()?;
    coordinator.shutdown(JobEnd::Cancelled).await?;
    drop(job);
    drop(coordinator);

    for round in 1..=3 {
        let job_id = format!("round-{round}");
        let coordinator =
            CheckpointCoordinator::open(store.clone(), &job_id, settings.clone()).await?;
        let mut job = restore_job(
            &coordinator,
            &RestoreSource::Metadata(last.path()),
            &dir.path().join(&job_id),
            2,
            keys,
            ClaimMode::NoClaim,
        )
        .await?;
        assert_eq!(
            job.scan()?,
            expected,
            "round {round}: restored state equals the checkpoint"
        );

        job.write(keys / 10)?;
        let first = coordinator.checkpoint(&job.refs()).await?;
        let should_upload = new_bytes(&first.metadata, &[&last.metadata]);
        assert_eq!(
            first.uploaded_bytes(),
            should_upload,
            "round {round}: the first checkpoint after restore uploads only new files"
        );
        assert!(
            first.reused_bytes() > 0,
            "round {round}: restored files were reused"
        );
        println!(
            "round {round}: first checkpoint after restore uploaded {} bytes, reused {} bytes",
            first.uploaded_bytes(),
            first.reused_bytes()
        );
        expected = job.scan()?;
        last = first;
        coordinator.shutdown(JobEnd::Cancelled).await?;
        // Retain on cancellation: the checkpoint still restores after the job is gone.
        assert_eq!(
            restore_scan(&*store, &last.path(), dir.path()).await?,
            expected
        );
    }
    Ok(())
}

/// Regression (found while building the cancellation tests): RocksDB flushed the replayed WAL into new
/// SSTs when a restored backend opened, so the first checkpoint after a restore uploaded the
/// restored memtable's data again under new hashes. Restored backends now keep their WAL
/// (`avoid_flush_during_recovery`) and reuse its segments.
async fn first_checkpoint_after_restore_reuploads_no_restored_data(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let a = CheckpointCoordinator::open(store.clone(), "a", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 1, 2_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    job.write(1_000)?; // these stay in the memtable: the checkpoint ships them as WAL
    let source = a.checkpoint(&job.refs()).await?;
    let restored_wal: u64 = source.metadata.backends[0]
        .log_files
        .iter()
        .filter(|l| l.local_name.ends_with(".log"))
        .map(|l| l.size())
        .sum();
    assert!(
        restored_wal > 50_000,
        "the source checkpoint holds unflushed data in its WAL"
    );

    let b = CheckpointCoordinator::open(store.clone(), "b", CheckpointSettings::default()).await?;
    let job_b = restore_job(
        &b,
        &RestoreSource::Metadata(source.path()),
        &dir.path().join("b"),
        1,
        2_000,
        ClaimMode::NoClaim,
    )
    .await?;
    let first = b.checkpoint(&job_b.refs()).await?;
    // Everything but the MANIFEST, which RocksDB rewrites on open.
    let source_hashes: std::collections::BTreeSet<_> = source.metadata.backends[0]
        .shared_files
        .iter()
        .map(|f| f.hash)
        .chain(
            source.metadata.backends[0]
                .log_files
                .iter()
                .filter(|l| l.local_name.ends_with(".log"))
                .flat_map(|l| l.segments.iter().map(|s| s.hash)),
        )
        .collect();
    let first_hashes: std::collections::BTreeSet<_> = first.metadata.shared_hashes().collect();
    assert!(
        source_hashes.is_subset(&first_hashes),
        "every restored SST and WAL segment is reused"
    );
    assert!(
        first.uploaded_bytes() < restored_wal / 4,
        "uploaded {} bytes; the restored WAL alone is {restored_wal}: restored data was uploaded again",
        first.uploaded_bytes()
    );
    Ok(())
}

crate::on_both_roots!(
    resume_loop_restores_exactly_and_reuploads_nothing,
    first_checkpoint_after_restore_reuploads_no_restored_data,
);
