//! Simulated medical devices of a teleconsultation cabin: pulse oximeter, ECG, thermometer,
//! blood pressure cuff and scale.
//!
//! A sans-IO state machine: time is an input (`now: Instant`), nothing here sleeps, spawns or
//! reads a clock, and the outputs depend only on the configuration (seed, heart rate…), the
//! times given and the commands received. The shell drives it like this:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use cabine_kiosk::devices::{DeviceOutput, Devices, DevicesConfig};
//!
//! let start = Instant::now();
//! let mut devices = Devices::new(DevicesConfig::new(42, 72.0), start).expect("valid config");
//! let mut now = start;
//! while now < start + Duration::from_secs(2) {
//!     for output in devices.poll(now) {
//!         match output {
//!             DeviceOutput::Measurement(m) => println!("{:?} = {:?}", m.device, m.values),
//!             DeviceOutput::Waveform(w) => assert!(w.duration() <= Duration::from_millis(40)),
//!             DeviceOutput::Status(s) => println!("{:?} is {:?}", s.device, s.state),
//!         }
//!     }
//!     now = devices.poll_timeout(); // a real shell sleeps until then
//! }
//! ```
//!
//! Values carry their LOINC / IEEE 11073 MDC codes and UCUM units ([`codes`]); waveforms come
//! in chunks of 20–40 ms of int16 samples with a scale and offset (physical value = offset +
//! scale × sample, as in FHIR SampledData). The types are independent of any wire format; the
//! telemetry client maps them to its frames.

pub mod codes;
mod command;
mod heart;
mod noise;

use std::time::{Duration, Instant};

pub use codes::Code;
pub use command::DeviceCommand;
pub use heart::{
    ecg_mv, heart_sound_delays, pleth, Beat, Heart, Lead, BREATH_PERIOD_S, PULSE_TRANSIT_S,
};

use noise::Rng;

/// Identifies one channel of one device (the telemetry channel id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl ChannelId {
    /// Pulse oximeter readings (SpO2 and pulse rate), one per second.
    pub const OXIMETER: ChannelId = ChannelId(1);
    /// Pulse oximeter plethysmogram, 75 Hz.
    pub const PLETH: ChannelId = ChannelId(2);
    /// ECG, 500 Hz, 1 to 3 leads.
    pub const ECG: ChannelId = ChannelId(3);
    /// Thermometer readings.
    pub const THERMOMETER: ChannelId = ChannelId(4);
    /// Blood pressure cuff: readings on command (`start_measurement`).
    pub const BP_CUFF: ChannelId = ChannelId(5);
    /// Scale readings.
    pub const SCALE: ChannelId = ChannelId(6);
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The kind of device behind a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Pulse oximeter (SpO2, pulse rate, pleth).
    PulseOximeter,
    /// Electrocardiograph.
    Ecg,
    /// Thermometer.
    Thermometer,
    /// Blood pressure cuff.
    BpCuff,
    /// Scale.
    Scale,
}

impl DeviceKind {
    /// A stable lower-case name (`pulse_oximeter`, `ecg`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::PulseOximeter => "pulse_oximeter",
            DeviceKind::Ecg => "ecg",
            DeviceKind::Thermometer => "thermometer",
            DeviceKind::BpCuff => "bp_cuff",
            DeviceKind::Scale => "scale",
        }
    }
}

/// How a channel's data travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// One reading at a time ([`Measurement`]).
    Measurement,
    /// A sampled signal ([`WaveformChunk`]).
    Waveform,
}

/// Description of one channel: what a telemetry channel declaration says.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelInfo {
    /// The channel id.
    pub id: ChannelId,
    /// Measurement or waveform.
    pub kind: ChannelKind,
    /// The device.
    pub device: DeviceKind,
    /// The main code of the channel (the first lead for an ECG).
    pub code: Code,
    /// Samples per second per lead (waveforms only).
    pub sample_rate_hz: Option<f64>,
    /// Lead names (waveforms only), in the order samples are interleaved.
    pub leads: Vec<&'static str>,
    /// A human label.
    pub label: &'static str,
    /// Commands the device accepts.
    pub commands: Vec<&'static str>,
}

