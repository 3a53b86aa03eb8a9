//! Datacenters as network namespaces: one namespace per host, joined by a Linux bridge that
//! lives in a namespace of its own, so faults (a dead link, a partition, packet loss, a
//! datacenter losing every process) can be injected without touching the root namespace.
//!
//! A [`NetLab`] with hosts `dc1`, `dc2`, `client` looks like this (`vg1a2b` is the lab's tag,
//! derived from the subnet it reserved):
//!
//! ```text
//!  vg1a2b-0dc1        vg1a2b-1dc2        vg1a2b-2client       (host namespaces)
//!  eth0 10.26.43.1    eth0 10.26.43.2    eth0 10.26.43.3
//!     |                  |                  |                 (veth pairs)
//!  p0-dc1 ---------- p1-dc2 ---------- p2-client -- br0       (namespace vg1a2b-br)
//! ```
//!
//! Every host has a static (permanent) neighbour entry for every other host, so no ARP
//! runs: when a link is cut, packets vanish and `connect` times out, exactly as across a
//! dead WAN link, instead of failing with "no route to host" once ARP gives up.
//!
//! Partitions and packet loss are nftables rules in a table `inet vigil_lab` inside the
//! host's own namespace, matched on input only: a drop on output would fail `send` with
//! EPERM at once, which no real network does.
//!
//! Invariants: the lab never touches the root namespace's interfaces, routes or firewall;
//! it only signals processes it spawned (by PID, and only while they are still inside one of
//! its namespaces) or processes it finds inside its own namespaces; dropping a [`NetLab`]
//! kills those processes, deletes its nftables tables and deletes every namespace it created
//! (the veth pairs and the bridge go with them), also when a test panics.

// The lab is synchronous so plain `#[test]`s can use it, and its waits (processes dying
// after SIGKILL) measure real elapsed time: tokio's clock is neither available nor wanted
// here, so std's `Instant` is the right clock.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, geteuid};

use crate::HarnessError;

/// The name of every host's interface towards the bridge.
pub const LAB_INTERFACE: &str = "eth0";
/// The nftables table (family `inet`) that holds a host's partition and loss rules.
pub const NFT_TABLE: &str = "vigil_lab";
/// The most hosts a lab holds: host `i` gets address `.i+1` of a /24.
pub const MAX_HOSTS: usize = 250;
/// The longest host name a lab accepts.
pub const MAX_HOST_NAME_LEN: usize = 32;

/// Where `ip netns` keeps the files that name namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The longest interface or namespace name the lab creates (`IFNAMSIZ` - 1).
const MAX_NAME_LEN: usize = 15;
/// The bridge's name inside the bridge namespace.
const BRIDGE: &str = "br0";
/// How many subnets `create` tries before it gives up: each try only fails when another
/// lab (in this or another process) already holds the subnet.
const RESERVE_ATTEMPTS: u64 = 64;
/// How long `kill_all` and `Drop` wait for killed processes to leave a namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts the labs this process has created; mixed with the PID it picks each lab's subnet.
static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Hosts in network namespaces on a private bridge, with knobs to cut links, partition
/// pairs of hosts, lose packets and kill everything a host runs.
///
/// Host `i` (in the order given to [`NetLab::create`]) has the address `10.X.Y.(i+1)/24` on
/// its interface [`LAB_INTERFACE`], where `X.Y` is unique to the lab. Every method takes
/// `&self`, so one lab can be shared between the threads of a test.
///
/// Drop order with a [`crate::postgres::PgCluster`] placed in the lab does not matter:
/// dropping the lab first kills the servers (they run in its namespaces), and the cluster
/// then only removes its directory.
#[derive(Debug)]
pub struct NetLab {
    /// Like "vg1a2b": the prefix of every namespace name of this lab.
    tag: String,
    /// The `X.Y` of the lab's subnet `10.X.Y.0/24`.
    subnet: [u8; 2],
    /// The namespace holding the bridge.
    bridge_namespace: String,
    hosts: Vec<LabHost>,
    /// The namespaces this lab created, in creation order: the only ones `Drop` deletes.
    created_namespaces: Vec<String>,
    /// PIDs of the children started with [`NetLab::spawn`].
    spawned: Mutex<Vec<u32>>,
    /// The faults injected with nftables, from which each host's rules are rebuilt.
    filters: Mutex<Filters>,
}

/// One host of a lab.
#[derive(Debug, Clone)]
struct LabHost {
    name: String,
    namespace: String,
    /// The host's port on the bridge, in the bridge namespace.
    bridge_port: String,
    ip: Ipv4Addr,
    mac: String,
}

