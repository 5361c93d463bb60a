//! Both store implementations honour the contract the engine relies on (see `src/store/mod.rs`),
//! and a store that silently ignores conditional writes is refused.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rockpoint::format::ContentHash;
use rockpoint::store::WriteMode;
use rockpoint::{ErrorKind, LocalStore, ObjectStoreStore, Store};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn contract(store: &dyn Store, scratch: &std::path::Path) -> TestResult {
    // Create-only writes happen once.
    store
        .put(
            "jobs/a/x",
            Bytes::from_static(b"one"),
            WriteMode::CreateOnly,
        )
        .await?;
    let second = store
        .put(
            "jobs/a/x",
            Bytes::from_static(b"two"),
            WriteMode::CreateOnly,
        )
        .await;
    assert_eq!(second.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    assert_eq!(store.get("jobs/a/x").await?, Bytes::from_static(b"one"));
    store
        .put("jobs/a/x", Bytes::from_static(b"two"), WriteMode::Replace)
        .await?;
    assert_eq!(store.get("jobs/a/x").await?, Bytes::from_static(b"two"));

    // Compare-and-swap: create-only from nothing, then only from the current version.
    assert!(store.get_versioned("jobs/a/_job").await?.is_none());
    let v1 = store
        .put_if("jobs/a/_job", Bytes::from_static(b"1"), None)
        .await?;
    let again = store
        .put_if("jobs/a/_job", Bytes::from_static(b"x"), None)
        .await;
    assert_eq!(again.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    let v2 = store
        .put_if("jobs/a/_job", Bytes::from_static(b"2"), Some(&v1))
        .await?;
    let stale = store
        .put_if("jobs/a/_job", Bytes::from_static(b"3"), Some(&v1))
        .await;
    assert_eq!(stale.err().map(|e| e.kind()), Some(ErrorKind::Conflict));
    assert_eq!(
        store.get_versioned("jobs/a/_job").await?,
        Some((Bytes::from_static(b"2"), v2))
    );
    store.delete("jobs/a/_job").await?;

    // put_file streams a range and refuses bytes that do not match the expected hash.
    let source = scratch.join("source");
    let content: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&source, &content)?;
    let range = 1_000..19_000_000usize;
    let hash = ContentHash::of(&content[range.clone()]);
    store
        .put_file(
            "shared/ab/big",
            &source,
            range.start as u64,
            range.len() as u64,
            hash,
        )
        .await?;
    let (size, mut stream) = store.get_stream("shared/ab/big").await?;
    assert_eq!(size, range.len() as u64);
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk?);
    }
    assert_eq!(ContentHash::from(hasher.finalize()), hash);
    // append_verified fetches it back (in ranges, on an object store) after what the target holds.
    let target = scratch.join("target");
    std::fs::write(&target, b"head")?;
    store
        .append_verified(
            "shared/ab/big",
            hash,
            range.len() as u64,
            &target,
            "the big file",
        )
        .await?;
    let fetched = std::fs::read(&target)?;
    assert!(fetched[..4] == *b"head" && fetched[4..] == content[range.clone()]);
    let wrong_hash = store
        .append_verified(
            "shared/ab/big",
            ContentHash::of(b"other"),
            range.len() as u64,
            &scratch.join("t2"),
            "the big file",
        )
        .await;
    assert_eq!(
        wrong_hash.err().map(|e| e.kind()),
        Some(ErrorKind::Corruption)
    );
    let wrong_size = store
        .append_verified(
            "shared/ab/big",
            hash,
            12,
            &scratch.join("t3"),
            "the big file",
        )
        .await;
    assert_eq!(
        wrong_size.err().map(|e| e.kind()),
        Some(ErrorKind::Corruption)
    );
    let missing = store
        .append_verified(
            "shared/ab/none",
            hash,
            9 << 20,
            &scratch.join("t4"),
            "a file",
        )
        .await;
    assert_eq!(missing.err().map(|e| e.kind()), Some(ErrorKind::Corruption));
    let wrong = store
        .put_file("shared/ab/wrong", &source, 0, 10, hash)
        .await;
    assert_eq!(wrong.err().map(|e| e.kind()), Some(ErrorKind::Corruption));
    assert!(
        store.head("shared/ab/wrong").await?.is_none(),
        "a mismatch publishes nothing"
    );
    let small_wrong = store
        .put_file("shared/ab/wrong", &source, 0, 10, ContentHash::of(b"nope"))
        .await;
    assert_eq!(
        small_wrong.err().map(|e| e.kind()),
        Some(ErrorKind::Corruption)
    );

    // Listing is by prefix and sees completed writes and deletes.
    store
        .put("jobs/b/y", Bytes::from_static(b"y"), WriteMode::CreateOnly)
        .await?;
    let listed: Vec<String> = store
        .list("jobs/")
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(listed, vec!["jobs/a/x".to_owned(), "jobs/b/y".to_owned()]);
    let listed: Vec<String> = store
        .list("jobs/a")
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(listed, vec!["jobs/a/x".to_owned()]);
    assert_eq!(store.head("jobs/b/y").await?.map(|i| i.size), Some(1));
    store.delete("jobs/b/y").await?;
    store.delete("jobs/b/y").await?; // deleting a missing object succeeds
    assert!(store.head("jobs/b/y").await?.is_none());
    assert_eq!(
        store.get("jobs/b/y").await.err().map(|e| e.kind()),
        Some(ErrorKind::NotFound)
    );

    // Paths the engine could not have written are refused.
    for bad in ["../x", "/abs", "a//b", "a/../b", "jobs/.hidden", ""] {
        let err = store.put(bad, Bytes::new(), WriteMode::Replace).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Invalid), "{bad:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_honours_the_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = LocalStore::new(dir.path().join("root"))?;
    contract(&store, dir.path()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_adapter_honours_the_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = ObjectStoreStore::new(Arc::new(InMemory::new()), "some/prefix").await?;
    contract(&store, dir.path()).await
}

