//! `rockpoint completions SHELL` works without `--root` and prints a script that names every
//! subcommand (bash's passes `bash -n`); any other command without `--root` is a usage error
//! naming the flag.

use std::process::Command;

mod common;
use common::TestResult;

const SUBCOMMANDS: [&str; 11] = [
    "list",
    "show",
    "verify",
    "restore",
    "export",
    "savepoint",
    "gc",
    "du",
    "check",
    "delete",
    "prune",
];

/// The script for `shell`, with no `--root` and no `ROCKPOINT_ROOT`.
fn completions(shell: &str) -> TestResult<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_rockpoint"))
        .args(["completions", shell])
        .env_remove("ROCKPOINT_ROOT")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "completions {shell}: {stderr}"
    );
    let script = String::from_utf8(output.stdout)?;
    assert!(
        !script.trim().is_empty(),
        "completions {shell} printed nothing"
    );
    Ok(script)
}

fn assert_names_every_subcommand(shell: &str, script: &str) {
    for subcommand in SUBCOMMANDS {
        let named = script
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .any(|word| word == subcommand);
        assert!(named, "the {shell} script does not name `{subcommand}`");
    }
}

#[test]
fn bash_completions_parse_and_name_every_subcommand() -> TestResult {
    let script = completions("bash")?;
    assert_names_every_subcommand("bash", &script);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("rockpoint.bash");
    std::fs::write(&path, &script)?;
    let checked = Command::new("bash").arg("-n").arg(&path).output()?;
    assert!(
        checked.status.success(),
        "bash -n refused the script: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() -> TestResult {
    for shell in ["zsh", "fish"] {
        let script = completions(shell)?;
        assert_names_every_subcommand(shell, &script);
    }
    Ok(())
}

#[test]
fn a_command_without_root_exits_2_naming_the_flag() -> TestResult {
    let output = Command::new(env!("CARGO_BIN_EXE_rockpoint"))
        .arg("list")
        .env_remove("ROCKPOINT_ROOT")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--root"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
    Ok(())
}
