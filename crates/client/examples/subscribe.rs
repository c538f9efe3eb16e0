//! Subscribes through a WHEP endpoint and prints the tracks received and how many packets
//! and bytes each delivered.
//!
//! ```sh
//! cargo run -p cabine-client --example subscribe -- http://127.0.0.1:8080/whep/consult-1 <token> [--seconds N]
//! ```

use std::time::Duration;

use cabine_client::{ClientOptions, Error, Subscriber};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(token)) = (args.first(), args.get(1)) else {
        eprintln!("usage: subscribe <whep-url> <token> [--seconds N]");
        std::process::exit(2);
    };
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    let subscriber = Subscriber::connect(url, token, ClientOptions::loopback()).await?;
    println!("connected: {}", subscriber.resource_url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut readers = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match subscriber.next_track(left).await {
            Ok(track) => {
                println!(
                    "track {} {} {} ssrc={} mid={:?}",
                    track.stream_id(),
                    track.id(),
                    track.mime_type(),
                    track.ssrc(),
                    track.mid()
                );
                readers.push(tokio::spawn(async move {
                    let (mut packets, mut bytes) = (0u64, 0usize);
                    loop {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match track.read_rtp_timeout(left).await {
                            Ok(p) => {
                                packets += 1;
                                bytes += p.payload.len();
                            }
                            Err(_) => break,
                        }
                    }
                    (track.id(), packets, bytes)
                }));
            }
            Err(Error::Timeout { .. }) => break,
            Err(e) => return Err(e.into()),
        }
    }
    for r in readers {
        let (id, packets, bytes) = r.await?;
        println!("{id}: {packets} packets, {bytes} payload bytes");
    }
    subscriber.close().await?;
    Ok(())
}
