//! Hostile schedules: concurrent actors (coordinators of one job, zombies, claimers, GC at grace
//! period 0, readers) interleaved deterministically with store gates and the split API
//! (`trigger` / `snapshot` / `upload` / `complete`). Each test is named after what breaks and
//! asserts the guarantee, so it fails while the bug exists.

use crate::common;

use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::gates::Gates;
use common::*;
use rockpoint::store::WriteMode;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, ErrorKind, JobEnd, RestoreSource,
    RestoreTarget, SnapshotKind, Store,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn cfg(retained: usize, max_concurrent: usize) -> CheckpointSettings {
    CheckpointSettings {
        retained,
        max_concurrent,
        ..CheckpointSettings::default()
    }
}

fn chk_metadata(job: &str, id: u64) -> String {
    format!("jobs/{job}/chk-{id:020}/_metadata")
}

/// Writes, flushes and compacts every backend: the next checkpoint's SSTs are all new.
fn rewrite(job: &mut TestJob, count: u64) -> TestResult {
    job.write(count)?;
    for backend in &job.backends {
        backend.flush()?;
        backend.compact()?;
    }
    Ok(())
}

/// The shared objects a checkpoint references that are missing from the store.
async fn missing_shared(store: &dyn Store, path: &str) -> TestResult<Vec<String>> {
    let (_, metadata) =
        rockpoint::restore::read_metadata(store, &RestoreSource::Metadata(path.into())).await?;
    let mut missing = Vec::new();
    for hash in metadata.shared_hashes() {
        let p = shared_path(&hash);
        if store.head(&p).await?.is_none() {
            missing.push(p);
        }
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}

/// Restores `path` and compares it with `expected`: Ok(()) or a description of what broke.
async fn check_restore(store: &dyn Store, path: &str, base: &Path, expected: &Scan) -> TestResult {
    let missing = missing_shared(store, path).await?;
    if !missing.is_empty() {
        return Err(format!(
            "complete checkpoint `{path}` references {} deleted shared file(s): {missing:?}",
            missing.len()
        )
        .into());
    }
    let scan = restore_scan(store, path, base)
        .await
        .map_err(|e| format!("complete checkpoint `{path}` does not restore: {e}"))?;
    if scan != *expected {
        return Err(format!(
            "`{path}` restores to another state ({} rows, expected {})",
            scan.len(),
            expected.len()
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. A claim by another job bypasses the known-set deferral of the source's live coordinator.
// ---------------------------------------------------------------------------------------------

/// A (live) commits checkpoint 1 and triggers T2, whose known set holds checkpoint 1's hashes
/// (`users[1]` counts T2, so A itself would not discard 1 before T2 ends). Job B restores A's
/// checkpoint 1 with claim: `release_source` swaps A's record to drop 1 and deletes its records,
/// ignoring A's in-flight ticket. B then finishes (discarding its copy). GC at grace 0 removes the
/// files. T2 uploads (known hashes are not checked) and commits: A's retained checkpoint 2
/// references deleted files (G1/G3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_by_another_job_discards_a_checkpoint_the_source_tickets_reuse() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let a = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let first = a.checkpoint(&job.refs()).await?;

    // T2: known set = checkpoint 1's hashes; the SSTs are unchanged (only the WAL grows).
    job.write(50)?;
    let t2 = a.trigger(SnapshotKind::Checkpoint)?;
    let p2 = job.backends[0].snapshot(&t2)?;
    let expected_2 = job.scan()?;

    // B claims A's checkpoint 1, then finishes.
    let b = CheckpointCoordinator::open(store.clone(), "b", cfg(1, 1)).await?;
    let restored = restore_job(
        &b,
        &RestoreSource::Metadata(first.path()),
        &dir.path().join("b"),
        1,
        2_000,
        ClaimMode::Claim,
    )
    .await?;
    drop(restored);
    b.shutdown(JobEnd::Finished).await?;
    gc_now(&*store).await?;

    // T2 completes.
    let h2 = p2.upload(&*store).await?;
    let done = a.complete(&t2, vec![h2]).await?;
    check_restore(&*store, &done.path(), dir.path(), &expected_2).await
}

// ---------------------------------------------------------------------------------------------
// 2. A zombie's startup recovery deletes the live coordinator's snapshot pins.
// ---------------------------------------------------------------------------------------------

/// Coordinator N1 of job `j` claims the job (epoch 2) and is paused inside its recovery, just
/// before it lists `pins/j/` (O2). N2 opens (epoch 3: N1 is fenced), triggers checkpoint T and
/// uploads it: new SSTs, protected only by T's snapshot pin. N1 resumes: its O2 deletes every
/// non-reader pin under `pins/j/` — N2's live pin included — and only then finds itself fenced.
/// GC at grace 0 deletes T's uploads; N2 commits T, which references deleted files (G3, G7: a
/// fenced coordinator removed what the live one needs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_recovery_deletes_the_live_coordinators_snapshot_pin() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, gates) = with_hook(local.clone(), Gates::default());
    // Epoch 1 exists and went away (e.g. a crashed process).
    drop(CheckpointCoordinator::open(store.clone(), "j", cfg(1, 1)).await?);

    let gate = gates.hold(&["list"], "pins/j/");
    let n1 = tokio::spawn({
        let store = store.clone();
        async move { CheckpointCoordinator::open(store, "j", cfg(1, 1)).await }
    });
    gate.reached().await;

    let n2 = CheckpointCoordinator::open(store.clone(), "j", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("j"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let t = n2.trigger(SnapshotKind::Checkpoint)?;
    let p = job.backends[0].snapshot(&t)?;
    let expected = job.scan()?;
    let h = p.upload(&*store).await?;

    gate.release();
    let n1 = n1.await?;
    if let Ok(n1) = &n1 {
        // Not a violation by itself, but the zombie must not act.
        assert!(n1.epoch() < n2.epoch());
    }
    gc_now(&*store).await?;
    let done = n2.complete(&t, vec![h]).await?;
    check_restore(&*store, &done.path(), dir.path(), &expected).await
}

// ---------------------------------------------------------------------------------------------
// 3. A claim of some of a checkpoint's backends adopts the others without pinning them.
// ---------------------------------------------------------------------------------------------

/// Job A (two backends) commits checkpoint 1. Job B restores only backend 0's key groups from it
/// with claim: its reader pin covers backend 0's hashes only, but `claim_checkpoint` re-commits the
/// whole metadata (both backends) under B's id. While B is between its download and its claim
/// commit, A finishes (its checkpoint is discarded; B's reader pin keeps the private files) and GC
/// at grace 0 deletes backend 1's shared files, which nothing pinned. B then commits a retained
/// checkpoint referencing them (G1/G3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_claim_commits_unpinned_backends_that_gc_deleted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, gates) = with_hook(local.clone(), Gates::default());
    let a = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 2, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let first = a.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;
    drop(job);

    let b = CheckpointCoordinator::open(store.clone(), "b", cfg(1, 1)).await?;
    // B's claim copies its private files into jobs/b/ first: hold the first of those writes.
    let gate = gates.hold(&["put_file", "put"], "jobs/b/chk-");
    let range0 = ranges(2)[0];
    let target = RestoreTarget {
        dir: dir.path().join("b").join("backend-0"),
        key_groups: range0,
        settings: settings(),
    };
    let claim = tokio::spawn({
        let b = b.clone();
        let source = RestoreSource::Metadata(first.path());
        async move {
            b.restore(&source, &[target], ClaimMode::Claim)
                .await
                .map(drop)
        }
    });
    gate.reached().await;
    a.shutdown(JobEnd::Finished).await?;
    gc_now(&*store).await?;
    gate.release();
    claim.await??;

    let adopted = b
        .latest()
        .ok_or("B retains no checkpoint after its claim")?;
    check_restore(&*store, &adopted.metadata_path(), dir.path(), &expected).await
}

// ---------------------------------------------------------------------------------------------
// 4. `verify` of a complete checkpoint races a discard and GC: it reports corruption.
// ---------------------------------------------------------------------------------------------

/// A reader runs `verify_checkpoint` on A's retained checkpoint 1 (it reads the metadata and the
/// record: complete). Unlike `restore`, verify writes no reader pin. A subsumes checkpoint 1 and GC
/// at grace 0 deletes its files while verify reads them. Verify then reports the checkpoint's files
/// as missing (damage) instead of "the checkpoint was discarded" (NotFound): a reader racing a
/// discard must get the truth or NotFound, never a false corruption report (G2, "a reader running
/// while records come and go").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_racing_a_discard_reports_a_complete_checkpoint_as_corrupt() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, gates) = with_hook(local.clone(), Gates::default());
    let a = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let first = a.checkpoint(&job.refs()).await?;

    let gate = gates.hold(&["get_stream"], "shared/");
    let verify = tokio::spawn({
        let store = store.clone();
        let source = RestoreSource::Metadata(first.path());
        async move { rockpoint::verify_checkpoint(&*store, &source, 1).await }
    });
    gate.reached().await;
    rewrite(&mut job, 4_000)?;
    a.checkpoint(&job.refs()).await?;
    gc_now(&*store).await?;
    gate.release();
    match verify.await? {
        Ok(report) if report.problems.is_empty() => Ok(()),
        Ok(report) => Err(format!(
            "verify of checkpoint `{}` (complete when verify started, then discarded) reports \
             damage: {:?}",
            first.path(),
            report.problems
        )
        .into()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("verify failed with a misleading error: {e}").into()),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. GC deletes the private files of a checkpoint that a reader pinned before the discard's D2.
// ---------------------------------------------------------------------------------------------

/// A1 commits checkpoint 1 and is suspended; A2 opens (epoch 2, ids from 1025). GC starts and lists
/// `pins/` (no reader yet), then is paused before it lists `jobs/`. A reader (`restore_backend`)
/// pins checkpoint 1 (it is still retained) and starts downloading. A2 commits 1025 (discarding 1:
/// D1 deletes the metadata, D2 sees the reader pin and keeps the private files, as designed) and
/// 1026 (dropping 1 from `discarding`). GC resumes: checkpoint 1 is neither retained nor
/// discarding, its id lies below the owner's `epoch_first_id`, and GC's reader set came from its
/// earlier pin listing, so it deletes the private files under the reader. The reader, which pinned
/// before D2, fails with "missing from the store" instead of restoring (G2: state or NotFound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_private_files_under_a_reader_that_pinned_before_the_discard() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, gates) = with_hook(local.clone(), Gates::default());
    let a1 = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let first = a1.checkpoint(&job.refs()).await?;
    let expected_1 = job.scan()?;
    a1.shutdown(JobEnd::Suspended).await?;
    let a2 = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;

    let gc_gate = gates.hold(&["list"], "=jobs/");
    let gc = tokio::spawn({
        let store = store.clone();
        async move { gc_now(&*store).await.map_err(|e| e.to_string()) }
    });
    gc_gate.reached().await;

    let read_gate = gates.hold(&["append_verified"], "jobs/a/chk-");
    let target = RestoreTarget {
        dir: dir.path().join("reader"),
        key_groups: ranges(1)[0],
        settings: settings(),
    };
    let reader = tokio::spawn({
        let store = store.clone();
        let source = RestoreSource::Metadata(first.path());
        async move {
            let backend = rockpoint::restore_backend(&*store, &source, &target, 4, None).await?;
            let scan = scan_backends(&[backend])
                .map_err(|e| rockpoint::Error::from(std::io::Error::other(e.to_string())))?;
            Ok::<_, rockpoint::Error>(scan)
        }
    });
    read_gate.reached().await;

    rewrite(&mut job, 4_000)?;
    a2.checkpoint(&job.refs()).await?;
    rewrite(&mut job, 4_000)?;
    a2.checkpoint(&job.refs()).await?;
    gc_gate.release();
    gc.await??;
    read_gate.release();
    match reader.await? {
        Ok(scan) if scan == expected_1 => Ok(()),
        Ok(_) => Err("the reader restored another state".into()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "a reader that pinned checkpoint 1 while it was retained lost its private files to \
             GC: {e}"
        )
        .into()),
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A job record at the largest epoch makes `open` and GC panic.
// ---------------------------------------------------------------------------------------------

/// Seals a record in the documented envelope.
fn seal(magic: &[u8; 8], body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(52 + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&rockpoint::format::METADATA_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn seal_job(record: &rockpoint::admin::JobRecord) -> TestResult<Bytes> {
    Ok(seal(b"RKPTJOB\0", &rmp_serde::to_vec_named(record)?))
}

fn unseal_job(bytes: &[u8]) -> TestResult<rockpoint::admin::JobRecord> {
    Ok(rmp_serde::from_slice(&bytes[52..])?)
}

/// A hostile (or bit-flipped-then-resealed) job record whose epoch is `u64::MAX` passes every
/// check of the record, and then `open` (claim: `epoch + 1`) and GC (fence: `epoch + 1`) overflow
/// and panic. G5: bad input gets a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_record_at_the_largest_epoch_panics_open_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let record = rockpoint::admin::JobRecord {
        job_id: "x".into(),
        epoch: u64::MAX,
        owner: Some("someone".into()),
        lease_until_ms: 1,
        epoch_first_id: 1,
        next_id: 1,
        retained: vec![],
        savepoints: vec![],
        discarding: vec![],
        updated_at_ms: 1,
        finished_below: 0,
        exporting: vec![],
    };
    store
        .put("jobs/x/_job", seal_job(&record)?, WriteMode::CreateOnly)
        .await?;
    let mut problems = Vec::new();
    let open = tokio::spawn({
        let store = store.clone();
        async move {
            CheckpointCoordinator::open(store, "x", cfg(1, 1))
                .await
                .map(drop)
        }
    })
    .await;
    if let Err(e) = open {
        problems.push(format!("open panicked: {e}"));
    }
    let gc = tokio::spawn({
        let store = store.clone();
        async move { gc_now(&*store).await.map(drop).map_err(|e| e.to_string()) }
    })
    .await;
    if let Err(e) = gc {
        problems.push(format!("GC panicked: {e}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; ").into())
    }
}

// ---------------------------------------------------------------------------------------------
// 7. An abort that races the upload's A5 leaves a live pin that GC never removes.
// ---------------------------------------------------------------------------------------------

/// Split API: the operator aborts checkpoint T while T's upload is about to write its pin (A5).
/// B2 deletes T's pins (none yet); then the upload writes the pin and fails `Cancelled`. The pin
/// is owned by the live epoch, so no GC pass removes it while the coordinator lives (and every
/// hash it names stays "referenced"). G4: leftovers of an aborted checkpoint are removed by the
/// next cleanup or GC pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_racing_the_pin_write_leaves_a_pin_gc_never_removes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, gates) = with_hook(local.clone(), Gates::default());
    let c = CheckpointCoordinator::open(store.clone(), "j", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("j"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let t = c.trigger(SnapshotKind::Checkpoint)?;
    let p = job.backends[0].snapshot(&t)?;
    let gate = gates.hold(&["put"], "pins/j/chk-");
    let upload = tokio::spawn({
        let store = store.clone();
        async move { p.upload(&*store).await.map(drop) }
    });
    gate.reached().await;
    c.abort(&t).await?;
    gate.release();
    let uploaded = upload.await?;
    assert!(uploaded.is_err(), "the aborted upload must not succeed");
    gc_now(&*store).await?;
    let left: Vec<String> = objects(&*store)
        .await?
        .into_iter()
        .filter(|p| p != "jobs/j/_job")
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("an aborted checkpoint left {left:?} after a GC pass").into())
    }
}

// ---------------------------------------------------------------------------------------------
// 8. `release_source` deletes the source's records even when its swap never succeeded.
// ---------------------------------------------------------------------------------------------

/// A store view in which the source job's record changes (a lease renewal of its live
/// coordinator) between every read and compare-and-swap of the claimer: what a busy source job
/// does to a slow claimer.
struct BusySource {
    record: String,
    bumps: std::sync::atomic::AtomicU64,
}

impl BusySource {
    async fn bump(&self, store: &dyn Store) -> rockpoint::Result<()> {
        let Some((bytes, version)) = store.get_versioned(&self.record).await? else {
            return Ok(());
        };
        let mut record = unseal_job(&bytes)
            .map_err(|e| rockpoint::Error::from(std::io::Error::other(e.to_string())))?;
        record.updated_at_ms += 1;
        record.lease_until_ms += 1;
        let sealed = seal_job(&record)
            .map_err(|e| rockpoint::Error::from(std::io::Error::other(e.to_string())))?;
        store.put_if(&self.record, sealed, Some(&version)).await?;
        self.bumps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Hook for BusySource {
    async fn before(&self, op: &Op<'_>, store: &dyn Store) -> rockpoint::Result<()> {
        if let Op::PutIf { path, .. } = *op
            && path == self.record
        {
            self.bump(store).await?;
        }
        Ok(())
    }
}

/// Job B claims A's retained checkpoint 1 while A's record keeps changing (A's live coordinator
/// renewing its lease faster than B's read–swap round trip). `release_source` gives up after 32
/// lost swaps and then runs D1–D3 on A's checkpoint anyway: A's record still retains 1, but its
/// metadata and private files are gone (G3: a retained checkpoint's files deleted; G2: `latest:a`
/// no longer restores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_that_loses_every_source_swap_still_discards_the_retained_source() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let a = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let first = a.checkpoint(&job.refs()).await?;
    let expected = job.scan()?;

    let (busy_store, busy) = with_hook(
        store.clone(),
        BusySource {
            record: "jobs/a/_job".into(),
            bumps: 0.into(),
        },
    );
    let b = CheckpointCoordinator::open(busy_store, "b", cfg(1, 1)).await?;
    let claimed = restore_job(
        &b,
        &RestoreSource::Metadata(first.path()),
        &dir.path().join("b"),
        1,
        2_000,
        ClaimMode::Claim,
    )
    .await;
    let record = rockpoint::admin::job_record(&*store, "a")
        .await?
        .ok_or("A has no record")?;
    let mut problems = Vec::new();
    for id in &record.retained {
        let path = chk_metadata("a", *id);
        if let Err(e) = check_restore(&*store, &path, dir.path(), &expected).await {
            problems.push(format!(
                "A's record retains checkpoint {id} after B's claim ({}; {} source swaps lost), \
                 but: {e}",
                if claimed.is_ok() {
                    "claim reported success"
                } else {
                    "claim failed"
                },
                busy.bumps.load(Ordering::SeqCst)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; ").into())
    }
}

// ---------------------------------------------------------------------------------------------
// 9. (Found by the simulation, seed 4111.) A zombie's restore loses its files once its reader pin
//    dies with its fenced epoch, and reported that as corruption.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_by_a_fenced_coordinator_reports_fenced_not_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, gates) = with_hook(local.clone(), Gates::default());
    let a = CheckpointCoordinator::open(store.clone(), "a", cfg(1, 1)).await?;
    let mut job = TestJob::open(&dir.path().join("a"), 1, 2_000)?;
    rewrite(&mut job, 4_000)?;
    let first = a.checkpoint(&job.refs()).await?;

    // B1 restores a's checkpoint 1 without claim; its download is held at its first shared file.
    let b1 = CheckpointCoordinator::open(store.clone(), "b", cfg(1, 1)).await?;
    let read_gate = gates.hold(&["append_verified"], "shared/");
    let restoring = tokio::spawn({
        let b1 = b1.clone();
        let source = RestoreSource::Metadata(first.path());
        let target = RestoreTarget {
            dir: dir.path().join("b1"),
            key_groups: ranges(1)[0],
            settings: settings(),
        };
        async move {
            b1.restore(&source, &[target], ClaimMode::NoClaim)
                .await
                .map(|_| ())
        }
    });
    read_gate.reached().await;

    // a subsumes checkpoint 1; B2 takes job b over (B1's reader pin dies with its epoch); GC then
    // frees checkpoint 1's files.
    rewrite(&mut job, 4_000)?;
    a.checkpoint(&job.refs()).await?;
    let _b2 = CheckpointCoordinator::open(store.clone(), "b", cfg(1, 1)).await?;
    let gc = gc_now(&*local).await?;
    assert!(
        !gc.shared_files.is_empty(),
        "precondition: GC freed checkpoint 1's files once the reader's epoch was fenced: {gc:?}"
    );
    read_gate.release();
    match restoring.await? {
        Ok(()) => {
            Err("the fenced coordinator's restore reported success over deleted files".into())
        }
        Err(e) if matches!(e.kind(), ErrorKind::Fenced | ErrorKind::NotFound) => Ok(()),
        Err(e) => Err(format!(
            "a fenced coordinator's restore reported {:?}: {e}",
            e.kind()
        )
        .into()),
    }
}
