//! Failover actions on Redis members: promote a replica (`REPLICAOF NO ONE`), record the
//! group's epoch, re-point a replica, wait for a replica to follow or catch up, pause and
//! resume writes on a master, and require replicas for writes.
//!
//! Each action opens its own short-lived connection and is bounded in time as a whole;
//! each is idempotent: asking for what is already true succeeds without doing it twice.

use std::future::Future;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Cmd, FromRedisValue, RedisError};
use tokio::time::{Instant, sleep, timeout_at};
use vigil_probes::{EPOCH_KEY, RedisObservation, RedisTarget, describe_redis_error, is_server_error};

use crate::error::ActionError;

/// How often the waits ask for the replication state.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The key [`redis_write_refusal`] writes to check a fence: vigil's own, read by nobody.
pub const FENCE_CHECK_KEY: &str = "vigil:fence-check";

/// Sets [`EPOCH_KEY`] to `ARGV[1]` unless it already holds a number at least as large, and
/// returns what it holds afterwards. Epochs are compared as decimal strings (length, then
/// text) so that numbers beyond Lua's 2^53 compare exactly; a value that is not a decimal
/// number is not an epoch and is replaced.
const WRITE_EPOCH_SCRIPT: &str = r"
local stored = redis.call('GET', KEYS[1])
local new = ARGV[1]
if stored then
  stored = string.gsub(stored, '^0+(%d)', '%1')
  if string.match(stored, '^%d+$') and
     (#stored > #new or (#stored == #new and stored >= new)) then
    return stored
  end
end
redis.call('SET', KEYS[1], new)
return new
";

/// What [`redis_promote`] found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisPromoted {
    /// The member was already a master, so nothing was done.
    pub already_master: bool,
    /// The member's `master_repl_offset` after the promotion (or as found): the write
    /// position the new master starts from.
    pub offset: u64,
}

/// A member's replication role, as [`redis_role`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisRole {
    /// `role:master`.
    pub is_master: bool,
    /// A master's `master_repl_offset`, a replica's `slave_repl_offset` (the stream it has
    /// processed).
    pub offset: u64,
    /// A replica's master, "host:port".
    pub upstream: Option<String>,
}

/// The credentials a replica logs in to its master with (`masteruser`, `masterauth`).
///
/// `Debug` shows everything but the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisMasterAuth {
    /// ACL user; `None` for the default user (`requirepass`).
    pub username: Option<String>,
    /// The password; never logged.
    pub password: String,
}

impl std::fmt::Debug for RedisMasterAuth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisMasterAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Promotes a replica to master with `REPLICAOF NO ONE`, then checks that it reports
/// `role:master`; the whole action is bounded by `timeout`.
///
/// Idempotent: a member that already is a master is reported as `already_master` and left
/// alone. Redis keeps the replication history across the promotion (its old replication
/// id becomes the secondary one), so replicas re-pointed to it continue with a partial
/// sync when they had not gone past its offset.
pub async fn redis_promote(target: &RedisTarget, timeout: Duration) -> Result<RedisPromoted, ActionError> {
    let address = target.address();
    bounded(timeout, format!("promoting {address} after {timeout:?}"), async {
        let mut session = Session::open(target, timeout).await?;
        let before = session.replication().await?;
        if before.is_master {
            return Ok(RedisPromoted { already_master: true, offset: before.master_repl_offset });
        }
        session.run::<()>(&command("REPLICAOF", &["NO", "ONE"]), "REPLICAOF NO ONE").await?;
        let after = session.replication().await?;
        if !after.is_master {
            return Err(ActionError::Unexpected(format!("{address} still reports role:slave after REPLICAOF NO ONE")));
        }
        tracing::info!(
            member = %address,
            offset = after.master_repl_offset,
            upstream = ?before.upstream,
            "promoted"
        );
        Ok(RedisPromoted { already_master: false, offset: after.master_repl_offset })
    })
    .await
}

