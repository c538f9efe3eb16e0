//! Where the client dials, and how it learns again: a restarted server has a new self-signed
//! certificate, a moved room lives on another node, so after a failed reconnection the client
//! asks (through [`Rediscover`], typically `GET /api/telemetry`) instead of pinning the old
//! answer forever.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use super::StreamTransport;
use crate::tls::ServerVerification;

/// One answer to "where is telemetry": the QUIC address, its TLS name and trust, and the
/// stream transport.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Target {
    /// The sidecar's UDP address.
    pub server: SocketAddr,
    /// The TLS server name.
    pub server_name: String,
    /// How to trust its certificate (the pinned self-signed one, say).
    pub verification: ServerVerification,
    /// The stream transport, if any.
    pub stream: Option<StreamTransport>,
}

impl Target {
    /// A target.
    pub fn new(
        server: SocketAddr,
        server_name: impl Into<String>,
        verification: ServerVerification,
        stream: Option<StreamTransport>,
    ) -> Self {
        Target {
            server,
            server_name: server_name.into(),
            verification,
            stream,
        }
    }

    /// Whether `other` dials the same place with the same trust.
    pub fn same_as(&self, other: &Target) -> bool {
        self.server == other.server
            && self.server_name == other.server_name
            && same_trust(&self.verification, &other.verification)
            && self.stream.as_ref().map(|s| &s.url) == other.stream.as_ref().map(|s| &s.url)
    }
}

/// The future a [`Rediscover`] returns: a new target, or `None` when the answer could not be
/// had (the server is still away).
pub type Discovery = Pin<Box<dyn Future<Output = Option<Target>> + Send>>;

/// Asks again where telemetry is, after a failed reconnection.
#[derive(Clone)]
pub struct Rediscover(Arc<dyn Fn() -> Discovery + Send + Sync>);

impl Rediscover {
    /// A rediscovery made by `f`.
    pub fn new(f: impl Fn() -> Discovery + Send + Sync + 'static) -> Self {
        Rediscover(Arc::new(f))
    }

    /// Asks once.
    pub fn ask(&self) -> Discovery {
        (self.0)()
    }
}

impl std::fmt::Debug for Rediscover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rediscover")
    }
}

fn same_trust(a: &ServerVerification, b: &ServerVerification) -> bool {
    match (a, b) {
        (ServerVerification::Pinned(x), ServerVerification::Pinned(y)) => x == y,
        (ServerVerification::Roots(x), ServerVerification::Roots(y)) => Arc::ptr_eq(x, y),
        (ServerVerification::InsecureAcceptAny, ServerVerification::InsecureAcceptAny) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn a_new_certificate_is_a_new_target() {
        let addr: SocketAddr = "127.0.0.1:4443".parse().unwrap();
        let pin = |b: u8| ServerVerification::Pinned(CertificateDer::from(vec![b; 8]));
        let a = Target::new(addr, "localhost", pin(1), None);
        assert!(a.same_as(&Target::new(addr, "localhost", pin(1), None)));
        assert!(!a.same_as(&Target::new(addr, "localhost", pin(2), None)));
        let moved: SocketAddr = "127.0.0.1:4444".parse().unwrap();
        assert!(!a.same_as(&Target::new(moved, "localhost", pin(1), None)));
    }
}
