//! Hostile schedules against the root marker (`rockpoint-root`): GC's G0 (`root_status`,
//! `mark_root`), the claim that marks the root first, and the local store's sweep of incomplete
//! writes restricted to the layout's directories. Local roots only, each test a few seconds.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use rockpoint::admin::{RootStatus, root_status};
use rockpoint::store::WriteMode;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, GcOptions, JobEnd, Store, SweepMode,
    collect_garbage,
};

const MARKER: &str = "rockpoint-root";

fn old() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3 * 86_400)
}

fn set_old(path: &Path) -> TestResult {
    std::fs::File::open(path)?.set_modified(old())?;
    Ok(())
}

/// The newest committed checkpoint of `job` restores to `expected`, and every shared file any
/// metadata record references exists.
async fn assert_intact(store: &dyn Store, job: &str, expected: &Scan, base: &Path) -> TestResult {
    let mut records: Vec<String> = store
        .list(&format!("jobs/{job}/"))
        .await?
        .into_iter()
        .map(|o| o.path)
        .filter(|p| p.ends_with("/_metadata"))
        .collect();
    records.sort();
    let latest = records.last().expect("a committed checkpoint").clone();
    for path in &records {
        let (_, metadata) = rockpoint::restore::read_metadata(
            store,
            &rockpoint::RestoreSource::Metadata(path.clone()),
        )
        .await?;
        for hash in metadata.shared_hashes() {
            assert!(
                store.head(&shared_path(&hash)).await?.is_some(),
                "{path} references {} which GC deleted",
                shared_path(&hash)
            );
        }
    }
    let restored = restore_scan(store, &latest, base).await?;
    assert!(
        restored == *expected,
        "{latest} does not restore the job's state"
    );
    Ok(())
}

/// A root with committed checkpoints of job `job`; returns the job's state at the last one.
async fn root_with_checkpoints(store: &Arc<dyn Store>, dir: &Path) -> TestResult<Scan> {
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.join("job"), 2, 1_000)?;
    job.write(2_000)?;
    c.checkpoint(&job.refs()).await?;
    job.write(2_000)?;
    job.delete(200)?;
    c.checkpoint(&job.refs()).await?;
    let scan = job.scan()?;
    c.shutdown(JobEnd::Suspended).await?;
    Ok(scan)
}

/// Holds GC right after `root_status`'s listing of the whole store (the look that decides
/// `Empty`), until the test resumes it.
#[derive(Default)]
struct PauseAfterRootListing {
    fired: AtomicBool,
    paused: tokio::sync::Notify,
    resume: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Hook for PauseAfterRootListing {
    async fn after(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        if let Op::List { prefix: "" } = op
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            self.paused.notify_one();
            self.resume.notified().await;
        }
        Ok(())
    }
}

fn gc_delete_now() -> GcOptions {
    GcOptions {
        grace_period: Duration::ZERO,
        mode: SweepMode::Delete,
        incomplete_min_age: Duration::ZERO,
        ..GcOptions::default()
    }
}

/// Schedule 1a: GC of an empty root decides `Empty`; before it lists anything else, a first
/// coordinator marks the root, claims, and commits two checkpoints (the first one discarded).
/// The pass, at grace 0, must delete nothing the job needs; the job's next (incremental)
/// checkpoint after the pass must restore too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_sees_empty_then_first_claim_commits() -> TestResult {
    let dir = tempfile::tempdir()?;
    let inner = local_store(&dir.path().join("root"))?;
    assert_eq!(root_status(&*inner).await?, RootStatus::Empty);
    let (gc_store, hook) = with_hook(inner.clone(), PauseAfterRootListing::default());
    let gc = tokio::spawn(async move { collect_garbage(&*gc_store, &gc_delete_now()).await });
    hook.paused.notified().await;

    let c =
        CheckpointCoordinator::open(inner.clone(), "job", CheckpointSettings::default()).await?;
    assert!(
        inner.head(MARKER).await?.is_some(),
        "the claim did not mark"
    );
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(2_000)?;
    c.checkpoint(&job.refs()).await?;
    job.write(2_000)?;
    c.checkpoint(&job.refs()).await?;
    hook.resume.notify_one();
    let report = gc.await??;
    assert!(report.unreadable.is_empty(), "{report:?}");
    assert_intact(&*inner, "job", &job.scan()?, dir.path()).await?;
    // The job goes on after the pass: its next checkpoint reuses files the pass saw.
    job.write(500)?;
    c.checkpoint(&job.refs()).await?;
    let scan = job.scan()?;
    c.shutdown(JobEnd::Suspended).await?;
    gc_now(&*inner).await?;
    assert_intact(&*inner, "job", &scan, dir.path()).await?;
    Ok(())
}

