//! Builds the node's QUIC endpoint: one UDP socket that both accepts peers and calls them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::error::TransportError;
use crate::tls::{Identity, RAFT_ALPN};

/// How often an idle connection sends a keep-alive, so a NAT or firewall keeps it open
/// and a dead peer is noticed even without Raft traffic.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a connection may hear nothing before it counts as dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    config.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout fits a QUIC varint")));
    Arc::new(config)
}

/// The QUIC endpoint bound to `addr`, and the client configuration for calling peers.
pub fn bind(identity: &Identity, addr: SocketAddr) -> Result<(quinn::Endpoint, quinn::ClientConfig), TransportError> {
    let tls = |e: &dyn std::fmt::Display| TransportError::Tls(e.to_string());
    let server_tls = identity.server_config(&[RAFT_ALPN]).map_err(|e| tls(&e))?;
    let client_tls = identity.client_config(&[RAFT_ALPN]).map_err(|e| tls(&e))?;
    let mut server_config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls).map_err(|e| tls(&e))?));
    server_config.transport_config(transport_config());
    let mut client_config =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls).map_err(|e| tls(&e))?));
    client_config.transport_config(transport_config());
    let endpoint =
        quinn::Endpoint::server(server_config, addr).map_err(|source| TransportError::Bind { addr, source })?;
    Ok((endpoint, client_config))
}
