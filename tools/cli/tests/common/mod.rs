//! The S3 test server of the library's tests (SeaweedFS, `tests/common/s3.rs`), shared with the
//! CLI's tests.
#![allow(dead_code)]

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

pub fn local_store(dir: &std::path::Path) -> TestResult<std::sync::Arc<dyn rockpoint::Store>> {
    Ok(std::sync::Arc::new(rockpoint::LocalStore::new(dir)?))
}

#[path = "../../../../tests/common/s3.rs"]
pub mod s3;

/// The `rockpoint` binary of this build with `--root root`.
pub fn rockpoint(root: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rockpoint"));
    command.arg("--root").arg(root);
    command
}

/// Every file and directory under `dir`, relative and sorted (to show that nothing changed); a
/// `dir` that does not exist is empty.
pub fn tree(dir: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if path.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
