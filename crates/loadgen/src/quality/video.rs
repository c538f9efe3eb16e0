//! Video delivery of one received VP8 camera: which frames a decoder could show and when,
//! freezes, delivered resolution and frame rate.
//!
//! Computed after the run from every packet's arrival time (no decoding):
//!
//! - Packets are grouped into frames by RTP timestamp. A frame is *complete* once its first
//!   packet (VP8 descriptor S = 1, partition 0), its marker packet and every sequence number
//!   between them have arrived (NACK retransmissions included); it completes at the latest of
//!   those arrivals.
//! - Frames are decoded in timestamp order. A keyframe is always decodable. Another frame is
//!   decodable while the reference chain holds: for a base temporal layer frame (TID 0), its
//!   TL0PICIDX follows the last decoded base frame's by one (no base frame missed); for a TID > 0
//!   frame, it names the last decoded base frame; without temporal fields, its picture id follows
//!   the last decoded frame's. A base frame that cannot be decoded breaks the chain until the next
//!   keyframe (a TID > 0 one breaks nothing: with two temporal layers nothing refers to it).
//! - A decodable frame is shown when it completes, not before the frame shown before it.
//! - A freeze is a gap between shown frames longer than `max(3 × the median interval, median
//!   interval + 150 ms)` (the WebRTC statistics' definition), counting the window's edges.
//! - The resolution shown is the one of the last decoded keyframe (VP8 keyframe header).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::audio::Unwrap;
use super::Record;

/// One camera's delivery over the measurement window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VideoStats {
    /// Frames shown in the window.
    pub frames: u64,
    /// Frames shown per second of window.
    pub fps: f64,
    /// Frames that arrived complete but could not be decoded (a broken reference chain).
    pub undecodable: u64,
    /// Frames seen in part and never completed.
    pub incomplete: u64,
    /// The resolution most frames were shown at (`None` before any keyframe).
    pub width: Option<u16>,
    /// See `width`.
    pub height: Option<u16>,
    /// Frames shown at each resolution, largest first.
    pub resolutions: Vec<Resolution>,
    /// Freezes in the window.
    pub freezes: u64,
    /// Total frozen time, seconds per minute of window.
    pub freeze_s_per_min: f64,
    /// The longest freeze, ms (0 without one).
    pub longest_freeze_ms: f64,
    /// The longest gap between shown frames (or a window edge), ms, freeze or not.
    pub longest_gap_ms: f64,
    /// Keyframes the receiver asked for over the whole run (set by the harness, see
    /// [`super::pli`]).
    pub keyframe_requests: u64,
    /// Seconds into the window when the camera first degraded: a frame shown below the largest
    /// resolution of the run, or the start of a freeze. `None` if it never did.
    pub first_degraded_s: Option<f64>,
}

/// A resolution and how many shown frames had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// Frames shown at it.
    pub frames: u64,
}

/// Every frame shown (RTP timestamp, when), for latency.
pub type Shown = Vec<(u32, Duration)>;

