//! The replicated runtime state of one group: verdicts, primary, epoch, the failover in
//! progress and the finished ones.
//!
//! Architecture Invariant: like the rest of the state, this is changed only by applying
//! committed commands, deterministically, with every time stamp carried in the command.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// How many finished failovers a group keeps.
pub const RUN_HISTORY_CAPACITY: usize = 200;

/// What a node's probes say about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Answers, and does what its role needs (a primary takes writes; a replica streams).
    Up,
    /// Answers, but something is wrong (a primary refuses writes; a replica does not stream).
    Degraded,
    /// Has failed every probe of this node for at least the group's `down_after`.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        })
    }
}

/// What a probe learnt from a member, in one shape for every kind of group.
///
/// Positions are bytes in the group's replication stream: WAL LSNs for PostgreSQL,
/// replication offsets for Redis (`master_repl_offset` on a master, `slave_repl_offset`
/// on a replica, both counted in the same stream, so they compare like LSNs). For Redis,
/// `receiver_status` is `streaming` when `master_link_status` is up, and `timeline` is
/// unused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberFacts {
    /// `pg_is_in_recovery()`; for Redis, the member runs as a replica.
    pub in_recovery: bool,
    /// The timeline of the last checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// On a primary: `pg_current_wal_lsn()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_lsn: Option<u64>,
    /// On a replica: `pg_last_wal_receive_lsn()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    /// On a replica: `pg_last_wal_replay_lsn()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    /// On a replica: milliseconds since the last replayed transaction committed on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_delay_ms: Option<u64>,
    /// On a replica: the WAL receiver's status (`streaming`, ...), if it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_status: Option<String>,
    /// On a replica: the `host:port` it streams from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// On a primary: the epoch written in its `vigil.epoch` table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// One node's verdict on one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Up, degraded or down.
    pub health: Health,
    /// What the probe saw, when the member answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<MemberFacts>,
    /// Why it is degraded or down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A verdict as stored: when the node made it and at which log index it was committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictReport {
    /// The verdict.
    pub verdict: Verdict,
    /// The observing node's wall clock when it made the verdict, ms since the Unix epoch.
    pub observed_at_ms: u64,
    /// Since when (observer's wall clock) the member has had this health without a break.
    pub since_ms: u64,
}

/// The primary's lease, as last committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryLease {
    /// The primary it covers.
    pub member: String,
    /// The node beside it, which renews it and fences the primary when it cannot.
    pub holder: NodeId,
    /// The epoch the primary holds.
    pub epoch: u64,
    /// Counts renewals; every node notes, by its own clock, when it saw this change.
    pub renewals: u64,
    /// Set when the holder gave the lease up (its primary is down and fenced), with why.
    pub released: Option<String>,
}

/// How a failover came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverKind {
    /// A majority of voters saw the primary down.
    Automatic,
    /// An operator asked for a planned switchover.
    Switchover,
    /// An operator forced a failover to a named member.
    Forced,
}

impl fmt::Display for FailoverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailoverKind::Automatic => "failover",
            FailoverKind::Switchover => "switchover",
            FailoverKind::Forced => "forced failover",
        })
    }
}

/// One step of a failover. Every step is idempotent: running it again after a crash finds
/// the work done and reports success.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Stop the old primary cleanly (host-local, on its node), so its last WAL reaches the
    /// replicas; reports the final checkpoint position.
    StopPrimary {
        /// The old primary.
        member: String,
    },
    /// Make sure the old primary takes no more writes: its lease has run out (so the node
    /// beside it fenced it), its holder released it, or the leader fenced it remotely.
    FenceOldPrimary {
        /// The old primary.
        member: String,
    },
    /// Wait until the candidate has replayed past the old primary's final position.
    WaitForCatchUp,
    /// Promote the candidate (`pg_promote`), unless it already is a primary.
    Promote,
    /// Write the new epoch on the candidate: proves it takes writes.
    VerifyWritable,
    /// Point a replica at the new primary.
    Repoint {
        /// The replica.
        member: String,
    },
    /// Restart the old primary as a replica of the new one (host-local, on its node).
    RejoinAsReplica {
        /// The old primary.
        member: String,
    },
}

