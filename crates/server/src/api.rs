//! HTTP routes: WHIP and WHEP (RFC 9725), health, and the operators' room list.
//!
//! Every error is a plain-text body naming the problem, with the status DESIGN.md fixes:
//! 400 bad SDP or room name, 401 bad token, 403 not allowed, 404 unknown session,
//! 412 ETag mismatch, 413 body too large, 415 wrong content type, 422 no usable codec,
//! 503 draining or full.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cabine_proto::{Claims, Grant, Identity, Redacted, Role, RoomId};
use cabine_sfu::room::{RoomSnapshot, TrackInfo};
use cabine_sfu::shell::{SfuEvent, ShellStats};
use cabine_sfu::{JoinError, JoinRequest, SessionId, SessionKind, Sfu, SfuError};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::auth::{bearer, AuthError, Tokens};
use crate::config::Config;

/// Label of the data channel subscribers write telemetry requests and device commands on.
pub const COMMANDS_LABEL: &str = "commands";
#[path = "pages.rs"]
pub mod pages;
#[path = "ws.rs"]
pub mod ws;

/// Shared state of the HTTP layer.
pub struct AppState {
    tokens: Tokens,
    sfu: Sfu,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    /// Set during shutdown: new sessions are refused and readiness fails.
    pub draining: AtomicBool,
    public_url: String,
    /// How long a dropped WebSocket signalling session waits to be resumed.
    pub ws_resume_grace: std::time::Duration,
    refused: Mutex<HashMap<&'static str, u64>>,
    joins: AtomicU64,
    audit: crate::audit::Audit,
    spans: Mutex<HashMap<SessionId, SessionSpans>>,
    /// The telemetry sidecar, once started (absent when `telemetry.listen` is empty).
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::Telemetry>>,
    ops: OpsSampler,
    ws: ws::Hub,
}

/// The operators' view as last sampled, and the history behind its sparklines.
struct OpsSampler {
    history: Mutex<crate::ops::History>,
    latest: tokio::sync::watch::Sender<Option<Arc<crate::ops::OpsView>>>,
}

/// The open tracing spans of a session: the session itself and the setup stage in progress
/// (`ice`, then `dtls`, then `first_media`), so a trace shows where a slow join spent its time.
struct SessionSpans {
    _session: tracing::Span,
    stage: Option<tracing::Span>,
}

#[derive(Debug, Clone)]
struct SessionEntry {
    room: RoomId,
    identity: Identity,
    role: Role,
    kind: SessionKind,
    etag: String,
    /// The client's current ICE ufrag (a PATCH with another one is an ICE restart).
    client_ufrag: String,
    /// The claims the session was opened with (grants for device commands).
    claims: Claims,
}

impl AppState {
    /// State for a server with `cfg`, over a started media plane.
    pub fn new(cfg: &Config, sfu: Sfu, audit: crate::audit::Audit) -> Self {
        AppState {
            tokens: Tokens::new(cfg.auth.secret.as_bytes()),
            sfu,
            sessions: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            public_url: cfg.http.public_url.trim_end_matches('/').to_owned(),
            ws_resume_grace: cfg.http.ws_resume_grace,
            refused: Mutex::new(HashMap::new()),
            joins: AtomicU64::new(0),
            audit,
            spans: Mutex::new(HashMap::new()),
            telemetry: std::sync::OnceLock::new(),
            ws: ws::Hub::default(),
            ops: OpsSampler {
                history: Mutex::new(crate::ops::History::new()),
                latest: tokio::sync::watch::Sender::new(None),
            },
        }
    }

    /// Attaches the started telemetry sidecar.
    pub fn set_telemetry(&self, t: Arc<crate::telemetry::Telemetry>) {
        let _ = self.telemetry.set(t);
    }

    /// The telemetry sidecar, if enabled.
    pub fn telemetry(&self) -> Option<&Arc<crate::telemetry::Telemetry>> {
        self.telemetry.get()
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions_lock().len()
    }

