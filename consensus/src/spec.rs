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
    /// Redis groups: a master and its replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis: Vec<RedisGroup>,
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
    /// every fifth of this; a node that cannot renew fences its primary before it runs out,
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
    /// When `pg_rewind` cannot bring a member back as a replica, re-clone it with
    /// `pg_basebackup` (its old data directory is kept, renamed beside the new one).
    /// Off: the member is left stopped with its data untouched, and status says why.
    #[serde(default)]
    pub allow_reclone: bool,
    /// TLS to the members, for vigil's sessions, its tools and the replicas' streaming.
    /// Without it, plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PgTlsFiles>,
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
    /// Starts the server in place of `pg_ctl start` (`systemctl start postgresql@15-main`),
    /// run by `/bin/sh -c` as vigil's user on that node; vigil then waits for `pg_ctl status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_command: Option<String>,
    /// Stops the server cleanly in place of `pg_ctl stop -m fast`, the same way. Fences
    /// that stop the server still use `pg_ctl stop -m immediate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_command: Option<String>,
    /// Higher is preferred between candidates with the same WAL position.
    #[serde(default)]
    pub priority: i32,
    /// Never promote this member automatically.
    #[serde(default)]
    pub nofailover: bool,
}

/// A Redis group: one master and replicas (`REPLICAOF`), no Sentinel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisGroup {
    /// The group's name, unique in the cluster (across every kind of group).
    pub name: String,
    /// The ACL user vigil authenticates as; without it, the default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The password (`requirepass`, or the ACL user's), if the servers want one. Replicas
    /// log in to their master with their own `masterauth`, which vigil leaves alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretSource>,
    /// TLS to the members (their `tls-port`): files on every node. Without it, plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsFiles>,
    /// A replica further behind than this many bytes of replication offset is never promoted
    /// automatically.
    pub maximum_lag_on_failover: u64,
    /// A member counts as down for a node only after it has failed every probe for this long.
    #[serde(with = "humantime_serde", default = "default_down_after")]
    pub down_after: Duration,
    /// How often every node probes every member.
    #[serde(with = "humantime_serde", default = "default_probe_interval")]
    pub probe_interval: Duration,
    /// Timeout of one probe.
    #[serde(with = "humantime_serde", default = "default_probe_timeout")]
    pub probe_timeout: Duration,
    /// How long the master's lease lasts; as for PostgreSQL, the node beside the master
    /// pauses its writes before it runs out unless it could renew it.
    #[serde(with = "humantime_serde", default = "default_lease_duration")]
    pub lease_duration: Duration,
    /// How the node beside the master fences it when it loses its lease.
    #[serde(default)]
    pub fence_method: RedisFenceMethod,
    /// Second line of defence: vigil sets `min-replicas-to-write` to this on every member, so
    /// a master that has lost its replicas refuses writes by itself (0: not set by vigil).
    #[serde(default)]
    pub min_replicas_to_write: u32,
    /// `min-replicas-max-lag` set with it, in seconds.
    #[serde(default = "default_min_replicas_max_lag")]
    pub min_replicas_max_lag: u32,
    /// Datacenters in order of preference for a new master, after offset and priority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenter_preference: Vec<String>,
    /// The members.
    pub members: Vec<RedisMember>,
}

/// TLS files for a Redis group, read on every node (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsFiles {
    /// The CA that signed the servers' certificates; each names its member's host.
    pub ca: String,
    /// A client certificate, for servers that require one (`tls-auth-clients yes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The client certificate's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// How a PostgreSQL connection uses TLS, as libpq's `sslmode` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgSslMode {
    /// Plain TCP.
    Disable,
    /// TLS, the server's certificate not checked (protects against eavesdropping only).
    Require,
    /// TLS, the server's certificate signed by the CA.
    VerifyCa,
    /// TLS, the server's certificate signed by the CA and naming the member's host.
    #[default]
    VerifyFull,
}

