//! Restore into any key-group range (R3 and R5 of `docs/protocols.md`, "Rescaling restore"): each
//! target gets a route — its backend's files as they are, one covering backend's files clipped, or
//! a base backend's files clipped with the other backends' key groups copied in — and a restore of
//! several targets downloads each source backend once.

use std::collections::BTreeMap;

use super::*;
use crate::checkpoint::metadata::{CANONICAL_FILE, SnapshotFormat};
use crate::engine::{self, STAGING_DIR};
use crate::fs::{self, DurableError, StdFs};

/// How one target's key groups come out of a snapshot's backends; chosen per target by
/// [`plan_restore`] (documented in `docs/protocols.md`, "Rescaling restore").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreRoute {
    /// A backend with exactly the target's key groups: its files, as they are.
    Exact,
    /// One backend covers the target: its files, with whole SSTs outside the target dropped and a
    /// range tombstone over the rest of what lies outside.
    Clip {
        /// The covering backend.
        source: KeyGroupRange,
    },
    /// Several backends share the target: the one holding the most bytes of it is the base (its
    /// files, clipped); the key groups of the others are read and ingested into it as new SSTs.
    Merge {
        /// The base backend.
        base: KeyGroupRange,
        /// The backends whose key groups in range are copied in.
        copied: Vec<KeyGroupRange>,
    },
    /// A canonical savepoint: the entries of every stream overlapping the target, in its key
    /// groups, loaded into a new backend.
    Load {
        /// The streams read.
        sources: Vec<KeyGroupRange>,
    },
}

impl RestoreRoute {
    /// The backends of the snapshot the route reads (for `Exact`, the target's own range).
    pub fn sources(&self, target: KeyGroupRange) -> Vec<KeyGroupRange> {
        match self {
            RestoreRoute::Exact => vec![target],
            RestoreRoute::Clip { source } => vec![*source],
            RestoreRoute::Merge { base, copied } => std::iter::once(*base)
                .chain(copied.iter().copied())
                .collect(),
            RestoreRoute::Load { sources } => sources.clone(),
        }
    }
}

/// Chooses how the backend of `key_groups` is restored from `metadata`: its backends must have
/// the job's max parallelism and together cover `key_groups`, or the restore is refused
/// (`Invalid`, naming the ranges the snapshot has).
pub fn plan_restore(
    metadata: &CheckpointMetadata,
    key_groups: KeyGroupRange,
) -> Result<RestoreRoute> {
    let refuse = |why: String| {
        Error::invalid(format!(
            "{} {} of job `{}` cannot restore key groups {key_groups}: {why}; it has {} of \
             max_parallelism {}",
            match metadata.kind {
                SnapshotKind::Checkpoint => "checkpoint",
                SnapshotKind::Savepoint => "savepoint",
            },
            metadata.checkpoint_id,
            metadata.job_id,
            backend_ranges(metadata),
            metadata.max_parallelism
        ))
    };
    if key_groups.end() > metadata.max_parallelism {
        return Err(refuse(format!(
            "the range exceeds its max_parallelism {}",
            metadata.max_parallelism
        )));
    }
    let mut overlapping: Vec<&BackendHandle> = metadata
        .backends
        .iter()
        .filter(|b| b.key_groups.intersect(&key_groups).is_some())
        .collect();
    overlapping.sort_by_key(|b| b.key_groups.start());
    let covered: u32 = overlapping
        .iter()
        .filter_map(|b| b.key_groups.intersect(&key_groups))
        .map(|r| r.len())
        .sum();
    if covered != key_groups.len() {
        return Err(refuse(format!(
            "its backends hold only {covered} of the {} key groups",
            key_groups.len()
        )));
    }
    if metadata.format == SnapshotFormat::Canonical {
        return Ok(RestoreRoute::Load {
            sources: overlapping.iter().map(|b| b.key_groups).collect(),
        });
    }
    match overlapping.as_slice() {
        [one] if one.key_groups == key_groups => Ok(RestoreRoute::Exact),
        [one] => Ok(RestoreRoute::Clip {
            source: one.key_groups,
        }),
        several => {
            // The base is the backend with the most bytes in the target (assuming bytes spread
            // evenly over its key groups): its files are kept, the others' rows are rewritten.
            let in_target = |b: &BackendHandle| {
                let part = b.key_groups.intersect(&key_groups).map_or(0, |r| r.len());
                u128::from(b.full_size_bytes()) * u128::from(part) / u128::from(b.key_groups.len())
            };
            let base = several
                .iter()
                .max_by_key(|b| (in_target(b), std::cmp::Reverse(b.key_groups.start())))
                .expect("several backends")
                .key_groups;
            Ok(RestoreRoute::Merge {
                base,
                copied: several
                    .iter()
                    .map(|b| b.key_groups)
                    .filter(|r| *r != base)
                    .collect(),
            })
        }
    }
}

