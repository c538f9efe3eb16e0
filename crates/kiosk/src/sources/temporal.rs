//! VP8 temporal scalability: which temporal layer each frame belongs to, which reference
//! buffers it may use and update, and how the bitrate is shared between the layers.
//!
//! A subscriber that receives only the lower layers still decodes every frame it gets, so the
//! SFU can halve (or quarter) a camera's frame rate for one subscriber instead of pausing it
//! or switching to a smaller simulcast layer. The patterns:
//!
//! | layers | frames (one period) | base layer (TL0) share of the bitrate |
//! |---|---|---|
//! | 1 | TL0 | 100 % |
//! | 2 | TL0, TL1 | 60 % (TL0+TL1: 100 %) |
//! | 3 | TL0, TL2, TL1, TL2 | 40 % (TL0+TL1: 60 %, all: 100 %) |
//!
//! TL0 frames reference and update only the "last" buffer, so they never depend on a frame of
//! a higher layer. In the three-layer pattern the TL1 frame references TL0 and updates the
//! golden buffer, which the second TL2 frame references; every other upper-layer frame
//! references only TL0 and updates nothing (a receiver can switch up at it: `layer_sync`).
//! A keyframe is always TL0 and starts a period: keyframes are placed at period boundaries.

use vpx_sys as vpx;

/// Most temporal layers an encoder accepts.
pub const MAX_TEMPORAL_LAYERS: u8 = 3;

/// The temporal layer of one encoded frame, carried in the RTP VP8 payload descriptor
/// (RFC 7741 §4.2: TID and Y).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalLayer {
    /// The temporal layer index (TID), 0 for the base layer.
    pub tid: u8,
    /// Whether the frame depends only on base-layer (TL0) frames (the Y bit): a receiver
    /// that so far got only lower layers can start receiving this frame's layer here.
    pub layer_sync: bool,
}

/// The per-frame schedule of a temporal layer pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalPattern {
    layers: u8,
}

impl TemporalPattern {
    /// A pattern of `layers` temporal layers (1 to [`MAX_TEMPORAL_LAYERS`]); `None` outside.
    pub fn new(layers: u8) -> Option<Self> {
        (1..=MAX_TEMPORAL_LAYERS)
            .contains(&layers)
            .then_some(TemporalPattern { layers })
    }

    /// The number of temporal layers.
    pub fn layers(&self) -> u8 {
        self.layers
    }

    /// The number of frames after which the pattern repeats.
    pub fn periodicity(&self) -> usize {
        self.steps().len()
    }

    /// The layer of the frame at `index` frames after the start of a period (a keyframe).
    pub fn layer_at(&self, index: usize) -> TemporalLayer {
        let step = self.steps()[index % self.periodicity()];
        TemporalLayer {
            tid: step.tid,
            layer_sync: step.sync,
        }
    }