impl PgSslMode {
    /// The name libpq's `sslmode` takes.
    pub fn as_libpq(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS to a group's PostgreSQL servers: files on every node (and, for streaming, on every
/// member's host, readable by the server's OS user).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgTlsFiles {
    /// How the connection uses TLS (`verify-full` unless said otherwise).
    #[serde(default)]
    pub mode: PgSslMode,
    /// The CA that signed the servers' certificates (`sslrootcert`); required to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A client certificate, for servers that require one (`sslcert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// The client certificate's key (`sslkey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl PgTlsFiles {
    /// The libpq keywords that say the same, for `primary_conninfo` and the tools.
    pub fn libpq_words(&self) -> Vec<(&'static str, String)> {
        let mut words = vec![("sslmode", self.mode.as_libpq().to_string())];
        for (keyword, path) in [("sslrootcert", &self.ca), ("sslcert", &self.cert), ("sslkey", &self.key)] {
            if let Some(path) = path {
                words.push((keyword, path.clone()));
            }
        }
        words
    }

    /// Every file it names, with its field name.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)]
            .into_iter()
            .filter_map(|(name, path)| path.as_ref().map(|path| (name, path)))
    }
}

/// One redis-server of a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisMember {
    /// The member's name, unique in its group.
    pub name: String,
    /// Host name or IP address.
    pub host: String,
    /// Port.
    #[serde(default = "default_redis_port")]
    pub port: u16,
    /// The name of the vigil node running beside it.
    pub node: String,
    /// Higher is preferred between candidates at the same offset.
    #[serde(default)]
    pub priority: i32,
    /// Never promote this member automatically.
    #[serde(default)]
    pub nofailover: bool,
}

/// How a Redis master is fenced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisFenceMethod {
    /// `min-replicas-to-write` raised beyond any possible number of replicas: every write is
    /// refused at once (`NOREPLICAS`), reads go on, and the fence holds even if vigil dies.
    #[default]
    RefuseWrites,
    /// `CLIENT PAUSE WRITE`, renewed while fenced: writers wait instead of failing, but the
    /// pause lapses some seconds after vigil dies.
    PauseWrites,
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

fn default_redis_port() -> u16 {
    6379
}

fn default_min_replicas_max_lag() -> u32 {
    10
}

fn default_bin_dir() -> String {
    "/usr/lib/postgresql/15/bin".to_string()
}

/// Added to the leader's wait on an old primary's lease, on top of the drift bound.
/// It is what the holder's fence guard has to stop the server after the lease ran out by the
/// holder's own clock (`pg_ctl stop -m immediate`, 100 to 200 ms).
pub const LEASE_SAFETY_MARGIN: Duration = Duration::from_millis(250);

/// Default of `lease_duration`.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_millis(1500);
/// How long a Redis pause fence lasts; the node beside the master applies it again well before.
pub const REDIS_PAUSE: Duration = Duration::from_secs(10);
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
        for (index, group) in self.redis.iter().enumerate() {
            let field = format!("redis[{index}]");
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

    /// The Redis group named `name`.
    pub fn redis_group(&self, name: &str) -> Option<&RedisGroup> {
        self.redis.iter().find(|group| group.name == name)
    }

    /// The group named `name`, of whatever kind.
    pub fn group(&self, name: &str) -> Option<GroupRef<'_>> {
        self.postgres_group(name).map(GroupRef::Postgres).or_else(|| self.redis_group(name).map(GroupRef::Redis))
    }

    /// Every group, PostgreSQL first.
    pub fn groups(&self) -> impl Iterator<Item = GroupRef<'_>> {
        self.postgres.iter().map(GroupRef::Postgres).chain(self.redis.iter().map(GroupRef::Redis))
    }
}

/// A group of either kind, borrowed from the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRef<'a> {
    /// A PostgreSQL group.
    Postgres(&'a PostgresGroup),
    /// A Redis group.
    Redis(&'a RedisGroup),
}

impl GroupRef<'_> {
    /// The group's name.
    pub fn name(&self) -> &str {
        match self {
            GroupRef::Postgres(group) => &group.name,
            GroupRef::Redis(group) => &group.name,
        }
    }

    /// What the decision, the leases and the saga need to know, whatever the kind.
    pub fn policy(&self) -> GroupPolicy {
        match self {
            GroupRef::Postgres(group) => group.policy(),
            GroupRef::Redis(group) => group.policy(),
        }
    }
}

/// Which kind of server a group holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// PostgreSQL with streaming replication.
    Postgres,
    /// Redis with `REPLICAOF` replication.
    Redis,
}

