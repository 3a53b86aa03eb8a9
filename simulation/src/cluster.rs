//! The simulated cluster's configuration: its nodes, their membership, and the spec of its
//! two groups (a strict synchronous PostgreSQL group "main" and a Redis group "cache", one
//! member of each beside every node, with the default timings).

use std::collections::BTreeMap;

use openraft::Membership;
use vigil_consensus::spec::{
    ClusterSpec, DEFAULT_DOWN_AFTER, DEFAULT_LEASE_DURATION, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
    FenceMethod, PostgresGroup, PostgresMember, RedisFenceMethod, RedisGroup, RedisMember, SecretSource, SyncMode,
};
use vigil_consensus::{Command, NodeId, NodeInfo};

use crate::servers::host_address;

/// The PostgreSQL group's name.
pub const POSTGRES_GROUP: &str = "main";
/// The Redis group's name.
pub const REDIS_GROUP: &str = "cache";
/// The PostgreSQL group's index among the world's groups (what fault targets name).
pub const POSTGRES: usize = 0;
/// The Redis group's index among the world's groups.
pub const REDIS: usize = 1;
/// A replica further behind than this is never promoted (far more than any fault here lets
/// a replica fall behind, so the lag policy never blocks a failover).
pub const MAXIMUM_LAG: u64 = 64 << 20;

/// The node id of node index `index` (ids start at 1).
pub fn node_id(index: usize) -> NodeId {
    index as NodeId + 1
}

/// The node index of node id `id`.
pub fn node_index(id: NodeId) -> usize {
    id as usize - 1
}

/// What the membership says of node index `index`: "n1" in "dc1" for the first.
pub fn node_info(index: usize) -> NodeInfo {
    NodeInfo {
        name: format!("n{}", index + 1),
        datacenter: format!("dc{}", index + 1),
        raft_addr: format!("{}:7000", host_address(index)),
        api_addr: format!("{}:8000", host_address(index)),
    }
}

/// Every node a voter.
pub fn membership(nodes: usize) -> Membership<NodeId, NodeInfo> {
    let infos: BTreeMap<NodeId, NodeInfo> = (0..nodes).map(|index| (node_id(index), node_info(index))).collect();
    Membership::new(vec![infos.keys().copied().collect()], infos).expect("a valid membership")
}

/// The spec: PostgreSQL "main" (strict synchronous, fenced read-only, each member with its
/// data directory, so guarded and restarted in place) and Redis "cache" (writes refused as
/// its fence), member `i` on host `i` beside node `i`.
pub fn spec(nodes: usize) -> ClusterSpec {
    let secret = |path: &str| SecretSource { file: Some(path.to_string()), env: None };
    let postgres = PostgresGroup {
        name: POSTGRES_GROUP.to_string(),
        database: "postgres".to_string(),
        user: "vigil".to_string(),
        password: secret("/etc/vigil/pg-password"),
        replication_user: "replicator".to_string(),
        replication_password: secret("/etc/vigil/replication-password"),
        maximum_lag_on_failover: MAXIMUM_LAG,
        down_after: DEFAULT_DOWN_AFTER,
        probe_interval: DEFAULT_PROBE_INTERVAL,
        probe_timeout: DEFAULT_PROBE_TIMEOUT,
        bin_dir: "/usr/lib/postgresql/15/bin".to_string(),
        run_as: None,
        lease_duration: DEFAULT_LEASE_DURATION,
        fence_method: FenceMethod::ReadOnly,
        synchronous: SyncMode::Strict,
        allow_reclone: false,
        tls: None,
        datacenter_preference: Vec::new(),
        members: (0..nodes)
            .map(|index| PostgresMember {
                name: format!("pg{}", index + 1),
                host: host_address(index),
                port: 5432,
                node: node_info(index).name,
                data_dir: Some("/var/lib/postgresql/15/main".to_string()),
                start_command: None,
                stop_command: None,
                priority: 0,
                nofailover: false,
            })
            .collect(),
    };
    let redis = RedisGroup {
        name: REDIS_GROUP.to_string(),
        user: None,
        password: None,
        tls: None,
        maximum_lag_on_failover: MAXIMUM_LAG,
        down_after: DEFAULT_DOWN_AFTER,
        probe_interval: DEFAULT_PROBE_INTERVAL,
        probe_timeout: DEFAULT_PROBE_TIMEOUT,
        lease_duration: DEFAULT_LEASE_DURATION,
        fence_method: RedisFenceMethod::RefuseWrites,
        min_replicas_to_write: 0,
        min_replicas_max_lag: 10,
        datacenter_preference: Vec::new(),
        members: (0..nodes)
            .map(|index| RedisMember {
                name: format!("redis{}", index + 1),
                host: host_address(index),
                port: 6379,
                node: node_info(index).name,
                priority: 0,
                nofailover: false,
            })
            .collect(),
    };
    ClusterSpec { postgres: vec![postgres], redis: vec![redis] }
}

/// The command that installs the spec at bootstrap.
pub fn apply_spec(nodes: usize) -> Command {
    Command::ApplySpec {
        spec: spec(nodes),
        at_unix_ms: crate::clock::EPOCH_MS,
        proposer: node_id(0),
        author: "simulation".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_validates_against_the_membership() {
        for nodes in [3, 5] {
            let infos: BTreeMap<NodeId, NodeInfo> =
                (0..nodes).map(|index| (node_id(index), node_info(index))).collect();
            spec(nodes).validate(&infos).expect("a valid spec");
        }
    }
}
