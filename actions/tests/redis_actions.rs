//! The Redis actions against real Redis clusters from the chaos-tests harness: a failover
//! (promote once, re-point the other replica, record the epoch) and a switchover's pause
//! (writes block, the paused offset reaches the replica, unpausing lets them through).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep};
use vigil_actions::{
    ActionError, RedisMasterAuth, redis_pause_writes, redis_promote, redis_repoint, redis_role, redis_set_min_replicas,
    redis_unpause, redis_wait_for_offset, redis_wait_for_upstream, redis_write_epoch,
};
use vigil_chaos_tests::redis::{REDIS_PASSWORD, RedisCluster};
use vigil_probes::RedisTarget;

const TIMEOUT: Duration = Duration::from_secs(5);

fn target(cluster: &RedisCluster, index: usize) -> RedisTarget {
    let (host, port) = cluster.address(index);
    RedisTarget { host, port, username: None, password: Some(REDIS_PASSWORD.into()), timeout: TIMEOUT, tls: None }
}

/// Failover: with the master killed, a replica is promoted exactly once (a second promote
/// reports `already_master` and an offset no lower), the third member re-pointed to it
/// follows it and receives new writes, and the epoch written there never goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_promotes_once_repoints_the_third_member_and_records_the_epoch() {
    let cluster = RedisCluster::start(3).expect("cluster starts");
    for key in ["a", "b", "c"] {
        cluster.command(0, &["SET", key, "before the failover"]).unwrap();
    }
    let written = redis_role(&target(&cluster, 0)).await.unwrap();
    assert!(written.is_master && written.upstream.is_none(), "{written:?}");
    for replica in [1, 2] {
        let reached = redis_wait_for_offset(&target(&cluster, replica), written.offset, TIMEOUT).await.unwrap();
        assert!(reached >= written.offset);
    }

    cluster.kill(0).unwrap();
    let first = redis_promote(&target(&cluster, 1), TIMEOUT).await.expect("promotes");
    assert!(!first.already_master);
    assert!(first.offset >= written.offset, "{first:?} below {written:?}");
    assert_eq!(cluster.role(1).unwrap(), "master");
    let again = redis_promote(&target(&cluster, 1), TIMEOUT).await.expect("idempotent");
    assert!(again.already_master);
    assert!(again.offset >= first.offset, "{again:?} after {first:?}");

    let (new_host, new_port) = cluster.address(1);
    let auth = RedisMasterAuth { username: None, password: REDIS_PASSWORD.into() };
    assert!(!format!("{auth:?}").contains(REDIS_PASSWORD));
    redis_repoint(&target(&cluster, 2), &new_host, new_port, Some(&auth)).await.expect("re-points");
    redis_wait_for_upstream(&target(&cluster, 2), &new_host, new_port, TIMEOUT).await.expect("follows the new master");
    // Asking again changes nothing: the link stays up.
    redis_repoint(&target(&cluster, 2), &new_host, new_port, None).await.expect("idempotent");
    redis_wait_for_upstream(&target(&cluster, 2), &new_host, new_port, TIMEOUT).await.unwrap();
    let role = redis_role(&target(&cluster, 2)).await.unwrap();
    assert_eq!(role.upstream, Some(format!("{new_host}:{new_port}")));
    assert_eq!(cluster.command(2, &["GET", "a"]).unwrap(), "before the failover");

    cluster.command(1, &["SET", "d", "after the failover"]).unwrap();
    let new_offset = redis_role(&target(&cluster, 1)).await.unwrap().offset;
    redis_wait_for_offset(&target(&cluster, 2), new_offset, TIMEOUT).await.unwrap();
    assert_eq!(cluster.command(2, &["GET", "d"]).unwrap(), "after the failover");

    let new_master = target(&cluster, 1);
    assert_eq!(redis_write_epoch(&new_master, 3).await.unwrap(), 3);
    assert_eq!(redis_write_epoch(&new_master, 2).await.unwrap(), 3, "a lower epoch never wins");
    assert_eq!(cluster.command(1, &["GET", "vigil:epoch"]).unwrap(), "3");
    assert_eq!(redis_write_epoch(&new_master, 4).await.unwrap(), 4);
    // Beyond 2^53, where Lua's numbers lose precision, the comparison is still exact.
    assert_eq!(redis_write_epoch(&new_master, u64::MAX).await.unwrap(), u64::MAX);
    assert_eq!(redis_write_epoch(&new_master, u64::MAX - 1).await.unwrap(), u64::MAX);
    cluster.command(1, &["SET", "vigil:epoch", "garbage"]).unwrap();
    assert_eq!(redis_write_epoch(&new_master, 5).await.unwrap(), 5, "a value that is no epoch is replaced");

    match redis_write_epoch(&target(&cluster, 2), 9).await {
        Err(ActionError::Redis(message)) => assert!(message.contains("READONLY"), "{message}"),
        other => panic!("a replica took the epoch write: {other:?}"),
    }
}

