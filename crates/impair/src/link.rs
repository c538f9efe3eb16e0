//! One direction of an impaired link, sans-IO: loss, then the rate limit's queue, then
//! propagation delay with jitter and reordering.
//!
//! ```text
//! handle_input(now, len, packet) ─▶ loss ─▶ token bucket + bounded queue ─▶ delay line ─▶ poll_output(now)
//!                                    │            │ (full: dropped)
//!                                    └ lost       └ overflowed
//! ```

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::loss::{Loss, LossState};
use crate::shaper::Shaper;

/// The impairments of one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Which packets are lost (before the queue, like a lossy last mile).
    pub loss: Loss,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay is `delay` plus a uniform draw in `-jitter..=jitter` (never below
    /// zero). Packets keep their order unless [`reorder`](Self::reorder) says otherwise: a
    /// packet whose draw would make it overtake an earlier one waits for it.
    pub jitter: Duration,
    /// Probability that a packet is held back by [`reorder_hold`](Self::reorder_hold) more,
    /// letting the packets behind it overtake it.
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_hold: Duration,
    /// Rate limit in bit/s (`None`: unlimited, no queue).
    pub rate_bps: Option<u64>,
    /// Token bucket depth: how many bytes may leave back to back after an idle period.
    pub burst_bytes: usize,
    /// Queue in front of the rate limit, in bytes; a packet that does not fit is dropped.
    pub queue_bytes: usize,
}

impl Default for LinkConfig {
    /// A clean link: no loss, no delay, no rate limit.
    fn default() -> Self {
        LinkConfig {
            loss: Loss::None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_hold: Duration::from_millis(20),
            rate_bps: None,
            burst_bytes: 1_500,
            queue_bytes: 64 * 1024,
        }
    }
}

impl LinkConfig {
    /// A rate-limited link of `rate_bps` whose queue holds `queue` worth of traffic at that
    /// rate (at least one 1500-byte packet), with a one-packet token bucket.
    pub fn limited(rate_bps: u64, queue: Duration) -> Self {
        LinkConfig {
            rate_bps: Some(rate_bps),
            queue_bytes: ((rate_bps as f64 / 8.0 * queue.as_secs_f64()) as usize).max(1_500),
            ..LinkConfig::default()
        }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), crate::Error> {
        self.loss.validate()?;
        if !(0.0..=1.0).contains(&self.reorder) {
            return Err(crate::Error::InvalidParameter {
                name: "reorder",
                value: self.reorder.to_string(),
                reason: "a probability lies in 0..=1",
            });
        }
        if self.rate_bps == Some(0) {
            return Err(crate::Error::InvalidParameter {
                name: "rate",
                value: "0".into(),
                reason: "a rate limit must be above 0 bit/s",
            });
        }
        if self.queue_bytes < 1_500 {
            return Err(crate::Error::InvalidParameter {
                name: "queue",
                value: self.queue_bytes.to_string(),
                reason: "the queue must hold at least one 1500-byte packet",
            });
        }
        Ok(())
    }
}

/// What happened to a packet given to [`Link::handle_input`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is on its way (queued or in flight).
    Accepted,
    /// The loss model dropped it.
    Lost,
    /// The rate limit's queue was full.
    Overflowed,
}

/// What the link has for the caller now.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<T> {
    /// A packet arrives at the far end now.
    Deliver(T),
    /// Nothing is due before this instant: call [`Link::poll_output`] again then (or when
    /// new input arrives).
    Timeout(Instant),
    /// Nothing is queued or in flight.
    Idle,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets given to the link.
    pub offered: u64,
    /// Bytes given to the link.
    pub offered_bytes: u64,
    /// Packets dropped by the loss model.
    pub lost: u64,
    /// Packets dropped because the queue was full.
    pub overflowed: u64,
    /// Packets delivered.
    pub delivered: u64,
    /// Bytes delivered.
    pub delivered_bytes: u64,
    /// Packets held back so that later ones overtook them.
    pub reordered: u64,
    /// The most bytes ever waiting in the queue.
    pub max_queued_bytes: u64,
}

/// One direction of an impaired link. Generic over the packet type: the link only needs each
/// packet's length, given with it.
///
/// Drive loop: `handle_input` each packet as it arrives, then call `poll_output` until it says
/// `Timeout` or `Idle`, and sleep until that timeout or the next packet.
#[derive(Debug)]
pub struct Link<T> {
    config: LinkConfig,
    rng: StdRng,
    loss: LossState,
    shaper: Option<Shaper<T>>,
    line: BinaryHeap<InFlight<T>>,
    sequence: u64,
    /// Arrival time of the last in-order packet: later ones never arrive before it.
    floor: Option<Instant>,
    stats: LinkStats,
}

