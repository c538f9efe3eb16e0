//! The admin listener: `GET /metrics` (Prometheus text), behind the admin token if one is set.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::http::ApiError;
use crate::state::AppState;
use cabine_proto::jwt::bearer;

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
