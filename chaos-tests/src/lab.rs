//! The chaos lab: three datacenters (`dc1`..`dc3`) and a client host as network namespaces,
//! each datacenter with a `vigil` node, a PostgreSQL member and a Redis member. Group
//! `main` (PostgreSQL, strict synchronous mode, re-clone allowed) and group `cache` (Redis)
//! are applied with vigil's defaults otherwise, so the lab tests what an operator runs.
//!
//! vigil is driven only through its binary and CLI (`vigil status --json`), as an operator
//! drives it; the lab never links vigil's crates, so what it proves holds for the binary.
//!
//! Invariants: everything runs inside the lab's namespaces; dropping the lab kills the
//! vigil daemons and their fence guards first (so none acts on a server being torn down),
//! then the servers, then the namespaces.

#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::netns::NetLab;
use crate::postgres::{PgCluster, REPLICATION_PASSWORD, VIGIL_PASSWORD};
use crate::redis::{REDIS_PASSWORD, RedisCluster};

/// The datacenters, in node order: node N, pgN and redisN live in `DATACENTERS[N-1]`.
pub const DATACENTERS: [&str; 3] = ["dc1", "dc2", "dc3"];
/// The host where clients run: no vigil node, no server.
pub const CLIENT: &str = "client";
/// The PostgreSQL group.
pub const PG_GROUP: &str = "main";
/// The Redis group.
pub const REDIS_GROUP: &str = "cache";
/// Every vigil node's Raft (QUIC) port.
pub const RAFT_PORT: u16 = 7100;
/// Every vigil node's API port.
pub const API_PORT: u16 = 7200;
/// How long the lab waits for it to come up.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One vigil node.
#[derive(Debug)]
pub struct VigilNode {
    /// Its datacenter.
    pub host: String,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its data directory (which holds the fence guard's pid file).
    pub data_dir: PathBuf,
    /// Its log (standard output and error, appended across restarts).
    pub log: PathBuf,
    /// The daemon, while it runs.
    pub child: Option<Child>,
}

/// The lab.
pub struct ChaosLab {
    /// The vigil nodes by id.
    pub nodes: BTreeMap<u64, VigilNode>,
    /// pg1 (the first primary) in dc1, pg2 in dc2, pg3 in dc3.
    pub pg: PgCluster,
    /// redis1 (the first master) in dc1, redis2 in dc2, redis3 in dc3.
    pub redis: RedisCluster,
    /// The namespaces; dropped last.
    pub net: Arc<NetLab>,
    /// Certificates, configurations, vigil's data and logs.
    pub dir: tempfile::TempDir,
    vigil: PathBuf,
}

impl ChaosLab {
    /// Builds the namespaces and servers, starts the three nodes with `vigil` (the binary),
    /// applies both groups, and waits until every member is up for every node.
    pub fn start(vigil: &Path) -> anyhow::Result<ChaosLab> {
        if !vigil.is_file() {
            bail!("no vigil binary at {} (build it with `cargo build -p vigil`)", vigil.display());
        }
        let mut hosts = DATACENTERS.to_vec();
        hosts.push(CLIENT);
        let net = Arc::new(NetLab::create(&hosts).context("network namespaces")?);
        let pg = PgCluster::start_in(&net, &DATACENTERS).context("PostgreSQL in the lab")?;
        let redis = RedisCluster::start_in(&net, &DATACENTERS).context("Redis in the lab")?;
        let dir = tempfile::Builder::new().prefix("vigil-chaos-").tempdir().context("lab directory")?;
        let nodes = write_node_configs(vigil, &net, dir.path(), "")?;
        let mut lab = ChaosLab { nodes, pg, redis, net, dir, vigil: vigil.to_path_buf() };
        for id in 1..=3 {
            lab.start_node(id)?;
        }
        lab.wait_until("a Raft leader", START_TIMEOUT, |lab| {
            lab.status(2).is_some_and(|s| s["leader"]["id"].is_u64())
        })?;
        let spec = lab.dir.path().join("cluster.toml");
        std::fs::write(&spec, lab.spec()?).context("write the spec")?;
        let applied = lab.cli(2, &["apply", "-f", &spec.display().to_string()]);
        if !applied.status.success() {
            bail!("vigil apply: {}", String::from_utf8_lossy(&applied.stderr));
        }
        lab.wait_until("every member of both groups up for every node", START_TIMEOUT, |lab| {
            lab.status(1).is_some_and(|status| all_up(&status))
        })?;
        Ok(lab)
    }

