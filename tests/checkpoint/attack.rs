//! Hostile review of the session's protocol changes (join_all in `drive`, upload split, GC split,
//! record format 2, restore through fs). Each test is named after the defect it would catch; a
//! test marked FINDING failed on the code it was written against and passes since its fix.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use rockpoint::store::WriteMode;
use rockpoint::{CheckpointCoordinator, CheckpointSettings, Store};

fn cfg() -> CheckpointSettings {
    CheckpointSettings {
        retained: 1,
        max_concurrent: 1,
        ..CheckpointSettings::default()
    }
}

/// A store request whose caller goes away while it is in flight still lands (a blocking write
/// `spawn_blocking` already started, an HTTP PUT already sent): this hook models that for the
/// pin write (A5) and the private-file upload (A7) of the armed checkpoint. The matching call
/// never returns to its caller; its write is applied to the wrapped store by a detached task as
/// soon as the abort's B2 has listed the checkpoint's directory (D3), i.e. just after B2 looked.
#[derive(Default)]
struct LateLanding {
    armed: AtomicBool,
    inner: std::sync::Mutex<Option<Arc<dyn Store>>>,
    held: std::sync::atomic::AtomicU64,
    listed: tokio::sync::watch::Sender<bool>,
    landed: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

#[async_trait::async_trait]
impl Hook for LateLanding {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        if !self.armed.load(Ordering::SeqCst) {
            return Ok(());
        }
        let inner = self.inner.lock().unwrap().clone().expect("inner store set");
        let mut listed = self.listed.subscribe();
        let task = match *op {
            Op::Put { path, data, mode }
                if path.starts_with("pins/job/chk-") && path.contains("kg-00000-") =>
            {
                let (path, data) = (path.to_owned(), data.clone());
                tokio::spawn(async move {
                    let _ = listed.wait_for(|l| *l).await;
                    inner.put(&path, data, mode).await.expect("late pin write");
                })
            }
            Op::PutFile {
                path,
                file,
                offset,
                len,
                expected,
            } if path.starts_with("jobs/job/chk-") => {
                // The request carries the bytes: read them now (the staging link goes with A8).
                let bytes = std::fs::read(file).expect("private file readable");
                let bytes = bytes[offset as usize..(offset + len) as usize].to_vec();
                let _ = expected;
                let path = path.to_owned();
                tokio::spawn(async move {
                    let _ = listed.wait_for(|l| *l).await;
                    inner
                        .put(&path, bytes.into(), WriteMode::Replace)
                        .await
                        .expect("late private file write");
                })
            }
            _ => return Ok(()),
        };
        self.landed.lock().unwrap().push(task);
        self.held.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn after(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        if let Op::List { prefix } = op
            && self.armed.load(Ordering::SeqCst)
            && prefix.starts_with("jobs/job/chk-")
        {
            self.listed.send_replace(true);
        }
        Ok(())
    }
}

/// Defect found by the protocol attack, fixed by C5 repeating B2 for aborted checkpoints. Item 1 (AbortOnDrop): a `checkpoint()` future dropped while backend 0's pin write
/// (A5) and backend 1's private-file upload (A7) are in flight. The guard spawns B2 at once; the
/// in-flight writes land after B2 listed. The pin is owned by the live epoch and the private file
/// belongs to an id of the live epoch's block, so neither the coordinator (its next checkpoint)
/// nor GC at grace 0 ever removes them while this coordinator lives. G4: leftovers of aborted
/// checkpoints are removed by the next cleanup or GC pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_checkpoint_future_leaves_late_pin_and_private_file_forever() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = local_store(&dir.path().join("root"))?;
    let (store, hook) = with_hook(local.clone(), LateLanding::default());
    *hook.inner.lock().unwrap() = Some(local.clone());
    let c = CheckpointCoordinator::open(store.clone(), "job", cfg()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    c.checkpoint(&job.refs()).await?;
    job.write(4_000)?;

    hook.armed.store(true, Ordering::SeqCst);
    let running = {
        let c = c.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move { c.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
    };
    // Both backends ran into a held request (a pin write or a private file upload).
    tokio::time::timeout(Duration::from_secs(20), async {
        while hook.held.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .map_err(|_| "the uploads never reached A5/A7")?;
    running.abort();
    let _ = running.await;
    // B2 (spawned by the guard) lists; the in-flight writes land right after.
    let tasks: Vec<_> = std::mem::take(&mut *hook.landed.lock().unwrap());
    tokio::time::timeout(Duration::from_secs(20), async {
        for t in tasks {
            t.await.expect("late write task");
        }
    })
    .await
    .map_err(|_| "B2 never listed the dropped checkpoint's directory")?;
    hook.armed.store(false, Ordering::SeqCst);

    // The job goes on: a checkpoint commits once the slot is free, then GC at grace 0.
    let next = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match c.checkpoint(&job.refs()).await {
                Err(e) if e.to_string().contains("already in flight") => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(|_| "the dropped checkpoint's slot was never freed")??;
    gc_now(&*store).await?;
    gc_now(&*store).await?;
    let dropped = "chk-00000000000000000002";
    assert_eq!(next.id(), 3);
    let left: Vec<String> = objects(&*store)
        .await?
        .into_iter()
        .filter(|p| p.contains(dropped))
        .collect();
    assert!(
        left.is_empty(),
        "the dropped checkpoint 2 left {left:?} after the next checkpoint and two GC passes"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Crafted records (items 4 and 6) and restore targets (item 5)
// ---------------------------------------------------------------------------------------------

fn reseal(version: u32, body: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(52 + body.len());
    out.extend_from_slice(b"RKPTMETA");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    bytes::Bytes::from(out)
}

async fn one_checkpoint(
    base: &std::path::Path,
    store: &Arc<dyn Store>,
    job_id: &str,
) -> TestResult<(String, Scan)> {
    let c = CheckpointCoordinator::open(store.clone(), job_id, cfg()).await?;
    let mut job = TestJob::open(&base.join(job_id), 1, 1_000)?;
    job.write(2_000)?;
    let done = c.checkpoint(&job.refs()).await?;
    c.shutdown(rockpoint::JobEnd::Suspended).await?;
    Ok((done.path(), job.scan()?))
}

/// Item 4: GC now ignores `_metadata` and `_job` objects at paths the engine cannot write. Copies
/// of a complete checkpoint's record at such paths must neither make GC delete what the complete
/// checkpoint references nor be restorable (they describe another path); a copy at an engine path
/// of a job without a record is unreadable to GC and blocks its shared deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_records_at_foreign_paths_neither_delete_referenced_files_nor_restore() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (path, scan) = one_checkpoint(dir.path(), &store, "v").await?;
    let bytes = store.get(&path).await?;
    for foreign in [
        "jobs/v/chk-1/_metadata",
        "jobs/j/chk-1/_metadata",
        "jobs/v/chk-00000000000000000001x/_metadata",
    ] {
        store
            .put(foreign, bytes.clone(), WriteMode::CreateOnly)
            .await?;
    }
    store
        .put("jobs/a/b/_job", bytes.clone(), WriteMode::CreateOnly)
        .await?;
    let report = gc_now(&*store).await?;
    assert!(report.unreadable.is_empty(), "{:?}", report.unreadable);
    assert!(
        gc_now(&*store).await?.is_empty(),
        "GC twice deletes nothing"
    );
    assert_eq!(restore_scan(&*store, &path, dir.path()).await?, scan);
    for foreign in ["jobs/v/chk-1/_metadata", "jobs/j/chk-1/_metadata"] {
        let err = rockpoint::restore::read_metadata(
            &*store,
            &rockpoint::RestoreSource::Metadata(foreign.into()),
        )
        .await
        .err()
        .ok_or_else(|| format!("a copy at {foreign} was accepted as a checkpoint"))?;
        assert!(
            matches!(
                err.kind(),
                rockpoint::ErrorKind::Corruption | rockpoint::ErrorKind::Invalid
            ),
            "{err}"
        );
    }
    // At an engine path of a job without a record: GC cannot read it, so deletes nothing shared.
    store
        .put(
            "jobs/j/chk-00000000000000000001/_metadata",
            bytes.clone(),
            WriteMode::CreateOnly,
        )
        .await?;
    let report = gc_now(&*store).await?;
    assert!(
        report
            .unreadable
            .iter()
            .any(|u| u.contains("jobs/j/chk-00000000000000000001/_metadata")),
        "{:?}",
        report.unreadable
    );
    assert_eq!(restore_scan(&*store, &path, dir.path()).await?, scan);
    Ok(())
}

/// Item 6: metadata records of every foreign version, a legacy (type-name) body under a version 2
/// header, and state records with an empty or a huge tag: each is a clear error when restored,
/// never a panic and never a restored backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_record_versions_and_state_tags_are_refused_not_misread() -> TestResult {
    use rockpoint::format::StateInfoFormat;
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (path, scan) = one_checkpoint(dir.path(), &store, "v").await?;
    let original = store.get(&path).await?;
    let body = original[52..].to_vec();
    let metadata: rockpoint::CheckpointMetadata = rmp_serde::from_slice(&body)?;
    let with_states = |f: &dyn Fn(&mut rockpoint::StateInfo)| -> TestResult<Vec<u8>> {
        let mut m = metadata.clone();
        for s in &mut m.backends[0].states {
            f(s);
        }
        Ok(rmp_serde::to_vec_named(&m)?)
    };
    let variants: Vec<(&str, bytes::Bytes)> = vec![
        ("version 0", reseal(0, &body)),
        (
            "a newer version",
            reseal(rockpoint::format::METADATA_FORMAT_VERSION + 1, &body),
        ),
        ("version u32::MAX", reseal(u32::MAX, &body)),
        (
            "legacy states, v2 header",
            reseal(
                2,
                &with_states(&|s| s.format = StateInfoFormat::RustTypeNames)?,
            ),
        ),
        (
            "legacy states, v1 header",
            reseal(
                1,
                &with_states(&|s| s.format = StateInfoFormat::RustTypeNames)?,
            ),
        ),
        (
            "empty key tag",
            reseal(2, &with_states(&|s| s.key_tag.clear())?),
        ),
        (
            "empty value tag",
            reseal(2, &with_states(&|s| s.value_tag.clear())?),
        ),
        (
            "huge key tag",
            reseal(2, &with_states(&|s| s.key_tag = "x".repeat(4 << 20))?),
        ),
        ("empty name", reseal(2, &with_states(&|s| s.name.clear())?)),
    ];
    let mut accepted = Vec::new();
    let mut messages = Vec::new();
    for (i, (what, bytes)) in variants.into_iter().enumerate() {
        store.put(&path, bytes, WriteMode::Replace).await?;
        let target = rockpoint::RestoreTarget {
            dir: dir.path().join(format!("crafted-{i}")),
            key_groups: metadata.backends[0].key_groups,
            settings: settings(),
        };
        let source = rockpoint::RestoreSource::Metadata(path.clone());
        match rockpoint::restore_backend(&*store, &source, &target, 4, None).await {
            Ok(_) => accepted.push(what),
            Err(e) => {
                println!("{what}: {:?}: {e}", e.kind());
                messages.push((what, e.to_string()));
            }
        }
    }
    store.put(&path, original, WriteMode::Replace).await?;
    assert!(
        accepted.is_empty(),
        "crafted records restored: {accepted:?}"
    );
    assert_eq!(restore_scan(&*store, &path, dir.path()).await?, scan);
    let _ = messages;
    Ok(())
}

/// FINDING (G5, "a clear error naming what is wrong"). A checkpoint whose recorded state differs
/// from the restored backend's only in a type tag (here: an empty key tag) is refused — but the
/// error lists the state *names* on both sides, which are identical, so it names nothing that is
/// wrong: "holds states [\"lists\", ...], the checkpoint recorded [\"lists\", ...]".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refusing_a_state_tag_mismatch_names_only_identical_state_lists() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (path, _) = one_checkpoint(dir.path(), &store, "v").await?;
    let original = store.get(&path).await?;
    let mut metadata: rockpoint::CheckpointMetadata = rmp_serde::from_slice(&original[52..])?;
    for s in &mut metadata.backends[0].states {
        s.key_tag.clear();
    }
    store
        .put(
            &path,
            reseal(2, &rmp_serde::to_vec_named(&metadata)?),
            WriteMode::Replace,
        )
        .await?;
    let target = rockpoint::RestoreTarget {
        dir: dir.path().join("r"),
        key_groups: metadata.backends[0].key_groups,
        settings: settings(),
    };
    let err = rockpoint::restore_backend(
        &*store,
        &rockpoint::RestoreSource::Metadata(path.clone()),
        &target,
        4,
        None,
    )
    .await
    .err()
    .ok_or("a checkpoint with emptied key tags was restored")?;
    let text = err.to_string();
    assert!(
        text.contains("tag") || text.contains("state of"),
        "the error does not say which state differs how: {text}"
    );
    Ok(())
}

/// Item 5: R7 onto an existing target. An empty directory is replaced; a non-empty directory, a
/// regular file and a symlink are refused and left exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_onto_an_existing_target_replaces_only_an_empty_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (path, scan) = one_checkpoint(dir.path(), &store, "v").await?;
    let (_, metadata) = rockpoint::restore::read_metadata(
        &*store,
        &rockpoint::RestoreSource::Metadata(path.clone()),
    )
    .await?;
    let source = rockpoint::RestoreSource::Metadata(path.clone());
    let target = |name: &str| rockpoint::RestoreTarget {
        dir: dir.path().join(name),
        key_groups: metadata.backends[0].key_groups,
        settings: settings(),
    };
    // Empty directory: restored into.
    std::fs::create_dir(dir.path().join("empty"))?;
    let backend = rockpoint::restore_backend(&*store, &source, &target("empty"), 4, None).await?;
    assert_eq!(scan_backends(std::slice::from_ref(&backend))?, scan);
    // Non-empty directory.
    std::fs::create_dir(dir.path().join("full"))?;
    std::fs::write(dir.path().join("full/keep"), b"mine")?;
    let err = rockpoint::restore_backend(&*store, &source, &target("full"), 4, None)
        .await
        .err()
        .ok_or("restored over a non-empty directory")?;
    println!("non-empty dir: {:?}: {err}", err.kind());
    assert_eq!(std::fs::read(dir.path().join("full/keep"))?, b"mine");
    assert_eq!(std::fs::read_dir(dir.path().join("full"))?.count(), 1);
    // A regular file.
    std::fs::write(dir.path().join("file"), b"mine")?;
    let err = rockpoint::restore_backend(&*store, &source, &target("file"), 4, None)
        .await
        .err()
        .ok_or("restored over a regular file")?;
    println!("file: {:?}: {err}", err.kind());
    // (kind reported separately by restore_onto_a_regular_file_is_reported_as_a_transient_error)
    assert_eq!(std::fs::read(dir.path().join("file"))?, b"mine");
    // A symlink to an empty directory elsewhere.
    std::fs::create_dir(dir.path().join("elsewhere"))?;
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("link"))?;
    let outcome = rockpoint::restore_backend(&*store, &source, &target("link"), 4, None).await;
    println!("symlink: {:?}", outcome.as_ref().err());
    assert!(
        std::fs::symlink_metadata(dir.path().join("link"))?.is_symlink() || outcome.is_ok(),
        "the symlink vanished though the restore failed"
    );
    // No temporary directory is left next to the targets.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

/// FINDING. A restore target that is a regular file passes the "exists and is not empty" check
/// (read_dir fails and counts as empty), downloads everything, and then fails in R7 with kind
/// `Unavailable` (a transient I/O error: the CLI's retry exit code) instead of `Invalid` like a
/// non-empty directory. A retrying caller re-downloads the whole backend forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_onto_a_regular_file_is_reported_as_a_transient_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let (path, _) = one_checkpoint(dir.path(), &store, "v").await?;
    let (_, metadata) = rockpoint::restore::read_metadata(
        &*store,
        &rockpoint::RestoreSource::Metadata(path.clone()),
    )
    .await?;
    std::fs::write(dir.path().join("file"), b"mine")?;
    let target = rockpoint::RestoreTarget {
        dir: dir.path().join("file"),
        key_groups: metadata.backends[0].key_groups,
        settings: settings(),
    };
    let err = rockpoint::restore_backend(
        &*store,
        &rockpoint::RestoreSource::Metadata(path),
        &target,
        4,
        None,
    )
    .await
    .err()
    .ok_or("restored over a regular file")?;
    assert_eq!(std::fs::read(dir.path().join("file"))?, b"mine");
    assert_eq!(err.kind(), rockpoint::ErrorKind::Invalid, "{err}");
    Ok(())
}

/// Item 1, fencing during `drive`: c1's `checkpoint()` of two backends is held at backend 0's pin
/// write (A5) while backend 1 goes on; a second coordinator of the job opens (claim + recovery O2)
/// meanwhile. Then the pin lands (an older epoch's), c1's checkpoint fails, and one GC pass at
/// grace 0 leaves nothing of c1's checkpoint; the live coordinator's checkpoint restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_coordinator_opening_during_drive_leaves_nothing_after_one_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (store, gates) = with_hook(
        local_store(&dir.path().join("root"))?,
        common::gates::Gates::default(),
    );
    let c1 = CheckpointCoordinator::open(store.clone(), "job", cfg()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 2, 2_000)?;
    job.write(4_000)?;
    c1.checkpoint(&job.refs()).await?;
    job.write(4_000)?;
    let gate = gates.hold(&["put"], "pins/job/chk-00000000000000000002-kg-00000-");
    let running = {
        let c1 = c1.clone();
        let backends = job.backends.clone();
        tokio::spawn(async move { c1.checkpoint(&backends.iter().collect::<Vec<_>>()).await })
    };
    gate.reached().await;
    let c2 = CheckpointCoordinator::open(store.clone(), "job", cfg()).await?;
    gate.release();
    let outcome = running.await?;
    assert!(
        outcome.is_err(),
        "the fenced coordinator's checkpoint must fail"
    );
    gc_now(&*store).await?;
    let left: Vec<String> = objects(&*store)
        .await?
        .into_iter()
        .filter(|p| p.contains("chk-00000000000000000002") || p.starts_with("pins/"))
        .collect();
    assert!(
        left.is_empty(),
        "c1's checkpoint left {left:?} after a GC pass"
    );
    assert!(
        gc_now(&*store).await?.is_empty(),
        "GC twice deletes nothing"
    );
    job.write(1_000)?;
    let live = c2.checkpoint(&job.refs()).await?;
    gc_now(&*store).await?;
    assert_eq!(
        restore_scan(&*store, &live.path(), dir.path()).await?,
        job.scan()?
    );
    Ok(())
}
