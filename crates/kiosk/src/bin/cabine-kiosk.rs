//! `cabine-kiosk`: a simulated teleconsultation cabin.
//!
//! ```text
//! cabine-kiosk dial --server http://HOST:8080 --token T [--room R] [--turn URL --turn-user U --turn-pass P] [--loopback]
//! cabine-kiosk dial --server http://HOST:8080 --token T --queue [--reason TEXT] [--specialty S]
//! cabine-kiosk devices --seconds 10
//! ```
//!
//! While dialling, SIGUSR1 tells the kiosk its network changed (a new Wi-Fi, a modem reset):
//! the telemetry connection is dropped at once and redialled rather than left to time out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, IceServer};
use cabine_kiosk::devices::{
    ChannelId, ChannelKind, DeviceOutput, DeviceState, Devices, DevicesConfig, MeasurementStatus,
    START_MEASUREMENT,
};
use cabine_kiosk::dial::{self, DialConfig, Input};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

/// A simulated teleconsultation cabin for Cabine: synthetic cameras, microphone and
/// stethoscope over WHIP, the doctor over WHEP, simulated medical devices.
#[derive(Debug, Parser)]
#[command(name = "cabine-kiosk", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dial into a Cabine server like a cabin: publish the room camera, device camera,
    /// microphone and stethoscope, receive the doctor, reconnect when the network drops,
    /// end the sessions on Ctrl-C or SIGTERM.
    Dial(Box<DialArgs>),
    /// Print the simulated devices' outputs as JSON lines (simulated time, as fast as
    /// possible unless --realtime).
    Devices(DevicesArgs),
}

