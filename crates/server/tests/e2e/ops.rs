//! The operators' view: pseudonymous, operator-only, and streamed live as server-sent events.

use crate::common;

use std::time::Duration;

use crate::common::{post_sdp, sdp_offer};
use cabine_proto::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_view_is_pseudonymous_operator_only_and_live() {
    let s = common::start().await;
    let room = "room-dupont-42";
    let (status, _, _) = post_sdp(
        &format!("{}/whip/{room}", s.base),
        Some(&s.token(room, Role::Kiosk, "kiosk-jeanne")),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201);
    let op = s.token("*", Role::Operator, "ops-1");
    let client = reqwest::Client::new();

    let view: serde_json::Value = client
        .get(format!("{}/api/ops", s.base))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["node"]["rooms"], 1);
    assert_eq!(view["node"]["kiosks"], 1);
    let text = view.to_string();
    assert!(
        !text.contains("dupont") && !text.contains("jeanne"),
        "{text}"
    );
    assert!(view["rooms"][0]["id"].as_str().unwrap().starts_with('#'));
    assert_eq!(view["rooms"][0]["participants"][0]["role"], "kiosk");

    // A doctor's token is refused; a missing one too.
    let r = client
        .get(format!("{}/api/ops", s.base))
        .bearer_auth(s.token(room, Role::Doctor, "dr-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = client
        .get(format!("{}/api/ops/stream", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // The stream (token in the query, as EventSource needs) sends a view at once, then more.
    let mut r = client
        .get(format!("{}/api/ops/stream?token={op}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while body.matches("event: view").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .expect("two views within 5 s")
            .unwrap()
            .expect("stream open");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let mut data = body.lines().filter_map(|l| l.strip_prefix("data: "));
    let v: serde_json::Value = serde_json::from_str(data.next().expect("a data line")).unwrap();
    assert_eq!(v["node"]["rooms"], 1);
    // The first view carries the node's recent history (the sampler runs from the start, so
    // there is at least one sample by now), aligned series one per period; later ones do not.
    let h = &v["history"];
    assert_eq!(h["step_ms"], 1000, "{h}");
    let sessions = h["node"]["sessions"].as_array().expect("a sessions series");
    assert!(!sessions.is_empty() && sessions.len() <= 300, "{h}");
    assert_eq!(
        h["node"]["packets_out_per_s"].as_array().map(Vec::len),
        Some(sessions.len())
    );
    let second: serde_json::Value =
        serde_json::from_str(data.next().expect("a second data line")).unwrap();
    assert!(second.get("history").is_none(), "{second}");
    assert_eq!(second["node"]["kiosks"], 1);
    assert_eq!(
        second["node"]["kiosks_connected"], 0,
        "an SDP-only kiosk never connects"
    );
    assert_eq!(second["node"]["participants"]["kiosk"], 1);
    let text = body.to_lowercase();
    assert!(!text.contains("dupont") && !text.contains("jeanne"));

    // An operator token for another room sees none of this one, in the first event (a fresh
    // view) and in the sampled ones that follow.
    let other = s.token("room-other", Role::Operator, "ops-2");
    let mut r = client
        .get(format!("{}/api/ops/stream?token={other}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut body = String::new();
    while body.matches("event: view").count() < 2 {
        let chunk = tokio::time::timeout_at(deadline + Duration::from_secs(5), r.chunk())
            .await
            .expect("two views")
            .unwrap()
            .expect("stream open");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["node"]["rooms"], 0, "{v}");
        assert_eq!(v["node"]["kiosks"], 0, "{v}");
        assert_eq!(v["streams"].as_array().map(Vec::len), Some(0), "{v}");
    }

    // The page itself is served (its data needs the token), like every page, with the one
    // strict policy: no inline script or style, no framing.
    for (path, status) in [
        ("/ops", 200),
        ("/consult/room-1", 200),
        ("/kiosk/room-1", 200),
        ("/demo/publish", 200),
        ("/demo/watch", 200),
        ("/app/ops.js", 200),
        ("/app/watch.css", 200),
        ("/app/no-such-file.js", 404),
    ] {
        let page = client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), status, "{path}");
        let csp = page
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        // Sockets to this origin only ('self' covers its ws:/wss:), not to any host.
        assert!(csp.contains("connect-src 'self';"), "{path}: {csp}");
        assert!(
            !csp.contains("ws:") && !csp.contains("wss:"),
            "{path}: {csp}"
        );
        let body = page.text().await.unwrap();
        assert!(
            !body.contains("<script>") && !body.contains("<style>"),
            "{path}"
        );
    }
    s.server.shutdown(Duration::from_millis(100)).await;
}
