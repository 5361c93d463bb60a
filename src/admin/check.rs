//! `check_root`: the whole root read and checked, for an operator who wants to know that every
//! committed checkpoint and savepoint would restore. Every record is read and decoded (root
//! marker, job records, metadata, pins, GC intents); every object a committed snapshot references
//! is read once and hashed against what its metadata records (the streaming [`Verifier`] every
//! restore uses); every other shared file is hashed against its name, since a content-addressed
//! object whose bytes do not match its name would poison the next checkpoint that reuses the hash.
//! Each problem names the committed snapshots it affects.
//!
//! Safety: the check only reads, so it runs on a read-only store and beside live jobs and GC. A
//! job may discard a checkpoint (and GC delete its files) while the check runs: an object found
//! missing is reported only if, when the job records are read again at the end, a snapshot that
//! references it is still committed; a record or unreferenced object that vanished between the
//! listing and its read is skipped.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::checkpoint::job::{self, JobRecord};
use crate::checkpoint::metadata::{self, CheckpointMetadata};
use crate::checkpoint::restore::Progress;
use crate::error::{Error, ErrorKind, Result};
use crate::hash::{ContentHash, Verifier};
use crate::layout::{self, RootMarker, SnapshotKind};
use crate::store::Store;

/// What [`check_root`] checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckOptions {
    /// Only this job: the root marker, its record, metadata and pins are read, and the objects its
    /// committed snapshots reference are hashed. Shared files nothing of this job references are
    /// not read (which files nothing references is a question about every job), so
    /// [`CheckReport::unreferenced_objects`] stays 0. Default: every job.
    pub job: Option<String>,
    /// How many objects are read and hashed at once. Default: 8.
    pub parallelism: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            job: None,
            parallelism: 8,
        }
    }
}

/// A committed checkpoint or savepoint, as a problem names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotRef {
    /// Its job.
    pub job: String,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Its id within the job.
    pub id: u64,
}

impl SnapshotRef {
    /// The object path of its metadata record.
    pub fn metadata_path(&self) -> String {
        layout::metadata_path(&self.job, self.kind, self.id)
    }
}

/// `<job>/<id>` for a checkpoint, `<job>/sp-<id>` for a savepoint: the short reference the other
/// commands take.
impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SnapshotKind::Checkpoint => write!(f, "{}/{}", self.job, self.id),
            SnapshotKind::Savepoint => write!(f, "{}/sp-{}", self.job, self.id),
        }
    }
}

/// What is wrong with an object or record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not in the store, though a committed snapshot references it.
    Missing,
    /// Another size than recorded (for an unreferenced shared file: than listed).
    SizeMismatch,
    /// Bytes that do not hash to the recorded hash (for a shared file: to its name).
    HashMismatch,
    /// A record that does not decode: envelope, checksum, body or validation.
    Undecodable,
    /// Reading failed for another reason (a storage error): not known to be damaged; check again.
    ReadFailed,
}

impl ProblemKind {
    /// Whether the bytes are known to be missing or wrong (every kind but [`ReadFailed`](Self::ReadFailed)).
    pub fn is_damage(self) -> bool {
        self != ProblemKind::ReadFailed
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProblemKind::Missing => "missing",
            ProblemKind::SizeMismatch => "size mismatch",
            ProblemKind::HashMismatch => "hash mismatch",
            ProblemKind::Undecodable => "undecodable",
            ProblemKind::ReadFailed => "unreadable",
        })
    }
}

/// One object or record that is missing, damaged or could not be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Its object path.
    pub path: String,
    /// What is wrong.
    pub kind: ProblemKind,
    /// Why, in words (expected and found hash and size, a decoder's message).
    pub reason: String,
    /// The committed checkpoints and savepoints that reference it (a metadata record: its own
    /// snapshot), by job, kind and id; empty for what no committed snapshot references.
    pub affects: Vec<SnapshotRef>,
    /// For a job record that cannot be read: its job, whose committed snapshots cannot be told
    /// (every metadata record of the job is then checked as if committed).
    pub affects_job: Option<String>,
}

