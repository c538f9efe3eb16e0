//! TURN with a real coturn (Debian's `turnserver`, started by each test on free loopback ports,
//! `use-auth-secret` with the secret Cabine has, TLS with a certificate the test makes):
//! credentials Cabine mints allocate over UDP (webrtc-rs' TURN client) and over TLS (a STUN
//! exchange on a rustls stream); forged, tampered and expired ones are refused by coturn; the
//! ICE servers reach clients as RFC 9725 `Link` headers on POST and OPTIONS, in the WebSocket
//! `welcome` and at `GET /api/ice-servers` (token-checked); `cabine-kiosk` with `relay_only`
//! publishes and subscribes through coturn, over UDP and over TLS, with nothing but the `Link`
//! headers; and deploy/'s coturn shares the secret and ports with cabine.
//!
//! The coturn harness is `common::coturn`.

use crate::common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::common::coturn::{
    allocate_tls, allocate_udp, ice_servers, relay_only_media, turn_credential, with_turn, Coturn,
    TlsAllocation, TURN_SECRET,
};
use cabine_client::{parse_ice_links, ClientOptions, Publisher, TrackSpec};
use cabine_proto::signal::{self, ClientMsg, ServerMsg};
use cabine_proto::Role;
use cabine_server::turn::{rest_password, IceServersReply, TurnConfig};
use futures_util::{SinkExt, StreamExt};

