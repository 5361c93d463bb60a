//! The local-filesystem seam and the one audited durability module.
//!
//! Every filesystem mutation of the storage engine goes through [`Fs`], so that tests can replace it
//! with a model that records operations, crashes before any one of them and drops what was never
//! synced. The durable recipes live here and nowhere else:
//!
//! * publish a file: write a temporary file → fsync it → hard-link (create-only) or rename (replace)
//!   onto the final name → remove the temporary → fsync the directory;
//! * create directories: create each missing level → fsync its parent;
//! * delete: unlink → fsync the directory.
//!
//! A failed fsync is never retried: the caller poisons its engine (G6), because after a failed fsync
//! the kernel may have dropped the dirty pages and a retry can report success over lost data.

use std::fmt;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A writable file handle from an [`Fs`].
pub trait FsWrite: Write + Send {
    /// Makes the file's contents durable.
    fn sync_all(&mut self) -> io::Result<()>;
}

/// A readable file handle from an [`Fs`].
pub trait FsRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> FsRead for T {}

/// What [`Fs::metadata`] and [`Fs::read_dir`] report about an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsEntry {
    /// File name within its directory.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Length in bytes (0 for directories).
    pub len: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

/// The filesystem operations the storage engine performs. Paths are absolute.
pub trait Fs: Send + Sync + fmt::Debug + 'static {
    /// Creates a new file for writing; fails if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWrite>>;
    /// Opens a file for reading.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FsRead>>;
    /// Creates `to` as a hard link of `from`; fails with `AlreadyExists` if `to` exists.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Renames `from` onto `to`, replacing it.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory level; fails with `AlreadyExists` if it exists.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Lists a directory.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsEntry>>;
    /// Describes one entry.
    fn metadata(&self, path: &Path) -> io::Result<FsEntry>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(std::fs::File);

impl Write for StdFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl FsWrite for StdFile {
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

fn entry_of(name: String, meta: &std::fs::Metadata) -> FsEntry {
    FsEntry {
        name,
        is_dir: meta.is_dir(),
        len: if meta.is_dir() { 0 } else { meta.len() },
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    }
}

impl Fs for StdFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWrite>> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(StdFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        Ok(Box::new(std::fs::File::open(path)?))
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed between listing and stat: it is gone, not an error.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(entry_of(
                entry.file_name().to_string_lossy().into_owned(),
                &meta,
            ));
        }
        Ok(out)
    }

    fn metadata(&self, path: &Path) -> io::Result<FsEntry> {
        let meta = std::fs::metadata(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(entry_of(name, &meta))
    }
}

/// Why a durable operation failed: plain I/O (retryable by the caller) or a failed sync (poison).
#[derive(Debug)]
pub(crate) enum DurableError {
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    Sync {
        path: PathBuf,
        source: io::Error,
    },
}

impl DurableError {
    fn io(context: &'static str, path: &Path, source: io::Error) -> Self {
        DurableError::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }

    fn sync(path: &Path, source: io::Error) -> Self {
        DurableError::Sync {
            path: path.to_path_buf(),
            source,
        }
    }

    /// As a plain error, for writers that are not a store (a failed fsync there fails the one
    /// operation, whose output the caller discards, instead of poisoning a store).
    pub(crate) fn into_error(self) -> crate::error::Error {
        match self {
            DurableError::Io {
                context,
                path,
                source,
            } => crate::error::Error::io(context, path, source),
            DurableError::Sync { path, source } => crate::error::Error::io("syncing", path, source),
        }
    }

    pub(crate) fn is_already_exists(&self) -> bool {
        matches!(self, DurableError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
    }
}

/// How a published file treats an existing file of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Publish {
    /// Fail with `AlreadyExists` (hard link): commit records are written exactly once.
    CreateOnly,
    /// Atomically replace (rename): only for content-addressed files, whose bytes never differ.
    Replace,
}

