//! `vigil demo`: a local three-node cluster on 127.0.0.1 that a newcomer can watch.
//!
//! It writes certificates and configurations into one directory, starts three `vigil run`
//! processes and (unless `--no-postgres`) three PostgreSQL servers with streaming
//! replication and (unless `--no-redis`) three redis-servers, a master and two replicas,
//! under their watch, prints every change of leader, primary and failover, and on Ctrl-C
//! stops exactly the processes it started (by PID) and removes what it made.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use vigil_consensus::tls::{Identity, TlsPaths};

use vigil_chaos_tests::postgres::{PgCluster, REPLICATION_PASSWORD, VIGIL_PASSWORD};
use vigil_chaos_tests::redis::{REDIS_PASSWORD, RedisCluster};

use crate::api::client::ApiClient;
use crate::api::model::{ApplySpecRequest, GroupStatus, StatusReport, WriteReceipt};
use crate::certs;
use crate::exit::Failure;

/// Options of `vigil demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for certificates, configurations, data and logs.
    #[arg(long, default_value = "demo-cluster")]
    pub dir: PathBuf,
    /// First port: node N uses UDP base+N for Raft and TCP base+100+N for its API.
    #[arg(long, default_value_t = 7100)]
    pub base_port: u16,
    /// Keep the directory when stopping.
    #[arg(long)]
    pub keep: bool,
    /// Do not start the PostgreSQL group (three servers with streaming replication).
    #[arg(long)]
    pub no_postgres: bool,
    /// Do not start the Redis group (a master and two replicas).
    #[arg(long)]
    pub no_redis: bool,
}

const NODES: [u64; 3] = [1, 2, 3];
const MARKER: &str = "vigil-demo";

struct DemoNode {
    id: u64,
    config: PathBuf,
    /// The process, until it exits.
    child: Option<Child>,
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    crate::telemetry::init_logging(crate::config::LogFormat::Text, "warn", None);
    prepare_dir(&args.dir)?;
    check_ports(args.base_port)?;
    let dir = args.dir.canonicalize().context("cannot resolve the demo directory")?;
    let certs_dir = dir.join("certs");
    certs::init(&certs_dir, "demo", &NODES, &[], "admin")?;
    let mut nodes = Vec::new();
    for id in NODES {
        let config = dir.join(format!("n{id}.toml"));
        std::fs::write(&config, node_config(id, args.base_port, &dir)).context("cannot write a demo config")?;
        nodes.push(start_node(id, &config, &dir).await?);
    }
    let endpoints: Vec<String> =
        NODES.iter().map(|id| format!("127.0.0.1:{}", api_port(args.base_port, *id))).collect();
    let identity = Identity::load(&TlsPaths {
        ca: certs_dir.join("ca.crt"),
        cert: certs_dir.join("admin.crt"),
        key: certs_dir.join("admin.key"),
    })
    .map_err(|e| Failure::config(e.to_string()))?;
    let client = ApiClient::new(&identity, endpoints.clone())?;
    let postgres = if args.no_postgres { None } else { start_postgres(&dir).await };
    let redis = if args.no_redis { None } else { start_redis(&dir).await };
    let spec = [postgres.as_ref().map(|(_, spec)| spec.as_str()), redis.as_ref().map(|(_, spec)| spec.as_str())]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    let servers = Servers { postgres: postgres.map(|(cluster, _)| cluster), redis: redis.map(|(cluster, _)| cluster) };
    if !spec.is_empty()
        && let Err(error) =
            std::fs::write(dir.join("cluster.toml"), format!("# The demo's groups, written by `vigil demo`.\n{spec}"))
    {
        println!("[demo] no groups: cannot write their spec: {error}");
    }

