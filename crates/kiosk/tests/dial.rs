//! `dial::run` against a fake WHIP/WHEP endpoint that only answers HTTP: refusals stop the
//! kiosk, unavailability is retried with backoff, shutdown works while reconnecting, and bad
//! configurations fail before dialling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use cabine_kiosk::backoff::Backoff;
use cabine_kiosk::dial::{self, DialConfig, DialError, Input};

/// Answers the n-th POST with `statuses[n]` (the last one repeated).
#[derive(Clone)]
struct Fake {
    posts: Arc<AtomicUsize>,
    statuses: Arc<Vec<u16>>,
}

async fn answer(State(fake): State<Fake>) -> StatusCode {
    let n = fake.posts.fetch_add(1, Ordering::SeqCst);
    let status = fake.statuses[n.min(fake.statuses.len() - 1)];
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn serve(statuses: &[u16]) -> (String, Arc<AtomicUsize>) {
    let fake = Fake {
        posts: Arc::new(AtomicUsize::new(0)),
        statuses: Arc::new(statuses.to_vec()),
    };
    let posts = Arc::clone(&fake.posts);
    let app = Router::new()
        .route("/whip/{room}", post(answer))
        .route("/whep/{room}", post(answer))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), posts)
}

/// A light kiosk: the microphone only, no subscription, no devices, fast backoff.
fn config(server: &str) -> DialConfig {
    let mut c = DialConfig::new(server, "token");
    c.room = Some("consult-1".into());
    c.subscribe = false;
    c.devices = None;
    c.media.room_camera = Input::Off;
    c.media.device_camera = Input::Off;
    c.media.stethoscope = Input::Off;
    c.client.loopback_only = true;
    c.client.gather_timeout = Duration::from_secs(2);
    c.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_kiosk() {
    let (server, posts) = serve(&[401]).await;
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        dial::run(config(&server), std::future::pending()),
    )
    .await
    .expect("returns by itself");
    match result {
        Err(DialError::Refused { what, source }) => {
            assert_eq!(what, "publishing");
            assert_eq!(source.http_status(), Some(401));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(posts.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_server_is_retried_with_backoff() {
    let (server, posts) = serve(&[503, 503, 503, 403]).await;
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        dial::run(config(&server), std::future::pending()),
    )
    .await
    .expect("returns by itself");
    assert!(
        matches!(&result, Err(DialError::Refused { source, .. }) if source.http_status() == Some(403)),
        "{result:?}"
    );
    assert_eq!(posts.load(Ordering::SeqCst), 4);
    // Three waits: about 100, 200 and 400 ms (±20 %).
    assert!(
        started.elapsed() >= Duration::from_millis(560),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_reconnecting_returns_the_stats() {
    let (server, posts) = serve(&[503]).await;
    let mut c = config(&server);
    c.subscribe = true;
    c.devices = Some(cabine_kiosk::devices::DevicesConfig::new(1, 70.0));
    let stats = tokio::time::timeout(
        Duration::from_secs(20),
        dial::run(c, tokio::time::sleep(Duration::from_millis(1500))),
    )
    .await
    .expect("stops when asked")
    .expect("a clean stop");
    assert_eq!(stats.publish_sessions, 0);
    assert_eq!(stats.subscribe_sessions, 0);
    // Both loops kept trying.
    assert!(posts.load(Ordering::SeqCst) >= 4);
    // The microphone ran (and its frames were dropped: nobody to send them to).
    let mic = &stats.tracks["microphone"];
    assert_eq!(mic.frames, 0);
    assert!(mic.dropped >= 50, "{mic:?}");
    // The devices ran too: 1.5 s of waveform chunks and statuses.
    assert!(stats.device_outputs >= 50, "{}", stats.device_outputs);
}

#[tokio::test]
async fn bad_configurations_fail_before_dialling() {
    let mut c = config("http://127.0.0.1:9");
    c.room = None;
    assert!(matches!(
        dial::run(c, std::future::pending()).await,
        Err(DialError::InvalidConfig(_))
    ));
    let mut c = config("http://127.0.0.1:9");
    c.media.microphone = Input::Off;
    assert!(matches!(
        dial::run(c, std::future::pending()).await,
        Err(DialError::InvalidConfig(_))
    ));
    let mut c = config("http://127.0.0.1:9");
    c.media.room_camera = Input::File("/nonexistent/camera.ivf".into());
    assert!(matches!(
        dial::run(c, std::future::pending()).await,
        Err(DialError::Source(_))
    ));
    let mut c = config("ftp://127.0.0.1:9");
    c.room = Some("r".into());
    assert!(matches!(
        dial::run(c, std::future::pending()).await,
        Err(DialError::InvalidConfig(_))
    ));
}
