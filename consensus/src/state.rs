//! The replicated cluster state and the commands that change it.
//!
//! Architecture Invariant: this module does no IO, reads no clock and spawns nothing.
//! Applying the same commands in the same order gives the same state on every node, so
//! every time stamp a command needs is carried inside the command by its proposer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::allow::AllowList;
use crate::group::{
    FailoverKind, FailoverRun, GroupState, PrimaryLease, Step, StepFacts, StepSeen, StepState, StepStatus,
    VerdictReport,
};
use crate::spec::ClusterSpec;
use crate::types::{LogId, NodeId, NodeInfo, StoredMembership};

/// How many events the history keeps; older ones are dropped first.
///
/// The history is for operators, not for recovery, so a bound keeps snapshots small.
pub const HISTORY_CAPACITY: usize = 10_000;

/// A change to the replicated state, proposed by a node and applied by all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Append an event to the cluster history.
    RecordEvent {
        /// Wall-clock time at the proposer, milliseconds since the Unix epoch.
        at_unix_ms: u64,
        /// The node that proposed it.
        proposer: NodeId,
        /// What happened.
        kind: EventKind,
    },
    /// Replace the cluster spec. Refused unless it validates against the membership.
    ApplySpec {
        /// The new spec.
        spec: ClusterSpec,
        /// Proposer's wall clock.
        at_unix_ms: u64,
        /// The node that proposed it.
        proposer: NodeId,
        /// Who asked, in words.
        author: String,
    },
    /// A node's verdict on a member.
    ReportVerdict {
        /// The observing node.
        node: NodeId,
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The verdict and its times.
        report: VerdictReport,
    },
    /// Record which member is the primary (first discovery, when none is recorded).
    RecordPrimary {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The epoch found in the member's `vigil.epoch` table, if any.
        epoch: Option<u64>,
        /// Leader's wall clock.
        at_unix_ms: u64,
        /// The leader.
        proposer: NodeId,
    },
    /// Pause or resume automatic failover of a group.
    SetPaused {
        /// The group.
        group: String,
        /// Paused or not.
        paused: bool,
        /// Who asked.
        author: String,
        /// Proposer's wall clock.
        at_unix_ms: u64,
        /// The proposing node.
        proposer: NodeId,
    },
    /// The node beside the primary renews its lease. Refused unless the member is the
    /// primary of the current epoch, the node is the one beside it, and no failover is
    /// replacing it: a refused renewal tells the holder to stay fenced.
    RenewLease {
        /// The group.
        group: String,
        /// The primary.
        member: String,
        /// The renewing node.
        holder: NodeId,
        /// The epoch the holder believes its primary holds.
        epoch: u64,
    },
    /// The holder gives the lease up: its primary is down and fenced.
    ReleaseLease {
        /// The group.
        group: String,
        /// The primary.
        member: String,
        /// The releasing node.
        holder: NodeId,
        /// Why, in words.
        reason: String,
    },
    /// The node beside a member tried to bring it back as a replica of the primary.
    RecordRejoin {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The primary it was to follow.
        primary: String,
        /// Whether it worked.
        succeeded: bool,
        /// What happened, in words.
        detail: String,
        /// The node's wall clock.
        at_unix_ms: u64,
        /// The node.
        proposer: NodeId,
    },
    /// Replace the confirmed synchronous standbys of the group's primary. Refused if the
    /// primary or epoch changed since the leader looked, or a failover runs.
    SetSyncStandbys {
        /// The group.
        group: String,
        /// The primary they are standbys of.
        primary: String,
        /// The epoch of that primary.
        epoch: u64,
        /// The standbys.
        standbys: BTreeSet<String>,
        /// Why writes are blocked, if they are.
        note: Option<String>,
    },
    /// Record why no failover is possible now, or clear it.
    SetBlocked {
        /// The group.
        group: String,
        /// The reason, or `None` to clear.
        reason: Option<String>,
    },
    /// Start a failover or switchover with a fixed plan. Refused if one is running.
    BeginFailover {
        /// The group.
        group: String,
        /// The run as planned; its id and epoch are assigned at apply.
        kind: FailoverKind,
        /// Why.
        reason: String,
        /// The primary being replaced.
        old_primary: Option<String>,
        /// The member to promote.
        candidate: String,
        /// The steps, in order.
        plan: Vec<Step>,
        /// When the failure was first seen.
        detected_at_ms: Option<u64>,
        /// Leader's wall clock at the decision.
        decided_at_ms: u64,
        /// The old primary's last known WAL position.
        old_primary_lsn: Option<u64>,
        /// The candidate's WAL position at the decision.
        candidate_lsn: Option<u64>,
        /// The leader.
        proposer: NodeId,
    },
    /// A step of the running failover is about to run on `by`.
    StepStarted {
        /// The group.
        group: String,
        /// The run.
        run_id: u64,
        /// The step's index in the plan.
        index: usize,
        /// The node that runs it.
        by: NodeId,
        /// Its wall clock.
        at_ms: u64,
        /// The step's status the start was decided on; refused once the step has moved on.
        /// Absent in entries written before vigil compared it: those start unconditionally.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<StepSeen>,
    },
    /// A step of the running failover ended.
    StepFinished {
        /// The group.
        group: String,
        /// The run.
        run_id: u64,
        /// The step's index in the plan.
        index: usize,
        /// Whether it succeeded.
        succeeded: bool,
        /// What happened, in words.
        detail: String,
        /// Facts it learnt.
        facts: StepFacts,
        /// The runner's wall clock.
        at_ms: u64,
        /// With a success: the next step starts at once, run by this node (the leader), in
        /// the same entry, which saves a commit between two steps. Ignored unless the next
        /// step is still pending.
        #[serde(default)]
        next_by: Option<NodeId>,
    },
    /// A node says what it allows the spec to make it do (see [`crate::allow`]), replacing
    /// what it said before.
    PublishAllowList {
        /// The node.
        node: NodeId,
        /// Its allow-list.
        allow: AllowList,
    },
    /// End the running failover.
    FinishFailover {
        /// The group.
        group: String,
        /// The run.
        run_id: u64,
        /// Whether it succeeded.
        succeeded: bool,
        /// How it ended, in words.
        outcome: String,
        /// Leader's wall clock.
        at_ms: u64,
        /// The leader.
        proposer: NodeId,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::RecordEvent { proposer, kind, .. } => {
                write!(f, "record-event from node {proposer}: {kind}")
            }
            Command::ApplySpec { author, .. } => write!(f, "apply-spec by {author}"),
            Command::ReportVerdict { node, group, member, report, .. } => {
                write!(f, "verdict of node {node} on {group}/{member}: {}", report.verdict.health)
            }
            Command::RecordPrimary { group, member, .. } => {
                write!(f, "record-primary {group}/{member}")
            }
            Command::SetPaused { group, paused, .. } => write!(f, "set-paused {group} {paused}"),
            Command::RenewLease { group, member, holder, epoch } => {
                write!(f, "renew-lease {group}/{member} by node {holder} epoch {epoch}")
            }
            Command::ReleaseLease { group, member, holder, .. } => {
                write!(f, "release-lease {group}/{member} by node {holder}")
            }
            Command::RecordRejoin { group, member, succeeded, .. } => {
                write!(f, "record-rejoin {group}/{member} ok={succeeded}")
            }
            Command::SetSyncStandbys { group, standbys, .. } => {
                write!(f, "set-sync-standbys {group} {standbys:?}")
            }
            Command::SetBlocked { group, reason, .. } => {
                write!(f, "set-blocked {group} {reason:?}")
            }
            Command::BeginFailover { group, kind, candidate, .. } => {
                write!(f, "begin {kind} of {group} to {candidate}")
            }
            Command::StepStarted { group, run_id, index, .. } => {
                write!(f, "step-started {group} run {run_id} #{index}")
            }
            Command::StepFinished { group, run_id, index, succeeded, .. } => {
                write!(f, "step-finished {group} run {run_id} #{index} ok={succeeded}")
            }
            Command::FinishFailover { group, run_id, succeeded, .. } => {
                write!(f, "finish-failover {group} run {run_id} ok={succeeded}")
            }
            Command::PublishAllowList { node, .. } => write!(f, "publish-allow-list of node {node}"),
        }
    }
}

