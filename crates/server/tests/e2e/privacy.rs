//! Privacy: nothing a client chose (room names, identities, track labels, codec names) reaches
//! the process log in clear, and the public development secret never serves a non-loopback
//! address.
//!
//! The log is the real one: `cabine serve` is spawned (the process-wide subscriber of this test
//! binary belongs to `otlp`) and its output read.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{post_sdp, sdp_offer};
use cabine_proto::jwt::Tokens;
use cabine_proto::{Identity, Role};
use cabine_server::{Config, Server};

/// Names no server text contains, so any occurrence in the log came from the client.
const ROOM_A: &str = "zephyr-room-alpha";
const ROOM_B: &str = "zephyr-room-bravo";
const WHO: &str = "quokka-kiosk-9";
const LABEL: &str = "walrus-camera";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_names_never_reach_the_process_log() {
    let dir = std::env::temp_dir().join(format!("cabine-privacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The process log goes to stdout (JSON lines here, to find the fields).
    let log = dir.join("stdout.log");
    let secret = "privacy-test-secret-0123456789abcdef";
    let http = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_cabine"))
        .arg("serve")
        .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{}", free_port()))
        .env("CABINE_ADMIN__LISTEN", "")
        .env("CABINE_TELEMETRY__LISTEN", "127.0.0.1:0")
        .env("CABINE_AUTH__SECRET", secret)
        .env("CABINE_LOG__FILTER", "info")
        .env("CABINE_LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        if let Some(exit) = child.0.try_wait().unwrap() {
            panic!("server exited before serving: {exit:?}");
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens = Tokens::new(secret.as_bytes());
    let mint = |room: &str, role, id: &str| {
        tokens
            .mint(
                room,
                role,
                Identity::parse(id).unwrap(),
                Duration::from_secs(60),
                None,
            )
            .unwrap()
    };

    // A wrong-room refusal (its reason names both rooms), a publish with a chosen track label,
    // a codec mismatch (names codecs), a bad offer and the leave.
    let whip = format!("{base}/whip/{ROOM_A}");
    let (status, _, body) = post_sdp(
        &whip,
        Some(&mint(ROOM_B, Role::Kiosk, WHO)),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains(ROOM_B), "the client itself is told: {body}");
    let kiosk = mint(ROOM_A, Role::Kiosk, WHO);
    let offer = sdp_offer("sendonly").replace("room-camera", LABEL);
    let (status, headers, body) = post_sdp(&whip, Some(&kiosk), "application/sdp", offer).await;
    assert_eq!(status, 201, "{body}");
    let h264_only = sdp_offer("recvonly").replace("VP8/90000", "H264/90000");
    let (status, _, body) = post_sdp(
        &format!("{base}/whep/{ROOM_A}"),
        Some(&mint(ROOM_A, Role::Doctor, "dr-walrus")),
        "application/sdp",
        h264_only,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, _, _) = post_sdp(
        &whip,
        Some(&kiosk),
        "application/sdp",
        format!("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 {LABEL}/90000\r\n"),
    )
    .await;
    assert_eq!(status, 400);
    let location = headers["location"].to_str().unwrap();
    let r = reqwest::Client::new()
        .delete(format!("{base}{location}"))
        .bearer_auth(&kiosk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Every event above was logged (the audit target mirrors them with codes), and none of
    // the client's names is in the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        let logged = ["wrong_room", "codec_mismatch", "\"leave\""]
            .iter()
            .filter(|w| text.contains(*w))
            .count();
        if logged == 3 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the refusals and the leave never reached the process log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for secret_name in [ROOM_A, ROOM_B, WHO, LABEL, "dr-walrus", "H264"] {
        let line = text.lines().find(|l| l.contains(secret_name));
        assert!(
            line.is_none(),
            "{secret_name:?} reached the process log: {}",
            line.unwrap_or_default()
        );
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_secret_refuses_a_non_loopback_address() {
    // In process: http or media on 0.0.0.0 with the built-in secret.
    for (http, media) in [("0.0.0.0:0", "127.0.0.1:0"), ("127.0.0.1:0", "0.0.0.0:0")] {
        let mut cfg = Config::defaults();
        assert!(cfg.uses_dev_secret());
        cfg.http.listen = http.parse().unwrap();
        cfg.media.bind = media.parse().unwrap();
        cfg.admin.listen = String::new();
        cfg.telemetry.listen = "127.0.0.1:0".into();
        let e = match Server::start(cfg).await {
            Ok(s) => {
                s.shutdown(Duration::from_millis(10)).await;
                panic!("started on {http} / {media} with the development secret");
            }
            Err(e) => e.to_string(),
        };
        assert!(e.contains("auth.secret"), "{e}");
        assert!(e.contains("CABINE_AUTH__SECRET"), "{e}");
    }

    // The QUIC telemetry sidecar verifies tokens with the same secret, and an admin listener
    // without a token is open to whoever reaches it.
    for (key, admin, telemetry) in [
        ("telemetry.listen", "", "0.0.0.0:0"),
        ("admin.listen", "0.0.0.0:0", "127.0.0.1:0"),
    ] {
        let mut cfg = Config::defaults();
        cfg.http.listen = "127.0.0.1:0".parse().unwrap();
        cfg.media.bind = "127.0.0.1:0".parse().unwrap();
        cfg.admin.listen = admin.into();
        cfg.telemetry.listen = telemetry.into();
        let e = match Server::start(cfg).await {
            Ok(s) => {
                s.shutdown(Duration::from_millis(10)).await;
                panic!("started with {key} on 0.0.0.0 and the development secret");
            }
            Err(e) => e.to_string(),
        };
        assert!(e.contains(key), "{e}");
        assert!(e.contains("auth.secret"), "{e}");
    }
    // An admin listener with its own token may listen wider.
    let mut cfg = Config::defaults();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.bind = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "0.0.0.0:0".into();
    cfg.admin.token = "an-admin-token-0123456789".into();
    cfg.telemetry.listen = String::new();
    let s = Server::start(cfg)
        .await
        .expect("a tokened admin listener may bind 0.0.0.0");
    let metrics = format!(
        "http://127.0.0.1:{}/metrics",
        s.admin_addr().unwrap().port()
    );
    let client = reqwest::Client::new();
    for (token, status) in [
        (None, 401),
        (Some("an-admin-token-012345678X"), 401),
        (Some("an-admin-token"), 401),
        (Some("an-admin-token-0123456789"), 200),
    ] {
        let mut r = client.get(&metrics);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        assert_eq!(
            r.send().await.unwrap().status().as_u16(),
            status,
            "{token:?}"
        );
    }
    s.shutdown(Duration::from_millis(10)).await;

    // The binary: exits at once with the message, naming the key.
    let out = Command::new(env!("CARGO_BIN_EXE_cabine"))
        .arg("serve")
        .env("CABINE_HTTP__LISTEN", "0.0.0.0:0")
        .env("CABINE_MEDIA__BIND", "127.0.0.1:0")
        .env("CABINE_ADMIN__LISTEN", "")
        .env("CABINE_TELEMETRY__LISTEN", "")
        .env_remove("CABINE_AUTH__SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("auth.secret"), "{text}");

    // A real secret on 0.0.0.0 starts (deployments bind every interface).
    let mut cfg = Config::defaults();
    cfg.http.listen = "0.0.0.0:0".parse().unwrap();
    cfg.media.bind = "0.0.0.0:0".parse().unwrap();
    cfg.media.advertise = "127.0.0.1".into();
    cfg.admin.listen = String::new();
    cfg.telemetry.listen = "127.0.0.1:0".into();
    cfg.auth.secret = "a-real-deployment-secret-0123456789".into();
    let s = Server::start(cfg)
        .await
        .expect("a real secret may listen on 0.0.0.0");
    s.shutdown(Duration::from_millis(10)).await;
}
