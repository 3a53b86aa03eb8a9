//! The node configuration file (TOML): parsing and validation.
//!
//! Validation runs in full before the daemon binds a port or writes to its data dir, and
//! `vigil check-config` runs exactly the same code. Every error names the field (as a TOML
//! path such as `initial_members[2].raft_addr`) or the file at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vigil_consensus::allow::{AllowList, plain_absolute};
use vigil_consensus::node::{NodeSetup, RaftSettings};
use vigil_consensus::spec::MAX_TIMING;
use vigil_consensus::tls::{Identity, TlsPaths};
use vigil_consensus::{NodeId, NodeInfo};

/// A configuration error: which field or file, and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The configuration file.
    pub file: String,
    /// The TOML path of the field at fault, or the file it names.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

/// The node configuration as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The cluster's name; nodes of another cluster are refused.
    pub cluster_name: String,
    /// Where this node keeps its Raft log and snapshots.
    pub data_dir: PathBuf,
    /// This node.
    pub node: RawNode,
    /// TLS files.
    pub tls: RawTls,
    /// Raft timings.
    #[serde(default)]
    pub raft: RawRaft,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Wait to be added with `vigil members add` instead of bootstrapping.
    #[serde(default)]
    pub join: bool,
    /// The voters the cluster is bootstrapped with.
    #[serde(default)]
    pub initial_members: Vec<RawMember>,
    /// What the replicated spec may make this node do.
    #[serde(default)]
    pub allow: RawAllow,
}

/// The `[allow]` table: what the replicated spec may make this node run and read. Whatever
/// an admin applies, this node runs no other program and reads no other secret.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAllow {
    /// Members' `start_command` and `stop_command`, exactly as the spec writes them.
    pub commands: Vec<String>,
    /// Groups' `bin_dir`: where `pg_ctl`, `pg_rewind` and `pg_basebackup` are run from.
    pub bin_dirs: Vec<String>,
    /// Groups' `run_as`: the OS users those programs run as.
    pub run_as: Vec<String>,
    /// Directories the data directories of members beside this node are in.
    pub data_dirs: Vec<String>,
    /// Directories (or files) secrets and TLS files are read from.
    pub secret_files: Vec<String>,
    /// Environment variables secrets are read from.
    pub secret_env: Vec<String>,
}

impl Default for RawAllow {
    /// Debian's PostgreSQL layout, secrets under `/etc/vigil/secrets`, and no command.
    fn default() -> Self {
        Self {
            commands: Vec::new(),
            bin_dirs: (13..=17).map(|version| format!("/usr/lib/postgresql/{version}/bin")).collect(),
            run_as: vec!["postgres".to_string()],
            data_dirs: vec!["/var/lib/postgresql".to_string()],
            secret_files: vec!["/etc/vigil/secrets".to_string()],
            secret_env: Vec::new(),
        }
    }
}

/// The `[node]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Node id, unique and never reused.
    pub id: NodeId,
    /// Node name, unique.
    pub name: String,
    /// Datacenter label.
    pub datacenter: String,
    /// QUIC (UDP) address for Raft, `IP:PORT`.
    pub raft_addr: String,
    /// HTTPS (TCP) address of the API, `IP:PORT`.
    pub api_addr: String,
}

/// The `[tls]` table. Relative paths are relative to the configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// The `[raft]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRaft {
    /// Leader heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Shortest election timeout.
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    /// Longest election timeout.
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    /// Entries between snapshots.
    pub snapshot_after_entries: u64,
}

impl Default for RawRaft {
    fn default() -> Self {
        let defaults = RaftSettings::default();
        Self {
            heartbeat_interval: defaults.heartbeat_interval,
            election_timeout_min: defaults.election_timeout.0,
            election_timeout_max: defaults.election_timeout.1,
            snapshot_after_entries: defaults.snapshot_after_entries,
        }
    }
}

/// The default log filter: vigil at info; openraft only for warnings, because its info
/// lines dump whole internal states.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

