//! A simulated Raft: one committed log, a term and its leader, and what each node believes.
//!
//! This is not openraft, only what the coordinator can observe of it. The leader is
//! *effective* while it is up, not frozen, and reaches a majority; when it is not, an
//! election among the nodes that reach a majority makes a new leader after 300–1200 ms.
//! Nodes that hear the leader believe in it; an isolated old leader keeps believing it leads
//! until it hears of a newer term (as openraft's does); nodes that hear no leader believe in
//! none after their election timeout. Entries commit on the effective leader only; each node
//! holds the entries it was reachable for and applies them, with the real
//! [`ClusterState::apply_command`], after an apply lag of its own. A copy of the state
//! applied at commit time (`canonical`) gives the answers to proposals and lets the checkers
//! read what was decided.
//!
//! Proposals travel as messages in the world (`world.rs`, `proposals.rs`); here is only
//! where they wait for a commit (`pending`) and whose answer waits for the leader to apply
//! its entry.

use std::collections::BTreeMap;

use openraft::{LogId, Membership};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vigil_consensus::{ClusterState, Command, CommandResponse, NodeId, NodeInfo};

use crate::clock::Micros;
use crate::net::Net;

/// How long a node goes without hearing a leader before it believes in none, and how long an
/// election takes: drawn from this range, in microseconds.
pub const ELECTION_TIMEOUT_US: std::ops::RangeInclusive<Micros> = 300_000..=1_200_000;

/// What a log entry carries.
#[derive(Clone, Debug)]
pub enum Payload {
    /// The membership (the bootstrap's first entry).
    Membership(Membership<NodeId, NodeInfo>),
    /// A command.
    Command(Command),
}

/// One committed entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The term it was committed in.
    pub term: u64,
    /// What it carries.
    pub payload: Payload,
    /// When it committed, in true time.
    pub committed_at: Micros,
}

/// Where one node stands in Raft.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The newest term it heard of.
    pub known_term: u64,
    /// The leader it believes in (itself, when it leads or believes it does).
    pub believed: Option<usize>,
    /// Since when it has not heard the leader it believes in, and how long it waits.
    lost_since: Option<(Micros, Micros)>,
    /// How many entries it holds.
    pub replicated: u64,
    /// How many entries it applied.
    pub applied: u64,
    /// The latest apply it has scheduled, so entries apply in order.
    pub apply_at: Micros,
}

/// A proposal waiting on a leader for its commit.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Names this wait.
    pub id: u64,
    /// The command.
    pub command: Command,
    /// How far its proposer had applied when it proposed.
    pub seen: u64,
    /// Who to answer, and by which path.
    pub reply: Reply,
    /// Whether its commit is scheduled.
    pub commit_scheduled: bool,
}

/// Who waits for a proposal's answer, and the nodes its answer travels back through (the
/// proposer first, the leader last).
#[derive(Clone, Debug)]
pub struct Reply {
    /// The proposal.
    pub proposal: u64,
    /// The path, proposer first.
    pub path: Vec<usize>,
}

/// The whole simulated Raft.
#[derive(Clone, Debug)]
pub struct Raft {
    /// The current term.
    pub term: u64,
    /// The leader of the current term.
    pub leader: Option<usize>,
    /// The committed log, index 1 first.
    pub entries: Vec<Entry>,
    /// The state as of the last committed entry.
    pub canonical: ClusterState,
    /// Every node.
    pub peers: Vec<Peer>,
    /// When the pending election is held.
    pub election_at: Option<Micros>,
    /// When the current leader was elected.
    pub elected_at: Micros,
    /// Proposals on the current leader, waiting for their commit.
    pub pending: Vec<Pending>,
    next_pending: u64,
    /// Answers waiting for the leader that committed them to apply them: by log index.
    pub waiting_answers: BTreeMap<u64, (usize, Reply, CommandResponse)>,
}

