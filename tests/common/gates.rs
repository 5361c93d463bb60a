//! Gates, a [`Hook`] for scripting interleavings: the first call of one of the given operations
//! whose subject ([`Op::subject`]) matches a needle is held until the test releases it, or every
//! matching call fails once another gate was reached.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rockpoint::{CheckpointCoordinator, Store};

use super::hooked::{Hook, Op};

pub struct Gate {
    /// `Store` method names ([`Op::name`]).
    ops: Vec<&'static str>,
    /// Matches a subject that contains it, or, written `=subject`, exactly that subject.
    needle: String,
    /// `Some(g)`: every matching call fails once `g` was reached; `None`: the first matching call
    /// holds until released.
    fail_after: Option<Arc<Gate>>,
    armed: AtomicBool,
    reached: tokio::sync::watch::Sender<bool>,
    released: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    fn new(ops: &[&'static str], needle: &str, fail_after: Option<Arc<Gate>>) -> Arc<Self> {
        Arc::new(Gate {
            ops: ops.to_vec(),
            needle: needle.to_owned(),
            fail_after,
            armed: AtomicBool::new(true),
            reached: tokio::sync::watch::channel(false).0,
            released: tokio::sync::watch::channel(false).0,
        })
    }

    fn matches(&self, op: &Op<'_>) -> bool {
        if !self.ops.contains(&op.name()) {
            return false;
        }
        let subject = op.subject();
        match self.needle.strip_prefix('=') {
            Some(exact) => subject == exact,
            None => subject.contains(&self.needle),
        }
    }

    /// Waits until a call is held at this gate.
    pub async fn reached(&self) {
        let mut rx = self.reached.subscribe();
        let _reached = rx.wait_for(|r| *r).await.is_ok();
    }

    pub fn release(&self) {
        self.released.send_replace(true);
    }

    async fn hold(&self) {
        self.reached.send_replace(true);
        let mut rx = self.released.subscribe();
        let _released = rx.wait_for(|r| *r).await.is_ok();
    }
}

#[derive(Default)]
pub struct Gates {
    gates: Mutex<Vec<Arc<Gate>>>,
}

impl Gates {
    /// The first call of one of `ops` whose subject matches `needle` waits until released.
    pub fn hold(&self, ops: &[&'static str], needle: &str) -> Arc<Gate> {
        let gate = Gate::new(ops, needle, None);
        self.gates.lock().unwrap().push(gate.clone());
        gate
    }

    /// Every call of one of `ops` whose subject matches `needle` fails once `after` was reached.
    pub fn fail_after(&self, ops: &[&'static str], needle: &str, after: Arc<Gate>) {
        let gate = Gate::new(ops, needle, Some(after));
        self.gates.lock().unwrap().push(gate);
    }
}

#[async_trait::async_trait]
impl Hook for Gates {
    async fn before(&self, op: &Op<'_>, _store: &dyn Store) -> rockpoint::Result<()> {
        let gates: Vec<Arc<Gate>> = self.gates.lock().unwrap().clone();
        for gate in gates {
            if !gate.matches(op) {
                continue;
            }
            match &gate.fail_after {
                Some(after) => {
                    after.reached().await;
                    return Err(std::io::Error::other(format!(
                        "injected failure of {} {}",
                        op.name(),
                        op.subject()
                    ))
                    .into());
                }
                None => {
                    if gate.armed.swap(false, Ordering::SeqCst) {
                        gate.hold().await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Drops a `checkpoint()` future of `job` while its upload is held at `gates` (a caller's timeout),
/// with the cleanup's first store call — the no-op record swap of B2 — held from then on. Returns
/// that gate, reached: the dropped checkpoint's slot is taken until it is released.
pub async fn drop_checkpoint_holding_its_cleanup(
    c: &CheckpointCoordinator,
    job: &super::TestJob,
    gates: &Gates,
) -> Arc<Gate> {
    let upload = gates.hold(&["put_file", "stage_file"], "");
    let refs = job.refs();
    let mut checkpoint = Box::pin(c.checkpoint(&refs));
    tokio::select! {
        done = &mut checkpoint => panic!("the checkpoint finished while its upload was held: {:?}", done.map(|d| d.id())),
        _ = upload.reached() => {}
    }
    let cleanup = gates.hold(&["put_if"], "_job");
    drop(checkpoint);
    upload.release();
    cleanup.reached().await;
    cleanup
}