/// The handle of `metadata` owning exactly `range` (a range a plan named).
fn handle_of(metadata: &CheckpointMetadata, range: KeyGroupRange) -> &BackendHandle {
    metadata
        .backends
        .iter()
        .find(|b| b.key_groups == range)
        .expect("plans name backends of their metadata")
}

/// The routes of `targets`, refusing overlapping targets (two backends cannot own one key group).
pub(super) fn plan_all(
    metadata: &CheckpointMetadata,
    targets: &[RestoreTarget],
) -> Result<Vec<RestoreRoute>> {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[i + 1..] {
            if a.key_groups.intersect(&b.key_groups).is_some() {
                return Err(Error::invalid(format!(
                    "restore targets {} and {} overlap: a key group belongs to one backend",
                    a.key_groups, b.key_groups
                )));
            }
            if absolute(&a.dir)? == absolute(&b.dir)? {
                return Err(Error::invalid(format!(
                    "restore targets {} and {} have the same directory {}",
                    a.key_groups,
                    b.key_groups,
                    a.dir.display()
                )));
            }
        }
    }
    targets
        .iter()
        .map(|t| plan_restore(metadata, t.key_groups))
        .collect()
}

/// Every shared object the routes read, sorted and deduplicated (what a restore pins).
pub(super) fn hashes_read(
    metadata: &CheckpointMetadata,
    targets: &[RestoreTarget],
    routes: &[RestoreRoute],
) -> Vec<ContentHash> {
    let mut hashes: Vec<ContentHash> = routes
        .iter()
        .zip(targets)
        .flat_map(|(route, target)| route.sources(target.key_groups))
        .flat_map(|range| {
            handle_of(metadata, range)
                .shared_hashes()
                .collect::<Vec<_>>()
        })
        .collect();
    hashes.sort();
    hashes.dedup();
    hashes
}

/// What a restore in progress has created: removed when it is dropped (the scratch downloads
/// always, the restored targets unless the restore succeeded), so a failure or a dropped restore
/// future leaves nothing behind.
#[derive(Default)]
struct Leftovers {
    /// Temporary directories of targets being assembled.
    temps: Vec<PathBuf>,
    /// Targets renamed into place.
    done: Vec<PathBuf>,
    scratch: Option<PathBuf>,
    succeeded: bool,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(scratch) = &self.scratch {
            remove_tree(scratch);
        }
        for temp in &self.temps {
            remove_tree(temp);
        }
        if !self.succeeded {
            for dir in &self.done {
                remove_tree(dir);
            }
        }
    }
}