/// Pausing a master's writes returns its offset; a concurrent write blocks (reads do not)
/// until `redis_unpause`, and the replica reaches the paused offset meanwhile. A replica
/// is not paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_writes_blocks_a_concurrent_write_until_unpause() {
    let cluster = Arc::new(RedisCluster::start(2).expect("cluster starts"));
    cluster.command(0, &["SET", "k", "before"]).unwrap();
    let master = target(&cluster, 0);

    let paused_at = redis_pause_writes(&master, Duration::from_secs(20)).await.expect("pauses");
    assert!(paused_at > 0);
    let writer = {
        let cluster = Arc::clone(&cluster);
        tokio::task::spawn_blocking(move || {
            let result = cluster.command(0, &["SET", "k", "during"]);
            (result, Instant::now())
        })
    };
    sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "a write went through a paused master");
    assert_eq!(cluster.command(0, &["GET", "k"]).unwrap(), "before", "reads are served during the pause");
    let reached = redis_wait_for_offset(&target(&cluster, 1), paused_at, TIMEOUT).await.unwrap();
    assert!(reached >= paused_at);
    // Pausing again only moves the end of the pause.
    let again = redis_pause_writes(&master, Duration::from_secs(20)).await.unwrap();
    assert!(again >= paused_at);

    let unpaused_at = Instant::now();
    redis_unpause(&master).await.expect("unpauses");
    let (result, finished_at) = writer.await.unwrap();
    assert_eq!(result.unwrap(), "OK");
    assert!(finished_at >= unpaused_at, "the write finished before the unpause");
    assert!(redis_role(&master).await.unwrap().offset > paused_at);
    redis_unpause(&master).await.expect("unpausing twice is fine");

    match redis_pause_writes(&target(&cluster, 1), Duration::from_secs(1)).await {
        Err(ActionError::Unexpected(message)) => assert!(message.contains("not a master"), "{message}"),
        other => panic!("a replica was paused: {other:?}"),
    }
}

/// The waits give up after their timeout with what they last saw; a master required to
/// have more replicas than it has refuses writes until the requirement is lifted; an
/// unreachable member is a connection error.
#[tokio::test]
async fn waits_time_out_and_min_replicas_refuse_writes() {
    let cluster = RedisCluster::start(2).expect("cluster starts");
    let (master_host, master_port) = cluster.address(0);
    let replica = target(&cluster, 1);
    redis_wait_for_upstream(&replica, &master_host, master_port, TIMEOUT).await.unwrap();

    let short = Duration::from_millis(300);
    let started = Instant::now();
    match redis_wait_for_offset(&replica, u64::MAX, short).await {
        Err(ActionError::Timeout(message)) => assert!(message.contains("at offset"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < short + Duration::from_millis(500), "took {:?}", started.elapsed());
    match redis_wait_for_upstream(&replica, &master_host, master_port.wrapping_add(1), short).await {
        Err(ActionError::Timeout(message)) => {
            assert!(message.contains(&format!("following {master_host}")), "{message}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    let master = target(&cluster, 0);
    redis_set_min_replicas(&master, 2, 10).await.unwrap();
    assert_eq!(cluster.command(0, &["CONFIG", "GET", "min-replicas-to-write"]).unwrap(), "min-replicas-to-write\n2");
    match redis_write_epoch(&master, 1).await {
        Err(ActionError::Redis(message)) => assert!(message.contains("NOREPLICAS"), "{message}"),
        other => panic!("a master short of replicas took a write: {other:?}"),
    }
    redis_set_min_replicas(&master, 1, 10).await.unwrap();
    assert_eq!(redis_write_epoch(&master, 1).await.unwrap(), 1, "one replica is enough");
    redis_set_min_replicas(&master, 0, 10).await.unwrap();

    cluster.kill(1).unwrap();
    match redis_role(&replica).await {
        Err(ActionError::Connect(message)) => assert!(!message.contains(REDIS_PASSWORD), "{message}"),
        other => panic!("expected a connection error, got {other:?}"),
    }
    let wrong = RedisTarget { password: Some("wrong".into()), ..target(&cluster, 0) };
    match redis_role(&wrong).await {
        Err(ActionError::Connect(message)) => assert!(message.to_lowercase().contains("authentication"), "{message}"),
        other => panic!("expected a refused login, got {other:?}"),
    }
}
