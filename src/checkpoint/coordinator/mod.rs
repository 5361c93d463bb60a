//! The coordinator side of a job's checkpoints: ids, commit, retention and subsumption, abort,
//! cancellation and job end, startup recovery. Steps C, D, B, O and E of `docs/protocols.md`, one
//! file per procedure: `record` (the job record: claim, swap, lease), `commit` (C), `discard` (B, D),
//! `recovery` (O2–O3), `shutdown` (E). This file holds the coordinator's state, its builder and
//! accessors, and the entry points that hand out tickets and drive a whole checkpoint.
//!
//! Safety: every decision (claim, commit, subsumption, discard at job end, lease renewal) is a
//! compare-and-swap of the job record, and every delete follows a decision that succeeded, so a
//! fenced coordinator (a zombie of an older epoch) commits and deletes nothing the live one keeps
//! (G7). The coordinator deletes only its job's own records — metadata, private files, pins —;
//! shared files are GC's (`docs/protocols.md`, "References, reuse and deletion"). A retained
//! checkpoint's metadata outlives every in-flight ticket that was given its hashes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::job::JobRecord;
use super::metadata::{
    self, BackendHandle, CANONICAL_FILE, CheckpointMetadata, PrivateFile, SnapshotFormat,
};
use super::{CheckpointTicket, TicketState};
use crate::backend::KeyedStateBackend;
use crate::error::{Error, ErrorKind, Result};
use crate::faults::FaultRegistry;
use crate::hash::ContentHash;
use crate::layout::{self, SnapshotKind};
use crate::store::{ObjectVersion, Store};

mod commit;
mod discard;
mod record;
mod recovery;
mod shutdown;

use discard::AbortOnDrop;
pub(crate) use discard::discard_private_files;
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
    /// Checkpoints in flight at once; triggering more fails with `Busy`. Default: 1.
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

/// How long `checkpoint()` waits for the cleanup of a dropped `checkpoint()` future to free a
/// slot before it fails `Busy` (the cleanup's store calls may hang).
const DROPPED_CLEANUP_WAIT: Duration = Duration::from_secs(5);

struct PendingEntry {
    state: Arc<TicketState>,
    kind: SnapshotKind,
    /// Driven by `checkpoint()`/`savepoint()`, which clean up themselves when aborted.
    driven: bool,
    /// Its `checkpoint()` future was dropped: a spawned cleanup frees the slot (B-steps).
    dropped: bool,
    committing: bool,
    triggered: Instant,
    /// Retained checkpoints whose hashes the ticket was given: their metadata stays until it ends.
    known_ids: Vec<u64>,
    /// Whether the ticket was given the hashes of a restore without claim.
    knows_restore: bool,
    /// Its commit succeeded (C4): its end is not a failure.
    committed: bool,
    /// Why it failed, as first seen (the `reason` its end is published with).
    failure: Option<&'static str>,
}

#[derive(Default)]
struct CoordState {
    /// The next id to hand out; below the record's `next_id`.
    next_id: u64,
    /// The end of the block `next_id` is in.
    reserved_until: u64,
    /// Blocks reserved after the current one that do not continue it, because another writer
    /// (an export, X1) took ids of the record in between: `[start, end)`, ascending.
    later_blocks: std::collections::VecDeque<(u64, u64)>,
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
    /// Ids allocated to claims (R6) that have not ended: not finished (see `finished_below`).
    claiming: BTreeSet<u64>,
    restore_pins: Vec<String>,
    restored_hashes: HashSet<ContentHash>,
    /// The metadata path this job's state was last restored from (recorded in its checkpoints).
    restored_from: Option<String>,
    /// A checkpoint committed after the restore: the restore pins may go once no ticket needs them.
    restore_superseded: bool,
    closed: bool,
    fenced: Option<String>,
}

impl CoordState {
    /// The next id of this coordinator's blocks, if any is left.
    fn take_id(&mut self) -> Option<u64> {
        if self.next_id >= self.reserved_until {
            let (start, end) = self.later_blocks.pop_front()?;
            self.next_id = start;
            self.reserved_until = end;
        }
        let id = self.next_id;
        self.next_id += 1;
        Some(id)
    }

