//! Requests signed by the node they come from, so that a peer can carry them to the leader
//! without being able to forge or alter them.
//!
//! A node cut off from the leader alone hands its idempotent writes (lease renewals,
//! releases, verdicts) to another voter. The leader must still know whose they are: the
//! carrier's certificate says only who carried them. So the origin signs the request with
//! its node key, and sends its certificate along; the leader checks the certificate against
//! the cluster CA, the signature against the certificate, and then the request against what
//! that node may ask for (see [`crate::authority`]).
//!
//! The signed body names the cluster and the time it was signed: a signed request is good in
//! one cluster and for [`SIGNED_MAX_AGE`] only. Within that window a carrier could hand the
//! same request in twice; only idempotent requests are accepted signed, so that does no harm.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::tls::Identity;
use crate::transport::rpc::LeaderRequest;
use crate::types::NodeId;

/// How old a signed request may be when the leader reads it (clocks of nodes may differ
/// by a few seconds; a relay takes at most a forward's timeout).
pub const SIGNED_MAX_AGE: Duration = Duration::from_secs(60);

/// A request and its origin's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    /// The signed document, exactly as signed: the JSON of the cluster, the origin node, the
    /// time of signing and the request.
    pub body: String,
    /// The TLS code of the signature scheme.
    pub scheme: u16,
    /// The signature of `body`.
    pub signature: Vec<u8>,
    /// The signer's certificate chain (DER), leaf first.
    pub chain: Vec<Vec<u8>>,
}

/// What a node signs.
#[derive(Debug, Serialize, Deserialize)]
struct SignedBody {
    cluster: String,
    origin: NodeId,
    at_unix_ms: u64,
    request: LeaderRequest,
}

impl SignedRequest {
    /// Signs `request` as node `origin` of `cluster`, at `now_unix_ms`.
    pub fn sign(
        identity: &Identity,
        cluster: &str,
        origin: NodeId,
        request: &LeaderRequest,
        now_unix_ms: u64,
    ) -> Result<Self, String> {
        let body =
            SignedBody { cluster: cluster.to_string(), origin, at_unix_ms: now_unix_ms, request: request.clone() };
        let body = serde_json::to_string(&body).map_err(|e| e.to_string())?;
        let (scheme, signature) = identity.sign(body.as_bytes())?;
        let chain = identity.chain().iter().map(|certificate| certificate.to_vec()).collect();
        Ok(Self { body, scheme, signature, chain })
    }

    /// Checks the signature, the certificate, the cluster and the age, and answers the node
    /// that signed and its request. `identity` supplies the cluster CA.
    pub fn open(
        &self,
        identity: &Identity,
        cluster: &str,
        now_unix_ms: u64,
    ) -> Result<(NodeId, LeaderRequest), String> {
        let chain: Vec<CertificateDer<'_>> =
            self.chain.iter().map(|der| CertificateDer::from(der.as_slice())).collect();
        let signer = identity.verify_node_signature(&chain, self.body.as_bytes(), self.scheme, &self.signature)?;
        let body: SignedBody = serde_json::from_str(&self.body).map_err(|e| format!("unreadable signed body: {e}"))?;
        if body.origin != signer {
            return Err(format!("signed by node {signer} but claims to come from node {}", body.origin));
        }
        if body.cluster != cluster {
            return Err(format!("signed for cluster {:?}, not {cluster:?}", body.cluster));
        }
        let age = now_unix_ms.abs_diff(body.at_unix_ms);
        if age > SIGNED_MAX_AGE.as_millis() as u64 {
            return Err(format!(
                "signed {} s away from this node's clock (at most {} s are accepted)",
                age / 1000,
                SIGNED_MAX_AGE.as_secs()
            ));
        }
        if !body.request.is_idempotent() {
            return Err("only idempotent requests travel signed through another node".to_string());
        }
        Ok((signer, body.request))
    }
}
