//! A coordinator's restore (R3–R7 of `docs/protocols.md`): pick the backend, pin, download, and
//! either keep the source with its job (the reader pin becomes the job's restore pin) or claim it
//! (R6: copy its private files into a checkpoint of this job, commit, release the source). Also
//! seeds the new DB instance's snapshot memo with what the checkpoint already holds.

use super::*;

impl CheckpointCoordinator {
    /// Restores this job's backends from `source` (R1–R7). Without claim, the source's files are
    /// pinned until this job's first checkpoint, which reuses them instead of uploading them again.
    /// With claim, the checkpoint becomes this job's own.
    ///
    /// Runs in a `restore` span (job, source, mode) and publishes its duration and bytes
    /// ([`metrics`](crate::metrics), labelled with this coordinator's job).
    pub async fn restore(
        &self,
        source: &RestoreSource,
        targets: &[RestoreTarget],
        mode: ClaimMode,
    ) -> Result<Vec<KeyedStateBackend>> {
        let span = tracing::info_span!(
            "restore",
            job = self.job_id(),
            source = ?source,
            mode = ?mode,
        );
        let started = std::time::Instant::now();
        match self
            .restore_in(source, targets, mode)
            .instrument(span)
            .await
        {
            Ok((backends, metadata, reports)) => {
                publish_restore(self.job_id(), &metadata, started, &reports);
                Ok(backends)
            }
            Err(e) => {
                crate::metrics::restore_failed(self.job_id(), e.kind());
                Err(e)
            }
        }
    }

    async fn restore_in(
        &self,
        source: &RestoreSource,
        targets: &[RestoreTarget],
        mode: ClaimMode,
    ) -> Result<(
        Vec<KeyedStateBackend>,
        CheckpointMetadata,
        Vec<DownloadReport>,
    )> {
        let store = &**self.store();
        // R1, R2
        let (source_path, metadata) = read_metadata(store, source).await?;
        // R3
        let routes = plan_all(&metadata, targets)?;
        check_routes(&metadata, targets, &routes)?;
        if mode == ClaimMode::Claim && metadata.kind == SnapshotKind::Savepoint {
            return Err(Error::invalid(format!(
                "`{source_path}` is a savepoint: a savepoint belongs to its user and is never \
                 claimed; restore it without claim"
            )));
        }
        // A claim adopts every backend of the checkpoint, so it pins them all; a restore without
        // claim pins what it reads.
        let hashes: Vec<ContentHash> = match mode {
            ClaimMode::Claim => {
                let mut all: Vec<ContentHash> = metadata.shared_hashes().collect();
                all.sort();
                all.dedup();
                all
            }
            ClaimMode::NoClaim => hashes_read(&metadata, targets, &routes),
        };
        // R4: pin as a reader (owned by this coordinator's epoch), then check the source is still
        // complete, then wait out GC intents on its files.
        let pin_path = pin_for_reading(store, &metadata, &hashes, self.pin_owner()).await?;
        // R5, all or nothing.
        let parallelism = self.inner.settings.transfer_parallelism;
        let reports = match restore_all(store, &metadata, targets, &routes, parallelism, None).await
        {
            Ok(reports) => reports,
            Err(e) => {
                store.delete(&pin_path).await.ok();
                return Err(self.explain_download_failure(&metadata, e).await);
            }
        };
        // R7 before the restore takes effect: a backend that does not open (its files do not
        // hold the states the record names) fails the whole restore and leaves nothing.
        let remove_targets = || {
            for target in targets {
                let _ = std::fs::remove_dir_all(&target.dir);
            }
        };
        let opened: Result<Vec<KeyedStateBackend>> = routes
            .iter()
            .zip(targets)
            .map(|(route, target)| open_restored(&metadata, route, target))
            .collect();
        let backends = match opened {
            Ok(backends) => backends,
            Err(e) => {
                remove_targets();
                store.delete(&pin_path).await.ok();
                return Err(e);
            }
        };
        match mode {
            ClaimMode::NoClaim => self.add_restore_pin(pin_path, hashes.iter().copied()),
            // R6: the reader pin protects every file until this job's record references them.
            ClaimMode::Claim => {
                let claimed = self.claim_checkpoint(&metadata).await;
                store.delete(&pin_path).await.ok();
                if let Err(e) = claimed {
                    drop(backends);
                    remove_targets();
                    return Err(e);
                }
                self.release_source(&metadata).await?;
            }
        }
        self.set_restored_from(metadata.metadata_path());
        Ok((backends, metadata, reports))
    }