    /// A block `[start, end)` this coordinator's own swap reserved: it continues the last block
    /// if it starts where that one ends, else it waits its turn. Ids the record gained from other
    /// writers are never taken as this coordinator's.
    pub(super) fn reserve(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        match self.later_blocks.back_mut() {
            Some(last) if last.1 == start => last.1 = end,
            Some(_) => self.later_blocks.push_back((start, end)),
            None if self.reserved_until == start => self.reserved_until = end,
            None => self.later_blocks.push_back((start, end)),
        }
    }
}

#[cfg(test)]
mod id_block_tests {
    use super::CoordState;

    /// An export took id 1025 from the record between this coordinator's first block
    /// `[1, 1025)` and its next swap, which reserved `[1026, 2050)`: 1025 is never handed out.
    #[test]
    fn ids_another_writer_took_from_the_record_are_never_handed_out() {
        let mut state = CoordState {
            next_id: 1,
            reserved_until: 1025,
            ..CoordState::default()
        };
        state.reserve(1026, 2050);
        // A contiguous extension joins the block it continues.
        state.reserve(2050, 3074);
        let ids: Vec<u64> = std::iter::from_fn(|| state.take_id()).collect();
        assert_eq!(ids.len(), 1024 + 2048);
        assert!(!ids.contains(&1025));
        assert_eq!(ids[1023..1026], [1024, 1026, 1027]);
        assert_eq!(*ids.last().unwrap(), 3073);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
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
                    later_blocks: std::collections::VecDeque::new(),
                    metadata: BTreeMap::new(),
                    retained: Vec::new(),
                    savepoints: Vec::new(),
                    pending: BTreeMap::new(),
                    users: HashMap::new(),
                    discard_queue: BTreeSet::new(),
                    discarded: BTreeSet::new(),
                    claiming: BTreeSet::new(),
                    restore_pins: Vec::new(),
                    restored_hashes: HashSet::new(),
                    restored_from: None,
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

    /// Records why an in-flight checkpoint failed, unless a cause was recorded first: its end
    /// ([`remove_pending`](Self::remove_pending)) is published with it.
    fn note_failure(&self, id: u64, error: &Error) {
        if let Some(entry) = self.lock().pending.get_mut(&id) {
            entry
                .failure
                .get_or_insert(crate::metrics::reason_label(error.kind()));
        }
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
        let Some(id) = state.take_id() else {
            return Err(busy(
                &self.inner.job_id,
                "the reserved block of checkpoint ids is used up; the next commit or lease renewal reserves more".into(),
            ));
        };
        let mut known: HashSet<ContentHash> = state.restored_hashes.clone();
        // Savepoints count too: an operator may delete one (`admin::delete_snapshot` hands it to
        // this coordinator through `discarding`), and its records stay until no ticket that was
        // given its hashes is in flight.
        let known_ids: Vec<u64> = state
            .retained
            .iter()
            .chain(state.savepoints.iter())
            .copied()
            .collect();
        for committed in &known_ids {
            if let Some(metadata) = state.metadata.get(committed) {
                known.extend(metadata.shared_hashes());
            }
        }
        for id in &known_ids {
            *state.users.entry(*id).or_default() += 1;
        }
        let ticket_state = Arc::new(TicketState::new());
        let knows_restore = !state.restored_hashes.is_empty();
        state.pending.insert(
            id,
            PendingEntry {
                state: ticket_state.clone(),
                kind,
                driven,
                dropped: false,
                committing: false,
                triggered: Instant::now(),
                known_ids,
                knows_restore,
                committed: false,
                failure: None,
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

    /// Takes a savepoint in the canonical format (`docs/canonical-format.md`): one stream per
    /// backend of every entry of every state in key-group order, read from one RocksDB snapshot of
    /// the backend (the operator is not blocked while it is written), uploaded as the backend's
    /// private file. It restores at any parallelism, like a native savepoint, and can be read
    /// without RocksDB ([`canonical::CanonicalReader`](crate::canonical::CanonicalReader)). It is
    /// never incremental: every byte is written and uploaded.
    pub async fn savepoint_canonical(
        &self,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        self.snapshot_and_complete_as(SnapshotKind::Savepoint, SnapshotFormat::Canonical, backends)
            .await
    }

    async fn snapshot_and_complete(
        &self,
        kind: SnapshotKind,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        self.snapshot_and_complete_as(kind, SnapshotFormat::Native, backends)
            .await
    }

    /// One `checkpoint` span (job, id, kind) from trigger to commit, so that every log line of
    /// the checkpoint names it.
    async fn snapshot_and_complete_as(
        &self,
        kind: SnapshotKind,
        format: SnapshotFormat,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        let span = tracing::info_span!(
            "checkpoint",
            job = %self.inner.job_id,
            id = tracing::field::Empty,
            kind = crate::metrics::kind_label(kind),
        );
        self.snapshot_and_complete_in(kind, format, backends)
            .instrument(span)
            .await
    }

    async fn snapshot_and_complete_in(
        &self,
        kind: SnapshotKind,
        format: SnapshotFormat,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        let ticket = match self.trigger_driven(kind).await {
            Ok(ticket) => ticket,
            Err(e) => {
                // No ticket, so no pending entry to publish its end: published here.
                crate::metrics::checkpoint_failed(
                    &self.inner.job_id,
                    kind,
                    crate::metrics::reason_label(e.kind()),
                );
                return Err(e);
            }
        };
        tracing::Span::current().record("id", ticket.checkpoint_id);
        let mut guard = AbortOnDrop {
            coordinator: self.clone(),
            ticket: ticket.clone(),
            armed: true,
        };
        let result = match format {
            SnapshotFormat::Native => self.drive(&ticket, backends).await,
            SnapshotFormat::Canonical => self.drive_canonical(&ticket, backends).await,
        };
        if let Err(e) = &result {
            // The guard stays armed through the cleanup: a future dropped while it runs still
            // frees the slot (the spawned cleanup repeats the abort, which is idempotent).
            tracing::debug!(checkpoint = ticket.checkpoint_id, error = %e, "checkpoint failed; aborting it");
            self.note_failure(ticket.checkpoint_id, e);
            if let Err(cleanup) = self.abort(&ticket).await {
                tracing::warn!(error = %cleanup, "cleanup after a failed checkpoint failed; GC will finish it");
            }
        }
        guard.armed = false;
        result
    }

    /// [`trigger_inner`](Self::trigger_inner) for `checkpoint()`/`savepoint()`: when every slot
    /// is taken and some are held only by the cleanup of a dropped `checkpoint()` future, waits
    /// for those cleanups (at most [`DROPPED_CLEANUP_WAIT`]) instead of failing `Busy` at once.
    /// Whether to wait is decided under the same lock as the slots are counted.
    async fn trigger_driven(&self, kind: SnapshotKind) -> Result<CheckpointTicket> {
        let deadline = tokio::time::Instant::now() + DROPPED_CLEANUP_WAIT;
        loop {
            let notified = self.inner.pending_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let state = self.lock();
                !state.closed
                    && state.pending.len() >= self.inner.settings.max_concurrent
                    && state.pending.values().any(|entry| entry.dropped)
            };
            if !wait || tokio::time::Instant::now() >= deadline {
                return self.trigger_inner(kind, true);
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
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
        // Every upload runs to its end, even after another failed: a dropped upload future would
        // leave its blocking writes landing after this call returned. The first failure cancels
        // the ticket, so the others stop at their next step.
        let store = self.st();
        let results = join_all(pending.into_iter().map(|p| async move {
            let result = p.upload(store).await;
            if result.is_err() {
                ticket.state.cancelled.store(true, Ordering::SeqCst);
            }
            result
        }))
        .await;
        let mut handles = Vec::with_capacity(results.len());
        let mut failure: Option<Error> = None;
        for result in results {
            match result {
                Ok(handle) => handles.push(handle),
                // The root cause, not the cancellations it caused.
                Err(e) => match &failure {
                    Some(first) if first.kind() != ErrorKind::Cancelled => {}
                    _ if e.kind() == ErrorKind::Cancelled && failure.is_some() => {}
                    _ => failure = Some(e),
                },
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        self.complete_in(ticket, handles).await
    }

    /// The canonical counterpart of [`drive`](Self::drive): each backend's stream is written on a
    /// blocking thread into its staging directory, uploaded as its private file, and removed.
    async fn drive_canonical(
        &self,
        ticket: &CheckpointTicket,
        backends: &[&KeyedStateBackend],
    ) -> Result<CompletedCheckpoint> {
        if backends.is_empty() {
            return Err(Error::invalid("a savepoint needs at least one backend"));
        }
        let store = self.st();
        // Every backend's writer starts at once, so their snapshots are taken close together (as
        // the synchronous phases of a checkpoint are); all are awaited before anything is judged,
        // so that no stream is still being written when the files are removed.
        let started = Instant::now();
        let writers: Vec<_> = backends
            .iter()
            .map(|backend| {
                let engine = backend.inner.clone();
                let staging = engine.dir.join(crate::engine::STAGING_DIR);
                let local = staging.join(format!("canonical-{}.rkpc", crate::util::nonce()));
                let file = local.clone();
                let task = tokio::task::spawn_blocking(move || {
                    std::fs::create_dir_all(&staging)
                        .map_err(|e| Error::io("creating", &staging, e))?;
                    crate::canonical::write_canonical(&engine, &file)
                });
                (local, task)
            })
            .collect();
        let mut locals = Vec::with_capacity(writers.len());
        let mut summaries = Vec::with_capacity(writers.len());
        let mut failure = None;
        for (local, task) in writers {
            match task.await {
                Ok(Ok(summary)) => summaries.push(summary),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    failure.get_or_insert(Error::task("writing a canonical savepoint", e));
                }
            }
            locals.push(local);
        }
        // Every stream goes, uploaded or not.
        struct Remove(Vec<std::path::PathBuf>);
        impl Drop for Remove {
            fn drop(&mut self) {
                for local in &self.0 {
                    let _ = std::fs::remove_file(local);
                }
            }
        }
        let locals = Remove(locals);
        if let Some(e) = failure {
            return Err(e);
        }
        let mut handles = Vec::with_capacity(backends.len());
        for ((backend, local), summary) in backends.iter().zip(&locals.0).zip(summaries) {
            if ticket.is_cancelled() {
                return Err(Error::cancelled(format!(
                    "savepoint {} of job `{}` was aborted",
                    ticket.checkpoint_id, ticket.job_id
                )));
            }
            let tag = crate::layout::backend_tag(backend.key_groups());
            let path = crate::layout::private_file_path(
                &ticket.job_id,
                ticket.kind,
                ticket.checkpoint_id,
                &tag,
                CANONICAL_FILE,
            );
            store
                .put_file(&path, local, 0, summary.bytes, summary.hash)
                .await?;
            let handle = BackendHandle {
                key_groups: backend.key_groups(),
                max_parallelism: backend.max_parallelism(),
                // The stream's own states: a state registered while it was written is not in it.
                states: summary.states,
                shared_files: Vec::new(),
                log_files: Vec::new(),
                private_files: vec![PrivateFile {
                    path,
                    local_name: CANONICAL_FILE.to_owned(),
                    hash: summary.hash,
                    size: summary.bytes,
                }],
                manifest_name: String::new(),
                uploaded_bytes: summary.bytes,
                uploaded_files: 1,
                reused_bytes: 0,
                reused_files: 0,
                sync_pause_us: 0,
                async_duration_us: started.elapsed().as_micros() as u64,
            };
            ticket
                .state
                .uploaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((handle.clone(), crate::store::address(store)));
            handles.push(handle);
        }
        drop(locals);
        self.complete_in(ticket, handles).await
    }

    /// The metadata path this job's state was restored from, recorded in its checkpoints.
    pub(crate) fn restored_from(&self) -> Option<String> {
        self.lock().restored_from.clone()
    }

    pub(crate) fn set_restored_from(&self, source: String) {
        self.lock().restored_from = Some(source);
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

    /// Allocates a checkpoint id from the reserved block (R6, with claim); the id counts as in
    /// flight until [`end_claim`](Self::end_claim).
    pub(crate) fn allocate_id(&self) -> Result<u64> {
        let mut state = self.lock();
        if let Some(why) = &state.fenced {
            return Err(self.fenced_error(why));
        }
        let Some(id) = state.take_id() else {
            return Err(busy(
                &self.inner.job_id,
                "the reserved block of checkpoint ids is used up".into(),
            ));
        };
        state.claiming.insert(id);
        Ok(id)
    }

    /// The claim with id `id` ended (adopted or failed).
    pub(crate) fn end_claim(&self, id: u64) {
        self.lock().claiming.remove(&id);
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

fn busy(job: &str, why: String) -> Error {
    Error::busy(format!("triggering a checkpoint of job `{job}`: {why}"))
}
