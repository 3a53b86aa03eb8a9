//! Rules the simulation can put back to what they were before the coordinator closed the
//! holes they opened, to show that its checkers catch them.
//!
//! Built only with the `mutations` feature, which only the simulation enables: without it
//! every question below answers `false` at compile time and no release build carries a way
//! to turn a rule off.

/// The mutated rules, each off unless set.
#[cfg(feature = "mutations")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// The leader promotes without waiting for the old primary's lease.
    pub skip_lease_wait: bool,
    /// A fence that fails is taken as done.
    pub silent_fence_failure: bool,
    /// Hole 1: a promoted member takes writes at once, its own node counts its lease from when
    /// it saw the promotion, and other nodes time the lease from the last renewal.
    pub unfenced_promotion: bool,
    /// Hole 2: the guard is disarmed when a fence starts, and a failed fence is not retried.
    pub unconfirmed_fence: bool,
    /// Hole 3: a lift and a fence of one member may run at once.
    pub unordered_fence_and_lift: bool,
    /// Hole 5: step timeouts and retries compare the deciding node's wall clock with the wall
    /// clock another node stamped into the state.
    pub wall_clock_step_timeouts: bool,
    /// A restarted node takes the member promoted in the current epoch for fenced even after
    /// a renewal of that epoch committed (its previous run may have lifted it).
    pub born_fenced_after_restart: bool,
    /// Every synchronous setting request of an epoch carries the same generation, so a
    /// deposed leader's request that lands late is not refused.
    pub unversioned_sync_setting: bool,
}

/// Without the `mutations` feature: the rules as they are, nothing to set.
#[cfg(not(feature = "mutations"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations;

macro_rules! questions {
    ($($name:ident),* $(,)?) => {
        impl Mutations {
            $(
                #[cfg(feature = "mutations")]
                pub(crate) const fn $name(&self) -> bool {
                    self.$name
                }

                #[cfg(not(feature = "mutations"))]
                pub(crate) const fn $name(&self) -> bool {
                    false
                }
            )*
        }
    };
}

questions!(
    skip_lease_wait,
    silent_fence_failure,
    unfenced_promotion,
    unconfirmed_fence,
    unordered_fence_and_lift,
    wall_clock_step_timeouts,
    born_fenced_after_restart,
    unversioned_sync_setting,
);
