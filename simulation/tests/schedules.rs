//! Seeded schedules: thousands of drawn fault schedules, every guarantee checked on each.

use vigil_simulation::{Config, batch};

/// How many schedules run unless `VIGIL_SIM_SCHEDULES` says otherwise.
const SCHEDULES: u64 = 10_000;
/// How many failures the message lists in full.
const LISTED: usize = 100;

/// Every one of 10,000 seeded schedules (2–4 fault episodes each, then a settle phase)
/// keeps every guarantee: one writer per group at every instant, no acknowledged write lost
/// in strict mode, every failover run finished once and no promotion twice, step timeouts
/// measured by elapsed time, and a converged cluster after the faults.
#[test]
fn many_seeded_schedules_keep_every_guarantee() {
    let schedules = std::env::var("VIGIL_SIM_SCHEDULES")
        .ok()
        .map(|value| value.parse::<u64>().expect("VIGIL_SIM_SCHEDULES is a number"))
        .unwrap_or(SCHEDULES);
    let (found, seconds) = batch::timed(0..schedules, &Config::default());
    println!(
        "{} schedules in {seconds:.1} s on {} threads: {:.1} s simulated and {} coordinator calls a schedule",
        found.schedules,
        batch::threads(),
        found.simulated_us as f64 / 1e6 / found.schedules.max(1) as f64,
        found.handle_calls / found.schedules.max(1)
    );
    if found.failed.is_empty() {
        return;
    }
    let listed: Vec<String> = found.failed.iter().take(LISTED).map(|run| run.failure_message()).collect();
    panic!(
        "{} of {} schedules broke a guarantee{}:\n{}",
        found.failed.len(),
        found.schedules,
        if found.failed.len() > LISTED { format!(" (the first {LISTED} below)") } else { String::new() },
        listed.join("\n")
    );
}

/// A seed means the same run: the same schedule, the same events, the same trace.
#[test]
fn a_seed_means_the_same_run() {
    let config = Config::default();
    let (first, second) = (vigil_simulation::run(7, &config), vigil_simulation::run(7, &config));
    assert_eq!(first.trace, second.trace);
    assert_eq!((first.stats.events, first.stats.handle_calls), (second.stats.events, second.stats.handle_calls));
}