/// Records `epoch` in [`EPOCH_KEY`] on the member and returns the epoch the key holds
/// afterwards. The stored epoch only grows: a small script sets it only when the stored
/// value is lower, missing or not a number.
///
/// Succeeding proves the member takes writes; a refusal (`READONLY` on a replica,
/// `NOREPLICAS`) is an [`ActionError::Redis`]. A lower epoch than the stored one is not an
/// error (the key keeps the higher one) but is logged, since it means the caller acts on a
/// stale decision. Bounded by `target.timeout`.
pub async fn redis_write_epoch(target: &RedisTarget, epoch: u64) -> Result<u64, ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("writing the epoch on {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        let mut script = command("EVAL", &[WRITE_EPOCH_SCRIPT, "1", EPOCH_KEY]);
        script.arg(epoch.to_string());
        let stored: String = session.run(&script, "writing the epoch").await?;
        let stored: u64 = stored.parse().map_err(|_| {
            ActionError::Unexpected(format!("{address} answered {stored:?} to the epoch write, not a number"))
        })?;
        if stored > epoch {
            tracing::warn!(member = %address, epoch, stored, "kept a newer epoch");
        }
        Ok(stored)
    })
    .await
}

/// Points the member at a new master with `REPLICAOF master_host master_port`, after
/// setting `masteruser` and `masterauth` when `master_auth` is given (otherwise the
/// member's own settings stay, which is how the harness and most setups configure them).
///
/// Idempotent: Redis answers "Already connected to specified master" and does nothing
/// when the member already follows that master. A master is demoted by this: it drops its
/// data set and takes a full copy from the new master, which is how an old master rejoins;
/// it is logged as a warning. Bounded by `target.timeout`.
pub async fn redis_repoint(
    target: &RedisTarget,
    master_host: &str,
    master_port: u16,
    master_auth: Option<&RedisMasterAuth>,
) -> Result<(), ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("re-pointing {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        if let Some(auth) = master_auth {
            let user = auth.username.as_deref().unwrap_or("");
            session.run::<()>(&command("CONFIG", &["SET", "masteruser", user]), "setting masteruser").await?;
            session.run::<()>(&command("CONFIG", &["SET", "masterauth", &auth.password]), "setting masterauth").await?;
        }
        let before = session.replication().await?;
        let mut replicaof = command("REPLICAOF", &[master_host]);
        replicaof.arg(master_port);
        session.run::<()>(&replicaof, "REPLICAOF").await?;
        if before.is_master {
            tracing::warn!(member = %address, master = %format!("{master_host}:{master_port}"), "demoted a master");
        } else {
            tracing::info!(member = %address, master = %format!("{master_host}:{master_port}"), "re-pointed replica");
        }
        Ok(())
    })
    .await
}

/// Waits until the member is a replica of `master_host:master_port` (as `INFO replication`
/// names it: the host exactly as given to `REPLICAOF`) with `master_link_status:up`, and
/// returns its `slave_repl_offset`. Polls every 20 ms, reconnecting after errors; gives up
/// with `Timeout` after `timeout`.
pub async fn redis_wait_for_upstream(
    replica: &RedisTarget,
    master_host: &str,
    master_port: u16,
    timeout: Duration,
) -> Result<u64, ActionError> {
    let upstream = format!("{master_host}:{master_port}");
    let (offset, last_seen) = poll_replication(replica, timeout, |seen| {
        let following = !seen.is_master
            && seen.upstream.as_deref() == Some(upstream.as_str())
            && seen.link_status.as_deref() == Some("up");
        if following {
            return Ok(seen.replica_offset.unwrap_or(seen.master_repl_offset));
        }
        Err(if seen.is_master {
            "a master".to_string()
        } else {
            format!(
                "following {}, link {}",
                seen.upstream.as_deref().unwrap_or("nothing"),
                seen.link_status.as_deref().unwrap_or("unknown")
            )
        })
    })
    .await;
    offset.ok_or_else(|| {
        ActionError::Timeout(format!(
            "waiting {timeout:?} for {} to follow {upstream} with its link up ({last_seen})",
            replica.address()
        ))
    })
}

/// Waits until the member has processed the replication stream up to `past_offset`
/// (`slave_repl_offset >= past_offset`, or a master's `master_repl_offset >= past_offset`)
/// and returns that offset. Polls every 20 ms, reconnecting after errors; gives up with
/// `Timeout` after `timeout`.
pub async fn redis_wait_for_offset(
    replica: &RedisTarget,
    past_offset: u64,
    timeout: Duration,
) -> Result<u64, ActionError> {
    let (offset, last_seen) = poll_replication(replica, timeout, |seen| {
        let offset = if seen.is_master {
            seen.master_repl_offset
        } else {
            seen.replica_offset.unwrap_or(seen.master_repl_offset)
        };
        if offset >= past_offset { Ok(offset) } else { Err(format!("at offset {offset}")) }
    })
    .await;
    offset.ok_or_else(|| {
        ActionError::Timeout(format!(
            "waiting {timeout:?} for {} to reach offset {past_offset} ({last_seen})",
            replica.address()
        ))
    })
}

