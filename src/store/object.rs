//! A store over any `object_store` backend (S3-compatible, GCS, Azure, in-memory).
//!
//! Commit records use conditional puts (`PutMode::Create`, S3's `If-None-Match: *`). Some
//! S3-compatible servers silently ignore the condition, which would let two writers both "create"
//! the same commit record; [`ObjectStoreStore::new`] therefore probes the store and refuses one that
//! overwrites a create-only object (G5). Large files go up as streamed multipart uploads, checked
//! against their content hash before the upload is completed.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{
    MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart,
};

use super::{
    ContentHash, ObjectInfo, ObjectVersion, SMALL_OBJECT_LIMIT_BYTES, Store, SweepMode, WriteMode,
    validate_object_path,
};
use crate::error::{Error, Result};
use crate::hash::Verifier;
use crate::layout::{self, PROBES, UPLOADS};

/// Files up to this size are uploaded with one request; larger ones in parts of this size, or
/// larger where a file would need more than [`MAX_PARTS`] of them.
const PART_BYTES: usize = 8 << 20;
/// S3's limit on the parts of one multipart upload.
const MAX_PARTS: u64 = 10_000;
/// Parts of one multipart upload (or ranges of one download) in flight at once.
const PART_CONCURRENCY: usize = 4;

/// The part size for a file of `len` bytes: [`PART_BYTES`], grown in whole MiB so that no file
/// needs more than [`MAX_PARTS`] parts (an 80 GB SST goes up in 8 MiB parts, a 1 TB one in
/// 105 MiB parts).
pub(crate) fn part_bytes(len: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let needed = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    needed.max(PART_BYTES as u64) as usize
}

/// A [`Store`] over an `object_store` backend, with paths under an optional prefix.
#[derive(Clone)]
pub struct ObjectStoreStore {
    inner: Arc<dyn ObjectStore>,
    /// The same store's multipart API, when uploads are tracked (see [`ObjectStoreStore::track_uploads`]).
    multipart: Option<Arc<dyn MultipartStore>>,
    /// How long an upload record vouches for its uploader (see [`ObjectStoreStore::with_upload_lease`]).
    upload_lease: Duration,
    /// The probe accepts a store that ignores conditional writes (see [`ObjectStoreStore::single_writer`]).
    single_writer: bool,
    prefix: String,
}

impl std::fmt::Debug for ObjectStoreStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStoreStore({}/{})", self.inner, self.prefix)
    }
}

impl ObjectStoreStore {
    /// Wraps `inner`, keeping every object under `prefix` (may be empty), and runs the startup
    /// [`probe`](Self::probe): fails with `Invalid` if the store does not honour conditional
    /// writes or list-after-write.
    pub async fn new(inner: Arc<dyn ObjectStore>, prefix: &str) -> Result<Self> {
        let prefix = prefix.trim_matches('/').to_owned();
        if !prefix.is_empty() {
            validate_object_path(&prefix)?;
        }
        let store = ObjectStoreStore {
            inner,
            multipart: None,
            upload_lease: UPLOAD_LEASE,
            single_writer: false,
            prefix,
        };
        store.probe().await?;
        Ok(store)
    }

