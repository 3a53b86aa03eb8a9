//! Three Raft nodes in one process over real QUIC on loopback, with real certificates.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use openraft::raft::VoteRequest;
use tokio_util::sync::CancellationToken;
use vigil_consensus::authority::{OperatorClaim, Role};
use vigil_consensus::error::TransportError;
use vigil_consensus::node::{NodeSetup, RaftNode, RaftSettings};
use vigil_consensus::pki::CertificateAuthority;
use vigil_consensus::tls::{Identity, TlsPaths};
use vigil_consensus::transport::client::Transport;
use vigil_consensus::transport::rpc::Forwarded;
use vigil_consensus::transport::rpc::{LeaderRequest, LeaderResponse, RaftRequest, RaftResponse};
use vigil_consensus::transport::signed::SignedRequest;
use vigil_consensus::transport::{endpoint, frame};
use vigil_consensus::types::Vote;
use vigil_consensus::{Command, EventKind, NodeId, NodeInfo, SubmitError};

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

fn note(proposer: NodeId, text: &str) -> Command {
    Command::RecordEvent { at_unix_ms: 1, proposer, kind: EventKind::Note { author: "t".into(), text: text.into() } }
}

fn admin(name: &str) -> Option<OperatorClaim> {
    Some(OperatorClaim { name: name.to_string(), role: Role::Admin })
}

/// A write an operator asked a follower for is forwarded to the leader, committed, and
/// applied on every node; the same write with no operator behind it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_write_is_forwarded_and_applied_everywhere() {
    let lab = start_three().await;
    let leader = wait_for_leader(&lab).await;
    let follower = lab.nodes.iter().find(|n| n.cluster.node_id != leader).unwrap();
    let id = follower.cluster.node_id;
    let alone = follower.cluster.submit(LeaderRequest::Write { command: note(id, "on my own") }).await;
    let Err(SubmitError::Refused(reason)) = alone else { panic!("a node's own note was not refused: {alone:?}") };
    assert!(reason.contains("an admin operator must ask"), "{reason}");
    let viewer = Some(OperatorClaim { name: "t".into(), role: Role::Viewer });
    let as_viewer = follower.cluster.submit_as(LeaderRequest::Write { command: note(id, "hi") }, viewer).await;
    let Err(SubmitError::Refused(reason)) = as_viewer else { panic!("a viewer's note was taken: {as_viewer:?}") };
    assert!(reason.contains("changes need the admin role"), "{reason}");
    let someone_else = follower.cluster.submit_as(LeaderRequest::Write { command: note(id, "hi") }, admin("u")).await;
    let Err(SubmitError::Refused(reason)) = someone_else else { panic!("a borrowed author: {someone_else:?}") };
    assert!(reason.contains("names \"t\" as its author"), "{reason}");

    let response = follower.cluster.submit_as(LeaderRequest::Write { command: note(id, "hello") }, admin("t")).await;
    let LeaderResponse::Done { log_index, .. } = response.unwrap() else { panic!("not done") };
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

fn renew(holder: NodeId) -> LeaderRequest {
    LeaderRequest::Write { command: Command::RenewLease { group: "g".into(), member: "m".into(), holder, epoch: 1 } }
}

fn forwarded(request: LeaderRequest) -> RaftRequest {
    RaftRequest::Forward(Forwarded { request, operator: None })
}

async fn refusal_of(identity: &Identity, to: NodeId, lab: &Lab, request: RaftRequest) -> String {
    let response = call_as(identity, "test", to, &lab.members[&to].raft_addr, request).await.unwrap();
    match response {
        RaftResponse::Forward(LeaderResponse::Failed { reason }) => reason,
        other => panic!("not refused: {other:?}"),
    }
}