impl<T> Link<T> {
    /// A link with these impairments, its random draws seeded by `seed` (same seed, same
    /// input, same output).
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        let shaper = config
            .rate_bps
            .map(|rate| Shaper::new(rate, config.burst_bytes, config.queue_bytes));
        Link {
            config,
            rng: StdRng::seed_from_u64(seed),
            loss: LossState::default(),
            shaper,
            line: BinaryHeap::with_capacity(256),
            sequence: 0,
            floor: None,
            stats: LinkStats::default(),
        }
    }

    /// The impairments in force.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the impairments from `now` on (a link that shrinks or recovers). Packets in
    /// flight keep their arrival times; queued packets drain at the new rate. Removing the
    /// rate limit releases the queue at once.
    pub fn set_config(&mut self, now: Instant, config: LinkConfig) {
        match (config.rate_bps, self.shaper.as_mut()) {
            (Some(rate), Some(_)) => {
                self.move_departed(now);
                if let Some(shaper) = self.shaper.as_mut() {
                    shaper.reconfigure(now, rate, config.burst_bytes, config.queue_bytes);
                }
            }
            (Some(rate), None) => {
                self.shaper = Some(Shaper::new(rate, config.burst_bytes, config.queue_bytes));
            }
            (None, Some(_)) => {
                self.move_departed(now);
                if let Some(mut shaper) = self.shaper.take() {
                    shaper.reconfigure(now, u64::MAX / 2, usize::MAX / 2, usize::MAX / 2);
                    while let Some((_, len, packet)) = shaper.pop_departed(now) {
                        self.propagate(now, len, packet);
                    }
                }
            }
            (None, None) => {}
        }
        self.config = config;
    }

    /// A packet of `len` bytes enters the link at `now`.
    pub fn handle_input(&mut self, now: Instant, len: usize, packet: T) -> Fate {
        self.stats.offered += 1;
        self.stats.offered_bytes += len as u64;
        if self.loss.lose(&self.config.loss, &mut self.rng) {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        self.move_departed(now);
        match self.shaper.as_mut() {
            None => {
                self.propagate(now, len, packet);
                Fate::Accepted
            }
            Some(shaper) => match shaper.offer(now, len, packet) {
                Ok(()) => {
                    let queued = shaper.queued_bytes() as u64;
                    self.stats.max_queued_bytes = self.stats.max_queued_bytes.max(queued);
                    Fate::Accepted
                }
                Err(_) => {
                    self.stats.overflowed += 1;
                    Fate::Overflowed
                }
            },
        }
    }

    /// The next packet that has arrived by `now`, or when to ask again.
    pub fn poll_output(&mut self, now: Instant) -> Output<T> {
        self.move_departed(now);
        if let Some(head) = self.line.peek() {
            if head.at <= now {
                if let Some(flight) = self.line.pop() {
                    self.stats.delivered += 1;
                    self.stats.delivered_bytes += flight.len as u64;
                    return Output::Deliver(flight.packet);
                }
            }
        }
        let line = self.line.peek().map(|f| f.at);
        let queue = self.shaper.as_ref().and_then(Shaper::next_departure);
        match (line, queue) {
            (Some(a), Some(b)) => Output::Timeout(a.min(b)),
            (Some(t), None) | (None, Some(t)) => Output::Timeout(t),
            (None, None) => Output::Idle,
        }
    }

    /// Bytes waiting in the rate limit's queue.
    pub fn queued_bytes(&self) -> usize {
        self.shaper.as_ref().map_or(0, Shaper::queued_bytes)
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Moves every packet that left the rate limit by `now` onto the delay line.
    fn move_departed(&mut self, now: Instant) {
        while let Some((departure, len, packet)) =
            self.shaper.as_mut().and_then(|s| s.pop_departed(now))
        {
            self.propagate(departure, len, packet);
        }
    }

    /// Puts a packet that left the bottleneck at `departure` on the delay line.
    fn propagate(&mut self, departure: Instant, len: usize, packet: T) {
        let mut delay = self.config.delay;
        if !self.config.jitter.is_zero() {
            let j = self.config.jitter.as_secs_f64();
            let offset = self.rng.random_range(-j..=j);
            delay = Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0));
        }
        let held = self.config.reorder > 0.0 && self.rng.random_bool(self.config.reorder);
        let at = if held {
            self.stats.reordered += 1;
            departure + delay + self.config.reorder_hold
        } else {
            let at = self
                .floor
                .map_or(departure + delay, |f| f.max(departure + delay));
            self.floor = Some(at);
            at
        };
        self.sequence += 1;
        self.line.push(InFlight {
            at,
            sequence: self.sequence,
            len,
            packet,
        });
    }
}

