//! The world: nodes (each a real [`Coordinator`] with its own clocks and applied state), the
//! simulated Raft, the network, the fake servers and their guards, the fault schedule, and
//! the one event queue that drives them all in true time.
//!
//! Architecture Invariant: a run is a function of its seed and [`Config`]: one thread, one
//! seeded ChaCha8 generator, `BTreeMap`s, and a queue ordered by (time, sequence number).
//! Nothing reads the OS clock.
//!
//! Every node gets [`Event::Tick`] at least every [`TICK`] of its own clock: a tick is
//! skipped when the node handled another event within that time, since every call of
//! `handle` runs every rule. Entries a node applies are in its state at once; its
//! coordinator is told with [`Event::Applied`] at its next tick (at most a tick later, as
//! part of the apply lag), or sees them in the call of whatever event comes first — for the
//! coordinator, `Applied` and `Tick` are the same call — which spares a call per entry.
//!
//! A frozen node handles nothing: the events meant for it wait and are handled, in order,
//! when it thaws. A crashed node's coordinator is dropped with
//! everything in flight; what it started still happens in the world, but no outcome reaches
//! the new coordinator, which starts on the state the node had applied.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil_consensus::coordinator::{
    self, ActionFailure, ActionReport, Coordinator, Ctx, Event, Followers, ProposeError, Seen, TICK,
};
use vigil_consensus::spec::{DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT};
use vigil_consensus::{ClusterState, CommandResponse};

use crate::check::{self, RunLedger, Violation};
use crate::clock::{Clock, MAX_RATE_DEVIATION, Micros};
use crate::cluster::{self, POSTGRES_GROUP, REDIS_GROUP};
use crate::config::{Config, RunResult, Stats};
use crate::faults::{self, Active, EpisodeState};
use crate::guard::Guard;
use crate::net::{self, Net};
use crate::raft::{Payload, Raft};
use crate::servers::{Group, Kind};
use crate::trace::Trace;

/// Runs the schedule of `seed` (or the fixed one in `config`) and checks it.
pub fn run(seed: u64, config: &Config) -> RunResult {
    World::new(seed, config.clone()).run()
}

/// One node of the world.
pub(crate) struct NodeSim {
    pub(crate) clock: Clock,
    pub(crate) coordinator: Option<Coordinator>,
    /// Counts restarts: events meant for an earlier life are dropped.
    pub(crate) incarnation: u32,
    pub(crate) up: bool,
    pub(crate) frozen: bool,
    /// Events that came while the node was frozen, in order.
    pub(crate) deferred: Vec<Ev>,
    /// The state this node has applied.
    pub(crate) state: ClusterState,
    /// When it last handled an event (true time).
    pub(crate) last_handled: Micros,
    /// It applied entries its coordinator has not been called since.
    pub(crate) applied_unseen: bool,
}

/// Something that happens at a moment of true time.
#[derive(Debug)]
pub(crate) enum Ev {
    /// Meant for one life of one node (deferred while it is frozen).
    Node { node: usize, incarnation: u32, what: NodeEv },
    /// Raft looks at who leads and who hears whom.
    RaftTick,
    /// The pending election is held.
    Election,
    /// A request's message reaches node `at`, having come along `path`.
    Arrive { proposal: u64, at: usize, path: Vec<usize>, request: crate::proposals::Request },
    /// A catch-up's read index reaches its node.
    ReadIndex { proposal: u64, index: u64 },
    /// A leader told the proposer it does not lead: the proposer asks again.
    Bounce { proposal: u64 },
    /// The leader commits a pending proposal.
    Commit { pending: u64 },
    /// A proposal's answer reaches its proposer.
    Answer { proposal: u64, outcome: Result<CommandResponse, ProposeError> },
    /// The proposer asks again (no leader known).
    Retry { proposal: u64 },
    /// The proposer hands an idempotent proposal to other voters.
    Relay { proposal: u64 },
    /// The proposal's timeout.
    ProposalTimeout { proposal: u64 },
    /// An action reaches its server.
    Land { action: u64 },
    /// A waiting action looks again.
    Poll { action: u64 },
    /// An action's outcome reaches its node.
    ActionAnswer { action: u64, outcome: Result<ActionReport, ActionFailure> },
    /// The action's timeout.
    ActionTimeout { action: u64 },
    /// The clients write and the replicas replicate.
    ServerTick,
    /// A guard's deadline.
    GuardFire { host: usize, group: usize, generation: u64 },
    /// A fault episode begins.
    Inject { episode: usize },
    /// A fault episode ends.
    Heal { episode: usize },
    /// A flapping link changes.
    Flap { episode: usize },
    /// The run ends.
    End,
}

