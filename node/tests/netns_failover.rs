//! Datacenters as network namespaces: a cut-off primary stops taking writes before the new
//! primary takes its first, and comes back as a replica when its datacenter returns; an
//! isolated Raft leader moves no healthy primary.

// These tests measure real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::time::{Duration, Instant};

use common::dc_lab::{CLIENT, DcLab, LabWriter};

/// Timings a little more patient than the defaults (lease 1.5 s, down after 600 ms), since the
/// tests share two cores with each other; the benchmark measures the defaults.
const TIMINGS: &str = "lease_duration = \"2s\"\ndown_after = \"1s\"\nprobe_timeout = \"800ms\"\n";
/// The lease in `TIMINGS`.
const LEASE: Duration = Duration::from_secs(2);

/// The primary's datacenter is cut off while a writer inside it keeps writing to the old
/// primary and a client elsewhere writes to whichever server takes writes. The old primary
/// stops acknowledging within its lease and before the new primary acknowledges anything
/// (the dual-primary window is zero); once the datacenter returns, the old primary is a
/// replica of the new one, holding the new timeline's rows.
#[test]
fn cut_off_primary_stops_before_the_new_one_starts_and_rejoins_after_heal() {
    let lab = DcLab::start(TIMINGS, "");
    lab.pg.sql(0, "CREATE TABLE writes (id bigint PRIMARY KEY, at timestamptz NOT NULL)").unwrap();
    lab.pg.wait_streaming(1, Duration::from_secs(10)).unwrap();
    lab.pg.wait_streaming(2, Duration::from_secs(10)).unwrap();
    let old_writer = LabWriter::start(&lab.net, "dc1", lab.conninfo(&[0], false), 1);
    let new_writer = LabWriter::start(&lab.net, CLIENT, lab.conninfo(&[1, 2], true), 1_000_000_000);
    std::thread::sleep(Duration::from_secs(1));

    let cut_at = Instant::now();
    lab.net.cut("dc1").unwrap();
    let group = lab.wait_for("the failover to finish", |group| {
        group["running"].is_null() && group["last_run"]["succeeded"] == true
    });
    std::thread::sleep(Duration::from_secs(1));
    let old_acks = old_writer.finish();
    let new_acks = new_writer.finish();
    let (old_host, old_port) = lab.pg.address(0);
    let old_server = format!("{old_host}:{old_port}");
    let last_old = old_acks.iter().filter(|(_, server, _)| *server == old_server).map(|(at, ..)| *at).max().unwrap();
    eprintln!(
        "old writer: {} acks on {:?}; new writer: {} acks on {:?}",
        old_acks.len(),
        old_acks.iter().map(|(_, s, _)| s.clone()).collect::<std::collections::BTreeSet<_>>(),
        new_acks.len(),
        new_acks.iter().map(|(_, s, _)| s.clone()).collect::<std::collections::BTreeSet<_>>()
    );
    let first_new = new_acks.iter().filter(|(_, server, _)| *server != old_server).map(|(at, ..)| *at).min().unwrap();
    eprintln!(
        "old primary's last write {:?} after the cut, new primary's first {:?} after the cut",
        last_old.saturating_duration_since(cut_at),
        first_new.saturating_duration_since(cut_at)
    );
    assert!(last_old < first_new, "two primaries took writes at once: {:?} of overlap", last_old - first_new);
    assert!(
        last_old.saturating_duration_since(cut_at) <= LEASE,
        "the old primary took writes {:?} after the cut, beyond its lease",
        last_old.saturating_duration_since(cut_at)
    );
    let new_primary = group["last_run"]["candidate"].as_str().unwrap().to_string();

    lab.net.heal("dc1").unwrap();
    lab.wait_for("pg1 to follow the new primary", |group| {
        group["members"].as_array().unwrap().iter().any(|member| {
            member["name"] == "pg1"
                && member["role"] == "replica"
                && member["upstream"].as_str().is_some_and(|upstream| {
                    let index = if new_primary == "pg2" { 1 } else { 2 };
                    upstream.starts_with(&lab.pg.address(index).0)
                })
        })
    });
    let rows_from_new_timeline = lab.pg.sql(0, "SELECT count(*) FROM writes WHERE id >= 1000000000").unwrap();
    assert!(rows_from_new_timeline.parse::<u64>().unwrap() > 0, "pg1 lacks the new timeline's rows");
    assert!(lab.pg.is_in_recovery(0).unwrap());
}

