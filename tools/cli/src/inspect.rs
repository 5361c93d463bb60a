//! `list`, `show` and `du`: what a root holds, for a person (tables, human sizes, UTC times) or,
//! with `--json`, for a machine (exact bytes and milliseconds).

use std::time::{Duration, UNIX_EPOCH};

use rockpoint::admin::{CheckpointSummary, RootView};
use rockpoint::{CheckpointMetadata, SnapshotKind};
use serde::Serialize;

use crate::delete::reference;
use crate::output::human;

/// `2026-11-30T07:41:02Z` for milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn kind(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Checkpoint => "checkpoint",
        SnapshotKind::Savepoint => "savepoint",
    }
}

#[derive(Serialize)]
struct Listed<'a> {
    reference: String,
    path: &'a str,
    job: &'a str,
    id: u64,
    kind: &'static str,
    created_at_ms: u64,
    backends: usize,
    checkpointed_bytes: u64,
    full_bytes: u64,
    exclusive_bytes: u64,
}

fn listed(c: &CheckpointSummary) -> Listed<'_> {
    Listed {
        reference: reference(&c.job_id, c.kind, c.id),
        path: &c.path,
        job: &c.job_id,
        id: c.id,
        kind: kind(c.kind),
        created_at_ms: c.created_at_ms,
        backends: c.backends,
        checkpointed_bytes: c.checkpointed_bytes,
        full_bytes: c.full_bytes,
        exclusive_bytes: c.exclusive_bytes,
    }
}

/// A `--job` filter that matches no job of the root is `NotFound` (exit 3), as in `check`.
pub fn known_job(view: &RootView, job: Option<&str>) -> rockpoint::Result<()> {
    match job {
        Some(job) if !view.jobs.iter().any(|j| j.job_id == job) => Err(rockpoint::Error::new(
            rockpoint::ErrorKind::NotFound,
            format!("the root holds no job `{job}`"),
        )),
        _ => Ok(()),
    }
}

/// `list`: one row per committed checkpoint and savepoint.
pub fn list(view: &RootView, json: bool) {
    let rows: Vec<Listed> = view.checkpoints().map(listed).collect();
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serializable")
        );
        return;
    }
    out!(
        "{:<24} {:<10} {:<20} {:>8} {:>11} {:>11} {:>11}",
        "SNAPSHOT",
        "KIND",
        "CREATED (UTC)",
        "BACKENDS",
        "NEW",
        "FULL",
        "EXCLUSIVE"
    );
    for row in &rows {
        out!(
            "{:<24} {:<10} {:<20} {:>8} {:>11} {:>11} {:>11}",
            row.reference,
            row.kind,
            utc(row.created_at_ms),
            row.backends,
            human(row.checkpointed_bytes),
            human(row.full_bytes),
            human(row.exclusive_bytes)
        );
    }
    let jobs = view.jobs.len();
    out!(
        "{} snapshot{} of {jobs} job{}; NEW: uploaded when taken, FULL: state it restores, \
         EXCLUSIVE: what deleting it frees",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        if jobs == 1 { "" } else { "s" }
    );
}

/// `show`: a readable summary of one checkpoint (`--json`: the metadata record itself).
pub fn show(metadata: &CheckpointMetadata, exclusive: Option<u64>, json: bool) {
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(metadata).expect("serializable")
        );
        return;
    }
    let b = &metadata.backends;
    let pause_us = b.iter().map(|h| h.sync_pause_us).max().unwrap_or(0);
    let async_us = b.iter().map(|h| h.async_duration_us).max().unwrap_or(0);
    let uploaded_files: u64 = b.iter().map(|h| h.uploaded_files).sum();
    let reused_files: u64 = b.iter().map(|h| h.reused_files).sum();
    let reused_bytes: u64 = b.iter().map(|h| h.reused_bytes).sum();
    out!(
        "{} {} ({})",
        kind(metadata.kind),
        reference(&metadata.job_id, metadata.kind, metadata.checkpoint_id),
        metadata.metadata_path()
    );
    out!("  created        {}", utc(metadata.created_at_ms));
    out!(
        "  format         {}",
        serde_json::to_value(metadata.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    out!(
        "  duration       {:.1} ms upload (slowest backend); sync pause {:.3} ms",
        async_us as f64 / 1000.0,
        pause_us as f64 / 1000.0
    );
    out!(
        "  size           {} new of {} full ({} files uploaded, {} files / {} reused)",
        human(metadata.checkpointed_size_bytes),
        human(metadata.full_size_bytes),
        uploaded_files,
        reused_files,
        human(reused_bytes)
    );
    if let Some(exclusive) = exclusive {
        out!(
            "  exclusive      {} (what deleting it, then `gc`, frees)",
            human(exclusive)
        );
    }
    if let Some(from) = &metadata.restored_from {
        out!("  restored from  {from}");
    }
    if let Some(from) = &metadata.claimed_from {
        out!("  claimed from   {from}");
    }
    out!(
        "  backends       {} (max parallelism {})",
        b.len(),
        metadata.max_parallelism
    );
    for h in b {
        let segments: usize = h.log_files.iter().map(|l| l.segments.len()).sum();
        out!(
            "    key groups {:<12} {:>3} SSTs, {} log files in {} segments, {} private; {}",
            format!("{}..{}", h.key_groups.start(), h.key_groups.end()),
            h.shared_files.len(),
            h.log_files.len(),
            segments,
            h.private_files.len(),
            human(h.full_size_bytes())
        );
    }
    if let Some(first) = b.first() {
        let states: Vec<String> = first
            .states
            .iter()
            .map(|s| format!("{} ({:?} {} -> {})", s.name, s.kind, s.key_tag, s.value_tag))
            .collect();
        out!("  states         {}", states.join(", "));
    }
}

/// `du`: sizes per snapshot and for the root.
pub fn du(view: &RootView, json: bool) {
    let full_sum: u64 = view.checkpoints().map(|c| c.full_bytes).sum();
    if json {
        let value = serde_json::json!({
            "checkpoints": view.checkpoints().map(|c| serde_json::json!({
                "reference": reference(&c.job_id, c.kind, c.id),
                "job": c.job_id,
                "id": c.id,
                "kind": kind(c.kind),
                "path": c.path,
                "checkpointed_bytes": c.checkpointed_bytes,
                "full_bytes": c.full_bytes,
                "exclusive_bytes": c.exclusive_bytes,
            })).collect::<Vec<_>>(),
            "stored_bytes": view.stored_bytes,
            "unique_shared_bytes": view.referenced_bytes,
            "sum_of_full_sizes": full_sum,
        });
        out!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializable")
        );
        return;
    }
    out!(
        "{:<24} {:>11} {:>11} {:>11}",
        "SNAPSHOT",
        "NEW",
        "FULL",
        "EXCLUSIVE"
    );
    for c in view.checkpoints() {
        out!(
            "{:<24} {:>11} {:>11} {:>11}",
            reference(&c.job_id, c.kind, c.id),
            human(c.checkpointed_bytes),
            human(c.full_bytes),
            human(c.exclusive_bytes)
        );
    }
    out!(
        "the root stores {}; its snapshots restore {} of state in all, from {} of distinct files \
         (EXCLUSIVE: what deleting one, then `gc`, frees)",
        human(view.stored_bytes),
        human(full_sum),
        human(view.referenced_bytes)
    );
}
