//! Abort (B1–B2) and discard (D1–D3) of `docs/protocols.md`: stopping an in-flight checkpoint,
//! cleaning up after a dropped `checkpoint()` future, and deleting the job-local records (metadata,
//! private files, pins) of a checkpoint the record no longer retains. Shared files are GC's.

use std::sync::atomic::Ordering;

use crate::checkpoint::CheckpointTicket;
use crate::error::Result;
use crate::layout::{
    SnapshotKind, checkpoint_dir, metadata_path, reader_pin_prefix, snapshot_pin_prefix,
};
use crate::store::Store;

use super::CheckpointCoordinator;

/// Aborts a ticket whose `checkpoint()` future was dropped before it finished (B-steps, spawned).
pub(super) struct AbortOnDrop {
    pub(super) coordinator: CheckpointCoordinator,
    pub(super) ticket: CheckpointTicket,
    pub(super) armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.ticket.state.cancelled.store(true, Ordering::SeqCst);
        if let Some(entry) = self
            .coordinator
            .lock()
            .pending
            .get_mut(&self.ticket.checkpoint_id)
        {
            entry.dropped = true;
        }
        let coordinator = self.coordinator.clone();
        let ticket = self.ticket.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Built before the spawn and moved in: a runtime shutting down may drop the task
                // before it ever runs, or cancel it mid-way; either way the slot is freed.
                let free = FreeSlot(coordinator.clone(), ticket.checkpoint_id);
                runtime.spawn(async move {
                    let _free = free;
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

/// Frees a checkpoint's slot when dropped (idempotent: a freed slot stays freed).
struct FreeSlot(CheckpointCoordinator, u64);

impl Drop for FreeSlot {
    fn drop(&mut self) {
        self.0.remove_pending(self.1);
    }
}

impl CheckpointCoordinator {
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
    pub(super) async fn finish_dropped(&self, ticket: &CheckpointTicket) -> Result<()> {
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
    pub(super) async fn abort_by_id(&self, kind: SnapshotKind, id: u64) -> Result<()> {
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
        self.discard(kind, id).await.map(|_| ())
    }

    /// D1–D3: removes the records of a checkpoint that no job record lists (any more): its
    /// metadata, then — unless a reader pinned it — its private files. Shared files are GC's.
    /// `Ok(false)`: a reader holds it, its private files are still there (try again later).
    pub(crate) async fn discard(&self, kind: SnapshotKind, id: u64) -> Result<bool> {
        // D1
        self.st()
            .delete(&metadata_path(&self.inner.job_id, kind, id))
            .await?;
        crate::failpoint!(self.inner.faults, "discard::after_metadata");
        discard_private_files(self.st(), &self.inner.job_id, kind, id).await
    }

    pub(super) async fn delete_pins(&self, prefix: &str) -> Result<()> {
        for pin in self.st().list(prefix).await? {
            self.st().delete(&pin.path).await?;
        }
        Ok(())
    }
}

/// D2–D3: the private files of a checkpoint whose metadata is gone, unless a reader holds it
/// (`Ok(false)`: they stay, for a later attempt or GC).
pub(crate) async fn discard_private_files(
    store: &dyn Store,
    job: &str,
    kind: SnapshotKind,
    id: u64,
) -> Result<bool> {
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
        return Ok(false);
    }
    // D3
    let dir = checkpoint_dir(job, kind, id);
    for leftover in store.list(&format!("{dir}/")).await? {
        store.delete(&leftover.path).await?;
    }
    Ok(true)
}
