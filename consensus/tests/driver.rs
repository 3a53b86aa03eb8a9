//! The failover driver, through the coordinator's one entry point: what a leader does with
//! the steps of a failover it finds in the state.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::LogId;
use support::{begin, state_with_group};
use vigil_consensus::coordinator::{Action, Coordinator, Ctx, Effect, Event, Followers, Mono, Now, Outcome};
use vigil_consensus::group::{Step, StepSeen, StepStatus};
use vigil_consensus::{ClusterState, Command, CommandResponse};

/// One node's coordinator fed ticks as the leader, 25 ms apart, on a state the test applies
/// commands to.
struct Leader {
    coordinator: Coordinator,
    state: ClusterState,
    index: u64,
    now: Duration,
    followers: Followers,
}

impl Leader {
    fn new(state: ClusterState, index: u64) -> Self {
        let acked = Some(Duration::from_millis(10));
        Leader {
            coordinator: Coordinator::new(1, Default::default()),
            state,
            index,
            now: Duration::from_secs(100),
            followers: Followers {
                leading_for: Duration::from_secs(5),
                last_ack: BTreeMap::from([(2, acked), (3, acked)]),
            },
        }
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
            leader: Some(1),
            term: 2,
            followers: Some(&self.followers),
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
    let mut leader = Leader::new(state, index);
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
    let id = vigil_consensus::coordinator::EffectId(start_id);
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
