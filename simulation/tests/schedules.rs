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

/// Seeds the hour-long soak of 2026-12-07 found breaking a guarantee, since fixed: a renewal
/// answered after the holder released the lease lifted the fence again (one writer); a
/// member its guard had stopped was started fenced and then lifted with the guard disarmed
/// (one writer); a run given up after its promotion had started left its epoch to the next
/// run (promoted once); a Redis master's lift asked for in time reached the server after its
/// guard's fence, and undid it (one writer; the last three seeds, also from the soak at
/// 6e3695a). A seed's run follows the code, so these prove those cases only while
/// the code near them is unchanged; `simulation/reports/soak.md` lists the original finds.
const ONCE_FAILED: [u64; 67] = [
    104021869415282,
    104021869430434,
    104021869432862,
    104021869434630,
    104021869439492,
    104021869445911,
    104021869457368,
    104021869461424,
    104021869464437,
    104021869472060,
    104021869477348,
    104021869480560,
    104021869482897,
    104021869487883,
    104021869489141,
    104021869491171,
    104021869509619,
    104021869510164,
    104021869515951,
    104021869518482,
    104021869519164,
    104021869520086,
    104021869522651,
    104021869523532,
    104021869527873,
    104021869532511,
    104021869544097,
    104021869547851,
    104021869562985,
    104021869568480,
    104021869574456,
    104021869576069,
    104021869579432,
    104021869583441,
    104021869587084,
    104021869588341,
    104021869589881,
    104021869592705,
    104021869598208,
    104021869599246,
    104021869605150,
    104021869605836,
    104021869606828,
    104021869607532,
    104021869609348,
    104021869611795,
    104021869612081,
    104021869613388,
    104021869621525,
    104021869627725,
    104021869630575,
    104021869633322,
    104021869633942,
    104021869641187,
    104021869647580,
    104021869654126,
    104021869654215,
    104021869654810,
    104021869655660,
    104021869656456,
    104021869657713,
    104021869658740,
    104021869658968,
    104021869669394,
    104021869493896,
    257229800827282,
    257229800896217,
];

#[test]
fn seeds_the_soak_once_failed_keep_every_guarantee() {
    let config = Config::default();
    let failed: Vec<String> = ONCE_FAILED
        .iter()
        .map(|seed| vigil_simulation::run(*seed, &config))
        .filter(|run| !run.passed())
        .map(|run| run.failure_message())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} once-failed seeds fail again:\n{}",
        failed.len(),
        ONCE_FAILED.len(),
        failed.join("\n")
    );
}