/// Analyses one VP8 track's packets over `window`. `None` without a packet.
pub fn analyse(packets: &[Record], window: (Duration, Duration)) -> Option<(VideoStats, Shown)> {
    if packets.is_empty() {
        return None;
    }
    let frames = assemble(packets);
    let mut s = VideoStats::default();
    let mut shown: Vec<(u32, Duration, (u16, u16))> = Vec::new();
    let mut chain = false;
    let mut last_tl0: Option<u8> = None;
    let mut last_pid: Option<u16> = None;
    let mut size: Option<(u16, u16)> = None;
    let mut last_shown = Duration::ZERO;
    for f in frames.values() {
        let Some(done) = f.complete_at() else {
            if f.at >= window.0 && f.at < window.1 {
                s.incomplete += 1;
            }
            continue;
        };
        let d = f.descriptor;
        let refs = match (d.tid, d.tl0, last_tl0) {
            (Some(0), Some(t), Some(l)) => t == l.wrapping_add(1),
            (Some(_), Some(t), Some(l)) => t == l,
            _ => match (d.pid, last_pid) {
                (Some(p), Some(l)) => p == l.wrapping_add(1) & 0x7fff,
                _ => true,
            },
        };
        let base = d.tid.unwrap_or(0) == 0;
        if f.key || (chain && refs) {
            chain = true;
            if f.key {
                size = f.size.or(size);
            }
            if base {
                last_tl0 = d.tl0;
            }
            last_pid = d.pid;
            let at = done.max(last_shown);
            last_shown = at;
            if let Some(sz) = size {
                shown.push((f.ts, at, sz));
            }
        } else {
            if done >= window.0 && done < window.1 {
                s.undecodable += 1;
            }
            if base {
                chain = false;
            }
        }
    }
    let largest = shown
        .iter()
        .map(|f| f.2)
        .max_by_key(|(w, h)| u32::from(*w) * u32::from(*h));
    let in_window: Vec<&(u32, Duration, (u16, u16))> = shown
        .iter()
        .filter(|f| f.1 >= window.0 && f.1 < window.1)
        .collect();
    let span = window.1.saturating_sub(window.0).as_secs_f64();
    s.frames = in_window.len() as u64;
    s.fps = if span > 0.0 {
        s.frames as f64 / span
    } else {
        0.0
    };
    let mut counts: BTreeMap<(u16, u16), u64> = BTreeMap::new();
    for f in &in_window {
        *counts.entry(f.2).or_default() += 1;
    }
    s.resolutions = counts
        .iter()
        .map(|(&(width, height), &frames)| Resolution {
            width,
            height,
            frames,
        })
        .collect();
    s.resolutions
        .sort_by_key(|r| std::cmp::Reverse(u32::from(r.width) * u32::from(r.height)));
    if let Some(((w, h), _)) = counts.iter().max_by_key(|(_, n)| **n) {
        s.width = Some(*w);
        s.height = Some(*h);
    }
    let mut degraded: Option<Duration> = in_window
        .iter()
        .find(|f| Some(f.2) != largest)
        .map(|f| f.1 - window.0);
    // Gaps, window edges included.
    let mut times: Vec<Duration> = vec![window.0];
    times.extend(in_window.iter().map(|f| f.1));
    times.push(window.1);
    let gaps: Vec<(Duration, Duration)> = times.windows(2).map(|w| (w[0], w[1] - w[0])).collect();
    // Intervals between shown frames (the edges excluded); none with fewer than two frames.
    let mut inner: Vec<Duration> = gaps
        .get(1..gaps.len().saturating_sub(1))
        .unwrap_or_default()
        .iter()
        .map(|g| g.1)
        .collect();
    inner.sort_unstable();
    let median = inner
        .get(inner.len() / 2)
        .copied()
        .unwrap_or(Duration::from_millis(40));
    let threshold = (median * 3).max(median + Duration::from_millis(150));
    let mut frozen = Duration::ZERO;
    for &(start, gap) in &gaps {
        s.longest_gap_ms = s.longest_gap_ms.max(ms(gap));
        if gap > threshold {
            s.freezes += 1;
            frozen += gap;
            s.longest_freeze_ms = s.longest_freeze_ms.max(ms(gap));
            let at = start - window.0;
            degraded = Some(degraded.map_or(at, |d| d.min(at)));
        }
    }
    if span > 0.0 {
        s.freeze_s_per_min = frozen.as_secs_f64() * 60.0 / span;
    }
    s.first_degraded_s = degraded.map(|d| d.as_secs_f64());
    Some((s, in_window.iter().map(|f| (f.0, f.1)).collect()))
}

/// The fields of a VP8 payload descriptor (RFC 7741 §4.2) the decodability model needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// S: the packet starts a partition.
    pub start: bool,
    /// PID: the partition index.
    pub partition: u8,
    /// The 15-bit picture id (a 7-bit one as is).
    pub pid: Option<u16>,
    /// TL0PICIDX.
    pub tl0: Option<u8>,
    /// The temporal layer.
    pub tid: Option<u8>,
    /// Length of the descriptor in bytes.
    pub len: usize,
}

impl Descriptor {
    /// Parses the descriptor at the start of a VP8 RTP payload; `None` if it is cut short.
    pub fn parse(p: &[u8]) -> Option<Descriptor> {
        let b0 = *p.first()?;
        let mut d = Descriptor {
            start: b0 & 0x10 != 0,
            partition: b0 & 0x07,
            ..Descriptor::default()
        };
        let mut i = 1;
        if b0 & 0x80 != 0 {
            let x = *p.get(i)?;
            i += 1;
            if x & 0x80 != 0 {
                let b = *p.get(i)?;
                if b & 0x80 != 0 {
                    d.pid = Some((u16::from(b & 0x7f) << 8) | u16::from(*p.get(i + 1)?));
                    i += 2;
                } else {
                    d.pid = Some(u16::from(b));
                    i += 1;
                }
            }
            if x & 0x40 != 0 {
                d.tl0 = Some(*p.get(i)?);
                i += 1;
            }
            if x & 0x30 != 0 {
                let b = *p.get(i)?;
                if x & 0x20 != 0 {
                    d.tid = Some(b >> 6);
                }
                i += 1;
            }
        }
        d.len = i;
        Some(d)
    }
}

