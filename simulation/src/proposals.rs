//! Proposals travelling through the simulated Raft, as `Cluster::propose` carries them in
//! the node (consensus/src/cluster.rs): to the leader the proposer believes in (or straight
//! into its own log when it leads), answered once the leader applied the entry; relayed
//! through another voter after [`RELAY_AFTER`] when an idempotent command's direct path does
//! not answer; asked again every 100 ms for up to [`NO_LEADER_GRACE`] while no leader is
//! known; and committed late, or never, when the leader it reached lost its majority first.
//!
//! Also here: Raft's own rhythm (elections, who hears whom, replication to the nodes that
//! were cut off) and each node applying what it holds, which is what feeds
//! [`Event::Applied`] to its coordinator.

use rand::Rng;
use vigil_consensus::cluster::{NO_LEADER_GRACE, RELAY_AFTER};
use vigil_consensus::coordinator::{EffectId, Event, Outcome, ProposeError};
use vigil_consensus::{Command, CommandResponse};

use crate::check;
use crate::clock::Micros;
use crate::raft::{self, ELECTION_TIMEOUT_US, Reply};
use crate::world::{Ev, NodeEv, World};

/// What a node asks of the leader.
#[derive(Clone, Debug)]
pub(crate) enum Request {
    /// Commit this command; `seen` is how far the proposer had applied when it asked.
    Write {
        /// The command (boxed: a read index carries nothing).
        command: Box<Command>,
        /// The proposer's applied index when it proposed.
        seen: u64,
    },
    /// Say how far the log is committed (a read index), for a node catching up.
    ReadIndex,
}

/// A request whose node waits for its answer.
#[derive(Clone, Debug)]
pub(crate) struct Proposal {
    pub(crate) node: usize,
    pub(crate) incarnation: u32,
    pub(crate) effect: EffectId,
    pub(crate) request: Request,
    pub(crate) started: Micros,
    pub(crate) idempotent: bool,
    pub(crate) relayed: bool,
    /// A catch-up that has its read index: it is answered once its node applied this far.
    pub(crate) awaiting_index: Option<u64>,
}

/// How often a proposer with no leader asks again.
const NO_LEADER_RETRY_US: Micros = 100_000;

fn is_idempotent(command: &Command) -> bool {
    matches!(command, Command::RenewLease { .. } | Command::ReportVerdict { .. } | Command::ReleaseLease { .. })
}

impl World {
    /// `node` proposes `command` for its effect `effect`, answered within `timeout` of its clock.
    pub(crate) fn propose(&mut self, node: usize, effect: EffectId, command: Command, timeout: std::time::Duration) {
        let seen = self.raft.peers[node].applied;
        self.submit(node, effect, Request::Write { command: Box::new(command), seen }, timeout);
    }

    /// `node` catches up with the cluster (`Cluster::catch_up`): it asks the leader for a read
    /// index as it would submit a write (never relayed), then waits until it has applied
    /// that far; answered within `timeout` of its clock.
    pub(crate) fn catch_up(&mut self, node: usize, effect: EffectId, timeout: std::time::Duration) {
        self.submit(node, effect, Request::ReadIndex, timeout);
    }

    fn submit(&mut self, node: usize, effect: EffectId, request: Request, timeout: std::time::Duration) {
        let proposal = self.next_proposal;
        self.next_proposal += 1;
        let idempotent = matches!(&request, Request::Write { command, .. } if is_idempotent(command));
        let incarnation = self.nodes[node].incarnation;
        self.proposals.insert(
            proposal,
            Proposal {
                node,
                incarnation,
                effect,
                request,
                started: self.now,
                idempotent,
                relayed: false,
                awaiting_index: None,
            },
        );
        let deadline = self.now + self.nodes[node].clock.true_span(timeout);
        self.schedule(deadline, Ev::ProposalTimeout { proposal });
        self.route(proposal);
    }

