//! What injecting and healing each fault does to the world ([`crate::faults`] says what the
//! faults are): targets are resolved when an episode is injected, and the heal undoes
//! exactly what the injection did. Also here: the operator, who restarts a killed Redis
//! server and asks for switchovers.

use std::collections::BTreeMap;

use vigil_consensus::Command;
use vigil_consensus::decision::{Situation, plan_requested};

use crate::faults::{Fault, Target, Trigger};
use crate::raft::Payload;
use crate::servers::{Kind, Server};
use crate::world::{Ev, World};

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
            Target::Standby(group) => {
                let primary = self.resolve(Target::Primary(group));
                committed(group)
                    .and_then(|state| state.sync_standbys.iter().next())
                    .and_then(|name| self.groups[group].index_of(name))
                    .unwrap_or((primary + 1) % self.groups[group].servers.len())
            }
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
    /// never starts redis-server), as the README asks: as a replica of the primary the
    /// cluster committed, or, if that is still this member, as a master that refuses writes
    /// until its node lifts the fence. vigil brings a PostgreSQL server back itself.
    fn operator_restarts(&mut self, group: usize, member: usize) {
        if self.groups[group].kind != Kind::Redis || self.groups[group].servers[member].running {
            return;
        }
        let primary = self
            .raft
            .canonical
            .groups
            .get(&self.groups[group].name)
            .and_then(|state| state.primary.as_deref())
            .and_then(|name| self.groups[group].index_of(name))
            .filter(|&index| index != member);
        let server: &mut Server = &mut self.groups[group].servers[member];
        server.running = true;
        server.streaming = false;
        server.fenced = primary.is_none();
        if let Some(primary) = primary {
            (server.primary, server.upstream) = (false, Some(primary));
        }
        let words = if server.primary { "as the master, refusing writes" } else { "as a replica" };
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
        let (Some(policy), Some(group_state)) =
            (state.spec.group(&name).map(|group| group.policy()), state.groups.get(&name))
        else {
            self.trace.note(self.now, format!("switchover refused: the leader knows no group {name}"));
            return;
        };
        let (voters, nodes) = (state.voter_ids(), state.nodes());
        let now_ms = self.nodes[leader].clock.wall_ms(self.now);
        let situation = Situation {
            spec: &policy,
            state: group_state,
            voters: &voters,
            nodes: &nodes,
            now_ms,
            primary_lease_run_out: false,
            // As the API plans it: the leader's promote step judges the node's reach.
            unreachable: &std::collections::BTreeSet::new(),
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
                self.commit(command, None, None);
            }
            Err(refusal) => self.trace.note(self.now, format!("switchover refused: {refusal}")),
        }
    }

    fn describe(&self, fault: &Fault, resolved: &[usize]) -> String {
        let first = resolved[0] + 1;
        let member = |group: usize| self.groups[group].servers[resolved[0]].name.clone();
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
