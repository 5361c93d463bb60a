//! Restore from a checkpoint's path (R1–R7 of `docs/protocols.md`).
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

use super::coordinator::CheckpointCoordinator;
use super::job;
use super::metadata::{self, BackendHandle, CheckpointMetadata, PinRecord};
use crate::backend::KeyedStateBackend;
use crate::engine::DB_DIR;
use crate::error::{Error, ErrorDetail, ErrorKind, Result};
use crate::hash::{ContentHash, Verifier};
use crate::keygroup::KeyGroupRange;
use crate::layout::{self, SnapshotKind, checkpoint_dir, parse_checkpoint_path, shared_path};
use crate::settings::BackendSettings;
use crate::state_info::StateInfoFormat;
use crate::store::{Store, WriteMode, missing_as_corruption};

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
    /// Parses `latest:<job>`, a metadata path, or a checkpoint directory path (relative to the root).
    pub fn parse(text: &str) -> Result<Self> {
        if let Some(job) = text.strip_prefix("latest:") {
            layout::validate_job_id(job)?;
            return Ok(RestoreSource::Latest(job.to_owned()));
        }
        let trimmed = text.trim_matches('/');
        if trimmed.rsplit('/').next() == Some(layout::METADATA) {
            Ok(RestoreSource::Metadata(trimmed.to_owned()))
        } else {
            Ok(RestoreSource::Directory(trimmed.to_owned()))
        }
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
    /// The key groups it owns; a backend of the checkpoint must have exactly this range.
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

/// R1–R2: resolves `source` and reads its verified metadata. Returns the metadata path too.
pub async fn read_metadata(
    store: &dyn Store,
    source: &RestoreSource,
) -> Result<(String, CheckpointMetadata)> {
    let path = match source {
        RestoreSource::Metadata(path) => path.clone(),
        RestoreSource::Directory(dir) => {
            format!("{}/{}", dir.trim_end_matches('/'), layout::METADATA)
        }
        RestoreSource::Latest(job) => latest_checkpoint(store, job).await?.ok_or_else(|| {
            Error::not_found(format!(
                "job `{job}` has no committed checkpoint in {}",
                store.describe()
            ))
        })?,
    };
    if parse_checkpoint_path(&path).is_none_or(|parsed| !parsed.is_metadata()) {
        return Err(Error::invalid(format!(
            "`{path}` is not a checkpoint metadata path (jobs/<job>/chk-<id>/_metadata)"
        )));
    }
    let bytes = match store.get(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "no checkpoint metadata at `{path}` in {}",
                store.describe()
            )));
        }
        Err(e) => return Err(e),
    };
    let metadata = metadata::decode_metadata(&bytes, &path)?;
    ensure_complete(store, &metadata).await?;
    Ok((path, metadata))
}

/// A `_metadata` is a complete checkpoint only if its job record lists it (roots written before
/// job records existed have none: there the metadata is the commit point).
async fn ensure_complete(store: &dyn Store, metadata: &CheckpointMetadata) -> Result<()> {
    match job::read_job(store, &metadata.job_id).await? {
        Some((record, _)) => {
            let complete = match metadata.kind {
                SnapshotKind::Checkpoint => record.retained.contains(&metadata.checkpoint_id),
                SnapshotKind::Savepoint => record.savepoints.contains(&metadata.checkpoint_id),
            };
            if complete {
                Ok(())
            } else {
                Err(Error::not_found(format!(
                    "`{}` is not a complete checkpoint: the record of job `{}` does not list it \
                     (it was discarded, aborted, or its commit never finished)",
                    metadata.metadata_path(),
                    metadata.job_id
                )))
            }
        }
        None => match store.head(&metadata.metadata_path()).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!(
                "checkpoint `{}` was discarded",
                metadata.metadata_path()
            ))),
        },
    }
}

