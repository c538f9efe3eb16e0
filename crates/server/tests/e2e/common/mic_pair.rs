//! A kiosk's microphone to a doctor through the real server with given client options: the
//! exchange the TURN and ICE-TCP tests share (what differs is how the clients reach the server
//! and which transport the server must report).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Publisher, Subscriber, TrackSpec};

/// Payloads that must arrive in a row.
const IN_A_ROW: usize = 50;
/// Payloads the kiosk sends at most (10 ms apart).
const SENT: usize = 600;

/// A kiosk publishes a microphone over WHIP on `base` in `room` (token `kiosk`), `check` looks
/// at the publisher (its offer, say), a doctor subscribes over WHEP (token `doctor`), both with
/// `opts`; 50 consecutive payloads must arrive intact, then `/api/rooms` (operator token `ops`)
/// is polled until both sessions' `transport` satisfies `expected`. Returns the transports as
/// JSON, or the step that failed.
pub async fn microphone_to_doctor(
    base: &str,
    room: &str,
    (kiosk, doctor, ops): (&str, &str, &str),
    opts: ClientOptions,
    check: impl Fn(&Publisher) -> Result<(), String>,
    expected: impl Fn(&serde_json::Value) -> bool,
) -> Result<String, String> {
    let publisher = Publisher::connect(
        &format!("{base}/whip/{room}"),
        kiosk,
        vec![TrackSpec::audio("kiosk-1", "microphone")],
        opts.clone(),
    )
    .await
    .map_err(|e| format!("publisher: {e}"))?;
    check(&publisher)?;
    let doctor = Subscriber::connect(
        &format!("{base}/whep/{room}"),
        doctor,
        ClientOptions {
            recv_video: 0,
            recv_audio: 1,
            ..opts
        },
    )
    .await
    .map_err(|e| format!("subscriber: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sending = Arc::clone(&stop);
    let sender = tokio::spawn(async move {
        for i in 0..SENT {
            let track = &publisher.tracks()[0];
            if sending.load(Ordering::Relaxed)
                || track
                    .write_rtp(&super::payload(1, i), true, 480)
                    .await
                    .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let received = receive_in_a_row(&doctor).await;
    let reported = match &received {
        Ok(_) => transports(base, room, ops, &expected).await,
        Err(_) => Ok(String::new()),
    };
    stop.store(true, Ordering::Relaxed);
    let publisher = sender.await.map_err(|e| e.to_string())?;
    let _ = doctor.close().await;
    let _ = publisher.close().await;
    let got = received?;
    let first = (0..SENT)
        .position(|i| super::payload(1, i) == got[0])
        .ok_or("a payload that was not sent")?;
    let expected_payloads: Vec<Vec<u8>> = (first..first + IN_A_ROW)
        .map(|i| super::payload(1, i))
        .collect();
    if got != expected_payloads {
        return Err("the payloads that arrived differ from those sent".into());
    }
    reported
}

/// The doctor's first `IN_A_ROW` payloads.
async fn receive_in_a_row(doctor: &Subscriber) -> Result<Vec<Vec<u8>>, String> {
    let track = doctor
        .next_track(Duration::from_secs(10))
        .await
        .map_err(|e| format!("the doctor gets no microphone track: {e}"))?;
    let mut got = Vec::new();
    while got.len() < IN_A_ROW {
        let p = track
            .read_rtp_timeout(Duration::from_secs(5))
            .await
            .map_err(|e| format!("media stopped after {} packets: {e}", got.len()))?;
        got.push(p.payload.to_vec());
    }
    Ok(got)
}

/// Polls `/api/rooms` until `room` has two sessions whose transport satisfies `expected` (the
/// engine reports the selected pair about once a second); their transports, or the last seen.
async fn transports(
    base: &str,
    room: &str,
    ops: &str,
    expected: &impl Fn(&serde_json::Value) -> bool,
) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::Client::new()
            .get(format!("{base}/api/rooms"))
            .bearer_auth(ops)
            .send()
            .await
        {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            seen = v["rooms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["room"] == room)
                .flat_map(|r| r["sessions"].as_array().into_iter().flatten())
                .map(|s| s["transport"].clone())
                .collect();
            if seen.len() == 2 && seen.iter().all(expected) {
                return Ok(serde_json::Value::from(seen).to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "/api/rooms did not report both sessions' transport as expected: {}",
        serde_json::Value::from(seen)
    ))
}
