//! Datacenters as network namespaces: a cut-off primary stops taking writes before the new
//! primary takes its first, and comes back as a replica when its datacenter returns.

// These tests measure real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::time::{Duration, Instant};

use common::dc_lab::{CLIENT, DcLab, LabWriter};

/// The default lease.
const LEASE: Duration = Duration::from_millis(1500);

/// The primary's datacenter is cut off while a writer inside it keeps writing to the old
/// primary and a client elsewhere writes to whichever server takes writes. The old primary
/// stops acknowledging within its lease and before the new primary acknowledges anything
/// (the dual-primary window is zero); once the datacenter returns, the old primary is a
/// replica of the new one, holding the new timeline's rows.
#[test]
fn cut_off_primary_stops_before_the_new_one_starts_and_rejoins_after_heal() {
    let lab = DcLab::start("", "");
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
