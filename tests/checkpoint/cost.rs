//! G8: the store requests of one checkpoint, including its subsumption, do not grow with the
//! number of jobs and checkpoints sharing the root. Counted (not timed), so the figures are exact
//! and the test is deterministic; `-- --nocapture` prints them.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use common::*;
use rockpoint::{CheckpointCoordinator, CheckpointSettings, Store};

/// Counts requests by kind (the local store's own staging paths included: the wrapper forwards
/// them). Staging a file and dropping a staged copy are local work, not requests.
#[derive(Default)]
struct RequestCounter {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl RequestCounter {
    fn count(&self, what: &'static str) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }
    fn take(&self) -> BTreeMap<&'static str, u64> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Hook for RequestCounter {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        match op {
            Op::Put { .. } | Op::PutFile { .. } | Op::PutIf { .. } | Op::PublishStaged { .. } => {
                self.count("put")
            }
            Op::Get { .. }
            | Op::GetVersioned { .. }
            | Op::GetStream { .. }
            | Op::AppendVerified { .. } => self.count("get"),
            Op::Head { .. } => self.count("head"),
            Op::Delete { .. } => self.count("delete"),
            Op::List { .. } => self.count("list"),
            Op::SweepIncomplete { .. } | Op::StageFile { .. } | Op::DiscardStaged { .. } => {}
        }
        Ok(())
    }
}

/// Requests of the measured job's checkpoints 2..=4 (each subsumes the one before) in a root
/// that holds `other_jobs` other jobs with `retained` checkpoints each.
async fn requests_with_other_jobs(
    base: &Path,
    other_jobs: usize,
) -> TestResult<BTreeMap<&'static str, u64>> {
    let (store, counter) = with_hook(local_store(&base.join("root"))?, RequestCounter::default());
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
    counter.take();
    for _ in 0..3 {
        job.write(50)?;
        c.checkpoint(&job.refs()).await?;
    }
    Ok(counter.take())
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