/// The part of a group's spec that the kind-independent machinery (the decision, leases,
/// the saga's plan) reads. Positions and lags are bytes of the group's replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPolicy {
    /// PostgreSQL or Redis.
    pub kind: GroupKind,
    /// The group's name.
    pub name: String,
    /// See the group specs.
    pub maximum_lag_on_failover: u64,
    /// See the group specs.
    pub down_after: Duration,
    /// See the group specs.
    pub probe_interval: Duration,
    /// See the group specs.
    pub probe_timeout: Duration,
    /// See the group specs.
    pub lease_duration: Duration,
    /// Strict synchronous mode (PostgreSQL only).
    pub synchronous: SyncMode,
    /// See the group specs.
    pub datacenter_preference: Vec<String>,
    /// A fence of this group lapses by itself after this long unless applied again (a Redis
    /// pause); `None`: it holds until lifted.
    pub fence_lapses_after: Option<Duration>,
    /// The fence in words, for the history ("read-only", "writes refused").
    pub fence_words: &'static str,
    /// The primary refuses writes until enough replicas follow it (Redis's
    /// `min-replicas-to-write`): a failover re-points the replicas before it verifies that
    /// the new primary takes writes.
    pub writes_need_replicas: bool,
    /// The members.
    pub members: Vec<MemberPolicy>,
}

/// A member as the kind-independent machinery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberPolicy {
    /// The member's name.
    pub name: String,
    /// The vigil node beside it.
    pub node: String,
    /// Its "host:port".
    pub address: String,
    /// Its host, as the spec spells it.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Higher is preferred between candidates at the same position.
    pub priority: i32,
    /// Never promote it automatically.
    pub nofailover: bool,
    /// Whether its writes can be stopped cleanly for a switchover: a PostgreSQL member needs
    /// its `data_dir`; a Redis master's writes are paused with `CLIENT PAUSE`.
    pub stoppable: bool,
    /// Whether the fence guard can fence it should the vigil beside it die or hang while it
    /// takes writes (a PostgreSQL member with its `data_dir` is stopped; a Redis master is
    /// made to refuse writes). An unguarded member stays writable after its vigil crashed
    /// until the leader fences it over the network.
    pub guarded: bool,
    /// Why the member is not guarded, in words, when it is not.
    pub unguarded_because: Option<&'static str>,
    /// Whether its own node may start it again, fenced, when it stayed down with nothing to
    /// replace it (a PostgreSQL member with its `data_dir`, fenced read-only).
    pub restarts_in_place: bool,
}