/// R4, the reuser rule for readers: pins every hash `handles` reference on behalf of `owner`, then
/// checks that the checkpoint is still complete (a discard that ran before the pin was seen is
/// reported as `NotFound`, never as a missing file), then waits out GC intents naming its files.
/// Returns the pin's path; the caller deletes it when done.
pub(crate) async fn pin_for_reading(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
    hashes: &[ContentHash],
    owner: metadata::PinOwner,
) -> Result<String> {
    let path = layout::reader_pin_path(&metadata.job_id, metadata.kind, metadata.checkpoint_id);
    let pin = PinRecord {
        job_id: metadata.job_id.clone(),
        checkpoint_id: Some(metadata.checkpoint_id),
        created_at_ms: crate::util::now_ms(),
        hashes: hashes.to_vec(),
        owner,
    };
    store
        .put(
            &path,
            Bytes::from(metadata::encode_pin(&pin)?),
            WriteMode::CreateOnly,
        )
        .await?;
    let checked = async {
        ensure_complete(store, metadata).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!(
                    "checkpoint `{}` was discarded while it was being restored",
                    metadata.metadata_path()
                ))
            } else {
                e
            }
        })?;
        job::wait_for_intents(store, &hashes.iter().copied().collect(), &|| Ok(())).await
    }
    .await;
    match checked {
        Ok(_) => Ok(path),
        Err(e) => {
            store.delete(&path).await.ok();
            Err(e)
        }
    }
}

/// How long a standalone reader's pin lives; it is renewed every third of it while reading.
const READER_PIN_LIFETIME_MS: u64 = 3_600_000;

fn reader_owner() -> metadata::PinOwner {
    metadata::PinOwner::Reader {
        expires_at_ms: crate::util::now_ms() + READER_PIN_LIFETIME_MS,
    }
}

/// Keeps a standalone reader's pin alive while `work` runs, then deletes it.
async fn with_reader_pin<T>(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
    hashes: &[ContentHash],
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let path = pin_for_reading(store, metadata, hashes, reader_owner()).await?;
    let renew = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(READER_PIN_LIFETIME_MS / 3)).await;
            let pin = PinRecord {
                job_id: metadata.job_id.clone(),
                checkpoint_id: Some(metadata.checkpoint_id),
                created_at_ms: crate::util::now_ms(),
                hashes: hashes.to_vec(),
                owner: reader_owner(),
            };
            if let Ok(bytes) = metadata::encode_pin(&pin)
                && let Err(e) = store
                    .put(&path, Bytes::from(bytes), WriteMode::Replace)
                    .await
            {
                tracing::warn!(pin = path, error = %e, "renewing a reader pin failed");
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = renew => unreachable!("the renewal loop never ends"),
    };
    if let Err(e) = store.delete(&path).await {
        tracing::warn!(pin = path, error = %e, "removing a reader pin failed; GC removes it after it expires");
    }
    result
}

/// The metadata path of a job's newest committed checkpoint.
pub async fn latest_checkpoint(store: &dyn Store, job: &str) -> Result<Option<String>> {
    layout::validate_job_id(job)?;
    if let Some((record, _)) = job::read_job(store, job).await? {
        return Ok(record
            .latest()
            .map(|id| layout::metadata_path(job, SnapshotKind::Checkpoint, id)));
    }
    let mut best: Option<(u64, String)> = None;
    for object in store.list(&layout::job_prefix(job)).await? {
        if let Some(parsed) = parse_checkpoint_path(&object.path)
            && parsed.kind == SnapshotKind::Checkpoint
            && parsed.is_metadata()
            && best.as_ref().is_none_or(|(b, _)| parsed.id > *b)
        {
            best = Some((parsed.id, object.path.clone()));
        }
    }
    Ok(best.map(|(_, path)| path))
}

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
            let ranges: Vec<String> = metadata
                .backends
                .iter()
                .map(|b| b.key_groups.to_string())
                .collect();
            Error::invalid(format!(
                "checkpoint {} of job `{}` has no backend for key groups {key_groups}; it has {}",
                metadata.checkpoint_id,
                metadata.job_id,
                ranges.join(", ")
            ))
        })
}

/// R5–R6: downloads one backend into the new directory `target` (its RocksDB files land in
/// `target/db`), verifying every file. `target` must not exist or be empty.
pub async fn download_backend(
    store: &dyn Store,
    handle: &BackendHandle,
    target: &Path,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<DownloadReport> {
    let target = absolute(target)?;
    let occupied = std::fs::read_dir(&target)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if occupied {
        return Err(Error::invalid(format!(
            "restore target {} exists and is not empty; restore into a new directory",
            target.display()
        )));
    }
    let parent = target
        .parent()
        .ok_or_else(|| {
            Error::invalid(format!("restore target {} has no parent", target.display()))
        })?
        .to_path_buf();
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid(format!("restore target {} has no name", target.display())))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    // Leftovers of interrupted restores into this target.
    let stale_prefix = format!(".{name}.restore-");
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&stale_prefix)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let temp = parent.join(format!("{stale_prefix}{}", crate::util::nonce()));
    let db = temp.join(DB_DIR);
    std::fs::create_dir_all(&db).map_err(|e| Error::io("creating", &db, e))?;
    let started = std::time::Instant::now();
    let result = fill(store, handle, &db, parallelism, progress).await;
    let result = match result {
        Ok(report) => publish(&temp, &target, &parent).map(|()| report),
        Err(e) => Err(e),
    };
    tracing::debug!(
        key_groups = %handle.key_groups,
        download_us = started.elapsed().as_micros() as u64,
        ok = result.is_ok(),
        "restore download done"
    );
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(|e| Error::io("resolving the current directory for", path, e))?
            .join(path))
    }
}

