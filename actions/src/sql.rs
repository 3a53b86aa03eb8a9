//! Actions done over SQL: promote, record the epoch, re-point a replica, wait for replay.
//! Each opens its own short-lived connection and is bounded in time as a whole.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout_at};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, Row};
use vigil_probes::{PgTarget, describe_error, session_options};

use crate::conninfo::sql_literal;
use crate::error::ActionError;
use crate::sync_setting::{Generation, write_generation};

/// How often `promote` checks whether the promotion has finished.
const PROMOTION_POLL: Duration = Duration::from_millis(10);

/// What [`promote`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The member was already a primary, so nothing was done.
    pub already_primary: bool,
    /// The WAL position the promotion keeps: the most the replica had received or replayed
    /// (promotion replays all it received), or the current LSN if it already was a primary.
    pub lsn: Option<u64>,
}

/// Promotes a replica to primary, waiting up to `wait` for the promotion to finish.
///
/// Idempotent: a member that is not in recovery is reported as `already_primary` and is
/// never promoted twice.
pub async fn promote(target: &PgTarget, wait: Duration) -> Result<Promoted, ActionError> {
    let address = target.address();
    let budget = target.timeout + wait;
    bounded(budget, format!("promoting {address} after {budget:?}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        let state = connection.recovery_state().await?;
        if !state.in_recovery {
            return Ok(Promoted { already_primary: true, lsn: state.current });
        }
        connection.promote(state.received, wait).await
    })
    .await
}

/// What [`promote_born_fenced`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BornFenced {
    /// What the promotion found or did.
    pub promoted: Promoted,
    /// How many client sessions the fence ended; `None` when the member already was a
    /// primary, which is left exactly as it was.
    pub sessions_ended: Option<u64>,
}

/// Promotes a replica that is read-only from the promotion's first moment: on one session,
/// `default_transaction_read_only = on` (and with `any_sync_standby`,
/// `synchronous_standby_names = '*'` of that generation, see
/// [`crate::set_synchronous_standby_names`]) through `ALTER SYSTEM` and a reload, unless
/// [`prepare_for_promotion`] already made it read-only by default; the standby's client
/// sessions ended, the reload seen in force, then the promotion, waited for up to
/// `wait`.
///
/// The reload is confirmed on the promoting session itself: the postmaster loads the
/// configuration before it passes the reload on to its children, so a child that sees the
/// new values proves that every session forked from then on starts with them. One session
/// instead of one per statement: on a loaded host each new connection costs a fork and an
/// authentication, and this is the step a failover's clients wait for.
///
/// A member that already is a primary (a promotion retried after it succeeded) is left as
/// it is: its node may have lifted the fence since, and fencing it again would undo what
/// the cluster confirmed.
pub async fn promote_born_fenced(
    target: &PgTarget,
    wait: Duration,
    any_sync_standby: Option<Generation>,
) -> Result<BornFenced, ActionError> {
    let address = target.address();
    let budget = target.timeout * 3 + wait;
    bounded(budget, format!("promoting {address} read-only after {budget:?}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        let state = connection.recovery_state().await?;
        if !state.in_recovery {
            let promoted = Promoted { already_primary: true, lsn: state.current };
            return Ok(BornFenced { promoted, sessions_ended: None });
        }
        // A replica readied ahead ([`prepare_for_promotion`]) needs no configuration write
        // (its fsync is the slowest part of a promotion on many disks) unless strict mode
        // asks for its synchronous setting too.
        let ready = any_sync_standby.is_none() && connection.read_only_configured().await?;
        if !ready {
            // ALTER SYSTEM refuses to run inside a transaction block, which a multi-statement
            // query would be: one statement per round trip, on the same session.
            connection
                .batch_execute(
                    "ALTER SYSTEM SET default_transaction_read_only = on",
                    "setting read-only before promoting",
                )
                .await?;
            if let Some(generation) = any_sync_standby {
                write_generation(&connection, generation).await?;
                connection
                    .batch_execute(
                        "ALTER SYSTEM SET synchronous_standby_names = '*'",
                        "setting synchronous_standby_names",
                    )
                    .await?;
            }
            connection.batch_execute("SELECT pg_reload_conf()", "reloading the configuration").await?;
        }
        let ended = connection.terminate_clients().await?;
        if !ready {
            connection.wait_for_reload(any_sync_standby.is_some(), target.timeout).await?;
        }
        let promoted = connection.promote(state.received, wait).await?;
        Ok(BornFenced { promoted, sessions_ended: Some(ended) })
    })
    .await
}

