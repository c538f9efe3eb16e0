//! Any byte stream cut at any places: the deframer never panics, every frame it yields is
//! non-empty and within its limit, it holds no more than one partial frame, and once it refuses
//! a frame it keeps refusing (the stream is out of step). Re-encoding the frames it yielded
//! gives back the stream's accepted prefix.
//!
//! Input: `[limit byte, cut byte, stream...]`: the limit is 1..=256 and the stream is pushed in
//! chunks of 1..=16 bytes.
#![no_main]
use bytes::BytesMut;
use cabine_sfu::framing::{encode, Deframer, PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [limit, cut, stream @ ..] = data else {
        return;
    };
    let max = usize::from(*limit) + 1;
    let chunk = usize::from(*cut % 16) + 1;
    let mut d = Deframer::new(max);
    let mut again = BytesMut::new();
    let mut failed = None;
    for piece in stream.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(failed.is_none(), "a frame after a refusal");
                    assert!(!f.is_empty() && f.len() <= max, "frame of {}", f.len());
                    encode(&f, &mut again).expect("a yielded frame re-encodes");
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
        if failed.is_none() {
            assert!(d.buffered() < PREFIX + max + chunk, "holds {}", d.buffered());
        }
    }
    assert_eq!(&stream[..again.len()], &again[..], "frames are the stream's prefix");
});