/// What happens to a node.
#[derive(Debug)]
pub(crate) enum NodeEv {
    /// Its ticker.
    Tick,
    /// It probes one member (one probe task per member, as the node's prober runs them).
    Probe { group: usize, member: usize },
    /// An event for its coordinator (boxed: most events of the queue are small).
    Deliver(Box<Event>),
    /// It applies the entries it holds, up to `upto`.
    Apply { upto: u64 },
}

struct Scheduled {
    at: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    // Reversed: the heap pops the earliest first, and of two at once the one scheduled first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The whole simulated world.
pub(crate) struct World {
    pub(crate) config: Config,
    pub(crate) seed: u64,
    pub(crate) now: Micros,
    pub(crate) rng: ChaCha8Rng,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    pub(crate) nodes: Vec<NodeSim>,
    pub(crate) raft: Raft,
    pub(crate) net: Net,
    pub(crate) groups: Vec<Group>,
    pub(crate) guards: Vec<Guard>,
    pub(crate) proposals: BTreeMap<u64, crate::proposals::Proposal>,
    pub(crate) next_proposal: u64,
    pub(crate) actions: BTreeMap<u64, crate::effects::ActionRun>,
    pub(crate) next_action: u64,
    pub(crate) active: Active,
    pub(crate) episodes: Vec<EpisodeState>,
    pub(crate) ledger: RunLedger,
    pub(crate) violations: Vec<Violation>,
    /// Per group, the writable members last reported as too many, so one overlap is one
    /// violation.
    last_dual: Vec<Vec<usize>>,
    pub(crate) trace: Trace,
    pub(crate) stats: Stats,
    /// When the faults are over (the settle phase starts).
    last_heal: Micros,
    /// The latest the run may go on waiting for convergence.
    give_up_at: Micros,
    ended: bool,
}

/// How often the clients write and the replicas replicate.
const SERVER_TICK_US: Micros = 20_000;
/// How often Raft looks at who leads and who hears whom.
const RAFT_TICK_US: Micros = 50_000;

impl World {
    fn new(seed: u64, config: Config) -> Self {
        let nodes_count = config.nodes;
        // The schedule has a generator of its own, so the world's randomness does not move it.
        let mut schedule_rng = ChaCha8Rng::seed_from_u64(seed);
        let schedule = match &config.schedule {
            Some(schedule) => schedule.clone(),
            None => faults::draw(&mut schedule_rng, &config),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed0f_c1a5_7e25);
        let first_leader = config.first_leader.unwrap_or_else(|| rng.random_range(0..nodes_count));
        let bootstrap = vec![
            Payload::Membership(cluster::membership(nodes_count)),
            Payload::Command(cluster::apply_spec(nodes_count)),
        ];
        let raft = Raft::new(nodes_count, bootstrap, first_leader);
        let nodes = (0..nodes_count)
            .map(|_| {
                let rate = 1.0 + rng.random_range(-MAX_RATE_DEVIATION..=MAX_RATE_DEVIATION);
                let clock = Clock::new(rng.random_range(1_000_000..=50_000_000), rate, rng.random_range(-20..=20));
                NodeSim {
                    clock,
                    coordinator: Some(Coordinator::new(0, coordinator::Config::default())),
                    incarnation: 0,
                    up: true,
                    frozen: false,
                    deferred: Vec::new(),
                    state: raft.canonical.clone(),
                    last_handled: 0,
                    applied_unseen: false,
                }
            })
            .collect();
        // In the order of `cluster::POSTGRES` and `cluster::REDIS`.
        let groups = vec![
            Group::new(POSTGRES_GROUP, Kind::Postgres, true, nodes_count, 5432),
            Group::new(REDIS_GROUP, Kind::Redis, false, nodes_count, 6379),
        ];
        let episodes = schedule.into_iter().map(EpisodeState::new).collect::<Vec<_>>();
        let last_heal = episodes
            .iter()
            .filter_map(|episode| episode.latest_heal())
            .max()
            .unwrap_or(0)
            .max(config.warm_up.as_micros() as Micros);
        let (end_at, give_up_at, last_heal) = match config.duration {
            Some(duration) => (duration.as_micros() as Micros, duration.as_micros() as Micros, last_heal),
            None => (
                last_heal + config.settle.as_micros() as Micros,
                last_heal + config.settle_limit.max(config.settle).as_micros() as Micros,
                last_heal,
            ),
        };
        let mut world = World {
            seed,
            now: 0,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            raft,
            net: Net::new(nodes_count),
            last_dual: vec![Vec::new(); groups.len()],
            groups,
            guards: vec![Guard::default(); nodes_count],
            proposals: BTreeMap::new(),
            next_proposal: 0,
            actions: BTreeMap::new(),
            next_action: 0,
            active: Active::new(nodes_count),
            episodes,
            ledger: RunLedger::default(),
            violations: Vec::new(),
            trace: Trace::default(),
            stats: Stats::default(),
            last_heal,
            give_up_at,
            ended: false,
            config,
        };
        for node in 0..nodes_count {
            world.nodes[node].coordinator = Some(world.new_coordinator(node));
            world.start_node_timers(node);
        }
        world.trace.note(0, format!("leader n{} (term 1)", first_leader + 1));
        world.schedule(0, Ev::ServerTick);
        world.schedule(0, Ev::RaftTick);
        for episode in 0..world.episodes.len() {
            if let Some(at) = world.episodes[episode].scheduled_at() {
                world.schedule(at, Ev::Inject { episode });
            }
        }
        world.schedule(end_at, Ev::End);
        world
    }

