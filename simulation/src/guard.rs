//! The fence guard of one host: a process apart from the node, which survives its crash
//! (and its freeze), and stops the member it was armed for when the deadline passes unless
//! the node disarmed or re-armed it first.

use std::collections::BTreeMap;

use crate::clock::Micros;

/// One host's guard: per group, the member it will stop and when.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    armed: BTreeMap<usize, Armed>,
    next_generation: u64,
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
}
