//! Structure-aware mutations: raw bytes, MessagePack values (walked without a schema), the
//! checksummed envelope of records (re-sealed so that the checksum passes and validation runs),
//! and the frames and trailer of the canonical stream (re-sealed likewise).

/// xorshift64*: small, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_BYTES: [u8; 8] = [0, 0xff, 0x7f, 0x80, 1, 0x40, 0xc1, 0xdc];

// ---------------------------------------------------------------------------------------------
// Raw bytes
// ---------------------------------------------------------------------------------------------

/// One raw mutation of `data`; `pool` provides splice partners.
pub fn bytes(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = data.len();
    match rng.below(10) {
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = *rng.pick(&INTERESTING_BYTES);
        }
        2 if len > 0 => data.truncate(rng.below(len)),
        3 => {
            let n = 1 + rng.below(64);
            data.extend((0..n).map(|_| rng.next() as u8));
        }
        4 if !pool.is_empty() => {
            // Splice: a prefix of this one, a suffix of another.
            let other = rng.pick(pool);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        5 if len > 0 => {
            let start = rng.below(len);
            let end = start + rng.below((len - start).min(64) + 1);
            let copy = data[start..end].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, copy);
        }
        6 if len > 0 => {
            let start = rng.below(len);
            let end = start + rng.below((len - start).min(64) + 1);
            data.drain(start..end);
        }
        7 if len >= 4 => {
            let at = rng.below(len - 3);
            let v: u32 = *rng.pick(&[0, 1, 0x7fff_ffff, 0x8000_0000, u32::MAX, 1 << 30, 40]);
            data[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        8 if len >= 8 => {
            let at = rng.below(len - 7);
            let v: u64 = *rng.pick(&[0, u64::MAX, i64::MAX as u64, 1 << 32, 1 << 40]);
            data[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        _ if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.next() as u8;
        }
        _ => data.push(rng.next() as u8),
    }
}

// ---------------------------------------------------------------------------------------------
// MessagePack
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Int(i128),
    Str,
    Bin,
    Array(u64),
    Map(u64),
    Other,
}

/// One value of a MessagePack document: its bytes `start..end`, header length, parent and index.
#[derive(Clone, Copy, Debug)]
struct Node {
    start: usize,
    end: usize,
    header: usize,
    kind: Kind,
    parent: Option<usize>,
    index: u64,
}

/// Every value of the document, in pre-order; stops quietly at the first malformed byte.
fn walk(data: &[u8]) -> Vec<Node> {
    let mut nodes = Vec::new();
    let _ = walk_value(data, 0, None, 0, 0, &mut nodes);
    nodes
}

fn be(data: &[u8], at: usize, n: usize) -> Option<u64> {
    let slice = data.get(at..at + n)?;
    Some(slice.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

fn walk_value(
    data: &[u8],
    at: usize,
    parent: Option<usize>,
    index: u64,
    depth: u32,
    nodes: &mut Vec<Node>,
) -> Option<usize> {
    if depth > 32 || nodes.len() > 4096 {
        return None;
    }
    let b = *data.get(at)?;
    let (header, kind, payload): (usize, Kind, usize) = match b {
        0x00..=0x7f => (1, Kind::Int(b.into()), 0),
        0xe0..=0xff => (1, Kind::Int((b as i8).into()), 0),
        0x80..=0x8f => (1, Kind::Map((b & 0x0f).into()), 0),
        0x90..=0x9f => (1, Kind::Array((b & 0x0f).into()), 0),
        0xa0..=0xbf => (1, Kind::Str, (b & 0x1f) as usize),
        0xc0 | 0xc2 | 0xc3 => (1, Kind::Other, 0),
        0xc4 => (2, Kind::Bin, be(data, at + 1, 1)? as usize),
        0xc5 => (3, Kind::Bin, be(data, at + 1, 2)? as usize),
        0xc6 => (5, Kind::Bin, be(data, at + 1, 4)? as usize),
        0xca => (5, Kind::Other, 0),
        0xcb => (9, Kind::Other, 0),
        0xcc..=0xcf => {
            let n = 1 << (b - 0xcc);
            (1 + n, Kind::Int(be(data, at + 1, n)?.into()), 0)
        }
        0xd0..=0xd3 => {
            let n = 1 << (b - 0xd0);
            let raw = be(data, at + 1, n)?;
            let shift = 64 - 8 * n as u32;
            (
                1 + n,
                Kind::Int((((raw << shift) as i64) >> shift).into()),
                0,
            )
        }
        0xd9 => (2, Kind::Str, be(data, at + 1, 1)? as usize),
        0xda => (3, Kind::Str, be(data, at + 1, 2)? as usize),
        0xdb => (5, Kind::Str, be(data, at + 1, 4)? as usize),
        0xdc => (3, Kind::Array(be(data, at + 1, 2)?), 0),
        0xdd => (5, Kind::Array(be(data, at + 1, 4)?), 0),
        0xde => (3, Kind::Map(be(data, at + 1, 2)?), 0),
        0xdf => (5, Kind::Map(be(data, at + 1, 4)?), 0),
        // Extensions and the never-used byte: treat as opaque single bytes.
        _ => (1, Kind::Other, 0),
    };
    let me = nodes.len();
    nodes.push(Node {
        start: at,
        end: at + header + payload,
        header,
        kind,
        parent,
        index,
    });
    let mut end = at + header + payload;
    if end > data.len() {
        return None;
    }
    let children = match kind {
        Kind::Array(n) => n,
        Kind::Map(n) => n.checked_mul(2)?,
        _ => 0,
    };
    for i in 0..children {
        end = walk_value(data, end, Some(me), i, depth + 1, nodes)?;
    }
    nodes[me].end = end;
    Some(end)
}

pub fn encode_uint(v: u64) -> Vec<u8> {
    match v {
        0..=0x7f => vec![v as u8],
        0x80..=0xff => vec![0xcc, v as u8],
        0x100..=0xffff => [&[0xcd][..], &(v as u16).to_be_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[0xce][..], &(v as u32).to_be_bytes()].concat(),
        _ => [&[0xcf][..], &v.to_be_bytes()].concat(),
    }
}

fn encode_int(v: i128) -> Vec<u8> {
    if v >= 0 {
        encode_uint(v.min(u64::MAX as i128) as u64)
    } else if v >= -32 {
        vec![v as i8 as u8]
    } else {
        let v = v.max(i64::MIN as i128) as i64;
        [&[0xd3][..], &v.to_be_bytes()].concat()
    }
}

fn encode_header(fix: u8, fix_max: u64, ops: [u8; 3], n: u64) -> Vec<u8> {
    match n {
        _ if n <= fix_max => vec![fix | n as u8],
        0..=0xff if ops[0] != 0 => vec![ops[0], n as u8],
        0..=0xffff => [&[ops[1]][..], &(n as u16).to_be_bytes()].concat(),
        _ => [
            &[ops[2]][..],
            &(n.min(u32::MAX as u64) as u32).to_be_bytes(),
        ]
        .concat(),
    }
}

fn encode_str(s: &[u8]) -> Vec<u8> {
    let mut out = encode_header(0xa0, 31, [0xd9, 0xda, 0xdb], s.len() as u64);
    out.extend_from_slice(s);
    out
}

fn encode_bin(s: &[u8]) -> Vec<u8> {
    let mut out = encode_header(0, 0, [0xc4, 0xc5, 0xc6], s.len() as u64);
    if s.len() <= 0xff {
        out = vec![0xc4, s.len() as u8];
    }
    out.extend_from_slice(s);
    out
}

fn encode_array(n: u64) -> Vec<u8> {
    encode_header(0x90, 15, [0, 0xdc, 0xdd], n)
}

fn encode_map(n: u64) -> Vec<u8> {
    encode_header(0x80, 15, [0, 0xde, 0xdf], n)
}

fn interesting_int(rng: &mut Rng, old: i128) -> i128 {
    match rng.below(4) {
        0 => old + 1,
        1 => old - 1,
        2 => (rng.next() % 1000) as i128,
        _ => *rng.pick(&[
            0,
            1,
            2,
            -1,
            127,
            128,
            255,
            256,
            1023,
            1024,
            1025,
            32767,
            32768,
            65535,
            65536,
            1 << 30,
            (1 << 31) - 1,
            u32::MAX as i128,
            1 << 32,
            i64::MAX as i128,
            u64::MAX as i128,
            i64::MIN as i128,
        ]),
    }
}

fn interesting_str(rng: &mut Rng, old: &[u8]) -> Vec<u8> {
    let mut s: Vec<u8> = match rng.below(12) {
        0 => Vec::new(),
        1 => old[..rng.below(old.len() + 1)].to_vec(),
        2 => {
            let mut s = old.to_vec();
            if !s.is_empty() {
                let at = rng.below(s.len());
                s[at] = *rng.pick(b"/.\\\0-_aZ9\xc3\xff");
            }
            s
        }
        3 => [old, b"/.."].concat(),
        4 => vec![b'a'; *rng.pick(&[128, 129, 255, 256, 4096])],
        _ => rng
            .pick(&[
                &b".."[..],
                b".",
                b"../escape",
                b"../../escape",
                b"sub/../../escape",
                b"/tmp/rockpoint-fuzz-escape",
                b"/",
                b"jobs/fuzz/_job",
                b"shared/00/00",
                b"CURRENT",
                b"MANIFEST-000001",
                b"OPTIONS-000001",
                b"000001.log",
                b"\xc3\xa9t\xc3\xa9",
                b"\xff\xfe",
                b"a\0b",
                b"fuzz",
                b"checkpoint",
                b"savepoint",
                b"canonical",
                b"native",
                b"epoch",
                b"reader",
            ])
            .to_vec(),
    };
    if s.len() > 8192 {
        s.truncate(8192);
    }
    s
}

fn replace(data: &mut Vec<u8>, start: usize, end: usize, with: &[u8]) {
    data.splice(start..end, with.iter().copied());
}

/// Sets the element count of container node `parent` to `n` (its header re-encoded).
fn set_count(data: &mut Vec<u8>, node: &Node, n: u64) {
    let header = match node.kind {
        Kind::Map(_) => encode_map(n),
        _ => encode_array(n),
    };
    replace(data, node.start, node.start + node.header, &header);
}

/// One structure-aware mutation of a MessagePack document; `pool` are other documents whose
/// values can be grafted in. Falls back to a raw mutation when the document does not parse.
pub fn msgpack(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let nodes = walk(data);
    // A value cut short by the end of the document is not one to mutate.
    let whole: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].end <= data.len())
        .collect();
    if whole.is_empty() {
        return bytes(rng, data, pool);
    }
    let node = nodes[*rng.pick(&whole)];
    let old = data[node.start..node.end].to_vec();
    match rng.below(10) {
        // Change a scalar in place, by type.
        0..=3 => {
            let new = match node.kind {
                Kind::Int(v) => encode_int(interesting_int(rng, v)),
                Kind::Str => encode_str(&interesting_str(rng, &old[node.header..])),
                Kind::Bin => {
                    let mut body = old[node.header..].to_vec();
                    bytes(rng, &mut body, &[]);
                    encode_bin(&body)
                }
                Kind::Array(n) | Kind::Map(n) => {
                    let count = *rng.pick(&[
                        0,
                        n.saturating_sub(1),
                        n + 1,
                        0xffff,
                        0x1_0000,
                        u32::MAX as u64,
                    ]);
                    let mut out = old.clone();
                    set_count(&mut out, &Node { start: 0, ..node }, count);
                    out
                }
                Kind::Other => vec![*rng.pick(&[0xc0, 0xc2, 0xc3, 0xc1, 0xd4])],
            };
            replace(data, node.start, node.end, &new);
        }
        // Type confusion: replace the value with one of another type.
        4 => {
            let new = match rng.below(6) {
                0 => vec![0xc0],
                1 => vec![0xc3],
                2 => encode_int(interesting_int(rng, 0)),
                3 => encode_str(&interesting_str(rng, b"")),
                4 => encode_array(0),
                _ => encode_map(0),
            };
            replace(data, node.start, node.end, &new);
        }
        // Graft a value from this or another document.
        5 | 6 => {
            let donor = if pool.is_empty() || rng.chance(50) {
                data.clone()
            } else {
                rng.pick(pool).clone()
            };
            let donors: Vec<Node> = walk(&donor)
                .into_iter()
                .filter(|d| d.end <= donor.len())
                .collect();
            if let Some(d) = (!donors.is_empty()).then(|| *rng.pick(&donors)) {
                let graft = donor[d.start..d.end].to_vec();
                replace(data, node.start, node.end, &graft);
            }
        }
        // Duplicate or remove an element (a key and its value in a map), fixing the count.
        7 | 8 => {
            let Some(p) = node.parent else {
                return bytes(rng, data, pool);
            };
            let parent = nodes[p];
            let (span_end, step, count) = match parent.kind {
                Kind::Array(n) => (node.end, 1, n),
                Kind::Map(n) => {
                    if node.index % 2 == 1 {
                        return bytes(rng, data, pool);
                    }
                    let value = nodes
                        .iter()
                        .find(|v| v.parent == Some(p) && v.index == node.index + 1);
                    match value {
                        Some(v) => (v.end, 1, n),
                        None => return bytes(rng, data, pool),
                    }
                }
                _ => return bytes(rng, data, pool),
            };
            let span = data[node.start..span_end.min(data.len())].to_vec();
            if rng.chance(50) {
                replace(data, node.start, node.start, &span);
                set_count(data, &parent, count + step);
            } else {
                replace(data, node.start, span_end.min(data.len()), &[]);
                set_count(data, &parent, count.saturating_sub(step));
            }
        }
        // A raw mutation inside the value's bytes.
        _ => {
            let mut inner = old;
            bytes(rng, &mut inner, &[]);
            replace(data, node.start, node.end, &inner);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The checksummed envelope: magic(8) version(u32 LE) length(u64 LE) BLAKE3(body)(32) body
// ---------------------------------------------------------------------------------------------

pub const HEADER_BYTES: usize = 52;

pub fn seal(magic_version: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = magic_version[..12].to_vec();
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether `bytes` pass the envelope's checks (magic, a readable version, length, checksum).
pub fn envelope_ok(bytes: &[u8], magic: &[u8; 8]) -> bool {
    bytes.len() >= HEADER_BYTES
        && &bytes[..8] == magic
        && (1..=rockpoint::format::METADATA_FORMAT_VERSION)
            .contains(&u32::from_le_bytes(bytes[8..12].try_into().unwrap()))
        && u64::from_le_bytes(bytes[12..20].try_into().unwrap())
            == (bytes.len() - HEADER_BYTES) as u64
        && blake3::hash(&bytes[HEADER_BYTES..]).as_bytes() == &bytes[20..52]
}

/// A mutant of a sealed record: mostly the body mutated (as MessagePack or raw) and re-sealed, so
/// that the checksum passes and decoding and validation run; sometimes the version; sometimes the
/// whole record raw, envelope included.
pub fn sealed(rng: &mut Rng, record: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    if record.len() < HEADER_BYTES || rng.chance(12) {
        let mut out = record.to_vec();
        for _ in 0..1 + rng.below(3) {
            bytes(rng, &mut out, pool);
        }
        return out;
    }
    let bodies: Vec<Vec<u8>> = pool
        .iter()
        .filter(|p| p.len() >= HEADER_BYTES)
        .map(|p| p[HEADER_BYTES..].to_vec())
        .collect();
    let mut head = record[..12].to_vec();
    let mut body = record[HEADER_BYTES..].to_vec();
    match rng.below(100) {
        0..=64 => {
            for _ in 0..1 + rng.below(3) {
                msgpack(rng, &mut body, &bodies);
            }
        }
        65..=89 => {
            for _ in 0..1 + rng.below(3) {
                bytes(rng, &mut body, &bodies);
            }
        }
        _ => {
            let version: u32 = *rng.pick(&[0, 1, 2, 3, u32::MAX]);
            head[8..12].copy_from_slice(&version.to_le_bytes());
            if rng.chance(50) {
                msgpack(rng, &mut body, &bodies);
            }
        }
    }
    seal(&head, &body)
}

// ---------------------------------------------------------------------------------------------
// The canonical stream: preamble(12) frame* ; frame = tag u8, length u32 LE, body; trailer `T`
// = entry count u64 LE + BLAKE3 of every byte before the trailer's tag.
// ---------------------------------------------------------------------------------------------

/// A canonical stream taken apart: its preamble and its frames (tag, body) before the trailer.
type Framed = (Vec<u8>, Vec<(u8, Vec<u8>)>);

/// The preamble and the frames before the trailer; `None` if the framing does not parse.
fn frames(data: &[u8]) -> Option<Framed> {
    let preamble = data.get(..12)?.to_vec();
    let mut at = 12;
    let mut out = Vec::new();
    while at < data.len() {
        let tag = data[at];
        let len = u32::from_le_bytes(data.get(at + 1..at + 5)?.try_into().ok()?) as usize;
        let body = data.get(at + 5..at + 5 + len)?.to_vec();
        at += 5 + len;
        if tag == b'T' {
            break;
        }
        out.push((tag, body));
    }
    Some((preamble, out))
}

fn encode_stream(
    preamble: &[u8],
    frames: &[(u8, Vec<u8>)],
    trailer: Option<(u64, [u8; 32])>,
) -> Vec<u8> {
    let mut out = preamble.to_vec();
    for (tag, body) in frames {
        out.push(*tag);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    let (count, hash) = trailer.unwrap_or_else(|| {
        let count = frames.iter().filter(|(t, _)| *t == b'E').count() as u64;
        (count, *blake3::hash(&out).as_bytes())
    });
    out.push(b'T');
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&hash);
    out
}

/// A mutant of a canonical stream: frames mutated (the header and state records as MessagePack,
/// entries by field), reordered, duplicated or dropped, then the lengths and trailer recomputed;
/// sometimes with a wrong trailer or raw bytes.
pub fn canonical(rng: &mut Rng, stream: &[u8], pool: &[Vec<u8>], max_parallelism: u32) -> Vec<u8> {
    let parsed = frames(stream);
    let Some((mut preamble, mut frames)) = parsed.filter(|(_, f)| !f.is_empty() && !rng.chance(10))
    else {
        let mut out = stream.to_vec();
        for _ in 0..1 + rng.below(3) {
            bytes(rng, &mut out, pool);
        }
        return out;
    };
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(frames.len());
        match rng.below(100) {
            // A header or state record, as MessagePack.
            0..=29 => {
                let records: Vec<usize> =
                    (0..frames.len()).filter(|&j| frames[j].0 != b'E').collect();
                let j = if records.is_empty() {
                    i
                } else {
                    *rng.pick(&records)
                };
                let donors: Vec<Vec<u8>> = frames.iter().map(|(_, b)| b.clone()).collect();
                msgpack(rng, &mut frames[j].1, &donors);
            }
            // An entry: its key group, key (with its key group recomputed), lengths or value.
            30..=59 => {
                let entries: Vec<usize> =
                    (0..frames.len()).filter(|&j| frames[j].0 == b'E').collect();
                if entries.is_empty() {
                    continue;
                }
                let body = &mut frames[*rng.pick(&entries)].1;
                if body.len() < 6 {
                    bytes(rng, body, &[]);
                    continue;
                }
                match rng.below(4) {
                    0 => {
                        let g: u16 = *rng.pick(&[0, 1, 63, 64, 127, 128, 0xffff]);
                        body[..2].copy_from_slice(&g.to_be_bytes());
                    }
                    1 => {
                        let k = u32::from_le_bytes(body[2..6].try_into().unwrap()) as usize;
                        if 6 + k <= body.len() {
                            let mut key = body[6..6 + k].to_vec();
                            if rng.chance(50) {
                                msgpack(rng, &mut key, &[]);
                            } else {
                                bytes(rng, &mut key, &[]);
                            }
                            let group = rockpoint::key_group_of(&key, max_parallelism) as u16;
                            let mut new = group.to_be_bytes().to_vec();
                            new.extend_from_slice(&(key.len() as u32).to_le_bytes());
                            new.extend_from_slice(&key);
                            new.extend_from_slice(&body[6 + k..]);
                            *body = new;
                        }
                    }
                    2 => {
                        let k: u32 = *rng.pick(&[0, 1, u32::MAX, 1 << 30]);
                        let at = if rng.chance(50) {
                            2
                        } else {
                            2 + rng.below(body.len() - 5)
                        };
                        body[at..at + 4].copy_from_slice(&k.to_le_bytes());
                    }
                    _ => bytes(rng, body, &[]),
                }
            }
            60..=69 => {
                let copy = frames[i].clone();
                let at = rng.below(frames.len() + 1);
                frames.insert(at, copy);
            }
            70..=77 if frames.len() > 1 => {
                frames.remove(i);
            }
            78..=84 => {
                let j = rng.below(frames.len());
                frames.swap(i, j);
            }
            85..=89 => frames[i].0 = *rng.pick(b"HSETX\0"),
            90..=94 => {
                // A frame from another stream.
                if let Some((_, other)) = frames_of_pool(rng, pool) {
                    let at = rng.below(frames.len() + 1);
                    frames.insert(at, other);
                }
            }
            _ => {
                let version: u32 = *rng.pick(&[0, 2, u32::MAX]);
                preamble[8..12].copy_from_slice(&version.to_le_bytes());
            }
        }
    }
    let trailer = rng.chance(8).then(|| {
        let count = frames.iter().filter(|(t, _)| *t == b'E').count() as u64;
        let mut hash = [0u8; 32];
        hash[0] = rng.next() as u8;
        (
            count.wrapping_add(rng.below(3) as u64).wrapping_sub(1),
            hash,
        )
    });
    let mut out = encode_stream(&preamble, &frames, trailer);
    if rng.chance(5) {
        bytes(rng, &mut out, &[]);
    }
    out
}

fn frames_of_pool(rng: &mut Rng, pool: &[Vec<u8>]) -> Option<((), (u8, Vec<u8>))> {
    if pool.is_empty() {
        return None;
    }
    let chosen: &Vec<u8> = rng.pick(pool);
    let (_, frames) = frames(chosen)?;
    (!frames.is_empty()).then(|| ((), rng.pick(&frames).clone()))
}
