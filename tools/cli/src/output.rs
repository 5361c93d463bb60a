//! What every command prints: lines on stdout that end quietly when the reader went away, errors
//! (JSON with `--json`), exit codes, progress bars and human sizes.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

/// Prints a line on stdout. A reader that went away (`rockpoint list | head -1`) ends the command
/// quietly with success instead of a panic, as `head` expects of a producer.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::emit(&format!($($arg)*))
    };
}

pub fn emit(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// The exit code of a failure, by what the caller should do about it (see `--help`).
pub fn exit_code(kind: rockpoint::ErrorKind) -> u8 {
    use rockpoint::ErrorKind::*;
    match kind {
        Invalid => 2,
        NotFound => 3,
        Corruption => 4,
        Unavailable | Busy => 5,
        Conflict | Fenced => 6,
        Cancelled | Poisoned => 7,
        _ => 1,
    }
}

/// The exit code of a location that is not a rockpoint root (see `--help`).
pub const NOT_A_ROOT: u8 = 8;

/// Prints the error `message` as `main` prints errors, for a failure with its own exit code.
/// A stderr that cannot be written (`2>/dev/full`) loses the message, never the exit code.
pub fn fail(json: bool, kind: &str, message: &str, code: u8) -> ExitCode {
    use std::io::Write;
    let line = if json {
        serde_json::json!({ "error": { "kind": kind, "message": message } }).to_string()
    } else {
        format!("error: {message}")
    };
    let _ = writeln!(std::io::stderr(), "{line}");
    ExitCode::from(code)
}

/// A progress bar over `total` bytes on stderr (hidden when stderr is not a terminal).
pub fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// `bytes` for a human: `1.72 GiB`, `58.93 KiB`, `512 B`.
pub fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// The exit code of a deletion refused because something still needs it (see `--help`).
pub const REFUSED: u8 = 9;