/// What the state machine answers to an applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandResponse {
    /// The entry carried no command (a blank or membership entry).
    Empty,
    /// The event was recorded under this id.
    EventRecorded {
        /// The id of the new event.
        event_id: u64,
    },
    /// The command was applied.
    Applied,
    /// A failover run started.
    RunStarted {
        /// Its id.
        run_id: u64,
        /// The epoch it promotes into.
        epoch: u64,
    },
    /// The command was committed but changed nothing, for this reason.
    Refused {
        /// Why, in words.
        reason: String,
    },
}

/// One entry of the cluster history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event, never reused.
    pub id: u64,
    /// The Raft log index the event was committed at.
    pub log_index: u64,
    /// Wall-clock time at the proposer, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The node that proposed it.
    pub proposer: NodeId,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of event the history records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The cluster was bootstrapped from its initial members.
    ClusterBootstrapped {
        /// The voters it started with.
        voters: BTreeSet<NodeId>,
    },
    /// An operator changed the membership.
    MembershipChanged {
        /// What was asked, in words, for example "add node 4 as voter".
        change: String,
        /// Voters after the change.
        voters: BTreeSet<NodeId>,
        /// Learners after the change.
        learners: BTreeSet<NodeId>,
    },
    /// A new cluster spec came into force.
    SpecApplied {
        /// Who applied it.
        author: String,
        /// Its groups.
        groups: Vec<String>,
    },
    /// The cluster learnt which member of a group is the primary.
    PrimaryRecorded {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// Automatic failover of a group was paused or resumed.
    PauseChanged {
        /// The group.
        group: String,
        /// Paused now or not.
        paused: bool,
        /// Who.
        author: String,
    },
    /// A failover or switchover started.
    FailoverStarted {
        /// The group.
        group: String,
        /// The run id.
        run_id: u64,
        /// What kind.
        run_kind: FailoverKind,
        /// The old primary.
        old_primary: Option<String>,
        /// The candidate.
        candidate: String,
        /// The new epoch.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// A failover or switchover ended.
    FailoverFinished {
        /// The group.
        group: String,
        /// The run id.
        run_id: u64,
        /// Whether it succeeded.
        succeeded: bool,
        /// How it ended.
        outcome: String,
    },
    /// A member was brought back (or not) as a replica of the primary.
    MemberRejoined {
        /// The group.
        group: String,
        /// The member.
        member: String,
        /// The primary it follows.
        primary: String,
        /// Whether it worked.
        succeeded: bool,
        /// What happened.
        detail: String,
    },
    /// A free-text note, written by an operator or a tool.
    Note {
        /// Who wrote it.
        author: String,
        /// The note itself.
        text: String,
    },
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::ClusterBootstrapped { voters } => {
                write!(f, "cluster bootstrapped with voters {}", id_list(voters))
            }
            EventKind::MembershipChanged { change, voters, learners } => {
                write!(f, "membership changed ({change}): voters {}, learners {}", id_list(voters), id_list(learners))
            }
            EventKind::Note { author, text } => write!(f, "note by {author}: {text}"),
            EventKind::SpecApplied { author, groups } => {
                write!(
                    f,
                    "spec applied by {author}: groups {}",
                    if groups.is_empty() { "none".to_string() } else { groups.join(", ") }
                )
            }
            EventKind::PrimaryRecorded { group, member } => {
                write!(f, "{group}: primary is {member}")
            }
            EventKind::PauseChanged { group, paused: true, author } => {
                write!(f, "{group}: paused by {author}")
            }
            EventKind::PauseChanged { group, paused: false, author } => {
                write!(f, "{group}: resumed by {author}")
            }
            EventKind::FailoverStarted { group, run_id, run_kind, old_primary, candidate, epoch, reason } => write!(
                f,
                "{group}: {run_kind} #{run_id} started: {} -> {candidate}, epoch {epoch} ({reason})",
                old_primary.as_deref().unwrap_or("none")
            ),
            EventKind::MemberRejoined { group, member, primary, succeeded: true, detail } => {
                write!(f, "{group}: {member} rejoined as a replica of {primary} ({detail})")
            }
            EventKind::MemberRejoined { group, member, primary, succeeded: false, detail } => {
                write!(f, "{group}: {member} could not rejoin as a replica of {primary}: {detail}")
            }
            EventKind::FailoverFinished { group, run_id, succeeded, outcome } => {
                write!(f, "{group}: run #{run_id} {}: {outcome}", if *succeeded { "succeeded" } else { "abandoned" })
            }
        }
    }
}