    /// Closes every open session; returns how many there were.
    pub async fn close_all(&self) -> usize {
        let all: Vec<(SessionId, SessionEntry)> = self.sessions_lock().drain().collect();
        for (id, e) in &all {
            let _ = self.sfu.leave(e.room.clone(), *id).await;
            self.audit(
                "leave",
                &e.room,
                &e.identity,
                Some(e.role),
                None,
                "server shutdown",
            );
        }
        all.len()
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionEntry>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message from a subscriber's `commands` data channel: a telemetry sync or a device
    /// command (see [`crate::telemetry`]). Commands are audited, refusals counted and audited.
    fn on_data(&self, room: &RoomId, data: cabine_sfu::room::DataIn) {
        let Some(t) = self.telemetry.get() else {
            self.count_refusal("telemetry_disabled");
            return;
        };
        if data.label != COMMANDS_LABEL {
            self.count_refusal("unknown_data_channel");
            return;
        }
        let Some(entry) = self.sessions_lock().get(&data.session).cloned() else {
            self.count_refusal("unknown_session");
            return;
        };
        match t.on_request(room, data.session, &entry.claims, &data.data) {
            Ok(None) => {}
            Ok(Some(command_id)) => self.audit(
                "command",
                room,
                &entry.identity,
                Some(entry.role),
                None,
                &format!("command {command_id} sent to the kiosk"),
            ),
            Err(reason) => {
                self.count_refusal("telemetry_request_refused");
                self.audit(
                    "refused",
                    room,
                    &entry.identity,
                    Some(entry.role),
                    None,
                    &format!("telemetry request: {reason}"),
                );
            }
        }
    }

    fn spans_lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionSpans>> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_spans(&self, session: SessionId, kind: &'static str, role: Role, room: &RoomId) {
        let span = tracing::info_span!(
            "session",
            kind,
            role = %role,
            session = %session,
            room = %Redacted(room),
        );
        let ice = tracing::info_span!(parent: &span, "ice");
        self.spans_lock().insert(
            session,
            SessionSpans {
                _session: span,
                stage: Some(ice),
            },
        );
    }

    fn on_progress(&self, p: cabine_sfu::room::Progress) {
        use cabine_sfu::room::Stage;
        let mut spans = self.spans_lock();
        let Some(s) = spans.get_mut(&p.session) else {
            return;
        };
        // Closing the previous stage's span ends it now; the next one starts now.
        s.stage = None;
        s.stage = match p.stage {
            Stage::IceConnected => Some(tracing::info_span!(parent: &s._session, "dtls")),
            Stage::DtlsConnected => Some(tracing::info_span!(parent: &s._session, "first_media")),
            Stage::FirstMedia => None,
        };
    }

    fn end_spans(&self, session: SessionId) {
        self.spans_lock().remove(&session);
    }

    /// Refused requests by reason, since start.
    pub fn refused_counts(&self) -> HashMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn count_refusal(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// Reads media-plane events (sessions that ended by themselves) into the session table and the
/// audit log, on a blocking thread.
pub fn spawn_event_reader(state: Arc<AppState>) {
    let events = state.sfu.events();
    std::thread::Builder::new()
        .name("cabine-events".into())
        .spawn(move || {
            for ev in events.iter() {
                match ev {
                    SfuEvent::Progress { progress, .. } => state.on_progress(progress),
                    SfuEvent::SessionEnded { room, removed } => {
                        state.ws.on_session_ended(&removed);
                        state.sessions_lock().remove(&removed.session);
                        state.end_spans(removed.session);
                        state.audit(
                            "leave",
                            &room,
                            &removed.identity,
                            Some(removed.role),
                            None,
                            removed.reason,
                        );
                    }
                    SfuEvent::Data { room, data } => state.on_data(&room, data),
                    SfuEvent::Offer { offer, .. } => state.ws.on_offer(offer),
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| warn!(error = %e, "cannot start the media event reader"));
}

/// Samples the operators' view every [`crate::ops::PERIOD`] into its history and publishes it
/// to the open dashboards (one snapshot per period however many are open). Ends when the
/// server state is dropped or the media plane stops.
pub fn spawn_ops_sampler(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::ops::PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let rooms = match st.sfu.snapshot().await {
                Ok(r) => r,
                Err(SfuError::Stopped) => return,
                Err(_) => continue,
            };
            let proc = crate::ops::ProcSample::read();
            let mut view = crate::ops::view(&rooms, st.sfu.stats(), proc, crate::ops::unix_ms());
            st.ops
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(&mut view, proc, std::time::Instant::now());
            st.ops.latest.send_replace(Some(Arc::new(view)));
        }
    });
}

/// Starts the admin listener (`GET /metrics`) on `addr`; returns the bound address.
pub async fn spawn_admin(
    addr: SocketAddr,
    metrics: Arc<crate::metrics::Metrics>,
    token: String,
    state: Arc<AppState>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let metrics = Arc::clone(&metrics);
            let token = token.clone();
            let state = Arc::clone(&state);
            async move {
                if !token.is_empty() {
                    let got = bearer(
                        headers
                            .get(header::AUTHORIZATION)
                            .and_then(|h| h.to_str().ok()),
                    );
                    if got != Ok(token.as_str()) {
                        state.count_refusal("admin_token");
                        return ApiError::new(StatusCode::UNAUTHORIZED, "admin token required")
                            .into_response();
                    }
                }
                let mut r = metrics.render().into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}

/// The router.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/demo/publish", get(demo_publish))
        .route("/demo/watch", get(demo_watch))
        .route("/readyz", get(readyz))
        .route("/api/rooms", get(rooms))
        .route("/api/telemetry", get(telemetry_discovery))
        .route("/api/ops", get(ops_once))
        .route("/api/ops/stream", get(ops_stream))
        .route("/ops", get(ops_page))
        .route("/whip/{room}", post(whip).options(options))
        .route("/whep/{room}", post(whep).options(options))
        .route("/ws/{room}", get(ws::handler))
        .merge(pages::routes())
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(patch_session)
                .delete(delete_session)
                .options(options),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(patch_session)
                .delete(delete_session)
                .options(options),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
                    // The route template, never the path: paths hold room names.
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".to_owned());
                    tracing::info_span!(
                        "http",
                        method = %req.method(),
                        route,
                        status = tracing::field::Empty,
                    )
                })
                .on_response(
                    |res: &Response, _latency: std::time::Duration, span: &tracing::Span| {
                        span.record("status", res.status().as_u16());
                    },
                ),
        )
        .with_state(state)
}

