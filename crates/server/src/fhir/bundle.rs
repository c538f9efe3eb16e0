//! The export as a FHIR R4 `transaction` Bundle, built by a pure function ([`build`]) from
//! what a room kept ([`Taken`]) and the subject the platform supplied:
//!
//! - each measurement value becomes a vital-signs Observation coded with its LOINC code and
//!   the MDC code the kiosk declared, valued in its UCUM unit; systolic and diastolic pressure
//!   (and the mean, when measured) become one blood pressure panel (85354-9) with components;
//! - each ECG channel's latest contiguous excerpt becomes an Observation with one component
//!   per lead, valued as `SampledData`;
//! - each kiosk is a Device the Observations reference.
//!
//! Every entry is a conditional create on an `identifier` derived from the Bundle's own, so a
//! receiver that gets the same Bundle twice (a retry after a lost answer) stores it once. A
//! value whose code, unit or status the export does not know is skipped and counted, never
//! guessed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cabine_proto::telemetry::{DeviceKind, MeasurementStatus, Value as Reading};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::codes::{self, VitalSign};
use super::record::{Chunk, Taken};
use super::subject::Subject;

/// Identifier system of the entries' `urn:uuid:` identifiers.
pub const URN_SYSTEM: &str = "urn:ietf:rfc:3986";
/// Identifier system of kiosks (the value is the kiosk's token subject).
pub const KIOSK_SYSTEM: &str = "urn:cabine:kiosk";

/// A Bundle's identifier: a random UUID, also the outbox file's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BundleId(String);

impl BundleId {
    /// A new random (version 4) UUID.
    pub fn random() -> BundleId {
        let mut b: [u8; 16] = rand::random();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        BundleId(format_uuid(&b))
    }

    /// Parses a UUID in its lower-case hyphenated form (an outbox file name).
    pub fn parse(s: &str) -> Option<BundleId> {
        let ok = s.len() == 36
            && s.bytes().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            });
        ok.then(|| BundleId(s.to_owned()))
    }

    /// The UUID.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BundleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a Bundle is built from.
#[derive(Debug, Clone, Copy)]
pub struct BundleInput<'a> {
    /// The Bundle's identifier.
    pub id: &'a BundleId,
    /// The patient.
    pub subject: &'a Subject,
    /// When the Bundle was assembled.
    pub timestamp: SystemTime,
    /// The room's measurements and excerpts.
    pub data: &'a Taken,
}

/// Values left out of a Bundle, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// A LOINC code the export does not map.
    pub unknown_code: u64,
    /// A known code in another unit than its own.
    pub unit: u64,
    /// A reading the device marked invalid, calibrating or unspecified.
    pub status: u64,
    /// A value that is not a finite number.
    pub value: u64,
    /// A blood pressure reading without both systolic and diastolic pressures.
    pub incomplete: u64,
    /// A waveform that cannot be exported (not an ECG, unknown lead, unit or rate).
    pub waveform: u64,
}

impl Skipped {
    /// Reasons and counts, for metrics.
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("unknown_code", self.unknown_code),
            ("unit", self.unit),
            ("status", self.status),
            ("value", self.value),
            ("incomplete", self.incomplete),
            ("waveform", self.waveform),
        ]
    }

    /// All skipped values.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// A built Bundle.
#[derive(Debug, Clone)]
pub struct Built {
    /// The Bundle, as JSON.
    pub bundle: Value,
    /// Observations in it.
    pub observations: usize,
    /// What was left out.
    pub skipped: Skipped,
}

/// Builds the transaction Bundle of `input`.
pub fn build(input: &BundleInput<'_>) -> Built {
    let mut b = Builder {
        id: input.id,
        subject: input.subject,
        devices: BTreeMap::new(),
        observations: Vec::new(),
        skipped: Skipped::default(),
    };
    for r in &input.data.readings {
        b.reading(r);
    }
    for ((source, channel), chunks) in &input.data.waveforms {
        match input.data.channels.get(&(source.clone(), *channel)) {
            Some(decl) if decl.device_kind == DeviceKind::Ecg as i32 => b.ecg(source, decl, chunks),
            _ => b.skipped.waveform += 1,
        }
    }
    let count = b.observations.len();
    let mut entries: Vec<Value> = b.devices.into_values().collect();
    entries.extend(b.observations);
    Built {
        bundle: json!({
            "resourceType": "Bundle",
            "identifier": { "system": URN_SYSTEM, "value": format!("urn:uuid:{}", input.id) },
            "type": "transaction",
            "timestamp": rfc3339(input.timestamp),
            "entry": entries,
        }),
        observations: count,
        skipped: b.skipped,
    }
}