    fn spec(&self) -> anyhow::Result<String> {
        let redis_password = self.dir.path().join("redis.password");
        std::fs::write(&redis_password, REDIS_PASSWORD).context("write the Redis password")?;
        let mut text = postgres_spec(
            self.dir.path(),
            &self.pg,
            PG_GROUP,
            "synchronous = \"strict\"\nallow_reclone = true\n",
            &[],
        )?;
        text.push_str(&format!(
            "\n[[redis]]\nname = \"{REDIS_GROUP}\"\npassword = {{ file = \"{}\" }}\nmaximum_lag_on_failover = 1048576\n",
            redis_password.display()
        ));
        for (index, instance) in self.redis.instances().iter().enumerate() {
            let (host, port) = self.redis.address(index);
            text.push_str(&format!(
                "\n[[redis.members]]\nname = \"{}\"\nhost = \"{host}\"\nport = {port}\nnode = \"n{}\"\n",
                instance.name,
                index + 1
            ));
        }
        Ok(text)
    }

    /// Starts node `id`'s daemon inside its datacenter.
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).with_context(|| format!("no node {id}"))?;
        start_vigil(&self.net, &self.vigil, node)
    }

    /// SIGKILLs node `id`'s daemon (not its fence guard, which outlives it by design).
    pub fn kill_node(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|node| node.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Forgets node `id`'s daemon after something else killed it (a datacenter kill).
    pub fn reap_node(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).and_then(|node| node.child.take()) {
            let _ = child.wait();
        }
    }

    /// Whether node `id`'s daemon runs.
    pub fn node_running(&mut self, id: u64) -> bool {
        self.nodes
            .get_mut(&id)
            .and_then(|node| node.child.as_mut())
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The node whose datacenter is `host`.
    pub fn node_in(&self, host: &str) -> Option<u64> {
        self.nodes.iter().find(|(_, node)| node.host == host).map(|(id, _)| *id)
    }

    /// Runs a vigil CLI command against node `id`, from inside the node's own datacenter.
    pub fn cli(&self, id: u64, args: &[&str]) -> Output {
        let node = &self.nodes[&id];
        cli_command(&self.net, &self.vigil, node, args).output().unwrap_or_else(|error| Output {
            status: failed_status(),
            stdout: Vec::new(),
            stderr: error.to_string().into(),
        })
    }

    /// A command that runs the vigil CLI against node `id` inside its datacenter, for a
    /// thread that polls without holding the lab.
    pub fn cli_command(&self, id: u64, args: &[&str]) -> Command {
        cli_command(&self.net, &self.vigil, &self.nodes[&id], args)
    }

    /// Node `id`'s `vigil status --json`, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        serde_json::from_slice(&self.cli(id, &["status", "--json"]).stdout).ok()
    }

    /// Polls `condition` every 200 ms until it holds or `timeout` passes.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&ChaosLab) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !condition(self) {
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Every node's log, concatenated.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, node)| format!("--- n{id}\n{}", std::fs::read_to_string(&node.log).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Copies the nodes' and servers' logs into `dir`, for a report on a failed run.
    pub fn save_logs(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (id, node) in &self.nodes {
            let _ = std::fs::copy(&node.log, dir.join(format!("n{id}.log")));
        }
        for instance in self.pg.instances() {
            let _ = std::fs::copy(instance.log_file(), dir.join(format!("{}.log", instance.name)));
            // Where vigil's own starts of the server log (a rejoin, a start in place).
            let started = instance.data_dir.join("vigil-start.log");
            let _ = std::fs::copy(started, dir.join(format!("{}-vigil-start.log", instance.name)));
        }
        for instance in self.redis.instances() {
            let _ = std::fs::copy(instance.log_file(), dir.join(format!("{}.log", instance.name)));
        }
        Ok(())
    }
}

/// A `[[postgres]]` group named `name` over `pg`'s members (member N beside node nN), its
/// passwords in files written to `dir`, with `extra` (TOML) added to the group's settings
/// and `member_extra[N]` to member N's. Also the spec of vigil's own PostgreSQL tests.
pub fn postgres_spec(
    dir: &Path,
    pg: &PgCluster,
    name: &str,
    extra: &str,
    member_extra: &[&str],
) -> anyhow::Result<String> {
    let secret = |file: &str, value: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    };
    // As an operator's `echo ... > file` writes it: vigil drops the trailing newline.
    let password = secret("vigil.password", &format!("{VIGIL_PASSWORD}\n"))?;
    let replication = secret("replication.password", REPLICATION_PASSWORD)?;
    let mut text = format!(
        "[[postgres]]\nname = \"{name}\"\nuser = \"vigil\"\npassword = {{ file = \"{}\" }}\n\
         replication_user = \"replicator\"\nreplication_password = {{ file = \"{}\" }}\n\
         maximum_lag_on_failover = 16777216\nbin_dir = \"{}\"\nrun_as = \"postgres\"\n{extra}\n",
        password.display(),
        replication.display(),
        pg.bin_dir().display()
    );
    for (index, instance) in pg.instances().iter().enumerate() {
        let (host, port) = pg.address(index);
        text.push_str(&format!(
            "\n[[postgres.members]]\nname = \"{}\"\nhost = \"{host}\"\nport = {port}\nnode = \"n{}\"\ndata_dir = \"{}\"\n{}\n",
            instance.name,
            index + 1,
            instance.data_dir.display(),
            member_extra.get(index).copied().unwrap_or("")
        ));
    }
    Ok(text)
}

