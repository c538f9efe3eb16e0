//! Synthetic media: what each stream sends and when, and the payloads.
//!
//! Video is VP8 as a browser sends it: a payload descriptor (RFC 7741) with a 15-bit picture id
//! on every packet, the VP8 payload header on the first packet of a frame (keyframes carry the
//! start code and the 1280×720 size), frames split into packets of about 1,200 bytes, 30 frames/s
//! at ~1.5 Mbit/s, a keyframe every 3 s or when asked (PLI/FIR). Audio is one packet every 20 ms:
//! Opus voice at 32 kbit/s, the stethoscope at 64 kbit/s. Every payload ends with a [`Trailer`].

use std::time::{Duration, Instant};

use serde::Serialize;

/// What a stream carries; the label is the msid track id the server classifies it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum StreamClass {
    /// A room camera (kiosk or doctor), VP8 ~1.5 Mbit/s.
    Camera,
    /// A device camera (otoscope, dermatoscope), VP8 ~1.5 Mbit/s.
    DeviceCamera,
    /// A microphone, Opus 20 ms at 32 kbit/s.
    Microphone,
    /// The stethoscope, Opus 20 ms at 64 kbit/s.
    Stethoscope,
}

impl StreamClass {
    /// Every class, in report order.
    pub const ALL: [StreamClass; 4] = [
        StreamClass::Camera,
        StreamClass::DeviceCamera,
        StreamClass::Microphone,
        StreamClass::Stethoscope,
    ];

    /// The msid track label.
    pub fn label(self) -> &'static str {
        match self {
            StreamClass::Camera => "room-camera",
            StreamClass::DeviceCamera => "device-camera",
            StreamClass::Microphone => "microphone",
            StreamClass::Stethoscope => "stethoscope",
        }
    }

    /// Whether it is video.
    pub fn is_video(self) -> bool {
        matches!(self, StreamClass::Camera | StreamClass::DeviceCamera)
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        if self.is_video() {
            90_000
        } else {
            48_000
        }
    }
}

/// Bytes of the trailer at the end of every payload.
pub const TRAILER_LEN: usize = 20;
const MAGIC: u32 = 0x4c47_4231; // "LGB1"

/// What a payload carries for the receiver's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Generator-wide stream id.
    pub stream: u32,
    /// Per-stream sequence number (the generator's own, untouched by the SFU's rewriting).
    pub seq: u32,
    /// Send time, nanoseconds on the shared clock.
    pub sent_ns: u64,
}

impl Trailer {
    /// Writes the trailer into the last [`TRAILER_LEN`] bytes of `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        let n = buf.len();
        debug_assert!(n >= TRAILER_LEN);
        let t = &mut buf[n - TRAILER_LEN..];
        t[0..4].copy_from_slice(&self.stream.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
        t[16..20].copy_from_slice(&MAGIC.to_be_bytes());
    }

    /// Reads the trailer from the end of a payload (or of a whole plain RTP datagram).
    pub fn read(buf: &[u8]) -> Option<Trailer> {
        let n = buf.len();
        if n < TRAILER_LEN {
            return None;
        }
        let t = &buf[n - TRAILER_LEN..];
        let word = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&t[r]);
            u32::from_be_bytes(b)
        };
        if word(16..20) != MAGIC {
            return None;
        }
        let mut ns = [0u8; 8];
        ns.copy_from_slice(&t[8..16]);
        Some(Trailer {
            stream: word(0..4),
            seq: word(4..8),
            sent_ns: u64::from_be_bytes(ns),
        })
    }
}

/// One RTP packet to send.
#[derive(Debug, Clone)]
pub struct Packet {
    /// RTP timestamp.
    pub rtp_ts: u32,
    /// RTP sequence number (extended).
    pub rtp_seq: u64,
    /// Marker bit (last packet of a video frame).
    pub marker: bool,
    /// The payload, trailer included (the send time is filled in by [`Source::stamp`]).
    pub payload: Vec<u8>,
}