struct Builder<'a> {
    id: &'a BundleId,
    subject: &'a Subject,
    /// Device entries by kiosk.
    devices: BTreeMap<String, Value>,
    observations: Vec<Value>,
    skipped: Skipped,
}

impl Builder<'_> {
    /// The `urn:uuid:` of the kiosk's Device, its entry added on first use.
    fn device(&mut self, source: &str) -> String {
        let url = format!("urn:uuid:{}", derived(self.id, &format!("device/{source}")));
        if !self.devices.contains_key(source) {
            let resource = json!({
                "resourceType": "Device",
                "identifier": [{ "system": KIOSK_SYSTEM, "value": source }],
                "status": "active",
                "type": { "text": "Teleconsultation cabin (Cabine kiosk)" },
            });
            let entry = json!({
                "fullUrl": url,
                "resource": resource,
                "request": {
                    "method": "POST",
                    "url": "Device",
                    "ifNoneExist": format!("identifier={}|{}", KIOSK_SYSTEM, query_escape(source)),
                },
            });
            self.devices.insert(source.to_owned(), entry);
        }
        url
    }

    fn push(&mut self, source: &str, mut obs: serde_json::Map<String, Value>) {
        let n = self.observations.len();
        let uuid = format!("urn:uuid:{}", derived(self.id, &format!("observation/{n}")));
        let device = self.device(source);
        obs.insert("resourceType".into(), json!("Observation"));
        obs.insert(
            "identifier".into(),
            json!([{ "system": URN_SYSTEM, "value": uuid }]),
        );
        obs.insert(
            "subject".into(),
            json!({ "reference": self.subject.as_str() }),
        );
        obs.insert("device".into(), json!({ "reference": device }));
        self.observations.push(json!({
            "fullUrl": uuid,
            "resource": Value::Object(obs),
            "request": {
                "method": "POST",
                "url": "Observation",
                "ifNoneExist": format!("identifier={URN_SYSTEM}|{uuid}"),
            },
        }));
    }

    fn reading(&mut self, r: &super::record::Reading) {
        let m = &r.measurement;
        let note = match MeasurementStatus::try_from(m.status) {
            Ok(MeasurementStatus::Valid) => None,
            Ok(MeasurementStatus::Questionable) => {
                Some("The device reported this reading as questionable.")
            }
            _ => {
                self.skipped.status += m.values.len().max(1) as u64;
                return;
            }
        };
        let mut pressures: Vec<(&'static VitalSign, &Reading)> = Vec::new();
        let mut bp_seen = false;
        for v in &m.values {
            if !v.value.is_finite() {
                self.skipped.value += 1;
                continue;
            }
            if let Some(c) = codes::bp_component(&v.loinc) {
                bp_seen = true;
                if v.unit == c.unit {
                    pressures.push((c, v));
                } else {
                    self.skipped.unit += 1;
                }
                continue;
            }
            let Some(sign) = codes::vital(&v.loinc) else {
                self.skipped.unknown_code += 1;
                continue;
            };
            if v.unit != sign.unit {
                self.skipped.unit += 1;
                continue;
            }
            let Some(mut obs) = observation(r.time_us, note, "vital-signs", "Vital Signs") else {
                self.skipped.value += 1;
                continue;
            };
            obs.insert("code".into(), concept(sign, v.mdc_code));
            obs.insert("valueQuantity".into(), quantity(v.value, sign.unit));
            self.push(&r.source, obs);
        }
        if bp_seen {
            let has = |loinc: &str| pressures.iter().any(|(c, _)| c.loinc == loinc);
            if !(has("8480-6") && has("8462-4")) {
                self.skipped.incomplete += pressures.len() as u64;
                return;
            }
            let Some(mut obs) = observation(r.time_us, note, "vital-signs", "Vital Signs") else {
                self.skipped.value += pressures.len() as u64;
                return;
            };
            obs.insert(
                "code".into(),
                concept(&codes::BP_PANEL, codes::MDC_BP_PANEL),
            );
            let components: Vec<Value> = pressures
                .iter()
                .map(|(c, v)| {
                    json!({
                        "code": concept(c, v.mdc_code),
                        "valueQuantity": quantity(v.value, c.unit),
                    })
                })
                .collect();
            obs.insert("component".into(), Value::Array(components));
            self.push(&r.source, obs);
        }
    }

    fn ecg(&mut self, source: &str, decl: &cabine_proto::telemetry::ChannelDecl, chunks: &[Chunk]) {
        let run = latest_run(chunks);
        let Some(first) = run.first() else {
            return;
        };
        let w = &first.chunk;
        let leads = w.leads as usize;
        let lead_codes: Option<Vec<u32>> = decl.leads.iter().map(|l| codes::ecg_lead(l)).collect();
        let usable = w.sample_rate_hz.is_finite()
            && w.sample_rate_hz > 0.0
            && w.scale.is_finite()
            && w.scale != 0.0
            && w.offset.is_finite()
            && leads > 0
            && decl.leads.len() == leads
            && matches!(decl.unit.as_str(), "mV" | "uV");
        let (Some(lead_codes), true) = (lead_codes, usable) else {
            self.skipped.waveform += 1;
            return;
        };
        let mut data = vec![String::new(); leads];
        let mut frames = 0usize;
        for c in run {
            for (i, s) in c.chunk.samples.iter().enumerate() {
                let d = &mut data[i % leads];
                if !d.is_empty() {
                    d.push(' ');
                }
                d.push_str(&s.to_string());
            }
            frames += c.chunk.samples.len() / leads;
        }
        let period_ms = 1000.0 / w.sample_rate_hz;
        let start_us = first.time_us;
        // A declared rate can be tiny: the span is computed in f64 and range-checked, never
        // overflowing nor past what RFC 3339 can write.
        let span_us = frames as f64 / w.sample_rate_hz * 1e6;
        let end_us = (span_us.is_finite() && span_us < MAX_TIME_US as f64)
            .then(|| start_us.checked_add(span_us as u64))
            .flatten();
        let (Some(start), Some(end)) = (rfc3339_us(start_us), end_us.and_then(rfc3339_us)) else {
            self.skipped.value += 1;
            return;
        };
        let mut obs = serde_json::Map::new();
        obs.insert("status".into(), json!("final"));
        obs.insert("category".into(), category("procedure", "Procedure"));
        obs.insert(
            "code".into(),
            json!({
                "coding": [mdc_coding(codes::MDC_ECG)],
                "text": "ECG excerpt",
            }),
        );
        obs.insert(
            "effectivePeriod".into(),
            json!({ "start": start, "end": end }),
        );
        let components: Vec<Value> = lead_codes
            .iter()
            .zip(&decl.leads)
            .zip(data)
            .map(|((code, name), data)| {
                json!({
                    "code": { "coding": [mdc_coding(*code)], "text": format!("ECG lead {name}") },
                    "valueSampledData": {
                        "origin": quantity(w.offset, &decl.unit),
                        "period": period_ms,
                        "factor": w.scale,
                        "dimensions": 1,
                        "data": data,
                    },
                })
            })
            .collect();
        obs.insert("component".into(), Value::Array(components));
        self.push(source, obs);
    }
}

