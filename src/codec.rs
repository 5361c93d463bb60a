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

/// Checks that every length a MessagePack value declares (of arrays, maps, strings, binaries and
/// extensions) fits in the bytes that follow it, without decoding anything. Run on records read
/// from storage before they are decoded: a decoder pre-sizes collections by their declared length
/// (serde caps that at 1 MiB per collection), so a 100-byte record declaring 2^32 elements would
/// otherwise cost megabytes before the first element fails. After this check a declared count is
/// at most the record's length. Walks iteratively (no recursion, whatever the nesting); bytes after
/// the first value are left to the decoder.
pub(crate) fn check_declared_lengths(bytes: &[u8]) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    let take = |pos: &mut usize, n: usize| -> std::result::Result<u64, String> {
        let end = pos
            .checked_add(n)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| format!("truncated at byte {}", *pos))?;
        let value = bytes[*pos..end]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        *pos = end;
        Ok(value)
    };
    while pending > 0 {
        let marker = *bytes
            .get(pos)
            .ok_or_else(|| format!("truncated at byte {pos}"))?;
        pos += 1;
        pending -= 1;
        // (elements to add, bytes to skip)
        let (children, skip): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (2 * u64::from(marker & 0x0f), 0),
            0x90..=0x9f => (u64::from(marker & 0x0f), 0),
            0xa0..=0xbf => (0, u64::from(marker & 0x1f)),
            0xc4 | 0xd9 => (0, take(&mut pos, 1)?),
            0xc5 | 0xda => (0, take(&mut pos, 2)?),
            0xc6 | 0xdb => (0, take(&mut pos, 4)?),
            0xc7 => (0, take(&mut pos, 1)? + 1),
            0xc8 => (0, take(&mut pos, 2)? + 1),
            0xc9 => (0, take(&mut pos, 4)? + 1),
            0xca | 0xce | 0xd2 => (0, 4),
            0xcb | 0xcf | 0xd3 => (0, 8),
            0xcc | 0xd0 => (0, 1),
            0xcd | 0xd1 => (0, 2),
            0xd4 => (0, 2),
            0xd5 => (0, 3),
            0xd6 => (0, 5),
            0xd7 => (0, 9),
            0xd8 => (0, 17),
            0xdc => (take(&mut pos, 2)?, 0),
            0xdd => (take(&mut pos, 4)?, 0),
            0xde => (2 * take(&mut pos, 2)?, 0),
            0xdf => (2 * take(&mut pos, 4)?, 0),
            0xc1 => return Err(format!("reserved marker 0xc1 at byte {}", pos - 1)),
        };
        let left = (bytes.len() - pos) as u64;
        if skip > left {
            return Err(format!(
                "a value at byte {} declares {skip} bytes, {left} follow",
                pos - 1
            ));
        }
        pos += skip as usize;
        // Every element takes at least one byte.
        pending = pending
            .checked_add(children)
            .filter(|&p| p <= (bytes.len() - pos) as u64)
            .ok_or_else(|| {
                format!(
                    "a collection at byte {} declares more elements than bytes follow",
                    pos - 1
                )
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod declared_length_tests {
    use super::check_declared_lengths;

    #[test]
    fn declared_lengths_must_fit_in_what_follows() {
        let valid = rmp_serde::to_vec_named(&(vec![1u32, 2, 3], "abc", vec![vec![0u8; 40]]))
            .expect("encodes");
        check_declared_lengths(&valid).unwrap();
        // An array of 2^32 - 1 elements in a few bytes, a string longer than the record, a map
        // of 65535 pairs: refused without decoding.
        for crafted in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01][..],
            &[0xdb, 0x00, 0x01, 0x00, 0x00, b'a'][..],
            &[0xde, 0xff, 0xff, 0x01, 0x02][..],
            &[0x92, 0x01][..],
            &[0xc1][..],
            &[][..],
        ] {
            assert!(check_declared_lengths(crafted).is_err(), "{crafted:x?}");
        }
        // Deep nesting is walked without recursion.
        let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 100_000).chain([0x01]).collect();
        check_declared_lengths(&deep).unwrap();
    }
}
