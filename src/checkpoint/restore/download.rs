//! R5 and R7 of `docs/protocols.md`: download every file of one backend into a temporary directory
//! next to the target, each file assembled from its shared objects or segments and hashed while it
//! streams in; write CURRENT; fsync; rename onto the target.

use super::*;
use crate::fs::{self, DurableError, StdFs};

/// R5–R6: downloads one backend into the new directory `target` (its RocksDB files land in
/// `target/db`), verifying every file. `target` must not exist or be empty.
pub async fn download_backend(
    store: &dyn Store,
    handle: &BackendHandle,
    target: &Path,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<DownloadReport> {
    if handle.format() == crate::checkpoint::metadata::SnapshotFormat::Canonical {
        return Err(Error::invalid(format!(
            "backend {} is a canonical stream, not RocksDB files: restore it with \
             `restore_backend` or a coordinator's `restore`, which load it",
            handle.key_groups
        )));
    }
    let target = absolute(target)?;
    let temp = temporary_for(&target)?;
    let db = temp.join(DB_DIR);
    std::fs::create_dir_all(&db).map_err(|e| Error::io("creating", &db, e))?;
    let started = std::time::Instant::now();
    let result = fill(store, handle, &db, parallelism, progress).await;
    let result = match result {
        Ok(report) => fs::rename_dir_durable(&StdFs, &temp, &target)
            .map_err(DurableError::into_error)
            .map(|()| report),
        Err(e) => Err(e),
    };
    tracing::debug!(
        key_groups = %handle.key_groups,
        download_us = started.elapsed().as_micros() as u64,
        ok = result.is_ok(),
        "restore download done"
    );
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Checks that `target` can take a restore (it does not exist, or is an empty directory), removes
/// what interrupted restores into it left, and names the temporary directory the restore is
/// assembled in (`.<name>.restore-<nonce>` next to it). Creates nothing but `target`'s parent.
pub(super) fn temporary_for(target: &Path) -> Result<PathBuf> {
    // Checked before anything is downloaded: a target that cannot take the restore is the
    // caller's input, not a transient failure at the end.
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {
            let occupied = std::fs::read_dir(target)
                .map_err(|e| Error::io("inspecting restore target", target, e))?
                .next()
                .is_some();
            if occupied {
                return Err(Error::invalid(format!(
                    "restore target {} exists and is not empty; restore into a new directory",
                    target.display()
                )));
            }
        }
        Ok(_) => {
            return Err(Error::invalid(format!(
                "restore target {} exists and is not a directory; restore into a new directory",
                target.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("inspecting restore target", target, e)),
    }
    let parent = target
        .parent()
        .ok_or_else(|| {
            Error::invalid(format!("restore target {} has no parent", target.display()))
        })?
        .to_path_buf();
    let name = target
        .file_name()
        .ok_or_else(|| Error::invalid(format!("restore target {} has no name", target.display())))?
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    // Leftovers of interrupted restores into this target.
    let stale_prefix = format!(".{name}.restore-");
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&stale_prefix)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(parent.join(format!("{stale_prefix}{}", crate::util::nonce())))
}

pub(super) fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()
            .map_err(|e| Error::io("resolving the current directory for", path, e))?
            .join(path))
    }
}

/// A local file to assemble from verified parts.
pub(super) struct Assembly {
    pub(super) local_name: String,
    pub(super) parts: Vec<(String, ContentHash, u64)>,
}

/// Every local file of a backend with the stored objects it is made of, in order.
pub(super) fn assemblies(handle: &BackendHandle) -> Vec<Assembly> {
    let mut work = Vec::new();
    for file in &handle.shared_files {
        work.push(Assembly {
            local_name: file.local_name.clone(),
            parts: vec![(shared_path(&file.hash), file.hash, file.size)],
        });
    }
    for log in &handle.log_files {
        work.push(Assembly {
            local_name: log.local_name.clone(),
            parts: log
                .segments
                .iter()
                .map(|s| (shared_path(&s.hash), s.hash, s.size))
                .collect(),
        });
    }
    for file in &handle.private_files {
        work.push(Assembly {
            local_name: file.local_name.clone(),
            parts: vec![(file.path.clone(), file.hash, file.size)],
        });
    }
    work
}

