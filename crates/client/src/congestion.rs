//! Congestion control of the kiosk's uplink, sans-IO: the server's RTCP feedback in, a target
//! sending rate out. Time is an input; the shell (`cabine_kiosk::dial`) drains the
//! publisher's feedback, feeds it here, and gives the target to [`Budget`](crate::budget::Budget)
//! to set the encoders.
//!
//! Signals (as webrtc-rs hands them to the publisher's RTCP readers):
//! - **queue delay**, the rise of the one-way delay over the smallest one seen: transport-wide
//!   feedback (~20 a second from str0m) gives each packet's arrival time at the server, and
//!   the publisher's send-time log its departure. It is the earliest sign of an uplink that
//!   is too small, before anything is lost. Without it, the round-trip time of receiver
//!   reports (LSR/DLSR echoing our sender reports; a sample every second or more) stands in;
//! - **loss** from transport-wide feedback, or the receiver reports' fraction lost without it;
//! - **REMB**, when the server sends one, caps the target.
//!
//! Rule (a delay-first AIMD): queue delay above `queue_delay_high` or loss above `loss_high`
//! cuts the target by `decrease`, then holds for `hold` so that fresh reports reflect the cut;
//! queue delay below `queue_delay_low` and loss below `loss_low` raise it by
//! `increase_per_second`, or by only `near_increase_per_second` of the rate of the last cut
//! while within ±10 % of it (where the path gave out before: approach it gently, and settle
//! under it rather than on it); in between it holds. Random loss of a few percent (a lossy last
//! mile) is not congestion and does not cut the rate.
//!
//! ```text
//! loop {
//!     controller.handle_feedback(now, feedback)   // for each RTCP-derived sample
//!     controller.handle_timeout(now)              // when poll_timeout() is due
//!     if let Some(bps) = controller.poll_output() { set the encoders }
//! }
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Packets transport feedback must cover before its loss fraction is used.
const MIN_LOSS_SAMPLE: u64 = 20;

/// One-way delay samples kept (~3 s of str0m's 20 feedbacks a second; the window uses less).
const OWD_SAMPLES: usize = 64;

/// One piece of congestion feedback, as read from the server's RTCP.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Feedback {
    /// Transport-wide congestion control feedback: of `reported` packets, `lost` did not
    /// arrive.
    Transport {
        /// Packets the feedback covers.
        reported: u32,
        /// Of those, not received.
        lost: u32,
    },
    /// A receiver report block about one of our streams.
    Report {
        /// Fraction of packets lost since the previous report (0.0..=1.0).
        fraction_lost: f32,
        /// Round-trip time computed from the block's LSR/DLSR, if it echoes a sender report.
        rtt: Option<Duration>,
    },
    /// One-way delay of the packets one transport-wide feedback covers (their mean arrival
    /// time at the server minus their send time), in microseconds with an arbitrary fixed
    /// offset (the two clocks are not synchronised): its rise over the smallest one seen is
    /// the queue at the bottleneck, twenty times a second.
    OneWayDelay {
        /// The delay, µs, plus an unknown constant.
        micros: i64,
    },
    /// A receiver estimated maximum bitrate (REMB), bit/s.
    Remb {
        /// The estimate.
        bps: u64,
    },
}

/// Settings of a [`RateController`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControllerConfig {
    /// Target at start, bit/s (on the wire: payload plus RTP/SRTP overhead).
    pub start_bps: u64,
    /// Never below this (what audio and the smallest video need).
    pub min_bps: u64,
    /// Never above this (every encoder at its configured bitrate).
    pub max_bps: u64,
    /// Queue delay (RTT above the smallest seen) that counts as congestion.
    pub queue_delay_high: Duration,
    /// Queue delay below which the rate may grow.
    pub queue_delay_low: Duration,
    /// Loss fraction that counts as congestion.
    pub loss_high: f64,
    /// Loss fraction below which the rate may grow.
    pub loss_low: f64,
    /// Factor applied on congestion.
    pub decrease: f64,
    /// Relative growth per second when the path is clear.
    pub increase_per_second: f64,
    /// Growth per second, as a fraction of the rate at the last cut, within ±10 % of it.
    pub near_increase_per_second: f64,
    /// No further change for this long after a cut.
    pub hold: Duration,
    /// How often the rule runs.
    pub tick: Duration,
    /// A feedback sample older than this is ignored.
    pub max_age: Duration,
    /// Runs of the rule in a row that must see congestion before a cut (a real queue lasts;
    /// a host that stalls for a moment does not).
    pub persistence: u32,
    /// Queue delay is the smallest one-way delay over this window: a real queue lasts, a
    /// scheduling hiccup on either host does not.
    pub delay_window: Duration,
}

