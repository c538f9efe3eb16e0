//! Pausing video a subscriber's link cannot carry.
//!
//! Forwarded media is not paced (a pacer at a bandwidth estimate below what single-layer video
//! needs made the doctor's pictures 1.3 s late under 2 % loss while the sound was live,
//! BENCHMARKS.md), so the SFU answers a lasting shortfall itself: when a subscriber's estimate
//! has not covered a video track without a lower simulcast layer for [`PAUSE_AFTER`], the
//! track stops being forwarded to that subscriber, and starts again at a keyframe once the
//! estimate has room for it.
//!
//! Audio is never paused (it is budgeted first); device cameras (otoscope, dermatoscope) go
//! before other video. [`PAUSE_AFTER`] is long enough that the estimate's short dips (a burst
//! of loss) pause nothing: at 1 s, dips paused cameras on a clean loopback link.
//!
//! A shortfall counts only while the link shows it: while the subscriber reports at least
//! [`LOSSY`] loss. Forwarded media is not paced, so a link that cannot carry a camera drops
//! what does not fit (a 1.2 Mbit/s pair of cameras behind a 0.9 Mbit/s link loses a quarter);
//! an estimate below the camera's rate on a link that delivers everything is the estimator's
//! error (delay noise read as congestion), not a shortfall, and pausing there only freezes the
//! picture.
//!
//! A shortfall also counts only while the estimate has stopped rising. A new subscriber's
//! estimate starts at `initial_bitrate` (or lower, when it fell while there was nothing to
//! send) and climbs for seconds towards what the link carries; a camera above it is not short
//! of a link, the estimate has not found the link yet (in the bench a camera was paused 3 s
//! into every consultation, with the estimate at 2.4 Mbit/s soon after). So each time the
//! estimate has risen (by [`RISE`] of the track's rate) since the shortfall was last counted
//! from, the count starts again. On a link that really is too narrow the estimate saw-tooths
//! below the same ceiling and the count runs out; [`CONVERGE_MAX`] bounds how long rising can
//! hold a pause back.
//!
//! A track resumes only after [`MIN_PAUSE`] and with [`crate::simulcast::UP_FACTOR`] headroom,
//! so it does not flap. Pure state: time is an input.

use std::time::{Duration, Instant};

use crate::simulcast::UP_FACTOR;

/// How long a track may not fit its subscriber's estimate before it is paused.
pub const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// The shortest pause: a resume costs a keyframe.
pub const MIN_PAUSE: Duration = Duration::from_secs(2);

/// The loss the subscriber must report (fraction, from its receiver reports) for a shortfall
/// to count. Above the 2 % random loss the bench's lossy scenario applies, so random loss on a
/// link with room pauses nothing.
pub const LOSSY: f32 = 0.03;

/// How much the estimate must have risen (fraction of the track's rate) since the shortfall
/// was last counted from for it to count as still rising.
pub const RISE: f64 = 0.05;

/// The longest a rising estimate holds a pause back, from the start of a shortfall.
pub const CONVERGE_MAX: Duration = Duration::from_secs(15);

/// What the subscriber's link shows, the same for each of its tracks in one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// The bandwidth estimate towards the subscriber, bits/s.
    pub estimate: u64,
    /// The loss the subscriber last reported for what it receives (fraction 0..1).
    pub loss: f32,
}

/// What changed for a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing.
    None,
    /// Stop forwarding it.
    Paused,
    /// Forward it again, from its next keyframe (request one).
    Resumed,
}

/// The pause state of one video track towards one subscriber.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pauser {
    /// Since when the track has not fitted (while forwarded).
    short_since: Option<Instant>,
    /// When the shortfall is counted from (its start, or the estimate's latest rise).
    counted_from: Option<Instant>,
    /// The estimate at `counted_from`, bits/s.
    estimate_then: u64,
    /// When it was paused (while paused).
    paused_at: Option<Instant>,
}

