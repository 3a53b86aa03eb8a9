//! A throwaway Redis cluster for tests: member 0 is the master, the others replicate from
//! it, each a `redis-server` process with its own directory and configuration file inside
//! one temporary directory; either all on 127.0.0.1 with free ports ([`RedisCluster::start`]),
//! or each member on its own host of a [`NetLab`], listening on that host's lab address at
//! [`LAB_PORT`] and replicating across the lab network ([`RedisCluster::start_in`]), so the
//! lab's faults reach replication and clients.
//!
//! The layout under [`RedisCluster::root`] is one instance directory per member
//! (`redis1/`, `redis2/`, ...) holding its configuration (`redis1/redis.conf`), its log
//! (`redis1/redis1.log`) and whatever the server writes there (a replica's sync file).
//! Nothing is persisted (`save ""`, no AOF): a restarted member comes back empty, and a
//! replica then takes a full copy from its master again.
//!
//! The harness talks to the servers through a tiny blocking RESP client over
//! `std::net::TcpStream` ([`RedisCluster::command`]), so no `redis-cli` process is needed
//! and plain `#[test]`s can use it; for a lab member the socket is opened from a thread
//! that joined the member's namespace.
//!
//! Invariant: the harness only signals the `redis-server` processes it spawned itself (by
//! the PID of the child it holds, reaped by it) and their forked children, and dropping a
//! [`RedisCluster`] kills all of them and removes the directory.

// The harness is synchronous so that plain `#[test]`s can use it, and its waits measure
// real elapsed time while real servers start: tokio's clock (paused or not) is neither
// available nor wanted here, so std's `Instant` is the right clock.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub use crate::HarnessError;
use crate::netns::NetLab;

/// The password every member requires (`requirepass`) and replicas log in to their master
/// with (`masterauth`), for the default user.
pub const REDIS_PASSWORD: &str = "vigil-redis-secret";
/// The port every member of a lab cluster listens on: each has a network stack of its own.
pub const LAB_PORT: u16 = 6379;
/// The server binary, looked up on `PATH` (Debian's `redis-server` package).
pub const DEFAULT_SERVER: &str = "redis-server";
/// Environment variable that overrides [`DEFAULT_SERVER`], for machines laid out otherwise.
pub const SERVER_ENV: &str = "VIGIL_REDIS_SERVER";

/// How long a start waits for a server to answer as itself.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `start` waits for each replica's link to its master to come up.
const LINK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` and `Drop` wait for a signalled server to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting, and on each reply, of one harness command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How many lines of server log an error carries.
const LOG_TAIL_LINES: usize = 40;
/// How many times a server start is retried on a fresh port when its port was taken.
const PORT_ATTEMPTS: usize = 3;
/// The loopback address members of a loopback cluster listen on.
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Where `ip netns` keeps the files that name namespaces.
const NETNS_DIR: &str = "/run/netns";
/// How often waits poll.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One Redis server of a [`RedisCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisInstance {
    /// The member's name: "redis1" for member 0, "redis2" for member 1, and so on.
    pub name: String,
    /// The TCP port it listens on: a free port at 127.0.0.1, or [`LAB_PORT`] at its lab
    /// host's address (see [`RedisCluster::address`]).
    pub port: u16,
    /// Its directory (`<root>/<name>`), the server's working directory.
    pub dir: PathBuf,
}

impl RedisInstance {
    /// The configuration file the server is started with (`<root>/<name>/redis.conf`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("redis.conf")
    }

    /// The server log (`<root>/<name>/<name>.log`).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }
}

/// N Redis servers with replication, on 127.0.0.1 or across a lab.
///
/// Member 0 starts as the master and every other member as its replica. Every method
/// takes `&self`, so one cluster can be shared between the threads of a test. Dropping the
/// cluster kills every server and removes the directory.
#[derive(Debug)]
pub struct RedisCluster {
    instances: Vec<RedisInstance>,
    /// Where each member runs, index for index with `instances`.
    placements: Vec<Placement>,
    /// The running server of each member, if any: the child this harness spawned, which
    /// it alone signals and reaps.
    servers: Mutex<Vec<Option<Child>>>,
    /// The `redis-server` program.
    server_program: PathBuf,
    /// Declared last so the directory outlives the servers: `Drop` kills them first.
    root: TempDir,
}

