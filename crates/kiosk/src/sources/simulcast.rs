//! A synthetic camera sent as simulcast: one picture drawn per frame at full resolution,
//! shrunk in place for the lower layers, and each size encoded by its own libvpx encoder
//! (each with the camera's temporal layers).
//!
//! The layers are the pages' (`simulcast()` in the server's `assets/app/session.js`): rids
//! `q`, `h`, `f` at a quarter, half and full resolution; two layers are `h` and `f`. The
//! camera's bitrate is shared between them by [`LAYER_WEIGHTS`], so a simulcast camera asks
//! the uplink for what the single-layer camera did.

use std::time::Duration;

use super::pattern::{I420Frame, Pattern};
use super::vp8::{Vp8Config, Vp8Encoder};
use super::{EncodedFrame, LayerFrames, MediaSource, SourceError, MAX_SPATIAL_LAYERS};

/// The rids of the three layers, lowest resolution first.
pub const SIMULCAST_RIDS: [&str; MAX_SPATIAL_LAYERS] = ["q", "h", "f"];

/// How much smaller each of the three layers is than the full picture, in each direction.
pub const SCALE_DOWN: [u32; MAX_SPATIAL_LAYERS] = [4, 2, 1];

/// Each of the three layers' weight in the camera's bitrate (a layer with a quarter of the
/// pixels gets less than a quarter of the bits: small pictures need more bits per pixel).
pub const LAYER_WEIGHTS: [u32; MAX_SPATIAL_LAYERS] = [1, 2, 5];

/// The least a layer's encoder is set to, kbit/s (libvpx's floor in [`Vp8Config`]): a camera
/// configured below 160 kbit/s gives its smallest layer a little more than its share.
pub const MIN_LAYER_KBPS: u32 = 20;

/// One layer of a simulcast camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialLayer {
    /// Its rid.
    pub rid: &'static str,
    /// How much smaller than the full picture it is (1, 2 or 4).
    pub scale_down: u32,
    /// Its share of the camera's bitrate, bit/s.
    pub bitrate_bps: u32,
}

/// The layers of a camera sent as `count` layers (1 to 3; more is taken as 3) at
/// `bitrate_bps` in all, lowest resolution first: the last `count` of `q`, `h`, `f`.
pub fn spatial_layers(count: usize, bitrate_bps: u32) -> Vec<SpatialLayer> {
    let first = MAX_SPATIAL_LAYERS - count.clamp(1, MAX_SPATIAL_LAYERS);
    let total: u32 = LAYER_WEIGHTS[first..].iter().sum();
    (first..MAX_SPATIAL_LAYERS)
        .map(|i| SpatialLayer {
            rid: SIMULCAST_RIDS[i],
            scale_down: SCALE_DOWN[i],
            // The weights are small: the product stays in range for u64 and the quotient
            // below `bitrate_bps`.
            bitrate_bps: (u64::from(bitrate_bps) * u64::from(LAYER_WEIGHTS[i]) / u64::from(total))
                as u32,
        })
        .collect()
}

/// A synthetic camera encoded as several simulcast layers.
#[derive(Debug)]
pub struct SimulcastSource {
    pattern: Pattern,
    fps: u32,
    /// The full-resolution picture, drawn once per frame.
    full: I420Frame,
    /// Lowest resolution first; the last is the full picture.
    layers: Vec<Encoding>,
    frame: u64,
}

#[derive(Debug)]
struct Encoding {
    layer: SpatialLayer,
    /// The shrunk picture (`None` for the full-resolution layer, which encodes `full`).
    picture: Option<I420Frame>,
    encoder: Vp8Encoder,
}

