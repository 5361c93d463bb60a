//! The job record (`jobs/<job>/_job`) and GC deletion intents (`gc/<nonce>`): the two records that
//! make many writers on one root safe ("The job record and fencing" and "References, reuse and
//! deletion" in `docs/protocols.md`).
//!
//! Safety: the job record is only ever written by compare-and-swap against the version its writer
//! read, so it is a linearizable register. A coordinator's epoch is the record's epoch at its claim;
//! once a newer claim (or GC fencing an expired lease) swapped the record, every swap of the older
//! epoch fails, and the older coordinator learns that it is fenced before it commits or deletes.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::metadata::{seal, unseal};
use crate::error::{Error, ErrorKind, Result};
use crate::hash::ContentHash;
use crate::layout;
use crate::store::{ObjectVersion, Store};

pub(crate) const JOB_MAGIC: &[u8; 8] = b"RKPTJOB\0";
pub(crate) const INTENT_MAGIC: &[u8; 8] = b"RKPTGCI\0";

/// Ids reserved by one claim or extension of the block.
pub(crate) const ID_BLOCK: u64 = 1024;
/// The block is extended when fewer ids than this are left.
pub(crate) const ID_LOW_WATER: u64 = 512;
/// Clock skew tolerated between the machines that share a root, added to every expiry check made
/// by someone other than the owner of a lease.
pub(crate) const CLOCK_MARGIN_MS: u64 = 30_000;
/// How long a GC deletion intent lives; a pass checks it before each batch of deletes.
pub(crate) const INTENT_LEASE: Duration = Duration::from_secs(120);

/// The job record: who owns the job (epoch, lease), which ids it reserved, which checkpoints are
/// complete. See the module docs and `docs/protocols.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job.
    pub job_id: String,
    /// Incremented by every claim (and by GC fencing an expired lease).
    pub epoch: u64,
    /// The coordinator instance holding the epoch (`None` after GC fenced the job).
    pub owner: Option<String>,
    /// The owner's lease, in milliseconds since the Unix epoch (0: released).
    pub lease_until_ms: u64,
    /// The first id reserved by the current epoch: smaller ids no live coordinator may still commit.
    pub epoch_first_id: u64,
    /// The first id not reserved yet.
    pub next_id: u64,
    /// Complete, retained checkpoints, ascending.
    pub retained: Vec<u64>,
    /// Complete savepoints, ascending.
    pub savepoints: Vec<u64>,
    /// Checkpoints removed from `retained` whose records the owner is still deleting.
    pub discarding: Vec<u64>,
    /// When the record was last written, in milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Every id of this epoch below this one has ended (committed, aborted or subsumed): no
    /// snapshot of it can commit any more, so its snapshot pins are dead and its leftovers are
    /// GC's even while the owner lives (a backend in another process may finish uploading after
    /// the coordinator gave up on it). Written at every record swap; 0 in records written before it.
    #[serde(default)]
    pub finished_below: u64,
    /// Ids taken by exports (X1 of `docs/protocols.md`, "Export") that are not committed yet:
    /// never the owner's, so GC collects their leftovers once their pin is gone, even while the
    /// owner lives. Ascending; absent in records written before exports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exporting: Vec<u64>,
}

impl JobRecord {
    pub(crate) fn new(job_id: &str) -> Self {
        JobRecord {
            job_id: job_id.to_owned(),
            epoch: 0,
            owner: None,
            lease_until_ms: 0,
            epoch_first_id: 1,
            next_id: 1,
            retained: Vec::new(),
            savepoints: Vec::new(),
            discarding: Vec::new(),
            updated_at_ms: 0,
            finished_below: 0,
            exporting: Vec::new(),
        }
    }

    /// Whether `id` is complete (retained checkpoint or savepoint).
    pub fn is_complete(&self, id: u64) -> bool {
        self.retained.contains(&id) || self.savepoints.contains(&id)
    }

    /// The newest retained checkpoint.
    pub fn latest(&self) -> Option<u64> {
        self.retained.last().copied()
    }

