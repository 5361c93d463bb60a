//! The job record seen from its coordinator (O1, lease renewal, and the swap every decision makes):
//! claiming the job with a new epoch and id block, adopting a record written before job records
//! existed, the compare-and-swap update that fences a stale coordinator (G7), and the lease.
//! Steps: "The job record and fencing (G7)" and O1 in `docs/protocols.md`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::checkpoint::job::{self, ID_BLOCK, ID_LOW_WATER, JobRecord};
use crate::error::{Error, Result};
use crate::layout::{self, SnapshotKind, parse_checkpoint_path};

use super::{CheckpointCoordinator, RecordCell};

impl CheckpointCoordinator {
    /// O1: takes the job with a new epoch and a new block of ids. First marks the root (create-only:
    /// a marker already there, new or from any earlier writer, is kept), so a root that holds a
    /// job record written by this build always has its marker; an older root gets it here.
    pub(super) async fn claim(&self) -> Result<()> {
        let job = self.inner.job_id.clone();
        crate::checkpoint::gc::mark_root(self.st()).await?;
        for _ in 0..32 {
            let (current, version) = match job::read_job(self.st(), &job).await? {
                Some((record, version)) => (record, Some(version)),
                None => (self.migrate_record().await?, None),
            };
            let mut next = current.clone();
            next.epoch += 1;
            next.owner = Some(self.inner.instance.clone());
            next.lease_until_ms = self.lease_until();
            next.epoch_first_id = current.next_id;
            next.next_id = current.next_id + ID_BLOCK;
            next.updated_at_ms = crate::util::now_ms();
            if let Some(version) = job::swap_job(self.st(), &next, version.as_ref()).await? {
                self.inner.epoch.store(next.epoch, Ordering::SeqCst);
                {
                    let mut state = self.lock();
                    state.next_id = next.epoch_first_id;
                    state.reserved_until = next.next_id;
                    state.later_blocks.clear();
                    state.retained = next.retained.clone();
                    state.savepoints = next.savepoints.clone();
                }
                tracing::info!(job, epoch = next.epoch, "claimed the job");
                *self.inner.record.lock().await = Some(RecordCell {
                    record: next,
                    version,
                });
                return Ok(());
            }
        }
        Err(Error::conflict(format!(
            "job `{job}`: its record kept changing while claiming it"
        )))
    }

    /// A job without a record (a root written before job records existed, or a new job): adopt
    /// the committed metadata found under `jobs/<job>/`.
    pub(super) async fn migrate_record(&self) -> Result<JobRecord> {
        let job = &self.inner.job_id;
        let mut record = JobRecord::new(job);
        let mut max_id = 0;
        for object in self.st().list(&layout::job_prefix(job)).await? {
            let Some(parsed) = parse_checkpoint_path(&object.path) else {
                continue;
            };
            let (kind, id) = (parsed.kind, parsed.id);
            if id >= u64::MAX / 4 {
                tracing::warn!(
                    path = object.path,
                    "ignoring an object whose id is outside the range the engine uses"
                );
                continue;
            }
            max_id = max_id.max(id);
            if parsed.is_metadata() {
                match kind {
                    SnapshotKind::Checkpoint => record.retained.push(id),
                    SnapshotKind::Savepoint => record.savepoints.push(id),
                }
            }
        }
        record.retained.sort_unstable();
        record.savepoints.sort_unstable();
        record.next_id = max_id + 1;
        record.epoch_first_id = record.next_id;
        Ok(record)
    }

    pub(super) fn lease_until(&self) -> u64 {
        crate::util::now_ms() + self.inner.settings.lease.as_millis() as u64
    }

