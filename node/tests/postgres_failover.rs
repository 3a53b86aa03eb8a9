//! Real PostgreSQL 15 with streaming replication, watched by three real `vigil` processes:
//! automatic failover, the lag policy, nofailover, switchover without loss, a leader killed
//! mid-failover, a one-node partition that must not fail over, and bad specs.

// These tests wait for real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::pg_lab::Lab;
use vigil_chaos_tests::postgres::{PgCluster, VIGIL_PASSWORD};

/// Checks the end state of an automatic failover to `new_primary`: one promotion (timeline
/// 2), the epoch written, and the remaining replica following the new primary.
fn assert_failed_over(lab: &Lab, new_primary: &str, other_replica: &str) {
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "run: {run:#}\n{}", lab.logs());
    assert_eq!(run["candidate"], new_primary, "run: {run:#}\n{}", lab.logs());
    assert_eq!(run["epoch"], 1);
    assert!(!lab.pg.is_in_recovery(lab.index_of(new_primary)).unwrap());
    assert_eq!(lab.timeline(new_primary), 2, "more than one promotion happened");
    let epoch =
        lab.pg.sql(lab.index_of(new_primary), "SELECT epoch FROM vigil.epoch WHERE group_name = 'main'").unwrap();
    assert_eq!(epoch, "1");
    lab.wait_for("the other replica to follow the new primary", |_| lab.streams_from(other_replica, new_primary));
    assert_eq!(lab.runs().len(), 1, "exactly one failover run");
    for key in ["detected_at_ms", "decided_at_ms", "promoted_at_ms", "first_write_at_ms"] {
        assert!(run[key].is_u64(), "{key} missing: {run:#}");
    }
    let history = lab.vigil.cli(lab.any_running_node(), &["history", "main"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.contains("data-loss estimate"), "{text}");
}

/// kill -9 of the primary's postmaster: exactly one promotion, of the most advanced
/// replica (pg2 is disconnected while rows are written, so pg3 is ahead), and pg2 then
/// follows pg3.
#[test]
fn killing_the_primary_promotes_the_most_advanced_replica() {
    let lab = Lab::start("", &[], &[]);
    disconnect_replica(&lab, 1);
    lab.pg.sql(0, "CREATE TABLE filler AS SELECT generate_series(1, 20000) AS n").unwrap();
    // pg3 streams the new rows; pg2, disconnected, does not.
    lab.wait_for("pg3 to be ahead of pg2 in the verdicts", |group| {
        let lsn = |name: &str| {
            group["members"].as_array().unwrap().iter().find(|m| m["name"] == name).and_then(|m| m["lsn"].as_u64())
        };
        matches!((lsn("pg2"), lsn("pg3")), (Some(a), Some(b)) if b > a)
    });
    lab.pg.kill_postmaster(0).unwrap();
    assert_failed_over(&lab, "pg3", "pg2");
}

