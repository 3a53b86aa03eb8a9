//! The Redis probe against real Redis clusters from the chaos-tests harness.

use std::time::Duration;

use tokio::time::{Instant, sleep};
use vigil_chaos_tests::redis::{REDIS_PASSWORD, RedisCluster};
use vigil_probes::{RedisObservation, RedisOutcome, RedisProbe, RedisTarget};

const TIMEOUT: Duration = Duration::from_secs(1);
/// What a check may take beyond its timeout before the test calls it late.
const SLACK: Duration = Duration::from_millis(500);

fn target(cluster: &RedisCluster, index: usize) -> RedisTarget {
    let (host, port) = cluster.address(index);
    RedisTarget { host, port, username: None, password: Some(REDIS_PASSWORD.into()), timeout: TIMEOUT, tls: None }
}

fn answered(outcome: RedisOutcome) -> RedisObservation {
    match outcome {
        RedisOutcome::Answered(observation) => observation,
        RedisOutcome::Failed { reason } => panic!("expected an answer, got a failure: {reason}"),
    }
}

fn failed(outcome: RedisOutcome) -> String {
    match outcome {
        RedisOutcome::Failed { reason } => reason,
        RedisOutcome::Answered(observation) => panic!("expected a failure, got {observation:?}"),
    }
}

/// The number of client connections the member has, less the harness's own.
fn probe_connections(cluster: &RedisCluster, index: usize) -> u32 {
    let info = cluster.command(index, &["INFO", "clients"]).unwrap();
    let connected = vigil_probes::parse_info(&info).get("connected_clients").and_then(|n| n.parse::<u32>().ok());
    connected.expect("INFO clients has connected_clients") - 1
}

/// A master answers with its offset, its replicas and a heartbeat that lands with a TTL,
/// over one kept connection; replicas answer with their offsets, link and upstream; the
/// epoch is read once the key holds a number; a master short of replicas still answers,
/// with the server's NOREPLICAS refusal as its heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_and_replicas_answer_with_their_roles_and_offsets() {
    let cluster = RedisCluster::start(3).expect("cluster starts");
    let (_, master_port) = cluster.address(0);
    let master = RedisProbe::new(target(&cluster, 0), 7);
    let replica = RedisProbe::new(target(&cluster, 1), 7);

    let seen = answered(master.check().await);
    assert!(seen.is_master);
    assert_eq!(seen.heartbeat, Some(Ok(())));
    assert!(!seen.writes_paused);
    assert_eq!(seen.connected_replicas, 2);
    let mut replica_ports: Vec<u16> = seen.replicas.iter().map(|replica| replica.port).collect();
    replica_ports.sort_unstable();
    let mut expected_ports = vec![cluster.address(1).1, cluster.address(2).1];
    expected_ports.sort_unstable();
    assert_eq!(replica_ports, expected_ports, "{seen:?}");
    assert!(seen.replicas.iter().all(|replica| replica.state == "online"), "{seen:?}");
    assert_eq!(seen.replica_offset, None);
    assert_eq!(seen.link_status, None);
    assert_eq!(seen.epoch, None, "no epoch key yet");
    let ttl: i64 = cluster.command(0, &["PTTL", "vigil:heartbeat:7"]).unwrap().parse().unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "heartbeat TTL {ttl}");

    // Later checks reuse the one connection and keep moving the offset with heartbeats.
    assert_eq!(probe_connections(&cluster, 0), 1, "the probe should keep exactly one connection");
    let mut last_offset = seen.master_repl_offset;
    for _ in 0..3 {
        let seen = answered(master.check().await);
        assert_eq!(seen.heartbeat, Some(Ok(())));
        assert!(seen.master_repl_offset > last_offset, "{seen:?} after offset {last_offset}");
        last_offset = seen.master_repl_offset;
    }
    assert_eq!(probe_connections(&cluster, 0), 1, "the probe should keep exactly one connection");

    let seen = answered(replica.check().await);
    assert!(!seen.is_master);
    assert_eq!(seen.link_status.as_deref(), Some("up"));
    assert_eq!(seen.upstream, Some(format!("127.0.0.1:{master_port}")));
    assert!(seen.replica_offset.is_some(), "{seen:?}");
    assert_eq!(seen.heartbeat, None, "replicas take no heartbeat");
    assert!(seen.replicas.is_empty());

    // The replica catches up with the master's offset and shows the epoch it replicated.
    cluster.command(0, &["SET", "vigil:epoch", "5"]).unwrap();
    let seen = answered(master.check().await);
    assert_eq!(seen.epoch, Some(5));
    let master_offset = seen.master_repl_offset;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = answered(replica.check().await);
        if seen.epoch == Some(5) && seen.replica_offset.is_some_and(|offset| offset >= master_offset) {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never reached offset {master_offset} with the epoch: {seen:?}");
        sleep(Duration::from_millis(20)).await;
    }
    cluster.command(0, &["SET", "vigil:epoch", "not a number"]).unwrap();
    assert_eq!(answered(master.check().await).epoch, None);

    // Too few replicas for a write: the master still answers; only its heartbeat fails.
    cluster.command(0, &["CONFIG", "SET", "min-replicas-to-write", "5"]).unwrap();
    let seen = answered(master.check().await);
    assert!(!seen.writes_paused);
    match &seen.heartbeat {
        Some(Err(reason)) => assert!(reason.contains("NOREPLICAS"), "{reason}"),
        other => panic!("expected a refused heartbeat, got {other:?}"),
    }
    assert_eq!(probe_connections(&cluster, 0), 1, "a refusal keeps the connection");
    cluster.command(0, &["CONFIG", "SET", "min-replicas-to-write", "0"]).unwrap();
    assert_eq!(answered(master.check().await).heartbeat, Some(Ok(())));
}

