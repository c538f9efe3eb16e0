//! The transport of a session: the server's local ICE candidates (UDP, and passive TCP on the
//! same address when the shell listens there), and which candidate pair a session really uses,
//! so operators can see who comes over TCP or through a relay.
//!
//! str0m reports the selected pair in its peer statistics (about once a second): its protocol
//! and both addresses, not the remote candidate's type. The type is found by matching the
//! remote address with the candidates the client signalled in its SDP (offer or answer): a
//! match gives `host`, `srflx` or `relay`; an address the client never signalled is `prflx`
//! (learned from its connectivity checks: a NAT mapping, an ICE-TCP connection's source port).
//! Candidates a client trickles after its SDP (a TURN allocation is often slower than the offer)
//! are learned too ([`Room::learn_candidate`]), and the selected pair is classified again. What the SFU
//! cannot see: how a relayed client reaches its TURN server (UDP, TCP or TLS). coturn relays
//! to the SFU over UDP, and a relay candidate's SDP line does not say which transport the client
//! used to allocate it; only the client's own statistics (`relayProtocol`) tell. So a client
//! may report it ([`Room::report_relay_protocol`]): the report is kept for the session and
//! shown only while the selected pair's remote candidate is a relay one (a client cannot make a
//! direct path look relayed).

use std::net::SocketAddr;

use serde::Serialize;
use str0m::net::{Protocol, TcpType};
use str0m::{Candidate, CandidateKind, Rtc};

use super::{JoinError, Room};

/// Remote candidates remembered per session at most (a client signals a handful; the rest are
/// ignored, and a pair to one of them reads as `prflx`).
pub const MAX_REMOTE_CANDIDATES: usize = 32;

/// The transport protocol of a selected candidate pair, as the SFU sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TransportProtocol {
    /// UDP (also what a TURN relay uses towards the SFU, whatever the client used).
    Udp,
    /// ICE-TCP (RFC 6544) on the media port; for a relay candidate, TURN over TCP as the
    /// client reported it.
    Tcp,
    /// For a relay candidate only: TURN over TLS between the client and its relay, as the
    /// client reported it.
    Tls,
    /// For a relay candidate only: the client has not reported how it reaches its relay (the
    /// relay's UDP towards the SFU says nothing about it).
    Unknown,
}

impl TransportProtocol {
    /// Parses a client's report of its relay protocol (`udp`, `tcp`, `tls`, as in WebRTC
    /// statistics' `relayProtocol`).
    pub fn parse_relay(s: &str) -> Option<TransportProtocol> {
        match s {
            "udp" => Some(TransportProtocol::Udp),
            "tcp" => Some(TransportProtocol::Tcp),
            "tls" => Some(TransportProtocol::Tls),
            _ => None,
        }
    }
}

/// Why a relay-protocol report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayReportError {
    /// The session does not exist (in this room).
    #[error("no such session")]
    UnknownSession,
    /// The session's selected pair does not use a relay candidate (or none is selected yet).
    #[error("the session's selected candidate is not a relay one")]
    NotRelayed,
}

/// The type of the client's candidate in the selected pair (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CandidateType {
    /// A client's own interface address.
    Host,
    /// An address the client learned from a STUN server.
    Srflx,
    /// An address the server learned from the client's checks (not signalled).
    Prflx,
    /// A TURN relay's address.
    Relay,
}

/// The candidate pair a session uses: the client's candidate type and the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Transport {
    /// The protocol between the SFU and the client's candidate.
    pub protocol: TransportProtocol,
    /// The client's candidate type (the server's is always `host`).
    pub candidate: CandidateType,
}

