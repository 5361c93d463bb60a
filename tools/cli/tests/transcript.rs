//! The README's terminal transcript, replayed: every `$ ` line between the `transcript:begin` and
//! `transcript:end` markers runs in `bash` in a fresh directory (with the `rockpoint` and
//! `rockpoint-demo` binaries of this build first on PATH), and what it prints (stdout and stderr,
//! plus `(exit N)` when it fails) must match the lines the README shows under it. Figures that
//! differ from run to run (sizes, times, durations, hashes, nonces) are compared as shapes: every
//! number is `#`, every long hex string is `<hex>`, runs of spaces are one.
//!
//! `ROCKPOINT_TRANSCRIPT_WRITE=1 cargo test -p rockpoint-cli --test transcript` rewrites the
//! README's transcript with what this run printed (review the diff before committing it).

use std::path::{Path, PathBuf};
use std::process::Command;

const BEGIN: &str = "<!-- transcript:begin -->";
const END: &str = "<!-- transcript:end -->";

fn readme() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")
}

/// The directory holding this build's binaries (`rockpoint`, and `rockpoint-demo` beside it).
fn bin_dir() -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_rockpoint"));
    let dir = cli.parent().expect("a directory").to_path_buf();
    assert!(
        dir.join("rockpoint-demo").exists(),
        "`rockpoint-demo` is not built next to `{}`: run the workspace's tests (`cargo test \
         --all-targets`), or `cargo build -p rockpoint-demo` first",
        cli.display()
    );
    dir
}

/// Numbers, hex strings and spacing made comparable across runs: in every word (a run of letters
/// and digits), a hex string holding a digit (a hash, a nonce, a shard directory) becomes `#`, and
/// so does every run of digits; runs of spaces become one. An `(exit N)` line stays as it is.
fn shape(line: &str) -> String {
    let line = line.trim_end();
    if line.starts_with("(exit ") {
        return line.to_owned();
    }
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        let hex = word.chars().all(|c| c.is_ascii_hexdigit());
        // A shard directory (`shared/ab/`) may hold no digit.
        if hex && (word.chars().any(|c| c.is_ascii_digit()) || out.ends_with("shared/")) {
            out.push('#');
        } else {
            let mut digits = false;
            for c in word.chars() {
                if c.is_ascii_digit() {
                    if !digits {
                        out.push('#');
                    }
                    digits = true;
                } else {
                    out.push(c);
                    digits = false;
                }
            }
        }
        word.clear();
    };
    let mut space = false;
    for c in line.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
            space = false;
            continue;
        }
        flush(&mut word, &mut out);
        if c.is_whitespace() {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    flush(&mut word, &mut out);
    // A duration's unit follows its size (`950 ms`, `1.2 s`): `# <t>`.
    let mut words: Vec<String> = out.split(' ').map(str::to_owned).collect();
    for i in 1..words.len() {
        let unit: String = words[i].chars().take_while(|c| c.is_alphabetic()).collect();
        if words[i - 1].ends_with('#')
            && ["ms", "s", "µs", "us", "ns", "min", "h"].contains(&unit.as_str())
        {
            words[i] = format!("<t>{}", &words[i][unit.len()..]);
        }
    }
    words.join(" ")
}

/// (command, expected output lines) of the transcript in `text`, and the byte range it spans.
fn parse(text: &str) -> (Vec<(String, Vec<String>)>, std::ops::Range<usize>) {
    let begin = text
        .find(BEGIN)
        .expect("README has a transcript begin marker");
    let end = text.find(END).expect("README has a transcript end marker");
    let block = &text[begin + BEGIN.len()..end];
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.lines() {
        if line.starts_with("```") {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push((command.to_owned(), Vec::new()));
        } else if let Some((_, output)) = steps.last_mut() {
            output.push(line.to_owned());
        }
    }
    for (_, output) in &mut steps {
        while output.last().is_some_and(|l| l.trim().is_empty()) {
            output.pop();
        }
    }
    (steps, begin..end + END.len())
}

fn run(command: &str, dir: &Path, path: &str) -> Vec<String> {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("{command} 2>&1"))
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RUST_LOG")
        .env_remove("ROCKPOINT_ROOT")
        .output()
        .expect("bash runs");
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    if let Some(code) = output.status.code().filter(|&c| c != 0) {
        lines.push(format!("(exit {code})"));
    }
    lines
}

#[test]
fn the_readme_transcript_is_what_the_tools_print() {
    let readme_path = readme();
    let text = std::fs::read_to_string(&readme_path).expect("README.md");
    let (steps, span) = parse(&text);
    assert!(steps.len() >= 8, "the transcript has its steps");
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let write = std::env::var_os("ROCKPOINT_TRANSCRIPT_WRITE").is_some();
    let mut rewritten = String::from(BEGIN);
    rewritten.push_str("\n```console\n");
    let mut mismatches = Vec::new();
    for (command, expected) in &steps {
        let actual = run(command, dir.path(), &path);
        rewritten.push_str(&format!("$ {command}\n"));
        for line in &actual {
            rewritten.push_str(line);
            rewritten.push('\n');
        }
        let want: Vec<String> = expected.iter().map(|l| shape(l)).collect();
        let got: Vec<String> = actual.iter().map(|l| shape(l)).collect();
        if want != got {
            mismatches.push(format!(
                "$ {command}\n--- README\n{}\n--- now\n{}",
                expected.join("\n"),
                actual.join("\n")
            ));
        }
    }
    rewritten.push_str("```\n");
    rewritten.push_str(END);
    if write {
        let mut new = text.clone();
        new.replace_range(span, &rewritten);
        std::fs::write(&readme_path, new).expect("README.md written");
        return;
    }
    assert!(
        mismatches.is_empty(),
        "the README's transcript drifted from what the tools print (update it with \
         ROCKPOINT_TRANSCRIPT_WRITE=1):\n\n{}",
        mismatches.join("\n\n")
    );
}

#[test]
fn shapes_ignore_figures_but_not_words() {
    assert_eq!(
        shape("wordcount/5   checkpoint 2026-11-30T06:30:07Z   764.58 KiB"),
        shape("wordcount/12 checkpoint 2027-01-01T00:00:00Z 1.00 KiB")
    );
    assert_ne!(shape("764.58 KiB new"), shape("764.58 KiB full"));
    assert_eq!(
        shape("shared/ab/ab12cd34ef56ab12cd34ef56: hash mismatch"),
        shape("shared/0f/0f99887766554433221100ff: hash mismatch")
    );
    assert_ne!(shape("(exit 4)"), shape("(exit 2)"));
    assert_eq!(shape("restored in 950.2 ms:"), shape("restored in 1.3 s:"));
    assert_ne!(shape("4 snapshots"), shape("4 s"));
}
