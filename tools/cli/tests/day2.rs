//! Day-2 operations through the real binary: `delete` and `prune` (refusing what a job or a reader
//! needs, exit 9), `list`, `show` and `du` for a person, and read-only commands that report one bad
//! or vanished record by name and go on.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, ClaimMode, JobEnd, KeyGroupRange,
    KeyedStateBackend, LocalStore, RestoreSource, RestoreTarget, Store, ValueStateDescriptor,
};
use serde_json::Value;

mod common;
use common::{rockpoint, tree};

const COUNTS: ValueStateDescriptor<u64, Vec<u8>> = ValueStateDescriptor::new("counts");

fn run(root: &Path, args: &[&str]) -> Output {
    rockpoint(root)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

/// A stopped job `job` with `rounds` retained checkpoints, each after new writes and a compaction
/// (so each has files of its own); returns the root.
fn stopped_job(dir: &Path, rounds: u64) -> PathBuf {
    let root = dir.join("root");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async {
            let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root)?);
            let c = CheckpointCoordinator::open(
                store,
                "job",
                CheckpointSettings {
                    retained: rounds as usize,
                    ..CheckpointSettings::default()
                },
            )
            .await?;
            let backend = KeyedStateBackend::open(
                dir.join("backend"),
                16,
                KeyGroupRange::all(16)?,
                BackendSettings::default(),
            )?;
            let counts = backend.state(&COUNTS)?;
            for round in 0..rounds {
                for key in 0..200u64 {
                    counts.put(&(round * 1000 + key), &vec![round as u8; 256])?;
                }
                backend.compact()?;
                c.checkpoint(&[&backend]).await?;
            }
            c.shutdown(JobEnd::Suspended).await
        })
        .unwrap();
    root
}

fn listed_ids(root: &Path) -> Vec<u64> {
    let listed = json(&run(root, &["--json", "list"]));
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn delete_removes_a_checkpoint_and_gc_then_frees_what_it_said() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 3);
    assert_eq!(listed_ids(&root), vec![1, 2, 3]);
    let shown = json(&run(&root, &["--json", "show", "job/2"]));
    let private: u64 = shown["backends"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["private_files"].as_array().unwrap().iter())
        .map(|f| f["size"].as_u64().unwrap())
        .sum();
    let sizes = json(&run(&root, &["--json", "du"]));
    let exclusive = sizes["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["reference"] == "job/2")
        .unwrap()["exclusive_bytes"]
        .as_u64()
        .unwrap();

    let deleted = json(&run(&root, &["--json", "delete", "job/2"]));
    assert_eq!(deleted["snapshots"][0]["outcome"], "deleted");
    assert_eq!(deleted["private_bytes"].as_u64(), Some(private));
    assert_eq!(
        deleted["gc_frees_bytes"].as_u64(),
        Some(exclusive - private),
        "what gc frees: the exclusive size less the private files the delete removed"
    );
    assert_eq!(listed_ids(&root), vec![1, 3]);
    let gc = json(&run(
        &root,
        &["--json", "gc", "--confirm", "--grace-secs", "0"],
    ));
    assert_eq!(
        gc["reclaimed_bytes"].as_u64().unwrap() + private,
        exclusive,
        "gc freed what delete said (the private files went with the delete)"
    );
    for kept in ["job/1", "job/3"] {
        let verified = run(&root, &["verify", kept]);
        assert!(verified.status.success(), "{kept}: {}", stdout(&verified));
    }
    // Gone: exit 3.
    assert_eq!(run(&root, &["delete", "job/2"]).status.code(), Some(3));
}

#[test]
fn delete_refuses_the_newest_checkpoint_with_exit_9_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 2);
    let before = tree(&root);
    let refused = run(&root, &["delete", "latest:job"]);
    assert_eq!(refused.status.code(), Some(9), "{}", stdout(&refused));
    assert!(stdout(&refused).contains("newest retained checkpoint"));
    assert_eq!(tree(&root), before, "nothing written");
    // A dry run neither.
    let dry = run(&root, &["delete", "--dry-run", "job/1"]);
    assert!(dry.status.success());
    assert!(stdout(&dry).contains("would delete job/1"));
    assert_eq!(tree(&root), before, "nothing written by a dry run");
    // Forced: the job then resumes from what is left.
    let forced = run(&root, &["delete", "--force", "latest:job"]);
    assert!(forced.status.success(), "{}", stdout(&forced));
    assert_eq!(listed_ids(&root), vec![1]);
}

