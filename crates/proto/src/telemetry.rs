//! The device telemetry protocol between a kiosk and the sidecar (QUIC, ALPN
//! [`ALPN`]), and the JSON envelope subscribers receive.
//!
//! The schema is `proto/cabine/telemetry/v1/telemetry.proto` (published for kiosk vendors who
//! write clients in other languages); the Rust types are generated from it by `prost` at build
//! time and re-exported here. On top of them this module gives:
//!
//! - [`frame`]: length-delimited framing with a hard size limit ([`MAX_FRAME_LEN`]): an
//!   incremental [`FrameDecoder`] fed with stream bytes, [`encode_frame`], and the datagram codec.
//! - [`check`]: value checks the server applies to every frame (finite values, int16 samples...).
//! - [`to_json`]: the JSON form of a [`Delivered`] frame sent to browsers on the `telemetry`
//!   data channel (enums as short lower-case names, blob bytes in base64).
//!
//! ```
//! use cabine_proto::telemetry::{self, client_frame, ClientFrame, Measurement, FrameDecoder};
//!
//! let m = Measurement { channel_id: 1, seq: 7, ..Default::default() };
//! let frame = ClientFrame { body: Some(client_frame::Body::Measurement(m.clone())) };
//! let bytes = telemetry::encode_frame(&frame).expect("small frame");
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&bytes).expect("within limits");
//! let back: ClientFrame = decoder.next_frame().expect("well formed").expect("complete");
//! assert_eq!(back, frame);
//! ```

pub mod check;
pub mod frame;
pub mod json;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/cabine.telemetry.v1.rs"));
}

pub use check::InvalidFrame;
pub use frame::{
    decode_datagram, encode_datagram, encode_frame, FrameDecoder, FrameError, MAX_DATAGRAM_LEN,
    MAX_FRAME_LEN,
};
pub use generated::*;
pub use json::to_json;

/// The ALPN protocol id of the telemetry connection.
pub const ALPN: &[u8] = b"cabine-telemetry/1";

/// The protocol version this crate speaks (`ClientHello.version`, `ServerHello.version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Most data bytes in one [`BlobChunk`] (a blob is split into chunks of at most this size, well
/// below [`MAX_FRAME_LEN`], so the JSON form also fits a data-channel message).
pub const MAX_BLOB_CHUNK_LEN: usize = 16 * 1024;

/// The default UDP port of the telemetry QUIC endpoint.
pub const DEFAULT_PORT: u16 = 4443;

impl ErrorCode {
    /// The QUIC application error code value.
    pub fn code(self) -> u64 {
        // The enum's values are small and non-negative (see the schema).
        self as i32 as u64
    }

    /// The error code for a QUIC application error code value, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        i32::try_from(code)
            .ok()
            .and_then(|c| ErrorCode::try_from(c).ok())
    }

    /// A short snake_case name (`"bad_token"`), used in statistics and close reasons.
    pub fn name(self) -> String {
        let full = self.as_str_name();
        full.strip_prefix("ERROR_CODE_")
            .unwrap_or(full)
            .to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip() {
        assert_eq!(ErrorCode::BadToken.code(), 3);
        assert_eq!(ErrorCode::from_code(3), Some(ErrorCode::BadToken));
        assert_eq!(ErrorCode::from_code(9999), None);
        assert_eq!(ErrorCode::DatagramTooLarge.name(), "datagram_too_large");
    }
}
