//! The canonical savepoint format: every entry of every state of one backend as a documented,
//! RocksDB-independent stream, in key-group order, checksummed, restorable at any parallelism and
//! readable without RocksDB by [`CanonicalReader`]. The format is specified byte by byte in
//! `docs/canonical-format.md`.
//!
//! Three parts: `write_canonical` streams one RocksDB snapshot of an engine into a new file;
//! [`CanonicalReader`] reads a stream and checks every frame, the order of the entries, their key
//! groups and the trailer's count and BLAKE3; `load_canonical` bulk-loads the entries of a key-group
//! range into an open engine as sorted SST files. The safety reason for the order of the loader's
//! steps: entries reach a reader before the trailer proves them, so the loader only stages SSTs
//! while reading and registers and ingests nothing until the trailer has been checked — a damaged
//! file loads nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IngestExternalFileOptions, IteratorMode, ReadOptions, SstFileWriter};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::engine::Engine;
use crate::error::{Error, ErrorDetail, ErrorKind, Result};
use crate::hash::ContentHash;
use crate::keygroup::{KeyGroupRange, MAX_PARALLELISM_LIMIT, key_group_of};
use crate::state_info::{StateInfo, StateInfoFormat, StateKind};
use crate::util;

/// The first 8 bytes of every canonical savepoint.
pub const MAGIC: &[u8; 8] = b"RKPTCANO";

/// The format version this rockpoint writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The largest frame body a reader accepts (1 GiB); a longer length is refused before allocating.
/// The writer refuses to write a longer frame (an entry whose key and value exceed it).
pub const MAX_FRAME_BYTES: u32 = 1 << 30;

const TAG_HEADER: u8 = b'H';
const TAG_STATE: u8 = b'S';
const TAG_ENTRY: u8 = b'E';
const TAG_TRAILER: u8 = b'T';
/// Entry count (u64 LE) and BLAKE3 (32 bytes).
const TRAILER_BODY_BYTES: usize = 8 + 32;
/// Magic and version.
const PREAMBLE_BYTES: usize = 8 + 4;
/// Tag and length.
const FRAME_HEAD_BYTES: usize = 1 + 4;

/// The header of a canonical savepoint: what the stream holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CanonicalHeader {
    /// The job's number of key groups; keys map to key groups with
    /// [`key_group_of`](crate::key_group_of) for it, so a savepoint loads only into backends of
    /// the same `max_parallelism`.
    pub max_parallelism: u32,
    /// The key groups of the backend the savepoint was written from; every entry lies in them.
    pub key_groups: KeyGroupRange,
    /// Every state of the backend, in name order (also the order of the stream), with or without
    /// entries.
    pub states: Vec<StateInfo>,
}

/// One entry of a canonical savepoint: one row of one state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CanonicalEntry {
    /// The index of the entry's state in [`CanonicalHeader::states`].
    pub state: usize,
    /// The key group of the key (`key_group_of(&key, max_parallelism)`, checked by the reader).
    pub key_group: u32,
    /// The MessagePack encoding of the key: exactly one MessagePack value.
    pub key: Vec<u8>,
    /// For map state, the MessagePack encoding of the entry's user key; `None` for other kinds.
    pub user_key: Option<Vec<u8>>,
    /// The stored value: one MessagePack value (value, reducing and map state), or the
    /// concatenation of the MessagePack encodings of a list's elements (list state).
    pub value: Vec<u8>,
}

/// What writing a canonical savepoint produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalSummary {
    /// The states the stream holds (its header's): what a savepoint records for the backend,
    /// even if a state was registered while the stream was written.
    pub states: Vec<StateInfo>,
    /// Size of the file.
    pub bytes: u64,
    /// Entries written, over all states.
    pub entries: u64,
    /// BLAKE3 of the whole file (trailer included).
    pub hash: ContentHash,
}

/// What loading a canonical savepoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSummary {
    /// Entries loaded into the engine (those in the requested key-group range).
    pub entries: u64,
    /// Bytes of the file read and verified (all of it, whatever the range).
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// Writes every state of `engine`, as of one RocksDB snapshot, into the new file `out` (which must
/// not exist), fsyncs it and its directory. On failure the partial file is removed.
// Used by the savepoint API above the keyed-state layer once it is wired in; tested here.
pub(crate) fn write_canonical(engine: &Engine, out: &Path) -> Result<CanonicalSummary> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| Error::io("creating canonical savepoint", out, e))?;
    let result = write_into(engine, file, out);
    if result.is_err() {
        // Best effort: the file is ours (created above) and incomplete.
        let _ = std::fs::remove_file(out);
    }
    result
}

fn write_into(engine: &Engine, file: File, out: &Path) -> Result<CanonicalSummary> {
    let io_err = |e| Error::io("writing canonical savepoint", out, e);
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: blake3::Hasher::new(),
        bytes: 0,
    };
    // One snapshot for every state: the savepoint is one consistent point of the backend.
    let snapshot = engine.db.snapshot();
    let header = CanonicalHeader {
        max_parallelism: engine.max_parallelism,
        key_groups: engine.key_groups,
        states: engine.states(),
    };
    check_header(&header).map_err(|e| Error::internal(format!("canonical header: {e}")))?;
    w.write_all(MAGIC).map_err(io_err)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes()).map_err(io_err)?;
    let body = encode_named("canonical header", &header)?;
    write_frame(&mut w, TAG_HEADER, &body).map_err(io_err)?;

    let (lower, upper) = codec::range_bounds(engine.key_groups);
    let mut entries = 0u64;
    let mut body = Vec::new();
    for info in &header.states {
        let state_body = encode_named("state record", info)?;
        write_frame(&mut w, TAG_STATE, &state_body).map_err(io_err)?;
        let cf = engine
            .db
            .cf_handle(&info.name)
            .ok_or_else(|| Error::not_found(format!("column family of state `{}`", info.name)))?;
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&snapshot);
        opts.set_iterate_lower_bound(lower.clone());
        opts.set_iterate_upper_bound(upper.clone());
        for row in engine.db.iterator_cf_opt(&cf, opts, IteratorMode::Start) {
            let (row_key, value) = row.map_err(|e| {
                Error::rocksdb(format!("reading state `{}` for a savepoint", info.name), e)
            })?;
            let RowParts {
                key_group,
                key,
                user_key,
            } = split_row_key(info, &row_key, engine.max_parallelism)?;
            body.clear();
            body.extend_from_slice(&(key_group as u16).to_be_bytes());
            push_len(&mut body, key.len());
            body.extend_from_slice(key);
            if let Some(user_key) = user_key {
                push_len(&mut body, user_key.len());
                body.extend_from_slice(user_key);
            }
            body.extend_from_slice(&value);
            if body.len() > MAX_FRAME_BYTES as usize {
                return Err(Error::invalid(format!(
                    "an entry of state `{}` in key group {key_group} is {} bytes, above the \
                     canonical format's frame limit of {MAX_FRAME_BYTES} bytes",
                    info.name,
                    body.len()
                )));
            }
            write_frame(&mut w, TAG_ENTRY, &body).map_err(io_err)?;
            entries += 1;
        }
    }
    drop(snapshot);

    // The trailer's hash covers every byte before the trailer's tag.
    let before_trailer = w.hasher.finalize();
    let mut trailer = Vec::with_capacity(TRAILER_BODY_BYTES);
    trailer.extend_from_slice(&entries.to_le_bytes());
    trailer.extend_from_slice(before_trailer.as_bytes());
    write_frame(&mut w, TAG_TRAILER, &trailer).map_err(io_err)?;

    let bytes = w.bytes;
    let hash = ContentHash::from(w.hasher.finalize());
    let file = w.inner.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::io("syncing canonical savepoint", out, e))?;
    drop(file);
    let dir = match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing the directory of a canonical savepoint", dir, e))?;
    Ok(CanonicalSummary {
        states: header.states,
        bytes,
        entries,
        hash,
    })
}