/// The same contract on a real S3 server (SeaweedFS), through `open_root`'s `s3://` URL, with
/// objects large enough to take the multipart upload and the ranged, parallel download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_honours_the_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = crate::common::s3::Root::S3
        .store(&dir.path().join("root"))
        .await?;
    contract(&*store, dir.path()).await
}

/// An S3-compatible server that ignores `If-None-Match`: every create is an overwrite.
#[derive(Debug)]
/// Ignores every condition of a put (`only_if_match`: only `If-Match`, honouring create-only).
struct IgnoresConditions(InMemory, bool);

impl std::fmt::Display for IgnoresConditions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresConditions")
    }
}

#[async_trait::async_trait]
impl ObjectStore for IgnoresConditions {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let ignore = match opts.mode {
            PutMode::Update(_) => true,
            PutMode::Create => !self.1,
            PutMode::Overwrite => false,
        };
        if ignore {
            opts.mode = PutMode::Overwrite;
        }
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

#[tokio::test]
async fn a_store_that_ignores_conditional_writes_is_refused() {
    // Ignoring every condition, or only compare-and-swap (`If-Match`): both are refused, since
    // job records fence stale coordinators by compare-and-swap.
    for only_if_match in [false, true] {
        let err = ObjectStoreStore::new(
            Arc::new(IgnoresConditions(InMemory::new(), only_if_match)),
            "",
        )
        .await
        .err();
        let err = err.expect("refused");
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(
            err.to_string().contains("ignores conditional writes"),
            "{err}"
        );
    }
}

/// Single-writer mode accepts a store that ignores conditional writes, and only that: a probe
/// whose requests fail (wrong credentials on S3) still fails in that mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_writer_mode_accepts_only_ignored_conditions() -> TestResult {
    let ignoring =
        ObjectStoreStore::new_unprobed(Arc::new(IgnoresConditions(InMemory::new(), false)), "");
    assert!(
        ignoring.clone().probe().await.is_err(),
        "refused by default"
    );
    ignoring.single_writer(true).probe().await?;
    let dir = tempfile::tempdir()?;
    let mut options = crate::common::s3::S3Server::get().options();
    options.single_writer = true;
    for (key, value) in &mut options.config {
        if key == "aws_secret_access_key" {
            *value = "not-the-secret".into();
        }
    }
    let url = crate::common::s3::root_url(&dir.path().join("root"));
    let refused = rockpoint::open_root(&url, &options).await;
    assert_eq!(
        refused.err().map(|e| e.kind()),
        Some(ErrorKind::Invalid),
        "wrong credentials in single-writer mode"
    );
    Ok(())
}

#[tokio::test]
async fn compare_and_swap_fails_from_a_stale_version() -> rockpoint::Result<()> {
    let store = ObjectStoreStore::new(Arc::new(InMemory::new()), "root").await?;
    let v1 = store
        .put_if("jobs/j/_job", bytes::Bytes::from_static(b"1"), None)
        .await?;
    assert_eq!(
        store
            .put_if("jobs/j/_job", bytes::Bytes::from_static(b"x"), None)
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Conflict),
        "create-only swap of an existing record"
    );
    let v2 = store
        .put_if("jobs/j/_job", bytes::Bytes::from_static(b"2"), Some(&v1))
        .await?;
    assert_eq!(
        store
            .put_if("jobs/j/_job", bytes::Bytes::from_static(b"3"), Some(&v1))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Conflict),
        "a swap from a stale version"
    );
    let (bytes, version) = store.get_versioned("jobs/j/_job").await?.expect("exists");
    assert_eq!((&bytes[..], version), (&b"2"[..], v2));
    Ok(())
}

