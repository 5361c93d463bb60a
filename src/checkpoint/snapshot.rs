//! The task side of a checkpoint: one backend's synchronous phase (record what to copy) and
//! asynchronous phase (link, trim, hash, pin, upload). Steps S1–S6 and A1–A8 of
//! `docs/protocols.md`.
//!
//! Safety: the synchronous phase disables RocksDB file deletions *before* it reads the MANIFEST
//! length, so every file that MANIFEST prefix references survives until it is hard-linked in A1. The
//! pin of A5 is written before any existence check, so no deleter can remove a file this snapshot
//! reuses without seeing the pin first.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};

use super::CheckpointTicket;
use super::logfile::complete_prefix_len;
use super::metadata::{
    self, BackendHandle, LogFile, MAX_SEGMENTS, PinRecord, PrivateFile, SharedFile,
};
use crate::backend::KeyedStateBackend;
use crate::engine::{Engine, STAGING_DIR};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, Segment, hash_file};
use crate::layout::{self, backend_tag, shared_path};
use crate::settings::WalMode;
use crate::state_info::StateInfo;
use crate::store::{Staged, Store, WriteMode};

/// A log file's name and the length recorded in the synchronous phase.
#[derive(Clone, Debug)]
struct RecordedLog {
    name: String,
    len: u64,
}

/// Re-enables RocksDB file deletions when dropped (the calls are a counter: always paired).
struct DeletionGuard {
    backend: Arc<Engine>,
}

impl Drop for DeletionGuard {
    fn drop(&mut self) {
        if let Err(e) = self.backend.db.enable_file_deletions() {
            tracing::error!(error = %e, "re-enabling RocksDB file deletions failed");
        }
    }
}

/// The result of a backend's synchronous phase; [`upload`](PendingSnapshot::upload) runs the
/// asynchronous phase. Dropping it without uploading releases everything it holds.
pub struct PendingSnapshot {
    backend: Arc<Engine>,
    ticket: CheckpointTicket,
    guard: Option<DeletionGuard>,
    manifest: RecordedLog,
    wals: Vec<RecordedLog>,
    ssts: Vec<String>,
    options_file: Option<String>,
    states: Vec<StateInfo>,
    sync_pause: Duration,
}

impl std::fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSnapshot")
            .field("checkpoint_id", &self.ticket.checkpoint_id)
            .field("ssts", &self.ssts.len())
            .field("wals", &self.wals)
            .field("sync_pause", &self.sync_pause)
            .finish()
    }
}

