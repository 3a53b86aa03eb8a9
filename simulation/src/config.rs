//! How a run is set up ([`Config`]) and what it found ([`RunResult`]).

use std::time::Duration;

use vigil_consensus::coordinator::Mutations;

use crate::check::Violation;
use crate::clock::Micros;
use crate::faults::Episode;

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// How many nodes (3 or 5); each has a host with one member of each group.
    pub nodes: usize,
    /// The coordinator's old rules to put back.
    pub mutations: Mutations,
    /// How long the cluster runs before the first fault may come.
    pub warm_up: Duration,
    /// How long after the warm-up the episodes of a drawn schedule may begin.
    pub inject_window: Duration,
    /// How long the run goes on after the last fault healed, before the liveness check.
    pub settle: Duration,
    /// How long after the last fault healed a run that has not converged by the end of the
    /// settle phase may go on converging (checked every second); past it, not converging is
    /// a violation. Some repairs wait by design (a failed rejoin is tried again after a
    /// minute), so this bound is the liveness guarantee the checker holds the cluster to.
    pub settle_limit: Duration,
    /// How many fault episodes a drawn schedule has.
    pub episodes: std::ops::RangeInclusive<usize>,
    /// A fixed schedule instead of one drawn from the seed.
    pub schedule: Option<Vec<Episode>>,
    /// The name of the scenario the fixed schedule is (see [`crate::scenarios`]).
    pub scenario: Option<String>,
    /// How long the run lasts, instead of the last heal plus the settle phase.
    pub duration: Option<Duration>,
    /// The first leader (by node index) instead of one drawn from the seed.
    pub first_leader: Option<usize>,
    /// Whether drawn schedules may fail the fences of Redis members, which no guard backs.
    pub fence_faults_on_redis: bool,
    /// Whether the liveness checker runs at the end.
    pub check_liveness: bool,
    /// Whether the trace also shows every action a node asks for, with what it had applied.
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 3,
            mutations: Mutations::default(),
            warm_up: Duration::from_secs(3),
            inject_window: Duration::from_secs(8),
            // Shortened from 25 s to keep 10,000 schedules within reach of CI (see
            // `settle_limit`: a run that has not converged by then goes on until it has).
            settle: Duration::from_secs(10),
            settle_limit: Duration::from_secs(100),
            episodes: 2..=4,
            schedule: None,
            scenario: None,
            duration: None,
            first_leader: None,
            fence_faults_on_redis: false,
            check_liveness: true,
            verbose: false,
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// Every guarantee broken, in order.
    pub violations: Vec<Violation>,
    /// What happened, in short lines.
    pub trace: Vec<String>,
    /// How much work the run was.
    pub stats: Stats,
    /// The failover runs begun, as (group, run id, when), in order.
    pub failovers: Vec<(String, u64, Micros)>,
    /// The command that runs it again and prints its trace.
    pub reproduce: String,
}

impl RunResult {
    /// Whether every checker passed.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The first violation with the command that reproduces the run.
    pub fn failure_message(&self) -> String {
        let first = self.violations.first().map(ToString::to_string).unwrap_or_default();
        format!("seed {}: {first} (--reproduce {0}: `{}`)", self.seed, self.reproduce)
    }
}

/// How much work one run was.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Calls of `Coordinator::handle`.
    pub handle_calls: u64,
    /// Events taken off the queue.
    pub events: u64,
    /// True time simulated, µs.
    pub simulated_us: Micros,
    /// Entries committed.
    pub committed: u64,
    /// How long after the last heal the cluster was found converged, µs.
    pub converged_after_us: Option<Micros>,
}

/// The `vigil-sim` command line that runs `seed` with `config` again.
pub(crate) fn reproduce(seed: u64, config: &Config) -> String {
    let mut command = format!("vigil-sim run --seed {seed}");
    if let Some(scenario) = &config.scenario {
        command += &format!(" --scenario {scenario}");
    } else if config.schedule.is_some() {
        command += " (with the test's own schedule)";
    }
    let mutations = config.mutations;
    for (set, name) in [
        (mutations.skip_lease_wait, "skip_lease_wait"),
        (mutations.silent_fence_failure, "silent_fence_failure"),
        (mutations.unfenced_promotion, "unfenced_promotion"),
        (mutations.unconfirmed_fence, "unconfirmed_fence"),
        (mutations.unordered_fence_and_lift, "unordered_fence_and_lift"),
        (mutations.wall_clock_step_timeouts, "wall_clock_step_timeouts"),
        (mutations.born_fenced_after_restart, "born_fenced_after_restart"),
        (mutations.unversioned_sync_setting, "unversioned_sync_setting"),
    ] {
        if set {
            command += &format!(" --mutation {name}");
        }
    }
    if config.nodes != 3 {
        command += &format!(" --nodes {}", config.nodes);
    }
    if config.fence_faults_on_redis {
        command += " --redis-fence-faults";
    }
    command
}