/// A process that dies mid-way through a large upload leaves a multipart upload in progress: S3
/// keeps (and bills) its parts, and no listing of objects shows them. The upload's record makes
/// GC's sweep of incomplete writes find it and abort it; afterwards the upload id is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_multipart_upload_is_aborted_by_the_incomplete_sweep() -> TestResult {
    use object_store::multipart::MultipartStore;
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    // The raw S3 API, and over it a tracked store whose upload lease is short: an upload whose
    // process died is abandoned 3 s later (60 s by default).
    let raw = crate::common::raw_s3()?;
    let prefix = crate::common::s3::root_prefix(&root);
    let store: Arc<dyn Store> = Arc::new(
        ObjectStoreStore::new(raw.clone(), &prefix)
            .await?
            .track_uploads(raw.clone())
            .with_upload_lease(std::time::Duration::from_secs(3)),
    );
    let source = dir.path().join("big");
    let content: Vec<u8> = (0..40_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&source, &content)?;
    let hash = ContentHash::of(&content);
    let upload = {
        let (store, source) = (store.clone(), source.clone());
        tokio::spawn(async move {
            store
                .put_file("shared/cd/big", &source, 0, 40_000_000, hash)
                .await
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let record = loop {
        if let Some(record) = store.list("uploads/").await?.into_iter().next() {
            break record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no upload record within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    // The process dies: nothing of it runs again, nobody aborts the upload.
    upload.abort();
    let _ = upload.await;
    let body = store.get(&record.path).await?;
    let text = String::from_utf8(body.to_vec())?;
    let lines: Vec<&str> = text.lines().collect();
    let [header, path, id, _lease] = lines[..] else {
        return Err(format!("a four-line record: {text}").into());
    };
    assert_eq!(
        (header, path),
        ("rockpoint-upload 1", "shared/cd/big"),
        "{text}"
    );
    let location = format!("{prefix}/{path}");
    let location = location.as_str();
    assert!(
        store.head("shared/cd/big").await?.is_none(),
        "never completed"
    );

    // The abandoned upload still takes parts before the sweep, none after.
    let late_part = |raw: Arc<object_store::aws::AmazonS3>| async move {
        raw.put_part(
            &object_store::path::Path::from(location),
            &id.to_owned(),
            0,
            PutPayload::from(vec![0u8; 16]),
        )
        .await
    };
    late_part(raw.clone()).await?;

    let zero = std::time::Duration::ZERO;
    let leased = store
        .sweep_incomplete(zero, rockpoint::SweepMode::Delete)
        .await?;
    assert!(
        leased.is_empty(),
        "the dead uploader's lease has not run out yet: {leased:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    let young = store
        .sweep_incomplete(
            std::time::Duration::from_secs(3600),
            rockpoint::SweepMode::Delete,
        )
        .await?;
    assert!(young.is_empty(), "younger than the grace period: {young:?}");
    let dry = store
        .sweep_incomplete(zero, rockpoint::SweepMode::DryRun)
        .await?;
    assert_eq!(dry.len(), 1, "{dry:?}");
    assert!(dry[0].contains("shared/cd/big"), "{dry:?}");
    assert_eq!(store.list("uploads/").await?.len(), 1, "a dry run keeps it");
    let swept = store
        .sweep_incomplete(zero, rockpoint::SweepMode::Delete)
        .await?;
    assert_eq!(swept, dry);
    assert!(store.list("uploads/").await?.is_empty());
    assert!(
        store
            .sweep_incomplete(zero, rockpoint::SweepMode::Delete)
            .await?
            .is_empty()
    );

    let late = late_part(raw).await;
    assert!(late.is_err(), "the aborted upload still takes parts");
    Ok(())
}

/// Wrong credentials are a configuration error (`Invalid`: fix the input, do not retry), and the
/// message says which object and what the server answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_with_wrong_credentials_is_refused_naming_the_object() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = crate::common::s3::S3Server::get();
    let mut options = server.options();
    for (key, value) in &mut options.config {
        if key == "aws_secret_access_key" {
            *value = "not-the-secret".into();
        }
    }
    let url = crate::common::s3::root_url(&dir.path().join("root"));
    let err = rockpoint::open_root(&url, &options)
        .await
        .err()
        .ok_or("opened with a wrong secret")?;
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        err.to_string().contains("probes/"),
        "names the object: {err}"
    );
    options.read_only = true;
    let store = rockpoint::open_root(&url, &options).await?;
    let err = store
        .get("jobs/x/_job")
        .await
        .err()
        .ok_or("read with a wrong secret")?;
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("jobs/x/_job"), "{err}");
    Ok(())
}
