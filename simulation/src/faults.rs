//! Faults as plain data, the schedules drawn from a seed, and what injecting and healing
//! each one does to the world.
//!
//! A drawn schedule has 2–4 episodes, each injected at a random moment after the warm-up and
//! held 0.5–8 s. Named scenarios write theirs by hand, and may inject an episode when an
//! entry commits ("cut the candidate's host right after its promotion commits"). Targets
//! such as "the leader" or "the primary" are resolved when the episode is injected, and the
//! heal undoes exactly what the injection did.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vigil_consensus::Command;
use vigil_consensus::coordinator::Action;
use vigil_consensus::decision::{Situation, plan_requested};
use vigil_consensus::group::Step;

use crate::clock::Micros;
use crate::raft::Payload;
use crate::servers::{Kind, Server};
use crate::world::{Config, Ev, World};

/// Whom a fault hits, resolved when it is injected. Node `i`, host `i` and member `i` of
/// every group are the same index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This index.
    Index(usize),
    /// The leader of the current term.
    Leader,
    /// The primary of a group (by index), as committed.
    Primary(usize),
    /// The candidate of a group's running failover.
    Candidate(usize),
}

/// Which actions a one-off tweak applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// [`Action::Lift`].
    Lift,
    /// [`Action::Fence`].
    Fence,
    /// [`Action::Promote`].
    Promote,
    /// [`Action::StopForSwitchover`].
    StopForSwitchover,
}

impl ActionKind {
    fn matches(self, action: &Action) -> bool {
        matches!(
            (self, action),
            (ActionKind::Lift, Action::Lift { .. })
                | (ActionKind::Fence, Action::Fence { .. })
                | (ActionKind::Promote, Action::Promote { .. })
                | (ActionKind::StopForSwitchover, Action::StopForSwitchover)
        )
    }
}

/// What a one-off tweak does to the next matching action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TweakKind {
    /// It lands this long after it was sent.
    Slow(Micros),
    /// It fails at once ("refused").
    Fail,
}

/// One fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The node's process dies; at heal a new coordinator starts on its applied state.
    Crash(Target),
    /// The node's process is stopped (SIGSTOP); at heal it handles what waited.
    Freeze(Target),
    /// Every link of the host is cut.
    Isolate(Target),
    /// The link between two hosts is cut.
    Cut(Target, Target),
    /// The host is cut from these hosts only.
    Split {
        /// The host.
        host: Target,
        /// The hosts it loses.
        from: Vec<usize>,
    },
    /// vigil's Raft port is blocked on the host: its node is cut off, its members are not.
    BlockRaftPort(Target),
    /// The link between two hosts is cut and healed every second.
    Flapping(Target, Target),
    /// Messages into and out of the host are lost with this probability.
    PacketLoss(Target, f64),
    /// The primary server of a group dies (Redis is started again at heal as an operator
    /// would; vigil brings PostgreSQL back itself).
    KillPrimary(usize),
    /// Fences of this member never land (they time out).
    StuckFence {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
    },
    /// Fences of this member fail (a PostgreSQL member's own node then stops it).
    FailingFence {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
    },
    /// Every action of this node takes 200–1500 ms to land.
    SlowActions(Target),
    /// This node applies committed entries 1–3 s late.
    ApplyLag(Target),
    /// This replica stops replaying (it still reports streaming).
    ReplicaLag {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
    },
    /// This node's wall clock jumps by `delta_ms` (and back at heal).
    WallClockStep {
        /// The node.
        node: Target,
        /// How far.
        delta_ms: i64,
    },
    /// The next matching action on this member is slowed or fails.
    Tweak {
        /// The group.
        group: usize,
        /// The member.
        member: Target,
        /// Which action.
        action: ActionKind,
        /// What happens to it.
        tweak: TweakKind,
    },
    /// An operator asks for a switchover of the group to this member.
    Switchover {
        /// The group.
        group: usize,
        /// The member to promote.
        to: Target,
    },
}

/// A step of a failover, to wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// [`Step::FenceOldPrimary`].
    FenceOldPrimary,
    /// [`Step::Promote`].
    Promote,
    /// [`Step::VerifyWritable`].
    VerifyWritable,
    /// [`Step::StopPrimary`].
    StopPrimary,
}

