//! `rockpoint check` against the real binary: a clean root is OK and every distinct object is read
//! once; each kind of damage (a shared file, a private file, a metadata record, a job record, an
//! unreferenced shared file) is reported with exactly the committed checkpoints and savepoints it
//! affects, computed here from the metadata records; stray files do not stop the check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rockpoint::{
    BackendSettings, CheckpointCoordinator, CheckpointMetadata, CheckpointSettings, JobEnd,
    KeyGroupRange, KeyedStateBackend, LocalStore, RestoreSource, SnapshotKind, Store,
    ValueStateDescriptor,
};

use rockpoint::format::ContentHash;

mod common;
use common::rockpoint;

const COUNTS: ValueStateDescriptor<u64, u64> = ValueStateDescriptor::new("counts");

/// A root (`dir/root`) with `checkpoints` committed checkpoints of job `job`, each with new log
/// segments and every other one with a new SST, so that files are shared by some checkpoints but
/// not all; then `job/2` kept as a savepoint (`job/sp-<n>`), which shares its files.
fn root_with_checkpoints(dir: &Path, checkpoints: usize) -> PathBuf {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime
        .block_on(async {
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
                if round % 2 == 1 {
                    backend.flush()?;
                }
                c.checkpoint(&[&backend]).await?;
            }
            c.shutdown(JobEnd::Suspended).await
        })
        .expect("a root with checkpoints");
    let root = dir.join("root");
    let kept = rockpoint(&root)
        .args(["savepoint", "job/2"])
        .output()
        .unwrap();
    assert_eq!(
        kept.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    root
}

/// `rockpoint check` in human form: exit code, stdout, stderr.
fn check(root: &Path) -> (Option<i32>, String, String) {
    let output = rockpoint(root).arg("check").output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `rockpoint --json check`: exit code and the report.
fn check_json(root: &Path) -> (Option<i32>, serde_json::Value) {
    let output = rockpoint(root).args(["--json", "check"]).output().unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report)
}

/// The committed checkpoints and savepoints, by reference (`job/3`, `job/sp-5`), with their
/// metadata: listed by `inspect_root` and read by `read_metadata`, not by the check.
fn committed(root: &Path) -> BTreeMap<String, CheckpointMetadata> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = LocalStore::new(root).unwrap();
        let view = rockpoint::admin::inspect_root(&store, None).await.unwrap();
        let mut out = BTreeMap::new();
        for summary in view.checkpoints() {
            let (_, metadata) = rockpoint::restore::read_metadata(
                &store,
                &RestoreSource::Metadata(summary.path.clone()),
            )
            .await
            .unwrap();
            out.insert(reference(&metadata), metadata);
        }
        out
    })
}

fn reference(metadata: &CheckpointMetadata) -> String {
    match metadata.kind {
        SnapshotKind::Checkpoint => format!("{}/{}", metadata.job_id, metadata.checkpoint_id),
        SnapshotKind::Savepoint => format!("{}/sp-{}", metadata.job_id, metadata.checkpoint_id),
    }
}

/// Every object path a snapshot references: its shared files and log segments, and its private
/// files.
fn objects_of(metadata: &CheckpointMetadata) -> BTreeSet<String> {
    let shared = metadata.shared_hashes().map(|h| common_shared_path(&h));
    let private = metadata
        .backends
        .iter()
        .flat_map(|b| b.private_files.iter().map(|f| f.path.clone()));
    shared.chain(private).collect()
}

/// Where a shared file lives, spelled from the documented layout.
fn common_shared_path(hash: &ContentHash) -> String {
    let hex = hash.to_hex();
    format!("shared/{}/{hex}", &hex[..2])
}

/// The snapshots that reference `object`, computed from the metadata records.
fn referencing(committed: &BTreeMap<String, CheckpointMetadata>, object: &str) -> BTreeSet<String> {
    committed
        .iter()
        .filter(|(_, m)| objects_of(m).contains(object))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The snapshots a reported problem affects, as references.
fn affects(problem: &serde_json::Value) -> BTreeSet<String> {
    problem["affects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let (job, id) = (s["job"].as_str().unwrap(), s["id"].as_u64().unwrap());
            match s["kind"].as_str().unwrap() {
                "checkpoint" => format!("{job}/{id}"),
                "savepoint" => format!("{job}/sp-{id}"),
                other => panic!("kind {other}"),
            }
        })
        .collect()
}

