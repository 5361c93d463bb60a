//! Backends on several hosts: the coordinator's process triggers a checkpoint and hands the
//! ticket's wire form to worker processes; each opens its own backend, snapshots it, uploads it
//! straight to the root and hands back its `BackendHandle`'s wire form; the coordinator commits.
//! The workers are real processes (this test binary, re-run as `multihost::worker_process`).

use crate::common;

use std::path::Path;
use std::process::Command;

use common::s3::Root;
use common::*;
use rockpoint::{
    BackendHandle, CheckpointCoordinator, CheckpointSettings, CheckpointTicket, ErrorKind,
    KeyGroupRange, KeyedStateBackend, RootOptions, SnapshotKind,
};

const WORKER_ENV: &str = "ROCKPOINT_MULTIHOST_WORKER";

/// One row of a [`Scan`], as a worker writes it for the coordinator: (state, key) and value.
type ScanRow = ((String, Vec<u8>), Vec<u8>);

/// What one worker process is told, one `key=value` per line in the file `WORKER_ENV` names.
struct WorkerJob {
    root: String,
    backend: String,
    key_groups: (u32, u32),
    round: u64,
    ticket: String,
    handle_out: String,
    scan_out: String,
}

impl WorkerJob {
    fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "root={}\nbackend={}\nkey_groups={}..{}\nround={}\nticket={}\nhandle_out={}\nscan_out={}\n",
                self.root,
                self.backend,
                self.key_groups.0,
                self.key_groups.1,
                self.round,
                self.ticket,
                self.handle_out,
                self.scan_out
            ),
        )
    }

    fn read(path: &str) -> TestResult<WorkerJob> {
        let text = std::fs::read_to_string(path)?;
        let field = |name: &str| -> TestResult<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
                .ok_or_else(|| format!("worker job without `{name}`").into())
        };
        let (start, end) = field("key_groups")?
            .split_once("..")
            .map(|(a, b)| (a.parse(), b.parse()))
            .ok_or("key_groups")?;
        Ok(WorkerJob {
            root: field("root")?,
            backend: field("backend")?,
            key_groups: (start?, end?),
            round: field("round")?.parse()?,
            ticket: field("ticket")?,
            handle_out: field("handle_out")?,
            scan_out: field("scan_out")?,
        })
    }
}

/// The worker: run only as a child of `backends_on_several_hosts_upload_and_one_coordinator_commits`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process, started by backends_on_several_hosts_upload_and_one_coordinator_commits"]
async fn worker_process() -> TestResult {
    let Ok(path) = std::env::var(WORKER_ENV) else {
        return Err(format!("run only by the multihost test, with {WORKER_ENV} set").into());
    };
    let job = WorkerJob::read(&path)?;
    // The root as a remote process opens it: by URL, object store settings from the environment.
    let store = rockpoint::open_root(&job.root, &RootOptions::default()).await?;
    let range = KeyGroupRange::new(job.key_groups.0, job.key_groups.1)?;
    let backend = KeyedStateBackend::open(&job.backend, MAX_PARALLELISM, range, settings())?;
    let values = backend.state(&VALUES)?;
    let mut written = 0;
    for key in 0..4_000u64 {
        let group = rockpoint::key_group_of(&rmp_serde::to_vec(&key)?, MAX_PARALLELISM);
        // Round 0 writes every key it owns; later rounds change one key in ten.
        if range.contains(group) && (job.round == 0 || key % 10 == job.round % 10) {
            values.put(
                &key,
                &vec![(key + job.round) as u8; 200 + (key % 300) as usize],
            )?;
            written += 1;
        }
    }
    backend.flush()?;
    assert!(written > 0, "the worker owns keys");
    let ticket = CheckpointTicket::from_bytes(&std::fs::read(&job.ticket)?)?;
    let handle = backend.snapshot(&ticket)?.upload(&*store).await?;
    std::fs::write(&job.handle_out, handle.to_bytes()?)?;
    let scan: Vec<ScanRow> = scan_backends(&[backend])?.into_iter().collect();
    std::fs::write(&job.scan_out, rmp_serde::to_vec(&scan)?)?;
    Ok(())
}

