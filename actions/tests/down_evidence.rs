//! What counts as evidence that a PostgreSQL server is down, against real PostgreSQL 15
//! servers from the chaos-tests harness: `confirm_stopped` accepts only refusals, while
//! `pg_ctl status` (and so `is_running` and the "already stopped" of `stop_immediately`)
//! is fooled by a postmaster started in another PID namespace, whose PID this namespace's
//! `/proc` does not show.
//!
//! The namespace test needs root (`unshare --pid`), as the harness does to run PostgreSQL
//! as the `postgres` user. It signals only the processes it started: the postmaster found
//! among the descendants of its own `unshare` process, and that `unshare` process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};
use vigil_actions::{ActionError, PgCtl, confirm_stopped, is_running, start_server, stop_immediately, stop_server};
use vigil_chaos_tests::postgres::PgCluster;

const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the namespaced postmaster may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many 20 ms rounds cleanup waits for a signalled process to exit (10 s).
const EXIT_ROUNDS: u32 = 500;

fn ctl(cluster: &PgCluster) -> PgCtl {
    PgCtl::new(
        cluster.bin_dir().to_path_buf(),
        cluster.instances()[0].data_dir.clone(),
        cluster.run_as().map(String::from),
    )
}

fn port(cluster: &PgCluster) -> u16 {
    cluster.instances()[0].port
}

/// A running server is not down: `confirm_stopped` fails with `Unexpected`, naming the
/// address and the socket that still accept connections.
#[tokio::test]
async fn a_running_server_is_not_confirmed_stopped() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    let outcome = confirm_stopped(&ctl(&cluster), "127.0.0.1", port(&cluster), TIMEOUT).await;
    let Err(ActionError::Unexpected(message)) = &outcome else { panic!("expected Unexpected, got {outcome:?}") };
    assert!(message.contains("pg_ctl status finds a server running"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{} still accepts connections", port(&cluster))), "{message}");
    assert!(message.contains(&format!(".s.PGSQL.{} still accepts connections", port(&cluster))), "{message}");
}

/// After `stop_immediately` every witness refuses: `confirm_stopped` returns that evidence.
#[tokio::test]
async fn a_server_stopped_immediately_is_confirmed_stopped() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    let ctl = ctl(&cluster);
    stop_immediately(&ctl, TIMEOUT).await.expect("stops");
    assert!(cluster.sql(0, "SELECT 1").is_err(), "the stopped server still answers");
    let evidence = confirm_stopped(&ctl, "127.0.0.1", port(&cluster), TIMEOUT).await.expect("confirmed down");
    assert!(evidence.contains("pg_ctl status finds no server running"), "{evidence}");
    assert!(evidence.contains(&format!("127.0.0.1:{} refuses TCP connections", port(&cluster))), "{evidence}");
    assert!(evidence.contains("postmaster.pid, so no socket to ask"), "{evidence}");
}

/// A killed postmaster leaves its pid file and socket file behind; the socket named in the
/// stale pid file refuses connections, which is evidence, and so is the refused address.
/// Nor does that stale socket keep `start_server` from starting the server again.
#[tokio::test]
async fn a_killed_postmaster_is_confirmed_stopped_despite_its_stale_pid_file() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    cluster.kill_postmaster(0).expect("killed");
    assert!(cluster.instances()[0].data_dir.join("postmaster.pid").exists(), "the pid file should be stale");
    let evidence = confirm_stopped(&ctl(&cluster), "127.0.0.1", port(&cluster), TIMEOUT).await.expect("confirmed down");
    assert!(evidence.contains(&format!(".s.PGSQL.{} refuses connections", port(&cluster))), "{evidence}");
    assert!(evidence.contains("refuses TCP connections"), "{evidence}");
    // The stale socket does not stop a restart (which also frees the killed server's
    // shared memory, so the cluster's cleanup leaves none behind).
    start_server(&ctl(&cluster), Duration::from_secs(30)).await.expect("restarts");
    assert_eq!(cluster.sql(0, "SELECT 1").expect("answers after the restart"), "1");
}

