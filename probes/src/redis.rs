//! The Redis probe: `INFO replication` and the epoch read per check over one kept
//! connection, then a heartbeat write when the member is a master.
//!
//! Reads come first and the heartbeat write last, on purpose: `CLIENT PAUSE ... WRITE`
//! (what a switchover uses to stop writes) makes a write block rather than fail, so a
//! paused master is told apart from a hung one by answering its reads but not its write.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, TlsCertificates,
};
use tokio::sync::Mutex;
use tokio::time::{Instant, timeout_at};

/// The key that holds the group's epoch on a Redis member: a decimal number that only grows.
pub const EPOCH_KEY: &str = "vigil:epoch";
/// The prefix of each node's heartbeat key; the node id follows (`vigil:heartbeat:7`).
pub const HEARTBEAT_KEY_PREFIX: &str = "vigil:heartbeat:";
/// How long a heartbeat key lives: a node that stopped probing leaves nothing behind.
const HEARTBEAT_TTL_MS: u64 = 60_000;
/// How far past the target's timeout the outer bound of a check lies; every step has its
/// own bound at the timeout itself, so this only catches what has none.
const OUTER_SLACK: Duration = Duration::from_millis(100);

/// Where and how to reach one Redis member.
///
/// `Debug` shows everything but the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user to log in as; `None` for the default user (`requirepass`).
    pub username: Option<String>,
    /// The password; `None` for a server without authentication. Never logged.
    pub password: Option<String>,
    /// Bound on one check, and on connecting.
    pub timeout: Duration,
    /// TLS to the member, when it takes TLS connections; `None` for plain TCP.
    pub tls: Option<RedisTls>,
}

/// TLS settings of a Redis connection, the files already read (PEM).
///
/// The server's certificate must be signed by `ca` and name the member's host (a DNS name
/// or an IP address); `Debug` never shows the client key.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA certificates the server's certificate must chain to.
    pub ca: Vec<u8>,
    /// A client certificate and its key, for servers that require one
    /// (`tls-auth-clients yes`, Redis's default).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisTls")
            .field("ca", &format!("{} bytes", self.ca.len()))
            .field("client", &self.client.as_ref().map(|_| "<certificate and key>"))
            .finish()
    }
}