    /// Whether an owner holds a lease that has not expired by more than `margin_ms` at `now_ms`:
    /// a coordinator that may still commit. An expired lease alone proves nothing about a
    /// paused owner: a writer that needs it gone fences the job ([`fence`](Self::fence)).
    pub(crate) fn lease_live(&self, now_ms: u64, margin_ms: u64) -> bool {
        self.owner.is_some() && self.lease_until_ms.saturating_add(margin_ms) >= now_ms
    }

    /// Fences the job in this (next) record: a new epoch with no owner and no lease, and a new
    /// block start, so that every swap of the old epoch fails (GC's G2, an operator's delete).
    pub(crate) fn fence(&mut self, now_ms: u64) {
        self.epoch += 1;
        self.owner = None;
        self.lease_until_ms = 0;
        self.epoch_first_id = self.next_id;
        self.updated_at_ms = now_ms;
    }

    fn validate(&self) -> Result<()> {
        layout::validate_job_id(&self.job_id).map_err(|e| Error::corruption(e.to_string()))?;
        let sorted = |ids: &[u64]| ids.windows(2).all(|w| w[0] < w[1]);
        let bounded = |ids: &[u64]| ids.iter().all(|&id| id >= 1 && id < self.next_id);
        let ok = self.epoch < u64::MAX / 2
            && self.epoch_first_id >= 1
            && self.epoch_first_id <= self.next_id
            && self.next_id < u64::MAX / 2
            && self.finished_below <= self.next_id
            && sorted(&self.retained)
            && sorted(&self.savepoints)
            && bounded(&self.retained)
            && bounded(&self.savepoints)
            && bounded(&self.discarding)
            && sorted(&self.exporting)
            && bounded(&self.exporting)
            && self.retained.len()
                + self.savepoints.len()
                + self.discarding.len()
                + self.exporting.len()
                <= 1_000_000;
        if ok {
            Ok(())
        } else {
            Err(Error::corruption(format!(
                "job record of `{}` is inconsistent (ids out of order or outside the reserved range)",
                self.job_id
            )))
        }
    }
}

pub(crate) fn encode_job(record: &JobRecord) -> Result<Bytes> {
    record.validate()?;
    let body = rmp_serde::to_vec_named(record)
        .map_err(|e| Error::invalid(format!("encoding job record: {e}")))?;
    Ok(Bytes::from(seal(JOB_MAGIC, &body)))
}

pub(crate) fn decode_job(bytes: &[u8], job_id: &str) -> Result<JobRecord> {
    let what = format!("job record `{}`", layout::job_record_path(job_id));
    let body = unseal(JOB_MAGIC, bytes, &what)?;
    let record: JobRecord = rmp_serde::from_slice(body)
        .map_err(|e| Error::corruption(format!("{what}: undecodable body: {e}")))?;
    record
        .validate()
        .map_err(|e| Error::corruption(format!("{what}: {e}")))?;
    if record.job_id != job_id {
        return Err(Error::corruption(format!(
            "{what} names job `{}`",
            record.job_id
        )));
    }
    Ok(record)
}

/// Reads a job's record with its version (`None`: the job has none).
pub(crate) async fn read_job(
    store: &dyn Store,
    job_id: &str,
) -> Result<Option<(JobRecord, ObjectVersion)>> {
    match store
        .get_versioned(&layout::job_record_path(job_id))
        .await?
    {
        Some((bytes, version)) => Ok(Some((decode_job(&bytes, job_id)?, version))),
        None => Ok(None),
    }
}

/// The job's record, or `None` if it has none (public read-only view).
pub async fn job_record(store: &dyn Store, job_id: &str) -> Result<Option<JobRecord>> {
    layout::validate_job_id(job_id)?;
    Ok(read_job(store, job_id).await?.map(|(record, _)| record))
}

