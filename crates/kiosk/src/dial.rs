//! A whole simulated cabin dialling into a Cabine server: what `cabine-kiosk dial` runs.
//!
//! [`run`] publishes the four cabin tracks over WHIP (from [`sources`](crate::sources)),
//! subscribes to the room over WHEP (the doctor), runs the [`devices`](crate::devices)
//! simulator, and keeps all of it up: when a peer connection fails it opens new WHIP/WHEP
//! sessions with exponential backoff, until the `shutdown` future completes; then it
//! `DELETE`s its sessions and returns what it did.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cabine_kiosk::dial::DialError> {
//! use cabine_kiosk::dial::{self, DialConfig};
//! let mut config = DialConfig::new("http://127.0.0.1:8080", "<jwt>");
//! config.client.loopback_only = true;
//! let stats = dial::run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! println!("{} publish sessions", stats.publish_sessions);
//! # Ok(()) }
//! ```
//!
//! Shape: one thread per media source (encoding is CPU work; each thread paces its frames on
//! its own clock), one async pump per track that writes frames to whichever publisher is
//! current and turns PLI/FIR counts into keyframe requests, one supervisor task each for the
//! publisher and the subscriber, and one task driving the devices simulator.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_client::budget::{split_layers, Budget, LayerDemand, Share, VideoDemand};
use cabine_client::congestion::{ControllerConfig, RateController};
use cabine_client::{
    ClientOptions, Codec, Error, LocalLayer, LocalTrack, Publisher, Subscriber, TrackSpec,
    SAMPLE_MTU,
};
use tokio::sync::{mpsc, watch};
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

use crate::backoff::Backoff;
use crate::devices::{
    codes, ChannelId, DeviceCommand, DeviceError, DeviceOutput, Devices, DevicesConfig,
    START_MEASUREMENT,
};
use crate::sources::{
    spatial_layers, AudioSource, EncodedFrame, IvfSource, LayerFrames, MediaSource, OggOpusSource,
    OpusConfig, Pattern, SimulcastSource, SourceError, TemporalLayer, VideoSource, Vp8Config,
    Vp8Packetizer, MAX_SPATIAL_LAYERS, SIMULCAST_RIDS,
};
use crate::telemetry::{self, TelemetryConfig, TelemetryStats};

/// Track id of the room camera.
pub const ROOM_CAMERA: &str = "room-camera";
/// Track id of the device camera (otoscope, dermatoscope…).
pub const DEVICE_CAMERA: &str = "device-camera";
/// Track id of the microphone.
pub const MICROPHONE: &str = "microphone";
/// Track id of the stethoscope.
pub const STETHOSCOPE: &str = "stethoscope";

/// Where a track's media comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The synthetic source of [`sources`](crate::sources).
    Synthetic,
    /// A file played in a loop: IVF (VP8) for cameras, Ogg Opus for audio.
    File(PathBuf),
    /// Not published.
    Off,
}

/// The cabin's media.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaConfig {
    /// The room camera (`room-camera`).
    pub room_camera: Input,
    /// The device camera (`device-camera`).
    pub device_camera: Input,
    /// The microphone (`microphone`).
    pub microphone: Input,
    /// The stethoscope (`stethoscope`).
    pub stethoscope: Input,
    /// Room camera frames per second.
    pub room_fps: u32,
    /// Room camera bitrate, kbit/s (all its simulcast layers together).
    pub room_kbps: u32,
    /// Device camera frames per second.
    pub device_fps: u32,
    /// Device camera bitrate, kbit/s (all its simulcast layers together).
    pub device_kbps: u32,
    /// Stethoscope Opus bitrate, bit/s (at least 64000).
    pub stethoscope_bps: u32,
    /// VP8 temporal layers of the synthetic cameras (1 to 3). With two, the SFU can halve a
    /// camera's frame rate for a subscriber whose link cannot carry it instead of pausing it.
    pub temporal_layers: u8,
    /// Simulcast layers of the synthetic room camera (1 to 3: rids `f`; `h`, `f`; `q`, `h`,
    /// `f`, at full, half and quarter resolution, like the pages); the device camera gets at
    /// most two. Each camera's bitrate is shared between its layers (see
    /// [`LAYER_WEIGHTS`](crate::sources::LAYER_WEIGHTS)), each layer keeps the temporal
    /// layers. With more than one, the SFU sends a subscriber whose link cannot carry the
    /// full picture a smaller one instead of pausing the camera. File inputs are one layer.
    pub simulcast: u8,
    /// Adapt the video bitrates to the uplink (see [`congestion`](cabine_client::congestion)): the
    /// audio tracks keep their bitrates, the device camera gets its share before the room
    /// camera, which is paused when even its minimum does not fit. Off: every encoder runs
    /// at its configured bitrate whatever the link does.
    pub adaptive: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            room_camera: Input::Synthetic,
            device_camera: Input::Synthetic,
            microphone: Input::Synthetic,
            stethoscope: Input::Synthetic,
            room_fps: 25,
            room_kbps: 600,
            device_fps: 15,
            device_kbps: 400,
            stethoscope_bps: 96_000,
            temporal_layers: 2,
            simulcast: 3,
            adaptive: true,
        }
    }
}

/// Device outputs queued for the telemetry link before new ones are dropped (a few seconds of
/// waveforms).
const TELEMETRY_QUEUE: usize = 1024;

/// Everything [`run`] needs.
#[derive(Debug)]
pub struct DialConfig {
    /// Base URL of the Cabine server, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The kiosk's JWT.
    pub token: String,
    /// The room; by default the token's `room` claim.
    pub room: Option<String>,
    /// The msid stream id of the published tracks; by default the token's `sub` claim, or
    /// `kiosk`.
    pub stream_id: Option<String>,
    /// WebRTC and HTTP options (TURN servers, loopback, timeouts…).
    pub client: ClientOptions,
    /// The published media.
    pub media: MediaConfig,
    /// Subscribe to the room (the doctor) over WHEP.
    pub subscribe: bool,
    /// Seed of the synthetic signals (voice, heart sounds, devices).
    pub seed: u64,
    /// Mean heart rate of the simulated patient, beats per minute.
    pub heart_rate_bpm: f64,
    /// Run the devices simulator (with this configuration; its seed and heart rate are
    /// replaced by [`seed`](Self::seed) and [`heart_rate_bpm`](Self::heart_rate_bpm)).
    pub devices: Option<DevicesConfig>,
    /// Also start a blood pressure measurement this often by itself (the doctor's command
    /// does it on demand).
    pub bp_every: Option<Duration>,
    /// Send the devices' outputs to the server's telemetry sidecar (QUIC) and take the
    /// doctor's commands from it. Ignored when [`device_outputs`](Self::device_outputs) or
    /// [`device_commands`](Self::device_commands) is set (the caller handles telemetry).
    pub telemetry: Option<TelemetryConfig>,
    /// Every device output, for a telemetry client. Outputs are dropped when it is full.
    pub device_outputs: Option<mpsc::Sender<DeviceOutput>>,
    /// Commands for the devices, from a telemetry client.
    pub device_commands: Option<mpsc::Receiver<DeviceCommand>>,
    /// How often to log a line about the devices.
    pub device_summary_every: Duration,
    /// How often to log a line about the media sessions.
    pub stats_every: Duration,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// A connection `disconnected` this long is given up and replaced (and one whose RTCP
    /// feedback stopped for this long plus 1 s: a dead node is noticed within ~3 s).
    pub disconnected_grace: Duration,
    /// Other nodes of the cluster (base URLs), asked in turn for the room when the node in
    /// use stops answering (it died): each redirects to wherever the room is placed now.
    pub fallback_servers: Vec<String>,
}