#[derive(Debug, Args)]
struct DialArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "CABINE_SERVER")]
    server: String,
    /// Another node of the cluster, asked for the room when the one in use dies; repeat for
    /// several.
    #[arg(long = "also-server")]
    also_server: Vec<String>,
    /// The kiosk's JWT (role kiosk).
    #[arg(long, env = "CABINE_TOKEN", hide_env_values = true)]
    token: String,
    /// The room (default: the token's `room` claim).
    #[arg(long)]
    room: Option<String>,
    /// The stream id of the published tracks (default: the token's `sub` claim, or "kiosk").
    #[arg(long)]
    stream_id: Option<String>,
    /// A TURN server URL (turn:host:3478?transport=udp, turns:host:443?transport=tcp…); repeat
    /// for several. Not needed with a server that has `[turn]`: its WHIP/WHEP `Link` headers give
    /// the TURN servers with credentials for each session. TLS and TCP ones go through a local
    /// bridge (the webrtc stack relays over UDP only).
    #[arg(long)]
    turn: Vec<String>,
    /// TURN user name.
    #[arg(long, default_value = "")]
    turn_user: String,
    /// TURN password.
    #[arg(
        long,
        env = "CABINE_TURN_PASS",
        default_value = "",
        hide_env_values = true
    )]
    turn_pass: String,
    /// A STUN server URL (stun:host:3478); repeat for several.
    #[arg(long)]
    stun: Vec<String>,
    /// Use relayed (TURN) candidates only.
    #[arg(long)]
    relay_only: bool,
    /// Also reach the server over ICE-TCP (its passive TCP candidate, through a local
    /// UDP-to-TCP bridge): for networks that drop UDP to the server.
    #[arg(long)]
    ice_tcp: bool,
    /// Use the 127.0.0.1 loopback only (server on this machine).
    #[arg(long)]
    loopback: bool,
    /// Wait in the walk-in queue for the next available doctor first (`POST /api/queue`),
    /// printing the position, then dial the room the doctor opens with the token the server
    /// gives. Ctrl-C while waiting cancels the ticket.
    #[arg(long)]
    queue: bool,
    /// With --queue: why the patient came.
    #[arg(long, requires = "queue")]
    reason: Option<String>,
    /// With --queue: the specialty asked for (default: general practice).
    #[arg(long, requires = "queue")]
    specialty: Option<String>,
    /// With --queue: served before the others of the specialty.
    #[arg(long, requires = "queue")]
    priority: bool,
    /// With --queue: the patient's FHIR reference given by the platform (Patient/123).
    #[arg(long, requires = "queue")]
    subject: Option<String>,
    /// With --queue: the cabin's site label (default: the token's `name`).
    #[arg(long, requires = "queue")]
    site: Option<String>,
    /// Accept any TLS certificate (self-signed development servers).
    #[arg(long)]
    insecure: bool,
    /// Do not subscribe to the room.
    #[arg(long)]
    no_subscribe: bool,
    /// Do not run the devices simulator.
    #[arg(long)]
    no_devices: bool,
    /// Keep the devices local: do not open the QUIC telemetry session.
    #[arg(long)]
    no_telemetry: bool,
    /// Telemetry sidecar address, `quic://host:port` (default: ask the server,
    /// `GET /api/telemetry`).
    #[arg(long, env = "CABINE_TELEMETRY")]
    telemetry: Option<String>,
    /// PEM bundle of the CAs that sign the sidecar's certificate (default: pin the certificate
    /// the server gives in `GET /api/telemetry`).
    #[arg(long)]
    telemetry_ca: Option<std::path::PathBuf>,
    /// Room camera: "synthetic", "off", or an IVF (VP8) file.
    #[arg(long, default_value = "synthetic")]
    room_camera: String,
    /// Device camera: "synthetic", "off", or an IVF (VP8) file.
    #[arg(long, default_value = "synthetic")]
    device_camera: String,
    /// Microphone: "synthetic", "off", or an Ogg Opus file.
    #[arg(long, default_value = "synthetic")]
    microphone: String,
    /// Stethoscope: "synthetic", "off", or an Ogg Opus file (decoded, its pre-skip and end
    /// padding trimmed, looped seamlessly and encoded again at --stethoscope-kbps).
    #[arg(long, default_value = "synthetic")]
    stethoscope: String,
    /// Room camera frame rate.
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Room camera bitrate, kbit/s (all its simulcast layers together).
    #[arg(long, default_value_t = 600)]
    video_kbps: u32,
    /// Device camera frame rate.
    #[arg(long, default_value_t = 15)]
    device_fps: u32,
    /// Device camera bitrate, kbit/s (all its simulcast layers together).
    #[arg(long, default_value_t = 400)]
    device_kbps: u32,
    /// Stethoscope bitrate, kbit/s (at least 64).
    #[arg(long, default_value_t = 96)]
    stethoscope_kbps: u32,
    /// VP8 temporal layers of the synthetic cameras (1 to 3): with 2 or 3 the server can
    /// lower a camera's frame rate for a doctor whose link cannot carry all of it, instead of
    /// pausing it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    temporal_layers: u8,
    /// Simulcast layers of the synthetic room camera (1 to 3: rids `q`, `h`, `f` at a
    /// quarter, half and full resolution, like the pages; the device camera gets at most 2).
    /// Each camera's bitrate is shared between its layers, each layer keeps the temporal
    /// layers, and the server sends a doctor whose link cannot carry the full picture a
    /// smaller one instead of pausing the camera. 1: one layer per camera.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    simulcast: u8,
    /// Keep every encoder at its configured bitrate (by default the video bitrates follow
    /// the uplink's congestion feedback; audio keeps its bitrate either way).
    #[arg(long)]
    fixed_bitrate: bool,
    /// Send media to this address instead of the server's ICE candidate (a relay in front of
    /// the media port, such as `cabine-impair`).
    #[arg(long)]
    media_via: Option<std::net::SocketAddr>,
    /// Mean heart rate of the simulated patient.
    #[arg(long, default_value_t = 72.0)]
    heart_rate: f64,
    /// Seed of the simulated signals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Take a blood pressure reading every this many seconds (0: never).
    #[arg(long, default_value_t = 120)]
    bp_every: u64,
    /// Stop after this many seconds (default: run until Ctrl-C or SIGTERM).
    #[arg(long)]
    duration: Option<u64>,
    #[command(flatten)]
    timing: DeviceTiming,
    /// Stamp telemetry capture times with a clock this far off, ms (negative: behind), to
    /// simulate a cabin whose clock is wrong.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    clock_offset_ms: i64,
    /// How long to gather ICE candidates before sending an offer, ms.
    #[arg(long, default_value_t = 5000)]
    gather_timeout_ms: u64,
    /// How long to wait for a media connection (ICE and DTLS) once answered, ms.
    #[arg(long, default_value_t = 10000)]
    connect_timeout_ms: u64,
    /// Offer full-resolution stills of the otoscope on the telemetry link (taken on the
    /// doctor's `take_snapshot`): "auto" (with the synthetic device camera), "on" (also when
    /// the device camera is off or published by another process), "off".
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    stills: String,
    /// Give up a media connection that stays `disconnected` this long, ms, and dial it again
    /// (default 2000: a dead node is noticed within ~3 s; longer on a loaded machine).
    #[arg(long, default_value_t = 2000)]
    disconnected_grace_ms: u64,
    /// On exit, print what the run did as one JSON line on stdout:
    /// `{"stats":{"publish_sessions":…,"telemetry":{"sessions":…,"resent":…}}}`.
    #[arg(long)]
    stats_json: bool,
}