/// Schedule 1b: GC decides `Empty`; a first coordinator claims and starts its first checkpoint,
/// whose uploads are held at a gate (pins written, shared files partly uploaded). The pass runs
/// to its end meanwhile (grace 0, incomplete_min_age 0); then the uploads go on and the
/// checkpoint commits. It must restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_sees_empty_then_first_checkpoint_in_flight() -> TestResult {
    let dir = tempfile::tempdir()?;
    let inner = local_store(&dir.path().join("root"))?;
    let (gc_store, hook) = with_hook(inner.clone(), PauseAfterRootListing::default());
    let gc = tokio::spawn(async move { collect_garbage(&*gc_store, &gc_delete_now()).await });
    hook.paused.notified().await;

    let (job_store, faults) = with_hook(inner.clone(), UploadFaults::default());
    let c = CheckpointCoordinator::open(job_store, "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 1_000)?;
    job.write(3_000)?;
    faults.close_gate();
    let refs = job.refs();
    let (committed, gc_result) = tokio::join!(c.checkpoint(&refs), async {
        faults.wait_for_uploads(1).await;
        hook.resume.notify_one();
        let r = gc.await;
        faults.open_gate();
        r
    });
    let report = gc_result??;
    committed?;
    assert!(report.unreadable.is_empty(), "{report:?}");
    let scan = job.scan()?;
    c.shutdown(JobEnd::Suspended).await?;
    assert_intact(&*inner, "job", &scan, dir.path()).await?;
    Ok(())
}

/// Schedule 2: the marker object is damaged (empty, garbage, bad version, huge). GC must delete
/// nothing (it fails closed with `Corruption`); a coordinator's claim keeps working and keeps the
/// object as it is; the job's checkpoints stay restorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_marker_fails_gc_closed_and_claims_go_on() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let scan = root_with_checkpoints(&store, dir.path()).await?;
    let damaged: [&[u8]; 5] = [
        b"",
        b"garbage",
        b"rockpoint-root\nformat_version: one\n",
        b"rockpoint-root\nformat_version: 0\n",
        &[b'x'; 5000],
    ];
    for bytes in damaged {
        store.delete(MARKER).await?;
        store
            .put(MARKER, Bytes::copy_from_slice(bytes), WriteMode::CreateOnly)
            .await?;
        let before = objects(&*store).await?;
        let err = collect_garbage(&*store, &gc_delete_now())
            .await
            .expect_err("GC accepted a damaged marker");
        assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
        assert_eq!(
            objects(&*store).await?,
            before,
            "GC deleted with a damaged marker"
        );
        let c = CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default())
            .await?;
        c.shutdown(JobEnd::Suspended).await?;
        assert_eq!(store.get(MARKER).await?, Bytes::copy_from_slice(bytes));
        assert_intact(&*store, "job", &scan, dir.path()).await?;
    }
    Ok(())
}

