//! JSON-ready views of a room and its statistics, for the operators' API and metrics.

use std::time::Instant;

use cabine_proto::{Identity, Role, RoomId};
use serde::Serialize;

use super::{DataStats, Room, SessionId, SessionKind, Track, TrackInfo, Transport};
use crate::stats::{DelayHistogram, DelaySummary, EgressStats, IngressStats};

/// Counters of traffic the room dropped, for metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DropCounters {
    /// Datagrams the media engine refused (bad SRTP, malformed RTP/RTCP, bad STUN integrity).
    pub rejected_datagrams: u64,
    /// RTP packets with an SSRC the session never negotiated.
    pub unknown_ssrc: u64,
    /// RTP packets with a payload type no subscriber codec matches.
    pub unmapped_payload_type: u64,
    /// Data-channel messages from participants dropped: larger than
    /// [`DATA_IN_MAX`](super::DATA_IN_MAX) bytes, or more than
    /// [`DATA_IN_LIMIT`](super::DATA_IN_LIMIT) outputs were waiting to be drained.
    pub data_in: u64,
}

/// A JSON-ready view of a room for the operators' API.
#[derive(Debug, Clone, Serialize)]
pub struct RoomSnapshot {
    /// The room name.
    pub room: RoomId,
    /// Its sessions.
    pub sessions: Vec<SessionSnapshot>,
    /// Dropped traffic.
    pub dropped: DropCounters,
}

/// One session in a [`RoomSnapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// Session id.
    pub id: SessionId,
    /// Participant identity.
    pub identity: Identity,
    /// Role.
    pub role: Role,
    /// Publish or subscribe.
    pub kind: SessionKind,
    /// ICE/DTLS connected.
    pub connected: bool,
    /// Current bandwidth estimate towards this participant (subscribers), bits/s.
    pub bwe_bps: Option<u64>,
    /// The selected candidate pair's transport (client candidate type and protocol), once
    /// the engine reported one (about a second after connecting).
    pub transport: Option<Transport>,
    /// Published tracks (publishers).
    pub published: Vec<PublishedSnapshot>,
    /// Received tracks (subscribers).
    pub received: Vec<ReceivedSnapshot>,
    /// Telemetry data channel counters (subscribers that offered a data channel).
    pub telemetry: Option<DataStats>,
}

/// A published track's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedSnapshot {
    /// The track.
    pub track: TrackInfo,
    /// Codec, once media has arrived.
    pub codec: Option<String>,
    /// One entry per simulcast layer (one without simulcast).
    pub layers: Vec<IngressStats>,
    /// Time packets of this track spent inside the SFU (arrival to hand-off to the socket).
    pub forwarding_delay: DelaySummary,
}

/// A received track's statistics.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedSnapshot {
    /// The track, if one is bound to this slot.
    pub track: Option<TrackInfo>,
    /// Identity of the publisher.
    pub from: Option<Identity>,
    /// Egress statistics.
    pub stats: EgressStats,
}

impl Room {
    /// A JSON-ready view of the room and its statistics.
    pub fn snapshot(&self, now: Instant) -> RoomSnapshot {
        let sessions = self
            .sessions
            .iter()
            .map(|s| SessionSnapshot {
                id: s.id,
                identity: s.identity.clone(),
                role: s.role,
                kind: s.kind,
                connected: s.connected,
                bwe_bps: s.bwe,
                transport: s.path.selected,
                telemetry: s.telemetry.as_ref().map(|t| t.stats),
                published: self
                    .tracks
                    .iter()
                    .filter(|t| t.publisher == s.id)
                    .map(|t| PublishedSnapshot {
                        track: t.info(),
                        codec: t.codec.as_ref().map(|(_, c, _, _)| c.to_string()),
                        layers: t
                            .layers
                            .iter()
                            .map(|l| {
                                let mut st = l.stats.clone();
                                st.bitrate_bps = l.meter.bps(now);
                                st.jitter_ms = l.jitter.millis(t.clock());
                                st
                            })
                            .collect(),
                        forwarding_delay: t.delay.summary(),
                    })
                    .collect(),
                received: s
                    .outs
                    .iter()
                    .map(|o| {
                        let t = o.track.and_then(|id| self.track(id));
                        ReceivedSnapshot {
                            track: t.map(Track::info),
                            from: t.map(|t| t.publisher_identity.clone()),
                            stats: o.stats.clone(),
                        }
                    })
                    .collect(),
            })
            .collect();
        RoomSnapshot {
            room: self.id.clone(),
            sessions,
            dropped: self.dropped,
        }
    }

    /// The forwarding delay of every packet this room forwarded since it was created (all
    /// tracks, including ended ones), for the node-wide histogram.
    pub fn forwarding_delay(&self) -> &DelayHistogram {
        &self.forwarding_delay
    }
}