/// Creates `dir` and any missing parents, fsyncing the parent of every level it creates.
pub(crate) fn create_dir_all_durable(fs: &dyn Fs, dir: &Path) -> Result<(), DurableError> {
    match fs.metadata(dir) {
        Ok(entry) if entry.is_dir => return Ok(()),
        Ok(_) => {
            return Err(DurableError::io(
                "creating directory (a file is in the way)",
                dir,
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DurableError::io("inspecting directory", dir, e)),
    }
    let parent = dir.parent().ok_or_else(|| {
        DurableError::io(
            "creating directory",
            dir,
            io::Error::from(io::ErrorKind::NotFound),
        )
    })?;
    create_dir_all_durable(fs, parent)?;
    match fs.create_dir(dir) {
        Ok(()) => sync_dir_durable(fs, parent),
        // Another writer created it concurrently; its creator syncs the parent.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(DurableError::io("creating directory", dir, e)),
    }
}

/// The name of a temporary file beside `target`; `is_temporary_name` recognises it.
pub(crate) fn temporary_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}", crate::util::nonce()))
}

/// Whether a file name is one of [`temporary_path`]'s.
pub(crate) fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// The directory `target` is published in; a path without one is a caller's error.
fn parent_dir(target: &Path) -> Result<&Path, DurableError> {
    target.parent().ok_or_else(|| {
        DurableError::io(
            "publishing",
            target,
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })
}

/// Durably publishes the bytes produced by `write` at `target` (see the module docs for the steps).
/// `write` fills the temporary file; on any failure the temporary file is removed.
pub(crate) fn publish_file(
    fs: &dyn Fs,
    target: &Path,
    mode: Publish,
    write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<(), DurableError> {
    let dir = parent_dir(target)?;
    create_dir_all_durable(fs, dir)?;
    let temp = temporary_path(target);
    let result = publish_via(fs, &temp, target, dir, mode, write);
    if result.is_err() {
        // Best effort: a temporary file left behind is swept by GC (G4).
        let _ = fs.remove_file(&temp);
    }
    result
}

fn publish_via(
    fs: &dyn Fs,
    temp: &Path,
    target: &Path,
    dir: &Path,
    mode: Publish,
    write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<(), DurableError> {
    let mut file = fs
        .create_new(temp)
        .map_err(|e| DurableError::io("creating temporary file", temp, e))?;
    write(&mut file).map_err(|e| DurableError::io("writing temporary file", temp, e))?;
    file.flush()
        .map_err(|e| DurableError::io("writing temporary file", temp, e))?;
    file.sync_all().map_err(|e| DurableError::sync(temp, e))?;
    drop(file);
    match mode {
        Publish::CreateOnly => {
            fs.hard_link(temp, target)
                .map_err(|e| DurableError::io("publishing (create-only)", target, e))?;
            fs.remove_file(temp)
                .map_err(|e| DurableError::io("removing temporary file", temp, e))?;
        }
        Publish::Replace => fs
            .rename(temp, target)
            .map_err(|e| DurableError::io("publishing (replace)", target, e))?,
    }
    sync_dir_durable(fs, dir)
}

/// Writes a new temporary file in `dir` with the bytes `write` produces and fsyncs it; the caller
/// publishes it with [`publish_synced_temporary`] or removes it. Returns its path.
pub(crate) fn write_synced_temporary(
    fs: &dyn Fs,
    dir: &Path,
    write: &mut dyn FnMut(&mut dyn Write) -> io::Result<()>,
) -> Result<PathBuf, DurableError> {
    create_dir_all_durable(fs, dir)?;
    let temp = dir.join(format!(".staged.tmp-{}", crate::util::nonce()));
    let result = (|| {
        let mut file = fs
            .create_new(&temp)
            .map_err(|e| DurableError::io("creating temporary file", &temp, e))?;
        write(&mut file).map_err(|e| DurableError::io("writing temporary file", &temp, e))?;
        file.flush()
            .map_err(|e| DurableError::io("writing temporary file", &temp, e))?;
        file.sync_all().map_err(|e| DurableError::sync(&temp, e))
    })();
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = fs.remove_file(&temp);
            Err(e)
        }
    }
}

/// Durably publishes a synced temporary file at `target` by hard link, keeping an existing `target`
/// (content-addressed names hold identical bytes), then removes the temporary and fsyncs the
/// target's directory.
pub(crate) fn publish_synced_temporary(
    fs: &dyn Fs,
    temp: &Path,
    target: &Path,
) -> Result<(), DurableError> {
    let dir = parent_dir(target)?;
    create_dir_all_durable(fs, dir)?;
    match fs.hard_link(temp, target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DurableError::io("publishing (link)", target, e)),
    }
    match fs.remove_file(temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DurableError::io("removing temporary file", temp, e)),
    }
    sync_dir_durable(fs, dir)
}

