//! `chaos-tests`: runs fault schedules against a real vigil cluster in the namespace lab and
//! writes a report per run. `suite` runs the scenario files of the CI suite, `run` one
//! scenario file or one seed, `soak` many seeded schedules with a summary.
//!
//! Needs root (network namespaces, nftables) and a built `vigil` binary, by default the
//! one beside this binary (`cargo build -p vigil -p vigil-chaos-tests`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use vigil_chaos_tests::record::{CheckResult, RunRecord};
use vigil_chaos_tests::report;
use vigil_chaos_tests::runner::{self, RunOptions};
use vigil_chaos_tests::schedule::Schedule;

/// The groups the lab runs, for generated schedules.
const GROUPS: [&str; 2] = ["main", "cache"];

#[derive(Parser)]
#[command(name = "chaos-tests", about = "Take datacenters away from a vigil cluster and check its guarantees")]
struct Args {
    /// The vigil binary (default: `vigil` beside this program).
    #[arg(long, global = true)]
    vigil: Option<PathBuf>,
    /// Where the reports go: one directory per run.
    #[arg(long, global = true, default_value = "chaos-reports")]
    out: PathBuf,
    /// The longest a failover may take, fault to the new primary's first acknowledged write.
    #[arg(long, global = true, default_value = "6500ms", value_parser = humantime::parse_duration)]
    rto_target: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every scenario file in a directory (the CI suite: chaos-tests/scenarios).
    Suite {
        /// The directory of scenario files.
        #[arg(default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
        dir: PathBuf,
    },
    /// One scenario file, or one generated schedule.
    Run {
        /// A scenario file.
        #[arg(long, conflicts_with = "seed", required_unless_present = "seed")]
        scenario: Option<PathBuf>,
        /// A seed to generate the schedule from.
        #[arg(long)]
        seed: Option<u64>,
        /// Episodes in a generated schedule.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        episodes: usize,
    },
    /// `runs` generated schedules, seeds `seed`, `seed + 1`, ...; a summary in `out`.
    Soak {
        /// How many schedules.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Episodes per schedule.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        episodes: usize,
    },
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(format!("`{text}`: expected a whole number of at least 1")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Ctrl-C or a TERM ends the run at its next wait, and the lab is torn down on the way
    // out (processes, nftables tables, namespaces) instead of being left behind.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        if let Err(error) = signal_hook::flag::register(signal, interrupted.clone()) {
            eprintln!("chaos-tests: cannot handle signal {signal}: {error}");
            return ExitCode::from(2);
        }
    }
    let outcome = run(&args, &interrupted);
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("chaos-tests: interrupted; the lab was torn down");
        return ExitCode::from(130);
    }
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("chaos-tests: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs what was asked; `Ok(false)` when a run broke a guarantee.
fn run(args: &Args, interrupted: &Arc<AtomicBool>) -> anyhow::Result<bool> {
    let vigil = match &args.vigil {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("vigil"),
    };
    let options = |reproduce: String| RunOptions {
        vigil: vigil.clone(),
        rto_target: args.rto_target,
        converge_within: Duration::from_secs(90),
        reproduce,
        interrupted: interrupted.clone(),
    };
    match &args.command {
        Command::Suite { dir } => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("read {}", dir.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
                .collect();
            files.sort();
            let mut passed = true;
            for file in files {
                if interrupted.load(Ordering::SeqCst) {
                    break;
                }
                let schedule = Schedule::load(&file)?;
                let reproduce = format!("chaos-tests run --scenario {}", file.display());
                passed &= run_one(&schedule, &options(reproduce), &args.out)?.passed();
            }
            Ok(passed)
        }
        Command::Run { scenario, seed, episodes } => {
            let (schedule, reproduce) = match (scenario, seed) {
                (Some(file), _) => (Schedule::load(file)?, format!("chaos-tests run --scenario {}", file.display())),
                (None, Some(seed)) => (
                    Schedule::generate(*seed, *episodes, &GROUPS),
                    format!("chaos-tests run --seed {seed} --episodes {episodes}"),
                ),
                (None, None) => anyhow::bail!("--scenario FILE or --seed N is needed"),
            };
            Ok(run_one(&schedule, &options(reproduce), &args.out)?.passed())
        }
        Command::Soak { runs, seed, episodes } => {
            let mut records = Vec::new();
            for seed in *seed..*seed + *runs {
                if interrupted.load(Ordering::SeqCst) {
                    break;
                }
                let schedule = Schedule::generate(seed, *episodes, &GROUPS);
                let reproduce = format!("chaos-tests run --seed {seed} --episodes {episodes}");
                let record = run_one(&schedule, &options(reproduce), &args.out)?;
                records.push((PathBuf::from(dir_name(&schedule)), record));
                let summary = report::soak_summary(
                    &records,
                    &format!("chaos-tests soak --runs {runs} --seed {} --episodes {episodes}", args_seed(args)),
                );
                std::fs::write(args.out.join("README.md"), summary)?;
            }
            Ok(records.iter().all(|(_, record)| record.passed()))
        }
    }
}

fn args_seed(args: &Args) -> u64 {
    match args.command {
        Command::Soak { seed, .. } => seed,
        _ => 0,
    }
}

fn dir_name(schedule: &Schedule) -> String {
    schedule.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect()
}

/// Runs one schedule, writes its report, prints one line, returns the record.
fn run_one(schedule: &Schedule, options: &RunOptions, out: &Path) -> anyhow::Result<RunRecord> {
    let dir = out.join(dir_name(schedule));
    eprintln!("chaos-tests: running {} ({} episodes)", schedule.name, schedule.episodes.len());
    let record = match runner::run(schedule, options, Some(&dir.join("logs"))) {
        Ok(record) => record,
        // The lab broke (a server would not start, a fault could not be injected): a soak
        // goes on with the next schedule, and the run is reported as failed, with why.
        Err(error) => RunRecord {
            name: schedule.name.clone(),
            seed: schedule.seed,
            reproduce: options.reproduce.clone(),
            checks: vec![CheckResult {
                name: "the run itself".into(),
                group: None,
                passed: false,
                detail: format!("{error:#}"),
            }],
            ..RunRecord::default()
        },
    };
    let path = report::write_run(&record, &dir)?;
    let failed: Vec<&str> =
        record.checks.iter().filter(|check| !check.passed).map(|check| check.name.as_str()).collect();
    println!(
        "{} {}: {} ({})",
        if failed.is_empty() { "PASS" } else { "FAIL" },
        schedule.name,
        path.display(),
        if failed.is_empty() { format!("{} checks", record.checks.len()) } else { failed.join(", ") }
    );
    Ok(record)
}
