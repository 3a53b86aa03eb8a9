//! Which nodes the Raft leader hears from: how a leader avoids promoting a member whose own
//! node is gone.
//!
//! A promoted member takes writes only once its own node holds the new lease and lifts the
//! fence it was born with. A candidate whose node is dead (or cut off from the leader) would
//! be promoted and then wait, fenced, for a node that may not come back: the leader passes
//! such members over, and does not start a promotion towards one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::types::NodeId;

/// A follower that has acknowledged nothing for this long is out of reach. Twenty Raft
/// heartbeats at the defaults: a follower merely slow under load answers well within it.
pub const REACH_WITHIN: Duration = Duration::from_secs(1);

/// What the Raft leader knows of the other nodes (given only to a leader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Followers {
    /// How long this node has led.
    pub leading_for: Duration,
    /// How long ago each other node last acknowledged this leader (`None`: not yet).
    pub last_ack: BTreeMap<NodeId, Option<Duration>>,
}

/// Whether the leader can count on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// It acknowledged the leader lately (or it is the leader).
    Reachable,
    /// It has not, for longer than [`REACH_WITHIN`].
    Unreachable,
    /// The leader has not led long enough to tell.
    NotYetKnown,
}

impl Followers {
    /// Whether the leader `leader` can count on `node`.
    pub fn reach(&self, leader: NodeId, node: NodeId) -> Reach {
        if node == leader {
            return Reach::Reachable;
        }
        match self.last_ack.get(&node).copied().flatten() {
            Some(age) if age <= REACH_WITHIN => Reach::Reachable,
            _ if self.leading_for > REACH_WITHIN => Reach::Unreachable,
            _ => Reach::NotYetKnown,
        }
    }

    /// Every node known to be out of reach.
    pub fn unreachable(&self, leader: NodeId) -> BTreeSet<NodeId> {
        self.last_ack.keys().copied().filter(|node| self.reach(leader, *node) == Reach::Unreachable).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new leader does not judge at once; a node silent past the limit is unreachable, one
    /// that answered lately is not, and the leader always reaches itself.
    #[test]
    fn reach_is_judged_only_after_a_leader_could_hear_from_everyone() {
        let ms = Duration::from_millis;
        let mut followers =
            Followers { leading_for: ms(300), last_ack: BTreeMap::from([(2, None), (3, Some(ms(40)))]) };
        assert_eq!(followers.reach(1, 1), Reach::Reachable);
        assert_eq!(followers.reach(1, 2), Reach::NotYetKnown);
        assert_eq!(followers.reach(1, 3), Reach::Reachable);
        followers.leading_for = ms(1500);
        assert_eq!(followers.reach(1, 2), Reach::Unreachable);
        followers.last_ack.insert(3, Some(ms(1200)));
        assert_eq!(followers.unreachable(1), BTreeSet::from([2, 3]));
    }
}
