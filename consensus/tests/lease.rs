//! Applying lease and failover commands: a renewal is accepted only from the node beside the
//! primary of the current epoch, and never while a failover replaces that primary; a step
//! starts only from the status its start was decided on.

mod support;

use openraft::LogId;
use support::{state_with_group, state_with_sync};
use vigil_consensus::group::{Step, StepSeen, StepStatus};
use vigil_consensus::spec::SyncMode;
use vigil_consensus::{ClusterState, Command, CommandResponse, NodeId};

/// A failover of pg1 to `candidate`: fence pg1, then promote.
fn begin(candidate: &str) -> Command {
    support::begin(candidate, vec![Step::FenceOldPrimary { member: "pg1".into() }, Step::Promote])
}

fn renew(holder: NodeId, member: &str, epoch: u64) -> Command {
    Command::RenewLease { group: "main".into(), member: member.into(), holder, epoch }
}

#[test]
fn only_the_node_beside_the_primary_of_the_current_epoch_renews() {
    let (mut state, mut index) = state_with_group();
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    assert_eq!(apply(&mut state, renew(1, "pg1", 3)), CommandResponse::Applied);
    assert_eq!(apply(&mut state, renew(1, "pg1", 3)), CommandResponse::Applied);
    assert_eq!(state.groups["main"].lease.as_ref().unwrap().renewals, 2);
    for (command, why) in [
        (renew(2, "pg1", 3), "not the node beside"),
        (renew(2, "pg2", 3), "not the primary"),
        (renew(1, "pg1", 2), "epoch 2"),
    ] {
        match apply(&mut state, command) {
            CommandResponse::Refused { reason } => assert!(reason.contains(why), "{reason}"),
            other => panic!("accepted: {other:?}"),
        }
    }
    assert_eq!(state.groups["main"].lease.as_ref().unwrap().renewals, 2, "a refused renewal changed the lease");
}

#[test]
fn no_renewal_while_a_failover_replaces_the_primary_and_release_is_recorded() {
    let (mut state, mut index) = state_with_group();
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    assert_eq!(apply(&mut state, renew(1, "pg1", 3)), CommandResponse::Applied);
    assert!(matches!(apply(&mut state, begin("pg2")), CommandResponse::RunStarted { epoch: 4, .. }));
    assert!(
        matches!(apply(&mut state, renew(1, "pg1", 3)), CommandResponse::Refused { reason } if reason.contains("replacing"))
    );
    let release = Command::ReleaseLease {
        group: "main".into(),
        member: "pg1".into(),
        holder: 1,
        reason: "pg1 is down and stopped".into(),
    };
    assert_eq!(apply(&mut state, release), CommandResponse::Applied);
    assert_eq!(state.groups["main"].lease.as_ref().unwrap().released.as_deref(), Some("pg1 is down and stopped"));
}

/// A failover planned on a state that has moved on (its proposal committed late, by the next
/// leader, after another failover already replaced the same primary) is refused.
#[test]
fn a_failover_planned_against_a_replaced_primary_is_refused() {
    let (mut state, mut index) = state_with_group();
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    let CommandResponse::RunStarted { run_id, .. } = apply(&mut state, begin("pg2")) else { panic!("not started") };
    let finished = |index: usize| Command::StepFinished {
        group: "main".into(),
        run_id,
        index,
        succeeded: true,
        detail: "done".into(),
        facts: Default::default(),
        at_ms: 4,
        next_by: None,
    };
    assert_eq!(apply(&mut state, finished(0)), CommandResponse::Applied);
    assert_eq!(apply(&mut state, finished(1)), CommandResponse::Applied);
    let finish = Command::FinishFailover {
        group: "main".into(),
        run_id,
        succeeded: true,
        outcome: "pg2".into(),
        at_ms: 5,
        proposer: 1,
    };
    assert_eq!(apply(&mut state, finish), CommandResponse::Applied);
    assert_eq!(state.groups["main"].primary.as_deref(), Some("pg2"));
    match apply(&mut state, begin("pg3")) {
        CommandResponse::Refused { reason } => assert!(reason.contains("primary is now pg2"), "{reason}"),
        other => panic!("a stale plan started: {other:?}"),
    }
    assert!(state.groups["main"].running.is_none());
}

