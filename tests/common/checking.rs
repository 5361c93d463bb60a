//! A hook that checks G3 at the moment of every delete: a shared file may be deleted only if no
//! metadata record (checkpoint or savepoint) and no pin (in-flight checkpoint, restore) in the root
//! lists it right then. It decodes records itself, independently of the engine's own index.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::sync::Mutex;

use rockpoint::format::ContentHash;
use rockpoint::{RestoreSource, Store};

use super::hooked::{Hook, Op};

#[derive(serde::Deserialize)]
struct PinBody {
    hashes: Vec<String>,
    owner: PinOwner,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum PinOwner {
    Epoch { job: String, epoch: u64 },
    Reader { expires_at_ms: u64 },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Decodes a job record (envelope: 8-byte magic, version, length, BLAKE3, MessagePack body).
pub fn decode_job(bytes: &[u8]) -> rockpoint::admin::JobRecord {
    assert_eq!(&bytes[..8], b"RKPTJOB\0", "job record envelope");
    rmp_serde::from_slice(&bytes[52..]).expect("job record body decodes")
}

/// Whether a pin at `path` owned by `epoch` of `job` still protects anything, judged from the job
/// records as the documented rule says (`docs/protocols.md`, GC): a pin of an older epoch is dead
/// (fenced), and so is a snapshot pin (`pins/<job>/<chk|sp>-<id:020>-…`) of the live epoch whose
/// checkpoint ended (id below the record's `finished_below`: it can no longer commit).
pub fn epoch_pin_live(
    path: &str,
    job: &str,
    epoch: u64,
    records: &std::collections::HashMap<String, rockpoint::admin::JobRecord>,
) -> bool {
    let Some(record) = records.get(job) else {
        return true;
    };
    let ended = path
        .strip_prefix(&format!("pins/{job}/"))
        .and_then(|name| {
            name.strip_prefix("chk-")
                .or_else(|| name.strip_prefix("sp-"))
        })
        .and_then(|rest| rest.get(..20))
        .and_then(|digits| digits.parse::<u64>().ok())
        .is_some_and(|id| epoch == record.epoch && id < record.finished_below);
    record.epoch <= epoch && !ended
}

/// Wrap a store with it through [`with_hook`](super::with_hook); `violations()` lists the deletes
/// that broke G3.
#[derive(Default)]
pub struct DeleteChecker {
    pub violations: Mutex<Vec<String>>,
    pub deletes_checked: std::sync::atomic::AtomicU64,
}

impl DeleteChecker {
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }
}

/// Every shared path that a complete checkpoint or savepoint (one its job record lists) or a
/// live pin (its owner's epoch is the job's current one and the lease holds, or a reader's
/// expiry has not passed) references now. This is G3's promise, judged independently of the
/// engine's code.
pub async fn referenced_now(store: &dyn Store) -> rockpoint::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut records = std::collections::HashMap::new();
    for object in store.list("jobs/").await? {
        if let Some(job) = object
            .path
            .strip_prefix("jobs/")
            .and_then(|p| p.strip_suffix("/_job"))
        {
            records.insert(job.to_owned(), decode_job(&store.get(&object.path).await?));
        }
    }
    for (job, record) in &records {
        for (kind, ids) in [("chk", &record.retained), ("sp", &record.savepoints)] {
            for id in ids {
                let path = format!("jobs/{job}/{kind}-{id:020}/_metadata");
                let (_, metadata) =
                    rockpoint::restore::read_metadata(store, &RestoreSource::Metadata(path))
                        .await?;
                out.extend(metadata.shared_hashes().map(|h| shared(&h)));
            }
        }
    }
    let now = now_ms();
    for object in store.list("pins/").await? {
        let bytes = match store.get(&object.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == rockpoint::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        assert_eq!(&bytes[..8], b"RKPTPIN\0", "pin envelope");
        let body: PinBody = rmp_serde::from_slice(&bytes[52..]).expect("pin body decodes");
        let live = match &body.owner {
            PinOwner::Reader { expires_at_ms } => *expires_at_ms >= now,
            PinOwner::Epoch { job, epoch } => epoch_pin_live(&object.path, job, *epoch, &records),
        };
        if live {
            out.extend(
                body.hashes
                    .iter()
                    .map(|h| format!("shared/{}/{h}", &h[..2])),
            );
        }
    }
    Ok(out)
}

pub fn shared(hash: &ContentHash) -> String {
    let hex = hash.to_hex();
    format!("shared/{}/{hex}", &hex[..2])
}

#[async_trait::async_trait]
impl Hook for DeleteChecker {
    async fn before(&self, op: &Op<'_>, store: &dyn Store) -> rockpoint::Result<()> {
        if let Op::Delete { path } = *op
            && path.starts_with("shared/")
        {
            self.deletes_checked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // If the root cannot be read (the machine is down), the delete fails anyway.
            if let Ok(referenced) = referenced_now(store).await
                && referenced.contains(path)
            {
                self.violations.lock().unwrap().push(format!(
                    "deleted {path} while a metadata record or pin referenced it"
                ));
            }
        }
        Ok(())
    }
}