impl Pauser {
    /// Whether the track is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused_at.is_some()
    }

    /// Updates the state from what the subscriber's estimate leaves for this track at `now`:
    /// `left` bits/s for a track of `rate` bits/s, on a `link` with that estimate and loss.
    /// Returns what changed and whether the track is forwarded (so the caller takes its rate
    /// off what is left for the next tracks).
    pub fn update(&mut self, now: Instant, rate: u64, left: u64, link: Link) -> (Change, bool) {
        match self.paused_at {
            None => {
                if rate <= left {
                    self.short_since = None;
                    self.counted_from = None;
                    return (Change::None, true);
                }
                let since = *self.short_since.get_or_insert(now);
                if link.loss < LOSSY {
                    // The link delivers what is sent: nothing to count.
                    self.counted_from = None;
                    return (Change::None, true);
                }
                let counted = *self.counted_from.get_or_insert(now);
                if counted == now {
                    self.estimate_then = link.estimate;
                }
                // Measured on the estimate, not on what is left: that also rises when another
                // of the subscriber's tracks is paused.
                let rise = (rate as f64 * RISE) as u64;
                let rising = link.estimate > self.estimate_then.saturating_add(rise)
                    && now.saturating_duration_since(since) < CONVERGE_MAX;
                if rising {
                    // The estimate is still finding the link: count again from here.
                    self.counted_from = Some(now);
                    self.estimate_then = link.estimate;
                } else if now.saturating_duration_since(counted) >= PAUSE_AFTER {
                    self.short_since = None;
                    self.counted_from = None;
                    self.paused_at = Some(now);
                    return (Change::Paused, false);
                }
                // Still forwarded (a short dip, or a rising estimate): it uses its share.
                (Change::None, true)
            }
            Some(at) => {
                let room = (rate as f64 * UP_FACTOR) as u64 <= left;
                if room && now.saturating_duration_since(at) >= MIN_PAUSE {
                    self.paused_at = None;
                    return (Change::Resumed, true);
                }
                (Change::None, false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBPS: u64 = 1_000_000;
    /// Loss of a link that cannot carry what is sent.
    const LOSS: f32 = 0.2;

    /// A link whose estimate leaves `left` for the track under test.
    fn link(left: u64, loss: f32) -> Link {
        Link {
            estimate: left,
            loss,
        }
    }

    #[test]
    fn a_short_dip_does_not_pause() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        assert_eq!(
            p.update(t0, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::None, true)
        );
        let t = t0 + PAUSE_AFTER - Duration::from_millis(100);
        assert_eq!(
            p.update(t, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::None, true)
        );
        // The estimate recovers before PAUSE_AFTER: the clock starts again.
        assert_eq!(
            p.update(t, 2 * MBPS, 3 * MBPS, link(3 * MBPS, LOSS)),
            (Change::None, true)
        );
        let t = t + PAUSE_AFTER - Duration::from_millis(100);
        assert_eq!(
            p.update(t, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::None, true)
        );
        assert!(!p.is_paused());
    }

    #[test]
    fn a_lasting_shortfall_pauses_and_headroom_resumes_after_the_minimum_pause() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        p.update(t0, 2 * MBPS, MBPS, link(MBPS, LOSS));
        let t1 = t0 + PAUSE_AFTER;
        assert_eq!(
            p.update(t1, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::Paused, false)
        );
        assert!(p.is_paused());
        // Room again, but not for long enough.
        let t = t1 + Duration::from_millis(500);
        assert_eq!(
            p.update(t, 2 * MBPS, 3 * MBPS, link(3 * MBPS, LOSS)),
            (Change::None, false)
        );
        // After MIN_PAUSE: just fitting is not enough, headroom is needed.
        let t = t1 + MIN_PAUSE;
        assert_eq!(
            p.update(t, 2 * MBPS, 2 * MBPS, link(2 * MBPS, LOSS)),
            (Change::None, false)
        );
        assert_eq!(
            p.update(t, 2 * MBPS, 3 * MBPS, link(3 * MBPS, LOSS)),
            (Change::Resumed, true)
        );
        assert!(!p.is_paused());
    }

    #[test]
    fn a_shortfall_without_loss_does_not_pause() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        for ms in (0..=10_000).step_by(100) {
            let t = t0 + Duration::from_millis(ms);
            assert_eq!(
                p.update(t, 2 * MBPS, MBPS, link(MBPS, 0.01)),
                (Change::None, true)
            );
        }
        // Loss from now on: PAUSE_AFTER counts from here.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(
            p.update(t1, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::None, true)
        );
        let t = t1 + PAUSE_AFTER - Duration::from_millis(1);
        assert_eq!(
            p.update(t, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::None, true)
        );
        let t = t1 + PAUSE_AFTER;
        assert_eq!(
            p.update(t, 2 * MBPS, MBPS, link(MBPS, LOSS)),
            (Change::Paused, false)
        );
    }

    #[test]
    fn a_rising_estimate_does_not_pause() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        // From 0.1 to 1.4 Mbit/s over 7 s, +10 % every 250 ms, for a 1.5 Mbit/s camera.
        let mut left = MBPS / 10;
        let mut t = t0;
        while left < 3 * MBPS / 2 {
            assert_eq!(
                p.update(t, 3 * MBPS / 2, left, link(left, LOSS)),
                (Change::None, true)
            );
            left += left / 10;
            t += Duration::from_millis(250);
        }
        assert!(t - t0 > PAUSE_AFTER * 2, "the ramp outlasts PAUSE_AFTER");
        assert!(!p.is_paused());
    }

    #[test]
    fn a_saw_tooth_below_the_same_ceiling_pauses() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        // Up 2 % every 100 ms from 0.7 to 0.9 Mbit/s, drop, again: never above the first peak
        // by RISE.
        let mut t = t0;
        let mut left = 700_000;
        let paused = loop {
            let (change, _) = p.update(t, MBPS, left, link(left, LOSS));
            if change == Change::Paused {
                break t;
            }
            left = if left > 900_000 {
                700_000
            } else {
                left + left / 50
            };
            t += Duration::from_millis(100);
            assert!(t - t0 < CONVERGE_MAX, "paused in time");
        };
        assert!(paused - t0 >= PAUSE_AFTER);
    }

    #[test]
    fn rising_holds_a_pause_back_for_at_most_converge_max() {
        let t0 = Instant::now();
        let mut p = Pauser::default();
        let mut left = 1_000u64;
        let mut t = t0;
        loop {
            let (change, _) = p.update(t, u64::MAX, left, link(left, LOSS));
            if change == Change::Paused {
                break;
            }
            left += left / 5;
            t += Duration::from_millis(500);
            assert!(t - t0 <= CONVERGE_MAX + PAUSE_AFTER, "paused in time");
        }
    }
}
