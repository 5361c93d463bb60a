//! The S3 report (`--s3`): checkpoints and restores against a real S3 server — SeaweedFS
//! (`weed mini`) on loopback, started by the tests' harness (`tests/common/s3.rs`) — versus the
//! floor of the same bytes moved with plain parallel `object_store` puts and gets, with the
//! requests of each checkpoint and restore counted by kind, and the peak RSS of one large upload
//! (measured in a child process of its own, so nothing before it raised the peak).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use rockpoint::format::ContentHash;
use rockpoint::{
    BackendHandle, CheckpointCoordinator, CheckpointMetadata, CheckpointSettings, ObjectStoreStore,
    RestoreSource, RestoreTarget, Store,
};
use rockpoint_bench::{BenchState, bench_dir, drop_page_cache, human};

use crate::counting::{Counting, Requests};
use crate::s3server::s3::{BUCKET, S3Server};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxResult<T> = Result<T, BoxError>;

/// rockpoint's part size for files of the sizes measured here (`src/store/object.rs`,
/// `PART_BYTES`): files up to it go up in one PUT, larger ones as multipart uploads of such parts
/// and come back as ranged GETs of it.
const PART_BYTES: u64 = 8 << 20;
/// Parts (or ranges) of one file in flight at once (`PART_CONCURRENCY` there).
const PART_CONCURRENCY: usize = 4;

/// What the S3 report runs.
pub struct S3Args {
    /// States checkpointed in full, then at each rate, then restored.
    pub sizes: Vec<(String, u64)>,
    pub rates: Vec<f64>,
    pub cycles: usize,
    /// A state checkpointed in full and restored only (no change cycles).
    pub restore_size: Option<(String, u64)>,
    /// Restores per state, alternating with the floor.
    pub restores: usize,
    /// The single-file upload whose peak RSS is measured in a child process.
    pub upload_size: Option<(String, u64)>,
}

/// One checkpoint measured against its floor.
#[derive(Clone, Debug, Default)]
struct Sample {
    time: Duration,
    bytes: u64,
    floor_time: Duration,
    floor_bytes: u64,
    requests: Requests,
}

impl Sample {
    fn throughput(&self) -> f64 {
        mib_per_sec(self.bytes, self.time)
    }
    fn floor_throughput(&self) -> f64 {
        mib_per_sec(self.floor_bytes, self.floor_time)
    }
}

struct Row {
    size_label: String,
    what: String,
    samples: Vec<Sample>,
}

/// The peak RSS of one upload (from the child process).
struct Upload {
    label: String,
    bytes: u64,
    time: Duration,
    floor_time: Duration,
    rss_before: u64,
    peak: u64,
    reset: bool,
}

fn mib_per_sec(bytes: u64, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        bytes as f64 / (1 << 20) as f64 / time.as_secs_f64()
    }
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// A plain `object_store` S3 client for the test server, configured like the library's roots, as
/// an object store and as its multipart API.
fn raw_stores(server: &S3Server) -> BoxResult<(Arc<dyn ObjectStore>, Arc<dyn MultipartStore>)> {
    let mut builder = AmazonS3Builder::new().with_url(format!("s3://{BUCKET}"));
    for (key, value) in server.options().config {
        let key: AmazonS3ConfigKey = key.parse()?;
        builder = builder.with_config(key, value);
    }
    let store = Arc::new(builder.build()?);
    Ok((store.clone(), store))
}

fn raw_store(server: &S3Server) -> BoxResult<Arc<dyn ObjectStore>> {
    Ok(raw_stores(server)?.0)
}

fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:x}-{}", nanos, std::process::id())
}

