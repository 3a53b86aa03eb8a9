//! Three datacenters as network namespaces (dc1, dc2, dc3, and a client host), each with a
//! `vigil` node and a PostgreSQL member; the lab the fencing tests and the datacenter-cut
//! benchmark share. Everything runs inside the lab's own namespaces.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_chaos_tests::netns::NetLab;
use vigil_chaos_tests::postgres::{PgCluster, VIGIL_PASSWORD};

use super::vigil_bin;

/// The datacenters, in node order: node N and member pgN live in `DATACENTERS[N-1]`.
pub const DATACENTERS: [&str; 3] = ["dc1", "dc2", "dc3"];
/// A host with no vigil node and no server: where clients run.
pub const CLIENT: &str = "client";
/// How long the lab waits for anything.
pub const TIMEOUT: Duration = Duration::from_secs(90);

/// One vigil node in the lab: the chaos lab's own.
pub use vigil_chaos_tests::lab::VigilNode as DcNode;

/// The lab.
pub struct DcLab {
    /// The vigil nodes by id.
    pub nodes: BTreeMap<u64, DcNode>,
    /// The PostgreSQL servers: pg1 (primary) in dc1, pg2 in dc2, pg3 in dc3.
    pub pg: PgCluster,
    /// The namespaces. Dropped after the servers and nodes, which live inside them.
    pub net: Arc<NetLab>,
    /// Certificates, configurations, data and logs.
    pub dir: tempfile::TempDir,
}

impl DcLab {
    /// Builds the lab, starts the nodes, applies a spec with `group_toml` as extra group
    /// settings, and waits until pg1 is the primary with every member up.
    pub fn start(group_toml: &str, raft_toml: &str) -> DcLab {
        let net = Arc::new(NetLab::create(&["dc1", "dc2", "dc3", CLIENT]).expect("network lab"));
        let pg = PgCluster::start_in(&net, &DATACENTERS).expect("postgres in the lab");
        let dir = tempfile::tempdir().unwrap();
        let nodes = node_configs(&net, &dir, raft_toml);
        let mut lab = DcLab { nodes, pg, net, dir };
        for id in 1..=3 {
            lab.start_node(id);
        }
        lab.wait_for_leader();
        let spec = lab.spec(group_toml);
        let spec_path = lab.dir.path().join("cluster.toml");
        std::fs::write(&spec_path, spec).unwrap();
        let applied = lab.cli("dc2", 2, &["apply", "-f", spec_path.to_str().unwrap()]);
        assert!(applied.status.success(), "apply: {}", String::from_utf8_lossy(&applied.stderr));
        lab.wait_for("pg1 to be the primary with every member up", |group| {
            group["primary"] == "pg1"
                && group["members"].as_array().is_some_and(|members| {
                    members.iter().all(|member| {
                        let verdicts = member["verdicts"].as_object().unwrap();
                        verdicts.len() == 3 && verdicts.values().all(|verdict| verdict == "up")
                    })
                })
        });
        lab
    }

    fn spec(&self, group_toml: &str) -> String {
        vigil_chaos_tests::lab::postgres_spec(self.dir.path(), &self.pg, "main", group_toml, &[]).expect("the spec")
    }

