//! Commit (C1–C6 of `docs/protocols.md`, "Commit"): checks the backends' handles, writes the
//! metadata, makes the record swap that is the commit point (C4), applies retention and subsumption,
//! and releases what in-flight tickets no longer need.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use crate::checkpoint::CheckpointTicket;
use crate::checkpoint::metadata::{self, BackendHandle, CheckpointMetadata};
use crate::error::{Error, Result};
use crate::layout::{SnapshotKind, snapshot_pin_prefix};
use crate::store::WriteMode;

use super::discard::AbortOnDrop;
use super::{CheckpointCoordinator, CompletedCheckpoint};

impl CheckpointCoordinator {
    /// Commits a checkpoint from its backends' handles (C1–C6) and applies retention.
    pub async fn complete(
        &self,
        ticket: &CheckpointTicket,
        handles: Vec<BackendHandle>,
    ) -> Result<CompletedCheckpoint> {
        // The caller drives the ticket (trigger, snapshot, upload, complete): the commit gets a
        // `checkpoint` span of its own (`checkpoint()` calls `complete_in` inside its span).
        let span = tracing::info_span!(
            "checkpoint",
            job = %self.inner.job_id,
            id = ticket.checkpoint_id,
            kind = crate::metrics::kind_label(ticket.kind),
        );
        self.complete_in(ticket, handles).instrument(span).await
    }

