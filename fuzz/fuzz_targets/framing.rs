//! Any byte stream cut at any places: the deframer never panics, every frame it yields is
//! non-empty and within its limit, it holds no more than one partial frame, and once it refuses
//! a frame it keeps refusing (the stream is out of step). Taking frames one by one
//! (`next_frame`) and in batches (`next_frames` walked with `frames`) gives the same frames and
//! the same refusal; re-encoding them gives back the stream's accepted prefix.
//!
//! Input: `[limit byte, cut byte, stream...]`: the limit is 1..=256 and the stream is pushed in
//! chunks of 1..=16 bytes.
#![no_main]
use bytes::BytesMut;
use cabine_sfu::framing::{encode, frames, Deframer, FrameError, PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, cut, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) + 1;
    let chunk = usize::from(*cut % 16) + 1;
    let mut one = Deframer::new(max);
    let mut batched = Deframer::new(max);
    let (mut by_one, mut by_batch) = (Vec::new(), Vec::new());
    let mut again = BytesMut::new();
    let mut failed: Option<FrameError> = None;
    let mut failed_batched: Option<FrameError> = None;
    for piece in stream.chunks(chunk) {
        one.push(piece);
        batched.input().extend_from_slice(piece);
        loop {
            match one.next_frame() {
                Ok(Some(f)) => {
                    assert!(failed.is_none(), "a frame after a refusal");
                    assert!(!f.is_empty() && f.len() <= max, "frame of {}", f.len());
                    encode(&f, &mut again).expect("a yielded frame re-encodes");
                    by_one.push(f.to_vec());
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(previous) = failed {
                        assert_eq!(previous, e, "the refusal changed");
                    }
                    failed = Some(e);
                    break;
                }
            }
        }
        loop {
            match batched.next_frames() {
                Ok(Some(b)) => {
                    assert!(failed_batched.is_none(), "a batch after a refusal");
                    by_batch.extend(frames(&b).map(<[u8]>::to_vec));
                }
                Ok(None) => break,
                Err(e) => {
                    failed_batched = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            assert!(one.buffered() < PREFIX + max, "holds {}", one.buffered());
        }
    }
    assert_eq!(by_one, by_batch, "one by one and batched differ");
    assert_eq!(failed, failed_batched, "the refusals differ");
    assert_eq!(&stream[..again.len()], &again[..], "frames are the stream's prefix");
});
