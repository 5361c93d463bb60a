//! Export (relocation), X1–X6 of `docs/protocols.md`: copies a checkpoint or savepoint with
//! everything it references — its metadata, its private files, every shared file and log segment —
//! from one root into another, where it becomes a savepoint of a job (by default its own).
//!
//! Safety: the source is held by a reader pin in the source root for the whole copy (its job's
//! discards and GC keep what is read); in the target root a reader pin naming the new savepoint
//! covers every shared hash *before* anything is checked or copied (the reuser rule), and the
//! savepoint exists only once the target job's record lists it (the commit point, after its
//! metadata and every file it references are durable, G1). Every byte is verified against its
//! BLAKE3 hash on the way: a damaged source fails the export with `Corruption` and commits nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{self, StreamExt};

use crate::checkpoint::job::{self, JobRecord};
use crate::checkpoint::metadata::{self, CheckpointMetadata, PinRecord};
use crate::checkpoint::restore::resolve::{READER_PIN_LIFETIME_MS, reader_owner, with_reader_pin};
use crate::checkpoint::restore::{Progress, RestoreSource, read_metadata};
use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::layout::{self, SnapshotKind, parse_checkpoint_path, shared_path};
use crate::store::{Store, WriteMode};

/// What an export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// The new savepoint's metadata path in the target root (`jobs/<job>/sp-<id>/_metadata`).
    pub metadata_path: String,
    /// Objects copied into the target root: shared files and log segments it lacked, and every
    /// private file (the metadata record not counted).
    pub objects_copied: u64,
    /// Bytes of the objects copied, each verified against its hash.
    pub bytes_copied: u64,
    /// Shared files and log segments the target root already held (not copied: deduplicated).
    pub objects_present: u64,
}

/// How many times the export starts over under a new id when a coordinator claimed the target job
/// between X1 and X6 (its startup recovery may remove the records of ids below its block).
const ATTEMPTS: usize = 8;
/// Compare-and-swap retries of one record update.
const SWAPS: usize = 32;

/// Copies the snapshot `source` of the root `from` with everything it references into the root
/// `to`, as a new savepoint of `target_job` (default: the source's job), and returns where it is.
/// `parallelism` objects are copied at once; `progress` is told the bytes of every object handled
/// (copied or found present), so it reaches the snapshot's distinct size. Steps X1–X6 of
/// `docs/protocols.md`.
pub async fn export_snapshot(
    from: &dyn Store,
    source: &RestoreSource,
    to: &dyn Store,
    target_job: Option<&str>,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<ExportReport> {
    let (_, metadata) = read_metadata(from, source).await?;
    let job = target_job.unwrap_or(&metadata.job_id).to_owned();
    layout::validate_job_id(&job)?;
    // Each shared object once, however many backends or logs repeat it.
    let objects: BTreeMap<ContentHash, u64> = metadata.shared_objects().collect();
    let hashes: Vec<ContentHash> = objects.keys().copied().collect();
    let export = Export {
        from,
        to,
        source: &metadata,
        job: &job,
        objects: &objects,
        hashes: &hashes,
        parallelism: parallelism.max(1),
        progress,
        copied_hashes: Mutex::new(HashSet::new()),
        report: Mutex::new(ExportReport::default()),
    };
    // The source's reader pin (R4 in the source root): its job's discards and GC keep its files.
    with_reader_pin(from, &metadata, &hashes, export.run()).await
}

struct Export<'a> {
    from: &'a dyn Store,
    to: &'a dyn Store,
    source: &'a CheckpointMetadata,
    job: &'a str,
    objects: &'a BTreeMap<ContentHash, u64>,
    hashes: &'a [ContentHash],
    parallelism: usize,
    progress: Option<Progress>,
    /// Shared objects this export copied (an attempt after a restart finds them present).
    copied_hashes: Mutex<HashSet<ContentHash>>,
    report: Mutex<ExportReport>,
}

/// How one attempt ended.
enum Attempt {
    Committed,
    /// A coordinator claimed the target job after X1: start over under a new id.
    Restart,
}

