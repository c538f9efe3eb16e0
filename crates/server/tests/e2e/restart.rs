//! Telemetry continuity across a restart of a single `cabine serve` (issue 12): the binary is
//! stopped with SIGTERM and started again on the same ports, with a new self-signed telemetry
//! certificate. `cabine-kiosk dial` (the binary) keeps running: after its failed reconnection
//! it asks `GET /api/telemetry` again, pins the new certificate and resends the measurements
//! the old node never acknowledged, and those it acknowledged last (retained: a node that
//! stops may not have handed them on). A doctor-side consumer (WHEP with the telemetry data
//! channel, reconnecting when the server goes away and asking `sync` for the recent
//! measurements) ends up with every oximeter measurement exactly once by its key (kiosk,
//! epoch, channel, seq), none missing, no reading under two keys.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Subscriber};
use cabine_proto::jwt::Tokens;
use cabine_proto::{Identity, Role};
use serde_json::Value;
use tokio::sync::watch;

use crate::common::kiosk::Kiosk;

const SECRET: &str = "restart-test-secret-0123456789abcdef";
const ROOM: &str = "consult-restart";
/// The oximeter's channel (the kiosk simulator's `ChannelId::OXIMETER`).
const OXIMETER: u64 = 1;

/// (kiosk, epoch, channel, seq).
type Key = (String, String, u64, u64);

/// What the doctor-side consumer saw.
#[derive(Default)]
struct Seen {
    /// Every measurement frame, live or from a `sync` answer, with its capture time and value.
    frames: Vec<(Key, u64, f64, bool)>,
    /// Subscriptions made (1 + reconnections).
    subscriptions: u32,
}

