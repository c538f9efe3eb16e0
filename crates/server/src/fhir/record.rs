//! What the server keeps of each consultation until its export: the kiosks' channel
//! declarations, their measurements (bounded per room), the latest excerpt of each ECG
//! channel, and the subject the platform supplied. A sans-IO table: time is an input, and the
//! shell decides what "live" means ([`Records::tick`]).
//!
//! Nothing is kept beyond: an export takes the data away ([`Records::take`]), and a room that
//! ended is removed whether it was exported or not.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use cabine_proto::telemetry::{
    delivered, ChannelDecl, Delivered, DeviceKind, Measurement, WaveformChunk,
};
use cabine_proto::RoomId;

use super::subject::Subject;

/// A room that was given a subject but never became live is forgotten after this long.
pub const UNUSED_SUBJECT_TTL: Duration = Duration::from_secs(3600);

/// A capture time further in the past than this, on the server's clock, is not believed: the
/// reception time is used instead.
pub const MAX_CAPTURE_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// A capture time further in the future than this, on the server's clock, is not believed.
pub const MAX_CAPTURE_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// `fhir.max_waveform_bytes_per_room` unless set: 4 MiB (12 leads at 1 kHz for 20 s).
pub const DEFAULT_MAX_WAVEFORM_BYTES: usize = 4 << 20;

/// A (kiosk identity, channel id) pair.
pub type ChannelKey = (String, u32);

/// One measurement as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The kiosk (token subject).
    pub source: String,
    /// Capture time on the server's clock, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The reading.
    pub measurement: Measurement,
}

/// One waveform chunk as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Time of the first sample on the server's clock, microseconds since the Unix epoch.
    pub time_us: u64,
    /// The chunk.
    pub chunk: WaveformChunk,
}

/// What an export takes out of a room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Taken {
    /// Channel declarations, by kiosk and channel.
    pub channels: BTreeMap<ChannelKey, ChannelDecl>,
    /// Measurements in arrival order.
    pub readings: Vec<Reading>,
    /// The kept excerpt of each ECG channel.
    pub waveforms: BTreeMap<ChannelKey, Vec<Chunk>>,
}

impl Taken {
    /// Whether there is nothing to export.
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty() && self.waveforms.values().all(Vec::is_empty)
    }
}

/// A room that ended, removed from the table.
#[derive(Debug)]
pub struct Ended {
    /// The room.
    pub room: RoomId,
    /// Its subject, if one was supplied.
    pub subject: Option<Subject>,
    /// What it still held.
    pub data: Taken,
}

/// Why something was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// `fhir.max_rooms` rooms are already kept.
    Rooms,
    /// The room already keeps `fhir.max_measurements_per_room` measurements.
    Measurements,
    /// An ECG chunk does not fit in `fhir.max_waveform_bytes_per_room`.
    WaveformBytes,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Rooms => "max_rooms",
            Refusal::Measurements => "max_measurements_per_room",
            Refusal::WaveformBytes => "max_waveform_bytes_per_room",
        }
    }
}

/// Figures of the table, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Rooms kept.
    pub rooms: u64,
    /// Measurements kept.
    pub measurements: u64,
    /// Waveform chunks kept.
    pub chunks: u64,
}

/// The table of kept consultations.
#[derive(Debug)]
pub struct Records {
    rooms: HashMap<RoomId, RoomRecord>,
    max_rooms: usize,
    max_measurements: usize,
    excerpt_us: u64,
    max_waveform_bytes: usize,
    grace: Duration,
}

#[derive(Debug)]
struct RoomRecord {
    subject: Option<Subject>,
    data: Taken,
    /// Excerpts being kept (moved into `data.waveforms` when taken).
    excerpts: BTreeMap<ChannelKey, VecDeque<Chunk>>,
    /// Bytes of samples in `excerpts`.
    excerpt_bytes: usize,
    created: Instant,
    seen_live: bool,
    idle_since: Option<Instant>,
}