/// A node forwarding to the leader speaks for itself only: its own lease, never another
/// node's, and never a decision that only a leader takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_may_forward_only_what_it_may_say_for_itself() {
    let lab = start_three().await;
    let leader = wait_for_leader(&lab).await;
    let other = (1..=3).find(|id| *id != leader).unwrap();
    let victim = (1..=3).find(|id| *id != leader && *id != other).unwrap();
    let (_dir, identity) = node_identity_from_lab_ca(&lab, other);

    let release = LeaderRequest::Write {
        command: Command::ReleaseLease { group: "g".into(), member: "m".into(), holder: victim, reason: "x".into() },
    };
    let reason = refusal_of(&identity, leader, &lab, forwarded(release)).await;
    assert!(reason.contains(&format!("naming node {victim} as its lease holder")), "{reason}");

    let begin = LeaderRequest::Write {
        command: Command::BeginFailover {
            group: "g".into(),
            kind: vigil_consensus::group::FailoverKind::Automatic,
            reason: "forged".into(),
            old_primary: Some("m".into()),
            candidate: "r".into(),
            plan: Vec::new(),
            detected_at_ms: None,
            decided_at_ms: 1,
            old_primary_lsn: None,
            candidate_lsn: None,
            proposer: other,
        },
    };
    let reason = refusal_of(&identity, leader, &lab, forwarded(begin)).await;
    assert!(reason.contains("only the leader decides it"), "{reason}");

    let remove = LeaderRequest::RemoveMember { id: victim };
    let reason = refusal_of(&identity, leader, &lab, forwarded(remove)).await;
    assert!(reason.contains("an admin operator must ask"), "{reason}");
    assert_eq!(lab.nodes[0].cluster.state().nodes().len(), 3, "nobody was removed");

    // Its own renewal is taken (the state machine answers for the unknown group).
    let own = call_as(&identity, "test", leader, &lab.members[&leader].raft_addr, forwarded(renew(other))).await;
    assert!(matches!(own, Ok(RaftResponse::Forward(LeaderResponse::Done { .. }))), "{own:?}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A request relayed through another voter keeps its origin: signed by the node it comes
/// from, it commits; signed by one node for another's lease, or altered on the way, it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_request_is_judged_by_the_node_that_signed_it() {
    let lab = start_three().await;
    let leader = wait_for_leader(&lab).await;
    let origin = (1..=3).find(|id| *id != leader).unwrap();
    let carrier = (1..=3).find(|id| *id != leader && *id != origin).unwrap();
    let (_dir, identity) = node_identity_from_lab_ca(&lab, origin);
    let now = vigil_consensus::cluster::unix_millis_now();

    let signed = SignedRequest::sign(&identity, "test", origin, &renew(origin), now).unwrap();
    let relayed = call_as(&identity, "test", carrier, &lab.members[&carrier].raft_addr, RaftRequest::Relay(signed))
        .await
        .unwrap();
    assert!(matches!(relayed, RaftResponse::Forward(LeaderResponse::Done { .. })), "{relayed:?}");

    let for_another = SignedRequest::sign(&identity, "test", origin, &renew(carrier), now).unwrap();
    let reason = refusal_of(&identity, carrier, &lab, RaftRequest::Relay(for_another)).await;
    assert!(reason.contains(&format!("naming node {carrier} as its lease holder")), "{reason}");

    let mut altered = SignedRequest::sign(&identity, "test", origin, &renew(origin), now).unwrap();
    altered.body = altered.body.replace("\"epoch\":1", "\"epoch\":2");
    let reason = refusal_of(&identity, carrier, &lab, RaftRequest::Relay(altered)).await;
    assert!(reason.contains(&format!("the signature is not node {origin}'s")), "{reason}");

    let stale = SignedRequest::sign(&identity, "test", origin, &renew(origin), now - 120_000).unwrap();
    let reason = refusal_of(&identity, carrier, &lab, RaftRequest::Relay(stale)).await;
    assert!(reason.contains("away from this node's clock"), "{reason}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// Once a node is removed, its certificate is refused on the Raft port, and its id cannot
/// be given to a new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_refused_and_its_id_never_reused() {
    let lab = start_three().await;
    let leader = wait_for_leader(&lab).await;
    let gone = (1..=3).find(|id| *id != leader).unwrap();
    let leader_node = lab.nodes.iter().find(|n| n.cluster.node_id == leader).unwrap();
    let removed = leader_node.cluster.execute_as_leader(LeaderRequest::RemoveMember { id: gone }).await;
    assert!(matches!(removed, LeaderResponse::Done { .. }), "{removed:?}");
    assert!(leader_node.cluster.state().removed.contains(&gone));

    let (_dir, identity) = node_identity_from_lab_ca(&lab, gone);
    let hello = RaftRequest::Hello { cluster: "test".into() };
    let error = call_as(&identity, "test", leader, &lab.members[&leader].raft_addr, hello).await.unwrap_err();
    assert!(error.to_string().contains(&format!("node {gone} was removed")), "{error}");

    let again = LeaderRequest::AddMember { id: gone, node: lab.members[&gone].clone(), learner_only: true };
    let LeaderResponse::Failed { reason } = leader_node.cluster.execute_as_leader(again).await else {
        panic!("a removed id was given again")
    };
    assert!(reason.contains("ids are never reused"), "{reason}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}

/// A message over the frame limit is reported as too large, not as an unreachable peer: it
/// would never get through, and retrying it as if the peer were down hides why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_frame_limit_is_reported_as_too_large() {
    let lab = start_three().await;
    let leader = wait_for_leader(&lab).await;
    let (_dir, identity) = node_identity_from_lab_ca(&lab, 9);
    let text = "x".repeat(vigil_consensus::transport::frame::MAX_FRAME_BYTES);
    let huge = forwarded(LeaderRequest::Write { command: note(9, &text) });
    let error = call_as(&identity, "test", leader, &lab.members[&leader].raft_addr, huge).await.unwrap_err();
    assert!(matches!(error, TransportError::TooLarge { .. }), "{error}");
    assert!(error.to_string().contains("will never get through"), "{error}");
    for node in lab.nodes {
        node.shutdown(Duration::from_secs(2)).await;
    }
}
