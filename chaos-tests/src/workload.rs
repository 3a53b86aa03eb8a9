//! The clients of a chaos run: writers that insert unique values into a group and record
//! every attempt, Jepsen-style, with the instant of the answer, the member that answered,
//! whether it acknowledged, and the group's epoch read in the same transaction as the write.
//!
//! Two kinds of writer per group. A *local* writer lives beside one member, in that
//! member's datacenter, and only ever writes to it: the applications a cut-off datacenter
//! still serves, which are what turns a stale primary into lost or conflicting writes. The
//! *client* writer lives in the client host and writes to whichever member takes its
//! writes, moving on to the next member when one refuses or does not answer: the
//! application whose downtime a failover is meant to end.
//!
//! Each writer runs on its own thread inside its host's namespace, with a single-threaded
//! tokio runtime, so a hung server stalls only its own writer.

#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::history::WriteRecord;
use crate::netns::NetLab;
use crate::postgres::{VIGIL_PASSWORD, VIGIL_USER};
use crate::redis::REDIS_PASSWORD;

/// How long a writer waits to connect, and for each answer: a write not answered by then
/// is recorded as not acknowledged, and the writer reconnects (or moves on).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The pause between two writes of one writer.
pub const WRITE_PERIOD: Duration = Duration::from_millis(20);
/// The table PostgreSQL writers insert into.
pub const PG_TABLE: &str = "chaos_writes";
/// The set Redis writers add to.
pub const REDIS_SET: &str = "chaos:writes";

/// Which kind of server a writer writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// PostgreSQL: `INSERT ... RETURNING` the epoch from `vigil.epoch`.
    Postgres,
    /// Redis: `MULTI`, `SADD`, `GET vigil:epoch`, `EXEC`.
    Redis,
}

/// A member a writer may write to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The member's name ("pg2").
    pub member: String,
    /// Its address.
    pub host: String,
    /// Its port.
    pub port: u16,
}

/// One writer, before it starts.
#[derive(Clone, Debug)]
pub struct WriterSpec {
    /// Its name in the history ("dc1", "client").
    pub name: String,
    /// The lab host it runs in.
    pub host: String,
    /// The group it writes to (for the epoch lookup).
    pub group: String,
    /// The server kind.
    pub kind: ServerKind,
    /// The members it may write to: one for a local writer, every member for the client.
    pub endpoints: Vec<Endpoint>,
    /// Its values are `first_value`, `first_value + 1`, ...: unique across the run.
    pub first_value: i64,
}

/// A running writer.
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<WriteRecord>>>,
}

impl Writer {
    /// Starts `spec` inside its host; instants are measured from `origin`.
    pub fn start(net: &Arc<NetLab>, spec: WriterSpec, origin: Instant) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (net, stopping) = (net.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let host = spec.host.clone();
            net.run_in(&host, move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(runtime) => runtime.block_on(write_until(spec, origin, stopping)),
                    Err(_) => Vec::new(),
                }
            })
            .unwrap_or_default()
        });
        Writer { stop, handle: Some(handle) }
    }

    /// Stops the writer and returns its history.
    pub fn finish(mut self) -> Vec<WriteRecord> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().and_then(|handle| handle.join().ok()).unwrap_or_default()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The writer's thread holds the lab's namespace open: it must end before the lab
        // can be removed, also when a run fails before `finish`.
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// A connection to one member.
enum Connection {
    Postgres(tokio_postgres::Client),
    Redis(redis::aio::MultiplexedConnection),
}

