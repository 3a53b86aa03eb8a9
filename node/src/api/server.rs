//! Serves the API over HTTPS with mutual TLS: every caller presents a certificate from
//! the cluster CA (a node's or an operator's).
//!
//! Bounded against callers that hold resources without finishing a request: a TLS handshake
//! must end within [`HANDSHAKE_TIMEOUT`] and each request's headers arrive within
//! [`HEADER_TIMEOUT`]; at most [`MAX_CONNECTIONS`] connections are open at once, and one
//! over that is closed at once. Refusals are logged at debug and counted, never at a level
//! a flood could fill the log with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};
use vigil_consensus::tls::Identity;

use crate::api::routes::{ApiState, router};

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
    let service = TowerToHyperService::new(router(state));
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
        let service = service.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return refused(remote, &error.to_string(), "handshake"),
                Err(_) => return refused(remote, "the TLS handshake did not finish in time", "handshake_timeout"),
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
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
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Logs (at debug) and counts a connection closed before it carried a request.
fn refused(remote: SocketAddr, why: &str, reason: &'static str) {
    debug!(%remote, why, "refused an api connection");
    metrics::counter!("vigil_api_connections_refused_total", "reason" => reason).increment(1);
}
