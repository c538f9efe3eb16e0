//! The operators' live view: a pseudonymous JSON summary of the node (`GET /api/ops`) and the
//! same as a server-sent event stream (`GET /api/ops/stream`), which the `/ops` page draws.
//!
//! Rooms and participants appear only as short stable hashes; tracks by class (camera,
//! stethoscope…). The worst streams (by loss, then jitter) come first.

use std::time::Duration;

use cabine_proto::Redacted;
use cabine_sfu::room::{RoomSnapshot, SessionKind};
use cabine_sfu::shell::ShellStats;
use serde::Serialize;

/// One refresh of the operators' view.
#[derive(Debug, Clone, Serialize)]
pub struct OpsView {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Node-level numbers.
    pub node: NodeView,
    /// Rooms, pseudonymous.
    pub rooms: Vec<RoomView>,
    /// Every stream of the node, worst first.
    pub streams: Vec<StreamView>,
}

/// Node-level numbers.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Rooms open.
    pub rooms: usize,
    /// Sessions (publish + subscribe).
    pub sessions: usize,
    /// Kiosks connected.
    pub kiosks: usize,
    /// Media socket counters.
    pub media: ShellStats,
}

/// A room, pseudonymous.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    /// Stable hash of the room name.
    pub id: String,
    /// Its participants' sessions.
    pub participants: Vec<ParticipantView>,
}

/// A participant session, pseudonymous.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// Stable hash of the identity.
    pub id: String,
    /// Role.
    pub role: String,
    /// `publish` or `subscribe`.
    pub kind: String,
    /// ICE/DTLS connected.
    pub connected: bool,
    /// Bandwidth estimate towards it (subscribers), bits/s.
    pub bwe_bps: Option<u64>,
    /// Round-trip time, ms (first stream that reports one).
    pub rtt_ms: Option<f64>,
    /// Worst loss among its streams.
    pub loss: f32,
}

/// One stream's health.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    /// Room hash.
    pub room: String,
    /// Participant hash.
    pub participant: String,
    /// Role of the participant.
    pub role: String,
    /// `in` (published) or `out` (forwarded to a subscriber).
    pub direction: &'static str,
    /// `audio` or `video`.
    pub kind: String,
    /// Track class (`stethoscope`, `device-camera`, `video`, `audio`).
    pub class: String,
    /// Simulcast layer (RID) in use.
    pub layer: Option<String>,
    /// Bitrate, bits/s.
    pub bitrate_bps: Option<u64>,
    /// Packets so far.
    pub packets: u64,
    /// Loss fraction.
    pub loss: f32,
    /// Jitter, ms.
    pub jitter_ms: Option<f64>,
    /// RTT, ms.
    pub rtt_ms: Option<f64>,
    /// Forwarding delay inside the SFU, p50 and p99, µs (incoming streams).
    pub delay_p50_us: Option<u64>,
    /// See `delay_p50_us`.
    pub delay_p99_us: Option<u64>,
}

/// Builds the view from the media plane's snapshots.
pub fn view(rooms: &[RoomSnapshot], media: ShellStats) -> OpsView {
    let mut streams = Vec::new();
    let mut out_rooms = Vec::new();
    let mut sessions = 0;
    let mut kiosks = 0;
    for room in rooms {
        let rid = Redacted(&room.room).to_string();
        let mut participants = Vec::new();
        for s in &room.sessions {
            sessions += 1;
            if s.role == cabine_proto::Role::Kiosk && s.kind == SessionKind::Publish {
                kiosks += 1;
            }
            let pid = Redacted(&s.identity).to_string();
            let role = s.role.to_string();
            let mut rtt = None;
            let mut loss: f32 = 0.0;
            for p in &s.published {
                for l in &p.layers {
                    rtt = rtt.or(l.rtt_ms);
                    loss = loss.max(l.loss);
                    streams.push(StreamView {
                        room: rid.clone(),
                        participant: pid.clone(),
                        role: role.clone(),
                        direction: "in",
                        kind: p.track.kind.to_owned(),
                        class: class_name(p.track.class),
                        layer: l.rid.clone(),
                        bitrate_bps: l.bitrate_bps,
                        packets: l.packets,
                        loss: l.loss,
                        jitter_ms: Some(l.jitter_ms),
                        rtt_ms: l.rtt_ms,
                        delay_p50_us: Some(p.forwarding_delay.p50_us),
                        delay_p99_us: Some(p.forwarding_delay.p99_us),
                    });
                }
            }
            for r in &s.received {
                let Some(t) = &r.track else { continue };
                rtt = rtt.or(r.stats.rtt_ms);
                loss = loss.max(r.stats.loss);
                streams.push(StreamView {
                    room: rid.clone(),
                    participant: pid.clone(),
                    role: role.clone(),
                    direction: "out",
                    kind: t.kind.to_owned(),
                    class: class_name(t.class),
                    layer: r.stats.layer.clone(),
                    bitrate_bps: None,
                    packets: r.stats.packets,
                    loss: r.stats.loss,
                    jitter_ms: r.stats.jitter_ms,
                    rtt_ms: r.stats.rtt_ms,
                    delay_p50_us: None,
                    delay_p99_us: None,
                });
            }
            participants.push(ParticipantView {
                id: pid,
                role,
                kind: match s.kind {
                    SessionKind::Publish => "publish".into(),
                    SessionKind::Subscribe => "subscribe".into(),
                },
                connected: s.connected,
                bwe_bps: s.bwe_bps,
                rtt_ms: rtt,
                loss,
            });
        }
        out_rooms.push(RoomView {
            id: rid,
            participants,
        });
    }
    streams.sort_by(|a, b| {
        b.loss.total_cmp(&a.loss).then(
            b.jitter_ms
                .unwrap_or(0.0)
                .total_cmp(&a.jitter_ms.unwrap_or(0.0)),
        )
    });
    OpsView {
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        node: NodeView {
            rooms: rooms.len(),
            sessions,
            kiosks,
            media,
        },
        rooms: out_rooms,
        streams,
    }
}

/// How often the stream sends a new view.
pub const PERIOD: Duration = Duration::from_secs(1);

fn class_name(c: cabine_sfu::room::TrackClass) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
