//! The PostgreSQL actions against real PostgreSQL 15 clusters from the chaos-tests
//! harness: a failover (promote, record the epoch, re-point the other replica) and a
//! switchover (stop the primary cleanly, wait for replay, promote, restart the old
//! primary as a replica).

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use tokio::time::{Instant, sleep};
use vigil_actions::{
    ActionError, GENERATION_PARAMETER, PgCtl, ToolConnection, prepare_for_promotion, primary_conninfo, promote,
    promote_born_fenced, reclone, repoint, rewind, set_synchronous_standby_names, start_as_replica, stop_server,
    unfence, wait_for_replay, wait_for_upstream, write_epoch,
};
use vigil_chaos_tests::postgres::{PgCluster, REPLICATION_PASSWORD, REPLICATION_USER, VIGIL_PASSWORD, VIGIL_USER};
use vigil_probes::{PgObservation, PgProbe, PgTarget, ProbeOutcome};

const TIMEOUT: Duration = Duration::from_secs(5);
const PROMOTE_WAIT: Duration = Duration::from_secs(30);

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

fn ctl(cluster: &PgCluster, index: usize) -> PgCtl {
    PgCtl::new(
        cluster.bin_dir().to_path_buf(),
        cluster.instances()[index].data_dir.clone(),
        cluster.run_as().map(String::from),
    )
}

/// The conninfo with which member `replica` streams from member `primary`.
fn conninfo_to(cluster: &PgCluster, primary: usize, replica: usize) -> String {
    primary_conninfo(
        "127.0.0.1",
        cluster.instances()[primary].port,
        REPLICATION_USER,
        REPLICATION_PASSWORD,
        &cluster.instances()[replica].name,
    )
}

/// The replication role's connection from `replica` to `primary`, for a tool.
fn tool_connection_to(cluster: &PgCluster, primary: usize, replica: usize) -> ToolConnection {
    let port = cluster.instances()[primary].port;
    let name = &cluster.instances()[replica].name;
    ToolConnection::new("127.0.0.1", port, REPLICATION_USER, REPLICATION_PASSWORD, name, None)
}

/// Runs `work` while a thread reads every process's command line every few milliseconds:
/// panics if one held `secret`; returns what `work` returned and whether a command line
/// naming `tool` was seen at all (so that the check was not vacuous).
async fn watching_command_lines<T>(tool: &str, secret: &str, work: impl std::future::Future<Output = T>) -> (T, bool) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, tool, secret) = (stop.clone(), tool.to_string(), secret.to_string());
        std::thread::spawn(move || {
            let (mut seen, mut leaks) = (false, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(line) = std::fs::read(entry.path().join("cmdline")) else { continue };
                    let line = String::from_utf8_lossy(&line).replace('\0', " ");
                    // Only the tool's own command line: tests running beside this one put
                    // passwords on psql's (the harness creating its roles), which is not
                    // what is watched here.
                    if line.contains(&tool) {
                        seen = true;
                        if line.contains(&secret) {
                            leaks.push(line);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (seen, leaks)
        })
    };
    let result = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, leaks) = watcher.join().unwrap();
    assert!(leaks.is_empty(), "a password on a command line: {leaks:?}");
    (result, seen)
}

async fn observe(cluster: &PgCluster, index: usize) -> PgObservation {
    match PgProbe::new(target(cluster, index), "g1".into(), 1).check().await {
        ProbeOutcome::Answered(observation) => observation,
        ProbeOutcome::Failed { reason } => panic!("member {index} did not answer: {reason}"),
    }
}