/// What [`check_root`] read and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Jobs checked (with a record or metadata records).
    pub jobs: u64,
    /// Committed checkpoints checked.
    pub checkpoints: u64,
    /// Committed savepoints checked.
    pub savepoints: u64,
    /// Metadata records no job record lists (in flight or aborted; GC sweeps them): decoded, but
    /// their files are not charged to any committed snapshot.
    pub orphans: u64,
    /// Records read (root marker, job records, metadata, pins, GC intents).
    pub records: u64,
    /// Distinct objects read and hashed (shared files, log segments, private files).
    pub objects: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
    /// Shared files no metadata record references (GC collects them after its grace period).
    pub unreferenced_objects: u64,
    /// Their bytes.
    pub unreferenced_bytes: u64,
    /// Objects under the layout's prefixes that are not named as rockpoint names them (a copy
    /// like `jobs/j/chk-…08.bak/_metadata`, a job directory that is not a job id): not read.
    pub ignored: Vec<String>,
    /// Everything missing, damaged or unreadable, by path.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every record and every object of the root (or of one job, [`CheckOptions::job`]) and
/// reports what is missing or damaged and which committed checkpoints and savepoints that affects.
/// `progress` is told the bytes hashed as they stream. Writes nothing.
///
/// A problem with the root (a record that does not decode, an object with the wrong bytes) is in
/// the report, never an error: the check goes on with the rest. An error means the check could
/// not run (the root cannot be listed).
pub async fn check_root(
    store: &dyn Store,
    options: &CheckOptions,
    progress: Option<Progress>,
) -> Result<CheckReport> {
    if let Some(job) = &options.job {
        layout::validate_job_id(job)?;
    }
    let parallelism = options.parallelism.max(1);
    let listing = sort_listing(store.list("").await?, options.job.as_deref());
    if let Some(job) = &options.job
        && listing.jobs.is_empty()
    {
        return Err(Error::not_found(format!(
            "job `{job}` has no record and no metadata in {}",
            store.describe()
        )));
    }
    let mut report = CheckReport {
        ignored: listing.ignored.clone(),
        ..CheckReport::default()
    };
    let mut problems = Vec::new();

    // Records: the marker, job records (which say what is committed), metadata, pins, intents.
    if listing.marker {
        read_marker(store, &mut report, &mut problems).await;
    }
    let committed =
        read_job_records(store, &listing, parallelism, &mut report, &mut problems).await;
    let snapshots = read_metadata_records(
        store,
        &listing,
        &committed,
        parallelism,
        &mut report,
        &mut problems,
    )
    .await;
    read_small_records(store, &listing, parallelism, &mut report, &mut problems).await;

    // Objects: each distinct one once.
    let work = plan_objects(&listing, &snapshots, options.job.is_some());
    hash_objects(
        store,
        work,
        parallelism,
        progress,
        &mut report,
        &mut problems,
    )
    .await;

    // A live root: what went missing because its snapshots were discarded meanwhile is not damage.
    let mut problems = recheck(store, problems).await;
    problems.sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
    report.problems = problems;
    Ok(report)
}

/// The objects of one listing, by what they are.
#[derive(Default)]
struct Listing {
    marker: bool,
    /// Every job seen, with the metadata records listed under it.
    jobs: BTreeMap<String, BTreeSet<(SnapshotKind, u64)>>,
    /// Jobs with a record in the listing.
    records: BTreeSet<String>,
    /// Pins and GC intents.
    pins: Vec<String>,
    intents: Vec<String>,
    /// Shared files, by hash, with their listed size.
    shared: BTreeMap<ContentHash, u64>,
    ignored: Vec<String>,
}

