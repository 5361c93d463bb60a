//! The coordinator side of a job's checkpoints: ids, commit, retention and subsumption, abort,
//! cancellation and job end, startup recovery. Steps C, D, B, O and E of `docs/protocols.md`.
//!
//! Safety: the coordinator deletes a shared file only after removing the commit record that held it
//! (or establishing there is none) and then listing every metadata and pin record in the root; it
//! never trusts a count it kept in memory. One coordinator per job runs at a time.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::try_join_all;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::metadata::{
    self, BackendHandle, CheckpointMetadata, SnapshotKind, checkpoint_dir, metadata_path,
    parse_checkpoint_path, shared_path, snapshot_pin_prefix,
};
use super::refs::{RefIndex, load_pins};
use super::{CheckpointTicket, TicketState};
use crate::backend::KeyedStateBackend;
use crate::error::{Error, Result};
use crate::faults::FaultRegistry;
use crate::store::{ContentHash, Store, WriteMode};

/// What happens to a job's retained checkpoints when it is cancelled (Flink's
/// `ExternalizedCheckpointCleanup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancellationPolicy {
    /// Keep the retained checkpoints restorable after a cancel.
    RetainOnCancellation,
    /// Discard the job's checkpoints on cancel (shared files others reference survive).
    DeleteOnCancellation,
}

/// How a job ended, for [`CheckpointCoordinator::shutdown`] (Flink semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEnd {
    /// The job completed its input: its checkpoints are discarded.
    Finished,
    /// The user cancelled it: the [`CancellationPolicy`] decides.
    Cancelled,
    /// It failed terminally: retained checkpoints are kept for a later resume.
    Failed,
    /// It was suspended (e.g. the process is shutting down for failover): everything is kept.
    Suspended,
}

/// Settings of a job's checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointSettings {
    /// Completed checkpoints kept; older ones are subsumed and discarded. Default: 1.
    pub retained: usize,
    /// Checkpoints in flight at once; triggering more fails with `Unavailable`. Default: 1.
    pub max_concurrent: usize,
    /// What a cancel does with retained checkpoints. Default: `RetainOnCancellation`.
    pub cancellation: CancellationPolicy,
    /// Files uploaded (or downloaded on restore) at once per backend. Default: 4.
    pub transfer_parallelism: usize,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            retained: 1,
            max_concurrent: 1,
            cancellation: CancellationPolicy::RetainOnCancellation,
            transfer_parallelism: 4,
        }
    }
}

impl CheckpointSettings {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.retained == 0 || self.retained > 10_000 {
            return Err(Error::invalid(
                "checkpoint settings: retained must be in 1..=10000",
            ));
        }
        if self.max_concurrent == 0 || self.max_concurrent > 64 {
            return Err(Error::invalid(
                "checkpoint settings: max_concurrent must be in 1..=64",
            ));
        }
        if self.transfer_parallelism == 0 || self.transfer_parallelism > 256 {
            return Err(Error::invalid(
                "checkpoint settings: transfer_parallelism must be in 1..=256",
            ));
        }
        Ok(())
    }
}

/// A committed checkpoint or savepoint, with what it cost.
#[derive(Clone, Debug)]
pub struct CompletedCheckpoint {
    /// Its commit record.
    pub metadata: Arc<CheckpointMetadata>,
    /// The longest synchronous pause among its backends.
    pub sync_pause: Duration,
    /// From trigger to the commit point (its metadata durable): the checkpoint's latency.
    pub duration: Duration,
    /// After the commit point: removing its pins and discarding the checkpoints it subsumed.
    pub cleanup: Duration,
}

impl CompletedCheckpoint {
    /// The object path of its metadata (what a restore takes).
    pub fn path(&self) -> String {
        self.metadata.metadata_path()
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.metadata.checkpoint_id
    }

    /// Bytes uploaded for it.
    pub fn uploaded_bytes(&self) -> u64 {
        self.metadata
            .backends
            .iter()
            .map(|b| b.uploaded_bytes)
            .sum()
    }