/// The chunks of the latest contiguous run (consecutive sequence numbers, same format).
fn latest_run(chunks: &[Chunk]) -> &[Chunk] {
    let Some(last) = chunks.last() else {
        return chunks;
    };
    let same = |c: &Chunk| {
        let (a, b) = (&c.chunk, &last.chunk);
        a.leads == b.leads
            && a.sample_rate_hz == b.sample_rate_hz
            && a.scale == b.scale
            && a.offset == b.offset
    };
    let mut start = chunks.len() - 1;
    while start > 0 {
        let (prev, cur) = (&chunks[start - 1], &chunks[start]);
        if !same(prev) || prev.chunk.seq.checked_add(1) != Some(cur.chunk.seq) {
            break;
        }
        start -= 1;
    }
    &chunks[start..]
}

/// An Observation's common fields (status, category, effective time, note).
/// `None` when `time_us` cannot be written as an RFC 3339 date (past year 9999).
fn observation(
    time_us: u64,
    note: Option<&str>,
    category_code: &str,
    category_display: &str,
) -> Option<serde_json::Map<String, Value>> {
    let effective = rfc3339_us(time_us)?;
    let mut obs = serde_json::Map::new();
    obs.insert("status".into(), json!("final"));
    obs.insert("category".into(), category(category_code, category_display));
    obs.insert("effectiveDateTime".into(), json!(effective));
    if let Some(n) = note {
        obs.insert("note".into(), json!([{ "text": n }]));
    }
    Some(obs)
}

