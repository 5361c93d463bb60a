//! A store wrapper that checks G3 at the moment of every delete: a shared file may be deleted only
//! if no metadata record (checkpoint or savepoint) and no pin (in-flight checkpoint, restore) in the
//! root lists it right then. It decodes records itself, independently of the engine's own index.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use rockpoint::{ContentHash, ObjectInfo, RestoreSource, Store, SweepMode, WriteMode};

#[derive(serde::Deserialize)]
struct PinBody {
    hashes: Vec<String>,
}

pub struct CheckingStore {
    pub inner: Arc<dyn Store>,
    pub violations: Mutex<Vec<String>>,
    pub deletes_checked: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CheckingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckingStore({:?})", self.inner)
    }
}

impl CheckingStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(CheckingStore {
            inner,
            violations: Mutex::new(Vec::new()),
            deletes_checked: 0.into(),
        })
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Every shared path that a metadata record or a pin in the root lists now.
    pub async fn referenced_now(store: &dyn Store) -> rockpoint::Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for object in store.list("jobs/").await? {
            if object.path.ends_with("/_metadata") {
                let (_, metadata) =
                    rockpoint::read_metadata(store, &RestoreSource::Metadata(object.path.clone()))
                        .await?;
                out.extend(metadata.shared_hashes().map(|h| shared(&h)));
            }
        }
        for object in store.list("pins/").await? {
            let bytes = store.get(&object.path).await?;
            assert_eq!(&bytes[..8], b"RKPTPIN\0", "pin envelope");
            let body: PinBody = rmp_serde::from_slice(&bytes[52..]).expect("pin body decodes");
            out.extend(
                body.hashes
                    .iter()
                    .map(|h| format!("shared/{}/{h}", &h[..2])),
            );
        }
        Ok(out)
    }
}

pub fn shared(hash: &ContentHash) -> String {
    let hex = hash.to_hex();
    format!("shared/{}/{hex}", &hex[..2])
}

#[async_trait::async_trait]
impl Store for CheckingStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> rockpoint::Result<()> {
        self.inner.put(path, data, mode).await
    }
    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> rockpoint::Result<()> {
        self.inner.put_file(path, file, offset, len, expected).await
    }
    async fn get(&self, path: &str) -> rockpoint::Result<Bytes> {
        self.inner.get(path).await
    }
    async fn get_stream(
        &self,
        path: &str,
    ) -> rockpoint::Result<(u64, BoxStream<'static, rockpoint::Result<Bytes>>)> {
        self.inner.get_stream(path).await
    }
    async fn head(&self, path: &str) -> rockpoint::Result<Option<ObjectInfo>> {
        self.inner.head(path).await
    }
    async fn delete(&self, path: &str) -> rockpoint::Result<()> {
        if path.starts_with("shared/") {
            self.deletes_checked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // If the root cannot be read (the machine is down), the delete fails below anyway.
            if let Ok(referenced) = Self::referenced_now(&*self.inner).await
                && referenced.contains(path)
            {
                self.violations.lock().unwrap().push(format!(
                    "deleted {path} while a metadata record or pin referenced it"
                ));
            }
        }
        self.inner.delete(path).await
    }
    async fn list(&self, prefix: &str) -> rockpoint::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
        mode: SweepMode,
    ) -> rockpoint::Result<Vec<String>> {
        self.inner.sweep_incomplete(older_than, mode).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn stage_file(
        &self,
        file: &Path,
        offset: u64,
        len: u64,
    ) -> rockpoint::Result<rockpoint::Staged> {
        self.inner.stage_file(file, offset, len).await
    }
    async fn publish_staged(&self, staged: rockpoint::Staged, path: &str) -> rockpoint::Result<()> {
        self.inner.publish_staged(staged, path).await
    }
    async fn discard_staged(&self, staged: rockpoint::Staged) -> rockpoint::Result<()> {
        self.inner.discard_staged(staged).await
    }
}
