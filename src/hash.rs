//! Content hashing, the bottom of the format: [`ContentHash`] (BLAKE3, the name of every shared
//! object), [`Segment`] (a hashed piece of a log file), and the one way bytes are checked against an
//! expected hash and size ([`Verifier`]), whichever path they take (upload, download, restore).
//!
//! Every `HashMismatch` error the engine reports is built here, by [`mismatch`].

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorDetail, Result};

/// Bytes read or copied at a time when hashing a local file.
const CHUNK_BYTES: usize = 1 << 20;

/// The BLAKE3 hash of a file's bytes: the name of a shared file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(hash: blake3::Hash) -> Self {
        ContentHash(*hash.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &self.to_hex()[..16])
    }
}

impl FromStr for ContentHash {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let valid = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(Error::corruption(format!(
                "`{s}` is not a lower-case hex BLAKE3 hash"
            )));
        }
        blake3::Hash::from_hex(s)
            .map(ContentHash::from)
            .map_err(|e| Error::corruption(format!("`{s}` is not a BLAKE3 hash: {e}")))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One content-addressed piece of a log file (WAL or MANIFEST), stored as a shared object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// BLAKE3 of the segment's bytes.
    pub hash: ContentHash,
    /// Size in bytes.
    pub size: u64,
}

/// The error for bytes that are not what a checkpoint says: `file` names them (an object and its
/// role, or a local file and byte range); `actual` is a hex hash or a short reason.
pub(crate) fn mismatch(
    file: impl Into<String>,
    expected: ContentHash,
    expected_size: u64,
    actual: impl Into<String>,
    actual_size: u64,
) -> Error {
    ErrorDetail::HashMismatch {
        file: file.into(),
        expected: expected.to_hex(),
        expected_size,
        actual: actual.into(),
        actual_size,
    }
    .into()
}

/// Checks bytes, fed in chunks, against an expected hash and size: fails as soon as more bytes than
/// expected arrive, and at [`finish`](Verifier::finish) if the hash or the count differs.
pub(crate) struct Verifier {
    file: String,
    expected: ContentHash,
    size: u64,
    received: u64,
    hasher: blake3::Hasher,
}

impl Verifier {
    /// A verifier of `size` bytes hashing to `expected`; `file` names them in errors.
    pub(crate) fn new(file: impl Into<String>, expected: ContentHash, size: u64) -> Self {
        Verifier {
            file: file.into(),
            expected,
            size,
            received: 0,
            hasher: blake3::Hasher::new(),
        }
    }

    fn mismatch(&self, actual: impl Into<String>, actual_size: u64) -> Error {
        mismatch(
            self.file.clone(),
            self.expected,
            self.size,
            actual,
            actual_size,
        )
    }

    /// Checks the size an object reports before any byte is read.
    pub(crate) fn size_is(&self, found: u64) -> Result<()> {
        if found != self.size {
            return Err(self.mismatch("(not read)", found));
        }
        Ok(())
    }

    /// Feeds the next chunk.
    pub(crate) fn update(&mut self, chunk: &[u8]) -> Result<()> {
        self.received += chunk.len() as u64;
        if self.received > self.size {
            return Err(self.mismatch("(longer than expected)", self.received));
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// Checks the hash and count of everything fed.
    pub(crate) fn finish(&self) -> Result<()> {
        let actual = ContentHash::from(self.hasher.finalize());
        if actual != self.expected || self.received != self.size {
            return Err(self.mismatch(actual.to_hex(), self.received));
        }
        Ok(())
    }
}

/// Copies at most `len` bytes from `input` to `out`, returning their hash and how many were copied
/// (fewer than `len` if `input` ended first).
pub(crate) fn copy_hashing(
    input: &mut dyn Read,
    out: &mut dyn Write,
    len: u64,
) -> io::Result<(ContentHash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK_BYTES.min(len.max(1) as usize)];
    let mut copied = 0u64;
    while copied < len {
        let want = (len - copied).min(buf.len() as u64) as usize;
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        copied += n as u64;
    }
    Ok((hasher.finalize().into(), copied))
}

/// BLAKE3 of `len` bytes (or all bytes) of a local file from `offset`, with the byte count. A file
/// with fewer than `len` bytes from `offset` is `Corruption`.
pub(crate) fn hash_file(path: &Path, offset: u64, len: Option<u64>) -> Result<(ContentHash, u64)> {
    let mut file =
        std::fs::File::open(path).map_err(|e| Error::io("opening for hashing", path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| Error::io("seeking for hashing", path, e))?;
    let (hash, copied) = copy_hashing(&mut file, &mut io::sink(), len.unwrap_or(u64::MAX))
        .map_err(|e| Error::io("hashing", path, e))?;
    if let Some(len) = len
        && copied != len
    {
        return Err(Error::corruption(format!(
            "{} has {copied} bytes from offset {offset}, expected {len}",
            path.display()
        )));
    }
    Ok((hash, copied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_exact_bytes_and_rejects_any_other() {
        let data = b"hello rockpoint";
        let hash = ContentHash::of(data);
        let mut ok = Verifier::new("x", hash, data.len() as u64);
        ok.update(&data[..5]).unwrap();
        ok.update(&data[5..]).unwrap();
        ok.finish().unwrap();

        let mut longer = Verifier::new("x", hash, 3);
        assert!(longer.update(data).is_err());

        let mut short = Verifier::new("x", hash, data.len() as u64);
        short.update(&data[..4]).unwrap();
        let err = short.finish().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corruption);

        let mut flipped = data.to_vec();
        flipped[0] ^= 1;
        let mut bad = Verifier::new("x", hash, data.len() as u64);
        bad.update(&flipped).unwrap();
        assert!(bad.finish().unwrap_err().to_string().contains("`x`"));
    }

    #[test]
    fn copy_hashing_stops_at_len_and_at_end_of_input() {
        let data = vec![7u8; 3 * CHUNK_BYTES + 5];
        let mut out = Vec::new();
        let (hash, n) = copy_hashing(&mut &data[..], &mut out, 10).unwrap();
        assert_eq!((hash, n, out.len()), (ContentHash::of(&data[..10]), 10, 10));
        let mut out = Vec::new();
        let (hash, n) = copy_hashing(&mut &data[..], &mut out, u64::MAX).unwrap();
        assert_eq!((hash, n), (ContentHash::of(&data), data.len() as u64));
    }
}
