//! Synthetic audio signals, 48 kHz mono, as `f32` samples in [-1, 1].

use std::f64::consts::PI;

use crate::devices::{heart_sound_delays, Heart, BREATH_PERIOD_S};

/// Sample rate of every synthetic signal (Opus' native rate).
pub const SAMPLE_RATE: u32 = 48_000;

/// What a synthetic audio source plays.
#[derive(Debug, Clone)]
pub enum Synth {
    /// Heart sounds as a stethoscope on the chest hears them: S1/S2 "lub-dub" thumps with
    /// their energy in 20–200 Hz, at the rate of a [`Heart`] (same seed and rate as the
    /// simulated ECG, so sounds and traces line up), over faint low-frequency body noise.
    HeartSounds(HeartSounds),
    /// Speech-like sound: a voiced source with a moving pitch through vowel formants, in
    /// syllables and phrases with pauses. Not words, but it exercises a voice codec and
    /// voice activity detection the way speech does.
    Voice(Voice),
    /// A plain sine tone.
    Tone(Tone),
}

impl Synth {
    /// Heart sounds for a heart of this seed and mean rate.
    pub fn heart_sounds(seed: u64, heart_rate_bpm: f64) -> Self {
        Synth::HeartSounds(HeartSounds::new(seed, heart_rate_bpm))
    }

    /// A speech-like voice.
    pub fn voice(seed: u64) -> Self {
        Synth::Voice(Voice::new(seed))
    }

    /// A sine tone at `frequency_hz`, amplitude 0.25.
    pub fn tone(frequency_hz: f64) -> Self {
        Synth::Tone(Tone {
            frequency_hz,
            amplitude: 0.25,
            sample: 0,
        })
    }

    /// Fills `out` with the next samples.
    pub fn fill(&mut self, out: &mut [f32]) {
        match self {
            Synth::HeartSounds(h) => h.fill(out),
            Synth::Voice(v) => v.fill(out),
            Synth::Tone(t) => t.fill(out),
        }
    }
}

/// See [`Synth::Tone`].
#[derive(Debug, Clone)]
pub struct Tone {
    frequency_hz: f64,
    amplitude: f64,
    sample: u64,
}

impl Tone {
    fn fill(&mut self, out: &mut [f32]) {
        for s in out {
            let t = self.sample as f64 / f64::from(SAMPLE_RATE);
            *s = (self.amplitude * (2.0 * PI * self.frequency_hz * t).sin()) as f32;
            self.sample += 1;
        }
    }
}

/// See [`Synth::HeartSounds`].
#[derive(Debug, Clone)]
pub struct HeartSounds {
    heart: Heart,
    sample: u64,
    noise: u64,
    low: [f64; 2],
}

/// One component of a heart sound: a damped sinusoid.
struct Partial {
    hz: f64,
    amp: f64,
    phase: f64,
}

const S1: [Partial; 3] = [
    Partial {
        hz: 42.0,
        amp: 0.55,
        phase: 0.0,
    },
    Partial {
        hz: 68.0,
        amp: 0.35,
        phase: 1.1,
    },
    Partial {
        hz: 105.0,
        amp: 0.15,
        phase: 2.3,
    },
];
const S2: [Partial; 3] = [
    Partial {
        hz: 62.0,
        amp: 0.40,
        phase: 0.4,
    },
    Partial {
        hz: 110.0,
        amp: 0.25,
        phase: 1.7,
    },
    Partial {
        hz: 160.0,
        amp: 0.10,
        phase: 0.9,
    },
];

impl HeartSounds {
    /// Heart sounds for a heart of this seed and mean rate.
    pub fn new(seed: u64, heart_rate_bpm: f64) -> Self {
        HeartSounds {
            heart: Heart::new(seed, heart_rate_bpm),
            sample: 0,
            noise: seed ^ 0x5354_4554_484f,
            low: [0.0; 2],
        }
    }

    /// The heart the sounds follow.
    pub fn heart(&self) -> &Heart {
        &self.heart
    }