impl Transport {
    /// A short label, `"<candidate>/<protocol>"` (`"host/udp"`, `"prflx/tcp"`, `"relay/udp"`),
    /// for metrics.
    pub fn label(&self) -> &'static str {
        use CandidateType::*;
        use TransportProtocol::*;
        match (self.candidate, self.protocol) {
            (Host, Udp) => "host/udp",
            (Srflx, Udp) => "srflx/udp",
            (Prflx, Udp) => "prflx/udp",
            (Relay, Udp) => "relay/udp",
            (Host, Tcp) => "host/tcp",
            (Srflx, Tcp) => "srflx/tcp",
            (Prflx, Tcp) => "prflx/tcp",
            (Relay, Tcp) => "relay/tcp",
            (Relay, Tls) => "relay/tls",
            (Relay, Unknown) => "relay/unknown",
            // A report only applies to relay candidates.
            (Host, Tls) => "host/tls",
            (Srflx, Tls) => "srflx/tls",
            (Prflx, Tls) => "prflx/tls",
            (Host, Unknown) => "host/unknown",
            (Srflx, Unknown) => "srflx/unknown",
            (Prflx, Unknown) => "prflx/unknown",
        }
    }
}

/// What a session knows about its path: the client's signalled candidates and the selected
/// pair's transport.
#[derive(Debug, Default)]
pub(super) struct Path {
    remote: Vec<(SocketAddr, Protocol, CandidateType)>,
    pub(super) selected: Option<Transport>,
    /// The selected pair's protocol and remote address, as str0m last reported them.
    selected_remote: Option<(Protocol, SocketAddr)>,
    /// How the client says it reaches its relay.
    relay_reported: Option<TransportProtocol>,
}

impl Path {
    /// Remembers the `a=candidate` lines of an SDP the client sent (offer or answer).
    pub(super) fn learn_sdp(&mut self, sdp: &str) {
        for line in sdp.lines() {
            if let Some(attr) = line.trim_end().strip_prefix("a=") {
                self.remember(attr);
            }
        }
    }

    /// Remembers a candidate the client trickled (`candidate:…`, with or without `a=`) and
    /// classifies the selected pair again: a relay candidate signalled after the pair was
    /// selected turns a `prflx` pair into a `relay` one. Returns whether the candidate was new.
    pub(super) fn learn_trickled(&mut self, candidate: &str) -> bool {
        let attr = candidate.trim();
        let attr = attr.strip_prefix("a=").unwrap_or(attr);
        let new = self.remember(attr);
        if let (true, Some((protocol, remote))) = (new, self.selected_remote) {
            self.select(protocol, remote);
        }
        new
    }

    /// Adds one `candidate:` attribute value to the remote candidates (bounded); whether it was
    /// new. Anything else, or an unparsable candidate, is ignored.
    fn remember(&mut self, attr: &str) -> bool {
        if !attr.starts_with("candidate:") {
            return false;
        }
        let Ok(c) = Candidate::from_sdp_string(attr) else {
            return false;
        };
        let kind = match c.kind() {
            CandidateKind::Host => CandidateType::Host,
            CandidateKind::ServerReflexive => CandidateType::Srflx,
            CandidateKind::PeerReflexive => CandidateType::Prflx,
            CandidateKind::Relayed => CandidateType::Relay,
        };
        let entry = (c.addr(), c.proto(), kind);
        if self.remote.contains(&entry) || self.remote.len() >= MAX_REMOTE_CANDIDATES {
            return false;
        }
        self.remote.push(entry);
        true
    }

    /// Records the selected pair str0m reported; returns whether the transport changed.
    pub(super) fn select(&mut self, protocol: Protocol, remote: SocketAddr) -> bool {
        self.selected_remote = Some((protocol, remote));
        let protocol = match protocol {
            Protocol::Udp => TransportProtocol::Udp,
            // The shell only speaks plain ICE-TCP.
            _ => TransportProtocol::Tcp,
        };
        let candidate = self
            .remote
            .iter()
            .find(|(addr, proto, _)| {
                *addr == remote && (*proto == Protocol::Udp) == (protocol == TransportProtocol::Udp)
            })
            .map_or(CandidateType::Prflx, |(_, _, kind)| *kind);
        let protocol = match (candidate, self.relay_reported) {
            (CandidateType::Relay, Some(reported)) => reported,
            // Not `udp`: that is coturn's leg to the SFU, not the client's to coturn.
            (CandidateType::Relay, None) => TransportProtocol::Unknown,
            _ => protocol,
        };
        let t = Some(Transport {
            protocol,
            candidate,
        });
        let changed = self.selected != t;
        self.selected = t;
        changed
    }
}

