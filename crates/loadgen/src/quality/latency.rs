//! Glass-to-glass latency on one host: when each frame left the kiosk, matched with when the
//! doctor's side showed (video) or played (audio) it.
//!
//! The kiosk's media goes through a [`Tap`](super::tap::Tap) on this machine before its
//! impaired link. SRTP leaves RTP headers in the clear, so the tap notes, per SSRC, the first
//! time each RTP timestamp is seen: the moment the first packet of that frame left the kiosk
//! process (its capture and encoding are the few milliseconds before; not counted). The SFU
//! keeps a stream's RTP timestamps when it first forwards it, so a received frame with
//! timestamp `ts` is the kiosk's frame `ts` of the SSRC whose timestamps it matches. After a
//! simulcast switch or a pause the SFU renumbers, keeping the media clock's pace;
//! [`SendLog::follow`] re-locks onto the kiosk's stream then. The latency of a frame is its
//! show/play time minus that first send time, both on this process's monotonic clock; the
//! report gives how many frames were matched and how many estimated.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

/// First-send times of the kiosk's frames, by SSRC and RTP timestamp.
#[derive(Debug, Clone, Default)]
pub struct SendLog {
    by_ssrc: HashMap<u32, HashMap<u32, Duration>>,
}

impl SendLog {
    /// Notes that a packet of frame `ts` on `ssrc` left at `at` (only the first one counts).
    pub fn note(&mut self, ssrc: u32, ts: u32, at: Duration) {
        self.by_ssrc
            .entry(ssrc)
            .or_default()
            .entry(ts)
            .or_insert(at);
    }

    /// The kiosk SSRC whose timestamps match the most of `received`, with the count matched.
    pub fn match_ssrc(&self, received: &[(u32, Duration)]) -> Option<(u32, usize)> {
        self.by_ssrc
            .iter()
            .map(|(ssrc, frames)| {
                let hits = received
                    .iter()
                    .filter(|(ts, _)| frames.contains_key(ts))
                    .count();
                (*ssrc, hits)
            })
            .filter(|(_, hits)| *hits > 0)
            .max_by_key(|(ssrc, hits)| (*hits, std::cmp::Reverse(*ssrc)))
    }

    /// Latency of each received frame of `ssrc` that matches a sent one.
    pub fn latencies(&self, ssrc: u32, received: &[(u32, Duration)]) -> Vec<Duration> {
        let Some(frames) = self.by_ssrc.get(&ssrc) else {
            return Vec::new();
        };
        received
            .iter()
            .filter_map(|(ts, at)| frames.get(ts).map(|sent| at.saturating_sub(*sent)))
            .collect()
    }

    /// SSRCs seen.
    pub fn ssrcs(&self) -> usize {
        self.by_ssrc.len()
    }

