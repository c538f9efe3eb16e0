//! What the SFU needs to know about a codec without decoding it: is this packet the start of a
//! keyframe? Forwarding switches a subscriber between simulcast layers, or starts a new subscriber,
//! only there, so the receiver's decoder never sees a reference it does not have.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// Whether `payload` (an RTP payload, no header) begins a keyframe in `codec`.
///
/// Codecs without keyframes (audio) always answer `true`: any packet is a valid starting point.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::Vp8 => Vp8Descriptor::parse(payload)
            .map(|d| d.starts_keyframe(payload))
            .unwrap_or(false),
        Codec::Vp9 => vp9_starts_keyframe(payload),
        Codec::H264 => h264_starts_keyframe(payload),
        Codec::Av1 => av1_starts_keyframe(payload),
        Codec::H265 | Codec::H266 => false,
        _ => true,
    }
}

/// Whether the SFU forwards this codec (Opus and the common video codecs; no transcoding ever).
pub fn is_forwarded(codec: Codec) -> bool {
    matches!(
        codec,
        Codec::Opus | Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1
    )
}

/// VP9 payload descriptor (RFC 9628 §4.2): a keyframe starts at a packet with the B (start of
/// frame) bit set and the P (inter-picture predicted) bit clear, on spatial layer 0.
fn vp9_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    let i = b0 & 0x80 != 0;
    let p = b0 & 0x40 != 0;
    let l = b0 & 0x20 != 0;
    let f = b0 & 0x10 != 0;
    let b = b0 & 0x08 != 0;
    if p || !b {
        return false;
    }
    if !l {
        return true;
    }
    // Layer indices follow the picture id.
    let mut off = 1;
    if i {
        let Some(&pid) = payload.get(1) else {
            return false;
        };
        off += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    let Some(&layers) = payload.get(off) else {
        return false;
    };
    let sid = (layers >> 1) & 0x07;
    // In flexible mode there is no TL0PICIDX; either way spatial layer 0 starts the keyframe.
    let _ = f;
    sid == 0
}

/// H.264 (RFC 6184): an IDR slice (type 5) or a parameter set (7, 8) that precedes it, alone, in
/// a STAP-A (24), or at the start of an FU-A (28).
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    match b0 & 0x1f {
        5 | 7 | 8 => true,
        24 => {
            // STAP-A: 16-bit size, then NAL unit, repeated.
            let mut off = 1;
            while off + 2 < payload.len() {
                let size = usize::from(u16::from_be_bytes([payload[off], payload[off + 1]]));
                let Some(&nal) = payload.get(off + 2) else {
                    return false;
                };
                if matches!(nal & 0x1f, 5 | 7) {
                    return true;
                }
                off += 2 + size;
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1f == 5),
        _ => false,
    }
}

/// AV1 (RTP payload format for AV1 §4.4): the N bit of the aggregation header marks the first
/// packet of a coded video sequence, which starts with a keyframe.
fn av1_starts_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|&h| h & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_and_delta() {
        // X=0, S=1, PID=0; VP8 payload header with P bit (bit 0) clear = keyframe.
        let key = [0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a];
        let delta = [0x10, 0x01, 0x00, 0x00];
        let middle = [0x00, 0x00, 0x00, 0x00];
        assert!(starts_keyframe(Codec::Vp8, &key));
        assert!(!starts_keyframe(Codec::Vp8, &delta));
        assert!(!starts_keyframe(Codec::Vp8, &middle));
        assert!(!starts_keyframe(Codec::Vp8, &[]));
    }

    #[test]
    fn h264_variants() {
        assert!(starts_keyframe(Codec::H264, &[0x65, 0x88]));
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42]));
        assert!(!starts_keyframe(Codec::H264, &[0x41, 0x9a]));
        // STAP-A holding SPS.
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0x00, 0x02, 0x67, 0x42]
        ));
        // FU-A start of IDR, and continuation.
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]));
        assert!(!starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]));
        // Truncated STAP-A does not panic.
        assert!(!starts_keyframe(Codec::H264, &[0x78, 0xff]));
    }

    #[test]
    fn vp9_and_av1() {
        assert!(starts_keyframe(Codec::Vp9, &[0x08]));
        assert!(!starts_keyframe(Codec::Vp9, &[0x48]));
        assert!(!starts_keyframe(Codec::Vp9, &[0x00]));
        assert!(starts_keyframe(Codec::Av1, &[0x08]));
        assert!(!starts_keyframe(Codec::Av1, &[0x10]));
        assert!(starts_keyframe(Codec::Opus, &[]));
    }
}
