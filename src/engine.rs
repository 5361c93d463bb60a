//! The engine under a keyed state backend: one RocksDB instance in a local directory, owning a
//! key-group range, with the registry of its states. [`crate::state`] builds typed access on it and
//! [`crate::backend`] the user's handle; the checkpoint layer snapshots and restores its directory.
//!
//! Each registered state lives in its own column family; its record ([`StateInfo`]: kind and type
//! tags) is kept in the default column family so that reopening the directory brings every state
//! back and a state re-registered with another kind or type tag is refused instead of misread. A
//! record of a rockpoint older than type tags makes the open fail, naming the state. The backend's
//! own identity (max parallelism and key-group range) is kept there too and checked on every open,
//! because the key layout depends on both.
//!
//! Directory layout: `<dir>/db` is the live RocksDB directory, which only RocksDB writes;
//! `<dir>/staging` holds the hard links of in-flight checkpoints (same filesystem, so links never
//! degrade into copies).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode,
    MergeOperands, Options, ReadOptions, WriteOptions,
};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, ErrorDetail, Result};
use crate::hash::{ContentHash, Segment};
use crate::keygroup::{KeyGroupRange, check_max_parallelism};
use crate::settings::{BackendSettings, Compression, WalMode};
use crate::state_info::{StateInfo, StateInfoFormat};

/// Version of the key layout stored in a backend directory. State records carry a format marker
/// of their own (see `state_info`), so a new record format does not change it.
const BACKEND_FORMAT_VERSION: u32 = 1;
const BACKEND_INFO_KEY: &[u8] = b"rockpoint/backend";
const STATE_RECORD_PREFIX: &[u8] = b"rockpoint/state/";
const LIST_MERGE_OPERATOR: &str = "rockpoint.list_concat";
pub(crate) const DB_DIR: &str = "db";
pub(crate) const STAGING_DIR: &str = "staging";

/// What a backend directory records about itself; checked on every open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BackendInfo {
    format_version: u32,
    max_parallelism: u32,
    key_groups: KeyGroupRange,
}

/// One open RocksDB instance and what is known about it.
pub(crate) struct Engine {
    pub(crate) db: DB,
    pub(crate) dir: PathBuf,
    pub(crate) max_parallelism: u32,
    pub(crate) key_groups: KeyGroupRange,
    pub(crate) settings: BackendSettings,
    pub(crate) write_opts: WriteOptions,
    pub(crate) cf_options: Options,
    states: RwLock<BTreeMap<String, StateInfo>>,
    /// SST name → (size, content hash), valid for this DB instance only: RocksDB reuses file
    /// numbers after a reopen from an older state, never within one instance.
    hash_cache: Mutex<HashMap<String, (u64, ContentHash)>>,
    /// Log file name → its segments shipped so far as (offset, segment), for this DB instance.
    log_chains: Mutex<HashMap<String, Vec<(u64, Segment)>>>,
    /// The SSTs the last inspected MANIFEST prefix (name, length) references, for this DB instance.
    live_ssts: Mutex<Option<(String, u64, Vec<String>)>>,
}

