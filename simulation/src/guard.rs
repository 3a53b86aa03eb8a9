//! The fence guard of one host: a process apart from the node, which survives its crash
//! (and its freeze), and stops the member it was armed for when the deadline passes unless
//! the node disarmed or re-armed it first.
//!
//! A Redis master's fence is lifted through the guard too (node/src/guard/line.rs): the
//! guard takes a lift only before the deadline it holds, and its fence at the deadline goes
//! on the same line as the lifts still on their way, so it lands right behind them.

use std::collections::{BTreeMap, BTreeSet};

use crate::clock::Micros;

/// One host's guard: per group, the member it will stop and when.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    armed: BTreeMap<usize, Armed>,
    next_generation: u64,
    /// Per group, the lifts on their way and the fence queued behind them.
    lines: BTreeMap<usize, Line>,
}

/// One group's line to its Redis master.
#[derive(Clone, Debug, Default)]
struct Line {
    lifts: BTreeSet<u64>,
    fence_behind: Option<usize>,
}

/// A deadline the guard holds for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Armed {
    /// The member to stop.
    pub member: usize,
    /// When, in true time.
    pub deadline: Micros,
    /// Tells this arming from a later one of the same group.
    pub generation: u64,
}

impl Guard {
    /// Arms (or re-arms) the guard of `group` to stop `member` at `deadline`; returns the
    /// arming's generation, which the deadline's event carries.
    pub fn arm(&mut self, group: usize, member: usize, deadline: Micros) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.armed.insert(group, Armed { member, deadline, generation });
        generation
    }

    /// Disarms the guard of `group`; whether it was armed.
    pub fn disarm(&mut self, group: usize) -> bool {
        self.armed.remove(&group).is_some()
    }

    /// The deadline of `group` whose generation is `generation`, taken off if it is still the
    /// one in force: the member to stop now.
    pub fn fire(&mut self, group: usize, generation: u64) -> Option<usize> {
        let armed = self.armed.get(&group).filter(|armed| armed.generation == generation)?;
        let member = armed.member;
        self.armed.remove(&group);
        Some(member)
    }
}

impl Guard {
    /// Takes the lift `lift` of `member` of `group`, asked for at `now`: only the member
    /// armed there, before its deadline.
    pub fn take_lift(&mut self, group: usize, member: usize, lift: u64, now: Micros) -> Result<(), &'static str> {
        match self.armed.get(&group) {
            None => Err("nothing armed, or the deadline passed and the guard fenced"),
            Some(armed) if armed.member != member => Err("armed for another member"),
            Some(armed) if armed.deadline <= now => Err("the lease's deadline has passed"),
            Some(_) => {
                self.lines.entry(group).or_default().lifts.insert(lift);
                Ok(())
            }
        }
    }

    /// Queues the fence of `member` behind the lifts of `group` on their way; false when
    /// none is, and the fence lands now.
    pub fn fence_behind_lifts(&mut self, group: usize, member: usize) -> bool {
        match self.lines.get_mut(&group) {
            Some(line) if !line.lifts.is_empty() => {
                line.fence_behind = Some(member);
                true
            }
            _ => false,
        }
    }

    /// The lift `lift` of `group` reached its server (or failed to): the member whose fence
    /// was queued behind the lifts, once none is left on its way.
    pub fn lift_landed(&mut self, group: usize, lift: u64) -> Option<usize> {
        let line = self.lines.get_mut(&group)?;
        line.lifts.remove(&lift);
        if line.lifts.is_empty() { line.fence_behind.take() } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_arming_fires() {
        let mut guard = Guard::default();
        let first = guard.arm(0, 0, 1_000);
        let second = guard.arm(0, 0, 2_000);
        assert_eq!(guard.fire(0, first), None, "re-armed");
        assert_eq!(guard.fire(0, second), Some(0));
        let third = guard.arm(0, 0, 3_000);
        guard.disarm(0);
        assert_eq!(guard.fire(0, third), None, "disarmed");
    }

    #[test]
    fn a_lift_is_taken_before_the_deadline_only_and_the_fence_lands_behind_it() {
        let mut guard = Guard::default();
        assert!(guard.take_lift(0, 0, 1, 0).is_err(), "nothing armed");
        let generation = guard.arm(0, 0, 1_000);
        assert!(guard.take_lift(0, 1, 1, 500).is_err(), "another member");
        assert!(guard.take_lift(0, 0, 1, 1_000).is_err(), "at the deadline");
        assert_eq!(guard.take_lift(0, 0, 1, 999), Ok(()));
        assert_eq!(guard.fire(0, generation), Some(0));
        assert!(guard.fence_behind_lifts(0, 0), "the lift is on its way");
        assert_eq!(guard.lift_landed(0, 1), Some(0), "the fence lands right behind it");
        assert!(!guard.fence_behind_lifts(0, 0), "nothing on its way now");
    }
}