impl Step {
    /// Whether the step must run on the node beside a member rather than on the leader.
    pub fn host_local_member(&self) -> Option<&str> {
        match self {
            Step::StopPrimary { member } | Step::RejoinAsReplica { member } => Some(member),
            _ => None,
        }
    }

    /// Whether a failure of this step ends the run (otherwise it is recorded and skipped).
    pub fn is_critical(&self) -> bool {
        !matches!(self, Step::Repoint { .. } | Step::RejoinAsReplica { .. })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::StopPrimary { member } => write!(f, "stop old primary {member}"),
            Step::FenceOldPrimary { member } => write!(f, "fence old primary {member}"),
            Step::WaitForCatchUp => write!(f, "wait for the candidate to catch up"),
            Step::Promote => write!(f, "promote"),
            Step::VerifyWritable => write!(f, "verify writable"),
            Step::Repoint { member } => write!(f, "re-point {member}"),
            Step::RejoinAsReplica { member } => write!(f, "rejoin {member} as replica"),
        }
    }
}

/// Where a step stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Committed as started by `by`; it may be running, or its runner may have died.
    Started {
        /// The node running it.
        by: NodeId,
        /// Which attempt.
        attempt: u32,
        /// When (runner's wall clock).
        at_ms: u64,
    },
    /// Done.
    Succeeded {
        /// What happened, in words.
        detail: String,
        /// When.
        at_ms: u64,
    },
    /// Failed on its last attempt.
    Failed {
        /// Why.
        detail: String,
        /// Attempts made.
        attempt: u32,
        /// When.
        at_ms: u64,
    },
}

/// A step's status as a leader saw it when it chose to start the step: the start is applied
/// only while the step still stands there, so a start decided on a step that was running is
/// not taken, once applied, for the retry of that attempt's failure committed in between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum StepSeen {
    /// Not started.
    Pending,
    /// Started, this attempt.
    Started {
        /// The attempt.
        attempt: u32,
    },
    /// Failed, on this attempt.
    Failed {
        /// The attempt.
        attempt: u32,
    },
}

impl StepSeen {
    /// What a start decided on `status` expects; `None` for a step that succeeded.
    pub fn of(status: &StepStatus) -> Option<Self> {
        match status {
            StepStatus::Pending => Some(StepSeen::Pending),
            StepStatus::Started { attempt, .. } => Some(StepSeen::Started { attempt: *attempt }),
            StepStatus::Failed { attempt, .. } => Some(StepSeen::Failed { attempt: *attempt }),
            StepStatus::Succeeded { .. } => None,
        }
    }

    /// The attempt a start decided on this status makes.
    pub fn next_attempt(self) -> u32 {
        match self {
            StepSeen::Pending => 1,
            StepSeen::Started { attempt } | StepSeen::Failed { attempt } => attempt + 1,
        }
    }
}

impl fmt::Display for StepSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepSeen::Pending => write!(f, "pending"),
            StepSeen::Started { attempt } => write!(f, "started (attempt {attempt})"),
            StepSeen::Failed { attempt } => write!(f, "failed (attempt {attempt})"),
        }
    }
}

/// A step and its status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// The step.
    pub step: Step,
    /// Its status.
    pub status: StepStatus,
}

/// Facts a finished step reports, folded into the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFacts {
    /// The old primary's final WAL position (from `StopPrimary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<u64>,
    /// The candidate's replayed position when it was promoted (from `Promote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_lsn: Option<u64>,
}

