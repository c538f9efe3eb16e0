//! `cabine-loadgen`: runs the benchmark scenarios (`run`) or the bare UDP relay baseline
//! (`relay`, started by `run` as a child process).

use std::path::PathBuf;
use std::process::ExitCode;

use cabine_loadgen::runner::{self, Options, Scenario};
use cabine_loadgen::scenario::RampLimits;
use cabine_loadgen::target::{self, Kind};
use cabine_loadgen::tcp::IceTransport;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cabine-loadgen",
    about = "Cabine benchmarks: simulated kiosks and doctors over real WebRTC"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetArg {
    Cabine,
    Relay,
    Janus,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs scenarios against targets and writes report.json, report.txt and SVG plots.
    Run {
        /// Scenarios, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "one-to-one,three-party,lossy,ramp"
        )]
        scenarios: Vec<Scenario>,
        /// Targets, comma-separated, measured one after the other.
        #[arg(long, value_delimiter = ',', default_value = "cabine,relay")]
        targets: Vec<TargetArg>,
        /// Concurrent consultations (1:1, lossy) or rooms (3-party).
        #[arg(short = 'n', long, default_value_t = 10)]
        consultations: usize,
        /// Ramp: consultations added per stage.
        #[arg(long, default_value_t = 10)]
        ramp_step: usize,
        /// Ramp: most consultations tried.
        #[arg(long, default_value_t = 200)]
        ramp_max: usize,
        /// Ramp: p99 one-way latency limit, milliseconds.
        #[arg(long, default_value_t = 10.0)]
        ramp_p99_ms: f64,
        /// Ramp: loss limit, percent.
        #[arg(long, default_value_t = 0.1)]
        ramp_loss_pct: f64,
        /// Lossy scenario: loss emulated per direction, percent.
        #[arg(long, default_value_t = 2.0)]
        loss_pct: f64,
        /// Generator worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Server media worker threads (0: one per core).
        #[arg(long, default_value_t = 0)]
        server_workers: usize,
        /// The server's initial bandwidth estimate towards a new subscriber, kbit/s (its
        /// `media.initial_bitrate_kbps`; 0 keeps the server's default of 1000, under which a new
        /// subscriber's 2 × 1.5 Mbit/s of video waits in the pacer for seconds).
        #[arg(long, default_value_t = 5000)]
        server_initial_kbps: u32,
        /// Warm-up before each measurement window, seconds.
        #[arg(long, default_value_t = 5.0)]
        warmup: f64,
        /// Measurement window, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// ICE transport of the peers against Cabine: udp; tcp towards the server's passive
        /// TCP candidate (its `media.tcp`); turn through a private coturn (relayed candidates
        /// only). Janus's and the relay's peers use UDP.
        #[arg(long, value_enum, default_value = "udp")]
        transport: IceTransport,
        /// coturn's binary (Debian's `coturn` package), for --transport turn.
        #[arg(long, default_value = "turnserver")]
        turn_bin: PathBuf,
        /// The cabine binary (default: $CABINE_BIN or next to this binary).
        #[arg(long)]
        cabine_bin: Option<PathBuf>,
        /// The janus binary (Debian's `janus` package).
        #[arg(long, default_value = "/usr/bin/janus")]
        janus_bin: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// The cluster benchmark (issue 11): a real redis-server and several `cabine serve` nodes;
    /// join time direct against redirected, then the registry's cost on idle nodes. Writes
    /// cluster.json and cluster.txt.
    Cluster {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// 1:1 consultations joined each way (direct and redirected, alternating).
        #[arg(short = 'n', long, default_value_t = 20)]
        consultations: usize,
        /// Idle rooms (one connected subscriber each) for the second registry-cost window.
        #[arg(long, default_value_t = 20)]
        idle_rooms: usize,
        /// Registry-cost window, seconds.
        #[arg(long, default_value_t = 60.0)]
        window: f64,
        /// Time between setting up a window's rooms and measuring, seconds.
        #[arg(long, default_value_t = 5.0)]
        settle: f64,
        /// Media worker threads per node.
        #[arg(long, default_value_t = 1)]
        server_workers: usize,
        /// The nodes' initial bandwidth estimate towards a new subscriber, kbit/s.
        #[arg(long, default_value_t = 5000)]
        server_initial_kbps: u32,
        /// Generator worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// The cabine binary (default: $CABINE_BIN or next to this binary).
        #[arg(long)]
        cabine_bin: Option<PathBuf>,
        /// The redis-server binary (Debian's `redis-server` package).
        #[arg(long, default_value = "redis-server")]
        redis_bin: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// The quality benchmark (issue 14): the real `cabine-kiosk dial` publishing its
    /// stethoscope, microphone, device and room cameras to Cabine, a WHEP receiver on the
    /// doctor's side, each behind its own copy of an impaired link profile; reports stethoscope
    /// frames played in time, freezes, delivered resolution and frame rate, audio concealment
    /// and glass-to-glass latency. Writes quality-<profile>.json and .txt per profile.
    Quality {
        /// Link profiles, comma-separated (rural-adsl, 4g-doctor, severe, clean), measured one
        /// after the other.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "rural-adsl,4g-doctor,severe"
        )]
        profile: Vec<String>,
        /// Target: cabine. (janus is refused with the reason: it has no WHIP endpoint for
        /// the kiosk to publish to.)
        #[arg(long, value_delimiter = ',', default_value = "cabine")]
        target: Vec<TargetArg>,
        /// Warm-up before the window (connection, bandwidth estimation), seconds.
        #[arg(long, default_value_t = 15.0)]
        warmup: f64,
        /// Measurement window per profile, seconds.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// The receiver's fixed audio jitter buffer, ms.
        #[arg(long, default_value_t = 80.0)]
        jitter_buffer_ms: f64,
        /// The cabine binary (default: $CABINE_BIN or next to this binary).
        #[arg(long)]
        cabine_bin: Option<PathBuf>,
        /// The cabine-kiosk binary (default: $LOADGEN_KIOSK_BIN or next to this binary).
        #[arg(long)]
        kiosk_bin: Option<PathBuf>,
        /// An extra argument for `cabine-kiosk dial` (repeat: --kiosk-arg=--fps --kiosk-arg=30).
        #[arg(long, allow_hyphen_values = true)]
        kiosk_arg: Vec<String>,
        /// Output directory.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// The bare UDP relay baseline (recvmmsg → sendmmsg, no crypto).
    Relay {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Relay { bind } => {
            let socket = match cabine_loadgen::relay::bind(bind) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("relay: cannot bind {bind}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match socket.local_addr() {
                Ok(a) => println!("relay listening on {a}"),
                Err(e) => {
                    eprintln!("relay: {e}");
                    return ExitCode::FAILURE;
                }
            }
            if let Err(e) = cabine_loadgen::relay::run(&socket) {
                eprintln!("relay: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Cmd::Quality {
            profile,
            target: targets,
            warmup,
            duration,
            jitter_buffer_ms,
            cabine_bin,
            kiosk_bin,
            kiosk_arg,
            out,
        } => quality(QualityArgs {
            profiles: profile,
            targets,
            warmup,
            duration,
            jitter_buffer_ms,
            cabine_bin,
            kiosk_bin,
            kiosk_args: kiosk_arg,
            out,
        }),
        Cmd::Cluster {
            nodes,
            consultations,
            idle_rooms,
            window,
            settle,
            server_workers,
            server_initial_kbps,
            threads,
            cabine_bin,
            redis_bin,
            out,
        } => {
            let Some(cabine_bin) = cabine_bin.or_else(target::find_cabine) else {
                eprintln!("cannot find the cabine binary: build it (cargo build --release -p cabine-server) or pass --cabine-bin");
                return ExitCode::FAILURE;
            };
            let opts = cabine_loadgen::cluster::ClusterOptions {
                cabine_bin,
                redis_bin,
                nodes,
                consultations,
                idle_rooms,
                window: std::time::Duration::from_secs_f64(window),
                settle: std::time::Duration::from_secs_f64(settle),
                server_workers,
                server_initial_kbps: (server_initial_kbps > 0).then_some(server_initial_kbps),
                threads,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let report = cabine_loadgen::cluster::run(&opts);
            print!("{}", report.table());
            if let Err(e) = report.write(&out) {
                eprintln!("cannot write the report to {}: {e:#}", out.display());
                return ExitCode::FAILURE;
            }
            eprintln!("[loadgen] report in {}", out.display());
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Run {
            scenarios,
            targets,
            consultations,
            ramp_step,
            ramp_max,
            ramp_p99_ms,
            ramp_loss_pct,
            loss_pct,
            threads,
            server_workers,
            server_initial_kbps,
            warmup,
            duration,
            transport,
            turn_bin,
            cabine_bin,
            janus_bin,
            out,
        } => {
            let Some(cabine_bin) = cabine_bin.or_else(target::find_cabine) else {
                eprintln!("cannot find the cabine binary: build it (cargo build --release -p cabine-server) or pass --cabine-bin");
                return ExitCode::FAILURE;
            };
            let loadgen_bin = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = Options {
                scenarios,
                targets: targets
                    .into_iter()
                    .map(|t| match t {
                        TargetArg::Cabine => Kind::Cabine,
                        TargetArg::Relay => Kind::Relay,
                        TargetArg::Janus => Kind::Janus,
                    })
                    .collect(),
                consultations,
                ramp: RampLimits {
                    p99_us: ramp_p99_ms * 1000.0,
                    loss: ramp_loss_pct / 100.0,
                    step: ramp_step.max(1),
                    max: ramp_max,
                },
                loss: loss_pct / 100.0,
                threads,
                server_workers,
                server_initial_kbps: (server_initial_kbps > 0).then_some(server_initial_kbps),
                warmup: std::time::Duration::from_secs_f64(warmup),
                duration: std::time::Duration::from_secs_f64(duration),
                ice: transport,
                turn_bin,
                cabine_bin,
                janus_bin,
                loadgen_bin,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let report = runner::run(&opts);
            print!("{}", report.table());
            if let Err(e) = report.write(&out) {
                eprintln!("cannot write the report to {}: {e:#}", out.display());
                return ExitCode::FAILURE;
            }
            eprintln!("[loadgen] report in {}", out.display());
            ExitCode::SUCCESS
        }
    }
}

struct QualityArgs {
    profiles: Vec<String>,
    targets: Vec<TargetArg>,
    warmup: f64,
    duration: f64,
    jitter_buffer_ms: f64,
    cabine_bin: Option<PathBuf>,
    kiosk_bin: Option<PathBuf>,
    kiosk_args: Vec<String>,
    out: PathBuf,
}

/// `cabine-loadgen quality`: each profile in turn, against Cabine.
fn quality(a: QualityArgs) -> ExitCode {
    use cabine_loadgen::quality::{self, QualityOptions};
    if a.targets.iter().any(|t| !matches!(t, TargetArg::Cabine)) {
        eprintln!(
            "quality: only --target cabine. Janus cannot take part: the publisher is the real \
             cabine-kiosk, which speaks WHIP, and Janus 1.1.2 (Debian) has no WHIP endpoint \
             (its VideoRoom takes offers through its own HTTP/WebSocket API); the relay \
             baseline does no WebRTC."
        );
        return ExitCode::FAILURE;
    }
    let Some(cabine_bin) = a.cabine_bin.or_else(target::find_cabine) else {
        eprintln!("cannot find the cabine binary: build it (cargo build --release -p cabine-server) or pass --cabine-bin");
        return ExitCode::FAILURE;
    };
    let Some(kiosk_bin) = a.kiosk_bin.or_else(quality::find_kiosk) else {
        eprintln!("cannot find the cabine-kiosk binary: build it (cargo build --release -p cabine-kiosk) or pass --kiosk-bin");
        return ExitCode::FAILURE;
    };
    let mut ok = true;
    for name in &a.profiles {
        let profile = match cabine_impair::Profile::by_name(name) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("quality: {e}");
                return ExitCode::FAILURE;
            }
        };
        let opts = QualityOptions {
            profile,
            warmup: std::time::Duration::from_secs_f64(a.warmup),
            duration: std::time::Duration::from_secs_f64(a.duration),
            jitter_buffer: std::time::Duration::from_secs_f64(a.jitter_buffer_ms / 1000.0),
            cabine_bin: cabine_bin.clone(),
            kiosk_bin: kiosk_bin.clone(),
            kiosk_args: a.kiosk_args.clone(),
            kiosk_log: Some(a.out.join(format!("quality-{name}-kiosk.log"))),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        };
        if let Err(e) = std::fs::create_dir_all(&a.out) {
            eprintln!("cannot create {}: {e}", a.out.display());
            return ExitCode::FAILURE;
        }
        match quality::run(&opts) {
            Ok(report) => {
                print!("{}", report.table());
                if let Err(e) = report.write(&a.out) {
                    eprintln!("cannot write the report to {}: {e:#}", a.out.display());
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("quality {name}: {e:#}");
                ok = false;
            }
        }
    }
    eprintln!("[loadgen] reports in {}", a.out.display());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
