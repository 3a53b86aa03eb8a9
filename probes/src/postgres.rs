//! The PostgreSQL probe: one status query per check over one kept connection, plus the
//! epoch read and a heartbeat write when the member is a primary.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, Config, Statement};

use crate::postgres_tls::PgTls;

/// Where and how to reach one PostgreSQL member.
///
/// `Debug` shows everything but the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// That role's password; never logged.
    pub password: String,
    /// Database to connect to.
    pub database: String,
    /// Bound on one check: connecting, and every statement (`statement_timeout`).
    pub timeout: Duration,
    /// TLS to the server; plain TCP without it.
    pub tls: Option<PgTls>,
}

/// A session's connection task: it runs the protocol until the session ends.
pub type PgConnection = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

impl PgTarget {
    /// "host:port", for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects with `config` (this target's, perhaps adjusted), over TLS when the target
    /// has it: the session and its connection task. The error is described, in one line.
    pub async fn connect(&self, mut config: Config) -> Result<(Client, PgConnection), String> {
        let (mode, connector) = crate::postgres_tls::connector(self.tls.as_ref())
            .map_err(|reason| format!("TLS settings unusable: {reason}"))?;
        config.ssl_mode(mode);
        let (client, connection) = config.connect(connector).await.map_err(|error| describe_error(&error))?;
        Ok((client, Box::pin(connection)))
    }

