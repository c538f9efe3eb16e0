use std::time::{Duration, Instant};

use super::*;

/// Runs the simulation for `secs`, polling every `step`.
fn run(devices: &mut Devices, start: Instant, secs: f64, step: Duration) -> Vec<DeviceOutput> {
    let mut out = Vec::new();
    let end = start + Duration::from_secs_f64(secs);
    let mut now = start;
    while now <= end {
        out.extend(devices.poll(now));
        now += step;
    }
    out
}

fn waveform(outputs: &[DeviceOutput], channel: ChannelId) -> Vec<&WaveformChunk> {
    outputs
        .iter()
        .filter_map(|o| match o {
            DeviceOutput::Waveform(w) if w.channel == channel => Some(w),
            _ => None,
        })
        .collect()
}

fn measurements(outputs: &[DeviceOutput], channel: ChannelId) -> Vec<&Measurement> {
    outputs
        .iter()
        .filter_map(|o| match o {
            DeviceOutput::Measurement(m) if m.channel == channel => Some(m),
            _ => None,
        })
        .collect()
}

/// One lead's samples (physical values) of a waveform, concatenated.
fn lead(chunks: &[&WaveformChunk], lead: usize) -> Vec<f64> {
    chunks
        .iter()
        .flat_map(|c| (0..c.frames()).filter_map(move |f| c.value(f, lead)))
        .collect()
}

/// Times (s) of local maxima above `threshold`, at least `refractory` s apart.
fn peaks(signal: &[f64], rate: f64, threshold: f64, refractory: f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for i in 1..signal.len().saturating_sub(1) {
        let v = signal[i];
        if v > threshold && v >= signal[i - 1] && v > signal[i + 1] {
            let t = i as f64 / rate;
            if out.last().is_none_or(|&last| t - last > refractory) {
                out.push(t);
            }
        }
    }
    out
}

fn mean_interval(times: &[f64]) -> f64 {
    (times[times.len() - 1] - times[0]) / (times.len() - 1) as f64
}

#[test]
fn ecg_has_one_qrs_per_beat_at_the_configured_rate() {
    for bpm in [55.0, 72.0, 120.0] {
        let start = Instant::now();
        let mut devices = Devices::new(DevicesConfig::new(11, bpm), start).expect("config");
        let out = run(&mut devices, start, 60.0, Duration::from_millis(100));
        let ecg = waveform(&out, ChannelId::ECG);
        assert_eq!(ecg[0].leads, ["I", "II", "III"]);
        let ii = lead(&ecg, 1);
        let r = peaks(&ii, 500.0, 0.7, 0.25);
        let expected = 60.0 * bpm / 60.0;
        assert!(
            (r.len() as f64 - expected).abs() <= 0.06 * expected + 1.0,
            "{bpm} bpm: {} R peaks in 60 s",
            r.len()
        );
        let rate = 60.0 / mean_interval(&r);
        assert!(
            (rate - bpm).abs() < 0.05 * bpm,
            "{bpm} bpm: measured {rate}"
        );
        // P-QRS-T shape: the R peak dominates, the S wave dips below the baseline, and
        // the T wave is a positive bump after it.
        let peak = ii.iter().cloned().fold(f64::MIN, f64::max);
        let trough = ii.iter().cloned().fold(f64::MAX, f64::min);
        assert!(peak > 1.0 && peak < 1.6, "R amplitude {peak}");
        assert!(trough < -0.2 && trough > -0.6, "S depth {trough}");
        let beat = (r[3] * 500.0) as usize;
        let t_region = &ii[beat + 100..beat + 175];
        let t_peak = t_region.iter().cloned().fold(f64::MIN, f64::max);
        assert!(t_peak > 0.15 && t_peak < 0.6, "T wave {t_peak}");
    }
}

#[test]
fn pleth_period_matches_the_heart_rate_and_follows_the_r_peaks() {
    let start = Instant::now();
    let mut devices = Devices::new(DevicesConfig::new(5, 80.0), start).expect("config");
    let out = run(&mut devices, start, 60.0, Duration::from_millis(37));
    let pleth = lead(&waveform(&out, ChannelId::PLETH), 0);
    let p = peaks(&pleth, 75.0, 0.6, 0.35);
    let period = mean_interval(&p);
    assert!((period - 0.75).abs() < 0.04, "pleth period {period}");
    let r = peaks(&lead(&waveform(&out, ChannelId::ECG), 1), 500.0, 0.7, 0.25);
    // Each pulse peak comes 0.25–0.45 s after an R peak (transit time + upstroke).
    for &t in p.iter().skip(2).take(20) {
        let last_r = r
            .iter()
            .rev()
            .find(|&&rt| rt < t)
            .expect("an R peak before");
        let d = t - last_r;
        assert!((0.25..0.45).contains(&d), "pulse {d} s after R");
    }
    // The oximeter's pulse rate agrees with the ECG.
    for m in measurements(&out, ChannelId::OXIMETER).iter().skip(5) {
        let pulse = m.value(&codes::PULSE_RATE_OXIMETER).expect("pulse");
        assert!((pulse - 80.0).abs() <= 6.0, "pulse {pulse}");
    }
}

