//! The network between hosts: symmetric cuts, a blocked Raft port, packet loss, latency.
//!
//! Host `i` carries node `i` and member `i` of every group. Faults are counted rather than
//! flagged, so two faults that cut the same link compose: healing one leaves the link cut
//! while the other holds. A host always reaches itself, with no loss: a node acts on the
//! member beside it over loopback.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::clock::Micros;

/// A host, by index (the node and the members on it share the index).
pub type Host = usize;

/// Who reaches whom.
#[derive(Clone, Debug)]
pub struct Net {
    hosts: usize,
    /// How many faults cut each pair of hosts (indexed `a * hosts + b`, kept symmetric).
    cuts: Vec<u32>,
    /// How many faults block vigil's Raft port on each host: its node neither sends nor
    /// receives Raft traffic, while its members stay reachable.
    raft_blocks: Vec<u32>,
    /// Packet loss into and out of each host, with how many faults set it.
    loss: Vec<(u32, f64)>,
}

impl Net {
    /// A network of `hosts` hosts, every one reaching every other.
    pub fn new(hosts: usize) -> Self {
        Net { hosts, cuts: vec![0; hosts * hosts], raft_blocks: vec![0; hosts], loss: vec![(0, 0.0); hosts] }
    }

    /// How many hosts there are.
    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// Whether traffic flows between hosts `a` and `b` (any port).
    pub fn reachable(&self, a: Host, b: Host) -> bool {
        a == b || self.cuts[a * self.hosts + b] == 0
    }

    /// Whether the nodes on hosts `a` and `b` exchange Raft traffic.
    pub fn raft_link(&self, a: Host, b: Host) -> bool {
        a == b || (self.reachable(a, b) && self.raft_blocks[a] == 0 && self.raft_blocks[b] == 0)
    }

    /// Cuts (or heals one cut of) the link between `a` and `b`.
    pub fn cut(&mut self, a: Host, b: Host, cut: bool) {
        if a == b {
            return;
        }
        for index in [a * self.hosts + b, b * self.hosts + a] {
            let count = &mut self.cuts[index];
            *count = if cut { *count + 1 } else { count.saturating_sub(1) };
        }
    }

    /// Cuts (or heals) every link of `host`.
    pub fn isolate(&mut self, host: Host, cut: bool) {
        for other in 0..self.hosts {
            self.cut(host, other, cut);
        }
    }

    /// Blocks (or unblocks) vigil's Raft port on `host`.
    pub fn block_raft(&mut self, host: Host, blocked: bool) {
        let count = &mut self.raft_blocks[host];
        *count = if blocked { *count + 1 } else { count.saturating_sub(1) };
    }

    /// Sets (or clears) packet loss `probability` into and out of `host`.
    pub fn set_loss(&mut self, host: Host, probability: f64, on: bool) {
        let (count, value) = &mut self.loss[host];
        if on {
            *count += 1;
            *value = probability;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                *value = 0.0;
            }
        }
    }

    /// Whether one message between `a` and `b` is lost (drawn afresh for every message).
    pub fn drops(&self, a: Host, b: Host, rng: &mut ChaCha8Rng) -> bool {
        if a == b {
            return false;
        }
        let loss = self.loss[a].1.max(self.loss[b].1);
        loss > 0.0 && rng.random_bool(loss)
    }

    /// Whether a message from `a` reaches `b` now: the link is up and the message not lost.
    pub fn delivers(&self, a: Host, b: Host, rng: &mut ChaCha8Rng) -> bool {
        self.reachable(a, b) && !self.drops(a, b, rng)
    }

    /// Whether a Raft message from `a` reaches `b` now.
    pub fn delivers_raft(&self, a: Host, b: Host, rng: &mut ChaCha8Rng) -> bool {
        self.raft_link(a, b) && !self.drops(a, b, rng)
    }
}

/// How long one message takes between two hosts: 0.2–2 ms (50 µs on loopback).
pub fn latency(a: Host, b: Host, rng: &mut ChaCha8Rng) -> Micros {
    if a == b { 50 } else { rng.random_range(200..=2_000) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_faults_on_one_link_heal_one_at_a_time() {
        let mut net = Net::new(3);
        net.cut(0, 1, true);
        net.isolate(1, true);
        net.cut(0, 1, false);
        assert!(!net.reachable(0, 1) && !net.reachable(1, 0), "the isolation still holds");
        net.isolate(1, false);
        assert!(net.reachable(0, 1) && net.reachable(2, 1));
    }

    #[test]
    fn a_blocked_raft_port_leaves_the_members_reachable() {
        let mut net = Net::new(3);
        net.block_raft(2, true);
        assert!(net.reachable(0, 2));
        assert!(!net.raft_link(0, 2) && !net.raft_link(2, 1));
        assert!(net.raft_link(0, 1) && net.raft_link(2, 2));
    }
}
