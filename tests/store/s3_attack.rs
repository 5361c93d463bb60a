//! Hostile schedules against the object store's tracked multipart uploads (`uploads/<nonce>`
//! records and GC's `sweep_incomplete`), its ranged download, `open_root`'s read-only roots and
//! the errors it reports. A test named after a defect fails on the code it was written against;
//! the others pin down behaviour that holds.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rockpoint::format::ContentHash;
use rockpoint::store::WriteMode;
use rockpoint::{ErrorKind, ObjectStoreStore, RootOptions, Store, SweepMode};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A multipart API in front of a real one: sends parts one at a time, each after `part_delay`
/// (an upload that is slow but keeps making progress), remembers every upload id it created,
/// and can hang right after creating an upload (a process dying between `create_multipart`
/// and the record).
struct Parts {
    inner: Arc<dyn MultipartStore>,
    part_delay: Duration,
    serial: tokio::sync::Mutex<()>,
    ids: Mutex<Vec<String>>,
    hang_after_create: bool,
}

impl Parts {
    fn new(inner: Arc<dyn MultipartStore>, part_delay: Duration) -> Arc<Self> {
        Arc::new(Parts {
            inner,
            part_delay,
            serial: tokio::sync::Mutex::new(()),
            ids: Mutex::new(Vec::new()),
            hang_after_create: false,
        })
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl MultipartStore for Parts {
    async fn create_multipart(&self, path: &ObjectPath) -> object_store::Result<MultipartId> {
        let id = self.inner.create_multipart(path).await?;
        self.ids.lock().unwrap().push(id.clone());
        if self.hang_after_create {
            futures::future::pending::<()>().await;
        }
        Ok(id)
    }

    async fn put_part(
        &self,
        path: &ObjectPath,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        let _one_at_a_time = self.serial.lock().await;
        tokio::time::sleep(self.part_delay).await;
        self.inner.put_part(path, id, part_idx, data).await
    }

    async fn complete_multipart(
        &self,
        path: &ObjectPath,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        self.inner.complete_multipart(path, id, parts).await
    }

    async fn abort_multipart(
        &self,
        path: &ObjectPath,
        id: &MultipartId,
    ) -> object_store::Result<()> {
        self.inner.abort_multipart(path, id).await
    }
}

/// A file of `len` deterministic bytes and its hash.
fn big_file(
    dir: &Path,
    name: &str,
    len: usize,
) -> std::io::Result<(std::path::PathBuf, ContentHash)> {
    let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let path = dir.join(name);
    std::fs::write(&path, &content)?;
    Ok((path, ContentHash::of(&content)))
}

async fn wait_for_record(
    store: &dyn Store,
) -> Result<rockpoint::store::ObjectInfo, Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(record) = store.list("uploads/").await?.into_iter().next() {
            return Ok(record);
        }
        if std::time::Instant::now() > deadline {
            return Err("no upload record within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// DEFECT (G4's "upload in flight" exemption, liveness of checkpoints with large SSTs): the
/// sweep ages an upload by its record, written once when the upload starts, so an upload that
/// is still sending parts is aborted as soon as it has *lasted* longer than `older_than`
/// (`max(grace_period, incomplete_min_age)`, one hour by default, not settable from the CLI).
/// The local store ages a temporary file by its mtime, which every write advances: there only a
/// stalled write is swept. Here parts go up every 250 ms and the sweep (older_than = 300 ms) runs
/// 600 ms in, 100 ms after the last part: the live upload is aborted and `put_file` fails — a
/// file that takes longer than the threshold to upload can never be checkpointed, every retry
/// is aborted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_multipart_upload_lasting_longer_than_the_sweep_age_is_aborted_by_gc() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mem = Arc::new(InMemory::new());
    let parts = Parts::new(mem.clone(), Duration::from_millis(250));
    let store =
        Arc::new(ObjectStoreStore::new_unprobed(mem.clone(), "root").track_uploads(parts.clone()));
    let (file, hash) = big_file(dir.path(), "big", 40_000_000)?;
    let upload = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .put_file("shared/ab/big", &file, 0, 40_000_000, hash)
                .await
        })
    };
    wait_for_record(&*store).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let swept = store
        .sweep_incomplete(Duration::from_millis(300), SweepMode::Delete)
        .await?;
    let result = upload.await?;
    assert!(
        result.is_ok(),
        "an upload still sending parts (one every 250 ms) was aborted by GC's sweep ({swept:?}); \
         the checkpoint sees: {:?}",
        result.err().map(|e| e.to_string())
    );
    Ok(())
}

