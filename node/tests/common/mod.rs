//! A harness that runs real `vigil` processes on loopback for the integration tests.
//!
//! Every process it starts is recorded by PID and killed when the harness is dropped, so a
//! failing test leaves nothing running. Traffic stays on 127.0.0.1.

#![allow(dead_code)]
// Real processes and real waiting: this harness needs the OS clock.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};

pub mod dc_lab;
pub mod pg_lab;
pub mod redis_dc_lab;
pub mod redis_lab;
use nix::unistd::Pid;
use serde_json::Value;

/// The `vigil` binary under test.
pub fn vigil_bin() -> PathBuf {
    // A benchmark may measure another build side by side (`VIGIL_BIN=/path/to/vigil`).
    if let Some(path) = std::env::var_os("VIGIL_BIN") {
        return PathBuf::from(path);
    }
    PathBuf::from(env!("CARGO_BIN_EXE_vigil"))
}

/// Runs `vigil` with `args` and waits for it.
pub fn vigil(args: &[&str]) -> Output {
    Command::new(vigil_bin()).args(args).output().expect("run vigil")
}

/// A port nothing listens on right now, free for both UDP and TCP, and never handed out
/// before in this process: the kernel may give a just-released ephemeral port again, and
/// two nodes of one cluster were once given the same API port that way.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// One node of a test cluster.
pub struct TestNode {
    /// Node id.
    pub id: u64,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// Raft port (UDP).
    pub raft_port: u16,
    /// API port (TCP).
    pub api_port: u16,
    /// The running process, if any.
    pub child: Option<Child>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
}

/// Options for a cluster's node configurations.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Extra TOML appended to every node configuration.
    pub extra_toml: String,
    /// Lines added to the `[allow]` table of every node configuration.
    pub allow_extra: String,
    /// Files allowed as secrets besides the labs' password files.
    pub secret_files: Vec<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        // vigil's defaults, written out so the tests that edit them (bad input) find them.
        Self {
            extra_toml: "[raft]\nheartbeat_interval = \"50ms\"\nelection_timeout_min = \"150ms\"\nelection_timeout_max = \"300ms\"\n".to_string(),
            allow_extra: String::new(),
            secret_files: Vec::new(),
        }
    }
}

/// A cluster of `vigil` processes in a temporary directory.
pub struct TestCluster {
    /// The directory holding certificates, configurations, data and logs.
    pub dir: tempfile::TempDir,
    /// The nodes by id.
    pub nodes: BTreeMap<u64, TestNode>,
    /// Configuration options.
    pub options: ClusterOptions,
}

impl TestCluster {
    /// Certificates and configurations for nodes `1..=count`; nothing started yet.
    pub fn new(count: u64) -> Self {
        Self::with_options(count, ClusterOptions::default())
    }

    /// Like [`TestCluster::new`] with options.
    pub fn with_options(count: u64, options: ClusterOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let certs = dir.path().join("certs");
        let ids: Vec<String> = (1..=count).map(|id| id.to_string()).collect();
        let output =
            vigil(&["certs", "init", "--out", certs.to_str().unwrap(), "--nodes", &ids.join(","), "--cluster", "test"]);
        assert!(output.status.success(), "certs init failed: {}", String::from_utf8_lossy(&output.stderr));
        let mut nodes = BTreeMap::new();
        for id in 1..=count {
            let node = TestNode {
                id,
                config: dir.path().join(format!("n{id}.toml")),
                log: dir.path().join(format!("n{id}.log")),
                raft_port: free_port(),
                api_port: free_port(),
                child: None,
                env: Vec::new(),
            };
            nodes.insert(id, node);
        }
        let cluster = Self { dir, nodes, options };
        for id in 1..=count {
            cluster.write_config(id, &cluster.member_list(), false, "certs");
        }
        cluster
    }

    /// The `[[initial_members]]` entries of every node.
    pub fn member_list(&self) -> String {
        self.nodes
            .values()
            .map(|node| {
                format!(
                    "[[initial_members]]\nid = {id}\nname = \"n{id}\"\ndatacenter = \"dc{id}\"\nraft_addr = \"127.0.0.1:{}\"\napi_addr = \"127.0.0.1:{}\"\n\n",
                    node.raft_port,
                    node.api_port,
                    id = node.id
                )
            })
            .collect()
    }

    /// The `[allow]` table of the nodes: the labs' password files (in the cluster directory,
    /// beside the certificates, which no spec may name), PostgreSQL's data directories under
    /// the temporary directory, the default binaries and user, and the options' extra lines.
    pub fn allow_toml(&self) -> String {
        let secrets: Vec<String> = ["vigil.password", "replication.password", "redis.password"]
            .iter()
            .map(|file| self.dir.path().join(file))
            .chain(self.options.secret_files.iter().cloned())
            .map(|path| format!("\"{}\"", path.display()))
            .collect();
        format!(
            "[allow]\nsecret_files = [{}]\ndata_dirs = [\"{}\"]\n{}\n",
            secrets.join(", "),
            std::env::temp_dir().display(),
            self.options.allow_extra
        )
    }

