//! The RTP payload descriptor of VP8 (RFC 7741 §4.2) with temporal-layer fields, and a
//! packetizer that writes it.
//!
//! `webrtc`'s own VP8 payloader writes a picture id only. A stream with temporal layers also
//! needs, on every packet, the frame's layer (TID), whether the frame depends only on the base
//! layer (Y) and the running index of base-layer frames (TL0PICIDX), so that the SFU can drop
//! upper layers for one subscriber and the receiver still knows which frames it needs.
//!
//! ```text
//!       0 1 2 3 4 5 6 7
//!      +-+-+-+-+-+-+-+-+
//!      |X|R|N|S|R| PID |  X: extensions present, N: non-reference, S: partition start
//!      +-+-+-+-+-+-+-+-+
//!   X: |I|L|T|K| RSV   |  picture id, TL0PICIDX, TID/Y, KEYIDX present
//!      +-+-+-+-+-+-+-+-+
//!   I: |M| PictureID   |  M: 15-bit picture id (two bytes)
//!      +-+-+-+-+-+-+-+-+
//!      |   PictureID   |
//!      +-+-+-+-+-+-+-+-+
//!   L: |   TL0PICIDX   |
//!      +-+-+-+-+-+-+-+-+
//! T/K: |TID|Y| KEYIDX  |
//!      +-+-+-+-+-+-+-+-+
//! ```

use super::temporal::TemporalLayer;

/// A parsed (or to be written) VP8 payload descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Descriptor {
    /// N: the frame is not used as a reference by any other frame.
    pub non_reference: bool,
    /// S: the packet starts a VP8 partition.
    pub start_of_partition: bool,
    /// PID: the partition index (0 for the first partition of a frame).
    pub partition_id: u8,
    /// The 15-bit picture id (the 7-bit form is widened when parsed).
    pub picture_id: Option<u16>,
    /// The running index of base-layer (TL0) frames.
    pub tl0_pic_idx: Option<u8>,
    /// TID and Y.
    pub temporal: Option<TemporalLayer>,
}

impl Vp8Descriptor {
    /// Whether the packet is the first of a frame (S set, partition 0).
    pub fn starts_frame(&self) -> bool {
        self.start_of_partition && self.partition_id == 0
    }

    /// Parses the descriptor at the start of an RTP payload; returns it and its length in
    /// bytes (where the VP8 data starts). `None` when the payload is shorter than the
    /// descriptor it announces or announces TL0PICIDX without a TID, as RFC 7741 forbids.
    pub fn parse(payload: &[u8]) -> Option<(Vp8Descriptor, usize)> {
        let first = *payload.first()?;
        let mut d = Vp8Descriptor {
            non_reference: first & 0x20 != 0,
            start_of_partition: first & 0x10 != 0,
            partition_id: first & 0x07,
            ..Vp8Descriptor::default()
        };
        let mut at = 1;
        if first & 0x80 != 0 {
            let ext = *payload.get(at)?;
            at += 1;
            let (has_pic, has_tl0, has_tid, has_key) = (
                ext & 0x80 != 0,
                ext & 0x40 != 0,
                ext & 0x20 != 0,
                ext & 0x10 != 0,
            );
            if has_tl0 && !has_tid {
                return None;
            }
            if has_pic {
                let hi = *payload.get(at)?;
                at += 1;
                d.picture_id = Some(if hi & 0x80 != 0 {
                    let lo = *payload.get(at)?;
                    at += 1;
                    (u16::from(hi & 0x7f) << 8) | u16::from(lo)
                } else {
                    u16::from(hi)
                });
            }
            if has_tl0 {
                d.tl0_pic_idx = Some(*payload.get(at)?);
                at += 1;
            }
            if has_tid || has_key {
                let b = *payload.get(at)?;
                at += 1;
                if has_tid {
                    d.temporal = Some(TemporalLayer {
                        tid: b >> 6,
                        layer_sync: b & 0x20 != 0,
                    });
                }
            }
        }
        (at <= payload.len()).then_some((d, at))
    }

    /// Appends the descriptor's bytes to `out` (the picture id always in its 15-bit form).
    pub fn write(&self, out: &mut Vec<u8>) {
        let extended =
            self.picture_id.is_some() || self.tl0_pic_idx.is_some() || self.temporal.is_some();
        out.push(
            (u8::from(extended) << 7)
                | (u8::from(self.non_reference) << 5)
                | (u8::from(self.start_of_partition) << 4)
                | (self.partition_id & 0x07),
        );
        if !extended {
            return;
        }
        // TL0PICIDX needs the T/K byte too (L requires T).
        let tl0 = self.tl0_pic_idx.filter(|_| self.temporal.is_some());
        out.push(
            (u8::from(self.picture_id.is_some()) << 7)
                | (u8::from(tl0.is_some()) << 6)
                | (u8::from(self.temporal.is_some()) << 5),
        );
        if let Some(pic) = self.picture_id {
            out.push(0x80 | ((pic >> 8) & 0x7f) as u8);
            out.push(pic as u8);
        }
        if let Some(t) = tl0 {
            out.push(t);
        }
        if let Some(t) = self.temporal {
            out.push(((t.tid & 0x03) << 6) | (u8::from(t.layer_sync) << 5));
        }
    }
}

