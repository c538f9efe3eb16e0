//! The server's end-to-end tests: one test binary (one link, one process), a module per
//! behaviour, each starting real servers on loopback (HTTP, WebSocket, UDP media, QUIC
//! telemetry) and driving them with real clients: the kiosk crate's WebRTC peers, plain HTTP,
//! and chromium for the pages.
//!
//! The process-wide tracing subscriber belongs to [`otlp`] (it checks the spans that reach an
//! OTLP receiver); no other module installs one.

mod common;

mod abuse;
mod audit;
mod bad_input;
mod browser;
mod cluster;
mod conformance;
mod consent;
mod consult_browser;
mod continuity_browser;
mod cors_browser;
mod deploy;
mod devices_browser;
mod failover;
mod fhir;
mod hardening;
mod http_errors;
mod invite;
mod lifecycle;
mod metrics;
mod ops;
mod ops_browser;
mod otlp;
mod privacy;
mod privilege;
mod quality_browser;
mod queue;
mod queue_browser;
mod relay;
mod restart;
mod tcp_netns;
mod telemetry;
mod tokens;
mod turn;
mod turn_netns;
mod ws;
