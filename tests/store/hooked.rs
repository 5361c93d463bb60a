//! The hooked test wrapper (`common::hooked`) forwards every method of `Store` to the store it
//! wraps — the methods whose default `LocalStore` overrides included, so tests run the production
//! paths — and its hooks refuse operations or make them ambiguous as documented.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rockpoint::format::ContentHash;
use rockpoint::store::WriteMode;
use rockpoint::{LocalStore, Store, SweepMode};

use crate::common::{Hook, Op, shared_path, with_hook};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Every method of `Store` that is an operation on the store (all but `describe`).
const EVERY_OPERATION: [&str; 14] = [
    "put",
    "put_file",
    "get",
    "get_versioned",
    "put_if",
    "get_stream",
    "head",
    "delete",
    "list",
    "sweep_incomplete",
    "stage_file",
    "publish_staged",
    "append_verified",
    "discard_staged",
];

/// Records every call of the hook, and can refuse or make ambiguous the operations it names.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
    refuse: Mutex<Option<&'static str>>,
    ambiguous: Mutex<Option<&'static str>>,
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Hook for Recorder {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("before {}", op.name()));
        if *self.refuse.lock().unwrap() == Some(op.name()) {
            return Err(std::io::Error::other("refused by the hook").into());
        }
        Ok(())
    }

    async fn after(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("after {}", op.name()));
        if *self.ambiguous.lock().unwrap() == Some(op.name()) {
            return Err(std::io::Error::other("applied, reported failed by the hook").into());
        }
        Ok(())
    }
}

/// Temporary files of the local store (what `stage_file` leaves until publish or discard).
async fn temporaries(local: &LocalStore) -> rockpoint::Result<Vec<String>> {
    local
        .sweep_incomplete(Duration::ZERO, SweepMode::DryRun)
        .await
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<ContentHash> {
    std::fs::write(path, bytes)?;
    Ok(ContentHash::of(bytes))
}

/// Calls every method through the wrapper and checks that exactly that method reached the hook
/// (a method left to the trait's default would call other methods of the wrapper, or none), and
/// that the local store's own effects of `stage_file`, `publish_staged`, `discard_staged` and
/// `append_verified` happened (the defaults only hash, cannot publish a staged temporary, leave
/// it behind, and stream through `get_stream`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooked_store_forwards_every_method_of_local_store() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = Arc::new(LocalStore::new(dir.path().join("root"))?);
    let (store, hook) = with_hook(local.clone(), Recorder::default());
    let mut seen = Vec::new();
    let mut expect_only = |name: &'static str| {
        assert_eq!(
            hook.take(),
            vec![format!("before {name}"), format!("after {name}")],
            "the wrapper forwarded `{name}` (and only it) to the wrapped store"
        );
        seen.push(name);
    };

    store
        .put(
            "jobs/a/x",
            Bytes::from_static(b"one"),
            WriteMode::CreateOnly,
        )
        .await?;
    expect_only("put");
    assert_eq!(local.get("jobs/a/x").await?, Bytes::from_static(b"one"));

    assert_eq!(store.get("jobs/a/x").await?, Bytes::from_static(b"one"));
    expect_only("get");

    let (bytes, version) = store
        .get_versioned("jobs/a/x")
        .await?
        .ok_or("the object exists")?;
    assert_eq!(bytes, Bytes::from_static(b"one"));
    expect_only("get_versioned");

    store
        .put_if("jobs/a/x", Bytes::from_static(b"two"), Some(&version))
        .await?;
    expect_only("put_if");
    assert_eq!(local.get("jobs/a/x").await?, Bytes::from_static(b"two"));

    let (size, chunks) = store.get_stream("jobs/a/x").await?;
    let streamed: Vec<u8> = chunks
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<rockpoint::Result<Vec<Bytes>>>()?
        .concat();
    assert_eq!((size, streamed.as_slice()), (3, b"two".as_slice()));
    expect_only("get_stream");

    assert_eq!(store.head("jobs/a/x").await?.map(|i| i.size), Some(3));
    expect_only("head");

    let source = dir.path().join("source");
    let hash = write_file(&source, &[7u8; 5000])?;
    let whole = shared_path(&hash);
    store.put_file(&whole, &source, 0, 5000, hash).await?;
    expect_only("put_file");
    assert_eq!(local.head(&whole).await?.map(|i| i.size), Some(5000));

    let listed: Vec<String> = store.list("").await?.into_iter().map(|o| o.path).collect();
    assert_eq!(listed, vec!["jobs/a/x".to_owned(), whole.clone()]);
    expect_only("list");

    // The local store stages by copying into a temporary file of the root and publishes by
    // linking it into place.
    let tail = write_file(&dir.path().join("tail"), &[7u8; 1000])?;
    let staged = store.stage_file(&source, 4000, 1000).await?;
    expect_only("stage_file");
    assert_eq!((staged.hash, staged.size), (tail, 1000));
    assert_eq!(
        temporaries(&local).await?.len(),
        1,
        "the local store's stage_file copied the bytes into a temporary file"
    );
    let published = shared_path(&tail);
    store.publish_staged(staged, &published).await?;
    expect_only("publish_staged");
    assert_eq!(local.head(&published).await?.map(|i| i.size), Some(1000));
    assert!(
        temporaries(&local).await?.is_empty(),
        "publishing linked the temporary file into place"
    );

    let staged = store.stage_file(&source, 0, 10).await?;
    expect_only("stage_file");
    assert_eq!(temporaries(&local).await?.len(), 1);
    store.discard_staged(staged).await?;
    expect_only("discard_staged");
    assert!(
        temporaries(&local).await?.is_empty(),
        "the local store's discard_staged removed the temporary file"
    );

    let target = dir.path().join("target");
    store
        .append_verified(&published, tail, 1000, &target, "a test object")
        .await?;
    expect_only("append_verified");
    assert_eq!(std::fs::read(&target)?, vec![7u8; 1000]);

    store.delete("jobs/a/x").await?;
    expect_only("delete");
    assert!(local.head("jobs/a/x").await?.is_none());

    assert!(
        store
            .sweep_incomplete(Duration::ZERO, SweepMode::Delete)
            .await?
            .is_empty()
    );
    expect_only("sweep_incomplete");

    assert_eq!(store.describe(), local.describe());
    assert!(
        hook.take().is_empty(),
        "describe is forwarded without a hook"
    );

    seen.sort();
    seen.dedup();
    let mut every = EVERY_OPERATION.to_vec();
    every.sort();
    assert_eq!(seen, every, "the test calls every operation of `Store`");
    Ok(())
}