    pub(crate) fn new_coordinator(&self, node: usize) -> Coordinator {
        Coordinator::new(cluster::node_id(node), coordinator::Config { mutations: self.config.mutations })
    }

    /// Starts the ticker and the prober of `node`'s current life.
    pub(crate) fn start_node_timers(&mut self, node: usize) {
        let incarnation = self.nodes[node].incarnation;
        self.schedule(self.now, Ev::Node { node, incarnation, what: NodeEv::Tick });
        let interval = self.nodes[node].clock.true_span(DEFAULT_PROBE_INTERVAL);
        for group in 0..self.groups.len() {
            for member in 0..self.groups[group].servers.len() {
                let first = self.now + self.rng.random_range(0..interval);
                self.schedule(first, Ev::Node { node, incarnation, what: NodeEv::Probe { group, member } });
            }
        }
    }

    fn run(mut self) -> RunResult {
        while let Some(Scheduled { at, ev, .. }) = self.queue.pop() {
            self.now = at;
            self.stats.events += 1;
            self.process(ev);
            if self.ended {
                break;
            }
        }
        self.stats.simulated_us = self.now;
        self.stats.committed = self.raft.last_index();
        let mut failovers: Vec<(String, u64, Micros)> =
            self.ledger.begun.iter().map(|((group, run), at)| (group.clone(), *run, *at)).collect();
        failovers.sort_by_key(|(_, _, at)| *at);
        RunResult {
            seed: self.seed,
            violations: self.violations,
            trace: self.trace.into_lines(),
            stats: self.stats,
            failovers,
            reproduce: crate::config::reproduce(self.seed, &self.config),
        }
    }

    /// Schedules `ev` at true time `at` (never before now).
    pub(crate) fn schedule(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled { at: at.max(self.now), seq: self.seq, ev });
    }

    pub(crate) fn process(&mut self, ev: Ev) {
        match ev {
            Ev::Node { node, incarnation, what } => self.at_node(node, incarnation, what),
            Ev::RaftTick => {
                self.raft_tick();
                self.schedule(self.now + RAFT_TICK_US, Ev::RaftTick);
            }
            Ev::Election => self.election(),
            Ev::Arrive { proposal, at, path, request } => self.arrive(proposal, at, path, request),
            Ev::ReadIndex { proposal, index } => self.read_index(proposal, index),
            Ev::Bounce { proposal } => self.retry_later(proposal),
            Ev::Commit { pending } => self.commit_pending(pending),
            Ev::Answer { proposal, outcome } => self.answer(proposal, outcome),
            Ev::Retry { proposal } => self.route(proposal),
            Ev::Relay { proposal } => self.relay_once(proposal),
            Ev::ProposalTimeout { proposal } => self.answer(proposal, Err(ProposeError::TimedOut)),
            Ev::Land { action } => self.land(action),
            Ev::Poll { action } => self.poll(action),
            Ev::ActionAnswer { action, outcome } => self.action_answer(action, outcome),
            Ev::ActionTimeout { action } => self.action_timed_out(action),
            Ev::ServerTick => {
                for group in &mut self.groups {
                    group.replicate(&self.net);
                    group.write(&self.net);
                }
                self.schedule(self.now + SERVER_TICK_US, Ev::ServerTick);
            }
            Ev::GuardFire { host, group, generation } => {
                if let Some(member) = self.guards[host].fire(group, generation) {
                    let kind = self.groups[group].kind;
                    // Behind the lifts on their way, on the same line, if any.
                    let behind = kind == Kind::Redis && self.guards[host].fence_behind_lifts(group, member);
                    let server = &mut self.groups[group].servers[member];
                    let name = server.name.clone();
                    match kind {
                        // A PostgreSQL primary is stopped; a Redis master made to refuse writes.
                        Kind::Postgres if server.running => {
                            server.running = false;
                            self.trace.note(self.now, format!("guard of host {} stops {name}", host + 1));
                        }
                        Kind::Redis if behind => {
                            self.trace
                                .note(self.now, format!("guard of host {} fences {name} behind a lift", host + 1));
                        }
                        Kind::Redis if server.running && !server.fenced => {
                            server.fenced = true;
                            self.trace.note(self.now, format!("guard of host {} fences {name}", host + 1));
                        }
                        _ => {}
                    }
                }
            }
            Ev::Inject { episode } => self.inject(episode),
            Ev::Heal { episode } => self.heal(episode),
            Ev::Flap { episode } => self.flap(episode),
            Ev::End => self.end(),
        }
    }

