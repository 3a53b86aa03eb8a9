//! Three Raft nodes in one process over real QUIC on loopback, with real certificates.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use openraft::raft::VoteRequest;
use tokio_util::sync::CancellationToken;
use vigil_consensus::error::TransportError;
use vigil_consensus::node::{NodeSetup, RaftNode, RaftSettings};
use vigil_consensus::pki::CertificateAuthority;
use vigil_consensus::tls::{Identity, TlsPaths};
use vigil_consensus::transport::client::Transport;
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse, RaftRequest, RaftResponse};
use vigil_consensus::transport::{endpoint, frame};
use vigil_consensus::types::Vote;
use vigil_consensus::{Command, EventKind, NodeId, NodeInfo};

fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn write_identity(
    dir: &Path,
    name: &str,
    ca: &CertificateAuthority,
    cert: &vigil_consensus::pki::IssuedCertificate,
) -> TlsPaths {
    let paths = TlsPaths {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&paths.ca, &ca.certificate().cert_pem).unwrap();
    std::fs::write(&paths.cert, &cert.cert_pem).unwrap();
    std::fs::write(&paths.key, &cert.key_pem).unwrap();
    paths
}

struct Lab {
    _dir: tempfile::TempDir,
    nodes: Vec<RaftNode>,
    ca_dir: std::path::PathBuf,
    members: BTreeMap<NodeId, NodeInfo>,
}

async fn start_three() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test").unwrap();
    let members: BTreeMap<NodeId, NodeInfo> = (1..=3)
        .map(|id| {
            let info = NodeInfo {
                name: format!("n{id}"),
                datacenter: format!("dc{id}"),
                raft_addr: free_udp_addr().to_string(),
                api_addr: "127.0.0.1:1".to_string(),
            };
            (id, info)
        })
        .collect();
    let mut nodes = Vec::new();
    for (id, info) in &members {
        let paths = write_identity(dir.path(), &format!("node{id}"), &ca, &ca.issue_node(*id, &[]).unwrap());
        let setup = NodeSetup {
            cluster_name: "test".to_string(),
            id: *id,
            info: info.clone(),
            bind_addr: info.raft_addr.parse().unwrap(),
            data_dir: dir.path().join(format!("data{id}")),
            identity: Identity::load(&paths).unwrap(),
            raft: RaftSettings::default(),
            initial_members: members.clone(),
        };
        nodes.push(RaftNode::start(setup, CancellationToken::new()).await.unwrap());
    }
    let ca_dir = dir.path().to_path_buf();
    // Keep the CA for tests that issue more certificates.
    std::fs::write(dir.path().join("ca.key"), &ca.certificate().key_pem).unwrap();
    Lab { _dir: dir, nodes, ca_dir, members }
}

async fn wait_for_leader(lab: &Lab) -> NodeId {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<Option<NodeId>> = lab.nodes.iter().map(|n| n.cluster.metrics().current_leader).collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|l| *l == Some(*leader))
        {
            return *leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "no agreed leader within 10 s: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn note(text: &str) -> Command {
    Command::RecordEvent { at_unix_ms: 1, proposer: 0, kind: EventKind::Note { author: "t".into(), text: text.into() } }
}

