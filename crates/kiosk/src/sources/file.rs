//! Media files played in a loop instead of synthetic sources: VP8 in IVF, Opus in Ogg.
//!
//! Files are read whole when opened (recordings for a test cabin are small), then frames are
//! served from memory; at the end the file starts again.

use std::path::Path;
use std::time::Duration;

use super::{EncodedFrame, MediaSource, SourceError};

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
#[derive(Debug, Clone)]
pub struct OggOpusSource {
    packets: Vec<EncodedFrame>,
    next: usize,
}

impl OggOpusSource {
    /// Reads an Ogg Opus file (its first logical stream).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let path = path.as_ref();
        let bytes = read(path)?;
        Self::parse(&bytes).map_err(|reason| SourceError::BadFile {
            path: path.display().to_string(),
            format: "Ogg Opus",
            reason,
        })
    }

    /// Parses Ogg Opus bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut packets: Vec<Vec<u8>> = Vec::new();
        let mut partial: Vec<u8> = Vec::new();
        let mut serial = None;
        let mut pos = 0;
        while pos + 27 <= bytes.len() {
            if &bytes[pos..pos + 4] != b"OggS" {
                return Err(format!("no Ogg page at byte {pos}"));
            }
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
            for &l in lacing {
                let l = usize::from(l);
                if ours {
                    partial.extend_from_slice(&bytes[body..body + l]);
                    if l < 255 {
                        packets.push(std::mem::take(&mut partial));
                    }
                }
                body += l;
            }
            pos = table_end + body_len;
        }
        if packets.len() < 2
            || !packets[0].starts_with(b"OpusHead")
            || !packets[1].starts_with(b"OpusTags")
        {
            return Err("no OpusHead/OpusTags headers".into());
        }
        if packets[0].get(9).is_some_and(|&channels| channels > 2) {
            return Err("more than two channels".into());
        }
        let mut out = Vec::with_capacity(packets.len() - 2);
        for p in packets.into_iter().skip(2).filter(|p| !p.is_empty()) {
            let samples = super::packet_samples(&p).map_err(|e| e.to_string())?;
            out.push(EncodedFrame {
                data: p,
                keyframe: true,
                duration: Duration::from_micros(samples as u64 * 1_000_000 / 48_000),
            });
        }
        if out.is_empty() {
            return Err("no audio packet".into());
        }
        Ok(OggOpusSource {
            packets: out,
            next: 0,
        })
    }

    /// Number of packets in the file.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether the file has no packet (never true for an opened file).
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

impl MediaSource for OggOpusSource {
    fn next_frame(&mut self, _force_keyframe: bool) -> Result<EncodedFrame, SourceError> {
        let packet = self.packets[self.next % self.packets.len()].clone();
        self.next = (self.next + 1) % self.packets.len();
        Ok(packet)
    }
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

    #[test]
    fn ogg_opus_round_trip() {
        fn page(serial: u32, seq: u32, packets: &[&[u8]]) -> Vec<u8> {
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
            out.extend_from_slice(&0u64.to_le_bytes());
            out.extend_from_slice(&serial.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.push(lacing.len() as u8);
            out.extend_from_slice(&lacing);
            out.extend_from_slice(&body);
            out
        }
        let head = b"OpusHead\x01\x01\x38\x01\x80\xbb\0\0\0\0\0";
        // TOC 0xFC: config 31 (CELT FB 20 ms), mono, one frame.
        let long = [vec![0xFCu8], vec![7u8; 300]].concat();
        let mut bytes = page(1, 0, &[head]);
        bytes.extend(page(1, 1, &[b"OpusTags\0\0\0\0\0\0\0\0"]));
        bytes.extend(page(1, 2, &[&[0xFC, 1, 2], &long]));
        bytes.extend(page(2, 0, &[b"other stream"]));
        let mut src = OggOpusSource::parse(&bytes).expect("valid Ogg Opus");
        assert_eq!(src.len(), 2);
        let a = src.next_frame(false).expect("packet");
        assert_eq!(a.duration, Duration::from_millis(20));
        assert_eq!(src.next_frame(false).expect("packet").data.len(), 301);
        assert!(OggOpusSource::parse(&page(1, 0, &[b"Vorbis"])).is_err());
    }
}
