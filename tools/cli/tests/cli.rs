//! The `rockpoint` binary as an operator meets it: output into a closed pipe, errors with `--json`,
//! and exit codes by what went wrong.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointSettings, JobEnd, KeyGroupRange,
    KeyedStateBackend, LocalStore, Store, ValueStateDescriptor,
};

mod common;
use common::{rockpoint, tree};

const COUNTS: ValueStateDescriptor<u64, u64> = ValueStateDescriptor::new("counts");

/// A root with `checkpoints` committed checkpoints of job `job`.
fn root_with_checkpoints(dir: &Path, checkpoints: usize) -> rockpoint::Result<()> {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.join("root"))?);
        let c = CheckpointCoordinator::open(
            store,
            "job",
            CheckpointSettings {
                retained: checkpoints,
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
        for round in 0..checkpoints as u64 {
            counts.put(&round, &round)?;
            c.checkpoint(&[&backend]).await?;
        }
        c.shutdown(JobEnd::Suspended).await
    })
}

#[test]
fn list_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 3).unwrap();
    let mut child = rockpoint(&dir.path().join("root"))
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is written (`rockpoint list | true`).
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn errors_with_json_are_json_and_exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 1).unwrap();
    let root = dir.path().join("root");

    let missing = rockpoint(&root)
        .args([
            "--json",
            "show",
            "jobs/nope/chk-00000000000000000001/_metadata",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3), "not found");
    let error: serde_json::Value = serde_json::from_slice(&missing.stderr).unwrap();
    assert_eq!(error["error"]["kind"], "NotFound");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobs/nope")
    );

    let bad_range = rockpoint(&root)
        .args(["restore", "latest:job", "--key-groups", "0-32", "--target"])
        .arg(dir.path().join("target"))
        .output()
        .unwrap();
    assert_eq!(bad_range.status.code(), Some(2), "invalid input");
    let stderr = String::from_utf8_lossy(&bad_range.stderr);
    assert!(stderr.contains("--key-groups `0-32`"), "{stderr}");
    assert!(!stderr.contains("I/O error"), "{stderr}");

    // A short reference names the same checkpoint as its full path.
    let short = rockpoint(&root).args(["show", "job/1"]).output().unwrap();
    let full = rockpoint(&root)
        .args(["show", "jobs/job/chk-00000000000000000001/_metadata"])
        .output()
        .unwrap();
    assert_eq!(
        short.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&short.stderr)
    );
    assert_eq!(short.stdout, full.stdout);

    let listed = rockpoint(&root).args(["--json", "list"]).output().unwrap();
    assert_eq!(listed.status.code(), Some(0));
    let checkpoints: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(checkpoints.as_array().unwrap().len(), 1);
}