impl RedisTarget {
    /// "host:port", for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Opens one connection (TCP, then `AUTH` when a password is set), all within
    /// `timeout`; each later command on it times out after the target's `timeout` unless
    /// the caller bounds it more tightly. The connection's driver task ends when the last
    /// clone of it is dropped, which also closes the socket, even with a command pending.
    pub async fn connect(&self, timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let client = match &self.tls {
            None => {
                let address = ConnectionAddr::Tcp(self.host.clone(), self.port);
                Client::open(address.into_connection_info()?.set_redis_settings(settings))?
            }
            Some(tls) => {
                let address = ConnectionAddr::TcpTls {
                    host: self.host.clone(),
                    port: self.port,
                    insecure: false,
                    tls_params: None,
                };
                let certificates = TlsCertificates {
                    client_tls: tls
                        .client
                        .as_ref()
                        .map(|(cert, key)| ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
                    root_cert: Some(tls.ca.clone()),
                };
                Client::build_with_tls(address.into_connection_info()?.set_redis_settings(settings), certificates)?
            }
        };
        // A zero timeout would mean "no timeout" to the client, the opposite of the ask.
        let bound = timeout.max(Duration::from_millis(1));
        // Callers bound each command themselves; the client's own response timeout is the
        // target's whole timeout, a backstop that does not shrink with a slow connect.
        let response_timeout = self.timeout.max(Duration::from_millis(1));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(bound))
            .set_response_timeout(Some(response_timeout));
        match tokio::time::timeout(bound, client.get_multiplexed_async_connection_with_config(&config)).await {
            Ok(connected) => connected,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {bound:?} while connecting"),
            ))),
        }
    }
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One replica as its master lists it in `INFO replication` (`slaveN:ip=...,port=...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisReplicaInfo {
    /// The address the replica connected from.
    pub ip: String,
    /// The port the replica listens on (as it announced it).
    pub port: u16,
    /// The replication state, e.g. "online", "wait_bgsave", "send_bulk".
    pub state: String,
    /// The replication offset the replica acknowledged.
    pub offset: u64,
    /// Seconds since the replica's last acknowledgement.
    pub lag: u64,
}

/// What one check saw on a member that answered.
///
/// Fields that do not apply to the member's role (a master has no link status, a replica
/// writes no heartbeat) are `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisObservation {
    /// `role:master` in `INFO replication`.
    pub is_master: bool,
    /// `master_repl_offset`: a master's write position; on a replica, the position of the
    /// stream it has processed.
    pub master_repl_offset: u64,
    /// Replica: `slave_repl_offset`, the replication stream it has processed.
    pub replica_offset: Option<u64>,
    /// Replica: `master_link_status`, "up" or "down".
    pub link_status: Option<String>,
    /// Replica: the master it follows, "master_host:master_port".
    pub upstream: Option<String>,
    /// `connected_slaves`.
    pub connected_replicas: u32,
    /// Master: its replicas (`slaveN` lines), in the order it lists them.
    pub replicas: Vec<RedisReplicaInfo>,
    /// The group's epoch from [`EPOCH_KEY`]; `None` if it is missing or not a number.
    pub epoch: Option<u64>,
    /// Master: whether this node's heartbeat write succeeded, or why not.
    pub heartbeat: Option<Result<(), String>>,
    /// Master: the heartbeat write did not finish in time although the reads answered,
    /// which is what a `CLIENT PAUSE ... WRITE` looks like.
    pub writes_paused: bool,
}

impl RedisObservation {
    /// Reads the replication facts from the text of `INFO replication`; the epoch,
    /// heartbeat and pause fields are left empty. Fails when there is no `role` line or one
    /// of the member's own numbers does not parse; a replica line that does not parse is
    /// left out of `replicas` instead.
    pub fn from_replication_info(text: &str) -> Result<Self, String> {
        let info = parse_info(text);
        let number = |key: &str| -> Result<Option<u64>, String> {
            info.get(key).map(|value| value.parse::<u64>().map_err(|_| format!("{key} is {value:?}"))).transpose()
        };
        let is_master = match info.get("role").map(String::as_str) {
            Some("master") => true,
            Some("slave") => false,
            Some(other) => return Err(format!("unknown role {other:?}")),
            None => return Err("no role in INFO replication".to_string()),
        };
        let connected_replicas = number("connected_slaves")?.unwrap_or(0);
        let mut replicas = Vec::new();
        for index in 0.. {
            let Some(line) = info.get(&format!("slave{index}")) else { break };
            // One odd replica line must not make its master look down: it is left out.
            match parse_replica_line(line) {
                Ok(replica) => replicas.push(replica),
                Err(error) => tracing::debug!(line = %line, %error, "skipped a replica line of INFO replication"),
            }
        }
        let upstream = match (info.get("master_host"), info.get("master_port")) {
            (Some(host), Some(port)) if !is_master => Some(format!("{host}:{port}")),
            _ => None,
        };
        Ok(RedisObservation {
            is_master,
            master_repl_offset: number("master_repl_offset")?.unwrap_or(0),
            replica_offset: if is_master { None } else { number("slave_repl_offset")? },
            link_status: if is_master { None } else { info.get("master_link_status").cloned() },
            upstream,
            connected_replicas: u32::try_from(connected_replicas).unwrap_or(u32::MAX),
            replicas,
            epoch: None,
            heartbeat: None,
            writes_paused: false,
        })
    }
}

/// The result of one check: an answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisOutcome {
    /// The member answered `INFO replication`.
    Answered(RedisObservation),
    /// The member could not be reached or did not answer in time.
    Failed {
        /// What went wrong, in one line, without secrets.
        reason: String,
    },
}