/// Where a member runs: what the cluster keeps of the lab so it never needs the lab again.
#[derive(Debug, Clone)]
enum Placement {
    /// On 127.0.0.1 in the root namespace.
    Loopback,
    /// On a lab host, at its address.
    Lab { host: String, namespace: String, ip: Ipv4Addr },
}

impl RedisCluster {
    /// Creates and starts a cluster of `members` servers on 127.0.0.1: member 0 the master,
    /// the others its replicas; returns once every replica's link to the master is up.
    pub fn start(members: usize) -> Result<RedisCluster, HarnessError> {
        if members == 0 {
            return Err(HarnessError::Invalid("a cluster needs at least one member".into()));
        }
        RedisCluster::launch(vec![Placement::Loopback; members], None)
    }

    /// Creates and starts a cluster with member `i` on lab host `hosts[i]`, listening on
    /// that host's lab address at [`LAB_PORT`]; member 0 is the master, the others
    /// replicate from it across the lab network. Returns once every replica's link is up.
    ///
    /// The servers are spawned with [`NetLab::spawn`] inside the hosts' namespaces, so
    /// [`NetLab::cut`], [`NetLab::partition`], [`NetLab::packet_loss`] and
    /// [`NetLab::kill_all`] reach them. The cluster keeps the namespace names it needs, not
    /// the lab, so it may be dropped before or after it; a member restarted with
    /// [`RedisCluster::start_instance`] is spawned the same way (`ip netns exec`) by the
    /// cluster itself, and the lab's `kill_all` and `Drop` still reach it, since they kill
    /// whatever runs in its namespaces.
    pub fn start_in(lab: &NetLab, hosts: &[&str]) -> Result<RedisCluster, HarnessError> {
        if hosts.is_empty() {
            return Err(HarnessError::Invalid("a cluster needs at least one member".into()));
        }
        let lab_hosts = lab.hosts();
        let mut placements = Vec::with_capacity(hosts.len());
        for (index, host) in hosts.iter().enumerate() {
            if !lab_hosts.iter().any(|name| name == host) {
                return Err(HarnessError::Invalid(format!(
                    "no host {host} in the lab (hosts: {})",
                    lab_hosts.join(", ")
                )));
            }
            // Two members on one host would both claim its address and port.
            if hosts[..index].contains(host) {
                return Err(HarnessError::Invalid(format!("host {host} is named twice: one member per host")));
            }
            placements.push(Placement::Lab {
                host: host.to_string(),
                namespace: lab.namespace(host).to_string(),
                ip: lab.ip(host),
            });
        }
        RedisCluster::launch(placements, Some(lab))
    }

    /// Creates the members' directories and configuration files, starts the master, then
    /// the replicas, and waits for every replica's link.
    fn launch(placements: Vec<Placement>, lab: Option<&NetLab>) -> Result<RedisCluster, HarnessError> {
        let members = placements.len();
        let server_program =
            std::env::var_os(SERVER_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER));
        check_server_program(&server_program)?;

