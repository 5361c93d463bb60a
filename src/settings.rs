//! Settings of a keyed state backend: plain data (serde), documented defaults, one `validate()`.
//! Components (storage, clock, fault registry) are never settings; they are injected by builders.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Block compression of SST files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression.
    None,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard: slower, better ratio.
    Zstd,
}

/// Whether writes go through RocksDB's write-ahead log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WalMode {
    /// Writes are logged; a checkpoint's synchronous phase only records the WAL length and its
    /// asynchronous phase ships the WAL suffix, so the operator pauses for well under a millisecond.
    Enabled,
    /// Writes skip the WAL (faster writes). Unlogged writes live only in the memtable, so a
    /// checkpoint must flush the memtable in its synchronous phase (a pause of tens to hundreds of
    /// milliseconds), and a process crash loses writes since the last flush.
    Disabled,
}

/// Tuning of the RocksDB instance behind a keyed state backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSettings {
    /// Size of one memtable before it is flushed to an SST. Default: 64 MiB.
    pub write_buffer_size_bytes: usize,
    /// Most memtables per column family (one active, the rest flushing). Default: 2.
    pub max_write_buffer_number: i32,
    /// Target size of an SST produced by compaction. Default: 64 MiB.
    pub target_file_size_bytes: u64,
    /// Compression of SST blocks. Default: `Lz4`.
    pub compression: Compression,
    /// Capacity of the LRU block cache shared by all states of the backend. Default: 64 MiB.
    pub block_cache_size_bytes: usize,
    /// Write-ahead logging of state writes. Default: `Enabled`.
    pub wal: WalMode,
    /// Background flush and compaction threads. Default: 2.
    pub max_background_jobs: i32,
    /// Size at which RocksDB starts a new MANIFEST. A checkpoint ships the MANIFEST's new bytes
    /// only, but restores replay all of it, so it is kept small. Default: 4 MiB.
    pub max_manifest_file_size_bytes: usize,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            write_buffer_size_bytes: 64 << 20,
            max_write_buffer_number: 2,
            target_file_size_bytes: 64 << 20,
            compression: Compression::Lz4,
            block_cache_size_bytes: 64 << 20,
            wal: WalMode::Enabled,
            max_background_jobs: 2,
            max_manifest_file_size_bytes: 4 << 20,
        }
    }
}

impl BackendSettings {
    /// Checks every field; the backend calls it on open.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::invalid(format!("backend settings: {what}")))
            }
        };
        check(
            self.write_buffer_size_bytes >= 64 << 10,
            "write_buffer_size_bytes must be at least 64 KiB",
        )?;
        check(
            (2..=64).contains(&self.max_write_buffer_number),
            "max_write_buffer_number must be in 2..=64",
        )?;
        check(
            self.target_file_size_bytes >= 64 << 10,
            "target_file_size_bytes must be at least 64 KiB",
        )?;
        check(
            (1..=64).contains(&self.max_background_jobs),
            "max_background_jobs must be in 1..=64",
        )?;
        check(
            self.max_manifest_file_size_bytes >= 64 << 10,
            "max_manifest_file_size_bytes must be at least 64 KiB",
        )?;
        Ok(())
    }
}
