//! Rescaling restore: a checkpoint taken at one parallelism restored at another. The union of the
//! restored backends' full scans must equal the oracle (the source job's scan), every backend
//! must hold only its own key groups (a row in two backends fails `scan_backends`), and a clipped
//! key group must stay gone after later writes, compactions, checkpoints and restores.

use crate::common;

use std::path::Path;

use common::s3::Root;
use common::*;
use rockpoint::restore::{RestoreRoute, plan_restore};
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, ErrorKind, KeyGroupRange, RestoreSource,
    RestoreTarget, Store,
};

/// Restores `source` at `parallelism` outside any job (one `restore_backend` per target).
async fn restore_at(
    store: &dyn Store,
    source: &RestoreSource,
    base: &Path,
    parallelism: u32,
) -> TestResult<TestJob> {
    let mut backends = Vec::new();
    let mut dirs = Vec::new();
    for (i, key_groups) in ranges(parallelism).into_iter().enumerate() {
        let dir = base.join(format!("p{parallelism}-{i}-{}", rockpoint_test_nonce()));
        let target = RestoreTarget {
            dir: dir.clone(),
            key_groups,
            settings: settings(),
        };
        backends.push(rockpoint::restore_backend(store, source, &target, 4, None).await?);
        dirs.push(dir);
    }
    Ok(TestJob::from_backends(backends, dirs, 0))
}

/// A job at `parallelism` with updates, deletes, flushed SSTs and unflushed log tails, checkpointed
/// once; returns its coordinator, the job and the checkpoint's source reference.
async fn source_job(
    store: std::sync::Arc<dyn Store>,
    base: &Path,
    job_id: &str,
    parallelism: u32,
) -> TestResult<(CheckpointCoordinator, TestJob, RestoreSource)> {
    let mut job = TestJob::open(&base.join(job_id), parallelism, 3_000)?;
    job.write(6_000)?;
    for backend in &job.backends {
        backend.flush()?;
    }
    job.delete(300)?;
    job.write(1_500)?; // stays in memtables and logs
    let c = CheckpointCoordinator::open(store, job_id, CheckpointSettings::default()).await?;
    let done = c.checkpoint(&job.refs()).await?;
    let source = RestoreSource::Metadata(done.metadata.metadata_path());
    Ok((c, job, source))
}