fn category(code: &str, display: &str) -> Value {
    json!([{ "coding": [{ "system": codes::CATEGORY, "code": code, "display": display }] }])
}

/// A CodeableConcept: the LOINC code, then the MDC code the device declared (if any).
fn concept(sign: &VitalSign, mdc: u32) -> Value {
    let mut coding =
        vec![json!({ "system": codes::LOINC, "code": sign.loinc, "display": sign.display })];
    if mdc != 0 {
        coding.push(mdc_coding(mdc));
    }
    json!({ "coding": coding, "text": sign.display })
}

fn mdc_coding(code: u32) -> Value {
    match codes::mdc_name(code) {
        Some(name) => json!({ "system": codes::MDC, "code": code.to_string(), "display": name }),
        None => json!({ "system": codes::MDC, "code": code.to_string() }),
    }
}

fn quantity(value: f64, unit: &str) -> Value {
    json!({ "value": value, "unit": unit, "system": codes::UCUM, "code": unit })
}

/// A UUID derived from the Bundle's and a name (name-based, SHA-1, like version 5): the same
/// Bundle always has the same entry identifiers.
fn derived(bundle: &BundleId, name: &str) -> String {
    let mut h = Sha1::new();
    h.update(bundle.as_str().as_bytes());
    h.update(b"/");
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Escapes what a search parameter value cannot hold as is.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The last microsecond RFC 3339 can write (9999-12-31T23:59:59.999999Z).
const MAX_TIME_US: u64 = 253_402_300_799_999_999;

/// `t` as RFC 3339; a time past year 9999 (which no clock of ours reaches) is written as the
/// last one RFC 3339 can hold, never a panic.
fn rfc3339(t: SystemTime) -> String {
    let us = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(u128::from(MAX_TIME_US)) as u64);
    let t = UNIX_EPOCH + Duration::from_micros(us);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `us` (since the Unix epoch) as RFC 3339, or `None` past year 9999.
fn rfc3339_us(us: u64) -> Option<String> {
    (us <= MAX_TIME_US).then(|| rfc3339(UNIX_EPOCH + Duration::from_micros(us)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::record::Reading as Kept;
    use cabine_proto::telemetry::{ChannelDecl, ChannelKind, Measurement, WaveformChunk};

    const T: u64 = 1_795_000_000_000_000;

    fn value(loinc: &str, mdc: u32, v: f64, unit: &str) -> Reading {
        Reading {
            loinc: loinc.into(),
            mdc_code: mdc,
            value: v,
            unit: unit.into(),
        }
    }

    fn kept(values: Vec<Reading>, status: MeasurementStatus) -> Kept {
        Kept {
            source: "kiosk-1".into(),
            time_us: T,
            measurement: Measurement {
                channel_id: 1,
                seq: 1,
                capture_time_us: 0,
                values,
                status: status as i32,
            },
        }
    }

    fn built(data: &Taken) -> Built {
        let id = BundleId::parse("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        let subject = Subject::parse("Patient/123").unwrap();
        build(&BundleInput {
            id: &id,
            subject: &subject,
            timestamp: UNIX_EPOCH + Duration::from_micros(T),
            data,
        })
    }

    fn resources<'a>(b: &'a Value, kind: &str) -> Vec<&'a Value> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == kind)
            .collect()
    }

    #[test]
    fn vitals_and_the_bp_panel() {
        let data = Taken {
            readings: vec![
                kept(
                    vec![
                        value("59408-5", 150_456, 97.0, "%"),
                        value("8867-4", 149_530, 72.0, "/min"),
                    ],
                    MeasurementStatus::Valid,
                ),
                kept(
                    vec![
                        value("8480-6", 150_021, 121.0, "mm[Hg]"),
                        value("8462-4", 150_022, 79.0, "mm[Hg]"),
                        value("8478-0", 150_023, 93.0, "mm[Hg]"),
                        value("8867-4", 149_546, 70.0, "/min"),
                    ],
                    MeasurementStatus::Valid,
                ),
                kept(
                    vec![value("8310-5", 150_364, 36.8, "Cel")],
                    MeasurementStatus::Questionable,
                ),
                kept(
                    vec![value("29463-7", 188_736, 70.5, "[lb_av]")],
                    MeasurementStatus::Valid,
                ),
                kept(
                    vec![value("2345-7", 0, 5.0, "mmol/L")],
                    MeasurementStatus::Valid,
                ),
                kept(
                    vec![value("8310-5", 150_364, 36.8, "Cel")],
                    MeasurementStatus::Invalid,
                ),
                kept(
                    vec![value("8480-6", 150_021, 120.0, "mm[Hg]")],
                    MeasurementStatus::Valid,
                ),
            ],
            ..Taken::default()
        };
        let b = built(&data);
        assert_eq!(b.bundle["type"], "transaction");
        assert_eq!(
            b.bundle["identifier"]["value"],
            "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"
        );
        let obs = resources(&b.bundle, "Observation");
        assert_eq!(b.observations, 5);
        assert_eq!(obs.len(), 5);
        let spo2 = obs
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "59408-5")
            .unwrap();
        assert_eq!(spo2["code"]["coding"][1]["code"], "150456");
        assert_eq!(spo2["code"]["coding"][1]["display"], "MDC_PULS_OXIM_SAT_O2");
        assert_eq!(spo2["valueQuantity"]["code"], "%");
        assert_eq!(spo2["category"][0]["coding"][0]["code"], "vital-signs");
        assert_eq!(spo2["subject"]["reference"], "Patient/123");
        assert_eq!(spo2["effectiveDateTime"], "2026-11-18T11:06:40.000Z");
        let panel = obs
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "85354-9")
            .unwrap();
        let comps: Vec<&str> = panel["component"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"]["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(comps, ["8480-6", "8462-4", "8478-0"]);
        assert_eq!(panel["component"][0]["valueQuantity"]["value"], 121.0);
        assert!(panel.get("valueQuantity").is_none());
        let temp = obs
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "8310-5")
            .unwrap();
        assert!(temp["note"][0]["text"]
            .as_str()
            .unwrap()
            .contains("questionable"));
        assert_eq!(
            b.skipped,
            Skipped {
                unknown_code: 1,
                unit: 1,
                status: 1,
                incomplete: 1,
                ..Skipped::default()
            }
        );
        // One Device, referenced by every Observation; entries are conditional creates.
        let devices = resources(&b.bundle, "Device");
        assert_eq!(devices.len(), 1);
        let device_url = b.bundle["entry"][0]["fullUrl"].as_str().unwrap();
        assert!(obs.iter().all(|o| o["device"]["reference"] == device_url));
        for e in b.bundle["entry"].as_array().unwrap() {
            assert_eq!(e["request"]["method"], "POST");
            assert!(e["request"]["ifNoneExist"]
                .as_str()
                .unwrap()
                .starts_with("identifier="));
        }
        // The same input, the same Bundle (a retry is byte-identical).
        assert_eq!(built(&data).bundle["entry"], b.bundle["entry"]);
    }

    #[test]
    fn ecg_excerpt_as_sampled_data() {
        let key = ("kiosk-1".to_owned(), 3);
        let decl = ChannelDecl {
            channel_id: 3,
            kind: ChannelKind::Waveform as i32,
            device_kind: DeviceKind::Ecg as i32,
            mdc_code: 131_329,
            unit: "mV".into(),
            sample_rate_hz: 500.0,
            leads: vec!["I".into(), "II".into()],
            ..Default::default()
        };
        let chunk = |seq: u64, samples: Vec<i32>| Chunk {
            time_us: T + seq * 4_000,
            chunk: WaveformChunk {
                channel_id: 3,
                seq,
                first_sample_time_us: 0,
                sample_rate_hz: 500.0,
                leads: 2,
                scale: 0.005,
                offset: 0.0,
                samples,
            },
        };
        let mut data = Taken::default();
        data.channels.insert(key.clone(), decl.clone());
        // A gap after seq 1: only the latest contiguous run (2, 3) is the excerpt.
        data.waveforms.insert(
            key.clone(),
            vec![
                chunk(0, vec![9, 9]),
                chunk(2, vec![1, 2, 3, 4]),
                chunk(3, vec![5, 6]),
            ],
        );
        let b = built(&data);
        let obs = resources(&b.bundle, "Observation");
        assert_eq!(obs.len(), 1);
        let ecg = obs[0];
        assert_eq!(ecg["code"]["coding"][0]["code"], "131328");
        let lead_ii = &ecg["component"][1];
        assert_eq!(lead_ii["code"]["coding"][0]["code"], "131330");
        let sd = &lead_ii["valueSampledData"];
        assert_eq!(sd["data"], "2 4 6");
        assert_eq!(sd["period"], 2.0);
        assert_eq!(sd["dimensions"], 1);
        assert_eq!(sd["factor"], 0.005);
        assert_eq!(sd["origin"]["code"], "mV");
        assert_eq!(ecg["component"][0]["valueSampledData"]["data"], "1 3 5");
        assert_eq!(ecg["effectivePeriod"]["start"], "2026-11-18T11:06:40.008Z");

        // An unknown lead name is not guessed: the channel is skipped.
        let mut odd = decl;
        odd.leads = vec!["I".into(), "X".into()];
        data.channels.insert(key, odd);
        let b = built(&data);
        assert_eq!(b.observations, 0);
        assert_eq!(b.skipped.waveform, 1);
    }

    #[test]
    fn extreme_times_rates_and_sequence_numbers_are_skipped_not_panicking() {
        let key = ("kiosk-1".to_owned(), 3);
        let decl = ChannelDecl {
            channel_id: 3,
            kind: ChannelKind::Waveform as i32,
            device_kind: DeviceKind::Ecg as i32,
            unit: "mV".into(),
            leads: vec!["I".into()],
            ..Default::default()
        };
        let times = [
            0,
            1,
            T,
            MAX_TIME_US,
            MAX_TIME_US + 1,
            u64::MAX / 2,
            u64::MAX,
        ];
        let rates = [f64::MIN_POSITIVE, 1e-300, 1e-9, 0.5, 500.0, f64::MAX];
        let seqs = [0, 1, u64::MAX - 1, u64::MAX];
        for &time_us in &times {
            // A reading at any time: exported when writable, else skipped.
            let mut r = kept(
                vec![value("8867-4", 0, 60.0, "/min")],
                MeasurementStatus::Valid,
            );
            r.time_us = time_us;
            let mut bp = kept(
                vec![
                    value("8480-6", 0, 120.0, "mm[Hg]"),
                    value("8462-4", 0, 80.0, "mm[Hg]"),
                ],
                MeasurementStatus::Valid,
            );
            bp.time_us = time_us;
            let data = Taken {
                readings: vec![r, bp],
                ..Taken::default()
            };
            let b = built(&data);
            assert_eq!(
                b.observations == 2,
                time_us <= MAX_TIME_US,
                "time {time_us}"
            );
            for &rate in &rates {
                for &seq in &seqs {
                    let chunk = |seq: u64| Chunk {
                        time_us,
                        chunk: WaveformChunk {
                            channel_id: 3,
                            seq,
                            sample_rate_hz: rate,
                            leads: 1,
                            scale: 1.0,
                            samples: vec![1, 2, 3],
                            ..Default::default()
                        },
                    };
                    let mut data = Taken::default();
                    data.channels.insert(key.clone(), decl.clone());
                    data.waveforms
                        .insert(key.clone(), vec![chunk(seq), chunk(seq.wrapping_add(1))]);
                    let b = built(&data);
                    assert!(b.observations + b.skipped.total() as usize >= 1);
                    if let Some(o) = resources(&b.bundle, "Observation").first() {
                        let end = o["effectivePeriod"]["end"].as_str().unwrap();
                        assert!(end.len() >= 20 && !end.starts_with('+'), "{end}");
                    }
                }
            }
        }
        // A year-9999-plus timestamp for the Bundle itself is capped, not a panic.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(400_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn ids() {
        let a = BundleId::random();
        assert!(BundleId::parse(a.as_str()).is_some(), "{a}");
        assert_ne!(a, BundleId::random());
        assert!(BundleId::parse("../../etc/passwd").is_none());
        assert!(BundleId::parse("0F8FAD5B-D9CB-469F-A165-70867728950E").is_none());
        assert_eq!(query_escape("kiosk 1|x"), "kiosk%201%7Cx");
    }
}
