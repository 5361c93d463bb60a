//! Hostile review of the rescaling restore (`restore::rescale`, `engine::rescope`), the restore
//! entry points that now go through it, and canonical savepoints. Each test is named after the
//! defect it shows (it fails while the defect is there) or the property it confirms (it passes).

use crate::common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::gates::Gates;
use common::*;
use rockpoint::canonical::CanonicalReader;
use rockpoint::format::{CANONICAL_FILE, SnapshotFormat};
use rockpoint::store::WriteMode;
use rockpoint::{
    CheckpointCoordinator, CheckpointMetadata, CheckpointSettings, ClaimMode, ErrorKind,
    KeyGroupRange, KeyedStateBackend, RestoreSource, RestoreTarget, Store, ValueStateDescriptor,
};

fn kg(a: u32, b: u32) -> KeyGroupRange {
    KeyGroupRange::new(a, b).unwrap()
}

/// The metadata envelope, spelled as `docs/protocols.md` documents it.
fn seal_metadata(metadata: &CheckpointMetadata, version: u32) -> TestResult<Bytes> {
    let body = rmp_serde::to_vec_named(metadata)?;
    let mut out = Vec::with_capacity(52 + body.len());
    out.extend_from_slice(b"RKPTMETA");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// Names in `dir` starting with a dot: temporaries and scratch directories of restores.
fn dot_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Restores `source` into `targets` (one `restore_backend` each, outside any job).
async fn restore_ranges(
    store: &dyn Store,
    source: &RestoreSource,
    base: &Path,
    targets: &[KeyGroupRange],
) -> TestResult<Vec<KeyedStateBackend>> {
    let mut backends = Vec::new();
    for key_groups in targets {
        let target = RestoreTarget {
            dir: base.join(format!(
                "r-{}-{}-{}",
                key_groups.start(),
                key_groups.end(),
                rockpoint_test_nonce()
            )),
            key_groups: *key_groups,
            settings: settings(),
        };
        backends.push(rockpoint::restore_backend(store, source, &target, 4, None).await?);
    }
    Ok(backends)
}

/// A job at `parallelism` with flushed SSTs, deletes and unflushed log tails, checkpointed once.
async fn source_job(
    store: std::sync::Arc<dyn Store>,
    base: &Path,
    job_id: &str,
    parallelism: u32,
    settings: CheckpointSettings,
) -> TestResult<(CheckpointCoordinator, TestJob, RestoreSource)> {
    let mut job = TestJob::open(&base.join(job_id), parallelism, 2_000)?;
    job.write(3_000)?;
    for backend in &job.backends {
        backend.flush()?;
    }
    job.delete(200)?;
    job.write(800)?;
    let c = CheckpointCoordinator::open(store, job_id, settings).await?;
    let done = c.checkpoint(&job.refs()).await?;
    Ok((
        c,
        job,
        RestoreSource::Metadata(done.metadata.metadata_path()),
    ))
}

fn targets_in(base: &Path, ranges: &[KeyGroupRange]) -> Vec<RestoreTarget> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, key_groups)| RestoreTarget {
            dir: base.join(format!("t{i}")),
            key_groups: *key_groups,
            settings: settings(),
        })
        .collect()
}

// -------------------------------------------------------------------------------------------
// Canonical savepoints
// -------------------------------------------------------------------------------------------

