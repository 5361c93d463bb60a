//! `rockpoint delete` and `rockpoint prune`: removing checkpoints and savepoints an operator no
//! longer wants, refusing what a job or a reader still needs (`rockpoint::admin::delete_snapshot`,
//! P-steps of docs/protocols.md). Shared files are GC's: both say how much `gc` then frees.

use std::process::ExitCode;
use std::time::Duration;

use rockpoint::admin::{
    DeleteOptions, DeleteOutcome, DeleteReport, PrunePolicy, RootView, delete_snapshot,
    inspect_root, plan_prune,
};
use rockpoint::{RestoreSource, SnapshotKind, Store};

use crate::output::{REFUSED, human};
use crate::warn_unreadable;

/// What `delete` takes.
#[derive(clap::Args)]
pub struct DeleteArgs {
    /// What to delete: `<job>/<id>`, `<job>/sp-<id>`, `latest:<job>`, a metadata path or a
    /// checkpoint directory; several at once.
    #[arg(required = true)]
    pub(crate) checkpoints: Vec<String>,
    /// Delete a job's newest retained checkpoint too (the one it resumes from).
    #[arg(long)]
    force: bool,
    /// Only say what would happen.
    #[arg(long)]
    dry_run: bool,
}

/// What `prune` takes.
#[derive(clap::Args)]
pub struct PruneArgs {
    /// Only this job.
    #[arg(long)]
    job: Option<String>,
    /// Keep the newest N checkpoints of each job (and savepoints, with --savepoints).
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep what was committed within this period (`90m`, `12h`, `7d`, `2w`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    keep_within: Option<Duration>,
    /// Apply the policy to savepoints too (otherwise they are all kept: they are the user's).
    #[arg(long)]
    savepoints: bool,
    /// Delete. Without it, only report.
    #[arg(long)]
    pub confirm: bool,
}

/// `<job>/<id>` or `<job>/sp-<id>`: the short reference the other commands take.
pub fn reference(job: &str, kind: SnapshotKind, id: u64) -> String {
    match kind {
        SnapshotKind::Checkpoint => format!("{job}/{id}"),
        SnapshotKind::Savepoint => format!("{job}/sp-{id}"),
    }
}

fn metadata_path_of(view: &RootView, report: &DeleteReport) -> Option<String> {
    view.checkpoints()
        .find(|c| c.job_id == report.job_id && c.id == report.id && c.kind == report.kind)
        .map(|c| c.path.clone())
}

/// Deletes the snapshots named, each on its own (a refusal does not stop the others).
pub async fn delete(
    store: &dyn Store,
    args: &DeleteArgs,
    json: bool,
) -> rockpoint::Result<ExitCode> {
    let view = inspect_root(store, None).await?;
    warn_unreadable(&view, json);
    let options = DeleteOptions {
        force: args.force,
        dry_run: args.dry_run,
        ..DeleteOptions::default()
    };
    let mut reports = Vec::new();
    for text in &args.checkpoints {
        let source = RestoreSource::parse(text)?;
        reports.push(delete_snapshot(store, &source, &options).await?);
    }
    let deleted: Vec<String> = reports
        .iter()
        .filter(|r| !matches!(r.outcome, DeleteOutcome::Refused { .. }))
        .filter_map(|r| metadata_path_of(&view, r))
        .collect();
    let (freed, private) = view.freed_parts(deleted.iter().map(String::as_str));
    let refused = reports
        .iter()
        .any(|r| matches!(r.outcome, DeleteOutcome::Refused { .. }));
    if json {
        let value = serde_json::json!({
            "snapshots": reports,
            "private_bytes": private,
            "private_bytes": private,
            "gc_frees_bytes": freed,
        });
        out!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializable")
        );
    } else {
        for report in &reports {
            let name = reference(&report.job_id, report.kind, report.id);
            match &report.outcome {
                DeleteOutcome::Deleted => {
                    out!(
                        "deleted {name}: its job no longer lists it; metadata and private files removed"
                    )
                }
                DeleteOutcome::HandedToOwner => out!(
                    "deleted {name}: its job no longer lists it; the job's running coordinator removes \
                     its records once no checkpoint in flight reuses them"
                ),
                DeleteOutcome::WouldDelete => out!("would delete {name} (dry run)"),
                DeleteOutcome::Refused { reasons } => {
                    out!("REFUSED {name}: nothing deleted");
                    for reason in reasons {
                        out!("  - {reason}");
                    }
                }
            }
        }
        if !deleted.is_empty() {
            let (removed, verb) = if args.dry_run {
                ("would remove", "would free")
            } else {
                ("removed", "frees")
            };
            out!(
                "{removed} {} of private files; `rockpoint gc --confirm` then {verb} {} of shared \
                 files nothing else references, once they are older than its grace period \
                 (--grace-secs, 1 h by default)",
                human(private),
                human(freed)
            );
        }
    }
    Ok(if refused {
        ExitCode::from(REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Deletes what `args`'s policy does not keep (a dry run without --confirm).
pub async fn prune(store: &dyn Store, args: &PruneArgs, json: bool) -> rockpoint::Result<ExitCode> {
    let view = inspect_root(store, args.job.as_deref()).await?;
    warn_unreadable(&view, json);
    crate::inspect::known_job(&view, args.job.as_deref())?;
    let policy = PrunePolicy {
        keep_last: args.keep_last,
        keep_within: args.keep_within,
        savepoints: args.savepoints,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let plan = plan_prune(&view, &policy, now)?;
    let options = DeleteOptions {
        dry_run: !args.confirm,
        ..DeleteOptions::default()
    };
    let mut rows = Vec::new();
    let mut gone = Vec::new();
    let mut refused = false;
    for decision in &plan {
        let s = &decision.snapshot;
        let name = reference(&s.job_id, s.kind, s.id);
        let (action, why) = if decision.keep {
            ("keep".to_owned(), decision.why.clone())
        } else {
            let source = RestoreSource::Metadata(s.path.clone());
            match delete_snapshot(store, &source, &options).await {
                Ok(report) => match report.outcome {
                    DeleteOutcome::Refused { reasons } => {
                        refused = true;
                        ("refused".to_owned(), reasons.join("; "))
                    }
                    DeleteOutcome::WouldDelete => {
                        gone.push(s.path.clone());
                        ("delete".to_owned(), decision.why.clone())
                    }
                    DeleteOutcome::Deleted | DeleteOutcome::HandedToOwner => {
                        gone.push(s.path.clone());
                        ("deleted".to_owned(), decision.why.clone())
                    }
                },
                // Gone meanwhile (its job discarded it): nothing to do.
                Err(e) if e.kind() == rockpoint::ErrorKind::NotFound => {
                    ("gone".to_owned(), e.to_string())
                }
                Err(e) => return Err(e),
            }
        };
        rows.push((name, action, why, s.exclusive_bytes, s.created_at_ms));
    }
    let (freed, private) = view.freed_parts(gone.iter().map(String::as_str));
    if json {
        let value = serde_json::json!({
            "dry_run": !args.confirm,
            "snapshots": rows.iter().map(|(name, action, why, _, _)| serde_json::json!({
                "snapshot": name, "action": action, "why": why,
            })).collect::<Vec<_>>(),
            "private_bytes": private,
            "gc_frees_bytes": freed,
        });
        out!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializable")
        );
    } else {
        out!("{:<32} {:<8} {}", "SNAPSHOT", "ACTION", "WHY");
        for (name, action, why, _, _) in &rows {
            out!("{name:<32} {action:<8} {why}");
        }
        let deleting = rows
            .iter()
            .filter(|r| r.1 == "delete" || r.1 == "deleted")
            .count();
        if args.confirm {
            out!(
                "deleted {deleting} of {} snapshots ({} of private files); `rockpoint gc --confirm` \
                 then frees {} of shared files, once older than its grace period",
                rows.len(),
                human(private),
                human(freed)
            );
        } else {
            out!(
                "would delete {deleting} of {} snapshots ({} of private files), and `gc` then free \
                 {} of shared files (dry run; --confirm deletes)",
                rows.len(),
                human(private),
                human(freed)
            );
        }
    }
    Ok(if refused {
        ExitCode::from(REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}