/// The nftables faults in force, by host index.
#[derive(Debug, Default)]
struct Filters {
    /// Partitioned pairs, smaller index first.
    partitions: BTreeSet<(usize, usize)>,
    /// Inbound loss in percent, only for hosts with a loss above zero.
    loss: BTreeMap<usize, u8>,
    /// Ports (TCP and UDP, either end) blocked on the lab network, by host.
    blocked_ports: BTreeMap<usize, BTreeSet<u16>>,
    /// Hosts whose namespace holds the lab's nftables table.
    tables: BTreeSet<usize>,
}

impl NetLab {
    /// Creates one namespace per host plus a bridge namespace; each host gets a veth pair to
    /// a Linux bridge in the bridge namespace, the address `10.X.Y.(i+1)/24` on a subnet
    /// unique to this lab, a static neighbour entry for every other host, and `lo` up.
    ///
    /// `X.Y` comes from the PID and a per-process counter; the subnet is reserved by
    /// creating the bridge namespace (named after it) exclusively, so labs in parallel
    /// test processes never share one. Host names are 1 to [`MAX_HOST_NAME_LEN`] ASCII
    /// letters, digits, `-` or `_`, e.g. "dc1", "dc2", "client".
    pub fn create(hosts: &[&str]) -> Result<NetLab, HarnessError> {
        validate_hosts(hosts)?;
        if !geteuid().is_root() {
            return Err(HarnessError::Environment("network namespaces need root (CAP_SYS_ADMIN)".into()));
        }
        let (subnet, bridge_namespace) = reserve_subnet()?;
        let tag = format!("vg{:02x}{:02x}", subnet[0], subnet[1]);
        let hosts: Vec<LabHost> = hosts
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let number = u8::try_from(index + 1).expect("validate_hosts caps the host count");
                LabHost {
                    name: name.to_string(),
                    namespace: truncate(format!("{tag}-{index}{name}")),
                    bridge_port: truncate(format!("p{index}-{name}")),
                    ip: Ipv4Addr::new(10, subnet[0], subnet[1], number),
                    // Locally administered unicast ("vg" = 0x76 0x67), unique per lab and host.
                    mac: format!("02:76:67:{:02x}:{:02x}:{number:02x}", subnet[0], subnet[1]),
                }
            })
            .collect();

        // From here on, `Drop` removes whatever has been created if a later step fails.
        let mut lab = NetLab {
            tag,
            subnet,
            bridge_namespace: bridge_namespace.clone(),
            hosts,
            created_namespaces: vec![bridge_namespace],
            spawned: Mutex::new(Vec::new()),
            filters: Mutex::new(Filters::default()),
        };
        for index in 0..lab.hosts.len() {
            let namespace = lab.hosts[index].namespace.clone();
            run(Command::new("ip").args(["netns", "add", &namespace]), None)?;
            lab.created_namespaces.push(namespace);
        }
        lab.wire_bridge()?;
        for host in &lab.hosts {
            lab.configure_host(host)?;
        }
        Ok(lab)
    }

    /// The host names, in the order given to [`NetLab::create`].
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().map(|host| host.name.clone()).collect()
    }

    /// The host's address on the lab network.
    ///
    /// # Panics
    ///
    /// If the lab has no such host.
    pub fn ip(&self, host: &str) -> Ipv4Addr {
        self.expect_host(host).ip
    }

    /// The lab's subnet, `10.X.Y.0` with prefix length 24.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(10, self.subnet[0], self.subnet[1], 0), 24)
    }

    /// The real name of the host's namespace (at most 15 characters, unique per lab),
    /// for `ip netns exec` and `ip -n`.
    ///
    /// # Panics
    ///
    /// If the lab has no such host.
    pub fn namespace(&self, host: &str) -> &str {
        &self.expect_host(host).namespace
    }

    /// The name of the namespace that holds the bridge.
    pub fn bridge_namespace(&self) -> &str {
        &self.bridge_namespace
    }

    /// A command that runs `program` inside the host's namespace (`ip netns exec NS program`);
    /// add its arguments with [`Command::arg`]. Output is inherited as usual.
    ///
    /// # Panics
    ///
    /// If the lab has no such host.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", self.namespace(host)]).arg(program);
        command
    }

    /// Spawns `command` (normally made by [`NetLab::command`], so it runs in the host's
    /// namespace) and remembers its PID.
    ///
    /// The caller owns the returned [`Child`] and may wait for it. When the lab is dropped,
    /// the child is killed by PID if it is still running inside one of the lab's namespaces
    /// (a PID that has left them, e.g. reaped and reused, is never signalled). The lab does
    /// not reap it: a killed child the caller never waits for stays a zombie until the test
    /// process exits.
    ///
    /// `host` must name one of the lab's hosts; it documents where the command is meant to
    /// run, and a command not made by [`NetLab::command`] for that host is refused.
    pub fn spawn(&self, host: &str, mut command: Command) -> Result<Child, HarnessError> {
        let namespace = &self.host(host)?.namespace;
        let args: Vec<&OsStr> = command.get_args().take(3).collect();
        if command.get_program() != "ip" || args != [OsStr::new("netns"), OsStr::new("exec"), OsStr::new(namespace)] {
            return Err(HarnessError::Invalid(format!(
                "spawn on {host} needs a command from NetLab::command for {host}, got `{}`",
                describe(&command)
            )));
        }
        let child = command
            .spawn()
            .map_err(|source| spawn_error(&format!("spawn `{}` on {host}", describe(&command)), source))?;
        lock(&self.spawned).push(child.id());
        Ok(child)
    }

    /// Runs `work` on a new thread that has joined the host's network namespace, and
    /// returns what it returns; sockets it creates stay in that namespace and may be used
    /// from any thread afterwards. Only that thread changes namespace, never the caller's.
    ///
    /// A panic in `work` is passed on to the caller.
    pub fn run_in<T, F>(&self, host: &str, work: F) -> Result<T, HarnessError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let host = self.host(host)?;
        let path = namespace_path(&host.namespace);
        let file = fs::File::open(&path).map_err(|source| io_error(&format!("open {}", path.display()), source))?;
        let outcome = thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                        io_error(&format!("enter the network namespace {}", host.namespace), errno.into())
                    })?;
                    Ok(work())
                })
                .join()
        });
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Takes the host's bridge port down: its packets vanish silently, in both directions,
    /// like a dead link. Connections stay open on both ends and time out or resume.
    pub fn cut(&self, host: &str) -> Result<(), HarnessError> {
        self.set_bridge_port(host, "down")
    }

    /// Brings the host's bridge port back up after [`NetLab::cut`].
    pub fn heal(&self, host: &str) -> Result<(), HarnessError> {
        self.set_bridge_port(host, "up")
    }

    /// Drops every packet between exactly these two hosts, both directions (an nftables
    /// `ip saddr` drop on input in each of the two namespaces); other pairs are unaffected.
    pub fn partition(&self, a: &str, b: &str) -> Result<(), HarnessError> {
        let pair = self.pair(a, b)?;
        let mut filters = lock(&self.filters);
        filters.partitions.insert(pair);
        self.apply_filters(&mut filters, pair.0)?;
        self.apply_filters(&mut filters, pair.1)
    }

    /// Lifts a [`NetLab::partition`] between these two hosts; a no-op if there is none.
    pub fn unpartition(&self, a: &str, b: &str) -> Result<(), HarnessError> {
        let pair = self.pair(a, b)?;
        let mut filters = lock(&self.filters);
        if filters.partitions.remove(&pair) {
            self.apply_filters(&mut filters, pair.0)?;
            self.apply_filters(&mut filters, pair.1)?;
        }
        Ok(())
    }

    /// Drops `percent` of the packets arriving at the host over the lab network
    /// (`iifname eth0 numgen random mod 100 < N drop` in its namespace; loopback traffic is
    /// spared). 100 drops everything inbound; 0 removes the rule.
    pub fn packet_loss(&self, host: &str, percent: u8) -> Result<(), HarnessError> {
        if percent > 100 {
            return Err(HarnessError::Invalid(format!("packet loss of {percent}% on {host}: at most 100")));
        }
        let index = self.index(host)?;
        let mut filters = lock(&self.filters);
        if percent == 0 {
            filters.loss.remove(&index);
        } else {
            filters.loss.insert(index, percent);
        }
        self.apply_filters(&mut filters, index)
    }

    /// Cuts one service of the host off from every other host, both ways: packets from or
    /// to `port` (TCP or UDP) are dropped on arrival at the host, and packets from the host
    /// from or to that port are dropped on arrival everywhere else. The host's other
    /// services still talk, like a firewall change gone wrong. Loopback traffic is spared.
    pub fn block_port(&self, host: &str, port: u16) -> Result<(), HarnessError> {
        let index = self.index(host)?;
        let mut filters = lock(&self.filters);
        filters.blocked_ports.entry(index).or_default().insert(port);
        self.apply_all_filters(&mut filters)
    }

    /// Lifts a [`NetLab::block_port`]; a no-op if the port is not blocked.
    pub fn unblock_port(&self, host: &str, port: u16) -> Result<(), HarnessError> {
        let index = self.index(host)?;
        let mut filters = lock(&self.filters);
        let removed = filters.blocked_ports.get_mut(&index).is_some_and(|ports| ports.remove(&port));
        if removed {
            self.apply_all_filters(&mut filters)?;
        }
        Ok(())
    }

    fn apply_all_filters(&self, filters: &mut MutexGuard<'_, Filters>) -> Result<(), HarnessError> {
        for index in 0..self.hosts.len() {
            self.apply_filters(filters, index)?;
        }
        Ok(())
    }

    /// Sends SIGKILL to every process inside the host's namespace (`ip netns pids`) and
    /// waits until none is left, like a datacenter losing power. The lab's own interfaces
    /// and rules stay.
    pub fn kill_all(&self, host: &str) -> Result<(), HarnessError> {
        let namespace = &self.host(host)?.namespace;
        kill_namespace(namespace, KILL_TIMEOUT)
    }

    fn host(&self, name: &str) -> Result<&LabHost, HarnessError> {
        self.hosts.get(self.index(name)?).ok_or_else(|| HarnessError::Invalid(format!("no host {name}")))
    }

    fn index(&self, name: &str) -> Result<usize, HarnessError> {
        self.hosts.iter().position(|host| host.name == name).ok_or_else(|| {
            HarnessError::Invalid(format!("no host {name} in lab {} (hosts: {})", self.tag, self.hosts().join(", ")))
        })
    }

    fn expect_host(&self, name: &str) -> &LabHost {
        match self.host(name) {
            Ok(host) => host,
            Err(error) => panic!("{error}"),
        }
    }

    /// The two hosts' indexes, smaller first.
    fn pair(&self, a: &str, b: &str) -> Result<(usize, usize), HarnessError> {
        let (a_index, b_index) = (self.index(a)?, self.index(b)?);
        if a_index == b_index {
            return Err(HarnessError::Invalid(format!("cannot partition {a} from itself")));
        }
        Ok((a_index.min(b_index), a_index.max(b_index)))
    }

    /// Creates the bridge and one veth pair per host, the host end named
    /// [`LAB_INTERFACE`] inside the host's namespace.
    fn wire_bridge(&self) -> Result<(), HarnessError> {
        let mut batch = format!("link set lo up\nlink add {BRIDGE} type bridge\nlink set {BRIDGE} up\n");
        for host in &self.hosts {
            batch.push_str(&format!(
                "link add {port} type veth peer name {LAB_INTERFACE} address {mac} netns {namespace}\n\
                 link set {port} master {BRIDGE} up\n",
                port = host.bridge_port,
                mac = host.mac,
                namespace = host.namespace,
            ));
        }
        run(Command::new("ip").args(["-n", &self.bridge_namespace, "-batch", "-"]), Some(&batch)).map(drop)
    }

    /// Brings up the host's interfaces, gives it its address and a permanent neighbour
    /// entry for every other host.
    fn configure_host(&self, host: &LabHost) -> Result<(), HarnessError> {
        let mut batch = format!(
            "link set lo up\naddr add {ip}/24 dev {LAB_INTERFACE}\nlink set {LAB_INTERFACE} up\n",
            ip = host.ip
        );
        for peer in self.hosts.iter().filter(|peer| peer.name != host.name) {
            batch.push_str(&format!(
                "neigh replace {ip} lladdr {mac} dev {LAB_INTERFACE} nud permanent\n",
                ip = peer.ip,
                mac = peer.mac
            ));
        }
        run(Command::new("ip").args(["-n", &host.namespace, "-batch", "-"]), Some(&batch)).map(drop)
    }

    fn set_bridge_port(&self, host: &str, state: &str) -> Result<(), HarnessError> {
        let port = &self.host(host)?.bridge_port;
        run(Command::new("ip").args(["-n", &self.bridge_namespace, "link", "set", port, state]), None).map(drop)
    }

    /// Rewrites the host's input chain from `filters` in one nftables transaction, creating
    /// the table the first time.
    fn apply_filters(&self, filters: &mut MutexGuard<'_, Filters>, index: usize) -> Result<(), HarnessError> {
        let host = &self.hosts[index];
        let mut script = format!(
            "table inet {NFT_TABLE} {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t}}\n\
             }}\n\
             flush chain inet {NFT_TABLE} input\n"
        );
        for (a, b) in &filters.partitions {
            let peer = if index == *a {
                *b
            } else if index == *b {
                *a
            } else {
                continue;
            };
            script.push_str(&format!("add rule inet {NFT_TABLE} input ip saddr {} drop\n", self.hosts[peer].ip));
        }
        for (blocked, ports) in &filters.blocked_ports {
            // On the blocked host itself, from anyone; elsewhere, only from the blocked host.
            let from = if *blocked == index { String::new() } else { format!("ip saddr {} ", self.hosts[*blocked].ip) };
            for port in ports {
                for end in ["sport", "dport"] {
                    script.push_str(&format!(
                        "add rule inet {NFT_TABLE} input iifname \"{LAB_INTERFACE}\" {from}meta l4proto {{ tcp, udp }} th {end} {port} drop\n"
                    ));
                }
            }
        }
        match filters.loss.get(&index) {
            // `numgen random mod 100` yields 0 to 99, and nft refuses the comparison `< 100`.
            Some(100) => {
                script.push_str(&format!("add rule inet {NFT_TABLE} input iifname \"{LAB_INTERFACE}\" drop\n"));
            }
            Some(percent) => script.push_str(&format!(
                "add rule inet {NFT_TABLE} input iifname \"{LAB_INTERFACE}\" numgen random mod 100 < {percent} drop\n"
            )),
            None => {}
        }
        run(Command::new("ip").args(["netns", "exec", &host.namespace, "nft", "-f", "-"]), Some(&script))?;
        filters.tables.insert(index);
        Ok(())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        // Spawned children first: they are the processes the lab knows it started. A PID is
        // only signalled while it still lives in one of the lab's namespaces, so a child
        // that exited and whose PID was reused elsewhere is left alone.
        let inodes: Vec<u64> =
            self.created_namespaces.iter().filter_map(|name| namespace_inode(&namespace_path(name))).collect();
        for pid in lock(&self.spawned).iter() {
            let pid = *pid as i32;
            if process_namespace_inode(pid).is_some_and(|inode| inodes.contains(&inode)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        for namespace in &self.created_namespaces {
            let _ = kill_namespace(namespace, KILL_TIMEOUT);
        }
        // The tables would go with their namespaces; deleting them first keeps the order
        // explicit and leaves nothing behind should a namespace outlive the lab.
        let tables = std::mem::take(&mut lock(&self.filters).tables);
        for index in tables {
            let namespace = &self.hosts[index].namespace;
            let _ = run(
                Command::new("ip").args(["netns", "exec", namespace, "nft", "delete", "table", "inet", NFT_TABLE]),
                None,
            );
        }
        // Host namespaces first: deleting one destroys its veth pair, so the bridge
        // namespace is empty of ports when it goes.
        for namespace in self.created_namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "delete", namespace]), None);
        }
    }
}

