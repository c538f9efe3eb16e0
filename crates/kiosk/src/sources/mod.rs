//! Synthetic media sources for a simulated cabin: cameras encoded to VP8 with libvpx, a
//! microphone and a stethoscope encoded to Opus with libopus.
//!
//! Every source is a pull-based generator with no clock inside: each
//! [`next_frame`](MediaSource::next_frame) call produces the next encoded frame and says how
//! long it lasts; the caller paces the calls (and asks for keyframes after a PLI). The CLI
//! runs each source on its own thread and hands the frames to
//! [`LocalTrack::write_sample`](cabine_client::LocalTrack::write_sample):
//!
//! ```no_run
//! use std::time::Instant;
//! use cabine_kiosk::sources::{MediaSource, VideoSource};
//!
//! let mut camera = VideoSource::room_camera(25, 600).expect("libvpx accepts the settings");
//! let mut due = Instant::now();
//! loop {
//!     let frame = camera.next_frame(false).expect("encodes");
//!     // track.write_sample(&frame.data, frame.duration).await?;
//!     due += frame.duration;
//!     std::thread::sleep(due.saturating_duration_since(Instant::now()));
//! }
//! ```
//!
//! | track | source | codec |
//! |---|---|---|
//! | `room-camera` | [`VideoSource::room_camera`] (colour bars, moving ball, counter) | VP8, 640x360 |
//! | `device-camera` | [`VideoSource::device_camera`] (round otoscope view) | VP8, 640x360 |
//! | `microphone` | [`AudioSource::microphone`] (speech-like voice) | Opus voice mode, 32 kbit/s |
//! | `stethoscope` | [`AudioSource::stethoscope`] (S1/S2 heart sounds) | Opus music mode, 96 kbit/s |
//!
//! A synthetic camera can also be sent as simulcast ([`SimulcastSource`]: one picture drawn
//! per frame, shrunk in place to a half and a quarter, each size encoded by its own libvpx
//! encoder), driven with [`MediaSource::next_layers`].
//!
//! Recorded media can replace the synthetic sources: [`IvfSource`] plays a VP8 IVF file and
//! [`OggOpusSource`] an Ogg Opus file (decoded, trimmed and encoded again), both in a loop.

mod file;
mod opus;
mod pattern;
mod simulcast;
mod synth;
mod temporal;
mod vp8;
mod vp8_rtp;

use std::time::Duration;

pub use self::opus::{packet_samples, OpusConfig, OpusDecoder, OpusEncoder, OpusMode};
pub use file::{IvfSource, OggOpusSource};
pub use pattern::{I420Frame, Pattern};
pub use simulcast::{
    spatial_layers, SimulcastSource, SpatialLayer, LAYER_WEIGHTS, MIN_LAYER_KBPS, SCALE_DOWN,
    SIMULCAST_RIDS,
};
pub use synth::{HeartSounds, Synth, Tone, Voice, SAMPLE_RATE};
pub use temporal::{TemporalLayer, TemporalPattern, MAX_TEMPORAL_LAYERS};
pub use vp8::{DecodedPicture, Vp8Config, Vp8Decoder, Vp8Encoder, Vp8Frame};
pub use vp8_rtp::{Vp8Descriptor, Vp8Packetizer};

/// What can go wrong in a media source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A setting is out of range, or a frame does not match the encoder.
    #[error("invalid media source setting: {0}")]
    InvalidConfig(String),
    /// The codec library refused a call.
    #[error("{codec} {call} failed: {detail}")]
    Codec {
        /// `"VP8"` or `"Opus"`.
        codec: &'static str,
        /// The library call or step that failed.
        call: &'static str,
        /// The library's message.
        detail: String,
    },
    /// A media file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A media file is not in the expected format.
    #[error("{path} is not a valid {format} file: {reason}")]
    BadFile {
        /// The file.
        path: String,
        /// `"IVF"` or `"Ogg Opus"`.
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// One encoded frame (a VP8 frame or an Opus packet), ready for
/// [`LocalTrack::write_sample`](cabine_client::LocalTrack::write_sample).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    /// The codec bitstream.
    pub data: Vec<u8>,
    /// Whether it is a keyframe (always true for audio).
    pub keyframe: bool,
    /// How long it plays: the time until the next frame.
    pub duration: Duration,
    /// The VP8 temporal layer of the frame, when its encoder runs several (send it with a
    /// [`Vp8Packetizer`] so the RTP descriptor carries it).
    pub temporal: Option<TemporalLayer>,
}