    /// [`complete`](Self::complete) in the caller's span.
    pub(super) async fn complete_in(
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
        match &result {
            Ok(_) => {
                if let Some(entry) = self.lock().pending.get_mut(&id) {
                    entry.committed = true;
                }
            }
            Err(e) => self.note_failure(id, e),
        }
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

    /// C2–C6 for a ticket whose handles passed C1.
    pub(super) async fn commit(
        &self,
        ticket: &CheckpointTicket,
        handles: Vec<BackendHandle>,
        triggered: Instant,
    ) -> Result<CompletedCheckpoint> {
        let metadata = self.write_metadata(ticket, handles).await?;
        self.swap_commit(ticket, &metadata.metadata_path()).await?;
        let committed_after = triggered.elapsed();
        crate::failpoint!(self.inner.faults, "commit::after_record");
        let metadata = Arc::new(metadata);
        self.after_commit(ticket, &metadata).await;
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
        tracing::info!(
            checkpoint = ticket.checkpoint_id,
            duration_ms = done.duration.as_millis() as u64,
            sync_pause_us = done.sync_pause.as_micros() as u64,
            checkpointed_size_bytes = done.metadata.checkpointed_size_bytes,
            full_size_bytes = done.metadata.full_size_bytes,
            "checkpoint committed"
        );
        self.record_metrics(&done);
        Ok(done)
    }

    /// C2–C3: builds the metadata and writes it, create-only. Durable, but not complete until the
    /// record lists it; a failure that is known to have written nothing aborts the checkpoint.
    async fn write_metadata(
        &self,
        ticket: &CheckpointTicket,
        handles: Vec<BackendHandle>,
    ) -> Result<CheckpointMetadata> {
        let id = ticket.checkpoint_id;
        let max_parallelism = handles
            .first()
            .map(|h| h.max_parallelism)
            .ok_or_else(|| Error::invalid("a checkpoint needs at least one backend handle"))?;
        // C2
        if let Err(e) = self.check_foreign_handles(ticket, &handles).await {
            // Refused before anything of the commit was written: B2, as for any abort.
            self.abort_by_id(ticket.kind, id).await.ok();
            return Err(e);
        }
        let metadata = CheckpointMetadata {
            job_id: self.inner.job_id.clone(),
            checkpoint_id: id,
            kind: ticket.kind,
            created_at_ms: crate::util::now_ms(),
            max_parallelism,
            checkpointed_size_bytes: handles.iter().map(|h| h.uploaded_bytes).sum(),
            full_size_bytes: handles.iter().map(BackendHandle::full_size_bytes).sum(),
            format: handles[0].format(),
            backends: handles,
            restored_from: self.restored_from(),
            claimed_from: None,
        };
        let bytes = match metadata::encode_metadata(&metadata) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                // Refused (overlapping or inconsistent handles) before anything was written.
                self.abort_by_id(ticket.kind, id).await.ok();
                return Err(Error::invalid(format!(
                    "checkpoint {id}: the backend handles cannot be committed: {e}"
                )));
            }
        };
        let path = metadata.metadata_path();
        crate::failpoint!(self.inner.faults, "commit::before_metadata");
        // C3
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
        Ok(metadata)
    }

    /// C1 for handles this process did not upload to this coordinator's store (another
    /// process's, read from their wire form, or an upload to another store): every private file, and every shared object the ticket did not already know, must
    /// be in the store with its recorded size — a handle from an upload to another root, or from
    /// one that never finished, is refused instead of committed (G1). Costs one `head` per new
    /// object of such a handle.
    async fn check_foreign_handles(
        &self,
        ticket: &CheckpointTicket,
        handles: &[BackendHandle],
    ) -> Result<()> {
        let here = crate::store::address(self.st());
        let uploaded: Vec<BackendHandle> = ticket
            .state
            .uploaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, store)| *store == here)
            .map(|(handle, _)| handle.clone())
            .collect();
        for handle in handles.iter().filter(|h| !uploaded.contains(h)) {
            let private = handle
                .private_files
                .iter()
                .map(|f| (f.path.clone(), f.size));
            let shared = handle
                .shared_objects()
                .filter(|(hash, _)| !ticket.known.contains(hash))
                .map(|(hash, size)| (crate::layout::shared_path(&hash), size));
            for (path, size) in private.chain(shared) {
                match self.st().head(&path).await? {
                    Some(found) if found.size == size => {}
                    Some(found) => {
                        return Err(Error::invalid(format!(
                            "checkpoint {}: the handle of backend {} names `{path}` of {size} bytes; \
                             the store holds {} bytes",
                            ticket.checkpoint_id, handle.key_groups, found.size
                        )));
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "checkpoint {}: the handle of backend {} names `{path}`, which is not in \
                             the store {} (uploaded to another root, or never finished)",
                            ticket.checkpoint_id,
                            handle.key_groups,
                            self.st().describe()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// C4, the commit point: the record swap that lists the checkpoint (retention by id; a late,
    /// older checkpoint is refused as subsumed). On failure it deletes only what is known dead.
    async fn swap_commit(&self, ticket: &CheckpointTicket, path: &str) -> Result<()> {
        let id = ticket.checkpoint_id;
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
        Ok(())
    }

    /// C5, in memory first (from here on the checkpoint is complete whatever fails next): remember
    /// the metadata, cancel the older pending checkpoints it subsumes, then remove its pins, and
    /// repeat B2 for the checkpoints aborted since the last commit.
    async fn after_commit(&self, ticket: &CheckpointTicket, metadata: &Arc<CheckpointMetadata>) {
        let id = ticket.checkpoint_id;
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
    }

    fn record_metrics(&self, done: &CompletedCheckpoint) {
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
        drop(metrics);
        let backends = &done.metadata.backends;
        let pauses: Vec<u64> = backends.iter().map(|b| b.sync_pause_us).collect();
        crate::metrics::checkpoint_completed(
            &self.inner.job_id,
            done.metadata.kind,
            &crate::metrics::CheckpointFigures {
                duration: done.duration,
                sync_pauses_us: &pauses,
                checkpointed_size_bytes: done.metadata.checkpointed_size_bytes,
                full_size_bytes: done.metadata.full_size_bytes,
                uploaded_files: backends.iter().map(|b| b.uploaded_files).sum(),
                reused_files: backends.iter().map(|b| b.reused_files).sum(),
                uploaded_bytes: done.uploaded_bytes(),
                reused_bytes: done.reused_bytes(),
            },
        );
    }

    /// Ends a ticket's slot (idempotent). The first end of a ticket that did not commit publishes
    /// its failure: the cause noted first, else `dropped` (its future was dropped) or `cancelled`
    /// (aborted by the caller, cancel or subsumption).
    pub(super) fn remove_pending(&self, id: u64) {
        let mut failed = None;
        {
            let mut state = self.lock();
            if let Some(entry) = state.pending.remove(&id) {
                if !entry.committed {
                    let reason = match entry.failure {
                        Some(reason) => reason,
                        None if entry.dropped => crate::metrics::DROPPED,
                        None => crate::metrics::reason_label(crate::ErrorKind::Cancelled),
                    };
                    failed = Some((entry.kind, reason));
                }
                for known in entry.known_ids {
                    if let Some(users) = state.users.get_mut(&known) {
                        *users = users.saturating_sub(1);
                    }
                }
            }
            state.users.retain(|_, users| *users > 0);
        }
        if let Some((kind, reason)) = failed {
            crate::metrics::checkpoint_failed(&self.inner.job_id, kind, reason);
        }
        self.inner.pending_changed.notify_waiters();
    }

    /// C6: runs the discards (D1–D3) that no in-flight ticket holds back any more, and releases
    /// the restore pins once a checkpoint superseded them and no ticket still needs their hashes.
    pub(super) async fn release_ready(&self) -> Result<()> {
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
            // A checkpoint subsumed or claimed away, or a snapshot an operator deleted (a
            // savepoint too); ids are unique across both kinds, so an unknown kind tries both.
            let kinds = match self.lock().metadata.get(&id).map(|m| m.kind) {
                Some(kind) => vec![kind],
                None => vec![SnapshotKind::Checkpoint, SnapshotKind::Savepoint],
            };
            let mut discarded = Ok(true);
            for kind in kinds {
                let done = self.discard(kind, id).await;
                discarded = discarded.and_then(|all| done.map(|this| all && this));
            }
            match discarded {
                // A reader holds its private files: the id stays in `discarding`, so the next
                // swap queues it again (a lease renewal at the latest); GC leaves it to us.
                Ok(false) => {
                    tracing::debug!(
                        checkpoint = id,
                        "a reader holds a discarded checkpoint; retrying later"
                    );
                }
                Ok(true) => {
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
}