fn unknown_group(group: &str) -> CommandResponse {
    CommandResponse::Refused { reason: format!("no group is named {group:?}") }
}

fn id_list(ids: &BTreeSet<NodeId>) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

/// Everything the Raft log has decided, as of `last_applied`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The last log entry applied to this state.
    pub last_applied: Option<LogId>,
    /// The last membership applied to this state.
    pub membership: StoredMembership,
    /// The cluster spec in force.
    pub spec: ClusterSpec,
    /// The runtime state of each group of the spec, by group name.
    pub groups: BTreeMap<String, GroupState>,
    /// The most recent events, oldest first, at most [`HISTORY_CAPACITY`].
    pub history: VecDeque<Event>,
    /// The id the next event gets.
    pub next_event_id: u64,
    /// Nodes removed from the cluster: their certificates are refused from then on, and
    /// their ids are never given to another node.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<NodeId>,
    /// What each node allows the spec to make it do, as it published it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allowed: BTreeMap<NodeId, AllowList>,
}

impl ClusterState {
    /// Applies one committed command at `log_id`.
    pub fn apply_command(&mut self, log_id: LogId, command: &Command) -> CommandResponse {
        self.last_applied = Some(log_id);
        let index = log_id.index;
        match command {
            Command::RecordEvent { at_unix_ms, proposer, kind } => {
                let event_id = self.push_event(index, *at_unix_ms, *proposer, kind.clone());
                CommandResponse::EventRecorded { event_id }
            }
            Command::ApplySpec { spec, at_unix_ms, proposer, author } => {
                self.apply_spec(index, spec, *at_unix_ms, *proposer, author)
            }
            Command::ReportVerdict { node, group, member, report } => self.report_verdict(*node, group, member, report),
            Command::RecordPrimary { group, member, epoch, at_unix_ms, proposer } => {
                self.record_primary(index, group, member, *epoch, *at_unix_ms, *proposer)
            }
            Command::SetPaused { group, paused, author, at_unix_ms, proposer } => {
                self.set_paused(index, group, *paused, author, *at_unix_ms, *proposer)
            }
            Command::SetBlocked { group, reason } => match self.groups.get_mut(group) {
                Some(state) => {
                    state.blocked = reason.clone();
                    CommandResponse::Applied
                }
                None => unknown_group(group),
            },
            Command::RenewLease { group, member, holder, epoch } => self.renew_lease(group, member, *holder, *epoch),
            Command::ReleaseLease { group, member, holder, reason } => {
                self.release_lease(group, member, *holder, reason)
            }
            Command::RecordRejoin { group, member, primary, succeeded, detail, at_unix_ms, proposer } => {
                let Some(state) = self.groups.get_mut(group) else { return unknown_group(group) };
                if *succeeded {
                    state.member_notes.remove(member);
                } else {
                    state.member_notes.insert(member.clone(), format!("rejoin failed: {detail}"));
                }
                let kind = EventKind::MemberRejoined {
                    group: group.clone(),
                    member: member.clone(),
                    primary: primary.clone(),
                    succeeded: *succeeded,
                    detail: detail.clone(),
                };
                self.push_event(index, *at_unix_ms, *proposer, kind);
                CommandResponse::Applied
            }
            Command::SetSyncStandbys { group, primary, epoch, standbys, note } => {
                let Some(state) = self.groups.get_mut(group) else { return unknown_group(group) };
                if state.primary.as_deref() != Some(primary.as_str())
                    || state.epoch != *epoch
                    || state.running.is_some()
                {
                    return CommandResponse::Refused {
                        reason: format!("{primary} of epoch {epoch} is no longer the settled primary of {group}"),
                    };
                }
                state.sync_standbys = standbys.clone();
                state.sync_note = note.clone();
                CommandResponse::Applied
            }
            Command::BeginFailover { .. } => self.begin_failover(index, command),
            Command::StepStarted { group, run_id, index: step, by, at_ms, seen } => {
                self.step_started(group, *run_id, *step, *by, *at_ms, *seen)
            }
            Command::StepFinished { group, run_id, index: step, succeeded, detail, facts, at_ms, next_by } => {
                let response = self.step_finished(group, *run_id, *step, *succeeded, detail, facts, *at_ms);
                if *succeeded && let (CommandResponse::Applied, Some(by)) = (&response, next_by) {
                    self.start_next_step(group, *run_id, *step, *by, *at_ms);
                }
                response
            }
            Command::FinishFailover { group, run_id, succeeded, outcome, at_ms, proposer } => {
                self.finish_failover(index, group, *run_id, *succeeded, outcome, *at_ms, *proposer)
            }
            Command::PublishAllowList { node, allow } => {
                if !self.nodes().contains_key(node) {
                    return CommandResponse::Refused { reason: format!("node {node} is not a member") };
                }
                self.allowed.insert(*node, allow.clone());
                CommandResponse::Applied
            }
        }
    }

