//! Errors in two tiers: a detailed internal enum that names files, states, checkpoints and hashes, and
//! a public [`Error`] whose [`ErrorKind`] tells the caller what to do (fix the input, retry, never
//! retry blindly, reopen). Every fallible public function returns [`Result`].

use std::fmt;
use std::path::PathBuf;

/// What the caller should do about an [`Error`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is wrong (a path, a setting, a state re-registered with another type tag, a key
    /// group outside the backend's range). Fix the input; retrying the same call fails again.
    Invalid,
    /// The named thing (checkpoint, job, file, state) does not exist.
    NotFound,
    /// Stored bytes are not what was written: a hash mismatch, a truncated or undecodable file, a
    /// corrupt metadata file. Never retry blindly; restore from another checkpoint.
    Corruption,
    /// A transient I/O or storage failure. The operation may be retried.
    Unavailable,
    /// The operation was cancelled or aborted (a checkpoint aborted by cancel or subsumption).
    Cancelled,
    /// A durability error (a failed fsync) poisoned the engine. Nothing more is written; drop it and
    /// reopen, then recover from the last complete checkpoint.
    Poisoned,
    /// Someone else got there first (an object that must be created exactly once already exists,
    /// or a compare-and-swap found another version).
    Conflict,
    /// Another coordinator of the same job took over (a newer epoch), or GC fenced this one after its
    /// lease expired. Nothing more is committed or deleted by this coordinator: drop it; the job's
    /// live coordinator (or a reopen) carries on from the store.
    Fenced,
    /// Too much is in flight (more concurrent checkpoints than the settings allow). Retry later.
    Busy,
    /// A bug inside the engine: a background task panicked, or an invariant did not hold. Not the
    /// caller's fault and not transient; please report it with the message.
    Internal,
}

