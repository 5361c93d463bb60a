//! Fuzzing of every decoder of bytes from storage, on stable Rust: a seeded, structure-aware
//! mutation loop over real records (checkpoint metadata and restore planning, the job record, pin
//! records through GC, the ticket and handle wire forms, the canonical savepoint stream, the root
//! marker through `root_status` and GC).
//!
//! Each target starts from records the real code wrote (`fixture.rs`), replays its corpus
//! (`tests/fuzz/corpus/<target>/`), then mutates (`mutate.rs`): raw bytes, MessagePack values, and
//! re-sealed envelopes and trailers so that checksums pass and validation is what decides. Per
//! execution it checks: no panic (anywhere, spawned tasks included: a panic hook counts them), a
//! rejection is a typed `rockpoint::Error`, and for the pure decoders no single allocation larger
//! than max(64 KiB, 16 × input length) on the decoding thread (a counting global allocator).
//!
//! Quick tier: `cargo test --test fuzz -- --nocapture` (a fixed number of executions per target).
//! Long tier: `ROCKPOINT_FUZZ_SECS=600 cargo test --test fuzz -- --nocapture` (seconds per target);
//! `ROCKPOINT_FUZZ_SEED` chooses the mutation seed of either. A mutant with a new signature
//! (target, error kind, first 40 characters of the message with numbers and quoted names
//! blanked) joins the corpus, up to `CORPUS_CAP` files per target; a crashing one joins it too
//! (`crash-*.bin`), so that the quick tier fails on it until the defect is fixed.

#[path = "../common/mod.rs"]
mod common;

mod fixture;
mod mutate;
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mutate::Rng;

// ---------------------------------------------------------------------------------------------
// The counting allocator: the largest single allocation made by this thread while tracking.
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the largest single allocation it made on this thread
/// (allocations of other threads, such as the store's blocking reads, are not counted).
pub fn measured<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let result = f();
    TRACKING.with(|t| t.set(false));
    (result, LARGEST.with(|l| l.get()))
}

/// The bound a decoder of `input_len` bytes must keep every single allocation under.
pub fn allocation_bound(input_len: usize) -> usize {
    (64 << 10).max(16 * input_len)
}

// ---------------------------------------------------------------------------------------------
// Panics anywhere in the process (spawned tasks too) are counted.
// ---------------------------------------------------------------------------------------------

static PANICS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the fuzz loops' own threads: a panic there is caught where it happens (or is the
    /// harness's own final assertion); panics of every other thread are counted.
    static LOOP_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !LOOP_THREAD.try_with(Cell::get).unwrap_or(false) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// The loop.
// ---------------------------------------------------------------------------------------------

/// What one execution found.
pub struct Outcome {
    /// `Ok` (accepted, with a label: which stage it reached) or the typed rejection.
    pub result: Result<&'static str, rockpoint::Error>,
    /// The largest single allocation of the pure decoding, when the target measures it.
    pub largest_allocation: Option<usize>,
    /// A broken property other than a panic or an allocation (a file outside the restore
    /// target, an unreported bad pin, a dry run that changed the root).
    pub violation: Option<String>,
    /// What a rejection reported otherwise than as an error (GC's unreadable list), for the
    /// signature.
    pub detail: Option<String>,
}

impl Outcome {
    pub fn of(result: Result<&'static str, rockpoint::Error>) -> Outcome {
        Outcome {
            result,
            largest_allocation: None,
            violation: None,
            detail: None,
        }
    }
}

pub trait Target {
    fn name(&self) -> &'static str;
    /// Records the real code wrote.
    fn seeds(&self) -> Vec<Vec<u8>>;
    fn mutate(&mut self, rng: &mut Rng, input: &[u8], pool: &[Vec<u8>]) -> Vec<u8>;
    fn execute(&mut self, input: &[u8]) -> Outcome;
    /// Executions of the quick tier.
    fn quick_executions(&self) -> u64;
}

const CORPUS_CAP: usize = 50;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target)
}

