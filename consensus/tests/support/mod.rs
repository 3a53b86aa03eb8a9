//! What the tests of applied commands and of the coordinator share: a three-node cluster
//! with one PostgreSQL group, and the commands that start a failover of it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::{LogId, Membership};
use vigil_consensus::group::{FailoverKind, Step};
use vigil_consensus::spec::{ClusterSpec, FenceMethod, PostgresGroup, PostgresMember, SecretSource, SyncMode};
use vigil_consensus::{ClusterState, Command, CommandResponse, NodeId, NodeInfo};

/// Node `id`, named `n{id}`, alone in datacenter `dc{id}`.
pub fn node(id: NodeId) -> NodeInfo {
    NodeInfo {
        name: format!("n{id}"),
        datacenter: format!("dc{id}"),
        raft_addr: String::new(),
        api_addr: String::new(),
    }
}

/// Nodes 1 to 3 and group `main` (pg1 to pg3, each beside the node of its number), pg1 its
/// primary in epoch 3, not synchronous; with the index of the last entry applied.
pub fn state_with_group() -> (ClusterState, u64) {
    state_with_sync(SyncMode::Off)
}

/// As [`state_with_group`], with this synchronous mode.
pub fn state_with_sync(synchronous: SyncMode) -> (ClusterState, u64) {
    let mut state = ClusterState::default();
    let nodes: BTreeMap<NodeId, NodeInfo> = (1..=3).map(|id| (id, node(id))).collect();
    state.apply_membership(LogId::new_term_index(1, 1), Membership::new(vec![(1..=3).collect()], nodes).unwrap());
    let member = |n: u16| PostgresMember {
        name: format!("pg{n}"),
        host: "127.0.0.1".into(),
        port: 5430 + n,
        node: format!("n{n}"),
        data_dir: None,
        start_command: None,
        stop_command: None,
        priority: 0,
        nofailover: false,
    };
    let group = PostgresGroup {
        name: "main".into(),
        database: "postgres".into(),
        user: "vigil".into(),
        password: SecretSource { file: Some("/p".into()), env: None },
        replication_user: "replicator".into(),
        replication_password: SecretSource { file: Some("/r".into()), env: None },
        maximum_lag_on_failover: 1_000,
        down_after: Duration::from_millis(600),
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(500),
        lease_duration: Duration::from_millis(1500),
        fence_method: FenceMethod::ReadOnly,
        synchronous,
        bin_dir: "/usr/bin".into(),
        run_as: None,
        allow_reclone: false,
        tls: None,
        datacenter_preference: vec![],
        members: (1..=3).map(member).collect(),
    };
    let spec = ClusterSpec { postgres: vec![group], ..ClusterSpec::default() };
    let mut index = 2;
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    assert_eq!(
        apply(&mut state, Command::ApplySpec { spec, at_unix_ms: 1, proposer: 1, author: "t".into() }),
        CommandResponse::Applied
    );
    let primary = Command::RecordPrimary {
        group: "main".into(),
        member: "pg1".into(),
        epoch: Some(3),
        at_unix_ms: 2,
        proposer: 1,
    };
    assert_eq!(apply(&mut state, primary), CommandResponse::Applied);
    (state, index)
}

/// A failover of pg1 to `candidate` with this plan, proposed by node 1.
pub fn begin(candidate: &str, plan: Vec<Step>) -> Command {
    Command::BeginFailover {
        group: "main".into(),
        kind: FailoverKind::Automatic,
        reason: "test".into(),
        old_primary: Some("pg1".into()),
        candidate: candidate.into(),
        plan,
        detected_at_ms: None,
        decided_at_ms: 3,
        old_primary_lsn: None,
        candidate_lsn: None,
        proposer: 1,
    }
}
