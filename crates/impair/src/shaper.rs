//! The rate limit of a link: a token bucket in front of a bounded FIFO queue. A packet that
//! does not fit in the queue is dropped (tail drop), like a router's interface buffer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A token bucket draining a byte-bounded queue. Sans-IO: every call takes the time.
#[derive(Debug)]
pub(crate) struct Shaper<T> {
    rate_bps: u64,
    burst_bytes: f64,
    limit_bytes: usize,
    queue: VecDeque<(usize, T)>,
    queued_bytes: usize,
    /// Tokens (bytes) available at `at`.
    tokens: f64,
    at: Option<Instant>,
}

impl<T> Shaper<T> {
    /// A shaper sending at most `rate_bps` on average, `burst_bytes` at once, holding at most
    /// `limit_bytes` waiting.
    pub(crate) fn new(rate_bps: u64, burst_bytes: usize, limit_bytes: usize) -> Self {
        Shaper {
            rate_bps: rate_bps.max(1),
            burst_bytes: burst_bytes.max(1) as f64,
            limit_bytes,
            // Room for a full queue of small packets, so steady state never allocates.
            queue: VecDeque::with_capacity(limit_bytes / 64 + 1),
            queued_bytes: 0,
            tokens: burst_bytes.max(1) as f64,
            at: None,
        }
    }

    /// Changes the rate, burst and queue limit from `now` on. Packets already queued stay
    /// queued (a shrinking queue only refuses new ones until it has drained).
    pub(crate) fn reconfigure(
        &mut self,
        now: Instant,
        rate_bps: u64,
        burst_bytes: usize,
        limit_bytes: usize,
    ) {
        self.refill(now);
        self.rate_bps = rate_bps.max(1);
        self.burst_bytes = burst_bytes.max(1) as f64;
        self.tokens = self.tokens.min(self.burst_bytes);
        self.limit_bytes = limit_bytes;
    }

    /// Queues a packet of `len` bytes arriving at `now`; gives it back if the queue is full.
    pub(crate) fn offer(&mut self, now: Instant, len: usize, item: T) -> Result<(), T> {
        if self.queue.is_empty() {
            self.refill(now);
        }
        if self.queued_bytes + len > self.limit_bytes {
            return Err(item);
        }
        self.queued_bytes += len;
        self.queue.push_back((len, item));
        Ok(())
    }

    /// The time the head of the queue leaves, if anything is queued.
    pub(crate) fn next_departure(&self) -> Option<Instant> {
        let (len, _) = self.queue.front()?;
        let at = self.at?;
        let missing = self.need(*len) - self.tokens;
        if missing <= 0.0 {
            return Some(at);
        }
        let secs = missing * 8.0 / self.rate_bps as f64;
        // Rounded up, so the bucket really holds the tokens at that instant.
        Some(at + Duration::from_nanos((secs * 1e9).ceil() as u64))
    }

    /// Takes the head of the queue if it has left by `now`, with its departure time.
    pub(crate) fn pop_departed(&mut self, now: Instant) -> Option<(Instant, usize, T)> {
        let departure = self.next_departure()?;
        if departure > now {
            return None;
        }
        self.refill(departure);
        let (len, item) = self.queue.pop_front()?;
        // The whole size is charged: a packet larger than the bucket leaves the bucket in
        // debt, which holds the next ones back, so the long-run rate stays exact.
        self.tokens -= len as f64;
        self.queued_bytes -= len;
        Some((departure, len, item))
    }

    /// Bytes waiting in the queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Tokens the bucket must hold for a packet to leave: its size, capped at the bucket depth
    /// so that a packet larger than the burst can still leave (when the bucket is full).
    fn need(&self, len: usize) -> f64 {
        (len as f64).min(self.burst_bytes)
    }

    fn refill(&mut self, now: Instant) {
        let Some(at) = self.at else {
            self.at = Some(now);
            return;
        };
        if now <= at {
            return;
        }
        let earned = (now - at).as_secs_f64() * self.rate_bps as f64 / 8.0;
        self.tokens = (self.tokens + earned).min(self.burst_bytes);
        self.at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_an_idle_bucket_sends_its_burst_at_once() {
        let t0 = Instant::now();
        let mut s = Shaper::new(8_000, 2_000, 3_000);
        for i in 0..3 {
            assert!(s.offer(t0, 1_000, i).is_ok());
        }
        assert_eq!(s.offer(t0, 1, 9), Err(9));
        // Two packets leave at once (2 kB burst), the third 1 s later (8 kbit/s = 1 kB/s).
        assert_eq!(s.pop_departed(t0).map(|d| d.2), Some(0));
        assert_eq!(s.pop_departed(t0).map(|d| d.2), Some(1));
        assert_eq!(s.pop_departed(t0), None);
        assert_eq!(s.next_departure(), Some(t0 + Duration::from_secs(1)));
        let (at, _, item) = s.pop_departed(t0 + Duration::from_secs(5)).expect("left");
        assert_eq!((at, item), (t0 + Duration::from_secs(1), 2));
        assert_eq!(s.queued_bytes(), 0);
    }

    #[test]
    fn a_packet_larger_than_the_bucket_leaves_it_in_debt() {
        let t0 = Instant::now();
        let mut s = Shaper::new(8_000, 1_500, 20_000);
        assert!(s.offer(t0, 10_000, 'a').is_ok());
        assert!(s.offer(t0, 1_000, 'b').is_ok());
        assert_eq!(s.pop_departed(t0).map(|d| d.2), Some('a'));
        // 1 kB/s: 8.5 kB of debt plus 1 kB for the next packet.
        assert_eq!(s.next_departure(), Some(t0 + Duration::from_millis(9_500)));
    }
}
