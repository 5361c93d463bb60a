//! GC of a whole root (G1–G4 of `docs/protocols.md`): the orphan sweeper.
//!
//! Safety: a shared file is removed only if no metadata record and no pin lists it, *and* it is
//! older than the grace period, *and* a re-listing of metadata and pins right before deleting still
//! does not list it. The grace period protects uploads of other processes whose pin GC has not seen
//! (SlateDB RFC-0029); it must exceed the longest checkpoint upload. Dry run is the default.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::metadata::{parse_checkpoint_path, parse_shared_path};
use super::refs::RefIndex;
use crate::error::Result;
use crate::store::{ContentHash, Store, SweepMode};

/// What GC may remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcOptions {
    /// Unreferenced objects younger than this are kept. Default: one hour.
    pub grace_period: Duration,
    /// Report only, or delete. Default: `DryRun`.
    pub mode: SweepMode,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace_period: Duration::from_secs(3600),
            mode: SweepMode::DryRun,
        }
    }
}

/// What GC found and (unless dry run) removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Whether anything was deleted.
    pub dry_run: bool,
    /// Committed metadata records (checkpoints and savepoints) in the root.
    pub metadata_records: usize,
    /// Distinct shared files they and the live pins reference.
    pub referenced_shared_files: usize,
    /// Unreferenced shared files (removed unless dry run).
    pub shared_files: Vec<String>,
    /// Private files of checkpoints that never committed.
    pub private_files: Vec<String>,
    /// Pins older than the grace period.
    pub pins: Vec<String>,
    /// Temporary files and empty directories.
    pub incomplete: Vec<String>,
    /// Bytes of everything listed above.
    pub reclaimed_bytes: u64,
}

impl GcReport {
    /// Whether GC found nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.shared_files.is_empty()
            && self.private_files.is_empty()
            && self.pins.is_empty()
            && self.incomplete.is_empty()
    }
}

/// Sweeps `store` (G1–G4).
pub async fn collect_garbage(store: &dyn Store, options: &GcOptions) -> Result<GcReport> {
    let cutoff = SystemTime::now()
        .checked_sub(options.grace_period)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let index = RefIndex::default();
    // G1
    let shared = store.list("shared/").await?;
    let jobs = store.list("jobs/").await?;
    // G2
    let refs = index.load(store, &HashSet::new()).await?;
    let live_pins: Vec<_> = refs.pins.iter().filter(|p| p.modified > cutoff).collect();
    let mut referenced: HashSet<ContentHash> = refs
        .committed
        .iter()
        .flat_map(|m| m.shared_hashes())
        .collect();
    referenced.extend(
        live_pins
            .iter()
            .flat_map(|p| p.record.hashes.iter().copied()),
    );
    let referenced_private: HashSet<&str> = refs
        .committed
        .iter()
        .flat_map(|m| m.backends.iter())
        .flat_map(|b| b.private_files.iter().map(|f| f.path.as_str()))
        .collect();
    let committed_dirs: HashSet<String> = refs
        .committed
        .iter()
        .map(|m| m.metadata_path().trim_end_matches("/_metadata").to_owned())
        .collect();
    let pinned_dirs: HashSet<String> = live_pins
        .iter()
        .filter_map(|p| {
            let (_, name) = p.path.rsplit_once('/')?;
            let (kind, rest) = name.split_once('-')?;
            Some(format!(
                "jobs/{}/{kind}-{}",
                p.record.job_id,
                rest.get(..20)?
            ))
        })
        .collect();

    // G3
    let mut report = GcReport {
        dry_run: options.mode == SweepMode::DryRun,
        metadata_records: refs.committed.len(),
        referenced_shared_files: referenced.len(),
        ..GcReport::default()
    };
    let mut shared_candidates: BTreeMap<String, (ContentHash, u64)> = BTreeMap::new();
    for object in &shared {
        match parse_shared_path(&object.path) {
            Some(hash) if !referenced.contains(&hash) && object.modified <= cutoff => {
                shared_candidates.insert(object.path.clone(), (hash, object.size));
            }
            Some(_) => {}
            // Not a name the engine writes: leave it alone, but say so.
            None => tracing::warn!(
                path = object.path,
                "unexpected object under shared/; left in place"
            ),
        }
    }
    let mut private_candidates = Vec::new();
    for object in &jobs {
        let Some((job, kind, id, rest)) = parse_checkpoint_path(&object.path) else {
            continue;
        };
        let dir = format!("jobs/{job}/{}-{id:020}", kind.dir_prefix());
        let orphan = rest != "_metadata"
            && !committed_dirs.contains(&dir)
            && !pinned_dirs.contains(&dir)
            && !referenced_private.contains(object.path.as_str())
            && object.modified <= cutoff;
        if orphan {
            private_candidates.push((object.path.clone(), object.size));
        }
    }
    let stale_pins: Vec<(String, u64)> = refs
        .pins
        .iter()
        .filter(|p| p.modified <= cutoff)
        .map(|p| (p.path.clone(), 0))
        .collect();

    if options.mode == SweepMode::Delete {
        // G4: stale pins first (nothing may list a file while it is deleted), then re-list: a pin or
        // commit that appeared since G2 protects what it lists.
        for (path, _) in &stale_pins {
            store.delete(path).await?;
        }
        let now = index.load(store, &HashSet::new()).await?;
        let protected: HashSet<ContentHash> = now.counts.keys().copied().collect();
        shared_candidates.retain(|_, (hash, _)| !protected.contains(hash));
        for (path, (_, size)) in &shared_candidates {
            store.delete(path).await?;
            report.reclaimed_bytes += size;
        }
        for (path, size) in &private_candidates {
            store.delete(path).await?;
            report.reclaimed_bytes += size;
        }
    } else {
        report.reclaimed_bytes = shared_candidates
            .values()
            .map(|(_, size)| size)
            .sum::<u64>()
            + private_candidates.iter().map(|(_, size)| size).sum::<u64>();
    }
    report.shared_files = shared_candidates.into_keys().collect();
    report.private_files = private_candidates
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    report.pins = stale_pins.into_iter().map(|(path, _)| path).collect();
    report.incomplete = store
        .sweep_incomplete(options.grace_period, options.mode)
        .await?;
    Ok(report)
}
