//! The kiosk's device telemetry link: the simulated devices' outputs go to the server's QUIC
//! sidecar ([`cabine_sidecar::client`]), and the doctor's commands come back to the devices.
//!
//! The sidecar client keeps the connection up by itself and resends unacknowledged measurements
//! after a reconnection (the server drops the ones it already has), so a network drop loses
//! only waveform chunks (counted), never a measurement, and never duplicates one.
//!
//! Where to dial is asked from the server (`GET /api/telemetry` with the kiosk's token): the
//! QUIC address and the server's certificate, which the kiosk pins. That answer comes over the
//! HTTP API, so in production the API is served over TLS; a kiosk may instead be given the
//! address and a CA bundle.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use cabine_proto::telemetry as wire;
use cabine_proto::RoomId;
use cabine_sidecar::client::{
    resolve, Client, ClientConfig, ClientError, ConnectionState, KioskClock, Rediscover,
    StreamTransport, Target,
};
use cabine_sidecar::tls::ServerVerification;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::devices::{
    ChannelId, ChannelInfo, ChannelKind, CommandOutcome, DeviceCommand, DeviceKind, DeviceOutput,
    DeviceState, MeasurementStatus,
};
use crate::stills::{self, StillsConfig};

/// Where and how to reach the telemetry sidecar.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `quic://host:port`; `None` asks the server (`GET /api/telemetry`).
    pub url: Option<String>,
    /// How to check the server's certificate; `None` pins the certificate the server gives in
    /// its `GET /api/telemetry` answer.
    pub verification: Option<ServerVerification>,
    /// The kiosk clock capture times are stamped with (default: the system clock).
    pub clock: Option<KioskClock>,
    /// Notified when the kiosk knows its network changed (a new Wi-Fi, a modem reset): the
    /// connection is dropped at once and redialled rather than left to time out.
    pub network_changed: Option<Arc<Notify>>,
    /// Offer full-resolution stills of the device camera on the stills channel
    /// ([`crate::stills`]), taken on the doctor's `take_snapshot` command; `None` offers none.
    pub stills: Option<StillsConfig>,
}

impl Default for TelemetryConfig {
    /// Ask the server where the sidecar is, pin its certificate, system clock, stills on.
    fn default() -> Self {
        TelemetryConfig {
            url: None,
            verification: None,
            clock: None,
            network_changed: None,
            stills: Some(StillsConfig::default()),
        }
    }
}

/// Counters of the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetryStats {
    /// The sidecar connection is up now.
    pub connected: bool,
    /// Sessions established (1 + reconnections).
    pub sessions: u64,
    /// Measurements handed to the client (queued until acknowledged).
    pub measurements: u64,
    /// Waveform chunks sent.
    pub waveforms: u64,
    /// Device status frames (attached, measuring, battery…) sent.
    pub statuses: u64,
    /// Outputs that could not be sent (not connected for waveforms and status, queue full).
    pub dropped: u64,
    /// Commands received from the server.
    pub commands: u64,
    /// Measurements the client had to resend after a reconnection.
    pub resent: u64,
    /// Times `GET /api/telemetry` was asked again after a failed reconnection and gave a new
    /// target (a restarted server's new certificate, another node).
    pub rediscovered: u64,
    /// Device camera stills uploaded.
    pub stills: u64,
}

/// Stills being taken at once; more `take_snapshot` commands are answered `rejected` (each
/// still holds a few megabytes while it is drawn and encoded).
const MAX_STILLS_IN_FLIGHT: usize = 2;

/// Everything the link task needs.
pub(crate) struct Link {
    pub server: String,
    pub token: String,
    pub room: String,
    pub http: reqwest::Client,
    pub config: TelemetryConfig,
    pub channels: Vec<ChannelInfo>,
    pub outputs: mpsc::Receiver<DeviceOutput>,
    pub commands: mpsc::Sender<DeviceCommand>,
    pub backoff: Backoff,
    pub stats: Arc<Mutex<TelemetryStats>>,
    /// The kiosk's UDP is known to be blocked (`--relay-only`): telemetry over the stream
    /// transport (TCP/TLS) only.
    pub relay_only: bool,
    /// Trust any certificate on the HTTPS API (`--insecure`), the stream transport's too.
    pub accept_invalid_certs: bool,
    /// Where the room moved (a `Move` from the server): the media loops follow it, and
    /// rediscovery asks there rather than at `server`.
    pub moved: watch::Sender<Option<String>>,
    /// Other nodes of the cluster, asked in turn when the node in use does not answer.
    pub fallbacks: Vec<String>,
}