#[test]
fn verify_of_a_damaged_checkpoint_exits_with_the_corruption_code() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 1).unwrap();
    let root = dir.path().join("root");
    // Flip a byte of every shared file: the checkpoint no longer matches its hashes.
    for fan in std::fs::read_dir(root.join("shared")).unwrap() {
        for file in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let verified = rockpoint(&root)
        .args(["verify", "latest:job"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert!(stdout.contains("PROBLEM"), "{stdout}");
    assert_eq!(verified.status.code(), Some(4), "{stdout}");
}

#[test]
fn a_root_that_does_not_exist_or_is_a_url_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("checkpoitns");
    for command in [&["list"][..], &["du"], &["gc", "--confirm"]] {
        let output = rockpoint(&typo).args(command).output().unwrap();
        assert_eq!(output.status.code(), Some(3), "{command:?}: not found");
        assert!(!typo.exists(), "{command:?} created the root");
    }
    let inside = dir.path().join("work");
    std::fs::create_dir(&inside).unwrap();
    let url = Command::new(env!("CARGO_BIN_EXE_rockpoint"))
        .current_dir(&inside)
        .args(["--root", "ftp://bucket/x", "list"])
        .output()
        .unwrap();
    assert_eq!(
        url.status.code(),
        Some(2),
        "a URL of an unknown scheme is invalid input"
    );
    let stderr = String::from_utf8_lossy(&url.stderr);
    assert!(stderr.contains("unknown scheme `ftp`"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&inside).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn export_copies_a_checkpoint_into_another_root_where_it_restores() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 2).unwrap();
    let root = dir.path().join("root");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();

    let exported = rockpoint(&root)
        .args(["--json", "export", "job/2", "--job", "moved", "--to"])
        .arg(&other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert_eq!(exported.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&exported.stdout).unwrap();
    let savepoint = report["savepoint"].as_str().unwrap().to_owned();
    assert!(savepoint.starts_with("moved/sp-"), "{report}");
    assert!(report["objects_copied"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["objects_present"], 0, "{report}");

    let target = dir.path().join("restored");
    let restored = rockpoint(&other)
        .args(["restore", &savepoint, "--key-groups", "0..16", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&restored.stderr);
    assert_eq!(restored.status.code(), Some(0), "{stderr}");
    let backend = KeyedStateBackend::open(
        &target,
        16,
        KeyGroupRange::all(16).unwrap(),
        BackendSettings::default(),
    )
    .unwrap();
    let counts = backend.state(&COUNTS).unwrap();
    for round in 0..2u64 {
        assert_eq!(counts.get(&round).unwrap(), Some(round));
    }

    // The same checkpoint again: a new savepoint, every shared file already there.
    let again = rockpoint(&root)
        .args(["export", "job/2", "--to"])
        .arg(&other)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert_eq!(again.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("as savepoint job/sp-"), "{stdout}");
    assert!(!stdout.contains(" 0 already present"), "{stdout}");

    // Bad input: an unknown checkpoint, a target that is not a root.
    let unknown = rockpoint(&root)
        .args(["export", "job/99", "--to"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(3), "not found");
    let missing = dir.path().join("no-such-root");
    let nowhere = rockpoint(&root)
        .args(["export", "job/2", "--to"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(3), "not found");
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    assert!(stderr.contains("--to `"), "{stderr}");
    assert!(!missing.exists(), "nothing created");
}

/// The operator's round on an `s3://` root (SeaweedFS): list, du, verify, restore, gc. The
/// transcript is printed (`--nocapture`).
#[test]
fn cli_on_an_s3_root_lists_verifies_restores_and_collects_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::s3::S3Server::get();
    let url = common::s3::root_url(&dir.path().join("root"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async {
            let store = server.root(&dir.path().join("root")).await?;
            let c = CheckpointCoordinator::open(
                store,
                "job",
                CheckpointSettings {
                    retained: 2,
                    ..CheckpointSettings::default()
                },
            )
            .await?;
            let backend = KeyedStateBackend::open(
                dir.path().join("backend"),
                16,
                KeyGroupRange::all(16)?,
                BackendSettings::default(),
            )?;
            let counts = backend.state(&COUNTS)?;
            for round in 0..3u64 {
                counts.put(&round, &round)?;
                c.checkpoint(&[&backend]).await?;
            }
            c.shutdown(JobEnd::Suspended).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .unwrap();
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rockpoint"));
        command.arg("--root").arg(&url).args(args);
        for (key, value) in server.env() {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        println!(
            "$ rockpoint --root {url} {}\n{stdout}{stderr}",
            args.join(" ")
        );
        assert!(output.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let listed = run(&["list"]);
    let ids: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| r.starts_with("job/"))
        .collect();
    assert_eq!(ids, ["job/2", "job/3"], "retained: 2\n{listed}");
    // A checkpoint named by its URL names its root: no --root needed.
    let located = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rockpoint"));
        command.args([
            "verify",
            &format!("{url}/jobs/job/chk-00000000000000000003"),
        ]);
        for (key, value) in server.env() {
            command.env(key, value);
        }
        command.env_remove("ROCKPOINT_ROOT").output().unwrap()
    };
    assert!(
        located.status.success(),
        "{}",
        String::from_utf8_lossy(&located.stderr)
    );
    run(&["du"]);
    let verified = run(&["verify", "job/2"]);
    assert!(!verified.contains("PROBLEM"), "{verified}");
    let target = dir.path().join("restored");
    run(&[
        "restore",
        "latest:job",
        "--key-groups",
        "0..16",
        "--target",
        &target.to_string_lossy(),
    ]);
    let restored = KeyedStateBackend::open(
        &target,
        16,
        KeyGroupRange::all(16).unwrap(),
        BackendSettings::default(),
    )
    .unwrap();
    let counts = restored.state(&COUNTS).unwrap();
    for round in 0..3u64 {
        assert_eq!(counts.get(&round).unwrap(), Some(round));
    }
    run(&["gc", "--grace-secs", "0"]);
    run(&["gc", "--grace-secs", "0", "--confirm"]);
    let again = run(&["--json", "gc", "--grace-secs", "0"]);
    assert!(!again.is_empty());
}

/// `restore --key-groups` takes any range the checkpoint's backends cover: inside one backend
/// (clipped), across both (merged), all of them; each restored backend holds exactly the keys of
/// its key groups. A range beyond them is refused as invalid input and creates nothing.
#[test]
fn restore_rescales_to_any_covered_range() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let group_of = |key: u64| rockpoint::key_group_of(&rmp_serde::to_vec(&key).unwrap(), 16);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async {
            let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root)?);
            let c =
                CheckpointCoordinator::open(store, "job", CheckpointSettings::default()).await?;
            let mut backends = Vec::new();
            for (i, (start, end)) in [(0, 8), (8, 16)].into_iter().enumerate() {
                let range = KeyGroupRange::new(start, end)?;
                let backend = KeyedStateBackend::open(
                    dir.path().join(format!("b{i}")),
                    16,
                    range,
                    BackendSettings::default(),
                )?;
                let counts = backend.state(&COUNTS)?;
                for key in (0..200).filter(|&k| range.contains(group_of(k))) {
                    counts.put(&key, &(key * 3))?;
                }
                backends.push(backend);
            }
            c.checkpoint(&[&backends[0], &backends[1]]).await?;
            c.shutdown(JobEnd::Suspended).await
        })
        .unwrap();
    for (text, range, how) in [
        ("2..6", (2, 6), "clipped from backend 0..8"),
        ("4..12", (4, 12), "merged with"),
        ("0..16", (0, 16), "merged with"),
    ] {
        let target = dir.path().join(format!("restored-{text}"));
        let out = rockpoint(&root)
            .args(["restore", "job/1", "--key-groups", text, "--target"])
            .arg(&target)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(how), "{stdout}");
        let range = KeyGroupRange::new(range.0, range.1).unwrap();
        let backend =
            KeyedStateBackend::open(&target, 16, range, BackendSettings::default()).unwrap();
        let counts = backend.state(&COUNTS).unwrap();
        let inside: Vec<u64> = (0..200).filter(|&k| range.contains(group_of(k))).collect();
        for &key in &inside {
            assert_eq!(
                counts.get(&key).unwrap(),
                Some(key * 3),
                "key {key} in {range}"
            );
        }
        // Nothing else: a clipped key group would show up in the raw scan.
        let rows: usize = backend.scan_raw().unwrap().values().map(Vec::len).sum();
        assert_eq!(rows, inside.len(), "rows restored into {range}");
    }
    let target = dir.path().join("beyond");
    let out = rockpoint(&root)
        .args(["restore", "job/1", "--key-groups", "8..32", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists());
}

/// Someone else's files: a temporary-looking name and empty directories, all old.
fn foreign_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/.upload.tmp-42"), b"someone's upload").unwrap();
    std::fs::create_dir_all(dir.join("project/build/cache")).unwrap();
    std::fs::create_dir_all(dir.join("project/empty-mountpoint")).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400);
    for path in [
        "data/.upload.tmp-42",
        "data",
        "project/build/cache",
        "project/build",
        "project/empty-mountpoint",
        "project",
    ] {
        let file = std::fs::File::open(dir.join(path)).unwrap();
        file.set_modified(old).unwrap();
    }
}

/// Issue 13: `gc --confirm` on a directory that is not a root deleted `data/.upload.tmp-42` and
/// removed the empty directories `project/build/cache`, `project/build` and
/// `project/empty-mountpoint`, exit 0. Now every command refuses it with exit 8, changing nothing.
#[test]
fn gc_confirm_on_a_directory_that_is_not_a_root_exits_8_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("not-a-root");
    foreign_files(&foreign);
    let before = tree(&foreign);
    for command in [
        &["gc", "--confirm", "--grace-secs", "0"][..],
        &["gc"],
        &["list"],
        &["du"],
        &["show", "job/1"],
        &["verify", "job/1"],
    ] {
        let output = rockpoint(&foreign).args(command).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(8), "{command:?}: {stderr}");
        assert!(
            stderr
                .contains("is not a rockpoint root: no `rockpoint-root` marker and no job records"),
            "{command:?}: {stderr}"
        );
        assert_eq!(tree(&foreign), before, "{command:?} changed the directory");
    }
    let json = rockpoint(&foreign)
        .args(["--json", "gc", "--confirm"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(8));
    let error: serde_json::Value = serde_json::from_slice(&json.stderr).unwrap();
    assert_eq!(error["error"]["kind"], "NotARoot", "{error}");
    // An empty directory is not a root either (a wrong path that happens to exist).
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = rockpoint(&empty).args(["list"]).output().unwrap();
    assert_eq!(output.status.code(), Some(8));
    assert_eq!(tree(&empty), Vec::<String>::new(), "nothing created");
}

/// A real root sharing its directory with other files: `gc --confirm` removes only what the
/// layout holds, never a file or directory beside it.
#[test]
fn gc_confirm_of_a_root_leaves_foreign_files_beside_the_layout_alone() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 2).unwrap();
    let root = dir.path().join("root");
    assert!(root.join("rockpoint-root").is_file(), "the root is marked");
    foreign_files(&root);
    // And a leftover the layout does own, which GC must still sweep.
    std::fs::write(root.join("shared/.x.tmp-7"), b"interrupted").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86_400);
    std::fs::File::open(root.join("shared/.x.tmp-7"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let output = rockpoint(&root)
        .args(["gc", "--confirm", "--grace-secs", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        !root.join("shared/.x.tmp-7").exists(),
        "the layout's temporary is swept"
    );
    for path in [
        "data/.upload.tmp-42",
        "project/build/cache",
        "project/empty-mountpoint",
    ] {
        assert!(
            root.join(path).exists(),
            "gc removed `{path}` beside the layout"
        );
    }
    let listed = rockpoint(&root).arg("list").output().unwrap();
    assert_eq!(listed.status.code(), Some(0));
    let rows = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.starts_with("job/"))
        .count();
    assert_eq!(rows, 2);
}

/// `export --to` takes an existing root or an empty directory (which it marks), and refuses a
/// directory holding anything else with exit 8, writing nothing there.
#[test]
fn export_to_an_empty_directory_marks_it_and_refuses_a_foreign_one() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 1).unwrap();
    let root = dir.path().join("root");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = rockpoint(&root)
        .args(["export", "job/1", "--to"])
        .arg(&empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let marker = std::fs::read_to_string(empty.join("rockpoint-root")).unwrap();
    assert!(
        marker.starts_with("rockpoint-root\nformat_version: 1\n"),
        "{marker}"
    );

    let foreign = dir.path().join("foreign");
    foreign_files(&foreign);
    let before = tree(&foreign);
    let output = rockpoint(&root)
        .args(["export", "job/1", "--to"])
        .arg(&foreign)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "{stderr}");
    assert!(stderr.contains("--to `"), "{stderr}");
    assert_eq!(
        tree(&foreign),
        before,
        "nothing written to a foreign target"
    );
}