impl Export<'_> {
    async fn run(&self) -> Result<ExportReport> {
        let temp = TempDir::new()?;
        for _ in 0..ATTEMPTS {
            // X1
            let id = allocate_id(self.to, self.job).await?;
            match self.attempt(id, &temp.path).await? {
                Attempt::Committed => {
                    let mut report = self.report.lock().expect("report lock").clone();
                    report.metadata_path =
                        layout::metadata_path(self.job, SnapshotKind::Savepoint, id);
                    return Ok(report);
                }
                Attempt::Restart => {
                    tracing::info!(
                        job = self.job,
                        savepoint = id,
                        "the target job was claimed during the export; starting over under a new id"
                    );
                }
            }
        }
        Err(Error::conflict(format!(
            "exporting `{}` into job `{}`: the job kept being claimed by new coordinators",
            self.source.metadata_path(),
            self.job
        )))
    }

    /// X2–X6 under savepoint id `id`, with the target pin renewed throughout. On failure or
    /// restart, what this attempt wrote under its id and its pin are removed (nothing references
    /// them); the shared objects it copied are GC's.
    async fn attempt(&self, id: u64, temp: &Path) -> Result<Attempt> {
        // X2: the pin first, then the intents (reuser rule); only then HEAD and copy.
        let pin_path = layout::reader_pin_path(self.job, SnapshotKind::Savepoint, id);
        if let Err(e) = self
            .to
            .put(&pin_path, self.pin(id)?, WriteMode::CreateOnly)
            .await
        {
            // The put may have landed (reported failed): a pin left behind would hold every hash
            // for an hour. Nothing else of the attempt exists yet.
            if self.to.delete(&pin_path).await.is_ok() {
                forget_export(self.to, self.job, id).await;
            }
            return Err(e);
        }
        let work = async {
            let wanted = self.hashes.iter().copied().collect();
            job::wait_for_intents(self.to, &wanted, &|| Ok(())).await?;
            // X3, X4
            let exported = self.copy_all(id, temp).await?;
            // X5
            self.to
                .put(
                    &exported.metadata_path(),
                    Bytes::from(metadata::encode_metadata(&exported)?),
                    WriteMode::CreateOnly,
                )
                .await?;
            // X6
            commit(self.to, self.job, id).await
        };
        let renew = async {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(READER_PIN_LIFETIME_MS / 3))
                    .await;
                let renewed = match self.pin(id) {
                    Ok(bytes) => self.to.put(&pin_path, bytes, WriteMode::Replace).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = renewed {
                    tracing::warn!(pin = pin_path, error = %e, "renewing an export's pin failed");
                }
            }
        };
        let outcome = tokio::select! {
            outcome = work => outcome,
            () = renew => unreachable!("the renewal loop never ends"),
        };
        match outcome {
            // X6 done: the pin is left to expire (see X6 in docs/protocols.md: a GC pass that read
            // the record before the commit must still find it).
            Ok(true) => Ok(Attempt::Committed),
            Ok(false) => {
                if settle(self.to, self.job, id).await == Some(false) {
                    self.remove_attempt(id, &pin_path).await;
                }
                Ok(Attempt::Restart)
            }
            Err(e) => {
                // An error of X6 itself may hide a swap still in flight: the records are removed
                // only once a swap of the record settled that `id` is not committed.
                if settle(self.to, self.job, id).await == Some(false) {
                    self.remove_attempt(id, &pin_path).await;
                }
                Err(e)
            }
        }
    }

    /// The target pin: every shared hash, on behalf of savepoint `id` of the target job.
    fn pin(&self, id: u64) -> Result<Bytes> {
        let pin = PinRecord {
            export_target: true,
            job_id: self.job.to_owned(),
            checkpoint_id: Some(id),
            created_at_ms: crate::util::now_ms(),
            hashes: self.hashes.to_vec(),
            owner: reader_owner(),
        };
        Ok(Bytes::from(metadata::encode_pin(&pin)?))
    }

    /// Best effort: the records an uncommitted attempt wrote under its id, then its pin.
    async fn remove_attempt(&self, id: u64, pin_path: &str) {
        let dir = layout::checkpoint_dir(self.job, SnapshotKind::Savepoint, id);
        let metadata = layout::metadata_path(self.job, SnapshotKind::Savepoint, id);
        let mut removed = self.to.delete(&metadata).await.is_ok();
        if let Ok(objects) = self.to.list(&format!("{dir}/")).await {
            for object in objects {
                removed &= self.to.delete(&object.path).await.is_ok();
            }
        }
        removed &= self.to.delete(pin_path).await.is_ok();
        if removed {
            forget_export(self.to, self.job, id).await;
        } else {
            tracing::warn!(
                job = self.job,
                savepoint = id,
                "removing what a failed export wrote failed; GC removes it"
            );
        }
    }

    /// X3 (shared objects the target lacks) and X4 (private files at their new paths), every
    /// byte verified; returns the rewritten metadata.
    async fn copy_all(&self, id: u64, temp: &Path) -> Result<CheckpointMetadata> {
        let mut exported = self.source.clone();
        exported.job_id = self.job.to_owned();
        exported.checkpoint_id = id;
        exported.kind = SnapshotKind::Savepoint;
        exported.claimed_from = None;
        let mut work: Vec<Copy> = self
            .objects
            .iter()
            .map(|(hash, size)| Copy {
                from: shared_path(hash),
                to: shared_path(hash),
                hash: *hash,
                size: *size,
                shared: true,
                label: format!("shared file {hash}"),
            })
            .collect();
        for backend in &mut exported.backends {
            let tag = backend.tag();
            for private in &mut backend.private_files {
                let path = layout::private_file_path(
                    self.job,
                    SnapshotKind::Savepoint,
                    id,
                    &tag,
                    &private.local_name,
                );
                work.push(Copy {
                    from: private.path.clone(),
                    to: path.clone(),
                    hash: private.hash,
                    size: private.size,
                    shared: false,
                    label: format!("private file {} of backend {tag}", private.local_name),
                });
                private.path = path;
            }
        }
        // After the first failure the remaining objects are skipped.
        let failed = AtomicBool::new(false);
        let copied = AtomicU64::new(0);
        let bytes = AtomicU64::new(0);
        let present = AtomicU64::new(0);
        let results: Vec<Result<()>> = stream::iter(work.iter().map(|copy| {
            let (failed, copied, bytes, present) = (&failed, &copied, &bytes, &present);
            async move {
                if failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let done = self.copy_one(copy, temp).await.inspect_err(|_| {
                    failed.store(true, Ordering::SeqCst);
                })?;
                match done {
                    Copied::Now => {
                        copied.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add(copy.size, Ordering::Relaxed);
                    }
                    Copied::Present => {
                        present.fetch_add(1, Ordering::Relaxed);
                    }
                    Copied::PresentOwn => {}
                }
                if let Some(progress) = &self.progress {
                    progress(copy.size);
                }
                Ok(())
            }
        }))
        .buffer_unordered(self.parallelism)
        .collect()
        .await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        let mut report = self.report.lock().expect("report lock");
        report.objects_copied += copied.into_inner();
        report.bytes_copied += bytes.into_inner();
        report.objects_present += present.into_inner();
        Ok(exported)
    }

    /// Copies one object unless (shared) the target holds it: downloaded into `temp` verified
    /// against its hash, then uploaded with the hash checked again.
    async fn copy_one(&self, copy: &Copy, temp: &Path) -> Result<Copied> {
        if copy.shared
            && let Some(found) = self.to.head(&copy.to).await?
        {
            if found.size != copy.size {
                return Err(Error::corruption(format!(
                    "`{}` ({}) in {} has {} bytes, the exported snapshot says {}",
                    copy.to,
                    copy.label,
                    self.to.describe(),
                    found.size,
                    copy.size
                )));
            }
            let ours = self
                .copied_hashes
                .lock()
                .expect("copied lock")
                .contains(&copy.hash);
            return Ok(if ours {
                Copied::PresentOwn
            } else {
                Copied::Present
            });
        }
        let file = temp.join(crate::util::nonce());
        let result = async {
            self.from
                .append_verified(&copy.from, copy.hash, copy.size, &file, &copy.label)
                .await?;
            self.to
                .put_file(&copy.to, &file, 0, copy.size, copy.hash)
                .await
        }
        .await;
        let _ = std::fs::remove_file(&file);
        result?;
        if copy.shared {
            self.copied_hashes
                .lock()
                .expect("copied lock")
                .insert(copy.hash);
        }
        Ok(Copied::Now)
    }
}

