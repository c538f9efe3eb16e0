//! Per-subscriber RTP rewriting: one [`Forwarder`] per outgoing track.
//!
//! A subscriber sees one continuous stream per track whatever happens upstream: simulcast layer
//! switches, a publisher that re-publishes, lost or reordered packets. The forwarder keeps
//! offsets so that sequence numbers, RTP timestamps and VP8 picture ids continue where they left
//! off, and it only starts (or switches) at a keyframe. It is pure state: no clock, no I/O, no
//! allocation.
//!
//! With VP8 temporal layers it also forwards only the temporal layers wanted
//! ([`set_temporal_target`](Forwarder::set_temporal_target), see [`crate::temporal`]): the
//! packets and frames it drops on purpose are taken out of the numbering (sequence numbers and
//! picture ids continue without a gap), so the receiver neither asks for them nor waits for
//! them. Upstream loss still shows as a gap.

use std::time::Instant;

use crate::temporal::{Temporal, TemporalSelector};

/// The layer a packet came from: its index in the publisher's simulcast layers, 0 without
/// simulcast.
pub type LayerIndex = u8;

/// What the forwarder needs to know about one incoming packet.
#[derive(Debug, Clone, Copy)]
pub struct InPacket {
    /// Simulcast layer of the packet.
    pub layer: LayerIndex,
    /// Extended (64-bit) sequence number as received.
    pub seq: u64,
    /// RTP timestamp as received.
    pub ts: u32,
    /// Whether the packet starts a keyframe (always true for audio).
    pub keyframe: bool,
    /// VP8 picture id (15-bit space) and TL0PICIDX, when the payload carries them.
    pub vp8: Option<(u16, Option<u8>)>,
    /// VP8 temporal layer (TID, Y), when the payload carries it.
    pub temporal: Option<Temporal>,
    /// When the packet arrived.
    pub arrival: Instant,
}

/// The rewritten header fields for a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket {
    /// Outgoing extended sequence number (starts below 2^16, so no ROC signalling is needed).
    pub seq: u64,
    /// Outgoing RTP timestamp.
    pub ts: u32,
    /// Outgoing VP8 picture id and TL0PICIDX, to patch into the payload descriptor.
    pub vp8: Option<(u16, Option<u8>)>,
    /// True on the first packet after a start or a layer switch (a keyframe).
    pub switched: bool,
}

/// Why a packet was not forwarded to this subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// It belongs to a layer this subscriber does not receive.
    OtherLayer,
    /// The subscriber waits for a keyframe on its target layer before starting or switching.
    AwaitingKeyframe,
    /// It is older than the point where the current layer was joined (reordered across a switch),
    /// or older than the renumbering the forwarder still remembers.
    BeforeSwitch,
    /// It belongs to a temporal layer above the ones this subscriber receives.
    OtherTemporalLayer,
}

/// Rewriting state for one outgoing track.
#[derive(Debug, Clone)]
pub struct Forwarder {
    clock_rate: u32,
    target: LayerIndex,
    current: Option<Current>,
    last: Option<Last>,
    temporal: TemporalSelector,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    layer: LayerIndex,
    /// First incoming sequence number forwarded from this layer.
    join_seq: u64,
    ts_offset: u32,
    tl0_offset: u8,
    /// Highest incoming sequence number and newest picture id seen on this layer.
    highest_seq: u64,
    highest_pic: Option<u16>,
    /// Sequence and picture-id offsets by the incoming sequence number they start at, oldest
    /// first (a ring of the last [`SHIFTS`]): each run of packets dropped on purpose shifts
    /// what follows, and a late packet takes the offsets of its place.
    shifts: [Shift; SHIFTS],
    /// Index of the newest entry in `shifts`, and how many are valid.
    newest: usize,
    valid: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Shift {
    from_seq: u64,
    seq_offset: u64,
    pic_offset: u16,
}

/// Renumberings remembered for late packets: about two seconds of a 30 fps stream with every
/// other frame dropped.
const SHIFTS: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    ts: u32,
    pic: Option<u16>,
    tl0: Option<u8>,
    at: Instant,
}

const PIC_MASK: u16 = 0x7fff;

impl Forwarder {
    /// A forwarder for a stream with RTP clock `clock_rate` (Hz), initially aiming at `target`.
    pub fn new(clock_rate: u32, target: LayerIndex) -> Self {
        Forwarder {
            clock_rate: clock_rate.max(1),
            target,
            current: None,
            last: None,
            temporal: TemporalSelector::default(),
        }
    }

