//! Deleting a committed checkpoint or savepoint on an operator's request (P-steps of
//! `docs/protocols.md`, "Delete a committed snapshot"): `rockpoint delete` and `rockpoint prune`.
//!
//! The decision is a compare-and-swap of the job record that drops the id, as every decision of a
//! job is. What happens to the snapshot's records then depends on who owns the job:
//! - a live coordinator: the id goes to `discarding`, and the coordinator deletes the records at
//!   its next record swap, once no checkpoint of its own in flight reuses their files (C6, the
//!   path a claim by another job takes);
//! - nobody (the lease was released, or it expired and the same swap fences the job, as GC would):
//!   the metadata and private files are deleted here (D1–D3).
//!
//! Shared files are never deleted here: GC removes those no other snapshot and no live pin
//! references (deleting a snapshot therefore never breaks another one: every metadata record lists
//! all the files its snapshot needs). Refused, with nothing written: the job's newest retained
//! checkpoint (what it resumes from) unless forced, and a snapshot that a live reader pin holds (a
//! restore or export reading it, or a job restored from it that has not completed a checkpoint of
//! its own: it would restore it again after a failure).

use serde::{Deserialize, Serialize};

use crate::checkpoint::gc::pin_live;
use crate::checkpoint::job::{self, CLOCK_MARGIN_MS, JobRecord};
use crate::checkpoint::metadata::{self, PinOwner};
use crate::checkpoint::restore::RestoreSource;
use crate::checkpoint::restore::resolve::resolve_metadata_path;
use crate::error::{Error, ErrorKind, Result};
use crate::layout::{self, SnapshotKind};
use crate::store::Store;

/// How [`delete_snapshot`] decides.
#[derive(Clone, Debug)]
pub struct DeleteOptions {
    /// Delete the job's newest retained checkpoint too (the one it resumes from). Never overrides
    /// a live reader.
    pub force: bool,
    /// Decide and report only; write nothing.
    pub dry_run: bool,
    /// How far the clocks of the machines sharing the root may disagree: a lease or a reader pin
    /// counts as expired only this long after its expiry (as [`GcOptions::clock_margin`]).
    /// Default: 30 seconds.
    ///
    /// [`GcOptions::clock_margin`]: crate::GcOptions::clock_margin
    pub clock_margin: std::time::Duration,
}

impl Default for DeleteOptions {
    fn default() -> Self {
        DeleteOptions {
            force: false,
            dry_run: false,
            clock_margin: std::time::Duration::from_millis(CLOCK_MARGIN_MS),
        }
    }
}

/// What [`delete_snapshot`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum DeleteOutcome {
    /// The job record no longer lists it, and its metadata and private files are deleted (private
    /// files stay for GC if a reader pinned it meanwhile).
    Deleted,
    /// The job record no longer lists it; the job's live coordinator deletes its records at its
    /// next record swap (within a third of its lease), once no checkpoint in flight reuses them.
    HandedToOwner,
    /// A dry run: it would be deleted (or handed to the owner).
    WouldDelete,
    /// Nothing was written: these are the reasons.
    Refused {
        /// One line per reason.
        reasons: Vec<String>,
    },
}

/// The result of [`delete_snapshot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReport {
    /// The job.
    pub job_id: String,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Its id.
    pub id: u64,
    /// What happened.
    #[serde(flatten)]
    pub outcome: DeleteOutcome,
}

