//! A throwaway PostgreSQL 15 cluster for tests: member 0 is the primary, the others
//! stream from it, inside one temporary directory; either all on 127.0.0.1 with free ports
//! ([`PgCluster::start`]), or each member on its own host of a [`NetLab`], listening on
//! that host's lab address at port 5432 and streaming across the lab network
//! ([`PgCluster::start_in`]), so the lab's faults reach replication and clients.
//!
//! The layout under [`PgCluster::root`] is one instance directory per member
//! (`pg1/`, `pg2/`, ...) holding the Unix socket, the server log (`pg1/pg1.log`) and the
//! data directory (`pg1/data`). PostgreSQL refuses to run as root, so when the tests run
//! as root every PostgreSQL tool runs as the `postgres` user through `runuser`, and the
//! directory belongs to that user.
//!
//! In a lab, every tool that starts a server or talks to one over the network runs inside
//! the member's namespace (`ip netns exec NS runuser -u postgres -- ...`). Stopping only
//! signals the PID in `postmaster.pid`, so `stop` and `Drop` need no namespace: a cluster
//! may be dropped before or after its lab (dropping the lab first kills the servers).
//!
//! Invariant: the harness only signals postmasters named in its own `postmaster.pid`
//! files, and dropping a [`PgCluster`] stops all of them and removes the directory.

// The harness is synchronous so that plain `#[test]`s can use it, and its waits measure
// real elapsed time while real servers start: tokio's clock (paused or not) is neither
// available nor wanted here, so std's `Instant` is the right clock.
#![allow(clippy::disallowed_types)]

use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};
use tempfile::TempDir;

pub use crate::HarnessError;
use crate::netns::NetLab;

/// The superuser role tests and vigil log in as over TCP.
pub const VIGIL_USER: &str = "vigil";
/// The password of [`VIGIL_USER`].
pub const VIGIL_PASSWORD: &str = "vigil-secret";
/// The role replicas stream with.
pub const REPLICATION_USER: &str = "replicator";
/// The password of [`REPLICATION_USER`].
pub const REPLICATION_PASSWORD: &str = "replication-secret";

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Environment variable that overrides [`DEFAULT_BIN_DIR`], for machines laid out otherwise.
pub const BIN_DIR_ENV: &str = "VIGIL_PG_BIN_DIR";

/// The OS user PostgreSQL runs as when the tests run as root.
const POSTGRES_OS_USER: &str = "postgres";
/// The bootstrap superuser, reachable only through the Unix socket (trust).
const BOOTSTRAP_SUPERUSER: &str = "postgres";
/// How long `pg_ctl` may wait for a server to start or stop.
const PG_CTL_WAIT_SECONDS: u32 = 30;
/// How long `start` waits for each replica to stream.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `kill_postmaster` and `Drop` wait for killed processes to go away.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the harness waits for init to reap a killed postmaster.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many lines of server log an error carries.
const LOG_TAIL_LINES: usize = 40;
/// How many times a server start is retried on a fresh port when its port was taken.
const PORT_ATTEMPTS: usize = 3;
/// The port every member of a lab cluster listens on: each has a network stack of its own.
pub const LAB_PORT: u16 = 5432;
/// The loopback address members of a loopback cluster listen on.
const LOOPBACK: &str = "127.0.0.1";

/// One PostgreSQL server of a [`PgCluster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInstance {
    /// The member's name: "pg1" for member 0, "pg2" for member 1, and so on.
    pub name: String,
    /// The TCP port it listens on: a free port at 127.0.0.1, or [`LAB_PORT`] at its lab
    /// host's address (see [`PgCluster::address`]).
    pub port: u16,
    /// Its data directory (`<root>/<name>/data`).
    pub data_dir: PathBuf,
}

impl PgInstance {
    /// The directory holding the data directory, the Unix socket and the server log.
    pub fn instance_dir(&self) -> &Path {
        self.data_dir.parent().unwrap_or(&self.data_dir)
    }

    /// The server log the harness starts the server with (`<root>/<name>/<name>.log`).
    pub fn log_file(&self) -> PathBuf {
        self.instance_dir().join(format!("{}.log", self.name))
    }
}

