//! What `rockpoint::metrics` publishes equals the library's own figures: every completed checkpoint
//! and savepoint (`CompletedCheckpoint`, its metadata, `CheckpointMetrics`), failed, dropped and
//! aborted checkpoints (by reason), restores with and without a coordinator (bytes and files of the
//! checkpoint restored), and a GC pass (`GcReport`).
//!
//! The recorder is thread-local (`metrics::with_local_recorder`) around a current-thread runtime,
//! so the tests of this binary, which share one process, never see each other's figures.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, CompletedCheckpoint, RestoreSource,
    RestoreTarget, SnapshotKind,
};

use crate::common;
use common::*;

/// A metric's name and labels, sorted: `name{a=x,b=y}`.
type Published = BTreeMap<String, DebugValue>;

/// Runs `work` on a current-thread runtime with a recorder of its own, and returns what it
/// published.
fn recorded<T>(work: impl Future<Output = TestResult<T>>) -> TestResult<(T, Published)> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = metrics::with_local_recorder(&recorder, || {
        rockpoint::metrics::describe();
        runtime.block_on(work)
    })?;
    drop(runtime);
    let mut published = Published::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        published.insert(format!("{}{{{}}}", key.name(), labels.join(",")), value);
    }
    Ok((out, published))
}

fn counter(published: &Published, key: &str) -> u64 {
    match published.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        None => 0,
        Some(other) => panic!("{key} is not a counter: {other:?}"),
    }
}

fn gauge(published: &Published, key: &str) -> f64 {
    match published.get(key) {
        Some(DebugValue::Gauge(v)) => v.0,
        other => panic!("{key} is not a published gauge: {other:?}"),
    }
}

fn histogram(published: &Published, key: &str) -> Vec<f64> {
    match published.get(key) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.0).collect(),
        None => Vec::new(),
        Some(other) => panic!("{key} is not a histogram: {other:?}"),
    }
}

