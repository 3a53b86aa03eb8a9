//! Assembles one Raft node: storage, transport, openraft, and the server for peers.
//!
//! The daemon and the in-process tests start nodes the same way, through [`RaftNode::start`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{Cluster, Raft};
use crate::error::{StoreError, TransportError};
use crate::log_store::LogStore;
use crate::state::EventKind;
use crate::state_machine::StateMachineStore;
use crate::tls::Identity;
use crate::transport::client::Transport;
use crate::transport::network::NetworkFactory;
use crate::transport::{endpoint, rpc::LeaderRequest, server};
use crate::types::{NodeId, NodeInfo};

/// Raft timing and log settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftSettings {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many log entries; older entries are then purged.
    pub snapshot_after_entries: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            // Elections must finish well within a primary's lease (1.5 s by default, renewed
            // every quarter), or a primary would be fenced whenever the Raft leader dies. A
            // follower does not even ask for pre-votes before its leader lease (the longest
            // election timeout) has run out, so both followers of a dead leader start at that
            // same moment, often split, and elect only on the second, randomised round: about
            // three times the longest timeout in all, under a second with these.
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            snapshot_after_entries: 5_000,
        }
    }
}

/// Everything needed to start a node.
#[derive(Clone, Debug)]
pub struct NodeSetup {
    /// The cluster's name; peers of another cluster are refused.
    pub cluster_name: String,
    /// This node's id.
    pub id: NodeId,
    /// This node's description, as the cluster will know it.
    pub info: NodeInfo,
    /// The address the QUIC endpoint binds.
    pub bind_addr: SocketAddr,
    /// Where the log and snapshots live.
    pub data_dir: PathBuf,
    /// This node's certificate, key and the cluster CA.
    pub identity: Identity,
    /// Raft timings.
    pub raft: RaftSettings,
    /// The voters the cluster starts with, if this node may bootstrap it; empty for a node
    /// that waits to be added by `members add`.
    pub initial_members: BTreeMap<NodeId, NodeInfo>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be used.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log or state machine could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// openraft refused the configuration or failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// A running Raft node.
pub struct RaftNode {
    /// The handle the rest of the node uses.
    pub cluster: Cluster,
    endpoint: quinn::Endpoint,
    cancel: CancellationToken,
    server: JoinHandle<()>,
}

/// The file name of the Raft log inside the data dir.
pub const LOG_FILE: &str = "raft-log.redb";
/// The directory of snapshots inside the data dir.
pub const SNAPSHOT_DIR: &str = "snapshots";

impl RaftNode {
    /// Opens the node's storage, binds its endpoint, starts openraft and, on a fresh data
    /// dir with initial members, bootstraps the cluster.
    pub async fn start(setup: NodeSetup, cancel: CancellationToken) -> Result<Self, StartError> {
        // Bind first: a port in use must fail start-up before anything touches the data dir.
        let (endpoint, client_config) = endpoint::bind(&setup.identity, setup.bind_addr)?;
        // The data dir holds the cluster's state, history and secrets-bearing spec: the
        // owner's only, also when it existed before with wider modes.
        std::fs::create_dir_all(&setup.data_dir)
            .and_then(|()| std::fs::set_permissions(&setup.data_dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|source| StartError::DataDir { path: setup.data_dir.clone(), source })?;
        let log_store = LogStore::open(&setup.data_dir.join(LOG_FILE))?;
        let fresh = log_store.is_empty()?;
        let state_machine = StateMachineStore::open(&setup.data_dir.join(SNAPSHOT_DIR))?;
        let state = state_machine.shared_state();

        let transport = Arc::new(Transport::new(endpoint.clone(), client_config, setup.cluster_name.clone()));

        let config = raft_config(&setup.cluster_name, &setup.raft)?;
        let raft = Raft::new(setup.id, config, NetworkFactory::new(transport.clone()), log_store, state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let cluster = Cluster {
            raft,
            state,
            transport,
            identity: Arc::new(setup.identity.clone()),
            cluster_name: setup.cluster_name.as_str().into(),
            node_id: setup.id,
        };
        let server = tokio::spawn(server::serve(
            endpoint.clone(),
            cluster.clone(),
            setup.cluster_name.clone(),
            cancel.child_token(),
        ));

        tokio::spawn(monitor_peers(cluster.clone(), cancel.child_token()));

        if fresh && !setup.initial_members.is_empty() {
            bootstrap(&cluster, &setup.initial_members).await?;
        } else if fresh {
            info!("fresh data dir and no initial members: waiting to be added with `vigil members add`");
        } else {
            info!("restarting from the log in {}", setup.data_dir.display());
        }
        Ok(Self { cluster, endpoint, cancel, server })
    }

    /// The QUIC address the node listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops openraft and the transport. Waits at most `grace` for openraft to stop.
    pub async fn shutdown(self, grace: Duration) {
        self.cancel.cancel();
        match tokio::time::timeout(grace, self.cluster.raft.shutdown()).await {
            Ok(Ok(())) => info!("raft stopped"),
            Ok(Err(error)) => warn!(%error, "raft stopped with an error"),
            Err(_) => warn!(grace_ms = grace.as_millis() as u64, "raft did not stop within the grace period"),
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        let _ = tokio::time::timeout(grace, self.server).await;
    }
}

/// How often every node pings every other member, so each knows whom it can reach.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Pings every other member each [`PING_INTERVAL`]. Followers send no Raft traffic to each
/// other, so without this a follower could not tell which of its peers are reachable.
async fn monitor_peers(cluster: Cluster, cancel: CancellationToken) {
    let mut ticker = tokio::time::interval(PING_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let peers: Vec<(NodeId, NodeInfo)> = {
            let state = cluster.state.read().expect("state lock poisoned");
            state.nodes().into_iter().filter(|(id, _)| *id != cluster.node_id).collect()
        };
        let pings = peers.iter().map(|(id, info)| {
            cluster.transport.call(*id, &info.raft_addr, &crate::transport::rpc::RaftRequest::Ping, PING_INTERVAL)
        });
        // Failures are recorded in the peer links by the transport; nothing else to do here.
        let _ = futures_util::future::join_all(pings).await;
    }
}

fn raft_config(cluster_name: &str, settings: &RaftSettings) -> Result<Arc<Config>, StartError> {
    let millis = |duration: Duration| duration.as_millis() as u64;
    let config = Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: millis(settings.heartbeat_interval),
        election_timeout_min: millis(settings.election_timeout.0),
        election_timeout_max: millis(settings.election_timeout.1),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_after_entries),
        max_in_snapshot_log_to_keep: 1_000,
        // A node cut off from the others must not raise the term and depose a healthy leader
        // when it comes back: across datacenters that would cause needless elections.
        enable_pre_vote: Some(true),
        ..Config::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| StartError::Raft(e.to_string()))?))
}

