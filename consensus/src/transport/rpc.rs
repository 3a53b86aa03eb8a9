//! The messages of the Raft transport. One request and one response per QUIC stream.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};

use crate::state::{Command, CommandResponse};
use crate::types::{NodeId, NodeInfo, SnapshotMeta, TypeConfig, Vote};

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "rpc", content = "body", rename_all = "snake_case")]
pub enum RaftRequest {
    /// The first request on a new connection: proves both ends are nodes of one cluster.
    Hello {
        /// The cluster the caller belongs to.
        cluster: String,
    },
    /// A liveness check, sent periodically so every node knows which peers it can reach.
    Ping,
    /// Raft log replication and heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft vote request.
    Vote(VoteRequest<TypeConfig>),
    /// Raft pre-vote request: would you vote for me, without raising any term.
    PreVote(VoteRequest<TypeConfig>),
    /// A whole snapshot, sent when a follower is too far behind for the log.
    InstallSnapshot {
        /// The leader's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The serialized state.
        data: Vec<u8>,
    },
    /// A write that only the leader can do, forwarded by a follower.
    Forward(LeaderRequest),
    /// A write a node could not get to the leader itself, handed to a peer that forwards it
    /// once more (never relays it again): a node cut off from the leader alone still
    /// reaches it through another node.
    Relay(LeaderRequest),
}

/// A response to a [`RaftRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "rpc", content = "body", rename_all = "snake_case")]
pub enum RaftResponse {
    /// The answer to `Hello`.
    Hello {
        /// The cluster the answering node belongs to.
        cluster: String,
        /// The answering node.
        node_id: NodeId,
    },
    /// The answer to `Ping`.
    Pong,
    /// The answer to `AppendEntries`.
    AppendEntries(AppendEntriesResponse<TypeConfig>),
    /// The answer to `Vote` and `PreVote`.
    Vote(VoteResponse<TypeConfig>),
    /// The answer to `InstallSnapshot`.
    InstallSnapshot(SnapshotResponse<TypeConfig>),
    /// The answer to `Forward`.
    Forward(LeaderResponse),
    /// The request could not be handled; the text says why.
    Error {
        /// Why, in words.
        reason: String,
    },
}

/// A request that must be carried out by the Raft leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LeaderRequest {
    /// Commit a command to the log.
    Write {
        /// The command.
        command: Command,
    },
    /// Add a node: first as a learner that catches up, then as a voter unless `learner_only`.
    AddMember {
        /// The new node's id.
        id: NodeId,
        /// How to reach it.
        node: NodeInfo,
        /// Keep it a learner.
        learner_only: bool,
    },
    /// Remove a node from the cluster (voter or learner).
    RemoveMember {
        /// The node to remove.
        id: NodeId,
    },
    /// Confirm leadership with a quorum and answer the commit index a read must wait for
    /// (a read index), so that a follower can catch up with the cluster before it acts.
    ReadIndex,
}

impl LeaderRequest {
    /// Whether committing the request twice does no harm, so that it may be sent again by
    /// another path when the first one did not answer (it may still have been committed).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            LeaderRequest::Write {
                command: crate::state::Command::RenewLease { .. }
                    | crate::state::Command::ReportVerdict { .. }
                    | crate::state::Command::ReleaseLease { .. }
            } | LeaderRequest::ReadIndex
        )
    }
}

/// What the leader answers to a [`LeaderRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum LeaderResponse {
    /// Done, committed at this log index.
    Done {
        /// The index of the log entry that carried it.
        log_index: u64,
        /// What the state machine answered.
        response: CommandResponse,
    },
    /// The receiver is not the leader.
    NotLeader {
        /// The leader it knows of, if any.
        leader: Option<NodeId>,
    },
    /// The leader refused or failed the request.
    Failed {
        /// Why, in words.
        reason: String,
    },
}