/// A job restored from a savepoint without claim, still running without a checkpoint of its
/// own, needs the savepoint: deleting it is refused (exit 9) naming that job, until the job's
/// first checkpoint; then it is deleted and the job's checkpoint still verifies after GC.
#[test]
fn delete_refuses_a_savepoint_a_running_job_restored_from() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 1);
    let saved = run(&root, &["savepoint", "job/1"]);
    assert!(saved.status.success(), "{}", stdout(&saved));
    let reference = stdout(&saved)
        .split_whitespace()
        .find(|w| w.starts_with("job/sp-"))
        .unwrap()
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root).unwrap());
    let (coordinator, backends) = runtime.block_on(async {
        let c = CheckpointCoordinator::open(store.clone(), "other", CheckpointSettings::default())
            .await
            .unwrap();
        let target = RestoreTarget {
            dir: dir.path().join("other"),
            key_groups: KeyGroupRange::all(16).unwrap(),
            settings: BackendSettings::default(),
        };
        let source = RestoreSource::parse(&reference).unwrap();
        let backends = c
            .restore(&source, &[target], ClaimMode::NoClaim)
            .await
            .unwrap();
        (c, backends)
    });
    let refused = run(&root, &["delete", &reference]);
    assert_eq!(refused.status.code(), Some(9), "{}", stdout(&refused));
    assert!(
        stdout(&refused).contains("job `other` restored from it"),
        "{}",
        stdout(&refused)
    );
    assert!(
        run(&root, &["gc", "--confirm", "--grace-secs", "0"])
            .status
            .success()
    );
    let own = runtime.block_on(async {
        backends[0]
            .state(&COUNTS)
            .unwrap()
            .put(&7, &vec![7; 8])
            .unwrap();
        coordinator.checkpoint(&[&backends[0]]).await.unwrap()
    });
    let deleted = run(&root, &["delete", &reference]);
    assert!(deleted.status.success(), "{}", stdout(&deleted));
    assert!(
        run(&root, &["gc", "--confirm", "--grace-secs", "0"])
            .status
            .success()
    );
    let verified = run(&root, &["verify", &format!("other/{}", own.id())]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    runtime
        .block_on(coordinator.shutdown(JobEnd::Suspended))
        .unwrap();
}

#[test]
fn prune_is_a_dry_run_until_confirmed_and_deletes_what_it_planned() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 5);
    let saved = run(&root, &["savepoint", "job/1"]);
    assert!(saved.status.success());
    let before = tree(&root);
    // No rule: refused as invalid input.
    assert_eq!(run(&root, &["prune"]).status.code(), Some(2));
    let plan = json(&run(&root, &["--json", "prune", "--keep-last", "2"]));
    assert_eq!(plan["dry_run"], true);
    let planned: Vec<String> = plan["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["action"] == "delete")
        .map(|s| s["snapshot"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(planned, vec!["job/3", "job/2", "job/1"]);
    assert_eq!(tree(&root), before, "a dry run writes nothing");
    let text = stdout(&run(&root, &["prune", "--keep-last", "2"]));
    assert!(text.contains("would delete 3 of 6 snapshots"), "{text}");

    let done = json(&run(
        &root,
        &["--json", "prune", "--keep-last", "2", "--confirm"],
    ));
    assert_eq!(done["gc_frees_bytes"], plan["gc_frees_bytes"]);
    assert_eq!(listed_ids(&root).len(), 3, "the last two and the savepoint");
    let again = json(&run(&root, &["--json", "prune", "--keep-last", "2"]));
    assert!(
        again["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["action"] == "keep")
    );
    // Savepoints only when asked; keep-within keeps everything this recent.
    let within = json(&run(
        &root,
        &["--json", "prune", "--keep-within", "1h", "--savepoints"],
    ));
    assert!(
        within["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["action"] == "keep")
    );
}

#[test]
fn list_show_and_du_are_tables_with_human_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 2);
    let listed = stdout(&run(&root, &["list"]));
    let mut lines = listed.lines();
    let header = lines.next().unwrap();
    for column in [
        "SNAPSHOT",
        "KIND",
        "CREATED (UTC)",
        "NEW",
        "FULL",
        "EXCLUSIVE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = lines.next().unwrap();
    assert!(row.starts_with("job/1 "), "{row}");
    assert!(row.contains("KiB"), "human sizes: {row}");
    assert!(row.contains("checkpoint"), "{row}");
    let shown = stdout(&run(&root, &["show", "job/2"]));
    for line in [
        "checkpoint job/2 (jobs/job/chk-00000000000000000002/_metadata)",
        "created",
        "sync pause",
        "new of",
        "exclusive",
        "key groups 0..16",
        "counts",
    ] {
        assert!(shown.contains(line), "`{line}` in\n{shown}");
    }
    let du = stdout(&run(&root, &["du"]));
    assert!(
        du.contains("EXCLUSIVE") && du.contains("the root stores"),
        "{du}"
    );
}

/// One stray, one damaged record and a job directory with a non-ASCII name: `list`, `du` and `gc`
/// report each bad record by name on stderr and go on; `delete` of the damaged checkpoint works
/// (it does not need its metadata) and `check`-free commands never fail for the whole root.
#[test]
fn one_bad_record_is_reported_by_name_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 3);
    let stray = root.join("jobs/job/chk-00000000000000000008.bak");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::copy(
        root.join("jobs/job/chk-00000000000000000001/_metadata"),
        stray.join("_metadata"),
    )
    .unwrap();
    // Names rockpoint never writes: someone else's files, which block nothing.
    for foreign in ["jobs/jöb/_job", "jobs/bad..name/_job", "pins/job/garbage"] {
        std::fs::create_dir_all(root.join(foreign).parent().unwrap()).unwrap();
        std::fs::write(root.join(foreign), b"not a record").unwrap();
    }
    let damaged = root.join("jobs/job/chk-00000000000000000002/_metadata");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&damaged, bytes).unwrap();

    for args in [&["list"][..], &["du"], &["--json", "list"]] {
        let output = run(&root, args);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("chk-00000000000000000002/_metadata"),
            "{args:?} names the damaged record: {stderr}"
        );
    }
    assert_eq!(listed_ids(&root), vec![1, 3]);
    // GC deletes no shared file while a record it cannot read might reference it — and says so
    // with exit 4, so that a cron job does not stay green while nothing is collected.
    let gc = run(&root, &["gc", "--confirm", "--grace-secs", "0"]);
    assert_eq!(
        gc.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(
        stdout(&gc).contains("UNREADABLE") && stdout(&gc).contains("chk-00000000000000000002"),
        "gc names what it cannot read: {}",
        stdout(&gc)
    );
    assert!(
        !stdout(&gc).contains("garbage") && !stdout(&gc).contains("bad..name"),
        "foreign names are not records: {}",
        stdout(&gc)
    );
    assert!(String::from_utf8_lossy(&gc.stderr).contains("rockpoint check"));
    assert!(
        stray.join("_metadata").exists(),
        "gc leaves a foreign name alone"
    );
    let deleted = run(&root, &["delete", "job/2"]);
    assert!(deleted.status.success(), "{}", stdout(&deleted));
    let gc = run(&root, &["gc", "--confirm", "--grace-secs", "0"]);
    assert!(gc.status.success(), "{}", stdout(&gc));
    for foreign in ["jobs/jöb/_job", "jobs/bad..name/_job", "pins/job/garbage"] {
        assert!(root.join(foreign).exists(), "gc leaves `{foreign}` alone");
    }
    for kept in ["job/1", "job/3"] {
        assert!(run(&root, &["verify", kept]).status.success());
    }
}

