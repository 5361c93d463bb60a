//! Incremental checkpoints: the task side (`snapshot`), the coordinator side (`coordinator`),
//! their shared vocabulary (`metadata`), the job record and GC intents (`job`), restore and GC.
//! The procedures are specified step by step in `docs/protocols.md`.

pub(crate) mod coordinator;
pub(crate) mod gc;
pub(crate) mod job;
mod logfile;
pub(crate) mod metadata;
pub(crate) mod restore;
pub(crate) mod snapshot;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};
use crate::faults::FaultRegistry;
use crate::hash::ContentHash;
use crate::layout::SnapshotKind;

pub(crate) struct TicketState {
    pub(crate) cancelled: AtomicBool,
}

/// Permission to take one checkpoint, handed out by
/// [`CheckpointCoordinator::trigger`](crate::CheckpointCoordinator::trigger) and taken by every
/// backend's [`snapshot`](crate::KeyedStateBackend::snapshot).
///
/// It carries the hashes of the job's committed, retained files, which uploads reuse without asking
/// the store, and a cancellation flag that aborts in-flight uploads.
#[derive(Clone)]
pub struct CheckpointTicket {
    pub(crate) job_id: Arc<str>,
    pub(crate) checkpoint_id: u64,
    /// The epoch of the coordinator that handed it out (the owner of its pins).
    pub(crate) epoch: u64,
    pub(crate) kind: SnapshotKind,
    pub(crate) known: Arc<HashSet<ContentHash>>,
    pub(crate) state: Arc<TicketState>,
    pub(crate) upload_parallelism: usize,
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(crate) faults: FaultRegistry,
}

impl std::fmt::Debug for CheckpointTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointTicket")
            .field("job_id", &self.job_id)
            .field("checkpoint_id", &self.checkpoint_id)
            .field("kind", &self.kind)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CheckpointTicket {
    /// The job the checkpoint belongs to.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The checkpoint's id.
    pub fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    /// Checkpoint or savepoint.
    pub fn kind(&self) -> SnapshotKind {
        self.kind
    }

    /// Whether the checkpoint was aborted (cancel, subsumption, failure elsewhere).
    pub fn is_cancelled(&self) -> bool {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) fn check_live(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::cancelled(format!(
                "checkpoint {} of job `{}` was aborted",
                self.checkpoint_id, self.job_id
            )))
        } else {
            Ok(())
        }
    }
}