impl RoomRecord {
    fn new(now: Instant) -> Self {
        RoomRecord {
            subject: None,
            data: Taken::default(),
            excerpts: BTreeMap::new(),
            excerpt_bytes: 0,
            created: now,
            seen_live: false,
            idle_since: None,
        }
    }

    fn take(&mut self) -> Taken {
        let mut data = Taken {
            channels: self.data.channels.clone(),
            readings: std::mem::take(&mut self.data.readings),
            waveforms: BTreeMap::new(),
        };
        self.excerpt_bytes = 0;
        for (key, chunks) in &mut self.excerpts {
            if !chunks.is_empty() {
                data.waveforms
                    .insert(key.clone(), chunks.drain(..).collect());
            }
        }
        data
    }
}

impl Records {
    /// An empty table with the `[fhir]` bounds; a room is over after `grace` without anyone.
    pub fn new(
        max_rooms: usize,
        max_measurements: usize,
        excerpt: Duration,
        grace: Duration,
    ) -> Self {
        Records {
            rooms: HashMap::new(),
            max_rooms,
            max_measurements,
            excerpt_us: excerpt.as_micros() as u64,
            max_waveform_bytes: DEFAULT_MAX_WAVEFORM_BYTES,
            grace,
        }
    }

    /// Bounds the ECG samples kept per room to `bytes` (all channels together).
    pub fn with_max_waveform_bytes(mut self, bytes: usize) -> Self {
        self.max_waveform_bytes = bytes;
        self
    }

