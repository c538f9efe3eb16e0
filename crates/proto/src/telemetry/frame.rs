//! Length-delimited framing with a hard size limit.
//!
//! A frame is a protobuf message prefixed by its length as a varint (what prost's
//! `encode_length_delimited` writes). [`FrameDecoder`] is fed stream bytes as they arrive and
//! yields whole frames; it refuses a length prefix above its limit as soon as the prefix is read,
//! so a peer can never make it buffer more than one frame. Datagrams carry one message without a
//! prefix.

use prost::Message;

/// Largest frame body accepted on a stream, in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Largest datagram accepted (one encoded `ClientFrame`), in bytes. Below the smallest QUIC path
/// MTU's datagram payload, so a conforming chunk always fits.
pub const MAX_DATAGRAM_LEN: usize = 1024;

/// Longest varint length prefix (a `u64` takes at most 10 bytes).
const MAX_VARINT_LEN: usize = 10;

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix (or the message to encode) is above the limit.
    #[error("frame of {len} bytes is above the limit of {max} bytes")]
    TooLarge {
        /// The announced or actual length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The length prefix is not a valid varint.
    #[error("invalid length prefix")]
    BadLength,
    /// The body does not decode as the expected message.
    #[error("frame does not decode: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes left over.
        buffered: usize,
    },
}

/// Encodes `msg` with its length prefix, refusing bodies above [`MAX_FRAME_LEN`].
pub fn encode_frame<M: Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(msg.encode_length_delimited_to_vec())
}

/// Encodes `msg` as a datagram (no prefix), refusing it above [`MAX_DATAGRAM_LEN`].
pub fn encode_datagram<M: Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_DATAGRAM_LEN {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: MAX_DATAGRAM_LEN,
        });
    }
    Ok(msg.encode_to_vec())
}

/// Decodes a datagram (one message, no prefix), refusing it above [`MAX_DATAGRAM_LEN`].
pub fn decode_datagram<M: Message + Default>(data: &[u8]) -> Result<M, FrameError> {
    if data.len() > MAX_DATAGRAM_LEN {
        return Err(FrameError::TooLarge {
            len: data.len() as u64,
            max: MAX_DATAGRAM_LEN,
        });
    }
    M::decode(data).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Splits a byte stream into length-delimited frames.
///
/// Feed bytes with [`push`](Self::push), then call [`next_frame`](Self::next_frame) until it
/// returns `Ok(None)`. After an error the stream is unusable: close it.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the [`MAX_FRAME_LEN`] limit.
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder refusing frames above `max` bytes.
    pub fn with_limit(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max,
        }
    }

    /// Appends stream bytes. Refuses them when the buffer would exceed one maximal frame plus
    /// its prefix, which only happens if the caller pushes without draining frames.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len() + data.len();
        // One maximal frame and its prefix, plus one more read's worth.
        if len > 2 * (self.max + MAX_VARINT_LEN) {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        let Some(body) = self.next_body()? else {
            return Ok(None);
        };
        M::decode(body)
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// The next complete frame body as bytes, `Ok(None)` when more bytes are needed.
    pub fn next_body(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let avail = &self.buf[self.pos..];
        let Some((len, prefix)) = read_varint(avail)? else {
            return Ok(None);
        };
        if len > self.max as u64 {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        // `len` is at most `self.max`, a usize.
        let len = len as usize;
        if avail.len() < prefix + len {
            return Ok(None);
        }
        let start = self.pos + prefix;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Call at the end of the stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }
}

/// Reads a varint: `Ok(None)` when incomplete, the value and its length otherwise.
fn read_varint(data: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &b) in data.iter().enumerate().take(MAX_VARINT_LEN) {
        if i == MAX_VARINT_LEN - 1 && b > 1 {
            return Err(FrameError::BadLength);
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if data.len() >= MAX_VARINT_LEN {
        return Err(FrameError::BadLength);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{client_frame, ClientFrame, Measurement, Value};

    fn measurement(seq: u64) -> ClientFrame {
        ClientFrame {
            body: Some(client_frame::Body::Measurement(Measurement {
                channel_id: 3,
                seq,
                capture_time_us: 1_700_000_000_000_000,
                values: vec![Value {
                    loinc: "59408-5".into(),
                    mdc_code: 150456,
                    value: 97.0,
                    unit: "%".into(),
                }],
                status: 1,
            })),
        }
    }

    #[test]
    fn frames_split_across_pushes_in_any_way() {
        let mut stream = Vec::new();
        for seq in 1..=5 {
            stream.extend(encode_frame(&measurement(seq)).unwrap());
        }
        for step in [1, 2, 3, 7, 50, stream.len()] {
            let mut d = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(step) {
                d.push(piece).unwrap();
                while let Some(f) = d.next_frame::<ClientFrame>().unwrap() {
                    got.push(f);
                }
            }
            d.finish().unwrap();
            assert_eq!(got, (1..=5).map(measurement).collect::<Vec<_>>());
        }
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_body() {
        let mut d = FrameDecoder::new();
        // varint 1 MiB
        let mut prefix = Vec::new();
        prost::encoding::encode_varint(1 << 20, &mut prefix);
        d.push(&prefix).unwrap();
        assert_eq!(
            d.next_frame::<ClientFrame>(),
            Err(FrameError::TooLarge {
                len: 1 << 20,
                max: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn bad_varint_and_garbage_are_errors() {
        let mut d = FrameDecoder::new();
        d.push(&[0xff; 11]).unwrap();
        assert_eq!(d.next_frame::<ClientFrame>(), Err(FrameError::BadLength));
        let mut d = FrameDecoder::new();
        d.push(&[3, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(
            d.next_frame::<ClientFrame>(),
            Err(FrameError::Malformed(_))
        ));
        let mut d = FrameDecoder::new();
        d.push(&[5, 1]).unwrap();
        assert_eq!(d.next_frame::<ClientFrame>(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated { buffered: 2 }));
    }

    #[test]
    fn datagrams_have_their_own_limit() {
        let ok = encode_datagram(&measurement(1)).unwrap();
        assert_eq!(decode_datagram::<ClientFrame>(&ok).unwrap(), measurement(1));
        let big = vec![0u8; MAX_DATAGRAM_LEN + 1];
        assert!(matches!(
            decode_datagram::<ClientFrame>(&big),
            Err(FrameError::TooLarge { .. })
        ));
    }
}
