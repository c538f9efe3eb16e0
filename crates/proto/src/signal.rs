//! The WebSocket signalling protocol of `GET /ws/{room}?token=…` (see `docs/signalling.md`).
//!
//! Every message is one JSON text frame: an object with `"v": 1` and a `"type"`. A participant
//! uses up to two peer connections: `publish` (the client offers, the server answers, as WHIP)
//! and `subscribe` (the server offers, the client answers; the server offers again whenever a
//! track appears or goes away). Each connection has one offerer, so offers never cross.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;

/// Which of a participant's peer connections a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pc {
    /// The connection the participant sends media on.
    Publish,
    /// The connection the participant receives media and telemetry on.
    Subscribe,
}

/// A STUN or TURN server, shaped like a browser's `RTCIceServer` (pass it as is in
/// `RTCConfiguration.iceServers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs (RFC 7064, RFC 7065).
    pub urls: Vec<String>,
    /// TURN username (absent for STUN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (absent for STUN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMsg {
    /// First message of a new signalling session: subscribe now (the server answers with its
    /// first `offer`) and/or publish later with `publish`.
    Join {
        /// Receive the room's media and telemetry.
        #[serde(default)]
        subscribe: bool,
        /// Receive only this participant's tracks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
    },
    /// First message of a connection that takes over an earlier signalling session (after a
    /// network change): its media sessions are kept.
    Resume {
        /// The `resume` token from `welcome`.
        resume: String,
    },
    /// An SDP offer on the publish connection: the first one, a new track, or an ICE restart.
    Publish {
        /// The offer.
        sdp: String,
    },
    /// The answer to the server's offer `offer_id` on the subscribe connection.
    Answer {
        /// The offer answered.
        offer_id: u64,
        /// The answer.
        sdp: String,
    },
    /// A trickled ICE candidate (`a=candidate` value, or empty for end of candidates).
    Candidate {
        /// Which connection.
        pc: Pc,
        /// The candidate.
        candidate: String,
    },
    /// Asks the server for a new subscribe offer that restarts ICE (the network changed).
    RestartIce,
    /// Ends the media sessions and the signalling session.
    Leave,
    /// Keep-alive; the server answers `pong`.
    Ping,
    /// A doctor allows (or stops allowing) an assistant of the room to operate the devices,
    /// for this consultation. Refused (`forbidden`) from any other role.
    AllowCommands {
        /// The assistant's identity.
        identity: String,
        /// Allowed from now on, or no longer.
        allow: bool,
    },
    /// How the client reaches its TURN relay on connection `pc` (its selected local
    /// candidate's `relayProtocol` in WebRTC statistics): `udp`, `tcp` or `tls`. The server
    /// sees only the relay's UDP; it accepts the report only while that connection's selected
    /// pair is relayed, and shows it in `/api/rooms`, the ops view and the transport metric.
    RelayProtocol {
        /// Which connection.
        pc: Pc,
        /// `udp`, `tcp` or `tls`.
        protocol: String,
    },
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMsg {
    /// The session is open (after `join`) or taken over (after `resume`).
    Welcome {
        /// Present it in `resume` to take the session over from another connection.
        resume: String,
        /// Whether this continues an earlier session.
        resumed: bool,
        /// How long the media sessions survive without a signalling connection, ms.
        grace_ms: u64,
        /// Who the token says you are.
        identity: String,
        /// Your role.
        role: String,
        /// The other participants on signalling now.
        participants: Vec<Participant>,
        /// STUN/TURN servers to create the peer connections with (TURN credentials minted for
        /// this session); absent when the server has none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
        /// The cluster's nodes (public base URLs, this one first): where to ask for the room
        /// when this node stops answering. Absent outside a cluster.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        nodes: Vec<String>,
    },
    /// The server's offer on the subscribe connection; answer with `answer`.
    Offer {
        /// Name it in the answer.
        offer_id: u64,
        /// The offer.
        sdp: String,
    },
    /// The server's answer to `publish`.
    Answer {
        /// The answer.
        sdp: String,
        /// The tracks the server now receives from you.
        tracks: Vec<Track>,
    },
    /// A track became available on the subscribe connection (sent before the offer adding it).
    TrackAdded(Track),
    /// A track went away (its m-line is stopped in the offer that follows).
    TrackRemoved(Track),
    /// A participant opened a signalling session in the room.
    ParticipantJoined(Participant),
    /// A participant left, or its grace period after a drop ended.
    ParticipantLeft(Participant),
    /// A participant's signalling connection dropped; it may resume.
    ParticipantDisconnected(Participant),
    /// A participant's signalling connection came back.
    ParticipantResumed(Participant),
    /// The `telemetry` data channels are on the subscribe connection (reliable for
    /// measurements and status, lossy for waveforms); commands go back on the reliable one.
    Telemetry {
        /// The channels' label.
        label: String,
        /// What they carry.
        channels: Vec<TelemetryChannel>,
    },
    /// A media session ended on the server (ICE failed for longer than the grace period).
    SessionEnded {
        /// Which connection.
        pc: Pc,
        /// Why.
        reason: String,
    },
    /// Answer to `ping`.
    Pong,
    /// The cluster's nodes changed since this session was last told (the welcome, or an
    /// earlier `nodes`): sent before the `pong` of the next `ping`. Replaces the welcome's list.
    Nodes {
        /// The nodes' public base URLs, this one first.
        nodes: Vec<String>,
    },
    /// The room moves to another node (this one drains): open a session at `url` (the new
    /// node's base URL), publish and subscribe there, then leave this one (make-before-break).
    Move {
        /// The new node's public base URL.
        url: String,
        /// Why (`drain`).
        reason: String,
    },
    /// A doctor allowed (or stopped allowing) an assistant to operate the devices; sent to
    /// every participant of the room.
    CommandsAllowed {
        /// The assistant's identity.
        identity: String,
        /// Whether its device commands are accepted now.
        allowed: bool,
    },
    /// A doctor shared a still with the room: fetch it at `GET /api/rooms/{room}/stills/{id}`
    /// with your token while the consultation lasts (the server keeps it no longer).
    StillShared {
        /// Its id.
        id: String,
        /// Who shared it.
        from: String,
        /// Its MIME type (`image/jpeg`, `image/png`).
        mime: String,
        /// Its size, bytes.
        bytes: u64,
    },
    /// A request failed; the session goes on unless `fatal`.
    Error {
        /// Machine-readable cause (`bad_message`, `unauthorized`, `forbidden`, `bad_sdp`, …).
        code: String,
        /// What was wrong.
        message: String,
        /// The server closes the connection after this message.
        fatal: bool,
    },
}