    /// Applies `change` to the job record by compare-and-swap, re-reading and re-applying it when
    /// the record moved under the same epoch (a claim by another job); fails with `Fenced` if a
    /// newer epoch holds the job. Keeps the in-memory view in step with what was written.
    pub(super) async fn update_record(
        &self,
        change: impl Fn(&mut JobRecord) -> Result<()>,
    ) -> Result<JobRecord> {
        let mut cell = self.inner.record.lock().await;
        self.check_not_fenced()?;
        for _ in 0..32 {
            let current = cell
                .as_ref()
                .ok_or_else(|| Error::invalid("the coordinator has not claimed its job"))?;
            let mut next = current.record.clone();
            change(&mut next)?;
            let (done, finished_below, own_left) = {
                let state = self.lock();
                // The ids left in this coordinator's own blocks (ids other writers took from the
                // record are not its reserve).
                let own_left = state.reserved_until.saturating_sub(state.next_id)
                    + state
                        .later_blocks
                        .iter()
                        .map(|(start, end)| end - start)
                        .sum::<u64>();
                // Every id below the smallest in flight (or below the next to hand out) ended.
                let finished_below = state
                    .pending
                    .keys()
                    .chain(state.claiming.iter())
                    .min()
                    .copied()
                    .unwrap_or(state.next_id);
                (state.discarded.clone(), finished_below, own_left)
            };
            next.finished_below = next.finished_below.max(finished_below.min(next.next_id));
            next.discarding.retain(|id| !done.contains(id));
            if own_left < ID_LOW_WATER {
                next.next_id += ID_BLOCK;
            }
            next.updated_at_ms = crate::util::now_ms();
            match job::swap_job(self.st(), &next, Some(&current.version)).await? {
                Some(version) => {
                    // Only what this swap added to `next_id` is this coordinator's block.
                    self.lock().reserve(current.record.next_id, next.next_id);
                    self.adopt_record(&next, &done);
                    *cell = Some(RecordCell {
                        record: next.clone(),
                        version,
                    });
                    return Ok(next);
                }
                None => match job::read_job(self.st(), &self.inner.job_id).await? {
                    Some((found, version))
                        if found.epoch == self.epoch()
                            && found.owner.as_deref() == Some(&self.inner.instance) =>
                    {
                        self.adopt_record(&found, &BTreeSet::new());
                        *cell = Some(RecordCell {
                            record: found,
                            version,
                        });
                    }
                    Some((found, _)) => {
                        return Err(self.mark_fenced(format!(
                            "the job record is at epoch {} ({})",
                            found.epoch,
                            found.owner.as_deref().unwrap_or("fenced by GC")
                        )));
                    }
                    None => return Err(self.mark_fenced("the job record vanished".into())),
                },
            }
        }
        Err(Error::conflict(format!(
            "job `{}`: its record kept changing",
            self.inner.job_id
        )))
    }

    /// Brings the in-memory view in step with a record this coordinator's epoch holds. Its
    /// blocks of ids are only what its own swaps reserved (`CoordState::reserve`): ids another
    /// writer took from the record (an export, X1) are never handed out here.
    pub(super) fn adopt_record(&self, record: &JobRecord, written_discards: &BTreeSet<u64>) {
        let mut state = self.lock();
        for id in written_discards {
            state.discarded.remove(id);
        }
        // Ids that left `retained` without being discarded by us were claimed by another job:
        // their records are that job's now.
        let gone: Vec<u64> = state
            .retained
            .iter()
            .copied()
            .filter(|id| !record.retained.contains(id) && !record.discarding.contains(id))
            .collect();
        for id in gone {
            state.metadata.remove(&id);
        }
        for id in &record.discarding {
            if !state.discarded.contains(id) {
                state.discard_queue.insert(*id);
            }
        }
        state.retained = record.retained.clone();
        state.savepoints = record.savepoints.clone();
    }

    /// Renews the lease every third of it until the coordinator shuts down or is fenced.
    pub(super) fn spawn_lease_renewal(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                job = self.inner.job_id,
                "no tokio runtime: the lease is not renewed"
            );
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let period = self.inner.settings.lease / 3;
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { break };
                let coordinator = CheckpointCoordinator { inner };
                if coordinator.is_shut_down() || coordinator.is_fenced() {
                    break;
                }
                let lease_until = coordinator.lease_until();
                if let Err(e) = coordinator
                    .update_record(|record| {
                        record.lease_until_ms = lease_until;
                        Ok(())
                    })
                    .await
                {
                    tracing::warn!(job = coordinator.inner.job_id, error = %e, "renewing the lease failed");
                    if e.kind() == crate::ErrorKind::Fenced {
                        break;
                    }
                    continue;
                }
                // The renewal adopted the record: discards handed over meanwhile (an operator's
                // delete, a claim by another job) run now, not at the next checkpoint.
                if let Err(e) = coordinator.release_ready().await {
                    tracing::warn!(job = coordinator.inner.job_id, error = %e, "discarding after a lease renewal failed");
                }
            }
        });
    }
}