/// One coded value of a measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Value {
    /// What the value is, and its unit.
    pub code: Code,
    /// The value, in `code.unit`.
    pub value: f64,
}

/// Quality of a reading as the device reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeasurementStatus {
    /// A good reading.
    Valid,
    /// A doubtful reading (e.g. motion artefact).
    Questionable,
}

/// One reading of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The channel.
    pub channel: ChannelId,
    /// The device.
    pub device: DeviceKind,
    /// 1, 2, 3… per channel: readings are idempotent by (channel, seq).
    pub seq: u64,
    /// When the device took the reading.
    pub captured: Instant,
    /// The values (a blood pressure reading has several).
    pub values: Vec<Value>,
    /// Quality of the reading.
    pub status: MeasurementStatus,
}

impl Measurement {
    /// The value with this code, if present.
    pub fn value(&self, code: &Code) -> Option<f64> {
        self.values
            .iter()
            .find(|v| v.code.mdc == code.mdc)
            .map(|v| v.value)
    }
}

/// A chunk (20–40 ms) of a sampled signal.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveformChunk {
    /// The channel.
    pub channel: ChannelId,
    /// The device.
    pub device: DeviceKind,
    /// 1, 2, 3… per channel; a jump means chunks were skipped (see
    /// [`DevicesConfig::max_backlog`]).
    pub seq: u64,
    /// Capture time of the first sample.
    pub first_sample: Instant,
    /// Samples per second per lead.
    pub sample_rate_hz: f64,
    /// Lead names; samples are interleaved in this order.
    pub leads: &'static [&'static str],
    /// Physical value = `offset` + `scale` × sample, in the channel's unit.
    pub scale: f64,
    /// See [`scale`](Self::scale).
    pub offset: f64,
    /// Interleaved samples: sample 0 of every lead, then sample 1…
    pub samples: Vec<i16>,
}

impl WaveformChunk {
    /// Samples per lead in this chunk.
    pub fn frames(&self) -> usize {
        self.samples.len() / self.leads.len().max(1)
    }

    /// The time this chunk covers.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.frames() as f64 / self.sample_rate_hz)
    }

    /// The physical value of sample `frame` of lead number `lead`.
    pub fn value(&self, frame: usize, lead: usize) -> Option<f64> {
        let i = frame * self.leads.len() + lead;
        (lead < self.leads.len())
            .then(|| self.samples.get(i))
            .flatten()
            .map(|&s| self.offset + self.scale * f64::from(s))
    }
}

/// A device's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// Connected and ready.
    Attached,
    /// Disconnected.
    Detached,
    /// Taking a measurement (the BP cuff inflating).
    Measuring,
    /// Connected, not measuring.
    Idle,
}

/// A change of a device's state, or a periodic battery report.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStatus {
    /// The channel.
    pub channel: ChannelId,
    /// The device.
    pub device: DeviceKind,
    /// When the state was observed.
    pub at: Instant,
    /// The state.
    pub state: DeviceState,
    /// Battery level, percent.
    pub battery_percent: Option<u8>,
    /// Free text, e.g. `"inflating"`.
    pub detail: String,
}

/// Something the simulated devices produced.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceOutput {
    /// A reading.
    Measurement(Measurement),
    /// A chunk of waveform.
    Waveform(WaveformChunk),
    /// A state change or battery report.
    Status(DeviceStatus),
}

impl DeviceOutput {
    /// The time the output refers to (capture time, first sample, state change).
    pub fn time(&self) -> Instant {
        match self {
            DeviceOutput::Measurement(m) => m.captured,
            DeviceOutput::Waveform(w) => w.first_sample,
            DeviceOutput::Status(s) => s.at,
        }
    }

    /// The channel.
    pub fn channel(&self) -> ChannelId {
        match self {
            DeviceOutput::Measurement(m) => m.channel,
            DeviceOutput::Waveform(w) => w.channel,
            DeviceOutput::Status(s) => s.channel,
        }
    }
}

/// The answer of a device to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandOutcome {
    /// Started; the result comes later from [`Devices::poll`].
    Accepted,
    /// Done at once.
    Completed,
    /// The device is busy (e.g. a measurement is already running).
    Rejected,
    /// No such command for this device, or no such channel.
    UnknownCommand,
}