/// Records `epoch` for `group` in `vigil.epoch` on the member, creating the table if
/// needed; the stored epoch only grows (`GREATEST(existing, new)`).
///
/// Succeeding proves the member takes writes. A lower epoch than the stored one is not
/// an error (the row keeps the higher one) but is logged, since it means the caller acts
/// on a stale decision.
pub async fn write_epoch(target: &PgTarget, group: &str, epoch: u64) -> Result<(), ActionError> {
    let address = target.address();
    let epoch_value =
        i64::try_from(epoch).map_err(|_| ActionError::Unexpected(format!("epoch {epoch} does not fit a bigint")))?;
    bounded(target.timeout, format!("writing the epoch on {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        connection
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS vigil; \
                 CREATE TABLE IF NOT EXISTS vigil.epoch (\
                     group_name text PRIMARY KEY, \
                     epoch bigint NOT NULL, \
                     promoted_at timestamptz NOT NULL DEFAULT now())",
                "creating vigil.epoch",
            )
            .await?;
        let row = connection
            .query_one(
                "INSERT INTO vigil.epoch AS stored (group_name, epoch) VALUES ($1, $2) \
                 ON CONFLICT (group_name) DO UPDATE SET \
                     epoch = GREATEST(stored.epoch, excluded.epoch), \
                     promoted_at = CASE WHEN excluded.epoch > stored.epoch \
                                        THEN now() ELSE stored.promoted_at END \
                 RETURNING epoch",
                &[&group, &epoch_value],
                "writing the epoch",
            )
            .await?;
        let stored: i64 = connection.column(&row, 0)?;
        if stored > epoch_value {
            tracing::warn!(member = %address, group, epoch, stored, "kept a newer epoch");
        }
        Ok(())
    })
    .await
}

/// Points a replica at a new upstream: `ALTER SYSTEM SET primary_conninfo`, then a
/// configuration reload, which restarts its WAL receiver. Idempotent.
///
/// Refuses (`Unexpected`) a member that is not in recovery: a primary has no upstream.
pub async fn repoint(target: &PgTarget, primary_conninfo: &str) -> Result<(), ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("re-pointing {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        if !connection.in_recovery().await? {
            return Err(ActionError::Unexpected(format!(
                "{address} is not in recovery: refusing to re-point a primary"
            )));
        }
        // ALTER SYSTEM takes no parameters, so the value is quoted here; it refuses to
        // run in a transaction block, so it goes alone.
        let alter = format!("ALTER SYSTEM SET primary_conninfo = {}", sql_literal(primary_conninfo));
        connection.batch_execute(&alter, "setting primary_conninfo").await?;
        connection.batch_execute("SELECT pg_reload_conf()", "reloading the configuration").await?;
        tracing::info!(member = %address, "re-pointed replica");
        Ok(())
    })
    .await
}

/// Waits until the member has replayed WAL past `past_lsn` and returns its replay LSN;
/// polls `pg_last_wal_replay_lsn()` every 20 ms, reconnecting after errors, and gives up
/// with `Timeout` after `timeout`.
pub async fn wait_for_replay(target: &PgTarget, past_lsn: u64, timeout: Duration) -> Result<u64, ActionError> {
    let address = target.address();
    let deadline = Instant::now() + timeout;
    let mut last_seen = String::from("no answer yet");
    let polling = async {
        let mut connection: Option<Connection> = None;
        loop {
            let open = match connection.take() {
                Some(open) => Ok(open),
                None => Connection::open(target, target.timeout).await,
            };
            match open {
                Ok(open) => {
                    let polled = open
                        .query_one("SELECT pg_last_wal_replay_lsn()", &[], "reading the replay lsn")
                        .await
                        .and_then(|row| open.column::<Option<PgLsn>>(&row, 0));
                    match polled {
                        Ok(Some(replayed)) if u64::from(replayed) > past_lsn => {
                            return u64::from(replayed);
                        }
                        Ok(Some(replayed)) => {
                            last_seen = format!("replayed up to {replayed}");
                            connection = Some(open);
                        }
                        Ok(None) => {
                            last_seen = "no replay lsn: the member never replayed wal".into();
                            connection = Some(open);
                        }
                        Err(error) => last_seen = error.to_string(),
                    }
                }
                Err(error) => last_seen = error.to_string(),
            }
            sleep(REPLAY_POLL_INTERVAL).await;
        }
    };
    let result = timeout_at(deadline, polling).await;
    result.map_err(|_| {
        ActionError::Timeout(format!(
            "waiting {timeout:?} for {address} to replay past {}: {last_seen}",
            PgLsn::from(past_lsn)
        ))
    })
}

