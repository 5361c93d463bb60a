//! Checkpoint metadata (the commit record), pin records, and their envelope.
//!
//! Envelope: magic (8 bytes), format version (u32 LE), body length (u64 LE), BLAKE3 of the body,
//! body (MessagePack). `decode` checks all of them before decoding and then validates the body;
//! `encode` validates right before writing (pair assertions, G5). Validation rejects anything the
//! engine could not have written: paths that escape, unknown file shapes, absurd sizes.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{ContentHash, Segment};
use crate::keygroup::{KeyGroupRange, check_max_parallelism};
use crate::layout::{
    SnapshotKind, backend_tag, metadata_path, private_file_path, validate_job_id,
    validate_object_path,
};
use crate::state_info::StateInfo;

pub(crate) const METADATA_MAGIC: &[u8; 8] = b"RKPTMETA";
pub(crate) const PIN_MAGIC: &[u8; 8] = b"RKPTPIN\0";
pub(crate) const TICKET_MAGIC: &[u8; 8] = b"RKPTTICK";
pub(crate) const HANDLE_MAGIC: &[u8; 8] = b"RKPTHNDL";
/// Version of the metadata, pin and job record format this build writes. 2: states are recorded
/// by stable type tags (`StateInfo`), no longer by Rust type names. Version 1 is still read (its
/// states then say `StateInfoFormat::RustTypeNames`); a build that reads only version 1 reports
/// version 2 records by their version instead of misreading them.
/// 3: a savepoint may be in the canonical format (`SnapshotFormat::Canonical`); only such records
/// are written as version 3, so a build that reads up to version 2 refuses them by their version
/// instead of misreading them, and reads every native record.
pub const METADATA_FORMAT_VERSION: u32 = 3;
/// The version native records are written with (they need nothing of version 3).
const NATIVE_WRITE_VERSION: u32 = 2;
/// The oldest format version this build reads.
const OLDEST_READ_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8 + 32;
/// Largest size of one file the engine accepts from metadata.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 40;
/// Longest chain of segments of one log file.
pub(crate) const MAX_SEGMENTS: usize = 128;
const MAX_FILES_PER_BACKEND: usize = 1_000_000;
const MAX_BACKENDS: usize = 32_768;

/// An immutable SST stored once under its content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFile {
    /// BLAKE3 of its bytes; also its name in the store.
    pub hash: ContentHash,
    /// Size in bytes.
    pub size: u64,
    /// Its name in the RocksDB directory (`000123.sst`).
    pub local_name: String,
}

/// A WAL or MANIFEST file: the concatenation of its segments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFile {
    /// Its name in the RocksDB directory (`000042.log`, `MANIFEST-000007`).
    pub local_name: String,
    /// Its bytes, in order.
    pub segments: Vec<Segment>,
}

impl LogFile {
    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

/// A file that belongs to one checkpoint, stored under the checkpoint's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivateFile {
    /// Object path relative to the store root.
    pub path: String,
    /// Its name in the RocksDB directory (`OPTIONS-000009`).
    pub local_name: String,
    /// BLAKE3 of its bytes.
    pub hash: ContentHash,
    /// Size in bytes.
    pub size: u64,
}

/// How a snapshot's state is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotFormat {
    /// RocksDB's own files (SSTs, logs, MANIFEST, OPTIONS): incremental, restored by download.
    #[default]
    Native,
    /// One canonical stream per backend (`docs/canonical-format.md`): every entry of every state
    /// in key-group order, independent of RocksDB; savepoints only.
    Canonical,
}

/// The local name of a canonical savepoint's stream, a private file of its backend.
pub const CANONICAL_FILE: &str = "state.rkpc";

/// What one backend's snapshot produced: everything needed to restore it, plus transfer figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHandle {
    /// The key groups the backend owned.
    pub key_groups: KeyGroupRange,
    /// The job's max parallelism.
    pub max_parallelism: u32,
    /// Every registered state.
    pub states: Vec<StateInfo>,
    /// Referenced SSTs.
    pub shared_files: Vec<SharedFile>,
    /// WAL and MANIFEST files.
    pub log_files: Vec<LogFile>,
    /// Files owned by this checkpoint.
    pub private_files: Vec<PrivateFile>,
    /// The MANIFEST that `CURRENT` names.
    pub manifest_name: String,
    /// Bytes this snapshot uploaded (new shared files, new segments, private files).
    pub uploaded_bytes: u64,
    /// Number of objects this snapshot uploaded.
    pub uploaded_files: u64,
    /// Bytes of shared files and segments it reused instead of uploading.
    pub reused_bytes: u64,
    /// Number of shared files and segments it reused.
    pub reused_files: u64,
    /// How long the synchronous phase blocked the operator, in microseconds.
    pub sync_pause_us: u64,
    /// How long the asynchronous phase took, in microseconds.
    pub async_duration_us: u64,
}