#[test]
fn chunks_last_20_to_40_ms_and_are_contiguous() {
    for chunk_ms in [20, 25, 30, 40] {
        let start = Instant::now();
        let mut config = DevicesConfig::new(1, 70.0);
        config.chunk = Duration::from_millis(chunk_ms);
        config.ecg_leads = 2;
        let mut devices = Devices::new(config, start).expect("config");
        let out = run(&mut devices, start, 5.0, Duration::from_millis(13));
        for channel in [ChannelId::ECG, ChannelId::PLETH] {
            let chunks = waveform(&out, channel);
            assert!(chunks.len() > 100, "{chunk_ms} ms: {} chunks", chunks.len());
            for (i, c) in chunks.iter().enumerate() {
                let d = c.duration();
                assert!(
                    d >= Duration::from_millis(20) && d <= Duration::from_millis(40),
                    "{chunk_ms} ms on {channel}: chunk of {d:?}"
                );
                assert_eq!(c.seq, i as u64 + 1);
                assert_eq!(c.samples.len(), c.frames() * c.leads.len());
                if i > 0 {
                    let prev = chunks[i - 1];
                    let gap = c.first_sample - prev.first_sample;
                    assert!(gap.abs_diff(prev.duration()) < Duration::from_micros(10));
                }
            }
        }
    }
}

#[test]
fn late_polls_skip_old_chunks_with_a_gap() {
    let start = Instant::now();
    let mut devices = Devices::new(DevicesConfig::new(1, 70.0), start).expect("config");
    let first = devices.poll(start + Duration::from_secs(1));
    let last_seq = waveform(&first, ChannelId::ECG).last().expect("chunks").seq;
    let late = devices.poll(start + Duration::from_secs(10));
    let ecg = waveform(&late, ChannelId::ECG);
    // 2 s of backlog at most.
    assert_eq!(ecg.len(), 50);
    assert!(ecg[0].seq > last_seq + 1);
}

#[test]
fn blood_pressure_arrives_after_the_command() {
    let start = Instant::now();
    let mut devices = Devices::new(DevicesConfig::new(3, 70.0), start).expect("config");
    let before = run(&mut devices, start, 5.0, Duration::from_millis(50));
    assert!(measurements(&before, ChannelId::BP_CUFF).is_empty());
    let at = start + Duration::from_secs(5);
    assert_eq!(
        devices.handle_command(ChannelId::BP_CUFF, START_MEASUREMENT, at),
        CommandOutcome::Accepted
    );
    assert_eq!(
        devices.handle_command(ChannelId::BP_CUFF, START_MEASUREMENT, at),
        CommandOutcome::Rejected
    );
    assert_eq!(
        devices.handle_command(ChannelId::BP_CUFF, "make_coffee", at),
        CommandOutcome::UnknownCommand
    );
    assert_eq!(
        devices.handle_command(ChannelId::SCALE, START_MEASUREMENT, at),
        CommandOutcome::UnknownCommand
    );
    assert!(devices.poll_timeout() <= at);
    let mut statuses = Vec::new();
    let mut result = None;
    let mut now = at;
    while now < at + Duration::from_secs(10) {
        for o in devices.poll(now) {
            match o {
                DeviceOutput::Status(s) if s.channel == ChannelId::BP_CUFF => {
                    statuses.push((s.state, s.detail.clone(), s.at))
                }
                DeviceOutput::Measurement(m) if m.channel == ChannelId::BP_CUFF => {
                    result = Some((m, now))
                }
                _ => {}
            }
        }
        now += Duration::from_millis(100);
    }
    let (m, seen) = result.expect("a blood pressure reading");
    assert_eq!(m.seq, 1);
    assert_eq!(m.captured, at + Duration::from_secs(6));
    assert!(seen >= m.captured);
    let details: Vec<&str> = statuses.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(details, ["inflating", "deflating", "done"]);
    assert_eq!(statuses[0].0, DeviceState::Measuring);
    assert_eq!(statuses[2].0, DeviceState::Idle);
    let sys = m.value(&codes::SYSTOLIC_BP).expect("systolic");
    let dia = m.value(&codes::DIASTOLIC_BP).expect("diastolic");
    let pulse = m.value(&codes::PULSE_RATE_CUFF).expect("pulse");
    assert!((95.0..=145.0).contains(&sys), "systolic {sys}");
    assert!((55.0..=90.0).contains(&dia), "diastolic {dia}");
    assert!(sys - dia >= 20.0);
    assert!((60.0..=80.0).contains(&pulse), "pulse {pulse}");
    assert!(m
        .values
        .iter()
        .all(|v| v.code.unit == "mm[Hg]" || v.code.unit == "/min"));
    // A second measurement can start once the first is done, and can be cancelled.
    assert_eq!(
        devices.handle_command(ChannelId::BP_CUFF, START_MEASUREMENT, now),
        CommandOutcome::Accepted
    );
    assert_eq!(
        devices.handle_command(ChannelId::BP_CUFF, CANCEL_MEASUREMENT, now),
        CommandOutcome::Completed
    );
    let after = run(&mut devices, now, 10.0, Duration::from_millis(100));
    assert!(measurements(&after, ChannelId::BP_CUFF).is_empty());
}