/// Why discovery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The server said no (telemetry disabled, bad token): retrying will not help.
    #[error("{0}")]
    Refused(String),
    /// The server could not be reached or answered badly: retry later.
    #[error("{0}")]
    Unavailable(String),
}

/// What `GET /api/telemetry` said.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Discovered {
    /// `quic://host:port`.
    pub url: String,
    /// The certificate to pin.
    pub verification: ServerVerification,
    /// The stream transport (`ws://…/api/telemetry/ws`, `wss://` behind HTTPS), resolved
    /// against the URL that answered; `None` from a server without it.
    pub stream_url: Option<String>,
}

/// Asks the server where telemetry is: the QUIC URL, the certificate to pin, and the stream
/// transport for networks that drop UDP.
pub async fn discover(
    http: &reqwest::Client,
    server: &str,
    token: &str,
) -> Result<Discovered, DiscoveryError> {
    use DiscoveryError::{Refused, Unavailable};
    let mut url = format!("{}/api/telemetry", server.trim_end_matches('/'));
    let mut hops = 0;
    let r = loop {
        let r = http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Unavailable(format!("GET {url}: {e}")))?;
        // A cluster node that does not hold the token's room redirects to the one that does
        // (whose QUIC endpoint and certificate these are); followed by hand with the token.
        let next = reqwest::Url::parse(&url)
            .ok()
            .and_then(|from| cabine_client::follow_redirect(&from, r.status(), r.headers()));
        match next {
            Some(next) if hops < cabine_client::MAX_REDIRECTS => {
                hops += 1;
                url = next.to_string();
            }
            _ => break r,
        }
    };
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if status.is_client_error() {
        return Err(Refused(format!("GET {url}: {status}: {}", body.trim())));
    }
    if !status.is_success() {
        return Err(Unavailable(format!("GET {url}: {status}: {}", body.trim())));
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| Unavailable(format!("GET {url}: bad answer: {e}")))?;
    let quic = v["url"]
        .as_str()
        .ok_or_else(|| Unavailable(format!("GET {url}: no url in the answer")))?
        .to_owned();
    let der = v["certificate"]
        .as_str()
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
        .ok_or_else(|| Unavailable(format!("GET {url}: no certificate in the answer")))?;
    let stream_url = v["stream_url"].as_str().and_then(|s| stream_url(&url, s));
    Ok(Discovered {
        url: quic,
        verification: ServerVerification::Pinned(CertificateDer::from(der)),
        stream_url,
    })
}

/// `reference` (as `/api/telemetry` gives it) resolved against the `http(s)` URL that answered,
/// as a `ws(s)` URL.
fn stream_url(answered: &str, reference: &str) -> Option<String> {
    let mut u = reqwest::Url::parse(answered).ok()?.join(reference).ok()?;
    let scheme = match u.scheme() {
        "https" | "wss" => "wss",
        "http" | "ws" => "ws",
        _ => return None,
    };
    u.set_scheme(scheme).ok()?;
    Some(u.to_string())
}

/// The stream transport at `url`.
fn stream_transport(url: &str, relay_only: bool, accept_invalid_certs: bool) -> StreamTransport {
    let mut t = StreamTransport::new(url, api_trust(accept_invalid_certs));
    t.only = relay_only;
    t
}

