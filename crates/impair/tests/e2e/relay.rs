//! A client and an echo server talking through the relay: datagrams reach the server from the
//! relay's per-client socket, replies come back from the address the client was given, each
//! client gets its own flow, the flow limit holds, and the loss model really drops.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_impair::{LinkConfig, Loss, Profile, Relay, RelayConfig};
use tokio::net::UdpSocket;

const PATIENCE: Duration = Duration::from_secs(10);

/// An echo server that records the source address of everything it receives.
async fn echo_server() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            record.lock().expect("lock").push(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

/// Polls `check` every 10 ms until it holds or `PATIENCE` runs out.
async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn replies_come_back_from_the_relay_address_through_one_flow_per_client() {
    let (server, seen) = echo_server().await;
    let profile = Profile {
        name: "custom",
        uplink: LinkConfig {
            delay: Duration::from_millis(15),
            ..LinkConfig::default()
        },
        downlink: LinkConfig {
            delay: Duration::from_millis(15),
            ..LinkConfig::default()
        },
    };
    let relay = Relay::start(RelayConfig::loopback(server, profile))
        .await
        .expect("relay");
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for (i, socket) in [&a, &b].into_iter().enumerate() {
        for n in 0..5u8 {
            socket
                .send_to(&[i as u8, n], relay.local_addr())
                .await
                .expect("send");
        }
    }
    let mut buf = [0u8; 16];
    for (i, socket) in [&a, &b].into_iter().enumerate() {
        for n in 0..5u8 {
            let (len, from) = tokio::time::timeout(PATIENCE, socket.recv_from(&mut buf))
                .await
                .expect("a reply in time")
                .expect("recv");
            assert_eq!(from, relay.local_addr(), "replies come from the relay");
            assert_eq!(&buf[..len], &[i as u8, n], "in order, unchanged");
        }
    }
    let sources: HashSet<SocketAddr> = seen.lock().expect("lock").iter().copied().collect();
    assert_eq!(
        sources.len(),
        2,
        "one upstream socket per client: {sources:?}"
    );
    assert!(!sources.contains(&a.local_addr().expect("addr")));
    assert!(!sources.contains(&relay.local_addr()));
    let stats = relay.stats();
    assert_eq!(stats.flows, 2);
    assert_eq!((stats.uplink.delivered, stats.downlink.delivered), (10, 10));
}

#[tokio::test]
async fn loss_drops_packets_and_every_datagram_is_accounted_for() {
    let (server, _) = echo_server().await;
    let profile = Profile {
        name: "custom",
        uplink: LinkConfig {
            loss: Loss::independent(0.2),
            ..LinkConfig::default()
        },
        downlink: LinkConfig::default(),
    };
    let relay = Relay::start(RelayConfig {
        seed: 42,
        ..RelayConfig::loopback(server, profile)
    })
    .await
    .expect("relay");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let sent = 1_000u64;
    for n in 0..sent {
        client
            .send_to(&n.to_be_bytes(), relay.local_addr())
            .await
            .expect("send");
        if n % 50 == 49 {
            // Let the relay keep up: the loopback socket buffer is not what is under test.
            wait_until("the relay to take the datagrams", || {
                relay.stats().uplink.offered > n - 10
            })
            .await;
        }
    }
    wait_until("every datagram to be lost or echoed", || {
        let s = relay.stats();
        s.uplink.offered == sent
            && s.uplink.lost + s.uplink.delivered == sent
            && s.downlink.delivered == s.uplink.delivered
    })
    .await;
    let lost = relay.stats().uplink.lost;
    // Binomial(1000, 0.2): sd ≈ 12.6; 120..280 is beyond 6 sigma.
    assert!((120..280).contains(&lost), "lost {lost} of {sent}");
}

#[tokio::test]
async fn clients_beyond_the_flow_limit_are_refused_and_counted() {
    let (server, seen) = echo_server().await;
    let relay = Relay::start(RelayConfig {
        max_flows: 1,
        ..RelayConfig::loopback(server, Profile::clean())
    })
    .await
    .expect("relay");
    let first = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let second = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    first.send_to(b"a", relay.local_addr()).await.expect("send");
    wait_until("the first flow", || seen.lock().expect("lock").len() == 1).await;
    second
        .send_to(b"b", relay.local_addr())
        .await
        .expect("send");
    wait_until("the refusal", || relay.stats().refused_flows == 1).await;
    assert_eq!(seen.lock().expect("lock").len(), 1);
    assert_eq!(relay.stats().flows, 1);
}

#[tokio::test]
async fn a_profile_change_reaches_open_flows() {
    let (server, _) = echo_server().await;
    let relay = Relay::start(RelayConfig::loopback(server, Profile::clean()))
        .await
        .expect("relay");
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut buf = [0u8; 8];
    client
        .send_to(b"1", relay.local_addr())
        .await
        .expect("send");
    tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .expect("echo")
        .expect("recv");
    // Everything is lost from now on.
    relay
        .set_profile(Profile {
            name: "custom",
            uplink: LinkConfig {
                loss: Loss::independent(1.0),
                ..LinkConfig::default()
            },
            downlink: LinkConfig::default(),
        })
        .expect("valid");
    // The change reaches the flow task asynchronously: send until a datagram is lost.
    let deadline = Instant::now() + PATIENCE;
    while relay.stats().uplink.lost == 0 {
        assert!(Instant::now() < deadline, "the new profile never applied");
        client
            .send_to(b"2", relay.local_addr())
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bad = Profile {
        name: "custom",
        uplink: LinkConfig {
            queue_bytes: 10,
            rate_bps: Some(1),
            ..LinkConfig::default()
        },
        downlink: LinkConfig::default(),
    };
    assert!(relay.set_profile(bad).is_err());
}

#[tokio::test]
async fn tcp_streams_cross_the_relay_rate_limited_in_order_and_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A TCP echo server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    // The same address serves UDP and TCP; loss is ignored on a stream.
    let link = LinkConfig {
        loss: Loss::independent(0.5),
        delay: Duration::from_millis(5),
        ..LinkConfig::limited(4_000_000, Duration::from_millis(50))
    };
    let relay = Relay::start(RelayConfig {
        tcp: true,
        ..RelayConfig::loopback(
            server,
            Profile {
                name: "custom",
                uplink: link.clone(),
                downlink: link,
            },
        )
    })
    .await
    .expect("relay");
    let mut client = tokio::net::TcpStream::connect(relay.local_addr())
        .await
        .expect("connects to the relay");
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = client.split();
    let write = async {
        w.write_all(&sent).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let mut echoed = Vec::new();
    let read = async {
        tokio::time::timeout(PATIENCE, r.read_to_end(&mut echoed))
            .await
            .expect("the echo in time")
            .expect("read");
    };
    tokio::join!(write, read);
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "bytes changed or reordered");
    let stats = relay.stats();
    assert_eq!(stats.uplink.delivered_bytes, sent.len() as u64);
    assert_eq!(stats.downlink.delivered_bytes, sent.len() as u64);
    assert_eq!((stats.uplink.lost, stats.uplink.overflowed), (0, 0));
    // A 50 ms queue at 4 Mbit/s holds 25 kB: the sender was held back, never dropped.
    assert!(stats.uplink.max_queued_bytes <= 25_000);
    assert!(stats.uplink.max_queued_bytes > 0);
}