/// Most spatial (simulcast) layers a source produces.
pub const MAX_SPATIAL_LAYERS: usize = 3;

/// One frame time of a source: a frame per spatial layer, lowest resolution first (`None`
/// for a layer the source does not have). A fixed array, so producing it allocates nothing
/// beyond the frames' data.
pub type LayerFrames = [Option<EncodedFrame>; MAX_SPATIAL_LAYERS];

/// A source of encoded frames, synthetic or read from a file.
///
/// A simulcast source ([`SimulcastSource`]) has several spatial layers and is driven with
/// [`next_layers`](Self::next_layers); every other source has one, which the default
/// methods map to [`next_frame`](Self::next_frame).
pub trait MediaSource: Send {
    /// Produces the next frame. With `force_keyframe` a video source makes it a keyframe
    /// (after a PLI/FIR or a reconnection); audio sources ignore it. File sources cannot
    /// re-encode and ignore it too.
    fn next_frame(&mut self, force_keyframe: bool) -> Result<EncodedFrame, SourceError>;

    /// Changes the target bitrate (bit/s), when the source can.
    fn set_bitrate(&mut self, _bitrate_bps: u32) -> Result<(), SourceError> {
        Ok(())
    }

    /// How many spatial layers [`next_layers`](Self::next_layers) fills (1 to
    /// [`MAX_SPATIAL_LAYERS`]).
    fn spatial_layers(&self) -> usize {
        1
    }

    /// Produces the next frame of every spatial layer into `out[..spatial_layers()]`, lowest
    /// resolution first; bit `i` of `keyframes` makes layer `i`'s frame a keyframe.
    fn next_layers(&mut self, keyframes: u8, out: &mut LayerFrames) -> Result<(), SourceError> {
        out[0] = Some(self.next_frame(keyframes & 1 != 0)?);
        Ok(())
    }

    /// Changes one spatial layer's target bitrate (bit/s), when the source can.
    fn set_layer_bitrate(&mut self, layer: usize, bitrate_bps: u32) -> Result<(), SourceError> {
        if layer == 0 {
            self.set_bitrate(bitrate_bps)
        } else {
            Ok(())
        }
    }
}

/// A synthetic camera: a [`Pattern`] drawn frame by frame and encoded to VP8.
#[derive(Debug)]
pub struct VideoSource {
    pattern: Pattern,
    encoder: Vp8Encoder,
    picture: I420Frame,
    frame: u64,
}

impl VideoSource {
    /// A camera drawing `pattern` and encoding with `config`.
    pub fn new(pattern: Pattern, config: Vp8Config) -> Result<Self, SourceError> {
        Ok(VideoSource {
            pattern,
            picture: I420Frame::new(config.width, config.height)?,
            encoder: Vp8Encoder::new(config)?,
            frame: 0,
        })
    }

    /// The room camera: [`Pattern::RoomCamera`], 640x360.
    pub fn room_camera(fps: u32, bitrate_kbps: u32) -> Result<Self, SourceError> {
        Self::new(Pattern::RoomCamera, Vp8Config::new(fps, bitrate_kbps))
    }

    /// The device camera: [`Pattern::Otoscope`], 640x360.
    pub fn device_camera(fps: u32, bitrate_kbps: u32) -> Result<Self, SourceError> {
        Self::new(Pattern::Otoscope, Vp8Config::new(fps, bitrate_kbps))
    }