    fn apply_spec(
        &mut self,
        index: u64,
        spec: &ClusterSpec,
        at_unix_ms: u64,
        proposer: NodeId,
        author: &str,
    ) -> CommandResponse {
        if let Err(error) = spec.validate(&self.nodes()) {
            return CommandResponse::Refused { reason: error.to_string() };
        }
        if let Some(group) = self.groups.iter().find_map(|(name, state)| {
            let kept = spec.group(name).is_some();
            (state.running.is_some() && !kept).then(|| name.clone())
        }) {
            return CommandResponse::Refused {
                reason: format!("group {group:?} has a failover running; it cannot be removed now"),
            };
        }
        self.spec = spec.clone();
        let names: BTreeSet<String> = spec.groups().map(|group| group.name().to_string()).collect();
        self.groups.retain(|name, _| names.contains(name));
        for group in spec.groups().map(|group| group.policy()) {
            let state = self.groups.entry(group.name.clone()).or_default();
            let members: BTreeSet<&str> = group.members.iter().map(|member| member.name.as_str()).collect();
            state.verdicts.retain(|member, _| members.contains(member.as_str()));
            state.last_primary_lsn.retain(|member, _| members.contains(member.as_str()));
            if state.primary.as_deref().is_some_and(|primary| !members.contains(primary)) {
                state.primary = None;
            }
        }
        let kind = EventKind::SpecApplied { author: author.to_string(), groups: names.into_iter().collect() };
        self.push_event(index, at_unix_ms, proposer, kind);
        CommandResponse::Applied
    }