impl BackendHandle {
    /// The handle's wire form, for a backend that snapshots and uploads in another process or on
    /// another host and hands its handle to the coordinator's process: the checksummed envelope
    /// of metadata records (magic `RKPTHNDL`, format version, length, BLAKE3) around a
    /// MessagePack map of this struct's fields (see `docs/protocols.md`, "Backends on several
    /// hosts").
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = rmp_serde::to_vec_named(self)
            .map_err(|e| Error::invalid(format!("encoding a backend handle: {e}")))?;
        Ok(seal(HANDLE_MAGIC, &body))
    }

    /// Reads a handle's [wire form](Self::to_bytes). A damaged or foreign message is
    /// `Corruption`; [`complete`](crate::CheckpointCoordinator::complete) validates the handle
    /// against its checkpoint before anything is committed.
    pub fn from_bytes(bytes: &[u8]) -> Result<BackendHandle> {
        let body = unseal(HANDLE_MAGIC, bytes, "backend handle")?;
        rmp_serde::from_slice(body)
            .map_err(|e| Error::corruption(format!("backend handle: undecodable body: {e}")))
    }

    /// Every content hash the backend references (SSTs and log segments).
    pub fn shared_hashes(&self) -> impl Iterator<Item = ContentHash> + '_ {
        self.shared_objects().map(|(hash, _)| hash)
    }

    /// Every shared object the backend references (SSTs and log segments), with its size.
    pub(crate) fn shared_objects(&self) -> impl Iterator<Item = (ContentHash, u64)> + '_ {
        self.shared_files.iter().map(|f| (f.hash, f.size)).chain(
            self.log_files
                .iter()
                .flat_map(|l| l.segments.iter().map(|s| (s.hash, s.size))),
        )
    }

    /// Total bytes of every file the backend references.
    pub fn full_size_bytes(&self) -> u64 {
        self.shared_files.iter().map(|f| f.size).sum::<u64>()
            + self.log_files.iter().map(LogFile::size).sum::<u64>()
            + self.private_files.iter().map(|f| f.size).sum::<u64>()
    }

    /// Whether the handle is a canonical stream (no RocksDB files, one [`CANONICAL_FILE`]) or
    /// RocksDB's files; validation checks it is wholly one or the other.
    pub fn format(&self) -> SnapshotFormat {
        let canonical = self.manifest_name.is_empty()
            && self.shared_files.is_empty()
            && self.log_files.is_empty()
            && self
                .private_files
                .iter()
                .any(|f| f.local_name == CANONICAL_FILE);
        if canonical {
            SnapshotFormat::Canonical
        } else {
            SnapshotFormat::Native
        }
    }

    /// The directory name of the backend's private files (`kg-<start>-<end>`).
    pub(crate) fn tag(&self) -> String {
        backend_tag(self.key_groups)
    }

    fn validate(
        &self,
        job_id: &str,
        kind: SnapshotKind,
        id: u64,
        format: SnapshotFormat,
    ) -> Result<()> {
        check_max_parallelism(self.max_parallelism)?;
        if self.key_groups.end() > self.max_parallelism {
            return Err(Error::corruption(format!(
                "backend {} exceeds max_parallelism {}",
                self.key_groups, self.max_parallelism
            )));
        }
        let files = self.shared_files.len() + self.log_files.len() + self.private_files.len();
        if files > MAX_FILES_PER_BACKEND || self.states.len() > MAX_FILES_PER_BACKEND {
            return Err(Error::corruption(format!(
                "backend {} lists {files} files",
                self.key_groups
            )));
        }
        if format == SnapshotFormat::Canonical {
            return self.validate_canonical(job_id, kind, id);
        }
        let mut names = HashSet::new();
        let mut unique = |name: &str| -> Result<()> {
            if names.insert(name.to_owned()) {
                Ok(())
            } else {
                Err(Error::corruption(format!(
                    "local file `{name}` is listed twice"
                )))
            }
        };
        for file in &self.shared_files {
            check_local_name(&file.local_name, LocalKind::Sst)?;
            check_size(&file.local_name, file.size)?;
            unique(&file.local_name)?;
        }
        let mut has_manifest = false;
        for log in &self.log_files {
            check_local_name(&log.local_name, LocalKind::Log)?;
            unique(&log.local_name)?;
            if log.segments.len() > MAX_SEGMENTS {
                return Err(Error::corruption(format!(
                    "log file `{}` has {} segments (at most {MAX_SEGMENTS})",
                    log.local_name,
                    log.segments.len()
                )));
            }
            let mut total = 0u64;
            for segment in &log.segments {
                check_size(&log.local_name, segment.size)?;
                total = total.saturating_add(segment.size);
            }
            check_size(&log.local_name, total)?;
            has_manifest |= log.local_name == self.manifest_name;
        }
        check_local_name(&self.manifest_name, LocalKind::Log)?;
        if !self.manifest_name.starts_with("MANIFEST-") || !has_manifest {
            return Err(Error::corruption(format!(
                "manifest `{}` is not among the backend's log files",
                self.manifest_name
            )));
        }
        for file in &self.private_files {
            check_local_name(&file.local_name, LocalKind::Private)?;
            check_size(&file.local_name, file.size)?;
            unique(&file.local_name)?;
            self.check_private_path(job_id, kind, id, file)?;
        }
        self.check_state_names()
    }

    /// A canonical backend is one stream, a private file named [`CANONICAL_FILE`], and nothing
    /// of RocksDB's.
    fn validate_canonical(&self, job_id: &str, kind: SnapshotKind, id: u64) -> Result<()> {
        if kind != SnapshotKind::Savepoint {
            return Err(Error::corruption(format!(
                "checkpoint {id} of job `{job_id}` is in the canonical format, which only \
                 savepoints use"
            )));
        }
        let [file] = self.private_files.as_slice() else {
            return Err(Error::corruption(format!(
                "canonical backend {} lists {} private files, not its one stream",
                self.key_groups,
                self.private_files.len()
            )));
        };
        if !self.shared_files.is_empty()
            || !self.log_files.is_empty()
            || !self.manifest_name.is_empty()
            || file.local_name != CANONICAL_FILE
        {
            return Err(Error::corruption(format!(
                "canonical backend {} lists RocksDB files or a file other than `{CANONICAL_FILE}`",
                self.key_groups
            )));
        }
        check_size(&file.local_name, file.size)?;
        self.check_private_path(job_id, kind, id, file)?;
        self.check_state_names()
    }

    fn check_private_path(
        &self,
        job_id: &str,
        kind: SnapshotKind,
        id: u64,
        file: &PrivateFile,
    ) -> Result<()> {
        validate_object_path(&file.path).map_err(|_| {
            Error::corruption(format!(
                "private file path `{}` is not a valid object path",
                file.path
            ))
        })?;
        // A private file lives in its own checkpoint's directory, under its own name: a discard
        // or claim deletes these paths, so one pointing anywhere else would delete someone
        // else's record.
        let own = private_file_path(job_id, kind, id, &self.tag(), &file.local_name);
        if file.path != own {
            return Err(Error::corruption(format!(
                "private file `{}` of checkpoint {id} of job `{job_id}` is not `{own}`",
                file.path
            )));
        }
        Ok(())
    }

    fn check_state_names(&self) -> Result<()> {
        for state in &self.states {
            if state.name.is_empty()
                || state.name.len() > 200
                || !state
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(Error::corruption(format!(
                    "state name `{}` is not valid",
                    state.name
                )));
            }
        }
        Ok(())
    }
}