        let root = tempfile::Builder::new()
            .prefix("vigil-redis-")
            .tempdir_in("/tmp")
            .map_err(|source| io_error("create the temporary directory under /tmp", source))?;
        let ports = if placements.iter().all(|placement| matches!(placement, Placement::Loopback)) {
            free_ports(members)?
        } else {
            vec![LAB_PORT; members]
        };
        let instances: Vec<RedisInstance> = ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                let name = format!("redis{}", index + 1);
                let dir = root.path().join(&name);
                RedisInstance { name, port: *port, dir }
            })
            .collect();
        for instance in &instances {
            fs::create_dir(&instance.dir)
                .map_err(|source| io_error(&format!("create {}", instance.dir.display()), source))?;
        }

        // From here on, `Drop` kills whatever has started if a later step fails.
        let mut cluster = RedisCluster {
            instances,
            placements,
            servers: Mutex::new((0..members).map(|_| None).collect()),
            server_program,
            root,
        };
        // The master first: its port is final only once it listens, and the replicas'
        // configuration names it.
        for index in 0..members {
            cluster.start_with_port_retries(index, lab)?;
        }
        for replica in 1..members {
            cluster.wait_link_up(replica, LINK_TIMEOUT)?;
        }
        // A replica's link is up before the master counts it: after a diskless sync the
        // master waits for the replica's first acknowledgement. Until then the replica does
        // not count towards `min-replicas-to-write`, which tests rely on.
        cluster.wait_replicas_online(0, members - 1, LINK_TIMEOUT)?;
        Ok(cluster)
    }

    /// The members, in order: index 0 is the original master.
    pub fn instances(&self) -> &[RedisInstance] {
        &self.instances
    }

    /// The temporary directory holding every instance.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Where the member listens: `("127.0.0.1", port)`, or `(lab address, 6379)` for a
    /// member of a lab cluster.
    ///
    /// # Panics
    ///
    /// If `index` names no member.
    pub fn address(&self, index: usize) -> (String, u16) {
        (self.ip(index).to_string(), self.instances[index].port)
    }

    /// The lab host the member runs on; `None` for a loopback cluster or an index that
    /// names no member.
    pub fn host_of(&self, index: usize) -> Option<&str> {
        match self.placements.get(index)? {
            Placement::Loopback => None,
            Placement::Lab { host, .. } => Some(host),
        }
    }

    /// The PID of the member's running server; `None` if it is not running or `index`
    /// names no member.
    pub fn pid(&self, index: usize) -> Option<u32> {
        let mut servers = lock(&self.servers);
        running(servers.get_mut(index)?).map(|child| child.id())
    }

    /// Sends SIGKILL to the member's server (and to any child it forked, such as a
    /// replication sync) and reaps it, like a machine crash.
    pub fn kill(&self, index: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let mut servers = lock(&self.servers);
        let slot = &mut servers[index];
        let child = running(slot).ok_or_else(|| HarnessError::Invalid(format!("{} is not running", instance.name)))?;
        let pid = child_pid(child);
        let forked = children_of(pid);
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|errno| io_error(&format!("send SIGKILL to {} (pid {pid})", instance.name), errno.into()))?;
        kill_forked(&forked);
        child.wait().map_err(|source| io_error(&format!("reap {} (pid {pid})", instance.name), source))?;
        *slot = None;
        Ok(())
    }

    /// Stops the member cleanly (SIGTERM, after SIGCONT in case it is frozen) and waits
    /// for it to exit; after ten seconds it is killed and the error says so.
    pub fn stop(&self, index: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let mut servers = lock(&self.servers);
        let slot = &mut servers[index];
        let child = running(slot).ok_or_else(|| HarnessError::Invalid(format!("{} is not running", instance.name)))?;
        let pid = child_pid(child);
        // A frozen server would never act on the SIGTERM.
        let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        kill(Pid::from_raw(pid), Signal::SIGTERM)
            .map_err(|errno| io_error(&format!("send SIGTERM to {} (pid {pid})", instance.name), errno.into()))?;
        let exited = wait_exit(child, EXIT_TIMEOUT);
        if !exited {
            kill_forked(&children_of(pid));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait();
        }
        *slot = None;
        if exited {
            Ok(())
        } else {
            Err(HarnessError::Timeout {
                what: format!("{} to stop after SIGTERM", instance.name),
                last_seen: format!("still running after {EXIT_TIMEOUT:?}; killed it"),
                log_tail: log_tail(&instance.log_file()),
            })
        }
    }

    /// Starts the member again with its original configuration file, in its namespace for
    /// a lab member, and waits until it answers. A member restarted this way is a replica
    /// of member 0 again (or the master, for member 0) whatever `REPLICAOF` said since,
    /// and holds no data until it has synced: nothing is persisted.
    pub fn start_instance(&self, index: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        {
            let mut servers = lock(&self.servers);
            if running(&mut servers[index]).is_some() {
                return Err(HarnessError::Invalid(format!("{} is already running", instance.name)));
            }
        }
        self.start_server(index, None, None).map_err(StartFailure::into_error)
    }

    /// Starts the member again as a replica of member `master` (`--replicaof` on the command
    /// line, over its configuration file): how an operator brings back a server whose
    /// master may have moved, so it never comes back as a second writable master.
    pub fn start_instance_replica_of(&self, index: usize, master: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        {
            let mut servers = lock(&self.servers);
            if running(&mut servers[index]).is_some() {
                return Err(HarnessError::Invalid(format!("{} is already running", instance.name)));
            }
        }
        let master = self.address(master);
        self.start_server(index, None, Some(master)).map_err(StartFailure::into_error)
    }

    /// Stops (SIGSTOP) the member's server, like a server that hangs: connections are
    /// accepted by the kernel but nothing answers.
    pub fn freeze(&self, index: usize) -> Result<(), HarnessError> {
        self.signal_server(index, Signal::SIGSTOP)
    }

    /// Resumes (SIGCONT) a member stopped by [`RedisCluster::freeze`].
    pub fn thaw(&self, index: usize) -> Result<(), HarnessError> {
        self.signal_server(index, Signal::SIGCONT)
    }

    /// Runs one command on the member, authenticated as the default user with
    /// [`REDIS_PASSWORD`], over a fresh connection, and renders the reply as text: a
    /// status or bulk string as is, an integer in decimal, a nil as the empty string, an
    /// array as its elements one per line. An error reply is a [`HarnessError::Command`].
    /// Connecting and each reply are bounded by a few seconds, so a frozen member fails.
    pub fn command(&self, index: usize, args: &[&str]) -> Result<String, HarnessError> {
        if args.is_empty() {
            return Err(HarnessError::Invalid("a command needs at least its name".into()));
        }
        let instance = self.instance(index)?;
        let failed = |error: io::Error| io_error(&format!("run `{}` on {}", describe(args), instance.name), error);
        let stream = self.connect(index, COMMAND_TIMEOUT).map_err(failed)?;
        match exchange(stream, Some(REDIS_PASSWORD), args, COMMAND_TIMEOUT).map_err(failed)? {
            Reply::Error(message) => Err(HarnessError::Command {
                command: describe(args),
                status: format!("error reply from {}", instance.name),
                stderr: message,
            }),
            reply => Ok(reply.render()),
        }
    }

    /// The member's `INFO replication` section as key/value pairs
    /// (`role`, `master_repl_offset`, `master_link_status`, `slave0`, ...).
    pub fn info_replication(&self, index: usize) -> Result<BTreeMap<String, String>, HarnessError> {
        Ok(parse_info(&self.command(index, &["INFO", "replication"])?))
    }

    /// The member's role as `INFO replication` names it: "master" or "slave".
    pub fn role(&self, index: usize) -> Result<String, HarnessError> {
        let mut info = self.info_replication(index)?;
        info.remove("role").ok_or_else(|| {
            HarnessError::Invalid(format!("INFO replication on {} has no role", self.instances[index].name))
        })
    }

    /// Waits until the member, a replica, reports `master_link_status:up`.
    pub fn wait_link_up(&self, index: usize, timeout: Duration) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let deadline = Instant::now() + timeout;
        loop {
            let last_seen = match self.info_replication(index) {
                Ok(info) if info.get("master_link_status").map(String::as_str) == Some("up") => return Ok(()),
                Ok(info) => format!(
                    "role {}, master link {}",
                    info.get("role").map_or("?", String::as_str),
                    info.get("master_link_status").map_or("(none)", String::as_str)
                ),
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("the master link of {} to come up", instance.name),
                    last_seen,
                    log_tail: log_tail(&instance.log_file()),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until the member, a master, lists `count` replicas, all in state `online`.
    pub fn wait_replicas_online(&self, index: usize, count: usize, timeout: Duration) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let deadline = Instant::now() + timeout;
        loop {
            let last_seen = match self.info_replication(index) {
                Ok(info) => {
                    let states: Vec<String> = info
                        .iter()
                        .filter(|(key, _)| {
                            key.strip_prefix("slave")
                                .is_some_and(|number| !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()))
                        })
                        .map(|(_, value)| {
                            value
                                .split(',')
                                .find_map(|field| field.strip_prefix("state="))
                                .unwrap_or("unknown")
                                .to_string()
                        })
                        .collect();
                    if states.len() == count && states.iter().all(|state| state == "online") {
                        return Ok(());
                    }
                    format!("replica states {states:?}")
                }
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{} to list {count} online replicas", instance.name),
                    last_seen,
                    log_tail: log_tail(&instance.log_file()),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The last lines of the member's log file.
    pub fn log_tail(&self, index: usize) -> Result<String, HarnessError> {
        Ok(log_tail(&self.instance(index)?.log_file()))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let mut servers = lock(&self.servers);
        for slot in servers.iter_mut() {
            let Some(child) = running(slot) else { continue };
            let pid = child_pid(child);
            kill_forked(&children_of(pid));
            // SIGKILL ends a stopped (frozen) process too.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = wait_exit(child, EXIT_TIMEOUT);
            *slot = None;
        }
        // `root` (a TempDir) removes the directory when the fields drop after this.
    }
}

/// Why a start failed, and whether another port could help.
struct StartFailure {
    error: HarnessError,
    port_taken: bool,
}

impl StartFailure {
    fn into_error(self) -> HarnessError {
        self.error
    }
}

impl From<HarnessError> for StartFailure {
    fn from(error: HarnessError) -> Self {
        StartFailure { error, port_taken: false }
    }
}

impl RedisCluster {
    fn instance(&self, index: usize) -> Result<&RedisInstance, HarnessError> {
        self.instances.get(index).ok_or_else(|| {
            HarnessError::Invalid(format!("no member {index}: the cluster has {} members", self.instances.len()))
        })
    }

    fn ip(&self, index: usize) -> Ipv4Addr {
        match &self.placements[index] {
            Placement::Loopback => LOOPBACK,
            Placement::Lab { ip, .. } => *ip,
        }
    }

    /// Writes member `index`'s configuration and starts it; if its port was taken
    /// meanwhile (ports are picked before they are bound), picks another and tries again.
    fn start_with_port_retries(&mut self, index: usize, lab: Option<&NetLab>) -> Result<(), HarnessError> {
        let mut attempt = 1;
        loop {
            self.write_config(index)?;
            let failure = match self.start_server(index, lab, None) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            // A lab member owns its address and port alone: another port would not help.
            let on_loopback = matches!(self.placements[index], Placement::Loopback);
            if !failure.port_taken || !on_loopback || attempt >= PORT_ATTEMPTS {
                return Err(failure.error);
            }
            attempt += 1;
            self.instances[index].port = free_ports(1)?[0];
        }
    }

    /// Writes member `index`'s `redis.conf`: a replica names member 0's current address.
    fn write_config(&self, index: usize) -> Result<(), HarnessError> {
        let instance = &self.instances[index];
        let mut text = format!(
            "# Written by the vigil test harness.\n\
             bind {ip}\n\
             port {port}\n\
             dir {dir}\n\
             logfile {log}\n\
             daemonize no\n\
             protected-mode no\n\
             save \"\"\n\
             appendonly no\n\
             requirepass {password}\n\
             masterauth {password}\n\
             # Replicas sync straight from the master's memory, at once, so a fresh or\n\
             # re-pointed replica is up in milliseconds.\n\
             repl-diskless-sync yes\n\
             repl-diskless-sync-delay 0\n\
             # A ping every second and a 5 s timeout make a dead link show in\n\
             # master_link_status within seconds rather than a minute.\n\
             repl-ping-replica-period 1\n\
             repl-timeout 5\n",
            ip = self.ip(index),
            port = instance.port,
            dir = config_quote(&instance.dir.display().to_string()),
            log = config_quote(&instance.log_file().display().to_string()),
            password = config_quote(REDIS_PASSWORD),
        );
        if index > 0 {
            let (master_host, master_port) = self.address(0);
            text.push_str(&format!("replicaof {master_host} {master_port}\n"));
        }
        let path = instance.config_file();
        fs::write(&path, text).map_err(|source| io_error(&format!("write {}", path.display()), source))
    }

    /// Spawns member `index`'s server (through the lab when one is given, for a lab member)
    /// and waits until it answers as itself: `INFO server` must name the spawned PID, so a
    /// stranger that took the port never passes for our server.
    fn start_server(
        &self,
        index: usize,
        lab: Option<&NetLab>,
        replica_of: Option<(String, u16)>,
    ) -> Result<(), StartFailure> {
        let instance = &self.instances[index];
        let config = instance.config_file();
        let mut command = match (&self.placements[index], lab) {
            (Placement::Loopback, _) => Command::new(&self.server_program),
            (Placement::Lab { host, .. }, Some(lab)) => lab.command(host, &self.server_program),
            (Placement::Lab { namespace, .. }, None) => {
                // The same command `NetLab::command` makes, for restarts after the lab
                // was handed back.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(&self.server_program);
                command
            }
        };
        command.arg(&config).current_dir(&instance.dir).stdin(Stdio::null()).stdout(Stdio::null());
        if let Some((host, port)) = &replica_of {
            command.args(["--replicaof", host, &port.to_string()]);
        }
        // Configuration errors go to stderr before the log file is open; once it is, the
        // server writes nothing there, so an unread pipe never fills up.
        command.stderr(Stdio::piped());
        let described = format!("{} {}", self.server_program.display(), config.display());
        let child = match (&self.placements[index], lab) {
            (Placement::Lab { host, .. }, Some(lab)) => lab.spawn(host, command)?,
            _ => command.spawn().map_err(|source| io_error(&format!("spawn `{described}`"), source))?,
        };
        let pid = child.id();
        {
            let mut servers = lock(&self.servers);
            servers[index] = Some(child);
        }

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = {
                let mut servers = lock(&self.servers);
                match servers[index].as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        let stderr = servers[index].take().and_then(|mut child| child.stderr.take()).map(read_all);
                        Some((status.to_string(), stderr.unwrap_or_default()))
                    }
                    Some(Ok(None)) => None,
                    Some(Err(source)) => return Err(io_error(&format!("wait for `{described}`"), source).into()),
                    None => Some(("gone".to_string(), String::new())),
                }
            };
            if let Some((status, stderr)) = exited {
                let log_tail = log_tail(&instance.log_file());
                let port_taken = log_tail.contains("Address already in use");
                let error = HarnessError::Start {
                    instance: instance.name.clone(),
                    command: described,
                    stderr: format!("exited ({status}): {}", stderr.trim()),
                    log_tail,
                };
                return Err(StartFailure { error, port_taken });
            }
            let last_seen = match self.command(index, &["INFO", "server"]) {
                Ok(info) => match parse_info(&info).get("process_id") {
                    Some(answered) if *answered == pid.to_string() => return Ok(()),
                    answered => format!("a server with process_id {answered:?} answers, not pid {pid}"),
                },
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                let error = HarnessError::Start {
                    instance: instance.name.clone(),
                    command: described,
                    stderr: format!("no answer within {START_TIMEOUT:?}: {last_seen}"),
                    log_tail: log_tail(&instance.log_file()),
                };
                // Leave nothing half-started behind: a retry would start another.
                let mut servers = lock(&self.servers);
                if let Some(mut child) = servers[index].take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(error.into());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends `signal` to the member's server.
    fn signal_server(&self, index: usize, signal: Signal) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let mut servers = lock(&self.servers);
        let child = running(&mut servers[index])
            .ok_or_else(|| HarnessError::Invalid(format!("{} is not running", instance.name)))?;
        let pid = child_pid(child);
        kill(Pid::from_raw(pid), signal)
            .map_err(|errno| io_error(&format!("send {signal} to {} (pid {pid})", instance.name), errno.into()))
    }

    /// A TCP connection to the member, opened inside its namespace for a lab member.
    fn connect(&self, index: usize, timeout: Duration) -> io::Result<TcpStream> {
        let address = SocketAddr::new(IpAddr::V4(self.ip(index)), self.instances[index].port);
        match &self.placements[index] {
            Placement::Loopback => TcpStream::connect_timeout(&address, timeout),
            Placement::Lab { namespace, .. } => {
                in_namespace(namespace, move || TcpStream::connect_timeout(&address, timeout))
            }
        }
    }
}

/// Fails early, with a hint, when the server program cannot be run at all.
fn check_server_program(program: &Path) -> Result<(), HarnessError> {
    match Command::new(program).arg("--version").stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(HarnessError::Environment(format!(
            "`{} --version` failed ({}): {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
        Err(error) => Err(HarnessError::Environment(format!(
            "cannot run {} ({error}): install Debian's redis-server, or set {SERVER_ENV}",
            program.display()
        ))),
    }
}

/// The child, if it is still running; a child that has exited is reaped and forgotten.
fn running(slot: &mut Option<Child>) -> Option<&mut Child> {
    let exited = match slot.as_mut()?.try_wait() {
        Ok(None) => false,
        // Either it exited (now reaped) or it cannot be waited for: not ours to run.
        Ok(Some(_)) | Err(_) => true,
    };
    if exited {
        *slot = None;
    }
    slot.as_mut()
}

fn child_pid(child: &Child) -> i32 {
    // PIDs fit an i32 on Linux (pid_max is at most 2^22).
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

/// Polls until the child exits (and is reaped) or `timeout` passes; true if it exited.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Kills the children a server forked (a diskless sync, a background save), which would
/// otherwise outlive it for a moment and hold its files.
fn kill_forked(pids: &[i32]) {
    for pid in pids {
        // A child may exit between listing and signalling: nothing to do then.
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}

/// The PIDs whose parent is `pid`: only a server's own forks, never anyone else's.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|candidate| {
            fs::read_to_string(format!("/proc/{candidate}/stat")).ok().and_then(|stat| parent_pid(&stat)) == Some(pid)
        })
        .collect()
}

/// The parent PID of a `/proc/<pid>/stat` line; the command name before it may hold
/// spaces and parentheses, so the fields are counted after the last `)`.
fn parent_pid(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `work` on a new thread that has joined the network namespace `namespace`; a socket
/// it opens stays in that namespace and may be used from any thread afterwards.
fn in_namespace<T, F>(namespace: &str, work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send,
    T: Send,
{
    let file = fs::File::open(Path::new(NETNS_DIR).join(namespace))?;
    let outcome = thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                work()
            })
            .join()
    });
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// One reply of the RESP protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    fn render(&self) -> String {
        match self {
            Reply::Status(text) | Reply::Error(text) => text.clone(),
            Reply::Integer(number) => number.to_string(),
            Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Reply::Bulk(None) | Reply::Array(None) => String::new(),
            Reply::Array(Some(items)) => items.iter().map(Reply::render).collect::<Vec<_>>().join("\n"),
        }
    }
}