impl GroupPolicy {
    /// See [`PostgresGroup::lease_wait`]: the same bound for every kind.
    pub fn lease_wait(&self) -> Duration {
        lease_wait(self.lease_duration)
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&MemberPolicy> {
        self.members.iter().find(|member| member.name == name)
    }

    /// Whether a replica reporting `upstream` ("host:port") follows the member `primary`,
    /// told by host and port (see [`crate::coordinator::upstream`]).
    pub fn follows(&self, upstream: &str, primary: &str) -> bool {
        let members: Vec<(&str, &str, u16)> =
            self.members.iter().map(|member| (member.name.as_str(), member.host.as_str(), member.port)).collect();
        crate::coordinator::upstream::upstream_is(upstream, primary, &members)
    }
}

fn lease_wait(lease_duration: Duration) -> Duration {
    lease_duration.mul_f64(1.0 + CLOCK_DRIFT_BOUND) + LEASE_SAFETY_MARGIN
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

/// A group's TLS files (`(field name, path)`): absolute paths, a client certificate and
/// its key together or neither.
fn check_tls_files<'a>(
    field: &str,
    files: impl Iterator<Item = (&'static str, &'a String)>,
    has_cert: bool,
    has_key: bool,
) -> Result<(), SpecError> {
    for (name, path) in files {
        if !path.starts_with('/') {
            return Err(error(format!("{field}.tls.{name}"), format!("expected an absolute path, got {path:?}")));
        }
    }
    if has_cert != has_key {
        return Err(error(format!("{field}.tls"), "give cert and key together, or neither"));
    }
    Ok(())
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
        check_timings(field, self.probe_interval, self.probe_timeout, self.down_after, self.lease_duration)?;
        if let Some(tls) = &self.tls {
            check_tls_files(field, tls.files(), tls.cert.is_some(), tls.key.is_some())?;
            if matches!(tls.mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull) && tls.ca.is_none() {
                return Err(error(
                    format!("{field}.tls.ca"),
                    format!(
                        "mode {:?} checks the servers' certificates: give the CA that signed them",
                        tls.mode.as_libpq()
                    ),
                ));
            }
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
            check_member(
                &member_field,
                &self.name,
                (&member.name, &member.host, member.port, &member.node),
                &mut names,
                &mut addresses,
                node_names,
            )?;
            for (name, command) in [("start_command", &member.start_command), ("stop_command", &member.stop_command)] {
                if command.is_some() && member.data_dir.is_none() {
                    return Err(error(
                        format!("{member_field}.{name}"),
                        "needs data_dir too: vigil watches the server through its data directory",
                    ));
                }
                if command.as_deref().is_some_and(|command| command.trim().is_empty()) {
                    return Err(error(format!("{member_field}.{name}"), "must not be empty"));
                }
            }
            if self.fence_method == FenceMethod::Stop && member.data_dir.is_none() {
                // Its node could never fence it: a stop needs pg_ctl on the data directory.
                return Err(error(
                    format!("{member_field}.data_dir"),
                    "is required with fence_method = \"stop\": the node beside the member stops it through its data \
                     directory (or use fence_method = \"read-only\")",
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
        lease_wait(self.lease_duration)
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&PostgresMember> {
        self.members.iter().find(|member| member.name == name)
    }

    /// The kind-independent view of this group.
    pub fn policy(&self) -> GroupPolicy {
        GroupPolicy {
            kind: GroupKind::Postgres,
            name: self.name.clone(),
            maximum_lag_on_failover: self.maximum_lag_on_failover,
            down_after: self.down_after,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            lease_duration: self.lease_duration,
            synchronous: self.synchronous,
            datacenter_preference: self.datacenter_preference.clone(),
            fence_lapses_after: None,
            writes_need_replicas: false,
            fence_words: match self.fence_method {
                FenceMethod::ReadOnly => "read-only",
                FenceMethod::Stop => "stopped",
            },
            members: self
                .members
                .iter()
                .map(|member| MemberPolicy {
                    name: member.name.clone(),
                    node: member.node.clone(),
                    address: format!("{}:{}", member.host, member.port),
                    host: member.host.clone(),
                    port: member.port,
                    priority: member.priority,
                    nofailover: member.nofailover,
                    stoppable: member.data_dir.is_some(),
                    guarded: member.data_dir.is_some(),
                    unguarded_because: member.data_dir.is_none().then_some(
                        "no data_dir in the spec: should the vigil beside it die while it is the primary, no fence \
                         guard stops it, and it stays writable until the leader fences it over the network",
                    ),
                    restarts_in_place: member.data_dir.is_some() && self.fence_method == FenceMethod::ReadOnly,
                })
                .collect(),
        }
    }
}

/// The longest any timing of a group may be: an hour is far beyond any useful setting, and
/// every sum and product of timings stays far from overflow below it.
pub const MAX_TIMING: Duration = Duration::from_secs(3600);

/// The checks every kind of group shares: timings and lease against the probe interval.
fn check_timings(
    field: &str,
    probe_interval: Duration,
    probe_timeout: Duration,
    down_after: Duration,
    lease_duration: Duration,
) -> Result<(), SpecError> {
    for (name, value) in [
        ("probe_interval", probe_interval),
        ("probe_timeout", probe_timeout),
        ("down_after", down_after),
        ("lease_duration", lease_duration),
    ] {
        if value > MAX_TIMING {
            return Err(error(
                format!("{field}.{name}"),
                format!(
                    "must be at most {} (got {})",
                    humantime::format_duration(MAX_TIMING),
                    humantime::format_duration(value)
                ),
            ));
        }
    }
    if probe_interval < Duration::from_millis(50) {
        return Err(error(format!("{field}.probe_interval"), "must be at least 50ms"));
    }
    if probe_timeout.is_zero() {
        return Err(error(format!("{field}.probe_timeout"), "must be longer than 0"));
    }
    if down_after < probe_interval {
        return Err(error(
            format!("{field}.down_after"),
            format!(
                "must be at least probe_interval ({}), or one failed probe would count as down",
                humantime::format_duration(probe_interval)
            ),
        ));
    }
    if lease_duration < probe_interval * 3 {
        return Err(error(
            format!("{field}.lease_duration"),
            format!(
                "must be at least three probe intervals ({}): the lease is renewed every fifth of it and a \
                 shorter lease would fence a healthy primary",
                humantime::format_duration(probe_interval * 3)
            ),
        ));
    }
    Ok(())
}

/// The checks on one member every kind shares: name, address, node.
fn check_member(
    field: &str,
    group: &str,
    (name, host, port, node): (&str, &str, u16, &str),
    names: &mut BTreeSet<String>,
    addresses: &mut BTreeSet<(String, u16)>,
    node_names: &BTreeSet<&str>,
) -> Result<(), SpecError> {
    check_name(&format!("{field}.name"), name)?;
    if !names.insert(name.to_string()) {
        return Err(error(format!("{field}.name"), format!("member name {name:?} is used twice in group {group:?}")));
    }
    if host.is_empty() {
        return Err(error(format!("{field}.host"), "must not be empty"));
    }
    if port == 0 {
        return Err(error(format!("{field}.port"), "must be between 1 and 65535"));
    }
    if !addresses.insert((host.to_string(), port)) {
        return Err(error(format!("{field}.port"), format!("{host}:{port} is already another member's address")));
    }
    if !node_names.contains(node) {
        let known: Vec<&str> = node_names.iter().copied().collect();
        return Err(error(
            format!("{field}.node"),
            format!("no vigil node is named {node:?} (nodes: {})", known.join(", ")),
        ));
    }
    Ok(())
}

impl RedisGroup {
    fn validate(&self, field: &str, node_names: &BTreeSet<&str>) -> Result<(), SpecError> {
        check_name(&format!("{field}.name"), &self.name)?;
        if self.user.as_deref() == Some("") {
            return Err(error(format!("{field}.user"), "must not be empty (leave it out for the default user)"));
        }
        if let Some(password) = &self.password {
            check_secret(&format!("{field}.password"), password)?;
        }
        if let Some(tls) = &self.tls {
            let files = [("ca", Some(&tls.ca)), ("cert", tls.cert.as_ref()), ("key", tls.key.as_ref())];
            let files = files.into_iter().filter_map(|(name, path)| Some((name, path?)));
            check_tls_files(field, files, tls.cert.is_some(), tls.key.is_some())?;
        }
        check_timings(field, self.probe_interval, self.probe_timeout, self.down_after, self.lease_duration)?;
        if self.members.is_empty() {
            return Err(error(format!("{field}.members"), "a group needs at least one member"));
        }
        if self.min_replicas_to_write > 0 && self.min_replicas_max_lag == 0 {
            return Err(error(format!("{field}.min_replicas_max_lag"), "must be at least 1 second"));
        }
        if self.min_replicas_to_write as usize >= self.members.len() {
            return Err(error(
                format!("{field}.min_replicas_to_write"),
                format!(
                    "must be less than the number of members ({}): a master can have at most that many replicas \
                     minus itself, and would refuse every write",
                    self.members.len()
                ),
            ));
        }
        let mut names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (index, member) in self.members.iter().enumerate() {
            check_member(
                &format!("{field}.members[{index}]"),
                &self.name,
                (&member.name, &member.host, member.port, &member.node),
                &mut names,
                &mut addresses,
                node_names,
            )?;
        }
        Ok(())
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&RedisMember> {
        self.members.iter().find(|member| member.name == name)
    }

    /// See [`PostgresGroup::lease_wait`].
    pub fn lease_wait(&self) -> Duration {
        lease_wait(self.lease_duration)
    }

    /// The kind-independent view of this group.
    pub fn policy(&self) -> GroupPolicy {
        GroupPolicy {
            kind: GroupKind::Redis,
            name: self.name.clone(),
            maximum_lag_on_failover: self.maximum_lag_on_failover,
            down_after: self.down_after,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            lease_duration: self.lease_duration,
            synchronous: SyncMode::Off,
            datacenter_preference: self.datacenter_preference.clone(),
            fence_lapses_after: match self.fence_method {
                RedisFenceMethod::RefuseWrites => None,
                RedisFenceMethod::PauseWrites => Some(REDIS_PAUSE),
            },
            writes_need_replicas: self.min_replicas_to_write > 0,
            fence_words: match self.fence_method {
                RedisFenceMethod::RefuseWrites => "writes refused",
                RedisFenceMethod::PauseWrites => "writes paused",
            },
            members: self
                .members
                .iter()
                .map(|member| MemberPolicy {
                    name: member.name.clone(),
                    node: member.node.clone(),
                    address: format!("{}:{}", member.host, member.port),
                    host: member.host.clone(),
                    port: member.port,
                    priority: member.priority,
                    nofailover: member.nofailover,
                    stoppable: true,
                    // The guard makes the master refuse writes when its lease runs out.
                    guarded: true,
                    unguarded_because: None,
                    restarts_in_place: false,
                })
                .collect(),
        }
    }
}
