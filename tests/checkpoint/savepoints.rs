//! Savepoints in both formats: native (RocksDB's files, incremental) and canonical (one stream of
//! entries per backend, `docs/canonical-format.md`). Both restore at any parallelism and equal the
//! oracle; neither is ever deleted by retention, cancel, claim or GC of any job; the canonical
//! stream is readable without RocksDB.

use crate::common;

use std::path::Path;

use common::s3::Root;
use common::*;
use rockpoint::canonical::CanonicalReader;
use rockpoint::format::{CANONICAL_FILE, SnapshotFormat};
use rockpoint::restore::{RestoreRoute, plan_restore};
use rockpoint::{
    CancellationPolicy, CheckpointCoordinator, CheckpointSettings, ClaimMode, ErrorKind, JobEnd,
    KeyGroupRange, RestoreSource, RestoreTarget, SnapshotKind, Store,
};

/// Restores `source` at `parallelism` outside any job and scans the backends.
async fn scan_at(
    store: &dyn Store,
    source: &RestoreSource,
    base: &Path,
    parallelism: u32,
) -> TestResult<Scan> {
    let mut backends = Vec::new();
    for (i, key_groups) in ranges(parallelism).into_iter().enumerate() {
        let target = RestoreTarget {
            dir: base.join(format!("sp-p{parallelism}-{i}-{}", rockpoint_test_nonce())),
            key_groups,
            settings: settings(),
        };
        backends.push(rockpoint::restore_backend(store, source, &target, 4, None).await?);
    }
    scan_backends(&backends)
}

fn metadata_source(done: &rockpoint::CompletedCheckpoint) -> RestoreSource {
    RestoreSource::Metadata(done.metadata.metadata_path())
}

/// A canonical savepoint of a 2-backend job restores at 3, at 1 and at 2 (its own ranges: loaded,
/// never downloaded as RocksDB files), each equal to the oracle; its streams read with the
/// public reader hold exactly the oracle's rows, in key-group order.
async fn canonical_savepoint_restores_at_any_parallelism(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    job.backends[0].flush()?;
    job.delete(200)?;
    job.write(800)?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    let done = c.savepoint_canonical(&job.refs()).await?;
    let oracle = job.scan()?;
    assert_eq!(done.metadata.kind, SnapshotKind::Savepoint);
    assert_eq!(done.metadata.format, SnapshotFormat::Canonical);
    for backend in &done.metadata.backends {
        assert!(backend.shared_files.is_empty() && backend.log_files.is_empty());
        assert_eq!(backend.private_files[0].local_name, CANONICAL_FILE);
    }
    // Later writes are not in it.
    job.write(500)?;
    let source = metadata_source(&done);
    let (_, metadata) = rockpoint::restore::read_metadata(&*store, &source).await?;
    assert!(matches!(
        plan_restore(&metadata, KeyGroupRange::all(MAX_PARALLELISM)?)?,
        RestoreRoute::Load { .. }
    ));
    for parallelism in [3, 1, 2] {
        let scan = scan_at(&*store, &source, dir.path(), parallelism).await?;
        assert!(
            scan == oracle,
            "canonical savepoint at {parallelism} differs from the oracle"
        );
    }
    // The documented reader, on the raw streams.
    let mut rows = Scan::new();
    for backend in &metadata.backends {
        let bytes = store.get(&backend.private_files[0].path).await?;
        let mut reader = CanonicalReader::new(&bytes[..])?;
        assert_eq!(reader.header().key_groups, backend.key_groups);
        let states: Vec<String> = reader
            .header()
            .states
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let mut last: Option<(usize, u32)> = None;
        while let Some(entry) = reader.next_entry()? {
            let ordered = last.is_none_or(|l| l <= (entry.state, entry.key_group));
            assert!(ordered, "entries out of order");
            last = Some((entry.state, entry.key_group));
            let mut row = (entry.key_group as u16).to_be_bytes().to_vec();
            row.extend_from_slice(&entry.key);
            row.extend_from_slice(entry.user_key.as_deref().unwrap_or_default());
            rows.insert((states[entry.state].clone(), row), entry.value);
        }
    }
    assert!(rows == oracle, "the reader's rows differ from the oracle");
    Ok(())
}

crate::on_both_roots!(canonical_savepoint_restores_at_any_parallelism);

