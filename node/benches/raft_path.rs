//! Benchmark of the Raft path: three `vigil` processes on loopback, and etcd (the peer,
//! when installed) measured the same way in the same run.
//!
//! Measures commit latency of small proposals (median, p99), throughput with concurrent
//! clients, and idle CPU and RSS per node; prints the figures and writes them into
//! BENCHMARKS.md between its markers. Run: `cargo bench -p vigil --bench raft_path`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hyper::Method;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use vigil::api::client::{ApiClient, ApiSession};
use vigil_consensus::tls::{Identity, TlsPaths};

const SEQUENTIAL_PROPOSALS: usize = 2_000;
const WARMUP_PROPOSALS: usize = 200;
const CONCURRENT_CLIENTS: usize = 16;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(5);
const IDLE_WINDOW: Duration = Duration::from_secs(10);
const LEADER_KILLS: usize = 10;

/// One system under test, reduced to what the benchmark needs.
struct Figures {
    name: &'static str,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    throughput: f64,
    idle_cpu_percent: Vec<f64>,
    idle_rss_mb: Vec<f64>,
    loaded_rss_mb: Vec<f64>,
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    utime + stime
}

async fn idle_cpu_percent(pids: &[u32]) -> Vec<f64> {
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let before: Vec<u64> = pids.iter().map(|pid| cpu_ticks(*pid)).collect();
    tokio::time::sleep(IDLE_WINDOW).await;
    pids.iter()
        .zip(before)
        .map(|(pid, start)| (cpu_ticks(*pid) - start) as f64 / ticks_per_second / IDLE_WINDOW.as_secs_f64() * 100.0)
        .collect()
}

/// A way to open a client session to the leader and make one small proposal.
trait Target: Send + Sync {
    fn session(&self) -> impl Future<Output = ApiSession> + Send;
    fn proposal(&self, n: usize) -> (&'static str, Bytes);
}

async fn propose(session: &mut ApiSession, target: &impl Target, n: usize) -> Duration {
    let (path, body) = target.proposal(n);
    let started = Instant::now();
    let (status, answer) = session.exchange(Method::POST, path, body).await.expect("proposal sent");
    assert!(status.is_success(), "proposal refused: {status} {}", String::from_utf8_lossy(&answer));
    started.elapsed()
}

async fn measure(name: &'static str, target: Arc<impl Target + 'static>, pids: &[u32]) -> Figures {
    let idle_rss_mb = pids.iter().map(|pid| rss_mb(*pid)).collect();
    let mut session = target.session().await;
    for n in 0..WARMUP_PROPOSALS {
        propose(&mut session, target.as_ref(), n).await;
    }
    let mut latencies = Vec::with_capacity(SEQUENTIAL_PROPOSALS);
    for n in 0..SEQUENTIAL_PROPOSALS {
        latencies.push(propose(&mut session, target.as_ref(), n).await);
    }
    latencies.sort();

    let deadline = Instant::now() + THROUGHPUT_WINDOW;
    let workers: Vec<_> = (0..CONCURRENT_CLIENTS)
        .map(|worker| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut session = target.session().await;
                let mut done = 0usize;
                while Instant::now() < deadline {
                    propose(&mut session, target.as_ref(), worker * 1_000_000 + done).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.expect("worker");
    }
    let loaded_rss_mb = pids.iter().map(|pid| rss_mb(*pid)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu_percent = idle_cpu_percent(pids).await;
    Figures {
        name,
        median_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: percentile(&latencies, 1.0),
        throughput: total as f64 / THROUGHPUT_WINDOW.as_secs_f64(),
        idle_cpu_percent,
        idle_rss_mb,
        loaded_rss_mb,
    }
}

struct VigilTarget {
    client: ApiClient,
}

impl Target for VigilTarget {
    async fn session(&self) -> ApiSession {
        self.client.session().await.expect("vigil session")
    }

    fn proposal(&self, n: usize) -> (&'static str, Bytes) {
        let body = serde_json::json!({ "author": "bench", "text": format!("proposal {n}") });
        ("/notes", Bytes::from(body.to_string()))
    }
}

async fn bench_vigil() -> (Figures, common::TestCluster) {
    let mut cluster = common::TestCluster::new(3);
    cluster.start_all();
    let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3], Duration::from_secs(20));
    let certs = cluster.dir.path().join("certs");
    let identity = Identity::load(&TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("admin.crt"),
        key: certs.join("admin.key"),
    })
    .expect("operator identity");
    let endpoint = format!("127.0.0.1:{}", cluster.nodes[&leader].api_port);
    let client = ApiClient::new(&identity, vec![endpoint]).expect("client");
    // Let start-up settle before reading idle memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids: Vec<u32> = cluster.nodes.values().map(|node| node.child.as_ref().unwrap().id()).collect();
    let figures = measure("vigil", Arc::new(VigilTarget { client }), &pids).await;
    (figures, cluster)
}

struct EtcdTarget {
    connector: TlsConnector,
    endpoint: String,
}

impl Target for EtcdTarget {
    async fn session(&self) -> ApiSession {
        ApiSession::open(&self.connector, &self.endpoint, "localhost").await.expect("etcd session")
    }