#[test]
fn readings_are_physiological_and_coded() {
    for seed in 0..20 {
        let start = Instant::now();
        let mut devices = Devices::new(DevicesConfig::new(seed, 70.0), start).expect("config");
        let out = run(&mut devices, start, 65.0, Duration::from_millis(200));
        let ox = measurements(&out, ChannelId::OXIMETER);
        assert!(
            (60..=66).contains(&ox.len()),
            "{} oximeter readings",
            ox.len()
        );
        for m in &ox {
            let spo2 = m.value(&codes::SPO2).expect("spo2");
            assert!((95.0..=100.0).contains(&spo2), "SpO2 {spo2}");
            let pulse = m.value(&codes::PULSE_RATE_OXIMETER).expect("pulse");
            assert!((55.0..=85.0).contains(&pulse), "pulse {pulse}");
        }
        let temps = measurements(&out, ChannelId::THERMOMETER);
        assert_eq!(temps.len(), 7);
        for m in temps {
            let c = m.value(&codes::BODY_TEMPERATURE).expect("temperature");
            assert!((36.0..=37.5).contains(&c), "temperature {c}");
            assert_eq!(m.values[0].code.unit, "Cel");
            assert_eq!(m.values[0].code.loinc, "8310-5");
        }
        let weights = measurements(&out, ChannelId::SCALE);
        assert_eq!(weights.len(), 3);
        for m in weights {
            let kg = m.value(&codes::BODY_WEIGHT).expect("weight");
            assert!((50.0..=100.0).contains(&kg), "weight {kg}");
        }
        // Sequence numbers count from 1 per channel.
        assert!(ox.iter().enumerate().all(|(i, m)| m.seq == i as u64 + 1));
        // Every device says it is attached first.
        let attached = out
            .iter()
            .filter(|o| matches!(o, DeviceOutput::Status(s) if s.state == DeviceState::Attached))
            .count();
        assert_eq!(attached, 5);
    }
}

#[test]
fn deterministic_whatever_the_polling() {
    let start = Instant::now();
    let mut a = Devices::new(DevicesConfig::new(77, 64.0), start).expect("config");
    let mut b = Devices::new(DevicesConfig::new(77, 64.0), start).expect("config");
    let oa = run(&mut a, start, 10.0, Duration::from_millis(10));
    let ob = run(&mut b, start, 10.0, Duration::from_millis(170));
    for channel in [ChannelId::ECG, ChannelId::PLETH] {
        let wa: Vec<_> = waveform(&oa, channel).into_iter().cloned().collect();
        let wb: Vec<_> = waveform(&ob, channel).into_iter().cloned().collect();
        let n = wa.len().min(wb.len());
        assert!(n > 200);
        assert_eq!(wa[..n], wb[..n]);
    }
    let mut c = Devices::new(DevicesConfig::new(78, 64.0), start).expect("config");
    let oc = run(&mut c, start, 10.0, Duration::from_millis(10));
    assert_ne!(
        waveform(&oa, ChannelId::ECG)[100].samples,
        waveform(&oc, ChannelId::ECG)[100].samples
    );
}

#[test]
fn poll_timeout_is_when_the_next_output_is_due() {
    let start = Instant::now();
    let mut devices = Devices::new(DevicesConfig::new(1, 70.0), start).expect("config");
    assert_eq!(devices.poll_timeout(), start);
    let _ = devices.poll(start);
    let next = devices.poll_timeout();
    assert_eq!(next, start + Duration::from_millis(40));
    assert!(devices.poll(next - Duration::from_micros(1)).is_empty());
    assert!(!devices.poll(next).is_empty());
}

#[test]
fn bad_settings_are_refused() {
    let start = Instant::now();
    let mut c = DevicesConfig::new(1, 70.0);
    c.chunk = Duration::from_millis(50);
    assert!(matches!(
        Devices::new(c, start),
        Err(DeviceError::InvalidConfig { name: "chunk", .. })
    ));
    assert!(Devices::new(DevicesConfig::new(1, 300.0), start).is_err());
    let mut c = DevicesConfig::new(1, 70.0);
    c.ecg_leads = 4;
    assert!(Devices::new(c, start).is_err());
}
