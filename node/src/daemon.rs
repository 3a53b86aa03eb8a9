//! `vigil run`: the node daemon. Validates, binds, starts Raft and the API, and shuts down
//! cleanly on SIGTERM or SIGINT.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use vigil_consensus::node::{RaftNode, StartError};

use crate::api::routes::ApiState;
use crate::config::{DATA_DIR_OWNER_FILE, DataDirOwner, NodeConfig};
use crate::telemetry;

/// How long shutdown waits for Raft and open API requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the node described by `config` until a termination signal arrives.
pub async fn run(config: NodeConfig, log_format: crate::config::LogFormat) -> anyhow::Result<()> {
    let prometheus = telemetry::init_metrics()?;
    let listener = crate::api::server::bind(config.api_addr)
        .await
        .with_context(|| format!("node.api_addr: cannot listen on {}", config.api_addr))?;

    let cancel = CancellationToken::new();
    let raft_node = RaftNode::start(config.node_setup(), cancel.child_token())
        .await
        .with_context(|| format!("node.raft_addr {}: cannot start raft", config.raft_addr))?;
    write_data_dir_owner(&config)?;
    info!(
        node = config.id,
        name = %config.info.name,
        raft = %config.raft_addr,
        api = %config.api_addr,
        "vigil node started"
    );

    let tasks = TaskTracker::new();
    let state = ApiState { cluster: raft_node.cluster.clone(), cluster_name: config.cluster_name.clone(), prometheus };
    let local = crate::api::server::bind_local(&config.data_dir).with_context(|| {
        format!(
            "cannot listen on the local socket {}",
            crate::api::server::local_socket_path(&config.data_dir).display()
        )
    })?;
    tasks.spawn(crate::api::server::serve_local(local, state.clone(), config.info.name.clone(), cancel.child_token()));
    let identity = config.identity.clone();
    let api_cancel = cancel.child_token();
    tasks.spawn(async move {
        if let Err(error) = crate::api::server::serve(listener, &identity, state, api_cancel).await {
            error!(%error, "api server failed");
        }
    });
    tasks.spawn(log_leader_changes(raft_node.cluster.clone(), cancel.child_token()));
    let guard = crate::guard::GuardClient::start(&config.data_dir, config.id, log_format, &tasks);
    let allowed = crate::coordination::Allowed { node: config.info.name.clone(), allow: config.allow.clone() };
    crate::coordination::spawn(&raft_node.cluster, guard, allowed, &tasks, &cancel);
    tasks.close();

    let stopped = tokio::select! {
        signalled = wait_for_termination() => {
            signalled?;
            None
        }
        fatal = raft_stopped(raft_node.cluster.clone()) => Some(fatal),
    };
    info!("shutting down");
    cancel.cancel();
    raft_node.shutdown(SHUTDOWN_GRACE).await;
    // Effects still running (a fence, a rejoin) are waited for, within the grace period:
    // cutting one short could leave a member half done.
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
        warn!(
            still_running = tasks.len(),
            grace_ms = SHUTDOWN_GRACE.as_millis() as u64,
            "tasks still running after the grace period are abandoned (their tool processes are killed)"
        );
    }
    // A socket file left behind would answer "connection refused" to the CLI; gone, the CLI
    // says the node is not running the same way it would for the TLS port.
    let _ = std::fs::remove_file(crate::api::server::local_socket_path(&config.data_dir));
    info!("stopped");
    match stopped {
        Some(fatal) => Err(anyhow::Error::new(fatal)),
        None => Ok(()),
    }
}

/// Raft stopped while the node ran (a storage failure is fatal to openraft): the daemon
/// must exit rather than run on without consensus, so its service manager restarts it or
/// pages someone.
#[derive(Debug, thiserror::Error)]
#[error("raft stopped: {0}")]
pub struct RaftStopped(String);

/// Whether `error` is a storage failure: the log or a snapshot unreadable at start, or Raft
/// stopped at run time.
pub fn is_storage_failure(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<RaftStopped>() || matches!(cause.downcast_ref::<StartError>(), Some(StartError::Store(_)))
    })
}

/// Waits until openraft reports that it stopped with a fatal error.
async fn raft_stopped(cluster: vigil_consensus::Cluster) -> RaftStopped {
    let mut watch = cluster.changes();
    loop {
        if let Err(fatal) = &cluster.metrics().running_state {
            error!(%fatal, "raft stopped; the node exits");
            return RaftStopped(fatal.to_string());
        }
        if openraft::async_runtime::WatchReceiver::changed(&mut watch).await.is_err() {
            // The metrics channel closed: openraft is gone.
            return RaftStopped("raft is no longer running".to_string());
        }
    }
}

fn write_data_dir_owner(config: &NodeConfig) -> anyhow::Result<()> {
    let path = config.data_dir.join(DATA_DIR_OWNER_FILE);
    if path.exists() {
        return Ok(());
    }
    let owner = DataDirOwner { cluster_name: config.cluster_name.clone(), node_id: config.id };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&serde_json::to_vec_pretty(&owner)?).with_context(|| format!("cannot write {}", path.display()))
}

async fn wait_for_termination() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
    }
    Ok(())
}

/// Logs every change of leader or term as this node sees it, and keeps the Prometheus
/// gauges current.
async fn log_leader_changes(cluster: vigil_consensus::Cluster, cancel: CancellationToken) {
    let mut watch = cluster.changes();
    let mut last = (None, 0);
    loop {
        let metrics = cluster.metrics();
        telemetry::record_raft_metrics(&metrics);
        let now = (metrics.current_leader, metrics.current_term);
        if now != last {
            match metrics.current_leader {
                Some(leader) => info!(leader, term = metrics.current_term, "leader known"),
                None => warn!(term = metrics.current_term, "no leader"),
            }
            last = now;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = openraft::async_runtime::WatchReceiver::changed(&mut watch) => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