pub(super) async fn fill(
    store: &dyn Store,
    handle: &BackendHandle,
    db: &Path,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<DownloadReport> {
    let work = assemblies(handle);
    let bytes = AtomicU64::new(0);
    let files = work.len() as u64;
    // After the first failure the remaining files are skipped, but every started copy runs to its
    // end (copies run on blocking threads), so the caller can remove the directory afterwards.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<()>> = stream::iter(work.into_iter().map(|assembly| {
        let progress = progress.clone();
        let (bytes, failed) = (&bytes, &failed);
        async move {
            if failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            let written = assemble(store, db, &assembly, progress)
                .await
                .inspect_err(|_| {
                    failed.store(true, Ordering::SeqCst);
                })?;
            bytes.fetch_add(written, Ordering::Relaxed);
            Ok::<_, Error>(())
        }
    }))
    .buffer_unordered(parallelism.max(1))
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    let current = db.join("CURRENT");
    let manifest = format!("{}\n", handle.manifest_name);
    fs::write_new_file_synced(&StdFs, &current, manifest.as_bytes())
        .and_then(|()| fs::sync_dir_durable(&StdFs, db))
        .map_err(DurableError::into_error)?;
    Ok(DownloadReport {
        files,
        bytes: bytes.into_inner(),
    })
}

/// Streams the parts of one file into `db/<local name>`, verifying each part's size and hash.
pub(super) async fn assemble(
    store: &dyn Store,
    db: &Path,
    assembly: &Assembly,
    progress: Option<Progress>,
) -> Result<u64> {
    // Local names were validated as plain RocksDB names: the join stays inside `db`.
    let path = db.join(&assembly.local_name);
    std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
    let mut total = 0u64;
    for (object, expected, expected_size) in &assembly.parts {
        store
            .append_verified(
                object,
                *expected,
                *expected_size,
                &path,
                &assembly.local_name,
            )
            .await?;
        if let Some(progress) = &progress {
            progress(*expected_size);
        }
        total += expected_size;
    }
    let file = path.clone();
    tokio::task::spawn_blocking(move || std::fs::File::open(&file).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| Error::task("restore task", e))?
        .map_err(|e| Error::io("syncing", &path, e))?;
    Ok(total)
}

/// The chunks of `object`, checked on the fly: the stream ends with an error (naming the object and
/// its local name) if the object is missing, has another size, or does not hash to `expected`. The
/// last chunk is only yielded once the whole object has been verified.
pub(super) async fn verified_stream(
    store: &dyn Store,
    object: &str,
    local_name: &str,
    expected: ContentHash,
    expected_size: u64,
) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
    let verifier = Verifier::new(format!("{object} ({local_name})"), expected, expected_size);
    let (size, chunks) = store
        .get_stream(object)
        .await
        .map_err(|e| missing_as_corruption(e, object, local_name))?;
    verifier.size_is(size)?;
    // Hold back one chunk so that the last one is released only after the hash matched.
    let state = (chunks, verifier, None::<Bytes>, false);
    let stream = stream::try_unfold(state, |(mut chunks, mut verifier, held, done)| async move {
        if done {
            return Ok(None);
        }
        match chunks.next().await {
            Some(chunk) => {
                let chunk = chunk?;
                verifier.update(&chunk)?;
                // The first chunk releases nothing (an empty chunk, filtered below).
                Ok(Some((
                    held.unwrap_or_default(),
                    (chunks, verifier, Some(chunk), false),
                )))
            }
            None => {
                verifier.finish()?;
                Ok(held.map(|last| (last, (chunks, verifier, None, true))))
            }
        }
    });
    Ok(stream
        .try_filter(|chunk| futures::future::ready(!chunk.is_empty()))
        .boxed())
}
