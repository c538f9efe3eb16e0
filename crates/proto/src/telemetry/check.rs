//! Value checks applied to every frame a kiosk sends, after it decodes.
//!
//! Protobuf decoding only guarantees types; these checks make sure numbers are usable (finite,
//! in range) and sizes are bounded, so nothing downstream (the doctor's page, a FHIR export)
//! has to.

use super::{
    BlobChunk, ChannelDecl, ChannelKind, CommandResult, Measurement, Status, WaveformChunk,
    MAX_BLOB_CHUNK_LEN,
};

/// Most values in one measurement.
pub const MAX_VALUES: usize = 16;
/// Most leads of a waveform.
pub const MAX_LEADS: u32 = 16;
/// Longest text field (codes, units, labels, details, MIME types), in bytes.
pub const MAX_TEXT_LEN: usize = 256;
/// Highest waveform sample rate accepted, in Hz.
pub const MAX_SAMPLE_RATE_HZ: f64 = 10_000.0;

/// Why a decoded frame was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidFrame {
    /// Channel id 0 is reserved.
    #[error("channel id 0 is reserved")]
    ZeroChannel,
    /// Sequence number 0 is reserved (sequences start at 1).
    #[error("sequence number 0 is reserved, sequences start at 1")]
    ZeroSeq,
    /// A channel kind that is not one of the schema's (or unspecified).
    #[error("channel kind {0} is not a known kind")]
    BadKind(i32),
    /// A measurement without values or with too many.
    #[error("a measurement holds {0} values, expected 1 to {MAX_VALUES}")]
    ValueCount(usize),
    /// A value that is NaN or infinite.
    #[error("{field} is not a finite number")]
    NotFinite {
        /// Which field.
        field: &'static str,
    },
    /// A text field above [`MAX_TEXT_LEN`].
    #[error("{field} is {len} bytes long, the limit is {MAX_TEXT_LEN}")]
    TextTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// A waveform's lead count is 0 or above [`MAX_LEADS`].
    #[error("{0} leads, expected 1 to {MAX_LEADS}")]
    Leads(u32),
    /// A waveform's sample rate is not in (0, [`MAX_SAMPLE_RATE_HZ`]].
    #[error("sample rate {0} Hz is out of range")]
    SampleRate(f64),
    /// The number of samples is not a multiple of the number of leads.
    #[error("{samples} samples do not divide into {leads} leads")]
    Interleave {
        /// Sample count.
        samples: usize,
        /// Lead count.
        leads: u32,
    },
    /// A sample outside the int16 range.
    #[error("sample {value} at index {index} is outside the int16 range")]
    SampleRange {
        /// The index.
        index: usize,
        /// The value.
        value: i32,
    },
    /// A blob chunk above [`MAX_BLOB_CHUNK_LEN`].
    #[error("blob chunk of {0} bytes, the limit is {MAX_BLOB_CHUNK_LEN}")]
    ChunkTooLarge(usize),
}

fn channel(id: u32) -> Result<(), InvalidFrame> {
    if id == 0 {
        Err(InvalidFrame::ZeroChannel)
    } else {
        Ok(())
    }
}

fn text(field: &'static str, s: &str) -> Result<(), InvalidFrame> {
    if s.len() > MAX_TEXT_LEN {
        Err(InvalidFrame::TextTooLong {
            field,
            len: s.len(),
        })
    } else {
        Ok(())
    }
}

fn finite(field: &'static str, v: f64) -> Result<(), InvalidFrame> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(InvalidFrame::NotFinite { field })
    }
}

impl ChannelDecl {
    /// Checks the declaration: non-zero id, a known kind, bounded texts, and for waveforms a
    /// usable sample rate and lead list.
    pub fn check(&self) -> Result<(), InvalidFrame> {
        channel(self.channel_id)?;
        match ChannelKind::try_from(self.kind) {
            Ok(ChannelKind::Unspecified) | Err(_) => return Err(InvalidFrame::BadKind(self.kind)),
            Ok(ChannelKind::Waveform) => {
                if !(self.sample_rate_hz > 0.0 && self.sample_rate_hz <= MAX_SAMPLE_RATE_HZ) {
                    return Err(InvalidFrame::SampleRate(self.sample_rate_hz));
                }
            }
            Ok(_) => {}
        }
        text("loinc", &self.loinc)?;
        text("unit", &self.unit)?;
        text("label", &self.label)?;
        if self.leads.len() > MAX_LEADS as usize {
            return Err(InvalidFrame::Leads(self.leads.len() as u32));
        }
        for l in &self.leads {
            text("leads", l)?;
        }
        if self.commands.len() > MAX_VALUES {
            return Err(InvalidFrame::ValueCount(self.commands.len()));
        }
        for c in &self.commands {
            text("commands", c)?;
        }
        Ok(())
    }
}