    /// Sends the proposal to the leader its proposer believes in now.
    pub(crate) fn route(&mut self, proposal: u64) {
        let Some(waiting) = self.proposals.get(&proposal) else { return };
        if waiting.awaiting_index.is_some() {
            return;
        }
        let (from, idempotent, relayed, request) =
            (waiting.node, waiting.idempotent, waiting.relayed, waiting.request.clone());
        match self.raft.believed(from) {
            Some(leader) if leader == from => self.arrive(proposal, from, vec![from], request),
            Some(leader) => {
                if self.net.delivers_raft(from, leader, &mut self.rng) {
                    let at = self.now + self.latency(from, leader);
                    self.schedule(at, Ev::Arrive { proposal, at: leader, path: vec![from, leader], request });
                }
                // A cut link hangs the forward: only the timeout, or a relay, answers.
                if idempotent && !relayed {
                    self.schedule(self.now + RELAY_AFTER.as_micros() as Micros, Ev::Relay { proposal });
                }
            }
            None => {
                if !(idempotent && self.relay(proposal)) {
                    self.retry_later(proposal);
                }
            }
        }
    }

    /// Asks again in 100 ms while the grace for finding a leader lasts; then "no leader".
    pub(crate) fn retry_later(&mut self, proposal: u64) {
        let Some(waiting) = self.proposals.get(&proposal) else { return };
        let next = self.now + NO_LEADER_RETRY_US;
        if next <= waiting.started + NO_LEADER_GRACE.as_micros() as Micros {
            self.schedule(next, Ev::Retry { proposal });
        } else {
            self.answer(proposal, Err(ProposeError::NoLeader));
        }
    }

    /// The relay after `RELAY_AFTER`, once.
    pub(crate) fn relay_once(&mut self, proposal: u64) {
        let Some(waiting) = self.proposals.get_mut(&proposal) else { return };
        if waiting.relayed {
            return;
        }
        waiting.relayed = true;
        self.relay(proposal);
    }

    /// Hands an idempotent proposal to the first other voter that can pass it to a leader;
    /// whether one could.
    fn relay(&mut self, proposal: u64) -> bool {
        let Some(waiting) = self.proposals.get(&proposal) else { return false };
        let (from, request) = (waiting.node, waiting.request.clone());
        let direct = self.raft.believed(from);
        let alive = self.alive();
        for (peer, &up) in alive.iter().enumerate() {
            if peer == from || Some(peer) == direct || !up || !self.net.raft_link(from, peer) {
                continue;
            }
            let Some(leader) = self.raft.believed(peer) else { continue };
            if leader != peer && !self.net.raft_link(peer, leader) {
                continue;
            }
            if !self.net.delivers_raft(from, peer, &mut self.rng) {
                return false;
            }
            let mut at = self.now + self.latency(from, peer);
            let mut path = vec![from, peer];
            if leader != peer {
                at += self.latency(peer, leader);
                path.push(leader);
            }
            self.schedule(at, Ev::Arrive { proposal, at: leader, path, request });
            return true;
        }
        false
    }

    /// A request reaches node `at`. A write is queued for commit if `at` is the leader; a read
    /// index is answered if `at` leads with a majority (a heartbeat round confirms it); either
    /// is dropped if `at` only believes it leads (it will step down), sent back if it follows.
    pub(crate) fn arrive(&mut self, proposal: u64, at: usize, path: Vec<usize>, request: Request) {
        let node = &mut self.nodes[at];
        if !node.up {
            return;
        }
        if node.frozen {
            node.deferred.push(Ev::Arrive { proposal, at, path, request });
            return;
        }
        if self.raft.leader == Some(at) {
            let alive = self.alive();
            let effective = self.raft.effective(&alive, &self.net).is_some();
            match request {
                Request::Write { command, seen } => {
                    let pending = self.raft.enqueue(*command, seen, Reply { proposal, path });
                    if effective {
                        self.schedule_commit(pending);
                    }
                }
                Request::ReadIndex if effective => {
                    let index = self.raft.last_index();
                    let heartbeat = self.rng.random_range(1_000..=4_000);
                    let back: Vec<usize> = path.iter().rev().copied().collect();
                    if let Some(after) = self.path_latency(&back) {
                        self.schedule(self.now + heartbeat + after, Ev::ReadIndex { proposal, index });
                    }
                }
                // A leader without its majority cannot confirm a read: the node times out.
                Request::ReadIndex => {}
            }
        } else if self.raft.believed(at) != Some(at) {
            // A follower answers "not the leader"; the proposer asks again.
            let back = path[path.len() - 2..].iter().rev().copied().collect::<Vec<_>>();
            if let Some(after) = self.path_latency(&back) {
                self.schedule(self.now + after, Ev::Bounce { proposal });
            }
        }
    }