/// Waits until the replica `replica` streams from `primary` on the primary's current
/// timeline; returns that timeline. A replica whose WAL went past the point where the new
/// timeline forked never gets there (it needs `pg_rewind`): that is told as soon as it is
/// seen, by the primary's timeline history and the replica's replay position, rather than
/// waited out (an `Unexpected` error), and otherwise at the timeout.
pub async fn wait_for_upstream(replica: &PgTarget, primary: &PgTarget, timeout: Duration) -> Result<u32, ActionError> {
    let deadline = Instant::now() + timeout;
    let (timeline, forks) = bounded(primary.timeout, format!("reading the timeline of {}", primary.address()), async {
        let connection = Connection::open(primary, primary.timeout).await?;
        let row = connection
            .query_one(
                "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
                &[],
                "reading the current timeline",
            )
            .await?;
        let timeline: i32 = connection.column(&row, 0)?;
        Ok((timeline, connection.timeline_forks(timeline).await))
    })
    .await?;
    let address = replica.address();
    let mut last_seen = String::from("nothing yet");
    let polling = async {
        loop {
            let attempt = async {
                let connection = Connection::open(replica, replica.timeout).await?;
                let row = connection
                    .query_one(
                        "SELECT (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
                                (SELECT sender_port FROM pg_stat_wal_receiver LIMIT 1), \
                                (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1), \
                                pg_last_wal_replay_lsn()",
                        &[],
                        "reading the wal receiver",
                    )
                    .await?;
                let status: Option<String> = connection.column(&row, 0)?;
                let port: Option<i32> = connection.column(&row, 1)?;
                let received: Option<i32> = connection.column(&row, 2)?;
                let replayed: Option<PgLsn> = connection.column(&row, 3)?;
                Ok::<_, ActionError>((status, port, received, replayed.map(u64::from)))
            };
            match attempt.await {
                Ok((Some(status), Some(port), Some(received), _))
                    if status == "streaming" && port == i32::from(primary.port) && received >= timeline =>
                {
                    return Ok(());
                }
                Ok((_, _, Some(received), Some(replayed)))
                    if forks.get(&received).is_some_and(|fork| replayed > *fork) =>
                {
                    let fork = forks[&received];
                    return Err(ActionError::Unexpected(format!(
                        "{address} replayed timeline {received} up to {}, past {} where the primary's timeline \
                         {timeline} forked off: its WAL diverged, it needs pg_rewind",
                        PgLsn::from(replayed),
                        PgLsn::from(fork)
                    )));
                }
                Ok((status, port, received, _)) => {
                    last_seen = format!(
                        "receiver {}, from port {}, timeline {}",
                        status.as_deref().unwrap_or("not running"),
                        port.map_or_else(|| "-".to_string(), |p| p.to_string()),
                        received.map_or_else(|| "-".to_string(), |t| t.to_string())
                    );
                }
                Err(error) => last_seen = error.to_string(),
            }
            sleep(REPLAY_POLL_INTERVAL).await;
        }
    };
    timeout_at(deadline, polling).await.map_err(|_| {
        ActionError::Timeout(format!(
            "{address} does not stream timeline {timeline} from {} after {timeout:?} ({last_seen}); a replica \
             whose WAL went past the new timeline's fork point needs pg_rewind",
            primary.address()
        ))
    })??;
    Ok(u32::try_from(timeline).unwrap_or_default())
}