/// The signature of an outcome: kind and the message's first 40 characters, with numbers and
/// quoted (`…`, "…") names blanked so that paths and offsets do not make every mutant new.
fn signature(outcome: &Outcome) -> String {
    match (&outcome.result, &outcome.detail) {
        (Ok(stage), None) => format!("Ok/{stage}"),
        (Ok(stage), Some(detail)) => format!("Ok/{stage}/{}", blank(detail)),
        (Err(e), _) => format!("{:?}/{}", e.kind(), blank(&e.to_string())),
    }
}

fn blank(message: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '`' | '"' => {
                quoted = !quoted;
                if quoted {
                    out.push('_');
                }
            }
            _ if quoted => {}
            '0'..='9' => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            _ => out.push(c),
        }
    }
    out.chars().take(40).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// At most 2 KiB as hex, for reports (the file holds the whole input).
fn hex_head(bytes: &[u8]) -> String {
    if bytes.len() <= 2048 {
        hex(bytes)
    } else {
        format!("{}… ({} bytes)", hex(&bytes[..2048]), bytes.len())
    }
}

fn name_of(bytes: &[u8]) -> String {
    hex(&blake3::hash(bytes).as_bytes()[..8])
}

struct Run {
    executions: u64,
    kinds: BTreeMap<String, u64>,
    signatures: BTreeSet<String>,
    corpus: Vec<Vec<u8>>,
    corpus_files: usize,
    crashes: Vec<String>,
    /// Failures by class (a panic message or the allocation bound, numbers blanked).
    failures: BTreeMap<String, u64>,
    largest_ratio: (usize, usize),
    scratch: PathBuf,
}

impl Run {
    fn new(scratch: PathBuf) -> Run {
        Run {
            executions: 0,
            kinds: BTreeMap::new(),
            signatures: BTreeSet::new(),
            corpus: Vec::new(),
            corpus_files: 0,
            crashes: Vec::new(),
            failures: BTreeMap::new(),
            largest_ratio: (0, 1),
            scratch,
        }
    }

