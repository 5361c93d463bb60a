//! A1–A4 of `docs/protocols.md`, on a blocking thread: hard-link the recorded files into staging,
//! trim the logs to complete records and chain their segments, open the staged image read-only to
//! learn exactly which SSTs it references, and hash the SSTs this DB instance has not hashed yet.

use super::*;

/// An SST the MANIFEST prefix references, with its hash if this DB instance hashed it before.
pub(super) struct LiveSst {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    pub(super) cached: Option<ContentHash>,
}

/// What the blocking part of the asynchronous phase (A1–A4) prepared.
pub(super) struct Prepared {
    pub(super) ssts: Vec<LiveSst>,
    pub(super) log_files: Vec<LogFile>,
    pub(super) shipments: Vec<Shipment>,
    pub(super) options: Option<(String, PathBuf, ContentHash, u64)>,
}

/// What A1 linked into staging.
pub(super) struct Linked {
    pub(super) ssts: Vec<String>,
    pub(super) wals: Vec<RecordedLog>,
    pub(super) options: Option<String>,
}

pub(super) struct PrepareJob {
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    pub(super) faults: crate::faults::FaultRegistry,
    pub(super) backend: Arc<Engine>,
    pub(super) manifest: RecordedLog,
    pub(super) wals: Vec<RecordedLog>,
    pub(super) ssts: Vec<String>,
    pub(super) options_file: Option<String>,
}

impl PrepareJob {
    /// A1–A4 on a blocking thread.
    pub(super) fn prepare(self, staging: PathBuf) -> Result<Prepared> {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| Error::io("clearing stale staging directory", &staging, e))?;
        }
        let image = staging.join("image");
        let logs = staging.join("logs");
        for dir in [&image, &logs] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("creating staging directory", dir, e))?;
        }
        let linked = self.link_recorded(&staging, &image, &logs)?;
        let (log_files, shipments, manifest_len) = self.chain_logs(&logs, &linked.wals)?;
        let live = self.live_ssts(&staging, &image, &logs, manifest_len, &linked.ssts)?;

        // A4 for SSTs: hashes known to this DB instance come from the cache; new SSTs are read,
        // hashed and staged in one pass by the upload.
        crate::failpoint_sync!(self.faults, "snapshot::before_hash");
        let mut ssts = Vec::with_capacity(live.len());
        for name in &live {
            let path = image.join(name);
            let size = std::fs::metadata(&path)
                .map_err(|e| Error::io("inspecting", &path, e))?
                .len();
            let cached = self.backend.cached_sst_hash(name, size);
            ssts.push(LiveSst {
                name: name.clone(),
                path,
                size,
                cached,
            });
        }
        let options = match linked.options {
            Some(name) => {
                let path = staging.join(&name);
                let (hash, size) = hash_file(&path, 0, None)?;
                Some((name, path, hash, size))
            }
            None => None,
        };
        Ok(Prepared {
            ssts,
            log_files,
            shipments,
            options,
        })
    }

    /// A1: hard-links the recorded files into staging, never copies. Files RocksDB removed since
    /// the synchronous phase (only possible for ones the MANIFEST prefix no longer needs) are
    /// skipped; the MANIFEST itself must be there.
    fn link_recorded(&self, staging: &Path, image: &Path, logs: &Path) -> Result<Linked> {
        let db_dir = self.backend.db_dir();
        crate::failpoint_sync!(self.faults, "snapshot::before_link");
        let mut ssts = Vec::new();
        for name in &self.ssts {
            if link(&db_dir.join(name), &image.join(name), Missing::Skip)? {
                ssts.push(name.clone());
            }
        }
        let mut wals = Vec::new();
        for wal in &self.wals {
            if link(
                &db_dir.join(&wal.name),
                &logs.join(&wal.name),
                Missing::Skip,
            )? {
                wals.push(wal.clone());
            }
        }
        link(
            &db_dir.join(&self.manifest.name),
            &logs.join(&self.manifest.name),
            Missing::Fail,
        )?;
        let options = match &self.options_file {
            Some(name) if link(&db_dir.join(name), &staging.join(name), Missing::Skip)? => {
                Some(name.clone())
            }
            _ => None,
        };
        let identity = db_dir.join("IDENTITY");
        if identity.exists() {
            link(&identity, &image.join("IDENTITY"), Missing::Skip)?;
        }
        Ok(Linked {
            ssts,
            wals,
            options,
        })
    }

    /// A2 + A4 for the logs: trims the MANIFEST and every WAL to complete records and chains their
    /// segments. Returns the log files, their shipments and the trimmed MANIFEST length.
    fn chain_logs(
        &self,
        logs: &Path,
        wals: &[RecordedLog],
    ) -> Result<(Vec<LogFile>, Vec<Shipment>, u64)> {
        let mut shipments = Vec::new();
        let mut log_files = Vec::new();
        let (manifest_file, manifest_shipments) = self.backend.log_chain(
            &self.manifest.name,
            &logs.join(&self.manifest.name),
            self.manifest.len,
        )?;
        shipments.extend(manifest_shipments);
        let manifest_len = manifest_file.size();
        log_files.push(manifest_file);
        for wal in wals {
            let (file, wal_shipments) =
                self.backend
                    .log_chain(&wal.name, &logs.join(&wal.name), wal.len)?;
            shipments.extend(wal_shipments);
            log_files.push(file);
        }
        Ok((log_files, shipments, manifest_len))
    }

    /// A3: a read-only open of the image tells exactly which SSTs the MANIFEST prefix references.
    /// The same MANIFEST prefix (name and length) of this DB instance references the same SSTs, so
    /// an unchanged MANIFEST skips the open. Every referenced SST must have been linked in A1.
    fn live_ssts(
        &self,
        staging: &Path,
        image: &Path,
        logs: &Path,
        manifest_len: u64,
        linked: &[String],
    ) -> Result<Vec<String>> {
        let started = std::time::Instant::now();
        let live = match self
            .backend
            .cached_live_ssts(&self.manifest.name, manifest_len)
        {
            Some(live) => live,
            None => {
                copy_prefix(
                    &logs.join(&self.manifest.name),
                    &image.join(&self.manifest.name),
                    manifest_len,
                )?;
                std::fs::write(image.join("CURRENT"), format!("{}\n", self.manifest.name))
                    .map_err(|e| Error::io("writing", image.join("CURRENT"), e))?;
                let live = referenced_ssts(image, &staging.join("rocksdb-log"))?;
                self.backend
                    .remember_live_ssts(&self.manifest.name, manifest_len, live.clone());
                live
            }
        };
        tracing::debug!(
            read_only_open_us = started.elapsed().as_micros() as u64,
            "staged image inspected"
        );
        let missing: Vec<&String> = live.iter().filter(|name| !linked.contains(name)).collect();
        if !missing.is_empty() {
            return Err(Error::corruption(format!(
                "the MANIFEST prefix references SSTs that were not in the live directory: {missing:?}"
            )));
        }
        Ok(live)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Missing {
    Skip,
    Fail,
}

/// Hard-links `from` to `to` and checks that it really is a link. Returns false if `from` vanished
/// and `missing` allows that (an obsolete file purged just before deletions were disabled).
pub(super) fn link(from: &Path, to: &Path, missing: Missing) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::hard_link(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing == Missing::Skip => {
            return Ok(false);
        }
        Err(e) if e.raw_os_error() == Some(18) => {
            return Err(Error::invalid(format!(
                "cannot hard-link {} into the staging directory: it is on another filesystem (EXDEV); \
                 the backend directory must be one filesystem",
                from.display()
            )));
        }
        Err(e) => return Err(Error::io("hard-linking into staging", from, e)),
    }
    let links = std::fs::metadata(to)
        .map_err(|e| Error::io("inspecting", to, e))?
        .nlink();
    if links < 2 && from.exists() {
        return Err(Error::invalid(format!(
            "{} has link count {links} after linking: the filesystem copied instead of linking",
            to.display()
        )));
    }
    Ok(true)
}

