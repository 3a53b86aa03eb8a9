//! Test-only fault injection, from `VIGIL_FAILPOINTS` (comma-separated); documented in the
//! README. Compiled only with the `failpoints` feature, which the tests that need it enable:
//! a release build reads no such variable.
//! - `stall-before-step=promote`: the node about to run that step (on its first attempt in
//!   the group's first run) stalls instead, so a test can kill it at exactly that point of a
//!   failover.
//! - `cut-probe=pg1`: this node's probes of member `pg1` fail as if its network to it were
//!   cut, to test that one node's view never causes a failover.

use std::collections::BTreeSet;

use vigil_consensus::Cluster;
use vigil_consensus::coordinator::Action;
use vigil_consensus::group::StepStatus;

/// The failpoints read from the environment at start-up.
#[derive(Clone, Debug, Default)]
pub struct Failpoints {
    stall_before_step: Option<String>,
    cut_probes: BTreeSet<String>,
}

impl Failpoints {
    /// Reads `VIGIL_FAILPOINTS` (only with the `failpoints` feature).
    pub fn from_env() -> Self {
        let mut failpoints = Failpoints::default();
        if !cfg!(feature = "failpoints") {
            return failpoints;
        }
        if let Ok(spec) = std::env::var("VIGIL_FAILPOINTS") {
            for item in spec.split(',') {
                if let Some(step) = item.trim().strip_prefix("stall-before-step=") {
                    tracing::warn!(step, "failpoint armed: this node stalls before that step");
                    failpoints.stall_before_step = Some(step.to_string());
                } else if let Some(member) = item.trim().strip_prefix("cut-probe=") {
                    tracing::warn!(member, "failpoint armed: this node's probes of that member fail");
                    failpoints.cut_probes.insert(member.to_string());
                }
            }
        }
        failpoints
    }

    /// Whether the node must stall before running `action` on `group`: armed for its step,
    /// and the step is on its first attempt in the group's first run (a later failover, which
    /// the test did not plan, runs normally).
    pub fn stalls(&self, cluster: &Cluster, group: &str, action: &Action) -> bool {
        let Some(armed) = &self.stall_before_step else { return false };
        if step_name(action) != Some(armed.as_str()) {
            return false;
        }
        let state = cluster.state();
        let Some(run) = state.groups.get(group).and_then(|group| group.running.as_ref()) else { return false };
        let first_attempt = run
            .current_step()
            .is_some_and(|index| matches!(run.steps[index].status, StepStatus::Started { attempt: 1, .. }));
        run.id == 0 && first_attempt
    }

    /// Whether this node's probes of `member` must fail.
    pub fn probe_cut(&self, member: &str) -> bool {
        self.cut_probes.contains(member)
    }
}

/// The name a failpoint uses for the step an action carries out.
fn step_name(action: &Action) -> Option<&'static str> {
    Some(match action {
        Action::StopForSwitchover => "stop-primary",
        Action::RemoteFence => "fence-old-primary",
        Action::WaitForCatchUp { .. } => "wait-for-catch-up",
        Action::Promote { .. } => "promote",
        Action::VerifyWritable { .. } => "verify-writable",
        Action::Repoint { .. } => "repoint",
        Action::RestartAsReplica { .. } => "rejoin",
        _ => return None,
    })
}
