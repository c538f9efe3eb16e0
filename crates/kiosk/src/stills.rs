//! Full-resolution stills of the device camera (otoscope, dermatoscope).
//!
//! The video the doctor watches is scaled and compressed for a poor rural link; to look at an
//! eardrum closely they press "snapshot", the server sends `take_snapshot` to the kiosk's stills
//! channel, and the kiosk answers with a JPEG at the camera's full resolution, uploaded as a
//! telemetry blob. The simulated cabin draws its otoscope pattern at that resolution.
//!
//! Pure functions: the caller gives the time the still is taken at, so the output depends only
//! on the configuration and that time.

use crate::devices::ChannelId;
use crate::sources::{I420Frame, Pattern, SourceError};

/// The telemetry channel of the device camera's stills.
pub const STILLS: ChannelId = ChannelId(7);

/// The command that asks for a still.
pub const TAKE_SNAPSHOT: &str = "take_snapshot";

/// The MIME type of the stills.
pub const MIME: &str = "image/jpeg";

/// How stills are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillsConfig {
    /// Width in pixels (even, at most 8192).
    pub width: u32,
    /// Height in pixels (even, at most 8192).
    pub height: u32,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
    /// What the simulated device camera shows.
    pub pattern: Pattern,
}

impl Default for StillsConfig {
    /// 1920x1080 at quality 90: what a USB otoscope's capture button gives.
    fn default() -> Self {
        StillsConfig {
            width: 1920,
            height: 1080,
            quality: 90,
            pattern: Pattern::Otoscope,
        }
    }
}

/// One still as a JPEG file, drawn as the camera shows it `t` seconds after it started.
pub fn take(config: &StillsConfig, t: f64) -> Result<Vec<u8>, SourceError> {
    if !(1..=100).contains(&config.quality) {
        return Err(SourceError::InvalidConfig(format!(
            "JPEG quality {} is not within 1..=100",
            config.quality
        )));
    }
    let mut picture = I420Frame::new(config.width, config.height)?;
    config
        .pattern
        .render((t.max(0.0) * 15.0) as u64, t, &mut picture);
    let rgb = picture.to_rgb();
    let mut jpeg = Vec::with_capacity(rgb.len() / 8);
    // The picture's dimensions are at most 8192 (checked by `I420Frame::new`), within u16.
    jpeg_encoder::Encoder::new(&mut jpeg, config.quality)
        .encode(
            &rgb,
            config.width as u16,
            config.height as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| SourceError::InvalidConfig(format!("JPEG encoding: {e}")))?;
    Ok(jpeg)
}

/// The telemetry declaration of the stills channel.
pub fn declaration(config: &StillsConfig) -> cabine_proto::telemetry::ChannelDecl {
    use cabine_proto::telemetry as wire;
    wire::ChannelDecl {
        channel_id: STILLS.0,
        kind: wire::ChannelKind::Blob as i32,
        device_kind: match config.pattern {
            Pattern::Otoscope => wire::DeviceKind::Otoscope,
            Pattern::RoomCamera => wire::DeviceKind::Camera,
        } as i32,
        label: format!("Device camera stills {}x{}", config.width, config.height),
        commands: vec![TAKE_SNAPSHOT.to_owned()],
        ..Default::default()
    }
}

/// Width and height of a baseline JPEG (from its SOF0 segment), after checking that it starts
/// and ends as a JPEG file does; `None` for anything else.
pub fn dimensions(jpeg: &[u8]) -> Option<(u16, u16)> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) || !jpeg.ends_with(&[0xFF, 0xD9]) {
        return None;
    }
    let mut i = 2;
    while i + 9 < jpeg.len() && jpeg[i] == 0xFF {
        let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
        if jpeg[i + 1] == 0xC0 {
            let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]);
            let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]);
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_still_is_a_jpeg_at_full_resolution() {
        let config = StillsConfig::default();
        let jpeg = take(&config, 3.0).expect("still");
        assert_eq!(dimensions(&jpeg), Some((1920, 1080)));
        // Far more detail than the 640x360 video frame, far less than raw RGB.
        assert!(
            jpeg.len() > 20_000 && jpeg.len() < 1_500_000,
            "{} bytes",
            jpeg.len()
        );
    }

    #[test]
    fn stills_follow_the_camera_over_time() {
        let config = StillsConfig {
            width: 320,
            height: 180,
            ..StillsConfig::default()
        };
        assert_ne!(take(&config, 0.0).unwrap(), take(&config, 2.0).unwrap());
        assert_eq!(take(&config, 2.0).unwrap(), take(&config, 2.0).unwrap());
    }

    #[test]
    fn dimensions_need_a_whole_jpeg() {
        assert_eq!(dimensions(b""), None);
        assert_eq!(dimensions(&[0xFF, 0xD8, 0xFF, 0xD9]), None);
        let jpeg = take(
            &StillsConfig {
                width: 64,
                height: 48,
                ..StillsConfig::default()
            },
            0.0,
        )
        .unwrap();
        assert_eq!(dimensions(&jpeg), Some((64, 48)));
        assert_eq!(dimensions(&jpeg[..jpeg.len() - 1]), None);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let odd = StillsConfig {
            width: 321,
            ..StillsConfig::default()
        };
        assert!(take(&odd, 0.0).is_err());
        let q = StillsConfig {
            quality: 0,
            ..StillsConfig::default()
        };
        assert!(take(&q, 0.0).unwrap_err().to_string().contains("quality"));
    }

    #[test]
    fn the_declaration_is_valid_and_offers_the_command() {
        let d = declaration(&StillsConfig::default());
        d.check().expect("valid declaration");
        assert_eq!(d.commands, [TAKE_SNAPSHOT]);
    }

    #[test]
    fn rgb_conversion_keeps_colours() {
        let mut p = I420Frame::new(64, 36).unwrap();
        Pattern::Otoscope.render(0, 0.0, &mut p);
        let rgb = p.to_rgb();
        assert_eq!(rgb.len(), 64 * 36 * 3);
        // The corner is black; the centre is the pearly grey eardrum (bright, low saturation).
        assert!(rgb[..3].iter().all(|&c| c < 8), "{:?}", &rgb[..3]);
        let c = (18 * 64 + 32) * 3;
        let (r, g, b) = (rgb[c], rgb[c + 1], rgb[c + 2]);
        assert!(r > 120 && g > 100 && b > 90, "centre {r},{g},{b}");
    }
}