impl KeyedStateBackend {
    /// The synchronous phase of a checkpoint (S1–S6): records which files to copy and how long the
    /// logs are. With the WAL enabled (the default) it copies, links and flushes nothing, so the
    /// operator pauses for a few system calls whatever the state size.
    pub fn snapshot(&self, ticket: &CheckpointTicket) -> Result<PendingSnapshot> {
        let start = Instant::now();
        ticket.check_live()?;
        let inner = &self.inner;
        let db = &inner.db;
        if inner.settings.wal == WalMode::Disabled {
            // S1: unlogged writes live only in memtables.
            self.flush()?;
        }
        // S2
        db.flush_wal(false)
            .map_err(|e| Error::rocksdb("flushing the WAL buffer", e))?;
        let wal_flushed = start.elapsed();
        // S3
        db.disable_file_deletions()
            .map_err(|e| Error::rocksdb("disabling file deletions", e))?;
        let deletions_disabled = start.elapsed();
        let guard = DeletionGuard {
            backend: inner.clone(),
        };
        let db_dir = inner.db_dir();
        // S4
        let current = db_dir.join("CURRENT");
        let manifest_name = std::fs::read_to_string(&current)
            .map_err(|e| Error::io("reading", &current, e))?
            .trim_end()
            .to_owned();
        if !manifest_name.starts_with("MANIFEST-") || manifest_name.contains('/') {
            return Err(Error::corruption(format!(
                "CURRENT names `{manifest_name}`, not a MANIFEST"
            )));
        }
        let manifest_path = db_dir.join(&manifest_name);
        let manifest_len = std::fs::metadata(&manifest_path)
            .map_err(|e| Error::io("inspecting", &manifest_path, e))?
            .len();
        // S5
        let mut ssts = Vec::new();
        let mut wals = Vec::new();
        let mut options_file: Option<(u64, String)> = None;
        for entry in std::fs::read_dir(&db_dir).map_err(|e| Error::io("listing", &db_dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &db_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(number) = name.strip_suffix(".sst") {
                if number.bytes().all(|b| b.is_ascii_digit()) {
                    ssts.push(name);
                }
            } else if let Some(number) = name.strip_suffix(".log") {
                if number.bytes().all(|b| b.is_ascii_digit()) {
                    let len = match entry.metadata() {
                        Ok(meta) => meta.len(),
                        // Purged after listing: an obsolete WAL, not needed.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io("inspecting", entry.path(), e)),
                    };
                    wals.push(RecordedLog { name, len });
                }
            } else if let Some(number) = name.strip_prefix("OPTIONS-")
                && let Ok(n) = number.parse::<u64>()
                && options_file.as_ref().is_none_or(|(m, _)| n > *m)
            {
                options_file = Some((n, name));
            }
        }
        ssts.sort();
        wals.sort_by(|a, b| a.name.cmp(&b.name));
        let states = self.states();
        let sync_pause = start.elapsed();
        if sync_pause > SLOW_SYNC_PHASE {
            // Where a slow pause went, for whoever investigates it (the phase has no size-dependent step).
            tracing::warn!(
                checkpoint = ticket.checkpoint_id(),
                total_us = sync_pause.as_micros() as u64,
                wal_flush_us = wal_flushed.as_micros() as u64,
                disable_deletions_us = (deletions_disabled - wal_flushed).as_micros() as u64,
                listing_us = (sync_pause - deletions_disabled).as_micros() as u64,
                "slow synchronous phase"
            );
        }
        // S6
        Ok(PendingSnapshot {
            backend: inner.clone(),
            ticket: ticket.clone(),
            guard: Some(guard),
            manifest: RecordedLog {
                name: manifest_name,
                len: manifest_len,
            },
            wals,
            ssts,
            options_file: options_file.map(|(_, name)| name),
            states,
            sync_pause,
        })
    }
}

/// A synchronous phase longer than this is logged with its steps' timings (the target is p99 ≤ 1 ms).
const SLOW_SYNC_PHASE: Duration = Duration::from_millis(1);

/// A file to ship: where its bytes are and which hash they must have (and, for a new SST, its
/// bytes already staged in the store by the single read-hash-copy pass).
#[derive(Debug)]
struct Shipment {
    hash: ContentHash,
    size: u64,
    source: PathBuf,
    offset: u64,
    staged: Option<Staged>,
}

/// An SST the MANIFEST prefix references, with its hash if this DB instance hashed it before.
struct LiveSst {
    name: String,
    path: PathBuf,
    size: u64,
    cached: Option<ContentHash>,
}

/// What the blocking part of the asynchronous phase (A1–A4) prepared.
struct Prepared {
    ssts: Vec<LiveSst>,
    log_files: Vec<LogFile>,
    shipments: Vec<Shipment>,
    options: Option<(String, PathBuf, ContentHash, u64)>,
}

impl PendingSnapshot {
    /// How long the synchronous phase blocked the operator.
    pub fn sync_pause(&self) -> Duration {
        self.sync_pause
    }

    /// The checkpoint this snapshot belongs to.
    pub fn checkpoint_id(&self) -> u64 {
        self.ticket.checkpoint_id
    }

    /// The asynchronous phase (A1–A8): hard-links the recorded files, trims the logs to complete
    /// records, hashes, pins, and uploads only what `store` does not already hold.
    pub async fn upload(mut self, store: &dyn Store) -> Result<BackendHandle> {
        let start = Instant::now();
        let tag = backend_tag(self.backend.key_groups);
        let staging = self.backend.dir.join(STAGING_DIR).join(format!(
            "{}-{}-{}",
            self.ticket.job_id,
            self.ticket.kind.dir_prefix(),
            self.ticket.checkpoint_id
        ));
        // A8 (also on failure, and when this future is dropped — a failed sibling upload drops
        // it): staging pins disk space for every SST it links.
        let mut cleanup = StagingCleanup(Some(staging.clone()));
        let result = self.upload_inner(store, &staging, &tag, start).await;
        if let Some(dir) = cleanup.0.take() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        result
    }