/// Sends `AUTH password` (if any) and the command in one write, and returns the command's
/// reply; a refused `AUTH` comes back as an error reply.
fn exchange(stream: TcpStream, password: Option<&str>, args: &[&str], timeout: Duration) -> io::Result<Reply> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut request = Vec::new();
    if let Some(password) = password {
        request.extend(encode(&["AUTH", password]));
    }
    request.extend(encode(args));
    (&stream).write_all(&request)?;
    let mut reader = BufReader::new(&stream);
    if password.is_some()
        && let Reply::Error(message) = read_reply(&mut reader)?
    {
        return Ok(Reply::Error(format!("AUTH refused: {message}")));
    }
    read_reply(&mut reader)
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut bytes = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        bytes.extend(format!("${}\r\n", arg.len()).into_bytes());
        bytes.extend(arg.as_bytes());
        bytes.extend(b"\r\n");
    }
    bytes
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply line {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(invalid)?;
    let length = || rest.parse::<i64>().map_err(|_| invalid());
    match kind {
        "+" => Ok(Reply::Status(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Integer(length()?)),
        "$" => match usize::try_from(length()?) {
            Err(_) => Ok(Reply::Bulk(None)),
            Ok(size) => {
                let mut bytes = vec![0; size + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(size);
                Ok(Reply::Bulk(Some(bytes)))
            }
        },
        "*" => match usize::try_from(length()?) {
            Err(_) => Ok(Reply::Array(None)),
            Ok(count) => {
                (0..count).map(|_| read_reply(reader)).collect::<io::Result<Vec<_>>>().map(Some).map(Reply::Array)
            }
        },
        _ => Err(invalid()),
    }
}

/// A command line for messages, with the password redacted wherever it appears.
fn describe(args: &[&str]) -> String {
    let is_auth = args.first().is_some_and(|name| name.eq_ignore_ascii_case("AUTH"));
    args.iter()
        .enumerate()
        .map(|(position, arg)| if *arg == REDIS_PASSWORD || (is_auth && position > 0) { "<redacted>" } else { *arg })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `key:value` lines of an `INFO` answer; section headers and blank lines are skipped.
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Quotes a value for `redis.conf`, which reads double-quoted strings with C escapes.
fn config_quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

fn read_all(mut pipe: impl io::Read) -> String {
    let mut text = String::new();
    let _ = pipe.read_to_string(&mut text);
    text
}

fn io_error(action: &str, source: io::Error) -> HarnessError {
    HarnessError::Io { action: action.to_string(), source }
}

/// Ports the kernel says are free, all bound at once so that they differ from each other.
fn free_ports(count: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((LOOPBACK, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| io_error("bind 127.0.0.1:0 to find a free port", source))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| io_error("read the address of a bound port", source))
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, or a note saying why there are none.
fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(error) => format!("(no log at {}: {error})", path.display()),
    }
}

/// Locks a mutex, also after a panic elsewhere poisoned it: the bookkeeping stays
/// consistent between statements, and `Drop` must clean up after panicking tests.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_and_rendered() {
        let mut input: &[u8] = b"+OK\r\n-ERR no\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*2\r\n$1\r\na\r\n:7\r\n*-1\r\n";
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Status("OK".into()));
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Error("ERR no".into()));
        assert_eq!(read_reply(&mut input).unwrap().render(), "42");
        assert_eq!(read_reply(&mut input).unwrap().render(), "hello");
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Bulk(None));
        assert_eq!(read_reply(&mut input).unwrap().render(), "a\n7");
        assert_eq!(read_reply(&mut input).unwrap(), Reply::Array(None));
        assert!(read_reply(&mut input).is_err(), "the input is used up");
    }

    #[test]
    fn commands_are_encoded_as_bulk_string_arrays() {
        assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn described_commands_redact_the_password() {
        assert_eq!(describe(&["AUTH", "someone", "else"]), "AUTH <redacted> <redacted>");
        assert_eq!(describe(&["CONFIG", "SET", "masterauth", REDIS_PASSWORD]), "CONFIG SET masterauth <redacted>");
        assert_eq!(describe(&["GET", "k"]), "GET k");
    }

    #[test]
    fn info_lines_become_pairs() {
        let info = parse_info("# Replication\r\nrole:master\r\nslave0:ip=127.0.0.1,port=1,state=online\r\n\r\n");
        assert_eq!(info.get("role").map(String::as_str), Some("master"));
        assert_eq!(info.get("slave0").map(String::as_str), Some("ip=127.0.0.1,port=1,state=online"));
        assert_eq!(info.len(), 2);
    }

    #[test]
    fn config_values_are_quoted() {
        assert_eq!(config_quote("/tmp/a \"b\""), "\"/tmp/a \\\"b\\\"\"");
    }
}