/// Asking `GET /api/telemetry` again after a failed reconnection (a restarted server has a new
/// self-signed certificate; a room moved to another node, another address), unless the kiosk
/// was given a fixed address and trust.
fn rediscovery(link: &Link) -> Option<Rediscover> {
    if link.config.url.is_some() && link.config.verification.is_some() {
        return None;
    }
    let (http, entry, token) = (link.http.clone(), link.server.clone(), link.token.clone());
    let (fixed_url, fixed_trust) = (link.config.url.clone(), link.config.verification.clone());
    let (relay_only, insecure) = (link.relay_only, link.accept_invalid_certs);
    let moved = link.moved.subscribe();
    let fallbacks = link.fallbacks.clone();
    Some(Rediscover::new(move || {
        let first = moved.borrow().clone().unwrap_or_else(|| entry.clone());
        let mut servers = vec![first];
        for f in &fallbacks {
            if !servers.contains(f) {
                servers.push(f.clone());
            }
        }
        let (http, token) = (http.clone(), token.clone());
        let (fixed_url, fixed_trust) = (fixed_url.clone(), fixed_trust.clone());
        Box::pin(async move {
            // The node in use and the cluster's others at once (it may have died, and a dead
            // host answers nothing until the HTTP timeout): the first that answers says where
            // the room's telemetry is now (any node knows, or redirects to the one that does).
            let mut asks = JoinSet::new();
            for server in servers {
                let (http, token) = (http.clone(), token.clone());
                asks.spawn(async move { discover(&http, &server, &token).await });
            }
            let mut found = None;
            while let Some(answer) = asks.join_next().await {
                if let Ok(Ok(d)) = answer {
                    found = Some(d);
                    break;
                }
            }
            let d = found?;
            let url = fixed_url.unwrap_or(d.url);
            let (addr, host) = resolve(&url).await.ok()?;
            let stream = d
                .stream_url
                .map(|s| stream_transport(&s, relay_only, insecure));
            Some(Target::new(
                addr,
                host,
                fixed_trust.unwrap_or(d.verification),
                stream,
            ))
        })
    }))
}

/// QUIC keep-alive of the kiosk's telemetry: one packet a second each way at least.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Three seconds without a packet from the server: the connection is lost (a dead node).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a server without a `stream_url` in its discovery answer (or a kiosk given the QUIC
/// address) is expected to serve the stream transport.
const TELEMETRY_STREAM_PATH: &str = "/api/telemetry/ws";

/// How the stream transport checks the HTTPS API's certificate: as the kiosk's HTTP client does
/// (the web PKI, or anything with `--insecure`).
fn api_trust(accept_invalid_certs: bool) -> ServerVerification {
    if accept_invalid_certs {
        return ServerVerification::InsecureAcceptAny;
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    ServerVerification::Roots(Arc::new(roots))
}

/// The declaration of a simulated device channel.
pub fn declaration(info: &ChannelInfo) -> wire::ChannelDecl {
    wire::ChannelDecl {
        channel_id: info.id.0,
        kind: match info.kind {
            ChannelKind::Measurement => wire::ChannelKind::Measurement,
            ChannelKind::Waveform => wire::ChannelKind::Waveform,
        } as i32,
        device_kind: match info.device {
            DeviceKind::PulseOximeter => wire::DeviceKind::PulseOximeter,
            DeviceKind::Ecg => wire::DeviceKind::Ecg,
            DeviceKind::Thermometer => wire::DeviceKind::Thermometer,
            DeviceKind::BpCuff => wire::DeviceKind::BpCuff,
            DeviceKind::Scale => wire::DeviceKind::Scale,
        } as i32,
        loinc: info.code.loinc.to_owned(),
        mdc_code: info.code.mdc,
        unit: info.code.unit.to_owned(),
        sample_rate_hz: info.sample_rate_hz.unwrap_or(0.0),
        leads: info.leads.iter().map(|l| (*l).to_owned()).collect(),
        label: info.label.to_owned(),
        commands: info.commands.iter().map(|c| (*c).to_owned()).collect(),
    }
}

/// Microseconds since the Unix epoch on the kiosk clock for an instant of the devices.
fn kiosk_us(client: &Client, t: Instant) -> u64 {
    let now_us = client.clock().now_us();
    let now = Instant::now();
    if t <= now {
        now_us.saturating_sub(now.duration_since(t).as_micros() as u64)
    } else {
        now_us + t.duration_since(now).as_micros() as u64
    }
}

/// What kind of frame a device output became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A measurement, queued until acknowledged.
    Measurement,
    /// A waveform chunk (datagram).
    Waveform,
    /// A device status frame.
    Status,
}

impl Sent {
    fn of(o: &DeviceOutput) -> Sent {
        match o {
            DeviceOutput::Measurement(_) => Sent::Measurement,
            DeviceOutput::Waveform(_) => Sent::Waveform,
            DeviceOutput::Status(_) => Sent::Status,
        }
    }
}

