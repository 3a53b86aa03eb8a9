//! Real `vigil` processes on loopback: election, failover of the Raft leader, restart from
//! disk, full restart, membership changes, and refusal of foreign certificates.

// These tests time real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::TestCluster;

const AGREEMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Three processes elect one leader, and `vigil status --json` from every node agrees on
/// the leader and the term.
#[test]
fn three_nodes_elect_a_leader_that_every_node_reports() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, term) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    assert!((1..=3).contains(&leader));
    assert!(term >= 1);
    for id in 1..=3 {
        let status = cluster.status(id).expect("status answers");
        assert_eq!(status["cluster"], "test");
        assert_eq!(status["node"]["id"], id);
        let voters: BTreeSet<u64> = status["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|member| member["voter"] == true)
            .map(|member| member["id"].as_u64().unwrap())
            .collect();
        assert_eq!(voters, BTreeSet::from([1, 2, 3]), "node {id} sees other voters");
    }
    // The operator certificate works against any node, with a list of endpoints.
    let output = cluster.cli_as_operator(&[3, 1], &["status"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(&format!("leader    n{leader}")), "{table}");
}

/// Killing the leader with SIGKILL gets a new leader among the other two within the
/// election timeout (plus the time to notice), and its term is higher.
#[test]
fn killing_the_leader_elects_another() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, term) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let killed_at = Instant::now();
    cluster.kill(leader);
    // Until their election timeout runs out, the survivors still name the dead leader.
    let (new_leader, new_term) =
        cluster.wait_for_leader_where(&survivors, AGREEMENT_TIMEOUT, |candidate, _| candidate != leader);
    let elapsed = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(new_term > term, "term did not grow: {term} -> {new_term}");
    // election_timeout_max is 500 ms by default; the CLI polling adds a little. The
    // benchmark measures this precisely; here a loose bound only catches a broken election.
    assert!(elapsed < Duration::from_secs(5), "new leader took {elapsed:?}");
    eprintln!("new leader after {elapsed:?}");
}

/// A node killed with SIGKILL restarts from its own disk and catches up with what was
/// committed while it was down.
#[test]
fn killed_node_restarts_from_disk_and_catches_up() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    cluster.note(leader, "before the crash");
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(victim);
    for n in 0..20 {
        cluster.note(leader, &format!("while down {n}"));
    }
    let last_index = cluster.note(leader, "last");
    cluster.start(victim);
    cluster.wait_until("the restarted node to apply everything", AGREEMENT_TIMEOUT, || {
        cluster.status(victim).and_then(|s| s["applied_index"].as_u64()).is_some_and(|applied| applied >= last_index)
    });
    let notes = cluster.notes(victim);
    assert!(notes.contains(&"before the crash".to_string()));
    assert!(notes.contains(&"while down 19".to_string()));
    assert!(notes.contains(&"last".to_string()));
    assert!(cluster.log_of(victim).contains("restarting from the log"), "{}", cluster.log_of(victim));
}

/// Stopping all three nodes and starting them again keeps every committed entry.
#[test]
fn full_stop_and_restart_keeps_the_committed_history() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    let (leader, term) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    for n in 0..10 {
        cluster.note(leader, &format!("entry {n}"));
    }
    let before = cluster.notes(leader);
    for id in 1..=3 {
        cluster.stop(id);
    }
    cluster.start_all();
    // openraft restores a leader from its committed vote, so the term may stay the same.
    let (leader, new_term) = cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    assert!(new_term >= term);
    cluster.note(leader, "after the restart");
    for id in 1..=3 {
        cluster.wait_until("history to be replayed", AGREEMENT_TIMEOUT, || {
            let notes = cluster.notes(id);
            notes.len() == 11 && notes[..10] == before[..]
        });
    }
    assert_eq!(before.len(), 10);
}

/// A node whose certificates come from another CA never joins; the cluster reports it
/// unreachable with the reason, and the node's own log says why.
#[test]
fn node_with_a_foreign_ca_certificate_cannot_join() {
    let mut cluster = TestCluster::new(3);
    let foreign = cluster.dir.path().join("foreign");
    let output =
        common::vigil(&["certs", "init", "--out", foreign.to_str().unwrap(), "--nodes", "3", "--cluster", "test"]);
    assert!(output.status.success());
    cluster.write_config(3, &cluster.member_list(), false, "foreign");
    cluster.start_all();
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2], AGREEMENT_TIMEOUT);
    cluster.wait_until("the cluster to report node 3 refused", AGREEMENT_TIMEOUT, || {
        let Some(status) = cluster.status(leader) else { return false };
        let node3 = status["members"].as_array().unwrap().iter().find(|m| m["id"] == 3).cloned().unwrap();
        node3["reachable"] == false
            && node3["last_error"].as_str().is_some_and(|e| e.contains("not signed by the cluster CA"))
    });
    let node3_log = cluster.log_of(3);
    assert!(node3_log.contains("not signed by the cluster CA"), "node 3 log does not say why:\n{node3_log}");
    let leader_log = cluster.log_of(leader);
    assert!(leader_log.contains("refused a raft connection"), "leader log:\n{leader_log}");
    // Node 3 has no leader: it could not take part.
    let status3 = cluster.status(3).expect("node 3 answers its own API");
    assert!(status3["leader"].is_null(), "node 3 sees a leader: {status3}");
}

/// `members add` brings a new node in as a voter after it catches up; `members remove`
/// takes it out again. Both are recorded in the history.
#[test]
fn members_add_and_remove_change_the_voters() {
    let mut cluster = TestCluster::new(3);
    cluster.start_all();
    cluster.wait_for_agreed_leader(&[1, 2, 3], AGREEMENT_TIMEOUT);
    cluster.add_joining_node(4);
    cluster.start(4);
    cluster.add_member(2, 4);
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3, 4], AGREEMENT_TIMEOUT);
    let voters = |id: u64| -> BTreeSet<u64> {
        cluster.status(id).unwrap()["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["voter"] == true)
            .map(|m| m["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(voters(leader), BTreeSet::from([1, 2, 3, 4]));

    // Adding it again is refused, with a reason and the "refused" exit code.
    let raft = cluster.nodes[&4].raft_port;
    let again = cluster.cli(
        1,
        &[
            "members",
            "add",
            "4",
            &format!("127.0.0.1:{raft}"),
            "--api",
            "127.0.0.1:1",
            "--name",
            "n4",
            "--datacenter",
            "dc4",
        ],
    );
    assert_eq!(again.status.code(), Some(6), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a voter"));

    let output = cluster.cli(1, &["members", "remove", "4"]);
    assert!(output.status.success(), "members remove failed: {}", String::from_utf8_lossy(&output.stderr));
    cluster.wait_until("node 4 to leave", AGREEMENT_TIMEOUT, || voters(1) == BTreeSet::from([1, 2, 3]));
    let history = cluster.cli(1, &["history"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.contains("add node 4 as voter"), "{text}");
    assert!(text.contains("remove node 4"), "{text}");
}

/// The data dir and the files vigil writes in it are the owner's only, also when the
/// directory existed before with a wider mode.
#[test]
fn the_data_dir_is_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut cluster = TestCluster::new(1);
    let data = cluster.data_dir(1);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    cluster.start(1);
    let (leader, _) = cluster.wait_for_agreed_leader(&[1], AGREEMENT_TIMEOUT);
    cluster.note(leader, "a note");
    cluster.stop(1);
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "{}", data.display());
    for name in ["raft-log.redb", "vigil-node.json"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
}
