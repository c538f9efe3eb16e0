//! Publishes synthetic media to a WHIP endpoint and prints what the server answered and the
//! RTCP feedback it sent.
//!
//! ```sh
//! cargo run -p cabine-client --example publish -- http://127.0.0.1:8080/whip/consult-1 <token> [--simulcast] [--seconds N]
//! ```
//!
//! The "video" is not a decodable VP8 stream: each packet carries a VP8 payload descriptor and a
//! keyframe/delta frame tag, enough for an SFU's keyframe detection, followed by filler bytes.

use std::time::Duration;

use cabine_client::{ClientOptions, Codec, Publisher, TrackSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(token)) = (args.first(), args.get(1)) else {
        eprintln!("usage: publish <whip-url> <token> [--simulcast] [--seconds N]");
        std::process::exit(2);
    };
    let simulcast = args.iter().any(|a| a == "--simulcast");
    let seconds: u64 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    let mut camera = TrackSpec::video("kiosk-1", "room-camera", Codec::Vp8);
    if simulcast {
        camera = camera.with_simulcast(["q", "h", "f"]);
    }
    let tracks = vec![camera, TrackSpec::audio("kiosk-1", "stethoscope")];
    let publisher = Publisher::connect(url, token, tracks, ClientOptions::loopback()).await?;
    println!("connected: {}", publisher.resource_url());
    println!("--- answer ---\n{}", publisher.answer_sdp());

    let video = &publisher.tracks()[0];
    let audio = &publisher.tracks()[1];
    for i in 0..seconds * 50 {
        // 25 fps video (one packet per frame, keyframe every 2 s), 50 packets/s audio.
        if i % 2 == 0 {
            let key = i % 100 == 0;
            for (n, layer) in video.layers().iter().enumerate() {
                let mut payload = vec![0x10, if key { 0x00 } else { 0x01 }];
                payload.extend(std::iter::repeat_n(n as u8, 100 * (n + 1)));
                layer.write_rtp(&payload, true, 3600).await?;
            }
        }
        audio.write_rtp(&[0xF8; 60], false, 960).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for layer in video.layers() {
        println!(
            "video layer rid={:?} ssrc={} rtcp={:?}",
            layer.rid(),
            layer.ssrc(),
            layer.rtcp_stats()
        );
    }
    println!("audio rtcp={:?}", audio.rtcp_stats());
    publisher.close().await?;
    Ok(())
}