/// `drive_canonical` (src/checkpoint/coordinator/mod.rs) records `backend.states()` in the handle
/// *after* the stream was written and uploaded, while the stream's header holds the states of the
/// moment it was written. A state the operator registers while the stream uploads (the operator
/// is not blocked) is in the metadata but not in the stream: the committed savepoint can never
/// be restored (`open_restored` compares the two and reports Corruption).
///
/// A defect the hostile review of the rescaling work found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canonical_savepoint_registering_a_state_during_its_upload_is_unrestorable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, gates) = with_hook(local_store(&dir.path().join("root"))?, Gates::default());
    let mut job = TestJob::open(&dir.path().join("job"), 1, 500)?;
    job.write(1_000)?;
    let oracle = job.scan()?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    let upload = gates.hold(&["put_file"], CANONICAL_FILE);
    let refs = job.refs();
    let savepoint = c.savepoint_canonical(&refs);
    tokio::pin!(savepoint);
    tokio::select! {
        done = &mut savepoint => panic!("the savepoint finished while its upload was held: {:?}", done.map(|d| d.id())),
        _ = upload.reached() => {}
    }
    const LATE: ValueStateDescriptor<u64, u64> = ValueStateDescriptor::new("late");
    job.backends[0].state(&LATE)?;
    upload.release();
    let done = savepoint.await?;
    let stream = store
        .get(&done.metadata.backends[0].private_files[0].path)
        .await?;
    let header_states: Vec<String> = CanonicalReader::new(&stream[..])?
        .header()
        .states
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let recorded: Vec<String> = done.metadata.backends[0]
        .states
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let target = RestoreTarget {
        dir: dir.path().join("restored"),
        key_groups: KeyGroupRange::all(MAX_PARALLELISM)?,
        settings: settings(),
    };
    let source = RestoreSource::Metadata(done.metadata.metadata_path());
    match rockpoint::restore_backend(&*store, &source, &target, 4, None).await {
        Ok(backend) => assert!(scan_backends(&[backend])? == oracle),
        Err(e) => panic!(
            "a committed canonical savepoint cannot be restored: its metadata records states \
             {recorded:?}, its stream {header_states:?}: {e}"
        ),
    }
    Ok(())
}

/// A canonical record's backend is validated by `validate_canonical`
/// (src/checkpoint/metadata.rs), which skips the check every native backend gets: key groups
/// within the record's max parallelism. A hostile record naming key groups [0, 200) of max
/// parallelism 128 is accepted by `read_metadata` (and so by GC, `list`, `verify`) instead of
/// being refused as corrupt (G5).
///
/// A defect the hostile review of the rescaling work found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canonical_record_with_key_groups_beyond_max_parallelism_passes_validation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 200)?;
    job.write(300)?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    let done = c.savepoint_canonical(&job.refs()).await?;
    let mut crafted: CheckpointMetadata = (*done.metadata).clone();
    let backend = &mut crafted.backends[0];
    backend.key_groups = kg(0, 200);
    let file = &mut backend.private_files[0];
    file.path = file.path.replace("kg-00000-00128", "kg-00000-00200");
    store
        .put(
            &file.path,
            store
                .get(&done.metadata.backends[0].private_files[0].path)
                .await?,
            WriteMode::Replace,
        )
        .await?;
    let path = crafted.metadata_path();
    store
        .put(&path, seal_metadata(&crafted, 3)?, WriteMode::Replace)
        .await?;
    let read = rockpoint::restore::read_metadata(&*store, &RestoreSource::Metadata(path)).await;
    match read {
        Ok((_, m)) => panic!(
            "a canonical record whose backend {} exceeds its max_parallelism {} was accepted",
            m.backends[0].key_groups, m.max_parallelism
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Corruption, "{e}"),
    }
    Ok(())
}

/// `download_backend` refuses a canonical handle (it is not RocksDB files) and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_backend_refuses_a_canonical_handle_and_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 200)?;
    job.write(300)?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    let done = c.savepoint_canonical(&job.refs()).await?;
    assert_eq!(done.metadata.format, SnapshotFormat::Canonical);
    let target = dir.path().join("raw");
    let err =
        rockpoint::restore::download_backend(&*store, &done.metadata.backends[0], &target, 4, None)
            .await
            .expect_err("a canonical handle is not downloadable as RocksDB files");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(!target.exists());
    assert!(dot_entries(dir.path()).is_empty());
    Ok(())
}