/// Fences a primary over SQL: `default_transaction_read_only = on` for every new
/// transaction, then every other client session terminated, so nothing that was writing
/// keeps writing, except a `pg_rewind` of vigil's reading from it (application name
/// `vigil-rewind`: it only reads). Returns how many sessions were terminated. A client that explicitly sets
/// its transactions read-write can still write: the stop fence is the one that cannot be
/// undone by a client.
pub async fn fence_read_only(target: &PgTarget) -> Result<u64, ActionError> {
    let address = target.address();
    bounded(target.timeout * 3, format!("fencing {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        connection
            .batch_execute(
                "ALTER SYSTEM SET default_transaction_read_only = on",
                "setting default_transaction_read_only",
            )
            .await?;
        connection.batch_execute("SELECT pg_reload_conf()", "reloading the configuration").await?;
        let terminated = connection.terminate_clients().await?;
        tracing::warn!(member = %address, terminated, "fenced: read-only, client sessions terminated");
        Ok(terminated)
    })
    .await
}

/// Runs `CHECKPOINT` on the member. After a promotion the control file still names the old
/// timeline until the first checkpoint on the new one, and `pg_rewind` reads the source's
/// timeline from there: without this it would wrongly answer "no rewind required".
pub async fn checkpoint(target: &PgTarget, timeout: Duration) -> Result<(), ActionError> {
    let address = target.address();
    bounded(timeout, format!("checkpoint on {address}"), async {
        let connection = Connection::open(target, timeout).await?;
        connection.batch_execute("CHECKPOINT", "running a checkpoint").await
    })
    .await
}

/// The switch points of a timeline history file: for each earlier timeline, the position
/// where it ended. Lines that do not parse (comments, blanks) are skipped.
fn parse_timeline_history(text: &str) -> BTreeMap<i32, u64> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let timeline = fields.next()?.parse::<i32>().ok()?;
            let switch_point = fields.next()?.parse::<PgLsn>().ok()?;
            Some((timeline, u64::from(switch_point)))
        })
        .collect()
}

/// Whether `default_transaction_read_only` is `on` for a session opened now: the read-only
/// fence as a client connecting now meets it. A fresh session on purpose, since a reloaded
/// setting reaches new sessions first; the postmaster may take a moment after
/// `pg_reload_conf()`, so a caller confirming a fence polls.
pub async fn read_only_in_force(target: &PgTarget) -> Result<bool, ActionError> {
    let address = target.address();
    bounded(target.timeout * 2, format!("reading default_transaction_read_only on {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        Ok(connection.read_only_default().await? == "on")
    })
    .await
}

/// Waits up to `timeout` until the read-only fence is lifted for every session opened from
/// now on: `default_transaction_read_only` off in one session kept for the wait and asked
/// every few milliseconds. A kept session takes in a reload one statement late, and only
/// after the postmaster has (which passes the reload on to its children), so what it sees
/// holds for new sessions too. A broken session is opened again; the error says what was
/// seen last.
pub async fn wait_until_read_write(target: &PgTarget, timeout: Duration) -> Result<(), ActionError> {
    let deadline = Instant::now() + timeout;
    let mut kept: Option<Connection> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = async {
            let connection = match kept.take() {
                Some(connection) => connection,
                None => Connection::open(target, target.timeout).await?,
            };
            let value = connection.read_only_default().await?;
            Ok::<_, ActionError>((value, connection))
        };
        let last = match tokio::time::timeout(remaining.min(target.timeout * 2), attempt).await {
            Ok(Ok((value, _))) if value == "off" => return Ok(()),
            Ok(Ok((value, connection))) => {
                kept = Some(connection);
                format!("default_transaction_read_only is still {value}")
            }
            Ok(Err(error @ ActionError::Sql(_))) => return Err(error),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer from {} within {:?}", target.address(), remaining.min(target.timeout * 2)),
        };
        if Instant::now() >= deadline {
            return Err(ActionError::Timeout(format!(
                "{} was not writable within {timeout:?}: {last}",
                target.address()
            )));
        }
        sleep(PROMOTION_POLL).await;
    }
}

