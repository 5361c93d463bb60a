//! Restore from a checkpoint's path (R1–R7 of `docs/protocols.md`), one file per step:
//! `resolve` (R1–R2 and the reader pin of R4: find and verify the metadata, pin what it names),
//! `download` (R5: assemble every file in a temporary directory, hashing while streaming; R7's
//! publish), `verify` (read and hash a whole checkpoint without restoring), `claim` (a coordinator's
//! restore: R3–R7 with or without claim). This file holds the public types and the standalone
//! `restore_backend`.
//!
//! Safety: metadata is verified (envelope, checksum, validation) before anything is written, and
//! every local name it holds is a plain RocksDB file name, so nothing lands outside the temporary
//! directory (G5). Every byte is hashed as it streams in; a missing, short, long or altered file
//! fails the restore with an error naming it, and the temporary directory is removed: a restore
//! yields the checkpoint's exact state or nothing (G2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::backend::KeyedStateBackend;
use crate::checkpoint::coordinator::CheckpointCoordinator;
use crate::checkpoint::job;
use crate::checkpoint::metadata::{self, BackendHandle, CheckpointMetadata, PinRecord};
use crate::engine::DB_DIR;
use crate::error::{Error, ErrorDetail, ErrorKind, Result};
use crate::hash::{ContentHash, Verifier};
use crate::keygroup::KeyGroupRange;
use crate::layout::{self, SnapshotKind, checkpoint_dir, parse_checkpoint_path, shared_path};
use crate::settings::BackendSettings;
use crate::state_info::StateInfoFormat;
use crate::store::{Store, WriteMode, missing_as_corruption};

mod claim;
mod download;
mod rescale;
pub(crate) mod resolve;
mod verify;

pub use download::download_backend;
pub use rescale::{RestoreRoute, plan_restore};
pub use resolve::{latest_checkpoint, read_metadata};
pub use verify::{VerifyReport, verify_checkpoint, verify_checkpoint_with_progress};

use download::*;
use rescale::*;
use resolve::*;

/// Where to restore from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreSource {
    /// The object path of a metadata record (`jobs/<job>/chk-<id>/_metadata`).
    Metadata(String),
    /// The object path of a checkpoint directory (`jobs/<job>/chk-<id>`).
    Directory(String),
    /// The newest committed checkpoint of a job.
    Latest(String),
}

