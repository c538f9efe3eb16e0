//! The `telemetry` data channels: messages to subscribers (reliable with a bounded backlog, or
//! lossy) and messages from them.

use std::collections::VecDeque;
use std::time::Instant;

use cabine_proto::Identity;
use serde::Serialize;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};

use str0m::channel::ChannelData;

use super::{Output, Room, Session, SessionId};

/// The label of the data channels that carry telemetry to subscribers.
pub const TELEMETRY_LABEL: &str = "telemetry";

/// Telemetry data channel counters of one subscriber.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DataStats {
    /// Messages written to the subscriber.
    pub sent: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Messages dropped because the subscriber's channel was not open or too far behind.
    pub dropped: u64,
    /// Reliable messages that waited for room in the send buffer, or for the channel to open
    /// (none were lost).
    pub deferred: u64,
    /// Messages received from the subscriber (commands).
    pub received: u64,
}

/// Most bytes buffered in a subscriber's telemetry channel before further messages are dropped
/// for it (a slow subscriber never holds up the kiosk or the others).
pub const DATA_BUFFER_LIMIT: usize = 256 * 1024;

/// Most bytes of reliable telemetry (measurements, status, blobs) held per subscriber while its
/// SCTP send buffer is full: room for a few full-resolution stills in their JSON form. Beyond
/// it messages are dropped and counted.
pub const DATA_BACKLOG_LIMIT: usize = 4 * 1024 * 1024;

/// Most outputs waiting to be drained before further data-channel messages from participants
/// (and setup progress reports) are dropped and counted.
pub const DATA_IN_LIMIT: usize = 1024;

/// Largest message accepted from a subscriber's data channel.
pub const DATA_IN_MAX: usize = 16 * 1024;

/// A message a participant sent on a data channel (for example a device command).
#[derive(Debug, Clone)]
pub struct DataIn {
    /// The session it came from.
    pub session: SessionId,
    /// Who sent it.
    pub identity: Identity,
    /// The channel label.
    pub label: String,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Room {
    /// Sends a telemetry message to every subscriber with an open `telemetry` channel:
    /// `reliable` picks the ordered, retransmitted channel (measurements, status) or the lossy
    /// one (waveforms). Reliable messages for a channel not open yet, or whose send buffer is
    /// full, wait in a bounded backlog; a subscriber whose channel is closed or too far behind
    /// gets nothing and the drop is counted. Returns how many subscribers it was written to.
    pub fn send_data(&mut self, now: Instant, data: &[u8], reliable: bool) -> usize {
        let mut written = 0;
        for s in &mut self.sessions {
            if write_data(s, data, reliable) {
                written += 1;
            }
        }
        self.drive(now);
        written
    }

    /// Sends a telemetry message to one subscriber only (an answer to its request, e.g. the
    /// room's current channels when its page opens). Returns whether it was written.
    pub fn send_data_to(
        &mut self,
        now: Instant,
        session: SessionId,
        data: &[u8],
        reliable: bool,
    ) -> bool {
        let written = self
            .sessions
            .iter_mut()
            .find(|s| s.id == session)
            .is_some_and(|s| write_data(s, data, reliable));
        self.drive(now);
        written
    }

    /// A data channel of session `i` opened.
    pub(super) fn on_channel_open(&mut self, i: usize, id: ChannelId) {
        if let Some(t) = &mut self.sessions[i].telemetry {
            if id == t.reliable {
                t.reliable_open = true;
            } else if id == t.lossy {
                t.lossy_open = true;
            }
        }
    }

    /// A data channel of session `i` closed: its reliable backlog is dropped and counted.
    pub(super) fn on_channel_close(&mut self, i: usize, id: ChannelId) {
        if let Some(t) = &mut self.sessions[i].telemetry {
            if id == t.reliable {
                t.reliable_open = false;
                t.reliable_closed = true;
                t.stats.dropped += t.backlog.len() as u64;
                t.backlog.clear();
                t.backlog_bytes = 0;
            } else if id == t.lossy {
                t.lossy_open = false;
            }
        }
    }

    /// A message from session `i`: queued as an [`Output::Data`], or dropped and counted when
    /// it is too large or too many outputs wait.
    pub(super) fn on_channel_data(&mut self, i: usize, d: ChannelData) {
        let s = &mut self.sessions[i];
        let label = s
            .rtc
            .channel(d.id)
            .and_then(|c| c.config().map(|c| c.label.clone()))
            .unwrap_or_default();
        if let Some(t) = &mut s.telemetry {
            t.stats.received += 1;
        }
        if d.data.len() > DATA_IN_MAX || self.outputs.len() >= DATA_IN_LIMIT {
            self.dropped.data_in += 1;
        } else {
            self.outputs.push_back(Output::Data(DataIn {
                session: s.id,
                identity: s.identity.clone(),
                label,
                data: d.data,
            }));
        }
    }
}

pub(super) struct Telemetry {
    pub(super) reliable: ChannelId,
    pub(super) lossy: ChannelId,
    pub(super) reliable_open: bool,
    pub(super) lossy_open: bool,
    /// The reliable channel closed: nothing more is held for it.
    pub(super) reliable_closed: bool,
    pub(super) stats: DataStats,
    /// Reliable messages waiting for room in the SCTP send buffer (a blob's chunks come in a
    /// burst larger than that buffer), sent in order as the subscriber acknowledges.
    pub(super) backlog: VecDeque<Vec<u8>>,
    pub(super) backlog_bytes: usize,
}

impl Telemetry {
    /// Declares a subscriber's two `telemetry` channels in the pending SDP change: reliable and
    /// ordered (measurements, status, command results), unordered without retransmission
    /// (waveform chunks, protocol `lossy`).
    pub(super) fn declare(api: &mut str0m::change::SdpApi) -> (ChannelId, ChannelId) {
        let reliable = api.add_channel_with_config(ChannelConfig {
            label: TELEMETRY_LABEL.into(),
            ordered: true,
            reliability: Reliability::Reliable,
            ..ChannelConfig::default()
        });
        let lossy = api.add_channel_with_config(ChannelConfig {
            label: TELEMETRY_LABEL.into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            protocol: "lossy".into(),
            ..ChannelConfig::default()
        });
        (reliable, lossy)
    }

