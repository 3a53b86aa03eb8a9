//! The JSON documents of the HTTP API, shared by the server and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vigil_consensus::group::FailoverRun;
use vigil_consensus::{Event, NodeId};

/// `GET /status`: the cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The cluster's name.
    pub cluster: String,
    /// The node that answered.
    pub node: NodeSummary,
    /// The leader this node follows, if any.
    pub leader: Option<NodeSummary>,
    /// The current Raft term.
    pub term: u64,
    /// The highest log index known committed.
    pub commit_index: Option<u64>,
    /// The highest log index applied to the state here.
    pub applied_index: Option<u64>,
    /// The highest log index in this node's log.
    pub last_log_index: Option<u64>,
    /// Every member, voters first, in id order.
    pub members: Vec<MemberStatus>,
    /// The groups vigil watches.
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// When this report was made, milliseconds since the Unix epoch, by this node's clock.
    pub generated_at_unix_ms: u64,
}

/// A node named in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Raft role of the node as it sees itself: leader, follower, candidate or learner.
    pub role: String,
}

/// One member of the cluster, as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Datacenter label.
    pub datacenter: String,
    /// Raft address.
    pub raft_addr: String,
    /// API address.
    pub api_addr: String,
    /// Voter (true) or learner (false).
    pub voter: bool,
    /// Whether this is the leader.
    pub leader: bool,
    /// Whether the answering node can reach it now; `None` when it has not tried yet.
    pub reachable: Option<bool>,
    /// Milliseconds since it last answered the answering node.
    pub last_contact_ms: Option<u64>,
    /// Round-trip time to it, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The last error reaching it, if the last attempt failed.
    pub last_error: Option<String>,
    /// The log index the leader knows it holds (only in the leader's report).
    pub matched_index: Option<u64>,
}

/// `POST /members`: add a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The new node's id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its datacenter.
    pub datacenter: String,
    /// Its Raft (QUIC) address.
    pub raft_addr: String,
    /// Its API address.
    pub api_addr: String,
    /// Keep it a learner instead of making it a voter.
    #[serde(default)]
    pub learner: bool,
}

/// `POST /notes`: write a note into the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteRequest {
    /// Who writes it.
    pub author: String,
    /// The note.
    pub text: String,
}

/// The answer to a write: where it was committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// The log index of the entry that carried it.
    pub log_index: u64,
}

/// `GET /history`: recorded events, oldest first, and the failovers of every group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReport {
    /// The events.
    pub events: Vec<Event>,
    /// Finished and running failovers by group, oldest first.
    #[serde(default)]
    pub failovers: BTreeMap<String, Vec<FailoverRun>>,
    /// The kind of each group in `failovers` ("postgres", "redis"), for how positions read.
    #[serde(default)]
    pub kinds: BTreeMap<String, String>,
}

/// Every error the API answers with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable machine-readable kind: `no_leader`, `leader_unreachable`, `refused`,
    /// `bad_request`, `not_found`.
    pub error: String,
    /// Words for a person.
    pub message: String,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` when this node follows a leader (or is it), `no_leader` otherwise.
    pub status: String,
    /// This node.
    pub node_id: NodeId,
    /// The leader, if any.
    pub leader: Option<NodeId>,
}

/// `POST /spec`: apply a cluster spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplySpecRequest {
    /// Who applies it.
    pub author: String,
    /// The spec, as TOML.
    pub toml: String,
}

/// `POST /groups/{group}/pause` and `/resume`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Who asks.
    pub author: String,
}

/// `POST /groups/{group}/switchover` and `/failover`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRequest {
    /// The member to promote; the best candidate when absent (switchover only).
    #[serde(default)]
    pub to: Option<String>,
    /// Who asks.
    pub author: String,
}

/// The answer to a switchover or failover request: the run that started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReceipt {
    /// The run's id in its group.
    pub run_id: u64,
    /// The epoch it promotes into.
    pub epoch: u64,
    /// The member being promoted.
    pub candidate: String,
}

/// One member of a group as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMemberStatus {
    /// The member's name.
    pub name: String,
    /// The vigil node beside it.
    pub node: String,
    /// `host:port`.
    pub address: String,
    /// `primary`, `replica` or `unknown`, from the freshest answering verdict.
    pub role: String,
    /// Each node's verdict: `up`, `degraded`, `down`, or `stale`.
    pub verdicts: BTreeMap<String, String>,
    /// The reason of the first verdict that is not up, if any.
    pub problem: Option<String>,
    /// Its WAL position: current on a primary, replayed on a replica.
    pub lsn: Option<u64>,
    /// Bytes of WAL behind the primary.
    pub lag_bytes: Option<u64>,
    /// Milliseconds behind the primary, by replay timestamp.
    pub lag_ms: Option<u64>,
    /// Its timeline.
    pub timeline: Option<u32>,
    /// Where it streams from.
    pub upstream: Option<String>,
    /// Never promoted automatically.
    pub nofailover: bool,
    /// Why no fence guard can stop it should the vigil beside it die, when none can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unguarded: Option<String>,
}

/// One group in a status report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// The group.
    pub name: String,
    /// `postgres`.
    pub kind: String,
    /// The recorded primary.
    pub primary: Option<String>,
    /// The epoch.
    pub epoch: u64,
    /// Automatic failover paused.
    pub paused: bool,
    /// Why no failover is possible, when that is so.
    pub blocked: Option<String>,
    /// `off` or `strict`.
    pub synchronous: String,
    /// In strict mode, the confirmed synchronous standbys.
    pub sync_standbys: Vec<String>,
    /// In strict mode, why writes are blocked, if they are.
    pub sync_note: Option<String>,
    /// The node holding the primary's lease.
    pub lease_holder: Option<u64>,
    /// The members.
    pub members: Vec<GroupMemberStatus>,
    /// The failover in progress.
    pub running: Option<FailoverRun>,
    /// The last finished failover.
    pub last_run: Option<FailoverRun>,
}
