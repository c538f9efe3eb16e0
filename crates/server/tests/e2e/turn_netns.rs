//! TURN over TLS on 443 from a network that lets nothing else out: as root, a network namespace
//! (a veth pair to the host) whose iptables rules drop every outgoing packet except TCP to
//! coturn's port 443 and to Cabine's HTTP port (signalling, HTTPS in a real hospital). coturn
//! listens on the host end of the pair; Cabine's media port is out of reach.
//!
//! In the namespace, a TURN allocation over UDP cannot get out, one over TLS on 443 with
//! Cabine's minted credential succeeds; `cabine-kiosk` (the library, `relay_only`, nothing but
//! the endpoint's `Link` headers) publishes and subscribes through coturn over TLS; then
//! Debian's chromium, inside the namespace, runs the kiosk page and the doctor's page with
//! `iceTransportPolicy: "relay"` on the ICE servers of the WebSocket `welcome`
//! (tests/browser/turn_relay.mjs): media flows both ways and each selected candidate pair is a
//! relay candidate allocated over TLS.
//!
//! Without root (no namespaces, no iptables) the test prints that it was skipped and why.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::coturn::{
    allocate_tls, allocate_udp, ice_servers, relay_only_media, turn_credential, with_turn, Coturn,
    TURN_SECRET,
};
use crate::common::netns;
use cabine_client::ClientOptions;
use cabine_proto::Role;
use cabine_server::turn::IceServersReply;

