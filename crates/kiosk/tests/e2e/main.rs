//! The kiosk's end-to-end tests against the real media plane, one module per behaviour (the
//! older `tests/*.rs` binaries use mock answerers). `common` runs Cabine's SFU shell on a
//! loopback port behind a minimal WHIP/WHEP endpoint; the impairment relay (`cabine-impair`)
//! sits between the kiosk and it where a test wants a poor link. Every test waits for what
//! it checks with a deadline.

// The media plane is the client library's test harness, shared rather than copied.
#[path = "../../../client/tests/e2e/common.rs"]
mod common;

mod adaptive;
mod simulcast;
mod temporal;
