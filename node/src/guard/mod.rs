//! The fence guard: a small process that outlives a crash of `vigil run` and fences the
//! primary beside it when its lease runs out with nobody left to renew it.
//!
//! `vigil run` starts the guard (`vigil fence-guard --socket PATH`) once per data dir, in a
//! process group of its own so it survives the daemon, and tells it over a Unix socket (only
//! its owner may connect), at every lease renewal, until when the primary may take writes.
//! If the daemon dies (or hangs and stops telling), the guard fences the primary when that
//! time comes: a PostgreSQL primary is stopped (`pg_ctl stop -m immediate`); a Redis master
//! is made to refuse writes (`min-replicas-to-write` beyond reach, retried for a while if
//! the server does not answer). A daemon restarted in time connects to the same guard and renews: a quick
//! restart does not cost the primary a restart. The guard only knows monotonic time of its
//! own, so no clock is compared across processes either: the daemon sends a duration.
//!
//! A Redis master's fence is also *lifted* by the guard, at the daemon's request
//! ([`GuardClient::lift`]): the guard refuses once the deadline it holds has passed, and
//! sends its own fence at the deadline on the same connection as a lift still on its way
//! ([`line`]), so that a late lift can never undo it. (A PostgreSQL fence needs none of this:
//! the guard stops the server, which no lift undoes.)

mod client;
mod line;

pub use client::GuardClient;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use line::{Line, LineOrder};

/// The socket's file name in the data dir.
pub const SOCKET_FILE: &str = "fence-guard.sock";
/// How long the guard lingers with nothing armed and no daemon connected.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// Bound on one command of the guard to a Redis master.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Host-local control of one server, as the guard needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuardedServer {
    /// A PostgreSQL server, stopped at the deadline (no secrets: it only stops).
    Postgres {
        /// `pg_ctl`'s directory.
        bin_dir: PathBuf,
        /// The data directory.
        data_dir: PathBuf,
        /// The OS user to run `pg_ctl` as, when the guard runs as root.
        run_as: Option<String>,
    },
    /// A Redis master, made to refuse writes at the deadline.
    Redis(GuardedRedis),
}

/// What the guard needs to fence a Redis master: vigil's own connection settings, the
/// secrets already read by the daemon (they travel only over the guard's owner-only socket).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardedRedis {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user, `None` for the default user.
    pub username: Option<String>,
    /// vigil's password on the member.
    pub password: Option<String>,
    /// The CA certificates (PEM) when the member takes TLS.
    pub tls_ca: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), when the member asks for one.
    pub tls_client: Option<(Vec<u8>, Vec<u8>)>,
    /// `min-replicas-to-write` that refuses every write.
    pub refuse_all: u32,
    /// `min-replicas-max-lag` set with it (never zero, which would turn the check off).
    pub max_lag_s: u32,
    /// `min-replicas-to-write` once the fence is lifted (the spec's).
    pub lifted_min_replicas: u32,
}

impl std::fmt::Debug for GuardedRedis {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GuardedRedis")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("tls", &self.tls_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl GuardedRedis {
    /// The settings from the daemon's connection settings for the member.
    pub fn new(target: &vigil_probes::RedisTarget, refuse_all: u32, max_lag_s: u32, lifted_min_replicas: u32) -> Self {
        GuardedRedis {
            host: target.host.clone(),
            port: target.port,
            username: target.username.clone(),
            password: target.password.clone(),
            tls_ca: target.tls.as_ref().map(|tls| tls.ca.clone()),
            tls_client: target.tls.as_ref().and_then(|tls| tls.client.clone()),
            refuse_all,
            max_lag_s: max_lag_s.max(1),
            lifted_min_replicas,
        }
    }

    fn target(&self) -> vigil_probes::RedisTarget {
        vigil_probes::RedisTarget {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            password: self.password.clone(),
            timeout: REDIS_TIMEOUT,
            tls: self
                .tls_ca
                .as_ref()
                .map(|ca| vigil_probes::RedisTls { ca: ca.clone(), client: self.tls_client.clone() }),
        }
    }
}