/// Strict synchronous mode: over ten rounds of cutting off the primary's datacenter (and
/// bringing it back), a client that counts acknowledged commits loses none, and every
/// promoted member was the confirmed synchronous standby.
#[test]
fn strict_synchronous_mode_loses_no_acknowledged_commit_across_ten_cuts() {
    let lab = DcLab::start(&format!("synchronous = \"strict\"\n{TIMINGS}"), "");
    lab.pg.sql(0, "CREATE TABLE writes (id bigint PRIMARY KEY, at timestamptz NOT NULL)").unwrap();
    let settled = |lab: &DcLab, primary: &str| {
        lab.wait_for("a settled primary with a confirmed synchronous standby", |group| {
            group["primary"] == primary
                && group["running"].is_null()
                && group["sync_standbys"].as_array().is_some_and(|standbys| !standbys.is_empty())
                && group["members"].as_array().unwrap().iter().all(|member| {
                    member["verdicts"].as_object().unwrap().values().filter(|verdict| *verdict == "up").count() >= 2
                })
        })
    };
    let mut group = settled(&lab, "pg1");
    let writer = LabWriter::start(&lab.net, CLIENT, lab.conninfo(&[0, 1, 2], true), 1);
    for round in 1..=10 {
        std::thread::sleep(Duration::from_millis(1500));
        let primary = group["primary"].as_str().unwrap().to_string();
        let synchronous: Vec<String> =
            group["sync_standbys"].as_array().unwrap().iter().map(|name| name.as_str().unwrap().to_string()).collect();
        let index = lab.pg.instances().iter().position(|instance| instance.name == primary).unwrap();
        let datacenter = common::dc_lab::DATACENTERS[index];
        lab.net.cut(datacenter).unwrap();
        let after = lab.wait_for("the failover to finish", |group| {
            group["primary"] != primary.as_str() && group["running"].is_null() && group["last_run"]["succeeded"] == true
        });
        let promoted = after["primary"].as_str().unwrap().to_string();
        assert!(
            synchronous.contains(&promoted),
            "round {round}: promoted {promoted}, not the synchronous standby {synchronous:?}"
        );
        lab.net.heal(datacenter).unwrap();
        group = settled(&lab, &promoted);
        eprintln!("round {round}: {primary} -> {promoted}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = writer.finish();
    assert!(acknowledged.len() > 500, "the writer made too little progress: {}", acknowledged.len());
    let primary = group["primary"].as_str().unwrap().to_string();
    let index = lab.pg.instances().iter().position(|instance| instance.name == primary).unwrap();
    let stored: std::collections::BTreeSet<i64> = lab
        .pg
        .sql(index, "SELECT string_agg(id::text, ',') FROM writes")
        .unwrap()
        .split(',')
        .map(|id| id.parse().unwrap())
        .collect();
    let lost: Vec<i64> = acknowledged.iter().map(|(_, _, id)| *id).filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged commits lost: {lost:?}", lost.len(), acknowledged.len());
}

/// The Raft leader's vigil is cut off from the other nodes (its Raft port blocked both ways;
/// PostgreSQL traffic untouched) while a healthy primary runs in another datacenter: the CI
/// failure of issue 12, where pg2's own keeper fenced and lifted it in turns during the
/// election and its fence guard stopped it, so a healthy primary was failed over twice. Here
/// the other two nodes elect a new leader, and the primary, whose vigil was never touched,
/// keeps its place and its epoch and takes writes on, at the defaults (lease 1.5 s).
#[test]
fn isolating_the_raft_leaders_vigil_moves_no_healthy_primary() {
    let lab = DcLab::start("", "");
    lab.pg.sql(0, "CREATE TABLE writes (id bigint PRIMARY KEY, at timestamptz NOT NULL)").unwrap();
    let leader = lab.leader();
    // The primary must live beside another node than the leader: move it away if needed.
    if leader == 1 {
        let moved = lab.cli("dc2", 2, &["switchover", "main", "--to", "pg2"]);
        assert!(moved.status.success(), "switchover: {}", String::from_utf8_lossy(&moved.stderr));
    }
    let before = lab.wait_for("a settled primary beside another node than the leader", |group| {
        group["running"].is_null()
            && group["primary"].as_str().is_some_and(|primary| primary != format!("pg{leader}"))
            && group["members"].as_array().unwrap().iter().all(|member| {
                member["verdicts"].as_object().unwrap().values().filter(|verdict| *verdict == "up").count() >= 2
            })
    });
    let primary = before["primary"].as_str().unwrap().to_string();
    let epoch = before["epoch"].as_u64().unwrap();
    let writer = LabWriter::start(&lab.net, CLIENT, lab.conninfo(&[0, 1, 2], true), 1);
    std::thread::sleep(Duration::from_secs(2));

    let isolated_host = common::dc_lab::DATACENTERS[leader as usize - 1];
    let isolated_at = Instant::now();
    lab.net.block_port(isolated_host, vigil_chaos_tests::lab::RAFT_PORT).unwrap();
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let new_leader = lab.wait_for_leader_among(&others);
    eprintln!("n{leader} isolated; n{new_leader} leads after {:?}", isolated_at.elapsed());
    // The CI failure played out within 12 s of the isolation: watch for longer.
    std::thread::sleep(ISOLATION.saturating_sub(isolated_at.elapsed()));
    let during = lab.group_seen_by(new_leader).expect("the new leader answers");
    lab.net.unblock_port(isolated_host, vigil_chaos_tests::lab::RAFT_PORT).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = writer.finish();

    assert_eq!(during["primary"], primary.as_str(), "the primary moved: {during:#}");
    assert_eq!(during["epoch"].as_u64(), Some(epoch), "a failover began: {during:#}");
    assert!(during["running"].is_null(), "a failover is running: {during:#}");
    let (host, port) = lab.pg.address(lab.pg.instances().iter().position(|i| i.name == primary).unwrap());
    let server = format!("{host}:{port}");
    let acks: Vec<Instant> = acknowledged
        .iter()
        .filter(|(_, on, _)| *on == server)
        .map(|(at, ..)| *at)
        .filter(|at| *at >= isolated_at)
        .collect();
    assert!(acknowledged.iter().all(|(_, on, _)| *on == server), "another server took writes");
    let longest_gap = acks
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .chain(acks.first().map(|first| *first - isolated_at))
        .max()
        .unwrap_or(ISOLATION);
    eprintln!("{} writes acknowledged by {primary} during the isolation; longest gap {longest_gap:?}", acks.len());
    // A renewal cannot commit while the followers elect a new leader, so the keeper may fence
    // its primary for a moment; it must never stop or lose it.
    assert!(longest_gap < WRITE_GAP, "{primary} took no writes for {longest_gap:?}\n{}", lab.logs());
    assert!(
        acks.last().is_some_and(|last| *last >= isolated_at + ISOLATION - Duration::from_secs(2)),
        "{primary} took no writes at the end of the isolation"
    );

    // Healed, the old leader follows again and every node sees every member up.
    lab.wait_for("every member up for every node after the heal", |group| {
        group["primary"] == primary.as_str()
            && group["members"].as_array().unwrap().iter().all(|member| {
                let verdicts = member["verdicts"].as_object().unwrap();
                verdicts.len() == 3 && verdicts.values().all(|verdict| verdict == "up")
            })
    });
}

/// How long the leader's vigil stays isolated.
const ISOLATION: Duration = Duration::from_secs(15);
/// The longest a healthy primary may take no writes while the Raft leader is isolated: one
/// lease. Its keeper renews through the new leader as soon as one is elected (0.6 to 0.9 s
/// after the isolation here), and ten runs on a loaded host saw gaps of 45 to 150 ms.
const WRITE_GAP: Duration = Duration::from_millis(1500);
