//! GC of a whole root (G1–G4 of `docs/protocols.md`): the only deleter of shared files.
//!
//! Safety: a shared file is deleted only if no metadata record and no live pin references it, it
//! is older than the grace period, a deletion intent naming it was durable *before* a second
//! listing of metadata and pins that still does not reference it, and the intent has not expired.
//! Reusers pin first and then wait out intents (the reuser rule), so a reuser and GC never both
//! win — at any grace period. A pin is live while its owner is: a job epoch that is not fenced (GC
//! fences a job whose lease expired before it calls its pins dead), or a reader whose expiry has
//! not passed. A record GC cannot read could reference anything: it is
//! reported, and it blocks every shared-file deletion of the pass, nothing else. Dry run is the
//! default.
//!
//! GC touches only the layout: it lists, deletes and sweeps only under the layout's prefixes, and
//! it refuses a store that is not a root ([`root_status`]): one with neither the `rockpoint-root`
//! marker nor a valid job record, unless it holds no object at all (a root nothing wrote to yet).
//! A directory or bucket prefix given by mistake is refused rather than swept.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::job::{self, CLOCK_MARGIN_MS, DeletionIntent, INTENT_LEASE, JobRecord};
use super::metadata::{self, CheckpointMetadata, PinOwner, PinRecord};
use crate::error::Error;
use crate::error::{ErrorKind, Result};
use crate::hash::ContentHash;
use crate::layout::{self, RootMarker, SnapshotKind, parse_checkpoint_path, parse_shared_path};
use crate::store::{ObjectInfo, Store, SweepMode, WriteMode};

/// Whether a store is a rockpoint root; see [`root_status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootStatus {
    /// The root marker is there.
    Marked(RootMarker),
    /// No marker, but a valid job record under `jobs/*/_job`: a root written by a build older
    /// than the marker. Writers add the marker.
    Unmarked {
        /// A job whose record was read.
        job_id: String,
    },
    /// No marker and no object at all: nothing wrote here yet (not a root, but may become one).
    Empty,
    /// No marker, no valid job record, and objects: something else's location.
    NotARoot {
        /// Up to a few of the objects found, to name in messages.
        found: Vec<String>,
    },
}

impl RootStatus {
    /// Whether the location is a root (marked, or an older root with job records).
    pub fn is_root(&self) -> bool {
        matches!(self, RootStatus::Marked(_) | RootStatus::Unmarked { .. })
    }
}

/// Tells whether `store` is a rockpoint root: its `rockpoint-root` marker, or else (a root written
/// before markers existed) a valid job record under `jobs/*/_job`, or else whether it is empty.
/// Reads only; a marker that exists but does not decode is `Corruption`.
pub async fn root_status(store: &dyn Store) -> Result<RootStatus> {
    if let Some((bytes, _)) = store.get_versioned(layout::ROOT_MARKER).await? {
        return Ok(RootStatus::Marked(RootMarker::decode(&bytes)?));
    }
    for object in store.list(layout::JOBS).await? {
        let Some(job_id) = layout::parse_job_record_path(&object.path) else {
            continue;
        };
        if layout::validate_job_id(job_id).is_err() {
            continue;
        }
        if let Ok(Some(_)) = job::read_job(store, job_id).await {
            return Ok(RootStatus::Unmarked {
                job_id: job_id.to_owned(),
            });
        }
    }
    let found: Vec<String> = store
        .list("")
        .await?
        .into_iter()
        .take(3)
        .map(|o| o.path)
        .collect();
    if found.is_empty() {
        return Ok(RootStatus::Empty);
    }
    // Every writer marks a new root before it writes anything else: content that appeared since
    // the first look came with a marker, which a second look finds.
    if let Some((bytes, _)) = store.get_versioned(layout::ROOT_MARKER).await? {
        return Ok(RootStatus::Marked(RootMarker::decode(&bytes)?));
    }
    Ok(RootStatus::NotARoot { found })
}

/// Writes the root marker if it is missing (create-only: an existing marker is kept, whoever
/// wrote it). Every writer that creates root content calls this first: a coordinator's claim
/// (O1), an export into a root (X1), GC of an older unmarked root.
pub async fn mark_root(store: &dyn Store) -> Result<()> {
    if store.get_versioned(layout::ROOT_MARKER).await?.is_some() {
        return Ok(());
    }
    let marker = RootMarker::new_now();
    match store
        .put(
            layout::ROOT_MARKER,
            bytes::Bytes::from(marker.encode()),
            WriteMode::CreateOnly,
        )
        .await
    {
        Ok(()) => {
            tracing::info!(root = store.describe(), "marked the root");
            Ok(())
        }
        // Another writer marked it meanwhile: keep theirs.
        Err(e) if e.kind() == ErrorKind::Conflict => Ok(()),
        Err(e) => Err(e),
    }
}

