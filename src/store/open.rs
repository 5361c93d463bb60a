//! Opening a root by URL: a local path or `file://` URL is a [`LocalStore`]; `s3://`, `gs://` and
//! `az://` URLs are an [`ObjectStoreStore`] over the matching `object_store` backend, configured as
//! `object_store` configures it (its `from_env` builders: `AWS_*`, `GOOGLE_*`, `AZURE_*`), with
//! [`RootOptions::config`] on top.

use std::sync::Arc;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::ObjectStore;
use object_store::multipart::MultipartStore;

/// An object store and its multipart API (the same store).
type Built = (Arc<dyn ObjectStore>, Arc<dyn MultipartStore>);

#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn both<T: ObjectStore + MultipartStore>(store: T) -> Built {
    let store = Arc::new(store);
    (store.clone(), store)
}

use super::{
    ContentHash, LocalStore, ObjectInfo, ObjectStoreStore, ObjectVersion, Staged, Store, SweepMode,
    WriteMode,
};
use crate::error::{Error, Result};

/// How [`open_root`] opens a root.
#[derive(Clone, Debug, Default)]
pub struct RootOptions {
    /// `object_store` configuration keys and values, applied over the environment: for S3
    /// `aws_endpoint`, `aws_region`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_allow_http`, …; for GCS `google_service_account`, …; for Azure
    /// `azure_storage_account_name`, …. An unknown key is an `Invalid` error.
    pub config: Vec<(String, String)>,
    /// Open for reading only: no startup probe (see [`ObjectStoreStore::probe`]), so
    /// credentials that may not write can inspect a root, and every write through the returned
    /// store (put, compare-and-swap, delete, a deleting sweep) fails with `Invalid`. For listing,
    /// showing and sizing a root, and for a GC dry run; not for restore or verify, which write
    /// reader pins.
    pub read_only: bool,
    /// Accept an object store that ignores conditional writes (it overwrites a create-only object
    /// or a stale compare-and-swap). Safe only if exactly one coordinator of each job and no
    /// concurrent GC ever write to the root: nothing fences a second writer (G7 is given up).
    pub single_writer: bool,
}

/// Opens the root at `url`: a local path (`/data/checkpoints`, `./ckpt`), `file:///data/checkpoints`,
/// `s3://bucket/prefix`, `gs://bucket/prefix` (feature `gcp`) or `az://container/prefix`
/// (feature `azure`; also `abfs://`, `abfss://`, `azure://`). A local root is created if missing;
/// an object-store root is probed (a create-only put must fail the second time, a compare-and-swap
/// from a stale version must fail, and a listing must show what was just written) and refused with
/// `Invalid` if it fails, unless [`RootOptions::single_writer`] accepts the overwriting store.
pub async fn open_root(url: &str, options: &RootOptions) -> Result<Arc<dyn Store>> {
    let Some((scheme, _)) = url.split_once("://") else {
        if !options.config.is_empty() {
            return Err(Error::invalid(format!(
                "root `{url}` is a local directory: object store options ({}) do not apply",
                option_names(options)
            )));
        }
        let local: Arc<dyn Store> = if options.read_only {
            let path = std::path::Path::new(url);
            if !path.is_dir() {
                return Err(Error::not_found(format!(
                    "root `{url}` is not a directory (a read-only open creates nothing)"
                )));
            }
            Arc::new(LocalStore::new(path)?)
        } else {
            Arc::new(LocalStore::new(url)?)
        };
        return Ok(read_only_if(local, options));
    };
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid(format!("root `{url}` is not a valid URL: {e}")))?;
    if scheme == "file" {
        let path = parsed
            .to_file_path()
            .map_err(|()| Error::invalid(format!("root `{url}`: not a local file URL")))?;
        return Box::pin(open_root(&path.to_string_lossy(), options)).await;
    }
    let (inner, multipart) = object_store_for(scheme, url, &parsed, options)?;
    let prefix = parsed.path().trim_matches('/');
    let store = ObjectStoreStore::new_unprobed(inner, prefix)
        .track_uploads(multipart)
        .single_writer(options.single_writer);
    if options.read_only {
        return Ok(read_only_if(Arc::new(store), options));
    }
    store.probe().await?;
    Ok(Arc::new(store))
}