/// A write submitted on a follower is forwarded to the leader, committed, and applied on
/// every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_write_is_forwarded_and_applied_everywhere() {
    let lab = start_three().await;
    let leader = wait_for_leader(&lab).await;
    let follower = lab.nodes.iter().find(|n| n.cluster.node_id != leader).unwrap();
    let response = follower.cluster.submit(LeaderRequest::Write { command: note("hello") }).await.unwrap();
    let LeaderResponse::Done { log_index, .. } = response else { panic!("not done: {response:?}") };
    for node in &lab.nodes {
        node.cluster.wait_applied(log_index, Duration::from_secs(5)).await.unwrap();
        let state = node.cluster.state();
        assert!(state.history.iter().any(|e| matches!(&e.kind, EventKind::Note { text, .. } if text == "hello")));
    }
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A certificate for node `id` from the lab's own CA (a node the cluster never added), kept
/// in a directory that lives as long as the returned guard.
fn node_identity_from_lab_ca(lab: &Lab, id: NodeId) -> (tempfile::TempDir, Identity) {
    let ca = CertificateAuthority::load(
        &std::fs::read_to_string(lab.ca_dir.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(lab.ca_dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = write_identity(dir.path(), &format!("node{id}"), &ca, &ca.issue_node(id, &[]).unwrap());
    let identity = Identity::load(&paths).unwrap();
    (dir, identity)
}

async fn call_as(
    identity: &Identity,
    cluster: &str,
    peer: NodeId,
    addr: &str,
    request: RaftRequest,
) -> Result<RaftResponse, TransportError> {
    let (endpoint, client_config) = endpoint::bind(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let transport = Transport::new(endpoint, client_config, cluster.to_string());
    transport.call(peer, addr, &request, Duration::from_secs(3)).await
}

/// A node whose certificate comes from another CA cannot talk to the cluster, and the
/// error says the certificate was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_certificate_is_refused() {
    let lab = start_three().await;
    let foreign_ca = CertificateAuthority::generate("other").unwrap();
    let foreign_dir = tempfile::tempdir().unwrap();
    let paths = write_identity(foreign_dir.path(), "node4", &foreign_ca, &foreign_ca.issue_node(4, &[]).unwrap());
    let identity = Identity::load(&paths).unwrap();
    let error =
        call_as(&identity, "test", 1, &lab.members[&1].raft_addr, RaftRequest::Hello { cluster: "test".into() })
            .await
            .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("not signed by the cluster CA"), "unhelpful error: {text}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A node of the cluster that claims another node's identity in a vote is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_claiming_another_identity_is_refused() {
    let lab = start_three().await;
    let (_dir, identity) = node_identity_from_lab_ca(&lab, 9);
    let forged = VoteRequest::new(Vote::new(99, 2), None);
    let response = call_as(&identity, "test", 1, &lab.members[&1].raft_addr, RaftRequest::Vote(forged)).await.unwrap();
    let RaftResponse::Error { reason } = response else { panic!("forged vote was not refused: {response:?}") };
    assert!(reason.contains("certificate names node 9"), "{reason}");
    // The forged vote changed nothing: the cluster still has its leader at a low term.
    let term = lab.nodes[0].cluster.metrics().current_term;
    assert!(term < 99, "term jumped to {term}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A node of another cluster (same CA, other cluster name) is refused at hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_of_another_cluster_is_refused() {
    let lab = start_three().await;
    let (_dir, identity) = node_identity_from_lab_ca(&lab, 5);
    let error = call_as(
        &identity,
        "elsewhere",
        1,
        &lab.members[&1].raft_addr,
        RaftRequest::Hello { cluster: "elsewhere".into() },
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("belongs to cluster \"test\""), "{error}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A connection that skips the hello gets no answer but a refusal, and is closed: with a
/// certificate of the cluster's CA, a node of another cluster (or a tool) that never says
/// which cluster it belongs to reaches nothing of Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_before_the_hello_is_refused_and_the_connection_closed() {
    let lab = start_three().await;
    let (_dir, identity) = node_identity_from_lab_ca(&lab, 6);
    let (endpoint, client_config) = endpoint::bind(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = lab.members[&1].raft_addr.parse().unwrap();
    let connection = endpoint.connect_with(client_config, addr, "node-1.vigil").unwrap().await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    frame::write_frame(&mut send, &RaftRequest::Ping).await.unwrap();
    let answer: RaftResponse = frame::read_frame(&mut recv).await.unwrap();
    let RaftResponse::Error { reason } = answer else { panic!("answered before a hello: {answer:?}") };
    assert!(reason.contains("no hello"), "{reason}");
    let closed = tokio::time::timeout(Duration::from_secs(3), connection.closed()).await.expect("connection closed");
    assert!(closed.to_string().contains("no hello from this cluster"), "{closed}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}