/// The message of a location that is not a root (the CLI prints it too).
pub(crate) fn not_a_root_message(where_: &str, status: &RootStatus) -> String {
    let found = match status {
        RootStatus::NotARoot { found } => {
            format!(" It holds other objects, e.g. {}.", found.join(", "))
        }
        _ => String::new(),
    };
    format!(
        "{where_} is not a rockpoint root: no `{}` marker and no job records; check the path (a \
         root is created by a job's coordinator or an export).{found}",
        layout::ROOT_MARKER
    )
}

/// What GC may remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GcOptions {
    /// Unreferenced shared files and orphaned records younger than this are kept (an extra
    /// margin; safety does not depend on it). Default: one hour.
    pub grace_period: Duration,
    /// Report only, or delete. Default: `DryRun`.
    pub mode: SweepMode,
    /// How far the clocks of the machines sharing the root may disagree: a lease or a reader
    /// pin counts as expired only this long after its expiry. Default: 30 seconds.
    pub clock_margin: Duration,
    /// Temporary files of interrupted writes younger than this are kept whatever the grace
    /// period: an upload in flight is writing them (a snapshot stages new SSTs there). Default:
    /// one hour.
    pub incomplete_min_age: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_period: Duration::from_secs(3600),
            mode: SweepMode::DryRun,
            clock_margin: Duration::from_millis(CLOCK_MARGIN_MS),
            incomplete_min_age: Duration::from_secs(3600),
        }
    }
}

/// What GC found and (unless dry run) removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Whether anything was deleted.
    pub dry_run: bool,
    /// Metadata records (checkpoints and savepoints, committed or orphaned) in the root.
    pub metadata_records: usize,
    /// Distinct shared files they and the live pins reference.
    pub referenced_shared_files: usize,
    /// Unreferenced shared files (removed unless dry run).
    pub shared_files: Vec<String>,
    /// Records of checkpoints that no job record lists: orphaned metadata and private files.
    pub private_files: Vec<String>,
    /// Dead pins (their owner's epoch was fenced, or a reader's pin expired) and expired intents.
    pub pins: Vec<String>,
    /// Temporary files and empty directories.
    pub incomplete: Vec<String>,
    /// Jobs whose lease had expired, fenced by this pass.
    pub fenced_jobs: Vec<String>,
    /// Records that could not be read, with why; while any is listed, no shared file is deleted.
    pub unreadable: Vec<String>,
    /// Bytes of everything listed above.
    pub reclaimed_bytes: u64,
    /// Store requests this pass made.
    pub requests: u64,
}

impl GcReport {
    /// Whether GC found nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.shared_files.is_empty()
            && self.private_files.is_empty()
            && self.pins.is_empty()
            && self.incomplete.is_empty()
    }
}

/// Everything that references shared files, read afresh.
#[derive(Default)]
struct View {
    metadata: Vec<(String, CheckpointMetadata)>,
    pins: Vec<(ObjectInfo, PinRecord)>,
    records: HashMap<String, Option<JobRecord>>,
    unreadable: Vec<String>,
    requests: u64,
}

