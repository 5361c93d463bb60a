//! The fuzz targets: how each record is mutated and what each execution runs and checks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rockpoint::canonical::CanonicalReader;
use rockpoint::{
    BackendHandle, CheckpointTicket, GcOptions, KeyGroupRange, RestoreSource, RestoreTarget, Store,
    SweepMode,
};

use crate::mutate::{self, Rng};
use crate::{Outcome, Target, fixture, measured};

/// A private copy of the seed root, and a single-threaded runtime: futures are polled on the
/// test's own thread, so the allocator counts their decoding (and not the store's blocking reads).
struct Root {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    rt: tokio::runtime::Runtime,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fixture::copy_tree(&fixture::get().root, &root).expect("copying the seed root");
        let store = crate::common::local_store(&root).expect("store");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Root { dir, store, rt }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Puts `bytes` at `object` as the filesystem would hold a damaged record.
    fn put(&self, object: &str, bytes: &[u8]) {
        std::fs::write(self.path().join(object), bytes).expect("writing a mutant");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Checkpoint metadata, restore planning and (sometimes) a restore.
// ---------------------------------------------------------------------------------------------

pub struct Metadata {
    root: Root,
    paths: [String; 2],
    rng: Rng,
    accepted: u64,
    restores: u64,
}

impl Metadata {
    pub fn new() -> Metadata {
        let f = fixture::get();
        Metadata {
            root: Root::new(),
            paths: [f.metadata_path.clone(), f.canonical_metadata_path.clone()],
            rng: Rng::new(7),
            accepted: 0,
            restores: 0,
        }
    }

    /// Restores one backend from the accepted metadata at `path` into a fresh parent directory,
    /// and checks that nothing but the target was written there.
    fn restore(
        &mut self,
        path: &str,
        key_groups: KeyGroupRange,
    ) -> Result<rockpoint::Result<()>, String> {
        self.restores += 1;
        let parents = self.root.dir.path().join("restores");
        let parent = parents.join(format!("p{}", self.restores));
        std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
        let target = RestoreTarget {
            dir: parent.join("t"),
            key_groups,
            settings: crate::common::settings(),
        };
        let store = self.root.store.clone();
        let source = RestoreSource::Metadata(path.to_owned());
        let result = self.root.rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                rockpoint::restore_backend(&*store, &source, &target, 2, None),
            )
            .await
        });
        let result = match result {
            Err(_) => return Err(format!("restore of `{path}` took more than 60 s")),
            Ok(result) => result.map(drop),
        };
        let mut found: Vec<String> = std::fs::read_dir(&parent)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        found.retain(|name| name != "t");
        let escaped = std::path::Path::new("/tmp/rockpoint-fuzz-escape").exists()
            || std::fs::read_dir(&parents).map(|d| d.count()).unwrap_or(0) != 1
            || self.root.dir.path().join("escape").exists();
        let _ = std::fs::remove_dir_all(&parents);
        if !found.is_empty() || escaped {
            return Err(format!(
                "restore of `{path}` ({:?}) wrote outside its target: {found:?} beside it{}",
                result.err().map(|e| e.to_string()),
                if escaped {
                    ", and outside its parent"
                } else {
                    ""
                }
            ));
        }
        Ok(result)
    }
}

