//! Three datacenters as network namespaces (dc1, dc2, dc3, and a client host), each with a
//! `vigil` node and a redis-server (redis1, the master, in dc1), group "cache" applied: the
//! Redis counterpart of `dc_lab`. Everything runs inside the lab's own namespaces.
//!
//! The node plumbing (configurations, starting nodes, the CLI) is `dc_lab`'s, and the spec
//! is `redis_lab`'s.

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_chaos_tests::netns::NetLab;
use vigil_chaos_tests::redis::{REDIS_PASSWORD, RedisCluster};

use super::dc_lab::{CLIENT, DATACENTERS, DcNode, LabWriter, TIMEOUT};

/// How long a writer waits to connect, and for each reply: a write not answered by then is
/// not acknowledged, and the writer moves on to the next member.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The lab.
pub struct RedisDcLab {
    /// The vigil nodes by id: node N in `DATACENTERS[N-1]`, beside member redisN.
    pub nodes: BTreeMap<u64, DcNode>,
    /// The Redis servers: redis1 (master) in dc1, redis2 in dc2, redis3 in dc3.
    pub redis: RedisCluster,
    /// The namespaces. Dropped after the servers and nodes, which live inside them.
    pub net: Arc<NetLab>,
    /// Certificates, configurations, data and logs.
    pub dir: tempfile::TempDir,
}

impl RedisDcLab {
    /// Builds the lab, starts the nodes, applies group "cache" with `group_toml` as extra
    /// group settings, and waits until redis1 is the primary with every member up for every
    /// node.
    pub fn start(group_toml: &str) -> RedisDcLab {
        let net = Arc::new(NetLab::create(&["dc1", "dc2", "dc3", CLIENT]).expect("network lab"));
        let redis = RedisCluster::start_in(&net, &DATACENTERS).expect("redis in the lab");
        let dir = tempfile::tempdir().unwrap();
        let nodes = super::dc_lab::node_configs(&net, &dir, "");
        let mut lab = RedisDcLab { nodes, redis, net, dir };
        for id in 1..=3 {
            lab.start_node(id);
        }
        lab.wait_for_leader();
        let spec_path = lab.dir.path().join("cluster.toml");
        std::fs::write(&spec_path, super::redis_lab::spec_toml(lab.dir.path(), &lab.redis, group_toml, &[])).unwrap();
        let applied = lab.cli("dc2", 2, &["apply", "-f", spec_path.to_str().unwrap()]);
        assert!(applied.status.success(), "apply: {}", String::from_utf8_lossy(&applied.stderr));
        lab.wait_for("redis1 to be the primary with every member up", |group| {
            group["primary"] == "redis1"
                && group["members"].as_array().is_some_and(|members| {
                    members.iter().all(|member| {
                        let verdicts = member["verdicts"].as_object().unwrap();
                        verdicts.len() == 3 && verdicts.values().all(|verdict| verdict == "up")
                    })
                })
        });
        lab
    }

    /// Starts node `id` inside its datacenter.
    pub fn start_node(&mut self, id: u64) {
        super::dc_lab::start_node(&self.net, self.nodes.get_mut(&id).unwrap());
    }

    /// Runs a vigil CLI command inside `host` against node `id`'s API.
    pub fn cli(&self, host: &str, id: u64, args: &[&str]) -> Output {
        super::dc_lab::cli(&self.net, &self.nodes[&id], host, args)
    }

    /// Node `id`'s `vigil status --json`, asked from inside its own datacenter.
    pub fn status(&self, id: u64) -> Option<Value> {
        serde_json::from_slice(&self.cli(&self.nodes[&id].host, id, &["status", "--json"]).stdout).ok()
    }

    /// The group as seen by the node that has applied the most of the log (a cut-off node
    /// still answers, from a view that no longer moves).
    pub fn group(&self) -> Option<Value> {
        let mut best: Option<(u64, Value)> = None;
        for id in self.nodes.keys().filter(|id| self.nodes[id].child.is_some()) {
            let Some(status) = self.status(*id) else { continue };
            let applied = status["applied_index"].as_u64().unwrap_or(0);
            let Some(group) = status["groups"].as_array().and_then(|groups| groups.first()).cloned() else { continue };
            if best.as_ref().is_none_or(|(most, _)| applied > *most) {
                best = Some((applied, group));
            }
        }
        best.map(|(_, group)| group)
    }

    fn wait_for_leader(&self) {
        self.wait_until("a leader in the lab", || self.status(2).is_some_and(|status| status["leader"]["id"].is_u64()));
    }

    /// Waits until `condition` holds on the group's status; returns that status.
    pub fn wait_for(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        self.wait_until(what, || {
            found = self.group().filter(|group| condition(group));
            found.is_some()
        });
        found.unwrap()
    }

