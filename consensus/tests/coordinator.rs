//! One node's coordinator through its one entry point, on a state the test applies commands
//! to: what a leader does with the steps of a failover it finds, and what the node beside a
//! replaced primary does.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::LogId;
use support::{begin, state_with_group};
use vigil_consensus::coordinator::{
    Action, ActionFailure, ActionReport, Coordinator, Ctx, Effect, EffectId, Event, FailureKind, Followers, Mono, Now,
    Outcome, Seen,
};
use vigil_consensus::group::{Step, StepSeen, StepStatus};
use vigil_consensus::{ClusterState, Command, CommandResponse};

/// Node 1's coordinator, each call 25 ms after the last, as the leader or beside another one.
struct Node {
    coordinator: Coordinator,
    state: ClusterState,
    index: u64,
    now: Duration,
    leader: u64,
    followers: Followers,
}

impl Node {
    fn new(state: ClusterState, index: u64, leader: u64) -> Self {
        let acked = Some(Duration::from_millis(10));
        Node {
            coordinator: Coordinator::new(1, Default::default()),
            state,
            index,
            now: Duration::from_secs(100),
            leader,
            followers: Followers {
                leading_for: Duration::from_secs(5),
                last_ack: BTreeMap::from([(2, acked), (3, acked)]),
            },
        }
    }

    fn mono(&self) -> Mono {
        Mono::from_origin(self.now)
    }

    fn apply(&mut self, command: &Command) -> CommandResponse {
        self.index += 1;
        self.state.apply_command(LogId::new_term_index(2, self.index), command)
    }

    fn handle(&mut self, event: Event) -> Vec<Effect> {
        self.now += Duration::from_millis(25);
        let ctx = Ctx {
            now: Now { mono: Mono::from_origin(self.now), wall_ms: 1_700_000_000_000 + self.now.as_millis() as u64 },
            state: &self.state,
            leader: Some(self.leader),
            term: 2,
            followers: (self.leader == 1).then_some(&self.followers),
        };
        self.coordinator.handle(&ctx, event)
    }
}

fn repoints(effects: &[Effect]) -> usize {
    effects.iter().filter(|effect| matches!(effect, Effect::Act { action: Action::Repoint { .. }, .. })).count()
}

/// A leader restarted while a step it had started was in flight finds that start committed
/// under its own name, by an earlier run of itself: whether that attempt ran is unknown, so
/// it starts the step again, once, from the status it saw, and runs only the attempt its
/// own start made. (Found by the simulation soak at 70aade5: the restarted leader ran the old
/// attempt while its new start was in flight, took each new start for another leader's, and
/// committed three starts of one step within 200 ms, retrying a failure at once.)
#[test]
fn a_restarted_leader_starts_a_step_it_started_before_again_and_runs_only_that_start() {
    let (mut state, mut index) = state_with_group();
    let plan =
        vec![Step::FenceOldPrimary { member: "pg1".into() }, Step::Promote, Step::Repoint { member: "pg3".into() }];
    index += 1;
    let CommandResponse::RunStarted { run_id, .. } =
        state.apply_command(LogId::new_term_index(1, index), &begin("pg2", plan))
    else {
        panic!("not started")
    };
    let mut leader = Node::new(state, index, 1);
    let started =
        |index: usize| Command::StepStarted { group: "main".into(), run_id, index, by: 1, at_ms: 4, seen: None };
    for step in 0..2 {
        assert_eq!(leader.apply(&started(step)), CommandResponse::Applied);
        let finished = Command::StepFinished {
            group: "main".into(),
            run_id,
            index: step,
            succeeded: true,
            detail: "done".into(),
            facts: Default::default(),
            at_ms: 5,
            next_by: None,
        };
        assert_eq!(leader.apply(&finished), CommandResponse::Applied);
    }
    // The start of the re-point, proposed before the restart, committed after it.
    assert_eq!(leader.apply(&started(2)), CommandResponse::Applied);

    let mut effects = leader.handle(Event::Applied);
    for _ in 0..40 {
        effects.extend(leader.handle(Event::Tick));
    }
    let starts: Vec<(u64, &Command)> = effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Propose { id, command: command @ Command::StepStarted { .. }, .. } => Some((id.0, command)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 1, "one new start, not one per tick: {starts:?}");
    let (start_id, start) = (starts[0].0, starts[0].1.clone());
    assert!(
        matches!(&start, Command::StepStarted { index: 2, by: 1, seen: Some(StepSeen::Started { attempt: 1 }), .. }),
        "{start:?}"
    );
    assert_eq!(repoints(&effects), 0, "the attempt of the earlier run is not run: {effects:?}");

    // Its start commits: attempt 2 is this run's, and runs once.
    assert_eq!(leader.apply(&start), CommandResponse::Applied);
    let status = leader.state.groups["main"].running.as_ref().unwrap().steps[2].status.clone();
    assert!(matches!(status, StepStatus::Started { by: 1, attempt: 2, .. }), "{status:?}");
    let id = EffectId(start_id);
    let mut effects = leader.handle(Event::Done { id, outcome: Outcome::Proposed(Ok(CommandResponse::Applied)) });
    effects.extend(leader.handle(Event::Applied));
    for _ in 0..40 {
        effects.extend(leader.handle(Event::Tick));
    }
    assert_eq!(repoints(&effects), 1, "{effects:?}");
    assert!(
        !effects.iter().any(|effect| matches!(effect, Effect::Propose { command: Command::StepStarted { .. }, .. })),
        "no further start while attempt 2 runs: {effects:?}"
    );
}