/// How fast the simulated devices go (faster than real ones for short runs and tests).
#[derive(Debug, Args)]
struct DeviceTiming {
    /// Time between pulse oximeter readings, ms (default: the simulator's, 1 s).
    #[arg(long)]
    oximeter_ms: Option<u64>,
    /// Time between thermometer readings, ms (default: the simulator's, 10 s).
    #[arg(long)]
    thermometer_ms: Option<u64>,
    /// Time between scale readings, ms (default: the simulator's, 30 s).
    #[arg(long)]
    scale_ms: Option<u64>,
    /// Time from a blood pressure command to its result, ms (default: the simulator's, 6 s).
    #[arg(long)]
    bp_duration_ms: Option<u64>,
}

impl DeviceTiming {
    /// Sets the intervals given on the command line.
    fn apply(&self, devices: &mut DevicesConfig) {
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        devices.oximeter_interval = ms(self.oximeter_ms, devices.oximeter_interval);
        devices.thermometer_interval = ms(self.thermometer_ms, devices.thermometer_interval);
        devices.scale_interval = ms(self.scale_ms, devices.scale_interval);
        devices.bp_duration = ms(self.bp_duration_ms, devices.bp_duration);
    }
}

#[derive(Debug, Args)]
struct DevicesArgs {
    /// Simulated seconds to print.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean heart rate.
    #[arg(long, default_value_t = 72.0)]
    heart_rate: f64,
    /// ECG leads (1 to 3).
    #[arg(long, default_value_t = 3)]
    ecg_leads: u8,
    /// Start a blood pressure measurement at this second (negative: never); repeat for
    /// several.
    #[arg(long, default_values_t = [2.0], allow_negative_numbers = true)]
    bp_at: Vec<f64>,
    /// Leave waveform chunks out (measurements and statuses only).
    #[arg(long)]
    no_waveforms: bool,
    /// Pace the output in real time.
    #[arg(long)]
    realtime: bool,
    #[command(flatten)]
    timing: DeviceTiming,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Devices(args) => devices(args),
        Command::Dial(args) => {
            init_logging();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cabine-kiosk: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run_dial(*args))
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    // The webrtc stack warns about many transient things (candidates closing at shutdown,
    // packets before a track is bound): keep the kiosk's own messages, and its errors.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,webrtc=error,webrtc_ice=error,webrtc_dtls=error,webrtc_sctp=error,\
             webrtc_srtp=error,webrtc_data=error,webrtc_mdns=error,turn=error,interceptor=error",
        )
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn input(value: &str) -> Input {
    match value {
        "synthetic" => Input::Synthetic,
        "off" | "none" => Input::Off,
        path => Input::File(PathBuf::from(path)),
    }
}