/// Polls `sql` on member `index` until it answers `expected`, for at most 20 seconds.
async fn wait_for_answer(cluster: &PgCluster, index: usize, sql: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = cluster.sql(index, sql);
        if matches!(&answer, Ok(text) if text == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {index} answered {answer:?} to {sql:?}, expected {expected:?}\nlog:\n{}",
            cluster.log_tail(index).unwrap_or_default()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// Failover: with the primary killed, the most advanced replica is promoted exactly once
/// (timeline 2, and a second promote reports `already_primary`), takes the epoch write,
/// and the other replica, re-pointed to it, streams from it on the new timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_promotes_once_records_the_epoch_and_repoints_the_other_replica() {
    let cluster = PgCluster::start(3).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE orders (id int PRIMARY KEY)").unwrap();
    cluster.sql(0, "INSERT INTO orders VALUES (1)").unwrap();
    for replica in [1, 2] {
        wait_for_answer(&cluster, replica, "SELECT count(*) FROM orders", "1").await;
    }

    cluster.kill_postmaster(0).unwrap();
    // Promote the replica that received the most WAL, as vigil would: the other one can
    // then always follow it onto the new timeline.
    let received = |seen: PgObservation| seen.receive_lsn.expect("replicas report a receive lsn");
    let (second, third) = (received(observe(&cluster, 1).await), received(observe(&cluster, 2).await));
    let (new_primary, other) = if third > second { (2, 1) } else { (1, 2) };

    let first = promote(&target(&cluster, new_primary), PROMOTE_WAIT).await.expect("promotes");
    assert!(!first.already_primary);
    assert!(first.lsn.is_some_and(|lsn| lsn > 0), "{first:?}");
    assert!(!cluster.is_in_recovery(new_primary).unwrap());

    let again = promote(&target(&cluster, new_primary), PROMOTE_WAIT).await.expect("idempotent");
    assert!(again.already_primary);
    assert!(again.lsn.is_some_and(|lsn| lsn >= first.lsn.unwrap()), "{again:?} after {first:?}");

    // The checkpoint that records the new timeline follows promotion shortly.
    let deadline = Instant::now() + Duration::from_secs(20);
    while observe(&cluster, new_primary).await.timeline != Some(2) {
        assert!(Instant::now() < deadline, "timeline never became 2");
        sleep(Duration::from_millis(50)).await;
    }
    let wal_timeline = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)";
    assert_eq!(cluster.sql(new_primary, wal_timeline).unwrap(), "00000002", "exactly one switch");

    let new_target = target(&cluster, new_primary);
    write_epoch(&new_target, "g1", 2).await.expect("epoch written");
    write_epoch(&new_target, "g1", 2).await.expect("rewriting the same epoch is fine");
    write_epoch(&new_target, "g1", 1).await.expect("a stale epoch is not an error");
    let stored = "SELECT epoch FROM vigil.epoch WHERE group_name = 'g1'";
    assert_eq!(cluster.sql(new_primary, stored).unwrap(), "2", "the epoch only grows");
    assert_eq!(observe(&cluster, new_primary).await.epoch, Some(2));

    let conninfo = conninfo_to(&cluster, new_primary, other);
    repoint(&target(&cluster, other), &conninfo).await.expect("re-pointed");
    repoint(&target(&cluster, other), &conninfo).await.expect("re-pointing twice is fine");
    let new_port = cluster.instances()[new_primary].port;
    wait_for_answer(
        &cluster,
        other,
        "SELECT sender_port || '|' || received_tli || '|' || status FROM pg_stat_wal_receiver",
        &format!("{new_port}|2|streaming"),
    )
    .await;
    wait_for_answer(&cluster, other, stored, "2").await;
    let timeline = wait_for_upstream(&target(&cluster, other), &new_target, Duration::from_secs(20)).await;
    assert_eq!(timeline.expect("streams from the new primary"), 2);
    let seen = observe(&cluster, other).await;
    assert_eq!(seen.upstream, Some(format!("127.0.0.1:{new_port}")));

    // Refusals: a primary has no upstream, and a replica takes no writes.
    let refused = repoint(&new_target, &conninfo).await;
    assert!(matches!(refused, Err(ActionError::Unexpected(_))), "{refused:?}");
    let refused = write_epoch(&target(&cluster, other), "g1", 3).await;
    assert!(matches!(refused, Err(ActionError::Sql(ref m)) if m.contains("read-only")), "{refused:?}");
}

