//! Audit lines per anonymous source: a refused request without a valid token says nothing
//! about who sent it but its address, and costs the sender nothing, so such refusals are
//! aggregated per source network (IPv4 /24, IPv6 /48) and interval: the first is written, the
//! others of the interval become one summary line with their count. Sources beyond
//! `limits.anonymous_audit_sources` share one bucket, and over the whole node at most
//! `limits.anonymous_audit_lines` such lines are written per interval: beyond, one more line
//! counts the rest. A flood from many addresses then writes a bounded number of lines per
//! interval, so it cannot rotate the accepted events out of the retained audit files.
//!
//! The aggregation is a plain state machine; time is an input:
//!
//! ```text
//! refusal(ip, now) → Write (and maybe the summary of the source's previous interval) | Counted
//! sweep(now)       → summaries of the intervals that ended (the shell ticks it)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A source network: where anonymous refusals are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 /24.
    V4([u8; 3]),
    /// An IPv6 /48 (a site: one client gets a /64 or more of it for free).
    V6([u16; 3]),
    /// Every source beyond the tracked ones.
    Others,
    /// Every source, once the node-wide line budget of the interval is spent.
    Overflow,
}

impl Source {
    /// The network `ip` belongs to (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                Source::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::of(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    Source::V6([s[0], s[1], s[2]])
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4([a, b, c]) => write!(f, "{a}.{b}.{c}.0/24"),
            Source::V6([a, b, c]) => write!(f, "{a:x}:{b:x}:{c:x}::/48"),
            Source::Others => f.write_str("other sources"),
            Source::Overflow => f.write_str("all sources past limits.anonymous_audit_lines"),
        }
    }
}

/// What to do with one anonymous refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Write this refusal's line (the first of its source's interval, within the node-wide
    /// budget).
    pub write: bool,
    /// Not written because the node-wide budget of lines was spent (rather than because its
    /// source already had its line).
    pub capped: bool,
    /// Summaries to write first: the source's previous interval, and the count of the
    /// previous node-wide interval past its budget.
    pub summaries: Vec<Summary>,
}

/// Refusals of one source in one interval that were counted but not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The source network.
    pub source: Source,
    /// Refusals not written.
    pub count: u64,
    /// How long the interval was.
    pub over: Duration,
}

/// The aggregation state.
#[derive(Debug)]
pub struct AnonymousAudit {
    interval: Duration,
    max_sources: usize,
    windows: HashMap<Source, Window>,
    budget: Budget,
}

/// The node-wide line budget of the current interval.
#[derive(Debug)]
struct Budget {
    max: u64,
    start: Instant,
    written: u64,
    /// Refusals (and summarised counts) not written since the budget ran out.
    overflow: u64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    counted: u64,
}

impl AnonymousAudit {
    /// One line per source per `interval`, at most `max_sources` sources apart, and at most
    /// `max_lines` lines per `interval` over all of them (plus the one counting the rest).
    pub fn new(interval: Duration, max_sources: usize, max_lines: usize, now: Instant) -> Self {
        AnonymousAudit {
            interval,
            max_sources: max_sources.max(1),
            windows: HashMap::new(),
            budget: Budget {
                max: max_lines.max(1) as u64,
                start: now,
                written: 0,
                overflow: 0,
            },
        }
    }

    /// An anonymous refusal from `ip` at `now`.
    pub fn refusal(&mut self, ip: IpAddr, now: Instant) -> Admission {
        let mut summaries = Vec::new();
        summaries.extend(self.roll(now));
        let mut source = Source::of(ip);
        if !self.windows.contains_key(&source) && self.windows.len() >= self.max_sources {
            source = Source::Others;
        }
        let interval = self.interval;
        let (write, previous) = match self.windows.get_mut(&source) {
            Some(w) if now.saturating_duration_since(w.start) < interval => {
                w.counted += 1;
                (false, None)
            }
            Some(w) => {
                let summary = (w.counted > 0).then(|| Summary {
                    source,
                    count: w.counted,
                    over: now.saturating_duration_since(w.start),
                });
                *w = Window {
                    start: now,
                    counted: 0,
                };
                (true, summary)
            }
            None => {
                self.windows.insert(
                    source,
                    Window {
                        start: now,
                        counted: 0,
                    },
                );
                (true, None)
            }
        };
        if let Some(s) = previous {
            summaries.extend(self.within_budget(s));
        }
        let capped = write && !self.take();
        if capped {
            self.budget.overflow += 1;
        }
        Admission {
            write: write && !capped,
            capped,
            summaries,
        }
    }