impl Raft {
    /// A cluster of `nodes` nodes whose log holds `bootstrap` (committed at time zero in term
    /// 1, held and applied by every node), led by `leader`.
    pub fn new(nodes: usize, bootstrap: Vec<Payload>, leader: usize) -> Self {
        let entries: Vec<Entry> =
            bootstrap.into_iter().map(|payload| Entry { term: 1, payload, committed_at: 0 }).collect();
        let mut canonical = ClusterState::default();
        for (index, entry) in entries.iter().enumerate() {
            apply(&mut canonical, index as u64 + 1, entry);
        }
        let held = entries.len() as u64;
        let peers = (0..nodes)
            .map(|_| Peer {
                known_term: 1,
                believed: Some(leader),
                lost_since: None,
                replicated: held,
                applied: held,
                apply_at: 0,
            })
            .collect();
        Raft {
            term: 1,
            leader: Some(leader),
            entries,
            canonical,
            peers,
            election_at: None,
            elected_at: 0,
            pending: Vec::new(),
            next_pending: 0,
            waiting_answers: BTreeMap::new(),
        }
    }

    /// How many voters make a majority.
    pub fn majority(&self) -> usize {
        self.peers.len() / 2 + 1
    }

    /// Whether `node` reaches a majority of the up, unfrozen nodes (itself included).
    pub fn reaches_majority(&self, node: usize, alive: &[bool], net: &Net) -> bool {
        alive[node]
            && 1 + (0..self.peers.len())
                .filter(|&other| other != node && alive[other] && net.raft_link(node, other))
                .count()
                >= self.majority()
    }

    /// The leader, if it is effective: up, unfrozen, reaching a majority.
    pub fn effective(&self, alive: &[bool], net: &Net) -> Option<usize> {
        self.leader.filter(|&leader| self.reaches_majority(leader, alive, net))
    }

    /// Whether `node` is the effective leader: what a read index confirms.
    pub fn confirms_leadership(&self, node: usize, alive: &[bool], net: &Net) -> bool {
        self.effective(alive, net) == Some(node)
    }

    /// The leader `node` believes in.
    pub fn believed(&self, node: usize) -> Option<usize> {
        self.peers[node].believed
    }

    /// The newest term `node` has heard of.
    pub fn known_term(&self, node: usize) -> u64 {
        self.peers[node].known_term
    }

    /// Updates what every up, unfrozen node believes, at `now`.
    pub fn refresh_beliefs(&mut self, now: Micros, alive: &[bool], net: &Net, rng: &mut ChaCha8Rng) {
        let leader = self.leader.filter(|&leader| alive[leader]);
        for node in 0..self.peers.len() {
            if !alive[node] {
                continue;
            }
            if let Some(leader) = leader
                && (leader == node || net.raft_link(node, leader))
            {
                let peer = &mut self.peers[node];
                (peer.believed, peer.known_term, peer.lost_since) = (Some(leader), self.term, None);
                continue;
            }
            let own_term = self.peers[node].known_term;
            if self.peers[node].believed == Some(node) {
                // An old leader keeps believing it leads until it hears of a newer term.
                let newer = (0..self.peers.len()).find(|&other| {
                    alive[other] && net.raft_link(node, other) && self.peers[other].known_term > own_term
                });
                if let Some(other) = newer {
                    let term = self.peers[other].known_term;
                    let peer = &mut self.peers[node];
                    (peer.believed, peer.known_term, peer.lost_since) = (None, term, None);
                }
                continue;
            }
            let still_heard = self.peers[node].believed.is_some_and(|believed| {
                alive[believed]
                    && net.raft_link(node, believed)
                    && self.peers[believed].believed == Some(believed)
                    && self.peers[believed].known_term == own_term
            });
            let peer = &mut self.peers[node];
            if still_heard || peer.believed.is_none() {
                peer.lost_since = None;
                continue;
            }
            let (since, wait) = *peer.lost_since.get_or_insert_with(|| (now, rng.random_range(ELECTION_TIMEOUT_US)));
            if now >= since + wait {
                peer.believed = None;
                peer.lost_since = None;
            }
        }
    }

