//! The Redis harness against Debian's real redis-server: clusters start fast and
//! replicate, faults do what they say, and dropping a cluster leaves nothing behind; a
//! cluster spread over a lab replicates across it.

// These tests measure how long real servers take to start; tokio's clock is not involved.
#![allow(clippy::disallowed_types)]

use std::fs;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use vigil_chaos_tests::netns::NetLab;
use vigil_chaos_tests::redis::{LAB_PORT, RedisCluster};

/// Polls `args` on member `index` until it answers `expected`, for at most ten seconds.
fn wait_for_answer(cluster: &RedisCluster, index: usize, args: &[&str], expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = cluster.command(index, args);
        if matches!(&answer, Ok(text) if text == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {index} answered {answer:?} to {args:?}, expected {expected:?}\nlog:\n{}",
            cluster.log_tail(index).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// A three-member cluster starts within seconds with one master and two replicas whose
/// links are up, and a key written on the master reaches both replicas.
#[test]
fn three_members_start_quickly_and_replicate_a_write() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3).expect("cluster starts");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "start(3) took {elapsed:?}");

    let names: Vec<&str> = cluster.instances().iter().map(|instance| instance.name.as_str()).collect();
    assert_eq!(names, ["redis1", "redis2", "redis3"]);
    assert!(cluster.root().starts_with("/tmp"));
    assert_eq!(cluster.role(0).unwrap(), "master");
    let master_port = cluster.address(0).1;
    for replica in [1, 2] {
        assert_eq!(cluster.role(replica).unwrap(), "slave");
        let info = cluster.info_replication(replica).unwrap();
        assert_eq!(info.get("master_port"), Some(&master_port.to_string()), "{info:?}");
        assert_eq!(info.get("master_link_status").map(String::as_str), Some("up"), "{info:?}");
    }
    assert_eq!(cluster.info_replication(0).unwrap().get("connected_slaves").map(String::as_str), Some("2"));

    assert_eq!(cluster.command(0, &["SET", "harness:check", "written on the master"]).unwrap(), "OK");
    for replica in [1, 2] {
        wait_for_answer(&cluster, replica, &["GET", "harness:check"], "written on the master");
    }
    // A replica refuses writes, and the harness reports the server's error.
    let refused = cluster.command(1, &["SET", "harness:check", "on a replica"]).unwrap_err();
    assert!(refused.to_string().contains("READONLY"), "{refused}");
    assert_eq!(cluster.command(0, &["GET", "harness:missing"]).unwrap(), "", "a nil renders as empty");
}

/// Killing the master makes its port refuse connections and a replica's link go down;
/// it restarts with `start_instance`, stops cleanly, and a frozen member stops answering
/// until it is thawed.
#[test]
fn kill_stop_freeze_and_restart_do_what_they_say() {
    let cluster = RedisCluster::start(2).expect("cluster starts");
    let (_, port) = cluster.address(0);
    let pid = cluster.pid(0).expect("the master runs");
    assert!(process_alive(pid));

    cluster.kill(0).expect("kill succeeds");
    assert!(!process_alive(pid), "pid {pid} survived SIGKILL");
    assert_eq!(cluster.pid(0), None);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts");
    assert!(cluster.command(0, &["PING"]).is_err(), "a killed master still answers");
    assert!(cluster.kill(0).is_err(), "a dead server cannot be killed twice");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.info_replication(1).unwrap().get("master_link_status").map(String::as_str) != Some("down") {
        assert!(Instant::now() < deadline, "the replica's link stayed up after the master died");
        thread::sleep(Duration::from_millis(20));
    }

    cluster.start_instance(0).expect("restarts after the crash");
    assert_ne!(cluster.pid(0), Some(pid));
    assert_eq!(cluster.command(0, &["PING"]).unwrap(), "PONG");
    assert!(cluster.start_instance(0).is_err(), "a running member cannot be started twice");
    cluster.wait_link_up(1, Duration::from_secs(10)).expect("the replica follows the restarted master");

    cluster.freeze(1).unwrap();
    let started = Instant::now();
    assert!(cluster.command(1, &["PING"]).is_err(), "a frozen member answered");
    assert!(started.elapsed() < Duration::from_secs(10), "the harness waited {:?}", started.elapsed());
    cluster.thaw(1).unwrap();
    assert_eq!(cluster.command(1, &["PING"]).unwrap(), "PONG");

    cluster.stop(1).expect("stops cleanly");
    assert!(cluster.command(1, &["PING"]).is_err(), "a stopped server still answers");
    cluster.start_instance(1).expect("starts again");
    cluster.wait_link_up(1, Duration::from_secs(10)).expect("and replicates again");
}

/// Dropping a cluster kills every server it started and removes its directory.
#[test]
fn drop_leaves_no_process_and_no_directory() {
    let cluster = RedisCluster::start(2).expect("cluster starts");
    let root = cluster.root().to_path_buf();
    let pids: Vec<u32> = (0..2).map(|index| cluster.pid(index).expect("running")).collect();
    cluster.freeze(1).unwrap();

    drop(cluster);

    let alive: Vec<u32> = pids.into_iter().filter(|pid| process_alive(*pid)).collect();
    assert!(alive.is_empty(), "processes still running after drop: {alive:?}");
    assert!(!root.exists(), "{} still exists", root.display());
}

/// A cluster needs members, and a member index must exist.
#[test]
fn invalid_requests_are_refused() {
    assert!(RedisCluster::start(0).is_err());
    let cluster = RedisCluster::start(1).expect("cluster starts");
    assert!(cluster.command(3, &["PING"]).is_err());
    assert!(cluster.kill(3).is_err());
    assert!(cluster.command(0, &[]).is_err());
    assert_eq!(cluster.pid(3), None);
}

/// Spread over a lab, each member listens on its host's address at the standard port and
/// the replica follows the master across the lab network; cutting the master's link takes
/// the replica's link down, and healing it brings the link back.
#[test]
fn a_lab_cluster_replicates_across_the_lab() {
    let lab = NetLab::create(&["dc1", "dc2"]).expect("lab is created");
    let cluster = RedisCluster::start_in(&lab, &["dc1", "dc2"]).expect("cluster starts in the lab");
    assert_eq!(cluster.address(0), (lab.ip("dc1").to_string(), LAB_PORT));
    assert_eq!(cluster.host_of(1), Some("dc2"));
    let info = cluster.info_replication(1).unwrap();
    assert_eq!(info.get("master_host"), Some(&lab.ip("dc1").to_string()), "{info:?}");

    cluster.command(0, &["SET", "lab:key", "crossed the lab"]).unwrap();
    wait_for_answer(&cluster, 1, &["GET", "lab:key"], "crossed the lab");

    lab.cut("dc1").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while cluster.info_replication(1).unwrap().get("master_link_status").map(String::as_str) != Some("down") {
        assert!(Instant::now() < deadline, "the replica's link stayed up across a cut");
        thread::sleep(Duration::from_millis(100));
    }
    lab.heal("dc1").unwrap();
    cluster.wait_link_up(1, Duration::from_secs(20)).expect("the link comes back after healing");
}