/// A replica that replayed WAL of the old timeline past the point where the promoted
/// member's timeline forked off can never stream from it: re-pointed, it is told diverged
/// (it needs `pg_rewind`) as soon as that is seen, not after the whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_the_fork_point_is_told_diverged_at_once() {
    let cluster = PgCluster::start(3).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE orders (id int PRIMARY KEY)").unwrap();
    for replica in [1, 2] {
        wait_for_answer(&cluster, replica, "SELECT count(*) FROM pg_class WHERE relname = 'orders'", "1").await;
    }
    // Member 1 stops receiving; member 2 goes on and replays what member 1 never gets.
    cluster.sql(1, "ALTER SYSTEM SET primary_conninfo = ''").unwrap();
    cluster.sql(1, "SELECT pg_reload_conf()").unwrap();
    wait_for_answer(&cluster, 1, "SELECT count(*) FROM pg_stat_wal_receiver", "0").await;
    cluster.sql(0, "INSERT INTO orders SELECT generate_series(1, 100)").unwrap();
    wait_for_answer(&cluster, 2, "SELECT count(*) FROM orders", "100").await;
    cluster.kill_postmaster(0).unwrap();

    promote(&target(&cluster, 1), PROMOTE_WAIT).await.expect("member 1 promotes");
    repoint(&target(&cluster, 2), &conninfo_to(&cluster, 1, 2)).await.expect("re-pointed");
    let wait = Duration::from_secs(60);
    let started = Instant::now();
    let outcome = wait_for_upstream(&target(&cluster, 2), &target(&cluster, 1), wait).await;
    match outcome {
        Err(ActionError::Unexpected(message)) => {
            assert!(message.contains("diverged") && message.contains("pg_rewind"), "{message}")
        }
        other => panic!("expected the replica to be told diverged, got {other:?}"),
    }
    assert!(started.elapsed() < wait / 2, "told only after {:?}", started.elapsed());
}

/// A promotion born fenced, as vigil's failover does it: the standby's sessions are ended,
/// a session opened after the promotion meets read-only at once, `synchronous_standby_names`
/// is `*` when asked for, a second call leaves the new primary as it is, and only lifting
/// the fence lets writes in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_promoted_born_fenced_refuses_writes_until_lifted() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE orders (id int PRIMARY KEY)").unwrap();
    wait_for_answer(&cluster, 1, "SELECT count(*) FROM orders", "0").await;
    let replica = target(&cluster, 1);
    let (reader, connection) = replica.config().connect(tokio_postgres::NoTls).await.expect("a reader connects");
    tokio::spawn(connection);
    reader.simple_query("SELECT 1").await.expect("the reader reads");
    cluster.kill_postmaster(0).unwrap();

    let born = promote_born_fenced(&replica, PROMOTE_WAIT, Some([2, 0, 0])).await.expect("promotes");
    assert!(!born.promoted.already_primary, "{born:?}");
    assert!(born.promoted.lsn.is_some_and(|lsn| lsn > 0), "{born:?}");
    assert!(born.sessions_ended.is_some_and(|ended| ended >= 1), "the reader was ended: {born:?}");
    assert!(!cluster.is_in_recovery(1).unwrap());
    assert!(reader.simple_query("SELECT 1").await.is_err(), "the reader's session is gone");
    let refused = write_epoch(&replica, "g1", 2).await;
    assert!(matches!(refused, Err(ActionError::Sql(ref m)) if m.contains("read-only")), "{refused:?}");
    assert_eq!(cluster.sql(1, "SHOW synchronous_standby_names").unwrap(), "*");

    let again = promote_born_fenced(&replica, PROMOTE_WAIT, Some([2, 0, 0])).await.expect("idempotent");
    assert!(again.promoted.already_primary, "{again:?}");
    assert_eq!(again.sessions_ended, None, "an existing primary is left as it is");

    // No standby is left to answer for a commit: wait for none, then lift the fence.
    set_synchronous_standby_names(&replica, "", [2, 1, 1]).await.expect("synchronous standbys reset");
    unfence(&replica).await.expect("fence lifted");
    wait_for_answer(&cluster, 1, "SHOW default_transaction_read_only", "off").await;
    write_epoch(&replica, "g1", 2).await.expect("writable once lifted");
}