/// A run given up after its promotion was started spends its epoch: the promotion may have
/// landed after its runner died, so the next run promotes into a new epoch, and no epoch
/// ever has two promotions. A run given up before its promotion started spends none.
#[test]
fn a_run_given_up_after_its_promotion_started_spends_its_epoch() {
    let (mut state, mut index) = state_with_group();
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    let give_up = |run_id: u64| Command::FinishFailover {
        group: "main".into(),
        run_id,
        succeeded: false,
        outcome: "given up".into(),
        at_ms: 5,
        proposer: 1,
    };

    // Given up before its promotion started: the next run gets the same epoch.
    let CommandResponse::RunStarted { run_id, epoch } = apply(&mut state, begin("pg2")) else { panic!("not started") };
    assert_eq!(epoch, 4);
    assert_eq!(apply(&mut state, give_up(run_id)), CommandResponse::Applied);
    assert_eq!(state.groups["main"].epoch, 3);

    // Given up with its promotion started: that epoch is spent.
    let CommandResponse::RunStarted { run_id, epoch } = apply(&mut state, begin("pg2")) else { panic!("not started") };
    assert_eq!(epoch, 4);
    let started =
        |index: usize| Command::StepStarted { group: "main".into(), run_id, index, by: 2, at_ms: 4, seen: None };
    assert_eq!(apply(&mut state, started(0)), CommandResponse::Applied);
    let fenced = Command::StepFinished {
        group: "main".into(),
        run_id,
        index: 0,
        succeeded: true,
        detail: "done".into(),
        facts: Default::default(),
        at_ms: 4,
        next_by: None,
    };
    assert_eq!(apply(&mut state, fenced), CommandResponse::Applied);
    assert_eq!(apply(&mut state, started(1)), CommandResponse::Applied);
    assert_eq!(apply(&mut state, give_up(run_id)), CommandResponse::Applied);
    assert_eq!(state.groups["main"].epoch, 4);
    assert_eq!(state.groups["main"].primary.as_deref(), Some("pg1"), "nothing is known promoted");
    let CommandResponse::RunStarted { epoch, .. } = apply(&mut state, begin("pg3")) else { panic!("not started") };
    assert_eq!(epoch, 5);
}

/// A leader step's success may start the next step in the same entry (one commit less
/// between two steps); only a pending next step is started, and a failure starts nothing.
#[test]
fn a_step_that_succeeds_starts_the_next_in_the_same_entry() {
    let (mut state, mut index) = state_with_group();
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    let CommandResponse::RunStarted { run_id, .. } = apply(&mut state, begin("pg2")) else { panic!("not started") };
    let finished = |index: usize, succeeded: bool| Command::StepFinished {
        group: "main".into(),
        run_id,
        index,
        succeeded,
        detail: "done".into(),
        facts: Default::default(),
        at_ms: 4,
        next_by: Some(2),
    };
    let status =
        |state: &ClusterState, index: usize| state.groups["main"].running.as_ref().unwrap().steps[index].status.clone();
    assert_eq!(
        apply(&mut state, Command::StepStarted { group: "main".into(), run_id, index: 0, by: 2, at_ms: 3, seen: None }),
        CommandResponse::Applied
    );
    // A failure starts nothing.
    assert_eq!(apply(&mut state, finished(0, false)), CommandResponse::Applied);
    assert_eq!(status(&state, 1), StepStatus::Pending);
    // A success starts the next step, by the node named.
    assert_eq!(apply(&mut state, finished(0, true)), CommandResponse::Applied);
    assert_eq!(status(&state, 1), StepStatus::Started { by: 2, attempt: 1, at_ms: 4 });
    // The promotion of that started step counts as started: given up, its epoch is spent.
    let give_up = Command::FinishFailover {
        group: "main".into(),
        run_id,
        succeeded: false,
        outcome: "given up".into(),
        at_ms: 5,
        proposer: 2,
    };
    assert_eq!(apply(&mut state, give_up), CommandResponse::Applied);
    assert_eq!(state.groups["main"].epoch, 4);
}