/// A canonical savepoint whose stream upload lands but reports failure (ambiguous) is aborted;
/// its stream is a private file of an uncommitted id: the abort or the next GC removes it, and
/// GC run twice deletes nothing the second time (G4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ambiguous_canonical_stream_upload_leaves_nothing_after_abort_and_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let (store, faults) = with_hook(raw.clone(), UploadFaults::default());
    let mut job = TestJob::open(&dir.path().join("job"), 2, 300)?;
    job.write(600)?;
    let c = CheckpointCoordinator::open(store.clone(), "sp", CheckpointSettings::default()).await?;
    faults
        .ambiguous_uploads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let Err(_) = c.savepoint_canonical(&job.refs()).await else {
        panic!("the upload reported failure");
    };
    faults
        .ambiguous_uploads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    gc_now(&*raw).await?;
    let left: Vec<String> = objects(&*raw)
        .await?
        .into_iter()
        .filter(|p| p.contains("/sp-"))
        .collect();
    assert!(left.is_empty(), "left of the failed savepoint: {left:?}");
    let again = gc_now(&*raw).await?;
    assert!(again.private_files.is_empty() && again.shared_files.is_empty());
    // The job still takes canonical savepoints that restore.
    let done = c.savepoint_canonical(&job.refs()).await?;
    let restored = restore_ranges(
        &*raw,
        &RestoreSource::Metadata(done.metadata.metadata_path()),
        dir.path(),
        &[KeyGroupRange::all(MAX_PARALLELISM)?],
    )
    .await?;
    assert!(scan_backends(&restored)? == job.scan()?);
    Ok(())
}

// -------------------------------------------------------------------------------------------
// All or nothing
// -------------------------------------------------------------------------------------------

/// `CheckpointCoordinator::restore` (src/checkpoint/restore/claim.rs) renames every target into
/// place in `restore_all`, then runs `open_restored` on each; a target refused there (its states
/// are not what the checkpoint recorded) fails the restore with the target directories left in
/// place, full (and the coordinator already holds the restore pin and `restored_from`). A failed
/// restore must leave nothing (G2: never a partial state).
///
/// A defect the hostile review of the rescaling work found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_refused_at_open_leaves_its_rescaled_targets_in_place() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_src, _job, source) = source_job(
        store.clone(),
        dir.path(),
        "src",
        2,
        CheckpointSettings::default(),
    )
    .await?;
    let RestoreSource::Metadata(path) = &source else {
        unreachable!()
    };
    // A record whose first backend lists one state more than its files hold.
    let (_, mut metadata) = rockpoint::restore::read_metadata(&*store, &source).await?;
    let mut ghost = metadata.backends[0].states[0].clone();
    ghost.name = "ghost".into();
    metadata.backends[0].states.push(ghost);
    metadata.backends[0]
        .states
        .sort_by(|a, b| a.name.cmp(&b.name));
    store
        .put(path, seal_metadata(&metadata, 2)?, WriteMode::Replace)
        .await?;
    let base = dir.path().join("dst");
    let targets = targets_in(&base, &[kg(0, 32), kg(32, 128)]);
    let c =
        CheckpointCoordinator::open(store.clone(), "dst", CheckpointSettings::default()).await?;
    let err = c
        .restore(&source, &targets, ClaimMode::NoClaim)
        .await
        .err()
        .expect("the states do not match the record");
    assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
    let left: Vec<PathBuf> = targets
        .iter()
        .map(|t| t.dir.clone())
        .filter(|d| d.exists())
        .collect();
    assert!(
        left.is_empty(),
        "the failed restore ({err}) left restored targets {left:?}"
    );
    assert!(dot_entries(&base).is_empty(), "{:?}", dot_entries(&base));
    Ok(())
}

/// Copies `from` into the new directory `to`, recursively (files that vanish meanwhile are
/// skipped): what a killed process leaves of a directory at that moment.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else {
            let _ = std::fs::copy(&src, &dst);
        }
    }
}