    fn report_verdict(&mut self, node: NodeId, group: &str, member: &str, report: &VerdictReport) -> CommandResponse {
        let Some(spec) = self.spec.group(group).map(|group| group.policy()) else { return unknown_group(group) };
        if spec.member(member).is_none() {
            return CommandResponse::Refused { reason: format!("group {group:?} has no member {member:?}") };
        }
        let state = self.groups.entry(group.to_string()).or_default();
        if let Some(facts) = &report.verdict.facts
            && !facts.in_recovery
            && let Some(lsn) = facts.current_lsn
        {
            let known = state.last_primary_lsn.entry(member.to_string()).or_default();
            *known = (*known).max(lsn);
        }
        state.verdicts.entry(member.to_string()).or_default().insert(node, report.clone());
        CommandResponse::Applied
    }

    fn record_primary(
        &mut self,
        index: u64,
        group: &str,
        member: &str,
        epoch: Option<u64>,
        at: u64,
        proposer: NodeId,
    ) -> CommandResponse {
        let Some(spec) = self.spec.group(group).map(|group| group.policy()) else { return unknown_group(group) };
        if spec.member(member).is_none() {
            return CommandResponse::Refused { reason: format!("group {group:?} has no member {member:?}") };
        }
        let state = self.groups.entry(group.to_string()).or_default();
        if state.running.is_some() {
            return CommandResponse::Refused { reason: "a failover is running".to_string() };
        }
        state.epoch = state.epoch.max(epoch.unwrap_or(0));
        if state.primary.as_deref() == Some(member) {
            return CommandResponse::Applied;
        }
        state.primary = Some(member.to_string());
        let kind = EventKind::PrimaryRecorded { group: group.to_string(), member: member.to_string() };
        self.push_event(index, at, proposer, kind);
        CommandResponse::Applied
    }

    /// The node id of the vigil node named `name`.
    fn node_named(&self, name: &str) -> Option<NodeId> {
        self.membership.membership().nodes().find(|(_, info)| info.name == name).map(|(id, _)| *id)
    }