pub(super) fn copy_prefix(from: &Path, to: &Path, len: u64) -> Result<()> {
    let mut input = std::fs::File::open(from).map_err(|e| Error::io("opening", from, e))?;
    let mut output = std::fs::File::create(to).map_err(|e| Error::io("creating", to, e))?;
    let copied = std::io::copy(&mut (&mut input).take(len), &mut output)
        .map_err(|e| Error::io("copying", from, e))?;
    if copied != len {
        return Err(Error::corruption(format!(
            "{} is shorter ({copied} bytes) than the {len} bytes recorded",
            from.display()
        )));
    }
    output.flush().map_err(|e| Error::io("writing", to, e))
}

/// Opens the image read-only and lists the SSTs its MANIFEST references.
pub(super) fn referenced_ssts(image: &Path, log_dir: &Path) -> Result<Vec<String>> {
    let mut opts = rocksdb::Options::default();
    opts.set_db_log_dir(log_dir);
    opts.set_max_open_files(16);
    // Table properties feed statistics only; reading them for every SST is wasted here.
    opts.set_skip_stats_update_on_db_open(true);
    let names = rocksdb::DB::list_cf(&opts, image)
        .map_err(|e| Error::rocksdb("listing column families of the staged image", e))?;
    let db = rocksdb::DB::open_cf_for_read_only(&opts, image, &names, false)
        .map_err(|e| Error::rocksdb("opening the staged image read-only", e))?;
    let live = db
        .live_files()
        .map_err(|e| Error::rocksdb("listing live files of the staged image", e))?;
    let mut out: Vec<String> = live
        .into_iter()
        .map(|f| f.name.trim_start_matches('/').to_owned())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}