impl Engine {
    /// Opens (creating if needed) the engine in `dir`; see [`crate::KeyedStateBackend::open`].
    pub(crate) fn open(
        dir: &Path,
        max_parallelism: u32,
        key_groups: KeyGroupRange,
        settings: BackendSettings,
    ) -> Result<Engine> {
        check_max_parallelism(max_parallelism)?;
        if key_groups.end() > max_parallelism {
            return Err(Error::invalid(format!(
                "key-group range {key_groups} exceeds max_parallelism {max_parallelism}"
            )));
        }
        settings.validate()?;
        let dir = dir.to_path_buf();
        let db_dir = dir.join(DB_DIR);
        std::fs::create_dir_all(&db_dir)
            .map_err(|e| Error::io("creating backend directory", &db_dir, e))?;

        let (db_options, cf_options) = rocksdb_options(&settings);
        let existing = if db_dir.join("CURRENT").exists() {
            DB::list_cf(&db_options, &db_dir)
                .map_err(|e| Error::rocksdb("listing column families", e))?
        } else {
            vec![rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_owned()]
        };
        let descriptors = existing
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
        let db = DB::open_cf_descriptors(&db_options, &db_dir, descriptors)
            .map_err(|e| Error::rocksdb(format!("opening RocksDB in {}", db_dir.display()), e))?;
        // RocksDB's LOCK now excludes every other instance of this directory, so no snapshot of it
        // is in flight: a staging directory left by a killed process only pins compacted-away SSTs.
        let staging = dir.join(STAGING_DIR);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| Error::io("removing leftover staging directory", &staging, e))?;
        }

        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(settings.wal == WalMode::Disabled);

        check_identity(&db, &dir, &write_opts, max_parallelism, key_groups)?;
        let states = load_states(&db, &dir)?;

        Ok(Engine {
            db,
            dir,
            max_parallelism,
            key_groups,
            settings,
            write_opts,
            cf_options,
            states: RwLock::new(states),
            hash_cache: Mutex::new(HashMap::new()),
            log_chains: Mutex::new(HashMap::new()),
            live_ssts: Mutex::new(None),
        })
    }

    /// The record of every registered state, by name.
    pub(crate) fn states(&self) -> Vec<StateInfo> {
        self.states_read().values().cloned().collect()
    }

    /// Flushes the memtables of every state to SST files and waits for it. RocksDB flushes by itself
    /// as memtables fill; an explicit flush shortens WAL replay on restore and makes tests exact.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut names: Vec<String> = self.states_read().keys().cloned().collect();
        names.push(rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_owned());
        for name in names {
            if let Some(cf) = self.db.cf_handle(&name) {
                self.db
                    .flush_cf(&cf)
                    .map_err(|e| Error::rocksdb(format!("flushing state `{name}`"), e))?;
            }
        }
        Ok(())
    }

    /// Compacts every state's column family fully and waits for it (e.g. after a bulk delete, to
    /// reclaim space). RocksDB compacts by itself in the background.
    pub(crate) fn compact(&self) -> Result<()> {
        let names: Vec<String> = self.states_read().keys().cloned().collect();
        for name in names {
            if let Some(cf) = self.db.cf_handle(&name) {
                self.db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
            }
        }
        Ok(())
    }

    /// Registers the state `info` describes, or checks it against the stored record if it exists.
    pub(crate) fn register(&self, info: StateInfo) -> Result<()> {
        validate_state_name(&info.name)?;
        validate_type_tags(&info)?;
        {
            let states = self.states_read();
            if let Some(existing) = states.get(&info.name) {
                check_compatible(existing, &info)?;
                if self.db.cf_handle(&info.name).is_some() {
                    return Ok(());
                }
            }
        }
        let mut states = self
            .states
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = states.get(&info.name) {
            check_compatible(existing, &info)?;
        } else {
            // The record goes first: a crash before the column family exists leaves a record
            // whose column family is created on the next registration.
            let mut key = STATE_RECORD_PREFIX.to_vec();
            key.extend_from_slice(info.name.as_bytes());
            let bytes = codec::encode(&info.name, "state record", &info)?;
            self.db
                .put_opt(key, bytes, &self.write_opts)
                .map_err(|e| Error::rocksdb(format!("registering state `{}`", info.name), e))?;
        }
        if self.db.cf_handle(&info.name).is_none() {
            self.db
                .create_cf(&info.name, &self.cf_options)
                .map_err(|e| {
                    Error::rocksdb(
                        format!("creating column family for state `{}`", info.name),
                        e,
                    )
                })?;
        }
        states.insert(info.name.clone(), info);
        Ok(())
    }
    pub(crate) fn states_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, StateInfo>> {
        self.states
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn db_dir(&self) -> PathBuf {
        self.dir.join(DB_DIR)
    }

    pub(crate) fn hash_cache(&self) -> MutexGuard<'_, HashMap<String, (u64, ContentHash)>> {
        self.hash_cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log_chains(&self) -> MutexGuard<'_, HashMap<String, Vec<(u64, Segment)>>> {
        self.log_chains.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn live_ssts(&self) -> MutexGuard<'_, Option<(String, u64, Vec<String>)>> {
        self.live_ssts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Checks the backend identity (format, max parallelism, key-group range) recorded in the directory
/// against the one it is opened for, recording it on first open: the key layout depends on both.
fn check_identity(
    db: &DB,
    dir: &Path,
    write_opts: &WriteOptions,
    max_parallelism: u32,
    key_groups: KeyGroupRange,
) -> Result<()> {
    let info = BackendInfo {
        format_version: BACKEND_FORMAT_VERSION,
        max_parallelism,
        key_groups,
    };
    match db
        .get(BACKEND_INFO_KEY)
        .map_err(|e| Error::rocksdb("reading backend info", e))?
    {
        Some(bytes) => {
            let stored: BackendInfo = codec::decode("<backend>", "backend info", &bytes)?;
            if stored != info {
                return Err(Error::invalid(format!(
                    "backend directory {} holds key groups {} of max_parallelism {} (format {}), \
                     but was opened for key groups {} of max_parallelism {} (format {})",
                    dir.display(),
                    stored.key_groups,
                    stored.max_parallelism,
                    stored.format_version,
                    key_groups,
                    max_parallelism,
                    BACKEND_FORMAT_VERSION
                )));
            }
        }
        None => {
            let bytes = codec::encode("<backend>", "backend info", &info)?;
            db.put_opt(BACKEND_INFO_KEY, bytes, write_opts)
                .map_err(|e| Error::rocksdb("writing backend info", e))?;
        }
    }
    Ok(())
}

/// Every state record of the directory, by name. A record written before type tags is refused.
fn load_states(db: &DB, dir: &Path) -> Result<BTreeMap<String, StateInfo>> {
    let mut states = BTreeMap::new();
    let mut read_opts = ReadOptions::default();
    read_opts.set_iterate_lower_bound(STATE_RECORD_PREFIX.to_vec());
    if let Some(upper) = codec::prefix_successor(STATE_RECORD_PREFIX) {
        read_opts.set_iterate_upper_bound(upper);
    }
    for row in db.iterator_opt(IteratorMode::Start, read_opts) {
        let (key, value) = row.map_err(|e| Error::rocksdb("reading state records", e))?;
        let name = String::from_utf8_lossy(&key[STATE_RECORD_PREFIX.len()..]).into_owned();
        let info: StateInfo = codec::decode(&name, "state record", &value)?;
        if info.name != name {
            return Err(codec::decode_error(
                &name,
                "state record",
                format!("the record names another state `{}`", info.name),
            ));
        }
        if info.format == StateInfoFormat::RustTypeNames {
            return Err(ErrorDetail::StateOfRustTypeNames {
                state: name,
                recorded: info.describe(),
                place: format!("backend directory {}", dir.display()),
            }
            .into());
        }
        states.insert(name, info);
    }
    Ok(states)
}

fn check_compatible(existing: &StateInfo, requested: &StateInfo) -> Result<()> {
    if existing == requested {
        return Ok(());
    }
    Err(ErrorDetail::StateIncompatible {
        state: existing.name.clone(),
        registered: existing.describe(),
        requested: requested.describe(),
    }
    .into())
}

fn validate_state_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != rocksdb::DEFAULT_COLUMN_FAMILY_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "state name `{name}`: use 1 to 200 characters of [A-Za-z0-9_.-], and not `default`"
        )))
    }
}

