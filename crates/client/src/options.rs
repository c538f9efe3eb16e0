//! Client configuration.

use std::net::SocketAddr;
use std::time::Duration;

use webrtc::ice_transport::ice_server::RTCIceServer;

/// A STUN or TURN server used for ICE.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    /// Server URLs, e.g. `stun:stun.example.org:3478`, `turn:turn.example.org:3478?transport=udp`,
    /// `turns:turn.example.org:5349?transport=tcp`.
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN password (empty for STUN).
    pub credential: String,
}

impl IceServer {
    /// A STUN server.
    pub fn stun(url: impl Into<String>) -> Self {
        IceServer {
            urls: vec![url.into()],
            ..Default::default()
        }
    }

    /// A TURN server with long-term credentials.
    pub fn turn(
        url: impl Into<String>,
        username: impl Into<String>,
        credential: impl Into<String>,
    ) -> Self {
        IceServer {
            urls: vec![url.into()],
            username: username.into(),
            credential: credential.into(),
        }
    }

    pub(crate) fn to_rtc(&self) -> RTCIceServer {
        RTCIceServer {
            urls: self.urls.clone(),
            username: self.username.clone(),
            credential: self.credential.clone(),
        }
    }
}

/// Options shared by [`Publisher`](crate::Publisher) and [`Subscriber`](crate::Subscriber).
///
/// Build with struct-update syntax: `ClientOptions { loopback_only: true, ..Default::default() }`
/// or start from [`ClientOptions::loopback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// STUN/TURN servers. Empty by default (host candidates only).
    pub ice_servers: Vec<IceServer>,
    /// Only use relay (TURN) candidates (`iceTransportPolicy: "relay"`).
    pub relay_only: bool,
    /// Before each session, ask the endpoint for its ICE servers (`OPTIONS`, `Link:
    /// rel="ice-server"` headers, RFC 9725 §4.6) and use them after [`ice_servers`](Self::ice_servers).
    /// On by default; an endpoint that gives none changes nothing.
    pub endpoint_ice_servers: bool,
    /// Gather a single IPv4 loopback host candidate (127.0.0.1) and nothing else: for tests
    /// against a server on the same machine. By default `webrtc` never gathers loopback
    /// candidates.
    pub loopback_only: bool,
    /// How long to wait for ICE gathering before sending the offer (non-trickle). When it
    /// expires the offer is sent with the candidates gathered so far.
    pub gather_timeout: Duration,
    /// How long to wait, after the answer is applied, for the peer connection (ICE and DTLS)
    /// to be connected.
    pub connect_timeout: Duration,
    /// Timeout of each HTTP request.
    pub http_timeout: Duration,
    /// Accept any TLS certificate from the WHIP/WHEP server and from `turns:` TURN servers
    /// (self-signed development setups).
    pub accept_invalid_certs: bool,
    /// WHEP only: number of `recvonly` video transceivers in the subscriber's offer.
    pub recv_video: usize,
    /// WHEP only: number of `recvonly` audio transceivers in the subscriber's offer.
    pub recv_audio: usize,
    /// WHEP only: offer a data channel (`commands`), so the server opens its `telemetry`
    /// channels towards this subscriber and accepts device commands from it.
    pub data_channel: bool,
    /// Reach the server's media through this address instead of the one in its answer: every
    /// UDP ICE candidate of the SDP answer is replaced by one candidate with this address and
    /// port (TCP candidates are dropped). For a relay in front of the server's media port,
    /// such as the `cabine-impair` link emulator: the client's checks and media go to the
    /// relay, which forwards them from its own socket; the server (ICE-lite) answers that
    /// socket as a peer-reflexive candidate. `None` (the default) uses the answer as is.
    pub media_via: Option<SocketAddr>,
    /// Also reach the server over ICE-TCP (RFC 6544): its passive TCP candidate in the answer
    /// is carried through a local UDP↔TCP bridge (the `webrtc` stack gathers no TCP
    /// candidates), ranked below direct UDP; for networks that drop UDP to the server.
    pub ice_tcp: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            ice_servers: Vec::new(),
            relay_only: false,
            endpoint_ice_servers: true,
            loopback_only: false,
            gather_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            http_timeout: Duration::from_secs(10),
            accept_invalid_certs: false,
            recv_video: 1,
            recv_audio: 3,
            data_channel: false,
            media_via: None,
            ice_tcp: false,
        }
    }
}

impl ClientOptions {
    /// Defaults with [`loopback_only`](Self::loopback_only) set: what tests against a local
    /// server want.
    pub fn loopback() -> Self {
        ClientOptions {
            loopback_only: true,
            ..Default::default()
        }
    }
}