/// N PostgreSQL 15 servers with streaming replication, on 127.0.0.1 or across a lab.
///
/// Member 0 starts as the primary and every other member as a streaming replica of it
/// (`application_name` = its name). Dropping the cluster stops every server and removes
/// the directory.
#[derive(Debug)]
pub struct PgCluster {
    /// Declared before `root` so the servers are described while the directory exists;
    /// `Drop` stops them before the fields (and so the directory) go away.
    instances: Vec<PgInstance>,
    /// Where each member runs, index for index with `instances`.
    placements: Vec<Placement>,
    bin_dir: PathBuf,
    /// Whether tools run as the `postgres` OS user through `runuser` (we are root).
    run_as_postgres: bool,
    /// TLS the servers require of every TCP client, if any.
    tls: Option<PgServerTls>,
    root: TempDir,
}

/// TLS for the servers (PEM): with it, `pg_hba.conf` admits TCP clients over TLS only
/// (`hostssl`). The files go to `<root>/tls/` (see [`PgCluster::tls_dir`]), where the
/// servers and the tools, running as `postgres`, read them.
#[derive(Clone, Debug)]
pub struct PgServerTls {
    /// The CA that signed the servers' certificate.
    pub ca_pem: String,
    /// The servers' certificate (every member uses the same, naming 127.0.0.1).
    pub cert_pem: String,
    /// Its key.
    pub key_pem: String,
}

/// Where a member runs: what the cluster keeps of the lab so it never needs the lab again.
#[derive(Debug, Clone)]
enum Placement {
    /// On 127.0.0.1 in the root namespace.
    Loopback,
    /// On a lab host, at its address.
    Lab {
        host: String,
        namespace: String,
        ip: Ipv4Addr,
        /// The lab's subnet, which `pg_hba.conf` admits.
        subnet: (Ipv4Addr, u8),
    },
}

impl PgCluster {
    /// Creates and starts a cluster of `members` servers on 127.0.0.1: member 0 a primary,
    /// the others streaming replicas; returns once every replica streams.
    pub fn start(members: usize) -> Result<PgCluster, HarnessError> {
        if members == 0 {
            return Err(HarnessError::Invalid("a cluster needs at least one member".into()));
        }
        PgCluster::launch(vec![Placement::Loopback; members], None)
    }

    /// Like [`PgCluster::start`], the servers requiring TLS of every TCP client.
    pub fn start_with_tls(members: usize, tls: PgServerTls) -> Result<PgCluster, HarnessError> {
        if members == 0 {
            return Err(HarnessError::Invalid("a cluster needs at least one member".into()));
        }
        PgCluster::launch(vec![Placement::Loopback; members], Some(tls))
    }