/// Whether a frame's first packet (descriptor already skipped) starts a keyframe, and its size.
pub fn keyframe_size(vp8: &[u8]) -> (bool, Option<(u16, u16)>) {
    let Some(&b0) = vp8.first() else {
        return (false, None);
    };
    if b0 & 0x01 != 0 {
        return (false, None);
    }
    let size = match vp8.get(3..10) {
        Some(h) if h[0..3] == [0x9d, 0x01, 0x2a] => Some((
            u16::from_le_bytes([h[3], h[4]]) & 0x3fff,
            u16::from_le_bytes([h[5], h[6]]) & 0x3fff,
        )),
        _ => None,
    };
    (true, size)
}

/// The bytes of a VP8 payload the analysis reads: the descriptor (at most 6 bytes) and the
/// keyframe header (10 bytes).
pub const PREFIX: usize = 16;

struct Frame {
    ts: u32,
    /// The earliest arrival of any packet of the frame.
    at: Duration,
    descriptor: Descriptor,
    key: bool,
    size: Option<(u16, u16)>,
    first: Option<u16>,
    last: Option<u16>,
    /// Sequence number → earliest arrival.
    packets: BTreeMap<u16, Duration>,
}

impl Frame {
    fn complete_at(&self) -> Option<Duration> {
        let (first, last) = (self.first?, self.last?);
        let span = usize::from(last.wrapping_sub(first)) + 1;
        let mut done = Duration::ZERO;
        for k in 0..span {
            let seq = first.wrapping_add(k as u16);
            done = done.max(*self.packets.get(&seq)?);
        }
        Some(done)
    }
}

