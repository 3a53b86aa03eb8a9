//! The failover decision, deterministically: tables of situations, then property tests
//! over generated verdicts (flapping members, stale reports, lagging replicas).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use vigil_consensus::decision::{Decision, STALE_AFTER_MS, Situation, choose_candidate, decide, plan_requested};
use vigil_consensus::group::{FailoverKind, GroupState, Health, MemberFacts, Step, Verdict, VerdictReport};
use vigil_consensus::spec::{FenceMethod, PostgresGroup, PostgresMember, SecretSource, SyncMode};
use vigil_consensus::{NodeId, NodeInfo};

const NOW: u64 = 1_800_000_000_000;

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

fn spec() -> PostgresGroup {
    let member = |n: u64| PostgresMember {
        name: format!("pg{n}"),
        host: "127.0.0.1".into(),
        port: 5430 + n as u16,
        node: format!("n{n}"),
        data_dir: Some(format!("/data/pg{n}")),
        start_command: None,
        stop_command: None,
        priority: 0,
        nofailover: false,
    };
    PostgresGroup {
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
        synchronous: SyncMode::Off,
        bin_dir: "/usr/lib/postgresql/15/bin".into(),
        run_as: None,
        allow_reclone: false,
        tls: None,
        datacenter_preference: vec![],
        members: (1..=3).map(member).collect(),
    }
}

fn primary_facts(lsn: u64) -> MemberFacts {
    MemberFacts { in_recovery: false, current_lsn: Some(lsn), epoch: Some(1), ..MemberFacts::default() }
}

fn replica_facts(replay: u64) -> MemberFacts {
    MemberFacts {
        in_recovery: true,
        receive_lsn: Some(replay),
        replay_lsn: Some(replay),
        receiver_status: Some("streaming".into()),
        ..MemberFacts::default()
    }
}

fn report(health: Health, facts: Option<MemberFacts>, age_ms: u64) -> VerdictReport {
    VerdictReport {
        verdict: Verdict { health, facts, reason: (health == Health::Down).then(|| "connection refused".into()) },
        observed_at_ms: NOW - age_ms,
        since_ms: NOW - age_ms - 600,
    }
}

/// A group state where pg1 is the primary at LSN 10_000 and pg2, pg3 replicate at the
/// given positions, as seen by all three nodes.
fn healthy(pg2: u64, pg3: u64) -> GroupState {
    let mut state = GroupState { primary: Some("pg1".into()), epoch: 1, ..GroupState::default() };
    for node in 1..=3 {
        set(&mut state, node, "pg1", report(Health::Up, Some(primary_facts(10_000)), 100));
        set(&mut state, node, "pg2", report(Health::Up, Some(replica_facts(pg2)), 100));
        set(&mut state, node, "pg3", report(Health::Up, Some(replica_facts(pg3)), 100));
    }
    state
}

/// Stores a verdict the way applying `ReportVerdict` does.
fn set(state: &mut GroupState, node: NodeId, member: &str, report: VerdictReport) {
    if let Some(facts) = &report.verdict.facts
        && !facts.in_recovery
        && let Some(lsn) = facts.current_lsn
    {
        let known = state.last_primary_lsn.entry(member.into()).or_default();
        *known = (*known).max(lsn);
    }
    state.verdicts.entry(member.into()).or_default().insert(node, report);
}

fn down(state: &mut GroupState, nodes: &[NodeId], member: &str) {
    for node in nodes {
        set(state, *node, member, report(Health::Down, None, 50));
    }
}

fn decide_for(spec: &PostgresGroup, state: &GroupState) -> Decision {
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes = nodes();
    decide(&Situation {
        spec: &spec.policy(),
        state,
        voters: &voters,
        nodes: &nodes,
        now_ms: NOW,
        primary_lease_run_out: false,
        unreachable: &BTreeSet::new(),
    })
}

fn begun(decision: Decision) -> vigil_consensus::decision::Plan {
    match decision {
        Decision::Begin(plan) => plan,
        other => panic!("expected a failover, got {other:?}"),
    }
}

#[test]
fn primary_down_for_a_majority_promotes_the_most_advanced_replica() {
    let mut state = healthy(9_900, 9_950);
    down(&mut state, &[1, 2], "pg1");
    let plan = begun(decide_for(&spec(), &state));
    assert_eq!(plan.candidate, "pg3");
    assert_eq!(plan.kind, FailoverKind::Automatic);
    assert_eq!(
        plan.steps,
        vec![
            Step::FenceOldPrimary { member: "pg1".into() },
            Step::Promote,
            Step::VerifyWritable,
            Step::Repoint { member: "pg2".into() }
        ]
    );
    assert_eq!(plan.old_primary_lsn, Some(10_000));
    assert_eq!(plan.candidate_lsn, Some(9_950));
    assert_eq!(plan.detected_at_ms, Some(NOW - 50 - 600));
}

