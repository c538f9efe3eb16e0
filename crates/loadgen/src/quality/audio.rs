//! Audio playout: which frames of a received audio track (the stethoscope, the microphone) a
//! fixed jitter buffer plays in time, and which it must conceal.
//!
//! The model, computed after the run from every packet's arrival time:
//!
//! - A frame is one RTP timestamp. It *arrives* at the earliest of the packet that carries it
//!   as its primary payload (first copy, or a NACK retransmission) and, for RED (RFC 2198), any
//!   later packet that carries it as a redundant block.
//! - The playout clock runs at the media clock, anchored on the fastest frame of the run: with
//!   `transit(f) = arrival(f) − ts(f) / clock`, frame `f` plays at
//!   `min transit + ts(f) / clock + buffer`. That is a fixed buffer of `buffer` above the best
//!   path seen, which is what a well-settled adaptive buffer (NetEq's target delay) converges to
//!   on a stable link.
//! - A frame is *in time* if it arrived by its playout time; *late* if it arrived after; *lost*
//!   if it never arrived. Late and lost frames are concealed. Expected frames are every frame
//!   step between the first and last timestamps received.
//!
//! Opus in-band FEC is not credited (the harness does not decode Opus): a frame only Opus FEC
//! could rebuild counts as concealed, so the figure errs low.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use super::Record;

/// One audio track's playout over the measurement window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AudioStats {
    /// Frame duration found in the stream (the most common timestamp step), ms.
    pub frame_ms: f64,
    /// Frames due for playout in the window.
    pub expected: u64,
    /// Frames played in time.
    pub in_time: u64,
    /// Of those, frames whose primary copy never came in time: played from a RED block.
    pub recovered_by_red: u64,
    /// Frames that arrived after their playout time (concealed).
    pub late: u64,
    /// Frames that never arrived (concealed).
    pub lost: u64,
    /// `in_time / expected`, percent.
    pub in_time_pct: f64,
    /// `(late + lost) / expected`, percent: the share of audio the receiver had to conceal.
    pub concealed_pct: f64,
    /// The fastest transit of the run, ms, on the receiver's clock relative to the first
    /// frame's media time (playout runs `buffer` above it).
    pub min_transit_ms: f64,
    /// How late frames arrived above the fastest path, 95th percentile, ms (frames that
    /// arrived, in the window): the buffer an adaptive jitter buffer would need to play 95 %
    /// of them.
    pub excess_delay_p95_ms: f64,
    /// The same, 99th percentile.
    pub excess_delay_p99_ms: f64,
}

/// Every frame played in time and when it played, for latency.
pub type Played = Vec<(u32, Duration)>;

/// Analyses one audio track: `red_pt` is the payload type of RED packets (their blocks are
/// parsed), `clock_rate` the media clock, `buffer` the fixed jitter buffer, `window` the
/// measurement window (frames whose playout time falls inside count). `None` without packets.
pub fn analyse(
    packets: &[Record],
    red_pt: Option<u8>,
    clock_rate: u32,
    buffer: Duration,
    window: (Duration, Duration),
) -> Option<(AudioStats, Played)> {
    let clock = f64::from(clock_rate.max(1));
    let mut unwrap = Unwrap::default();
    // Extended timestamp → (earliest arrival, whether that earliest copy was a primary).
    let mut frames: HashMap<i64, (Duration, bool)> = HashMap::new();
    let mut primaries: Vec<i64> = Vec::new();
    for p in packets {
        let ts = unwrap.extend(p.ts);
        let mut note = |ts: i64, primary: bool| {
            let e = frames.entry(ts).or_insert((p.at, primary));
            if p.at < e.0 || (p.at == e.0 && primary) {
                *e = (p.at, primary);
            }
        };
        if Some(p.pt) == red_pt {
            match red_blocks(&p.payload) {
                Some(blocks) => {
                    for (offset, len, primary) in blocks {
                        if len > 0 {
                            note(ts - i64::from(offset), primary);
                        }
                    }
                    primaries.push(ts);
                }
                None => continue,
            }
        } else {
            note(ts, true);
            primaries.push(ts);
        }
    }
    if primaries.is_empty() {
        return None;
    }
    primaries.sort_unstable();
    primaries.dedup();
    let step = most_common_step(&primaries).unwrap_or(i64::from(clock_rate / 50));
    let first = primaries[0];
    let last = *primaries.last()?;
    let secs = |ts: i64| Duration::from_secs_f64(((ts - first) as f64 / clock).max(0.0));
    // The fastest transit, relative to the first frame's media time.
    let base = frames
        .iter()
        .map(|(ts, (at, _))| at.as_secs_f64() - (ts - first) as f64 / clock)
        .fold(f64::INFINITY, f64::min);
    let base = Duration::from_secs_f64(base.max(0.0));
    let mut s = AudioStats {
        frame_ms: step as f64 * 1000.0 / clock,
        min_transit_ms: 0.0,
        ..AudioStats::default()
    };
    let mut played = Vec::new();
    let mut excess: Vec<Duration> = Vec::new();
    let mut ts = first;
    while ts <= last {
        let due = base + secs(ts) + buffer;
        if due >= window.0 && due < window.1 {
            s.expected += 1;
            if let Some(&(at, _)) = frames.get(&ts) {
                excess.push(at.saturating_sub(base + secs(ts)));
            }
            match frames.get(&ts) {
                Some(&(at, primary)) if at <= due => {
                    s.in_time += 1;
                    if !primary {
                        s.recovered_by_red += 1;
                    }
                    played.push((ts as u32, due));
                }
                Some(_) => s.late += 1,
                None => s.lost += 1,
            }
        }
        ts += step;
    }
    if s.expected > 0 {
        s.in_time_pct = 100.0 * s.in_time as f64 / s.expected as f64;
        s.concealed_pct = 100.0 * (s.late + s.lost) as f64 / s.expected as f64;
    }
    s.min_transit_ms = base.as_secs_f64() * 1000.0;
    let p = super::latency::Percentiles::of(&excess);
    s.excess_delay_p95_ms = p.p95;
    s.excess_delay_p99_ms = p.p99;
    Some((s, played))
}

