//! The synthetic sources really encode: VP8 frames decode with keyframes where expected and
//! sizes that match the bitrate; Opus packets decode; the stethoscope's energy is in the
//! heart-sound band and the encoders run in the modes asked for.

use std::time::Duration;

use cabine_kiosk::sources::{
    AudioSource, MediaSource, OpusDecoder, Pattern, VideoSource, Vp8Config, Vp8Decoder, SAMPLE_RATE,
};

fn encode_video(mut source: VideoSource, frames: usize, force_at: &[usize]) -> Vec<(bool, usize)> {
    let mut decoder = Vp8Decoder::new().expect("VP8 decoder");
    let config = source.config();
    let mut out = Vec::new();
    for i in 0..frames {
        let frame = source.next_frame(force_at.contains(&i)).expect("encodes");
        assert_eq!(frame.duration, Duration::from_secs(1) / config.fps);
        assert!(!frame.data.is_empty(), "frame {i} is empty");
        let picture = decoder
            .decode(&frame.data)
            .unwrap_or_else(|e| panic!("frame {i} does not decode: {e}"))
            .expect("a picture per frame");
        assert_eq!(
            (picture.width, picture.height),
            (config.width, config.height)
        );
        assert!(
            (40.0..200.0).contains(&picture.mean_luma),
            "frame {i}: mean luma {}",
            picture.mean_luma
        );
        out.push((frame.keyframe, frame.data.len()));
    }
    out
}

fn check_video(name: &str, source: VideoSource, fps: usize, kbps: usize) {
    let config = source.config();
    assert_eq!(config.keyframe_interval as usize, 3 * fps);
    let seconds = 4;
    let frames = encode_video(source, seconds * fps, &[fps + 3]);
    let keyframes: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| f.0)
        .map(|(i, _)| i)
        .collect();
    // The first frame, the requested one, and the periodic one 3 s after it (libvpx counts
    // the interval from the last keyframe).
    assert_eq!(
        keyframes[..2],
        [0, fps + 3],
        "{name}: keyframes at {keyframes:?}"
    );
    assert!(keyframes.len() <= 3, "{name}: keyframes at {keyframes:?}");
    let key_size = frames[0].1;
    assert!(
        (500..150_000).contains(&key_size),
        "{name}: keyframe of {key_size} bytes"
    );
    // After the first second, the rate control holds the bitrate within a factor of two.
    let bytes: usize = frames[fps..].iter().map(|f| f.1).sum();
    let measured_kbps = bytes * 8 / (seconds - 1) / 1000;
    assert!(
        measured_kbps > kbps / 2 && measured_kbps < kbps * 2,
        "{name}: {measured_kbps} kbit/s for a {kbps} kbit/s target"
    );
    let max_delta = frames
        .iter()
        .filter(|f| !f.0)
        .map(|f| f.1)
        .max()
        .unwrap_or(0);
    assert!(
        max_delta > 100 && max_delta < 60_000,
        "{name}: delta frames up to {max_delta} bytes"
    );
}

#[test]
fn room_camera_encodes_to_decodable_vp8() {
    check_video(
        "room camera",
        VideoSource::room_camera(25, 600).expect("encoder"),
        25,
        600,
    );
}

#[test]
fn device_camera_encodes_to_decodable_vp8() {
    check_video(
        "device camera",
        VideoSource::device_camera(15, 400).expect("encoder"),
        15,
        400,
    );
}

#[test]
fn video_bitrate_can_change() {
    let mut low = VideoSource::room_camera(15, 150).expect("encoder");
    let mut high = VideoSource::room_camera(15, 150).expect("encoder");
    high.set_bitrate(1_200_000).expect("new bitrate");
    assert_eq!(high.config().bitrate_kbps, 1200);
    let total = |s: &mut VideoSource| -> usize {
        (0..45)
            .map(|_| s.next_frame(false).expect("encodes").data.len())
            .sum()
    };
    let (l, h) = (total(&mut low), total(&mut high));
    assert!(h > 2 * l, "1200 kbit/s gave {h} bytes, 150 kbit/s gave {l}");
    assert!(Vp8Config::new(15, 5).bitrate_kbps == 5 && VideoSource::room_camera(15, 5).is_err());
}

