//! Damaged and hostile inputs: a bit flip, truncation or deletion of any stored file, corrupt
//! metadata, and metadata whose paths try to escape. Each gets its documented error, and a failed
//! restore writes nothing: the target is not created and its parent holds exactly what it held.

use crate::common;

use std::path::Path;

use common::s3::Root;
use common::*;
use rockpoint::store::WriteMode;
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ErrorKind, RestoreSource, RestoreTarget, Store,
};

struct Fixture {
    _dir: tempfile::TempDir,
    /// The root's directory (of a local root; an S3 root is named after it).
    root: std::path::PathBuf,
    store: std::sync::Arc<dyn Store>,
    path: String,
    restores: std::path::PathBuf,
}

async fn fixture(on: Root) -> TestResult<Fixture> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let store = on.store(&root).await?;
    let c =
        CheckpointCoordinator::open(store.clone(), "job", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 1_000)?;
    job.write(3_000)?;
    job.backends[0].flush()?;
    job.write(300)?;
    let done = c.checkpoint(&job.refs()).await?;
    assert!(
        !done.metadata.backends[0].shared_files.is_empty(),
        "the fixture has SSTs and a WAL"
    );
    let restores = dir.path().join("restores");
    std::fs::create_dir_all(&restores)?;
    Ok(Fixture {
        root,
        store,
        path: done.path(),
        restores,
        _dir: dir,
    })
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

async fn restore_into(f: &Fixture, name: &str) -> rockpoint::Result<rockpoint::KeyedStateBackend> {
    let target = RestoreTarget {
        dir: f.restores.join(name),
        key_groups: rockpoint::KeyGroupRange::all(MAX_PARALLELISM)?,
        settings: settings(),
    };
    rockpoint::restore_backend(
        &*f.store,
        &RestoreSource::Metadata(f.path.clone()),
        &target,
        4,
        None,
    )
    .await
}

/// Every object the checkpoint references: shared files, segments and private files.
async fn referenced_objects(f: &Fixture) -> TestResult<Vec<String>> {
    let (_, metadata) =
        rockpoint::restore::read_metadata(&*f.store, &RestoreSource::Metadata(f.path.clone()))
            .await?;
    let mut out = std::collections::BTreeSet::new();
    for b in &metadata.backends {
        for hash in b.shared_hashes() {
            let hex = hash.to_hex();
            out.insert(format!("shared/{}/{hex}", &hex[..2]));
        }
        out.extend(b.private_files.iter().map(|p| p.path.clone()));
    }
    Ok(out.into_iter().collect())
}