impl ControllerConfig {
    /// Defaults for a target between `min_bps` and `max_bps`, starting at half of `max_bps`
    /// (a start below the path's capacity lets the first reports show the empty-queue round
    /// trip that queue delay is measured from).
    pub fn new(min_bps: u64, max_bps: u64) -> Self {
        ControllerConfig {
            start_bps: (max_bps / 2).max(min_bps),
            min_bps,
            max_bps: max_bps.max(min_bps),
            queue_delay_high: Duration::from_millis(30),
            queue_delay_low: Duration::from_millis(10),
            loss_high: 0.10,
            loss_low: 0.05,
            decrease: 0.85,
            increase_per_second: 0.05,
            near_increase_per_second: 0.01,
            hold: Duration::from_secs(1),
            tick: Duration::from_millis(200),
            max_age: Duration::from_secs(2),
            persistence: 2,
            delay_window: Duration::from_millis(300),
        }
    }
}

/// What the last run of the rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// Not run yet, or between the thresholds, or holding after a cut.
    #[default]
    Hold,
    /// The rate grew.
    Increase,
    /// The rate was cut.
    Decrease,
}

/// Counters of a [`RateController`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ControllerStats {
    /// The current target, bit/s.
    pub target_bps: u64,
    /// Cuts so far.
    pub decreases: u64,
    /// Of those, cuts for queue delay (the others were for loss).
    pub delay_cuts: u64,
    /// Queue delay last seen (RTT above the smallest), if known.
    pub queue_delay: Option<Duration>,
    /// Loss fraction of the last window, if known.
    pub loss: Option<f64>,
    /// The last decision.
    pub decision: Decision,
}

/// The uplink rate controller. See the module documentation.
#[derive(Debug, Clone)]
pub struct RateController {
    config: ControllerConfig,
    target: f64,
    next_tick: Instant,
    last_tick: Instant,
    hold_until: Instant,
    congested_runs: u32,
    /// The rate at the last cut (smoothed over cuts): where the path gave out.
    last_cut: Option<f64>,
    rtt_min: Option<Duration>,
    rtt: Option<(Duration, Instant)>,
    owd_min: Option<i64>,
    owd: VecDeque<(Instant, i64)>,
    reported: u64,
    lost: u64,
    window_start: Instant,
    report_loss: Option<(f64, Instant)>,
    remb: Option<(u64, Instant)>,
    emitted: Option<u64>,
    stats: ControllerStats,
}

impl RateController {
    /// A controller starting at `config.start_bps` at `now`.
    pub fn new(config: ControllerConfig, now: Instant) -> Self {
        let start = config.start_bps.clamp(config.min_bps, config.max_bps);
        RateController {
            config,
            target: start as f64,
            next_tick: now + config.tick,
            last_tick: now,
            hold_until: now,
            congested_runs: 0,
            last_cut: None,
            rtt_min: None,
            rtt: None,
            owd_min: None,
            owd: VecDeque::with_capacity(OWD_SAMPLES),
            reported: 0,
            lost: 0,
            window_start: now,
            report_loss: None,
            remb: None,
            emitted: None,
            stats: ControllerStats {
                target_bps: start,
                ..ControllerStats::default()
            },
        }
    }

    /// Takes one piece of feedback received at `now`.
    pub fn handle_feedback(&mut self, now: Instant, feedback: Feedback) {
        match feedback {
            Feedback::Transport { reported, lost } => {
                self.reported += u64::from(reported);
                self.lost += u64::from(lost.min(reported));
            }
            Feedback::Report { fraction_lost, rtt } => {
                self.report_loss = Some((f64::from(fraction_lost.clamp(0.0, 1.0)), now));
                if let Some(rtt) = rtt {
                    self.rtt_min = Some(self.rtt_min.map_or(rtt, |m| m.min(rtt)));
                    self.rtt = Some((rtt, now));
                }
            }
            Feedback::OneWayDelay { micros } => {
                self.owd_min = Some(self.owd_min.map_or(micros, |m| m.min(micros)));
                if self.owd.len() == OWD_SAMPLES {
                    self.owd.pop_front();
                }
                self.owd.push_back((now, micros));
            }
            Feedback::Remb { bps } => self.remb = Some((bps, now)),
        }
    }