/// The blocks of a RED payload (RFC 2198): (timestamp offset, length, is primary), redundant
/// blocks first. `None` if the headers run past the payload.
pub fn red_blocks(payload: &[u8]) -> Option<Vec<(u16, usize, bool)>> {
    let mut headers = Vec::new();
    let mut i = 0;
    loop {
        let b = *payload.get(i)?;
        if b & 0x80 == 0 {
            i += 1;
            break;
        }
        let h = payload.get(i..i + 4)?;
        let offset = (u16::from(h[1]) << 6) | (u16::from(h[2]) >> 2);
        let len = (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        headers.push((offset, len, false));
        i += 4;
    }
    let redundant: usize = headers.iter().map(|h| h.1).sum();
    let primary = payload.len().checked_sub(i + redundant)?;
    headers.push((0, primary, true));
    Some(headers)
}

/// Unwraps 32-bit RTP timestamps into a monotonic-ish 64-bit count (each step taken as the
/// shortest signed distance from the previous one).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unwrap {
    last: Option<i64>,
}

impl Unwrap {
    /// The extended value of `ts`.
    pub fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ts),
            Some(l) => l + i64::from(ts.wrapping_sub(l as u32) as i32),
        };
        self.last = Some(ext);
        ext
    }
}

fn most_common_step(sorted: &[i64]) -> Option<i64> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for w in sorted.windows(2) {
        let d = w[1] - w[0];
        if d > 0 {
            *counts.entry(d).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|(d, n)| (*n, -d))
        .map(|(d, _)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT: u8 = 111;
    const RED: u8 = 63;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn pkt(at_ms: u64, ts: u32, pt: u8, payload: Vec<u8>) -> Record {
        Record {
            at: ms(at_ms),
            seq: 0,
            ts,
            marker: false,
            pt,
            payload,
        }
    }

    /// 20 ms frames from t = 1000 ms, 30 ms of transit, timestamps starting near the wrap.
    fn stream(n: u32, transit: impl Fn(u32) -> Option<u64>) -> Vec<Record> {
        (0..n)
            .filter_map(|i| {
                transit(i).map(|t| {
                    pkt(
                        1000 + u64::from(i) * 20 + t,
                        (u32::MAX - 2000).wrapping_add(i * 960),
                        PT,
                        vec![1; 40],
                    )
                })
            })
            .collect()
    }

    #[test]
    fn frames_within_the_buffer_count_in_time_later_ones_are_concealed() {
        // 100 frames; frame 10 lost, frame 20 arrives 70 ms late, frame 30 40 ms late.
        let packets = stream(100, |i| match i {
            10 => None,
            20 => Some(30 + 70),
            30 => Some(30 + 40),
            _ => Some(30),
        });
        let window = (Duration::ZERO, Duration::from_secs(100));
        let (s, played) = analyse(&packets, None, 48_000, ms(60), window).expect("packets");
        assert_eq!(s.frame_ms, 20.0);
        assert_eq!(s.expected, 100);
        assert_eq!(s.lost, 1);
        assert_eq!(
            s.late, 1,
            "70 ms late misses a 60 ms buffer, 40 ms does not"
        );
        assert_eq!(s.in_time, 98);
        assert_eq!(played.len(), 98);
        assert!((s.in_time_pct - 98.0).abs() < 1e-9);
        assert!((s.concealed_pct - 2.0).abs() < 1e-9);
        assert!((s.min_transit_ms - 1030.0).abs() < 1.0, "{s:?}");
        // Played 60 ms after the fastest arrival, on the media clock.
        assert_eq!(played[0].1, ms(1030 + 60));
        // 97 frames on the fastest path, one 40 ms and one 70 ms above it: of 99 arrivals the
        // p95 (rank 95) is on the fastest path, the p99 (rank 99) the 70 ms one.
        assert!(s.excess_delay_p95_ms.abs() < 1e-6, "{s:?}");
        assert!((s.excess_delay_p99_ms - 70.0).abs() < 1e-6, "{s:?}");
        // A longer buffer takes the late frame.
        let (s, _) = analyse(&packets, None, 48_000, ms(80), window).expect("packets");
        assert_eq!((s.in_time, s.late, s.lost), (99, 0, 1));
    }

    #[test]
    fn the_window_selects_frames_by_playout_time() {
        let packets = stream(100, |_| Some(10));
        // Frames play at 1000 + 20 i + 10 + 50 ms; the window [1260, 1460) holds i = 10..20.
        let (s, _) = analyse(&packets, None, 48_000, ms(50), (ms(1260), ms(1460))).expect("p");
        assert_eq!((s.expected, s.in_time), (10, 10));
    }

    fn red(primary_ts_offset: Option<u16>, redundant_len: usize, primary_len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        if let Some(off) = primary_ts_offset {
            v.push(0x80 | PT);
            v.push((off >> 6) as u8);
            v.push(((off & 0x3f) << 2) as u8 | (redundant_len >> 8) as u8);
            v.push((redundant_len & 0xff) as u8);
        }
        v.push(PT);
        v.extend(std::iter::repeat_n(7, redundant_len + primary_len));
        v
    }

    #[test]
    fn red_blocks_parse_and_recover_lost_primaries() {
        assert_eq!(
            red_blocks(&red(Some(960), 30, 40)),
            Some(vec![(960, 30, false), (0, 40, true)])
        );
        assert_eq!(red_blocks(&red(None, 0, 40)), Some(vec![(0, 40, true)]));
        // Headers longer than the payload: refused, not a panic.
        assert_eq!(red_blocks(&[0x80 | PT, 1]), None);
        assert_eq!(red_blocks(&red(Some(960), 300, 0)[..10]), None);

        // Frame 5's packet is lost; frame 6 carries it as redundancy 20 ms later.
        let packets: Vec<Record> = (0..10u32)
            .filter(|i| *i != 5)
            .map(|i| {
                pkt(
                    1000 + u64::from(i) * 20,
                    i * 960,
                    RED,
                    red(Some(960), 30, 40),
                )
            })
            .collect();
        let w = (Duration::ZERO, Duration::from_secs(100));
        let (s, _) = analyse(&packets, Some(RED), 48_000, ms(40), w).expect("packets");
        assert_eq!((s.in_time, s.recovered_by_red, s.lost), (10, 1, 0), "{s:?}");
        // Read as plain Opus, the same packets leave frame 5 lost.
        let (s, _) = analyse(&packets, None, 48_000, ms(40), w).expect("packets");
        assert_eq!((s.in_time, s.lost), (9, 1));
        // With a 10 ms buffer the redundant copy is too late.
        let (s, _) = analyse(&packets, Some(RED), 48_000, ms(10), w).expect("packets");
        assert_eq!((s.late, s.recovered_by_red), (1, 0));
    }

    #[test]
    fn timestamps_unwrap_across_the_32_bit_boundary() {
        let mut u = Unwrap::default();
        let a = u.extend(u32::MAX - 10);
        let b = u.extend(5);
        assert_eq!(b - a, 16);
        assert_eq!(u.extend(u32::MAX - 20) - b, -(16 + 10));
        assert!(analyse(&[], None, 48_000, ms(50), (ms(0), ms(1))).is_none());
    }
}
