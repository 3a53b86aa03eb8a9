//! Carrying out a coordinator's effects in the world, each answered by exactly one outcome
//! (unless its node crashed meanwhile): proposals go to [`crate::proposals`], actions land on
//! the fake servers after their latency, orders go to the host's fence guard.
//!
//! An action on a member of another host needs that host reachable (else "cannot connect"
//! after a connect timeout); a lost message or a stuck fence never lands and times out; a
//! leader's action runs only if a read index confirms its leadership at that moment. An
//! action that lands after its timeout still does what it does: the outcome says
//! "timed out", as with any timeout.

use vigil_consensus::coordinator::{
    Action, ActionFailure, ActionReport, Effect, EffectId, Event, FailureKind, GuardOrder, Outcome,
};
use vigil_consensus::spec::DEFAULT_PROBE_TIMEOUT;

use rand::Rng;

use crate::actions::{self, Context, Landing, POLL_US};
use crate::check;
use crate::clock::Micros;
use crate::faults::TweakKind;
use crate::servers::Kind;
use crate::world::{Ev, NodeEv, World};

/// An action under way.
#[derive(Clone, Debug)]
pub(crate) struct ActionRun {
    node: usize,
    incarnation: u32,
    effect: EffectId,
    group: usize,
    member: usize,
    action: Action,
    deadline: Micros,
    /// When the member implementation gives up waiting, if the action waits.
    gives_up_at: Micros,
    /// Its node has had its outcome.
    answered: bool,
    /// It will do nothing more to its server.
    settled: bool,
}

/// What a server looked like before an action landed on it.
#[derive(Clone, Copy, Debug)]
struct Before {
    running: bool,
    primary: bool,
    fenced: bool,
    branch: u32,
    lsn: u64,
}