    let outcome = watch(&client, &mut nodes, &dir, &endpoints, &servers).await;
    stop(&mut nodes).await;
    drop(servers);
    stop_guards(&dir);
    if args.keep {
        println!("kept {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("removed {}", dir.display());
    }
    outcome
}

fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let Ok(marker) = std::fs::read_to_string(dir.join(MARKER)) else {
            bail!("--dir: {} exists and was not made by `vigil demo`; choose another directory", dir.display());
        };
        // The marker names the demo that made it: never clear a directory a demo still runs in.
        let owner = marker.lines().next().and_then(|line| line.strip_prefix("pid ")).and_then(|pid| pid.parse().ok());
        if let Some(pid) = owner
            && kill(Pid::from_raw(pid), None).is_ok()
        {
            bail!("--dir: a demo (pid {pid}) is running in {}; stop it or choose another directory", dir.display());
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear the old demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--dir: cannot create {}", dir.display()))?;
    let marker = format!("pid {}\nmade by vigil demo; removed when the demo stops\n", std::process::id());
    std::fs::write(dir.join(MARKER), marker)?;
    Ok(())
}

fn raft_port(base: u16, id: u64) -> u16 {
    base + id as u16
}

fn api_port(base: u16, id: u64) -> u16 {
    base + 100 + id as u16
}

fn check_ports(base: u16) -> anyhow::Result<()> {
    if base > u16::MAX - 200 {
        bail!("--base-port: {base} leaves no room for the demo's ports; use at most {}", u16::MAX - 200);
    }
    for id in NODES {
        let (raft, api) = (raft_port(base, id), api_port(base, id));
        UdpSocket::bind(("127.0.0.1", raft))
            .with_context(|| format!("--base-port: UDP port {raft} is taken; choose another base port"))?;
        TcpListener::bind(("127.0.0.1", api))
            .with_context(|| format!("--base-port: TCP port {api} is taken; choose another base port"))?;
    }
    Ok(())
}

fn node_config(id: u64, base: u16, dir: &Path) -> String {
    let mut config = format!(
        "# Demo node {id}, written by `vigil demo`.\n\
         cluster_name = \"demo\"\n\
         data_dir = \"data/n{id}\"\n\n\
         [node]\nid = {id}\nname = \"n{id}\"\ndatacenter = \"dc{id}\"\n\
         raft_addr = \"127.0.0.1:{raft}\"\napi_addr = \"127.0.0.1:{api}\"\n\n\
         [tls]\nca = \"certs/ca.crt\"\ncert = \"certs/node{id}.crt\"\nkey = \"certs/node{id}.key\"\n\n\
         # What the spec may make this node read and work in: the demo's password files (not\n\
         # its certificates beside them) and its PostgreSQL data directories; the PostgreSQL\n\
         # binaries and the postgres user are allowed by default.\n\
         [allow]\nsecret_files = [\"{dir}/vigil.password\", \"{dir}/replication.password\", \"{dir}/redis.password\"]\n\
         data_dirs = [\"{tmp}\"]\n",
        raft = raft_port(base, id),
        api = api_port(base, id),
        dir = dir.display(),
        tmp = std::env::temp_dir().display(),
    );
    for member in NODES {
        config.push_str(&format!(
            "\n[[initial_members]]\nid = {member}\nname = \"n{member}\"\ndatacenter = \"dc{member}\"\n\
             raft_addr = \"127.0.0.1:{}\"\napi_addr = \"127.0.0.1:{}\"\n",
            raft_port(base, member),
            api_port(base, member)
        ));
    }
    config
}

async fn start_node(id: u64, config: &Path, dir: &Path) -> anyhow::Result<DemoNode> {
    let log_path = dir.join(format!("n{id}.log"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let exe = std::env::current_exe().context("cannot find the vigil executable")?;
    let child = Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start node {id}"))?;
    Ok(DemoNode { id, config: config.to_path_buf(), child: Some(child) })
}

/// The servers the demo started for its groups.
struct Servers {
    postgres: Option<PgCluster>,
    redis: Option<RedisCluster>,
}

/// Starts three redis-servers (a master, two replicas) and returns them with their part of
/// the spec. Without redis-server installed, the demo runs without them.
async fn start_redis(dir: &Path) -> Option<(RedisCluster, String)> {
    println!("starting three redis-servers (a master and two replicas)...");
    let cluster = match tokio::task::spawn_blocking(|| RedisCluster::start(3)).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(error)) => {
            println!("[demo] no Redis group: {error} (is redis-server installed?)");
            return None;
        }
        Err(error) => {
            println!("[demo] no Redis group: {error}");
            return None;
        }
    };
    let password = dir.join("redis.password");
    if let Err(error) = std::fs::write(&password, REDIS_PASSWORD) {
        println!("[demo] no Redis group: cannot write its password file: {error}");
        return None;
    }
    let mut spec = format!(
        "[[redis]]\nname = \"cache\"\npassword = {{ file = \"{}\" }}\nmaximum_lag_on_failover = 1048576\n",
        password.display()
    );
    for (index, instance) in cluster.instances().iter().enumerate() {
        let (host, port) = cluster.address(index);
        spec.push_str(&format!(
            "\n[[redis.members]]\nname = \"{}\"\nhost = \"{host}\"\nport = {port}\nnode = \"n{}\"\n",
            instance.name,
            index + 1
        ));
    }
    Some((cluster, spec))
}

/// Starts three PostgreSQL servers with streaming replication and returns them with their
/// part of the spec. Without PostgreSQL installed, the demo runs without it.
async fn start_postgres(dir: &Path) -> Option<(PgCluster, String)> {
    println!("starting three PostgreSQL servers with streaming replication...");
    let cluster = match tokio::task::spawn_blocking(|| PgCluster::start(3)).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(error)) => {
            println!("[demo] no PostgreSQL group: {error} (is postgresql-15 installed?)");
            return None;
        }
        Err(error) => {
            println!("[demo] no PostgreSQL group: {error}");
            return None;
        }
    };
    let password = dir.join("vigil.password");
    let replication = dir.join("replication.password");
    let written =
        std::fs::write(&password, VIGIL_PASSWORD).and_then(|_| std::fs::write(&replication, REPLICATION_PASSWORD));
    if let Err(error) = written {
        println!("[demo] no PostgreSQL group: cannot write its password files: {error}");
        return None;
    }
    let spec = demo_spec(&cluster, &password, &replication);
    Some((cluster, spec))
}