/// The public error: a kind plus a message naming what went wrong.
pub struct Error {
    detail: Box<ErrorDetail>,
}

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The detailed, internal error. Messages name the file, state, checkpoint and hashes involved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ErrorDetail {
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error(
        "state `{state}` is registered as {registered}, but was requested as {requested}; \
         states keep their kind and type tags for the life of the directory"
    )]
    StateIncompatible {
        state: String,
        registered: String,
        requested: String,
    },
    #[error(
        "state `{state}` in {place} was registered by an older rockpoint that identified types by \
         Rust type names ({recorded}), which are not stable across compiler versions; this rockpoint \
         identifies them by type tags (`StateType`) and cannot tell which tags those names stand \
         for; use the rockpoint version that wrote it"
    )]
    StateOfRustTypeNames {
        state: String,
        recorded: String,
        place: String,
    },
    #[error("cannot encode {what} of state `{state}`: {source}")]
    Encode {
        state: String,
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
    #[error("corrupt {what} in state `{state}`: {reason}")]
    Decode {
        state: String,
        what: &'static str,
        reason: String,
    },
    #[error("corruption: {0}")]
    Corruption(String),
    #[error(
        "file `{file}` is corrupt: expected blake3 {expected} and {expected_size} bytes, found {actual} and {actual_size} bytes"
    )]
    HashMismatch {
        file: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("RocksDB error while {context}: {source}")]
    RocksDb {
        context: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("I/O error while {context} `{}`: {source}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage error while {context} `{path}`: {source}")]
    Store {
        context: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error(
        "engine poisoned by an earlier durability failure ({0}); reopen and recover from the last complete checkpoint"
    )]
    Poisoned(String),
    #[error("cancelled: {0}")]
    Cancelled(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("internal error (a bug; please report it): {0}")]
    Internal(String),
    /// An error made by code outside the crate (a user's [`Store`](crate::Store)), with its kind.
    #[error("{message}")]
    External {
        kind: ErrorKind,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl Error {
    /// What the caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match &*self.detail {
            ErrorDetail::Invalid(_)
            | ErrorDetail::StateIncompatible { .. }
            | ErrorDetail::StateOfRustTypeNames { .. } => ErrorKind::Invalid,
            ErrorDetail::Encode { .. } => ErrorKind::Invalid,
            ErrorDetail::NotFound(_) => ErrorKind::NotFound,
            ErrorDetail::Decode { .. }
            | ErrorDetail::Corruption(_)
            | ErrorDetail::HashMismatch { .. } => ErrorKind::Corruption,
            ErrorDetail::RocksDb { source, .. } => match source.kind() {
                rocksdb::ErrorKind::Corruption => ErrorKind::Corruption,
                rocksdb::ErrorKind::NotFound => ErrorKind::NotFound,
                rocksdb::ErrorKind::InvalidArgument | rocksdb::ErrorKind::NotSupported => {
                    ErrorKind::Invalid
                }
                _ => ErrorKind::Unavailable,
            },
            ErrorDetail::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::Conflict,
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidFilename => {
                    ErrorKind::Invalid
                }
                _ => ErrorKind::Unavailable,
            },
            ErrorDetail::Store { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. } => ErrorKind::Conflict,
                object_store::Error::InvalidPath { .. }
                | object_store::Error::NotImplemented { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => ErrorKind::Invalid,
                _ => ErrorKind::Unavailable,
            },
            ErrorDetail::Poisoned(_) => ErrorKind::Poisoned,
            ErrorDetail::Cancelled(_) => ErrorKind::Cancelled,
            ErrorDetail::Conflict(_) => ErrorKind::Conflict,
            ErrorDetail::Fenced(_) => ErrorKind::Fenced,
            ErrorDetail::Busy(_) => ErrorKind::Busy,
            ErrorDetail::Internal(_) => ErrorKind::Internal,
            ErrorDetail::External { kind, .. } => *kind,
        }
    }

    /// An error of `kind` with a message, for code outside the crate (a [`Store`](crate::Store)
    /// implementation reporting, say, [`ErrorKind::Corruption`]).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorDetail::External {
            kind,
            message: message.into(),
            source: None,
        }
        .into()
    }

    /// Like [`Error::new`], keeping the underlying error as the [`source`](std::error::Error::source).
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        ErrorDetail::External {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
        .into()
    }

    pub(crate) fn busy(msg: impl Into<String>) -> Self {
        ErrorDetail::Busy(msg.into()).into()
    }

    pub(crate) fn internal(msg: impl Into<String>) -> Self {
        ErrorDetail::Internal(msg.into()).into()
    }

    /// A background task of `what` that did not finish: `Internal` if it panicked, `Cancelled` if
    /// the runtime shut down under it.
    pub(crate) fn task(what: &str, e: tokio::task::JoinError) -> Self {
        if e.is_cancelled() {
            Error::cancelled(format!("{what}: the runtime shut down"))
        } else {
            Error::internal(format!("{what} panicked: {e}"))
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ErrorDetail::Invalid(msg.into()).into()
    }

    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        ErrorDetail::NotFound(msg.into()).into()
    }

    pub(crate) fn corruption(msg: impl Into<String>) -> Self {
        ErrorDetail::Corruption(msg.into()).into()
    }

    pub(crate) fn cancelled(msg: impl Into<String>) -> Self {
        ErrorDetail::Cancelled(msg.into()).into()
    }

    pub(crate) fn conflict(msg: impl Into<String>) -> Self {
        ErrorDetail::Conflict(msg.into()).into()
    }

    pub(crate) fn fenced(msg: impl Into<String>) -> Self {
        ErrorDetail::Fenced(msg.into()).into()
    }

    pub(crate) fn poisoned(msg: impl Into<String>) -> Self {
        ErrorDetail::Poisoned(msg.into()).into()
    }

    /// An error injected by a fault point (tests only).
    #[allow(dead_code)]
    pub(crate) fn injected(point: &str, arg: Option<String>) -> Self {
        let what = arg.unwrap_or_else(|| "error".to_owned());
        if what == "nospace" {
            return ErrorDetail::Io {
                context: "writing (injected at a fault point)",
                path: point.into(),
                source: std::io::Error::from(std::io::ErrorKind::StorageFull),
            }
            .into();
        }
        ErrorDetail::Io {
            context: "injected fault",
            path: point.into(),
            source: std::io::Error::other(what),
        }
        .into()
    }

    pub(crate) fn rocksdb(context: impl Into<String>, source: rocksdb::Error) -> Self {
        ErrorDetail::RocksDb {
            context: context.into(),
            source,
        }
        .into()
    }

    pub(crate) fn io(
        context: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ErrorDetail::Io {
            context,
            path: path.into(),
            source,
        }
        .into()
    }

    pub(crate) fn store(
        context: &'static str,
        path: impl fmt::Display,
        source: object_store::Error,
    ) -> Self {
        ErrorDetail::Store {
            context,
            path: path.to_string(),
            source,
        }
        .into()
    }
}

/// For [`Store`](crate::Store) implementations outside this crate: an I/O failure is `NotFound`,
/// `Conflict` (already exists), `Invalid` or `Unavailable` by its `std::io::ErrorKind`.
impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        ErrorDetail::Io {
            context: "a storage operation on",
            path: "<store>".into(),
            source,
        }
        .into()
    }
}

/// For [`Store`](crate::Store) implementations outside this crate.
impl From<object_store::Error> for Error {
    fn from(source: object_store::Error) -> Self {
        Error::store("a storage operation on", "<store>", source)
    }
}

impl From<ErrorDetail> for Error {
    fn from(detail: ErrorDetail) -> Self {
        Error {
            detail: Box::new(detail),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.detail, f)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind(), self.detail)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_made_outside_the_crate_keep_their_kind_message_and_source() {
        let plain = Error::new(ErrorKind::Corruption, "object `x` is short");
        assert_eq!(plain.kind(), ErrorKind::Corruption);
        assert_eq!(plain.to_string(), "object `x` is short");
        assert!(std::error::Error::source(&plain).is_none());

        let io = std::io::Error::other("disk on fire");
        let wrapped = Error::with_source(ErrorKind::Unavailable, "reading `y`", io);
        assert_eq!(wrapped.kind(), ErrorKind::Unavailable);
        let source = std::error::Error::source(&wrapped).expect("a source");
        assert_eq!(source.to_string(), "disk on fire");
    }

    #[tokio::test]
    async fn a_panicked_task_is_internal_not_invalid() {
        let joined = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let e = Error::task("hashing task", joined);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.to_string().contains("hashing task panicked"), "{e}");
    }
}