    async fn upload_inner(
        &mut self,
        store: &dyn Store,
        staging: &Path,
        tag: &str,
        start: Instant,
    ) -> Result<BackendHandle> {
        let job = self.alone();
        let staging_dir = staging.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || job.prepare(staging_dir))
            .await
            .map_err(|e| Error::invalid(format!("snapshot task failed: {e}")))??;
        // The links now keep every file alive: deletions may resume.
        self.guard = None;
        self.ticket.check_live()?;
        let prepared_at = start.elapsed();

        let ticket = &self.ticket;
        let Prepared {
            ssts,
            log_files,
            mut shipments,
            options,
        } = prepared;
        // A4 for new SSTs: read, hash and stage in one pass, in parallel.
        let parallelism = ticket.upload_parallelism.max(1);
        let work: Vec<(usize, PathBuf, u64)> = ssts
            .iter()
            .enumerate()
            .filter(|(_, sst)| sst.cached.is_none())
            .map(|(i, sst)| (i, sst.path.clone(), sst.size))
            .collect();
        let staged_results: Vec<(usize, Result<Staged>)> = stream::iter(
            work.into_iter()
                .map(|(i, path, size)| async move { (i, store.stage_file(&path, 0, size).await) }),
        )
        .buffer_unordered(parallelism)
        .collect()
        .await;
        let mut staged: HashMap<usize, Staged> = HashMap::new();
        let mut failure = None;
        for (i, result) in staged_results {
            match result {
                Ok(object) => {
                    staged.insert(i, object);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure.or_else(|| ticket.check_live().err()) {
            discard_all(store, staged.into_values()).await;
            return Err(e);
        }
        let mut shared_files = Vec::with_capacity(ssts.len());
        for (i, sst) in ssts.into_iter().enumerate() {
            let (hash, size, staged) = match staged.remove(&i) {
                Some(object) => {
                    self.backend
                        .remember_sst_hash(&sst.name, object.size, object.hash);
                    (object.hash, object.size, Some(object))
                }
                None => (
                    sst.cached.expect("uncached SSTs were staged"),
                    sst.size,
                    None,
                ),
            };
            shared_files.push(SharedFile {
                hash,
                size,
                local_name: sst.name,
            });
            shipments.push(Shipment {
                hash,
                size,
                source: sst.path,
                offset: 0,
                staged,
            });
        }

        // A5: pin every hash before checking what exists.
        let mut hashes: Vec<ContentHash> = shipments.iter().map(|s| s.hash).collect();
        hashes.sort();
        hashes.dedup();
        let pin = PinRecord {
            job_id: ticket.job_id.to_string(),
            checkpoint_id: Some(ticket.checkpoint_id),
            created_at_ms: crate::util::now_ms(),
            hashes,
            owner: metadata::PinOwner::Epoch {
                job: ticket.job_id.to_string(),
                epoch: ticket.epoch,
            },
        };
        let pin_path =
            layout::snapshot_pin_path(&ticket.job_id, ticket.kind, ticket.checkpoint_id, tag);
        let pinned = async {
            crate::failpoint!(ticket.faults, "snapshot::before_pin");
            store
                .put(
                    &pin_path,
                    Bytes::from(metadata::encode_pin(&pin)?),
                    WriteMode::CreateOnly,
                )
                .await?;
            crate::failpoint!(ticket.faults, "snapshot::after_pin");
            Ok::<_, Error>(())
        }
        .await;
        // An abort sets the flag before it lists pins (B1, B2): if it listed before our pin
        // landed, the flag is set now and the pin is ours to remove.
        let pinned = pinned.and_then(|()| ticket.check_live());
        if let Err(e) = pinned {
            if e.kind() == crate::ErrorKind::Cancelled {
                store.delete(&pin_path).await.ok();
            }
            discard_all(store, shipments.into_iter().filter_map(|s| s.staged)).await;
            return Err(e);
        }
        // A6, reuser rule: no GC pass may be about to delete what we reuse. A hash that an
        // intent named is checked against the store even if the ticket knows it.
        let needed: std::collections::HashSet<ContentHash> = pin.hashes.iter().copied().collect();
        let doubtful =
            match super::job::wait_for_intents(store, &needed, &|| ticket.check_live()).await {
                Ok(named) => named,
                Err(e) => {
                    discard_all(store, shipments.into_iter().filter_map(|s| s.staged)).await;
                    return Err(e);
                }
            };

        // A6: upload what the store lacks, with bounded parallelism. Every shipment runs to its
        // end (a cancelled one stops at once), so no staged temporary is left behind.
        let mut unique: HashMap<ContentHash, Shipment> = HashMap::new();
        let mut duplicates = Vec::new();
        for shipment in shipments {
            match unique.entry(shipment.hash) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    duplicates.extend(shipment.staged)
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(shipment);
                }
            }
        }
        discard_all(store, duplicates).await;
        let results: Vec<Result<(bool, u64)>> = stream::iter(
            unique
                .into_values()
                .map(|shipment| ship(store, ticket, &doubtful, shipment)),
        )
        .buffer_unordered(parallelism)
        .collect()
        .await;
        let outcomes: Vec<(bool, u64)> = results.into_iter().collect::<Result<_>>()?;

        let mut handle = BackendHandle {
            key_groups: self.backend.key_groups,
            max_parallelism: self.backend.max_parallelism,
            states: self.states.clone(),
            shared_files,
            log_files,
            private_files: Vec::new(),
            manifest_name: self.manifest.name.clone(),
            uploaded_bytes: 0,
            uploaded_files: 0,
            reused_bytes: 0,
            reused_files: 0,
            sync_pause_us: self.sync_pause.as_micros() as u64,
            async_duration_us: 0,
        };
        for (uploaded, size) in outcomes {
            if uploaded {
                handle.uploaded_bytes += size;
                handle.uploaded_files += 1;
            } else {
                handle.reused_bytes += size;
                handle.reused_files += 1;
            }
        }

        let uploaded_at = start.elapsed();
        // A7: private files.
        if let Some((name, source, hash, size)) = options {
            ticket.check_live()?;
            let path = format!(
                "{}/{tag}/{name}",
                layout::checkpoint_dir(&ticket.job_id, ticket.kind, ticket.checkpoint_id)
            );
            store.put_file(&path, &source, 0, size, hash).await?;
            handle.uploaded_bytes += size;
            handle.uploaded_files += 1;
            handle.private_files.push(PrivateFile {
                path,
                local_name: name,
                hash,
                size,
            });
        }
        handle.async_duration_us = start.elapsed().as_micros() as u64;
        tracing::debug!(
            checkpoint = ticket.checkpoint_id,
            key_groups = %handle.key_groups,
            prepare_us = prepared_at.as_micros() as u64,
            upload_us = (uploaded_at - prepared_at).as_micros() as u64,
            total_us = handle.async_duration_us,
            uploaded_bytes = handle.uploaded_bytes,
            "asynchronous phase done"
        );
        Ok(handle)
    }