/// Whether the member is a replica (`pg_is_in_recovery()`).
pub async fn in_recovery(target: &PgTarget) -> Result<bool, ActionError> {
    let address = target.address();
    bounded(target.timeout * 2, format!("reading the recovery state of {address}"), async {
        Connection::open(target, target.timeout).await?.in_recovery().await
    })
    .await
}

/// Lifts a read-only fence: `default_transaction_read_only` back to its default. Under
/// vigil's configuration lock, so that a [`prepare_for_promotion`] that found the member a
/// replica cannot write its read-only default after this.
pub async fn unfence(target: &PgTarget) -> Result<(), ActionError> {
    let address = target.address();
    bounded(target.timeout * 2, format!("lifting the fence on {address}"), async {
        let connection = Connection::open(target, target.timeout).await?;
        connection.lock_configuration().await?;
        connection
            .batch_execute("ALTER SYSTEM RESET default_transaction_read_only", "resetting the read-only default")
            .await?;
        connection.batch_execute("SELECT pg_reload_conf()", "reloading the configuration").await?;
        tracing::info!(member = %address, "fence lifted");
        Ok(())
    })
    .await
}

/// Readies a replica for a promotion: `default_transaction_read_only = on` in its
/// configuration (through `ALTER SYSTEM` and a reload) unless it is there already, so that
/// [`promote_born_fenced`] finds it in force and need not write the configuration while
/// clients wait. A replica refuses writes anyway, so its readers see no difference. Refused
/// ([`ActionError::Unexpected`]) by a member that is not in recovery, checked under vigil's
/// configuration lock, which the lift takes too: a primary is never fenced by it. Returns
/// whether it changed anything.
pub async fn prepare_for_promotion(target: &PgTarget) -> Result<bool, ActionError> {
    let address = target.address();
    bounded(target.timeout * 3, format!("readying {address} for a promotion"), async {
        let connection = Connection::open(target, target.timeout).await?;
        connection.lock_configuration().await?;
        if !connection.in_recovery().await? {
            return Err(ActionError::Unexpected(format!("{address} is not a replica: not readied for a promotion")));
        }
        if connection.read_only_configured().await? {
            return Ok(false);
        }
        connection
            .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on", "setting read-only by default")
            .await?;
        connection.batch_execute("SELECT pg_reload_conf()", "reloading the configuration").await?;
        Ok(true)
    })
    .await
}

/// Whether a boolean setting as a configuration file spells it is on.
fn is_on(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1" | "t" | "y")
}

/// The advisory lock key that serialises vigil's configuration changes on one server (the
/// bytes of "vigilcfg").
const CONFIGURATION_LOCK: i64 = 0x7669_6769_6c63_6667;

/// How long a dropped connection may take to close before it is abandoned.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How often [`wait_for_replay`] asks for the replay position.
const REPLAY_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `action` for at most `budget`; `what` completes "timed out ...".
pub(crate) async fn bounded<T>(
    budget: Duration,
    what: String,
    action: impl Future<Output = Result<T, ActionError>>,
) -> Result<T, ActionError> {
    tokio::time::timeout(budget, action).await.unwrap_or(Err(ActionError::Timeout(what)))
}

/// What [`Connection::recovery_state`] read.
struct RecoveryState {
    in_recovery: bool,
    received: Option<u64>,
    current: Option<u64>,
}

/// One short-lived connection to the member an action works on.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) address: String,
    /// Dropped with the connection, which tells the connection task to wind down.
    _closed: oneshot::Sender<()>,
}

