//! The server's life: the `cabine` binary on its embedded config, `cabine token`, environment
//! overrides, SIGTERM with a drain, and HTTPS when a certificate is configured.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{post_sdp, sdp_offer};
use cabine_proto::jwt::Tokens;
use cabine_proto::Role;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn binary_serves_on_defaults_mints_tokens_and_stops_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_cabine");

    // `cabine token` signs with the configured secret.
    let out = Command::new(bin)
        .args([
            "token",
            "--room",
            "r1",
            "--role",
            "doctor",
            "--identity",
            "dr-1",
            "--ttl",
            "10m",
        ])
        .env("CABINE_AUTH__SECRET", "a-secret-from-the-environment-123")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap();
    let claims = Tokens::new(b"a-secret-from-the-environment-123")
        .verify(jwt.trim())
        .expect("token verifies");
    assert_eq!(claims.role, Role::Doctor);
    assert_eq!(claims.sub.as_str(), "dr-1");

    // Bad arguments are refused with a reason.
    let out = Command::new(bin)
        .args([
            "token",
            "--room",
            "*",
            "--role",
            "doctor",
            "--identity",
            "dr-1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only valid for operator"));
    let out = Command::new(bin)
        .args(["serve", "--config", "/nonexistent/cabine.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    // `cabine serve` with no file: embedded defaults, ports moved by the environment.
    let http = free_port();
    let media = free_port();
    let mut child = Command::new(bin)
        .arg("serve")
        .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{media}"))
        // The default admin port (9464) may be taken on a shared machine.
        .env("CABINE_ADMIN__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CABINE_TELEMETRY__LISTEN", "127.0.0.1:0")
        .env("CABINE_HTTP__DRAIN_TIMEOUT", "1s")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server if an assertion fails, so that it does not outlive the test.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _guard = KillOnDrop(child.id());
    // tracing writes to stdout; the dev-secret warning too.
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{http}/healthz");
    loop {
        if let Ok(r) = reqwest::blocking_get(&url) {
            if r == 200 {
                break;
            }
        }
        if let Some(exit) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            let out = lines.join().unwrap().join("\n");
            panic!("server exited before serving ({exit:?}):\n{out}\n{err}");
        }
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "SIGTERM leads to a clean exit: {exit:?}");
    let log = lines.join().unwrap().join("\n");
    assert!(
        log.contains("development token secret"),
        "dev secret warning missing:\n{log}"
    );
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(log.contains("cabine stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_sessions_and_fails_readiness() {
    let s = common::start().await;
    let base = s.base.clone();
    let kiosk = s.token("room-d", Role::Kiosk, "kiosk-1");
    let (status, _, _) = post_sdp(
        &format!("{base}/whip/room-d"),
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201);
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The open session keeps the server draining for the whole drain time.
    let shutdown = tokio::spawn(s.server.shutdown(Duration::from_secs(2)));
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        if r.status().as_u16() == 503 {
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            Instant::now() < deadline,
            "readyz never turned 503 while draining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, body) = post_sdp(
        &format!("{base}/whip/room-d"),
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    shutdown.await.unwrap();
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "listener closed after drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_when_a_certificate_is_configured() {
    let dir = std::env::temp_dir().join(format!("cabine-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let s = common::start_with(|c| {
        c.http.tls_cert = dir.join("cert.pem");
        c.http.tls_key = dir.join("key.pem");
    })
    .await;
    let port = s.server.http_addr().port();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect("HTTPS request");
    assert_eq!(r.status().as_u16(), 200);
    s.server.shutdown(Duration::from_millis(100)).await;
}

mod reqwest {
    pub use ::reqwest::*;

    /// A tiny blocking GET returning the status code, without reqwest's blocking feature.
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(host)?;
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        buf.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status line"))
    }
}
