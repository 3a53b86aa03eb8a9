//! The README's first command (`vigil demo`) and the shipped example configuration work.

// This test waits for real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `vigil demo` starts three nodes, prints how to reach them once a leader exists, answers
/// `vigil status`, and on Ctrl-C stops its nodes and removes its directory.
#[test]
fn demo_runs_a_cluster_and_cleans_up_on_interrupt() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("demo");
    // A base port with its 3 UDP and 3 TCP ports free; the demo itself refuses taken ones.
    let base = loop {
        let candidate = 20_000 + (common::free_port() % 20_000);
        let free = (1..=3).all(|id| {
            std::net::UdpSocket::bind(("127.0.0.1", candidate + id)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", candidate + 100 + id)).is_ok()
        });
        if free {
            break candidate;
        }
    };
    let mut demo = Command::new(common::vigil_bin())
        .args(["demo", "--dir", dir.to_str().unwrap(), "--base-port", &base.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(demo.id() as i32);
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut pids_line = String::new();
    let mut redis_pid = None::<i32>;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.contains("kill a node") {
            pids_line = line.clone();
        }
        if line.contains("(redis1;") {
            redis_pid = line.split_whitespace().find_map(|word| word.parse().ok());
        }
        let leader_line = line.starts_with("[demo] leader is");
        seen.push(line);
        if leader_line {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("status --config")), "no instructions printed: {seen:?}");
    assert!(seen.iter().any(|l| l.starts_with("[demo] leader is")), "no leader announced: {seen:?}");

    let status = common::vigil(&["status", "--config", dir.join("n1.toml").to_str().unwrap()]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    // Both groups are under watch (the spec is applied before the instructions are printed).
    let spec = common::vigil(&["spec", "--config", dir.join("n1.toml").to_str().unwrap()]);
    let spec = String::from_utf8_lossy(&spec.stdout);
    assert!(spec.contains("[[postgres]]") && spec.contains("[[redis]]"), "{spec}");
    let redis_pid = redis_pid.unwrap_or_else(|| panic!("no Redis instructions printed: {seen:?}"));

    // The node PIDs the demo printed, to check they are gone afterwards.
    let node_pids: Vec<i32> = pids_line
        .split_whitespace()
        .filter_map(|word| word.trim_matches(|c| c == '(' || c == ')' || c == ';').split_once('='))
        .filter_map(|(_, pid)| pid.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .collect();
    assert_eq!(node_pids.len(), 3, "could not read node PIDs from {pids_line:?}");

    kill(pid, Signal::SIGINT).unwrap();
    let exit = demo.wait().unwrap();
    assert!(exit.success(), "demo exited with {exit}");
    assert!(!dir.exists(), "demo directory left behind");
    for node_pid in node_pids {
        assert!(kill(Pid::from_raw(node_pid), None).is_err(), "node process {node_pid} still running");
    }
    assert!(kill(Pid::from_raw(redis_pid), None).is_err(), "redis-server {redis_pid} still running");
}

/// deploy/examples/node.toml passes `vigil check-config` once its certificates exist.
#[test]
fn example_configuration_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/node.toml");
    let text = std::fs::read_to_string(example).unwrap();
    // The example keeps its data in /var/lib/vigil; point it into the test's directory.
    let text = text.replace("data_dir = \"/var/lib/vigil\"", "data_dir = \"data\"");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, text).unwrap();
    let certs = dir.path().join("certs");
    assert!(common::vigil(&["certs", "init", "--out", certs.to_str().unwrap(), "--nodes", "1,2,3"]).status.success());
    let output = common::vigil(&["check-config", config.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok (node 1"));
}