/// Stops a replica's WAL receiver, so it falls behind until vigil re-points it.
fn disconnect_replica(lab: &Lab, index: usize) {
    lab.pg.sql(index, "ALTER SYSTEM SET primary_conninfo = ''").unwrap();
    lab.pg.sql(index, "SELECT pg_reload_conf()").unwrap();
    let name = lab.pg.instances()[index].name.clone();
    lab.wait_for("the replica to stop streaming", |group| {
        group["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name.as_str() && m["problem"].as_str().is_some_and(|p| p.contains("not streaming")))
    });
}

/// A replica further behind than maximum_lag_on_failover is not promoted, even though the
/// other replica would sort first by name.
#[test]
fn replica_beyond_the_lag_policy_is_never_chosen() {
    let lab = Lab::start("", &[], &[]);
    let spec = std::fs::read_to_string(&lab.spec_path).unwrap().replace("16777216", "65536");
    std::fs::write(&lab.spec_path, spec).unwrap();
    assert!(lab.vigil.cli(1, &["apply", "-f", lab.spec_path.to_str().unwrap()]).status.success());
    disconnect_replica(&lab, 1);
    // On a busy host a renewal may come late and pg1 be fenced for a moment: write once it
    // takes writes.
    lab.vigil.wait_until("pg1 to take the filler rows", Duration::from_secs(30), || {
        lab.pg.sql(0, "CREATE TABLE filler AS SELECT repeat('x', 100) AS s FROM generate_series(1, 20000)").is_ok()
    });
    lab.wait_for("pg2 to lag by more than 64 KiB", |group| {
        group["members"].as_array().unwrap().iter().any(|m| m["name"] == "pg2" && m["lag_bytes"].as_u64() > Some(65536))
    });
    lab.pg.kill_postmaster(0).unwrap();
    assert_failed_over(&lab, "pg3", "pg2");
}

/// A member marked nofailover is never promoted automatically. Afterwards the load-balancer
/// endpoints and the metrics follow the new primary.
#[test]
fn nofailover_is_respected() {
    let lab = Lab::start("", &["", "nofailover = true", ""], &[]);
    assert_eq!(lab.vigil.http_get(1, "/primary/main").0, 200);
    assert_eq!(lab.vigil.http_get(2, "/primary/main").0, 503);
    lab.pg.kill_postmaster(0).unwrap();
    assert_failed_over(&lab, "pg3", "pg2");
    lab.wait_for("node 3 to see pg3 as a healthy primary", |_| lab.vigil.http_get(3, "/primary/main").0 == 200);
    assert_eq!(lab.vigil.http_get(1, "/primary/main").0, 503);
    assert_eq!(lab.vigil.http_get(2, "/replica/main").0, 200);
    let (_, metrics) = lab.vigil.http_get(2, "/metrics");
    assert!(metrics.contains("vigil_group_epoch{group=\"main\"} 1"), "{metrics}");
    assert!(metrics.contains("vigil_member_is_primary{group=\"main\",member=\"pg3\"} 1"), "{metrics}");
    assert!(
        metrics.contains("vigil_group_failovers{group=\"main\",kind=\"failover\",outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
}

/// A primary that only one of the three vigil nodes cannot reach is not failed over.
#[test]
fn primary_unreachable_from_one_node_is_not_failed_over() {
    let lab = Lab::start("", &[], &[(3, "VIGIL_FAILPOINTS", "cut-probe=pg1")]);
    lab.wait_for("node 3 to see pg1 down", |group| {
        let pg1 = group["members"].as_array().unwrap().iter().find(|m| m["name"] == "pg1").unwrap().clone();
        pg1["verdicts"]["n3"] == "down"
    });
    // Six times down_after, and the primary stays.
    std::thread::sleep(Duration::from_secs(6));
    let group = lab.group().unwrap();
    assert_eq!(group["primary"], "pg1");
    assert!(group["running"].is_null() && group["last_run"].is_null(), "a failover happened: {group:#}");
    assert!(!lab.pg.is_in_recovery(0).unwrap());
    assert!(lab.pg.is_in_recovery(1).unwrap() && lab.pg.is_in_recovery(2).unwrap());
}

/// Writes rows with increasing ids to whichever server takes writes, and remembers every id
/// whose commit was acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<i64>>,
}

impl Writer {
    fn start(pg: &PgCluster) -> Writer {
        let hosts: Vec<String> = pg.instances().iter().map(|_| "127.0.0.1".to_string()).collect();
        let ports: Vec<String> = pg.instances().iter().map(|instance| instance.port.to_string()).collect();
        let url = format!(
            "host={} port={} user=vigil password={VIGIL_PASSWORD} dbname=postgres target_session_attrs=read-write connect_timeout=2",
            hosts.join(","),
            ports.join(",")
        );
        pg.sql(0, "CREATE TABLE acked (id bigint PRIMARY KEY)").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let mut acknowledged = Vec::new();
                let mut next = 1i64;
                let mut client = None;
                while !stopping.load(Ordering::SeqCst) {
                    if client.is_none() {
                        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                            Ok((connected, connection)) => {
                                tokio::spawn(connection);
                                client = Some(connected);
                            }
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                    let result = client.as_ref().unwrap().execute("INSERT INTO acked VALUES ($1)", &[&next]).await;
                    match result {
                        Ok(_) => {
                            acknowledged.push(next);
                            next += 1;
                        }
                        Err(_) => {
                            // Unacknowledged: it may or may not exist; never reuse the id.
                            next += 1;
                            client = None;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                acknowledged
            })
        });
        Writer { stop, handle }
    }

    fn finish(self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// A switchover under a constant write load loses no acknowledged row, and the old primary
/// comes back as a replica of the new one.
#[test]
fn switchover_loses_no_committed_row() {
    let lab = Lab::start("", &[], &[]);
    let writer = Writer::start(&lab.pg);
    std::thread::sleep(Duration::from_secs(1));
    let output = lab.vigil.cli(2, &["switchover", "main", "--to", "pg2"]);
    assert!(
        output.status.success(),
        "switchover failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = writer.finish();
    assert!(acknowledged.len() > 50, "the writer made too little progress: {}", acknowledged.len());
    let stored: std::collections::BTreeSet<i64> = lab
        .pg
        .sql(1, "SELECT string_agg(id::text, ',') FROM acked")
        .unwrap()
        .split(',')
        .map(|id| id.parse().unwrap())
        .collect();
    let lost: Vec<&i64> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "{} acknowledged rows lost: {lost:?}", lost.len());
    assert!(!lab.pg.is_in_recovery(1).unwrap());
    lab.wait_for("pg1 and pg3 to follow pg2", |_| lab.streams_from("pg1", "pg2") && lab.streams_from("pg3", "pg2"));
    let run = lab.wait_for_run(0);
    assert_eq!(run["kind"], "switchover");
    assert_eq!(run["succeeded"], true);
}

/// Switchover and failover are refused on a paused group, and a forced failover needs --yes.
#[test]
fn paused_group_refuses_switchover_and_says_so() {
    let lab = Lab::start("", &[], &[]);
    assert!(lab.vigil.cli(1, &["pause", "main"]).status.success());
    let output = lab.vigil.cli(1, &["switchover", "main"]);
    assert_eq!(output.status.code(), Some(6), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("paused"));
    let output = lab.vigil.cli(1, &["failover", "main", "--to", "pg2"]);
    assert_eq!(output.status.code(), Some(2), "a forced failover without --yes must be refused");
    // Node 1 shows it once it has applied the pause (the refusals above came from the leader).
    lab.vigil.wait_until("vigil status to say PAUSED", Duration::from_secs(10), || {
        String::from_utf8_lossy(&lab.vigil.cli(1, &["status"]).stdout).contains("PAUSED")
    });
    // Paused means no automatic failover either.
    lab.pg.kill_postmaster(0).unwrap();
    lab.wait_for("the block to be recorded", |group| {
        group["blocked"].as_str().is_some_and(|reason| reason.contains("paused"))
    });
    assert!(lab.group().unwrap()["last_run"].is_null());
}

fn leader_killed_at(step: &str, wait_for_step_index: usize) {
    let env = [(1, "VIGIL_FAILPOINTS", step), (2, "VIGIL_FAILPOINTS", step), (3, "VIGIL_FAILPOINTS", step)];
    let failpoint = format!("stall-before-step={step}");
    let env: Vec<(u64, &str, &str)> = env.iter().map(|(id, key, _)| (*id, *key, failpoint.as_str())).collect();
    let mut lab = Lab::start("", &[], &env);
    lab.pg.kill_postmaster(0).unwrap();
    lab.wait_for("the stalled step to be started", |group| {
        group["running"]["steps"][wait_for_step_index]["status"]["status"] == "started"
    });
    let leader = lab.vigil.leader().expect("a leader");
    lab.vigil.kill(leader);
    // Run 0 as history has it: a second failover may follow it before the status is read.
    lab.wait_for("run 0 to end", |_| lab.runs().first().is_some_and(|run| !run["succeeded"].is_null()));
    let run = lab.runs()[0].clone();
    let first_candidate = run["candidate"].as_str().unwrap().to_string();
    // Member pgN runs beside node N.
    if step == "promote" && leader == lab.index_of(&first_candidate) as u64 + 1 {
        // The leader killed was the node beside the candidate, before its promotion: nobody
        // could lift the fence the candidate would be born with, so the next leader gives the
        // run up unpromoted and promotes the other replica.
        assert_eq!(run["succeeded"], false, "{run:#}");
        assert!(
            run["outcome"].as_str().is_some_and(|outcome| outcome.contains("out of the leader's reach")),
            "{run:#}"
        );
        lab.wait_for("run 1 to succeed", |_| lab.runs().get(1).is_some_and(|run| run["succeeded"] == true));
        let second = lab.runs()[1]["candidate"].as_str().unwrap().to_string();
        assert_ne!(second, first_candidate);
        assert!(lab.pg.is_in_recovery(lab.index_of(&first_candidate)).unwrap(), "the first candidate was promoted");
        lab.vigil.start(leader);
        lab.wait_for("the first candidate to follow the new primary", |_| lab.streams_from(&first_candidate, &second));
        return;
    }
    assert_eq!(run["succeeded"], true, "{run:#}");
    let new_primary = first_candidate;
    let beside_new_primary = leader == lab.index_of(&new_primary) as u64 + 1;
    if !beside_new_primary {
        let other = if new_primary == "pg2" { "pg3" } else { "pg2" };
        assert_eq!(lab.timeline(&new_primary), 2, "the promotion happened more than once");
        assert!(!lab.pg.is_in_recovery(lab.index_of(&new_primary)).unwrap());
        lab.wait_for("the other replica to follow", |_| lab.streams_from(other, &new_primary));
        assert_eq!(lab.runs().len(), 1);
        return;
    }
    // The killed leader ran beside the new primary: unless the node is back in time, its
    // fence guard stops that primary when the lease runs out (a primary whose vigil is dead
    // must not stay writable), and the cluster fails over once more, to the replica the dead
    // leader had not re-pointed yet.
    // The group ends with exactly one primary, running, which the old primary (rewound)
    // follows. The stopped first candidate may not follow it: both promotions can have
    // picked timeline 2 (a known limit, see ARCHITECTURE.md), which leaves it to an operator
    // or to `allow_reclone`; it never runs as a second primary.
    lab.vigil.start(leader);
    let group = lab.wait_for("one running primary, followed by the old one", |group| {
        let Some(primary) = group["primary"].as_str() else { return false };
        // Restarted in time, the node renews before its guard acts, and nothing else happens.
        let others_follow = primary != new_primary
            || ["pg1", "pg2", "pg3"].iter().filter(|m| **m != primary).all(|m| lab.streams_from(m, primary));
        group["running"].is_null() && lab.streams_from("pg1", primary) && others_follow
    });
    let primary = group["primary"].as_str().unwrap().to_string();
    assert!(!lab.pg.is_in_recovery(lab.index_of(&primary)).unwrap());
    if primary != new_primary {
        assert!(
            lab.pg.is_in_recovery(lab.index_of(&new_primary)).unwrap_or(true),
            "the first candidate runs as a second primary"
        );
    }
    let runs = lab.runs();
    assert!(runs.iter().all(|run| run["succeeded"] == true), "{runs:#?}");
    assert_eq!(runs.last().unwrap()["candidate"], group["primary"]);
}

/// The leader dies after "promote" is committed as started but before it runs: the new
/// leader promotes, once.
#[test]
fn leader_killed_between_start_and_promote() {
    leader_killed_at("promote", 1);
}

/// The leader dies after the promotion, before re-pointing: the new leader finds the
/// promotion done, does not repeat it, and re-points the other replica.
#[test]
fn leader_killed_between_promote_and_repoint() {
    leader_killed_at("repoint", 3);
}

/// Bad specs are refused with the field named, and the spec in force stays unchanged.
#[test]
fn bad_specs_are_refused_and_change_nothing() {
    let lab = Lab::start("", &[], &[]);
    let before = lab.vigil.cli(1, &["spec", "--json"]).stdout;
    let good = std::fs::read_to_string(&lab.spec_path).unwrap();
    let cases = [
        (good.replace("node = \"n2\"", "node = \"n9\""), "postgres[0].members[1].node: no vigil node is named \"n9\""),
        (
            good.replace("name = \"pg3\"", "name = \"pg2\""),
            "postgres[0].members[2].name: member name \"pg2\" is used twice",
        ),
        (good.replace("vigil.password", "missing.password"), "postgres[0].password: cannot read"),
        (good.replace("maximum_lag_on_failover = 16777216", "maximum_lag_on_failover = -1"), "maximum_lag_on_failover"),
        (
            good.replace("down_after = \"1s\"", "down_after = \"100ms\""),
            "postgres[0].down_after: must be at least probe_interval",
        ),
        (
            good.replace("run_as = \"postgres\"", "run_as = \"postgres\"\nlease_duration = \"100ms\""),
            "postgres[0].lease_duration: must be at least three probe intervals",
        ),
        (
            good.replace("run_as = \"postgres\"", "run_as = \"postgres\"\nsynchronous = \"strict\"")
                .replace("node = \"n2\"", "node = \"n2\"\nnofailover = true")
                .replace("node = \"n3\"", "node = \"n3\"\nnofailover = true"),
            "postgres[0].synchronous: strict synchronous mode needs at least two members",
        ),
    ];
    for (index, (text, expected)) in cases.iter().enumerate() {
        let path = lab.vigil.dir.path().join(format!("bad{index}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = lab.vigil.cli(2, &["apply", "-f", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "bad spec {index} was accepted");
        assert!(stderr.contains(expected), "case {index}: expected {expected:?} in {stderr:?}");
    }
    assert_eq!(lab.vigil.cli(1, &["spec", "--json"]).stdout, before, "the spec in force changed");
}

/// A forced failover to a lagging replica (disconnected while rows are written) while the
/// primary is up: the old primary is stopped first, the named member is promoted anyway,
/// history records a data-loss estimate, and the members that were ahead of it are reported
/// as needing pg_rewind rather than silently left behind.
#[test]
fn forced_failover_promotes_the_named_member_even_if_it_lags() {
    let lab = Lab::start("", &[], &[]);
    disconnect_replica(&lab, 2);
    lab.pg.sql(0, "CREATE TABLE filler AS SELECT generate_series(1, 20000) AS n").unwrap();
    lab.wait_for("pg3 to lag", |group| {
        group["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "pg3" && m["lag_bytes"].as_u64() > Some(10_000))
    });
    let output = lab.vigil.cli(1, &["failover", "main", "--to", "pg3", "--yes"]);
    let run = lab.wait_for_run(0);
    assert_eq!(run["kind"], "forced", "{run:#}\n{}", lab.logs());
    assert_eq!(run["candidate"], "pg3");
    assert_eq!(run["succeeded"], true, "{run:#}\n{}", String::from_utf8_lossy(&output.stdout));
    assert!(!lab.pg.is_in_recovery(2).unwrap(), "pg3 was not promoted");
    assert_eq!(lab.timeline("pg3"), 2);
    assert!(run["old_primary_lsn"].as_u64() > run["candidate_lsn"].as_u64(), "no data-loss estimate: {run:#}");
    let outcome = run["outcome"].as_str().unwrap();
    assert!(outcome.contains("re-point pg2 failed") && outcome.contains("pg_rewind"), "{outcome}");
}

/// The killed old primary is brought back by the node beside it: rewound with pg_rewind
/// (its WAL may have gone past the new timeline's fork) and restarted as a replica of the
/// new primary, with the new timeline's data; history says so.
#[test]
fn killed_old_primary_is_brought_back_as_a_replica() {
    let lab = Lab::start("", &[], &[]);
    lab.pg.kill_postmaster(0).unwrap();
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "{run:#}");
    let new_primary = run["candidate"].as_str().unwrap().to_string();
    let new_index = lab.index_of(&new_primary);
    lab.pg.sql(new_index, "CREATE TABLE after_failover AS SELECT 42 AS answer").unwrap();
    lab.wait_for("pg1 to stream from the new primary", |_| lab.streams_from("pg1", &new_primary));
    assert!(lab.pg.is_in_recovery(0).unwrap());
    let replicated = (0..100)
        .find_map(|_| {
            let answer = lab.pg.sql(0, "SELECT answer FROM after_failover").ok();
            if answer.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            answer
        })
        .unwrap_or_else(|| {
            let start_log =
                std::fs::read_to_string(lab.pg.instances()[0].data_dir.join("vigil-start.log")).unwrap_or_default();
            panic!("no after_failover on pg1: {:?}\n{start_log}", lab.pg.sql(0, "SELECT answer FROM after_failover"))
        });
    assert_eq!(replicated, "42");
    lab.wait_for("history to record the rejoin", |_| {
        let history = lab.vigil.cli(2, &["history"]);
        String::from_utf8_lossy(&history.stdout).contains("pg1 rejoined as a replica of")
    });
}

/// The vigil process beside a live primary is killed: its fence guard stops the primary
/// once the lease runs out, so nothing can write to it while another member is promoted;
/// the cluster fails over, and ends with exactly one primary.
#[test]
fn primary_whose_vigil_dies_is_stopped_by_the_guard_before_another_is_promoted() {
    let mut lab = Lab::start("", &[], &[]);
    // The guard is up and has been armed by a few lease renewals (every 375 ms).
    lab.vigil.wait_until("node 1's fence guard to be up", Duration::from_secs(30), || {
        lab.vigil.log_of(1).contains("fence guard started")
    });
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    lab.vigil.kill(1);
    lab.wait_for("a failover away from pg1", |group| {
        group["running"].is_null() && group["last_run"]["succeeded"] == true && group["primary"] != "pg1"
    });
    let run = lab.wait_for_run(0);
    let fence = run["steps"][0]["status"]["detail"].as_str().unwrap_or_default().to_string();
    assert!(fence.contains("lease ran out"), "{fence}");
    // The guard stopped pg1 when the lease ran out: it answers no more.
    assert!(lab.pg.is_in_recovery(0).is_err(), "pg1 still answers after its node died");
    let new_primary = run["candidate"].as_str().unwrap().to_string();
    assert!(!lab.pg.is_in_recovery(lab.index_of(&new_primary)).unwrap());
    eprintln!("failed over {:?} after the node died", killed_at.elapsed());
}

/// An old primary that `pg_rewind` cannot rewind (it now runs without `wal_log_hints` and
/// without data checksums) is re-cloned with `pg_basebackup` when the spec allows it: it
/// comes back as a replica of the new primary with the new timeline's data, its old data
/// directory kept beside, and history says what happened.
#[test]
fn old_primary_that_cannot_be_rewound_is_recloned_when_allowed() {
    let lab = Lab::start("allow_reclone = true\n", &[], &[]);
    lab.pg.sql(0, "ALTER SYSTEM SET wal_log_hints = off").unwrap();
    lab.pg.kill_postmaster(0).unwrap();
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "run: {run:#}");
    let new_primary = run["candidate"].as_str().unwrap().to_string();
    let new_index = lab.index_of(&new_primary);
    lab.pg.sql(new_index, "CREATE TABLE after_reclone AS SELECT 7 AS answer").unwrap();
    lab.wait_for("pg1 to stream from the new primary", |_| lab.streams_from("pg1", &new_primary));
    let replicated = (0..100)
        .find_map(|_| {
            let answer = lab.pg.sql(0, "SELECT answer FROM after_reclone").ok();
            if answer.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            answer
        })
        .expect("pg1 never got the new primary's table");
    assert_eq!(replicated, "7");
    // The rejoin is recorded once it is done, a moment after pg1 streams.
    lab.vigil.wait_until("the rejoin to be recorded", Duration::from_secs(30), || {
        let history = lab.vigil.cli(lab.any_running_node(), &["history"]);
        String::from_utf8_lossy(&history.stdout).contains("pg1 rejoined as a replica of")
    });
    let history = lab.vigil.cli(lab.any_running_node(), &["history"]);
    let text = String::from_utf8_lossy(&history.stdout);
    assert!(text.contains("re-cloned with pg_basebackup"), "{text}");
    let data_dir = &lab.pg.instances()[0].data_dir;
    let name = data_dir.file_name().unwrap().to_string_lossy().to_string();
    let kept = std::fs::read_dir(data_dir.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .any(|entry| entry.file_name().to_string_lossy().starts_with(&format!("{name}.vigil-replaced-")));
    assert!(kept, "the old data directory was not kept beside the new one");
}

/// Host-local control through the operator's own start and stop commands (a systemd unit,
/// in production): a switchover stops the old primary and starts it again as a replica with
/// the commands named in the spec, not with `pg_ctl` directly.
#[test]
fn switchover_uses_the_members_own_start_and_stop_commands() {
    let pg = vigil_chaos_tests::postgres::PgCluster::start(3).expect("postgres cluster");
    let data = pg.instances()[0].data_dir.clone();
    let log = data.parent().unwrap().join("commands.log");
    let pg_ctl = pg.bin_dir().join("pg_ctl");
    let as_owner = pg.run_as().map(|user| format!("runuser -u {user} --")).unwrap_or_default();
    let start = format!(
        "echo start >> {log} && {as_owner} {pg_ctl} start -D {data} -l {data}/commands-start.log",
        log = log.display(),
        pg_ctl = pg_ctl.display(),
        data = data.display()
    );
    let stop = format!(
        "echo stop >> {log} && {as_owner} {pg_ctl} stop -D {data} -m fast",
        log = log.display(),
        pg_ctl = pg_ctl.display(),
        data = data.display()
    );
    let commands = format!("start_command = '{start}'\nstop_command = '{stop}'\n");
    // Node 1, beside pg1, allows exactly these commands in its own configuration.
    let options =
        common::ClusterOptions { allow_extra: format!("commands = ['{start}', '{stop}']\n"), ..Default::default() };
    let lab = Lab::start_on(pg, "", &[&commands], &[], options);
    let output = lab.vigil.cli(1, &["switchover", "main", "--to", "pg2"]);
    assert!(output.status.success(), "switchover failed: {}", String::from_utf8_lossy(&output.stderr));
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "{run:#}");
    lab.wait_for("pg1 to stream from pg2", |_| lab.streams_from("pg1", "pg2"));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "stop\nstart\n");
}

/// The primary stops and nothing can replace it (both replicas are nofailover): its own node
/// releases the lease, waits in case a failover comes, then starts it again fenced, and the
/// next committed lease renewal lifts the fence. The group has its primary back, at the
/// same epoch, without a human.
#[test]
fn a_stopped_primary_nothing_can_replace_is_started_again_by_its_node() {
    let lab = Lab::start("", &["", "nofailover = true", "nofailover = true"], &[]);
    let epoch = lab.group().unwrap()["epoch"].as_u64().unwrap();
    lab.pg.kill_postmaster(0).unwrap();
    lab.wait_for("pg1 to be down for every node", |group| {
        group["members"][0]["verdicts"]
            .as_object()
            .is_some_and(|verdicts| verdicts.len() == 3 && verdicts.values().all(|verdict| verdict == "down"))
    });
    lab.wait_for("pg1 to take writes again", |_| lab.pg.sql(0, "CREATE TABLE IF NOT EXISTS back (n int)").is_ok());
    let group = lab.group().unwrap();
    assert_eq!(group["primary"], "pg1", "{group:#}");
    assert_eq!(group["epoch"].as_u64().unwrap(), epoch, "no failover happened: {group:#}");
    assert!(group["last_run"].is_null(), "{group:#}");
    assert!(lab.vigil.log_of(1).contains("nothing replaced it: starting it again"), "{}", lab.vigil.log_of(1));
}

/// The Raft leader, on another node than the primary's, freezes for longer than a lease
/// (SIGSTOP: its sockets stay open and nothing answers, as when its host is cut off). The
/// renewals the primary's node had sent it are never answered; the next leader must renew
/// the lease, and the primary must be neither stopped nor failed over. A chaos soak saw the
/// fence guard stop it in this situation: a renewal answered only after the lease had run
/// out armed the guard with no time left. That race needs unlucky timing, so this test may
/// pass without the fix; the unit tests of the arming decision in `lease.rs` pin it down.
#[test]
fn a_frozen_raft_leader_moves_no_primary() {
    let lab = Lab::start_led_away_from_the_primary();
    let (leader, _) = lab.vigil.wait_for_agreed_leader(&[1, 2, 3], Duration::from_secs(30));
    assert_ne!(leader, 1, "the lab starts with the leader away from pg1's node");
    let epoch = lab.group().unwrap()["epoch"].as_u64().unwrap();
    let postmaster = lab.pg.postmaster_pid(0).unwrap().expect("pg1 runs");
    // Renewals go out every 375 ms: let a few go to this leader first.
    std::thread::sleep(Duration::from_secs(1));
    lab.vigil.freeze(leader);
    std::thread::sleep(Duration::from_secs(4));
    lab.vigil.thaw(leader);
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let (new_leader, _) = lab.vigil.wait_for_agreed_leader(&others, Duration::from_secs(30));
    assert_ne!(new_leader, leader, "a new leader took over while the old one was frozen");
    lab.wait_for("pg1 to take writes", |_| lab.pg.sql(0, "CREATE TABLE IF NOT EXISTS after_freeze (n int)").is_ok());
    let group = lab.group().unwrap();
    assert_eq!(group["primary"], "pg1", "{group:#}\n{}", lab.logs());
    assert_eq!(group["epoch"].as_u64().unwrap(), epoch, "no failover: {group:#}");
    assert!(group["last_run"].is_null(), "no failover: {group:#}");
    assert_eq!(lab.pg.postmaster_pid(0).unwrap(), Some(postmaster), "pg1 was restarted\n{}", lab.logs());
    assert!(!lab.vigil.log_of(1).contains("stopping the primary"), "{}", lab.vigil.log_of(1));
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_string_lossy().parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// The parent of process `pid`, while it runs.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
}

/// Every process running `pg_ctl stop` on `data_dir`: its pid and its parent's.
fn pg_ctl_stops_of(data_dir: &str) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !(line.contains("pg_ctl") && line.contains(" stop ") && line.contains(data_dir)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent follows the state, after the command name in parentheses.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        found.push((pid, parent.unwrap_or(0)));
    }
    found
}

/// A daemon asked to stop while its fence hangs (the primary's whole server is frozen with
/// SIGSTOP: each read-only fence waits for its timeout and is tried again) stops within its
/// grace period, says so, and leaves no `pg_ctl` of its own running (the fence guard's, which
/// may be stopping the server by then, is not the daemon's).
#[test]
fn sigterm_while_a_stop_hangs_ends_the_daemon_and_its_tasks() {
    let mut lab = Lab::start("", &[], &[]);
    lab.wait_for("pg1 to take writes", |group| {
        group["primary"] == "pg1" && lab.pg.sql(0, "CREATE TABLE IF NOT EXISTS before_freeze (n int)").is_ok()
    });
    let postmaster = lab.pg.postmaster_pid(0).unwrap().unwrap_or_else(|| panic!("pg1 runs\n{}", lab.logs()));
    let data_dir = lab.pg.instances()[0].data_dir.display().to_string();
    // The whole server freezes (a kept session is served by its own backend, which would
    // otherwise go on answering): the postmaster first, so that it starts nothing new.
    let mut frozen = vec![postmaster as u32];
    frozen.extend(children_of(postmaster as u32));
    let signal = |signal| {
        for pid in &frozen {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), signal);
        }
        Ok::<(), ()>(())
    };
    signal(nix::sys::signal::Signal::SIGSTOP).expect("freeze pg1");
    // The fence guard may be stopping pg1 too, once the lease runs out: its processes are not
    // the daemon's.
    let guard_pid: u32 = std::fs::read_to_string(lab.vigil.data_dir(1).join("fence-guard.pid"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    // The cluster fails pg1 over, and node 1, which held its lease, fences it for the hand
    // over: its read-only fence hangs on the frozen server and is tried again and again.
    // (`runuser` runs the guard's `pg_ctl`: a process whose parent or grandparent is the
    // guard is the guard's, not the daemon's.)
    let daemons = |stops: Vec<(u32, u32)>| -> Vec<(u32, u32)> {
        stops.into_iter().filter(|(_, parent)| *parent != guard_pid && parent_of(*parent) != Some(guard_pid)).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lab.vigil.log_of(1).contains("fencing failed") {
        if Instant::now() > deadline {
            let _ = signal(nix::sys::signal::Signal::SIGCONT);
            panic!("node 1 never tried to fence the frozen pg1\n{}", lab.vigil.log_of(1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let daemons_stops = daemons(pg_ctl_stops_of(&data_dir));
    let asked = Instant::now();
    lab.vigil.stop(1);
    let took = asked.elapsed();
    let log = lab.vigil.log_of(1);
    // An orphan would have a new parent by now: compared by pid. A process killed with the
    // daemon's group is gone once the kernel has run its exit, a moment later on a busy host.
    let killed_by = Instant::now() + Duration::from_secs(2);
    let still_there: Vec<(u32, u32)> = loop {
        let left: Vec<(u32, u32)> = pg_ctl_stops_of(&data_dir)
            .into_iter()
            .filter(|(pid, _)| daemons_stops.iter().any(|(stopping, _)| stopping == pid))
            .collect();
        if left.is_empty() || Instant::now() > killed_by {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(nix::sys::signal::Signal::SIGCONT).expect("thaw pg1");
    assert!(took < Duration::from_secs(15), "the daemon took {took:?} to stop\n{log}");
    assert!(log.contains("shutting down") && log.contains("coordination stopped"), "{log}");
    // openraft may log its own last words after vigil's.
    assert!(log.lines().rev().take(3).any(|line| line.contains("vigil::daemon: stopped")), "{log}");
    assert!(still_there.is_empty(), "the daemon's pg_ctl outlived it: {still_there:?}");
}

/// The servers of a lab that take TCP clients over TLS only (`hostssl`), their certificate
/// from a CA of their own naming 127.0.0.1; the nodes allow the CA file.
fn tls_pg() -> (vigil_chaos_tests::postgres::PgCluster, common::ClusterOptions) {
    let ca = vigil_consensus::pki::CertificateAuthority::generate("pg").unwrap();
    let server = ca.issue_node(99, &["127.0.0.1".to_string()]).unwrap();
    let tls = vigil_chaos_tests::postgres::PgServerTls {
        ca_pem: ca.certificate().cert_pem.clone(),
        cert_pem: server.cert_pem,
        key_pem: server.key_pem,
    };
    let pg = vigil_chaos_tests::postgres::PgCluster::start_with_tls(3, tls).expect("postgres cluster with TLS");
    let options = common::ClusterOptions { secret_files: vec![pg.tls_dir().join("ca.crt")], ..Default::default() };
    (pg, options)
}

/// With TLS required by every server, vigil probes with `sslmode=verify-full`, fails over,
/// and brings the old primary back as a replica: `pg_rewind` and the replicas' streaming
/// go over TLS too (nothing else gets in).
#[test]
fn with_tls_required_vigil_probes_fails_over_and_rejoins() {
    let (pg, options) = tls_pg();
    let tls = format!("tls = {{ mode = \"verify-full\", ca = \"{}\" }}\n", pg.tls_dir().join("ca.crt").display());
    let lab = Lab::start_on(pg, &tls, &[], &[], options);
    lab.pg.kill_postmaster(0).unwrap();
    let run = lab.wait_for_run(0);
    assert_eq!(run["succeeded"], true, "{run:#}\n{}", lab.logs());
    let new_primary = run["candidate"].as_str().unwrap().to_string();
    let other = ["pg2", "pg3"].into_iter().find(|name| *name != new_primary).unwrap();
    lab.wait_for("the other replica to stream from the new primary", |_| lab.streams_from(other, &new_primary));
    lab.wait_for("pg1 to stream from the new primary", |_| lab.streams_from("pg1", &new_primary));
    let ssl = lab
        .pg
        .sql(lab.index_of(&new_primary), "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_replication USING (pid)")
        .unwrap();
    assert_eq!(ssl, "t", "the replicas stream over TLS");
}

/// Rotated to a CA that did not sign the servers' certificate, every node reports the
/// members degraded with the TLS reason, and nothing else happens: no failover, no fence.
#[test]
fn with_the_wrong_ca_the_members_are_degraded_and_nothing_moves() {
    let (pg, mut options) = tls_pg();
    let stranger = vigil_consensus::pki::CertificateAuthority::generate("other").unwrap();
    let wrong_ca = pg.tls_dir().join("wrong-ca.crt");
    std::fs::write(&wrong_ca, &stranger.certificate().cert_pem).unwrap();
    options.secret_files.push(wrong_ca.clone());
    let tls = |ca: &std::path::Path| format!("tls = {{ ca = \"{}\" }}\n", ca.display());
    let right_ca = pg.tls_dir().join("ca.crt");
    let lab = Lab::start_on(pg, &tls(&right_ca), &[], &[], options);
    let spec = common::pg_lab::spec_toml(lab.vigil.dir.path(), &lab.pg, &tls(&wrong_ca), &[]);
    std::fs::write(&lab.spec_path, spec).unwrap();
    let applied = lab.vigil.cli(1, &["apply", "-f", lab.spec_path.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    lab.wait_for("every verdict degraded with the TLS reason", |group| {
        group["members"].as_array().unwrap().iter().all(|member| {
            member["verdicts"].as_object().unwrap().values().all(|verdict| verdict == "degraded")
                && member["problem"].as_str().is_some_and(|problem| problem.contains("TLS handshake"))
        })
    });
    std::thread::sleep(Duration::from_secs(5));
    assert!(lab.runs().is_empty(), "a failover ran: {:?}", lab.runs());
    assert!(!lab.pg.is_in_recovery(0).unwrap(), "pg1 is still the primary");
    assert_eq!(lab.pg.sql(0, "SHOW default_transaction_read_only").unwrap(), "off", "pg1 was not fenced");
}
