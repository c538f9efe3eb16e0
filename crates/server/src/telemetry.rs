//! Device telemetry inside `cabine serve`: the QUIC sidecar kiosks dial, and the bridge between
//! it and the subscribers' `telemetry` data channels.
//!
//! - Frames from kiosks become JSON (see [`cabine_proto::telemetry::json`]) written to every
//!   subscriber of the room that opened the data channel: measurements, status, command results
//!   and blobs on the reliable channel, waveform chunks on the lossy one. Each live frame is
//!   written once per subscriber.
//! - Subscribers write requests on their own data channel (label `commands`), as JSON:
//!   `{"type":"sync"}` asks for the room's current channels, latest readings (a page that
//!   opens mid-consultation shows vitals at once) and recent measurements (`recent`, at most
//!   [`RECENT_PER_ROOM`], in arrival order: a subscriber that reconnects after a server
//!   restart gets the measurements a kiosk resent meanwhile, and drops the ones it has by their
//!   key (source, epoch, channel_id, seq)) and `{"type":"command", "request_id":1,
//!   "channel_id":5, "name":"start_measurement"}` sends a device command (only with the
//!   `commands` grant). Answers go to the asking subscriber only, as
//!   `{"sync":{"channels":[…],"latest":[…]}}`, `{"command_sent":{"request_id":1,"command_id":7}}`
//!   or `{"command_refused":{"request_id":1,"reason":"…"}}`; the kiosk's result then arrives to
//!   every subscriber as a `command_result` frame.
//! - The server keeps no telemetry beyond the latest reading per channel and the recent
//!   measurements of the room's kiosks, forgotten when a room's kiosks are gone, unless the FHIR
//!   export is on ([`crate::fhir`]): then each room's measurements are kept, bounded, until
//!   exported or the room ends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use cabine_proto::telemetry::{delivered, to_json, Delivered};
use cabine_proto::{Claims, Identity, RoomId};
use cabine_sfu::{SessionId, Sfu};
use cabine_sidecar::{
    CommandRequest, Sidecar, SidecarConfig, StreamConn, StreamEvent, TlsSource, TokenError,
};
use serde::{Deserialize, Serialize};

use cabine_proto::jwt::{AuthError, Tokens};

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// QUIC listen address ("" disables telemetry).
    pub listen: String,
    /// The address kiosks are told to dial ("" = the bound address).
    pub advertise: String,
    /// PEM certificate chain ("" = self-signed at start, pinned by kiosks).
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
}

impl TelemetryConfig {
    /// The listen address, if telemetry is enabled.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let l = self.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        l.parse()
            .map(Some)
            .map_err(|_| format!("telemetry.listen = {l:?} is not an IP:port address"))
    }
}

/// Where kiosks dial telemetry, as `GET /api/telemetry` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    /// `quic://host:port`.
    pub url: String,
    /// The ALPN protocol.
    pub alpn: String,
    /// The server's end-entity certificate, DER, base64: a kiosk that fetched this over the
    /// (TLS-protected) HTTP API pins it when the certificate is self-signed.
    pub certificate: String,
    /// Whether the certificate is self-signed (so it must be pinned rather than validated).
    pub self_signed: bool,
    /// The same protocol over a WebSocket on this HTTP listener (TCP, TLS when the API is
    /// HTTPS), for kiosks whose network drops UDP: a URL reference relative to the URL this
    /// answer came from (`ws`/`wss` for its `http`/`https`), [`STREAM_PATH`].
    pub stream_url: String,
}

/// Where the telemetry stream transport is served on the HTTP listener.
pub const STREAM_PATH: &str = "/api/telemetry/ws";

/// A request a subscriber writes on its `commands` data channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    /// The room's channels and latest readings.
    Sync,
    /// A device command.
    Command {
        /// Echoed in the answer.
        #[serde(default)]
        request_id: u64,
        /// The kiosk (needed only when several are connected).
        #[serde(default)]
        kiosk: Option<Identity>,
        /// The device channel.
        channel_id: u32,
        /// E.g. `start_measurement`.
        name: String,
        /// Parameters.
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
}

