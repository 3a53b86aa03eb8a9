//! Redis groups in the spec and the decision: validation names the field at fault, and the
//! decision treats replication offsets exactly as it treats WAL positions (the same engine).

use std::collections::{BTreeMap, BTreeSet};

use vigil_consensus::decision::{Decision, Situation, decide};
use vigil_consensus::group::{GroupState, Health, MemberFacts, Step, Verdict, VerdictReport};
use vigil_consensus::spec::{ClusterSpec, GroupKind, RedisGroup};
use vigil_consensus::{NodeId, NodeInfo};

const NOW: u64 = 1_000_000;

fn nodes() -> BTreeMap<NodeId, NodeInfo> {
    (1..=3)
        .map(|id| {
            let info = NodeInfo {
                name: format!("n{id}"),
                datacenter: format!("dc{id}"),
                raft_addr: String::new(),
                api_addr: String::new(),
            };
            (id, info)
        })
        .collect()
}

fn spec_from(toml_text: &str) -> ClusterSpec {
    toml::from_str(toml_text).expect("the test spec parses")
}

const GROUP: &str = r#"
[[redis]]
name = "cache"
password = { env = "REDIS_PASSWORD" }
maximum_lag_on_failover = 1000
members = [
  { name = "r1", host = "127.0.0.1", port = 7001, node = "n1" },
  { name = "r2", host = "127.0.0.1", port = 7002, node = "n2" },
  { name = "r3", host = "127.0.0.1", port = 7003, node = "n3" },
]
"#;

fn group() -> RedisGroup {
    spec_from(GROUP).redis.remove(0)
}

fn rejected(spec: &ClusterSpec) -> (String, String) {
    let error = spec.validate(&nodes()).expect_err("the spec is rejected");
    (error.field, error.message)
}

#[test]
fn a_valid_group_parses_with_defaults_and_validates() {
    let spec = spec_from(GROUP);
    spec.validate(&nodes()).unwrap();
    let group = &spec.redis[0];
    assert_eq!(group.members[0].port, 7001);
    assert_eq!(group.min_replicas_to_write, 0);
    let policy = spec.group("cache").unwrap().policy();
    assert_eq!(policy.kind, GroupKind::Redis);
    assert!(policy.members.iter().all(|member| member.stoppable), "a Redis master's writes can always be paused");
}

#[test]
fn bad_groups_are_rejected_with_the_field_named() {
    let mut empty = spec_from(GROUP);
    empty.redis[0].members.clear();
    assert_eq!(rejected(&empty).0, "redis[0].members");

    let mut unknown_node = spec_from(GROUP);
    unknown_node.redis[0].members[1].node = "n9".into();
    let (field, message) = rejected(&unknown_node);
    assert_eq!(field, "redis[0].members[1].node");
    assert!(message.contains("n9") && message.contains("n1, n2, n3"), "{message}");

    let mut duplicate = spec_from(GROUP);
    duplicate.redis[0].members[2].name = "r1".into();
    assert_eq!(rejected(&duplicate).0, "redis[0].members[2].name");

    let mut relative_secret = spec_from(GROUP);
    relative_secret.redis[0].password =
        Some(vigil_consensus::spec::SecretSource { file: Some("pw".into()), env: None });
    assert_eq!(rejected(&relative_secret).0, "redis[0].password.file");

    let mut short_lease = spec_from(GROUP);
    short_lease.redis[0].lease_duration = std::time::Duration::from_millis(300);
    assert_eq!(rejected(&short_lease).0, "redis[0].lease_duration");

    let mut impossible_min_replicas = spec_from(GROUP);
    impossible_min_replicas.redis[0].min_replicas_to_write = 3;
    let (field, message) = rejected(&impossible_min_replicas);
    assert_eq!(field, "redis[0].min_replicas_to_write");
    assert!(message.contains("refuse every write"), "{message}");

    // One name for a PostgreSQL and a Redis group would make `vigil failover NAME` ambiguous.
    let mut clash = spec_from(GROUP);
    let mut other = group();
    other.members.iter_mut().for_each(|member| member.port += 100);
    clash.redis.push(other);
    assert_eq!(rejected(&clash).0, "redis[1].name");

    let unknown_field = toml::from_str::<ClusterSpec>(&GROUP.replace("maximum_lag_on_failover", "max_lag"));
    assert!(unknown_field.unwrap_err().to_string().contains("max_lag"));
}

fn report(health: Health, facts: MemberFacts) -> VerdictReport {
    VerdictReport {
        verdict: Verdict { health, facts: Some(facts), reason: None },
        observed_at_ms: NOW - 10,
        since_ms: 0,
    }
}

fn replica(offset: u64) -> MemberFacts {
    MemberFacts {
        in_recovery: true,
        receive_lsn: Some(offset),
        replay_lsn: Some(offset),
        receiver_status: Some("streaming".into()),
        ..MemberFacts::default()
    }
}

/// The master is down for every node: the replica with the highest offset within the lag
/// policy is promoted with the same steps as a PostgreSQL failover; a lagging one is never.
#[test]
fn the_replica_with_the_highest_offset_within_the_lag_policy_wins() {
    let policy = group().policy();
    let mut state = GroupState { primary: Some("r1".into()), epoch: 1, ..GroupState::default() };
    state.last_primary_lsn.insert("r1".into(), 10_000);
    for node in 1..=3u64 {
        let down = VerdictReport {
            verdict: Verdict { health: Health::Down, facts: None, reason: Some("connection refused".into()) },
            observed_at_ms: NOW - 10,
            since_ms: NOW - 700,
        };
        state.verdicts.entry("r1".into()).or_default().insert(node, down);
        state.verdicts.entry("r2".into()).or_default().insert(node, report(Health::Up, replica(9_500)));
        state.verdicts.entry("r3".into()).or_default().insert(node, report(Health::Up, replica(9_900)));
    }
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes = nodes();
    let situation = Situation {
        spec: &policy,
        state: &state,
        voters: &voters,
        nodes: &nodes,
        now_ms: NOW,
        primary_lease_run_out: false,
        unreachable: &BTreeSet::new(),
    };
    let Decision::Begin(plan) = decide(&situation) else { panic!("expected a failover") };
    assert_eq!(plan.candidate, "r3");
    assert_eq!(plan.candidate_lsn, Some(9_900));
    assert_eq!(
        plan.steps,
        vec![
            Step::FenceOldPrimary { member: "r1".into() },
            Step::Promote,
            Step::VerifyWritable,
            Step::Repoint { member: "r2".into() }
        ]
    );

    // r3 now lags 1,500 bytes, beyond the policy of 1,000: r2 (500 behind) is chosen.
    for node in 1..=3u64 {
        state.verdicts.get_mut("r3").unwrap().insert(node, report(Health::Up, replica(8_500)));
    }
    let situation = Situation {
        spec: &policy,
        state: &state,
        voters: &voters,
        nodes: &nodes,
        now_ms: NOW,
        primary_lease_run_out: false,
        unreachable: &BTreeSet::new(),
    };
    let Decision::Begin(plan) = decide(&situation) else { panic!("expected a failover") };
    assert_eq!(plan.candidate, "r2");
}