    fn renew_lease(&mut self, group: &str, member: &str, holder: NodeId, epoch: u64) -> CommandResponse {
        let Some(spec) = self.spec.group(group).map(|group| group.policy()) else { return unknown_group(group) };
        let Some(member_spec) = spec.member(member) else {
            return CommandResponse::Refused { reason: format!("group {group:?} has no member {member:?}") };
        };
        if self.node_named(&member_spec.node) != Some(holder) {
            return CommandResponse::Refused { reason: format!("node {holder} is not the node beside {member}") };
        }
        let Some(state) = self.groups.get_mut(group) else { return unknown_group(group) };
        if state.primary.as_deref() != Some(member) {
            return CommandResponse::Refused { reason: format!("{member} is not the primary of {group}") };
        }
        if epoch != state.epoch {
            return CommandResponse::Refused {
                reason: format!("{member} holds epoch {epoch}, but the group is at epoch {}", state.epoch),
            };
        }
        if let Some(run) = &state.running
            && run.old_primary.as_deref() == Some(member)
        {
            return CommandResponse::Refused { reason: format!("{} #{} is replacing {member}", run.kind, run.id) };
        }
        let renewals = state.lease.as_ref().map_or(0, |lease| lease.renewals) + 1;
        state.lease = Some(PrimaryLease { member: member.to_string(), holder, epoch, renewals, released: None });
        CommandResponse::Applied
    }

    fn release_lease(&mut self, group: &str, member: &str, holder: NodeId, reason: &str) -> CommandResponse {
        let Some(state) = self.groups.get_mut(group) else { return unknown_group(group) };
        match &mut state.lease {
            Some(lease) if lease.member == member && lease.holder == holder => {
                lease.released = Some(reason.to_string());
                CommandResponse::Applied
            }
            _ => CommandResponse::Refused { reason: format!("node {holder} holds no lease on {member}") },
        }
    }

    fn set_paused(
        &mut self,
        index: u64,
        group: &str,
        paused: bool,
        author: &str,
        at: u64,
        proposer: NodeId,
    ) -> CommandResponse {
        let Some(state) = self.groups.get_mut(group) else { return unknown_group(group) };
        if state.paused == paused {
            return CommandResponse::Applied;
        }
        state.paused = paused;
        state.paused_note = paused.then(|| format!("paused by {author}"));
        let kind = EventKind::PauseChanged { group: group.to_string(), paused, author: author.to_string() };
        self.push_event(index, at, proposer, kind);
        CommandResponse::Applied
    }

    fn begin_failover(&mut self, index: u64, command: &Command) -> CommandResponse {
        let Command::BeginFailover {
            group,
            kind,
            reason,
            old_primary,
            candidate,
            plan,
            detected_at_ms,
            decided_at_ms,
            old_primary_lsn,
            candidate_lsn,
            proposer,
        } = command
        else {
            unreachable!("begin_failover is called with BeginFailover only")
        };
        let Some(spec) = self.spec.group(group).map(|group| group.policy()) else { return unknown_group(group) };
        if spec.member(candidate).is_none() {
            return CommandResponse::Refused { reason: format!("group {group:?} has no member {candidate:?}") };
        }
        let state = self.groups.entry(group.clone()).or_default();
        if let Some(running) = &state.running {
            return CommandResponse::Refused {
                reason: format!("{} #{} to {} is already running", running.kind, running.id, running.candidate),
            };
        }
        // A plan made on a state that has moved on since (a proposal committed late, by the
        // next leader, after another failover replaced the same primary) must not run again.
        if old_primary.is_some() && *old_primary != state.primary {
            return CommandResponse::Refused {
                reason: format!(
                    "the plan replaces {}, but the primary is now {}",
                    old_primary.as_deref().unwrap_or("none"),
                    state.primary.as_deref().unwrap_or("unknown")
                ),
            };
        }
        // Strict synchronous mode: the confirmed set may have changed since the plan was made
        // (the settler replaced a standby), and a member dropped from it may lack commits the
        // primary acknowledged since. Forced failovers and switchovers (the old primary
        // stopped cleanly, its last position replayed) are the operator's and the
        // switchover's own business.
        if *kind == FailoverKind::Automatic
            && spec.synchronous == crate::spec::SyncMode::Strict
            && !state.sync_standbys.contains(candidate)
        {
            return CommandResponse::Refused {
                reason: format!(
                    "{candidate} is no longer a confirmed synchronous standby of {group} (the set is {:?})",
                    state.sync_standbys
                ),
            };
        }
        // Checked here, at apply, as well as where the request was planned: the planning node
        // may not have applied the pause yet.
        if state.paused {
            return CommandResponse::Refused {
                reason: format!("group {group} is paused: run `vigil resume {group}` first"),
            };
        }
        let run_id = state.next_run_id;
        state.next_run_id += 1;
        let epoch = state.epoch + 1;
        state.blocked = None;
        state.running = Some(FailoverRun {
            id: run_id,
            kind: *kind,
            reason: reason.clone(),
            old_primary: old_primary.clone(),
            candidate: candidate.clone(),
            epoch,
            detected_at_ms: *detected_at_ms,
            decided_at_ms: *decided_at_ms,
            promoted_at_ms: None,
            first_write_at_ms: None,
            finished_at_ms: None,
            old_primary_lsn: *old_primary_lsn,
            candidate_lsn: *candidate_lsn,
            steps: plan.iter().map(|step| StepState { step: step.clone(), status: StepStatus::Pending }).collect(),
            succeeded: None,
            outcome: None,
        });
        let event = EventKind::FailoverStarted {
            group: group.clone(),
            run_id,
            run_kind: *kind,
            old_primary: old_primary.clone(),
            candidate: candidate.clone(),
            epoch,
            reason: reason.clone(),
        };
        self.push_event(index, *decided_at_ms, *proposer, event);
        CommandResponse::RunStarted { run_id, epoch }
    }