/// Pauses writes on a master for `duration` (`CLIENT PAUSE <ms> WRITE`) and returns its
/// `master_repl_offset` read in the same transaction: the position every write accepted
/// before the pause lies within. Reads keep being served; writes block until the pause
/// ends or [`redis_unpause`] lifts it. The master keeps pinging its replicas during the
/// pause, which moves the offset a little further, so compare replicas with `>=`.
///
/// Idempotent: pausing again just sets the new end of the pause. Bounded by
/// `target.timeout`.
pub async fn redis_pause_writes(target: &RedisTarget, duration: Duration) -> Result<u64, ActionError> {
    let address = target.address();
    // Zero would be refused by the server; a pause always lasts at least a millisecond.
    let milliseconds = duration.as_millis().max(1).to_string();
    bounded(target.timeout, format!("pausing writes on {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        if !session.replication().await?.is_master {
            // A replica takes no client writes anyway, and its offset would mean something
            // else: the caller meant a master.
            return Err(ActionError::Unexpected(format!("{address} is not a master: refusing to pause its writes")));
        }
        // One transaction, so the offset is read with the pause already in force.
        let mut pause_and_read = ::redis::pipe();
        pause_and_read
            .atomic()
            .cmd("CLIENT")
            .arg("PAUSE")
            .arg(&milliseconds)
            .arg("WRITE")
            .ignore()
            .cmd("INFO")
            .arg("replication");
        let (info,): (String,) = pause_and_read
            .query_async(&mut session.connection)
            .await
            .map_err(|error| session.error("pausing writes", &error))?;
        let seen = RedisObservation::from_replication_info(&info)
            .map_err(|error| ActionError::Unexpected(format!("INFO replication from {address}: {error}")))?;
        tracing::info!(member = %address, offset = seen.master_repl_offset, ?duration, "paused writes");
        Ok(seen.master_repl_offset)
    })
    .await
}

/// Lifts a pause (`CLIENT UNPAUSE`); a member that is not paused is left as it is.
/// Bounded by `target.timeout`.
pub async fn redis_unpause(target: &RedisTarget) -> Result<(), ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("lifting the pause on {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        session.run::<()>(&command("CLIENT", &["UNPAUSE"]), "lifting the pause").await?;
        tracing::info!(member = %address, "writes resumed");
        Ok(())
    })
    .await
}

/// Sets `min-replicas-to-write` and `min-replicas-max-lag`: a master then refuses writes
/// (`NOREPLICAS`) unless that many replicas acknowledged within that many seconds. Zero
/// replicas turns the check off. Bounded by `target.timeout`.
pub async fn redis_set_min_replicas(
    target: &RedisTarget,
    min_replicas: u32,
    max_lag_s: u32,
) -> Result<(), ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("setting min-replicas on {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        redis_write_settings(min_replicas, max_lag_s, false)
            .query_async::<()>(&mut session.connection)
            .await
            .map_err(|error| session.error("setting min-replicas-to-write", &error))
    })
    .await
}

/// The commands that set a master's `min-replicas-max-lag` and `min-replicas-to-write`, and
/// lift any pause when `unpause`: one pipeline, written to the server in one piece, so that
/// on one connection it is carried out before anything sent after it (how the fence guard
/// orders its fence behind a lift still in flight).
pub fn redis_write_settings(min_replicas: u32, max_lag_s: u32, unpause: bool) -> ::redis::Pipeline {
    let mut pipeline = ::redis::pipe();
    // The lag first: with it at zero the replica check is off whatever the count says.
    pipeline.add_command(command("CONFIG", &["SET", "min-replicas-max-lag"]).arg(max_lag_s).to_owned()).ignore();
    pipeline.add_command(command("CONFIG", &["SET", "min-replicas-to-write"]).arg(min_replicas).to_owned()).ignore();
    if unpause {
        pipeline.add_command(command("CLIENT", &["UNPAUSE"])).ignore();
    }
    pipeline
}

