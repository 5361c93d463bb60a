//! Every object path of a checkpoint root, in one place: how each is built, parsed and validated.
//!
//! ```text
//! jobs/<job>/_job                                   the job record (compare-and-swap only)
//! jobs/<job>/<chk|sp>-<id:020>/_metadata            a checkpoint's or savepoint's commit record
//! jobs/<job>/<chk|sp>-<id:020>/kg-<s:05>-<e:05>/<local name>   a private file of one backend
//! shared/<hex[..2]>/<hex>                           a shared file, named by its BLAKE3 hash
//! pins/<job>/<chk|sp>-<id:020>-kg-<s>-<e>           the pin of one backend's in-flight snapshot
//! pins/<src>/read-<chk|sp>-<id:020>-<nonce>         a reader's pin on a checkpoint of job <src>
//! gc/<nonce>                                        a GC pass's deletion intent
//! uploads/<nonce>                                   an object store's multipart upload in progress
//! probes/conditional-put-<nonce>                    an object store's startup probe
//! rockpoint-root                                    the root marker: "this is a rockpoint root"
//! ```
//!
//! Nothing else in the crate spells a path; `docs/protocols.md` describes what each object means.
//! The root marker's record is small text, so it is spelled here too ([`RootMarker`]): anything
//! outside these prefixes and the marker is not the engine's, and nothing may list or delete it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::ContentHash;
use crate::keygroup::KeyGroupRange;

/// Where the jobs' records and private files live.
pub(crate) const JOBS: &str = "jobs/";
/// Where the pins live.
pub(crate) const PINS: &str = "pins/";
/// Where the shared (content-addressed) files live.
pub(crate) const SHARED: &str = "shared/";
/// Where GC's deletion intents live.
pub(crate) const INTENTS: &str = "gc/";
/// Where an object store keeps the records of its multipart uploads in progress (store-internal:
/// GC's sweep of incomplete writes aborts the uploads whose record outlived the grace period).
pub(crate) const UPLOADS: &str = "uploads/";
/// Where an object store's startup probe writes its object (deleted at once; swept if left).
pub(crate) const PROBES: &str = "probes/";
/// The root marker: an object at the top of the root saying it is one (see [`RootMarker`]).
pub(crate) const ROOT_MARKER: &str = "rockpoint-root";
/// Every prefix the engine writes under. GC and the sweep of incomplete writes list, delete and
/// remove directories only under these (and the marker's own temporaries): a root may sit in a
/// directory or bucket that holds other things, and those are never the engine's.
pub(crate) const LAYOUT_PREFIXES: [&str; 6] = [JOBS, SHARED, PINS, INTENTS, UPLOADS, PROBES];
/// The name of a commit record inside its checkpoint's directory.
pub(crate) const METADATA: &str = "_metadata";
/// The name of the job record inside its job's directory.
const JOB_RECORD: &str = "_job";
/// Marks a reader pin among a job's pins.
const READER_PIN: &str = "read-";
/// The name of a restore pin written by early builds (`pins/<job>/restore-<nonce>`).
const LEGACY_RESTORE_PIN: &str = "restore-";

/// Whether `path` lies under one of the layout's prefixes (or is the root marker).
pub(crate) fn is_layout_path(path: &str) -> bool {
    path == ROOT_MARKER
        || LAYOUT_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
}

/// The version of the root marker's format this build writes.
pub(crate) const ROOT_MARKER_FORMAT: u32 = 1;
/// The first line of a root marker.
const ROOT_MARKER_MAGIC: &str = "rockpoint-root";
/// A root marker is a few lines; anything larger is not one.
const ROOT_MARKER_MAX_BYTES: usize = 4096;