/// Counts one send attempt in the link's counters.
fn count(stats: &mut TelemetryStats, sent: Result<Sent, ClientError>) {
    match sent {
        Ok(Sent::Measurement) => stats.measurements += 1,
        Ok(Sent::Waveform) => stats.waveforms += 1,
        Ok(Sent::Status) => stats.statuses += 1,
        Err(_) => stats.dropped += 1,
    }
}

/// Sends one device output; says what it became.
fn send(client: &Client, o: DeviceOutput) -> Result<Sent, ClientError> {
    let kind = Sent::of(&o);
    match o {
        DeviceOutput::Measurement(m) => {
            let w = wire::Measurement {
                channel_id: m.channel.0,
                seq: m.seq,
                capture_time_us: kiosk_us(client, m.captured),
                values: m
                    .values
                    .iter()
                    .map(|v| wire::Value {
                        loinc: v.code.loinc.to_owned(),
                        mdc_code: v.code.mdc,
                        value: v.value,
                        unit: v.code.unit.to_owned(),
                    })
                    .collect(),
                status: match m.status {
                    MeasurementStatus::Valid => wire::MeasurementStatus::Valid,
                    MeasurementStatus::Questionable => wire::MeasurementStatus::Questionable,
                } as i32,
            };
            client.send_measurement(w).map(|_| kind)
        }
        DeviceOutput::Waveform(w) => {
            let chunk = wire::WaveformChunk {
                channel_id: w.channel.0,
                seq: w.seq,
                first_sample_time_us: kiosk_us(client, w.first_sample),
                sample_rate_hz: w.sample_rate_hz,
                leads: w.leads.len() as u32,
                scale: w.scale,
                offset: w.offset,
                samples: w.samples.iter().map(|&s| i32::from(s)).collect(),
            };
            client.send_waveform(chunk).map(|_| kind)
        }
        DeviceOutput::Status(s) => {
            let status = wire::Status {
                channel_id: s.channel.0,
                kiosk_time_us: kiosk_us(client, s.at),
                state: match s.state {
                    DeviceState::Attached => wire::DeviceState::Attached,
                    DeviceState::Detached => wire::DeviceState::Detached,
                    DeviceState::Measuring => wire::DeviceState::Measuring,
                    DeviceState::Idle => wire::DeviceState::Idle,
                } as i32,
                battery_percent: s.battery_percent.map(u32::from),
                detail: s.detail,
            };
            client.send_status(status).map(|_| kind)
        }
    }
}