    /// Wraps `inner` without probing (for stores known to honour conditional puts, and for tests
    /// that need a store which does not).
    pub fn new_unprobed(inner: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        ObjectStoreStore {
            inner,
            multipart: None,
            upload_lease: UPLOAD_LEASE,
            single_writer: false,
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    /// Tracks multipart uploads through `multipart`, which must be the same store as the one this
    /// wraps (for `open_root`'s S3, GCS and Azure stores it is). Before the first part of a large
    /// file goes up, a record `uploads/<nonce>` names the upload; it is deleted once the upload is
    /// completed or aborted. An upload whose process died leaves its record, and GC's sweep of
    /// incomplete writes ([`Store::sweep_incomplete`]) aborts it once the record is older than
    /// `incomplete_min_age` and its uploader's lease (renewed while parts go up) ran out: the
    /// parts S3 keeps (and bills) for an abandoned upload, which no listing of objects shows, are
    /// reclaimed. One window stays: a crash between creating the upload and writing its record
    /// (one request) leaves an upload without parts that only a bucket lifecycle rule
    /// (AbortIncompleteMultipartUpload) removes. Records hold paths relative to this root; one
    /// that is not a valid record of this root is left alone (and logged).
    pub fn track_uploads(mut self, multipart: Arc<dyn MultipartStore>) -> Self {
        self.multipart = Some(multipart);
        self
    }

    /// Single-writer mode: the [`probe`](Self::probe) accepts a store that ignores conditional
    /// writes, with a warning, instead of refusing it. Safe only if exactly one process (one
    /// coordinator, no concurrent GC) ever writes to the root: nothing fences a second writer.
    /// Every other probe failure (list consistency, a refused request) still fails.
    pub fn single_writer(mut self, yes: bool) -> Self {
        self.single_writer = yes;
        self
    }

    /// How long an upload record vouches for its uploader (default 60 s): the uploader renews the
    /// record every third of it, and the sweep aborts an upload only after the lease ran out. A
    /// shorter lease lets a sweep reclaim a dead uploader's upload sooner (tests use it).
    pub fn with_upload_lease(mut self, lease: Duration) -> Self {
        self.upload_lease = lease.max(Duration::from_millis(30));
        self
    }

    /// The startup probe, on a fresh object under `probes/`:
    /// 1. create it (create-only), then create it again: the second must fail (commit records
    ///    are created exactly once);
    /// 2. compare-and-swap it twice from the same version: the second must fail (job records and
    ///    fencing, G7);
    /// 3. list `probes/`: the object must be there (list-after-write; GC and discard decide what
    ///    is unreferenced from listings);
    /// 4. delete it: a `head` and a listing must no longer show it (list-after-delete).
    ///
    /// Fails with `Invalid`, naming what the store did, if it does not honour 1–2 or 3–4.
    pub async fn probe(&self) -> Result<()> {
        let path = format!("{PROBES}conditional-put-{}", crate::util::nonce());
        let honoured = self.probe_conditional_writes(&path).await;
        let listed = self
            .list(PROBES)
            .await
            .map(|found| found.iter().any(|o| o.path == path));
        self.delete(&path).await?;
        honoured?;
        if !listed? {
            return Err(Error::invalid(format!(
                "store {} did not list `{path}` right after writing it: deletion decides from \
                 listings and needs list-after-write consistency",
                self.describe()
            )));
        }
        let still_there = self.head(&path).await?.is_some()
            || self.list(PROBES).await?.iter().any(|o| o.path == path);
        if still_there {
            return Err(Error::invalid(format!(
                "store {} still shows `{path}` after deleting it: deletion needs \
                 read-after-delete consistency",
                self.describe()
            )));
        }
        Ok(())
    }

    async fn probe_conditional_writes(&self, path: &str) -> Result<()> {
        let first = self
            .put_if(path, Bytes::from_static(b"first"), None)
            .await?;
        let second = self
            .put(path, Bytes::from_static(b"second"), WriteMode::CreateOnly)
            .await;
        let what = if !matches!(&second, Err(e) if e.kind() == crate::ErrorKind::Conflict) {
            Some("a second create-only put of one object succeeded")
        } else {
            let swapped = self
                .put_if(path, Bytes::from_static(b"swapped"), Some(&first))
                .await;
            match swapped {
                Err(e) if e.kind() != crate::ErrorKind::Conflict => return Err(e),
                Err(_) => Some("a compare-and-swap from the current version failed"),
                Ok(_) => {
                    let stale = self
                        .put_if(path, Bytes::from_static(b"stale"), Some(&first))
                        .await;
                    match stale {
                        Err(e) if e.kind() == crate::ErrorKind::Conflict => None,
                        Err(e) => return Err(e),
                        Ok(_) => Some("a compare-and-swap from a stale version succeeded"),
                    }
                }
            }
        };
        match what {
            None => Ok(()),
            Some(what) if self.single_writer => {
                tracing::warn!(
                    store = self.describe(),
                    what,
                    "store ignores conditional writes; going on in single-writer mode"
                );
                Ok(())
            }
            Some(what) => Err(Error::invalid(format!(
                "store {} ignores conditional writes ({what}); two writers could both commit. \
                 Use another store, or accept single-writer mode (RootOptions::single_writer, \
                 `--single-writer`) if exactly one process ever writes to this root",
                self.describe()
            ))),
        }
    }

    fn location(&self, path: &str) -> Result<ObjectPath> {
        validate_object_path(path)?;
        let full = if self.prefix.is_empty() {
            path.to_owned()
        } else {
            format!("{}/{path}", self.prefix)
        };
        ObjectPath::parse(&full).map_err(|e| Error::invalid(format!("object path `{full}`: {e}")))
    }

    fn relative(&self, location: &ObjectPath) -> String {
        let full = location.as_ref();
        if self.prefix.is_empty() {
            full.to_owned()
        } else {
            full.strip_prefix(&self.prefix)
                .map(|rest| rest.trim_start_matches('/').to_owned())
                .unwrap_or_else(|| full.to_owned())
        }
    }
}

/// How long an upload record vouches for its uploader by default: the uploader renews it every
/// third of this while it sends parts, and the sweep aborts an upload only once its record's
/// lease has run out (and the record is older than the sweep's age).
const UPLOAD_LEASE: Duration = Duration::from_secs(60);

/// An upload record (`uploads/<nonce>`): which upload, of which object of this root, and until
/// when its uploader vouches for it. Text: `rockpoint-upload 1`, the object's path relative to
/// the root, the upload id, the lease's end in ms since the Unix epoch; one per line.
struct UploadRecord {
    path: String,
    id: MultipartId,
    lease_until_ms: u64,
}

impl UploadRecord {
    const HEADER: &'static str = "rockpoint-upload 1";

    fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{}\n{}\n{}\n{}\n",
            Self::HEADER,
            self.path,
            self.id,
            self.lease_until_ms
        ))
    }

    /// Decodes a record; `None` for anything that is not one (a stray object, a damaged or
    /// crafted record: the path must be a valid object path of this root, the id short and
    /// printable).
    fn decode(body: &[u8]) -> Option<UploadRecord> {
        let text = std::str::from_utf8(body).ok()?;
        let mut lines = text.lines();
        if lines.next()? != Self::HEADER {
            return None;
        }
        let path = lines.next()?.to_owned();
        let id = lines.next()?.to_owned();
        let lease_until_ms = lines.next()?.parse().ok()?;
        let id_ok = !id.is_empty() && id.len() <= 1024 && id.bytes().all(|b| b.is_ascii_graphic());
        (validate_object_path(&path).is_ok() && id_ok).then_some(UploadRecord {
            path,
            id,
            lease_until_ms,
        })
    }
}

