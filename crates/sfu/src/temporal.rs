//! VP8 temporal layers: which of a stream's temporal layers a subscriber receives.
//!
//! A publisher with temporal layers (RFC 7741: TID, Y and TL0PICIDX in each packet's payload
//! descriptor) lets the SFU lower a subscriber's frame rate without a keyframe: dropping every
//! frame above a temporal layer leaves frames that reference only what was forwarded. Going
//! down happens at the next frame; going up waits for a frame of the new layer that depends
//! only on the base layer (the Y bit, "layer sync") or for a keyframe. The forwarder hides the
//! dropped frames from the receiver (sequence numbers and picture ids stay contiguous), so a
//! temporal switch costs no keyframe and shows no loss.
//!
//! The allocation ([`options`]) prefers a lower frame rate of the same picture size to a
//! smaller simulcast layer, and a lower frame rate to a pause: in
//! `tests/e2e/temporal.rs` a subscriber whose link sits between a layer's base rate and its
//! full rate kept that layer at half rate, where choosing by whole layers moved it to the
//! smaller layer (or paused a single-layer camera).

use crate::simulcast::BitrateMeter;

/// Temporal layers a VP8 descriptor can name (TID is two bits).
pub const MAX_TEMPORAL_LAYERS: usize = 4;

/// The highest temporal layer index: forwarding up to it forwards everything.
pub const ALL_TEMPORAL: u8 = (MAX_TEMPORAL_LAYERS - 1) as u8;

/// The temporal layer fields of one VP8 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    /// TID: the temporal layer (0: base).
    pub tid: u8,
    /// Y: the frame depends only on base-layer frames, so a receiver can switch up to its layer
    /// here.
    pub layer_sync: bool,
}

/// Reads TID and Y from a VP8 RTP payload descriptor (RFC 7741 §4.2); `None` when the payload
/// carries no TID (or is too short to say).
pub fn vp8_temporal(payload: &[u8]) -> Option<Temporal> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let ext = *payload.get(1)?;
    if ext & 0x20 == 0 {
        return None;
    }
    let mut at = 2;
    if ext & 0x80 != 0 {
        at += if *payload.get(at)? & 0x80 != 0 { 2 } else { 1 };
    }
    if ext & 0x40 != 0 {
        at += 1;
    }
    let b = *payload.get(at)?;
    Some(Temporal {
        tid: b >> 6,
        layer_sync: b & 0x20 != 0,
    })
}

/// The measured bitrate of each temporal layer of one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct TemporalMeters {
    meters: [BitrateMeter; MAX_TEMPORAL_LAYERS],
    /// Whether any packet carried a TID.
    seen: bool,
}

impl TemporalMeters {
    /// Counts `bytes` of temporal layer `tid` arriving at `now`.
    pub fn add(&mut self, now: std::time::Instant, tid: u8, bytes: usize) {
        self.seen = true;
        if let Some(m) = self.meters.get_mut(usize::from(tid)) {
            m.add(now, bytes);
        }
    }

    /// The cumulative rate of layers `0..=tid` for each temporal layer flowing at `now`, in
    /// order (empty when the stream has no temporal layers). A layer that has not been
    /// measured yet ends the list.
    pub fn cumulative(&self, now: std::time::Instant) -> ([u64; MAX_TEMPORAL_LAYERS], usize) {
        let mut out = [0; MAX_TEMPORAL_LAYERS];
        let mut n = 0;
        if !self.seen {
            return (out, 0);
        }
        let mut sum = 0;
        for m in &self.meters {
            let Some(rate) = m.bps(now) else { break };
            sum += rate;
            out[n] = sum;
            n += 1;
        }
        (out, n)
    }
}

/// One way to serve a video to a subscriber: a spatial (simulcast) layer, up to a temporal
/// layer, and what that costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOption {
    /// The spatial layer's index among the publisher's layers.
    pub spatial: u8,
    /// The highest temporal layer forwarded ([`ALL_TEMPORAL`]: all of them).
    pub max_tid: u8,
    /// Its measured rate, bits/s.
    pub rate: u64,
}