    /// Writes node `id`'s configuration; `certs_dir` is relative to the cluster directory.
    pub fn write_config(&self, id: u64, members: &str, join: bool, certs_dir: &str) {
        let node = &self.nodes[&id];
        let text = format!(
            "cluster_name = \"test\"\ndata_dir = \"data/n{id}\"\njoin = {join}\n\n\
             [node]\nid = {id}\nname = \"n{id}\"\ndatacenter = \"dc{id}\"\n\
             raft_addr = \"127.0.0.1:{}\"\napi_addr = \"127.0.0.1:{}\"\n\n\
             [tls]\nca = \"{certs_dir}/ca.crt\"\ncert = \"{certs_dir}/node{id}.crt\"\nkey = \"{certs_dir}/node{id}.key\"\n\n\
             [log]\nlevel = \"info,openraft=warn\"\n\n{}\n{}\n{}",
            node.raft_port,
            node.api_port,
            self.options.extra_toml,
            self.allow_toml(),
            if join { String::new() } else { members.to_string() },
        );
        std::fs::write(&node.config, text).unwrap();
    }

    /// Adds node `id` (configuration and ports) that joins an existing cluster.
    pub fn add_joining_node(&mut self, id: u64) {
        let certs = self.dir.path().join("certs");
        let output = vigil(&["certs", "issue", "--dir", certs.to_str().unwrap(), "--node", &id.to_string()]);
        assert!(output.status.success(), "certs issue failed: {}", String::from_utf8_lossy(&output.stderr));
        let node = TestNode {
            id,
            config: self.dir.path().join(format!("n{id}.toml")),
            log: self.dir.path().join(format!("n{id}.log")),
            raft_port: free_port(),
            api_port: free_port(),
            child: None,
            env: Vec::new(),
        };
        self.nodes.insert(id, node);
        self.write_config(id, "", true, "certs");
    }

    /// Makes the joining node `id` (see [`TestCluster::add_joining_node`]) a voter through
    /// node `via` with `vigil members add`, and checks that the command succeeded.
    pub fn add_member(&self, via: u64, id: u64) {
        let (raft, api) = (self.nodes[&id].raft_port, self.nodes[&id].api_port);
        let (id, name, datacenter) = (id.to_string(), format!("n{id}"), format!("dc{id}"));
        let (raft, api) = (format!("127.0.0.1:{raft}"), format!("127.0.0.1:{api}"));
        let args = ["members", "add", &id, &raft, "--api", &api, "--name", &name, "--datacenter", &datacenter];
        let output = self.cli(via, &args);
        assert!(output.status.success(), "members add failed: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// Starts every node.
    pub fn start_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.start(id);
        }
    }

    /// Starts node `id`, appending its output to its log file.
    pub fn start(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        let child = Command::new(vigil_bin())
            .args(["run", "--config", node.config.to_str().unwrap()])
            .envs(node.env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start vigil");
        node.child = Some(child);
    }

    /// Sets an environment variable for node `id`'s next start.
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) {
        self.nodes.get_mut(&id).unwrap().env.push((key.to_string(), value.to_string()));
    }