impl ObjectStoreStore {
    /// A multipart upload under a record (see [`track_uploads`](Self::track_uploads)), steps
    /// U1–U5 of `docs/protocols.md`: parts are read in order and sent [`PART_CONCURRENCY`] at a
    /// time, the record's lease renewed on the way; the upload is completed only if the bytes
    /// hash to what was expected, and aborted on any failure.
    #[allow(clippy::too_many_arguments)]
    async fn put_tracked(
        &self,
        multipart: &Arc<dyn MultipartStore>,
        path: &str,
        location: &ObjectPath,
        source: std::fs::File,
        file: &Path,
        len: u64,
        part: usize,
        check: Verifier,
    ) -> Result<()> {
        // U1
        let id = multipart
            .create_multipart(location)
            .await
            .map_err(|e| store_error("starting upload of", path, e))?;
        // U2
        let record = format!("{UPLOADS}{}", crate::util::nonce());
        let mut body = UploadRecord {
            path: path.to_owned(),
            id: id.clone(),
            lease_until_ms: 0,
        };
        let renew = |body: &mut UploadRecord, mode: WriteMode| {
            body.lease_until_ms = crate::util::now_ms() + self.upload_lease.as_millis() as u64;
            self.put(&record, body.encode(), mode)
        };
        if let Err(e) = renew(&mut body, WriteMode::CreateOnly).await {
            let _ = multipart.abort_multipart(location, &id).await;
            return Err(e);
        }
        // U3
        let sent = async {
            let mut in_flight = futures::stream::FuturesOrdered::new();
            let mut parts = Vec::new();
            let (mut source, mut check, mut sent) = (source, check, 0u64);
            let mut renewed = std::time::Instant::now();
            while sent < len {
                if in_flight.len() >= PART_CONCURRENCY
                    && let Some(done) = in_flight.next().await
                {
                    parts.push(done?);
                }
                if renewed.elapsed() >= self.upload_lease / 3 {
                    renew(&mut body, WriteMode::Replace).await?;
                    renewed = std::time::Instant::now();
                }
                let want = (len - sent).min(part as u64) as usize;
                let (rest, chunk) = read_part(source, want, file).await?;
                source = rest;
                if chunk.is_empty() {
                    break;
                }
                sent += chunk.len() as u64;
                check.update(&chunk)?;
                let index = parts.len() + in_flight.len();
                let multipart = multipart.clone();
                let (location, id, path) = (location.clone(), id.clone(), path.to_owned());
                // A task of its own: the part goes up while the next one is read.
                let task = tokio::spawn(async move {
                    multipart
                        .put_part(&location, &id, index, PutPayload::from(chunk))
                        .await
                        .map_err(|e| store_error("uploading", &path, e))
                });
                in_flight.push_back(async move {
                    task.await.map_err(|e| Error::task("part upload", e))?
                });
            }
            while let Some(done) = in_flight.next().await {
                parts.push(done?);
            }
            check.finish()?;
            Ok::<_, Error>(parts)
        }
        .await;
        // U4
        let ended = match sent {
            Ok(parts) => multipart
                .complete_multipart(location, &id, parts)
                .await
                .map(|_| ())
                .map_err(|e| store_error("completing upload of", path, e)),
            Err(e) => {
                let _ = multipart.abort_multipart(location, &id).await;
                Err(e)
            }
        };
        // U5. A record left behind only makes GC abort an upload that has ended: nothing.
        if let Err(e) = self.delete(&record).await {
            tracing::debug!(record, error = %e, "upload record left for GC");
        }
        ended
    }