    /// Waits until `condition` holds, polling; panics with every log after [`TIMEOUT`].
    pub fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !condition() {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; group: {:#}\n{}", self.group().unwrap_or_default(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log and the tail of every server's.
    pub fn logs(&self) -> String {
        let nodes = self
            .nodes
            .iter()
            .map(|(id, node)| format!("--- n{id}\n{}", std::fs::read_to_string(&node.log).unwrap_or_default()));
        let servers = self.redis.instances().iter().enumerate().map(|(index, instance)| {
            format!("--- {}\n{}", instance.name, self.redis.log_tail(index).unwrap_or_else(|error| error.to_string()))
        });
        nodes.chain(servers).collect::<Vec<_>>().join("\n")
    }

    /// The member's index in `redis`.
    pub fn index_of(&self, member: &str) -> usize {
        self.redis.instances().iter().position(|instance| instance.name == member).unwrap()
    }

    /// The member's "ip:port", as a writer records it.
    pub fn server(&self, index: usize) -> String {
        let (host, port) = self.redis.address(index);
        format!("{host}:{port}")
    }

    /// The members' addresses, for a writer.
    pub fn addresses(&self, members: &[usize]) -> Vec<SocketAddr> {
        members.iter().map(|index| self.server(*index).parse().unwrap()).collect()
    }

    /// Whether `replica` replicates from `master` with its link up.
    pub fn follows(&self, replica: usize, master: usize) -> bool {
        let (host, port) = self.redis.address(master);
        self.redis.info_replication(replica).is_ok_and(|info| {
            info.get("role").map(String::as_str) == Some("slave")
                && info.get("master_host") == Some(&host)
                && info.get("master_port") == Some(&port.to_string())
                && info.get("master_link_status").map(String::as_str) == Some("up")
        })
    }
}

impl Drop for RedisDcLab {
    fn drop(&mut self) {
        super::dc_lab::stop_nodes(&mut self.nodes, self.dir.path());
    }
}

/// A client writing `SET <prefix>:N N` every 10 ms from inside a host, to the first of its
/// members that takes writes, recording the instant of every acknowledged write and the
/// server ("ip:port") that acknowledged it; it runs as a [`LabWriter`].
pub struct RedisWriter;

impl RedisWriter {
    /// Starts writing N from `first` inside `host`, to `servers` in turn: a member that
    /// refuses a write (a replica, a fenced master) or does not answer within
    /// [`WRITE_TIMEOUT`] is left for the next.
    pub fn start(net: &Arc<NetLab>, host: &str, servers: Vec<SocketAddr>, prefix: &str, first: i64) -> LabWriter {
        let prefix = prefix.to_string();
        LabWriter::spawn(net, host, move |stopping| write_until(&servers, &prefix, first, &stopping))
    }
}

fn write_until(servers: &[SocketAddr], prefix: &str, first: i64, stop: &AtomicBool) -> Vec<(Instant, String, i64)> {
    let mut acknowledged = Vec::new();
    let mut next = first;
    let mut turn = 0;
    let mut connection: Option<Connection> = None;
    while !stop.load(Ordering::SeqCst) {
        if connection.is_none() {
            match Connection::open(servers[turn % servers.len()]) {
                Ok(opened) => connection = Some(opened),
                Err(_) => {
                    turn += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
        }
        let open = connection.as_mut().unwrap();
        let value = next.to_string();
        match open.call(&["SET", &format!("{prefix}:{value}"), &value]) {
            Ok(Ok(_)) => acknowledged.push((Instant::now(), open.server.to_string(), next)),
            // Refused (READONLY, NOREPLICAS) or unanswered: not acknowledged, though an
            // unanswered one may exist; N is never used again. A reply that comes late must
            // not be taken for the next write's, so the connection goes too.
            _ => {
                connection = None;
                turn += 1;
            }
        }
        next += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    acknowledged
}

/// One authenticated connection to a Redis server, every step bounded by [`WRITE_TIMEOUT`].
struct Connection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    server: SocketAddr,
}

impl Connection {
    fn open(server: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&server, WRITE_TIMEOUT)?;
        stream.set_read_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut connection = Connection { reader: BufReader::new(stream.try_clone()?), stream, server };
        match connection.call(&["AUTH", REDIS_PASSWORD])? {
            Ok(_) => Ok(connection),
            Err(message) => Err(io::Error::new(io::ErrorKind::PermissionDenied, message)),
        }
    }

    /// Sends one command and reads a one-line reply: `Ok` with a status, `Err` with an
    /// error reply. Enough for `AUTH` and `SET`.
    fn call(&mut self, args: &[&str]) -> io::Result<Result<String, String>> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.stream.write_all(request.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        let line = line.trim_end();
        match line.split_at_checked(1) {
            Some(("+", status)) => Ok(Ok(status.to_string())),
            Some(("-", error)) => Ok(Err(error.to_string())),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected reply {line:?}"))),
        }
    }
}
