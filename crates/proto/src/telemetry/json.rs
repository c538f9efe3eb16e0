//! The JSON form of telemetry frames, for browsers.
//!
//! Field names are the schema's (snake_case); protobuf enums are written as their short
//! lower-case name (`"kind": "measurement"`, `"status": "valid"`) and read back from that name,
//! the full protobuf name or the number; `bytes` are base64 (standard alphabet, padded); the
//! `oneof` of a [`Delivered`] is an object with one key naming the frame type:
//!
//! ```json
//! {"source":"kiosk-1","channel_id":1,"capture_time_us":…,"aligned_time_us":…,
//!  "clock_error_us":120,"server_time_us":…,
//!  "frame":{"measurement":{"channel_id":1,"seq":4,"values":[…],"status":"valid"}}}
//! ```

use super::Delivered;

/// The JSON text of a delivered frame, as sent on the `telemetry` data channel.
pub fn to_json(delivered: &Delivered) -> String {
    // Serialising these plain structs cannot fail: no maps with non-string keys, no custom
    // serialiser that errors.
    serde_json::to_string(delivered).unwrap_or_else(|_| String::from("{}"))
}

/// Serde helpers for `bytes` fields: base64 text.
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as base64.
    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    /// Reads base64 text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// An enum value in JSON: its name or its number.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum NameOrNumber {
    Number(i32),
    Name(String),
}

macro_rules! enum_field {
    ($module:ident, $ty:ident, $prefix:literal) => {
        #[doc = concat!("Serde helpers for `", stringify!($ty), "` fields (an `i32` in Rust).")]
        pub mod $module {
            use serde::{Deserialize, Deserializer, Serializer};

            use crate::telemetry::$ty;

            pub(crate) fn name(v: i32) -> Option<String> {
                $ty::try_from(v).ok().map(|e| {
                    let full = e.as_str_name();
                    full.strip_prefix($prefix)
                        .unwrap_or(full)
                        .to_ascii_lowercase()
                })
            }

            pub(crate) fn value(n: super::NameOrNumber) -> Option<i32> {
                match n {
                    super::NameOrNumber::Number(v) => Some(v),
                    super::NameOrNumber::Name(s) => {
                        let upper = s.to_ascii_uppercase();
                        $ty::from_str_name(&upper)
                            .or_else(|| $ty::from_str_name(&format!("{}{}", $prefix, upper)))
                            .map(|e| e as i32)
                    }
                }
            }

            /// Writes the short name, or the number when it is not a known value.
            pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                match name(*v) {
                    Some(n) => s.serialize_str(&n),
                    None => s.serialize_i32(*v),
                }
            }

            /// Reads a short name, a full name or a number.
            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                let n = super::NameOrNumber::deserialize(d)?;
                value(n).ok_or_else(|| {
                    serde::de::Error::custom(concat!("unknown ", stringify!($ty), " name"))
                })
            }
        }
    };
}

enum_field!(channel_kind, ChannelKind, "CHANNEL_KIND_");
enum_field!(device_kind, DeviceKind, "DEVICE_KIND_");
enum_field!(measurement_status, MeasurementStatus, "MEASUREMENT_STATUS_");
enum_field!(device_state, DeviceState, "DEVICE_STATE_");
enum_field!(command_outcome, CommandOutcome, "COMMAND_OUTCOME_");

/// Serde helpers for `repeated ChannelKind` fields.
pub mod channel_kinds {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes each kind's short name.
    pub fn serialize<S: Serializer>(v: &[i32], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for k in v {
            match super::channel_kind::name(*k) {
                Some(n) => seq.serialize_element(&n)?,
                None => seq.serialize_element(k)?,
            }
        }
        seq.end()
    }

    /// Reads names or numbers.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
        Vec::<super::NameOrNumber>::deserialize(d)?
            .into_iter()
            .map(|n| {
                super::channel_kind::value(n)
                    .ok_or_else(|| serde::de::Error::custom("unknown ChannelKind name"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{
        delivered, BlobChunk, ChannelDecl, ChannelKind, Measurement, MeasurementStatus, Value,
    };

    #[test]
    fn delivered_measurement_as_json() {
        let d = Delivered {
            source: "kiosk-1".into(),
            channel_id: 1,
            capture_time_us: 10,
            aligned_time_us: 20,
            clock_error_us: 3,
            server_time_us: 25,
            epoch: "00000000000000ab".into(),
            gap: 0,
            frame: Some(delivered::Frame::Measurement(Measurement {
                channel_id: 1,
                seq: 4,
                capture_time_us: 10,
                values: vec![Value {
                    loinc: "8867-4".into(),
                    mdc_code: 149530,
                    value: 72.0,
                    unit: "/min".into(),
                }],
                status: MeasurementStatus::Valid as i32,
            })),
        };
        let json = to_json(&d);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["aligned_time_us"], 20);
        assert_eq!(v["frame"]["measurement"]["status"], "valid");
        assert_eq!(v["frame"]["measurement"]["values"][0]["loinc"], "8867-4");
        let back: Delivered = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn enums_and_bytes_read_back_in_every_form() {
        let decl: ChannelDecl =
            serde_json::from_str(r#"{"channel_id":2,"kind":"CHANNEL_KIND_WAVEFORM"}"#).unwrap();
        assert_eq!(decl.kind, ChannelKind::Waveform as i32);
        let decl: ChannelDecl = serde_json::from_str(r#"{"kind":1}"#).unwrap();
        assert_eq!(decl.kind, ChannelKind::Measurement as i32);
        assert!(serde_json::from_str::<ChannelDecl>(r#"{"kind":"nope"}"#).is_err());
        let b = BlobChunk {
            data: vec![0, 1, 2, 255],
            ..Default::default()
        };
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains(r#""data":"AAEC/w==""#), "{json}");
        assert_eq!(serde_json::from_str::<BlobChunk>(&json).unwrap(), b);
    }
}
