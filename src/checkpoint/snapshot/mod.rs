//! The task side of a checkpoint: one backend's synchronous phase (record what to copy) and
//! asynchronous phase (link, trim, hash, pin, upload). Steps S1–S6 and A1–A8 of
//! `docs/protocols.md`, one file per phase: `sync` (S1–S6, the operator is blocked), `prepare`
//! (A1–A4 on a blocking thread: link, trim, inspect, hash), `upload` (A5–A8: pin, wait out GC
//! intents, ship what the store lacks, private files, clean up), `memo` (what a DB instance's
//! earlier snapshots learnt: SST hashes, log chains, live SST sets).
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

use crate::backend::KeyedStateBackend;
use crate::checkpoint::CheckpointTicket;
use crate::checkpoint::logfile::complete_prefix_len;
use crate::checkpoint::metadata::{
    self, BackendHandle, LogFile, MAX_SEGMENTS, PinRecord, PrivateFile, SharedFile,
};
use crate::engine::{Engine, STAGING_DIR};
use crate::error::{Error, Result};
use crate::hash::{ContentHash, Segment, hash_file};
use crate::layout::{self, backend_tag, shared_path};
use crate::settings::WalMode;
use crate::state_info::StateInfo;
use crate::store::{Staged, Store, WriteMode};

mod memo;
mod prepare;
mod sync;
mod upload;

use prepare::*;
use upload::*;

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