fn read_only_if(store: Arc<dyn Store>, options: &RootOptions) -> Arc<dyn Store> {
    if options.read_only {
        Arc::new(ReadOnly(store))
    } else {
        store
    }
}

/// A store opened with [`RootOptions::read_only`]: reads pass, writes fail with `Invalid`.
#[derive(Debug)]
struct ReadOnly(Arc<dyn Store>);

impl ReadOnly {
    fn refuse<T>(&self, what: &str, path: &str) -> Result<T> {
        Err(Error::invalid(format!(
            "{what} `{path}`: root {} was opened read-only",
            self.0.describe()
        )))
    }
}

#[async_trait::async_trait]
impl Store for ReadOnly {
    async fn put(&self, path: &str, _data: Bytes, _mode: WriteMode) -> Result<()> {
        self.refuse("writing", path)
    }

    async fn put_file(
        &self,
        path: &str,
        _file: &Path,
        _offset: u64,
        _len: u64,
        _expected: ContentHash,
    ) -> Result<()> {
        self.refuse("uploading", path)
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        self.0.get(path).await
    }

    async fn get_versioned(&self, path: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        self.0.get_versioned(path).await
    }

    async fn put_if(
        &self,
        path: &str,
        _data: Bytes,
        _expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion> {
        self.refuse("writing", path)
    }

    async fn get_stream(&self, path: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        self.0.get_stream(path).await
    }

    async fn head(&self, path: &str) -> Result<Option<ObjectInfo>> {
        self.0.head(path).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.refuse("deleting", path)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.0.list(prefix).await
    }

    async fn sweep_incomplete(&self, older_than: Duration, mode: SweepMode) -> Result<Vec<String>> {
        match mode {
            SweepMode::DryRun => self.0.sweep_incomplete(older_than, mode).await,
            SweepMode::Delete => self.refuse("sweeping", "incomplete writes"),
        }
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn stage_file(&self, file: &Path, _offset: u64, _len: u64) -> Result<Staged> {
        self.refuse("staging", &file.display().to_string())
    }

    async fn publish_staged(&self, _staged: Staged, path: &str) -> Result<()> {
        self.refuse("publishing", path)
    }

    async fn append_verified(
        &self,
        path: &str,
        expected: ContentHash,
        size: u64,
        target: &Path,
        label: &str,
    ) -> Result<()> {
        self.0
            .append_verified(path, expected, size, target, label)
            .await
    }
}

fn option_names(options: &RootOptions) -> String {
    options
        .config
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn object_store_for(
    scheme: &str,
    url: &str,
    parsed: &url::Url,
    options: &RootOptions,
) -> Result<Built> {
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(format!(
            "root `{url}` names no bucket (write {scheme}://BUCKET/PREFIX)"
        )));
    }
    let built = match scheme {
        "s3" | "s3a" => s3(url, options)?,
        "gs" => gcs(url, options)?,
        "az" | "abfs" | "abfss" | "azure" | "adl" => azure(url, options)?,
        other => {
            return Err(Error::invalid(format!(
                "root `{url}`: unknown scheme `{other}` (use a path, file://, s3://, gs:// or az://)"
            )));
        }
    };
    Ok(built)
}

#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
fn config_error(url: &str, e: object_store::Error) -> Error {
    Error::invalid(format!("root `{url}`: {e}"))
}

#[cfg(any(feature = "aws", feature = "gcp", feature = "azure"))]
/// Applies `options.config` through `with`, naming an unknown key.
fn configure<B, K: std::str::FromStr>(
    url: &str,
    mut builder: B,
    options: &RootOptions,
    with: impl Fn(B, K, &str) -> B,
) -> Result<B> {
    for (key, value) in &options.config {
        let key_parsed = K::from_str(&key.to_ascii_lowercase()).map_err(|_| {
            Error::invalid(format!("root `{url}`: unknown object store option `{key}`"))
        })?;
        builder = with(builder, key_parsed, value);
    }
    Ok(builder)
}

#[cfg(feature = "aws")]
fn s3(url: &str, options: &RootOptions) -> Result<Built> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let builder = AmazonS3Builder::from_env().with_url(url);
    let builder = configure(url, builder, options, |b, k: AmazonS3ConfigKey, v| {
        b.with_config(k, v)
    })?;
    Ok(both(builder.build().map_err(|e| config_error(url, e))?))
}

