//! The key layout and value encoding of keyed state (part of the on-disk format).
//!
//! A row key is `key group (u16, big-endian) ‖ MessagePack(key)`, and for map state
//! `… ‖ MessagePack(user key)`. Big-endian key groups make a key-group range one contiguous byte
//! range of a column family, which is what range iteration, range deletes and rescaling rely on.
//! MessagePack values are self-delimiting (no encoding is a proper prefix of another), so the entries
//! of one key of a map state are exactly the rows starting with that key's prefix.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorDetail, Result};
use crate::keygroup::{KeyGroupRange, key_group_of};

/// Bytes of the key-group prefix of every row key.
pub(crate) const KEY_GROUP_PREFIX_LEN: usize = 2;

/// Encodes `key` as a row-key prefix, checking that its key group belongs to `range`.
pub(crate) fn encode_key<K: Serialize + ?Sized>(
    state: &str,
    key: &K,
    max_parallelism: u32,
    range: KeyGroupRange,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(32);
    buf.extend_from_slice(&[0, 0]);
    rmp_serde::encode::write(&mut buf, key).map_err(|source| ErrorDetail::Encode {
        state: state.to_owned(),
        what: "key",
        source,
    })?;
    let key_group = key_group_of(&buf[KEY_GROUP_PREFIX_LEN..], max_parallelism);
    if !range.contains(key_group) {
        return Err(Error::invalid(format!(
            "key of state `{state}` maps to key group {key_group}, outside this backend's range {range}"
        )));
    }
    buf[..KEY_GROUP_PREFIX_LEN].copy_from_slice(&(key_group as u16).to_be_bytes());
    Ok(buf)
}

/// Appends the MessagePack encoding of `value` to `buf`.
pub(crate) fn encode_into<V: Serialize + ?Sized>(
    state: &str,
    what: &'static str,
    value: &V,
    buf: &mut Vec<u8>,
) -> Result<()> {
    rmp_serde::encode::write(buf, value).map_err(|source| {
        ErrorDetail::Encode {
            state: state.to_owned(),
            what,
            source,
        }
        .into()
    })
}

/// The MessagePack encoding of `value`.
pub(crate) fn encode<V: Serialize + ?Sized>(
    state: &str,
    what: &'static str,
    value: &V,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(32);
    encode_into(state, what, value, &mut buf)?;
    Ok(buf)
}

/// Decodes exactly one value from `bytes`; trailing bytes are corruption.
pub(crate) fn decode<V: DeserializeOwned>(
    state: &str,
    what: &'static str,
    bytes: &[u8],
) -> Result<V> {
    let mut rest = bytes;
    let value = decode_next(state, what, &mut rest)?;
    if !rest.is_empty() {
        return Err(decode_error(
            state,
            what,
            format!("{} trailing bytes after the value", rest.len()),
        ));
    }
    Ok(value)
}

/// Decodes one value from the front of `rest` and advances it past that value.
pub(crate) fn decode_next<V: DeserializeOwned>(
    state: &str,
    what: &'static str,
    rest: &mut &[u8],
) -> Result<V> {
    rmp_serde::decode::from_read(&mut *rest).map_err(|e| decode_error(state, what, e.to_string()))
}

/// Decodes a sequence of concatenated values (the encoding of list state).
pub(crate) fn decode_all<V: DeserializeOwned>(
    state: &str,
    what: &'static str,
    bytes: &[u8],
) -> Result<Vec<V>> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        out.push(decode_next(state, what, &mut rest)?);
    }
    Ok(out)
}

/// Splits a row key into its key group and the bytes after it, checking the prefix is present.
pub(crate) fn split_key_group<'a>(state: &str, row_key: &'a [u8]) -> Result<(u32, &'a [u8])> {
    if row_key.len() < KEY_GROUP_PREFIX_LEN {
        return Err(decode_error(
            state,
            "row key",
            "shorter than its key-group prefix".into(),
        ));
    }
    let key_group = u32::from(u16::from_be_bytes([row_key[0], row_key[1]]));
    Ok((key_group, &row_key[KEY_GROUP_PREFIX_LEN..]))
}

/// Decodes the key of a row key; returns the key and the bytes after it (the user key of map state).
pub(crate) fn decode_row_key<'a, K: DeserializeOwned>(
    state: &str,
    row_key: &'a [u8],
) -> Result<(K, &'a [u8])> {
    let (_, mut rest) = split_key_group(state, row_key)?;
    let key = decode_next(state, "key", &mut rest)?;
    Ok((key, rest))
}

/// The first byte string greater than every string starting with `prefix`, or `None` if none exists.
pub(crate) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// Lower and upper bound (exclusive) of the row keys of a key-group range.
pub(crate) fn range_bounds(range: KeyGroupRange) -> (Vec<u8>, Vec<u8>) {
    // `end` is at most 32768, which still fits in two big-endian bytes.
    (
        (range.start() as u16).to_be_bytes().to_vec(),
        (range.end() as u16).to_be_bytes().to_vec(),
    )
}

pub(crate) fn decode_error(state: &str, what: &'static str, reason: String) -> Error {
    ErrorDetail::Decode {
        state: state.to_owned(),
        what,
        reason,
    }
    .into()
}
