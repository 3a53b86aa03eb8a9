//! The member beside this node, of whatever kind, and what this node does to it with its
//! own hands: fence it, lift the fence, stop it, and make it a replica of the primary.
//!
//! The lease keeper and the rejoiner decide *when* (the same rules for every kind); this
//! module knows *how* for PostgreSQL (`pg_ctl`, SQL) and for Redis (`CONFIG SET`,
//! `CLIENT PAUSE`, `REPLICAOF`). vigil does not start or stop redis-server: a Redis member is
//! fenced by refusing or pausing its writes, never stopped.

use std::time::Duration;

use tracing::{error, warn};
use vigil_consensus::spec::{
    FenceMethod, GroupRef, PostgresGroup, PostgresMember, RedisFenceMethod, RedisGroup, RedisMember,
};

use crate::guard::GuardedServer;
use crate::members::targets::{pg_ctl, pg_target, primary_conninfo, redis_target};
use vigil_consensus::coordinator::upstream::upstream_is;

/// How long stopping a server as a fence may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long each step of a rejoin may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a Redis pause fence lasts; the keeper renews it well before.
pub const REDIS_PAUSE: Duration = Duration::from_secs(10);
/// `min-replicas-to-write` while fenced: more replicas than any group has, so every write is
/// refused (`NOREPLICAS`) until the fence is lifted, whether or not vigil still runs.
pub const REFUSE_ALL_WRITES: u32 = 1_000_000;

/// A member with its group's spec: the member beside this node for the keeper and the
/// rejoiner, any member for the prober.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupMember {
    /// A PostgreSQL server.
    Postgres {
        /// Its group (boxed, as the Redis one: a group's spec is large and the variants differ).
        group: Box<PostgresGroup>,
        /// The member.
        member: PostgresMember,
    },
    /// A redis-server.
    Redis {
        /// Its group.
        group: Box<RedisGroup>,
        /// The member.
        member: RedisMember,
    },
}

impl GroupMember {
    /// The member of `group` beside the node named `node_name`, if there is one.
    pub fn beside(group: GroupRef<'_>, node_name: &str) -> Option<Self> {
        match group {
            GroupRef::Postgres(group) => group
                .members
                .iter()
                .find(|member| member.node == node_name)
                .map(|member| GroupMember::Postgres { group: Box::new(group.clone()), member: member.clone() }),
            GroupRef::Redis(group) => group
                .members
                .iter()
                .find(|member| member.node == node_name)
                .map(|member| GroupMember::Redis { group: Box::new(group.clone()), member: member.clone() }),
        }
    }

    /// Every member of `group`.
    pub fn all(group: GroupRef<'_>) -> Vec<Self> {
        match group {
            GroupRef::Postgres(group) => group
                .members
                .iter()
                .map(|member| GroupMember::Postgres { group: Box::new(group.clone()), member: member.clone() })
                .collect(),
            GroupRef::Redis(group) => group
                .members
                .iter()
                .map(|member| GroupMember::Redis { group: Box::new(group.clone()), member: member.clone() })
                .collect(),
        }
    }

    /// The group's name.
    pub fn group_name(&self) -> &str {
        match self {
            GroupMember::Postgres { group, .. } => &group.name,
            GroupMember::Redis { group, .. } => &group.name,
        }
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        match self {
            GroupMember::Postgres { member, .. } => &member.name,
            GroupMember::Redis { member, .. } => &member.name,
        }
    }

    /// The group's lease duration.
    pub fn lease_duration(&self) -> Duration {
        match self {
            GroupMember::Postgres { group, .. } => group.lease_duration,
            GroupMember::Redis { group, .. } => group.lease_duration,
        }
    }