    /// Holds an election at `now` if the leader is not effective: a random node among those
    /// that reach a majority wins. Returns the new leader and the proposals the old one left
    /// uncommitted, which the caller commits late or drops.
    pub fn elect(&mut self, alive: &[bool], net: &Net, rng: &mut ChaCha8Rng) -> Option<(usize, Vec<Pending>)> {
        if self.effective(alive, net).is_some() {
            return None;
        }
        let candidates: Vec<usize> =
            (0..self.peers.len()).filter(|&node| self.reaches_majority(node, alive, net)).collect();
        if candidates.is_empty() {
            return None;
        }
        let winner = candidates[rng.random_range(0..candidates.len())];
        self.term += 1;
        self.leader = Some(winner);
        for (node, &up) in alive.iter().enumerate() {
            if up && (node == winner || net.raft_link(winner, node)) {
                let peer = &mut self.peers[node];
                (peer.believed, peer.known_term, peer.lost_since) = (Some(winner), self.term, None);
            }
        }
        Some((winner, std::mem::take(&mut self.pending)))
    }

    /// Queues a proposal on the leader; returns its wait's id.
    pub fn enqueue(&mut self, command: Command, seen: u64, reply: Reply) -> u64 {
        let id = self.next_pending;
        self.next_pending += 1;
        self.pending.push(Pending { id, command, seen, reply, commit_scheduled: false });
        id
    }

    /// Takes the pending proposal `id` off the queue.
    pub fn take_pending(&mut self, id: u64) -> Option<Pending> {
        let position = self.pending.iter().position(|pending| pending.id == id)?;
        Some(self.pending.remove(position))
    }

    /// Commits `command` at `now` in the current term: returns its index and the state
    /// machine's answer.
    pub fn commit(&mut self, command: Command, now: Micros) -> (u64, CommandResponse) {
        let entry = Entry { term: self.term, payload: Payload::Command(command), committed_at: now };
        let index = self.entries.len() as u64 + 1;
        let response = apply(&mut self.canonical, index, &entry);
        self.entries.push(entry);
        (index, response)
    }

    /// The index of the last committed entry.
    pub fn last_index(&self) -> u64 {
        self.entries.len() as u64
    }
}

/// Applies `entry` at `index` to `state`, as a node's state machine does.
pub fn apply(state: &mut ClusterState, index: u64, entry: &Entry) -> CommandResponse {
    let log_id = LogId::new_term_index(entry.term, index);
    match &entry.payload {
        Payload::Membership(membership) => state.apply_membership(log_id, membership.clone()),
        Payload::Command(command) => state.apply_command(log_id, command),
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn raft() -> Raft {
        Raft::new(3, Vec::new(), 0)
    }

    #[test]
    fn an_isolated_leader_is_not_effective_and_the_others_elect_one() {
        let mut net = Net::new(3);
        let mut raft = raft();
        let alive = [true; 3];
        assert_eq!(raft.effective(&alive, &net), Some(0));
        net.isolate(0, true);
        assert_eq!(raft.effective(&alive, &net), None);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (winner, _) = raft.elect(&alive, &net, &mut rng).expect("the majority elects");
        assert_ne!(winner, 0);
        assert_eq!(raft.believed(0), Some(0), "the old leader still believes it leads");
        raft.refresh_beliefs(10, &alive, &net, &mut rng);
        assert_eq!(raft.believed(0), Some(0));
        net.isolate(0, false);
        raft.refresh_beliefs(20, &alive, &net, &mut rng);
        assert_eq!(raft.believed(0), Some(winner), "it hears the new leader");
    }

    #[test]
    fn a_node_in_a_minority_believes_in_no_leader_after_its_election_timeout() {
        let mut net = Net::new(3);
        let mut raft = raft();
        let alive = [true; 3];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        net.isolate(2, true);
        raft.refresh_beliefs(0, &alive, &net, &mut rng);
        assert_eq!(raft.believed(2), Some(0));
        raft.refresh_beliefs(*ELECTION_TIMEOUT_US.end() + 1, &alive, &net, &mut rng);
        assert_eq!(raft.believed(2), None);
    }
}