/// Appends to `out` the ways to serve a video, from the lowest quality up.
///
/// `layers` holds, for each flowing spatial layer in quality order (lowest first), its index,
/// its full rate and the cumulative rates of its temporal layers (empty without temporal
/// layers). With `temporal_first` every spatial layer offers its reduced frame rates below its
/// full rate, so a budget between a layer's base rate and its full rate keeps that layer's
/// picture size (and a single-layer video gets a lower frame rate before a pause); without
/// it, whole layers only.
pub fn options(layers: &[(u8, u64, &[u64])], temporal_first: bool, out: &mut Vec<LayerOption>) {
    for (spatial, full, cumulative) in layers {
        if cumulative.len() >= 2 && temporal_first {
            for (tid, rate) in cumulative[..cumulative.len() - 1].iter().enumerate() {
                out.push(LayerOption {
                    spatial: *spatial,
                    max_tid: tid as u8,
                    rate: *rate,
                });
            }
        }
        out.push(LayerOption {
            spatial: *spatial,
            max_tid: ALL_TEMPORAL,
            rate: *full,
        });
    }
}

/// Which temporal layers one subscriber receives of one stream, decided frame by frame.
#[derive(Debug, Clone, Copy)]
pub struct TemporalSelector {
    target: u8,
    current: u8,
    /// The newest frame decided: its picture id and whether it is forwarded.
    frame: Option<(u16, bool)>,
    /// The decisions for the last [`HISTORY`] frames, by picture id modulo [`HISTORY`], so that
    /// a late packet (a retransmission) follows its frame.
    history: [Option<(u16, bool)>; HISTORY],
}

/// Frames whose decision is remembered for late packets.
const HISTORY: usize = 32;

/// What to do with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Forward it.
    pub forward: bool,
    /// It is the first packet seen of a frame newer than any before.
    pub new_frame: bool,
}

impl Default for TemporalSelector {
    fn default() -> Self {
        TemporalSelector {
            target: ALL_TEMPORAL,
            current: ALL_TEMPORAL,
            frame: None,
            history: [None; HISTORY],
        }
    }
}

const PIC_MASK: u16 = 0x7fff;

impl TemporalSelector {
    /// The highest temporal layer wanted.
    pub fn target(&self) -> u8 {
        self.target
    }

    /// The highest temporal layer forwarded now (it reaches the target going up at a layer-sync
    /// frame or a keyframe).
    pub fn current(&self) -> u8 {
        self.current
    }

    /// Wants layers `0..=max_tid` from the next frame on (down at once, up at a sync frame).
    pub fn set_target(&mut self, max_tid: u8) {
        self.target = max_tid.min(ALL_TEMPORAL);
    }

    /// A keyframe starts the stream afresh (after a spatial switch or a new source): every
    /// wanted layer can follow it.
    pub fn restart(&mut self, pic: Option<u16>) {
        self.current = self.target;
        self.frame = pic.map(|p| (p, true));
        if let Some(p) = pic {
            self.remember(p, true);
        }
    }

    /// Decides for a packet of frame `pic` in temporal layer `t`.
    pub fn decide(&mut self, pic: u16, t: Temporal, keyframe: bool) -> Decision {
        let newer = match self.frame {
            Some((last, forward)) if last == pic => {
                return Decision {
                    forward,
                    new_frame: false,
                }
            }
            Some((last, _)) => {
                let ahead = pic.wrapping_sub(last) & PIC_MASK;
                ahead != 0 && ahead < 0x4000
            }
            None => true,
        };
        if !newer {
            // A late packet of an older frame follows its frame's decision; one too old to be
            // remembered goes only if its layer is forwarded now.
            let forward = match self.history[usize::from(pic) % HISTORY] {
                Some((p, forward)) if p == pic => forward,
                _ => t.tid <= self.current,
            };
            return Decision {
                forward,
                new_frame: false,
            };
        }
        if self.target < self.current {
            self.current = self.target;
        }
        let forward = if keyframe {
            self.current = self.target;
            true
        } else if t.tid <= self.current {
            true
        } else if t.tid <= self.target && t.layer_sync {
            self.current = t.tid;
            true
        } else {
            false
        };
        self.frame = Some((pic, forward));
        self.remember(pic, forward);
        Decision {
            forward,
            new_frame: true,
        }
    }
}

