//! Serves the API over HTTPS with mutual TLS: every caller presents a certificate from
//! the cluster CA (a node's or an operator's).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};
use vigil_consensus::tls::Identity;

use crate::api::routes::{ApiState, router};

/// The ALPN protocol the API speaks.
pub const API_ALPN: &[u8] = b"http/1.1";

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
        let acceptor = acceptor.clone();
        let service = service.clone();
        let cancel = cancel.clone();
        connections.spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    info!(%remote, %error, "refused an api connection");
                    return;
                }
            };
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
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
