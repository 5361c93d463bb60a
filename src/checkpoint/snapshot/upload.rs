//! A5–A8 of `docs/protocols.md`: pin every hash before checking what exists (A5), wait out GC
//! deletion intents that name a reused file and upload what the store lacks (A6), upload the private
//! files (A7), and remove the staging directory on every exit (A8).

use super::*;
use std::collections::HashSet;

/// A file to ship: where its bytes are and which hash they must have (and, for a new SST, its
/// bytes already staged in the store by the single read-hash-copy pass).
#[derive(Debug)]
pub(super) struct Shipment {
    pub(super) hash: ContentHash,
    pub(super) size: u64,
    pub(super) source: PathBuf,
    pub(super) offset: u64,
    pub(super) staged: Option<Staged>,
}

impl PendingSnapshot {
    /// How long the synchronous phase blocked the operator.
    pub fn sync_pause(&self) -> Duration {
        self.sync_pause
    }

    /// The checkpoint this snapshot belongs to.
    pub fn checkpoint_id(&self) -> u64 {
        self.ticket.checkpoint_id
    }

    /// The asynchronous phase (A1–A8): hard-links the recorded files, trims the logs to complete
    /// records, hashes, pins, and uploads only what `store` does not already hold.
    pub async fn upload(mut self, store: &dyn Store) -> Result<BackendHandle> {
        let start = Instant::now();
        let tag = backend_tag(self.backend.key_groups);
        let staging = self.backend.dir.join(STAGING_DIR).join(format!(
            "{}-{}-{}",
            self.ticket.job_id,
            self.ticket.kind.dir_prefix(),
            self.ticket.checkpoint_id
        ));
        // A8 (also on failure, and when this future is dropped — a failed sibling upload drops
        // it): staging pins disk space for every SST it links.
        let mut cleanup = StagingCleanup(Some(staging.clone()));
        let result = self.upload_inner(store, &staging, &tag, start).await;
        if let Some(dir) = cleanup.0.take() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        if let Ok(handle) = &result {
            self.ticket
                .state
                .uploaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((handle.clone(), crate::store::address(store)));
        }
        result
    }

    pub(super) async fn upload_inner(
        &mut self,
        store: &dyn Store,
        staging: &Path,
        tag: &str,
        start: Instant,
    ) -> Result<BackendHandle> {
        let job = self.alone();
        let staging_dir = staging.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || job.prepare(staging_dir))
            .await
            .map_err(|e| Error::task("snapshot task", e))??;
        // The links now keep every file alive: deletions may resume.
        self.guard = None;
        self.ticket.check_live()?;
        let prepared_at = start.elapsed();

        let Prepared {
            ssts,
            log_files,
            mut shipments,
            options,
        } = prepared;
        let shared_files = self.stage_new_ssts(store, ssts, &mut shipments).await?;
        let hashes = self.pin(store, tag, &shipments).await;
        let doubtful = match hashes {
            // A6, reuser rule: no GC pass may be about to delete what we reuse. A hash that an
            // intent named is checked against the store even if the ticket knows it.
            Ok(needed) => {
                crate::checkpoint::job::wait_for_intents(store, &needed, &|| {
                    self.ticket.check_live()
                })
                .await
            }
            Err(e) => Err(e),
        };
        let doubtful = match doubtful {
            Ok(named) => named,
            Err(e) => {
                discard_all(store, shipments.into_iter().filter_map(|s| s.staged)).await;
                return Err(e);
            }
        };
        let outcomes = ship_all(store, &self.ticket, &doubtful, shipments).await?;

        let ticket = &self.ticket;
        let mut handle = BackendHandle {
            key_groups: self.backend.key_groups,
            max_parallelism: self.backend.max_parallelism,
            states: self.states.clone(),
            shared_files,
            log_files,
            private_files: Vec::new(),
            manifest_name: self.manifest.name.clone(),
            uploaded_bytes: 0,
            uploaded_files: 0,
            reused_bytes: 0,
            reused_files: 0,
            sync_pause_us: self.sync_pause.as_micros() as u64,
            async_duration_us: 0,
        };
        for (uploaded, size) in outcomes {
            if uploaded {
                handle.uploaded_bytes += size;
                handle.uploaded_files += 1;
            } else {
                handle.reused_bytes += size;
                handle.reused_files += 1;
            }
        }