/// A camera with temporal layers: each frame carries its layer in the pattern, a keyframe asked
/// for mid-period comes at the next period start, the base layer gets about its share of the
/// bitrate, and a decoder given only the lower layers decodes every frame it gets.
#[test]
fn temporal_layers_decode_without_the_upper_ones() {
    let fps = 30;
    let config = Vp8Config {
        temporal_layers: 3,
        ..Vp8Config::new(fps, 800)
    };
    let mut source = VideoSource::new(Pattern::RoomCamera, config).expect("encoder");
    let frames: Vec<_> = (0..4 * fps as usize)
        .map(|i| source.next_frame(i == 41).expect("encodes"))
        .collect();
    let tids: Vec<u8> = frames
        .iter()
        .map(|f| f.temporal.expect("a temporal layer").tid)
        .collect();
    assert_eq!(tids[..8], [0, 2, 1, 2, 0, 2, 1, 2]);
    let keyframes: Vec<usize> = (0..frames.len()).filter(|&i| frames[i].keyframe).collect();
    // Asked for at frame 41 (mid-period), given at 44, the next period start.
    assert_eq!(keyframes, [0, 44]);
    for max_tid in 0..=2u8 {
        let mut decoder = Vp8Decoder::new().expect("decoder");
        let mut decoded = 0;
        for (i, f) in frames.iter().enumerate() {
            if tids[i] > max_tid {
                continue;
            }
            let picture = decoder
                .decode(&f.data)
                .unwrap_or_else(|e| panic!("TID<={max_tid}: frame {i} does not decode: {e}"))
                .expect("a picture");
            assert!(
                (40.0..200.0).contains(&picture.mean_luma),
                "TID<={max_tid}: frame {i} mean luma {}",
                picture.mean_luma
            );
            decoded += 1;
        }
        let expected = frames.len() >> (2 - max_tid);
        assert_eq!(decoded, expected, "TID<={max_tid}");
    }
    // After the first second: TL0 is ~40 % of the bytes, TL0+TL1 ~60 %.
    let bytes = |max: u8| -> usize {
        frames[fps as usize..]
            .iter()
            .zip(&tids[fps as usize..])
            .filter(|(_, t)| **t <= max)
            .map(|(f, _)| f.data.len())
            .sum()
    };
    let (tl0, tl01, all) = (bytes(0), bytes(1), bytes(2));
    let share = |b: usize| b as f64 / all as f64;
    println!(
        "TL0 {:.2}, TL0+TL1 {:.2} of {} kbit/s",
        share(tl0),
        share(tl01),
        all * 8 / 3 / 1000
    );
    assert!(
        (0.25..0.6).contains(&share(tl0)),
        "TL0 share {}",
        share(tl0)
    );
    assert!(share(tl0) < share(tl01) && share(tl01) < 0.85);
    assert!(
        Vp8Config {
            temporal_layers: 4,
            ..config
        }
        .temporal_layers
            == 4
    );
    assert!(VideoSource::new(
        Pattern::RoomCamera,
        Vp8Config {
            temporal_layers: 4,
            ..config
        }
    )
    .is_err());
}

fn decode_all(source: &mut AudioSource, seconds: usize) -> (Vec<Vec<u8>>, Vec<f32>) {
    let mut decoder = OpusDecoder::new().expect("Opus decoder");
    let mut packets = Vec::new();
    let mut pcm = Vec::new();
    let frames = seconds * 50;
    for _ in 0..frames {
        let frame = source.next_frame(false).expect("encodes");
        assert_eq!(frame.duration, Duration::from_millis(20));
        assert!(frame.keyframe);
        let decoded = decoder.decode(&frame.data).expect("decodes");
        assert_eq!(decoded.len(), 960);
        pcm.extend(decoded);
        packets.push(frame.data);
    }
    (packets, pcm)
}