    /// Keeps an input: in the checked-in corpus with `ROCKPOINT_FUZZ_SAVE=1` (to grow it on
    /// purpose), else in the run's scratch directory (a test run never changes the source tree).
    fn save(&mut self, target: &str, prefix: &str, input: &[u8]) -> PathBuf {
        let dir = if std::env::var_os("ROCKPOINT_FUZZ_SAVE").is_some() {
            corpus_dir(target)
        } else {
            self.scratch.join("new-corpus").join(target)
        };
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("{prefix}-{}.bin", name_of(input)));
        let _ = std::fs::write(&path, input);
        path
    }

    /// Runs one input; `parent` is what it was mutated from (for crash reports).
    fn execute(
        &mut self,
        target: &mut dyn Target,
        input: &[u8],
        parent: Option<&[u8]>,
        from_corpus: bool,
    ) {
        self.executions += 1;
        let panics = PANICS.load(Ordering::SeqCst);
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| target.execute(input)));
        let panicked = PANICS.load(Ordering::SeqCst) != panics;
        let mut failure = None;
        let mut outcome = None;
        match caught {
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failure = Some(format!("panic: {message}"));
            }
            Ok(o) => {
                if panicked {
                    failure = Some("panic in a spawned task".to_owned());
                } else if let Some(v) = &o.violation {
                    failure = Some(v.clone());
                } else if let Some(largest) = o.largest_allocation {
                    if largest * self.largest_ratio.1 > self.largest_ratio.0 * input.len().max(1) {
                        self.largest_ratio = (largest, input.len().max(1));
                    }
                    if largest >= allocation_bound(input.len()) {
                        failure = Some(format!(
                            "a single allocation of {largest} bytes decoding {} bytes (bound {})",
                            input.len(),
                            allocation_bound(input.len())
                        ));
                    }
                }
                outcome = Some(o);
            }
        }
        if let Some(failure) = failure {
            // One report, corpus file and count per class of failure (numbers blanked).
            let mut class = String::new();
            for c in failure.chars() {
                if !c.is_ascii_digit() {
                    class.push(c);
                } else if !class.ends_with('#') {
                    class.push('#');
                }
            }
            let count = self.failures.entry(class).or_default();
            *count += 1;
            if *count > 1 {
                return;
            }
            let kept = self.scratch.join(format!("crash-{}.bin", name_of(input)));
            let _ = std::fs::write(&kept, input);
            let in_corpus = if from_corpus {
                None
            } else {
                Some(self.save(target.name(), "crash", input))
            };
            eprintln!(
                "fuzz {}: CRASH ({failure}) on {} bytes, kept at {} and {:?}\n  mutant: {}\n  parent: {}",
                target.name(),
                input.len(),
                kept.display(),
                in_corpus,
                hex_head(input),
                parent
                    .map(hex_head)
                    .unwrap_or_else(|| "(corpus)".to_owned()),
            );
            self.crashes.push(format!("{}: {failure}", kept.display()));
            return;
        }
        let outcome = outcome.expect("an outcome without a failure");
        let kind = match &outcome.result {
            Ok(stage) => format!("accepted ({stage})"),
            Err(e) => format!("{:?}", e.kind()),
        };
        *self.kinds.entry(kind).or_default() += 1;
        let signature = signature(&outcome);
        if self.signatures.insert(signature) && !from_corpus {
            self.corpus.push(input.to_vec());
            if self.corpus_files < CORPUS_CAP && input.len() <= 64 << 10 {
                self.save(target.name(), "sig", input);
                self.corpus_files += 1;
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// Fuzzes one target: corpus replay, then mutation for the tier's budget; fails on any crash.
/// The fuzz targets run side by side (read), the harness self-test alone (write): its deliberate
/// panics on other threads would otherwise be counted by the process-wide panic hook of a target
/// running at the same moment.
static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn fuzz(target: &mut dyn Target) {
    let _side_by_side = EXCLUSIVE.read().unwrap_or_else(|p| p.into_inner());
    count_panics();
    LOOP_THREAD.with(|t| t.set(true));
    let name = target.name();
    let seed = env_u64("ROCKPOINT_FUZZ_SEED").unwrap_or(0x5eed_f022);
    let deadline = env_u64("ROCKPOINT_FUZZ_SECS").map(Duration::from_secs);
    let scratch =
        std::env::temp_dir().join(format!("rockpoint-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch directory");
    let mut run = Run::new(scratch.clone());
    let started = Instant::now();
    // The seeds (saved once: they differ from run to run, by the content hashes they name).
    let dir = corpus_dir(name);
    let _ = std::fs::create_dir_all(&dir);
    let mut stored: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
                .filter_map(|e| Some((e.path(), std::fs::read(e.path()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    stored.sort();
    run.corpus_files = stored.len();
    let seeds = target.seeds();
    if !stored.iter().any(|(p, _)| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("seed-")
    }) {
        for seed in &seeds {
            run.save(name, "seed", seed);
        }
    }
    for seed in &seeds {
        run.execute(target, seed, None, true);
        run.corpus.push(seed.clone());
    }
    // The corpus replays first.
    for (_, bytes) in &stored {
        run.execute(target, bytes, None, true);
        run.corpus.push(bytes.clone());
    }
    let replayed = run.executions;
    let mut rng = Rng::new(seed ^ u64::from(blake3::hash(name.as_bytes()).as_bytes()[0]));
    let quick = target.quick_executions();
    loop {
        let done = match deadline {
            Some(limit) => started.elapsed() >= limit,
            None => run.executions - replayed >= quick,
        };
        if done {
            break;
        }
        let parent = run.corpus[rng.below(run.corpus.len())].clone();
        let mutant = target.mutate(&mut rng, &parent, &run.corpus);
        run.execute(target, &mutant, Some(&parent), false);
    }
    let seconds = started.elapsed().as_secs_f64();
    let corpus_now = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    println!(
        "fuzz {name}: {} executions ({replayed} replayed) in {seconds:.1} s, seed {seed:#x}, \
         corpus {corpus_now} files, {} signatures, crashes {}",
        run.executions,
        run.signatures.len(),
        run.failures.values().sum::<u64>()
    );
    for (class, count) in &run.failures {
        println!("fuzz {name}: FAILED {count} times: {class}");
    }
    println!("fuzz {name}: outcomes {:?}", run.kinds);
    if run.largest_ratio.0 > 0 {
        println!(
            "fuzz {name}: largest single allocation while decoding: {} bytes for a {}-byte input \
             (bound max(64 KiB, 16 × input))",
            run.largest_ratio.0, run.largest_ratio.1
        );
    }
    if run.crashes.is_empty() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(
        run.crashes.is_empty(),
        "fuzz {name}: {} failing executions, {} kinds of failure (first input of each kept):\n{}",
        run.failures.values().sum::<u64>(),
        run.crashes.len(),
        run.crashes.join("\n")
    );
}

#[test]
fn metadata() {
    fuzz(&mut targets::Metadata::new());
}

#[test]
fn job_record() {
    fuzz(&mut targets::JobRecordTarget::new());
}

#[test]
fn pin() {
    fuzz(&mut targets::Pin::new());
}

#[test]
fn ticket() {
    fuzz(&mut targets::Ticket);
}

#[test]
fn handle() {
    fuzz(&mut targets::Handle);
}

#[test]
fn canonical() {
    fuzz(&mut targets::Canonical);
}

#[test]
fn root_marker() {
    fuzz(&mut targets::RootMarker::new());
}

/// The harness itself can fail: a panic in the decoder, a panic on another thread (a spawned
/// task), an allocation over the bound and a violated property are each caught and counted.
#[test]
fn harness_catches_panics_allocations_and_violations() {
    let _alone = EXCLUSIVE.write().unwrap_or_else(|p| p.into_inner());
    struct Faulty;
    impl Target for Faulty {
        fn name(&self) -> &'static str {
            "harness-self-test"
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            Vec::new()
        }
        fn mutate(&mut self, _: &mut Rng, input: &[u8], _: &[Vec<u8>]) -> Vec<u8> {
            input.to_vec()
        }
        fn quick_executions(&self) -> u64 {
            0
        }
        fn execute(&mut self, input: &[u8]) -> Outcome {
            let mut outcome = Outcome::of(Ok("fine"));
            match input[0] {
                0 => panic!("a decoder panicked"),
                1 => {
                    let _ = std::thread::spawn(|| panic!("a task panicked")).join();
                }
                2 => {
                    let (buffer, largest) = measured(|| vec![1u8; 1 << 20]);
                    drop(buffer);
                    outcome.largest_allocation = Some(largest);
                }
                3 => outcome.violation = Some("a property broke".to_owned()),
                _ => {
                    let (buffer, largest) = measured(|| vec![1u8; 1 << 10]);
                    drop(buffer);
                    outcome.largest_allocation = Some(largest);
                }
            }
            outcome
        }
    }
    count_panics();
    LOOP_THREAD.with(|t| t.set(true));
    let scratch = tempfile::tempdir().unwrap();
    let mut run = Run::new(scratch.path().to_owned());
    for input in [[0u8], [1], [2], [3], [4]] {
        run.execute(&mut Faulty, &input, None, true);
    }
    LOOP_THREAD.with(|t| t.set(false));
    let classes: Vec<&String> = run.failures.keys().collect();
    assert_eq!(run.crashes.len(), 4, "{classes:?}");
    assert_eq!(
        run.kinds.get("accepted (fine)"),
        Some(&1),
        "{:?}",
        run.kinds
    );
    assert!(
        classes.iter().any(|c| c.contains("a decoder panicked")),
        "{classes:?}"
    );
    assert!(
        classes.iter().any(|c| c.contains("spawned task")),
        "{classes:?}"
    );
    assert!(
        classes.iter().any(|c| c.contains("single allocation")),
        "{classes:?}"
    );
    assert!(
        classes.iter().any(|c| c.contains("a property broke")),
        "{classes:?}"
    );
}