/// Answers to one subscriber.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Answer<'a> {
    Sync {
        channels: Vec<serde_json::Value>,
        latest: Vec<serde_json::Value>,
        recent: Vec<serde_json::Value>,
    },
    CommandSent {
        request_id: u64,
        command_id: u64,
    },
    CommandRefused {
        request_id: u64,
        reason: &'a str,
    },
    Error {
        reason: &'a str,
    },
}

/// Counters of the bridge, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeStats {
    /// Frames handed to the media plane for delivery.
    pub frames: u64,
    /// Subscriber requests handled.
    pub requests: u64,
    /// Subscriber requests refused (malformed, no grant, no kiosk…).
    pub refused: u64,
    /// Commands forwarded to kiosks.
    pub commands: u64,
}

/// Frame types of [`Delivered`], as counted.
const FRAME_KINDS: [&str; 8] = [
    "channel",
    "measurement",
    "waveform",
    "status",
    "command_result",
    "blob",
    "left",
    "other",
];

fn kind_index(d: &Delivered) -> usize {
    match &d.frame {
        Some(delivered::Frame::Channel(_)) => 0,
        Some(delivered::Frame::Measurement(_)) => 1,
        Some(delivered::Frame::Waveform(_)) => 2,
        Some(delivered::Frame::Status(_)) => 3,
        Some(delivered::Frame::CommandResult(_)) => 4,
        Some(delivered::Frame::Blob(_)) => 5,
        Some(delivered::Frame::Left(_)) => 6,
        None => 7,
    }
}

/// Most channels whose latest reading is kept per room.
const LATEST_PER_ROOM: usize = 64;
/// Most recent measurements kept per room for `sync` (a few minutes of a cabin's devices).
pub const RECENT_PER_ROOM: usize = 512;
/// Largest request accepted from a subscriber.
const MAX_REQUEST: usize = 4096;

