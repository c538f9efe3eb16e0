//! Seeded, stable version of the `telemetry_frame` fuzz target: random and mutated frames through
//! the decoder must never panic, and every frame that decodes re-encodes within the limit.

use cabine_proto::telemetry::{
    client_frame::Body, decode_datagram, encode_frame, ClientFrame, FrameDecoder, Measurement,
    Value, WaveformChunk, MAX_FRAME_LEN,
};

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn valid_stream() -> Vec<u8> {
    let mut out = Vec::new();
    for seq in 1..=4 {
        let m = ClientFrame {
            body: Some(Body::Measurement(Measurement {
                channel_id: 1,
                seq,
                capture_time_us: 1_700_000_000_000_000 + seq,
                values: vec![Value {
                    loinc: "8310-5".into(),
                    mdc_code: 150364,
                    value: 37.1,
                    unit: "Cel".into(),
                }],
                status: 1,
            })),
        };
        out.extend(encode_frame(&m).unwrap());
        let w = ClientFrame {
            body: Some(Body::Waveform(WaveformChunk {
                channel_id: 2,
                seq,
                sample_rate_hz: 500.0,
                leads: 1,
                scale: 0.005,
                samples: (0..20).map(|i| i * 100 - 1000).collect(),
                ..Default::default()
            })),
        };
        out.extend(encode_frame(&w).unwrap());
    }
    out
}

fn run(data: &[u8], split: usize) {
    let mut d = FrameDecoder::new();
    'stream: for piece in [&data[..split], &data[split..]] {
        if d.push(piece).is_err() {
            break;
        }
        loop {
            match d.next_frame::<ClientFrame>() {
                Ok(Some(f)) => {
                    if let Some(Body::Waveform(w)) = &f.body {
                        let _ = w.check();
                    }
                    if let Some(Body::Measurement(m)) = &f.body {
                        let _ = m.check();
                    }
                    assert!(encode_frame(&f).unwrap().len() <= MAX_FRAME_LEN + 10);
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }
    let _ = d.finish();
    let _ = decode_datagram::<ClientFrame>(data);
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let mut rng = Rng(0x5eed_cab1_7e1e_0001);
    let valid = valid_stream();
    for _ in 0..3000 {
        let mut data = valid.clone();
        for _ in 0..1 + rng.below(8) {
            let i = rng.below(data.len());
            data[i] = rng.next() as u8;
        }
        data.truncate(rng.below(data.len() + 1));
        let split = rng.below(data.len() + 1);
        run(&data, split);
        let len = rng.below(300);
        let noise: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        run(&noise, rng.below(len + 1));
    }
}