impl StepKind {
    fn matches(self, step: &Step) -> bool {
        matches!(
            (self, step),
            (StepKind::FenceOldPrimary, Step::FenceOldPrimary { .. })
                | (StepKind::Promote, Step::Promote)
                | (StepKind::VerifyWritable, Step::VerifyWritable)
                | (StepKind::StopPrimary, Step::StopPrimary { .. })
        )
    }
}

/// When an episode begins.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// At this true time.
    At(Micros),
    /// When a step of a failover of the group is committed as started (`succeeded: None`)
    /// or as finished with this outcome, plus `delay`.
    OnStep {
        /// The group, by index.
        group: usize,
        /// The step.
        step: StepKind,
        /// `None`: its start; else its end with this outcome.
        succeeded: Option<bool>,
        /// How long after the commit.
        delay: Micros,
    },
}

/// A fault held for a while.
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// When it begins.
    pub trigger: Trigger,
    /// How long it lasts; `None`: to the end of the run.
    pub hold: Option<Micros>,
    /// The fault.
    pub fault: Fault,
}

impl Episode {
    /// A fault at `at` µs, held `hold` µs.
    pub fn at(at: Micros, hold: Micros, fault: Fault) -> Self {
        Episode { trigger: Trigger::At(at), hold: Some(hold), fault }
    }
}

/// An episode as the run goes.
#[derive(Clone, Debug)]
pub struct EpisodeState {
    /// The episode.
    pub episode: Episode,
    /// Its targets as resolved when it was injected.
    resolved: Vec<usize>,
    injected: bool,
    healed: bool,
    /// For a flapping link: whether it is cut now.
    flap_cut: bool,
}

impl EpisodeState {
    /// An episode not yet injected.
    pub fn new(episode: Episode) -> Self {
        EpisodeState { episode, resolved: Vec::new(), injected: false, healed: false, flap_cut: false }
    }

    /// When it is injected, if that is fixed in advance.
    pub fn scheduled_at(&self) -> Option<Micros> {
        match self.episode.trigger {
            Trigger::At(at) => Some(at),
            Trigger::OnStep { .. } => None,
        }
    }

    /// When it heals at the latest, if that is fixed in advance.
    pub fn latest_heal(&self) -> Option<Micros> {
        Some(self.scheduled_at()? + self.episode.hold?)
    }
}

/// The faults in force that actions and Raft consult.
#[derive(Clone, Debug)]
pub struct Active {
    /// Fences that never land, by (group, member), counted.
    pub stuck_fence: BTreeMap<(usize, usize), u32>,
    /// Fences that fail, by (group, member), counted.
    pub failing_fence: BTreeMap<(usize, usize), u32>,
    /// Nodes whose actions are slow, counted.
    pub slow_actions: Vec<u32>,
    /// Nodes that apply late, counted.
    pub apply_lag: Vec<u32>,
    /// One-off tweaks waiting for their action: (group, member, action, tweak).
    tweaks: Vec<(usize, usize, ActionKind, TweakKind)>,
}

impl Active {
    /// Nothing in force, for `nodes` nodes.
    pub fn new(nodes: usize) -> Self {
        Active {
            stuck_fence: BTreeMap::new(),
            failing_fence: BTreeMap::new(),
            slow_actions: vec![0; nodes],
            apply_lag: vec![0; nodes],
            tweaks: Vec::new(),
        }
    }

    /// Takes the tweak waiting for `action` on `member` of `group`, if one is.
    pub fn take_tweak(&mut self, group: usize, member: usize, action: &Action) -> Option<TweakKind> {
        let position = self.tweaks.iter().position(|(tweak_group, tweak_member, kind, _)| {
            *tweak_group == group && *tweak_member == member && kind.matches(action)
        })?;
        Some(self.tweaks.remove(position).3)
    }
}

/// Draws a schedule from `rng`: 2–4 episodes after the warm-up.
pub fn draw(rng: &mut ChaCha8Rng, config: &Config) -> Vec<Episode> {
    let warm_up = config.warm_up.as_micros() as Micros;
    let count = rng.random_range(config.episodes.clone());
    (0..count)
        .map(|_| {
            let at = warm_up + rng.random_range(0..=12_000_000);
            let hold = rng.random_range(500_000..=8_000_000);
            Episode::at(at, hold, draw_fault(rng, config.nodes, config.fence_faults_on_redis))
        })
        .collect()
}