    /// Forward only temporal layers `0..=max_tid` (VP8 TID) from the next frame on; going up
    /// waits for a layer-sync frame or a keyframe. Streams without temporal layers ignore it.
    pub fn set_temporal_target(&mut self, max_tid: u8) {
        self.temporal.set_target(max_tid);
    }

    /// The highest temporal layer wanted.
    pub fn temporal_target(&self) -> u8 {
        self.temporal.target()
    }

    /// The highest temporal layer forwarded now.
    pub fn temporal_current(&self) -> u8 {
        self.temporal.current()
    }

    /// The layer being forwarded now, if started.
    pub fn current_layer(&self) -> Option<LayerIndex> {
        self.current.map(|c| c.layer)
    }

    /// The layer the forwarder will switch to at the next keyframe on it.
    pub fn target_layer(&self) -> LayerIndex {
        self.target
    }

    /// Aim at another layer; the switch happens at that layer's next keyframe.
    pub fn set_target(&mut self, layer: LayerIndex) {
        self.target = layer;
    }

    /// Whether the forwarder waits for a keyframe (not started, or a switch is pending): the
    /// caller should make sure one is requested from the publisher.
    pub fn wants_keyframe(&self) -> bool {
        self.current.is_none_or(|c| c.layer != self.target)
    }

    /// Forget the current source (the publisher went away or re-published): the next keyframe
    /// starts a new run that continues the outgoing numbering.
    pub fn reset_source(&mut self) {
        self.current = None;
    }

    /// Decide what to do with one incoming packet.
    pub fn forward(&mut self, p: &InPacket) -> Result<OutPacket, Drop> {
        if let Some(cur) = self.current {
            if p.layer == cur.layer {
                if p.seq < cur.join_seq {
                    return Err(Drop::BeforeSwitch);
                }
                if !self.pass_temporal(p) {
                    return Err(Drop::OtherTemporalLayer);
                }
                return self.rewrite(p, false).ok_or(Drop::BeforeSwitch);
            }
        }
        if p.layer != self.target {
            return Err(Drop::OtherLayer);
        }
        if !p.keyframe {
            return Err(Drop::AwaitingKeyframe);
        }
        self.join(p);
        self.temporal.restart(p.vp8.map(|v| v.0));
        self.rewrite(p, true).ok_or(Drop::BeforeSwitch)
    }

    /// Whether a packet of the current layer passes the temporal selection; a dropped one is
    /// taken out of the numbering when it directly follows what was seen.
    fn pass_temporal(&mut self, p: &InPacket) -> bool {
        let Some(cur) = self.current.as_mut() else {
            return true;
        };
        let decision = match (p.temporal, p.vp8) {
            (Some(t), Some((pic, _))) => Some(self.temporal.decide(pic, t, p.keyframe)),
            _ => None,
        };
        let contiguous_seq = p.seq == cur.highest_seq + 1;
        let pic = p.vp8.map(|v| v.0);
        let contiguous_pic = decision.is_some_and(|d| d.new_frame)
            && matches!((cur.highest_pic, pic), (Some(h), Some(n)) if n == h.wrapping_add(1) & PIC_MASK);
        if p.seq > cur.highest_seq {
            cur.highest_seq = p.seq;
        }
        if decision.is_some_and(|d| d.new_frame) {
            cur.highest_pic = pic;
        }
        if decision.is_none_or(|d| d.forward) {
            return true;
        }
        if contiguous_seq || contiguous_pic {
            let newest = cur.shifts[cur.newest];
            let shift = Shift {
                from_seq: p.seq + 1,
                seq_offset: newest.seq_offset.wrapping_sub(u64::from(contiguous_seq)),
                pic_offset: newest.pic_offset.wrapping_sub(u16::from(contiguous_pic)) & PIC_MASK,
            };
            if newest.from_seq == p.seq {
                // The run of dropped packets goes on: one entry for the whole run.
                cur.shifts[cur.newest] = shift;
            } else {
                cur.newest = (cur.newest + 1) % SHIFTS;
                cur.shifts[cur.newest] = shift;
                cur.valid = (cur.valid + 1).min(SHIFTS);
            }
        }
        false
    }

