//! The queue's counters and their Prometheus collector: `cabine_queue_waiting` (gauge, as of
//! the last sweep), `cabine_queue_tickets_total{outcome}` (created, taken, cancelled, expired),
//! `cabine_queue_refused_total{limit="max_waiting"}`, `cabine_queue_unanswered_total`, and
//! `cabine_queue_wait_seconds` (histogram of the waits until taken). No identity, ticket or
//! room in any label.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};

/// Upper bounds of the wait histogram, seconds.
pub const WAIT_BOUNDS_S: [u64; 9] = [30, 60, 120, 300, 600, 900, 1200, 1800, 3600];

/// The queue's counters on this node (the gauge is the service's, as this node last swept).
#[derive(Debug, Default)]
pub struct QueueStats {
    created: AtomicU64,
    taken: AtomicU64,
    cancelled: AtomicU64,
    expired: AtomicU64,
    refused: AtomicU64,
    refused_records: AtomicU64,
    unanswered: AtomicU64,
    waiting: AtomicU64,
    /// Waits until taken, per bucket of [`WAIT_BOUNDS_S`] (the last: above).
    wait_buckets: [AtomicU64; WAIT_BOUNDS_S.len() + 1],
    wait_sum_ms: AtomicU64,
}

impl QueueStats {
    pub(crate) fn count_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_expired(&self) {
        self.expired.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_refused_records(&self) {
        self.refused_records.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_unanswered(&self) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_waiting(&self, n: usize) {
        self.waiting
            .store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn count_taken(&self, waited: Duration) {
        self.taken.fetch_add(1, Ordering::Relaxed);
        let s = waited.as_secs();
        let i = WAIT_BOUNDS_S
            .iter()
            .position(|b| s < *b)
            .unwrap_or(WAIT_BOUNDS_S.len());
        self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.wait_sum_ms.fetch_add(
            u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Tickets by outcome since start (`created`, `taken`, `cancelled`, `expired`).
    pub fn tickets(&self) -> [(&'static str, u64); 4] {
        [
            ("created", self.created.load(Ordering::Relaxed)),
            ("taken", self.taken.load(Ordering::Relaxed)),
            ("cancelled", self.cancelled.load(Ordering::Relaxed)),
            ("expired", self.expired.load(Ordering::Relaxed)),
        ]
    }

    /// Tickets refused by `queue.max_waiting`.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Tickets refused by `queue.max_records`.
    pub fn refused_records(&self) -> u64 {
        self.refused_records.load(Ordering::Relaxed)
    }

    /// Tickets flagged as unanswered.
    pub fn unanswered(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// Tickets waiting as of the last sweep.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Exposes [`QueueStats`] on the metrics registry.
pub struct QueueCollector {
    stats: Arc<QueueStats>,
    descs: Vec<Desc>,
}

impl QueueCollector {
    /// A collector of `stats`.
    pub fn new(stats: Arc<QueueStats>) -> Result<QueueCollector, String> {
        let d = |name: &str, help: &str, labels: &[&str]| {
            Desc::new(
                name.into(),
                help.into(),
                labels.iter().map(|l| (*l).to_owned()).collect(),
                HashMap::new(),
            )
            .map_err(|e| e.to_string())
        };
        Ok(QueueCollector {
            stats,
            descs: vec![
                d(
                    "cabine_queue_waiting",
                    "Tickets waiting in the walk-in queue (service-wide, at this node's last sweep)",
                    &[],
                )?,
                d(
                    "cabine_queue_tickets_total",
                    "Queue tickets by outcome on this node (created, taken, cancelled, expired)",
                    &["outcome"],
                )?,
                d(
                    "cabine_queue_refused_total",
                    "Queue tickets refused by a limit (queue.max_waiting, queue.max_records)",
                    &["limit"],
                )?,
                d(
                    "cabine_queue_unanswered_total",
                    "Tickets flagged to operators as unanswered (queue.unanswered_after)",
                    &[],
                )?,
                d(
                    "cabine_queue_wait_seconds",
                    "Time tickets waited until a doctor took them",
                    &[],
                )?,
            ],
        })
    }
}

impl Collector for QueueCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = &self.stats;
        let family = |desc: &Desc, kind: MetricType, metrics: Vec<prometheus::proto::Metric>| {
            let mut mf = MetricFamily::default();
            mf.set_name(desc.fq_name.clone());
            mf.set_help(desc.help.clone());
            mf.set_field_type(kind);
            for m in metrics {
                mf.mut_metric().push(m);
            }
            mf
        };
        let label = |name: &str, value: &str| {
            let mut l = prometheus::proto::LabelPair::default();
            l.set_name(name.to_owned());
            l.set_value(value.to_owned());
            l
        };
        let gauge = |v: u64| {
            let mut g = prometheus::proto::Gauge::default();
            g.set_value(v as f64);
            let mut m = prometheus::proto::Metric::default();
            m.set_gauge(g);
            m
        };
        let counter = |v: u64, labels: Vec<prometheus::proto::LabelPair>| {
            let mut c = prometheus::proto::Counter::default();
            c.set_value(v as f64);
            let mut m = prometheus::proto::Metric::default();
            m.set_counter(c);
            m.set_label(labels);
            m
        };
        let tickets = s
            .tickets()
            .iter()
            .map(|(o, v)| counter(*v, vec![label("outcome", o)]))
            .collect();
        let mut hist = prometheus::proto::Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(WAIT_BOUNDS_S.len());
        for (i, bound) in WAIT_BOUNDS_S.iter().enumerate() {
            cumulative += s.wait_buckets[i].load(Ordering::Relaxed);
            let mut b = prometheus::proto::Bucket::default();
            b.set_upper_bound(*bound as f64);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let total = cumulative + s.wait_buckets[WAIT_BOUNDS_S.len()].load(Ordering::Relaxed);
        hist.set_bucket(buckets);
        hist.set_sample_count(total);
        hist.set_sample_sum(s.wait_sum_ms.load(Ordering::Relaxed) as f64 / 1e3);
        let mut h = prometheus::proto::Metric::default();
        h.set_histogram(hist);
        vec![
            family(&self.descs[0], MetricType::GAUGE, vec![gauge(s.waiting())]),
            family(&self.descs[1], MetricType::COUNTER, tickets),
            family(
                &self.descs[2],
                MetricType::COUNTER,
                vec![
                    counter(s.refused(), vec![label("limit", "max_waiting")]),
                    counter(s.refused_records(), vec![label("limit", "max_records")]),
                ],
            ),
            family(
                &self.descs[3],
                MetricType::COUNTER,
                vec![counter(s.unanswered(), vec![])],
            ),
            family(&self.descs[4], MetricType::HISTOGRAM, vec![h]),
        ]
    }
}
