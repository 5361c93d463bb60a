//! Resume loop: retain on cancel → drop everything in memory → restore from the checkpoint's path
//! into a new job → write more → checkpoint → cancel, three rounds. The state is verified each
//! round, and the first checkpoint after each restore uploads only files that were not in the
//! checkpoint it was restored from.

mod common;

use common::*;
use rockpoint::{
    CancellationPolicy, CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, RestoreSource,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_loop_restores_exactly_and_reuploads_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
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