/// Runs a 3-target coordinator restore of a 2-backend checkpoint (`[0, 64)` exact, `[64, 96)`
/// and `[96, 128)` clipped from the second backend), holds the download of the second backend
/// into the scratch directory, and makes the state on disk what a SIGKILL at that moment leaves
/// (no destructor runs): the exact target's temporary `.t0.restore-*` if `keep_target` (before
/// the fix: `t0` itself, already renamed into place), the scratch directory
/// (`.t1.restore-scratch-*`; before the fix `.rockpoint-rescale-*`) if `keep_scratch`. Then a new coordinator of the
/// job (the restarted process) retries the same restore. Returns the retry's result, the oracle
/// and the targets' parent.
async fn killed_restore_then_retry(
    dir: &Path,
    keep_target: bool,
    keep_scratch: bool,
) -> TestResult<(rockpoint::Result<Vec<KeyedStateBackend>>, Scan, PathBuf)> {
    let raw = local_store(&dir.join("root"))?;
    let (_src, job, source) =
        source_job(raw.clone(), dir, "src", 2, CheckpointSettings::default()).await?;
    let oracle = job.scan()?;
    let (store, gates) = with_hook(raw.clone(), Gates::default());
    let base = dir.join("dst");
    let targets = targets_in(&base, &[kg(0, 64), kg(64, 96), kg(96, 128)]);
    let c =
        CheckpointCoordinator::open(store.clone(), "dst", CheckpointSettings::default()).await?;
    let held = gates.hold(&["append_verified"], "kg-00064-00128");
    let crash = dir.join("crash");
    {
        let restore = c.restore(&source, &targets, ClaimMode::NoClaim);
        tokio::pin!(restore);
        tokio::select! {
            done = &mut restore => panic!("the restore ended while a download was held: {:?}", done.err()),
            _ = held.reached() => {}
        }
        // Since the fix, the exact target waits in its temporary until every target is built.
        assert!(
            !base.join("t0").exists(),
            "t0 is renamed into place before t1 and t2 are built"
        );
        assert!(
            dot_entries(&base)
                .iter()
                .any(|n| n.starts_with(".t0.restore-")),
            "t0 is assembled in its temporary: {:?}",
            dot_entries(&base)
        );
        copy_tree(&base, &crash);
    }
    held.release();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // What the killed process left: no destructor ran.
    for entry in std::fs::read_dir(&crash)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let scratch = name.contains(".restore-scratch-");
        let keep = (name.starts_with(".t0.restore-") && !scratch && keep_target)
            || (scratch && keep_scratch);
        if keep && !base.join(&name).exists() {
            std::fs::rename(entry.path(), base.join(&name))?;
        }
    }
    std::fs::remove_dir_all(&crash)?;
    let c = CheckpointCoordinator::open(raw.clone(), "dst", CheckpointSettings::default()).await?;
    let retried = c.restore(&source, &targets, ClaimMode::NoClaim).await;
    Ok((retried, oracle, base))
}

/// Defect found by the hostile review, now fixed: `restore_all` (src/checkpoint/restore/rescale.rs,
/// the `Exact` branch of the download loop) downloaded an exact target straight into place —
/// renamed onto the target — before the other targets' sources were even downloaded. A process killed after that leaves one target complete
/// (a backend that opens, holding part of the job's state) and the others absent; the drop guard
/// (`Leftovers`) cannot run on a kill. The same restore retried by the restarted process fails
/// (`exists and is not empty`). The protocol promises a crash leaves only temporaries that the
/// next restore into the same targets removes (G2: never a partial state). Fixed: exact targets
/// are assembled in their temporaries too, and every target is renamed only after all were built.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_killed_after_its_exact_target_was_renamed_blocks_the_retry() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (retried, oracle, _) = killed_restore_then_retry(dir.path(), true, false).await?;
    match retried {
        Ok(restored) => assert!(scan_backends(&restored)? == oracle),
        Err(e) => panic!("retrying a restore killed midway fails: {e}"),
    }
    Ok(())
}