    pub(super) fn new(reliable: ChannelId, lossy: ChannelId) -> Self {
        Telemetry {
            reliable,
            lossy,
            reliable_open: false,
            lossy_open: false,
            reliable_closed: false,
            stats: DataStats::default(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
        }
    }
}

/// Writes `data` on a subscriber's reliable or lossy telemetry channel, counting a drop when it
/// is closed or too far behind.
pub(super) fn write_data(s: &mut Session, data: &[u8], reliable: bool) -> bool {
    let Some(t) = &mut s.telemetry else {
        return false;
    };
    let (id, open) = if reliable {
        (t.reliable, t.reliable_open)
    } else {
        (t.lossy, t.lossy_open)
    };
    let Some(mut ch) = open.then(|| s.rtc.channel(id)).flatten() else {
        // Not open yet (the subscriber's SCTP association is still coming up): reliable
        // messages wait in the backlog. A page asks for the room's `sync` as soon as its own
        // channel opens, which may be before this one: what arrives in between would be in
        // neither.
        if reliable && !t.reliable_closed && t.backlog_bytes + data.len() <= DATA_BACKLOG_LIMIT {
            t.backlog.push_back(data.to_vec());
            t.backlog_bytes += data.len();
            t.stats.deferred += 1;
            return true;
        }
        t.stats.dropped += 1;
        return false;
    };
    // Reliable messages keep their order behind a backlog, and wait in it (bounded) when the
    // send buffer is full; lossy ones (waveforms) are dropped when it is: a late chunk is
    // worthless.
    let written = (!reliable || t.backlog.is_empty())
        && ch.buffered_amount() <= DATA_BUFFER_LIMIT
        && matches!(ch.write(false, data), Ok(true));
    if written {
        t.stats.sent += 1;
        t.stats.bytes += data.len() as u64;
        s.dirty = true;
        return true;
    }
    if reliable && t.backlog_bytes + data.len() <= DATA_BACKLOG_LIMIT {
        t.backlog.push_back(data.to_vec());
        t.backlog_bytes += data.len();
        t.stats.deferred += 1;
        return true;
    }
    t.stats.dropped += 1;
    false
}

/// Writes what the session's reliable telemetry backlog can now fit; true if it wrote any.
pub(super) fn flush_backlog(s: &mut Session) -> bool {
    let Some(t) = &mut s.telemetry else {
        return false;
    };
    if t.backlog.is_empty() || !t.reliable_open {
        return false;
    }
    let Some(mut ch) = s.rtc.channel(t.reliable) else {
        return false;
    };
    let mut wrote = false;
    while let Some(front) = t.backlog.front() {
        if ch.buffered_amount() > DATA_BUFFER_LIMIT || !matches!(ch.write(false, front), Ok(true)) {
            break;
        }
        t.stats.sent += 1;
        t.stats.bytes += front.len() as u64;
        t.backlog_bytes -= front.len();
        t.backlog.pop_front();
        wrote = true;
    }
    wrote
}
