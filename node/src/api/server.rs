//! Serves the API over HTTPS with mutual TLS: every caller presents a certificate from
//! the cluster CA (a node's or an operator's). Also serves it on a local Unix socket in the
//! data dir, for root on the node's host (see [`crate::api::auth`]).
//!
//! Bounded against callers that hold resources without finishing a request: a TLS handshake
//! must end within [`HANDSHAKE_TIMEOUT`] and each request's headers arrive within
//! [`HEADER_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections are open at once, and one
//! over that is closed at once. Refusals are logged at debug and counted, never at a level
//! a flood could fill the log with.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};
use vigil_consensus::tls::Identity;

use crate::api::auth::Principal;
use crate::api::routes::{ApiState, router};

/// The local socket's file name in the data dir.
pub const LOCAL_SOCKET: &str = "api.sock";

/// The local socket of the node whose data dir is `data_dir`.
pub fn local_socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOCAL_SOCKET)
}

/// The ALPN protocol the API speaks.
pub const API_ALPN: &[u8] = b"http/1.1";

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request's headers, the first or a later one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections open at once.
pub const MAX_CONNECTIONS: usize = 256;

/// Binds the API listener. Separate from [`serve`] so a bad address fails start-up.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `state` on `listener` until `cancel` fires, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    identity: &Identity,
    state: ApiState,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let tls = identity.server_config(&[API_ALPN])?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let cluster_name = state.cluster_name.clone();
    let router = router(state);
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    info!(addr = %listener.local_addr()?, "api listening");
    loop {
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "api accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(remote, "connection limit reached", "too_many");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let cancel = cancel.clone();
        let cluster_name = cluster_name.clone();
        connections.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return refused(remote, &error.to_string(), "handshake"),
                Err(_) => return refused(remote, "the TLS handshake did not finish in time", "handshake_timeout"),
            };
            let principal = Principal::of_certificate(stream.get_ref().1.peer_certificates(), &cluster_name);
            serve_connection(stream, principal, router, cancel, &remote.to_string()).await;
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Binds the local socket in `data_dir`, replacing one a previous run left, readable and
/// writable by the owner only (the data dir itself is the owner's only too).
pub fn bind_local(data_dir: &Path) -> std::io::Result<UnixListener> {
    let path = local_socket_path(data_dir);
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(&path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `state` on the local socket until `cancel` fires, to root and to the daemon's own
/// user only (by the connecting process's credentials), as an admin named after `node`.
pub async fn serve_local(listener: UnixListener, state: ApiState, node: String, cancel: CancellationToken) {
    let router = router(state);
    let own_uid = nix::unistd::geteuid().as_raw();
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "local api accept failed");
                    continue;
                }
            },
        };
        match stream.peer_cred().map(|credentials| credentials.uid()) {
            Ok(uid) if uid == 0 || uid == own_uid => {}
            Ok(uid) => {
                debug!(uid, "refused a local api connection from another user");
                metrics::counter!("vigil_api_connections_refused_total", "reason" => "local_user").increment(1);
                continue;
            }
            Err(error) => {
                debug!(%error, "refused a local api connection: no peer credentials");
                continue;
            }
        }
        let principal = Principal::Local { node: node.clone() };
        let router = router.clone();
        let cancel = cancel.clone();
        connections.spawn(async move { serve_connection(stream, principal, router, cancel, "local socket").await });
    }
    connections.close();
    connections.wait().await;
}

/// Serves HTTP/1.1 on one connection, every request carrying the connection's principal.
async fn serve_connection<IO>(io: IO, principal: Principal, router: Router, cancel: CancellationToken, remote: &str)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router.layer(Extension(principal)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                debug!(%remote, %error, "api connection ended with an error");
            }
        }
        _ = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Logs (at debug) and counts a connection closed before it carried a request.
fn refused(remote: SocketAddr, why: &str, reason: &'static str) {
    debug!(%remote, why, "refused an api connection");
    metrics::counter!("vigil_api_connections_refused_total", "reason" => reason).increment(1);
}