/// Runs the report; returns its markdown.
pub fn run(runtime: &tokio::runtime::Runtime, args: &S3Args) -> BoxResult<String> {
    let server = S3Server::get();
    eprintln!(
        "S3 server: SeaweedFS {} at {}",
        server.version, server.endpoint
    );
    let (raw, raw_multipart) = raw_stores(server)?;
    let parallelism = CheckpointSettings::default().transfer_parallelism;
    let mut rows = Vec::new();
    let mut restores = Vec::new();
    let mut plan: Vec<(String, u64, bool)> = args
        .sizes
        .iter()
        .map(|(label, size)| (label.clone(), *size, true))
        .collect();
    if let Some((label, size)) = &args.restore_size {
        plan.push((label.clone(), *size, false));
    }
    for (label, size, cycles) in plan {
        let dir = tempfile::tempdir_in(bench_dir())?;
        eprintln!("building {label} of state…");
        let mut state = BenchState::build(dir.path(), size);
        let counting = Counting::new(raw.clone(), raw_multipart.clone());
        let prefix = format!("bench-{}", nonce());
        // As `open_root` builds an S3 root (probed, uploads tracked), over the counting client.
        let store: Arc<dyn Store> = Arc::new(
            runtime
                .block_on(ObjectStoreStore::new(Arc::new(counting.clone()), &prefix))?
                .track_uploads(Arc::new(counting.clone())),
        );
        let coordinator = runtime.block_on(CheckpointCoordinator::open(
            store.clone(),
            "bench",
            CheckpointSettings::default(),
        ))?;
        let mut previous: Option<Arc<CheckpointMetadata>> = None;
        let floor_prefix = format!("{prefix}-floor");
        let mut measure = |state: &BenchState, floor_first: bool| -> BoxResult<Sample> {
            let files = new_ssts(&state.db_dir(), previous.as_deref());
            let floor_bytes: u64 = files.iter().map(|(_, len)| len).sum();
            let mut sample = Sample {
                floor_bytes,
                ..Sample::default()
            };
            let floor = |sample: &mut Sample| -> BoxResult<()> {
                let start = Instant::now();
                let written =
                    runtime.block_on(floor_upload(&raw, &floor_prefix, &files, parallelism))?;
                sample.floor_time = start.elapsed();
                runtime.block_on(delete_all(&raw, written))?;
                Ok(())
            };
            if floor_first {
                floor(&mut sample)?;
            }
            let before = counting.requests();
            let done = runtime.block_on(coordinator.checkpoint(&[&state.backend]))?;
            sample.requests = counting.requests() - before;
            sample.time = done.duration;
            sample.bytes = done.uploaded_bytes();
            if !floor_first {
                floor(&mut sample)?;
            }
            previous = Some(done.metadata.clone());
            Ok(sample)
        };
        eprintln!("{label}: full checkpoint");
        let full = measure(&state, false)?;
        rows.push(Row {
            size_label: label.clone(),
            what: "first (full)".into(),
            samples: vec![full],
        });
        if cycles {
            for &rate in &args.rates {
                let mut samples = Vec::new();
                for i in 0..args.cycles {
                    eprintln!(
                        "{label} {:.0}% cycle {}/{}",
                        rate * 100.0,
                        i + 1,
                        args.cycles
                    );
                    state.change_and_flush(rate);
                    state.quiesce();
                    samples.push(measure(&state, i % 2 == 1)?);
                }
                rows.push(Row {
                    size_label: label.clone(),
                    what: format!("{}% change", rate * 100.0),
                    samples,
                });
            }
        }
        let latest = coordinator.latest().expect("a checkpoint");
        let mut samples = Vec::new();
        for i in 0..args.restores {
            eprintln!("{label}: restore {}/{}", i + 1, args.restores);
            samples.push(runtime.block_on(restore_vs_floor(
                &*store,
                &counting,
                &raw,
                &prefix,
                &latest,
                &dir.path().join(format!("restore-{i}")),
                parallelism,
                i % 2 == 1,
            ))?);
        }
        restores.push(Row {
            size_label: label.clone(),
            what: "restore".into(),
            samples,
        });
        drop(coordinator);
        drop(state);
        // Free the server's disk for the next size (untimed).
        runtime.block_on(delete_prefix(&raw, &prefix))?;
    }
    let upload = match &args.upload_size {
        Some((label, size)) => {
            // The file, rockpoint's object and the floor's (the server frees deleted space only
            // when it vacuums), with 2 GiB to spare; else 2 GiB, said in the report.
            let free = free_bytes(&bench_dir());
            let (label, size) = if free < 3 * size + (2 << 30) && *size > 2 << 30 {
                eprintln!(
                    "only {} free under {}: uploading 2 GiB instead of {label}",
                    human(free),
                    bench_dir().display()
                );
                (
                    format!("2GiB (reduced from {label}: {} free)", human(free)),
                    2 << 30,
                )
            } else {
                (label.clone(), *size)
            };
            Some(upload_in_child(server, &label, size)?)
        }
        None => None,
    };
    Ok(render(args, server, &rows, &restores, upload.as_ref()))
}

