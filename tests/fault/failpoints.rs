//! Named fault points at each protocol step (fail-parallel, one registry per coordinator so tests
//! run in parallel): an injected error or "disk full" at every step leaves the previous checkpoint
//! restorable and, after recovery and GC, exactly the referenced files; pauses script the races of
//! cancel during upload, subsumption while a pending checkpoint reuses files, and GC during an
//! uncommitted upload; a panic mid-commit is recovered by the next coordinator.

use crate::common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::checking::{DeleteChecker, shared};
use common::*;
use rockpoint::testing::{FailPointRegistry, FaultRegistry};
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, GcOptions, JobEnd, Store, SweepMode,
    collect_garbage,
};

const POINTS: &[&str] = &[
    "snapshot::before_link",
    "snapshot::before_hash",
    "snapshot::before_pin",
    "snapshot::after_pin",
    "snapshot::before_upload",
    "snapshot::after_upload",
    "commit::before_metadata",
    "commit::after_metadata",
    "commit::after_record",
    "subsume::before_discard",
    "discard::after_metadata",
];

fn settings(retained: usize, max_concurrent: usize) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        max_concurrent,
        ..CheckpointSettings::default()
    }
}

async fn coordinator(
    store: &Arc<dyn Store>,
    registry: &Arc<FailPointRegistry>,
    s: CheckpointSettings,
) -> rockpoint::Result<CheckpointCoordinator> {
    CheckpointCoordinator::builder(store.clone(), "job")
        .settings(s)
        .faults(FaultRegistry::new(registry.clone()))
        .open()
        .await
}

