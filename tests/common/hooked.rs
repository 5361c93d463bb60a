//! The one test wrapper of [`Store`]: [`HookedStore`] forwards every method of the trait to the
//! store it wraps — `stage_file`, `publish_staged`, `append_verified` and `discard_staged`
//! included, so the production paths of the local store run under test — and calls a [`Hook`]
//! before (and after) each operation. A hook observes ([`Op`] names the operation and what it acts
//! on), holds operations at gates, fails them (injected errors) or reports applied operations as
//! failed (ambiguous outcomes). Tests script races and failures as hooks, never as hand-written
//! wrappers that could miss a method and silently run the trait's default instead.
//!
//! `hooked_store_forwards_every_method_of_local_store` (tests/store/hooked.rs) fails if a method
//! is not forwarded: a method added to `Store` must be added here, to [`Op`], and to that test.
#![allow(dead_code)]

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use rockpoint::format::ContentHash;
use rockpoint::store::{ObjectInfo, ObjectVersion, Staged, WriteMode};
use rockpoint::{Result, Store, SweepMode};

/// One operation on the store, with what it acts on.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    Put {
        path: &'a str,
        data: &'a Bytes,
        mode: WriteMode,
    },
    PutFile {
        path: &'a str,
        file: &'a Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    },
    Get {
        path: &'a str,
    },
    GetVersioned {
        path: &'a str,
    },
    PutIf {
        path: &'a str,
        data: &'a Bytes,
        expected: Option<&'a ObjectVersion>,
    },
    GetStream {
        path: &'a str,
    },
    Head {
        path: &'a str,
    },
    Delete {
        path: &'a str,
    },
    List {
        prefix: &'a str,
    },
    SweepIncomplete {
        older_than: Duration,
        mode: SweepMode,
    },
    StageFile {
        file: &'a Path,
        offset: u64,
        len: u64,
    },
    PublishStaged {
        path: &'a str,
        hash: ContentHash,
        size: u64,
    },
    AppendVerified {
        path: &'a str,
        expected: ContentHash,
        size: u64,
        target: &'a Path,
        label: &'a str,
    },
    DiscardStaged {
        hash: ContentHash,
        size: u64,
    },
}

impl Op<'_> {
    /// The name of the `Store` method.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "put",
            Op::PutFile { .. } => "put_file",
            Op::Get { .. } => "get",
            Op::GetVersioned { .. } => "get_versioned",
            Op::PutIf { .. } => "put_if",
            Op::GetStream { .. } => "get_stream",
            Op::Head { .. } => "head",
            Op::Delete { .. } => "delete",
            Op::List { .. } => "list",
            Op::SweepIncomplete { .. } => "sweep_incomplete",
            Op::StageFile { .. } => "stage_file",
            Op::PublishStaged { .. } => "publish_staged",
            Op::AppendVerified { .. } => "append_verified",
            Op::DiscardStaged { .. } => "discard_staged",
        }
    }

    /// The object path the operation reads or writes (a listing's prefix), if any.
    pub fn path(&self) -> Option<&str> {
        match *self {
            Op::Put { path, .. }
            | Op::PutFile { path, .. }
            | Op::Get { path }
            | Op::GetVersioned { path }
            | Op::PutIf { path, .. }
            | Op::GetStream { path }
            | Op::Head { path }
            | Op::Delete { path }
            | Op::PublishStaged { path, .. }
            | Op::AppendVerified { path, .. } => Some(path),
            Op::List { prefix } => Some(prefix),
            Op::SweepIncomplete { .. } | Op::StageFile { .. } | Op::DiscardStaged { .. } => None,
        }
    }

    /// What the operation acts on, as text to match: the object path (a listing's prefix); for
    /// `put_file` the path and the local file (`"<path> <file>"`); for `stage_file` the local
    /// file; empty for `sweep_incomplete` and `discard_staged`.
    pub fn subject(&self) -> String {
        match *self {
            Op::PutFile { path, file, .. } => format!("{path} {}", file.display()),
            Op::StageFile { file, .. } => file.display().to_string(),
            _ => self.path().unwrap_or_default().to_owned(),
        }
    }

    /// Whether the operation uploads a file's bytes (`put_file`, or `publish_staged` of bytes
    /// `stage_file` read).
    pub fn is_upload(&self) -> bool {
        matches!(self, Op::PutFile { .. } | Op::PublishStaged { .. })
    }
}