        let uploaded_at = start.elapsed();
        // A7: private files.
        if let Some((name, source, hash, size)) = options {
            ticket.check_live()?;
            let path = layout::private_file_path(
                &ticket.job_id,
                ticket.kind,
                ticket.checkpoint_id,
                tag,
                &name,
            );
            store.put_file(&path, &source, 0, size, hash).await?;
            handle.uploaded_bytes += size;
            handle.uploaded_files += 1;
            handle.private_files.push(PrivateFile {
                path,
                local_name: name,
                hash,
                size,
            });
        }
        handle.async_duration_us = start.elapsed().as_micros() as u64;
        tracing::debug!(
            checkpoint = ticket.checkpoint_id,
            key_groups = %handle.key_groups,
            prepare_us = prepared_at.as_micros() as u64,
            upload_us = (uploaded_at - prepared_at).as_micros() as u64,
            total_us = handle.async_duration_us,
            uploaded_bytes = handle.uploaded_bytes,
            "asynchronous phase done"
        );
        Ok(handle)
    }

    /// A4 for new SSTs: read, hash and stage in one pass, in parallel. Every SST becomes a shipment;
    /// returns the SSTs as shared files of the handle. On failure nothing staged is left behind.
    async fn stage_new_ssts(
        &self,
        store: &dyn Store,
        ssts: Vec<LiveSst>,
        shipments: &mut Vec<Shipment>,
    ) -> Result<Vec<SharedFile>> {
        let ticket = &self.ticket;
        let work: Vec<(usize, PathBuf, u64)> = ssts
            .iter()
            .enumerate()
            .filter(|(_, sst)| sst.cached.is_none())
            .map(|(i, sst)| (i, sst.path.clone(), sst.size))
            .collect();
        let staged_results: Vec<(usize, Result<Staged>)> =
            stream::iter(work.into_iter().map(|(i, path, size)| async move {
                // A sibling's failure or an abort cancels the ticket: stop before reading more.
                if let Err(e) = ticket.check_live() {
                    return (i, Err(e));
                }
                (i, store.stage_file(&path, 0, size).await)
            }))
            .buffer_unordered(ticket.upload_parallelism.max(1))
            .collect()
            .await;
        let mut staged: HashMap<usize, Staged> = HashMap::new();
        let mut failure = None;
        for (i, result) in staged_results {
            match result {
                Ok(object) => {
                    staged.insert(i, object);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure.or_else(|| ticket.check_live().err()) {
            discard_all(store, staged.into_values()).await;
            return Err(e);
        }
        let mut shared_files = Vec::with_capacity(ssts.len());
        for (i, sst) in ssts.into_iter().enumerate() {
            let (hash, size, staged) = match staged.remove(&i) {
                Some(object) => {
                    self.backend
                        .remember_sst_hash(&sst.name, object.size, object.hash);
                    (object.hash, object.size, Some(object))
                }
                None => (
                    sst.cached.expect("uncached SSTs were staged"),
                    sst.size,
                    None,
                ),
            };
            shared_files.push(SharedFile {
                hash,
                size,
                local_name: sst.name,
            });
            shipments.push(Shipment {
                hash,
                size,
                source: sst.path,
                offset: 0,
                staged,
            });
        }
        Ok(shared_files)
    }

    /// A5: pins every hash of the shipments before anything checks what exists; returns them. On
    /// failure the pin is removed if the ticket was aborted (the abort may have listed before it
    /// landed); the caller discards what was staged.
    async fn pin(
        &self,
        store: &dyn Store,
        tag: &str,
        shipments: &[Shipment],
    ) -> Result<HashSet<ContentHash>> {
        let ticket = &self.ticket;
        let mut hashes: Vec<ContentHash> = shipments.iter().map(|s| s.hash).collect();
        hashes.sort();
        hashes.dedup();
        let pin = PinRecord {
            export_target: false,
            job_id: ticket.job_id.to_string(),
            checkpoint_id: Some(ticket.checkpoint_id),
            created_at_ms: crate::util::now_ms(),
            hashes,
            owner: metadata::PinOwner::Epoch {
                job: ticket.job_id.to_string(),
                epoch: ticket.epoch,
            },
        };
        let pin_path =
            layout::snapshot_pin_path(&ticket.job_id, ticket.kind, ticket.checkpoint_id, tag);
        let pinned = async {
            crate::failpoint!(ticket.faults, "snapshot::before_pin");
            store
                .put(
                    &pin_path,
                    Bytes::from(metadata::encode_pin(&pin)?),
                    WriteMode::CreateOnly,
                )
                .await?;
            crate::failpoint!(ticket.faults, "snapshot::after_pin");
            Ok::<_, Error>(())
        }
        .await;
        // An abort sets the flag before it lists pins (B1, B2): if it listed before our pin
        // landed, the flag is set now and the pin is ours to remove.
        let pinned = pinned.and_then(|()| ticket.check_live());
        if let Err(e) = pinned {
            if e.kind() == crate::ErrorKind::Cancelled {
                store.delete(&pin_path).await.ok();
            }
            return Err(e);
        }
        Ok(pin.hashes.into_iter().collect())
    }

    /// The parts of the snapshot the blocking preparation needs (moved to a blocking thread).
    pub(super) fn alone(&self) -> PrepareJob {
        PrepareJob {
            faults: self.ticket.faults.clone(),
            backend: self.backend.clone(),
            manifest: self.manifest.clone(),
            wals: self.wals.clone(),
            ssts: self.ssts.clone(),
            options_file: self.options_file.clone(),
        }
    }
}

/// Removes a staging directory when the upload that owns it ends in any way.
pub(super) struct StagingCleanup(pub(super) Option<PathBuf>);

impl Drop for StagingCleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A6: uploads what the store lacks, with bounded parallelism; returns (uploaded?, size) per
/// distinct file. Every shipment runs to its end (a cancelled one stops at once), so no staged
/// temporary is left behind.
pub(super) async fn ship_all(
    store: &dyn Store,
    ticket: &CheckpointTicket,
    doubtful: &HashSet<ContentHash>,
    shipments: Vec<Shipment>,
) -> Result<Vec<(bool, u64)>> {
    let mut unique: HashMap<ContentHash, Shipment> = HashMap::new();
    let mut duplicates = Vec::new();
    for shipment in shipments {
        match unique.entry(shipment.hash) {
            std::collections::hash_map::Entry::Occupied(_) => duplicates.extend(shipment.staged),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(shipment);
            }
        }
    }
    discard_all(store, duplicates).await;
    let results: Vec<Result<(bool, u64)>> = stream::iter(
        unique
            .into_values()
            .map(|shipment| ship(store, ticket, doubtful, shipment)),
    )
    .buffer_unordered(ticket.upload_parallelism.max(1))
    .collect()
    .await;
    results.into_iter().collect()
}

/// A6 for one shipment: reuse it if the job's committed checkpoints or the store already hold it,
/// else publish it (a staged copy) or upload it. A staged copy not published is discarded.
pub(super) async fn ship(
    store: &dyn Store,
    ticket: &CheckpointTicket,
    doubtful: &HashSet<ContentHash>,
    shipment: Shipment,
) -> Result<(bool, u64)> {
    let Shipment {
        hash,
        size,
        source,
        offset,
        staged,
    } = shipment;
    let path = shared_path(&hash);
    let needed = async {
        ticket.check_live()?;
        if ticket.known.contains(&hash) && !doubtful.contains(&hash) {
            return Ok(false);
        }
        match store.head(&path).await? {
            Some(info) if info.size == size => Ok(false),
            Some(info) => {
                tracing::warn!(
                    path,
                    expected = size,
                    found = info.size,
                    "shared file has the wrong size; replacing it"
                );
                Ok(true)
            }
            None => Ok(true),
        }
    }
    .await;
    let needed = match needed {
        Ok(true) => match before_upload(ticket).await {
            Ok(()) => true,
            Err(e) => {
                discard_all(store, staged).await;
                return Err(e);
            }
        },
        Ok(false) => false,
        Err(e) => {
            discard_all(store, staged).await;
            return Err(e);
        }
    };
    if !needed {
        discard_all(store, staged).await;
        return Ok((false, size));
    }
    match staged {
        Some(object) => store.publish_staged(object, &path).await?,
        None => store.put_file(&path, &source, offset, size, hash).await?,
    }
    after_upload(ticket).await?;
    Ok((true, size))
}

pub(super) async fn before_upload(ticket: &CheckpointTicket) -> Result<()> {
    let _ = ticket;
    crate::failpoint!(ticket.faults, "snapshot::before_upload");
    Ok(())
}

pub(super) async fn after_upload(ticket: &CheckpointTicket) -> Result<()> {
    let _ = ticket;
    crate::failpoint!(ticket.faults, "snapshot::after_upload");
    Ok(())
}

/// Removes staged copies that will not be published (best effort: GC sweeps what remains).
pub(super) async fn discard_all(store: &dyn Store, staged: impl IntoIterator<Item = Staged>) {
    for object in staged {
        if let Err(e) = store.discard_staged(object).await {
            tracing::warn!(error = %e, "removing a staged copy failed; GC will sweep it");
        }
    }
}