/// `savepoint` keeps a checkpoint as a savepoint of its job: after retention discarded the
/// checkpoint and `gc --confirm --grace-secs 0` ran, the savepoint still restores to exactly the
/// checkpoint's state (copying only its metadata and private files: the rest is shared).
#[test]
fn savepoint_keeps_a_checkpoint_past_retention_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    root_with_checkpoints(dir.path(), 2).unwrap();
    let root = dir.path().join("root");
    let kept = rockpoint(&root)
        .args(["--json", "savepoint", "job/1"])
        .output()
        .unwrap();
    assert_eq!(
        kept.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&kept.stdout).unwrap();
    let savepoint = report["savepoint"].as_str().unwrap().to_owned();
    assert!(savepoint.starts_with("job/sp-"), "{report}");
    // The job goes on with retention 1: checkpoints 1 and 2 are discarded, GC collects them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async {
            let store: Arc<dyn Store> = Arc::new(LocalStore::new(&root)?);
            let settings = CheckpointSettings {
                retained: 1,
                ..CheckpointSettings::default()
            };
            let c = CheckpointCoordinator::open(store, "job", settings).await?;
            let backend = KeyedStateBackend::open(
                dir.path().join("backend"),
                16,
                KeyGroupRange::all(16)?,
                BackendSettings::default(),
            )?;
            let counts = backend.state(&COUNTS)?;
            for round in 10..12u64 {
                counts.put(&round, &round)?;
                c.checkpoint(&[&backend]).await?;
            }
            c.shutdown(JobEnd::Suspended).await
        })
        .unwrap();
    let gc = rockpoint(&root)
        .args(["gc", "--confirm", "--grace-secs", "0"])
        .output()
        .unwrap();
    assert_eq!(
        gc.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&gc.stderr)
    );
    assert!(
        !root
            .join("jobs/job/chk-00000000000000000001/_metadata")
            .exists()
    );
    let target = dir.path().join("from-savepoint");
    let restored = rockpoint(&root)
        .args(["restore", &savepoint, "--key-groups", "0..16", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(
        restored.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let backend = KeyedStateBackend::open(
        &target,
        16,
        KeyGroupRange::all(16).unwrap(),
        BackendSettings::default(),
    )
    .unwrap();
    let counts = backend.state(&COUNTS).unwrap();
    assert_eq!(counts.get(&0).unwrap(), Some(0), "checkpoint 1's state");
    assert_eq!(
        counts.get(&1).unwrap(),
        None,
        "checkpoint 1 did not hold key 1"
    );
    assert_eq!(counts.get(&10).unwrap(), None);
}