/// Removes the directory tree `dir`, synchronously (the caller may be a dropped future, or a
/// process about to exit). A copy of a dropped download still running on a blocking thread may
/// create a file in it while it is being removed, which fails the removal of its directory: it is
/// retried a few times (such a copy can create no file once its directory is gone).
fn remove_tree(dir: &Path) {
    for attempt in 0..10 {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 9 || e.kind() != std::io::ErrorKind::DirectoryNotEmpty => {
                tracing::warn!(dir = %dir.display(), error = %e, "removing what a failed restore left");
                return;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// R5 for every target, all or nothing: every target is assembled in its temporary directory and
/// renamed into place only once all are complete; on any failure, or when the future is dropped,
/// everything created is removed and the error returned. Each source backend is downloaded once:
/// into its target's temporary for `Exact`; otherwise into a scratch directory next to the first
/// such target, from which each target takes hard links of the SSTs (copies if links fail) and
/// copies of the rest.
pub(super) async fn restore_all(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
    targets: &[RestoreTarget],
    routes: &[RestoreRoute],
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<Vec<DownloadReport>> {
    let never = std::future::pending::<()>();
    restore_all_until(
        store,
        metadata,
        targets,
        routes,
        parallelism,
        progress,
        never,
    )
    .await
}

/// [`restore_all`], stopped when `stop` completes: the downloads in flight are dropped, the builds
/// already started are awaited (they cannot be interrupted and write into the temporaries), then
/// everything created is removed and `Cancelled` returned. A `stop` that completes only once
/// every target is built stops the restore before the first rename.
pub(super) async fn restore_all_until(
    store: &dyn Store,
    metadata: &CheckpointMetadata,
    targets: &[RestoreTarget],
    routes: &[RestoreRoute],
    parallelism: usize,
    progress: Option<Progress>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Vec<DownloadReport>> {
    let stopped = || {
        Error::cancelled(format!(
            "restore of {} {} of job `{}` interrupted",
            match metadata.kind {
                SnapshotKind::Checkpoint => "checkpoint",
                SnapshotKind::Savepoint => "savepoint",
            },
            metadata.checkpoint_id,
            metadata.job_id
        ))
    };
    let mut stop = std::pin::pin!(stop);
    let mut left = Leftovers::default();
    // Every target is checked before anything is downloaded.
    let dirs: Vec<PathBuf> = targets
        .iter()
        .map(|t| absolute(&t.dir))
        .collect::<Result<_>>()?;
    let temps: Vec<PathBuf> = dirs
        .iter()
        .map(|d| temporary_for(d))
        .collect::<Result<_>>()?;
    let mut reports = vec![DownloadReport::default(); targets.len()];
    // Downloads: exact targets into their temporaries, every other source once into the scratch
    // directory (named after the first target that needs one, so that a retry into that target
    // sweeps it up if this restore is killed).
    let mut downloaded: BTreeMap<(u32, u32), PathBuf> = BTreeMap::new();
    // Builds (CPU-bound: clipping, copying, loading) run on blocking threads into their
    // temporaries, each started as soon as its sources are downloaded, so that they overlap the
    // downloads of the next targets. All are awaited, also after a failed download, before
    // anything is renamed or removed.
    let mut builds = Vec::new();
    let downloads = async {
        for (i, (target, route)) in targets.iter().zip(routes).enumerate() {
            left.temps.push(temps[i].clone());
            if *route == RestoreRoute::Exact {
                let handle = handle_of(metadata, target.key_groups);
                let db = temps[i].join(DB_DIR);
                std::fs::create_dir_all(&db).map_err(|e| Error::io("creating", &db, e))?;
                reports[i] = fill(store, handle, &db, parallelism, progress.clone()).await?;
                continue;
            }
            let scratch_dir = left
                .scratch
                .get_or_insert_with(|| scratch_for(&temps[i]))
                .clone();
            for range in route.sources(target.key_groups) {
                let key = (range.start(), range.end());
                if downloaded.contains_key(&key) {
                    continue;
                }
                let handle = handle_of(metadata, range);
                let into = scratch_dir.join(handle.tag());
                let got = match route {
                    RestoreRoute::Load { .. } => {
                        download_stream(store, handle, &into, progress.clone()).await?
                    }
                    _ => {
                        download_backend(store, handle, &into, parallelism, progress.clone())
                            .await?
                    }
                };
                reports[i].files += got.files;
                reports[i].bytes += got.bytes;
                downloaded.insert(key, into);
            }
            let sources: Vec<(KeyGroupRange, PathBuf)> = route
                .sources(target.key_groups)
                .into_iter()
                .map(|r| (r, downloaded[&(r.start(), r.end())].clone()))
                .collect();
            builds.push(spawn_build(
                temps[i].clone(),
                sources,
                metadata.max_parallelism,
                target.settings.clone(),
                target.key_groups,
                matches!(route, RestoreRoute::Load { .. }),
            ));
        }
        Ok::<(), Error>(())
    };
    // A stop drops the downloads in flight (a dropped read ends at once; a local copy on a
    // blocking thread runs out into a directory that is then gone, see `remove_tree`).
    let downloads: Result<()> = tokio::select! {
        biased;
        () = stop.as_mut() => Err(stopped()),
        done = downloads => done,
    };
    let mut failure = downloads.err();
    for built in futures::future::join_all(builds).await {
        if let Err(e) = built {
            failure.get_or_insert(e);
        }
    }
    // A stop while the last builds ran: nothing is renamed.
    if failure.is_none() && futures::FutureExt::now_or_never(stop.as_mut()).is_some() {
        failure = Some(stopped());
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Every target is complete: rename them into place, one after the other (a crash in between
    // leaves the first ones restored; a retry refuses them as not empty).
    for (temp, dir) in temps.iter().zip(&dirs) {
        fs::rename_dir_durable(&StdFs, temp, dir).map_err(DurableError::into_error)?;
        left.done.push(dir.clone());
    }
    left.succeeded = true;
    Ok(reports)
}

/// Starts building one target in its temporary directory on a blocking thread (now, not when the
/// returned future is first polled): loaded from canonical streams, or clipped and merged from
/// downloaded backends.
fn spawn_build(
    temp: PathBuf,
    sources: Vec<(KeyGroupRange, PathBuf)>,
    max_parallelism: u32,
    settings: BackendSettings,
    to: KeyGroupRange,
    load: bool,
) -> impl std::future::Future<Output = Result<()>> {
    let task = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let built = if load {
            build_loaded(&temp, &sources, max_parallelism, &settings, to)
        } else {
            build_rescoped(&temp, &sources, max_parallelism, &settings, to)
        };
        tracing::debug!(
            key_groups = %to,
            build_us = started.elapsed().as_micros() as u64,
            ok = built.is_ok(),
            "rescaled backend built"
        );
        built
    });
    async move {
        task.await
            .map_err(|e| Error::task("rescaling restore", e))
            .and_then(|r| r)
    }
}

/// Downloads the one stream of a canonical backend into `into/CANONICAL_FILE`, verified.
async fn download_stream(
    store: &dyn Store,
    handle: &BackendHandle,
    into: &Path,
    progress: Option<Progress>,
) -> Result<DownloadReport> {
    let [file] = handle.private_files.as_slice() else {
        return Err(Error::corruption(format!(
            "canonical backend {} lists {} streams",
            handle.key_groups,
            handle.private_files.len()
        )));
    };
    std::fs::create_dir_all(into).map_err(|e| Error::io("creating", into, e))?;
    let path = into.join(&file.local_name);
    std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
    store
        .append_verified(&file.path, file.hash, file.size, &path, &file.local_name)
        .await?;
    if let Some(progress) = progress {
        progress(file.size);
    }
    Ok(DownloadReport {
        files: 1,
        bytes: file.size,
    })
}

/// Builds the backend of `to` in the new directory `temp` from canonical streams: a new backend,
/// every stream's entries in `to` loaded into it, flushed and closed.
fn build_loaded(
    temp: &Path,
    sources: &[(KeyGroupRange, PathBuf)],
    max_parallelism: u32,
    settings: &BackendSettings,
    to: KeyGroupRange,
) -> Result<()> {
    let engine = engine::Engine::open(temp, max_parallelism, to, settings.clone())?;
    let scratch = temp.join(STAGING_DIR);
    for (range, dir) in sources {
        let part = range
            .intersect(&to)
            .expect("a planned source meets the target");
        crate::canonical::load_canonical(
            &engine,
            &dir.join(CANONICAL_FILE),
            *range,
            part,
            &scratch,
        )?;
    }
    engine.flush()?;
    engine
        .db
        .flush_wal(true)
        .map_err(|e| Error::rocksdb("syncing the write-ahead log", e))?;
    drop(engine);
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|e| Error::io("removing", &scratch, e))?;
    }
    fs::sync_dir_durable(&StdFs, &temp.join(DB_DIR)).map_err(DurableError::into_error)
}

/// Builds the backend of `to` in the new directory `temp` from downloaded backend directories:
/// the first of `sources` is the base (hard links of its SSTs, copies of its other files), the
/// others are copied in by [`engine::rescope`].
fn build_rescoped(
    temp: &Path,
    sources: &[(KeyGroupRange, PathBuf)],
    max_parallelism: u32,
    settings: &BackendSettings,
    to: KeyGroupRange,
) -> Result<()> {
    let (base_range, base_dir) = sources.first().expect("a route has a base");
    let from = base_dir.join(DB_DIR);
    let db = temp.join(DB_DIR);
    std::fs::create_dir_all(&db).map_err(|e| Error::io("creating", &db, e))?;
    for entry in std::fs::read_dir(&from).map_err(|e| Error::io("listing", &from, e))? {
        let entry = entry.map_err(|e| Error::io("listing", &from, e))?;
        let name = entry.file_name();
        let (src, dst) = (entry.path(), db.join(&name));
        if !entry
            .file_type()
            .map_err(|e| Error::io("inspecting", &src, e))?
            .is_file()
        {
            continue;
        }
        // SSTs are immutable and RocksDB only ever unlinks them: a link is a safe copy. Logs,
        // the MANIFEST and CURRENT are copied, since RocksDB may write them.
        let linked =
            name.to_string_lossy().ends_with(".sst") && std::fs::hard_link(&src, &dst).is_ok();
        if !linked {
            std::fs::copy(&src, &dst).map_err(|e| Error::io("copying", &src, e))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::io("syncing", &dst, e))?;
        }
    }
    let copies: Vec<(KeyGroupRange, PathBuf)> = sources[1..].to_vec();
    engine::rescope(temp, settings, max_parallelism, *base_range, to, &copies)?;
    let staging = temp.join(STAGING_DIR);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io("removing", &staging, e))?;
    }
    fs::sync_dir_durable(&StdFs, &db).map_err(DurableError::into_error)
}