/// The most advanced replica sits beside a node the leader does not hear from: nobody could
/// lift the fence it would be promoted with, so the next one is chosen, and the reason shows.
#[test]
fn a_replica_whose_node_is_out_of_reach_is_passed_over() {
    let mut state = healthy(9_900, 9_950);
    down(&mut state, &[1, 2], "pg1");
    let (voters, nodes, policy) = (BTreeSet::from([1, 2, 3]), nodes(), spec().policy());
    let situation = Situation {
        spec: &policy,
        state: &state,
        voters: &voters,
        nodes: &nodes,
        now_ms: NOW,
        primary_lease_run_out: false,
        unreachable: &BTreeSet::from([3]),
    };
    assert_eq!(begun(decide(&situation)).candidate, "pg2");
    let why = choose_candidate(&Situation { unreachable: &BTreeSet::from([2, 3]), ..situation }, Some("pg1"), false)
        .expect_err("no candidate left");
    assert!(why.contains("pg3's node n3 is out of the leader's reach"), "{why}");
}

#[test]
fn primary_down_for_one_node_only_is_not_failed_over() {
    let mut state = healthy(9_900, 9_950);
    down(&mut state, &[3], "pg1");
    assert_eq!(decide_for(&spec(), &state), Decision::Nothing);
}

#[test]
fn stale_down_verdicts_do_not_count() {
    let mut state = healthy(9_900, 9_950);
    down(&mut state, &[1], "pg1");
    set(&mut state, 2, "pg1", report(Health::Down, None, STALE_AFTER_MS + 1));
    assert_eq!(decide_for(&spec(), &state), Decision::Nothing);
}

#[test]
fn replica_beyond_the_lag_policy_is_never_chosen() {
    let mut state = healthy(8_000, 9_500);
    down(&mut state, &[1, 2, 3], "pg1");
    let mut lagging = spec();
    lagging.maximum_lag_on_failover = 1_000;
    assert_eq!(begun(decide_for(&lagging, &state)).candidate, "pg3");
    // With pg3 too far behind as well, nothing is promoted and the reason is recorded.
    let mut state = healthy(8_000, 8_500);
    down(&mut state, &[1, 2, 3], "pg1");
    match decide_for(&lagging, &state) {
        Decision::Blocked { reason } => {
            assert!(reason.contains("pg2 lags 2000 bytes"), "{reason}");
            assert!(reason.contains("pg3 lags 1500 bytes"), "{reason}");
        }
        other => panic!("expected blocked, got {other:?}"),
    }
}

#[test]
fn nofailover_members_are_never_chosen() {
    let mut state = healthy(9_900, 9_990);
    down(&mut state, &[1, 2], "pg1");
    let mut spec = spec();
    spec.members[2].nofailover = true;
    assert_eq!(begun(decide_for(&spec, &state)).candidate, "pg2");
}

#[test]
fn priority_then_datacenter_preference_break_ties() {
    let mut state = healthy(9_900, 9_900);
    down(&mut state, &[1, 2], "pg1");
    let mut by_priority = spec();
    by_priority.members[2].priority = 10;
    assert_eq!(begun(decide_for(&by_priority, &state)).candidate, "pg3");
    let mut by_datacenter = spec();
    by_datacenter.datacenter_preference = vec!["dc3".into(), "dc2".into()];
    assert_eq!(begun(decide_for(&by_datacenter, &state)).candidate, "pg3");
    // Without either, the name decides, so the choice never depends on map order.
    assert_eq!(begun(decide_for(&spec(), &state)).candidate, "pg2");
}

#[test]
fn a_degraded_replica_whose_primary_died_is_still_a_candidate() {
    let mut state = healthy(9_900, 9_950);
    down(&mut state, &[1, 2, 3], "pg1");
    let mut stopped = replica_facts(9_990);
    stopped.receiver_status = None;
    for node in 1..=3 {
        let mut degraded = report(Health::Degraded, Some(stopped.clone()), 50);
        degraded.verdict.reason = Some("not streaming".into());
        set(&mut state, node, "pg2", degraded);
    }
    assert_eq!(begun(decide_for(&spec(), &state)).candidate, "pg2");
}

#[test]
fn paused_group_is_blocked_not_failed_over() {
    let mut state = healthy(9_900, 9_950);
    state.paused = true;
    down(&mut state, &[1, 2], "pg1");
    assert!(matches!(decide_for(&spec(), &state), Decision::Blocked { reason } if reason.contains("paused")));
}