/// Defect found by the hostile review, now fixed: the scratch directory `.rockpoint-rescale-<nonce>`
/// of a rescaling restore killed midway holds whole downloaded backends, and nothing ever removed
/// it: `temporary_for` (src/checkpoint/restore/download.rs) sweeps only `.<target>.restore-*`, and
/// the scratch name had a fresh nonce per restore. Fixed: the scratch is named after the first
/// target that needs it (`.<target>.restore-scratch-<nonce>`), so the retry's sweep removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scratch_of_a_killed_rescaling_restore_is_never_removed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (retried, oracle, base) = killed_restore_then_retry(dir.path(), false, true).await?;
    let restored = retried?;
    assert!(scan_backends(&restored)? == oracle);
    assert!(
        dot_entries(&base).is_empty(),
        "left after the retry: {:?}",
        dot_entries(&base)
    );
    Ok(())
}

/// A restore future dropped midway (a caller's timeout) removes what it created (`Leftovers`),
/// and the same restore retried succeeds and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_rescaling_restore_leaves_nothing_and_a_retry_succeeds() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (retried, oracle, base) = killed_restore_then_retry(dir.path(), false, false).await?;
    let restored = retried?;
    assert!(scan_backends(&restored)? == oracle);
    assert!(
        dot_entries(&base).is_empty(),
        "left after the retry: {:?}",
        dot_entries(&base)
    );
    Ok(())
}

/// Two standalone rescaling restores into sibling targets of one parent at once: their scratch
/// and temporary directories do not clash, both equal the oracle, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rescaling_restores_into_siblings_do_not_clash() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_src, job, source) = source_job(
        store.clone(),
        dir.path(),
        "src",
        2,
        CheckpointSettings::default(),
    )
    .await?;
    let oracle = job.scan()?;
    let base = dir.path().join("siblings");
    let parts = [kg(0, 40), kg(40, 90), kg(90, 128)];
    let restores = parts.iter().enumerate().map(|(i, key_groups)| {
        let target = RestoreTarget {
            dir: base.join(format!("b{i}")),
            key_groups: *key_groups,
            settings: settings(),
        };
        let (store, source) = (store.clone(), source.clone());
        async move { rockpoint::restore_backend(&*store, &source, &target, 4, None).await }
    });
    let backends = futures::future::join_all(restores)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    assert_in_own_key_groups(&backends)?;
    assert!(scan_backends(&backends)? == oracle);
    assert!(dot_entries(&base).is_empty(), "{:?}", dot_entries(&base));
    Ok(())
}

/// Two backends of one checkpoint that record one state differently (another type tag): a merge
/// is refused with a clear error, before anything is renamed into place, and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn merge_of_sources_recording_a_state_differently_is_refused_and_leaves_nothing() -> TestResult
{
    const OTHER: ValueStateDescriptor<u64, u64> = ValueStateDescriptor::new("values");
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let job = TestJob::open(&dir.path().join("job"), 2, 100)?;
    let key_in = |range: KeyGroupRange| {
        (0u64..)
            .find(|k| {
                range.contains(rockpoint::key_group_of(
                    &rmp_serde::to_vec(k).unwrap(),
                    MAX_PARALLELISM,
                ))
            })
            .unwrap()
    };
    job.backends[0]
        .state(&VALUES)?
        .put(&key_in(job.backends[0].key_groups()), &vec![1u8])?;
    job.backends[1]
        .state(&OTHER)?
        .put(&key_in(job.backends[1].key_groups()), &7)?;
    let c =
        CheckpointCoordinator::open(store.clone(), "mixed", CheckpointSettings::default()).await?;
    let done = c.checkpoint(&job.refs()).await?;
    let base = dir.path().join("merged");
    let target = RestoreTarget {
        dir: base.join("all"),
        key_groups: KeyGroupRange::all(MAX_PARALLELISM)?,
        settings: settings(),
    };
    let source = RestoreSource::Metadata(done.metadata.metadata_path());
    let err = rockpoint::restore_backend(&*store, &source, &target, 4, None)
        .await
        .err()
        .expect("two records of one state");
    assert!(err.to_string().contains("values"), "{err}");
    assert!(!target.dir.exists());
    assert!(dot_entries(&base).is_empty(), "{:?}", dot_entries(&base));
    Ok(())
}

