//! Benchmark of PostgreSQL failover on loopback: kill -9 of the primary's postmaster, with
//! three real PostgreSQL 15 servers and three `vigil` processes, under the default timings and
//! the fast profile. Each run starts from a fresh lab (the killed primary is not rejoined).
//!
//! Reports, median and max over the runs, each measured from the kill: detection (the first
//! node's first failed probe, as vigil records it), the decision, the promotion, vigil's
//! first write on the new primary, and the first write a client (multi-host connection
//! string, `target_session_attrs=read-write`, one insert every 10 ms) gets acknowledged by
//! the new primary. Writes the figures into BENCHMARKS.md. Run:
//! `cargo bench -p vigil --bench pg_failover` (`VIGIL_BENCH_RUNS=N` to change the 10 runs;
//! `VIGIL_BENCH_KEEP_LOGS=DIR` keeps the nodes' and the servers' logs of each profile's last
//! run in `DIR`).

// A benchmark of real processes measures with the OS clock.
#![allow(clippy::disallowed_types)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ClusterOptions;
use common::pg_lab::Lab;
use vigil_chaos_tests::postgres::VIGIL_PASSWORD;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Profile {
    name: &'static str,
    group_toml: &'static str,
    raft_toml: &'static str,
}

const PROFILES: [Profile; 2] = [
    Profile {
        name: "default",
        group_toml: "down_after = \"600ms\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"500ms\"\n",
        raft_toml: "",
    },
    Profile {
        name: "fast",
        group_toml: "down_after = \"300ms\"\nprobe_interval = \"100ms\"\nprobe_timeout = \"250ms\"\n\
                     lease_duration = \"600ms\"\n",
        raft_toml: "",
    },
];

/// One run's times, in milliseconds after the kill.
#[derive(Debug)]
struct RunTimes {
    detected: f64,
    decided: f64,
    promoted: f64,
    vigil_first_write: f64,
    client_first_write: f64,
}

/// A client that writes every 10 ms and records when it first succeeded on a new server.
fn start_client(lab: &Lab, killed_port: u16) -> (Arc<AtomicBool>, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
    let ports: Vec<String> = lab.pg.instances().iter().map(|instance| instance.port.to_string()).collect();
    let url = format!(
        "host={} port={} user=vigil password={VIGIL_PASSWORD} dbname=postgres target_session_attrs=read-write connect_timeout=1",
        vec!["127.0.0.1"; ports.len()].join(","),
        ports.join(",")
    );
    lab.pg.sql(0, "CREATE TABLE bench_writes (at timestamptz)").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let first_write_elsewhere = Arc::new(AtomicU64::new(0));
    let (stopping, first) = (stop.clone(), first_write_elsewhere.clone());
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let mut client: Option<(tokio_postgres::Client, u16)> = None;
            while !stopping.load(Ordering::SeqCst) {
                if client.is_none() {
                    if let Ok((connected, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                        tokio::spawn(connection);
                        let port: i32 = connected
                            .query_one("SELECT inet_server_port()", &[])
                            .await
                            .map(|row| row.get(0))
                            .unwrap_or(0);
                        client = Some((connected, port as u16));
                    } else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                let (connection, port) = client.as_ref().unwrap();
                match connection.execute("INSERT INTO bench_writes VALUES (now())", &[]).await {
                    Ok(_) if *port != killed_port => {
                        let _ = first.compare_exchange(0, now_ms(), Ordering::SeqCst, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => client = None,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    });
    (stop, first_write_elsewhere, handle)
}

fn one_run(profile: &Profile) -> RunTimes {
    let options = ClusterOptions {
        extra_toml: if profile.raft_toml.is_empty() {
            ClusterOptions::default().extra_toml
        } else {
            profile.raft_toml.to_string()
        },
        ..ClusterOptions::default()
    };
    let lab = Lab::start_with(profile.group_toml, &[], &[], options);
    let killed_port = lab.pg.instances()[0].port;
    let (stop, client_first, client) = start_client(&lab, killed_port);
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = now_ms();
    lab.pg.kill_postmaster(0).unwrap();
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "{run:#}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client_first.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let after = |key: &str| run[key].as_u64().unwrap_or(killed_at).saturating_sub(killed_at) as f64;
    println!("  steps: {}", common::describe_steps(&run));
    if let Some(dir) = std::env::var_os("VIGIL_BENCH_KEEP_LOGS") {
        // The nodes' logs of the last run, to see where the time went.
        for id in 1..=3 {
            std::fs::write(Path::new(&dir).join(format!("{}-n{id}.log", profile.name)), lab.vigil.log_of(id)).ok();
            let server_log = lab.pg.instances()[id as usize - 1].log_file();
            std::fs::copy(server_log, Path::new(&dir).join(format!("{}-pg{id}.log", profile.name))).ok();
        }
    }
    RunTimes {
        detected: after("detected_at_ms"),
        decided: after("decided_at_ms"),
        promoted: after("promoted_at_ms"),
        vigil_first_write: after("first_write_at_ms"),
        client_first_write: client_first.load(Ordering::SeqCst).saturating_sub(killed_at) as f64,
    }
}

fn median_max(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() / 2], values[values.len() - 1])
}

fn write_section(path: &Path, marker: &str, section: &str) {
    let start = format!("<!-- {marker}:start -->");
    let end = format!("<!-- {marker}:end -->");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let block = format!("{start}\n{section}{end}\n");
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(s), Some(e)) => {
            format!("{}{block}{}", &existing[..s], existing[e + end.len()..].trim_start_matches('\n'))
        }
        _ => format!("{}\n\n{block}", existing.trim_end()),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
}

fn main() {
    let runs: usize = std::env::var("VIGIL_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut section = String::from("## PostgreSQL failover on primary kill (loopback)\n\n");
    section.push_str(&format!(
        "Reproduce: `cargo bench -p vigil --bench pg_failover` ({runs} runs per profile, each on a fresh lab of three \
         PostgreSQL 15 servers and three vigil nodes on 127.0.0.1; the primary's postmaster is killed with SIGKILL \
         while a client inserts a row every 10 ms through a multi-host connection string). Measured {}.\n\n",
        humantime::format_rfc3339_seconds(SystemTime::now())
    ));
    section.push_str(
        "Milliseconds after the kill, median / max. *Detected* is when the first vigil node saw the primary fail; \
         *client write* is the first insert acknowledged by the new primary.\n\n\
         | profile | settings | detected | decided | promoted | vigil's first write | client's first write |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for profile in &PROFILES {
        let mut times: Vec<RunTimes> = Vec::new();
        for run in 0..runs {
            let measured = one_run(profile);
            println!("{} run {}: {measured:?}", profile.name, run + 1);
            times.push(measured);
        }
        let column = |pick: fn(&RunTimes) -> f64| {
            let mut values: Vec<f64> = times.iter().map(pick).collect();
            let (median, max) = median_max(&mut values);
            format!("{median:.0} / {max:.0}")
        };
        let settings = profile.group_toml.trim().replace('\n', ", ").replace('"', "")
            + if profile.raft_toml.is_empty() {
                ", raft defaults (heartbeat 50 ms, election 250-500 ms)"
            } else {
                ", raft heartbeat 50ms, election 250-500ms"
            };
        section.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            profile.name,
            settings,
            column(|t| t.detected),
            column(|t| t.decided),
            column(|t| t.promoted),
            column(|t| t.vigil_first_write),
            column(|t| t.client_first_write),
        ));
    }
    print!("{section}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    write_section(&path, "pg_failover", &section);
    println!("wrote {}", path.display());
}
