//! `admin::check_root` on a live root: a checkpoint discarded (and its files deleted) while the
//! check reads it is not damage, but a file of a checkpoint that stays committed is; the check
//! writes nothing.

use crate::common;

use std::collections::BTreeSet;

use common::gates::Gates;
use common::hooked::{Hook, Op, with_hook};
use common::*;
use rockpoint::admin::{CheckOptions, ProblemKind, SnapshotRef, check_root};
use rockpoint::{CheckpointCoordinator, CheckpointSettings, JobEnd, SnapshotKind, Store};

fn retained(n: usize) -> CheckpointSettings {
    CheckpointSettings {
        retained: n,
        ..CheckpointSettings::default()
    }
}

/// Checkpoint 1 is subsumed, its private files deleted and the shared files only it referenced
/// (if any) deleted (GC's part) while the check is held reading one of its files; meanwhile a private file
/// of checkpoint 2, which stays committed, is lost. Only the second is a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_discarded_during_the_check_is_not_damage_but_a_committed_one_losing_a_file_is()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let inner = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(inner.clone(), "job", retained(2)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 500)?;
    let mut done = Vec::new();
    for _ in 0..2 {
        job.write(2000)?;
        done.push(c.checkpoint(&job.refs()).await?.metadata);
    }
    let (first, second) = (done[0].clone(), done[1].clone());
    let lost = second.backends[0].private_files[0].path.clone();

    let (store, gates) = with_hook(inner.clone(), Gates::default());
    let gate = gates.hold(&["get_stream"], "jobs/job/chk-00000000000000000001/kg-");
    // The read of the file to lose waits too, whenever the check comes to it.
    let lost_read = gates.hold(&["get_stream"], &format!("={lost}"));
    let options = CheckOptions::default();
    let check = check_root(&*store, &options, None);
    let meanwhile = async {
        gate.reached().await;
        job.write(2000)?;
        let third = c.checkpoint(&job.refs()).await?.metadata;
        assert!(
            inner.head(&first.metadata_path()).await?.is_none(),
            "checkpoint 1 was subsumed"
        );
        // GC's part: the shared files nothing committed references any more.
        let kept: BTreeSet<_> = second
            .shared_hashes()
            .chain(third.shared_hashes())
            .collect();
        let gone: BTreeSet<_> = first
            .shared_hashes()
            .filter(|h| !kept.contains(h))
            .collect();
        // The read held at the gate is of a private file the discard deleted.
        let held = &first.backends[0].private_files[0].path;
        assert!(inner.head(held).await?.is_none(), "{held} was deleted");
        for hash in &gone {
            inner.delete(&shared_path(hash)).await?;
        }
        inner.delete(&lost).await?;
        gate.release();
        lost_read.release();
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let (report, meanwhile) = tokio::join!(check, meanwhile);
    meanwhile?;
    let report = report?;

    assert_eq!(report.problems.len(), 1, "{report:#?}");
    let problem = &report.problems[0];
    assert_eq!(problem.path, lost);
    assert_eq!(problem.kind, ProblemKind::Missing);
    assert_eq!(
        problem.affects,
        vec![SnapshotRef {
            job: "job".into(),
            kind: SnapshotKind::Checkpoint,
            id: 2
        }]
    );
    assert_eq!(
        report.checkpoints, 2,
        "what was committed when the check began"
    );
    c.shutdown(JobEnd::Suspended).await?;
    Ok(())
}

/// Fails every operation that writes, and remembers it.
#[derive(Default)]
struct ReadOnly {
    writes: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Hook for ReadOnly {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        let reads = [
            "get",
            "get_versioned",
            "get_stream",
            "head",
            "list",
            "append_verified",
        ];
        if reads.contains(&op.name()) {
            return Ok(());
        }
        self.writes
            .lock()
            .unwrap()
            .push(format!("{} {}", op.name(), op.subject()));
        Err(rockpoint::Error::new(
            rockpoint::ErrorKind::Invalid,
            "read-only store",
        ))
    }
}

/// On a store that refuses every write, the check of a whole root and of one job runs clean, and
/// tries no write; a job the root does not hold is `NotFound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_root_only_reads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let inner = local_store(&dir.path().join("root"))?;
    let c = CheckpointCoordinator::open(inner.clone(), "job", retained(3)).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 500)?;
    for _ in 0..3 {
        job.write(1000)?;
        c.checkpoint(&job.refs()).await?;
    }
    c.shutdown(JobEnd::Suspended).await?;

    let (store, hook) = with_hook(inner, ReadOnly::default());
    let whole = check_root(&*store, &CheckOptions::default(), None).await?;
    assert!(whole.is_clean(), "{whole:#?}");
    assert_eq!((whole.jobs, whole.checkpoints), (1, 3));
    let one = CheckOptions {
        job: Some("job".into()),
        ..CheckOptions::default()
    };
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = progress.clone();
    let callback: rockpoint::Progress = std::sync::Arc::new(move |n| {
        counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    });
    let of_job = check_root(&*store, &one, Some(callback)).await?;
    assert!(of_job.is_clean(), "{of_job:#?}");
    assert_eq!(
        progress.load(std::sync::atomic::Ordering::Relaxed),
        of_job.bytes,
        "progress is told every byte hashed"
    );
    // Every object the job's checkpoints reference is every object in the root here.
    assert_eq!((of_job.objects, of_job.bytes), (whole.objects, whole.bytes));
    let missing = CheckOptions {
        job: Some("nope".into()),
        ..CheckOptions::default()
    };
    let error = check_root(&*store, &missing, None).await.unwrap_err();
    assert_eq!(error.kind(), rockpoint::ErrorKind::NotFound);
    assert_eq!(*hook.writes.lock().unwrap(), Vec::<String>::new());
    Ok(())
}
