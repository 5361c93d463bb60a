//! `rockpoint restore` as an operator runs it, against the real binary: every backend in one call,
//! all or nothing (a failure of one backend leaves nothing of the others, and the same command then
//! succeeds), targets refused before anything is read, target names up to NAME_MAX, and Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, JobEnd, KeyGroupRange,
    KeyedStateBackend, LocalStore, RestoreSource, Store, ValueStateDescriptor,
};

mod common;
use common::TestResult;
use common::{rockpoint, tree};

const COUNTS: ValueStateDescriptor<u64, u64> = ValueStateDescriptor::new("counts");
const BLOBS: ValueStateDescriptor<u64, Vec<u8>> = ValueStateDescriptor::new("blobs");
const MAX_PARALLELISM: u32 = 16;
/// Keys written (each into the backend owning its key group).
const KEYS: u64 = 300;

fn group_of(key: u64) -> u32 {
    rockpoint::key_group_of(&rmp_serde::to_vec(&key).unwrap(), MAX_PARALLELISM)
}

/// A root (`dir/root`) with one committed checkpoint (`job/1`) of backends owning `ranges`: every
/// key below [`KEYS`] in its backend's `counts` as `key * 3`, and, when `blob_bytes` > 0, `blobs`
/// keys each holding `blob_bytes` of incompressible bytes (`blob_keys` of them).
fn root_with_backends(
    dir: &Path,
    ranges: &[(u32, u32)],
    blob_keys: u64,
    blob_bytes: usize,
) -> rockpoint::Result<PathBuf> {
    let root = dir.join("root");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root)?);
        let c = CheckpointCoordinator::open(store, "job", CheckpointSettings::default()).await?;
        let mut backends = Vec::new();
        for (i, (start, end)) in ranges.iter().enumerate() {
            let range = KeyGroupRange::new(*start, *end)?;
            let backend = KeyedStateBackend::open(
                dir.join(format!("live-{i}")),
                MAX_PARALLELISM,
                range,
                BackendSettings::default(),
            )?;
            let counts = backend.state(&COUNTS)?;
            for key in (0..KEYS).filter(|&k| range.contains(group_of(k))) {
                counts.put(&key, &(key * 3))?;
            }
            if blob_bytes > 0 {
                let blobs = backend.state(&BLOBS)?;
                for key in (0..blob_keys).filter(|&k| range.contains(group_of(k))) {
                    let mut value = vec![0u8; blob_bytes];
                    blake3::Hasher::new()
                        .update(&key.to_le_bytes())
                        .finalize_xof()
                        .fill(&mut value);
                    blobs.put(&key, &value)?;
                }
            }
            backends.push(backend);
        }
        let refs: Vec<&KeyedStateBackend> = backends.iter().collect();
        c.checkpoint(&refs).await?;
        c.shutdown(JobEnd::Suspended).await
    })?;
    Ok(root)
}