async fn run_dial(args: DialArgs) -> ExitCode {
    let mut ice_servers: Vec<IceServer> = args.stun.iter().map(IceServer::stun).collect();
    for url in &args.turn {
        ice_servers.push(IceServer::turn(url, &args.turn_user, &args.turn_pass));
    }
    let mut config = DialConfig::new(args.server, args.token);
    config.fallback_servers = args.also_server;
    config.room = args.room;
    config.stream_id = args.stream_id;
    config.client = ClientOptions {
        ice_servers,
        relay_only: args.relay_only,
        ice_tcp: args.ice_tcp,
        loopback_only: args.loopback,
        accept_invalid_certs: args.insecure,
        media_via: args.media_via,
        gather_timeout: Duration::from_millis(args.gather_timeout_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        ..ClientOptions::default()
    };
    config.subscribe = !args.no_subscribe;
    config.disconnected_grace = Duration::from_millis(args.disconnected_grace_ms);
    config.seed = args.seed;
    config.heart_rate_bpm = args.heart_rate;
    if args.no_devices {
        config.devices = None;
    } else if let Some(devices) = config.devices.as_mut() {
        args.timing.apply(devices);
    }
    let network_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    config.telemetry = if args.no_telemetry {
        None
    } else {
        let verification = match &args.telemetry_ca {
            Some(path) => match telemetry_roots(path) {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("cabine-kiosk: {e}");
                    return ExitCode::from(2);
                }
            },
            None => None,
        };
        // Stills come from the synthetic device camera; a file or no camera has none to give.
        let stills = match args.stills.as_str() {
            "on" => true,
            "off" => false,
            _ => matches!(input(&args.device_camera), Input::Synthetic),
        }
        .then(cabine_kiosk::stills::StillsConfig::default);
        let clock = (args.clock_offset_ms != 0).then(|| {
            cabine_sidecar::client::KioskClock::offset(args.clock_offset_ms.saturating_mul(1000))
        });
        tokio::spawn(network_changes(std::sync::Arc::clone(&network_changed)));
        Some(cabine_kiosk::telemetry::TelemetryConfig {
            url: args.telemetry.clone(),
            verification,
            stills,
            clock,
            network_changed: Some(network_changed),
        })
    };
    config.bp_every = (args.bp_every > 0).then(|| Duration::from_secs(args.bp_every));
    config.media.room_camera = input(&args.room_camera);
    config.media.device_camera = input(&args.device_camera);
    config.media.microphone = input(&args.microphone);
    config.media.stethoscope = input(&args.stethoscope);
    config.media.room_fps = args.fps;
    config.media.room_kbps = args.video_kbps;
    config.media.device_fps = args.device_fps;
    config.media.device_kbps = args.device_kbps;
    config.media.stethoscope_bps = args.stethoscope_kbps.saturating_mul(1000);
    config.media.adaptive = !args.fixed_bitrate;
    config.media.temporal_layers = args.temporal_layers;
    config.media.simulcast = args.simulcast;

    let duration = args.duration;
    let stats_json = args.stats_json;
    let shutdown = async move {
        let limit = async {
            match duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
            _ = limit => {}
        }
    };
    let outcome = if args.queue {
        let request = cabine_kiosk::queue::QueueRequest {
            reason: args.reason,
            specialty: args.specialty,
            priority: args.priority,
            subject: args.subject,
            site: args.site,
        };
        let opts = cabine_kiosk::queue::QueueOptions {
            accept_invalid_certs: args.insecure,
            ..Default::default()
        };
        let report = |u: &cabine_kiosk::queue::QueueUpdate| {
            println!(
                "ticket {}: position {}, estimated wait {} s",
                u.ticket, u.position, u.estimated_wait_s
            );
        };
        match cabine_kiosk::queue::dial_queued(config, &request, &opts, report, shutdown).await {
            Ok((admission, stats)) => {
                println!("taken: room {}", admission.room);
                Ok(stats)
            }
            Err(cabine_kiosk::queue::QueueError::Stopped) => {
                println!("cancelled");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                tracing::error!(error = %e, "cabine-kiosk stops");
                return ExitCode::FAILURE;
            }
        }
    } else {
        dial::run(config, shutdown).await
    };
    match outcome {
        Ok(stats) => {
            tracing::info!(
                publish_sessions = stats.publish_sessions,
                subscribe_sessions = stats.subscribe_sessions,
                received_packets = stats.received_packets,
                "done"
            );
            if stats_json {
                println!("{}", json!({ "stats": stats_to_json(&stats) }));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "cabine-kiosk stops");
            ExitCode::FAILURE
        }
    }
}