fn outcome(o: Option<CommandOutcome>) -> (wire::CommandOutcome, &'static str) {
    match o {
        Some(CommandOutcome::Accepted) => (wire::CommandOutcome::Accepted, "started"),
        Some(CommandOutcome::Completed) => (wire::CommandOutcome::Completed, "done"),
        Some(CommandOutcome::Rejected) => (wire::CommandOutcome::Rejected, "device busy"),
        Some(CommandOutcome::UnknownCommand) => (
            wire::CommandOutcome::UnknownCommand,
            "the device does not know this command",
        ),
        None => (
            wire::CommandOutcome::Failed,
            "the devices simulator is gone",
        ),
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Runs the link until `stop`: discovery (retried with backoff while the server is away), then
/// the sidecar session, which reconnects by itself.
pub(crate) async fn run(mut link: Link, mut stop: watch::Receiver<bool>) {
    let mut failures = 0;
    let server_api = format!("{}/api/telemetry", link.server.trim_end_matches('/'));
    let (url, verification, stream) = loop {
        let found = match (&link.config.url, &link.config.verification) {
            (Some(u), Some(v)) => Ok((
                u.clone(),
                v.clone(),
                stream_url(&server_api, TELEMETRY_STREAM_PATH),
            )),
            (u, v) => discover(&link.http, &link.server, &link.token)
                .await
                .map(|d| {
                    (
                        u.clone().unwrap_or(d.url),
                        v.clone().unwrap_or(d.verification),
                        d.stream_url,
                    )
                }),
        };
        match found {
            Ok(f) => break f,
            Err(DiscoveryError::Refused(e)) => {
                tracing::error!(error = %e, "telemetry: the server refuses it; devices stay local");
                return;
            }
            Err(e) => {
                let delay = link.backoff.delay(failures);
                failures += 1;
                tracing::warn!(error = %e, retry_in = ?delay, "telemetry: cannot find the sidecar");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    };
    let room = match RoomId::parse(&link.room) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "telemetry: bad room name");
            return;
        }
    };
    let client = loop {
        let attempt = async {
            let (addr, host) = resolve(&url).await?;
            let mut cfg =
                ClientConfig::new(addr, link.token.clone(), room.clone(), verification.clone());
            cfg.server_name = host;
            if let Some(clock) = &link.config.clock {
                cfg.clock = clock.clone();
            }
            cfg.software = concat!("cabine-kiosk/", env!("CARGO_PKG_VERSION")).into();
            // A node that died is noticed within ~3 s (then rediscovery asks the others).
            cfg.keep_alive = KEEP_ALIVE;
            cfg.idle_timeout = IDLE_TIMEOUT;
            cfg.stream = stream
                .as_ref()
                .map(|s| stream_transport(s, link.relay_only, link.accept_invalid_certs));
            cfg.rediscover = rediscovery(&link);
            Client::start(cfg)
        };
        match attempt.await {
            Ok(c) => break c,
            Err(e) => {
                let delay = link.backoff.delay(failures);
                failures += 1;
                tracing::warn!(error = %e, retry_in = ?delay, "telemetry: cannot start the sidecar client");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = stopped(&mut stop) => return,
                }
            }
        }
    };
    for info in &link.channels {
        if let Err(e) = client.declare(declaration(info)) {
            tracing::error!(channel = %info.id, error = %e, "telemetry: channel declaration refused locally");
        }
    }
    let stills_config = link.config.stills;
    if let Some(sc) = &stills_config {
        if let Err(e) = client.declare(stills::declaration(sc)) {
            tracing::error!(channel = %stills::STILLS, error = %e, "telemetry: stills declaration refused locally");
        }
    }
    let client = Arc::new(client);
    let started = Instant::now();
    let mut stills_tasks = JoinSet::new();
    tracing::info!(%url, channels = link.channels.len(), "telemetry: dialling the sidecar");
    let mut status = client.state_changes();
    let mut moves = client.moves();
    loop {
        tokio::select! {
            changed = moves.changed() => {
                if changed.is_err() {
                    break;
                }
                let to = moves.borrow_and_update().clone();
                if let Some(url) = to {
                    tracing::info!(%url, "telemetry: the room moves; following it (media and telemetry)");
                    link.moved.send_replace(Some(url));
                    client.redial_elsewhere();
                }
            }
            o = link.outputs.recv() => {
                let Some(o) = o else { break };
                let r = send(&client, o);
                let mut st = link.stats.lock().unwrap_or_else(|p| p.into_inner());
                count(&mut st, r);
            }
            cmd = client.next_command() => {
                let Some(cmd) = cmd else { break };
                link.stats.lock().unwrap_or_else(|p| p.into_inner()).commands += 1;
                if let (Some(sc), true) = (stills_config, cmd.channel_id == stills::STILLS.0) {
                    if stills_tasks.len() >= MAX_STILLS_IN_FLIGHT {
                        let _ = client.send_command_result(wire::CommandResult {
                            command_id: cmd.command_id,
                            channel_id: cmd.channel_id,
                            outcome: wire::CommandOutcome::Rejected as i32,
                            detail: "busy: a still is already being taken".into(),
                            kiosk_time_us: client.clock().now_us(),
                        });
                        continue;
                    }
                    let t = started.elapsed().as_secs_f64();
                    stills_tasks.spawn(take_still(Arc::clone(&client), sc, cmd, t, Arc::clone(&link.stats)));
                    continue;
                }
                let (reply, answer) = oneshot::channel();
                let device = DeviceCommand {
                    channel: ChannelId(cmd.channel_id),
                    name: cmd.name.clone(),
                    reply: Some(reply),
                };
                let got = if link.commands.send(device).await.is_ok() {
                    answer.await.ok()
                } else {
                    None
                };
                let (o, detail) = outcome(got);
                tracing::info!(channel = cmd.channel_id, command = %cmd.name, outcome = ?o, "telemetry: device command");
                let _ = client.send_command_result(wire::CommandResult {
                    command_id: cmd.command_id,
                    channel_id: cmd.channel_id,
                    outcome: o as i32,
                    detail: detail.to_owned(),
                    kiosk_time_us: client.clock().now_us(),
                });
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let state = status.borrow_and_update().clone();
                let mut st = link.stats.lock().unwrap_or_else(|p| p.into_inner());
                let s = &mut *st;
                let cs = client.stats();
                s.sessions = cs.sessions;
                s.resent = cs.measurements_resent;
                s.rediscovered = cs.rediscovered;
                s.connected = matches!(state, ConnectionState::Connected { .. });
                match &state {
                    ConnectionState::Connected { .. } => tracing::info!(sessions = cs.sessions, "telemetry: connected"),
                    ConnectionState::Connecting => tracing::warn!("telemetry: connection lost, reconnecting"),
                    ConnectionState::Failed { code, reason } => {
                        tracing::error!(?code, %reason, "telemetry: refused by the server");
                        break;
                    }
                    ConnectionState::Closed => break,
                    _ => {}
                }
            }
            _ = network_changed(link.config.network_changed.as_deref()) => {
                tracing::info!("telemetry: network changed, redialling");
                client.drop_connection();
            }
            Some(_) = stills_tasks.join_next() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    stills_tasks.shutdown().await;
    // Give queued measurements a moment to be acknowledged, then close.
    let _ = client.flush(Duration::from_secs(2)).await;
    {
        let cs = client.stats();
        let mut st = link.stats.lock().unwrap_or_else(|p| p.into_inner());
        st.sessions = cs.sessions;
        st.resent = cs.measurements_resent;
        st.rediscovered = cs.rediscovered;
    }
    if let Ok(client) = Arc::try_unwrap(client) {
        client.close().await;
    }
}

/// Answers a command on the stills channel: `accepted` at once, then the still as a JPEG blob
/// and `completed` (with its size), or `failed` with the reason.
async fn take_still(
    client: Arc<Client>,
    config: StillsConfig,
    cmd: wire::Command,
    t: f64,
    stats: Arc<Mutex<TelemetryStats>>,
) {
    let answer = |outcome: wire::CommandOutcome, detail: String| wire::CommandResult {
        command_id: cmd.command_id,
        channel_id: cmd.channel_id,
        outcome: outcome as i32,
        detail,
        kiosk_time_us: client.clock().now_us(),
    };
    if cmd.name != stills::TAKE_SNAPSHOT {
        let _ = client.send_command_result(answer(
            wire::CommandOutcome::UnknownCommand,
            format!("the stills channel only knows {}", stills::TAKE_SNAPSHOT),
        ));
        return;
    }
    let _ = client.send_command_result(answer(
        wire::CommandOutcome::Accepted,
        "taking a still".into(),
    ));
    let captured_us = client.clock().now_us();
    // Drawing and encoding 2 megapixels takes tens of milliseconds (a second or two in a debug
    // build): off the async threads.
    let taken = tokio::task::spawn_blocking(move || stills::take(&config, t)).await;
    let result = match taken {
        Ok(Ok(jpeg)) => client
            .upload_blob(stills::STILLS.0, stills::MIME, captured_us, &jpeg)
            .await
            .map(|_| jpeg.len())
            .map_err(|e| format!("upload: {e}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the still task failed: {e}")),
    };
    let r = match result {
        Ok(len) => {
            stats.lock().unwrap_or_else(|p| p.into_inner()).stills += 1;
            tracing::info!(
                bytes = len,
                width = config.width,
                height = config.height,
                "telemetry: still uploaded"
            );
            answer(
                wire::CommandOutcome::Completed,
                format!("{}x{} JPEG, {len} bytes", config.width, config.height),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "telemetry: still not delivered");
            answer(wire::CommandOutcome::Failed, e)
        }
    };
    let _ = client.send_command_result(r);
}

async fn network_changed(n: Option<&Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::devices::DeviceStatus;

    #[test]
    fn status_frames_are_counted_as_statuses_not_waveforms() {
        let status = DeviceOutput::Status(DeviceStatus {
            channel: ChannelId(7),
            device: DeviceKind::BpCuff,
            at: Instant::now(),
            state: DeviceState::Measuring,
            battery_percent: Some(80),
            detail: "inflating".into(),
        });
        let mut stats = TelemetryStats::default();
        count(&mut stats, Ok(Sent::of(&status)));
        count(&mut stats, Ok(Sent::Waveform));
        count(&mut stats, Ok(Sent::Measurement));
        assert_eq!(
            (stats.statuses, stats.waveforms, stats.measurements),
            (1, 1, 1)
        );
    }
}