/// The record of the root marker `rockpoint-root`: what says a location is a rockpoint root.
/// Written create-only by the first writer that creates content in the root and never changed.
///
/// Its bytes are UTF-8 text, one `key: value` per line after the line `rockpoint-root`:
///
/// ```text
/// rockpoint-root
/// format_version: 1
/// created_at_ms: 1712345678901
/// created_by: rockpoint 0.1.0
/// ```
///
/// Readers need only the first line and `format_version`; unknown keys are ignored (a newer
/// format may add lines).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootMarker {
    /// The marker's format version (1).
    pub format_version: u32,
    /// When the root was marked, in milliseconds since the Unix epoch (0 if not recorded).
    pub created_at_ms: u64,
    /// Who marked it, e.g. `rockpoint 0.1.0` (empty if not recorded).
    pub created_by: String,
}

impl RootMarker {
    /// A marker for a root created now by this build.
    pub(crate) fn new_now() -> Self {
        RootMarker {
            format_version: ROOT_MARKER_FORMAT,
            created_at_ms: crate::util::now_ms(),
            created_by: format!("rockpoint {}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// The marker's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let created_by: String = self
            .created_by
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        format!(
            "{ROOT_MARKER_MAGIC}\nformat_version: {}\ncreated_at_ms: {}\ncreated_by: {created_by}\n",
            self.format_version, self.created_at_ms
        )
        .into_bytes()
    }

    /// Decodes a marker read from the root; `Corruption` for anything that is not one.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| {
            Error::corruption(format!(
                "`{ROOT_MARKER}` is not a root marker: {why}; if this location is a root, \
                     delete that object and the next claim or `gc --confirm` writes a new one"
            ))
        };
        if bytes.len() > ROOT_MARKER_MAX_BYTES {
            return Err(bad("too large"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        let mut lines = text.lines();
        if lines.next().map(str::trim_end) != Some(ROOT_MARKER_MAGIC) {
            return Err(bad("its first line is not `rockpoint-root`"));
        }
        let (mut format_version, mut created_at_ms, mut created_by) = (None, 0, String::new());
        for line in lines {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "format_version" => {
                    format_version = Some(value.parse().map_err(|_| bad("bad `format_version`"))?)
                }
                // Informational: a value this build cannot read is "not recorded" (0), so that a
                // marker written differently never stops GC (only the first line and the format
                // version are required).
                "created_at_ms" => created_at_ms = value.parse().unwrap_or(0),
                "created_by" => created_by = value.to_owned(),
                _ => {}
            }
        }
        match format_version {
            Some(format_version) if format_version >= 1 => Ok(RootMarker {
                format_version,
                created_at_ms,
                created_by,
            }),
            _ => Err(bad("no `format_version`")),
        }
    }
}

/// Whether a snapshot is a checkpoint (owned by the engine) or a savepoint (owned by the user).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// Retained and discarded by the engine according to the retention settings.
    Checkpoint,
    /// Never discarded by the engine.
    Savepoint,
}

impl SnapshotKind {
    pub(crate) fn dir_prefix(self) -> &'static str {
        match self {
            SnapshotKind::Checkpoint => "chk",
            SnapshotKind::Savepoint => "sp",
        }
    }
}

/// Checks that `path` is a relative object path the engine could have written: `/`-separated
/// segments of `[A-Za-z0-9._-]`, none empty, none starting with `.` (so no `..` and no temporary
/// names). Paths read from metadata pass through here before any use (G5).
pub(crate) fn validate_object_path(path: &str) -> Result<()> {
    let ok = !path.is_empty()
        && path.len() <= 1024
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "`{path}` is not a valid object path"
        )))
    }
}

/// Job ids name directories: 1 to 128 characters of `[A-Za-z0-9_-]`.
pub(crate) fn validate_job_id(job_id: &str) -> Result<()> {
    let ok = !job_id.is_empty()
        && job_id.len() <= 128
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "job id `{job_id}`: use 1 to 128 characters of [A-Za-z0-9_-]"
        )))
    }
}

/// `jobs/<job>/`: everything of one job but its pins.
pub(crate) fn job_prefix(job_id: &str) -> String {
    format!("{JOBS}{job_id}/")
}

/// `jobs/<job>/_job`.
pub(crate) fn job_record_path(job_id: &str) -> String {
    format!("{JOBS}{job_id}/{JOB_RECORD}")
}