    /// The fence in words, for the lease release.
    pub fn fence_words(&self) -> &'static str {
        match self {
            GroupMember::Postgres { group, .. } => match group.fence_method {
                FenceMethod::ReadOnly => "read-only",
                FenceMethod::Stop => "stopped",
            },
            GroupMember::Redis { group, .. } => match group.fence_method {
                RedisFenceMethod::RefuseWrites => "writes refused",
                RedisFenceMethod::PauseWrites => "writes paused",
            },
        }
    }

    /// Whether the fence must be applied again while it lasts (a Redis pause expires).
    pub fn fence_expires(&self) -> bool {
        matches!(self, GroupMember::Redis { group, .. } if group.fence_method == RedisFenceMethod::PauseWrites)
    }

    /// What the fence guard needs to stop this member if this daemon dies: PostgreSQL
    /// members with a data directory only.
    pub fn guarded(&self) -> Option<GuardedServer> {
        match self {
            GroupMember::Postgres { group, member } => pg_ctl(group, member).ok().map(|ctl| GuardedServer {
                bin_dir: ctl.bin_dir,
                data_dir: ctl.data_dir,
                run_as: ctl.run_as,
            }),
            GroupMember::Redis { .. } => None,
        }
    }

    /// Fences it with the group's fence method (`stale`: it is not the primary at all, so a
    /// fence that keeps it readable is enough). Falls back to stopping a PostgreSQL server
    /// when the chosen fence fails. Whether it worked.
    pub async fn fence(&self, stale: bool) -> bool {
        let result = match self {
            GroupMember::Postgres { group, member } => {
                let method = if stale { FenceMethod::ReadOnly } else { group.fence_method };
                match method {
                    FenceMethod::ReadOnly => match pg_target(group, member) {
                        Ok(target) => vigil_actions::fence_read_only(&target)
                            .await
                            .map(|n| format!("read-only, {n} sessions ended"))
                            .map_err(|e| e.to_string()),
                        Err(reason) => Err(reason),
                    },
                    FenceMethod::Stop => self.stop().await.map(|()| "stopped".to_string()),
                }
            }
            GroupMember::Redis { group, member } => match redis_target(group, member) {
                Ok(target) => match group.fence_method {
                    RedisFenceMethod::RefuseWrites => vigil_actions::redis_set_min_replicas(
                        &target,
                        REFUSE_ALL_WRITES,
                        group.min_replicas_max_lag.max(1),
                    )
                    .await
                    .map(|()| "writes refused (min-replicas-to-write)".to_string())
                    .map_err(|e| e.to_string()),
                    RedisFenceMethod::PauseWrites => vigil_actions::redis_pause_writes(&target, REDIS_PAUSE)
                        .await
                        .map(|offset| format!("writes paused at offset {offset}"))
                        .map_err(|e| e.to_string()),
                },
                Err(reason) => Err(reason),
            },
        };
        match result {
            Ok(how) => {
                warn!(group = self.group_name(), member = self.name(), %how, "fenced");
                true
            }
            Err(reason) if matches!(self, GroupMember::Postgres { .. }) => {
                error!(group = self.group_name(), member = self.name(), %reason, "fencing failed; stopping the server instead");
                match self.stop().await {
                    Ok(()) => true,
                    Err(reason) => {
                        error!(group = self.group_name(), member = self.name(), %reason, "the server could not be stopped either");
                        false
                    }
                }
            }
            Err(reason) => {
                error!(group = self.group_name(), member = self.name(), %reason, "fencing failed");
                false
            }
        }
    }

    /// Stops the server at once (PostgreSQL only).
    pub async fn stop(&self) -> Result<(), String> {
        match self {
            GroupMember::Postgres { group, member } => {
                let ctl = pg_ctl(group, member)?;
                vigil_actions::stop_immediately(&ctl, STOP_TIMEOUT).await.map_err(|e| e.to_string())
            }
            GroupMember::Redis { .. } => Err("vigil does not stop redis-server".to_string()),
        }
    }

    /// Whether this node can start its member again in place, fenced: a PostgreSQL member
    /// with a data directory in a group fenced read-only (whose lift resets read-only; a
    /// `stop` fence's lift only starts the server). vigil does not start redis-server.
    pub fn starts_in_place(&self) -> bool {
        matches!(self, GroupMember::Postgres { group, member }
            if member.data_dir.is_some() && group.fence_method == FenceMethod::ReadOnly)
    }

    /// Starts a stopped primary again, fenced (read-only) from its first moment.
    pub async fn start_fenced(&self) -> Result<(), String> {
        match self {
            GroupMember::Postgres { group, member } => {
                let ctl = pg_ctl(group, member)?;
                vigil_actions::start_fenced(&ctl, STOP_TIMEOUT).await.map_err(|e| e.to_string())
            }
            GroupMember::Redis { .. } => Err("vigil does not start redis-server".to_string()),
        }
    }

    /// Makes sure a member this node sees down stays unable to take writes, and says how:
    /// a PostgreSQL server is stopped; a Redis server must not be listening at all (the
    /// connection is refused by this host), since vigil does not stop redis-server and a
    /// server that hangs may come back.
    pub async fn make_sure_down(&self) -> Result<&'static str, String> {
        match self {
            GroupMember::Postgres { .. } => self.stop().await.map(|()| "stopped"),
            GroupMember::Redis { member, .. } => {
                let address = format!("{}:{}", member.host, member.port);
                let connect = tokio::net::TcpStream::connect(&address);
                match tokio::time::timeout(Duration::from_millis(500), connect).await {
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => Ok("not listening"),
                    Ok(Err(error)) => Err(format!("{address} may still run: {error}")),
                    Ok(Ok(_)) => Err(format!("{address} still accepts connections")),
                    Err(_) => Err(format!("{address} may still run: no answer to a connection")),
                }
            }
        }
    }

    /// Whether lifting the fence is harmless on a primary that may not be fenced, so that a
    /// keeper taking over a primary can clear a fence a crashed vigil left behind.
    pub fn lift_on_takeover(&self) -> bool {
        match self {
            GroupMember::Postgres { group, .. } => group.fence_method == FenceMethod::ReadOnly,
            GroupMember::Redis { .. } => true,
        }
    }

    /// Lifts the fence: the cluster confirmed it is the primary of the current epoch.
    pub async fn lift(&self) {
        let result = match self {
            GroupMember::Postgres { group, member } => match group.fence_method {
                FenceMethod::ReadOnly => match pg_target(group, member) {
                    Ok(target) => vigil_actions::unfence(&target).await.map_err(|e| e.to_string()),
                    Err(reason) => Err(reason),
                },
                FenceMethod::Stop => match pg_ctl(group, member) {
                    Ok(ctl) => vigil_actions::start_server(&ctl, STOP_TIMEOUT).await.map_err(|e| e.to_string()),
                    Err(reason) => Err(reason),
                },
            },
            GroupMember::Redis { group, member } => self.configure_redis_master(group, member).await,
        };
        if let Err(reason) = result {
            error!(group = self.group_name(), member = self.name(), %reason, "could not lift the fence");
        }
    }

    /// Brings a Redis master's write settings to what the spec says: no pause, and
    /// `min-replicas-to-write` as configured (0 unless the spec sets it).
    async fn configure_redis_master(&self, group: &RedisGroup, member: &RedisMember) -> Result<(), String> {
        let target = redis_target(group, member)?;
        vigil_actions::redis_set_min_replicas(&target, group.min_replicas_to_write, group.min_replicas_max_lag.max(1))
            .await
            .map_err(|e| e.to_string())?;
        vigil_actions::redis_unpause(&target).await.map_err(|e| e.to_string())
    }

    /// Whether the server beside this node is running; `true` when that cannot be told
    /// (a Redis member, or a PostgreSQL member without a data directory), so nothing is done
    /// to a server that may be alive.
    pub async fn is_running(&self) -> bool {
        match self {
            GroupMember::Postgres { group, member } => match pg_ctl(group, member) {
                Ok(ctl) => vigil_actions::is_running(&ctl).await.unwrap_or(true),
                Err(_) => true,
            },
            GroupMember::Redis { .. } => true,
        }
    }

    /// Whether `upstream` ("host:port", as the member reports it) is `primary`.
    pub fn streams_from(&self, upstream: &str, primary: &str) -> bool {
        let members: Vec<(&str, &str, u16)> = match self {
            GroupMember::Postgres { group, .. } => {
                group.members.iter().map(|m| (m.name.as_str(), m.host.as_str(), m.port)).collect()
            }
            GroupMember::Redis { group, .. } => {
                group.members.iter().map(|m| (m.name.as_str(), m.host.as_str(), m.port)).collect()
            }
        };
        upstream_is(upstream, primary, &members)
    }

    /// Makes it a replica of `primary`; says what it did.
    pub async fn rejoin(&self, primary: &str) -> Result<String, String> {
        match self {
            GroupMember::Postgres { group, member } => {
                let primary = group.member(primary).ok_or_else(|| format!("no member {primary}"))?;
                rejoin_postgres(group, member, primary).await
            }
            GroupMember::Redis { group, member } => {
                let primary = group.member(primary).ok_or_else(|| format!("no member {primary}"))?;
                rejoin_redis(group, member, primary).await
            }
        }
    }
}