/// Video parameters.
pub const VIDEO_BITRATE: u64 = 1_500_000;
/// Video frame rate.
pub const VIDEO_FPS: u64 = 30;
/// A keyframe every this many frames (3 s).
pub const KEYFRAME_EVERY: u64 = 90;
/// Largest RTP payload for video.
pub const VIDEO_MTU_PAYLOAD: usize = 1_200;
/// Audio packet duration.
pub const AUDIO_PTIME: Duration = Duration::from_millis(20);

/// One outgoing stream's schedule and state.
#[derive(Debug, Clone)]
pub struct Source {
    /// Generator-wide id.
    pub stream: u32,
    /// What it carries.
    pub class: StreamClass,
    /// Next time packets are due.
    pub next: Instant,
    seq: u32,
    rtp_seq: u64,
    frame: u64,
    picture_id: u16,
    force_key: bool,
    rtp_base: u32,
}

impl Source {
    /// A stream starting at `start` (its first frame or packet is due then).
    pub fn new(stream: u32, class: StreamClass, start: Instant) -> Self {
        Source {
            stream,
            class,
            next: start,
            seq: 0,
            rtp_seq: u64::from(stream.wrapping_mul(7919) % 20_000) + 1,
            frame: 0,
            picture_id: (stream.wrapping_mul(31) & 0x7fff) as u16,
            force_key: false,
            rtp_base: stream.wrapping_mul(2_654_435_761),
        }
    }