/// A replica readied ahead is read-only by default already; its promotion is born fenced
/// without writing its configuration (the file is not touched), and readying refuses a
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_readied_ahead_is_promoted_born_fenced_without_a_configuration_write() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE orders (id int PRIMARY KEY)").unwrap();
    wait_for_answer(&cluster, 1, "SELECT count(*) FROM orders", "0").await;
    let replica = target(&cluster, 1);
    assert!(prepare_for_promotion(&replica).await.expect("readied"), "the first call sets it");
    assert!(!prepare_for_promotion(&replica).await.expect("readied again"), "the second finds it set");
    wait_for_answer(&cluster, 1, "SHOW default_transaction_read_only", "on").await;
    let refused = prepare_for_promotion(&target(&cluster, 0)).await;
    assert!(matches!(&refused, Err(ActionError::Unexpected(m)) if m.contains("not a replica")), "{refused:?}");
    assert_eq!(cluster.sql(0, "SHOW default_transaction_read_only").unwrap(), "off", "the primary stays writable");

    let auto_conf = cluster.instances()[1].data_dir.join("postgresql.auto.conf");
    let before = std::fs::read_to_string(&auto_conf).unwrap();
    let modified = std::fs::metadata(&auto_conf).unwrap().modified().unwrap();
    cluster.kill_postmaster(0).unwrap();
    let born = promote_born_fenced(&replica, PROMOTE_WAIT, None).await.expect("promotes");
    assert!(!born.promoted.already_primary, "{born:?}");
    let refused = write_epoch(&replica, "g1", 2).await;
    assert!(matches!(refused, Err(ActionError::Sql(ref m)) if m.contains("read-only")), "{refused:?}");
    assert_eq!(std::fs::read_to_string(&auto_conf).unwrap(), before);
    assert_eq!(std::fs::metadata(&auto_conf).unwrap().modified().unwrap(), modified, "the configuration was written");
    unfence(&replica).await.expect("fence lifted");
    wait_for_answer(&cluster, 1, "SHOW default_transaction_read_only", "off").await;
    write_epoch(&replica, "g1", 2).await.expect("writable once lifted");
}

/// The synchronous setting only moves forward: a change older than the kept generation
/// (a deposed leader's, landing late) is refused and leaves the setting as it is, the same
/// change again goes through, and a promotion's generation is kept from the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_synchronous_setting_is_refused() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    let primary = target(&cluster, 0);
    let kept = || {
        cluster.sql(0, &format!("SELECT setting FROM pg_file_settings WHERE name = '{GENERATION_PARAMETER}'")).unwrap()
    };
    assert_eq!(kept(), "", "nothing kept before vigil's first change");

    set_synchronous_standby_names(&primary, "FIRST 1 (\"pg3\")", [4, 7, 100]).await.expect("first change");
    assert_eq!(kept(), "4.7.100");
    set_synchronous_standby_names(&primary, "FIRST 1 (\"pg3\")", [4, 7, 100]).await.expect("the same change again");

    let newer = [4, 8, 1];
    set_synchronous_standby_names(&primary, "FIRST 1 (\"pg2\")", newer).await.expect("a newer leader's change");
    for stale in [[4, 7, 101], [3, 9, 9]] {
        let refused = set_synchronous_standby_names(&primary, "FIRST 1 (\"pg3\")", stale).await;
        match refused {
            Err(ActionError::Unexpected(message)) => {
                assert!(message.contains("4.8.1") && message.contains("is older and is refused"), "{message}")
            }
            other => panic!("expected the stale change {stale:?} refused, got {other:?}"),
        }
    }
    wait_for_answer(&cluster, 0, "SHOW synchronous_standby_names", "FIRST 1 (\"pg2\")").await;
    assert_eq!(kept(), "4.8.1");

    // A kept value vigil did not write is named, with the way out.
    cluster.sql(0, &format!("ALTER SYSTEM SET {GENERATION_PARAMETER} = 'x'")).unwrap();
    let refused = set_synchronous_standby_names(&primary, "", [5, 0, 0]).await;
    assert!(
        matches!(&refused, Err(ActionError::Unexpected(m)) if m.contains("expected three numbers") && m.contains("RESET")),
        "{refused:?}"
    );
}

