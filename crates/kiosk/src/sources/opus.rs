//! Opus encoding and decoding with libopus (Debian's `libopus-dev`, through the `opus` crate).

use super::synth::SAMPLE_RATE;
use super::SourceError;

/// How an Opus encoder is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpusMode {
    /// Speech (`application=voip`): Opus may high-pass and favour intelligibility. For the
    /// microphone.
    Voice,
    /// Everything else (`application=audio`): full band, no speech shaping, what a
    /// stethoscope needs (heart and lung sounds lie in 20–1000 Hz).
    Music,
}

/// Settings of an [`OpusEncoder`] (48 kHz mono).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// Voice or music mode.
    pub mode: OpusMode,
    /// Target bitrate, bit/s (6000–510000).
    pub bitrate_bps: u32,
    /// Frame length in milliseconds: 10, 20, 40 or 60.
    pub frame_ms: u32,
    /// In-band forward error correction (useful for speech under loss).
    pub fec: bool,
}

impl OpusConfig {
    /// The microphone: voice mode, 32 kbit/s, 20 ms frames, FEC on.
    pub fn microphone() -> Self {
        OpusConfig {
            mode: OpusMode::Voice,
            bitrate_bps: 32_000,
            frame_ms: 20,
            fec: true,
        }
    }

    /// The stethoscope: music mode, 96 kbit/s, 20 ms frames, no FEC (no speech shaping, no
    /// processing of any kind).
    pub fn stethoscope() -> Self {
        OpusConfig {
            mode: OpusMode::Music,
            bitrate_bps: 96_000,
            frame_ms: 20,
            fec: false,
        }
    }

    /// Samples in one frame (48 kHz).
    pub fn frame_samples(&self) -> usize {
        (SAMPLE_RATE / 1000 * self.frame_ms) as usize
    }

    fn validate(&self) -> Result<(), SourceError> {
        if ![10, 20, 40, 60].contains(&self.frame_ms) {
            return Err(SourceError::InvalidConfig(format!(
                "Opus frame of {} ms (expected 10, 20, 40 or 60)",
                self.frame_ms
            )));
        }
        if !(6_000..=510_000).contains(&self.bitrate_bps) {
            return Err(SourceError::InvalidConfig(format!(
                "Opus bitrate {} bit/s is not within 6000..=510000",
                self.bitrate_bps
            )));
        }
        Ok(())
    }
}

/// Largest Opus packet this encoder produces (RFC 6716 allows 1275 bytes per frame).
const MAX_PACKET: usize = 1500;

/// A libopus encoder, 48 kHz mono.
pub struct OpusEncoder {
    inner: opus::Encoder,
    config: OpusConfig,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// Creates an encoder.
    pub fn new(config: OpusConfig) -> Result<Self, SourceError> {
        config.validate()?;
        let application = match config.mode {
            OpusMode::Voice => opus::Application::Voip,
            OpusMode::Music => opus::Application::Audio,
        };
        let mut inner = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, application)
            .map_err(opus_error("creating the encoder"))?;
        // Validated above: fits an i32.
        inner
            .set_bitrate(opus::Bitrate::Bits(config.bitrate_bps as i32))
            .map_err(opus_error("setting the bitrate"))?;
        inner
            .set_inband_fec(config.fec)
            .map_err(opus_error("setting FEC"))?;
        if config.fec {
            inner
                .set_packet_loss_perc(10)
                .map_err(opus_error("setting the expected loss"))?;
        }
        Ok(OpusEncoder { inner, config })
    }

    /// The settings.
    pub fn config(&self) -> OpusConfig {
        self.config
    }

    /// Encodes exactly one frame ([`OpusConfig::frame_samples`] samples) into one packet.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<Vec<u8>, SourceError> {
        if pcm.len() != self.config.frame_samples() {
            return Err(SourceError::InvalidConfig(format!(
                "{} samples given to an Opus encoder of {}-sample frames",
                pcm.len(),
                self.config.frame_samples()
            )));
        }
        self.inner
            .encode_vec_float(pcm, MAX_PACKET)
            .map_err(opus_error("encoding"))
    }
}

/// A libopus decoder, 48 kHz mono (for tests and diagnostics).
pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// Creates a decoder.
    pub fn new() -> Result<Self, SourceError> {
        Ok(OpusDecoder {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
                .map_err(opus_error("creating the decoder"))?,
        })
    }

    /// Decodes one packet into samples.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<f32>, SourceError> {
        // 120 ms is the longest an Opus packet can be.
        let mut out = vec![0f32; SAMPLE_RATE as usize * 120 / 1000];
        let n = self
            .inner
            .decode_float(packet, &mut out, false)
            .map_err(opus_error("decoding"))?;
        out.truncate(n);
        Ok(out)
    }
}

/// Samples (at 48 kHz) an Opus packet holds, from its TOC byte.
pub fn packet_samples(packet: &[u8]) -> Result<usize, SourceError> {
    opus::packet::get_nb_samples(packet, SAMPLE_RATE)
        .map_err(opus_error("reading a packet's length"))
}

fn opus_error(what: &'static str) -> impl FnOnce(opus::Error) -> SourceError {
    move |e| SourceError::Codec {
        codec: "Opus",
        call: what,
        detail: e.to_string(),
    }
}
