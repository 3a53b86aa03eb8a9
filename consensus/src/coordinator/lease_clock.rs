//! When this node saw each group's primary lease change, by its own monotonic clock, and
//! what that makes of the lease.
//!
//! Why this is safe without comparing clocks across machines: the holder counts its lease
//! from before it *sent* the renewal and fences `lease_duration - margin` later by its own
//! clock; every other node counts from when it *applied* the renewal, which is later in real
//! time, and waits `lease_duration * (1 + drift bound) + margin`. With clock rates within the
//! drift bound ([`crate::spec::CLOCK_DRIFT_BOUND`]), the holder has fenced before any node
//! counts the lease as run out.
//!
//! A lease also starts again whenever the group's primary or epoch changes: a promoted
//! member's lease runs from the commit of its promotion, never from its predecessor's last
//! renewal (which would make it look long run out while the new primary takes writes).

use std::collections::BTreeMap;
use std::time::Duration;

use super::Mono;
use crate::group::PrimaryLease;
use crate::spec::GroupPolicy;
use crate::state::ClusterState;

/// What a node knows of a lease by its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseView {
    /// The holder released it, saying why.
    Released(String),
    /// Not renewed for longer than the leader's wait.
    RunOut {
        /// How long ago it was last seen renewed.
        since_renewal: Duration,
    },
    /// Still held for at most this long.
    Held {
        /// Time left before it counts as run out.
        remaining: Duration,
    },
}

/// Everything whose change restarts the lease clock.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeaseKey {
    lease: Option<PrimaryLease>,
    primary: Option<String>,
    epoch: u64,
}

#[derive(Clone, Debug)]
struct Seen {
    key: LeaseKey,
    at: Mono,
}

/// When this node saw each group's lease change.
#[derive(Clone, Debug, Default)]
pub struct LeaseClock {
    seen: BTreeMap<String, Seen>,
    /// Hole 1 put back (a mutation): only the lease record restarts the clock.
    record_only: bool,
}

impl LeaseClock {
    /// A clock that, like the old rule, ignores changes of primary and epoch (a mutation).
    pub fn with_record_only(record_only: bool) -> Self {
        LeaseClock { seen: BTreeMap::new(), record_only }
    }

    /// Notes every lease that changed since the last call.
    pub fn observe(&mut self, state: &ClusterState, policies: &[GroupPolicy], now: Mono) {
        self.seen.retain(|group, _| policies.iter().any(|policy| &policy.name == group));
        for policy in policies {
            let group_state = state.groups.get(&policy.name);
            let mut key = LeaseKey {
                lease: group_state.and_then(|group| group.lease.clone()),
                primary: group_state.and_then(|group| group.primary.clone()),
                epoch: group_state.map_or(0, |group| group.epoch),
            };
            if self.record_only {
                key.primary = None;
                key.epoch = 0;
            }
            match self.seen.get_mut(&policy.name) {
                Some(seen) if seen.key == key => {}
                Some(seen) => *seen = Seen { key, at: now },
                // A group seen for the first time counts as freshly leased: this node cannot
                // know when it was last renewed, so it waits a whole lease from now.
                None => {
                    self.seen.insert(policy.name.clone(), Seen { key, at: now });
                }
            }
        }
    }

    /// The lease on `member` of `group` as this node sees it at `now`, with the leader's wait.
    pub fn view(&self, group: &GroupPolicy, member: &str, now: Mono) -> LeaseView {
        let wait = group.lease_wait();
        let Some(seen) = self.seen.get(&group.name) else { return LeaseView::Held { remaining: wait } };
        if let Some(lease) = &seen.key.lease
            && lease.member == member
            && let Some(reason) = &lease.released
        {
            return LeaseView::Released(reason.clone());
        }
        let since = now.since(seen.at);
        if since >= wait {
            LeaseView::RunOut { since_renewal: since }
        } else {
            LeaseView::Held { remaining: wait - since }
        }
    }
}