#[cfg(not(feature = "aws"))]
fn s3(url: &str, _options: &RootOptions) -> Result<Built> {
    Err(missing_feature(url, "aws"))
}

#[cfg(feature = "gcp")]
fn gcs(url: &str, options: &RootOptions) -> Result<Built> {
    use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
    let builder = GoogleCloudStorageBuilder::from_env().with_url(url);
    let builder = configure(url, builder, options, |b, k: GoogleConfigKey, v| {
        b.with_config(k, v)
    })?;
    Ok(both(builder.build().map_err(|e| config_error(url, e))?))
}

#[cfg(not(feature = "gcp"))]
fn gcs(url: &str, _options: &RootOptions) -> Result<Built> {
    Err(missing_feature(url, "gcp"))
}

#[cfg(feature = "azure")]
fn azure(url: &str, options: &RootOptions) -> Result<Built> {
    use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
    let builder = MicrosoftAzureBuilder::from_env().with_url(url);
    let builder = configure(url, builder, options, |b, k: AzureConfigKey, v| {
        b.with_config(k, v)
    })?;
    Ok(both(builder.build().map_err(|e| config_error(url, e))?))
}

#[cfg(not(feature = "azure"))]
fn azure(url: &str, _options: &RootOptions) -> Result<Built> {
    Err(missing_feature(url, "azure"))
}

#[cfg(not(all(feature = "aws", feature = "gcp", feature = "azure")))]
fn missing_feature(url: &str, feature: &str) -> Error {
    Error::invalid(format!(
        "root `{url}` needs rockpoint's `{feature}` feature, which this build does not have"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(url: &str, options: &RootOptions) -> String {
        let rt = tokio::runtime::Runtime::new().unwrap();
        match rt.block_on(open_root(url, options)) {
            Ok(store) => panic!("`{url}` opened as {}", store.describe()),
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::Invalid, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn bad_root_urls_are_refused_with_what_is_wrong() {
        let none = RootOptions::default();
        assert!(invalid("ftp://host/x", &none).contains("unknown scheme `ftp`"));
        assert!(invalid("s3:///prefix", &none).contains("names no bucket"));
        let unknown = RootOptions {
            config: vec![("aws_colour".into(), "blue".into())],
            ..RootOptions::default()
        };
        assert!(
            invalid("s3://bucket/p", &unknown).contains("unknown object store option `aws_colour`")
        );
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("root").to_string_lossy().into_owned();
        let with_s3_options = RootOptions {
            config: vec![("aws_region".into(), "x".into())],
            ..RootOptions::default()
        };
        assert!(invalid(&local, &with_s3_options).contains("do not apply"));
    }

    #[test]
    fn a_path_and_a_file_url_open_the_same_local_root() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = dir.path().join("root");
        let url = url::Url::from_file_path(&path).unwrap().to_string();
        let by_url = rt
            .block_on(open_root(&url, &RootOptions::default()))
            .unwrap();
        let by_path = rt
            .block_on(open_root(&path.to_string_lossy(), &RootOptions::default()))
            .unwrap();
        assert_eq!(by_url.describe(), by_path.describe());
        assert!(path.is_dir());
    }
}
