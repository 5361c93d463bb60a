//! Incremental checkpoints: the task side (`snapshot`), the coordinator side (`coordinator`),
//! their shared vocabulary (`metadata`), the job record and GC intents (`job`), restore and GC.
//! The procedures are specified step by step in `docs/protocols.md`.

pub(crate) mod coordinator;
pub(crate) mod gc;
pub(crate) mod job;
mod logfile;
pub(crate) mod metadata;
pub(crate) mod relocate;
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
    /// The handles uploaded in this process with this ticket (or a clone of it): `complete`
    /// trusts these; a handle from elsewhere (another process's upload, a wire form) has its
    /// objects checked in the store first.
    /// Each with the address of the store it went to: only uploads to the coordinator's own
    /// store are trusted.
    pub(crate) uploaded: std::sync::Mutex<Vec<(metadata::BackendHandle, usize)>>,
}

impl TicketState {
    pub(crate) fn new() -> Self {
        TicketState {
            cancelled: AtomicBool::new(false),
            uploaded: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// The wire form of a [`CheckpointTicket`].
#[derive(serde::Serialize, serde::Deserialize)]
struct TicketWire {
    job_id: String,
    checkpoint_id: u64,
    epoch: u64,
    kind: SnapshotKind,
    known: Vec<ContentHash>,
    upload_parallelism: u64,
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

    /// The ticket's wire form, for a backend in another process or on another host: job, id,
    /// epoch, kind, the hashes it may reuse and the upload parallelism, in the checksummed
    /// envelope of metadata records (magic `RKPTTICK`). The copy [`from_bytes`](Self::from_bytes)
    /// makes has a cancellation flag of its own: an abort at the coordinator does not reach it
    /// (its uploads run to their end; what they leave is unreferenced once the coordinator's
    /// abort removed the checkpoint's pins, and GC removes it).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let wire = TicketWire {
            job_id: self.job_id.to_string(),
            checkpoint_id: self.checkpoint_id,
            epoch: self.epoch,
            kind: self.kind,
            known: self.known.iter().copied().collect(),
            upload_parallelism: self.upload_parallelism as u64,
        };
        let body = rmp_serde::to_vec_named(&wire)
            .map_err(|e| Error::invalid(format!("encoding a checkpoint ticket: {e}")))?;
        Ok(metadata::seal(metadata::TICKET_MAGIC, &body))
    }

    /// Reads a ticket's [wire form](Self::to_bytes) in the backend's process. A damaged or
    /// foreign message is `Corruption`; an invalid job id or parallelism is `Corruption` too.
    pub fn from_bytes(bytes: &[u8]) -> Result<CheckpointTicket> {
        let body = metadata::unseal(metadata::TICKET_MAGIC, bytes, "checkpoint ticket")?;
        let wire: TicketWire = rmp_serde::from_slice(body)
            .map_err(|e| Error::corruption(format!("checkpoint ticket: undecodable body: {e}")))?;
        crate::layout::validate_job_id(&wire.job_id)
            .map_err(|e| Error::corruption(format!("checkpoint ticket: {e}")))?;
        if wire.upload_parallelism == 0 || wire.upload_parallelism > 1024 {
            return Err(Error::corruption(format!(
                "checkpoint ticket: upload parallelism {} is outside 1..=1024",
                wire.upload_parallelism
            )));
        }
        Ok(CheckpointTicket {
            job_id: wire.job_id.into(),
            checkpoint_id: wire.checkpoint_id,
            epoch: wire.epoch,
            kind: wire.kind,
            known: Arc::new(wire.known.into_iter().collect()),
            state: Arc::new(TicketState::new()),
            upload_parallelism: wire.upload_parallelism as usize,
            faults: FaultRegistry::default(),
        })
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
