//! The HTTPS client the CLI uses: mutual TLS with a certificate from the cluster CA, the
//! server verified as a node of this cluster; or plain HTTP on a node's local socket, for
//! root on the node's host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use vigil_consensus::tls::{API_SERVER_NAME, Identity};

use crate::api::model::ApiError;
use crate::api::server::API_ALPN;

/// How long one API call may take, connect included. Membership changes wait for a
/// learner to catch up, so this is generous.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// Why a call failed, sorted by what the operator should do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached or refused the connection.
    #[error("node unreachable: {endpoint}: {reason}")]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The cluster has no leader, so no write can be made.
    #[error("no leader: {0}")]
    NoLeader(String),
    /// The cluster refused the request.
    #[error("{0}")]
    Refused(String),
    /// The answer made no sense.
    #[error("bad answer from {endpoint}: {reason}")]
    BadAnswer {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// A client for one or more endpoints, tried in order until one answers.
pub struct ApiClient {
    endpoints: Vec<String>,
    connector: Option<TlsConnector>,
    local: Option<PathBuf>,
}

impl ApiClient {
    /// A client that authenticates with `identity` and calls `endpoints` (`HOST:PORT`).
    pub fn new(identity: &Identity, endpoints: Vec<String>) -> anyhow::Result<Self> {
        let config = identity.client_config(&[API_ALPN])?;
        Ok(Self { endpoints, connector: Some(TlsConnector::from(Arc::new(config))), local: None })
    }

    /// A client that calls a node through its local socket at `socket`.
    pub fn local(socket: &Path) -> Self {
        Self { endpoints: vec![socket.display().to_string()], connector: None, local: Some(socket.to_path_buf()) }
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`, decoded.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).expect("request bodies serialize")),
            None => Bytes::new(),
        };
        let (endpoint, status, answer) = self.exchange(method, path, body).await?;
        if status.is_success() {
            return serde_json::from_slice(&answer)
                .map_err(|e| ClientError::BadAnswer { endpoint, reason: format!("undecodable body: {e}") });
        }
        let error: ApiError = serde_json::from_slice(&answer).unwrap_or_else(|_| ApiError {
            error: "unknown".to_string(),
            message: format!("status {status}: {}", String::from_utf8_lossy(&answer)),
        });
        Err(match error.error.as_str() {
            "no_leader" => ClientError::NoLeader(error.message),
            _ => ClientError::Refused(error.message),
        })
    }

    /// Tries each endpoint in turn; the first that answers at all decides.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(String, StatusCode, Bytes), ClientError> {
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            let attempt =
                tokio::time::timeout(CALL_TIMEOUT, self.exchange_one(endpoint, method.clone(), path, body.clone()));
            match attempt.await {
                Ok(Ok((status, answer))) => return Ok((endpoint.clone(), status, answer)),
                Ok(Err(reason)) => failures.push(format!("{endpoint}: {reason}")),
                Err(_) => failures.push(format!("{endpoint}: no answer within {} s", CALL_TIMEOUT.as_secs())),
            }
        }
        Err(ClientError::Unreachable { endpoint: self.endpoints.join(", "), reason: failures.join("; ") })
    }

    async fn exchange_one(
        &self,
        endpoint: &str,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut session = self.open(endpoint).await?;
        session.exchange(method, path, body).await
    }

    async fn open(&self, endpoint: &str) -> Result<ApiSession, String> {
        match (&self.local, &self.connector) {
            (Some(socket), _) => ApiSession::open_local(socket).await,
            (None, Some(connector)) => ApiSession::open(connector, endpoint, API_SERVER_NAME).await,
            (None, None) => Err("no way to reach the node".to_string()),
        }
    }

    /// A kept-alive connection to the first endpoint, for many calls in a row.
    pub async fn session(&self) -> Result<ApiSession, ClientError> {
        let endpoint = self.endpoints.first().cloned().unwrap_or_default();
        self.open(&endpoint).await.map_err(|reason| ClientError::Unreachable { endpoint, reason })
    }
}

/// One HTTP/1.1 connection over TLS, reused for request after request.
pub struct ApiSession {
    endpoint: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl ApiSession {
    /// Connects to `endpoint` and verifies the server as `server_name`.
    pub async fn open(connector: &TlsConnector, endpoint: &str, server_name: &str) -> Result<Self, String> {
        let tcp = TcpStream::connect(endpoint).await.map_err(|e| format!("cannot connect: {e}"))?;
        // Small requests must not wait for Nagle's algorithm.
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(server_name.to_string()).map_err(|e| format!("bad server name: {e}"))?;
        let tls = connector.connect(server_name, tcp).await.map_err(|e| describe_tls_failure(&e))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Self { endpoint: endpoint.to_string(), sender })
    }

    /// Connects to a node's local socket at `socket`.
    pub async fn open_local(socket: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "cannot connect to {}: permission denied (the node's local socket is root's: use sudo, or an \
                 operator certificate with --endpoint, --ca, --cert and --key)",
                socket.display()
            ),
            _ => format!("cannot connect to {}: {e}", socket.display()),
        })?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Self { endpoint: "localhost".to_string(), sender })
    }

    /// Sends one request and reads the whole answer.
    pub async fn exchange(&mut self, method: Method, path: &str, body: Bytes) -> Result<(StatusCode, Bytes), String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.endpoint)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        // hyper refuses a request on a connection that has not finished its previous one.
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection closed ({e}); the node may have refused this certificate"))?;
        let response = self.sender.send_request(request).await.map_err(|e| {
            // With TLS 1.3 a refused client certificate shows up only at the first read.
            format!("connection closed ({e}); the node may have refused this certificate")
        })?;
        let status = response.status();
        let answer = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, answer))
    }
}

fn describe_tls_failure(error: &std::io::Error) -> String {
    let text = error.to_string();
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "TLS refused: the node's certificate is not signed by our CA (wrong --ca?)".to_string()
    } else {
        format!("TLS handshake failed: {text}")
    }
}
