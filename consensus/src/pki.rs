//! Issues the cluster CA and the certificates of nodes and operators.
//!
//! The names in the certificates are the ones [`crate::tls`] checks: node certificates
//! carry `node-<id>.vigil` and [`crate::tls::API_SERVER_NAME`]; operator certificates
//! carry neither, so they open the API but never the Raft port as a node. Every leaf names
//! the cluster in its subject's organization, and an operator's names its role in a URI
//! (`urn:vigil:role:admin` or `urn:vigil:role:viewer`).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

use crate::authority::Role;
use crate::tls::{API_SERVER_NAME, CA_COMMON_NAME_PREFIX, node_server_name, role_uri};
use crate::types::NodeId;

/// How long the CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long node and operator certificates are valid.
pub const LEAF_VALIDITY: Duration = Duration::days(1825);

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PEM, PKCS#8).
    pub key_pem: String,
}

/// A failure to create or use the CA.
#[derive(Debug, thiserror::Error)]
#[error("certificate authority: {0}")]
pub struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(error: rcgen::Error) -> Self {
        PkiError(error.to_string())
    }
}

/// The cluster certificate authority, able to issue certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    certificate: IssuedCertificate,
    cluster: String,
}

impl CertificateAuthority {
    /// Creates a new CA for `cluster`.
    pub fn generate(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, format!("{CA_COMMON_NAME_PREFIX}{cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let certificate = IssuedCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Self { issuer: Issuer::new(params, key), certificate, cluster: cluster.to_string() })
    }

    /// Loads an existing CA from its certificate and key (PEM), to issue more certificates.
    /// The cluster's name is read from the CA's common name, as [`Self::generate`] wrote it.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cluster = cluster_of_ca(cert_pem)?;
        let certificate = IssuedCertificate { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() };
        Ok(Self { issuer, certificate, cluster })
    }

    /// The cluster this CA is for.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA's own certificate and key.
    pub fn certificate(&self) -> &IssuedCertificate {
        &self.certificate
    }

    /// Issues the certificate of node `id`, also valid for the extra host names and IP
    /// addresses in `extra_names` (for load balancers and monitoring that check names).
    pub fn issue_node(&self, id: NodeId, extra_names: &[String]) -> Result<IssuedCertificate, PkiError> {
        let mut names = vec![node_server_name(id), API_SERVER_NAME.to_string(), "localhost".to_string()];
        names.extend(extra_names.iter().cloned());
        let mut params = leaf_params(&format!("vigil node {id}"), &self.cluster, &names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Issues an operator certificate for the CLI, named `name`, with `role`.
    pub fn issue_operator(&self, name: &str, role: Role) -> Result<IssuedCertificate, PkiError> {
        let mut params =
            leaf_params(&format!("vigil operator {name}"), &self.cluster, &[format!("{name}.operator.vigil")])?;
        let uri = role_uri(role).try_into().map_err(|_| PkiError("role URI is not ASCII".to_string()))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

fn cluster_of_ca(cert_pem: &str) -> Result<String, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| PkiError(format!("the CA certificate is not PEM: {e}")))?;
    let certificate = pem.parse_x509().map_err(|e| PkiError(format!("the CA certificate is unreadable: {e}")))?;
    let common_name = certificate.subject().iter_common_name().next().and_then(|name| name.as_str().ok());
    common_name.and_then(|name| name.strip_prefix(CA_COMMON_NAME_PREFIX)).map(str::to_string).ok_or_else(|| {
        PkiError(format!("the CA certificate's common name is not {CA_COMMON_NAME_PREFIX:?} and a cluster name"))
    })
}

fn leaf_params(common_name: &str, cluster: &str, names: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.distinguished_name.push(DnType::OrganizationName, cluster);
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone().try_into().map_err(|_| PkiError(format!("{name:?} is not a valid host name")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    Ok(params)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    // Back-date by an hour so a node whose clock is a little behind accepts a fresh cert.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
}