/// Splits a row key into key group, key and (map state) user key, checking it as the reader will:
/// the writer never writes what the reader refuses.
fn split_row_key<'a>(
    info: &StateInfo,
    row_key: &'a [u8],
    max_parallelism: u32,
) -> Result<RowParts<'a>> {
    let (key_group, rest) = codec::split_key_group(&info.name, row_key)?;
    let key_len = msgpack_len(rest).ok_or_else(|| {
        codec::decode_error(&info.name, "row key", "the key is not MessagePack".into())
    })?;
    let (key, tail) = rest.split_at(key_len);
    let user_key = if info.kind == StateKind::Map {
        if msgpack_len(tail) != Some(tail.len()) {
            return Err(codec::decode_error(
                &info.name,
                "row key",
                "the user key is not one MessagePack value".into(),
            ));
        }
        Some(tail)
    } else {
        if !tail.is_empty() {
            return Err(codec::decode_error(
                &info.name,
                "row key",
                "trailing bytes after the key".into(),
            ));
        }
        None
    };
    if key_group_of(key, max_parallelism) != key_group {
        return Err(codec::decode_error(
            &info.name,
            "row key",
            format!("stored under key group {key_group}, but the key maps to another"),
        ));
    }
    Ok(RowParts {
        key_group,
        key,
        user_key,
    })
}

/// A row key taken apart: key group, key, and (map state) user key.
struct RowParts<'a> {
    key_group: u32,
    key: &'a [u8],
    user_key: Option<&'a [u8]>,
}

fn push_len(body: &mut Vec<u8>, len: usize) {
    // Keys are bounded by the frame limit, checked on the whole body before it is written.
    body.extend_from_slice(&(len.min(u32::MAX as usize) as u32).to_le_bytes());
}

fn encode_named<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value)
        .map_err(|e| Error::internal(format!("encoding the {what} of a canonical savepoint: {e}")))
}

fn write_frame(w: &mut impl Write, tag: u8, body: &[u8]) -> io::Result<()> {
    // Callers keep bodies within MAX_FRAME_BYTES, so the length fits in a u32.
    w.write_all(&[tag])?;
    w.write_all(&(body.len() as u32).to_le_bytes())?;
    w.write_all(body)
}

/// Counts and hashes everything written through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// Where a reader is in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Reading,
    /// The trailer was read and checked, and nothing follows it.
    Verified,
    /// An error was returned; the stream is not verified.
    Failed,
}

/// Reads a canonical savepoint (format: `docs/canonical-format.md`) from any [`Read`], checking it
/// as it goes.
///
/// [`new`](CanonicalReader::new) reads and checks the preamble and the header;
/// [`next_entry`](CanonicalReader::next_entry) (or the [`Iterator`] implementation) then yields the
/// entries, state by state in name order and, within a state, in strictly increasing
/// `(key group, key, user key)` order, which is the row-key order of the engine. It checks every
/// frame's bounds, the order of states and entries, that each entry's key is one MessagePack value
/// mapping to its key group and that the key group lies in the header's range, and at the end the
/// trailer's entry count and the BLAKE3 of every byte before it, and that nothing follows the
/// trailer. Any violation is [`ErrorKind::Corruption`](crate::ErrorKind) naming what and where; a
/// file written by a newer format version is [`ErrorKind::Invalid`](crate::ErrorKind) naming the
/// version.
///
/// **Entries are yielded before the trailer proves them:** the stream is verified only once
/// `next_entry` has returned `Ok(None)` (the iterator has ended without an error). Stage what you
/// read and act on it only then.
///
/// No allocation exceeds the input actually read: a frame longer than [`MAX_FRAME_BYTES`] is
/// refused from its length alone, and a frame body is read incrementally, so a length larger than
/// what is left fails as truncation without being allocated. Wrap files in a
/// [`BufReader`](std::io::BufReader): the reader makes small reads.
///
/// ```
/// use rockpoint::canonical::CanonicalReader;
///
/// /// Counts the entries of each state, trusting the counts only once the trailer is checked.
/// fn count_entries(input: impl std::io::Read) -> rockpoint::Result<Vec<(String, u64)>> {
///     let mut reader = CanonicalReader::new(input)?;
///     let mut counts: Vec<(String, u64)> = reader
///         .header()
///         .states
///         .iter()
///         .map(|state| (state.name.clone(), 0))
///         .collect();
///     while let Some(entry) = reader.next_entry()? {
///         counts[entry.state].1 += 1;
///     }
///     // `next_entry` returned `Ok(None)`: the trailer's count and BLAKE3 matched.
///     Ok(counts)
/// }
/// # assert!(count_entries(&b"not a savepoint"[..]).is_err());
/// ```
pub struct CanonicalReader<R: Read> {
    input: R,
    /// Names the input in errors.
    name: String,
    header: CanonicalHeader,
    /// BLAKE3 of every byte read before the trailer's tag.
    hasher: blake3::Hasher,
    /// Bytes consumed so far.
    offset: u64,
    entries: u64,
    /// Index of the state whose entries follow (its state frame was the last one read).
    state: Option<usize>,
    /// Index of the next state frame expected.
    next_state: usize,
    /// Row key (key group ‖ key ‖ user key) of the previous entry of the current state, if any.
    previous: Option<Vec<u8>>,
    /// Body of the frame being read; reused.
    body: Vec<u8>,
    phase: Phase,
}

impl<R: Read> CanonicalReader<R> {
    /// Reads and checks the preamble (magic, version) and the header.
    pub fn new(input: R) -> Result<Self> {
        Self::named(input, "canonical savepoint".to_owned())
    }

    /// Like [`new`](CanonicalReader::new), naming the input `name` in errors.
    pub(crate) fn named(input: R, name: String) -> Result<Self> {
        let mut reader = CanonicalReader {
            input,
            name,
            header: CanonicalHeader {
                max_parallelism: 1,
                key_groups: KeyGroupRange::all(1)?,
                states: Vec::new(),
            },
            hasher: blake3::Hasher::new(),
            offset: 0,
            entries: 0,
            state: None,
            next_state: 0,
            previous: None,
            body: Vec::new(),
            phase: Phase::Reading,
        };
        reader.read_preamble()?;
        reader.header = reader.read_header()?;
        Ok(reader)
    }

    /// The header: max parallelism, key-group range and the states of the stream.
    pub fn header(&self) -> &CanonicalHeader {
        &self.header
    }