/// Notifies `changed` on every SIGUSR1 (the network changed); never returns.
#[cfg(unix)]
async fn network_changes(changed: std::sync::Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut s) = signal(SignalKind::user_defined1()) else {
        return;
    };
    while s.recv().await.is_some() {
        tracing::info!("SIGUSR1: the network changed, redialling the telemetry link");
        changed.notify_one();
    }
}

#[cfg(not(unix))]
async fn network_changes(_changed: std::sync::Arc<tokio::sync::Notify>) {}

/// `--stats-json`'s object.
fn stats_to_json(s: &dial::DialStats) -> serde_json::Value {
    let t = &s.telemetry;
    json!({
        "publish_sessions": s.publish_sessions,
        "subscribe_sessions": s.subscribe_sessions,
        "tracks": s.tracks.iter().map(|(id, t)| (id.clone(), json!({
            "frames": t.frames,
            "bytes": t.bytes,
            "dropped": t.dropped,
            "keyframe_requests": t.keyframe_requests,
            "feedback": t.feedback,
            "paused_frames": t.paused_frames,
            "layers": t.layers.iter().map(|l| json!({
                "rid": l.rid,
                "frames": l.frames,
                "bytes": l.bytes,
                "budget_bps": l.budget_bps,
                "keyframe_requests": l.keyframe_requests,
            })).collect::<Vec<_>>(),
        }))).collect::<serde_json::Map<_, _>>(),
        "received_tracks": s.received_tracks,
        "received_packets": s.received_packets,
        "device_outputs": s.device_outputs,
        "uplink_target_bps": s.uplink_target_bps,
        "uplink_decreases": s.uplink_decreases,
        "uplink_delay_cuts": s.uplink_delay_cuts,
        "telemetry": {
            "connected": t.connected,
            "sessions": t.sessions,
            "measurements": t.measurements,
            "waveforms": t.waveforms,
            "statuses": t.statuses,
            "dropped": t.dropped,
            "commands": t.commands,
            "resent": t.resent,
            "rediscovered": t.rediscovered,
            "stills": t.stills,
        },
    })
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}