/// The job whose record `path` is, if it is one.
pub(crate) fn parse_job_record_path(path: &str) -> Option<&str> {
    path.strip_prefix(JOBS)?
        .strip_suffix(JOB_RECORD)?
        .strip_suffix('/')
        .filter(|job| !job.contains('/') && validate_job_id(job).is_ok())
}

/// `jobs/<job>/<chk|sp>-<id:020>` — the directory of one checkpoint.
pub(crate) fn checkpoint_dir(job_id: &str, kind: SnapshotKind, id: u64) -> String {
    format!("{JOBS}{job_id}/{}-{id:020}", kind.dir_prefix())
}

/// `jobs/<job>/<chk|sp>-<id:020>/_metadata` — the commit record of a checkpoint.
pub(crate) fn metadata_path(job_id: &str, kind: SnapshotKind, id: u64) -> String {
    format!("{}/{METADATA}", checkpoint_dir(job_id, kind, id))
}

/// `kg-<start:05>-<end:05>`: names a backend's private directory and pin.
pub(crate) fn backend_tag(range: KeyGroupRange) -> String {
    format!("kg-{:05}-{:05}", range.start(), range.end())
}

/// `jobs/<job>/<chk|sp>-<id:020>/<tag>/<local name>` — the one place a private file may live: a
/// discard or claim deletes these paths, so a record naming anything else is refused.
pub(crate) fn private_file_path(
    job_id: &str,
    kind: SnapshotKind,
    id: u64,
    tag: &str,
    local_name: &str,
) -> String {
    format!("{}/{tag}/{local_name}", checkpoint_dir(job_id, kind, id))
}

/// An object under a checkpoint's directory, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointPath<'a> {
    pub(crate) job: &'a str,
    pub(crate) kind: SnapshotKind,
    pub(crate) id: u64,
    /// What follows the checkpoint's directory (`_metadata`, `kg-…/000012.log`), or empty.
    pub(crate) rest: &'a str,
}

impl CheckpointPath<'_> {
    /// Whether this is the checkpoint's commit record.
    pub(crate) fn is_metadata(&self) -> bool {
        self.rest == METADATA
    }
}

/// Parses `jobs/<job>/<chk|sp>-<id:020>[/<rest>]`; `None` for any other path.
pub(crate) fn parse_checkpoint_path(path: &str) -> Option<CheckpointPath<'_>> {
    let mut parts = path.splitn(4, '/');
    if parts.next()? != JOBS.trim_end_matches('/') {
        return None;
    }
    let job = parts.next()?;
    let dir = parts.next()?;
    let rest = parts.next().unwrap_or("");
    let (kind, id) = if let Some(id) = dir.strip_prefix("chk-") {
        (SnapshotKind::Checkpoint, id)
    } else if let Some(id) = dir.strip_prefix("sp-") {
        (SnapshotKind::Savepoint, id)
    } else {
        return None;
    };
    // Metadata under a name that is not a job id is still parsed (and then refused as a record
    // whose job does not validate): an unreadable metadata record blocks GC's shared deletes,
    // where ignoring it could delete the files of a checkpoint an early build wrote there.
    if id.len() != 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(CheckpointPath {
        job,
        kind,
        id: id.parse().ok()?,
        rest,
    })
}

/// `shared/<first two hex digits>/<hex>` — where a shared file lives.
pub(crate) fn shared_path(hash: &ContentHash) -> String {
    let hex = hash.to_hex();
    format!("{SHARED}{}/{hex}", &hex[..2])
}

/// Parses a shared file path back into its hash.
pub(crate) fn parse_shared_path(path: &str) -> Option<ContentHash> {
    let rest = path.strip_prefix(SHARED)?;
    let (fan, hex) = rest.split_once('/')?;
    let hash: ContentHash = hex.parse().ok()?;
    (hex.starts_with(fan) && fan.len() == 2).then_some(hash)
}

/// `pins/<job>/`: every pin on a job's checkpoints (its own snapshot pins and readers' pins).
pub(crate) fn job_pins_prefix(job_id: &str) -> String {
    format!("{PINS}{job_id}/")
}