/// An API error: status and a message that names the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, format!("{}\n", self.message)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut err = ApiError::new(status, e.to_string());
        if status == StatusCode::UNAUTHORIZED {
            err.message = format!("{} (401 Unauthorized)", e);
        }
        err
    }
}

/// Where kiosks dial device telemetry (QUIC address, ALPN, certificate to pin), for any valid
/// token.
async fn telemetry_discovery(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<crate::telemetry::Discovery>, ApiError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .inspect_err(|e| st.count_refusal(e.reason()))?;
    st.tokens
        .verify(token)
        .inspect_err(|e| st.count_refusal(e.reason()))?;
    let t = st.telemetry.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "telemetry is disabled on this server (telemetry.listen is empty)",
        )
    })?;
    Ok(Json(t.discovery().clone()))
}

/// The operators' live dashboard (token in the URL fragment: `/ops#token=T`).
async fn ops_page() -> Response {
    html(include_str!("../assets/ops.html"))
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Checks an operator token from the `Authorization` header or, for `EventSource` which cannot
/// set headers, the `token` query parameter (request paths and queries are never logged).
fn operator(
    st: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    peer: SocketAddr,
) -> Result<Claims, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let token = match (header, query) {
        (Some(h), _) => bearer(Some(h)),
        (None, Some(q)) => Ok(q),
        (None, None) => Err(AuthError::Missing),
    }
    .inspect_err(|e| st.count_refusal(e.reason()))?;
    let claims: Claims = st
        .tokens
        .verify(token)
        .inspect_err(|e| st.count_refusal(e.reason()))?;
    if claims.role != Role::Operator {
        st.count_refusal("forbidden_role");
        let e = AuthError::Forbidden {
            role: claims.role,
            action: "see the operators' view (operator only)",
        };
        st.audit_refusal(
            &claims.room,
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(e.into());
    }
    Ok(claims)
}

/// A fresh view (rates from the last sample), limited to the token's room.
async fn ops_view(st: &AppState, claims: &Claims) -> Result<crate::ops::OpsView, ApiError> {
    let mut rooms = st
        .sfu
        .snapshot()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if claims.room != "*" {
        rooms.retain(|r| r.room.as_str() == claims.room);
    }
    let mut view = crate::ops::view(
        &rooms,
        st.sfu.stats(),
        crate::ops::ProcSample::read(),
        crate::ops::unix_ms(),
    );
    st.ops
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .annotate(&mut view);
    Ok(view)
}

async fn ops_once(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<crate::ops::OpsView>, ApiError> {
    let claims = operator(&st, &headers, q.token.as_deref(), peer)?;
    Ok(Json(ops_view(&st, &claims).await?))
}

async fn ops_stream(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use axum::response::sse::{KeepAlive, Sse};
    let claims = operator(&st, &headers, q.token.as_deref(), peer)?;
    // The first event is a fresh view with the history behind it (sparklines from the first
    // paint); the following ones are the sampler's, one per period, shared by every dashboard.
    let mut first = ops_view(&st, &claims).await?;
    first.history = Some(
        st.ops
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .view_for(&first),
    );
    let first = ops_event(&first);
    let mut rx = st.ops.latest.subscribe();
    rx.mark_unchanged();
    let stream = futures_util::stream::unfold(
        (st, claims, rx, Some(first)),
        |(st, claims, mut rx, first)| async move {
            if let Some(event) = first {
                return Some((
                    Ok::<_, std::convert::Infallible>(event),
                    (st, claims, rx, None),
                ));
            }
            loop {
                // A draining server ends its streams so that shutdown is not held by open
                // dashboards; the timeout rechecks it should the sampler be late.
                if st.draining.load(Ordering::Relaxed) {
                    return None;
                }
                match tokio::time::timeout(crate::ops::PERIOD * 2, rx.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => continue,
                }
                let latest = rx.borrow_and_update().clone();
                let Some(view) = latest else { continue };
                let event = if claims.room == "*" {
                    ops_event(&view)
                } else {
                    ops_event(&view.for_room(&claims.room))
                };
                return Some((Ok(event), (st, claims, rx, None)));
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn ops_event(view: &crate::ops::OpsView) -> axum::response::sse::Event {
    axum::response::sse::Event::default()
        .event("view")
        .json_data(view)
        .unwrap_or_else(|_| axum::response::sse::Event::default().comment("encoding error"))
}

/// A dependency-free page that publishes the browser's camera and microphone over WHIP
/// (token in the URL fragment: `/demo/publish#room=R&token=T`).
async fn demo_publish() -> Response {
    html(include_str!("../assets/publish.html"))
}

/// A dependency-free page that plays a room over WHEP (`/demo/watch#room=R&token=T`).
async fn demo_watch() -> Response {
    html(include_str!("../assets/watch.html"))
}

fn html(body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The token travels in the fragment, which browsers never send; keep it out of referrers too.
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; media-src 'self' blob: mediastream:"),
    );
    r
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::Relaxed) {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn options() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    h.insert(
        "accept-patch",
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    r
}

#[derive(Debug, Deserialize)]
struct WhepQuery {
    from: Option<String>,
}

async fn whip(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    create_session(&st, peer, &room, &headers, body, SessionKind::Publish, None).await
}

async fn whep(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(q): Query<WhepQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let from = match q.from {
        Some(f) => Some(Identity::parse(&f).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("bad `from` parameter: {e}"),
            )
        })?),
        None => None,
    };
    create_session(
        &st,
        peer,
        &room,
        &headers,
        body,
        SessionKind::Subscribe,
        from,
    )
    .await
}

async fn create_session(
    st: &Arc<AppState>,
    peer: SocketAddr,
    room: &str,
    headers: &HeaderMap,
    body: Bytes,
    kind: SessionKind,
    from: Option<Identity>,
) -> Result<Response, ApiError> {
    let room = RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))?;
    let (grant, action, path) = match kind {
        SessionKind::Publish => (Grant::Publish, "publish", "whip"),
        SessionKind::Subscribe => (Grant::Subscribe, "subscribe", "whep"),
    };
    let claims = authorize(st, headers, &room, grant, action, peer)?;
    if st.draining.load(Ordering::Relaxed) {
        st.count_refusal("draining");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is shutting down; retry on another node",
        ));
    }
    check_content_type(headers, "application/sdp")?;
    let offer = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8"))?;
    if offer.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty SDP offer"));
    }
    let session = SessionId(rand::rng().random());
    let ice_ufrag = random_token(8);
    let ice_pwd = random_token(24);
    let req = JoinRequest {
        session,
        identity: claims.sub.clone(),
        role: claims.role,
        kind,
        offer: offer.to_owned(),
        from,
        ice_ufrag: ice_ufrag.clone(),
        ice_pwd,
    };
    let joined = match st.sfu.join(room.clone(), req).await {
        Ok(j) => j,
        Err(e) => {
            let (status, reason) = match &e {
                SfuError::Join(JoinError::NoUsableMedia(_)) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "no_usable_codec")
                }
                SfuError::Join(JoinError::RoomFull(_)) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "room_full")
                }
                SfuError::Join(e) if e.is_client_fault() => (StatusCode::BAD_REQUEST, "bad_sdp"),
                SfuError::Join(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "media_plane_down"),
            };
            st.count_refusal(reason);
            let message = clean_message(&e.to_string());
            st.audit(
                "refused",
                &room,
                &claims.sub,
                Some(claims.role),
                Some(peer),
                &message,
            );
            return Err(ApiError::new(status, message));
        }
    };
    let etag = format!("\"{ice_ufrag}\"");
    st.sessions_lock().insert(
        session,
        SessionEntry {
            room: room.clone(),
            identity: claims.sub.clone(),
            role: claims.role,
            kind,
            etag: etag.clone(),
            client_ufrag: sdp_attr(offer, "a=ice-ufrag:").unwrap_or_default(),
            claims: claims.clone(),
        },
    );
    st.joins.fetch_add(1, Ordering::Relaxed);
    st.start_spans(session, action, claims.role, &room);
    st.audit(
        action,
        &room,
        &claims.sub,
        Some(claims.role),
        Some(peer),
        &describe(&joined.tracks),
    );
    info!(
        room = %Redacted(&room),
        identity = %Redacted(&claims.sub),
        role = %claims.role,
        session = %session,
        tracks = joined.tracks.len(),
        "{action} session created"
    );
    let location = format!("{}/{path}/{room}/{session}", st.public_url);
    let mut r = (StatusCode::CREATED, joined.answer).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    insert(h, header::LOCATION, &location);
    insert(h, header::ETAG, &etag);
    Ok(r)
}