    /// Bytes read so far (after `Ok(None)` from [`next_entry`](CanonicalReader::next_entry): the
    /// size of the savepoint).
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Entries read so far.
    pub fn entries_read(&self) -> u64 {
        self.entries
    }

    /// The next entry, or `Ok(None)` once the trailer has been read and checked (the whole stream
    /// is then verified). After an error, every later call fails too.
    pub fn next_entry(&mut self) -> Result<Option<CanonicalEntry>> {
        match self.phase {
            Phase::Verified => return Ok(None),
            Phase::Failed => {
                return Err(Error::corruption(format!(
                    "{}: reading after an earlier error; the stream is not verified",
                    self.name
                )));
            }
            Phase::Reading => {}
        }
        let result = self.advance();
        match &result {
            Ok(None) => self.phase = Phase::Verified,
            Ok(Some(_)) => {}
            Err(_) => self.phase = Phase::Failed,
        }
        result
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> Error {
        Error::corruption(format!("{}: {what}", self.name))
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` if the input ended first (after some bytes or
    /// none: `self.offset` then counts the bytes that were there).
    fn read_full(&mut self, buf: &mut [u8]) -> Result<bool> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => {
                    self.offset += filled as u64;
                    return Ok(false);
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        self.offset += filled as u64;
        Ok(true)
    }

    fn io_error(&self, e: io::Error) -> Error {
        Error::with_source(
            ErrorKind::Unavailable,
            format!("{}: reading at byte {}: {e}", self.name, self.offset),
            e,
        )
    }

    fn read_preamble(&mut self) -> Result<()> {
        let mut preamble = [0u8; PREAMBLE_BYTES];
        if !self.read_full(&mut preamble)? {
            return Err(self.corrupt(format_args!(
                "not a canonical savepoint: {} bytes, shorter than the {PREAMBLE_BYTES}-byte preamble",
                self.offset
            )));
        }
        if &preamble[..8] != MAGIC {
            return Err(self.corrupt(format_args!(
                "not a canonical savepoint: the magic is {:?}, not {:?}",
                String::from_utf8_lossy(&preamble[..8]),
                String::from_utf8_lossy(MAGIC)
            )));
        }
        let version = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
        if version > FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "{}: written in canonical format version {version}, newer than the newest this \
                 rockpoint reads ({FORMAT_VERSION}); read it with a newer rockpoint",
                self.name
            )));
        }
        if version == 0 {
            return Err(self.corrupt("canonical format version 0 does not exist"));
        }
        self.hasher.update(&preamble);
        Ok(())
    }

    /// Reads the next frame into `self.body` and returns its tag, or `None` at the end of the
    /// input. Every frame but the trailer is hashed.
    fn read_frame(&mut self) -> Result<Option<u8>> {
        let start = self.offset;
        let mut head = [0u8; FRAME_HEAD_BYTES];
        if !self.read_full(&mut head)? {
            if self.offset == start {
                return Ok(None);
            }
            return Err(self.corrupt(format_args!(
                "truncated: the input ends inside the frame head at byte {start}"
            )));
        }
        let tag = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME_BYTES {
            return Err(self.corrupt(format_args!(
                "the frame at byte {start} claims {len} bytes, above the limit of \
                 {MAX_FRAME_BYTES}"
            )));
        }
        // Read incrementally: the buffer grows with the bytes actually there, not with `len`.
        self.body.clear();
        let got = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut self.body);
        let got = match got {
            Ok(n) => n,
            Err(e) => return Err(self.io_error(e)),
        };
        self.offset += got as u64;
        if got != len as usize {
            return Err(self.corrupt(format_args!(
                "truncated: the frame at byte {start} claims {len} bytes, {got} are left"
            )));
        }
        if tag != TAG_TRAILER {
            self.hasher.update(&head);
            self.hasher.update(&self.body);
        }
        Ok(Some(tag))
    }

    fn read_header(&mut self) -> Result<CanonicalHeader> {
        match self.read_frame()? {
            Some(TAG_HEADER) => {}
            Some(tag) => {
                return Err(self.corrupt(format_args!(
                    "the first frame is {}, not the header",
                    describe_tag(tag)
                )));
            }
            None => return Err(self.corrupt("truncated: no header after the preamble")),
        }
        let header: CanonicalHeader = decode_exact(&self.body)
            .map_err(|reason| self.corrupt(format_args!("undecodable header: {reason}")))?;
        check_header(&header).map_err(|reason| self.corrupt(reason))?;
        Ok(header)
    }

    fn advance(&mut self) -> Result<Option<CanonicalEntry>> {
        loop {
            let start = self.offset;
            match self.read_frame()? {
                Some(TAG_STATE) => self.read_state(start)?,
                Some(TAG_ENTRY) => return self.read_entry(start).map(Some),
                Some(TAG_TRAILER) => {
                    self.read_trailer(start)?;
                    return Ok(None);
                }
                Some(tag) => {
                    return Err(self.corrupt(format_args!(
                        "unexpected {} at byte {start}",
                        describe_tag(tag)
                    )));
                }
                None => {
                    return Err(self.corrupt(format_args!(
                        "truncated: the input ends at byte {start} without a trailer"
                    )));
                }
            }
        }
    }

    fn read_state(&mut self, start: u64) -> Result<()> {
        let info: StateInfo = decode_exact(&self.body).map_err(|reason| {
            self.corrupt(format_args!(
                "undecodable state frame at byte {start}: {reason}"
            ))
        })?;
        let Some(expected) = self.header.states.get(self.next_state) else {
            return Err(self.corrupt(format_args!(
                "state frame `{}` at byte {start}: the header lists only {} states",
                info.name,
                self.header.states.len()
            )));
        };
        if *expected != info {
            return Err(self.corrupt(format_args!(
                "state frame at byte {start} is `{}` ({}), but the header's next state is `{}` ({})",
                info.name,
                info.describe(),
                expected.name,
                expected.describe()
            )));
        }
        self.state = Some(self.next_state);
        self.next_state += 1;
        self.previous = None;
        Ok(())
    }

    fn read_entry(&mut self, start: u64) -> Result<CanonicalEntry> {
        let Some(state) = self.state else {
            return Err(self.corrupt(format_args!("entry at byte {start} before any state frame")));
        };
        let info = &self.header.states[state];
        let is_map = info.kind == StateKind::Map;
        let bad = |what: &str| {
            Error::corruption(format!(
                "{}: entry at byte {start} of state `{}`: {what}",
                self.name, info.name
            ))
        };
        let body = &self.body[..];
        let mut at = 0usize;
        let key_group = u32::from(u16::from_be_bytes(
            take(body, &mut at, 2)
                .ok_or_else(|| bad("shorter than its key group"))?
                .try_into()
                .expect("two bytes"),
        ));
        let key = take_sized(body, &mut at).ok_or_else(|| bad("its key overruns the frame"))?;
        let user_key = if is_map {
            Some(take_sized(body, &mut at).ok_or_else(|| bad("its user key overruns the frame"))?)
        } else {
            None
        };
        let value = &body[at..];
        if !self.header.key_groups.contains(key_group) {
            return Err(bad(&format!(
                "key group {key_group} lies outside the header's range {}",
                self.header.key_groups
            )));
        }
        if msgpack_len(key) != Some(key.len()) {
            return Err(bad("the key is not one MessagePack value"));
        }
        if let Some(user_key) = user_key
            && msgpack_len(user_key) != Some(user_key.len())
        {
            return Err(bad("the user key is not one MessagePack value"));
        }
        let actual = key_group_of(key, self.header.max_parallelism);
        if actual != key_group {
            return Err(bad(&format!(
                "stored under key group {key_group}, but its key maps to key group {actual}"
            )));
        }
        // Keys are single MessagePack values, which no other value prefixes, so comparing the
        // joined row keys is comparing (key group, key, user key), and is the engine's order.
        let mut row_key = Vec::with_capacity(2 + key.len() + user_key.map_or(0, <[u8]>::len));
        row_key.extend_from_slice(&body[..2]);
        row_key.extend_from_slice(key);
        if let Some(user_key) = user_key {
            row_key.extend_from_slice(user_key);
        }
        if let Some(previous) = &self.previous
            && *previous >= row_key
        {
            return Err(bad(
                "not after the previous entry of its state (entries must strictly increase by \
                 key group, key and user key)",
            ));
        }
        let entry = CanonicalEntry {
            state,
            key_group,
            key: key.to_vec(),
            user_key: user_key.map(<[u8]>::to_vec),
            value: value.to_vec(),
        };
        self.previous = Some(row_key);
        self.entries += 1;
        Ok(entry)
    }

    fn read_trailer(&mut self, start: u64) -> Result<()> {
        if self.body.len() != TRAILER_BODY_BYTES {
            return Err(self.corrupt(format_args!(
                "the trailer at byte {start} has {} bytes, not {TRAILER_BODY_BYTES}",
                self.body.len()
            )));
        }
        if self.next_state != self.header.states.len() {
            return Err(self.corrupt(format_args!(
                "the trailer at byte {start} follows {} of the header's {} states",
                self.next_state,
                self.header.states.len()
            )));
        }
        let count = u64::from_le_bytes(self.body[..8].try_into().expect("eight bytes"));
        if count != self.entries {
            return Err(self.corrupt(format_args!(
                "the trailer counts {count} entries, the stream holds {}",
                self.entries
            )));
        }
        let expected = ContentHash(self.body[8..].try_into().expect("32 bytes"));
        let actual = ContentHash::from(self.hasher.finalize());
        if actual != expected {
            return Err(self.corrupt(format_args!(
                "checksum mismatch: the trailer records blake3 {expected} of the {start} bytes \
                 before it, they hash to {actual}"
            )));
        }
        let mut extra = [0u8; 1];
        let end = self.offset;
        if self.read_full(&mut extra)? {
            return Err(self.corrupt(format_args!(
                "bytes follow the trailer (which ends at byte {end})"
            )));
        }
        Ok(())
    }
}

impl<R: Read> Iterator for CanonicalReader<R> {
    type Item = Result<CanonicalEntry>;

    /// The next entry; the iteration ends after the trailer is checked, or after the first error.
    fn next(&mut self) -> Option<Self::Item> {
        if self.phase != Phase::Reading {
            return None;
        }
        self.next_entry().transpose()
    }
}

impl<R: Read> std::fmt::Debug for CanonicalReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanonicalReader")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

/// `len` bytes of `body` from `*at`, advancing it; `None` if fewer are left.
fn take<'a>(body: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len).filter(|end| *end <= body.len())?;
    let out = &body[*at..end];
    *at = end;
    Some(out)
}

/// A u32 LE length, then that many bytes.
fn take_sized<'a>(body: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(take(body, at, 4)?.try_into().ok()?);
    take(body, at, len as usize)
}

/// The length of the MessagePack value at the front of `bytes`, if it holds one.
fn msgpack_len(bytes: &[u8]) -> Option<usize> {
    let mut rest = bytes;
    rmp_serde::decode::from_read::<_, IgnoredAny>(&mut rest).ok()?;
    Some(bytes.len() - rest.len())
}

/// Decodes exactly one MessagePack value filling `bytes`.
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    // Before the decoder pre-sizes a collection by a length the frame declares.
    codec::check_declared_lengths(bytes)?;
    let mut rest = bytes;
    let value = rmp_serde::decode::from_read(&mut rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    Ok(value)
}

fn describe_tag(tag: u8) -> String {
    match tag {
        TAG_HEADER => "a second header frame".to_owned(),
        TAG_STATE | TAG_ENTRY | TAG_TRAILER => format!("a frame `{}`", tag as char),
        _ => format!("a frame of unknown tag 0x{tag:02x}"),
    }
}

/// What a header must satisfy: a valid parallelism and range, and states in strictly increasing
/// name order, recorded with type tags.
fn check_header(header: &CanonicalHeader) -> std::result::Result<(), String> {
    if header.max_parallelism == 0 || header.max_parallelism > MAX_PARALLELISM_LIMIT {
        return Err(format!(
            "max_parallelism {} is not in 1..={MAX_PARALLELISM_LIMIT}",
            header.max_parallelism
        ));
    }
    if header.key_groups.end() > header.max_parallelism {
        return Err(format!(
            "key-group range {} exceeds max_parallelism {}",
            header.key_groups, header.max_parallelism
        ));
    }
    for pair in header.states.windows(2) {
        if pair[0].name >= pair[1].name {
            return Err(format!(
                "states `{}` and `{}` are not in strictly increasing name order",
                pair[0].name, pair[1].name
            ));
        }
    }
    for info in &header.states {
        if info.format != StateInfoFormat::TypeTags {
            return Err(format!(
                "state `{}` is recorded without type tags",
                info.name
            ));
        }
        if (info.kind == StateKind::Map) != info.user_key_tag.is_some() {
            return Err(format!(
                "state `{}` ({}) has a user-key tag iff it is map state",
                info.name,
                info.describe()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Loader
// ---------------------------------------------------------------------------------------------

/// Loads the entries of `file` whose key group lies in `key_groups` into `engine` (which must own
/// those key groups and have the savepoint's max parallelism), registering every state of the
/// savepoint. Entries are staged as sorted SST files in a new directory under `scratch` (on the
/// engine's filesystem, so that ingestion moves rather than copies them) while the stream is read;
/// only after the trailer is checked are the states registered and the SSTs ingested. A damaged
/// file therefore registers and loads nothing; its staged SSTs are removed.
///
/// Loading several savepoints of disjoint key groups into one engine, one after another, gives
/// their union. Ingestion is per state: a failure while ingesting (I/O, not the file) can leave the
/// states before it loaded.
// Used by the savepoint API above the keyed-state layer once it is wired in; tested here.
pub(crate) fn load_canonical(
    engine: &Engine,
    file: &Path,
    source: KeyGroupRange,
    key_groups: KeyGroupRange,
    scratch: &Path,
) -> Result<LoadSummary> {
    if !engine.key_groups.contains_range(&key_groups) {
        return Err(Error::invalid(format!(
            "loading key groups {key_groups} of {} into a backend of key groups {}",
            file.display(),
            engine.key_groups
        )));
    }
    let input = File::open(file).map_err(|e| Error::io("opening canonical savepoint", file, e))?;
    let mut reader = CanonicalReader::named(
        BufReader::with_capacity(1 << 20, input),
        format!("canonical savepoint {}", file.display()),
    )?;
    let header = reader.header().clone();
    if header.key_groups != source {
        // The metadata that names the stream says which key groups it holds; a stream holding
        // others (swapped or crafted) would load rows another stream also loads.
        return Err(Error::corruption(format!(
            "canonical savepoint {} holds key groups {}, but its metadata says {source}",
            file.display(),
            header.key_groups
        )));
    }
    if header.max_parallelism != engine.max_parallelism {
        return Err(Error::invalid(format!(
            "canonical savepoint {} is of max_parallelism {}, the backend of {}; key groups \
             depend on it",
            file.display(),
            header.max_parallelism,
            engine.max_parallelism
        )));
    }
    // Refuse incompatible states before reading the whole file (registration checks again).
    {
        let registered = engine.states_read();
        for info in &header.states {
            if let Some(existing) = registered.get(&info.name)
                && existing != info
            {
                return Err(ErrorDetail::StateIncompatible {
                    state: info.name.clone(),
                    registered: existing.describe(),
                    requested: info.describe(),
                }
                .into());
            }
        }
    }
    let stage = scratch.join(format!("canonical-{}", util::nonce()));
    std::fs::create_dir_all(&stage)
        .map_err(|e| Error::io("creating the staging directory of a load", &stage, e))?;
    let result = stage_and_ingest(engine, &mut reader, &header, key_groups, &stage);
    // On success ingestion moved the SSTs; on failure they are removed unloaded.
    let cleanup = std::fs::remove_dir_all(&stage)
        .map_err(|e| Error::io("removing the staging directory of a load", &stage, e));
    let entries = result?;
    cleanup?;
    Ok(LoadSummary {
        entries,
        bytes: reader.bytes_read(),
    })
}

/// Reads the whole stream, staging the in-range entries of each state as one SST, then registers
/// every state and ingests the SSTs. Returns the number of entries loaded.
fn stage_and_ingest<R: Read>(
    engine: &Engine,
    reader: &mut CanonicalReader<R>,
    header: &CanonicalHeader,
    key_groups: KeyGroupRange,
    stage: &Path,
) -> Result<u64> {
    let mut staged: Vec<(usize, PathBuf)> = Vec::new();
    let mut open: Option<(usize, PathBuf, SstFileWriter<'_>)> = None;
    let mut loaded = 0u64;
    let mut row_key = Vec::new();
    while let Some(entry) = reader.next_entry()? {
        if !key_groups.contains(entry.key_group) {
            continue;
        }
        if open
            .as_ref()
            .is_none_or(|(state, _, _)| *state != entry.state)
        {
            if let Some((state, path, mut sst)) = open.take() {
                finish_sst(&mut sst, &path)?;
                staged.push((state, path));
            }
            let path = stage.join(format!("{:05}.sst", entry.state));
            let sst = SstFileWriter::create(&engine.cf_options);
            sst.open(&path)
                .map_err(|e| Error::rocksdb(format!("creating {}", path.display()), e))?;
            open = Some((entry.state, path, sst));
        }
        let (_, path, sst) = open.as_mut().expect("opened above");
        row_key.clear();
        row_key.extend_from_slice(&(entry.key_group as u16).to_be_bytes());
        row_key.extend_from_slice(&entry.key);
        if let Some(user_key) = &entry.user_key {
            row_key.extend_from_slice(user_key);
        }
        sst.put(&row_key, &entry.value)
            .map_err(|e| Error::rocksdb(format!("writing {}", path.display()), e))?;
        loaded += 1;
    }
    if let Some((state, path, mut sst)) = open.take() {
        finish_sst(&mut sst, &path)?;
        staged.push((state, path));
    }

    // The trailer is checked: the stream is what was written. Now, and only now, change the engine.
    for info in &header.states {
        engine.register(info.clone())?;
    }
    let mut opts = IngestExternalFileOptions::default();
    opts.set_move_files(true);
    for (state, path) in staged {
        let name = &header.states[state].name;
        let cf = engine
            .db
            .cf_handle(name)
            .ok_or_else(|| Error::not_found(format!("column family of state `{name}`")))?;
        engine
            .db
            .ingest_external_file_cf_opts(&cf, &opts, vec![&path])
            .map_err(|e| Error::rocksdb(format!("ingesting state `{name}` from a savepoint"), e))?;
    }
    Ok(loaded)
}

fn finish_sst(sst: &mut SstFileWriter<'_>, path: &Path) -> Result<()> {
    sst.finish()
        .map_err(|e| Error::rocksdb(format!("finishing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    /// `load_canonical` with the stream's own range as the metadata's (the header's range when
    /// readable): these tests are about the stream, not about the metadata naming it.
    fn load_any(
        engine: &Engine,
        file: &Path,
        key_groups: KeyGroupRange,
        scratch: &Path,
    ) -> Result<LoadSummary> {
        let source = File::open(file)
            .ok()
            .and_then(|f| CanonicalReader::new(BufReader::new(f)).ok())
            .map_or(key_groups, |r| r.header().key_groups);
        load_canonical(engine, file, source, key_groups, scratch)
    }

    use std::collections::BTreeMap;

    use super::*;
    use crate::settings::BackendSettings;

    const MP: u32 = 64;

    type Scan = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

    fn open(dir: &Path, range: KeyGroupRange) -> Result<Engine> {
        Engine::open(dir, MP, range, BackendSettings::default())
    }

    fn range(start: u32, end: u32) -> KeyGroupRange {
        KeyGroupRange::new(start, end).expect("a valid range")
    }

    fn states() -> Vec<StateInfo> {
        let tag = |t: &str| t.to_owned();
        vec![
            StateInfo::new("counts", StateKind::Value, tag("u64"), tag("u64"), None),
            StateInfo::new("events", StateKind::List, tag("u64"), tag("string"), None),
            StateInfo::new(
                "orders",
                StateKind::Map,
                tag("u64"),
                tag("u64"),
                Some(tag("string")),
            ),
            StateInfo::new("totals", StateKind::Reducing, tag("u64"), tag("u64"), None),
            // Registered, never written: still registered by a load.
            StateInfo::new("unused", StateKind::Value, tag("string"), tag("u64"), None),
        ]
    }

    /// Registers every state of `states()` and writes the keys `0..keys` that fall in the engine's
    /// range: the same rows whatever the range, so ranges of one fill compose.
    fn fill(engine: &Engine, keys: u64) -> Result<()> {
        for info in states() {
            engine.register(info)?;
        }
        let cf = |name: &str| engine.db.cf_handle(name).expect("registered");
        let rocks = |e| Error::rocksdb("test write", e);
        for k in 0..keys {
            let group = key_group_of(&rmp_serde::to_vec(&k).expect("encodes"), MP);
            if !engine.key_groups.contains(group) {
                continue;
            }
            let row = codec::encode_key("t", &k, MP, engine.key_groups)?;
            let opts = &engine.write_opts;
            let counts = codec::encode("t", "v", &(k * 3))?;
            engine
                .db
                .put_cf_opt(&cf("counts"), &row, counts, opts)
                .map_err(rocks)?;
            // Two merges: the savepoint holds the merged list.
            for element in [format!("a{k}"), format!("b{k}")] {
                let bytes = codec::encode("t", "v", &element)?;
                engine
                    .db
                    .merge_cf_opt(&cf("events"), &row, bytes, opts)
                    .map_err(rocks)?;
            }
            for j in 0..(k % 4) {
                let mut map_row = row.clone();
                codec::encode_into("t", "k", &format!("u{j}"), &mut map_row)?;
                let value = codec::encode("t", "v", &(j * 10))?;
                engine
                    .db
                    .put_cf_opt(&cf("orders"), &map_row, value, opts)
                    .map_err(rocks)?;
            }
            let total = codec::encode("t", "v", &(k + 1))?;
            engine
                .db
                .put_cf_opt(&cf("totals"), &row, total, opts)
                .map_err(rocks)?;
            if k == keys / 2 {
                // Half in SSTs, half in memtables.
                engine.flush()?;
            }
        }
        Ok(())
    }

    /// Every row of every state, optionally of one key-group range only.
    fn scan(engine: &Engine, only: Option<KeyGroupRange>) -> Result<Scan> {
        let mut out = Scan::new();
        for info in engine.states() {
            let cf = engine.db.cf_handle(&info.name).expect("registered");
            let mut opts = ReadOptions::default();
            if let Some(only) = only {
                let (lower, upper) = codec::range_bounds(only);
                opts.set_iterate_lower_bound(lower);
                opts.set_iterate_upper_bound(upper);
            }
            let rows = engine
                .db
                .iterator_cf_opt(&cf, opts, IteratorMode::Start)
                .map(|row| {
                    row.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(|e| Error::rocksdb("test scan", e))
                })
                .collect::<Result<Vec<_>>>()?;
            out.insert(info.name, rows);
        }
        Ok(out)
    }

    fn read_all(bytes: &[u8]) -> Result<(CanonicalHeader, Vec<CanonicalEntry>)> {
        let mut reader = CanonicalReader::new(bytes)?;
        let mut entries = Vec::new();
        while let Some(entry) = reader.next_entry()? {
            entries.push(entry);
        }
        Ok((reader.header().clone(), entries))
    }

    /// The frames after the preamble: (offset, tag, body).
    fn frames(bytes: &[u8]) -> Vec<(usize, u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = PREAMBLE_BYTES;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            out.push((at, bytes[at], bytes[at + 5..at + 5 + len].to_vec()));
            at += FRAME_HEAD_BYTES + len;
        }
        out
    }

    /// A file of `version` holding `frames` (any trailer among them is dropped) with a correct
    /// trailer: damage that a checksum cannot catch.
    fn seal(version: u32, frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        let mut entries = 0u64;
        for (tag, body) in frames.iter().filter(|(tag, _)| *tag != TAG_TRAILER) {
            entries += u64::from(*tag == TAG_ENTRY);
            write_frame(&mut out, *tag, body).unwrap();
        }
        let mut trailer = entries.to_le_bytes().to_vec();
        trailer.extend_from_slice(blake3::hash(&out).as_bytes());
        write_frame(&mut out, TAG_TRAILER, &trailer).unwrap();
        out
    }

    fn tagged(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        frames(bytes).into_iter().map(|(_, t, b)| (t, b)).collect()
    }

    /// Writes a savepoint of a full-range backend holding `keys` keys; returns its bytes.
    fn savepoint(dir: &Path, keys: u64) -> Result<(Vec<u8>, CanonicalSummary, Scan)> {
        let source = open(&dir.join("source"), range(0, MP))?;
        fill(&source, keys)?;
        let path = dir.join("savepoint.rkc");
        let summary = write_canonical(&source, &path)?;
        let bytes = std::fs::read(&path).unwrap();
        Ok((bytes, summary, scan(&source, None)?))
    }

    #[test]
    fn a_stream_of_other_key_groups_than_its_metadata_says_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let source = open(&dir.path().join("source"), range(0, MP))?;
        fill(&source, 50)?;
        let path = dir.path().join("savepoint.rkc");
        write_canonical(&source, &path)?;
        let target = open(&dir.path().join("target"), range(0, MP))?;
        let half = range(0, MP / 2);
        let err = load_canonical(&target, &path, half, half, &dir.path().join("s")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corruption, "{err}");
        assert!(scan(&target, None)?.values().all(Vec::is_empty));
        Ok(())
    }

    #[test]
    fn round_trip_into_a_narrower_range_matches_the_source_scan() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let source = open(&dir.path().join("source"), range(0, MP))?;
        fill(&source, 400)?;
        let path = dir.path().join("savepoint.rkc");
        let summary = write_canonical(&source, &path)?;
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(summary.hash, ContentHash::of(&bytes));
        let everything = scan(&source, None)?;
        let rows: usize = everything.values().map(Vec::len).sum();
        assert_eq!(summary.entries, rows as u64);
        // The file is not overwritten.
        let again = write_canonical(&source, &path).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Conflict);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // The reader alone gives back every row, decomposed.
        let (header, entries) = read_all(&bytes)?;
        assert_eq!(header.max_parallelism, MP);
        assert_eq!(header.key_groups, range(0, MP));
        assert_eq!(header.states, source.states());
        let mut rebuilt = Scan::new();
        for info in &header.states {
            rebuilt.insert(info.name.clone(), Vec::new());
        }
        for entry in &entries {
            let mut row = (entry.key_group as u16).to_be_bytes().to_vec();
            row.extend_from_slice(&entry.key);
            row.extend_from_slice(entry.user_key.as_deref().unwrap_or_default());
            let name = &header.states[entry.state].name;
            rebuilt
                .get_mut(name)
                .unwrap()
                .push((row, entry.value.clone()));
        }
        assert_eq!(rebuilt, everything);
        let events = &entries[entries.iter().position(|e| e.state == 1).unwrap()];
        let list: Vec<String> = codec::decode_all("events", "element", &events.value)?;
        assert_eq!(list.len(), 2, "lists are stored merged");

        // Loaded into a backend of another, narrower range: exactly the rows of that range.
        let narrow = range(16, 40);
        let target = open(&dir.path().join("target"), narrow)?;
        let scratch = dir.path().join("scratch");
        let loaded = load_any(&target, &path, narrow, &scratch)?;
        assert_eq!(target.states(), source.states());
        let expected = scan(&source, Some(narrow))?;
        assert_eq!(scan(&target, None)?, expected);
        let in_range: usize = expected.values().map(Vec::len).sum();
        assert!(in_range > 0 && in_range < rows);
        assert_eq!(loaded.entries, in_range as u64);
        assert_eq!(loaded.bytes, bytes.len() as u64);
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "staging removed"
        );
        // The loaded rows are readable rows of the engine (ingested, not only listed).
        let cf = target.db.cf_handle("orders").unwrap();
        let (row, value) = &expected["orders"][0];
        let got = target.db.get_cf(&cf, row).unwrap();
        assert_eq!(got.as_deref(), Some(&value[..]));
        Ok(())
    }

    #[test]
    fn two_files_of_disjoint_ranges_load_into_one_wider_backend() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let whole = open(&dir.path().join("whole"), range(0, MP))?;
        fill(&whole, 300)?;
        let target = open(&dir.path().join("target"), range(0, MP))?;
        let mut total = 0;
        for (i, part) in [range(0, 23), range(23, MP)].into_iter().enumerate() {
            let source = open(&dir.path().join(format!("part{i}")), part)?;
            fill(&source, 300)?;
            let path = dir.path().join(format!("part{i}.rkc"));
            write_canonical(&source, &path)?;
            // The wider target loads each file's own range.
            total += load_any(&target, &path, range(0, MP), &dir.path().join("s"))?.entries;
        }
        assert_eq!(scan(&target, None)?, scan(&whole, None)?);
        let rows: usize = scan(&whole, None)?.values().map(Vec::len).sum();
        assert_eq!(total, rows as u64);
        Ok(())
    }

    /// Loads `bytes` into `target` and expects `kind`, with nothing registered, loaded or staged.
    fn refused(dir: &Path, target: &Engine, bytes: &[u8], kind: ErrorKind, case: &str) -> String {
        let path = dir.join("damaged.rkc");
        std::fs::write(&path, bytes).unwrap();
        let scratch = dir.join("scratch");
        let err = match load_any(target, &path, target.key_groups, &scratch) {
            Ok(summary) => panic!("{case}: loaded {summary:?}"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), kind, "{case}: {err}");
        assert!(target.states().is_empty(), "{case}: states registered");
        let leftovers = std::fs::read_dir(&scratch).map_or(0, |d| d.count());
        assert_eq!(leftovers, 0, "{case}: staged files left");
        // The reader alone refuses it the same way.
        let direct = read_all(bytes).expect_err(case);
        assert_eq!(direct.kind(), kind, "{case}: {direct}");
        err.to_string()
    }

    #[test]
    fn damaged_files_are_corruption_and_load_nothing() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, summary, _) = savepoint(dir.path(), 40)?;
        let target = open(&dir.path().join("target"), range(0, MP))?;
        let frames = frames(&bytes);
        assert_eq!(
            seal(FORMAT_VERSION, &tagged(&bytes)),
            bytes,
            "seal rebuilds the file"
        );
        let corrupt = |damaged: &[u8], case: &str| {
            refused(dir.path(), &target, damaged, ErrorKind::Corruption, case)
        };
        let entry_at = frames.iter().position(|f| f.1 == TAG_ENTRY).unwrap();
        let (entry_offset, _, entry_body) = &frames[entry_at];
        let trailer_offset = frames.last().unwrap().0;
        assert_eq!(frames.last().unwrap().1, TAG_TRAILER);

        // A flipped byte anywhere: magic, version, header, a key group, the last byte of a value
        // (only the checksum sees that one), the trailer's count and hash.
        let value_byte = entry_offset + FRAME_HEAD_BYTES + entry_body.len() - 1;
        let header_byte = PREAMBLE_BYTES + FRAME_HEAD_BYTES + 3;
        for (at, case) in [
            (0, "magic"),
            (8, "version"),
            (header_byte, "header"),
            (entry_offset + FRAME_HEAD_BYTES, "key group"),
            (value_byte, "value"),
            (trailer_offset + FRAME_HEAD_BYTES, "trailer count"),
            (bytes.len() - 1, "trailer hash"),
        ] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x01;
            let message = corrupt(&damaged, case);
            if case == "value" || case == "trailer hash" {
                assert!(message.contains("checksum"), "{case}: {message}");
            }
        }
        // Every value byte: caught, whichever entry.
        for (offset, tag, body) in &frames {
            if *tag == TAG_ENTRY {
                let mut damaged = bytes.clone();
                damaged[offset + FRAME_HEAD_BYTES + body.len() - 1] ^= 0x80;
                corrupt(&damaged, "a value byte");
            }
        }

        // Truncation at every frame boundary, inside the preamble and inside a frame.
        let mut cuts: Vec<usize> = frames.iter().map(|f| f.0).collect();
        cuts.extend([0, 5, PREAMBLE_BYTES, entry_offset + 3, bytes.len() - 1]);
        for cut in cuts {
            corrupt(&bytes[..cut], &format!("truncated at {cut}"));
        }

        // Appended bytes: one, or a whole second trailer.
        let mut appended = bytes.clone();
        appended.push(0);
        corrupt(&appended, "one byte appended");
        let mut appended = bytes.clone();
        appended.extend_from_slice(&bytes[trailer_offset..]);
        corrupt(&appended, "second trailer");

        // Huge lengths: above the cap, and within it but beyond what is left (not allocated).
        for len in [u32::MAX, MAX_FRAME_BYTES + 1, MAX_FRAME_BYTES] {
            let mut damaged = bytes.clone();
            damaged[entry_offset + 1..entry_offset + 5].copy_from_slice(&len.to_le_bytes());
            corrupt(&damaged, &format!("frame length {len}"));
        }
        // A key length beyond its frame, with a valid checksum.
        let mut crafted = tagged(&bytes);
        crafted[entry_at].1[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
        let message = corrupt(&seal(FORMAT_VERSION, &crafted), "key length");
        assert!(message.contains("overruns"), "{message}");

        // Out of order, crafted with a valid checksum: two entries of one state swapped, an entry
        // repeated, and two states swapped.
        let mut crafted = tagged(&bytes);
        assert_eq!(crafted[entry_at + 1].0, TAG_ENTRY);
        crafted.swap(entry_at, entry_at + 1);
        let message = corrupt(&seal(FORMAT_VERSION, &crafted), "swapped entries");
        assert!(message.contains("previous entry"), "{message}");
        let mut crafted = tagged(&bytes);
        crafted.insert(entry_at, crafted[entry_at].clone());
        corrupt(&seal(FORMAT_VERSION, &crafted), "repeated entry");
        let mut crafted = tagged(&bytes);
        let state_frames: Vec<usize> = (0..crafted.len())
            .filter(|i| crafted[*i].0 == TAG_STATE)
            .collect();
        crafted.swap(state_frames[0], state_frames[1]);
        corrupt(&seal(FORMAT_VERSION, &crafted), "swapped state frames");
        let mut crafted = tagged(&bytes);
        crafted.remove(state_frames[0]);
        corrupt(
            &seal(FORMAT_VERSION, &crafted),
            "entries before any state frame",
        );
        let mut crafted = tagged(&bytes);
        crafted.remove(*state_frames.last().unwrap());
        corrupt(&seal(FORMAT_VERSION, &crafted), "a state frame missing");
        let mut crafted = tagged(&bytes);
        crafted.insert(1, (b'X', vec![1, 2, 3]));
        corrupt(&seal(FORMAT_VERSION, &crafted), "unknown frame");

        // An entry outside the header's range, with a valid checksum: the header narrowed.
        let mut crafted = tagged(&bytes);
        let mut header: CanonicalHeader = decode_exact(&crafted[0].1).unwrap();
        let first_group = u32::from(u16::from_be_bytes([entry_body[0], entry_body[1]]));
        header.key_groups = range(first_group + 1, MP);
        crafted[0].1 = rmp_serde::to_vec_named(&header).unwrap();
        let message = corrupt(
            &seal(FORMAT_VERSION, &crafted),
            "entry outside the header range",
        );
        assert!(message.contains("outside the header's range"), "{message}");
        // An entry under a key group its key does not map to.
        let mut crafted = tagged(&bytes);
        let other = (first_group + 1) % MP;
        crafted[entry_at].1[..2].copy_from_slice(&(other as u16).to_be_bytes());
        let message = corrupt(&seal(FORMAT_VERSION, &crafted), "wrong key group");
        assert!(message.contains("maps to key group"), "{message}");
        // A wrong count in an otherwise sealed trailer.
        let mut damaged = bytes.clone();
        let count = summary.entries + 1;
        damaged[trailer_offset + 5..trailer_offset + 13].copy_from_slice(&count.to_le_bytes());
        let message = corrupt(&damaged, "count");
        assert!(message.contains("counts"), "{message}");

        // Intact, the same file loads.
        let path = dir.path().join("intact.rkc");
        std::fs::write(&path, &bytes).unwrap();
        load_any(&target, &path, range(0, MP), &dir.path().join("scratch"))?;
        assert_eq!(target.states(), states());
        Ok(())
    }

    /// The example of `docs/canonical-format.md`, built byte by byte from the document alone: the
    /// writer produces exactly these bytes, and the reader and the loader accept them.
    #[test]
    fn the_documented_example_is_what_the_writer_writes() -> Result<()> {
        #[derive(Serialize)]
        struct DocHeader {
            max_parallelism: u32,
            key_groups: [u32; 2],
            states: Vec<DocState>,
        }
        #[derive(Serialize)]
        struct DocState {
            format: u32,
            name: &'static str,
            kind: &'static str,
            key_tag: &'static str,
            value_tag: &'static str,
            user_key_tag: Option<&'static str>,
        }
        let frame = |out: &mut Vec<u8>, tag: u8, body: &[u8]| {
            out.push(tag);
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
        };
        let record = DocState {
            format: 2,
            name: "counts",
            kind: "value",
            key_tag: "string",
            value_tag: "u64",
            user_key_tag: None,
        };
        let record_bytes = rmp_serde::to_vec_named(&record).unwrap();
        let header = DocHeader {
            max_parallelism: 128,
            key_groups: [0, 128],
            states: vec![record],
        };
        let key = [0xa4, b'r', b'o', b'c', b'k'];
        let group = key_group_of(&key, 128) as u16;
        let mut doc = b"RKPTCANO".to_vec();
        doc.extend_from_slice(&[1, 0, 0, 0]);
        frame(&mut doc, b'H', &rmp_serde::to_vec_named(&header).unwrap());
        frame(&mut doc, b'S', &record_bytes);
        let mut entry = group.to_be_bytes().to_vec();
        entry.extend_from_slice(&[5, 0, 0, 0]);
        entry.extend_from_slice(&key);
        entry.push(0x03);
        assert_eq!(entry.len(), 12);
        frame(&mut doc, b'E', &entry);
        let mut trailer = 1u64.to_le_bytes().to_vec();
        trailer.extend_from_slice(blake3::hash(&doc).as_bytes());
        frame(&mut doc, b'T', &trailer);

        let dir = tempfile::tempdir().unwrap();
        let all = KeyGroupRange::all(128)?;
        let source = Engine::open(&dir.path().join("s"), 128, all, BackendSettings::default())?;
        let counts = StateInfo::new(
            "counts",
            StateKind::Value,
            "string".into(),
            "u64".into(),
            None,
        );
        source.register(counts.clone())?;
        let row = codec::encode_key("counts", "rock", 128, all)?;
        let cf = source.db.cf_handle("counts").unwrap();
        source.db.put_cf(&cf, &row, [0x03]).unwrap();
        let path = dir.path().join("example.rkc");
        write_canonical(&source, &path)?;
        assert_eq!(std::fs::read(&path).unwrap(), doc);

        let (header, entries) = read_all(&doc)?;
        assert_eq!(header.states, vec![counts]);
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].key.as_slice(), entries[0].value.as_slice()),
            (&key[..], &[3][..])
        );
        let target = Engine::open(&dir.path().join("t"), 128, all, BackendSettings::default())?;
        load_any(&target, &path, all, &dir.path().join("scratch"))?;
        let cf = target.db.cf_handle("counts").unwrap();
        assert_eq!(target.db.get_cf(&cf, &row).unwrap(), Some(vec![0x03]));
        Ok(())
    }

    #[test]
    fn a_newer_format_version_is_refused_by_version() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _, _) = savepoint(dir.path(), 10)?;
        let target = open(&dir.path().join("target"), range(0, MP))?;
        let newer = seal(FORMAT_VERSION + 1, &tagged(&bytes));
        let message = refused(dir.path(), &target, &newer, ErrorKind::Invalid, "newer");
        assert!(message.contains("version 2"), "{message}");
        let zero = seal(0, &tagged(&bytes));
        refused(
            dir.path(),
            &target,
            &zero,
            ErrorKind::Corruption,
            "version 0",
        );
        Ok(())
    }

    #[test]
    fn a_load_into_an_incompatible_backend_is_refused_and_loads_nothing() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _, _) = savepoint(dir.path(), 30)?;
        let path = dir.path().join("savepoint.rkc");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let scratch = dir.path().join("scratch");
        // A state of the same name registered as another kind.
        let target = open(&dir.path().join("target"), range(0, MP))?;
        let clash = StateInfo::new("orders", StateKind::Value, "u64".into(), "u64".into(), None);
        target.register(clash.clone())?;
        let err = load_any(&target, &path, range(0, MP), &scratch).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert_eq!(target.states(), vec![clash]);
        // Another max parallelism, or a range the backend does not own.
        let other = Engine::open(
            &dir.path().join("other"),
            MP * 2,
            range(0, MP),
            BackendSettings::default(),
        )?;
        let err = load_any(&other, &path, range(0, MP), &scratch).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        let narrow = open(&dir.path().join("narrow"), range(0, 8))?;
        let err = load_any(&narrow, &path, range(0, 16), &scratch).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        assert!(other.states().is_empty() && narrow.states().is_empty());
        Ok(())
    }

    #[test]
    fn the_reader_stops_after_an_error_and_iterates() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, summary, _) = savepoint(dir.path(), 20)?;
        let reader = CanonicalReader::new(&bytes[..])?;
        let entries = reader.collect::<Result<Vec<_>>>()?;
        assert_eq!(entries.len() as u64, summary.entries);

        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let mut reader = CanonicalReader::new(&damaged[..])?;
        let err = loop {
            match reader.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a damaged stream verified"),
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), ErrorKind::Corruption);
        // Never `Ok(None)` (verified) after an error; the iterator ends.
        assert!(reader.next_entry().is_err());
        assert!(reader.next().is_none());
        Ok(())
    }
}