/// Tries a harmless write, `SET` of [`FENCE_CHECK_KEY`] (vigil's own key, expiring after a
/// minute), and returns the member's refusal as it sent it (`NOREPLICAS ...` from a master
/// fenced by `min-replicas-to-write`, `READONLY ...` from a replica), or `None` when it took
/// the write. How a fence is confirmed: by a write refused, not by a setting read back.
/// Bounded by `target.timeout`.
pub async fn redis_write_refusal(target: &RedisTarget) -> Result<Option<String>, ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("trying a write on {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        let set = command("SET", &[FENCE_CHECK_KEY, "written by vigil to check a fence", "PX", "60000"]);
        match set.query_async::<()>(&mut session.connection).await {
            Ok(()) => Ok(None),
            Err(error) if is_server_error(&error) => Ok(Some(describe_redis_error(&error))),
            Err(error) => Err(session.error("trying a write", &error)),
        }
    })
    .await
}

/// Reads the member's role, offset and upstream from `INFO replication`. Bounded by
/// `target.timeout`.
pub async fn redis_role(target: &RedisTarget) -> Result<RedisRole, ActionError> {
    let address = target.address();
    bounded(target.timeout, format!("reading the role of {address}"), async {
        let mut session = Session::open(target, target.timeout).await?;
        let seen = session.replication().await?;
        let offset = seen.replica_offset.unwrap_or(seen.master_repl_offset);
        Ok(RedisRole { is_master: seen.is_master, offset, upstream: seen.upstream })
    })
    .await
}

/// Polls `INFO replication` until `accept` returns a value, or `timeout` passes; returns
/// the value (if any) and the last thing seen, for the error message.
async fn poll_replication<T>(
    target: &RedisTarget,
    timeout: Duration,
    mut accept: impl FnMut(&RedisObservation) -> Result<T, String>,
) -> (Option<T>, String) {
    let deadline = Instant::now() + timeout;
    let mut last_seen = String::from("no answer yet");
    let polling = async {
        let mut kept: Option<Session> = None;
        loop {
            let session = match kept.take() {
                Some(session) => Ok(session),
                None => Session::open(target, target.timeout).await,
            };
            match session {
                Ok(mut session) => match session.replication().await {
                    Ok(seen) => match accept(&seen) {
                        Ok(value) => return value,
                        Err(state) => {
                            last_seen = state;
                            kept = Some(session);
                        }
                    },
                    Err(error) => last_seen = error.to_string(),
                },
                Err(error) => last_seen = error.to_string(),
            }
            sleep(POLL_INTERVAL).await;
        }
    };
    let value = timeout_at(deadline, polling).await.ok();
    (value, last_seen)
}

/// Runs `action` for at most `budget`; `what` completes "timed out ...".
async fn bounded<T>(
    budget: Duration,
    what: String,
    action: impl Future<Output = Result<T, ActionError>>,
) -> Result<T, ActionError> {
    tokio::time::timeout(budget, action).await.unwrap_or(Err(ActionError::Timeout(what)))
}

/// A command from its name and arguments.
fn command(name: &str, args: &[&str]) -> Cmd {
    let mut command = ::redis::cmd(name);
    for arg in args {
        command.arg(*arg);
    }
    command
}

/// One short-lived connection to the member an action works on; dropping it closes it.
struct Session {
    connection: MultiplexedConnection,
    address: String,
}

impl Session {
    async fn open(target: &RedisTarget, timeout: Duration) -> Result<Self, ActionError> {
        let address = target.address();
        let connection = target.connect(timeout).await.map_err(|error| {
            ActionError::Connect(format!("connecting to {address}: {}", describe_redis_error(&error)))
        })?;
        Ok(Session { connection, address })
    }

    async fn run<T: FromRedisValue>(&mut self, command: &Cmd, what: &str) -> Result<T, ActionError> {
        command.query_async(&mut self.connection).await.map_err(|error| self.error(what, &error))
    }

    async fn replication(&mut self) -> Result<RedisObservation, ActionError> {
        let info: String = self.run(&command("INFO", &["replication"]), "reading INFO replication").await?;
        RedisObservation::from_replication_info(&info)
            .map_err(|error| ActionError::Unexpected(format!("INFO replication from {}: {error}", self.address)))
    }

    /// Classifies a client error: the server's own errors are `Redis`, a response that
    /// took too long is `Timeout`, the rest mean the connection is gone.
    fn error(&self, what: &str, error: &RedisError) -> ActionError {
        let message = format!("{what} on {}: {}", self.address, describe_redis_error(error));
        if is_server_error(error) {
            ActionError::Redis(message)
        } else if error.is_timeout() {
            ActionError::Timeout(message)
        } else {
            ActionError::Connect(message)
        }
    }
}