/// What the daemon tells the guard, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GuardMessage {
    /// The primary of `group` may take writes for `valid_for_ms` more, then must be stopped.
    Arm {
        /// The group.
        group: String,
        /// How long from now.
        valid_for_ms: u64,
        /// How to stop it.
        server: GuardedServer,
    },
    /// Nothing to guard in `group` any more (not the primary, or already fenced).
    Disarm {
        /// The group.
        group: String,
    },
    /// Lift the fence of the Redis master of `group`, which must be the server armed there,
    /// with time left; answered with a [`GuardReply`] carrying `request`.
    Lift {
        /// The group.
        group: String,
        /// Tells the answer apart.
        request: u64,
        /// The server the daemon means (the armed one).
        server: GuardedServer,
    },
}

impl GuardMessage {
    /// The request an answer is awaited for.
    fn request(&self) -> Option<u64> {
        match self {
            GuardMessage::Lift { request, .. } => Some(*request),
            GuardMessage::Arm { .. } | GuardMessage::Disarm { .. } => None,
        }
    }
}

/// The guard's answer to a request, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardReply {
    /// The request answered.
    pub request: u64,
    /// What was done, or why not.
    pub result: Result<String, String>,
}

/// The file holding the guard's process id, beside its socket.
pub fn pid_file_of(socket: &Path) -> PathBuf {
    socket.with_extension("pid")
}

struct Armed {
    deadline: Instant,
    server: GuardedServer,
}

/// A message from a daemon, and where the answer to it goes.
type Incoming = (GuardMessage, mpsc::UnboundedSender<GuardReply>);

/// Runs the guard until nothing is armed and no daemon has been connected for a while.
pub async fn run(socket: &Path) -> anyhow::Result<()> {
    // A socket left by a guard that died is removed; one a live guard listens on is kept.
    if UnixStream::connect(socket).await.is_ok() {
        anyhow::bail!("a fence guard already listens on {}", socket.display());
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    // Whoever may connect may stop a primary (and reads Redis passwords sent to the guard):
    // only the owner.
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    // Who runs the guard, so whoever started the daemon can find and end it too.
    let pid_file = pid_file_of(socket);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;
    let (messages_tx, mut messages) = mpsc::unbounded_channel::<Incoming>();
    let mut armed: BTreeMap<String, Armed> = BTreeMap::new();
    // The groups whose deadline passed since they were last armed: the guard fenced them.
    let mut fired: BTreeSet<String> = BTreeSet::new();
    // Per group, the line to its Redis master: lifts and the fence, in order.
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    let busy = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut idle_since = Some(Instant::now());
    let mut stopping = tokio::task::JoinSet::new();
    let own_uid = nix::unistd::geteuid().as_raw();
    info!(socket = %socket.display(), "fence guard listening");
    loop {
        let next_deadline = armed.values().map(|entry| entry.deadline).min();
        let sleep_until = next_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    // The socket is the owner's only; a connection from another user (through
                    // a socket whose mode someone widened) is refused all the same.
                    match stream.peer_cred().map(|cred| cred.uid()) {
                        Ok(uid) if uid == own_uid => {
                            idle_since = None;
                            serve(stream, messages_tx.clone(), Arc::clone(&connected));
                        }
                        Ok(uid) => warn!(uid, "fence guard: refused a connection from another user"),
                        Err(error) => warn!(%error, "fence guard: refused a connection whose user is unknown"),
                    }
                }
            }
            Some((message, answers)) = messages.recv() => match message {
                GuardMessage::Arm { group, valid_for_ms, server } => {
                    let deadline = Instant::now() + Duration::from_millis(valid_for_ms);
                    fired.remove(&group);
                    armed.insert(group, Armed { deadline, server });
                }
                GuardMessage::Disarm { group } => {
                    fired.remove(&group);
                    armed.remove(&group);
                }
                GuardMessage::Lift { group, request, server } => {
                    let answer: line::Answer = Box::new(move |result| {
                        let _ = answers.send(GuardReply { request, result });
                    });
                    let armed = if fired.contains(&group) {
                        Err("the lease's deadline passed and the guard fenced the master")
                    } else {
                        Ok(armed.get(&group))
                    };
                    match armed.and_then(|armed| liftable(armed, &server, Instant::now())) {
                        Ok(redis) => line_of(&mut lines, &group, redis, &busy).order(LineOrder::Lift(answer), &busy),
                        Err(refusal) => {
                            warn!(group, refusal, "fence guard: lift refused");
                            answer(Err(refusal.to_string()));
                        }
                    }
                }
            },
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        let now = Instant::now();
        let due: Vec<String> =
            armed.iter().filter(|(_, entry)| entry.deadline <= now).map(|(g, _)| g.clone()).collect();
        for group in due {
            let entry = armed.remove(&group).expect("due entries are armed");
            fired.insert(group.clone());
            match entry.server {
                // On the line, behind any lift still on its way.
                GuardedServer::Redis(redis) => line_of(&mut lines, &group, redis, &busy).order(LineOrder::Fence, &busy),
                // Apart, so that a member slow to answer delays no other group's fence.
                GuardedServer::Postgres { bin_dir, data_dir, run_as } => {
                    stopping.spawn(stop_postgres(group, bin_dir, data_dir, run_as));
                }
            }
        }
        while stopping.try_join_next().is_some() {}
        let idle = armed.is_empty() && stopping.is_empty() && busy.load(Ordering::SeqCst) == 0;
        if idle && connected.load(Ordering::SeqCst) == 0 {
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) > IDLE_EXIT {
                info!("fence guard: nothing to guard; exiting");
                let _ = std::fs::remove_file(socket);
                let _ = std::fs::remove_file(&pid_file);
                return Ok(());
            }
        } else {
            idle_since = None;
        }
    }
}

