//! Deterministic simulation of many writers on one root (FoundationDB / VOPR style): real engine
//! actors — coordinators, zombies, restores with and without claim, aborts, crashes and restarts,
//! GC passes, readers — run concurrently against one [`SimStore`] whose every operation may be
//! delayed (reordering operations), fail, or apply and then report failure (ambiguous outcome).
//!
//! One seed drives one schedule:
//! * job `a` checkpoints (write a keyed workload, `scan()` it = the oracle, checkpoint) with a mix
//!   of `checkpoint()`, `savepoint()`, `checkpoint()` futures dropped by a tiny `timeout`, and the
//!   split API (`trigger` / `snapshot` / `upload` / `complete`, or `abort`), one or two in flight;
//! * job `b` restores `a`'s latest checkpoint without claim and checkpoints on its own;
//! * in some seeds job `c` restores a checkpoint of `a` or `b` *with* claim and checkpoints on;
//! * takeovers: a second coordinator of `a` (or `b`) opens while the first keeps trying — the first
//!   is a zombie and must never again return `Ok` from `checkpoint`/`savepoint`/`complete`/`shutdown`;
//! * crashes: a writer's task is aborted mid-flight (coordinator and backends dropped) and
//!   restarted after a delay (in short-lease seeds, long enough for GC to fence the expired lease):
//!   reopen the coordinator, restore the backend into a fresh directory from `latest:<job>`;
//! * one or two GC loops (`grace_period` 0, delete mode, `clock_margin` 0) and one or two readers
//!   (`restore_backend` of a random retained checkpoint) run throughout.
//!
//! Invariants, checked after every actor step and at the end of the seed:
//! 1. every checkpoint and savepoint a job record lists has its `_metadata` and every object it
//!    references (shared files, log segments, private files) in the store (G1, G3);
//! 2. no shared file was deleted while a complete checkpoint referenced it, or a live pin written
//!    before every GC deletion intent naming it — judged by the store at the moment of each delete
//!    (G3 and the deleter rule; a pin written after the intent may lose the file: its writer waits
//!    the intent out and uploads the file again);
//! 3. a coordinator whose epoch was superseded (by a newer open, or by GC fencing its expired lease)
//!    when an operation started never returns `Ok` from it (G7);
//! 4. every restore that succeeds yields exactly the oracle of its checkpoint (G2); at the end every
//!    retained checkpoint and savepoint of every job is restored and compared. Each checkpoint's
//!    state carries a marker (state `sim`, key 0: a number unique in the seed) that names its
//!    oracle, so checkpoints whose id the test never learnt (a dropped future that committed, an
//!    error after the commit point) are verified too; where the id is known, it must match.
//!    A restore of a checkpoint the job record listed that fails with `Corruption` is a violation.
//!
//! Any violation panics with the seed and the store step count.
//!
//! Commands (always with the shared target dir):
//! ```text
//! export CARGO_TARGET_DIR=$HOME/.cache/rockpoint-target
//! # quick tier (default): seeds 0.. until >= 50,000 store operations, ~2 minutes
//! cargo test --features failpoints --test sim
//! # long tier: N seeds (optionally from ROCKPOINT_SIM_FIRST_SEED), in parallel workers
//! ROCKPOINT_SIM_SEEDS=2000 cargo test --release --features failpoints --test sim -- --nocapture
//! # replay one seed (prints the violation with its step count)
//! ROCKPOINT_SIM_SEED=17 cargo test --features failpoints --test sim -- --nocapture
//! # optional: ROCKPOINT_SIM_WORKERS=<threads>, ROCKPOINT_SIM_MIN_STEPS=<n>,
//! #           ROCKPOINT_SIM_INTENT_FAULTS=1 (let GC intent writes/deletes fail too, see below),
//! #           ROCKPOINT_SIM_TRACE=1 (write every store operation of a failing seed to
//! #           $TMPDIR/sim-multiwriter-seed-<n>.trace), ROCKPOINT_SIM_VERBOSE=1 (print every error)
//! ```
//!
//! Determinism, honestly: each seed runs on its own single-threaded tokio runtime with a
//! `LocalSet`, and every decision (schedule, workload, faults, delays) comes from the seed. But the
//! engine hashes on `spawn_blocking` threads, RocksDB flushes and compacts on its own threads, and
//! sleeps race against wall-clock time (leases, RocksDB I/O), so a seed replays the same *schedule
//! of decisions*, not necessarily the same interleaving. A failing seed usually, not always,
//! reproduces; the long tier is how rare interleavings are found.
//!
//! Simplifications: a "crash" aborts the actor's task, so the engine's own spawned cleanup tasks
//! (a dropped checkpoint's abort, background discards) still run, as if the process died a little
//! later. GC intent mutations (`gc/…`) are not failed by default: a failed delete of an intent
//! leaves it live for its whole lease (10 min), and every reuser of a hash it names waits that long
//! (a liveness cost, not a safety problem), which would stall a simulation.

use crate::common;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::simstore::{FaultConfig, SimRng, SimStore};
use common::{Scan, TestJob};
use rockpoint::{
    CheckpointCoordinator, CheckpointSettings, ClaimMode, ErrorKind, GcOptions, JobEnd,
    RestoreSource, RestoreTarget, SnapshotKind, Store, SweepMode,
};