/// A track as signalling describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Track {
    /// The m-line carrying it on the subscribe connection (the publish connection's for
    /// `answer`).
    pub mid: String,
    /// Its publisher's identity.
    pub from: String,
    /// `audio` or `video`.
    pub kind: String,
    /// `room-camera`, `device-camera`, `microphone`, `stethoscope`, …: the msid track id.
    pub label: String,
    /// The msid stream id.
    pub stream: String,
    /// What the server treats it as: `stethoscope`, `device-camera`, `audio`, `video`.
    pub class: String,
    /// Its publisher's role (`kiosk`, `doctor`, …); empty from servers that predate it. Pages
    /// key their tiles by `from` and `role`, never by the order tracks arrive in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
}

/// A participant on signalling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    /// Identity (token `sub`).
    pub identity: String,
    /// Role.
    pub role: String,
}

/// One telemetry data channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryChannel {
    /// `reliable` (ordered, retransmitted) or `lossy` (unordered, no retransmission).
    pub kind: String,
    /// Its SCTP sub-protocol (`""` or `"lossy"`), to tell them apart in the browser.
    pub protocol: String,
}

/// A message with its version, as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Protocol version: [`VERSION`].
    pub v: u8,
    /// The message.
    #[serde(flatten)]
    pub msg: T,
}

/// Why a client message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// Not JSON, or not a known message.
    #[error("bad message: {0}")]
    Malformed(String),
    /// A version this server does not speak.
    #[error("unsupported protocol version {0} (this server speaks {VERSION})")]
    Version(u8),
}

/// Parses a client's text frame, checking the version.
pub fn parse_client(text: &str) -> Result<ClientMsg, SignalError> {
    let e: Envelope<ClientMsg> =
        serde_json::from_str(text).map_err(|e| SignalError::Malformed(e.to_string()))?;
    if e.v != VERSION {
        return Err(SignalError::Version(e.v));
    }
    Ok(e.msg)
}

/// Serialises a message with the current version.
pub fn to_text<T: Serialize>(msg: &T) -> String {
    #[derive(Serialize)]
    struct Out<'a, T> {
        v: u8,
        #[serde(flatten)]
        msg: &'a T,
    }
    // Serialising plain data structs and enums to a string cannot fail.
    serde_json::to_string(&Out { v: VERSION, msg }).unwrap_or_default()
}

/// Parses a server's text frame (for clients), checking the version.
pub fn parse_server(text: &str) -> Result<ServerMsg, SignalError> {
    let e: Envelope<ServerMsg> =
        serde_json::from_str(text).map_err(|e| SignalError::Malformed(e.to_string()))?;
    if e.v != VERSION {
        return Err(SignalError::Version(e.v));
    }
    Ok(e.msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_round_trip_with_their_version() {
        let m = parse_client(r#"{"v":1,"type":"join","subscribe":true}"#).unwrap();
        assert_eq!(
            m,
            ClientMsg::Join {
                subscribe: true,
                from: None
            }
        );
        let m = parse_client(r#"{"v":1,"type":"answer","offer_id":3,"sdp":"v=0"}"#).unwrap();
        assert_eq!(
            m,
            ClientMsg::Answer {
                offer_id: 3,
                sdp: "v=0".into()
            }
        );
        assert_eq!(
            parse_client(r#"{"v":1,"type":"restart_ice"}"#).unwrap(),
            ClientMsg::RestartIce
        );
        let text = to_text(&ClientMsg::Candidate {
            pc: Pc::Subscribe,
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
        });
        assert!(
            text.starts_with(r#"{"v":1,"type":"candidate","pc":"subscribe""#),
            "{text}"
        );
        assert!(matches!(
            parse_client(&text),
            Ok(ClientMsg::Candidate { .. })
        ));
    }

    #[test]
    fn server_messages_serialise_flat() {
        let t = Track {
            mid: "2".into(),
            from: "kiosk-1".into(),
            kind: "video".into(),
            label: "device-camera".into(),
            stream: "kiosk-1".into(),
            class: "device-camera".into(),
            role: "kiosk".into(),
        };
        let text = to_text(&ServerMsg::TrackAdded(t.clone()));
        assert!(
            text.starts_with(r#"{"v":1,"type":"track_added","mid":"2""#),
            "{text}"
        );
        assert_eq!(parse_server(&text).unwrap(), ServerMsg::TrackAdded(t));
    }

    #[test]
    fn wrong_versions_and_unknown_types_are_refused() {
        assert!(matches!(
            parse_client(r#"{"v":2,"type":"ping"}"#),
            Err(SignalError::Version(2))
        ));
        assert!(matches!(
            parse_client(r#"{"v":1,"type":"dance"}"#),
            Err(SignalError::Malformed(_))
        ));
        assert!(matches!(
            parse_client("not json"),
            Err(SignalError::Malformed(_))
        ));
    }
}