/// Switchover: the primary stops cleanly at a checkpoint LSN, the replica replays past
/// it and is promoted, and the old primary restarts as a streaming replica of the new
/// one without a rewind; every step is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_restarts_the_old_primary_as_a_replica() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE orders (id int PRIMARY KEY)").unwrap();
    cluster.sql(0, "INSERT INTO orders VALUES (1)").unwrap();
    let old_primary = ctl(&cluster, 0);

    let stopped_at = stop_server(&old_primary, TIMEOUT).await.expect("stops");
    assert!(stopped_at > 0);
    assert!(cluster.sql(0, "SELECT 1").is_err(), "the old primary still answers");
    let again = stop_server(&old_primary, TIMEOUT).await.expect("stopping twice is fine");
    assert_eq!(again, stopped_at, "a stopped server stays at its checkpoint");

    let replayed = wait_for_replay(&target(&cluster, 1), stopped_at, TIMEOUT)
        .await
        .expect("the replica replays the shutdown checkpoint");
    assert!(replayed > stopped_at);
    let unreachable_lsn = replayed + (1 << 32);
    let started = Instant::now();
    let waited = wait_for_replay(&target(&cluster, 1), unreachable_lsn, Duration::from_millis(300)).await;
    assert!(matches!(waited, Err(ActionError::Timeout(_))), "{waited:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    wait_for_answer(&cluster, 1, "SELECT count(*) FROM orders", "1").await;

    let promoted = promote(&target(&cluster, 1), PROMOTE_WAIT).await.expect("promotes");
    assert!(!promoted.already_primary);
    write_epoch(&target(&cluster, 1), "g1", 2).await.expect("epoch written");

    let conninfo = conninfo_to(&cluster, 1, 0);
    start_as_replica(&old_primary, &conninfo, Duration::from_secs(30))
        .await
        .expect("the old primary starts as a replica");
    cluster.wait_streaming(0, Duration::from_secs(20)).expect("the old primary streams");
    assert!(cluster.is_in_recovery(0).unwrap());
    let new_port = cluster.instances()[1].port;
    assert_eq!(
        cluster.sql(0, "SELECT sender_port || '|' || received_tli FROM pg_stat_wal_receiver").unwrap(),
        format!("{new_port}|2")
    );
    let standby_signal = cluster.instances()[0].data_dir.join("standby.signal");
    let data_dir_owner = std::fs::metadata(&cluster.instances()[0].data_dir).unwrap().uid();
    assert_eq!(std::fs::metadata(&standby_signal).unwrap().uid(), data_dir_owner);

    cluster.sql(1, "INSERT INTO orders VALUES (2)").unwrap();
    wait_for_answer(&cluster, 0, "SELECT count(*) FROM orders", "2").await;
    wait_for_answer(&cluster, 0, "SELECT epoch FROM vigil.epoch WHERE group_name = 'g1'", "2").await;

    // Asking again leaves the running replica alone.
    let postmaster = cluster.postmaster_pid(0).unwrap();
    start_as_replica(&old_primary, &conninfo, Duration::from_secs(30)).await.expect("idempotent");
    assert_eq!(cluster.postmaster_pid(0).unwrap(), postmaster, "the replica was restarted");
    cluster.wait_streaming(0, Duration::from_secs(20)).expect("still streams");
}

/// A crashed server is not cleanly shut down, so its checkpoint location is not where its
/// WAL ends: `stop_server` recovers it in single-user mode first, and then reports the
/// position after every committed row, which a replica that caught up has replayed.
#[tokio::test]
async fn stop_server_recovers_a_crashed_data_directory_before_reporting() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE before_crash AS SELECT generate_series(1, 1000) AS n").unwrap();
    let committed: u64 = {
        let lsn = cluster.sql(0, "SELECT pg_current_wal_lsn()").unwrap();
        u64::from(lsn.parse::<tokio_postgres::types::PgLsn>().unwrap())
    };
    cluster.kill_postmaster(0).unwrap();
    let stopped = stop_server(&ctl(&cluster, 0), TIMEOUT).await.expect("recovered and stopped cleanly");
    assert!(stopped >= committed, "reported {stopped}, but rows were committed up to {committed}");
}

