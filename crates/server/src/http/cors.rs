//! Cross-origin calls (CORS) for the pages of another origin that use WHIP, WHEP and the JSON
//! APIs (`http.cors_origins`). Tokens travel in the `Authorization` header, never in cookies, so
//! credentials mode is never allowed. A preflight is answered by the route's own `OPTIONS`
//! handler when it has one (WHIP/WHEP: `Accept-Post`/`Accept-Patch` and `Link` headers), else
//! with `204`; the CORS headers are added to both.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Methods a page may use across origins.
pub const ALLOW_METHODS: &str = "GET, POST, PATCH, DELETE, OPTIONS";
/// Request headers a page may send across origins.
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, If-Match";
/// Response headers a page may read across origins: RFC 9725 clients need the first five;
/// `Retry-After` (429/503) says when to retry and `WWW-Authenticate` (401) what is wanted.
pub const EXPOSE_HEADERS: &str =
    "Location, Link, ETag, Accept-Patch, Accept-Post, Retry-After, WWW-Authenticate";
/// How long a browser may cache a preflight, seconds.
pub const MAX_AGE_SECS: &str = "600";

/// The middleware: adds the CORS headers for an allowed `Origin`, answers preflights.
pub async fn layer(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| st.cors_origins.iter().any(|a| a == *o) || cluster_node(&st, o))
        .cloned();
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = next.run(req).await;
    let Some(origin) = origin else {
        return res;
    };
    if preflight && res.status() == StatusCode::METHOD_NOT_ALLOWED {
        // A route without its own OPTIONS handler (the JSON APIs, health).
        res = StatusCode::NO_CONTENT.into_response();
    }
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE_SECS),
        );
    } else {
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    res
}

/// Whether `origin` is the public origin of a node of the cluster (seen in the registry since
/// this node started, [`crate::cluster::Cluster::is_node_origin`]): a page served by another
/// node whose session moved here (a drain, a lost node) calls this node's APIs for its room
/// (stills, invites) from its first node's origin, which may be dead by then.
fn cluster_node(st: &AppState, origin: &HeaderValue) -> bool {
    origin
        .to_str()
        .is_ok_and(|o| st.cluster().is_node_origin(o))
}
