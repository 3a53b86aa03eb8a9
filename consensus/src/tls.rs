//! Cluster identities and the rustls configurations built from them.
//!
//! A cluster CA signs every certificate. A node's certificate names it with the DNS name
//! `node-<id>.vigil`, and every node certificate also carries [`API_SERVER_NAME`] so the
//! CLI can check it talks to some node of this cluster. Operator (CLI) certificates carry
//! neither name: they open the HTTP API but can never pass for a node on the Raft port.
//!
//! Architecture Invariant: one crypto provider (ring) is named explicitly everywhere, so a
//! second provider pulled in by another dependency can never change which one is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::authority::Role;
use crate::types::NodeId;

/// The DNS name under which every node's HTTPS API is verified.
pub const API_SERVER_NAME: &str = "api.vigil";

/// How a CA's common name starts; the cluster's name follows.
pub const CA_COMMON_NAME_PREFIX: &str = "vigil cluster CA ";

/// The URI an operator certificate carries to name its role.
pub fn role_uri(role: Role) -> String {
    format!("urn:vigil:role:{role}")
}

/// What a certificate says about its holder, as vigil reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateClaims {
    /// The node it names (`node-<id>.vigil`), if exactly one.
    pub node: Option<NodeId>,
    /// The operator it names (`<name>.operator.vigil`), if exactly one.
    pub operator: Option<String>,
    /// The cluster its subject's organization names; absent in certificates made before
    /// vigil wrote it.
    pub cluster: Option<String>,
    /// The role it names; absent in certificates made before roles.
    pub role: Option<Role>,
    /// Problems that make it ambiguous (two roles, two clusters), in words.
    pub problems: Vec<String>,
}

/// Reads what `certificate` says about its holder. An unparsable certificate says nothing.
pub fn certificate_claims(certificate: &CertificateDer<'_>) -> CertificateClaims {
    let mut claims = CertificateClaims::default();
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        claims.problems.push("unparsable certificate".to_string());
        return claims;
    };
    claims.node = node_id_of_certificate(certificate);
    let clusters: Vec<&str> = parsed.subject().iter_organization().filter_map(|name| name.as_str().ok()).collect();
    match clusters.as_slice() {
        [] => {}
        [one] => claims.cluster = Some(one.to_string()),
        _ => claims.problems.push("names more than one cluster".to_string()),
    }
    let names = parsed.subject_alternative_name().ok().flatten().map(|names| names.value.general_names.clone());
    let mut operators = Vec::new();
    let mut roles = Vec::new();
    for name in names.unwrap_or_default() {
        match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => {
                if let Some(operator) = dns.strip_suffix(".operator.vigil") {
                    operators.push(operator.to_string());
                }
            }
            x509_parser::extensions::GeneralName::URI(uri) => {
                if let Some(role) = uri.strip_prefix("urn:vigil:role:") {
                    match role.parse::<Role>() {
                        Ok(role) => roles.push(role),
                        Err(reason) => claims.problems.push(reason),
                    }
                }
            }
            _ => {}
        }
    }
    match operators.as_slice() {
        [] => {}
        [one] => claims.operator = Some(one.clone()),
        _ => claims.problems.push("names more than one operator".to_string()),
    }
    match roles.as_slice() {
        [] => {}
        [one] => claims.role = Some(*one),
        _ => claims.problems.push("names more than one role".to_string()),
    }
    claims
}

/// The ALPN protocol of the Raft transport.
pub const RAFT_ALPN: &[u8] = b"vigil-raft/1";

/// The DNS name that a node's certificate must carry to be node `id`.
pub fn node_server_name(id: NodeId) -> String {
    format!("node-{id}.vigil")
}

/// The node id a certificate names, if it names exactly one.
pub fn node_id_of_certificate(certificate: &CertificateDer<'_>) -> Option<NodeId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    let mut ids = names.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => {
            dns.strip_prefix("node-")?.strip_suffix(".vigil")?.parse::<NodeId>().ok()
        }
        _ => None,
    });
    let id = ids.next()?;
    // A certificate naming two nodes is ambiguous; refuse it rather than pick one.
    if ids.next().is_some() { None } else { Some(id) }
}

/// The signature schemes a node may sign a relayed request with: TLS 1.3's, strongest
/// first among those `rcgen` makes keys for.
const TLS13_SIGNATURE_SCHEMES: &[rustls::SignatureScheme] = &[
    rustls::SignatureScheme::ECDSA_NISTP256_SHA256,
    rustls::SignatureScheme::ECDSA_NISTP384_SHA384,
    rustls::SignatureScheme::ED25519,
    rustls::SignatureScheme::RSA_PSS_SHA256,
    rustls::SignatureScheme::RSA_PSS_SHA384,
    rustls::SignatureScheme::RSA_PSS_SHA512,
];

/// The crypto provider used for every TLS configuration of vigil.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Paths of the TLS files of one party (node or operator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate (PEM), possibly followed by intermediates.
    pub cert: PathBuf,
    /// This party's private key (PEM).
    pub key: PathBuf,
}

