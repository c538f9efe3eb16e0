//! HTTP routes: WHIP and WHEP (RFC 9725), health, the operators' views, and the pages.
//!
//! Every error is a plain-text body naming the problem, with the status DESIGN.md fixes:
//! 400 bad SDP or room name, 401 bad token, 403 not allowed, 404 unknown session,
//! 412 ETag mismatch, 413 body too large, 415 wrong content type, 422 no usable codec (or
//! none in common with what the room publishes), 503 draining or full. Every 401 carries
//! `WWW-Authenticate: Bearer`; pages of the origins in `http.cors_origins` may call every route
//! ([`cors`]).
//! A refusal by a limit ([`crate::limits`]) is 429 (this client's share) or 503 (the
//! node's) with a JSON body naming the `limits.*` key. In a cluster ([`crate::cluster`]), a
//! WHIP/WHEP `POST` or a telemetry discovery for a room another node holds is a `307` to the
//! same path on that node ([`whip::route`]).

pub mod cors;
pub mod guard;
pub mod invites;
pub mod ops;
pub mod pages;
pub mod sdpfrag;
pub mod serve;
pub mod stills;
pub mod whip;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cabine_sfu::room::TrackInfo;
use rand::Rng;

use crate::state::AppState;
use crate::ws;
use cabine_proto::jwt::{bearer, AuthError};

/// The router.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/rooms", get(ops::rooms))
        .route("/api/drain", post(ops::drain))
        .route("/api/telemetry", get(telemetry_discovery))
        .route(
            crate::telemetry::STREAM_PATH,
            get(crate::telemetry::stream_handler),
        )
        .route("/api/ice-servers", get(crate::turn::ice_servers_route))
        .route("/api/ops", get(ops::ops_once))
        .route("/api/ops/stream", get(ops::ops_stream))
        .route("/api/rooms/{room}/fhir", post(crate::fhir::route::export))
        .route(
            "/whip/{room}",
            post(whip::whip).options(whip::endpoint_options),
        )
        .route(
            "/whep/{room}",
            post(whip::whep).options(whip::endpoint_options),
        )
        .route("/ws/{room}", get(ws::handler))
        .merge(pages::routes())
        .merge(invites::routes())
        .merge(stills::routes(state.limits.shared_still_bytes.get()))
        .merge(crate::queue::http::routes())
        .route(
            "/whip/{room}/{session}",
            axum::routing::patch(whip::patch_session)
                .delete(whip::delete_session)
                .options(whip::session_options),
        )
        .route(
            "/whep/{room}/{session}",
            axum::routing::patch(whip::patch_session)
                .delete(whip::delete_session)
                .options(whip::session_options),
        )
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            cors::layer,
        ))
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
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
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
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: every 401 names the scheme the client must use.
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cabine\""),
            );
        }
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
/// In a cluster, a token for one room is redirected (307) to the node that owns it: the QUIC
/// endpoint and certificate are that node's.
async fn telemetry_discovery(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok()),
    )
    .and_then(|t| st.tokens.verify(t))
    .inspect_err(|e| {
        // No valid token: an anonymous refusal (aggregated per source: `crate::anon_audit`).
        st.count_refusal(e.reason());
        st.audit_refusal("-", "-", None, peer, e);
    })?;
    if let Ok(room) = cabine_proto::RoomId::parse(&claims.room) {
        if let Some(elsewhere) = whip::route(&st, &room, &uri).await {
            return Ok(elsewhere);
        }
    }
    let t = st.telemetry.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "telemetry is disabled on this server (telemetry.listen is empty)",
        )
    })?;
    Ok(Json(t.discovery().clone()).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if st.draining.load(Ordering::Relaxed) {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if !st.sfu.is_healthy() {
        // A media worker died: its rooms are gone and new ones would be sharded onto it.
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "media plane unhealthy").into_response()
    } else {
        "ready\n".into_response()
    }
}

/// The value of the first line starting with `prefix` (e.g. `a=ice-ufrag:`).
pub(crate) fn sdp_attr(sdp: &str, prefix: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
}

pub(crate) fn check_content_type(headers: &HeaderMap, want: &str) -> Result<(), ApiError> {
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
pub(crate) fn clean_message(m: &str) -> String {
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

pub(crate) fn insert(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

pub(crate) fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

pub(crate) fn describe(tracks: &[TrackInfo]) -> String {
    let labels: Vec<String> = tracks
        .iter()
        .map(|t| format!("{}:{}", t.kind, t.label.track))
        .collect();
    format!("tracks [{}]", labels.join(", "))
}