/// Swaps the record from `version` to `record`. `Ok(Some(v))`: written. `Ok(None)`: someone else
/// wrote it first (re-read and decide). A failure whose outcome is unknown is resolved by reading
/// the record back: if it holds exactly what we wrote, the swap happened.
pub(crate) async fn swap_job(
    store: &dyn Store,
    record: &JobRecord,
    version: Option<&ObjectVersion>,
) -> Result<Option<ObjectVersion>> {
    let bytes = encode_job(record)?;
    match store
        .put_if(
            &layout::job_record_path(&record.job_id),
            bytes.clone(),
            version,
        )
        .await
    {
        Ok(version) => Ok(Some(version)),
        Err(e) if e.kind() == ErrorKind::Conflict => Ok(None),
        Err(e) if e.kind() == ErrorKind::Poisoned => Err(e),
        Err(e) => match store
            .get_versioned(&layout::job_record_path(&record.job_id))
            .await
        {
            Ok(Some((found, version))) if found == bytes => Ok(Some(version)),
            Ok(_) => Ok(None),
            Err(_) => Err(e),
        },
    }
}

/// A GC pass's deletion intent: the shared files it is about to delete, and until when it may.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeletionIntent {
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub hashes: Vec<ContentHash>,
}

impl DeletionIntent {
    /// Whether a reuser may ignore it: its pass can no longer delete.
    pub(crate) fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.saturating_add(CLOCK_MARGIN_MS) < now_ms
    }
}

pub(crate) fn encode_intent(intent: &DeletionIntent) -> Result<Bytes> {
    let body = rmp_serde::to_vec_named(intent)
        .map_err(|e| Error::invalid(format!("encoding deletion intent: {e}")))?;
    Ok(Bytes::from(seal(INTENT_MAGIC, &body)))
}

pub(crate) fn decode_intent(bytes: &[u8], path: &str) -> Result<DeletionIntent> {
    let what = format!("deletion intent `{path}`");
    let body = unseal(INTENT_MAGIC, bytes, &what)?;
    rmp_serde::from_slice(body)
        .map_err(|e| Error::corruption(format!("{what}: undecodable body: {e}")))
}

/// The reuser rule's wait: after its pin is durable, a reuser waits until no live deletion intent
/// names one of `hashes`. An unreadable intent is waited out like a live one until it is older
/// than its lease. Fails with `Unavailable` if a pass holds on longer than its intent's lease.
/// Returns the hashes that an intent named: their files may be gone, so the caller checks them.
/// `still_wanted` is asked before every wait, so a cancelled snapshot stops waiting at once.
pub(crate) async fn wait_for_intents(
    store: &dyn Store,
    hashes: &std::collections::HashSet<ContentHash>,
    still_wanted: &(dyn Fn() -> Result<()> + Send + Sync),
) -> Result<std::collections::HashSet<ContentHash>> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(20);
    let mut named = std::collections::HashSet::new();
    loop {
        let mut blocking = None;
        for object in store.list(layout::INTENTS).await? {
            let now = crate::util::now_ms();
            let live = match store.get(&object.path).await {
                Ok(bytes) => match decode_intent(&bytes, &object.path) {
                    Ok(intent) => {
                        let ours: Vec<ContentHash> = intent
                            .hashes
                            .iter()
                            .copied()
                            .filter(|h| hashes.contains(h))
                            .collect();
                        let live = !intent.expired(now) && !ours.is_empty();
                        named.extend(ours);
                        live
                    }
                    Err(_) => object
                        .modified
                        .elapsed()
                        .is_ok_and(|age| age < INTENT_LEASE),
                },
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if live {
                blocking = Some(object.path);
                break;
            }
        }
        let Some(path) = blocking else {
            return Ok(named);
        };
        still_wanted()?;
        if started.elapsed() > INTENT_LEASE + Duration::from_millis(CLOCK_MARGIN_MS) {
            return Err(Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("GC deletion intent `{path}` still names files this snapshot reuses"),
            )));
        }
        tracing::debug!(
            intent = path,
            "waiting for a GC pass that may delete reused files"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}