/// Reads a daemon's messages into the guard's loop, and writes the answers back.
fn serve(stream: UnixStream, messages: mpsc::UnboundedSender<Incoming>, connected: Arc<AtomicUsize>) {
    let (reader, mut writer) = stream.into_split();
    let (answers_tx, mut answers) = mpsc::unbounded_channel::<GuardReply>();
    connected.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        while let Some(reply) = answers.recv().await {
            let mut line = serde_json::to_vec(&reply).expect("guard replies serialize");
            line.push(b'\n');
            if writer.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<GuardMessage>(&line) {
                Ok(message) => {
                    let _ = messages.send((message, answers_tx.clone()));
                }
                Err(error) => warn!(%error, "fence guard: unreadable message"),
            }
        }
        // The daemon went away: deadlines now run out unless another renews.
        connected.fetch_sub(1, Ordering::SeqCst);
        warn!("fence guard: the daemon disconnected; guarding until the leases run out");
    });
}

/// Whether a lift of `server` may go ahead under `armed`: only for the Redis master armed
/// there, before its deadline.
fn liftable(armed: Option<&Armed>, server: &GuardedServer, now: Instant) -> Result<GuardedRedis, &'static str> {
    let armed = armed.ok_or("nothing is armed for the group: a lift needs a lease whose deadline the guard holds")?;
    if &armed.server != server {
        return Err("the guard is armed for another server of the group");
    }
    if armed.deadline <= now {
        return Err("the lease's deadline has passed");
    }
    match server {
        GuardedServer::Redis(redis) => Ok(redis.clone()),
        GuardedServer::Postgres { .. } => Err("the guard lifts only a Redis master's fence"),
    }
}

/// The line of `group` to `server`, started (or restarted for another server) when needed.
fn line_of<'a>(
    lines: &'a mut BTreeMap<String, Line>,
    group: &str,
    server: GuardedRedis,
    busy: &Arc<AtomicUsize>,
) -> &'a Line {
    let stale = lines.get(group).is_some_and(|line| line.server != server);
    if stale || !lines.contains_key(group) {
        lines.insert(group.to_string(), Line::start(group, server, Arc::clone(busy)));
    }
    &lines[group]
}

/// Stops the PostgreSQL primary of `group` whose lease ran out.
async fn stop_postgres(group: String, bin_dir: PathBuf, data_dir: PathBuf, run_as: Option<String>) {
    warn!(group, data_dir = %data_dir.display(), "lease ran out with nobody renewing: stopping the primary");
    let ctl = vigil_actions::PgCtl::new(bin_dir, data_dir, run_as);
    if let Err(error) = vigil_actions::stop_immediately(&ctl, Duration::from_secs(10)).await {
        error!(group, %error, "the fence guard could not stop the primary");
    }
}
