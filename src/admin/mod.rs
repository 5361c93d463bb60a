//! A read-only view of a checkpoint root, for operators and tools (the `rockpoint` CLI is built on
//! it): which jobs the root holds, their committed checkpoints and savepoints with sizes, and how
//! many bytes those share.
//!
//! The view is taken from one listing of the root plus one read per job record and per committed
//! metadata record; it writes nothing. A record that cannot be read is reported in
//! [`RootView::unreadable`] and leaves the rest of the view intact; a record that vanishes between
//! the listing and its read (a job discarding it meanwhile) is simply not in the view.
//!
//! Whether a location is a root at all ([`root_status`]: its `rockpoint-root` marker, or the job
//! records of a root older than markers) is asked before anything else; [`mark_root`] is the one
//! writer here, for tools that create a root (an export into an empty location).

mod check;
mod delete;
mod prune;

pub use check::{CheckOptions, CheckReport, Problem, ProblemKind, SnapshotRef, check_root};
pub use delete::{DeleteOptions, DeleteOutcome, DeleteReport, delete_snapshot};
pub use prune::{PruneDecision, PrunePolicy, plan_prune};

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub use crate::checkpoint::gc::{RootStatus, mark_root, root_status};
use crate::checkpoint::job;
pub use crate::checkpoint::job::{JobRecord, job_record};
use crate::checkpoint::metadata::{self, CheckpointMetadata};
use crate::error::{ErrorKind, Result};
use crate::hash::ContentHash;
pub use crate::layout::RootMarker;
use crate::layout::{self, SnapshotKind};
use crate::store::Store;

/// One committed checkpoint or savepoint, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Its metadata path (what `restore` and `verify` take).
    pub path: String,
    /// The job it belongs to.
    pub job_id: String,
    /// Its id within the job.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// When it was committed, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// How many backends (key-group ranges) it holds.
    pub backends: usize,
    /// Bytes this checkpoint uploaded (what was new when it was taken).
    pub checkpointed_bytes: u64,
    /// Bytes of state it restores to (every file it references, shared or not).
    pub full_bytes: u64,
    /// Bytes no other committed checkpoint of the root references: what deleting this one (and
    /// then running GC) would free, besides its small metadata record. Records the view could not
    /// read ([`RootView::unreadable`]) may reference more, so with any of those it is an upper bound.
    pub exclusive_bytes: u64,
}

/// One job of the root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// Its record (epoch, owner, lease, retained ids), if it has one.
    pub record: Option<JobRecord>,
    /// Its committed checkpoints and savepoints, by ascending id.
    pub checkpoints: Vec<CheckpointSummary>,
}

/// What a root holds; see [`inspect_root`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootView {
    /// Every job, by id.
    pub jobs: Vec<JobView>,
    /// Bytes of every object in the root (including what GC may still remove).
    pub stored_bytes: u64,
    /// Bytes of the distinct files that the committed checkpoints of every job reference (what must
    /// stay), whichever jobs the view shows.
    pub referenced_bytes: u64,
    /// Records that could not be read, one line each (path and reason).
    pub unreadable: Vec<String>,
    /// Per committed snapshot (by metadata path): the shared files it references, and the bytes of
    /// its private files. For [`RootView::freed_by`].
    #[serde(skip)]
    files: BTreeMap<String, (BTreeMap<ContentHash, u64>, u64)>,
}

impl RootView {
    /// Every committed checkpoint and savepoint of every job, by job then id.
    pub fn checkpoints(&self) -> impl Iterator<Item = &CheckpointSummary> {
        self.jobs.iter().flat_map(|job| job.checkpoints.iter())
    }

    /// Bytes that deleting the snapshots at `paths` (metadata paths) together, then running GC,
    /// would free: their private files, and the shared files that no other committed snapshot of
    /// the root references, each counted once. An upper bound while records are
    /// [`unreadable`](Self::unreadable) (they may reference more); a live pin delays it.
    pub fn freed_by<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> u64 {
        let (shared, private) = self.freed_parts(paths);
        shared + private
    }

    /// [`freed_by`](Self::freed_by) in its two parts: (shared files GC then frees, private files
    /// the deletion itself removes).
    pub fn freed_parts<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> (u64, u64) {
        let deleted: BTreeSet<&str> = paths.into_iter().collect();
        let mut kept: HashSet<ContentHash> = HashSet::new();
        for (path, (shared, _)) in &self.files {
            if !deleted.contains(path.as_str()) {
                kept.extend(shared.keys().copied());
            }
        }
        let mut freed: BTreeMap<ContentHash, u64> = BTreeMap::new();
        let mut private = 0;
        for path in &deleted {
            if let Some((shared, private_bytes)) = self.files.get(*path) {
                private += private_bytes;
                for (hash, size) in shared {
                    if !kept.contains(hash) {
                        freed.insert(*hash, *size);
                    }
                }
            }
        }
        (freed.values().sum::<u64>(), private)
    }
}

