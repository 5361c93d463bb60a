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

/// Whether a restore may create the missing parent directories of its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Parents {
    /// Create them (the library's `restore_backend`, a coordinator's restore).
    Create,
    /// Refuse a target whose parent does not exist (`restore_backends`, the CLI): a typo in the
    /// path creates nothing.
    MustExist,
}

/// Refuses, as the caller's input (`Invalid`), a target that cannot take a restore: an existing
/// file (or symbolic link), a directory that is not empty, a path without a name, or (with
/// [`Parents::MustExist`]) one whose parent is not an existing directory. Reads only.
pub(super) fn check_target(target: &Path, parents: Parents) -> Result<()> {
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
    let (Some(parent), Some(_)) = (target.parent(), target.file_name()) else {
        return Err(Error::invalid(format!(
            "restore target {} names no directory to create",
            target.display()
        )));
    };
    if parents == Parents::MustExist && !parent.is_dir() {
        return Err(Error::invalid(format!(
            "the parent of restore target {} is not an existing directory; create {} first",
            target.display(),
            parent.display()
        )));
    }
    Ok(())
}

/// The longest file name Linux accepts (NAME_MAX), in bytes.
const NAME_MAX: usize = 255;
/// The length of [`crate::util::nonce`].
const NONCE_LEN: usize = 16;
/// What the longest temporary name adds to its stem: `.<stem>.restore-scratch-<nonce>`.
const LONGEST_SUFFIX: usize = 1 + ".restore-scratch-".len() + NONCE_LEN;

/// The part of a temporary name that stands for the target's name `name`: the name itself, or,
/// when `.<name>.restore-scratch-<nonce>` would not fit in NAME_MAX, its first bytes and 16 hex
/// digits of its BLAKE3 (`<first bytes>~<hash>`), so that two long names sharing a prefix still
/// get different stems. Deterministic: a retry finds the leftovers of a killed restore by it.
pub(super) fn temporary_stem(name: &str) -> String {
    let budget = NAME_MAX - LONGEST_SUFFIX;
    if name.len() <= budget {
        return name.to_owned();
    }
    let mut cut = budget - 1 - 16;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = blake3::hash(name.as_bytes()).to_hex();
    format!("{}~{}", &name[..cut], &hash[..16])
}

/// Whether `entry` (a name in the target's parent) is a temporary or scratch directory of a
/// restore into the target of `stem`: `.<stem>.restore-<nonce>` or
/// `.<stem>.restore-scratch-<nonce>`, exactly (a longer target name that merely starts with the
/// same characters is another target's).
fn is_temporary_of(entry: &str, stem: &str) -> bool {
    let Some(rest) = entry
        .strip_prefix('.')
        .and_then(|e| e.strip_prefix(stem))
        .and_then(|e| e.strip_prefix(".restore-"))
    else {
        return false;
    };
    let nonce = rest.strip_prefix("scratch-").unwrap_or(rest);
    nonce.len() == NONCE_LEN && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The scratch directory paired with the temporary directory `temp` (`.<stem>.restore-<nonce>`
/// becomes `.<stem>.restore-scratch-<nonce>`): found by the same sweep.
pub(super) fn scratch_for(temp: &Path) -> PathBuf {
    let name = temp
        .file_name()
        .expect("a temporary has a name")
        .to_string_lossy()
        .into_owned();
    let (stem, nonce) = name
        .rsplit_once(".restore-")
        .expect("a temporary name ends in .restore-<nonce>");
    temp.with_file_name(format!("{stem}.restore-scratch-{nonce}"))
}

/// Checks that `target` can take a restore ([`check_target`], creating missing parents), removes
/// what interrupted restores into it left, and names the temporary directory the restore is
/// assembled in (`.<stem>.restore-<nonce>` next to it, within NAME_MAX however long the target's
/// name: [`temporary_stem`]). Creates nothing but `target`'s parent.
pub(super) fn temporary_for(target: &Path) -> Result<PathBuf> {
    // Checked before anything is downloaded: a target that cannot take the restore is the
    // caller's input, not a transient failure at the end.
    check_target(target, Parents::Create)?;
    let parent = target
        .parent()
        .expect("check_target: a target has a parent")
        .to_path_buf();
    let name = target
        .file_name()
        .expect("check_target: a target has a name")
        .to_string_lossy()
        .into_owned();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io("creating", &parent, e))?;
    // Leftovers of interrupted restores into this target.
    let stem = temporary_stem(&name);
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for entry in entries.flatten() {
            if is_temporary_of(&entry.file_name().to_string_lossy(), &stem) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let nonce = crate::util::nonce();
    debug_assert_eq!(nonce.len(), NONCE_LEN);
    Ok(parent.join(format!(".{stem}.restore-{nonce}")))
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

#[cfg(test)]
mod temporary_names {
    use super::*;

    #[test]
    fn temporary_and_scratch_names_fit_name_max_and_are_swept() {
        for len in [1, 200, 221, 222, 231, 240, 255] {
            let name = "é".repeat(len / 2) + &"x".repeat(len % 2);
            assert_eq!(name.len(), len);
            let stem = temporary_stem(&name);
            let temp = PathBuf::from(format!(".{stem}.restore-{}", crate::util::nonce()));
            let scratch = scratch_for(&temp);
            for made in [&temp, &scratch] {
                let made = made.to_string_lossy();
                assert!(made.len() <= NAME_MAX, "{len}: {made}");
                assert!(is_temporary_of(&made, &temporary_stem(&name)), "{made}");
            }
        }
        // Long names with a common prefix get different stems.
        let (a, b) = ("a".repeat(250), "a".repeat(249) + "b");
        assert_ne!(temporary_stem(&a), temporary_stem(&b));
        // Another target whose name starts with this one's is not swept.
        assert!(!is_temporary_of(
            ".a.restore-x.restore-0123456789abcdef",
            "a"
        ));
    }
}