/// Read-only commands while a job checkpoints with retention 1 (every commit discards the previous
/// checkpoint, so records vanish between a listing and its read): every run succeeds.
#[test]
fn read_only_commands_never_fail_while_a_job_discards() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let job = {
        let (root, base, stop) = (root.clone(), dir.path().join("live"), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root).unwrap());
                let c = CheckpointCoordinator::open(store, "live", CheckpointSettings::default())
                    .await
                    .unwrap();
                let backend = KeyedStateBackend::open(
                    &base,
                    16,
                    KeyGroupRange::all(16).unwrap(),
                    BackendSettings::default(),
                )
                .unwrap();
                let counts = backend.state(&COUNTS).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    counts.put(&(n % 500), &vec![n as u8; 64]).unwrap();
                    n += 1;
                    if n.is_multiple_of(50) {
                        c.checkpoint(&[&backend]).await.unwrap();
                    }
                }
                c.shutdown(JobEnd::Suspended).await.unwrap();
                n / 50
            })
        })
    };
    let mut runs = 0;
    for round in 0..60 {
        for args in [&["list"][..], &["du"], &["show", "latest:live"]] {
            let output = run(&root, args);
            // `show latest:live` before the first commit: not found (3) is an answer, not a failure.
            let ok = output.status.success()
                || (round < 5 && args[0] == "show" && output.status.code() == Some(3));
            assert!(
                ok,
                "{args:?} failed while the job ran: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            runs += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checkpoints = job.join().unwrap();
    assert!(
        checkpoints > 5,
        "the job checkpointed meanwhile ({checkpoints})"
    );
    eprintln!("{runs} read-only runs against {checkpoints} checkpoints: all succeeded");
}

/// `--job` is a job id, never a path: `../..` is refused (exit 2) before anything is read.
#[test]
fn a_job_filter_that_is_a_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 1);
    for job in ["../..", "job/../../x", "jöb"] {
        let output = run(&root, &["list", "--job", job]);
        assert_eq!(output.status.code(), Some(2), "--job {job}");
        assert!(stdout(&output).is_empty());
    }
}