impl View {
    /// Reads job records, *then* pins, *then* metadata.
    /// * Pins before metadata: a reference only ever moves from a pin to a metadata record (the
    ///   metadata is written before the pin is removed), so a checkpoint that commits while GC
    ///   reads is seen in one of the two listings.
    /// * Records before pins: a pin is judged dead by a record showing a newer epoch. Read first,
    ///   such a record proves the pin's epoch was fenced before the metadata listing began, so
    ///   anything that epoch committed is in that listing.
    async fn load(store: &dyn Store) -> Result<(View, Vec<ObjectInfo>)> {
        let mut view = View::default();
        view.requests += 1;
        for object in store.list(layout::JOBS).await? {
            if let Some(job) = layout::parse_job_record_path(&object.path) {
                view.requests += 1;
                let record = match job::read_job(store, job).await {
                    Ok(record) => record.map(|(r, _)| r),
                    Err(e) => {
                        view.unreadable.push(format!("{}: {e}", object.path));
                        None
                    }
                };
                view.records.insert(job.to_owned(), record);
            }
        }
        view.requests += 1;
        for object in store.list(layout::PINS).await? {
            // A name rockpoint never writes holds nothing (and blocks nothing).
            if !layout::is_pin_path(&object.path) {
                continue;
            }
            view.requests += 1;
            match store.get(&object.path).await {
                Ok(bytes) => match metadata::decode_pin(&bytes, &object.path) {
                    Ok(pin) => view.pins.push((object, pin)),
                    Err(e) => view.unreadable.push(format!("{}: {e}", object.path)),
                },
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => view.unreadable.push(format!("{}: {e}", object.path)),
            }
        }
        view.requests += 1;
        let jobs = store.list(layout::JOBS).await?;
        for object in &jobs {
            if parse_checkpoint_path(&object.path).is_some_and(|p| p.is_metadata()) {
                view.requests += 1;
                match store.get(&object.path).await {
                    Ok(bytes) => match metadata::decode_metadata(&bytes, &object.path) {
                        Ok(decoded) => view.metadata.push((object.path.clone(), decoded)),
                        Err(e) => view.unreadable.push(format!("{}: {e}", object.path)),
                    },
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => view.unreadable.push(format!("{}: {e}", object.path)),
                }
            }
        }
        Ok((view, jobs))
    }

    /// Whether the pin at `path` still protects anything (see [`pin_live`]).
    fn pin_live(&self, path: &str, pin: &PinRecord, now_ms: u64, margin_ms: u64) -> bool {
        let owner_record = match &pin.owner {
            PinOwner::Epoch { job, .. } => self.records.get(job).and_then(Option::as_ref),
            PinOwner::Reader { .. } => None,
        };
        pin_live(path, pin, owner_record, now_ms, margin_ms)
    }

    /// What the metadata (except `ignored` orphans, which this pass deletes) and the live pins
    /// reference.
    fn referenced(
        &self,
        now_ms: u64,
        margin_ms: u64,
        ignored: &HashSet<String>,
    ) -> HashSet<ContentHash> {
        let mut referenced: HashSet<ContentHash> = self
            .metadata
            .iter()
            .filter(|(path, _)| !ignored.contains(path))
            .flat_map(|(_, m)| m.shared_hashes())
            .collect();
        for (info, pin) in &self.pins {
            if self.pin_live(&info.path, pin, now_ms, margin_ms) {
                referenced.extend(pin.hashes.iter().copied());
            }
        }
        referenced
    }
}