fn sort_listing(objects: Vec<crate::store::ObjectInfo>, only: Option<&str>) -> Listing {
    let mut listing = Listing::default();
    let wanted = |job: &str| only.is_none_or(|only| only == job);
    for object in objects {
        let path = object.path.as_str();
        if path == layout::ROOT_MARKER {
            listing.marker = true;
        } else if let Some(job) = layout::parse_job_record_path(path) {
            if layout::validate_job_id(job).is_err() {
                listing.ignored.push(object.path);
            } else if wanted(job) {
                listing.jobs.entry(job.to_owned()).or_default();
                listing.records.insert(job.to_owned());
            }
        } else if let Some(parsed) = layout::parse_checkpoint_path(path) {
            if layout::validate_job_id(parsed.job).is_err() {
                listing.ignored.push(object.path);
            } else if parsed.is_metadata() && wanted(parsed.job) {
                listing
                    .jobs
                    .entry(parsed.job.to_owned())
                    .or_default()
                    .insert((parsed.kind, parsed.id));
            }
            // Private files are read when a committed snapshot references them.
        } else if path.starts_with(layout::SHARED) {
            match layout::parse_shared_path(path) {
                Some(hash) => {
                    listing.shared.insert(hash, object.size);
                }
                None => listing.ignored.push(object.path),
            }
        } else if let Some(rest) = path.strip_prefix(layout::PINS) {
            if only.is_none_or(|only| rest.split('/').next() == Some(only)) {
                listing.pins.push(object.path);
            }
        } else if path.starts_with(layout::INTENTS) {
            if only.is_none() {
                listing.intents.push(object.path);
            }
        } else if path.starts_with(layout::JOBS) {
            listing.ignored.push(object.path);
        }
        // `uploads/` and `probes/` are the object store's own (their records are decoded only
        // there); anything outside the layout is not the engine's and is not read.
    }
    listing
}

