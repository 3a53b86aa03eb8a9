//! The calling side of the transport: one reused QUIC connection per peer, a stream per RPC.
//!
//! A connection counts as usable only after the peer answered `Hello`: with TLS 1.3 a
//! client whose certificate the server refused still sees its handshake succeed, and only
//! the first stream fails. A failed connect backs off exponentially per peer, so a dead
//! peer costs one attempt per back-off period rather than one per heartbeat.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::TransportError;
use crate::tls::server_name_of_node;
use crate::transport::frame::{FrameError, read_frame, write_frame};
use crate::transport::rpc::{RaftRequest, RaftResponse};
use crate::types::NodeId;

/// The shortest wait before reconnecting to a peer that failed.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait before reconnecting to a peer that keeps failing.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What this node knows of its link to one peer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerLink {
    /// Whether a verified connection is open now.
    pub connected: bool,
    /// When the peer last answered an RPC.
    pub last_contact: Option<Instant>,
    /// QUIC's smoothed round-trip time estimate of the open connection.
    pub rtt: Option<Duration>,
    /// The last failure, in words, cleared by the next success.
    pub last_error: Option<String>,
}

/// Links to every peer this node has called, by node id.
pub type PeerLinks = Arc<Mutex<BTreeMap<NodeId, PeerLink>>>;

struct PeerConnection {
    connection: Option<quinn::Connection>,
    next_attempt: Option<Instant>,
    backoff: Duration,
    /// Why the last connect failed; repeated while backing off, so the reason stays visible.
    last_failure: Option<String>,
}

/// The outgoing half of the Raft transport, shared by every Raft network client.
pub struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cluster: String,
    connections: Mutex<BTreeMap<NodeId, Arc<tokio::sync::Mutex<PeerConnection>>>>,
    links: PeerLinks,
}

impl Transport {
    /// A transport that connects from `endpoint` with `client_config`, as a node of `cluster`.
    pub fn new(endpoint: quinn::Endpoint, client_config: quinn::ClientConfig, cluster: String) -> Self {
        Self { endpoint, client_config, cluster, connections: Mutex::new(BTreeMap::new()), links: PeerLinks::default() }
    }

    /// The shared table of peer links, for status and metrics.
    pub fn links(&self) -> PeerLinks {
        self.links.clone()
    }

