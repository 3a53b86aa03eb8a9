//! `vigil-sim`: re-runs one seed of the simulation and prints its trace, or soaks (runs seeds
//! from a random start until the time is up) and writes a Markdown report.
//!
//! ```text
//! vigil-sim run --seed N [--scenario NAME] [--mutation NAME] [--nodes 5] [--redis-fence-faults] [--verbose]
//! vigil-sim soak --minutes M --report PATH [--mutation NAME] [--nodes 5] [--start SEED]
//! ```
//! Scenarios: isolated-leader, promoted-then-cut-off, stuck-fence, late-lift,
//! wall-step-during-host-step, wall-step-back-while-retry-waits,
//! wall-step-ahead-while-retry-waits, lagging-standby, candidate-node-dies, guard-stop-restart,
//! restart-after-lift, stale-sync-request.
//! Mutations: skip_lease_wait, silent_fence_failure, unfenced_promotion, unconfirmed_fence,
//! unordered_fence_and_lift, wall_clock_step_timeouts, born_fenced_after_restart,
//! unversioned_sync_setting.
//!
//! With `RUST_LOG` set (e.g. `RUST_LOG=vigil_consensus=info`), the coordinators' own log
//! lines go to stderr as they happen, each under `node{n=.. t=..}`: the node and the
//! simulated time, to read beside the trace.

use std::process::ExitCode;

use vigil_consensus::coordinator::Mutations;
use vigil_simulation::batch;
use vigil_simulation::report::Soak;
use vigil_simulation::{Config, run};

