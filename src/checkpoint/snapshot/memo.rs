//! What the snapshots of one DB instance remember between checkpoints: the hash of every SST by
//! name and size, the log segments already shipped, and the SSTs the last inspected MANIFEST prefix
//! references. Valid for one RocksDB instance only (file numbers are reused after a reopen from an
//! older state), which is why it is kept on the [`Engine`](crate::engine) and dropped with it.

use super::*;

impl Engine {
    /// The SSTs a MANIFEST prefix of this DB instance was found to reference, if it was inspected.
    pub(super) fn cached_live_ssts(&self, manifest: &str, len: u64) -> Option<Vec<String>> {
        match &*self.live_ssts() {
            Some((name, cached_len, live)) if name == manifest && *cached_len == len => {
                Some(live.clone())
            }
            _ => None,
        }
    }

    pub(super) fn remember_live_ssts(&self, manifest: &str, len: u64, live: Vec<String>) {
        *self.live_ssts() = Some((manifest.to_owned(), len, live));
    }

    /// Remembers an SST's hash for later snapshots of this DB instance.
    pub(super) fn remember_sst_hash(&self, name: &str, size: u64, hash: ContentHash) {
        self.hash_cache().insert(name.to_owned(), (size, hash));
    }

    /// The content hash of an SST this DB instance hashed before (same name and size), if any.
    pub(super) fn cached_sst_hash(&self, name: &str, size: u64) -> Option<ContentHash> {
        self.hash_cache()
            .get(name)
            .filter(|(cached_size, _)| *cached_size == size)
            .map(|(_, hash)| *hash)
    }

    /// The segments of a log file up to its last complete record at or before `recorded_len`,
    /// reusing the chain of earlier snapshots of this DB instance (a log is append-only, so an
    /// earlier prefix is still a prefix). Returns the file and the segments that are new.
    pub(super) fn log_chain(
        &self,
        name: &str,
        source: &Path,
        recorded_len: u64,
    ) -> Result<(LogFile, Vec<Shipment>)> {
        let chain: Vec<(u64, Segment)> = self.log_chains().get(name).cloned().unwrap_or_default();
        // The longest prefix of the chain that ends within what was recorded.
        let mut kept: Vec<(u64, Segment)> = chain
            .into_iter()
            .take_while(|(offset, segment)| offset + segment.size <= recorded_len)
            .collect();
        if kept.len() >= MAX_SEGMENTS {
            kept.clear();
        }
        let covered = kept
            .last()
            .map_or(0, |(offset, segment)| offset + segment.size);
        let end = complete_prefix_len(source, covered, recorded_len)
            .map_err(|e| Error::io("scanning log records of", source, e))?;
        let mut shipments = Vec::new();
        if end > covered {
            let (hash, size) = hash_file(source, covered, Some(end - covered))?;
            kept.push((covered, Segment { hash, size }));
            shipments.push(Shipment {
                hash,
                size,
                source: source.to_path_buf(),
                offset: covered,
                staged: None,
            });
        }
        // Existing segments are shipped (or found) again like any shared file: they may belong to a
        // snapshot that was aborted and cleaned up.
        for (offset, segment) in &kept[..kept.len() - shipments.len()] {
            shipments.push(Shipment {
                hash: segment.hash,
                size: segment.size,
                source: source.to_path_buf(),
                offset: *offset,
                staged: None,
            });
        }
        {
            let mut chains = self.log_chains();
            let longer = chains
                .get(name)
                .is_none_or(|existing| existing.last().map_or(0, |(o, s)| o + s.size) <= end);
            if longer {
                chains.insert(name.to_owned(), kept.clone());
            }
        }
        let file = LogFile {
            local_name: name.to_owned(),
            segments: kept.into_iter().map(|(_, segment)| segment).collect(),
        };
        Ok((file, shipments))
    }
}