/// A local file to assemble from verified parts.
struct Assembly {
    local_name: String,
    parts: Vec<(String, ContentHash, u64)>,
}

/// Every local file of a backend with the stored objects it is made of, in order.
fn assemblies(handle: &BackendHandle) -> Vec<Assembly> {
    let mut work = Vec::new();
    for file in &handle.shared_files {
        work.push(Assembly {
            local_name: file.local_name.clone(),
            parts: vec![(shared_path(&file.hash), file.hash, file.size)],
        });
    }
    for log in &handle.log_files {
        work.push(Assembly {
            local_name: log.local_name.clone(),
            parts: log
                .segments
                .iter()
                .map(|s| (shared_path(&s.hash), s.hash, s.size))
                .collect(),
        });
    }
    for file in &handle.private_files {
        work.push(Assembly {
            local_name: file.local_name.clone(),
            parts: vec![(file.path.clone(), file.hash, file.size)],
        });
    }
    work
}

async fn fill(
    store: &dyn Store,
    handle: &BackendHandle,
    db: &Path,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<DownloadReport> {
    let work = assemblies(handle);
    let bytes = AtomicU64::new(0);
    let files = work.len() as u64;
    // After the first failure the remaining files are skipped, but every started copy runs to its
    // end (copies run on blocking threads), so the caller can remove the directory afterwards.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<()>> = stream::iter(work.into_iter().map(|assembly| {
        let progress = progress.clone();
        let (bytes, failed) = (&bytes, &failed);
        async move {
            if failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let written = assemble(store, db, &assembly, progress)
                .await
                .inspect_err(|_| {
                    failed.store(true, Ordering::SeqCst);
                })?;
            bytes.fetch_add(written, Ordering::Relaxed);
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(parallelism.max(1))
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let current = db.join("CURRENT");
    write_synced(&current, format!("{}\n", handle.manifest_name).as_bytes())?;
    sync_dir(db)?;
    Ok(DownloadReport {
        files,
        bytes: bytes.into_inner(),
    })
}

/// Streams the parts of one file into `db/<local name>`, verifying each part's size and hash.
async fn assemble(
    store: &dyn Store,
    db: &Path,
    assembly: &Assembly,
    progress: Option<Progress>,
) -> Result<u64> {
    // Local names were validated as plain RocksDB names: the join stays inside `db`.
    let path = db.join(&assembly.local_name);
    std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
    let mut total = 0u64;
    for (object, expected, expected_size) in &assembly.parts {
        store
            .append_verified(
                object,
                *expected,
                *expected_size,
                &path,
                &assembly.local_name,
            )
            .await?;
        if let Some(progress) = &progress {
            progress(*expected_size);
        }
        total += expected_size;
    }
    let file = path.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&file).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| Error::invalid(format!("restore task failed: {e}")))?
        .map_err(|e| Error::io("syncing", &path, e))?;
    Ok(total)
}

/// The chunks of `object`, checked on the fly: the stream ends with an error (naming the object and
/// its local name) if the object is missing, has another size, or does not hash to `expected`. The
/// last chunk is only yielded once the whole object has been verified.
async fn verified_stream(
    store: &dyn Store,
    object: &str,
    local_name: &str,
    expected: ContentHash,
    expected_size: u64,
) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
    let verifier = Verifier::new(format!("{object} ({local_name})"), expected, expected_size);
    let (size, chunks) = store
        .get_stream(object)
        .await
        .map_err(|e| missing_as_corruption(e, object, local_name))?;
    verifier.size_is(size)?;
    // Hold back one chunk so that the last one is released only after the hash matched.
    let state = (chunks, verifier, None::<Bytes>, false);
    let stream = stream::try_unfold(state, |(mut chunks, mut verifier, held, done)| async move {
        if done {
            return Ok(None);
        }
        match chunks.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                verifier.update(&chunk)?;
                // The first chunk releases nothing (an empty chunk, filtered below).
                Ok(Some((
                    held.unwrap_or_default(),
                    (chunks, verifier, Some(chunk), false),
                )))
            }
            None => {
                verifier.finish()?;
                Ok(held.map(|last| (last, (chunks, verifier, None, true))))
            }
        }
    });
    Ok(stream
        .try_filter(|chunk| futures::future::ready(!chunk.is_empty()))
        .boxed())
}

