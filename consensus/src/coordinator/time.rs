//! Time as the coordinator sees it: a reading of this node's own monotonic clock, and the
//! wall clock used only to stamp commands for operators.
//!
//! The coordinator never reads a clock; the node's loop (or the simulation) passes [`Now`]
//! into every call. Monotonic readings of different nodes are never compared: each node
//! measures leases, timeouts and freshness from what it saw happen, by its own clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A reading of this node's monotonic clock: the time since an origin of the node's choosing
/// (its start). Readings of two nodes mean nothing to each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(Duration);

impl Mono {
    /// The reading `since_origin` after the clock's origin.
    pub const fn from_origin(since_origin: Duration) -> Self {
        Mono(since_origin)
    }

    /// The time since the origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn since(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Mono {
    type Output = Mono;

    fn add(self, rhs: Duration) -> Mono {
        Mono(self.0 + rhs)
    }
}

impl Sub<Duration> for Mono {
    type Output = Mono;

    fn sub(self, rhs: Duration) -> Mono {
        Mono(self.0.saturating_sub(rhs))
    }
}

/// The time of one call into the coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// This node's monotonic clock: every rule that measures time uses this.
    pub mono: Mono,
    /// This node's wall clock, milliseconds since the Unix epoch: only stamped into commands
    /// (for history and status) and used by the decision's coarse verdict staleness.
    pub wall_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_subtract_without_going_below_zero() {
        let early = Mono::from_origin(Duration::from_millis(100));
        let late = early + Duration::from_millis(50);
        assert_eq!(late.since(early), Duration::from_millis(50));
        assert_eq!(early.since(late), Duration::ZERO);
        assert_eq!(early - Duration::from_secs(1), Mono::default());
    }
}
