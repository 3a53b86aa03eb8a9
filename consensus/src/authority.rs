//! Who may ask the leader for what: the check a leader makes on every request another node
//! forwarded or relayed to it.
//!
//! A node speaks for itself only: its own verdicts, its own lease renewals and releases,
//! the rejoins of members beside it, its own allow-list, and the results of failover steps
//! the state assigns to it. Operator requests (spec, pause, switchover, notes, membership) need an operator with
//! the admin role, whom the forwarding node authenticated by certificate; the author such a
//! command names must be that operator. Decisions only a leader takes (recording a primary,
//! the synchronous standbys, beginning an automatic failover, starting and finishing steps)
//! are never accepted from another node: a leader that lost its office while proposing
//! one must not have it committed by its successor.
//!
//! The origin is known from a certificate: the peer's own for a direct forward, the
//! signer's for a relayed request (see [`crate::transport::signed`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::group::{FailoverKind, StepStatus};
use crate::state::{ClusterState, Command, EventKind};
use crate::transport::rpc::LeaderRequest;
use crate::types::NodeId;

/// What an operator's certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: status, history, the spec, metrics.
    Viewer,
    /// Reads and changes: spec, members, switchover, failover, pause, notes.
    Admin,
}

impl Role {
    /// The role's name as certificates and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            other => Err(format!("{other:?} is not a role: expected admin or viewer")),
        }
    }
}

/// An operator a node authenticated and speaks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClaim {
    /// The operator's name, as the history records it.
    pub name: String,
    /// What the operator may do.
    pub role: Role,
}

/// Who asks: the node a request comes from, and the operator it speaks for, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The node the request comes from, by its certificate.
    pub node: NodeId,
    /// The operator the node authenticated, for an operator's request.
    pub operator: Option<OperatorClaim>,
}

/// Checks that `requester` may ask for `request`, given the state the leader applied.
/// The error says what was refused and why, in words.
pub fn check(requester: &Requester, request: &LeaderRequest, state: &ClusterState) -> Result<(), String> {
    let node = requester.node;
    if state.removed.contains(&node) {
        return Err(format!("node {node} was removed from the cluster"));
    }
    // Looked up in place: this runs for every write another node forwards.
    if state.membership.membership().get_node(&node).is_none() {
        return Err(format!("node {node} is not a member of the cluster"));
    }
    match request {
        LeaderRequest::ReadIndex => Ok(()),
        LeaderRequest::AddMember { .. } | LeaderRequest::RemoveMember { .. } => admin(requester, None),
        LeaderRequest::Write { command } => check_command(requester, command, state),
    }
}

fn check_command(requester: &Requester, command: &Command, state: &ClusterState) -> Result<(), String> {
    let node = requester.node;
    let own = |claimed: NodeId, field: &str| {
        if claimed == node {
            Ok(())
        } else {
            Err(format!("node {node} may not send {command} naming node {claimed} as its {field}"))
        }
    };
    match command {
        Command::ReportVerdict { node: claimed, .. } => own(*claimed, "observer"),
        Command::RenewLease { holder, .. } | Command::ReleaseLease { holder, .. } => own(*holder, "lease holder"),
        Command::RecordRejoin { proposer, .. } => own(*proposer, "proposer"),
        Command::PublishAllowList { node: claimed, .. } => own(*claimed, "node"),
        Command::StepFinished { group, run_id, index, next_by, .. } => {
            if next_by.is_some() {
                return Err(format!("node {node} may not start the next step: only the leader does"));
            }
            let step = state
                .groups
                .get(group)
                .and_then(|group| group.running.as_ref())
                .filter(|run| run.id == *run_id)
                .and_then(|run| run.steps.get(*index));
            match step.map(|step| &step.status) {
                Some(StepStatus::Started { by, .. }) if *by == node => Ok(()),
                _ => Err(format!("node {node} was not given step #{index} of run {run_id} of {group:?} to run")),
            }
        }
        Command::ApplySpec { author, proposer, .. } | Command::SetPaused { author, proposer, .. } => {
            own(*proposer, "proposer")?;
            admin(requester, Some(author))
        }
        Command::BeginFailover { kind: FailoverKind::Switchover | FailoverKind::Forced, proposer, .. } => {
            own(*proposer, "proposer")?;
            admin(requester, None)
        }
        Command::RecordEvent { proposer, kind, .. } => {
            own(*proposer, "proposer")?;
            match kind {
                EventKind::Note { author, .. } => admin(requester, Some(author)),
                EventKind::ClusterBootstrapped { .. } => Ok(()),
                _ => Err(format!("node {node} may not record {kind:?}: only the leader records it")),
            }
        }
        Command::BeginFailover { kind: FailoverKind::Automatic, .. }
        | Command::RecordPrimary { .. }
        | Command::SetSyncStandbys { .. }
        | Command::SetBlocked { .. }
        | Command::StepStarted { .. }
        | Command::FinishFailover { .. } => {
            Err(format!("node {node} may not send {command}: only the leader decides it, never on another's word"))
        }
    }
}

/// An admin operator must have asked; the author a command names, if any, must be them.
fn admin(requester: &Requester, author: Option<&String>) -> Result<(), String> {
    let node = requester.node;
    let Some(operator) = &requester.operator else {
        return Err(format!("node {node} may not make this change on its own: an admin operator must ask for it"));
    };
    if operator.role != Role::Admin {
        return Err(format!("operator {:?} is a {}: changes need the admin role", operator.name, operator.role));
    }
    match author {
        Some(author) if *author != operator.name => Err(format!(
            "the change names {author:?} as its author, but node {node} speaks for operator {:?}",
            operator.name
        )),
        _ => Ok(()),
    }
}