/// A primary that answers but refuses writes (fenced by its own node) is failed over only
/// once its lease has run out: until then its node may still lift the fence.
#[test]
fn fenced_primary_is_failed_over_only_after_its_lease_ran_out() {
    let mut state = healthy(9_900, 9_950);
    for node in 1..=3 {
        let mut fenced = report(Health::Degraded, Some(primary_facts(10_000)), 50);
        fenced.verdict.reason = Some("primary refuses writes: read-only".into());
        set(&mut state, node, "pg1", fenced);
    }
    let policy = spec().policy();
    let voters = BTreeSet::from([1, 2, 3]);
    let nodes = nodes();
    let held = Situation {
        spec: &policy,
        state: &state,
        voters: &voters,
        nodes: &nodes,
        now_ms: NOW,
        primary_lease_run_out: false,
        unreachable: &BTreeSet::new(),
    };
    assert_eq!(decide(&held), Decision::Nothing);
    let run_out = Situation { primary_lease_run_out: true, ..held };
    let plan = begun(decide(&run_out));
    assert_eq!(plan.candidate, "pg3");
    assert!(plan.reason.contains("refuses writes and its lease ran out"), "{}", plan.reason);
}

#[test]
fn recovered_primary_clears_the_block() {
    let mut state = healthy(9_900, 9_950);
    state.blocked = Some("no failover possible: x".into());
    assert_eq!(decide_for(&spec(), &state), Decision::Unblock);
}

#[test]
fn the_primary_is_discovered_once_and_two_claimants_block() {
    let mut state = healthy(9_900, 9_950);
    state.primary = None;
    assert_eq!(decide_for(&spec(), &state), Decision::RecordPrimary { member: "pg1".into(), epoch: Some(1) });
    set(&mut state, 2, "pg3", report(Health::Up, Some(primary_facts(9_999)), 10));
    assert!(matches!(decide_for(&spec(), &state), Decision::Blocked { reason } if reason.contains("pg1, pg3")));
}

#[test]
fn switchover_refuses_a_lagging_candidate_and_a_paused_group() {
    let state = healthy(5_000, 9_950);
    let policy = spec().policy();
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
    let refusal = plan_requested(&situation, Some("pg2"), false).unwrap_err();
    assert!(refusal.contains("cannot promote pg2: pg2 lags 5000 bytes"), "{refusal}");
    let plan = plan_requested(&situation, None, false).unwrap();
    assert_eq!(plan.candidate, "pg3");
    assert_eq!(plan.steps.first(), Some(&Step::StopPrimary { member: "pg1".into() }));
    assert_eq!(plan.steps.last(), Some(&Step::RejoinAsReplica { member: "pg1".into() }));
    // Forcing ignores the lag and does not wait for the candidate to catch up.
    let forced = plan_requested(&situation, Some("pg2"), true).unwrap();
    assert_eq!(forced.candidate, "pg2");
    assert_eq!(forced.kind, FailoverKind::Forced);
    assert!(!forced.steps.contains(&Step::WaitForCatchUp));
    assert_eq!(forced.steps.first(), Some(&Step::StopPrimary { member: "pg1".into() }));
    let mut paused = state.clone();
    paused.paused = true;
    let situation = Situation { state: &paused, ..situation };
    assert!(plan_requested(&situation, None, false).unwrap_err().contains("paused"));
}

/// One node's verdict on one member, as generated.
#[derive(Clone, Debug)]
struct GeneratedVerdict {
    health: Health,
    replica_lsn: u64,
    stale: bool,
}

fn generated_verdict() -> impl Strategy<Value = Option<GeneratedVerdict>> {
    proptest::option::weighted(
        0.9,
        (
            prop_oneof![Just(Health::Up), Just(Health::Degraded), Just(Health::Down)],
            9_000u64..10_000,
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(health, replica_lsn, stale)| GeneratedVerdict { health, replica_lsn, stale }),
    )
}

