//! What checkpoints, restores and GC passes publish through the `metrics` facade, so
//! that whatever exporter the application installs (Prometheus, StatsD, …) picks them up with the
//! exporter's own one line; without an exporter every call here is a no-op. The figures are the
//! ones the library already keeps — [`CompletedCheckpoint`](crate::CompletedCheckpoint), the
//! checkpoint's [`CheckpointMetadata`](crate::CheckpointMetadata), the
//! [`GcReport`](crate::GcReport) — published once, where they are decided, so a dashboard and the
//! library's own figures never disagree. This module only names and records them: it knows no
//! checkpoint, which is why the checkpoint layer hands it plain numbers.
//!
//! Call [`describe`] once after installing the exporter to give each metric its unit and help text.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `rockpoint_checkpoints_completed_total` | counter | `job`, `kind` | checkpoints (savepoints) committed |
//! | `rockpoint_checkpoint_duration_seconds` | histogram | `job`, `kind` | trigger to commit point ([`CompletedCheckpoint::duration`](crate::CompletedCheckpoint::duration)) |
//! | `rockpoint_checkpoint_sync_pause_seconds` | histogram | `job`, `kind` | synchronous pause, one observation per backend snapshot (the operator is blocked this long) |
//! | `rockpoint_checkpoint_checkpointed_size_bytes` | gauge | `job`, `kind` | the last committed one's checkpointed size (what it uploaded) |
//! | `rockpoint_checkpoint_full_size_bytes` | gauge | `job`, `kind` | the last committed one's full size (every file it references) |
//! | `rockpoint_checkpoint_uploaded_files_total` | counter | `job`, `kind` | files and log segments uploaded |
//! | `rockpoint_checkpoint_reused_files_total` | counter | `job`, `kind` | files and log segments the root already held |
//! | `rockpoint_checkpoint_uploaded_bytes_total` | counter | `job`, `kind` | bytes uploaded |
//! | `rockpoint_checkpoint_reused_bytes_total` | counter | `job`, `kind` | bytes reused instead of uploaded |
//! | `rockpoint_checkpoint_failures_total` | counter | `job`, `kind`, `reason` | checkpoints that ended without a commit; `reason` is the [`ErrorKind`] in snake case (`unavailable`, `cancelled`, `fenced`, `busy`, …), or `dropped` when the caller dropped the future |
//! | `rockpoint_restore_duration_seconds` | histogram | `job`, `kind` | a whole restore: metadata read, download, open |
//! | `rockpoint_restored_bytes_total` | counter | `job`, `kind` | bytes downloaded and verified by restores |
//! | `rockpoint_restored_files_total` | counter | `job`, `kind` | files written by restores |
//! | `rockpoint_restore_failures_total` | counter | `job`, `reason` | restores that failed |
//! | `rockpoint_gc_passes_total` | counter | | GC passes that deleted (dry runs are not counted) |
//! | `rockpoint_gc_deleted_files_total` | counter | `category` | files a GC pass deleted: `shared`, `private` (orphaned metadata and private files), `pin` (dead pins and expired intents), `incomplete` (temporary files, empty directories) |
//! | `rockpoint_gc_deleted_bytes_total` | counter | | bytes a GC pass deleted ([`GcReport::reclaimed_bytes`](crate::GcReport::reclaimed_bytes)) |
//!
//! `job` is the coordinator's job; for a restore it is the restoring coordinator's job, or, for
//! [`restore_backend`](crate::restore_backend) outside any job, the job of the restored checkpoint,
//! and `kind` is the kind of the restored snapshot. GC passes are root-wide: they carry no `job`.
//! Checkpoints and restores also run inside `tracing` spans (`checkpoint` with `job`, `id`,
//! `kind`; `restore` with `job`, `source` and the key groups or claim mode), so their log lines say
//! which one they belong to; a GC pass that deleted logs what it deleted.

use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::error::ErrorKind;
use crate::layout::SnapshotKind;

