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

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
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

/// The socket's file name in the data dir.
pub const SOCKET_FILE: &str = "fence-guard.sock";
/// How long the guard lingers with nothing armed and no daemon connected.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// How many times the guard tries to make a Redis master refuse writes.
const REDIS_FENCE_ATTEMPTS: u32 = 20;
/// The pause between two of those tries.
const REDIS_FENCE_RETRY: Duration = Duration::from_millis(250);
/// Bound on one of those tries.
const REDIS_FENCE_TIMEOUT: Duration = Duration::from_secs(2);

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
    pub fn new(target: &vigil_probes::RedisTarget, refuse_all: u32, max_lag_s: u32) -> Self {
        GuardedRedis {
            host: target.host.clone(),
            port: target.port,
            username: target.username.clone(),
            password: target.password.clone(),
            tls_ca: target.tls.as_ref().map(|tls| tls.ca.clone()),
            tls_client: target.tls.as_ref().and_then(|tls| tls.client.clone()),
            refuse_all,
            max_lag_s: max_lag_s.max(1),
        }
    }

    fn target(&self) -> vigil_probes::RedisTarget {
        vigil_probes::RedisTarget {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            password: self.password.clone(),
            timeout: REDIS_FENCE_TIMEOUT,
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
}

/// The daemon's side: a connection to the guard, made on demand and remade if it breaks.
#[derive(Clone)]
pub struct GuardClient {
    sender: mpsc::UnboundedSender<GuardMessage>,
}

impl GuardClient {
    /// Connects to the guard of `data_dir`, starting one if none runs; a guard it starts logs
    /// like the node (`node` on every line, in `log_format`).
    /// The writer runs under `tasks` and ends once every client is dropped.
    pub fn start(
        data_dir: &Path,
        node: u64,
        log_format: crate::config::LogFormat,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (sender, mut receiver) = mpsc::unbounded_channel::<GuardMessage>();
        let socket = data_dir.join(SOCKET_FILE);
        tasks.spawn(async move {
            // Up before the first lease renewal: a daemon that dies right after it took a
            // lease must already have a guard to leave it to.
            let mut stream: Option<UnixStream> = connect_or_spawn(&socket, node, log_format).await;
            while let Some(message) = receiver.recv().await {
                let mut line = serde_json::to_vec(&message).expect("guard messages serialize");
                line.push(b'\n');
                for _ in 0..2 {
                    if stream.is_none() {
                        stream = connect_or_spawn(&socket, node, log_format).await;
                    }
                    let Some(connected) = stream.as_mut() else { break };
                    if connected.write_all(&line).await.is_ok() {
                        break;
                    }
                    stream = None;
                }
            }
        });
        Self { sender }
    }

    /// Tells the guard about a renewal or a disarm, in order; never blocks. Fails only when
    /// the writer is gone (the daemon is stopping).
    pub fn send(&self, message: GuardMessage) -> Result<(), String> {
        self.sender.send(message).map_err(|_| "the fence guard's writer has stopped".to_string())
    }
}

async fn connect_or_spawn(socket: &Path, node: u64, log_format: crate::config::LogFormat) -> Option<UnixStream> {
    if let Ok(stream) = UnixStream::connect(socket).await {
        return Some(stream);
    }
    let exe = std::env::current_exe().ok()?;
    let spawned = std::process::Command::new(exe)
        .args(["fence-guard", "--socket"])
        .arg(socket)
        .args(["--node-id", &node.to_string(), "--log-format"])
        .arg(match log_format {
            crate::config::LogFormat::Text => "text",
            crate::config::LogFormat::Json => "json",
        })
        .stdin(std::process::Stdio::null())
        // A group of its own: the signals that end the daemon (Ctrl-C to its group) must
        // not end the guard.
        .process_group(0)
        .spawn();
    if let Err(error) = spawned {
        error!(%error, "cannot start the fence guard: a crash of this daemon would leave its primary unfenced");
        return None;
    }
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(stream) = UnixStream::connect(socket).await {
            info!(socket = %socket.display(), "fence guard started");
            return Some(stream);
        }
    }
    error!(socket = %socket.display(), "the fence guard did not come up");
    None
}