    /// Ends the intervals over at `now` (all of them with `all`, at shutdown): their summaries,
    /// and the sources forgotten.
    pub fn sweep(&mut self, now: Instant, all: bool) -> Vec<Summary> {
        let interval = self.interval;
        let mut out: Vec<Summary> = self.roll(now).into_iter().collect();
        let mut ended = Vec::new();
        self.windows.retain(|source, w| {
            let over = now.saturating_duration_since(w.start);
            if !all && over < interval {
                return true;
            }
            if w.counted > 0 {
                ended.push(Summary {
                    source: *source,
                    count: w.counted,
                    over,
                });
            }
            false
        });
        for s in ended {
            out.extend(self.within_budget(s));
        }
        if all {
            out.extend(self.overflow_summary(now));
        }
        out
    }

    /// Starts a new node-wide interval when the current one is over: the count of what its
    /// budget left unwritten, as one line outside the budget.
    fn roll(&mut self, now: Instant) -> Option<Summary> {
        if now.saturating_duration_since(self.budget.start) < self.interval {
            return None;
        }
        let summary = self.overflow_summary(now);
        self.budget.start = now;
        self.budget.written = 0;
        summary
    }

    fn overflow_summary(&mut self, now: Instant) -> Option<Summary> {
        let count = std::mem::take(&mut self.budget.overflow);
        (count > 0).then(|| Summary {
            source: Source::Overflow,
            count,
            over: now.saturating_duration_since(self.budget.start),
        })
    }

    /// A summary line if the budget allows it, else its count joins the overflow.
    fn within_budget(&mut self, s: Summary) -> Option<Summary> {
        if self.take() {
            Some(s)
        } else {
            self.budget.overflow += s.count;
            None
        }
    }

    /// Takes one line from the budget.
    fn take(&mut self) -> bool {
        if self.budget.written < self.budget.max {
            self.budget.written += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_line_then_a_count_per_source_and_interval() {
        let t0 = Instant::now();
        let mut a = AnonymousAudit::new(Duration::from_secs(60), 2, 100, t0);
        assert!(a.refusal(ip("10.0.0.1"), t0).write);
        for i in 0..1000 {
            let r = a.refusal(
                ip(&format!("10.0.0.{}", i % 250)),
                t0 + Duration::from_secs(1),
            );
            assert!(!r.write && r.summaries.is_empty());
        }
        // Another /24 is its own source; a third one goes to the shared bucket.
        assert!(a.refusal(ip("10.0.1.1"), t0).write);
        assert!(a.refusal(ip("192.168.0.1"), t0).write);
        assert!(!a.refusal(ip("172.16.0.1"), t0).write);
        // The next interval: a line, and the previous interval's count first.
        let r = a.refusal(ip("10.0.0.9"), t0 + Duration::from_secs(61));
        assert!(r.write);
        let s = r.summaries.into_iter().next().unwrap();
        assert_eq!(
            (s.source.to_string().as_str(), s.count),
            ("10.0.0.0/24", 1000)
        );
        let mut swept = a.sweep(t0 + Duration::from_secs(62), false);
        swept.sort_by_key(|s| s.count);
        assert_eq!(swept.len(), 1, "{swept:?}");
        assert_eq!(swept[0].source, Source::Others);
        assert!(a.sweep(t0 + Duration::from_secs(62), true).is_empty());
    }

    #[test]
    fn a_node_wide_budget_of_lines_then_one_count() {
        let t0 = Instant::now();
        let mut a = AnonymousAudit::new(Duration::from_secs(60), 10_000, 10, t0);
        let mut written = 0;
        for n in 0..1000u32 {
            let r = a.refusal(ip(&format!("10.{}.{}.1", n / 256, n % 256)), t0);
            written += usize::from(r.write) + r.summaries.len();
            assert_eq!(r.capped, n >= 10);
        }
        assert_eq!(written, 10);
        // The next interval starts with the count of what the last one left out.
        let r = a.refusal(ip("10.200.0.1"), t0 + Duration::from_secs(60));
        assert!(r.write);
        assert_eq!(r.summaries.len(), 1);
        assert_eq!(r.summaries[0].source, Source::Overflow);
        assert_eq!(r.summaries[0].count, 990);
        // Per-source summaries are lines too: within the budget, or counted.
        let swept = a.sweep(t0 + Duration::from_secs(200), true);
        assert!(swept.len() <= 10, "{swept:?}");
    }

    #[test]
    fn ipv6_by_48_and_mapped_v4_as_v4() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2:3:4:5:6")).to_string(),
            "2001:db8:1::/48"
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:ffff::1")),
            Source::of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:1.2.3.4")),
            Source::of(ip("1.2.3.200"))
        );
    }
}