/// The coordinators' log lines on stderr, filtered by `RUST_LOG`; the span that names the
/// node and the time is always shown.
fn show_coordinator_logs() {
    let filter = tracing_subscriber::EnvFilter::from_default_env()
        .add_directive("vigil_simulation=info".parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .without_time()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("RUST_LOG").is_some() {
        show_coordinator_logs();
    }
    match parse(&args) {
        Ok(Command::Run { seed, config }) => run_one(seed, &config),
        Ok(Command::Soak { minutes, report, start, config, mutation }) => {
            soak(minutes, &report, start, &config, mutation)
        }
        Ok(Command::Bench { start, seeds, config }) => bench(start, seeds, &config),
        Err(message) => {
            eprintln!("vigil-sim: {message}");
            eprintln!(
                "usage: vigil-sim run --seed N [--scenario NAME] [--mutation NAME] [--nodes 5] [--redis-fence-faults] [--verbose]"
            );
            eprintln!("       vigil-sim soak --minutes M --report PATH [--mutation NAME] [--nodes 5] [--start SEED]");
            ExitCode::from(2)
        }
    }
}

enum Command {
    Run { seed: u64, config: Config },
    Soak { minutes: f64, report: String, start: Option<u64>, config: Config, mutation: Option<String> },
    Bench { start: u64, seeds: u64, config: Config },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let (verb, rest) = args.split_first().ok_or("no command given")?;
    let mut options = std::collections::BTreeMap::new();
    let mut flags = std::collections::BTreeSet::new();
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        let name = word.strip_prefix("--").ok_or_else(|| format!("unexpected argument {word:?}"))?;
        if name == "redis-fence-faults" || name == "verbose" {
            flags.insert(name.to_string());
            continue;
        }
        let value = words.next().ok_or_else(|| format!("--{name} needs a value"))?;
        options.insert(name.to_string(), value.clone());
    }
    let number = |name: &str| -> Result<Option<u64>, String> {
        options.get(name).map(|value| value.parse().map_err(|_| format!("--{name}: not a number: {value}"))).transpose()
    };
    let mutation = options.get("mutation").cloned();
    let mut config = Config {
        mutations: mutation.as_deref().map(mutations).transpose()?.unwrap_or_default(),
        fence_faults_on_redis: flags.contains("redis-fence-faults"),
        verbose: flags.contains("verbose"),
        ..Config::default()
    };
    if let Some(settle) = number("settle")? {
        config.settle = std::time::Duration::from_secs(settle);
    }
    if let Some(nodes) = number("nodes")? {
        if nodes != 3 && nodes != 5 {
            return Err("--nodes: 3 or 5".to_string());
        }
        config.nodes = nodes as usize;
    }
    match verb.as_str() {
        "run" => {
            let seed = number("seed")?.ok_or("run needs --seed N")?;
            if let Some(name) = options.get("scenario") {
                let scenario = vigil_simulation::scenarios::named(name).ok_or_else(|| {
                    format!("no scenario {name:?}; scenarios: {}", vigil_simulation::scenarios::NAMES.join(", "))
                })?;
                config = Config { mutations: config.mutations, verbose: config.verbose, ..scenario };
            }
            Ok(Command::Run { seed, config })
        }
        "soak" => {
            let minutes = options
                .get("minutes")
                .ok_or("soak needs --minutes M")?
                .parse()
                .map_err(|_| "--minutes: not a number".to_string())?;
            let report = options.get("report").cloned().ok_or("soak needs --report PATH")?;
            Ok(Command::Soak { minutes, report, start: number("start")?, config, mutation })
        }
        "bench" => {
            Ok(Command::Bench { start: number("start")?.unwrap_or(0), seeds: number("seeds")?.unwrap_or(100), config })
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

fn mutations(name: &str) -> Result<Mutations, String> {
    let mut mutations = Mutations::default();
    match name {
        "skip_lease_wait" => mutations.skip_lease_wait = true,
        "silent_fence_failure" => mutations.silent_fence_failure = true,
        "unfenced_promotion" => mutations.unfenced_promotion = true,
        "unconfirmed_fence" => mutations.unconfirmed_fence = true,
        "unordered_fence_and_lift" => mutations.unordered_fence_and_lift = true,
        "wall_clock_step_timeouts" => mutations.wall_clock_step_timeouts = true,
        "born_fenced_after_restart" => mutations.born_fenced_after_restart = true,
        "unversioned_sync_setting" => mutations.unversioned_sync_setting = true,
        other => return Err(format!("unknown mutation {other:?}")),
    }
    Ok(mutations)
}

fn run_one(seed: u64, config: &Config) -> ExitCode {
    let result = run(seed, config);
    for line in &result.trace {
        println!("{line}");
    }
    let stats = result.stats;
    println!(
        "\nseed {seed}: {:.1} s simulated, {} events, {} coordinator calls, {} entries committed",
        stats.simulated_us as f64 / 1e6,
        stats.events,
        stats.handle_calls,
        stats.committed
    );
    if result.passed() {
        println!("no violation");
        ExitCode::SUCCESS
    } else {
        for violation in &result.violations {
            println!("VIOLATION {violation}");
        }
        ExitCode::FAILURE
    }
}

/// Runs seeds START..START+N on one thread and says what a run costs: coordinator calls,
/// simulated time, wall time; and prints every seed that failed.
#[allow(clippy::disallowed_types)]
fn bench(start: u64, seeds: u64, config: &Config) -> ExitCode {
    let started = std::time::Instant::now();
    let found = batch::run_seeds(start..start + seeds, config, 1, &|| true);
    for failed in &found.failed {
        println!("{}", failed.failure_message());
    }
    println!("converged after the last fault (whole seconds: runs): {:?}", found.converged_after_s);
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{seeds} runs in {seconds:.2} s: {:.1} ms a run, {:.0} coordinator calls a run, {:.1} s simulated a run, {:.2} µs a call, {} failed",
        seconds * 1e3 / seeds as f64,
        found.handle_calls as f64 / seeds as f64,
        found.simulated_us as f64 / 1e6 / seeds as f64,
        seconds * 1e6 / found.handle_calls as f64,
        found.failed.len()
    );
    ExitCode::SUCCESS
}

// The soak's own deadline and random start come from the OS clock: they choose which seeds
// run, never what happens in one.
#[allow(clippy::disallowed_types)]
fn soak(minutes: f64, report: &str, start: Option<u64>, config: &Config, mutation: Option<String>) -> ExitCode {
    let started = std::time::Instant::now();
    let first_seed = start.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
    });
    let budget = std::time::Duration::from_secs_f64(minutes * 60.0);
    let keep_going = || started.elapsed() < budget;
    let found = batch::run_seeds(first_seed..u64::MAX, config, batch::threads(), &keep_going);
    let soak = Soak {
        first_seed,
        schedules: found.schedules,
        seconds: started.elapsed().as_secs_f64(),
        mutation,
        failed: found.failed,
    };
    for failed in &soak.failed {
        println!("{}", failed.failure_message());
    }
    println!("{} schedules in {:.1} s, {} failed; report in {report}", soak.schedules, soak.seconds, soak.failed.len());
    let parent = std::path::Path::new(report).parent().filter(|parent| !parent.as_os_str().is_empty());
    if let Err(error) =
        parent.map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(report, soak.markdown()))
    {
        eprintln!("vigil-sim: cannot write {report}: {error}");
        return ExitCode::FAILURE;
    }
    if soak.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