/// What a test does around the operations of a [`HookedStore`]. Both methods default to doing
/// nothing. `store` is the wrapped store: a hook may read or change it directly (its calls do not
/// pass through the hook).
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Runs before `op` reaches the wrapped store; may wait (a gate). An error is returned to the
    /// caller in the operation's place and the wrapped store never sees the operation (for
    /// `publish_staged`, the staged object is discarded: a refused upload leaves nothing).
    async fn before(&self, op: &Op<'_>, store: &dyn Store) -> Result<()> {
        let _ = (op, store);
        Ok(())
    }

    /// Runs after the wrapped store completed `op` successfully. An error is returned to the
    /// caller instead of the success: the operation took effect, its caller hears it failed (an
    /// ambiguous outcome).
    async fn after(&self, op: &Op<'_>, store: &dyn Store) -> Result<()> {
        let _ = (op, store);
        Ok(())
    }
}

/// A store that forwards every method to `inner`, calling `hook` around each (`describe`, which
/// is not an operation on the store's contents, is forwarded without a hook).
pub struct HookedStore {
    inner: Arc<dyn Store>,
    hook: Arc<dyn Hook>,
}

impl HookedStore {
    pub fn new(inner: Arc<dyn Store>, hook: Arc<dyn Hook>) -> Self {
        HookedStore { inner, hook }
    }
}

/// `inner` wrapped with `hook`: the store to hand to the engine, and the hook to script and
/// inspect.
pub fn with_hook<H: Hook>(inner: Arc<dyn Store>, hook: H) -> (Arc<dyn Store>, Arc<H>) {
    let hook = Arc::new(hook);
    let store: Arc<dyn Store> = Arc::new(HookedStore::new(inner, hook.clone()));
    (store, hook)
}

impl fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HookedStore({:?})", self.inner)
    }
}

/// `before`, the wrapped store's call, `after`; the call's result on success.
macro_rules! around {
    ($self:ident, $op:expr, $call:expr) => {{
        let op = $op;
        $self.hook.before(&op, &*$self.inner).await?;
        let out = $call.await?;
        $self.hook.after(&op, &*$self.inner).await?;
        Ok(out)
    }};
}

#[async_trait]
impl Store for HookedStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> Result<()> {
        around!(
            self,
            Op::Put {
                path,
                data: &data,
                mode
            },
            self.inner.put(path, data.clone(), mode)
        )
    }

    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> Result<()> {
        around!(
            self,
            Op::PutFile {
                path,
                file,
                offset,
                len,
                expected
            },
            self.inner.put_file(path, file, offset, len, expected)
        )
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        around!(self, Op::Get { path }, self.inner.get(path))
    }

    async fn get_versioned(&self, path: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        around!(
            self,
            Op::GetVersioned { path },
            self.inner.get_versioned(path)
        )
    }

    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion> {
        around!(
            self,
            Op::PutIf {
                path,
                data: &data,
                expected
            },
            self.inner.put_if(path, data.clone(), expected)
        )
    }

    async fn get_stream(&self, path: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        around!(self, Op::GetStream { path }, self.inner.get_stream(path))
    }

    async fn head(&self, path: &str) -> Result<Option<ObjectInfo>> {
        around!(self, Op::Head { path }, self.inner.head(path))
    }

    async fn delete(&self, path: &str) -> Result<()> {
        around!(self, Op::Delete { path }, self.inner.delete(path))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        around!(self, Op::List { prefix }, self.inner.list(prefix))
    }

    async fn sweep_incomplete(&self, older_than: Duration, mode: SweepMode) -> Result<Vec<String>> {
        around!(
            self,
            Op::SweepIncomplete { older_than, mode },
            self.inner.sweep_incomplete(older_than, mode)
        )
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn stage_file(&self, file: &Path, offset: u64, len: u64) -> Result<Staged> {
        around!(
            self,
            Op::StageFile { file, offset, len },
            self.inner.stage_file(file, offset, len)
        )
    }

    async fn publish_staged(&self, staged: Staged, path: &str) -> Result<()> {
        let op = Op::PublishStaged {
            path,
            hash: staged.hash,
            size: staged.size,
        };
        if let Err(e) = self.hook.before(&op, &*self.inner).await {
            let _ = self.inner.discard_staged(staged).await;
            return Err(e);
        }
        self.inner.publish_staged(staged, path).await?;
        self.hook.after(&op, &*self.inner).await
    }

    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> Result<()> {
        around!(
            self,
            Op::AppendVerified {
                path,
                expected,
                size,
                target,
                label
            },
            self.inner
                .append_verified(path, expected, size, target, label)
        )
    }

    async fn discard_staged(&self, staged: Staged) -> Result<()> {
        around!(
            self,
            Op::DiscardStaged {
                hash: staged.hash,
                size: staged.size
            },
            self.inner.discard_staged(staged)
        )
    }
}