/// The `[log]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,vigil=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: DEFAULT_LOG_FILTER.to_string() }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `[[initial_members]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    /// Node id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Datacenter label.
    pub datacenter: String,
    /// QUIC (UDP) address for Raft.
    pub raft_addr: String,
    /// HTTPS (TCP) address of the API.
    pub api_addr: String,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The cluster's name.
    pub cluster_name: String,
    /// This node's id.
    pub id: NodeId,
    /// This node as the cluster will know it.
    pub info: NodeInfo,
    /// Where the QUIC endpoint binds.
    pub raft_addr: SocketAddr,
    /// Where the HTTPS API binds.
    pub api_addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The loaded and checked TLS identity.
    pub identity: Identity,
    /// Raft timings.
    pub raft: RaftSettings,
    /// Logging.
    pub log: LogConfig,
    /// The bootstrap voters; empty when joining.
    pub initial_members: BTreeMap<NodeId, NodeInfo>,
    /// What the replicated spec may make this node do.
    pub allow: AllowList,
}

impl NodeConfig {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text` as the configuration file at `path` (relative paths in it are
    /// relative to `path`'s directory).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = text.to_string();
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError {
            file: file.clone(),
            field: e
                .span()
                .map(|span| crate::toml_field::describe_span(&text, span))
                .unwrap_or_else(|| "(file)".to_string()),
            message: e.message().trim().to_string(),
        })?;
        validate(raw, path)
    }

    /// What [`vigil_consensus::node::RaftNode::start`] needs.
    pub fn node_setup(&self) -> NodeSetup {
        NodeSetup {
            cluster_name: self.cluster_name.clone(),
            id: self.id,
            info: self.info.clone(),
            bind_addr: self.raft_addr,
            data_dir: self.data_dir.clone(),
            identity: self.identity.clone(),
            raft: self.raft.clone(),
            initial_members: self.initial_members.clone(),
        }
    }
}

struct Checker {
    file: String,
}

impl Checker {
    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), field: field.into(), message: message.into() }
    }

    fn non_empty(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        if value.trim().is_empty() { Err(self.error(field, "must not be empty")) } else { Ok(()) }
    }

    fn socket_addr(&self, field: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| self.error(field, format!("expected IP:PORT such as 127.0.0.1:7100, got {value:?}")))
    }

    /// The allow-list, its paths checked: absolute, without `.` or `..`. The node's own key
    /// is never read for the spec, whatever directory holds it.
    fn allow(&self, raw: &RawAllow, key: &Path) -> Result<AllowList, ConfigError> {
        for (name, paths) in
            [("bin_dirs", &raw.bin_dirs), ("data_dirs", &raw.data_dirs), ("secret_files", &raw.secret_files)]
        {
            for (index, path) in paths.iter().enumerate() {
                if !plain_absolute(path) {
                    return Err(self.error(
                        format!("allow.{name}[{index}]"),
                        format!("expected an absolute path without . or .., got {path:?}"),
                    ));
                }
            }
        }
        for (name, values) in [("commands", &raw.commands), ("run_as", &raw.run_as), ("secret_env", &raw.secret_env)] {
            if let Some(index) = values.iter().position(|value| value.trim().is_empty()) {
                return Err(self.error(format!("allow.{name}[{index}]"), "must not be empty"));
            }
        }
        let key = std::fs::canonicalize(key).unwrap_or_else(|_| key.to_path_buf());
        let set = |values: &Vec<String>| values.iter().cloned().collect();
        Ok(AllowList {
            commands: set(&raw.commands),
            bin_dirs: set(&raw.bin_dirs),
            run_as: set(&raw.run_as),
            data_dirs: set(&raw.data_dirs),
            secret_files: set(&raw.secret_files),
            secret_env: set(&raw.secret_env),
            never_read: [key.display().to_string()].into(),
        })
    }

    fn member(&self, field: &str, member: &RawMember) -> Result<NodeInfo, ConfigError> {
        if member.id == 0 {
            return Err(self.error(format!("{field}.id"), "node ids start at 1"));
        }
        self.non_empty(&format!("{field}.name"), &member.name)?;
        self.non_empty(&format!("{field}.datacenter"), &member.datacenter)?;
        self.socket_addr(&format!("{field}.raft_addr"), &member.raft_addr)?;
        self.socket_addr(&format!("{field}.api_addr"), &member.api_addr)?;
        Ok(NodeInfo {
            name: member.name.clone(),
            datacenter: member.datacenter.clone(),
            raft_addr: member.raft_addr.clone(),
            api_addr: member.api_addr.clone(),
        })
    }
}

fn validate(raw: RawConfig, path: &Path) -> Result<NodeConfig, ConfigError> {
    let check = Checker { file: path.display().to_string() };
    // A bare file name has an empty parent, which means the current directory.
    let base = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };

    check.non_empty("cluster_name", &raw.cluster_name)?;
    let node = &raw.node;
    let this = RawMember {
        id: node.id,
        name: node.name.clone(),
        datacenter: node.datacenter.clone(),
        raft_addr: node.raft_addr.clone(),
        api_addr: node.api_addr.clone(),
    };
    let info = check.member("node", &this)?;
    let raft_addr = check.socket_addr("node.raft_addr", &node.raft_addr)?;
    let api_addr = check.socket_addr("node.api_addr", &node.api_addr)?;

    let raft = &raw.raft;
    for (field, value) in [
        ("raft.heartbeat_interval", raft.heartbeat_interval),
        ("raft.election_timeout_min", raft.election_timeout_min),
        ("raft.election_timeout_max", raft.election_timeout_max),
    ] {
        if value > MAX_TIMING {
            return Err(check.error(
                field,
                format!(
                    "must be at most {} (got {})",
                    humantime::format_duration(MAX_TIMING),
                    humantime::format_duration(value)
                ),
            ));
        }
    }
    if raft.heartbeat_interval.is_zero() {
        return Err(check.error("raft.heartbeat_interval", "must be longer than 0"));
    }
    if raft.election_timeout_min <= raft.heartbeat_interval * 2 {
        return Err(check.error(
            "raft.election_timeout_min",
            format!(
                "must be more than twice raft.heartbeat_interval ({}), or one late heartbeat starts an election",
                humantime::format_duration(raft.heartbeat_interval)
            ),
        ));
    }
    if raft.election_timeout_max <= raft.election_timeout_min {
        return Err(check.error("raft.election_timeout_max", "must be longer than raft.election_timeout_min"));
    }
    if raft.snapshot_after_entries == 0 {
        return Err(check.error("raft.snapshot_after_entries", "must be at least 1"));
    }

    let mut initial_members = BTreeMap::new();
    let mut names = BTreeSet::new();
    for (index, member) in raw.initial_members.iter().enumerate() {
        let field = format!("initial_members[{index}]");
        let member_info = check.member(&field, member)?;
        if initial_members.insert(member.id, member_info).is_some() {
            return Err(check.error(format!("{field}.id"), format!("node id {} appears twice", member.id)));
        }
        if !names.insert(member.name.clone()) {
            return Err(check.error(format!("{field}.name"), format!("name {:?} appears twice", member.name)));
        }
    }
    if raw.join {
        if !initial_members.is_empty() {
            return Err(
                check.error("initial_members", "must be empty when join = true (a joining node never bootstraps)")
            );
        }
    } else {
        match initial_members.get(&node.id) {
            None if initial_members.is_empty() => {
                return Err(check.error(
                    "initial_members",
                    "must list the voters to bootstrap with (or set join = true to wait for `vigil members add`)",
                ));
            }
            None => {
                return Err(check.error(
                    "node.id",
                    format!(
                        "node {} is not in initial_members (ids there: {})",
                        node.id,
                        initial_members.keys().map(|id| id.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            Some(listed) if *listed != info => {
                return Err(check.error(
                    "node",
                    format!(
                        "differs from this node's entry in initial_members: [node] says {info}, the entry says {listed}"
                    ),
                ));
            }
            Some(_) => {}
        }
    }

    let data_dir = resolve(&raw.data_dir);
    check_data_dir(&check, &data_dir)?;
    check_data_dir_owner(&check, &data_dir, &raw.cluster_name, node.id)?;
    let tls_paths = TlsPaths { ca: resolve(&raw.tls.ca), cert: resolve(&raw.tls.cert), key: resolve(&raw.tls.key) };
    check_key_private(&check, &tls_paths.key)?;
    let identity = Identity::load(&tls_paths).map_err(|e| check.error("tls", e.to_string()))?;
    identity.check_names_node(node.id).map_err(|e| check.error("tls.cert", e.to_string()))?;
    let allow = check.allow(&raw.allow, &tls_paths.key)?;

    Ok(NodeConfig {
        cluster_name: raw.cluster_name.clone(),
        id: node.id,
        info,
        raft_addr,
        api_addr,
        data_dir,
        identity,
        raft: RaftSettings {
            heartbeat_interval: raft.heartbeat_interval,
            election_timeout: (raft.election_timeout_min, raft.election_timeout_max),
            snapshot_after_entries: raft.snapshot_after_entries,
        },
        log: raw.log.clone(),
        initial_members,
        allow,
    })
}

/// The data dir must be a writable directory, or not exist yet under a writable parent.
fn check_data_dir(check: &Checker, data_dir: &Path) -> Result<(), ConfigError> {
    let field = "data_dir";
    match std::fs::metadata(data_dir) {
        Ok(metadata) if !metadata.is_dir() => {
            Err(check.error(field, format!("{} exists and is not a directory", data_dir.display())))
        }
        Ok(metadata) if metadata.permissions().readonly() => {
            Err(check.error(field, format!("{} is read-only", data_dir.display())))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = data_dir.ancestors().skip(1).find(|ancestor| ancestor.exists());
            match parent {
                Some(parent) if parent.is_dir() => Ok(()),
                _ => Err(check
                    .error(field, format!("{} cannot be created: no existing parent directory", data_dir.display()))),
            }
        }
        Err(e) => Err(check.error(field, format!("{}: {e}", data_dir.display()))),
    }
}

/// Refuses a private key that anyone but its owner may read: the node's key is who the node
/// is, to every peer and client.
fn check_key_private(check: &Checker, key: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    // A missing or unreadable key is reported, with its reason, by the TLS loading after this.
    let Ok(metadata) = std::fs::metadata(key) else { return Ok(()) };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(check.error(
            "tls.key",
            format!("{} may be read by others (mode {mode:o}): make it the owner's only (chmod 600)", key.display()),
        ));
    }
    Ok(())
}

/// The file in the data dir that records whose data it holds.
pub const DATA_DIR_OWNER_FILE: &str = "vigil-node.json";

/// Who a data dir belongs to: written on the first start, checked on every start after.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct DataDirOwner {
    /// The cluster.
    pub cluster_name: String,
    /// The node.
    pub node_id: NodeId,
}

/// Refuses a data dir that holds another node's or another cluster's Raft state: starting
/// on it would make this node impersonate that node's log.
fn check_data_dir_owner(check: &Checker, data_dir: &Path, cluster_name: &str, id: NodeId) -> Result<(), ConfigError> {
    let path = data_dir.join(DATA_DIR_OWNER_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(check.error("data_dir", format!("{}: {e}", path.display()))),
    };
    let owner: DataDirOwner = serde_json::from_str(&text)
        .map_err(|e| check.error("data_dir", format!("{} is damaged: {e}", path.display())))?;
    if owner.cluster_name != cluster_name || owner.node_id != id {
        return Err(check.error(
            "data_dir",
            format!(
                "{} holds the data of node {} of cluster {:?}, not node {id} of cluster {cluster_name:?}",
                data_dir.display(),
                owner.node_id,
                owner.cluster_name
            ),
        ));
    }
    Ok(())
}