/// Host names must be usable inside namespace and interface names, and unique.
fn validate_hosts(hosts: &[&str]) -> Result<(), HarnessError> {
    if hosts.is_empty() {
        return Err(HarnessError::Invalid("a lab needs at least one host".into()));
    }
    if hosts.len() > MAX_HOSTS {
        return Err(HarnessError::Invalid(format!("a lab holds at most {MAX_HOSTS} hosts, not {}", hosts.len())));
    }
    let mut seen = BTreeSet::new();
    for host in hosts {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if host.is_empty() || host.len() > MAX_HOST_NAME_LEN || !host.chars().all(valid_char) {
            return Err(HarnessError::Invalid(format!(
                "host name {host:?}: use 1 to {MAX_HOST_NAME_LEN} ASCII letters, digits, '-' or '_'"
            )));
        }
        if !seen.insert(*host) {
            return Err(HarnessError::Invalid(format!("host name {host:?} appears twice")));
        }
    }
    Ok(())
}

/// Picks `X.Y` for a new lab and reserves it by creating the bridge namespace named after
/// it: `ip netns add` creates the name exclusively, so a subnet held by another lab (here
/// or in another process, or left over by a crashed run) is skipped, never shared.
fn reserve_subnet() -> Result<([u8; 2], String), HarnessError> {
    let pid = u64::from(std::process::id());
    for _ in 0..RESERVE_ATTEMPTS {
        let count = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let [x, y] = (mix((pid << 24) ^ count) as u16).to_be_bytes();
        let namespace = format!("vg{x:02x}{y:02x}-br");
        match run(Command::new("ip").args(["netns", "add", &namespace]), None) {
            Ok(_) => return Ok(([x, y], namespace)),
            Err(HarnessError::Command { stderr, .. }) if stderr.contains("File exists") => continue,
            Err(error) => return Err(error),
        }
    }
    Err(HarnessError::Environment(format!(
        "found no free lab subnet in {RESERVE_ATTEMPTS} tries: `ip netns list` shows what holds them"
    )))
}