/// Splits VP8 frames into RTP payloads, each with a descriptor carrying the picture id and,
/// for a stream with temporal layers, TID, Y and TL0PICIDX.
///
/// The picture id increases by one per frame (15 bits); TL0PICIDX increases by one per
/// base-layer frame and upper-layer frames carry the index of the base frame they follow.
#[derive(Debug, Clone)]
pub struct Vp8Packetizer {
    picture_id: u16,
    tl0_pic_idx: u8,
}

impl Vp8Packetizer {
    /// A packetizer whose first frame gets `picture_id` (taken modulo 2^15) and, if it is a
    /// base-layer frame, TL0PICIDX `tl0_pic_idx`.
    pub fn new(picture_id: u16, tl0_pic_idx: u8) -> Self {
        Vp8Packetizer {
            picture_id: picture_id & 0x7fff,
            // The first TL0 frame increments it.
            tl0_pic_idx: tl0_pic_idx.wrapping_sub(1),
        }
    }

    /// The RTP payloads of one frame, each at most `mtu` bytes (at least one payload, even
    /// for an empty frame). `temporal` is the frame's layer (`None` without temporal layers).
    pub fn packetize(
        &mut self,
        frame: &[u8],
        temporal: Option<TemporalLayer>,
        mtu: usize,
    ) -> Vec<Vec<u8>> {
        if temporal.is_some_and(|t| t.tid == 0) {
            self.tl0_pic_idx = self.tl0_pic_idx.wrapping_add(1);
        }
        let mut descriptor = Vp8Descriptor {
            start_of_partition: true,
            picture_id: Some(self.picture_id),
            tl0_pic_idx: temporal.map(|_| self.tl0_pic_idx),
            temporal,
            ..Vp8Descriptor::default()
        };
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        let mut header = Vec::with_capacity(6);
        descriptor.write(&mut header);
        // The descriptor has the same length on every packet of the frame.
        let room = mtu.saturating_sub(header.len()).max(1);
        let mut out = Vec::with_capacity(frame.len() / room + 1);
        let mut chunks = frame.chunks(room).peekable();
        if chunks.peek().is_none() {
            out.push(header);
            return out;
        }
        for chunk in chunks {
            let mut payload = Vec::with_capacity(header.len() + chunk.len());
            descriptor.write(&mut payload);
            payload.extend_from_slice(chunk);
            out.push(payload);
            descriptor.start_of_partition = false;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::temporal::TemporalPattern;
    use super::*;

    #[test]
    fn descriptor_round_trip() {
        let d = Vp8Descriptor {
            non_reference: true,
            start_of_partition: true,
            partition_id: 0,
            picture_id: Some(0x1234),
            tl0_pic_idx: Some(200),
            temporal: Some(TemporalLayer {
                tid: 2,
                layer_sync: true,
            }),
        };
        let mut bytes = Vec::new();
        d.write(&mut bytes);
        assert_eq!(bytes, [0xb0, 0xe0, 0x92, 0x34, 200, 0xa0]);
        bytes.push(0x9d);
        assert_eq!(Vp8Descriptor::parse(&bytes), Some((d, 6)));
        // Only a picture id; and the 7-bit picture id form.
        let plain = Vp8Descriptor {
            picture_id: Some(5),
            ..Vp8Descriptor::default()
        };
        let mut b = Vec::new();
        plain.write(&mut b);
        assert_eq!(Vp8Descriptor::parse(&b), Some((plain, 4)));
        assert_eq!(
            Vp8Descriptor::parse(&[0x90, 0x80, 0x05]).map(|d| d.0.picture_id),
            Some(Some(5))
        );
        // Truncated, and L without T.
        assert_eq!(Vp8Descriptor::parse(&bytes[..4]), None);
        assert_eq!(Vp8Descriptor::parse(&[0x90, 0x40, 0x01]), None);
    }

    #[test]
    fn packetizer_numbers_frames_and_base_layer() {
        let pattern = TemporalPattern::new(3).unwrap();
        let mut p = Vp8Packetizer::new(0x7ffe, 255);
        let frame = vec![0xabu8; 2500];
        let mut seen = Vec::new();
        for i in 0..8 {
            let layer = pattern.layer_at(i);
            let payloads = p.packetize(&frame, Some(layer), 1200);
            assert_eq!(payloads.len(), 3, "2500 bytes in 1200-byte payloads");
            let mut data = 0;
            for (k, payload) in payloads.iter().enumerate() {
                assert!(payload.len() <= 1200);
                let (d, len) = Vp8Descriptor::parse(payload).unwrap();
                assert_eq!(d.start_of_partition, k == 0);
                assert_eq!(d.temporal, Some(layer));
                data += payload.len() - len;
                if k == 0 {
                    seen.push((d.picture_id.unwrap(), d.tl0_pic_idx.unwrap(), layer.tid));
                }
            }
            assert_eq!(data, frame.len());
        }
        assert_eq!(
            seen,
            [
                (0x7ffe, 255, 0),
                (0x7fff, 255, 2),
                (0, 255, 1),
                (1, 255, 2),
                (2, 0, 0),
                (3, 0, 2),
                (4, 0, 1),
                (5, 0, 2),
            ]
        );
        // Without temporal layers: a picture id and nothing else.
        let (d, _) = Vp8Descriptor::parse(&p.packetize(b"x", None, 1200)[0]).unwrap();
        assert_eq!(
            (d.picture_id, d.tl0_pic_idx, d.temporal),
            (Some(6), None, None)
        );
    }
}
