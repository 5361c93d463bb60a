//! rockpoint keeps keyed operator state in RocksDB and checkpoints it incrementally.
//!
//! A [`KeyedStateBackend`] owns a key-group range of a job's keys in a local directory. States are
//! declared as constants that name them and their types — like Flink's `ValueStateDescriptor` — and
//! [`KeyedStateBackend::state`] turns a declaration into a handle; each state is one RocksDB column
//! family:
//!
//! ```no_run
//! use rockpoint::{BackendSettings, KeyGroupRange, KeyedStateBackend, ReducingStateDescriptor, ValueStateDescriptor};
//!
//! const COUNTS: ValueStateDescriptor<String, u64> = ValueStateDescriptor::new("counts");
//! const TOTALS: ReducingStateDescriptor<String, u64> = ReducingStateDescriptor::new("totals", |a, b| a + b);
//!
//! # fn main() -> rockpoint::Result<()> {
//! let backend = KeyedStateBackend::open("/tmp/wordcount", 128, KeyGroupRange::all(128)?, BackendSettings::default())?;
//! let counts = backend.state(&COUNTS)?; // ValueState<String, u64>
//! let word = "rock".to_string();
//! let n = counts.get(&word)?.unwrap_or(0);
//! counts.put(&word, &(n + 1))?;
//! backend.state(&TOTALS)?.add(&word, 1)?;
//! # Ok(()) }
//! ```
//!
//! There are four kinds, one descriptor each: [`ValueStateDescriptor`] ([`ValueState`]),
//! [`ListStateDescriptor`] ([`ListState`]), [`MapStateDescriptor`] ([`MapState`]) and
//! [`ReducingStateDescriptor`] ([`ReducingState`]).
//!
//! Keys and values are any serde types that implement [`StateType`], which gives each type a stable
//! **type tag**: `u64`, `string`, `vec<u8>`, `map<string,u64>`, …, and for your own types the tag
//! you choose, in one line:
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order { id: u64, cents: i64 }
//!
//! rockpoint::state_type!(Order = "shop.Order/v1");
//!
//! const ORDERS: rockpoint::MapStateDescriptor<String, u64, Order> =
//!     rockpoint::MapStateDescriptor::new("orders");
//! ```
//!
//! A state's kind and type tags are recorded with it ([`StateInfo`]) in its backend directory and
//! in every checkpoint, and are part of the on-disk format: registering the state again with another
//! kind or tag fails with [`ErrorKind::Invalid`] naming both. Change a tag (`shop.Order/v1` →
//! `shop.Order/v2`) exactly when the stored bytes can no longer be read as the new type.
//!
//! A [`CheckpointCoordinator`] checkpoints a job's backends into a root (a [`Store`]: a local
//! directory or any `object_store` backend); [`restore_backend`] and [`CheckpointCoordinator::restore`]
//! bring a checkpoint back, [`verify_checkpoint`] checks one, [`collect_garbage`] cleans a root.
//! Beyond the top level: [`admin`] (a read-only view of a root's jobs and checkpoints), [`restore`]
//! (restore step by step), [`format`] (the metadata's vocabulary), [`store`] (the [`Store`] seam, for
//! implementations outside the crate), [`testing`] (test seams).
//!
//! See `ARCHITECTURE.md` for the design and the guarantees.

pub mod admin;
#[cfg(test)]
mod architecture;
mod backend;
pub mod canonical;
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
pub mod metrics;
mod settings;
mod state;
mod state_info;
mod state_type;
pub mod store;
mod util;

// Keyed state.
pub use backend::{KeyedStateBackend, RawScan};
pub use descriptor::{
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, StateDescriptor,
    ValueStateDescriptor,
};
pub use keygroup::{KeyGroupRange, MAX_PARALLELISM_LIMIT, key_group_of};
pub use settings::{BackendSettings, Compression, WalMode};
pub use state::{ListState, MapState, ReducingState, ValueState};
pub use state_info::{StateInfo, StateKind};
pub use state_type::StateType;
// Checkpoints.
pub use checkpoint::CheckpointTicket;
pub use checkpoint::coordinator::{
    CancellationPolicy, CheckpointCoordinator, CheckpointMetrics, CheckpointSettings,
    CompletedCheckpoint, CoordinatorBuilder, JobEnd,
};
pub use checkpoint::metadata::{BackendHandle, CheckpointMetadata};
pub use checkpoint::snapshot::PendingSnapshot;
pub use layout::SnapshotKind;
// Restore, verify, GC.
pub use checkpoint::gc::{GcOptions, GcReport, collect_garbage};
pub use checkpoint::relocate::{ExportReport, export_snapshot};
pub use checkpoint::restore::{
    ClaimMode, Progress, RestoreSource, RestoreTarget, VerifyReport, restore_backend,
    verify_checkpoint,
};
// Storage roots.
pub use store::{LocalStore, ObjectStoreStore, RootOptions, Store, SweepMode, open_root};
// Errors.
pub use error::{Error, ErrorKind, Result};

/// Lower-level restore steps, for tools that restore one backend at a time or inspect a source
/// first: resolve a source to its metadata, pick the handle for a key-group range, download it.
pub mod restore {
    pub use crate::checkpoint::restore::{
        DownloadReport, RestoreRoute, backend_for, download_backend, latest_checkpoint,
        plan_restore, read_metadata, restore_backends, restore_backends_until,
        verify_checkpoint_with_progress,
    };
}

/// The on-disk vocabulary of a checkpoint's metadata, for tools that read it: its files, their
/// content hashes, and the format version.
pub mod format {
    pub use crate::checkpoint::metadata::{
        CANONICAL_FILE, LogFile, METADATA_FORMAT_VERSION, PrivateFile, SharedFile, SnapshotFormat,
    };
    pub use crate::hash::{ContentHash, Segment};
    pub use crate::state_info::StateInfoFormat;
}

/// Test seams: the filesystem under [`LocalStore`](crate::LocalStore) (to simulate crashes and
/// failed fsyncs) and named fault points (with the `failpoints` feature). Not needed in production.
pub mod testing {
    pub use crate::faults::{FailPointRegistry, FaultRegistry};
    pub use crate::fs::{Fs, FsEntry, FsRead, FsWrite, StdFs};
}

/// The README's examples are compiled as doc tests, so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
