//! The browser pages: the doctor's consultation page `/consult/{room}`, the kiosk page
//! `/kiosk/{room}` (and its waiting screen in queue mode, `/kiosk`), the doctor's queue page
//! `/queue`, the invitee's page `/invite/{room}`, the operators' dashboard `/ops`, the
//! WHIP/WHEP demo pages `/demo/publish` and `/demo/watch`, and their modules and styles under
//! `/app/`. Every page and asset is served with the same strict content security policy (no
//! inline script or style, no framing).
//!
//! Dependency-free ES modules and CSS compiled into the binary (`include_str!`): nothing is
//! fetched from elsewhere, so the pages work offline, and the content security policy says so.
//! The token travels in the URL fragment (`#token=…`), which browsers never send; the pages
//! give it to the WebSocket (`/ws/{room}?token=…`, see `docs/signalling.md`) and the server
//! logs routes, never URLs.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The files under `/app/`: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "session.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/session.js"),
    ),
    (
        "consult.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/consult.js"),
    ),
    (
        "kiosk.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/kiosk.js"),
    ),
    (
        "invite.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/invite.js"),
    ),
    (
        "assist.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/assist.js"),
    ),
    (
        "waiting.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/waiting.js"),
    ),
    (
        "queue.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/queue.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app/app.css"),
    ),
    (
        "ops.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/ops.js"),
    ),
    (
        "ops.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app/ops.css"),
    ),
    (
        "publish.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/publish.js"),
    ),
    (
        "publish.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app/publish.css"),
    ),
    (
        "watch.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app/watch.js"),
    ),
    (
        "watch.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/app/watch.css"),
    ),
];

/// Only this origin: scripts, styles, sockets (CSP3: `'self'` matches the page's own
/// `ws:`/`wss:` origin, and no other host); media and stills from streams and blobs.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' blob: data:; \
                   media-src 'self' blob: mediastream:; frame-ancestors 'none'";

/// The routes of the browser app.
pub fn routes() -> Router<Arc<crate::state::AppState>> {
    Router::new()
        .route("/consult/{room}", get(consult))
        .route("/kiosk/{room}", get(kiosk))
        .route("/kiosk", get(waiting))
        .route("/queue", get(queue_page))
        .route("/ops", get(ops_page))
        .route("/demo/publish", get(demo_publish))
        .route("/demo/watch", get(demo_watch))
        .route("/app/{file}", get(asset))
        .route("/favicon.ico", get(favicon))
}

/// The icon browsers ask for on every page (a 32x32 PNG in an ICO container).
async fn favicon() -> Response {
    let mut r = respond_bytes(
        "image/x-icon",
        include_bytes!("../../assets/app/favicon.ico"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    r
}

async fn consult(State(st): State<Arc<crate::state::AppState>>) -> Response {
    movable_page(&st, include_str!("../../assets/app/consult.html"))
}

async fn kiosk(State(st): State<Arc<crate::state::AppState>>) -> Response {
    movable_page(&st, include_str!("../../assets/app/kiosk.html"))
}

/// A page whose session may move to another node of the cluster (a drain: the WebSocket's
/// `move`): its policy also lets it open sockets to the nodes of the registry as read now.
fn movable_page(st: &crate::state::AppState, body: &'static str) -> Response {
    let mut r = page(body);
    if !st.cluster().clustered() {
        return r;
    }
    let mut peers = String::new();
    for n in st.cluster().nodes() {
        if let Some((http, ws)) = node_origins(&n.url) {
            peers.push_str(&format!(" {http} {ws}"));
        }
    }
    if peers.is_empty() {
        return r;
    }
    let csp = CSP.replacen(
        "connect-src 'self'",
        &format!("connect-src 'self'{peers}"),
        1,
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// The `http(s)` and `ws(s)` origins of a node's public URL (as the registry gives it);
/// `None` for anything but a plain `http(s)://host[:port]` (a record is never trusted to
/// write policy syntax).
fn node_origins(url: &str) -> Option<(String, String)> {
    let (scheme, ws, rest) = if let Some(r) = url.strip_prefix("https://") {
        ("https", "wss", r)
    } else {
        ("http", "ws", url.strip_prefix("http://")?)
    };
    let host = rest.trim_end_matches('/');
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if host.is_empty() || !host.chars().all(plain) {
        return None;
    }
    Some((format!("{scheme}://{host}"), format!("{ws}://{host}")))
}

/// The invitee's page (`/invite/{room}#code=…`): exchanges the link's code for a token, once,
/// then opens the consultation page (routed with the invite API, [`super::invites`]).
pub(crate) async fn invite_page() -> Response {
    page(include_str!("../../assets/app/invite.html"))
}

/// The kiosk page in queue mode (`/kiosk#token=…`): the waiting screen, which opens the
/// kiosk page of the room once a doctor takes the ticket (`docs/queue.md`).
async fn waiting() -> Response {
    page(include_str!("../../assets/app/waiting.html"))
}

/// The doctor's queue page (`/queue#token=…`): waiting patients, "Take" opens the
/// consultation page.
async fn queue_page() -> Response {
    page(include_str!("../../assets/app/queue.html"))
}

/// The operators' live dashboard (token in the URL fragment: `/ops#token=T`).
async fn ops_page() -> Response {
    page(include_str!("../../assets/app/ops.html"))
}

/// A dependency-free page that publishes the browser's camera and microphone over WHIP
/// (token in the URL fragment: `/demo/publish#room=R&token=T`).
async fn demo_publish() -> Response {
    page(include_str!("../../assets/app/publish.html"))
}

/// A dependency-free page that plays a room over WHEP (`/demo/watch#room=R&token=T`).
async fn demo_watch() -> Response {
    page(include_str!("../../assets/app/watch.html"))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, body)) => respond(kind, body),
        None => {
            // The same headers as every page under /app/, and the name not echoed back.
            let mut r = respond("text/plain; charset=utf-8", "no such asset\n");
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

fn page(body: &'static str) -> Response {
    respond("text/html; charset=utf-8", body)
}

fn respond(kind: &'static str, body: &'static str) -> Response {
    respond_bytes(kind, body.as_bytes())
}

fn respond_bytes(kind: &'static str, body: &'static [u8]) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