/// Schedule 3: a marker written by a newer build: higher format version, CRLF line ends, extra
/// keys, a `created_by` with a colon. Accepted; GC works and the claim keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_marker_with_extra_keys_is_accepted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let theirs = Bytes::from_static(
        b"rockpoint-root\r\nformat_version: 3\r\ncreated_at_ms: 42\r\ncreated_by: rockpoint 9.0: nightly\r\n\
          layout: v3\r\nfeatures: a, b\r\nno colon line\r\n",
    );
    store
        .put(MARKER, theirs.clone(), WriteMode::CreateOnly)
        .await?;
    let RootStatus::Marked(marker) = root_status(&*store).await? else {
        panic!("a newer marker is not a marker");
    };
    assert_eq!(marker.format_version, 3);
    assert_eq!(marker.created_at_ms, 42);
    assert_eq!(marker.created_by, "rockpoint 9.0: nightly");
    let scan = root_with_checkpoints(&store, dir.path()).await?;
    gc_now(&*store).await?;
    assert_eq!(store.get(MARKER).await?, theirs);
    assert_intact(&*store, "job", &scan, dir.path()).await?;
    Ok(())
}

/// Schedule 3b: the marker's documented contract (src/layout.rs, `RootMarker`): "Readers need
/// only the first line and `format_version`". A marker whose optional `created_at_ms` is not an
/// integer (another writer's, or a newer format's, e.g. RFC 3339 or empty) must still be a
/// marker: otherwise every GC pass of the root fails, forever, from cron.
///
/// A defect the hostile review of the root marker found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_is_read_by_its_first_line_and_format_version_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let scan = root_with_checkpoints(&store, dir.path()).await?;
    for created_at in ["2024-05-01T00:00:00Z", "", "-1", "1712345678901.5"] {
        store.delete(MARKER).await?;
        let text = format!(
            "rockpoint-root\nformat_version: 2\ncreated_at_ms: {created_at}\ncreated_by: x\n"
        );
        store
            .put(MARKER, Bytes::from(text), WriteMode::CreateOnly)
            .await?;
        let status = root_status(&*store).await.map_err(|e| e.to_string());
        assert!(
            matches!(status, Ok(RootStatus::Marked(_))),
            "created_at_ms `{created_at}`: {status:?}"
        );
        gc_now(&*store).await?;
        assert_intact(&*store, "job", &scan, dir.path()).await?;
    }
    Ok(())
}

/// Schedule 4: the marker was deleted while jobs exist. Still a root through the job record; a
/// dry run writes nothing, a deleting pass re-marks and deletes nothing the job needs. With the
/// only job record unreadable too, GC refuses and deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_whose_marker_was_deleted_stays_a_root() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let scan = root_with_checkpoints(&store, dir.path()).await?;
    store.delete(MARKER).await?;
    assert!(matches!(
        root_status(&*store).await?,
        RootStatus::Unmarked { .. }
    ));
    collect_garbage(&*store, &GcOptions::default()).await?;
    assert!(store.head(MARKER).await?.is_none());
    gc_now(&*store).await?;
    assert!(matches!(root_status(&*store).await?, RootStatus::Marked(_)));
    assert_intact(&*store, "job", &scan, dir.path()).await?;

    // Marker gone and the job record replaced by garbage: not provably a root; refused.
    store.delete(MARKER).await?;
    store
        .put(
            "jobs/job/_job",
            Bytes::from_static(b"garbage"),
            WriteMode::Replace,
        )
        .await?;
    let before = objects(&*store).await?;
    let err = gc_now(&*store).await.expect_err("GC of an unprovable root");
    assert!(err.to_string().contains("not a rockpoint root"), "{err}");
    assert_eq!(objects(&*store).await?, before);

    // A root from before job records (metadata and shared files, no `_job`): GC refuses it
    // too (nothing deleted); a coordinator's claim adopts and marks it.
    store.delete("jobs/job/_job").await?;
    let before = objects(&*store).await?;
    let refused = gc_now(&*store).await.map_err(|e| e.to_string());
    println!("GC of a root older than job records: {refused:?}");
    assert_eq!(objects(&*store).await?, before);
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    assert!(matches!(root_status(&*store).await?, RootStatus::Marked(_)));
    gc_now(&*store).await?;
    assert_intact(&*store, "job", &scan, dir.path()).await?;
    Ok(())
}