    /// Latency of each received frame of one track (timestamp, shown or played at, in order),
    /// following the SFU's switches between the kiosk's streams (simulcast layers) and its
    /// renumberings after a pause.
    ///
    /// The receiver's timestamps are the kiosk's on the stream first forwarded (offset 0).
    /// After a switch the SFU continues the timestamps at the media clock's pace, so the
    /// send-time line of the last matched frame (`sent + Δts / clock`) still estimates when a
    /// frame left within the arrival jitter of the switch. The frame is then re-locked onto
    /// the kiosk frame (any SSRC) sent within `tolerance` of that estimate whose offset the
    /// next frames confirm. A frame that cannot be re-locked keeps the line's estimate.
    ///
    /// Frames a constant rate apart look alike: a switch packet delayed by more than about
    /// `tolerance` can lock onto a neighbouring frame (an error of one frame interval), and the
    /// same capture on another layer fits as well as the right one (an error of the few
    /// milliseconds between the layers' sends).
    ///
    /// Frames shown before `count_from` only carry the lock forward (a warm-up): they are not
    /// counted.
    pub fn follow(
        &self,
        received: &[(u32, Duration)],
        clock_rate: u32,
        tolerance: Duration,
        count_from: Duration,
    ) -> Matched {
        let clock = f64::from(clock_rate.max(1));
        let by_time = self.by_time();
        let mut out = Matched::default();
        // The current (ssrc, offset) and the last exact match: (extended received ts, sent).
        let mut lock: Option<(u32, u32)> = None;
        let mut line: Option<(i64, Duration)> = None;
        let mut unwrap = super::audio::Unwrap::default();
        for (i, &(ts, at)) in received.iter().enumerate() {
            let ext = unwrap.extend(ts);
            let exact = |ssrc: u32, offset: u32| {
                self.by_ssrc
                    .get(&ssrc)
                    .and_then(|f| f.get(&ts.wrapping_sub(offset)))
                    .copied()
            };
            let mut sent = lock.and_then(|(s, o)| exact(s, o));
            if sent.is_none() {
                lock = match line {
                    None => self
                        .match_ssrc(&received[i..(i + 8).min(received.len())])
                        .filter(|(s, _)| exact(*s, 0).is_some())
                        .map(|(s, _)| (s, 0)),
                    Some((ref_ts, ref_sent)) => {
                        let est = estimate(ref_sent, ext - ref_ts, clock);
                        self.relock(&by_time, &received[i..], est, tolerance)
                    }
                };
                sent = lock.and_then(|(s, o)| exact(s, o));
            }
            let counted = at >= count_from;
            match (sent, line) {
                (Some(t), _) => {
                    line = Some((ext, t));
                    if counted {
                        out.exact.push(at.saturating_sub(t));
                    }
                }
                (None, Some((ref_ts, ref_sent))) => {
                    if counted {
                        let est = estimate(ref_sent, ext - ref_ts, clock);
                        out.estimated.push(at.saturating_sub(est));
                    }
                }
                (None, None) if counted => out.unmatched += 1,
                (None, None) => {}
            }
        }
        out
    }

    /// Every frame noted, by first send time: (sent, ssrc, ts).
    fn by_time(&self) -> Vec<(Duration, u32, u32)> {
        let mut v: Vec<(Duration, u32, u32)> = self
            .by_ssrc
            .iter()
            .flat_map(|(ssrc, f)| f.iter().map(move |(ts, at)| (*at, *ssrc, *ts)))
            .collect();
        v.sort_unstable();
        v
    }

    /// The (ssrc, offset) for `ahead[0]`, a frame estimated sent at `est`: among the kiosk
    /// frames sent within `tolerance` of `est`, the one whose offset matches the most of the
    /// next frames (at least 2 of 4, or all there are), nearest to `est` on a tie.
    fn relock(
        &self,
        by_time: &[(Duration, u32, u32)],
        ahead: &[(u32, Duration)],
        est: Duration,
        tolerance: Duration,
    ) -> Option<(u32, u32)> {
        let (ts, _) = *ahead.first()?;
        let from = by_time.partition_point(|(t, _, _)| *t + tolerance < est);
        let next = &ahead[1..ahead.len().min(5)];
        let needed = next.len().min(2);
        by_time[from..]
            .iter()
            .take_while(|(t, _, _)| *t <= est + tolerance)
            .map(|&(t, ssrc, k)| {
                let offset = ts.wrapping_sub(k);
                // `by_time` lists only SSRCs of `by_ssrc`: the index cannot miss.
                let frames = &self.by_ssrc[&ssrc];
                let confirmed = next
                    .iter()
                    .filter(|(r, _)| frames.contains_key(&r.wrapping_sub(offset)))
                    .count();
                (confirmed, std::cmp::Reverse(t.abs_diff(est)), ssrc, offset)
            })
            .filter(|(confirmed, ..)| *confirmed >= needed)
            .max()
            .map(|(_, _, ssrc, offset)| (ssrc, offset))
    }
}

