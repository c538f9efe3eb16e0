//! RFC 2198 RED through the room, with real str0m peers and fake time: a kiosk's microphone
//! sent as RED reaches a subscriber that negotiated RED as is, and one that did not as its
//! primary blocks only, stripped without an allocation per packet.

use std::time::Duration;

use cabine_proto::Role;
use cabine_sfu::room::SessionKind;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::Event;

use crate::common::Sim;

const FRAME: Duration = Duration::from_millis(20);

/// Frame `n` of the kiosk's microphone: Opus-like, its size varying with `n` (variable bit
/// rate: 48 sizes), its bytes naming it.
fn frame(n: u64) -> Vec<u8> {
    vec![n as u8; 60 + (n as usize * 37) % 48]
}

/// A kiosk sending its microphone with RED and a doctor subscribing to it, with RED or not.
struct Consultation {
    sim: Sim,
    kiosk: usize,
    mic: Mid,
    doctor: usize,
    written: Vec<Vec<u8>>,
}

impl Consultation {
    fn new(doctor_red: bool) -> Self {
        let mut sim = Sim::new();
        sim.red = true;
        let (kiosk, mic) = sim
            .join("kiosk-1", Role::Kiosk, SessionKind::Publish, |api| {
                api.add_media(
                    MediaKind::Audio,
                    Direction::SendOnly,
                    Some("kiosk".into()),
                    Some("microphone".into()),
                    None,
                )
            })
            .unwrap();
        sim.red = doctor_red;
        let (doctor, _) = sim
            .join("dr-1", Role::Doctor, SessionKind::Subscribe, |api| {
                api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None)
            })
            .unwrap();
        Consultation {
            sim,
            kiosk,
            mic,
            doctor,
            written: Vec::new(),
        }
    }

    /// Sends a frame every 20 ms for `d`.
    fn run_for(&mut self, d: Duration) {
        let until = self.sim.now + d;
        let mut next = self.sim.now;
        let (kiosk, mic) = (self.kiosk, self.mic);
        let written = &mut self.written;
        self.sim.run_until(until, |sim| {
            if sim.now >= next {
                let n = written.len() as u64;
                let payload = frame(n);
                let now = sim.now;
                if let Some(w) = sim.peers[kiosk].rtc.writer(mic) {
                    let opus = w
                        .payload_params()
                        .find(|p| p.spec().codec == Codec::Opus)
                        .map(|p| p.pt());
                    if let Some(pt) = opus {
                        if w.write(pt, now, MediaTime::from_millis(n * 20), payload.clone())
                            .is_ok()
                        {
                            written.push(payload);
                        }
                    }
                }
                next = sim.now + FRAME;
            }
            Some(next)
        });
    }

    /// The audio the doctor received.
    fn received(&self) -> Vec<Vec<u8>> {
        self.sim.peers[self.doctor]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::MediaData(d) => Some(d.data.to_vec()),
                _ => None,
            })
            .collect()
    }

    /// Whether the kiosk's microphone negotiated RED (so the room receives RED from it).
    fn kiosk_sends_red(&mut self) -> bool {
        self.sim.peers[self.kiosk]
            .rtc
            .writer(self.mic)
            .is_some_and(|w| w.payload_params().any(|p| p.red().is_some()))
    }

    /// Heap allocations in the room per frame over `d` of steady flow.
    fn room_allocations_over(&mut self, d: Duration) -> (u64, u64) {
        let (allocs, frames) = (self.sim.room_allocations, self.written.len());
        self.run_for(d);
        (
            self.sim.room_allocations - allocs,
            (self.written.len() - frames) as u64,
        )
    }
}

#[test]
fn red_reaches_subscribers_with_and_without_it_and_stripping_allocates_nothing() {
    let mut stripped = Consultation::new(false);
    let mut kept = Consultation::new(true);
    for c in [&mut stripped, &mut kept] {
        c.run_for(Duration::from_secs(3));
        assert!(c.kiosk_sends_red(), "the kiosk's microphone negotiated RED");
        let received = c.received();
        assert!(
            received.len() > 80,
            "the doctor received {} frames",
            received.len()
        );
        // Each frame the doctor decodes is one the kiosk wrote, byte for byte: the redundancy
        // was stripped (no RED) or unwrapped by its engine (RED).
        for r in &received {
            assert!(
                c.written.contains(r),
                "received a frame never written: {r:?}"
            );
        }
    }

    // In steady state, stripping RED for the doctor without it costs the room no allocation
    // beyond what forwarding RED as is costs (before: one buffer per packet).
    let (strip_allocs, frames) = stripped.room_allocations_over(Duration::from_secs(5));
    let (keep_allocs, kept_frames) = kept.room_allocations_over(Duration::from_secs(5));
    assert_eq!(frames, kept_frames);
    assert!(frames >= 240, "{frames} frames");
    assert!(
        strip_allocs <= keep_allocs + frames / 10,
        "allocations in the room over {frames} frames: {strip_allocs} when stripping RED, \
         {keep_allocs} when forwarding it as is"
    );
}
