//! `rockpoint`: inspect and maintain a checkpoint root.
//!
//! Inspect commands print JSON with `--json`; `gc` is a dry run unless `--confirm`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rockpoint::admin::{RootStatus, RootView, inspect_root, mark_root, root_status};
use rockpoint::{
    GcOptions, KeyGroupRange, RestoreSource, RootOptions, Store, SweepMode, open_root,
};

#[macro_use]
mod output;
mod check;
mod delete;
mod inspect;
mod restore;
use output::{NOT_A_ROOT, bar, exit_code, fail};

/// Inspect and maintain a rockpoint checkpoint root.
#[derive(Parser)]
#[command(
    name = "rockpoint",
    version,
    after_help = "Exit codes: 0 success; 1 internal error; 2 invalid input (usage, a bad \
                  --key-groups); 3 not found; 4 corruption (also: verify or check found a damaged \
                  checkpoint or a missing object); 5 unavailable or busy (retry; also: check could \
                  not read some objects); 6 conflict or fenced (another writer \
                  won); 7 cancelled or poisoned; 8 not a rockpoint root (the location has no \
                  `rockpoint-root` marker and no job records; nothing was created or deleted); 9 refused (`delete`, `prune`: a job resumes from it or a reader holds it; nothing was deleted).\n\nLogs go to stderr: RUST_LOG overrides -v \
                  (info) and -vv (debug); warnings by default."
)]
struct Cli {
    /// The storage root: an existing local directory (or `file://` URL), `s3://BUCKET/PREFIX`, and
    /// with the matching build features `gs://BUCKET/PREFIX` or `az://CONTAINER/PREFIX`. Object
    /// stores read endpoint, region and credentials from the usual environment variables
    /// (AWS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP, ...).
    /// Every command but `completions` needs it.
    #[arg(long, env = "ROCKPOINT_ROOT", global = true)]
    root: Option<String>,
    /// An object store option over the environment, `KEY=VALUE` (e.g. `aws_endpoint=http://...`);
    /// repeatable.
    #[arg(long = "store-option", value_name = "KEY=VALUE", global = true)]
    store_options: Vec<String>,
    /// Accept an object store that ignores conditional writes. Safe only if no other process
    /// (coordinator or GC) ever writes to this root at the same time.
    #[arg(long, global = true)]
    single_writer: bool,
    /// Print JSON instead of text (errors too, on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// More log lines on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the checkpoints and savepoints of every job (or one job).
    List {
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
    },
    /// Show a checkpoint: when, how long, how big (new, full, exclusive), its backends and states
    /// (--json: the metadata record itself).
    Show {
        /// `<job>/<id>` (`<job>/sp-<id>` for a savepoint), `latest:<job>`, a metadata path or a
        /// checkpoint directory in the root, or its full location (a URL or an absolute path:
        /// `s3://bucket/root/jobs/wordcount/chk-<id>`), which names the root too.
        checkpoint: String,
    },
    /// Read every file a checkpoint references and check its size and BLAKE3 hash.
    Verify {
        /// `<job>/<id>` (`<job>/sp-<id>` for a savepoint), `latest:<job>`, a metadata path or a
        /// checkpoint directory in the root, or its full location (a URL or an absolute path:
        /// `s3://bucket/root/jobs/wordcount/chk-<id>`), which names the root too.
        checkpoint: String,
    },
    /// Restore backends of a checkpoint into new directories, all or nothing: every target is
    /// assembled and verified in a hidden temporary directory next to it and moved into place only
    /// once all are complete; on a failure or Ctrl-C (exit 130) nothing is left behind and the
    /// same command can be run again.
    ///
    /// With one --key-groups, TARGET is that backend's directory. Without --key-groups, every
    /// backend of the checkpoint is restored, each into TARGET/kg-START-END; with several, each
    /// range likewise. TARGET must not exist or be an empty directory, and its parent must exist
    /// (nothing is created otherwise); a TARGET created by a failed restore is removed again.
    Restore {
        /// `<job>/<id>` (`<job>/sp-<id>` for a savepoint), `latest:<job>`, a metadata path or a
        /// checkpoint directory in the root, or its full location (a URL or an absolute path:
        /// `s3://bucket/root/jobs/wordcount/chk-<id>`), which names the root too.
        checkpoint: String,
        /// A backend's key groups, `START..END` (end exclusive): any range the snapshot's
        /// backends cover together (a rescaling restore clips or merges them). Repeatable, for
        /// several backends (ranges must not overlap: e.g. `0..64` and `64..128` rescale into
        /// two); default: every backend the checkpoint has, as it has them.
        #[arg(long, value_name = "START..END")]
        key_groups: Vec<String>,
        /// The directory to create (see above).
        #[arg(long)]
        target: PathBuf,
    },
    /// Copy a checkpoint or savepoint with every file it references (metadata, private files,
    /// shared files and log segments, each verified against its BLAKE3 hash) into another root,
    /// where it becomes a savepoint; prints its reference there (`<job>/sp-<id>`). Shared files the
    /// target root already holds are not copied again.
    Export {
        /// `<job>/<id>` (`<job>/sp-<id>` for a savepoint), `latest:<job>`, a metadata path or a
        /// checkpoint directory in the root, or its full location (a URL or an absolute path:
        /// `s3://bucket/root/jobs/wordcount/chk-<id>`), which names the root too.
        checkpoint: String,
        /// The target root, as `--root` takes it (an existing local directory, `file://`,
        /// `s3://BUCKET/PREFIX`, ...): an existing root, or an empty location, which becomes a
        /// root (its `rockpoint-root` marker is written). Object stores read the same environment
        /// variables.
        #[arg(long, value_name = "ROOT-URL")]
        to: String,
        /// The job the savepoint belongs to in the target root (default: the source's job).
        #[arg(long)]
        job: Option<String>,
        /// An object store option for the target root, `KEY=VALUE`; repeatable (`--store-option`
        /// is for `--root`).
        #[arg(long = "to-store-option", value_name = "KEY=VALUE")]
        to_store_options: Vec<String>,
    },
    /// Keep a checkpoint as a savepoint of its job (or of `--job`) in the same root: user-owned,
    /// never discarded by retention, cancel or GC. Its files are shared, so nothing but its
    /// metadata and private files is copied; prints its reference (`<job>/sp-<id>`).
    Savepoint {
        /// `<job>/<id>`, `latest:<job>`, a metadata path or a checkpoint directory in the root, or
        /// its full location (a URL or an absolute path), which names the root too.
        checkpoint: String,
        /// The job the savepoint belongs to (default: the checkpoint's job).
        #[arg(long)]
        job: Option<String>,
    },
    /// Find (and with --confirm delete) unreferenced shared files, leftovers of failed checkpoints,
    /// dead pins and temporary files older than the grace period. Safe against live jobs at any
    /// grace period: files that in-flight checkpoints and restores use are pinned, and a job whose
    /// lease expired is fenced before its pins count as dead.
    Gc {
        /// Keep unreferenced objects younger than this many seconds (a margin, not a safety need).
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        /// Delete. Without it, only report.
        #[arg(long)]
        confirm: bool,
    },
    /// Checkpointed (new) and full size of every checkpoint, and the root's stored bytes.
    Du,
    /// Read every record and every object of the root, hash each object once, and report which
    /// checkpoints and savepoints a missing or damaged object affects (exit 4 if any).
    Check(check::CheckArgs),
    /// Delete a checkpoint or savepoint: its record leaves the job, its metadata and private files
    /// are deleted, and `gc` frees the shared files nothing else references. Refuses what a job
    /// recovers from or a reader (a restore, a job restored from it) still needs.
    Delete(delete::DeleteArgs),
    /// Delete checkpoints (and with --savepoints, savepoints) that a policy does not keep, through
    /// the same checks as `delete`; a dry run unless --confirm.
    Prune(delete::PruneArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The message of a location (`flag` `location`) that is not a root.
fn not_a_root(flag: &str, location: &str, status: &RootStatus) -> String {
    let found = match status {
        RootStatus::NotARoot { found } => {
            format!("; it holds other objects, e.g. {}", found.join(", "))
        }
        _ => String::new(),
    };
    format!(
        "{flag} `{location}` is not a rockpoint root: no `rockpoint-root` marker and no job \
         records; check the path (nothing was created or deleted){found}"
    )
}

/// Whether the local directory `dir` holds nothing at all (the root's lock file aside): an empty
/// location that an export may turn into a root. Temporary files and empty directories, which a
/// store listing does not show, count: a directory holding them is someone's.
fn local_dir_is_empty(dir: &std::path::Path) -> rockpoint::Result<bool> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        rockpoint::Error::with_source(
            rockpoint::ErrorKind::Unavailable,
            format!("listing `{}`", dir.display()),
            e,
        )
    })?;
    for entry in entries {
        let entry = entry.map_err(|e| {
            rockpoint::Error::with_source(
                rockpoint::ErrorKind::Unavailable,
                format!("listing `{}`", dir.display()),
                e,
            )
        })?;
        if entry.file_name() != ".rockpoint-cas.lock" {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The local directory `root` names (a path or a `file://` URL), if it names one.
fn local_dir(root: &str) -> Option<PathBuf> {
    match root.strip_prefix("file://") {
        Some(_) => url::Url::parse(root).ok()?.to_file_path().ok(),
        None if !root.contains("://") => Some(PathBuf::from(root)),
        None => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let json = cli.json;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            let mut message = e.to_string();
            // A damaged record stops reads of what it governs; say where to look next.
            if e.kind() == rockpoint::ErrorKind::Corruption && message.contains("job record") {
                message.push_str(
                    " (`rockpoint check` names every damaged record and what it affects; the \
                     job's checkpoints cannot be read as committed until its record is restored \
                     from a backup of the root)",
                );
            }
            fail(
                json,
                &format!("{:?}", e.kind()),
                &message,
                exit_code(e.kind()),
            )
        }
    }
}

/// Log lines (GC and cleanup warnings among them) on stderr: `RUST_LOG` if set, otherwise warnings,
/// `-v` for info, `-vv` for debug.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Opens `--root`. A local root must be an existing directory: a path that does not exist is
/// refused before anything is opened, so a typo never creates a directory nor lists as an empty
/// root. An object store root is probed before a command that writes (`restore` and `verify`, which
/// pin what they read, and `gc --confirm`); commands that only read open it read-only, without the
/// probe, so read-only credentials can list, show and size a root.
async fn open_store(cli: &Cli, root: &str, writes: bool) -> rockpoint::Result<Arc<dyn Store>> {
    open_url(
        root,
        "--root",
        &cli.store_options,
        cli.single_writer,
        writes,
    )
    .await
}

/// Opens the root `root` (named `flag` in errors) as [`open_store`] describes.
async fn open_url(
    root: &str,
    flag: &str,
    store_options: &[String],
    single_writer: bool,
    writes: bool,
) -> rockpoint::Result<Arc<dyn Store>> {
    let mut config = Vec::new();
    for option in store_options {
        let (key, value) = option.split_once('=').ok_or_else(|| {
            rockpoint::Error::new(
                rockpoint::ErrorKind::Invalid,
                format!("--store-option `{option}`: use KEY=VALUE"),
            )
        })?;
        config.push((key.trim().to_owned(), value.to_owned()));
    }
    let local = match root.strip_prefix("file://") {
        Some(_) => Some(
            url::Url::parse(root)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .ok_or_else(|| {
                    rockpoint::Error::new(
                        rockpoint::ErrorKind::Invalid,
                        format!("{flag} `{root}` is not a local file URL"),
                    )
                })?,
        ),
        None if !root.contains("://") => Some(PathBuf::from(root)),
        None => None,
    };
    if let Some(dir) = &local {
        existing_root(dir, flag)?;
    }
    let options = RootOptions {
        config,
        read_only: !writes,
        single_writer,
    };
    let url = match &local {
        Some(dir) => dir.to_string_lossy().into_owned(),
        None => root.to_owned(),
    };
    open_root(&url, &options).await
}

/// The local root directory, if it exists and is a directory.
fn existing_root<'a>(
    root: &'a std::path::Path,
    flag: &str,
) -> rockpoint::Result<&'a std::path::Path> {
    use rockpoint::{Error, ErrorKind};
    let text = root.to_string_lossy();
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(root),
        Ok(_) => Err(Error::new(
            ErrorKind::Invalid,
            format!("{flag} `{text}` is a file, not a checkpoint root directory"),
        )),
        Err(e) => Err(Error::with_source(
            ErrorKind::NotFound,
            format!("{flag} `{text}` does not exist (nothing was created; check the path)"),
            e,
        )),
    }
}