    fn running_step(&mut self, group: &str, run_id: u64, step: usize) -> Result<&mut FailoverRun, CommandResponse> {
        let Some(state) = self.groups.get_mut(group) else { return Err(unknown_group(group)) };
        match &mut state.running {
            Some(run) if run.id == run_id && step < run.steps.len() => Ok(run),
            _ => Err(CommandResponse::Refused { reason: format!("run #{run_id} of {group:?} is not running") }),
        }
    }

    fn step_started(
        &mut self,
        group: &str,
        run_id: u64,
        step: usize,
        by: NodeId,
        at_ms: u64,
        seen: Option<StepSeen>,
    ) -> CommandResponse {
        let run = match self.running_step(group, run_id, step) {
            Ok(run) => run,
            Err(refusal) => return refusal,
        };
        let now = StepSeen::of(&run.steps[step].status);
        if let Some(seen) = seen
            && now != Some(seen)
        {
            let now = now.map_or_else(|| "succeeded".to_string(), |now| now.to_string());
            return CommandResponse::Refused {
                reason: format!("step {step} was {seen} when this start was decided, and is {now} now"),
            };
        }
        let attempt = match &run.steps[step].status {
            StepStatus::Pending => 1,
            StepStatus::Started { attempt, .. } | StepStatus::Failed { attempt, .. } => attempt + 1,
            StepStatus::Succeeded { .. } => {
                return CommandResponse::Refused { reason: format!("step {step} already succeeded") };
            }
        };
        run.steps[step].status = StepStatus::Started { by, attempt, at_ms };
        CommandResponse::Applied
    }

