//! The seeds: one small root written by the real code (a committed checkpoint of two backends, a
//! canonical savepoint, a checkpoint left in flight so that its pins are in the root), and the
//! bytes of every record the fuzz targets decode, taken from it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, KeyGroupRange, RestoreSource, SnapshotKind,
};

use crate::common::{self, TestJob, TestResult};

pub const JOB: &str = "fuzz";

pub struct Fixture {
    _dir: tempfile::TempDir,
    /// A pristine copy of the root; each target copies it before writing mutants into it.
    pub root: PathBuf,
    /// The native checkpoint's metadata: its path and bytes.
    pub metadata_path: String,
    pub metadata: Vec<u8>,
    /// The canonical savepoint's metadata (format `Canonical`; restore route `Load`).
    pub canonical_metadata_path: String,
    pub canonical_metadata: Vec<u8>,
    /// `jobs/fuzz/_job`.
    pub job_record: Vec<u8>,
    /// The in-flight checkpoint's pins, path and bytes.
    pub pins: Vec<(String, Vec<u8>)>,
    pub ticket: Vec<u8>,
    pub handle: Vec<u8>,
    /// The canonical savepoint stream of backend 0.
    pub canonical: Vec<u8>,
}

pub fn get() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build().expect("building the fuzz seeds"))
}

fn build() -> TestResult<Fixture> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = common::local_store(&root)?;
        let coordinator =
            CheckpointCoordinator::open(store.clone(), JOB, CheckpointSettings::default()).await?;
        // Few keys, so that every record (and the canonical stream) stays a few KiB.
        let mut job = TestJob::open(&dir.path().join("job"), 2, 24)?;
        job.write(60)?;
        for backend in &job.backends {
            backend.flush()?;
        }
        let done = coordinator.checkpoint(&job.refs()).await?;
        job.write(20)?;
        let savepoint = coordinator.savepoint_canonical(&job.refs()).await?;
        let (_, sp_metadata) =
            rockpoint::restore::read_metadata(&*store, &RestoreSource::Metadata(savepoint.path()))
                .await?;
        let canonical = store
            .get(&sp_metadata.backends[0].private_files[0].path)
            .await?
            .to_vec();
        // A checkpoint left in flight: its ticket, one backend's handle, and the pins in the root.
        let ticket = coordinator.trigger(SnapshotKind::Checkpoint)?;
        let ticket_bytes = ticket.to_bytes()?;
        let copy = rockpoint::CheckpointTicket::from_bytes(&ticket_bytes)?;
        let handle = job.backends[0].snapshot(&copy)?.upload(&*store).await?;
        let mut pins = Vec::new();
        for object in store.list("pins/").await? {
            let bytes = store.get(&object.path).await?.to_vec();
            pins.push((object.path, bytes));
        }
        assert!(!pins.is_empty(), "an in-flight checkpoint is pinned");
        let job_record = store.get(&format!("jobs/{JOB}/_job")).await?.to_vec();
        let metadata = store.get(&done.path()).await?.to_vec();
        let canonical_metadata = store.get(&savepoint.path()).await?.to_vec();
        Ok(Fixture {
            root: root.clone(),
            metadata_path: done.path(),
            metadata,
            canonical_metadata_path: savepoint.path(),
            canonical_metadata,
            job_record,
            pins,
            ticket: ticket_bytes,
            handle: handle.to_bytes()?,
            canonical,
            _dir: dir,
        })
    })
}

/// Copies a directory tree (the root holds small files only).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Key-group ranges to plan restores for: every backend's, the whole, halves, and odd cuts.
pub fn ranges_to_plan(max_parallelism: u32, handles: &[KeyGroupRange]) -> Vec<KeyGroupRange> {
    let mut out: Vec<KeyGroupRange> = handles.to_vec();
    let m = max_parallelism;
    for (s, e) in [
        (0, m),
        (0, m / 2),
        (m / 2, m),
        (1, m.saturating_sub(1)),
        (m / 3, m / 3 + 1),
    ] {
        if let Ok(r) = KeyGroupRange::new(s, e) {
            out.push(r);
        }
    }
    out
}