/// Deletes the committed checkpoint or savepoint `source` names (a metadata path, a checkpoint
/// directory, `latest:<job>` resolved to its id; the metadata itself need not be readable, so a
/// damaged snapshot can be deleted). A snapshot its job does not list is `NotFound`; a job without
/// a record (a root written before job records) is refused as `Invalid`. See the module docs for
/// what is refused and who deletes what.
pub async fn delete_snapshot(
    store: &dyn Store,
    source: &RestoreSource,
    options: &DeleteOptions,
) -> Result<DeleteReport> {
    let (job_id, kind, id) = resolve(store, source).await?;
    let report = |outcome| DeleteReport {
        job_id: job_id.clone(),
        kind,
        id,
        outcome,
    };
    // P1–P3, again from the start whenever another writer swapped the record in between.
    for _ in 0..16 {
        let Some((record, version)) = job::read_job(store, &job_id).await? else {
            return Err(Error::invalid(format!(
                "job `{job_id}` has no job record (a root written before job records): open a \
                 coordinator of the job once, then delete"
            )));
        };
        // P1
        let listed = match kind {
            SnapshotKind::Checkpoint => record.retained.contains(&id),
            SnapshotKind::Savepoint => record.savepoints.contains(&id),
        };
        if !listed {
            return Err(Error::not_found(format!(
                "job `{job_id}` does not list {} {id} (already deleted, discarded, or never \
                 committed)",
                kind_name(kind)
            )));
        }
        // P2
        let margin_ms = u64::try_from(options.clock_margin.as_millis()).unwrap_or(u64::MAX);
        let reasons = refusals(store, &record, kind, id, options.force, margin_ms).await?;
        if !reasons.is_empty() {
            return Ok(report(DeleteOutcome::Refused { reasons }));
        }
        if options.dry_run {
            return Ok(report(DeleteOutcome::WouldDelete));
        }
        // P3
        let now = crate::util::now_ms();
        let owner_live = record.lease_live(now, margin_ms);
        let mut next = record.clone();
        next.retained.retain(|&r| r != id);
        next.savepoints.retain(|&s| s != id);
        if owner_live {
            if let Err(at) = next.discarding.binary_search(&id) {
                next.discarding.insert(at, id);
            }
        } else if record.owner.is_some() {
            // The lease expired: fence the job in the same swap, as GC does (G2), so that a
            // coordinator paused past its lease can no longer commit a checkpoint that reuses
            // this snapshot's files on the strength of its metadata.
            next.fence(now);
        }
        next.updated_at_ms = now;
        if job::swap_job(store, &next, Some(&version)).await?.is_none() {
            continue; // someone swapped first: decide again on what they wrote
        }
        if owner_live {
            return Ok(report(DeleteOutcome::HandedToOwner));
        }
        // P3b, the deleter rule for the decision: a reader that pinned before P3 may have checked
        // the record before it too (R4) and so be restoring — a job restored from it would need
        // it again after a failure. P2 saw no live pin; one now means such a reader: undo P3.
        let late = reader_refusals(store, &job_id, kind, id, margin_ms).await?;
        if !late.is_empty() && undo(store, &job_id, kind, id, next.epoch).await? {
            return Ok(report(DeleteOutcome::Refused { reasons: late }));
        }
        // P4 = D1–D3
        store
            .delete(&layout::metadata_path(&job_id, kind, id))
            .await?;
        crate::checkpoint::coordinator::discard_private_files(store, &job_id, kind, id).await?;
        return Ok(report(DeleteOutcome::Deleted));
    }
    Err(Error::new(
        ErrorKind::Busy,
        format!("the record of job `{job_id}` kept changing; try again"),
    ))
}

/// P3b's undo: lists `id` in its job's record again, if the record is still of `epoch` (P3's) and
/// lacks it. A coordinator that claimed the job since P3 decided from a record without the id: its
/// recovery (O2) may delete the id's records, so after a claim the delete is not undone (`false`;
/// the reader's restore still completes, its pin keeps what it reads; only a second restore of the
/// deleted snapshot would find it gone, as after any discard).
async fn undo(
    store: &dyn Store,
    job_id: &str,
    kind: SnapshotKind,
    id: u64,
    epoch: u64,
) -> Result<bool> {
    for _ in 0..16 {
        let Some((record, version)) = job::read_job(store, job_id).await? else {
            return Ok(false);
        };
        if record.epoch != epoch
            || record.is_complete(id)
            || record.discarding.contains(&id)
            || store
                .head(&layout::metadata_path(job_id, kind, id))
                .await?
                .is_none()
        {
            return Ok(false);
        }
        let mut next = record.clone();
        let ids = match kind {
            SnapshotKind::Checkpoint => &mut next.retained,
            SnapshotKind::Savepoint => &mut next.savepoints,
        };
        if let Err(at) = ids.binary_search(&id) {
            ids.insert(at, id);
        }
        next.updated_at_ms = crate::util::now_ms();
        if job::swap_job(store, &next, Some(&version)).await?.is_some() {
            // Only a claim's recovery deletes the metadata of an id of an older epoch, and a claim
            // swaps first: our swap against the version of the same epoch won, so none ran.
            return Ok(true);
        }
    }
    Ok(false)
}