/// Initializes the cluster with `members` as voters. Every initial member does this on its
/// first start with the same members; openraft accepts the first and answers the others
/// that the cluster is already initialized, which is fine.
async fn bootstrap(cluster: &Cluster, members: &BTreeMap<NodeId, NodeInfo>) -> Result<(), StartError> {
    match cluster.raft.initialize(members.clone()).await {
        Ok(()) => {
            info!(voters = ?members.keys().collect::<Vec<_>>(), "bootstrapped the cluster");
            let voters: BTreeSet<NodeId> = members.keys().copied().collect();
            // Every initial member bootstraps; one of them writes the history event.
            if voters.first() != Some(&cluster.node_id) {
                return Ok(());
            }
            let cluster = cluster.clone();
            // Record the bootstrap once a leader exists; whichever node bootstrapped first
            // may not be the leader, so this goes through the usual leader forwarding.
            tokio::spawn(async move {
                let command = cluster.event_command(EventKind::ClusterBootstrapped { voters });
                for _ in 0..50 {
                    if cluster.submit(LeaderRequest::Write { command: command.clone() }).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                warn!("could not record the bootstrap in the history");
            });
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            info!("cluster already initialized");
            Ok(())
        }
        Err(error) => Err(StartError::Raft(format!("bootstrap failed: {error}"))),
    }
}
