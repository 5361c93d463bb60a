//! `rockpoint restore`: a backend of a checkpoint into a new directory, verified, with a progress bar.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rockpoint::restore::RestoreRoute;
use rockpoint::{BackendSettings, RestoreSource, RestoreTarget, Store};

use crate::output::bar;
use crate::parse_range;

/// Restores `checkpoint`'s key groups `key_groups` into `target`.
pub async fn run(
    store: &dyn Store,
    checkpoint: &str,
    key_groups: &str,
    target: PathBuf,
    _json: bool,
) -> rockpoint::Result<ExitCode> {
    let source = RestoreSource::parse(checkpoint)?;
    let (_, metadata) = rockpoint::restore::read_metadata(store, &source).await?;
    let range = parse_range(key_groups)?;
    let route = rockpoint::restore::plan_restore(&metadata, range)?;
    let bytes: u64 = route
        .sources(range)
        .into_iter()
        .filter_map(|r| rockpoint::restore::backend_for(&metadata, r).ok())
        .map(|h| h.full_size_bytes())
        .sum();
    let progress = bar(bytes, "restoring");
    let callback = {
        let progress = progress.clone();
        Arc::new(move |n: u64| progress.inc(n)) as rockpoint::Progress
    };
    let target = RestoreTarget {
        dir: target,
        key_groups: range,
        settings: BackendSettings::default(),
    };
    let backend = rockpoint::restore_backend(store, &source, &target, 8, Some(callback)).await?;
    progress.finish();
    let states: Vec<String> = backend.states().into_iter().map(|s| s.name).collect();
    let how = match &route {
        RestoreRoute::Exact => String::new(),
        RestoreRoute::Clip { source } => format!(" (clipped from backend {source})"),
        RestoreRoute::Merge { base, copied } => {
            let copied: Vec<String> = copied.iter().map(|r| r.to_string()).collect();
            format!(" (backend {base} merged with {})", copied.join(", "))
        }
        RestoreRoute::Load { sources } => {
            let sources: Vec<String> = sources.iter().map(|r| r.to_string()).collect();
            format!(" (loaded from canonical streams {})", sources.join(", "))
        }
    };
    out!(
        "restored {} key groups {range} into {}{how} with states {states:?}",
        metadata.metadata_path(),
        target.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