    /// Which nodes are up and not frozen: the ones Raft counts.
    pub(crate) fn alive(&self) -> Vec<bool> {
        self.nodes.iter().map(|node| node.up && !node.frozen).collect()
    }

    /// Takes an event meant for one life of `node`: handles it, keeps it for the thaw, or
    /// drops it (the node crashed since).
    pub(crate) fn at_node(&mut self, node: usize, incarnation: u32, what: NodeEv) {
        let sim = &mut self.nodes[node];
        if !sim.up || sim.incarnation != incarnation {
            return;
        }
        if sim.frozen {
            sim.deferred.push(Ev::Node { node, incarnation, what });
            return;
        }
        match what {
            NodeEv::Tick => {
                let span = sim.clock.true_span(TICK);
                if sim.applied_unseen {
                    self.handle(node, Event::Applied);
                } else if self.now >= sim.last_handled + span {
                    self.handle(node, Event::Tick);
                }
                let next = (self.nodes[node].last_handled + span).max(self.now + 1);
                self.schedule(next, Ev::Node { node, incarnation, what: NodeEv::Tick });
            }
            NodeEv::Probe { group, member } => {
                let took = self.probe(node, group, member);
                // A ticker that skips what it missed: the next probe starts an interval after
                // this one started, or as soon as this one ended if it took longer.
                let interval = self.nodes[node].clock.true_span(DEFAULT_PROBE_INTERVAL);
                let next = self.now + took.max(interval);
                self.schedule(next, Ev::Node { node, incarnation, what: NodeEv::Probe { group, member } });
            }
            NodeEv::Deliver(event) => self.handle(node, *event),
            NodeEv::Apply { upto } => self.apply_entries(node, upto),
        }
    }

    /// Calls `node`'s coordinator and carries out what it asks.
    pub(crate) fn handle(&mut self, node: usize, event: Event) {
        let leader = self.raft.believed(node).map(cluster::node_id);
        let term = self.raft.known_term(node);
        let followers = self.followers_of(node);
        let sim = &mut self.nodes[node];
        let Some(coordinator) = sim.coordinator.as_mut() else { return };
        let ctx = Ctx { now: sim.clock.now(self.now), state: &sim.state, leader, term, followers: followers.as_ref() };
        // The coordinator's log lines (shown with `RUST_LOG`) name the node and the simulated time.
        let span = tracing::info_span!("node", n = node + 1, t = %format_args!("{:.3}", self.now as f64 / 1e6));
        let effects = span.in_scope(|| coordinator.handle(&ctx, event));
        sim.last_handled = self.now;
        sim.applied_unseen = false;
        self.stats.handle_calls += 1;
        for effect in effects {
            self.carry_out(node, effect);
        }
    }

    /// What `node` knows of the others while it believes it leads, as openraft's heartbeat
    /// metrics tell a real leader: a node it has a Raft link to answered just now; any other
    /// not since it became leader. An old leader that still believes it leads has led long.
    fn followers_of(&self, node: usize) -> Option<Followers> {
        if self.raft.believed(node) != Some(node) {
            return None;
        }
        let leading_for = match self.raft.leader {
            Some(leader) if leader == node => self.now.saturating_sub(self.raft.elected_at),
            _ => Micros::MAX / 2,
        };
        let last_ack = (0..self.nodes.len())
            .filter(|&other| other != node)
            .map(|other| {
                let heard = self.nodes[other].up && !self.nodes[other].frozen && self.net.raft_link(node, other);
                (cluster::node_id(other), heard.then_some(Duration::ZERO))
            })
            .collect();
        Some(Followers { leading_for: Duration::from_micros(leading_for), last_ack })
    }