/// The file holding the guard's process id, beside its socket.
pub fn pid_file_of(socket: &Path) -> PathBuf {
    socket.with_extension("pid")
}

struct Armed {
    deadline: Instant,
    server: GuardedServer,
}

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
    let (messages_tx, mut messages) = mpsc::unbounded_channel::<GuardMessage>();
    let mut armed: BTreeMap<String, Armed> = BTreeMap::new();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut idle_since = Some(Instant::now());
    let mut fencing = tokio::task::JoinSet::new();
    info!(socket = %socket.display(), "fence guard listening");
    loop {
        let next_deadline = armed.values().map(|entry| entry.deadline).min();
        let sleep_until = next_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    idle_since = None;
                    let tx = messages_tx.clone();
                    let connected = connected.clone();
                    connected.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let mut lines = BufReader::new(stream).lines();
                        while let Ok(Some(line)) = lines.next_line().await {
                            match serde_json::from_str::<GuardMessage>(&line) {
                                Ok(message) => { let _ = tx.send(message); }
                                Err(error) => warn!(%error, "fence guard: unreadable message"),
                            }
                        }
                        // The daemon went away: deadlines now run out unless another renews.
                        connected.fetch_sub(1, Ordering::SeqCst);
                        warn!("fence guard: the daemon disconnected; guarding until the leases run out");
                    });
                }
            }
            Some(message) = messages.recv() => match message {
                GuardMessage::Arm { group, valid_for_ms, server } => {
                    let deadline = Instant::now() + Duration::from_millis(valid_for_ms);
                    armed.insert(group, Armed { deadline, server });
                }
                GuardMessage::Disarm { group } => {
                    armed.remove(&group);
                }
            },
            _ = tokio::time::sleep_until(sleep_until) => {}
        }
        let now = Instant::now();
        let due: Vec<String> =
            armed.iter().filter(|(_, entry)| entry.deadline <= now).map(|(g, _)| g.clone()).collect();
        for group in due {
            let entry = armed.remove(&group).expect("due entries are armed");
            // Apart, so that a member slow to answer delays no other group's fence.
            fencing.spawn(async move { fence(&group, entry.server).await });
        }
        while fencing.try_join_next().is_some() {}
        if armed.is_empty() && fencing.is_empty() && connected.load(Ordering::SeqCst) == 0 {
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

/// Fences the primary of `group` whose lease ran out.
async fn fence(group: &str, server: GuardedServer) {
    match server {
        GuardedServer::Postgres { bin_dir, data_dir, run_as } => {
            warn!(group, data_dir = %data_dir.display(), "lease ran out with nobody renewing: stopping the primary");
            let ctl = vigil_actions::PgCtl::new(bin_dir, data_dir, run_as);
            if let Err(error) = vigil_actions::stop_immediately(&ctl, Duration::from_secs(10)).await {
                error!(group, %error, "the fence guard could not stop the primary");
            }
        }
        GuardedServer::Redis(redis) => {
            let target = redis.target();
            let address = target.address();
            warn!(group, %address, "lease ran out with nobody renewing: making the master refuse writes");
            for attempt in 1..=REDIS_FENCE_ATTEMPTS {
                match vigil_actions::redis_set_min_replicas(&target, redis.refuse_all, redis.max_lag_s).await {
                    Ok(()) => {
                        info!(group, %address, "the master refuses writes");
                        return;
                    }
                    Err(error) if attempt == REDIS_FENCE_ATTEMPTS => {
                        error!(group, %address, %error, "the fence guard could not fence the master; giving up");
                    }
                    Err(error) => {
                        warn!(group, %address, %error, attempt, "the fence guard could not fence the master yet");
                        tokio::time::sleep(REDIS_FENCE_RETRY).await;
                    }
                }
            }
        }
    }
}
