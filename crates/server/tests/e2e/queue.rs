//! The walk-in queue (issue 15): a cabin (the `cabine-kiosk dial --queue` binary) waits, a
//! doctor lists the queue and takes it over the API, and both meet in the room the server created, with media and vitals; the refusals (403, 404, 409,
//! 410, 503), cancel and expiry, the fleet, and — on a Redis cluster — a queue that survives
//! `kill -9` of the node that held it. The `cabine-kiosk` binary itself (`dial --queue`)
//! prints its position, is taken over the API and meets its doctor; Ctrl-C while it waits
//! cancels its ticket. Priority orders a specialty's queue.

use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Subscriber};
use cabine_proto::{Grant, Identity, Role};
use serde_json::{json, Value};

use crate::common;
use crate::common::cluster::{Node, Redis};
use crate::common::kiosk::Kiosk;

/// A request to `{base}{path}` with `token` and an optional JSON body: status and JSON body
/// (`Null` when the body is not JSON).
async fn call(
    method: &str,
    base: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A doctor's queue token: every room, grant `take`.
fn queue_doctor(tokens: &cabine_proto::jwt::Tokens, id: &str) -> String {
    tokens
        .mint(
            "*",
            Role::Doctor,
            Identity::parse(id).unwrap(),
            Duration::from_secs(600),
            Some(vec![Grant::Take]),
        )
        .unwrap()
}

/// A light cabin (`cabine-kiosk dial`): the room camera and microphone, the oximeter every
/// 250 ms.
fn cabin(base: &str, token: &str) -> Kiosk {
    Kiosk::dial(base, token)
        .args([
            "--no-subscribe",
            "--device-camera",
            "off",
            "--stethoscope",
            "off",
        ])
        .args(["--fps", "10", "--video-kbps", "200", "--oximeter-ms", "250"])
}

/// A position line of `cabine-kiosk dial --queue`
/// (`ticket T: position P, estimated wait W s`): the ticket, the position and the wait.
fn position(line: &str) -> (String, u64, u64) {
    let parsed = line.strip_prefix("ticket ").and_then(|l| {
        let (ticket, rest) = l.split_once(": position ")?;
        let (pos, rest) = rest.split_once(", estimated wait ")?;
        let wait = rest.strip_suffix(" s")?;
        Some((ticket.to_owned(), pos.parse().ok()?, wait.parse().ok()?))
    });
    parsed.unwrap_or_else(|| panic!("not a position line: {line:?}"))
}

/// Once the cabin publishes its two tracks in `room` on `base` (seen with the operator token
/// `ops`), the doctor joins with `token`: the tracks carry media, and a vital measurement
/// arrives on the telemetry data channel.
async fn doctor_sees_media_and_vitals(base: &str, ops: &str, room: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = common::rooms_at(base, ops).await;
        let published: usize = v["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["room"] == room)
            .flat_map(|r| r["sessions"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["connected"] == true)
            .map(|s| s["published"].as_array().map_or(0, Vec::len))
            .sum();
        if published >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cabin did not publish in its room: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opts = ClientOptions {
        data_channel: true,
        recv_video: 1,
        recv_audio: 1,
        ..ClientOptions::loopback()
    };
    let doctor = Subscriber::connect(&format!("{base}/whep/{room}"), token, opts)
        .await
        .expect("the doctor subscribes to the queue's room");
    let tracks = doctor
        .tracks(2, Duration::from_secs(30))
        .await
        .expect("the cabin's tracks");
    for t in &tracks {
        t.read_rtp_timeout(Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("media on {}: {e}", t.id()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no vital measurement reached the doctor"
        );
        if let Ok(m) = doctor.next_data(Duration::from_millis(200)).await {
            let v: Value = serde_json::from_slice(&m.data).unwrap_or(Value::Null);
            if v["frame"].get("measurement").is_some() {
                break;
            }
        }
    }
    let _ = doctor.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_cabin_is_taken_by_a_doctor_and_they_meet_with_media_and_vitals() {
    let s = common::start().await;
    let base = s.base.clone();
    let doctor = queue_doctor(&s.tokens, "dr-martin");

    // Cabin 1 dials with --queue; it prints its positions.
    let mut cabin1 = cabin(&base, &s.token("lobby", Role::Kiosk, "kiosk-pharmacie-1"))
        .args(["--queue", "--reason", "fièvre et toux depuis trois jours"])
        .args(["--subject", "Patient/123", "--site", "Pharmacie du Centre"])
        .spawn();
    let (_, first_position, first_wait) = position(&cabin1.line("ticket ").await);
    assert_eq!(first_position, 1);
    assert!(first_wait > 0, "a default estimate before any take");

    // Cabin 2 (plain HTTP) is second; its second POST answers 409 with the same ticket.
    let kiosk2 = s.token("lobby", Role::Kiosk, "kiosk-pharmacie-2");
    let (status, t2) = call("POST", &base, "/api/queue", &kiosk2, None).await;
    assert_eq!(status, 201, "{t2}");
    assert_eq!(t2["position"], 2, "{t2}");
    let ticket2 = t2["ticket"].as_str().unwrap().to_owned();
    let (status, again) = call("POST", &base, "/api/queue", &kiosk2, Some(json!({}))).await;
    assert_eq!(
        (status, again["ticket"].as_str()),
        (409, Some(ticket2.as_str())),
        "{again}"
    );

    // A kiosk token cannot list or take; nor can a doctor without `take`, nor a take token for
    // one room; a queue token opens no room's media.
    let plain_doctor = s.token("*", Role::Doctor, "dr-plain");
    let one_room = s.token_with("lobby", Role::Doctor, "dr-room", Some(vec![Grant::Take]));
    for token in [&kiosk2, &plain_doctor, &one_room] {
        assert_eq!(call("GET", &base, "/api/queue", token, None).await.0, 403);
        let path = format!("/api/queue/{ticket2}/take");
        assert_eq!(call("POST", &base, &path, token, None).await.0, 403);
    }
    let whep = reqwest::Client::new()
        .post(format!("{base}/whep/any-room"))
        .bearer_auth(&doctor)
        .header("content-type", "application/sdp")
        .body(common::sdp_offer("recvonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(whep.status().as_u16(), 403, "a queue token opened a room");

    // The doctor lists: cabin 1 first, pseudonymous, with its reason and wait.
    let (status, list) = call("GET", &base, "/api/queue", &doctor, None).await;
    assert_eq!(status, 200, "{list}");
    let rows = list["tickets"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    assert_eq!(rows[0]["reason"], "fièvre et toux depuis trois jours");
    assert_eq!(rows[0]["site"], "Pharmacie du Centre");
    assert_eq!(rows[0]["position"], 1);
    assert!(rows[0]["waited_s"].is_u64());
    assert!(!list.to_string().contains("kiosk-pharmacie"), "{list}");
    let ticket1 = rows[0]["ticket"].as_str().unwrap().to_owned();

    // The doctor takes cabin 1: a new room, a doctor token and the consultation page.
    let (status, taken) = call(
        "POST",
        &base,
        &format!("/api/queue/{ticket1}/take"),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 200, "{taken}");
    let room = taken["room"].as_str().unwrap().to_owned();
    let room_token = taken["token"].as_str().unwrap().to_owned();
    assert!(
        taken["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/consult/{room}#token={room_token}")),
        "{taken}"
    );
    // A second take of the same ticket is refused.
    let (status, _) = call(
        "POST",
        &base,
        &format!("/api/queue/{ticket1}/take"),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(
        "POST",
        &base,
        "/api/queue/nosuchticketnosuchticket/take",
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Cabin 2 moves up to 1.
    let path2 = format!("/api/queue/{ticket2}");
    let (status, t2) = call("GET", &base, &path2, &kiosk2, None).await;
    assert_eq!((status, t2["position"].as_u64()), (200, Some(1)), "{t2}");
    // Another kiosk cannot read it.
    let (status, _) = call(
        "GET",
        &base,
        &path2,
        &s.token("lobby", Role::Kiosk, "kiosk-x"),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // Cabin 1 got its room and dialled it: the doctor has its media and vitals.
    let ops = s.token("*", Role::Operator, "ops");
    doctor_sees_media_and_vitals(&base, &ops, &room, &room_token).await;

    // The fleet: cabin 1 in consultation, cabin 2 waiting (operators only).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, fleet) = call("GET", &base, "/api/kiosks", &ops, None).await;
        assert_eq!(status, 200, "{fleet}");
        let state = |id: &str| {
            fleet["kiosks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kiosk"] == id)
                .map(|k| (k["state"].as_str().unwrap_or("").to_owned(), k.clone()))
        };
        let one = state("kiosk-pharmacie-1");
        let two = state("kiosk-pharmacie-2");
        if let (Some((s1, k1)), Some((s2, _))) = (&one, &two) {
            if s1 == "in_consultation" && s2 == "waiting" {
                assert_eq!(k1["site"], "Pharmacie du Centre");
                assert!(
                    k1["devices"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|d| d == "pulse_oximeter"),
                    "{k1}"
                );
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the fleet did not show both: {fleet}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        call("GET", &base, "/api/kiosks", &kiosk2, None).await.0,
        403
    );
    assert_eq!(
        call(
            "GET",
            &base,
            "/api/kiosks",
            &s.token("lobby", Role::Operator, "o"),
            None
        )
        .await
        .0,
        403
    );
    // The ops view carries the fleet and the queue, pseudonymous.
    let (status, view) = call("GET", &base, "/api/ops", &ops, None).await;
    assert_eq!(status, 200);
    assert_eq!(view["queue"]["waiting"], 1, "{}", view["queue"]);
    assert!(view["fleet"].as_array().unwrap().len() >= 2);
    assert!(
        !view.to_string().contains("kiosk-pharmacie"),
        "identities in /api/ops"
    );
    // An operator of one room sees neither the service's fleet nor its queue.
    let (status, view) = call(
        "GET",
        &base,
        "/api/ops",
        &s.token("lobby", Role::Operator, "o"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert!(view.get("fleet").is_none(), "{view}");
    assert!(view.get("queue").is_none(), "{view}");

    // Stopped, the cabin reports the room it was admitted to and dialled.
    let exit = cabin1.interrupt().await;
    assert!(exit.status.success(), "{}", exit.output);
    assert!(
        exit.stdout.contains(&format!("taken: room {room}")),
        "{}",
        exit.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_cancel_expire_are_flagged_and_are_bounded() {
    let dir = std::env::temp_dir().join(format!("cabine-queue-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let audit_path = dir.join("audit.jsonl");
    let audit = audit_path.clone();
    let s = common::start_with(move |c| {
        c.audit.path = audit;
        // Long enough that a loaded runner takes kiosk-b's ticket before it expires.
        c.queue.ticket_ttl = Duration::from_secs(20);
        c.queue.unanswered_after = Duration::from_millis(300);
        c.queue.max_waiting = 2.try_into().unwrap();
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let base = s.base.clone();
    let doctor = queue_doctor(&s.tokens, "dr-durand");
    let k1 = s.token("lobby", Role::Kiosk, "kiosk-a");

    // Ctrl-C of a waiting `dial --queue` cancels its ticket.
    let mut waiting = cabin(&base, &k1).args(["--queue"]).spawn();
    let (ticket, _, _) = position(&waiting.line("ticket ").await);
    let exit = waiting.interrupt().await;
    assert!(exit.status.success(), "{}", exit.output);
    assert!(
        exit.stdout.iter().any(|l| l == "cancelled"),
        "{}",
        exit.output
    );
    let path = format!("/api/queue/{ticket}");
    assert_eq!(call("GET", &base, &path, &k1, None).await.0, 410);
    assert_eq!(
        call("POST", &base, &format!("{path}/take"), &doctor, None)
            .await
            .0,
        410
    );
    assert_eq!(call("DELETE", &base, &path, &k1, None).await.0, 410);

    // The event stream follows a ticket to its end.
    let (status, t) = call(
        "POST",
        &base,
        "/api/queue",
        &k1,
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    let mut events = reqwest::Client::new()
        .get(format!("{base}/api/queue/{ticket}/events?token={k1}"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);
    let mut seen = String::new();
    while !seen.contains("\"waiting\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .expect("a first event")
            .unwrap()
            .expect("the stream is open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(
        call("DELETE", &base, &format!("/api/queue/{ticket}"), &k1, None)
            .await
            .0,
        204
    );
    while !seen.contains("\"cancelled\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .expect("the cancel event")
            .unwrap();
        match chunk {
            Some(c) => seen.push_str(&String::from_utf8_lossy(&c)),
            None => break,
        }
    }
    assert!(seen.contains("\"cancelled\""), "{seen}");

    // Bounded: two wait, the third is refused (503, naming the key).
    let kb = s.token("lobby", Role::Kiosk, "kiosk-b");
    let kc = s.token("lobby", Role::Kiosk, "kiosk-c");
    let (_, tb) = call("POST", &base, "/api/queue", &k1, None).await;
    assert_eq!(call("POST", &base, "/api/queue", &kb, None).await.0, 201);
    let (status, full) = call("POST", &base, "/api/queue", &kc, None).await;
    assert_eq!(
        (status, full["limit"].as_str()),
        (503, Some("queue.max_waiting")),
        "{full}"
    );
    // Bad requests: a reason too long, a subject that is not a FHIR reference.
    let long = json!({ "reason": "x".repeat(1000) });
    assert_eq!(
        call("POST", &base, "/api/queue", &kc, Some(long)).await.0,
        400
    );
    for bad in ["123; DROP", "Practitioner/1"] {
        let bad = json!({ "subject": bad });
        assert_eq!(
            call("POST", &base, "/api/queue", &kc, Some(bad)).await.0,
            400,
            "the export needs a Patient"
        );
    }
    // Unknown ticket: 404.
    assert_eq!(
        call(
            "GET",
            &base,
            "/api/queue/nosuchticketnosuchticket",
            &k1,
            None
        )
        .await
        .0,
        404
    );

    // Unanswered past 300 ms: flagged in the ops view and the metric; expired after 20 s (410).
    let ops = s.token("*", Role::Operator, "ops");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, view) = call("GET", &base, "/api/ops", &ops, None).await;
        if view["queue"]["unanswered"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not flagged: {}", view["queue"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("http://{}/metrics", s.server.admin_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let unanswered: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cabine_queue_unanswered_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no unanswered metric:\n{metrics}"));
    assert!(unanswered >= 2, "{unanswered} flagged");
    for line in [
        "cabine_queue_refused_total{limit=\"max_waiting\"} 1",
        "cabine_queue_tickets_total{outcome=\"cancelled\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // A flagged ticket can still be taken.
    let (_, list) = call("GET", &base, "/api/queue", &doctor, None).await;
    let flagged_b = list["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["ticket"] != tb["ticket"])
        .expect("kiosk-b's ticket")
        .clone();
    assert_eq!(flagged_b["flagged"], true, "{list}");
    let take_b = format!("/api/queue/{}/take", flagged_b["ticket"].as_str().unwrap());
    assert_eq!(call("POST", &base, &take_b, &doctor, None).await.0, 200);
    let path = format!("/api/queue/{}", tb["ticket"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(45);
    while call("GET", &base, &path, &k1, None).await.0 != 410 {
        assert!(Instant::now() < deadline, "the ticket did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        call("POST", &base, &format!("{path}/take"), &doctor, None)
            .await
            .0,
        410
    );

    // Every step is in the audit log, under its actor's identity.
    let wanted = [
        ("queue_enqueue", "kiosk-a"),
        ("queue_cancel", "kiosk-a"),
        ("queue_refused", "kiosk-c"),
        ("queue_unanswered", "kiosk-b"),
        ("queue_expired", "kiosk-a"),
        ("queue_refused", "dr-durand"),
        ("queue_take", "dr-durand"),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&audit_path).unwrap_or_default();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(event, who)| {
                !lines
                    .iter()
                    .any(|l| l["event"] == *event && l["identity"] == *who)
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "audit lines missing: {missing:?}\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a Redis cluster: tickets created on node A (one taken there) survive `kill -9` of A;
/// node B lists and takes the other, the kiosks get their rooms from B and C, and the cabin
/// taken on B meets its doctor there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_queue_survives_the_death_of_the_node_that_held_it() {
    let redis = Redis::start().await;
    let (a, b, c) = tokio::join!(
        Node::start("node-a", &redis),
        Node::start("node-b", &redis),
        Node::start("node-c", &redis)
    );
    let mut a = a;
    let tokens = cabine_proto::jwt::Tokens::new(common::cluster::SECRET.as_bytes());
    let doctor = queue_doctor(&tokens, "dr-cluster");
    let k1 = common::cluster::token("lobby", Role::Kiosk, "kiosk-c1");
    let k2 = common::cluster::token("lobby", Role::Kiosk, "kiosk-c2");

    let (s1, t1) = call(
        "POST",
        &a.base,
        "/api/queue",
        &k1,
        Some(json!({"reason": "r1"})),
    )
    .await;
    let (s2, t2) = call(
        "POST",
        &a.base,
        "/api/queue",
        &k2,
        Some(json!({"reason": "r2"})),
    )
    .await;
    assert_eq!((s1, s2), (201, 201), "{t1} {t2}");
    let (ticket1, ticket2) = (
        t1["ticket"].as_str().unwrap().to_owned(),
        t2["ticket"].as_str().unwrap().to_owned(),
    );
    // Node A takes ticket 2, then dies without a word.
    let (status, taken2) = call(
        "POST",
        &a.base,
        &format!("/api/queue/{ticket2}/take"),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 200, "{taken2}");
    a.kill9();

    // A stops renewing its record: once it is stale in B's view (two refreshes), B places
    // no new room there, although A is still in the registry.
    let ops = common::cluster::token("*", Role::Operator, "ops");
    let a_listed = |v: &Value, stale: Option<bool>| {
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["id"] == "node-a" && stale.is_none_or(|s| n["stale"] == s))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call("GET", &b.base, "/api/ops", &ops, None).await;
        if !a_listed(&v, Some(false)) {
            break;
        }
        assert!(Instant::now() < deadline, "A never became stale: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B lists the queue A held and takes ticket 1; a second take on C is refused.
    let (status, list) = call("GET", &b.base, "/api/queue", &doctor, None).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["ticket"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [ticket1.as_str()], "{list}");
    let (status, taken1) = call(
        "POST",
        &b.base,
        &format!("/api/queue/{ticket1}/take"),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 200, "{taken1}");
    assert_eq!(
        call(
            "POST",
            &c.base,
            &format!("/api/queue/{ticket1}/take"),
            &doctor,
            None
        )
        .await
        .0,
        409
    );

    // Both kiosks get their rooms from the surviving nodes.
    let (status, room2) = call("GET", &c.base, &format!("/api/queue/{ticket2}"), &k2, None).await;
    assert_eq!((status, &room2["room"]), (200, &taken2["room"]), "{room2}");
    let (status, room1) = call("GET", &b.base, &format!("/api/queue/{ticket1}"), &k1, None).await;
    assert_eq!((status, &room1["room"]), (200, &taken1["room"]), "{room1}");
    assert_eq!(room1["state"], "taken");

    // Cabin 1 dials its room through C (redirected to B, where it was placed) and the doctor
    // has its media and vitals there.
    let room = room1["room"].as_str().unwrap().to_owned();
    let cabin1 = cabin(&c.base, room1["token"].as_str().unwrap()).spawn();
    let doctor_room_token = taken1["token"].as_str().unwrap().to_owned();
    // Placed on B (the least loaded live node; A, first by id, is stale): the cabin and the
    // doctor meet there.
    doctor_sees_media_and_vitals(&b.base, &ops, &room, &doctor_room_token).await;

    // The consultation taken on A works again once A has left the registry: cabin 2 dials
    // its room through C, the room is placed again on a live node, and its doctor meets it
    // there.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = call("GET", &c.base, "/api/ops", &ops, None).await;
        if !a_listed(&v, None) {
            break;
        }
        assert!(Instant::now() < deadline, "A never left the registry: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let room_of_2 = room2["room"].as_str().unwrap().to_owned();
    let cabin2 = cabin(&c.base, room2["token"].as_str().unwrap()).spawn();
    // Where it went: the node whose rooms list it (B holds room 1, so C by load).
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let mut found = None;
        for base in [&b.base, &c.base] {
            let v = common::rooms_at(base, &ops).await;
            if v["rooms"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["room"] == room_of_2.as_str())
            {
                found = Some(base.clone());
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "room 2 was not placed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        holder, c.base,
        "room 2 re-placed on the least loaded live node"
    );
    doctor_sees_media_and_vitals(&holder, &ops, &room_of_2, taken2["token"].as_str().unwrap())
        .await;
    cabin2.interrupt().await;
    cabin1.interrupt().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cabine_kiosk_binary_queues_is_taken_and_ctrl_c_cancels() {
    let s = common::start().await;
    let base = s.base.clone();
    let doctor = queue_doctor(&s.tokens, "dr-binary");
    let ops = s.token("*", Role::Operator, "ops");

    // The binary prints its position; the doctor takes it over the API; it joins the room
    // and the doctor has its media and vitals.
    let kiosk_token = s.token("lobby", Role::Kiosk, "kiosk-binary-1");
    let mut queued = cabin(&base, &kiosk_token)
        .args(["--queue", "--reason", "toux"])
        .spawn();
    let line = queued.line("ticket ").await;
    let (ticket, rest) = line
        .strip_prefix("ticket ")
        .and_then(|l| l.split_once(": "))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(rest.starts_with("position 1,"), "{line}");
    let (status, taken) = call(
        "POST",
        &base,
        &format!("/api/queue/{ticket}/take"),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 200, "{taken}");
    let room = taken["room"].as_str().unwrap().to_owned();
    doctor_sees_media_and_vitals(&base, &ops, &room, taken["token"].as_str().unwrap()).await;
    // Ctrl-C ends the consultation; the cabin reports the room it was taken into.
    let exit = queued.interrupt().await;
    assert!(exit.status.success(), "{}", exit.output);
    assert!(
        exit.stdout.contains(&format!("taken: room {room}")),
        "{}",
        exit.output
    );

    // Ctrl-C while waiting cancels the ticket: 410 afterwards.
    let waiting_token = s.token("lobby", Role::Kiosk, "kiosk-binary-2");
    let mut waiting = cabin(&base, &waiting_token).args(["--queue"]).spawn();
    let line = waiting.line("ticket ").await;
    let ticket = line
        .strip_prefix("ticket ")
        .and_then(|l| l.split_once(':'))
        .map(|(t, _)| t.to_owned())
        .unwrap_or_else(|| panic!("{line}"));
    let exit = waiting.interrupt().await;
    assert!(exit.status.success(), "{}", exit.output);
    assert!(
        exit.stdout.iter().any(|l| l == "cancelled"),
        "{}",
        exit.output
    );
    let path = format!("/api/queue/{ticket}");
    let (status, body) = call("GET", &base, &path, &waiting_token, None).await;
    assert_eq!(status, 410, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_goes_first_within_its_specialty_then_arrival_order() {
    let s = common::start().await;
    let base = s.base.clone();
    let doctor = queue_doctor(&s.tokens, "dr-order");
    let mut tickets = Vec::new();
    for (kiosk, body) in [
        ("kiosk-o1", json!({})),
        ("kiosk-o2", json!({"priority": true})),
        ("kiosk-o3", json!({"specialty": "cardiology"})),
        ("kiosk-o4", json!({})),
        ("kiosk-o5", json!({"priority": true})),
    ] {
        // Arrival times a millisecond apart at least: the order is by arrival, not by id.
        let before = std::time::SystemTime::now();
        while std::time::SystemTime::now()
            .duration_since(before)
            .unwrap_or_default()
            < Duration::from_millis(2)
        {
            tokio::task::yield_now().await;
        }
        let token = s.token("lobby", Role::Kiosk, kiosk);
        let (status, t) = call("POST", &base, "/api/queue", &token, Some(body)).await;
        assert_eq!(status, 201, "{t}");
        tickets.push((t["ticket"].as_str().unwrap().to_owned(), token));
    }
    let id = |i: usize| tickets[i].0.clone();
    let (status, list) = call("GET", &base, "/api/queue?specialty=general", &doctor, None).await;
    assert_eq!(status, 200, "{list}");
    let order: Vec<(String, u64)> = list["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["ticket"].as_str().unwrap().to_owned(),
                t["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![(id(1), 1), (id(4), 2), (id(0), 3), (id(3), 4)],
        "priority first (in arrival order), then the others in arrival order"
    );
    // Each kiosk sees its own position; cardiology is a queue of its own.
    for (i, want) in [(1, 1), (4, 2), (0, 3), (3, 4), (2, 1)] {
        let (ticket, token) = &tickets[i];
        let (status, v) = call("GET", &base, &format!("/api/queue/{ticket}"), token, None).await;
        assert_eq!((status, v["position"].as_u64()), (200, Some(want)), "{v}");
    }
    // Taking the first moves everyone up.
    let (status, _) = call(
        "POST",
        &base,
        &format!("/api/queue/{}/take", id(1)),
        &doctor,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (ticket, token) = &tickets[0];
    let (_, v) = call("GET", &base, &format!("/api/queue/{ticket}"), token, None).await;
    assert_eq!(v["position"], 2, "{v}");
}

/// A cluster with no room left: the take is refused (503) before the ticket moves, and the
/// patient keeps waiting at its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_the_cluster_cannot_place_leaves_the_ticket_waiting() {
    let redis = Redis::start().await;
    let node = Node::start_with(
        "node-full",
        &redis.url(),
        &[("CABINE_CLUSTER__MAX_ROOMS", "1".into())],
    )
    .await;
    let tokens = cabine_proto::jwt::Tokens::new(common::cluster::SECRET.as_bytes());
    let doctor = queue_doctor(&tokens, "dr-full");
    let mut tickets = Vec::new();
    for kiosk in ["kiosk-f1", "kiosk-f2"] {
        let token = common::cluster::token("lobby", Role::Kiosk, kiosk);
        let (status, t) = call("POST", &node.base, "/api/queue", &token, None).await;
        assert_eq!(status, 201, "{t}");
        tickets.push((t["ticket"].as_str().unwrap().to_owned(), token));
    }
    // The first take fills the node's only room.
    let take = |id: &str| format!("/api/queue/{id}/take");
    let (status, first) = call("POST", &node.base, &take(&tickets[0].0), &doctor, None).await;
    assert_eq!(status, 200, "{first}");
    let (status, refused) = call("POST", &node.base, &take(&tickets[1].0), &doctor, None).await;
    assert_eq!(status, 503, "{refused}");
    let (ticket, token) = &tickets[1];
    let (status, v) = call(
        "GET",
        &node.base,
        &format!("/api/queue/{ticket}"),
        token,
        None,
    )
    .await;
    assert_eq!(
        (status, v["state"].as_str(), v["position"].as_u64()),
        (200, Some("waiting"), Some(1)),
        "{v}"
    );
}

/// Ticket records are bounded: a kiosk's new ticket replaces its previous record, and the
/// service keeps at most `queue.max_records` (503 naming the key, counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_records_are_bounded_per_kiosk_and_over_the_service() {
    let s = common::start_with(|c| {
        c.queue.max_records = 2.try_into().unwrap();
        c.queue.max_waiting = 2.try_into().unwrap();
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let base = s.base.clone();
    let k1 = s.token("lobby", Role::Kiosk, "kiosk-r1");
    // An enqueue/cancel loop keeps one record for the kiosk.
    let mut previous: Option<String> = None;
    for _ in 0..5 {
        let (status, t) = call("POST", &base, "/api/queue", &k1, None).await;
        assert_eq!(status, 201, "{t}");
        let ticket = t["ticket"].as_str().unwrap().to_owned();
        if let Some(p) = &previous {
            let path = format!("/api/queue/{p}");
            assert_eq!(
                call("GET", &base, &path, &k1, None).await.0,
                404,
                "replaced"
            );
        }
        let path = format!("/api/queue/{ticket}");
        assert_eq!(call("DELETE", &base, &path, &k1, None).await.0, 204);
        previous = Some(ticket);
    }
    let k2 = s.token("lobby", Role::Kiosk, "kiosk-r2");
    assert_eq!(call("POST", &base, "/api/queue", &k2, None).await.0, 201);
    let k3 = s.token("lobby", Role::Kiosk, "kiosk-r3");
    let (status, full) = call("POST", &base, "/api/queue", &k3, None).await;
    assert_eq!(
        (status, full["limit"].as_str()),
        (503, Some("queue.max_records")),
        "{full}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", s.server.admin_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cabine_queue_refused_total{limit=\"max_records\"} 1"),
        "{metrics}"
    );
}
