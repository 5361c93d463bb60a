//! A job of 4 backends (128 key groups split 4 ways) takes 20 checkpoints with `retained = 3`,
//! changing about 5% of its keys between them. Every retained checkpoint restores to exactly the
//! state the job had when it was taken; subsumed ones are gone with every file only they used; and
//! each checkpoint uploaded exactly the bytes that were new (SSTs and WAL/MANIFEST suffixes).

use crate::common;

use common::s3::Root;
use common::*;
use rockpoint::{CheckpointCoordinator, CheckpointSettings};

async fn retained_checkpoints_restore_exactly_and_upload_only_new_bytes(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = on.store(&dir.path().join("root")).await?;
    let settings = CheckpointSettings {
        retained: 3,
        ..CheckpointSettings::default()
    };
    let coordinator = CheckpointCoordinator::open(store.clone(), "job-a", settings).await?;
    let keys = 4_000;
    let mut job = TestJob::open(&dir.path().join("job"), 4, keys)?;
    job.write(keys * 2)?;

    let mut oracles = std::collections::BTreeMap::new();
    let mut previous: Option<std::sync::Arc<rockpoint::CheckpointMetadata>> = None;
    let mut uploaded_total = 0;
    let mut new_total = 0;
    for round in 0..20 {
        if round > 0 {
            job.write(keys / 20)?;
            job.delete(keys / 200)?;
        }
        let done = coordinator.checkpoint(&job.refs()).await?;
        oracles.insert(done.path(), job.scan()?);
        let known: Vec<&rockpoint::CheckpointMetadata> = previous.iter().map(|m| &**m).collect();
        let expected_new = new_bytes(&done.metadata, &known);
        assert_eq!(
            done.uploaded_bytes(),
            expected_new,
            "checkpoint {} uploaded {} bytes but {} were new",
            done.id(),
            done.uploaded_bytes(),
            expected_new
        );
        assert_eq!(done.metadata.checkpointed_size_bytes, done.uploaded_bytes());
        if round > 0 {
            assert!(
                done.uploaded_bytes() < done.metadata.full_size_bytes / 2,
                "checkpoint {} uploaded {} of {} bytes: not incremental",
                done.id(),
                done.uploaded_bytes(),
                done.metadata.full_size_bytes
            );
            uploaded_total += done.uploaded_bytes();
            new_total += expected_new;
        }
        previous = Some(done.metadata.clone());
    }
    println!(
        "19 incremental checkpoints uploaded {uploaded_total} bytes; {new_total} bytes were new"
    );

    let retained = coordinator.retained();
    assert_eq!(retained.len(), 3);
    assert_eq!(
        retained.iter().map(|m| m.checkpoint_id).collect::<Vec<_>>(),
        vec![18, 19, 20]
    );
    for metadata in &retained {
        let path = metadata.metadata_path();
        let restored = restore_scan(&*store, &path, dir.path()).await?;
        assert_eq!(
            restored, oracles[&path],
            "checkpoint {path} restores to the state at that checkpoint"
        );
    }
    // Subsumed checkpoints are gone, and so is every shared file only they referenced.
    let all = objects(&*store).await?;
    let metadata_files: Vec<&String> = all.iter().filter(|p| p.ends_with("_metadata")).collect();
    assert_eq!(metadata_files.len(), 3, "{metadata_files:?}");
    assert!(
        all.iter().all(|p| !p.starts_with("pins/")),
        "no pin outlives its checkpoint: {all:?}"
    );
    let (referenced, present) = shared_sets(&*store).await?;
    assert_eq!(
        referenced, present,
        "exactly the referenced shared files remain"
    );
    Ok(())
}

crate::on_both_roots!(retained_checkpoints_restore_exactly_and_upload_only_new_bytes,);