    /// Where the TLS files are: `ca.crt`, `server.crt`, `server.key`.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.path().join("tls")
    }

    /// Creates and starts a cluster with member `i` on lab host `hosts[i]`, listening on
    /// that host's lab address at [`LAB_PORT`]; member 0 is the primary, the others stream
    /// from it across the lab network. Returns once every replica streams.
    ///
    /// `pg_hba.conf` admits the lab's subnet (scram-sha-256, for [`VIGIL_USER`] and
    /// replication) besides the local socket (trust). The servers run in the hosts'
    /// namespaces, so [`NetLab::cut`], [`NetLab::partition`], [`NetLab::packet_loss`] and
    /// [`NetLab::kill_all`] reach them. The cluster keeps the namespace names it needs, so
    /// it does not borrow the lab and may be dropped before or after it.
    pub fn start_in(lab: &NetLab, hosts: &[&str]) -> Result<PgCluster, HarnessError> {
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
                subnet: lab.subnet(),
            });
        }
        PgCluster::launch(placements, None)
    }

    /// Creates the directories of the members placed as given, then starts the primary and
    /// clones the replicas.
    fn launch(placements: Vec<Placement>, tls: Option<PgServerTls>) -> Result<PgCluster, HarnessError> {
        let members = placements.len();
        let bin_dir =
            std::env::var_os(BIN_DIR_ENV).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        if !bin_dir.join("postgres").exists() {
            return Err(HarnessError::Environment(format!(
                "no postgres binary in {} (set {BIN_DIR_ENV} to the PostgreSQL 15 bin directory)",
                bin_dir.display()
            )));
        }
        let run_as_postgres = geteuid().is_root();
        let owner = if run_as_postgres { Some(postgres_owner()?) } else { None };

        let root = tempfile::Builder::new()
            .prefix("vigil-pg-")
            .tempdir_in("/tmp")
            .map_err(|source| io_error("create the temporary directory under /tmp", source))?;
        prepare_dir(root.path(), owner)?;

        let ports = if placements.iter().all(|placement| matches!(placement, Placement::Loopback)) {
            free_ports(members)?
        } else {
            vec![LAB_PORT; members]
        };
        let instances: Vec<PgInstance> = ports
            .iter()
            .enumerate()
            .map(|(index, port)| {
                let name = format!("pg{}", index + 1);
                let data_dir = root.path().join(&name).join("data");
                PgInstance { name, port: *port, data_dir }
            })
            .collect();
        for instance in &instances {
            let dir = instance.instance_dir();
            fs::create_dir(dir).map_err(|source| io_error(&format!("create {}", dir.display()), source))?;
            prepare_dir(dir, owner)?;
        }

        // From here on, `Drop` cleans up whatever has started if a later step fails.
        if let Some(tls) = &tls {
            let dir = root.path().join("tls");
            fs::create_dir(&dir).map_err(|source| io_error(&format!("create {}", dir.display()), source))?;
            prepare_dir(&dir, owner)?;
            for (name, text) in [("ca.crt", &tls.ca_pem), ("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)] {
                let path = dir.join(name);
                fs::write(&path, text).map_err(|source| io_error(&format!("write {}", path.display()), source))?;
                // PostgreSQL refuses a key others may read.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(|source| io_error(&format!("chmod {}", path.display()), source))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|source| io_error(&format!("chown {}", path.display()), source))?;
                }
            }
        }
        let mut cluster = PgCluster { instances, placements, bin_dir, run_as_postgres, tls, root };
        cluster.init_primary()?;
        for replica in 1..members {
            cluster.clone_replica(replica)?;
        }
        for replica in 1..members {
            cluster.wait_streaming(replica, STREAMING_TIMEOUT)?;
        }
        Ok(cluster)
    }

    /// The members, in order: index 0 is the original primary.
    pub fn instances(&self) -> &[PgInstance] {
        &self.instances
    }

    /// The directory holding the PostgreSQL binaries (`/usr/lib/postgresql/15/bin`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The temporary directory holding every instance.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The OS user PostgreSQL tools must run as, if the tests run as root.
    pub fn run_as(&self) -> Option<&'static str> {
        self.run_as_postgres.then_some(POSTGRES_OS_USER)
    }

    /// Sends SIGKILL to the member's postmaster (PID from its `postmaster.pid`) and waits
    /// until it and its children are gone, like a machine losing the process.
    pub fn kill_postmaster(&self, index: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let Some(pid) = self.postmaster_pid(index)? else {
            return Err(HarnessError::Invalid(format!("{} has no postmaster.pid: it is not running", instance.name)));
        };
        if !process_alive(pid) {
            return Err(HarnessError::Invalid(format!("{}'s postmaster (pid {pid}) is not running", instance.name)));
        }
        // Children are collected before the kill: afterwards they are re-parented and
        // can no longer be told apart from anyone else's processes.
        let children = children_of(pid);
        kill(Pid::from_raw(pid), Signal::SIGKILL)
            .map_err(|errno| io_error(&format!("kill {}'s postmaster (pid {pid})", instance.name), errno.into()))?;
        let mut pids = children;
        pids.push(pid);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while pids.iter().any(|pid| process_alive(*pid)) {
            if Instant::now() >= deadline {
                let alive: Vec<i32> = pids.into_iter().filter(|pid| process_alive(*pid)).collect();
                return Err(HarnessError::Timeout {
                    what: format!("{}'s killed postmaster and its children to exit", instance.name),
                    last_seen: format!("still running: {alive:?}"),
                    log_tail: log_tail(&instance.log_file()),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The dead postmaster stays a zombie until init reaps it, and until then a new
        // postmaster mistakes the stale pid file for a running server; waiting here lets
        // the member be restarted right away. Best effort: some inits never reap.
        wait_reaped(pid, REAP_TIMEOUT);
        Ok(())
    }

    /// Stops (SIGSTOP) the member's postmaster and all its children, like a server that
    /// hangs: connections are accepted by the kernel but nothing answers.
    pub fn freeze(&self, index: usize) -> Result<(), HarnessError> {
        self.signal_server(index, Signal::SIGSTOP)
    }

    /// Resumes (SIGCONT) a member stopped by [`PgCluster::freeze`].
    pub fn thaw(&self, index: usize) -> Result<(), HarnessError> {
        self.signal_server(index, Signal::SIGCONT)
    }

    /// Stops the member cleanly (`pg_ctl stop -m fast`).
    pub fn stop(&self, index: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let command = self
            .tool("pg_ctl")
            .arg("stop")
            .arg("-D")
            .path(&instance.data_dir)
            .args(["-m", "fast", "-w", "-t"])
            .arg(PG_CTL_WAIT_SECONDS.to_string());
        self.run(&command).map(drop)
    }

    /// Starts the member again (`pg_ctl start -w`), logging to its usual log file.
    pub fn start_instance(&self, index: usize) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        if let Some(pid) = read_postmaster_pid(&instance.data_dir) {
            // See `kill_postmaster`: a killed postmaster must be reaped before a new one
            // will believe it is gone.
            if !process_alive(pid) {
                wait_reaped(pid, REAP_TIMEOUT);
            }
        }
        let command = self.start_command(index);
        match self.run(&command) {
            Ok(_) => Ok(()),
            Err(error) => Err(self.start_error(instance, &command, error)),
        }
    }

    /// Runs `sql` with `psql -At` as [`VIGIL_USER`] over TCP and returns its trimmed
    /// standard output (the last statement's rows, one per line, columns joined by `|`).
    pub fn sql(&self, index: usize, sql: &str) -> Result<String, HarnessError> {
        self.instance(index)?;
        let (host, port) = self.address(index);
        let command = self
            .member_tool(index, "psql")
            .secret_env("PGPASSWORD", VIGIL_PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(host)
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", VIGIL_USER, "-d", "postgres", "-c", sql]);
        let output = self.run(&command)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Whether the member is a replica (`pg_is_in_recovery()`).
    pub fn is_in_recovery(&self, index: usize) -> Result<bool, HarnessError> {
        match self.sql(index, "SELECT pg_is_in_recovery()")?.as_str() {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(HarnessError::Invalid(format!(
                "pg_is_in_recovery() on {} answered {other:?}",
                self.instances[index].name
            ))),
        }
    }

    /// Waits until the member's WAL receiver reports `streaming` in `pg_stat_wal_receiver`.
    pub fn wait_streaming(&self, replica: usize, timeout: Duration) -> Result<(), HarnessError> {
        let instance = self.instance(replica)?;
        let deadline = Instant::now() + timeout;
        loop {
            let last_seen = match self.sql(replica, "SELECT status FROM pg_stat_wal_receiver") {
                Ok(status) if status == "streaming" => return Ok(()),
                Ok(status) if status.is_empty() => "no wal receiver".to_string(),
                Ok(status) => format!("wal receiver status {status:?}"),
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{} to stream", instance.name),
                    last_seen,
                    log_tail: self.current_log_tail(instance),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A libpq keyword/value connection string for the member as [`VIGIL_USER`] over TCP,
    /// at its [`PgCluster::address`] (usable only from inside the lab for a lab cluster).
    ///
    /// # Panics
    ///
    /// If `index` names no member.
    pub fn connection_string(&self, index: usize) -> String {
        let (host, port) = self.address(index);
        format!("host={host} port={port} user={VIGIL_USER} password={VIGIL_PASSWORD} dbname=postgres")
    }

    /// Where the member listens: `("127.0.0.1", port)`, or `(lab address, 5432)` for a
    /// member of a lab cluster.
    ///
    /// # Panics
    ///
    /// If `index` names no member.
    pub fn address(&self, index: usize) -> (String, u16) {
        let port = self.instances[index].port;
        match &self.placements[index] {
            Placement::Loopback => (LOOPBACK.to_string(), port),
            Placement::Lab { ip, .. } => (ip.to_string(), port),
        }
    }

    /// The lab host the member runs on; `None` for a loopback cluster or an index that
    /// names no member.
    pub fn host_of(&self, index: usize) -> Option<&str> {
        match self.placements.get(index)? {
            Placement::Loopback => None,
            Placement::Lab { host, .. } => Some(host),
        }
    }

    /// The PID in the member's `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self, index: usize) -> Result<Option<i32>, HarnessError> {
        let instance = self.instance(index)?;
        Ok(read_postmaster_pid(&instance.data_dir))
    }

    /// The last lines of the member's harness log file.
    pub fn log_tail(&self, index: usize) -> Result<String, HarnessError> {
        Ok(log_tail(&self.instance(index)?.log_file()))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for instance in &self.instances {
            let Some(pid) = read_postmaster_pid(&instance.data_dir) else { continue };
            // A dead postmaster (killed by a test) leaves a stale pid file behind; asking
            // pg_ctl to stop it would only wait for that file to vanish.
            if !process_alive(pid) {
                continue;
            }
            let children = children_of(pid);
            // A frozen server would never act on the stop request.
            for target in std::iter::once(pid).chain(children.iter().copied()) {
                let _ = kill(Pid::from_raw(target), Signal::SIGCONT);
            }
            let command = self.tool("pg_ctl").arg("stop").arg("-D").path(&instance.data_dir).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "10",
            ]);
            let _ = self.run(&command);
            // If pg_ctl could not stop it, the pid file still names our own postmaster,
            // the only process this harness may kill.
            if process_alive(pid) && is_postgres_process(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let deadline = Instant::now() + EXIT_TIMEOUT;
            while (process_alive(pid) || children.iter().any(|child| process_alive(*child)))
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(20));
            }
        }
        // `root` (a TempDir) removes the directory when the fields drop after this.
    }
}

impl PgCluster {
    /// Sends `signal` to the member's postmaster and to each of its children.
    fn signal_server(&self, index: usize, signal: Signal) -> Result<(), HarnessError> {
        let instance = self.instance(index)?;
        let pid = read_postmaster_pid(&instance.data_dir)
            .filter(|pid| process_alive(*pid))
            .ok_or_else(|| HarnessError::Invalid(format!("{} is not running", instance.name)))?;
        let describe = |target: i32, errno: nix::errno::Errno| {
            io_error(&format!("send {signal} to {} (pid {target})", instance.name), errno.into())
        };
        kill(Pid::from_raw(pid), signal).map_err(|errno| describe(pid, errno))?;
        for child in children_of(pid) {
            match kill(Pid::from_raw(child), signal) {
                // A backend may exit between listing and signalling: nothing to do.
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => return Err(describe(child, errno)),
            }
        }
        Ok(())
    }

    fn instance(&self, index: usize) -> Result<&PgInstance, HarnessError> {
        self.instances.get(index).ok_or_else(|| {
            HarnessError::Invalid(format!("no member {index}: the cluster has {} members", self.instances.len()))
        })
    }

    /// Initializes, configures and starts member 0 as the primary, and creates the roles.
    fn init_primary(&mut self) -> Result<(), HarnessError> {
        let instance = self.instances[0].clone();
        let (listen_address, _) = self.address(0);
        let initdb = self
            .tool("initdb")
            .arg("-D")
            .path(&instance.data_dir)
            .args(["-U", BOOTSTRAP_SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        self.run(&initdb)?;

        let settings = [
            format!("listen_addresses = '{listen_address}'"),
            format!("port = {}", instance.port),
            format!("unix_socket_directories = '{}'", conf_quote(instance.instance_dir().display())),
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "hot_standby = on".into(),
            "wal_log_hints = on".into(),
            "wal_keep_size = '256MB'".into(),
            "fsync = on".into(),
            "shared_buffers = '32MB'".into(),
            "logging_collector = off".into(),
            // Re-pointed replicas retry their new upstream after this long; the 5 s
            // default would only slow the tests down.
            "wal_retrieve_retry_interval = '500ms'".into(),
        ];
        append_conf(&instance.data_dir.join("postgresql.conf"), &settings)?;
        let host = if self.tls.is_some() {
            let dir = self.tls_dir();
            append_conf(
                &instance.data_dir.join("postgresql.conf"),
                &[
                    "ssl = on".to_string(),
                    format!("ssl_cert_file = '{}'", conf_quote(dir.join("server.crt").display())),
                    format!("ssl_key_file = '{}'", conf_quote(dir.join("server.key").display())),
                ],
            )?;
            "hostssl"
        } else {
            "host"
        };
        let mut hba = format!(
            "# Written by the vigil test harness.\n\
             local all all trust\n\
             {host} all all 127.0.0.1/32 scram-sha-256\n\
             {host} replication all 127.0.0.1/32 scram-sha-256\n"
        );
        if let Placement::Lab { subnet: (network, prefix), .. } = &self.placements[0] {
            hba.push_str(&format!(
                "host all all {network}/{prefix} scram-sha-256\n\
                 host replication all {network}/{prefix} scram-sha-256\n"
            ));
        }
        let hba_path = instance.data_dir.join("pg_hba.conf");
        fs::write(&hba_path, hba).map_err(|source| io_error(&format!("write {}", hba_path.display()), source))?;

        self.start_with_port_retries(0)?;

        let instance = &self.instances[0];
        let create_roles = format!(
            "CREATE ROLE {VIGIL_USER} SUPERUSER LOGIN PASSWORD '{}'; \
             CREATE ROLE {REPLICATION_USER} REPLICATION LOGIN PASSWORD '{}';",
            sql_quote(VIGIL_PASSWORD),
            sql_quote(REPLICATION_PASSWORD)
        );
        let psql = self
            .member_tool(0, "psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .path(instance.instance_dir())
            .arg("-p")
            .arg(instance.port.to_string())
            .args(["-U", BOOTSTRAP_SUPERUSER, "-d", "postgres", "-c"])
            .arg(create_roles);
        self.run(&psql).map(drop)
    }

    /// Clones member `index` from the primary with `pg_basebackup -R` and starts it.
    fn clone_replica(&mut self, index: usize) -> Result<(), HarnessError> {
        let (primary_host, primary_port) = self.address(0);
        let (listen_address, _) = self.address(index);
        let instance = self.instances[index].clone();
        let basebackup = self
            .member_tool(index, "pg_basebackup")
            .secret_env("PGPASSWORD", REPLICATION_PASSWORD)
            .arg("-h")
            .arg(primary_host.clone())
            .arg("-p")
            .arg(primary_port.to_string())
            .args(["-U", REPLICATION_USER, "-D"])
            .path(&instance.data_dir)
            // A fast checkpoint and no fsync of the copy keep cluster start-up quick;
            // the copy survives anything short of a machine crash, which tests never do.
            .args(["-X", "stream", "-R", "--checkpoint=fast", "--no-sync"]);
        let basebackup = if self.tls.is_some() { basebackup.env("PGSSLMODE", "require") } else { basebackup };
        self.run(&basebackup)?;

        // The copied configuration names the primary's address; each member listens on
        // its own.
        let settings = [
            format!("listen_addresses = '{listen_address}'"),
            format!("port = {}", instance.port),
            format!("unix_socket_directories = '{}'", conf_quote(instance.instance_dir().display())),
        ];
        append_conf(&instance.data_dir.join("postgresql.conf"), &settings)?;
        let conninfo = format!(
            "host={primary_host} port={primary_port} user={REPLICATION_USER} \
             password={REPLICATION_PASSWORD} application_name={}{}",
            instance.name,
            if self.tls.is_some() { " sslmode=require" } else { "" }
        );
        set_primary_conninfo(&instance.data_dir.join("postgresql.auto.conf"), &conninfo)?;
        self.start_with_port_retries(index)
    }

    /// Starts member `index`; if its port was taken meanwhile (ports are picked before
    /// they are bound), picks another and tries again.
    fn start_with_port_retries(&mut self, index: usize) -> Result<(), HarnessError> {
        let mut attempt = 1;
        loop {
            let instance = &self.instances[index];
            let command = self.start_command(index);
            let error = match self.run(&command) {
                Ok(_) => return Ok(()),
                Err(error) => self.start_error(instance, &command, error),
            };
            let port_taken = matches!(&error, HarnessError::Start { log_tail, .. }
                if log_tail.contains("could not bind") || log_tail.contains("already in use"));
            // A lab member owns its address and port alone: another port would not help.
            let on_loopback = matches!(self.placements[index], Placement::Loopback);
            if !port_taken || !on_loopback || attempt >= PORT_ATTEMPTS {
                return Err(error);
            }
            attempt += 1;
            let port = free_ports(1)?[0];
            let instance = &mut self.instances[index];
            instance.port = port;
            append_conf(&instance.data_dir.join("postgresql.conf"), &[format!("port = {port}")])?;
        }
    }

    /// `pg_ctl start` for member `index`, in its namespace when it runs in a lab.
    fn start_command(&self, index: usize) -> PgCommand {
        let instance = &self.instances[index];
        self.member_tool(index, "pg_ctl")
            .arg("start")
            .arg("-D")
            .path(&instance.data_dir)
            .arg("-l")
            .path(&instance.log_file())
            .args(["-w", "-t"])
            .arg(PG_CTL_WAIT_SECONDS.to_string())
    }

    /// Turns a failed `pg_ctl start` into an error carrying the server log tail.
    fn start_error(&self, instance: &PgInstance, command: &PgCommand, error: HarnessError) -> HarnessError {
        let stderr = match error {
            HarnessError::Command { stderr, .. } => stderr,
            other => other.to_string(),
        };
        HarnessError::Start {
            instance: instance.name.clone(),
            command: command.describe(),
            stderr,
            log_tail: self.current_log_tail(instance),
        }
    }

    /// The tail of whichever log the member writes to now: the harness's own, or the one
    /// an action restarted it with (`data/vigil-start.log`), whichever changed last.
    fn current_log_tail(&self, instance: &PgInstance) -> String {
        let candidates = [instance.log_file(), instance.data_dir.join("vigil-start.log")];
        let newest = candidates
            .iter()
            .filter_map(|path| Some((fs::metadata(path).ok()?.modified().ok()?, path)))
            .max_by_key(|(modified, _)| *modified)
            .map(|(_, path)| path.clone())
            .unwrap_or_else(|| instance.log_file());
        log_tail(&newest)
    }

    /// A PostgreSQL tool from the bin directory, run as `postgres` when we are root, in the
    /// root namespace: for commands that only signal processes and read files.
    fn tool(&self, program: &str) -> PgCommand {
        PgCommand {
            program: self.bin_dir.join(program).display().to_string(),
            run_as: self.run_as(),
            namespace: None,
            envs: vec![("LC_ALL".into(), "C".into(), false)],
            args: Vec::new(),
        }
    }

    /// Like [`PgCluster::tool`], but inside member `index`'s namespace when it runs in a lab:
    /// for commands that start a server or reach one over the network.
    fn member_tool(&self, index: usize, program: &str) -> PgCommand {
        let mut command = self.tool(program);
        if let Some(Placement::Lab { namespace, .. }) = self.placements.get(index) {
            command.namespace = Some(namespace.clone());
        }
        command
    }

    fn run(&self, command: &PgCommand) -> Result<Output, HarnessError> {
        let output = command
            .to_command()
            .output()
            .map_err(|source| io_error(&format!("run `{}`", command.describe()), source))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(HarnessError::Command {
                command: command.describe(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

/// A command line for a PostgreSQL tool, kept as data so errors can show it without
/// showing the passwords it carries.
#[derive(Debug, Clone)]
struct PgCommand {
    program: String,
    run_as: Option<&'static str>,
    /// The lab namespace to run in (`ip netns exec`), if any.
    namespace: Option<String>,
    /// Name, value, and whether the value is a secret to redact.
    envs: Vec<(String, String, bool)>,
    args: Vec<String>,
}

impl PgCommand {
    fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    fn path(self, path: &Path) -> Self {
        let path = path.display().to_string();
        self.arg(path)
    }

    fn env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into(), false));
        self
    }

    fn secret_env(mut self, name: &str, value: &str) -> Self {
        self.envs.push((name.into(), value.into(), true));
        self
    }

    fn to_command(&self) -> Command {
        // Inside a namespace the whole chain (runuser, env, the tool) runs under
        // `ip netns exec`, which changes the network namespace and nothing the tool sees.
        let start = |program: &str| match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, program]);
                command
            }
            None => Command::new(program),
        };
        let mut command = match self.run_as {
            Some(user) => {
                // `runuser` keeps most of the environment, but passing variables through
                // `env` makes what the tool sees explicit.
                let mut command = start("runuser");
                command.args(["-u", user, "--", "env"]);
                command.args(self.envs.iter().map(|(name, value, _)| format!("{name}={value}")));
                command.arg(&self.program);
                command
            }
            None => {
                let mut command = start(&self.program);
                command.envs(self.envs.iter().map(|(name, value, _)| (name, value)));
                command
            }
        };
        command.args(&self.args);
        // PostgreSQL tools fail when they cannot read their working directory, which the
        // `postgres` user often cannot; "/" is always readable.
        command.current_dir("/").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    }

    fn describe(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        if let Some(namespace) = &self.namespace {
            words.extend(["ip", "netns", "exec", namespace].map(String::from));
        }
        if let Some(user) = self.run_as {
            words.extend(["runuser", "-u", user, "--", "env"].map(String::from));
        }
        for (name, value, secret) in &self.envs {
            let shown = if *secret { "<redacted>" } else { value };
            words.push(format!("{name}={shown}"));
        }
        words.push(self.program.clone());
        words.extend(self.args.iter().cloned());
        words.join(" ")
    }
}

fn io_error(action: &str, source: std::io::Error) -> HarnessError {
    HarnessError::Io { action: action.to_string(), source }
}

/// The uid and gid of the `postgres` OS user.
fn postgres_owner() -> Result<(u32, u32), HarnessError> {
    match User::from_name(POSTGRES_OS_USER) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        Ok(None) => Err(HarnessError::Environment(format!(
            "running as root but there is no `{POSTGRES_OS_USER}` user to run PostgreSQL as"
        ))),
        Err(errno) => Err(io_error(&format!("look up the `{POSTGRES_OS_USER}` user"), errno.into())),
    }
}

/// Makes `dir` private (0700) and, when we are root, owned by `postgres`.
fn prepare_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), HarnessError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|source| io_error(&format!("chmod 0700 {}", dir.display()), source))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|source| io_error(&format!("chown {} to postgres", dir.display()), source))?;
    }
    Ok(())
}