impl DialConfig {
    /// Defaults: all four synthetic tracks, subscribe, devices at 72 bpm, seed 1.
    pub fn new(server: impl Into<String>, token: impl Into<String>) -> Self {
        DialConfig {
            server: server.into(),
            token: token.into(),
            room: None,
            stream_id: None,
            client: ClientOptions::default(),
            media: MediaConfig::default(),
            subscribe: true,
            seed: 1,
            heart_rate_bpm: 72.0,
            devices: Some(DevicesConfig::new(1, 72.0)),
            bp_every: None,
            telemetry: Some(TelemetryConfig::default()),
            device_outputs: None,
            device_commands: None,
            device_summary_every: Duration::from_secs(5),
            stats_every: Duration::from_secs(10),
            backoff: Backoff::default(),
            disconnected_grace: Duration::from_secs(2),
            fallback_servers: Vec::new(),
        }
    }
}

/// Why [`run`] could not run, or stopped by itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The configuration cannot work.
    #[error("invalid kiosk configuration: {0}")]
    InvalidConfig(String),
    /// A media source could not be created.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The devices simulator refused its configuration.
    #[error(transparent)]
    Devices(#[from] DeviceError),
    /// The server refused the kiosk in a way retrying cannot fix (bad token, forbidden
    /// role, unusable offer).
    #[error("{what} refused: {source}")]
    Refused {
        /// `"publishing"` or `"subscribing"`.
        what: &'static str,
        /// The error.
        #[source]
        source: Error,
    },
}

/// Per-track counters of a [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Frames handed to a publisher.
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames produced while no publisher was connected.
    pub dropped: u64,
    /// Keyframe requests (PLI/FIR) received.
    pub keyframe_requests: u64,
    /// RTCP feedback packets received (receiver reports and transport-wide congestion
    /// control), in the current session: the sign the server still hears this track.
    pub feedback: u64,
    /// The encoder bitrate the uplink budget gives this video track, bit/s (0 before the
    /// first decision, and for audio, which keeps its configured bitrate).
    pub budget_bps: u32,
    /// Frames not sent because the budget paused the track.
    pub paused_frames: u64,
    /// The simulcast layers, lowest resolution first (empty for a single-layer track).
    pub layers: Vec<LayerStats>,
}

/// Counters of one simulcast layer of a published track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// The layer's rid.
    pub rid: String,
    /// Frames sent.
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// The encoder bitrate the uplink budget gives the layer, bit/s (0: not sent, or before
    /// the first decision).
    pub budget_bps: u32,
    /// Keyframe requests (PLI/FIR) received for this layer.
    pub keyframe_requests: u64,
}

/// What a [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialStats {
    /// WHIP sessions established.
    pub publish_sessions: u64,
    /// WHEP sessions established.
    pub subscribe_sessions: u64,
    /// Published tracks by track id.
    pub tracks: BTreeMap<String, TrackStats>,
    /// Tracks received from the room.
    pub received_tracks: u64,
    /// RTP packets received from the room.
    pub received_packets: u64,
    /// Device outputs produced.
    pub device_outputs: u64,
    /// The telemetry link to the server's sidecar.
    pub telemetry: TelemetryStats,
    /// The uplink rate controller's current target, bit/s on the wire (0 when not adaptive
    /// or not publishing).
    pub uplink_target_bps: u64,
    /// Times the rate controller cut the target, over every session.
    pub uplink_decreases: u64,
    /// Of those, cuts for queue delay (the others were for loss).
    pub uplink_delay_cuts: u64,
}

/// Claims read from a JWT without checking its signature (the server checks it), to choose
/// defaults for the room and the stream id.
pub type TokenHint = cabine_proto::token::UnverifiedClaims;

/// Reads the `sub` and `room` claims of a JWT; `None` if it is not a readable JWT.
pub fn token_hint(token: &str) -> Option<TokenHint> {
    cabine_proto::token::read_unverified(token)
}

