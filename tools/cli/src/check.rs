//! `rockpoint check`: every record and every object of a root, read and hashed.

use std::process::ExitCode;

use rockpoint::Store;

/// What `check` takes.
#[derive(clap::Args)]
pub struct CheckArgs {}

/// Checks the whole root.
pub async fn run(
    _store: &dyn Store,
    _args: &CheckArgs,
    _json: bool,
) -> rockpoint::Result<ExitCode> {
    Err(rockpoint::Error::new(
        rockpoint::ErrorKind::Unavailable,
        "check: not built yet",
    ))
}