impl World {
    /// Carries out one effect of `node`'s coordinator.
    pub(crate) fn carry_out(&mut self, node: usize, effect: Effect) {
        match effect {
            Effect::Propose { id, command, timeout } => self.propose(node, id, command, timeout),
            Effect::Act { id, group, member, action, timeout, requires_leadership } => {
                self.act(node, id, &group, &member, action, timeout, requires_leadership)
            }
            Effect::CatchUp { id, timeout } => self.catch_up(node, id, timeout),
            Effect::Guard { id, order } => self.guard(node, id, order),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn act(
        &mut self,
        node: usize,
        effect: EffectId,
        group_name: &str,
        member_name: &str,
        action: Action,
        timeout: std::time::Duration,
        requires_leadership: bool,
    ) {
        let incarnation = self.nodes[node].incarnation;
        if self.config.verbose {
            // What the node believed when it acted: its applied index against the log's, and
            // the primary and running failover in its state.
            let seen = self.nodes[node]
                .state
                .groups
                .get(group_name)
                .map(|state| (state.primary.clone(), state.running.is_some()));
            let (applied, last) = (self.raft.peers[node].applied, self.raft.last_index());
            self.trace.note(
                self.now,
                format!(
                    "  n{} asks: {action} on {member_name} (applied {applied}/{last}, primary and run {seen:?})",
                    node + 1
                ),
            );
        }
        let found = self
            .groups
            .iter()
            .position(|group| group.name == group_name)
            .and_then(|group| self.groups[group].index_of(member_name).map(|member| (group, member)));
        let Some((group, member)) = found else {
            let failure = ActionFailure::new(FailureKind::Unexpected, format!("no member {group_name}/{member_name}"));
            let event = Event::Done { id: effect, outcome: Outcome::Acted(Err(failure)) };
            self.schedule(self.now, Ev::Node { node, incarnation, what: NodeEv::Deliver(Box::new(event)) });
            return;
        };
        let deadline = self.now + self.nodes[node].clock.true_span(timeout);
        let id = self.next_action;
        self.next_action += 1;
        self.actions.insert(
            id,
            ActionRun {
                node,
                incarnation,
                effect,
                group,
                member,
                action: action.clone(),
                deadline,
                gives_up_at: deadline,
                answered: false,
                settled: true,
            },
        );
        self.schedule(deadline, Ev::ActionTimeout { action: id });
        let alive = self.alive();
        if requires_leadership && !self.raft.confirms_leadership(node, &alive, &self.net) {
            let failure = ActionFailure::new(FailureKind::NotLeader, "leadership not confirmed by a quorum");
            self.schedule(self.now + 2_000, Ev::ActionAnswer { action: id, outcome: Err(failure) });
            return;
        }
        let host = self.groups[group].servers[member].host;
        if !self.net.reachable(node, host) {
            let connect_timeout = self.nodes[node].clock.true_span(DEFAULT_PROBE_TIMEOUT).min(deadline - self.now);
            let failure = ActionFailure::new(FailureKind::CannotConnect, format!("{member_name}: connect timed out"));
            self.schedule(self.now + connect_timeout, Ev::ActionAnswer { action: id, outcome: Err(failure) });
            return;
        }
        if self.net.drops(node, host, &mut self.rng) {
            return;
        }
        let stuck = self.active.stuck_fence.get(&(group, member)).is_some_and(|count| *count > 0);
        if stuck && matches!(action, Action::Fence { .. } | Action::RemoteFence) {
            return;
        }
        let latency = match self.active.take_tweak(group, member, &action) {
            Some(TweakKind::Fail) => {
                let failure = ActionFailure::new(FailureKind::Refused, format!("{action} on {member_name} failed"));
                self.schedule(self.now + 2_000, Ev::ActionAnswer { action: id, outcome: Err(failure) });
                return;
            }
            Some(TweakKind::Slow(latency)) => {
                self.trace.note(
                    self.now,
                    format!("n{} {action} on {member_name}: slow, lands in {} ms", node + 1, latency / 1000),
                );
                latency
            }
            None => self.action_latency(node),
        };
        if self.guarded_lift(&action, group)
            && let Err(refusal) = self.guards[node].take_lift(group, member, id, self.now)
        {
            // Asked of the guard beside, which answers at once.
            let failure = ActionFailure::new(FailureKind::Refused, format!("the fence guard: {refusal}"));
            self.schedule(self.now + 200, Ev::ActionAnswer { action: id, outcome: Err(failure) });
            return;
        }
        if let Some(run) = self.actions.get_mut(&id) {
            run.settled = false;
        }
        self.schedule(self.now + latency, Ev::Land { action: id });
    }

    /// How long an action of `node` takes to land: 1–5 ms, 2 % of them 100–600 ms, and
    /// 200–1500 ms on a node whose actions are slow.
    fn action_latency(&mut self, node: usize) -> Micros {
        if self.active.slow_actions[node] > 0 {
            self.rng.random_range(200_000..=1_500_000)
        } else if self.rng.random_bool(0.02) {
            self.rng.random_range(100_000..=600_000)
        } else {
            self.rng.random_range(1_000..=5_000)
        }
    }

    fn failing_fence(&self, run: &ActionRun) -> bool {
        self.active.failing_fence.get(&(run.group, run.member)).is_some_and(|count| *count > 0)
    }

    /// An action reaches its server.
    pub(crate) fn land(&mut self, id: u64) {
        let Some(run) = self.actions.get(&id).cloned() else { return };
        let server = &self.groups[run.group].servers[run.member];
        let before = Before {
            running: server.running,
            primary: server.primary,
            fenced: server.fenced,
            branch: server.branch,
            lsn: server.lsn,
        };
        let context = Context {
            actor_host: run.node,
            net: &self.net,
            failing_fence: self.failing_fence(&run),
            unfenced_promotion: self.config.mutations.unfenced_promotion,
        };
        let mut landing = actions::land(&mut self.groups[run.group], run.member, &run.action, &context);
        if self.guarded_lift(&run.action, run.group)
            && let Some(member) = self.guards[run.node].lift_landed(run.group, id)
        {
            // The guard's fence, queued behind the lift on the same line, lands right after it.
            let server = &mut self.groups[run.group].servers[member];
            if server.running {
                server.fenced = true;
                let name = server.name.clone();
                self.trace
                    .note(self.now, format!("guard of host {} fences {name} right behind the lift", run.node + 1));
            }
            if member == run.member && matches!(landing, Landing::Done(Ok(_))) {
                landing = Landing::Done(Err(ActionFailure::new(
                    FailureKind::Refused,
                    "the fence guard: lifted, but the lease ran out meanwhile and the guard fenced it again right behind",
                )));
            }
        }
        self.landed(&run, before, &landing);
        match landing {
            Landing::Done(outcome) => {
                self.settle(id);
                let back = self.latency(self.groups[run.group].servers[run.member].host, run.node);
                self.schedule(self.now + back, Ev::ActionAnswer { action: id, outcome });
            }
            Landing::Wait => {
                if let Some(own) = actions::gives_up_after(&run.action) {
                    let gives_up_at = self.now + self.nodes[run.node].clock.true_span(own);
                    if let Some(waiting) = self.actions.get_mut(&id) {
                        waiting.gives_up_at = gives_up_at.min(waiting.deadline);
                    }
                }
                self.schedule(self.now + POLL_US, Ev::Poll { action: id });
            }
        }
    }

    /// What an action that landed means for the trace and the checkers.
    fn landed(&mut self, run: &ActionRun, before: Before, landing: &Landing) {
        let group = &self.groups[run.group];
        let server = &group.servers[run.member];
        let (name, group_name) = (server.name.clone(), group.name.clone());
        let changed =
            before.running != server.running || before.primary != server.primary || before.fenced != server.fenced;
        let promoted = matches!(run.action, Action::Promote { .. }) && !before.primary && server.primary;
        let node = run.node + 1;
        match landing {
            Landing::Done(Err(failure))
                if matches!(
                    run.action,
                    Action::Fence { .. } | Action::Lift { .. } | Action::SetSyncStandbys { .. }
                ) =>
            {
                self.trace.note(self.now, format!("n{node} {}: {name} failed: {failure}", run.action));
            }
            _ if changed => {
                let state = format!(
                    "running={} primary={} fenced={}",
                    server.running as u8, server.primary as u8, server.fenced as u8
                );
                self.trace.note(self.now, format!("n{node} {}: {name} now {state}", run.action));
            }
            _ => {}
        }
        if promoted && let Action::Promote { epoch, .. } = run.action {
            let violation = check::promotion_keeps_acknowledged_writes(
                &self.groups[run.group],
                &name,
                before.branch,
                before.lsn,
                self.now,
            );
            self.violated(violation);
            let violation = check::promoted_once(&mut self.ledger, &group_name, &name, epoch, self.now);
            self.violated(violation);
        }
        if changed {
            self.check_writers(run.group);
        }
    }

    /// A waiting action looks again.
    pub(crate) fn poll(&mut self, id: u64) {
        let Some(run) = self.actions.get(&id).cloned() else { return };
        if self.now >= run.gives_up_at {
            self.settle(id);
            if run.gives_up_at < run.deadline {
                let name = self.groups[run.group].servers[run.member].name.clone();
                self.schedule(
                    self.now,
                    Ev::ActionAnswer { action: id, outcome: Err(actions::gave_up(&run.action, &name)) },
                );
            }
            return;
        }
        let context = Context {
            actor_host: run.node,
            net: &self.net,
            failing_fence: false,
            unfenced_promotion: self.config.mutations.unfenced_promotion,
        };
        let outcome = actions::poll(&mut self.groups[run.group], run.member, &run.action, &context);
        match outcome {
            Some(outcome) => {
                self.settle(id);
                let back = self.latency(self.groups[run.group].servers[run.member].host, run.node);
                self.schedule(self.now + back, Ev::ActionAnswer { action: id, outcome });
            }
            None => self.schedule(self.now + POLL_US, Ev::Poll { action: id }),
        }
    }

    fn settle(&mut self, id: u64) {
        if let Some(run) = self.actions.get_mut(&id) {
            run.settled = true;
            if run.answered {
                self.actions.remove(&id);
            }
        }
    }

    /// An action's outcome reaches its node, unless the timeout came first.
    pub(crate) fn action_answer(&mut self, id: u64, outcome: Result<ActionReport, ActionFailure>) {
        let Some(run) = self.actions.get_mut(&id) else { return };
        if run.answered {
            return;
        }
        run.answered = true;
        let (node, incarnation, effect) = (run.node, run.incarnation, run.effect);
        if run.settled {
            self.actions.remove(&id);
        }
        let event = Event::Done { id: effect, outcome: Outcome::Acted(outcome) };
        self.at_node(node, incarnation, NodeEv::Deliver(Box::new(event)));
    }

    /// An action's timeout, unless its outcome came first.
    pub(crate) fn action_timed_out(&mut self, id: u64) {
        let Some(run) = self.actions.get(&id) else { return };
        let name = self.groups[run.group].servers[run.member].name.clone();
        let failure = actions::gave_up(&run.action, &name);
        self.action_answer(id, Err(failure));
    }

    /// Whether `action` on a member of `group` goes through the guard: a Redis master's lift.
    fn guarded_lift(&self, action: &Action, group: usize) -> bool {
        matches!(action, Action::Lift { .. }) && self.groups[group].kind == Kind::Redis
    }

    /// Tells the guard of `node`'s host; answered through the queue, never inline.
    fn guard(&mut self, node: usize, effect: EffectId, order: GuardOrder) {
        match order {
            GuardOrder::Arm { group, member, valid_for } => {
                let group = self.groups.iter().position(|candidate| candidate.name == group);
                let member = group.and_then(|group| self.groups[group].index_of(&member));
                if let (Some(group), Some(member)) = (group, member) {
                    let deadline = self.now + self.nodes[node].clock.true_span(valid_for);
                    let generation = self.guards[node].arm(group, member, deadline);
                    self.schedule(deadline, Ev::GuardFire { host: node, group, generation });
                }
            }
            GuardOrder::Disarm { group } => {
                if let Some(index) = self.groups.iter().position(|candidate| candidate.name == group)
                    && self.guards[node].disarm(index)
                {
                    self.trace.note(self.now, format!("n{} disarms its guard of {group}", node + 1));
                }
            }
        }
        let incarnation = self.nodes[node].incarnation;
        let event = Event::Done { id: effect, outcome: Outcome::Guarded(Ok(())) };
        self.schedule(self.now + 100, Ev::Node { node, incarnation, what: NodeEv::Deliver(Box::new(event)) });
    }
}
