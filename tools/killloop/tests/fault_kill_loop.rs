//! The kill loop, on a local root and on S3 (a SeaweedFS `weed mini` started by this test binary;
//! if it cannot start, the S3 test fails with its log, it never skips).
//!
//! Quick tier (`cargo test -p rockpoint-killloop`): 50 kills on the local root and 8 on S3 (with a
//! 10 MiB value every 4th workload round, so some uploads are multipart). The long tier is on
//! demand, with the test name choosing the root:
//! `ROCKPOINT_KILL_ROUNDS=500 cargo test --release -p rockpoint-killloop --test fault_kill_loop local -- --nocapture`
//! `ROCKPOINT_KILL_ROUNDS=500 cargo test --release -p rockpoint-killloop --test fault_kill_loop s3 -- --nocapture`
//! (`ROCKPOINT_KILL_SEED` sets the seed.)

mod common;

use common::s3::{BUCKET, S3Server, announce, root_url};

/// `ROCKPOINT_KILL_ROUNDS`, else `quick`.
fn rounds(quick: u32) -> u32 {
    std::env::var("ROCKPOINT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(quick)
}

fn seed() -> u64 {
    std::env::var("ROCKPOINT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261124)
}

/// Runs `rockpoint-killloop drive` with `args` and `env`; returns its summary line.
fn drive(rounds: u32, args: &[&str], env: &[(&str, String)]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rockpoint-killloop"))
        .args([
            "drive",
            "--rounds",
            &rounds.to_string(),
            "--seed",
            &seed().to_string(),
            "--max-run-ms",
            "1200",
        ])
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the kill loop runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "kill loop failed: {stderr}{stdout}"
    );
    assert!(stdout.contains("0 violations"), "{stdout}");
    stdout.into_owned()
}

#[test]
fn kill_loop_local_root() {
    drive(rounds(50), &[], &[]);
}

#[test]
fn kill_loop_s3_root() {
    let server = S3Server::get();
    announce();
    let key = tempfile::tempdir().expect("a temporary directory");
    let url = root_url(key.path());
    drive(
        rounds(8),
        &["--root", &url, "--big-every", "4"],
        &server.env(),
    );
    // Killed multipart uploads are not objects (nothing lists or restores them) but the server
    // keeps their parts until a bucket lifecycle rule aborts them: report how many there are.
    let prefix = url
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .expect("a root of the test bucket");
    match unfinished_uploads(server, prefix) {
        Ok(n) => println!("unfinished multipart uploads left under {url}: {n}"),
        Err(why) => println!("could not list unfinished multipart uploads: {why}"),
    }
}

/// Unfinished multipart uploads under `prefix` of the test bucket (ListMultipartUploads, signed
/// by curl's `--aws-sigv4`, whose signature needs the query encoded and sorted; object_store has
/// no call for it).
fn unfinished_uploads(server: &S3Server, prefix: &str) -> Result<usize, String> {
    let env: std::collections::HashMap<_, _> = server.env().into_iter().collect();
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
        ])
        .arg(format!(
            "{}:{}",
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        ))
        .arg(format!(
            "{}/{BUCKET}?prefix={prefix}%2F&uploads=",
            server.endpoint
        ))
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .matches("<Upload>")
        .count())
}