/// Strict synchronous mode: a plan whose candidate has left the confirmed synchronous set by
/// the time it is applied (the settler replaced that standby after the plan was made) is
/// refused; the next decision, on the current set, goes through.
#[test]
fn a_strict_failover_to_a_member_dropped_from_the_synchronous_set_is_refused() {
    let (mut state, mut index) = state_with_sync(SyncMode::Strict);
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    let set = |standbys: &[&str]| Command::SetSyncStandbys {
        group: "main".into(),
        primary: "pg1".into(),
        epoch: 3,
        standbys: standbys.iter().map(|name| name.to_string()).collect(),
        note: None,
    };
    assert_eq!(apply(&mut state, set(&["pg2", "pg3"])), CommandResponse::Applied);
    assert_eq!(apply(&mut state, set(&["pg2"])), CommandResponse::Applied);
    match apply(&mut state, begin("pg3")) {
        CommandResponse::Refused { reason } => {
            assert!(reason.contains("pg3 is no longer a confirmed synchronous standby"), "{reason}")
        }
        other => panic!("expected the plan refused, got {other:?}"),
    }
    assert!(state.groups["main"].running.is_none());
    assert!(matches!(apply(&mut state, begin("pg2")), CommandResponse::RunStarted { .. }));
}

/// A start decided on a running attempt that lands after that attempt's failure is refused:
/// applied, it would retry the step at once, without the wait a retry keeps. A start decided
/// on the failure applies, and an entry written before starts carried their status still
/// starts the step.
#[test]
fn a_start_applies_only_on_the_status_it_was_decided_on() {
    let (mut state, mut index) = state_with_group();
    let mut apply = |state: &mut ClusterState, command: Command| {
        index += 1;
        state.apply_command(LogId::new_term_index(1, index), &command)
    };
    let CommandResponse::RunStarted { run_id, .. } = apply(&mut state, begin("pg2")) else { panic!("not started") };
    let start =
        |seen: Option<StepSeen>| Command::StepStarted { group: "main".into(), run_id, index: 0, by: 1, at_ms: 4, seen };
    let failed = Command::StepFinished {
        group: "main".into(),
        run_id,
        index: 0,
        succeeded: false,
        detail: "no answer".into(),
        facts: Default::default(),
        at_ms: 5,
        next_by: None,
    };
    let status = |state: &ClusterState| state.groups["main"].running.as_ref().unwrap().steps[0].status.clone();
    // Decided on a pending step that another start has since taken: refused.
    assert_eq!(apply(&mut state, start(Some(StepSeen::Pending))), CommandResponse::Applied);
    match apply(&mut state, start(Some(StepSeen::Pending))) {
        CommandResponse::Refused { reason } => {
            assert!(reason.contains("was pending") && reason.contains("started (attempt 1) now"), "{reason}")
        }
        other => panic!("accepted: {other:?}"),
    }
    // Decided while attempt 1 ran, landing after it failed: refused, the failure stands.
    assert_eq!(apply(&mut state, failed.clone()), CommandResponse::Applied);
    match apply(&mut state, start(Some(StepSeen::Started { attempt: 1 }))) {
        CommandResponse::Refused { reason } => assert!(reason.contains("failed (attempt 1) now"), "{reason}"),
        other => panic!("accepted: {other:?}"),
    }
    assert!(matches!(status(&state), StepStatus::Failed { attempt: 1, .. }));
    // Decided on that failure: attempt 2.
    assert_eq!(apply(&mut state, start(Some(StepSeen::Failed { attempt: 1 }))), CommandResponse::Applied);
    assert_eq!(status(&state), StepStatus::Started { by: 1, attempt: 2, at_ms: 4 });
    // An entry of an older vigil, with no status: read as such, and starts whatever the
    // step's status.
    let old = serde_json::to_string(&start(None)).unwrap();
    assert!(!old.contains("seen"), "{old}");
    assert_eq!(serde_json::from_str::<Command>(&old).unwrap(), start(None));
    assert_eq!(apply(&mut state, start(None)), CommandResponse::Applied);
    assert_eq!(status(&state), StepStatus::Started { by: 1, attempt: 3, at_ms: 4 });
}
