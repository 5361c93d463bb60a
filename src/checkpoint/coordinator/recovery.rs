//! Coordinator startup recovery (O2–O3 of `docs/protocols.md`): removes what aborted and fenced
//! checkpoints of older epochs left, then loads the retained metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::checkpoint::metadata::{self};
use crate::error::{Error, Result};
use crate::layout::{self, SnapshotKind, metadata_path, parse_checkpoint_path};

use super::CheckpointCoordinator;

impl CheckpointCoordinator {
    /// O2–O3: removes what aborted and fenced checkpoints left and loads the retained metadata.
    pub(super) async fn recover(&self) -> Result<()> {
        let job = self.inner.job_id.clone();
        let record = self
            .inner
            .record
            .lock()
            .await
            .as_ref()
            .map(|cell| cell.record.clone())
            .ok_or_else(|| Error::invalid("the coordinator has not claimed its job"))?;
        // O2
        let mut leftovers: BTreeSet<(SnapshotKind, u64)> = BTreeSet::new();
        for object in self.st().list(&layout::job_prefix(&job)).await? {
            let Some(layout::CheckpointPath { kind, id, .. }) = parse_checkpoint_path(&object.path)
            else {
                continue;
            };
            let complete = match kind {
                SnapshotKind::Checkpoint => record.retained.contains(&id),
                SnapshotKind::Savepoint => record.savepoints.contains(&id),
            };
            if complete {
                continue;
            }
            if id >= record.epoch_first_id {
                tracing::warn!(
                    path = object.path,
                    "an object whose id no epoch of the job reserved; left in place"
                );
                continue;
            }
            leftovers.insert((kind, id));
        }
        for object in self.st().list(&layout::job_pins_prefix(&job)).await? {
            if layout::is_reader_pin_path(&object.path) {
                continue; // another actor's reader pin on one of our checkpoints
            }
            // Snapshot pins of older epochs of this job. A newer epoch's pins are the live
            // coordinator's (this one is then a zombie): never touch them. Unreadable pins are
            // GC's to report.
            let older = match self.st().get(&object.path).await {
                Ok(bytes) => matches!(
                    metadata::decode_pin(&bytes, &object.path).map(|p| p.owner),
                    Ok(metadata::PinOwner::Epoch { job: owner, epoch })
                        if owner == job && epoch < record.epoch
                ),
                Err(e) if e.kind() == crate::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if older {
                self.st().delete(&object.path).await?;
            }
        }
        for (kind, id) in leftovers {
            tracing::info!(
                job,
                checkpoint = id,
                "removing what an aborted or fenced checkpoint left"
            );
            self.discard(kind, id).await?;
        }
        {
            let mut state = self.lock();
            state.discarded.extend(record.discarding.iter().copied());
        }
        // O3
        let mut loaded = BTreeMap::new();
        for (kind, ids) in [
            (SnapshotKind::Checkpoint, &record.retained),
            (SnapshotKind::Savepoint, &record.savepoints),
        ] {
            for &id in ids {
                let path = metadata_path(&job, kind, id);
                match self.st().get(&path).await {
                    Ok(bytes) => match metadata::decode_metadata(&bytes, &path) {
                        Ok(decoded) => {
                            loaded.insert(id, Arc::new(decoded));
                        }
                        Err(e) => {
                            tracing::error!(path, error = %e, "a retained checkpoint's metadata is unreadable; kept, never restored")
                        }
                    },
                    Err(e) => {
                        tracing::error!(path, error = %e, "a retained checkpoint's metadata cannot be read; kept")
                    }
                }
            }
        }
        self.lock().metadata = loaded;
        // Retention may have shrunk since the last run; `discarding` is cleaned with this swap.
        let retained_max = self.inner.settings.retained;
        self.update_record(|record| {
            while record.retained.len() > retained_max {
                let oldest = record.retained.remove(0);
                record.discarding.push(oldest);
            }
            Ok(())
        })
        .await?;
        self.release_ready().await
    }
}
