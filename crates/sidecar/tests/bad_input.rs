//! Bad input over real QUIC: each case closes only the offending stream or connection, with a
//! precise application error code, is counted, and a well-behaved kiosk in the same room keeps
//! delivering throughout.

mod common;

use std::time::Duration;

use cabine_proto::telemetry::{
    client_frame::Body, encode_frame, server_frame, ClientFrame, ErrorCode, Measurement, Value,
    MAX_FRAME_LEN,
};
use cabine_proto::{Grant, Role};
use cabine_sidecar::client::{Client, ClientError};
use cabine_sidecar::Limits;
use common::*;

const WAIT: Duration = Duration::from_secs(10);

fn meas(channel: u32, seq: u64) -> Vec<u8> {
    encode_frame(&ClientFrame {
        body: Some(Body::Measurement(Measurement {
            channel_id: channel,
            seq,
            capture_time_us: 1,
            values: vec![Value {
                value: 36.6,
                ..Default::default()
            }],
            status: 1,
        })),
    })
    .unwrap()
}

/// A raw kiosk past its hello with measurement channel 1 declared.
async fn raw_kiosk(server: &Server, sub: &str) -> (Raw, Control) {
    let raw = Raw::connect(server).await;
    let mut ctl = raw.hello(&kiosk_token(sub, "r1"), "r1").await;
    ctl.until(|f| matches!(f.body, Some(server_frame::Body::Hello(_))))
        .await;
    ctl.send(Body::Declare(measurement_channel(1))).await;
    ctl.until(|f| matches!(f.body, Some(server_frame::Body::Ack(_))))
        .await;
    (raw, ctl)
}