    /// The encoder settings.
    pub fn config(&self) -> Vp8Config {
        self.encoder.config()
    }

    /// Frames produced so far.
    pub fn frames(&self) -> u64 {
        self.frame
    }

    /// The last picture drawn (before encoding).
    pub fn picture(&self) -> &I420Frame {
        &self.picture
    }
}

impl MediaSource for VideoSource {
    fn next_frame(&mut self, force_keyframe: bool) -> Result<EncodedFrame, SourceError> {
        let fps = self.encoder.config().fps;
        let duration = Duration::from_secs(1) / fps;
        let t = self.frame as f64 / f64::from(fps);
        self.pattern.render(self.frame, t, &mut self.picture);
        let pts = i64::try_from(self.frame).unwrap_or(i64::MAX);
        let encoded = self
            .encoder
            .encode(&self.picture, pts, force_keyframe || self.frame == 0)?;
        self.frame += 1;
        match encoded {
            Some(f) => Ok(EncodedFrame {
                data: f.data,
                keyframe: f.keyframe,
                duration,
                temporal: f.temporal,
            }),
            // Frame dropping is off, so libvpx always gives a frame; should it not, the
            // caller sends nothing this time and the timestamp still advances next time.
            None => Ok(EncodedFrame {
                data: Vec::new(),
                keyframe: false,
                duration,
                temporal: None,
            }),
        }
    }

    fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), SourceError> {
        self.encoder.set_bitrate(bitrate_bps / 1000)
    }
}

/// A synthetic microphone or stethoscope: a [`Synth`] encoded to Opus.
#[derive(Debug)]
pub struct AudioSource {
    synth: Synth,
    encoder: OpusEncoder,
    pcm: Vec<f32>,
}

impl AudioSource {
    /// A source playing `synth`, encoded with `config`.
    pub fn new(synth: Synth, config: OpusConfig) -> Result<Self, SourceError> {
        Ok(AudioSource {
            synth,
            pcm: vec![0.0; config.frame_samples()],
            encoder: OpusEncoder::new(config)?,
        })
    }

    /// The microphone: a speech-like voice, Opus voice mode at 32 kbit/s.
    pub fn microphone(seed: u64) -> Result<Self, SourceError> {
        Self::new(Synth::voice(seed), OpusConfig::microphone())
    }

    /// The stethoscope: heart sounds at `heart_rate_bpm` (same seed and rate as the
    /// simulated ECG for matching beats), Opus music mode at `bitrate_bps` (at least 64000).
    pub fn stethoscope(
        seed: u64,
        heart_rate_bpm: f64,
        bitrate_bps: u32,
    ) -> Result<Self, SourceError> {
        if bitrate_bps < 64_000 {
            return Err(SourceError::InvalidConfig(format!(
                "stethoscope bitrate {bitrate_bps} bit/s is below 64000"
            )));
        }
        Self::new(
            Synth::heart_sounds(seed, heart_rate_bpm),
            OpusConfig {
                bitrate_bps,
                ..OpusConfig::stethoscope()
            },
        )
    }

    /// The encoder settings.
    pub fn config(&self) -> OpusConfig {
        self.encoder.config()
    }

    /// The samples of the last frame (before encoding).
    pub fn pcm(&self) -> &[f32] {
        &self.pcm
    }
}

impl MediaSource for AudioSource {
    fn next_frame(&mut self, _force_keyframe: bool) -> Result<EncodedFrame, SourceError> {
        self.synth.fill(&mut self.pcm);
        let data = self.encoder.encode(&self.pcm)?;
        Ok(EncodedFrame {
            data,
            keyframe: true,
            duration: Duration::from_millis(u64::from(self.encoder.config().frame_ms)),
            temporal: None,
        })
    }
}