const ROOM: &str = "room-turn-netns";
const DRIVER_TIMEOUT: Duration = Duration::from_secs(200);
/// The pages' connections: the kiosk page's and the doctor's page's, publish and subscribe each.
const PAGE_CONNECTIONS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_relays_over_tls_443_when_nothing_else_gets_out() {
    let Some((dir, _serial, ns)) = netns::prepare("turn_netns").await else {
        return;
    };
    let plain = std::net::UdpSocket::bind((ns.host_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let coturn = Coturn::start_on(TURN_SECRET, ns.host_ip, plain, 443);
    let s = common::start_with(|c| {
        c.http.listen = SocketAddr::new(ns.host_ip.into(), 0);
        with_turn(c, coturn.urls());
        // Two cores for chromium, coturn and a debug-build server: be patient with ICE.
        c.media.disconnect_grace = Duration::from_secs(30);
        // /metrics, to read the sessions' transport gauge.
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    ns.only_tcp_to(&[443, s.server.http_addr().port()]);

    // From inside: TURN over UDP gets no answer, over TLS on 443 it allocates.
    let token = s.token(ROOM, Role::Kiosk, "kiosk-1");
    let reply: IceServersReply = ice_servers(&s.base, Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let (user, pass) = turn_credential(&reply);
    let (udp, tls) = ns.block_on(|| async {
        let udp = allocate_udp(coturn.addr(), &user, &pass).await;
        let tls = allocate_tls(&coturn, &user, &pass).await;
        (udp, tls)
    });
    assert!(udp.is_err(), "UDP got out of the namespace: {udp:?}");
    eprintln!(
        "turn_netns: UDP TURN from the namespace: {}",
        udp.unwrap_err()
    );
    tls.unwrap_or_else(|e| {
        panic!(
            "TURN over TLS 443 from the namespace: {e}\n{}",
            coturn.log()
        )
    });

    // cabine-kiosk inside, relay only, with the endpoint's ICE servers (its bridge carries the
    // webrtc stack's UDP TURN over TLS 443).
    let kiosk_room = "room-turn-netns-kiosk";
    let (base, kiosk, doctor, ops) = (
        s.base.clone(),
        s.token(kiosk_room, Role::Kiosk, "kiosk-1"),
        s.token(kiosk_room, Role::Doctor, "dr-1"),
        s.token("*", Role::Operator, "ops-1"),
    );
    // The kiosk takes the server's whole ICE server list (Link headers: turns: on 443, turn:
    // over udp and tcp on 3478), so its POSTs cannot say which transport it will use; once
    // connected it reads its selected pair's relay candidate (whose TURN client only the TLS
    // bridge carried: here only TCP 443 reaches coturn) and reports `tls` on the session.
    let reply: IceServersReply = ice_servers(&s.base, Some(&kiosk))
        .await
        .json()
        .await
        .expect("ICE servers");
    let urls: Vec<String> = reply
        .ice_servers
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect();
    assert!(
        urls.iter().any(|u| u.starts_with("turns:")) && urls.iter().any(|u| u.starts_with("turn:")),
        "the server hands out a mixed TURN list: {urls:?}"
    );
    let opts = ClientOptions {
        relay_only: true,
        endpoint_ice_servers: true,
        // coturn's certificate is the test's own.
        accept_invalid_certs: true,
        ..ClientOptions::default()
    };
    let media =
        ns.block_on(|| relay_only_media(&base, kiosk_room, (&kiosk, &doctor, &ops), opts, "tls"));
    media.unwrap_or_else(|e| {
        panic!(
            "cabine-kiosk relay-only from the namespace: {e}\n{}",
            coturn.log()
        )
    });

    // Chromium inside the namespace, relay only.
    let envs = vec![
        ("CABINE_URL", s.base.clone()),
        ("ROOM", ROOM.to_owned()),
        ("KIOSK_TOKEN", token.clone()),
        ("DOCTOR_TOKEN", s.token(ROOM, Role::Doctor, "dr-1")),
        ("RELAY_PROTOCOL", "tls".to_owned()),
        (
            "CHROMIUM_ARGS",
            format!(
                // The pages' origin is plain HTTP on a private address: treated as secure so
                // the kiosk page may open its camera. coturn's certificate is the test's own.
                "--unsafely-treat-insecure-origin-as-secure={} --ignore-certificate-errors",
                s.base
            ),
        ),
    ];
    // While the pages are open: the pages reported their relay protocol (the server sees only
    // coturn's UDP), so /api/rooms says relay/tls for each page's publish and subscribe
    // connection. The relay candidates mostly reach the server by trickle (a TLS allocation is
    // slower than the offer, and an answer leaves at once): without them the pairs read as
    // peer-reflexive and the reports are refused.
    let ops = s.token("*", Role::Operator, "ops-1");
    let mut rooms = serde_json::Value::Null;
    let mut seen_relay_tls = 0;
    let mut gauge = (0.0, String::new());
    let out = ns
        .drive_pages(&dir, "turn_relay.mjs", envs, DRIVER_TIMEOUT, async || {
            let Some(now) = netns::rooms(&s.base, &ops).await else {
                return false;
            };
            rooms = now;
            let relay_tls = netns::room_sessions(&rooms, ROOM)
                .filter(|s| {
                    s["transport"]["candidate"] == "relay" && s["transport"]["protocol"] == "tls"
                })
                .count();
            seen_relay_tls = seen_relay_tls.max(relay_tls);
            if relay_tls < PAGE_CONNECTIONS {
                return false;
            }
            // The transport gauge too (it may lag the rooms' snapshot by a refresh).
            gauge = netns::sessions_by_transport(&s, "relay/tls").await;
            gauge.0 >= PAGE_CONNECTIONS as f64
        })
        .await;
    assert!(
        out.ok(),
        "chromium through coturn over TLS failed (exit {}{}):\n{}\n{}\ncoturn:\n{}",
        out.status,
        out.killed(),
        out.stdout,
        out.stderr,
        coturn
            .log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        seen_relay_tls >= PAGE_CONNECTIONS,
        "/api/rooms did not report the pages' sessions as relay/tls: {rooms:#}"
    );
    assert!(
        gauge.0 >= PAGE_CONNECTIONS as f64,
        "cabine_sfu_sessions_transport did not count the pages' sessions as relay/tls:\n{}",
        gauge.1
    );
    s.server.shutdown(Duration::from_millis(100)).await;
}
