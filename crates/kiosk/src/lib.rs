//! Cabine's kiosk simulator: a whole teleconsultation cabin (cameras, microphone, stethoscope,
//! medical devices and their telemetry) on top of the [`cabine_client`] WebRTC library, and
//! the `cabine-kiosk` command line tool that runs it.
//!
//! The WHIP/WHEP client itself (publisher, subscriber, congestion control) is `cabine-client`,
//! which needs no codec library; this crate adds what a simulated cabin encodes and sends:
//!
//! - [`sources`]: synthetic cameras (VP8 via libvpx) and a microphone and stethoscope (Opus via
//!   libopus), or IVF / Ogg Opus files, to feed the client's tracks.
//! - [`devices`]: simulated medical devices (pulse oximeter, ECG, thermometer, blood pressure
//!   cuff, scale) as a sans-IO state machine producing coded measurements and waveforms.
//! - [`dial`]: a whole simulated cabin (the four tracks, the doctor's media, the devices and
//!   their telemetry) that reconnects by itself; what the `cabine-kiosk dial` command runs.
//! - [`queue`]: the walk-in queue (`cabine-kiosk dial --queue`): wait for the next available
//!   doctor, then dial the room the server opened.
//! - [`stills`]: full-resolution JPEG stills of the device camera, on the doctor's command.
//! - [`telemetry`]: the devices' link to the server's QUIC telemetry sidecar.
//! - [`backoff`]: the reconnection delays both links use.
//!
//! Dependencies go one way: `dial` runs `telemetry`, which uses only [`devices`], [`stills`]
//! and [`backoff`].

#![warn(missing_docs)]

pub mod backoff;
pub mod devices;
pub mod dial;
pub mod queue;
pub mod sources;
pub mod stills;
pub mod telemetry;