/// Every file under `dir`, relative, with its bytes (what "wrote nothing" compares).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let name = path.strip_prefix(base).unwrap().display().to_string();
                out.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What a whole check of `root` reads: every file under `shared/` and every private file of a
/// committed snapshot (`skip`: snapshots whose metadata the check cannot read), each once.
fn expected_objects(root: &Path, skip: &[&str]) -> (u64, u64) {
    let mut objects: BTreeSet<String> = files(root)
        .into_keys()
        .filter(|path| path.starts_with("shared/"))
        .collect();
    for (name, metadata) in committed(root) {
        if skip.contains(&name.as_str()) {
            continue;
        }
        for backend in &metadata.backends {
            objects.extend(backend.private_files.iter().map(|f| f.path.clone()));
        }
    }
    let bytes = objects
        .iter()
        .map(|path| std::fs::metadata(root.join(path)).unwrap().len())
        .sum();
    (objects.len() as u64, bytes)
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

/// A shared file that some committed snapshots reference but not all, and the savepoint among
/// them: the affected set is neither trivial nor everything.
fn partly_shared_file(
    committed: &BTreeMap<String, CheckpointMetadata>,
) -> (String, BTreeSet<String>) {
    let all: BTreeSet<String> = committed.keys().cloned().collect();
    let mut candidates: Vec<(String, BTreeSet<String>)> = committed
        .values()
        .flat_map(objects_of)
        .filter(|path| path.starts_with("shared/"))
        .map(|path| {
            let users = referencing(committed, &path);
            (path, users)
        })
        .filter(|(_, users)| users.len() >= 2 && *users != all)
        .filter(|(_, users)| users.iter().any(|u| u.contains("/sp-")))
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .expect("a file some snapshots share")
}

#[test]
fn check_of_a_clean_root_is_ok_counts_every_distinct_object_once_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 4);
    let before = files(&root);

    let (code, stdout, stderr) = check(&root);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.starts_with("checked 1 job, 4 checkpoints, 1 savepoint, "),
        "{stdout}"
    );
    assert!(last.ends_with(": OK"), "{stdout}");
    // Not a terminal: no progress bar.
    assert_eq!(stderr, "", "stderr is not a terminal: no bar");

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(0), "{report}");
    let (objects, bytes) = expected_objects(&root, &[]);
    assert_eq!(report["objects"], objects, "{report}");
    assert_eq!(report["bytes"], bytes, "{report}");
    // Records: the marker, the job record, five metadata records, and pins (`savepoint` leaves
    // a reader pin with an expiry).
    let records = files(&root)
        .keys()
        .filter(|p| {
            *p == "rockpoint-root"
                || p.ends_with("/_job")
                || p.ends_with("/_metadata")
                || p.starts_with("pins/")
                || p.starts_with("gc/")
        })
        .count();
    assert!(records >= 7, "{records}");
    assert_eq!(report["records"], records as u64, "{report}");
    assert_eq!(report["checkpoints"], 4, "{report}");
    assert_eq!(report["savepoints"], 1, "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert!(report["duration_ms"].is_u64(), "{report}");
    // Shared files are shared: fewer objects than the snapshots reference in all.
    let references: usize = committed(&root).values().map(|m| objects_of(m).len()).sum();
    assert!(objects < references as u64, "{objects} vs {references}");
    assert_eq!(files(&root), before, "the check wrote something");
}