async fn rescale_case(from: u32, to: u32) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_c, job, source) = source_job(store.clone(), dir.path(), "src", from).await?;
    let oracle = job.scan()?;
    assert!(
        oracle.len() > 1_000,
        "the oracle holds {} rows",
        oracle.len()
    );
    let restored = restore_at(&*store, &source, dir.path(), to).await?;
    assert_in_own_key_groups(&restored.backends)?;
    assert!(
        restored.scan()? == oracle,
        "{from} -> {to}: the union of the restored scans differs from the oracle"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescale_1_to_3_equals_the_oracle() -> TestResult {
    rescale_case(1, 3).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescale_4_to_2_equals_the_oracle() -> TestResult {
    rescale_case(4, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescale_3_to_5_equals_the_oracle() -> TestResult {
    rescale_case(3, 5).await
}

/// 128 key groups per backend to 1 (parallelism 1 → 128, every target clipped from one source)
/// and back (128 → 1, one base and 127 copies merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescale_128_key_groups_per_backend_to_1_and_back_equals_the_oracle() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_c, job, source) = source_job(store.clone(), dir.path(), "src", 1).await?;
    let oracle = job.scan()?;
    let wide = restore_at(&*store, &source, dir.path(), MAX_PARALLELISM).await?;
    assert_in_own_key_groups(&wide.backends)?;
    assert!(wide.scan()? == oracle, "1 -> 128 differs from the oracle");
    // Checkpoint the 128 backends, then merge them back into one.
    let c =
        CheckpointCoordinator::open(store.clone(), "wide", CheckpointSettings::default()).await?;
    let done = c.checkpoint(&wide.refs()).await?;
    assert_eq!(done.metadata.backends.len(), 128);
    let source = RestoreSource::Metadata(done.metadata.metadata_path());
    let (_, metadata) = rockpoint::restore::read_metadata(&*store, &source).await?;
    match plan_restore(&metadata, KeyGroupRange::all(MAX_PARALLELISM)?)? {
        RestoreRoute::Merge { copied, .. } => assert_eq!(copied.len(), 127),
        other => panic!("128 -> 1 should merge, planned {other:?}"),
    }
    let narrow = restore_at(&*store, &source, dir.path(), 1).await?;
    assert_in_own_key_groups(&narrow.backends)?;
    assert!(narrow.scan()? == oracle, "128 -> 1 differs from the oracle");
    Ok(())
}

/// Routes: exact where a backend matches, clip inside one backend, merge across several with the
/// biggest share as base; refusals name the ranges the checkpoint has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_are_chosen_per_target_and_bad_ranges_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_c, _job, source) = source_job(store.clone(), dir.path(), "src", 4).await?;
    let (_, metadata) = rockpoint::restore::read_metadata(&*store, &source).await?;
    let kg = |a, b| KeyGroupRange::new(a, b).unwrap();
    assert_eq!(plan_restore(&metadata, kg(32, 64))?, RestoreRoute::Exact);
    assert_eq!(
        plan_restore(&metadata, kg(40, 50))?,
        RestoreRoute::Clip { source: kg(32, 64) }
    );
    assert_eq!(
        plan_restore(&metadata, kg(10, 40))?,
        RestoreRoute::Merge {
            base: kg(0, 32),
            copied: vec![kg(32, 64)]
        }
    );
    let err = plan_restore(&metadata, kg(0, 129)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("0..32"), "{err}");

    // A checkpoint whose backends leave key groups out cannot restore them.
    let partial_dir = dir.path().join("partial");
    let backends = vec![rockpoint::KeyedStateBackend::open(
        partial_dir.join("b0"),
        MAX_PARALLELISM,
        kg(0, 32),
        settings(),
    )?];
    let partial = TestJob::from_backends(backends, vec![partial_dir.join("b0")], 100);
    let key = (0u64..)
        .find(|k| rockpoint::key_group_of(&rmp_serde::to_vec(k).unwrap(), MAX_PARALLELISM) < 32)
        .unwrap();
    partial.backends[0].state(&VALUES)?.put(&key, &vec![1])?;
    let c = CheckpointCoordinator::open(store.clone(), "partial", CheckpointSettings::default())
        .await?;
    let done = c.checkpoint(&partial.refs()).await?;
    let err = plan_restore(&done.metadata, kg(0, 64)).unwrap_err();
    assert!(err.to_string().contains("only 32 of the 64"), "{err}");

    // Overlapping targets of one restore are refused before anything is written.
    let targets: Vec<RestoreTarget> = [kg(0, 40), kg(30, 128)]
        .into_iter()
        .enumerate()
        .map(|(i, key_groups)| RestoreTarget {
            dir: dir.path().join(format!("overlap-{i}")),
            key_groups,
            settings: settings(),
        })
        .collect();
    let c =
        CheckpointCoordinator::open(store.clone(), "dst", CheckpointSettings::default()).await?;
    let err = c
        .restore(&source, &targets, ClaimMode::NoClaim)
        .await
        .err()
        .expect("overlapping targets");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(!dir.path().join("overlap-0").exists());
    Ok(())
}

/// A job restored at another parallelism (without claim) checkpoints only what is new: its base
/// files are reused, not uploaded again; its metadata records the new ranges and its source.
/// A key group clipped away never comes back: not after writes, compaction and checkpoints, and
/// not when that checkpoint is restored again at yet another parallelism.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clipped_key_groups_never_reappear_and_the_first_checkpoint_after_a_rescale_is_incremental()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_c, job, source) = source_job(store.clone(), dir.path(), "src", 2).await?;
    let oracle = job.scan()?;
    let c = CheckpointCoordinator::open(store.clone(), "rescaled", CheckpointSettings::default())
        .await?;
    let mut rescaled = restore_job(
        &c,
        &source,
        &dir.path().join("rescaled"),
        4,
        3_000,
        ClaimMode::NoClaim,
    )
    .await?;
    assert_in_own_key_groups(&rescaled.backends)?;
    assert!(rescaled.scan()? == oracle);
    let first = c.checkpoint(&rescaled.refs()).await?;
    let ranges_recorded: Vec<KeyGroupRange> = first
        .metadata
        .backends
        .iter()
        .map(|b| b.key_groups)
        .collect();
    assert_eq!(ranges_recorded, ranges(4));
    let RestoreSource::Metadata(source_path) = &source else {
        unreachable!()
    };
    assert_eq!(
        first.metadata.restored_from.as_deref(),
        Some(&source_path[..])
    );
    // Each source backend's SSTs are reused by the two targets clipped from it.
    let uploaded = first.metadata.checkpointed_size_bytes;
    let full = first.metadata.full_size_bytes;
    println!("first checkpoint after 2 -> 4: uploaded {uploaded} of {full} bytes");
    assert!(
        uploaded * 4 < full,
        "the first checkpoint after a rescale uploaded {uploaded} of {full} bytes"
    );

    // Later writes, a full compaction, more checkpoints.
    rescaled.write(2_000)?;
    for backend in &rescaled.backends {
        backend.flush()?;
        backend.compact()?;
    }
    assert_in_own_key_groups(&rescaled.backends)?;
    c.checkpoint(&rescaled.refs()).await?;
    rescaled.write(500)?;
    let last = c.checkpoint(&rescaled.refs()).await?;
    let oracle = rescaled.scan()?;
    let last_source = RestoreSource::Metadata(last.metadata.metadata_path());
    // Restored exactly, each backend still holds only its own key groups; merged into 1 and split
    // into 3, the union is the oracle (a clipped row that came back would be a second copy of a
    // row, or a row the oracle lacks).
    for parallelism in [4, 1, 3] {
        let again = restore_at(&*store, &last_source, dir.path(), parallelism).await?;
        assert_in_own_key_groups(&again.backends)?;
        assert!(
            again.scan()? == oracle,
            "restored at {parallelism}, the rescaled job's checkpoint differs from its state"
        );
    }
    Ok(())
}

/// A claim works across a rescale: the claimed checkpoint records where it came from, and the
/// source job no longer retains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rescaling_restore_with_claim_adopts_the_checkpoint_and_records_its_origin() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (src, job, source) = source_job(store.clone(), dir.path(), "src", 2).await?;
    let oracle = job.scan()?;
    drop(src);
    let c = CheckpointCoordinator::open(store.clone(), "claimer", CheckpointSettings::default())
        .await?;
    let restored = restore_job(
        &c,
        &source,
        &dir.path().join("claimer"),
        3,
        3_000,
        ClaimMode::Claim,
    )
    .await?;
    assert!(restored.scan()? == oracle);
    let claimed = c.retained();
    assert_eq!(claimed.len(), 1);
    let RestoreSource::Metadata(source_path) = &source else {
        unreachable!()
    };
    assert_eq!(claimed[0].claimed_from.as_deref(), Some(&source_path[..]));
    let next = c.checkpoint(&restored.refs()).await?;
    assert_eq!(next.metadata.backends.len(), 3);
    assert!(
        restore_at(
            &*store,
            &RestoreSource::Latest("claimer".into()),
            dir.path(),
            2
        )
        .await?
        .scan()?
            == oracle
    );
    Ok(())
}

/// The same 4 → 2 → 3 round trip on both roots (the downloads go through the store).
async fn rescale_round_trip(on: Root) -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let store = on.store(&dir.join("root")).await?;
    let (_c, job, source) = source_job(store.clone(), dir, "src", 4).await?;
    let oracle = job.scan()?;
    let two = restore_at(&*store, &source, dir, 2).await?;
    assert_in_own_key_groups(&two.backends)?;
    assert!(two.scan()? == oracle);
    let c =
        CheckpointCoordinator::open(store.clone(), "two", CheckpointSettings::default()).await?;
    let done = c.checkpoint(&two.refs()).await?;
    let three = restore_at(
        &*store,
        &RestoreSource::Metadata(done.metadata.metadata_path()),
        dir,
        3,
    )
    .await?;
    assert_in_own_key_groups(&three.backends)?;
    assert!(three.scan()? == oracle);
    Ok(())
}

crate::on_both_roots!(rescale_round_trip);
