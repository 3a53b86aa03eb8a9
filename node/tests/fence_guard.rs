//! The fence guard against a real redis-server: it lifts a master's fence only before the
//! deadline it holds, and a lift still on its way when the deadline passes cannot undo the
//! guard's fence (the guard sends it behind the lift, on the same connection).
//!
//! The guard is the real `vigil fence-guard` process; the daemon's side is the real
//! `GuardClient`, connected to it over its socket.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;
use vigil::config::LogFormat;
use vigil::guard::{GuardClient, GuardMessage, GuardedRedis, GuardedServer, SOCKET_FILE};
use vigil_chaos_tests::redis::{REDIS_PASSWORD, RedisCluster};
use vigil_probes::RedisTarget;

/// `min-replicas-to-write` the guard's fence sets: beyond any number of replicas.
const REFUSE_ALL: u32 = 1_000_000;

/// A guard process this test started, ended by its PID when dropped.
struct GuardProcess(Child);

impl Drop for GuardProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_guard(dir: &Path) -> GuardProcess {
    let log = std::fs::File::create(dir.join("guard.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["fence-guard", "--socket"])
        .arg(dir.join(SOCKET_FILE))
        .args(["--node-id", "1", "--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting vigil fence-guard");
    let guard = GuardProcess(child);
    for _ in 0..250 {
        if std::os::unix::net::UnixStream::connect(dir.join(SOCKET_FILE)).is_ok() {
            return guard;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the fence guard did not come up: {}", std::fs::read_to_string(dir.join("guard.log")).unwrap());
}

fn guarded(redis: &RedisCluster) -> GuardedServer {
    let (host, port) = redis.address(0);
    let target = RedisTarget {
        host,
        port,
        username: None,
        password: Some(REDIS_PASSWORD.to_string()),
        timeout: Duration::from_secs(2),
        tls: None,
    };
    GuardedServer::Redis(GuardedRedis::new(&target, REFUSE_ALL, 10, 0))
}

fn arm(client: &GuardClient, server: &GuardedServer, valid_for: Duration) {
    let message =
        GuardMessage::Arm { group: "cache".into(), valid_for_ms: valid_for.as_millis() as u64, server: server.clone() };
    client.send(message).unwrap();
}

/// A write on the master, and the error it was refused with, if it was.
fn write_refusal(redis: &RedisCluster) -> Option<String> {
    redis.command(0, &["SET", "probe", "1"]).err().map(|error| error.to_string())
}

#[test]
fn the_guard_lifts_only_before_its_deadline_and_a_late_lift_cannot_undo_its_fence() {
    let redis = RedisCluster::start(1).expect("starting redis-server");
    let dir = tempfile::tempdir().unwrap();
    let _guard = start_guard(dir.path());
    let runtime = Runtime::new().unwrap();
    let tasks = TaskTracker::new();
    let client = runtime.block_on(async { GuardClient::start(dir.path(), 1, LogFormat::Text, &tasks) });
    let server = guarded(&redis);

    // Nothing armed: no lift.
    let refused = runtime.block_on(client.lift("cache", server.clone())).expect_err("lifted unarmed");
    assert!(refused.contains("nothing is armed"), "{refused}");

    // Armed, before the deadline: lifted, and the master takes writes.
    redis.command(0, &["CONFIG", "SET", "min-replicas-to-write", "1000000"]).unwrap();
    assert!(write_refusal(&redis).is_some(), "the fence set by hand holds");
    arm(&client, &server, Duration::from_secs(5));
    let lifted = runtime.block_on(client.lift("cache", server.clone())).expect("a lift before the deadline");
    assert!(lifted.contains("fence lifted by the guard"), "{lifted}");
    assert_eq!(write_refusal(&redis), None, "lifted, the master takes writes");

    // The deadline passes: the guard fences; a lift asked for after it is refused.
    arm(&client, &server, Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(700));
    let refusal = write_refusal(&redis).expect("the guard fenced at its deadline");
    assert!(refusal.contains("NOREPLICAS"), "{refusal}");
    let refused = runtime.block_on(client.lift("cache", server.clone())).expect_err("lifted after the deadline");
    assert!(refused.contains("deadline passed"), "{refused}");
    assert!(write_refusal(&redis).is_some(), "still fenced");

    // A lift asked for in time that reaches the server only after the deadline (the server
    // hangs with it in its socket): the fence, sent at the deadline behind it, still wins.
    arm(&client, &server, Duration::from_secs(5));
    runtime.block_on(client.lift("cache", server.clone())).expect("a lift before the deadline");
    assert_eq!(write_refusal(&redis), None);
    redis.command(0, &["CONFIG", "SET", "min-replicas-to-write", "1000000"]).unwrap();
    arm(&client, &server, Duration::from_millis(300));
    redis.freeze(0).unwrap();
    let late = runtime.spawn({
        let (client, server) = (client.clone(), server.clone());
        async move { client.lift("cache", server).await }
    });
    std::thread::sleep(Duration::from_millis(800));
    redis.thaw(0).unwrap();
    let answer = runtime.block_on(late).unwrap();
    let answer = answer.expect_err("the guard reports the fence behind the lift");
    assert!(answer.contains("fenced it again right behind"), "{answer}");
    let refusal = write_refusal(&redis).expect("the late lift undid the guard's fence");
    assert!(refusal.contains("NOREPLICAS"), "{refusal}");
    let log = std::fs::read_to_string(dir.path().join("guard.log")).unwrap();
    assert!(log.contains("the master refuses writes"), "{log}");
}

/// Only the guard's own user may talk to it: a connection from another user (`nobody`,
/// through a socket whose mode was widened to everyone's) is refused and logged, and what it
/// sends is never read.
#[test]
fn a_connection_from_another_user_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    assert!(nix::unistd::geteuid().is_root(), "this test runs the guard as root and a client as nobody");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _guard = start_guard(dir.path());
    let socket = dir.path().join(SOCKET_FILE);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // util-linux's logger, run as nobody, connects to the socket and writes a line.
    let sent = Command::new("runuser")
        .args(["-u", "nobody", "--", "logger", "--socket-errors=off", "--socket"])
        .arg(&socket)
        .arg("{\"type\":\"disarm\",\"group\":\"cache\"}")
        .output()
        .expect("running logger as nobody");
    assert!(sent.status.success(), "logger: {}", String::from_utf8_lossy(&sent.stderr));
    let log = || std::fs::read_to_string(dir.path().join("guard.log")).unwrap();
    for _ in 0..250 {
        if log().contains("refused a connection from another user") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = log();
    assert!(log.contains("refused a connection from another user") && log.contains("uid=65534"), "{log}");
    assert!(!log.contains("unreadable message"), "the message of another user was read: {log}");
}
