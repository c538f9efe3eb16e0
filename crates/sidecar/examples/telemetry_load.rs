//! Telemetry latency and jitter under load: many kiosks × 5 channels over real QUIC on
//! loopback, into one sidecar. Not a test: it measures and prints.
//!
//! ```text
//! cargo run --release -p cabine-sidecar --example telemetry_load -- --kiosks 100 --seconds 30
//! ```
//!
//! Each kiosk (its own [`Client`], its own QUIC connection) declares five channels like a cabin:
//! pulse oximeter readings (1 Hz), thermometer (every 2 s), blood pressure (every 5 s), a 3-lead
//! ECG at 500 Hz and a pleth at 75 Hz, both in 40 ms chunks as datagrams. Frames are stamped with
//! the capture time; the sink records, for every frame delivered, the delay from capture to
//! delivery (one clock: same process) and an RFC 3550 style jitter per channel (the variation of
//! that delay). The first two seconds are a warm-up and are not counted.
//!
//! Output: a table on stdout and JSON in `target/bench/telemetry_load.json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cabine_proto::telemetry::{
    delivered, ChannelDecl, ChannelKind, Delivered, DeviceKind, Measurement, Value, WaveformChunk,
};
use cabine_proto::{Claims, Identity, Role, RoomId};
use cabine_sidecar::client::{Client, ClientConfig};
use cabine_sidecar::tls::ServerVerification;
use cabine_sidecar::{Sidecar, SidecarConfig, StaticTokens};

const WARMUP: Duration = Duration::from_secs(2);

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the sink saw for one channel of one kiosk.
#[derive(Default)]
struct ChannelRecord {
    kind: &'static str,
    delays_us: Vec<u64>,
    last_delay: Option<i64>,
    jitter_us: f64,
    max_seq: u64,
    frames: u64,
}

#[derive(Default)]
struct Recorder {
    channels: HashMap<(String, u32), ChannelRecord>,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// CPU time of this process (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields after the command: state is 0, utime is 11, stime is 12; 100 ticks per second.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn decls() -> Vec<ChannelDecl> {
    let m = |id, device: DeviceKind, loinc: &str, mdc, unit: &str| ChannelDecl {
        channel_id: id,
        kind: ChannelKind::Measurement as i32,
        device_kind: device as i32,
        loinc: loinc.into(),
        mdc_code: mdc,
        unit: unit.into(),
        ..Default::default()
    };
    vec![
        m(1, DeviceKind::PulseOximeter, "59408-5", 150_456, "%"),
        m(2, DeviceKind::Thermometer, "8310-5", 150_364, "Cel"),
        m(3, DeviceKind::BpCuff, "8480-6", 150_021, "mm[Hg]"),
        ChannelDecl {
            channel_id: 4,
            kind: ChannelKind::Waveform as i32,
            device_kind: DeviceKind::Ecg as i32,
            mdc_code: 131_330,
            unit: "mV".into(),
            sample_rate_hz: 500.0,
            leads: vec!["I".into(), "II".into(), "III".into()],
            ..Default::default()
        },
        ChannelDecl {
            channel_id: 5,
            kind: ChannelKind::Waveform as i32,
            device_kind: DeviceKind::PulseOximeter as i32,
            mdc_code: 150_452,
            unit: "1".into(),
            sample_rate_hz: 75.0,
            leads: vec!["PLETH".into()],
            ..Default::default()
        },
    ]
}

