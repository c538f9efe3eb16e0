//! Media files played in a loop instead of synthetic sources: VP8 in IVF, Opus in Ogg.
//!
//! Files are read whole when opened (recordings for a test cabin are small), then frames are
//! served from memory; at the end the file starts again.

use std::path::Path;
use std::time::Duration;

use super::{EncodedFrame, MediaSource, OpusConfig, OpusDecoder, OpusEncoder, SourceError};

/// A VP8 IVF file (as written by `vpxenc --ivf` or `ffmpeg -c:v libvpx -f ivf`), played in
/// a loop. Keyframe requests cannot be honoured (the file is not re-encoded); the stream
/// starts again with its first keyframe at each loop.
#[derive(Debug, Clone)]
pub struct IvfSource {
    frames: Vec<EncodedFrame>,
    next: usize,
}

impl IvfSource {
    /// Reads an IVF file of VP8 frames.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let path = path.as_ref();
        let bytes = read(path)?;
        Self::parse(&bytes).map_err(|reason| SourceError::BadFile {
            path: path.display().to_string(),
            format: "IVF",
            reason,
        })
    }

    /// Parses IVF bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 32 || &bytes[..4] != b"DKIF" {
            return Err("no DKIF signature".into());
        }
        let header_len = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
        if &bytes[8..12] != b"VP80" {
            return Err(format!(
                "codec {:?} is not VP8",
                String::from_utf8_lossy(&bytes[8..12])
            ));
        }
        let rate = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
        let scale = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        if rate == 0 || scale == 0 {
            return Err(format!("time base {scale}/{rate} is not usable"));
        }
        let tick = Duration::from_secs_f64(f64::from(scale) / f64::from(rate));
        let mut pos = header_len.max(32);
        let mut raw: Vec<(u64, Vec<u8>)> = Vec::new();
        while pos + 12 <= bytes.len() {
            let size =
                u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
                    as usize;
            let mut pts = [0u8; 8];
            pts.copy_from_slice(&bytes[pos + 4..pos + 12]);
            let pts = u64::from_le_bytes(pts);
            pos += 12;
            if pos + size > bytes.len() {
                return Err(format!("frame at byte {} is truncated", pos - 12));
            }
            raw.push((pts, bytes[pos..pos + size].to_vec()));
            pos += size;
        }
        if raw.is_empty() {
            return Err("no frame".into());
        }
        let mut frames = Vec::with_capacity(raw.len());
        for i in 0..raw.len() {
            let ticks = raw
                .get(i + 1)
                .map(|next| next.0.saturating_sub(raw[i].0))
                .filter(|&d| d > 0)
                .unwrap_or(1);
            let data = std::mem::take(&mut raw[i].1);
            // VP8 frame tag: bit 0 of the first byte is 0 for a keyframe (RFC 6386 9.1).
            let keyframe = data.first().is_some_and(|b| b & 1 == 0);
            frames.push(EncodedFrame {
                data,
                keyframe,
                duration: tick * u32::try_from(ticks).unwrap_or(1),
                temporal: None,
            });
        }
        if !frames[0].keyframe {
            return Err("the first frame is not a keyframe".into());
        }
        Ok(IvfSource { frames, next: 0 })
    }

    /// Number of frames in the file.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the file has no frame (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl MediaSource for IvfSource {
    fn next_frame(&mut self, _force_keyframe: bool) -> Result<EncodedFrame, SourceError> {
        let frame = self.frames[self.next % self.frames.len()].clone();
        self.next = (self.next + 1) % self.frames.len();
        Ok(frame)
    }
}

