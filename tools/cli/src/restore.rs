//! `rockpoint restore`: backends of a checkpoint into new directories, all or nothing, verified,
//! with a progress bar; Ctrl-C stops it and leaves nothing behind (exit 130).
//!
//! The targets are checked before anything is read, the checkpoint is resolved once (so that
//! `latest:<job>` names one checkpoint for the plan, the bar and the restore), and the restore
//! itself is the library's `restore_backends_until`, stopped by SIGINT: it awaits the work it
//! started, removes every temporary directory and its reader pin, and only then does the command
//! exit.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use rockpoint::format::SnapshotFormat;
use rockpoint::restore::{RestoreRoute, backend_for, plan_restore};
use rockpoint::{
    BackendSettings, Error, ErrorKind, KeyGroupRange, RestoreSource, RestoreTarget, Store,
};
use serde::Serialize;

use crate::output::{bar, human};
use crate::parse_range;

/// The exit code of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

/// One restored backend, as printed.
#[derive(Serialize)]
struct Restored {
    dir: PathBuf,
    key_groups: String,
    key_group_start: u32,
    key_group_end: u32,
    /// `exact`, `clip`, `merge` or `load`.
    route: &'static str,
    /// The backends of the checkpoint it was built from.
    sources: Vec<String>,
    states: Vec<String>,
    size_bytes: u64,
}