/// Energy of `x` in [lo, hi) Hz (Goertzel on windows of half a second, 2 Hz resolution).
fn band_energy(x: &[f32], lo: f64, hi: f64) -> f64 {
    let n = SAMPLE_RATE as usize / 2;
    let mut total = 0.0;
    for window in x.chunks_exact(n) {
        let mut f = lo;
        while f < hi {
            let w = 2.0 * std::f64::consts::PI * f / f64::from(SAMPLE_RATE);
            let coeff = 2.0 * w.cos();
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for &v in window {
                let s0 = f64::from(v) + coeff * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            total += s1 * s1 + s2 * s2 - coeff * s1 * s2;
            f += 2.0;
        }
    }
    total
}

fn toc_config(packet: &[u8]) -> u8 {
    packet[0] >> 3
}

#[test]
fn stethoscope_is_music_mode_opus_with_heart_sound_energy() {
    let mut source = AudioSource::stethoscope(7, 72.0, 96_000).expect("encoder");
    let (packets, pcm) = decode_all(&mut source, 6);
    // CELT-only fullband (TOC configurations 28–31): no speech coding, no high-pass.
    assert!(
        packets.iter().skip(5).all(|p| toc_config(p) >= 28),
        "TOC configs {:?}",
        packets.iter().map(|p| toc_config(p)).collect::<Vec<_>>()
    );
    let bytes: usize = packets.iter().map(Vec::len).sum();
    let kbps = bytes * 8 / 6 / 1000;
    assert!(kbps >= 64, "stethoscope at {kbps} kbit/s");
    // Skip the codec's start-up, then compare bands.
    let body = &pcm[SAMPLE_RATE as usize..];
    let low = band_energy(body, 16.0, 200.0);
    let high = band_energy(body, 200.0, 2000.0);
    assert!(low > 0.0);
    assert!(
        low > 4.0 * high,
        "energy below 200 Hz {low:.1}, 200–2000 Hz {high:.1}"
    );
    // Beats: the 20 ms envelope has one loud S1 per beat, 72 a minute.
    let env: Vec<f32> = body
        .chunks(960)
        .map(|c| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt())
        .collect();
    let max = env.iter().cloned().fold(0.0, f32::max);
    let mut beats = 0;
    let mut last = -100i32;
    for (i, &e) in env.iter().enumerate() {
        if e > 0.5 * max && i as i32 - last > 15 {
            beats += 1;
            last = i as i32;
        }
    }
    // 5 s at 72 bpm: 6 beats (±1).
    assert!((5..=7).contains(&beats), "{beats} beats in 5 s");
    assert!(AudioSource::stethoscope(7, 72.0, 32_000).is_err());
}

#[test]
fn microphone_is_voice_mode_opus_that_decodes() {
    let mut source = AudioSource::microphone(3).expect("encoder");
    let (packets, pcm) = decode_all(&mut source, 4);
    // SILK or hybrid (TOC configurations 0–15) while speaking.
    let speech = packets.iter().filter(|p| toc_config(p) < 16).count();
    assert!(
        speech > packets.len() / 2,
        "{speech} speech-mode packets of {}",
        packets.len()
    );
    let rms = (pcm.iter().map(|v| v * v).sum::<f32>() / pcm.len() as f32).sqrt();
    assert!(rms > 0.01, "rms {rms}");
    // Pauses between phrases: some 20 ms frames are near silent.
    let quiet = pcm
        .chunks(960)
        .filter(|c| c.iter().map(|v| v.abs()).fold(0.0, f32::max) < 0.01)
        .count();
    assert!(quiet >= 10, "{quiet} quiet frames");
}
