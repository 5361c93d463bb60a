//! The storage seam: every byte the engine persists goes through [`Store`]. This module is public
//! for implementations of `Store` outside the crate: it holds the trait and its vocabulary.
//!
//! Two implementations: [`LocalStore`] (the default; a directory, with every write published by the
//! durability recipes of `fs`) and [`ObjectStoreStore`] (any `object_store` backend: S3, GCS, Azure,
//! memory). The engine uses nothing local-only, so moving a root to S3 is configuration. Tests wrap
//! a store to inject crashes, errors, ambiguous outcomes and bit flips.
//!
//! Contract, which both implementations honour and the engine relies on:
//! * a successful `put`/`put_file` is durable; an object is never visible partially written;
//! * `put` with [`WriteMode::CreateOnly`] fails with [`ErrorKind::Conflict`](crate::ErrorKind)
//!   if the object exists (commit records are created exactly once);
//! * `put_file` checks the streamed bytes against the expected content hash and publishes nothing
//!   on a mismatch (a file that changed after it was hashed never lands under the wrong name);
//! * a successful `delete` is durable; deleting a missing object succeeds;
//! * `list` is strongly consistent with completed writes and deletes.

mod local;
mod object;
mod open;

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::hash::ContentHash;
use crate::hash::Verifier;
pub(crate) use crate::layout::validate_object_path;

pub use local::LocalStore;
pub use object::ObjectStoreStore;
pub use open::{RootOptions, open_root};

/// How `put` treats an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Fail with `Conflict` if the object exists.
    CreateOnly,
    /// Replace any existing object (only for content-addressed objects, whose bytes never differ).
    Replace,
}

/// What a listing or `head` reports about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Path relative to the store root, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time (used for GC grace periods).
    pub modified: SystemTime,
}

/// The version of an object, for compare-and-swap ([`Store::put_if`]): an entity tag for object
/// stores, the content hash for the local store. Opaque: compare, never parse.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectVersion(pub String);

/// Whether a sweep only reports or also deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepMode {
    /// Report what would be removed; change nothing.
    DryRun,
    /// Remove it.
    Delete,
}

/// A store of immutable objects under one root. See the module docs for the contract.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Durably stores `data` at `path`.
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> Result<()>;

    /// Durably stores `len` bytes of the local file `file` starting at `offset` at `path`, streaming
    /// them (never the whole file in memory), replacing any existing object. Fails with
    /// `Corruption` and publishes nothing if the bytes do not hash to `expected`.
    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> Result<()>;

    /// The whole object (for small objects: metadata, pins).
    async fn get(&self, path: &str) -> Result<Bytes>;

    /// A small object with its version, or `None` if it does not exist (job records).
    async fn get_versioned(&self, path: &str) -> Result<Option<(Bytes, ObjectVersion)>>;

    /// Compare-and-swap: durably stores `data` at `path` only if the object is still at `expected`
    /// (`None`: only if it does not exist), and returns the new version. Fails with
    /// [`ErrorKind::Conflict`](crate::ErrorKind) and changes nothing otherwise. Job records are
    /// written only this way, which is what fences a stale coordinator (G7).
    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion>;

    /// The object as a stream of chunks, with its size.
    async fn get_stream(&self, path: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)>;

    /// The object's size and age, or `None` if it does not exist.
    async fn head(&self, path: &str) -> Result<Option<ObjectInfo>>;

    /// Durably deletes the object; a missing object is not an error.
    async fn delete(&self, path: &str) -> Result<()>;

    /// Every object whose path starts with `prefix` (a directory prefix ending in `/`, or empty).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Leftovers of interrupted writes (temporary files, unfinished uploads) older than `older_than`:
    /// reported, and removed with [`SweepMode::Delete`]. Returns their descriptions.
    async fn sweep_incomplete(&self, older_than: Duration, mode: SweepMode) -> Result<Vec<String>>;

    /// A human-readable description of the root (for messages).
    fn describe(&self) -> String;

    /// Reads `len` bytes of `file` from `offset` once, hashing them, and keeps them ready to be
    /// published under their content hash. A store that can rename cheaply (the local store) copies
    /// them into a temporary object on the way, so a new file is read, hashed and written in one
    /// pass; the default only hashes, and publishing uploads the bytes. A staged object that is
    /// neither published nor discarded is a temporary file that GC sweeps.
    async fn stage_file(&self, file: &Path, offset: u64, len: u64) -> Result<Staged> {
        let source = file.to_path_buf();
        let (hash, size) =
            tokio::task::spawn_blocking(move || crate::hash::hash_file(&source, offset, Some(len)))
                .await
                .map_err(|e| Error::task("hashing task", e))??;
        Ok(Staged {
            hash,
            size,
            kind: StagedKind::Source {
                file: file.to_path_buf(),
                offset,
            },
        })
    }

    /// Publishes a staged object at `path` (its content address). Replaces nothing that differs:
    /// an existing object at a content address holds the same bytes.
    async fn publish_staged(&self, staged: Staged, path: &str) -> Result<()> {
        match staged.kind {
            StagedKind::Source { file, offset } => {
                self.put_file(path, &file, offset, staged.size, staged.hash)
                    .await
            }
            StagedKind::Temporary(temp) => Err(Error::invalid(format!(
                "store {} cannot publish the temporary object {}",
                self.describe(),
                temp.display()
            ))),
        }
    }

    /// Appends the object at `path` to the local file `target` (created if missing), checking on the
    /// way that it has `size` bytes hashing to `expected`; `label` names it in errors. On a mismatch
    /// the error is `Corruption` and `target` may hold partial bytes (the caller discards it).
    /// The default streams through [`get_stream`](Store::get_stream); the local store copies on a
    /// blocking thread.
    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> Result<()> {
        append_streamed(self, path, expected, size, target, label).await
    }

    /// Drops a staged object that will not be published.
    async fn discard_staged(&self, staged: Staged) -> Result<()> {
        let _ = staged;
        Ok(())
    }
}

