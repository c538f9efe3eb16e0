//! Media kinds, codecs and the description of tracks a [`Publisher`](crate::Publisher) sends.

use std::fmt;

use webrtc::api::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use webrtc::rtp::codecs::{
    av1::Av1Payloader, h264::H264Payloader, opus::OpusPayloader, vp8::Vp8Payloader,
    vp9::Vp9Payloader,
};
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;

/// Whether a track carries audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// An audio track (microphone, stethoscope…).
    Audio,
    /// A video track (room camera, device camera, otoscope…).
    Video,
}

impl MediaKind {
    pub(crate) fn rtp_codec_type(self) -> RTPCodecType {
        match self {
            MediaKind::Audio => RTPCodecType::Audio,
            MediaKind::Video => RTPCodecType::Video,
        }
    }

    /// The SDP media type (`"audio"` or `"video"`).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A codec the kiosk client can negotiate.
///
/// Each codec is registered with a fixed payload type in the client's media engine (the remote
/// side may pick a different payload type in its answer; `webrtc` rewrites outgoing packets to
/// the negotiated one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus, 48 kHz, 2 channels in SDP (`opus/48000/2`), payload type 111.
    Opus,
    /// VP8, 90 kHz, payload type 96.
    Vp8,
    /// VP9 profile 0, 90 kHz, payload type 98.
    Vp9,
    /// H.264 constrained baseline (`profile-level-id=42e01f;packetization-mode=1`), payload
    /// type 102.
    H264,
    /// AV1 profile 0, 90 kHz, payload type 41.
    Av1,
}

impl Codec {
    /// Every supported codec, in the order they are offered.
    pub const ALL: [Codec; 5] = [Codec::Opus, Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1];

    /// The media kind this codec belongs to.
    pub fn kind(self) -> MediaKind {
        match self {
            Codec::Opus => MediaKind::Audio,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::Av1 => MediaKind::Video,
        }
    }

    /// The MIME type as `webrtc` spells it (`"audio/opus"`, `"video/VP8"`, …).
    pub fn mime_type(self) -> &'static str {
        match self {
            Codec::Opus => MIME_TYPE_OPUS,
            Codec::Vp8 => MIME_TYPE_VP8,
            Codec::Vp9 => MIME_TYPE_VP9,
            Codec::H264 => MIME_TYPE_H264,
            Codec::Av1 => MIME_TYPE_AV1,
        }
    }

    /// Parses a MIME type (case-insensitive), e.g. the one of a received track.
    pub fn from_mime_type(mime: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.mime_type().eq_ignore_ascii_case(mime))
    }

    /// The RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 90_000,
        }
    }

    /// The payload type this client registers the codec with.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Opus => 111,
            Codec::Vp8 => 96,
            Codec::Vp9 => 98,
            Codec::H264 => 102,
            Codec::Av1 => 41,
        }
    }

    fn fmtp(self) -> &'static str {
        match self {
            Codec::Opus => "minptime=10;useinbandfec=1",
            Codec::Vp8 => "",
            Codec::Vp9 | Codec::Av1 => "profile-id=0",
            Codec::H264 => "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        }
    }

    pub(crate) fn capability(self) -> RTCRtpCodecCapability {
        let rtcp_feedback = match self.kind() {
            MediaKind::Audio => vec![feedback("transport-cc", "")],
            MediaKind::Video => vec![
                feedback("goog-remb", ""),
                feedback("transport-cc", ""),
                feedback("ccm", "fir"),
                feedback("nack", ""),
                feedback("nack", "pli"),
            ],
        };
        RTCRtpCodecCapability {
            mime_type: self.mime_type().to_owned(),
            clock_rate: self.clock_rate(),
            channels: if self == Codec::Opus { 2 } else { 0 },
            sdp_fmtp_line: self.fmtp().to_owned(),
            rtcp_feedback,
        }
    }

    pub(crate) fn parameters(self) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            capability: self.capability(),
            payload_type: self.payload_type(),
            ..Default::default()
        }
    }

    pub(crate) fn payloader(self) -> Box<dyn Payloader + Send + Sync> {
        match self {
            Codec::Opus => Box::new(OpusPayloader),
            Codec::Vp8 => {
                let mut vp8 = Vp8Payloader::default();
                vp8.enable_picture_id = true;
                Box::new(vp8)
            }
            Codec::Vp9 => Box::<Vp9Payloader>::default(),
            Codec::H264 => Box::<H264Payloader>::default(),
            Codec::Av1 => Box::new(Av1Payloader {}),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mime_type())
    }
}