/// The commit record of a checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// The job that took it.
    pub job_id: String,
    /// Its id, increasing within the job.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// The job's max parallelism.
    pub max_parallelism: u32,
    /// One handle per backend, with disjoint key-group ranges.
    pub backends: Vec<BackendHandle>,
    /// Bytes uploaded for this checkpoint (what was new).
    pub checkpointed_size_bytes: u64,
    /// Bytes of every file it references.
    pub full_size_bytes: u64,
    /// How its backends are stored (absent in records of older builds: native).
    #[serde(default)]
    pub format: SnapshotFormat,
    /// The checkpoint or savepoint (its metadata path) the job's state was restored from, with or
    /// without claim, if the job started from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// For a claimed checkpoint: the metadata path of the checkpoint it adopted. Its former job
    /// no longer retains it; this job discards it when it is subsumed, like its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_from: Option<String>,
}

impl CheckpointMetadata {
    /// Every content hash it references.
    pub fn shared_hashes(&self) -> impl Iterator<Item = ContentHash> + '_ {
        self.backends.iter().flat_map(BackendHandle::shared_hashes)
    }

    /// Every shared object the checkpoint references, with its size (repeats included).
    pub(crate) fn shared_objects(&self) -> impl Iterator<Item = (ContentHash, u64)> + '_ {
        self.backends.iter().flat_map(BackendHandle::shared_objects)
    }

    /// The object path of its commit record.
    pub fn metadata_path(&self) -> String {
        metadata_path(&self.job_id, self.kind, self.checkpoint_id)
    }

    /// Checks every field (run before writing and after reading).
    pub(crate) fn validate(&self) -> Result<()> {
        validate_job_id(&self.job_id).map_err(|e| Error::corruption(e.to_string()))?;
        if self.checkpoint_id == 0 || self.checkpoint_id >= u64::MAX / 2 {
            return Err(Error::corruption(format!(
                "checkpoint id {} is outside 1..2^63",
                self.checkpoint_id
            )));
        }
        check_max_parallelism(self.max_parallelism)?;
        if self.backends.is_empty() || self.backends.len() > MAX_BACKENDS {
            return Err(Error::corruption(format!(
                "checkpoint {} lists {} backends",
                self.checkpoint_id,
                self.backends.len()
            )));
        }
        for source in [&self.restored_from, &self.claimed_from]
            .into_iter()
            .flatten()
        {
            let parsed = crate::layout::parse_checkpoint_path(source)
                .filter(|p| p.is_metadata() && validate_job_id(p.job).is_ok());
            if parsed.is_none() {
                return Err(Error::corruption(format!(
                    "checkpoint {} names `{source}` as its source, which is not a metadata path",
                    self.checkpoint_id
                )));
            }
        }
        let mut ranges: Vec<KeyGroupRange> = Vec::new();
        for backend in &self.backends {
            if backend.max_parallelism != self.max_parallelism {
                return Err(Error::corruption(format!(
                    "backend {} has max_parallelism {} but the checkpoint {}",
                    backend.key_groups, backend.max_parallelism, self.max_parallelism
                )));
            }
            if let Some(other) = ranges
                .iter()
                .find(|r| r.intersect(&backend.key_groups).is_some())
            {
                return Err(Error::corruption(format!(
                    "backends {} and {} overlap",
                    other, backend.key_groups
                )));
            }
            ranges.push(backend.key_groups);
            backend.validate(&self.job_id, self.kind, self.checkpoint_id, self.format)?;
        }
        Ok(())
    }
}