/// One object to copy.
struct Copy {
    from: String,
    to: String,
    hash: ContentHash,
    size: u64,
    shared: bool,
    label: String,
}

/// What [`Export::copy_one`] did.
enum Copied {
    /// Downloaded, verified and uploaded by this call.
    Now,
    /// The target root held it before this export.
    Present,
    /// An earlier attempt of this export copied it.
    PresentOwn,
}

/// X1: takes the target job's `next_id` as the savepoint's id and swaps in `next_id + 1`. Creates
/// the job's record if it has none (adopting committed metadata found under `jobs/<job>/`, as a
/// coordinator's claim does), without owner and with an expired lease: a later coordinator
/// claims it normally.
async fn allocate_id(store: &dyn Store, job: &str) -> Result<u64> {
    // The target becomes (or stays) a root: its marker, create-only (docs/protocols.md, "Storage
    // layout").
    crate::checkpoint::gc::mark_root(store).await?;
    for _ in 0..SWAPS {
        let (record, version) = match job::read_job(store, job).await? {
            Some((record, version)) => (record, Some(version)),
            None => (adopted_record(store, job).await?, None),
        };
        let id = record.next_id;
        let mut next = record;
        next.next_id = id + 1;
        next.exporting.push(id);
        next.updated_at_ms = crate::util::now_ms();
        if job::swap_job(store, &next, version.as_ref())
            .await?
            .is_some()
        {
            return Ok(id);
        }
    }
    Err(Error::conflict(format!(
        "job `{job}` in {}: its record kept changing while allocating a savepoint id",
        store.describe()
    )))
}

