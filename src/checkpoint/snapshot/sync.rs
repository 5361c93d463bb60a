//! The synchronous phase of a snapshot (S1–S6 of `docs/protocols.md`), run while the operator is
//! blocked: flush unlogged writes, stop file deletions, record the MANIFEST and WAL lengths. It reads
//! no file contents and does no I/O beyond RocksDB's own.

use super::*;

impl KeyedStateBackend {
    /// The synchronous phase of a checkpoint (S1–S6): records which files to copy and how long the
    /// logs are. With the WAL enabled (the default) it copies, links and flushes nothing, so the
    /// operator pauses for a few system calls whatever the state size.
    pub fn snapshot(&self, ticket: &CheckpointTicket) -> Result<PendingSnapshot> {
        let start = Instant::now();
        ticket.check_live()?;
        let inner = &self.inner;
        let db = &inner.db;
        if inner.settings.wal == WalMode::Disabled {
            // S1: unlogged writes live only in memtables.
            self.flush()?;
        }
        // S2
        db.flush_wal(false)
            .map_err(|e| Error::rocksdb("flushing the WAL buffer", e))?;
        let wal_flushed = start.elapsed();
        // S3
        db.disable_file_deletions()
            .map_err(|e| Error::rocksdb("disabling file deletions", e))?;
        let deletions_disabled = start.elapsed();
        let guard = DeletionGuard {
            backend: inner.clone(),
        };
        let db_dir = inner.db_dir();
        // S4
        let current = db_dir.join("CURRENT");
        let manifest_name = std::fs::read_to_string(&current)
            .map_err(|e| Error::io("reading", &current, e))?
            .trim_end()
            .to_owned();
        if !manifest_name.starts_with("MANIFEST-") || manifest_name.contains('/') {
            return Err(Error::corruption(format!(
                "CURRENT names `{manifest_name}`, not a MANIFEST"
            )));
        }
        let manifest_path = db_dir.join(&manifest_name);
        let manifest_len = std::fs::metadata(&manifest_path)
            .map_err(|e| Error::io("inspecting", &manifest_path, e))?
            .len();
        // S5
        let mut ssts = Vec::new();
        let mut wals = Vec::new();
        let mut options_file: Option<(u64, String)> = None;
        for entry in std::fs::read_dir(&db_dir).map_err(|e| Error::io("listing", &db_dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &db_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(number) = name.strip_suffix(".sst") {
                if number.bytes().all(|b| b.is_ascii_digit()) {
                    ssts.push(name);
                }
            } else if let Some(number) = name.strip_suffix(".log") {
                if number.bytes().all(|b| b.is_ascii_digit()) {
                    let len = match entry.metadata() {
                        Ok(meta) => meta.len(),
                        // Purged after listing: an obsolete WAL, not needed.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(Error::io("inspecting", entry.path(), e)),
                    };
                    wals.push(RecordedLog { name, len });
                }
            } else if let Some(number) = name.strip_prefix("OPTIONS-")
                && let Ok(n) = number.parse::<u64>()
                && options_file.as_ref().is_none_or(|(m, _)| n > *m)
            {
                options_file = Some((n, name));
            }
        }
        ssts.sort();
        wals.sort_by(|a, b| a.name.cmp(&b.name));
        let states = self.states();
        let sync_pause = start.elapsed();
        if sync_pause > SLOW_SYNC_PHASE {
            // Where a slow pause went, for whoever investigates it (the phase has no size-dependent step).
            tracing::warn!(
                checkpoint = ticket.checkpoint_id(),
                total_us = sync_pause.as_micros() as u64,
                wal_flush_us = wal_flushed.as_micros() as u64,
                disable_deletions_us = (deletions_disabled - wal_flushed).as_micros() as u64,
                listing_us = (sync_pause - deletions_disabled).as_micros() as u64,
                "slow synchronous phase"
            );
        }
        // S6
        Ok(PendingSnapshot {
            backend: inner.clone(),
            ticket: ticket.clone(),
            guard: Some(guard),
            manifest: RecordedLog {
                name: manifest_name,
                len: manifest_len,
            },
            wals,
            ssts,
            options_file: options_file.map(|(_, name)| name),
            states,
            sync_pause,
        })
    }
}

/// A synchronous phase longer than this is logged with its steps' timings (the target is p99 ≤ 1 ms).
pub(super) const SLOW_SYNC_PHASE: Duration = Duration::from_millis(1);