    /// A file missing under a restore whose pin was live is damage; but the pin dies when this
    /// coordinator is fenced, and the checkpoint may have been discarded before the pin was seen:
    /// those are reported as what they are, never as corruption.
    pub(super) async fn explain_download_failure(
        &self,
        source: &CheckpointMetadata,
        error: Error,
    ) -> Error {
        if error.kind() != ErrorKind::Corruption {
            return error;
        }
        if let Ok(Some((record, _))) = job::read_job(&**self.store(), self.job_id()).await
            && record.epoch > self.epoch()
        {
            return Error::fenced(format!(
                "job `{}` was taken over (epoch {}) while this coordinator (epoch {}) restored \
                 `{}`; its reader pin died with its epoch ({error})",
                self.job_id(),
                record.epoch,
                self.epoch(),
                source.metadata_path()
            ));
        }
        match ensure_complete(&**self.store(), source).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Error::not_found(format!(
                "checkpoint `{}` was discarded while it was being restored ({error})",
                source.metadata_path()
            )),
            _ => error,
        }
    }

    pub(super) async fn claim_checkpoint(&self, metadata: &CheckpointMetadata) -> Result<()> {
        let id = self.allocate_id()?;
        let claimed = self.claim_checkpoint_as(metadata, id).await;
        self.end_claim(id);
        claimed
    }

    async fn claim_checkpoint_as(&self, metadata: &CheckpointMetadata, id: u64) -> Result<()> {
        let store = &**self.store();
        let mut adopted = metadata.clone();
        adopted.job_id = self.job_id().to_owned();
        adopted.checkpoint_id = id;
        adopted.claimed_from = Some(metadata.metadata_path());
        // Private files move with the record: the old job's directory will be cleaned up. Each is
        // copied from the store and checked against its recorded size and hash first (the
        // restored directories may already have replaced theirs), so a damaged one is refused,
        // not adopted.
        for backend in &mut adopted.backends {
            let tag = backend.tag();
            for private in &mut backend.private_files {
                let path = format!(
                    "{}/{tag}/{}",
                    checkpoint_dir(self.job_id(), SnapshotKind::Checkpoint, id),
                    private.local_name
                );
                let bytes = store
                    .get(&private.path)
                    .await
                    .map_err(|e| missing_as_corruption(e, &private.path, &private.local_name))?;
                let mut verifier = Verifier::new(
                    format!("{} ({})", private.path, private.local_name),
                    private.hash,
                    private.size,
                );
                verifier.size_is(bytes.len() as u64)?;
                verifier.update(&bytes)?;
                verifier.finish()?;
                store.put(&path, bytes, WriteMode::Replace).await?;
                private.path = path;
            }
        }
        let encoded = metadata::encode_metadata(&adopted)?;
        store
            .put(
                &adopted.metadata_path(),
                Bytes::from(encoded),
                WriteMode::CreateOnly,
            )
            .await?;
        self.adopt(Arc::new(adopted)).await
    }

    /// R6, after the claim committed: the source job's record stops retaining the checkpoint and
    /// lists it as `discarding`. Its records are deleted by the source job's own coordinator (which
    /// keeps them while its in-flight tickets reuse their hashes) or, once no owner lives, by GC.
    /// This job never deletes them itself. If the swap keeps losing, both jobs retain the
    /// checkpoint: nothing is lost, it just was not moved.
    pub(super) async fn release_source(&self, source: &CheckpointMetadata) -> Result<()> {
        let store = &**self.store();
        let job = &source.job_id;
        let id = source.checkpoint_id;
        for _ in 0..32 {
            let Some((record, version)) = job::read_job(store, job).await? else {
                tracing::warn!(
                    job,
                    checkpoint = id,
                    "the claimed checkpoint's job has no record; its records stay"
                );
                return Ok(());
            };
            if !record.retained.contains(&id) {
                return Ok(());
            }
            let mut next = record.clone();
            next.retained.retain(|&r| r != id);
            if !next.discarding.contains(&id) {
                next.discarding.push(id);
            }
            next.updated_at_ms = crate::util::now_ms();
            if job::swap_job(store, &next, Some(&version)).await?.is_some() {
                return Ok(());
            }
        }
        tracing::warn!(
            job,
            checkpoint = id,
            "the claimed checkpoint's job record kept changing; it still retains the checkpoint too"
        );
        Ok(())
    }
}

impl KeyedStateBackend {
    /// Seeds the log chains with the restored logs' segments: a restored WAL that RocksDB keeps (it
    /// does not flush on recovery) is reused by the first checkpoint, segment by segment.
    pub(crate) fn seed_log_chains(&self, logs: &[crate::checkpoint::metadata::LogFile]) {
        let mut chains = self.inner.log_chains();
        for log in logs {
            let mut offset = 0;
            let chain = log
                .segments
                .iter()
                .map(|segment| {
                    let entry = (offset, *segment);
                    offset += segment.size;
                    entry
                })
                .collect();
            chains.insert(log.local_name.clone(), chain);
        }
    }

    /// Seeds the SST hash cache (restored files need no rehashing on the first checkpoint).
    pub(crate) fn seed_hash_cache(&self, files: impl Iterator<Item = (String, u64, ContentHash)>) {
        let mut cache = self.inner.hash_cache();
        for (name, size, hash) in files {
            cache.insert(name, (size, hash));
        }
    }
}