    fn schedule_commit(&mut self, pending: u64) {
        let latency = if self.rng.random_bool(0.05) {
            self.rng.random_range(20_000..=100_000)
        } else {
            self.rng.random_range(1_000..=5_000)
        };
        if let Some(entry) = self.raft.pending.iter_mut().find(|entry| entry.id == pending) {
            entry.commit_scheduled = true;
        }
        self.schedule(self.now + latency, Ev::Commit { pending });
    }

    /// The leader commits a pending proposal, if it still leads with a majority.
    pub(crate) fn commit_pending(&mut self, pending: u64) {
        let alive = self.alive();
        if self.raft.effective(&alive, &self.net).is_none() {
            if let Some(entry) = self.raft.pending.iter_mut().find(|entry| entry.id == pending) {
                entry.commit_scheduled = false;
            }
            return;
        }
        let Some(entry) = self.raft.take_pending(pending) else { return };
        self.commit(entry.command, Some(entry.reply), Some(entry.seen));
    }

    /// Commits `command` now; its answer, if any, waits for the leader to apply it. `seen` is
    /// how far its proposer had applied when it proposed, if a node proposed it.
    pub(crate) fn commit(&mut self, command: Command, reply: Option<Reply>, seen: Option<u64>) {
        let leader = self.raft.leader.expect("a commit has a leader");
        let (index, response) = self.raft.commit(command, self.now);
        if let Some(reply) = reply {
            self.raft.waiting_answers.insert(index, (leader, reply, response.clone()));
        }
        self.committed(index, &response, seen);
        // Scenario faults that wait for this commit come first: a host cut "right after the
        // promotion commits" is cut before any node but the leader holds the entry.
        self.fire_commit_triggers(index);
        let alive = self.alive();
        for (node, &up) in alive.iter().enumerate() {
            if up && (node == leader || self.net.raft_link(leader, node)) {
                self.raft.peers[node].replicated = index;
                self.schedule_apply(node);
            }
        }
    }

    /// Schedules `node` to apply what it holds, after its apply lag, in order.
    pub(crate) fn schedule_apply(&mut self, node: usize) {
        let lag = self.apply_lag(node);
        let peer = &mut self.raft.peers[node];
        let at = (self.now + lag).max(peer.apply_at);
        peer.apply_at = at;
        let upto = peer.replicated;
        let incarnation = self.nodes[node].incarnation;
        self.schedule(at, Ev::Node { node, incarnation, what: NodeEv::Apply { upto } });
    }

