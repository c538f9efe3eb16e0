//! RFC 4571 framing: datagrams (STUN, DTLS, SRTP) carried over a TCP stream, each preceded by
//! its length as a 16-bit big-endian number, as ICE-TCP uses it (RFC 6544).
//!
//! Sans-IO: the shell reads stream bytes into [`Deframer::input`] and takes whole frames out
//! with [`Deframer::next_frame`]; it frames outgoing datagrams with [`encode`]. A frame of
//! length 0 or longer than the limit is an error: the connection that sent it is closed, as
//! nothing after it can be trusted to be in step.
//!
//! ```text
//! loop {
//!     stream.read_buf(deframer.input())
//!     while let Some(frame) = deframer.next_frame()? { route(frame) }
//! }
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const PREFIX: usize = 2;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced (or asked to be sent) with length 0: not a datagram.
    #[error("an RFC 4571 frame of length 0")]
    Empty,
    /// A frame longer than the limit.
    #[error("an RFC 4571 frame of {len} bytes, more than the {max} allowed")]
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Splits a byte stream into frames of at most `max` bytes. Holds at most one partial frame
/// and what one read added (the caller bounds its reads).
#[derive(Debug)]
pub struct Deframer {
    buf: BytesMut,
    max: usize,
}

impl Deframer {
    /// A deframer that refuses frames longer than `max` bytes (at most 65,535, the most the
    /// prefix can say).
    pub fn new(max: usize) -> Self {
        let max = max.min(usize::from(u16::MAX));
        Deframer {
            buf: BytesMut::with_capacity(PREFIX + max),
            max,
        }
    }

    /// The buffer to read stream bytes into (appended to what is held).
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Appends stream bytes (for callers that read elsewhere, and tests).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, without its prefix; `Ok(None)` until one has fully arrived. After
    /// an error the stream is out of step: the caller closes it.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(&[hi, lo]) = self.buf.get(..PREFIX) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max {
            return Err(FrameError::TooLong { len, max: self.max });
        }
        if self.buf.len() < PREFIX + len {
            // Room for the rest of this frame, so one read can complete it.
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(PREFIX);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes held that do not make a whole frame yet (after [`next_frame`](Self::next_frame)
    /// returned `None`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The longest frame accepted.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// Appends `datagram` to `out` as one frame. Refuses an empty datagram and one longer than
/// 65,535 bytes (which the prefix cannot say).
pub fn encode(datagram: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
    let len = datagram.len();
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let Ok(prefix) = u16::try_from(len) else {
        return Err(FrameError::TooLong {
            len,
            max: usize::from(u16::MAX),
        });
    };
    out.reserve(PREFIX + len);
    out.put_u16(prefix);
    out.put_slice(datagram);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(datagrams: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for d in datagrams {
            encode(d, &mut out).expect("encodable");
        }
        out.to_vec()
    }

    #[test]
    fn frames_come_out_whole_whatever_the_read_boundaries() {
        let datagrams: [&[u8]; 3] = [b"stun", &[7; 1200], b"x"];
        let stream = framed(&datagrams);
        for chunk in [1, 2, 3, 5, 64, stream.len()] {
            let mut d = Deframer::new(1500);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().expect("well formed") {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, datagrams.map(<[u8]>::to_vec), "chunks of {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn a_partial_frame_waits_for_its_end() {
        let mut d = Deframer::new(1500);
        d.push(&[0, 4, 1, 2]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 4);
        d.push(&[3, 4, 0]);
        assert_eq!(d.next_frame(), Ok(Some(Bytes::from_static(&[1, 2, 3, 4]))));
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 1);
    }

    #[test]
    fn a_zero_length_frame_is_refused() {
        let mut d = Deframer::new(1500);
        d.push(&[0, 1, 9, 0, 0, 0, 1, 9]);
        assert_eq!(d.next_frame(), Ok(Some(Bytes::from_static(&[9]))));
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_its_body_arrives() {
        let mut d = Deframer::new(1500);
        d.push(&1501u16.to_be_bytes());
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLong {
                len: 1501,
                max: 1500
            })
        );
        let mut d = Deframer::new(1500);
        d.push(&1500u16.to_be_bytes());
        assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn encode_refuses_what_the_prefix_cannot_carry() {
        let mut out = BytesMut::new();
        assert_eq!(encode(&[], &mut out), Err(FrameError::Empty));
        assert_eq!(
            encode(&vec![0; 65_536], &mut out),
            Err(FrameError::TooLong {
                len: 65_536,
                max: 65_535
            })
        );
        assert!(out.is_empty());
        encode(&[1, 2, 3], &mut out).expect("encodable");
        assert_eq!(&out[..], &[0, 3, 1, 2, 3]);
    }

    #[test]
    fn the_limit_never_exceeds_what_the_prefix_says() {
        assert_eq!(Deframer::new(1 << 20).max(), 65_535);
    }
}