const ROOM: &str = "room-turn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_credentials_allocate_on_coturn_over_udp_and_tls() {
    let coturn = Coturn::start(TURN_SECRET);
    let urls = coturn.urls();
    let s = common::start_with(|c| with_turn(c, urls.clone())).await;
    let token = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let reply: IceServersReply = ice_servers(&s.base, Some(&token))
        .await
        .json()
        .await
        .unwrap();
    // turn.ttl (600 s), or the token's remaining life (600 s too) when it ends first.
    assert!(matches!(reply.ttl_s, Some(590..=600)), "{reply:?}");
    let turn = reply
        .ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .unwrap();
    assert_eq!(turn.urls, urls);
    let (user, pass) = turn_credential(&reply);

    let relayed = allocate_udp(coturn.addr(), &user, &pass)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "coturn refused Cabine's credential over UDP: {e}\n{}",
                coturn.log()
            )
        });
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let relayed = allocate_tls(&coturn, &user, &pass)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "coturn refused Cabine's credential over TLS: {e}\n{}",
                coturn.log()
            )
        });
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_and_expired_credentials_are_refused_by_coturn() {
    let coturn = Coturn::start(TURN_SECRET);
    let urls = coturn.urls();
    let s = common::start_with(|c| with_turn(c, urls)).await;
    let token = s.token(ROOM, Role::Doctor, "dr-1");
    let reply: IceServersReply = ice_servers(&s.base, Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let (user, pass) = turn_credential(&reply);

    // Forged: the right scheme with another secret.
    let forged = rest_password(b"not-the-coturn-secret-0123456789", &user);
    // Tampered: the expiry pushed a day later, the password kept.
    let (expiry, id) = user.split_once(':').unwrap();
    let later = format!("{}:{id}", expiry.parse::<u64>().unwrap() + 86_400);
    // Expired: minted with the right secret, but its lifetime ended a minute ago.
    let cfg = TurnConfig {
        urls: coturn.urls(),
        secret: TURN_SECRET.into(),
        secret_file: PathBuf::new(),
        ttl: Duration::from_secs(60),
    };
    let turn = cfg.load().unwrap().unwrap();
    let expired = turn.mint(SystemTime::now() - Duration::from_secs(120));
    assert!(expired.expires < SystemTime::now());

    for (what, u, p) in [
        ("forged", user.as_str(), forged.as_str()),
        ("tampered expiry", later.as_str(), pass.as_str()),
        (
            "expired",
            expired.username.as_str(),
            expired.password.as_str(),
        ),
    ] {
        let udp = allocate_udp(coturn.addr(), u, p).await;
        assert!(
            udp.as_ref().is_err_and(|e| e.contains("401")),
            "{what} credential over UDP: {udp:?}\n{}",
            coturn.log()
        );
        let tls = allocate_tls(&coturn, u, p).await;
        assert!(
            tls.as_ref().is_err_and(|e| e.contains("401")),
            "{what} credential over TLS: {tls:?}\n{}",
            coturn.log()
        );
    }
    // The same coturn accepts the genuine one: the refusals are about the credentials.
    allocate_udp(coturn.addr(), &user, &pass)
        .await
        .unwrap_or_else(|e| panic!("genuine credential refused: {e}\n{}", coturn.log()));
    s.server.shutdown(Duration::from_millis(100)).await;
}

/// A credential past its expiry allocates nothing on coturn: one that expires 5 s from now
/// allocates and refreshes, and once its expiry has passed coturn refuses (401) a new Allocate
/// over UDP and over TLS. An allocation made before the expiry is another matter: coturn still
/// grants its Refresh (it checks the expiry when a client authenticates anew, not on the
/// requests of an allocation it holds). README's TURN section states that limit and what bounds
/// it (user-quota, the peer policy); the last assertion fails if coturn changes, so the README
/// is corrected with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_past_its_expiry_allocates_nothing_new() {
    let coturn = Coturn::start(TURN_SECRET);
    let cfg = TurnConfig {
        urls: coturn.urls(),
        secret: TURN_SECRET.into(),
        secret_file: PathBuf::new(),
        ttl: Duration::from_secs(60),
    };
    let turn = cfg.load().unwrap().unwrap();
    // Minted 55 s ago with a 60 s lifetime: about 5 s left.
    let c = turn.mint(SystemTime::now() - Duration::from_secs(55));
    let (user, pass) = (c.username.as_str(), c.password.as_str());
    assert!(c.expires > SystemTime::now());

    let mut held = TlsAllocation::open(&coturn, user, pass)
        .await
        .unwrap_or_else(|e| panic!("allocation before expiry: {e}\n{}", coturn.log()));
    held.refresh(user, pass, Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("refresh before expiry: {e}\n{}", coturn.log()));

    // coturn reads the expiry in whole seconds: wait until a second past it.
    let past = c.expires + Duration::from_secs(1);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while SystemTime::now() < past {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not pass {past:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let udp = allocate_udp(coturn.addr(), user, pass).await;
    assert!(
        udp.as_ref().is_err_and(|e| e.contains("401")),
        "a new allocation over UDP after expiry: {udp:?}\n{}",
        coturn.log()
    );
    let tls = allocate_tls(&coturn, user, pass).await;
    assert!(
        tls.as_ref().is_err_and(|e| e.contains("401")),
        "a new allocation over TLS after expiry: {tls:?}\n{}",
        coturn.log()
    );
    let refreshed = held.refresh(user, pass, Duration::from_secs(600)).await;
    assert!(
        refreshed.is_ok(),
        "coturn now refuses the Refresh of an allocation whose credential expired \
         ({refreshed:?}): README's TURN section says it grants it, correct it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_reach_clients_in_link_headers_welcome_and_api() {
    let turn_urls = vec![
        "turns:turn.example.org:443?transport=tcp".to_string(),
        "turn:turn.example.org:3478?transport=udp".to_string(),
    ];
    let stun = "stun:stun.example.org:3478";
    let s = common::start_with(|c| {
        with_turn(c, turn_urls.clone());
        c.ice.servers = vec![stun.into()];
    })
    .await;
    let kiosk = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let check = |what: &str, servers: &[cabine_client::IceServer], seen: &mut Vec<String>| {
        let urls: Vec<&str> = servers.iter().map(|s| s.urls[0].as_str()).collect();
        assert_eq!(urls, [stun, &turn_urls[0], &turn_urls[1]], "{what}");
        assert!(
            servers[0].username.is_empty(),
            "{what}: STUN has no credential"
        );
        let (user, cred) = (&servers[1].username, &servers[1].credential);
        assert_eq!((user, cred), (&servers[2].username, &servers[2].credential));
        assert_eq!(*cred, rest_password(TURN_SECRET.as_bytes(), user), "{what}");
        let (expiry, id) = user.split_once(':').unwrap();
        let expiry: u64 = expiry.parse().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expiry > now + 500 && expiry <= now + 600, "{what}: {user}");
        assert!(
            !id.contains("kiosk") && !id.contains(ROOM),
            "{what}: {user}"
        );
        assert!(
            !seen.contains(user),
            "{what}: a fresh credential per session"
        );
        seen.push(user.clone());
    };
    let mut seen = Vec::new();
    let links = |h: &reqwest::header::HeaderMap| -> Vec<String> {
        h.get_all("link")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };

    // POST: 201 with the Link headers of RFC 9725 §4.6.
    let (status, h, body) = common::post_sdp(
        &format!("{}/whip/{ROOM}", s.base),
        Some(&kiosk),
        "application/sdp",
        common::sdp_offer("sendonly"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let raw = links(&h);
    assert_eq!(raw.len(), 3, "{raw:?}");
    for l in &raw[1..] {
        assert!(
            l.contains("rel=\"ice-server\"")
                && l.contains("username=\"")
                && l.contains("credential=\"")
                && l.contains("credential-type=\"password\""),
            "{l}"
        );
    }
    check(
        "POST",
        &parse_ice_links(raw.iter().map(String::as_str)),
        &mut seen,
    );

    // OPTIONS with a token for the room (WHIP and WHEP): fresh credentials.
    let client = reqwest::Client::new();
    for path in ["whip", "whep"] {
        let r = client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/{path}/{ROOM}", s.base),
            )
            .bearer_auth(&kiosk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let raw = links(r.headers());
        check(
            path,
            &parse_ice_links(raw.iter().map(String::as_str)),
            &mut seen,
        );
    }
    // OPTIONS without a token (a CORS preflight) or with another room's: STUN only, no
    // credential for anonymous callers.
    let other = s.token("another-room", Role::Kiosk, "kiosk-1");
    for token in [None, Some(other.as_str())] {
        let mut r = client.request(reqwest::Method::OPTIONS, format!("{}/whip/{ROOM}", s.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            links(r.headers()),
            [format!("<{stun}>; rel=\"ice-server\"")]
        );
    }

    // GET /api/ice-servers: 401 without a valid token, the servers with one.
    assert_eq!(ice_servers(&s.base, None).await.status(), 401);
    assert_eq!(ice_servers(&s.base, Some("not.a.jwt")).await.status(), 401);
    let r = ice_servers(&s.base, Some(&kiosk)).await;
    assert_eq!(r.status(), 200);
    let reply: IceServersReply = r.json().await.unwrap();
    let as_kiosk = |servers: &[signal::IceServer]| -> Vec<cabine_client::IceServer> {
        servers
            .iter()
            .flat_map(|s| {
                s.urls.iter().map(|u| cabine_client::IceServer {
                    urls: vec![u.clone()],
                    username: s.username.clone().unwrap_or_default(),
                    credential: s.credential.clone().unwrap_or_default(),
                })
            })
            .collect()
    };
    check("api", &as_kiosk(&reply.ice_servers), &mut seen);

    // The WebSocket welcome.
    let ws_url = format!(
        "{}/ws/{ROOM}?token={}",
        s.base.replace("http://", "ws://"),
        s.token(ROOM, Role::Doctor, "dr-1")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let join = signal::to_text(&ClientMsg::Join {
        subscribe: false,
        from: None,
    });
    ws.send(tokio_tungstenite::tungstenite::Message::text(join))
        .await
        .unwrap();
    let welcome = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("welcome within 10 s")
            .expect("socket open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = frame {
            if let Ok(ServerMsg::Welcome { ice_servers, .. }) = signal::parse_server(&t) {
                break ice_servers;
            }
        }
    };
    check("welcome", &as_kiosk(&welcome), &mut seen);
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiosk_relay_only_publishes_and_subscribes_through_coturn_over_udp() {
    let coturn = Coturn::start(TURN_SECRET);
    let s = common::start_with(|c| with_turn(c, coturn.urls()[..1].to_vec())).await;
    let kiosk = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let relay_only = ClientOptions {
        relay_only: true,
        ..ClientOptions::default()
    };

    // Without the server's ICE servers a relay-only client has no candidate: it cannot connect.
    let refused = Publisher::connect(
        &format!("{}/whip/{ROOM}", s.base),
        &kiosk,
        vec![TrackSpec::audio("kiosk-1", "microphone")],
        ClientOptions {
            endpoint_ice_servers: false,
            connect_timeout: Duration::from_secs(3),
            ..relay_only.clone()
        },
    )
    .await;
    assert!(refused.is_err(), "relay-only connected without TURN");

    // With them (no --turn): both directions through coturn.
    let doctor = s.token(ROOM, Role::Doctor, "dr-1");
    let ops = s.token("*", Role::Operator, "ops-1");
    // Given a UDP and a TLS URL, the clients cannot tell which relay ICE picks: no report, the
    // server says udp (what it sees of coturn).
    relay_only_media(&s.base, ROOM, (&kiosk, &doctor, &ops), relay_only, "udp")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", coturn.log()));
    let log = coturn.log();
    assert!(
        log.matches("ALLOCATE processed, success").count() >= 2,
        "coturn made no allocations:\n{log}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kiosk_relay_only_publishes_and_subscribes_through_coturn_over_tls() {
    let coturn = Coturn::start(TURN_SECRET);
    // The turns: URL alone: the kiosk's bridge carries its UDP TURN over TLS.
    let s = common::start_with(|c| with_turn(c, coturn.urls()[1..].to_vec())).await;
    let opts = ClientOptions {
        relay_only: true,
        // coturn's certificate is the test's own.
        accept_invalid_certs: true,
        ..ClientOptions::default()
    };
    // Only a turns: URL: the clients report TLS, and the server shows relay/tls.
    relay_only_media(
        &s.base,
        ROOM,
        (
            &s.token(ROOM, Role::Kiosk, "kiosk-1"),
            &s.token(ROOM, Role::Doctor, "dr-1"),
            &s.token("*", Role::Operator, "ops-1"),
        ),
        opts,
        "tls",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", coturn.log()));
    // Only the turns: URL was given: these allocations came over TLS.
    let log = coturn.log();
    assert!(
        log.matches("ALLOCATE processed, success").count() >= 2,
        "coturn made no allocations:\n{log}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}

/// deploy/: the compose coturn and cabine share the secret variable, and the ports of cabine's
/// TURN URLs are those `deploy/turn/turnserver.conf` listens on (443 for TLS, 3478 plain).
#[test]
fn deploy_coturn_shares_the_secret_and_ports_with_cabine() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy.join("docker-compose.yml")).unwrap())
            .unwrap();
    let services = &compose["services"];
    let env = &services["cabine"]["environment"];
    let secret = env["CABINE_TURN__SECRET"].as_str().unwrap();
    assert!(secret.starts_with("${CABINE_TURN__SECRET:?"), "{secret}");
    let command: Vec<&str> = services["coturn"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        command
            .iter()
            .any(|a| a.starts_with("--static-auth-secret=${CABINE_TURN__SECRET:?")),
        "{command:?}"
    );
    assert!(command.contains(&"/etc/coturn/turnserver.conf"));

    let conf = std::fs::read_to_string(deploy.join("turn/turnserver.conf")).unwrap();
    let key = |k: &str| -> Vec<String> {
        conf.lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{k}=")))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(key("tls-listening-port"), ["443"]);
    assert_eq!(key("listening-port"), ["3478"]);
    assert!(conf.lines().any(|l| l.trim() == "use-auth-secret"));
    assert!(key("static-auth-secret").is_empty(), "no secret in git");
    // Not an open relay: every peer denied but Cabine's media address (compose passes it),
    // no TCP relays, allocations per credential bounded.
    assert!(
        key("denied-peer-ip").contains(&"0.0.0.0-255.255.255.255".to_owned()),
        "every IPv4 peer denied: {:?}",
        key("denied-peer-ip")
    );
    assert!(
        key("denied-peer-ip").iter().any(|r| r.starts_with("::-")),
        "every IPv6 peer denied: {:?}",
        key("denied-peer-ip")
    );
    assert!(
        command
            .iter()
            .any(|a| a.starts_with("--allowed-peer-ip=${CABINE_MEDIA__ADVERTISE")),
        "{command:?}"
    );
    assert!(conf.lines().any(|l| l.trim() == "no-tcp-relay"));
    assert!(
        !key("user-quota").is_empty(),
        "allocations per credential bounded"
    );

    // Cabine's URLs, as its loader reads them, point at those ports.
    let urls = env["CABINE_TURN__URLS"].as_str().unwrap();
    let urls: toml::Value = format!("v = {urls}").parse::<toml::Table>().unwrap()["v"].clone();
    let ports: Vec<(bool, String)> = urls
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let u = u.as_str().unwrap();
            let tls = u.starts_with("turns:");
            let port = u.rsplit_once(':').unwrap().1.split('?').next().unwrap();
            (tls, port.to_owned())
        })
        .collect();
    assert!(ports.contains(&(true, "443".into())), "{ports:?}");
    for (tls, port) in &ports {
        assert_eq!(port, if *tls { "443" } else { "3478" }, "{ports:?}");
    }
}

/// A TURN credential never outlives the token it was minted for, and one identity gets at most
/// `limits.turn_credentials_per_minute` of them: then `/api/ice-servers` answers 429 (counted),
/// and a session's `Link` headers leave TURN out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_end_with_the_token_and_are_limited_per_identity() {
    use cabine_proto::Identity;
    use cabine_server::limits::Limit;
    let s = common::start_with(|c| {
        with_turn(c, vec!["turn:turn.example.org:3478".into()]);
        c.turn.ttl = Duration::from_secs(3600);
        c.limits.turn_credentials_per_minute = 3.try_into().unwrap();
    })
    .await;
    // A token valid for 2 minutes: the credential (1 h by turn.ttl) stops with it.
    let short = s
        .tokens
        .mint(
            ROOM,
            Role::Kiosk,
            Identity::parse("kiosk-1").unwrap(),
            Duration::from_secs(120),
            None,
        )
        .unwrap();
    let exp = s.tokens.verify(&short).unwrap().exp;
    let reply: IceServersReply = ice_servers(&s.base, Some(&short))
        .await
        .json()
        .await
        .unwrap();
    let (user, _) = turn_credential(&reply);
    let expiry: u64 = user.split_once(':').unwrap().0.parse().unwrap();
    assert_eq!(expiry, exp, "the credential expires with the token");
    assert!(reply.ttl_s.unwrap() <= 120, "{reply:?}");

    // Two more for kiosk-1 (OPTIONS mints too), then it is refused; another identity is not.
    let client = reqwest::Client::new();
    let r = client
        .request(reqwest::Method::OPTIONS, format!("{}/whip/{ROOM}", s.base))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get_all("link").iter().count() == 1);
    assert_eq!(ice_servers(&s.base, Some(&short)).await.status(), 200);
    let r = ice_servers(&s.base, Some(&short)).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["limit"], "turn_credentials_per_minute", "{body}");
    // A session's Link headers then carry no TURN credential (the session itself opens).
    let r = client
        .request(reqwest::Method::OPTIONS, format!("{}/whip/{ROOM}", s.base))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers().get_all("link").iter().count(), 0);
    let other = s.token(ROOM, Role::Doctor, "dr-1");
    assert_eq!(ice_servers(&s.base, Some(&other)).await.status(), 200);
    assert_eq!(s.server.limit_refusals(Limit::TurnCredentialRate), 2);
    s.server.shutdown(Duration::from_millis(100)).await;
}

/// A client's relay transport report on its session resource (`PATCH` with
/// `Cabine-Relay-Protocol`, what `cabine-kiosk` sends once connected): refused with 409 while
/// the server sees the session's selected pair unrelayed, 400 for a value other than
/// udp/tcp/tls, and refused for a token of another identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_on_a_session_are_refused_unless_relayed_and_its_own() {
    let s = common::start().await;
    let room = "room-relay-report";
    let token = s.token(room, Role::Kiosk, "kiosk-1");
    let publisher = Publisher::connect(
        &format!("{}/whip/{room}", s.base),
        &token,
        vec![TrackSpec::audio("kiosk-1", "microphone")],
        ClientOptions::loopback(),
    )
    .await
    .expect("publisher");
    let url = publisher.resource_url().to_owned();
    let patch = |token: String, value: &'static str| {
        let url = url.clone();
        async move {
            reqwest::Client::new()
                .patch(&url)
                .bearer_auth(token)
                .header("cabine-relay-protocol", value)
                .send()
                .await
                .expect("PATCH")
                .status()
                .as_u16()
        }
    };
    // Host UDP on loopback: once the server has selected the pair, `tls` is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut status = 0;
    while std::time::Instant::now() < deadline {
        status = patch(token.clone(), "tls").await;
        if status == 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 409, "a report on an unrelayed session is refused");
    assert_eq!(patch(token.clone(), "quic").await, 400);
    let other = s.token(room, Role::Kiosk, "kiosk-2");
    let refused = patch(other, "tls").await;
    assert!(
        (401..=404).contains(&refused),
        "another identity's report: {refused}"
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}