    fn join(&mut self, p: &InPacket) {
        let (seq_next, ts_next, pic_next, tl0_next) = match self.last {
            Some(last) => {
                let elapsed = p.arrival.saturating_duration_since(last.at);
                let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)).round() as u32;
                (
                    last.seq + 1,
                    last.ts.wrapping_add(ticks.max(1)),
                    last.pic.map(|v| v.wrapping_add(1) & PIC_MASK),
                    last.tl0.map(|v| v.wrapping_add(1)),
                )
            }
            // Start numbering at the publisher's own values (low 15 bits for the sequence, so
            // the receiver never needs a rollover counter signalled).
            None => (
                p.seq & 0x7fff,
                p.ts,
                p.vp8.map(|v| v.0),
                p.vp8.and_then(|v| v.1),
            ),
        };
        let (in_pic, in_tl0) = match p.vp8 {
            Some((pic, tl0)) => (pic, tl0.unwrap_or(0)),
            None => (0, 0),
        };
        let mut shifts = [Shift::default(); SHIFTS];
        shifts[0] = Shift {
            from_seq: p.seq,
            seq_offset: seq_next.wrapping_sub(p.seq),
            pic_offset: pic_next.unwrap_or(in_pic).wrapping_sub(in_pic) & PIC_MASK,
        };
        self.current = Some(Current {
            layer: p.layer,
            join_seq: p.seq,
            ts_offset: ts_next.wrapping_sub(p.ts),
            tl0_offset: tl0_next.unwrap_or(in_tl0).wrapping_sub(in_tl0),
            highest_seq: p.seq,
            highest_pic: p.vp8.map(|v| v.0),
            shifts,
            newest: 0,
            valid: 1,
        });
    }

    /// The rewritten packet, or `None` when it is older than every renumbering remembered.
    fn rewrite(&mut self, p: &InPacket, switched: bool) -> Option<OutPacket> {
        // `current` is always set by the caller before rewrite.
        let cur = self.current?;
        let shift = (0..cur.valid)
            .map(|back| cur.shifts[(cur.newest + SHIFTS - back) % SHIFTS])
            .find(|s| s.from_seq <= p.seq)?;
        let out = OutPacket {
            seq: p.seq.wrapping_add(shift.seq_offset),
            ts: p.ts.wrapping_add(cur.ts_offset),
            vp8: p.vp8.map(|(pic, tl0)| {
                (
                    pic.wrapping_add(shift.pic_offset) & PIC_MASK,
                    tl0.map(|t| t.wrapping_add(cur.tl0_offset)),
                )
            }),
            switched,
        };
        let newer = self.last.is_none_or(|l| out.seq > l.seq);
        if newer {
            self.last = Some(Last {
                seq: out.seq,
                ts: out.ts,
                pic: out.vp8.map(|v| v.0),
                tl0: out.vp8.and_then(|v| v.1),
                at: p.arrival,
            });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pkt(t0: Instant, layer: u8, seq: u64, ts: u32, key: bool, ms: u64) -> InPacket {
        InPacket {
            layer,
            seq,
            ts,
            keyframe: key,
            vp8: Some(((seq % 30000) as u16, None)),
            temporal: None,
            arrival: t0 + Duration::from_millis(ms),
        }
    }

    #[test]
    fn waits_for_a_keyframe_then_forwards_in_order() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, 0);
        assert_eq!(
            f.forward(&pkt(t0, 0, 100, 1000, false, 0)),
            Err(Drop::AwaitingKeyframe)
        );
        let a = f.forward(&pkt(t0, 0, 101, 1000, true, 0)).unwrap();
        assert!(a.switched);
        assert_eq!(a.seq, 101);
        let b = f.forward(&pkt(t0, 0, 102, 4000, false, 33)).unwrap();
        assert_eq!(b.seq, 102);
        assert_eq!(b.ts, 4000);
        assert!(!f.wants_keyframe());
    }

    /// Frame `n` of a three-layer stream (pattern 0 2 1 2), two packets per frame.
    fn layered(t0: Instant, n: u64, second: bool) -> InPacket {
        let pattern = [(0, false), (2, true), (1, true), (2, false)];
        let (tid, layer_sync) = pattern[(n % 4) as usize];
        InPacket {
            layer: 0,
            seq: 1000 + 2 * n + u64::from(second),
            ts: (n as u32) * 3000,
            keyframe: n == 0 && !second,
            vp8: Some(((100 + n) as u16, Some((n / 4) as u8))),
            temporal: Some(Temporal { tid, layer_sync }),
            arrival: t0 + Duration::from_millis(n * 33),
        }
    }

    #[test]
    fn dropped_temporal_layers_leave_no_gap() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, 0);
        let mut out = Vec::new();
        let mut late = None;
        for n in 0..40u64 {
            if n == 10 {
                f.set_temporal_target(0);
            }
            if n == 26 {
                f.set_temporal_target(2);
            }
            for second in [false, true] {
                let p = layered(t0, n, second);
                // The second packet of frame 8 (TL0) is late: it arrives after frame 9.
                if n == 8 && second {
                    late = Some(p);
                    continue;
                }
                if let Ok(o) = f.forward(&p) {
                    out.push((n, o));
                }
                if n == 13 && second {
                    let l = late.take().unwrap();
                    let o = f
                        .forward(&l)
                        .expect("a late packet of a forwarded frame goes");
                    out.push((8, o));
                }
            }
        }
        out.sort_by_key(|(_, o)| o.seq);
        let frames: Vec<u64> = out.iter().map(|(n, _)| *n).step_by(2).collect();
        // All of 0..10; from 10 on TL0 only; from 26 up again: 26 (TL1, Y) at once, but TL2
        // frame 27 has no Y (it references TL1 frame 26), so TL2 waits for frame 29.
        let expected: Vec<u64> = (0..10)
            .chain((10..26).filter(|n| n % 4 == 0))
            .chain([26])
            .chain(28..40)
            .collect();
        assert_eq!(frames, expected);
        for w in out.windows(2) {
            let (a, b) = (w[0].1, w[1].1);
            assert_eq!(b.seq, a.seq + 1, "no sequence gap: {:?} {:?}", w[0], w[1]);
            let (pa, ta) = a.vp8.unwrap();
            let (pb, tb) = b.vp8.unwrap();
            if w[0].0 == w[1].0 {
                assert_eq!((pa, ta), (pb, tb));
            } else {
                assert_eq!(pb, (pa + 1) & PIC_MASK, "picture ids continue");
                assert!(tb == ta || tb == ta.map(|t| t + 1), "TL0PICIDX continues");
            }
        }
        assert!(out
            .iter()
            .all(|(_, o)| o.switched == (o.seq == out[0].1.seq)));
    }

    #[test]
    fn layer_switch_is_seamless() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, 0);
        f.forward(&pkt(t0, 0, 10, 500, true, 0)).unwrap();
        let last = f.forward(&pkt(t0, 0, 11, 3500, false, 33)).unwrap();
        f.set_target(2);
        assert!(f.wants_keyframe());
        // High layer delta frames are not forwarded, low layer still is.
        assert_eq!(
            f.forward(&pkt(t0, 2, 9000, 77_000, false, 40)),
            Err(Drop::AwaitingKeyframe)
        );
        let low = f.forward(&pkt(t0, 0, 12, 6500, false, 66)).unwrap();
        assert_eq!(low.seq, last.seq + 1);
        // The keyframe on the high layer switches.
        let sw = f.forward(&pkt(t0, 2, 9001, 80_000, true, 99)).unwrap();
        assert!(sw.switched);
        assert_eq!(sw.seq, low.seq + 1);
        // 33 ms later at 90 kHz is 2970 ticks.
        assert_eq!(sw.ts, low.ts + 2970);
        let (pic_low, _) = low.vp8.unwrap();
        assert_eq!(sw.vp8.unwrap().0, (pic_low + 1) & PIC_MASK);
        // The old layer is now dropped, and so are stragglers from before the switch.
        assert_eq!(
            f.forward(&pkt(t0, 0, 13, 9500, false, 100)),
            Err(Drop::OtherLayer)
        );
        assert_eq!(
            f.forward(&pkt(t0, 2, 9000, 77_000, false, 101)),
            Err(Drop::BeforeSwitch)
        );
        let next = f.forward(&pkt(t0, 2, 9002, 83_000, false, 133)).unwrap();
        assert_eq!(next.seq, sw.seq + 1);
        assert_eq!(next.ts, sw.ts + 3000);
    }

    #[test]
    fn loss_upstream_stays_visible_as_a_gap() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(48_000, 0);
        let a = f.forward(&pkt(t0, 0, 70_000, 0, true, 0)).unwrap();
        assert!(a.seq < 65_536);
        let c = f.forward(&pkt(t0, 0, 70_002, 1920, true, 40)).unwrap();
        assert_eq!(
            c.seq,
            a.seq + 2,
            "a lost packet must stay a gap so the receiver NACKs it"
        );
        let b = f.forward(&pkt(t0, 0, 70_001, 960, true, 41)).unwrap();
        assert_eq!(b.seq, a.seq + 1, "a late packet keeps its place");
    }

    #[test]
    fn republish_continues_numbering() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(90_000, 0);
        f.forward(&pkt(t0, 0, 500, 100, true, 0)).unwrap();
        let last = f.forward(&pkt(t0, 0, 501, 3100, false, 33)).unwrap();
        f.reset_source();
        let first = f.forward(&pkt(t0, 0, 20, 999_999, true, 1033)).unwrap();
        assert_eq!(first.seq, last.seq + 1);
        assert_eq!(first.ts, last.ts + 90_000);
    }
}
