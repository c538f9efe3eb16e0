//! FHIR export end to end: a kiosk's simulated devices (`cabine-kiosk devices`' outputs, over
//! the real QUIC telemetry client) feed a room; its measurements leave as an R4 transaction Bundle
//! that a local HTTP sink receives and the FHIR R4 validator installed by `scripts/test`
//! (`scripts/fhir/install`: fhir.resources, R4 4.0.1 models) checks.
//!
//! - `an_export_survives_a_crash_and_is_delivered_once`: the doctor asks for the export; the
//!   sink answers 500 to the first POST; `cabine serve` is killed (SIGKILL) and started again on
//!   the same outbox; the sink answers 500 once more, then 200: one Bundle delivered, the same
//!   bytes every time, the outbox empty.
//! - `a_room_exports_at_its_end_to_the_platforms_subject`: the platform sets the room's subject
//!   ([`cabine_server::fhir::Fhir::set_subject`]); a doctor's request and the room's end each
//!   export what was measured since the previous export; a room without a subject exports
//!   nothing (counted); requests without a subject, from a kiosk, for another room are
//!   refused.
//! - `a_bad_fhir_section_stops_the_start_naming_its_key`: plain HTTP to a remote endpoint, a
//!   zero retry delay.
//! - `a_taken_tickets_subject_is_the_subject_of_its_rooms_export`: the walk-in ticket's subject
//!   reaches the room's export through the queue's store (as on another node of a cluster).
//! - `a_room_ending_with_the_outbox_full_is_audited_and_counted`: `fhir_not_exported`, with
//!   the reason, and `cabine_fhir_not_exported_total`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use cabine_proto::jwt::Tokens;
use cabine_proto::telemetry as wire;
use cabine_proto::{Identity, Role, RoomId};
use cabine_sidecar::client::{resolve, Client, ClientConfig};
use cabine_sidecar::tls::ServerVerification;
use serde_json::Value;

use crate::common;
use crate::common::cluster::free_port;

const SECRET: &str = "fhir-test-secret-0123456789abcdef0123";