/// `rockpoint restore job/1 [--key-groups R]... --target target`.
fn restore(root: &Path, ranges: &[&str], target: &Path) -> Output {
    let mut command = rockpoint(root);
    command.args(["restore", "job/1"]);
    for range in ranges {
        command.args(["--key-groups", range]);
    }
    command.arg("--target").arg(target).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The pin records of the root (files under `pins/`): a restore leaves none behind.
fn pins(root: &Path) -> Vec<String> {
    tree(&root.join("pins"))
        .into_iter()
        .filter(|p| root.join("pins").join(p).is_file())
        .collect()
}

/// Checks that `dir` is a backend of `range` holding exactly the `counts` rows written for it.
fn assert_restored(dir: &Path, range: (u32, u32)) -> TestResult {
    let range = KeyGroupRange::new(range.0, range.1)?;
    let backend = KeyedStateBackend::open(dir, MAX_PARALLELISM, range, BackendSettings::default())?;
    let counts = backend.state(&COUNTS)?;
    let inside: Vec<u64> = (0..KEYS).filter(|&k| range.contains(group_of(k))).collect();
    assert!(!inside.is_empty());
    for &key in &inside {
        assert_eq!(counts.get(&key)?, Some(key * 3), "key {key} in {range}");
    }
    // Nothing else: a row of another key group would show up in the raw scan.
    let scan = backend.scan_raw()?;
    assert_eq!(
        scan["counts"].len(),
        inside.len(),
        "rows restored into {range}"
    );
    for (key, _) in scan.values().flatten() {
        let group = u32::from(u16::from_be_bytes([key[0], key[1]]));
        assert!(
            range.contains(group),
            "a row of key group {group} in {range}"
        );
    }
    Ok(())
}

/// Without `--key-groups`, every backend of the checkpoint comes back, each in `kg-START-END`
/// under the target, holding exactly its rows; `--json` says the same; repeated `--key-groups`
/// rescale (3 backends into 2) the same way. No progress bar pollutes stderr when it is not a
/// terminal.
#[test]
fn restore_without_key_groups_restores_every_backend_into_its_own_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = root_with_backends(dir.path(), &[(0, 5), (5, 11), (11, 16)], 0, 0)?;
    let target = dir.path().join("restored");
    let out = restore(&root, &[], &target);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "",
        "no bar or log on a stderr that is not a terminal"
    );
    assert_eq!(names(&target), ["kg-0-5", "kg-11-16", "kg-5-11"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 backends"), "{stdout}");
    for (start, end) in [(0, 5), (5, 11), (11, 16)] {
        let backend = target.join(format!("kg-{start}-{end}"));
        assert!(stdout.contains(&backend.display().to_string()), "{stdout}");
        assert_restored(&backend, (start, end))?;
    }

    let json_target = dir.path().join("restored-json");
    let out = rockpoint(&root)
        .args(["--json", "restore", "job/1", "--target"])
        .arg(&json_target)
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["id"], 1, "{report}");
    let targets = report["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3, "{report}");
    for t in targets {
        assert_eq!(t["route"], "exact", "{report}");
        assert!(t["size_bytes"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(t["states"], serde_json::json!(["counts"]), "{report}");
        assert!(Path::new(t["dir"].as_str().unwrap()).is_dir(), "{report}");
    }
    assert!(report["read_bytes"].as_u64().unwrap() > 0, "{report}");
    assert!(report["duration_ms"].is_u64(), "{report}");

    let rescaled = dir.path().join("rescaled");
    let out = restore(&root, &["0..8", "8..16"], &rescaled);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&rescaled), ["kg-0-8", "kg-8-16"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("merged with"), "{stdout}");
    assert_restored(&rescaled.join("kg-0-8"), (0, 8))?;
    assert_restored(&rescaled.join("kg-8-16"), (8, 16))?;
    assert_eq!(pins(&root), Vec::<String>::new(), "reader pins removed");
    Ok(())
}

/// The private files of the backend of `range` in `job/1`.
fn private_files_of(root: &Path, range: (u32, u32)) -> TestResult<Vec<PathBuf>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(root)?);
    let (_, metadata) = runtime.block_on(rockpoint::restore::read_metadata(
        &*store,
        &RestoreSource::parse("job/1")?,
    ))?;
    let handle = rockpoint::restore::backend_for(&metadata, KeyGroupRange::new(range.0, range.1)?)?;
    Ok(handle
        .private_files
        .iter()
        .map(|f| root.join(&f.path))
        .collect())
}