fn draw_fault(rng: &mut ChaCha8Rng, nodes: usize, fence_faults_on_redis: bool) -> Fault {
    let host = |rng: &mut ChaCha8Rng| rng.random_range(0..nodes);
    let two = |rng: &mut ChaCha8Rng| {
        let a = rng.random_range(0..nodes);
        let b = (a + rng.random_range(1..nodes)) % nodes;
        (Target::Index(a), Target::Index(b))
    };
    // Fences of Redis fail or hang only if asked: no guard backs a Redis master whose fence
    // failed, so such a schedule tests what vigil documents it cannot do.
    let fence_group = |rng: &mut ChaCha8Rng| if fence_faults_on_redis { rng.random_range(0..2) } else { 0 };
    let member = |rng: &mut ChaCha8Rng, group: usize| {
        if rng.random_bool(2.0 / 3.0) { Target::Primary(group) } else { Target::Index(rng.random_range(0..nodes)) }
    };
    match rng.random_range(0..16) {
        0 => Fault::Crash(Target::Index(host(rng))),
        1 => Fault::Freeze(Target::Index(host(rng))),
        2 => Fault::Isolate(Target::Index(host(rng))),
        3 => {
            let (a, b) = two(rng);
            Fault::Cut(a, b)
        }
        4 => {
            let split = host(rng);
            let mut others: Vec<usize> = (0..nodes).filter(|&other| other != split).collect();
            let keep = rng.random_range(1..others.len().max(2));
            let from = others.split_off(others.len() - keep.min(others.len()));
            Fault::Split { host: Target::Index(split), from }
        }
        5 => Fault::Isolate(Target::Leader),
        6 => Fault::BlockRaftPort(if rng.random_bool(0.5) { Target::Leader } else { Target::Index(host(rng)) }),
        7 => {
            let (a, b) = two(rng);
            Fault::Flapping(a, b)
        }
        8 => Fault::PacketLoss(Target::Index(host(rng)), 0.3),
        9 => Fault::KillPrimary(rng.random_range(0..2)),
        10 => {
            let group = fence_group(rng);
            Fault::StuckFence { group, member: member(rng, group) }
        }
        11 => {
            let group = fence_group(rng);
            Fault::FailingFence { group, member: member(rng, group) }
        }
        12 => Fault::SlowActions(Target::Index(host(rng))),
        13 => Fault::ApplyLag(Target::Index(host(rng))),
        14 => {
            let group = rng.random_range(0..2);
            Fault::ReplicaLag { group, member: Target::Index(host(rng)) }
        }
        _ => {
            let magnitude = rng.random_range(60_000..=600_000);
            let delta_ms = if rng.random_bool(0.5) { magnitude } else { -magnitude };
            Fault::WallClockStep { node: Target::Index(host(rng)), delta_ms }
        }
    }
}

impl World {
    /// Whom `target` names now.
    fn resolve(&self, target: Target) -> usize {
        let committed = |group: usize| self.raft.canonical.groups.get(&self.groups[group].name);
        match target {
            Target::Index(index) => index,
            Target::Leader => self.raft.leader.unwrap_or(0),
            Target::Primary(group) => committed(group)
                .and_then(|state| state.primary.as_deref())
                .and_then(|name| self.groups[group].index_of(name))
                .unwrap_or(0),
            Target::Candidate(group) => committed(group)
                .and_then(|state| state.running.as_ref())
                .and_then(|run| self.groups[group].index_of(&run.candidate))
                .unwrap_or_else(|| self.resolve(Target::Primary(group))),
        }
    }