fn build_state(verdicts: &[Option<GeneratedVerdict>], paused: bool) -> GroupState {
    let mut state = GroupState { primary: Some("pg1".into()), paused, ..GroupState::default() };
    // The primary was seen at 10_000 before whatever the generated verdicts say now.
    state.last_primary_lsn.insert("pg1".into(), 10_000);
    for (index, generated) in verdicts.iter().enumerate() {
        let Some(generated) = generated else { continue };
        let node = (index % 3) as NodeId + 1;
        let member = format!("pg{}", index / 3 + 1);
        let facts = match (generated.health, member.as_str()) {
            (Health::Down, _) => None,
            (_, "pg1") => Some(primary_facts(10_000)),
            _ => Some(replica_facts(generated.replica_lsn)),
        };
        let age = if generated.stale { STALE_AFTER_MS + 1 } else { 20 };
        set(&mut state, node, &member, report(generated.health, facts, age));
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Whatever mix of fresh, stale, flapping and lagging verdicts: a failover begins only
    /// when a majority of voters freshly see the primary down; the candidate is a reachable
    /// replica within the lag policy, not nofailover, at the highest position among those;
    /// and the decision is the same every time it is made.
    #[test]
    fn failover_only_with_a_quorum_and_the_best_eligible_candidate(
        verdicts in proptest::collection::vec(generated_verdict(), 9),
        max_lag in prop_oneof![Just(100u64), Just(500), Just(1_000_000)],
        nofailover in proptest::collection::vec(proptest::bool::weighted(0.2), 3),
        paused in proptest::bool::weighted(0.1),
    ) {
        let mut spec = spec();
        spec.maximum_lag_on_failover = max_lag;
        for (member, flag) in spec.members.iter_mut().zip(&nofailover) {
            member.nofailover = *flag;
        }
        let state = build_state(&verdicts, paused);
        let decision = decide_for(&spec, &state);
        prop_assert_eq!(&decision, &decide_for(&spec, &state));

        let fresh_down_on_primary = (0..3)
            .filter(|node| matches!(&verdicts[*node], Some(v) if v.health == Health::Down && !v.stale))
            .count();
        if let Decision::Begin(plan) = &decision {
            prop_assert!(fresh_down_on_primary >= 2, "failover with only {} fresh down verdicts", fresh_down_on_primary);
            prop_assert!(!paused);
            prop_assert_ne!(plan.candidate.as_str(), "pg1");
            let index: usize = plan.candidate[2..].parse::<usize>().unwrap() - 1;
            prop_assert!(!nofailover[index]);
            let best_fresh = |member: usize| (0..3)
                .filter_map(|node| verdicts[member * 3 + node].as_ref())
                .filter(|v| !v.stale && v.health != Health::Down)
                .map(|v| v.replica_lsn)
                .max();
            let position = best_fresh(index).expect("the candidate has a fresh, answering verdict");
            prop_assert!(10_000 - position <= max_lag, "candidate lags {} > {}", 10_000 - position, max_lag);
            // Member 0 is the old primary; the others are the replicas.
            for (other, other_nofailover) in nofailover.iter().enumerate().skip(1) {
                if other != index && !other_nofailover
                    && let Some(other_position) = best_fresh(other)
                    && 10_000 - other_position <= max_lag
                {
                    prop_assert!(position >= other_position, "pg{} was better placed", other + 1);
                }
            }
        } else if fresh_down_on_primary < 2 {
            prop_assert!(matches!(decision, Decision::Nothing | Decision::Unblock));
        }
    }

    /// The candidate chosen never depends on the order verdicts were reported in.
    #[test]
    fn the_choice_is_independent_of_report_order(
        verdicts in proptest::collection::vec(generated_verdict(), 9),
    ) {
        let policy = spec().policy();
        let state = build_state(&verdicts, false);
        let mut reversed = GroupState { primary: state.primary.clone(), ..GroupState::default() };
        for (member, reports) in state.verdicts.iter().rev() {
            for (node, report) in reports.iter().rev() {
                set(&mut reversed, *node, member, report.clone());
            }
        }
        let voters = BTreeSet::from([1, 2, 3]);
        let nodes = nodes();
        let a = choose_candidate(&Situation { spec: &policy, state: &state, voters: &voters, nodes: &nodes, now_ms: NOW, primary_lease_run_out: false, unreachable: &BTreeSet::new() }, Some("pg1"), false);
        let b = choose_candidate(&Situation { spec: &policy, state: &reversed, voters: &voters, nodes: &nodes, now_ms: NOW, primary_lease_run_out: false, unreachable: &BTreeSet::new() }, Some("pg1"), false);
        prop_assert_eq!(a, b);
    }
}

/// In strict synchronous mode only a confirmed synchronous standby is promoted, even when
/// another replica is further ahead; with none confirmed, nothing is.
#[test]
fn strict_mode_promotes_only_a_confirmed_synchronous_standby() {
    let mut spec = spec();
    spec.synchronous = SyncMode::Strict;
    let mut state = healthy(9_900, 9_990);
    down(&mut state, &[1, 2, 3], "pg1");
    state.sync_standbys = ["pg2".to_string()].into();
    assert_eq!(begun(decide_for(&spec, &state)).candidate, "pg2");
    state.sync_standbys.clear();
    match decide_for(&spec, &state) {
        Decision::Blocked { reason } => assert!(reason.contains("not a confirmed synchronous standby"), "{reason}"),
        other => panic!("expected blocked, got {other:?}"),
    }
}
