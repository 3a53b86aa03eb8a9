//! openraft's network traits on top of the QUIC [`Transport`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};

use crate::error::TransportError;
use crate::state_machine::Snapshot;
use crate::transport::client::Transport;
use crate::transport::rpc::{RaftRequest, RaftResponse, SnapshotBytes};
use crate::types::{NodeId, NodeInfo, TypeConfig, Vote};

/// The least time an append (or heartbeat) may take before its peer counts as unreachable.
pub const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_millis(150);

/// Creates one [`PeerNetwork`] per replication target; all share one [`Transport`].
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Arc<Transport>,
}

impl NetworkFactory {
    /// A factory over `transport`.
    pub fn new(transport: Arc<Transport>) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        PeerNetwork { transport: self.transport.clone(), target, addr: node.raft_addr.clone() }
    }
}

/// The Raft RPC client for one peer.
pub struct PeerNetwork {
    transport: Arc<Transport>,
    target: NodeId,
    addr: String,
}

impl PeerNetwork {
    async fn call(&self, request: RaftRequest, timeout: Duration) -> Result<RaftResponse, TransportError> {
        let response = self.transport.call(self.target, &self.addr, &request, timeout).await?;
        if let RaftResponse::Error { reason } = response {
            return Err(TransportError::Remote { peer: self.target, reason });
        }
        Ok(response)
    }

    fn unexpected(&self, response: RaftResponse) -> TransportError {
        TransportError::Protocol { peer: self.target, reason: format!("unexpected response {response:?}") }
    }
}

fn rpc_error(error: TransportError) -> RPCError<TypeConfig> {
    match error {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
        other => RPCError::Network(NetworkError::new(&other)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft gives an append a heartbeat's budget (37 ms with vigil's timings). A slow
        // answer under load is not a lost peer, but a timeout counts as one and sends the
        // replication into a 200 ms backoff: commits then wait for it, and leases with them.
        let timeout = option.soft_ttl().max(APPEND_TIMEOUT_FLOOR);
        match self.call(RaftRequest::AppendEntries(rpc), timeout).await.map_err(rpc_error)? {
            RaftResponse::AppendEntries(response) => Ok(response),
            other => Err(rpc_error(self.unexpected(other))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::Vote(rpc), option.soft_ttl()).await.map_err(rpc_error)? {
            RaftResponse::Vote(response) => Ok(response),
            other => Err(rpc_error(self.unexpected(other))),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(RaftRequest::PreVote(rpc), option.soft_ttl()).await.map_err(rpc_error)? {
            RaftResponse::Vote(response) => Ok(response),
            other => Err(rpc_error(self.unexpected(other))),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request =
            RaftRequest::InstallSnapshot { vote, meta: snapshot.meta, data: SnapshotBytes(snapshot.snapshot) };
        let call = self.call(request, option.hard_ttl());
        let response = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            response = call => response,
        };
        match response {
            Ok(RaftResponse::InstallSnapshot(response)) => Ok(response),
            Ok(other) => Err(StreamingError::Network(NetworkError::new(&self.unexpected(other)))),
            Err(error @ TransportError::Unreachable { .. }) => {
                Err(StreamingError::Unreachable(Unreachable::new(&error)))
            }
            Err(error) => Err(StreamingError::Network(NetworkError::new(&error))),
        }
    }
}
