//! What the coordinator asks its node to do, and what the node tells it back.
//!
//! Every [`Effect`] carries an [`EffectId`]; the node answers each with exactly one
//! [`Outcome`] for that id, success or failure, so nothing the coordinator starts is
//! forgotten. An action on a member is described by [`Action`], a vocabulary that knows no
//! kind of server: each kind (PostgreSQL, Redis, a fake) implements it in the node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::group::StepFacts;
use crate::state::{Command, CommandResponse};

/// Names one effect, unique for the life of a coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectId(pub u64);

impl fmt::Display for EffectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Something the node carries out for its coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Commit `command` through Raft, wherever the leader is; answer within `timeout`.
    Propose {
        /// The effect's id.
        id: EffectId,
        /// The command.
        command: Command,
        /// How long the node may try.
        timeout: Duration,
    },
    /// Do `action` to `member` of `group`.
    Act {
        /// The effect's id.
        id: EffectId,
        /// The group.
        group: String,
        /// The member acted on.
        member: String,
        /// What to do.
        action: Action,
        /// How long the node may take; after that the outcome is a timeout (the action's
        /// effect may still happen, as with any timeout).
        timeout: Duration,
        /// Run only after a quorum confirmed this node still leads (a read index): an
        /// isolated old leader must not act on a member.
        requires_leadership: bool,
    },
    /// Catch up with the cluster: apply everything committed when the leader is asked (a
    /// read index), within `timeout`. Precedes decisions that this node takes alone and that
    /// are hard to undo, which must not rest on a state this node applied late.
    CatchUp {
        /// The effect's id.
        id: EffectId,
        /// How long the node may try.
        timeout: Duration,
    },
    /// Tell the fence guard (the process that stops a PostgreSQL primary when this daemon
    /// dies with its lease running).
    Guard {
        /// The effect's id.
        id: EffectId,
        /// What to tell it.
        order: GuardOrder,
    },
}

impl Effect {
    /// The effect's id.
    pub fn id(&self) -> EffectId {
        match self {
            Effect::Propose { id, .. }
            | Effect::Act { id, .. }
            | Effect::CatchUp { id, .. }
            | Effect::Guard { id, .. } => *id,
        }
    }
}

/// What the fence guard is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuardOrder {
    /// Stop `member` of `group` if nobody disarms or re-arms within `valid_for`.
    Arm {
        /// The group.
        group: String,
        /// The member beside this node.
        member: String,
        /// How long from now.
        valid_for: Duration,
    },
    /// Nothing to guard in `group` any more: the member is confirmed fenced, or not a primary.
    Disarm {
        /// The group.
        group: String,
    },
}

/// An action on one member, whatever its kind. Every action is idempotent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make the member refuse writes and confirm that it does (escalating to a stop where
    /// the kind can). `stale`: it is not the primary at all, so a fence that keeps it
    /// readable is enough whatever the group's fence method.
    Fence {
        /// Whether the member is a stale primary rather than the current one.
        stale: bool,
    },
    /// Lift the fence: the cluster confirmed the member as the primary of `epoch`; its write
    /// settings are brought to the spec's.
    Lift {
        /// The group's epoch.
        epoch: u64,
    },
    /// Confirm that a member this node sees down cannot take writes, on positive evidence
    /// only (its server is not running and refuses connections on its own host). Stops
    /// nothing.
    MakeSureDown,
    /// Start a stopped primary again, refusing writes from its first moment.
    StartFenced,
    /// Whether the member's server process runs on this host.
    IsRunning,
    /// Make the member a replica of `primary` (rewinding or re-cloning where the kind must).
    Rejoin {
        /// The member to follow.
        primary: String,
        /// It was found running as a primary (a stale one) and is to be demoted. Otherwise it
        /// was a replica, or stopped: found running as a primary when the action lands, it was
        /// promoted since this node decided, and is left as it is.
        stale_primary: bool,
    },
    /// Switchover, host-local: stop the old primary's writes cleanly; reports its final position.
    StopForSwitchover,
    /// Switchover, host-local: start the old primary as a replica of `primary`.
    RestartAsReplica {
        /// The new primary.
        primary: String,
    },
    /// The leader fences an old primary over the network, and confirms it refuses writes.
    RemoteFence,
    /// Wait until the member has replayed past `position`.
    WaitForCatchUp {
        /// The old primary's final position.
        position: u64,
    },
    /// Promote the member into `epoch`, refusing writes from its first moment: its own node
    /// lifts the fence once it holds the new primary's lease.
    Promote {
        /// The new epoch.
        epoch: u64,
        /// Strict synchronous mode: commits wait for any standby from the start.
        strict_sync: bool,
    },
    /// Wait until the new primary takes writes, then write `epoch` into it.
    VerifyWritable {
        /// The epoch.
        epoch: u64,
    },
    /// Point the member at `primary` and wait until it follows it.
    Repoint {
        /// The new primary.
        primary: String,
    },
    /// Set which standbys commits on this primary wait for (all of them); empty: none. The
    /// primary refuses it when it holds a setting of a newer `generation`.
    SetSyncStandbys {
        /// The standbys.
        standbys: BTreeSet<String>,
        /// Where the request stands among all leaders' requests to this primary.
        generation: SyncGeneration,
    },
    /// Read the primary's synchronous setting and each standby's replication state.
    ReadSyncState,
    /// Ready a replica for a promotion ahead of time (PostgreSQL: read-only by default in
    /// its configuration), so that a promotion need not write its configuration. Refused
    /// by a member that is not a replica.
    PrepareReplica,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Fence { stale: false } => f.write_str("fence"),
            Action::Fence { stale: true } => f.write_str("fence as a stale primary"),
            Action::Lift { epoch } => write!(f, "lift the fence (epoch {epoch})"),
            Action::MakeSureDown => f.write_str("make sure it is down"),
            Action::StartFenced => f.write_str("start it fenced"),
            Action::IsRunning => f.write_str("check whether it runs"),
            Action::Rejoin { primary, .. } => write!(f, "rejoin as a replica of {primary}"),
            Action::StopForSwitchover => f.write_str("stop cleanly for a switchover"),
            Action::RestartAsReplica { primary } => write!(f, "restart as a replica of {primary}"),
            Action::RemoteFence => f.write_str("fence remotely"),
            Action::WaitForCatchUp { position } => write!(f, "wait for replay past {position}"),
            Action::Promote { epoch, .. } => write!(f, "promote into epoch {epoch}"),
            Action::VerifyWritable { epoch } => write!(f, "verify writable and write epoch {epoch}"),
            Action::Repoint { primary } => write!(f, "re-point at {primary}"),
            Action::SetSyncStandbys { standbys, generation } => {
                write!(f, "set synchronous standbys {standbys:?} (generation {generation})")
            }
            Action::ReadSyncState => f.write_str("read the synchronous state"),
            Action::PrepareReplica => f.write_str("ready it for a promotion"),
        }
    }
}

