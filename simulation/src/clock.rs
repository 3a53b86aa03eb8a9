//! Each node's clocks, as functions of true time.
//!
//! True time is the simulation's own: microseconds since the run began, the same for every
//! node and server, and never shown to a coordinator. A node's monotonic clock starts at an
//! origin of its own and runs at a rate of its own (within ±0.4 % of true time, so any two
//! differ by less than the 1 % [`vigil_consensus::spec::CLOCK_DRIFT_BOUND`] the lease
//! arithmetic allows for); its wall clock runs at the same rate from a fixed epoch, plus a
//! skew that only a fault (a wall-clock step) changes.

use std::time::Duration;

use vigil_consensus::coordinator::{Mono, Now};

/// True time, in microseconds since the run began.
pub type Micros = u64;

/// The wall-clock reading (ms since the Unix epoch) of every node at true time zero, before
/// its rate and skew.
pub const EPOCH_MS: u64 = 1_800_000_000_000;

/// One microsecond of true time per this many of a node's clock, at most: ±0.4 %.
pub const MAX_RATE_DEVIATION: f64 = 0.004;

/// One node's monotonic and wall clocks.
#[derive(Clone, Debug)]
pub struct Clock {
    /// The monotonic reading at true time zero.
    origin_us: u64,
    /// How much of this clock passes per unit of true time.
    rate: f64,
    /// Added to the wall clock; changed by wall-clock steps only.
    wall_skew_ms: i64,
}

impl Clock {
    /// A clock with this origin (µs), rate and wall-clock skew (ms).
    pub fn new(origin_us: u64, rate: f64, wall_skew_ms: i64) -> Self {
        Clock { origin_us, rate, wall_skew_ms }
    }

    /// The monotonic reading at true time `at`.
    pub fn mono(&self, at: Micros) -> Mono {
        Mono::from_origin(Duration::from_micros(self.origin_us + (at as f64 * self.rate) as u64))
    }

    /// The wall-clock reading (ms since the Unix epoch) at true time `at`.
    pub fn wall_ms(&self, at: Micros) -> u64 {
        let since_epoch_ms = (at as f64 * self.rate / 1000.0) as i64;
        (EPOCH_MS as i64 + since_epoch_ms + self.wall_skew_ms).max(0) as u64
    }

    /// What the coordinator is told the time is at true time `at`.
    pub fn now(&self, at: Micros) -> Now {
        Now { mono: self.mono(at), wall_ms: self.wall_ms(at) }
    }

    /// How much true time passes while this clock counts `span`: a timer of the node's set
    /// for `span` fires this long after it was set.
    pub fn true_span(&self, span: Duration) -> Micros {
        (span.as_micros() as f64 / self.rate).ceil() as Micros
    }

    /// Steps the wall clock by `delta_ms` (NTP stepping it, or an operator setting it).
    pub fn step_wall(&mut self, delta_ms: i64) {
        self.wall_skew_ms += delta_ms;
    }

    /// The rate of this clock against true time.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_clock_fires_its_timers_early_in_true_time() {
        let clock = Clock::new(5_000, 1.004, 3);
        assert!(clock.true_span(Duration::from_secs(1)) < 1_000_000);
        assert_eq!(clock.mono(0), Mono::from_origin(Duration::from_micros(5_000)));
        assert_eq!(clock.wall_ms(1_000_000), EPOCH_MS + 1004 + 3);
    }

    #[test]
    fn a_wall_step_moves_the_wall_clock_only() {
        let mut clock = Clock::new(0, 1.0, 0);
        let mono_before = clock.mono(10_000_000);
        clock.step_wall(-300_000);
        assert_eq!(clock.mono(10_000_000), mono_before);
        assert_eq!(clock.wall_ms(10_000_000), EPOCH_MS + 10_000 - 300_000);
    }
}