/// Ports the kernel says are free, all bound at once so that they differ from each other.
fn free_ports(count: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| io_error("bind 127.0.0.1:0 to find a free port", source))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| io_error("read the address of a bound port", source))
}

/// Appends settings to a configuration file; later lines win over earlier ones.
fn append_conf(path: &Path, settings: &[String]) -> Result<(), HarnessError> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| io_error(&format!("open {}", path.display()), source))?;
    let mut text = String::from("\n# Added by the vigil test harness.\n");
    for setting in settings {
        text.push_str(setting);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).map_err(|source| io_error(&format!("append to {}", path.display()), source))
}

/// Replaces the `primary_conninfo` that `pg_basebackup -R` wrote with our own.
fn set_primary_conninfo(auto_conf: &Path, conninfo: &str) -> Result<(), HarnessError> {
    let existing =
        fs::read_to_string(auto_conf).map_err(|source| io_error(&format!("read {}", auto_conf.display()), source))?;
    let mut text: String = existing
        .lines()
        .filter(|line| !line.trim_start().starts_with("primary_conninfo"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.push_str(&format!("primary_conninfo = '{}'\n", conf_quote(conninfo)));
    // Truncating the existing file (rather than replacing it) keeps its owner.
    fs::write(auto_conf, text).map_err(|source| io_error(&format!("write {}", auto_conf.display()), source))
}

/// Quotes a value for a single-quoted string in a PostgreSQL configuration file.
fn conf_quote(value: impl std::fmt::Display) -> String {
    value.to_string().replace('\\', "\\\\").replace('\'', "''")
}

/// Quotes a value for a standard-conforming single-quoted SQL string literal.
fn sql_quote(value: &str) -> String {
    value.replace('\'', "''")
}

fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether `pid` names a running process; a zombie counts as gone, since it holds no
/// ports, files or shared memory and only waits for its parent to reap it.
fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => process_state(&stat).is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Waits until `pid` has left the process table altogether (a zombie counts as
/// present), or `timeout` passes.
fn wait_reaped(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// The state letter of a `/proc/<pid>/stat` line; the command name before it may hold
/// spaces and parentheses, so the state is found after the last `)`.
fn process_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn parent_pid(stat: &str) -> Option<i32> {
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The PIDs whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|candidate| {
            fs::read_to_string(format!("/proc/{candidate}/stat")).ok().and_then(|stat| parent_pid(&stat)) == Some(pid)
        })
        .collect()
}

/// Whether `pid` runs the postgres binary, so a stale pid file that names a recycled PID
/// never makes the harness kill someone else's process.
fn is_postgres_process(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| {
            let program = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
            String::from_utf8_lossy(program).ends_with("postgres")
        })
        .unwrap_or(false)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parsing_survives_odd_command_names() {
        let stat = "1234 (postgres: a) b) S 77 1234 1234 0 -1";
        assert_eq!(process_state(stat), Some('S'));
        assert_eq!(parent_pid(stat), Some(77));
    }

    #[test]
    fn conf_quote_doubles_quotes_and_backslashes() {
        assert_eq!(conf_quote("it's a\\b"), "it''s a\\\\b");
    }

    #[test]
    fn described_commands_redact_secrets() {
        let command = PgCommand {
            program: "/bin/psql".into(),
            run_as: Some("postgres"),
            namespace: Some("vg1a2b-0dc1".into()),
            envs: Vec::new(),
            args: Vec::new(),
        }
        .secret_env("PGPASSWORD", "hunter2")
        .arg("-c");
        let described = command.describe();
        assert!(!described.contains("hunter2"), "{described}");
        assert!(described.contains("PGPASSWORD=<redacted>"), "{described}");
        assert!(described.starts_with("ip netns exec vg1a2b-0dc1 runuser"), "{described}");
    }
}
