//! `rockpoint check`: every record and every object of a root, read and hashed
//! (`rockpoint::admin::check_root`), with each problem and the checkpoints and savepoints it
//! affects on a line of its own.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use rockpoint::admin::{CheckOptions, CheckReport, Problem, ProblemKind, check_root};
use rockpoint::{ErrorKind, Store};

use crate::output::{bar, exit_code, human};

/// What `check` takes.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Only this job: its records and the objects its committed checkpoints and savepoints
    /// reference (shared files nothing references are then not read).
    #[arg(long)]
    job: Option<String>,
    /// How many objects are read and hashed at once.
    #[arg(long, default_value_t = 8)]
    parallelism: usize,
}

/// Checks the whole root (or one job). Exit code 0 when nothing is wrong, 4 (corruption) when an
/// object or record is missing or damaged, 5 (retry) when some could only not be read.
pub async fn run(store: &dyn Store, args: &CheckArgs, json: bool) -> rockpoint::Result<ExitCode> {
    let options = CheckOptions {
        job: args.job.clone(),
        parallelism: args.parallelism,
    };
    let started = Instant::now();
    // The bar's total takes a listing of its own: only worth it when someone watches.
    let progress = if std::io::stderr().is_terminal() {
        Some(bar(
            bytes_to_hash(store, args.job.as_deref()).await?,
            "checking",
        ))
    } else {
        None
    };
    let callback = progress
        .clone()
        .map(|progress| Arc::new(move |n: u64| progress.inc(n)) as rockpoint::Progress);
    let report = check_root(store, &options, callback).await?;
    if let Some(progress) = progress {
        progress.finish_and_clear();
    }
    let elapsed = started.elapsed();
    if json {
        let mut value = serde_json::to_value(&report).expect("serializable");
        value["duration_ms"] = serde_json::json!(elapsed.as_millis() as u64);
        out!(
            "{}",
            serde_json::to_string_pretty(&value).expect("serializable")
        );
    } else {
        print_human(&report, elapsed.as_secs_f64());
    }
    let code = if report.problems.iter().any(|p| p.kind.is_damage()) {
        exit_code(ErrorKind::Corruption)
    } else if !report.is_clean() {
        exit_code(ErrorKind::Unavailable)
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

/// About what the check will hash: every shared file and every private file (of committed
/// snapshots or not) the root holds.
async fn bytes_to_hash(store: &dyn Store, job: Option<&str>) -> rockpoint::Result<u64> {
    let jobs = match job {
        Some(job) => format!("jobs/{job}/"),
        None => "jobs/".to_owned(),
    };
    let private: u64 = store
        .list(&jobs)
        .await?
        .iter()
        .filter(|o| o.path.contains("/kg-"))
        .map(|o| o.size)
        .sum();
    let shared: u64 = store.list("shared/").await?.iter().map(|o| o.size).sum();
    Ok(private + shared)
}

fn print_human(report: &CheckReport, seconds: f64) {
    for problem in &report.problems {
        out!("{}", problem_line(problem));
    }
    if !report.ignored.is_empty() {
        let shown: Vec<&str> = report.ignored.iter().take(3).map(String::as_str).collect();
        out!(
            "ignored {} objects whose names rockpoint does not write (not read), e.g. {}",
            report.ignored.len(),
            shown.join(", ")
        );
    }
    if report.orphans > 0 {
        out!(
            "{} metadata records no job record lists (in flight or aborted; gc sweeps them)",
            report.orphans
        );
    }
    if report.unreferenced_objects > 0 {
        out!(
            "{} shared files ({}) nothing references (gc collects them)",
            report.unreferenced_objects,
            human(report.unreferenced_bytes)
        );
    }
    let verdict = match report.problems.len() {
        0 => "OK".to_owned(),
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let count = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    out!(
        "checked {}, {}, {}, {}, {} ({}) in {seconds:.1} s: {verdict}",
        count(report.jobs, "job"),
        count(report.checkpoints, "checkpoint"),
        count(report.savepoints, "savepoint"),
        count(report.records, "record"),
        count(report.objects, "object"),
        human(report.bytes)
    );
}

/// `DAMAGED shared/ab/abcd…: hash mismatch; affects wordcount/8, wordcount/sp-12`.
fn problem_line(problem: &Problem) -> String {
    let label = match problem.kind {
        ProblemKind::Missing => "MISSING",
        ProblemKind::ReadFailed => "UNREADABLE",
        ProblemKind::SizeMismatch | ProblemKind::HashMismatch | ProblemKind::Undecodable => {
            "DAMAGED"
        }
    };
    // A hash mismatch's reason repeats the path and both hashes: JSON has it.
    let what = match problem.kind {
        ProblemKind::HashMismatch | ProblemKind::Missing => problem.kind.to_string(),
        _ => format!("{}: {}", problem.kind, problem.reason),
    };
    let mut affects: Vec<String> = problem.affects.iter().map(ToString::to_string).collect();
    if let Some(job) = &problem.affects_job {
        affects.push(format!(
            "job `{job}` (which of its snapshots are committed cannot be told)"
        ));
    }
    let affects = if affects.is_empty() {
        "affects no committed checkpoint".to_owned()
    } else {
        format!("affects {}", affects.join(", "))
    };
    format!("{label} {}: {what}; {affects}", problem.path)
}
