//! The demo as a user runs it, through its binary: a second run with the same `--dir` resumes the
//! job from the first run's last checkpoint (the counts include both runs; nothing of the first
//! run's checkpoints is replaced), `--fresh` starts over, and the exit message says where the root
//! is or that it was removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rockpoint::{
    BackendSettings, KeyGroupRange, LocalStore, RestoreSource, RestoreTarget, Store,
    ValueStateDescriptor,
};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const ROUNDS: u64 = 2;
const WORDS: u64 = 2_000;
/// Words in the last checkpoint of one run: every round's, and one round after the restart.
const PER_RUN: u64 = (ROUNDS + 1) * WORDS;
const COUNTS: ValueStateDescriptor<String, u64> = ValueStateDescriptor::new("counts");

fn demo(args: &[&str]) -> TestResult<(Output, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_rockpoint-demo"))
        .args([
            "--rounds",
            &ROUNDS.to_string(),
            "--words-per-round",
            &WORDS.to_string(),
        ])
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!(
        "$ rockpoint-demo {}\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output, stdout))
}

fn demo_ok(args: &[&str]) -> TestResult<String> {
    let (output, stdout) = demo(args)?;
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    Ok(stdout)
}

/// The `wordcount/<id>` after `prefix` in the demo's output.
fn reference_after(stdout: &str, prefix: &str) -> Option<u64> {
    let rest = &stdout[stdout.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix("wordcount/")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Every checkpoint of the root's `wordcount` job verifies; returns their ids and the word total
/// of the latest (restored into one backend of all key groups).
fn check_root(root: &Path, scratch: &Path) -> TestResult<(Vec<u64>, u64)> {
    static RESTORES: AtomicU64 = AtomicU64::new(0);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(root)?);
        let view = rockpoint::admin::inspect_root(&*store, Some("wordcount")).await?;
        assert!(view.unreadable.is_empty(), "{:?}", view.unreadable);
        let mut ids = Vec::new();
        for checkpoint in view.checkpoints() {
            let source = RestoreSource::Metadata(checkpoint.path.clone());
            let report = rockpoint::verify_checkpoint(&*store, &source, 4).await?;
            assert!(
                report.problems.is_empty(),
                "{}: {:?}",
                checkpoint.path,
                report.problems
            );
            ids.push(checkpoint.id);
        }
        let target = RestoreTarget {
            dir: scratch.join(format!(
                "restored-{}",
                RESTORES.fetch_add(1, Ordering::Relaxed)
            )),
            key_groups: KeyGroupRange::all(128)?,
            settings: BackendSettings::default(),
        };
        let backend = rockpoint::restore_backend(
            &*store,
            &RestoreSource::Latest("wordcount".into()),
            &target,
            4,
            None,
        )
        .await?;
        let mut total = 0;
        for entry in backend.state(&COUNTS)?.entries(None)? {
            total += entry?.1;
        }
        Ok((ids, total))
    })
}

#[test]
fn a_second_run_with_the_same_dir_resumes_the_job_and_counts_both_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let work_arg = work.to_string_lossy().into_owned();
    let root = work.join("checkpoints");

    let first = demo_ok(&["--dir", &work_arg])?;
    assert!(!first.contains("resumed from"), "{first}");
    assert!(
        first.contains(&format!("root kept at {}", root.display())),
        "{first}"
    );
    let last_of_first = reference_after(&first, "first checkpoint after restore: ")
        .ok_or("the first run names its last checkpoint")?;
    let (_, total) = check_root(&root, dir.path())?;
    assert_eq!(total, PER_RUN, "the first run's last checkpoint");

    let second = demo_ok(&["--dir", &work_arg])?;
    assert_eq!(
        reference_after(&second, "resumed from "),
        Some(last_of_first),
        "the second run resumes from the first run's last checkpoint:\n{second}"
    );
    assert!(
        second.contains(&format!("root kept at {}", root.display())),
        "{second}"
    );
    let (ids, total) = check_root(&root, dir.path())?;
    assert_eq!(total, 2 * PER_RUN, "the counts include both runs");
    assert!(
        ids.iter().all(|id| *id > last_of_first),
        "the second run's checkpoints follow the first's ({last_of_first}): {ids:?}"
    );
    Ok(())
}

#[test]
fn fresh_deletes_the_earlier_run_and_starts_from_empty_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let work_arg = work.to_string_lossy().into_owned();
    demo_ok(&["--dir", &work_arg])?;
    let fresh = demo_ok(&["--dir", &work_arg, "--fresh"])?;
    assert!(fresh.contains("--fresh: removed"), "{fresh}");
    assert!(!fresh.contains("resumed from"), "{fresh}");
    let (ids, total) = check_root(&work.join("checkpoints"), dir.path())?;
    assert_eq!(total, PER_RUN, "only the fresh run's words");
    assert!(!ids.is_empty());
    Ok(())
}

/// The path in `… <prefix><path> …` up to the next space or colon.
fn path_after(stdout: &str, prefix: &str) -> Option<PathBuf> {
    let rest = &stdout[stdout.find(prefix)? + prefix.len()..];
    Some(PathBuf::from(rest.split([' ', ':']).next()?))
}

#[test]
fn without_dir_the_exit_says_the_temporary_root_was_removed_or_where_it_was_kept() -> TestResult {
    let removed = demo_ok(&[])?;
    let temp = path_after(&removed, "removed the temporary directory ")
        .ok_or("the exit message names the removed directory")?;
    assert!(removed.contains("pass --keep"), "{removed}");
    assert!(!temp.exists(), "{} was removed", temp.display());

    let kept = demo_ok(&["--keep"])?;
    let root = path_after(&kept, "root kept at ").ok_or("the exit message names the root")?;
    assert!(kept.contains("rockpoint -- --root"), "{kept}");
    let scratch = tempfile::tempdir()?;
    let checked = check_root(&root, scratch.path());
    std::fs::remove_dir_all(root.parent().ok_or("the root's directory")?)?;
    let (_, total) = checked?;
    assert_eq!(total, PER_RUN);

    // --fresh needs --dir: a usage error (clap's exit 2), nothing run.
    let (usage, _) = demo(&["--fresh"])?;
    assert_eq!(usage.status.code(), Some(2));
    Ok(())
}

/// `rockpoint-demo --dir D | head -1`: the reader goes away after the first line; the demo goes
/// quiet instead of panicking on the broken pipe, and still runs to its end (its root is complete
/// and kept, as the flags say).
#[test]
fn a_reader_that_goes_away_ends_nothing_but_the_output() -> TestResult {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rockpoint-demo"))
        .args(["--rounds", "2", "--words-per-round", "2000", "--dir"])
        .arg(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("stdout")?).read_line(&mut first)?;
    // The reader is gone (the BufReader and pipe dropped above).
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(first.starts_with("rockpoint demo"), "{first}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let listed = Command::new(env!("CARGO_BIN_EXE_rockpoint-demo"))
        .args(["--rounds", "1", "--words-per-round", "10", "--dir"])
        .arg(&work)
        .output()?;
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("resumed from wordcount/"),
        "the first run finished and committed: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    Ok(())
}