/// Stops, rewinds and restarts `member` as a replica of `primary`; says what it did.
async fn rejoin_postgres(
    group: &PostgresGroup,
    member: &PostgresMember,
    primary: &PostgresMember,
) -> Result<String, String> {
    let ctl = pg_ctl(group, member)?;
    let source = pg_target(group, primary)?;
    // pg_rewind reads the primary as vigil's own role, which must be a superuser. Its session
    // is named so that a fence on the primary (which ends client sessions) spares it: a rewind
    // cut off half-way leaves a data directory that cannot be rewound again.
    let source_conninfo =
        vigil_actions::primary_conninfo(&source.host, source.port, &source.user, &source.password, "vigil-rewind");
    let source_conninfo = format!("{source_conninfo} dbname={}", source.database);
    // A clean stop spares pg_rewind a crash recovery; a server that will not stop cleanly is
    // stopped at once.
    if vigil_actions::stop_server(&ctl, STEP_TIMEOUT).await.is_err() {
        vigil_actions::stop_immediately(&ctl, STEP_TIMEOUT).await.map_err(|e| format!("stopping it: {e}"))?;
    }
    vigil_actions::checkpoint(&source, STEP_TIMEOUT)
        .await
        .map_err(|e| format!("checkpoint on {} before rewinding: {e}", primary.name))?;
    let conninfo = primary_conninfo(group, primary, &member.name)?;
    let rewound = match vigil_actions::rewind(&ctl, &source_conninfo, STEP_TIMEOUT).await {
        Ok(outcome) => format!("pg_rewind: {outcome}"),
        Err(error) if group.allow_reclone => {
            warn!(group = %group.name, member = %member.name, %error, "pg_rewind failed: re-cloning with pg_basebackup");
            let aside = vigil_actions::reclone(&ctl, &conninfo, STEP_TIMEOUT)
                .await
                .map_err(|e| format!("pg_rewind failed ({error}), and so did pg_basebackup: {e}"))?;
            format!("pg_rewind failed ({error}); re-cloned with pg_basebackup, old data kept in {}", aside.display())
        }
        Err(error) => return Err(format!("pg_rewind failed, data left as it was (stopped): {error}")),
    };
    vigil_actions::start_as_replica(&ctl, &conninfo, STEP_TIMEOUT).await.map_err(|e| format!("starting it: {e}"))?;
    let replica = pg_target(group, member)?;
    let timeline = vigil_actions::wait_for_upstream(&replica, &source, Duration::from_secs(30))
        .await
        .map_err(|e| format!("after restarting: {e}"))?;
    Ok(format!("{rewound}; streaming timeline {timeline} from {}", primary.name))
}

/// Points `member` at `primary` with `REPLICAOF` and lifts any pause, so the writes that
/// waited behind it are answered (as a replica: refused) rather than kept hanging.
async fn rejoin_redis(group: &RedisGroup, member: &RedisMember, primary: &RedisMember) -> Result<String, String> {
    let target = redis_target(group, member)?;
    vigil_actions::redis_repoint(&target, &primary.host, primary.port, None)
        .await
        .map_err(|e| format!("REPLICAOF: {e}"))?;
    vigil_actions::redis_unpause(&target).await.map_err(|e| format!("CLIENT UNPAUSE: {e}"))?;
    vigil_actions::redis_wait_for_upstream(&target, &primary.host, primary.port, Duration::from_secs(30))
        .await
        .map_err(|e| format!("after REPLICAOF: {e}"))?;
    Ok(format!("REPLICAOF {}:{}; replicating from {}", primary.host, primary.port, primary.name))
}
