//! Micro-benchmarks of the per-packet path: the SFU's forwarding decision and RTP rewrite
//! (`cabine_sfu::forwarder`, `codec`, VP8 descriptor patch), SRTP protect/unprotect with the
//! ciphers str0m's crypto provider gives the SFU (AEAD-AES-128-GCM and AES-128-CM-HMAC-SHA1-80 on
//! a 1,200-byte payload), and telemetry frame encode/decode (`cabine_proto::telemetry`).
//!
//! `cargo bench -p cabine-loadgen --bench per_packet`

use std::time::{Duration, Instant};

use cabine_proto::telemetry::{
    client_frame::Body, encode_frame, ClientFrame, FrameDecoder, Measurement, Value, WaveformChunk,
};
use cabine_sfu::codec;
use cabine_sfu::forwarder::{Forwarder, InPacket};
use divan::{black_box, Bencher};
use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

fn main() {
    divan::main();
}

fn vp8_payload(key: bool, pic: u16) -> Vec<u8> {
    let mut p = vec![0x42u8; 1_200];
    p[0] = 0x90;
    p[1] = 0x80;
    p[2] = 0x80 | (pic >> 8) as u8;
    p[3] = (pic & 0xff) as u8;
    p[4] = if key { 0x10 } else { 0x11 };
    p
}

/// The forwarding decision alone: layer, keyframe gate and sequence/timestamp offsets.
#[divan::bench]
fn forwarding_decision(b: Bencher) {
    let t0 = Instant::now();
    let mut f = Forwarder::new(90_000, 0);
    let mut seq = 1_000u64;
    b.bench_local(|| {
        seq += 1;
        let p = InPacket {
            layer: 0,
            seq,
            ts: (seq as u32).wrapping_mul(3_000),
            keyframe: seq == 1_001,
            vp8: Some(((seq & 0x7fff) as u16, None)),
            temporal: None,
            arrival: t0 + Duration::from_micros(seq),
        };
        black_box(f.forward(black_box(&p)))
    });
}

/// What the SFU does per packet and subscriber before str0m serialises it: keyframe detection,
/// the decision, VP8 descriptor parse and the picture-id patch.
#[divan::bench]
fn rtp_header_rewrite(b: Bencher) {
    let t0 = Instant::now();
    let mut f = Forwarder::new(90_000, 0);
    let payloads = [vp8_payload(true, 5), vp8_payload(false, 6)];
    let mut seq = 1_000u64;
    b.bench_local(|| {
        seq += 1;
        let payload = &payloads[usize::from(seq != 1_001)];
        let keyframe = codec::starts_keyframe(Codec::Vp8, payload);
        let d = Vp8Descriptor::parse(payload).ok();
        let vp8 = d.and_then(|d| d.picture_id().map(|p| (p, d.tl0_pic_idx())));
        let p = InPacket {
            layer: 0,
            seq,
            ts: (seq as u32).wrapping_mul(3_000),
            keyframe,
            vp8,
            temporal: None,
            arrival: t0 + Duration::from_micros(seq),
        };
        let out = f.forward(&p);
        if let (Ok(o), Some(d)) = (out, d) {
            if let Some((pic, _)) = o.vp8 {
                return black_box(d.patch().picture_id(pic).build().is_ok());
            }
        }
        false
    });
}

const SRTP_PAYLOAD: usize = 1_200;

/// SRTP protect: AEAD-AES-128-GCM encryption of a 1,200-byte payload with a 12-byte header as
/// associated data.
#[divan::bench]
fn srtp_protect_aes128_gcm(b: Bencher) {
    let provider = str0m::crypto::from_feature_flags();
    let mut c = provider
        .srtp_provider
        .aead_aes_128_gcm()
        .create_cipher([7; 16], true);
    let input = vec![0x5au8; SRTP_PAYLOAD];
    let mut out = vec![0u8; SRTP_PAYLOAD + 16];
    let aad = [0x80u8; 12];
    let mut n = 0u32;
    b.bench_local(|| {
        n = n.wrapping_add(1);
        let mut iv = [1u8; 12];
        iv[8..].copy_from_slice(&n.to_be_bytes());
        black_box(c.encrypt(&iv, &aad, black_box(&input), &mut out).is_ok())
    });
}

/// SRTP unprotect: AEAD-AES-128-GCM decryption and tag check of the same packet.
#[divan::bench]
fn srtp_unprotect_aes128_gcm(b: Bencher) {
    let provider = str0m::crypto::from_feature_flags();
    let srtp = provider.srtp_provider.aead_aes_128_gcm();
    let mut enc = srtp.create_cipher([7; 16], true);
    let mut dec = srtp.create_cipher([7; 16], false);
    let input = vec![0x5au8; SRTP_PAYLOAD];
    let mut sealed = vec![0u8; SRTP_PAYLOAD + 16];
    let aad = [0x80u8; 12];
    let iv = [1u8; 12];
    assert!(enc.encrypt(&iv, &aad, &input, &mut sealed).is_ok());
    let mut out = vec![0u8; SRTP_PAYLOAD + 16];
    b.bench_local(|| {
        black_box(
            dec.decrypt(&iv, &[&aad], black_box(&sealed), &mut out)
                .is_ok(),
        )
    });
}

/// SRTP protect with AES-128-CM (the keystream; the HMAC-SHA1-80 tag is computed separately by
/// str0m).
#[divan::bench]
fn srtp_protect_aes128_cm(b: Bencher) {
    let provider = str0m::crypto::from_feature_flags();
    let mut c = provider
        .srtp_provider
        .aes_128_cm_sha1_80()
        .create_cipher([7; 16], true);
    let input = vec![0x5au8; SRTP_PAYLOAD];
    let mut out = vec![0u8; SRTP_PAYLOAD + 16];
    let iv = [3u8; 16];
    b.bench_local(|| black_box(c.encrypt(&iv, black_box(&input), &mut out).is_ok()));
}

fn measurement() -> ClientFrame {
    ClientFrame {
        body: Some(Body::Measurement(Measurement {
            channel_id: 1,
            seq: 42,
            capture_time_us: 1_700_000_000_000_000,
            values: vec![Value {
                loinc: "59408-5".into(),
                mdc_code: 150_456,
                value: 97.0,
                unit: "%".into(),
            }],
            status: 1,
        })),
    }
}

fn waveform() -> ClientFrame {
    ClientFrame {
        body: Some(Body::Waveform(WaveformChunk {
            channel_id: 2,
            seq: 7,
            sample_rate_hz: 500.0,
            leads: 12,
            scale: 0.005,
            samples: (0..12 * 20).map(|i| (i * 37 % 2_000) - 1_000).collect(),
            ..Default::default()
        })),
    }
}

/// Telemetry: encode one length-delimited SpO2 measurement frame.
#[divan::bench]
fn telemetry_encode_measurement() -> usize {
    encode_frame(black_box(&measurement())).map_or(0, |v| v.len())
}

/// Telemetry: encode one 40 ms, 12-lead ECG waveform chunk.
#[divan::bench]
fn telemetry_encode_waveform(b: Bencher) {
    let w = waveform();
    b.bench_local(|| encode_frame(black_box(&w)).map_or(0, |v| v.len()));
}

/// Telemetry: decode one waveform frame through the streaming decoder.
#[divan::bench]
fn telemetry_decode_waveform(b: Bencher) {
    let bytes = encode_frame(&waveform()).unwrap_or_default();
    b.bench_local(|| {
        let mut d = FrameDecoder::new();
        let _ = d.push(black_box(&bytes));
        black_box(d.next_frame::<ClientFrame>().ok().flatten().is_some())
    });
}
