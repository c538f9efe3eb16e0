//! The SFU's integration tests, one binary with a module per behaviour. Rooms run with real
//! str0m peers and fake time through the `common` harness; `garbage` feeds seeded random input
//! to the parts that face the network.

mod common;

mod connect_timeout;
mod garbage;
mod isolation;
mod loopback;
mod output;
mod padding;
mod pause;
mod red;
mod renegotiation;
mod rtx_history;
mod simulcast;
mod stun_auth;
mod telemetry_channel;
mod temporal;