/// Runs the cabin until `shutdown` completes (or the server refuses it for good), then ends
/// its sessions.
pub async fn run(
    mut config: DialConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<DialStats, DialError> {
    let hint = token_hint(&config.token).unwrap_or_default();
    let room = config
        .room
        .clone()
        .or(hint.room.filter(|r| r != "*"))
        .ok_or_else(|| DialError::InvalidConfig("no room given and the token names none".into()))?;
    let stream_id = config
        .stream_id
        .clone()
        .or(hint.sub)
        .filter(|s| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control()))
        .unwrap_or_else(|| "kiosk".to_owned());
    let whip = endpoint(&config.server, "whip", &room)?;
    let whep = endpoint(&config.server, "whep", &room)?;

    let stats = Arc::new(Mutex::new(DialStats::default()));
    // The telemetry link counts on its own; folded into `stats` when the run ends.
    let telemetry_stats = Arc::new(Mutex::new(TelemetryStats::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (pub_tx, pub_rx) = watch::channel::<Option<Arc<Publisher>>>(None);
    // The publisher being replaced after a move, fed alongside the new one while they overlap.
    let (leaving_tx, leaving_rx) = watch::channel::<Option<Arc<Publisher>>>(None);
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<DialError>(2);
    // Where the room moved (a `Move` on the telemetry control stream): media follows.
    let (moved_tx, moved_rx) = watch::channel::<Option<String>>(None);

    // Media: build every source first, so a bad file or setting fails before dialling.
    let sources = build_sources(&config)?;
    if sources.is_empty() {
        return Err(DialError::InvalidConfig("every track is off".into()));
    }
    let mut specs = Vec::new();
    let mut threads = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut controls = Vec::new();
    for (track_id, codec, source) in sources {
        let count = source.spatial_layers().clamp(1, MAX_SPATIAL_LAYERS);
        let rids = &SIMULCAST_RIDS[MAX_SPATIAL_LAYERS - count..];
        specs.push(match codec {
            Codec::Opus => TrackSpec::audio(stream_id.clone(), track_id),
            video if count > 1 => TrackSpec::video(stream_id.clone(), track_id, video)
                .with_simulcast(rids.iter().copied()),
            video => TrackSpec::video(stream_id.clone(), track_id, video),
        });
        let layer_stats = rids
            .iter()
            .filter(|_| count > 1)
            .map(|rid| LayerStats {
                rid: (*rid).to_owned(),
                ..LayerStats::default()
            })
            .collect();
        stats
            .lock()
            .map_err(|_| DialError::InvalidConfig("stats lock poisoned".into()))?
            .tracks
            .insert(
                track_id.to_owned(),
                TrackStats {
                    layers: layer_stats,
                    ..TrackStats::default()
                },
            );
        // Audio catches up after a stall (every sample matters); a camera drops the frames it
        // missed, like a real one, rather than sending a burst of stale frames that a small
        // uplink's queue cannot take. Its queue to the pump is short for the same reason.
        let catch_up = codec == Codec::Opus;
        let (tx, rx) = mpsc::channel(if catch_up { 8 } else { 2 });
        let demands = match (codec, track_id) {
            (Codec::Opus, _) => Vec::new(),
            (_, DEVICE_CAMERA) => layer_demands(count, config.media.device_kbps),
            _ => layer_demands(count, config.media.room_kbps),
        };
        let control = Arc::new(TrackControl::new(demands));
        threads.push(spawn_source(
            track_id,
            source,
            catch_up,
            tx,
            Arc::clone(&control),
        )?);
        tasks.spawn(pump(
            track_id,
            rx,
            (pub_rx.clone(), leaving_rx.clone()),
            Arc::clone(&control),
            Arc::clone(&stats),
            stop_rx.clone(),
        ));
        controls.push((track_id, control));
    }
    if config.media.adaptive {
        tasks.spawn(adapt_loop(
            budget(&config.media, &controls),
            controls,
            pub_rx.clone(),
            Arc::clone(&stats),
            stop_rx.clone(),
        ));
    }

    let ctx = Arc::new(Ctx {
        token: config.token.clone(),
        client: config.client.clone(),
        backoff: config.backoff,
        grace: config.disconnected_grace,
        stats: Arc::clone(&stats),
        fatal: fatal_tx,
    });
    let nodes = Nodes::new(&config.server, &config.fallback_servers);
    tasks.spawn(publish_loop(
        Arc::clone(&ctx),
        (whip, room.clone(), nodes.clone()),
        specs,
        (pub_tx, leaving_tx),
        moved_rx.clone(),
        stop_rx.clone(),
    ));
    if config.subscribe {
        tasks.spawn(subscribe_loop(
            Arc::clone(&ctx),
            (whep, room.clone(), nodes.clone()),
            moved_rx.clone(),
            stop_rx.clone(),
        ));
    }
    if let Some(mut devices) = config.devices.take() {
        devices.seed = config.seed;
        devices.heart_rate_bpm = config.heart_rate_bpm;
        let sim = Devices::new(devices, Instant::now())?;
        let mut outputs = config.device_outputs.take();
        let mut commands = config.device_commands.take();
        if let Some(telemetry_config) = config.telemetry.take() {
            if outputs.is_none() && commands.is_none() {
                let (out_tx, out_rx) = mpsc::channel(TELEMETRY_QUEUE);
                let (cmd_tx, cmd_rx) = mpsc::channel(16);
                outputs = Some(out_tx);
                commands = Some(cmd_rx);
                let http = cabine_client::http_client(&config.client)
                    .map_err(|e| DialError::InvalidConfig(format!("HTTP client: {e}")))?;
                tasks.spawn(telemetry::run(
                    telemetry::Link {
                        server: config.server.clone(),
                        token: config.token.clone(),
                        room: room.clone(),
                        http,
                        config: telemetry_config,
                        channels: sim.channels().to_vec(),
                        outputs: out_rx,
                        commands: cmd_tx,
                        backoff: config.backoff,
                        stats: Arc::clone(&telemetry_stats),
                        relay_only: config.client.relay_only,
                        accept_invalid_certs: config.client.accept_invalid_certs,
                        moved: moved_tx.clone(),
                        fallbacks: config.fallback_servers.clone(),
                    },
                    stop_rx.clone(),
                ));
            } else {
                tracing::info!("telemetry left to the caller (device outputs taken)");
            }
        }
        tasks.spawn(devices_loop(
            sim,
            DevicesShell {
                summary_every: config.device_summary_every,
                bp_every: config.bp_every,
                outputs,
                commands,
                stats: Arc::clone(&stats),
            },
            stop_rx.clone(),
        ));
    }
    tasks.spawn(stats_loop(
        Arc::clone(&stats),
        config.stats_every,
        stop_rx.clone(),
    ));
    drop(ctx);

    let mut result = Ok(());
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Some(e) = fatal_rx.recv() => result = Err(e),
    }
    let _ = stop_tx.send(true);
    // The loops close their sessions (DELETE) and the pumps drop their channels, which ends
    // the source threads.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop within 10 s");
        tasks.abort_all();
    }
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    result?;
    let mut stats = stats.lock().map(|s| s.clone()).unwrap_or_default();
    stats.telemetry = telemetry_stats
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    Ok(stats)
}

/// Shared by the supervisor loops.
struct Ctx {
    token: String,
    client: ClientOptions,
    backoff: Backoff,
    grace: Duration,
    stats: Arc<Mutex<DialStats>>,
    fatal: mpsc::Sender<DialError>,
}

impl Ctx {
    fn update(&self, f: impl FnOnce(&mut DialStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }
}

fn endpoint(server: &str, kind: &str, room: &str) -> Result<String, DialError> {
    let mut url = reqwest::Url::parse(server)
        .map_err(|e| DialError::InvalidConfig(format!("server URL {server:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(DialError::InvalidConfig(format!(
            "server URL {server:?} is not http or https"
        )));
    }
    url.path_segments_mut()
        .map_err(|_| DialError::InvalidConfig(format!("server URL {server:?} has no path")))?
        .pop_if_empty()
        .push(kind)
        .push(room);
    Ok(url.to_string())
}

