//! Finding the complete prefix of a RocksDB log file (WAL or MANIFEST).
//!
//! Both use RocksDB's log format: 32 KiB blocks of records with a 7-byte header (checksum u32,
//! length u16 LE, type u8); a block's last bytes, if fewer than a header, are zero padding. A logical
//! record is one FULL fragment, or FIRST, MIDDLE…, LAST. A checkpoint records a log's length while
//! RocksDB may still be appending a record (a background MANIFEST write), so it ships only the
//! prefix that ends on a complete logical record. Scanning reads headers only and starts from a
//! known boundary (the end of the previous segment), so it touches just the new bytes.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

const BLOCK_BYTES: u64 = 32 * 1024;
const HEADER_BYTES: u64 = 7;

/// The largest offset in `start..=limit` at which a complete logical record ends (or `start`).
/// `start` must itself be such a boundary (0 is).
pub(crate) fn complete_prefix_len(path: &Path, start: u64, limit: u64) -> io::Result<u64> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    reader.seek(SeekFrom::Start(start))?;
    let mut pos = start;
    let mut boundary = start;
    let mut header = [0u8; HEADER_BYTES as usize];
    while pos < limit {
        let left_in_block = BLOCK_BYTES - pos % BLOCK_BYTES;
        if left_in_block < HEADER_BYTES {
            reader.seek_relative(left_in_block as i64)?;
            pos += left_in_block;
            continue;
        }
        if pos + HEADER_BYTES > limit {
            break;
        }
        reader.read_exact(&mut header)?;
        let len = u64::from(u16::from_le_bytes([header[4], header[5]]));
        let kind = header[6];
        let end = pos + HEADER_BYTES + len;
        if kind == 0 || end > limit {
            // Zero type: preallocated space, nothing written yet. Past the limit: not yet complete.
            break;
        }
        match kind {
            // FULL, LAST, and the standalone metadata records (compression type, timestamp sizes,
            // predecessor WAL info) end a logical record.
            1 | 4 | 9 | 10 | 130 => boundary = end,
            // FIRST, MIDDLE: inside a logical record.
            2 | 3 => {}
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: unsupported log record type {other} at offset {pos} (recycled logs are disabled)",
                        path.display()
                    ),
                ));
            }
        }
        reader.seek_relative(len as i64)?;
        pos = end;
    }
    Ok(boundary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
    }

    #[test]
    fn stops_at_the_last_complete_record() -> io::Result<()> {
        let mut bytes = Vec::new();
        record(&mut bytes, 1, b"full one");
        let first_end = bytes.len() as u64;
        record(&mut bytes, 2, b"first part");
        record(&mut bytes, 3, b"middle");
        let before_last = bytes.len() as u64;
        record(&mut bytes, 4, b"last part");
        let second_end = bytes.len() as u64;
        record(&mut bytes, 1, b"torn record");
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(&bytes)?;
        let path = file.path();
        assert_eq!(
            complete_prefix_len(path, 0, bytes.len() as u64)?,
            bytes.len() as u64
        );
        assert_eq!(
            complete_prefix_len(path, 0, bytes.len() as u64 - 1)?,
            second_end
        );
        assert_eq!(complete_prefix_len(path, 0, before_last + 3)?, first_end);
        assert_eq!(complete_prefix_len(path, 0, first_end - 1)?, 0);
        assert_eq!(
            complete_prefix_len(path, first_end, second_end)?,
            second_end
        );
        Ok(())
    }

    #[test]
    fn skips_block_trailers() -> io::Result<()> {
        let mut bytes = Vec::new();
        // Fill the first block so that 3 bytes remain: they are padding.
        let payload = vec![7u8; (BLOCK_BYTES - 3 - HEADER_BYTES) as usize];
        record(&mut bytes, 1, &payload);
        bytes.extend_from_slice(&[0, 0, 0]);
        record(&mut bytes, 1, b"second block");
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(&bytes)?;
        assert_eq!(
            complete_prefix_len(file.path(), 0, bytes.len() as u64)?,
            bytes.len() as u64
        );
        assert_eq!(
            complete_prefix_len(file.path(), 0, BLOCK_BYTES)?,
            BLOCK_BYTES - 3
        );
        Ok(())
    }
}