/// SplitMix64's finalizer: spreads PID and counter over all bits, so neighbouring PIDs and
/// counts land on unrelated subnets.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Cuts a generated name to the kernel's limit; names are ASCII, so any cut is valid.
fn truncate(mut name: String) -> String {
    name.truncate(MAX_NAME_LEN);
    name
}

/// SIGKILLs every process in the namespace until none is left or `timeout` passes; never
/// this process, whose threads may visit the namespace through [`NetLab::run_in`].
fn kill_namespace(namespace: &str, timeout: Duration) -> Result<(), HarnessError> {
    let own_pid = std::process::id() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        let output = run(Command::new("ip").args(["netns", "pids", namespace]), None)?;
        let pids: Vec<i32> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .filter(|pid| *pid != own_pid)
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: format!("the processes in namespace {namespace} to die"),
                last_seen: format!("still running: {pids:?}"),
                log_tail: "(none: these are a lab's processes, not one server)".into(),
            });
        }
        for pid in pids {
            // A process may exit between listing and signalling: nothing to do then.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn namespace_path(namespace: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(namespace)
}

/// The inode that identifies a network namespace, from its `ip netns` file.
fn namespace_inode(path: &std::path::Path) -> Option<u64> {
    fs::metadata(path).ok().map(|metadata| metadata.ino())
}

