//! Real redis-server processes (a master and two replicas) watched by three real `vigil`
//! processes: failover on a killed master, the fence guard of a master whose vigil died, the
//! lag policy, a switchover that loses no acknowledged write, a one-node partition that must
//! not fail over, and bad specs.

// These tests wait for real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::redis_lab::RedisLab;
use vigil_chaos_tests::redis::RedisCluster;

/// Kill -9 of the master: exactly one promotion, of the replica with the highest offset
/// (redis2 is cut from its master while keys are written, so redis3 is ahead), and redis2
/// then replicates from redis3; the epoch is written and history has the loss estimate.
#[test]
fn killing_the_master_promotes_the_replica_with_the_highest_offset() {
    let lab = RedisLab::start("", &[], &[]);
    // redis2 stops replicating (pointed at a port where nothing listens); redis3 goes on.
    let dead_end = common::free_port().to_string();
    lab.redis.command(1, &["REPLICAOF", "127.0.0.1", &dead_end]).unwrap();
    for n in 0..200 {
        lab.redis.command(0, &["SET", &format!("key{n}"), &"x".repeat(100)]).unwrap();
    }
    lab.wait_for("redis3 to be ahead of redis2 in the verdicts", |group| {
        let lsn = |name: &str| {
            group["members"].as_array().unwrap().iter().find(|m| m["name"] == name).and_then(|m| m["lsn"].as_u64())
        };
        matches!((lsn("redis2"), lsn("redis3")), (Some(a), Some(b)) if b > a)
    });
    lab.redis.kill(0).unwrap();
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "run: {run:#}");
    assert_eq!(run["candidate"], "redis3", "run: {run:#}");
    assert_eq!(run["epoch"], 1);
    assert_eq!(lab.redis.role(2).unwrap(), "master");
    assert_eq!(lab.redis.command(2, &["GET", "vigil:epoch"]).unwrap(), "1");
    assert_eq!(lab.redis.command(2, &["GET", "key199"]).unwrap().len(), 100, "the new master lacks a write");
    lab.wait_for("redis2 to follow redis3", |_| lab.follows("redis2", "redis3"));
    assert_eq!(lab.runs().len(), 1, "exactly one failover run");
    for key in ["detected_at_ms", "decided_at_ms", "promoted_at_ms", "first_write_at_ms"] {
        assert!(run[key].is_u64(), "{key} missing: {run:#}");
    }
    let history = lab.vigil.cli(1, &["history", "cache"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.contains("data-loss estimate"), "{text}");
}

/// A replica further behind than `maximum_lag_on_failover` is never promoted: with the only
/// other replica `nofailover`, the group reports that no failover is possible, and why.
#[test]
fn a_lagging_replica_is_never_promoted() {
    let lab = RedisLab::start("maximum_lag_on_failover = 1000\n", &["", "nofailover = true", "priority = 100"], &[]);
    // redis3 stops replicating (pointed at a port where nothing listens) while the master
    // takes 20 kB more.
    let dead_end = common::free_port().to_string();
    lab.redis.command(2, &["REPLICAOF", "127.0.0.1", &dead_end]).unwrap();
    for n in 0..100 {
        lab.redis.command(0, &["SET", &format!("key{n}"), &"y".repeat(200)]).unwrap();
    }
    // The master's new offset reaches the replicated state (facts refresh every second).
    std::thread::sleep(Duration::from_millis(2500));
    lab.redis.kill(0).unwrap();
    let group = lab.wait_for("the block to be recorded", |group| {
        group["blocked"].as_str().is_some_and(|reason| reason.contains("redis3 lags"))
    });
    assert!(group["blocked"].as_str().unwrap().contains("redis2 is nofailover"), "{group:#}");
    assert!(group["last_run"].is_null(), "a failover ran: {group:#}");
    assert_eq!(lab.redis.role(2).unwrap(), "slave", "the lagging replica was promoted");
    let status = lab.vigil.cli(1, &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("NO FAILOVER POSSIBLE"));
}

/// Writes `RPUSH acked N` to whichever member is the master, recording every acknowledged N.
struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<u64>>>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(redis: Arc<RedisCluster>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            std::thread::spawn(move || {
                let mut master = 0;
                let mut next = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let value = next.to_string();
                    match redis.command(master, &["RPUSH", "acked", &value]) {
                        Ok(_) => {
                            acknowledged.lock().unwrap().push(next);
                            next += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        // Refused (READONLY) or unanswered: not acknowledged; try the next member.
                        Err(_) => {
                            next += 1;
                            master = (master + 1) % 3;
                        }
                    }
                }
            })
        };
        Writer { stop, acknowledged, handle: Some(handle) }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap();
        self.acknowledged.lock().unwrap().clone()
    }
}

