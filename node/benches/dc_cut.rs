//! Benchmark of a datacenter cut in the network-namespace lab: three datacenters, each with
//! a vigil node and a PostgreSQL 15 member (then, in a second series, a redis-server); the
//! primary's datacenter is cut off (its link goes dead) while a writer inside it keeps
//! writing to the old primary and a client in a fourth host writes to whichever server
//! takes writes. Each run starts from a fresh lab.
//!
//! Reports, median and max over the runs (10 by default, `VIGIL_BENCH_RUNS=N`): when the old
//! primary took its last write, when the new primary took its first, and the dual-primary
//! window (the overlap of the two, zero when they never both took writes). Writes the
//! figures into BENCHMARKS.md. Run: `cargo bench -p vigil --bench dc_cut`.

// A benchmark of real processes measures with the OS clock.
#![allow(clippy::disallowed_types)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::dc_lab::{CLIENT, DcLab, LabWriter};
use common::redis_dc_lab::{RedisDcLab, RedisWriter};

struct RunTimes {
    old_last_ms: f64,
    new_first_ms: f64,
    window_ms: f64,
}

fn one_run() -> RunTimes {
    let lab = DcLab::start("", "");
    lab.pg.sql(0, "CREATE TABLE writes (id bigint PRIMARY KEY, at timestamptz NOT NULL)").unwrap();
    lab.pg.wait_streaming(1, Duration::from_secs(10)).unwrap();
    lab.pg.wait_streaming(2, Duration::from_secs(10)).unwrap();
    let old_writer = LabWriter::start(&lab.net, "dc1", lab.conninfo(&[0], false), 1);
    let new_writer = LabWriter::start(&lab.net, CLIENT, lab.conninfo(&[1, 2], true), 1_000_000_000);
    std::thread::sleep(Duration::from_secs(2));
    let cut_at = Instant::now();
    lab.net.cut("dc1").unwrap();
    lab.wait_for("the failover to finish", |group| {
        group["running"].is_null() && group["last_run"]["succeeded"] == true
    });
    std::thread::sleep(Duration::from_secs(1));
    let (old_acks, new_acks) = (old_writer.finish(), new_writer.finish());
    let (host, port) = lab.pg.address(0);
    let old_server = format!("{host}:{port}");
    let last_old = old_acks.iter().filter(|(_, server, _)| *server == old_server).map(|(at, ..)| *at).max().unwrap();
    let first_new = new_acks.iter().filter(|(_, server, _)| *server != old_server).map(|(at, ..)| *at).min().unwrap();
    let ms = |at: Instant| at.saturating_duration_since(cut_at).as_secs_f64() * 1000.0;
    RunTimes {
        old_last_ms: ms(last_old),
        new_first_ms: ms(first_new),
        window_ms: last_old.saturating_duration_since(first_new).as_secs_f64() * 1000.0,
    }
}

/// The same cut with a Redis group: redis1 (master) in dc1, default settings.
fn one_redis_run() -> RunTimes {
    // The Redis lab's own defaults are the tests' patient timings: measure vigil's defaults.
    let lab = RedisDcLab::start("down_after = \"600ms\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"500ms\"\n");
    let old_writer = RedisWriter::start(&lab.net, "dc1", lab.addresses(&[0]), "dc1", 1);
    let new_writer = RedisWriter::start(&lab.net, CLIENT, lab.addresses(&[1, 2]), "client", 1_000_000_000);
    std::thread::sleep(Duration::from_secs(2));
    let cut_at = Instant::now();
    lab.net.cut("dc1").unwrap();
    lab.wait_for("the failover to finish", |group| {
        group["running"].is_null() && group["last_run"]["succeeded"] == true
    });
    std::thread::sleep(Duration::from_secs(1));
    let (old_acks, new_acks) = (old_writer.finish(), new_writer.finish());
    let old_server = lab.server(0);
    let last_old = old_acks.iter().filter(|(_, server, _)| *server == old_server).map(|(at, ..)| *at).max().unwrap();
    let first_new = new_acks.iter().filter(|(_, server, _)| *server != old_server).map(|(at, ..)| *at).min().unwrap();
    let ms = |at: Instant| at.saturating_duration_since(cut_at).as_secs_f64() * 1000.0;
    RunTimes {
        old_last_ms: ms(last_old),
        new_first_ms: ms(first_new),
        window_ms: last_old.saturating_duration_since(first_new).as_secs_f64() * 1000.0,
    }
}

/// Runs `runs` cuts with `one` and returns the table rows (median and max of each figure).
fn series(kind: &str, runs: usize, one: fn() -> RunTimes) -> String {
    let mut times = Vec::new();
    for run in 0..runs {
        let measured = one();
        println!(
            "{kind} run {}: old primary's last write {:.0} ms, new primary's first {:.0} ms, overlap {:.0} ms",
            run + 1,
            measured.old_last_ms,
            measured.new_first_ms,
            measured.window_ms
        );
        times.push(measured);
    }
    let (old_median, old_max) = median_max(times.iter().map(|t| t.old_last_ms).collect());
    let (new_median, new_max) = median_max(times.iter().map(|t| t.new_first_ms).collect());
    let (window_median, window_max) = median_max(times.iter().map(|t| t.window_ms).collect());
    format!(
        "| {kind}: old primary's last acknowledged write | {old_median:.0} | {old_max:.0} |\n\
         | {kind}: new primary's first acknowledged write | {new_median:.0} | {new_max:.0} |\n\
         | {kind}: dual-primary window (overlap of the two) | {window_median:.0} | {window_max:.0} |\n"
    )
}

fn median_max(mut values: Vec<f64>) -> (f64, f64) {
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
    let postgres = series("PostgreSQL", runs, one_run);
    let redis = series("Redis", runs, one_redis_run);
    let section = format!(
        "## Datacenter cut (network namespaces): PostgreSQL and Redis\n\n\
         Reproduce: `cargo bench -p vigil --bench dc_cut` ({runs} runs per kind, each on a fresh lab: three \
         datacenters as network namespaces on one machine, a vigil node and a PostgreSQL 15 member (then a \
         redis-server) in each, default settings: lease 1.5 s, down_after 600 ms, probe every 200 ms, Raft \
         heartbeat 50 ms and election timeout 250 to 500 ms; the primary's datacenter link is taken down while a \
         writer inside it writes every 10 ms to the old primary and a client in a fourth host writes every 10 ms to \
         whichever server takes writes). Measured {}.\n\n\
         | milliseconds after the cut | median | max |\n|---|---|---|\n{postgres}{redis}\n\
         The old primary is fenced by the node beside it when that node cannot renew its lease (at most 1.2 s after \
         its last renewal: PostgreSQL made read-only, Redis writes refused); the leader promotes only after the lease \
         has run out by its own clock (1.5 s stretched by the 1 % clock-drift bound, plus 100 ms). The bar from the \
         issues, measured by others in a similar three-datacenter lab: Patroni 4.1 (defaults) 33 s to the new \
         primary's first write and its old primary writable for 17.5 s; Redis Sentinel 7.0 (defaults) 32 s, about \
         2.1 s at `down-after-milliseconds 500`, its old master writable until the network healed.\n",
        humantime::format_rfc3339_seconds(SystemTime::now())
    );
    print!("{section}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    write_section(&path, "dc_cut", &section);
    println!("wrote {}", path.display());
}