async fn patch_session(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (room, id, entry) = lookup_session(&st, &room, &session)?;
    owner_only(&st, &headers, &room, &entry, peer)?;
    check_content_type(&headers, "application/trickle-ice-sdpfrag")?;
    if let Some(m) = headers.get(header::IF_MATCH) {
        let m = m.to_str().unwrap_or("");
        if m != "*" && m != entry.etag {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                format!(
                    "If-Match {m} does not match the session's ETag {}",
                    entry.etag
                ),
            ));
        }
    }
    let frag = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the SDP fragment is not UTF-8"))?;
    let new_ufrag = sdp_attr(frag, "a=ice-ufrag:");
    let new_pwd = sdp_attr(frag, "a=ice-pwd:");
    if let (Some(ufrag), Some(pwd)) = (new_ufrag, new_pwd) {
        if ufrag != entry.client_ufrag {
            return ice_restart(&st, room, id, entry, ufrag, pwd, peer).await;
        }
    }
    // Trickled candidates need no action: the server is ICE-lite and learns the client's
    // addresses from its connectivity checks.
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn ice_restart(
    st: &AppState,
    room: RoomId,
    id: SessionId,
    entry: SessionEntry,
    ufrag: String,
    pwd: String,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    if ufrag.len() < 4 || pwd.len() < 22 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ICE restart: ice-ufrag must be at least 4 and ice-pwd at least 22 characters (RFC 8839)",
        ));
    }
    let local = str0m::IceCreds {
        ufrag: random_token(8),
        pass: random_token(24),
    };
    let remote = str0m::IceCreds {
        ufrag: ufrag.clone(),
        pass: pwd,
    };
    st.sfu
        .ice_restart(room.clone(), id, remote, local.clone())
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))?;
    let etag = format!("\"{}\"", local.ufrag);
    if let Some(e) = st.sessions_lock().get_mut(&id) {
        e.etag = etag.clone();
        e.client_ufrag = ufrag;
    }
    st.audit(
        "ice_restart",
        &room,
        &entry.identity,
        Some(entry.role),
        Some(peer),
        "",
    );
    let body = format!(
        "a=ice-lite\r\na=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        local.ufrag, local.pass
    );
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    insert(h, header::ETAG, &etag);
    Ok(r)
}