/// DEFECT (G5: a hostile or copied record must not make GC touch what is not this root's): the
/// record names an absolute location, and the sweep aborts whatever location and id it names,
/// with no check that the location is under this root's prefix. A record in root `a` that names
/// an upload of root `b` (written by anyone who can write to `a`, or copied along by an
/// `aws s3 sync` of `b` into `a`) makes GC of `a` abort `b`'s live upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_record_naming_a_location_outside_the_root_makes_gc_abort_another_roots_upload()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let mem = Arc::new(InMemory::new());
    let root_b = Arc::new(
        ObjectStoreStore::new_unprobed(mem.clone(), "b")
            .track_uploads(Parts::new(mem.clone(), Duration::from_millis(250))),
    );
    let root_a = ObjectStoreStore::new_unprobed(mem.clone(), "a").track_uploads(mem.clone());
    let (file, hash) = big_file(dir.path(), "big", 40_000_000)?;
    let upload = {
        let root_b = root_b.clone();
        tokio::spawn(async move {
            root_b
                .put_file("shared/ab/big", &file, 0, 40_000_000, hash)
                .await
        })
    };
    let record = wait_for_record(&*root_b).await?;
    let body = String::from_utf8(root_b.get(&record.path).await?.to_vec())?;
    let id = body.lines().nth(2).ok_or("an upload id")?.to_owned();
    // Records hold paths relative to their root (a copy names this root's object); a crafted
    // one that climbs out of the root, with an expired lease, is what is left to try.
    for (name, path) in [
        ("climbs", "../b/shared/ab/big"),
        ("absolute", "/b/shared/ab/big"),
    ] {
        root_a
            .put(
                &format!("uploads/{name}"),
                Bytes::from(format!("rockpoint-upload 1\n{path}\n{id}\n0\n")),
                WriteMode::CreateOnly,
            )
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let swept = root_a
        .sweep_incomplete(Duration::from_millis(300), SweepMode::Delete)
        .await?;
    let result = upload.await?;
    assert!(
        swept.is_empty() && result.is_ok(),
        "GC of root `a` swept {swept:?} and root `b`'s upload ended with {:?}",
        result.err().map(|e| e.to_string())
    );
    Ok(())
}

/// DEFECT (G5, and G4 for every later pass): one object under `uploads/` whose name is not a
/// valid object path (a stray `notes copy.txt`, anything another tool put there) makes
/// `sweep_incomplete` — the last step of every GC pass, dry run included — fail, so every GC
/// pass fails with `Invalid` after it has deleted, and its report is lost. Unreadable metadata
/// records are reported in `GcReport::unreadable` instead; an unparseable record is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_object_under_uploads_makes_every_gc_pass_fail() -> TestResult {
    let mem = Arc::new(InMemory::new());
    let store = ObjectStoreStore::new_unprobed(mem.clone(), "root").track_uploads(mem.clone());
    // A root (GC refuses a location that is not one).
    rockpoint::admin::mark_root(&store).await?;
    mem.put(
        &ObjectPath::from("root/uploads/notes copy.txt"),
        PutPayload::from_static(b"hello"),
    )
    .await?;
    // Once the stray object is older than the sweep age (an hour by default; zero here).
    let options = rockpoint::GcOptions {
        grace_period: Duration::ZERO,
        incomplete_min_age: Duration::ZERO,
        ..rockpoint::GcOptions::default()
    };
    let report = rockpoint::collect_garbage(&store, &options).await;
    assert!(
        report.is_ok(),
        "a dry-run GC pass failed because of one stray object: {}",
        report.err().map(|e| e.to_string()).unwrap_or_default()
    );
    Ok(())
}

