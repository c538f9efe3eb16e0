//! A whole benchmark run: every requested scenario against every requested target, one target
//! at a time (so they never compete for the CPU), then ratios and the report.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::EngineConfig;
use crate::report::{self, Machine, Report, Run};
use crate::scenario::{self, Bench, RampLimits, Settings, Shape};
use crate::target::{Kind, Target};
use crate::tcp::IceTransport;
use crate::turn::{Coturn, TurnCredentials};

/// A scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// N concurrent 1:1 consultations.
    OneToOne,
    /// N 3-party rooms.
    ThreeParty,
    /// 1:1 consultations added until p99 latency or loss crosses the limit.
    Ramp,
    /// N 1:1 consultations with loss emulated at the generator (NACK/RTX recovery).
    Lossy,
}

impl Scenario {
    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::OneToOne => "one-to-one",
            Scenario::ThreeParty => "three-party",
            Scenario::Ramp => "ramp",
            Scenario::Lossy => "lossy",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scenarios.
    pub scenarios: Vec<Scenario>,
    /// Targets.
    pub targets: Vec<Kind>,
    /// Consultations (1:1 and lossy) or rooms (3-party).
    pub consultations: usize,
    /// Ramp limits.
    pub ramp: RampLimits,
    /// Loss ratio for the lossy scenario.
    pub loss: f64,
    /// Generator threads.
    pub threads: usize,
    /// Server media workers (0: one per core).
    pub server_workers: usize,
    /// The server's initial bandwidth estimate towards new subscribers, kbit/s (`None`: the
    /// server's default).
    pub server_initial_kbps: Option<u32>,
    /// Warm-up before each window.
    pub warmup: Duration,
    /// Measurement window.
    pub duration: Duration,
    /// The transport of Cabine's peers' ICE: UDP, or TCP towards the server's passive
    /// candidate (`media.tcp`, issue 13).
    pub ice: IceTransport,
    /// coturn's `turnserver` binary (for [`IceTransport::Turn`]).
    pub turn_bin: PathBuf,
    /// The `cabine` binary.
    pub cabine_bin: PathBuf,
    /// The `janus` binary.
    pub janus_bin: PathBuf,
    /// This crate's binary (for `relay`).
    pub loadgen_bin: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// Runs everything and returns the report (errors of single runs are recorded in it).
pub fn run(opts: &Options) -> Report {
    let mut machine = Machine::here();
    let date_utc = report::utc_now();
    let mut runs = Vec::new();
    for &sc in &opts.scenarios {
        for &kind in &opts.targets {
            eprintln!("[loadgen] {} against {} …", sc.name(), kind.name());
            let r = run_one(opts, sc, kind);
            let run = match r {
                Ok(run) => run,
                Err(e) => Run {
                    scenario: sc.name().into(),
                    target: kind,
                    measurement: None,
                    ramp: None,
                    error: Some(format!("{e:#}")),
                },
            };
            runs.push(run);
        }
    }
    machine.load_end = report::load_avg();
    let mut rep = Report {
        date_utc,
        machine,
        command: opts.command.clone(),
        runs,
        ratios: Vec::new(),
    };
    rep.compute_ratios();
    rep
}

fn run_one(opts: &Options, sc: Scenario, kind: Kind) -> anyhow::Result<Run> {
    // A private coturn for the run when the peers go through TURN (dropped with the run).
    let coturn = if opts.ice == IceTransport::Turn && kind == Kind::Cabine {
        Some(Coturn::start(&opts.turn_bin)?)
    } else {
        None
    };
    let target = match kind {
        Kind::Cabine => Target::cabine(
            &opts.cabine_bin,
            opts.server_workers,
            opts.server_initial_kbps,
        )?,
        Kind::Relay => Target::relay(&opts.loadgen_bin)?,
        Kind::Janus => Target::janus(&opts.janus_bin)?,
    };
    let shape = if sc == Scenario::ThreeParty {
        Shape::ThreeParty
    } else {
        Shape::OneToOne
    };
    let settings = Settings {
        engine: EngineConfig {
            threads: opts.threads,
            loss: if sc == Scenario::Lossy {
                opts.loss
            } else {
                0.0
            },
        },
        warmup: opts.warmup,
        duration: opts.duration,
        connect_timeout: Duration::from_secs(30),
        ice: opts.ice,
        turn: coturn
            .as_ref()
            .map(|t| TurnCredentials::rest(t.addr, Duration::from_secs(3600))),
    };
    let mut bench = Bench::new(target, shape, settings)?;
    let mut run = Run {
        scenario: sc.name().into(),
        target: kind,
        measurement: None,
        ramp: None,
        error: None,
    };
    if sc == Scenario::Ramp {
        run.ramp = Some(scenario::ramp(&mut bench, opts.ramp));
    } else {
        let added = bench.add(opts.consultations);
        match added {
            Ok(()) => run.measurement = Some(bench.measure()),
            Err(e) => run.error = Some(format!("{e:#}")),
        }
    }
    bench.stop();
    Ok(run)
}