async fn delete_session(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((room, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (room, id, entry) = lookup_session(&st, &room, &session)?;
    owner_only(&st, &headers, &room, &entry, peer)?;
    st.sessions_lock().remove(&id);
    st.end_spans(id);
    match st.sfu.leave(room.clone(), id).await {
        Ok(()) | Err(SfuError::UnknownSession(_)) => {}
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        }
    }
    st.audit(
        "leave",
        &room,
        &entry.identity,
        Some(entry.role),
        Some(peer),
        "DELETE",
    );
    Ok(StatusCode::OK.into_response())
}

/// The operators' view of the node.
#[derive(Debug, Serialize)]
pub struct RoomsResponse {
    /// Rooms (all of them for a `*` token, else the token's room).
    pub rooms: Vec<RoomSnapshot>,
    /// Socket-level counters of the media plane.
    pub media: ShellStats,
    /// Requests refused, by reason.
    pub refused: HashMap<&'static str, u64>,
    /// Sessions created since start.
    pub joins: u64,
}

async fn rooms(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<RoomsResponse>, ApiError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .inspect_err(|e| st.count_refusal(e.reason()))?;
    let claims: Claims = st.tokens.verify(token).inspect_err(|e| {
        st.count_refusal(e.reason());
    })?;
    if claims.role != Role::Operator {
        st.count_refusal("forbidden_role");
        let e = AuthError::Forbidden {
            role: claims.role,
            action: "read room statistics (operator only)",
        };
        st.audit_refusal(
            &claims.room,
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(e.into());
    }
    let mut rooms = st
        .sfu
        .snapshot()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if claims.room != "*" {
        rooms.retain(|r| r.room.as_str() == claims.room);
    }
    let refused = st.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Json(RoomsResponse {
        rooms,
        media: st.sfu.stats(),
        refused,
        joins: st.joins.load(Ordering::Relaxed),
    }))
}

// ---- helpers ----

fn authorize(
    st: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    grant: Grant,
    action: &'static str,
    peer: SocketAddr,
) -> Result<Claims, ApiError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .inspect_err(|e| st.count_refusal(e.reason()))?;
    st.tokens
        .authorize(token, room, grant, action)
        .map_err(|e| {
            st.count_refusal(e.reason());
            match st.tokens.verify(token) {
                Ok(c) => st.audit_refusal(room.as_str(), c.sub.as_str(), Some(c.role), peer, &e),
                Err(_) => st.audit_refusal(room.as_str(), "-", None, peer, &e),
            }
            e.into()
        })
}