    /// The parts of the snapshot the blocking preparation needs (moved to a blocking thread).
    fn alone(&self) -> PrepareJob {
        PrepareJob {
            faults: self.ticket.faults.clone(),
            backend: self.backend.clone(),
            manifest: self.manifest.clone(),
            wals: self.wals.clone(),
            ssts: self.ssts.clone(),
            options_file: self.options_file.clone(),
        }
    }
}

struct PrepareJob {
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    faults: crate::faults::FaultRegistry,
    backend: Arc<Engine>,
    manifest: RecordedLog,
    wals: Vec<RecordedLog>,
    ssts: Vec<String>,
    options_file: Option<String>,
}

impl PrepareJob {
    /// A1–A4 on a blocking thread.
    fn prepare(self, staging: PathBuf) -> Result<Prepared> {
        let db_dir = self.backend.db_dir();
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| Error::io("clearing stale staging directory", &staging, e))?;
        }
        let image = staging.join("image");
        let logs = staging.join("logs");
        for dir in [&image, &logs] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("creating staging directory", dir, e))?;
        }
        // A1: hard links, never copies.
        crate::failpoint_sync!(self.faults, "snapshot::before_link");
        let mut linked_ssts = Vec::new();
        for name in &self.ssts {
            if link(&db_dir.join(name), &image.join(name), Missing::Skip)? {
                linked_ssts.push(name.clone());
            }
        }
        let mut wals = Vec::new();
        for wal in &self.wals {
            if link(
                &db_dir.join(&wal.name),
                &logs.join(&wal.name),
                Missing::Skip,
            )? {
                wals.push(wal.clone());
            }
        }
        link(
            &db_dir.join(&self.manifest.name),
            &logs.join(&self.manifest.name),
            Missing::Fail,
        )?;
        let options = match &self.options_file {
            Some(name) if link(&db_dir.join(name), &staging.join(name), Missing::Skip)? => {
                Some(name.clone())
            }
            _ => None,
        };
        let identity = db_dir.join("IDENTITY");
        if identity.exists() {
            link(&identity, &image.join("IDENTITY"), Missing::Skip)?;
        }

        // A2 + A4 for the logs: trim to complete records, then chain segments.
        let mut shipments = Vec::new();
        let mut log_files = Vec::new();
        let manifest_source = logs.join(&self.manifest.name);
        let (manifest_file, manifest_shipments) =
            self.backend
                .log_chain(&self.manifest.name, &manifest_source, self.manifest.len)?;
        shipments.extend(manifest_shipments);
        let manifest_len = manifest_file.size();
        log_files.push(manifest_file);
        for wal in &wals {
            let (file, wal_shipments) =
                self.backend
                    .log_chain(&wal.name, &logs.join(&wal.name), wal.len)?;
            shipments.extend(wal_shipments);
            log_files.push(file);
        }

        let linked_at = std::time::Instant::now();
        // A3: a read-only open of the image tells exactly which SSTs the MANIFEST prefix references.
        // The same MANIFEST prefix (name and length) of this DB instance references the same SSTs,
        // so an unchanged MANIFEST skips the open.
        let live = match self
            .backend
            .cached_live_ssts(&self.manifest.name, manifest_len)
        {
            Some(live) => live,
            None => {
                copy_prefix(
                    &manifest_source,
                    &image.join(&self.manifest.name),
                    manifest_len,
                )?;
                std::fs::write(image.join("CURRENT"), format!("{}\n", self.manifest.name))
                    .map_err(|e| Error::io("writing", image.join("CURRENT"), e))?;
                let live = referenced_ssts(&image, &staging.join("rocksdb-log"))?;
                self.backend
                    .remember_live_ssts(&self.manifest.name, manifest_len, live.clone());
                live
            }
        };
        let opened = linked_at.elapsed();
        let missing: Vec<&String> = live
            .iter()
            .filter(|name| !linked_ssts.contains(name))
            .collect();
        if !missing.is_empty() {
            return Err(Error::corruption(format!(
                "the MANIFEST prefix references SSTs that were not in the live directory: {missing:?}"
            )));
        }

        // A4 for SSTs: hashes known to this DB instance come from the cache; new SSTs are read,
        // hashed and staged in one pass by the upload.
        crate::failpoint_sync!(self.faults, "snapshot::before_hash");
        let mut ssts = Vec::with_capacity(live.len());
        for name in &live {
            let path = image.join(name);
            let size = std::fs::metadata(&path)
                .map_err(|e| Error::io("inspecting", &path, e))?
                .len();
            let cached = self.backend.cached_sst_hash(name, size);
            ssts.push(LiveSst {
                name: name.clone(),
                path,
                size,
                cached,
            });
        }
        tracing::debug!(
            read_only_open_us = opened.as_micros() as u64,
            "staged image inspected"
        );
        let options = match options {
            Some(name) => {
                let path = staging.join(&name);
                let (hash, size) = hash_file(&path, 0, None)?;
                Some((name, path, hash, size))
            }
            None => None,
        };
        Ok(Prepared {
            ssts,
            log_files,
            shipments,
            options,
        })
    }
}

