//! G8: the store requests of one checkpoint, including its subsumption, do not grow with the
//! number of jobs and checkpoints sharing the root. Counted (not timed), so the figures are exact
//! and the test is deterministic; `-- --nocapture` prints them.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use futures::stream::BoxStream;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ContentHash, ObjectInfo, ObjectVersion, Store,
    SweepMode, WriteMode,
};

/// Counts requests by kind, forwarding everything (the local store's own staging paths included).
#[derive(Debug)]
struct CountingStore {
    inner: Arc<dyn Store>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl CountingStore {
    fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }
    fn take(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Store for CountingStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> rockpoint::Result<()> {
        self.count("put");
        self.inner.put(path, data, mode).await
    }
    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> rockpoint::Result<()> {
        self.count("put");
        self.inner.put_file(path, file, offset, len, expected).await
    }
    async fn get(&self, path: &str) -> rockpoint::Result<Bytes> {
        self.count("get");
        self.inner.get(path).await
    }
    async fn get_versioned(&self, path: &str) -> rockpoint::Result<Option<(Bytes, ObjectVersion)>> {
        self.count("get");
        self.inner.get_versioned(path).await
    }
    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> rockpoint::Result<ObjectVersion> {
        self.count("put");
        self.inner.put_if(path, data, expected).await
    }
    async fn get_stream(
        &self,
        path: &str,
    ) -> rockpoint::Result<(u64, BoxStream<'static, rockpoint::Result<Bytes>>)> {
        self.count("get");
        self.inner.get_stream(path).await
    }
    async fn head(&self, path: &str) -> rockpoint::Result<Option<ObjectInfo>> {
        self.count("head");
        self.inner.head(path).await
    }
    async fn delete(&self, path: &str) -> rockpoint::Result<()> {
        self.count("delete");
        self.inner.delete(path).await
    }
    async fn list(&self, prefix: &str) -> rockpoint::Result<Vec<ObjectInfo>> {
        self.count("list");
        self.inner.list(prefix).await
    }
    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
        mode: SweepMode,
    ) -> rockpoint::Result<Vec<String>> {
        self.inner.sweep_incomplete(older_than, mode).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn stage_file(
        &self,
        file: &Path,
        offset: u64,
        len: u64,
    ) -> rockpoint::Result<rockpoint::Staged> {
        self.inner.stage_file(file, offset, len).await
    }
    async fn publish_staged(&self, staged: rockpoint::Staged, path: &str) -> rockpoint::Result<()> {
        self.count("put");
        self.inner.publish_staged(staged, path).await
    }
    async fn discard_staged(&self, staged: rockpoint::Staged) -> rockpoint::Result<()> {
        self.inner.discard_staged(staged).await
    }
    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> rockpoint::Result<()> {
        self.count("get");
        self.inner
            .append_verified(path, expected, size, target, label)
            .await
    }
}

/// Requests of the measured job's checkpoints 2..=4 (each subsumes the one before) in a root
/// that holds `other_jobs` other jobs with `retained` checkpoints each.
async fn requests_with_other_jobs(
    base: &Path,
    other_jobs: usize,
) -> TestResult<BTreeMap<&'static str, u64>> {
    let store = Arc::new(CountingStore {
        inner: local_store(&base.join("root"))?,
        counts: Mutex::new(BTreeMap::new()),
    });
    let settings = CheckpointSettings {
        retained: 2,
        ..CheckpointSettings::default()
    };
    // The other jobs checkpoint one shared backend: cheap to make, real records in the root.
    let mut filler = TestJob::open(&base.join("filler"), 1, 500)?;
    for n in 0..other_jobs {
        filler.write(20)?;
        let c = CheckpointCoordinator::open(store.clone(), &format!("other-{n}"), settings.clone())
            .await?;
        for _ in 0..2 {
            c.checkpoint(&filler.refs()).await?;
        }
    }
    let mut job = TestJob::open(&base.join("job"), 1, 500)?;
    job.write(500)?;
    let c = CheckpointCoordinator::open(store.clone(), "measured", settings).await?;
    c.checkpoint(&job.refs()).await?;
    c.checkpoint(&job.refs()).await?;
    store.take();
    for _ in 0..3 {
        job.write(50)?;
        c.checkpoint(&job.refs()).await?;
    }
    Ok(store.take())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_requests_do_not_grow_with_the_jobs_in_the_root() -> TestResult {
    let mut figures = Vec::new();
    for jobs in [0usize, 9, 99] {
        let dir = tempfile::tempdir()?;
        let counts = requests_with_other_jobs(dir.path(), jobs).await?;
        let total: u64 = counts.values().sum();
        println!(
            "{} jobs in the root: 3 checkpoints made {total} requests {counts:?}",
            jobs + 1
        );
        figures.push(total);
    }
    let (one, hundred) = (figures[0] as f64, figures[2] as f64);
    assert!(
        hundred <= one * 1.1,
        "requests grew with the root: {figures:?} for 1, 10 and 100 jobs"
    );
    Ok(())
}