/// The default [`Store::append_verified`]: one stream through [`Store::get_stream`].
pub(crate) async fn append_streamed<S: Store + ?Sized>(
    store: &S,
    path: &str,
    expected: ContentHash,
    size: u64,
    target: &Path,
    label: &str,
) -> Result<()> {
    let (found, chunks) = store
        .get_stream(path)
        .await
        .map_err(|e| missing_as_corruption(e, path, label))?;
    let check = Verifier::new(format!("{path} ({label})"), expected, size);
    check.size_is(found)?;
    append_checked(chunks, check, target).await
}

/// Appends `chunks` to the local file `target` (created if missing), checking every byte with
/// `check` on the way; `Corruption` on a mismatch (`target` may then hold partial bytes).
pub(crate) async fn append_checked(
    mut chunks: impl futures::Stream<Item = Result<Bytes>> + Unpin,
    mut check: Verifier,
    target: &Path,
) -> Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(target)
        .await
        .map_err(|e| Error::io("opening", target, e))?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        check.update(&chunk)?;
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::io("writing", target, e))?;
    }
    file.flush()
        .await
        .map_err(|e| Error::io("writing", target, e))?;
    check.finish()
}

/// The address of a store object: the same for every reference to (or `Arc` clone of) one store,
/// so "uploaded to the coordinator's own store" can be told without asking the store.
pub(crate) fn address(store: &dyn Store) -> usize {
    store as *const dyn Store as *const () as usize
}

/// A missing object that a checkpoint references means the checkpoint is damaged.
/// Opens the local file `file` for an upload of its bytes from `offset` on.
pub(crate) fn open_for_upload(file: &Path, offset: u64) -> Result<std::fs::File> {
    use std::io::{Seek, SeekFrom};
    let mut input =
        std::fs::File::open(file).map_err(|e| Error::io("opening for upload", file, e))?;
    input
        .seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io("seeking for upload", file, e))?;
    Ok(input)
}

pub(crate) fn missing_as_corruption(e: Error, path: &str, label: &str) -> Error {
    if e.kind() == crate::ErrorKind::NotFound {
        Error::corruption(format!(
            "`{path}` ({label} in the checkpoint) is missing from the store"
        ))
    } else {
        e
    }
}

/// Bytes read and hashed once by [`Store::stage_file`], ready to publish under their hash.
#[derive(Debug)]
pub struct Staged {
    /// BLAKE3 of the staged bytes.
    pub hash: ContentHash,
    /// Number of staged bytes.
    pub size: u64,
    pub(crate) kind: StagedKind,
}

#[derive(Debug)]
pub(crate) enum StagedKind {
    /// Only hashed: publishing reads the source again.
    Source {
        file: std::path::PathBuf,
        offset: u64,
    },
    /// Copied into a temporary file of the store: publishing links it into place.
    Temporary(std::path::PathBuf),
}

/// The largest object the engine reads whole into memory (metadata and pins).
pub(crate) const SMALL_OBJECT_LIMIT_BYTES: u64 = 256 << 20;