    /// The node the cluster agrees leads, as seen from any running node.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.child.is_some())
            .find_map(|(id, _)| self.status(*id)?["leader"]["id"].as_u64())
    }

    /// Kills node `id` with SIGKILL and waits for it.
    pub fn kill(&mut self, id: u64) {
        self.signal(id, Signal::SIGKILL);
    }

    /// Freezes node `id` with SIGSTOP: its sockets stay open and nothing answers, as when its
    /// host is cut off.
    pub fn freeze(&self, id: u64) {
        self.send_signal(id, Signal::SIGSTOP);
    }

    /// Lets a frozen node `id` run again (SIGCONT).
    pub fn thaw(&self, id: u64) {
        self.send_signal(id, Signal::SIGCONT);
    }

    fn send_signal(&self, id: u64, signal: Signal) {
        let child = self.nodes[&id].child.as_ref().expect("the node runs");
        kill(Pid::from_raw(child.id() as i32), signal).expect("signal the node");
    }

    /// Stops node `id` with SIGTERM and waits for it to exit cleanly.
    pub fn stop(&mut self, id: u64) {
        self.signal(id, Signal::SIGTERM);
    }

    fn signal(&mut self, id: u64, signal: Signal) {
        let node = self.nodes.get_mut(&id).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
            let status = child.wait().expect("wait for vigil");
            if signal == Signal::SIGTERM {
                assert!(
                    status.success(),
                    "node {id} did not exit cleanly on SIGTERM: {status}; log:\n{}",
                    self.log_of(id)
                );
            }
        }
    }

    /// The log of node `id` so far.
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.nodes[&id].log).unwrap_or_default()
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data/n{id}"))
    }

    /// Runs a CLI command against node `id`'s API using its configuration.
    pub fn cli(&self, id: u64, args: &[&str]) -> Output {
        let config = self.nodes[&id].config.to_str().unwrap().to_string();
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--config", &config]);
        vigil(&full)
    }

    /// Runs a CLI command as the operator (admin certificate) against `endpoints`.
    pub fn cli_as_operator(&self, endpoints: &[u64], args: &[&str]) -> Output {
        self.cli_with_certificate("admin", endpoints, args)
    }

    /// Runs a CLI command with the certificate `name` (`certs/<name>.crt` and `.key`: an
    /// operator's or a node's) against `endpoints`.
    pub fn cli_with_certificate(&self, name: &str, endpoints: &[u64], args: &[&str]) -> Output {
        let certs = self.dir.path().join("certs");
        let endpoint_list: Vec<String> =
            endpoints.iter().map(|id| format!("127.0.0.1:{}", self.nodes[id].api_port)).collect();
        let (ca, cert, key) =
            (certs.join("ca.crt"), certs.join(format!("{name}.crt")), certs.join(format!("{name}.key")));
        let joined = endpoint_list.join(",");
        let mut full: Vec<&str> = args.to_vec();
        full.extend([
            "--endpoint",
            &joined,
            "--ca",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        vigil(&full)
    }

    /// `GET path` on node `id`'s API with the operator certificate: the status code and body.
    pub fn http_get(&self, id: u64, path: &str) -> (u16, String) {
        self.http(id, hyper::Method::GET, path, String::new())
    }

    /// `POST path` with a JSON `body` on node `id`'s API with the operator certificate: the
    /// status code and body.
    pub fn http_post(&self, id: u64, path: &str, body: String) -> (u16, String) {
        self.http(id, hyper::Method::POST, path, body)
    }

    fn http(&self, id: u64, method: hyper::Method, path: &str, body: String) -> (u16, String) {
        let certs = self.dir.path().join("certs");
        let identity = vigil_consensus::tls::Identity::load(&vigil_consensus::tls::TlsPaths {
            ca: certs.join("ca.crt"),
            cert: certs.join("admin.crt"),
            key: certs.join("admin.key"),
        })
        .expect("operator identity");
        let endpoint = format!("127.0.0.1:{}", self.nodes[&id].api_port);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let client = vigil::api::client::ApiClient::new(&identity, vec![endpoint]).expect("client");
            let mut session = client.session().await.expect("session");
            let (status, body) =
                session.exchange(method, path, bytes::Bytes::from(body)).await.expect("request answered");
            (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// Node `id`'s `vigil status --json`, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        let output = self.cli(id, &["status", "--json"]);
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Waits until every listed node reports the same leader and term; returns them.
    pub fn wait_for_agreed_leader(&self, ids: &[u64], timeout: Duration) -> (u64, u64) {
        self.wait_for_leader_where(ids, timeout, |_, _| true)
    }

    /// Waits until every listed node reports the same leader and term, and `accept(leader,
    /// term)` holds; returns them.
    pub fn wait_for_leader_where(
        &self,
        ids: &[u64],
        timeout: Duration,
        accept: impl Fn(u64, u64) -> bool,
    ) -> (u64, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<Option<(u64, u64)>> = ids
                .iter()
                .map(|id| {
                    let status = self.status(*id)?;
                    Some((status["leader"]["id"].as_u64()?, status["term"].as_u64()?))
                })
                .collect();
            if let Some(Some(first)) = views.first()
                && views.iter().all(|view| view.as_ref() == Some(first))
                && accept(first.0, first.1)
            {
                return *first;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = ids.iter().map(|id| format!("--- n{id}\n{}", self.log_of(*id))).collect();
                panic!("no agreed leader among {ids:?} within {timeout:?}: {views:?}\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a note through node `id` and returns its log index.
    pub fn note(&self, id: u64, text: &str) -> u64 {
        let output = self.cli(id, &["note", text]);
        assert!(output.status.success(), "note failed: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout.trim().rsplit(' ').next().unwrap().parse().expect("log index in the note receipt")
    }

    /// The note texts in node `id`'s history.
    pub fn notes(&self, id: u64) -> Vec<String> {
        let output = self.cli(id, &["history", "--json"]);
        let history: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        history["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|event| event["kind"]["kind"] == "note")
                    .filter_map(|event| event["kind"]["text"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `condition` holds, polling; panics with `what` after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        for id in self.nodes.keys() {
            kill_fence_guard(&self.data_dir(*id));
        }
    }
}

/// Ends the fence guard a node started in `data_dir`, found by the pid file it writes (the
/// guard outlives its node on purpose, so a test must end it itself).
pub fn kill_fence_guard(data_dir: &Path) {
    let pid_file = data_dir.join("fence-guard.pid");
    if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|text| text.trim().parse::<i32>().ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// A failover run's steps as `vigil history` gives them, one `step -> status` each: what each
/// did (how the old primary's lease ended, above all) explains a benchmark run's times.
pub fn describe_steps(run: &Value) -> String {
    let steps: Vec<String> = run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|step| format!("{} -> {}", step["step"], step["status"]))
        .collect();
    steps.join("; ")
}
