//! TLS for vigil's PostgreSQL sessions (probes and actions), as libpq's `sslmode` means it:
//! `require` encrypts without checking the server, `verify-ca` checks that the server's
//! certificate is signed by the group's CA, `verify-full` also that it names the host vigil
//! connects to. The ring provider, as everywhere else in vigil.

use std::fmt;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server a TLS connection checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Encrypted; the server's certificate is not checked.
    Require,
    /// The server's certificate must be signed by the CA.
    VerifyCa,
    /// The server's certificate must be signed by the CA and name the host.
    VerifyFull,
}

/// TLS settings of a PostgreSQL target, with the files' contents read on this node.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTls {
    /// What is checked.
    pub mode: TlsMode,
    /// The CA certificates (PEM); required to verify.
    pub ca: Option<Vec<u8>>,
    /// A client certificate chain and its key (PEM), for servers that ask for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never reaches a log.
        formatter
            .debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("ca", &self.ca.as_ref().map(|_| "…"))
            .field("client", &self.client.as_ref().map(|_| "…"))
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The `sslmode` tokio-postgres negotiates with, and the connector that makes the TLS
/// session: plain TCP without `tls`.
pub fn connector(tls: Option<&PgTls>) -> Result<(SslMode, MakeRustlsConnect), String> {
    let Some(tls) = tls else {
        // Never used: with `SslMode::Disable` no TLS is negotiated.
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth();
        return Ok((SslMode::Disable, MakeRustlsConnect::new(config)));
    };
    let verifier: Arc<dyn ServerCertVerifier> = match tls.mode {
        TlsMode::Require => Arc::new(AnyCertificate(provider())),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let pem = tls.ca.as_ref().ok_or("the mode checks the server's certificate, but no CA is given")?;
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|e| format!("the CA file is not PEM: {e:?}"))?;
                roots.add(certificate).map_err(|e| format!("the CA file holds an unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("the CA file holds no certificate".to_string());
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("cannot check servers with this CA: {e}"))?;
            if tls.mode == TlsMode::VerifyFull { webpki } else { Arc::new(SignedByCa(webpki)) }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the client certificate file is not PEM: {e:?}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the client key is not PEM: {e:?}"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("unusable client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((SslMode::Require, MakeRustlsConnect::new(config)))
}

/// `verify-ca`: the web PKI checks but the name.
#[derive(Debug)]
struct SignedByCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: any certificate; the handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
