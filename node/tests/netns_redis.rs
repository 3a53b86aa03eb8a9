//! Redis groups across datacenters as network namespaces: a cut-off master refuses writes
//! before the new master takes its first and follows the new one after the heal; packet loss
//! and a partition between two datacenters cause no failover.

// These tests measure real processes with the OS clock.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::dc_lab::CLIENT;
use common::redis_dc_lab::{RedisDcLab, RedisWriter};

/// Timings a little more patient than the defaults (lease 1.5 s, down after 600 ms), as in
/// `netns_failover`, since the tests share two cores with each other.
const TIMINGS: &str = "lease_duration = \"2s\"\ndown_after = \"1s\"\nprobe_timeout = \"800ms\"\n";
/// The lease in `TIMINGS`.
const LEASE: Duration = Duration::from_secs(2);

/// The master's datacenter is cut off while a writer inside it keeps writing to the old
/// master and a client elsewhere writes to whichever replica takes writes. The old master
/// refuses writes within its lease and before the new master acknowledges anything (the
/// dual-primary window is zero); once the datacenter returns, the old master replicates from
/// the new one and holds what was written there.
#[test]
fn cut_off_master_stops_before_the_new_one_starts_and_rejoins_after_heal() {
    let lab = RedisDcLab::start(TIMINGS);
    let old_writer = RedisWriter::start(&lab.net, "dc1", lab.addresses(&[0]), "dc1", 1);
    let new_writer = RedisWriter::start(&lab.net, CLIENT, lab.addresses(&[1, 2]), "client", 1_000_000_000);
    std::thread::sleep(Duration::from_secs(1));

    let cut_at = Instant::now();
    lab.net.cut("dc1").unwrap();
    let group = lab.wait_for("the failover to finish", |group| {
        group["running"].is_null() && group["last_run"]["succeeded"] == true
    });
    std::thread::sleep(Duration::from_secs(1));
    let old_acks = old_writer.finish();
    let new_acks = new_writer.finish();
    let servers = |acks: &[(Instant, String, i64)]| acks.iter().map(|(_, s, _)| s.clone()).collect::<BTreeSet<_>>();
    eprintln!(
        "old writer: {} acks on {:?}; new writer: {} acks on {:?}",
        old_acks.len(),
        servers(&old_acks),
        new_acks.len(),
        servers(&new_acks)
    );
    let old_server = lab.server(0);
    let last_old = old_acks.iter().filter(|(_, server, _)| *server == old_server).map(|(at, ..)| *at).max();
    let last_old = last_old.expect("the old master acknowledged no write at all");
    let new_primary = group["last_run"]["candidate"].as_str().unwrap().to_string();
    let new_index = lab.index_of(&new_primary);
    let new_server = lab.server(new_index);
    let first_new = new_acks.iter().filter(|(_, server, _)| *server == new_server).map(|(at, ..)| *at).min();
    let first_new = first_new.expect("the new master acknowledged no write");
    eprintln!(
        "old master's last write {:?} after the cut, new master's ({new_primary}) first {:?} after the cut",
        last_old.saturating_duration_since(cut_at),
        first_new.saturating_duration_since(cut_at)
    );
    assert_eq!(servers(&new_acks), BTreeSet::from([new_server]), "a member other than the new master took writes");
    assert!(last_old < first_new, "two masters took writes at once: {:?} of overlap", last_old - first_new);
    assert!(
        last_old.saturating_duration_since(cut_at) <= LEASE,
        "the old master took writes {:?} after the cut, beyond its lease",
        last_old.saturating_duration_since(cut_at)
    );

    lab.net.heal("dc1").unwrap();
    lab.wait_until("redis1 to follow the new master with its link up", || lab.follows(0, new_index));
    let (_, _, last_new) = new_acks.iter().max_by_key(|(at, ..)| *at).unwrap();
    let key = format!("client:{last_new}");
    assert_eq!(lab.redis.command(0, &["GET", &key]).unwrap(), last_new.to_string(), "redis1 lacks {key}");
    assert_eq!(lab.group().unwrap()["primary"], new_primary.as_str());
}

