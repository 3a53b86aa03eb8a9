//! The replicated cluster state and the commands that change it.
//!
//! Architecture Invariant: this module does no IO, reads no clock and spawns nothing.
//! Applying the same commands in the same order gives the same state on every node, so
//! every time stamp a command needs is carried inside the command by its proposer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

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
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::RecordEvent { proposer, kind, .. } => {
                write!(f, "record-event from node {proposer}: {kind}")
            }
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
            EventKind::MembershipChanged { change, voters, learners } => write!(
                f,
                "membership changed ({change}): voters {}, learners {}",
                id_list(voters),
                id_list(learners)
            ),
            EventKind::Note { author, text } => write!(f, "note by {author}: {text}"),
        }
    }
}

fn id_list(ids: &BTreeSet<NodeId>) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

/// The cluster spec: the groups vigil watches. Empty until groups exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {}

/// Everything the Raft log has decided, as of `last_applied`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The last log entry applied to this state.
    pub last_applied: Option<LogId>,
    /// The last membership applied to this state.
    pub membership: StoredMembership,
    /// The cluster spec in force.
    pub spec: ClusterSpec,
    /// The most recent events, oldest first, at most [`HISTORY_CAPACITY`].
    pub history: VecDeque<Event>,
    /// The id the next event gets.
    pub next_event_id: u64,
}

impl ClusterState {
    /// Applies one committed command at `log_id`.
    pub fn apply_command(&mut self, log_id: LogId, command: &Command) -> CommandResponse {
        self.last_applied = Some(log_id);
        match command {
            Command::RecordEvent { at_unix_ms, proposer, kind } => {
                let event_id = self.push_event(log_id.index, *at_unix_ms, *proposer, kind.clone());
                CommandResponse::EventRecorded { event_id }
            }
        }
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
        self.membership = StoredMembership::new(Some(log_id), membership);
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

    fn push_event(
        &mut self,
        log_index: u64,
        at_unix_ms: u64,
        proposer: NodeId,
        kind: EventKind,
    ) -> u64 {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.history.push_back(Event { id, log_index, at_unix_ms, proposer, kind });
        while self.history.len() > HISTORY_CAPACITY {
            self.history.pop_front();
        }
        id
    }
}