/// What an in-flight snapshot or a restore holds on to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PinRecord {
    /// The job whose checkpoint the pin is about (the snapshotting job, or the restore's source).
    pub job_id: String,
    pub checkpoint_id: Option<u64>,
    pub created_at_ms: u64,
    pub hashes: Vec<ContentHash>,
    /// Who holds it: the pin is live exactly as long as its owner.
    pub owner: PinOwner,
    /// Set by an export on the pin it leaves on the savepoint it committed (X6): that pin guards
    /// the new savepoint against GC passes that read the job record before the commit, not a
    /// reader that needs it, so deleting the savepoint need not wait for it. Absent otherwise
    /// (and in pins of older builds).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub export_target: bool,
}

/// The holder of a pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PinOwner {
    /// A coordinator: live until `epoch` of `job` is fenced (a newer epoch in the job record).
    Epoch { job: String, epoch: u64 },
    /// A standalone reader (`restore`, `verify`): live until `expires_at_ms` (it renews).
    Reader { expires_at_ms: u64 },
}

/// Wraps a MessagePack body in the checksummed envelope.
pub(crate) fn seal(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    seal_version(magic, NATIVE_WRITE_VERSION, body)
}

fn seal_version(magic: &[u8; 8], version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks the envelope and returns the body.
pub(crate) fn unseal<'a>(magic: &[u8; 8], bytes: &'a [u8], what: &str) -> Result<&'a [u8]> {
    if bytes.len() < HEADER_BYTES {
        return Err(Error::corruption(format!(
            "{what}: {} bytes is shorter than its header",
            bytes.len()
        )));
    }
    if &bytes[..8] != magic {
        return Err(Error::corruption(format!(
            "{what}: wrong magic (not a rockpoint file of this kind)"
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(OLDEST_READ_VERSION..=METADATA_FORMAT_VERSION).contains(&version) {
        return Err(Error::corruption(format!(
            "{what}: format version {version}, this build reads versions \
             {OLDEST_READ_VERSION} to {METADATA_FORMAT_VERSION} (written by a newer rockpoint?)"
        )));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_BYTES..];
    if len != body.len() as u64 {
        return Err(Error::corruption(format!(
            "{what}: header says {len} body bytes, found {} (truncated or extended)",
            body.len()
        )));
    }
    if blake3::hash(body).as_bytes() != &bytes[20..52] {
        return Err(Error::corruption(format!(
            "{what}: checksum mismatch (the body is corrupt)"
        )));
    }
    // Before any decoder pre-sizes a collection by a length the body declares.
    crate::codec::check_declared_lengths(body)
        .map_err(|e| Error::corruption(format!("{what}: malformed body: {e}")))?;
    Ok(body)
}

/// Validates and encodes metadata for writing.
pub(crate) fn encode_metadata(metadata: &CheckpointMetadata) -> Result<Vec<u8>> {
    metadata.validate()?;
    let body = rmp_serde::to_vec_named(metadata)
        .map_err(|e| Error::invalid(format!("encoding checkpoint metadata: {e}")))?;
    let version = match metadata.format {
        SnapshotFormat::Native => NATIVE_WRITE_VERSION,
        SnapshotFormat::Canonical => METADATA_FORMAT_VERSION,
    };
    Ok(seal_version(METADATA_MAGIC, version, &body))
}

/// Decodes and validates metadata read from `path`.
pub(crate) fn decode_metadata(bytes: &[u8], path: &str) -> Result<CheckpointMetadata> {
    let what = format!("metadata `{path}`");
    let body = unseal(METADATA_MAGIC, bytes, &what)?;
    let metadata: CheckpointMetadata = rmp_serde::from_slice(body)
        .map_err(|e| Error::corruption(format!("{what}: undecodable body: {e}")))?;
    metadata
        .validate()
        .map_err(|e| Error::corruption(format!("{what}: {e}")))?;
    if metadata.metadata_path() != path {
        return Err(Error::corruption(format!(
            "{what} describes `{}` (job `{}`, id {}), not the checkpoint at this path",
            metadata.metadata_path(),
            metadata.job_id,
            metadata.checkpoint_id
        )));
    }
    Ok(metadata)
}

pub(crate) fn encode_pin(pin: &PinRecord) -> Result<Vec<u8>> {
    let body = rmp_serde::to_vec_named(pin)
        .map_err(|e| Error::invalid(format!("encoding pin record: {e}")))?;
    Ok(seal(PIN_MAGIC, &body))
}

pub(crate) fn decode_pin(bytes: &[u8], path: &str) -> Result<PinRecord> {
    let what = format!("pin record `{path}`");
    let body = unseal(PIN_MAGIC, bytes, &what)?;
    rmp_serde::from_slice(body)
        .map_err(|e| Error::corruption(format!("{what}: undecodable body: {e}")))
}

#[derive(Clone, Copy)]
enum LocalKind {
    Sst,
    Log,
    Private,
}

/// Local names become file names inside the restore directory: they must be plain RocksDB names.
fn check_local_name(name: &str, kind: LocalKind) -> Result<()> {
    let digits = |s: &str| s.len() >= 6 && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match kind {
        LocalKind::Sst => name.strip_suffix(".sst").is_some_and(digits),
        LocalKind::Log => {
            name.strip_suffix(".log").is_some_and(digits)
                || name.strip_prefix("MANIFEST-").is_some_and(digits)
        }
        LocalKind::Private => name.strip_prefix("OPTIONS-").is_some_and(digits),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::corruption(format!(
            "`{name}` is not a RocksDB file name the engine ships"
        )))
    }
}

fn check_size(name: &str, size: u64) -> Result<()> {
    if size > MAX_FILE_BYTES {
        return Err(Error::corruption(format!(
            "`{name}` claims {size} bytes (more than 1 TiB)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_version(sealed: &[u8], version: u32) -> Vec<u8> {
        let mut out = sealed.to_vec();
        out[8..12].copy_from_slice(&version.to_le_bytes());
        out
    }

    #[test]
    fn records_of_older_versions_are_read_and_newer_ones_refused_by_version() {
        let sealed = seal(PIN_MAGIC, b"body");
        assert_eq!(unseal(PIN_MAGIC, &sealed, "pin").unwrap(), b"body");
        let v1 = with_version(&sealed, 1);
        assert_eq!(unseal(PIN_MAGIC, &v1, "pin").unwrap(), b"body");
        let newer = with_version(&sealed, METADATA_FORMAT_VERSION + 1);
        let err = unseal(PIN_MAGIC, &newer, "pin").unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("format version {}", METADATA_FORMAT_VERSION + 1)),
            "{err}"
        );
        assert!(unseal(PIN_MAGIC, &with_version(&sealed, 0), "pin").is_err());
    }
}
