//! The quality benchmark's report: per profile, what the doctor's side got, as JSON and a
//! table.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::audio::AudioStats;
use super::latency::Percentiles;
use super::video::VideoStats;
use super::QualityOptions;
use crate::report::{utc_now, Machine};

/// One profile against one target.
#[derive(Debug, Clone, Serialize)]
pub struct QualityReport {
    /// The link profile.
    pub profile: String,
    /// The server measured (`cabine`).
    pub target: String,
    /// When the run started (UTC).
    pub date_utc: String,
    /// The machine (load average at the start and end).
    pub machine: Machine,
    /// `/proc/loadavg`'s three averages at the start.
    pub load_average: String,
    /// The command line.
    pub command: String,
    /// Warm-up before the window, seconds.
    pub warmup_s: f64,
    /// The measurement window, seconds.
    pub duration_s: f64,
    /// The receiver's fixed audio jitter buffer, ms.
    pub jitter_buffer_ms: f64,
    /// Tracks the receiver got.
    pub tracks_received: usize,
    /// Audio tracks (stethoscope, microphone): frames played in time, concealment.
    pub audio: BTreeMap<String, AudioStats>,
    /// Cameras (device camera, room camera): freezes, resolution, frame rate.
    pub cameras: BTreeMap<String, VideoStats>,
    /// Glass-to-glass latency per track, ms (video: shown; audio: played).
    pub latency_ms: BTreeMap<String, TrackLatency>,
    /// Whether the room camera degraded before the device camera (`None`: neither did, or a
    /// camera is missing).
    pub room_camera_degraded_first: Option<bool>,
    /// The targets, checked against this run.
    pub targets: Targets,
    /// What each impaired link did (`kiosk`: the cabin's; `doctor`: the doctor's).
    pub links: BTreeMap<String, LinkReport>,
    /// The kiosk's own `--stats-json` (frames, uplink target, congestion decreases).
    pub kiosk: serde_json::Value,
}

/// Latency of one track.
#[derive(Debug, Clone, Serialize)]
pub struct TrackLatency {
    /// Frames shown or played in the window.
    pub received: usize,
    /// Of those, frames matched to the kiosk frame they came from.
    pub matched: usize,
    /// Frames estimated from the last match's send-time line (see `SendLog::follow`).
    pub estimated: usize,
    /// Percentiles over the matched and estimated frames.
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

/// The targets of issue 14 for this profile (`None` where the profile sets none or the figure
/// is missing).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Targets {
    /// Stethoscope frames in time ≥ 99 % (`rural-adsl`, `4g-doctor`), ≥ 97 % (`severe`).
    pub stethoscope_in_time: Option<bool>,
    /// Device camera's longest freeze ≤ 1 s (`rural-adsl`, `4g-doctor`).
    pub device_camera_freeze: Option<bool>,
    /// Room camera degraded before the device camera (when either did).
    pub room_degrades_first: Option<bool>,
    /// Device camera glass-to-glass p95 ≤ 250 ms (`4g-doctor`).
    pub latency_p95: Option<bool>,
}

/// One direction pair of an impaired link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// Client → server: packets offered, lost (loss model), overflowed (queue), delivered.
    pub uplink: [u64; 4],
    /// Server → client, same counters.
    pub downlink: [u64; 4],
}

impl LinkReport {
    /// From a relay's counters.
    pub fn of(s: &cabine_impair::RelayStats) -> LinkReport {
        let c = |l: &cabine_impair::LinkStats| [l.offered, l.lost, l.overflowed, l.delivered];
        LinkReport {
            uplink: c(&s.uplink),
            downlink: c(&s.downlink),
        }
    }
}

impl QualityReport {
    /// An empty report for `opts`, with `tracks` received.
    pub fn new(opts: &QualityOptions, tracks: &usize) -> QualityReport {
        QualityReport {
            profile: opts.profile.name.to_owned(),
            target: "cabine".into(),
            date_utc: utc_now(),
            machine: Machine::here(),
            load_average: String::new(),
            command: opts.command.clone(),
            warmup_s: opts.warmup.as_secs_f64(),
            duration_s: opts.duration.as_secs_f64(),
            jitter_buffer_ms: opts.jitter_buffer.as_secs_f64() * 1000.0,
            tracks_received: *tracks,
            audio: BTreeMap::new(),
            cameras: BTreeMap::new(),
            latency_ms: BTreeMap::new(),
            room_camera_degraded_first: None,
            targets: Targets::default(),
            links: BTreeMap::new(),
            kiosk: serde_json::Value::Null,
        }
    }