/// Sweeps `store` (G1–G4).
#[tracing::instrument(name = "gc", skip_all, fields(mode = ?options.mode))]
pub async fn collect_garbage(store: &dyn Store, options: &GcOptions) -> Result<GcReport> {
    let deleting = options.mode == SweepMode::Delete;
    let margin_ms = options.clock_margin.as_millis() as u64;
    let cutoff = SystemTime::now()
        .checked_sub(options.grace_period)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let old = |info: &ObjectInfo| info.modified <= cutoff;
    let mut report = GcReport {
        dry_run: !deleting,
        ..GcReport::default()
    };
    // G0: only a root (or an empty store) is collected; an older root gets its marker.
    report.requests += 2;
    match root_status(store).await? {
        RootStatus::Marked(_) | RootStatus::Empty => {}
        RootStatus::Unmarked { .. } => {
            if deleting {
                report.requests += 2;
                mark_root(store).await?;
            }
        }
        status @ RootStatus::NotARoot { .. } => {
            return Err(Error::invalid(not_a_root_message(
                &store.describe(),
                &status,
            )));
        }
    }
    // G1
    let shared = store.list(layout::SHARED).await?;
    let intents = store.list(layout::INTENTS).await?;
    report.requests += 2;
    let (mut view, jobs) = View::load(store).await?;
    report.requests += view.requests;

    // G2
    fence_expired(store, &mut view, &mut report, margin_ms, deleting).await?;

    // G3
    let now = crate::util::now_ms();
    let mut private_candidates = orphaned_records(&view, &jobs, now, margin_ms, &old);
    let orphans: HashSet<String> = private_candidates
        .iter()
        .filter(|(path, _)| parse_checkpoint_path(path).is_some_and(|p| p.is_metadata()))
        .map(|(path, _)| path.clone())
        .collect();
    let referenced = view.referenced(now, margin_ms, &orphans);
    report.metadata_records = view.metadata.len();
    report.referenced_shared_files = referenced.len();
    report.unreadable = view.unreadable.clone();
    let mut shared_candidates: BTreeMap<String, (ContentHash, u64)> = shared
        .iter()
        .filter_map(|object| match parse_shared_path(&object.path) {
            Some(hash) if !referenced.contains(&hash) && old(object) => {
                Some((object.path.clone(), (hash, object.size)))
            }
            Some(_) => None,
            // Not a name the engine writes: leave it alone, but say so.
            None => {
                tracing::warn!(
                    path = object.path,
                    "unexpected object under shared/; left in place"
                );
                None
            }
        })
        .collect();
    let mut dead: Vec<(String, u64)> = view
        .pins
        .iter()
        .filter(|(info, pin)| !view.pin_live(&info.path, pin, now, margin_ms) && old(info))
        .map(|(info, _)| (info.path.clone(), info.size))
        .collect();
    dead.extend(expired_intents(store, &intents, now, &mut report).await);

    report.pins = dead.iter().map(|(p, _)| p.clone()).collect();
    report.private_files = private_candidates.iter().map(|(p, _)| p.clone()).collect();
    let blocked = !view.unreadable.is_empty();
    if blocked {
        tracing::warn!(
            records = ?view.unreadable,
            "records GC cannot read could reference any shared file: no shared file is deleted in this pass"
        );
        shared_candidates.clear();
    }
    if !deleting {
        report.reclaimed_bytes = shared_candidates.values().map(|(_, s)| s).sum::<u64>()
            + private_candidates.iter().map(|(_, s)| s).sum::<u64>();
        report.shared_files = shared_candidates.into_keys().collect();
        report.incomplete = store
            .sweep_incomplete(
                options.grace_period.max(options.incomplete_min_age),
                options.mode,
            )
            .await?;
        log_pass(store, &report);
        return Ok(report);
    }

    // G4: records first (nothing here is referenced by a live owner), then shared files under the
    // deleter rule.
    spare_read_records(store, &view, &mut private_candidates, margin_ms).await?;
    report.private_files = private_candidates.iter().map(|(p, _)| p.clone()).collect();
    for (path, size) in dead.iter().chain(private_candidates.iter()) {
        report.requests += 1;
        store.delete(path).await?;
        report.reclaimed_bytes += size;
    }
    if !shared_candidates.is_empty() {
        delete_under_intent(store, &mut shared_candidates, &mut report, margin_ms).await?;
        report.shared_files = shared_candidates.into_keys().collect();
    }
    report.incomplete = store
        .sweep_incomplete(
            options.grace_period.max(options.incomplete_min_age),
            options.mode,
        )
        .await?;
    crate::metrics::gc_pass(
        report.shared_files.len(),
        report.private_files.len(),
        report.pins.len(),
        report.incomplete.len(),
        report.reclaimed_bytes,
    );
    log_pass(store, &report);
    Ok(report)
}

/// One line per pass at info level (`-v` on the CLI): what it removed, or would.
fn log_pass(store: &dyn Store, report: &GcReport) {
    tracing::info!(
        root = store.describe(),
        dry_run = report.dry_run,
        shared_files = report.shared_files.len(),
        records = report.private_files.len(),
        pins = report.pins.len(),
        temporaries = report.incomplete.len(),
        bytes = report.reclaimed_bytes,
        fenced_jobs = report.fenced_jobs.len(),
        unreadable = report.unreadable.len(),
        requests = report.requests,
        "gc pass done"
    );
}

/// The second listing and the deletes of G4, while the intent is durable.
async fn delete_shared(
    store: &dyn Store,
    intent: &DeletionIntent,
    candidates: &mut BTreeMap<String, (ContentHash, u64)>,
    report: &mut GcReport,
    margin_ms: u64,
) -> Result<()> {
    let (view, _) = View::load(store).await?;
    report.requests += view.requests;
    if !view.unreadable.is_empty() {
        report.unreadable.extend(view.unreadable.iter().cloned());
        candidates.clear();
        return Ok(());
    }
    let protected = view.referenced(crate::util::now_ms(), margin_ms, &HashSet::new());
    candidates.retain(|_, (hash, _)| !protected.contains(hash));
    let mut removed = BTreeMap::new();
    for (path, (hash, size)) in std::mem::take(candidates) {
        // The one timing assumption: a pass never deletes after its intent expired.
        if crate::util::now_ms() >= intent.expires_at_ms {
            tracing::warn!("GC deletion intent expired; the rest waits for the next pass");
            break;
        }
        report.requests += 1;
        store.delete(&path).await?;
        report.reclaimed_bytes += size;
        removed.insert(path, (hash, size));
    }
    *candidates = removed;
    Ok(())
}