async fn kiosk(client: Client, stop: Instant, phase: Duration) -> (u64, u64) {
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut measurements, mut chunks) = (0u64, 0u64);
    let mut n = 0u64;
    let value = |loinc: &str, mdc, v, unit: &str| Value {
        loinc: loinc.into(),
        mdc_code: mdc,
        value: v,
        unit: unit.into(),
    };
    while Instant::now() < stop {
        tick.tick().await;
        let now = client.clock().now_us();
        let ecg: Vec<i32> = (0..60).map(|i| ((n * 60 + i) % 400) as i32 - 200).collect();
        let pleth: Vec<i32> = (0..3).map(|i| ((n * 3 + i) % 100) as i32).collect();
        for (channel_id, rate, leads, samples) in [(4, 500.0, 3, ecg), (5, 75.0, 1, pleth)] {
            let c = WaveformChunk {
                channel_id,
                first_sample_time_us: now,
                sample_rate_hz: rate,
                leads,
                scale: 0.005,
                samples,
                ..Default::default()
            };
            if client.send_waveform(c).is_ok() {
                chunks += 1;
            }
        }
        let mut meas = |channel_id, v: Value| {
            let m = Measurement {
                channel_id,
                capture_time_us: now,
                values: vec![v],
                status: 1,
                ..Default::default()
            };
            if client.send_measurement(m).is_ok() {
                measurements += 1;
            }
        };
        if n.is_multiple_of(25) {
            meas(1, value("59408-5", 150_456, 97.0, "%"));
        }
        if n.is_multiple_of(50) {
            meas(2, value("8310-5", 150_364, 36.8, "Cel"));
        }
        if n.is_multiple_of(125) {
            meas(3, value("8480-6", 150_021, 121.0, "mm[Hg]"));
        }
        n += 1;
    }
    let _ = client.flush(Duration::from_secs(2)).await;
    client.close().await;
    (measurements, chunks)
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kiosks = arg("--kiosks", 100) as usize;
    let seconds = arg("--seconds", 30);

    let exp = unix_us() / 1_000_000 + 3600;
    let mut tokens = StaticTokens::new();
    for i in 0..kiosks {
        tokens = tokens.with(
            format!("token-{i}"),
            Claims {
                sub: Identity::parse(&format!("kiosk-{i}")).expect("identity"),
                name: None,
                room: format!("room-{i}"),
                role: Role::Kiosk,
                exp,
                nbf: None,
                grants: None,
            },
        );
    }
    let start = Instant::now();
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let sink = {
        let recorder = Arc::clone(&recorder);
        move |_room: &RoomId, d: Delivered, _reliable: bool| {
            let (kind, seq) = match &d.frame {
                Some(delivered::Frame::Measurement(m)) => ("measurement", m.seq),
                Some(delivered::Frame::Waveform(w)) => ("waveform", w.seq),
                _ => return,
            };
            if start.elapsed() < WARMUP || d.aligned_time_us == 0 {
                return;
            }
            let delay = unix_us() as i64 - d.aligned_time_us as i64;
            let mut r = recorder.lock().unwrap_or_else(|p| p.into_inner());
            let c = r
                .channels
                .entry((d.source.clone(), d.channel_id))
                .or_default();
            c.kind = kind;
            c.frames += 1;
            c.max_seq = c.max_seq.max(seq);
            c.delays_us.push(delay.max(0) as u64);
            if let Some(last) = c.last_delay {
                let dd = (delay - last).abs() as f64;
                c.jitter_us += (dd - c.jitter_us) / 16.0;
            }
            c.last_delay = Some(delay);
        }
    };
    let sidecar = Sidecar::start(
        SidecarConfig::new("127.0.0.1:0".parse().expect("address")),
        Arc::new(tokens),
        Arc::new(sink),
    )
    .await
    .expect("sidecar starts");
    let addr = sidecar.local_addr();
    let cert = sidecar.certificate().clone();

    let mut clients = Vec::new();
    for i in 0..kiosks {
        let cfg = ClientConfig::new(
            addr,
            format!("token-{i}"),
            RoomId::parse(&format!("room-{i}")).expect("room"),
            ServerVerification::Pinned(cert.clone()),
        );
        let client = Client::connect(cfg).await.expect("kiosk connects");
        for d in decls() {
            client.declare(d).expect("declaration");
        }
        for ch in 1..=5 {
            client
                .wait_ready(ch, Duration::from_secs(10))
                .await
                .expect("channel ready");
        }
        clients.push(client);
    }
    eprintln!("{kiosks} kiosks connected, 5 channels each; running {seconds} s");
    let cpu0 = cpu_time();
    let run_start = Instant::now();
    let stop = run_start + WARMUP + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let phase = Duration::from_micros((i as u64 * 40_000) / kiosks.max(1) as u64);
        tasks.push(tokio::spawn(kiosk(c, stop, phase)));
    }
    let (mut sent_m, mut sent_w) = (0, 0);
    for t in tasks {
        let (m, w) = t.await.expect("kiosk task");
        sent_m += m;
        sent_w += w;
    }
    let cpu = cpu_time().saturating_sub(cpu0);
    let wall = run_start.elapsed();
    let stats = sidecar.stats();
    sidecar.shutdown().await;

    let r = recorder.lock().unwrap_or_else(|p| p.into_inner());
    let mut report = serde_json::Map::new();
    println!(
        "telemetry load: {kiosks} kiosks x 5 channels, {seconds} s measured, loopback QUIC, one process"
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12} {:>12}",
        "kind", "frames", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "jitter µs", "jitter p99"
    );
    for kind in ["measurement", "waveform"] {
        let mut delays: Vec<u64> = r
            .channels
            .values()
            .filter(|c| c.kind == kind)
            .flat_map(|c| c.delays_us.iter().copied())
            .collect();
        delays.sort_unstable();
        let mut jitters: Vec<u64> = r
            .channels
            .values()
            .filter(|c| c.kind == kind)
            .map(|c| c.jitter_us.round() as u64)
            .collect();
        jitters.sort_unstable();
        let mean_jitter = jitters.iter().sum::<u64>() as f64 / jitters.len().max(1) as f64;
        let frames: u64 = r
            .channels
            .values()
            .filter(|c| c.kind == kind)
            .map(|c| c.frames)
            .sum();
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>12.0} {:>12}",
            kind,
            frames,
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            percentile(&delays, 0.999),
            delays.last().copied().unwrap_or(0),
            mean_jitter,
            percentile(&jitters, 0.99),
        );
        report.insert(
            kind.into(),
            serde_json::json!({
                "frames_delivered": frames,
                "channels": jitters.len(),
                "latency_us": {
                    "p50": percentile(&delays, 0.5),
                    "p99": percentile(&delays, 0.99),
                    "p999": percentile(&delays, 0.999),
                    "max": delays.last().copied().unwrap_or(0),
                },
                "jitter_us": { "mean": mean_jitter, "p99_of_channels": percentile(&jitters, 0.99) },
            }),
        );
    }
    let frames_per_s = (sent_m + sent_w) as f64 / wall.as_secs_f64();
    let cpu_share = cpu.as_secs_f64() / wall.as_secs_f64();
    println!(
        "sent: {sent_m} measurements, {sent_w} waveform chunks ({frames_per_s:.0} frames/s); \
         gaps counted by the server: {}; duplicates: {}; process CPU {:.0} % of one core \
         (kiosks and server together)",
        stats.channels.iter().map(|c| c.gaps).sum::<u64>(),
        stats.channels.iter().map(|c| c.duplicates).sum::<u64>(),
        cpu_share * 100.0
    );
    report.insert(
        "run".into(),
        serde_json::json!({
            "kiosks": kiosks,
            "channels_per_kiosk": 5,
            "seconds": seconds,
            "measurements_sent": sent_m,
            "waveform_chunks_sent": sent_w,
            "frames_per_second": frames_per_s,
            "gaps": stats.channels.iter().map(|c| c.gaps).sum::<u64>(),
            "duplicates": stats.channels.iter().map(|c| c.duplicates).sum::<u64>(),
            "process_cpu_share_of_one_core": cpu_share,
        }),
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("telemetry_load.json");
    if std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .is_ok()
    {
        println!("JSON: {}", path.display());
    }
}
