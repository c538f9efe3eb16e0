//! Many nodes on one Redis: three `cabine serve` processes and a real `redis-server` on
//! loopback. A room is served by one node and any node redirects to it; new rooms spread by
//! load, never to a draining node; a killed node leaves the registry and its rooms can be
//! placed again; a store outage drops no media and leaves every room with one owner.

use std::time::Duration;

use crate::common::cluster::{free_port, publish, three_nodes, token, until, Node, Redis, SECRET};
use crate::common::{payload, PACKETS};
use cabine_client::{
    ClientOptions, Codec, MediaKind, Publisher, RemoteTrack, Subscriber, TrackSpec,
};
use cabine_proto::Role;

/// A kiosk publishing a camera and a microphone to `whip`, and a doctor receiving them from
/// `whep`.
async fn consultation(whip: &str, whep: &str, room: &str) -> (Publisher, Subscriber) {
    let tracks = vec![
        TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8),
        TrackSpec::audio("kiosk-1", "microphone"),
    ];
    let publisher = Publisher::connect(
        whip,
        &token(room, Role::Kiosk, "kiosk-1"),
        tracks,
        ClientOptions::loopback(),
    )
    .await
    .expect("kiosk publishes over WHIP (redirected)");
    let opts = ClientOptions {
        recv_video: 1,
        recv_audio: 1,
        ..ClientOptions::loopback()
    };
    let doctor = Subscriber::connect(whep, &token(room, Role::Doctor, "dr-1"), opts)
        .await
        .expect("doctor subscribes over WHEP (redirected)");
    (publisher, doctor)
}