/// Removes a staging directory when the upload that owns it ends in any way.
struct StagingCleanup(Option<PathBuf>);

impl Drop for StagingCleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A6 for one shipment: reuse it if the job's committed checkpoints or the store already hold it,
/// else publish it (a staged copy) or upload it. A staged copy not published is discarded.
async fn ship(
    store: &dyn Store,
    ticket: &CheckpointTicket,
    doubtful: &std::collections::HashSet<ContentHash>,
    shipment: Shipment,
) -> Result<(bool, u64)> {
    let Shipment {
        hash,
        size,
        source,
        offset,
        staged,
    } = shipment;
    let path = shared_path(&hash);
    let needed = async {
        ticket.check_live()?;
        if ticket.known.contains(&hash) && !doubtful.contains(&hash) {
            return Ok(false);
        }
        match store.head(&path).await? {
            Some(info) if info.size == size => Ok(false),
            Some(info) => {
                tracing::warn!(
                    path,
                    expected = size,
                    found = info.size,
                    "shared file has the wrong size; replacing it"
                );
                Ok(true)
            }
            None => Ok(true),
        }
    }
    .await;
    let needed = match needed {
        Ok(true) => match before_upload(ticket).await {
            Ok(()) => true,
            Err(e) => {
                discard_all(store, staged).await;
                return Err(e);
            }
        },
        Ok(false) => false,
        Err(e) => {
            discard_all(store, staged).await;
            return Err(e);
        }
    };
    if !needed {
        discard_all(store, staged).await;
        return Ok((false, size));
    }
    match staged {
        Some(object) => store.publish_staged(object, &path).await?,
        None => store.put_file(&path, &source, offset, size, hash).await?,
    }
    after_upload(ticket).await?;
    Ok((true, size))
}