/// A record's bytes; `None` if it vanished since the listing (not a problem: a discard, a pin
/// dropped). Read failures are problems.
async fn read_record(
    store: &dyn Store,
    path: &str,
    report: &mut CheckReport,
    problems: &mut Vec<Problem>,
) -> Option<bytes::Bytes> {
    match store.get(path).await {
        Ok(bytes) => {
            report.records += 1;
            Some(bytes)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => {
            problems.push(record_problem(path, &e, Vec::new()));
            None
        }
    }
}

/// The problem of a record that could not be read or decoded.
fn record_problem(path: &str, error: &Error, affects: Vec<SnapshotRef>) -> Problem {
    Problem {
        path: path.to_owned(),
        kind: if error.kind() == ErrorKind::Corruption {
            ProblemKind::Undecodable
        } else {
            ProblemKind::ReadFailed
        },
        reason: error.to_string(),
        affects,
        affects_job: None,
    }
}

async fn read_marker(store: &dyn Store, report: &mut CheckReport, problems: &mut Vec<Problem>) {
    if let Some(bytes) = read_record(store, layout::ROOT_MARKER, report, problems).await
        && let Err(e) = RootMarker::decode(&bytes)
    {
        problems.push(record_problem(layout::ROOT_MARKER, &e, Vec::new()));
    }
}

/// Which snapshots each job has committed, from its record; a job without a record (a root older
/// than job records) or with one that cannot be read: every metadata record listed under it.
async fn read_job_records(
    store: &dyn Store,
    listing: &Listing,
    parallelism: usize,
    report: &mut CheckReport,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, BTreeSet<(SnapshotKind, u64)>> {
    let read: Vec<(String, Option<Result<Option<JobRecord>>>)> =
        stream::iter(listing.jobs.keys().map(|job| async move {
            if !listing.records.contains(job) {
                return (job.clone(), None);
            }
            let record = job::read_job(store, job)
                .await
                .map(|found| found.map(|(record, _)| record));
            (job.clone(), Some(record))
        }))
        .buffered(parallelism)
        .collect()
        .await;
    let mut committed = BTreeMap::new();
    for (job, record) in read {
        report.jobs += 1;
        let listed = listing.jobs[&job].clone();
        let ids = match record {
            Some(Ok(Some(record))) => {
                report.records += 1;
                committed_ids(&record)
            }
            // Vanished since the listing: the job as the listing shows it.
            Some(Ok(None)) | None => listed,
            Some(Err(e)) => {
                if e.kind() == ErrorKind::Corruption {
                    report.records += 1;
                }
                let mut problem = record_problem(&layout::job_record_path(&job), &e, Vec::new());
                problem.affects_job = Some(job.clone());
                problems.push(problem);
                listed
            }
        };
        committed.insert(job, ids);
    }
    committed
}

fn committed_ids(record: &JobRecord) -> BTreeSet<(SnapshotKind, u64)> {
    let checkpoints = record
        .retained
        .iter()
        .map(|&id| (SnapshotKind::Checkpoint, id));
    let savepoints = record
        .savepoints
        .iter()
        .map(|&id| (SnapshotKind::Savepoint, id));
    checkpoints.chain(savepoints).collect()
}

/// A decoded metadata record, and whether its job commits it.
struct Snapshot {
    metadata: CheckpointMetadata,
    committed: bool,
}

/// Reads every metadata record listed or committed. A committed one that is not in the store is a
/// problem (re-checked at the end: its job may have discarded it meanwhile).
async fn read_metadata_records(
    store: &dyn Store,
    listing: &Listing,
    committed: &BTreeMap<String, BTreeSet<(SnapshotKind, u64)>>,
    parallelism: usize,
    report: &mut CheckReport,
    problems: &mut Vec<Problem>,
) -> Vec<Snapshot> {
    let mut wanted: Vec<(SnapshotRef, bool)> = Vec::new();
    for (job, ids) in committed {
        let listed = &listing.jobs[job];
        for &(kind, id) in listed.union(ids) {
            let snapshot = SnapshotRef {
                job: job.clone(),
                kind,
                id,
            };
            wanted.push((snapshot, ids.contains(&(kind, id))));
        }
    }
    let read: Vec<(SnapshotRef, bool, Result<bytes::Bytes>)> = stream::iter(
        wanted
            .into_iter()
            .map(|(snapshot, is_committed)| async move {
                let bytes = store.get(&snapshot.metadata_path()).await;
                (snapshot, is_committed, bytes)
            }),
    )
    .buffered(parallelism)
    .collect()
    .await;
    let mut snapshots = Vec::new();
    for (snapshot, is_committed, bytes) in read {
        let path = snapshot.metadata_path();
        if !is_committed && matches!(&bytes, Err(e) if e.kind() == ErrorKind::NotFound) {
            continue; // an orphan swept meanwhile
        }
        let affects = if is_committed {
            vec![snapshot.clone()]
        } else {
            Vec::new()
        };
        match (is_committed, snapshot.kind) {
            (true, SnapshotKind::Checkpoint) => report.checkpoints += 1,
            (true, SnapshotKind::Savepoint) => report.savepoints += 1,
            (false, _) => report.orphans += 1,
        }
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                problems.push(Problem {
                    path,
                    kind: ProblemKind::Missing,
                    reason: "its job record lists it, but the store does not hold it".into(),
                    affects,
                    affects_job: None,
                });
                continue;
            }
            Err(e) => {
                problems.push(record_problem(&path, &e, affects));
                continue;
            }
        };
        report.records += 1;
        match metadata::decode_metadata(&bytes, &path) {
            Ok(metadata) => snapshots.push(Snapshot {
                metadata,
                committed: is_committed,
            }),
            Err(e) => problems.push(record_problem(&path, &e, affects)),
        }
    }
    snapshots
}

/// Pins and GC intents: decoded, so that a damaged one (which would stop GC from deleting) shows.
async fn read_small_records(
    store: &dyn Store,
    listing: &Listing,
    parallelism: usize,
    report: &mut CheckReport,
    problems: &mut Vec<Problem>,
) {
    let paths = listing
        .pins
        .iter()
        .map(|p| (p, true))
        .chain(listing.intents.iter().map(|p| (p, false)));
    let read: Vec<(&String, bool, Result<bytes::Bytes>)> = stream::iter(
        paths.map(|(path, is_pin)| async move { (path, is_pin, store.get(path).await) }),
    )
    .buffered(parallelism)
    .collect()
    .await;
    for (path, is_pin, bytes) in read {
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push(record_problem(path, &e, Vec::new()));
                continue;
            }
        };
        report.records += 1;
        let decoded = if is_pin {
            metadata::decode_pin(&bytes, path).map(drop)
        } else {
            job::decode_intent(&bytes, path).map(drop)
        };
        if let Err(e) = decoded {
            problems.push(record_problem(path, &e, Vec::new()));
        }
    }
}