/// `pins/<job>/<chk|sp>-<id:020>-<tag>` — the pin of one backend's in-flight snapshot.
pub(crate) fn snapshot_pin_path(job_id: &str, kind: SnapshotKind, id: u64, tag: &str) -> String {
    format!("{}{tag}", snapshot_pin_prefix(job_id, kind, id))
}

/// The prefix of every pin of one in-flight checkpoint.
pub(crate) fn snapshot_pin_prefix(job_id: &str, kind: SnapshotKind, id: u64) -> String {
    format!("{PINS}{job_id}/{}-{id:020}-", kind.dir_prefix())
}

/// The job, kind and id of a snapshot pin's path (`pins/<job>/<chk|sp>-<id:020>-<tag>`); `None`
/// for a reader pin or anything else.
pub(crate) fn parse_snapshot_pin(path: &str) -> Option<(&str, SnapshotKind, u64)> {
    let (job, name) = path.strip_prefix(PINS)?.split_once('/')?;
    let (kind, rest) = if let Some(rest) = name.strip_prefix("chk-") {
        (SnapshotKind::Checkpoint, rest)
    } else {
        (SnapshotKind::Savepoint, name.strip_prefix("sp-")?)
    };
    let digits = rest.get(..20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || rest.as_bytes().get(20) != Some(&b'-') {
        return None;
    }
    Some((job, kind, digits.parse().ok()?))
}

/// `pins/<src>/read-<chk|sp>-<id:020>-<nonce>` — a new reader's pin on a checkpoint of job `src`.
pub(crate) fn reader_pin_path(src_job: &str, kind: SnapshotKind, id: u64) -> String {
    format!(
        "{}{}",
        reader_pin_prefix(src_job, kind, id),
        crate::util::nonce()
    )
}

/// The prefix of every reader pin on one checkpoint.
pub(crate) fn reader_pin_prefix(src_job: &str, kind: SnapshotKind, id: u64) -> String {
    format!(
        "{PINS}{src_job}/{READER_PIN}{}-{id:020}-",
        kind.dir_prefix()
    )
}

/// Whether `path` is a reader pin (`pins/<src>/read-…`).
pub(crate) fn is_reader_pin_path(path: &str) -> bool {
    path.strip_prefix(PINS)
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, name)| name.starts_with(READER_PIN))
}

/// Whether `path` is a pin rockpoint writes (a snapshot pin or a reader pin of a valid job id).
/// Anything else under `pins/` is someone else's file: it holds nothing.
pub(crate) fn is_pin_path(path: &str) -> bool {
    let Some((job, name)) = path
        .strip_prefix(PINS)
        .and_then(|rest| rest.split_once('/'))
    else {
        return false;
    };
    if validate_job_id(job).is_err() || name.contains('/') {
        return false;
    }
    match name.strip_prefix(READER_PIN) {
        Some(rest) => parse_snapshot_pin(&format!("{PINS}{job}/{rest}")).is_some(),
        // `restore-<nonce>`: the restore pins of early builds, still honoured.
        None => name.starts_with(LEGACY_RESTORE_PIN) || parse_snapshot_pin(path).is_some(),
    }
}