/// A re-clone whose copy fails (here: the primary refuses the replication login) leaves the
/// data directory exactly as it was, with nothing half-copied beside it; the next attempt
/// would start from the member's own files, configuration included. Once the primary
/// answers, the re-clone swaps a complete copy in and keeps the member's configuration.
#[tokio::test]
async fn a_failed_reclone_leaves_the_data_directory_as_it_was() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    let replica = ctl(&cluster, 1);
    let data_dir = cluster.instances()[1].data_dir.clone();
    let own_conf = std::fs::read(data_dir.join("postgresql.conf")).unwrap();
    let wrong = ToolConnection::new("127.0.0.1", cluster.instances()[0].port, REPLICATION_USER, "wrong", "pg2", None);
    let error = reclone(&replica, &wrong, Duration::from_secs(30)).await.expect_err("the copy must fail");
    assert!(error.to_string().contains("left as it was"), "{error}");
    assert_eq!(std::fs::read(data_dir.join("postgresql.conf")).unwrap(), own_conf);
    assert!(data_dir.join("PG_VERSION").exists(), "the data directory is still a data directory");
    let parent = data_dir.parent().unwrap();
    let beside: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("vigil-"))
        .collect();
    assert!(beside.is_empty(), "left beside the data directory: {beside:?}");

    // The right password, in pg_basebackup's environment and never on its command line.
    let source = tool_connection_to(&cluster, 0, 1);
    let (aside, seen) = watching_command_lines(
        "pg_basebackup",
        REPLICATION_PASSWORD,
        reclone(&replica, &source, Duration::from_secs(60)),
    )
    .await;
    let aside = aside.expect("re-cloned");
    assert!(seen, "pg_basebackup was never seen running");
    assert!(aside.join("PG_VERSION").exists(), "the old directory is kept aside");
    assert_eq!(std::fs::read(data_dir.join("postgresql.conf")).unwrap(), own_conf, "own configuration kept");
    start_as_replica(&replica, &conninfo_to(&cluster, 0, 1), Duration::from_secs(60)).await.expect("starts");
    cluster.wait_streaming(1, Duration::from_secs(30)).expect("streams from the primary");
}

/// A replica killed with SIGKILL, while the primary goes on writing, comes back through
/// `rewind` and `start_as_replica` streaming again: its crash recovery runs as a standby,
/// so no record the primary never had is written into its WAL.
#[tokio::test]
async fn a_killed_replica_rejoins_and_streams_again() {
    let cluster = PgCluster::start(2).expect("cluster starts");
    cluster.sql(0, "CREATE TABLE before_kill AS SELECT generate_series(1, 1000) AS n").unwrap();
    wait_for_answer(&cluster, 1, "SELECT count(*) FROM before_kill", "1000").await;
    cluster.kill_postmaster(1).unwrap();
    cluster.sql(0, "CREATE TABLE after_kill AS SELECT generate_series(1, 1000) AS n").unwrap();
    let replica = ctl(&cluster, 1);
    let port = cluster.instances()[0].port;
    let source = ToolConnection::new("127.0.0.1", port, VIGIL_USER, VIGIL_PASSWORD, "vigil-rewind", Some("postgres"));
    let (rewound, seen) =
        watching_command_lines("pg_rewind", VIGIL_PASSWORD, rewind(&replica, &source, Duration::from_secs(60))).await;
    rewound.expect("rewound");
    assert!(seen, "pg_rewind was never seen running");
    start_as_replica(&replica, &conninfo_to(&cluster, 0, 1), Duration::from_secs(60)).await.expect("starts");
    cluster.wait_streaming(1, Duration::from_secs(30)).expect("streams from the primary again");
    cluster.sql(0, "CREATE TABLE after_rejoin AS SELECT 7 AS n").unwrap();
    wait_for_answer(&cluster, 1, "SELECT n FROM after_rejoin", "7").await;
    wait_for_answer(&cluster, 1, "SELECT count(*) FROM after_kill", "1000").await;
}
