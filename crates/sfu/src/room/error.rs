//! Why the room refused a join or a negotiation step.

use super::SessionId;

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The offer is not valid SDP.
    #[error("malformed SDP offer: {0}")]
    BadSdp(String),
    /// The offer parses but none of its media can be used.
    #[error("no usable media in the SDP offer: {0}")]
    NoUsableMedia(String),
    /// The media engine refused the offer.
    #[error("the SDP offer was refused: {0}")]
    Refused(String),
    /// The room has reached its session limit.
    #[error("the room is full ({0} sessions)")]
    RoomFull(usize),
}

/// Why an answer or a renegotiation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// No such session in the room.
    #[error("no session {0} in this room")]
    UnknownSession(SessionId),
    /// The session is not one the server negotiates with (a WHEP subscriber, or a publisher
    /// answering instead of offering).
    #[error("session {0} does not take server offers")]
    NotNegotiated(SessionId),
    /// No offer with this id is outstanding.
    #[error("no outstanding offer {got} (outstanding: {outstanding:?})")]
    NoSuchOffer {
        /// The id the answer named.
        got: u64,
        /// The outstanding offer's id, if any.
        outstanding: Option<u64>,
    },
    /// The SDP is malformed or the media engine refused it.
    #[error("bad SDP: {0}")]
    BadSdp(String),
}
