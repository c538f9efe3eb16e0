//! When the doctor's receiver asks for a keyframe, as a browser would once a lost packet is
//! beyond repair: webrtc-rs repairs losses with NACK but never sends a Picture Loss Indication
//! by itself, so without this a camera that lost one base-layer packet for good would stay
//! frozen until the kiosk's next periodic keyframe.
//!
//! Rule (sans-IO, time is an input): a sequence number missing for longer than `give_up`
//! (NACK had its round trips) is lost; a loss asks for a keyframe, at most once per
//! `min_interval`. It cannot tell a lost packet of a frame nothing refers to (a temporal
//! enhancement layer) from a lost base-layer one, so it may ask more often than a decoder
//! would.

use std::collections::BTreeMap;
use std::time::Duration;

use super::audio::Unwrap;

/// Loss watch of one video track.
#[derive(Debug, Clone)]
pub struct LossWatch {
    give_up: Duration,
    min_interval: Duration,
    unwrap: Unwrap16,
    highest: Option<i64>,
    /// Missing sequence numbers and when they were first missed.
    missing: BTreeMap<i64, Duration>,
    last_request: Option<Duration>,
}

impl LossWatch {
    /// A watch that gives a packet up after `give_up` and asks at most once per `min_interval`.
    pub fn new(give_up: Duration, min_interval: Duration) -> LossWatch {
        LossWatch {
            give_up,
            min_interval,
            unwrap: Unwrap16::default(),
            highest: None,
            missing: BTreeMap::new(),
            last_request: None,
        }
    }

    /// A packet `seq` arrived at `now`; true if a keyframe should be asked for now.
    pub fn on_packet(&mut self, seq: u16, now: Duration) -> bool {
        let seq = self.unwrap.extend(seq);
        match self.highest {
            None => self.highest = Some(seq),
            Some(h) if seq > h => {
                // At most a second of 1500-packet/s video is noted as missing at once.
                for s in (h + 1).max(seq - 1500)..seq {
                    self.missing.insert(s, now);
                }
                self.highest = Some(seq);
            }
            Some(_) => {
                self.missing.remove(&seq);
            }
        }
        self.poll(now)
    }

    /// True if a loss is past repair and a keyframe may be asked for at `now`.
    pub fn poll(&mut self, now: Duration) -> bool {
        let before = self.missing.len();
        self.missing
            .retain(|_, since| now.saturating_sub(*since) <= self.give_up);
        let lost = self.missing.len() < before;
        let allowed = self
            .last_request
            .is_none_or(|t| now.saturating_sub(t) >= self.min_interval);
        if lost && allowed {
            self.last_request = Some(now);
            return true;
        }
        false
    }
}

/// Unwraps 16-bit sequence numbers (shortest signed distance from the previous one).
#[derive(Debug, Default, Clone, Copy)]
struct Unwrap16 {
    inner: Unwrap,
}

impl Unwrap16 {
    fn extend(&mut self, seq: u16) -> i64 {
        // Spread the 16-bit space over the 32-bit unwrapper's: steps keep their sign.
        self.inner.extend(u32::from(seq) << 16) >> 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_loss_nack_repairs_asks_nothing_a_lasting_one_asks_once() {
        let mut w = LossWatch::new(ms(250), ms(500));
        assert!(!w.on_packet(65_534, ms(0)));
        // 65535 and 0 missing; 0 repaired at 100 ms.
        assert!(!w.on_packet(1, ms(10)));
        assert!(!w.on_packet(0, ms(100)));
        assert!(!w.on_packet(2, ms(200)));
        // 65535 is still missing after 250 ms: lost.
        assert!(w.on_packet(3, ms(261)));
        // Another loss soon after: not asked again within 500 ms.
        assert!(!w.on_packet(5, ms(300)));
        assert!(!w.poll(ms(600)));
        // Both gone; a new loss after the interval asks again.
        assert!(!w.on_packet(7, ms(800)));
        assert!(w.poll(ms(1100)));
        // Late duplicates of old packets ask nothing.
        assert!(!w.on_packet(2, ms(1200)));
        assert!(!w.poll(ms(2000)));
    }
}