/// Checks one Redis member, keeping one connection to it across checks.
///
/// Each probe owns its connection: probes of different members share nothing, so one
/// hung member never delays the others.
#[derive(Debug)]
pub struct RedisProbe {
    target: RedisTarget,
    node_id: u64,
    /// The kept connection; empty after an error, so the next check reconnects.
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisProbe {
    /// A probe of `target`, writing heartbeats as `node_id`.
    pub fn new(target: RedisTarget, node_id: u64) -> Self {
        RedisProbe { target, node_id, connection: Mutex::new(None) }
    }

    /// The member this probe checks.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// Checks the member once; returns within `target.timeout` (plus a few milliseconds)
    /// whatever the server does. A failure is data (`Failed`), never a panic or an `Err`.
    pub async fn check(&self) -> RedisOutcome {
        let deadline = Instant::now() + self.target.timeout;
        // Every step below stops at `deadline` by itself; this outer bound is the guarantee
        // for anything that does not (such as waiting behind a concurrent check of this
        // same probe). Dropping the inner future drops the connection it had taken out of
        // `connection`, which is what we want after a hang.
        let outcome = match timeout_at(deadline + OUTER_SLACK, self.check_until(deadline)).await {
            Ok(outcome) => outcome,
            Err(_) => RedisOutcome::Failed {
                reason: format!("{} did not answer within {:?}", self.target.address(), self.target.timeout),
            },
        };
        if let RedisOutcome::Failed { reason } = &outcome {
            tracing::debug!(member = %self.target.address(), %reason, "redis probe failed");
        }
        outcome
    }

    async fn check_until(&self, deadline: Instant) -> RedisOutcome {
        let mut slot = self.connection.lock().await;
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => match self.target.connect(deadline.saturating_duration_since(Instant::now())).await {
                Ok(connection) => connection,
                Err(error) => {
                    let reason =
                        format!("could not connect to {}: {}", self.target.address(), describe_redis_error(&error));
                    return RedisOutcome::Failed { reason };
                }
            },
        };
        match self.observe(&mut connection, deadline).await {
            Ok((observation, keep)) => {
                if keep {
                    *slot = Some(connection);
                }
                RedisOutcome::Answered(observation)
            }
            Err(reason) => RedisOutcome::Failed { reason },
        }
    }

    /// Runs the reads, then the heartbeat on a master. Returns the observation and whether
    /// the connection is still fit to keep, or why the check failed.
    async fn observe(
        &self,
        connection: &mut MultiplexedConnection,
        deadline: Instant,
    ) -> Result<(RedisObservation, bool), String> {
        let address = self.target.address();

        // INFO rather than PING proves the member alive: a replica loading its copy of the
        // data set answers PING with LOADING but still answers INFO.
        let info: String = match timeout_at(deadline, info_replication_cmd().query_async(connection)).await {
            Ok(Ok(info)) => info,
            Ok(Err(error)) => {
                return Err(format!("INFO replication on {address} failed: {}", describe_redis_error(&error)));
            }
            Err(_) => return Err(format!("timed out waiting for INFO replication on {address}")),
        };
        let mut observation = RedisObservation::from_replication_info(&info)
            .map_err(|error| format!("unexpected INFO replication from {address}: {error}"))?;

        let mut read_epoch = ::redis::cmd("GET");
        read_epoch.arg(EPOCH_KEY);
        observation.epoch = match timeout_at(deadline, read_epoch.query_async::<Option<String>>(connection)).await {
            Ok(Ok(value)) => value.and_then(|text| text.trim().parse().ok()),
            // A key of another type, or a replica still loading: the epoch is unknown, but
            // the member did answer.
            Ok(Err(error)) if is_server_error(&error) => {
                tracing::debug!(member = %address, error = %describe_redis_error(&error), "could not read the epoch");
                None
            }
            Ok(Err(error)) => {
                return Err(format!("GET {EPOCH_KEY} on {address} failed: {}", describe_redis_error(&error)));
            }
            Err(_) => return Err(format!("timed out reading {EPOCH_KEY} on {address}")),
        };
        if !observation.is_master {
            return Ok((observation, true));
        }

        let keep = match self.heartbeat(connection, deadline).await {
            Heartbeat::Written => {
                observation.heartbeat = Some(Ok(()));
                true
            }
            Heartbeat::Refused(reason) => {
                observation.heartbeat = Some(Err(reason));
                true
            }
            Heartbeat::Failed(reason) => {
                observation.heartbeat = Some(Err(reason));
                false
            }
            Heartbeat::Blocked(reason) => {
                observation.heartbeat = Some(Err(reason));
                observation.writes_paused = true;
                false
            }
        };
        Ok((observation, keep))
    }