impl Path {
    /// The client reports how it reaches its relay. With `require_relayed`, refused when a
    /// pair is selected and its remote candidate is not a relay (a pair not reported by the
    /// engine yet keeps the report pending); without, kept for whenever it is (a report made
    /// before the connection, a WHIP header). Either way it is shown only on a relayed pair.
    pub(super) fn report_relay(
        &mut self,
        protocol: TransportProtocol,
        require_relayed: bool,
    ) -> Result<(), RelayReportError> {
        let relayed = self
            .selected
            .is_some_and(|t| t.candidate == CandidateType::Relay);
        if require_relayed && self.selected.is_some() && !relayed {
            return Err(RelayReportError::NotRelayed);
        }
        self.relay_reported = Some(protocol);
        if let Some(t) = self.selected.as_mut().filter(|_| relayed) {
            t.protocol = protocol;
        }
        Ok(())
    }
}

impl Room {
    /// A client's report of how it reaches its TURN relay (its selected local candidate's
    /// `relayProtocol`), for `session` of this room; see [`Path::report_relay`] for
    /// `require_relayed`.
    pub fn report_relay_protocol(
        &mut self,
        session: super::SessionId,
        protocol: TransportProtocol,
        require_relayed: bool,
    ) -> Result<(), RelayReportError> {
        let s = self
            .sessions
            .iter_mut()
            .find(|s| s.id == session)
            .ok_or(RelayReportError::UnknownSession)?;
        s.path.report_relay(protocol, require_relayed)
    }

