//! Hardening of the media plane through the real shell: a room that panics is closed (its
//! sessions end, the panic is counted) while another room on the same worker keeps its media
//! flowing without loss; a WHIP session that never connects frees its slot after
//! `media.connect_timeout`; `/readyz` fails once a media worker has died. The faults are
//! injected with the SFU's test-only `fault-injection` hooks.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_client::{ClientOptions, Publisher, RemoteTrack, Subscriber, TrackSpec};
use cabine_proto::{Role, RoomId};
use cabine_sfu::shell::worker_index;
use tokio::task::JoinHandle;

/// Workers in these tests' servers (`common::start` uses 2).
const WORKERS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_room_ends_its_sessions_and_another_room_on_its_worker_keeps_flowing() {
    let s = common::start().await;
    let doomed = "iso-doomed";
    // A second room on the same worker as the first.
    let healthy = (0..)
        .map(|n| format!("iso-healthy-{n}"))
        .find(|r| {
            worker_index(&RoomId::parse(r).unwrap(), WORKERS)
                == worker_index(&RoomId::parse(doomed).unwrap(), WORKERS)
        })
        .expect("a room on the same worker");
    let a = Consultation::start(&s, doomed).await;
    let b = Consultation::start(&s, &healthy).await;
    a.first_packet().await;
    b.first_packet().await;
    let stop_b = Arc::clone(&b.stop);
    let received = Arc::new(Mutex::new(Vec::new()));
    let reader = b.read_until_stopped(Arc::clone(&received));

    s.server
        .sfu()
        .inject_panic(&RoomId::parse(doomed).unwrap())
        .expect("the fault is delivered");
    common::wait_for("the panic is counted", Duration::from_secs(5), || {
        s.server.sfu().stats().room_panics == 1
    })
    .await;
    s.rooms_until("the doomed room is closed", Duration::from_secs(5), |v| {
        !v.to_string().contains(doomed) && v.to_string().contains(&healthy)
    })
    .await;
    // The server forgot both of the doomed room's sessions, as for any session that ended.
    for url in [a.publisher_url.as_str(), a.subscriber_url.as_str()] {
        let r = reqwest::Client::new()
            .delete(url)
            .bearer_auth(s.token(doomed, Role::Kiosk, "kiosk-1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{url}: the session is gone");
    }

    // The other room's media went on: 50 more packets after the room closed, none lost.
    let at_close = received.lock().unwrap().len();
    common::wait_for(
        "the healthy room's media continues",
        Duration::from_secs(10),
        || received.lock().unwrap().len() >= at_close + 50,
    )
    .await;
    stop_b.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let mut counters = received.lock().unwrap().clone();
    counters.sort_unstable();
    counters.dedup();
    let missing: Vec<u32> = (counters[0]..=*counters.last().unwrap())
        .filter(|c| counters.binary_search(c).is_err())
        .collect();
    assert!(missing.is_empty(), "the healthy room lost {missing:?}");
    assert_eq!(s.server.sfu().stats().room_panics, 1);
    assert!(
        s.server.sfu().is_healthy(),
        "a room panic leaves the worker alive"
    );
    a.stop.store(true, Ordering::Relaxed);
    s.server.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_that_never_connects_frees_its_slot_after_the_timeout() {
    let s = common::start_with(|cfg| {
        cfg.media.connect_timeout = Duration::from_secs(1);
        cfg.media.max_sessions_per_room = 2;
    })
    .await;
    let room = "silent-offers";
    let url = format!("{}/whip/{room}", s.base);
    let offer = |n: usize| {
        let token = s.token(room, Role::Kiosk, &format!("silent-{n}"));
        let url = url.clone();
        async move {
            common::post_sdp(
                &url,
                Some(&token),
                "application/sdp",
                common::sdp_offer("sendonly"),
            )
            .await
            .0
        }
    };
    // Two offers whose clients never do ICE fill the room.
    assert_eq!(offer(0).await, 201);
    assert_eq!(offer(1).await, 201);
    assert_eq!(offer(2).await, 503, "the room is full");

    s.rooms_until(
        "the silent sessions are removed",
        Duration::from_secs(10),
        |v| !v.to_string().contains(room),
    )
    .await;
    assert_eq!(s.server.sfu().stats().connect_timeouts, 2);

    // The room admits a real kiosk now, which connects and stays past the timeout.
    let kiosk = Publisher::connect(
        &url,
        &s.token(room, Role::Kiosk, "kiosk-1"),
        vec![TrackSpec::audio("kiosk-1", "microphone")],
        ClientOptions::loopback(),
    )
    .await
    .expect("the freed room admits a kiosk");
    s.rooms_until("the kiosk connects", Duration::from_secs(10), |v| {
        v.to_string().contains("\"connected\":true")
    })
    .await;
    // One more silent offer after it: once that one has timed out, the kiosk's own connect
    // deadline (earlier) has passed too, and the kiosk must still be there.
    assert_eq!(offer(3).await, 201);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.server.sfu().stats().connect_timeouts < 3 {
        assert!(
            Instant::now() < deadline,
            "the last silent session was never removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.server.sfu().stats().connect_timeouts,
        3,
        "only the silent sessions timed out"
    );
    let rooms = s.rooms().await;
    let sessions = rooms.to_string().matches("\"connected\":true").count();
    assert_eq!(sessions, 1, "the connected kiosk stays: {rooms}");
    let _ = kiosk.close().await;
    s.server.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_once_a_media_worker_has_died() {
    let s = common::start().await;
    let readyz = format!("{}/readyz", s.base);
    let status = || async { reqwest::get(&readyz).await.unwrap().status().as_u16() };
    assert_eq!(status().await, 200);
    assert!(s.server.sfu().is_healthy());
    // A consultation on the worker that dies (its kiosk keeps sending) and one on the worker
    // that survives.
    let victim = RoomId::parse("on-the-dead-worker").unwrap();
    let doomed = Consultation::start(&s, victim.as_str()).await;
    doomed.first_packet().await;
    let survivor = (0..)
        .map(|n| format!("survivor-{n}"))
        .find(|r| {
            worker_index(&RoomId::parse(r).unwrap(), WORKERS) != worker_index(&victim, WORKERS)
        })
        .expect("a room on the other worker");
    let c = Consultation::start(&s, &survivor).await;
    c.first_packet().await;
    let stop = Arc::clone(&c.stop);
    let received = Arc::new(Mutex::new(Vec::new()));
    let reader = c.read_until_stopped(Arc::clone(&received));

    s.server
        .sfu()
        .kill_worker(&victim)
        .expect("the fault is delivered");
    let deadline = Instant::now() + Duration::from_secs(5);
    while status().await != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz still ready with a dead worker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!s.server.sfu().is_healthy());
    assert_eq!(s.server.sfu().stats().threads_died, 1);

    // The receive thread and the other worker carry on: the survivor's media still flows.
    let at_death = received.lock().unwrap().len();
    common::wait_for(
        "media on the surviving worker",
        Duration::from_secs(10),
        || received.lock().unwrap().len() >= at_death + 50,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    doomed.stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    s.server.shutdown(Duration::from_millis(200)).await;
}

/// A kiosk streaming numbered 20 ms audio packets into a room and a doctor receiving them.
struct Consultation {
    sender: JoinHandle<Publisher>,
    doctor: Subscriber,
    track: RemoteTrack,
    stop: Arc<AtomicBool>,
    publisher_url: String,
    subscriber_url: String,
}

impl Consultation {
    async fn start(s: &common::TestServer, room: &str) -> Consultation {
        let publisher = Publisher::connect(
            &format!("{}/whip/{room}", s.base),
            &s.token(room, Role::Kiosk, "kiosk-1"),
            vec![TrackSpec::audio("kiosk-1", "microphone")],
            ClientOptions::loopback(),
        )
        .await
        .expect("kiosk publishes");
        let doctor = Subscriber::connect(
            &format!("{}/whep/{room}", s.base),
            &s.token(room, Role::Doctor, "dr-1"),
            ClientOptions {
                recv_audio: 1,
                ..ClientOptions::loopback()
            },
        )
        .await
        .expect("doctor subscribes");
        let publisher_url = publisher.resource_url().to_owned();
        let subscriber_url = doctor.resource_url().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let sender = tokio::spawn(async move {
            let mut n = 0u32;
            while !stopped.load(Ordering::Relaxed) {
                let mut payload = n.to_be_bytes().to_vec();
                payload.extend_from_slice(&[0x5a; 60]);
                if publisher.tracks()[0]
                    .write_rtp(&payload, true, 960)
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            publisher
        });
        let track = doctor
            .next_track(Duration::from_secs(10))
            .await
            .expect("the doctor gets the microphone");
        Consultation {
            sender,
            doctor,
            track,
            stop,
            publisher_url,
            subscriber_url,
        }
    }

    async fn first_packet(&self) {
        self.track
            .read_rtp_timeout(Duration::from_secs(10))
            .await
            .expect("media flows");
    }

    /// Reads packets into `counters` (their numbers, in arrival order) until the sender stops.
    fn read_until_stopped(self, counters: Arc<Mutex<Vec<u32>>>) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.track.read_rtp_timeout(Duration::from_secs(1)).await {
                    Ok(p) if p.payload.len() >= 4 => {
                        counters.lock().unwrap().push(u32::from_be_bytes([
                            p.payload[0],
                            p.payload[1],
                            p.payload[2],
                            p.payload[3],
                        ]))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        assert!(
                            self.stop.load(Ordering::Relaxed),
                            "media stopped after {} packets: {e}",
                            counters.lock().unwrap().len()
                        );
                        break;
                    }
                }
            }
            let _ = self.sender.await;
            let _ = self.doctor.close().await;
        })
    }
}