/// Latest measurement or status JSON per room, per (kiosk, channel, frame type).
type Latest = HashMap<RoomId, HashMap<(String, u32, &'static str), String>>;

#[derive(Default)]
struct Cache {
    latest: Mutex<Latest>,
    /// The room's last measurements (JSON), oldest first.
    recent: Mutex<HashMap<RoomId, std::collections::VecDeque<String>>>,
    frames: AtomicU64,
    by_kind: [AtomicU64; FRAME_KINDS.len()],
    requests: AtomicU64,
    refused: AtomicU64,
    commands: AtomicU64,
    /// The FHIR export, which keeps the consultation's measurements (when on).
    fhir: std::sync::OnceLock<Arc<crate::fhir::Fhir>>,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Latest> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, HashMap<RoomId, std::collections::VecDeque<String>>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The telemetry side of the server.
pub struct Telemetry {
    sidecar: Sidecar,
    sfu: Sfu,
    cache: Arc<Cache>,
    discovery: Discovery,
    /// Which kiosks' links are up and their declared devices (the fleet's presence).
    links: Arc<crate::queue::fleet::TelemetryLinks>,
}

/// Why telemetry did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start telemetry: {0}")]
pub struct TelemetryError(String);

impl Telemetry {
    /// Starts the sidecar on `addr`, delivering into `sfu`, checking kiosks' tokens with
    /// `tokens`.
    ///
    /// Kiosks are told to dial `telemetry.advertise`; when it is empty, the bound address, or,
    /// when bound to every interface, `public_ip` (the media plane's advertised address) on the
    /// bound port.
    pub async fn start(
        cfg: &TelemetryConfig,
        addr: SocketAddr,
        public_ip: Option<std::net::IpAddr>,
        tokens: Tokens,
        sfu: Sfu,
    ) -> Result<Arc<Telemetry>, TelemetryError> {
        let self_signed = cfg.tls_cert.as_os_str().is_empty();
        let reach_ip = match public_ip {
            Some(ip) if addr.ip().is_unspecified() => ip,
            _ => addr.ip(),
        };
        let mut sc = SidecarConfig::new(addr);
        sc.tls = if self_signed {
            let host = if cfg.advertise.trim().is_empty() {
                reach_ip.to_string()
            } else {
                host_of(cfg.advertise.trim())
            };
            let mut names = vec!["localhost".to_owned()];
            if host != "localhost" {
                names.push(host);
            }
            TlsSource::SelfSigned { names }
        } else {
            TlsSource::PemFiles {
                cert: cfg.tls_cert.clone(),
                key: cfg.tls_key.clone(),
            }
        };
        let cache = Arc::new(Cache::default());
        let links = Arc::new(crate::queue::fleet::TelemetryLinks::default());
        let sink = {
            let cache = Arc::clone(&cache);
            let sfu = sfu.clone();
            let links = Arc::clone(&links);
            move |room: &RoomId, d: Delivered, reliable: bool| {
                links.observe(&d);
                let json = to_json(&d);
                remember(&cache, room, &d, &json);
                if let Some(f) = cache.fhir.get() {
                    f.on_delivered(room, &d);
                }
                cache.frames.fetch_add(1, Ordering::Relaxed);
                cache.by_kind[kind_index(&d)].fetch_add(1, Ordering::Relaxed);
                sfu.send_data(room, Bytes::from(json), reliable);
            }
        };
        let verifier = move |token: &str| {
            tokens.verify(token).map_err(|e| match e {
                AuthError::Expired | AuthError::NotYetValid => TokenError::Expired,
                other => TokenError::Invalid(other.to_string()),
            })
        };
        let sidecar = Sidecar::start(sc, Arc::new(verifier), Arc::new(sink))
            .await
            .map_err(|e| TelemetryError(e.to_string()))?;
        let bound = sidecar.local_addr();
        let url = if cfg.advertise.trim().is_empty() {
            format!("quic://{}", SocketAddr::new(reach_ip, bound.port()))
        } else {
            let a = cfg.advertise.trim();
            if a.starts_with("quic://") {
                a.to_owned()
            } else {
                format!("quic://{a}")
            }
        };
        let discovery = Discovery {
            url,
            alpn: String::from_utf8_lossy(cabine_proto::telemetry::ALPN).into_owned(),
            certificate: base64::engine::general_purpose::STANDARD
                .encode(sidecar.certificate().as_ref()),
            self_signed,
            stream_url: STREAM_PATH.to_owned(),
        };
        tracing::info!(quic = %bound, url = %discovery.url, self_signed, "telemetry sidecar started");
        let t = Arc::new(Telemetry {
            sidecar,
            sfu,
            cache,
            discovery,
            links,
        });
        tokio::spawn(sweep(Arc::downgrade(&t)));
        Ok(t)
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sidecar.local_addr()
    }

    /// Which kiosks' telemetry links are up, with their declared devices.
    pub fn links(&self) -> &Arc<crate::queue::fleet::TelemetryLinks> {
        &self.links
    }

    /// Hands every delivered frame to the FHIR export too.
    pub fn set_fhir(&self, f: Arc<crate::fhir::Fhir>) {
        let _ = self.cache.fhir.set(f);
    }

    /// Whether a kiosk of `room` is connected (with its channels declared) now.
    pub fn has_kiosks(&self, room: &RoomId) -> bool {
        !self.sidecar.channels(room).is_empty()
    }

    /// Tells the kiosks of `room` it moves to the node at `url` (a `Move` on their control
    /// stream); how many were told.
    pub fn move_room(&self, room: &RoomId, url: &str, reason: &str) -> usize {
        self.sidecar.move_room(room, url, reason)
    }

    /// What kiosks need to dial.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The sidecar's own statistics (per channel kind: frames, gaps, latency…).
    pub fn sidecar_stats(&self) -> cabine_sidecar::SidecarStats {
        self.sidecar.stats()
    }

    /// Frames delivered to subscribers, by frame type (`measurement`, `waveform`…).
    pub fn frames_by_kind(&self) -> Vec<(&'static str, u64)> {
        FRAME_KINDS
            .iter()
            .zip(&self.cache.by_kind)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Counters of the bridge.
    pub fn bridge_stats(&self) -> BridgeStats {
        BridgeStats {
            frames: self.cache.frames.load(Ordering::Relaxed),
            requests: self.cache.requests.load(Ordering::Relaxed),
            refused: self.cache.refused.load(Ordering::Relaxed),
            commands: self.cache.commands.load(Ordering::Relaxed),
        }
    }

    /// A message a subscriber wrote on its data channel; `claims` are the ones its session was
    /// opened with. Returns the refusal reason, if refused (for counting and auditing).
    pub fn on_request(
        &self,
        room: &RoomId,
        session: SessionId,
        claims: &Claims,
        data: &[u8],
    ) -> Result<Option<u64>, String> {
        self.cache.requests.fetch_add(1, Ordering::Relaxed);
        let r = self.handle(room, session, claims, data);
        if r.is_err() {
            self.cache.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn handle(
        &self,
        room: &RoomId,
        session: SessionId,
        claims: &Claims,
        data: &[u8],
    ) -> Result<Option<u64>, String> {
        if data.len() > MAX_REQUEST {
            let reason = format!("request of {} bytes (at most {MAX_REQUEST})", data.len());
            self.answer(room, session, &Answer::Error { reason: &reason });
            return Err(reason);
        }
        let request: Request = match serde_json::from_slice(data) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("malformed request: {e}");
                self.answer(room, session, &Answer::Error { reason: &reason });
                return Err(reason);
            }
        };
        match request {
            Request::Sync => {
                let channels = self
                    .sidecar
                    .channels(room)
                    .iter()
                    .filter_map(|d| serde_json::from_str(&to_json(d)).ok())
                    .collect();
                let latest = self
                    .cache
                    .lock()
                    .get(room)
                    .map(|m| {
                        m.values()
                            .filter_map(|j| serde_json::from_str(j).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                let recent = self
                    .cache
                    .recent()
                    .get(room)
                    .map(|q| {
                        q.iter()
                            .filter_map(|j| serde_json::from_str(j).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                self.answer(
                    room,
                    session,
                    &Answer::Sync {
                        channels,
                        latest,
                        recent,
                    },
                );
                Ok(None)
            }
            Request::Command {
                request_id,
                kiosk,
                channel_id,
                name,
                params,
            } => {
                let req = CommandRequest {
                    kiosk,
                    channel_id,
                    name,
                    params,
                };
                // `command_sent` is queued before the command leaves: the kiosk's result (which
                // may come back at once) reaches the subscriber after it, never before.
                let sent = self
                    .sidecar
                    .send_command_announced(room, claims, req, |command_id| {
                        self.answer(
                            room,
                            session,
                            &Answer::CommandSent {
                                request_id,
                                command_id,
                            },
                        );
                    });
                match sent {
                    Ok(command_id) => {
                        self.cache.commands.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(command_id))
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        self.answer(
                            room,
                            session,
                            &Answer::CommandRefused {
                                request_id,
                                reason: &reason,
                            },
                        );
                        Err(reason)
                    }
                }
            }
        }
    }

    fn answer(&self, room: &RoomId, session: SessionId, answer: &Answer<'_>) {
        if let Ok(json) = serde_json::to_vec(answer) {
            self.sfu
                .send_data_to(room, session, Bytes::from(json), true);
        }
    }

    /// A kiosk connection over the stream transport, counted against the sidecar's connection
    /// limit (a refusal is counted as `server_busy` in the telemetry refusals).
    pub fn open_stream(&self) -> Result<StreamConn, cabine_sidecar::stream::Busy> {
        self.sidecar.open_stream()
    }

    /// Closes every kiosk connection.
    pub async fn shutdown(&self) {
        if tokio::time::timeout(Duration::from_secs(2), self.sidecar.shutdown())
            .await
            .is_err()
        {
            tracing::info!("telemetry connections still closing after 2 s: left to time out");
        }
    }
}

/// `GET /api/telemetry/ws`: the telemetry protocol over a WebSocket (see
/// [`cabine_sidecar::stream`]). The token is checked in the kiosk's first frame, its hello,
/// exactly as on QUIC; the socket counts against the sidecar's connection limit (503 beyond).
pub async fn stream_handler(
    axum::extract::State(st): axum::extract::State<Arc<crate::state::AppState>>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let Some(t) = st.telemetry.get() else {
        return crate::http::ApiError::new(
            StatusCode::NOT_FOUND,
            "telemetry is disabled on this server (telemetry.listen is empty)",
        )
        .into_response();
    };
    let conn = match t.open_stream() {
        Ok(c) => c,
        Err(e) => {
            return crate::http::ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                .into_response()
        }
    };
    ws.max_message_size(cabine_sidecar::stream::MAX_MESSAGE_LEN)
        .max_frame_size(cabine_sidecar::stream::MAX_MESSAGE_LEN)
        .on_upgrade(move |socket| pump(socket, conn))
}

/// A stream-transport kiosk silent this long is closed, like the QUIC connection's idle timeout
/// (a live kiosk answers the clock pings every 2 s).
const STREAM_IDLE: Duration = Duration::from_secs(15);

/// Moves messages between the WebSocket and the sidecar until either side ends, or the kiosk
/// has been silent for [`STREAM_IDLE`].
async fn pump(mut socket: axum::extract::ws::WebSocket, mut conn: StreamConn) {
    use axum::extract::ws::{CloseFrame, Message};
    let mut idle = Box::pin(tokio::time::sleep(STREAM_IDLE));
    loop {
        tokio::select! {
            () = &mut idle => {
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: axum::extract::ws::close_code::AWAY,
                        reason: "idle".into(),
                    })))
                    .await;
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    idle.as_mut().reset(tokio::time::Instant::now() + STREAM_IDLE);
                    conn.handle_message(&b);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                // Text is not part of the protocol: a malformed frame, like garbage on QUIC.
                Some(Ok(Message::Text(_))) => conn.handle_message(&[0xff]),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            ev = conn.next_event() => match ev {
                Some(StreamEvent::Send(bytes)) => {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        return;
                    }
                }
                Some(StreamEvent::Close { code, reason }) => {
                    let code = cabine_sidecar::client::stream::CLOSE_CODE_BASE
                        .saturating_add(u16::try_from(code.code()).unwrap_or(1));
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
                    return;
                }
                _ => return,
            },
        }
    }
}

/// Keeps the latest measurement and status of each channel, for late subscribers.
fn remember(cache: &Cache, room: &RoomId, d: &Delivered, json: &str) {
    let kind = match &d.frame {
        Some(delivered::Frame::Measurement(_)) => {
            let mut recent = cache.recent();
            let q = recent.entry(room.clone()).or_default();
            if q.len() >= RECENT_PER_ROOM {
                q.pop_front();
            }
            q.push_back(json.to_owned());
            "measurement"
        }
        Some(delivered::Frame::Status(_)) => "status",
        Some(delivered::Frame::Left(_)) => {
            let mut all = cache.lock();
            if let Some(m) = all.get_mut(room) {
                m.retain(|(source, _, _), _| *source != d.source);
                if m.is_empty() {
                    all.remove(room);
                }
            }
            return;
        }
        _ => return,
    };
    let mut all = cache.lock();
    let m = all.entry(room.clone()).or_default();
    let key = (d.source.clone(), d.channel_id, kind);
    if m.len() < LATEST_PER_ROOM || m.contains_key(&key) {
        m.insert(key, json.to_owned());
    }
}

/// Forgets the readings of rooms whose kiosks are all gone.
async fn sweep(t: std::sync::Weak<Telemetry>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        let Some(t) = t.upgrade() else { return };
        let mut rooms: Vec<RoomId> = t.cache.lock().keys().cloned().collect();
        rooms.extend(t.cache.recent().keys().cloned());
        rooms.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        rooms.dedup();
        for room in rooms {
            if t.sidecar.channels(&room).is_empty() {
                t.cache.lock().remove(&room);
                t.cache.recent().remove(&room);
            }
        }
    }
}

fn host_of(advertise: &str) -> String {
    let a = advertise.trim_start_matches("quic://");
    match a.parse::<SocketAddr>() {
        Ok(s) => s.ip().to_string(),
        Err(_) => a
            .rsplit_once(':')
            .map_or(a, |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_refuse_unknown_shapes() {
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"type":"sync"}"#),
            Ok(Request::Sync)
        ));
        let c: Request = serde_json::from_str(
            r#"{"type":"command","request_id":3,"channel_id":5,"name":"start_measurement"}"#,
        )
        .unwrap();
        assert!(matches!(
            c,
            Request::Command {
                request_id: 3,
                channel_id: 5,
                ..
            }
        ));
        assert!(serde_json::from_str::<Request>(r#"{"type":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"type":"command"}"#).is_err());
    }

    #[test]
    fn advertised_hosts() {
        assert_eq!(host_of("quic://kiosk.example.fr:4443"), "kiosk.example.fr");
        assert_eq!(host_of("192.0.2.7:4443"), "192.0.2.7");
        assert_eq!(host_of("[2001:db8::1]:4443"), "2001:db8::1");
    }
}
