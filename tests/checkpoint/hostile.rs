//! Hostile schedules: concurrent actors (coordinators of one job, zombies, claimers, GC at grace
//! period 0, readers) interleaved deterministically with store gates and the split API
//! (`trigger` / `snapshot` / `upload` / `complete`). Each test is named after what breaks and
//! asserts the guarantee, so it fails while the bug exists.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, ContentHash, ErrorKind, JobEnd,
    RestoreSource, RestoreTarget, SnapshotKind, Staged, Store, SweepMode, WriteMode,
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

fn shared_path(hash: &ContentHash) -> String {
    let hex = hash.to_hex();
    format!("shared/{}/{hex}", &hex[..2])
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
        rockpoint::read_metadata(store, &RestoreSource::Metadata(path.into())).await?;
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
// A store wrapper with gates: the first call of one of the given operations whose subject contains
// a needle is held until released. Every trait method is forwarded to the inner store.
// ---------------------------------------------------------------------------------------------

struct Gate {
    ops: Vec<&'static str>,
    needle: String,
    armed: AtomicBool,
    reached: tokio::sync::watch::Sender<bool>,
    released: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    fn release(&self) {
        self.released.send_replace(true);
    }

    async fn hold(&self) {
        self.reached.send_replace(true);
        let mut rx = self.released.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

struct GateStore {
    inner: Arc<dyn Store>,
    gates: Mutex<Vec<Arc<Gate>>>,
}

impl std::fmt::Debug for GateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GateStore({:?})", self.inner)
    }
}

impl GateStore {
    fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(GateStore {
            inner,
            gates: Mutex::new(Vec::new()),
        })
    }

    fn hold(&self, ops: &[&'static str], needle: &str) -> Arc<Gate> {
        let gate = Arc::new(Gate {
            ops: ops.to_vec(),
            needle: needle.to_owned(),
            armed: AtomicBool::new(true),
            reached: tokio::sync::watch::channel(false).0,
            released: tokio::sync::watch::channel(false).0,
        });
        self.gates.lock().unwrap().push(gate.clone());
        gate
    }

    async fn pass(&self, op: &'static str, subject: &str) {
        let gates: Vec<Arc<Gate>> = self.gates.lock().unwrap().clone();
        for gate in gates {
            let matches = match gate.needle.strip_prefix('=') {
                Some(exact) => subject == exact,
                None => subject.contains(&gate.needle),
            };
            if gate.ops.contains(&op) && matches && gate.armed.swap(false, Ordering::SeqCst) {
                gate.hold().await;
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for GateStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> rockpoint::Result<()> {
        self.pass("put", path).await;
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
        self.pass("put_file", path).await;
        self.inner.put_file(path, file, offset, len, expected).await
    }
    async fn get(&self, path: &str) -> rockpoint::Result<Bytes> {
        self.pass("get", path).await;
        self.inner.get(path).await
    }
    async fn get_versioned(
        &self,
        path: &str,
    ) -> rockpoint::Result<Option<(Bytes, rockpoint::ObjectVersion)>> {
        self.pass("get_versioned", path).await;
        self.inner.get_versioned(path).await
    }
    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&rockpoint::ObjectVersion>,
    ) -> rockpoint::Result<rockpoint::ObjectVersion> {
        self.pass("put_if", path).await;
        self.inner.put_if(path, data, expected).await
    }
    async fn get_stream(
        &self,
        path: &str,
    ) -> rockpoint::Result<(
        u64,
        futures::stream::BoxStream<'static, rockpoint::Result<Bytes>>,
    )> {
        self.pass("get_stream", path).await;
        self.inner.get_stream(path).await
    }
    async fn head(&self, path: &str) -> rockpoint::Result<Option<rockpoint::ObjectInfo>> {
        self.pass("head", path).await;
        self.inner.head(path).await
    }
    async fn delete(&self, path: &str) -> rockpoint::Result<()> {
        self.pass("delete", path).await;
        self.inner.delete(path).await
    }
    async fn list(&self, prefix: &str) -> rockpoint::Result<Vec<rockpoint::ObjectInfo>> {
        self.pass("list", prefix).await;
        self.inner.list(prefix).await
    }
    async fn sweep_incomplete(
        &self,
        older_than: Duration,
        mode: SweepMode,
    ) -> rockpoint::Result<Vec<String>> {
        self.inner.sweep_incomplete(older_than, mode).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn stage_file(&self, file: &Path, offset: u64, len: u64) -> rockpoint::Result<Staged> {
        self.pass("stage_file", &file.display().to_string()).await;
        self.inner.stage_file(file, offset, len).await
    }
    async fn publish_staged(&self, staged: Staged, path: &str) -> rockpoint::Result<()> {
        self.pass("publish_staged", path).await;
        self.inner.publish_staged(staged, path).await
    }
    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> rockpoint::Result<()> {
        self.pass("append_verified", path).await;
        self.inner
            .append_verified(path, expected, size, target, label)
            .await
    }
    async fn discard_staged(&self, staged: Staged) -> rockpoint::Result<()> {
        self.pass("discard_staged", "").await;
        self.inner.discard_staged(staged).await
    }
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
    let gates = GateStore::new(local.clone());
    let store: Arc<dyn Store> = gates.clone();
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
    let gates = GateStore::new(local.clone());
    let store: Arc<dyn Store> = gates.clone();
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
    let gates = GateStore::new(local.clone());
    let store: Arc<dyn Store> = gates.clone();
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
    let gates = GateStore::new(local.clone());
    let store: Arc<dyn Store> = gates.clone();
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
    out.extend_from_slice(&rockpoint::METADATA_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn seal_job(record: &rockpoint::JobRecord) -> TestResult<Bytes> {
    Ok(seal(b"RKPTJOB\0", &rmp_serde::to_vec_named(record)?))
}

fn unseal_job(bytes: &[u8]) -> TestResult<rockpoint::JobRecord> {
    Ok(rmp_serde::from_slice(&bytes[52..])?)
}

/// A hostile (or bit-flipped-then-resealed) job record whose epoch is `u64::MAX` passes every
/// check of the record, and then `open` (claim: `epoch + 1`) and GC (fence: `epoch + 1`) overflow
/// and panic. G5: bad input gets a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_record_at_the_largest_epoch_panics_open_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let record = rockpoint::JobRecord {
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
    let gates = GateStore::new(local.clone());
    let store: Arc<dyn Store> = gates.clone();
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
    inner: Arc<dyn Store>,
    record: String,
    bumps: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for BusySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusySource({:?})", self.inner)
    }
}

impl BusySource {
    async fn bump(&self) -> rockpoint::Result<()> {
        let Some((bytes, version)) = self.inner.get_versioned(&self.record).await? else {
            return Ok(());
        };
        let mut record = unseal_job(&bytes)
            .map_err(|e| rockpoint::Error::from(std::io::Error::other(e.to_string())))?;
        record.updated_at_ms += 1;
        record.lease_until_ms += 1;
        let sealed = seal_job(&record)
            .map_err(|e| rockpoint::Error::from(std::io::Error::other(e.to_string())))?;
        self.inner
            .put_if(&self.record, sealed, Some(&version))
            .await?;
        self.bumps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Store for BusySource {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> rockpoint::Result<()> {
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
        self.inner.put_file(path, file, offset, len, expected).await
    }
    async fn get(&self, path: &str) -> rockpoint::Result<Bytes> {
        self.inner.get(path).await
    }
    async fn get_versioned(
        &self,
        path: &str,
    ) -> rockpoint::Result<Option<(Bytes, rockpoint::ObjectVersion)>> {
        self.inner.get_versioned(path).await
    }
    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&rockpoint::ObjectVersion>,
    ) -> rockpoint::Result<rockpoint::ObjectVersion> {
        if path == self.record {
            self.bump().await?;
        }
        self.inner.put_if(path, data, expected).await
    }
    async fn get_stream(
        &self,
        path: &str,
    ) -> rockpoint::Result<(
        u64,
        futures::stream::BoxStream<'static, rockpoint::Result<Bytes>>,
    )> {
        self.inner.get_stream(path).await
    }
    async fn head(&self, path: &str) -> rockpoint::Result<Option<rockpoint::ObjectInfo>> {
        self.inner.head(path).await
    }
    async fn delete(&self, path: &str) -> rockpoint::Result<()> {
        self.inner.delete(path).await
    }
    async fn list(&self, prefix: &str) -> rockpoint::Result<Vec<rockpoint::ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn sweep_incomplete(
        &self,
        older_than: Duration,
        mode: SweepMode,
    ) -> rockpoint::Result<Vec<String>> {
        self.inner.sweep_incomplete(older_than, mode).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn stage_file(&self, file: &Path, offset: u64, len: u64) -> rockpoint::Result<Staged> {
        self.inner.stage_file(file, offset, len).await
    }
    async fn publish_staged(&self, staged: Staged, path: &str) -> rockpoint::Result<()> {
        self.inner.publish_staged(staged, path).await
    }
    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> rockpoint::Result<()> {
        self.inner
            .append_verified(path, expected, size, target, label)
            .await
    }
    async fn discard_staged(&self, staged: Staged) -> rockpoint::Result<()> {
        self.inner.discard_staged(staged).await
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

    let busy = Arc::new(BusySource {
        inner: store.clone(),
        record: "jobs/a/_job".into(),
        bumps: 0.into(),
    });
    let b = CheckpointCoordinator::open(busy.clone(), "b", cfg(1, 1)).await?;
    let claimed = restore_job(
        &b,
        &RestoreSource::Metadata(first.path()),
        &dir.path().join("b"),
        1,
        2_000,
        ClaimMode::Claim,
    )
    .await;
    let record = rockpoint::job_record(&*store, "a")
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
    let gates = GateStore::new(local.clone());
    let store: Arc<dyn Store> = gates.clone();
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