impl RestoreSource {
    /// Parses what an operator types: `latest:<job>`; `<job>/<id>` (a checkpoint) or
    /// `<job>/sp-<id>` (a savepoint); a metadata path; or a checkpoint directory path (relative to
    /// the root).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(job) = text.strip_prefix("latest:") {
            layout::validate_job_id(job)?;
            return Ok(RestoreSource::Latest(job.to_owned()));
        }
        let trimmed = text.trim_matches('/');
        if let Some((job, id)) = trimmed.split_once('/')
            && !id.contains('/')
            && layout::validate_job_id(job).is_ok()
        {
            let (kind, digits) = match id.strip_prefix("sp-") {
                Some(digits) => (SnapshotKind::Savepoint, digits),
                None => (
                    SnapshotKind::Checkpoint,
                    id.strip_prefix("chk-").unwrap_or(id),
                ),
            };
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                let id: u64 = digits.parse().map_err(|_| {
                    Error::invalid(format!(
                        "`{text}`: checkpoint id `{digits}` is out of range"
                    ))
                })?;
                return Ok(RestoreSource::Metadata(layout::metadata_path(
                    job, kind, id,
                )));
            }
        }
        let metadata = if trimmed.rsplit('/').next() == Some(layout::METADATA) {
            trimmed.to_owned()
        } else {
            format!("{trimmed}/{}", layout::METADATA)
        };
        if !parse_checkpoint_path(&metadata).is_some_and(|p| p.is_metadata()) {
            return Err(Error::invalid(format!(
                "`{text}` names no checkpoint: use <job>/<id> (e.g. wordcount/8), <job>/sp-<id> \
                 for a savepoint, latest:<job>, or its path in the root \
                 (jobs/<job>/chk-<20-digit id>[/_metadata])"
            )));
        }
        if metadata == trimmed {
            Ok(RestoreSource::Metadata(trimmed.to_owned()))
        } else {
            Ok(RestoreSource::Directory(trimmed.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_references_name_the_checkpoint_they_say() {
        let parsed = |text: &str| RestoreSource::parse(text).unwrap();
        let checkpoint = "jobs/wordcount/chk-00000000000000000008/_metadata".to_owned();
        assert_eq!(
            parsed("wordcount/8"),
            RestoreSource::Metadata(checkpoint.clone())
        );
        assert_eq!(
            parsed("wordcount/chk-8"),
            RestoreSource::Metadata(checkpoint.clone())
        );
        assert_eq!(parsed(&checkpoint), RestoreSource::Metadata(checkpoint));
        assert_eq!(
            parsed("wordcount/sp-12"),
            RestoreSource::Metadata("jobs/wordcount/sp-00000000000000000012/_metadata".into())
        );
        assert_eq!(
            parsed("latest:wordcount"),
            RestoreSource::Latest("wordcount".into())
        );
        assert_eq!(
            parsed("jobs/wordcount/chk-00000000000000000008"),
            RestoreSource::Directory("jobs/wordcount/chk-00000000000000000008".into())
        );
        // Not a job id, or not a number: no checkpoint at all, and the error lists the forms.
        for bad in [
            "job.x/8",
            "wordcount/eight",
            "",
            "../x",
            "jobs/wordcount/chk-8",
        ] {
            let e = RestoreSource::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{bad}");
            assert!(e.to_string().contains("latest:<job>"), "{e}");
        }
        let too_big = RestoreSource::parse("wordcount/99999999999999999999999");
        assert_eq!(too_big.unwrap_err().kind(), ErrorKind::Invalid);
    }
}

/// Whether a restored job takes ownership of the checkpoint it starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimMode {
    /// The source stays with its job; the restored job pins its files until its own first
    /// checkpoint, which uploads only what is new.
    NoClaim,
    /// The restored job adopts the checkpoint (re-committed under its own id) and discards it when
    /// it is subsumed.
    Claim,
}

/// One backend to restore: its directory (must not exist), key groups and settings.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    /// The backend directory to create.
    pub dir: PathBuf,
    /// The key groups it owns: any range the snapshot's backends cover together, at the
    /// snapshot's max parallelism (a rescaling restore when no backend has exactly this range;
    /// see [`plan_restore`](crate::restore::plan_restore)).
    pub key_groups: KeyGroupRange,
    /// Its settings.
    pub settings: BackendSettings,
}

/// Figures of one backend's download.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadReport {
    /// Files written.
    pub files: u64,
    /// Bytes downloaded and verified.
    pub bytes: u64,
}

/// A callback told how many more bytes arrived (for progress bars).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// The handle of `metadata` whose key-group range is exactly `key_groups`.
pub fn backend_for(
    metadata: &CheckpointMetadata,
    key_groups: KeyGroupRange,
) -> Result<&BackendHandle> {
    metadata
        .backends
        .iter()
        .find(|b| b.key_groups == key_groups)
        .ok_or_else(|| {
            Error::invalid(format!(
                "checkpoint {} of job `{}` has no backend for key groups {key_groups}; it has {}",
                metadata.checkpoint_id,
                metadata.job_id,
                backend_ranges(metadata)
            ))
        })
}

/// The key-group ranges of a snapshot's backends, for messages (`[0, 64), [64, 128)`).
fn backend_ranges(metadata: &CheckpointMetadata) -> String {
    let ranges: Vec<String> = metadata
        .backends
        .iter()
        .map(|b| b.key_groups.to_string())
        .collect();
    ranges.join(", ")
}

