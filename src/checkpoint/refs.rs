//! Reference counts, derived: the shared files referenced by every committed metadata record and
//! every pin record in the root.
//!
//! Nothing here is ever stored: each call lists `jobs/` and `pins/` afresh (metadata bodies are
//! immutable and cached by path), so a crash can never leave a count too low. If any record cannot
//! be read or decoded, the call fails instead of guessing: nothing is deleted on an incomplete view.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::metadata::{self, CheckpointMetadata, PinRecord};
use crate::error::Result;
use crate::store::{ContentHash, ObjectInfo, Store};

/// A pin record with its path and age.
#[derive(Clone, Debug)]
pub(crate) struct Pin {
    pub path: String,
    pub record: PinRecord,
    pub modified: SystemTime,
}

/// A fresh view of everything that references shared files.
#[derive(Debug, Default)]
pub(crate) struct References {
    pub committed: Vec<Arc<CheckpointMetadata>>,
    pub pins: Vec<Pin>,
    pub counts: HashMap<ContentHash, u32>,
}

impl References {
    pub fn is_referenced(&self, hash: &ContentHash) -> bool {
        self.counts.contains_key(hash)
    }
}

/// Caches decoded metadata by path; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct RefIndex {
    cache: Mutex<HashMap<String, Arc<CheckpointMetadata>>>,
}

impl RefIndex {
    /// Reads one metadata record (cached).
    pub async fn metadata(&self, store: &dyn Store, path: &str) -> Result<Arc<CheckpointMetadata>> {
        if let Some(found) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(found.clone());
        }
        let bytes = store.get(path).await?;
        let decoded = Arc::new(metadata::decode_metadata(&bytes, path)?);
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), decoded.clone());
        Ok(decoded)
    }

    /// Lists every committed metadata record and every pin, except the pins in `excluded`.
    pub async fn load(&self, store: &dyn Store, excluded: &HashSet<String>) -> Result<References> {
        let listed = store.list("jobs/").await?;
        let paths: Vec<&ObjectInfo> = listed
            .iter()
            .filter(|o| o.path.ends_with("/_metadata"))
            .collect();
        let mut refs = References::default();
        let mut live = HashSet::new();
        for info in paths {
            let metadata = self.metadata(store, &info.path).await?;
            for hash in metadata.shared_hashes() {
                *refs.counts.entry(hash).or_default() += 1;
            }
            live.insert(info.path.clone());
            refs.committed.push(metadata);
        }
        // Forget records that are gone, so the cache tracks the root.
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|path, _| live.contains(path));
        for pin in load_pins(store, "pins/").await? {
            if excluded.contains(&pin.path) {
                continue;
            }
            for hash in &pin.record.hashes {
                *refs.counts.entry(*hash).or_default() += 1;
            }
            refs.pins.push(pin);
        }
        Ok(refs)
    }
}

/// Reads every pin record under `prefix`. A pin deleted between listing and reading is skipped.
pub(crate) async fn load_pins(store: &dyn Store, prefix: &str) -> Result<Vec<Pin>> {
    let mut pins = Vec::new();
    for info in store.list(prefix).await? {
        let bytes = match store.get(&info.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == crate::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        pins.push(Pin {
            record: metadata::decode_pin(&bytes, &info.path)?,
            path: info.path,
            modified: info.modified,
        });
    }
    Ok(pins)
}
