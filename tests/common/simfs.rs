//! A simulated filesystem for crash-point enumeration (the `Fs` seam of `LocalStore`).
//!
//! It models what a real crash keeps: a file's bytes survive only up to its last `sync_all`, a
//! directory entry (create, link, rename, unlink) only once its directory was `sync_dir`ed. Every
//! mutating call is one numbered operation; the filesystem can be told to crash before operation k,
//! after which every call fails. `crash_state` then builds the filesystem a machine would find after
//! rebooting, losing unsynced data (or not, to model a process crash with the OS still up).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Cursor, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rockpoint::testing::{Fs, FsEntry, FsRead, FsWrite};

#[derive(Clone, Debug)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    modified: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir(u64),
}

#[derive(Clone, Debug, Default)]
struct Dir {
    live: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
    modified: Option<SystemTime>,
}

#[derive(Clone, Debug)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    dirs: BTreeMap<u64, Dir>,
    next: u64,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    trace: Vec<TraceOp>,
    fail_at: Option<(u64, io::ErrorKind)>,
}

/// One mutating operation, as recorded; replaying a prefix rebuilds the state before any op.
#[derive(Clone, Debug)]
pub enum TraceOp {
    Create(PathBuf),
    Write(u64, Vec<u8>),
    Fsync(u64),
    Link(PathBuf, PathBuf),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
    Mkdir(PathBuf),
    Rmdir(PathBuf),
    FsyncDir(PathBuf),
}

/// Whether a crash loses what was never synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Power loss / kernel crash: only synced data and directory entries survive.
    Unsynced,
    /// Process crash: the page cache survives, everything written is kept.
    Nothing,
}

/// The simulated filesystem. Paths are absolute; the root directory always exists.
#[derive(Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimFs")
    }
}

const ROOT: u64 = 0;

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the machine is down")
}

fn parts(path: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("unsupported path {}", path.display()),
                ));
            }
        }
    }
    Ok(out)
}

impl Default for SimFs {
    fn default() -> Self {
        Self::new()
    }
}

