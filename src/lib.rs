//! rockpoint keeps keyed operator state in RocksDB and checkpoints it incrementally.
//!
//! A [`KeyedStateBackend`] owns a key-group range of a job's keys in a local directory. States are
//! registered by name and type, one RocksDB column family each:
//!
//! ```no_run
//! use rockpoint::{BackendSettings, KeyGroupRange, KeyedStateBackend};
//!
//! # fn main() -> rockpoint::Result<()> {
//! let backend = KeyedStateBackend::open("/tmp/wordcount", 128, KeyGroupRange::all(128)?, BackendSettings::default())?;
//! let counts = backend.value_state::<String, u64>("counts")?;
//! let word = "rock".to_string();
//! let n = counts.get(&word)?.unwrap_or(0);
//! counts.put(&word, &(n + 1))?;
//! # Ok(()) }
//! ```
//!
//! See `ARCHITECTURE.md` for the design and the guarantees.

mod backend;
mod checkpoint;
mod codec;
mod descriptor;
mod engine;
mod error;
mod faults;
mod fs;
mod hash;
mod keygroup;
mod layout;
mod settings;
mod state;
mod store;
mod util;

pub use backend::{KeyedStateBackend, RawScan};
pub use checkpoint::CheckpointTicket;
pub use checkpoint::coordinator::{
    CancellationPolicy, CheckpointCoordinator, CheckpointMetrics, CheckpointSettings,
    CompletedCheckpoint, CoordinatorBuilder, JobEnd,
};
pub use checkpoint::gc::{GcOptions, GcReport, collect_garbage};
pub use checkpoint::job::{JobRecord, job_record};
pub use checkpoint::metadata::{
    BackendHandle, CheckpointMetadata, LogFile, METADATA_FORMAT_VERSION, PrivateFile, SharedFile,
};
pub use checkpoint::restore::{
    ClaimMode, DownloadReport, Progress, RestoreSource, RestoreTarget, VerifyReport, backend_for,
    download_backend, latest_checkpoint, read_metadata, restore_backend, verify_checkpoint,
};
pub use checkpoint::snapshot::PendingSnapshot;
pub use descriptor::{StateDescriptor, StateKind};
pub use error::{Error, ErrorKind, Result};
pub use faults::{FailPointRegistry, FaultRegistry};
pub use fs::{Fs, FsEntry, FsRead, FsWrite, StdFs};
pub use hash::{ContentHash, Segment};
pub use keygroup::{KeyGroupRange, MAX_PARALLELISM_LIMIT, key_group_of};
pub use layout::SnapshotKind;
pub use settings::{BackendSettings, Compression, WalMode};
pub use state::{ListState, MapState, ReducingState, ValueState};
pub use store::{
    LocalStore, ObjectInfo, ObjectStoreStore, ObjectVersion, Staged, Store, SweepMode, WriteMode,
};

/// The README's examples are compiled as doc tests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
