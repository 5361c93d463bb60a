//! The default store: a directory on a local filesystem.
//!
//! Every write is published with the durability recipes of `fs` (temporary file → fsync →
//! hard-link or rename → fsync directory), so an object that exists is complete and durable; every
//! delete is followed by a directory fsync, so a deleted commit record stays deleted after a crash.
//! A failed fsync poisons the store (G6): every later call fails with `Poisoned`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use super::{
    ContentHash, ObjectInfo, ObjectVersion, SMALL_OBJECT_LIMIT_BYTES, Staged, StagedKind, Store,
    SweepMode, WriteMode, missing_as_corruption, validate_object_path,
};
use crate::error::{Error, Result};
use crate::fs::{self, DurableError, Fs, FsEntry, Publish, StdFs};
use crate::hash::{self, Verifier, copy_hashing};
use crate::layout;

const CHUNK_BYTES: usize = 1 << 20;
/// The lock file of compare-and-swaps: housekeeping of this store, never listed as an object.
const CAS_LOCK_NAME: &str = ".rockpoint-cas.lock";

/// A store rooted at a local directory.
#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    fs: Arc<dyn Fs>,
    poison: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("root", &self.root)
            .finish()
    }
}

impl LocalStore {
    /// A store rooted at `root` (created if missing) on the real filesystem.
    pub fn new(root: impl AsRef<Path>) -> Result<Self> {
        LocalStore::with_fs(root, Arc::new(StdFs))
    }

    /// A store rooted at `root` performing its filesystem operations through `fs` (the testing seam).
    pub fn with_fs(root: impl AsRef<Path>, fs: Arc<dyn Fs>) -> Result<Self> {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("resolving the current directory for", root, e))?
                .join(root)
        };
        let store = LocalStore {
            root,
            fs,
            poison: Arc::new(Mutex::new(None)),
        };
        fs::create_dir_all_durable(&*store.fs, &store.root).map_err(|e| store.durable_error(e))?;
        Ok(store)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Serialises compare-and-swaps on this root across threads and processes: an exclusive
    /// `flock` on `<root>/.rockpoint-cas.lock` (flock locks are per open file, so two stores on one
    /// root in one process exclude each other too). A root that is not on the real filesystem
    /// (the simulated one of the tests) falls back to a lock shared by this process.
    fn cas_lock(&self) -> Result<CasGuard> {
        let lock_path = self.root.join(CAS_LOCK_NAME);
        match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(file) => {
                file.lock()
                    .map_err(|e| Error::io("locking", &lock_path, e))?;
                Ok(CasGuard::File(file))
            }
            Err(_) => {
                static PROCESS_LOCK: Mutex<()> = Mutex::new(());
                Ok(CasGuard::Process(
                    PROCESS_LOCK.lock().unwrap_or_else(|p| p.into_inner()),
                ))
            }
        }
    }

    fn read_small(&self, target: &Path) -> Result<Option<Vec<u8>>> {
        let meta = match self.fs.metadata(target) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading", target, e)),
        };
        if meta.len > SMALL_OBJECT_LIMIT_BYTES {
            return Err(Error::corruption(format!(
                "`{}` is {} bytes, more than the {} bytes a metadata object may have",
                target.display(),
                meta.len,
                SMALL_OBJECT_LIMIT_BYTES
            )));
        }
        let mut data = Vec::with_capacity(meta.len as usize);
        match self
            .fs
            .open(target)
            .and_then(|mut f| f.read_to_end(&mut data))
        {
            Ok(_) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", target, e)),
        }
    }
}

/// Held while a compare-and-swap runs; see [`LocalStore::cas_lock`].
enum CasGuard {
    File(std::fs::File),
    Process(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>),
}

impl Drop for CasGuard {
    fn drop(&mut self) {
        if let CasGuard::File(file) = self {
            let _ = file.unlock();
        }
    }
}

/// The local store's version of an object: the BLAKE3 of its bytes.
fn content_version(bytes: &[u8]) -> ObjectVersion {
    ObjectVersion(ContentHash::of(bytes).to_hex())
}

