//! The PostgreSQL probe against real PostgreSQL 15 clusters from the chaos-tests harness.

use std::time::Duration;

use tokio::time::Instant;
use vigil_chaos_tests::postgres::{PgCluster, VIGIL_PASSWORD, VIGIL_USER};
use vigil_probes::{PgObservation, PgProbe, PgTarget, ProbeOutcome};

const TIMEOUT: Duration = Duration::from_secs(2);
/// What a check may take beyond its timeout before the test calls it late.
const SLACK: Duration = Duration::from_millis(500);

fn target(cluster: &PgCluster, index: usize) -> PgTarget {
    PgTarget {
        host: "127.0.0.1".into(),
        port: cluster.instances()[index].port,
        user: VIGIL_USER.into(),
        password: VIGIL_PASSWORD.into(),
        database: "postgres".into(),
        timeout: TIMEOUT,
        tls: None,
    }
}

fn answered(outcome: ProbeOutcome) -> PgObservation {
    match outcome {
        ProbeOutcome::Answered(observation) => observation,
        ProbeOutcome::Failed { reason } => panic!("expected an answer, got a failure: {reason}"),
    }
}

fn failed(outcome: ProbeOutcome) -> String {
    match outcome {
        ProbeOutcome::Failed { reason } => reason,
        ProbeOutcome::Answered(observation) => panic!("expected a failure, got {observation:?}"),
    }
}

/// A primary answers with its WAL position and a successful heartbeat, over one kept
/// connection; a replica answers with its receive and replay positions, streaming from
/// the primary's port; the epoch is read once `vigil.epoch` holds the group's row; a
/// read-only primary still answers, with a failed heartbeat; a hung primary fails within
/// the timeout without delaying the replica's probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_replica_answer_with_their_roles() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    let primary_port = cluster.instances()[0].port;
    let primary = PgProbe::new(target(&cluster, 0), "g1".into(), 7);
    let replica = PgProbe::new(target(&cluster, 1), "g1".into(), 8);

    let seen = answered(primary.check().await);
    assert!(!seen.in_recovery);
    assert_eq!(seen.timeline, Some(1));
    assert!(seen.current_lsn.is_some_and(|lsn| lsn > 0), "{seen:?}");
    assert_eq!(seen.heartbeat, Some(Ok(())));
    assert_eq!(seen.receive_lsn, None);
    assert_eq!(seen.receiver_status, None);
    assert_eq!(seen.epoch, None, "no vigil.epoch table yet");
    assert_eq!(cluster.sql(0, "SELECT count(*) FROM vigil.heartbeat WHERE node_id = 7").unwrap(), "1");

    // Later checks reuse the one connection and keep moving the heartbeat.
    let first_beat = cluster.sql(0, "SELECT at FROM vigil.heartbeat WHERE node_id = 7").unwrap();
    for _ in 0..3 {
        assert_eq!(answered(primary.check().await).heartbeat, Some(Ok(())));
    }
    let last_beat = cluster.sql(0, "SELECT at FROM vigil.heartbeat WHERE node_id = 7").unwrap();
    assert_ne!(first_beat, last_beat);
    let connections = cluster.sql(0, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'vigil'").unwrap();
    assert_eq!(connections, "1", "the probe should keep exactly one connection");

    // Once the replica has replayed the heartbeats, it has a replay delay to report.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.sql(1, "SELECT count(*) FROM vigil.heartbeat").ok().as_deref() != Some("1") {
        assert!(Instant::now() < deadline, "the replica never replayed the heartbeat");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = answered(replica.check().await);
    assert!(seen.in_recovery);
    assert_eq!(seen.timeline, Some(1));
    assert_eq!(seen.current_lsn, None);
    assert!(seen.receive_lsn.is_some() && seen.replay_lsn.is_some(), "{seen:?}");
    assert_eq!(seen.receiver_status.as_deref(), Some("streaming"));
    assert_eq!(seen.upstream, Some(format!("127.0.0.1:{primary_port}")));
    assert!(seen.replay_delay_ms.is_some(), "the replica replayed the heartbeat: {seen:?}");
    assert_eq!(seen.heartbeat, None, "replicas take no heartbeat");
    assert_eq!(seen.epoch, None, "the epoch is read on primaries only");

    cluster
        .sql(
            0,
            "CREATE TABLE vigil.epoch (group_name text PRIMARY KEY, epoch bigint NOT NULL); \
             INSERT INTO vigil.epoch VALUES ('g1', 5), ('other', 9)",
        )
        .unwrap();
    assert_eq!(answered(primary.check().await).epoch, Some(5));
    let stranger = PgProbe::new(target(&cluster, 0), "g2".into(), 9);
    assert_eq!(answered(stranger.check().await).epoch, None, "no row for g2");

    // A primary that refuses writes still answers; only its heartbeat fails.
    cluster.sql(0, "ALTER SYSTEM SET default_transaction_read_only = on").unwrap();
    cluster.sql(0, "SELECT pg_reload_conf()").unwrap();
    let read_only = PgProbe::new(target(&cluster, 0), "g1".into(), 10);
    let seen = answered(read_only.check().await);
    assert!(!seen.in_recovery);
    match &seen.heartbeat {
        Some(Err(reason)) => assert!(reason.contains("read-only"), "{reason}"),
        other => panic!("expected a failed heartbeat, got {other:?}"),
    }
    cluster.sql(0, "ALTER SYSTEM RESET default_transaction_read_only").unwrap();
    cluster.sql(0, "SELECT pg_reload_conf()").unwrap();

    // A hung primary: its check fails within the timeout, and the replica's check,
    // running at the same time, is not held up by it.
    cluster.freeze(0).unwrap();
    let started = Instant::now();
    let primary_check = tokio::spawn(async move { (primary.check().await, started.elapsed()) });
    let replica_seen = answered(replica.check().await);
    let replica_elapsed = started.elapsed();
    let (primary_outcome, primary_elapsed) = primary_check.await.unwrap();
    cluster.thaw(0).unwrap();
    assert!(replica_seen.in_recovery);
    assert!(replica_elapsed < Duration::from_secs(1), "replica check took {replica_elapsed:?}");
    let reason = failed(primary_outcome);
    assert!(reason.contains(&primary_port.to_string()), "{reason}");
    assert!(primary_elapsed >= TIMEOUT - Duration::from_millis(50), "{primary_elapsed:?}");
    assert!(primary_elapsed < TIMEOUT + SLACK, "hung check took {primary_elapsed:?}");
}

/// A wrong password fails with a reason about authentication; a killed primary fails
/// within the timeout, on the kept connection and on reconnecting alike.
#[tokio::test]
async fn wrong_password_and_killed_primary_fail_as_data() {
    let cluster = PgCluster::start(1).expect("cluster starts");

    let wrong = PgTarget { password: "not-the-password".into(), ..target(&cluster, 0) };
    let reason = failed(PgProbe::new(wrong, "g1".into(), 1).check().await);
    assert!(reason.contains("authentication"), "{reason}");
    assert!(!reason.contains("not-the-password"), "{reason}");

    let probe = PgProbe::new(target(&cluster, 0), "g1".into(), 1);
    answered(probe.check().await);
    cluster.kill_postmaster(0).unwrap();
    for attempt in ["on the kept connection", "on reconnecting"] {
        let started = Instant::now();
        let reason = failed(probe.check().await);
        let elapsed = started.elapsed();
        assert!(elapsed < TIMEOUT + SLACK, "check {attempt} took {elapsed:?}");
        assert!(!reason.is_empty());
    }
}