/// Restores `checkpoint` into `target`: the ranges `key_groups` (each `START..END`), or every
/// backend of the checkpoint without any; one range goes into `target` itself, several each into
/// `target/kg-START-END`.
pub async fn run(
    store: &dyn Store,
    checkpoint: &str,
    key_groups: &[String],
    target: &Path,
    json: bool,
) -> rockpoint::Result<ExitCode> {
    // Listening from the start: a Ctrl-C at any point stops the restore cleanly.
    // The signal is caught by a task of its own, so a Ctrl-C is seen in every phase, also after
    // the library stopped polling `stop` (while it opens the restored backends).
    let interrupted = Arc::new(AtomicBool::new(false));
    let (caught, mut stop_rx) = tokio::sync::watch::channel(false);
    {
        let ctrl_c = listen_for_ctrl_c().await;
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            ctrl_c.await;
            interrupted.store(true, Ordering::SeqCst);
            eprintln!(
                "interrupt: stopping the restore (downloads stop at once; a backend being built \
                 or opened finishes first, then everything restored is removed)"
            );
            let _ = caught.send(true);
        });
    }
    let stop = async move {
        let _ = stop_rx.wait_for(|caught| *caught).await;
    };
    let started = Instant::now();
    let source = RestoreSource::parse(checkpoint)?;
    let ranges: Vec<KeyGroupRange> = key_groups
        .iter()
        .map(|text| parse_range(text))
        .collect::<rockpoint::Result<_>>()?;
    // One range: `target` is the backend. Otherwise `target` holds one directory per backend.
    let container = (ranges.len() != 1).then_some(target);
    check_new_directory(target)?;
    let existed = target.exists();
    let (path, metadata) = rockpoint::restore::read_metadata(store, &source).await?;
    let source = RestoreSource::Metadata(path.clone());
    let ranges = if ranges.is_empty() {
        let mut all: Vec<KeyGroupRange> = metadata.backends.iter().map(|b| b.key_groups).collect();
        all.sort_by_key(|r| r.start());
        all
    } else {
        ranges
    };
    let routes: Vec<RestoreRoute> = ranges
        .iter()
        .map(|range| plan_restore(&metadata, *range))
        .collect::<rockpoint::Result<_>>()?;
    let targets: Vec<RestoreTarget> = ranges
        .iter()
        .map(|range| RestoreTarget {
            dir: match container {
                Some(dir) => dir.join(format!("kg-{}-{}", range.start(), range.end())),
                None => target.to_path_buf(),
            },
            key_groups: *range,
            settings: BackendSettings::default(),
        })
        .collect();
    // Each source backend is read once, however many targets it serves.
    let mut read: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (route, range) in routes.iter().zip(&ranges) {
        for source in route.sources(*range) {
            let bytes = backend_for(&metadata, source)?.full_size_bytes();
            read.insert((source.start(), source.end()), bytes);
        }
    }
    let read_bytes: u64 = read.values().sum();
    // The backends' directory is created only now that the plan holds, and removed again if the
    // restore fails (the library removes what it created inside it).
    let created = match container {
        Some(dir) if !dir.exists() => {
            std::fs::create_dir(dir).map_err(|e| {
                Error::with_source(
                    ErrorKind::Invalid,
                    format!("creating restore target {}", dir.display()),
                    e,
                )
            })?;
            Some(dir)
        }
        _ => None,
    };
    let progress = bar(read_bytes, "restoring");
    let callback = {
        let progress = progress.clone();
        Arc::new(move |n: u64| progress.inc(n)) as rockpoint::Progress
    };
    let restored = rockpoint::restore::restore_backends_until(
        store,
        &source,
        &targets,
        8,
        Some(callback),
        stop,
    )
    .await;
    progress.finish_and_clear();
    let backends = match restored {
        Ok(backends) => backends,
        Err(e) => {
            if let Some(dir) = created {
                // Empty by now: every target and temporary inside it was removed.
                let _ = std::fs::remove_dir(dir);
            }
            if interrupted.load(Ordering::SeqCst) {
                let message = format!(
                    "interrupted: nothing of {path} was restored; {} was left as it was and the \
                     restore can be run again",
                    target.display()
                );
                return Ok(crate::output::fail(
                    json,
                    "Interrupted",
                    &message,
                    INTERRUPTED,
                ));
            }
            return Err(e);
        }
    };
    if interrupted.load(Ordering::SeqCst) {
        // Interrupted after the targets were in place (while the backends opened): the restore
        // is all or nothing for the operator too, so what it created goes.
        drop(backends);
        for t in &targets {
            let _ = std::fs::remove_dir_all(&t.dir);
        }
        if let Some(dir) = created {
            let _ = std::fs::remove_dir(dir);
        } else if container.is_none() && existed {
            // It was an empty directory before: leave it so.
            let _ = std::fs::create_dir(target);
        }
        let message = format!(
            "interrupted: the restore of {path} had finished but was not kept; {} was left as it \
             was and the restore can be run again",
            target.display()
        );
        return Ok(crate::output::fail(
            json,
            "Interrupted",
            &message,
            INTERRUPTED,
        ));
    }
    let states: Vec<Vec<String>> = backends
        .iter()
        .map(|b| b.states().into_iter().map(|s| s.name).collect())
        .collect();
    // Closed before their sizes are taken: what an operator then finds on disk.
    drop(backends);
    let restored: Vec<Restored> = targets
        .iter()
        .zip(&routes)
        .zip(states)
        .map(|((target, route), states)| Restored {
            dir: std::path::absolute(&target.dir).unwrap_or_else(|_| target.dir.clone()),
            key_groups: target.key_groups.to_string(),
            key_group_start: target.key_groups.start(),
            key_group_end: target.key_groups.end(),
            route: match route {
                RestoreRoute::Exact => "exact",
                RestoreRoute::Clip { .. } => "clip",
                RestoreRoute::Merge { .. } => "merge",
                RestoreRoute::Load { .. } => "load",
            },
            sources: route
                .sources(target.key_groups)
                .iter()
                .map(|r| r.to_string())
                .collect(),
            states,
            size_bytes: tree_bytes(&target.dir),
        })
        .collect();
    let duration = started.elapsed();
    if json {
        let value = serde_json::json!({
            "checkpoint": path,
            "job": metadata.job_id,
            "id": metadata.checkpoint_id,
            "kind": format!("{:?}", metadata.kind).to_lowercase(),
            "canonical": metadata.format == SnapshotFormat::Canonical,
            "targets": restored,
            "read_bytes": read_bytes,
            "size_bytes": restored.iter().map(|r| r.size_bytes).sum::<u64>(),
            "duration_ms": duration.as_millis() as u64,
        });
        out!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializable")
        );
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "restored {}: {} backend{} ({} read and verified, {} on disk) in {:.2} s",
        crate::delete::reference(&metadata.job_id, metadata.kind, metadata.checkpoint_id),
        restored.len(),
        if restored.len() == 1 { "" } else { "s" },
        human(read_bytes),
        human(restored.iter().map(|r| r.size_bytes).sum()),
        duration.as_secs_f64()
    );
    for ((r, route), target) in restored.iter().zip(&routes).zip(&targets) {
        out!(
            "  {}  key groups {}..{}  {}  {}  states {:?}",
            target.dir.display(),
            target.key_groups.start(),
            target.key_groups.end(),
            describe(route),
            human(r.size_bytes),
            r.states
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How a route builds its target, for a reader.
fn describe(route: &RestoreRoute) -> String {
    match route {
        RestoreRoute::Exact => "exact (the backend's files as they are)".to_owned(),
        RestoreRoute::Clip { source } => format!("clipped from backend {source}"),
        RestoreRoute::Merge { base, copied } => {
            let copied: Vec<String> = copied.iter().map(|r| r.to_string()).collect();
            format!("backend {base} merged with {}", copied.join(", "))
        }
        RestoreRoute::Load { sources } => {
            let sources: Vec<String> = sources.iter().map(|r| r.to_string()).collect();
            format!("loaded from canonical streams {}", sources.join(", "))
        }
    }
}

/// Refuses, before anything is read or created, a `dir` that cannot become a restore target: an
/// existing file, a directory that is not empty, or one whose parent does not exist (a typo then
/// creates nothing).
fn check_new_directory(dir: &Path) -> rockpoint::Result<()> {
    let invalid = |why: &str| {
        Error::new(
            ErrorKind::Invalid,
            format!("--target {}: {why}", dir.display()),
        )
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            let occupied = std::fs::read_dir(dir)
                .map_err(|e| {
                    Error::with_source(ErrorKind::Invalid, format!("--target {}", dir.display()), e)
                })?
                .next()
                .is_some();
            if occupied {
                return Err(invalid(
                    "exists and is not empty; restore into a new or empty directory",
                ));
            }
        }
        Ok(_) => {
            return Err(invalid(
                "exists and is not a directory; restore into a new or empty directory",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::with_source(
                ErrorKind::Invalid,
                format!("--target {}", dir.display()),
                e,
            ));
        }
    }
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(invalid("names no directory to create")),
    };
    if dir.file_name().is_none() || !parent.is_dir() {
        return Err(invalid(&format!(
            "its parent {} is not an existing directory; create it first",
            parent.display()
        )));
    }
    Ok(())
}

/// Bytes of the files under `dir` (a restored backend's size on disk; hard links counted once
/// per name).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => tree_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Bytes `verify` reads: each distinct object of the checkpoint once (shared files and log
/// segments by hash and local name, private files by path), as `verify_checkpoint` reads them.
pub fn distinct_bytes(metadata: &rockpoint::CheckpointMetadata) -> u64 {
    let mut objects: BTreeMap<(String, String), u64> = BTreeMap::new();
    for handle in &metadata.backends {
        for file in &handle.shared_files {
            objects.insert((file.hash.to_hex(), file.local_name.clone()), file.size);
        }
        for log in &handle.log_files {
            for segment in &log.segments {
                objects.insert(
                    (segment.hash.to_hex(), log.local_name.clone()),
                    segment.size,
                );
            }
        }
        for file in &handle.private_files {
            objects.insert((file.path.clone(), file.local_name.clone()), file.size);
        }
    }
    objects.values().sum()
}

/// Installs the SIGINT handler now (a Ctrl-C from here on is caught, not fatal) and returns the
/// future that completes on the first Ctrl-C; if no handler can be installed it never completes
/// and Ctrl-C keeps its default effect.
async fn listen_for_ctrl_c() -> impl Future<Output = ()> {
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    // `ctrl_c` installs its handler when first polled.
    let first = std::future::poll_fn(|cx| Poll::Ready(ctrl_c.as_mut().poll(cx))).await;
    async move {
        let caught = match first {
            Poll::Ready(result) => result.is_ok(),
            Poll::Pending => ctrl_c.await.is_ok(),
        };
        if !caught {
            std::future::pending::<()>().await;
        }
    }
}