/// Reads what `store` holds: every job (or only `job`), its record, and a summary of each of its
/// committed checkpoints and savepoints. Only complete checkpoints are listed: those the job's record
/// retains (in a root written before job records existed, every metadata record).
pub async fn inspect_root(store: &dyn Store, job: Option<&str>) -> Result<RootView> {
    if let Some(job) = job {
        layout::validate_job_id(job)?;
    }
    let objects = store.list("").await?;
    let mut view = RootView {
        stored_bytes: objects.iter().map(|o| o.size).sum(),
        ..RootView::default()
    };
    // Every job the listing shows, with the metadata records found under it.
    let mut found: BTreeMap<String, BTreeSet<(SnapshotKind, u64)>> = BTreeMap::new();
    for object in &objects {
        if let Some(name) = layout::parse_job_record_path(&object.path) {
            found.entry(name.to_owned()).or_default();
        } else if let Some(parsed) = layout::parse_checkpoint_path(&object.path)
            && parsed.is_metadata()
        {
            found
                .entry(parsed.job.to_owned())
                .or_default()
                .insert((parsed.kind, parsed.id));
        }
    }
    let mut all: Vec<(String, CheckpointMetadata)> = Vec::new();
    for (job_id, listed) in found {
        if let Some(job) =
            read_job_view(store, job_id, listed, &mut all, &mut view.unreadable).await
        {
            view.jobs.push(job);
        }
    }

    // Sizes count every job's references (files are shared across jobs); the filter only picks
    // which jobs are shown.
    summarise(&all, &mut view);
    if let Some(job) = job {
        view.jobs.retain(|j| j.job_id == job);
    }
    for job in &mut view.jobs {
        job.checkpoints.sort_by_key(|c| (c.id, c.kind));
    }
    Ok(view)
}

/// One job's record and committed metadata (appended to `all`); `None` if its record is unreadable.
async fn read_job_view(
    store: &dyn Store,
    job_id: String,
    listed: BTreeSet<(SnapshotKind, u64)>,
    all: &mut Vec<(String, CheckpointMetadata)>,
    unreadable: &mut Vec<String>,
) -> Option<JobView> {
    let record = match job::read_job(store, &job_id).await {
        Ok(record) => record.map(|(record, _)| record),
        Err(e) => {
            unreadable.push(format!("{}: {e}", layout::job_record_path(&job_id)));
            return None;
        }
    };
    let committed: BTreeSet<(SnapshotKind, u64)> = match &record {
        Some(record) => record
            .retained
            .iter()
            .map(|&id| (SnapshotKind::Checkpoint, id))
            .chain(
                record
                    .savepoints
                    .iter()
                    .map(|&id| (SnapshotKind::Savepoint, id)),
            )
            .collect(),
        None => listed,
    };
    for (kind, id) in committed {
        let path = layout::metadata_path(&job_id, kind, id);
        let decoded = match store.get(&path).await {
            Ok(bytes) => metadata::decode_metadata(&bytes, &path),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                // Discarded meanwhile — unless the job's record still lists it: then a committed
                // snapshot lost its metadata, which the view must not hide.
                let still = match job::read_job(store, &job_id).await {
                    Ok(Some((now, _))) => now.is_complete(id),
                    Ok(None) => false,
                    Err(_) => true,
                };
                if record.is_some() && still {
                    unreadable.push(format!(
                        "{path}: missing, though the record of job `{job_id}` lists it"
                    ));
                }
                continue;
            }
            Err(e) => Err(e),
        };
        match decoded {
            Ok(metadata) => all.push((path, metadata)),
            Err(e) => unreadable.push(format!("{path}: {e}")),
        }
    }
    Some(JobView {
        job_id,
        record,
        checkpoints: Vec::new(),
    })
}

/// Sizes: how many committed checkpoints reference each file tells shared from exclusive bytes.
fn summarise(all: &[(String, CheckpointMetadata)], view: &mut RootView) {
    let files: Vec<BTreeMap<ContentHash, u64>> = all
        .iter()
        .map(|(_, m)| m.shared_objects().collect())
        .collect();
    let mut users: HashMap<ContentHash, (u64, usize)> = HashMap::new();
    for (&hash, &size) in files.iter().flatten() {
        users.entry(hash).or_insert((size, 0)).1 += 1;
    }
    view.referenced_bytes = users.values().map(|(size, _)| size).sum();
    for ((path, m), files) in all.iter().zip(&files) {
        let private: u64 = m
            .backends
            .iter()
            .flat_map(|b| b.private_files.iter().map(|f| f.size))
            .sum();
        let exclusive = files
            .iter()
            .filter(|(hash, _)| users.get(hash).is_some_and(|(_, n)| *n == 1))
            .map(|(_, size)| size)
            .sum::<u64>()
            + private;
        let summary = CheckpointSummary {
            path: path.clone(),
            job_id: m.job_id.clone(),
            id: m.checkpoint_id,
            kind: m.kind,
            created_at_ms: m.created_at_ms,
            backends: m.backends.len(),
            checkpointed_bytes: m.checkpointed_size_bytes,
            full_bytes: m.full_size_bytes,
            exclusive_bytes: exclusive,
        };
        view.files.insert(path.clone(), (files.clone(), private));
        if let Some(job) = view.jobs.iter_mut().find(|j| j.job_id == m.job_id) {
            job.checkpoints.push(summary);
        }
    }
}
