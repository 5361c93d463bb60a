//! The coordinator side of a job's checkpoints: ids, commit, retention and subsumption, abort,
//! cancellation and job end, startup recovery. Steps C, D, B, O and E of `docs/protocols.md`.
//!
//! Safety: every decision (claim, commit, subsumption, discard at job end, lease renewal) is a
//! compare-and-swap of the job record, and every delete follows a decision that succeeded, so a
//! fenced coordinator (a zombie of an older epoch) commits and deletes nothing the live one keeps
//! (G7). The coordinator deletes only its job's own records — metadata, private files, pins —;
//! shared files are GC's (`docs/protocols.md`, "References, reuse and deletion"). A retained
//! checkpoint's metadata outlives every in-flight ticket that was given its hashes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::try_join_all;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::job::{self, ID_BLOCK, ID_LOW_WATER, JobRecord};
use super::metadata::{self, BackendHandle, CheckpointMetadata};
use super::{CheckpointTicket, TicketState};
use crate::backend::KeyedStateBackend;
use crate::error::{Error, Result};
use crate::faults::FaultRegistry;
use crate::hash::ContentHash;
use crate::layout::{
    self, SnapshotKind, checkpoint_dir, metadata_path, parse_checkpoint_path, reader_pin_prefix,
    snapshot_pin_prefix,
};
use crate::store::{ObjectVersion, Store, WriteMode};

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
    /// How long the coordinator's claim on the job lasts without renewal; it renews every third of
    /// it. A GC pass fences a job whose lease expired (plus a clock margin) before it treats the
    /// job's pins as dead. Default: 5 minutes.
    pub lease: Duration,
}

