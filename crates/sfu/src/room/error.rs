//! Why the room refused a join or a negotiation step, with client faults (a request that is
//! wrong and must not be repeated as is) kept apart from the server's own faults.

use std::net::SocketAddr;

use super::SessionId;

/// Why a join (or a publisher's new offer) was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// Client fault: the offer is not valid SDP.
    #[error("malformed SDP offer: {0}")]
    BadSdp(String),
    /// Client fault: the offer parses but none of its media can be used.
    #[error("no usable media in the SDP offer: {0}")]
    NoUsableMedia(String),
    /// Client fault: the offer is valid SDP but the media engine refused it (inconsistent
    /// m-lines, a change a renegotiation may not make...).
    #[error("the SDP offer was refused: {0}")]
    Refused(String),
    /// Capacity: the room has reached its session limit.
    #[error("the room is full ({0} sessions)")]
    RoomFull(usize),
    /// Server fault: the address configured as the server's ICE candidate is unusable.
    #[error("the server's media candidate {addr} is unusable: {reason}")]
    BadCandidate {
        /// The configured candidate address.
        addr: SocketAddr,
        /// What the media engine said about it.
        reason: String,
    },
    /// Server fault (or a session that ended meanwhile): no publishing session with this id
    /// in the room.
    #[error("no publishing session {0} in this room")]
    UnknownSession(SessionId),
    /// Client fault: a server-negotiated subscriber asked for nothing the server can offer yet
    /// (no track to receive and no telemetry channel).
    #[error("nothing to offer: no track to receive and no telemetry channel asked for")]
    NothingToOffer,
    /// Server fault: the room panicked while handling the join and was closed with all its
    /// sessions (see [`Room::run_isolated`](super::Room::run_isolated)).
    #[error("the room failed on the server and was closed")]
    RoomFailed,
}

impl JoinError {
    /// Whether the request itself was wrong (answer 4xx, e.g. `400 bad_sdp` or `422`), as
    /// opposed to the server's state or configuration (`404`, `500`) or its capacity (`503`).
    pub fn is_client_fault(&self) -> bool {
        matches!(
            self,
            JoinError::BadSdp(_)
                | JoinError::NoUsableMedia(_)
                | JoinError::Refused(_)
                | JoinError::NothingToOffer
        )
    }
}

/// Why an answer or a renegotiation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// Not the client's fault: no such session in the room (it ended meanwhile).
    #[error("no session {0} in this room")]
    UnknownSession(SessionId),
    /// Client fault: the session is not one the server negotiates with (a WHEP subscriber,
    /// or a publisher answering instead of offering).
    #[error("session {0} does not take server offers")]
    NotNegotiated(SessionId),
    /// Client fault: no offer with this id is outstanding.
    #[error("no outstanding offer {got} (outstanding: {outstanding:?})")]
    NoSuchOffer {
        /// The id the answer named.
        got: u64,
        /// The outstanding offer's id, if any.
        outstanding: Option<u64>,
    },
    /// Client fault: the answer is not valid SDP.
    #[error("bad SDP: {0}")]
    BadSdp(String),
    /// Client fault: the answer does not match the offer it names; a new offer follows.
    #[error("the answer does not match offer {offer} ({reason}); a new offer follows")]
    AnswerMismatch {
        /// The offer the answer named.
        offer: u64,
        /// What the media engine said.
        reason: String,
    },
}

impl NegotiationError {
    /// Whether the request itself was wrong (answer 4xx), as opposed to a session the server
    /// no longer holds (`404`).
    pub fn is_client_fault(&self) -> bool {
        !matches!(self, NegotiationError::UnknownSession(_))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use cabine_proto::{Identity, Role, RoomId};
    use str0m::media::{Direction, MediaKind};
    use str0m::{Candidate, Rtc};

    use super::*;
    use crate::room::{JoinRequest, Room, RoomConfig, SessionKind};

    fn offer(now: Instant) -> String {
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(
            Candidate::host(SocketAddr::from(([10, 0, 0, 2], 5000)), "udp").expect("candidate"),
        );
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().expect("an offer");
        offer.to_sdp_string()
    }

    fn request(offer: String) -> JoinRequest {
        JoinRequest {
            session: SessionId(1),
            identity: Identity::parse("kiosk").expect("identity"),
            role: Role::Kiosk,
            kind: SessionKind::Publish,
            offer,
            from: None,
            ice_ufrag: "srvufrag".into(),
            ice_pwd: "serverpassword00000000".into(),
        }
    }

    #[test]
    fn a_bad_offer_is_the_clients_fault() {
        let now = Instant::now();
        let mut room = Room::new(RoomId::parse("r").expect("room"), RoomConfig::default());
        let e = room
            .join(now, request("not sdp".into()))
            .expect_err("refused");
        assert!(matches!(e, JoinError::BadSdp(_)), "{e:?}");
        assert!(e.is_client_fault());
    }

    #[test]
    fn an_unusable_server_candidate_is_the_servers_fault() {
        let now = Instant::now();
        let cfg = RoomConfig {
            candidate: SocketAddr::from(([0, 0, 0, 0], 7882)),
            ..RoomConfig::default()
        };
        let mut room = Room::new(RoomId::parse("r").expect("room"), cfg);
        let e = room.join(now, request(offer(now))).expect_err("refused");
        assert!(matches!(e, JoinError::BadCandidate { .. }), "{e:?}");
        assert!(!e.is_client_fault());
    }

    #[test]
    fn a_valid_offer_for_an_unknown_session_is_not_the_clients_fault() {
        let now = Instant::now();
        let mut room = Room::new(RoomId::parse("r").expect("room"), RoomConfig::default());
        let e = room
            .republish(now, SessionId(7), &offer(now))
            .expect_err("refused");
        assert!(
            matches!(e, JoinError::UnknownSession(SessionId(7))),
            "{e:?}"
        );
        assert!(!e.is_client_fault());
        let e = room
            .accept_answer(now, SessionId(7), 1, "v=0")
            .expect_err("refused");
        assert!(!e.is_client_fault());
    }
}