/// The inode of the network namespace `pid` lives in (`/proc/PID/ns/net` reads
/// `net:[INODE]`); `None` for a process that is gone or a zombie.
fn process_namespace_inode(pid: i32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Runs an `ip` or `nft` command to completion, feeding it `stdin`, and turns a failure
/// into an error carrying its stderr.
fn run(command: &mut Command, stdin: Option<&str>) -> Result<Output, HarnessError> {
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let described = describe(command);
    let mut child = command.spawn().map_err(|source| spawn_error(&format!("run `{described}`"), source))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| io_error(&format!("write the input of `{described}`"), source))?;
        // Dropping the pipe closes it, so the command sees the end of its input.
    }
    let output = child.wait_with_output().map_err(|source| io_error(&format!("wait for `{described}`"), source))?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if let Some(text) = stdin {
            stderr.push_str(&format!("\ninput was:\n{}", text.trim_end()));
        }
        Err(HarnessError::Command { command: described, status: output.status.to_string(), stderr })
    }
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn io_error(action: &str, source: std::io::Error) -> HarnessError {
    HarnessError::Io { action: action.to_string(), source }
}

/// A missing `ip` or `nft` is a machine set up wrongly, not a failed operation.
fn spawn_error(action: &str, source: std::io::Error) -> HarnessError {
    if source.kind() == std::io::ErrorKind::NotFound {
        HarnessError::Environment(format!(
            "could not {action}: program not found (the lab needs iproute2 and nftables)"
        ))
    } else {
        io_error(action, source)
    }
}

/// Locks a mutex, also after a panic elsewhere poisoned it: the lab's bookkeeping stays
/// consistent between statements, and `Drop` must clean up after panicking tests.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked() {
        assert!(validate_hosts(&[]).is_err());
        assert!(validate_hosts(&["dc1", "dc1"]).is_err());
        assert!(validate_hosts(&["dc 1"]).is_err());
        assert!(validate_hosts(&["a/b"]).is_err());
        assert!(validate_hosts(&["dc1", "dc2", "client", "dc-3_x"]).is_ok());
    }

    #[test]
    fn generated_names_fit_the_kernel_limit() {
        assert_eq!(truncate("vg1a2b-12averylonghostname".into()), "vg1a2b-12averyl");
        assert_eq!(truncate("vg1a2b-0dc1".into()), "vg1a2b-0dc1");
    }

    #[test]
    fn neighbouring_pids_get_unrelated_subnets() {
        let subnets: BTreeSet<u16> = (0..64u64).map(|count| mix((1000 << 24) ^ count) as u16).collect();
        assert!(subnets.len() > 60, "{subnets:?}");
    }
}
