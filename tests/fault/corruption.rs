//! Random damage to referenced files — bit flips, truncations, extensions, deletions — is always
//! detected, by `verify_checkpoint` and by a restore: 100% detected, 0 silently wrong states.

use crate::common;

use common::*;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, KeyGroupRange, RestoreSource,
    RestoreTarget,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_damage_is_always_detected() -> TestResult {
    let rounds: u64 = std::env::var("ROCKPOINT_CORRUPTION_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = local_store(&root)?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(3_000)?;
    let done = c.checkpoint(&job.refs()).await?;
    let source = RestoreSource::Metadata(done.path());
    let clean = rockpoint::verify_checkpoint(&*store, &source, 4).await?;
    assert!(clean.problems.is_empty(), "{clean:?}");

    let mut objects = Vec::new();
    for backend in &done.metadata.backends {
        for hash in backend.shared_hashes() {
            let hex = hash.to_hex();
            objects.push(format!("shared/{}/{hex}", &hex[..2]));
        }
        objects.extend(backend.private_files.iter().map(|p| p.path.clone()));
    }
    objects.sort();
    objects.dedup();

    let mut rng = 0x00c0_ffee_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut detected_by_verify, mut detected_by_restore, mut silent) = (0, 0, 0);
    for round in 0..rounds {
        let object = &objects[(next() % objects.len() as u64) as usize];
        let file = root.join(object);
        let original = std::fs::read(&file)?;
        let damage = next() % 4;
        match damage {
            0 => {
                let mut bytes = original.clone();
                let bit = next() as usize % (bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
                std::fs::write(&file, bytes)?;
            }
            1 => std::fs::write(&file, &original[..(next() as usize % original.len())])?,
            2 => std::fs::write(&file, [original.as_slice(), &[next() as u8]].concat())?,
            _ => std::fs::remove_file(&file)?,
        }
        let report = rockpoint::verify_checkpoint(&*store, &source, 4).await?;
        if report.problems.iter().any(|p| p.contains(object.as_str())) {
            detected_by_verify += 1;
        }
        let target = RestoreTarget {
            dir: dir.path().join(format!("restore-{round}")),
            key_groups: KeyGroupRange::all(MAX_PARALLELISM)?,
            settings: settings(),
        };
        match rockpoint::restore_backend(&*store, &source, &target, 4, None).await {
            Err(e) if e.kind() == ErrorKind::Corruption => detected_by_restore += 1,
            Err(e) => {
                panic!("round {round}: damage {damage} of {object} gave an undocumented error: {e}")
            }
            Ok(_) => silent += 1,
        }
        std::fs::write(&file, &original)?;
    }
    println!(
        "corruption: {rounds} random damages; verify detected {detected_by_verify}, restore detected {detected_by_restore}, \
         {silent} silently wrong states"
    );
    assert_eq!(silent, 0);
    assert_eq!(detected_by_verify, rounds);
    assert_eq!(detected_by_restore, rounds);
    Ok(())
}
