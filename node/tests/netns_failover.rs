//! Datacenters as network namespaces: a cut-off primary stops taking writes before the new
//! primary takes its first, and comes back as a replica when its datacenter returns.

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