    /// Bytes of shared files and segments it reused.
    pub fn reused_bytes(&self) -> u64 {
        self.metadata.backends.iter().map(|b| b.reused_bytes).sum()
    }
}

/// Latency distributions of the checkpoints of one coordinator.
#[derive(Clone, Debug)]
pub struct CheckpointMetrics {
    /// Synchronous pause per backend snapshot, in microseconds.
    pub sync_pause_us: Histogram<u64>,
    /// Trigger-to-commit-point time per checkpoint, in microseconds.
    pub checkpoint_duration_us: Histogram<u64>,
    /// Bytes uploaded per checkpoint.
    pub uploaded_bytes: Histogram<u64>,
    /// Checkpoints completed.
    pub completed: u64,
    /// Checkpoints aborted.
    pub aborted: u64,
}

impl Default for CheckpointMetrics {
    fn default() -> Self {
        // Bounded, so that recording never resizes or clamps: up to a day in µs, up to 1 PiB.
        let histogram = || Histogram::new_with_bounds(1, 1 << 50, 3).expect("valid bounds");
        CheckpointMetrics {
            sync_pause_us: histogram(),
            checkpoint_duration_us: histogram(),
            uploaded_bytes: histogram(),
            completed: 0,
            aborted: 0,
        }
    }
}

struct PendingEntry {
    state: Arc<TicketState>,
    kind: SnapshotKind,
    /// Driven by `checkpoint()`/`savepoint()`, which clean up themselves when aborted.
    driven: bool,
    committing: bool,
    triggered: Instant,
}

struct CoordState {
    next_id: u64,
    /// Oldest first.
    retained: VecDeque<Arc<CheckpointMetadata>>,
    savepoints: Vec<Arc<CheckpointMetadata>>,
    pending: BTreeMap<u64, PendingEntry>,
    restore_pins: Vec<String>,
    restored_hashes: HashSet<ContentHash>,
    closed: bool,
}

pub(crate) struct CoordInner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) job_id: String,
    pub(crate) settings: CheckpointSettings,
    pub(crate) faults: FaultRegistry,
    pub(crate) refs: RefIndex,
    state: Mutex<CoordState>,
    metrics: Mutex<CheckpointMetrics>,
    pending_changed: tokio::sync::Notify,
}

/// Coordinates the checkpoints of one job over a [`Store`].
#[derive(Clone)]
pub struct CheckpointCoordinator {
    pub(crate) inner: Arc<CoordInner>,
}

impl std::fmt::Debug for CheckpointCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointCoordinator")
            .field("job_id", &self.inner.job_id)
            .field("store", &self.inner.store)
            .finish()
    }
}

/// Builds a [`CheckpointCoordinator`]; components (store, fault registry) are injected here.
pub struct CoordinatorBuilder {
    store: Arc<dyn Store>,
    job_id: String,
    settings: CheckpointSettings,
    faults: FaultRegistry,
}

impl CoordinatorBuilder {
    /// Checkpoint settings (default: [`CheckpointSettings::default`]).
    pub fn settings(mut self, settings: CheckpointSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Fault points to consult (tests; effective with the `failpoints` feature).
    pub fn faults(mut self, faults: FaultRegistry) -> Self {
        self.faults = faults;
        self
    }

    /// Opens the coordinator and runs startup recovery (O1–O4).
    pub async fn open(self) -> Result<CheckpointCoordinator> {
        metadata::validate_job_id(&self.job_id)?;
        self.settings.validate()?;
        let coordinator = CheckpointCoordinator {
            inner: Arc::new(CoordInner {
                store: self.store,
                job_id: self.job_id,
                settings: self.settings,
                faults: self.faults,
                refs: RefIndex::default(),
                state: Mutex::new(CoordState {
                    next_id: 1,
                    retained: VecDeque::new(),
                    savepoints: Vec::new(),
                    pending: BTreeMap::new(),
                    restore_pins: Vec::new(),
                    restored_hashes: HashSet::new(),
                    closed: false,
                }),
                metrics: Mutex::new(CheckpointMetrics::default()),
                pending_changed: tokio::sync::Notify::new(),
            }),
        };
        coordinator.recover().await?;
        Ok(coordinator)
    }
}

impl CheckpointCoordinator {
    /// A builder for the coordinator of `job_id` over `store`.
    pub fn builder(store: Arc<dyn Store>, job_id: &str) -> CoordinatorBuilder {
        CoordinatorBuilder {
            store,
            job_id: job_id.to_owned(),
            settings: CheckpointSettings::default(),
            faults: FaultRegistry::default(),
        }
    }