impl SimFs {
    pub fn new() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(ROOT, Dir::default());
        SimFs {
            state: Arc::new(Mutex::new(State {
                inodes: BTreeMap::new(),
                dirs,
                next: 1,
                ops: 0,
                crash_at: None,
                crashed: false,
                trace: Vec::new(),
                fail_at: None,
            })),
        }
    }

    /// Crash before mutating operation `k` (0-based): it and every later call fail.
    pub fn crash_before(&self, k: u64) {
        self.state.lock().unwrap().crash_at = Some(k);
    }

    /// Mutating operation `k` fails once with `kind` (e.g. `StorageFull`); the machine stays up.
    pub fn fail_at(&self, k: u64, kind: io::ErrorKind) {
        self.state.lock().unwrap().fail_at = Some((k, kind));
    }

    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().unwrap().ops
    }

    /// The mutating operations performed so far, in order.
    pub fn trace(&self) -> Vec<TraceOp> {
        self.state.lock().unwrap().trace.clone()
    }

    /// A filesystem in the state just before operation `k` of `trace` (ALICE-style replay).
    pub fn replay(trace: &[TraceOp]) -> SimFs {
        let fs = SimFs::new();
        {
            let mut state = fs.state.lock().unwrap();
            for op in trace {
                apply(&mut state, op).expect("a recorded operation replays");
            }
        }
        fs
    }

    pub fn has_crashed(&self) -> bool {
        self.state.lock().unwrap().crashed
    }

    /// The filesystem found after the crash, as a new, running `SimFs`.
    pub fn crash_state(&self, loss: Loss) -> SimFs {
        let old = self.state.lock().unwrap().clone();
        let mut state = State {
            inodes: BTreeMap::new(),
            dirs: BTreeMap::new(),
            next: old.next,
            ops: 0,
            crash_at: None,
            crashed: false,
            trace: Vec::new(),
            fail_at: None,
        };
        // Walk from the root through the entries that survive.
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            let dir = &old.dirs[&id];
            let entries = match loss {
                Loss::Unsynced => dir.durable.clone(),
                Loss::Nothing => dir.live.clone(),
            };
            for node in entries.values() {
                match node {
                    Node::Dir(child) => stack.push(*child),
                    Node::File(inode) => {
                        let old_inode = &old.inodes[inode];
                        let data = match loss {
                            Loss::Unsynced => old_inode.durable.clone(),
                            Loss::Nothing => old_inode.live.clone(),
                        };
                        state.inodes.insert(
                            *inode,
                            Inode {
                                live: data.clone(),
                                durable: data,
                                modified: old_inode.modified,
                            },
                        );
                    }
                }
            }
            state.dirs.insert(
                id,
                Dir {
                    live: entries.clone(),
                    durable: entries,
                    modified: dir.modified,
                },
            );
        }
        SimFs {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Runs one mutating operation: counts it, fails if the machine is (now) down, records it.
    fn run(&self, op: TraceOp) -> io::Result<u64> {
        let mut state = self.state.lock().unwrap();
        if state.crashed {
            return Err(crashed());
        }
        if state.crash_at == Some(state.ops) {
            state.crashed = true;
            return Err(crashed());
        }
        if let Some((k, kind)) = state.fail_at
            && k == state.ops
        {
            state.fail_at = None;
            state.ops += 1;
            return Err(io::Error::new(kind, "injected failure"));
        }
        let result = apply(&mut state, &op)?;
        state.ops += 1;
        state.trace.push(op);
        Ok(result)
    }

    fn check_up(state: &State) -> io::Result<()> {
        if state.crashed {
            Err(crashed())
        } else {
            Ok(())
        }
    }

    fn lookup_dir(state: &State, parts: &[String]) -> io::Result<u64> {
        let mut id = ROOT;
        for part in parts {
            match state.dirs[&id].live.get(part) {
                Some(Node::Dir(child)) => id = *child,
                Some(Node::File(_)) => {
                    return Err(io::Error::new(io::ErrorKind::NotADirectory, part.clone()));
                }
                None => return Err(io::Error::new(io::ErrorKind::NotFound, part.clone())),
            }
        }
        Ok(id)
    }

    fn split(path: &Path) -> io::Result<(Vec<String>, String)> {
        let mut p = parts(path)?;
        let name = p
            .pop()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "root"))?;
        Ok((p, name))
    }

    fn lookup(state: &State, path: &Path) -> io::Result<Node> {
        let p = parts(path)?;
        if p.is_empty() {
            return Ok(Node::Dir(ROOT));
        }
        let (dir, name) = Self::split(path)?;
        let parent = Self::lookup_dir(state, &dir)?;
        state.dirs[&parent]
            .live
            .get(&name)
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, path.display().to_string()))
    }

    /// Flips bit `bit` of the file at `path` (out of band: not an operation).
    pub fn flip_bit(&self, path: &Path, bit: usize) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        match Self::lookup(&state, path)? {
            Node::File(inode) => {
                let node = state.inodes.get_mut(&inode).unwrap();
                if node.live.is_empty() {
                    return Ok(());
                }
                let at = bit / 8 % node.live.len();
                node.live[at] ^= 1 << (bit % 8);
                node.durable = node.live.clone();
                Ok(())
            }
            Node::Dir(_) => Err(io::Error::new(io::ErrorKind::IsADirectory, "directory")),
        }
    }

    /// Every file path under `dir` (out of band).
    pub fn files(&self, dir: &Path) -> Vec<PathBuf> {
        let state = self.state.lock().unwrap();
        let mut out = Vec::new();
        let Ok(Node::Dir(start)) = Self::lookup(&state, dir) else {
            return out;
        };
        let mut stack = vec![(start, dir.to_path_buf())];
        while let Some((id, path)) = stack.pop() {
            for (name, node) in &state.dirs[&id].live {
                match node {
                    Node::Dir(child) => stack.push((*child, path.join(name))),
                    Node::File(_) => out.push(path.join(name)),
                }
            }
        }
        out.sort();
        out
    }
}