/// Bytes available on the file system of `dir` (`df`), or 0 if unknown.
fn free_bytes(dir: &Path) -> u64 {
    std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The SSTs in `db` that `previous` does not hold (what a checkpoint after it uploads).
fn new_ssts(db: &Path, previous: Option<&CheckpointMetadata>) -> Vec<(PathBuf, u64)> {
    let known: std::collections::HashSet<&str> = previous
        .map(|p| {
            p.backends
                .iter()
                .flat_map(|b| b.shared_files.iter().map(|f| f.local_name.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(db)
        .expect("db dir")
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.ends_with(".sst") && !known.contains(name.as_str()))
                .then(|| (e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        })
        .collect();
    files.sort();
    files
}

/// Reads up to `want` bytes from `file` off the async threads (as rockpoint's uploads do).
async fn read_chunk(file: std::fs::File, want: usize) -> BoxResult<(std::fs::File, Vec<u8>)> {
    Ok(tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = file;
        let mut buf = vec![0u8; want];
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok::<_, std::io::Error>((file, buf))
    })
    .await??)
}

/// The floor of one file: one PUT up to [`PART_BYTES`], else a multipart upload of such parts with
/// [`PART_CONCURRENCY`] in flight.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    location: &ObjectPath,
    file: &Path,
    len: u64,
) -> BoxResult<()> {
    let mut source = std::fs::File::open(file)?;
    if len <= PART_BYTES {
        let (_, data) = read_chunk(source, len as usize).await?;
        store.put(location, Bytes::from(data).into()).await?;
        return Ok(());
    }
    let upload = store.put_multipart(location).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES as usize);
    let mut sent = 0u64;
    while sent < len {
        writer.wait_for_capacity(PART_CONCURRENCY).await?;
        let want = (len - sent).min(PART_BYTES) as usize;
        let (rest, chunk) = read_chunk(source, want).await?;
        source = rest;
        if chunk.is_empty() {
            break;
        }
        sent += chunk.len() as u64;
        writer.put(Bytes::from(chunk));
    }
    writer.finish().await?;
    Ok(())
}

/// The checkpoint floor: `files` uploaded under `prefix`, `parallelism` files at once. Returns the
/// objects written.
async fn floor_upload(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    files: &[(PathBuf, u64)],
    parallelism: usize,
) -> BoxResult<Vec<ObjectPath>> {
    stream::iter(files.iter().map(|(file, len)| async move {
        let name = file.file_name().expect("a file name").to_string_lossy();
        let location = ObjectPath::from(format!("{prefix}/{name}"));
        upload_file(store, &location, file, *len).await?;
        Ok::<_, BoxError>(location)
    }))
    .buffer_unordered(parallelism)
    .try_collect()
    .await
}

async fn delete_all(store: &Arc<dyn ObjectStore>, objects: Vec<ObjectPath>) -> BoxResult<()> {
    let stream = stream::iter(objects.into_iter().map(Ok)).boxed();
    store.delete_stream(stream).try_collect::<Vec<_>>().await?;
    Ok(())
}

async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &str) -> BoxResult<()> {
    let objects: Vec<ObjectPath> = store
        .list(Some(&ObjectPath::from(prefix)))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    delete_all(store, objects).await
}

