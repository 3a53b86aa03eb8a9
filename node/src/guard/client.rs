//! The daemon's side of the fence guard: one connection to the guard, made on demand and
//! remade if it breaks, that carries arming orders one way and lift requests both ways.
//!
//! Orders and requests are written in the order they were given, on one stream, so the
//! guard sees an arming before the lift that relies on it. A request is answered on the
//! same connection; one whose connection breaks before the answer fails (the guard may or
//! may not have carried it out, and the coordinator treats it as half done).

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::{GuardMessage, GuardReply, GuardedServer};

/// Where an answer goes: the requests of one connection still waiting for theirs.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<String, String>>>>>;

/// One order for the guard, with where its answer goes when it asks for one.
struct Outgoing {
    message: GuardMessage,
    answer: Option<(u64, oneshot::Sender<Result<String, String>>)>,
}

/// The daemon's side: a connection to the guard, made on demand and remade if it breaks.
#[derive(Clone)]
pub struct GuardClient {
    sender: mpsc::UnboundedSender<Outgoing>,
    next_request: Arc<AtomicU64>,
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
        let (sender, receiver) = mpsc::unbounded_channel::<Outgoing>();
        let socket = data_dir.join(super::SOCKET_FILE);
        tasks.spawn(write_orders(socket, node, log_format, receiver));
        Self { sender, next_request: Arc::new(AtomicU64::new(1)) }
    }

    /// Tells the guard about a renewal or a disarm, in order; never blocks. Fails only when
    /// the writer is gone (the daemon is stopping).
    pub fn send(&self, message: GuardMessage) -> Result<(), String> {
        self.sender
            .send(Outgoing { message, answer: None })
            .map_err(|_| "the fence guard's writer has stopped".to_string())
    }

    /// Asks the guard to lift the fence of the Redis master of `group` (armed with
    /// `server`), and waits for its answer: the guard refuses once the deadline it holds has
    /// passed, and orders its own fence behind a lift still on its way.
    pub async fn lift(&self, group: &str, server: GuardedServer) -> Result<String, String> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        let message = GuardMessage::Lift { group: group.to_string(), request, server };
        self.sender
            .send(Outgoing { message, answer: Some((request, answer)) })
            .map_err(|_| "the fence guard's writer has stopped".to_string())?;
        answered.await.map_err(|_| "the connection to the fence guard closed before it answered".to_string())?
    }
}

/// The writer: sends every order in turn, reconnecting (or starting a guard) when needed.
async fn write_orders(
    socket: PathBuf,
    node: u64,
    log_format: crate::config::LogFormat,
    mut receiver: mpsc::UnboundedReceiver<Outgoing>,
) {
    // Up before the first lease renewal: a daemon that dies right after it took a lease must
    // already have a guard to leave it to.
    let mut connection = connect_or_spawn(&socket, node, log_format).await;
    while let Some(Outgoing { message, mut answer }) = receiver.recv().await {
        let mut line = serde_json::to_vec(&message).expect("guard messages serialize");
        line.push(b'\n');
        for _ in 0..2 {
            if connection.is_none() {
                connection = connect_or_spawn(&socket, node, log_format).await;
            }
            let Some((writer, pending)) = connection.as_mut() else { break };
            if let Some((request, sender)) = answer.take() {
                pending.lock().expect("pending lock poisoned").insert(request, sender);
            }
            if writer.write_all(&line).await.is_ok() {
                break;
            }
            // Broken: the answer, if one is awaited, moves to the next connection.
            if let Some(request) = message.request() {
                answer = pending.lock().expect("pending lock poisoned").remove(&request).map(|s| (request, s));
            }
            connection = None;
        }
    }
}

/// A connection's write half, and its requests awaiting an answer (read by a task of its own
/// that ends, failing whatever still waits, when the guard closes the connection).
async fn connect_or_spawn(
    socket: &Path,
    node: u64,
    log_format: crate::config::LogFormat,
) -> Option<(OwnedWriteHalf, Pending)> {
    let stream = connect_or_spawn_stream(socket, node, log_format).await?;
    let (reader, writer) = stream.into_split();
    let pending = Pending::default();
    let answers = Arc::clone(&pending);
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<GuardReply>(&line) {
                Ok(reply) => {
                    if let Some(sender) = answers.lock().expect("pending lock poisoned").remove(&reply.request) {
                        let _ = sender.send(reply.result);
                    }
                }
                Err(error) => warn!(%error, "unreadable answer from the fence guard"),
            }
        }
        // Dropped senders fail their requests.
        answers.lock().expect("pending lock poisoned").clear();
    });
    Some((writer, pending))
}

async fn connect_or_spawn_stream(socket: &Path, node: u64, log_format: crate::config::LogFormat) -> Option<UnixStream> {
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