/// Whether every member of every group is up for all three nodes.
pub fn all_up(status: &Value) -> bool {
    let Some(groups) = status["groups"].as_array() else { return false };
    groups.len() == 2
        && groups.iter().all(|group| {
            group["primary"].is_string()
                && group["members"].as_array().is_some_and(|members| {
                    members.iter().all(|member| {
                        member["verdicts"]
                            .as_object()
                            .is_some_and(|verdicts| verdicts.len() == 3 && verdicts.values().all(|v| v == "up"))
                    })
                })
        })
}

/// Starts `node`'s daemon inside its datacenter, its output appended to its log.
pub fn start_vigil(net: &NetLab, vigil: &Path, node: &mut VigilNode) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log)?;
    let mut command = net.command(&node.host, vigil);
    command.args(["run", "--config"]).arg(&node.config).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    node.child = Some(net.spawn(&node.host, command)?);
    Ok(())
}

/// A command that runs the vigil CLI with `args` against `node`'s API, from inside its
/// datacenter.
pub fn cli_command(net: &NetLab, vigil: &Path, node: &VigilNode, args: &[&str]) -> Command {
    let mut command = net.command(&node.host, vigil);
    command.args(args).arg("--config").arg(&node.config).stdin(Stdio::null());
    command
}

fn failed_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt as _;
    std::process::ExitStatus::from_raw(1 << 8)
}

/// Certificates (`vigil certs init`) and a configuration per node in `dir`, node N in
/// `DATACENTERS[N-1]` with its data in `dir/data/nN` and `extra` (TOML) added to each;
/// nothing started. Also the plumbing of vigil's own namespace tests.
pub fn write_node_configs(
    vigil: &Path,
    net: &NetLab,
    dir: &Path,
    extra: &str,
) -> anyhow::Result<BTreeMap<u64, VigilNode>> {
    let certs = dir.join("certs");
    let made = Command::new(vigil)
        .args(["certs", "init", "--out"])
        .arg(&certs)
        .args(["--nodes", "1,2,3"])
        .output()
        .context("run vigil certs init")?;
    if !made.status.success() {
        bail!("vigil certs init: {}", String::from_utf8_lossy(&made.stderr));
    }
    let members: String = (1..=3u64)
        .map(|id| {
            let ip = net.ip(DATACENTERS[id as usize - 1]);
            format!(
                "[[initial_members]]\nid = {id}\nname = \"n{id}\"\ndatacenter = \"dc{id}\"\n\
                 raft_addr = \"{ip}:{RAFT_PORT}\"\napi_addr = \"{ip}:{API_PORT}\"\n\n"
            )
        })
        .collect();
    // The lab's password files (beside its certificates, which no spec may name) and
    // PostgreSQL's data under the temporary directory.
    let secrets: Vec<String> = ["vigil.password", "replication.password", "redis.password"]
        .iter()
        .map(|file| format!("\"{}\"", dir.join(file).display()))
        .collect();
    let allow = format!(
        "[allow]\nsecret_files = [{}]\ndata_dirs = [\"{}\"]\n",
        secrets.join(", "),
        std::env::temp_dir().display()
    );
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let host = DATACENTERS[id as usize - 1];
        let ip = net.ip(host);
        let config = dir.join(format!("n{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "cluster_name = \"chaos\"\ndata_dir = \"data/n{id}\"\n\n[node]\nid = {id}\nname = \"n{id}\"\n\
                 datacenter = \"dc{id}\"\nraft_addr = \"{ip}:{RAFT_PORT}\"\napi_addr = \"{ip}:{API_PORT}\"\n\n\
                 [tls]\nca = \"certs/ca.crt\"\ncert = \"certs/node{id}.crt\"\nkey = \"certs/node{id}.key\"\n\n\
                 [log]\nlevel = \"info,openraft=warn\"\n\n{extra}\n{allow}\n{members}"
            ),
        )?;
        nodes.insert(
            id,
            VigilNode {
                host: host.to_string(),
                config,
                data_dir: dir.join(format!("data/n{id}")),
                log: dir.join(format!("n{id}.log")),
                child: None,
            },
        );
    }
    Ok(nodes)
}

impl Drop for ChaosLab {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // The fence guards outlive their daemons by design; they live in the lab's
        // namespaces, so killing everything there reaches them (and the servers, which the
        // clusters' own clean-up then finds gone).
        for host in DATACENTERS {
            let _ = self.net.kill_all(host);
        }
    }
}