fn demo_spec(cluster: &PgCluster, password: &Path, replication: &Path) -> String {
    let mut spec = format!(
        "[[postgres]]\nname = \"main\"\nuser = \"vigil\"\npassword = {{ file = \"{}\" }}\n\
         replication_user = \"replicator\"\nreplication_password = {{ file = \"{}\" }}\n\
         maximum_lag_on_failover = 16777216\nbin_dir = \"{}\"\n",
        password.display(),
        replication.display(),
        cluster.bin_dir().display()
    );
    if let Some(user) = cluster.run_as() {
        spec.push_str(&format!("run_as = \"{user}\"\n"));
    }
    for (index, instance) in cluster.instances().iter().enumerate() {
        spec.push_str(&format!(
            "\n[[postgres.members]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nnode = \"n{}\"\ndata_dir = \"{}\"\n",
            instance.name,
            instance.port,
            index + 1,
            instance.data_dir.display()
        ));
    }
    spec
}

/// Prints what changed in a group since the last look.
fn report_group(group: &GroupStatus, last: &mut (Option<String>, Option<u64>, Option<u64>)) {
    if group.primary != last.0 {
        if let Some(primary) = &group.primary {
            println!("[demo] {}: primary is {primary} (epoch {})", group.name, group.epoch);
        }
        last.0 = group.primary.clone();
    }
    if let Some(run) = &group.running
        && last.1 != Some(run.id)
    {
        println!(
            "[demo] {}: {} #{} started: {} -> {} ({})",
            group.name,
            run.kind,
            run.id,
            run.old_primary.as_deref().unwrap_or("none"),
            run.candidate,
            run.reason
        );
        last.1 = Some(run.id);
    }
    if let Some(run) = &group.last_run
        && last.2 != Some(run.id)
    {
        let took = match (run.detected_at_ms.or(Some(run.decided_at_ms)), run.first_write_at_ms) {
            (Some(start), Some(write)) => format!(", first write {} ms after detection", write.saturating_sub(start)),
            _ => String::new(),
        };
        println!(
            "[demo] {}: {} #{} {}: {}{took}",
            group.name,
            run.kind,
            run.id,
            if run.succeeded == Some(true) { "done" } else { "abandoned" },
            run.outcome.as_deref().unwrap_or("")
        );
        last.2 = Some(run.id);
    }
}