/// A tag is compared, printed and stored: refuse one that could not be read back in a message.
fn validate_type_tags(info: &StateInfo) -> Result<()> {
    let tags = [
        Some(&info.key_tag),
        Some(&info.value_tag),
        info.user_key_tag.as_ref(),
    ];
    for tag in tags.into_iter().flatten() {
        if tag.is_empty() || tag.len() > 1000 || tag.chars().any(|c| c.is_control()) {
            return Err(Error::invalid(format!(
                "state `{}`: type tag `{}` must be 1 to 1000 characters without control characters",
                info.name,
                tag.escape_debug()
            )));
        }
    }
    Ok(())
}

/// RocksDB options for the DB and for every column family. All column families share one block
/// cache and the list-concatenation merge operator (only list state ever issues merges).
fn rocksdb_options(settings: &BackendSettings) -> (Options, Options) {
    let cache = Cache::new_lru_cache(settings.block_cache_size_bytes);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);

    let mut cf = Options::default();
    cf.set_write_buffer_size(settings.write_buffer_size_bytes);
    cf.set_max_write_buffer_number(settings.max_write_buffer_number);
    cf.set_target_file_size_base(settings.target_file_size_bytes);
    cf.set_compression_type(match settings.compression {
        Compression::None => DBCompressionType::None,
        Compression::Lz4 => DBCompressionType::Lz4,
        Compression::Zstd => DBCompressionType::Zstd,
    });
    cf.set_block_based_table_factory(&table);
    cf.set_merge_operator_associative(LIST_MERGE_OPERATOR, concat_merge);

    let mut db = cf.clone();
    db.create_if_missing(true);
    db.create_missing_column_families(true);
    db.set_max_background_jobs(settings.max_background_jobs);
    db.set_max_manifest_file_size(settings.max_manifest_file_size_bytes);
    // Checkpoints ship WAL files as append-only logs; a recycled WAL would be rewritten in place.
    db.set_recycle_log_file_num(0);
    // After a restore, keep the replayed WALs instead of flushing them into new SSTs: the first
    // checkpoint then reuses the restored WAL segments instead of uploading their data again.
    let db = db
        .get_options_from_string("avoid_flush_during_recovery=true")
        .expect("a valid RocksDB option string");
    (db, cf)
}

