//! The client library's end-to-end tests, one module per behaviour. `loopback` and
//! `offer_and_http` answer with a tiny WHIP/WHEP endpoint of their own (`webrtc` itself, or
//! HTTP only); `common` runs Cabine's SFU shell on a loopback port behind a minimal WHIP/WHEP
//! endpoint, and the impairment relay (`cabine-impair`) sits between the client and it where a
//! test wants a poor link. Every test waits for what it checks with a deadline.

mod common;

mod loopback;
mod media_via;
mod offer_and_http;