/// HOLDS (crash after `complete_multipart`, before the record is deleted): the sweep aborts an
/// upload that was already completed — S3 answers `NoSuchUpload`, taken as done — deletes the
/// record, and the completed object stays whole. On the SeaweedFS test server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_of_a_record_left_after_complete_keeps_the_object() -> TestResult {
    let dir = tempfile::tempdir()?;
    let raw = crate::common::raw_s3()?;
    let prefix = format!("attack-{}", std::process::id());
    let parts = Parts::new(raw.clone(), Duration::ZERO);
    let store = ObjectStoreStore::new_unprobed(raw.clone(), &prefix).track_uploads(parts.clone());
    let (file, hash) = big_file(dir.path(), "big", 20_000_000)?;
    store
        .put_file("shared/ab/big", &file, 0, 20_000_000, hash)
        .await?;
    assert!(
        store.list("uploads/").await?.is_empty(),
        "record deleted on completion"
    );
    let id = parts.ids()[0].clone();
    // The process died after completing, before deleting the record.
    store
        .put(
            "uploads/left-behind",
            Bytes::from(format!("rockpoint-upload 1\nshared/ab/big\n{id}\n0\n")),
            WriteMode::CreateOnly,
        )
        .await?;
    let swept = store
        .sweep_incomplete(Duration::ZERO, SweepMode::Delete)
        .await?;
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert!(store.list("uploads/").await?.is_empty(), "record removed");
    let target = dir.path().join("back");
    store
        .append_verified("shared/ab/big", hash, 20_000_000, &target, "test")
        .await?;
    assert_eq!(std::fs::metadata(&target)?.len(), 20_000_000);
    Ok(())
}

/// DEFECT (API; G7 given up silently): `RootOptions::read_only` only skips the startup probe —
/// the store it returns writes like any other. A library user who opens a root "read-only"
/// (as the CLI does for list/show/verify/du) and hands it to a coordinator or GC gets an
/// unprobed store: on a server that ignores conditional writes two coordinators both commit,
/// with no error anywhere. A read-only root should refuse writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_root_accepts_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = crate::common::s3::S3Server::get();
    let url = crate::common::s3::root_url(&dir.path().join("root"));
    let options = RootOptions {
        read_only: true,
        ..server.options()
    };
    let store = rockpoint::open_root(&url, &options).await?;
    let put = store
        .put(
            "jobs/x/_job",
            Bytes::from_static(b"x"),
            WriteMode::CreateOnly,
        )
        .await;
    assert!(put.is_err(), "a root opened read-only took a write");
    Ok(())
}

/// DEFECT (G2/G5 "a clear error naming what is wrong"): a read error of the local file being
/// uploaded is reported as `reading for upload <staged file>`, not with the file's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_read_error_does_not_name_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mem = Arc::new(InMemory::new());
    let store = ObjectStoreStore::new_unprobed(mem.clone(), "root").track_uploads(mem.clone());
    // A directory opens, but reading it fails (EISDIR).
    let not_a_file = dir.path().join("a-directory");
    std::fs::create_dir(&not_a_file)?;
    let err = store
        .put_file(
            "shared/ab/x",
            &not_a_file,
            0,
            10,
            ContentHash::of(b"0123456789"),
        )
        .await
        .expect_err("reading a directory fails");
    assert!(
        err.to_string().contains("a-directory"),
        "the error does not name the file: {err}"
    );
    Ok(())
}

/// An in-memory store whose object is replaced (same size, other bytes) right before the first
/// ranged GET: the HEAD saw the old object, the ranges read the new one.
struct ReplacedMidDownload(InMemory, std::sync::atomic::AtomicBool);

impl std::fmt::Display for ReplacedMidDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplacedMidDownload")
    }
}

impl std::fmt::Debug for ReplacedMidDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplacedMidDownload")
    }
}

#[async_trait::async_trait]
impl ObjectStore for ReplacedMidDownload {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.range.is_some() && self.1.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let size = self.0.head(location).await?.size as usize;
            self.0
                .put(location, PutPayload::from(vec![7u8; size]))
                .await?;
        }
        self.0.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.0.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// HOLDS (G2): an object replaced between the ranged download's HEAD and its range GETs is
/// caught by the content hash: `Corruption`, naming the object; nothing passes as verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_download_of_an_object_replaced_after_its_head_is_corruption() -> TestResult {
    let dir = tempfile::tempdir()?;
    let inner = Arc::new(ReplacedMidDownload(
        InMemory::new(),
        std::sync::atomic::AtomicBool::new(true),
    ));
    let store = ObjectStoreStore::new_unprobed(inner.clone(), "root");
    let (file, hash) = big_file(dir.path(), "big", 20_000_000)?;
    store
        .put_file("shared/ab/big", &file, 0, 20_000_000, hash)
        .await?;
    let err = store
        .append_verified(
            "shared/ab/big",
            hash,
            20_000_000,
            &dir.path().join("back"),
            "test",
        )
        .await
        .expect_err("replaced bytes must not verify");
    assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
    assert!(err.to_string().contains("shared/ab/big"), "{err}");
    Ok(())
}