/// The command that starts a blood pressure measurement.
pub const START_MEASUREMENT: &str = "start_measurement";
/// The command that stops a running blood pressure measurement (deflates the cuff).
pub const CANCEL_MEASUREMENT: &str = "cancel_measurement";

/// A configuration the simulator refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A setting is out of range.
    #[error("invalid device simulation setting {name} = {value}: {expected}")]
    InvalidConfig {
        /// The setting.
        name: &'static str,
        /// Its value, as text.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

/// Settings of the simulation.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicesConfig {
    /// Seed of every random variation: same seed, same outputs.
    pub seed: u64,
    /// Mean heart rate (beats per minute), 30–220.
    pub heart_rate_bpm: f64,
    /// ECG leads: 1 (II), 2 (I, II) or 3 (I, II, III).
    pub ecg_leads: u8,
    /// ECG sample rate, Hz.
    pub ecg_rate_hz: u32,
    /// Pleth sample rate, Hz.
    pub pleth_rate_hz: u32,
    /// Target length of a waveform chunk, 20–40 ms (rounded to whole samples, staying
    /// within 20–40 ms).
    pub chunk: Duration,
    /// Time between pulse oximeter readings.
    pub oximeter_interval: Duration,
    /// Time between thermometer readings.
    pub thermometer_interval: Duration,
    /// Time between scale readings.
    pub scale_interval: Duration,
    /// Time from `start_measurement` to the blood pressure result.
    pub bp_duration: Duration,
    /// Time between battery reports.
    pub status_interval: Duration,
    /// At most this much waveform is produced by one late poll; older chunks are skipped
    /// (their sequence numbers too, so the receiver counts a gap).
    pub max_backlog: Duration,
}

impl DevicesConfig {
    /// Defaults for a seed and a mean heart rate: 3 ECG leads at 500 Hz, pleth at 75 Hz,
    /// 40 ms chunks, an oximeter reading every second, temperature every 10 s, weight every
    /// 30 s, blood pressure 6 s after the command.
    pub fn new(seed: u64, heart_rate_bpm: f64) -> Self {
        DevicesConfig {
            seed,
            heart_rate_bpm,
            ecg_leads: 3,
            ecg_rate_hz: 500,
            pleth_rate_hz: 75,
            chunk: Duration::from_millis(40),
            oximeter_interval: Duration::from_secs(1),
            thermometer_interval: Duration::from_secs(10),
            scale_interval: Duration::from_secs(30),
            bp_duration: Duration::from_secs(6),
            status_interval: Duration::from_secs(60),
            max_backlog: Duration::from_secs(2),
        }
    }

    fn validate(&self) -> Result<(), DeviceError> {
        fn bad(
            name: &'static str,
            value: impl std::fmt::Debug,
            expected: &'static str,
        ) -> DeviceError {
            DeviceError::InvalidConfig {
                name,
                value: format!("{value:?}"),
                expected,
            }
        }
        if !(30.0..=220.0).contains(&self.heart_rate_bpm) {
            return Err(bad(
                "heart_rate_bpm",
                self.heart_rate_bpm,
                "30 to 220 beats per minute",
            ));
        }
        if !(1..=3).contains(&self.ecg_leads) {
            return Err(bad("ecg_leads", self.ecg_leads, "1, 2 or 3"));
        }
        if !(100..=2000).contains(&self.ecg_rate_hz) {
            return Err(bad("ecg_rate_hz", self.ecg_rate_hz, "100 to 2000 Hz"));
        }
        if !(50..=500).contains(&self.pleth_rate_hz) {
            return Err(bad("pleth_rate_hz", self.pleth_rate_hz, "50 to 500 Hz"));
        }
        if self.chunk < Duration::from_millis(20) || self.chunk > Duration::from_millis(40) {
            return Err(bad("chunk", self.chunk, "20 to 40 ms"));
        }
        for (name, d) in [
            ("oximeter_interval", self.oximeter_interval),
            ("thermometer_interval", self.thermometer_interval),
            ("scale_interval", self.scale_interval),
            ("status_interval", self.status_interval),
        ] {
            if d < Duration::from_millis(100) {
                return Err(bad(name, d, "at least 100 ms"));
            }
        }
        if self.bp_duration < Duration::from_secs(1) || self.bp_duration > Duration::from_secs(120)
        {
            return Err(bad("bp_duration", self.bp_duration, "1 s to 2 min"));
        }
        if self.max_backlog < self.chunk {
            return Err(bad("max_backlog", self.max_backlog, "at least one chunk"));
        }
        Ok(())
    }
}