fn owner_only(
    st: &AppState,
    headers: &HeaderMap,
    room: &RoomId,
    entry: &SessionEntry,
    peer: SocketAddr,
) -> Result<(), ApiError> {
    let token = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .inspect_err(|e| st.count_refusal(e.reason()))?;
    let claims = st
        .tokens
        .verify(token)
        .inspect_err(|e| st.count_refusal(e.reason()))?;
    if !claims.is_for_room(room) {
        st.count_refusal("wrong_room");
        return Err(AuthError::WrongRoom {
            token_room: claims.room,
            room: room.to_string(),
        }
        .into());
    }
    if claims.sub != entry.identity && claims.role != Role::Operator {
        st.count_refusal("not_owner");
        let e = AuthError::Forbidden {
            role: claims.role,
            action: "modify another participant's session",
        };
        st.audit_refusal(
            room.as_str(),
            claims.sub.as_str(),
            Some(claims.role),
            peer,
            &e,
        );
        return Err(e.into());
    }
    let _ = entry.kind;
    Ok(())
}

fn lookup_session(
    st: &AppState,
    room: &str,
    session: &str,
) -> Result<(RoomId, SessionId, SessionEntry), ApiError> {
    let room = RoomId::parse(room)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("bad room name: {e}")))?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no session {session} in room {room}"),
        )
    };
    let id = u64::from_str_radix(session, 16).map_err(|_| unknown())?;
    let id = SessionId(id);
    let entry = st.sessions_lock().get(&id).cloned().ok_or_else(unknown)?;
    if entry.room != room {
        return Err(unknown());
    }
    Ok((room, id, entry))
}