/// Checkpoints (savepoints) committed.
pub const CHECKPOINTS_COMPLETED_TOTAL: &str = "rockpoint_checkpoints_completed_total";
/// Trigger to commit point, in seconds.
pub const CHECKPOINT_DURATION_SECONDS: &str = "rockpoint_checkpoint_duration_seconds";
/// Synchronous pause of one backend snapshot, in seconds.
pub const CHECKPOINT_SYNC_PAUSE_SECONDS: &str = "rockpoint_checkpoint_sync_pause_seconds";
/// The last committed checkpoint's checkpointed size.
pub const CHECKPOINT_CHECKPOINTED_SIZE_BYTES: &str = "rockpoint_checkpoint_checkpointed_size_bytes";
/// The last committed checkpoint's full size.
pub const CHECKPOINT_FULL_SIZE_BYTES: &str = "rockpoint_checkpoint_full_size_bytes";
/// Files and log segments uploaded.
pub const CHECKPOINT_UPLOADED_FILES_TOTAL: &str = "rockpoint_checkpoint_uploaded_files_total";
/// Files and log segments reused.
pub const CHECKPOINT_REUSED_FILES_TOTAL: &str = "rockpoint_checkpoint_reused_files_total";
/// Bytes uploaded.
pub const CHECKPOINT_UPLOADED_BYTES_TOTAL: &str = "rockpoint_checkpoint_uploaded_bytes_total";
/// Bytes reused.
pub const CHECKPOINT_REUSED_BYTES_TOTAL: &str = "rockpoint_checkpoint_reused_bytes_total";
/// Checkpoints that ended without a commit, by `reason`.
pub const CHECKPOINT_FAILURES_TOTAL: &str = "rockpoint_checkpoint_failures_total";
/// A whole restore, in seconds.
pub const RESTORE_DURATION_SECONDS: &str = "rockpoint_restore_duration_seconds";
/// Bytes downloaded and verified by restores.
pub const RESTORED_BYTES_TOTAL: &str = "rockpoint_restored_bytes_total";
/// Files written by restores.
pub const RESTORED_FILES_TOTAL: &str = "rockpoint_restored_files_total";
/// Restores that failed, by `reason`.
pub const RESTORE_FAILURES_TOTAL: &str = "rockpoint_restore_failures_total";
/// GC passes that deleted.
pub const GC_PASSES_TOTAL: &str = "rockpoint_gc_passes_total";
/// Files GC deleted, by `category`.
pub const GC_DELETED_FILES_TOTAL: &str = "rockpoint_gc_deleted_files_total";
/// Bytes GC deleted.
pub const GC_DELETED_BYTES_TOTAL: &str = "rockpoint_gc_deleted_bytes_total";

/// Gives every metric above its unit and help text in the installed recorder. Call it once, after
/// installing the exporter; calling it again is harmless.
pub fn describe() {
    let checkpoint_counters = [
        (
            CHECKPOINTS_COMPLETED_TOTAL,
            Unit::Count,
            "Checkpoints (kind=savepoint: savepoints) committed.",
        ),
        (
            CHECKPOINT_UPLOADED_FILES_TOTAL,
            Unit::Count,
            "Files and log segments checkpoints uploaded.",
        ),
        (
            CHECKPOINT_REUSED_FILES_TOTAL,
            Unit::Count,
            "Files and log segments checkpoints reused from the root instead of uploading.",
        ),
        (
            CHECKPOINT_UPLOADED_BYTES_TOTAL,
            Unit::Bytes,
            "Bytes checkpoints uploaded.",
        ),
        (
            CHECKPOINT_REUSED_BYTES_TOTAL,
            Unit::Bytes,
            "Bytes checkpoints reused from the root instead of uploading.",
        ),
        (
            CHECKPOINT_FAILURES_TOTAL,
            Unit::Count,
            "Checkpoints that ended without a commit, by reason (the error kind, or `dropped`).",
        ),
        (
            RESTORED_BYTES_TOTAL,
            Unit::Bytes,
            "Bytes restores downloaded and verified.",
        ),
        (RESTORED_FILES_TOTAL, Unit::Count, "Files restores wrote."),
        (
            RESTORE_FAILURES_TOTAL,
            Unit::Count,
            "Restores that failed, by reason (the error kind).",
        ),
        (
            GC_PASSES_TOTAL,
            Unit::Count,
            "GC passes that deleted (dry runs are not counted).",
        ),
        (
            GC_DELETED_FILES_TOTAL,
            Unit::Count,
            "Files GC deleted, by category (shared, private, pin, incomplete).",
        ),
        (GC_DELETED_BYTES_TOTAL, Unit::Bytes, "Bytes GC deleted."),
    ];
    for (name, unit, help) in checkpoint_counters {
        describe_counter!(name, unit, help);
    }
    describe_histogram!(
        CHECKPOINT_DURATION_SECONDS,
        Unit::Seconds,
        "Checkpoint latency: trigger to commit point (its metadata durable and listed)."
    );
    describe_histogram!(
        CHECKPOINT_SYNC_PAUSE_SECONDS,
        Unit::Seconds,
        "Synchronous pause of one backend snapshot: how long the operator was blocked."
    );
    describe_histogram!(
        RESTORE_DURATION_SECONDS,
        Unit::Seconds,
        "A whole restore: metadata read, download and verification, open."
    );
    describe_gauge!(
        CHECKPOINT_CHECKPOINTED_SIZE_BYTES,
        Unit::Bytes,
        "The last committed checkpoint's checkpointed size (bytes it uploaded)."
    );
    describe_gauge!(
        CHECKPOINT_FULL_SIZE_BYTES,
        Unit::Bytes,
        "The last committed checkpoint's full size (bytes of every file it references)."
    );
}