/// Writes a new file `path` holding `bytes` and fsyncs it; fails if it exists. The caller fsyncs the
/// directory (once, after its last file).
pub(crate) fn write_new_file_synced(
    fs: &dyn Fs,
    path: &Path,
    bytes: &[u8],
) -> Result<(), DurableError> {
    let mut file = fs
        .create_new(path)
        .map_err(|e| DurableError::io("creating", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(|e| DurableError::io("writing", path, e))?;
    file.sync_all().map_err(|e| DurableError::sync(path, e))
}

/// Makes a directory's entries durable. A directory that is gone (removed by a concurrent
/// discard) cannot be opened for the fsync: that fails the operation as plain I/O — nothing was
/// made durable, and nothing on the disk is in doubt — instead of poisoning (fsync itself never
/// reports `NotFound`).
pub(crate) fn sync_dir_durable(fs: &dyn Fs, dir: &Path) -> Result<(), DurableError> {
    fs.sync_dir(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            DurableError::io("syncing a directory removed meanwhile", dir, e)
        } else {
            DurableError::sync(dir, e)
        }
    })
}

/// Makes a removal in `dir` durable. If `dir` itself was removed meanwhile, so was what was in it:
/// whoever removed `dir` makes that durable.
fn sync_after_removal(fs: &dyn Fs, dir: &Path) -> Result<(), DurableError> {
    match sync_dir_durable(fs, dir) {
        Err(DurableError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Durably moves the fully written directory `from` onto `to`, which must be absent or an empty
/// directory: fsync `from`, remove the empty `to`, rename, fsync the parent.
pub(crate) fn rename_dir_durable(fs: &dyn Fs, from: &Path, to: &Path) -> Result<(), DurableError> {
    let parent = parent_dir(to)?;
    sync_dir_durable(fs, from)?;
    match fs.remove_dir(to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DurableError::io("replacing empty directory", to, e)),
    }
    fs.rename(from, to)
        .map_err(|e| DurableError::io("moving into place at", to, e))?;
    sync_dir_durable(fs, parent)
}

/// Durably removes a file: unlink, then fsync its directory. A missing file is not an error.
pub(crate) fn remove_file_durable(fs: &dyn Fs, path: &Path) -> Result<(), DurableError> {
    match fs.remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DurableError::io("removing file", path, e)),
    }
    match path.parent() {
        Some(dir) => sync_after_removal(fs, dir),
        None => Ok(()),
    }
}

/// Durably removes an empty directory. Missing or non-empty directories are left as they are.
pub(crate) fn remove_dir_if_empty_durable(fs: &dyn Fs, dir: &Path) -> Result<(), DurableError> {
    match fs.remove_dir(dir) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            return Ok(());
        }
        Err(e) => return Err(DurableError::io("removing directory", dir, e)),
    }
    match dir.parent() {
        Some(parent) => sync_after_removal(fs, parent),
        None => Ok(()),
    }
}
