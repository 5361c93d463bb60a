//! The kill loop's quick tier (50 kills). The long tier is on demand:
//! `ROCKPOINT_KILL_ROUNDS=500 cargo test --test fault_kill_loop -- --nocapture`.

#[test]
fn kill_loop_quick_tier() {
    let rounds: u32 = std::env::var("ROCKPOINT_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed: u64 = std::env::var("ROCKPOINT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261124);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rockpoint-killloop"))
        .args([
            "drive",
            "--rounds",
            &rounds.to_string(),
            "--seed",
            &seed.to_string(),
            "--max-run-ms",
            "1200",
        ])
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
}