async fn watch(
    client: &ApiClient,
    nodes: &mut [DemoNode],
    dir: &Path,
    endpoints: &[String],
    servers: &Servers,
) -> Result<(), Failure> {
    let mut spec_applied = servers.postgres.is_none() && servers.redis.is_none();
    let mut groups_seen = std::collections::BTreeMap::new();
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "vigil".to_string());
    let mut interrupt =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).context("cannot watch for Ctrl-C")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut announced = false;
    let mut last_leader: Option<(u64, u64)> = None;
    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = ticker.tick() => {}
        }
        for node in nodes.iter_mut() {
            let exited = node.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                // The demo manages only processes it started; one restarted by hand is the
                // operator's, so the demo forgets this one.
                node.child = None;
                println!(
                    "[demo] node n{} exited ({status}); restart it with: {exe} run --config {}",
                    node.id,
                    node.config.display()
                );
            }
        }
        let status: Result<StatusReport, _> = client.get("/status").await;
        let Ok(status) = status else {
            if !announced && started.elapsed() > Duration::from_secs(30) {
                return Err(Failure::other(format!(
                    "the demo cluster did not come up; see the logs in {}",
                    dir.display()
                )));
            }
            continue;
        };
        let leader = status.leader.as_ref().map(|leader| (leader.id, status.term));
        if !spec_applied && leader.is_some() {
            let toml = std::fs::read_to_string(dir.join("cluster.toml")).context("cannot read the demo spec")?;
            let request = ApplySpecRequest { author: "vigil demo".to_string(), toml };
            let applied: Result<WriteReceipt, _> = client.post("/spec", &request).await;
            match applied {
                Ok(_) => spec_applied = true,
                Err(error) => println!("[demo] applying the groups' spec failed, retrying: {error}"),
            }
        }
        if !announced && leader.is_some() && spec_applied {
            announced = true;
            print_instructions(&exe, dir, endpoints, nodes, servers);
        }
        if announced {
            for group in &status.groups {
                report_group(group, groups_seen.entry(group.name.clone()).or_insert((None, None, None)));
            }
        }
        if announced && leader != last_leader {
            match &status.leader {
                Some(node) => println!("[demo] leader is {} (node {}), term {}", node.name, node.id, status.term),
                None => println!("[demo] no leader right now (term {})", status.term),
            }
        }
        last_leader = leader;
    }
}

fn print_instructions(exe: &str, dir: &Path, endpoints: &[String], nodes: &[DemoNode], servers: &Servers) {
    let certs = dir.join("certs");
    println!("vigil demo: a 3-node cluster is running on 127.0.0.1 (files in {})", dir.display());
    println!();
    println!("  see it:        {exe} status --config {}", dir.join("n1.toml").display());
    println!(
        "  as operator:   {exe} status --endpoint {} --ca {} --cert {} --key {}",
        endpoints.join(","),
        certs.join("ca.crt").display(),
        certs.join("admin.crt").display(),
        certs.join("admin.key").display()
    );
    println!("  history:       {exe} history --config {}", dir.join("n1.toml").display());
    println!("  write a note:  {exe} note --config {} \"hello\"", dir.join("n1.toml").display());
    let pids: Vec<String> =
        nodes.iter().filter_map(|node| node.child.as_ref()?.id().map(|pid| format!("n{}={pid}", node.id))).collect();
    println!("  kill a node:   kill -9 <pid>   ({}); kill the leader and watch a new one elected", pids.join(" "));
    println!("  logs:          {}/n1.log n2.log n3.log", dir.display());
    let config = dir.join("n1.toml");
    if let Some(cluster) = &servers.postgres {
        println!();
        println!("  PostgreSQL group \"main\": pg1 (primary) beside n1, pg2 beside n2, pg3 beside n3");
        for instance in cluster.instances() {
            println!(
                "    {}: psql \"host=127.0.0.1 port={} user=vigil password={VIGIL_PASSWORD} dbname=postgres\"",
                instance.name, instance.port
            );
        }
        println!(
            "  fail it over:  kill -9 $(head -1 {}/postmaster.pid)   (pg1's postmaster; watch a replica take over)",
            cluster.instances()[0].data_dir.display()
        );
        println!("  switch over:   {exe} switchover main --to pg2 --config {}", config.display());
        println!("  failovers:     {exe} history main --config {}", config.display());
    }
    if let Some(cluster) = &servers.redis {
        println!();
        println!("  Redis group \"cache\": redis1 (master) beside n1, redis2 beside n2, redis3 beside n3");
        for (index, instance) in cluster.instances().iter().enumerate() {
            let (host, port) = cluster.address(index);
            println!("    {}: redis-cli -h {host} -p {port} -a {REDIS_PASSWORD}", instance.name);
        }
        if let Some(pid) = cluster.pid(0) {
            println!("  fail it over:  kill -9 {pid}   (redis1; watch a replica take over)");
        }
        println!("  switch over:   {exe} switchover cache --to redis2 --config {}", config.display());
    }
    println!();
    println!("Ctrl-C stops the cluster and removes {}.", dir.display());
}

/// Ends the fence guards the demo's nodes started (their servers are gone with the demo).
fn stop_guards(dir: &Path) {
    for id in NODES {
        let pid_file =
            dir.join(format!("data/n{id}")).join(crate::guard::pid_file_of(Path::new(crate::guard::SOCKET_FILE)));
        if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|text| text.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

async fn stop(nodes: &mut [DemoNode]) {
    for child in nodes.iter().filter_map(|node| node.child.as_ref()) {
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for child in nodes.iter_mut().filter_map(|node| node.child.as_mut()) {
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    println!("stopped the demo nodes");
}