/// `gc/<nonce>` — a new deletion intent.
pub(crate) fn intent_path() -> String {
    format!("{INTENTS}{}", crate::util::nonce())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_rockpoint_writes_parse_as_pins_and_job_records() {
        let snapshot = snapshot_pin_path("job", SnapshotKind::Checkpoint, 7, "kg-0-8");
        assert!(is_pin_path(&snapshot));
        let reader = reader_pin_path("job", SnapshotKind::Savepoint, 9);
        assert!(is_pin_path(&reader) && is_reader_pin_path(&reader));
        for foreign in [
            "pins/job/garbage",
            "pins/job/read-garbage",
            "pins/bad..name/chk-00000000000000000007-kg-0-8",
            "pins/job/sub/chk-00000000000000000007-kg-0-8",
        ] {
            assert!(!is_pin_path(foreign), "{foreign}");
        }
        assert_eq!(parse_job_record_path("jobs/job/_job"), Some("job"));
        assert_eq!(parse_job_record_path("jobs/bad..name/_job"), None);
        assert_eq!(parse_job_record_path("jobs/jöb/_job"), None);
        assert!(
            is_pin_path("pins/job/restore-0123456789abcdef"),
            "early builds' restore pins"
        );
        // Metadata is parsed whatever the job name: an unreadable record blocks GC's deletes.
        assert!(
            parse_checkpoint_path("jobs/bad..name/chk-00000000000000000001/_metadata").is_some()
        );
        assert!(parse_checkpoint_path("jobs/job/chk-00000000000000000001/_metadata").is_some());
    }

    #[test]
    fn every_built_path_parses_back_and_is_a_valid_object_path() {
        let range = KeyGroupRange::new(3, 9).unwrap();
        for kind in [SnapshotKind::Checkpoint, SnapshotKind::Savepoint] {
            let meta = metadata_path("job-1", kind, 42);
            let parsed = parse_checkpoint_path(&meta).unwrap();
            assert_eq!((parsed.job, parsed.kind, parsed.id), ("job-1", kind, 42));
            assert!(parsed.is_metadata());
            let private =
                private_file_path("job-1", kind, 42, &backend_tag(range), "OPTIONS-000007");
            let parsed = parse_checkpoint_path(&private).unwrap();
            assert_eq!(parsed.rest, "kg-00003-00009/OPTIONS-000007");
            assert!(!parsed.is_metadata());
            let pin = snapshot_pin_path("job-1", kind, 42, &backend_tag(range));
            assert!(pin.starts_with(&job_pins_prefix("job-1")) && !is_reader_pin_path(&pin));
            let reader = reader_pin_path("job-1", kind, 42);
            assert!(reader.starts_with(&reader_pin_prefix("job-1", kind, 42)));
            assert!(is_reader_pin_path(&reader));
            for path in [meta, private, pin, reader] {
                validate_object_path(&path).unwrap();
            }
        }
        let hash = ContentHash::of(b"x");
        assert_eq!(parse_shared_path(&shared_path(&hash)), Some(hash));
        assert_eq!(parse_job_record_path(&job_record_path("j")), Some("j"));
        assert_eq!(parse_job_record_path("jobs/a/b/_job"), None);
        validate_object_path(&intent_path()).unwrap();
    }

    #[test]
    fn root_marker_round_trips_and_refuses_other_bytes() {
        let marker = RootMarker::new_now();
        assert_eq!(RootMarker::decode(&marker.encode()).unwrap(), marker);
        let newer = b"rockpoint-root\nformat_version: 7\nsomething_new: x\n";
        assert_eq!(RootMarker::decode(newer).unwrap().format_version, 7);
        for bad in [
            &b""[..],
            b"hello",
            b"rockpoint-root\n",
            b"rockpoint-root\nformat_version: x\n",
            b"\xff\xfe",
        ] {
            assert!(RootMarker::decode(bad).is_err(), "{bad:?}");
        }
        assert!(is_layout_path("jobs/j/_job") && is_layout_path(ROOT_MARKER));
        assert!(!is_layout_path("data/x") && !is_layout_path("jobsx/y"));
    }

    #[test]
    fn foreign_paths_do_not_parse() {
        for path in [
            "jobs/j/chk-42/_metadata",
            "jobs/j/chk-0000000000000000004x/_metadata",
            "jobs/j/x-00000000000000000042/_metadata",
            "other/j/chk-00000000000000000042/_metadata",
            "jobs/j",
        ] {
            assert_eq!(parse_checkpoint_path(path), None, "{path}");
        }
        assert_eq!(parse_shared_path("shared/ab/cd"), None);
        for bad in ["", "a//b", "../x", "a/.tmp", "a b"] {
            assert!(validate_object_path(bad).is_err(), "{bad}");
        }
    }
}