type Source = (&'static str, Codec, Box<dyn MediaSource>);

fn build_sources(config: &DialConfig) -> Result<Vec<Source>, DialError> {
    let m = &config.media;
    let mut out: Vec<Source> = Vec::new();
    let video =
        |input: &Input, synthetic: &dyn Fn() -> Result<Box<dyn MediaSource>, SourceError>| {
            Ok::<Option<Box<dyn MediaSource>>, SourceError>(match input {
                Input::Synthetic => Some(synthetic()?),
                Input::File(p) => Some(Box::new(IvfSource::open(p)?)),
                Input::Off => None,
            })
        };
    let audio = |input: &Input,
                 synthetic: &dyn Fn() -> Result<AudioSource, SourceError>,
                 config: OpusConfig| {
        Ok::<Option<Box<dyn MediaSource>>, SourceError>(match input {
            Input::Synthetic => Some(Box::new(synthetic()?)),
            Input::File(p) => Some(Box::new(OggOpusSource::open(p, config)?)),
            Input::Off => None,
        })
    };
    // Periodic keyframes are only a fallback (the server asks with a PLI when a receiver
    // needs one). Each camera has its own period so that their keyframes, several times a
    // frame's size each, do not reach a small uplink's queue together.
    // A camera of several simulcast layers encodes each with its own libvpx encoder.
    let camera = |pattern, fps: u32, kbps, period_s: u32, layers: u8| {
        let config = Vp8Config {
            keyframe_interval: fps.saturating_mul(period_s).max(1),
            temporal_layers: m.temporal_layers,
            ..Vp8Config::new(fps, kbps)
        };
        Ok::<Box<dyn MediaSource>, SourceError>(if layers > 1 {
            Box::new(SimulcastSource::new(pattern, config, usize::from(layers))?)
        } else {
            Box::new(VideoSource::new(pattern, config)?)
        })
    };
    if !(1..=MAX_SPATIAL_LAYERS).contains(&usize::from(m.simulcast)) {
        return Err(DialError::InvalidConfig(format!(
            "{} simulcast layers is not within 1..={MAX_SPATIAL_LAYERS}",
            m.simulcast
        )));
    }
    if let Some(s) = video(&m.room_camera, &|| {
        camera(
            Pattern::RoomCamera,
            m.room_fps,
            m.room_kbps,
            10,
            m.simulcast,
        )
    })? {
        out.push((ROOM_CAMERA, Codec::Vp8, s));
    }
    if let Some(s) = video(&m.device_camera, &|| {
        camera(
            Pattern::Otoscope,
            m.device_fps,
            m.device_kbps,
            7,
            m.simulcast.min(DEVICE_CAMERA_LAYERS),
        )
    })? {
        out.push((DEVICE_CAMERA, Codec::Vp8, s));
    }
    if let Some(s) = audio(
        &m.microphone,
        &|| AudioSource::microphone(config.seed),
        OpusConfig::microphone(),
    )? {
        out.push((MICROPHONE, Codec::Opus, s));
    }
    if let Some(s) = audio(
        &m.stethoscope,
        &|| AudioSource::stethoscope(config.seed, config.heart_rate_bpm, m.stethoscope_bps),
        OpusConfig {
            bitrate_bps: m.stethoscope_bps,
            ..OpusConfig::stethoscope()
        },
    )? {
        out.push((STETHOSCOPE, Codec::Opus, s));
    }
    Ok(out)
}

/// Runs a source on its own thread, paced by the frames' durations: each frame time, the
/// frames of all its layers (one unless simulcast) go to the pump together.
fn spawn_source(
    track_id: &'static str,
    mut source: Box<dyn MediaSource>,
    catch_up: bool,
    tx: mpsc::Sender<LayerFrames>,
    control: Arc<TrackControl>,
) -> Result<std::thread::JoinHandle<()>, DialError> {
    std::thread::Builder::new()
        .name(format!("src-{track_id}"))
        .spawn(move || {
            let mut due = Instant::now();
            let count = source.spatial_layers().min(MAX_SPATIAL_LAYERS);
            let mut bitrates = [UNCHANGED; MAX_SPATIAL_LAYERS];
            let mut frames = LayerFrames::default();
            loop {
                for (layer, (set, wanted)) in
                    bitrates.iter_mut().zip(&control.bitrate_bps).enumerate().take(count)
                {
                    let wanted = wanted.load(Ordering::Relaxed);
                    // 0: the layer is not sent for now; its encoder keeps its last rate.
                    if wanted != *set && wanted != UNCHANGED && wanted != 0 {
                        *set = wanted;
                        if let Err(e) = source.set_layer_bitrate(layer, wanted) {
                            tracing::warn!(track = track_id, layer, error = %e, "cannot change the bitrate");
                        }
                    }
                }
                let keyframes = control.keyframes.swap(0, Ordering::Relaxed);
                if let Err(e) = source.next_layers(keyframes, &mut frames) {
                    tracing::error!(track = track_id, error = %e, "media source failed; track stops");
                    return;
                }
                let Some(duration) = frames.iter().flatten().map(|f| f.duration).next() else {
                    tracing::error!(track = track_id, "media source gave no frame; track stops");
                    return;
                };
                due += duration;
                if tx.blocking_send(std::mem::take(&mut frames)).is_err() {
                    return;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if !catch_up || now - due > Duration::from_secs(1) {
                    // Behind: a camera skips what it missed; audio only when far behind
                    // (suspended machine). Start again from now, no burst.
                    due = now;
                }
            }
        })
        .map_err(|e| DialError::InvalidConfig(format!("cannot start a media thread: {e}")))
}

/// Sends a VP8 frame of a temporal layer: its payloads carry the layer in their descriptor
/// (the track's own payloader would write only a picture id).
async fn write_layered(
    layer: &LocalLayer,
    packetizer: &mut Vp8Packetizer,
    frame: &EncodedFrame,
    temporal: TemporalLayer,
) -> Result<(), Error> {
    let clock = f64::from(Codec::Vp8.clock_rate());
    // Saturating float-to-int conversion is the intent: absurd durations clamp.
    let mut increment = (frame.duration.as_secs_f64() * clock).round() as u32;
    let payloads = packetizer.packetize(&frame.data, Some(temporal), SAMPLE_MTU);
    let count = payloads.len();
    for (i, payload) in payloads.iter().enumerate() {
        layer.write_rtp(payload, i + 1 == count, increment).await?;
        increment = 0;
    }
    Ok(())
}

/// Writes one track's frames to the current publisher, each simulcast layer's to its own
/// RTP stream, and turns each layer's PLI/FIR counts into keyframe requests for that layer.
async fn pump(
    track_id: &'static str,
    mut frames: mpsc::Receiver<LayerFrames>,
    (mut publisher, leaving): (PublisherRx, PublisherRx),
    control: Arc<TrackControl>,
    stats: Arc<Mutex<DialStats>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: Option<Arc<Publisher>> = None;
    let mut seen_requests = [0u64; MAX_SPATIAL_LAYERS];
    let mut last_forced = [Instant::now(); MAX_SPATIAL_LAYERS];
    // Layers not sent at the last frame (bit i: layer i).
    let mut was_paused = 0u8;
    // Frames with a temporal layer get their VP8 descriptor here (picture id, TID, Y,
    // TL0PICIDX), one numbering per RTP stream; the others go through the track's own
    // payloader.
    let fresh = || -> [Vp8Packetizer; MAX_SPATIAL_LAYERS] {
        std::array::from_fn(|_| Vp8Packetizer::new(rand::random(), rand::random()))
    };
    let mut packetizers = fresh();
    // The numbering of the publisher being replaced, kept while it overlaps the new one.
    let mut leaving_packetizers = fresh();
    loop {
        let layers = tokio::select! {
            f = frames.recv() => match f { Some(f) => f, None => break },
            _ = stopped(&mut stop) => break,
        };
        if publisher.has_changed().unwrap_or(true) {
            let next = publisher.borrow_and_update().clone();
            let replaced = leaving
                .borrow()
                .as_ref()
                .zip(current.as_ref())
                .is_some_and(|(l, c)| Arc::ptr_eq(l, c));
            if replaced {
                // Its streams go on with their own picture ids while it overlaps.
                leaving_packetizers = std::mem::replace(&mut packetizers, fresh());
            }
            current = next;
            seen_requests = [0; MAX_SPATIAL_LAYERS];
            if current.is_some() {
                control.keyframes.store(ALL_LAYERS, Ordering::Relaxed);
            }
        }
        let track = current.as_ref().and_then(|p| p.track_by_id(track_id));
        let update = |f: &mut dyn FnMut(&mut TrackStats)| {
            if let Ok(mut s) = stats.lock() {
                if let Some(t) = s.tracks.get_mut(track_id) {
                    f(t);
                }
            }
        };
        let Some(track) = track else {
            update(&mut |t| t.dropped += 1);
            continue;
        };
        let paused = control.paused.load(Ordering::Relaxed);
        // After a move, the old session gets the same frames until it ends.
        let old = leaving.borrow().clone();
        let is_current = |o: &Arc<Publisher>| current.as_ref().is_some_and(|c| Arc::ptr_eq(o, c));
        if let Some(old) = old.as_ref().filter(|o| !is_current(o)) {
            if let Some(old_track) = old.track_by_id(track_id) {
                feed_leaving(old_track, &layers, paused, &mut leaving_packetizers).await;
            }
        }
        let (mut sent, mut bytes, mut held) = (false, 0u64, false);
        for (i, (frame, layer)) in layers.iter().zip(track.layers()).enumerate() {
            let Some(frame) = frame else { continue };
            if frame.data.is_empty() {
                continue;
            }
            let bit = 1u8 << i;
            if paused & bit != 0 {
                was_paused |= bit;
                held = true;
                continue;
            }
            if was_paused & bit != 0 {
                // Resumed: the receiver needs a keyframe to decode this layer again (this
                // frame is sent; the next one is a keyframe).
                was_paused &= !bit;
                control.keyframes.fetch_or(bit, Ordering::Relaxed);
            }
            let written = match frame.temporal {
                Some(t) => write_layered(layer, &mut packetizers[i], frame, t).await,
                None => layer
                    .write_sample(&frame.data, frame.duration)
                    .await
                    .map(|_| ()),
            };
            match written {
                Ok(()) => {
                    sent = true;
                    let len = frame.data.len() as u64;
                    bytes += len;
                    update(&mut |t| {
                        if let Some(l) = t.layers.get_mut(i) {
                            l.frames += 1;
                            l.bytes += len;
                        }
                    });
                }
                Err(e) => tracing::debug!(track = track_id, error = %e, "writing a frame"),
            }
        }
        if sent {
            update(&mut |t| {
                t.frames += 1;
                t.bytes += bytes;
            });
        } else if held {
            update(&mut |t| t.paused_frames += 1);
        }
        let mut feedback = 0;
        for (i, layer) in track.layers().iter().enumerate().take(MAX_SPATIAL_LAYERS) {
            let rtcp = layer.rtcp_stats();
            feedback += rtcp.receiver_reports + rtcp.twcc_feedbacks;
            let requests = rtcp.keyframe_requests();
            if requests > seen_requests[i] {
                let new = requests - seen_requests[i];
                seen_requests[i] = requests;
                update(&mut |t| {
                    t.keyframe_requests += new;
                    if let Some(l) = t.layers.get_mut(i) {
                        l.keyframe_requests += new;
                    }
                });
                // At most one forced keyframe per 300 ms and layer, like browsers.
                if last_forced[i].elapsed() > Duration::from_millis(300) {
                    last_forced[i] = Instant::now();
                    control.keyframes.fetch_or(1 << i, Ordering::Relaxed);
                }
            }
        }
        update(&mut |t| t.feedback = feedback);
    }
}

/// Where the pumps find a publisher (the current one, or the one a move is replacing).
type PublisherRx = watch::Receiver<Option<Arc<Publisher>>>;
/// The side that names it.
type PublisherTx = watch::Sender<Option<Arc<Publisher>>>;

/// Writes a frame's layers to the session a move is replacing (no statistics: they belong to
/// the current session); a write that fails is the old session ending.
async fn feed_leaving(
    track: &LocalTrack,
    layers: &LayerFrames,
    paused: u8,
    packetizers: &mut [Vp8Packetizer; MAX_SPATIAL_LAYERS],
) {
    for (i, (frame, layer)) in layers.iter().zip(track.layers()).enumerate() {
        let Some(frame) = frame.as_ref().filter(|f| !f.data.is_empty()) else {
            continue;
        };
        if paused & (1u8 << i) != 0 {
            continue;
        }
        let _ = match frame.temporal {
            Some(t) => write_layered(layer, &mut packetizers[i], frame, t).await,
            None => layer
                .write_sample(&frame.data, frame.duration)
                .await
                .map(|_| ()),
        };
    }
}

/// Waits until `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether retrying cannot help.
fn is_fatal(e: &Error) -> bool {
    match e {
        Error::Http(h) => matches!(h.status, 400 | 401 | 403 | 415 | 422),
        Error::InvalidUrl { .. } | Error::InvalidToken | Error::InvalidTrack(_) => true,
        _ => false,
    }
}

/// How a connected session ended.
enum Ended {
    Stop,
    Lost(String),
    /// The room moved to the node at this base URL (the server drains).
    Moved(String),
}

/// The nodes a loop may ask for its room: the one in use first, then the others in turn.
#[derive(Debug, Clone)]
struct Nodes {
    list: Vec<String>,
    at: usize,
}

impl Nodes {
    fn new(server: &str, fallbacks: &[String]) -> Nodes {
        let mut list = vec![server.to_owned()];
        for f in fallbacks {
            if !list.contains(f) {
                list.push(f.clone());
            }
        }
        Nodes { list, at: 0 }
    }

    /// The room moved to `url` (a drain): the node in use from now on.
    fn moved_to(&mut self, url: &str) {
        match self.list.iter().position(|u| u == url) {
            Some(i) => self.at = i,
            None => {
                self.list.push(url.to_owned());
                self.at = self.list.len() - 1;
            }
        }
    }

    /// The next node's `kind` endpoint for `room` (the node in use stopped answering); `None`
    /// with a single node (it is asked again).
    fn next(&mut self, room: &str, kind: &str) -> Option<String> {
        if self.list.len() < 2 {
            return None;
        }
        self.at = (self.at + 1) % self.list.len();
        endpoint(&self.list[self.at], kind, room).ok()
    }
}

/// How long the old session of a moved room is kept once the new one is up: the time for the
/// new node's subscribers to get the new publication and a keyframe.
const MOVE_OVERLAP: Duration = Duration::from_millis(1500);

/// The next base URL the room moves to.
async fn next_move(moved: &mut watch::Receiver<Option<String>>) -> String {
    loop {
        if moved.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        if let Some(url) = moved.borrow_and_update().clone() {
            return url;
        }
    }
}

/// Watches a connected session until it fails for good or `stop`.
///
/// Lost when the peer connection is `failed` or `closed`, `disconnected` for longer than
/// `grace`, or when `feedback` (a count of RTCP feedback received) has moved at least once and
/// then stays still for `grace` + 1 s: the server no longer hears us, even if ICE has not
/// noticed yet (it can take 15 s or more).
async fn watch_connection(
    state: impl Fn() -> RTCPeerConnectionState,
    feedback: impl Fn() -> u64,
    grace: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut disconnected_since: Option<Instant> = None;
    let mut last_feedback = feedback();
    let mut feedback_seen = false;
    let mut feedback_at = Instant::now();
    let silence = grace + Duration::from_secs(1);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(stop) => return Ended::Stop,
        }
        match state() {
            s @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) => {
                return Ended::Lost(format!("peer connection {s}"))
            }
            RTCPeerConnectionState::Disconnected => {
                let since = *disconnected_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    return Ended::Lost(format!("peer connection disconnected for {grace:?}"));
                }
            }
            _ => disconnected_since = None,
        }
        let now = feedback();
        if now != last_feedback {
            last_feedback = now;
            feedback_seen = true;
            feedback_at = Instant::now();
        } else if feedback_seen && feedback_at.elapsed() >= silence {
            return Ended::Lost(format!("no RTCP feedback for {silence:?}"));
        }
    }
}

