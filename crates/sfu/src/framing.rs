//! RFC 4571 framing: datagrams (STUN, DTLS, SRTP) carried over a TCP stream, each preceded by
//! its length as a 16-bit big-endian number, as ICE-TCP uses it (RFC 6544).
//!
//! Sans-IO: the shell reads stream bytes into [`Deframer::input`] and takes whole frames out,
//! one at a time with [`Deframer::next_frame`] or all those a read completed at once, still
//! framed and without a copy, with [`Deframer::next_frames`] (walked with [`frames`]); it
//! frames outgoing datagrams with [`encode`]. A frame of length 0 or longer than the limit is
//! an error: the connection that sent it is closed, as nothing after it can be trusted to be in
//! step.
//!
//! ```text
//! loop {
//!     stream.read_buf(deframer.input())
//!     while let Some(batch) = deframer.next_frames()? { for frame in frames(&batch) { … } }
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

    /// The buffer to read stream bytes into (appended to what is held), with room for at
    /// least one whole frame: its memory is reused once the batches taken from it are dropped.
    pub fn input(&mut self) -> &mut BytesMut {
        self.buf.reserve(PREFIX + self.max);
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

    /// Every whole frame held, still framed (prefixes included), as one buffer taken without a
    /// copy; walk it with [`frames`]. `Ok(None)` until a frame has fully arrived. Frames before
    /// a malformed one are returned first; the error comes on the next call, and then the
    /// stream is out of step: the caller closes it.
    pub fn next_frames(&mut self) -> Result<Option<Bytes>, FrameError> {
        let mut end = 0;
        let mut refused = None;
        while let Some(&[hi, lo]) = self.buf.get(end..end + PREFIX) {
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if len == 0 {
                refused = Some(FrameError::Empty);
                break;
            }
            if len > self.max {
                refused = Some(FrameError::TooLong { len, max: self.max });
                break;
            }
            if self.buf.len() < end + PREFIX + len {
                break;
            }
            end += PREFIX + len;
        }
        match (end, refused) {
            (0, Some(e)) => Err(e),
            (0, None) => Ok(None),
            _ => Ok(Some(self.buf.split_to(end).freeze())),
        }
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

/// The frames of a buffer from [`Deframer::next_frames`], without their prefixes. A truncated
/// last frame (not possible from the deframer) ends the walk.
pub fn frames(framed: &[u8]) -> Frames<'_> {
    Frames { rest: framed }
}

/// Iterator over the frames of a framed buffer (see [`frames`]).
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (prefix, rest) = self.rest.split_first_chunk::<PREFIX>()?;
        let len = usize::from(u16::from_be_bytes(*prefix));
        let frame = rest.get(..len)?;
        self.rest = &rest[len..];
        Some(frame)
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
    fn next_frames_takes_every_whole_frame_at_once_and_then_the_refusal() {
        let mut d = Deframer::new(1500);
        let mut stream = framed(&[b"one", b"two", &[3; 1000]]);
        stream.extend_from_slice(&[0, 5, 1]); // a partial fourth
        d.push(&stream);
        let batch = d.next_frames().expect("well formed").expect("frames");
        let got: Vec<&[u8]> = frames(&batch).collect();
        assert_eq!(got, [&b"one"[..], b"two", &[3; 1000]]);
        assert_eq!(d.next_frames(), Ok(None));
        assert_eq!(d.buffered(), 3);
        d.push(&[2, 3, 4, 5, 0, 0]);
        let batch = d.next_frames().expect("well formed").expect("the fourth");
        assert_eq!(frames(&batch).collect::<Vec<_>>(), [&[1, 2, 3, 4, 5][..]]);
        assert_eq!(d.next_frames(), Err(FrameError::Empty));
        assert_eq!(
            d.next_frames(),
            Err(FrameError::Empty),
            "the refusal sticks"
        );
    }

    #[test]
    fn input_has_room_for_a_whole_frame() {
        let mut d = Deframer::new(1500);
        d.push(&[0, 9]);
        assert!(d.input().capacity() - d.buffered() >= 1502);
    }

    #[test]
    fn the_limit_never_exceeds_what_the_prefix_says() {
        assert_eq!(Deframer::new(1 << 20).max(), 65_535);
    }
}