/// The `kind` label of a snapshot kind.
pub(crate) fn kind_label(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::Checkpoint => "checkpoint",
        SnapshotKind::Savepoint => "savepoint",
    }
}

/// The `reason` label of an error kind.
pub(crate) fn reason_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Invalid => "invalid",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Corruption => "corruption",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Poisoned => "poisoned",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Fenced => "fenced",
        ErrorKind::Busy => "busy",
        ErrorKind::Internal => "internal",
    }
}

/// The `reason` of a checkpoint whose caller dropped its future.
pub(crate) const DROPPED: &str = "dropped";

/// What a committed checkpoint cost, as the checkpoint layer knows it.
pub(crate) struct CheckpointFigures<'a> {
    pub(crate) duration: Duration,
    /// One per backend snapshot, in microseconds.
    pub(crate) sync_pauses_us: &'a [u64],
    pub(crate) checkpointed_size_bytes: u64,
    pub(crate) full_size_bytes: u64,
    pub(crate) uploaded_files: u64,
    pub(crate) reused_files: u64,
    pub(crate) uploaded_bytes: u64,
    pub(crate) reused_bytes: u64,
}

/// Publishes a committed checkpoint.
pub(crate) fn checkpoint_completed(job: &str, kind: SnapshotKind, figures: &CheckpointFigures<'_>) {
    let labels = [
        ("job", job.to_owned()),
        ("kind", kind_label(kind).to_owned()),
    ];
    counter!(CHECKPOINTS_COMPLETED_TOTAL, &labels).increment(1);
    histogram!(CHECKPOINT_DURATION_SECONDS, &labels).record(figures.duration.as_secs_f64());
    let pause = histogram!(CHECKPOINT_SYNC_PAUSE_SECONDS, &labels);
    for us in figures.sync_pauses_us {
        pause.record(Duration::from_micros(*us).as_secs_f64());
    }
    gauge!(CHECKPOINT_CHECKPOINTED_SIZE_BYTES, &labels).set(figures.checkpointed_size_bytes as f64);
    gauge!(CHECKPOINT_FULL_SIZE_BYTES, &labels).set(figures.full_size_bytes as f64);
    counter!(CHECKPOINT_UPLOADED_FILES_TOTAL, &labels).increment(figures.uploaded_files);
    counter!(CHECKPOINT_REUSED_FILES_TOTAL, &labels).increment(figures.reused_files);
    counter!(CHECKPOINT_UPLOADED_BYTES_TOTAL, &labels).increment(figures.uploaded_bytes);
    counter!(CHECKPOINT_REUSED_BYTES_TOTAL, &labels).increment(figures.reused_bytes);
}

/// Publishes a checkpoint that ended without a commit.
pub(crate) fn checkpoint_failed(job: &str, kind: SnapshotKind, reason: &'static str) {
    counter!(
        CHECKPOINT_FAILURES_TOTAL,
        "job" => job.to_owned(),
        "kind" => kind_label(kind),
        "reason" => reason
    )
    .increment(1);
}

/// Publishes a restore that succeeded.
pub(crate) fn restore_completed(
    job: &str,
    kind: SnapshotKind,
    duration: Duration,
    files: u64,
    bytes: u64,
) {
    let labels = [
        ("job", job.to_owned()),
        ("kind", kind_label(kind).to_owned()),
    ];
    histogram!(RESTORE_DURATION_SECONDS, &labels).record(duration.as_secs_f64());
    counter!(RESTORED_FILES_TOTAL, &labels).increment(files);
    counter!(RESTORED_BYTES_TOTAL, &labels).increment(bytes);
}

/// Publishes a restore that failed.
pub(crate) fn restore_failed(job: &str, kind: ErrorKind) {
    counter!(RESTORE_FAILURES_TOTAL, "job" => job.to_owned(), "reason" => reason_label(kind))
        .increment(1);
}

/// Publishes a GC pass that deleted, and logs what it deleted (inside the pass's span).
pub(crate) fn gc_pass(shared: usize, private: usize, pins: usize, incomplete: usize, bytes: u64) {
    counter!(GC_PASSES_TOTAL).increment(1);
    for (category, files) in [
        ("shared", shared),
        ("private", private),
        ("pin", pins),
        ("incomplete", incomplete),
    ] {
        counter!(GC_DELETED_FILES_TOTAL, "category" => category).increment(files as u64);
    }
    counter!(GC_DELETED_BYTES_TOTAL).increment(bytes);
    tracing::info!(shared, private, pins, incomplete, bytes, "GC pass deleted");
}