/// The stored objects a restore of `handle` reads: (key in the bucket, size).
fn restore_objects(prefix: &str, handle: &BackendHandle) -> Vec<(ObjectPath, u64)> {
    let shared = |hash: &ContentHash, size: u64| {
        let hex = hash.to_hex();
        (
            ObjectPath::from(format!("{prefix}/shared/{}/{hex}", &hex[..2])),
            size,
        )
    };
    let mut objects: Vec<(ObjectPath, u64)> = handle
        .shared_files
        .iter()
        .map(|f| shared(&f.hash, f.size))
        .collect();
    for log in &handle.log_files {
        objects.extend(log.segments.iter().map(|s| shared(&s.hash, s.size)));
    }
    objects.extend(
        handle
            .private_files
            .iter()
            .map(|f| (ObjectPath::from(format!("{prefix}/{}", f.path)), f.size)),
    );
    objects
}

/// The restore floor: `objects` downloaded into files of `dir`, `parallelism` files at once, a
/// file larger than [`PART_BYTES`] as ranged GETs of it with [`PART_CONCURRENCY`] in flight
/// (appended in order), each file then fsynced, and the directory.
async fn floor_download(
    store: &Arc<dyn ObjectStore>,
    objects: &[(ObjectPath, u64)],
    dir: &Path,
    parallelism: usize,
) -> BoxResult<()> {
    use tokio::io::AsyncWriteExt;
    std::fs::create_dir_all(dir)?;
    stream::iter(objects.iter().enumerate().map(|(i, (location, size))| {
        let target = dir.join(format!("{i}"));
        async move {
            let mut file = tokio::fs::File::create(&target).await?;
            if *size <= PART_BYTES {
                let mut chunks = store.get(location).await?.into_stream();
                while let Some(chunk) = chunks.next().await {
                    file.write_all(&chunk?).await?;
                }
            } else {
                let ranges = (0..*size)
                    .step_by(PART_BYTES as usize)
                    .map(|start| start..(start + PART_BYTES).min(*size));
                let mut parts = stream::iter(ranges)
                    .map(|range| store.get_range(location, range))
                    .buffered(PART_CONCURRENCY);
                while let Some(part) = parts.next().await {
                    file.write_all(&part?).await?;
                }
            }
            file.sync_all().await?;
            Ok::<_, BoxError>(())
        }
    }))
    .buffer_unordered(parallelism)
    .try_collect::<Vec<()>>()
    .await?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// One restore of `latest` (download, BLAKE3 verification of every byte, RocksDB open) and one
/// floor download of the very same objects, each after dropping the page cache where allowed.
#[allow(clippy::too_many_arguments)]
async fn restore_vs_floor(
    store: &dyn Store,
    counting: &Counting,
    raw: &Arc<dyn ObjectStore>,
    prefix: &str,
    latest: &CheckpointMetadata,
    dir: &Path,
    parallelism: usize,
    floor_first: bool,
) -> BoxResult<Sample> {
    let handle = &latest.backends[0];
    let objects = restore_objects(prefix, handle);
    let mut sample = Sample {
        bytes: handle.full_size_bytes(),
        floor_bytes: objects.iter().map(|(_, size)| size).sum(),
        ..Sample::default()
    };
    let floor_dir = dir.with_extension("floor");
    for step in 0..2 {
        drop_page_cache();
        if (step == 0) == floor_first {
            let start = Instant::now();
            floor_download(raw, &objects, &floor_dir, parallelism).await?;
            sample.floor_time = start.elapsed();
            std::fs::remove_dir_all(&floor_dir)?;
        } else {
            let before = counting.requests();
            let start = Instant::now();
            let restored = rockpoint::restore_backend(
                store,
                &RestoreSource::Metadata(latest.metadata_path()),
                &RestoreTarget {
                    dir: dir.to_path_buf(),
                    key_groups: handle.key_groups,
                    settings: rockpoint_bench::settings(),
                },
                parallelism,
                None,
            )
            .await?;
            sample.time = start.elapsed();
            sample.requests = counting.requests() - before;
            drop(restored);
            std::fs::remove_dir_all(dir)?;
        }
    }
    Ok(sample)
}

/// Runs this program again as `--s3-upload-child SIZE --s3-endpoint …` against the same server and
/// reads its result line.
fn upload_in_child(server: &S3Server, label: &str, size: u64) -> BoxResult<Upload> {
    eprintln!("{label} upload in a child process (peak RSS)…");
    let output = std::process::Command::new(std::env::current_exe()?)
        .arg("--s3-upload-child")
        .arg(size.to_string())
        .arg("--s3-endpoint")
        .arg(&server.endpoint)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("the upload child failed: {}", output.status).into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("upload "))
        .ok_or("the upload child printed no result")?;
    let field = |name: &str| -> BoxResult<u64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("no `{name}` in `{line}`"))?
            .parse()
            .map_err(Into::into)
    };
    Ok(Upload {
        label: label.to_owned(),
        bytes: field("bytes")?,
        time: Duration::from_micros(field("time_us")?),
        floor_time: Duration::from_micros(field("floor_us")?),
        rss_before: field("rss_before")?,
        peak: field("peak")?,
        reset: field("reset")? == 1,
    })
}