const KEYS: u64 = 300;
const JOBS: [&str; 3] = ["a", "b", "c"];
/// An operation that takes longer than this is reported as a stall and dropped.
const OP_LIMIT: Duration = Duration::from_secs(20);
/// A seed that takes longer than this is reported as a stall (its remaining actors are aborted).
const SEED_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug, Clone)]
struct Figures {
    seeds: u64,
    steps: u64,
    actors: u64,
    delays: u64,
    failed_before: u64,
    ambiguous: u64,
    shared_deletes_checked: u64,
    checkpoints_ok: u64,
    checkpoint_errors: u64,
    savepoints_ok: u64,
    dropped: u64,
    aborted: u64,
    zombie_rejected: u64,
    straddled: u64,
    takeovers: u64,
    crashes: u64,
    self_restarts: u64,
    claims_ok: u64,
    restores_ok: u64,
    restore_errors: u64,
    reads_ok: u64,
    read_errors: u64,
    gc_passes: u64,
    gc_errors: u64,
    gc_fenced: u64,
    gc_shared_deleted: u64,
    final_restores: u64,
    final_by_id: u64,
    stalls: u64,
    unexpected: u64,
    invariant_checks: u64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        macro_rules! sum { ($($f:ident),*) => { $( self.$f += o.$f; )* } }
        sum!(
            seeds,
            steps,
            actors,
            delays,
            failed_before,
            ambiguous,
            shared_deletes_checked,
            checkpoints_ok,
            checkpoint_errors,
            savepoints_ok,
            dropped,
            aborted,
            zombie_rejected,
            straddled,
            takeovers,
            crashes,
            self_restarts,
            claims_ok,
            restores_ok,
            restore_errors,
            reads_ok,
            read_errors,
            gc_passes,
            gc_errors,
            gc_fenced,
            gc_shared_deleted,
            final_restores,
            final_by_id,
            stalls,
            unexpected,
            invariant_checks
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation of one seed
// ---------------------------------------------------------------------------------------------

struct Sim {
    seed: u64,
    store: SimStore,
    arc: Arc<dyn Store>,
    base: PathBuf,
    settings: CheckpointSettings,
    rng: RefCell<SimRng>,
    /// Marker bytes (the `sim` state's row) → the scan taken right before that snapshot.
    oracles: RefCell<HashMap<Vec<u8>, Rc<Scan>>>,
    /// (job, checkpoint id) → marker, where the test knows the id.
    id_marker: RefCell<HashMap<(String, u64), Vec<u8>>>,
    next_marker: Cell<u64>,
    next_dir: Cell<u64>,
    violations: RefCell<Vec<String>>,
    notes: RefCell<Vec<String>>,
    fig: RefCell<Figures>,
    stop: Cell<bool>,
}

/// What a writer starts from.
#[derive(Clone, Debug)]
enum Start {
    Fresh,
    /// A restart: restore the job's own latest checkpoint (if any).
    Resume,
    /// Restore the latest checkpoint of another job.
    From(String, ClaimMode),
}

/// One writer instance of a job (a process). A takeover turns the old one into a zombie.
struct Life {
    name: String,
    zombie_budget: Cell<Option<u32>>,
}

fn marker_of(scan: &Scan) -> Option<Vec<u8>> {
    scan.iter()
        .find(|((state, _), _)| state == "sim")
        .map(|(_, v)| v.clone())
}

impl Sim {
    fn r(&self, n: u64) -> u64 {
        self.rng.borrow_mut().below(n)
    }

    fn chance(&self, p: f64) -> bool {
        self.rng.borrow_mut().chance(p)
    }

    fn fig(&self) -> std::cell::RefMut<'_, Figures> {
        self.fig.borrow_mut()
    }

    fn violation(&self, message: String) {
        let steps = self.store.steps();
        let text = format!("[seed {}, store step {steps}] {message}", self.seed);
        eprintln!("VIOLATION {text}");
        self.violations.borrow_mut().push(text);
    }

    fn note(&self, message: String) {
        let mut notes = self.notes.borrow_mut();
        if notes.len() < 20 {
            notes.push(format!("[seed {}] {message}", self.seed));
        }
    }

    fn fresh_dir(&self, what: &str) -> PathBuf {
        let n = self.next_dir.get();
        self.next_dir.set(n + 1);
        self.base.join(format!("{what}-{n}"))
    }

    /// Whether `job`'s record is at a newer epoch than `epoch` right now (never yields).
    fn superseded(&self, job: &str, epoch: u64) -> bool {
        self.store.job_record(job).is_some_and(|r| r.epoch > epoch)
    }

    /// Invariant 3: an operation of a coordinator that was superseded when it started failed.
    fn check_fenced_result<T>(
        &self,
        job: &str,
        epoch: u64,
        op: &str,
        superseded_at_start: bool,
        result: &rockpoint::Result<T>,
    ) {
        match result {
            Ok(_) if superseded_at_start => self.violation(format!(
                "G7: coordinator of job `{job}` at epoch {epoch} returned Ok from {op}, which \
                 started after a newer epoch held the job (record now at epoch {:?})",
                self.store.job_record(job).map(|r| r.epoch)
            )),
            Ok(_) => {}
            Err(_) if superseded_at_start => self.fig().zombie_rejected += 1,
            Err(_) => {}
        }
    }

    fn unexpected(&self, what: &str, e: &rockpoint::Error) {
        self.fig().unexpected += 1;
        self.note(format!("{what}: {:?}: {e}", e.kind()));
    }

    /// Writes the marker of a new snapshot and records the oracle; returns the marker.
    fn mark(&self, tj: &TestJob) -> Vec<u8> {
        let n = self.next_marker.get();
        self.next_marker.set(n + 1);
        tj.backends[0]
            .state(&rockpoint::ValueStateDescriptor::<u64, u64>::new("sim"))
            .and_then(|s| s.put(&0, &n))
            .expect("writing the marker");
        let scan = tj.scan().expect("scanning the oracle");
        let marker = marker_of(&scan).expect("the marker row");
        self.oracles
            .borrow_mut()
            .insert(marker.clone(), Rc::new(scan));
        marker
    }

    fn know_id(&self, job: &str, id: u64, marker: &[u8]) {
        let mut map = self.id_marker.borrow_mut();
        if let Some(old) = map.insert((job.to_owned(), id), marker.to_vec())
            && old != marker
        {
            drop(map);
            self.violation(format!(
                "checkpoint {id} of job `{job}` was reported with two different states"
            ));
        }
    }

    /// Invariant 4: a restored scan equals the oracle its marker names (and, if the test knows
    /// which checkpoint it came from, that checkpoint's marker). Returns the marker.
    fn verify_scan(&self, scan: &Scan, what: &str, id: Option<(&str, u64)>) -> Option<Vec<u8>> {
        let Some(marker) = marker_of(scan) else {
            self.violation(format!(
                "G2: {what}: the restored state has no marker row ({} rows)",
                scan.len()
            ));
            return None;
        };
        let oracle = self.oracles.borrow().get(&marker).cloned();
        match oracle {
            None => self.violation(format!("G2: {what}: restored a state no snapshot took")),
            Some(oracle) => {
                if *oracle != *scan {
                    let missing = oracle.keys().filter(|k| !scan.contains_key(*k)).count();
                    let extra = scan.keys().filter(|k| !oracle.contains_key(*k)).count();
                    let differ = oracle
                        .iter()
                        .filter(|(k, v)| scan.get(*k).is_some_and(|w| w != *v))
                        .count();
                    self.violation(format!(
                        "G2: {what}: restored state differs from its oracle: {missing} rows \
                         missing, {extra} extra, {differ} with other values"
                    ));
                }
            }
        }
        if let Some((job, id)) = id {
            let known = self.id_marker.borrow().get(&(job.to_owned(), id)).cloned();
            if let Some(known) = known
                && known != marker
            {
                self.violation(format!(
                    "G2: {what}: checkpoint {id} of job `{job}` restored another snapshot's state"
                ));
            }
        }
        Some(marker)
    }

    /// Invariant 1 (and 2, collected from the store), on a frozen copy of the root.
    async fn check_invariants(&self, when: &str) {
        self.fig().invariant_checks += 1;
        let frozen = self.store.frozen();
        for job in JOBS {
            let Some(record) = frozen.job_record(job) else {
                continue;
            };
            let ids = record
                .retained
                .iter()
                .map(|id| ("chk", *id))
                .chain(record.savepoints.iter().map(|id| ("sp", *id)));
            for (kind, id) in ids {
                let path = format!("jobs/{job}/{kind}-{id:020}/_metadata");
                match rockpoint::restore::read_metadata(&frozen, &RestoreSource::Metadata(path.clone()))
                    .await
                {
                    Err(e) => self.violation(format!(
                        "G1 ({when}): job `{job}` lists {kind} {id} but its metadata is unreadable: {e}"
                    )),
                    Ok((_, metadata)) => {
                        for hash in metadata.shared_hashes() {
                            let shared = common::checking::shared(&hash);
                            if !frozen.contains(&shared) {
                                self.violation(format!(
                                    "G1/G3 ({when}): {kind} {id} of job `{job}` references {shared}, which is missing"
                                ));
                            }
                        }
                        for backend in &metadata.backends {
                            for file in &backend.private_files {
                                if !frozen.contains(&file.path) {
                                    self.violation(format!(
                                        "G1/G3 ({when}): {kind} {id} of job `{job}` references private file {}, which is missing",
                                        file.path
                                    ));
                                }
                            }
                        }
                    }
                }
            }
        }
        for v in self.store.violations() {
            if !self.violations.borrow().contains(&v) {
                self.violations.borrow_mut().push(v);
            }
        }
    }

    /// Restores a backend of `job`'s coordinator from `source` into a fresh directory.
    async fn restore_into(
        &self,
        coordinator: &CheckpointCoordinator,
        job: &str,
        source: &RestoreSource,
        mode: ClaimMode,
    ) -> rockpoint::Result<TestJob> {
        let base = self.fresh_dir(&format!("{job}-restore"));
        let restored = tokio::time::timeout(
            OP_LIMIT,
            common::restore_job(coordinator, source, &base, 1, KEYS, mode),
        )
        .await;
        match restored {
            Err(_) => {
                self.fig().stalls += 1;
                self.note(format!("restore of {source:?} into job `{job}` stalled"));
                Err(std::io::Error::other("stalled").into())
            }
            Ok(Ok(tj)) => Ok(tj),
            Ok(Err(e)) => match e.downcast::<rockpoint::Error>() {
                Ok(e) => Err(*e),
                Err(e) => panic!("restore failed with a foreign error: {e}"),
            },
        }
    }

    /// Opens a coordinator of `job` and its backend (fresh, or restored). `None`: gave up.
    async fn open_writer(
        &self,
        job: &str,
        start: &Start,
        life: &Life,
    ) -> Option<(CheckpointCoordinator, TestJob)> {
        for _attempt in 0..30 {
            if life.zombie_budget.get().is_some() || self.stop.get() {
                return None;
            }
            let opened = tokio::time::timeout(
                OP_LIMIT,
                CheckpointCoordinator::open(self.arc.clone(), job, self.settings.clone()),
            )
            .await;
            let coordinator = match opened {
                Err(_) => {
                    self.fig().stalls += 1;
                    self.note(format!("opening job `{job}` stalled"));
                    continue;
                }
                Ok(Err(e)) => {
                    // Fenced: another open of the job claimed it while this one recovered.
                    if !matches!(
                        e.kind(),
                        ErrorKind::Unavailable
                            | ErrorKind::Busy
                            | ErrorKind::Conflict
                            | ErrorKind::Fenced
                    ) {
                        self.unexpected(&format!("open `{job}`"), &e);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                Ok(Ok(c)) => c,
            };
            let (source, mode) = match start {
                Start::Fresh => {
                    let tj = TestJob::open(&self.fresh_dir(&format!("{job}-fresh")), 1, KEYS)
                        .expect("opening a fresh backend");
                    return Some((coordinator, tj));
                }
                Start::Resume => {
                    if self
                        .store
                        .job_record(job)
                        .and_then(|r| r.latest())
                        .is_none()
                    {
                        let tj = TestJob::open(&self.fresh_dir(&format!("{job}-fresh")), 1, KEYS)
                            .expect("opening a fresh backend");
                        return Some((coordinator, tj));
                    }
                    (RestoreSource::Latest(job.to_owned()), ClaimMode::NoClaim)
                }
                Start::From(src, mode) => (RestoreSource::Latest(src.clone()), *mode),
            };
            for _ in 0..10 {
                let superseded = self.superseded(job, coordinator.epoch());
                match self.restore_into(&coordinator, job, &source, mode).await {
                    Ok(tj) => {
                        let scan = tj.scan().expect("scanning a restored backend");
                        let marker = self.verify_scan(
                            &scan,
                            &format!("restore {source:?} into job `{job}` ({mode:?})"),
                            None,
                        );
                        if mode == ClaimMode::Claim {
                            if superseded {
                                self.violation(format!(
                                    "G7: a superseded coordinator of `{job}` claimed {source:?}"
                                ));
                            }
                            self.fig().claims_ok += 1;
                            if let (Some(latest), Some(marker)) = (coordinator.latest(), marker) {
                                self.know_id(job, latest.checkpoint_id, &marker);
                            }
                        }
                        self.fig().restores_ok += 1;
                        return Some((coordinator, tj));
                    }
                    Err(e) => {
                        self.fig().restore_errors += 1;
                        if verbose() {
                            eprintln!(
                                "[seed {}] restore {source:?} into `{job}` ({mode:?}): {:?}: {e}",
                                self.seed,
                                e.kind()
                            );
                        }
                        match e.kind() {
                            ErrorKind::Corruption => self.violation(format!(
                                "G2/G3: restoring {source:?} into job `{job}` ({mode:?}) failed with Corruption: {e}"
                            )),
                            ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Busy | ErrorKind::Conflict => {}
                            ErrorKind::Fenced => break,
                            _ => self.unexpected(&format!("restore into `{job}`"), &e),
                        }
                        if e.kind() == ErrorKind::NotFound
                            && matches!(start, Start::Resume)
                            && self
                                .store
                                .job_record(job)
                                .and_then(|r| r.latest())
                                .is_none()
                        {
                            let tj =
                                TestJob::open(&self.fresh_dir(&format!("{job}-fresh")), 1, KEYS)
                                    .expect("opening a fresh backend");
                            return Some((coordinator, tj));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        None
    }

    /// One step of a writer: write, mark, snapshot some way. Returns whether this coordinator
    /// learnt that it is fenced.
    async fn writer_step(&self, job: &str, c: &CheckpointCoordinator, tj: &mut TestJob) -> bool {
        let epoch = c.epoch();
        let writes = 20 + self.r(150);
        tj.write(writes).expect("writing");
        if self.chance(0.3) {
            let deletes = self.r(20);
            tj.delete(deletes).expect("deleting");
        }
        let marker = self.mark(tj);
        if self.chance(0.3) {
            tj.backends[0].flush().expect("flush");
        }
        if self.chance(0.08) {
            tj.backends[0].compact().expect("compact");
        }
        let mut fenced = false;
        let mut outcome = |this: &Sim, op: &str, e: &rockpoint::Error| {
            this.fig().checkpoint_errors += 1;
            if verbose() {
                eprintln!(
                    "[seed {}] {op} of `{job}` (epoch {epoch}): {:?}: {e}",
                    this.seed,
                    e.kind()
                );
            }
            if e.kind() == ErrorKind::Fenced {
                fenced = true;
            } else if !matches!(
                e.kind(),
                ErrorKind::Unavailable
                    | ErrorKind::Busy
                    | ErrorKind::Cancelled
                    | ErrorKind::Conflict
                    | ErrorKind::NotFound
            ) {
                this.unexpected(&format!("{op} of `{job}`"), e);
            }
        };
        let choice = self.r(100);
        let two = self.settings.max_concurrent >= 2;
        match choice {
            // checkpoint() / savepoint()
            0..=49 => {
                let savepoint = choice >= 45;
                let op = if savepoint { "savepoint" } else { "checkpoint" };
                let at_start = self.superseded(job, epoch);
                let result = match tokio::time::timeout(OP_LIMIT, async {
                    if savepoint {
                        c.savepoint(&tj.refs()).await
                    } else {
                        c.checkpoint(&tj.refs()).await
                    }
                })
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        self.fig().stalls += 1;
                        self.note(format!("{op} of `{job}` stalled"));
                        return false;
                    }
                };
                self.check_fenced_result(job, epoch, op, at_start, &result);
                match result {
                    Ok(done) => {
                        if savepoint {
                            self.fig().savepoints_ok += 1;
                        } else {
                            self.fig().checkpoints_ok += 1;
                        }
                        if self.superseded(job, epoch) {
                            self.fig().straddled += 1;
                        }
                        self.know_id(job, done.id(), &marker);
                    }
                    Err(e) => outcome(self, op, &e),
                }
            }
            // checkpoint() dropped by a tiny timeout
            50..=64 => {
                let limit = Duration::from_micros(self.r(4000));
                let at_start = self.superseded(job, epoch);
                let result = tokio::time::timeout(limit, c.checkpoint(&tj.refs())).await;
                if let Ok(result) = &result {
                    self.check_fenced_result(job, epoch, "checkpoint (timed)", at_start, result);
                }
                match result {
                    Err(_) => self.fig().dropped += 1,
                    Ok(Ok(done)) => {
                        self.fig().checkpoints_ok += 1;
                        self.know_id(job, done.id(), &marker);
                    }
                    Ok(Err(e)) => outcome(self, "checkpoint (timed)", &e),
                }
            }
            // split API, one or two in flight, complete or abort
            _ => {
                let mut tickets = Vec::new();
                let n = if two && self.chance(0.4) { 2 } else { 1 };
                for i in 0..n {
                    let marker = if i == 0 {
                        marker.clone()
                    } else {
                        tj.write(10 + self.r(50)).expect("writing");
                        self.mark(tj)
                    };
                    let ticket = match c.trigger(SnapshotKind::Checkpoint) {
                        Ok(t) => t,
                        Err(e) => {
                            outcome(self, "trigger", &e);
                            break;
                        }
                    };
                    // The ticket's id holds exactly this state, whatever happens next.
                    self.know_id(job, ticket.checkpoint_id(), &marker);
                    match tj.backends[0].snapshot(&ticket) {
                        Ok(pending) => tickets.push((ticket, pending)),
                        Err(e) => {
                            outcome(self, "snapshot", &e);
                            let _ = c.abort(&ticket).await;
                        }
                    }
                }
                let store = &*self.arc;
                let uploads = futures::future::join_all(tickets.into_iter().map(
                    |(ticket, pending)| async move {
                        let handle = tokio::time::timeout(OP_LIMIT, pending.upload(store)).await;
                        (ticket, handle)
                    },
                ))
                .await;
                let mut order: Vec<_> = uploads.into_iter().collect();
                if order.len() == 2 && self.chance(0.5) {
                    order.reverse();
                }
                for (ticket, handle) in order {
                    let handle = match handle {
                        Err(_) => {
                            self.fig().stalls += 1;
                            self.note(format!("upload of `{job}` stalled"));
                            let _ = c.abort(&ticket).await;
                            continue;
                        }
                        Ok(Err(e)) => {
                            outcome(self, "upload", &e);
                            let _ = c.abort(&ticket).await;
                            continue;
                        }
                        Ok(Ok(h)) => h,
                    };
                    if self.chance(0.15) {
                        self.fig().aborted += 1;
                        let _ = c.abort(&ticket).await;
                        continue;
                    }
                    let at_start = self.superseded(job, epoch);
                    let result =
                        match tokio::time::timeout(OP_LIMIT, c.complete(&ticket, vec![handle]))
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => {
                                self.fig().stalls += 1;
                                self.note(format!("complete of `{job}` stalled"));
                                let _ = c.abort(&ticket).await;
                                continue;
                            }
                        };
                    self.check_fenced_result(job, epoch, "complete", at_start, &result);
                    match result {
                        Ok(done) => {
                            self.fig().checkpoints_ok += 1;
                            if done.id() != ticket.checkpoint_id() {
                                self.violation(format!(
                                    "complete of ticket {} of `{job}` reported checkpoint {}",
                                    ticket.checkpoint_id(),
                                    done.id()
                                ));
                            }
                        }
                        Err(e) => {
                            outcome(self, "complete", &e);
                            let _ = c.abort(&ticket).await;
                        }
                    }
                }
            }
        }
        fenced || c.is_fenced()
    }

    /// A writer: one process of `job`.
    async fn writer(
        self: Rc<Self>,
        job: String,
        start: Start,
        life: Rc<Life>,
        budget: Rc<Cell<u32>>,
    ) {
        self.fig().actors += 1;
        let Some((mut c, mut tj)) = self.open_writer(&job, &start, &life).await else {
            return;
        };
        self.check_invariants(&format!("{} opened", life.name))
            .await;
        loop {
            if self.stop.get() {
                break;
            }
            match life.zombie_budget.get() {
                Some(0) => break,
                Some(n) => life.zombie_budget.set(Some(n - 1)),
                None => {
                    if budget.get() == 0 {
                        break;
                    }
                    budget.set(budget.get() - 1);
                }
            }
            // The checkpoint interval: lets spawned cleanups (a dropped checkpoint's abort,
            // background discards) and the other actors run.
            tokio::time::sleep(Duration::from_micros(self.r(5000))).await;
            let fenced = self.writer_step(&job, &c, &mut tj).await;
            self.check_invariants(&format!("{} step", life.name)).await;
            if fenced && life.zombie_budget.get().is_none() {
                // Fenced while live (GC fenced an expired lease): restart like a new process.
                self.fig().self_restarts += 1;
                drop(c);
                drop(tj);
                match self.open_writer(&job, &Start::Resume, &life).await {
                    Some((nc, ntj)) => {
                        c = nc;
                        tj = ntj;
                    }
                    None => return,
                }
            }
        }
        let end = match (job.as_str(), self.r(10)) {
            ("c", 0..=3) => JobEnd::Finished,
            (_, 0..=2) => JobEnd::Failed,
            (_, 3) => JobEnd::Cancelled,
            _ => JobEnd::Suspended,
        };
        let epoch = c.epoch();
        let at_start = self.superseded(&job, epoch);
        let result = match tokio::time::timeout(OP_LIMIT, c.shutdown(end)).await {
            Ok(r) => r,
            Err(_) => {
                self.fig().stalls += 1;
                self.note(format!("shutdown of `{job}` stalled"));
                return;
            }
        };
        self.check_fenced_result(&job, epoch, "shutdown", at_start, &result);
        if let Err(e) = &result
            && !matches!(
                e.kind(),
                ErrorKind::Fenced | ErrorKind::Unavailable | ErrorKind::Busy | ErrorKind::Conflict
            )
        {
            self.unexpected(&format!("shutdown of `{job}`"), e);
        }
        self.check_invariants(&format!("{} shut down", life.name))
            .await;
    }

    /// A reader: restores random retained checkpoints outside any job.
    async fn reader(self: Rc<Self>) {
        self.fig().actors += 1;
        while !self.stop.get() {
            tokio::time::sleep(Duration::from_millis(self.r(10))).await;
            let job = JOBS[self.r(3) as usize];
            let Some(record) = self.store.job_record(job) else {
                continue;
            };
            let mut ids: Vec<(&str, u64)> = record.retained.iter().map(|id| ("chk", *id)).collect();
            ids.extend(record.savepoints.iter().map(|id| ("sp", *id)));
            if ids.is_empty() {
                continue;
            }
            let (kind, id) = ids[self.r(ids.len() as u64) as usize];
            let path = format!("jobs/{job}/{kind}-{id:020}/_metadata");
            let target = RestoreTarget {
                dir: self.fresh_dir("reader"),
                key_groups: common::ranges(1)[0],
                settings: common::settings(),
            };
            let restored = tokio::time::timeout(
                OP_LIMIT,
                rockpoint::restore_backend(
                    &*self.arc,
                    &RestoreSource::Metadata(path.clone()),
                    &target,
                    2,
                    None,
                ),
            )
            .await;
            match restored {
                Err(_) => {
                    self.fig().stalls += 1;
                    self.note(format!("reader of {path} stalled"));
                }
                Ok(Ok(backend)) => {
                    self.fig().reads_ok += 1;
                    let scan = common::scan_backends(std::slice::from_ref(&backend)).expect("scan");
                    self.verify_scan(&scan, &format!("reader of {path}"), Some((job, id)));
                    drop(backend);
                    let _ = std::fs::remove_dir_all(&target.dir);
                }
                Ok(Err(e)) => {
                    self.fig().read_errors += 1;
                    match e.kind() {
                        ErrorKind::NotFound | ErrorKind::Unavailable => {}
                        ErrorKind::Corruption => self.violation(format!(
                            "G2/G3: reader of {path} (listed by the job record when picked) failed with Corruption: {e}"
                        )),
                        _ => self.unexpected(&format!("reader of {path}"), &e),
                    }
                }
            }
            self.check_invariants("reader").await;
        }
    }

    /// A GC loop.
    async fn gc(self: Rc<Self>) {
        self.fig().actors += 1;
        let options = GcOptions {
            grace_period: Duration::ZERO,
            mode: SweepMode::Delete,
            clock_margin: Duration::ZERO,
            ..GcOptions::default()
        };
        while !self.stop.get() {
            tokio::time::sleep(Duration::from_millis(2 + self.r(20))).await;
            match tokio::time::timeout(OP_LIMIT, rockpoint::collect_garbage(&*self.arc, &options))
                .await
            {
                Err(_) => {
                    self.fig().stalls += 1;
                    self.note("GC pass stalled".into());
                }
                Ok(Ok(report)) => {
                    let mut f = self.fig();
                    f.gc_passes += 1;
                    f.gc_fenced += report.fenced_jobs.len() as u64;
                    f.gc_shared_deleted += report.shared_files.len() as u64;
                }
                Ok(Err(e)) => {
                    self.fig().gc_errors += 1;
                    if !matches!(
                        e.kind(),
                        ErrorKind::Unavailable
                            | ErrorKind::Busy
                            | ErrorKind::NotFound
                            | ErrorKind::Conflict
                    ) {
                        self.unexpected("GC pass", &e);
                    }
                }
            }
            self.check_invariants("gc").await;
        }
    }
}

struct Slot {
    life: Rc<Life>,
    abort: tokio::task::AbortHandle,
}

async fn wait_for_checkpoint(sim: &Sim, job: &str, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit && sim.store.job_record(job).and_then(|r| r.latest()).is_none()
    {
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// Runs one seed; returns its figures, or the violations (with the seed and step count).
fn run_seed(seed: u64, intent_faults: bool, on_s3: bool) -> Result<Figures, String> {
    let tmp = tempfile::tempdir().expect("tempdir");
    // On S3: a fresh root of the test server for this seed.
    let backing = on_s3.then(|| {
        let server = common::s3::S3Server::get();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(server.root(&tmp.path().join("s3-root")))
            .expect("an S3 root")
    });
    let mut rng = SimRng::new(seed);
    let short_lease = rng.chance(0.35);
    let settings = CheckpointSettings {
        retained: rng.range(1, 3) as usize,
        max_concurrent: rng.range(1, 2) as usize,
        transfer_parallelism: rng.range(1, 4) as usize,
        lease: if short_lease {
            Duration::from_millis(rng.range(600, 2000))
        } else {
            Duration::from_secs(60)
        },
        ..CheckpointSettings::default()
    };
    let faults = FaultConfig {
        delay: [0.0, 0.1, 0.3, 0.6][rng.below(4) as usize],
        fail: [0.0, 0.005, 0.02, 0.05, 0.15][rng.below(5) as usize],
        ambiguous: [0.0, 0.005, 0.02, 0.05, 0.15][rng.below(5) as usize],
        intent_faults,
    };
    let store = match backing {
        Some(backing) => SimStore::with_backing(&format!("seed-{seed}"), seed, faults, backing),
        None => SimStore::new(&format!("seed-{seed}"), seed, faults),
    };
    let sim = Rc::new(Sim {
        seed,
        arc: Arc::new(store.clone()),
        store,
        base: tmp.path().to_owned(),
        settings: settings.clone(),
        rng: RefCell::new(SimRng::new(seed ^ 0xA5A5_5A5A)),
        oracles: RefCell::default(),
        id_marker: RefCell::default(),
        next_marker: Cell::new(1),
        next_dir: Cell::new(0),
        violations: RefCell::default(),
        notes: RefCell::default(),
        fig: RefCell::default(),
        stop: Cell::new(false),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    let sim2 = sim.clone();
    let lease = settings.lease;
    local.block_on(&runtime, async move {
        let sim = sim2;
        let mut background = Vec::new();
        for _ in 0..rng.range(1, 2) {
            background.push(tokio::task::spawn_local(sim.clone().gc()));
        }
        for _ in 0..rng.range(1, 2) {
            background.push(tokio::task::spawn_local(sim.clone().reader()));
        }
        let mut writers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut slots: HashMap<&str, Slot> = HashMap::new();
        let budgets: HashMap<&str, Rc<Cell<u32>>> = [
            ("a", Rc::new(Cell::new(rng.range(8, 16) as u32))),
            ("b", Rc::new(Cell::new(rng.range(5, 10) as u32))),
            ("c", Rc::new(Cell::new(rng.range(3, 6) as u32))),
        ]
        .into_iter()
        .collect();
        let mut generation = 0;
        let mut spawn = |job: &'static str,
                         start: Start,
                         slots: &mut HashMap<&str, Slot>,
                         writers: &mut Vec<_>| {
            generation += 1;
            let life = Rc::new(Life {
                name: format!("{job}#{generation}"),
                zombie_budget: Cell::new(None),
            });
            let handle = tokio::task::spawn_local(sim.clone().writer(
                job.to_owned(),
                start,
                life.clone(),
                budgets[job].clone(),
            ));
            slots.insert(
                job,
                Slot {
                    life,
                    abort: handle.abort_handle(),
                },
            );
            writers.push(handle);
        };
        spawn("a", Start::Fresh, &mut slots, &mut writers);
        wait_for_checkpoint(&sim, "a", Duration::from_secs(10)).await;
        spawn(
            "b",
            Start::From("a".into(), ClaimMode::NoClaim),
            &mut slots,
            &mut writers,
        );
        let claim_by_c = rng.chance(0.4);
        let mut c_started = false;
        for _ in 0..rng.range(3, 8) {
            tokio::time::sleep(Duration::from_millis(rng.range(5, 80))).await;
            let job = if rng.chance(0.6) { "a" } else { "b" };
            match rng.below(10) {
                // Takeover: a second coordinator while the first keeps trying (a zombie).
                0..=3 => {
                    let live = slots
                        .get(job)
                        .filter(|slot| !slot.abort.is_finished() && budgets[job].get() > 0)
                        .map(|slot| slot.life.clone());
                    if let Some(life) = live {
                        life.zombie_budget.set(Some(rng.range(2, 4) as u32));
                        sim.fig().takeovers += 1;
                        spawn(job, Start::Resume, &mut slots, &mut writers);
                    }
                }
                // Crash and restart after a delay (past the lease in short-lease seeds).
                4..=6 => {
                    let live = slots
                        .get(job)
                        .filter(|slot| !slot.abort.is_finished() && budgets[job].get() > 0)
                        .map(|slot| slot.abort.clone());
                    if let Some(abort) = live {
                        abort.abort();
                        sim.fig().crashes += 1;
                        let delay = if short_lease && rng.chance(0.5) {
                            lease + Duration::from_millis(rng.range(50, 400))
                        } else {
                            Duration::from_millis(rng.below(30))
                        };
                        tokio::time::sleep(delay).await;
                        spawn(job, Start::Resume, &mut slots, &mut writers);
                    }
                }
                // A third job claims a checkpoint of `a` or `b`.
                7 if claim_by_c && !c_started => {
                    c_started = true;
                    let src = if rng.chance(0.5) { "a" } else { "b" };
                    spawn(
                        "c",
                        Start::From(src.into(), ClaimMode::Claim),
                        &mut slots,
                        &mut writers,
                    );
                }
                _ => {}
            }
        }
        if claim_by_c && !c_started {
            spawn(
                "c",
                Start::From("a".into(), ClaimMode::Claim),
                &mut slots,
                &mut writers,
            );
        }
        // Let the writers finish (zombies included).
        let deadline = Instant::now() + SEED_LIMIT;
        for handle in writers {
            let left = deadline.saturating_duration_since(Instant::now());
            let abort = handle.abort_handle();
            if tokio::time::timeout(left, handle).await.is_err() {
                abort.abort();
                sim.fig().stalls += 1;
                sim.note("a writer did not finish within the seed's time limit".into());
            }
        }
        sim.stop.set(true);
        for handle in background {
            let abort = handle.abort_handle();
            if tokio::time::timeout(OP_LIMIT + Duration::from_secs(5), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // Final phase: no more faults. One GC pass (checked at every delete), then every retained
        // checkpoint and savepoint of every job restores to exactly its oracle.
        sim.store.set_faults(FaultConfig::default());
        let options = GcOptions {
            grace_period: Duration::ZERO,
            mode: SweepMode::Delete,
            clock_margin: Duration::ZERO,
            ..GcOptions::default()
        };
        if let Err(e) = rockpoint::collect_garbage(&*sim.arc, &options).await {
            sim.unexpected("final GC pass", &e);
        }
        sim.check_invariants("final").await;
        let raw = sim.store.raw();
        for job in JOBS {
            let Some(record) = raw.job_record(job) else {
                continue;
            };
            let ids = record
                .retained
                .iter()
                .map(|id| ("chk", *id))
                .chain(record.savepoints.iter().map(|id| ("sp", *id)));
            for (kind, id) in ids {
                let path = format!("jobs/{job}/{kind}-{id:020}/_metadata");
                sim.fig().final_restores += 1;
                if sim.id_marker.borrow().contains_key(&(job.to_owned(), id)) {
                    sim.fig().final_by_id += 1;
                }
                match common::restore_scan(&raw, &path, &sim.fresh_dir("final")).await {
                    Ok(scan) => {
                        sim.verify_scan(
                            &scan,
                            &format!("final restore of {path}"),
                            Some((job, id)),
                        );
                    }
                    Err(e) => sim.violation(format!("G1/G2: final restore of {path} failed: {e}")),
                }
            }
        }
        sim.check_invariants("end").await;
    });
    drop(local);
    drop(runtime);
    let _ = started;
    let mut figures = sim.fig.borrow().clone();
    let stats = sim.store.stats();
    figures.seeds = 1;
    figures.steps = stats.steps.load(Ordering::Relaxed);
    figures.delays = stats.delays.load(Ordering::Relaxed);
    figures.failed_before = stats.failed_before.load(Ordering::Relaxed);
    figures.ambiguous = stats.ambiguous.load(Ordering::Relaxed);
    figures.shared_deletes_checked = stats.shared_deletes_checked.load(Ordering::Relaxed);
    for v in sim.store.violations() {
        if !sim.violations.borrow().contains(&v) {
            sim.violations.borrow_mut().push(v);
        }
    }
    for note in sim.notes.borrow().iter() {
        eprintln!("note: {note}");
    }
    let violations = sim.violations.borrow();
    if !violations.is_empty() {
        let trace = sim.store.trace();
        if !trace.is_empty() {
            let path = std::env::temp_dir().join(format!("sim-multiwriter-seed-{seed}.trace"));
            let _ = std::fs::write(&path, trace.join("\n"));
            eprintln!("store trace of seed {seed}: {}", path.display());
        }
    }
    if violations.is_empty() {
        Ok(figures)
    } else {
        Err(format!(
            "seed {seed} ({} store steps; settings {settings:?}; faults {faults:?}): {} violation(s) \
             — replay with ROCKPOINT_SIM_SEED={seed}:\n  - {}",
            figures.steps,
            violations.len(),
            violations.join("\n  - ")
        ))
    }
}

fn verbose() -> bool {
    env_u64("ROCKPOINT_SIM_VERBOSE").is_some_and(|v| v != 0)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn simulation() {
    run_simulation(false);
}

/// The same actors and invariants against the real S3 server (SeaweedFS, `common::s3`): every
/// store operation that survives its injected fault runs there (see `common::simstore`). Quick
/// tier: seeds 0..3; `ROCKPOINT_SIM_S3_SEEDS=N [ROCKPOINT_SIM_FIRST_SEED=n]` for more.
#[test]
fn simulation_on_s3() {
    run_simulation(true);
}

fn run_simulation(on_s3: bool) {
    let started = Instant::now();
    let intent_faults = env_u64("ROCKPOINT_SIM_INTENT_FAULTS").is_some_and(|v| v != 0);
    // Which seeds: one (replay), N from a first seed (long tier), or the quick tier: at least
    // QUICK_SEEDS seeds and then more until the store operations reach MIN_STEPS.
    let quick_seeds: u64 = if on_s3 { 3 } else { 24 };
    let (first, count, min_steps) = if on_s3 {
        (
            env_u64("ROCKPOINT_SIM_FIRST_SEED").unwrap_or(0),
            env_u64("ROCKPOINT_SIM_S3_SEEDS").unwrap_or(quick_seeds),
            0,
        )
    } else if let Some(seed) = env_u64("ROCKPOINT_SIM_SEED") {
        (seed, 1, 0)
    } else if let Some(n) = env_u64("ROCKPOINT_SIM_SEEDS") {
        (env_u64("ROCKPOINT_SIM_FIRST_SEED").unwrap_or(0), n, 0)
    } else {
        (
            0,
            quick_seeds,
            env_u64("ROCKPOINT_SIM_MIN_STEPS").unwrap_or(50_000),
        )
    };
    let cap = first + count.max(quick_seeds * 8);
    let workers = env_u64("ROCKPOINT_SIM_WORKERS").unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| (n.get() as u64 / 2).clamp(1, 6))
            .unwrap_or(2)
    });
    let next = AtomicU64::new(first);
    let steps = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let total = std::sync::Mutex::new(Figures::default());
    let failures = std::sync::Mutex::new(Vec::<String>::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    let in_base = seed < first + count;
                    if !in_base && (steps.load(Ordering::SeqCst) >= min_steps || seed >= cap) {
                        break;
                    }
                    let outcome = std::panic::catch_unwind(|| run_seed(seed, intent_faults, on_s3));
                    match outcome {
                        Ok(Ok(figures)) => {
                            steps.fetch_add(figures.steps, Ordering::SeqCst);
                            total.lock().unwrap().add(&figures);
                        }
                        Ok(Err(message)) => {
                            failures.lock().unwrap().push(message);
                            stop.store(true, Ordering::SeqCst);
                        }
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failures.lock().unwrap().push(format!(
                                "seed {seed} panicked — replay with ROCKPOINT_SIM_SEED={seed}: {what}"
                            ));
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    let f = total.into_inner().unwrap();
    let failures = failures.into_inner().unwrap();
    let summary = format!(
        "sim_multiwriter{}: {} seeds, {} store steps, {} actors in {:.1}s ({} workers); faults injected: \
         {} delays, {} failed before applying, {} ambiguous; {} shared deletes checked (G3); \
         checkpoints ok {} / errors {}, savepoints {}, dropped {}, aborted {}; takeovers {}, zombie ops \
         rejected {}, straddled {}; crashes {}, self-restarts {}; restores {} ok / {} err, claims {}; \
         reads {} ok / {} err; GC passes {} ok / {} err, jobs fenced {}, shared deleted {}; final \
         restores {} ({} with known id); invariant checks {}; stalls {}, unexpected errors {}; \
         violations {}",
        if on_s3 { " on S3" } else { "" },
        f.seeds,
        f.steps,
        f.actors,
        started.elapsed().as_secs_f64(),
        workers,
        f.delays,
        f.failed_before,
        f.ambiguous,
        f.shared_deletes_checked,
        f.checkpoints_ok,
        f.checkpoint_errors,
        f.savepoints_ok,
        f.dropped,
        f.aborted,
        f.takeovers,
        f.zombie_rejected,
        f.straddled,
        f.crashes,
        f.self_restarts,
        f.restores_ok,
        f.restore_errors,
        f.claims_ok,
        f.reads_ok,
        f.read_errors,
        f.gc_passes,
        f.gc_errors,
        f.gc_fenced,
        f.gc_shared_deleted,
        f.final_restores,
        f.final_by_id,
        f.invariant_checks,
        f.stalls,
        f.unexpected,
        failures.len()
    );
    // Straight to stderr, so the summary shows without --nocapture.
    let _ = writeln!(std::io::stderr(), "{summary}");
    if !failures.is_empty() {
        panic!("{}\n{summary}", failures.join("\n"));
    }
    if min_steps > 0 {
        assert!(
            f.steps >= min_steps,
            "the quick tier ran only {} store steps (< {min_steps}) in {} seeds",
            f.steps,
            f.seeds
        );
    }
}
