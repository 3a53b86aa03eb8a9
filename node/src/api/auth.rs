//! Who calls the API and what they may do.
//!
//! A caller is known by how it connected: by its certificate over HTTPS (an operator with
//! the role the certificate names, or a node), or as root on this node's host through the
//! local socket. Reads need any known caller; changes (every method but GET and HEAD) need
//! the admin role: an admin operator, or root on the host. A node's certificate reads only:
//! the nodes talk to each other over the Raft transport, never through this API.
//!
//! Certificates made before roles name no role: an operator's reads only (least privilege),
//! and is reissued with `vigil certs issue --operator NAME --role admin` to change things.
//! A certificate that names another cluster, or names no one, is refused; so is the
//! certificate of a node removed from the cluster.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use rustls::pki_types::CertificateDer;
use vigil_consensus::NodeId;
use vigil_consensus::authority::{OperatorClaim, Role};
use vigil_consensus::tls::certificate_claims;

use crate::api::routes::{ApiState, error_response};

/// Who is calling, as the connection proved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An operator, by certificate.
    Operator {
        /// The name in the certificate.
        name: String,
        /// The role in the certificate (viewer when it names none).
        role: Role,
    },
    /// A node, by certificate.
    Node(NodeId),
    /// Root (or the daemon's own user) on this node's host, through the local socket.
    Local {
        /// The node's name, so the history says on which host.
        node: String,
    },
    /// A certificate this node does not accept, and why.
    Refused(String),
}

impl Principal {
    /// Reads the principal a client certificate chain proves, for cluster `cluster`.
    pub fn of_certificate(chain: Option<&[CertificateDer<'_>]>, cluster: &str) -> Self {
        let Some(leaf) = chain.and_then(|chain| chain.first()) else {
            return Principal::Refused("no client certificate".to_string());
        };
        let claims = certificate_claims(leaf);
        if let Some(problem) = claims.problems.first() {
            return Principal::Refused(format!("the certificate {problem}"));
        }
        if let Some(theirs) = claims.cluster.as_deref().filter(|theirs| *theirs != cluster) {
            return Principal::Refused(format!("the certificate is for cluster {theirs:?}, not {cluster:?}"));
        }
        match (claims.node, claims.operator) {
            (Some(node), None) => Principal::Node(node),
            (None, Some(name)) => Principal::Operator { name, role: claims.role.unwrap_or(Role::Viewer) },
            (Some(_), Some(_)) => Principal::Refused("the certificate names both a node and an operator".to_string()),
            (None, None) => Principal::Refused("the certificate names neither a node nor an operator".to_string()),
        }
    }

    /// What the principal may do.
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Operator { role, .. } => Some(*role),
            Principal::Node(_) => Some(Role::Viewer),
            Principal::Local { .. } => Some(Role::Admin),
            Principal::Refused(_) => None,
        }
    }

    /// The name the history records for a change this principal asks for. Root on a host
    /// may say who they are (`--author`); it is recorded beside the host, as a claim.
    pub fn author(&self, claimed: &str) -> String {
        match self {
            Principal::Operator { name, .. } => name.clone(),
            Principal::Node(node) => format!("node-{node}"),
            Principal::Local { node } if claimed.is_empty() || claimed == "root" => format!("root@{node}"),
            Principal::Local { node } => format!("{claimed} (root@{node})"),
            Principal::Refused(_) => String::new(),
        }
    }

    /// The claim a node makes for this principal when it forwards a change to the leader.
    pub fn claim(&self, claimed_author: &str) -> Option<OperatorClaim> {
        let role = self.role()?;
        matches!(self, Principal::Operator { .. } | Principal::Local { .. })
            .then(|| OperatorClaim { name: self.author(claimed_author), role })
    }
}

/// Refuses a request its caller may not make: 403 naming the caller and what is needed.
pub async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return forbidden("the connection proved no caller");
    };
    let role = match &principal {
        Principal::Refused(reason) => return forbidden(reason),
        Principal::Node(node) if state.cluster.state().removed.contains(node) => {
            return forbidden(&format!("node {node} was removed from the cluster: its certificate is refused"));
        }
        other => other.role().unwrap_or(Role::Viewer),
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && role != Role::Admin {
        let who = match &principal {
            Principal::Node(node) => format!("node {node}'s certificate"),
            other => format!("{} (a {role})", other.author("")),
        };
        return forbidden(&format!(
            "{who} may only read; changes need an admin operator certificate (vigil certs issue --operator NAME \
             --role admin) or root on a node's host (vigil --config)"
        ));
    }
    next.run(request).await
}

fn forbidden(reason: &str) -> Response {
    metrics::counter!("vigil_api_requests_forbidden_total").increment(1);
    error_response(StatusCode::FORBIDDEN, "forbidden", format!("forbidden: {reason}"))
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use vigil_consensus::authority::Role;
    use vigil_consensus::pki::CertificateAuthority;

    use super::Principal;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// A certificate made the way vigil made operator certificates before roles: no
    /// organization, no role.
    fn pre_role_operator(name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("vigil operator {name}"));
        params.subject_alt_names.push(SanType::DnsName(format!("{name}.operator.vigil").try_into().unwrap()));
        CertificateDer::from(params.self_signed(&key).unwrap().der().to_vec())
    }

    #[test]
    fn a_certificate_is_read_into_who_calls() {
        let ca = CertificateAuthority::generate("prod").unwrap();
        let admin = der(&ca.issue_operator("alice", Role::Admin).unwrap().cert_pem);
        let viewer = der(&ca.issue_operator("eve", Role::Viewer).unwrap().cert_pem);
        let node = der(&ca.issue_node(2, &[]).unwrap().cert_pem);
        let read = |cert: &CertificateDer<'static>, cluster: &str| {
            Principal::of_certificate(Some(std::slice::from_ref(cert)), cluster)
        };
        assert_eq!(read(&admin, "prod"), Principal::Operator { name: "alice".into(), role: Role::Admin });
        assert_eq!(read(&viewer, "prod"), Principal::Operator { name: "eve".into(), role: Role::Viewer });
        assert_eq!(read(&node, "prod"), Principal::Node(2));
        assert_eq!(read(&node, "prod").role(), Some(Role::Viewer), "a node's certificate reads only");
        assert_eq!(
            read(&admin, "staging"),
            Principal::Refused("the certificate is for cluster \"prod\", not \"staging\"".into())
        );
        // Made before roles: an operator that reads only, in any cluster its CA signs for.
        assert_eq!(
            read(&pre_role_operator("old"), "prod"),
            Principal::Operator { name: "old".into(), role: Role::Viewer }
        );
        assert!(matches!(Principal::of_certificate(None, "prod"), Principal::Refused(_)));
    }

    #[test]
    fn the_history_names_the_certificate_or_the_host_never_a_bare_claim() {
        let alice = Principal::Operator { name: "alice".into(), role: Role::Admin };
        assert_eq!(alice.author("mallory"), "alice");
        let local = Principal::Local { node: "n1".into() };
        assert_eq!(local.author(""), "root@n1");
        assert_eq!(local.author("bob"), "bob (root@n1)");
        assert_eq!(local.claim("bob").unwrap().role, Role::Admin);
        assert_eq!(Principal::Node(3).claim(""), None, "a node speaks for no operator");
    }
}