#[test]
fn a_flipped_byte_in_a_shared_file_affects_exactly_the_snapshots_that_reference_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 4);
    let committed = committed(&root);
    let (object, users) = partly_shared_file(&committed);
    flip_byte(&root.join(&object), 10);

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], object.as_str());
    assert_eq!(problems[0]["kind"], "hash_mismatch");
    assert_eq!(affects(&problems[0]), users, "{report}");
    // Everything else was read too.
    assert_eq!(
        report["objects"],
        expected_objects(&root, &[]).0,
        "{report}"
    );

    let (code, stdout, _) = check(&root);
    assert_eq!(code, Some(4));
    let listed: Vec<String> = users.iter().cloned().collect();
    let line = format!(
        "DAMAGED {object}: hash mismatch; affects {}",
        listed.join(", ")
    );
    assert!(stdout.lines().any(|l| l == line), "{line}\n{stdout}");
    assert!(stdout.trim_end().ends_with(": 1 problem"), "{stdout}");
}

#[test]
fn a_deleted_shared_file_is_missing_for_exactly_the_snapshots_that_reference_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 4);
    let committed = committed(&root);
    let (object, users) = partly_shared_file(&committed);
    std::fs::remove_file(root.join(&object)).unwrap();

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], object.as_str());
    assert_eq!(problems[0]["kind"], "missing");
    assert_eq!(affects(&problems[0]), users, "{report}");

    let (_, stdout, _) = check(&root);
    assert!(
        stdout.contains(&format!("MISSING {object}: missing; affects ")),
        "{stdout}"
    );
}

#[test]
fn a_damaged_metadata_record_is_reported_and_the_other_snapshots_are_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 4);
    let (objects, _) = expected_objects(&root, &["job/3"]);
    let metadata = "jobs/job/chk-00000000000000000003/_metadata";
    let size = std::fs::metadata(root.join(metadata)).unwrap().len() as usize;
    flip_byte(&root.join(metadata), size / 2);

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], metadata);
    assert_eq!(problems[0]["kind"], "undecodable");
    assert!(
        problems[0]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{report}"
    );
    assert_eq!(affects(&problems[0]), BTreeSet::from(["job/3".to_owned()]));
    // Every shared file (those only job/3 names against their names) and every other snapshot's
    // private files were read.
    assert_eq!(report["objects"], objects, "{report}");
    assert_eq!(report["checkpoints"], 4, "{report}");
    assert_eq!(report["savepoints"], 1, "{report}");
}

#[test]
fn a_damaged_private_file_affects_exactly_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 4);
    let committed = committed(&root);
    let private = committed["job/3"].backends[0].private_files[0].path.clone();
    assert_eq!(
        referencing(&committed, &private),
        BTreeSet::from(["job/3".to_owned()])
    );
    flip_byte(&root.join(&private), 0);

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], private.as_str());
    assert_eq!(problems[0]["kind"], "hash_mismatch");
    assert_eq!(affects(&problems[0]), BTreeSet::from(["job/3".to_owned()]));
}

#[test]
fn an_unreferenced_shared_file_whose_bytes_do_not_match_its_name_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 2);
    // Two files nothing references: one whole, one whose bytes are not what its name says.
    let whole = b"an unreferenced but whole shared file";
    let whole_path = common_shared_path(&ContentHash::of(whole));
    let poisoned_path = common_shared_path(&ContentHash::of(b"what the name says"));
    for (path, bytes) in [
        (&whole_path, &whole[..]),
        (&poisoned_path, b"other bytes!!!!!!!"),
    ] {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), bytes).unwrap();
    }

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], poisoned_path.as_str());
    assert_eq!(problems[0]["kind"], "hash_mismatch");
    assert_eq!(affects(&problems[0]), BTreeSet::new());
    assert_eq!(report["unreferenced_objects"], 2, "{report}");
    assert_eq!(
        report["unreferenced_bytes"],
        (whole.len() + b"other bytes!!!!!!!".len()) as u64
    );

    let (_, stdout, _) = check(&root);
    let line = format!("DAMAGED {poisoned_path}: hash mismatch; affects no committed checkpoint");
    assert!(stdout.lines().any(|l| l == line), "{stdout}");
}

