//! The openraft type configuration of vigil: node ids, node descriptions, log payloads.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{Command, CommandResponse};

/// A node's identity in the Raft cluster. Never reused for a node that starts from an empty log.
pub type NodeId = u64;

/// What the cluster knows about one node: how to reach it and where it lives.
///
/// Stored in the Raft membership, so every node learns every other node's addresses from
/// the replicated log rather than from its own configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Human-readable node name, unique in the cluster.
    pub name: String,
    /// Datacenter label, used to spread voters and to prefer candidates.
    pub datacenter: String,
    /// UDP address of the node's QUIC (Raft) endpoint.
    pub raft_addr: String,
    /// TCP address of the node's HTTPS API.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} (raft {}, api {})", self.name, self.datacenter, self.raft_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration used by every vigil node.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
);

/// A Raft log id of vigil's type configuration.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A Raft vote of vigil's type configuration.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A Raft log entry of vigil's type configuration.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// The membership (voters, learners, their [`NodeInfo`]) as stored with its log id.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of vigil's type configuration.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