/// 30 % packet loss into the master's datacenter for 15 s, then a partition between dc1 and
/// the Raft leader's datacenter alone for 10 s (dc2 if dc1 leads): the master keeps being
/// reachable by a majority, and its node renews the lease through the third node, so
/// nothing is failed over and it takes writes throughout.
#[test]
fn packet_loss_and_a_one_node_partition_cause_no_failover() {
    let lab = RedisDcLab::start(TIMINGS);
    let leader = |lab: &RedisDcLab| lab.status(3).and_then(|status| status["leader"]["id"].as_u64());
    let writer = RedisWriter::start(&lab.net, CLIENT, lab.addresses(&[0, 1, 2]), "client", 1);
    std::thread::sleep(Duration::from_secs(1));

    let loss_at = Instant::now();
    let leader_in_loss = leader(&lab);
    eprintln!("30 % loss into dc1; Raft leader {leader_in_loss:?}");
    lab.net.packet_loss("dc1", 30).unwrap();
    std::thread::sleep(Duration::from_secs(15));
    lab.net.packet_loss("dc1", 0).unwrap();
    // A failover decided just before the loss ended would show within a probe or two.
    std::thread::sleep(Duration::from_secs(2));
    let group = lab.group().unwrap();
    assert!(
        group["last_run"].is_null() && group["running"].is_null(),
        "packet loss caused a failover (Raft leader {leader_in_loss:?}): {group:#}"
    );

    let partition_at = Instant::now();
    let leader_in_partition = leader(&lab);
    // The master's node cut from the leader is the hard case: it can renew only through the
    // third node.
    let other = if leader_in_partition == Some(3) { "dc3" } else { "dc2" };
    eprintln!("dc1 | {other} partitioned; Raft leader {leader_in_partition:?}");
    lab.net.partition(other, "dc1").unwrap();
    std::thread::sleep(Duration::from_secs(10));
    lab.net.unpartition(other, "dc1").unwrap();
    let healed_at = Instant::now();
    // A failover decided just before the heal would show within a lease and a probe.
    std::thread::sleep(LEASE + Duration::from_secs(2));

    let group = lab.group().unwrap();
    assert!(
        group["last_run"].is_null() && group["running"].is_null(),
        "a failover ran (Raft leader {leader_in_partition:?}): {group:#}"
    );
    assert_eq!(group["primary"], "redis1");
    assert_eq!(lab.redis.role(0).unwrap(), "master");
    lab.wait_until("redis1 to take writes again", || lab.redis.command(0, &["SET", "after", "1"]).is_ok());
    let acks = writer.finish();
    let servers: BTreeSet<&str> = acks.iter().map(|(_, server, _)| server.as_str()).collect();
    assert_eq!(servers, BTreeSet::from([lab.server(0).as_str()]), "a member other than redis1 took writes");
    let count = |from: Instant, to: Instant| acks.iter().filter(|(at, ..)| *at >= from && *at < to).count();
    eprintln!(
        "acknowledged writes: {} in 15 s of loss, {} in 10 s of partition, {} in all",
        count(loss_at, loss_at + Duration::from_secs(15)),
        count(partition_at, healed_at),
        acks.len()
    );
}

/// A replica left replicating from another replica (as a rejoin against a master that was
/// replaced meanwhile leaves it) is re-pointed at the master. Every member listens on 6379
/// on its own host, so the port alone cannot tell the two apart: a chaos soak found a
/// replica that stayed chained for good when vigil compared only the port.
#[test]
fn a_replica_following_another_replica_is_re_pointed_at_the_master() {
    let lab = RedisDcLab::start(TIMINGS);
    let epoch = lab.group().unwrap()["epoch"].as_u64().unwrap();
    let (host, port) = lab.redis.address(1);
    lab.redis.command(2, &["REPLICAOF", &host, &port.to_string()]).unwrap();
    lab.wait_until("redis3 to follow redis2", || lab.follows(2, 1));
    let chained_at = Instant::now();
    lab.wait_until("redis3 to follow the master, redis1, again", || lab.follows(2, 0));
    eprintln!("redis3 re-pointed {:?} after it was chained", chained_at.elapsed());
    let group = lab.group().unwrap();
    assert_eq!(group["primary"], "redis1", "{group:#}");
    assert_eq!(group["epoch"].as_u64().unwrap(), epoch, "no failover: {group:#}");
    assert!(lab.follows(1, 0), "redis2 still follows redis1");
}