    fn proposal(&self, n: usize) -> (&'static str, Bytes) {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let body = serde_json::json!({ "key": b64(format!("bench/{n}").as_bytes()), "value": b64(b"proposal") });
        ("/v3/kv/put", Bytes::from(body.to_string()))
    }
}

struct EtcdCluster {
    children: Vec<Child>,
    client_ports: Vec<u16>,
    _dir: tempfile::TempDir,
    certs: PathBuf,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }
}

fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"].iter().map(PathBuf::from).find(|path| path.exists())
}

fn start_etcd(binary: &Path) -> EtcdCluster {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let output =
        common::vigil(&["certs", "init", "--out", certs.to_str().unwrap(), "--nodes", "1,2,3", "--san", "127.0.0.1"]);
    assert!(output.status.success());
    let peer_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let client_ports: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let initial: Vec<String> = (0..3).map(|i| format!("e{}=https://127.0.0.1:{}", i + 1, peer_ports[i])).collect();
    let children = (0..3)
        .map(|i| {
            let id = i + 1;
            let cert = certs.join(format!("node{id}.crt"));
            let key = certs.join(format!("node{id}.key"));
            let ca = certs.join("ca.crt");
            let log = std::fs::File::create(dir.path().join(format!("etcd{id}.log"))).unwrap();
            Command::new(binary)
                .args(["--name", &format!("e{id}")])
                .args(["--data-dir", dir.path().join(format!("e{id}")).to_str().unwrap()])
                .args(["--listen-client-urls", &format!("https://127.0.0.1:{}", client_ports[i])])
                .args(["--advertise-client-urls", &format!("https://127.0.0.1:{}", client_ports[i])])
                .args(["--listen-peer-urls", &format!("https://127.0.0.1:{}", peer_ports[i])])
                .args(["--initial-advertise-peer-urls", &format!("https://127.0.0.1:{}", peer_ports[i])])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new", "--initial-cluster-token", "bench"])
                .args(["--cert-file", cert.to_str().unwrap(), "--key-file", key.to_str().unwrap()])
                .args(["--trusted-ca-file", ca.to_str().unwrap(), "--client-cert-auth"])
                .args(["--peer-cert-file", cert.to_str().unwrap(), "--peer-key-file", key.to_str().unwrap()])
                .args(["--peer-trusted-ca-file", ca.to_str().unwrap(), "--peer-client-cert-auth"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd")
        })
        .collect();
    EtcdCluster { children, client_ports, _dir: dir, certs }
}

async fn etcd_leader(connector: &TlsConnector, ports: &[u16]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for port in ports {
            let endpoint = format!("127.0.0.1:{port}");
            let Ok(mut session) = ApiSession::open(connector, &endpoint, "localhost").await else {
                continue;
            };
            let Ok((status, body)) = session.exchange(Method::POST, "/v3/maintenance/status", Bytes::from("{}")).await
            else {
                continue;
            };
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if status.is_success() && value["leader"].is_string() && value["leader"] == value["header"]["member_id"] {
                return endpoint;
            }
        }
        assert!(Instant::now() < deadline, "etcd elected no leader within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bench_etcd() -> Option<(Figures, EtcdCluster)> {
    let binary = etcd_binary()?;
    let etcd = start_etcd(&binary);
    let identity = Identity::load(&TlsPaths {
        ca: etcd.certs.join("ca.crt"),
        cert: etcd.certs.join("admin.crt"),
        key: etcd.certs.join("admin.key"),
    })
    .expect("etcd client identity");
    let config = identity.client_config(&[b"http/1.1"]).expect("client config");
    let connector = TlsConnector::from(Arc::new(config));
    let endpoint = etcd_leader(&connector, &etcd.client_ports).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids: Vec<u32> = etcd.children.iter().map(Child::id).collect();
    let figures = measure("etcd", Arc::new(EtcdTarget { connector, endpoint }), &pids).await;
    Some((figures, etcd))
}

/// The leader of the survivors' shared view, if they all agree on one other than `old`.
async fn agreed_new_leader(sessions: &mut [ApiSession], old: u64) -> Option<u64> {
    let mut agreed = None;
    for session in sessions.iter_mut() {
        let (_, body) = session.exchange(Method::GET, "/status", Bytes::new()).await.ok()?;
        let status: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let leader = status["leader"]["id"].as_u64()?;
        if leader == old || agreed.is_some_and(|agreed| agreed != leader) {
            return None;
        }
        agreed = Some(leader);
    }
    agreed
}

/// Kills the Raft leader with SIGKILL `LEADER_KILLS` times and measures how long the two
/// survivors take to agree on a new leader, polling their APIs every 10 ms.
async fn leader_failover_ms() -> Vec<f64> {
    let mut cluster = common::TestCluster::new(3);
    cluster.start_all();
    let certs = cluster.dir.path().join("certs");
    let identity = Identity::load(&TlsPaths {
        ca: certs.join("ca.crt"),
        cert: certs.join("admin.crt"),
        key: certs.join("admin.key"),
    })
    .expect("operator identity");
    let mut times = Vec::new();
    for _ in 0..LEADER_KILLS {
        let (leader, _) = cluster.wait_for_agreed_leader(&[1, 2, 3], Duration::from_secs(20));
        // Let the cluster settle so each run starts from a steady state.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut sessions = Vec::new();
        for id in (1..=3).filter(|id| *id != leader) {
            let client = ApiClient::new(&identity, vec![format!("127.0.0.1:{}", cluster.nodes[&id].api_port)]).unwrap();
            sessions.push(client.session().await.expect("survivor session"));
        }
        let killed_at = Instant::now();
        cluster.kill(leader);
        loop {
            if agreed_new_leader(&mut sessions, leader).await.is_some() {
                break;
            }
            assert!(killed_at.elapsed() < Duration::from_secs(20), "no new leader within 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        cluster.start(leader);
    }
    times
}

fn list(values: &[f64], decimals: usize) -> String {
    values.iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(" / ")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn report(vigil: &Figures, peer: Option<&Figures>, failover_ms: &[f64]) -> String {
    let mut out = String::new();
    out.push_str("## Raft path: three nodes on loopback\n\n");
    out.push_str(&format!(
        "Reproduce: `cargo bench -p vigil --bench raft_path` (with Debian's `etcd-server` installed for the peer). \
         Measured {} with {} sequential proposals after {} of warm-up, then {} clients for {} s, then {} s idle.\n\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        SEQUENTIAL_PROPOSALS,
        WARMUP_PROPOSALS,
        CONCURRENT_CLIENTS,
        THROUGHPUT_WINDOW.as_secs(),
        IDLE_WINDOW.as_secs()
    ));
    out.push_str(
        "A proposal is one small write sent over a kept-alive HTTPS connection (mutual TLS) to the leader and \
         answered after it is committed by a majority (each node fsyncs its log) and applied: `POST /notes` for \
         vigil, `POST /v3/kv/put` through the JSON gateway for etcd, which also runs with client and peer TLS.\n\n",
    );
    out.push_str("| | commit median | commit p99 | commit max | throughput | idle CPU per node | idle RSS per node | RSS after load |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for figures in std::iter::once(vigil).chain(peer) {
        out.push_str(&format!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} /s | {} % | {} MB | {} MB |\n",
            figures.name,
            figures.median_ms,
            figures.p99_ms,
            figures.max_ms,
            figures.throughput,
            list(&figures.idle_cpu_percent, 2),
            list(&figures.idle_rss_mb, 1),
            list(&figures.loaded_rss_mb, 1),
        ));
    }
    match peer {
        Some(peer) => out.push_str(&format!(
            "\nRatios vigil / etcd (below 1 is better for vigil, except throughput): commit median {:.2}, p99 {:.2}, \
             throughput {:.2}, idle RSS {:.2}.\n",
            vigil.median_ms / peer.median_ms,
            vigil.p99_ms / peer.p99_ms,
            vigil.throughput / peer.throughput,
            median(&vigil.idle_rss_mb) / median(&peer.idle_rss_mb),
        )),
        None => out.push_str("\netcd was not installed, so no peer was measured in this run.\n"),
    }
    let mut sorted = failover_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    out.push_str(&format!(
        "\nRaft leader failover: the leader killed with SIGKILL {} times; time until both survivors' APIs name \
         the same new leader (default settings: election timeout 250 to 500 ms, heartbeat 50 ms): median {:.0} ms, max {:.0} ms \
         (each run: {} ms).\n",
        sorted.len(),
        median(&sorted),
        sorted.last().copied().unwrap_or(0.0),
        failover_ms.iter().map(|ms| format!("{ms:.0}")).collect::<Vec<_>>().join(", ")
    ));
    out.push_str(&format!(
        "\nTargets: commit p99 under 5 ms ({}), idle RSS under 30 MB per node ({}).\n",
        if vigil.p99_ms < 5.0 { "met" } else { "NOT met" },
        if vigil.idle_rss_mb.iter().all(|mb| *mb < 30.0) { "met" } else { "NOT met" },
    ));
    out
}

fn write_section(path: &Path, marker: &str, section: &str) {
    let start = format!("<!-- {marker}:start -->");
    let end = format!("<!-- {marker}:end -->");
    let existing = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".to_string());
    let block = format!("{start}\n{section}{end}\n");
    let updated = match (existing.find(&start), existing.find(&end)) {
        (Some(s), Some(e)) => {
            format!("{}{block}{}", &existing[..s], &existing[e + end.len()..].trim_start_matches('\n'))
        }
        _ => format!("{}\n{block}", existing.trim_end()),
    };
    std::fs::write(path, updated).expect("write BENCHMARKS.md");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; nothing else is accepted.
    let (vigil, vigil_cluster) = bench_vigil().await;
    drop(vigil_cluster);
    let peer = bench_etcd().await;
    let failover_ms = leader_failover_ms().await;
    let text = report(&vigil, peer.as_ref().map(|(figures, _)| figures), &failover_ms);
    print!("{text}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    write_section(&path, "raft_path", &text);
    println!("wrote {}", path.display());
}