    /// Writes this node's heartbeat key with the rest of the budget.
    async fn heartbeat(&self, connection: &mut MultiplexedConnection, deadline: Instant) -> Heartbeat {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
        let started = Instant::now();
        let key = format!("{HEARTBEAT_KEY_PREFIX}{}", self.node_id);
        let mut write = ::redis::cmd("SET");
        write.arg(key).arg(now_ms.to_string()).arg("PX").arg(HEARTBEAT_TTL_MS);
        match timeout_at(deadline, write.exec_async(connection)).await {
            Ok(Ok(())) => Heartbeat::Written,
            Ok(Err(error)) if is_server_error(&error) => {
                Heartbeat::Refused(format!("heartbeat write refused: {}", describe_redis_error(&error)))
            }
            Ok(Err(error)) if !error.is_timeout() => {
                Heartbeat::Failed(format!("heartbeat write failed: {}", describe_redis_error(&error)))
            }
            // The client's own response timeout, or ours: either way the reads answered
            // and the write did not.
            Ok(Err(_)) | Err(_) => Heartbeat::Blocked(format!(
                "writes are paused: the reads answered but the heartbeat write did not finish within {:?}",
                started.elapsed()
            )),
        }
    }
}

/// How a heartbeat write went, and so what becomes of the connection.
enum Heartbeat {
    Written,
    /// The server said no (NOREPLICAS, READONLY, OOM): the connection is fine, the master
    /// just does not take writes.
    Refused(String),
    /// The connection broke during the write: it is dropped.
    Failed(String),
    /// The write did not finish in time after the reads answered, as under
    /// `CLIENT PAUSE ... WRITE`: the command is still pending on the connection, so it is
    /// dropped (which closes it, and the server forgets the blocked write).
    Blocked(String),
}

/// The `INFO replication` command.
fn info_replication_cmd() -> ::redis::Cmd {
    let mut command = ::redis::cmd("INFO");
    command.arg("replication");
    command
}

/// Whether the server itself answered with an error (as opposed to the connection failing).
pub fn is_server_error(error: &RedisError) -> bool {
    matches!(error.kind(), ::redis::ErrorKind::Server(_) | ::redis::ErrorKind::Extension)
}

/// Renders a Redis client error on one line: a server's error as it sent it ("NOREPLICAS
/// Not enough good replicas to write."), any other as the client describes it
/// ("Password authentication failed - AuthenticationFailed").
pub fn describe_redis_error(error: &RedisError) -> String {
    let text = match (error.code(), error.detail()) {
        (Some(code), Some(detail)) if is_server_error(error) => format!("{code} {detail}"),
        _ => error.to_string(),
    };
    text.replace(['\r', '\n'], " ")
}