    /// Ask for a keyframe on the next frame (PLI/FIR received).
    pub fn request_keyframe(&mut self) {
        self.force_key = true;
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u32 {
        self.seq
    }

    /// The packets of the next frame (video) or packet (audio), advancing the schedule. The
    /// trailers carry `now` as send time.
    pub fn next_packets(&mut self, now: Instant, out: &mut Vec<Packet>) {
        if self.class.is_video() {
            self.video_frame(now, out);
        } else {
            self.audio_packet(now, out);
        }
    }

    fn video_frame(&mut self, now: Instant, out: &mut Vec<Packet>) {
        let key = self.frame.is_multiple_of(KEYFRAME_EVERY) || self.force_key;
        self.force_key = false;
        let avg = (VIDEO_BITRATE / 8 / VIDEO_FPS) as usize;
        let key_size = avg * 3;
        let delta_size = (avg * KEYFRAME_EVERY as usize - key_size) / (KEYFRAME_EVERY as usize - 1);
        let size = if key { key_size } else { delta_size };
        let per = VIDEO_MTU_PAYLOAD - 4;
        let n = size.div_ceil(per);
        let chunk = size / n;
        let ts = self
            .rtp_base
            .wrapping_add((self.frame * 90_000 / VIDEO_FPS) as u32);
        for i in 0..n {
            let body = if i + 1 == n {
                size - chunk * (n - 1)
            } else {
                chunk
            };
            let mut p = vec![0u8; 4 + body.max(TRAILER_LEN + 10)];
            // VP8 payload descriptor: X, S on the first packet, PartID 0; I; M (15-bit picture id).
            p[0] = if i == 0 { 0x90 } else { 0x80 };
            p[1] = 0x80;
            p[2] = 0x80 | (self.picture_id >> 8) as u8;
            p[3] = (self.picture_id & 0xff) as u8;
            if i == 0 {
                // VP8 payload header: frame tag (P bit clear on keyframes, show_frame set).
                let first_part = 1000u32;
                let tag = (if key { 0 } else { 1 }) | (1 << 4) | (first_part << 5);
                p[4] = (tag & 0xff) as u8;
                p[5] = ((tag >> 8) & 0xff) as u8;
                p[6] = ((tag >> 16) & 0xff) as u8;
                if key {
                    p[7..10].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                    p[10..12].copy_from_slice(&1280u16.to_le_bytes());
                    p[12..14].copy_from_slice(&720u16.to_le_bytes());
                }
            }
            self.push(now, ts, i + 1 == n, p, out);
        }
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        self.frame += 1;
        let interval = Duration::from_nanos(1_000_000_000 / VIDEO_FPS);
        self.next += interval;
        if self.next + interval < now {
            // Fell far behind (a stalled thread): skip ahead instead of bursting.
            self.next = now + interval;
        }
    }

    fn audio_packet(&mut self, now: Instant, out: &mut Vec<Packet>) {
        let bitrate = match self.class {
            StreamClass::Stethoscope => 64_000,
            _ => 32_000,
        };
        let size = (bitrate / 8 / 50) as usize;
        let mut p = vec![0u8; size.max(TRAILER_LEN + 1)];
        // Opus TOC: CELT fullband 20 ms (config 31), mono, one frame; voice uses SILK-ish config.
        p[0] = if self.class == StreamClass::Stethoscope {
            0xf8
        } else {
            0x78
        };
        let ts = self.rtp_base.wrapping_add((self.frame * 960) as u32);
        self.frame += 1;
        self.push(now, ts, false, p, out);
        self.next += AUDIO_PTIME;
        if self.next + AUDIO_PTIME < now {
            self.next = now + AUDIO_PTIME;
        }
    }

    fn push(&mut self, now: Instant, ts: u32, marker: bool, mut p: Vec<u8>, out: &mut Vec<Packet>) {
        Trailer {
            stream: self.stream,
            seq: self.seq,
            sent_ns: crate::clock::nanos(now),
        }
        .write(&mut p);
        self.seq = self.seq.wrapping_add(1);
        out.push(Packet {
            rtp_ts: ts,
            rtp_seq: self.rtp_seq,
            marker,
            payload: p,
        });
        self.rtp_seq += 1;
    }
}

/// Builds a plain RTP datagram (12-byte header, no extensions) around a packet, for the relay.
pub fn plain_rtp(pt: u8, ssrc: u32, p: &Packet) -> Vec<u8> {
    let mut d = Vec::with_capacity(12 + p.payload.len());
    d.push(0x80);
    d.push(pt | if p.marker { 0x80 } else { 0 });
    d.extend_from_slice(&(p.rtp_seq as u16).to_be_bytes());
    d.extend_from_slice(&p.rtp_ts.to_be_bytes());
    d.extend_from_slice(&ssrc.to_be_bytes());
    d.extend_from_slice(&p.payload);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use str0m::rtp::Vp8Descriptor;

    #[test]
    fn trailer_round_trips() {
        let mut b = vec![0u8; 64];
        let t = Trailer {
            stream: 7,
            seq: 99,
            sent_ns: 123_456_789,
        };
        t.write(&mut b);
        assert_eq!(Trailer::read(&b), Some(t));
        assert_eq!(Trailer::read(&b[..10]), None);
    }

    #[test]
    fn video_is_valid_vp8_with_keyframes_at_the_right_rate() {
        let t0 = Instant::now();
        let mut s = Source::new(1, StreamClass::Camera, t0);
        let mut bytes = 0usize;
        let mut keys = 0;
        let mut now = t0;
        for _ in 0..KEYFRAME_EVERY {
            let mut out = Vec::new();
            s.next_packets(now, &mut out);
            now = s.next;
            assert!(out.last().unwrap().marker);
            for (i, p) in out.iter().enumerate() {
                assert!(p.payload.len() <= VIDEO_MTU_PAYLOAD);
                let d = Vp8Descriptor::parse(&p.payload).expect("descriptor");
                assert!(d.picture_id().is_some());
                if i == 0 && d.starts_keyframe(&p.payload) {
                    keys += 1;
                }
                bytes += p.payload.len();
                assert!(Trailer::read(&p.payload).is_some());
            }
        }
        assert_eq!(keys, 1);
        let bps = bytes as f64 * 8.0 / 3.0;
        assert!((1_300_000.0..1_700_000.0).contains(&bps), "{bps}");
        s.request_keyframe();
        let mut out = Vec::new();
        s.next_packets(now, &mut out);
        let d = Vp8Descriptor::parse(&out[0].payload).unwrap();
        assert!(d.starts_keyframe(&out[0].payload));
    }
}