/// An error from `before` refuses the operation (the wrapped store never sees it; a refused
/// `publish_staged` discards the staged copy); an error from `after` reports an applied operation
/// as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_errors_refuse_an_operation_or_make_it_ambiguous() -> TestResult {
    let dir = tempfile::tempdir()?;
    let local = Arc::new(LocalStore::new(dir.path().join("root"))?);
    let (store, hook) = with_hook(local.clone(), Recorder::default());

    *hook.refuse.lock().unwrap() = Some("put");
    let refused = store
        .put(
            "jobs/a/x",
            Bytes::from_static(b"one"),
            WriteMode::CreateOnly,
        )
        .await;
    assert!(refused.is_err());
    assert!(local.head("jobs/a/x").await?.is_none(), "never applied");
    assert_eq!(hook.take(), vec!["before put".to_owned()]);
    *hook.refuse.lock().unwrap() = None;

    *hook.ambiguous.lock().unwrap() = Some("put");
    let ambiguous = store
        .put(
            "jobs/a/x",
            Bytes::from_static(b"one"),
            WriteMode::CreateOnly,
        )
        .await;
    assert!(ambiguous.is_err());
    assert_eq!(
        local.get("jobs/a/x").await?,
        Bytes::from_static(b"one"),
        "applied"
    );
    *hook.ambiguous.lock().unwrap() = None;

    let source = dir.path().join("source");
    let hash = write_file(&source, &[1u8; 100])?;
    let staged = store.stage_file(&source, 0, 100).await?;
    assert_eq!(temporaries(&local).await?.len(), 1);
    *hook.refuse.lock().unwrap() = Some("publish_staged");
    assert!(
        store
            .publish_staged(staged, &shared_path(&hash))
            .await
            .is_err()
    );
    assert!(local.head(&shared_path(&hash)).await?.is_none());
    assert!(
        temporaries(&local).await?.is_empty(),
        "a refused publish leaves no temporary file"
    );
    Ok(())
}
