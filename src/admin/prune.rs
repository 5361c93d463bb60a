//! Which snapshots a retention policy keeps (`rockpoint prune`): the plan only; deleting goes
//! through [`delete_snapshot`](super::delete_snapshot) one by one, with its refusals.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CheckpointSummary, RootView};
use crate::error::{Error, Result};
use crate::layout::SnapshotKind;

/// A retention policy, applied per job, to checkpoints and (if asked) separately to savepoints. A
/// snapshot is kept if any rule keeps it (restic's and borg's semantics); the job's newest
/// retained checkpoint is always kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Keep the newest `n` of each job.
    pub keep_last: Option<usize>,
    /// Keep those committed within this long before now.
    pub keep_within: Option<Duration>,
    /// Apply the policy to savepoints as well (otherwise every savepoint is kept: they are the
    /// user's).
    pub savepoints: bool,
}

impl PrunePolicy {
    /// A policy keeps something: at least one rule must be given (a policy without rules would
    /// delete every snapshot but the newest checkpoint).
    pub fn validate(&self) -> Result<()> {
        if self.keep_last.is_none() && self.keep_within.is_none() {
            return Err(Error::invalid(
                "a prune policy needs a rule: keep the last N, or those within a duration",
            ));
        }
        Ok(())
    }
}

/// One snapshot and what the policy decided for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneDecision {
    /// The snapshot.
    pub snapshot: CheckpointSummary,
    /// Whether the policy keeps it.
    pub keep: bool,
    /// Why: the rule that keeps it, or why it goes.
    pub why: String,
}

/// What `policy` decides for every snapshot `view` shows, at `now_ms`, newest first per job and
/// kind.
pub fn plan_prune(
    view: &RootView,
    policy: &PrunePolicy,
    now_ms: u64,
) -> Result<Vec<PruneDecision>> {
    policy.validate()?;
    let mut out = Vec::new();
    for job in &view.jobs {
        for kind in [SnapshotKind::Checkpoint, SnapshotKind::Savepoint] {
            let mut snapshots: Vec<&CheckpointSummary> =
                job.checkpoints.iter().filter(|c| c.kind == kind).collect();
            snapshots.sort_by_key(|c| std::cmp::Reverse(c.id));
            for (rank, snapshot) in snapshots.into_iter().enumerate() {
                let age_ms = now_ms.saturating_sub(snapshot.created_at_ms);
                let why = if kind == SnapshotKind::Savepoint && !policy.savepoints {
                    Some(
                        "a savepoint (the policy applies to savepoints only with --savepoints)"
                            .to_owned(),
                    )
                } else if kind == SnapshotKind::Checkpoint && rank == 0 {
                    Some("the job's newest checkpoint (it resumes from it)".to_owned())
                } else if policy.keep_last.is_some_and(|n| rank < n) {
                    Some(format!("among the last {}", policy.keep_last.unwrap_or(0)))
                } else if policy
                    .keep_within
                    .is_some_and(|within| u128::from(age_ms) <= within.as_millis())
                {
                    Some("committed within the kept period".to_owned())
                } else {
                    None
                };
                out.push(PruneDecision {
                    snapshot: snapshot.clone(),
                    keep: why.is_some(),
                    why: why.unwrap_or_else(|| "no rule keeps it".to_owned()),
                });
            }
        }
    }
    Ok(out)
}