    /// Injects the episode now.
    pub(crate) fn inject(&mut self, episode: usize) {
        if self.episodes[episode].injected {
            return;
        }
        self.episodes[episode].injected = true;
        let fault = self.episodes[episode].episode.fault.clone();
        let resolved: Vec<usize> = match &fault {
            Fault::Crash(target)
            | Fault::Freeze(target)
            | Fault::Isolate(target)
            | Fault::BlockRaftPort(target)
            | Fault::PacketLoss(target, _)
            | Fault::SlowActions(target)
            | Fault::ApplyLag(target)
            | Fault::Split { host: target, .. }
            | Fault::StuckFence { member: target, .. }
            | Fault::FailingFence { member: target, .. }
            | Fault::ReplicaLag { member: target, .. }
            | Fault::WallClockStep { node: target, .. }
            | Fault::Tweak { member: target, .. }
            | Fault::Switchover { to: target, .. } => vec![self.resolve(*target)],
            Fault::Cut(a, b) | Fault::Flapping(a, b) => vec![self.resolve(*a), self.resolve(*b)],
            Fault::KillPrimary(group) => vec![self.resolve(Target::Primary(*group))],
        };
        self.episodes[episode].resolved = resolved.clone();
        self.trace.note(self.now, format!("inject {}", self.describe(&fault, &resolved)));
        let first = resolved[0];
        match &fault {
            Fault::Crash(_) => self.crash(first),
            Fault::Freeze(_) => self.nodes[first].frozen = true,
            Fault::Isolate(_) => self.net.isolate(first, true),
            Fault::Cut(..) => self.net.cut(first, resolved[1], true),
            Fault::Split { from, .. } => from.iter().for_each(|&other| self.net.cut(first, other, true)),
            Fault::BlockRaftPort(_) => self.net.block_raft(first, true),
            Fault::Flapping(..) => {
                self.net.cut(first, resolved[1], true);
                self.episodes[episode].flap_cut = true;
                self.schedule(self.now + 1_000_000, Ev::Flap { episode });
            }
            Fault::PacketLoss(_, probability) => self.net.set_loss(first, *probability, true),
            Fault::KillPrimary(group) => self.groups[*group].servers[first].running = false,
            Fault::StuckFence { group, .. } => *self.active.stuck_fence.entry((*group, first)).or_default() += 1,
            Fault::FailingFence { group, .. } => *self.active.failing_fence.entry((*group, first)).or_default() += 1,
            Fault::SlowActions(_) => self.active.slow_actions[first] += 1,
            Fault::ApplyLag(_) => self.active.apply_lag[first] += 1,
            Fault::ReplicaLag { group, .. } => self.groups[*group].servers[first].stalled = true,
            Fault::WallClockStep { delta_ms, .. } => self.nodes[first].clock.step_wall(*delta_ms),
            Fault::Tweak { group, action, tweak, .. } => self.active.tweaks.push((*group, first, *action, *tweak)),
            Fault::Switchover { group, .. } => self.operator_switchover(*group, first),
        }
        if let Some(hold) = self.episodes[episode].episode.hold {
            self.schedule(self.now + hold, Ev::Heal { episode });
        }
    }

    /// Heals the episode now, undoing what its injection did.
    pub(crate) fn heal(&mut self, episode: usize) {
        let state = &mut self.episodes[episode];
        if !state.injected || state.healed {
            return;
        }
        state.healed = true;
        let (fault, resolved) = (state.episode.fault.clone(), state.resolved.clone());
        let flap_cut = std::mem::take(&mut state.flap_cut);
        self.trace.note(self.now, format!("heal {}", self.describe(&fault, &resolved)));
        let first = resolved[0];
        match &fault {
            Fault::Crash(_) => self.restart(first),
            Fault::Freeze(_) => self.thaw(first),
            Fault::Isolate(_) => self.net.isolate(first, false),
            Fault::Cut(..) => self.net.cut(first, resolved[1], false),
            Fault::Split { from, .. } => from.iter().for_each(|&other| self.net.cut(first, other, false)),
            Fault::BlockRaftPort(_) => self.net.block_raft(first, false),
            Fault::Flapping(..) => {
                if flap_cut {
                    self.net.cut(first, resolved[1], false);
                }
            }
            Fault::PacketLoss(_, probability) => self.net.set_loss(first, *probability, false),
            Fault::KillPrimary(group) => self.operator_restarts(*group, first),
            Fault::StuckFence { group, .. } => decrement(&mut self.active.stuck_fence, (*group, first)),
            Fault::FailingFence { group, .. } => decrement(&mut self.active.failing_fence, (*group, first)),
            Fault::SlowActions(_) => self.active.slow_actions[first] -= 1,
            Fault::ApplyLag(_) => self.active.apply_lag[first] -= 1,
            Fault::ReplicaLag { group, .. } => self.groups[*group].servers[first].stalled = false,
            Fault::WallClockStep { delta_ms, .. } => self.nodes[first].clock.step_wall(-delta_ms),
            Fault::Tweak { group, action, .. } => {
                self.active.tweaks.retain(|(g, m, kind, _)| !(*g == *group && *m == first && kind == action))
            }
            Fault::Switchover { .. } => {}
        }
        for group in 0..self.groups.len() {
            self.check_writers(group);
        }
    }

