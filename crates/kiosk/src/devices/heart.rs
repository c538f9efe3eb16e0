//! A simulated heart: beat times with physiological variability, and the signals derived
//! from them (ECG leads, plethysmogram). The stethoscope source uses the same model, so
//! heart sounds, ECG and pulse line up when built from the same seed and rate.

use std::collections::VecDeque;
use std::f64::consts::PI;

use super::noise;

/// One heartbeat: the time of its R peak and the interval to the next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Beat {
    /// Beat number, from 0.
    pub index: u64,
    /// Time of the R peak, in seconds since the simulation started.
    pub r_peak: f64,
    /// RR interval to the next beat, in seconds.
    pub rr: f64,
}

impl Beat {
    /// The instantaneous heart rate of this beat, in beats per minute.
    pub fn rate_bpm(&self) -> f64 {
        60.0 / self.rr
    }
}

/// Period of breathing (15 breaths per minute), which modulates the heart rate (respiratory
/// sinus arrhythmia), the ECG baseline and the pleth amplitude.
pub const BREATH_PERIOD_S: f64 = 4.0;

/// Beats are kept this long after they end, so readers slightly behind still find them.
const KEEP_S: f64 = 20.0;

/// Deterministic beat sequence for a seed and a mean rate.
///
/// Queries are fastest when their times mostly increase; going back further than
/// 20 s regenerates the sequence from the start (same result, just slower).
#[derive(Debug, Clone)]
pub struct Heart {
    seed: u64,
    mean_rr: f64,
    beats: VecDeque<Beat>,
}

impl Heart {
    /// A heart beating on average at `bpm` (clamped to 30..=220).
    pub fn new(seed: u64, bpm: f64) -> Self {
        let bpm = if bpm.is_finite() {
            bpm.clamp(30.0, 220.0)
        } else {
            70.0
        };
        let mut heart = Heart {
            seed,
            mean_rr: 60.0 / bpm,
            beats: VecDeque::new(),
        };
        heart.reset();
        heart
    }

    /// The mean heart rate, in beats per minute.
    pub fn mean_rate_bpm(&self) -> f64 {
        60.0 / self.mean_rr
    }

    /// The beat whose R peak is the last one at or before `t` (seconds; before the first
    /// beat, the first beat).
    pub fn beat_at(&mut self, t: f64) -> Beat {
        self.ensure(t);
        // Invariant: `ensure` keeps at least one beat starting at or before `t` unless `t` is
        // before the first beat, and at least one beat ending after `t`.
        let pos = self.beats.partition_point(|b| b.r_peak <= t);
        self.beats[pos.saturating_sub(1)]
    }

    /// The beat after `beat`.
    pub fn next(&mut self, beat: &Beat) -> Beat {
        let t = beat.r_peak + beat.rr;
        self.beat_at(t + 1e-9)
    }

    /// The beat before `beat` (the first beat has none).
    pub fn previous(&mut self, beat: &Beat) -> Option<Beat> {
        if beat.index == 0 {
            return None;
        }
        let t = beat.r_peak - 1e-9;
        Some(self.beat_at(t))
    }

    /// The average rate over the last `count` beats completed at `t` (what a monitor
    /// displays), in beats per minute.
    pub fn displayed_rate_bpm(&mut self, t: f64, count: usize) -> f64 {
        let mut beat = self.beat_at(t);
        let mut total = 0.0;
        let mut n = 0;
        while n < count.max(1) {
            match self.previous(&beat) {
                Some(prev) => {
                    total += prev.rr;
                    n += 1;
                    beat = prev;
                }
                None => break,
            }
        }
        if n == 0 {
            return 60.0 / beat.rr;
        }
        60.0 * n as f64 / total
    }

    fn reset(&mut self) {
        self.beats.clear();
        // The first R peak comes a little after the start, so the first P wave is visible.
        let first = Beat {
            index: 0,
            r_peak: 0.3,
            rr: self.rr_after(0, 0.3),
        };
        self.beats.push_back(first);
    }

    fn ensure(&mut self, t: f64) {
        if self
            .beats
            .front()
            .is_some_and(|b| b.index > 0 && b.r_peak > t)
        {
            self.reset();
        }
        while let Some(last) = self.beats.back().copied() {
            if last.r_peak + last.rr > t + 2.0 {
                break;
            }
            let r_peak = last.r_peak + last.rr;
            let index = last.index + 1;
            self.beats.push_back(Beat {
                index,
                r_peak,
                rr: self.rr_after(index, r_peak),
            });
        }
        while self.beats.len() > 2
            && self
                .beats
                .get(1)
                .is_some_and(|b| b.r_peak + b.rr < t - KEEP_S)
        {
            self.beats.pop_front();
        }
    }

    /// RR interval of beat `index` starting at `t`: the mean, modulated by breathing (±3.5 %),
    /// a slow drift (±2 % over about 1.5 min) and beat-to-beat jitter (±1.2 %).
    fn rr_after(&self, index: u64, t: f64) -> f64 {
        let breathing = 0.035 * (2.0 * PI * t / BREATH_PERIOD_S).sin();
        let drift = 0.02 * (2.0 * PI * t / 97.0).sin();
        let jitter = 0.012 * noise::symmetric(self.seed, 0x4845_4152, index);
        self.mean_rr * (1.0 + breathing + drift + jitter)
    }
}

/// The ECG leads the simulator can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lead {
    /// Lead I (left arm − right arm).
    I,
    /// Lead II (left leg − right arm).
    II,
    /// Lead III (left leg − left arm) = II − I.
    III,
}

impl Lead {
    /// The lead's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Lead::I => "I",
            Lead::II => "II",
            Lead::III => "III",
        }
    }
}

