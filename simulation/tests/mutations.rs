//! The checkers catch the coordinator's old rules in drawn schedules: with a rule put back
//! (a mutation), some seed within the CI budget breaks a guarantee that the same seed keeps
//! with the rules as they are.

use vigil_consensus::coordinator::Mutations;
use vigil_simulation::{Config, batch, run};

/// The most seeds a search may run.
const BUDGET: u64 = 2_000;
/// Seeds run at once, over every thread, between looks at what they found.
const CHUNK: u64 = 64;

/// The first seed (by seed order within the first chunk that has one) whose schedule breaks
/// a guarantee with `config`'s mutation and keeps them all without it.
fn first_caught(config: &Config) -> Option<(u64, String)> {
    let plain = Config { mutations: Mutations::default(), ..config.clone() };
    let mut start = 0;
    while start < BUDGET {
        let end = (start + CHUNK).min(BUDGET);
        let found = batch::run_seeds(start..end, config, batch::threads(), &|| true);
        for failed in found.failed {
            if run(failed.seed, &plain).passed() {
                return Some((failed.seed, failed.failure_message()));
            }
        }
        start = end;
    }
    None
}

fn assert_caught(config: Config, what: &str) {
    match first_caught(&config) {
        Some((seed, message)) => println!("{what}: caught by seed {seed}: {message}"),
        None => panic!("{what}: no seed of the first {BUDGET} broke a guarantee"),
    }
}

/// With the leader promoting without waiting for the old primary's lease, some drawn
/// schedule has two writers.
#[test]
fn the_checkers_catch_a_missing_lease_wait() {
    let config = Config { mutations: Mutations { skip_lease_wait: true, ..Mutations::default() }, ..Config::default() };
    assert_caught(config, "skip_lease_wait");
}

/// With a fence that fails taken as done, some drawn schedule has two writers.
#[test]
fn the_checkers_catch_a_silently_failing_fence() {
    let config =
        Config { mutations: Mutations { silent_fence_failure: true, ..Mutations::default() }, ..Config::default() };
    assert_caught(config, "silent_fence_failure");
}