/// Starts the worker processes of one round and waits for them.
fn run_workers(jobs: &[(WorkerJob, std::path::PathBuf)], on: Root) -> TestResult {
    let mut children = Vec::new();
    for (job, file) in jobs {
        job.write(file)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([
                "multihost::worker_process",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(WORKER_ENV, file);
        if on == Root::S3 {
            for (key, value) in common::s3::S3Server::get().env() {
                command.env(key, value);
            }
        }
        children.push(command.output());
    }
    for child in children {
        let output = child?;
        if !output.status.success() {
            return Err(format!(
                "a worker failed: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
    }
    Ok(())
}

async fn backends_on_several_hosts_upload_and_one_coordinator_commits(on: Root) -> TestResult {
    let dir = tempfile::tempdir()?;
    let root_dir = dir.path().join("root");
    let store = on.store(&root_dir).await?;
    let coordinator = CheckpointCoordinator::open(
        store.clone(),
        "hosts",
        CheckpointSettings {
            retained: 2,
            ..CheckpointSettings::default()
        },
    )
    .await?;
    let ranges = [(0, 64), (64, 128)];
    let mut previous: Option<std::sync::Arc<rockpoint::CheckpointMetadata>> = None;
    for round in 0..3u64 {
        let ticket = coordinator.trigger(SnapshotKind::Checkpoint)?;
        let ticket_file = dir.path().join(format!("ticket-{round}"));
        std::fs::write(&ticket_file, ticket.to_bytes()?)?;
        let jobs: Vec<(WorkerJob, std::path::PathBuf)> = ranges
            .iter()
            .enumerate()
            .map(|(i, &key_groups)| {
                let at = |name: &str| dir.path().join(format!("{name}-{i}-{round}"));
                (
                    WorkerJob {
                        root: on.url(&root_dir),
                        backend: dir.path().join(format!("host-{i}")).display().to_string(),
                        key_groups,
                        round,
                        ticket: ticket_file.display().to_string(),
                        handle_out: at("handle").display().to_string(),
                        scan_out: at("scan").display().to_string(),
                    },
                    at("job"),
                )
            })
            .collect();
        // Worker processes that died would leave the checkpoint in flight: abort it then.
        if let Err(e) = run_workers(&jobs, on) {
            coordinator.abort(&ticket).await?;
            return Err(e);
        }
        let mut handles = Vec::new();
        let mut expected = Scan::new();
        for (job, _) in &jobs {
            handles.push(BackendHandle::from_bytes(&std::fs::read(&job.handle_out)?)?);
            let rows: Vec<ScanRow> = rmp_serde::from_slice(&std::fs::read(&job.scan_out)?)?;
            expected.extend(rows);
        }
        let done = coordinator.complete(&ticket, handles).await?;
        assert_eq!(done.metadata.backends.len(), 2);
        assert_eq!(
            restore_scan(&*store, &done.path(), &dir.path().join(format!("r{round}"))).await?,
            expected,
            "round {round}: the checkpoint the workers uploaded restores to their state"
        );
        if let Some(previous) = &previous {
            // The ticket's reuse set crossed the process boundary: only new files went up.
            let new = new_bytes(&done.metadata, &[previous]);
            assert_eq!(done.uploaded_bytes(), new, "round {round}");
            assert!(
                new < done.metadata.full_size_bytes,
                "round {round}: incremental"
            );
        }
        previous = Some(done.metadata.clone());
    }
    coordinator.shutdown(rockpoint::JobEnd::Suspended).await?;
    Ok(())
}

crate::on_both_roots!(backends_on_several_hosts_upload_and_one_coordinator_commits);

/// A ticket or handle damaged on the wire, or one kind read as the other, is `Corruption`; a
/// ticket's copy carries what the backend needs and a flag of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_swapped_wire_forms_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = local_store(&dir.path().join("root"))?;
    let coordinator =
        CheckpointCoordinator::open(store.clone(), "wire", CheckpointSettings::default()).await?;
    let mut job = TestJob::open(&dir.path().join("job"), 1, 500)?;
    job.write(1_000)?;
    let ticket = coordinator.trigger(SnapshotKind::Savepoint)?;
    let wire = ticket.to_bytes()?;
    let copy = CheckpointTicket::from_bytes(&wire)?;
    assert_eq!(
        (copy.job_id(), copy.checkpoint_id(), copy.kind()),
        ("wire", ticket.checkpoint_id(), SnapshotKind::Savepoint)
    );
    let handle = job.backends[0].snapshot(&copy)?.upload(&*store).await?;
    let handle_wire = handle.to_bytes()?;
    assert_eq!(BackendHandle::from_bytes(&handle_wire)?, handle);
    for (what, bytes) in [
        ("a flipped byte", {
            let mut b = handle_wire.clone();
            let at = b.len() - 3;
            b[at] ^= 1;
            b
        }),
        (
            "a truncation",
            handle_wire[..handle_wire.len() - 1].to_vec(),
        ),
        ("a ticket", wire.clone()),
    ] {
        let err = BackendHandle::from_bytes(&bytes).expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Corruption, "{what}: {err}");
    }
    let err = CheckpointTicket::from_bytes(&handle_wire).expect_err("a handle is not a ticket");
    assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
    coordinator.abort(&ticket).await?;
    assert!(!copy.is_cancelled(), "the copy's flag is its own");
    Ok(())
}