    /// `node` applies the entries it holds up to `upto`, answers the proposals it committed
    /// as leader, and tells its coordinator.
    pub(crate) fn apply_entries(&mut self, node: usize, upto: u64) {
        let last = upto.min(self.raft.peers[node].replicated);
        let first = self.raft.peers[node].applied + 1;
        if first > last {
            return;
        }
        for index in first..=last {
            raft::apply(&mut self.nodes[node].state, index, &self.raft.entries[index as usize - 1]);
            if self.raft.waiting_answers.get(&index).is_some_and(|(leader, ..)| *leader == node) {
                let (_, reply, response) = self.raft.waiting_answers.remove(&index).expect("just seen");
                let back: Vec<usize> = reply.path.iter().rev().copied().collect();
                if let Some(after) = self.path_latency(&back) {
                    self.schedule(self.now + after, Ev::Answer { proposal: reply.proposal, outcome: Ok(response) });
                }
            }
        }
        self.raft.peers[node].applied = last;
        // Told at the node's next tick, or seen by whatever call comes first.
        self.nodes[node].applied_unseen = true;
        let caught_up: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, waiting)| waiting.node == node && waiting.awaiting_index.is_some_and(|index| index <= last))
            .map(|(proposal, _)| *proposal)
            .collect();
        for proposal in caught_up {
            self.answer(proposal, Ok(CommandResponse::Empty));
        }
    }

    /// How long a message takes along `path` (node by node), if every hop delivers it now.
    fn path_latency(&mut self, path: &[usize]) -> Option<Micros> {
        let mut total = 0;
        for hop in path.windows(2) {
            if !self.net.delivers_raft(hop[0], hop[1], &mut self.rng) {
                return None;
            }
            total += self.latency(hop[0], hop[1]);
        }
        Some(total)
    }

    /// A catch-up has its read index: it is answered once its node applied that far.
    pub(crate) fn read_index(&mut self, proposal: u64, index: u64) {
        let Some(waiting) = self.proposals.get_mut(&proposal) else { return };
        waiting.awaiting_index = Some(index);
        if self.raft.peers[waiting.node].applied >= index {
            self.answer(proposal, Ok(CommandResponse::Empty));
        }
    }

    /// The proposer gets its answer, unless it already had one (or restarted since).
    pub(crate) fn answer(&mut self, proposal: u64, outcome: Result<CommandResponse, ProposeError>) {
        let Some(waiting) = self.proposals.remove(&proposal) else { return };
        let outcome = match waiting.request {
            Request::Write { .. } => Outcome::Proposed(outcome),
            Request::ReadIndex => Outcome::CaughtUp(outcome.map(drop)),
        };
        let event = Event::Done { id: waiting.effect, outcome };
        self.at_node(waiting.node, waiting.incarnation, NodeEv::Deliver(Box::new(event)));
    }

    /// Raft's rhythm: who hears whom; an election when the leader is not effective;
    /// replication to the nodes that were cut off; commits that waited for a majority.
    pub(crate) fn raft_tick(&mut self) {
        let alive = self.alive();
        self.raft.refresh_beliefs(self.now, &alive, &self.net, &mut self.rng);
        match self.raft.effective(&alive, &self.net) {
            Some(leader) => {
                self.raft.election_at = None;
                let last = self.raft.last_index();
                for (node, &up) in alive.iter().enumerate() {
                    let behind = self.raft.peers[node].replicated < last;
                    if up && behind && (node == leader || self.net.raft_link(leader, node)) {
                        self.raft.peers[node].replicated = last;
                        self.schedule_apply(node);
                    }
                }
                let waiting: Vec<u64> =
                    self.raft.pending.iter().filter(|entry| !entry.commit_scheduled).map(|entry| entry.id).collect();
                for pending in waiting {
                    self.schedule_commit(pending);
                }
            }
            None => {
                if self.raft.election_at.is_none() {
                    let at = self.now + self.rng.random_range(ELECTION_TIMEOUT_US);
                    self.raft.election_at = Some(at);
                    self.schedule(at, Ev::Election);
                }
            }
        }
    }

    /// The election: a new leader if some node reaches a majority; what the old leader left
    /// uncommitted is committed now (half the time) or lost, and its proposers never hear.
    pub(crate) fn election(&mut self) {
        if self.raft.election_at != Some(self.now) {
            return;
        }
        self.raft.election_at = None;
        let alive = self.alive();
        match self.raft.elect(&alive, &self.net, &mut self.rng) {
            Some((winner, left)) => {
                self.raft.elected_at = self.now;
                let term = self.raft.term;
                self.trace.note(self.now, format!("leader n{} (term {term})", winner + 1));
                for entry in left {
                    if self.rng.random_bool(0.5) {
                        self.commit(entry.command, None, Some(entry.seen));
                    }
                }
            }
            None if self.raft.effective(&alive, &self.net).is_none() => {
                let at = self.now + self.rng.random_range(ELECTION_TIMEOUT_US);
                self.raft.election_at = Some(at);
                self.schedule(at, Ev::Election);
            }
            None => {}
        }
    }

    /// What a commit means for the checkers and the trace.
    fn committed(&mut self, index: u64, response: &CommandResponse, seen: Option<u64>) {
        let raft::Payload::Command(command) = self.raft.entries[index as usize - 1].payload.clone() else { return };
        let applied = !matches!(response, CommandResponse::Refused { .. });
        if self.config.verbose && !matches!(command, Command::ReportVerdict { .. }) {
            self.trace.note(self.now, format!("  commit #{index}: {command} -> {response:?}"));
        }
        match (&command, response) {
            (
                Command::BeginFailover { group, candidate, reason, .. },
                CommandResponse::RunStarted { run_id, epoch },
            ) => {
                self.ledger.begun.insert((group.clone(), *run_id), self.now);
                self.trace.note(
                    self.now,
                    format!("begin failover of {group} #{run_id} to {candidate} (epoch {epoch}): {reason}"),
                );
            }
            (Command::BeginFailover { group, candidate, .. }, CommandResponse::Refused { reason }) => {
                self.trace.note(self.now, format!("failover of {group} to {candidate} refused: {reason}"));
            }
            (Command::FinishFailover { group, run_id, succeeded, outcome, .. }, _) if applied => {
                *self.ledger.finished.entry((group.clone(), *run_id)).or_default() += 1;
                self.trace.note(self.now, format!("finish failover of {group} #{run_id} ok={succeeded}: {outcome}"));
            }
            (Command::StepStarted { group, run_id, index: step, by, .. }, _) if applied => {
                let key = (group.clone(), *run_id, *step);
                let started = check::StepEvent::Started { proposer_saw: seen };
                let violation = check::step_timed_by_elapsed_time(&mut self.ledger, key, started, index, self.now);
                self.violated(violation);
                let name = self.step_name(group, *step);
                self.trace.note(self.now, format!("{group} #{run_id} step {step} ({name}) started on n{by}"));
            }
            (Command::StepStarted { group, run_id, index: step, .. }, CommandResponse::Refused { reason }) => {
                self.trace.note(self.now, format!("{group} #{run_id} start of step {step} refused: {reason}"));
            }
            (Command::StepFinished { group, run_id, index: step, succeeded, detail, .. }, _) if applied => {
                if !succeeded {
                    let key = (group.clone(), *run_id, *step);
                    let failed = check::StepEvent::Failed { detail };
                    let violation = check::step_timed_by_elapsed_time(&mut self.ledger, key, failed, index, self.now);
                    self.violated(violation);
                }
                let name = self.step_name(group, *step);
                self.trace.note(self.now, format!("{group} #{run_id} step {step} ({name}) ok={succeeded}: {detail}"));
            }
            (Command::RecordPrimary { group, member, .. }, _) if applied => {
                self.trace.note(self.now, format!("{group}: primary recorded: {member}"));
            }
            (Command::ReleaseLease { group, member, reason, .. }, CommandResponse::Applied) => {
                self.trace.note(self.now, format!("{group}: lease of {member} released: {reason}"));
            }
            (Command::SetBlocked { group, reason: Some(reason) }, _) => {
                self.trace.note(self.now, format!("{group}: blocked: {reason}"));
            }
            _ => {}
        }
    }

    /// The name of step `index` of `group`'s running run, as committed.
    pub(crate) fn step_name(&self, group: &str, index: usize) -> String {
        self.raft
            .canonical
            .groups
            .get(group)
            .and_then(|state| state.running.as_ref())
            .and_then(|run| run.steps.get(index))
            .map(|step| step.step.to_string())
            .unwrap_or_default()
    }
}