    fn fill(&mut self, out: &mut [f32]) {
        let fs = f64::from(SAMPLE_RATE);
        // Two one-pole low-pass filters at ~120 Hz: body and room rumble under the sounds.
        let k = 1.0 - (-2.0 * PI * 120.0 / fs).exp();
        for s in out {
            let t = self.sample as f64 / fs;
            let beat = self.heart.beat_at(t);
            let mut v = 0.0;
            let mut b = Some(beat);
            for _ in 0..2 {
                let Some(cur) = b else { break };
                let (s1, s2) = heart_sound_delays(&cur);
                let d = t - cur.r_peak;
                v += sound(&S1, d - s1, 0.016);
                v += 0.7 * sound(&S2, d - s2, 0.011);
                b = self.heart.previous(&cur);
            }
            // The chest wall moves with breathing: the sounds get a little softer on inspiration.
            v *= 0.85 + 0.15 * (2.0 * PI * t / BREATH_PERIOD_S).cos();
            self.noise = xorshift(self.noise);
            let white = (self.noise >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            self.low[0] += k * (white - self.low[0]);
            self.low[1] += k * (self.low[0] - self.low[1]);
            v += 0.12 * self.low[1];
            *s = (0.6 * v).clamp(-1.0, 1.0) as f32;
            self.sample += 1;
        }
    }
}

/// A heart sound `d` seconds after its onset: damped partials under a gamma-shaped envelope
/// peaking `rise` seconds after onset.
fn sound(partials: &[Partial], d: f64, rise: f64) -> f64 {
    if !(0.0..0.25).contains(&d) {
        return 0.0;
    }
    let x = d / rise;
    let env = x * x * (2.0 - 2.0 * x).exp();
    partials
        .iter()
        .map(|p| p.amp * (2.0 * PI * p.hz * d + p.phase).sin())
        .sum::<f64>()
        * env
}

/// See [`Synth::Voice`].
#[derive(Debug, Clone)]
pub struct Voice {
    sample: u64,
    seed: u64,
    phase: f64,
    noise: u64,
    formants: [Resonator; 3],
    glottal_prev: f64,
}

/// Vowel formants (F1, F2, F3 in Hz) of an adult voice.
const VOWELS: [[f64; 3]; 5] = [
    [730.0, 1090.0, 2440.0], // a
    [530.0, 1840.0, 2480.0], // e
    [270.0, 2290.0, 3010.0], // i
    [570.0, 840.0, 2410.0],  // o
    [300.0, 870.0, 2240.0],  // u
];
const SYLLABLE_S: f64 = 0.22;
const PHRASE_S: f64 = 3.3;
const SPEAKING_S: f64 = 2.5;

impl Voice {
    /// A speech-like voice; the seed picks the sequence of vowels.
    pub fn new(seed: u64) -> Self {
        Voice {
            sample: 0,
            seed,
            phase: 0.0,
            noise: seed ^ 0x0056_4f49_4345,
            formants: [
                Resonator::new(80.0),
                Resonator::new(90.0),
                Resonator::new(120.0),
            ],
            glottal_prev: 0.0,
        }
    }

    fn fill(&mut self, out: &mut [f32]) {
        let fs = f64::from(SAMPLE_RATE);
        for s in out.iter_mut() {
            let t = self.sample as f64 / fs;
            if self.sample.is_multiple_of(64) {
                let syllable = (t / SYLLABLE_S) as u64;
                let pick = xorshift(self.seed ^ syllable.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let vowel = VOWELS[(pick % 5) as usize];
                for (r, f) in self.formants.iter_mut().zip(vowel) {
                    r.tune(f, fs);
                }
            }
            let in_phrase = t % PHRASE_S;
            let syl = (t / SYLLABLE_S).fract();
            let envelope = if in_phrase < SPEAKING_S {
                (PI * syl).sin().powf(0.7) * (1.0 - 0.3 * (in_phrase / SPEAKING_S))
            } else {
                0.0
            };
            // Pitch: 115 Hz with intonation over the phrase and per syllable.
            let f0 = 115.0 + 18.0 * (2.0 * PI * t / 1.9).sin()
                - 12.0 * (in_phrase / SPEAKING_S).min(1.0)
                + 6.0 * (PI * syl).sin();
            self.phase = (self.phase + f0 / fs).fract();
            // Rosenberg-like glottal pulse, differentiated (radiation at the lips).
            let pulse = if self.phase < 0.6 {
                0.5 * (1.0 - (PI * self.phase / 0.6).cos())
            } else {
                (0.5 * PI * (self.phase - 0.6) / 0.4).cos()
            };
            let source = (pulse - self.glottal_prev) * 40.0;
            self.glottal_prev = pulse;
            self.noise = xorshift(self.noise);
            let white = (self.noise >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            // A breathy onset on some syllables, like a consonant.
            let fricative = if syl < 0.15 && ((t / SYLLABLE_S) as u64).is_multiple_of(3) {
                0.15 * white
            } else {
                0.01 * white
            };
            let x = source + fricative;
            let y = self.formants[0].process(x)
                + 0.5 * self.formants[1].process(x)
                + 0.25 * self.formants[2].process(x);
            *s = (0.35 * envelope * y).clamp(-1.0, 1.0) as f32;
            self.sample += 1;
        }
    }
}

/// A two-pole resonator (one formant).
#[derive(Debug, Clone)]
struct Resonator {
    bandwidth_hz: f64,
    a1: f64,
    a2: f64,
    gain: f64,
    y: [f64; 2],
}

impl Resonator {
    fn new(bandwidth_hz: f64) -> Self {
        Resonator {
            bandwidth_hz,
            a1: 0.0,
            a2: 0.0,
            gain: 0.0,
            y: [0.0; 2],
        }
    }

    fn tune(&mut self, freq_hz: f64, fs: f64) {
        let r = (-PI * self.bandwidth_hz / fs).exp();
        self.a1 = 2.0 * r * (2.0 * PI * freq_hz / fs).cos();
        self.a2 = -r * r;
        self.gain = 1.0 - r;
    }

    fn process(&mut self, x: f64) -> f64 {
        let y = self.gain * x + self.a1 * self.y[0] + self.a2 * self.y[1];
        self.y = [y, self.y[0]];
        y
    }
}

fn xorshift(mut x: u64) -> u64 {
    if x == 0 {
        x = 0x9e37_79b9_7f4a_7c15;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}