    /// Sends `request` to `peer` at `addr` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        peer: NodeId,
        addr: &str,
        request: &RaftRequest,
        timeout: Duration,
    ) -> Result<RaftResponse, TransportError> {
        let outcome = tokio::time::timeout(timeout, self.call_inner(peer, addr, request)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(TransportError::Unreachable {
                peer,
                reason: format!("no answer within {} ms", timeout.as_millis()),
            }),
        };
        match &result {
            Ok(_) => self.record_success(peer).await,
            Err(error) => self.record_failure(peer, error).await,
        }
        result
    }

    async fn call_inner(
        &self,
        peer: NodeId,
        addr: &str,
        request: &RaftRequest,
    ) -> Result<RaftResponse, TransportError> {
        let connection = self.connection(peer, addr).await?;
        let unreachable = |reason: String| TransportError::Unreachable { peer, reason };
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|e| unreachable(describe_connection_error(&e)))?;
        let failed = |error: FrameError| match error {
            FrameError::TooLarge(bytes) => TransportError::TooLarge { peer, bytes },
            FrameError::Decode(error) => TransportError::Protocol { peer, reason: error.to_string() },
            FrameError::Stream(reason) => unreachable(reason),
        };
        write_frame(&mut send, request).await.map_err(failed)?;
        read_frame(&mut recv).await.map_err(failed)
    }

    /// The open connection to `peer`, connecting (and saying hello) if there is none.
    ///
    /// The connect runs in a task of its own that holds the peer's slot: an RPC whose short
    /// budget runs out stops waiting, but the handshake goes on and the next RPC finds the
    /// connection ready. Cancelling it with every heartbeat's budget would never let a
    /// handshake over a slow or lossy link complete.
    async fn connection(&self, peer: NodeId, addr: &str) -> Result<quinn::Connection, TransportError> {
        let slot = {
            let mut connections = self.connections.lock().expect("connections lock poisoned");
            connections
                .entry(peer)
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(PeerConnection {
                        connection: None,
                        next_attempt: None,
                        backoff: RECONNECT_BACKOFF_MIN,
                        last_failure: None,
                    }))
                })
                .clone()
        };
        let mut guard = slot.lock_owned().await;
        if let Some(connection) = &guard.connection {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
            guard.connection = None;
        }
        let now = Instant::now();
        if let Some(next_attempt) = guard.next_attempt
            && now < next_attempt
        {
            let last_failure = guard.last_failure.clone().unwrap_or_default();
            return Err(TransportError::Unreachable {
                peer,
                reason: format!("{last_failure} (next attempt in {} ms)", (next_attempt - now).as_millis()),
            });
        }
        let connector = Connector {
            endpoint: self.endpoint.clone(),
            client_config: self.client_config.clone(),
            cluster: self.cluster.clone(),
        };
        let addr = addr.to_string();
        let task = tokio::spawn(async move {
            let outcome = connector.connect(peer, &addr).await;
            match &outcome {
                Ok(connection) => {
                    if guard.last_failure.is_some() {
                        tracing::info!(peer, %addr, "connected again");
                    }
                    guard.connection = Some(connection.clone());
                    guard.next_attempt = None;
                    guard.backoff = RECONNECT_BACKOFF_MIN;
                    guard.last_failure = None;
                }
                Err(error) => {
                    guard.next_attempt = Some(Instant::now() + guard.backoff);
                    guard.backoff = (guard.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    let reason = match error {
                        TransportError::Unreachable { reason, .. }
                        | TransportError::Protocol { reason, .. }
                        | TransportError::Remote { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    // Logged once per distinct reason, not once per attempt.
                    if guard.last_failure.as_ref() != Some(&reason) {
                        tracing::warn!(peer, %addr, %reason, "cannot connect to peer");
                    }
                    guard.last_failure = Some(reason);
                }
            }
            outcome
        });
        task.await.map_err(|e| TransportError::Unreachable { peer, reason: format!("connect task failed: {e}") })?
    }

    async fn record_success(&self, peer: NodeId) {
        let rtt = self.open_connection(peer).await.map(|connection| connection.rtt());
        if let Some(rtt) = rtt {
            metrics::gauge!("vigil_peer_rtt_seconds", "peer" => peer.to_string()).set(rtt.as_secs_f64());
        }
        let mut links = self.links.lock().expect("links lock poisoned");
        let link = links.entry(peer).or_default();
        link.connected = true;
        link.last_contact = Some(Instant::now());
        link.rtt = rtt;
        link.last_error = None;
    }

    async fn record_failure(&self, peer: NodeId, error: &TransportError) {
        let kind = match error {
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::Protocol { .. } => "protocol",
            TransportError::TooLarge { .. } => "too_large",
            TransportError::Remote { .. } => "remote",
            TransportError::Tls(_) | TransportError::Bind { .. } => "local",
        };
        metrics::counter!("vigil_raft_rpc_errors_total", "peer" => peer.to_string(), "kind" => kind).increment(1);
        // The connection is kept: a timeout is often a lost packet QUIC retransmits, and a dead
        // peer is found by the idle timeout; `connection` replaces a connection once closed.
        let mut links = self.links.lock().expect("links lock poisoned");
        let link = links.entry(peer).or_default();
        link.connected = false;
        link.last_error = Some(error.to_string());
    }

    fn slot(&self, peer: NodeId) -> Option<Arc<tokio::sync::Mutex<PeerConnection>>> {
        self.connections.lock().expect("connections lock poisoned").get(&peer).cloned()
    }

    /// The open connection to `peer`, if any and if no connect holds its slot right now.
    async fn open_connection(&self, peer: NodeId) -> Option<quinn::Connection> {
        let slot = self.slot(peer)?;
        let slot = slot.try_lock().ok()?;
        slot.connection.clone()
    }
}

/// What a connect needs, owned, so it can run in a task of its own.
struct Connector {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    cluster: String,
}

impl Connector {
    async fn connect(&self, peer: NodeId, addr: &str) -> Result<quinn::Connection, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable { peer, reason };
        let socket_addr = resolve(addr).await.map_err(unreachable)?;
        let server_name = server_name_of_node(peer);
        let server_name = server_name.to_str();
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), socket_addr, &server_name)
            .map_err(|e| unreachable(format!("cannot connect to {addr}: {e}")))?;
        let connection = connecting.await.map_err(|e| unreachable(describe_connection_error(&e)))?;
        let hello = RaftRequest::Hello { cluster: self.cluster.clone() };
        let (mut send, mut recv) =
            connection.open_bi().await.map_err(|e| unreachable(describe_connection_error(&e)))?;
        write_frame(&mut send, &hello).await.map_err(|e| unreachable(e.to_string()))?;
        let answer: RaftResponse = read_frame(&mut recv).await.map_err(|_| {
            // The server closes the connection with its reason when it refuses us; prefer that.
            unreachable(match connection.close_reason() {
                Some(reason) => describe_connection_error(&reason),
                None => "connection lost during hello (our certificate may have been refused)".to_string(),
            })
        })?;
        match answer {
            RaftResponse::Hello { cluster, node_id } if cluster == self.cluster && node_id == peer => Ok(connection),
            RaftResponse::Hello { cluster, node_id } => Err(TransportError::Protocol {
                peer,
                reason: format!(
                    "{addr} is node {node_id} of cluster {cluster:?}, expected node {peer} of cluster {:?}",
                    self.cluster
                ),
            }),
            RaftResponse::Error { reason } => Err(TransportError::Remote { peer, reason }),
            other => Err(TransportError::Protocol { peer, reason: format!("unexpected answer to hello: {other:?}") }),
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(socket_addr) = addr.parse() {
        return Ok(socket_addr);
    }
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| format!("cannot resolve {addr}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{addr} resolves to no address"))
}

/// Words for a QUIC connection failure; a TLS refusal keeps the alert the peer sent.
pub fn describe_connection_error(error: &quinn::ConnectionError) -> String {
    match error {
        quinn::ConnectionError::TimedOut => "connection timed out (peer down or network cut)".to_string(),
        quinn::ConnectionError::ApplicationClosed(close) => {
            format!("peer closed the connection: {}", String::from_utf8_lossy(&close.reason))
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            format!("peer refused the connection: {close}")
        }
        other => {
            let text = other.to_string();
            // webpki says UnknownIssuer, or BadSignature when the foreign CA has the same name.
            if text.contains("UnknownIssuer") || text.contains("BadSignature") {
                format!("TLS handshake failed: certificate not signed by the cluster CA ({text})")
            } else {
                text
            }
        }
    }
}