/// A packet on the delay line, ordered by arrival time (earliest first), then by entry order.
#[derive(Debug)]
struct InFlight<T> {
    at: Instant,
    sequence: u64,
    len: usize,
    packet: T,
}

impl<T> PartialEq for InFlight<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}

impl<T> Eq for InFlight<T> {}

impl<T> PartialOrd for InFlight<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for InFlight<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest arrival must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `(offset, len)` arrivals (offsets from `t0`, ascending) through `link` with fake
    /// time and returns each delivered packet's (arrival time, index, len). Checks after each
    /// input that the queue stays within its bound.
    fn drive(
        link: &mut Link<usize>,
        t0: Instant,
        arrivals: &[(Duration, usize)],
    ) -> Vec<(Instant, usize, usize)> {
        let mut out = Vec::new();
        // The fake clock only moves forward, to each announced timeout or the next arrival,
        // so every packet is delivered at exactly the time it is due.
        let mut clock = t0;
        let mut deliver_until =
            |link: &mut Link<usize>, clock: &mut Instant, until: Option<Instant>| loop {
                match link.poll_output(*clock) {
                    Output::Deliver(i) => out.push((*clock, i)),
                    Output::Timeout(at) if until.is_none_or(|u| at <= u) => {
                        assert!(at > *clock, "a timeout that is already due");
                        *clock = at;
                    }
                    _ => break,
                }
            };
        for (i, (offset, len)) in arrivals.iter().enumerate() {
            let now = t0 + *offset;
            deliver_until(link, &mut clock, Some(now));
            clock = clock.max(now);
            link.handle_input(now, *len, i);
            assert!(link.queued_bytes() <= link.config().queue_bytes);
        }
        deliver_until(link, &mut clock, None);
        out.into_iter()
            .map(|(at, i)| (at, i, arrivals[i].1))
            .collect()
    }

    fn paced(count: usize, every: Duration, len: usize) -> Vec<(Duration, usize)> {
        (0..count).map(|i| (every * i as u32, len)).collect()
    }

    #[test]
    fn independent_loss_ratio_stays_within_bounds() {
        let config = LinkConfig {
            loss: Loss::independent(0.01),
            ..LinkConfig::default()
        };
        let n = 100_000;
        let mut link = Link::new(config, 7);
        let out = drive(&mut link, Instant::now(), &paced(n, MS, 200));
        let ratio = 1.0 - out.len() as f64 / n as f64;
        // sd of the ratio ~0.0003: ±0.002 fails only if the loss model is wrong.
        assert!((ratio - 0.01).abs() < 0.002, "loss ratio {ratio}");
        assert_eq!(link.stats().lost as usize, n - out.len());
    }

    #[test]
    fn the_rate_limit_is_never_exceeded_and_the_queue_stays_bounded() {
        let rate = 1_000_000;
        let config = LinkConfig::limited(rate, Duration::from_millis(200));
        let burst = config.burst_bytes as f64;
        let t0 = Instant::now();
        // 2 Mbit/s offered for 20 s: 1250-byte packets every 5 ms.
        let mut link = Link::new(config, 1);
        let out = drive(&mut link, t0, &paced(4_000, 5 * MS, 1_250));
        // Every window [t_i, t_j] carries at most the bucket depth plus rate × duration.
        for i in 0..out.len() {
            let mut bytes = 0.0;
            for j in i..out.len() {
                bytes += out[j].2 as f64;
                let allowed = burst + (out[j].0 - out[i].0).as_secs_f64() * rate as f64 / 8.0;
                assert!(
                    bytes <= allowed + 1e-6,
                    "window {i}..={j}: {bytes} > {allowed}"
                );
            }
        }
        // The bottleneck stays busy: it delivers about its rate, and drops the excess.
        let span = (out[out.len() - 1].0 - out[0].0).as_secs_f64();
        let delivered: usize = out.iter().map(|d| d.2).sum();
        let achieved = delivered as f64 * 8.0 / span;
        assert!(achieved > 0.97 * rate as f64, "achieved {achieved} bit/s");
        let stats = link.stats();
        assert!(stats.overflowed > 1_500, "overflowed {}", stats.overflowed);
        assert!(stats.max_queued_bytes <= 25_000);
        // FIFO without jitter: order kept.
        assert!(out.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn delay_and_jitter_follow_their_distribution_and_keep_order() {
        let config = LinkConfig {
            delay: 40 * MS,
            jitter: 30 * MS,
            ..LinkConfig::default()
        };
        let t0 = Instant::now();
        // Sparse packets (100 ms apart): the in-order rule never binds, so each delay is a
        // plain draw of 40 ms ± 30 ms.
        let arrivals = paced(20_000, 100 * MS, 100);
        let mut link = Link::new(config.clone(), 3);
        let out = drive(&mut link, t0, &arrivals);
        assert_eq!(out.len(), arrivals.len());
        let delays: Vec<f64> = out
            .iter()
            .map(|(at, i, _)| (*at - (t0 + arrivals[*i].0)).as_secs_f64() * 1e3)
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!((mean - 40.0).abs() < 0.5, "mean delay {mean} ms");
        assert!(delays.iter().all(|d| (10.0..=70.0).contains(d)));
        // Uniform: the middle half of the range holds half the packets.
        let middle = delays.iter().filter(|d| (25.0..55.0).contains(*d)).count();
        let share = middle as f64 / delays.len() as f64;
        assert!((share - 0.5).abs() < 0.02, "share within ±15 ms: {share}");
        // Dense packets (1 ms apart, far closer than the jitter): still in order.
        let mut link = Link::new(config, 4);
        let out = drive(&mut link, t0, &paced(5_000, MS, 100));
        assert!(out.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn reordering_holds_back_the_configured_share() {
        let config = LinkConfig {
            delay: 10 * MS,
            reorder: 0.05,
            reorder_hold: 20 * MS,
            ..LinkConfig::default()
        };
        let mut link = Link::new(config, 5);
        let n = 40_000;
        let out = drive(&mut link, Instant::now(), &paced(n, MS, 100));
        assert_eq!(out.len(), n);
        // A held packet arrives after packets sent up to 20 ms after it.
        let mut highest = 0;
        let mut late = 0;
        for (_, i, _) in &out {
            if *i < highest {
                late += 1;
            }
            highest = highest.max(*i);
        }
        let share = late as f64 / n as f64;
        assert!((share - 0.05).abs() < 0.005, "late share {share}");
        assert_eq!(link.stats().reordered, late);
    }

    #[test]
    fn same_seed_same_fate_and_a_shrinking_link_takes_effect() {
        let config = LinkConfig {
            loss: Loss::bursty(0.05, 3.0),
            delay: 20 * MS,
            jitter: 5 * MS,
            ..LinkConfig::limited(2_000_000, Duration::from_millis(100))
        };
        let t0 = Instant::now();
        let arrivals = paced(5_000, 2 * MS, 300);
        let a = drive(&mut Link::new(config.clone(), 11), t0, &arrivals);
        let b = drive(&mut Link::new(config.clone(), 11), t0, &arrivals);
        let c = drive(&mut Link::new(config.clone(), 12), t0, &arrivals);
        assert_eq!(a, b);
        assert_ne!(a, c);

        // 1.2 Mbit/s offered; the link drops from 2 Mbit/s to 500 kbit/s after 5 s.
        let mut link = Link::new(config.clone(), 13);
        let first = drive(&mut link, t0, &arrivals[..2_500]);
        let switch = t0 + Duration::from_secs(5);
        link.set_config(
            switch,
            LinkConfig {
                loss: Loss::None,
                ..LinkConfig::limited(500_000, Duration::from_millis(100))
            },
        );
        let later: Vec<_> = arrivals[2_500..].to_vec();
        let second = drive(&mut link, t0, &later);
        assert!(first.len() > 2_000);
        let window: usize = second
            .iter()
            .filter(|d| d.0 >= switch + Duration::from_secs(1))
            .map(|d| d.2)
            .sum();
        let span = (second[second.len() - 1].0 - (switch + Duration::from_secs(1))).as_secs_f64();
        let rate = window as f64 * 8.0 / span;
        assert!(rate <= 500_000.0 * 1.01 && rate > 450_000.0, "rate {rate}");
    }
}