/// A native savepoint taken at 4 restores at 2 and 5 (rescaling routes), equal to the oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_savepoint_restores_at_another_parallelism() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let mut job = TestJob::open(&dir.path().join("job"), 4, 2_000)?;
    job.write(4_000)?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    let done = c.savepoint(&job.refs()).await?;
    assert_eq!(done.metadata.format, SnapshotFormat::Native);
    let oracle = job.scan()?;
    for parallelism in [2, 5] {
        let scan = scan_at(&*store, &metadata_source(&done), dir.path(), parallelism).await?;
        assert!(scan == oracle, "native savepoint at {parallelism} differs");
    }
    Ok(())
}

/// Savepoints of both formats survive everything the engine does: retention subsuming every
/// checkpoint around them, a claim attempt (refused), the job's cancel with
/// `DeleteOnCancellation`, another job restoring from them with and without claim, and GC at
/// grace 0. They restore afterwards, equal to the state they were taken of.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn savepoints_of_both_formats_survive_retention_cancel_claims_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let settings = CheckpointSettings {
        retained: 1,
        cancellation: CancellationPolicy::DeleteOnCancellation,
        ..CheckpointSettings::default()
    };
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    let c = CheckpointCoordinator::open(store.clone(), "owner", settings.clone()).await?;
    job.write(2_000)?;
    c.checkpoint(&job.refs()).await?;
    job.write(1_000)?;
    let native = c.savepoint(&job.refs()).await?;
    let canonical = c.savepoint_canonical(&job.refs()).await?;
    let oracle = job.scan()?;
    for _ in 0..3 {
        job.write(1_000)?;
        job.delete(100)?;
        for backend in &job.backends {
            backend.flush()?;
            backend.compact()?;
        }
        c.checkpoint(&job.refs()).await?;
    }
    gc_now(&*store).await?;
    // A savepoint is never claimed.
    let other = CheckpointCoordinator::open(store.clone(), "other", settings.clone()).await?;
    for sp in [&native, &canonical] {
        let targets: Vec<RestoreTarget> = ranges(2)
            .into_iter()
            .enumerate()
            .map(|(i, key_groups)| RestoreTarget {
                dir: dir
                    .path()
                    .join(format!("claim-{i}-{}", rockpoint_test_nonce())),
                key_groups,
                settings: common::settings(),
            })
            .collect();
        let err = other
            .restore(&metadata_source(sp), &targets, ClaimMode::Claim)
            .await
            .err()
            .expect("a savepoint is never claimed");
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(err.to_string().contains("never claimed"), "{err}");
    }
    // Another job starts from the canonical savepoint without claim, checkpoints, finishes.
    let restored = restore_job(
        &other,
        &metadata_source(&canonical),
        &dir.path().join("other"),
        3,
        2_000,
        ClaimMode::NoClaim,
    )
    .await?;
    assert!(restored.scan()? == oracle);
    let first = other.checkpoint(&restored.refs()).await?;
    assert_eq!(
        first.metadata.restored_from.as_deref(),
        Some(&canonical.metadata.metadata_path()[..])
    );
    other.shutdown(JobEnd::Finished).await?;
    // The owner is cancelled with delete-on-cancellation.
    c.shutdown(JobEnd::Cancelled).await?;
    gc_now(&*store).await?;
    let again = gc_now(&*store).await?;
    assert!(
        again.shared_files.is_empty() && again.private_files.is_empty(),
        "GC twice deletes nothing the second time: {again:?}"
    );
    for sp in [&native, &canonical] {
        let scan = scan_at(&*store, &metadata_source(sp), dir.path(), 2).await?;
        assert!(
            scan == oracle,
            "a savepoint changed after retention, cancel and GC"
        );
        rockpoint::verify_checkpoint(&*store, &metadata_source(sp), 4).await?;
    }
    Ok(())
}

/// A damaged canonical stream is detected by its hash before anything is loaded: the restore
/// fails with `Corruption` and leaves no target directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_canonical_stream_is_refused_and_restores_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 500)?;
    job.write(1_000)?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    let done = c.savepoint_canonical(&job.refs()).await?;
    let stream = &done.metadata.backends[0].private_files[0].path;
    let mut bytes = store.get(stream).await?.to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    store
        .put(stream, bytes.into(), rockpoint::store::WriteMode::Replace)
        .await?;
    let target = RestoreTarget {
        dir: dir.path().join("restored"),
        key_groups: KeyGroupRange::new(0, 64)?,
        settings: settings(),
    };
    let err = rockpoint::restore_backend(&*store, &metadata_source(&done), &target, 4, None)
        .await
        .err()
        .expect("a damaged stream");
    assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
    assert!(!target.dir.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "left {leftovers:?}");
    Ok(())
}