/// Applies one operation to the live state. Returns the inode a `Create` made (else 0).
fn apply(state: &mut State, op: &TraceOp) -> io::Result<u64> {
    let now = SystemTime::now();
    match op {
        TraceOp::Create(path) => {
            let (dir, name) = SimFs::split(path)?;
            let parent = SimFs::lookup_dir(state, &dir)?;
            if state.dirs[&parent].live.contains_key(&name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ));
            }
            let id = state.next;
            state.next += 1;
            state.inodes.insert(
                id,
                Inode {
                    live: Vec::new(),
                    durable: Vec::new(),
                    modified: now,
                },
            );
            let dir = state.dirs.get_mut(&parent).unwrap();
            dir.live.insert(name, Node::File(id));
            dir.modified = Some(now);
            Ok(id)
        }
        TraceOp::Write(inode, data) => {
            let node = state
                .inodes
                .get_mut(inode)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            node.live.extend_from_slice(data);
            node.modified = now;
            Ok(0)
        }
        TraceOp::Fsync(inode) => {
            let node = state
                .inodes
                .get_mut(inode)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            node.durable = node.live.clone();
            Ok(0)
        }
        TraceOp::Link(from, to) => {
            let Node::File(inode) = SimFs::lookup(state, from)? else {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    from.display().to_string(),
                ));
            };
            let (dir, name) = SimFs::split(to)?;
            let parent = SimFs::lookup_dir(state, &dir)?;
            if state.dirs[&parent].live.contains_key(&name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    to.display().to_string(),
                ));
            }
            state
                .dirs
                .get_mut(&parent)
                .unwrap()
                .live
                .insert(name, Node::File(inode));
            Ok(0)
        }
        TraceOp::Rename(from, to) => {
            let node = SimFs::lookup(state, from)?;
            let (from_dir, from_name) = SimFs::split(from)?;
            let (to_dir, to_name) = SimFs::split(to)?;
            let from_parent = SimFs::lookup_dir(state, &from_dir)?;
            let to_parent = SimFs::lookup_dir(state, &to_dir)?;
            state
                .dirs
                .get_mut(&from_parent)
                .unwrap()
                .live
                .remove(&from_name);
            state
                .dirs
                .get_mut(&to_parent)
                .unwrap()
                .live
                .insert(to_name, node);
            Ok(0)
        }
        TraceOp::Unlink(path) => {
            if let Node::Dir(_) = SimFs::lookup(state, path)? {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    path.display().to_string(),
                ));
            }
            let (dir, name) = SimFs::split(path)?;
            let parent = SimFs::lookup_dir(state, &dir)?;
            state.dirs.get_mut(&parent).unwrap().live.remove(&name);
            Ok(0)
        }
        TraceOp::Mkdir(path) => {
            let (dir, name) = SimFs::split(path)?;
            let parent = SimFs::lookup_dir(state, &dir)?;
            if state.dirs[&parent].live.contains_key(&name) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    path.display().to_string(),
                ));
            }
            let id = state.next;
            state.next += 1;
            state.dirs.insert(
                id,
                Dir {
                    modified: Some(now),
                    ..Dir::default()
                },
            );
            state
                .dirs
                .get_mut(&parent)
                .unwrap()
                .live
                .insert(name, Node::Dir(id));
            Ok(0)
        }
        TraceOp::Rmdir(path) => {
            let Node::Dir(id) = SimFs::lookup(state, path)? else {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    path.display().to_string(),
                ));
            };
            if !state.dirs[&id].live.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    path.display().to_string(),
                ));
            }
            let (dir, name) = SimFs::split(path)?;
            let parent = SimFs::lookup_dir(state, &dir)?;
            state.dirs.get_mut(&parent).unwrap().live.remove(&name);
            Ok(0)
        }
        TraceOp::FsyncDir(path) => {
            let Node::Dir(id) = SimFs::lookup(state, path)? else {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    path.display().to_string(),
                ));
            };
            let dir = state.dirs.get_mut(&id).unwrap();
            dir.durable = dir.live.clone();
            Ok(0)
        }
    }
}

struct SimWriter {
    fs: SimFs,
    inode: u64,
}

impl Write for SimWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.fs.run(TraceOp::Write(self.inode, buf.to_vec()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        SimFs::check_up(&self.fs.state.lock().unwrap())
    }
}

impl FsWrite for SimWriter {
    fn sync_all(&mut self) -> io::Result<()> {
        self.fs.run(TraceOp::Fsync(self.inode)).map(|_| ())
    }
}

impl Fs for SimFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWrite>> {
        let inode = self.run(TraceOp::Create(path.to_path_buf()))?;
        Ok(Box::new(SimWriter {
            fs: self.clone(),
            inode,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FsRead>> {
        let state = self.state.lock().unwrap();
        SimFs::check_up(&state)?;
        match SimFs::lookup(&state, path)? {
            Node::File(inode) => Ok(Box::new(Cursor::new(state.inodes[&inode].live.clone()))),
            Node::Dir(_) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                path.display().to_string(),
            )),
        }
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.run(TraceOp::Link(from.to_path_buf(), to.to_path_buf()))
            .map(|_| ())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.run(TraceOp::Rename(from.to_path_buf(), to.to_path_buf()))
            .map(|_| ())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.run(TraceOp::Unlink(path.to_path_buf())).map(|_| ())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.run(TraceOp::Mkdir(path.to_path_buf())).map(|_| ())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.run(TraceOp::Rmdir(path.to_path_buf())).map(|_| ())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.run(TraceOp::FsyncDir(path.to_path_buf())).map(|_| ())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsEntry>> {
        let state = self.state.lock().unwrap();
        SimFs::check_up(&state)?;
        let Node::Dir(id) = SimFs::lookup(&state, path)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                path.display().to_string(),
            ));
        };
        Ok(state.dirs[&id]
            .live
            .iter()
            .map(|(name, node)| entry(&state, name, *node))
            .collect())
    }

    fn metadata(&self, path: &Path) -> io::Result<FsEntry> {
        let state = self.state.lock().unwrap();
        SimFs::check_up(&state)?;
        let node = SimFs::lookup(&state, path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(entry(&state, &name, node))
    }
}

fn entry(state: &State, name: &str, node: Node) -> FsEntry {
    match node {
        Node::File(inode) => FsEntry {
            name: name.to_owned(),
            is_dir: false,
            len: state.inodes[&inode].live.len() as u64,
            modified: state.inodes[&inode].modified,
        },
        Node::Dir(id) => FsEntry {
            name: name.to_owned(),
            is_dir: true,
            len: 0,
            modified: state.dirs[&id].modified.unwrap_or(SystemTime::UNIX_EPOCH),
        },
    }
}