    /// Runs the rule if it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        self.next_tick = now + self.config.tick;
        self.run(now, elapsed);
    }

    /// The new target (bit/s) when it moved by 2 % or more since the last one given out (the
    /// first call always gives the start target).
    pub fn poll_output(&mut self) -> Option<u64> {
        let target = self.stats.target_bps;
        let moved = self.emitted.is_none_or(|last| {
            let last = last.max(1) as f64;
            (target as f64 - last).abs() / last >= 0.02
        });
        if moved {
            self.emitted = Some(target);
            return Some(target);
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// The current target, bit/s.
    pub fn target_bps(&self) -> u64 {
        self.stats.target_bps
    }

    /// Counters and the last decision.
    pub fn stats(&self) -> ControllerStats {
        self.stats
    }

    fn run(&mut self, now: Instant, elapsed: Duration) {
        let c = self.config;
        let fresh = |at: Instant| now.saturating_duration_since(at) <= c.max_age;
        // Queue delay from one-way delays (frequent) or else round-trip times (a sample
        // every second or more).
        while self
            .owd
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > c.delay_window)
        {
            self.owd.pop_front();
        }
        let owd = self.owd.iter().map(|(_, d)| *d).min();
        let queue_delay = match (owd, self.owd_min, self.rtt, self.rtt_min) {
            (Some(owd), Some(min), _, _) => Some(Duration::from_micros(
                u64::try_from(owd.saturating_sub(min)).unwrap_or(0),
            )),
            (_, _, Some((rtt, at)), Some(min)) if fresh(at) => Some(rtt.saturating_sub(min)),
            _ => None,
        };
        // Loss from transport feedback once it covers enough packets (the window grows over
        // ticks at low rates); from the latest receiver report when there is none.
        if !fresh(self.window_start) {
            self.reported = 0;
            self.lost = 0;
            self.window_start = now;
        }
        let loss = if self.reported >= MIN_LOSS_SAMPLE {
            let loss = self.lost as f64 / self.reported as f64;
            self.reported = 0;
            self.lost = 0;
            self.window_start = now;
            Some(loss)
        } else if self.reported > 0 {
            // Not enough yet: no opinion on loss this time.
            None
        } else {
            self.report_loss
                .filter(|(_, at)| fresh(*at))
                .map(|(l, _)| l)
        };

        let delayed = queue_delay.is_some_and(|d| d > c.queue_delay_high);
        let lossy = loss.is_some_and(|l| l > c.loss_high);
        self.congested_runs = if delayed || lossy {
            self.congested_runs + 1
        } else {
            0
        };
        let congested = self.congested_runs >= c.persistence;
        let clear = queue_delay.is_none_or(|d| d < c.queue_delay_low)
            && loss.is_none_or(|l| l < c.loss_low)
            && (queue_delay.is_some() || loss.is_some());
        let decision = if now < self.hold_until {
            Decision::Hold
        } else if congested {
            self.last_cut = Some(
                self.last_cut
                    .map_or(self.target, |l| 0.5 * l + 0.5 * self.target),
            );
            self.target *= c.decrease;
            self.hold_until = now + c.hold;
            self.congested_runs = 0;
            self.stats.decreases += 1;
            if delayed {
                self.stats.delay_cuts += 1;
            }
            Decision::Decrease
        } else if clear {
            let dt = elapsed.as_secs_f64();
            match self.last_cut {
                Some(cut) if (0.9 * cut..1.1 * cut).contains(&self.target) => {
                    self.target += c.near_increase_per_second * cut * dt;
                }
                _ => self.target *= 1.0 + c.increase_per_second * dt,
            }
            Decision::Increase
        } else {
            Decision::Hold
        };
        let mut ceiling = c.max_bps as f64;
        if let Some((remb, _)) = self.remb.filter(|(_, at)| fresh(*at)) {
            ceiling = ceiling.min(remb as f64);
        }
        self.target = self
            .target
            .clamp(c.min_bps as f64, ceiling.max(c.min_bps as f64));
        self.stats.target_bps = self.target as u64;
        self.stats.queue_delay = queue_delay;
        self.stats.loss = loss;
        self.stats.decision = decision;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A fluid model of a bottleneck: the sender's rate against `capacity`, a queue of
    /// `queue_bytes` (tail drop), a base round trip and random loss; it answers with TWCC
    /// (loss and, with `one_way`, one-way delay) every 50 ms and a receiver report every
    /// 500 ms.
    struct Path {
        capacity_bps: f64,
        queue_bytes: f64,
        base_rtt: Duration,
        random_loss: f64,
        one_way: bool,
        queued: f64,
        overflow_bytes: f64,
    }

    /// Per 50 ms step of a run: (time, target, queue delay, bytes dropped at the queue).
    type Trace = Vec<(Duration, u64, Duration, f64)>;

    impl Path {
        fn new(capacity_bps: f64, queue: Duration, base_rtt: Duration, random_loss: f64) -> Self {
            Path {
                capacity_bps,
                queue_bytes: capacity_bps / 8.0 * queue.as_secs_f64(),
                base_rtt,
                random_loss,
                one_way: true,
                queued: 0.0,
                overflow_bytes: 0.0,
            }
        }

        fn queue_delay(&self) -> Duration {
            Duration::from_secs_f64(self.queued * 8.0 / self.capacity_bps)
        }

        /// Runs `c` over this path from `from` for `span`, returning the trace.
        fn run(
            &mut self,
            c: &mut RateController,
            t0: Instant,
            from: Duration,
            span: Duration,
        ) -> Trace {
            let step = 50 * MS;
            let mut trace = Vec::new();
            let mut t = from;
            while t < from + span {
                t += step;
                let now = t0 + t;
                let rate = c.target_bps() as f64;
                let offered = rate / 8.0 * step.as_secs_f64();
                let drained = self.capacity_bps / 8.0 * step.as_secs_f64();
                self.queued = (self.queued + offered - drained).max(0.0);
                let dropped = (self.queued - self.queue_bytes).max(0.0);
                self.queued -= dropped;
                self.overflow_bytes += dropped;
                // ~1200-byte packets.
                let packets = (offered / 1200.0).max(1.0).round() as u32;
                let congestion_loss = dropped / offered.max(1.0);
                let lost =
                    ((congestion_loss + self.random_loss) * f64::from(packets)).round() as u32;
                c.handle_feedback(
                    now,
                    Feedback::Transport {
                        reported: packets,
                        lost,
                    },
                );
                if self.one_way {
                    // An arbitrary clock offset: only changes matter.
                    let owd = 7_000_000 + (self.base_rtt / 2 + self.queue_delay()).as_micros();
                    c.handle_feedback(now, Feedback::OneWayDelay { micros: owd as i64 });
                }
                if t.as_millis().is_multiple_of(500) {
                    c.handle_feedback(
                        now,
                        Feedback::Report {
                            fraction_lost: (congestion_loss + self.random_loss).min(1.0) as f32,
                            rtt: Some(self.base_rtt + self.queue_delay()),
                        },
                    );
                }
                c.handle_timeout(now);
                trace.push((t, c.target_bps(), self.queue_delay(), dropped));
            }
            trace
        }
    }

    fn after(
        trace: &Trace,
        from: Duration,
    ) -> impl Iterator<Item = &(Duration, u64, Duration, f64)> {
        trace.iter().filter(move |s| s.0 >= from)
    }

    fn mean_rate(trace: &Trace, from: Duration) -> f64 {
        let v: Vec<f64> = after(trace, from).map(|s| s.1 as f64).collect();
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn the_rate_settles_under_a_small_uplink_without_queue_overflow() {
        // rural-adsl: 1 Mbit/s, 200 ms of queue, 40 ms RTT, 1 % random loss; the kiosk wants
        // 1.3 Mbit/s.
        let t0 = Instant::now();
        let mut c = RateController::new(ControllerConfig::new(200_000, 1_300_000), t0);
        let mut path = Path::new(1_000_000.0, 200 * MS, 40 * MS, 0.01);
        let trace = path.run(&mut c, t0, Duration::ZERO, Duration::from_secs(60));
        let settle = Duration::from_secs(10);
        let mean = mean_rate(&trace, settle);
        assert!((750_000.0..1_000_000.0).contains(&mean), "mean rate {mean}");
        let dropped: f64 = after(&trace, settle).map(|s| s.3).sum();
        assert_eq!(dropped, 0.0, "the queue overflowed after settling");
        let worst = after(&trace, settle).map(|s| s.2).max().expect("samples");
        assert!(worst < 150 * MS, "queue delay reached {worst:?}");
        assert!(c.stats().decreases >= 1);
    }

    #[test]
    fn the_rate_follows_a_shrinking_then_recovering_link() {
        let t0 = Instant::now();
        let mut c = RateController::new(ControllerConfig::new(150_000, 2_000_000), t0);
        let mut path = Path::new(1_500_000.0, 200 * MS, 80 * MS, 0.0);
        // Round-trip times only (no transport feedback timing), two a second.
        path.one_way = false;
        let s = Duration::from_secs(1);
        path.run(&mut c, t0, Duration::ZERO, 30 * s);
        path.capacity_bps = 500_000.0;
        path.queue_bytes = 500_000.0 / 8.0 * 0.2;
        let shrunk = path.run(&mut c, t0, 30 * s, 30 * s);
        let mean = mean_rate(&shrunk, 45 * s);
        assert!(
            (350_000.0..500_000.0).contains(&mean),
            "after the shrink: {mean}"
        );
        path.capacity_bps = 1_500_000.0;
        path.queue_bytes = 1_500_000.0 / 8.0 * 0.2;
        let recovered = path.run(&mut c, t0, 60 * s, 40 * s);
        let mean = mean_rate(&recovered, 90 * s);
        assert!(mean > 1_100_000.0, "after the recovery: {mean}");
    }

    #[test]
    fn random_loss_is_not_congestion_but_heavy_loss_is() {
        let t0 = Instant::now();
        let mut c = RateController::new(
            ControllerConfig {
                start_bps: 500_000,
                ..ControllerConfig::new(100_000, 1_000_000)
            },
            t0,
        );
        // Plenty of capacity, 3 % random loss: the rate climbs to its maximum.
        let mut path = Path::new(10_000_000.0, 200 * MS, 40 * MS, 0.03);
        path.run(&mut c, t0, Duration::ZERO, Duration::from_secs(30));
        assert_eq!(c.target_bps(), 1_000_000);
        assert_eq!(c.stats().decreases, 0);
        // 20 % loss with no delay signal at all, two runs of the rule in a row: cut.
        for ms in [31_000, 31_200] {
            let now = t0 + Duration::from_millis(ms);
            let lossy = Feedback::Transport {
                reported: 100,
                lost: 20,
            };
            c.handle_feedback(now, lossy);
            c.handle_timeout(now);
        }
        assert_eq!(c.stats().decision, Decision::Decrease);
        assert_eq!(c.target_bps(), 850_000);
    }

    #[test]
    fn remb_caps_the_target_and_outputs_are_only_given_on_real_changes() {
        let t0 = Instant::now();
        let mut c = RateController::new(ControllerConfig::new(100_000, 1_000_000), t0);
        assert_eq!(c.poll_output(), Some(500_000), "starts at half the maximum");
        assert_eq!(c.poll_output(), None);
        c.handle_feedback(t0, Feedback::Remb { bps: 300_000 });
        c.handle_timeout(c.poll_timeout());
        assert_eq!(c.target_bps(), 300_000);
        assert_eq!(c.poll_output(), Some(300_000));
        // Nothing due before the next tick.
        c.handle_timeout(t0 + 250 * MS);
        assert_eq!(c.poll_output(), None);
    }

    #[test]
    fn a_lone_delay_spike_is_not_a_queue_but_a_lasting_one_is() {
        let t0 = Instant::now();
        let mut c = RateController::new(ControllerConfig::new(100_000, 1_000_000), t0);
        let mut t = Duration::ZERO;
        let mut feed = |c: &mut RateController, extra_ms: u64| {
            t += 50 * MS;
            let now = t0 + t;
            let micros = 20_000 + extra_ms as i64 * 1_000;
            c.handle_feedback(now, Feedback::OneWayDelay { micros });
            c.handle_timeout(now);
        };
        for _ in 0..40 {
            feed(&mut c, 0);
        }
        // One feedback 200 ms late (a host that stalled), then normal again.
        feed(&mut c, 200);
        for _ in 0..20 {
            feed(&mut c, 0);
        }
        assert_eq!(c.stats().decreases, 0);
        // A queue of 80 ms that stays: cut.
        for _ in 0..20 {
            feed(&mut c, 80);
        }
        assert_eq!(c.stats().decreases, 1);
    }
}
