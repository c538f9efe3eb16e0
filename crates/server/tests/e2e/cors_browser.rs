//! A page on another origin publishes and plays: Debian's chromium opens a page served from a
//! second loopback port (a tiny static server in this test), which publishes its fake camera
//! and microphone to Cabine over WHIP and plays them over WHEP with cross-origin `fetch()`
//! calls (`http.cors_origins`, bearer tokens, no credentials), reading `Location`, `ETag` and
//! the `Link: rel="ice-server"` headers, and ends both sessions with cross-origin DELETEs.
//! Driven by `tests/browser/cross_origin.mjs`.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser` (`.ci/run` installs
//! them); missing prerequisites fail the test.

use std::time::Duration;

use crate::common;
use crate::common::browser::{check_prerequisites, mint, run_driver, SERIAL};
use crate::conformance::ice_links;
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;
use cabine_server::{Config, Server};

const SECRET: &str = "cors-browser-secret-0123456789abcdef0123";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);
const ICE: [&str; 1] = ["stun:stun.example.net:3478"];
/// The page of the other origin: nothing but a document for the driver to run in.
const PAGE: &str =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>another origin</title>\
                    </head><body><h1>A page that is not Cabine's</h1></body></html>";

#[tokio::test(flavor = "multi_thread")]
async fn chromium_on_another_origin_publishes_over_whip_and_plays_over_whep() {
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;

    // The other origin: a static page on a second loopback port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    let page_server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.auth.secret = SECRET.into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    cfg.http.cors_origins = vec![page_origin.clone()];
    cfg.ice.servers = ICE.iter().map(|s| s.to_string()).collect();
    let server = Server::start(cfg).await.expect("server starts");
    let base = format!("http://{}", server.http_addr());
    assert_ne!(base, page_origin);
    let tokens = Tokens::new(SECRET.as_bytes());
    let room = "cross-origin-1";
    let envs = [
        ("CABINE_URL", base.clone()),
        ("PAGE_URL", format!("{page_origin}/")),
        ("ROOM", room.to_owned()),
        ("PUBLISH_TOKEN", mint(&tokens, room, Role::Kiosk, "kiosk-1")),
        ("WATCH_TOKEN", mint(&tokens, room, Role::Doctor, "dr-1")),
    ];
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&d, "cross_origin.mjs", &envs, DRIVER_TIMEOUT)
    })
    .await
    .expect("driver thread");
    server.shutdown(Duration::from_secs(1)).await;
    page_server.abort();

    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the cross-origin browser test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr
    );
    let result: serde_json::Value = serde_json::from_str(
        out.stdout
            .lines()
            .last()
            .expect("the driver prints its result"),
    )
    .expect("the result line is JSON");
    let checks = &result["checks"];
    assert_eq!(checks["page_origin"], page_origin.as_str());
    // The page read the Link headers across origins: the configured ICE servers.
    for kind in ["publish", "watch"] {
        let link = checks[kind]["link"]
            .as_str()
            .unwrap_or_else(|| panic!("{kind}: the page could not read Link: {checks}"));
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("link", link.parse().unwrap());
        assert_eq!(ice_links(&h), ICE, "{kind}: {link}");
        let location = checks[kind]["location"].as_str().unwrap();
        let path = if kind == "publish" { "whip" } else { "whep" };
        assert!(
            location.starts_with(&format!("/{path}/{room}/")),
            "{location}"
        );
    }
    // The WHEP answer only sends.
    let dirs = checks["watch"]["answer_direction"].as_str().unwrap();
    assert!(
        !dirs.is_empty() && dirs.split(' ').all(|d| d == "a=sendonly"),
        "{dirs}"
    );
    assert!(
        checks["media"]["video_frames"].as_u64().unwrap() > 0,
        "{checks}"
    );
    assert_eq!(checks["deleted"], serde_json::json!([200, 200]));
}