/// One object to read and hash.
struct Work {
    path: String,
    hash: ContentHash,
    size: u64,
    /// The committed snapshots that reference it.
    affects: BTreeSet<SnapshotRef>,
    /// A shared file no metadata record references.
    unreferenced: bool,
}

/// Every distinct object a committed snapshot references, with the snapshots that do; then (for
/// the whole root) every other shared file, against its name and listed size.
fn plan_objects(listing: &Listing, snapshots: &[Snapshot], one_job: bool) -> Vec<Work> {
    let mut referenced: BTreeMap<(String, ContentHash, u64), BTreeSet<SnapshotRef>> =
        BTreeMap::new();
    let mut by_any: HashSet<ContentHash> = HashSet::new();
    for snapshot in snapshots {
        let m = &snapshot.metadata;
        by_any.extend(m.shared_hashes());
        if !snapshot.committed {
            continue;
        }
        let this = SnapshotRef {
            job: m.job_id.clone(),
            kind: m.kind,
            id: m.checkpoint_id,
        };
        let shared = m
            .shared_objects()
            .map(|(hash, size)| (layout::shared_path(&hash), hash, size));
        let private = m
            .backends
            .iter()
            .flat_map(|b| b.private_files.iter())
            .map(|f| (f.path.clone(), f.hash, f.size));
        for key in shared.chain(private) {
            referenced.entry(key).or_default().insert(this.clone());
        }
    }
    let committed_shared: HashSet<ContentHash> = referenced
        .keys()
        .filter(|(path, hash, _)| *path == layout::shared_path(hash))
        .map(|(_, hash, _)| *hash)
        .collect();
    let mut work: Vec<Work> = referenced
        .into_iter()
        .map(|((path, hash, size), affects)| Work {
            path,
            hash,
            size,
            affects,
            unreferenced: false,
        })
        .collect();
    if !one_job {
        for (&hash, &size) in &listing.shared {
            if !committed_shared.contains(&hash) {
                work.push(Work {
                    path: layout::shared_path(&hash),
                    hash,
                    size,
                    affects: BTreeSet::new(),
                    unreferenced: !by_any.contains(&hash),
                });
            }
        }
    }
    work
}

/// What reading one object found.
enum Outcome {
    /// Its bytes match (how many were hashed).
    Whole(u64),
    /// Gone since the listing, and nothing committed references it: not a problem.
    Vanished,
    /// Read (`hashed` bytes), or not, and wrong.
    Wrong {
        kind: ProblemKind,
        reason: String,
        hashed: Option<u64>,
    },
}

async fn hash_objects(
    store: &dyn Store,
    work: Vec<Work>,
    parallelism: usize,
    progress: Option<Progress>,
    report: &mut CheckReport,
    problems: &mut Vec<Problem>,
) {
    let outcomes: Vec<(Work, Outcome)> = stream::iter(work.into_iter().map(|work| {
        let progress = progress.clone();
        async move {
            let outcome = hash_object(store, &work, progress.as_ref()).await;
            (work, outcome)
        }
    }))
    .buffer_unordered(parallelism)
    .collect()
    .await;
    for (work, outcome) in outcomes {
        let hashed = match &outcome {
            Outcome::Whole(bytes) => Some(*bytes),
            Outcome::Vanished => None,
            Outcome::Wrong { hashed, .. } => *hashed,
        };
        if let Some(bytes) = hashed {
            report.objects += 1;
            report.bytes += bytes;
        }
        if work.unreferenced && !matches!(outcome, Outcome::Vanished) {
            report.unreferenced_objects += 1;
            report.unreferenced_bytes += work.size;
        }
        if let Outcome::Wrong { kind, reason, .. } = outcome {
            problems.push(Problem {
                path: work.path,
                kind,
                reason,
                affects: work.affects.into_iter().collect(),
                affects_job: None,
            });
        }
    }
}