/// The child: writes a `size`-byte file of incompressible bytes, then `Store::put_file` of it to a
/// fresh root on the server at `endpoint` opened with `open_root`, and prints the peak RSS
/// (`VmHWM`) of this process; then the floor (a plain multipart upload of the same file). Both
/// objects are deleted afterwards.
pub fn upload_child(runtime: &tokio::runtime::Runtime, size: u64, endpoint: &str) -> BoxResult<()> {
    use std::io::Write;
    let server = S3Server {
        endpoint: endpoint.to_owned(),
        version: String::new(),
    };
    let dir = tempfile::tempdir_in(bench_dir())?;
    let path = dir.path().join("big");
    // 1 MiB at a time, so writing the file does not raise the peak the upload is measured by.
    let hash = {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut hasher = blake3::Hasher::new();
        let mut rng = 0x0B16_F11E_u64 | 1;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rockpoint_bench::fill_random(&mut rng, &mut buf[..n]);
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        ContentHash::from(hasher.finalize())
    };
    let prefix = format!("upload-{}", nonce());
    let raw = raw_store(&server)?;
    // The root as a user opens it.
    let store = runtime.block_on(rockpoint::open_root(
        &format!("s3://{BUCKET}/{prefix}"),
        &server.options(),
    ))?;
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = rockpoint_bench::rss_bytes();
    let start = Instant::now();
    runtime.block_on(store.put_file("big/object", &path, 0, size, hash))?;
    let time = start.elapsed();
    let peak = rockpoint_bench::peak_rss_bytes();
    runtime.block_on(store.delete("big/object"))?;
    let floor_location = ObjectPath::from(format!("{prefix}/floor"));
    let start = Instant::now();
    runtime.block_on(upload_file(&raw, &floor_location, &path, size))?;
    let floor = start.elapsed();
    runtime.block_on(delete_all(&raw, vec![floor_location]))?;
    println!(
        "upload bytes={size} time_us={} floor_us={} rss_before={rss_before} peak={peak} reset={}",
        time.as_micros(),
        floor.as_micros(),
        u64::from(reset),
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Mean per sample of one request kind, without a trailing `.0`.
fn mean(samples: &[Sample], f: impl Fn(&Requests) -> u64) -> String {
    let n = samples.len().max(1) as f64;
    let m = samples.iter().map(|s| f(&s.requests)).sum::<u64>() as f64 / n;
    if m.fract() == 0.0 {
        format!("{m:.0}")
    } else {
        format!("{m:.1}")
    }
}

fn render(
    args: &S3Args,
    server: &S3Server,
    rows: &[Row],
    restores: &[Row],
    upload: Option<&Upload>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# S3 (SeaweedFS {} `weed mini` on loopback)\n\n\
         rockpoint versus the floor: the same files moved with plain `object_store` 0.14 calls, \
         {} files at once (`CheckpointSettings::transfer_parallelism`), files over 8 MiB as \
         multipart uploads / ranged GETs of 8 MiB parts, {} in flight per file (rockpoint's \
         `PART_BYTES`, `PART_CONCURRENCY`). Medians of {} cycles per change rate; `ratio` is the \
         median of the per-cycle throughput ratios rockpoint/floor (≥ 0.90 is the goal). \
         Requests are means per checkpoint or restore.\n",
        server.version,
        CheckpointSettings::default().transfer_parallelism,
        PART_CONCURRENCY,
        args.cycles
    );
    let _ = writeln!(
        out,
        "## Checkpoints (flushed deltas; floor = the new SSTs)\n"
    );
    let _ = writeln!(
        out,
        "| state | checkpoint | uploaded | rockpoint | MiB/s | floor bytes | floor | MiB/s | ratio | PUT (parts) | multipart uploads | GET | HEAD | LIST | DELETE | total requests |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        write_row(&mut out, row);
    }
    let _ = writeln!(
        out,
        "\n## Restore of the latest checkpoint (download + BLAKE3 verification + RocksDB open; floor = GETs of the same objects into files + fsync), page cache dropped before each\n"
    );
    let _ = writeln!(
        out,
        "| state | what | restored bytes | rockpoint | MiB/s | floor bytes | floor | MiB/s | ratio | PUT (parts) | multipart uploads | GET | HEAD | LIST | DELETE | total requests |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in restores {
        write_row(&mut out, row);
    }
    if let Some(u) = upload {
        let _ = writeln!(
            out,
            "\n## Peak memory of one large upload (`Store::put_file` to a root opened with `open_root`, in a process of its own)\n\n\
             | file | rockpoint | MiB/s | floor | MiB/s | ratio | RSS before | peak RSS (VmHWM) |\n\
             |---|---|---|---|---|---|---|---|"
        );
        let (a, b) = (
            mib_per_sec(u.bytes, u.time),
            mib_per_sec(u.bytes, u.floor_time),
        );
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {a:.0} | {} | {b:.0} | {:.2}× | {} | {}{} |",
            u.label,
            human(u.bytes),
            ms(u.time),
            ms(u.floor_time),
            a / b,
            human(u.rss_before),
            human(u.peak),
            if u.reset {
                " (peak reset before the upload)"
            } else {
                " (process peak)"
            },
        );
    }
    out
}

fn write_row(out: &mut String, row: &Row) {
    let s = &row.samples;
    let med = |f: &dyn Fn(&Sample) -> Duration| -> Duration {
        let mut v: Vec<Duration> = s.iter().map(f).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let mean_bytes = |f: &dyn Fn(&Sample) -> u64| -> u64 {
        s.iter().map(f).sum::<u64>() / s.len().max(1) as u64
    };
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {:.0} | {} | {} | {:.0} | {:.2}× | {} ({}) | {} | {} | {} | {} | {} | {} |",
        row.size_label,
        row.what,
        human(mean_bytes(&|x| x.bytes)),
        ms(med(&|x| x.time)),
        median_f64(s.iter().map(Sample::throughput).collect()),
        human(mean_bytes(&|x| x.floor_bytes)),
        ms(med(&|x| x.floor_time)),
        median_f64(s.iter().map(Sample::floor_throughput).collect()),
        median_f64(
            s.iter()
                .map(|x| x.throughput() / x.floor_throughput().max(f64::MIN_POSITIVE))
                .collect()
        ),
        mean(s, Requests::puts),
        mean(s, |r| r.part),
        mean(s, |r| r.multipart),
        mean(s, |r| r.get),
        mean(s, |r| r.head),
        mean(s, |r| r.list),
        mean(s, |r| r.delete),
        mean(s, Requests::total),
    );
}