    /// Uploads whose record is older than `older_than` and whose lease has run out:
    /// (record path, the upload's record). A record that cannot be read or is not one (a stray
    /// object, a damaged or crafted record) is skipped with a warning, never acted on.
    async fn abandoned_uploads(&self, older_than: Duration) -> Result<Vec<(String, UploadRecord)>> {
        let mut out = Vec::new();
        let now = crate::util::now_ms();
        for object in self.list(UPLOADS).await? {
            if object.modified.elapsed().unwrap_or_default() < older_than {
                continue;
            }
            let body = match self.get(&object.path).await {
                Ok(body) => body,
                Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(record = object.path, error = %e, "upload record unreadable; left alone");
                    continue;
                }
            };
            match UploadRecord::decode(&body) {
                // An upload only ever targets an object of the layout: a record naming anything
                // else is not this engine's, and aborting it could break someone else's upload.
                Some(record) if !layout::is_layout_path(&record.path) => tracing::warn!(
                    record = object.path,
                    target = record.path,
                    "upload record names an object outside the layout; left alone"
                ),
                Some(record) if record.lease_until_ms < now => out.push((object.path, record)),
                Some(_) => {}
                None => tracing::warn!(record = object.path, "not an upload record; left alone"),
            }
        }
        Ok(out)
    }
}

fn store_error(context: &'static str, path: &str, e: object_store::Error) -> Error {
    Error::store(context, path, e)
}

/// Reads the next chunk of at most `want` bytes from `source` (the file `file`), off the async
/// threads.
async fn read_part(
    source: std::fs::File,
    want: usize,
    file: &Path,
) -> Result<(std::fs::File, Vec<u8>)> {
    let read = tokio::task::spawn_blocking(move || {
        let mut source = source;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok((source, buf))
    })
    .await
    .map_err(|e| Error::task("storage task", e))?;
    read.map_err(|e| Error::io("reading for upload", file, e))
}