/// A planned switchover (writes paused, the candidate catches up to the final offset, then
/// promoted) loses no acknowledged write, and the old master ends up a replica of the new.
/// An admin asks a follower for it, and the run names the admin.
#[test]
fn switchover_loses_no_acknowledged_write() {
    let RedisLab { vigil, redis, spec_path } = RedisLab::start("", &[], &[]);
    let redis = Arc::new(redis);
    let writer = Writer::start(redis.clone());
    std::thread::sleep(Duration::from_secs(1));
    let (leader, _) = vigil.wait_for_agreed_leader(&[1, 2, 3], Duration::from_secs(20));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let output = vigil.cli_as_operator(&[follower], &["switchover", "cache", "--to", "redis2"]);
    assert!(
        output.status.success(),
        "switchover failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = writer.finish();
    assert!(acknowledged.len() > 50, "the writer made too little progress: {}", acknowledged.len());
    let stored: BTreeSet<u64> =
        redis.command(1, &["LRANGE", "acked", "0", "-1"]).unwrap().lines().map(|n| n.parse().unwrap()).collect();
    let lost: Vec<&u64> = acknowledged.iter().filter(|n| !stored.contains(n)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost: {lost:?}", lost.len());
    assert_eq!(redis.role(1).unwrap(), "master");
    let lab = RedisLab { vigil, redis: Arc::try_unwrap(redis).ok().unwrap(), spec_path };
    lab.wait_for("redis1 and redis3 to follow redis2", |_| {
        lab.follows("redis1", "redis2") && lab.follows("redis3", "redis2")
    });
    let run = lab.wait_for_run(0);
    assert_eq!(run["kind"], "switchover");
    assert_eq!(run["succeeded"], true, "{run:#}");
    assert!(run["reason"].as_str().unwrap().ends_with(" by admin"), "the run names the admin: {run:#}");
}

/// The vigil beside the master is killed: when the master's lease runs out, the fence guard
/// it left behind makes the master refuse writes (the guard's own log says so), and another
/// member is promoted.
#[test]
fn a_master_whose_vigil_dies_is_fenced_by_its_guard() {
    let mut lab = RedisLab::start("", &[], &[]);
    lab.vigil.wait_until("node 1's fence guard to be up", Duration::from_secs(30), || {
        lab.vigil.log_of(1).contains("fence guard started")
    });
    // A few renewals (every 300 ms) have armed the guard.
    std::thread::sleep(Duration::from_secs(1));
    lab.vigil.kill(1);
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "run: {run:#}");
    assert_ne!(run["candidate"], "redis1", "run: {run:#}");
    lab.vigil.wait_until("the guard to report its fence", Duration::from_secs(10), || {
        lab.vigil.log_of(1).contains("the master refuses writes")
    });
    let log = lab.vigil.log_of(1);
    assert!(log.contains("lease ran out with nobody renewing: making the master refuse writes"), "{log}");
    let refusal = lab.redis.command(0, &["SET", "after-the-lease", "1"]).expect_err("redis1 took a write");
    assert!(refusal.to_string().contains("NOREPLICAS"), "{refusal}");
}

/// One node that cannot reach the master (a failpoint cuts its probes) is one opinion, not a
/// quorum: nothing is failed over.
#[test]
fn a_master_one_node_cannot_reach_is_not_failed_over() {
    let lab = RedisLab::start("", &[], &[(3, "VIGIL_FAILPOINTS", "cut-probe=redis1")]);
    lab.wait_for("node 3's verdict on redis1 to be down", |group| group["members"][0]["verdicts"]["n3"] == "down");
    std::thread::sleep(Duration::from_secs(5));
    let group = lab.group().unwrap();
    assert_eq!(group["primary"], "redis1");
    assert!(group["last_run"].is_null() && group["running"].is_null(), "a failover ran: {group:#}");
    assert_eq!(lab.redis.role(0).unwrap(), "master");
}

/// Members that do not answer at apply time are accepted (and shown down); a group with no
/// members, an unknown node, or an unreadable password file is refused with the field named,
/// and the spec in force stays as it was.
#[test]
fn bad_redis_specs_are_refused_with_the_field_named() {
    let lab = RedisLab::start("", &[], &[]);
    let before = lab.vigil.cli(1, &["spec"]).stdout;
    let good = std::fs::read_to_string(&lab.spec_path).unwrap();
    let cases = [
        (good.replace("node = \"n2\"", "node = \"n9\""), "redis[0].members[1].node"),
        (
            good.replace(lab.vigil.dir.path().join("redis.password").to_str().unwrap(), "/nonexistent/redis.password"),
            "redis[0].password",
        ),
        (good.split("[[redis.members]]").next().unwrap().to_string() + "members = []\n", "redis[0].members"),
    ];
    for (index, (text, field)) in cases.iter().enumerate() {
        let path = lab.vigil.dir.path().join(format!("bad{index}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = lab.vigil.cli(1, &["apply", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "case {index} was accepted");
        assert!(stderr.contains(field), "case {index}: {stderr}");
    }
    assert_eq!(lab.vigil.cli(1, &["spec"]).stdout, before, "a refused spec changed the spec in force");

    // A fourth member nobody runs: accepted, and shown down.
    let unreachable = format!(
        "{good}\n[[redis.members]]\nname = \"redis4\"\nhost = \"127.0.0.1\"\nport = {}\nnode = \"n1\"\n",
        common::free_port()
    );
    std::fs::write(&lab.spec_path, unreachable).unwrap();
    let output = lab.vigil.cli(1, &["apply", "-f", lab.spec_path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    lab.wait_for("redis4 to be shown down", |group| {
        group["members"].as_array().unwrap().iter().any(|m| m["name"] == "redis4" && m["verdicts"]["n1"] == "down")
    });
}