    /// Starts node `id` inside its datacenter.
    pub fn start_node(&mut self, id: u64) {
        start_node(&self.net, self.nodes.get_mut(&id).unwrap());
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill_node(&mut self, id: u64) {
        if let Some(mut child) = self.nodes.get_mut(&id).unwrap().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a vigil CLI command inside `host` against node `id`'s API.
    pub fn cli(&self, host: &str, id: u64, args: &[&str]) -> Output {
        cli(&self.net, &self.nodes[&id], host, args)
    }

    /// The group as seen by the node that has applied the most of the log (a cut-off node
    /// still answers, from a view that no longer moves).
    pub fn group(&self) -> Option<Value> {
        let mut best: Option<(u64, Value)> = None;
        for (id, node) in &self.nodes {
            if node.child.is_none() {
                continue;
            }
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
        self.wait_for_leader_among(&[1, 2, 3]);
    }

    /// Node `id`'s status, if it answers.
    fn status(&self, id: u64) -> Option<Value> {
        let node = &self.nodes[&id];
        let output = self.cli(&node.host, id, &["status", "--json"]);
        serde_json::from_slice::<Value>(&output.stdout).ok()
    }

    /// The group as node `id` sees it, if it answers.
    pub fn group_seen_by(&self, id: u64) -> Option<Value> {
        self.status(id)?["groups"].as_array()?.first().cloned()
    }

    /// The Raft leader, as node 2 sees it.
    pub fn leader(&self) -> u64 {
        self.status(2).and_then(|status| status["leader"]["id"].as_u64()).expect("node 2 knows a leader")
    }

    /// Waits until each of `ids` names the same leader, one of `ids`; that leader.
    pub fn wait_for_leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let named: Vec<Option<u64>> =
                ids.iter().map(|id| self.status(*id).and_then(|status| status["leader"]["id"].as_u64())).collect();
            if let Some(Some(leader)) = named.first()
                && ids.contains(leader)
                && named.iter().all(|other| *other == Some(*leader))
            {
                return *leader;
            }
            assert!(Instant::now() < deadline, "no leader among {ids:?} ({named:?})\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `condition` holds on the group's status.
    pub fn wait_for(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(group) = self.group()
                && condition(&group)
            {
                return group;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; group: {:#}\n{}", self.group().unwrap_or_default(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|(id, node)| format!("--- n{id}\n{}", std::fs::read_to_string(&node.log).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A libpq connection string to the given members, for a client.
    pub fn conninfo(&self, members: &[usize], read_write: bool) -> String {
        let hosts: Vec<String> = members.iter().map(|index| self.pg.address(*index).0).collect();
        let ports: Vec<String> = members.iter().map(|index| self.pg.address(*index).1.to_string()).collect();
        let attrs = if read_write { " target_session_attrs=read-write" } else { "" };
        format!(
            "host={} port={} user=vigil password={VIGIL_PASSWORD} dbname=postgres connect_timeout=1{attrs}",
            hosts.join(","),
            ports.join(",")
        )
    }
}

/// Certificates and a configuration for nodes 1 to 3, node N in `DATACENTERS[N-1]` with its
/// data in `dir/data/nN`, `raft_toml` added to each; nothing started. Shared by the
/// PostgreSQL and Redis labs, and made the chaos lab's way.
pub fn node_configs(net: &NetLab, dir: &tempfile::TempDir, raft_toml: &str) -> BTreeMap<u64, DcNode> {
    vigil_chaos_tests::lab::write_node_configs(&vigil_bin(), net, dir.path(), raft_toml).expect("node configurations")
}

/// Starts `node` inside its datacenter, its output appended to its log.
pub fn start_node(net: &NetLab, node: &mut DcNode) {
    vigil_chaos_tests::lab::start_vigil(net, &vigil_bin(), node).expect("start vigil in its datacenter");
}

/// Runs a vigil CLI command inside `host` against `node`'s API.
pub fn cli(net: &NetLab, node: &DcNode, host: &str, args: &[&str]) -> Output {
    let mut command = net.command(host, vigil_bin());
    command.args(args).arg("--config").arg(&node.config);
    command.output().expect("run the vigil CLI in the lab")
}

impl Drop for DcLab {
    fn drop(&mut self) {
        stop_nodes(&mut self.nodes, self.dir.path());
    }
}

/// Kills the lab's nodes and the fence guards they started (data in `dir/data/nN`): first of
/// all, so none of them acts on the servers while they are taken down.
pub fn stop_nodes(nodes: &mut BTreeMap<u64, DcNode>, dir: &std::path::Path) {
    for (id, node) in nodes.iter_mut() {
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        super::kill_fence_guard(&dir.join(format!("data/n{id}")));
    }
}

/// A client inserting one row every 10 ms from inside a host, recording the instant of every
/// acknowledged insert and the server (port and address) that acknowledged it.
pub struct LabWriter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<(Instant, String, i64)>>>,
}

impl LabWriter {
    /// Starts writing ids from `first_id` into table `writes` through `conninfo`.
    pub fn start(net: &Arc<NetLab>, host: &str, conninfo: String, first_id: i64) -> LabWriter {
        Self::spawn(net, host, move |stopping| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(write_until(conninfo, first_id, stopping))
        })
    }

    /// Runs `write` inside `host` on a thread of its own until told to stop (the flag it is
    /// given), collecting what it acknowledged: any kind of writer.
    pub fn spawn(
        net: &Arc<NetLab>,
        host: &str,
        write: impl FnOnce(Arc<AtomicBool>) -> Vec<(Instant, String, i64)> + Send + 'static,
    ) -> LabWriter {
        let stop = Arc::new(AtomicBool::new(false));
        let (net, host, stopping) = (net.clone(), host.to_string(), stop.clone());
        let handle =
            std::thread::spawn(move || net.run_in(&host, move || write(stopping)).expect("writer in its namespace"));
        LabWriter { stop, handle: Some(handle) }
    }

    /// Stops and returns every acknowledged insert: when, which server, which id.
    pub fn finish(mut self) -> Vec<(Instant, String, i64)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().map(|handle| handle.join().unwrap()).unwrap_or_default()
    }
}

impl Drop for LabWriter {
    fn drop(&mut self) {
        // A test that fails before `finish` must still stop the writer: it holds the lab's
        // namespaces, which are only removed once nothing uses them.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

async fn write_until(conninfo: String, first_id: i64, stop: Arc<AtomicBool>) -> Vec<(Instant, String, i64)> {
    let mut acknowledged = Vec::new();
    let mut next = first_id;
    let mut client: Option<(tokio_postgres::Client, String)> = None;
    while !stop.load(Ordering::SeqCst) {
        if client.is_none() {
            let connected =
                tokio::time::timeout(Duration::from_secs(2), tokio_postgres::connect(&conninfo, tokio_postgres::NoTls))
                    .await;
            match connected {
                Ok(Ok((connected, connection))) => {
                    tokio::spawn(connection);
                    let server = connected
                        .query_one("SELECT host(inet_server_addr()) || ':' || inet_server_port()", &[])
                        .await
                        .map(|row| row.get::<_, String>(0))
                        .unwrap_or_default();
                    client = Some((connected, server));
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let (connection, server) = client.as_ref().unwrap();
        let id = next;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
        let insert = connection.execute("INSERT INTO writes VALUES ($1, now())", &params);
        match tokio::time::timeout(Duration::from_secs(2), insert).await {
            Ok(Ok(_)) => acknowledged.push((Instant::now(), server.clone(), next)),
            // Not acknowledged: it may or may not exist; the id is never used again.
            _ => client = None,
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acknowledged
}
