//! Glass-to-glass latency on one host: when each frame left the kiosk, matched with when the
//! doctor's side showed (video) or played (audio) it.
//!
//! The kiosk's media goes through a [`Tap`](super::tap::Tap) on this machine before its
//! impaired link. SRTP leaves RTP headers in the clear, so the tap notes, per SSRC, the first
//! time each RTP timestamp is seen: the moment the first packet of that frame left the kiosk
//! process (its capture and encoding are the few milliseconds before; not counted). The SFU
//! keeps a stream's RTP timestamps when it first forwards it (it renumbers after a switch or a
//! pause, keeping the media clock's pace), so a received frame with timestamp `ts` is the
//! kiosk's frame `ts` of the SSRC whose timestamps it matches. The latency of a frame is its
//! show/play time minus that first send time, both on this process's monotonic clock. Frames
//! whose timestamp was renumbered (after a switch) find no match and are left out; the report
//! gives the matched count.

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
