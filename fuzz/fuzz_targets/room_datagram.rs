//! Arbitrary datagrams into a connected room, from a connected session's own address: the room
//! (str0m underneath) drops what it cannot authenticate and never panics, and the sessions stay
//! up (nothing without the keys can end them).
//!
//! The room is set up once per fuzzing process (ICE and DTLS with a real str0m peer in fake
//! time, through the deterministic harness of `crates/sfu/tests/e2e/common`): a kiosk publishing a
//! camera and a doctor subscribing to it, with media flowing. Each input is then fed to one of
//! the two sessions (its first byte picks which) and the simulation runs 2 ms of fake time so
//! the peers keep answering consent checks. The state carries over between inputs, as a real
//! server's does; a crash is reproduced by replaying the corpus that led to it.
//!
//! Room API used (kept small on purpose, the room's output API is being reworked):
//! `Room::handle_datagram(now, session, from, to, data, send)` here, and what the harness uses.
#![no_main]

#[path = "../../crates/sfu/tests/e2e/common/mod.rs"]
mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use common::{write_vp8, FakeFrame, Sim, ROOM_ADDR};
use libfuzzer_sys::fuzz_target;
use str0m::media::{Direction, MediaKind, Mid};

struct Fixture {
    sim: Sim,
    kiosk: usize,
    doctor: usize,
    camera: Mid,
    frames: u32,
    next_frame: Instant,
}

static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = FIXTURE.lock().unwrap_or_else(|e| e.into_inner());
    let f = guard.get_or_insert_with(connect);
    let Some((&pick, datagram)) = data.split_first() else {
        return;
    };
    let peer = if pick & 1 == 0 { f.kiosk } else { f.doctor };
    let (session, from) = (f.sim.peers[peer].session, f.sim.peers[peer].addr);
    let now = f.sim.now;
    let to = ROOM_ADDR.parse().expect("a valid address");
    f.sim
        .room
        .handle_datagram(now, now, session, from, to, datagram);
    run(f, Duration::from_millis(2));
    let sessions = f.sim.room.snapshot(f.sim.now).sessions.len();
    assert_eq!(sessions, 2, "unauthenticated datagrams removed a session");
});

/// A room with a kiosk publishing a camera and a doctor receiving it, both connected.
fn connect() -> Fixture {
    let mut sim = Sim::new();
    let (kiosk, camera) = sim
        .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some("kiosk".into()),
                Some("room-camera".into()),
                None,
            )
        })
        .expect("kiosk joins");
    let (doctor, _) = sim
        .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
            api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        })
        .expect("doctor joins");
    let next_frame = sim.now;
    let mut f = Fixture {
        sim,
        kiosk,
        doctor,
        camera,
        frames: 0,
        next_frame,
    };
    let deadline = f.sim.now + Duration::from_secs(5);
    while !(f.sim.peers[kiosk].connected && f.sim.peers[doctor].connected) {
        assert!(f.sim.now < deadline, "the fixture connects");
        run(&mut f, Duration::from_millis(10));
    }
    run(&mut f, Duration::from_millis(500));
    f
}

/// Runs the simulation for `d`, the kiosk sending a small camera frame every 33 ms.
fn run(f: &mut Fixture, d: Duration) {
    let until = f.sim.now + d;
    let (kiosk, camera) = (f.kiosk, f.camera);
    let (frames, next_frame) = (&mut f.frames, &mut f.next_frame);
    f.sim.run_until(until, |sim| {
        sim.peers[kiosk].events.clear();
        if !sim.peers[kiosk].connected {
            return None;
        }
        if sim.now >= *next_frame {
            *frames += 1;
            let frame = FakeFrame {
                rid: None,
                rtp_90k: u64::from(*frames) * 3000,
                layer: 0,
                counter: *frames,
                key: frames.is_multiple_of(30),
                size: 300,
            };
            write_vp8(&mut sim.peers[kiosk].rtc, camera, sim.now, frame);
            *next_frame = sim.now + Duration::from_millis(33);
        }
        Some(*next_frame)
    });
    for p in &mut f.sim.peers {
        p.events.clear();
    }
}
