//! The audit log holds exactly the joins, refusals and leaves that happened, in order, and a
//! `kill -9` of the server never leaves a torn last line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{post_sdp, sdp_offer};
use cabine_proto::Role;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_records_join_refusal_leave_and_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("cabine-audit-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("audit.jsonl");
    let secret = "audit-test-secret-0123456789abcdef";
    let http = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cabine"))
        .arg("serve")
        .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{}", free_port()))
        .env("CABINE_ADMIN__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CABINE_TELEMETRY__LISTEN", "127.0.0.1:0")
        .env("CABINE_AUTH__SECRET", secret)
        .env("CABINE_AUDIT__PATH", &path)
        .env("CABINE_AUDIT__FSYNC", "always")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let base = format!("http://127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        if let Some(exit) = child.try_wait().unwrap() {
            panic!(
                "server exited before serving: {exit:?} (run `cabine serve` by hand to see why)"
            );
        }
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tokens = cabine_proto::jwt::Tokens::new(secret.as_bytes());
    let mint = |role, id: &str| {
        tokens
            .mint(
                "room-audit",
                role,
                cabine_proto::Identity::parse(id).unwrap(),
                Duration::from_secs(60),
                None,
            )
            .unwrap()
    };

    // Join, one refusal, leave.
    let kiosk = mint(Role::Kiosk, "kiosk-7");
    let (status, headers, _) = post_sdp(
        &format!("{base}/whip/room-audit"),
        Some(&kiosk),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201);
    let observer = mint(Role::Observer, "watcher-1");
    let (status, _, _) = post_sdp(
        &format!("{base}/whip/room-audit"),
        Some(&observer),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 403);
    let location = headers["location"].to_str().unwrap();
    let r = reqwest::Client::new()
        .delete(format!("{base}{location}"))
        .bearer_auth(&kiosk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The writer thread fsyncs every record; on a busy disk that takes a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the three records never reached the audit log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more may follow: a marker (a refused anonymous request) is the next record.
    let (status, _, _) = post_sdp(
        &format!("{base}/whip/room-audit"),
        Some("marker.bad.token"),
        "application/sdp",
        "v=0".into(),
    )
    .await;
    assert_eq!(status, 401);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 4 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the marker never reached the audit log: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4, "{text}");
    let marker = records.pop().unwrap();
    assert_eq!(marker["event"], "refused", "{text}");
    assert_eq!(marker["identity"], "-", "{text}");
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_owned(),
                r["identity"].as_str().unwrap().to_owned(),
                r["role"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("publish".into(), "kiosk-7".into(), "kiosk".into()),
            ("refused".into(), "watcher-1".into(), "observer".into()),
            ("leave".into(), "kiosk-7".into(), "kiosk".into()),
        ],
        "{text}"
    );
    for r in &records {
        assert_eq!(r["room"], "room-audit");
        assert!(r["time"].as_str().unwrap().ends_with('Z'));
        assert!(r["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    assert!(records[1]["reason"]
        .as_str()
        .unwrap()
        .contains("forbidden_role"));

    // Hammer it with refusals and kill -9 in the middle.
    let hammer = tokio::spawn({
        let base = base.clone();
        async move {
            for _ in 0..400 {
                let _ = post_sdp(
                    &format!("{base}/whip/room-audit"),
                    Some("bad.token.here"),
                    "application/sdp",
                    "v=0".into(),
                )
                .await;
            }
        }
    });
    // Kill it while the refusals are being written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .count()
        < 20
    {
        assert!(
            Instant::now() < deadline,
            "the refusals never reached the audit log"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let _ = hammer.await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'), "last line is complete");
    let mut n = 0;
    for line in text.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is whole JSON");
        n += 1;
    }
    assert!(
        n > 3,
        "refusals during the hammering were recorded ({n} lines)"
    );
}