/// Recovery + GC, then: the newest committed checkpoint restores to `expected` (one of the oracles),
/// exactly the referenced shared files remain, and a second GC deletes nothing.
async fn check_after_recovery(
    store: &Arc<dyn Store>,
    oracles: &[(String, Scan)],
    base: &std::path::Path,
) -> TestResult {
    let c = CheckpointCoordinator::open(store.clone(), "job", settings(1, 2)).await?;
    let gc = GcOptions {
        grace_period: Duration::ZERO,
        mode: SweepMode::Delete,
        incomplete_min_age: Duration::ZERO,
        ..GcOptions::default()
    };
    collect_garbage(&**store, &gc).await?;
    let latest = c.latest().expect("a checkpoint survives");
    let oracle = oracles
        .iter()
        .find(|(path, _)| *path == latest.metadata_path())
        .map(|(_, scan)| scan)
        .expect("the latest committed checkpoint was taken by the test");
    assert_eq!(
        &restore_scan(&**store, &latest.metadata_path(), base).await?,
        oracle
    );
    let (referenced, present) = shared_sets(&**store).await?;
    assert_eq!(referenced, present);
    assert!(collect_garbage(&**store, &gc).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_or_full_disk_at_any_step_leaves_a_restorable_root() -> TestResult {
    let mut injected = 0;
    for point in POINTS {
        for action in ["1*return(io)", "1*return(nospace)"] {
            let dir = tempfile::tempdir()?;
            let (store, checker) = with_hook(
                local_store(&dir.path().join("root"))?,
                DeleteChecker::default(),
            );
            let registry = Arc::new(FailPointRegistry::new());
            let c = coordinator(&store, &registry, settings(1, 2)).await?;
            let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
            job.write(2_000)?;
            let mut oracles = Vec::new();
            let first = c.checkpoint(&job.refs()).await?;
            oracles.push((first.path(), job.scan()?));
            job.write(1_500)?;
            for b in &job.backends {
                b.flush()?;
            }
            fail_parallel::cfg(registry.clone(), *point, action)
                .map_err(|e| format!("{point}: {e}"))?;
            // The next checkpoint id is 2; its oracle is the state now.
            oracles.push((
                "jobs/job/chk-00000000000000000002/_metadata".to_owned(),
                job.scan()?,
            ));
            // Before the commit point the checkpoint fails; after it, it is complete (the error, if
            // any, reports the failed cleanup).
            let outcome = c.checkpoint(&job.refs()).await;
            // The commit point is the job record's swap (C4), after the metadata is written.
            let before_commit = point.starts_with("snapshot::")
                || *point == "commit::before_metadata"
                || *point == "commit::after_metadata";
            match &outcome {
                Err(err) => {
                    assert_ne!(err.kind(), ErrorKind::Corruption, "{point}: {err}");
                    if action.contains("nospace") {
                        let text = err.to_string();
                        assert!(
                            text.contains("space") || text.contains("full"),
                            "{point}: {err}"
                        );
                    }
                }
                Ok(_) => assert!(
                    !before_commit,
                    "{point} with {action} must fail the checkpoint"
                ),
            }
            let committed = rockpoint::admin::job_record(&*store, "job")
                .await?
                .is_some_and(|record| record.is_complete(2));
            assert_eq!(
                committed, !before_commit,
                "{point}: committed iff the fault came after the commit point"
            );
            fail_parallel::cfg(registry.clone(), *point, "off")?;
            // The job goes on: the next checkpoint works.
            job.write(100)?;
            let third = c.checkpoint(&job.refs()).await?;
            oracles.push((third.path(), job.scan()?));
            drop(c);
            check_after_recovery(&store, &oracles, dir.path())
                .await
                .map_err(|e| format!("{point} {action}: {e}"))?;
            assert!(
                checker.violations().is_empty(),
                "{point}: {:?}",
                checker.violations()
            );
            injected += 1;
        }
    }
    println!("fault points: {injected} injected errors, 0 violations");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_upload_aborts_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, checker) = with_hook(
        local_store(&dir.path().join("root"))?,
        DeleteChecker::default(),
    );
    let registry = Arc::new(FailPointRegistry::new());
    let c = coordinator(&store, &registry, settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(2_000)?;
    let first = c.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;
    let before = objects(&*store).await?;
    job.write(2_000)?;
    fail_parallel::cfg(registry.clone(), "snapshot::before_upload", "pause")?;
    let running = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move { c.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
    };
    let cancel = {
        let c = c.clone();
        tokio::spawn(async move { c.shutdown(JobEnd::Cancelled).await })
    };
    // Shut down (every in-flight checkpoint cancelled) before the paused upload may go on.
    while !c.is_shut_down() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fail_parallel::cfg(registry.clone(), "snapshot::before_upload", "off")?;
    let outcome = running.await?;
    let err = outcome.expect_err("the checkpoint was cancelled");
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    cancel.await??;
    assert_eq!(
        objects(&*store).await?,
        before,
        "the cancelled checkpoint left nothing"
    );
    assert_eq!(
        restore_scan(&*store, &first.path(), dir.path()).await?,
        expected
    );
    assert!(
        checker.violations().is_empty(),
        "{:?}",
        checker.violations()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subsumption_while_a_paused_checkpoint_reuses_the_same_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, checker) = with_hook(
        local_store(&dir.path().join("root"))?,
        DeleteChecker::default(),
    );
    let registry = Arc::new(FailPointRegistry::new());
    let c = coordinator(&store, &registry, settings(1, 2)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(3_000)?;
    for b in &job.backends {
        b.flush()?;
    }
    let first = c.checkpoint(&job.refs()).await?; // 1: its SSTs are reused by 2
    // Checkpoint 2 pauses right after pinning the files it reuses (one evaluation per backend
    // snapshot, so the single pause is certainly its own).
    job.write(50)?;
    fail_parallel::cfg(registry.clone(), "snapshot::after_pin", "1*pause")?;
    let paused = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move { c.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
    };
    while store
        .list("pins/job/chk-00000000000000000002-")
        .await?
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Checkpoint 3, after the state was rewritten and compacted, completes and subsumes 1 (and the
    // older pending 2): 1's files go, except while 2's pin lists them.
    job.write(6_000)?;
    for b in &job.backends {
        b.flush()?;
        b.compact()?;
    }
    let third = c.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;
    let kept: HashSet<_> = third.metadata.shared_hashes().collect();
    let only_first: Vec<_> = first
        .metadata
        .shared_hashes()
        .filter(|h| !kept.contains(h))
        .collect();
    assert!(
        !only_first.is_empty(),
        "compaction left 1 with files 3 does not reference: only 2's pin protects them"
    );
    for hash in &only_first {
        assert!(
            store.head(&shared(hash)).await?.is_some(),
            "1 was discarded but 2's pin still lists {hash:?}"
        );
    }
    fail_parallel::cfg(registry.clone(), "snapshot::after_pin", "off")?;
    let second = paused.await?;
    assert_eq!(
        second.err().map(|e| e.kind()),
        Some(ErrorKind::Cancelled),
        "2 was subsumed"
    );
    assert!(
        checker.violations().is_empty(),
        "{:?}",
        checker.violations()
    );
    assert_eq!(
        restore_scan(&*store, &third.path(), dir.path()).await?,
        expected
    );
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(referenced, present);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_during_a_paused_upload_keeps_what_it_pinned() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let (store, checker) = with_hook(local_store(&root)?, DeleteChecker::default());
    let registry = Arc::new(FailPointRegistry::new());
    let c = coordinator(&store, &registry, settings(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(3_000)?;
    fail_parallel::cfg(registry.clone(), "snapshot::after_upload", "1*pause")?;
    let paused = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move { c.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected = job.scan()?;
    // Make the uploaded files look old: only the pin protects them now.
    let aged = std::time::SystemTime::now() - Duration::from_secs(7200);
    for object in store.list("shared/").await? {
        std::fs::File::options()
            .write(true)
            .open(root.join(&object.path))?
            .set_modified(aged)?;
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
    assert!(gc.shared_files.is_empty(), "{gc:?}");
    fail_parallel::cfg(registry.clone(), "snapshot::after_upload", "off")?;
    let done = paused.await??;
    assert_eq!(
        restore_scan(&*store, &done.path(), dir.path()).await?,
        expected
    );
    assert!(
        checker.violations().is_empty(),
        "{:?}",
        checker.violations()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_mid_commit_is_recovered_by_the_next_coordinator() -> TestResult {
    for point in [
        "commit::before_metadata",
        "commit::after_metadata",
        "commit::after_record",
        "discard::after_metadata",
    ] {
        let dir = tempfile::tempdir()?;
        let store = local_store(&dir.path().join("root"))?;
        let registry = Arc::new(FailPointRegistry::new());
        let c = coordinator(&store, &registry, settings(1, 1)).await?;
        let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
        job.write(2_000)?;
        let first = c.checkpoint(&job.refs()).await?;
        let mut oracles = vec![(first.path(), job.scan()?)];
        job.write(2_000)?;
        oracles.push((
            "jobs/job/chk-00000000000000000002/_metadata".to_owned(),
            job.scan()?,
        ));
        fail_parallel::cfg(registry.clone(), point, "panic")?;
        let crashed = {
            let c = c.clone();
            let backends = job.backends.clone();
            tokio::spawn(async move { c.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
        };
        assert!(crashed.await.is_err(), "{point}: the task panicked");
        drop(c);
        check_after_recovery(&store, &oracles, dir.path())
            .await
            .map_err(|e| format!("{point}: {e}"))?;
    }
    Ok(())
}