/// What [`verify_checkpoint`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The metadata path.
    pub path: String,
    /// Objects read and hashed.
    pub objects: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
    /// One line per missing, short, long or altered object (empty: the checkpoint is whole).
    pub problems: Vec<String>,
}

/// Reads every object a checkpoint references and checks its size and hash, without restoring.
/// Metadata that cannot be read is an error; damaged objects are listed in the report.
pub async fn verify_checkpoint(
    store: &dyn Store,
    source: &RestoreSource,
    parallelism: usize,
) -> Result<VerifyReport> {
    let (path, metadata) = read_metadata(store, source).await?;
    let mut work: Vec<(String, String, ContentHash, u64)> = metadata
        .backends
        .iter()
        .flat_map(assemblies)
        .flat_map(|assembly| {
            let local_name = assembly.local_name;
            assembly
                .parts
                .into_iter()
                .map(move |(object, hash, size)| (object, local_name.clone(), hash, size))
        })
        .collect();
    work.sort();
    work.dedup();
    let outcomes: Vec<std::result::Result<u64, String>> = stream::iter(work.into_iter().map(
        |(object, local, hash, size)| async move {
            let checked = async {
                let mut chunks = verified_stream(store, &object, &local, hash, size).await?;
                while let Some(chunk) = chunks.next().await {
                    chunk?;
                }
                Ok::<_, Error>(size)
            };
            checked.await.map_err(|e| e.to_string())
        },
    ))
    .buffer_unordered(parallelism.max(1))
    .collect()
    .await;
    let mut report = VerifyReport {
        path,
        ..VerifyReport::default()
    };
    for outcome in outcomes {
        report.objects += 1;
        match outcome {
            Ok(bytes) => report.bytes += bytes,
            Err(problem) => report.problems.push(problem),
        }
    }
    report.problems.sort();
    if !report.problems.is_empty() {
        // Files missing because the checkpoint was discarded while it was read are not damage.
        ensure_complete(store, &metadata).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!(
                    "checkpoint `{}` was discarded while it was being verified",
                    metadata.metadata_path()
                ))
            } else {
                e
            }
        })?;
    }
    Ok(report)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).map_err(|e| Error::io("creating", path, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("writing", path, e))?;
    file.sync_all().map_err(|e| Error::io("syncing", path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

fn publish(temp: &Path, target: &Path, parent: &Path) -> Result<()> {
    sync_dir(temp)?;
    if target.exists() {
        // An empty directory was allowed; rename needs it gone.
        std::fs::remove_dir(target)
            .map_err(|e| Error::io("replacing empty directory", target, e))?;
    }
    std::fs::rename(temp, target)
        .map_err(|e| Error::io("moving restored backend into place at", target, e))?;
    sync_dir(parent)
}

/// Downloads the backend of `source` owning `key_groups` into `target` and opens it, outside any
/// job (the `rockpoint restore` command). A reader pin, renewed while the download runs, keeps the
/// checkpoint's files from GC and its job's discards; it is removed at the end.
pub async fn restore_backend(
    store: &dyn Store,
    source: &RestoreSource,
    target: &RestoreTarget,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<KeyedStateBackend> {
    let (_, metadata) = read_metadata(store, source).await?;
    let handle = backend_for(&metadata, target.key_groups)?;
    check_restorable(&metadata, handle)?;
    let mut hashes: Vec<ContentHash> = handle.shared_hashes().collect();
    hashes.sort();
    hashes.dedup();
    with_reader_pin(
        store,
        &metadata,
        &hashes,
        download_backend(store, handle, &target.dir, parallelism, progress),
    )
    .await?;
    open_restored(handle, target)
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

/// Opens a downloaded backend and checks it holds the states the checkpoint recorded.
fn open_restored(handle: &BackendHandle, target: &RestoreTarget) -> Result<KeyedStateBackend> {
    let started = std::time::Instant::now();
    let backend = KeyedStateBackend::open(
        &target.dir,
        handle.max_parallelism,
        handle.key_groups,
        target.settings.clone(),
    )?;
    let mut recorded = handle.states.clone();
    recorded.sort_by(|a, b| a.name.cmp(&b.name));
    if backend.states() != recorded {
        return Err(Error::corruption(format!(
            "restored backend {} holds states {:?}, the checkpoint recorded {:?}",
            handle.key_groups,
            backend.states().iter().map(|s| &s.name).collect::<Vec<_>>(),
            recorded.iter().map(|s| &s.name).collect::<Vec<_>>()
        )));
    }
    backend.seed_hash_cache(
        handle
            .shared_files
            .iter()
            .map(|f| (f.local_name.clone(), f.size, f.hash)),
    );
    backend.seed_log_chains(&handle.log_files);
    tracing::debug!(
        key_groups = %handle.key_groups,
        open_us = started.elapsed().as_micros() as u64,
        "restored backend opened"
    );
    Ok(backend)
}

impl CheckpointCoordinator {
    /// Restores this job's backends from `source` (R1–R7). Without claim, the source's files are
    /// pinned until this job's first checkpoint, which reuses them instead of uploading them again.
    /// With claim, the checkpoint becomes this job's own.
    pub async fn restore(
        &self,
        source: &RestoreSource,
        targets: &[RestoreTarget],
        mode: ClaimMode,
    ) -> Result<Vec<KeyedStateBackend>> {
        let store = &**self.store();
        // R1, R2
        let (source_path, metadata) = read_metadata(store, source).await?;
        // R3
        let handles: Vec<&BackendHandle> = targets
            .iter()
            .map(|t| backend_for(&metadata, t.key_groups))
            .collect::<Result<_>>()?;
        for handle in &handles {
            check_restorable(&metadata, handle)?;
        }
        // A claim adopts every backend of the checkpoint, so it pins them all; a restore without
        // claim pins what it restores.
        let hashes: Vec<ContentHash> = {
            let mut all: Vec<ContentHash> = match mode {
                ClaimMode::Claim => metadata.shared_hashes().collect(),
                ClaimMode::NoClaim => handles.iter().flat_map(|h| h.shared_hashes()).collect(),
            };
            all.sort();
            all.dedup();
            all
        };
        if mode == ClaimMode::Claim && metadata.kind == SnapshotKind::Savepoint {
            return Err(Error::invalid(format!(
                "`{source_path}` is a savepoint: a savepoint belongs to its user and is never \
                 claimed; restore it without claim"
            )));
        }
        // R4: pin as a reader (owned by this coordinator's epoch), then check the source is still
        // complete, then wait out GC intents on its files.
        let pin_path = pin_for_reading(store, &metadata, &hashes, self.pin_owner()).await?;
        // R5
        let parallelism = self.inner.settings.transfer_parallelism;
        let mut done = Vec::new();
        for (handle, target) in handles.iter().zip(targets) {
            let downloaded = download_backend(store, handle, &target.dir, parallelism, None).await;
            if let Err(e) = downloaded {
                // All or nothing: the backends restored so far go too.
                for dir in done {
                    let _ = std::fs::remove_dir_all(dir);
                }
                store.delete(&pin_path).await.ok();
                return Err(self.explain_download_failure(&metadata, e).await);
            }
            done.push(target.dir.clone());
        }
        match mode {
            ClaimMode::NoClaim => self.add_restore_pin(pin_path, hashes.iter().copied()),
            // R6: the reader pin protects every file until this job's record references them.
            ClaimMode::Claim => {
                let claimed = self.claim_checkpoint(&metadata, targets).await;
                store.delete(&pin_path).await.ok();
                if let Err(e) = claimed {
                    for dir in done {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    return Err(e);
                }
                self.release_source(&metadata).await?;
            }
        }
        // R7
        handles
            .iter()
            .zip(targets)
            .map(|(handle, target)| open_restored(handle, target))
            .collect()
    }

    /// A file missing under a restore whose pin was live is damage; but the pin dies when this
    /// coordinator is fenced, and the checkpoint may have been discarded before the pin was seen:
    /// those are reported as what they are, never as corruption.
    async fn explain_download_failure(&self, source: &CheckpointMetadata, error: Error) -> Error {
        if error.kind() != ErrorKind::Corruption {
            return error;
        }
        if let Ok(Some((record, _))) = job::read_job(&**self.store(), self.job_id()).await
            && record.epoch > self.epoch()
        {
            return Error::fenced(format!(
                "job `{}` was taken over (epoch {}) while this coordinator (epoch {}) restored \
                 `{}`; its reader pin died with its epoch ({error})",
                self.job_id(),
                record.epoch,
                self.epoch(),
                source.metadata_path()
            ));
        }
        match ensure_complete(&**self.store(), source).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Error::not_found(format!(
                "checkpoint `{}` was discarded while it was being restored ({error})",
                source.metadata_path()
            )),
            _ => error,
        }
    }

    async fn claim_checkpoint(
        &self,
        metadata: &CheckpointMetadata,
        targets: &[RestoreTarget],
    ) -> Result<()> {
        let store = &**self.store();
        let id = self.allocate_id()?;
        let mut adopted = metadata.clone();
        adopted.job_id = self.job_id().to_owned();
        adopted.checkpoint_id = id;
        // Private files move with the record: the old job's directory will be cleaned up.
        for backend in &mut adopted.backends {
            let tag = backend.tag();
            let local_dir = targets
                .iter()
                .find(|t| t.key_groups == backend.key_groups)
                .map(|t| t.dir.join(DB_DIR));
            for private in &mut backend.private_files {
                let path = format!(
                    "{}/{tag}/{}",
                    checkpoint_dir(self.job_id(), SnapshotKind::Checkpoint, id),
                    private.local_name
                );
                match &local_dir {
                    Some(dir) => {
                        store
                            .put_file(
                                &path,
                                &dir.join(&private.local_name),
                                0,
                                private.size,
                                private.hash,
                            )
                            .await?
                    }
                    None => {
                        let bytes = store.get(&private.path).await?;
                        store.put(&path, bytes, WriteMode::Replace).await?;
                    }
                }
                private.path = path;
            }
        }
        let encoded = metadata::encode_metadata(&adopted)?;
        store
            .put(
                &adopted.metadata_path(),
                Bytes::from(encoded),
                WriteMode::CreateOnly,
            )
            .await?;
        self.adopt(Arc::new(adopted)).await
    }

    /// R6, after the claim committed: the source job's record stops retaining the checkpoint and
    /// lists it as `discarding`. Its records are deleted by the source job's own coordinator (which
    /// keeps them while its in-flight tickets reuse their hashes) or, once no owner lives, by GC.
    /// This job never deletes them itself. If the swap keeps losing, both jobs retain the
    /// checkpoint: nothing is lost, it just was not moved.
    async fn release_source(&self, source: &CheckpointMetadata) -> Result<()> {
        let store = &**self.store();
        let job = &source.job_id;
        let id = source.checkpoint_id;
        for _ in 0..32 {
            let Some((record, version)) = job::read_job(store, job).await? else {
                tracing::warn!(
                    job,
                    checkpoint = id,
                    "the claimed checkpoint's job has no record; its records stay"
                );
                return Ok(());
            };
            if !record.retained.contains(&id) {
                return Ok(());
            }
            let mut next = record.clone();
            next.retained.retain(|&r| r != id);
            if !next.discarding.contains(&id) {
                next.discarding.push(id);
            }
            next.updated_at_ms = crate::util::now_ms();
            if job::swap_job(store, &next, Some(&version)).await?.is_some() {
                return Ok(());
            }
        }
        tracing::warn!(
            job,
            checkpoint = id,
            "the claimed checkpoint's job record kept changing; it still retains the checkpoint too"
        );
        Ok(())
    }
}

impl KeyedStateBackend {
    /// Seeds the log chains with the restored logs' segments: a restored WAL that RocksDB keeps (it
    /// does not flush on recovery) is reused by the first checkpoint, segment by segment.
    pub(crate) fn seed_log_chains(&self, logs: &[crate::checkpoint::metadata::LogFile]) {
        let mut chains = self.inner.log_chains();
        for log in logs {
            let mut offset = 0;
            let chain = log
                .segments
                .iter()
                .map(|segment| {
                    let entry = (offset, *segment);
                    offset += segment.size;
                    entry
                })
                .collect();
            chains.insert(log.local_name.clone(), chain);
        }
    }

    /// Seeds the SST hash cache (restored files need no rehashing on the first checkpoint).
    pub(crate) fn seed_hash_cache(&self, files: impl Iterator<Item = (String, u64, ContentHash)>) {
        let mut cache = self.inner.hash_cache();
        for (name, size, hash) in files {
            cache.insert(name, (size, hash));
        }
    }
}