#[async_trait]
impl Store for ObjectStoreStore {
    async fn put(&self, path: &str, data: Bytes, mode: WriteMode) -> Result<()> {
        let location = self.location(path)?;
        let opts = PutOptions {
            mode: match mode {
                WriteMode::CreateOnly => PutMode::Create,
                WriteMode::Replace => PutMode::Overwrite,
            },
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&location, PutPayload::from(data), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(Error::conflict(format!("object `{path}` already exists")))
            }
            Err(e) => Err(store_error("writing", path, e)),
        }
    }

    async fn put_file(
        &self,
        path: &str,
        file: &Path,
        offset: u64,
        len: u64,
        expected: ContentHash,
    ) -> Result<()> {
        let location = self.location(path)?;
        let mut source = super::open_for_upload(file, offset)?;
        let mut check = Verifier::new(
            format!("{} (bytes {offset}..{})", file.display(), offset + len),
            expected,
            len,
        );
        let part = part_bytes(len);
        if len <= PART_BYTES as u64 {
            let (_, data) = read_part(source, len as usize, file).await?;
            check.update(&data)?;
            check.finish()?;
            return self.put(path, Bytes::from(data), WriteMode::Replace).await;
        }
        if let Some(multipart) = &self.multipart {
            return self
                .put_tracked(multipart, path, &location, source, file, len, part, check)
                .await;
        }
        let upload = self
            .inner
            .put_multipart(&location)
            .await
            .map_err(|e| store_error("starting upload of", path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part);
        let sent = async {
            let mut sent = 0u64;
            while sent < len {
                writer
                    .wait_for_capacity(PART_CONCURRENCY)
                    .await
                    .map_err(|e| store_error("uploading", path, e))?;
                let want = (len - sent).min(part as u64) as usize;
                let (rest, chunk) = read_part(source, want, file).await?;
                source = rest;
                if chunk.is_empty() {
                    break;
                }
                sent += chunk.len() as u64;
                check.update(&chunk)?;
                writer.put(Bytes::from(chunk));
            }
            check.finish()
        }
        .await;
        // One place aborts, whatever failed: a read, a part, or the bytes' hash.
        match sent {
            Ok(()) => writer
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| store_error("completing upload of", path, e)),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        let location = self.location(path)?;
        let result = self
            .inner
            .get(&location)
            .await
            .map_err(|e| store_error("reading", path, e))?;
        if result.meta.size > SMALL_OBJECT_LIMIT_BYTES {
            return Err(Error::corruption(format!(
                "`{path}` is {} bytes, more than the {SMALL_OBJECT_LIMIT_BYTES} bytes a metadata object may have",
                result.meta.size
            )));
        }
        result
            .bytes()
            .await
            .map_err(|e| store_error("reading", path, e))
    }

    async fn get_versioned(&self, path: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        let location = self.location(path)?;
        let result = match self.inner.get(&location).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error("reading", path, e)),
        };
        if result.meta.size > SMALL_OBJECT_LIMIT_BYTES {
            return Err(Error::corruption(format!(
                "`{path}` is {} bytes, more than the {SMALL_OBJECT_LIMIT_BYTES} bytes a record may have",
                result.meta.size
            )));
        }
        let version = result.meta.e_tag.clone().ok_or_else(|| {
            Error::invalid(format!(
                "store {} returned no entity tag for `{path}`: it cannot compare-and-swap",
                self.describe()
            ))
        })?;
        let bytes = result
            .bytes()
            .await
            .map_err(|e| store_error("reading", path, e))?;
        Ok(Some((bytes, ObjectVersion(version))))
    }

    async fn put_if(
        &self,
        path: &str,
        data: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion> {
        let location = self.location(path)?;
        let mode = match expected {
            None => PutMode::Create,
            Some(version) => PutMode::Update(object_store::UpdateVersion {
                e_tag: Some(version.0.clone()),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&location, PutPayload::from(data), opts)
            .await
        {
            Ok(result) => result.e_tag.map(ObjectVersion).ok_or_else(|| {
                Error::invalid(format!(
                    "store {} returned no entity tag for `{path}`: it cannot compare-and-swap",
                    self.describe()
                ))
            }),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Err(Error::conflict(format!(
                "object `{path}` changed since it was read (compare-and-swap failed)"
            ))),
            Err(e) => Err(store_error("writing", path, e)),
        }
    }

    async fn get_stream(&self, path: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let location = self.location(path)?;
        let result = self
            .inner
            .get(&location)
            .await
            .map_err(|e| store_error("reading", path, e))?;
        let size = result.meta.size;
        let path = path.to_owned();
        let stream = result
            .into_stream()
            .map_err(move |e| store_error("reading", &path, e))
            .boxed();
        Ok((size, stream))
    }

    /// Small objects stream in one GET; larger ones are fetched as ranges of [`PART_BYTES`],
    /// [`PART_CONCURRENCY`] at a time, and appended in order (memory stays bounded by the ranges
    /// in flight). Every range's answer carries the object's size, which must be the recorded one.
    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> Result<()> {
        if size <= PART_BYTES as u64 {
            return super::append_streamed(self, path, expected, size, target, label).await;
        }
        let location = self.location(path)?;
        let what = format!("{path} ({label})");
        let ranges = (0..size)
            .step_by(PART_BYTES)
            .map(|start| start..(start + PART_BYTES as u64).min(size));
        let (inner, location, what) = (&self.inner, &location, &what);
        // Each range's answer says how large the whole object is: no HEAD first.
        let parts = futures::stream::iter(ranges)
            .map(|range| async move {
                let options = object_store::GetOptions {
                    range: Some(range.into()),
                    ..object_store::GetOptions::default()
                };
                let reading =
                    |e| super::missing_as_corruption(store_error("reading", path, e), path, label);
                let got = inner.get_opts(location, options).await.map_err(reading)?;
                Verifier::new(what.clone(), expected, size).size_is(got.meta.size)?;
                got.bytes().await.map_err(reading)
            })
            .buffered(PART_CONCURRENCY);
        super::append_checked(parts, Verifier::new(what.clone(), expected, size), target).await
    }

    async fn head(&self, path: &str) -> Result<Option<ObjectInfo>> {
        let location = self.location(path)?;
        match self.inner.head(&location).await {
            Ok(meta) => Ok(Some(ObjectInfo {
                path: path.to_owned(),
                size: meta.size,
                modified: meta.last_modified.into(),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("inspecting", path, e)),
        }
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let location = self.location(path)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_error("deleting", path, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let base = match (self.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(ObjectPath::from(dir)),
            (false, true) => Some(ObjectPath::from(self.prefix.as_str())),
            (false, false) => Some(ObjectPath::from(format!("{}/{dir}", self.prefix))),
        };
        let mut listing = self.inner.list(base.as_ref());
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error("listing", prefix, e))?;
            let path = self.relative(&meta.location);
            if path.starts_with(prefix) {
                out.push(ObjectInfo {
                    path,
                    size: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Object stores never expose a partially written object. What an interrupted write leaves
    /// is a multipart upload in progress: with [`track_uploads`](Self::track_uploads), each has a
    /// record, and those older than `older_than` are aborted (with [`SweepMode::Delete`]) and
    /// their records deleted. Without tracking, nothing is found here: configure the bucket's
    /// lifecycle rule (AbortIncompleteMultipartUpload on S3).
    async fn sweep_incomplete(&self, older_than: Duration, mode: SweepMode) -> Result<Vec<String>> {
        // Probe objects of a process that died mid-probe (P2): nothing reads or references them.
        let mut swept = Vec::new();
        for probe in self.list(PROBES).await? {
            // A probe takes a few requests; one older than this is surely dead.
            let dead_after = older_than.max(Duration::from_secs(300));
            if probe.modified.elapsed().unwrap_or_default() < dead_after {
                continue;
            }
            if mode == SweepMode::Delete {
                self.delete(&probe.path).await?;
            }
            swept.push(format!(
                "probe object `{}` of an interrupted startup",
                probe.path
            ));
        }
        let Some(multipart) = &self.multipart else {
            return Ok(swept);
        };
        for (record, upload) in self.abandoned_uploads(older_than).await? {
            // The location is this root's: the record holds a path relative to it, validated.
            let location = self.location(&upload.path)?;
            if mode == SweepMode::Delete {
                match multipart.abort_multipart(&location, &upload.id).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(upload = %location, error = %e, "aborting an abandoned upload failed; kept its record");
                        continue;
                    }
                }
                self.delete(&record).await?;
            }
            swept.push(format!("unfinished upload of `{}` ({record})", upload.path));
        }
        Ok(swept)
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.inner, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any SST fits in S3's 10,000 parts, and small files keep the 8 MiB parts.
    #[test]
    fn every_file_size_fits_in_the_part_limit() {
        const GIB: u64 = 1 << 30;
        for len in [
            1,
            PART_BYTES as u64,
            80 * GIB,
            10_000 * PART_BYTES as u64 + 1,
            1 << 40,
            5 << 40,
        ] {
            let part = part_bytes(len) as u64;
            assert!(part >= PART_BYTES as u64, "{len}: {part}");
            assert_eq!(part % (1 << 20), 0, "{len}: whole MiB");
            assert!(len.div_ceil(part) <= MAX_PARTS, "{len} in parts of {part}");
        }
        assert_eq!(part_bytes(80_000_000_000), PART_BYTES); // 80 GB
        assert_eq!(part_bytes(80 * GIB), 9 << 20);
        assert_eq!(part_bytes(1 << 40), 105 << 20);
    }
}