/// Streams one object through a [`Verifier`] of its expected hash and size.
async fn hash_object(store: &dyn Store, work: &Work, progress: Option<&Progress>) -> Outcome {
    let referenced = !work.affects.is_empty();
    let failed = |e: Error, hashed: Option<u64>| match e.kind() {
        ErrorKind::NotFound if !referenced => Outcome::Vanished,
        ErrorKind::NotFound => Outcome::Wrong {
            kind: ProblemKind::Missing,
            reason: "not in the store".into(),
            hashed,
        },
        _ => Outcome::Wrong {
            kind: ProblemKind::ReadFailed,
            reason: e.to_string(),
            hashed,
        },
    };
    let mut verifier = Verifier::new(work.path.clone(), work.hash, work.size);
    let (found, mut chunks) = match store.get_stream(&work.path).await {
        Ok(opened) => opened,
        Err(e) => return failed(e, None),
    };
    if verifier.size_is(found).is_err() {
        return Outcome::Wrong {
            kind: ProblemKind::SizeMismatch,
            reason: format!("{found} bytes, expected {}", work.size),
            hashed: Some(0),
        };
    }
    let mut received = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return failed(e, Some(received)),
        };
        received += chunk.len() as u64;
        if let Some(progress) = progress {
            progress(chunk.len() as u64);
        }
        if verifier.update(&chunk).is_err() {
            return Outcome::Wrong {
                kind: ProblemKind::SizeMismatch,
                reason: format!(
                    "more than the {} bytes expected (grew while it was read?)",
                    work.size
                ),
                hashed: Some(received),
            };
        }
    }
    match verifier.finish() {
        Ok(()) => Outcome::Whole(received),
        Err(_) if received != work.size => Outcome::Wrong {
            kind: ProblemKind::SizeMismatch,
            reason: format!("{received} bytes, expected {}", work.size),
            hashed: Some(received),
        },
        Err(e) => Outcome::Wrong {
            kind: ProblemKind::HashMismatch,
            reason: e.to_string(),
            hashed: Some(received),
        },
    }
}

/// Reads the job records of every snapshot a problem affects again, and keeps only the snapshots
/// still committed. A problem that only a discarded snapshot had — a missing or unreadable object
/// or metadata record, a damaged private file — is dropped: its snapshot is gone, not damaged. A
/// damaged shared file stays (the next checkpoint that reuses its hash would take its bytes), as
/// does anything a record names.
async fn recheck(store: &dyn Store, problems: Vec<Problem>) -> Vec<Problem> {
    let jobs: BTreeSet<&str> = problems
        .iter()
        .flat_map(|p| p.affects.iter().map(|s| s.job.as_str()))
        .collect();
    let mut records: BTreeMap<String, Option<JobRecord>> = BTreeMap::new();
    for job in jobs {
        // A record that cannot be read now tells nothing: every snapshot is kept.
        if let Ok(record) = job::read_job(store, job).await {
            records.insert(job.to_owned(), record.map(|(record, _)| record));
        }
    }
    let mut kept = Vec::new();
    for mut problem in problems {
        if problem.affects.is_empty() {
            kept.push(problem);
            continue;
        }
        let mut still = Vec::new();
        for snapshot in problem.affects {
            if still_committed(store, &records, &snapshot).await {
                still.push(snapshot);
            }
        }
        problem.affects = still;
        let shared = layout::parse_shared_path(&problem.path).is_some();
        let damage_stays = match problem.kind {
            ProblemKind::SizeMismatch | ProblemKind::HashMismatch => shared,
            ProblemKind::Undecodable => true,
            ProblemKind::Missing | ProblemKind::ReadFailed => false,
        };
        if !problem.affects.is_empty() || damage_stays {
            kept.push(problem);
        }
    }
    kept
}

async fn still_committed(
    store: &dyn Store,
    records: &BTreeMap<String, Option<JobRecord>>,
    snapshot: &SnapshotRef,
) -> bool {
    match records.get(&snapshot.job) {
        None => true,
        Some(Some(record)) => committed_ids(record).contains(&(snapshot.kind, snapshot.id)),
        // No record: the metadata is the commit point.
        Some(None) => !matches!(store.head(&snapshot.metadata_path()).await, Ok(None)),
    }
}