    /// Each layer's cumulative share of the total bitrate, in percent (the last is 100).
    pub fn cumulative_percent(&self) -> &'static [u32] {
        match self.layers {
            1 => &[100],
            2 => &[60, 100],
            _ => &[40, 60, 100],
        }
    }

    /// The frame-rate divider of each layer relative to the full rate (4, 2, 1 for three
    /// layers): TL0 alone has `full / divider[0]` frames per second.
    pub fn rate_decimators(&self) -> &'static [u32] {
        match self.layers {
            1 => &[1],
            2 => &[2, 1],
            _ => &[4, 2, 1],
        }
    }

    /// The libvpx encode flags (reference and update restrictions) of the frame at `index`.
    pub(crate) fn flags_at(&self, index: usize) -> vpx::vpx_enc_frame_flags_t {
        let step = self.steps()[index % self.periodicity()];
        vpx::vpx_enc_frame_flags_t::from(step.flags)
    }

    fn steps(&self) -> &'static [Step] {
        match self.layers {
            1 => &ONE,
            2 => &TWO,
            _ => &THREE,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Step {
    tid: u8,
    sync: bool,
    flags: u32,
}

const NO_REF_GF: u32 = vpx::VP8_EFLAG_NO_REF_GF;
const NO_REF_ARF: u32 = vpx::VP8_EFLAG_NO_REF_ARF;
const NO_UPD_LAST: u32 = vpx::VP8_EFLAG_NO_UPD_LAST;
const NO_UPD_GF: u32 = vpx::VP8_EFLAG_NO_UPD_GF;
const NO_UPD_ARF: u32 = vpx::VP8_EFLAG_NO_UPD_ARF;
const NO_UPD_ENTROPY: u32 = vpx::VP8_EFLAG_NO_UPD_ENTROPY;

/// TL0: references and updates "last" only.
const BASE: u32 = NO_REF_GF | NO_REF_ARF | NO_UPD_GF | NO_UPD_ARF;
/// An upper-layer frame that references TL0 only and updates nothing.
const DROPPABLE: u32 =
    NO_REF_GF | NO_REF_ARF | NO_UPD_LAST | NO_UPD_GF | NO_UPD_ARF | NO_UPD_ENTROPY;

/// One layer: the encoder's own choice of references (no restriction).
const ONE: [Step; 1] = [Step {
    tid: 0,
    sync: false,
    flags: 0,
}];

const TWO: [Step; 2] = [
    Step {
        tid: 0,
        sync: false,
        flags: BASE,
    },
    Step {
        tid: 1,
        sync: true,
        flags: DROPPABLE,
    },
];

const THREE: [Step; 4] = [
    Step {
        tid: 0,
        sync: false,
        flags: BASE,
    },
    Step {
        tid: 2,
        sync: true,
        flags: DROPPABLE,
    },
    // TL1: references TL0, keeps itself in "golden" for the next TL2 frame.
    Step {
        tid: 1,
        sync: true,
        flags: NO_REF_GF | NO_REF_ARF | NO_UPD_LAST | NO_UPD_ARF | NO_UPD_ENTROPY,
    },
    // TL2: references TL0 ("last") and TL1 ("golden"), updates nothing.
    Step {
        tid: 2,
        sync: false,
        flags: NO_REF_ARF | NO_UPD_LAST | NO_UPD_GF | NO_UPD_ARF | NO_UPD_ENTROPY,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_per_frame() {
        let tids = |layers: u8| -> Vec<u8> {
            let p = TemporalPattern::new(layers).unwrap();
            (0..8).map(|i| p.layer_at(i).tid).collect()
        };
        assert_eq!(tids(1), [0; 8]);
        assert_eq!(tids(2), [0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(tids(3), [0, 2, 1, 2, 0, 2, 1, 2]);
        let three = TemporalPattern::new(3).unwrap();
        let sync: Vec<bool> = (0..4).map(|i| three.layer_at(i).layer_sync).collect();
        assert_eq!(sync, [false, true, true, false]);
        assert!(TemporalPattern::new(0).is_none());
        assert!(TemporalPattern::new(4).is_none());
    }

    #[test]
    fn base_layer_never_references_an_upper_layer() {
        for layers in 1..=MAX_TEMPORAL_LAYERS {
            let p = TemporalPattern::new(layers).unwrap();
            for i in 0..p.periodicity() {
                let flags = p.flags_at(i) as u32;
                if p.layer_at(i).tid > 0 {
                    // Upper layers never touch what TL0 references.
                    assert_ne!(flags & NO_UPD_LAST, 0, "{layers} layers, frame {i}");
                } else if layers > 1 {
                    assert_ne!(flags & NO_REF_GF, 0);
                    assert_ne!(flags & NO_REF_ARF, 0);
                }
            }
            assert_eq!(p.cumulative_percent().len(), usize::from(layers));
            assert_eq!(p.rate_decimators().len(), usize::from(layers));
            assert_eq!(p.cumulative_percent().last(), Some(&100));
        }
    }
}