/// `Unavailable` → `unavailable`, `NotFound` → `not_found`: the documented `reason` label.
fn reason(kind: rockpoint::ErrorKind) -> String {
    let mut out = String::new();
    for (i, c) in format!("{kind:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The library's figures of what the first test did, to compare with what it published.
struct Figures {
    checkpoints: Vec<CompletedCheckpoint>,
    savepoint: CompletedCheckpoint,
    coordinator_metrics: rockpoint::CheckpointMetrics,
    failure: rockpoint::ErrorKind,
    /// Per restore outside a job: (bytes, files) of the handle restored.
    restored: Vec<(u64, u64)>,
    restore_wall: std::time::Duration,
    /// Bytes and files of every backend of the checkpoint the second job restored.
    job_restored: (u64, u64),
    gc: rockpoint::GcReport,
}

fn handle_size(handle: &rockpoint::BackendHandle) -> (u64, u64) {
    let files = handle.shared_files.len() + handle.log_files.len() + handle.private_files.len();
    (handle.full_size_bytes(), files as u64)
}

#[test]
fn published_metrics_equal_the_library_figures() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (figures, published) = recorded(async {
        let (store, faults) = with_hook(
            local_store(&dir.path().join("root"))?,
            UploadFaults::default(),
        );
        let coordinator =
            CheckpointCoordinator::open(store.clone(), "metrics-a", CheckpointSettings::default())
                .await?;
        let keys = 3_000;
        let mut job = TestJob::open(&dir.path().join("job"), 2, keys)?;
        let mut checkpoints = Vec::new();
        for round in 0..3 {
            job.write(if round == 0 { keys * 2 } else { keys / 5 })?;
            checkpoints.push(coordinator.checkpoint(&job.refs()).await?);
        }
        let savepoint = coordinator.savepoint(&job.refs()).await?;
        // A checkpoint whose uploads fail after the first landed (a shared file GC removes):
        // published once, with its error's kind as reason.
        job.write(keys * 2)?;
        faults.fail_uploads_after.store(
            faults.uploads_started.load(Ordering::SeqCst) + 1,
            Ordering::SeqCst,
        );
        let failed = coordinator
            .checkpoint(&job.refs())
            .await
            .expect_err("its uploads fail");
        faults.fail_uploads_after.store(u64::MAX, Ordering::SeqCst);
        let coordinator_metrics = coordinator.metrics();

        // Restores outside any job, one per backend of the last checkpoint.
        let latest = checkpoints
            .last()
            .expect("three checkpoints")
            .metadata
            .clone();
        let started = std::time::Instant::now();
        let mut restored = Vec::new();
        for (i, handle) in latest.backends.iter().enumerate() {
            let target = RestoreTarget {
                dir: dir.path().join(format!("restore-{i}")),
                key_groups: handle.key_groups,
                settings: settings(),
            };
            let source = RestoreSource::Metadata(latest.metadata_path());
            rockpoint::restore_backend(&*store, &source, &target, 4, None).await?;
            restored.push(handle_size(handle));
        }
        let restore_wall = started.elapsed();
        // A coordinator's restore, labelled with the restoring job.
        let second =
            CheckpointCoordinator::open(store.clone(), "metrics-b", CheckpointSettings::default())
                .await?;
        let source = RestoreSource::Metadata(latest.metadata_path());
        restore_job(
            &second,
            &source,
            &dir.path().join("job-b"),
            2,
            keys,
            ClaimMode::NoClaim,
        )
        .await?;
        let job_restored = latest
            .backends
            .iter()
            .map(handle_size)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        second.shutdown(rockpoint::JobEnd::Suspended).await?;

        // Subsumed checkpoints and the failed one left shared files only GC deletes.
        let gc = gc_now(&*store).await?;
        coordinator.shutdown(rockpoint::JobEnd::Suspended).await?;
        Ok(Figures {
            checkpoints,
            savepoint,
            coordinator_metrics,
            failure: failed.kind(),
            restored,
            restore_wall,
            job_restored,
            gc,
        })
    })?;

    let checkpoint = "job=metrics-a,kind=checkpoint";
    let savepoint = "job=metrics-a,kind=savepoint";
    let name = |metric: &str, labels: &str| format!("{metric}{{{labels}}}");
    // Completions: the coordinator's own count.
    let completed = |labels| {
        counter(
            &published,
            &name("rockpoint_checkpoints_completed_total", labels),
        )
    };
    assert_eq!(completed(checkpoint), 3);
    assert_eq!(completed(savepoint), 1);
    assert_eq!(
        completed(checkpoint) + completed(savepoint),
        figures.coordinator_metrics.completed
    );
    // Durations and pauses, every observation, in order.
    let all = || figures.checkpoints.iter();
    assert_eq!(
        histogram(
            &published,
            &name("rockpoint_checkpoint_duration_seconds", checkpoint)
        ),
        all().map(|c| c.duration.as_secs_f64()).collect::<Vec<_>>()
    );
    assert_eq!(
        histogram(
            &published,
            &name("rockpoint_checkpoint_duration_seconds", savepoint)
        ),
        [figures.savepoint.duration.as_secs_f64()]
    );
    let pauses: Vec<f64> = all()
        .flat_map(|c| {
            c.metadata
                .backends
                .iter()
                .map(|b| b.sync_pause_us as f64 / 1e6)
        })
        .collect();
    assert_eq!(
        histogram(
            &published,
            &name("rockpoint_checkpoint_sync_pause_seconds", checkpoint)
        ),
        pauses
    );
    let published_pauses = pauses.len() as u64
        + histogram(
            &published,
            &name("rockpoint_checkpoint_sync_pause_seconds", savepoint),
        )
        .len() as u64;
    assert_eq!(
        published_pauses,
        figures.coordinator_metrics.sync_pause_us.len()
    );
    // Every checkpoint's longest pause is `CompletedCheckpoint::sync_pause`.
    for c in all() {
        let longest = c
            .metadata
            .backends
            .iter()
            .map(|b| b.sync_pause_us)
            .max()
            .unwrap();
        assert_eq!(c.sync_pause.as_micros() as u64, longest);
    }
    // Sizes of the last one.
    let last = &figures.checkpoints[2];
    assert_eq!(
        gauge(
            &published,
            &name("rockpoint_checkpoint_checkpointed_size_bytes", checkpoint)
        ),
        last.metadata.checkpointed_size_bytes as f64
    );
    assert_eq!(
        gauge(
            &published,
            &name("rockpoint_checkpoint_full_size_bytes", checkpoint)
        ),
        last.metadata.full_size_bytes as f64
    );
    assert_eq!(
        gauge(
            &published,
            &name("rockpoint_checkpoint_full_size_bytes", savepoint)
        ),
        figures.savepoint.metadata.full_size_bytes as f64
    );
    // Files and bytes, uploaded and reused.
    let sum = |f: fn(&rockpoint::BackendHandle) -> u64| -> u64 {
        all().flat_map(|c| c.metadata.backends.iter()).map(f).sum()
    };
    let total = |metric| counter(&published, &name(metric, checkpoint));
    assert_eq!(
        total("rockpoint_checkpoint_uploaded_files_total"),
        sum(|b| b.uploaded_files)
    );
    assert_eq!(
        total("rockpoint_checkpoint_reused_files_total"),
        sum(|b| b.reused_files)
    );
    assert_eq!(
        total("rockpoint_checkpoint_uploaded_bytes_total"),
        all().map(|c| c.uploaded_bytes()).sum::<u64>()
    );
    assert_eq!(
        total("rockpoint_checkpoint_reused_bytes_total"),
        all().map(|c| c.reused_bytes()).sum::<u64>()
    );
    assert!(
        total("rockpoint_checkpoint_reused_bytes_total") > 0,
        "later checkpoints reuse files"
    );
    // The failure: once, under its error's kind; the coordinator counted its abort.
    let failures = name(
        "rockpoint_checkpoint_failures_total",
        &format!("{checkpoint},reason={}", reason(figures.failure)),
    );
    assert_eq!(counter(&published, &failures), 1, "{published:#?}");
    let all_failures: u64 = published
        .iter()
        .filter(|(k, _)| k.starts_with("rockpoint_checkpoint_failures_total"))
        .map(|(k, _)| counter(&published, k))
        .sum();
    assert_eq!(all_failures, 1);
    assert!(figures.coordinator_metrics.aborted >= 1);

    // Restores outside a job: labelled with the source's job and kind.
    let restore_durations = histogram(
        &published,
        &name("rockpoint_restore_duration_seconds", checkpoint),
    );
    assert_eq!(restore_durations.len(), figures.restored.len());
    assert!(restore_durations.iter().sum::<f64>() <= figures.restore_wall.as_secs_f64());
    assert_eq!(
        counter(
            &published,
            &name("rockpoint_restored_bytes_total", checkpoint)
        ),
        figures.restored.iter().map(|r| r.0).sum::<u64>()
    );
    assert_eq!(
        counter(
            &published,
            &name("rockpoint_restored_files_total", checkpoint)
        ),
        figures.restored.iter().map(|r| r.1).sum::<u64>()
    );
    // A coordinator's restore: labelled with the restoring job.
    let job_b = "job=metrics-b,kind=checkpoint";
    assert_eq!(
        histogram(
            &published,
            &name("rockpoint_restore_duration_seconds", job_b)
        )
        .len(),
        1
    );
    assert_eq!(
        counter(&published, &name("rockpoint_restored_bytes_total", job_b)),
        figures.job_restored.0
    );
    assert_eq!(
        counter(&published, &name("rockpoint_restored_files_total", job_b)),
        figures.job_restored.1
    );

    // The GC pass.
    let gc = &figures.gc;
    assert!(
        !gc.shared_files.is_empty(),
        "subsumption and the failure left shared files: {gc:?}"
    );
    assert_eq!(counter(&published, "rockpoint_gc_passes_total{}"), 1);
    assert_eq!(
        counter(&published, "rockpoint_gc_deleted_bytes_total{}"),
        gc.reclaimed_bytes
    );
    for (category, files) in [
        ("shared", gc.shared_files.len()),
        ("private", gc.private_files.len()),
        ("pin", gc.pins.len()),
        ("incomplete", gc.incomplete.len()),
    ] {
        assert_eq!(
            counter(
                &published,
                &format!("rockpoint_gc_deleted_files_total{{category={category}}}")
            ),
            files as u64,
            "{category}"
        );
    }
    Ok(())
}

/// A `checkpoint()` future dropped mid-upload is published as `dropped`, a ticket the caller
/// aborts as `cancelled`, a trigger refused for too many in flight as `busy`; none as completed.
#[test]
fn checkpoints_that_end_without_commit_are_published_by_reason() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ((), published) = recorded(async {
        let (store, faults) = with_hook(
            local_store(&dir.path().join("root"))?,
            UploadFaults::default(),
        );
        let coordinator =
            CheckpointCoordinator::open(store.clone(), "metrics-c", CheckpointSettings::default())
                .await?;
        let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
        job.write(2_000)?;
        // Dropped while its upload is held.
        faults.close_gate();
        let backends = job.refs();
        tokio::select! {
            _ = coordinator.checkpoint(&backends) => panic!("the upload is held"),
            _ = faults.wait_for_uploads(1) => {}
        }
        faults.open_gate();
        // The dropped future's cleanup frees its slot; this one waits for it.
        let ticket = coordinator.trigger(SnapshotKind::Checkpoint);
        let ticket = match ticket {
            Ok(ticket) => ticket,
            Err(e) if e.kind() == rockpoint::ErrorKind::Busy => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                coordinator.trigger(SnapshotKind::Checkpoint)?
            }
            Err(e) => return Err(e.into()),
        };
        // Too many in flight.
        let busy = coordinator
            .checkpoint(&job.refs())
            .await
            .expect_err("one is in flight");
        assert_eq!(busy.kind(), rockpoint::ErrorKind::Busy);
        // Aborted by the caller.
        coordinator.abort(&ticket).await?;
        coordinator.shutdown(rockpoint::JobEnd::Suspended).await?;
        Ok(())
    })?;
    let failures = |reason: &str| {
        counter(
            &published,
            &format!(
                "rockpoint_checkpoint_failures_total{{job=metrics-c,kind=checkpoint,reason={reason}}}"
            ),
        )
    };
    assert_eq!(failures("dropped"), 1, "{published:#?}");
    assert_eq!(failures("busy"), 1);
    assert_eq!(failures("cancelled"), 1);
    assert_eq!(
        counter(
            &published,
            "rockpoint_checkpoints_completed_total{job=metrics-c,kind=checkpoint}"
        ),
        0
    );
    Ok(())
}
