//! A real media plane for the client's tests (and the kiosk's, which include this file):
//! `cabine_sfu::Sfu` on 127.0.0.1 with a WHIP and WHEP endpoint that joins sessions to it (no
//! tokens: the tests are the only clients).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, post};
use axum::Router;
use cabine_proto::{Identity, Role, RoomId};
use cabine_sfu::room::{JoinRequest, RoomConfig, SessionId, SessionKind};
use cabine_sfu::{Sfu, SfuConfig};

/// How long a test waits for what it checks before failing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The media plane and its HTTP endpoint.
pub struct RealSfu {
    /// The media plane.
    pub sfu: Arc<Sfu>,
    /// `http://127.0.0.1:port`.
    pub base: String,
}

impl RealSfu {
    /// The server's media UDP address (what a relay forwards to).
    pub fn media(&self) -> SocketAddr {
        self.sfu.local_addr()
    }

    /// The WHIP endpoint of `room`.
    pub fn whip(&self, room: &str) -> String {
        format!("{}/whip/{room}", self.base)
    }

    /// The WHEP endpoint of `room`.
    pub fn whep(&self, room: &str) -> String {
        format!("{}/whep/{room}", self.base)
    }
}

impl Drop for RealSfu {
    fn drop(&mut self) {
        self.sfu.shutdown();
    }
}

#[derive(Clone)]
struct Endpoint {
    sfu: Arc<Sfu>,
    next: Arc<AtomicU64>,
}

/// Starts the media plane (one worker) and its HTTP endpoint.
pub async fn start() -> RealSfu {
    let sfu = Arc::new(
        Sfu::start(SfuConfig {
            bind: "127.0.0.1:0".parse().expect("addr"),
            advertise: None,
            workers: 1,
            socket_buffer: 0,
            room: RoomConfig::default(),
            tcp: None,
        })
        .expect("media plane starts"),
    );
    let endpoint = Endpoint {
        sfu: Arc::clone(&sfu),
        next: Arc::new(AtomicU64::new(1)),
    };
    let app = Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whep/{room}", post(whep))
        .route("/session/{room}/{id}", delete(leave))
        .with_state(endpoint);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    RealSfu { sfu, base }
}

async fn whip(
    State(e): State<Endpoint>,
    Path(room): Path<String>,
    offer: String,
) -> impl IntoResponse {
    join(e, room, SessionKind::Publish, offer).await
}

async fn whep(
    State(e): State<Endpoint>,
    Path(room): Path<String>,
    offer: String,
) -> impl IntoResponse {
    join(e, room, SessionKind::Subscribe, offer).await
}

async fn join(
    e: Endpoint,
    room: String,
    kind: SessionKind,
    offer: String,
) -> axum::response::Response {
    let n = e.next.fetch_add(1, Ordering::Relaxed);
    let Ok(room_id) = RoomId::parse(&room) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let joined = e
        .sfu
        .join(
            room_id,
            JoinRequest {
                session: SessionId(n),
                identity: Identity::parse(&format!("peer-{n}")).expect("identity"),
                role: if kind == SessionKind::Publish {
                    Role::Kiosk
                } else {
                    Role::Doctor
                },
                kind,
                offer,
                from: None,
                ice_ufrag: format!("u{n}k"),
                ice_pwd: format!("kioskteststorepassword{n:08}"),
            },
        )
        .await;
    match joined {
        Ok(joined) => (
            StatusCode::CREATED,
            [
                ("content-type", "application/sdp".to_owned()),
                ("location", format!("/session/{room}/{n}")),
            ],
            joined.answer,
        )
            .into_response(),
        Err(err) => (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    }
}

async fn leave(State(e): State<Endpoint>, Path((room, id)): Path<(String, u64)>) -> StatusCode {
    let Ok(room) = RoomId::parse(&room) else {
        return StatusCode::NOT_FOUND;
    };
    match e.sfu.leave(room, SessionId(id)).await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::NOT_FOUND,
    }
}

/// A turn for a test that runs a real encoder against a rate-sensitive measurement: such tests
/// take turns, because one test's libvpx camera made another's delay-based rate controller see
/// host stalls as queueing on a loaded two-core machine.
pub async fn cpu_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Polls `check` every 20 ms until it holds or `PATIENCE` runs out.
pub async fn wait_until(what: &str, check: impl FnMut() -> bool) {
    wait_until_for(PATIENCE, what, check).await;
}

/// Polls `check` every 20 ms until it holds or `patience` runs out.
pub async fn wait_until_for(patience: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