/// One wave of the P-QRS-T complex: a Gaussian bump relative to the R peak.
struct Wave {
    /// Centre, seconds after the R peak (negative: before).
    at: f64,
    /// Width (standard deviation), seconds.
    width: f64,
    /// Amplitude in lead II, mV.
    lead_ii: f64,
    /// Amplitude in lead I, mV.
    lead_i: f64,
}

const P_WAVE: Wave = Wave {
    at: -0.17,
    width: 0.022,
    lead_ii: 0.15,
    lead_i: 0.08,
};
const Q_WAVE: Wave = Wave {
    at: -0.035,
    width: 0.010,
    lead_ii: -0.12,
    lead_i: -0.05,
};
const R_WAVE: Wave = Wave {
    at: 0.0,
    width: 0.011,
    lead_ii: 1.20,
    lead_i: 0.70,
};
const S_WAVE: Wave = Wave {
    at: 0.035,
    width: 0.011,
    lead_ii: -0.30,
    lead_i: -0.10,
};
const T_WAVE: Wave = Wave {
    at: 0.0,
    width: 0.055,
    lead_ii: 0.32,
    lead_i: 0.20,
};

/// When the T wave peaks after the R peak: grows with the RR interval (QT correction).
fn t_wave_delay(rr: f64) -> f64 {
    0.28 * rr.sqrt()
}

/// The ECG voltage (mV) of `lead` at `t` seconds, without noise or baseline wander.
pub fn ecg_mv(heart: &mut Heart, lead: Lead, t: f64) -> f64 {
    let amp = |w: &Wave| match lead {
        Lead::I => w.lead_i,
        Lead::II => w.lead_ii,
        Lead::III => w.lead_ii - w.lead_i,
    };
    let beat = heart.beat_at(t);
    let next = heart.next(&beat);
    let mut v = 0.0;
    for b in [beat, next] {
        let d = t - b.r_peak;
        for w in [&P_WAVE, &Q_WAVE, &R_WAVE, &S_WAVE] {
            v += amp(w) * gauss(d - w.at, w.width);
        }
        v += amp(&T_WAVE) * gauss(d - t_wave_delay(b.rr), T_WAVE.width);
    }
    if let Some(prev) = heart.previous(&beat) {
        // A slow previous beat's T wave may still be ending.
        v += amp(&T_WAVE) * gauss(t - prev.r_peak - t_wave_delay(prev.rr), T_WAVE.width);
    }
    v
}

/// Delay between the R peak and the foot of the pulse wave at the finger (pulse transit).
pub const PULSE_TRANSIT_S: f64 = 0.22;

/// The plethysmogram (normalised, about 0–1) at `t` seconds: a systolic peak and a smaller
/// dicrotic wave after each beat, modulated by breathing.
pub fn pleth(heart: &mut Heart, t: f64) -> f64 {
    let beat = heart.beat_at(t - PULSE_TRANSIT_S);
    let mut v = 0.0;
    let mut b = Some(beat);
    for _ in 0..2 {
        let Some(cur) = b else { break };
        let f = t - PULSE_TRANSIT_S - cur.r_peak;
        if f >= 0.0 {
            let systolic = (-((f - 0.13) / 0.075).powi(2)).exp();
            let dicrotic = 0.38 * (-((f - 0.38) / 0.10).powi(2)).exp();
            v += systolic + dicrotic;
        }
        b = heart.previous(&cur);
    }
    let breathing = 1.0 + 0.05 * (2.0 * PI * t / BREATH_PERIOD_S).sin();
    0.05 + 0.9 * v * breathing
}

/// Timing of the heart sounds of a beat, seconds after its R peak: S1 (closure of the
/// mitral and tricuspid valves) and S2 (aortic and pulmonary valves, at the end of the T wave).
pub fn heart_sound_delays(beat: &Beat) -> (f64, f64) {
    (0.05, t_wave_delay(beat.rr) + 0.08)
}

fn gauss(x: f64, width: f64) -> f64 {
    (-0.5 * (x / width).powi(2)).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_matches_and_varies_slightly() {
        let mut heart = Heart::new(3, 72.0);
        let mut beat = heart.beat_at(0.0);
        let mut rrs = Vec::new();
        while beat.r_peak < 120.0 {
            rrs.push(beat.rr);
            beat = heart.next(&beat);
        }
        let mean = rrs.iter().sum::<f64>() / rrs.len() as f64;
        assert!(
            (60.0 / mean - 72.0).abs() < 2.0,
            "mean rate {}",
            60.0 / mean
        );
        let (min, max) = rrs
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &r| (a.min(r), b.max(r)));
        assert!(max > min * 1.02, "no variability: {min}..{max}");
        assert!(max < min * 1.2, "too much variability: {min}..{max}");
    }

    #[test]
    fn going_back_gives_the_same_beats() {
        let mut a = Heart::new(9, 80.0);
        let early = a.beat_at(5.0);
        let _ = a.beat_at(300.0);
        assert_eq!(a.beat_at(5.0), early);
        let mut b = Heart::new(9, 80.0);
        assert_eq!(b.beat_at(5.0), early);
    }

    #[test]
    fn einthoven() {
        let mut heart = Heart::new(1, 60.0);
        for i in 0..500 {
            let t = i as f64 * 0.004;
            let (l1, l2, l3) = (
                ecg_mv(&mut heart, Lead::I, t),
                ecg_mv(&mut heart, Lead::II, t),
                ecg_mv(&mut heart, Lead::III, t),
            );
            assert!((l1 + l3 - l2).abs() < 1e-9);
        }
    }
}