/// An object's bytes, read through the store (damage is done through the store too, so that it
/// reaches a local root and an S3 root alike).
async fn read_object(f: &Fixture, path: &str) -> TestResult<Vec<u8>> {
    use futures::TryStreamExt;
    let (_, stream) = f.store.get_stream(path).await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

async fn write_object(f: &Fixture, path: &str, bytes: &[u8]) -> TestResult {
    f.store
        .put(path, bytes.to_vec().into(), WriteMode::Replace)
        .await?;
    Ok(())
}

async fn every_damaged_file_is_detected_and_nothing_is_written(on: Root) -> TestResult {
    let f = fixture(on).await?;
    let objects = referenced_objects(&f).await?;
    assert!(
        objects.len() >= 4,
        "SSTs, MANIFEST, WAL and OPTIONS: {objects:?}"
    );
    let mut cases = 0;
    for (i, object) in objects.iter().enumerate() {
        let original = read_object(&f, object).await?;
        let damages: Vec<(&str, Vec<u8>)> = vec![
            ("bit flip", {
                let mut b = original.clone();
                let at = (i * 7919) % b.len();
                b[at] ^= 0x10;
                b
            }),
            ("truncation", original[..original.len() - 1].to_vec()),
            ("extension", [original.as_slice(), b"x"].concat()),
        ];
        for (damage, bytes) in damages {
            write_object(&f, object, &bytes).await?;
            let before = listing(&f.restores);
            let err = restore_into(&f, &format!("r{cases}"))
                .await
                .err()
                .expect("damage is detected");
            assert_eq!(
                err.kind(),
                ErrorKind::Corruption,
                "{damage} of {object}: {err}"
            );
            assert!(
                err.to_string().contains(object.as_str()),
                "{damage}: the error names {object}: {err}"
            );
            assert_eq!(
                listing(&f.restores),
                before,
                "{damage} of {object}: nothing written"
            );
            cases += 1;
        }
        f.store.delete(object).await?;
        let err = restore_into(&f, &format!("r{cases}"))
            .await
            .err()
            .expect("missing file is detected");
        assert_eq!(err.kind(), ErrorKind::Corruption, "missing {object}: {err}");
        assert!(err.to_string().contains(object.as_str()), "{err}");
        cases += 1;
        write_object(&f, object, &original).await?;
    }
    println!("{cases} damaged-file cases, all detected");
    // Undamaged again, it restores.
    restore_into(&f, "clean").await?;
    Ok(())
}

async fn corrupt_or_missing_metadata_gets_a_clear_error(on: Root) -> TestResult {
    let f = fixture(on).await?;
    let original = read_object(&f, &f.path).await?;
    for (what, bytes) in [
        ("flipped body byte", {
            let mut b = original.clone();
            let at = b.len() - 10;
            b[at] ^= 1;
            b
        }),
        ("flipped magic", {
            let mut b = original.clone();
            b[0] ^= 1;
            b
        }),
        ("truncated", original[..original.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ] {
        write_object(&f, &f.path, &bytes).await?;
        let err = restore_into(&f, "never").await.err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::Corruption, "{what}: {err}");
        assert!(err.to_string().contains("_metadata"), "{what}: {err}");
        assert!(!f.restores.join("never").exists());
    }
    write_object(&f, &f.path, &original).await?;
    let missing = rockpoint::restore::read_metadata(
        &*f.store,
        &RestoreSource::Metadata("jobs/job/chk-00000000000000000042/_metadata".into()),
    )
    .await;
    assert_eq!(missing.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    let nonsense = rockpoint::restore::read_metadata(
        &*f.store,
        &RestoreSource::Metadata("../../etc/passwd".into()),
    )
    .await;
    assert_eq!(nonsense.err().map(|e| e.kind()), Some(ErrorKind::Invalid));
    let latest =
        rockpoint::restore::read_metadata(&*f.store, &RestoreSource::Latest("nobody".into())).await;
    assert_eq!(latest.err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    Ok(())
}

/// Re-seals a MessagePack body in the documented envelope (magic, version, length, BLAKE3).
fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = b"RKPTMETA".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_metadata_is_rejected_before_any_write() -> TestResult {
    let f = fixture(Root::Local).await?;
    let (_, metadata) =
        rockpoint::restore::read_metadata(&*f.store, &RestoreSource::Metadata(f.path.clone()))
            .await?;
    type Edit = Box<dyn Fn(&mut rockpoint::CheckpointMetadata)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "sst name with ../",
            Box::new(|m| m.backends[0].shared_files[0].local_name = "../../escaped.sst".into()),
        ),
        (
            "absolute sst name",
            Box::new(|m| m.backends[0].shared_files[0].local_name = "/tmp/escaped.sst".into()),
        ),
        (
            "log name with ../",
            Box::new(|m| m.backends[0].log_files[1].local_name = "../000001.log".into()),
        ),
        (
            "private path with ..",
            Box::new(|m| m.backends[0].private_files[0].path = "jobs/../../x".into()),
        ),
        (
            "private local name",
            Box::new(|m| m.backends[0].private_files[0].local_name = "../OPTIONS-000001".into()),
        ),
        (
            "manifest name",
            Box::new(|m| m.backends[0].manifest_name = "../MANIFEST-000001".into()),
        ),
        (
            "absurd size",
            Box::new(|m| m.backends[0].shared_files[0].size = 1 << 50),
        ),
        (
            "key groups beyond max",
            Box::new(|m| m.max_parallelism = 64),
        ),
        ("another job's id", Box::new(|m| m.job_id = "other".into())),
    ];
    for (what, edit) in edits {
        let mut hostile = metadata.clone();
        edit(&mut hostile);
        write_object(&f, &f.path, &seal(&rmp_serde::to_vec_named(&hostile)?)).await?;
        let parent_before = listing(&f.restores);
        let root_parent_before = listing(f.root.parent().unwrap());
        let err = restore_into(&f, "hostile")
            .await
            .err()
            .expect("hostile metadata is refused");
        assert_eq!(err.kind(), ErrorKind::Corruption, "{what}: {err}");
        assert_eq!(
            listing(&f.restores),
            parent_before,
            "{what}: nothing written"
        );
        assert_eq!(
            listing(f.root.parent().unwrap()),
            root_parent_before,
            "{what}: nothing escaped"
        );
    }
    Ok(())
}

crate::on_both_roots!(
    every_damaged_file_is_detected_and_nothing_is_written,
    corrupt_or_missing_metadata_gets_a_clear_error,
);
