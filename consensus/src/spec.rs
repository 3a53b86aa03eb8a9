//! The cluster spec: the groups vigil watches, applied with `vigil apply` and replicated.
//!
//! The spec holds no secret: a password is named by a file path or an environment variable
//! that every node reads locally. Validation is pure (it takes the membership as an
//! argument) so the API node and the state machine run exactly the same checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, NodeInfo};

/// The groups of the cluster, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// PostgreSQL groups with streaming replication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres: Vec<PostgresGroup>,
}

/// Where a secret comes from. Exactly one of the two is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// A file whose content (trailing newline removed) is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An environment variable of the vigil process holding the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, &self.env) {
            (Some(file), _) => write!(f, "file {file}"),
            (None, Some(env)) => write!(f, "environment variable {env}"),
            (None, None) => write!(f, "nothing"),
        }
    }
}

/// A PostgreSQL group: one primary and streaming replicas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresGroup {
    /// The group's name, unique in the cluster.
    pub name: String,
    /// The database vigil connects to.
    #[serde(default = "default_database")]
    pub database: String,
    /// vigil's own role (it needs superuser, or the rights to promote, reload and alter settings).
    pub user: String,
    /// vigil's password.
    pub password: SecretSource,
    /// The role replicas use to stream from the primary.
    pub replication_user: String,
    /// The replication role's password.
    pub replication_password: SecretSource,
    /// A replica further behind than this many bytes of WAL is never promoted automatically.
    pub maximum_lag_on_failover: u64,
    /// A member counts as down for a node only after it has failed every probe for this long.
    #[serde(with = "humantime_serde", default = "default_down_after")]
    pub down_after: Duration,
    /// How often every node probes every member.
    #[serde(with = "humantime_serde", default = "default_probe_interval")]
    pub probe_interval: Duration,
    /// Connect and statement timeout of one probe.
    #[serde(with = "humantime_serde", default = "default_probe_timeout")]
    pub probe_timeout: Duration,
    /// Directory of `pg_ctl` and friends, for host-local control (switchover).
    #[serde(default = "default_bin_dir")]
    pub bin_dir: String,
    /// The OS user that runs `pg_ctl` when vigil runs as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// How long the primary's lease lasts. The node beside the primary renews it through Raft
    /// every quarter of this; a node that cannot renew fences its primary before it runs out,
    /// and no replica is promoted before it has run out.
    #[serde(with = "humantime_serde", default = "default_lease_duration")]
    pub lease_duration: Duration,
    /// How the node beside the primary fences it when it loses its lease.
    #[serde(default)]
    pub fence_method: FenceMethod,
    /// Synchronous replication: `strict` makes every commit wait for a standby that the
    /// cluster has confirmed synchronous, and only such a standby may be promoted.
    #[serde(default)]
    pub synchronous: SyncMode,
    /// Datacenters in order of preference for a new primary, after WAL position and priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenter_preference: Vec<String>,
    /// The members.
    pub members: Vec<PostgresMember>,
}

/// One PostgreSQL server of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresMember {
    /// The member's name, unique in its group.
    pub name: String,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// The name of the vigil node running beside it.
    pub node: String,
    /// Its data directory on that node's host, for host-local control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Higher is preferred between candidates with the same WAL position.
    #[serde(default)]
    pub priority: i32,
    /// Never promote this member automatically.
    #[serde(default)]
    pub nofailover: bool,
}

/// How a primary is fenced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceMethod {
    /// `default_transaction_read_only = on`, reloaded, and every client session terminated:
    /// the server stays up and readable.
    #[default]
    ReadOnly,
    /// The postmaster is stopped (`pg_ctl stop -m immediate`).
    Stop,
}

/// Synchronous replication mode of a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Asynchronous replication: a failover may lose what the replicas had not received.
    #[default]
    Off,
    /// No acknowledged commit is lost: commits wait for a confirmed synchronous standby, only
    /// such a standby is promoted, and with none left writes block.
    Strict,
}

fn default_database() -> String {
    "postgres".to_string()
}

fn default_pg_port() -> u16 {
    5432
}

fn default_bin_dir() -> String {
    "/usr/lib/postgresql/15/bin".to_string()
}

/// Added to the leader's wait on an old primary's lease, on top of the drift bound.
pub const LEASE_SAFETY_MARGIN: Duration = Duration::from_millis(100);

/// Default of `lease_duration`.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_millis(1500);
/// The bound on clock-rate drift between two machines the lease arithmetic allows for:
/// 1 %, far above what NTP-disciplined (or even free-running) quartz clocks drift.
pub const CLOCK_DRIFT_BOUND: f64 = 0.01;

/// Default of `down_after`.
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_millis(600);
/// Default of `probe_interval`.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Default of `probe_timeout`.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

fn default_lease_duration() -> Duration {
    DEFAULT_LEASE_DURATION
}

fn default_down_after() -> Duration {
    DEFAULT_DOWN_AFTER
}

fn default_probe_interval() -> Duration {
    DEFAULT_PROBE_INTERVAL
}

fn default_probe_timeout() -> Duration {
    DEFAULT_PROBE_TIMEOUT
}

/// A spec that cannot be applied: the field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The path of the field, such as `postgres[0].members[2].node`.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