async fn write_until(spec: WriterSpec, origin: Instant, stop: Arc<AtomicBool>) -> Vec<WriteRecord> {
    let mut history = Vec::new();
    let mut value = spec.first_value;
    let mut current = 0usize;
    let mut connection: Option<Connection> = None;
    while !stop.load(Ordering::SeqCst) {
        let endpoint = &spec.endpoints[current % spec.endpoints.len()];
        if connection.is_none() {
            connection = connect(spec.kind, endpoint).await;
            if connection.is_none() {
                current += 1;
                tokio::time::sleep(WRITE_PERIOD).await;
                continue;
            }
        }
        let sent_us = origin.elapsed().as_micros() as u64;
        let attempt = write(connection.as_mut().expect("connected above"), &spec.group, value);
        let answer = tokio::time::timeout(WRITE_TIMEOUT, attempt).await;
        let at_us = origin.elapsed().as_micros() as u64;
        let (acknowledged, epoch, keep) = match answer {
            Ok(Ok(epoch)) => (true, Some(epoch), true),
            // Refused by a server that answered (a replica, a fenced primary): the
            // connection is fine, and a writer pinned to this member keeps it rather than
            // paying for a new one every few milliseconds.
            Ok(Err(Refusal::Answered)) => (false, None, spec.endpoints.len() == 1),
            Ok(Err(Refusal::Broken)) | Err(_) => (false, None, false),
        };
        history.push(WriteRecord {
            writer: spec.name.clone(),
            sent_us,
            at_us,
            server: endpoint.member.clone(),
            value,
            acknowledged,
            epoch,
        });
        if !keep {
            // This member may no longer be the primary, or the connection is gone: start
            // over on a fresh connection (to the next member, for the client).
            connection = None;
            if spec.endpoints.len() > 1 {
                current += 1;
            }
        }
        value += 1;
        tokio::time::sleep(WRITE_PERIOD).await;
    }
    history
}

async fn connect(kind: ServerKind, endpoint: &Endpoint) -> Option<Connection> {
    match kind {
        ServerKind::Postgres => {
            let mut config = tokio_postgres::Config::new();
            config
                .host(&endpoint.host)
                .port(endpoint.port)
                .user(VIGIL_USER)
                .password(VIGIL_PASSWORD)
                .dbname("postgres")
                .connect_timeout(WRITE_TIMEOUT);
            let connected = tokio::time::timeout(WRITE_TIMEOUT, config.connect(tokio_postgres::NoTls)).await;
            let (client, driver) = connected.ok()?.ok()?;
            tokio::spawn(driver);
            Some(Connection::Postgres(client))
        }
        ServerKind::Redis => {
            let settings = redis::RedisConnectionInfo::default().set_password(REDIS_PASSWORD);
            let address = redis::ConnectionAddr::Tcp(endpoint.host.clone(), endpoint.port);
            let info = redis::IntoConnectionInfo::into_connection_info(address).ok()?.set_redis_settings(settings);
            let client = redis::Client::open(info).ok()?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(WRITE_TIMEOUT))
                .set_response_timeout(Some(WRITE_TIMEOUT));
            let connected =
                tokio::time::timeout(WRITE_TIMEOUT, client.get_multiplexed_async_connection_with_config(&config)).await;
            Some(Connection::Redis(connected.ok()?.ok()?))
        }
    }
}

/// Why a write was not acknowledged.
enum Refusal {
    /// The server answered with an error; the connection still works.
    Answered,
    /// The connection failed.
    Broken,
}

/// Writes `value` and reads the group's epoch atomically with it; `Ok` only when the
/// server acknowledged the write.
async fn write(connection: &mut Connection, group: &str, value: i64) -> Result<u64, Refusal> {
    match connection {
        Connection::Postgres(client) => {
            let statement = format!(
                "INSERT INTO {PG_TABLE} (id) VALUES ($1) \
                 RETURNING COALESCE((SELECT epoch FROM vigil.epoch WHERE group_name = $2), 0)"
            );
            let row = client.query_one(&statement, &[&value, &group]).await.map_err(|error| {
                if error.as_db_error().is_some() && !client.is_closed() { Refusal::Answered } else { Refusal::Broken }
            })?;
            let epoch: i64 = row.get(0);
            Ok(epoch.max(0) as u64)
        }
        Connection::Redis(connection) => {
            let (epoch,): (Option<u64>,) = redis::pipe()
                .atomic()
                .sadd(REDIS_SET, value)
                .ignore()
                .get("vigil:epoch")
                .query_async(connection)
                .await
                .map_err(|error| {
                    if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
                        Refusal::Broken
                    } else {
                        Refusal::Answered
                    }
                })?;
            Ok(epoch.unwrap_or(0))
        }
    }
}