fn parse_range(text: &str) -> rockpoint::Result<KeyGroupRange> {
    let invalid = |why: String| {
        rockpoint::Error::new(
            rockpoint::ErrorKind::Invalid,
            format!("--key-groups `{text}`: {why}"),
        )
    };
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| invalid("use START..END (end exclusive)".to_owned()))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|e| invalid(format!("`{s}`: {e}")))
    };
    KeyGroupRange::new(parse(start)?, parse(end)?)
}

/// `<job>/sp-<id>` of a savepoint's metadata path (`jobs/<job>/sp-<id:020>/_metadata`), the short
/// reference the other commands take; the path itself if it is not one.
fn savepoint_reference(metadata_path: &str) -> String {
    let parts: Vec<&str> = metadata_path.split('/').collect();
    match parts.as_slice() {
        ["jobs", job, dir, "_metadata"] => match dir
            .strip_prefix("sp-")
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            Some(id) => format!("{job}/sp-{id}"),
            None => metadata_path.to_owned(),
        },
        _ => metadata_path.to_owned(),
    }
}

/// Refuses a local `location` strictly inside the local root `root` (`flag` names it): a restore
/// or an export there would write into the root's layout (`pins/`, `shared/`, …), where GC and
/// `check` meet it as damage. The root itself is fine for `--to` (an export into its own root).
fn refuse_inside_root(root: &str, location: &str, flag: &str) -> rockpoint::Result<()> {
    let (Some(root_dir), Some(dir)) = (local_dir(root), local_dir(location)) else {
        return Ok(());
    };
    // The location may not exist yet: resolve its nearest existing ancestor.
    let resolve = |path: &std::path::Path| -> PathBuf {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let mut existing = absolute.as_path();
        let mut rest = Vec::new();
        while !existing.exists() {
            match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => break,
            }
        }
        let mut resolved = existing
            .canonicalize()
            .unwrap_or_else(|_| existing.to_path_buf());
        for name in rest.into_iter().rev() {
            resolved.push(name);
        }
        resolved
    };
    let (root_dir, dir) = (resolve(&root_dir), resolve(&dir));
    if dir != root_dir && dir.starts_with(&root_dir) {
        return Err(rockpoint::Error::new(
            rockpoint::ErrorKind::Invalid,
            format!(
                "{flag} `{location}` lies inside the root `{root}`: choose a location outside it \
                 (the root's layout is the engine's; GC and `check` would meet it as damage)"
            ),
        ));
    }
    Ok(())
}