/// Merge operator of list state: an element list is the concatenation of MessagePack values, so
/// appending is concatenation, and concatenation is associative.
fn concat_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let len = existing.map_or(0, <[u8]>::len) + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    if let Some(existing) = existing {
        out.extend_from_slice(existing);
    }
    for operand in operands.iter() {
        out.extend_from_slice(operand);
    }
    Some(out)
}

/// What [`rescope`] did to one backend directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RescopeReport {
    /// Entries copied in from other backends' directories.
    pub(crate) copied_entries: u64,
    /// Bytes of the SST files those copies were ingested as.
    pub(crate) copied_bytes: u64,
}

/// Turns the RocksDB directory of a backend of key groups `from` (restored files, not open
/// elsewhere) into a backend of key groups `to` of the same job: everything outside `to` is
/// deleted — whole SST files where RocksDB allows (`DeleteFilesInRange`), then a range tombstone
/// over the rest, so no key group outside `to` is ever seen again, by scans or by restores of
/// later checkpoints — and the key groups of `to` that `from` lacks are copied in from the
/// directories in `copies` (backend directories of the same checkpoint, each with its range),
/// through SST files written in key order and ingested (no memtable, no WAL). The states of the
/// copies join the directory's registry; a state recorded with another kind or tag is refused.
/// The directory's identity is rewritten for `to` last, and the log is synced before the
/// directory is closed, so a crash leaves a directory that [`Engine::open`] refuses (identity of
/// `from`) rather than a half-clipped one that it accepts.
pub(crate) fn rescope(
    dir: &Path,
    settings: &BackendSettings,
    max_parallelism: u32,
    from: KeyGroupRange,
    to: KeyGroupRange,
    copies: &[(KeyGroupRange, PathBuf)],
) -> Result<RescopeReport> {
    let db_dir = dir.join(DB_DIR);
    let (db_options, cf_options) = rocksdb_options(settings);
    let db = open_all_cfs(&db_options, &cf_options, &db_dir, false)?;
    let expected = BackendInfo {
        format_version: BACKEND_FORMAT_VERSION,
        max_parallelism,
        key_groups: from,
    };
    let stored: Option<BackendInfo> = db
        .get(BACKEND_INFO_KEY)
        .map_err(|e| Error::rocksdb("reading backend info", e))?
        .map(|bytes| codec::decode("<backend>", "backend info", &bytes))
        .transpose()?;
    if stored.as_ref() != Some(&expected) {
        return Err(Error::corruption(format!(
            "restored directory {} does not hold key groups {from} of max_parallelism \
             {max_parallelism} as its checkpoint recorded (it holds {stored:?})",
            db_dir.display()
        )));
    }
    let mut states = load_states(&db, dir)?;
    let write_opts = WriteOptions::default();
    // Clip: whole files first, then a tombstone over everything outside `to` (the tombstone also
    // hides older versions of keys whose newest version lay in a dropped file).
    let outside: Vec<(Vec<u8>, Vec<u8>)> = [
        (to.start() > 0).then(|| (Vec::new(), (to.start() as u16).to_be_bytes().to_vec())),
        (to.end() < max_parallelism).then(|| {
            (
                (to.end() as u16).to_be_bytes().to_vec(),
                (max_parallelism as u16).to_be_bytes().to_vec(),
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut last_err = None;
    for name in states.keys() {
        let cf = db
            .cf_handle(name)
            .ok_or_else(|| Error::corruption(format!("state `{name}` has no column family")))?;
        for (low, high) in &outside {
            db.delete_file_in_range_cf(&cf, low, high)
                .map_err(|e| Error::rocksdb(format!("dropping files of state `{name}`"), e))?;
            if let Err(e) = db.delete_range_cf_opt(&cf, low, high, &write_opts) {
                last_err = Some(Error::rocksdb(format!("clipping state `{name}`"), e));
            }
        }
    }
    if let Some(e) = last_err {
        return Err(e);
    }
    // Copy in what other backends hold of `to`.
    let mut report = RescopeReport::default();
    let staging = dir.join(STAGING_DIR);
    std::fs::create_dir_all(&staging).map_err(|e| Error::io("creating", &staging, e))?;
    for (range, source_dir) in copies {
        let Some(part) = range.intersect(&to) else {
            continue;
        };
        let source = open_all_cfs(&db_options, &cf_options, &source_dir.join(DB_DIR), true)?;
        for (name, info) in load_states(&source, source_dir)? {
            match states.get(&name) {
                Some(existing) => check_compatible(existing, &info)?,
                None => {
                    let mut key = STATE_RECORD_PREFIX.to_vec();
                    key.extend_from_slice(name.as_bytes());
                    db.put_opt(
                        key,
                        codec::encode(&name, "state record", &info)?,
                        &write_opts,
                    )
                    .map_err(|e| Error::rocksdb(format!("registering state `{name}`"), e))?;
                    db.create_cf(&name, &cf_options).map_err(|e| {
                        Error::rocksdb(format!("creating column family for state `{name}`"), e)
                    })?;
                    states.insert(name.clone(), info);
                }
            }
            let copied = copy_range(&source, &db, &cf_options, &name, part, &staging)?;
            report.copied_entries += copied.0;
            report.copied_bytes += copied.1;
        }
    }
    let info = BackendInfo {
        key_groups: to,
        ..expected
    };
    db.put_opt(
        BACKEND_INFO_KEY,
        codec::encode("<backend>", "backend info", &info)?,
        &write_opts,
    )
    .map_err(|e| Error::rocksdb("writing backend info", e))?;
    // Not flushed: the base's logs stay as they were restored (so the first checkpoint reuses
    // their segments) and the clip lives in a new log, synced here.
    db.flush_wal(true)
        .map_err(|e| Error::rocksdb("syncing the write-ahead log", e))?;
    drop(db);
    std::fs::remove_dir_all(&staging).map_err(|e| Error::io("removing", &staging, e))?;
    Ok(report)
}

/// Opens the RocksDB directory `db_dir` with every column family it has.
fn open_all_cfs(
    db_options: &Options,
    cf_options: &Options,
    db_dir: &Path,
    read_only: bool,
) -> Result<DB> {
    let names = DB::list_cf(db_options, db_dir).map_err(|e| {
        Error::rocksdb(
            format!("listing column families of {}", db_dir.display()),
            e,
        )
    })?;
    let descriptors = names
        .iter()
        .map(|name| ColumnFamilyDescriptor::new(name, cf_options.clone()));
    let opened = if read_only {
        DB::open_cf_descriptors_read_only(db_options, db_dir, descriptors, false)
    } else {
        DB::open_cf_descriptors(db_options, db_dir, descriptors)
    };
    opened.map_err(|e| Error::rocksdb(format!("opening RocksDB in {}", db_dir.display()), e))
}

/// Copies the rows of state `name` in key groups `part` from `source` into `target` as one
/// ingested SST file; returns (entries, file bytes).
fn copy_range(
    source: &DB,
    target: &DB,
    cf_options: &Options,
    name: &str,
    part: KeyGroupRange,
    staging: &Path,
) -> Result<(u64, u64)> {
    let (Some(from_cf), Some(to_cf)) = (source.cf_handle(name), target.cf_handle(name)) else {
        return Err(Error::corruption(format!(
            "state `{name}` has no column family"
        )));
    };
    let (low, high) = codec::range_bounds(part);
    let mut read_opts = ReadOptions::default();
    read_opts.set_iterate_lower_bound(low);
    read_opts.set_iterate_upper_bound(high);
    read_opts.fill_cache(false);
    read_opts.set_readahead_size(4 << 20);
    let file = staging.join(format!("copy-{}.sst", crate::util::nonce()));
    let mut writer = rocksdb::SstFileWriter::create(cf_options);
    writer
        .open(&file)
        .map_err(|e| Error::rocksdb(format!("creating {}", file.display()), e))?;
    let mut entries = 0u64;
    for row in source.iterator_cf_opt(&from_cf, read_opts, IteratorMode::Start) {
        let (key, value) =
            row.map_err(|e| Error::rocksdb(format!("reading state `{name}` to copy it"), e))?;
        writer
            .put(&key, &value)
            .map_err(|e| Error::rocksdb(format!("writing a copy of state `{name}`"), e))?;
        entries += 1;
    }
    if entries == 0 {
        drop(writer);
        let _ = std::fs::remove_file(&file);
        return Ok((0, 0));
    }
    writer
        .finish()
        .map_err(|e| Error::rocksdb(format!("finishing a copy of state `{name}`"), e))?;
    let bytes = std::fs::metadata(&file)
        .map_err(|e| Error::io("inspecting", &file, e))?
        .len();
    let mut ingest = rocksdb::IngestExternalFileOptions::default();
    ingest.set_move_files(true);
    target
        .ingest_external_file_cf_opts(&to_cf, &ingest, vec![&file])
        .map_err(|e| Error::rocksdb(format!("ingesting a copy of state `{name}`"), e))?;
    Ok((entries, bytes))
}
