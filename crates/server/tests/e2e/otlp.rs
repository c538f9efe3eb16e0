//! OpenTelemetry push: an in-process OTLP/HTTP receiver gets the server's metrics and the
//! trace of a join (session → ice → dtls → first_media), and no span names a room.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::payload;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use cabine_client::{ClientOptions, Codec, MediaKind, Publisher, TrackSpec};
use cabine_proto::Role;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A received span: name, parent span id (hex), attributes, its own span id (hex).
type SpanSeen = (String, String, Vec<(String, String)>, String);

#[derive(Default)]
struct Received {
    spans: Vec<SpanSeen>,
    metrics: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

async fn traces(State(r): State<Shared>, body: Bytes) -> &'static str {
    let req = ExportTraceServiceRequest::decode(body).expect("valid OTLP trace protobuf");
    let mut r = r.lock().unwrap();
    for rs in req.resource_spans {
        for ss in rs.scope_spans {
            for span in ss.spans {
                let attrs = span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), format!("{:?}", kv.value)))
                    .collect();
                r.spans.push((
                    span.name,
                    hex(&span.parent_span_id),
                    attrs,
                    hex(&span.span_id),
                ));
            }
        }
    }
    ""
}

async fn metrics(State(r): State<Shared>, body: Bytes) -> &'static str {
    let req = ExportMetricsServiceRequest::decode(body).expect("valid OTLP metrics protobuf");
    let mut r = r.lock().unwrap();
    for rm in req.resource_metrics {
        for sm in rm.scope_metrics {
            for m in sm.metrics {
                r.metrics.push(m.name);
            }
        }
    }
    ""
}

/// Whether some published track of the view has counted packets.
fn received_media(v: &serde_json::Value) -> bool {
    v["rooms"].as_array().into_iter().flatten().any(|r| {
        r["sessions"].as_array().into_iter().flatten().any(|s| {
            s["published"].as_array().into_iter().flatten().any(|p| {
                p["layers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|l| l["packets"].as_u64().unwrap_or(0) > 0)
            })
        })
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_join_trace_reach_an_otlp_receiver() {
    let received: Shared = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let otel_cfg = cabine_server::otel::OtelConfig {
        endpoint: format!("http://{collector}"),
        interval: Duration::from_secs(60),
        service_name: "cabine-test".into(),
    };
    let otel = cabine_server::otel::Otel::init(&otel_cfg)
        .unwrap()
        .expect("configured");
    tracing_subscriber::registry().with(otel.layer()).init();

    let s = common::start_with(|c| c.otel = otel_cfg.clone()).await;
    let room = "room-confidential";
    let publisher = Publisher::connect(
        &format!("{}/whip/{room}", s.base),
        &s.token(room, Role::Kiosk, "kiosk-otel"),
        vec![TrackSpec::video("kiosk", "room-camera", Codec::Vp8)],
        ClientOptions::loopback(),
    )
    .await
    .unwrap();
    // Media until the room has seen some (the session's setup spans are then all closed).
    let mut i = 0;
    loop {
        let t = &publisher.tracks()[0];
        assert_eq!(t.kind(), MediaKind::Video);
        t.write_rtp(&payload(0, i), true, 3000).await.unwrap();
        i += 1;
        let v = s.rooms().await;
        if received_media(&v) {
            break;
        }
        assert!(i < 1000, "the room never counted the kiosk's packets: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publisher.close().await.unwrap();
    s.rooms_until("the kiosk left", Duration::from_secs(10), |v| {
        v["rooms"].as_array().is_some_and(|rooms| {
            rooms
                .iter()
                .all(|r| r["sessions"].as_array().is_none_or(|s| s.is_empty()))
        })
    })
    .await;

    s.server.flush_metrics().await;
    tokio::task::spawn_blocking(move || otel.flush())
        .await
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let r = received.lock().unwrap();
            let names: Vec<&str> = r.spans.iter().map(|s| s.0.as_str()).collect();
            let complete = ["session", "ice", "dtls", "first_media", "http"]
                .iter()
                .all(|n| names.contains(n));
            if complete && r.metrics.iter().any(|m| m == "cabine.rtp.packets") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "OTLP receiver got spans {names:?} and metrics {:?}",
                r.metrics
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = received.lock().unwrap();
    // The process's other tests export their spans here too: this test's session is the
    // kiosk's.
    let kiosk_sessions: Vec<&str> = r
        .spans
        .iter()
        .filter(|s| s.0 == "session" && s.2.iter().any(|(k, v)| k == "role" && v.contains("kiosk")))
        .map(|s| s.3.as_str())
        .collect();
    assert!(!kiosk_sessions.is_empty(), "no kiosk session span");
    // Each setup stage of a kiosk's session is a child of that session's span (other tests'
    // sessions export here too, in any order).
    for stage in ["ice", "dtls", "first_media"] {
        assert!(
            r.spans
                .iter()
                .any(|s| s.0 == stage && kiosk_sessions.contains(&s.1.as_str())),
            "no {stage} span under a kiosk's session span: {:?}",
            r.spans
                .iter()
                .filter(|s| s.0 == stage)
                .map(|s| &s.1)
                .collect::<Vec<_>>()
        );
    }
    for m in [
        "cabine.rooms",
        "cabine.participants",
        "cabine.udp.datagrams",
    ] {
        assert!(
            r.metrics.iter().any(|x| x == m),
            "{m} missing from {:?}",
            r.metrics
        );
    }
    let everything = format!("{:?}", r.spans);
    assert!(
        !everything.contains("confidential"),
        "a span leaks the room name: {everything}"
    );
    assert!(
        !everything.contains("kiosk-otel"),
        "a span leaks an identity"
    );
}
