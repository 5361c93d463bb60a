//! The keyed state backend: the user's handle on one [`Engine`](crate::engine) — typed states from
//! their descriptors, whole-state scans, flush and compaction. Checkpoints and restores of it live in
//! the checkpoint layer above.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rocksdb::DB;

use crate::descriptor::StateDescriptor;
use crate::engine::Engine;
use crate::error::Result;
use crate::keygroup::KeyGroupRange;
use crate::settings::BackendSettings;
use crate::state::StateCore;
use crate::state_info::StateInfo;

/// Every row of every state as raw bytes: state name → `(row key, value)` in row-key order
/// (see [`KeyedStateBackend::scan_raw`]).
pub type RawScan = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// A keyed state backend: typed states over one RocksDB instance for one key-group range.
///
/// Cheap to clone; clones and the state handles it returns share the same RocksDB instance, which
/// closes when the last of them is dropped.
#[derive(Clone)]
pub struct KeyedStateBackend {
    pub(crate) inner: Arc<Engine>,
}

impl KeyedStateBackend {
    /// Opens (creating if needed) the backend in `dir` for `key_groups` out of `max_parallelism`.
    ///
    /// Reopening a directory brings back every registered state. Opening it with another
    /// `max_parallelism` or key-group range fails with [`ErrorKind::Invalid`](crate::ErrorKind):
    /// use a rescaling restore to change either.
    pub fn open(
        dir: impl AsRef<Path>,
        max_parallelism: u32,
        key_groups: KeyGroupRange,
        settings: BackendSettings,
    ) -> Result<Self> {
        let engine = Engine::open(dir.as_ref(), max_parallelism, key_groups, settings)?;
        Ok(KeyedStateBackend {
            inner: Arc::new(engine),
        })
    }
    /// The directory the backend was opened in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The key groups this backend owns.
    pub fn key_groups(&self) -> KeyGroupRange {
        self.inner.key_groups
    }

    /// The total number of key groups of the job (fixed for the life of its state).
    pub fn max_parallelism(&self) -> u32 {
        self.inner.max_parallelism
    }

    /// The RocksDB instance underneath, for benchmarks and diagnostics (e.g. comparing with RocksDB's
    /// own BackupEngine on the same data). Writing to it bypasses the key layout. Not a stable API.
    #[doc(hidden)]
    pub fn rocksdb(&self) -> &DB {
        &self.inner.db
    }

    /// The settings the backend was opened with.
    pub fn settings(&self) -> &BackendSettings {
        &self.inner.settings
    }

    /// The record of every registered state (name, kind, type tags), by name.
    pub fn states(&self) -> Vec<StateInfo> {
        self.inner.states()
    }

    /// Flushes the memtables of every state to SST files and waits for it. RocksDB flushes by itself
    /// as memtables fill; an explicit flush shortens WAL replay on restore and makes tests exact.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Compacts every state's column family fully and waits for it (e.g. after a bulk delete, to
    /// reclaim space). RocksDB compacts by itself in the background.
    pub fn compact(&self) -> Result<()> {
        self.inner.compact()
    }

    /// Every row of every state as raw bytes, by state name then row key: the reference scan that
    /// tests and verification compare whole states with.
    pub fn scan_raw(&self) -> Result<RawScan> {
        let mut out = BTreeMap::new();
        for name in self.inner.states_read().keys() {
            let core = StateCore::new(self.inner.clone(), name.clone())?;
            let rows = core
                .raw_rows(None)?
                .map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<Vec<_>>>()?;
            out.insert(name.clone(), rows);
        }
        Ok(out)
    }

    /// Registers the state `descriptor` declares, or checks it against the stored record if the
    /// state exists, and returns its handle:
    ///
    /// ```no_run
    /// # use rockpoint::*;
    /// const COUNTS: ValueStateDescriptor<String, u64> = ValueStateDescriptor::new("counts");
    /// # fn main() -> rockpoint::Result<()> {
    /// # let backend = KeyedStateBackend::open("/tmp/b", 128, KeyGroupRange::all(128)?, BackendSettings::default())?;
    /// let counts = backend.state(&COUNTS)?; // a ValueState<String, u64>
    /// # Ok(()) }
    /// ```
    ///
    /// A state keeps its kind and the [type tags](crate::StateType) of its types for the life of the
    /// directory: a descriptor of another kind or with another tag fails with
    /// [`ErrorKind::Invalid`](crate::ErrorKind) naming both.
    pub fn state<D: StateDescriptor>(&self, descriptor: &D) -> Result<D::State> {
        let info = descriptor.info();
        let name = info.name.clone();
        self.inner.register(info)?;
        Ok(descriptor.state(StateCore::new(self.inner.clone(), name)?))
    }
}
