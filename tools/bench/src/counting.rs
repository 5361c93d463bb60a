//! An `ObjectStore` that counts the requests it forwards, by kind, to an inner store.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// Requests by kind, as S3 sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// Single-request PUTs (conditional or not).
    pub put: u64,
    /// Multipart upload parts (each a PUT).
    pub part: u64,
    /// Multipart uploads started (CreateMultipartUpload, a POST; completing one is another POST).
    pub multipart: u64,
    /// Multipart uploads aborted.
    pub aborted: u64,
    /// GETs, ranged or whole.
    pub get: u64,
    pub head: u64,
    /// Listings started (a listing of more than 1000 objects pages; none here does).
    pub list: u64,
    /// Objects deleted (rockpoint deletes one object per request).
    pub delete: u64,
    pub copy: u64,
}

impl Requests {
    /// PUTs including multipart parts.
    pub fn puts(&self) -> u64 {
        self.put + self.part
    }

    /// Every request, with the two POSTs of each multipart upload.
    pub fn total(&self) -> u64 {
        self.put
            + self.part
            + 2 * self.multipart
            + self.aborted
            + self.get
            + self.head
            + self.list
            + self.delete
            + self.copy
    }
}

impl std::ops::Sub for Requests {
    type Output = Requests;
    fn sub(self, o: Requests) -> Requests {
        Requests {
            put: self.put - o.put,
            part: self.part - o.part,
            multipart: self.multipart - o.multipart,
            aborted: self.aborted - o.aborted,
            get: self.get - o.get,
            head: self.head - o.head,
            list: self.list - o.list,
            delete: self.delete - o.delete,
            copy: self.copy - o.copy,
        }
    }
}

impl std::ops::AddAssign for Requests {
    fn add_assign(&mut self, o: Requests) {
        self.put += o.put;
        self.part += o.part;
        self.multipart += o.multipart;
        self.aborted += o.aborted;
        self.get += o.get;
        self.head += o.head;
        self.list += o.list;
        self.delete += o.delete;
        self.copy += o.copy;
    }
}

#[derive(Default)]
struct Counters {
    put: AtomicU64,
    part: AtomicU64,
    multipart: AtomicU64,
    aborted: AtomicU64,
    get: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    copy: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Forwards every call to `inner` (and multipart calls to `multipart`, the same store's multipart
/// API), counting it.
#[derive(Clone)]
pub struct Counting {
    inner: Arc<dyn ObjectStore>,
    multipart: Arc<dyn MultipartStore>,
    counters: Arc<Counters>,
}

impl Counting {
    pub fn new(inner: Arc<dyn ObjectStore>, multipart: Arc<dyn MultipartStore>) -> Counting {
        Counting {
            inner,
            multipart,
            counters: Arc::default(),
        }
    }

    /// The requests counted so far.
    pub fn requests(&self) -> Requests {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Requests {
            put: load(&c.put),
            part: load(&c.part),
            multipart: load(&c.multipart),
            aborted: load(&c.aborted),
            get: load(&c.get),
            head: load(&c.head),
            list: load(&c.list),
            delete: load(&c.delete),
            copy: load(&c.copy),
        }
    }
}

impl fmt::Display for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({})", self.inner)
    }
}

impl fmt::Debug for Counting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Counting({:?})", self.inner)
    }
}

/// A multipart upload whose parts are counted.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<Counters>,
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counters")
    }
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        bump(&self.counters.part);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        bump(&self.counters.aborted);
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Counting {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        bump(&self.counters.put);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        bump(&self.counters.multipart);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            inner,
            counters: self.counters.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        bump(if options.head {
            &self.counters.head
        } else {
            &self.counters.get
        });
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = self.counters.clone();
        let counted = locations.inspect(move |_| bump(&counters.delete)).boxed();
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bump(&self.counters.list);
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bump(&self.counters.list);
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        bump(&self.counters.list);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        bump(&self.counters.copy);
        self.inner.copy_opts(from, to, options).await
    }
}

/// The multipart API `ObjectStoreStore::track_uploads` uploads large files through.
#[async_trait]
impl MultipartStore for Counting {
    async fn create_multipart(&self, path: &Path) -> object_store::Result<MultipartId> {
        bump(&self.counters.multipart);
        self.multipart.create_multipart(path).await
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        bump(&self.counters.part);
        self.multipart.put_part(path, id, part_idx, data).await
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        self.multipart.complete_multipart(path, id, parts).await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> object_store::Result<()> {
        bump(&self.counters.aborted);
        self.multipart.abort_multipart(path, id).await
    }
}
