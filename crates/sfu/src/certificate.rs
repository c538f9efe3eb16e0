//! The DTLS certificate the server presents: one per process, shared by every session.
//!
//! str0m generates a key pair and a self-signed certificate for each `Rtc` it builds unless it
//! is given one. That key generation was most of the cost of a join (and of the `sdp_offer`
//! fuzz target). WebRTC authenticates the certificate by the fingerprint in the signed-over SDP
//! answer, not by who issued it, so one certificate serves every session of the process, as in
//! other media servers; it lives as long as the process.

use std::fmt;
use std::sync::{Arc, OnceLock};

use str0m::config::DtlsCert;

/// A DTLS certificate and its private key, cheap to clone (shared).
#[derive(Clone)]
pub struct DtlsCertificate(Arc<DtlsCert>);

impl DtlsCertificate {
    /// A new self-signed certificate with a fresh key pair, from str0m's crypto provider;
    /// `None` if the provider cannot make one.
    pub fn generate() -> Option<Self> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .map(|cert| DtlsCertificate(Arc::new(cert)))
    }

    /// The process's certificate, generated on first use; `None` if the crypto provider cannot
    /// make one (str0m then tries again per session).
    pub fn process() -> Option<Self> {
        static PROCESS: OnceLock<Option<DtlsCertificate>> = OnceLock::new();
        PROCESS.get_or_init(DtlsCertificate::generate).clone()
    }

    /// The certificate in the form str0m's configuration takes (a copy of its bytes).
    pub(crate) fn to_str0m(&self) -> DtlsCert {
        DtlsCert::clone(&self.0)
    }
}

impl fmt::Debug for DtlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("DtlsCertificate")
            .field("certificate_bytes", &self.0.certificate.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use cabine_proto::{Identity, Role, RoomId};
    use str0m::media::{Direction, MediaKind};
    use str0m::{Candidate, Rtc};

    use super::*;
    use crate::room::{JoinRequest, Room, RoomConfig, SessionId, SessionKind};

    /// The `a=fingerprint` line of the answer to a fresh client offer, joining `room` as
    /// session `id`.
    fn answered_fingerprint(room: &mut Room, id: u64) -> String {
        let now = Instant::now();
        let mut client = Rtc::builder().build(now);
        client.add_local_candidate(
            Candidate::host(SocketAddr::from(([10, 0, 0, 2], 5000)), "udp").expect("candidate"),
        );
        let mut api = client.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().expect("an offer");
        let joined = room
            .join(
                now,
                JoinRequest {
                    session: SessionId(id),
                    identity: Identity::parse("kiosk").expect("identity"),
                    role: Role::Kiosk,
                    kind: SessionKind::Publish,
                    offer: offer.to_sdp_string(),
                    from: None,
                    ice_ufrag: format!("ufrag{id}"),
                    ice_pwd: "serverpassword00000000".into(),
                },
            )
            .expect("joined");
        joined
            .answer
            .lines()
            .find(|l| l.starts_with("a=fingerprint:"))
            .expect("a fingerprint")
            .to_owned()
    }

    #[test]
    fn every_session_of_the_process_presents_the_same_certificate() {
        let mut a = Room::new(RoomId::parse("a").expect("room"), RoomConfig::default());
        let mut b = Room::new(RoomId::parse("b").expect("room"), RoomConfig::default());
        let first = answered_fingerprint(&mut a, 1);
        assert_eq!(answered_fingerprint(&mut a, 2), first);
        assert_eq!(answered_fingerprint(&mut b, 3), first);
    }

    #[test]
    fn without_a_certificate_each_session_gets_its_own() {
        let cfg = RoomConfig {
            dtls_certificate: None,
            ..RoomConfig::default()
        };
        let mut room = Room::new(RoomId::parse("a").expect("room"), cfg);
        assert_ne!(
            answered_fingerprint(&mut room, 1),
            answered_fingerprint(&mut room, 2)
        );
    }

    #[test]
    fn the_key_is_never_printed() {
        let cert = DtlsCertificate::generate().expect("a certificate");
        let shown = format!("{cert:?}");
        assert!(!shown.contains("private_key"), "{shown}");
    }
}
