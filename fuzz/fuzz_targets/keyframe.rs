//! Codec payload inspection (VP8/VP9/H264/AV1 keyframe detection) on arbitrary payloads.
#![no_main]
use cabine_sfu::codec::starts_keyframe;
use libfuzzer_sys::fuzz_target;
use str0m::format::Codec;

fuzz_target!(|data: &[u8]| {
    for c in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1, Codec::Opus] {
        let _ = starts_keyframe(c, data);
    }
});