/// A wrong or missing password fails as data, with a reason about authentication that
/// never shows the password; a killed master fails within the timeout, on the kept
/// connection and on reconnecting alike.
#[tokio::test]
async fn wrong_password_and_killed_master_fail_as_data() {
    let cluster = RedisCluster::start(1).expect("cluster starts");

    let wrong = RedisTarget { password: Some("not-the-password".into()), ..target(&cluster, 0) };
    let reason = failed(RedisProbe::new(wrong, 1).check().await);
    assert!(reason.to_lowercase().contains("authentication"), "{reason}");
    assert!(!reason.contains("not-the-password"), "{reason}");
    assert!(!reason.contains('\n'), "{reason}");

    let anonymous = RedisTarget { password: None, ..target(&cluster, 0) };
    let reason = failed(RedisProbe::new(anonymous, 1).check().await);
    assert!(reason.to_lowercase().contains("authentication"), "{reason}");

    let probe = RedisProbe::new(target(&cluster, 0), 1);
    answered(probe.check().await);
    cluster.kill(0).unwrap();
    for attempt in ["on the kept connection", "on reconnecting"] {
        let started = Instant::now();
        let reason = failed(probe.check().await);
        let elapsed = started.elapsed();
        assert!(elapsed < TIMEOUT + SLACK, "check {attempt} took {elapsed:?}");
        assert!(reason.contains(&cluster.address(0).1.to_string()), "{reason}");
        assert!(!reason.contains(REDIS_PASSWORD), "{reason}");
    }
}

/// A frozen (SIGSTOPped) member fails within the timeout, on the kept connection and on a
/// new one (the kernel still accepts it, nothing answers), without delaying the probe of
/// another member; once thawed it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_fails_within_the_timeout() {
    let cluster = RedisCluster::start(2).expect("cluster starts");
    let master = RedisProbe::new(target(&cluster, 0), 1);
    let replica = RedisProbe::new(target(&cluster, 1), 1);
    answered(replica.check().await);

    cluster.freeze(1).unwrap();
    let fresh = RedisProbe::new(target(&cluster, 1), 2);
    for (attempt, probe) in [("on the kept connection", &replica), ("on a new connection", &fresh)] {
        let started = Instant::now();
        let (outcome, master_seen) = tokio::join!(probe.check(), master.check());
        let elapsed = started.elapsed();
        let reason = failed(outcome);
        assert!(elapsed >= TIMEOUT - Duration::from_millis(50), "gave up {attempt} after {elapsed:?}: {reason}");
        assert!(elapsed < TIMEOUT + SLACK, "check {attempt} took {elapsed:?}");
        assert!(reason.contains(&cluster.address(1).1.to_string()), "{reason}");
        assert_eq!(answered(master_seen).heartbeat, Some(Ok(())), "the master's probe is not held up");
    }
    cluster.thaw(1).unwrap();
    assert!(!answered(replica.check().await).is_master);
}

/// Under `CLIENT PAUSE 5000 WRITE` the master answers its reads but not the heartbeat
/// write, and the probe says so within the timeout; after `CLIENT UNPAUSE` the heartbeat
/// succeeds again on a new connection.
#[tokio::test]
async fn a_paused_master_answers_with_writes_paused() {
    let cluster = RedisCluster::start(2).expect("cluster starts");
    let probe = RedisProbe::new(target(&cluster, 0), 3);
    assert_eq!(answered(probe.check().await).heartbeat, Some(Ok(())));

    cluster.command(0, &["CLIENT", "PAUSE", "5000", "WRITE"]).unwrap();
    let started = Instant::now();
    let seen = answered(probe.check().await);
    let elapsed = started.elapsed();
    assert!(elapsed < TIMEOUT + SLACK, "check took {elapsed:?}");
    assert!(seen.is_master);
    assert!(seen.writes_paused, "{seen:?}");
    match &seen.heartbeat {
        Some(Err(reason)) => assert!(reason.contains("paused"), "{reason}"),
        other => panic!("expected a blocked heartbeat, got {other:?}"),
    }
    // The blocked write's connection was dropped, not left waiting on the server.
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe_connections(&cluster, 0) != 0 {
        assert!(Instant::now() < deadline, "the probe's blocked connection stayed open");
        sleep(Duration::from_millis(20)).await;
    }

    cluster.command(0, &["CLIENT", "UNPAUSE"]).unwrap();
    let seen = answered(probe.check().await);
    assert!(!seen.writes_paused);
    assert_eq!(seen.heartbeat, Some(Ok(())));
}