impl SimulcastSource {
    /// A camera drawing `pattern` at `config`'s size and frame rate, sent as `count` layers
    /// (1 to 3) sharing `config.bitrate_kbps`; every layer has `config`'s temporal layers and
    /// keyframe interval.
    ///
    /// Errors with [`SourceError::InvalidConfig`] when the size does not divide by a layer's
    /// scale into an even size, or a layer's share is below libvpx's range.
    pub fn new(pattern: Pattern, config: Vp8Config, count: usize) -> Result<Self, SourceError> {
        if !(1..=MAX_SPATIAL_LAYERS).contains(&count) {
            return Err(SourceError::InvalidConfig(format!(
                "{count} simulcast layers is not within 1..={MAX_SPATIAL_LAYERS}"
            )));
        }
        let mut layers = Vec::with_capacity(count);
        for layer in spatial_layers(count, config.bitrate_kbps.saturating_mul(1000)) {
            let (width, height) = (
                config.width / layer.scale_down,
                config.height / layer.scale_down,
            );
            if width * layer.scale_down != config.width
                || height * layer.scale_down != config.height
            {
                return Err(SourceError::InvalidConfig(format!(
                    "{}x{} does not divide by {} for simulcast layer {}",
                    config.width, config.height, layer.scale_down, layer.rid
                )));
            }
            let picture = (layer.scale_down > 1)
                .then(|| I420Frame::new(width, height))
                .transpose()?;
            let encoder = Vp8Encoder::new(Vp8Config {
                width,
                height,
                bitrate_kbps: (layer.bitrate_bps / 1000).max(MIN_LAYER_KBPS),
                ..config
            })?;
            layers.push(Encoding {
                layer,
                picture,
                encoder,
            });
        }
        Ok(SimulcastSource {
            pattern,
            fps: config.fps,
            full: I420Frame::new(config.width, config.height)?,
            layers,
            frame: 0,
        })
    }

    /// The layers, lowest resolution first.
    pub fn layers(&self) -> impl Iterator<Item = SpatialLayer> + '_ {
        self.layers.iter().map(|e| e.layer)
    }

    /// Frames produced so far (per layer).
    pub fn frames(&self) -> u64 {
        self.frame
    }
}

impl MediaSource for SimulcastSource {
    /// The full-resolution layer alone (the lower ones are not encoded).
    fn next_frame(&mut self, force_keyframe: bool) -> Result<EncodedFrame, SourceError> {
        let mut out = LayerFrames::default();
        let top = self.layers.len() - 1;
        let keyframes = u8::from(force_keyframe) << top;
        self.encode(keyframes, 1 << top, &mut out)?;
        out[top]
            .take()
            .ok_or_else(|| SourceError::InvalidConfig("no full-resolution layer".into()))
    }

    /// Shares the camera's bitrate between its layers as [`new`](Self::new) does.
    fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), SourceError> {
        let shares = spatial_layers(self.layers.len(), bitrate_bps);
        for (i, share) in shares.iter().enumerate() {
            self.set_layer_bitrate(i, share.bitrate_bps)?;
        }
        Ok(())
    }

    fn spatial_layers(&self) -> usize {
        self.layers.len()
    }

    fn next_layers(&mut self, keyframes: u8, out: &mut LayerFrames) -> Result<(), SourceError> {
        self.encode(keyframes, u8::MAX, out)
    }

    fn set_layer_bitrate(&mut self, layer: usize, bitrate_bps: u32) -> Result<(), SourceError> {
        match self.layers.get_mut(layer) {
            Some(e) => e
                .encoder
                .set_bitrate((bitrate_bps / 1000).max(MIN_LAYER_KBPS)),
            None => Err(SourceError::InvalidConfig(format!(
                "no simulcast layer {layer}"
            ))),
        }
    }
}