    /// Keeps what an export needs of a delivered telemetry frame: declarations, measurements,
    /// ECG chunks. Other frames are ignored.
    pub fn on_delivered(
        &mut self,
        room: &RoomId,
        d: &Delivered,
        now: Instant,
    ) -> Result<(), Refusal> {
        let keep = matches!(
            d.frame,
            Some(
                delivered::Frame::Channel(_)
                    | delivered::Frame::Measurement(_)
                    | delivered::Frame::Waveform(_)
            )
        );
        if !keep {
            return Ok(());
        }
        let max_measurements = self.max_measurements;
        let excerpt_us = self.excerpt_us;
        let max_bytes = self.max_waveform_bytes;
        let r = self.entry(room, now)?;
        // A frame from a connected kiosk: the room is live now.
        r.seen_live = true;
        r.idle_since = None;
        let key = (d.source.clone(), d.channel_id);
        let time_us = capture_time(d);
        match &d.frame {
            Some(delivered::Frame::Channel(decl)) => {
                r.data.channels.insert(key, decl.clone());
            }
            Some(delivered::Frame::Measurement(m)) => {
                if r.data.readings.len() >= max_measurements {
                    return Err(Refusal::Measurements);
                }
                r.data.readings.push(Reading {
                    source: d.source.clone(),
                    time_us,
                    measurement: m.clone(),
                });
            }
            Some(delivered::Frame::Waveform(w)) => {
                let is_ecg = r
                    .data
                    .channels
                    .get(&key)
                    .is_some_and(|c| c.device_kind == DeviceKind::Ecg as i32);
                if !is_ecg {
                    return Ok(());
                }
                let size = chunk_bytes(w);
                if size > max_bytes {
                    return Err(Refusal::WaveformBytes);
                }
                let chunks = r.excerpts.entry(key).or_default();
                chunks.push_back(Chunk {
                    time_us,
                    chunk: w.clone(),
                });
                r.excerpt_bytes += size;
                // The most recent `excerpt` of signal; the chunk count is bounded too (at
                // least 1 ms per chunk), whatever times a kiosk claims; and the room's bytes:
                // this channel's oldest chunks make room for the new one.
                let max_chunks = (excerpt_us / 1000).max(1) as usize;
                while chunks.len() > max_chunks
                    || r.excerpt_bytes > max_bytes && chunks.len() > 1
                    || chunks
                        .front()
                        .is_some_and(|f| time_us.saturating_sub(f.time_us) > excerpt_us)
                {
                    if let Some(old) = chunks.pop_front() {
                        r.excerpt_bytes -= chunk_bytes(&old.chunk);
                    }
                }
                if r.excerpt_bytes > max_bytes {
                    // Other channels of the room hold the bytes: this chunk is refused.
                    if let Some(new) = chunks.pop_back() {
                        r.excerpt_bytes -= chunk_bytes(&new.chunk);
                    }
                    return Err(Refusal::WaveformBytes);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sets the subject of `room` (kept until the room ends).
    pub fn set_subject(
        &mut self,
        room: &RoomId,
        subject: Subject,
        now: Instant,
    ) -> Result<(), Refusal> {
        self.entry(room, now)?.subject = Some(subject);
        Ok(())
    }

    /// The subject of `room`, if supplied.
    pub fn subject(&self, room: &RoomId) -> Option<&Subject> {
        self.rooms.get(room).and_then(|r| r.subject.as_ref())
    }

    /// Takes the measurements and excerpts kept for `room` (the declarations and the subject
    /// stay, for what comes next).
    pub fn take(&mut self, room: &RoomId) -> Taken {
        self.rooms
            .get_mut(room)
            .map(RoomRecord::take)
            .unwrap_or_default()
    }

    /// Puts back data an export could not write (the outbox failed): nothing is lost, bounds
    /// permitting.
    pub fn put_back(&mut self, room: &RoomId, data: Taken, now: Instant) {
        let max = self.max_measurements;
        let max_bytes = self.max_waveform_bytes;
        let Ok(r) = self.entry(room, now) else {
            return;
        };
        let mut readings = data.readings;
        readings.append(&mut r.data.readings);
        readings.truncate(max);
        r.data.readings = readings;
        for (key, chunks) in data.waveforms {
            let kept = r.excerpts.entry(key).or_default();
            for c in chunks.into_iter().rev() {
                let size = chunk_bytes(&c.chunk);
                if r.excerpt_bytes + size > max_bytes {
                    break;
                }
                r.excerpt_bytes += size;
                kept.push_front(c);
            }
        }
    }

    /// Checks which rooms ended: a room seen live that has not been live (`is_live`) for the
    /// grace is removed and returned; a room given a subject that never became live is
    /// dropped after [`UNUSED_SUBJECT_TTL`].
    pub fn tick(&mut self, now: Instant, is_live: impl Fn(&RoomId) -> bool) -> Vec<Ended> {
        let grace = self.grace;
        let mut over = Vec::new();
        for (room, r) in &mut self.rooms {
            if is_live(room) {
                r.seen_live = true;
                r.idle_since = None;
            } else if r.seen_live {
                let since = *r.idle_since.get_or_insert(now);
                if now.duration_since(since) >= grace {
                    over.push(room.clone());
                }
            } else if now.duration_since(r.created) >= UNUSED_SUBJECT_TTL {
                over.push(room.clone());
            }
        }
        over.into_iter()
            .filter_map(|room| self.remove(&room))
            .collect()
    }

    /// Removes `room` (shutdown, or tests).
    pub fn remove(&mut self, room: &RoomId) -> Option<Ended> {
        let mut r = self.rooms.remove(room)?;
        let data = r.take();
        Some(Ended {
            room: room.clone(),
            subject: r.subject,
            data,
        })
    }

    /// Rooms kept now.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().cloned().collect()
    }

    /// What is held now.
    pub fn held(&self) -> Held {
        let mut h = Held {
            rooms: self.rooms.len() as u64,
            ..Held::default()
        };
        for r in self.rooms.values() {
            h.measurements += r.data.readings.len() as u64;
            h.chunks += r.excerpts.values().map(|c| c.len() as u64).sum::<u64>();
        }
        h
    }

    fn entry(&mut self, room: &RoomId, now: Instant) -> Result<&mut RoomRecord, Refusal> {
        if !self.rooms.contains_key(room) && self.rooms.len() >= self.max_rooms {
            return Err(Refusal::Rooms);
        }
        Ok(self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| RoomRecord::new(now)))
    }
}

/// What a kept chunk weighs: its samples (4 bytes each) and its fixed part.
fn chunk_bytes(w: &WaveformChunk) -> usize {
    std::mem::size_of::<Chunk>() + w.samples.len() * std::mem::size_of::<i32>()
}

/// The capture time of a delivered frame on the server's clock: the aligned time a kiosk
/// claims when it lies within [`MAX_CAPTURE_AGE`] before and [`MAX_CAPTURE_AHEAD`] after the
/// reception time, else the reception time (a kiosk cannot date a measurement in year 30 000).
pub fn capture_time(d: &Delivered) -> u64 {
    let claimed = d.aligned_time_us;
    let received = d.server_time_us;
    if received == 0 {
        // No reception time (frames made in tests): the claim, range-checked by the export.
        return claimed;
    }
    let low = received.saturating_sub(MAX_CAPTURE_AGE.as_micros() as u64);
    let high = received.saturating_add(MAX_CAPTURE_AHEAD.as_micros() as u64);
    if claimed != 0 && (low..=high).contains(&claimed) {
        claimed
    } else {
        received
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cabine_proto::telemetry::ChannelKind;

    fn room(s: &str) -> RoomId {
        RoomId::parse(s).unwrap()
    }

    fn frame(channel_id: u32, time_us: u64, f: delivered::Frame) -> Delivered {
        Delivered {
            source: "kiosk-1".into(),
            channel_id,
            aligned_time_us: time_us,
            frame: Some(f),
            ..Default::default()
        }
    }

    fn ecg_decl() -> delivered::Frame {
        delivered::Frame::Channel(ChannelDecl {
            channel_id: 3,
            kind: ChannelKind::Waveform as i32,
            device_kind: DeviceKind::Ecg as i32,
            ..Default::default()
        })
    }

    fn chunk(seq: u64) -> delivered::Frame {
        delivered::Frame::Waveform(WaveformChunk {
            channel_id: 3,
            seq,
            ..Default::default()
        })
    }

    #[test]
    fn bounded_per_room_and_in_rooms() {
        let now = Instant::now();
        let mut r = Records::new(1, 2, Duration::from_secs(1), Duration::from_secs(5));
        let m = || delivered::Frame::Measurement(Measurement::default());
        assert_eq!(r.on_delivered(&room("a"), &frame(1, 1, m()), now), Ok(()));
        assert_eq!(r.on_delivered(&room("a"), &frame(1, 2, m()), now), Ok(()));
        assert_eq!(
            r.on_delivered(&room("a"), &frame(1, 3, m()), now),
            Err(Refusal::Measurements)
        );
        assert_eq!(
            r.on_delivered(&room("b"), &frame(1, 1, m()), now),
            Err(Refusal::Rooms)
        );
        assert_eq!(
            r.set_subject(&room("b"), Subject::parse("Patient/1").unwrap(), now),
            Err(Refusal::Rooms)
        );
        assert_eq!(r.held().measurements, 2);
        let taken = r.take(&room("a"));
        assert_eq!(taken.readings.len(), 2);
        assert_eq!(r.held().measurements, 0, "nothing kept after an export");
        assert!(r.take(&room("a")).is_empty());
    }

    #[test]
    fn ecg_excerpts_keep_the_latest_span_and_other_waveforms_nothing() {
        let now = Instant::now();
        let mut r = Records::new(4, 10, Duration::from_millis(100), Duration::from_secs(5));
        let a = room("a");
        // Before the declaration, a chunk's channel is unknown: not kept.
        r.on_delivered(&a, &frame(3, 0, chunk(1)), now).unwrap();
        assert_eq!(r.held().chunks, 0);
        r.on_delivered(&a, &frame(3, 0, ecg_decl()), now).unwrap();
        for seq in 1..=10u64 {
            r.on_delivered(&a, &frame(3, seq * 40_000, chunk(seq)), now)
                .unwrap();
        }
        let taken = r.take(&a);
        let seqs: Vec<u64> = taken.waveforms[&("kiosk-1".to_owned(), 3)]
            .iter()
            .map(|c| c.chunk.seq)
            .collect();
        assert_eq!(seqs, vec![8, 9, 10], "the last 100 ms");
    }

    #[test]
    fn a_room_ends_after_the_grace_without_anyone() {
        let t0 = Instant::now();
        let mut r = Records::new(4, 10, Duration::from_secs(1), Duration::from_secs(5));
        let a = room("a");
        r.set_subject(&a, Subject::parse("Patient/9").unwrap(), t0)
            .unwrap();
        // Never live yet (the doctor took the ticket, the kiosk is joining): kept.
        assert!(r.tick(t0 + Duration::from_secs(60), |_| false).is_empty());
        assert!(r.tick(t0 + Duration::from_secs(61), |_| true).is_empty());
        assert!(r.tick(t0 + Duration::from_secs(62), |_| false).is_empty());
        assert!(r.tick(t0 + Duration::from_secs(64), |_| true).is_empty());
        assert!(r.tick(t0 + Duration::from_secs(65), |_| false).is_empty());
        let ended = r.tick(t0 + Duration::from_secs(70), |_| false);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].subject.as_ref().unwrap().as_str(), "Patient/9");
        assert_eq!(r.held().rooms, 0);
        // A subject for a room that never becomes live is forgotten eventually.
        r.set_subject(&a, Subject::parse("Patient/9").unwrap(), t0)
            .unwrap();
        assert_eq!(r.tick(t0 + UNUSED_SUBJECT_TTL, |_| false).len(), 1);
    }

    #[test]
    fn claimed_capture_times_outside_the_window_fall_back_to_the_reception_time() {
        let now_us = 1_795_000_000_000_000u64;
        let at = |claimed: u64| {
            capture_time(&Delivered {
                aligned_time_us: claimed,
                server_time_us: now_us,
                ..Default::default()
            })
        };
        assert_eq!(at(now_us - 5_000_000), now_us - 5_000_000);
        assert_eq!(at(now_us + 3_600_000_000), now_us + 3_600_000_000);
        for wild in [0, 1, u64::MAX, u64::MAX / 2, now_us * 100, now_us / 2] {
            assert_eq!(at(wild), now_us, "claimed {wild}");
        }
    }

    #[test]
    fn ecg_bytes_are_bounded_per_room() {
        let now = Instant::now();
        let per = chunk_bytes(&WaveformChunk {
            samples: vec![0; 100],
            ..Default::default()
        });
        let mut r = Records::new(4, 10, Duration::from_secs(60), Duration::from_secs(5))
            .with_max_waveform_bytes(3 * per);
        let a = room("a");
        let big = |channel_id: u32, seq: u64, n: usize| {
            delivered::Frame::Waveform(WaveformChunk {
                channel_id,
                seq,
                samples: vec![1; n],
                ..Default::default()
            })
        };
        r.on_delivered(&a, &frame(3, 0, ecg_decl()), now).unwrap();
        let mut decl4 = ecg_decl();
        if let delivered::Frame::Channel(c) = &mut decl4 {
            c.channel_id = 4;
        }
        r.on_delivered(&a, &frame(4, 0, decl4), now).unwrap();
        // A chunk bigger than the bound: refused.
        assert_eq!(
            r.on_delivered(&a, &frame(3, 1, big(3, 1, 10_000)), now),
            Err(Refusal::WaveformBytes)
        );
        // One channel: its oldest chunks make room, the latest three stay.
        for seq in 1..=10u64 {
            r.on_delivered(&a, &frame(3, seq, big(3, seq, 100)), now)
                .unwrap();
        }
        assert_eq!(r.held().chunks, 3);
        // Another channel cannot push out the first: refused.
        assert_eq!(
            r.on_delivered(&a, &frame(4, 11, big(4, 1, 100)), now),
            Err(Refusal::WaveformBytes)
        );
        assert_eq!(r.held().chunks, 3);
        let taken = r.take(&a);
        let seqs: Vec<u64> = taken.waveforms[&("kiosk-1".to_owned(), 3)]
            .iter()
            .map(|c| c.chunk.seq)
            .collect();
        assert_eq!(seqs, vec![8, 9, 10]);
        // Taken: the bytes are free again.
        r.on_delivered(&a, &frame(4, 12, big(4, 2, 100)), now)
            .unwrap();
        assert_eq!(r.held().chunks, 1);
    }
}
