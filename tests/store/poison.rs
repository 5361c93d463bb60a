//! G6: a failed fsync poisons the store. The failing write reports `Poisoned`, every later call
//! fails the same way without touching the filesystem (no retry over possibly lost pages), and a
//! checkpoint on a poisoned store fails with `Poisoned` instead of committing.

use crate::common;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use common::*;
use rockpoint::store::WriteMode;
use rockpoint::testing::{Fs, FsEntry, FsRead, FsWrite, StdFs};
use rockpoint::{CheckpointCoordinator, CheckpointSettings, ErrorKind, LocalStore, Store};

/// The real filesystem, except that fsyncs fail once armed; counts every operation.
#[derive(Debug, Default)]
struct FailingSync {
    armed: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    /// Once set, a directory under `jobs/x/` is removed right before its fsync, as a concurrent
    /// discard of that checkpoint directory would.
    vanish: Arc<AtomicBool>,
}

struct Writer {
    inner: Box<dyn FsWrite>,
    armed: Arc<AtomicBool>,
}

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl FsWrite for Writer {
    fn sync_all(&mut self) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) {
            return Err(io::Error::other("EIO on fsync (injected)"));
        }
        self.inner.sync_all()
    }
}

impl Fs for FailingSync {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWrite>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(Writer {
            inner: StdFs.create_new(path)?,
            armed: self.armed.clone(),
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.open(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.hard_link(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.remove_file(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) {
            return Err(io::Error::other("EIO on directory fsync (injected)"));
        }
        if self.vanish.load(Ordering::SeqCst) && path.to_string_lossy().contains("jobs/x") {
            let _ = std::fs::remove_dir_all(path);
        }
        StdFs.sync_dir(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsEntry>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.read_dir(path)
    }
    fn metadata(&self, path: &Path) -> io::Result<FsEntry> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        StdFs.metadata(path)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_poisons_the_store_and_is_never_retried() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FailingSync::default());
    let (armed, calls) = (fs.armed.clone(), fs.calls.clone());
    let store: Arc<dyn Store> = Arc::new(LocalStore::with_fs(dir.path().join("root"), fs)?);
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(2_000)?;
    let first = c.checkpoint(&job.refs()).await?;

    armed.store(true, Ordering::SeqCst);
    job.write(500)?;
    let err = c
        .checkpoint(&job.refs())
        .await
        .expect_err("the checkpoint fails");
    assert_eq!(err.kind(), ErrorKind::Poisoned, "{err}");
    assert!(err.to_string().contains("fsync"), "{err}");

    // The disk is healthy again, but the store stays poisoned and does not touch it.
    armed.store(false, Ordering::SeqCst);
    let before = calls.load(Ordering::SeqCst);
    let write = store
        .put("jobs/x/y", Bytes::from_static(b"z"), WriteMode::CreateOnly)
        .await;
    assert_eq!(write.err().map(|e| e.kind()), Some(ErrorKind::Poisoned));
    assert_eq!(
        store.list("").await.err().map(|e| e.kind()),
        Some(ErrorKind::Poisoned)
    );
    let again = c.checkpoint(&job.refs()).await.expect_err("still poisoned");
    assert_eq!(again.kind(), ErrorKind::Poisoned);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "no filesystem call after the poison"
    );

    // A reopened store recovers the last complete checkpoint.
    let reopened: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("root"))?);
    let c =
        CheckpointCoordinator::open(reopened.clone(), "job", CheckpointSettings::default()).await?;
    assert_eq!(c.latest().map(|m| m.checkpoint_id), Some(first.id()));
    Ok(())
}

/// Found by a CI rehearsal (`finished_attack::finished_below_premise_holds_over_a_mixed_schedule`
/// failed once with "engine poisoned … fsync of …/chk-11/kg-00000-00128 failed: No such file or
/// directory"): a dropped checkpoint's late private-file write raced its own abort, which removed
/// the checkpoint's directory between the write and the directory's fsync. The directory could not
/// be opened for the fsync — no fsync failed, nothing on the disk is in doubt — yet the store was
/// poisoned for good. The write must fail (it is not durable) and the store must go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_removed_before_its_fsync_poisons_the_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let fs = Arc::new(FailingSync::default());
    let vanish = fs.vanish.clone();
    let store: Arc<dyn Store> = Arc::new(LocalStore::with_fs(dir.path().join("root"), fs)?);
    vanish.store(true, Ordering::SeqCst);
    let write = store
        .put("jobs/x/y", Bytes::from_static(b"z"), WriteMode::CreateOnly)
        .await;
    let err = write.expect_err("a write whose directory vanished is not durable");
    assert_ne!(err.kind(), ErrorKind::Poisoned, "{err}");
    vanish.store(false, Ordering::SeqCst);
    store
        .put("jobs/z/w", Bytes::from_static(b"z"), WriteMode::CreateOnly)
        .await?;
    assert_eq!(store.get("jobs/z/w").await?, Bytes::from_static(b"z"));
    Ok(())
}