impl Measurement {
    /// Checks ids, the number of values and that every value is finite.
    pub fn check(&self) -> Result<(), InvalidFrame> {
        channel(self.channel_id)?;
        if self.seq == 0 {
            return Err(InvalidFrame::ZeroSeq);
        }
        if self.values.is_empty() || self.values.len() > MAX_VALUES {
            return Err(InvalidFrame::ValueCount(self.values.len()));
        }
        for v in &self.values {
            finite("value", v.value)?;
            text("loinc", &v.loinc)?;
            text("unit", &v.unit)?;
        }
        Ok(())
    }
}

impl WaveformChunk {
    /// Checks ids, leads, sample rate, scale/offset, interleaving and the int16 sample range.
    pub fn check(&self) -> Result<(), InvalidFrame> {
        channel(self.channel_id)?;
        if self.seq == 0 {
            return Err(InvalidFrame::ZeroSeq);
        }
        if self.leads == 0 || self.leads > MAX_LEADS {
            return Err(InvalidFrame::Leads(self.leads));
        }
        if !(self.sample_rate_hz > 0.0 && self.sample_rate_hz <= MAX_SAMPLE_RATE_HZ) {
            return Err(InvalidFrame::SampleRate(self.sample_rate_hz));
        }
        finite("scale", self.scale)?;
        finite("offset", self.offset)?;
        if !self.samples.len().is_multiple_of(self.leads as usize) {
            return Err(InvalidFrame::Interleave {
                samples: self.samples.len(),
                leads: self.leads,
            });
        }
        let range = i32::from(i16::MIN)..=i32::from(i16::MAX);
        if let Some((index, &value)) = self
            .samples
            .iter()
            .enumerate()
            .find(|(_, v)| !range.contains(v))
        {
            return Err(InvalidFrame::SampleRange { index, value });
        }
        Ok(())
    }
}

impl Status {
    /// Checks the channel id and the detail text.
    pub fn check(&self) -> Result<(), InvalidFrame> {
        channel(self.channel_id)?;
        text("detail", &self.detail)
    }
}

impl CommandResult {
    /// Checks the channel id and the detail text.
    pub fn check(&self) -> Result<(), InvalidFrame> {
        channel(self.channel_id)?;
        text("detail", &self.detail)
    }
}

impl BlobChunk {
    /// Checks the channel id, the MIME type and the chunk size.
    pub fn check(&self) -> Result<(), InvalidFrame> {
        channel(self.channel_id)?;
        text("mime", &self.mime)?;
        if self.data.len() > MAX_BLOB_CHUNK_LEN {
            return Err(InvalidFrame::ChunkTooLarge(self.data.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Value;

    #[test]
    fn waveform_checks() {
        let mut w = WaveformChunk {
            channel_id: 2,
            seq: 1,
            sample_rate_hz: 500.0,
            leads: 2,
            scale: 0.005,
            samples: vec![1, -1, 300, 32767],
            ..Default::default()
        };
        assert_eq!(w.check(), Ok(()));
        w.samples.push(1);
        assert!(matches!(w.check(), Err(InvalidFrame::Interleave { .. })));
        w.samples.push(40_000);
        assert_eq!(
            w.check(),
            Err(InvalidFrame::SampleRange {
                index: 5,
                value: 40_000
            })
        );
        w.scale = f64::NAN;
        assert_eq!(w.check(), Err(InvalidFrame::NotFinite { field: "scale" }));
    }

    #[test]
    fn measurement_checks() {
        let mut m = Measurement {
            channel_id: 1,
            seq: 1,
            values: vec![Value {
                value: 36.9,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(m.check(), Ok(()));
        m.values[0].value = f64::INFINITY;
        assert_eq!(m.check(), Err(InvalidFrame::NotFinite { field: "value" }));
        m.values.clear();
        assert_eq!(m.check(), Err(InvalidFrame::ValueCount(0)));
        m.seq = 0;
        assert_eq!(m.check(), Err(InvalidFrame::ZeroSeq));
    }

    #[test]
    fn declarations_need_a_kind() {
        let d = ChannelDecl {
            channel_id: 1,
            ..Default::default()
        };
        assert_eq!(d.check(), Err(InvalidFrame::BadKind(0)));
        let d = ChannelDecl {
            channel_id: 1,
            kind: ChannelKind::Waveform as i32,
            sample_rate_hz: 0.0,
            ..Default::default()
        };
        assert_eq!(d.check(), Err(InvalidFrame::SampleRate(0.0)));
    }
}
