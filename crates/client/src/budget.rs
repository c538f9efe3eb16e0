//! Splitting the uplink's target rate between the kiosk's tracks: audio first (the
//! stethoscope and the microphone keep their bitrates), then the video tracks in priority
//! order (the device camera before the room camera), each between its minimum and its
//! configured bitrate; a video track whose minimum does not fit is paused, the lowest
//! priority first (the first video track is never paused). A simulcast track's share is then
//! split between its layers by [`split_layers`]: the lower layers first, the top one dropped
//! first.

/// Wire bytes per encoder byte for video (RTP, header extensions, SRTP tag, RTX and
/// packetisation): the target is a rate on the wire, encoders are set in payload bits.
pub const VIDEO_OVERHEAD: f64 = 1.08;

/// Wire overhead of one 20 ms audio track, bit/s: 50 packets a second of ~40 bytes of RTP
/// header, extensions and SRTP tag.
pub const AUDIO_OVERHEAD_BPS: u64 = 16_000;

/// One video track's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoDemand {
    /// The track.
    pub track_id: &'static str,
    /// Below this the track is paused rather than sent, bit/s (encoder rate).
    pub min_bps: u32,
    /// The configured bitrate, bit/s (encoder rate).
    pub max_bps: u32,
}

/// The decision for one video track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Encode at this bitrate (bit/s).
    Send(u32),
    /// Not sent for now.
    Paused,
}

/// The kiosk's tracks and how the target rate is split between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    audio_wire_bps: u64,
    videos: Vec<VideoDemand>,
}

impl Budget {
    /// Audio tracks of these encoder bitrates (served first, never cut) and video tracks in
    /// priority order.
    pub fn new(audio_bps: &[u32], videos: Vec<VideoDemand>) -> Self {
        let audio_wire_bps = audio_bps
            .iter()
            .map(|&b| u64::from(b) + AUDIO_OVERHEAD_BPS)
            .sum();
        Budget {
            audio_wire_bps,
            videos,
        }
    }

    /// The smallest target worth asking for: audio plus the first video track's minimum.
    pub fn min_bps(&self) -> u64 {
        self.audio_wire_bps + self.videos.first().map_or(0, |v| wire(v.min_bps))
    }

    /// Every track at its configured bitrate.
    pub fn max_bps(&self) -> u64 {
        self.audio_wire_bps + self.videos.iter().map(|v| wire(v.max_bps)).sum::<u64>()
    }

    /// Each video track's share of `target_bps` (wire rate), in the order given.
    pub fn split(&self, target_bps: u64) -> Vec<(&'static str, Share)> {
        let available = target_bps.saturating_sub(self.audio_wire_bps) as f64 / VIDEO_OVERHEAD;
        // Which tracks get at least their minimum, in priority order.
        let mut on = 0;
        let mut minimums = 0.0;
        for (i, v) in self.videos.iter().enumerate() {
            let need = minimums + f64::from(v.min_bps);
            if i == 0 || need <= available {
                on = i + 1;
                minimums = need;
            } else {
                break;
            }
        }
        let active = &self.videos[..on];
        let headroom: f64 = active
            .iter()
            .map(|v| f64::from(v.max_bps.saturating_sub(v.min_bps)))
            .sum();
        let extra = (available - minimums).max(0.0);
        let fill = if headroom > 0.0 {
            (extra / headroom).min(1.0)
        } else {
            0.0
        };
        self.videos
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i >= on {
                    return (v.track_id, Share::Paused);
                }
                let range = f64::from(v.max_bps.saturating_sub(v.min_bps));
                // At most max_bps: the product is in range for u32.
                let bps = (f64::from(v.min_bps) + range * fill).round() as u32;
                (v.track_id, Share::Send(bps.min(v.max_bps)))
            })
            .collect()
    }
}

/// One simulcast layer's range (encoder rates, bit/s), for [`split_layers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDemand {
    /// Below this the layer is not sent.
    pub min_bps: u32,
    /// Its configured bitrate.
    pub max_bps: u32,
}

impl LayerDemand {
    /// The [`VideoDemand`] range of a track sent as these layers (lowest resolution first):
    /// from the lowest layer's minimum (below it the track is paused) to every layer at its
    /// configured bitrate.
    pub fn track_range(layers: &[LayerDemand]) -> (u32, u32) {
        let min = layers.first().map_or(0, |l| l.min_bps);
        let max = layers
            .iter()
            .fold(0u32, |sum, l| sum.saturating_add(l.max_bps));
        (min, max)
    }
}

