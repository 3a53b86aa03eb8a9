//! The command line: arguments, and the commands that talk to a node's API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vigil_consensus::NodeId;
use vigil_consensus::tls::{Identity, TlsPaths};

use crate::api::client::{ApiClient, ClientError};
use crate::api::model::{
    AddMemberRequest, ApplySpecRequest, FailoverRequest, GroupStatus, HistoryReport, MemberStatus, NoteRequest,
    PauseRequest, RunReceipt, StatusReport, WriteReceipt,
};
use crate::config::{LogFormat, NodeConfig};
use crate::exit::Failure;
use crate::render;
use vigil_consensus::spec::ClusterSpec;

/// vigil: a peer-to-peer failover coordinator for PostgreSQL, Redis and other services.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// vigil's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Run {
        /// The node configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Log format; overrides `[log] format` in the config.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a node configuration file (and its TLS files) without starting anything.
    CheckConfig {
        /// The node configuration file.
        file: PathBuf,
    },
    /// Create or extend the cluster's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Show the cluster as one node sees it.
    Status {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List or change the cluster's members.
    Members {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// Print JSON for scripts.
        #[arg(long, global = true)]
        json: bool,
        /// What to do; lists the members when omitted.
        #[command(subcommand)]
        action: Option<MembersCommand>,
    },
    /// Write a note into the cluster history.
    Note {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// Who writes it.
        #[arg(long, default_value_t = default_author())]
        author: String,
        /// The note.
        text: String,
    },
    /// Show the cluster history: failovers and switchovers, then events.
    History {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// Only this group's failovers (events are not shown then).
        group: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Apply a cluster spec (the groups vigil watches) from a TOML file.
    Apply {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// The spec file.
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Print the cluster spec in force, as TOML.
    Spec {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Stop automatic failover of a group (switchover and failover are refused too).
    Pause {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// The group.
        group: String,
    },
    /// Resume automatic failover of a group.
    Resume {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// The group.
        group: String,
    },
    /// Planned switchover, losing no committed transaction: stop the primary cleanly, let the
    /// candidate catch up, promote it, re-point the others, bring the old primary back as a replica.
    Switchover {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// The group.
        group: String,
        /// The member to promote; the best candidate when omitted.
        #[arg(long)]
        to: Option<String>,
        /// Return once it started instead of waiting for the end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Force a failover to a named member, ignoring the lag policy (data may be lost).
    Failover {
        /// Where to connect.
        #[command(flatten)]
        target: Target,
        /// The group.
        group: String,
        /// The member to promote.
        #[arg(long)]
        to: String,
        /// Confirm: a forced failover may lose the transactions the candidate lacks.
        #[arg(long)]
        yes: bool,
        /// Return once it started instead of waiting for the end.
        #[arg(long)]
        no_wait: bool,
    },
    /// Start a local three-node demo cluster on 127.0.0.1 and stop it with Ctrl-C.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// The fence guard `vigil run` starts beside itself (not for people to run).
    #[command(hide = true)]
    FenceGuard {
        /// The Unix socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// The node it guards for, on every log line.
        #[arg(long)]
        node_id: Option<u64>,
        /// Log line format, as the node's.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
}

/// `vigil certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a new cluster CA, node certificates and an operator certificate.
    Init {
        /// Directory to write into; must not hold certificates already.
        #[arg(long)]
        out: PathBuf,
        /// Node ids, comma-separated, such as 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<NodeId>,
        /// The cluster's name (recorded in the CA's name).
        #[arg(long, default_value = "vigil")]
        cluster: String,
        /// Extra host names or IP addresses for the node certificates (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// The operator certificate's name (it gets the admin role).
        #[arg(long, default_value = "admin")]
        operator: String,
    },
    /// Issue one more certificate from the CA in a directory made by `certs init`.
    Issue {
        /// The directory holding ca.crt and ca.key; the new files go there too.
        #[arg(long)]
        dir: PathBuf,
        /// Issue a node certificate for this id.
        #[arg(long, conflicts_with = "operator", required_unless_present = "operator")]
        node: Option<NodeId>,
        /// Issue an operator certificate with this name.
        #[arg(long, requires = "role")]
        operator: Option<String>,
        /// The operator's role: `viewer` reads, `admin` also changes the cluster.
        #[arg(long, requires = "operator")]
        role: Option<vigil_consensus::authority::Role>,
        /// Extra host names or IP addresses (node certificates only).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

/// `vigil members ...`
#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    Add {
        /// The new node's id.
        id: NodeId,
        /// Its Raft (QUIC) address, IP:PORT.
        raft_addr: String,
        /// Its API address, IP:PORT.
        #[arg(long)]
        api: String,
        /// Its name.
        #[arg(long)]
        name: String,
        /// Its datacenter.
        #[arg(long)]
        datacenter: String,
        /// Keep it a learner (it replicates but does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node (voter or learner).
    Remove {
        /// The node's id.
        id: NodeId,
    },
}

/// Which node to ask and how to authenticate.
#[derive(Debug, Args)]
pub struct Target {
    /// A node configuration file: its API address and TLS files are used.
    #[arg(long, short, env = "VIGIL_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// API endpoints (IP:PORT), comma-separated, tried in order.
    #[arg(long, value_delimiter = ',', env = "VIGIL_ENDPOINT", global = true)]
    pub endpoint: Vec<String>,
    /// Cluster CA certificate (with --endpoint).
    #[arg(long, env = "VIGIL_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (with --endpoint).
    #[arg(long, env = "VIGIL_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (with --endpoint).
    #[arg(long, env = "VIGIL_KEY", global = true)]
    pub key: Option<PathBuf>,
}

fn default_author() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".to_string())
}

impl Target {
    /// A client for this target. With `--config` alone, the node's local socket when it is
    /// there (root on the node's host: an admin), else its API with the node's certificate
    /// (which reads only).
    pub fn client(&self) -> Result<ApiClient, Failure> {
        let (identity, mut endpoints) = match &self.config {
            Some(path) => {
                let config = NodeConfig::load(path).map_err(|e| Failure::config(e.to_string()))?;
                let socket = crate::api::server::local_socket_path(&config.data_dir);
                if self.endpoint.is_empty() {
                    match std::fs::symlink_metadata(&socket) {
                        Ok(_) => return Ok(ApiClient::local(&socket)),
                        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                            return Err(Failure::config(format!(
                                "cannot reach {}: permission denied (the node's data dir and local socket are \
                                 root's: use sudo, or an operator certificate with --endpoint, --ca, --cert and --key)",
                                socket.display()
                            )));
                        }
                        Err(_) => {}
                    }
                }
                (config.identity, vec![config.api_addr.to_string()])
            }
            None => {
                let missing = |flag: &str| {
                    Failure::usage(format!(
                        "{flag} is required with --endpoint (or give --config with a node configuration file)"
                    ))
                };
                let paths = TlsPaths {
                    ca: self.ca.clone().ok_or_else(|| missing("--ca"))?,
                    cert: self.cert.clone().ok_or_else(|| missing("--cert"))?,
                    key: self.key.clone().ok_or_else(|| missing("--key"))?,
                };
                let identity = Identity::load(&paths).map_err(|e| Failure::config(e.to_string()))?;
                (identity, Vec::new())
            }
        };
        if !self.endpoint.is_empty() {
            endpoints = self.endpoint.clone();
        }
        if endpoints.is_empty() {
            return Err(Failure::usage("give --endpoint IP:PORT or --config FILE".to_string()));
        }
        ApiClient::new(&identity, endpoints).map_err(|e| Failure::config(e.to_string()))
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::Unreachable { .. } => Failure::unreachable(error.to_string()),
            ClientError::NoLeader(_) => Failure::no_leader(error.to_string()),
            ClientError::Refused(_) => Failure::refused(error.to_string()),
            ClientError::BadAnswer { .. } => Failure::other(error.to_string()),
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("reports serialize"));
}

/// `vigil status`.
pub async fn status(target: &Target, json: bool) -> Result<(), Failure> {
    let report: StatusReport = target.client()?.get("/status").await?;
    if json {
        print_json(&report);
    } else {
        print!("{}", render::status(&report));
    }
    if report.leader.is_none() {
        return Err(Failure::no_leader(format!(
            "no leader: node {} knows no leader in term {}",
            report.node.name, report.term
        )));
    }
    Ok(())
}

/// `vigil members [add|remove]`.
pub async fn members(target: &Target, json: bool, action: &Option<MembersCommand>) -> Result<(), Failure> {
    let client = target.client()?;
    match action {
        None => {
            let members: Vec<MemberStatus> = client.get("/members").await?;
            if json {
                print_json(&members);
            } else {
                print!("{}", render::members(&members));
            }
        }
        Some(MembersCommand::Add { id, raft_addr, api, name, datacenter, learner }) => {
            let request = AddMemberRequest {
                id: *id,
                name: name.clone(),
                datacenter: datacenter.clone(),
                raft_addr: raft_addr.clone(),
                api_addr: api.clone(),
                learner: *learner,
            };
            let receipt: WriteReceipt = client.post("/members", &request).await?;
            let role = if *learner { "learner" } else { "voter" };
            println!("node {id} added as {role} (log index {})", receipt.log_index);
        }
        Some(MembersCommand::Remove { id }) => {
            let receipt: WriteReceipt = client.delete(&format!("/members/{id}")).await?;
            println!("node {id} removed (log index {})", receipt.log_index);
        }
    }
    Ok(())
}

/// `vigil note`.
pub async fn note(target: &Target, author: &str, text: &str) -> Result<(), Failure> {
    let request = NoteRequest { author: author.to_string(), text: text.to_string() };
    let receipt: WriteReceipt = target.client()?.post("/notes", &request).await?;
    println!("note recorded at log index {}", receipt.log_index);
    Ok(())
}

/// `vigil history [GROUP]`.
pub async fn history(target: &Target, group: Option<&str>, json: bool) -> Result<(), Failure> {
    let mut report: HistoryReport = target.client()?.get("/history").await?;
    if let Some(group) = group {
        if !report.failovers.contains_key(group) {
            return Err(Failure::refused(format!("no group is named {group:?}")));
        }
        report.failovers.retain(|name, _| name == group);
        report.events.clear();
    }
    if json {
        print_json(&report);
    } else {
        print!("{}", render::history(&report));
    }
    Ok(())
}

fn author() -> String {
    default_author()
}

/// `vigil apply -f FILE`.
pub async fn apply(target: &Target, file: &std::path::Path) -> Result<(), Failure> {
    let toml =
        std::fs::read_to_string(file).map_err(|e| Failure::config(format!("{}: cannot read: {e}", file.display())))?;
    // Parse here too, so a malformed file is reported against the file's name.
    crate::spec_file::parse(&toml).map_err(|e| Failure::config(format!("{}: {e}", file.display())))?;
    let request = ApplySpecRequest { author: author(), toml };
    let receipt: WriteReceipt = target.client()?.post("/spec", &request).await.map_err(|error| match error {
        ClientError::Refused(message) => Failure::refused(format!("{}: {message}", file.display())),
        other => Failure::from(other),
    })?;
    println!("spec applied at log index {}", receipt.log_index);
    Ok(())
}

/// `vigil spec`.
pub async fn spec(target: &Target, json: bool) -> Result<(), Failure> {
    let spec: ClusterSpec = target.client()?.get("/spec").await?;
    if json {
        print_json(&spec);
    } else {
        print!("{}", crate::spec_file::render(&spec));
    }
    Ok(())
}

/// `vigil pause GROUP` and `vigil resume GROUP`.
pub async fn set_paused(target: &Target, group: &str, paused: bool) -> Result<(), Failure> {
    let path = format!("/groups/{group}/{}", if paused { "pause" } else { "resume" });
    let _: WriteReceipt = target.client()?.post(&path, &PauseRequest { author: author() }).await?;
    if paused {
        println!("{group}: PAUSED: no automatic failover, switchover or failover until `vigil resume {group}`");
    } else {
        println!("{group}: resumed: automatic failover is on");
    }
    Ok(())
}

/// How long the CLI waits for a switchover or failover to end.
pub const RUN_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// `vigil switchover` and `vigil failover`.
pub async fn start_run(
    target: &Target,
    group: &str,
    to: Option<&str>,
    forced: bool,
    wait: bool,
) -> Result<(), Failure> {
    let client = target.client()?;
    let path = format!("/groups/{group}/{}", if forced { "failover" } else { "switchover" });
    let request = FailoverRequest { to: to.map(str::to_string), author: author() };
    let receipt: RunReceipt = client.post(&path, &request).await?;
    let kind = if forced { "failover" } else { "switchover" };
    println!("{group}: {kind} #{} to {} started (epoch {})", receipt.run_id, receipt.candidate, receipt.epoch);
    if !wait {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + RUN_WAIT;
    let mut printed = 0usize;
    loop {
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::other(format!(
                "{group}: {kind} #{} still running after {} s; follow it with `vigil status`",
                receipt.run_id,
                RUN_WAIT.as_secs()
            )));
        }
        let status: GroupStatus = client.get(&format!("/groups/{group}")).await?;
        let run = match (&status.running, &status.last_run) {
            (Some(run), _) if run.id == receipt.run_id => run.clone(),
            (_, Some(run)) if run.id == receipt.run_id => run.clone(),
            (Some(run), _) | (_, Some(run)) if run.id > receipt.run_id => {
                return Err(Failure::other(format!(
                    "run #{} is no longer shown: run #{} came after it; see `vigil history {group}`",
                    receipt.run_id, run.id
                )));
            }
            // The node answering may not have applied the run yet.
            _ => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        for line in render::run_steps(&run).into_iter().skip(printed) {
            println!("  {line}");
            printed += 1;
        }
        match run.succeeded {
            Some(true) => {
                println!("{group}: {kind} #{} done: {}", run.id, run.outcome.unwrap_or_default());
                return Ok(());
            }
            Some(false) => {
                return Err(Failure::other(format!(
                    "{group}: {kind} #{} abandoned: {}",
                    run.id,
                    run.outcome.unwrap_or_default()
                )));
            }
            None => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
