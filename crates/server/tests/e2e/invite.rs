//! Assisted teleconsultation and tele-expertise: an invite link admits exactly one specialist,
//! once, before it expires, and not after it was revoked (a doctor of the room mints, lists
//! and revokes; every step audited; a cap per room); with a cluster, redemption is once across
//! nodes (Redis); an assistant operates the devices only while the doctor allows it and can
//! never act on another participant's session nor take a patient from the queue; a still the doctor shares is seen by the
//! invitee while the room lives, and forgotten with it.

use crate::common::kiosk::Kiosk;
use crate::common::{self, post_sdp, sdp_offer, TestServer};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Subscriber};
use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::{Grant, Role};
use cabine_server::limits::Limit;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "consult-invite";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_link_admits_one_specialist_once_before_it_expires() {
    let dir = temp_dir("links");
    let audit = dir.join("audit.jsonl");
    let a = audit.clone();
    let s = common::start_with(move |c| {
        c.audit.path = a;
        c.audit.fsync = cabine_server::audit::Fsync::Always;
        c.limits.invites_per_room = 3.try_into().unwrap();
    })
    .await;
    let doctor = s.token(ROOM, Role::Doctor, "dr-1");

    // Minted by the doctor: a link to the invitee's page, the code in the fragment.
    let (status, inv) = mint(&s, &doctor, json!({"kind": "specialist"})).await;
    assert_eq!(status, 201, "{inv}");
    let url = inv["url"].as_str().unwrap();
    let (page, code) = url.split_once('#').unwrap();
    assert!(page.ends_with(&format!("/invite/{ROOM}")), "{url}");
    let code = code.strip_prefix("code=").unwrap().to_owned();
    assert!(code.starts_with(inv["id"].as_str().unwrap()));
    assert_eq!(inv["grants"], json!(["publish", "subscribe"]));
    let page = reqwest::get(format!("{}/invite/{ROOM}", s.base))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("/app/invite.js"));

    // Redeemed once: a token of the room, role assistant, named after the invite.
    let (status, got) = redeem(&s, &code).await;
    assert_eq!(status, 200, "{got}");
    let claims = s.tokens.verify(got["token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.role, Role::Assistant);
    assert_eq!(claims.room, ROOM);
    let invitee = format!("specialist-{}", inv["id"].as_str().unwrap().to_lowercase());
    assert_eq!(claims.sub.as_str(), invitee);
    assert_eq!(claims.grants, Some(vec![Grant::Publish, Grant::Subscribe]));
    // The token works: the specialist subscribes to the room.
    let (status, whep_headers, body) = post_sdp(
        &format!("{}/whep/{ROOM}", s.base),
        got["token"].as_str(),
        "application/sdp",
        sdp_offer("recvonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let whep_session = whep_headers["location"].to_str().unwrap().to_owned();
    // Never twice.
    let (status, body) = redeem(&s, &code).await;
    assert_eq!(status, 409, "{body}");
    // Unknown or malformed codes.
    let (id, _) = code.split_once('.').unwrap();
    let (status, _) = redeem(&s, &format!("{id}.{}", "x".repeat(32))).await;
    assert_eq!(status, 404);
    let (status, _) = redeem(&s, &format!("{}.{}", "y".repeat(12), "x".repeat(32))).await;
    assert_eq!(status, 404);
    let (status, _) = redeem(&s, "nope").await;
    assert_eq!(status, 400);

    // Expired: refused as such (410), after the list shows it expired.
    let (status, short) = mint(&s, &doctor, json!({"kind": "interpreter", "ttl_s": 1})).await;
    assert_eq!(status, 201, "{short}");
    let short_code = code_of(&short);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = list(&s, &doctor).await;
        let state = list["invites"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == short["id"])
            .map(|i| i["state"].clone());
        if state == Some(json!("expired")) {
            break;
        }
        assert_eq!(state, Some(json!("pending")), "{list}");
        assert!(
            Instant::now() < deadline,
            "the invite never expired: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = redeem(&s, &short_code).await;
    assert_eq!(status, 410, "{body}");

    // Revoked: the link no longer works; a revocation is refused once used or gone.
    let (status, revoked) = mint(&s, &doctor, json!({"kind": "specialist"})).await;
    assert_eq!(status, 201, "{revoked}");
    let revoked_id = revoked["id"].as_str().unwrap();
    assert_eq!(revoke(&s, &doctor, revoked_id).await, 204);
    let (status, body) = redeem(&s, &code_of(&revoked)).await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(revoke(&s, &doctor, revoked_id).await, 410);
    // A redeemed invite is revoked too: its invitee is denied the room (a new session or
    // signalling refused) and its session is closed.
    assert_eq!(revoke(&s, &doctor, inv["id"].as_str().unwrap()).await, 204);
    let (status, _, body) = post_sdp(
        &format!("{}/whep/{ROOM}", s.base),
        got["token"].as_str(),
        "application/sdp",
        sdp_offer("recvonly"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let url = format!(
        "{}/ws/{ROOM}?token={}",
        s.base.replace("http://", "ws://"),
        got["token"].as_str().unwrap()
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("signalling of a revoked invitee: {:?}", other.map(|_| ())),
    }
    let gone = reqwest::Client::new()
        .delete(format!("{}{whep_session}", s.base))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(
        gone.status().as_u16(),
        404,
        "the invitee's session is closed"
    );
    assert_eq!(revoke(&s, &doctor, "abcdefabcdef").await, 404);
    let states: Vec<(String, String)> = list(&s, &doctor).await["invites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_owned(),
                i["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(states.contains(&(inv["id"].as_str().unwrap().into(), "redeemed".into())));
    assert!(states.contains(&(revoked_id.into(), "revoked".into())));

    // Only a doctor's token for this very room mints, lists, revokes; never beyond its grants.
    let none: Option<&str> = None;
    for (token, want) in [
        (Some(s.token(ROOM, Role::Kiosk, "kiosk-1")), 403),
        (got["token"].as_str().map(str::to_owned), 403),
        (Some(s.token("another-room", Role::Doctor, "dr-1")), 403),
        (Some(s.token("*", Role::Operator, "ops")), 403),
        (none.map(str::to_owned), 401),
    ] {
        let (status, body) = mint_with(&s, token.as_deref(), json!({"kind": "specialist"})).await;
        assert_eq!(status, want, "{body}");
    }
    let assistant = got["token"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(format!("{}/api/rooms/{ROOM}/invites", s.base))
        .bearer_auth(assistant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(revoke(&s, assistant, revoked_id).await, 403);
    let (status, _) = mint(
        &s,
        &doctor,
        json!({"kind": "specialist", "grants": ["moderate"]}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = mint(&s, &doctor, json!({"kind": "specialist", "ttl_s": 86400})).await;
    assert_eq!(status, 400);
    let (status, _) = mint(
        &s,
        &doctor,
        json!({"kind": "specialist", "grants": ["take"]}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = mint(&s, &doctor, json!({"kind": "surgeon"})).await;
    assert_eq!(status, 400);
    let narrowed = s.token_with(ROOM, Role::Doctor, "dr-2", Some(vec![Grant::Subscribe]));
    let (status, body) = mint(
        &s,
        &narrowed,
        json!({"kind": "orthoptist", "grants": ["subscribe", "commands"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // A cap on live invites per room (limits.invites_per_room = 3), counted.
    let before = s.server.limit_refusals(Limit::InvitesPerRoom);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(mint(&s, &doctor, json!({"kind": "interpreter"})).await.0);
    }
    assert_eq!(statuses, [201, 201, 201, 429]);
    assert_eq!(s.server.limit_refusals(Limit::InvitesPerRoom), before + 1);
    let (_, body) = mint(&s, &doctor, json!({"kind": "interpreter"})).await;
    assert_eq!(body["limit"], "invites_per_room", "{body}");

    // Who minted, who redeemed, who revoked, each as themselves; never the link's secret.
    let records = audit_until(&audit, |r| {
        r.iter().any(|r| r["event"] == "invite_revoked")
            && r.iter().any(|r| r["event"] == "invite_redeemed")
    })
    .await;
    let one = |event: &str| {
        records
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} record"))
            .clone()
    };
    let minted = one("invite_minted");
    assert_eq!(
        (&minted["identity"], &minted["role"]),
        (&json!("dr-1"), &json!("doctor"))
    );
    let redeemed = one("invite_redeemed");
    assert_eq!(redeemed["identity"], json!(invitee));
    assert_eq!(redeemed["role"], "assistant");
    assert_eq!(one("invite_revoked")["identity"], "dr-1");
    let text = std::fs::read_to_string(&audit).unwrap();
    let secret = code.split_once('.').unwrap().1;
    assert!(
        !text.contains(secret),
        "the link's secret reached the audit log"
    );
    assert!(text.contains("refused"), "refusals are audited");
    s.server.shutdown(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_a_link_is_redeemed_once_across_nodes() {
    let redis = common::cluster::Redis::start().await;
    let node = |id: &'static str| {
        let url = redis.url();
        let port = common::cluster::free_port();
        common::start_with(move |c| {
            c.http.listen = format!("127.0.0.1:{port}").parse().unwrap();
            c.http.public_url = format!("http://127.0.0.1:{port}");
            c.cluster.redis_url = url;
            c.cluster.node_id = id.into();
        })
    };
    let a = node("node-a").await;
    let b = node("node-b").await;
    let doctor = a.token(ROOM, Role::Doctor, "dr-1");
    let (status, inv) = mint(&a, &doctor, json!({"kind": "specialist"})).await;
    assert_eq!(status, 201, "{inv}");
    // The other node sees it (the store is shared), and redeems it.
    let listed = list(&b, &doctor).await;
    assert_eq!(listed["invites"][0]["id"], inv["id"], "{listed}");
    let code = code_of(&inv);
    let (status, got) = redeem(&b, &code).await;
    assert_eq!(status, 200, "{got}");
    // Then neither node redeems it again.
    for n in [&a, &b] {
        let (status, body) = redeem(n, &code).await;
        assert_eq!(status, 409, "{body}");
    }
    // Concurrent redemptions on both nodes: exactly one wins.
    let (_, inv) = mint(&b, &doctor, json!({"kind": "interpreter"})).await;
    let code = code_of(&inv);
    let (ra, rb) = tokio::join!(redeem(&a, &code), redeem(&b, &code));
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{ra:?} {rb:?}");
    a.server.shutdown(Duration::from_millis(100)).await;
    b.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assistants_operate_devices_only_while_the_doctor_allows_and_see_shared_stills() {
    let dir = temp_dir("assist");
    let audit = dir.join("audit.jsonl");
    let a = audit.clone();
    let s = common::start_with(move |c| {
        c.audit.path = a;
        c.audit.fsync = cabine_server::audit::Fsync::Always;
        c.limits.shared_stills_per_room = 2.try_into().unwrap();
    })
    .await;
    let room = "consult-assist";
    let base = s.base.clone();

    // The cabin, as `cabine-kiosk dial` runs it, with its blood pressure cuff; light media.
    let mut kiosk = Kiosk::dial(&base, &s.token(room, Role::Kiosk, "kiosk-1"))
        .args(["--no-subscribe", "--bp-duration-ms", "1000"])
        .light_media(5, 150)
        .spawn();
    let telemetry = s.server.telemetry().expect("telemetry enabled");
    let deadline = Instant::now() + Duration::from_secs(30);
    while telemetry.sidecar_stats().kiosks_connected == 0 {
        assert!(kiosk.running(), "the kiosk stopped:\n{}", kiosk.output());
        assert!(
            Instant::now() < deadline,
            "the kiosk's telemetry never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The doctor on signalling; the pharmacist (an assistant whose token even claims
    // `commands`, and `moderate`) and an orthoptist invited with `commands`, on data channels.
    let doctor = s.token(room, Role::Doctor, "dr-1");
    let mut dr_ws = ws_join(&s, room, &doctor).await;
    let pharmacist_token = s.token_with(
        room,
        Role::Assistant,
        "pharmacist-1",
        Some(vec![Grant::Subscribe, Grant::Commands, Grant::Moderate]),
    );
    let opts = || ClientOptions {
        data_channel: true,
        ..ClientOptions::loopback()
    };
    let pharmacist = Subscriber::connect(&format!("{base}/whep/{room}"), &pharmacist_token, opts())
        .await
        .unwrap();
    let bp = |id: u64| {
        format!(
            r#"{{"type":"command","request_id":{id},"channel_id":5,"name":"start_measurement"}}"#
        )
    };

    // Refused until the doctor allows it.
    let a = command(&pharmacist, &bp(1), 1).await;
    assert!(
        a["command_refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("not granted `commands`"),
        "{a}"
    );
    // An assistant cannot allow itself.
    let mut ph_ws = ws_join(&s, room, &pharmacist_token).await;
    send(
        &mut ph_ws,
        &ClientMsg::AllowCommands {
            identity: "pharmacist-1".into(),
            allow: true,
        },
    )
    .await;
    let ServerMsg::Error { code, .. } =
        recv_until(&mut ph_ws, |m| matches!(m, ServerMsg::Error { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(code, "forbidden");
    let a = command(&pharmacist, &bp(2), 2).await;
    assert!(a.get("command_refused").is_some(), "{a}");

    // The doctor allows it: the room hears of it, and the command reaches the cuff.
    send(
        &mut dr_ws,
        &ClientMsg::AllowCommands {
            identity: "pharmacist-1".into(),
            allow: true,
        },
    )
    .await;
    recv_until(&mut ph_ws, |m| {
        matches!(m, ServerMsg::CommandsAllowed { identity, allowed: true } if identity == "pharmacist-1")
    })
    .await;
    let a = command(&pharmacist, &bp(3), 3).await;
    let command_id = a["command_sent"]["command_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{a}"));
    let result = telemetry_until(&pharmacist, |v| {
        v["frame"]["command_result"]["command_id"].as_u64() == Some(command_id)
    })
    .await;
    assert_ne!(
        result["frame"]["command_result"]["outcome"], "rejected",
        "{result}"
    );

    // Revoked: refused again.
    send(
        &mut dr_ws,
        &ClientMsg::AllowCommands {
            identity: "pharmacist-1".into(),
            allow: false,
        },
    )
    .await;
    recv_until(&mut ph_ws, |m| {
        matches!(m, ServerMsg::CommandsAllowed { allowed: false, .. })
    })
    .await;
    let a = command(&pharmacist, &bp(4), 4).await;
    assert!(a.get("command_refused").is_some(), "{a}");
    // Only an assistant who is in the room can be allowed.
    send(
        &mut dr_ws,
        &ClientMsg::AllowCommands {
            identity: "nobody-here".into(),
            allow: true,
        },
    )
    .await;
    let ServerMsg::Error { code, .. } =
        recv_until(&mut dr_ws, |m| matches!(m, ServerMsg::Error { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(code, "no_participant");

    // Never on another participant's session, whatever its token claims: ending or
    // restarting the kiosk's (a WHIP session here) is refused.
    let (status, headers, body) = post_sdp(
        &format!("{base}/whip/{room}"),
        Some(&s.token(room, Role::Kiosk, "kiosk-2")),
        "application/sdp",
        sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let session = format!("{base}{}", headers["location"].to_str().unwrap());
    let r = reqwest::Client::new()
        .delete(&session)
        .bearer_auth(&pharmacist_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("moderate"));
    let r = reqwest::Client::new()
        .patch(&session)
        .bearer_auth(&pharmacist_token)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .header("if-match", "*")
        .body("a=ice-ufrag:wxyz\r\na=ice-pwd:abcdefghijklmnopqrstuvwxyz12\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Nor take a patient from the walk-in queue, even with a token that claims `take`.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/queue"))
        .bearer_auth(s.token("lobby", Role::Kiosk, "kiosk-q"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let ticket: Value = r.json().await.unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    for room in ["*", room] {
        let claims_take = s.token_with(
            room,
            Role::Assistant,
            "pharmacist-1",
            Some(vec![Grant::Take]),
        );
        let client = reqwest::Client::new();
        let take = client
            .post(format!("{base}/api/queue/{ticket}/take"))
            .bearer_auth(&claims_take)
            .send()
            .await
            .unwrap();
        assert_eq!(take.status().as_u16(), 403, "{room}");
        let list = client
            .get(format!("{base}/api/queue"))
            .bearer_auth(&claims_take)
            .send()
            .await
            .unwrap();
        assert_eq!(list.status().as_u16(), 403, "{room}");
    }

    // An orthoptist invited with `commands` drives the devices at once; its token carries no
    // `commands` (the doctor's allowance does), and the doctor can take it back.
    let (status, inv) = mint_in(
        &s,
        room,
        Some(&doctor),
        json!({"kind": "orthoptist", "grants": ["subscribe", "commands"]}),
    )
    .await;
    assert_eq!(status, 201, "{inv}");
    let (status, got) = redeem_in(&s, room, &code_of(&inv)).await;
    assert_eq!(status, 200, "{got}");
    let ortho_token = got["token"].as_str().unwrap().to_owned();
    let ortho_id = got["identity"].as_str().unwrap().to_owned();
    assert_eq!(
        s.tokens.verify(&ortho_token).unwrap().grants,
        Some(vec![Grant::Subscribe])
    );
    let ortho = Subscriber::connect(&format!("{base}/whep/{room}"), &ortho_token, opts())
        .await
        .unwrap();
    let a = command(&ortho, &bp(5), 5).await;
    assert!(a["command_sent"].is_object(), "{a}");
    send(
        &mut dr_ws,
        &ClientMsg::AllowCommands {
            identity: ortho_id.clone(),
            allow: false,
        },
    )
    .await;
    recv_until(&mut dr_ws, |m| {
        matches!(m, ServerMsg::CommandsAllowed { identity, allowed: false } if *identity == ortho_id)
    })
    .await;
    let a = command(&ortho, &bp(6), 6).await;
    assert!(a.get("command_refused").is_some(), "{a}");

    // A still the doctor shares: the room is told, the invitee fetches it (not cached).
    let mut ortho_ws = ws_join(&s, room, &ortho_token).await;
    let png: Vec<u8> = b"\x89PNG\r\n\x1a\n still of an eardrum".to_vec();
    let (status, shared) = share_still(&s, room, &doctor, png.clone()).await;
    assert_eq!(status, 201, "{shared}");
    let ServerMsg::StillShared {
        id,
        from,
        mime,
        bytes,
    } = recv_until(&mut ortho_ws, |m| {
        matches!(m, ServerMsg::StillShared { .. })
    })
    .await
    else {
        unreachable!()
    };
    assert_eq!(
        (from.as_str(), mime.as_str(), bytes),
        ("dr-1", "image/png", png.len() as u64)
    );
    assert_eq!(id, shared["id"].as_str().unwrap());
    let still_url = format!("{base}/api/rooms/{room}/stills/{id}");
    let r = reqwest::Client::new()
        .get(&still_url)
        .bearer_auth(&ortho_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().to_vec(), png);
    // Only a doctor shares; only the room's participants see; at most two per room here.
    let (status, _) = share_still(&s, room, &ortho_token, png.clone()).await;
    assert_eq!(status, 403);
    let r = reqwest::Client::new()
        .get(&still_url)
        .bearer_auth(s.token("another-room", Role::Doctor, "dr-9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let before = s.server.limit_refusals(Limit::SharedStillsPerRoom);
    assert_eq!(share_still(&s, room, &doctor, png.clone()).await.0, 201);
    assert_eq!(share_still(&s, room, &doctor, png.clone()).await.0, 429);
    assert_eq!(
        s.server.limit_refusals(Limit::SharedStillsPerRoom),
        before + 1
    );

    // Audited as the doctor.
    let records = audit_until(&audit, |r| {
        r.iter().any(|r| r["event"] == "commands_revoked")
            && r.iter().any(|r| r["event"] == "still_shared")
    })
    .await;
    let allowed = records
        .iter()
        .find(|r| r["event"] == "commands_allowed")
        .expect("the allowance is audited");
    assert_eq!(allowed["identity"], "dr-1");
    assert!(
        allowed["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("pharmacist-1")
            || allowed.to_string().contains("pharmacist-1"),
        "{allowed}"
    );

    // Everyone leaves: the room ends, and its stills and allowances go with it.
    for ws in [&mut dr_ws, &mut ph_ws, &mut ortho_ws] {
        send(ws, &ClientMsg::Leave).await;
    }
    let _ = pharmacist.close().await;
    let _ = ortho.close().await;
    kiosk.stop().await;
    let _ = reqwest::Client::new()
        .delete(&session)
        .bearer_auth(s.token(room, Role::Kiosk, "kiosk-2"))
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = reqwest::Client::new()
            .get(&still_url)
            .bearer_auth(&ortho_token)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 404 {
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
        assert!(Instant::now() < deadline, "the still outlived its room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.server.shutdown(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

// --- helpers -----------------------------------------------------------------------------------

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cabine-invite-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn code_of(invite: &Value) -> String {
    let url = invite["url"].as_str().unwrap();
    url.split_once("#code=").unwrap().1.to_owned()
}

async fn mint(s: &TestServer, token: &str, body: Value) -> (u16, Value) {
    mint_with(s, Some(token), body).await
}

async fn mint_with(s: &TestServer, token: Option<&str>, body: Value) -> (u16, Value) {
    mint_in(s, ROOM, token, body).await
}

async fn mint_in(s: &TestServer, room: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/rooms/{room}/invites", s.base))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn list(s: &TestServer, token: &str) -> Value {
    let r = reqwest::Client::new()
        .get(format!("{}/api/rooms/{ROOM}/invites", s.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

async fn revoke(s: &TestServer, token: &str, id: &str) -> u16 {
    reqwest::Client::new()
        .delete(format!("{}/api/rooms/{ROOM}/invites/{id}", s.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn redeem(s: &TestServer, code: &str) -> (u16, Value) {
    redeem_in(s, ROOM, code).await
}

async fn redeem_in(s: &TestServer, room: &str, code: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/rooms/{room}/invites/redeem", s.base))
        .json(&json!({ "code": code }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn share_still(s: &TestServer, room: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/rooms/{room}/stills", s.base))
        .bearer_auth(token)
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends a device command on the data channel; the answer to `request_id`.
async fn command(sub: &Subscriber, request: &str, request_id: u64) -> Value {
    sub.send_data(request, Duration::from_secs(10))
        .await
        .unwrap();
    telemetry_until(sub, |v| {
        ["command_sent", "command_refused"]
            .iter()
            .any(|k| v[k]["request_id"].as_u64() == Some(request_id))
    })
    .await
}

/// Reads the subscriber's data channels until a message satisfies `want` (20 s).
async fn telemetry_until(sub: &Subscriber, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            Instant::now() < deadline,
            "no such data-channel message in 20 s"
        );
        if let Ok(m) = sub.next_data(Duration::from_millis(200)).await {
            if let Ok(v) = serde_json::from_slice::<Value>(&m.data) {
                if want(&v) {
                    return v;
                }
            }
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a signalling session (no media) and waits for its welcome.
async fn ws_join(s: &TestServer, room: &str, token: &str) -> Ws {
    let url = format!(
        "{}/ws/{room}?token={token}",
        s.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    send(
        &mut ws,
        &ClientMsg::Join {
            subscribe: false,
            from: None,
        },
    )
    .await;
    recv_until(&mut ws, |m| matches!(m, ServerMsg::Welcome { .. })).await;
    ws
}

async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::Text(signal::to_text(msg).into()))
        .await
        .expect("websocket send");
}

async fn recv_until(ws: &mut Ws, want: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(15), ws.next())
            .await
            .expect("a message within 15 s")
            .expect("socket open")
            .expect("socket ok");
        if let Message::Text(t) = m {
            let m = signal::parse_server(&t).expect("valid server message");
            if want(&m) {
                return m;
            }
        }
    }
}

/// Polls the audit file until `done` holds for its records (10 s).
async fn audit_until(path: &Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if done(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the audit log never had the records: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pages (`tests/browser/invite_pages.mjs`, Debian's chromium): the doctor mints an
/// orthoptist's link on the consultation page, the link's page redeems it once and opens the
/// consultation, where the orthoptist measures the blood pressure; a second visit is refused;
/// a still the doctor shares shows on the orthoptist's page; the doctor allows a pharmacist
/// to operate the devices from its page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pages_invite_an_orthoptist_share_a_still_and_allow_a_pharmacist() {
    use crate::common::browser::{check_prerequisites, mint as browser_mint, run_driver, SERIAL};
    let dir = common::browser::dir();
    check_prerequisites(&dir);
    let _serial = SERIAL.lock().await;
    let s = common::start_with(|c| {
        c.media.disconnect_grace = Duration::from_secs(30);
    })
    .await;
    let room = "consult-invite-pages";
    let base = s.base.clone();

    // The cabin: a small room camera, its devices (cuff, otoscope stills) over QUIC.
    let kiosk = Kiosk::dial(&base, &s.token(room, Role::Kiosk, "kiosk-1"))
        .args(["--fps", "10", "--video-kbps", "300", "--stills", "on"])
        .args(["--device-camera", "off", "--stethoscope", "off"])
        .args(["--oximeter-ms", "500", "--bp-duration-ms", "1000"])
        .spawn();

    let envs = [
        ("CABINE_URL", base.clone()),
        ("ROOM", room.to_owned()),
        (
            "DOCTOR_TOKEN",
            browser_mint(&s.tokens, room, Role::Doctor, "dr-1"),
        ),
        (
            "PHARMACIST_TOKEN",
            browser_mint(&s.tokens, room, Role::Assistant, "pharmacist-1"),
        ),
    ];
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        run_driver(&d, "invite_pages.mjs", &envs, Duration::from_secs(240))
    })
    .await
    .expect("driver thread");
    let cabin = kiosk.interrupt().await;
    s.server.shutdown(Duration::from_secs(1)).await;
    println!("{}", out.stdout.trim_end());
    assert!(
        out.ok(),
        "the invite pages test failed ({}{}).\n--- node stdout ---\n{}\n--- node stderr ---\n{}\n\
         --- the cabin ({}) ---\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr,
        cabin.status,
        cabin.output
    );
}