/// The other nodes' probes found the primary down first, and the failover began before this
/// node's own did: a fence cannot land on a server that does not answer, so this node makes
/// sure the primary is down on its own host and releases its lease, as it does before a
/// failover, rather than leave the leader to wait a whole lease. (Seen in the Redis failover
/// benchmark at bc98116: in 3 runs of 40 the promotion waited 0.85 s (fast profile) or
/// 1.7 s (default) for the lease of a killed master to run out.)
#[test]
fn the_node_beside_a_primary_found_down_after_its_failover_began_releases_the_lease() {
    let (state, index) = state_with_group();
    let mut node = Node::new(state, index, 2);
    assert_eq!(
        node.apply(&Command::RenewLease { group: "main".into(), member: "pg1".into(), holder: 1, epoch: 3 }),
        CommandResponse::Applied
    );
    node.handle(Event::Applied);
    let plan = vec![Step::FenceOldPrimary { member: "pg1".into() }, Step::Promote];
    assert!(matches!(node.apply(&begin("pg2", plan)), CommandResponse::RunStarted { .. }));
    let mut effects = node.handle(Event::Applied);
    let mut released = None;
    let mut made_sure = 0;
    for _ in 0..80 {
        // pg1 refuses connections: every probe fails, every fence fails, and its port is
        // found closed on this host.
        let started = node.mono();
        effects.extend(node.handle(Event::Probed {
            group: "main".into(),
            member: "pg1".into(),
            seen: Seen::Failed { reason: "connection refused".into() },
            started,
        }));
        for effect in std::mem::take(&mut effects) {
            let outcome = match &effect {
                Effect::Act { action: Action::MakeSureDown, member, .. } if member == "pg1" => {
                    made_sure += 1;
                    Outcome::Acted(Ok(ActionReport::done("not running")))
                }
                Effect::Act { member, .. } if member == "pg1" => {
                    Outcome::Acted(Err(ActionFailure::new(FailureKind::CannotConnect, "connection refused")))
                }
                Effect::Propose { command: command @ Command::ReleaseLease { .. }, .. } => {
                    released = Some(command.clone());
                    continue;
                }
                _ => continue,
            };
            effects.extend(node.handle(Event::Done { id: effect.id(), outcome }));
        }
        if released.is_some() {
            break;
        }
    }
    assert_eq!(made_sure, 1, "asked once whether pg1 is down on its host");
    let Some(Command::ReleaseLease { member, holder, reason, .. }) = released else {
        panic!("the lease of pg1 was not released")
    };
    assert_eq!((member.as_str(), holder), ("pg1", 1));
    assert!(reason.contains("down for node 1 and not running"), "{reason}");
}

fn primary_seen() -> Seen {
    let facts = vigil_consensus::group::MemberFacts { in_recovery: false, ..Default::default() };
    Seen::Answered(vigil_consensus::group::Verdict {
        health: vigil_consensus::group::Health::Up,
        facts: Some(facts),
        reason: None,
    })
}

fn rejoin_effects(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|effect| matches!(effect, Effect::CatchUp { .. } | Effect::Act { action: Action::Rejoin { .. }, .. }))
        .count()
}

/// A switchover restarts the old primary as a replica, and the run ends. A probe of it
/// that began while the run still ran (it was a primary then) says nothing of what it is
/// now: the node beside it must not take it for a stale primary and rewind it (seen in CI:
/// a rejoin stopped the member just restarted as a replica, and pg_rewind could not start
/// from where a clean stop had left it). A probe made after the run rejoins it if need be.
#[test]
fn a_probe_from_before_a_run_ended_does_not_make_its_old_primary_rejoin() {
    let (state, index) = state_with_group();
    let mut node = Node::new(state, index, 2);
    node.handle(Event::Applied);
    let mut begin = begin("pg2", vec![Step::Promote]);
    if let Command::BeginFailover { kind, .. } = &mut begin {
        *kind = vigil_consensus::group::FailoverKind::Switchover;
    }
    let CommandResponse::RunStarted { run_id, .. } = node.apply(&begin) else { panic!("not started") };
    node.handle(Event::Applied);
    let during_the_run = node.mono();
    node.handle(Event::Applied);
    node.apply(&Command::StepStarted { group: "main".into(), run_id, index: 0, by: 2, at_ms: 1, seen: None });
    let promoted = Command::StepFinished {
        group: "main".into(),
        run_id,
        index: 0,
        succeeded: true,
        detail: "promoted".into(),
        facts: Default::default(),
        at_ms: 2,
        next_by: None,
    };
    assert_eq!(node.apply(&promoted), CommandResponse::Applied);
    node.handle(Event::Applied);
    let finish = Command::FinishFailover {
        group: "main".into(),
        run_id,
        succeeded: true,
        outcome: "pg2 is the primary".into(),
        at_ms: 3,
        proposer: 2,
    };
    node.apply(&finish);
    assert_eq!(node.state.groups["main"].primary.as_deref(), Some("pg2"));
    let mut effects = node.handle(Event::Applied);
    effects.extend(node.handle(Event::Probed {
        group: "main".into(),
        member: "pg1".into(),
        seen: primary_seen(),
        started: during_the_run,
    }));
    for _ in 0..8 {
        effects.extend(node.handle(Event::Applied));
    }
    assert_eq!(rejoin_effects(&effects), 0, "acted on a probe from before the run ended: {effects:#?}");

    let after = node.mono();
    let effects =
        node.handle(Event::Probed { group: "main".into(), member: "pg1".into(), seen: primary_seen(), started: after });
    let mut effects = effects;
    for _ in 0..4 {
        effects.extend(node.handle(Event::Applied));
    }
    assert!(rejoin_effects(&effects) > 0, "a fresh probe of a stale primary does not rejoin it: {effects:#?}");
}
