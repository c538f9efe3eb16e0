//! The room's one output: what the shell must do after each input, drained until a timeout.

use std::time::Instant;

use serde::Serialize;
use str0m::net::Transmit;

use super::{DataIn, Offer, Removed, Room, SessionId};

/// What the room asks of the shell, from [`Room::poll_output`]. After each input (a datagram,
/// a timeout, a join, an answer, a telemetry message...) the shell drains outputs until it gets
/// [`Output::Timeout`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// A datagram to send over UDP.
    Transmit(Transmit),
    /// A frame to send on an ICE-TCP connection: only on the connection bound to `session`
    /// (another session's connection from the same address must not carry it).
    TransmitTcp {
        /// The session that sends it.
        session: SessionId,
        /// The frame and its connection's addresses.
        transmit: Transmit,
    },
    /// A new SDP offer to a subscriber the server negotiates with (tracks appeared or went
    /// away, or an ICE restart); its answer goes to [`Room::accept_answer`].
    Offer(Offer),
    /// A session reached a setup stage (join tracing).
    Progress(Progress),
    /// A participant sent a message on a data channel (a device command).
    Data(DataIn),
    /// The room removed a session by itself (ICE timeout, DTLS close).
    Ended(Removed),
    /// Nothing more until this time ([`Room::handle_timeout`]) or the next input; `None`: the
    /// room has no session, so no timer.
    Timeout(Option<Instant>),
}

/// A step in a session's setup, for join tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// ICE connectivity established.
    IceConnected,
    /// DTLS handshake done (SRTP keys ready).
    DtlsConnected,
    /// First media packet received (publisher) or forwarded (subscriber).
    FirstMedia,
}

/// A session reached a [`Stage`].
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The session.
    pub session: SessionId,
    /// The stage reached.
    pub stage: Stage,
}

impl Room {
    /// The next thing the shell must do: datagrams first, then offers, progress, data and ended
    /// sessions in the order they happened, then [`Output::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> Output {
        if let Some((session, t)) = self.transmits.pop_front() {
            if t.proto != str0m::net::Protocol::Udp {
                return Output::TransmitTcp {
                    session,
                    transmit: t,
                };
            }
            return Output::Transmit(t);
        }
        if let Some(o) = self.outputs.pop_front() {
            return o;
        }
        Output::Timeout(self.poll_timeout())
    }
}