impl Seen {
    fn oximeter_seqs(&self) -> BTreeSet<u64> {
        self.frames
            .iter()
            .filter(|(k, ..)| k.2 == OXIMETER)
            .map(|(k, ..)| k.3)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telemetry_resumes_after_a_restart_without_losing_or_repeating_a_measurement() {
    let http = free_tcp_port();
    let media = free_tcp_port();
    let telemetry = free_udp_port();
    let base = format!("http://127.0.0.1:{http}");
    let tokens = Tokens::new(SECRET.as_bytes());
    let token = |role, who: &str| {
        tokens
            .mint(
                ROOM,
                role,
                Identity::parse(who).unwrap(),
                Duration::from_secs(600),
                None,
            )
            .unwrap()
    };

    let mut server = Serve::start(http, media, telemetry);
    server.wait_healthy(&base).await;
    let first_cert = discovery_certificate(&base, &token(Role::Kiosk, "kiosk-r")).await;

    // The kiosk: `cabine-kiosk dial`, one process all along.
    let kiosk = Kiosk::dial(&base, &token(Role::Kiosk, "kiosk-r"))
        .args(["--no-subscribe", "--oximeter-ms", "250"])
        .light_media(5, 150)
        .spawn();

    // The doctor-side consumer.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_doctor, doctor_stop) = watch::channel(false);
    let doctor = tokio::spawn(consume(
        base.clone(),
        token(Role::Doctor, "dr-r"),
        Arc::clone(&seen),
        doctor_stop,
    ));

    let before = wait_for(&seen, "8 oximeter readings before the restart", |s| {
        s.oximeter_seqs().len() >= 8
    })
    .await;

    // SIGTERM, then the same ports again: a new process, a new self-signed certificate.
    tokio::task::block_in_place(|| server.terminate());
    let mut server = Serve::start(http, media, telemetry);
    server.wait_healthy(&base).await;
    let second_cert = discovery_certificate(&base, &token(Role::Kiosk, "kiosk-r")).await;
    assert_ne!(
        first_cert, second_cert,
        "the restarted node has a new certificate"
    );

    let last_before = *before.iter().max().unwrap();
    wait_for(&seen, "10 more oximeter readings after the restart", |s| {
        s.oximeter_seqs().range(last_before + 10..).next().is_some()
    })
    .await;

    let _ = stop_doctor.send(true);
    doctor.await.expect("consumer task");
    let stats = kiosk.stop().await;
    let link = &stats["telemetry"];
    tokio::task::block_in_place(|| server.terminate());

    let seen = seen.lock().unwrap();
    // One kiosk process all along: one epoch.
    let epochs: BTreeSet<&str> = seen.frames.iter().map(|(k, ..)| k.1.as_str()).collect();
    assert_eq!(epochs.len(), 1, "epochs: {epochs:?}");
    // Each key is one reading: the same capture time and value wherever it came from.
    let mut readings: BTreeMap<&Key, (u64, f64)> = BTreeMap::new();
    let mut repeated = 0;
    for (key, capture, value, _) in &seen.frames {
        if let Some(first) = readings.insert(key, (*capture, *value)) {
            repeated += 1;
            assert_eq!(first, (*capture, *value), "{key:?} names two readings");
        }
    }
    // The oximeter's sequence: complete from the first reading seen to the last, each reading
    // under one key only (capture times strictly increase with seq).
    let oximeter: Vec<(u64, u64)> = readings
        .iter()
        .filter(|(k, _)| k.2 == OXIMETER)
        .map(|(k, (capture, _))| (k.3, *capture))
        .collect();
    let (lo, hi) = (oximeter[0].0, oximeter[oximeter.len() - 1].0);
    let missing: Vec<u64> = (lo..=hi)
        .filter(|s| !oximeter.iter().any(|(q, _)| q == s))
        .collect();
    assert!(
        missing.is_empty(),
        "oximeter readings missing across the restart: {missing:?} (before: up to {last_before})"
    );
    assert!(
        oximeter.windows(2).all(|w| w[0].1 < w[1].1),
        "a reading came back under another seq: {oximeter:?}"
    );
    eprintln!(
        "restart: oximeter {lo}..={hi} complete, {} frames ({repeated} seen again by key, \
         dropped), {} subscriptions; kiosk telemetry {}",
        seen.frames.len(),
        seen.subscriptions,
        link
    );
    let count = |key: &str| link[key].as_u64().unwrap();
    assert!(count("sessions") >= 2, "the kiosk reconnected: {link}");
    assert!(
        count("resent") >= 1,
        "the kiosk sent the new node what the old one had: {link}"
    );
    assert!(
        count("rediscovered") >= 1,
        "the kiosk asked /api/telemetry again and took the new certificate: {link}"
    );
}

/// Subscribes as the doctor with the telemetry data channel, asks `sync`, records every
/// measurement; when the server goes quiet (3 s without a frame: it went away) subscribes
/// again.
async fn consume(base: String, token: String, seen: Arc<Mutex<Seen>>, stop: watch::Receiver<bool>) {
    let opts = ClientOptions {
        data_channel: true,
        recv_video: 0,
        recv_audio: 1,
        ..ClientOptions::loopback()
    };
    while !*stop.borrow() {
        let Ok(sub) =
            Subscriber::connect(&format!("{base}/whep/{ROOM}"), &token, opts.clone()).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        seen.lock().unwrap().subscriptions += 1;
        let synced = sub
            .send_data(r#"{"type":"sync"}"#, Duration::from_secs(5))
            .await
            .is_ok();
        let mut quiet_since = Instant::now();
        while synced && !*stop.borrow() && quiet_since.elapsed() < Duration::from_secs(3) {
            let Ok(m) = sub.next_data(Duration::from_millis(200)).await else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&m.data) else {
                continue;
            };
            let mut s = seen.lock().unwrap();
            if let Some(recent) = v["sync"]["recent"].as_array() {
                for d in recent {
                    record(&mut s, d, true);
                }
            } else if record(&mut s, &v, false) {
                quiet_since = Instant::now();
            }
        }
        let _ = sub.close().await;
    }
}

/// Records a delivered measurement frame; false for anything else.
fn record(s: &mut Seen, d: &Value, synced: bool) -> bool {
    let Some(m) = d["frame"].get("measurement") else {
        return false;
    };
    let key = (
        d["source"].as_str().unwrap_or_default().to_owned(),
        d["epoch"].as_str().unwrap_or_default().to_owned(),
        d["channel_id"].as_u64().unwrap_or(0),
        m["seq"].as_u64().unwrap_or(0),
    );
    let value = m["values"][0]["value"].as_f64().unwrap_or(f64::NAN);
    let capture = d["capture_time_us"].as_u64().unwrap_or(0);
    s.frames.push((key, capture, value, synced));
    true
}

async fn wait_for(seen: &Mutex<Seen>, what: &str, done: impl Fn(&Seen) -> bool) -> BTreeSet<u64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        {
            let s = seen.lock().unwrap();
            if done(&s) {
                return s.oximeter_seqs();
            }
            assert!(
                Instant::now() < deadline,
                "waited 90 s for {what}: oximeter seqs {:?}, {} subscriptions",
                s.oximeter_seqs(),
                s.subscriptions
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn discovery_certificate(base: &str, token: &str) -> String {
    let v: Value = reqwest::Client::new()
        .get(format!("{base}/api/telemetry"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/telemetry")
        .json()
        .await
        .expect("JSON");
    v["certificate"].as_str().expect("a certificate").to_owned()
}

/// A `cabine serve` child process, killed if the test fails before stopping it.
struct Serve(Option<Child>);

impl Serve {
    fn start(http: u16, media: u16, telemetry: u16) -> Serve {
        let child = Command::new(env!("CARGO_BIN_EXE_cabine"))
            .arg("serve")
            .env("CABINE_AUTH__SECRET", SECRET)
            .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{media}"))
            .env("CABINE_TELEMETRY__LISTEN", format!("127.0.0.1:{telemetry}"))
            .env("CABINE_ADMIN__LISTEN", "")
            .env("CABINE_HTTP__DRAIN_TIMEOUT", "1s")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cabine serve");
        Serve(Some(child))
    }

    async fn wait_healthy(&mut self, base: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{base}/healthz");
        loop {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().as_u16() == 200)
            {
                return;
            }
            if let Some(exit) = self.0.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("cabine serve exited before serving: {exit:?}");
            }
            assert!(Instant::now() < deadline, "cabine serve did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits (up to 30 s) for the process to exit.
    fn terminate(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "cabine serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