// -------------------------------------------------------------------------------------------
// Pins
// -------------------------------------------------------------------------------------------

/// A rescaling restore (a merge of both backends plus clips, several targets) while its download
/// is held: the source job subsumes the checkpoint (retained 1) and GC runs at grace 0. The
/// reader pin covers every file the routes download; the restore completes equal to the oracle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescaling_restore_survives_subsumption_and_gc_at_grace_zero_mid_download() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = local_store(&dir.path().join("root"))?;
    let keep_one = CheckpointSettings {
        retained: 1,
        ..CheckpointSettings::default()
    };
    let (src, mut job, source) = source_job(raw.clone(), dir.path(), "src", 2, keep_one).await?;
    let oracle = job.scan()?;
    let (store, gates) = with_hook(raw.clone(), Gates::default());
    let held = gates.hold(&["append_verified"], "shared/");
    let base = dir.path().join("dst");
    let targets = targets_in(&base, &[kg(0, 20), kg(20, 100), kg(100, 128)]);
    let c =
        CheckpointCoordinator::open(store.clone(), "dst", CheckpointSettings::default()).await?;
    let restore = c.restore(&source, &targets, ClaimMode::NoClaim);
    let meanwhile = async {
        held.reached().await;
        for _ in 0..2 {
            job.write(2_000)?;
            for backend in &job.backends {
                backend.flush()?;
                backend.compact()?;
            }
            src.checkpoint(&job.refs()).await?;
        }
        gc_now(&*raw).await?;
        held.release();
        TestResult::Ok(())
    };
    let (restored, meanwhile) = tokio::join!(restore, meanwhile);
    meanwhile?;
    let restored = restored?;
    assert_in_own_key_groups(&restored)?;
    assert!(scan_backends(&restored)? == oracle);
    Ok(())
}

// -------------------------------------------------------------------------------------------
// RocksDB: clips, merges, tombstones, sequence numbers
// -------------------------------------------------------------------------------------------