fn feedback(typ: &str, parameter: &str) -> RTCPFeedback {
    RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    }
}

/// One track to publish over WHIP.
///
/// `stream_id` and `track_id` become the SDP `a=msid:<stream_id> <track_id>` attribute, which
/// the Cabine server preserves in the answers it gives subscribers: use them to label tracks
/// (e.g. stream `"kiosk-1"`, tracks `"room-camera"`, `"microphone"`, `"stethoscope"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    /// Audio or video; must match [`codec`](Self::codec)'s kind.
    pub kind: MediaKind,
    /// The only codec offered for this track.
    pub codec: Codec,
    /// The msid stream identifier.
    pub stream_id: String,
    /// The msid track identifier (the track's label).
    pub track_id: String,
    /// Simulcast RIDs, lowest quality first by convention (e.g. `["q", "h", "f"]`). Empty for a
    /// plain (non-simulcast) track. Only meaningful for video.
    pub simulcast_rids: Vec<String>,
}

impl TrackSpec {
    /// An Opus audio track.
    pub fn audio(stream_id: impl Into<String>, track_id: impl Into<String>) -> Self {
        TrackSpec {
            kind: MediaKind::Audio,
            codec: Codec::Opus,
            stream_id: stream_id.into(),
            track_id: track_id.into(),
            simulcast_rids: Vec::new(),
        }
    }

    /// A video track with the given codec.
    pub fn video(stream_id: impl Into<String>, track_id: impl Into<String>, codec: Codec) -> Self {
        TrackSpec {
            kind: MediaKind::Video,
            codec,
            stream_id: stream_id.into(),
            track_id: track_id.into(),
            simulcast_rids: Vec::new(),
        }
    }

    /// Sends this track as simulcast with the given RIDs (e.g. `["q", "h", "f"]`).
    pub fn with_simulcast<I, S>(mut self, rids: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.simulcast_rids = rids.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the spec is consistent; returns a human-readable reason if not.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.codec.kind() != self.kind {
            return Err(format!(
                "track {:?}: codec {} is not a {} codec",
                self.track_id, self.codec, self.kind
            ));
        }
        for (name, value) in [("stream_id", &self.stream_id), ("track_id", &self.track_id)] {
            if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "{name} {value:?} must be non-empty and contain no whitespace"
                ));
            }
        }
        if !self.simulcast_rids.is_empty() {
            if self.kind != MediaKind::Video {
                return Err(format!(
                    "track {:?}: simulcast is only supported for video",
                    self.track_id
                ));
            }
            for (i, rid) in self.simulcast_rids.iter().enumerate() {
                // RFC 8851: rid-id = 1*(alpha-numeric / "-" / "_"); keep to that.
                if rid.is_empty()
                    || !rid
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(format!("invalid simulcast rid {rid:?}"));
                }
                if self.simulcast_rids[..i].contains(rid) {
                    return Err(format!("duplicate simulcast rid {rid:?}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_round_trip() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_mime_type(c.mime_type()), Some(c));
            assert_eq!(
                Codec::from_mime_type(&c.mime_type().to_uppercase()),
                Some(c)
            );
        }
        assert_eq!(Codec::from_mime_type("audio/PCMU"), None);
    }

    #[test]
    fn spec_validation() {
        assert!(TrackSpec::audio("s", "microphone").validate().is_ok());
        let mut bad = TrackSpec::audio("s", "mic");
        bad.codec = Codec::Vp8;
        assert!(bad.validate().is_err());
        assert!(TrackSpec::audio("s", "two words").validate().is_err());
        assert!(TrackSpec::audio("", "mic").validate().is_err());
        assert!(TrackSpec::audio("s", "mic")
            .with_simulcast(["q"])
            .validate()
            .is_err());
        let v = TrackSpec::video("s", "cam", Codec::Vp8);
        assert!(v.clone().with_simulcast(["q", "h", "f"]).validate().is_ok());
        assert!(v.clone().with_simulcast(["q", "q"]).validate().is_err());
        assert!(v.with_simulcast(["a b"]).validate().is_err());
    }
}