fn devices(args: DevicesArgs) -> ExitCode {
    let mut config = DevicesConfig::new(args.seed, args.heart_rate);
    config.ecg_leads = args.ecg_leads;
    args.timing.apply(&mut config);
    let start = Instant::now();
    let mut sim = match Devices::new(config, start) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cabine-kiosk: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    for c in sim.channels() {
        let line = json!({
            "type": "channel",
            "channel": c.id.0,
            "kind": match c.kind { ChannelKind::Measurement => "measurement", ChannelKind::Waveform => "waveform" },
            "device": c.device.as_str(),
            "label": c.label,
            "loinc": c.code.loinc,
            "mdc": c.code.mdc,
            "mdc_name": c.code.mdc_name,
            "unit": c.code.unit,
            "sample_rate_hz": c.sample_rate_hz,
            "leads": c.leads,
            "commands": c.commands,
        });
        if !print_line(&mut out, &line) {
            return ExitCode::SUCCESS;
        }
    }
    let end = start + Duration::from_secs_f64(args.seconds.max(0.0));
    // The blood pressure commands still to give, soonest last.
    let mut bp_at: Vec<Instant> = args
        .bp_at
        .iter()
        .filter(|s| **s >= 0.0)
        .map(|s| start + Duration::from_secs_f64(*s))
        .collect();
    bp_at.sort_by(|a, b| b.cmp(a));
    let mut now = start;
    while now <= end {
        while bp_at.last().is_some_and(|t| now >= *t) {
            bp_at.pop();
            let outcome = sim.handle_command(ChannelId::BP_CUFF, START_MEASUREMENT, now);
            let line = json!({
                "t_ms": ms(now - start),
                "type": "command",
                "channel": ChannelId::BP_CUFF.0,
                "name": START_MEASUREMENT,
                "outcome": format!("{outcome:?}").to_lowercase(),
            });
            if !print_line(&mut out, &line) {
                return ExitCode::SUCCESS;
            }
        }
        for o in sim.poll(now) {
            if args.no_waveforms && matches!(o, DeviceOutput::Waveform(_)) {
                continue;
            }
            if !print_line(&mut out, &to_json(&o, start)) {
                return ExitCode::SUCCESS;
            }
        }
        let mut next = sim.poll_timeout();
        if let Some(&t) = bp_at.last() {
            next = next.min(t);
        }
        if args.realtime {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        now = next;
    }
    ExitCode::SUCCESS
}

/// Writes one JSON line; false when stdout is closed (e.g. piped into `head`).
fn print_line(out: &mut impl std::io::Write, value: &serde_json::Value) -> bool {
    writeln!(out, "{value}").is_ok()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn to_json(o: &DeviceOutput, start: Instant) -> serde_json::Value {
    match o {
        DeviceOutput::Measurement(m) => json!({
            "t_ms": ms(m.captured - start),
            "type": "measurement",
            "channel": m.channel.0,
            "device": m.device.as_str(),
            "seq": m.seq,
            "status": match m.status { MeasurementStatus::Valid => "valid", MeasurementStatus::Questionable => "questionable" },
            "values": m.values.iter().map(|v| json!({
                "display": v.code.display,
                "value": v.value,
                "unit": v.code.unit,
                "loinc": v.code.loinc,
                "mdc": v.code.mdc,
            })).collect::<Vec<_>>(),
        }),
        DeviceOutput::Waveform(w) => json!({
            "t_ms": ms(w.first_sample - start),
            "type": "waveform",
            "channel": w.channel.0,
            "device": w.device.as_str(),
            "seq": w.seq,
            "sample_rate_hz": w.sample_rate_hz,
            "leads": w.leads,
            "scale": w.scale,
            "offset": w.offset,
            "samples": w.samples,
        }),
        DeviceOutput::Status(s) => json!({
            "t_ms": ms(s.at - start),
            "type": "status",
            "channel": s.channel.0,
            "device": s.device.as_str(),
            "state": match s.state {
                DeviceState::Attached => "attached",
                DeviceState::Detached => "detached",
                DeviceState::Measuring => "measuring",
                DeviceState::Idle => "idle",
            },
            "battery_percent": s.battery_percent,
            "detail": s.detail,
        }),
    }
}

/// The CA roots of `--telemetry-ca`.
fn telemetry_roots(
    path: &std::path::Path,
) -> Result<cabine_sidecar::tls::ServerVerification, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--telemetry-ca {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("--telemetry-ca {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--telemetry-ca {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "--telemetry-ca {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(cabine_sidecar::tls::ServerVerification::Roots(
        std::sync::Arc::new(roots),
    ))
}