/// Restores the backend of `target.key_groups` from `source` into `target` and opens it, outside
/// any job. The range need not be one the snapshot's backends had: a rescaling restore clips or
/// merges them ([`plan_restore`](crate::restore::plan_restore)). Missing parents of the target are
/// created. A reader pin, renewed while the download runs, keeps the files read from GC and from
/// their job's discards; it is removed at the end.
///
/// Runs in a `restore` span (job, source, key groups) and publishes its duration and bytes
/// ([`metrics`](crate::metrics), labelled with the restored checkpoint's job).
pub async fn restore_backend(
    store: &dyn Store,
    source: &RestoreSource,
    target: &RestoreTarget,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<KeyedStateBackend> {
    let never = std::future::pending::<()>();
    let mut backends = restore_targets(
        store,
        source,
        std::slice::from_ref(target),
        parallelism,
        progress,
        Parents::Create,
        never,
    )
    .await?;
    Ok(backends.pop().expect("one backend per target"))
}

/// Restores several backends of one snapshot, all or nothing (the `rockpoint restore` command):
/// each target is planned (any covered range, [`plan_restore`](crate::restore::plan_restore);
/// targets must not overlap), checked before anything is read (it must not exist or be an empty
/// directory, and its parent must exist: `Invalid` otherwise), assembled in a temporary directory
/// next to it, and renamed into place only once every target is complete; each source backend is
/// downloaded once however many targets read it. On any failure, or when the future is dropped,
/// nothing of any target remains, and the same call can simply be retried. Returns the opened
/// backends in the order of `targets`.
pub async fn restore_backends(
    store: &dyn Store,
    source: &RestoreSource,
    targets: &[RestoreTarget],
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<Vec<KeyedStateBackend>> {
    let never = std::future::pending::<()>();
    restore_backends_until(store, source, targets, parallelism, progress, never).await
}

/// [`restore_backends`], stopped when `stop` completes (an operator's Ctrl-C): the downloads in
/// flight are dropped, builds already started are awaited, every temporary and scratch directory
/// is removed, the reader pin is deleted, and the restore fails with `Cancelled`. A `stop` that
/// completes once every target was renamed into place does not undo the restore. Unlike dropping
/// the future, which leaves the reader pin to expire (an hour; GC then removes it), a stopped
/// restore leaves nothing in the root either.
pub async fn restore_backends_until(
    store: &dyn Store,
    source: &RestoreSource,
    targets: &[RestoreTarget],
    parallelism: usize,
    progress: Option<Progress>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Vec<KeyedStateBackend>> {
    restore_targets(
        store,
        source,
        targets,
        parallelism,
        progress,
        Parents::MustExist,
        stop,
    )
    .await
}

/// The standalone restore of `targets` behind [`restore_backend`] and [`restore_backends_until`].
async fn restore_targets(
    store: &dyn Store,
    source: &RestoreSource,
    targets: &[RestoreTarget],
    parallelism: usize,
    progress: Option<Progress>,
    parents: Parents,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Vec<KeyedStateBackend>> {
    let job = source_job(source);
    let ranges: Vec<String> = targets.iter().map(|t| t.key_groups.to_string()).collect();
    let span = tracing::info_span!(
        "restore",
        job,
        source = ?source,
        key_groups = %ranges.join(", "),
    );
    let started = std::time::Instant::now();
    let restored = restore_targets_in(store, source, targets, parallelism, progress, parents, stop)
        .instrument(span)
        .await;
    match restored {
        Ok((backends, metadata, reports)) => {
            publish_restore(&metadata.job_id, &metadata, started, &reports);
            Ok(backends)
        }
        Err(e) => {
            crate::metrics::restore_failed(job, e.kind());
            Err(e)
        }
    }
}

async fn restore_targets_in(
    store: &dyn Store,
    source: &RestoreSource,
    targets: &[RestoreTarget],
    parallelism: usize,
    progress: Option<Progress>,
    parents: Parents,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(
    Vec<KeyedStateBackend>,
    CheckpointMetadata,
    Vec<DownloadReport>,
)> {
    if targets.is_empty() {
        return Err(Error::invalid("a restore needs at least one target"));
    }
    // The targets are the caller's input: checked before the metadata is read, a pin written or
    // anything downloaded or created (`restore_all` checks them again, as it creates them).
    for target in targets {
        check_target(&absolute(&target.dir)?, parents)?;
    }
    let (_, metadata) = read_metadata(store, source).await?;
    let routes = plan_all(&metadata, targets)?;
    check_routes(&metadata, targets, &routes)?;
    let hashes = hashes_read(&metadata, targets, &routes);
    let reports = with_reader_pin(
        store,
        &metadata,
        &hashes,
        restore_all_until(
            store,
            &metadata,
            targets,
            &routes,
            parallelism,
            progress,
            stop,
        ),
    )
    .await?;
    // A backend that does not open (its files do not hold the states the record names) fails
    // the whole restore: no target is left behind.
    let opened: Result<Vec<KeyedStateBackend>> = routes
        .iter()
        .zip(targets)
        .map(|(route, target)| open_restored(&metadata, route, target))
        .collect();
    match opened {
        Ok(backends) => Ok((backends, metadata, reports)),
        Err(e) => {
            for target in targets {
                let _ = std::fs::remove_dir_all(&target.dir);
            }
            Err(e)
        }
    }
}

/// The job a restore source names, for the labels of a restore that fails before its metadata
/// is read.
fn source_job(source: &RestoreSource) -> &str {
    match source {
        RestoreSource::Latest(job) => job,
        RestoreSource::Metadata(path) | RestoreSource::Directory(path) => {
            parse_checkpoint_path(path).map_or("unknown", |p| p.job)
        }
    }
}

/// Publishes a restore that succeeded (`job` is the label: the restoring job, or the source's).
fn publish_restore(
    job: &str,
    metadata: &CheckpointMetadata,
    started: std::time::Instant,
    reports: &[DownloadReport],
) {
    let files = reports.iter().map(|r| r.files).sum::<u64>();
    let bytes = reports.iter().map(|r| r.bytes).sum::<u64>();
    let duration = started.elapsed();
    tracing::info!(
        checkpoint = metadata.checkpoint_id,
        duration_ms = duration.as_millis() as u64,
        files,
        bytes,
        "restore finished"
    );
    crate::metrics::restore_completed(job, metadata.kind, duration, files, bytes);
}

/// [`check_restorable`] for every backend the routes read.
fn check_routes(
    metadata: &CheckpointMetadata,
    targets: &[RestoreTarget],
    routes: &[RestoreRoute],
) -> Result<()> {
    for (route, target) in routes.iter().zip(targets) {
        for range in route.sources(target.key_groups) {
            let handle = backend_for(metadata, range)?;
            check_restorable(metadata, handle)?;
        }
    }
    Ok(())
}

/// Refuses, before anything is downloaded, a backend that would not open: one with a state recorded
/// by a rockpoint older than type tags (see `Engine::open`).
fn check_restorable(metadata: &CheckpointMetadata, handle: &BackendHandle) -> Result<()> {
    let legacy = handle
        .states
        .iter()
        .find(|s| s.format == StateInfoFormat::RustTypeNames);
    match legacy {
        Some(state) => Err(ErrorDetail::StateOfRustTypeNames {
            state: state.name.clone(),
            recorded: state.describe(),
            place: format!(
                "checkpoint {} of job `{}`",
                metadata.checkpoint_id, metadata.job_id
            ),
        }
        .into()),
        None => Ok(()),
    }
}

/// Opens a restored backend and checks it holds the states its sources recorded; seeds its
/// snapshot memo with what the root already holds of its files.
fn open_restored(
    metadata: &CheckpointMetadata,
    route: &RestoreRoute,
    target: &RestoreTarget,
) -> Result<KeyedStateBackend> {
    let sources: Vec<&BackendHandle> = route
        .sources(target.key_groups)
        .into_iter()
        .map(|range| backend_for(metadata, range))
        .collect::<Result<_>>()?;
    let handle = sources[0];
    let started = std::time::Instant::now();
    let backend = KeyedStateBackend::open(
        &target.dir,
        handle.max_parallelism,
        target.key_groups,
        target.settings.clone(),
    )?;
    let mut recorded: Vec<crate::state_info::StateInfo> =
        sources.iter().flat_map(|h| h.states.clone()).collect();
    recorded.sort_by(|a, b| a.name.cmp(&b.name));
    recorded.dedup();
    let found = backend.states();
    if found != recorded {
        let describe = |states: &[crate::state_info::StateInfo]| -> Vec<String> {
            states
                .iter()
                .filter(|s| !found.contains(s) || !recorded.contains(s))
                .map(|s| format!("`{}`: {}", s.name, s.describe()))
                .collect()
        };
        return Err(Error::corruption(format!(
            "restored backend {} does not hold the states the checkpoint recorded: it holds {:?}, \
             the checkpoint recorded {:?}",
            target.key_groups,
            describe(&found),
            describe(&recorded)
        )));
    }
    if !matches!(route, RestoreRoute::Load { .. }) {
        // The base's SSTs and logs keep their names and bytes (links and copies): the first
        // checkpoint reuses what RocksDB still uses of them.
        backend.seed_hash_cache(
            handle
                .shared_files
                .iter()
                .map(|f| (f.local_name.clone(), f.size, f.hash)),
        );
        backend.seed_log_chains(&handle.log_files);
    }
    tracing::debug!(
        key_groups = %target.key_groups,
        open_us = started.elapsed().as_micros() as u64,
        "restored backend opened"
    );
    Ok(backend)
}
