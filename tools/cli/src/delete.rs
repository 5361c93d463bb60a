//! `rockpoint delete` and `rockpoint prune`: removing checkpoints and savepoints an operator no
//! longer wants, refusing what a job or a reader still needs.

use std::process::ExitCode;

use rockpoint::Store;

/// What `delete` takes.
#[derive(clap::Args)]
pub struct DeleteArgs {}

/// What `prune` takes.
#[derive(clap::Args)]
pub struct PruneArgs {
    /// Delete. Without it, only report.
    #[arg(long)]
    pub confirm: bool,
}

/// Deletes one checkpoint or savepoint.
pub async fn delete(
    _store: &dyn Store,
    _args: &DeleteArgs,
    _json: bool,
) -> rockpoint::Result<ExitCode> {
    Err(rockpoint::Error::new(
        rockpoint::ErrorKind::Unavailable,
        "delete: not built yet",
    ))
}

/// Deletes what a policy does not keep.
pub async fn prune(
    _store: &dyn Store,
    _args: &PruneArgs,
    _json: bool,
) -> rockpoint::Result<ExitCode> {
    Err(rockpoint::Error::new(
        rockpoint::ErrorKind::Unavailable,
        "prune: not built yet",
    ))
}