/// The `key:value` lines of an `INFO` answer; section headers and blank lines are skipped.
pub fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Parses `ip=127.0.0.1,port=6380,state=online,offset=14,lag=0`.
fn parse_replica_line(line: &str) -> Result<RedisReplicaInfo, String> {
    let fields: BTreeMap<&str, &str> = line.split(',').filter_map(|field| field.split_once('=')).collect();
    let field = |name: &str| fields.get(name).copied().ok_or_else(|| format!("no {name} in {line:?}"));
    let number = |name: &str| field(name)?.parse::<i64>().map_err(|_| format!("{name} is not a number in {line:?}"));
    Ok(RedisReplicaInfo {
        ip: field("ip")?.to_string(),
        port: u16::try_from(number("port")?).map_err(|_| format!("port out of range in {line:?}"))?,
        state: field("state")?.to_string(),
        offset: u64::try_from(number("offset")?).unwrap_or(0),
        // The master computes the lag from a cached clock, so an acknowledgement newer than
        // that clock shows as -1; older servers leave the lag out.
        lag: if fields.contains_key("lag") { u64::try_from(number("lag")?).unwrap_or(0) } else { 0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> RedisTarget {
        RedisTarget {
            host: "127.0.0.1".into(),
            port: 6379,
            username: Some("vigil".into()),
            password: Some("hunter2".into()),
            timeout: Duration::from_millis(1500),
            tls: None,
        }
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let shown = format!("{:?}", target());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn a_master_info_is_read_with_its_replicas() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=6380,state=online,offset=1234,lag=0\r\n\
                    slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=3\r\n\
                    master_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_repl_offset:1234\r\n";
        let seen = RedisObservation::from_replication_info(info).unwrap();
        assert!(seen.is_master);
        assert_eq!(seen.master_repl_offset, 1234);
        assert_eq!(seen.connected_replicas, 2);
        assert_eq!(seen.replica_offset, None);
        assert_eq!(seen.link_status, None);
        assert_eq!(seen.upstream, None);
        assert_eq!(
            seen.replicas,
            [
                RedisReplicaInfo { ip: "127.0.0.1".into(), port: 6380, state: "online".into(), offset: 1234, lag: 0 },
                RedisReplicaInfo { ip: "127.0.0.1".into(), port: 6381, state: "wait_bgsave".into(), offset: 0, lag: 3 },
            ]
        );
    }

    #[test]
    fn a_replica_info_is_read_with_its_upstream() {
        let info = "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_port:6379\r\n\
                    master_link_status:up\r\nslave_repl_offset:99\r\nconnected_slaves:0\r\nmaster_repl_offset:99\r\n";
        let seen = RedisObservation::from_replication_info(info).unwrap();
        assert!(!seen.is_master);
        assert_eq!(seen.replica_offset, Some(99));
        assert_eq!(seen.link_status.as_deref(), Some("up"));
        assert_eq!(seen.upstream.as_deref(), Some("10.0.0.1:6379"));
        assert!(seen.replicas.is_empty());
    }

    #[test]
    fn broken_info_is_refused() {
        assert!(RedisObservation::from_replication_info("# Replication\r\n").is_err());
        assert!(RedisObservation::from_replication_info("role:master\r\nmaster_repl_offset:x\r\n").is_err());
    }

    /// A lag of -1 (an acknowledgement newer than the master's cached clock) reads as 0; a
    /// replica line that does not parse is left out rather than failing its master's check.
    #[test]
    fn odd_replica_lines_never_fail_the_check() {
        let info = "role:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=6380,state=online,offset=0,lag=-1\r\n\
                    slave1:ip=127.0.0.1,port=oops\r\nmaster_repl_offset:0\r\n";
        let seen = RedisObservation::from_replication_info(info).unwrap();
        assert_eq!(seen.connected_replicas, 2);
        assert_eq!(
            seen.replicas,
            [RedisReplicaInfo { ip: "127.0.0.1".into(), port: 6380, state: "online".into(), offset: 0, lag: 0 }]
        );
    }

    /// Nothing listens on the port, so the check fails fast, as data.
    #[tokio::test]
    async fn an_unreachable_member_is_a_failed_outcome() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let probe = RedisProbe::new(RedisTarget { port, ..target() }, 1);
        match probe.check().await {
            RedisOutcome::Failed { reason } => {
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
                assert!(!reason.contains("hunter2"), "{reason}");
                assert!(!reason.contains('\n'), "{reason}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