    /// A flapping link changes state, every second while the episode lasts.
    pub(crate) fn flap(&mut self, episode: usize) {
        let state = &mut self.episodes[episode];
        if state.healed {
            return;
        }
        let (a, b) = (state.resolved[0], state.resolved[1]);
        state.flap_cut = !state.flap_cut;
        let cut = state.flap_cut;
        self.net.cut(a, b, cut);
        self.schedule(self.now + 1_000_000, Ev::Flap { episode });
    }

    /// Injects the episodes waiting for the entry just committed at `index`.
    pub(crate) fn fire_commit_triggers(&mut self, index: u64) {
        let Payload::Command(command) = &self.raft.entries[index as usize - 1].payload else { return };
        let (group_name, step_index, outcome) = match command {
            Command::StepStarted { group, index, .. } => (group, *index, None),
            Command::StepFinished { group, index, succeeded, .. } => (group, *index, Some(*succeeded)),
            _ => return,
        };
        let Some(step) = self
            .raft
            .canonical
            .groups
            .get(group_name)
            .and_then(|state| state.running.as_ref())
            .and_then(|run| run.steps.get(step_index))
            .map(|step| step.step.clone())
        else {
            return;
        };
        let group_index = self.groups.iter().position(|group| &group.name == group_name);
        for episode in 0..self.episodes.len() {
            let state = &self.episodes[episode];
            if state.injected {
                continue;
            }
            if let Trigger::OnStep { group, step: kind, succeeded, delay } = state.episode.trigger
                && Some(group) == group_index
                && kind.matches(&step)
                && succeeded == outcome
            {
                if delay == 0 {
                    self.inject(episode);
                } else {
                    self.schedule(self.now + delay, Ev::Inject { episode });
                }
            }
        }
    }

    /// The node's process dies with everything in flight; its guard lives on.
    fn crash(&mut self, node: usize) {
        let sim = &mut self.nodes[node];
        sim.up = false;
        sim.frozen = false;
        sim.coordinator = None;
        sim.incarnation += 1;
        sim.deferred.clear();
        self.raft.peers[node].believed = None;
        if self.raft.leader == Some(node) {
            // A leader that dies is a leader no more: the next one is elected.
            self.raft.leader = None;
        }
    }

    /// A new process on the crashed node, on the state it had applied.
    fn restart(&mut self, node: usize) {
        let coordinator = self.new_coordinator(node);
        let sim = &mut self.nodes[node];
        sim.up = true;
        sim.coordinator = Some(coordinator);
        sim.last_handled = self.now;
        self.start_node_timers(node);
        self.schedule_apply(node);
    }

    /// The frozen node runs again and handles, in order, what came meanwhile.
    fn thaw(&mut self, node: usize) {
        self.nodes[node].frozen = false;
        for ev in std::mem::take(&mut self.nodes[node].deferred) {
            self.process(ev);
        }
    }

    /// At the heal of a killed primary, a Redis server is started again by an operator (vigil
    /// never starts redis-server) the way its configuration and the cluster's status say: as
    /// a replica of the primary the cluster committed, or of the candidate of the failover
    /// running; as the master it was, with its configuration file's settings (writable), if
    /// the cluster still holds it to be the primary with no failover running. vigil brings a
    /// PostgreSQL server back itself.
    fn operator_restarts(&mut self, group: usize, member: usize) {
        if self.groups[group].kind != Kind::Redis || self.groups[group].servers[member].running {
            return;
        }
        let committed = self.raft.canonical.groups.get(&self.groups[group].name);
        let follow = committed.and_then(|state| match &state.running {
            Some(run) => Some(run.candidate.clone()),
            None => state.primary.clone(),
        });
        let follow = follow.and_then(|name| self.groups[group].index_of(&name)).filter(|&index| index != member);
        let server: &mut Server = &mut self.groups[group].servers[member];
        server.running = true;
        server.streaming = false;
        match follow {
            Some(primary) => (server.primary, server.fenced, server.upstream) = (false, false, Some(primary)),
            None => server.fenced = false,
        }
        let words = if server.primary { "as the master" } else { "as a replica" };
        let name = server.name.clone();
        self.trace.note(self.now, format!("operator starts {name} again {words}"));
    }