    /// A candidate the client trickled on `session` of this room after its SDP (`candidate:…`,
    /// as a browser's `icecandidate` event gives it): used only to tell the selected pair's candidate type, never
    /// to reach the client (the server is ICE-lite). Whether the session exists.
    pub fn learn_candidate(&mut self, session: super::SessionId, candidate: &str) -> bool {
        let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) else {
            return false;
        };
        s.path.learn_trickled(candidate);
        true
    }

    /// Adds the server's candidates to a new session's engine: UDP host on the media address
    /// and, with [`RoomConfig::tcp_candidate`](super::RoomConfig::tcp_candidate), passive TCP
    /// host on the same address (its type preference, 90 against UDP's 126, puts it below).
    pub(super) fn add_local_candidates(&self, rtc: &mut Rtc) -> Result<(), JoinError> {
        let addr = self.cfg.candidate;
        let bad = |e: &dyn std::fmt::Display| JoinError::BadCandidate {
            addr,
            reason: e.to_string(),
        };
        let udp = Candidate::host(addr, "udp").map_err(|e| bad(&e))?;
        rtc.add_local_candidate(udp);
        if self.cfg.tcp_candidate {
            let tcp = Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Passive)
                .build()
                .map_err(|e| bad(&e))?;
            rtc.add_local_candidate(tcp);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
        a=candidate:1 1 udp 2122260223 192.168.1.10 50000 typ host\r\n\
        a=candidate:2 1 udp 1686052607 203.0.113.5 40000 typ srflx raddr 192.168.1.10 rport 50000\r\n\
        a=candidate:3 1 udp 41885439 198.51.100.7 49200 typ relay raddr 203.0.113.5 rport 40000\r\n\
        a=candidate:4 1 tcp 1518280447 192.168.1.10 9 typ host tcptype active\r\n";

    fn path() -> Path {
        let mut p = Path::default();
        p.learn_sdp(OFFER);
        p
    }

    #[test]
    fn a_signalled_address_gives_its_candidate_type() {
        let mut p = path();
        assert!(p.select(Protocol::Udp, "198.51.100.7:49200".parse().unwrap()));
        // Without the client's report, how it reaches the relay is unknown (not udp).
        assert_eq!(p.selected.map(|t| t.label()), Some("relay/unknown"));
        // The client says it reaches its relay over TLS: shown while the pair is relayed.
        p.report_relay(TransportProtocol::Tls, true).unwrap();
        assert_eq!(p.selected.map(|t| t.label()), Some("relay/tls"));
        // The pair moves to a direct candidate: the report is not shown, and a new one refused.
        p.select(Protocol::Udp, "203.0.113.5:40000".parse().unwrap());
        assert_eq!(p.selected.map(|t| t.label()), Some("srflx/udp"));
        assert_eq!(
            p.report_relay(TransportProtocol::Tls, true),
            Err(RelayReportError::NotRelayed)
        );
        p.select(Protocol::Udp, "203.0.113.5:40000".parse().unwrap());
        assert_eq!(p.selected.map(|t| t.label()), Some("srflx/udp"));
        p.select(Protocol::Udp, "192.168.1.10:50000".parse().unwrap());
        assert_eq!(p.selected.map(|t| t.label()), Some("host/udp"));
    }

    #[test]
    fn an_ice_tcp_connection_reads_as_peer_reflexive_tcp() {
        let mut p = path();
        // An active TCP candidate says port 9; the connection comes from an ephemeral port.
        p.select(Protocol::Tcp, "192.168.1.10:53412".parse().unwrap());
        assert_eq!(
            p.selected,
            Some(Transport {
                protocol: TransportProtocol::Tcp,
                candidate: CandidateType::Prflx
            })
        );
        // The same address over UDP is not the TCP candidate's.
        let mut p = Path::default();
        p.learn_sdp("a=candidate:4 1 tcp 1 192.168.1.10 9 typ host tcptype active\r\n");
        p.select(Protocol::Udp, "192.168.1.10:9".parse().unwrap());
        assert_eq!(p.selected.map(|t| t.label()), Some("prflx/udp"));
    }

    #[test]
    fn a_relay_candidate_trickled_after_the_pair_was_selected_makes_it_relayed() {
        // The offer left before the TURN allocation: only the host candidate in the SDP.
        let mut p = Path::default();
        p.learn_sdp("a=candidate:1 1 udp 2122260223 192.168.1.10 50000 typ host\r\n");
        let relay = "198.51.100.7:49200".parse().unwrap();
        p.select(Protocol::Udp, relay);
        assert_eq!(p.selected.map(|t| t.label()), Some("prflx/udp"));
        // A relay report is refused while the pair reads as peer-reflexive.
        assert_eq!(
            p.report_relay(TransportProtocol::Tls, true),
            Err(RelayReportError::NotRelayed)
        );
        // The relay candidate arrives by trickle (as a browser sends it): the pair is relayed.
        assert!(p.learn_trickled(
            "candidate:3 1 udp 41885439 198.51.100.7 49200 typ relay raddr 0.0.0.0 rport 0"
        ));
        assert_eq!(p.selected.map(|t| t.label()), Some("relay/unknown"));
        p.report_relay(TransportProtocol::Tls, true).unwrap();
        assert_eq!(p.selected.map(|t| t.label()), Some("relay/tls"));
        // The same candidate again, end-of-candidates and garbage change nothing.
        assert!(!p.learn_trickled(
            "a=candidate:3 1 udp 41885439 198.51.100.7 49200 typ relay raddr 0.0.0.0 rport 0"
        ));
        assert!(!p.learn_trickled(""));
        assert!(!p.learn_trickled("candidate:garbage"));
        assert_eq!(p.selected.map(|t| t.label()), Some("relay/tls"));
    }

    #[test]
    fn reporting_the_same_pair_again_is_no_change() {
        let mut p = path();
        let a = "192.168.1.10:50000".parse().unwrap();
        assert!(p.select(Protocol::Udp, a));
        assert!(!p.select(Protocol::Udp, a));
    }

    #[test]
    fn remote_candidates_are_bounded() {
        let mut p = Path::default();
        let sdp: String = (0..100)
            .map(|i| format!("a=candidate:{i} 1 udp 1 10.0.0.1 {} typ host\r\n", 1000 + i))
            .collect();
        p.learn_sdp(&sdp);
        assert_eq!(p.remote.len(), MAX_REMOTE_CANDIDATES);
    }
}