/// 1 → 2 by clipping (each half keeps the other's rows under a range tombstone), then the halves
/// diverge: one deletes many keys, rewrites others, appends to lists, flushes and compacts; the
/// other keeps its stale copy of the first half's key groups (older versions of the deleted keys
/// among them) under its tombstone, in SSTs and its unflushed log. Restoring that checkpoint into
/// wider ranges merges the two (either one as base, ingested copies over the other's tombstones)
/// and must equal the oracle: no deleted key comes back, no list element is doubled; nor after
/// writes, flushes, compactions, a checkpoint and another rescale of the merged backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_rows_under_clip_tombstones_never_resurface_through_later_merges() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_src, _job, source) = source_job(
        store.clone(),
        dir.path(),
        "src",
        1,
        CheckpointSettings::default(),
    )
    .await?;
    let c =
        CheckpointCoordinator::open(store.clone(), "mid", CheckpointSettings::default()).await?;
    let mut mid = restore_job(
        &c,
        &source,
        &dir.path().join("mid"),
        2,
        2_000,
        ClaimMode::NoClaim,
    )
    .await?;
    // Both halves delete and rewrite keys; only the second flushes and compacts: the first keeps
    // its stale copy of the second's key groups (older versions of keys deleted since) under its
    // tombstone, in its SSTs and its log.
    mid.delete(1_500)?;
    mid.write(1_500)?;
    mid.backends[1].flush()?;
    mid.backends[1].compact()?;
    mid.delete(300)?;
    mid.write(300)?; // unflushed
    let chk2 = c.checkpoint(&mid.refs()).await?;
    let oracle = mid.scan()?;
    let source2 = RestoreSource::Metadata(chk2.metadata.metadata_path());
    for layout in [
        vec![KeyGroupRange::all(MAX_PARALLELISM)?],
        vec![kg(0, 32), kg(32, 96), kg(96, 128)],
        vec![kg(0, 63), kg(63, 65), kg(65, 128)],
    ] {
        let restored = restore_ranges(&*store, &source2, dir.path(), &layout).await?;
        assert_in_own_key_groups(&restored)?;
        assert!(
            scan_backends(&restored)? == oracle,
            "restored as {layout:?}, the checkpoint differs from its state"
        );
    }
    // The merged backend lives on: writes, flush, compaction, a checkpoint, a split again.
    let merged = restore_job(
        &CheckpointCoordinator::open(store.clone(), "merged", CheckpointSettings::default())
            .await?,
        &source2,
        &dir.path().join("merged"),
        1,
        2_000,
        ClaimMode::NoClaim,
    )
    .await;
    let mut merged = merged?;
    merged.write(1_000)?;
    merged.delete(500)?;
    merged.backends[0].flush()?;
    merged.backends[0].compact()?;
    merged.write(200)?;
    let c3 = CheckpointCoordinator::open(store.clone(), "merged2", CheckpointSettings::default())
        .await?;
    let chk3 = c3.checkpoint(&merged.refs()).await?;
    let oracle3 = merged.scan()?;
    let restored = restore_ranges(
        &*store,
        &RestoreSource::Metadata(chk3.metadata.metadata_path()),
        dir.path(),
        &[kg(0, 50), kg(50, 128)],
    )
    .await?;
    assert_in_own_key_groups(&restored)?;
    assert!(scan_backends(&restored)? == oracle3);
    Ok(())
}

/// A claim adopts every backend of the checkpoint; the private files of a backend no target read
/// are copied by `claim_checkpoint_as` (src/checkpoint/restore/claim.rs, the `None` branch) with
/// `store.get` + `put(.., Replace)`, never checked against the hash the record holds. A damaged
/// private file is adopted into a committed checkpoint of the claiming job (and the source
/// released) instead of failing the claim with `Corruption` naming the file (G2, G5). Fix: copy it
/// verified (download through `append_verified`, or check `blake3` and size before the put).
///
/// A defect the hostile review of the rescaling work found; this test failed before its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_copies_private_files_of_unread_backends_without_verifying_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (_src, _job, source) = source_job(
        store.clone(),
        dir.path(),
        "src",
        2,
        CheckpointSettings::default(),
    )
    .await?;
    let (_, metadata) = rockpoint::restore::read_metadata(&*store, &source).await?;
    let private = &metadata.backends[1].private_files[0];
    let mut bytes = store.get(&private.path).await?.to_vec();
    bytes[0] ^= 0x20;
    store
        .put(&private.path, bytes.into(), WriteMode::Replace)
        .await?;
    let c = CheckpointCoordinator::open(store.clone(), "claimer", CheckpointSettings::default())
        .await?;
    let targets = targets_in(&dir.path().join("claimer"), &[kg(0, 64)]);
    match c.restore(&source, &targets, ClaimMode::Claim).await {
        Ok(_) => {
            let adopted = c.retained();
            panic!(
                "the claim adopted a damaged private file of backend {} unchecked as checkpoint {}",
                metadata.backends[1].key_groups,
                adopted.last().map_or(0, |m| m.checkpoint_id)
            );
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Corruption, "{e}"),
    }
    Ok(())
}