/// The references a command takes (checkpoints, savepoints).
fn references(command: &mut Command) -> Vec<&mut String> {
    match command {
        Command::Show { checkpoint }
        | Command::Verify { checkpoint }
        | Command::Restore { checkpoint, .. }
        | Command::Export { checkpoint, .. }
        | Command::Savepoint { checkpoint, .. } => vec![checkpoint],
        Command::Delete(args) => args.checkpoints.iter_mut().collect(),
        _ => Vec::new(),
    }
}

/// A reference given as a full location — a URL (`s3://bucket/root/jobs/wordcount/chk-…`,
/// `file:///data/root/jobs/…`) or an absolute local path — names its root too: the part before
/// `/jobs/<job>/<chk|sp>-<id>`. Rewrites such references to their path inside the root and returns
/// the root: `--root` if given (every location must then lie in it), else the one the locations
/// name (they must agree).
fn locate_root(cli: &mut Cli) -> rockpoint::Result<Option<String>> {
    let invalid = |message: String| rockpoint::Error::new(rockpoint::ErrorKind::Invalid, message);
    let mut root = cli.root.clone();
    for reference in references(&mut cli.command) {
        let located = reference.contains("://") || reference.starts_with('/');
        let Some(at) = reference.rfind("/jobs/").filter(|_| located) else {
            continue;
        };
        let (location_root, inside) = (reference[..at].to_owned(), reference[at + 1..].to_owned());
        match &root {
            Some(given) if same_root(given, &location_root) => {}
            Some(given) => {
                return Err(invalid(format!(
                    "`{reference}` is not in --root `{given}` (drop --root, or name the \
                     checkpoint inside it: <job>/<id>)"
                )));
            }
            None => root = Some(location_root),
        }
        *reference = inside;
    }
    Ok(root)
}