/// Whether the pin at `path` still protects anything. `owner_record` is the record of the job
/// whose epoch owns it, as read after the pin (`None`: not known, or the job has none — then the
/// pin counts as live). Used by GC and by an operator's delete, so both judge pins alike.
pub(crate) fn pin_live(
    path: &str,
    pin: &PinRecord,
    owner_record: Option<&JobRecord>,
    now_ms: u64,
    margin_ms: u64,
) -> bool {
    match &pin.owner {
        PinOwner::Reader { expires_at_ms } => expires_at_ms.saturating_add(margin_ms) >= now_ms,
        // Dead only when provably so: an older epoch than the record's, i.e. fenced — by a
        // newer claim, or by GC after the lease expired (G2 fences before it judges). An
        // expired lease alone proves nothing: the owner may still commit until it is fenced.
        // A record read before a newer claim, or not read at all, cannot prove a pin dead.
        // And a snapshot pin of the live epoch is dead once its checkpoint ended (its id is
        // below the record's `finished_below`): it can no longer commit. A backend in another
        // process may write it after the coordinator gave up on the checkpoint.
        PinOwner::Epoch { job, epoch } => match owner_record {
            Some(record) => {
                let ended = layout::parse_snapshot_pin(path).is_some_and(|(pin_job, _, id)| {
                    pin_job == job && *epoch == record.epoch && id < record.finished_below
                });
                *epoch >= record.epoch && !ended
            }
            None => true,
        },
    }
}

/// Swaps an expired job's record to a new epoch without owner: its pins are dead from here on.
async fn fence(store: &dyn Store, job: &str, margin_ms: u64) -> Result<Option<JobRecord>> {
    let Some((record, version)) = job::read_job(store, job).await? else {
        return Ok(None);
    };
    let now = crate::util::now_ms();
    if record.owner.is_none() || record.lease_live(now, margin_ms) {
        return Ok(Some(record));
    }
    let mut next = record.clone();
    next.fence(now);
    match job::swap_job(store, &next, Some(&version)).await? {
        Some(_) => {
            tracing::info!(job, epoch = next.epoch, "fenced a job whose lease expired");
            Ok(Some(next))
        }
        None => Ok(job::read_job(store, job).await?.map(|(r, _)| r)),
    }
}

/// Metadata and private files of checkpoints that no job record lists and no live epoch may still
/// commit, without a live reader pin. Jobs without a record (or with an unreadable one) are left
/// alone.
fn orphaned_records(
    view: &View,
    jobs: &[ObjectInfo],
    now_ms: u64,
    margin_ms: u64,
    old: &dyn Fn(&ObjectInfo) -> bool,
) -> Vec<(String, u64)> {
    let read = reader_pinned(&view.pins, view, now_ms, margin_ms);
    let mut out = Vec::new();
    for object in jobs {
        let Some(layout::CheckpointPath { job, kind, id, .. }) =
            parse_checkpoint_path(&object.path)
        else {
            continue;
        };
        let Some(Some(record)) = view.records.get(job) else {
            continue;
        };
        let complete = match kind {
            SnapshotKind::Checkpoint => record.retained.contains(&id),
            SnapshotKind::Savepoint => record.savepoints.contains(&id),
        };
        // The live owner may still be committing ids of its own block, or deleting what it
        // discards; a fenced or expired owner may not.
        let owner_live = record.lease_live(now_ms, margin_ms);
        // Ids below `finished_below` ended: their leftovers are GC's even while the owner lives.
        // An export's id is never the owner's: its leftovers are held only by the export's pin.
        let owners_business = owner_live
            && !record.exporting.contains(&id)
            && ((id >= record.epoch_first_id && id >= record.finished_below)
                || record.discarding.contains(&id));
        if complete
            || owners_business
            || id >= record.next_id
            || read.contains(&(job.to_owned(), id))
            || !old(object)
        {
            continue;
        }
        out.push((object.path.clone(), object.size));
    }
    out
}