fn assemble(packets: &[Record]) -> BTreeMap<i64, Frame> {
    let mut unwrap = Unwrap::default();
    let mut frames: BTreeMap<i64, Frame> = BTreeMap::new();
    for p in packets {
        let ts = unwrap.extend(p.ts);
        let Some(d) = Descriptor::parse(&p.payload) else {
            continue;
        };
        let f = frames.entry(ts).or_insert_with(|| Frame {
            ts: p.ts,
            at: p.at,
            descriptor: d,
            key: false,
            size: None,
            first: None,
            last: None,
            packets: BTreeMap::new(),
        });
        f.at = f.at.min(p.at);
        let e = f.packets.entry(p.seq).or_insert(p.at);
        *e = (*e).min(p.at);
        if d.start && d.partition == 0 {
            f.first = Some(p.seq);
            f.descriptor = d;
            let (key, size) = keyframe_size(p.payload.get(d.len..).unwrap_or_default());
            f.key = key;
            f.size = size;
        }
        if p.marker {
            f.last = Some(p.seq);
        }
    }
    frames
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// A VP8 payload: descriptor with a 15-bit picture id, TL0PICIDX and TID, then (for a
    /// partition start) the payload header, a keyframe's with its size.
    fn payload(start: bool, pid: u16, tl0: u8, tid: u8, key: bool, size: (u16, u16)) -> Vec<u8> {
        let mut v = vec![
            0x80 | if start { 0x10 } else { 0 },
            0x80 | 0x40 | 0x20,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            tid << 6,
        ];
        if start {
            v.push(if key { 0x00 } else { 0x01 });
            v.extend([0, 0, 0x9d, 0x01, 0x2a]);
            v.extend(size.0.to_le_bytes());
            v.extend(size.1.to_le_bytes());
        } else {
            v.extend([0; 8]);
        }
        v
    }

    struct Cam {
        packets: Vec<Record>,
        seq: u16,
        pid: u16,
        tl0: u8,
    }

    impl Cam {
        fn new() -> Cam {
            Cam {
                packets: Vec::new(),
                seq: 65_530,
                pid: 32_760,
                tl0: 250,
            }
        }

        /// Frame `i` (40 ms apart, 2 packets), TID alternating 0/1, sent at 1000 + 40 i ms and
        /// arriving `delay` later (`None`: the second packet is lost).
        fn frame(&mut self, i: u64, key: bool, size: (u16, u16), delay: Option<u64>) {
            let tid = (i % 2) as u8;
            if tid == 0 && i > 0 {
                self.tl0 = self.tl0.wrapping_add(1);
            }
            let at = ms(1000 + i * 40 + delay.unwrap_or(10));
            let ts = 3_000_000_000u32.wrapping_add(i as u32 * 3600);
            for k in 0..2u16 {
                let seq = self.seq.wrapping_add(k);
                if k == 1 && delay.is_none() {
                    continue;
                }
                self.packets.push(Record {
                    at,
                    seq,
                    ts,
                    marker: k == 1,
                    pt: 96,
                    payload: payload(k == 0, self.pid, self.tl0, tid, key, size),
                });
            }
            self.seq = self.seq.wrapping_add(2);
            self.pid = (self.pid + 1) & 0x7fff;
        }
    }

    const VGA: (u16, u16) = (640, 480);
    const QVGA: (u16, u16) = (320, 240);

    #[test]
    fn descriptor_and_keyframe_header_parse() {
        let p = payload(true, 300, 7, 1, true, VGA);
        let d = Descriptor::parse(&p).expect("parses");
        assert_eq!(
            d,
            Descriptor {
                start: true,
                partition: 0,
                pid: Some(300),
                tl0: Some(7),
                tid: Some(1),
                len: 6
            }
        );
        assert_eq!(keyframe_size(&p[d.len..]), (true, Some(VGA)));
        assert_eq!(keyframe_size(&[0x01, 0, 0]), (false, None));
        assert!(Descriptor::parse(&p[..3]).is_none());
        assert!(p.len() <= PREFIX);
    }

    #[test]
    fn a_steady_stream_has_no_freeze() {
        let mut c = Cam::new();
        for i in 0..250 {
            c.frame(i, i == 0, VGA, Some(10));
        }
        // Frames shown at 1010 + 40 i ms; window [2000, 10000).
        let (s, shown) = analyse(&c.packets, (ms(2000), ms(10_000))).expect("packets");
        assert_eq!(s.frames, 200, "{s:?}");
        assert!((s.fps - 25.0).abs() < 1e-9);
        assert_eq!((s.width, s.height), (Some(640), Some(480)));
        assert_eq!((s.freezes, s.longest_freeze_ms), (0, 0.0));
        assert!((s.longest_gap_ms - 40.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.first_degraded_s, None);
        assert_eq!(shown.len(), 200);
    }

    #[test]
    fn a_lost_base_frame_freezes_until_the_next_keyframe() {
        let mut c = Cam::new();
        for i in 0..250 {
            // Frame 100 (TID 0) loses a packet; keyframe again at 150 (a PLI answered).
            // Frame 51 (TID 1) loses one too: nothing depends on it.
            let delay = if i == 100 || i == 51 { None } else { Some(10) };
            c.frame(i, i == 0 || i == 150, VGA, delay);
        }
        let (s, _) = analyse(&c.packets, (ms(2000), ms(10_000))).expect("packets");
        // Shown: 25..=99 except 51, then 150..=224.
        assert_eq!(s.incomplete, 2);
        assert_eq!(s.undecodable, 49, "101..=149 arrive but cannot be decoded");
        assert_eq!(s.frames, 75 - 1 + 75);
        assert_eq!(s.freezes, 1, "{s:?}");
        // Last shown 99 at 4970 ms, next 150 at 7010 ms.
        assert!((s.longest_freeze_ms - 2040.0).abs() < 1e-6, "{s:?}");
        assert!((s.freeze_s_per_min - 2.04 * 60.0 / 8.0).abs() < 1e-6);
        let degraded = s.first_degraded_s.expect("degraded");
        assert!((degraded - 2.97).abs() < 1e-6, "{degraded}");
    }

    #[test]
    fn a_window_without_a_shown_frame_is_one_freeze() {
        let mut c = Cam::new();
        for i in 0..10 {
            c.frame(i, i == 0, VGA, Some(10));
        }
        let (s, shown) = analyse(&c.packets, (ms(3000), ms(5000))).expect("packets");
        assert!(shown.is_empty());
        assert_eq!((s.frames, s.freezes), (0, 1));
        assert_eq!(s.longest_freeze_ms, 2000.0);
        assert_eq!(s.freeze_s_per_min, 60.0);
        assert_eq!(s.first_degraded_s, Some(0.0));
        assert_eq!((s.width, s.height), (None, None));
    }

    #[test]
    fn late_retransmissions_delay_later_frames_and_resolution_drops_count_as_degraded() {
        let mut c = Cam::new();
        for i in 0..100 {
            let size = if i >= 50 { QVGA } else { VGA };
            c.frame(i, i == 0 || i == 50, size, Some(10));
        }
        // Frame 20's second packet repaired 400 ms later (a NACK round trip on a bad link).
        let last = c
            .packets
            .iter_mut()
            .find(|p| p.marker && p.ts == 3_000_000_000u32.wrapping_add(20 * 3600));
        last.expect("frame 20").at += ms(400);
        let (s, shown) = analyse(&c.packets, (ms(1000), ms(5000))).expect("packets");
        // Frames 21..=29 complete before 20 but are shown with it, in order.
        assert_eq!(shown[20].1, ms(1000 + 800 + 410));
        assert_eq!(shown[21].1, shown[20].1);
        assert_eq!(s.freezes, 1);
        assert!((s.longest_freeze_ms - 440.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.resolutions.len(), 2);
        assert_eq!(s.resolutions[0].width, 640);
        let degraded = s.first_degraded_s.expect("degraded");
        assert!(
            (degraded - 0.77).abs() < 1e-6,
            "the freeze comes first: {degraded}"
        );
    }
}