    /// Opens the coordinator of `job_id` with `settings` (see [`builder`](Self::builder)).
    pub async fn open(
        store: Arc<dyn Store>,
        job_id: &str,
        settings: CheckpointSettings,
    ) -> Result<Self> {
        Self::builder(store, job_id).settings(settings).open().await
    }

    /// The job's id.
    pub fn job_id(&self) -> &str {
        &self.inner.job_id
    }

    /// The store the job checkpoints to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The retained checkpoints, oldest first.
    pub fn retained(&self) -> Vec<Arc<CheckpointMetadata>> {
        self.lock().retained.iter().cloned().collect()
    }

    /// The job's savepoints.
    pub fn savepoints(&self) -> Vec<Arc<CheckpointMetadata>> {
        self.lock().savepoints.clone()
    }

    /// The newest retained checkpoint.
    pub fn latest(&self) -> Option<Arc<CheckpointMetadata>> {
        self.lock().retained.back().cloned()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun (no checkpoint can be triggered any more).
    pub fn is_shut_down(&self) -> bool {
        self.lock().closed
    }

    /// A copy of the latency histograms and counters.
    pub fn metrics(&self) -> CheckpointMetrics {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CoordState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn st(&self) -> &dyn Store {
        &*self.inner.store
    }

    /// Starts a checkpoint or savepoint: allocates its id and hands out the ticket that every
    /// backend's [`snapshot`](KeyedStateBackend::snapshot) takes.
    pub fn trigger(&self, kind: SnapshotKind) -> Result<CheckpointTicket> {
        self.trigger_inner(kind, false)
    }

    fn trigger_inner(&self, kind: SnapshotKind, driven: bool) -> Result<CheckpointTicket> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::cancelled(format!(
                "job `{}` is shut down",
                self.inner.job_id
            )));
        }
        if state.pending.len() >= self.inner.settings.max_concurrent {
            return Err(crate::error::ErrorDetail::Io {
                context: "triggering a checkpoint",
                path: format!("job {}", self.inner.job_id).into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!(
                        "{} checkpoints already in flight (max_concurrent)",
                        state.pending.len()
                    ),
                ),
            }
            .into());
        }
        let id = state.next_id;
        state.next_id += 1;
        let mut known: HashSet<ContentHash> = state.restored_hashes.clone();
        for committed in state.retained.iter().chain(state.savepoints.iter()) {
            known.extend(committed.shared_hashes());
        }
        let ticket_state = Arc::new(TicketState {
            cancelled: AtomicBool::new(false),
        });
        state.pending.insert(
            id,
            PendingEntry {
                state: ticket_state.clone(),
                kind,
                driven,
                committing: false,
                triggered: Instant::now(),
            },
        );
        Ok(CheckpointTicket {
            job_id: self.inner.job_id.as_str().into(),
            checkpoint_id: id,
            kind,
            known: Arc::new(known),
            state: ticket_state,
            upload_parallelism: self.inner.settings.transfer_parallelism,
            faults: self.inner.faults.clone(),
        })
    }

    /// Takes a checkpoint of `backends` (the job's backends, disjoint key-group ranges): every
    /// synchronous phase first, then the uploads concurrently, then the commit. On failure the
    /// checkpoint is aborted and its uploads cleaned up.
    pub async fn checkpoint(&self, backends: &[&KeyedStateBackend]) -> Result<CompletedCheckpoint> {
        self.snapshot_and_complete(SnapshotKind::Checkpoint, backends)
            .await
    }

    /// Takes a savepoint: like a checkpoint, but never counted in retention or discarded.
    pub async fn savepoint(&self, backends: &[&KeyedStateBackend]) -> Result<CompletedCheckpoint> {
        self.snapshot_and_complete(SnapshotKind::Savepoint, backends)
            .await
    }

    async fn snapshot_and_complete(
        &self,
        kind: SnapshotKind,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        let ticket = self.trigger_inner(kind, true)?;
        let result = self.drive(&ticket, backends).await;
        match result {
            Ok(done) => Ok(done),
            Err(e) => {
                if let Err(cleanup) = self.abort(&ticket).await {
                    tracing::warn!(error = %cleanup, "cleanup after a failed checkpoint failed; GC will finish it");
                }
                Err(e)
            }
        }
    }

    async fn drive(
        &self,
        ticket: &CheckpointTicket,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        if backends.is_empty() {
            return Err(Error::invalid("a checkpoint needs at least one backend"));
        }
        let mut pending = Vec::with_capacity(backends.len());
        for backend in backends {
            pending.push(backend.snapshot(ticket)?);
        }
        let store = self.st();
        let handles = try_join_all(pending.into_iter().map(|p| p.upload(store))).await?;
        self.complete(ticket, handles).await
    }

    /// Commits a checkpoint from its backends' handles (C1–C6) and applies retention.
    pub async fn complete(
        &self,
        ticket: &CheckpointTicket,
        handles: Vec<BackendHandle>,
    ) -> Result<CompletedCheckpoint> {
        let id = ticket.checkpoint_id;
        // C1
        let triggered = {
            let mut state = self.lock();
            let entry = state.pending.get_mut(&id).filter(|e| e.kind == ticket.kind);
            match entry {
                Some(entry)
                    if !entry.state.cancelled.load(Ordering::SeqCst) && !entry.committing =>
                {
                    entry.committing = true;
                    entry.triggered
                }
                _ => {
                    drop(state);
                    return Err(Error::cancelled(format!(
                        "checkpoint {id} of job `{}` was aborted or subsumed before it completed",
                        self.inner.job_id
                    )));
                }
            }
        };
        let result = self.commit(ticket, handles, triggered).await;
        self.remove_pending(id);
        result
    }

    async fn commit(
        &self,
        ticket: &CheckpointTicket,
        handles: Vec<BackendHandle>,
        triggered: Instant,
    ) -> Result<CompletedCheckpoint> {
        let id = ticket.checkpoint_id;
        let max_parallelism = handles
            .first()
            .map(|h| h.max_parallelism)
            .ok_or_else(|| Error::invalid("a checkpoint needs at least one backend handle"))?;
        // C2
        let metadata = CheckpointMetadata {
            job_id: self.inner.job_id.clone(),
            checkpoint_id: id,
            kind: ticket.kind,
            created_at_ms: crate::util::now_ms(),
            max_parallelism,
            checkpointed_size_bytes: handles.iter().map(|h| h.uploaded_bytes).sum(),
            full_size_bytes: handles.iter().map(BackendHandle::full_size_bytes).sum(),
            backends: handles,
        };
        let bytes = metadata::encode_metadata(&metadata)
            .map_err(|e| Error::invalid(format!("checkpoint {id}: {e}")))?;
        let path = metadata.metadata_path();
        crate::failpoint!(self.inner.faults, "commit::before_metadata");
        // C3: the commit point.
        if let Err(e) = self
            .st()
            .put(&path, Bytes::from(bytes), WriteMode::CreateOnly)
            .await
        {
            // The outcome may be ambiguous (written, but reported failed): ask the store.
            match self.st().head(&path).await {
                Ok(Some(_)) => {
                    tracing::warn!(path, error = %e, "metadata write reported failure but the record exists; treating as committed")
                }
                Ok(None) => {
                    self.abort_by_id(ticket.kind, id).await.ok();
                    return Err(e);
                }
                Err(probe) => {
                    // Unknown outcome: delete nothing. Startup recovery or GC resolves it later.
                    tracing::error!(path, error = %e, probe = %probe, "commit outcome unknown; leaving files in place");
                    return Err(e);
                }
            }
        }
        let committed_after = triggered.elapsed();
        crate::failpoint!(self.inner.faults, "commit::after_metadata");
        let metadata = Arc::new(metadata);
        // C5, C6 (in memory first: from here on the checkpoint is complete whatever fails next).
        let (subsumed_pending, discard, restore_pins) = {
            let mut state = self.lock();
            let mut subsumed = Vec::new();
            let mut discard = Vec::new();
            let mut restore_pins = Vec::new();
            match ticket.kind {
                SnapshotKind::Savepoint => state.savepoints.push(metadata.clone()),
                SnapshotKind::Checkpoint => {
                    state.retained.push_back(metadata.clone());
                    restore_pins = std::mem::take(&mut state.restore_pins);
                    state.restored_hashes.clear();
                    for (pending_id, entry) in state.pending.iter() {
                        if *pending_id < id
                            && entry.kind == SnapshotKind::Checkpoint
                            && !entry.committing
                        {
                            entry.state.cancelled.store(true, Ordering::SeqCst);
                            subsumed.push(*pending_id);
                        }
                    }
                    while state.retained.len() > self.inner.settings.retained {
                        discard.extend(state.retained.pop_front());
                    }
                }
            }
            (subsumed, discard, restore_pins)
        };
        // C4: the metadata now holds the references. A pin left behind by a failure here only delays
        // deletions until startup recovery or GC removes it.
        if let Err(e) = self
            .delete_pins(&snapshot_pin_prefix(&self.inner.job_id, ticket.kind, id))
            .await
        {
            tracing::warn!(checkpoint = id, error = %e, "removing pins of a committed checkpoint failed");
        }
        for pin in restore_pins {
            if let Err(e) = self.st().delete(&pin).await {
                tracing::warn!(pin, error = %e, "removing a restore pin failed");
            }
        }
        for pending_id in subsumed_pending {
            tracing::info!(
                checkpoint = pending_id,
                by = id,
                "pending checkpoint subsumed"
            );
        }
        for old in discard {
            crate::failpoint!(self.inner.faults, "subsume::before_discard");
            // A failed discard leaves orphans for GC, never a dangling reference (D1 goes first).
            if let Err(e) = self.discard(&old).await {
                tracing::warn!(checkpoint = old.checkpoint_id, error = %e, "discarding a subsumed checkpoint failed");
                if e.kind() == crate::ErrorKind::Poisoned {
                    return Err(e);
                }
            }
        }
        let done = CompletedCheckpoint {
            sync_pause: Duration::from_micros(
                metadata
                    .backends
                    .iter()
                    .map(|b| b.sync_pause_us)
                    .max()
                    .unwrap_or(0),
            ),
            duration: committed_after,
            cleanup: triggered.elapsed() - committed_after,
            metadata,
        };
        tracing::debug!(
            checkpoint = id,
            committed_us = done.duration.as_micros() as u64,
            cleanup_us = done.cleanup.as_micros() as u64,
            "checkpoint committed"
        );
        {
            let mut metrics = self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner());
            for backend in &done.metadata.backends {
                metrics
                    .sync_pause_us
                    .saturating_record(backend.sync_pause_us);
            }
            metrics
                .checkpoint_duration_us
                .saturating_record(done.duration.as_micros() as u64);
            metrics
                .uploaded_bytes
                .saturating_record(done.uploaded_bytes());
            metrics.completed += 1;
        }
        Ok(done)
    }

    fn remove_pending(&self, id: u64) {
        self.lock().pending.remove(&id);
        self.inner.pending_changed.notify_waiters();
    }

    /// Aborts an in-flight checkpoint (B1–B4): its uploads stop, nothing of it is committed, and the
    /// files only it referenced are deleted.
    pub async fn abort(&self, ticket: &CheckpointTicket) -> Result<()> {
        ticket.state.cancelled.store(true, Ordering::SeqCst);
        let committing = self
            .lock()
            .pending
            .get(&ticket.checkpoint_id)
            .is_some_and(|e| e.committing);
        if committing {
            return Ok(());
        }
        let result = self.abort_by_id(ticket.kind, ticket.checkpoint_id).await;
        self.remove_pending(ticket.checkpoint_id);
        result
    }

    /// B2–B4 for checkpoint `id`, from what the store holds (also used by startup recovery).
    async fn abort_by_id(&self, kind: SnapshotKind, id: u64) -> Result<()> {
        let job = &self.inner.job_id;
        {
            let mut metrics = self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner());
            metrics.aborted += 1;
        }
        // A commit record means it is not in flight: only its pins are left to remove.
        if self
            .st()
            .head(&metadata_path(job, kind, id))
            .await?
            .is_some()
        {
            return self.delete_pins(&snapshot_pin_prefix(job, kind, id)).await;
        }
        // B2
        let pins = load_pins(self.st(), &snapshot_pin_prefix(job, kind, id)).await?;
        for private in self
            .st()
            .list(&format!("{}/", checkpoint_dir(job, kind, id)))
            .await?
        {
            self.st().delete(&private.path).await?;
        }
        // B3: the pins go first, so that from here on nothing in the root lists what only this
        // checkpoint used (a crash now leaves orphans for GC, never a dangling reference).
        let pin_paths: HashSet<String> = pins.iter().map(|p| p.path.clone()).collect();
        for pin in &pin_paths {
            self.st().delete(pin).await?;
        }
        crate::failpoint!(self.inner.faults, "abort::before_shared_delete");
        // B4
        let refs = self.inner.refs.load(self.st(), &HashSet::new()).await?;
        let candidates: HashSet<ContentHash> = pins
            .iter()
            .flat_map(|p| p.record.hashes.iter().copied())
            .collect();
        for hash in candidates {
            if !refs.is_referenced(&hash) {
                self.st().delete(&shared_path(&hash)).await?;
            }
        }
        Ok(())
    }

    /// D1–D4: discards a committed checkpoint.
    pub(crate) async fn discard(&self, metadata: &CheckpointMetadata) -> Result<()> {
        // D1: the commit point of the discard.
        self.st().delete(&metadata.metadata_path()).await?;
        crate::failpoint!(self.inner.faults, "discard::after_metadata");
        // D2
        let refs = self.inner.refs.load(self.st(), &HashSet::new()).await?;
        // D3
        let hashes: HashSet<ContentHash> = metadata.shared_hashes().collect();
        for hash in hashes {
            if !refs.is_referenced(&hash) {
                self.st().delete(&shared_path(&hash)).await?;
            }
        }
        // D4
        for backend in &metadata.backends {
            for private in &backend.private_files {
                self.st().delete(&private.path).await?;
            }
        }
        let dir = checkpoint_dir(&metadata.job_id, metadata.kind, metadata.checkpoint_id);
        for leftover in self.st().list(&format!("{dir}/")).await? {
            self.st().delete(&leftover.path).await?;
        }
        Ok(())
    }

    async fn delete_pins(&self, prefix: &str) -> Result<()> {
        for pin in self.st().list(prefix).await? {
            self.st().delete(&pin.path).await?;
        }
        Ok(())
    }

    /// O1–O4: rebuilds the job's state from the store and finishes what a crash interrupted.
    async fn recover(&self) -> Result<()> {
        let job = self.inner.job_id.clone();
        // O1
        let listed = self.st().list(&format!("jobs/{job}/")).await?;
        let pins = self.st().list(&format!("pins/{job}/")).await?;
        let mut committed: BTreeMap<(SnapshotKind, u64), String> = BTreeMap::new();
        let mut seen: BTreeMap<u64, SnapshotKind> = BTreeMap::new();
        for object in &listed {
            if let Some((_, kind, id, rest)) = parse_checkpoint_path(&object.path) {
                seen.insert(id, kind);
                if rest == "_metadata" {
                    committed.insert((kind, id), object.path.clone());
                }
            }
        }
        let mut restore_pins = Vec::new();
        for pin in &pins {
            let name = pin.path.rsplit('/').next().unwrap_or_default();
            let parsed = name
                .split_once('-')
                .and_then(|(prefix, rest)| Some((prefix, rest.get(..20)?.parse::<u64>().ok()?)));
            match parsed {
                Some(("chk", id)) => {
                    seen.entry(id).or_insert(SnapshotKind::Checkpoint);
                }
                Some(("sp", id)) => {
                    seen.entry(id).or_insert(SnapshotKind::Savepoint);
                }
                _ => restore_pins.push(pin.path.clone()),
            }
        }
        // O2
        let next_id = seen.keys().next_back().map_or(1, |max| max + 1);
        self.lock().next_id = next_id;
        // O3
        for (&id, &kind) in &seen {
            if !committed.contains_key(&(kind, id)) {
                tracing::info!(
                    job,
                    checkpoint = id,
                    "aborting a checkpoint interrupted by a crash"
                );
                self.abort_by_id(kind, id).await?;
            } else {
                self.delete_pins(&snapshot_pin_prefix(&job, kind, id))
                    .await?;
            }
        }
        for pin in restore_pins {
            self.st().delete(&pin).await?;
        }
        // O4
        let mut retained = VecDeque::new();
        let mut savepoints = Vec::new();
        for ((kind, _), path) in &committed {
            let metadata = self.inner.refs.metadata(self.st(), path).await?;
            match kind {
                SnapshotKind::Checkpoint => retained.push_back(metadata),
                SnapshotKind::Savepoint => savepoints.push(metadata),
            }
        }
        let mut discard = Vec::new();
        while retained.len() > self.inner.settings.retained {
            discard.extend(retained.pop_front());
        }
        {
            let mut state = self.lock();
            state.retained = retained;
            state.savepoints = savepoints;
        }
        for old in discard {
            self.discard(&old).await?;
        }
        Ok(())
    }

    /// Ends the job (E1–E3): aborts in-flight checkpoints, then keeps or discards the retained
    /// checkpoints according to `end` and the cancellation policy. Savepoints are always kept.
    pub async fn shutdown(&self, end: JobEnd) -> Result<()> {
        // E1
        let manual: Vec<(SnapshotKind, u64)> = {
            let mut state = self.lock();
            state.closed = true;
            let mut manual = Vec::new();
            for (id, entry) in state.pending.iter() {
                entry.state.cancelled.store(true, Ordering::SeqCst);
                if !entry.driven && !entry.committing {
                    manual.push((entry.kind, *id));
                }
            }
            for (_, id) in &manual {
                state.pending.remove(id);
            }
            manual
        };
        for (kind, id) in manual {
            self.abort_by_id(kind, id).await?;
        }
        loop {
            let notified = self.inner.pending_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().pending.is_empty() {
                break;
            }
            notified.await;
        }
        // E2
        let discard_all = match end {
            JobEnd::Finished => true,
            JobEnd::Cancelled => {
                self.inner.settings.cancellation == CancellationPolicy::DeleteOnCancellation
            }
            JobEnd::Failed | JobEnd::Suspended => false,
        };
        if discard_all {
            loop {
                let oldest = self.lock().retained.pop_front();
                match oldest {
                    Some(old) => self.discard(&old).await?,
                    None => break,
                }
            }
        }
        // E3
        let restore_pins = std::mem::take(&mut self.lock().restore_pins);
        for pin in restore_pins {
            self.st().delete(&pin).await?;
        }
        Ok(())
    }

    /// Records a restore pin and the hashes it protects (R4, without claim).
    pub(crate) fn add_restore_pin(
        &self,
        path: String,
        hashes: impl IntoIterator<Item = ContentHash>,
    ) {
        let mut state = self.lock();
        state.restore_pins.push(path);
        state.restored_hashes.extend(hashes);
    }

    /// Allocates a checkpoint id (R4, with claim).
    pub(crate) fn allocate_id(&self) -> u64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        id
    }

    /// Adds a claimed checkpoint to the retained list (R4, with claim).
    pub(crate) async fn adopt(&self, metadata: Arc<CheckpointMetadata>) -> Result<()> {
        let discard = {
            let mut state = self.lock();
            state.retained.push_back(metadata);
            let mut discard = Vec::new();
            while state.retained.len() > self.inner.settings.retained {
                discard.extend(state.retained.pop_front());
            }
            discard
        };
        for old in discard {
            self.discard(&old).await?;
        }
        Ok(())
    }
}