impl Default for CheckpointSettings {
    fn default() -> Self {
        CheckpointSettings {
            retained: 1,
            max_concurrent: 1,
            cancellation: CancellationPolicy::RetainOnCancellation,
            transfer_parallelism: 4,
            lease: Duration::from_secs(300),
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
        if self.lease < Duration::from_millis(300) || self.lease > Duration::from_secs(86_400) {
            return Err(Error::invalid(
                "checkpoint settings: lease must be in 300 ms..=1 day",
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
    /// Retained checkpoints whose hashes the ticket was given: their metadata stays until it ends.
    known_ids: Vec<u64>,
    /// Whether the ticket was given the hashes of a restore without claim.
    knows_restore: bool,
}

struct CoordState {
    /// The next id to hand out; below the record's `next_id`.
    next_id: u64,
    /// The record's `next_id` as last written: the end of the reserved block.
    reserved_until: u64,
    /// Metadata of the retained checkpoints and savepoints, by id.
    metadata: BTreeMap<u64, Arc<CheckpointMetadata>>,
    /// Retained checkpoint ids, ascending (the record's `retained`).
    retained: Vec<u64>,
    /// Savepoint ids, ascending.
    savepoints: Vec<u64>,
    pending: BTreeMap<u64, PendingEntry>,
    /// In-flight tickets per retained checkpoint they were given the hashes of.
    users: HashMap<u64, usize>,
    /// Ids removed from `retained` whose records are still to be deleted (D1–D3).
    discard_queue: BTreeSet<u64>,
    /// Ids whose D1–D3 are done: dropped from the record's `discarding` with the next swap.
    discarded: BTreeSet<u64>,
    restore_pins: Vec<String>,
    restored_hashes: HashSet<ContentHash>,
    /// A checkpoint committed after the restore: the restore pins may go once no ticket needs them.
    restore_superseded: bool,
    closed: bool,
    fenced: Option<String>,
}

/// The job record as this coordinator last wrote or read it.
struct RecordCell {
    record: JobRecord,
    version: ObjectVersion,
}

pub(crate) struct CoordInner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) job_id: String,
    pub(crate) settings: CheckpointSettings,
    pub(crate) faults: FaultRegistry,
    /// This coordinator instance (the record's `owner` while it holds the job).
    instance: String,
    epoch: std::sync::atomic::AtomicU64,
    state: Mutex<CoordState>,
    record: tokio::sync::Mutex<Option<RecordCell>>,
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
            .field("epoch", &self.epoch())
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

    /// Claims the job (a new epoch: every older coordinator of the job is fenced from here on),
    /// runs startup recovery (O1–O3) and starts renewing the lease.
    pub async fn open(self) -> Result<CheckpointCoordinator> {
        layout::validate_job_id(&self.job_id)?;
        self.settings.validate()?;
        let coordinator = CheckpointCoordinator {
            inner: Arc::new(CoordInner {
                store: self.store,
                job_id: self.job_id,
                settings: self.settings,
                faults: self.faults,
                instance: crate::util::nonce(),
                epoch: 0.into(),
                state: Mutex::new(CoordState {
                    next_id: 1,
                    reserved_until: 1,
                    metadata: BTreeMap::new(),
                    retained: Vec::new(),
                    savepoints: Vec::new(),
                    pending: BTreeMap::new(),
                    users: HashMap::new(),
                    discard_queue: BTreeSet::new(),
                    discarded: BTreeSet::new(),
                    restore_pins: Vec::new(),
                    restored_hashes: HashSet::new(),
                    restore_superseded: false,
                    closed: false,
                    fenced: None,
                }),
                record: tokio::sync::Mutex::new(None),
                metrics: Mutex::new(CheckpointMetrics::default()),
                pending_changed: tokio::sync::Notify::new(),
            }),
        };
        coordinator.claim().await?;
        // Renew from the claim on: a long recovery must not let the lease lapse.
        coordinator.spawn_lease_renewal();
        if let Err(e) = coordinator.recover().await {
            // Stop renewing: nobody will use this coordinator.
            coordinator.lock().closed = true;
            return Err(e);
        }
        Ok(coordinator)
    }
}

/// Aborts a ticket whose `checkpoint()` future was dropped before it finished (B-steps, spawned).
struct AbortOnDrop {
    coordinator: CheckpointCoordinator,
    ticket: CheckpointTicket,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.ticket.state.cancelled.store(true, Ordering::SeqCst);
        let coordinator = self.coordinator.clone();
        let ticket = self.ticket.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = coordinator.finish_dropped(&ticket).await {
                        tracing::warn!(checkpoint = ticket.checkpoint_id, error = %e, "cleaning up a dropped checkpoint failed; recovery or GC will finish it");
                    }
                });
            }
            // No runtime to clean up on: free the slot; recovery and GC remove the leftovers.
            Err(_) => coordinator.remove_pending(ticket.checkpoint_id),
        }
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

    /// The epoch this coordinator claimed the job with.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::SeqCst)
    }

    /// The store the job checkpoints to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The retained checkpoints, oldest first.
    pub fn retained(&self) -> Vec<Arc<CheckpointMetadata>> {
        let state = self.lock();
        state
            .retained
            .iter()
            .filter_map(|id| state.metadata.get(id).cloned())
            .collect()
    }

    /// The job's savepoints.
    pub fn savepoints(&self) -> Vec<Arc<CheckpointMetadata>> {
        let state = self.lock();
        state
            .savepoints
            .iter()
            .filter_map(|id| state.metadata.get(id).cloned())
            .collect()
    }

    /// The newest retained checkpoint.
    pub fn latest(&self) -> Option<Arc<CheckpointMetadata>> {
        self.retained().pop()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun (no checkpoint can be triggered any more).
    pub fn is_shut_down(&self) -> bool {
        self.lock().closed
    }

    /// Whether another coordinator of the job (or GC, after the lease expired) fenced this one.
    pub fn is_fenced(&self) -> bool {
        self.lock().fenced.is_some()
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

    fn fenced_error(&self, why: &str) -> Error {
        Error::fenced(format!(
            "coordinator of job `{}` (epoch {}) was fenced: {why}",
            self.inner.job_id,
            self.epoch()
        ))
    }

    fn check_not_fenced(&self) -> Result<()> {
        match &self.lock().fenced {
            Some(why) => Err(self.fenced_error(why)),
            None => Ok(()),
        }
    }

    fn mark_fenced(&self, why: String) -> Error {
        let error = self.fenced_error(&why);
        let mut state = self.lock();
        if state.fenced.is_none() {
            tracing::warn!(job = self.inner.job_id, why, "coordinator fenced");
            state.fenced = Some(why);
        }
        for entry in state.pending.values() {
            entry.state.cancelled.store(true, Ordering::SeqCst);
        }
        error
    }

    /// O1: takes the job with a new epoch and a new block of ids.
    async fn claim(&self) -> Result<()> {
        let job = self.inner.job_id.clone();
        for _ in 0..32 {
            let (current, version) = match job::read_job(self.st(), &job).await? {
                Some((record, version)) => (record, Some(version)),
                None => (self.migrate_record().await?, None),
            };
            let mut next = current.clone();
            next.epoch += 1;
            next.owner = Some(self.inner.instance.clone());
            next.lease_until_ms = self.lease_until();
            next.epoch_first_id = current.next_id;
            next.next_id = current.next_id + ID_BLOCK;
            next.updated_at_ms = crate::util::now_ms();
            if let Some(version) = job::swap_job(self.st(), &next, version.as_ref()).await? {
                self.inner.epoch.store(next.epoch, Ordering::SeqCst);
                {
                    let mut state = self.lock();
                    state.next_id = next.epoch_first_id;
                    state.reserved_until = next.next_id;
                    state.retained = next.retained.clone();
                    state.savepoints = next.savepoints.clone();
                }
                tracing::info!(job, epoch = next.epoch, "claimed the job");
                *self.inner.record.lock().await = Some(RecordCell {
                    record: next,
                    version,
                });
                return Ok(());
            }
        }
        Err(Error::conflict(format!(
            "job `{job}`: its record kept changing while claiming it"
        )))
    }

    /// A job without a record (a root written before job records existed, or a new job): adopt
    /// the committed metadata found under `jobs/<job>/`.
    async fn migrate_record(&self) -> Result<JobRecord> {
        let job = &self.inner.job_id;
        let mut record = JobRecord::new(job);
        let mut max_id = 0;
        for object in self.st().list(&layout::job_prefix(job)).await? {
            let Some(parsed) = parse_checkpoint_path(&object.path) else {
                continue;
            };
            let (kind, id) = (parsed.kind, parsed.id);
            if id >= u64::MAX / 4 {
                tracing::warn!(
                    path = object.path,
                    "ignoring an object whose id is outside the range the engine uses"
                );
                continue;
            }
            max_id = max_id.max(id);
            if parsed.is_metadata() {
                match kind {
                    SnapshotKind::Checkpoint => record.retained.push(id),
                    SnapshotKind::Savepoint => record.savepoints.push(id),
                }
            }
        }
        record.retained.sort_unstable();
        record.savepoints.sort_unstable();
        record.next_id = max_id + 1;
        record.epoch_first_id = record.next_id;
        Ok(record)
    }

    fn lease_until(&self) -> u64 {
        crate::util::now_ms() + self.inner.settings.lease.as_millis() as u64
    }

    /// Applies `change` to the job record by compare-and-swap, re-reading and re-applying it when
    /// the record moved under the same epoch (a claim by another job); fails with `Fenced` if a
    /// newer epoch holds the job. Keeps the in-memory view in step with what was written.
    async fn update_record(
        &self,
        change: impl Fn(&mut JobRecord) -> Result<()>,
    ) -> Result<JobRecord> {
        let mut cell = self.inner.record.lock().await;
        self.check_not_fenced()?;
        for _ in 0..32 {
            let current = cell
                .as_ref()
                .ok_or_else(|| Error::invalid("the coordinator has not claimed its job"))?;
            let mut next = current.record.clone();
            change(&mut next)?;
            let (done, next_id) = {
                let state = self.lock();
                (state.discarded.clone(), state.next_id)
            };
            next.discarding.retain(|id| !done.contains(id));
            if next.next_id.saturating_sub(next_id) < ID_LOW_WATER {
                next.next_id += ID_BLOCK;
            }
            next.updated_at_ms = crate::util::now_ms();
            match job::swap_job(self.st(), &next, Some(&current.version)).await? {
                Some(version) => {
                    self.adopt_record(&next, &done);
                    *cell = Some(RecordCell {
                        record: next.clone(),
                        version,
                    });
                    return Ok(next);
                }
                None => match job::read_job(self.st(), &self.inner.job_id).await? {
                    Some((found, version))
                        if found.epoch == self.epoch()
                            && found.owner.as_deref() == Some(&self.inner.instance) =>
                    {
                        self.adopt_record(&found, &BTreeSet::new());
                        *cell = Some(RecordCell {
                            record: found,
                            version,
                        });
                    }
                    Some((found, _)) => {
                        return Err(self.mark_fenced(format!(
                            "the job record is at epoch {} ({})",
                            found.epoch,
                            found.owner.as_deref().unwrap_or("fenced by GC")
                        )));
                    }
                    None => return Err(self.mark_fenced("the job record vanished".into())),
                },
            }
        }
        Err(Error::conflict(format!(
            "job `{}`: its record kept changing",
            self.inner.job_id
        )))
    }

    /// Brings the in-memory view in step with a record this coordinator's epoch holds.
    fn adopt_record(&self, record: &JobRecord, written_discards: &BTreeSet<u64>) {
        let mut state = self.lock();
        state.reserved_until = record.next_id;
        for id in written_discards {
            state.discarded.remove(id);
        }
        // Ids that left `retained` without being discarded by us were claimed by another job:
        // their records are that job's now.
        let gone: Vec<u64> = state
            .retained
            .iter()
            .copied()
            .filter(|id| !record.retained.contains(id) && !record.discarding.contains(id))
            .collect();
        for id in gone {
            state.metadata.remove(&id);
        }
        for id in &record.discarding {
            if !state.discarded.contains(id) {
                state.discard_queue.insert(*id);
            }
        }
        state.retained = record.retained.clone();
        state.savepoints = record.savepoints.clone();
    }

    /// Renews the lease every third of it until the coordinator shuts down or is fenced.
    fn spawn_lease_renewal(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                job = self.inner.job_id,
                "no tokio runtime: the lease is not renewed"
            );
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let period = self.inner.settings.lease / 3;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { break };
                let coordinator = CheckpointCoordinator { inner };
                if coordinator.is_shut_down() || coordinator.is_fenced() {
                    break;
                }
                let lease_until = coordinator.lease_until();
                if let Err(e) = coordinator
                    .update_record(|record| {
                        record.lease_until_ms = lease_until;
                        Ok(())
                    })
                    .await
                {
                    tracing::warn!(job = coordinator.inner.job_id, error = %e, "renewing the lease failed");
                    if e.kind() == crate::ErrorKind::Fenced {
                        break;
                    }
                }
            }
        });
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
        if let Some(why) = &state.fenced {
            return Err(self.fenced_error(why));
        }
        if state.pending.len() >= self.inner.settings.max_concurrent {
            return Err(busy(
                &self.inner.job_id,
                format!(
                    "{} checkpoints already in flight (max_concurrent)",
                    state.pending.len()
                ),
            ));
        }
        if state.next_id >= state.reserved_until {
            return Err(busy(
                &self.inner.job_id,
                "the reserved block of checkpoint ids is used up; the next commit or lease renewal reserves more".into(),
            ));
        }
        let id = state.next_id;
        state.next_id += 1;
        let mut known: HashSet<ContentHash> = state.restored_hashes.clone();
        let known_ids = state.retained.clone();
        for committed in known_ids.iter().chain(state.savepoints.iter()) {
            if let Some(metadata) = state.metadata.get(committed) {
                known.extend(metadata.shared_hashes());
            }
        }
        for id in &known_ids {
            *state.users.entry(*id).or_default() += 1;
        }
        let ticket_state = Arc::new(TicketState {
            cancelled: AtomicBool::new(false),
        });
        let knows_restore = !state.restored_hashes.is_empty();
        state.pending.insert(
            id,
            PendingEntry {
                state: ticket_state.clone(),
                kind,
                driven,
                committing: false,
                triggered: Instant::now(),
                known_ids,
                knows_restore,
            },
        );
        Ok(CheckpointTicket {
            job_id: self.inner.job_id.as_str().into(),
            checkpoint_id: id,
            epoch: self.epoch(),
            kind,
            known: Arc::new(known),
            state: ticket_state,
            upload_parallelism: self.inner.settings.transfer_parallelism,
            faults: self.inner.faults.clone(),
        })
    }

    /// Takes a checkpoint of `backends` (the job's backends, disjoint key-group ranges): every
    /// synchronous phase first, then the uploads concurrently, then the commit. On failure the
    /// checkpoint is aborted and its uploads cleaned up; so it is if the future is dropped.
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
        let mut guard = AbortOnDrop {
            coordinator: self.clone(),
            ticket: ticket.clone(),
            armed: true,
        };
        let result = self.drive(&ticket, backends).await;
        if let Err(e) = &result {
            // The guard stays armed through the cleanup: a future dropped while it runs still
            // frees the slot (the spawned cleanup repeats the abort, which is idempotent).
            tracing::debug!(checkpoint = ticket.checkpoint_id, error = %e, "checkpoint failed; aborting it");
            if let Err(cleanup) = self.abort(&ticket).await {
                tracing::warn!(error = %cleanup, "cleanup after a failed checkpoint failed; GC will finish it");
            }
        }
        guard.armed = false;
        result
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
            if let Some(why) = &state.fenced {
                return Err(self.fenced_error(why));
            }
            match state.pending.get_mut(&id).filter(|e| e.kind == ticket.kind) {
                Some(entry)
                    if !entry.state.cancelled.load(Ordering::SeqCst) && !entry.committing =>
                {
                    entry.committing = true;
                    Some(entry.triggered)
                }
                Some(_) => None,
                None => {
                    return Err(Error::cancelled(format!(
                        "checkpoint {id} of job `{}` was aborted before it completed",
                        self.inner.job_id
                    )));
                }
            }
        };
        let Some(triggered) = triggered else {
            // Subsumed or aborted while in flight: free its slot and its records.
            if let Err(e) = self.abort(ticket).await {
                tracing::warn!(checkpoint = id, error = %e, "cleaning up a subsumed checkpoint failed");
            }
            return Err(Error::cancelled(format!(
                "checkpoint {id} of job `{}` was aborted or subsumed before it completed",
                self.inner.job_id
            )));
        };
        // A `complete` future dropped mid-commit must not leave its slot behind (shutdown would
        // wait for it forever): the guard resolves the commit's outcome and cleans up.
        let mut guard = AbortOnDrop {
            coordinator: self.clone(),
            ticket: ticket.clone(),
            armed: true,
        };
        let result = self.commit(ticket, handles, triggered).await;
        guard.armed = false;
        self.remove_pending(id);
        let released = self.release_ready().await;
        let done = result?;
        if let Err(e) = released
            && e.kind() == crate::ErrorKind::Poisoned
        {
            return Err(e);
        }
        Ok(done)
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
        let bytes = Bytes::from(
            metadata::encode_metadata(&metadata)
                .map_err(|e| Error::invalid(format!("checkpoint {id}: {e}")))?,
        );
        let path = metadata.metadata_path();
        crate::failpoint!(self.inner.faults, "commit::before_metadata");
        // C3: durable, but not complete until the record lists it.
        if let Err(e) = self
            .st()
            .put(&path, bytes.clone(), WriteMode::CreateOnly)
            .await
        {
            // The outcome may be ambiguous (written, but reported failed): read it back. Ids are
            // reserved per epoch, so an existing record can only be this attempt's.
            match self.st().get(&path).await {
                Ok(found) if found == bytes => {
                    tracing::warn!(path, error = %e, "metadata write reported failure but the record exists; going on")
                }
                Ok(_) => {
                    return Err(Error::conflict(format!(
                        "`{path}` exists with other contents: another writer used checkpoint id {id}"
                    )));
                }
                Err(probe) if probe.kind() == crate::ErrorKind::NotFound => {
                    self.abort_by_id(ticket.kind, id).await.ok();
                    return Err(e);
                }
                Err(probe) => {
                    // Unknown outcome: delete nothing. Recovery or GC resolves it later.
                    tracing::error!(path, error = %e, probe = %probe, "metadata write outcome unknown; leaving files in place");
                    return Err(e);
                }
            }
        }
        // Between C3 and C4 the metadata is an orphan: a failure here removes it again.
        let between: Result<()> = async {
            crate::failpoint!(self.inner.faults, "commit::after_metadata");
            Ok(())
        }
        .await;
        if let Err(e) = between {
            self.abort_by_id(ticket.kind, id).await.ok();
            return Err(e);
        }
        // C4: the commit point.
        let retained_max = self.inner.settings.retained;
        let kind = ticket.kind;
        let swapped = self
            .update_record(|record| {
                match kind {
                    // A retry after an ambiguous swap may find it done already.
                    _ if record.is_complete(id) => {}
                    SnapshotKind::Savepoint => {
                        record.savepoints.push(id);
                        record.savepoints.sort_unstable();
                    }
                    SnapshotKind::Checkpoint => {
                        if let Some(newer) = record.retained.iter().find(|&&r| r > id) {
                            return Err(Error::cancelled(format!(
                                "checkpoint {id} was subsumed by checkpoint {newer}, which completed first"
                            )));
                        }
                        record.retained.push(id);
                        while record.retained.len() > retained_max {
                            let oldest = record.retained.remove(0);
                            record.discarding.push(oldest);
                        }
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = swapped {
            match e.kind() {
                // Fenced: the live coordinator's recovery owns our leftovers; delete nothing.
                crate::ErrorKind::Fenced => {}
                crate::ErrorKind::Cancelled => {
                    self.abort_by_id(ticket.kind, id).await.ok();
                }
                _ => {
                    tracing::error!(path, error = %e, "commit outcome unknown; leaving files in place")
                }
            }
            return Err(e);
        }
        let committed_after = triggered.elapsed();
        crate::failpoint!(self.inner.faults, "commit::after_record");
        let metadata = Arc::new(metadata);
        // C5 (in memory first: from here on the checkpoint is complete whatever fails next).
        let subsumed_pending = {
            let mut state = self.lock();
            state.metadata.insert(id, metadata.clone());
            let mut subsumed = Vec::new();
            if ticket.kind == SnapshotKind::Checkpoint {
                state.restored_hashes.clear();
                state.restore_superseded = true;
                for (pending_id, entry) in state.pending.iter() {
                    if *pending_id < id
                        && entry.kind == SnapshotKind::Checkpoint
                        && !entry.committing
                    {
                        entry.state.cancelled.store(true, Ordering::SeqCst);
                        subsumed.push(*pending_id);
                    }
                }
            }
            subsumed
        };
        if let Err(e) = self
            .delete_pins(&snapshot_pin_prefix(&self.inner.job_id, ticket.kind, id))
            .await
        {
            tracing::warn!(checkpoint = id, error = %e, "removing pins of a committed checkpoint failed");
        }
        for pending_id in subsumed_pending {
            tracing::info!(
                checkpoint = pending_id,
                by = id,
                "pending checkpoint subsumed"
            );
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
        {
            let mut state = self.lock();
            if let Some(entry) = state.pending.remove(&id) {
                for known in entry.known_ids {
                    if let Some(users) = state.users.get_mut(&known) {
                        *users = users.saturating_sub(1);
                    }
                }
            }
            state.users.retain(|_, users| *users > 0);
        }
        self.inner.pending_changed.notify_waiters();
    }

    /// C6: runs the discards (D1–D3) that no in-flight ticket holds back any more, and releases
    /// the restore pins once a checkpoint superseded them and no ticket still needs their hashes.
    async fn release_ready(&self) -> Result<()> {
        let (ready, pins) = {
            let mut state = self.lock();
            let ready: Vec<u64> = state
                .discard_queue
                .iter()
                .copied()
                .filter(|id| !state.users.contains_key(id))
                .collect();
            for id in &ready {
                state.discard_queue.remove(id);
            }
            let pins =
                if state.restore_superseded && !state.pending.values().any(|e| e.knows_restore) {
                    std::mem::take(&mut state.restore_pins)
                } else {
                    Vec::new()
                };
            (ready, pins)
        };
        let mut first_error = None;
        for id in ready {
            crate::failpoint!(self.inner.faults, "subsume::before_discard");
            // A failed discard leaves orphans for recovery or GC, never a dangling reference:
            // the record no longer lists the checkpoint (D0 came first).
            match self.discard(SnapshotKind::Checkpoint, id).await {
                Ok(()) => {
                    let mut state = self.lock();
                    state.metadata.remove(&id);
                    state.discarded.insert(id);
                }
                Err(e) => {
                    tracing::warn!(checkpoint = id, error = %e, "discarding a subsumed checkpoint failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        for pin in pins {
            if let Err(e) = self.st().delete(&pin).await {
                tracing::warn!(pin, error = %e, "removing a restore pin failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Aborts an in-flight checkpoint (B1–B2): its uploads stop, nothing of it is committed, and
    /// its records (pins, private files) are deleted; what it uploaded is left to GC.
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
        let released = self.release_ready().await;
        result.and(released)
    }

    /// The cleanup of a ticket whose `checkpoint()` future was dropped: if its commit may have
    /// been cut off mid-swap, a no-op swap first makes sure no late write of that swap can land.
    async fn finish_dropped(&self, ticket: &CheckpointTicket) -> Result<()> {
        let id = ticket.checkpoint_id;
        let committing = self.lock().pending.get(&id).is_some_and(|e| e.committing);
        let complete = if committing {
            match self.update_record(|_| Ok(())).await {
                Ok(record) => record.is_complete(id),
                Err(e) => {
                    self.remove_pending(id);
                    return Err(e);
                }
            }
        } else {
            false
        };
        let result = if complete {
            // Committed before the future was dropped: only its pins are left to remove.
            self.delete_pins(&snapshot_pin_prefix(&self.inner.job_id, ticket.kind, id))
                .await
        } else {
            self.abort_by_id(ticket.kind, id).await
        };
        self.remove_pending(id);
        let released = self.release_ready().await;
        result.and(released)
    }

    /// B2 for checkpoint `id`: its pins, private files and an orphan metadata record. Never touches
    /// a checkpoint the job record lists as complete: the record is refreshed with a no-op swap
    /// first, which also makes sure that a swap of ours whose outcome was unknown can no longer
    /// land. A fenced coordinator deletes nothing.
    async fn abort_by_id(&self, kind: SnapshotKind, id: u64) -> Result<()> {
        let job = &self.inner.job_id;
        {
            let mut metrics = self.inner.metrics.lock().unwrap_or_else(|p| p.into_inner());
            metrics.aborted += 1;
        }
        let complete = self.update_record(|_| Ok(())).await?.is_complete(id);
        self.delete_pins(&snapshot_pin_prefix(job, kind, id))
            .await?;
        crate::failpoint!(self.inner.faults, "abort::before_shared_delete");
        if complete {
            return Ok(());
        }
        self.discard(kind, id).await
    }

    /// D1–D3: removes the records of a checkpoint that no job record lists (any more): its
    /// metadata, then — unless a reader pinned it — its private files. Shared files are GC's.
    pub(crate) async fn discard(&self, kind: SnapshotKind, id: u64) -> Result<()> {
        // D1
        self.st()
            .delete(&metadata_path(&self.inner.job_id, kind, id))
            .await?;
        crate::failpoint!(self.inner.faults, "discard::after_metadata");
        discard_private_files(self.st(), &self.inner.job_id, kind, id).await
    }

    async fn delete_pins(&self, prefix: &str) -> Result<()> {
        for pin in self.st().list(prefix).await? {
            self.st().delete(&pin.path).await?;
        }
        Ok(())
    }

    /// O2–O3: removes what aborted and fenced checkpoints left and loads the retained metadata.
    async fn recover(&self) -> Result<()> {
        let job = self.inner.job_id.clone();
        let record = self
            .inner
            .record
            .lock()
            .await
            .as_ref()
            .map(|cell| cell.record.clone())
            .ok_or_else(|| Error::invalid("the coordinator has not claimed its job"))?;
        // O2
        let mut leftovers: BTreeSet<(SnapshotKind, u64)> = BTreeSet::new();
        for object in self.st().list(&layout::job_prefix(&job)).await? {
            let Some(layout::CheckpointPath { kind, id, .. }) = parse_checkpoint_path(&object.path)
            else {
                continue;
            };
            let complete = match kind {
                SnapshotKind::Checkpoint => record.retained.contains(&id),
                SnapshotKind::Savepoint => record.savepoints.contains(&id),
            };
            if complete {
                continue;
            }
            if id >= record.epoch_first_id {
                tracing::warn!(
                    path = object.path,
                    "an object whose id no epoch of the job reserved; left in place"
                );
                continue;
            }
            leftovers.insert((kind, id));
        }
        for object in self.st().list(&layout::job_pins_prefix(&job)).await? {
            if layout::is_reader_pin_path(&object.path) {
                continue; // another actor's reader pin on one of our checkpoints
            }
            // Snapshot pins of older epochs of this job. A newer epoch's pins are the live
            // coordinator's (this one is then a zombie): never touch them. Unreadable pins are
            // GC's to report.
            let older = match self.st().get(&object.path).await {
                Ok(bytes) => matches!(
                    metadata::decode_pin(&bytes, &object.path).map(|p| p.owner),
                    Ok(metadata::PinOwner::Epoch { job: owner, epoch })
                        if owner == job && epoch < record.epoch
                ),
                Err(e) if e.kind() == crate::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if older {
                self.st().delete(&object.path).await?;
            }
        }
        for (kind, id) in leftovers {
            tracing::info!(
                job,
                checkpoint = id,
                "removing what an aborted or fenced checkpoint left"
            );
            self.discard(kind, id).await?;
        }
        {
            let mut state = self.lock();
            state.discarded.extend(record.discarding.iter().copied());
        }
        // O3
        let mut loaded = BTreeMap::new();
        for (kind, ids) in [
            (SnapshotKind::Checkpoint, &record.retained),
            (SnapshotKind::Savepoint, &record.savepoints),
        ] {
            for &id in ids {
                let path = metadata_path(&job, kind, id);
                match self.st().get(&path).await {
                    Ok(bytes) => match metadata::decode_metadata(&bytes, &path) {
                        Ok(decoded) => {
                            loaded.insert(id, Arc::new(decoded));
                        }
                        Err(e) => {
                            tracing::error!(path, error = %e, "a retained checkpoint's metadata is unreadable; kept, never restored")
                        }
                    },
                    Err(e) => {
                        tracing::error!(path, error = %e, "a retained checkpoint's metadata cannot be read; kept")
                    }
                }
            }
        }
        self.lock().metadata = loaded;
        // Retention may have shrunk since the last run; `discarding` is cleaned with this swap.
        let retained_max = self.inner.settings.retained;
        self.update_record(|record| {
            while record.retained.len() > retained_max {
                let oldest = record.retained.remove(0);
                record.discarding.push(oldest);
            }
            Ok(())
        })
        .await?;
        self.release_ready().await
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
            manual
        };
        for (kind, id) in manual {
            let result = self.abort_by_id(kind, id).await;
            self.remove_pending(id);
            if let Err(e) = result
                && e.kind() != crate::ErrorKind::Fenced
            {
                return Err(e);
            }
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
        self.check_not_fenced()?;
        // E2
        let discard_all = match end {
            JobEnd::Finished => true,
            JobEnd::Cancelled => {
                self.inner.settings.cancellation == CancellationPolicy::DeleteOnCancellation
            }
            JobEnd::Failed | JobEnd::Suspended => false,
        };
        if discard_all {
            self.update_record(|record| {
                let all: Vec<u64> = record.retained.drain(..).collect();
                record.discarding.extend(all);
                Ok(())
            })
            .await?;
        }
        {
            // E3: nothing of this job is in flight; what it kept its own metadata references.
            let mut state = self.lock();
            state.restore_superseded = true;
            state.restored_hashes.clear();
        }
        self.release_ready().await?;
        self.update_record(|record| {
            record.lease_until_ms = 0;
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Records a restore pin and the hashes it protects (R7, without claim).
    pub(crate) fn add_restore_pin(
        &self,
        path: String,
        hashes: impl IntoIterator<Item = ContentHash>,
    ) {
        let mut state = self.lock();
        state.restore_pins.push(path);
        state.restored_hashes.extend(hashes);
        state.restore_superseded = false;
    }

    /// Allocates a checkpoint id from the reserved block (R6, with claim).
    pub(crate) fn allocate_id(&self) -> Result<u64> {
        let mut state = self.lock();
        if let Some(why) = &state.fenced {
            return Err(self.fenced_error(why));
        }
        if state.next_id >= state.reserved_until {
            return Err(busy(
                &self.inner.job_id,
                "the reserved block of checkpoint ids is used up".into(),
            ));
        }
        let id = state.next_id;
        state.next_id += 1;
        Ok(id)
    }

    /// Makes a claimed checkpoint this job's (R6): the swap is the claim's commit point.
    pub(crate) async fn adopt(&self, metadata: Arc<CheckpointMetadata>) -> Result<()> {
        let id = metadata.checkpoint_id;
        let retained_max = self.inner.settings.retained;
        self.update_record(|record| {
            if let Some(newer) = record.retained.iter().find(|&&r| r > id) {
                return Err(Error::conflict(format!(
                    "checkpoint {newer} of this job is newer than the claimed one"
                )));
            }
            record.retained.push(id);
            while record.retained.len() > retained_max {
                let oldest = record.retained.remove(0);
                record.discarding.push(oldest);
            }
            Ok(())
        })
        .await?;
        self.lock().metadata.insert(id, metadata);
        self.release_ready().await
    }

    /// The epoch-owned identity of this coordinator's pins.
    pub(crate) fn pin_owner(&self) -> metadata::PinOwner {
        metadata::PinOwner::Epoch {
            job: self.inner.job_id.clone(),
            epoch: self.epoch(),
        }
    }
}

/// D2–D3: the private files of a checkpoint whose metadata is gone, unless a reader holds it.
async fn discard_private_files(
    store: &dyn Store,
    job: &str,
    kind: SnapshotKind,
    id: u64,
) -> Result<()> {
    // D2: a reader that pinned before this listing keeps the private files; one that pins after
    // it finds the metadata gone when it re-checks.
    if !store
        .list(&reader_pin_prefix(job, kind, id))
        .await?
        .is_empty()
    {
        tracing::debug!(
            job,
            checkpoint = id,
            "a reader holds the checkpoint; its private files stay for GC"
        );
        return Ok(());
    }
    // D3
    let dir = checkpoint_dir(job, kind, id);
    for leftover in store.list(&format!("{dir}/")).await? {
        store.delete(&leftover.path).await?;
    }
    Ok(())
}

fn busy(job: &str, why: String) -> Error {
    crate::error::ErrorDetail::Io {
        context: "triggering a checkpoint",
        path: format!("job {job}").into(),
        source: std::io::Error::new(std::io::ErrorKind::ResourceBusy, why),
    }
    .into()
}
