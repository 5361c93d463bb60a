//! R1–R2 and R4 of `docs/protocols.md`: resolve a source to its metadata (a path, a directory or a
//! job's latest committed checkpoint), read and verify it, check that its job record still holds it,
//! and pin what it names for the time of a read (reader pins, then the reuser rule's intent wait).

use super::*;

/// R1–R2: resolves `source` and reads its verified metadata. Returns the metadata path too.
///
/// `latest:<job>` of a running job may name a checkpoint that the job subsumes before it is read:
/// it is resolved again (a few times) rather than reported as not found.
pub async fn read_metadata(
    store: &dyn Store,
    source: &RestoreSource,
) -> Result<(String, CheckpointMetadata)> {
    let mut attempts = 0;
    loop {
        let read = read_metadata_once(store, source).await;
        match read {
            Err(e)
                if e.kind() == ErrorKind::NotFound
                    && matches!(source, RestoreSource::Latest(_))
                    && attempts < 8 =>
            {
                attempts += 1;
            }
            read => return read,
        }
    }
}

/// R1: the metadata path `source` names (a job's latest committed checkpoint resolved through its
/// record), checked to be one; nothing is read but the record for `latest:`.
pub(crate) async fn resolve_metadata_path(
    store: &dyn Store,
    source: &RestoreSource,
) -> Result<String> {
    let path = match source {
        RestoreSource::Metadata(path) => path.clone(),
        RestoreSource::Directory(dir) => {
            format!("{}/{}", dir.trim_end_matches('/'), layout::METADATA)
        }
        RestoreSource::Latest(job) => latest_checkpoint(store, job).await?.ok_or_else(|| {
            Error::not_found(format!(
                "job `{job}` has no committed checkpoint in {}",
                store.describe()
            ))
        })?,
    };
    if parse_checkpoint_path(&path).is_none_or(|parsed| !parsed.is_metadata()) {
        return Err(Error::invalid(format!(
            "`{path}` is not a checkpoint metadata path (jobs/<job>/chk-<id>/_metadata)"
        )));
    }
    Ok(path)
}

async fn read_metadata_once(
    store: &dyn Store,
    source: &RestoreSource,
) -> Result<(String, CheckpointMetadata)> {
    let path = resolve_metadata_path(store, source).await?;
    let bytes = match store.get(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::not_found(format!(
                "no checkpoint metadata at `{path}` in {}",
                store.describe()
            )));
        }
        Err(e) => return Err(e),
    };
    let metadata = metadata::decode_metadata(&bytes, &path)?;
    ensure_complete(store, &metadata).await?;
    Ok((path, metadata))
}

/// A `_metadata` is a complete checkpoint only if its job record lists it (roots written before
/// job records existed have none: there the metadata is the commit point).
pub(super) async fn ensure_complete(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
) -> Result<()> {
    match job::read_job(store, &metadata.job_id).await? {
        Some((record, _)) => {
            let complete = match metadata.kind {
                SnapshotKind::Checkpoint => record.retained.contains(&metadata.checkpoint_id),
                SnapshotKind::Savepoint => record.savepoints.contains(&metadata.checkpoint_id),
            };
            if complete {
                Ok(())
            } else {
                Err(Error::not_found(format!(
                    "`{}` is not a complete checkpoint: the record of job `{}` does not list it \
                     (it was discarded, aborted, or its commit never finished)",
                    metadata.metadata_path(),
                    metadata.job_id
                )))
            }
        }
        None => match store.head(&metadata.metadata_path()).await? {
            Some(_) => Ok(()),
            None => Err(Error::not_found(format!(
                "checkpoint `{}` was discarded",
                metadata.metadata_path()
            ))),
        },
    }
}

/// R4, the reuser rule for readers: pins every hash `handles` reference on behalf of `owner`, then
/// checks that the checkpoint is still complete (a discard that ran before the pin was seen is
/// reported as `NotFound`, never as a missing file), then waits out GC intents naming its files.
/// Returns the pin's path; the caller deletes it when done.
pub(crate) async fn pin_for_reading(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
    hashes: &[ContentHash],
    owner: metadata::PinOwner,
) -> Result<String> {
    let path = layout::reader_pin_path(&metadata.job_id, metadata.kind, metadata.checkpoint_id);
    let pin = PinRecord {
        export_target: false,
        job_id: metadata.job_id.clone(),
        checkpoint_id: Some(metadata.checkpoint_id),
        created_at_ms: crate::util::now_ms(),
        hashes: hashes.to_vec(),
        owner,
    };
    if let Err(e) = store
        .put(
            &path,
            Bytes::from(metadata::encode_pin(&pin)?),
            WriteMode::CreateOnly,
        )
        .await
    {
        // The put may have landed though reported failed: do not leave a live pin behind.
        store.delete(&path).await.ok();
        return Err(e);
    }
    let checked = async {
        ensure_complete(store, metadata).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!(
                    "checkpoint `{}` was discarded while it was being restored",
                    metadata.metadata_path()
                ))
            } else {
                e
            }
        })?;
        job::wait_for_intents(store, &hashes.iter().copied().collect(), &|| Ok(())).await
    }
    .await;
    match checked {
        Ok(_) => Ok(path),
        Err(e) => {
            store.delete(&path).await.ok();
            Err(e)
        }
    }
}

/// How long a standalone reader's pin lives; it is renewed every third of it while reading.
pub(crate) const READER_PIN_LIFETIME_MS: u64 = 3_600_000;

pub(crate) fn reader_owner() -> metadata::PinOwner {
    metadata::PinOwner::Reader {
        expires_at_ms: crate::util::now_ms() + READER_PIN_LIFETIME_MS,
    }
}

/// Keeps a standalone reader's pin alive while `work` runs, then deletes it.
pub(crate) async fn with_reader_pin<T>(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
    hashes: &[ContentHash],
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let path = pin_for_reading(store, metadata, hashes, reader_owner()).await?;
    let renew = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(READER_PIN_LIFETIME_MS / 3)).await;
            let pin = PinRecord {
                export_target: false,
                job_id: metadata.job_id.clone(),
                checkpoint_id: Some(metadata.checkpoint_id),
                created_at_ms: crate::util::now_ms(),
                hashes: hashes.to_vec(),
                owner: reader_owner(),
            };
            if let Ok(bytes) = metadata::encode_pin(&pin)
                && let Err(e) = store
                    .put(&path, Bytes::from(bytes), WriteMode::Replace)
                    .await
            {
                tracing::warn!(pin = path, error = %e, "renewing a reader pin failed");
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = renew => unreachable!("the renewal loop never ends"),
    };
    if let Err(e) = store.delete(&path).await {
        tracing::warn!(pin = path, error = %e, "removing a reader pin failed; GC removes it after it expires");
    }
    result
}

/// The metadata path of a job's newest committed checkpoint.
pub async fn latest_checkpoint(store: &dyn Store, job: &str) -> Result<Option<String>> {
    layout::validate_job_id(job)?;
    if let Some((record, _)) = job::read_job(store, job).await? {
        return Ok(record
            .latest()
            .map(|id| layout::metadata_path(job, SnapshotKind::Checkpoint, id)));
    }
    let mut best: Option<(u64, String)> = None;
    for object in store.list(&layout::job_prefix(job)).await? {
        if let Some(parsed) = parse_checkpoint_path(&object.path)
            && parsed.kind == SnapshotKind::Checkpoint
            && parsed.is_metadata()
            && best.as_ref().is_none_or(|(b, _)| parsed.id > *b)
        {
            best = Some((parsed.id, object.path.clone()));
        }
    }
    Ok(best.map(|(_, path)| path))
}