/// P2: why deleting `kind` `id` of `record`'s job must not happen now (empty: it may).
async fn refusals(
    store: &dyn Store,
    record: &JobRecord,
    kind: SnapshotKind,
    id: u64,
    force: bool,
    margin_ms: u64,
) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    if kind == SnapshotKind::Checkpoint && record.latest() == Some(id) && !force {
        reasons.push(format!(
            "it is the newest retained checkpoint of job `{}`: the job resumes from it (--force \
             deletes it anyway)",
            record.job_id
        ));
    }
    reasons.extend(reader_refusals(store, &record.job_id, kind, id, margin_ms).await?);
    Ok(reasons)
}

/// The live reader pins that hold `kind` `id` of `job_id`, one reason each.
async fn reader_refusals(
    store: &dyn Store,
    job_id: &str,
    kind: SnapshotKind,
    id: u64,
    margin_ms: u64,
) -> Result<Vec<String>> {
    let mut reasons = Vec::new();
    let now = crate::util::now_ms();
    for pin in store
        .list(&layout::reader_pin_prefix(job_id, kind, id))
        .await?
    {
        let decoded = match store.get(&pin.path).await {
            Ok(bytes) => metadata::decode_pin(&bytes, &pin.path),
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        match decoded {
            Err(e) => reasons.push(format!(
                "reader pin `{}` cannot be read ({e}); it may hold the snapshot",
                pin.path
            )),
            // The pin an export leaves on the savepoint it committed guards it from GC passes
            // that read the record before the commit; the savepoint is committed (P1), so it
            // holds nothing a reader needs. (D2 still leaves the private files to GC while it
            // lives.)
            Ok(read) if read.export_target => {}
            Ok(read) => {
                // Liveness as GC judges it: a reader's expiry, or its owner's epoch not fenced.
                let owner_record = match &read.owner {
                    PinOwner::Epoch { job: owner, .. } => job::read_job(store, owner)
                        .await
                        .ok()
                        .flatten()
                        .map(|(r, _)| r),
                    PinOwner::Reader { .. } => None,
                };
                if !pin_live(&pin.path, &read, owner_record.as_ref(), now, margin_ms) {
                    continue;
                }
                reasons.push(match &read.owner {
                    PinOwner::Reader { expires_at_ms } => {
                        let seconds = expires_at_ms
                            .saturating_add(margin_ms)
                            .saturating_sub(now)
                            .div_ceil(1000);
                        format!(
                            "a restore holds it (a restore, export or verify reading it, or a job \
                             restored from it that has not completed a checkpoint of its own yet \
                             and would restore it again after a failure): pin `{}`, released when \
                             it ends; if its process died, the pin lapses in {seconds} s",
                            pin.path
                        )
                    }
                    PinOwner::Epoch { job: owner, .. } => format!(
                        "job `{owner}` restored from it and has not completed a checkpoint of its \
                         own yet (it would restore it again after a failure): pin `{}`, released \
                         by the job's first checkpoint; if its coordinator died, once its lease \
                         expires `rockpoint gc --confirm` fences the job and the pin no longer \
                         counts",
                        pin.path
                    ),
                });
            }
        }
    }
    Ok(reasons)
}

fn kind_name(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Checkpoint => "checkpoint",
        SnapshotKind::Savepoint => "savepoint",
    }
}

/// The job, kind and id `source` names, without reading its metadata (R1 of a restore).
async fn resolve(store: &dyn Store, source: &RestoreSource) -> Result<(String, SnapshotKind, u64)> {
    let path = resolve_metadata_path(store, source).await?;
    let parsed = layout::parse_checkpoint_path(&path)
        .ok_or_else(|| Error::invalid(format!("`{path}` does not name a checkpoint")))?;
    layout::validate_job_id(parsed.job)?;
    Ok((parsed.job.to_owned(), parsed.kind, parsed.id))
}
