//! Many seeds at once: the seeds of a range shared out over threads, each run on its own
//! (a run is single-threaded and owns its whole world), the failures gathered in seed order.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{Config, RunResult};
use crate::world::run;

/// What a batch found.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// How many schedules ran.
    pub schedules: u64,
    /// The runs that failed, by seed.
    pub failed: Vec<RunResult>,
    /// Calls of `Coordinator::handle` over all runs.
    pub handle_calls: u64,
    /// True time simulated over all runs, µs.
    pub simulated_us: u64,
    /// How long after the last fault the runs that converged took to, in whole seconds:
    /// how many runs took each.
    pub converged_after_s: std::collections::BTreeMap<u64, u64>,
}

/// Runs every seed of `seeds` with `config` over `threads` threads, until done or until
/// `keep_going` says stop (it is asked before each seed).
pub fn run_seeds(
    seeds: std::ops::Range<u64>,
    config: &Config,
    threads: usize,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Batch {
    let next = AtomicU64::new(seeds.start);
    let batch = Mutex::new(Batch::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    if !keep_going() {
                        break;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let result = run(seed, config);
                    let mut batch = batch.lock().expect("batch lock poisoned");
                    batch.schedules += 1;
                    batch.handle_calls += result.stats.handle_calls;
                    batch.simulated_us += result.stats.simulated_us;
                    if let Some(after) = result.stats.converged_after_us {
                        *batch.converged_after_s.entry(after / 1_000_000).or_default() += 1;
                    }
                    if !result.passed() {
                        batch.failed.push(result);
                    }
                }
            });
        }
    });
    let mut batch = batch.into_inner().expect("batch lock poisoned");
    batch.failed.sort_by_key(|result| result.seed);
    batch
}

/// The number of threads to run seeds on: every core this process may use.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs `seeds` and says how long it took, in seconds.
// The one OS clock read of the crate: it times the batch for the test's report and never
// reaches a run (the simulation has no tokio whose paused time could stand in).
#[allow(clippy::disallowed_types)]
pub fn timed(seeds: std::ops::Range<u64>, config: &Config) -> (Batch, f64) {
    let started = std::time::Instant::now();
    let batch = run_seeds(seeds, config, threads(), &|| true);
    (batch, started.elapsed().as_secs_f64())
}