/// Schedule 5: temporaries of in-flight local writes inside the layout (a staged SST under
/// `shared/`, a private file's temporary, the marker's own temporary) survive a grace-0 pass
/// while younger than `incomplete_min_age`, and are swept once older. A foreign temporary-looking
/// file at the top of the root is never swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_temporaries_are_swept_only_after_incomplete_min_age() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = local_store(&root)?;
    let scan = root_with_checkpoints(&store, dir.path()).await?;
    std::fs::create_dir_all(root.join("jobs/job/chk-00000000000000000099/kg-00000-00063"))?;
    std::fs::create_dir_all(root.join("shared/ab"))?;
    let temporaries = [
        "shared/.staged.tmp-1",
        "shared/ab/.abcdef.tmp-2",
        "jobs/job/chk-00000000000000000099/kg-00000-00063/.000012.sst.tmp-3",
        "pins/.x.tmp-4",
        ".rockpoint-root.tmp-5",
    ];
    std::fs::create_dir_all(root.join("pins"))?;
    for path in temporaries {
        std::fs::write(root.join(path), b"in flight")?;
    }
    std::fs::write(root.join(".notes.tmp-6"), b"someone's")?;
    set_old(&root.join(".notes.tmp-6"))?;
    let fresh = GcOptions {
        grace_period: Duration::ZERO,
        mode: SweepMode::Delete,
        incomplete_min_age: Duration::from_secs(3600),
        ..GcOptions::default()
    };
    let report = collect_garbage(&*store, &fresh).await?;
    for path in temporaries {
        assert!(
            root.join(path).exists(),
            "an in-flight `{path}` was swept: {report:?}"
        );
    }
    for path in temporaries {
        set_old(&root.join(path))?;
    }
    let report = collect_garbage(&*store, &fresh).await?;
    for path in temporaries {
        assert!(
            !root.join(path).exists(),
            "an old `{path}` stayed: {report:?}"
        );
    }
    assert!(
        root.join(".notes.tmp-6").exists(),
        "a foreign file was swept"
    );
    assert_intact(&*store, "job", &scan, dir.path()).await?;
    Ok(())
}

/// Schedule 6: foreign objects inside the layout of a marked root: `jobs/README.txt`, a foreign
/// directory `shared/tmp/` with a file and an empty subdirectory. GC must neither delete the
/// files nor trip on them (it still collects an unreferenced shared file in the same pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_files_inside_the_layout_are_left_and_do_not_block_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = local_store(&root)?;
    let scan = root_with_checkpoints(&store, dir.path()).await?;
    let foreign = [
        "jobs/README.txt",
        "jobs/job/NOTES",
        "shared/tmp/notes.txt",
        "shared/README",
    ];
    for path in foreign {
        store
            .put(path, Bytes::from_static(b"not ours"), WriteMode::CreateOnly)
            .await?;
    }
    std::fs::create_dir_all(root.join("shared/tmp/empty"))?;
    set_old(&root.join("shared/tmp/empty"))?;
    let garbage = rockpoint::format::ContentHash::of(b"unreferenced");
    let garbage_path = shared_path(&garbage);
    store
        .put(
            &garbage_path,
            Bytes::from_static(b"unreferenced"),
            WriteMode::CreateOnly,
        )
        .await?;
    let report = gc_now(&*store).await?;
    assert!(report.unreadable.is_empty(), "GC tripped: {report:?}");
    assert!(
        store.head(&garbage_path).await?.is_none(),
        "GC did not collect an unreferenced shared file: {report:?}"
    );
    for path in foreign {
        assert!(store.head(path).await?.is_some(), "GC deleted `{path}`");
    }
    println!(
        "foreign empty directory shared/tmp/empty after GC: exists = {}",
        root.join("shared/tmp/empty").exists()
    );
    // A second pass, and a claim, still work.
    gc_now(&*store).await?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    for path in foreign {
        assert!(store.head(path).await?.is_some(), "GC deleted `{path}`");
    }
    assert_intact(&*store, "job", &scan, dir.path()).await?;
    Ok(())
}