/// Sends `packets` packets per track, 10 ms apart, while `during` runs; checks the doctor got
/// every one, in order, on `tracks` (taken from the doctor at the first call, when the first
/// packets arrive; kept for the next calls). Returns the publisher and what `during` gave.
async fn stream_without_loss<T, F: std::future::Future<Output = T>>(
    publisher: Publisher,
    doctor: &Subscriber,
    tracks: &mut Vec<RemoteTrack>,
    packets: usize,
    during: F,
) -> (Publisher, T) {
    let sender = tokio::spawn(async move {
        for i in 0..packets {
            for (t, track) in publisher.tracks().iter().enumerate() {
                let inc = if track.kind() == MediaKind::Video {
                    900
                } else {
                    480
                };
                track.write_rtp(&payload(t, i), true, inc).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let receive = async {
        if tracks.is_empty() {
            *tracks = doctor
                .tracks(2, Duration::from_secs(15))
                .await
                .expect("two tracks arrive");
        }
        let reads = tracks.iter().map(|track| async move {
            let mut got = Vec::new();
            while got.len() < packets {
                match track.read_rtp_timeout(Duration::from_secs(3)).await {
                    Ok(p) => got.push(p.payload.to_vec()),
                    Err(_) => break,
                }
            }
            (track.id(), got)
        });
        futures_util::future::join_all(reads).await
    };
    let (got, out) = tokio::join!(receive, during);
    let publisher = sender.await.unwrap();
    for (t, label) in ["room-camera", "microphone"].iter().enumerate() {
        let (_, payloads) = got
            .iter()
            .find(|(id, _)| id == label)
            .expect("track received");
        assert_eq!(payloads.len(), packets, "{label}: packets received");
        let expected: Vec<Vec<u8>> = (0..packets).map(|i| payload(t, i)).collect();
        assert!(payloads == &expected, "{label}: payloads differ");
    }
    (publisher, out)
}

/// `GET /api/rooms{query}` at `base` with an operator token for every room.
async fn rooms_query(base: &str, query: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{base}/api/rooms{query}"))
        .bearer_auth(token("*", Role::Operator, "ops"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn room_nodes(view: &serde_json::Value, room: &str) -> Vec<String> {
    view["rooms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["room"] == room)
        .map(|r| r["node"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kiosk_given_node_a_for_a_room_on_b_is_redirected_and_media_flows() {
    let redis = Redis::start().await;
    let [a, b, c] = three_nodes(&redis).await;
    let room = "consult-redirect";
    redis.place(room, &b.id).await;

    // The kiosk is given A's URL, the doctor C's: both are sent to B.
    let (publisher, doctor) = consultation(
        &format!("{}/whip/{room}", a.base),
        &format!("{}/whep/{room}", c.base),
        room,
    )
    .await;
    let _publisher =
        stream_without_loss(publisher, &doctor, &mut Vec::new(), PACKETS, async {}).await;
    assert_eq!(redis.owner(room).await.as_deref(), Some("node-b"));

    // Any node shows the cluster's rooms; the filter keeps one node's.
    let view = c.rooms().await;
    assert_eq!(room_nodes(&view, room), ["node-b"], "{view}");
    let sessions = view["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room"] == room)
        .unwrap()["sessions"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(sessions, 2);
    let only_a = rooms_query(&c.base, "?node=node-a").await;
    assert!(room_nodes(&only_a, room).is_empty(), "{only_a}");
    assert_eq!(only_a["nodes"].as_array().unwrap().len(), 1, "{only_a}");
    let only_b = rooms_query(&c.base, "?node=node-b").await;
    assert_eq!(room_nodes(&only_b, room), ["node-b"], "{only_b}");

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The redirect keeps the path and the query.
    let r = client
        .post(format!("{}/whep/{room}?from=kiosk-1", a.base))
        .bearer_auth(token(room, Role::Doctor, "dr-3"))
        .header("content-type", "application/sdp")
        .body(crate::common::sdp_offer("recvonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/whep/{room}?from=kiosk-1", b.base)
    );
    // A bad token is refused where it arrives, not sent on.
    let r = client
        .post(format!("{}/whip/{room}", a.base))
        .bearer_auth("not-a-token")
        .header("content-type", "application/sdp")
        .body(crate::common::sdp_offer("sendonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The telemetry discovery for the room names B's QUIC endpoint (a redirect to B).
    let r = client
        .get(format!("{}/api/telemetry", a.base))
        .bearer_auth(token(room, Role::Kiosk, "kiosk-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("{}/api/telemetry", b.base)
    );

    // A WebSocket opened on A is told to go to B, then closed.
    use futures_util::StreamExt;
    let ws_url = format!(
        "{}/ws/{room}?token={}",
        a.base.replace("http://", "ws://"),
        token(room, Role::Doctor, "dr-2")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let msg: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(msg["type"], "redirect");
    assert_eq!(
        msg["url"],
        format!("{}/ws/{room}", b.base.replace("http://", "ws://"))
    );
    assert!(matches!(
        ws.next().await,
        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_rooms_spread_over_the_nodes_and_a_draining_node_gets_none() {
    let redis = Redis::start().await;
    let [a, b, c] = three_nodes(&redis).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/drain", c.base))
        .bearer_auth(token("*", Role::Operator, "ops"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A drained node with no room exits at once (out of the registry): either way A no longer
    // sees it as a node that takes rooms.
    until("A sees C draining or gone", || async {
        a.rooms().await["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["id"] != "node-c" || n["draining"] == true)
    })
    .await;

    // B already holds 8 rooms, A none: placement by load fills A first (19 and 11 would
    // even them out), where taking turns would give 15 each.
    for i in 0..8 {
        let room = format!("preload-{i}");
        redis.place(&room, &b.id).await;
        assert_eq!(
            publish(&a.base, &room, &format!("p-{i}")).await,
            (201, b.base.clone())
        );
    }
    until("A sees B's 8 rooms", || async {
        a.rooms().await["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "node-b" && n["rooms"] == 8)
    })
    .await;

    let mut on = std::collections::HashMap::<String, usize>::new();
    for i in 0..30 {
        let (status, base) = publish(&a.base, &format!("spread-{i}"), &format!("k-{i}")).await;
        assert_eq!(status, 201, "room {i}");
        *on.entry(base).or_default() += 1;
    }
    assert_eq!(on.get(&c.base), None, "the draining node got rooms: {on:?}");
    let (on_a, on_b) = (
        on.get(&a.base).copied().unwrap_or(0),
        on.get(&b.base).copied().unwrap_or(0),
    );
    assert!(
        on_a >= 17 && on_b >= 9,
        "by load A should get about 19 and B 11 of 30, got {on:?}"
    );
    // Every room has one owner, the node that serves it.
    for i in 0..30 {
        let owner = redis.owner(&format!("spread-{i}")).await.expect("leased");
        assert!(owner == "node-a" || owner == "node-b", "{owner}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_leaves_the_registry_and_its_rooms_are_placed_again() {
    let redis = Redis::start().await;
    let [a, mut b, _c] = three_nodes(&redis).await;
    let room = "consult-orphan";
    redis.place(room, &b.id).await;
    let (status, served) = publish(&a.base, room, "kiosk-1").await;
    assert_eq!((status, served.as_str()), (201, b.base.as_str()));

    // B's record always expires within NODE_TTL (3 s) of its last write: so a dead node leaves
    // the registry within the TTL, whenever it dies.
    let record = "cabine:node:node-b";
    let ttl_ms = cabine_server::cluster::NODE_TTL.as_millis() as i64;
    let pttl = redis.pttl(record).await;
    assert!(
        pttl > 0 && pttl <= ttl_ms,
        "B's record expires in {pttl} ms"
    );
    b.kill9();
    until("B's record expires", || async {
        let pttl = redis.pttl(record).await;
        assert!(pttl <= ttl_ms, "B's record expires in {pttl} ms");
        pttl == -2
    })
    .await;
    until("B leaves A's registry", || async {
        !a.rooms().await["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "node-b")
    })
    .await;
    // B's lease has not expired yet: the room is placed again anyway, on a live node.
    let (status, served) = publish(&a.base, room, "kiosk-2").await;
    assert_eq!(status, 201);
    assert_ne!(served, b.base);
    let owner = redis.owner(room).await.expect("leased");
    assert!(owner == "node-a" || owner == "node-c", "{owner}");
}

/// Whether `node`'s log has said `times` times that its store is unreachable (the degraded
/// mode, entered after two failed refreshes in a row).
fn degraded(node: &Node, times: usize) -> bool {
    std::fs::read_to_string(&node.log)
        .unwrap_or_default()
        .matches("places new rooms on itself")
        .count()
        >= times
}

/// Follows `room`'s telemetry discovery on `base` (a request that opens no session, so it
/// does not change the room's weight): the base URL it is redirected to, if any.
async fn redirected_to(base: &str, room: &str) -> Option<String> {
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{base}/api/telemetry"))
        .bearer_auth(token(room, Role::Kiosk, "k-probe"))
        .send()
        .await
        .unwrap();
    if r.status() != 307 {
        return None;
    }
    let l = r.headers()["location"].to_str().unwrap();
    l.strip_suffix("/api/telemetry").map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_drops_no_media_and_every_room_ends_with_one_owner() {
    let mut redis = Redis::start().await;
    let [a, b, _c] = three_nodes(&redis).await;
    let room = "consult-outage";
    redis.place(room, &a.id).await;
    let (publisher, doctor) = consultation(
        &format!("{}/whip/{room}", a.base),
        &format!("{}/whep/{room}", a.base),
        room,
    )
    .await;
    let mut tracks = Vec::new();

    // Redis frozen (SIGSTOP: connections open, no answer) for over 30 s while the
    // consultation streams 3,300 packets per track (33 s at least).
    redis.stop();
    let stopped = std::time::Instant::now();
    let (publisher, opened) = stream_without_loss(publisher, &doctor, &mut tracks, 3300, async {
        for n in [&a, &b] {
            let r = reqwest::get(format!("{}/healthz", n.base)).await.unwrap();
            assert_eq!(r.status(), 200);
        }
        until("A and B count the store as away", || async {
            degraded(&a, 1) && degraded(&b, 1)
        })
        .await;
        // A new consultation opens on the node asked, and its media flows.
        let (p, d) = consultation(
            &format!("{}/whip/opened-in-outage", b.base),
            &format!("{}/whep/opened-in-outage", b.base),
            "opened-in-outage",
        )
        .await;
        let (p, ()) = stream_without_loss(p, &d, &mut Vec::new(), 300, async {}).await;
        // A room opened on two nodes is served by both for now.
        assert_eq!(
            publish(&a.base, "split", "k-a").await,
            (201, a.base.clone())
        );
        assert_eq!(
            publish(&b.base, "split", "k-b").await,
            (201, b.base.clone())
        );
        while stopped.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (p, d)
    })
    .await;
    assert!(stopped.elapsed() >= Duration::from_secs(30));

    redis.resume();
    // One owner each; for the split room the fixed rule (same weight: the smaller id) keeps
    // it on A, and B redirects new requests there.
    let owners = [
        (room, "node-a"),
        ("opened-in-outage", "node-b"),
        ("split", "node-a"),
    ];
    for (r, owner) in owners {
        until(&format!("{r} owned by {owner}"), || async {
            redis.owner(r).await.as_deref() == Some(owner)
        })
        .await;
    }
    until("B redirects the split room to A", || async {
        redirected_to(&b.base, "split").await.as_deref() == Some(a.base.as_str())
    })
    .await;
    assert_eq!(
        publish(&b.base, "split", "k-b2").await,
        (201, a.base.clone())
    );

    // Redis killed (connections refused), then restarted empty, during media.
    let (publisher, ()) = stream_without_loss(publisher, &doctor, &mut tracks, 1500, async {
        redis.kill();
        assert!(
            redis.connection().await.is_none(),
            "redis refuses connections"
        );
        until("A and B count the store as away again", || async {
            degraded(&a, 2) && degraded(&b, 2)
        })
        .await;
        // Down: B still sends the split room's clients to A, which serves it.
        assert_eq!(
            redirected_to(&b.base, "split").await.as_deref(),
            Some(a.base.as_str())
        );
        assert_eq!(
            publish(&b.base, "split", "k-b3").await,
            (201, a.base.clone())
        );
        redis.restart_empty().await;
        for (r, owner) in owners {
            until(&format!("{r} re-asserted by {owner}"), || async {
                redis.owner(r).await.as_deref() == Some(owner)
            })
            .await;
        }
    })
    .await;
    // Back: the same owners serve the same rooms.
    until("B still redirects the split room to A", || async {
        redirected_to(&b.base, "split").await.as_deref() == Some(a.base.as_str())
    })
    .await;
    assert_eq!(
        redirected_to(&a.base, "opened-in-outage").await.as_deref(),
        Some(b.base.as_str())
    );
    let view = a.rooms().await;
    assert_eq!(room_nodes(&view, room), ["node-a"], "{view}");
    drop((publisher, opened));
}

/// `GET /metrics` on an admin listener.
async fn metrics(admin: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the first series starting with `prefix` (labels included).
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_redis_url_is_an_error_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cabine"))
        .arg("serve")
        .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CABINE_HTTP__PUBLIC_URL", "http://127.0.0.1:1")
        .env("CABINE_ADMIN__LISTEN", "")
        .env("CABINE_AUTH__SECRET", SECRET)
        .env("CABINE_CLUSTER__REDIS_URL", "http//redis:6379")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster.redis_url"), "{err}");
    // A clustered node without its public URL is refused too (redirects name it).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cabine"))
        .arg("serve")
        .env("CABINE_ADMIN__LISTEN", "")
        .env("CABINE_AUTH__SECRET", SECRET)
        .env("CABINE_CLUSTER__REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.public_url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_without_its_store_serves_alone_then_joins_it() {
    let port = free_port();
    let admin = free_port();
    let node = Node::start_with(
        "node-x",
        &format!("redis://127.0.0.1:{port}/0"),
        &[("CABINE_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))],
    )
    .await;
    // Two failed refreshes in a row make the degraded mode (before, a new room gets 503 and
    // Retry-After: the store might only be slow).
    until("the degraded mode is logged", || async {
        degraded(&node, 1)
    })
    .await;
    // Degraded: rooms are placed here, counted, and the log says so once.
    assert_eq!(
        publish(&node.base, "alone-1", "k-1").await,
        (201, node.base.clone())
    );
    assert_eq!(
        publish(&node.base, "alone-2", "k-2").await,
        (201, node.base.clone())
    );
    let m = metrics(admin).await;
    assert_eq!(
        series(&m, "cabine_cluster_store_up{node=\"node-x\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(series(&m, "cabine_cluster_local_placements_total{node=\"node-x\"").unwrap() >= 2.0);
    // Every series names the node.
    assert!(
        m.lines()
            .filter(|l| l.starts_with("cabine_"))
            .all(|l| l.contains("node=\"node-x\"")),
        "{m}"
    );
    until("the degraded mode is logged", || async {
        std::fs::read_to_string(&node.log)
            .unwrap_or_default()
            .contains("cluster store unreachable")
    })
    .await;

    // The store comes up: the node registers and re-asserts its rooms.
    let redis = Redis::start_on(port).await;
    for r in ["alone-1", "alone-2"] {
        until(&format!("{r} re-asserted"), || async {
            redis.owner(r).await.as_deref() == Some("node-x")
        })
        .await;
    }
    until("store_up turns 1", || async {
        series(&metrics(admin).await, "cabine_cluster_store_up{") == Some(1.0)
    })
    .await;
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert_eq!(
        log.matches("places new rooms on itself").count(),
        1,
        "logged once"
    );

    // A registry record that does not parse is ignored and counted, never a panic.
    let mut c = redis.connection().await.unwrap();
    redis::pipe()
        .set("cabine:node:bogus", "{not a record")
        .sadd("cabine:nodes", "bogus")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    until("the bad record is counted", || async {
        series(
            &metrics(admin).await,
            "cabine_cluster_invalid_records_total{",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert_eq!(
        publish(&node.base, "alone-3", "k-3").await,
        (201, node.base.clone())
    );
    let view = node.rooms().await;
    assert_eq!(view["nodes"].as_array().unwrap().len(), 1, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operators_view_shows_every_nodes_rooms() {
    let redis = Redis::start().await;
    let [a, b, c] = three_nodes(&redis).await;
    redis.place("ops-on-b", &b.id).await;
    redis.place("ops-on-c", &c.id).await;
    assert_eq!(
        publish(&a.base, "ops-on-b", "k-1").await,
        (201, b.base.clone())
    );
    assert_eq!(
        publish(&a.base, "ops-on-c", "k-2").await,
        (201, c.base.clone())
    );
    let ops = |q: &'static str| {
        let base = a.base.clone();
        async move {
            reqwest::Client::new()
                .get(format!("{base}/api/ops{q}"))
                .bearer_auth(token("*", Role::Operator, "ops"))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let v = ops("").await;
    let mut nodes: Vec<&str> = v["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["node-b", "node-c"], "{v}");
    assert_eq!(v["cluster"].as_array().unwrap().len(), 3, "{v}");
    let v = ops("?node=node-c").await;
    let rooms = v["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{v}");
    assert_eq!(rooms[0]["node"], "node-c");
}

/// `cabine-kiosk dial` and the doctor's page (Chromium) are both given node A for a room held
/// by node B: the kiosk follows the 307s (WHIP, WHEP, telemetry discovery), the page the
/// WebSocket's redirect, and the cabin's media and vitals reach the page on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cabin_and_a_doctor_page_given_node_a_meet_on_node_b() {
    use crate::common::browser::{check_prerequisites, run_driver, SERIAL};
    use crate::common::kiosk::Kiosk;

    let dir = crate::common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    let redis = Redis::start().await;
    let [a, b, _c] = three_nodes(&redis).await;
    let room = "consult-cluster-page";
    redis.place(room, &b.id).await;

    // `cabine-kiosk dial`: the room camera, microphone and stethoscope, the oximeter every
    // 500 ms.
    let cabin = Kiosk::dial(&a.base, &token(room, Role::Kiosk, "kiosk-1"))
        .args(["--device-camera", "off", "--oximeter-ms", "500"])
        .spawn();

    let envs = [
        ("CABINE_URL", a.base.clone()),
        ("OWNER_URL", b.base.clone()),
        ("ROOM", room.to_owned()),
        ("DOCTOR_TOKEN", token(room, Role::Doctor, "dr-1")),
    ];
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&d, "cluster_consult.mjs", &envs, Duration::from_secs(180))
    })
    .await
    .unwrap();
    let cabin = cabin.interrupt().await;
    assert!(
        out.ok(),
        "the page did not follow its room to node B{}:\n{}\n{}\n--- the cabin ({}) ---\n{}",
        out.killed(),
        out.stdout,
        out.stderr,
        cabin.status,
        cabin.output
    );
    // Nothing of the room was opened on A.
    let local_a = rooms_query(&a.base, "?scope=node").await;
    assert!(room_nodes(&local_a, room).is_empty(), "{local_a}");
    assert!(local_a.get("nodes").is_none(), "{local_a}");
}

/// The operator's token is forwarded to the registry's nodes only at URLs of this node's own
/// scheme: a record read from the store naming an `https` URL (or, on an `https` node, an
/// `http` one) is listed as not answering and never contacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_token_goes_only_to_peers_of_the_same_scheme() {
    let redis = Redis::start().await;
    let a = Node::start("node-a", &redis).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let record = serde_json::json!({
        "id": "other", "url": format!("https://127.0.0.1:{port}"), "region": "",
        "media": "", "telemetry": "", "max_rooms": 10, "rooms": 0, "sessions": 0,
        "egress_pps": 0, "cpu_percent": 0.0, "draining": false
    });
    let mut c = redis.connection().await.unwrap();
    redis::pipe()
        .cmd("SET")
        .arg("cabine:node:other")
        .arg(record.to_string())
        .arg("PX")
        .arg(60_000)
        .sadd("cabine:nodes", "other")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    until("A lists the other node, not answering", || async {
        a.rooms().await["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "other" && n["answered"] == false)
    })
    .await;
    // Every view above asked the registry's nodes: none connected to the https one.
    let _ = a.rooms().await;
    assert!(
        listener.accept().is_err(),
        "node A connected to a peer of another scheme with the operator's token"
    );
}