/// A failover or switchover: the plan, the progress, and the times an operator asks about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRun {
    /// Increases by one per run in the group.
    pub id: u64,
    /// How it came about.
    pub kind: FailoverKind,
    /// Why, in words.
    pub reason: String,
    /// The primary being replaced, if one was known.
    pub old_primary: Option<String>,
    /// The member being promoted.
    pub candidate: String,
    /// The epoch the new primary gets.
    pub epoch: u64,
    /// When the first node saw the old primary fail (observer's clock), for automatic runs.
    pub detected_at_ms: Option<u64>,
    /// When the leader decided.
    pub decided_at_ms: u64,
    /// When the promotion returned.
    pub promoted_at_ms: Option<u64>,
    /// When the first write on the new primary succeeded.
    pub first_write_at_ms: Option<u64>,
    /// When the run ended.
    pub finished_at_ms: Option<u64>,
    /// The old primary's last known WAL position.
    pub old_primary_lsn: Option<u64>,
    /// The candidate's WAL position: known at decision, then as promoted.
    pub candidate_lsn: Option<u64>,
    /// The plan and its progress.
    pub steps: Vec<StepState>,
    /// `Some(true)` when it succeeded, `Some(false)` when it was abandoned.
    pub succeeded: Option<bool>,
    /// How it ended, in words.
    pub outcome: Option<String>,
}

impl FailoverRun {
    /// Bytes of WAL the old primary had that the new one did not: the data-loss estimate.
    pub fn data_loss_bytes(&self) -> Option<u64> {
        Some(self.old_primary_lsn?.saturating_sub(self.candidate_lsn?))
    }

    /// The index of the first step that has not succeeded or been given up on.
    pub fn current_step(&self) -> Option<usize> {
        self.steps.iter().position(|step| match &step.status {
            StepStatus::Pending | StepStatus::Started { .. } => true,
            StepStatus::Failed { .. } => step.step.is_critical(),
            StepStatus::Succeeded { .. } => false,
        })
    }
}

/// The runtime state of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// Raised by every promotion; written into the new primary.
    pub epoch: u64,
    /// The member the cluster holds to be the primary.
    pub primary: Option<String>,
    /// Automatic failover is off; set by `vigil pause`.
    pub paused: bool,
    /// Who paused it and when, in words.
    pub paused_note: Option<String>,
    /// The latest verdict of each node on each member.
    pub verdicts: BTreeMap<String, BTreeMap<NodeId, VerdictReport>>,
    /// The primary's lease.
    #[serde(default)]
    pub lease: Option<PrimaryLease>,
    /// In strict synchronous mode: the standbys the primary is confirmed to wait for, each of
    /// which therefore holds every acknowledged commit. Only these may be promoted.
    #[serde(default)]
    pub sync_standbys: BTreeSet<String>,
    /// In strict synchronous mode, why writes are blocked now, if they are.
    #[serde(default)]
    pub sync_note: Option<String>,
    /// Members that need an operator, with why (a rejoin that failed, say).
    #[serde(default)]
    pub member_notes: BTreeMap<String, String>,
    /// The highest WAL position each member was ever reported at while running as a
    /// primary. Kept apart from the verdicts, which a "down" replaces, because it is the
    /// reference for the lag policy and the data-loss estimate after the primary dies.
    #[serde(default)]
    pub last_primary_lsn: BTreeMap<String, u64>,
    /// The failover in progress.
    pub running: Option<FailoverRun>,
    /// Why no failover is possible, when the primary is down and nothing can be promoted.
    pub blocked: Option<String>,
    /// Finished runs, oldest first, at most [`RUN_HISTORY_CAPACITY`].
    pub finished: VecDeque<FailoverRun>,
    /// The id the next run gets.
    pub next_run_id: u64,
}

impl GroupState {
    pub(crate) fn finish_running(&mut self, succeeded: bool, outcome: String, at_ms: u64) {
        let Some(mut run) = self.running.take() else { return };
        run.succeeded = Some(succeeded);
        run.outcome = Some(outcome);
        run.finished_at_ms = Some(at_ms);
        if succeeded {
            self.primary = Some(run.candidate.clone());
            self.epoch = self.epoch.max(run.epoch);
        }
        // A new primary waits for no confirmed standby yet: the old set named its own standbys.
        if self.primary.as_deref() == Some(run.candidate.as_str()) {
            self.sync_standbys.clear();
        }
        self.finished.push_back(run);
        while self.finished.len() > RUN_HISTORY_CAPACITY {
            self.finished.pop_front();
        }
    }
}
