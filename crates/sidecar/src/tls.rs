//! TLS 1.3 configurations for both ends: the server's certificate (configured PEM files, or a
//! self-signed one generated at start for development) and the client's ways of trusting it
//! (web PKI roots, a pinned certificate, or anything for development).

use std::fmt;
use std::sync::Arc;

use cabine_proto::telemetry::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::SidecarError;

/// Installs aws-lc-rs as the process's rustls provider if none is (the workspace also builds
/// ring through other crates, so rustls cannot pick one by itself).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    install_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// A certificate chain and its private key.
pub struct Identity {
    /// The chain, end entity first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A self-signed certificate for `names` (e.g. `localhost`, the server's host name).
    pub fn self_signed(names: &[String]) -> Result<Self, SidecarError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| SidecarError::Tls(format!("generating a certificate: {e}")))?;
        Ok(Identity {
            certs: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        })
    }

    /// Reads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Self, SidecarError> {
        let read_err =
            |path: &std::path::Path, e: rustls::pki_types::pem::Error| SidecarError::ReadFile {
                path: path.to_owned(),
                source: std::io::Error::other(e.to_string()),
            };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| read_err(cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_err(cert, e))?;
        if certs.is_empty() {
            return Err(SidecarError::Tls(format!(
                "{} holds no certificate",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, e))?;
        Ok(Identity { certs, key })
    }
}

/// The server's rustls configuration: TLS 1.3 only, ALPN `cabine-telemetry/1`, no client
/// certificates (kiosks authenticate with their token).
pub fn server_config(identity: Identity) -> Result<rustls::ServerConfig, SidecarError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SidecarError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .map_err(|e| SidecarError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// How a kiosk trusts the server's certificate.
#[derive(Clone)]
#[non_exhaustive]
pub enum ServerVerification {
    /// Normal web PKI validation against these roots (a public or private CA).
    Roots(Arc<rustls::RootCertStore>),
    /// Accept exactly this end-entity certificate (the server's self-signed one), and check the
    /// handshake signature with its key. Host names are not checked.
    Pinned(CertificateDer<'static>),
    /// Accept any certificate. Development only: anyone on the path can read the telemetry.
    InsecureAcceptAny,
}

impl fmt::Debug for ServerVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerVerification::Roots(r) => write!(f, "Roots({} roots)", r.len()),
            ServerVerification::Pinned(_) => f.write_str("Pinned"),
            ServerVerification::InsecureAcceptAny => f.write_str("InsecureAcceptAny"),
        }
    }
}

/// The kiosk's rustls configuration: TLS 1.3 only, ALPN `cabine-telemetry/1`.
pub fn client_config(verify: &ServerVerification) -> Result<rustls::ClientConfig, SidecarError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SidecarError::Tls(e.to_string()))?;
    let mut config = match verify {
        ServerVerification::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        ServerVerification::Pinned(cert) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                cert: cert.clone(),
                any: false,
                provider,
            }))
            .with_no_client_auth(),
        ServerVerification::InsecureAcceptAny => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                cert: CertificateDer::from(Vec::new()),
                any: true,
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// Accepts one exact certificate (or any, for development), verifying the handshake signatures
/// with the presented certificate's key either way.
#[derive(Debug)]
struct PinnedVerifier {
    cert: CertificateDer<'static>,
    any: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.any || end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
