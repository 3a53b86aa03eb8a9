//! The node's handle on the cluster: submit writes and membership changes, wherever the
//! leader is.
//!
//! A request submitted on a follower is forwarded once to the leader over the Raft
//! transport; the leader carries it out and answers after it is committed. A node that
//! cannot reach the leader itself (a partition between the two of them only) hands
//! idempotent writes, such as lease renewals, to another voter to forward: one node's
//! broken link to the leader must not cost its primary the lease.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;

use crate::authority::{self, OperatorClaim, Requester};
use crate::coordinator::ProposeError;
use crate::state::{Command, CommandResponse, EventKind};
use crate::state_machine::{SharedState, StateMachineStore};
use crate::tls::Identity;
use crate::transport::client::{PeerLinks, Transport};
use crate::transport::rpc::{Forwarded, LeaderRequest, LeaderResponse, RaftRequest, RaftResponse};
use crate::transport::signed::SignedRequest;
use crate::types::{NodeId, TypeConfig};

/// The openraft handle of a vigil node.
pub type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// How long a learner may take to catch up before `AddMember` gives up on promoting it.
pub const LEARNER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request waits for a leader to be known before answering "no leader".
pub const NO_LEADER_GRACE: Duration = Duration::from_secs(3);

/// How long a forwarded request may take, including the commit on the leader.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(35);

/// How long an idempotent write waits for the leader it was forwarded to before it is
/// handed to other voters as well.
pub const RELAY_AFTER: Duration = Duration::from_millis(300);

/// Why a request could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// No leader is known now; retry after an election.
    #[error("no leader: the cluster has no leader right now (is a majority of voters up?)")]
    NoLeader,
    /// The leader could not be reached.
    #[error("leader node {leader} unreachable: {reason}")]
    LeaderUnreachable {
        /// The leader's id.
        leader: NodeId,
        /// Why.
        reason: String,
    },
    /// The leader refused or failed the request.
    #[error("{0}")]
    Refused(String),
}

/// A command committed through [`Cluster::propose`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The index of the log entry that carried it.
    pub log_index: u64,
    /// What the state machine answered.
    pub response: crate::state::CommandResponse,
}

/// A node's handle on Raft, the replicated state and the transport.
///
/// What a node does with the cluster goes through its methods: commit a command
/// ([`Cluster::propose`]), read the applied state ([`Cluster::state`]), be told of changes
/// ([`Cluster::changes`]), confirm leadership, catch up. Raft itself, the shared state and the
/// transport stay inside this crate.
#[derive(Clone)]
pub struct Cluster {
    /// The local Raft node.
    pub(crate) raft: Raft,
    /// The replicated state as applied on this node.
    pub(crate) state: SharedState,
    /// The outgoing transport, for forwarding and for peer link status.
    pub(crate) transport: Arc<Transport>,
    /// This node's certificate and key: signs what it hands to peers to relay, and holds the
    /// CA that signed requests are checked against.
    pub(crate) identity: Arc<Identity>,
    /// The cluster's name, which signed requests name.
    pub(crate) cluster_name: Arc<str>,
    /// This node's id.
    pub node_id: NodeId,
}

/// Changes whenever this node's Raft metrics change: every applied entry, every change of
/// leader or term.
pub type Changes = openraft::alias::WatchReceiverOf<TypeConfig, openraft::RaftMetrics<TypeConfig>>;

impl Cluster {
    /// The replicated state as this node has applied it, read-locked: hold it briefly.
    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, crate::state::ClusterState> {
        self.state.read().expect("state lock poisoned")
    }

    /// A receiver that changes with every applied entry and every change of leader.
    pub fn changes(&self) -> Changes {
        self.raft.metrics()
    }