impl LocalStore {
    fn check_poison(&self) -> Result<()> {
        match &*self.poison.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(Error::poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    fn durable_error(&self, error: DurableError) -> Error {
        match error {
            DurableError::Io {
                context,
                path,
                source,
            } => Error::io(context, path, source),
            DurableError::Sync { path, source } => {
                let reason = format!("fsync of {} failed: {source}", path.display());
                let mut poison = self.poison.lock().unwrap_or_else(|p| p.into_inner());
                poison.get_or_insert(reason.clone());
                Error::poisoned(reason)
            }
        }
    }

    fn path_of(&self, path: &str) -> Result<PathBuf> {
        validate_object_path(path)?;
        Ok(self.root.join(path))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.check_poison()?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| Error::task("storage task", e))?
    }

    /// Walks `dir` recursively, calling `visit` with each entry's path relative to the root.
    fn walk(&self, dir: &Path, visit: &mut dyn FnMut(&Path, &FsEntry) -> Result<()>) -> Result<()> {
        let entries = match self.fs.read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("listing", dir, e)),
        };
        for entry in entries {
            let path = dir.join(&entry.name);
            if entry.is_dir {
                self.walk(&path, visit)?;
            }
            visit(&path, &entry)?;
        }
        Ok(())
    }

    /// Reports (and with `Delete` removes) the temporary file `path` of an interrupted write.
    fn sweep_temporary(&self, path: &Path, mode: SweepMode, swept: &mut Vec<String>) -> Result<()> {
        swept.push(format!("temporary file {}", self.relative(path)));
        if mode == SweepMode::Delete {
            fs::remove_file_durable(&*self.fs, path).map_err(|e| self.durable_error(e))?;
        }
        Ok(())
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[async_trait]
impl Store for LocalStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> Result<()> {
        let target = self.path_of(path)?;
        let object = path.to_owned();
        self.blocking(move |this| {
            let publish = match mode {
                WriteMode::CreateOnly => Publish::CreateOnly,
                WriteMode::Replace => Publish::Replace,
            };
            fs::publish_file(&*this.fs, &target, publish, &mut |out| out.write_all(&data)).map_err(
                |e| {
                    if e.is_already_exists() {
                        Error::conflict(format!("object `{object}` already exists"))
                    } else {
                        this.durable_error(e)
                    }
                },
            )
        })
        .await
    }

    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> Result<()> {
        let target = self.path_of(path)?;
        let source = file.to_path_buf();
        self.blocking(move |this| {
            let mut input = super::open_for_upload(&source, offset)?;
            let mut mismatch = None;
            let result = fs::publish_file(&*this.fs, &target, Publish::Replace, &mut |out| {
                let actual = copy_hashing(&mut input, out, len)?;
                if actual != (expected, len) {
                    mismatch = Some(actual);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "content hash mismatch",
                    ));
                }
                Ok(())
            });
            if let Some((actual, actual_size)) = mismatch {
                return Err(hash::mismatch(
                    format!("{} (bytes {offset}..{})", source.display(), offset + len),
                    expected,
                    len,
                    actual.to_hex(),
                    actual_size,
                ));
            }
            result.map_err(|e| this.durable_error(e))
        })
        .await
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        let target = self.path_of(path)?;
        self.blocking(move |this| {
            let meta = this
                .fs
                .metadata(&target)
                .map_err(|e| Error::io("reading", &target, e))?;
            if meta.len > SMALL_OBJECT_LIMIT_BYTES {
                return Err(Error::corruption(format!(
                    "`{}` is {} bytes, more than the {} bytes a metadata object may have",
                    target.display(),
                    meta.len,
                    SMALL_OBJECT_LIMIT_BYTES
                )));
            }
            let mut data = Vec::with_capacity(meta.len as usize);
            this.fs
                .open(&target)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| Error::io("reading", &target, e))?;
            Ok(Bytes::from(data))
        })
        .await
    }

    async fn get_versioned(&self, path: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        let target = self.path_of(path)?;
        self.blocking(move |this| {
            Ok(this.read_small(&target)?.map(|data| {
                let version = content_version(&data);
                (Bytes::from(data), version)
            }))
        })
        .await
    }

    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion> {
        let target = self.path_of(path)?;
        let object = path.to_owned();
        let expected = expected.cloned();
        self.blocking(move |this| {
            let _guard = this.cas_lock()?;
            let current = this.read_small(&target)?.map(|d| content_version(&d));
            if current != expected {
                return Err(Error::conflict(format!(
                    "object `{object}` is at version {current:?}, not {expected:?}"
                )));
            }
            let new = content_version(&data);
            if expected.as_ref() == Some(&new) {
                // Same bytes: nothing to write (and renaming onto itself would change nothing).
                return Ok(new);
            }
            let publish = if expected.is_none() {
                Publish::CreateOnly
            } else {
                Publish::Replace
            };
            fs::publish_file(&*this.fs, &target, publish, &mut |out| out.write_all(&data))
                .map_err(|e| {
                    if e.is_already_exists() {
                        Error::conflict(format!("object `{object}` already exists"))
                    } else {
                        this.durable_error(e)
                    }
                })?;
            Ok(new)
        })
        .await
    }

    async fn get_stream(&self, path: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let target = self.path_of(path)?;
        let (size, reader) = self
            .blocking({
                let target = target.clone();
                move |this| {
                    let meta = this
                        .fs
                        .metadata(&target)
                        .map_err(|e| Error::io("reading", &target, e))?;
                    let reader = this
                        .fs
                        .open(&target)
                        .map_err(|e| Error::io("reading", &target, e))?;
                    Ok((meta.len, reader))
                }
            })
            .await?;
        let chunks = stream::try_unfold((reader, target), |(mut reader, target)| async move {
            let (chunk, reader, target) = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; CHUNK_BYTES];
                let result = read_chunk(&mut *reader, &mut buf);
                (result.map(|n| Bytes::from(buf).slice(..n)), reader, target)
            })
            .await
            .map_err(|e| Error::task("storage task", e))?;
            let chunk = chunk.map_err(|e| Error::io("reading", &target, e))?;
            Ok(if chunk.is_empty() {
                None
            } else {
                Some((chunk, (reader, target)))
            })
        });
        Ok((size, chunks.boxed()))
    }

    async fn head(&self, path: &str) -> Result<Option<ObjectInfo>> {
        let target = self.path_of(path)?;
        let object = path.to_owned();
        self.blocking(move |this| match this.fs.metadata(&target) {
            Ok(meta) if !meta.is_dir => Ok(Some(ObjectInfo {
                path: object,
                size: meta.len,
                modified: meta.modified,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("inspecting", &target, e)),
        })
        .await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let target = self.path_of(path)?;
        self.blocking(move |this| {
            fs::remove_file_durable(&*this.fs, &target).map_err(|e| this.durable_error(e))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = prefix.to_owned();
        self.blocking(move |this| {
            let base = match prefix.rfind('/') {
                Some(i) => this.root.join(&prefix[..i]),
                None => this.root.clone(),
            };
            let mut out = Vec::new();
            this.walk(&base, &mut |path, entry| {
                if entry.is_dir || fs::is_temporary_name(&entry.name) || entry.name == CAS_LOCK_NAME
                {
                    return Ok(());
                }
                let relative = this.relative(path);
                if relative.starts_with(&prefix) {
                    out.push(ObjectInfo {
                        path: relative,
                        size: entry.len,
                        modified: entry.modified,
                    });
                }
                Ok(())
            })?;
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }

    async fn sweep_incomplete(&self, older_than: Duration, mode: SweepMode) -> Result<Vec<String>> {
        self.blocking(move |this| {
            let cutoff = SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let mut swept = Vec::new();
            // Only under the layout's prefixes: the root may sit in a directory that holds other
            // things (and a path given by mistake must lose nothing). Every temporary this store
            // creates is next to its object, so under one of these — or, for the root marker,
            // directly in the root, named after it.
            for prefix in layout::LAYOUT_PREFIXES {
                let dir = this.root.join(prefix.trim_end_matches('/'));
                this.walk(&dir, &mut |path, entry| {
                    if entry.modified > cutoff {
                        return Ok(());
                    }
                    if entry.is_dir {
                        // Directories are visited after their contents. Empty ones below a prefix
                        // are housekeeping of this store (object stores have no directories):
                        // removed, not reported. The prefix directories themselves stay.
                        let empty = this
                            .fs
                            .read_dir(path)
                            .map(|e| e.is_empty())
                            .unwrap_or(false);
                        if empty && mode == SweepMode::Delete {
                            fs::remove_dir_if_empty_durable(&*this.fs, path)
                                .map_err(|e| this.durable_error(e))?;
                        }
                    } else if fs::is_temporary_name(&entry.name) {
                        this.sweep_temporary(path, mode, &mut swept)?;
                    }
                    Ok(())
                })?;
            }
            let marker_temporary = format!(".{}.tmp-", layout::ROOT_MARKER);
            let entries = match this.fs.read_dir(&this.root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io("listing", &this.root, e)),
            };
            for entry in entries {
                if !entry.is_dir
                    && entry.modified <= cutoff
                    && entry.name.starts_with(&marker_temporary)
                {
                    this.sweep_temporary(&this.root.join(&entry.name), mode, &mut swept)?;
                }
            }
            Ok(swept)
        })
        .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> Result<()> {
        let source = self.path_of(path)?;
        let (object, target, label) = (path.to_owned(), target.to_path_buf(), label.to_owned());
        self.blocking(move |this| {
            let mut check = Verifier::new(format!("{object} ({label})"), expected, size);
            let mut input = this.fs.open(&source).map_err(|e| {
                missing_as_corruption(Error::io("reading", &source, e), &object, &label)
            })?;
            let found = this.fs.metadata(&source).map_err(|e| {
                missing_as_corruption(Error::io("reading", &source, e), &object, &label)
            })?;
            check.size_is(found.len)?;
            let mut output = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&target)
                .map_err(|e| Error::io("opening", &target, e))?;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = read_chunk(&mut *input, &mut buf)
                    .map_err(|e| Error::io("reading", &source, e))?;
                if n == 0 {
                    break;
                }
                check.update(&buf[..n])?;
                output
                    .write_all(&buf[..n])
                    .map_err(|e| Error::io("writing", &target, e))?;
            }
            check.finish()
        })
        .await
    }

    async fn stage_file(&self, file: &Path, offset: u64, len: u64) -> Result<Staged> {
        let source = file.to_path_buf();
        self.blocking(move |this| {
            let mut input = super::open_for_upload(&source, offset)?;
            let mut hashed = None;
            let temp =
                fs::write_synced_temporary(&*this.fs, &this.root.join("shared"), &mut |out| {
                    hashed = Some(copy_hashing(&mut input, out, len)?);
                    Ok(())
                })
                .map_err(|e| this.durable_error(e))?;
            let (hash, size) = hashed.expect("the temporary file was written");
            if size != len {
                let _ = this.fs.remove_file(&temp);
                return Err(Error::corruption(format!(
                    "{} has {size} bytes from offset {offset}, expected {len}",
                    source.display()
                )));
            }
            Ok(Staged {
                hash,
                size,
                kind: StagedKind::Temporary(temp),
            })
        })
        .await
    }

    async fn publish_staged(&self, staged: Staged, path: &str) -> Result<()> {
        let target = self.path_of(path)?;
        match staged.kind {
            StagedKind::Temporary(temp) => {
                self.blocking(move |this| {
                    fs::publish_synced_temporary(&*this.fs, &temp, &target)
                        .map_err(|e| this.durable_error(e))
                })
                .await
            }
            StagedKind::Source { file, offset } => {
                self.put_file(path, &file, offset, staged.size, staged.hash)
                    .await
            }
        }
    }

    async fn discard_staged(&self, staged: Staged) -> Result<()> {
        if let StagedKind::Temporary(temp) = staged.kind {
            // Not synced: a temporary file that comes back after a crash is swept by GC.
            self.blocking(move |this| match this.fs.remove_file(&temp) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("removing staged file", &temp, e)),
            })
            .await?;
        }
        Ok(())
    }
}

fn read_chunk(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