/// A file only the second backend needs is damaged: the restore fails after the first backend was
/// complete in its temporary directory, and nothing of it (nor the target directory the command
/// created, nor a reader pin) remains. Once repaired, the identical command succeeds. Into an
/// existing empty directory, the directory stays, empty.
#[test]
fn a_failure_of_the_second_backend_leaves_nothing_of_the_first_and_the_retry_succeeds() -> TestResult
{
    let dir = tempfile::tempdir()?;
    let root = root_with_backends(dir.path(), &[(0, 8), (8, 16)], 0, 0)?;
    let damaged = private_files_of(&root, (8, 16))?;
    assert!(!damaged.is_empty());
    let originals: Vec<Vec<u8>> = damaged
        .iter()
        .map(std::fs::read)
        .collect::<Result<_, _>>()?;
    for path in &damaged {
        let mut bytes = std::fs::read(path)?;
        bytes[0] ^= 0xff;
        std::fs::write(path, bytes)?;
    }
    let parent = dir.path().join("restores");
    std::fs::create_dir(&parent)?;
    let target = parent.join("restored");
    let empty = parent.join("empty");
    std::fs::create_dir(&empty)?;
    let root_before = tree(&root);

    let out = restore(&root, &[], &target);
    assert_eq!(out.status.code(), Some(4), "corruption: {}", stderr(&out));
    assert!(stderr(&out).contains("(8, 16)") || stderr(&out).contains("OPTIONS"));
    assert_eq!(names(&parent), ["empty"], "nothing of the first backend");
    let out = restore(&root, &["0..8", "8..16"], &empty);
    assert_eq!(out.status.code(), Some(4), "corruption: {}", stderr(&out));
    assert_eq!(names(&parent), ["empty"]);
    assert_eq!(names(&empty), Vec::<String>::new(), "left empty, as it was");
    assert_eq!(tree(&root), root_before, "no reader pin left in the root");

    for (path, bytes) in damaged.iter().zip(&originals) {
        std::fs::write(path, bytes)?;
    }
    let out = restore(&root, &[], &target);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&target), ["kg-0-8", "kg-8-16"]);
    assert_restored(&target.join("kg-0-8"), (0, 8))?;
    assert_restored(&target.join("kg-8-16"), (8, 16))?;
    let out = restore(&root, &["0..8", "8..16"], &empty);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_restored(&empty.join("kg-8-16"), (8, 16))?;
    Ok(())
}

/// A target that is a file, a directory that is not empty, or a path whose parent does not exist
/// is refused as invalid input (exit 2) before anything is read: every object of the root is
/// damaged, so a restore that downloaded first would fail with corruption (exit 4) instead. Nothing
/// is created, next to the target or in the root.
#[test]
fn a_target_that_is_a_file_or_not_empty_or_has_no_parent_is_refused_before_anything_is_read()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let root = root_with_backends(dir.path(), &[(0, 8), (8, 16)], 0, 0)?;
    for fan in std::fs::read_dir(root.join("shared"))? {
        for file in std::fs::read_dir(fan?.path())? {
            let path = file?.path();
            let mut bytes = std::fs::read(&path)?;
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes)?;
        }
    }
    let work = dir.path().join("work");
    std::fs::create_dir(&work)?;
    let file = work.join("a-file");
    std::fs::write(&file, b"not a directory")?;
    let full = work.join("full");
    std::fs::create_dir(&full)?;
    std::fs::write(full.join("something"), b"x")?;
    let orphan = work.join("no-such-parent").join("restored");
    let (work_before, root_before) = (tree(&work), tree(&root));
    for (target, why) in [
        (&file, "not a directory"),
        (&full, "not empty"),
        (&orphan, "not an existing directory"),
    ] {
        for ranges in [&[][..], &["0..8"], &["0..4", "4..16"]] {
            let out = restore(&root, ranges, target);
            let message = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{target:?} {ranges:?}: {message}"
            );
            assert!(message.contains(why), "{target:?} {ranges:?}: {message}");
            assert_eq!(tree(&work), work_before, "{target:?} {ranges:?}: created");
            assert_eq!(tree(&root), root_before, "{target:?} {ranges:?}: root");
        }
    }
    Ok(())
}