/// Silence is not evidence: an address whose listener never answers (its accept queue is
/// full) makes `confirm_stopped` fail with `Connect` once its time is up, not succeed.
#[tokio::test]
async fn silence_is_not_evidence_that_a_server_is_down() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    let ctl = ctl(&cluster);
    stop_immediately(&ctl, TIMEOUT).await.expect("stops");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let silent_port = listener.local_addr().unwrap().port();
    // Fill the accept queue, never accepting, until the kernel drops new handshakes.
    let mut queued = Vec::new();
    let mut silent = false;
    for _ in 0..16 {
        let attempt = tokio::net::TcpStream::connect(("127.0.0.1", silent_port));
        match tokio::time::timeout(Duration::from_millis(300), attempt).await {
            Ok(connection) => queued.push(connection.expect("the listener takes the first connections")),
            Err(_) => {
                silent = true;
                break;
            }
        }
    }
    assert!(silent, "the listener never stopped answering after {} connections", queued.len());

    let started = Instant::now();
    let outcome = confirm_stopped(&ctl, "127.0.0.1", silent_port, Duration::from_secs(1)).await;
    let Err(ActionError::Connect(message)) = &outcome else { panic!("expected Connect, got {outcome:?}") };
    assert!(message.contains("neither accepted nor refused"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

/// The hole: a postmaster started in another PID namespace writes its namespace's PID into
/// `postmaster.pid`, which `pg_ctl status` and the pid-file shortcut look up here and miss.
/// `is_running` says it is not running and `stop_immediately` succeeds while it still
/// answers SQL over TCP; `confirm_stopped` refuses, and so do the actions that would start
/// a second server on its data directory or take it as stopped. Once it really stops,
/// `confirm_stopped` confirms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postmaster_in_another_pid_namespace_fools_pg_ctl_but_not_confirm_stopped() {
    let cluster = PgCluster::start(1).expect("cluster starts");
    assert!(cluster.run_as().is_some(), "this test needs root, for unshare --pid and to run postgres as its user");
    let ctl = ctl(&cluster);
    let port = port(&cluster);
    cluster.stop(0).expect("the harness's own server stops");

    // Declared after the cluster, so it is dropped (its server stopped) first, even on panic.
    let hidden = HiddenPostmaster::start(&cluster);
    hidden.wait_ready(&cluster).await;
    let namespace_pid = hidden.pid_file_pid().expect("the hidden postmaster wrote its pid file");
    let host_pid = hidden.postmaster_host_pid().expect("the hidden postmaster is among our descendants");
    assert_ne!(namespace_pid, host_pid, "postgres did not run in a PID namespace of its own");

    // The old view: nothing runs, and a fence finds nothing to stop.
    assert_eq!(is_running(&ctl).await, Ok(false), "pg_ctl status was not fooled");
    stop_immediately(&ctl, TIMEOUT).await.expect("stop_immediately finds nothing to stop");
    assert_eq!(cluster.sql(0, "SELECT 1").expect("the hidden server still answers"), "1");

    // The new one: the server still takes connections, so it is not down.
    let outcome = confirm_stopped(&ctl, "127.0.0.1", port, TIMEOUT).await;
    let Err(ActionError::Unexpected(message)) = &outcome else { panic!("expected Unexpected, got {outcome:?}") };
    eprintln!("confirm_stopped while the hidden postmaster runs: {message}");
    assert!(message.contains(&format!("127.0.0.1:{port} still accepts connections")), "{message}");
    assert!(message.contains(&format!(".s.PGSQL.{port} still accepts connections")), "{message}");
    assert!(message.contains("another PID namespace"), "{message}");

    // Nor is a second server started beside it, or its data directory taken as stopped.
    let started = start_server(&ctl, TIMEOUT).await;
    eprintln!("start_server beside the hidden postmaster: {started:?}");
    assert!(matches!(&started, Err(ActionError::Unexpected(m)) if m.contains("not starting")), "{started:?}");
    let stopped = stop_server(&ctl, TIMEOUT).await;
    assert!(matches!(&stopped, Err(ActionError::Unexpected(m)) if m.contains("still accepts")), "{stopped:?}");
    assert_eq!(cluster.sql(0, "SELECT 1").expect("the hidden server still answers"), "1");
    assert_eq!(hidden.postmaster_host_pid(), Some(host_pid), "the hidden postmaster was replaced");

    drop(hidden);
    let evidence = confirm_stopped(&ctl, "127.0.0.1", port, TIMEOUT).await.expect("down once it stopped");
    eprintln!("confirm_stopped once it stopped: {evidence}");
    assert!(evidence.contains("refuses TCP connections"), "{evidence}");
}

/// A postmaster run in the foreground in a PID namespace of its own:
/// `unshare --pid --fork --mount-proc --kill-child runuser -u postgres -- postgres -D DATA`.
/// Dropping it stops that postmaster (SIGINT, a fast shutdown), or, if it does not exit in
/// time, kills the `unshare` process, whose `--kill-child` takes the whole namespace down.
struct HiddenPostmaster {
    unshare: Child,
    data_dir: PathBuf,
    log: PathBuf,
}

impl HiddenPostmaster {
    fn start(cluster: &PgCluster) -> HiddenPostmaster {
        let instance = &cluster.instances()[0];
        let log = instance.instance_dir().join("hidden-postmaster.log");
        let log_file = File::create(&log).expect("create the hidden postmaster's log");
        let user = cluster.run_as().expect("root runs postgres as its own user");
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child", "runuser", "-u", user, "--", "env", "LC_ALL=C"])
            .arg(cluster.bin_dir().join("postgres"))
            .arg("-D")
            .arg(&instance.data_dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log's handle"))
            .stderr(log_file)
            .spawn()
            .expect("unshare runs");
        HiddenPostmaster { unshare, data_dir: instance.data_dir.clone(), log }
    }

    /// Waits until the server answers `SELECT 1` over TCP.
    async fn wait_ready(&self, cluster: &PgCluster) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match cluster.sql(0, "SELECT 1") {
                Ok(answer) if answer == "1" => return,
                answer => assert!(
                    Instant::now() < deadline,
                    "the hidden postmaster never answered: {answer:?}\nlog:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// The PID in `postmaster.pid`: the postmaster's PID in its own namespace.
    fn pid_file_pid(&self) -> Option<i32> {
        read_pid_file_pid(&self.data_dir)
    }

    /// The postmaster's PID in this namespace: the descendant of our `unshare` process whose
    /// PID in the innermost namespace is the one in `postmaster.pid`.
    fn postmaster_host_pid(&self) -> Option<i32> {
        let namespace_pid = self.pid_file_pid()?;
        descendants_of(self.unshare.id() as i32)
            .into_iter()
            .find(|pid| namespace_pids(*pid).is_some_and(|pids| pids.last() == Some(&namespace_pid) && pids.len() > 1))
    }

    /// Whether our `unshare` process has exited, after waiting up to 10 s.
    fn exited_in_time(&mut self) -> bool {
        for _ in 0..EXIT_ROUNDS {
            if matches!(self.unshare.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for HiddenPostmaster {
    fn drop(&mut self) {
        if let Some(postmaster) = self.postmaster_host_pid() {
            let _ = kill(Pid::from_raw(postmaster), Signal::SIGINT);
        }
        if !self.exited_in_time() {
            // `unshare` dies, `--kill-child` kills the namespace's init, and the kernel kills
            // every process left in the namespace before that init is reaped.
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
        // A killed postmaster leaves a pid file naming a PID of its namespace, which the
        // cluster's cleanup would look up here and might take for some other process.
        let pid_file = self.data_dir.join("postmaster.pid");
        if pid_file.exists() {
            let _ = std::fs::remove_file(pid_file);
        }
    }
}

fn read_pid_file_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Every process descended from `root`, from one scan of `/proc`.
fn descendants_of(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The parent follows the state, after the command name in parentheses.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<i32>().ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut found = vec![root];
    let mut index = 0;
    while index < found.len() {
        let parent = found[index];
        found.extend(parents.iter().filter(|(_, of)| *of == parent).map(|(pid, _)| *pid));
        index += 1;
    }
    found.remove(0);
    found
}

/// The `NSpid:` line of a process: its PID in this namespace first, in its own last.
fn namespace_pids(pid: i32) -> Option<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|pid| pid.parse().ok()).collect()
}
