//! The root marker (`rockpoint-root`, issue 13): written create-only when a coordinator first
//! claims a job, kept when it exists, added to a root written before markers; GC refuses a store
//! that is not a root and never touches anything outside the layout.

use crate::common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::s3::Root;
use common::*;
use rockpoint::admin::{RootMarker, RootStatus, root_status};
use rockpoint::store::WriteMode;
use rockpoint::{CheckpointCoordinator, CheckpointSettings, ErrorKind, JobEnd, collect_garbage};

const MARKER: &str = "rockpoint-root";

/// A root with one committed checkpoint of job `job`, its coordinator shut down.
async fn root_with_a_checkpoint(
    store: &std::sync::Arc<dyn rockpoint::Store>,
    dir: &std::path::Path,
) -> TestResult {
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.join("job"), 1, 1_000)?;
    job.write(1_000)?;
    c.checkpoint(&job.refs()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

async fn marker_written_on_first_claim_and_kept(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    assert_eq!(root_status(&*store).await?, RootStatus::Empty);
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let first = store.get(MARKER).await?;
    let RootStatus::Marked(marker) = root_status(&*store).await? else {
        panic!("no marker after the first claim");
    };
    assert_eq!(marker.format_version, 1);
    assert!(marker.created_by.starts_with("rockpoint "), "{marker:?}");
    let age_ms = rockpoint_now_ms().saturating_sub(marker.created_at_ms);
    assert!(age_ms < 600_000, "{marker:?}");
    c.shutdown(JobEnd::Suspended).await?;
    // Claims of this and of another job keep the marker as it is.
    for job in ["job", "other"] {
        let c =
            CheckpointCoordinator::open(store.clone(), job, CheckpointSettings::default()).await?;
        c.shutdown(JobEnd::Suspended).await?;
        assert_eq!(store.get(MARKER).await?, first, "{job}: the marker changed");
    }
    Ok(())
}

async fn an_existing_marker_is_kept_by_a_claim(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let theirs = Bytes::from_static(
        b"rockpoint-root\nformat_version: 1\ncreated_at_ms: 42\ncreated_by: someone else\n",
    );
    store
        .put(MARKER, theirs.clone(), WriteMode::CreateOnly)
        .await?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    assert_eq!(store.get(MARKER).await?, theirs);
    assert_eq!(
        root_status(&*store).await?,
        RootStatus::Marked(RootMarker {
            format_version: 1,
            created_at_ms: 42,
            created_by: "someone else".into(),
        })
    );
    Ok(())
}

async fn an_old_root_without_marker_is_a_root_and_gets_marked(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    root_with_a_checkpoint(&store, dir.path()).await?;
    // As written by a build older than the marker.
    store.delete(MARKER).await?;
    assert_eq!(
        root_status(&*store).await?,
        RootStatus::Unmarked {
            job_id: "job".into()
        }
    );
    // A dry run writes nothing; a GC that deletes marks it.
    collect_garbage(&*store, &rockpoint::GcOptions::default()).await?;
    assert!(
        store.head(MARKER).await?.is_none(),
        "a dry run wrote the marker"
    );
    gc_now(&*store).await?;
    assert!(matches!(root_status(&*store).await?, RootStatus::Marked(_)));
    // So does a coordinator's claim.
    store.delete(MARKER).await?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    c.shutdown(JobEnd::Suspended).await?;
    assert!(matches!(root_status(&*store).await?, RootStatus::Marked(_)));
    Ok(())
}

async fn gc_refuses_a_store_that_is_not_a_root(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    // Empty: a root nothing wrote to yet; GC finds nothing and writes nothing.
    let report = gc_now(&*store).await?;
    assert!(report.is_empty(), "{report:?}");
    assert!(objects(&*store).await?.is_empty());
    // Someone else's objects, one of them under a layout prefix (`gc/`), which an intent-sweeping
    // GC would have deleted once it looked expired.
    for path in ["notes/readme.txt", "gc/notes.txt", "jobs/readme.txt"] {
        store
            .put(path, Bytes::from_static(b"not ours"), WriteMode::CreateOnly)
            .await?;
    }
    let before = objects(&*store).await?;
    assert!(matches!(
        root_status(&*store).await?,
        RootStatus::NotARoot { .. }
    ));
    let refused = gc_now(&*store).await.map_err(|e| e.to_string());
    let message = refused.expect_err("GC of a store that is not a root");
    assert!(message.contains("is not a rockpoint root"), "{message}");
    let refused = collect_garbage(&*store, &rockpoint::GcOptions::default())
        .await
        .expect_err("a dry run too");
    assert_eq!(refused.kind(), ErrorKind::Invalid);
    assert_eq!(
        objects(&*store).await?,
        before,
        "GC changed a store that is not a root"
    );
    // A job record that does not decode does not make a root either.
    store
        .put(
            "jobs/x/_job",
            Bytes::from_static(b"garbage"),
            WriteMode::CreateOnly,
        )
        .await?;
    assert!(!root_status(&*store).await?.is_root());
    Ok(())
}

async fn gc_of_a_root_never_touches_objects_outside_the_layout(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = on.store(&root).await?;
    root_with_a_checkpoint(&store, dir.path()).await?;
    let foreign = ["data/x.bin", "other/y.tmp-1", "readme.txt", "jobsx/z"];
    for path in foreign {
        store
            .put(path, Bytes::from_static(b"not ours"), WriteMode::CreateOnly)
            .await?;
    }
    if on == Root::Local {
        // The leftovers: a temporary-looking file and empty directories, all old.
        std::fs::create_dir_all(root.join("data"))?;
        std::fs::write(root.join("data/.upload.tmp-42"), b"someone's")?;
        std::fs::create_dir_all(root.join("project/build/cache"))?;
        std::fs::create_dir_all(root.join("project/empty-mountpoint"))?;
        std::fs::write(root.join("shared/.x.tmp-7"), b"interrupted")?;
        let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
        for path in [
            "data/.upload.tmp-42",
            "project/build/cache",
            "project/build",
            "project/empty-mountpoint",
            "shared/.x.tmp-7",
        ] {
            std::fs::File::open(root.join(path))?.set_modified(old)?;
        }
    }
    let before = objects(&*store).await?;
    gc_now(&*store).await?;
    gc_now(&*store).await?;
    assert_eq!(objects(&*store).await?, before, "GC removed an object");
    for path in foreign {
        assert!(store.head(path).await?.is_some(), "GC removed `{path}`");
    }
    if on == Root::Local {
        for path in [
            "data/.upload.tmp-42",
            "project/build/cache",
            "project/empty-mountpoint",
        ] {
            assert!(root.join(path).exists(), "GC removed `{path}`");
        }
        assert!(
            !root.join("shared/.x.tmp-7").exists(),
            "the layout's temporary stays"
        );
    }
    Ok(())
}

fn rockpoint_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

crate::on_both_roots!(
    marker_written_on_first_claim_and_kept,
    an_existing_marker_is_kept_by_a_claim,
    an_old_root_without_marker_is_a_root_and_gets_marked,
    gc_refuses_a_store_that_is_not_a_root,
    gc_of_a_root_never_touches_objects_outside_the_layout,
);