/// One request the sink received.
#[derive(Debug, Clone)]
struct Received {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// A FHIR endpoint on a loopback port: answers 500 to the first `failures` POSTs, then 200.
#[derive(Clone)]
struct Sink {
    url: String,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    async fn start(failures: usize) -> Sink {
        let log: Arc<Mutex<Vec<Received>>> = Arc::default();
        let state = (Arc::clone(&log), failures);
        let app = axum::Router::new()
            .route(
                "/fhir",
                axum::routing::post(
                    |State((log, failures)): State<(Arc<Mutex<Vec<Received>>>, usize)>,
                     headers: HeaderMap,
                     body: axum::body::Bytes| async move {
                        let mut log = log.lock().unwrap();
                        let status = if log.len() < failures {
                            StatusCode::INTERNAL_SERVER_ERROR
                        } else {
                            StatusCode::OK
                        };
                        log.push(Received {
                            status: status.as_u16(),
                            content_type: headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned(),
                            body: body.to_vec(),
                        });
                        (
                            status,
                            [("content-type", "application/fhir+json")],
                            r#"{"resourceType":"Bundle","type":"transaction-response"}"#,
                        )
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fhir", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Sink { url, log }
    }

    fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

/// A kiosk: the simulated devices of `cabine-kiosk devices` (simulated time, JSON lines, the
/// same simulators `cabine-kiosk dial` runs), sent over the real telemetry client.
struct Kiosk {
    client: Client,
    base_us: u64,
    /// Simulated time run so far.
    elapsed: Duration,
    /// When blood pressure measurements were started, seconds of simulated time.
    bp_at: Vec<f64>,
    /// The last seq sent per channel.
    last_seq: BTreeMap<u32, u64>,
}

impl Kiosk {
    async fn connect(base: &str, token: &str, room: &str) -> Kiosk {
        let (url, verification) = discover(base, token).await;
        let (addr, name) = resolve(&url).await.unwrap();
        let mut cc = ClientConfig::new(addr, token, RoomId::parse(room).unwrap(), verification);
        cc.server_name = name;
        let client = Client::connect(cc).await.expect("telemetry connects");
        let channels: Vec<wire::ChannelDecl> = devices_output(Duration::ZERO, &[])
            .iter()
            .filter(|l| l["type"] == "channel")
            .map(declaration)
            .collect();
        assert_eq!(channels.len(), 6, "the simulator's six channels");
        for decl in &channels {
            client.declare(decl.clone()).unwrap();
        }
        for decl in &channels {
            client
                .wait_ready(decl.channel_id, Duration::from_secs(10))
                .await
                .expect("channel acknowledged");
        }
        let base_us = client.clock().now_us();
        Kiosk {
            client,
            base_us,
            elapsed: Duration::ZERO,
            bp_at: Vec::new(),
            last_seq: BTreeMap::new(),
        }
    }

    /// Runs the devices for `span` more of simulated time (a blood pressure measurement
    /// started first) and sends what they produce; returns the measurements sent. (The
    /// simulator is deterministic: it runs again from the start, and what was sent before is
    /// left out by its sequence numbers.)
    fn run(&mut self, span: Duration) -> usize {
        self.bp_at.push(self.elapsed.as_secs_f64());
        self.elapsed += span;
        let mut sent = 0;
        for o in devices_output(self.elapsed, &self.bp_at) {
            let us = |o: &Value| self.base_us + (o["t_ms"].as_f64().unwrap() * 1000.0) as u64;
            let channel_id = o["channel"].as_u64().unwrap() as u32;
            if let Some(seq) = o["seq"].as_u64() {
                let last = self.last_seq.entry(channel_id).or_default();
                if seq <= *last {
                    continue;
                }
                *last = seq;
            }
            match o["type"].as_str().unwrap() {
                "measurement" => {
                    let w = wire::Measurement {
                        channel_id,
                        seq: o["seq"].as_u64().unwrap(),
                        capture_time_us: us(&o),
                        values: o["values"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|v| wire::Value {
                                loinc: v["loinc"].as_str().unwrap().into(),
                                mdc_code: v["mdc"].as_u64().unwrap() as u32,
                                value: v["value"].as_f64().unwrap(),
                                unit: v["unit"].as_str().unwrap().into(),
                            })
                            .collect(),
                        status: match o["status"].as_str().unwrap() {
                            "valid" => wire::MeasurementStatus::Valid,
                            _ => wire::MeasurementStatus::Questionable,
                        } as i32,
                    };
                    self.client.send_measurement(w).unwrap();
                    sent += 1;
                }
                "waveform" => {
                    let chunk = wire::WaveformChunk {
                        channel_id,
                        seq: o["seq"].as_u64().unwrap(),
                        first_sample_time_us: us(&o),
                        sample_rate_hz: o["sample_rate_hz"].as_f64().unwrap(),
                        leads: o["leads"].as_array().unwrap().len() as u32,
                        scale: o["scale"].as_f64().unwrap(),
                        offset: o["offset"].as_f64().unwrap(),
                        samples: o["samples"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|s| s.as_i64().unwrap() as i32)
                            .collect(),
                    };
                    self.client.send_waveform(chunk).unwrap();
                }
                _ => {} // channels, statuses, the command's outcome
            }
        }
        sent
    }
}

/// `cabine-kiosk devices` for `span` of simulated time: the patient of seed 7 at 75 bpm, the
/// oximeter every 500 ms, the thermometer every second, the scale every 2 s, blood pressure
/// readings started at `bp_at` seconds (none if empty) and taking 1 s.
fn devices_output(span: Duration, bp_at: &[f64]) -> Vec<Value> {
    let bp_at: Vec<String> = match bp_at {
        [] => vec!["--bp-at".into(), "-1".into()],
        at => at
            .iter()
            .flat_map(|s| ["--bp-at".into(), s.to_string()])
            .collect(),
    };
    let out = Command::new(common::kiosk::kiosk_bin())
        .args(["devices", "--seconds", &span.as_secs_f64().to_string()])
        .args(["--seed", "7", "--heart-rate", "75"])
        .args(&bp_at)
        .args(["--oximeter-ms", "500", "--thermometer-ms", "1000"])
        .args(["--scale-ms", "2000", "--bp-duration-ms", "1000"])
        .output()
        .expect("cabine-kiosk devices runs");
    assert!(
        out.status.success(),
        "cabine-kiosk devices: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A `"type":"channel"` line of `cabine-kiosk devices` as its telemetry declaration.
fn declaration(c: &Value) -> wire::ChannelDecl {
    let strings = |key: &str| -> Vec<String> {
        c[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    wire::ChannelDecl {
        channel_id: c["channel"].as_u64().unwrap() as u32,
        kind: match c["kind"].as_str().unwrap() {
            "measurement" => wire::ChannelKind::Measurement,
            _ => wire::ChannelKind::Waveform,
        } as i32,
        device_kind: match c["device"].as_str().unwrap() {
            "pulse_oximeter" => wire::DeviceKind::PulseOximeter,
            "ecg" => wire::DeviceKind::Ecg,
            "thermometer" => wire::DeviceKind::Thermometer,
            "bp_cuff" => wire::DeviceKind::BpCuff,
            "scale" => wire::DeviceKind::Scale,
            other => panic!("unknown device {other}"),
        } as i32,
        loinc: c["loinc"].as_str().unwrap().to_owned(),
        mdc_code: c["mdc"].as_u64().unwrap() as u32,
        unit: c["unit"].as_str().unwrap().to_owned(),
        sample_rate_hz: c["sample_rate_hz"].as_f64().unwrap_or(0.0),
        leads: strings("leads"),
        label: c["label"].as_str().unwrap().to_owned(),
        commands: strings("commands"),
    }
}

/// `GET /api/telemetry` as a kiosk: the sidecar's QUIC URL and its certificate, pinned.
async fn discover(base: &str, token: &str) -> (String, ServerVerification) {
    use base64::Engine;
    let answer: Value = reqwest::Client::new()
        .get(format!("{base}/api/telemetry"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /api/telemetry")
        .error_for_status()
        .expect("telemetry discovery")
        .json()
        .await
        .unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(answer["certificate"].as_str().expect("a certificate"))
        .unwrap();
    (
        answer["url"].as_str().expect("a QUIC URL").to_owned(),
        ServerVerification::Pinned(rustls::pki_types::CertificateDer::from(der)),
    )
}

fn token(room: &str, role: Role, identity: &str) -> String {
    Tokens::new(SECRET.as_bytes())
        .mint(
            room,
            role,
            Identity::parse(identity).unwrap(),
            Duration::from_secs(600),
            None,
        )
        .unwrap()
}

/// Polls `done` every 20 ms for up to 30 s; panics naming `what`.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Bundles' JSON files in an outbox directory.
fn outbox_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the FHIR R4 validator `scripts/test` installs on `bundle`; panics with its report when
/// the Bundle is invalid or the validator is missing.
fn validate_r4(bundle: &[u8], name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Not CABINE_*: cabine processes read every CABINE_* variable as a config key.
    let python = std::env::var_os("FHIR_VALIDATOR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/fhir-validator/bin/python"));
    assert!(
        python.exists(),
        "the FHIR R4 validator is not installed at {}: run scripts/fhir/install (scripts/test \
         does)",
        python.display()
    );
    let file = std::env::temp_dir().join(format!("cabine-fhir-{}-{name}.json", std::process::id()));
    std::fs::write(&file, bundle).unwrap();
    let out = Command::new(&python)
        .arg(root.join("scripts/fhir/validate.py"))
        .arg(&file)
        .output()
        .expect("the validator runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the exported Bundle is not valid FHIR R4:\n{report}"
    );
    assert!(report.contains("valid FHIR R4 Bundle"), "{report}");
    let _ = std::fs::remove_file(&file);
}

/// The Observations of a Bundle by their first code.
fn observations(bundle: &Value) -> Vec<(&str, &Value)> {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Observation")
        .map(|r| (r["code"]["coding"][0]["code"].as_str().unwrap(), r))
        .collect()
}

/// Checks what a Bundle of the simulated kiosk holds: every vital sign coded LOINC + MDC +
/// UCUM, the blood pressure panel, an ECG excerpt, the kiosk as the Device, the subject.
fn check_content(bundle: &Value, subject: &str) {
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "transaction");
    assert!(bundle["identifier"]["value"]
        .as_str()
        .unwrap()
        .starts_with("urn:uuid:"));
    let obs = observations(bundle);
    let codes: BTreeSet<&str> = obs.iter().map(|(c, _)| *c).collect();
    for want in [
        "59408-5", "8867-4", "8310-5", "29463-7", "85354-9", "131328",
    ] {
        assert!(codes.contains(want), "no {want} Observation in {codes:?}");
    }
    let unit = |code: &str| {
        obs.iter()
            .find(|(c, _)| *c == code)
            .map(|(_, o)| o["valueQuantity"]["code"].as_str().unwrap_or(""))
            .unwrap()
    };
    assert_eq!(unit("59408-5"), "%");
    assert_eq!(unit("8867-4"), "/min");
    assert_eq!(unit("8310-5"), "Cel");
    assert_eq!(unit("29463-7"), "kg");
    let spo2 = obs.iter().find(|(c, _)| *c == "59408-5").unwrap().1;
    assert_eq!(
        spo2["code"]["coding"][1]["system"],
        "urn:iso:std:iso:11073:10101"
    );
    assert_eq!(spo2["code"]["coding"][1]["code"], "150456");
    assert_eq!(spo2["category"][0]["coding"][0]["code"], "vital-signs");
    // Measured just now: the server's clock mapping of the capture times.
    let t = humantime::parse_rfc3339(spo2["effectiveDateTime"].as_str().unwrap()).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default();
    assert!(t > UNIX_EPOCH && age < Duration::from_secs(600), "{t:?}");
    let bp = obs.iter().find(|(c, _)| *c == "85354-9").unwrap().1;
    let parts: Vec<(&str, &str)> = bp["component"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["code"]["coding"][0]["code"].as_str().unwrap(),
                c["valueQuantity"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(parts.contains(&("8480-6", "mm[Hg]")), "{parts:?}");
    assert!(parts.contains(&("8462-4", "mm[Hg]")), "{parts:?}");
    let ecg = obs.iter().find(|(c, _)| *c == "131328").unwrap().1;
    let leads = ecg["component"].as_array().unwrap();
    assert_eq!(leads.len(), 3, "three ECG leads");
    let sd = &leads[0]["valueSampledData"];
    assert_eq!(sd["dimensions"], 1);
    assert_eq!(sd["period"], 2.0, "500 Hz");
    assert!(sd["data"].as_str().unwrap().split(' ').count() > 100);
    let device = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Device")
        .expect("the kiosk as a Device");
    for (_, o) in &obs {
        assert_eq!(o["subject"]["reference"], subject);
        assert_eq!(o["device"]["reference"], device["fullUrl"]);
    }
}

/// A `cabine serve` process with the FHIR export on, killed on drop.
struct Serve {
    child: Child,
    base: String,
    admin: String,
}

impl Serve {
    async fn start(sink: &str, outbox: &Path, retry_min: &str, log: &Path) -> Serve {
        let http = free_port();
        let admin = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_cabine"))
            .arg("serve")
            .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{}", free_port()))
            .env("CABINE_MEDIA__WORKERS", "1")
            .env("CABINE_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
            .env("CABINE_TELEMETRY__LISTEN", "127.0.0.1:0")
            .env("CABINE_AUTH__SECRET", SECRET)
            .env("CABINE_FHIR__ENDPOINT", sink)
            .env("CABINE_FHIR__OUTBOX", outbox)
            .env("CABINE_FHIR__RETRY_MIN", retry_min)
            .env("CABINE_FHIR__RETRY_MAX", "60s")
            .env("CABINE_LOG__FILTER", "info")
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut s = Serve {
            child,
            base: format!("http://127.0.0.1:{http}"),
            admin: format!("http://127.0.0.1:{admin}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/healthz", s.base)).await.is_err() {
            if let Some(exit) = s.child.try_wait().unwrap() {
                panic!("cabine serve exited before serving: {exit:?}");
            }
            assert!(Instant::now() < deadline, "cabine serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    /// A sample's value from `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let text = match reqwest::get(format!("{}/metrics", self.admin)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn post_export(base: &str, room: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/api/rooms/{room}/fhir"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_survives_a_crash_and_is_delivered_once() {
    let sink = Sink::start(2).await;
    let dir = std::env::temp_dir().join(format!("cabine-fhir-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let outbox = dir.join("outbox");
    let room = "consult-fhir-crash";

    // Process A retries only after 60 s: the restart, not A, makes the second attempt.
    let mut a = Serve::start(&sink.url, &outbox, "60s", &dir.join("a.log")).await;
    let mut kiosk = Kiosk::connect(&a.base, &token(room, Role::Kiosk, "kiosk-12"), room).await;
    let sent = kiosk.run(Duration::from_millis(3500));
    assert!(sent >= 8, "{sent} measurements");
    until(
        "the server keeps every measurement and ECG chunks",
        || async {
            a.metric("cabine_fhir_held{kind=\"measurements\"}").await == sent as f64
                && a.metric("cabine_fhir_held{kind=\"waveform_chunks\"}").await >= 50.0
        },
    )
    .await;

    let doctor = token(room, Role::Doctor, "dr-house");
    let (status, body) =
        post_export(&a.base, room, Some(&doctor), r#"{"subject":"Patient/123"}"#).await;
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let bundle_id = answer["bundle"].as_str().unwrap().to_owned();
    assert!(answer["observations"].as_u64().unwrap() >= 8, "{answer}");
    // Nothing kept in memory after the export: it is in the outbox now.
    assert_eq!(
        a.metric("cabine_fhir_held{kind=\"measurements\"}").await,
        0.0
    );
    assert_eq!(outbox_files(&outbox).len(), 1);

    until("the first delivery attempt", || async {
        !sink.received().is_empty()
    })
    .await;
    a.kill9();
    kiosk.client.close().await;
    assert_eq!(sink.received().len(), 1);
    assert_eq!(sink.received()[0].status, 500);
    assert_eq!(
        outbox_files(&outbox),
        vec![outbox.join(format!("{bundle_id}.json"))],
        "the Bundle waits in the outbox across the crash"
    );

    // Started again on the same outbox: it resends (500 once more), then retries (200).
    let b = Serve::start(&sink.url, &outbox, "200ms", &dir.join("b.log")).await;
    until("the Bundle is delivered and leaves the outbox", || async {
        sink.accepted().len() == 1 && outbox_files(&outbox).is_empty()
    })
    .await;
    until("the export counted as delivered", || async {
        b.metric("cabine_fhir_exported_total").await == 1.0
    })
    .await;
    assert!(b.metric("cabine_fhir_retried_total").await >= 1.0);
    assert_eq!(b.metric("cabine_fhir_pending").await, 0.0);
    let received = sink.received();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![500, 500, 200],
        "two failures, then delivered exactly once"
    );
    for r in &received {
        assert_eq!(r.body, received[0].body, "the same Bundle every time");
        assert_eq!(r.content_type, "application/fhir+json");
    }
    let bundle = &sink.accepted()[0];
    assert_eq!(
        bundle["identifier"]["value"],
        format!("urn:uuid:{bundle_id}"),
        "the receiver's dedupe key"
    );
    check_content(bundle, "Patient/123");
    validate_r4(&received[2].body, "crash");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_exports_at_its_end_to_the_platforms_subject() {
    let sink = Sink::start(0).await;
    let dir = std::env::temp_dir().join(format!("cabine-fhir-end-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit").join("audit.jsonl");
    let s = common::start_with(|c| {
        c.auth.secret = SECRET.into();
        c.audit.path = audit.clone();
        c.fhir.endpoint = sink.url.clone();
        c.fhir.room_end_grace = Duration::from_millis(500);
        c.fhir.retry_min = Duration::from_millis(100);
    })
    .await;
    let fhir = Arc::clone(s.server.fhir().expect("the export is on"));
    assert_eq!(
        fhir.outbox_dir(),
        dir.join("audit").join("fhir-outbox"),
        "next to the audit"
    );
    let (with, without, empty) = ("consult-fhir-end", "consult-fhir-anon", "consult-fhir-none");
    let doctor = token(with, Role::Doctor, "dr-watson");

    // The platform knows the patient of this room (the walk-in ticket's subject).
    fhir.set_subject(&RoomId::parse(with).unwrap(), "Patient/456")
        .unwrap();
    assert!(fhir
        .set_subject(&RoomId::parse(with).unwrap(), "Practitioner/1")
        .is_err());

    let mut k1 = Kiosk::connect(&s.base, &token(with, Role::Kiosk, "kiosk-1"), with).await;
    let mut k2 = Kiosk::connect(&s.base, &token(without, Role::Kiosk, "kiosk-2"), without).await;
    let sent1 = k1.run(Duration::from_millis(3500));
    let sent2 = k2.run(Duration::from_millis(1000));
    until("the measurements are kept", || {
        let h = fhir.held();
        async move { h.measurements == (sent1 + sent2) as u64 && h.chunks > 50 }
    })
    .await;

    // Who may ask, and for what.
    let (st, _) = post_export(&s.base, with, None, "{}").await;
    assert_eq!(st, 401);
    let kiosk_token = token(with, Role::Kiosk, "kiosk-1");
    let (st, _) = post_export(&s.base, with, Some(&kiosk_token), "{}").await;
    assert_eq!(st, 403, "a kiosk cannot export");
    let (st, _) = post_export(&s.base, without, Some(&doctor), "{}").await;
    assert_eq!(st, 403, "another room's doctor cannot export");
    let other = token(without, Role::Doctor, "dr-who");
    let (st, body) = post_export(&s.base, without, Some(&other), "{}").await;
    assert_eq!(st, 422, "no subject, no export: {body}");
    assert!(body.contains("subject"), "{body}");
    let (st, body) = post_export(
        &s.base,
        without,
        Some(&other),
        r#"{"subject":"Practitioner/1"}"#,
    )
    .await;
    assert_eq!(st, 422, "{body}");
    let (st, _) = post_export(&s.base, without, Some(&other), r#"{"subjet":"x"}"#).await;
    assert_eq!(st, 400);
    let none_doctor = token(empty, Role::Doctor, "dr-no");
    let (st, body) = post_export(
        &s.base,
        empty,
        Some(&none_doctor),
        r#"{"subject":"Patient/1"}"#,
    )
    .await;
    assert_eq!(st, 409, "nothing measured: {body}");
    assert!(sink.received().is_empty());

    // The doctor's request mid-consultation, to the platform's subject.
    let (st, body) = post_export(&s.base, with, Some(&doctor), "").await;
    assert_eq!(st, 202, "{body}");
    until("the requested Bundle is delivered", || async {
        sink.accepted().len() == 1
    })
    .await;
    let first = sink.accepted()[0].clone();
    check_content(&first, "Patient/456");
    validate_r4(&sink.received()[0].body, "request");

    // More measurements, then the kiosk leaves: the room ends and exports the rest.
    let more = k1.run(Duration::from_millis(3500));
    until("the new measurements are kept", || {
        let h = fhir.held();
        async move { h.measurements == (more + sent2) as u64 }
    })
    .await;
    k1.client.close().await;
    until("the room's end exports what is left", || async {
        sink.accepted().len() == 2
    })
    .await;
    let second = sink.accepted()[1].clone();
    check_content(&second, "Patient/456");
    validate_r4(&sink.received()[1].body, "room-end");
    assert_ne!(first["identifier"], second["identifier"]);
    let ids = |b: &Value| -> BTreeSet<String> {
        observations(b)
            .iter()
            .map(|(_, o)| o["identifier"][0]["value"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(ids(&first).is_disjoint(&ids(&second)));

    // The room without a subject ends: nothing leaves, it is counted, nothing is kept.
    k2.client.close().await;
    until("the room without a subject is dropped", || async {
        fhir.stats()
            .no_subject
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    assert_eq!(sink.received().len(), 2);
    let held = fhir.held();
    assert_eq!((held.rooms, held.measurements, held.chunks), (0, 0, 0));
    assert!(outbox_files(fhir.outbox_dir()).is_empty());

    // Audited: the doctor's request under the doctor's identity, the room's end as the server.
    s.server.shutdown(Duration::from_millis(100)).await;
    let lines = std::fs::read_to_string(&audit).unwrap();
    let events: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |event: &str, identity: &str| {
        events
            .iter()
            .any(|e| e["event"] == event && e["identity"] == identity)
    };
    assert!(find("fhir_export", "dr-watson"), "{lines}");
    assert!(find("fhir_export", "-"), "{lines}");
    assert!(find("fhir_not_exported", "-"), "{lines}");
    assert!(find("refused", "dr-who"), "{lines}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_tickets_subject_is_the_subject_of_its_rooms_export() {
    let sink = Sink::start(0).await;
    let dir = std::env::temp_dir().join(format!("cabine-fhir-ticket-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s = common::start_with(|c| {
        c.auth.secret = SECRET.into();
        c.audit.path = dir.join("audit").join("audit.jsonl");
        c.fhir.endpoint = sink.url.clone();
        c.fhir.room_end_grace = Duration::from_millis(500);
        c.fhir.retry_min = Duration::from_millis(100);
    })
    .await;
    let fhir = Arc::clone(s.server.fhir().expect("the export is on"));
    let http = reqwest::Client::new();
    let kiosk = token("lobby", Role::Kiosk, "kiosk-walk-in");
    let r = http
        .post(format!("{}/api/queue", s.base))
        .bearer_auth(&kiosk)
        .json(&serde_json::json!({ "subject": "Patient/789" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ticket: Value = r.json().await.unwrap();
    let doctor = Tokens::new(SECRET.as_bytes())
        .mint(
            "*",
            Role::Doctor,
            Identity::parse("dr-queue").unwrap(),
            Duration::from_secs(600),
            Some(vec![cabine_proto::Grant::Take]),
        )
        .unwrap();
    let r = http
        .post(format!(
            "{}/api/queue/{}/take",
            s.base,
            ticket["ticket"].as_str().unwrap()
        ))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let taken: Value = r.json().await.unwrap();
    let room = taken["room"].as_str().unwrap().to_owned();

    // Nothing set on the export's side: the subject is found through the queue's store, as
    // on a node of a cluster that did not take the ticket.
    assert!(fhir.held().rooms == 0);
    let mut k = Kiosk::connect(&s.base, &token(&room, Role::Kiosk, "kiosk-walk-in"), &room).await;
    let sent = k.run(Duration::from_millis(3500));
    until("the measurements are kept", || {
        let h = fhir.held();
        async move { h.measurements == sent as u64 }
    })
    .await;
    k.client.close().await;
    until("the room's end exports to the ticket's subject", || async {
        sink.accepted().len() == 1
    })
    .await;
    check_content(&sink.accepted()[0], "Patient/789");
    validate_r4(&sink.received()[0].body, "ticket");
    assert_eq!(
        fhir.stats()
            .no_subject
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_fhir_section_stops_the_start_naming_its_key() {
    let dir = std::env::temp_dir().join(format!("cabine-fhir-bad-{}", std::process::id()));
    for (key, value, expect) in [
        (
            "CABINE_FHIR__ENDPOINT",
            "http://fhir.example.fr/r4",
            "fhir.endpoint",
        ),
        ("CABINE_FHIR__RETRY_MIN", "0s", "fhir.retry_min"),
    ] {
        let log = dir.with_extension("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cabine"))
            .arg("serve")
            .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{}", free_port()))
            .env("CABINE_ADMIN__LISTEN", "")
            .env("CABINE_TELEMETRY__LISTEN", "")
            .env("CABINE_AUTH__SECRET", SECRET)
            .env("CABINE_FHIR__ENDPOINT", "https://fhir.example.fr/r4")
            .env("CABINE_FHIR__OUTBOX", &dir)
            .env(key, value)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        // A server that starts never exits by itself: stopped after the deadline, it fails.
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = format!(
            "{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        );
        assert!(
            status.is_some_and(|s| !s.success()),
            "started with {key}={value}: {text}"
        );
        assert!(text.contains(expect), "{key}={value}: {text}");
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(log.with_extension("err"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A room that ends while the outbox is full: its measurements are not exported, and that is
/// audited (`fhir_not_exported`, with the reason) and counted, not only logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_ending_with_the_outbox_full_is_audited_and_counted() {
    // The endpoint never accepts: the first Bundle stays in the outbox.
    let sink = Sink::start(usize::MAX).await;
    let dir = std::env::temp_dir().join(format!("cabine-fhir-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit").join("audit.jsonl");
    let s = common::start_with(|c| {
        c.auth.secret = SECRET.into();
        c.audit.path = audit.clone();
        c.fhir.endpoint = sink.url.clone();
        c.fhir.room_end_grace = Duration::from_millis(500);
        c.fhir.retry_min = Duration::from_secs(30);
        c.fhir.max_pending = 1;
    })
    .await;
    let fhir = Arc::clone(s.server.fhir().expect("the export is on"));
    let pending = || {
        fhir.stats()
            .pending
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let not_exported = || {
        fhir.stats()
            .not_exported
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for (i, room) in ["consult-full-1", "consult-full-2"].into_iter().enumerate() {
        fhir.set_subject(&RoomId::parse(room).unwrap(), "Patient/5")
            .unwrap();
        let mut k = Kiosk::connect(&s.base, &token(room, Role::Kiosk, "kiosk-full"), room).await;
        let sent = k.run(Duration::from_millis(1500));
        until("the measurements are kept", || {
            let h = fhir.held();
            async move { h.measurements == sent as u64 }
        })
        .await;
        k.client.close().await;
        if i == 0 {
            until("the first room's Bundle waits in the outbox", || async {
                pending() == 1
            })
            .await;
        }
    }
    until(
        "the second room's end is counted as not exported",
        || async { not_exported() == 1 },
    )
    .await;
    assert_eq!(pending(), 1);
    s.server.shutdown(Duration::from_millis(100)).await;
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert!(
        lines.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            v["event"] == "fhir_not_exported"
                && v.to_string().contains("outbox_full")
                && v.to_string().contains("measurements dropped")
        }),
        "{lines}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