/// Orders the synchronous settings asked of one primary. The primary keeps the generation
/// of the setting it holds and refuses an older one, so that a deposed leader's request that
/// lands late cannot put back a standby set that a newer leader has replaced and confirmed.
///
/// Compared field by field: a newer epoch (a promotion writes its own) beats every request
/// of an older one; within an epoch, a newer Raft term (a newer leader) beats an older one;
/// within a term (one leader), a later request beats an earlier one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncGeneration {
    /// The group's epoch.
    pub epoch: u64,
    /// The Raft term of the leader that asks.
    pub term: u64,
    /// The order of the request among that leader's requests.
    pub seq: u64,
}

impl SyncGeneration {
    /// The generation a promotion into `epoch` writes: older than any request of the epoch.
    pub const fn promotion(epoch: u64) -> Self {
        SyncGeneration { epoch, term: 0, seq: 0 }
    }
}

impl fmt::Display for SyncGeneration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.epoch, self.term, self.seq)
    }
}

/// What a successful action reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionReport {
    /// What happened, in words, for logs and history.
    pub detail: String,
    /// Facts a failover step learnt (final and promoted positions).
    pub facts: StepFacts,
    /// For [`Action::IsRunning`]: whether the server runs.
    pub running: Option<bool>,
    /// For [`Action::ReadSyncState`]: the setting in force and each standby's state.
    pub sync: Option<SyncState>,
}

impl ActionReport {
    /// A report that says only what happened.
    pub fn done(detail: impl Into<String>) -> Self {
        ActionReport { detail: detail.into(), ..ActionReport::default() }
    }
}

/// A primary's synchronous replication as it reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The standbys its setting makes commits wait for, all of them.
    pub in_force: BTreeSet<String>,
    /// The primary's own position.
    pub position: Option<u64>,
    /// Each connected standby by name: its state (`sync`, `quorum`, `async`, `potential`)
    /// and the position it has flushed.
    pub standbys: BTreeMap<String, StandbyState>,
}

/// One standby as its primary reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandbyState {
    /// `sync`, `quorum`, `async` or `potential`.
    pub state: String,
    /// The position it has flushed.
    pub flushed: Option<u64>,
}

/// Why an action failed, by what the caller can do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The member could not be reached; it may be down, or the network cut. Retry later.
    CannotConnect,
    /// The member answered and refused (it is not in a state the action works from); a retry
    /// helps only once something else changed.
    Refused,
    /// The action did not finish in time; its effect may still happen.
    TimedOut,
    /// This node could not confirm it still leads: the action was not run.
    NotLeader,
    /// Anything else (a tool that failed, missing credentials, an answer not understood).
    Unexpected,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::CannotConnect => "cannot connect",
            FailureKind::Refused => "refused",
            FailureKind::TimedOut => "timed out",
            FailureKind::NotLeader => "not the leader",
            FailureKind::Unexpected => "unexpected",
        })
    }
}

/// A failed action: its kind and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionFailure {
    /// What the caller can do about it.
    pub kind: FailureKind,
    /// What happened, in words.
    pub detail: String,
}

impl ActionFailure {
    /// A failure of `kind`.
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        ActionFailure { kind, detail: detail.into() }
    }
}

impl fmt::Display for ActionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Why a proposal did not commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader is known now; retry after an election.
    NoLeader,
    /// The leader (or every voter that could relay) could not be reached.
    Unreachable(String),
    /// No answer within the proposal's timeout: it may still commit later.
    TimedOut,
    /// The leader failed the request.
    Failed(String),
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NoLeader => f.write_str("no leader"),
            ProposeError::Unreachable(reason) => write!(f, "leader unreachable: {reason}"),
            ProposeError::TimedOut => f.write_str("no answer in time"),
            ProposeError::Failed(reason) => write!(f, "failed: {reason}"),
        }
    }
}

/// The node's answer to one effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A proposal committed (the state machine's answer, which may be a refusal) or not.
    Proposed(Result<CommandResponse, ProposeError>),
    /// An action succeeded or failed.
    Acted(Result<ActionReport, ActionFailure>),
    /// This node caught up with the cluster, or could not.
    CaughtUp(Result<(), ProposeError>),
    /// The guard was told, or could not be.
    Guarded(Result<(), String>),
}