impl ClusterSpec {
    /// Checks the spec against the cluster's nodes. Pure: reads no file and no clock.
    pub fn validate(&self, nodes: &BTreeMap<NodeId, NodeInfo>) -> Result<(), SpecError> {
        let node_names: BTreeSet<&str> = nodes.values().map(|node| node.name.as_str()).collect();
        let mut group_names = BTreeSet::new();
        for (index, group) in self.postgres.iter().enumerate() {
            let field = format!("postgres[{index}]");
            group.validate(&field, &node_names)?;
            if !group_names.insert(group.name.as_str()) {
                return Err(error(format!("{field}.name"), format!("group name {:?} is used twice", group.name)));
            }
        }
        Ok(())
    }

    /// The PostgreSQL group named `name`.
    pub fn postgres_group(&self, name: &str) -> Option<&PostgresGroup> {
        self.postgres.iter().find(|group| group.name == name)
    }
}

fn check_name(field: &str, value: &str) -> Result<(), SpecError> {
    let valid = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(error(field, format!("expected 1 to 63 letters, digits, '-' or '_', got {value:?}")))
    }
}

fn check_secret(field: &str, secret: &SecretSource) -> Result<(), SpecError> {
    match (&secret.file, &secret.env) {
        (Some(_), Some(_)) => Err(error(field, "give either file or env, not both")),
        (None, None) => Err(error(field, "give file = \"PATH\" or env = \"VARIABLE\"")),
        (Some(file), None) if !file.starts_with('/') => {
            Err(error(format!("{field}.file"), format!("expected an absolute path, got {file:?}")))
        }
        (None, Some(env)) if env.is_empty() => Err(error(format!("{field}.env"), "must not be empty")),
        _ => Ok(()),
    }
}

impl PostgresGroup {
    fn validate(&self, field: &str, node_names: &BTreeSet<&str>) -> Result<(), SpecError> {
        check_name(&format!("{field}.name"), &self.name)?;
        if self.user.is_empty() {
            return Err(error(format!("{field}.user"), "must not be empty"));
        }
        if self.replication_user.is_empty() {
            return Err(error(format!("{field}.replication_user"), "must not be empty"));
        }
        check_secret(&format!("{field}.password"), &self.password)?;
        check_secret(&format!("{field}.replication_password"), &self.replication_password)?;
        if self.probe_interval < Duration::from_millis(50) {
            return Err(error(format!("{field}.probe_interval"), "must be at least 50ms"));
        }
        if self.probe_timeout.is_zero() {
            return Err(error(format!("{field}.probe_timeout"), "must be longer than 0"));
        }
        if self.down_after < self.probe_interval {
            return Err(error(
                format!("{field}.down_after"),
                format!(
                    "must be at least probe_interval ({}), or one failed probe would count as down",
                    humantime::format_duration(self.probe_interval)
                ),
            ));
        }
        if self.lease_duration < self.probe_interval * 3 {
            return Err(error(
                format!("{field}.lease_duration"),
                format!(
                    "must be at least three probe intervals ({}): the lease is renewed every quarter of it and a \
                     shorter lease would fence a healthy primary",
                    humantime::format_duration(self.probe_interval * 3)
                ),
            ));
        }
        if !self.bin_dir.starts_with('/') {
            return Err(error(
                format!("{field}.bin_dir"),
                format!("expected an absolute path, got {:?}", self.bin_dir),
            ));
        }
        if self.members.is_empty() {
            return Err(error(format!("{field}.members"), "a group needs at least one member"));
        }
        if self.synchronous == SyncMode::Strict && self.members.iter().filter(|member| !member.nofailover).count() < 2 {
            return Err(error(
                format!("{field}.synchronous"),
                "strict synchronous mode needs at least two members that may be promoted: with one, every write \
                 would wait for a standby that does not exist",
            ));
        }
        let mut names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (index, member) in self.members.iter().enumerate() {
            let member_field = format!("{field}.members[{index}]");
            check_name(&format!("{member_field}.name"), &member.name)?;
            if !names.insert(member.name.as_str()) {
                return Err(error(
                    format!("{member_field}.name"),
                    format!("member name {:?} is used twice in group {:?}", member.name, self.name),
                ));
            }
            if member.host.is_empty() {
                return Err(error(format!("{member_field}.host"), "must not be empty"));
            }
            if member.port == 0 {
                return Err(error(format!("{member_field}.port"), "must be between 1 and 65535"));
            }
            if !addresses.insert((member.host.as_str(), member.port)) {
                return Err(error(
                    format!("{member_field}.port"),
                    format!("{}:{} is already another member's address", member.host, member.port),
                ));
            }
            if !node_names.contains(member.node.as_str()) {
                let known: Vec<&str> = node_names.iter().copied().collect();
                return Err(error(
                    format!("{member_field}.node"),
                    format!("no vigil node is named {:?} (nodes: {})", member.node, known.join(", ")),
                ));
            }
            if let Some(data_dir) = &member.data_dir
                && !data_dir.starts_with('/')
            {
                return Err(error(
                    format!("{member_field}.data_dir"),
                    format!("expected an absolute path, got {data_dir:?}"),
                ));
            }
        }
        Ok(())
    }

    /// How long the leader waits, after it last saw the lease renewed, before it counts the
    /// lease as run out: the lease stretched by the clock-drift bound, plus a margin for
    /// applying the renewal late. The holder fences at `lease_duration` minus a margin by its
    /// own clock, counted from before it sent the renewal, so it has fenced by then.
    pub fn lease_wait(&self) -> Duration {
        self.lease_duration.mul_f64(1.0 + CLOCK_DRIFT_BOUND) + LEASE_SAFETY_MARGIN
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&PostgresMember> {
        self.members.iter().find(|member| member.name == name)
    }
}
