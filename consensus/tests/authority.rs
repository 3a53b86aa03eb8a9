//! What a leader accepts from another node: each rule of `authority::check` against the
//! state of a three-node cluster with one group, decided without any I/O.

mod support;

use openraft::{LogId, Membership};
use vigil_consensus::authority::{OperatorClaim, Requester, Role, check};
use vigil_consensus::group::{FailoverKind, StepFacts};
use vigil_consensus::spec::ClusterSpec;
use vigil_consensus::transport::rpc::LeaderRequest;
use vigil_consensus::{ClusterState, Command, CommandResponse, EventKind, NodeId};

fn node(id: NodeId) -> Requester {
    Requester { node: id, operator: None }
}

fn operator(id: NodeId, name: &str, role: Role) -> Requester {
    Requester { node: id, operator: Some(OperatorClaim { name: name.into(), role }) }
}

fn write(command: Command) -> LeaderRequest {
    LeaderRequest::Write { command }
}

fn finished(run_id: u64, next_by: Option<NodeId>) -> Command {
    Command::StepFinished {
        group: "main".into(),
        run_id,
        index: 0,
        succeeded: true,
        detail: "done".into(),
        facts: StepFacts::default(),
        at_ms: 5,
        next_by,
    }
}

/// The state with a failover running whose first step node 2 was given.
fn state_with_step_given_to_node_2() -> (ClusterState, u64) {
    let (mut state, mut index) = support::state_with_group();
    let plan = vec![vigil_consensus::group::Step::FenceOldPrimary { member: "pg1".into() }];
    index += 1;
    let CommandResponse::RunStarted { run_id, .. } =
        state.apply_command(LogId::new_term_index(1, index), &support::begin("pg2", plan))
    else {
        panic!("not started")
    };
    index += 1;
    let started = Command::StepStarted { group: "main".into(), run_id, index: 0, by: 2, at_ms: 4, seen: None };
    state.apply_command(LogId::new_term_index(1, index), &started);
    (state, run_id)
}

#[test]
fn a_step_result_is_taken_only_from_the_node_given_the_step() {
    let (state, run_id) = state_with_step_given_to_node_2();
    assert_eq!(check(&node(2), &write(finished(run_id, None)), &state), Ok(()));
    let by_another = check(&node(3), &write(finished(run_id, None)), &state).unwrap_err();
    assert!(by_another.contains("was not given step #0"), "{by_another}");
    let next = check(&node(2), &write(finished(run_id, Some(2))), &state).unwrap_err();
    assert!(next.contains("only the leader does"), "{next}");
    let other_run = check(&node(2), &write(finished(run_id + 1, None)), &state).unwrap_err();
    assert!(other_run.contains("was not given"), "{other_run}");
}

#[test]
fn a_node_that_is_not_a_member_or_was_removed_may_ask_nothing() {
    let (mut state, _) = support::state_with_group();
    let unknown = check(&node(7), &LeaderRequest::ReadIndex, &state).unwrap_err();
    assert!(unknown.contains("not a member"), "{unknown}");

    let two: std::collections::BTreeMap<_, _> = (1..=2).map(|id| (id, support::node(id))).collect();
    state.apply_membership(LogId::new_term_index(1, 90), Membership::new(vec![(1..=2).collect()], two).unwrap());
    assert!(state.removed.contains(&3), "the removal is remembered");
    let removed = check(&node(3), &LeaderRequest::ReadIndex, &state).unwrap_err();
    assert!(removed.contains("was removed"), "{removed}");
}

#[test]
fn operator_changes_need_an_admin_who_is_the_author() {
    let (state, _) = support::state_with_group();
    let spec = |author: &str| {
        write(Command::ApplySpec { spec: ClusterSpec::default(), at_unix_ms: 1, proposer: 2, author: author.into() })
    };
    assert_eq!(check(&operator(2, "alice", Role::Admin), &spec("alice"), &state), Ok(()));
    let viewer = check(&operator(2, "eve", Role::Viewer), &spec("eve"), &state).unwrap_err();
    assert!(viewer.contains("changes need the admin role"), "{viewer}");
    let borrowed = check(&operator(2, "alice", Role::Admin), &spec("bob"), &state).unwrap_err();
    assert!(borrowed.contains("names \"bob\" as its author"), "{borrowed}");
    let alone = check(&node(2), &spec("alice"), &state).unwrap_err();
    assert!(alone.contains("an admin operator must ask"), "{alone}");
    let as_other_proposer = check(
        &operator(3, "alice", Role::Admin),
        &spec("alice"), // proposer 2, sent by node 3
        &state,
    )
    .unwrap_err();
    assert!(as_other_proposer.contains("naming node 2 as its proposer"), "{as_other_proposer}");

    let switchover = |kind| {
        let mut command = support::begin("pg2", Vec::new());
        if let Command::BeginFailover { kind: k, proposer, .. } = &mut command {
            *k = kind;
            *proposer = 2;
        }
        write(command)
    };
    assert_eq!(check(&operator(2, "alice", Role::Admin), &switchover(FailoverKind::Switchover), &state), Ok(()));
    let automatic = check(&operator(2, "alice", Role::Admin), &switchover(FailoverKind::Automatic), &state);
    assert!(automatic.unwrap_err().contains("only the leader decides it"));

    let history = |kind| write(Command::RecordEvent { at_unix_ms: 1, proposer: 2, kind });
    let failover_note =
        EventKind::FailoverFinished { group: "main".into(), run_id: 1, succeeded: true, outcome: "made up".into() };
    let forged = check(&operator(2, "alice", Role::Admin), &history(failover_note), &state).unwrap_err();
    assert!(forged.contains("only the leader records it"), "{forged}");
    let membership = check(&operator(2, "alice", Role::Admin), &LeaderRequest::RemoveMember { id: 3 }, &state);
    assert_eq!(membership, Ok(()));
}

#[test]
fn a_node_speaks_for_its_own_lease_verdicts_and_rejoins() {
    let (state, _) = support::state_with_group();
    let renew = |holder| write(Command::RenewLease { group: "main".into(), member: "pg1".into(), holder, epoch: 3 });
    assert_eq!(check(&node(1), &renew(1), &state), Ok(()));
    assert!(check(&node(1), &renew(2), &state).unwrap_err().contains("as its lease holder"));
    let rejoin = |proposer| {
        write(Command::RecordRejoin {
            group: "main".into(),
            member: "pg3".into(),
            primary: "pg1".into(),
            succeeded: true,
            detail: String::new(),
            at_unix_ms: 1,
            proposer,
        })
    };
    assert_eq!(check(&node(3), &rejoin(3), &state), Ok(()));
    assert!(check(&node(2), &rejoin(3), &state).unwrap_err().contains("as its proposer"));
    for leader_only in [
        Command::SetBlocked { group: "main".into(), reason: None },
        Command::RecordPrimary { group: "main".into(), member: "pg2".into(), epoch: None, at_unix_ms: 1, proposer: 2 },
    ] {
        assert!(check(&node(2), &write(leader_only), &state).unwrap_err().contains("only the leader decides it"));
    }
}