/// Whether two spellings name the same root (trailing slashes, a `file://` URL for a path).
fn same_root(a: &str, b: &str) -> bool {
    let norm = |text: &str| -> String {
        let text = text.trim_end_matches('/');
        match local_dir(text) {
            Some(dir) => std::path::absolute(&dir)
                .unwrap_or(dir)
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned(),
            None => text.to_owned(),
        }
    };
    norm(a) == norm(b)
}

/// Records `inspect_root` could not read: named on stderr, the rest of the root listed anyway.
pub(crate) fn warn_unreadable(view: &RootView, json: bool) {
    for record in &view.unreadable {
        if json {
            eprintln!(
                "{}",
                serde_json::json!({ "warning": { "skipped": record } })
            );
        } else {
            eprintln!("warning: skipping {record}");
        }
    }
}

async fn run(cli: Cli) -> rockpoint::Result<ExitCode> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        let mut command = Cli::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "rockpoint", &mut script);
        out!("{}", String::from_utf8_lossy(&script).trim_end());
        return Ok(ExitCode::SUCCESS);
    }
    let mut cli = cli;
    let root = locate_root(&mut cli)?;
    let Some(root) = root else {
        return Err(rockpoint::Error::new(
            rockpoint::ErrorKind::Invalid,
            "--root (or ROCKPOINT_ROOT) is required: the checkpoint root to work on (or name the \
             checkpoint by its full path or URL, e.g. s3://bucket/root/jobs/wordcount/chk-8)",
        ));
    };
    let writes = match &cli.command {
        // Restore, verify and export write a reader pin (GC keeps what they read).
        Command::Restore { .. }
        | Command::Verify { .. }
        | Command::Export { .. }
        | Command::Savepoint { .. } => true,
        Command::Gc { confirm, .. } => *confirm,
        Command::Delete(_) => true,
        Command::Prune(args) => args.confirm,
        Command::List { .. } | Command::Show { .. } | Command::Du | Command::Check(_) => false,
        Command::Completions { .. } => unreachable!("handled above"),
    };
    let json = cli.json;
    // Every command first checks that --root is a root, on a read-only open (which creates
    // nothing and sends no probe); a command that writes then opens it again for writing.
    let store = open_store(&cli, &root, false).await?;
    let status = root_status(&*store).await?;
    if !status.is_root() {
        let message = not_a_root("--root", &root, &status);
        return Ok(fail(json, "NotARoot", &message, NOT_A_ROOT));
    }
    let store = if writes {
        open_store(&cli, &root, true).await?
    } else {
        store
    };
    match cli.command {
        Command::List { job } => {
            let view = inspect_root(&*store, job.as_deref()).await?;
            warn_unreadable(&view, json);
            inspect::known_job(&view, job.as_deref())?;
            inspect::list(&view, json);
        }
        Command::Show { checkpoint } => {
            let (path, metadata) =
                rockpoint::restore::read_metadata(&*store, &RestoreSource::parse(&checkpoint)?)
                    .await?;
            // The exclusive size needs the whole root; a root that cannot be read whole still
            // shows the checkpoint.
            let exclusive = match inspect_root(&*store, None).await {
                Ok(view) => view
                    .checkpoints()
                    .find(|c| c.path == path)
                    .map(|c| c.exclusive_bytes),
                Err(_) => None,
            };
            inspect::show(&metadata, exclusive, json);
        }
        Command::Verify { checkpoint } => {
            // Resolved once: the bar's total and the check are of the same checkpoint.
            let (path, metadata) =
                rockpoint::restore::read_metadata(&*store, &RestoreSource::parse(&checkpoint)?)
                    .await?;
            let progress = bar(restore::distinct_bytes(&metadata), "verifying");
            let callback = {
                let progress = progress.clone();
                Arc::new(move |n: u64| progress.inc(n)) as rockpoint::Progress
            };
            let report = rockpoint::restore::verify_checkpoint_with_progress(
                &*store,
                &RestoreSource::Metadata(path),
                8,
                Some(callback),
            )
            .await;
            progress.finish_and_clear();
            let report = report?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                out!(
                    "{}: {} objects, {} checked",
                    report.path,
                    report.objects,
                    output::human(report.bytes)
                );
                for problem in &report.problems {
                    out!("PROBLEM: {problem}");
                }
                if report.problems.is_empty() {
                    out!("OK: every file matches its hash");
                }
            }
            if !report.problems.is_empty() {
                return Ok(ExitCode::from(exit_code(rockpoint::ErrorKind::Corruption)));
            }
        }
        Command::Restore {
            checkpoint,
            key_groups,
            target,
        } => {
            refuse_inside_root(&root, &target.to_string_lossy(), "--target")?;
            return restore::run(&*store, &checkpoint, &key_groups, &target, json).await;
        }
        Command::Export {
            checkpoint,
            to,
            job,
            to_store_options,
        } => {
            refuse_inside_root(&root, &to, "--to")?;
            let source = RestoreSource::parse(&checkpoint)?;
            let (source_path, metadata) =
                rockpoint::restore::read_metadata(&*store, &source).await?;
            // The target: an existing root, or an empty location that becomes one.
            let probe = open_url(&to, "--to", &to_store_options, cli.single_writer, false).await?;
            let status = root_status(&*probe).await?;
            let empty = match (&status, local_dir(&to)) {
                (RootStatus::Empty, Some(dir)) => local_dir_is_empty(&dir)?,
                (RootStatus::Empty, None) => true,
                _ => false,
            };
            if !status.is_root() && !empty {
                let message = format!(
                    "{}; an export needs an existing root or an empty location",
                    not_a_root("--to", &to, &status)
                );
                return Ok(fail(json, "NotARoot", &message, NOT_A_ROOT));
            }
            let target = open_url(&to, "--to", &to_store_options, cli.single_writer, true).await?;
            mark_root(&*target).await?;
            // Each shared object once (as the export copies it), plus the private files.
            let mut distinct = std::collections::HashMap::new();
            let mut private_bytes = 0;
            for handle in &metadata.backends {
                for file in &handle.shared_files {
                    distinct.insert(file.hash, file.size);
                }
                for segment in handle.log_files.iter().flat_map(|l| &l.segments) {
                    distinct.insert(segment.hash, segment.size);
                }
                private_bytes += handle.private_files.iter().map(|f| f.size).sum::<u64>();
            }
            let progress = bar(distinct.values().sum::<u64>() + private_bytes, "exporting");
            let callback = {
                let progress = progress.clone();
                Arc::new(move |n: u64| progress.inc(n)) as rockpoint::Progress
            };
            let report = rockpoint::export_snapshot(
                &*store,
                &source,
                &*target,
                job.as_deref(),
                8,
                Some(callback),
            )
            .await?;
            progress.finish_and_clear();
            let reference = savepoint_reference(&report.metadata_path);
            if json {
                let value = serde_json::json!({
                    "source": source_path,
                    "target_root": target.describe(),
                    "savepoint": reference,
                    "metadata_path": report.metadata_path,
                    "objects_copied": report.objects_copied,
                    "bytes_copied": report.bytes_copied,
                    "objects_present": report.objects_present,
                });
                out!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serializable")
                );
            } else {
                out!(
                    "exported {source_path} to {} as savepoint {reference} ({})",
                    target.describe(),
                    report.metadata_path
                );
                out!(
                    "{} objects copied ({} bytes, verified), {} already present",
                    report.objects_copied,
                    report.bytes_copied,
                    report.objects_present
                );
            }
        }
        Command::Savepoint { checkpoint, job } => {
            let source = RestoreSource::parse(&checkpoint)?;
            let report =
                rockpoint::export_snapshot(&*store, &source, &*store, job.as_deref(), 8, None)
                    .await?;
            let reference = savepoint_reference(&report.metadata_path);
            if json {
                let value = serde_json::json!({
                    "savepoint": reference,
                    "metadata_path": report.metadata_path,
                    "objects_copied": report.objects_copied,
                    "bytes_copied": report.bytes_copied,
                });
                out!(
                    "{}",
                    serde_json::to_string_pretty(&value).expect("serializable")
                );
            } else {
                out!(
                    "kept {checkpoint} as savepoint {reference} ({}; {} bytes copied, the rest shared)",
                    report.metadata_path,
                    report.bytes_copied
                );
            }
        }
        Command::Gc {
            grace_secs,
            confirm,
        } => {
            let options = GcOptions {
                grace_period: Duration::from_secs(grace_secs),
                mode: if confirm {
                    SweepMode::Delete
                } else {
                    SweepMode::DryRun
                },
                ..GcOptions::default()
            };
            let report = rockpoint::collect_garbage(&*store, &options).await?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serializable")
                );
            } else {
                let verb = if confirm {
                    "deleted"
                } else {
                    "would delete (dry run; --confirm deletes)"
                };
                out!(
                    "{} metadata records reference {} shared files",
                    report.metadata_records,
                    report.referenced_shared_files
                );
                out!(
                    "{verb}: {} shared files, {} records of incomplete checkpoints, {} dead pins, {} temporary files; {}",
                    report.shared_files.len(),
                    report.private_files.len(),
                    report.pins.len(),
                    report.incomplete.len(),
                    output::human(report.reclaimed_bytes)
                );
                let fenced = if confirm { "fenced" } else { "would fence" };
                for job in &report.fenced_jobs {
                    out!("{fenced} job `{job}`: its coordinator's lease had expired");
                }
                for record in &report.unreadable {
                    out!("UNREADABLE (no shared file deleted while it is): {record}");
                }
                out!("{} store requests", report.requests);
            }
            if !report.unreadable.is_empty() {
                // A cron job must not stay green while nothing can be collected.
                let message = format!(
                    "{} records could not be read, so no shared file was deleted in this pass; \
                     `rockpoint check` names them and what they affect",
                    report.unreadable.len()
                );
                return Ok(fail(
                    json,
                    "Corruption",
                    &message,
                    exit_code(rockpoint::ErrorKind::Corruption),
                ));
            }
        }
        Command::Check(args) => return check::run(&*store, &args, json).await,
        Command::Delete(args) => return delete::delete(&*store, &args, json).await,
        Command::Prune(args) => return delete::prune(&*store, &args, json).await,
        Command::Completions { .. } => unreachable!("handled above"),
        Command::Du => {
            let view = inspect_root(&*store, None).await?;
            warn_unreadable(&view, json);
            inspect::du(&view, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}
