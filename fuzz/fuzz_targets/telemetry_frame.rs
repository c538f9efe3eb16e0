//! Telemetry frame decoder: arbitrary stream bytes, split at an arbitrary point, must never
//! panic, never return a frame above the limit, and every decoded frame must re-encode within
//! the limit and pass or fail the value checks without panicking. Datagrams likewise.
#![no_main]

use cabine_proto::telemetry::{
    client_frame::Body, decode_datagram, encode_frame, ClientFrame, FrameDecoder, ServerFrame,
    MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

fn check(frame: &ClientFrame) {
    match &frame.body {
        Some(Body::Declare(d)) => drop(d.check()),
        Some(Body::Measurement(m)) => drop(m.check()),
        Some(Body::Waveform(w)) => drop(w.check()),
        Some(Body::Status(s)) => drop(s.check()),
        Some(Body::CommandResult(r)) => drop(r.check()),
        Some(Body::Blob(b)) => drop(b.check()),
        Some(Body::Hello(_)) | Some(Body::Pong(_)) | None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut decoder = FrameDecoder::new();
    'stream: for piece in [&data[..split], &data[split..]] {
        if decoder.push(piece).is_err() {
            break;
        }
        loop {
            match decoder.next_frame::<ClientFrame>() {
                Ok(Some(frame)) => {
                    check(&frame);
                    let again = encode_frame(&frame).expect("a decoded frame re-encodes");
                    assert!(again.len() <= MAX_FRAME_LEN + 10);
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
    }
    let _ = decoder.finish();
    if let Ok(frame) = decode_datagram::<ClientFrame>(data) {
        check(&frame);
    }
    let mut server = FrameDecoder::new();
    if server.push(data).is_ok() {
        while let Ok(Some(_)) = server.next_frame::<ServerFrame>() {}
    }
});