async fn before_upload(ticket: &CheckpointTicket) -> Result<()> {
    let _ = ticket;
    crate::failpoint!(ticket.faults, "snapshot::before_upload");
    Ok(())
}

async fn after_upload(ticket: &CheckpointTicket) -> Result<()> {
    let _ = ticket;
    crate::failpoint!(ticket.faults, "snapshot::after_upload");
    Ok(())
}

/// Removes staged copies that will not be published (best effort: GC sweeps what remains).
async fn discard_all(store: &dyn Store, staged: impl IntoIterator<Item = Staged>) {
    for object in staged {
        if let Err(e) = store.discard_staged(object).await {
            tracing::warn!(error = %e, "removing a staged copy failed; GC will sweep it");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Missing {
    Skip,
    Fail,
}

/// Hard-links `from` to `to` and checks that it really is a link. Returns false if `from` vanished
/// and `missing` allows that (an obsolete file purged just before deletions were disabled).
fn link(from: &Path, to: &Path, missing: Missing) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing == Missing::Skip => {
            return Ok(false);
        }
        Err(e) if e.raw_os_error() == Some(18) => {
            return Err(Error::invalid(format!(
                "cannot hard-link {} into the staging directory: it is on another filesystem (EXDEV); \
                 the backend directory must be one filesystem",
                from.display()
            )));
        }
        Err(e) => return Err(Error::io("hard-linking into staging", from, e)),
    }
    let links = std::fs::metadata(to)
        .map_err(|e| Error::io("inspecting", to, e))?
        .nlink();
    if links < 2 && from.exists() {
        return Err(Error::invalid(format!(
            "{} has link count {links} after linking: the filesystem copied instead of linking",
            to.display()
        )));
    }
    Ok(true)
}

fn copy_prefix(from: &Path, to: &Path, len: u64) -> Result<()> {
    let mut input = std::fs::File::open(from).map_err(|e| Error::io("opening", from, e))?;
    let mut output = std::fs::File::create(to).map_err(|e| Error::io("creating", to, e))?;
    let copied = std::io::copy(&mut (&mut input).take(len), &mut output)
        .map_err(|e| Error::io("copying", from, e))?;
    if copied != len {
        return Err(Error::corruption(format!(
            "{} is shorter ({copied} bytes) than the {len} bytes recorded",
            from.display()
        )));
    }
    output.flush().map_err(|e| Error::io("writing", to, e))
}

/// Opens the image read-only and lists the SSTs its MANIFEST references.
fn referenced_ssts(image: &Path, log_dir: &Path) -> Result<Vec<String>> {
    let mut opts = rocksdb::Options::default();
    opts.set_db_log_dir(log_dir);
    opts.set_max_open_files(16);
    // Table properties feed statistics only; reading them for every SST is wasted here.
    opts.set_skip_stats_update_on_db_open(true);
    let names = rocksdb::DB::list_cf(&opts, image)
        .map_err(|e| Error::rocksdb("listing column families of the staged image", e))?;
    let db = rocksdb::DB::open_cf_for_read_only(&opts, image, &names, false)
        .map_err(|e| Error::rocksdb("opening the staged image read-only", e))?;
    let live = db
        .live_files()
        .map_err(|e| Error::rocksdb("listing live files of the staged image", e))?;
    let mut out: Vec<String> = live
        .into_iter()
        .map(|f| f.name.trim_start_matches('/').to_owned())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

impl Engine {
    /// The SSTs a MANIFEST prefix of this DB instance was found to reference, if it was inspected.
    fn cached_live_ssts(&self, manifest: &str, len: u64) -> Option<Vec<String>> {
        match &*self.live_ssts() {
            Some((name, cached_len, live)) if name == manifest && *cached_len == len => {
                Some(live.clone())
            }
            _ => None,
        }
    }

    fn remember_live_ssts(&self, manifest: &str, len: u64, live: Vec<String>) {
        *self.live_ssts() = Some((manifest.to_owned(), len, live));
    }

    /// Remembers an SST's hash for later snapshots of this DB instance.
    fn remember_sst_hash(&self, name: &str, size: u64, hash: ContentHash) {
        self.hash_cache().insert(name.to_owned(), (size, hash));
    }

    /// The content hash of an SST this DB instance hashed before (same name and size), if any.
    fn cached_sst_hash(&self, name: &str, size: u64) -> Option<ContentHash> {
        self.hash_cache()
            .get(name)
            .filter(|(cached_size, _)| *cached_size == size)
            .map(|(_, hash)| *hash)
    }

    /// The segments of a log file up to its last complete record at or before `recorded_len`,
    /// reusing the chain of earlier snapshots of this DB instance (a log is append-only, so an
    /// earlier prefix is still a prefix). Returns the file and the segments that are new.
    fn log_chain(
        &self,
        name: &str,
        source: &Path,
        recorded_len: u64,
    ) -> Result<(LogFile, Vec<Shipment>)> {
        let chain: Vec<(u64, Segment)> = self.log_chains().get(name).cloned().unwrap_or_default();
        // The longest prefix of the chain that ends within what was recorded.
        let mut kept: Vec<(u64, Segment)> = chain
            .into_iter()
            .take_while(|(offset, segment)| offset + segment.size <= recorded_len)
            .collect();
        if kept.len() >= MAX_SEGMENTS {
            kept.clear();
        }
        let covered = kept
            .last()
            .map_or(0, |(offset, segment)| offset + segment.size);
        let end = complete_prefix_len(source, covered, recorded_len)
            .map_err(|e| Error::io("scanning log records of", source, e))?;
        let mut shipments = Vec::new();
        if end > covered {
            let (hash, size) = hash_file(source, covered, Some(end - covered))?;
            kept.push((covered, Segment { hash, size }));
            shipments.push(Shipment {
                hash,
                size,
                source: source.to_path_buf(),
                offset: covered,
                staged: None,
            });
        }
        // Existing segments are shipped (or found) again like any shared file: they may belong to a
        // snapshot that was aborted and cleaned up.
        for (offset, segment) in &kept[..kept.len() - shipments.len()] {
            shipments.push(Shipment {
                hash: segment.hash,
                size: segment.size,
                source: source.to_path_buf(),
                offset: *offset,
                staged: None,
            });
        }
        {
            let mut chains = self.log_chains();
            let longer = chains
                .get(name)
                .is_none_or(|existing| existing.last().map_or(0, |(o, s)| o + s.size) <= end);
            if longer {
                chains.insert(name.to_owned(), kept.clone());
            }
        }
        let file = LogFile {
            local_name: name.to_owned(),
            segments: kept.into_iter().map(|(_, segment)| segment).collect(),
        };
        Ok((file, shipments))
    }
}