/// A record for a job that has none: the committed metadata under `jobs/<job>/` (a root written
/// before job records existed), or nothing. Same as a coordinator's claim (O1).
async fn adopted_record(store: &dyn Store, job: &str) -> Result<JobRecord> {
    let mut record = JobRecord::new(job);
    let mut max_id = 0;
    for object in store.list(&layout::job_prefix(job)).await? {
        let Some(parsed) = parse_checkpoint_path(&object.path) else {
            continue;
        };
        if parsed.id >= u64::MAX / 4 {
            continue;
        }
        max_id = max_id.max(parsed.id);
        if parsed.is_metadata() {
            match parsed.kind {
                SnapshotKind::Checkpoint => record.retained.push(parsed.id),
                SnapshotKind::Savepoint => record.savepoints.push(parsed.id),
            }
        }
    }
    record.retained.sort_unstable();
    record.savepoints.sort_unstable();
    record.next_id = max_id + 1;
    record.epoch_first_id = record.next_id;
    Ok(record)
}

/// X6: lists savepoint `id` in the job's record (the commit point). `Ok(false)`: a coordinator
/// claimed the job after X1 (its block starts above `id`), and its startup recovery may be
/// removing this id's records as leftovers: nothing was committed, start over.
async fn commit(store: &dyn Store, job: &str, id: u64) -> Result<bool> {
    for _ in 0..SWAPS {
        let Some((record, version)) = job::read_job(store, job).await? else {
            return Err(Error::not_found(format!(
                "the record of job `{job}` vanished from {} during the export",
                store.describe()
            )));
        };
        if record.savepoints.contains(&id) {
            return Ok(true);
        }
        if record.epoch_first_id > id {
            return Ok(false);
        }
        let mut next = record;
        next.savepoints.push(id);
        next.savepoints.sort_unstable();
        next.exporting.retain(|&e| e != id);
        next.updated_at_ms = crate::util::now_ms();
        if job::swap_job(store, &next, Some(&version)).await?.is_some() {
            return Ok(true);
        }
    }
    Err(Error::conflict(format!(
        "job `{job}` in {}: its record kept changing while committing savepoint {id}",
        store.describe()
    )))
}

/// After an X6 that failed or was not reached: whether savepoint `id` is committed, settled so that
/// it cannot change any more. `Some(false)` only after a swap of the record (a no-op but for its
/// time) succeeded from a version that does not list `id`: an X6 swap still in flight (sent,
/// reported failed, landing later) was conditioned on an older version and can no longer land, so
/// the attempt's records may be removed. `None`: unknown (the record cannot be read or swapped),
/// so nothing written may be removed; GC collects it once the pin expired (the id stays in
/// `exporting`, so it is never taken for the owner's).
async fn settle(store: &dyn Store, job: &str, id: u64) -> Option<bool> {
    update_record(store, job, |record| {
        if record.savepoints.contains(&id) {
            return Some(true);
        }
        record.updated_at_ms = crate::util::now_ms();
        None
    })
    .await
    .map(|listed| listed.unwrap_or(false))
}

/// Drops `id` from the record's `exporting` once nothing of its attempt is left (best effort: an
/// id left there only makes GC treat its leftovers as the export's, which they are).
async fn forget_export(store: &dyn Store, job: &str, id: u64) {
    let forgotten = update_record(store, job, |record| {
        record.exporting.retain(|&e| e != id);
        None::<()>
    })
    .await;
    if forgotten.is_none() {
        tracing::warn!(
            job,
            savepoint = id,
            "an export's id stays listed as exporting"
        );
    }
}

/// Applies `change` to the job's record by compare-and-swap until a swap succeeds (`Some(None)`),
/// or `change` answers without a swap (`Some(Some(answer))`); `None` when the record cannot be
/// read or swapped. A record that is gone takes no swap (`Some(None)`).
async fn update_record<T>(
    store: &dyn Store,
    job: &str,
    change: impl Fn(&mut JobRecord) -> Option<T>,
) -> Option<Option<T>> {
    for _ in 0..SWAPS {
        let (mut record, version) = match job::read_job(store, job).await {
            Ok(Some(found)) => found,
            Ok(None) => return Some(None),
            Err(_) => return None,
        };
        if let Some(answer) = change(&mut record) {
            return Some(Some(answer));
        }
        match job::swap_job(store, &record, Some(&version)).await {
            Ok(Some(_)) => return Some(None),
            Ok(None) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// A private temporary directory for downloads, removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("rockpoint-export-{}", crate::util::nonce()));
        std::fs::create_dir_all(&path).map_err(|e| Error::io("creating", &path, e))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