/// A problem with TLS files, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct TlsFileError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong, in words.
    pub reason: String,
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsFileError {
    TlsFileError { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Loaded and checked TLS material: the CA, a certificate chain and its matching key.
#[derive(Clone, Debug)]
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    paths: TlsPaths,
}

impl Identity {
    /// Loads the files and checks that the certificate is signed by the CA, is valid now,
    /// and matches the key.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsFileError> {
        let ca_certs = read_certificates(&paths.ca)?;
        let mut roots = RootCertStore::empty();
        for ca in ca_certs {
            roots.add(ca).map_err(|e| file_error(&paths.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let chain = read_certificates(&paths.cert)?;
        let key = PrivateKeyDer::from_pem_file(&paths.key)
            .map_err(|e| file_error(&paths.key, format!("cannot read a PEM private key: {}", pem_reason(e))))?;
        let provider = crypto_provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(|e| file_error(&paths.key, format!("does not match certificate {}: {e}", paths.cert.display())))?;
        let identity = Self { roots: Arc::new(roots), chain, key: Arc::new(key), paths: paths.clone() };
        identity.check_signed_by_ca()?;
        Ok(identity)
    }

    /// Checks that this certificate names node `id`, as the Raft transport will demand.
    pub fn check_names_node(&self, id: NodeId) -> Result<(), TlsFileError> {
        match node_id_of_certificate(&self.chain[0]) {
            Some(named) if named == id => Ok(()),
            Some(named) => Err(file_error(&self.paths.cert, format!("names node {named}, but this node's id is {id}"))),
            None => Err(file_error(&self.paths.cert, format!("names no node (expected {})", node_server_name(id)))),
        }
    }

    fn check_signed_by_ca(&self) -> Result<(), TlsFileError> {
        // A web PKI verifier that ignores the name: the name is checked separately, and a
        // CLI certificate has no node name at all.
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
            .build()
            .map_err(|e| file_error(&self.paths.ca, format!("cannot build a verifier: {e}")))?;
        verifier.verify_client_cert(&self.chain[0], &self.chain[1..], UnixTime::now()).map_err(|e| {
            file_error(
                &self.paths.cert,
                format!("is not valid for the cluster CA {}: {}", self.paths.ca.display(), describe_tls_error(&e)),
            )
        })?;
        Ok(())
    }

    /// Signs `message` with this identity's private key: the scheme used (its TLS code) and
    /// the signature. Nodes sign the requests they hand to a peer to relay, so that the
    /// leader knows who they come from, whoever carried them.
    pub fn sign(&self, message: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let key = rustls::crypto::ring::sign::any_supported_type(&self.key).map_err(|e| e.to_string())?;
        let signer = key
            .choose_scheme(TLS13_SIGNATURE_SCHEMES)
            .ok_or_else(|| format!("{}: no TLS 1.3 signature scheme fits this key", self.paths.key.display()))?;
        let signature = signer.sign(message).map_err(|e| e.to_string())?;
        Ok((u16::from(signer.scheme()), signature))
    }

    /// Checks that `chain` is valid now for this cluster's CA and that its certificate made
    /// `signature` of `message` with `scheme`; answers the node the certificate names.
    pub fn verify_node_signature(
        &self,
        chain: &[CertificateDer<'_>],
        message: &[u8],
        scheme: u16,
        signature: &[u8],
    ) -> Result<NodeId, String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
            .build()
            .map_err(|e| format!("cannot build a verifier: {e}"))?;
        verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(|e| format!("the signer's certificate: {}", describe_tls_error(&e)))?;
        let node = node_id_of_certificate(leaf).ok_or("the signer's certificate names no node")?;
        let scheme = rustls::SignatureScheme::from(scheme);
        if !TLS13_SIGNATURE_SCHEMES.contains(&scheme) {
            return Err(format!("signature scheme {scheme:?} is not accepted"));
        }
        let algorithms = crypto_provider().signature_verification_algorithms;
        let candidates = algorithms
            .mapping
            .iter()
            .find(|(known, _)| *known == scheme)
            .map(|(_, candidates)| *candidates)
            .ok_or_else(|| format!("signature scheme {scheme:?} is not supported"))?;
        let certificate = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("unusable certificate: {e}"))?;
        if candidates.iter().any(|algorithm| certificate.verify_signature(*algorithm, message, signature).is_ok()) {
            Ok(node)
        } else {
            Err(format!("the signature is not node {node}'s"))
        }
    }

    /// This identity's certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The file paths this identity was loaded from.
    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// A server configuration that demands a client certificate from this cluster's CA.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsFileError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
            .build()
            .map_err(|e| file_error(&self.paths.ca, format!("cannot build a client verifier: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| file_error(&self.paths.cert, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| file_error(&self.paths.cert, e))?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }

    /// A client configuration that presents this certificate and trusts only the cluster CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsFileError> {
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots.clone(), crypto_provider())
            .build()
            .map_err(|e| file_error(&self.paths.ca, format!("cannot build a server verifier: {e}")))?;
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| file_error(&self.paths.cert, e))?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| file_error(&self.paths.cert, e))?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }
}

/// Turns a rustls error into words an operator can act on.
pub fn describe_tls_error(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        ) => "certificate is not signed by the cluster CA (unknown issuer)".to_string(),
        rustls::Error::InvalidCertificate(rustls::CertificateError::Expired) => "certificate has expired".to_string(),
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet) => {
            "certificate is not valid yet (check the clock)".to_string()
        }
        rustls::Error::NoCertificatesPresented => "peer presented no certificate".to_string(),
        other => other.to_string(),
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read: {}", pem_reason(e))))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {}", pem_reason(e))))?;
    if certificates.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

fn pem_reason(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item found".to_string(),
        other => format!("{other:?}"),
    }
}

/// The server name to verify when connecting to node `id`.
pub fn server_name_of_node(id: NodeId) -> ServerName<'static> {
    ServerName::try_from(node_server_name(id)).expect("node server names are valid DNS names")
}
