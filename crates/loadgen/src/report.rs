//! What a run writes: JSON (every figure), a readable table, and an SVG plot per scenario.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::scenario::{Measurement, Ramp};
use crate::target::Kind;

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it started (UTC, ISO 8601).
    pub date_utc: String,
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// One per scenario × target.
    pub runs: Vec<Run>,
    /// Cabine against the baselines.
    pub ratios: Vec<Ratio>,
}

/// Machine facts.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// 1-minute load average at the start and at the end of the run.
    pub load_start: f64,
    /// At the end.
    pub load_end: f64,
}

/// One scenario against one target.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Scenario name.
    pub scenario: String,
    /// Target.
    pub target: Kind,
    /// Fixed-load measurement (non-ramp scenarios).
    pub measurement: Option<Measurement>,
    /// Ramp outcome.
    pub ramp: Option<Ramp>,
    /// Why the run could not be done.
    pub error: Option<String>,
}

/// Cabine / baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Scenario.
    pub scenario: String,
    /// Baseline target.
    pub baseline: Kind,
    /// Cabine CPU per forwarded packet / baseline's.
    pub cpu_per_packet: Option<f64>,
    /// Cabine p99 one-way latency / baseline's.
    pub p99_latency: Option<f64>,
    /// Cabine capacity / baseline's (ramp).
    pub capacity: Option<f64>,
}

impl Machine {
    /// Reads /proc/cpuinfo and /proc/loadavg.
    pub fn here() -> Machine {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = info
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            load_start: load_avg(),
            load_end: 0.0,
        }
    }
}

/// The 1-minute load average.
pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl Report {
    /// Computes Cabine/baseline ratios for every scenario run against both.
    pub fn compute_ratios(&mut self) {
        let mut ratios = Vec::new();
        for cab in self.runs.iter().filter(|r| r.target == Kind::Cabine) {
            for base in self
                .runs
                .iter()
                .filter(|r| r.target != Kind::Cabine && r.scenario == cab.scenario)
            {
                let ratio = |a: f64, b: f64| (a > 0.0 && b > 0.0).then(|| a / b);
                let (cm, bm) = (cab.headline(), base.headline());
                let (cpu, p99) = match (cm, bm) {
                    (Some(c), Some(b)) => (
                        ratio(c.server_cpu_us_per_packet, b.server_cpu_us_per_packet),
                        ratio(c.overall.latency_us_p99, b.overall.latency_us_p99),
                    ),
                    _ => (None, None),
                };
                let capacity = match (&cab.ramp, &base.ramp) {
                    (Some(c), Some(b)) => ratio(c.capacity as f64, b.capacity as f64),
                    _ => None,
                };
                ratios.push(Ratio {
                    scenario: cab.scenario.clone(),
                    baseline: base.target,
                    cpu_per_packet: cpu,
                    p99_latency: p99,
                    capacity,
                });
            }
        }
        self.ratios = ratios;
    }

    /// The readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let m = &self.machine;
        let _ = writeln!(
            t,
            "{}  {} × {}  load {:.2} → {:.2}\n{}\n",
            self.date_utc, m.cpus, m.cpu_model, m.load_start, m.load_end, self.command
        );
        let _ = writeln!(
            t,
            "{:<14} {:<7} {:>5} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7} {:>9} {:>8} {:>9} {:>8} {:>9} {:>8} {:>8}",
            "scenario", "target", "cons", "egress/s", "p50 µs", "p99 µs", "p99.9 µs", "jit µs",
            "loss %", "sfu p50", "sfu p99", "cpu µs/pk", "srv %", "pk/s/core", "MiB/cons", "gen %"
        );
        for r in &self.runs {
            if let Some(e) = &r.error {
                let _ = writeln!(t, "{:<14} {:<7} error: {e}", r.scenario, r.target.name());
                continue;
            }
            let rows: Vec<&Measurement> = match (&r.measurement, &r.ramp) {
                (Some(m), _) => vec![m],
                (None, Some(ramp)) => ramp.stages.iter().collect(),
                _ => Vec::new(),
            };
            for m in rows {
                let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
                let _ = writeln!(
                    t,
                    "{:<14} {:<7} {:>5} {:>9.0} {:>8.0} {:>8.0} {:>9.0} {:>8.0} {:>7.3} {:>9} {:>8} {:>9.2} {:>8.0} {:>9.0} {:>8.2} {:>8.0}",
                    r.scenario,
                    r.target.name(),
                    m.consultations,
                    m.egress_pps,
                    m.overall.latency_us_p50,
                    m.overall.latency_us_p99,
                    m.overall.latency_us_p999,
                    m.overall.jitter_us_mean,
                    m.overall.loss * 100.0,
                    opt(m.sfu_delay_us_p50),
                    opt(m.sfu_delay_us_p99),
                    m.server_cpu_us_per_packet,
                    m.server_cores * 100.0,
                    m.egress_pps_per_core,
                    m.server_rss_bytes_per_consultation / 1_048_576.0,
                    m.generator_cores * 100.0,
                );
            }
            if let Some(m) = r.headline() {
                let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
                let _ = writeln!(
                    t,
                    "{:<14} {:<7} first media after setup: p50 {} ms, p99 {} ms ({} receivers)",
                    "",
                    "",
                    opt(m.first_media_ms_p50),
                    opt(m.first_media_ms_p99),
                    m.first_media_peers,
                );
                let threads: Vec<String> = m
                    .server_threads
                    .iter()
                    .map(|(n, c)| format!("{n} {:.0}%", c * 100.0))
                    .collect();
                let _ = writeln!(
                    t,
                    "{:<14} {:<7} busiest threads: {}",
                    "",
                    "",
                    threads.join(", ")
                );
            }
            if let Some(ramp) = &r.ramp {
                let _ = writeln!(
                    t,
                    "{:<14} {:<7} capacity {} consultations ({})",
                    r.scenario,
                    r.target.name(),
                    ramp.capacity,
                    ramp.stopped_because
                );
            }
        }
        let fixed: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.measurement.is_some())
            .collect();
        if !fixed.is_empty() {
            let _ = writeln!(
                t,
                "\nper stream class (p50 / p99 / p99.9 µs, jitter µs, loss %):"
            );
            for r in fixed {
                let Some(m) = &r.measurement else { continue };
                for (class, s) in &m.by_class {
                    let _ = writeln!(
                        t,
                        "  {:<14} {:<7} {:<14} {:>7.0} {:>7.0} {:>8.0}  {:>6.0}  {:>6.3}  ({} streams, {} packets)",
                        r.scenario,
                        r.target.name(),
                        format!("{class:?}"),
                        s.latency_us_p50,
                        s.latency_us_p99,
                        s.latency_us_p999,
                        s.jitter_us_mean,
                        s.loss * 100.0,
                        s.streams,
                        s.packets
                    );
                }
            }
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(
                t,
                "\nratios (Cabine / baseline; below 1 means Cabine is lower):"
            );
            for r in &self.ratios {
                let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
                let _ = writeln!(
                    t,
                    "  {:<14} vs {:<7} cpu/packet {:>6}  p99 latency {:>6}  capacity {:>6}",
                    r.scenario,
                    r.baseline.name(),
                    f(r.cpu_per_packet),
                    f(r.p99_latency),
                    f(r.capacity)
                );
            }
        }
        t
    }

    /// Writes `report.json`, `report.txt` and one `<scenario>.svg` per scenario into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.txt"), self.table())?;
        let mut scenarios: Vec<&str> = self.runs.iter().map(|r| r.scenario.as_str()).collect();
        scenarios.dedup();
        for s in scenarios {
            let runs: Vec<&Run> = self.runs.iter().filter(|r| r.scenario == s).collect();
            plot(&dir.join(format!("{s}.svg")), s, &runs)?;
        }
        Ok(())
    }
}