/// The checkpoints (job, id) that a live reader pin holds. Ids are unique within a job across
/// checkpoints and savepoints, so the id alone names the checkpoint.
fn reader_pinned(
    pins: &[(ObjectInfo, PinRecord)],
    view: &View,
    now_ms: u64,
    margin_ms: u64,
) -> BTreeSet<(String, u64)> {
    pins.iter()
        .filter(|(info, _)| layout::is_reader_pin_path(&info.path))
        .filter(|(info, pin)| view.pin_live(&info.path, pin, now_ms, margin_ms))
        .filter_map(|(_, pin)| Some((pin.job_id.clone(), pin.checkpoint_id?)))
        .collect()
}

/// G4 for records: a reader may have pinned a checkpoint after the first listing and checked its
/// job record before the record dropped it. Listing pins again *after* the records were read
/// catches every such reader (reuser rule for private files: pin, then check the record).
async fn spare_read_records(
    store: &dyn Store,
    view: &View,
    candidates: &mut Vec<(String, u64)>,
    margin_ms: u64,
) -> Result<()> {
    if candidates.is_empty() {
        return Ok(());
    }
    let mut pins = Vec::new();
    for object in store.list(layout::PINS).await? {
        if !layout::is_reader_pin_path(&object.path) || !layout::is_pin_path(&object.path) {
            continue;
        }
        match store.get(&object.path).await {
            Ok(bytes) => match metadata::decode_pin(&bytes, &object.path) {
                Ok(pin) => pins.push((object, pin)),
                // An unreadable reader pin could hold any checkpoint.
                Err(_) => {
                    candidates.clear();
                    return Ok(());
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let read = reader_pinned(&pins, view, crate::util::now_ms(), margin_ms);
    candidates.retain(|(path, _)| {
        parse_checkpoint_path(path).is_none_or(|p| !read.contains(&(p.job.to_owned(), p.id)))
    });
    Ok(())
}

/// G2: fences the jobs whose lease expired (only when deleting), so that their pins are really
/// dead; reports them either way.
async fn fence_expired(
    store: &dyn Store,
    view: &mut View,
    report: &mut GcReport,
    margin_ms: u64,
    deleting: bool,
) -> Result<()> {
    let now = crate::util::now_ms();
    let expired: Vec<String> = view
        .records
        .iter()
        .filter_map(|(job, record)| {
            let record = record.as_ref()?;
            (record.owner.is_some() && !record.lease_live(now, margin_ms)).then(|| job.clone())
        })
        .collect();
    for job in expired {
        report.fenced_jobs.push(job.clone());
        if deleting {
            report.requests += 2;
            if let Some(record) = fence(store, &job, margin_ms).await? {
                view.records.insert(job, Some(record));
            }
        }
    }
    Ok(())
}

/// Deletion intents whose lease ran out (their pass died): records to delete, with their sizes.
async fn expired_intents(
    store: &dyn Store,
    intents: &[ObjectInfo],
    now: u64,
    report: &mut GcReport,
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for object in intents {
        report.requests += 1;
        let expired = match store.get(&object.path).await {
            Ok(bytes) => job::decode_intent(&bytes, &object.path)
                .map(|i| i.expired(now))
                .unwrap_or_else(|_| object.modified.elapsed().is_ok_and(|a| a > INTENT_LEASE)),
            Err(_) => false,
        };
        if expired {
            out.push((object.path.clone(), object.size));
        }
    }
    out
}

/// G4 for shared files, the deleter rule: write a deletion intent naming them, delete those that a
/// second look at pins and metadata still finds unreferenced, remove the intent.
async fn delete_under_intent(
    store: &dyn Store,
    candidates: &mut BTreeMap<String, (ContentHash, u64)>,
    report: &mut GcReport,
    margin_ms: u64,
) -> Result<()> {
    let intent = DeletionIntent {
        created_at_ms: crate::util::now_ms(),
        expires_at_ms: crate::util::now_ms() + INTENT_LEASE.as_millis() as u64,
        hashes: candidates.values().map(|(h, _)| *h).collect(),
    };
    let intent_path = layout::intent_path();
    report.requests += 1;
    store
        .put(
            &intent_path,
            job::encode_intent(&intent)?,
            WriteMode::CreateOnly,
        )
        .await?;
    let result = delete_shared(store, &intent, candidates, report, margin_ms).await;
    report.requests += 1;
    let removed = store.delete(&intent_path).await;
    result?;
    removed
}