    /// Starts the step after `step` on `by`, if that step is now the run's current one and
    /// still pending (a step skipped or already started is left as it is).
    fn start_next_step(&mut self, group: &str, run_id: u64, step: usize, by: NodeId, at_ms: u64) {
        let Ok(run) = self.running_step(group, run_id, step) else { return };
        let next = step + 1;
        if run.current_step() == Some(next) && run.steps[next].status == StepStatus::Pending {
            run.steps[next].status = StepStatus::Started { by, attempt: 1, at_ms };
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_finished(
        &mut self,
        group: &str,
        run_id: u64,
        step: usize,
        succeeded: bool,
        detail: &str,
        facts: &StepFacts,
        at_ms: u64,
    ) -> CommandResponse {
        let run = match self.running_step(group, run_id, step) {
            Ok(run) => run,
            Err(refusal) => return refusal,
        };
        let promoted = succeeded && run.steps[step].step == Step::Promote;
        let (candidate, epoch) = (run.candidate.clone(), run.epoch);
        let attempt = match &run.steps[step].status {
            StepStatus::Started { attempt, .. } => *attempt,
            StepStatus::Succeeded { .. } => return CommandResponse::Applied,
            _ => 1,
        };
        run.steps[step].status = if succeeded {
            StepStatus::Succeeded { detail: detail.to_string(), at_ms }
        } else {
            StepStatus::Failed { detail: detail.to_string(), attempt, at_ms }
        };
        if succeeded {
            match run.steps[step].step {
                Step::Promote => {
                    run.promoted_at_ms = Some(at_ms);
                    if let Some(lsn) = facts.promoted_lsn {
                        run.candidate_lsn = Some(lsn);
                    }
                }
                Step::VerifyWritable => run.first_write_at_ms = Some(at_ms),
                Step::StopPrimary { .. } => {
                    if let Some(lsn) = facts.final_lsn {
                        run.old_primary_lsn = Some(lsn);
                    }
                }
                _ => {}
            }
        }
        // From the moment the promotion is done, the candidate is the primary, whatever
        // happens to the rest of the run.
        if promoted && let Some(state) = self.groups.get_mut(group) {
            state.primary = Some(candidate);
            state.epoch = state.epoch.max(epoch);
        }
        CommandResponse::Applied
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_failover(
        &mut self,
        index: u64,
        group: &str,
        run_id: u64,
        succeeded: bool,
        outcome: &str,
        at_ms: u64,
        proposer: NodeId,
    ) -> CommandResponse {
        let Some(state) = self.groups.get_mut(group) else { return unknown_group(group) };
        if state.running.as_ref().map(|run| run.id) != Some(run_id) {
            return CommandResponse::Refused { reason: format!("run #{run_id} of {group:?} is not running") };
        }
        // A run given up after its promotion was started may still have promoted its candidate
        // (a promotion in flight lands after its runner died): its epoch is spent, so that the
        // next run promotes into a new one and no epoch ever has two promotions.
        if let Some(run) = &state.running
            && !succeeded
            && run.steps.iter().any(|step| {
                step.step == Step::Promote
                    && matches!(step.status, StepStatus::Started { .. } | StepStatus::Failed { .. })
            })
        {
            state.epoch = state.epoch.max(run.epoch);
        }
        state.finish_running(succeeded, outcome.to_string(), at_ms);
        let kind =
            EventKind::FailoverFinished { group: group.to_string(), run_id, succeeded, outcome: outcome.to_string() };
        self.push_event(index, at_ms, proposer, kind);
        CommandResponse::Applied
    }

    /// Applies an entry that carries no command (a blank entry written by a new leader).
    pub fn apply_blank(&mut self, log_id: LogId) -> CommandResponse {
        self.last_applied = Some(log_id);
        CommandResponse::Empty
    }

    /// Applies a membership entry.
    pub fn apply_membership(
        &mut self,
        log_id: LogId,
        membership: openraft::Membership<NodeId, NodeInfo>,
    ) -> CommandResponse {
        self.last_applied = Some(log_id);
        let before: BTreeSet<NodeId> = self.nodes().into_keys().collect();
        self.membership = StoredMembership::new(Some(log_id), membership);
        let after = self.nodes();
        self.removed.extend(before.into_iter().filter(|id| !after.contains_key(id)));
        self.allowed.retain(|id, _| after.contains_key(id));
        CommandResponse::Empty
    }

    /// The voters of the last applied membership, in id order.
    pub fn voter_ids(&self) -> BTreeSet<NodeId> {
        self.membership.membership().voter_ids().collect()
    }

    /// Every node of the last applied membership (voters and learners) with its description.
    pub fn nodes(&self) -> BTreeMap<NodeId, NodeInfo> {
        self.membership.membership().nodes().map(|(id, node)| (*id, node.clone())).collect()
    }

    /// The events recorded at or after `since_id`, oldest first.
    pub fn events_since(&self, since_id: u64) -> impl Iterator<Item = &Event> {
        self.history.iter().filter(move |event| event.id >= since_id)
    }

    fn push_event(&mut self, log_index: u64, at_unix_ms: u64, proposer: NodeId, kind: EventKind) -> u64 {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.history.push_back(Event { id, log_index, at_unix_ms, proposer, kind });
        while self.history.len() > HISTORY_CAPACITY {
            self.history.pop_front();
        }
        id
    }
}
