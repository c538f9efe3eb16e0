//! `cabine-impair`: relay UDP to a server through an impaired link.
//!
//! ```text
//! cabine-impair --upstream 127.0.0.1:7882 --listen 127.0.0.1:7883 --profile rural-adsl
//! ```
//!
//! Clients send to `--listen` instead of the server's media address (for WebRTC: put that
//! address in the server's ICE candidate of the SDP answer). Every `--report` interval the
//! counters of both directions are printed.

use std::net::SocketAddr;
use std::time::Duration;

use cabine_impair::{Profile, Relay, RelayConfig};
use clap::Parser;

/// Relay UDP through an impaired link (loss, bursts, delay, jitter, rate limit).
#[derive(Debug, Parser)]
#[command(name = "cabine-impair", version)]
struct Args {
    /// The server's real media address.
    #[arg(long)]
    upstream: SocketAddr,
    /// Where clients send.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Link profile: rural-adsl, 4g-doctor, severe or clean.
    #[arg(long, default_value = "rural-adsl")]
    profile: String,
    /// Seed of the random draws (same seed, same impairments for the same traffic).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most client addresses (and TCP connections) relayed at once.
    #[arg(long, default_value_t = 64)]
    max_flows: usize,
    /// Also relay TCP on the same port (ICE-TCP): rate limit, delay and jitter only.
    #[arg(long)]
    tcp: bool,
    /// How often to print the counters (e.g. `5s`; 0 never).
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    report: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim_end_matches('s');
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let profile: Profile = args.profile.parse()?;
    let relay = Relay::start(RelayConfig {
        listen: args.listen,
        seed: args.seed,
        max_flows: args.max_flows,
        tcp: args.tcp,
        ..RelayConfig::loopback(args.upstream, profile.clone())
    })
    .await?;
    println!(
        "cabine-impair: {} -> {} through {}",
        relay.local_addr(),
        args.upstream,
        profile.name
    );
    let mut tick = (!args.report.is_zero()).then(|| tokio::time::interval(args.report));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = async {
                match tick.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {
                let s = relay.stats();
                println!(
                    "flows {} (refused {}, backlog drops {}) | up: {} in, {} lost, {} overflowed, {} out | down: {} in, {} lost, {} overflowed, {} out",
                    s.flows, s.refused_flows, s.backlog_drops, s.uplink.offered, s.uplink.lost, s.uplink.overflowed, s.uplink.delivered,
                    s.downlink.offered, s.downlink.lost, s.downlink.overflowed, s.downlink.delivered,
                );
            }
        }
    }
    Ok(())
}
