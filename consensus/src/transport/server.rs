//! The answering side of the transport: accepts peers' connections and hands their RPCs to
//! the local Raft node.
//!
//! A peer is known by its certificate alone. Every Raft message that names a sender (the
//! leader in `AppendEntries`, the candidate in `Vote`) must name the node the certificate
//! names; anything else is refused and logged with the reason. Nothing but a `Hello` naming
//! this node's cluster is answered on a connection before such a `Hello` was: a node of
//! another cluster that shares this cluster's CA never reaches Raft.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::vote::RaftLeaderId;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;
use crate::state_machine::Snapshot;
use crate::tls::node_id_of_certificate;
use crate::transport::client::describe_connection_error;
use crate::transport::frame::{read_frame, write_frame};
use crate::transport::rpc::{LeaderResponse, RaftRequest, RaftResponse};
use crate::types::{NodeId, Vote};

/// Accepts connections on `endpoint` until `cancel` fires.
pub async fn serve(endpoint: quinn::Endpoint, cluster: Cluster, cluster_name: String, cancel: CancellationToken) {
    let cluster_name: Arc<str> = cluster_name.into();
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let cluster = cluster.clone();
        let cluster_name = cluster_name.clone();
        let cancel = cancel.child_token();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    warn!(%remote, reason = %describe_connection_error(&error), "refused a raft connection");
                    return;
                }
            };
            serve_connection(connection, cluster, cluster_name, cancel).await;
        });
    }
    endpoint.close(0u32.into(), b"node shutting down");
}

fn certified_node_id(connection: &quinn::Connection) -> Option<NodeId> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_of_certificate(chain.first()?)
}

async fn serve_connection(
    connection: quinn::Connection,
    cluster: Cluster,
    cluster_name: Arc<str>,
    cancel: CancellationToken,
) {
    let remote = connection.remote_address();
    let Some(peer) = certified_node_id(&connection) else {
        warn!(%remote, "refused a raft connection: its certificate is from the cluster CA but names no node");
        connection.close(1u32.into(), b"certificate names no node");
        return;
    };
    debug!(%remote, peer, "raft connection accepted");
    let greeted = Arc::new(AtomicBool::new(false));
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = cancel.cancelled() => return,
            stream = connection.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(error) => {
                    debug!(peer, reason = %describe_connection_error(&error), "raft connection ended");
                    return;
                }
            },
        };
        let cluster = cluster.clone();
        let cluster_name = cluster_name.clone();
        let connection = connection.clone();
        let greeted = greeted.clone();
        tokio::spawn(async move {
            let request: RaftRequest = match read_frame(&mut recv).await {
                Ok(request) => request,
                Err(error) => {
                    warn!(peer, %error, "unreadable raft request");
                    return;
                }
            };
            let removed = cluster.state().removed.contains(&peer);
            let response = if removed {
                warn!(peer, "refused a raft request from a node that was removed from the cluster");
                metrics::counter!("vigil_raft_requests_refused_total", "reason" => "removed").increment(1);
                Handled::CloseAfter(RaftResponse::Error {
                    reason: format!("node {peer} was removed from the cluster: its certificate is no longer accepted"),
                })
            } else if matches!(request, RaftRequest::Hello { .. }) || greeted.load(Ordering::Acquire) {
                handle(request, peer, &cluster, &cluster_name, &greeted).await
            } else {
                warn!(peer, "refused a raft request sent before the connection's hello");
                metrics::counter!("vigil_raft_requests_refused_total", "reason" => "no_hello").increment(1);
                Handled::CloseAfter(RaftResponse::Error {
                    reason: "no hello on this connection yet: say which cluster it belongs to first".to_string(),
                })
            };
            let refused_hello = matches!(&response, Handled::CloseAfter(_));
            let response = response.into_response();
            if let Err(error) = write_frame(&mut send, &response).await {
                debug!(peer, %error, "could not answer a raft request");
            }
            if refused_hello {
                // Let the refusal reach the peer before the connection goes.
                let _ = send.stopped().await;
                connection.close(2u32.into(), b"no hello from this cluster");
            }
        });
    }
}

enum Handled {
    Answer(RaftResponse),
    CloseAfter(RaftResponse),
}

impl Handled {
    fn into_response(self) -> RaftResponse {
        match self {
            Handled::Answer(response) | Handled::CloseAfter(response) => response,
        }
    }
}

fn impersonation(peer: NodeId, vote: &Vote) -> Option<RaftResponse> {
    let claimed = *vote.leader_id.node_id();
    (claimed != peer).then(|| {
        warn!(peer, claimed, "refused a raft message: the sender claims another node's identity");
        RaftResponse::Error {
            reason: format!("message claims to come from node {claimed}, but the certificate names node {peer}"),
        }
    })
}

async fn handle(
    request: RaftRequest,
    peer: NodeId,
    cluster: &Cluster,
    cluster_name: &str,
    greeted: &AtomicBool,
) -> Handled {
    let raft = &cluster.raft;
    let failed = |error: &dyn std::fmt::Display| RaftResponse::Error { reason: error.to_string() };
    let response = match request {
        RaftRequest::Hello { cluster: theirs } if theirs == cluster_name => {
            greeted.store(true, Ordering::Release);
            info!(peer, "peer connected");
            RaftResponse::Hello { cluster: cluster_name.to_string(), node_id: cluster.node_id }
        }
        RaftRequest::Hello { cluster: theirs } => {
            warn!(peer, their_cluster = %theirs, "refused a peer of another cluster");
            metrics::counter!("vigil_raft_requests_refused_total", "reason" => "other_cluster").increment(1);
            return Handled::CloseAfter(RaftResponse::Error {
                reason: format!("node {} belongs to cluster {cluster_name:?}, not {theirs:?}", cluster.node_id),
            });
        }
        RaftRequest::Ping => RaftResponse::Pong,
        RaftRequest::AppendEntries(rpc) => match impersonation(peer, &rpc.vote) {
            Some(refusal) => refusal,
            None => raft.append_entries(rpc).await.map_or_else(|e| failed(&e), RaftResponse::AppendEntries),
        },
        RaftRequest::Vote(rpc) => match impersonation(peer, &rpc.vote) {
            Some(refusal) => refusal,
            None => raft.vote(rpc).await.map_or_else(|e| failed(&e), RaftResponse::Vote),
        },
        RaftRequest::PreVote(rpc) => match impersonation(peer, &rpc.vote) {
            Some(refusal) => refusal,
            None => raft.pre_vote(rpc).await.map_or_else(|e| failed(&e), RaftResponse::Vote),
        },
        RaftRequest::InstallSnapshot { vote, meta, data } => match impersonation(peer, &vote) {
            Some(refusal) => refusal,
            None => raft
                .install_full_snapshot(vote, Snapshot { meta, snapshot: data.0 })
                .await
                .map_or_else(|e| failed(&e), RaftResponse::InstallSnapshot),
        },
        RaftRequest::Forward(forwarded) => RaftResponse::Forward(cluster.execute_forwarded(peer, forwarded).await),
        RaftRequest::Relay(signed) => match cluster.relay(signed).await {
            Ok(response) => RaftResponse::Forward(response),
            // The leader's refusal travels back as the leader's answer, so the origin does
            // not try the next peer for an answer that will be the same.
            Err(crate::SubmitError::Refused(reason)) => RaftResponse::Forward(LeaderResponse::Failed { reason }),
            Err(error) => RaftResponse::Error { reason: error.to_string() },
        },
        RaftRequest::Relayed(signed) => RaftResponse::Forward(cluster.execute_relayed(signed).await),
    };
    Handled::Answer(response)
}