fn code(c: ErrorCode) -> u64 {
    c.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_hellos_close_the_connection_with_their_code() {
    let server = Server::start().await;
    let cases = [
        ("not-a-jwt".to_owned(), "r1", ErrorCode::BadToken),
        (kiosk_token("kiosk-1", "r2"), "r1", ErrorCode::WrongRoom),
        (
            token(&claims("dr-1", "r1", Role::Doctor, None)),
            "r1",
            ErrorCode::WrongRole,
        ),
        (
            token(&claims(
                "k-9",
                "r1",
                Role::Kiosk,
                Some(vec![Grant::Publish]),
            )),
            "r1",
            ErrorCode::WrongRole,
        ),
    ];
    for (t, r, expected) in cases {
        let raw = Raw::connect(&server).await;
        let _ctl = raw.hello(&t, r).await;
        assert_eq!(raw.closed_code().await, code(expected), "{expected:?}");
    }
    // An expired token, signed correctly.
    let mut expired = claims("kiosk-1", "r1", Role::Kiosk, None);
    expired.exp = 1_000;
    let raw = Raw::connect(&server).await;
    let _ctl = raw.hello(&token(&expired), "r1").await;
    assert_eq!(raw.closed_code().await, code(ErrorCode::BadToken));
    // The client library reports a refusal as final.
    let err = Client::connect(server.client_config(kiosk_token("kiosk-1", "r2"), "r1"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::WrongRoom,
                ..
            }
        ),
        "{err:?}"
    );
    let stats = server.sidecar.stats();
    assert_eq!(stats.refusals["bad_token"], 2);
    assert_eq!(stats.refusals["wrong_room"], 2);
    assert_eq!(stats.refusals["wrong_role"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_authentication_close_the_connection() {
    let server = Server::start().await;
    // A measurement stream before any hello.
    let raw = Raw::connect(&server).await;
    let _ = raw.uni(&meas(1, 1)).await;
    assert_eq!(raw.closed_code().await, code(ErrorCode::Unauthenticated));
    // A control stream whose first frame is not a hello.
    let raw = Raw::connect(&server).await;
    let (mut send, _recv) = raw.conn.open_bi().await.unwrap();
    let decl = encode_frame(&ClientFrame {
        body: Some(Body::Declare(measurement_channel(1))),
    })
    .unwrap();
    send.write_all(&decl).await.unwrap();
    assert_eq!(raw.closed_code().await, code(ErrorCode::Unauthenticated));
    // A datagram before the hello.
    let raw = Raw::connect(&server).await;
    raw.conn.send_datagram(vec![0u8; 10].into()).unwrap();
    assert_eq!(raw.closed_code().await, code(ErrorCode::Unauthenticated));
    assert_eq!(server.sidecar.stats().refusals["unauthenticated"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_time_out() {
    let server = Server::start_with(|c| {
        let mut limits = Limits::default();
        limits.hello_timeout = Duration::from_millis(300);
        c.limits = limits;
    })
    .await;
    let raw = Raw::connect(&server).await;
    assert_eq!(raw.closed_code().await, code(ErrorCode::HelloTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_stopped_alone_and_other_kiosks_are_unaffected() {
    let mut server = Server::start().await;
    let good = Client::connect(server.client_config(kiosk_token("kiosk-good", "r1"), "r1"))
        .await
        .unwrap();
    good.declare(measurement_channel(1)).unwrap();
    good.wait_ready(1, WAIT).await.unwrap();
    let (bad, _ctl) = raw_kiosk(&server, "kiosk-bad").await;
    let good_sends = |n: usize| {
        for _ in 0..n {
            good.send_measurement(Measurement {
                channel_id: 1,
                capture_time_us: good.clock().now_us(),
                values: vec![Value {
                    value: 97.0,
                    ..Default::default()
                }],
                status: 1,
                ..Default::default()
            })
            .unwrap();
        }
    };
    good_sends(10);
    // Malformed frame (a length then garbage).
    assert_eq!(
        bad.uni(&[6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).await,
        Some(code(ErrorCode::MalformedFrame))
    );
    good_sends(10);
    // Oversized length prefix.
    let mut big = Vec::new();
    prost::encoding::encode_varint(MAX_FRAME_LEN as u64 + 1, &mut big);
    assert_eq!(bad.uni(&big).await, Some(code(ErrorCode::FrameTooLarge)));
    // A channel never declared.
    assert_eq!(
        bad.uni(&meas(99, 1)).await,
        Some(code(ErrorCode::UnknownChannel))
    );
    // A pong where only measurements go.
    let hello_on_uni = encode_frame(&ClientFrame {
        body: Some(Body::Pong(Default::default())),
    })
    .unwrap();
    assert_eq!(
        bad.uni(&hello_on_uni).await,
        Some(code(ErrorCode::UnexpectedFrame))
    );
    good_sends(10);
    // The bad kiosk's connection is still up: a valid measurement goes through.
    assert_eq!(bad.uni_with(&meas(1, 1), true).await, None);
    let item = server
        .next_matching(WAIT, |i| {
            i.delivered.source == "kiosk-bad" && is_measurement(&i.delivered).is_some()
        })
        .await;
    assert!(item.is_some());
    // (A second bidirectional stream cannot even be opened: the server grants one.)
    assert!(bad.conn.close_reason().is_none());
    // Too-large datagram: closes the bad kiosk's connection (datagrams have no stream).
    bad.conn.send_datagram(vec![0u8; 1100].into()).unwrap();
    assert_eq!(bad.closed_code().await, code(ErrorCode::DatagramTooLarge));
    good_sends(10);
    good.flush(WAIT).await.unwrap();
    let mut good_seqs = Vec::new();
    for item in server.collect_for(Duration::from_millis(300)).await {
        if item.delivered.source == "kiosk-good" {
            if let Some(seq) = is_measurement(&item.delivered) {
                good_seqs.push(seq);
            }
        }
    }
    assert_eq!(
        good_seqs,
        (1..=40).collect::<Vec<_>>(),
        "the good kiosk never noticed"
    );
    let stats = server.sidecar.stats();
    for (name, n) in [
        ("malformed_frame", 1),
        ("frame_too_large", 1),
        ("unknown_channel", 1),
        ("unexpected_frame", 1),
        ("datagram_too_large", 1),
    ] {
        assert_eq!(
            stats.refusals.get(name),
            Some(&n),
            "{name}: {:?}",
            stats.refusals
        );
    }
    assert_eq!(stats.kiosks_connected, 1);
    good.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_control_frame_closes_the_connection() {
    let server = Server::start().await;
    let (raw, mut ctl) = raw_kiosk(&server, "kiosk-1").await;
    ctl.send
        .write_all(&[4, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(raw.closed_code().await, code(ErrorCode::MalformedFrame));
    let (raw, mut ctl) = raw_kiosk(&server, "kiosk-2").await;
    ctl.send(Body::Measurement(Default::default())).await;
    assert_eq!(raw.closed_code().await, code(ErrorCode::UnexpectedFrame));
}