impl TemporalSelector {
    fn remember(&mut self, pic: u16, forward: bool) {
        self.history[usize::from(pic) % HISTORY] = Some((pic, forward));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: u8, layer_sync: bool) -> Temporal {
        Temporal { tid, layer_sync }
    }

    #[test]
    fn parses_tid_and_sync_after_picture_id_and_tl0() {
        // X, I with a 15-bit picture id, L, T: TID 2, Y.
        assert_eq!(
            vp8_temporal(&[0x90, 0xe0, 0x81, 0x02, 7, 0xa0, 0x00]),
            Some(t(2, true))
        );
        // 7-bit picture id.
        assert_eq!(
            vp8_temporal(&[0x90, 0xe0, 0x05, 7, 0x40, 0x00]),
            Some(t(1, false))
        );
        assert_eq!(vp8_temporal(&[0x90, 0x80, 0x81, 0x02, 0x00]), None);
        assert_eq!(vp8_temporal(&[0x10, 0x00]), None);
        assert_eq!(vp8_temporal(&[0x90, 0xe0, 0x81]), None);
    }

    #[test]
    fn options_offer_reduced_frame_rates_first() {
        let q: &[u64] = &[90_000, 150_000];
        let f: &[u64] = &[700_000, 1_200_000];
        let layers = [(0u8, 150_000u64, q), (2, 1_200_000, f)];
        let mut out = Vec::new();
        options(&layers, true, &mut out);
        let got: Vec<(u8, u8, u64)> = out.iter().map(|o| (o.spatial, o.max_tid, o.rate)).collect();
        assert_eq!(
            got,
            [
                (0, 0, 90_000),
                (0, ALL_TEMPORAL, 150_000),
                (2, 0, 700_000),
                (2, ALL_TEMPORAL, 1_200_000)
            ]
        );
        out.clear();
        options(&layers, false, &mut out);
        assert_eq!(out.len(), 2, "whole layers");
        out.clear();
        options(&[(0, 500_000, &[])], true, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn down_at_once_up_at_a_sync_frame() {
        let mut s = TemporalSelector::default();
        s.set_target(2);
        s.restart(Some(0));
        // Pattern 0 2 1 2: everything flows.
        assert!(s.decide(1, t(2, true), false).forward);
        assert!(
            s.decide(1, t(2, true), false)
                == Decision {
                    forward: true,
                    new_frame: false
                }
        );
        s.set_target(0);
        assert!(
            !s.decide(2, t(1, true), false).forward,
            "down at the next frame"
        );
        assert!(!s.decide(3, t(2, false), false).forward);
        assert!(s.decide(4, t(0, false), false).forward);
        assert_eq!(s.current(), 0);
        s.set_target(2);
        // TL2 frame 7 is not a sync frame: waits; TL2 frame 5 is.
        assert!(s.decide(5, t(2, true), false).forward);
        assert_eq!(s.current(), 2);
        // A late packet of a dropped frame stays dropped, one of a forwarded frame goes.
        assert!(!s.decide(3, t(2, false), false).forward);
        assert!(s.decide(1, t(2, true), false).forward);
        s.set_target(0);
        assert!(!s.decide(6, t(1, true), false).forward);
        s.set_target(1);
        assert!(!s.decide(7, t(2, false), false).forward);
        assert!(s.decide(8, t(0, false), false).forward);
        assert!(s.decide(10, t(1, true), false).forward, "TL1 sync frame");
        assert_eq!(s.current(), 1);
    }
}