/// The simulated devices of one cabin.
#[derive(Debug)]
pub struct Devices {
    config: DevicesConfig,
    start: Instant,
    heart: Heart,
    channels: Vec<ChannelInfo>,
    attached_sent: bool,
    pleth: Waveform,
    ecg: Waveform,
    oximeter: Periodic,
    thermometer: Periodic,
    scale: Periodic,
    status: Periodic,
    bp: BpCuff,
    spo2: f64,
    temperature: f64,
    weight: f64,
    rng: Rng,
}

impl Devices {
    /// Starts the simulation at `start`.
    pub fn new(config: DevicesConfig, start: Instant) -> Result<Self, DeviceError> {
        config.validate()?;
        let seed = config.seed;
        let mut rng = Rng::new(seed, 0x5349_4d55);
        let leads: &'static [&'static str] = match config.ecg_leads {
            1 => &["II"],
            2 => &["I", "II"],
            _ => &["I", "II", "III"],
        };
        let ecg_leads: &'static [Lead] = match config.ecg_leads {
            1 => &[Lead::II],
            2 => &[Lead::I, Lead::II],
            _ => &[Lead::I, Lead::II, Lead::III],
        };
        let ecg_code = if config.ecg_leads == 1 {
            codes::ECG_LEAD_II
        } else {
            codes::ECG_LEAD_I
        };
        let pleth = Waveform::new(
            ChannelId::PLETH,
            DeviceKind::PulseOximeter,
            config.pleth_rate_hz,
            config.chunk,
            &["PLETH"],
            Signal::Pleth,
            // 0..1 normalised, 1e-4 per step.
            1e-4,
        );
        let ecg = Waveform::new(
            ChannelId::ECG,
            DeviceKind::Ecg,
            config.ecg_rate_hz,
            config.chunk,
            leads,
            Signal::Ecg(ecg_leads),
            // 5 µV per step: ±163 mV of range, finer than ECG amplifiers resolve.
            0.005,
        );
        let channels = vec![
            ChannelInfo {
                id: ChannelId::OXIMETER,
                kind: ChannelKind::Measurement,
                device: DeviceKind::PulseOximeter,
                code: codes::SPO2,
                sample_rate_hz: None,
                leads: Vec::new(),
                label: "Pulse oximeter",
                commands: Vec::new(),
            },
            ChannelInfo {
                id: ChannelId::PLETH,
                kind: ChannelKind::Waveform,
                device: DeviceKind::PulseOximeter,
                code: codes::PLETH,
                sample_rate_hz: Some(f64::from(config.pleth_rate_hz)),
                leads: vec!["PLETH"],
                label: "Pleth",
                commands: Vec::new(),
            },
            ChannelInfo {
                id: ChannelId::ECG,
                kind: ChannelKind::Waveform,
                device: DeviceKind::Ecg,
                code: ecg_code,
                sample_rate_hz: Some(f64::from(config.ecg_rate_hz)),
                leads: leads.to_vec(),
                label: "ECG",
                commands: Vec::new(),
            },
            ChannelInfo {
                id: ChannelId::THERMOMETER,
                kind: ChannelKind::Measurement,
                device: DeviceKind::Thermometer,
                code: codes::BODY_TEMPERATURE,
                sample_rate_hz: None,
                leads: Vec::new(),
                label: "Thermometer",
                commands: Vec::new(),
            },
            ChannelInfo {
                id: ChannelId::BP_CUFF,
                kind: ChannelKind::Measurement,
                device: DeviceKind::BpCuff,
                code: codes::SYSTOLIC_BP,
                sample_rate_hz: None,
                leads: Vec::new(),
                label: "Blood pressure cuff",
                commands: vec![START_MEASUREMENT, CANCEL_MEASUREMENT],
            },
            ChannelInfo {
                id: ChannelId::SCALE,
                kind: ChannelKind::Measurement,
                device: DeviceKind::Scale,
                code: codes::BODY_WEIGHT,
                sample_rate_hz: None,
                leads: Vec::new(),
                label: "Scale",
                commands: Vec::new(),
            },
        ];
        // Per-patient baselines drawn from the seed.
        let spo2 = 97.0 + 1.5 * rng.uniform();
        let temperature = 36.6 + 0.5 * rng.uniform();
        let weight = 55.0 + 40.0 * rng.uniform();
        let systolic = 110.0 + 20.0 * rng.uniform();
        let diastolic = 68.0 + 14.0 * rng.uniform();
        Ok(Devices {
            heart: Heart::new(seed, config.heart_rate_bpm),
            oximeter: Periodic::new(start + config.oximeter_interval, config.oximeter_interval),
            thermometer: Periodic::new(start + Duration::from_secs(2), config.thermometer_interval),
            scale: Periodic::new(start + Duration::from_secs(3), config.scale_interval),
            status: Periodic::new(start + config.status_interval, config.status_interval),
            bp: BpCuff {
                pending: None,
                cancelled: None,
                seq: 0,
                systolic,
                diastolic,
                rng: Rng::new(seed, 0x4250),
            },
            config,
            start,
            channels,
            attached_sent: false,
            pleth,
            ecg,
            spo2,
            temperature,
            weight,
            rng,
        })
    }

    /// The channels of every simulated device, in id order.
    pub fn channels(&self) -> &[ChannelInfo] {
        &self.channels
    }

    /// The configuration.
    pub fn config(&self) -> &DevicesConfig {
        &self.config
    }

    /// When the simulation started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Everything due at or before `now`, ordered by time. Call it again at
    /// [`poll_timeout`](Self::poll_timeout) (or later: late waveform is caught up, up to
    /// [`DevicesConfig::max_backlog`]).
    pub fn poll(&mut self, now: Instant) -> Vec<DeviceOutput> {
        let mut out = Vec::new();
        if !self.attached_sent {
            self.attached_sent = true;
            for c in &self.channels {
                if c.kind == ChannelKind::Measurement || c.id == ChannelId::ECG {
                    out.push(DeviceOutput::Status(DeviceStatus {
                        channel: c.id,
                        device: c.device,
                        at: self.start,
                        state: DeviceState::Attached,
                        battery_percent: Some(battery(c.device, Duration::ZERO)),
                        detail: String::new(),
                    }));
                }
            }
        }
        let start = self.start;
        let backlog = self.config.max_backlog;
        self.pleth.poll(
            now,
            start,
            backlog,
            &mut self.heart,
            self.config.seed,
            &mut out,
        );
        self.ecg.poll(
            now,
            start,
            backlog,
            &mut self.heart,
            self.config.seed,
            &mut out,
        );
        if let Some(at) = self.oximeter.due(now) {
            out.push(self.oximeter_reading(at));
        }
        if let Some(at) = self.thermometer.due(now) {
            out.push(self.thermometer_reading(at));
        }
        if let Some(at) = self.scale.due(now) {
            out.push(self.scale_reading(at));
        }
        if let Some(at) = self.status.due(now) {
            for c in &self.channels {
                if c.kind == ChannelKind::Measurement {
                    out.push(DeviceOutput::Status(DeviceStatus {
                        channel: c.id,
                        device: c.device,
                        at,
                        state: if c.id == ChannelId::BP_CUFF && self.bp.pending.is_some() {
                            DeviceState::Measuring
                        } else {
                            DeviceState::Idle
                        },
                        battery_percent: Some(battery(c.device, at - start)),
                        detail: String::new(),
                    }));
                }
            }
        }
        self.bp.poll(now, start, &mut self.heart, &mut out);
        out.sort_by_key(DeviceOutput::time);
        out
    }

    /// The earliest time something will be due.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self
            .pleth
            .next_due(self.start)
            .min(self.ecg.next_due(self.start))
            .min(self.oximeter.next)
            .min(self.thermometer.next)
            .min(self.scale.next)
            .min(self.status.next);
        if let Some(p) = &self.bp.pending {
            t = t.min(p.next_event());
        }
        if !self.attached_sent {
            t = self.start;
        }
        t
    }

    /// Handles a command for a device's channel (e.g. `start_measurement` on
    /// [`ChannelId::BP_CUFF`]). The effects appear in later [`poll`](Self::poll)s: the cuff
    /// reports "inflating", then "deflating", then the reading.
    pub fn handle_command(
        &mut self,
        channel: ChannelId,
        name: &str,
        now: Instant,
    ) -> CommandOutcome {
        if channel != ChannelId::BP_CUFF {
            return CommandOutcome::UnknownCommand;
        }
        match name {
            START_MEASUREMENT => {
                if self.bp.pending.is_some() {
                    return CommandOutcome::Rejected;
                }
                self.bp.pending = Some(BpMeasurement {
                    started: now,
                    duration: self.config.bp_duration,
                    stage: BpStage::Requested,
                });
                CommandOutcome::Accepted
            }
            CANCEL_MEASUREMENT => {
                if self.bp.pending.take().is_some() {
                    self.bp.cancelled = Some(now);
                    CommandOutcome::Completed
                } else {
                    CommandOutcome::Rejected
                }
            }
            _ => CommandOutcome::UnknownCommand,
        }
    }

    fn oximeter_reading(&mut self, at: Instant) -> DeviceOutput {
        let t = (at - self.start).as_secs_f64();
        // SpO2 wanders slowly within ±1 % of the patient's baseline, in whole percent.
        let drift =
            0.6 * (2.0 * std::f64::consts::PI * t / 53.0).sin() + 0.4 * self.rng.symmetric();
        let spo2 = (self.spo2 + drift).round().clamp(90.0, 100.0);
        let pulse = self.heart.displayed_rate_bpm(t, 4).round();
        self.oximeter.seq += 1;
        DeviceOutput::Measurement(Measurement {
            channel: ChannelId::OXIMETER,
            device: DeviceKind::PulseOximeter,
            seq: self.oximeter.seq,
            captured: at,
            values: vec![
                Value {
                    code: codes::SPO2,
                    value: spo2,
                },
                Value {
                    code: codes::PULSE_RATE_OXIMETER,
                    value: pulse,
                },
            ],
            status: MeasurementStatus::Valid,
        })
    }

    fn thermometer_reading(&mut self, at: Instant) -> DeviceOutput {
        let t = (at - self.start).as_secs_f64();
        let drift = 0.1 * (2.0 * std::f64::consts::PI * t / 600.0).sin();
        let value = round_tenth(self.temperature + drift + 0.05 * self.rng.symmetric());
        self.thermometer.seq += 1;
        DeviceOutput::Measurement(Measurement {
            channel: ChannelId::THERMOMETER,
            device: DeviceKind::Thermometer,
            seq: self.thermometer.seq,
            captured: at,
            values: vec![Value {
                code: codes::BODY_TEMPERATURE,
                value,
            }],
            status: MeasurementStatus::Valid,
        })
    }

    fn scale_reading(&mut self, at: Instant) -> DeviceOutput {
        let value = round_tenth(self.weight + 0.08 * self.rng.symmetric());
        self.scale.seq += 1;
        DeviceOutput::Measurement(Measurement {
            channel: ChannelId::SCALE,
            device: DeviceKind::Scale,
            seq: self.scale.seq,
            captured: at,
            values: vec![Value {
                code: codes::BODY_WEIGHT,
                value,
            }],
            status: MeasurementStatus::Valid,
        })
    }
}