    /// Derives the degradation order and checks the targets.
    pub fn finish(&mut self) {
        let room = self.cameras.get("room-camera");
        let device = self.cameras.get("device-camera");
        self.room_camera_degraded_first = match (room, device) {
            (Some(r), Some(d)) => match (r.first_degraded_s, d.first_degraded_s) {
                (None, None) => None,
                (Some(_), None) => Some(true),
                (None, Some(_)) => Some(false),
                (Some(r), Some(d)) => Some(r <= d),
            },
            _ => None,
        };
        let p = self.profile.as_str();
        let min_in_time = match p {
            "rural-adsl" | "4g-doctor" => Some(99.0),
            "severe" => Some(97.0),
            _ => None,
        };
        self.targets = Targets {
            stethoscope_in_time: min_in_time
                .zip(self.audio.get("stethoscope"))
                .map(|(min, s)| s.in_time_pct >= min),
            device_camera_freeze: matches!(p, "rural-adsl" | "4g-doctor")
                .then(|| device.map(|d| d.longest_freeze_ms <= 1000.0))
                .flatten(),
            room_degrades_first: self.room_camera_degraded_first,
            latency_p95: (p == "4g-doctor")
                .then(|| {
                    self.latency_ms
                        .get("device-camera")
                        .filter(|l| l.percentiles.count > 0)
                        .map(|l| l.percentiles.p95 <= 250.0)
                })
                .flatten(),
        };
        self.machine.load_end = crate::report::load_avg();
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut t = format!(
            "quality: profile {} against {}, {} s window after {} s warm-up, audio buffer {} ms\n\
             date {} | {} CPUs ({}) | load {} | {}\n",
            self.profile,
            self.target,
            self.duration_s,
            self.warmup_s,
            self.jitter_buffer_ms,
            self.date_utc,
            self.machine.cpus,
            self.machine.cpu_model,
            self.load_average,
            self.command,
        );
        t.push_str(
            "audio         in time %  by RED  late  lost  concealed %  excess delay p95/p99 ms  latency p50/p95/p99 ms\n",
        );
        for (id, a) in &self.audio {
            let l = self.latency_ms.get(id).map(|l| &l.percentiles);
            t.push_str(&format!(
                "{id:<13} {:>9.2}  {:>6}  {:>4}  {:>4}  {:>11.2}  {:>23}  {}\n",
                a.in_time_pct,
                a.recovered_by_red,
                a.late,
                a.lost,
                a.concealed_pct,
                format!("{:.0}/{:.0}", a.excess_delay_p95_ms, a.excess_delay_p99_ms),
                pct(l)
            ));
        }
        t.push_str("camera         fps   resolution  freezes  frozen s/min  longest ms  latency p50/p95/p99 ms\n");
        for (id, c) in &self.cameras {
            let l = self.latency_ms.get(id).map(|l| &l.percentiles);
            let res = match (c.width, c.height) {
                (Some(w), Some(h)) => format!("{w}x{h}"),
                _ => "-".into(),
            };
            t.push_str(&format!(
                "{id:<13} {:>5.1}  {res:>11}  {:>7}  {:>12.2}  {:>10.0}  {}\n",
                c.fps,
                c.freezes,
                c.freeze_s_per_min,
                c.longest_freeze_ms,
                pct(l)
            ));
        }
        t.push_str(&format!(
            "room camera degraded first: {:?}; targets: {:?}\n",
            self.room_camera_degraded_first, self.targets
        ));
        t
    }

    /// Writes `quality-<profile>.json` and `.txt` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let base = dir.join(format!("quality-{}", self.profile));
        std::fs::write(
            base.with_extension("json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(base.with_extension("txt"), self.table())?;
        Ok(())
    }
}

fn pct(p: Option<&Percentiles>) -> String {
    match p {
        Some(p) if p.count > 0 => format!("{:.0}/{:.0}/{:.0}", p.p50, p.p95, p.p99),
        _ => "-".into(),
    }
}