/// Splits one simulcast track's share (encoder rate, bit/s) between its layers, lowest
/// resolution first, as libwebrtc does: each layer gets up to its configured bitrate before
/// the next one is sent, and the next one is sent only if its minimum fits in what is left.
/// So when the share shrinks the top layer goes first, and a subscriber that needs only a
/// lower layer keeps it whole. The lowest layer is always sent (at least at its minimum:
/// below it the budget pauses the whole track). Returns each layer's bitrate, 0 for a layer
/// not sent.
pub fn split_layers(share_bps: u32, layers: &[LayerDemand]) -> Vec<u32> {
    let mut left = share_bps;
    let mut out = Vec::with_capacity(layers.len());
    let mut sending = true;
    for (i, layer) in layers.iter().enumerate() {
        if sending && (i == 0 || left >= layer.min_bps) {
            let bps = left.clamp(layer.min_bps, layer.max_bps.max(layer.min_bps));
            left = left.saturating_sub(bps);
            out.push(bps);
        } else {
            // A higher layer is not sent when a lower one is not.
            sending = false;
            out.push(0);
        }
    }
    out
}

/// Wire rate of a video encoder rate.
fn wire(bps: u32) -> u64 {
    (f64::from(bps) * VIDEO_OVERHEAD) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cabin() -> Budget {
        Budget::new(
            &[96_000, 32_000],
            vec![
                VideoDemand {
                    track_id: "device-camera",
                    min_bps: 100_000,
                    max_bps: 400_000,
                },
                VideoDemand {
                    track_id: "room-camera",
                    min_bps: 100_000,
                    max_bps: 600_000,
                },
            ],
        )
    }

    #[test]
    fn simulcast_layers_fill_from_the_bottom_and_the_top_goes_first() {
        // A 600 kbit/s room camera as q/h/f.
        let layers = [
            LayerDemand {
                min_bps: 30_000,
                max_bps: 75_000,
            },
            LayerDemand {
                min_bps: 30_000,
                max_bps: 150_000,
            },
            LayerDemand {
                min_bps: 100_000,
                max_bps: 375_000,
            },
        ];
        assert_eq!(LayerDemand::track_range(&layers), (30_000, 600_000));
        assert_eq!(split_layers(600_000, &layers), [75_000, 150_000, 375_000]);
        assert_eq!(split_layers(900_000, &layers), [75_000, 150_000, 375_000]);
        // Room for the top layer's minimum: all three.
        assert_eq!(split_layers(325_000, &layers), [75_000, 150_000, 100_000]);
        // Not quite: the top layer is dropped, the lower two stay whole.
        assert_eq!(split_layers(300_000, &layers), [75_000, 150_000, 0]);
        // Then the middle one; a layer never goes above its configured bitrate.
        assert_eq!(split_layers(100_000, &layers), [75_000, 0, 0]);
        // The lowest layer is never dropped.
        assert_eq!(split_layers(10_000, &layers), [30_000, 0, 0]);
        assert_eq!(split_layers(0, &[]), Vec::<u32>::new());
    }

    #[test]
    fn audio_is_served_first_and_video_shares_the_rest_by_priority() {
        let b = cabin();
        // Audio on the wire: 96 + 32 kbit/s plus 2 × 16 kbit/s of overhead.
        assert_eq!(b.min_bps(), 160_000 + 108_000);
        assert_eq!(b.max_bps(), 160_000 + 1_080_000);
        // Everything fits.
        let full = b.split(b.max_bps());
        assert_eq!(full[0], ("device-camera", Share::Send(400_000)));
        assert_eq!(full[1], ("room-camera", Share::Send(600_000)));
        // 1 Mbit/s: both above their minimum, within their configured rate.
        let mid = b.split(1_000_000);
        let Share::Send(device) = mid[0].1 else {
            panic!("device paused")
        };
        let Share::Send(room) = mid[1].1 else {
            panic!("room paused")
        };
        assert!(device < 400_000 && room < 600_000);
        let used = 160_000.0 + f64::from(device + room) * VIDEO_OVERHEAD;
        assert!(used <= 1_000_000.0 + 1.0, "used {used}");
        // 350 kbit/s: the room camera's minimum no longer fits: it is paused first.
        let low = b.split(350_000);
        assert_eq!(low[1], ("room-camera", Share::Paused));
        assert!(matches!(low[0].1, Share::Send(b) if b >= 100_000));
        // Below the audio: the device camera still gets its minimum, never paused.
        let starved = b.split(100_000);
        assert_eq!(starved[0], ("device-camera", Share::Send(100_000)));
        assert_eq!(starved[1].1, Share::Paused);
    }
}
