//! The admin listener: `GET /metrics` (Prometheus text), behind the admin token if one is set.
//! Served through the same accept loop as the public HTTP ([`crate::http::serve`]): a
//! connection cap, header-read and idle timeouts, so a scraper port reachable by others cannot
//! be made to hold sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::http::ApiError;
use crate::state::AppState;
use cabine_proto::jwt::bearer;

/// Connections the admin listener holds at once (a few scrapers; counted, beyond, under
/// `limits.http_connections`).
pub const ADMIN_CONNECTIONS: usize = 32;

/// The admin listener's settings.
pub struct Admin {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The metrics it serves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Bearer token required ("" = none).
    pub token: String,
    /// `limits.header_timeout`.
    pub header_timeout: Duration,
    /// `limits.idle_timeout`.
    pub idle_timeout: Duration,
    /// Turns true to stop.
    pub stop: watch::Receiver<bool>,
}

/// Starts the admin listener (`GET /metrics`); returns the bound address.
pub async fn spawn_admin(admin: Admin, state: Arc<AppState>) -> std::io::Result<SocketAddr> {
    let Admin {
        addr,
        metrics,
        token,
        header_timeout,
        idle_timeout,
        stop,
    } = admin;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let refusals = Arc::clone(state.limit_refusals());
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
                    if !got.is_ok_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
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
    tokio::spawn(
        crate::http::serve::Serve {
            listener,
            tls: None,
            app,
            cap: ADMIN_CONNECTIONS,
            header_timeout,
            idle_timeout,
            refusals,
            stop,
        }
        .run(),
    );
    Ok(bound)
}

/// Compares without an early exit, so the time taken says nothing of how much of the token a
/// guess got right (only whether its length is right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret-token", b"secret"));
        assert!(constant_time_eq(b"", b""));
    }
}