    /// A connection configuration for this target: `connect_timeout` and the server-side
    /// `statement_timeout` are both the target's timeout. TLS is settled by
    /// [`PgTarget::connect`].
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .application_name("vigil")
            .connect_timeout(self.timeout)
            .options(session_options(self.timeout));
        config
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PgTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What one check saw on a member that answered.
///
/// Fields that do not apply to the member's role (a primary has no receive LSN, a replica
/// writes no heartbeat) are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgObservation {
    /// `pg_is_in_recovery()`: true on a replica.
    pub in_recovery: bool,
    /// The timeline: a primary's current one, a replica's streamed one (or its checkpoint's).
    pub timeline: Option<u32>,
    /// Primary: `pg_current_wal_lsn()`.
    pub current_lsn: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()`, the WAL received and flushed.
    pub receive_lsn: Option<u64>,
    /// Replica: `pg_last_wal_replay_lsn()`, the WAL replayed.
    pub replay_lsn: Option<u64>,
    /// Replica: milliseconds since the last replayed transaction committed on its
    /// primary (`now() - pg_last_xact_replay_timestamp()`, never negative).
    pub replay_delay_ms: Option<u64>,
    /// Replica: `pg_stat_wal_receiver.status`, e.g. "streaming"; `None` without a receiver.
    pub receiver_status: Option<String>,
    /// Replica: the upstream it streams from, "sender_host:sender_port".
    pub upstream: Option<String>,
    /// Primary: the group's epoch from `vigil.epoch`; `None` if the table or row is missing.
    pub epoch: Option<u64>,
    /// Primary: whether the heartbeat write into `vigil.heartbeat` succeeded.
    pub heartbeat: Option<Result<(), String>>,
}

/// The result of one check: an answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The member answered the status query.
    Answered(PgObservation),
    /// The member could not be reached or did not answer in time.
    Failed {
        /// What went wrong, in one line, without secrets.
        reason: String,
    },
}

/// Checks one PostgreSQL member, keeping one connection to it across checks.
///
/// Each probe owns its connection: probes of different members share nothing, so one
/// hung member never delays the others.
#[derive(Debug)]
pub struct PgProbe {
    target: PgTarget,
    group: String,
    node_id: u64,
    /// The kept connection; empty after an error, so the next check reconnects.
    session: Mutex<Option<Session>>,
}

impl PgProbe {
    /// A probe of `target` for the group `group`, writing heartbeats as `node_id`.
    pub fn new(target: PgTarget, group: String, node_id: u64) -> Self {
        PgProbe { target, group, node_id, session: Mutex::new(None) }
    }

    /// The member this probe checks.
    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    /// Checks the member once; returns within `target.timeout` (plus a few milliseconds)
    /// whatever the server does. A failure is data (`Failed`), never a panic or an `Err`.
    pub async fn check(&self) -> ProbeOutcome {
        let deadline = Instant::now() + self.target.timeout;
        // Every step below stops at `deadline` by itself; this outer bound is the
        // guarantee for anything that does not (such as waiting behind a concurrent
        // check of this same probe). Dropping the inner future drops the connection it
        // had taken out of `session`, which is what we want after a hang.
        let outcome = match timeout_at(deadline + OUTER_SLACK, self.check_until(deadline)).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::Failed {
                reason: format!("{} did not answer within {:?}", self.target.address(), self.target.timeout),
            },
        };
        if let ProbeOutcome::Failed { reason } = &outcome {
            tracing::debug!(member = %self.target.address(), %reason, "postgres probe failed");
        }
        outcome
    }

    async fn check_until(&self, deadline: Instant) -> ProbeOutcome {
        let mut slot = self.session.lock().await;
        let mut session = match slot.take() {
            Some(session) if !session.client.is_closed() => session,
            _ => match self.connect(deadline).await {
                Ok(session) => session,
                Err(reason) => return ProbeOutcome::Failed { reason },
            },
        };
        match self.observe(&mut session, deadline).await {
            Ok((observation, keep)) => {
                if keep {
                    *slot = Some(session);
                }
                ProbeOutcome::Answered(observation)
            }
            Err(reason) => ProbeOutcome::Failed { reason },
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<Session, String> {
        let address = self.target.address();
        let connected = timeout_at(deadline, self.target.connect(self.target.config())).await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(reason)) => return Err(format!("could not connect to {address}: {reason}")),
            Err(_) => return Err(format!("timed out connecting to {address}")),
        };
        let (closed, closed_signal) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut connection = connection;
            tokio::select! {
                ended = &mut connection => {
                    // The error also reaches the client as its next query's error, where
                    // it is reported; here it only matters for debugging.
                    if let Err(error) = ended {
                        tracing::debug!(error = %describe_error(&error), "postgres probe connection ended");
                    }
                }
                _ = closed_signal => {
                    // The session was dropped: the connection says goodbye to the server,
                    // but a hung server gets only a moment for that before it is dropped.
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                }
            }
        });
        let mut session = Session { client, _closed: closed, status_statement: None, heartbeat_table_ready: false };
        let prepared = timeout_at(deadline, session.client.prepare(STATUS_QUERY)).await;
        session.status_statement = Some(match prepared {
            Ok(Ok(statement)) => statement,
            Ok(Err(error)) => {
                return Err(format!("could not prepare the status query on {address}: {}", describe_error(&error)));
            }
            Err(_) => return Err(format!("timed out preparing the status query on {address}")),
        });
        Ok(session)
    }

    /// Runs the checks on one connection. Returns the observation and whether the
    /// connection is still fit to keep, or why the check failed.
    async fn observe(&self, session: &mut Session, deadline: Instant) -> Result<(PgObservation, bool), String> {
        let address = self.target.address();
        let Some(statement) = session.status_statement.clone() else {
            return Err(format!("no prepared status query for {address}"));
        };
        let row = match timeout_at(deadline, session.client.query_one(&statement, &[])).await {
            Ok(Ok(row)) => row,
            Ok(Err(error)) => {
                return Err(format!("status query on {address} failed: {}", describe_error(&error)));
            }
            Err(_) => return Err(format!("timed out waiting for the status query on {address}")),
        };
        let status =
            StatusRow::from_row(&row).map_err(|error| format!("unexpected status row from {address}: {error}"))?;

        let mut observation = PgObservation {
            in_recovery: status.in_recovery,
            timeline: status.timeline.and_then(|timeline| u32::try_from(timeline).ok()),
            current_lsn: status.current_lsn.map(u64::from),
            receive_lsn: status.receive_lsn.map(u64::from),
            replay_lsn: status.replay_lsn.map(u64::from),
            replay_delay_ms: status.replay_delay_ms.and_then(|delay| u64::try_from(delay).ok()),
            receiver_status: status.receiver_status,
            upstream: status.upstream,
            epoch: None,
            heartbeat: None,
        };
        if observation.in_recovery {
            return Ok((observation, true));
        }

        if status.epoch_table_exists {
            let epoch = timeout_at(deadline, session.client.query_opt(EPOCH_QUERY, &[&self.group])).await;
            observation.epoch = match epoch {
                Ok(Ok(row)) => {
                    row.and_then(|row| row.try_get::<_, i64>(0).ok()).and_then(|epoch| u64::try_from(epoch).ok())
                }
                // The table was dropped between the two queries, or the role may not
                // read it: the epoch is unknown, but the member did answer.
                Ok(Err(error)) if error.as_db_error().is_some() => {
                    if error.code() != Some(&SqlState::UNDEFINED_TABLE) {
                        tracing::debug!(
                            member = %address,
                            error = %describe_error(&error),
                            "could not read the epoch"
                        );
                    }
                    None
                }
                Ok(Err(error)) => {
                    return Err(format!("epoch query on {address} failed: {}", describe_error(&error)));
                }
                Err(_) => return Err(format!("timed out reading the epoch on {address}")),
            };
        }

        let (heartbeat, keep) = self.heartbeat(session, deadline).await;
        observation.heartbeat = Some(heartbeat);
        Ok((observation, keep))
    }

    /// Writes this node's heartbeat row; returns the outcome and whether the connection
    /// is still fit to keep. A server-side refusal (read-only primary, full disk) keeps
    /// it: the connection is fine, the primary just does not take writes.
    async fn heartbeat(&self, session: &mut Session, deadline: Instant) -> (Result<(), String>, bool) {
        let node_id = match i64::try_from(self.node_id) {
            Ok(node_id) => node_id,
            Err(_) => return (Err(format!("node id {} does not fit a bigint", self.node_id)), true),
        };
        let write = async {
            if !session.heartbeat_table_ready {
                session.client.batch_execute(HEARTBEAT_TABLE).await?;
                session.heartbeat_table_ready = true;
            }
            session.client.execute(HEARTBEAT_WRITE, &[&node_id]).await.map(drop)
        };
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => (Ok(()), true),
            Ok(Err(error)) => {
                let keep = error.as_db_error().is_some();
                (Err(format!("heartbeat write failed: {}", describe_error(&error))), keep)
            }
            // The write may still be running on the server; the connection's state is
            // unknown, so it is dropped.
            Err(_) => (Err("heartbeat write timed out".to_string()), false),
        }
    }
}

/// Renders a PostgreSQL client error with its causes on one line, e.g.
/// "db error: FATAL: password authentication failed for user \"vigil\"".
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// How far past the target's timeout the outer bound of a check lies; every step has
/// its own bound at the timeout itself, so this only catches what has none.
const OUTER_SLACK: Duration = Duration::from_millis(100);

/// Everything one check needs to know in one round trip. `pg_current_wal_lsn()` fails
/// during recovery, hence the `CASE`; the epoch table may not exist, so only its
/// existence is asked here. The timeline of a primary comes from its current WAL file name
/// (the checkpoint's lags behind a promotion until the next checkpoint); a replica's is the
/// one its WAL receiver streams.
const STATUS_QUERY: &str = "\
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END AS timeline,
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END AS current_lsn,
       pg_last_wal_receive_lsn() AS receive_lsn,
       pg_last_wal_replay_lsn() AS replay_lsn,
       CASE WHEN pg_is_in_recovery() THEN
           GREATEST(0, (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000))::bigint
       END AS replay_delay_ms,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver_status,
       (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver LIMIT 1) AS upstream,
       to_regclass('vigil.epoch') IS NOT NULL AS epoch_table_exists";

/// How long a dropped connection may take to close before it is abandoned.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const EPOCH_QUERY: &str = "SELECT epoch FROM vigil.epoch WHERE group_name = $1";

const HEARTBEAT_TABLE: &str = "\
CREATE SCHEMA IF NOT EXISTS vigil;
CREATE TABLE IF NOT EXISTS vigil.heartbeat (node_id bigint PRIMARY KEY, at timestamptz NOT NULL)";

const HEARTBEAT_WRITE: &str = "\
INSERT INTO vigil.heartbeat VALUES ($1, now())
ON CONFLICT (node_id) DO UPDATE SET at = excluded.at";

/// The server options of every vigil session: a statement timeout, and commits that never
/// wait for a synchronous standby. vigil's own writes (heartbeats, the epoch) prove the
/// server takes writes; in strict synchronous mode with no standby they must not hang, or a
/// primary whose clients are rightly blocked would look dead.
pub fn session_options(statement_timeout: Duration) -> String {
    // Zero would mean "no timeout" to the server, the opposite of what a tiny timeout asks.
    let milliseconds = statement_timeout.as_millis().max(1);
    format!("-c statement_timeout={milliseconds} -c synchronous_commit=local")
}

/// One kept connection and what has been set up on it.
struct Session {
    client: Client,
    /// Dropped with the session, which tells the connection task to wind down.
    _closed: oneshot::Sender<()>,
    status_statement: Option<Statement>,
    /// Whether `vigil.heartbeat` is known to exist, so it is created once per connection.
    heartbeat_table_ready: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Session")
            .field("closed", &self.client.is_closed())
            .field("heartbeat_table_ready", &self.heartbeat_table_ready)
            .finish_non_exhaustive()
    }
}

/// The status query's row, typed.
struct StatusRow {
    in_recovery: bool,
    timeline: Option<i32>,
    current_lsn: Option<PgLsn>,
    receive_lsn: Option<PgLsn>,
    replay_lsn: Option<PgLsn>,
    replay_delay_ms: Option<i64>,
    receiver_status: Option<String>,
    upstream: Option<String>,
    epoch_table_exists: bool,
}

impl StatusRow {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(StatusRow {
            in_recovery: row.try_get("in_recovery")?,
            timeline: row.try_get("timeline")?,
            current_lsn: row.try_get("current_lsn")?,
            receive_lsn: row.try_get("receive_lsn")?,
            replay_lsn: row.try_get("replay_lsn")?,
            replay_delay_ms: row.try_get("replay_delay_ms")?,
            receiver_status: row.try_get("receiver_status")?,
            upstream: row.try_get("upstream")?,
            epoch_table_exists: row.try_get("epoch_table_exists")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> PgTarget {
        PgTarget {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "vigil".into(),
            password: "hunter2".into(),
            database: "postgres".into(),
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
    fn config_carries_both_timeouts() {
        let config = target().config();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_millis(1500)));
        assert_eq!(config.get_options(), Some("-c statement_timeout=1500 -c synchronous_commit=local"));
    }

    #[test]
    fn a_zero_timeout_never_disables_the_statement_timeout() {
        assert_eq!(session_options(Duration::ZERO), "-c statement_timeout=1 -c synchronous_commit=local");
    }

    /// Nothing listens on the port, so the check fails fast, as data.
    #[tokio::test]
    async fn an_unreachable_member_is_a_failed_outcome() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let probe = PgProbe::new(PgTarget { port, ..target() }, "g".into(), 1);
        match probe.check().await {
            ProbeOutcome::Failed { reason } => {
                assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
                assert!(!reason.contains("hunter2"), "{reason}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