/// Target names of 231, 240 and 255 bytes (NAME_MAX) restore, as they are (exact) and clipped (a
/// scratch download next to the target too), and leave no temporary directory.
#[test]
fn target_names_up_to_name_max_restore() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = root_with_backends(dir.path(), &[(0, 8), (8, 16)], 0, 0)?;
    let parent = dir.path().join("long");
    std::fs::create_dir(&parent)?;
    let mut expected = Vec::new();
    for len in [231, 240, 255] {
        for (range, bounds) in [("0..8", (0, 8)), ("2..6", (2, 6))] {
            let name = format!("{range}-{}", "n".repeat(len - range.len() - 1));
            assert_eq!(name.len(), len);
            let target = parent.join(&name);
            let out = restore(&root, &[range], &target);
            assert_eq!(out.status.code(), Some(0), "{len}: {}", stderr(&out));
            assert_restored(&target, bounds)?;
            expected.push(name);
            expected.sort();
            assert_eq!(names(&parent), expected, "only the targets");
        }
    }
    // Several backends into a directory of NAME_MAX bytes.
    let target = parent.join("m".repeat(255));
    let out = restore(&root, &[], &target);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&target), ["kg-0-8", "kg-8-16"]);
    Ok(())
}

/// Ctrl-C during the download: exit 130 with a message, nothing new next to the target (no
/// target, temporary or scratch directory), no reader pin left in the root; the same command then
/// restores. The state is tens of MB of incompressible values so that the download takes a
/// moment; the signal is sent as soon as a temporary directory appears, and a restore that
/// finished first is retried on a larger state.
#[test]
fn ctrl_c_stops_a_restore_leaving_nothing_and_exits_130() -> TestResult {
    // As soon as a hidden temporary directory appears: mid download.
    interrupt_restore(|target| {
        std::fs::read_dir(target)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with('.'))
            })
            .unwrap_or(false)
    })
}

/// The same once the targets are in place, while the restored backends are being opened (a phase
/// the library cannot stop: the command waits for it, then removes what it restored).
#[test]
fn ctrl_c_after_the_targets_are_in_place_still_leaves_nothing() -> TestResult {
    interrupt_restore(|target| target.join("kg-0-8").exists())
}

/// Restores job/1 into a new target, sends SIGINT as soon as `when(target)` holds, and checks
/// the interrupted restore left nothing; a restore that finished first is retried on more data.
fn interrupt_restore(when: impl Fn(&Path) -> bool) -> TestResult {
    for (attempt, blob_keys) in [48u64, 160, 480].into_iter().enumerate() {
        let dir = tempfile::tempdir()?;
        let root = root_with_backends(dir.path(), &[(0, 8), (8, 16)], blob_keys, 1 << 20)?;
        let parent = dir.path().join("restores");
        std::fs::create_dir(&parent)?;
        let target = parent.join("restored");
        let root_before = tree(&root);
        let mut child = rockpoint(&root)
            .args(["restore", "job/1", "--target"])
            .arg(&target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let started = Instant::now();
        let mut signalled = false;
        while started.elapsed() < Duration::from_secs(60) {
            if child.try_wait()?.is_some() {
                break;
            }
            if when(&target) {
                let killed = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status()?;
                assert!(killed.success());
                signalled = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let out = child.wait_with_output()?;
        if out.status.code() == Some(0) {
            // Finished before the signal (or before the moment was seen): more data.
            eprintln!("attempt {attempt}: the restore finished first (signalled: {signalled})");
            continue;
        }
        assert!(signalled, "{}", stderr(&out));
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        assert_eq!(
            names(&parent),
            Vec::<String>::new(),
            "nothing left next to the target"
        );
        assert_eq!(tree(&root), root_before, "the reader pin was deleted");
        assert_eq!(pins(&root), Vec::<String>::new());
        let out = rockpoint(&root)
            .args(["restore", "job/1", "--target"])
            .arg(&target)
            .output()?;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_restored(&target.join("kg-0-8"), (0, 8))?;
        return Ok(());
    }
    Err("every restore finished before it could be interrupted".into())
}

/// `verify` shows a progress bar only on a terminal: its stderr stays clean in a pipe.
#[test]
fn verify_prints_no_progress_bar_into_a_pipe() -> TestResult {
    let dir = tempfile::tempdir()?;
    let root = root_with_backends(dir.path(), &[(0, 8), (8, 16)], 4, 1 << 16)?;
    let out = rockpoint(&root).args(["verify", "job/1"]).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    Ok(())
}