/// An Ogg Opus file (as written by `opusenc` or `ffmpeg -c:a libopus`), played in a loop.
///
/// The file is decoded once when opened, its pre-skip (the encoder's start-up samples, given
/// in `OpusHead`) and end trimming (the padding of the last packet, given by the last page's
/// granule position) are removed, and the exact audio is looped and encoded again with the
/// track's settings. Looping the packets as they are would insert the pre-skip (~6.5 ms of
/// start-up noise or silence) and the padding at every turn.
#[derive(Debug)]
pub struct OggOpusSource {
    pcm: Vec<f32>,
    next: usize,
    frame: Vec<f32>,
    encoder: OpusEncoder,
}

impl OggOpusSource {
    /// Reads an Ogg Opus file (its first logical stream) to be sent with `config`.
    pub fn open(path: impl AsRef<Path>, config: OpusConfig) -> Result<Self, SourceError> {
        let path = path.as_ref();
        let bytes = read(path)?;
        Self::decode(&bytes, config, &path.display().to_string())
    }

    /// Reads Ogg Opus bytes to be sent with `config`.
    pub fn parse(bytes: &[u8], config: OpusConfig) -> Result<Self, SourceError> {
        Self::decode(bytes, config, "(in memory)")
    }

    /// The audio played in a loop (48 kHz mono), trimmed as the file says.
    pub fn samples(&self) -> &[f32] {
        &self.pcm
    }

    /// The encoder settings.
    pub fn config(&self) -> OpusConfig {
        self.encoder.config()
    }

    fn decode(bytes: &[u8], config: OpusConfig, path: &str) -> Result<Self, SourceError> {
        let bad = |reason: String| SourceError::BadFile {
            path: path.to_owned(),
            format: "Ogg Opus",
            reason,
        };
        let stream = read_ogg_opus(bytes).map_err(bad)?;
        let mut decoder = OpusDecoder::new()?;
        let mut pcm = Vec::new();
        for packet in &stream.packets {
            pcm.extend(decoder.decode(packet)?);
        }
        let pre_skip = usize::from(stream.pre_skip);
        if pcm.len() <= pre_skip {
            return Err(bad(format!(
                "{} decoded samples, none after the pre-skip of {pre_skip}",
                pcm.len()
            )));
        }
        pcm.drain(..pre_skip);
        // The last granule position counts the pre-skip too; anything decoded beyond it is
        // the last packet's padding.
        if let Some(end) = stream.end_granule {
            let valid = usize::try_from(end.saturating_sub(u64::from(stream.pre_skip)))
                .unwrap_or(usize::MAX);
            if valid == 0 {
                return Err(bad("the last granule position leaves no audio".into()));
            }
            pcm.truncate(valid);
        }
        Ok(OggOpusSource {
            pcm,
            next: 0,
            frame: vec![0.0; config.frame_samples()],
            encoder: OpusEncoder::new(config)?,
        })
    }
}

impl MediaSource for OggOpusSource {
    fn next_frame(&mut self, _force_keyframe: bool) -> Result<EncodedFrame, SourceError> {
        for sample in self.frame.iter_mut() {
            *sample = self.pcm[self.next];
            self.next = (self.next + 1) % self.pcm.len();
        }
        let data = self.encoder.encode(&self.frame)?;
        Ok(EncodedFrame {
            data,
            keyframe: true,
            duration: Duration::from_millis(u64::from(self.encoder.config().frame_ms)),
            temporal: None,
        })
    }
}

/// The audio packets of an Ogg Opus stream and what its headers say about trimming.
struct OggOpus {
    packets: Vec<Vec<u8>>,
    pre_skip: u16,
    /// Granule position of the stream's last page (pre-skip plus samples to play).
    end_granule: Option<u64>,
}