/// A reading taken every `interval`, the first at `next`.
#[derive(Debug)]
struct Periodic {
    next: Instant,
    interval: Duration,
    seq: u64,
}

impl Periodic {
    fn new(first: Instant, interval: Duration) -> Self {
        Periodic {
            next: first,
            interval,
            seq: 0,
        }
    }

    /// The time of the reading due at `now`, if any. A poll late by several intervals
    /// gives one reading (the device would not have stored the missed ones either).
    fn due(&mut self, now: Instant) -> Option<Instant> {
        if now < self.next {
            return None;
        }
        let at = self.next;
        while self.next <= now {
            self.next += self.interval;
        }
        Some(at)
    }
}

#[derive(Debug, Clone, Copy)]
enum Signal {
    Pleth,
    Ecg(&'static [Lead]),
}

/// A sampled signal cut into chunks of `frames` samples per lead.
#[derive(Debug)]
struct Waveform {
    channel: ChannelId,
    device: DeviceKind,
    rate_hz: u32,
    frames: u64,
    leads: &'static [&'static str],
    signal: Signal,
    scale: f64,
    /// Index of the next chunk to produce (seq - 1).
    next_chunk: u64,
}

impl Waveform {
    fn new(
        channel: ChannelId,
        device: DeviceKind,
        rate_hz: u32,
        chunk: Duration,
        leads: &'static [&'static str],
        signal: Signal,
        scale: f64,
    ) -> Self {
        let rate = f64::from(rate_hz);
        let min = (rate * 0.020).ceil().max(1.0);
        let max = (rate * 0.040).floor().max(min);
        let frames = (rate * chunk.as_secs_f64()).round().clamp(min, max) as u64;
        Waveform {
            channel,
            device,
            rate_hz,
            frames,
            leads,
            signal,
            scale,
            next_chunk: 0,
        }
    }

    /// Time of sample `n` since the start.
    fn sample_offset(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate_hz);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// When the next chunk is complete.
    fn next_due(&self, start: Instant) -> Instant {
        start + self.sample_offset((self.next_chunk + 1) * self.frames)
    }

    fn poll(
        &mut self,
        now: Instant,
        start: Instant,
        backlog: Duration,
        heart: &mut Heart,
        seed: u64,
        out: &mut Vec<DeviceOutput>,
    ) {
        let elapsed = now.saturating_duration_since(start);
        // Chunks complete at `now`: those whose last sample is at or before it.
        let done =
            (elapsed.as_nanos() * u128::from(self.rate_hz) / 1_000_000_000) as u64 / self.frames;
        let keep = (backlog.as_nanos() * u128::from(self.rate_hz)
            / (u128::from(self.frames) * 1_000_000_000))
            .max(1) as u64;
        if done > self.next_chunk + keep {
            self.next_chunk = done - keep;
        }
        while self.next_chunk < done {
            let first = self.next_chunk * self.frames;
            let mut samples = Vec::with_capacity((self.frames as usize) * self.leads.len());
            for n in first..first + self.frames {
                let t = n as f64 / f64::from(self.rate_hz);
                match self.signal {
                    Signal::Pleth => {
                        let v = pleth(heart, t) + 0.004 * noise::symmetric(seed, 0x504c, n);
                        samples.push(quantize(v, self.scale));
                    }
                    Signal::Ecg(leads) => {
                        // Breathing moves the baseline; a little noise on each electrode.
                        let wander =
                            0.05 * (2.0 * std::f64::consts::PI * t / BREATH_PERIOD_S).sin();
                        let na = 0.008 * noise::symmetric(seed, 0xEC61, n);
                        let nb = 0.008 * noise::symmetric(seed, 0xEC62, n);
                        for lead in leads {
                            let (noise, base) = match lead {
                                Lead::I => (na, 0.4 * wander),
                                Lead::II => (nb, wander),
                                Lead::III => (nb - na, 0.6 * wander),
                            };
                            let v = ecg_mv(heart, *lead, t) + base + noise;
                            samples.push(quantize(v, self.scale));
                        }
                    }
                }
            }
            out.push(DeviceOutput::Waveform(WaveformChunk {
                channel: self.channel,
                device: self.device,
                seq: self.next_chunk + 1,
                first_sample: start + self.sample_offset(first),
                sample_rate_hz: f64::from(self.rate_hz),
                leads: self.leads,
                scale: self.scale,
                offset: 0.0,
                samples,
            }));
            self.next_chunk += 1;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BpStage {
    /// Command received; "inflating" not reported yet.
    Requested,
    /// Inflating reported.
    Inflating,
    /// Deflating reported (the cuff measures while deflating).
    Deflating,
}

#[derive(Debug)]
struct BpMeasurement {
    started: Instant,
    duration: Duration,
    stage: BpStage,
}

impl BpMeasurement {
    fn deflate_at(&self) -> Instant {
        self.started + self.duration * 2 / 5
    }

    fn done_at(&self) -> Instant {
        self.started + self.duration
    }

    fn next_event(&self) -> Instant {
        match self.stage {
            BpStage::Requested => self.started,
            BpStage::Inflating => self.deflate_at(),
            BpStage::Deflating => self.done_at(),
        }
    }
}

#[derive(Debug)]
struct BpCuff {
    pending: Option<BpMeasurement>,
    cancelled: Option<Instant>,
    seq: u64,
    systolic: f64,
    diastolic: f64,
    rng: Rng,
}

impl BpCuff {
    fn status(at: Instant, state: DeviceState, detail: &str, start: Instant) -> DeviceOutput {
        DeviceOutput::Status(DeviceStatus {
            channel: ChannelId::BP_CUFF,
            device: DeviceKind::BpCuff,
            at,
            state,
            battery_percent: Some(battery(
                DeviceKind::BpCuff,
                at.saturating_duration_since(start),
            )),
            detail: detail.to_owned(),
        })
    }

    fn poll(
        &mut self,
        now: Instant,
        start: Instant,
        heart: &mut Heart,
        out: &mut Vec<DeviceOutput>,
    ) {
        while let Some(p) = &mut self.pending {
            let at = p.next_event();
            if now < at {
                break;
            }
            match p.stage {
                BpStage::Requested => {
                    p.stage = BpStage::Inflating;
                    out.push(Self::status(at, DeviceState::Measuring, "inflating", start));
                }
                BpStage::Inflating => {
                    p.stage = BpStage::Deflating;
                    out.push(Self::status(at, DeviceState::Measuring, "deflating", start));
                }
                BpStage::Deflating => {
                    self.pending = None;
                    let t = (at - start).as_secs_f64();
                    let systolic = (self.systolic + 4.0 * self.rng.symmetric()).round();
                    let diastolic = (self.diastolic + 3.0 * self.rng.symmetric()).round();
                    let mean = (diastolic + (systolic - diastolic) / 3.0).round();
                    let pulse = heart.displayed_rate_bpm(t, 8).round();
                    self.seq += 1;
                    out.push(DeviceOutput::Measurement(Measurement {
                        channel: ChannelId::BP_CUFF,
                        device: DeviceKind::BpCuff,
                        seq: self.seq,
                        captured: at,
                        values: vec![
                            Value {
                                code: codes::SYSTOLIC_BP,
                                value: systolic,
                            },
                            Value {
                                code: codes::DIASTOLIC_BP,
                                value: diastolic,
                            },
                            Value {
                                code: codes::MEAN_BP,
                                value: mean,
                            },
                            Value {
                                code: codes::PULSE_RATE_CUFF,
                                value: pulse,
                            },
                        ],
                        status: MeasurementStatus::Valid,
                    }));
                    out.push(Self::status(at, DeviceState::Idle, "done", start));
                }
            }
        }
        if let Some(at) = self.cancelled.take() {
            out.push(Self::status(at, DeviceState::Idle, "cancelled", start));
        }
    }
}

/// Battery level: starts between 80 and 100 % depending on the device, loses 1 % every
/// 10 minutes, never below 5 %.
fn battery(device: DeviceKind, elapsed: Duration) -> u8 {
    let initial: u8 = match device {
        DeviceKind::PulseOximeter => 96,
        DeviceKind::Ecg => 88,
        DeviceKind::Thermometer => 100,
        DeviceKind::BpCuff => 82,
        DeviceKind::Scale => 91,
    };
    let used = (elapsed.as_secs() / 600).min(95) as u8;
    initial.saturating_sub(used).max(5)
}

fn quantize(value: f64, scale: f64) -> i16 {
    (value / scale)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
}

/// Rounds to one decimal, as the thermometer and scale display.
fn round_tenth(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests;
