//! End to end on 127.0.0.1 with real QUIC: the client library dials the sidecar, the sink gets
//! every frame.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cabine_proto::telemetry::{
    delivered, ChannelDecl, ChannelKind, CommandOutcome, CommandResult, DeviceKind, Measurement,
    Value, WaveformChunk,
};
use cabine_proto::Role;
use cabine_sidecar::client::{ClientError, KioskClock};
use cabine_sidecar::{CommandError, CommandRequest};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

fn spo2(value: f64, capture_time_us: u64) -> Measurement {
    Measurement {
        channel_id: 1,
        seq: 0,
        capture_time_us,
        values: vec![Value {
            loinc: "59408-5".into(),
            mdc_code: 150456,
            value,
            unit: "%".into(),
        }],
        status: 1,
    }
}

fn ecg(seq: u64, t: u64) -> WaveformChunk {
    WaveformChunk {
        channel_id: 2,
        seq,
        first_sample_time_us: t,
        sample_rate_hz: 500.0,
        leads: 1,
        scale: 0.005,
        offset: 0.0,
        samples: (0..10).map(|i| (i * 37 % 200) - 100).collect(),
    }
}

fn system_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_measurement_once_and_waveforms_in_order_with_gaps_counted() {
    let mut server = Server::start().await;
    let kiosk = client(
        &server,
        server.client_config(kiosk_token("kiosk-1", "r1"), "r1"),
    )
    .await;
    kiosk.declare(measurement_channel(1)).unwrap();
    kiosk.declare(waveform_channel(2)).unwrap();
    kiosk.wait_ready(1, WAIT).await.unwrap();
    kiosk.wait_ready(2, WAIT).await.unwrap();
    for i in 0..200 {
        kiosk
            .send_measurement(spo2(90.0 + (i % 10) as f64, kiosk.clock().now_us()))
            .unwrap();
    }
    // 100 chunks of 20 ms, with seqs 30 and 60 never sent.
    for seq in (1..=100u64).filter(|s| *s != 30 && *s != 60) {
        kiosk
            .send_waveform(ecg(seq, kiosk.clock().now_us()))
            .unwrap();
        if seq % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    kiosk.flush(WAIT).await.unwrap();
    let items = server.collect_for(Duration::from_millis(500)).await;
    let mut seen = BTreeMap::new();
    let mut waves = Vec::new();
    for item in &items {
        assert_eq!(item.room.as_str(), "r1");
        assert_eq!(item.delivered.source, "kiosk-1");
        match &item.delivered.frame {
            Some(delivered::Frame::Measurement(m)) => {
                assert!(item.reliable);
                *seen.entry(m.seq).or_insert(0) += 1;
            }
            Some(delivered::Frame::Waveform(w)) => {
                assert!(!item.reliable);
                waves.push(w.seq);
            }
            _ => {}
        }
    }
    assert_eq!(seen.len(), 200, "every measurement");
    assert!(seen.values().all(|n| *n == 1), "exactly once");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    assert!(waves.windows(2).all(|w| w[0] < w[1]), "in order: {waves:?}");
    let stats = server.sidecar.stats();
    let wave = stats.channels.iter().find(|c| c.channel_id == 2).unwrap();
    let first = waves[0];
    let last = *waves.last().unwrap();
    assert_eq!(wave.frames, waves.len() as u64);
    assert_eq!(wave.gaps, (last - first + 1) - waves.len() as u64);
    assert!(wave.gaps >= 2, "the two chunks never sent are gaps");
    let m = stats.channels.iter().find(|c| c.channel_id == 1).unwrap();
    assert_eq!((m.frames, m.duplicates), (200, 0));
    assert!(m.latency_p50_us.is_some() && m.latency_p99_us.is_some());
    let json = serde_json::to_value(&stats).unwrap();
    assert!(json["channels"][0]["latency_p99_us"].is_number());
    assert_eq!(kiosk.stats().measurements_unacked, 0);
    kiosk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aligned_times_match_the_server_clock_despite_a_kiosk_clock_offset() {
    let mut server = Server::start().await;
    for offset_s in [5i64, -4] {
        let sub = format!("kiosk-off{}", offset_s + 10);
        let mut cfg = server.client_config(kiosk_token(&sub, "r1"), "r1");
        cfg.clock = KioskClock::offset(offset_s * 1_000_000);
        let kiosk = client(&server, cfg).await;
        kiosk.declare(measurement_channel(1)).unwrap();
        kiosk.declare(waveform_channel(2)).unwrap();
        kiosk.wait_ready(2, WAIT).await.unwrap();
        // Wait for the first ping burst to be answered and the server's estimate that
        // follows it to arrive.
        let burst = u64::from(cabine_sidecar::Limits::default().ping_burst);
        let deadline = std::time::Instant::now() + WAIT;
        let est = loop {
            let answered = kiosk.stats().pings_answered;
            match kiosk.clock_estimate() {
                Some(est) if answered >= burst && est.error_us < 5_000 => break est,
                _ => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no estimate after the ping burst ({answered} pings answered)"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        assert!(
            (est.offset_us - offset_s * 1_000_000).abs() < 5_000,
            "estimated offset {} for {offset_s} s",
            est.offset_us
        );
        let mut sent_at = BTreeMap::new();
        let mut wave_sent_at = BTreeMap::new();
        for i in 0..20u64 {
            let server_clock = system_us();
            let seq = kiosk
                .send_measurement(spo2(97.0, kiosk.clock().now_us()))
                .unwrap();
            sent_at.insert(seq, server_clock);
            let server_clock = system_us();
            let wseq = kiosk
                .send_waveform(ecg(i + 1, kiosk.clock().now_us()))
                .unwrap();
            wave_sent_at.insert(wseq, server_clock);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kiosk.flush(WAIT).await.unwrap();
        let mut checked = 0;
        for item in server.collect_for(Duration::from_millis(300)).await {
            if item.delivered.source != sub {
                continue;
            }
            let d = &item.delivered;
            match &d.frame {
                Some(delivered::Frame::Measurement(m)) => {
                    let truth = sent_at[&m.seq] as i64;
                    let err = d.aligned_time_us as i64 - truth;
                    assert!(err.abs() < 5_000, "aligned time off by {err} µs");
                    assert!(
                        (d.capture_time_us as i64
                            - d.aligned_time_us as i64
                            - offset_s * 1_000_000)
                            .abs()
                            < 5_000
                    );
                    assert!(d.clock_error_us < 5_000, "error bound {}", d.clock_error_us);
                    checked += 1;
                }
                Some(delivered::Frame::Waveform(w)) => {
                    let err = d.aligned_time_us as i64 - wave_sent_at[&w.seq] as i64;
                    assert!(err.abs() < 5_000, "waveform aligned time off by {err} µs");
                }
                _ => {}
            }
        }
        assert_eq!(checked, 20);
        kiosk.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_connection_resends_unacked_measurements_without_duplicates() {
    let mut server = Server::start().await;
    let kiosk = client(
        &server,
        server.client_config(kiosk_token("kiosk-1", "r1"), "r1"),
    )
    .await;
    kiosk.declare(measurement_channel(1)).unwrap();
    kiosk.wait_ready(1, WAIT).await.unwrap();
    // Three bursts of 200; the connection is killed in the middle of the first two, while
    // measurements are in flight (written, maybe delivered, not yet acknowledged).
    let total = 600u64;
    let mut in_flight_at_kill = 0;
    for burst in 0..3 {
        kiosk.wait_connected(WAIT).await.unwrap();
        for _ in 0..200 {
            kiosk
                .send_measurement(spo2(95.0, kiosk.clock().now_us()))
                .unwrap();
        }
        if burst < 2 {
            // Kill once part of the burst is written but not all of it is acknowledged.
            let written = kiosk.stats().measurements_sent;
            let deadline = std::time::Instant::now() + WAIT;
            while kiosk.stats().measurements_sent < written + 20
                && std::time::Instant::now() < deadline
            {
                tokio::task::yield_now().await;
            }
            in_flight_at_kill += kiosk.stats().measurements_unacked;
            kiosk.drop_connection();
        }
    }
    kiosk.flush(Duration::from_secs(20)).await.unwrap();
    let mut counts = BTreeMap::new();
    for item in server.collect_for(Duration::from_millis(500)).await {
        if let Some(seq) = is_measurement(&item.delivered) {
            *counts.entry(seq).or_insert(0u32) += 1;
        }
    }
    let missing: Vec<u64> = (1..=total).filter(|s| !counts.contains_key(s)).collect();
    let dups: Vec<(&u64, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "missing {missing:?}");
    assert!(dups.is_empty(), "duplicates {dups:?}");
    let st = kiosk.stats();
    assert_eq!(st.sessions, 3, "reconnected twice: {st:?}");
    let server_stats = server.sidecar.stats();
    assert_eq!(server_stats.channels[0].frames, total);
    eprintln!(
        "{in_flight_at_kill} unacked at the kills, {} resent, {} duplicates dropped by the server",
        st.measurements_resent, server_stats.channels[0].duplicates
    );
    kiosk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_round_trip_and_need_the_commands_grant() {
    let mut server = Server::start().await;
    let kiosk = client(
        &server,
        server.client_config(kiosk_token("kiosk-1", "r1"), "r1"),
    )
    .await;
    kiosk
        .declare(ChannelDecl {
            channel_id: 4,
            kind: ChannelKind::Command as i32,
            device_kind: DeviceKind::BpCuff as i32,
            commands: vec!["start_measurement".into()],
            ..Default::default()
        })
        .unwrap();
    kiosk.wait_ready(4, WAIT).await.unwrap();
    let r1 = room("r1");
    let request = CommandRequest {
        kiosk: None,
        channel_id: 4,
        name: "start_measurement".into(),
        params: Default::default(),
    };
    let kiosk_claims = claims("kiosk-2", "r1", Role::Kiosk, None);
    assert_eq!(
        server
            .sidecar
            .send_command(&r1, &kiosk_claims, request.clone()),
        Err(CommandError::NotAllowed { role: Role::Kiosk })
    );
    let observer = claims("obs-1", "r1", Role::Observer, None);
    assert!(matches!(
        server.sidecar.send_command(&r1, &observer, request.clone()),
        Err(CommandError::NotAllowed { .. })
    ));
    let doctor = claims("dr-1", "r1", Role::Doctor, None);
    let id = server.sidecar.send_command(&r1, &doctor, request).unwrap();
    let cmd = tokio::time::timeout(WAIT, kiosk.next_command())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cmd.command_id, cmd.channel_id, cmd.name.as_str()),
        (id, 4, "start_measurement")
    );
    kiosk
        .send_command_result(CommandResult {
            command_id: id,
            channel_id: 4,
            outcome: CommandOutcome::Completed as i32,
            detail: String::new(),
            kiosk_time_us: kiosk.clock().now_us(),
        })
        .unwrap();
    let item = server
        .next_matching(WAIT, |i| {
            matches!(i.delivered.frame, Some(delivered::Frame::CommandResult(_)))
        })
        .await
        .unwrap();
    let Some(delivered::Frame::CommandResult(r)) = item.delivered.frame else {
        unreachable!()
    };
    assert_eq!(r.command_id, id);
    assert!(item.reliable);
    assert_eq!(kiosk.stats().commands_received, 1);
    let stats = server.sidecar.stats();
    assert_eq!((stats.commands_sent, stats.commands_refused), (1, 2));
    kiosk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_arrive_chunked_and_whole() {
    let mut server = Server::start().await;
    let kiosk = client(
        &server,
        server.client_config(kiosk_token("kiosk-1", "r1"), "r1"),
    )
    .await;
    kiosk
        .declare(ChannelDecl {
            channel_id: 5,
            kind: ChannelKind::Blob as i32,
            device_kind: DeviceKind::Otoscope as i32,
            ..Default::default()
        })
        .unwrap();
    kiosk.wait_ready(5, WAIT).await.unwrap();
    let image: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let id = kiosk
        .upload_blob(5, "image/jpeg", kiosk.clock().now_us(), &image)
        .await
        .unwrap();
    let mut got = Vec::new();
    loop {
        let item = server
            .next_matching(WAIT, |i| {
                matches!(i.delivered.frame, Some(delivered::Frame::Blob(_)))
            })
            .await
            .unwrap();
        let Some(delivered::Frame::Blob(b)) = item.delivered.frame else {
            unreachable!()
        };
        assert_eq!(b.blob_id, id);
        got.extend_from_slice(&b.data);
        if b.last {
            break;
        }
    }
    assert_eq!(got, image);
    // Wrong kind is refused locally.
    assert_eq!(
        kiosk.upload_blob(1, "image/jpeg", 0, &image).await,
        Err(ClientError::UnknownChannel(1))
    );
    kiosk.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_frames_serialise_to_json_for_the_browser() {
    let mut server = Server::start().await;
    let kiosk = client(
        &server,
        server.client_config(kiosk_token("kiosk-1", "r1"), "r1"),
    )
    .await;
    kiosk.declare(measurement_channel(1)).unwrap();
    kiosk.wait_ready(1, WAIT).await.unwrap();
    kiosk
        .send_measurement(spo2(98.0, kiosk.clock().now_us()))
        .unwrap();
    let item = server
        .next_matching(WAIT, |i| is_measurement(&i.delivered).is_some())
        .await
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&cabine_proto::telemetry::to_json(&item.delivered)).unwrap();
    assert_eq!(json["source"], "kiosk-1");
    assert_eq!(json["frame"]["measurement"]["values"][0]["value"], 98.0);
    assert_eq!(json["frame"]["measurement"]["status"], "valid");
    assert!(json["aligned_time_us"].as_u64().unwrap() > 1_600_000_000_000_000);
    let channels = server.sidecar.channels(&room("r1"));
    assert_eq!(channels.len(), 1);
    let json = cabine_proto::telemetry::to_json(&channels[0]);
    assert!(json.contains(r#""kind":"measurement""#), "{json}");
    assert!(json.contains(r#""device_kind":"pulse_oximeter""#), "{json}");
    kiosk.close().await;
}
