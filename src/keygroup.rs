//! Key groups: the unit of state partitioning and rescaling.
//!
//! Every key maps to one key group in `0..max_parallelism` by a stable hash of its serialized bytes
//! (MessagePack, see [`key_group_of`]). The mapping is part of the on-disk format: keys are stored
//! prefixed by their key group, so a backend restored with another mapping would look for keys in
//! the wrong place. Test vectors in `tests/keyed_state/key_groups.rs` pin it; changing it is a
//! format change.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest supported `max_parallelism` (as in Flink): key groups fit in two bytes.
pub const MAX_PARALLELISM_LIMIT: u32 = 32_768;

/// A contiguous, half-open range `[start, end)` of key groups owned by one backend.
///
/// Serialized as the pair `[start, end]`; deserializing validates it like [`KeyGroupRange::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "(u32, u32)", into = "(u32, u32)")]
pub struct KeyGroupRange {
    start: u16,
    end: u16,
}

impl KeyGroupRange {
    /// The range `[start, end)`. Fails unless `start < end <= MAX_PARALLELISM_LIMIT`.
    pub fn new(start: u32, end: u32) -> Result<Self> {
        if start >= end || end > MAX_PARALLELISM_LIMIT {
            return Err(Error::invalid(format!(
                "key-group range {start}..{end} (end exclusive) must satisfy start < end <= \
                 {MAX_PARALLELISM_LIMIT}"
            )));
        }
        // Both bounds are at most 32768 and fit in two bytes.
        Ok(KeyGroupRange {
            start: start as u16,
            end: end as u16,
        })
    }

    /// All key groups of a job: `[0, max_parallelism)`.
    pub fn all(max_parallelism: u32) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        KeyGroupRange::new(0, max_parallelism)
    }

    /// The range owned by operator instance `index` of `parallelism` instances, split as evenly as
    /// possible (the same split as Flink's `computeKeyGroupRangeForOperatorIndex`).
    pub fn for_operator(max_parallelism: u32, parallelism: u32, index: u32) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        if parallelism == 0 || parallelism > max_parallelism || index >= parallelism {
            return Err(Error::invalid(format!(
                "operator {index} of parallelism {parallelism} with max_parallelism {max_parallelism}: \
                 need 0 < parallelism <= max_parallelism and index < parallelism"
            )));
        }
        let mp = u64::from(max_parallelism);
        let (p, i) = (u64::from(parallelism), u64::from(index));
        let start = (i * mp).div_ceil(p);
        let end = ((i + 1) * mp).div_ceil(p);
        KeyGroupRange::new(start as u32, end as u32)
    }

    /// First key group in the range.
    pub fn start(&self) -> u32 {
        u32::from(self.start)
    }

    /// One past the last key group in the range.
    pub fn end(&self) -> u32 {
        u32::from(self.end)
    }

    /// Number of key groups in the range.
    pub fn len(&self) -> u32 {
        self.end() - self.start()
    }

    /// Always false: ranges are never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `key_group` lies in the range.
    pub fn contains(&self, key_group: u32) -> bool {
        key_group >= self.start() && key_group < self.end()
    }

    /// Whether `other` lies entirely inside this range.
    pub fn contains_range(&self, other: &KeyGroupRange) -> bool {
        other.start >= self.start && other.end <= self.end
    }

    /// The overlap of two ranges, if any.
    pub fn intersect(&self, other: &KeyGroupRange) -> Option<KeyGroupRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then_some(KeyGroupRange { start, end })
    }
}

impl TryFrom<(u32, u32)> for KeyGroupRange {
    type Error = Error;
    fn try_from((start, end): (u32, u32)) -> Result<Self> {
        KeyGroupRange::new(start, end)
    }
}

impl From<KeyGroupRange> for (u32, u32) {
    fn from(range: KeyGroupRange) -> Self {
        (range.start(), range.end())
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // As the CLI takes it (`--key-groups 0..32`, end exclusive).
        write!(f, "{}..{}", self.start, self.end)
    }
}

pub(crate) fn check_max_parallelism(max_parallelism: u32) -> Result<()> {
    if max_parallelism == 0 || max_parallelism > MAX_PARALLELISM_LIMIT {
        return Err(Error::invalid(format!(
            "max_parallelism {max_parallelism} must be in 1..={MAX_PARALLELISM_LIMIT}"
        )));
    }
    Ok(())
}

/// The key group of a key, given its serialized (MessagePack) bytes.
///
/// Definition (stable, part of the on-disk format): take the BLAKE3 hash of the serialized key,
/// read its first 8 bytes as a little-endian `u64` `h`, and return `(h * max_parallelism) >> 64`
/// (a multiply-shift reduction, uniform like `h % max_parallelism` but without division).
///
/// `max_parallelism` must be in `1..=MAX_PARALLELISM_LIMIT`; it is not checked here because callers
/// validate it once when opening a backend.
pub fn key_group_of(serialized_key: &[u8], max_parallelism: u32) -> u32 {
    let hash = blake3::hash(serialized_key);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    let h = u64::from_le_bytes(first);
    ((u128::from(h) * u128::from(max_parallelism)) >> 64) as u32
}
