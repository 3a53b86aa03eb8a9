//! Real `vigil` processes with real certificates: what each caller may do. A viewer reads
//! and changes nothing; an admin's change sent to a follower is recorded under the admin's
//! name; a node's certificate reads only; root on a node's host changes through the local
//! socket; a removed node's certificate is refused; a node that forwards what it may not say
//! for itself is refused and counted.

// These tests time real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::time::Duration;

use common::{TestCluster, vigil};
use serde_json::Value;
use vigil_consensus::tls::{Identity, TlsPaths};
use vigil_consensus::transport::client::Transport;
use vigil_consensus::transport::endpoint;
use vigil_consensus::transport::rpc::{Forwarded, LeaderRequest, LeaderResponse, RaftRequest, RaftResponse};
use vigil_consensus::{Command, NodeId};

const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(20);
const REFUSED: i32 = 6;

fn issue_operator(cluster: &TestCluster, name: &str, role: &str) {
    let dir = cluster.dir.path().join("certs");
    let output = vigil(&["certs", "issue", "--dir", dir.to_str().unwrap(), "--operator", name, "--role", role]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn history(cluster: &TestCluster, via: u64) -> Value {
    let output = cluster.cli(via, &["history", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn note_authors(cluster: &TestCluster, via: u64, text: &str) -> Vec<String> {
    history(cluster, via)["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["kind"]["kind"] == "note" && event["kind"]["text"] == text)
        .map(|event| event["kind"]["author"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn roles_decide_what_each_certificate_may_do() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    issue_operator(&cluster, "eve", "viewer");
    issue_operator(&cluster, "alice", "admin");

    // A viewer reads, and is told why it may not change anything.
    let status = cluster.cli_with_certificate("eve", &[follower], &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let pause = cluster.cli_with_certificate("eve", &[follower], &["note", "from eve"]);
    assert_eq!(pause.status.code(), Some(REFUSED), "{}", stderr(&pause));
    assert!(stderr(&pause).contains("eve (a viewer) may only read"), "{}", stderr(&pause));

    // A node's certificate cannot apply a spec through the API.
    let spec = cluster.dir.path().join("empty-spec.toml");
    std::fs::write(&spec, "").unwrap();
    let apply =
        cluster.cli_with_certificate(&format!("node{follower}"), &[follower], &["apply", "-f", spec.to_str().unwrap()]);
    assert_eq!(apply.status.code(), Some(REFUSED), "{}", stderr(&apply));
    assert!(stderr(&apply).contains(&format!("node {follower}'s certificate may only read")), "{}", stderr(&apply));

    // An admin's change sent to a follower is committed under the certificate's name,
    // whatever name the client claims.
    let note = cluster.cli_with_certificate("alice", &[follower], &["note", "--author", "mallory", "from alice"]);
    assert!(note.status.success(), "{}", stderr(&note));
    assert_eq!(note_authors(&cluster, leader, "from alice"), ["alice"]);

    // Root on a node's host changes through the local socket; the claimed name is kept
    // beside the host's.
    let local = cluster.cli(follower, &["note", "--author", "bob", "from the host"]);
    assert!(local.status.success(), "{}", stderr(&local));
    assert_eq!(note_authors(&cluster, leader, "from the host"), [format!("bob (root@n{follower})")]);
}

#[test]
fn a_removed_nodes_certificate_is_refused() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    let gone = (1..=3).find(|id| *id != leader).unwrap();
    let reads = cluster.cli_with_certificate(&format!("node{gone}"), &[leader], &["status"]);
    assert!(reads.status.success(), "a member's certificate reads: {}", stderr(&reads));

    let removed = cluster.cli_as_operator(&[leader], &["members", "remove", &gone.to_string()]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    cluster.wait_until("the removal applied on the leader", AGREEMENT_TIMEOUT, || {
        let refused = cluster.cli_with_certificate(&format!("node{gone}"), &[leader], &["status"]);
        refused.status.code() == Some(REFUSED) && stderr(&refused).contains(&format!("node {gone} was removed"))
    });
    let again = cluster.cli_as_operator(
        &[leader],
        &[
            "members",
            "add",
            &gone.to_string(),
            "127.0.0.1:9",
            "--api",
            "127.0.0.1:9",
            "--name",
            "again",
            "--datacenter",
            "dc9",
        ],
    );
    assert_eq!(again.status.code(), Some(REFUSED), "{}", stderr(&again));
    assert!(stderr(&again).contains("ids are never reused"), "{}", stderr(&again));
}

fn node_identity(cluster: &TestCluster, id: NodeId) -> Identity {
    let certs = cluster.dir.path().join("certs");
    Identity::load(&TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join(format!("node{id}.crt")),
        key: certs.join(format!("node{id}.key")),
    })
    .unwrap()
}

fn refused_count(cluster: &TestCluster, id: u64, reason: &str) -> u64 {
    let (code, metrics) = cluster.http_get(id, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    let series = format!("vigil_raft_requests_refused_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&series)).map_or(0, |count| count.trim().parse().unwrap())
}

/// With a member's own certificate, a node asks the leader to release another node's lease
/// and to begin a failover no operator asked for: both are refused and counted, and its
/// own renewal still goes through.
#[test]
fn a_node_speaking_for_another_is_refused_and_counted() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    let sender = (1..=3).find(|id| *id != leader).unwrap();
    let victim = (1..=3).find(|id| *id != leader && *id != sender).unwrap();
    let identity = node_identity(&cluster, sender);
    let leader_addr = format!("127.0.0.1:{}", cluster.nodes[&leader].raft_port);
    let before = refused_count(&cluster, leader, "not_allowed");

    let release = Command::ReleaseLease { group: "g".into(), member: "m".into(), holder: victim, reason: "x".into() };
    let begin = Command::BeginFailover {
        group: "g".into(),
        kind: vigil_consensus::group::FailoverKind::Automatic,
        reason: "nobody asked".into(),
        old_primary: Some("m".into()),
        candidate: "r".into(),
        plan: Vec::new(),
        detected_at_ms: None,
        decided_at_ms: 1,
        old_primary_lsn: None,
        candidate_lsn: None,
        proposer: sender,
    };
    let renew = Command::RenewLease { group: "g".into(), member: "m".into(), holder: sender, epoch: 1 };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answers: Vec<RaftResponse> = runtime.block_on(async {
        let (endpoint, client_config) = endpoint::bind(&identity, "127.0.0.1:0".parse().unwrap()).unwrap();
        let transport = Transport::new(endpoint, client_config, "test".to_string());
        let mut answers = Vec::new();
        for command in [release, begin, renew] {
            let request = RaftRequest::Forward(Forwarded { request: LeaderRequest::Write { command }, operator: None });
            answers.push(transport.call(leader, &leader_addr, &request, Duration::from_secs(5)).await.unwrap());
        }
        answers
    });
    let reason = |answer: &RaftResponse| match answer {
        RaftResponse::Forward(LeaderResponse::Failed { reason }) => reason.clone(),
        other => panic!("not refused: {other:?}"),
    };
    assert!(reason(&answers[0]).contains(&format!("naming node {victim} as its lease holder")), "{answers:?}");
    assert!(reason(&answers[1]).contains("only the leader decides it"), "{answers:?}");
    assert!(matches!(answers[2], RaftResponse::Forward(LeaderResponse::Done { .. })), "{answers:?}");
    assert_eq!(refused_count(&cluster, leader, "not_allowed"), before + 2);
    assert!(cluster.log_of(leader).contains("refused a request from another node"));
}

fn pg_spec(cluster: &TestCluster, password_file: &str, start_on: &str) -> std::path::PathBuf {
    let member = |n: u64| {
        let data = std::env::temp_dir().join(format!("vigil-allow-test/pg{n}"));
        let start = if format!("n{n}") == start_on { "start_command = 'true'\n" } else { "" };
        format!(
            "[[postgres.members]]\nname = \"pg{n}\"\nhost = \"127.0.0.1\"\nport = {}\nnode = \"n{n}\"\n\
             data_dir = \"{}\"\n{start}",
            9 + n,
            data.display()
        )
    };
    let replication = cluster.dir.path().join("replication.password");
    std::fs::write(&replication, "x").unwrap();
    let spec = format!(
        "[[postgres]]\nname = \"main\"\nuser = \"vigil\"\npassword = {{ file = \"{password_file}\" }}\n\
         replication_user = \"replicator\"\nreplication_password = {{ file = \"{}\" }}\n\
         maximum_lag_on_failover = 1024\n{}\n{}",
        replication.display(),
        member(1),
        member(2)
    );
    let path = cluster.dir.path().join(format!("spec-{start_on}.toml"));
    std::fs::write(&path, spec).unwrap();
    path
}

/// Node 1 allows the command `true`, node 2 does not: a spec that has node 2 run it is
/// refused through node 1, naming the field; the same command beside node 1 is taken. A
/// spec that would have the nodes read a node's TLS key as a password is refused too.
#[test]
fn a_spec_may_ask_each_node_only_for_what_it_allows() {
    let mut cluster = TestCluster::new(3);
    cluster.options.allow_extra = "commands = ['true']\n".to_string();
    let members = cluster.member_list();
    cluster.write_config(1, &members, false, "certs");
    cluster.options.allow_extra = String::new();
    cluster.start_all();
    cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    let password = cluster.dir.path().join("vigil.password");
    std::fs::write(&password, "x").unwrap();
    let password = password.display().to_string();

    let beside_n2 = pg_spec(&cluster, &password, "n2");
    let refused = cluster.cli(1, &["apply", "-f", beside_n2.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(REFUSED), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("postgres[0].members[1].start_command: node n2 does not allow the command \"true\""),
        "{}",
        stderr(&refused)
    );

    let key = cluster.dir.path().join("certs/node1.key");
    let steals_a_key = pg_spec(&cluster, key.to_str().unwrap(), "n1");
    let refused = cluster.cli(2, &["apply", "-f", steals_a_key.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(REFUSED), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("postgres[0].password.file: node n1 does not allow reading"),
        "{}",
        stderr(&refused)
    );

    let beside_n1 = pg_spec(&cluster, &password, "n1");
    let applied = cluster.cli(2, &["apply", "-f", beside_n1.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
}