    /// `node` probes `member` of `group`: it answers after 1–3 ms, is refused after about
    /// 1 ms if its server does not run, or times out when its host is out of reach (or the
    /// probe was lost). Returns how long the probe takes.
    fn probe(&mut self, node: usize, group: usize, member: usize) -> Micros {
        let incarnation = self.nodes[node].incarnation;
        let timeout = self.nodes[node].clock.true_span(DEFAULT_PROBE_TIMEOUT);
        let server = &self.groups[group].servers[member];
        let (took, seen) = if !self.net.delivers(node, server.host, &mut self.rng)
            || !self.net.delivers(server.host, node, &mut self.rng)
        {
            (timeout, Seen::Failed { reason: "timeout".to_string() })
        } else if !server.running {
            (self.rng.random_range(500..=1_500), Seen::Failed { reason: "connection refused".to_string() })
        } else {
            (self.rng.random_range(1_000..=3_000), Seen::Answered(self.groups[group].verdict(member)))
        };
        let event = Event::Probed {
            group: self.groups[group].name.clone(),
            member: self.groups[group].servers[member].name.clone(),
            seen,
            started: self.nodes[node].clock.now(self.now).mono,
        };
        self.schedule(self.now + took, Ev::Node { node, incarnation, what: NodeEv::Deliver(Box::new(event)) });
        took
    }

    /// Checks that no group has two writers now; one violation per overlap.
    pub(crate) fn check_writers(&mut self, group: usize) {
        let writable = self.groups[group].writable();
        if writable.len() > 1 {
            if writable != self.last_dual[group] {
                if let Some(violation) = check::one_writer(&self.groups[group], self.now) {
                    self.trace.note(self.now, format!("VIOLATION {violation}"));
                    self.violations.push(violation);
                }
                self.last_dual[group] = writable;
            }
        } else {
            self.last_dual[group].clear();
        }
    }

    /// Records a violation found by a checker.
    pub(crate) fn violated(&mut self, violation: Option<Violation>) {
        if let Some(violation) = violation {
            self.trace.note(self.now, format!("VIOLATION {violation}"));
            self.violations.push(violation);
        }
    }

    /// The end of the settle phase: the run ends once the cluster has converged, or at the
    /// settle limit with what it has not.
    fn end(&mut self) {
        let not_converged = if self.config.check_liveness {
            let alive = self.alive();
            let leader = self.raft.effective(&alive, &self.net);
            check::converged(&self.groups, leader.map(|leader| &self.nodes[leader].state), self.now)
        } else {
            Vec::new()
        };
        if !not_converged.is_empty() && self.now + 1_000_000 <= self.give_up_at {
            self.schedule(self.now + 1_000_000, Ev::End);
            return;
        }
        self.ended = true;
        if not_converged.is_empty() {
            self.stats.converged_after_us = Some(self.now.saturating_sub(self.last_heal));
        }
        let mut found = check::runs_finished_once(&self.ledger, self.now);
        let waited = crate::trace::seconds(self.now.saturating_sub(self.last_heal));
        found.extend(not_converged.into_iter().map(|violation| Violation {
            detail: format!("{} after the last fault: {}", waited, violation.detail),
            ..violation
        }));
        for violation in found {
            self.trace.note(self.now, format!("VIOLATION {violation}"));
            self.violations.push(violation);
        }
    }

    /// An apply lag for `node`: a few ms, sometimes hundreds, more under a lag fault.
    pub(crate) fn apply_lag(&mut self, node: usize) -> Micros {
        let mut lag = if self.rng.random_bool(0.03) {
            self.rng.random_range(100_000..=400_000)
        } else {
            self.rng.random_range(500..=5_000)
        };
        if self.active.apply_lag[node] > 0 {
            lag += self.rng.random_range(1_000_000..=3_000_000);
        }
        lag
    }

    /// How long a message between the hosts of `a` and `b` takes.
    pub(crate) fn latency(&mut self, a: usize, b: usize) -> Micros {
        net::latency(a, b, &mut self.rng)
    }
}
