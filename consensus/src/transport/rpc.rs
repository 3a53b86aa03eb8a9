//! The messages of the Raft transport. One request and one response per QUIC stream.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::authority::OperatorClaim;
use crate::state::{Command, CommandResponse};
use crate::transport::signed::SignedRequest;
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
        data: SnapshotBytes,
    },
    /// A write that only the leader can do, forwarded by the node it comes from (the
    /// peer's certificate names it).
    Forward(Forwarded),
    /// A write a node could not get to the leader itself, handed to a peer that passes it on
    /// to the leader as [`RaftRequest::Relayed`] (never relays it again): a node cut off from
    /// the leader alone still reaches it through another node. Signed by the node it comes
    /// from, so the leader knows its origin whoever carried it.
    Relay(SignedRequest),
    /// A relayed write on its last hop, from the relaying node to the leader: carried out
    /// only by a leader, never passed on.
    Relayed(SignedRequest),
}

/// A request forwarded by the node it comes from, with the operator that node speaks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Forwarded {
    /// The request.
    #[serde(flatten)]
    pub request: LeaderRequest,
    /// The operator the forwarding node authenticated, for an operator's request. Absent
    /// from what nodes before roles sent: those requests get a node's rights only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<OperatorClaim>,
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

/// A snapshot's bytes on the wire. The serialized state is itself a JSON document (an
/// object), so it travels embedded as it is: as an array of numbers, as serde writes bytes
/// by default, it took four times its size, and a state of 16 MiB no longer fitted in a
/// frame. An array of numbers (what nodes before this sent) is still read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotBytes(pub Vec<u8>);

impl Serialize for SnapshotBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_slice::<&RawValue>(&self.0) {
            Ok(document) if !document.get().starts_with('[') => document.serialize(serializer),
            // Not a JSON object: sent the old way, which the receiver reads as bytes.
            _ => self.0.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SnapshotBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let document: Box<RawValue> = Deserialize::deserialize(deserializer)?;
        let text = document.get();
        if text.starts_with('[') {
            serde_json::from_str::<Vec<u8>>(text).map(SnapshotBytes).map_err(D::Error::custom)
        } else {
            Ok(SnapshotBytes(text.as_bytes().to_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SnapshotBytes;

    #[test]
    fn a_snapshot_travels_as_the_document_it_is_and_the_old_form_is_still_read() {
        let state = br#"{"groups":{"main":{"epoch":3}},"history":[]}"#.to_vec();
        let wire = serde_json::to_string(&SnapshotBytes(state.clone())).unwrap();
        assert_eq!(wire.as_bytes(), state.as_slice(), "embedded as it is");
        assert_eq!(serde_json::from_str::<SnapshotBytes>(&wire).unwrap(), SnapshotBytes(state.clone()));

        let old = serde_json::to_string(&state).unwrap();
        assert!(old.starts_with("[123,"), "{old}");
        assert_eq!(serde_json::from_str::<SnapshotBytes>(&old).unwrap(), SnapshotBytes(state));

        let not_json = vec![0xff, 0x00, 0x7b];
        let wire = serde_json::to_string(&SnapshotBytes(not_json.clone())).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotBytes>(&wire).unwrap(), SnapshotBytes(not_json));
    }
}
