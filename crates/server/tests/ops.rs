//! The operators' view: pseudonymous, operator-only, and streamed live as server-sent events.

mod common;

use std::time::Duration;

use cabine_proto::Role;
use common::{post_sdp, sdp_offer};

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
    let data = body
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let v: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["node"]["rooms"], 1);

    // The page itself is served (its data needs the token).
    let page = client.get(format!("{}/ops", s.base)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    s.server.shutdown(Duration::from_millis(100)).await;
}
