//! The PostgreSQL harness against real PostgreSQL 15: clusters start fast and replicate,
//! faults do what they say, and dropping a cluster leaves nothing behind.

// These tests measure how long real servers take to start; tokio's clock is not involved.
#![allow(clippy::disallowed_types)]

use std::fs;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use vigil_chaos_tests::postgres::{PgCluster, VIGIL_USER};

/// Polls `sql` on member `index` until it answers `expected`, for at most ten seconds.
fn wait_for_answer(cluster: &PgCluster, index: usize, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = cluster.sql(index, sql);
        if matches!(&answer, Ok(text) if text == expected) {
            return;
        }
        assert!(Instant::now() < deadline, "member {index} answered {answer:?} to {sql:?}, expected {expected:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn process_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.trim().chars().next()))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Every process whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|candidate| {
            fs::read_to_string(format!("/proc/{candidate}/stat"))
                .ok()
                .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(pid)
        })
        .collect()
}

/// A three-member cluster starts well within 15 s, with one primary and two streaming
/// replicas, and a row written on the primary reaches both replicas.
#[test]
fn three_members_start_quickly_and_replicate_a_row() {
    let started = Instant::now();
    let cluster = PgCluster::start(3).expect("cluster starts");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "start(3) took {elapsed:?}");

    assert_eq!(cluster.instances().len(), 3);
    let names: Vec<&str> = cluster.instances().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["pg1", "pg2", "pg3"]);
    assert!(!cluster.is_in_recovery(0).unwrap());
    assert!(cluster.is_in_recovery(1).unwrap());
    assert!(cluster.is_in_recovery(2).unwrap());
    assert!(cluster.root().starts_with("/tmp"));
    assert!(cluster.bin_dir().join("pg_ctl").exists());
    assert!(cluster.connection_string(1).contains(&format!("port={}", cluster.instances()[1].port)));
    assert_eq!(cluster.sql(0, "SELECT current_user").unwrap(), VIGIL_USER);

    // Each replica streams from the primary under its own name.
    wait_for_answer(
        &cluster,
        0,
        "SELECT string_agg(application_name || ':' || state, ',' ORDER BY application_name) \
         FROM pg_stat_replication",
        "pg2:streaming,pg3:streaming",
    );

    cluster.sql(0, "CREATE TABLE harness_check (id int PRIMARY KEY, note text)").unwrap();
    cluster.sql(0, "INSERT INTO harness_check VALUES (1, 'written on the primary')").unwrap();
    for replica in [1, 2] {
        wait_for_answer(&cluster, replica, "SELECT note FROM harness_check WHERE id = 1", "written on the primary");
    }
}

/// Killing the primary's postmaster makes it refuse connections; it then restarts
/// (crash recovery) with `start_instance`, and stops and starts again cleanly.
#[test]
fn kill_postmaster_makes_the_primary_unreachable() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    let port = cluster.instances()[0].port;
    assert_eq!(cluster.sql(0, "SELECT 1").unwrap(), "1");

    cluster.kill_postmaster(0).expect("kill succeeds");
    assert!(cluster.sql(0, "SELECT 1").is_err(), "a killed primary still answers");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still accepts");
    assert!(cluster.kill_postmaster(0).is_err(), "a dead postmaster cannot be killed twice");

    cluster.start_instance(0).expect("restarts after the crash");
    assert_eq!(cluster.sql(0, "SELECT 1").unwrap(), "1");
    cluster.stop(0).expect("stops cleanly");
    assert!(cluster.sql(0, "SELECT 1").is_err(), "a stopped server still answers");
    cluster.start_instance(0).expect("starts again");
    assert!(!cluster.is_in_recovery(0).unwrap());
}

/// Dropping a cluster stops every server it started (postmasters and their children)
/// and removes its directory.
#[test]
fn drop_leaves_no_process_and_no_directory() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    let root = cluster.root().to_path_buf();
    let mut pids = Vec::new();
    for index in 0..cluster.instances().len() {
        let postmaster = cluster.postmaster_pid(index).unwrap().expect("postmaster.pid exists");
        assert!(process_alive(postmaster));
        pids.push(postmaster);
        pids.extend(children_of(postmaster));
    }
    assert!(pids.len() > 2, "expected postmasters and their children, found {pids:?}");

    drop(cluster);

    let alive: Vec<i32> = pids.into_iter().filter(|pid| process_alive(*pid)).collect();
    assert!(alive.is_empty(), "processes still running after drop: {alive:?}");
    assert!(!root.exists(), "{} still exists", root.display());
}

/// A cluster needs members, and a member index must exist.
#[test]
fn invalid_requests_are_refused() {
    assert!(PgCluster::start(0).is_err());
}
