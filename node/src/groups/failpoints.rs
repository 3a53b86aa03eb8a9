//! Test-only fault injection, from `VIGIL_FAILPOINTS` (comma-separated). Unset in production;
//! documented in the README.
//! - `stall-before-step=promote`: the node about to run that step (on its first attempt)
//!   stalls forever instead, so a test can kill it at exactly that point of a failover.
//! - `cut-probe=pg1`: this node's probes of member `pg1` fail as if its network to it were
//!   cut, to test that one node's view never causes a failover.

use std::collections::BTreeSet;

/// The failpoints read from the environment at start-up.
#[derive(Clone, Debug, Default)]
pub struct Failpoints {
    stall_before_step: Option<String>,
    cut_probes: BTreeSet<String>,
}

impl Failpoints {
    /// Reads `VIGIL_FAILPOINTS`.
    pub fn from_env() -> Self {
        let mut failpoints = Failpoints::default();
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

    /// Stalls forever if armed for `step_name` and this is the step's first attempt in the
    /// group's first run (a later failover, which the test did not plan, runs normally).
    pub async fn before_step(&self, step_name: &str, run_id: u64, attempt: u32) {
        if run_id == 0 && attempt == 1 && self.stall_before_step.as_deref() == Some(step_name) {
            tracing::warn!(step = step_name, "failpoint: stalling before the step");
            std::future::pending::<()>().await;
        }
    }
}

impl Failpoints {
    /// Whether this node's probes of `member` must fail.
    pub fn probe_cut(&self, member: &str) -> bool {
        self.cut_probes.contains(member)
    }
}