/// The value of the first line starting with `prefix` (e.g. `a=ice-ufrag:`).
fn sdp_attr(sdp: &str, prefix: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
}

fn check_content_type(headers: &HeaderMap, want: &str) -> Result<(), ApiError> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = got.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case(want) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {want}, got {:?}", got),
        ));
    }
    Ok(())
}

/// Folds a multi-line parser message into one line and drops parser-internal addresses.
fn clean_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for part in m.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let part = match part.find(" at PointerOffset(") {
            Some(i) => {
                let rest = &part[i..];
                let end = rest.find(')').map_or(rest.len(), |e| e + 1);
                format!("{}{}", &part[..i], &rest[end..])
            }
            None => part.to_owned(),
        };
        if !out.is_empty() {
            out.push_str("; ");
        }
        out.push_str(&part);
    }
    out
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn describe(tracks: &[TrackInfo]) -> String {
    let labels: Vec<String> = tracks
        .iter()
        .map(|t| format!("{}:{}", t.kind, t.label.track))
        .collect();
    format!("tracks [{}]", labels.join(", "))
}

impl AppState {
    /// The audit log (to flush it at shutdown).
    pub fn audit_log(&self) -> &crate::audit::Audit {
        &self.audit
    }

    /// Writes an audit record: who did what in which room, from where. Identities appear in
    /// clear here and only here; the audit sink is access-controlled.
    fn audit(
        &self,
        event: &str,
        room: &RoomId,
        identity: &Identity,
        role: Option<Role>,
        peer: Option<SocketAddr>,
        detail: &str,
    ) {
        let role = role.map(|r| r.to_string());
        self.audit.record(
            event,
            room.as_str(),
            identity.as_str(),
            role.as_deref(),
            peer,
            detail,
        );
    }

    fn audit_refusal(
        &self,
        room: &str,
        identity: &str,
        role: Option<Role>,
        peer: SocketAddr,
        e: &AuthError,
    ) {
        let role = role.map(|r| r.to_string());
        self.audit.record(
            "refused",
            room,
            identity,
            role.as_deref(),
            Some(peer),
            &format!("{}: {e}", e.reason()),
        );
    }
}