#[test]
fn a_damaged_job_record_is_reported_and_the_rest_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 3);
    let (objects, _) = expected_objects(&root, &[]);
    flip_byte(&root.join("jobs/job/_job"), 60);

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], "jobs/job/_job");
    assert_eq!(problems[0]["kind"], "undecodable");
    assert_eq!(problems[0]["affects_job"], "job");
    // Every metadata record of the job is checked as if committed.
    assert_eq!(report["checkpoints"], 3, "{report}");
    assert_eq!(report["savepoints"], 1, "{report}");
    assert_eq!(report["objects"], objects, "{report}");
}

#[test]
fn stray_copies_and_foreign_names_do_not_stop_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = root_with_checkpoints(dir.path(), 3);
    let (objects, _) = expected_objects(&root, &[]);
    let metadata = std::fs::read(root.join("jobs/job/chk-00000000000000000002/_metadata")).unwrap();
    let strays = [
        (
            "jobs/job/chk-00000000000000000002.bak/_metadata",
            &metadata[..],
        ),
        ("jobs/jöb/_job", b"not a job record"),
        (
            "jobs/jöb/chk-00000000000000000001/_metadata",
            b"not metadata",
        ),
        ("jobs/job/notes.txt", b"an operator's notes"),
        ("shared/zz/not-a-hash", b"?"),
    ];
    for (path, bytes) in strays {
        std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
        std::fs::write(root.join(path), bytes).unwrap();
    }

    let (code, report) = check_json(&root);
    assert_eq!(code, Some(0), "{report}");
    let ignored: BTreeSet<&str> = report["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        ignored,
        strays.iter().map(|(p, _)| *p).collect(),
        "{report}"
    );
    assert_eq!(report["objects"], objects, "{report}");
    assert_eq!(report["checkpoints"], 3, "{report}");

    let (code, stdout, _) = check(&root);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("ignored 5 objects"), "{stdout}");
    assert!(stdout.trim_end().ends_with(": OK"), "{stdout}");
}

#[test]
fn check_of_a_directory_that_is_not_a_root_exits_8_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"meow").unwrap();
    let output = rockpoint(&foreign).arg("check").output().unwrap();
    assert_eq!(output.status.code(), Some(8));
    assert_eq!(
        files(&foreign).into_keys().collect::<Vec<_>>(),
        vec!["cat.jpg".to_owned()]
    );
}

/// A check on `s3://` (SeaweedFS) through a read-only open: a damaged shared file is found with
/// the snapshots it affects.
#[test]
fn check_on_an_s3_root_finds_a_damaged_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::s3::S3Server::get();
    let key = dir.path().join("root");
    let url = common::s3::root_url(&key);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (object, users) = runtime
        .block_on(async {
            let store = server.root(&key).await?;
            let c = CheckpointCoordinator::open(
                store.clone(),
                "job",
                CheckpointSettings {
                    retained: 3,
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
            let mut committed = BTreeMap::new();
            for round in 0..3u64 {
                counts.put(&round, &round)?;
                let done = c.checkpoint(&[&backend]).await?;
                committed.insert(reference(&done.metadata), (*done.metadata).clone());
            }
            c.shutdown(JobEnd::Suspended).await?;
            // A segment the first checkpoint added: every checkpoint references it.
            let first = &committed["job/1"];
            let hash = first.backends[0].log_files[0].segments[0].hash;
            let object = common_shared_path(&hash);
            let bytes = store.get(&object).await?;
            let mut damaged = bytes.to_vec();
            damaged[0] ^= 0x40;
            store
                .put(
                    &object,
                    damaged.into(),
                    rockpoint::store::WriteMode::Replace,
                )
                .await?;
            Ok::<_, Box<dyn std::error::Error>>((object.clone(), referencing(&committed, &object)))
        })
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rockpoint"));
    command.args(["--root", &url, "--json", "check"]);
    for (key, value) in server.env() {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(output.status.code(), Some(4), "{report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["path"], object.as_str());
    assert_eq!(problems[0]["kind"], "hash_mismatch");
    assert_eq!(affects(&problems[0]), users);
    assert_eq!(
        users.len(),
        3,
        "every checkpoint references the first segment"
    );
}