impl SimulcastSource {
    /// Draws the next picture and encodes the layers whose bit is set in `which`.
    fn encode(
        &mut self,
        keyframes: u8,
        which: u8,
        out: &mut LayerFrames,
    ) -> Result<(), SourceError> {
        let duration = Duration::from_secs(1) / self.fps;
        let t = self.frame as f64 / f64::from(self.fps);
        self.pattern.render(self.frame, t, &mut self.full);
        let pts = i64::try_from(self.frame).unwrap_or(i64::MAX);
        let first = self.frame == 0;
        self.frame += 1;
        for (i, (e, slot)) in self.layers.iter_mut().zip(out.iter_mut()).enumerate() {
            *slot = None;
            if which & (1 << i) == 0 {
                continue;
            }
            let picture = match e.picture.as_mut() {
                Some(p) => {
                    p.downscale_from(&self.full)?;
                    &*p
                }
                None => &self.full,
            };
            let force = first || keyframes & (1 << i) != 0;
            *slot = Some(match e.encoder.encode(picture, pts, force)? {
                Some(f) => EncodedFrame {
                    data: f.data,
                    keyframe: f.keyframe,
                    duration,
                    temporal: f.temporal,
                },
                // Frame dropping is off; should libvpx give nothing, nothing is sent.
                None => EncodedFrame {
                    data: Vec::new(),
                    keyframe: false,
                    duration,
                    temporal: None,
                },
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Vp8Decoder;

    #[test]
    fn layers_share_the_bitrate_like_the_pages() {
        let three = spatial_layers(3, 800_000);
        assert_eq!(
            three.iter().map(|l| l.rid).collect::<Vec<_>>(),
            ["q", "h", "f"]
        );
        assert_eq!(
            three.iter().map(|l| l.bitrate_bps).collect::<Vec<_>>(),
            [100_000, 200_000, 500_000]
        );
        let two = spatial_layers(2, 700_000);
        assert_eq!(two.iter().map(|l| l.rid).collect::<Vec<_>>(), ["h", "f"]);
        assert_eq!(two.iter().map(|l| l.scale_down).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(two[0].bitrate_bps + two[1].bitrate_bps, 700_000);
        assert_eq!(spatial_layers(1, 600_000)[0].bitrate_bps, 600_000);
        assert_eq!(spatial_layers(7, 600_000).len(), 3);
    }

    #[test]
    fn each_layer_decodes_at_its_size() {
        let config = Vp8Config {
            temporal_layers: 2,
            ..Vp8Config::new(30, 600)
        };
        let mut camera = SimulcastSource::new(Pattern::RoomCamera, config, 3).expect("camera");
        assert_eq!(camera.spatial_layers(), 3);
        let mut decoders: Vec<Vp8Decoder> = (0..3)
            .map(|_| Vp8Decoder::new().expect("decoder"))
            .collect();
        let mut out = LayerFrames::default();
        for n in 0..6 {
            camera.next_layers(0, &mut out).expect("encodes");
            for (i, (slot, decoder)) in out.iter().zip(&mut decoders).enumerate() {
                let frame = slot.as_ref().expect("every layer encoded");
                assert_eq!(frame.keyframe, n == 0, "layer {i} frame {n}");
                assert_eq!(frame.temporal.map(|t| t.tid), Some((n % 2) as u8));
                let picture = decoder
                    .decode(&frame.data)
                    .expect("decodes")
                    .expect("picture");
                assert_eq!(
                    (picture.width, picture.height),
                    (640 / SCALE_DOWN[i], 360 / SCALE_DOWN[i])
                );
                assert!((40.0..200.0).contains(&picture.mean_luma), "{picture:?}");
            }
        }
        // A keyframe for the middle layer alone (at the next temporal period start).
        let mut keys = [0; 3];
        for keyframes in [0b010, 0, 0] {
            camera.next_layers(keyframes, &mut out).expect("encodes");
            for (k, f) in keys.iter_mut().zip(&out) {
                *k += u8::from(f.as_ref().expect("frame").keyframe);
            }
        }
        assert_eq!(keys, [0, 1, 0]);
        assert!(SimulcastSource::new(Pattern::RoomCamera, Vp8Config::new(30, 600), 4).is_err());
        // A small camera's smallest layer gets libvpx's floor.
        let mut small =
            SimulcastSource::new(Pattern::RoomCamera, Vp8Config::new(10, 100), 3).expect("camera");
        small.set_bitrate(60_000).expect("floors the layers");
        let odd = Vp8Config {
            width: 644,
            ..Vp8Config::new(30, 600)
        };
        assert!(SimulcastSource::new(Pattern::RoomCamera, odd, 3).is_err());
    }
}