impl Target for Metadata {
    fn name(&self) -> &'static str {
        "metadata"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        let f = fixture::get();
        vec![f.metadata.clone(), f.canonical_metadata.clone()]
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        mutate::sealed(rng, input, pool)
    }
    fn quick_executions(&self) -> u64 {
        20_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        // The record is decoded at both seed paths (the path is part of what it must describe).
        let mut decoded = Vec::new();
        let mut largest = 0;
        for path in self.paths.clone() {
            self.root.put(&path, input);
            let store = self.root.store.clone();
            let source = RestoreSource::Metadata(path.clone());
            let (result, bytes) = measured(|| {
                self.root
                    .rt
                    .block_on(rockpoint::restore::read_metadata(&*store, &source))
            });
            largest = largest.max(bytes);
            decoded.push((path, result));
        }
        let ok = decoded.iter().position(|(_, r)| r.is_ok());
        let Some(ok) = ok else {
            // The more telling rejection: not the path mismatch every other-path decode reports.
            let (_, result) = decoded
                .into_iter()
                .find(|(_, r)| {
                    !r.as_ref()
                        .is_err_and(|e| e.to_string().contains("not the checkpoint at this path"))
                })
                .unwrap_or_else(|| {
                    (
                        String::new(),
                        Err(rockpoint::Error::new(
                            rockpoint::ErrorKind::Invalid,
                            "both paths",
                        )),
                    )
                });
            return Outcome {
                result: result.map(|_| "decoded"),
                largest_allocation: Some(largest),
                violation: None,
                detail: None,
            };
        };
        let (path, result) = decoded.swap_remove(ok);
        let (_, metadata) = result.expect("decoded");
        self.accepted += 1;
        let handles: Vec<KeyGroupRange> = metadata.backends.iter().map(|b| b.key_groups).collect();
        let ranges = fixture::ranges_to_plan(metadata.max_parallelism, &handles);
        let mut planned = Vec::new();
        let mut stage = "decoded";
        let mut rejection = None;
        for range in &ranges {
            match rockpoint::restore::plan_restore(&metadata, *range) {
                Ok(_) => {
                    planned.push(*range);
                    stage = "planned";
                }
                Err(e) => rejection = Some(e),
            }
        }
        // A restore for one accepted mutant in 5 (and the first), at most 40 in the quick tier.
        let restore_due = self.accepted % 5 == 1
            && (self.restores < 40 || std::env::var_os("ROCKPOINT_FUZZ_SECS").is_some());
        if restore_due {
            let range = if planned.is_empty() || self.rng.chance(20) {
                *self.rng.pick(&ranges)
            } else {
                *self.rng.pick(&planned)
            };
            match self.restore(&path, range) {
                Err(violation) => {
                    return Outcome {
                        result: Ok("restored"),
                        largest_allocation: Some(largest),
                        violation: Some(violation),
                        detail: None,
                    };
                }
                Ok(Ok(())) => stage = "restored",
                Ok(Err(e)) => {
                    return Outcome {
                        result: Err(e),
                        largest_allocation: Some(largest),
                        violation: None,
                        detail: None,
                    };
                }
            }
        }
        let result = match (stage, rejection) {
            ("decoded", Some(e)) => Err(e),
            _ => Ok(stage),
        };
        Outcome {
            result,
            largest_allocation: Some(largest),
            violation: None,
            detail: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The job record, through `admin::job_record` and `admin::inspect_root`.
// ---------------------------------------------------------------------------------------------

pub struct JobRecordTarget {
    root: Root,
}

impl JobRecordTarget {
    pub fn new() -> JobRecordTarget {
        JobRecordTarget { root: Root::new() }
    }
}

impl Target for JobRecordTarget {
    fn name(&self) -> &'static str {
        "job_record"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![fixture::get().job_record.clone()]
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        mutate::sealed(rng, input, pool)
    }
    fn quick_executions(&self) -> u64 {
        25_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        let path = format!("jobs/{}/_job", fixture::JOB);
        self.root.put(&path, input);
        let store = self.root.store.clone();
        let (result, largest) = measured(|| {
            self.root
                .rt
                .block_on(rockpoint::admin::job_record(&*store, fixture::JOB))
        });
        let result = match result {
            Ok(None) => Ok("absent"),
            Ok(Some(_)) => {
                // A readable record: the root's view (which reads it with the metadata) too.
                match self
                    .root
                    .rt
                    .block_on(rockpoint::admin::inspect_root(&*store, None))
                {
                    Ok(_) => Ok("inspected"),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        Outcome {
            result,
            largest_allocation: Some(largest),
            violation: None,
            detail: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Pin records, through a dry-run GC pass.
// ---------------------------------------------------------------------------------------------

pub struct Pin {
    root: Root,
    path: String,
    before: Vec<String>,
}

impl Pin {
    pub fn new() -> Pin {
        let root = Root::new();
        let before = fixture::tree(&root.path());
        Pin {
            root,
            path: fixture::get().pins[0].0.clone(),
            before,
        }
    }
}

impl Target for Pin {
    fn name(&self) -> &'static str {
        "pin"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        fixture::get().pins.iter().map(|(_, b)| b.clone()).collect()
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        mutate::sealed(rng, input, pool)
    }
    fn quick_executions(&self) -> u64 {
        6_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        self.root.put(&self.path, input);
        let store = self.root.store.clone();
        let options = GcOptions {
            mode: SweepMode::DryRun,
            ..GcOptions::default()
        };
        let result = self
            .root
            .rt
            .block_on(rockpoint::collect_garbage(&*store, &options));
        let mut violation = None;
        let mut detail = None;
        let after = fixture::tree(&self.root.path());
        if after != self.before {
            violation = Some(format!(
                "a dry-run GC changed the root: before {:?}, after {:?}",
                self.before, after
            ));
        }
        let result = match result {
            Ok(report) => {
                let reported = report.unreadable.iter().any(|u| u.contains(&self.path));
                if !mutate::envelope_ok(input, b"RKPTPIN\0") && !reported {
                    violation.get_or_insert(format!(
                        "a damaged pin `{}` was not reported: unreadable {:?}",
                        self.path, report.unreadable
                    ));
                }
                detail = report
                    .unreadable
                    .iter()
                    .find(|u| u.contains(&self.path))
                    .map(|u| u.rsplit("`: ").next().unwrap_or(u).to_owned());
                if reported {
                    Ok("reported unreadable")
                } else {
                    Ok("read")
                }
            }
            Err(e) => Err(e),
        };
        Outcome {
            result,
            largest_allocation: None,
            violation,
            detail,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. The ticket and handle wire forms.
// ---------------------------------------------------------------------------------------------

pub struct Ticket;

impl Target for Ticket {
    fn name(&self) -> &'static str {
        "ticket"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![fixture::get().ticket.clone()]
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        mutate::sealed(rng, input, pool)
    }
    fn quick_executions(&self) -> u64 {
        150_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        let (result, largest) = measured(|| CheckpointTicket::from_bytes(input));
        let mut violation = None;
        if let Ok(ticket) = &result {
            // What was accepted encodes again and reads back the same.
            let again = ticket
                .to_bytes()
                .and_then(|b| CheckpointTicket::from_bytes(&b));
            match again {
                Ok(copy)
                    if (copy.job_id(), copy.checkpoint_id(), copy.kind())
                        == (ticket.job_id(), ticket.checkpoint_id(), ticket.kind()) => {}
                other => {
                    violation = Some(format!(
                        "an accepted ticket does not round-trip: {:?}",
                        other.err()
                    ))
                }
            }
        }
        Outcome {
            result: result.map(|_| "decoded"),
            largest_allocation: Some(largest),
            violation,
            detail: None,
        }
    }
}

pub struct Handle;

impl Target for Handle {
    fn name(&self) -> &'static str {
        "handle"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![fixture::get().handle.clone()]
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        mutate::sealed(rng, input, pool)
    }
    fn quick_executions(&self) -> u64 {
        150_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        let (result, largest) = measured(|| BackendHandle::from_bytes(input));
        let mut violation = None;
        if let Ok(handle) = &result {
            let again = handle
                .to_bytes()
                .and_then(|b| BackendHandle::from_bytes(&b));
            if again.as_ref().ok() != Some(handle) {
                violation = Some(format!(
                    "an accepted handle does not round-trip: {:?}",
                    again.err()
                ));
            }
        }
        Outcome {
            result: result.map(|_| "decoded"),
            largest_allocation: Some(largest),
            violation,
            detail: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. The canonical savepoint stream.
// ---------------------------------------------------------------------------------------------

pub struct Canonical;

impl Target for Canonical {
    fn name(&self) -> &'static str {
        "canonical"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        vec![fixture::get().canonical.clone()]
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        mutate::canonical(rng, input, pool, crate::common::MAX_PARALLELISM)
    }
    fn quick_executions(&self) -> u64 {
        80_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        let (result, largest) = measured(|| -> rockpoint::Result<(&'static str, u64)> {
            let mut reader = CanonicalReader::new(input)?;
            let mut entries = 0u64;
            while reader.next_entry()?.is_some() {
                entries += 1;
                assert!(entries <= input.len() as u64, "more entries than bytes");
            }
            Ok(("verified", reader.bytes_read()))
        });
        let violation = match &result {
            Ok((_, read)) if *read != input.len() as u64 => Some(format!(
                "a verified stream of {} bytes reports {read} bytes read",
                input.len()
            )),
            _ => None,
        };
        Outcome {
            result: result.map(|(stage, _)| stage),
            largest_allocation: Some(largest),
            violation,
            detail: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 6. The root marker (`rockpoint-root`, text), through `root_status` and a dry-run GC pass.
// ---------------------------------------------------------------------------------------------

/// What the CLI (every command) and GC (G0) read first. Mutated as text (lines dropped, doubled,
/// swapped; keys and values replaced with edge cases; line endings, padding around the 4 KiB
/// limit) and as bytes. Checks: the decoding allocates no more than the bound, an accepted marker
/// has a format version ≥ 1, a rejection is `Corruption`, and a dry-run GC over it agrees (refuses
/// a marker that is not one, typed) and changes nothing.
pub struct RootMarker {
    root: Root,
    before: Vec<String>,
    executions: u64,
}

const MARKER: &str = "rockpoint-root";

impl RootMarker {
    pub fn new() -> RootMarker {
        let root = Root::new();
        let before = fixture::tree(&root.path());
        RootMarker {
            root,
            before,
            executions: 0,
        }
    }
}

/// One text-level mutation of a marker (`key: value` lines after the magic line).
fn marker_text(rng: &mut Rng, data: &mut Vec<u8>) {
    const KEYS: [&str; 7] = [
        "format_version",
        "created_at_ms",
        "created_by",
        "rockpoint-root",
        " format_version ",
        "FORMAT_VERSION",
        "",
    ];
    const VALUES: [&str; 16] = [
        "0",
        "1",
        "2",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "+1",
        " 1 ",
        "1.0",
        "0x1",
        "",
        "١",
        "rockpoint 0.1.0\u{0}",
        "::",
    ];
    let text = String::from_utf8_lossy(data).into_owned();
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let n = lines.len();
    match rng.below(9) {
        0 if n > 1 => {
            lines.remove(rng.below(n));
        }
        1 => {
            let line = lines[rng.below(n)].clone();
            lines.insert(rng.below(n + 1), line);
        }
        2 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            lines.swap(a, b);
        }
        3 => {
            let line = format!("{}:{}", rng.pick(&KEYS), rng.pick(&VALUES));
            let at = rng.below(n + 1);
            lines.insert(at, line);
        }
        4 => {
            // Replace one value, keeping its key.
            let at = rng.below(n);
            let key = lines[at]
                .split_once(':')
                .map_or(lines[at].clone(), |(k, _)| k.to_owned());
            lines[at] = format!("{key}: {}", rng.pick(&VALUES));
        }
        5 => {
            // Line endings: CRLF, CR only, none.
            let ending = *rng.pick(&["\r\n", "\r", "", "\n\n"]);
            *data = lines.join(ending).into_bytes();
            return;
        }
        6 => {
            // Right at and around the size limit.
            let target = 4096 - 2 + rng.below(5);
            let mut out = lines.join("\n").into_bytes();
            out.extend_from_slice(b"\npadding: ");
            out.resize(target, b'y');
            *data = out;
            return;
        }
        7 => {
            // A long line of one value (no newline at all).
            let at = rng.below(n);
            lines[at].push_str(&"9".repeat(1 + rng.below(5000)));
        }
        _ => {
            let at = rng.below(n);
            lines[at] = lines[at].to_uppercase();
        }
    }
    *data = lines.join("\n").into_bytes();
}

impl Target for RootMarker {
    fn name(&self) -> &'static str {
        "root_marker"
    }
    fn seeds(&self) -> Vec<Vec<u8>> {
        // The marker the fixture's coordinator wrote at its claim, and one `mark_root` writes
        // into an empty store.
        let claimed =
            std::fs::read(fixture::get().root.join(MARKER)).expect("the seed root's marker");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::common::local_store(&dir.path().join("root")).expect("store");
        let marked = self.root.rt.block_on(async {
            rockpoint::admin::mark_root(&*store)
                .await
                .expect("mark_root");
            store.get(MARKER).await.expect("the marker").to_vec()
        });
        vec![claimed, marked]
    }
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
        let mut data = input.to_vec();
        for _ in 0..1 + rng.below(3) {
            if rng.chance(70) {
                marker_text(rng, &mut data);
            } else {
                mutate::bytes(rng, &mut data, pool);
            }
        }
        data
    }
    fn quick_executions(&self) -> u64 {
        20_000
    }
    fn execute(&mut self, input: &[u8]) -> Outcome {
        self.executions += 1;
        self.root.put(MARKER, input);
        let store = self.root.store.clone();
        let (status, largest) = measured(|| {
            self.root
                .rt
                .block_on(rockpoint::admin::root_status(&*store))
        });
        let mut violation = None;
        let result = match status {
            Ok(rockpoint::admin::RootStatus::Marked(marker)) => {
                if marker.format_version < 1 {
                    violation = Some(format!("accepted a marker of format version 0: {marker:?}"));
                }
                Ok("marked")
            }
            Ok(other) => {
                violation = Some(format!(
                    "a marker object was there, yet the root is {other:?}"
                ));
                Ok("not marked")
            }
            Err(e) => {
                if e.kind() != rockpoint::ErrorKind::Corruption {
                    violation = Some(format!("a bad marker rejected as {:?}: {e}", e.kind()));
                }
                Err(e)
            }
        };
        // GC reads the marker first (G0): it must agree, and a dry run changes nothing.
        if self.executions.is_multiple_of(16)
            || (result.is_err() && self.executions.is_multiple_of(4))
        {
            let options = GcOptions {
                mode: SweepMode::DryRun,
                ..GcOptions::default()
            };
            let gc = self
                .root
                .rt
                .block_on(rockpoint::collect_garbage(&*store, &options));
            match (&result, &gc) {
                (Ok(_), Err(e)) => {
                    violation.get_or_insert(format!(
                        "root_status accepted the marker, GC refused it: {e}"
                    ));
                }
                (Err(_), Ok(_)) => {
                    violation.get_or_insert("GC ran over a marker root_status refused".to_owned());
                }
                _ => {}
            }
            let after = fixture::tree(&self.root.path());
            if after != self.before {
                violation.get_or_insert(format!(
                    "a dry-run GC changed the root: before {:?}, after {:?}",
                    self.before, after
                ));
            }
        }
        Outcome {
            result,
            largest_allocation: Some(largest),
            violation,
            detail: None,
        }
    }
}