/// Logs go to stderr: warnings only by default, `-v` adds info (a GC pass's summary), and
/// `RUST_LOG` overrides both.
#[test]
fn verbosity_and_rust_log_choose_the_log_lines_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 1);
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();
    let quiet = run(&root, &["gc"]);
    assert!(quiet.status.success());
    assert!(
        !stderr(&quiet).contains("gc pass done"),
        "{}",
        stderr(&quiet)
    );
    let verbose = run(&root, &["-v", "gc"]);
    assert!(
        stderr(&verbose).contains("gc pass done"),
        "{}",
        stderr(&verbose)
    );
    let from_env = rockpoint(&root)
        .env("RUST_LOG", "rockpoint=info")
        .arg("gc")
        .output()
        .unwrap();
    assert!(
        stderr(&from_env).contains("gc pass done"),
        "{}",
        stderr(&from_env)
    );
    let overridden = rockpoint(&root)
        .env("RUST_LOG", "error")
        .args(["-v", "gc"])
        .output()
        .unwrap();
    assert!(
        !stderr(&overridden).contains("gc pass done"),
        "RUST_LOG overrides -v"
    );
}

/// A checkpoint named by its full location (an absolute path or a `file://` URL) names its root:
/// no `--root` needed; with `--root`, the location must lie in it (exit 2 otherwise).
#[test]
fn a_checkpoint_named_by_its_location_names_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 2);
    let path = root.join("jobs/job/chk-00000000000000000002");
    let no_root = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rockpoint"))
            .args(args)
            .env_remove("ROCKPOINT_ROOT")
            .output()
            .unwrap()
    };
    let shown = no_root(&["show", path.to_str().unwrap()]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(stdout(&shown).starts_with("checkpoint job/2 "));
    let url = format!("file://{}/_metadata", path.display());
    let verified = no_root(&["verify", &url]);
    assert!(verified.status.success(), "{}", stdout(&verified));
    let restored = no_root(&[
        "restore",
        path.to_str().unwrap(),
        "--target",
        dir.path().join("restored").to_str().unwrap(),
    ]);
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let other = stopped_job(elsewhere.path(), 1);
    let mismatch = run(&other, &["show", path.to_str().unwrap()]);
    assert_eq!(mismatch.status.code(), Some(2));
    assert!(
        run(&root, &["show", path.to_str().unwrap()])
            .status
            .success()
    );
}

/// A committed checkpoint whose metadata went missing is not silently left out: `list` and `du`
/// name it on stderr (as JSON with --json).
#[test]
fn a_committed_checkpoint_without_metadata_is_named_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 2);
    std::fs::remove_file(root.join("jobs/job/chk-00000000000000000001/_metadata")).unwrap();
    let listed = run(&root, &["list"]);
    assert!(listed.status.success());
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(
        stderr.contains("chk-00000000000000000001/_metadata: missing"),
        "{stderr}"
    );
    let as_json = run(&root, &["--json", "du"]);
    let warning: Value = serde_json::from_str(
        String::from_utf8_lossy(&as_json.stderr)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        warning["warning"]["skipped"]
            .as_str()
            .unwrap()
            .contains("chk-00000000000000000001")
    );
    assert_eq!(
        run(&root, &["list", "--job", "nope"]).status.code(),
        Some(3)
    );
}

/// A restore or an export into the root's own directory tree is refused before anything is read:
/// GC and `check` would meet what it writes as damage.
#[test]
fn a_target_inside_the_root_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 1);
    let before = tree(&root);
    let inside = root.join("restored");
    let restore = run(
        &root,
        &["restore", "job/1", "--target", inside.to_str().unwrap()],
    );
    assert_eq!(restore.status.code(), Some(2));
    let pins = root.join("pins/job");
    let export = run(&root, &["export", "job/1", "--to", pins.to_str().unwrap()]);
    assert_eq!(export.status.code(), Some(2));
    assert_eq!(tree(&root), before, "nothing written");
    assert!(run(&root, &["check"]).status.success());
}

/// A damaged job record stops reads of its job's checkpoints (nothing can tell which are
/// committed): exit 4, and the message says where to look next.
#[test]
fn a_damaged_job_record_is_corruption_with_a_way_forward() {
    let dir = tempfile::tempdir().unwrap();
    let root = stopped_job(dir.path(), 1);
    let record = root.join("jobs/job/_job");
    let mut bytes = std::fs::read(&record).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&record, bytes).unwrap();
    let verified = run(&root, &["verify", "job/1"]);
    assert_eq!(verified.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&verified.stderr);
    assert!(stderr.contains("rockpoint check"), "{stderr}");
    let checked = run(&root, &["check"]);
    assert_eq!(checked.status.code(), Some(4));
    assert!(
        stdout(&checked).contains("jobs/job/_job"),
        "{}",
        stdout(&checked)
    );
}
