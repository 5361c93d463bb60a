//! Cancel and job end (E1–E3 of `docs/protocols.md`): aborts in-flight checkpoints, then keeps or
//! discards the retained checkpoints according to the job end and the cancellation policy.

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::layout::SnapshotKind;

use super::{CancellationPolicy, CheckpointCoordinator, JobEnd};

impl CheckpointCoordinator {
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
}