    /// An operator asks for a switchover: planned by the decision on the leader's applied
    /// state, committed through the leader as the API would.
    fn operator_switchover(&mut self, group: usize, to: usize) {
        let alive = self.alive();
        let Some(leader) = self.raft.effective(&alive, &self.net) else {
            self.trace.note(self.now, "switchover refused: no leader");
            return;
        };
        let name = self.groups[group].name.clone();
        let candidate = self.groups[group].servers[to].name.clone();
        let state = &self.nodes[leader].state;
        let Some(policy) = state.spec.group(&name).map(|group| group.policy()) else { return };
        let Some(group_state) = state.groups.get(&name) else { return };
        let (voters, nodes) = (state.voter_ids(), state.nodes());
        let now_ms = self.nodes[leader].clock.wall_ms(self.now);
        let situation = Situation {
            spec: &policy,
            state: group_state,
            voters: &voters,
            nodes: &nodes,
            now_ms,
            primary_lease_run_out: false,
        };
        match plan_requested(&situation, Some(&candidate), false) {
            Ok(plan) => {
                let command = Command::BeginFailover {
                    group: name,
                    kind: plan.kind,
                    reason: plan.reason,
                    old_primary: plan.old_primary,
                    candidate: plan.candidate,
                    plan: plan.steps,
                    detected_at_ms: plan.detected_at_ms,
                    decided_at_ms: now_ms,
                    old_primary_lsn: plan.old_primary_lsn,
                    candidate_lsn: plan.candidate_lsn,
                    proposer: crate::cluster::node_id(leader),
                };
                self.commit(command, None);
            }
            Err(refusal) => self.trace.note(self.now, format!("switchover refused: {refusal}")),
        }
    }

    fn describe(&self, fault: &Fault, resolved: &[usize]) -> String {
        let first = resolved[0] + 1;
        let member = |group: usize| format!("{}", self.groups[group].servers[resolved[0]].name);
        match fault {
            Fault::Crash(_) => format!("crash of n{first}"),
            Fault::Freeze(_) => format!("freeze of n{first}"),
            Fault::Isolate(_) => format!("isolation of host {first}"),
            Fault::Cut(..) => format!("cut between hosts {first} and {}", resolved[1] + 1),
            Fault::Split { from, .. } => format!(
                "cut of host {first} from hosts {}",
                from.iter().map(|other| (other + 1).to_string()).collect::<Vec<_>>().join(",")
            ),
            Fault::BlockRaftPort(_) => format!("Raft port of n{first} blocked"),
            Fault::Flapping(..) => format!("flapping link between hosts {first} and {}", resolved[1] + 1),
            Fault::PacketLoss(_, probability) => format!("{:.0} % packet loss on host {first}", probability * 100.0),
            Fault::KillPrimary(group) => format!("kill of {}", member(*group)),
            Fault::StuckFence { group, .. } => format!("stuck fences of {}", member(*group)),
            Fault::FailingFence { group, .. } => format!("failing fences of {}", member(*group)),
            Fault::SlowActions(_) => format!("slow actions on n{first}"),
            Fault::ApplyLag(_) => format!("apply lag on n{first}"),
            Fault::ReplicaLag { group, .. } => format!("replication stalled on {}", member(*group)),
            Fault::WallClockStep { delta_ms, .. } => format!("wall clock of n{first} stepped by {} s", delta_ms / 1000),
            Fault::Tweak { group, action, tweak, .. } => format!("next {action:?} of {}: {tweak:?}", member(*group)),
            Fault::Switchover { group, .. } => {
                format!("operator switchover of {} to {}", self.groups[*group].name, member(*group))
            }
        }
    }
}

fn decrement(counts: &mut BTreeMap<(usize, usize), u32>, key: (usize, usize)) {
    if let Some(count) = counts.get_mut(&key) {
        *count = count.saturating_sub(1);
    }
}