impl Connection {
    /// Connects with `statement_timeout` as the server-side bound on each statement.
    pub(crate) async fn open(target: &PgTarget, statement_timeout: Duration) -> Result<Self, ActionError> {
        let address = target.address();
        let mut config = target.config();
        config.options(session_options(statement_timeout));
        let (client, connection) = target
            .connect(config)
            .await
            .map_err(|reason| ActionError::Connect(format!("connecting to {address}: {reason}")))?;
        let (closed, closed_signal) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut connection = connection;
            tokio::select! {
                ended = &mut connection => {
                    // A broken connection also fails the next statement, which reports it.
                    if let Err(error) = ended {
                        tracing::debug!(error = %describe_error(&error), "action connection ended");
                    }
                }
                _ = closed_signal => {
                    // The action is over: the connection says goodbye to the server, but a
                    // hung server gets only a moment for that before it is dropped.
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
                }
            }
        });
        Ok(Connection { client, address, _closed: closed })
    }

    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
    ) -> Result<Row, ActionError> {
        self.client.query_one(sql, params).await.map_err(|error| self.error(what, &error))
    }

    pub(crate) async fn batch_execute(&self, sql: &str, what: &str) -> Result<(), ActionError> {
        self.client.batch_execute(sql).await.map_err(|error| self.error(what, &error))
    }

    /// Where each earlier timeline in the history of `timeline` ended, from its history file
    /// (`pg_wal/{timeline:08X}.history`: parent timeline, switch point, reason per line).
    /// Empty when it cannot be read (timeline 1 has none; reading it needs a superuser or
    /// `pg_read_server_files`): then a diverged replica is only found at the timeout.
    async fn timeline_forks(&self, timeline: i32) -> BTreeMap<i32, u64> {
        if timeline <= 1 {
            return BTreeMap::new();
        }
        let path = format!("pg_wal/{timeline:08X}.history");
        match self.query_one("SELECT pg_read_file($1)", &[&path], "reading the timeline history").await {
            Ok(row) => self.column::<String>(&row, 0).map(|text| parse_timeline_history(&text)).unwrap_or_default(),
            Err(error) => {
                tracing::debug!(%error, "timeline history not readable: a diverged replica is found at the timeout");
                BTreeMap::new()
            }
        }
    }

    /// Takes vigil's configuration lock for the rest of this session (it ends with it).
    pub(crate) async fn lock_configuration(&self) -> Result<(), ActionError> {
        self.batch_execute(
            &format!("SELECT pg_advisory_lock({CONFIGURATION_LOCK})"),
            "taking vigil's configuration lock",
        )
        .await
    }

    /// Whether the configuration files set `default_transaction_read_only = on` and this
    /// session has it in force (the reload that set it has reached the server).
    async fn read_only_configured(&self) -> Result<bool, ActionError> {
        let row = self
            .query_one(
                "SELECT coalesce((SELECT setting FROM pg_file_settings \
                                  WHERE name = 'default_transaction_read_only' \
                                  ORDER BY seqno DESC LIMIT 1), 'off'), \
                        current_setting('default_transaction_read_only')",
                &[],
                "reading the configured read-only default",
            )
            .await?;
        let configured: String = self.column(&row, 0)?;
        let in_force: String = self.column(&row, 1)?;
        Ok(is_on(&configured) && in_force == "on")
    }

    /// `default_transaction_read_only` as this session has it.
    async fn read_only_default(&self) -> Result<String, ActionError> {
        let row = self
            .query_one(
                "SELECT current_setting('default_transaction_read_only')",
                &[],
                "reading default_transaction_read_only",
            )
            .await?;
        self.column(&row, 0)
    }

    async fn in_recovery(&self) -> Result<bool, ActionError> {
        let row = self.query_one("SELECT pg_is_in_recovery()", &[], "reading the recovery state").await?;
        self.column(&row, 0)
    }

    /// Whether the member is in recovery, the most WAL it received or replayed, and its
    /// current position when it is a primary.
    async fn recovery_state(&self) -> Result<RecoveryState, ActionError> {
        let row = self
            .query_one(
                "SELECT pg_is_in_recovery(), \
                 GREATEST(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()), \
                 CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END",
                &[],
                "reading the recovery state",
            )
            .await?;
        let received: Option<PgLsn> = self.column(&row, 1)?;
        let current: Option<PgLsn> = self.column(&row, 2)?;
        Ok(RecoveryState {
            in_recovery: self.column(&row, 0)?,
            received: received.map(u64::from),
            current: current.map(u64::from),
        })
    }

    /// Asks a replica that kept up to `received` to promote, and waits up to `wait` until
    /// it has.
    async fn promote(&self, received: Option<u64>, wait: Duration) -> Result<Promoted, ActionError> {
        let address = &self.address;
        // Ask without waiting, then poll: pg_promote's own wait checks only ten times a second,
        // and every millisecond of a failover counts.
        match self.client.query_one("SELECT pg_promote(false)", &[]).await {
            Ok(row) => {
                if !self.column::<bool>(&row, 0)? {
                    return Err(ActionError::Unexpected(format!("{address} refused the promotion request")));
                }
            }
            // Someone else promoted it between our two statements: it is a primary now,
            // and not by our hand.
            Err(error) if error.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
                if !self.in_recovery().await? {
                    let current = self.recovery_state().await?.current;
                    return Ok(Promoted { already_primary: true, lsn: current });
                }
                return Err(self.error("promoting", &error));
            }
            Err(error) => return Err(self.error("promoting", &error)),
        }
        let deadline = Instant::now() + wait;
        while self.in_recovery().await? {
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "waiting {} s for {address} to finish promoting",
                    wait.as_secs()
                )));
            }
            sleep(PROMOTION_POLL).await;
        }
        tracing::info!(member = %address, received_lsn = ?received, "promoted");
        Ok(Promoted { already_primary: false, lsn: received })
    }

    /// Ends every other client session, except a `pg_rewind` of vigil's reading from this
    /// server (application name `vigil-rewind`: it only reads); how many were ended.
    async fn terminate_clients(&self) -> Result<u64, ActionError> {
        let row = self
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 AND application_name IS DISTINCT FROM 'vigil-rewind'",
                &[],
                "terminating client sessions",
            )
            .await?;
        let terminated: i64 = self.column(&row, 0)?;
        Ok(u64::try_from(terminated).unwrap_or(0))
    }

    /// Waits up to `timeout` until this session has taken in the read-only default (and with
    /// `any_sync_standby`, `synchronous_standby_names = '*'`) from a reload.
    async fn wait_for_reload(&self, any_sync_standby: bool, timeout: Duration) -> Result<(), ActionError> {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self
                .query_one(
                    "SELECT current_setting('default_transaction_read_only'), \
                     current_setting('synchronous_standby_names')",
                    &[],
                    "reading the reloaded settings",
                )
                .await?;
            let read_only: String = self.column(&row, 0)?;
            let standbys: String = self.column(&row, 1)?;
            if read_only == "on" && (!any_sync_standby || standbys == "*") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ActionError::Timeout(format!(
                    "{} did not take in its reloaded configuration within {timeout:?}: \
                     default_transaction_read_only = {read_only}, synchronous_standby_names = '{standbys}'",
                    self.address
                )));
            }
            sleep(PROMOTION_POLL).await;
        }
    }

    pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
        &self,
        row: &'a Row,
        index: usize,
    ) -> Result<T, ActionError> {
        row.try_get(index).map_err(|error| {
            ActionError::Unexpected(format!("reading column {index} from {}: {}", self.address, describe_error(&error)))
        })
    }

    /// Classifies a client error: the server's own errors are `Sql`, the rest mean the
    /// connection is gone.
    pub(crate) fn error(&self, what: &str, error: &tokio_postgres::Error) -> ActionError {
        let message = format!("{what} on {}: {}", self.address, describe_error(error));
        if error.as_db_error().is_some() { ActionError::Sql(message) } else { ActionError::Connect(message) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boolean_settings_read_as_the_server_reads_them() {
        for on in ["on", "ON", "true", "yes", "1", " on "] {
            assert!(is_on(on), "{on:?}");
        }
        for off in ["off", "false", "no", "0", "", "onward"] {
            assert!(!is_on(off), "{off:?}");
        }
    }

    #[test]
    fn a_timeline_history_gives_where_each_parent_timeline_ended() {
        let history = "1\t0/4045338\tno recovery target specified\n\n# a comment\n2\t0/5000A0\tno recovery \
                       target specified\n";
        let forks = parse_timeline_history(history);
        assert_eq!(forks, BTreeMap::from([(1, 0x0404_5338), (2, 0x0050_00A0)]));
        assert!(parse_timeline_history("garbage\n1 not-an-lsn\n").is_empty());
    }
}