fn read_ogg_opus(bytes: &[u8]) -> Result<OggOpus, String> {
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut serial = None;
    let mut end_granule = None;
    let mut pos = 0;
    while pos + 27 <= bytes.len() {
        if &bytes[pos..pos + 4] != b"OggS" {
            return Err(format!("no Ogg page at byte {pos}"));
        }
        let mut granule = [0u8; 8];
        granule.copy_from_slice(&bytes[pos + 6..pos + 14]);
        let granule = u64::from_le_bytes(granule);
        let page_serial = u32::from_le_bytes([
            bytes[pos + 14],
            bytes[pos + 15],
            bytes[pos + 16],
            bytes[pos + 17],
        ]);
        let segments = usize::from(bytes[pos + 26]);
        let table_end = pos + 27 + segments;
        if table_end > bytes.len() {
            return Err(format!("page at byte {pos} is truncated"));
        }
        let lacing = &bytes[pos + 27..table_end];
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        if table_end + body_len > bytes.len() {
            return Err(format!("page at byte {pos} is truncated"));
        }
        let ours = *serial.get_or_insert(page_serial) == page_serial;
        let mut body = table_end;
        let mut completed = false;
        for &l in lacing {
            let l = usize::from(l);
            if ours {
                partial.extend_from_slice(&bytes[body..body + l]);
                if l < 255 {
                    packets.push(std::mem::take(&mut partial));
                    completed = true;
                }
            }
            body += l;
        }
        // -1 (all ones) marks a page on which no packet ends.
        if ours && completed && granule != u64::MAX && packets.len() > 2 {
            end_granule = Some(granule);
        }
        pos = table_end + body_len;
    }
    if packets.len() < 2
        || !packets[0].starts_with(b"OpusHead")
        || !packets[1].starts_with(b"OpusTags")
    {
        return Err("no OpusHead/OpusTags headers".into());
    }
    let head = &packets[0];
    if head.len() < 19 {
        return Err(format!("OpusHead of {} bytes (at least 19)", head.len()));
    }
    if head[9] > 2 {
        return Err("more than two channels".into());
    }
    let pre_skip = u16::from_le_bytes([head[10], head[11]]);
    let packets: Vec<Vec<u8>> = packets
        .into_iter()
        .skip(2)
        .filter(|p| !p.is_empty())
        .collect();
    if packets.is_empty() {
        return Err("no audio packet".into());
    }
    Ok(OggOpus {
        packets,
        pre_skip,
        end_granule,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ivf_round_trip() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(b"DKIF");
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&32u16.to_le_bytes());
        bytes.extend_from_slice(b"VP80");
        bytes.extend_from_slice(&640u16.to_le_bytes());
        bytes.extend_from_slice(&360u16.to_le_bytes());
        bytes.extend_from_slice(&30u32.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        for (pts, frame) in [(0u64, vec![0x10u8, 1, 2]), (1, vec![0x11, 3])] {
            bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&pts.to_le_bytes());
            bytes.extend_from_slice(&frame);
        }
        let mut src = IvfSource::parse(&bytes).expect("valid IVF");
        assert_eq!(src.len(), 2);
        let a = src.next_frame(false).expect("frame");
        assert!(a.keyframe);
        assert_eq!(a.data, [0x10, 1, 2]);
        assert!((a.duration.as_secs_f64() - 1.0 / 30.0).abs() < 1e-6);
        assert!(!src.next_frame(false).expect("frame").keyframe);
        assert!(src.next_frame(false).expect("loops").keyframe);
        assert!(IvfSource::parse(b"RIFF").is_err());
    }

    /// One Ogg page of `serial` holding `packets`, with granule position `granule`.
    fn page(serial: u32, seq: u32, granule: u64, packets: &[&[u8]]) -> Vec<u8> {
        let mut lacing = Vec::new();
        let mut body = Vec::new();
        for p in packets {
            let mut n = p.len();
            while n >= 255 {
                lacing.push(255u8);
                n -= 255;
            }
            lacing.push(n as u8);
            body.extend_from_slice(p);
        }
        let mut out = b"OggS\0\0".to_vec();
        out.extend_from_slice(&granule.to_le_bytes());
        out.extend_from_slice(&serial.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(lacing.len() as u8);
        out.extend_from_slice(&lacing);
        out.extend_from_slice(&body);
        out
    }

    /// An Ogg Opus file of `signal` the way `opusenc` writes one: pre-skip = the encoder's
    /// look-ahead, the last frame padded with zeros, the last granule = pre-skip + length.
    fn ogg_file(signal: &[f32]) -> (Vec<u8>, u16) {
        let config = OpusConfig::stethoscope();
        let mut encoder =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
                .expect("encoder");
        encoder
            .set_bitrate(opus::Bitrate::Bits(config.bitrate_bps as i32))
            .expect("bitrate");
        let pre_skip = encoder.get_lookahead().expect("look-ahead") as u16;
        let frame = config.frame_samples();
        // The encoder's look-ahead delays its output: feed enough padding to flush it.
        let mut padded = signal.to_vec();
        let total = (signal.len() + usize::from(pre_skip)).div_ceil(frame) * frame;
        padded.resize(total, 0.0);
        let packets: Vec<Vec<u8>> = padded
            .chunks(frame)
            .map(|c| encoder.encode_vec_float(c, 1500).expect("encodes"))
            .collect();
        let mut head = b"OpusHead\x01\x01".to_vec();
        head.extend_from_slice(&pre_skip.to_le_bytes());
        head.extend_from_slice(&48_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let mut bytes = page(1, 0, 0, &[&head]);
        bytes.extend(page(1, 1, 0, &[b"OpusTags\0\0\0\0\0\0\0\0"]));
        bytes.extend(page(2, 0, 0, &[b"other stream"]));
        let end = u64::from(pre_skip) + signal.len() as u64;
        let (first, last) = packets.split_at(packets.len() / 2);
        let first_end = (first.len() * frame) as u64;
        bytes.extend(page(
            1,
            2,
            first_end,
            &first.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        ));
        bytes.extend(page(
            1,
            3,
            end,
            &last.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        ));
        (bytes, pre_skip)
    }

    #[test]
    fn ogg_opus_loops_exactly_the_audio_without_pre_skip_or_padding() {
        // 0.3 s plus an odd 101 samples: a 200 Hz tone that starts with a click at sample 0.
        let n = 14_501;
        let signal: Vec<f32> = (0..n)
            .map(|i| {
                let click = if i < 48 { 0.8 } else { 0.0 };
                click + 0.3 * (2.0 * std::f32::consts::PI * 200.0 * i as f32 / 48_000.0).sin()
            })
            .collect();
        let (bytes, pre_skip) = ogg_file(&signal);
        assert!(pre_skip > 0, "libopus has a look-ahead");
        let mut src = OggOpusSource::parse(&bytes, OpusConfig::stethoscope()).expect("valid");
        // End trimming: exactly the samples of the original, not whole frames.
        assert_eq!(src.samples().len(), n);
        // Pre-skip removed: the decoded audio lines up with the original (best lag 0).
        let lag = (0..2 * usize::from(pre_skip))
            .max_by(|&a, &b| {
                let c = |lag: usize| -> f32 {
                    signal[..4_000]
                        .iter()
                        .zip(&src.samples()[lag..])
                        .map(|(x, y)| x * y)
                        .sum()
                };
                c(a).total_cmp(&c(b))
            })
            .expect("lags");
        assert!(lag <= 2, "decoded audio lags the original by {lag} samples");
        // Played in a loop: 20 ms packets that decode, the loop seamless in length.
        let mut decoder = OpusDecoder::new().expect("decoder");
        for _ in 0..40 {
            let frame = src.next_frame(false).expect("encodes");
            assert_eq!(frame.duration, Duration::from_millis(20));
            assert_eq!(decoder.decode(&frame.data).expect("decodes").len(), 960);
        }
        assert_eq!(src.next, (40 * 960) % n);
        assert!(
            OggOpusSource::parse(&page(1, 0, 0, &[b"Vorbis"]), OpusConfig::stethoscope()).is_err()
        );
    }
}