impl Run {
    /// The measurement ratios compare: the fixed-load one, or the ramp's last passing stage.
    pub fn headline(&self) -> Option<&Measurement> {
        if let Some(m) = &self.measurement {
            return Some(m);
        }
        let ramp = self.ramp.as_ref()?;
        ramp.stages
            .iter()
            .rev()
            .find(|m| m.consultations <= ramp.capacity)
            .or(ramp.stages.first())
    }
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// Ramp: one-way latency percentiles against consultations, per target. Fixed load: the latency
/// distribution (CDF), per target.
fn plot(path: &Path, scenario: &str, runs: &[&Run]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let is_ramp = runs.iter().any(|r| r.ramp.is_some());
    let err = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("plot {scenario}: {e}");
    if is_ramp {
        let mut max_x = 1.0f64;
        let mut max_y = 10.0f64;
        for r in runs {
            for m in r.ramp.iter().flat_map(|x| &x.stages) {
                max_x = max_x.max(m.consultations as f64);
                max_y = max_y.max(m.overall.latency_us_p999);
            }
        }
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{scenario}: one-way latency vs load"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max_x * 1.05, (1f64..max_y * 1.5).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("concurrent consultations")
            .y_desc("latency (µs, log)")
            .draw()
            .map_err(err)?;
        for (i, r) in runs.iter().enumerate() {
            let Some(ramp) = &r.ramp else { continue };
            let color = COLORS[i % COLORS.len()];
            type Pick = fn(&Measurement) -> f64;
            let series: [(&str, Pick, u32); 3] = [
                ("p50", |m| m.overall.latency_us_p50, 1),
                ("p99", |m| m.overall.latency_us_p99, 2),
                ("p99.9", |m| m.overall.latency_us_p999, 3),
            ];
            for (name, pick, width) in series {
                let pts: Vec<(f64, f64)> = ramp
                    .stages
                    .iter()
                    .map(|m| (m.consultations as f64, pick(m).max(1.0)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))
                    .map_err(err)?
                    .label(format!("{} {name}", r.target.name()))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
                    });
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                    .map_err(err)?;
            }
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;
    } else {
        let mut max_x = 10.0f64;
        for r in runs {
            for (_, us) in r.measurement.iter().flat_map(|m| &m.latency_cdf) {
                max_x = max_x.max(*us);
            }
        }
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{scenario}: one-way latency distribution"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((1f64..max_x * 1.5).log_scale(), 0f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("one-way latency (µs, log)")
            .y_desc("fraction of packets")
            .draw()
            .map_err(err)?;
        for (i, r) in runs.iter().enumerate() {
            let Some(m) = &r.measurement else { continue };
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    m.latency_cdf.iter().map(|&(q, us)| (us.max(1.0), q)),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!(
                    "{} ({} consultations)",
                    r.target.name(),
                    m.consultations
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_date_is_iso() {
        let d = super::utc_now();
        assert_eq!(d.len(), 20);
        assert!(d.starts_with("20") && d.ends_with('Z'));
    }
}
