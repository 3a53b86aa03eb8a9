//! The fence of the member beside this node: what this node wants it to be (fenced or
//! lifted), what the last action it saw finish established, and the one action in flight.
//!
//! Actions on one member are ordered: a lift that is still running when the lease runs out
//! finishes first, and the fence runs after it, so a slow lift can never land after a fence
//! and leave the member writable while this node believes it fenced. Only an action that
//! finished tells what the member is; a fence counts only once the member was seen refusing
//! writes, and a failed one is tried again until it holds.

use std::time::Duration;

use super::Mono;

/// What the node wants of its member's fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Refusing writes. `stale`: it is not the primary at all.
    Fenced {
        /// Whether the member is a stale primary rather than the current one.
        stale: bool,
    },
    /// Taking writes as the primary of `epoch`.
    Lifted {
        /// The group's epoch.
        epoch: u64,
    },
}

/// What the last finished action established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// Nothing yet, or an action failed half-way.
    Unknown,
    /// Confirmed refusing writes (or confirmed down).
    Fenced,
    /// Lifted: taking writes.
    Lifted,
}

/// An action on the fence in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Fencing.
    Fence,
    /// Lifting.
    Lift,
}

/// Backoff after a failed fence or lift: short, since the lease is short.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// One member's fence as this node knows it.
#[derive(Clone, Debug)]
pub struct FenceTrack {
    known: Known,
    in_flight: Option<Op>,
    failures: u32,
    retry_at: Mono,
    fenced_at: Option<Mono>,
    /// When the last action finished (or the state was otherwise established).
    settled_at: Mono,
}

impl Default for FenceTrack {
    fn default() -> Self {
        FenceTrack {
            known: Known::Unknown,
            in_flight: None,
            failures: 0,
            retry_at: Mono::default(),
            fenced_at: None,
            settled_at: Mono::default(),
        }
    }
}

impl FenceTrack {
    /// What the last finished action established.
    pub fn known(&self) -> Known {
        self.known
    }

    /// Whether the member is confirmed fenced and no action that could change that is in
    /// flight (a lift still on its way may land after any fence confirmed before it).
    pub fn settled_fenced(&self) -> bool {
        self.known == Known::Fenced && self.in_flight.is_none()
    }

    /// Whether the member is known lifted and no action is in flight.
    pub fn settled_lifted(&self) -> bool {
        self.known == Known::Lifted && self.in_flight.is_none()
    }

    /// Whether a probe that ended at `probed_at` surely started after what is known was
    /// settled (a probe lasts at most `probe_timeout`), so that it may contradict it.
    pub fn probed_since_settled(&self, probed_at: Mono, probe_timeout: std::time::Duration) -> bool {
        probed_at > self.settled_at + probe_timeout
    }

    /// Whether an action is in flight.
    pub fn in_flight(&self) -> Option<Op> {
        self.in_flight
    }

    /// The next action towards `want`, if one is due now: nothing while an action is in
    /// flight (ordering), or while a failed one waits to be retried. A fence that lapses by
    /// itself (`lapses_after`) is applied again a third of the way through.
    pub fn next(&self, want: Want, now: Mono, lapses_after: Option<Duration>, ordered: bool) -> Option<Op> {
        if (ordered && self.in_flight.is_some()) || now < self.retry_at {
            return None;
        }
        match want {
            Want::Fenced { .. } => {
                let lapsing = lapses_after
                    .zip(self.fenced_at)
                    .is_some_and(|(lapses_after, fenced_at)| now.since(fenced_at) >= lapses_after / 3);
                (self.in_flight != Some(Op::Fence) && (self.known != Known::Fenced || lapsing)).then_some(Op::Fence)
            }
            Want::Lifted { .. } => {
                (self.in_flight != Some(Op::Lift) && self.known != Known::Lifted).then_some(Op::Lift)
            }
        }
    }

    /// An action was started.
    pub fn started(&mut self, op: Op) {
        self.in_flight = Some(op);
    }

    /// The action in flight ended.
    pub fn finished(&mut self, op: Op, succeeded: bool, now: Mono) {
        if self.in_flight == Some(op) {
            self.in_flight = None;
        }
        self.settled_at = now;
        if succeeded {
            self.failures = 0;
            self.retry_at = now;
            match op {
                Op::Fence => {
                    self.known = Known::Fenced;
                    self.fenced_at = Some(now);
                }
                Op::Lift => self.known = Known::Lifted,
            }
        } else {
            // Half done, perhaps: neither fenced nor lifted for sure.
            self.known = Known::Unknown;
            self.failures += 1;
            let backoff = RETRY_MIN.saturating_mul(1 << self.failures.min(4)).min(RETRY_MAX);
            self.retry_at = now + backoff;
        }
    }

    /// The member is known to be down and unable to take writes (stopped, or started fenced).
    pub fn confirmed_fenced(&mut self, now: Mono) {
        self.known = Known::Fenced;
        self.fenced_at = Some(now);
        self.settled_at = now;
    }

    /// Forgets what was known: the member changed role (it rejoined as a replica, whose
    /// configuration was rewritten), so the last fence or lift says nothing of it now.
    pub fn forget(&mut self) {
        self.known = Known::Unknown;
        self.fenced_at = None;
    }

    /// Takes what the old rule assumed: that an action did what it asked the moment it started.
    pub fn assume(&mut self, op: Op, now: Mono) {
        self.finished(op, true, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Mono {
        Mono::from_origin(Duration::from_millis(ms))
    }

    #[test]
    fn a_fence_waits_for_the_lift_in_flight() {
        let mut track = FenceTrack::default();
        assert_eq!(track.next(Want::Lifted { epoch: 1 }, at(0), None, true), Some(Op::Lift));
        track.started(Op::Lift);
        assert_eq!(track.next(Want::Fenced { stale: false }, at(10), None, true), None, "ordered: the lift first");
        track.finished(Op::Lift, true, at(20));
        assert_eq!(track.next(Want::Fenced { stale: false }, at(20), None, true), Some(Op::Fence));
    }

    #[test]
    fn a_failed_fence_is_retried_after_a_backoff() {
        let mut track = FenceTrack::default();
        track.started(Op::Fence);
        track.finished(Op::Fence, false, at(0));
        assert_eq!(track.known(), Known::Unknown);
        assert_eq!(track.next(Want::Fenced { stale: false }, at(50), None, true), None);
        assert_eq!(track.next(Want::Fenced { stale: false }, at(250), None, true), Some(Op::Fence));
    }

    #[test]
    fn a_lapsing_fence_is_renewed_a_third_of_the_way() {
        let mut track = FenceTrack::default();
        track.started(Op::Fence);
        track.finished(Op::Fence, true, at(0));
        let lapses = Some(Duration::from_secs(9));
        assert_eq!(track.next(Want::Fenced { stale: false }, at(2_000), lapses, true), None);
        assert_eq!(track.next(Want::Fenced { stale: false }, at(3_000), lapses, true), Some(Op::Fence));
        assert_eq!(track.next(Want::Fenced { stale: false }, at(3_000), None, true), None);
    }
}