    /// Waits until this node has applied the entry at `index`, at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "waiting for an entry to be applied")
            .await
            .map(drop)
            .map_err(|_| ProposeError::TimedOut)
    }

    /// A copy of openraft's current metrics of this node (term, leader, log indexes, ...).
    pub fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader this node knows of, without copying the rest of the metrics (polled often).
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// The leader this node knows of and the newest term it knows, read together.
    pub fn leader_and_term(&self) -> (Option<NodeId>, u64) {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        (metrics.current_leader, metrics.current_term)
    }

    /// When this node leads: how long ago each other node last acknowledged it (`None`: not
    /// since this node became leader). `None` when this node does not lead.
    pub fn follower_acks(&self) -> Option<std::collections::BTreeMap<NodeId, Option<Duration>>> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.current_leader != Some(self.node_id) {
            return None;
        }
        let heartbeat = metrics.heartbeat.as_ref()?;
        Some(
            heartbeat
                .iter()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, acked)| (*id, acked.as_ref().map(|at| openraft::Instant::elapsed(&**at))))
                .collect(),
        )
    }

    /// Every node of the cluster as this node knows it: the applied membership, completed with
    /// openraft's own view, which is newer while a node is still catching up.
    pub fn known_nodes(&self) -> std::collections::BTreeMap<NodeId, crate::types::NodeInfo> {
        let mut nodes = self.state.read().expect("state lock poisoned").nodes();
        let metrics = self.metrics();
        for (id, info) in metrics.membership_config.membership().nodes() {
            nodes.entry(*id).or_insert_with(|| info.clone());
        }
        nodes
    }

    /// The links this node has to its peers.
    pub fn links(&self) -> PeerLinks {
        self.transport.links()
    }

    /// Commits `command` through Raft wherever the leader is, within `timeout`: the state
    /// machine's answer (which may be a refusal, committed like any other), or why it did not
    /// commit. Idempotent commands are relayed through another voter when the leader does not
    /// answer (see [`Cluster::submit`]).
    pub async fn propose(&self, command: Command, timeout: Duration) -> Result<Applied, ProposeError> {
        let submitted = tokio::time::timeout(timeout, self.submit(LeaderRequest::Write { command })).await;
        match submitted {
            Err(_) => Err(ProposeError::TimedOut),
            Ok(Ok(LeaderResponse::Done { log_index, response })) => Ok(Applied { log_index, response }),
            Ok(Ok(other)) => Err(ProposeError::Failed(format!("unexpected answer: {other:?}"))),
            Ok(Err(SubmitError::NoLeader)) => Err(ProposeError::NoLeader),
            Ok(Err(SubmitError::LeaderUnreachable { leader, reason })) => {
                Err(ProposeError::Unreachable(format!("node {leader}: {reason}")))
            }
            Ok(Err(SubmitError::Refused(reason))) => Err(ProposeError::Failed(reason)),
        }
    }

    /// Waits until this node has applied everything the cluster had committed when it asked
    /// (a read index from the leader), within `timeout`: what it then reads of the state is
    /// no older than that moment. For decisions a node takes alone that are hard to undo.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), ProposeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let read = tokio::time::timeout(timeout, self.submit(LeaderRequest::ReadIndex)).await;
        let index = match read {
            Err(_) => return Err(ProposeError::TimedOut),
            Ok(Ok(LeaderResponse::Done { log_index, .. })) => log_index,
            Ok(Ok(other)) => return Err(ProposeError::Failed(format!("unexpected answer: {other:?}"))),
            Ok(Err(SubmitError::NoLeader)) => return Err(ProposeError::NoLeader),
            Ok(Err(SubmitError::LeaderUnreachable { leader, reason })) => {
                return Err(ProposeError::Unreachable(format!("node {leader}: {reason}")));
            }
            Ok(Err(SubmitError::Refused(reason))) => return Err(ProposeError::Failed(reason)),
        };
        self.wait_applied(index, deadline.saturating_duration_since(tokio::time::Instant::now())).await
    }

    /// Confirms with a quorum that this node still leads (a read index): an isolated old
    /// leader keeps believing it leads, so nothing a leader does to a member may rest on
    /// `is_leader` alone.
    pub async fn confirm_leadership(&self) -> Result<(), String> {
        self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await.map(drop).map_err(|e| e.to_string())
    }

    /// Carries out `request` on the leader, forwarding it if this node is not the leader.
    /// What this node asks for itself; an operator's request goes through [`Cluster::submit_as`].
    pub async fn submit(&self, request: LeaderRequest) -> Result<LeaderResponse, SubmitError> {
        self.submit_as(request, None).await
    }

    /// Carries out `request` on the leader for `operator`, whom the caller authenticated and
    /// checked: a leader elsewhere is told who asked, and checks it again.
    pub async fn submit_as(
        &self,
        request: LeaderRequest,
        operator: Option<OperatorClaim>,
    ) -> Result<LeaderResponse, SubmitError> {
        // During an election no node knows the leader for a moment; a request waits for one
        // for up to an election's length before the caller hears "no leader".
        let deadline = tokio::time::Instant::now() + NO_LEADER_GRACE;
        loop {
            let outcome = match self.execute_as_leader(request.clone()).await {
                LeaderResponse::NotLeader { leader: Some(leader) } if leader != self.node_id => {
                    let forwarded = Forwarded { request: request.clone(), operator: operator.clone() };
                    if request.is_idempotent() && operator.is_none() {
                        self.forward_or_relay(leader, forwarded).await
                    } else {
                        self.forward(leader, forwarded).await
                    }
                }
                LeaderResponse::NotLeader { .. } if request.is_idempotent() && operator.is_none() => {
                    self.relay_through_peers(None, &request).await
                }
                LeaderResponse::NotLeader { .. } => Err(SubmitError::NoLeader),
                LeaderResponse::Failed { reason } => Err(SubmitError::Refused(reason)),
                done => Ok(done),
            };
            match outcome {
                Err(SubmitError::NoLeader) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Forwards an idempotent write to the leader, and hands it to the other voters too if
    /// the leader does not answer within [`RELAY_AFTER`]; the first answer wins.
    async fn forward_or_relay(&self, leader: NodeId, request: Forwarded) -> Result<LeaderResponse, SubmitError> {
        let direct = self.forward(leader, request.clone());
        tokio::pin!(direct);
        tokio::select! {
            outcome = &mut direct => {
                match outcome {
                    Err(SubmitError::LeaderUnreachable { .. }) => {}
                    outcome => return outcome,
                }
                self.relay_through_peers(Some(leader), &request.request).await
            }
            _ = tokio::time::sleep(RELAY_AFTER) => {
                let relayed = self.relay_through_peers(Some(leader), &request.request);
                tokio::pin!(relayed);
                tokio::select! {
                    outcome = &mut direct => match outcome {
                        Ok(done) => Ok(done),
                        Err(_) => relayed.await,
                    },
                    outcome = &mut relayed => match outcome {
                        Ok(done) => Ok(done),
                        Err(_) => direct.await,
                    },
                }
            }
        }
    }

    /// Hands `request`, signed, to every other voter but `leader`, one after the other, until
    /// one gets it carried out.
    async fn relay_through_peers(
        &self,
        leader: Option<NodeId>,
        request: &LeaderRequest,
    ) -> Result<LeaderResponse, SubmitError> {
        let signed = SignedRequest::sign(&self.identity, &self.cluster_name, self.node_id, request, unix_millis_now())
            .map_err(|reason| SubmitError::Refused(format!("cannot sign a request to relay: {reason}")))?;
        let peers: Vec<(NodeId, String)> = {
            let state = self.state.read().expect("state lock poisoned");
            let nodes = state.nodes();
            state
                .voter_ids()
                .into_iter()
                .filter(|id| *id != self.node_id && Some(*id) != leader)
                .filter_map(|id| nodes.get(&id).map(|node| (id, node.raft_addr.clone())))
                .collect()
        };
        let mut last = SubmitError::NoLeader;
        for (peer, addr) in peers {
            match self.transport.call(peer, &addr, &RaftRequest::Relay(signed.clone()), FORWARD_TIMEOUT).await {
                Ok(RaftResponse::Forward(LeaderResponse::NotLeader { .. })) => last = SubmitError::NoLeader,
                Ok(RaftResponse::Forward(LeaderResponse::Failed { reason })) => {
                    return Err(SubmitError::Refused(reason));
                }
                Ok(RaftResponse::Forward(done)) => return Ok(done),
                Ok(other) => {
                    last = SubmitError::Refused(format!("node {peer} could not relay the request: {other:?}"));
                }
                Err(error) => {
                    last = SubmitError::LeaderUnreachable { leader: peer, reason: error.to_string() };
                }
            }
        }
        Err(last)
    }

    /// Carries out a request another node signed and handed to this one to relay: here if
    /// this node leads, else passed to the leader it knows as [`RaftRequest::Relayed`], never
    /// relayed again. A request whose signature does not hold is not carried.
    pub async fn relay(&self, signed: SignedRequest) -> Result<LeaderResponse, SubmitError> {
        let (origin, request) = match self.open_signed(&signed) {
            Ok(opened) => opened,
            Err(refusal) => return Ok(refusal),
        };
        match self.execute_for(&Requester { node: origin, operator: None }, request).await {
            LeaderResponse::NotLeader { leader: Some(leader) } if leader != self.node_id => {
                self.send_to_leader(leader, RaftRequest::Relayed(signed)).await
            }
            response => Ok(response),
        }
    }

    /// Carries out, if this node leads, a signed request another node relayed to it.
    pub async fn execute_relayed(&self, signed: SignedRequest) -> LeaderResponse {
        match self.open_signed(&signed) {
            Ok((origin, request)) => self.execute_for(&Requester { node: origin, operator: None }, request).await,
            Err(refusal) => refusal,
        }
    }

    /// Carries out, if this node leads, a request node `peer` (by its certificate) forwarded.
    pub async fn execute_forwarded(&self, peer: NodeId, forwarded: Forwarded) -> LeaderResponse {
        self.execute_for(&Requester { node: peer, operator: forwarded.operator }, forwarded.request).await
    }

    fn open_signed(&self, signed: &SignedRequest) -> Result<(NodeId, LeaderRequest), LeaderResponse> {
        signed.open(&self.identity, &self.cluster_name, unix_millis_now()).map_err(|reason| {
            tracing::warn!(%reason, "refused a signed request");
            metrics::counter!("vigil_raft_requests_refused_total", "reason" => "bad_signature").increment(1);
            LeaderResponse::Failed { reason: format!("refused: {reason}") }
        })
    }

    /// Checks that `requester` may ask for `request` (see [`crate::authority`]) and carries
    /// it out if this node leads. A node that does not lead answers where the leader is:
    /// the leader checks against its own state.
    async fn execute_for(&self, requester: &Requester, request: LeaderRequest) -> LeaderResponse {
        if self.current_leader() == Some(self.node_id) {
            let checked = authority::check(requester, &request, &self.state());
            if let Err(reason) = checked {
                tracing::warn!(node = requester.node, %reason, "refused a request from another node");
                metrics::counter!("vigil_raft_requests_refused_total", "reason" => "not_allowed").increment(1);
                return LeaderResponse::Failed { reason: format!("refused: {reason}") };
            }
        }
        self.execute_as_leader(request).await
    }

    async fn forward(&self, leader: NodeId, request: Forwarded) -> Result<LeaderResponse, SubmitError> {
        self.send_to_leader(leader, RaftRequest::Forward(request)).await
    }

    async fn send_to_leader(&self, leader: NodeId, request: RaftRequest) -> Result<LeaderResponse, SubmitError> {
        // openraft's membership: a node that has not applied the first entries yet already
        // knows where the leader is.
        let Some(node) = self.known_nodes().get(&leader).cloned() else {
            return Err(SubmitError::NoLeader);
        };
        let response = self
            .transport
            .call(leader, &node.raft_addr, &request, FORWARD_TIMEOUT)
            .await
            .map_err(|e| SubmitError::LeaderUnreachable { leader, reason: e.to_string() })?;
        match response {
            RaftResponse::Forward(LeaderResponse::NotLeader { .. }) => Err(SubmitError::NoLeader),
            RaftResponse::Forward(LeaderResponse::Failed { reason }) => Err(SubmitError::Refused(reason)),
            RaftResponse::Forward(done) => Ok(done),
            RaftResponse::Error { reason } => Err(SubmitError::Refused(reason)),
            other => Err(SubmitError::Refused(format!("leader sent an unexpected answer: {other:?}"))),
        }
    }

    /// Carries out `request` if this node is the leader; answers `NotLeader` otherwise.
    pub async fn execute_as_leader(&self, request: LeaderRequest) -> LeaderResponse {
        match request {
            LeaderRequest::Write { command } => self.write(command).await,
            LeaderRequest::AddMember { id, node, learner_only } => self.add_member(id, node, learner_only).await,
            LeaderRequest::RemoveMember { id } => self.remove_member(id).await,
            LeaderRequest::ReadIndex => match self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
                Ok(read) => LeaderResponse::Done { log_index: read.index(), response: CommandResponse::Empty },
                Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(forward))) => {
                    LeaderResponse::NotLeader { leader: forward.leader_id }
                }
                Err(error) => LeaderResponse::Failed { reason: error.to_string() },
            },
        }
    }

    async fn write(&self, command: Command) -> LeaderResponse {
        // Checked here, on the leader, whoever sent it: an API that checked it already, or a
        // node forwarding or relaying what it was handed.
        if let Err(over) = crate::limits::check_command(&command) {
            return LeaderResponse::Failed { reason: format!("too large: {over}") };
        }
        // A spec may ask each node only for what that node allows, whoever applies it.
        if let Command::ApplySpec { spec, .. } = &command {
            let checked = {
                let state = self.state();
                crate::allow::check_cluster(spec, &state.nodes(), &state.allowed)
            };
            if let Err(refusal) = checked {
                return LeaderResponse::Failed { reason: format!("refused: {refusal}") };
            }
        }
        outcome(self.raft.client_write(command).await)
    }

    async fn add_member(&self, id: NodeId, node: crate::types::NodeInfo, learner_only: bool) -> LeaderResponse {
        if let Some(refusal) = self.refuse_if_not_leader() {
            return refusal;
        }
        let (voters, nodes) = {
            let state = self.state.read().expect("state lock poisoned");
            (state.voter_ids(), state.nodes())
        };
        if voters.contains(&id) {
            return LeaderResponse::Failed { reason: format!("node {id} is already a voter") };
        }
        if self.state().removed.contains(&id) {
            return LeaderResponse::Failed {
                reason: format!(
                    "node id {id} belonged to a node that was removed; ids are never reused: give the new node \
                     another id and its own certificate"
                ),
            };
        }
        if let Some((other, _)) = nodes.iter().find(|(other, info)| **other != id && info.name == node.name) {
            return LeaderResponse::Failed { reason: format!("name {:?} is already taken by node {other}", node.name) };
        }
        let added = tokio::time::timeout(LEARNER_CATCH_UP_TIMEOUT, self.raft.add_learner(id, node.clone(), true)).await;
        let learner_response = match added {
            Ok(result) => outcome(result),
            Err(_) => {
                return LeaderResponse::Failed {
                    reason: format!(
                        "node {id} was added as a learner but did not catch up within {} s; \
                         check that it runs and that {} is reachable",
                        LEARNER_CATCH_UP_TIMEOUT.as_secs(),
                        node.raft_addr
                    ),
                };
            }
        };
        if learner_only || !matches!(learner_response, LeaderResponse::Done { .. }) {
            return self.record_membership_change(learner_response, format!("add node {id} as learner")).await;
        }
        let promoted =
            outcome(self.raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false).await);
        self.record_membership_change(promoted, format!("add node {id} as voter")).await
    }

    async fn remove_member(&self, id: NodeId) -> LeaderResponse {
        if let Some(refusal) = self.refuse_if_not_leader() {
            return refusal;
        }
        let (voters, nodes) = {
            let state = self.state.read().expect("state lock poisoned");
            (state.voter_ids(), state.nodes())
        };
        if !nodes.contains_key(&id) {
            return LeaderResponse::Failed { reason: format!("node {id} is not a member") };
        }
        if voters.contains(&id) {
            if voters.len() == 1 {
                return LeaderResponse::Failed { reason: format!("node {id} is the last voter and cannot be removed") };
            }
            let demoted =
                outcome(self.raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true).await);
            if !matches!(demoted, LeaderResponse::Done { .. }) {
                return demoted;
            }
        }
        let removed =
            outcome(self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await);
        self.record_membership_change(removed, format!("remove node {id}")).await
    }

    fn refuse_if_not_leader(&self) -> Option<LeaderResponse> {
        match self.raft.as_leader() {
            Ok(_) => None,
            Err(forward) => Some(LeaderResponse::NotLeader { leader: forward.leader_id }),
        }
    }

    /// Writes a history event for a membership change that succeeded, and answers with the
    /// membership change's own outcome.
    async fn record_membership_change(&self, changed: LeaderResponse, change: String) -> LeaderResponse {
        if !matches!(changed, LeaderResponse::Done { .. }) {
            return changed;
        }
        let (voters, learners) = {
            let state = self.state.read().expect("state lock poisoned");
            let voters = state.voter_ids();
            let learners = state.nodes().into_keys().filter(|id| !voters.contains(id)).collect();
            (voters, learners)
        };
        let event = EventKind::MembershipChanged { change, voters, learners };
        if let LeaderResponse::Failed { reason } = self.write(self.event_command(event)).await {
            tracing::warn!(%reason, "membership changed but its history event was not recorded");
        }
        changed
    }

    /// A command that records `kind` in the history, stamped with this node's clock.
    pub fn event_command(&self, kind: EventKind) -> Command {
        Command::RecordEvent { at_unix_ms: unix_millis_now(), proposer: self.node_id, kind }
    }
}

/// Milliseconds since the Unix epoch by this machine's wall clock.
pub fn unix_millis_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

fn outcome(
    result: Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
) -> LeaderResponse {
    match result {
        Ok(written) => LeaderResponse::Done { log_index: written.log_id.index, response: written.data },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            LeaderResponse::NotLeader { leader: forward.leader_id }
        }
        Err(error) => LeaderResponse::Failed { reason: error.to_string() },
    }
}