/// Latencies of one track's frames.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matched {
    /// Frames matched to the kiosk frame they came from.
    pub exact: Vec<Duration>,
    /// Frames that could not be matched, estimated from the last match's send-time line.
    pub estimated: Vec<Duration>,
    /// Frames before any match.
    pub unmatched: usize,
}

fn estimate(ref_sent: Duration, ticks: i64, clock: f64) -> Duration {
    let secs = ref_sent.as_secs_f64() + ticks as f64 / clock;
    Duration::from_secs_f64(secs.max(0.0))
}

/// Latency percentiles of one track, ms.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Frames measured (received frames matched to a sent one).
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (empty: all zero).
    pub fn of(samples: &[Duration]) -> Percentiles {
        let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            count: v.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Parses the RTP header of a datagram a WebRTC client sends (RFC 7983 demultiplexing: first
/// byte 128–191; second byte outside 192–223, which is RTCP): (SSRC, timestamp).
pub fn rtp_header(datagram: &[u8]) -> Option<(u32, u32)> {
    let b0 = *datagram.first()?;
    let b1 = *datagram.get(1)?;
    if !(128..=191).contains(&b0) || (192..=223).contains(&b1) || datagram.len() < 12 {
        return None;
    }
    let ts = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    Some((ssrc, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn received_frames_map_to_the_kiosk_stream_they_came_from() {
        let mut log = SendLog::default();
        for i in 0..100u32 {
            // Video 1 at 25 fps from ts 1000, video 2 at 15 fps from ts 9_000_000.
            log.note(0xaaaa, 1000 + i * 3600, ms(u64::from(i) * 40));
            log.note(0xaaaa, 1000 + i * 3600, ms(u64::from(i) * 40 + 3)); // second packet
            log.note(0xbbbb, 9_000_000 + i * 6000, ms(u64::from(i) * 66));
        }
        assert_eq!(log.ssrcs(), 2);
        // The doctor shows frames 10..60 of stream 1, 50 + i ms after they left; one frame
        // renumbered by the SFU matches nothing.
        let mut shown: Vec<(u32, Duration)> = (10..60u32)
            .map(|i| (1000 + i * 3600, ms(u64::from(i) * 40 + 50 + u64::from(i))))
            .collect();
        shown.push((77, ms(9999)));
        assert_eq!(log.match_ssrc(&shown), Some((0xaaaa, 50)));
        let lat = log.latencies(0xaaaa, &shown);
        assert_eq!(lat.len(), 50);
        assert_eq!(lat[0], ms(60), "from the frame's first packet");
        let p = Percentiles::of(&lat);
        assert_eq!(p.count, 50);
        assert_eq!(p.p50, 84.0);
        assert_eq!(p.p95, 107.0);
        assert_eq!(p.p99, 109.0);
        assert_eq!(p.max, 109.0);
        assert_eq!(log.match_ssrc(&[(5, ms(1))]), None);
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }

    /// The SFU's renumbering on a switch (forwarder.rs `join`): the new stream continues at
    /// the last timestamp plus the wall time elapsed.
    #[test]
    fn latency_follows_simulcast_switches_and_pauses() {
        let mut log = SendLog::default();
        // Three layers of one camera, 25 fps, random bases, sent together (+1 ms per layer).
        let bases = [(0x10u32, 4_000_000_000u32), (0x20, 77), (0x30, 1_234_567)];
        for i in 0..300u32 {
            for (n, (ssrc, base)) in bases.iter().enumerate() {
                let at = ms(1000 + u64::from(i) * 40 + n as u64);
                log.note(*ssrc, base.wrapping_add(i * 3600), at);
            }
        }
        // The doctor gets layer 0x10 for frames 0..100, 0x30 for 100..180 (switch at 100),
        // a pause, then 0x20 from frame 220; each frame shown 70 ms after its layer-0 send.
        let mut received = Vec::new();
        let mut last: Option<(u32, Duration)> = None;
        let mut offset = 0u32;
        for i in (0..180u32).chain(220..300) {
            let layer = match i {
                0..100 => 0,
                100..180 => 2,
                _ => 1,
            };
            let sent = ms(1000 + u64::from(i) * 40);
            let arrival = sent + ms(if i == 100 { 20 } else { 5 }); // a late switch packet
            let ts_in = bases[layer].1.wrapping_add(i * 3600);
            if i == 100 || i == 220 {
                let (ts, at) = last.expect("earlier frame");
                let ticks = ((arrival - at).as_secs_f64() * 90_000.0).round() as u32;
                offset = ts.wrapping_add(ticks).wrapping_sub(ts_in);
            }
            let ts = ts_in.wrapping_add(offset);
            last = Some((ts, arrival));
            received.push((ts, sent + ms(70)));
        }
        // The late switch packet puts the estimate of frame 100 15 ms late: 13 ms from the
        // right frame of layer 0x30, 27 ms from the next one.
        let m = log.follow(&received, 90_000, ms(20), Duration::ZERO);
        assert_eq!(m.unmatched, 0);
        assert!(m.estimated.is_empty(), "{:?}", m.estimated);
        assert_eq!(m.exact.len(), received.len());
        // Layer 0x30 was sent 2 ms after layer 0 and 0x20 1 ms after: 68 and 69 ms.
        assert!(m.exact[..100].iter().all(|l| *l == ms(70)));
        assert!(
            m.exact[100..180].iter().all(|l| *l == ms(68)),
            "{:?}",
            &m.exact[100..110]
        );
        // After the pause the three layers' frames of one capture fit equally well (same
        // timestamps' pace): any of them is within the layers' 2 ms of send spread.
        assert!(m.exact[180..].iter().all(|l| l.abs_diff(ms(69)) <= ms(1)));

        // The window opens after the switch (a warm-up): frames before it carry the lock and
        // are not counted. Without them nothing in the window can be matched: the timestamps
        // are renumbered and there is no earlier match to estimate from.
        let from = ms(1000 + 150 * 40 + 70);
        let counted = received.iter().filter(|r| r.1 >= from).count();
        let m = log.follow(&received, 90_000, ms(20), from);
        assert_eq!(
            (m.exact.len(), m.estimated.len(), m.unmatched),
            (counted, 0, 0)
        );
        let late: Vec<_> = received.iter().copied().filter(|r| r.1 >= from).collect();
        let m = log.follow(&late, 90_000, ms(20), from);
        assert_eq!((m.exact.len(), m.unmatched), (0, counted));

        // With only layer 0x10's first 100 frames in the log (the tap missed the others), the
        // frames after the switch keep the line's estimate (within the switch packet's 15 ms of
        // extra delay).
        let mut only = SendLog::default();
        for i in 0..100u32 {
            only.note(
                0x10,
                bases[0].1.wrapping_add(i * 3600),
                ms(1000 + u64::from(i) * 40),
            );
        }
        let m = only.follow(&received, 90_000, ms(20), Duration::ZERO);
        assert_eq!((m.exact.len(), m.estimated.len()), (100, 160));
        assert!(
            m.estimated.iter().all(|l| l.abs_diff(ms(70)) <= ms(16)),
            "{m:?}"
        );
    }

    #[test]
    fn only_rtp_headers_are_read() {
        let mut rtp = vec![0x80, 96, 0, 1, 0, 0, 0x10, 0, 0xde, 0xad, 0xbe, 0xef, 9];
        assert_eq!(rtp_header(&rtp), Some((0xdead_beef, 0x1000)));
        rtp[1] = 200; // a sender report
        assert_eq!(rtp_header(&rtp), None);
        assert_eq!(
            rtp_header(&[0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        ); // STUN
        assert_eq!(rtp_header(&[22, 254, 253]), None); // DTLS
        assert_eq!(rtp_header(&rtp[..8]), None);
    }
}