/// Publishes, and publishes again whenever the connection is lost.
async fn publish_loop(
    ctx: Arc<Ctx>,
    (mut whip, room, mut nodes): (String, String, Nodes),
    specs: Vec<TrackSpec>,
    (current, leaving): (PublisherTx, PublisherTx),
    mut moved: watch::Receiver<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    // A publisher already connected on the node the room moved to (make-before-break).
    let mut ready: Option<Arc<Publisher>> = None;
    loop {
        let result = match ready.take() {
            Some(p) => Ok(p),
            None => {
                let connect =
                    Publisher::connect(&whip, &ctx.token, specs.clone(), ctx.client.clone());
                tokio::select! {
                    r = connect => r.map(Arc::new),
                    _ = stopped(&mut stop) => return,
                }
            }
        };
        match result {
            Ok(publisher) => {
                failures = 0;
                ctx.update(|s| s.publish_sessions += 1);
                tracing::info!(tracks = specs.len(), "publishing");
                current.send_replace(Some(Arc::clone(&publisher)));
                let feedback = || {
                    publisher
                        .tracks()
                        .iter()
                        .flat_map(|t| t.layers())
                        .map(|l| {
                            let s = l.rtcp_stats();
                            s.receiver_reports + s.twcc_feedbacks
                        })
                        .sum::<u64>()
                };
                let ended = tokio::select! {
                    e = watch_connection(
                        || publisher.connection_state(),
                        feedback,
                        ctx.grace,
                        &mut stop,
                    ) => e,
                    url = next_move(&mut moved) => Ended::Moved(url),
                };
                if let Ended::Moved(url) = &ended {
                    // Publish on the new node first; the pumps switch to it (with a keyframe)
                    // before the old session ends.
                    if let Ok(next) = endpoint(url, "whip", &room) {
                        whip = next;
                    }
                    let connect =
                        Publisher::connect(&whip, &ctx.token, specs.clone(), ctx.client.clone());
                    match connect.await {
                        Ok(p) => ready = Some(Arc::new(p)),
                        Err(e) => tracing::warn!(error = %e, "publishing on the new node failed"),
                    }
                }
                // The pumps switch to the new publisher (with a keyframe) and keep feeding the
                // old one until it ends: its subscribers, still on the old node, see no gap
                // while they move.
                if ready.is_some() {
                    leaving.send_replace(Some(Arc::clone(&publisher)));
                }
                current.send_replace(ready.clone());
                if ready.is_some() {
                    tokio::time::sleep(MOVE_OVERLAP).await;
                    leaving.send_replace(None);
                }
                close_publisher(publisher).await;
                match ended {
                    Ended::Stop => return,
                    Ended::Lost(why) => {
                        tracing::warn!(reason = %why, "publishing connection lost; reconnecting");
                        if let Some(next) = nodes.next(&room, "whip") {
                            whip = next;
                        }
                    }
                    Ended::Moved(url) => {
                        nodes.moved_to(&url);
                        tracing::info!(%url, "publishing moved to the new node")
                    }
                }
            }
            Err(e) if is_fatal(&e) => {
                let _ = ctx
                    .fatal
                    .send(DialError::Refused {
                        what: "publishing",
                        source: e,
                    })
                    .await;
                return;
            }
            Err(e) => {
                let delay = ctx.backoff.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?delay, "publishing failed");
                if let Some(next) = nodes.next(&room, "whip") {
                    whip = next;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

/// Ends a publisher once the pumps have let go of it (they do at their next frame).
async fn close_publisher(mut publisher: Arc<Publisher>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match Arc::try_unwrap(publisher) {
            Ok(p) => {
                if let Err(e) = p.close().await {
                    tracing::debug!(error = %e, "closing the WHIP session");
                }
                return;
            }
            Err(shared) if Instant::now() < deadline => {
                publisher = shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Dropping the last reference ends the session in the background.
            Err(_) => return,
        }
    }
}

/// Subscribes to the room, and again whenever the connection is lost.
async fn subscribe_loop(
    ctx: Arc<Ctx>,
    (mut whep, room, mut nodes): (String, String, Nodes),
    mut moved: watch::Receiver<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let opts = ClientOptions {
        recv_video: 2,
        recv_audio: 2,
        ..ctx.client.clone()
    };
    loop {
        let connect = Subscriber::connect(&whep, &ctx.token, opts.clone());
        let result = tokio::select! {
            r = connect => r,
            _ = stopped(&mut stop) => return,
        };
        match result {
            Ok(subscriber) => {
                failures = 0;
                ctx.update(|s| s.subscribe_sessions += 1);
                tracing::info!("subscribed to the room");
                let subscriber = Arc::new(subscriber);
                let accept = tokio::spawn(accept_tracks(Arc::clone(&subscriber), Arc::clone(&ctx)));
                let ended = tokio::select! {
                    e = watch_connection(|| subscriber.connection_state(), || 0, ctx.grace, &mut stop) => e,
                    url = next_move(&mut moved) => Ended::Moved(url),
                };
                accept.abort();
                let _ = accept.await;
                match Arc::try_unwrap(subscriber) {
                    Ok(s) => {
                        if let Err(e) = s.close().await {
                            tracing::debug!(error = %e, "closing the WHEP session");
                        }
                    }
                    Err(_) => tracing::debug!("WHEP session still shared; dropped"),
                }
                match ended {
                    Ended::Stop => return,
                    Ended::Lost(why) => {
                        tracing::warn!(reason = %why, "subscribing connection lost; reconnecting");
                        if let Some(next) = nodes.next(&room, "whep") {
                            whep = next;
                        }
                    }
                    Ended::Moved(url) => {
                        nodes.moved_to(&url);
                        tracing::info!(%url, "subscribing on the node the room moved to");
                        if let Ok(next) = endpoint(&url, "whep", &room) {
                            whep = next;
                        }
                    }
                }
            }
            Err(e) if is_fatal(&e) => {
                let _ = ctx
                    .fatal
                    .send(DialError::Refused {
                        what: "subscribing",
                        source: e,
                    })
                    .await;
                return;
            }
            Err(e) => {
                let delay = ctx.backoff.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in = ?delay, "subscribing failed");
                if let Some(next) = nodes.next(&room, "whep") {
                    whep = next;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    }
}

/// Counts what arrives on every track received from the room.
async fn accept_tracks(subscriber: Arc<Subscriber>, ctx: Arc<Ctx>) {
    let mut readers = tokio::task::JoinSet::new();
    loop {
        match subscriber.next_track(Duration::from_secs(3600)).await {
            Ok(track) => {
                ctx.update(|s| s.received_tracks += 1);
                tracing::info!(kind = %track.kind(), codec = %track.mime_type(), "receiving a track");
                let ctx = Arc::clone(&ctx);
                readers.spawn(async move {
                    while track.read_rtp().await.is_ok() {
                        ctx.update(|s| s.received_packets += 1);
                    }
                });
            }
            Err(Error::Timeout { .. }) => continue,
            Err(_) => break,
        }
    }
    readers.abort_all();
}

/// The shell around the devices simulator.
struct DevicesShell {
    summary_every: Duration,
    bp_every: Option<Duration>,
    outputs: Option<mpsc::Sender<DeviceOutput>>,
    commands: Option<mpsc::Receiver<DeviceCommand>>,
    stats: Arc<Mutex<DialStats>>,
}

/// Latest values, for the summary line.
#[derive(Default)]
struct Latest {
    spo2: Option<f64>,
    pulse: Option<f64>,
    temperature: Option<f64>,
    weight: Option<f64>,
    bp: Option<(f64, f64)>,
    chunks: u64,
}

impl Latest {
    fn update(&mut self, o: &DeviceOutput) {
        match o {
            DeviceOutput::Measurement(m) => {
                self.spo2 = m.value(&codes::SPO2).or(self.spo2);
                self.pulse = m.value(&codes::PULSE_RATE_OXIMETER).or(self.pulse);
                self.temperature = m.value(&codes::BODY_TEMPERATURE).or(self.temperature);
                self.weight = m.value(&codes::BODY_WEIGHT).or(self.weight);
                if let (Some(s), Some(d)) =
                    (m.value(&codes::SYSTOLIC_BP), m.value(&codes::DIASTOLIC_BP))
                {
                    self.bp = Some((s, d));
                }
            }
            DeviceOutput::Waveform(_) => self.chunks += 1,
            DeviceOutput::Status(_) => {}
        }
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v}"))
}

async fn devices_loop(
    mut devices: Devices,
    mut shell: DevicesShell,
    mut stop: watch::Receiver<bool>,
) {
    let mut latest = Latest::default();
    let start = devices.start();
    let mut next_summary = start + shell.summary_every;
    let mut next_bp = shell
        .bp_every
        .map(|every| start + every.min(Duration::from_secs(10)));
    let mut dropped = 0u64;
    loop {
        let mut wake = devices.poll_timeout().min(next_summary);
        if let Some(bp) = next_bp {
            wake = wake.min(bp);
        }
        let command = async {
            match shell.commands.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            cmd = command => match cmd {
                Some(cmd) => {
                    let outcome = devices.handle_command(cmd.channel, &cmd.name, Instant::now());
                    tracing::info!(channel = %cmd.channel, command = %cmd.name, ?outcome, "device command");
                    if let Some(reply) = cmd.reply {
                        let _ = reply.send(outcome);
                    }
                }
                None => shell.commands = None,
            },
            _ = stopped(&mut stop) => return,
        }
        let now = Instant::now();
        if next_bp.is_some_and(|t| now >= t) {
            let outcome = devices.handle_command(ChannelId::BP_CUFF, START_MEASUREMENT, now);
            tracing::debug!(?outcome, "periodic blood pressure measurement");
            next_bp = shell.bp_every.map(|every| now + every);
        }
        let outputs = devices.poll(now);
        if let Ok(mut s) = shell.stats.lock() {
            s.device_outputs += outputs.len() as u64;
        }
        for o in outputs {
            latest.update(&o);
            if let Some(tx) = &shell.outputs {
                if tx.try_send(o).is_err() {
                    dropped += 1;
                }
            }
        }
        if now >= next_summary {
            next_summary = now + shell.summary_every;
            let bp = latest
                .bp
                .map_or_else(|| "-".to_owned(), |(s, d)| format!("{s}/{d}"));
            tracing::info!(
                spo2 = %show(latest.spo2),
                pulse = %show(latest.pulse),
                temperature = %show(latest.temperature),
                bp = %bp,
                weight = %show(latest.weight),
                waveform_chunks = latest.chunks,
                dropped,
                "devices"
            );
        }
    }
}

/// The bitrate value meaning "leave the encoder as configured".
const UNCHANGED: u32 = u32::MAX;

/// Smallest bitrate a camera is sent at (VP8 at 640x360 is a slideshow below); under it the
/// camera is paused instead.
const VIDEO_MIN_BPS: u32 = 100_000;

/// How often the rate controller is fed and consulted.
const ADAPT_EVERY: Duration = Duration::from_millis(100);

/// Simulcast layers of the device camera at most (like the pages: its picture is the
/// doctor's diagnostic view, two sizes are enough).
const DEVICE_CAMERA_LAYERS: u8 = 2;

/// Smallest bitrate a lower simulcast layer is sent at.
const LAYER_MIN_BPS: u32 = 30_000;

/// Every layer's bit in a layer mask.
const ALL_LAYERS: u8 = (1 << MAX_SPATIAL_LAYERS) - 1;

/// What the uplink budget tells one track's source thread and pump, per simulcast layer
/// (layer 0 alone for a single-layer track).
#[derive(Debug)]
struct TrackControl {
    /// Encoder bitrate of each layer ([`UNCHANGED`]: as configured; 0: not sent).
    bitrate_bps: [AtomicU32; MAX_SPATIAL_LAYERS],
    /// Layers whose frames are not sent (bit i: layer i); all of them: the track is paused.
    paused: AtomicU8,
    /// Layers whose next frame must be a keyframe (PLI/FIR, a new session, a resume).
    keyframes: AtomicU8,
    /// The video layers' ranges, lowest resolution first (empty for audio).
    layers: Vec<LayerDemand>,
}

impl TrackControl {
    fn new(layers: Vec<LayerDemand>) -> Self {
        TrackControl {
            bitrate_bps: std::array::from_fn(|_| AtomicU32::new(UNCHANGED)),
            paused: AtomicU8::new(0),
            keyframes: AtomicU8::new(ALL_LAYERS),
            layers,
        }
    }
}

/// The ranges of a camera of `kbps` sent as `count` simulcast layers: each layer up to its
/// share of the camera's bitrate, down to [`VIDEO_MIN_BPS`] for the full picture and less for
/// the smaller ones (a quarter of the pixels needs about a quarter of the bits).
fn layer_demands(count: usize, kbps: u32) -> Vec<LayerDemand> {
    spatial_layers(count, kbps.saturating_mul(1000))
        .iter()
        .map(|l| {
            let floor = VIDEO_MIN_BPS / (l.scale_down * l.scale_down);
            let floor = if l.scale_down == 1 {
                floor
            } else {
                floor.max(LAYER_MIN_BPS)
            };
            LayerDemand {
                min_bps: floor.min(l.bitrate_bps),
                max_bps: l.bitrate_bps,
            }
        })
        .collect()
}

/// The budget of the tracks that are on: audio at its configured bitrates, then the device
/// camera, then the room camera (each from its lowest layer's minimum to all its layers).
fn budget(media: &MediaConfig, controls: &[(&'static str, Arc<TrackControl>)]) -> Budget {
    let on = |id: &str| controls.iter().find(|(t, _)| *t == id).map(|(_, c)| c);
    let mut audio = Vec::new();
    if on(MICROPHONE).is_some() {
        audio.push(OpusConfig::microphone().bitrate_bps);
    }
    if on(STETHOSCOPE).is_some() {
        audio.push(media.stethoscope_bps);
    }
    let mut videos = Vec::new();
    for id in [DEVICE_CAMERA, ROOM_CAMERA] {
        if let Some(control) = on(id) {
            let (min_bps, max_bps) = LayerDemand::track_range(&control.layers);
            videos.push(VideoDemand {
                track_id: id,
                min_bps,
                max_bps,
            });
        }
    }
    Budget::new(&audio, videos)
}

/// Feeds each publishing session's RTCP feedback to a rate controller and splits its target
/// between the video encoders (a new controller per session: a new path may have a new
/// round trip).
async fn adapt_loop(
    budget: Budget,
    controls: Vec<(&'static str, Arc<TrackControl>)>,
    mut publisher: watch::Receiver<Option<Arc<Publisher>>>,
    stats: Arc<Mutex<DialStats>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut current: Option<Arc<Publisher>> = None;
    let mut controller: Option<RateController> = None;
    let mut decreases_before = 0;
    let mut delay_cuts_before = 0;
    let mut tick = tokio::time::interval(ADAPT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let now = Instant::now();
        if publisher.has_changed().unwrap_or(false) {
            current = publisher.borrow_and_update().clone();
            if let Some(old) = &controller {
                decreases_before += old.stats().decreases;
                delay_cuts_before += old.stats().delay_cuts;
            }
            controller = current.as_ref().map(|_| {
                RateController::new(
                    ControllerConfig::new(budget.min_bps(), budget.max_bps()),
                    now,
                )
            });
        }
        let (Some(p), Some(c)) = (&current, controller.as_mut()) else {
            continue;
        };
        for feedback in p.take_feedback() {
            c.handle_feedback(now, feedback);
        }
        c.handle_timeout(now);
        let decreases = decreases_before + c.stats().decreases;
        if let Ok(mut s) = stats.lock() {
            s.uplink_target_bps = c.target_bps();
            s.uplink_decreases = decreases;
            s.uplink_delay_cuts = delay_cuts_before + c.stats().delay_cuts;
        }
        let Some(target) = c.poll_output() else {
            continue;
        };
        let shares = budget.split(target);
        for (track_id, share) in &shares {
            let Some((_, control)) = controls.iter().find(|(t, _)| t == track_id) else {
                continue;
            };
            // A simulcast track's share goes to its lower layers first; a layer given
            // nothing is not sent.
            let split = match share {
                Share::Send(bps) => split_layers(*bps, &control.layers),
                Share::Paused => vec![0; control.layers.len()],
            };
            let mut paused = ALL_LAYERS;
            for (i, (bps, slot)) in split.iter().zip(&control.bitrate_bps).enumerate() {
                if *bps > 0 {
                    slot.store(*bps, Ordering::Relaxed);
                    paused &= !(1 << i);
                }
            }
            control.paused.store(paused, Ordering::Relaxed);
            if let Ok(mut s) = stats.lock() {
                if let Some(t) = s.tracks.get_mut(*track_id) {
                    t.budget_bps = split.iter().sum();
                    for (l, bps) in t.layers.iter_mut().zip(&split) {
                        l.budget_bps = *bps;
                    }
                }
            }
        }
        tracing::debug!(target_bps = target, ?shares, "uplink budget");
    }
}

async fn stats_loop(
    stats: Arc<Mutex<DialStats>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let Ok(s) = stats.lock().map(|s| s.clone()) else {
            return;
        };
        let tracks: Vec<String> = s
            .tracks
            .iter()
            .map(|(id, t)| {
                format!(
                    "{id}={}f/{}kB/{}pli/{}fb",
                    t.frames,
                    t.bytes / 1000,
                    t.keyframe_requests,
                    t.feedback
                )
            })
            .collect();
        tracing::info!(
            sessions = s.publish_sessions,
            sent = %tracks.join(" "),
            received_tracks = s.received_tracks,
            received_packets = s.received_packets,
            "media"
        );
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn token_hint_reads_claims() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"kiosk-7","room":"consult-1","role":"kiosk"}"#);
        let hint = token_hint(&format!("e30.{payload}.sig")).expect("readable");
        assert_eq!(hint.sub.as_deref(), Some("kiosk-7"));
        assert_eq!(hint.room.as_deref(), Some("consult-1"));
        assert!(token_hint("not a jwt").is_none());
    }

    #[test]
    fn simulcast_cameras_ask_the_budget_for_what_one_layer_did() {
        let one = layer_demands(1, 600);
        assert_eq!(
            one,
            [LayerDemand {
                min_bps: VIDEO_MIN_BPS,
                max_bps: 600_000
            }]
        );
        let three = layer_demands(3, 600);
        assert_eq!(LayerDemand::track_range(&three), (LAYER_MIN_BPS, 600_000));
        assert_eq!(three[2].min_bps, VIDEO_MIN_BPS);
        assert!(three.iter().all(|l| l.min_bps <= l.max_bps));
        // When the uplink shrinks the full picture goes first, the quarter one last.
        let split = split_layers(250_000, &three);
        assert_eq!(split[2], 0, "{split:?}");
        assert!(split[0] > 0 && split[1] > 0, "{split:?}");
        assert_eq!(split_layers(60_000, &three)[1..], [0, 0]);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("http://h:8080", "whip", "r-1").expect("valid"),
            "http://h:8080/whip/r-1"
        );
        assert_eq!(
            endpoint("https://h/base/", "whep", "a b").expect("valid"),
            "https://h/base/whep/a%20b"
        );
        assert!(endpoint("ftp://h", "whip", "r").is_err());
    }
}
