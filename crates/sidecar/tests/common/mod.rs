//! Shared helpers of the end-to-end tests: a sidecar on 127.0.0.1 with an HS256 JWT verifier and
//! a channel-backed sink, tokens, clients, and a raw QUIC client for hand-made (bad) input.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cabine_proto::telemetry::{
    client_frame::Body, encode_frame, ChannelDecl, ChannelKind, ClientFrame, ClientHello,
    Delivered, DeviceKind, FrameDecoder, ServerFrame, PROTOCOL_VERSION,
};
use cabine_proto::{Claims, Grant, Identity, Role, RoomId};
use cabine_sidecar::client::{self, Client, ClientConfig, KioskClock};
use cabine_sidecar::tls::ServerVerification;
use cabine_sidecar::{ChannelSink, Sidecar, SidecarConfig, SinkItem, TokenError, TokenVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tokio::sync::mpsc;

pub const SECRET: &[u8] = b"test-secret-of-the-sidecar-tests";

/// The server's JWT verifier, as the `cabine` binary would implement it.
pub struct Hs256(DecodingKey);

impl TokenVerifier for Hs256 {
    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = true;
        jsonwebtoken::decode::<Claims>(token, &self.0, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

pub fn claims(sub: &str, room: &str, role: Role, grants: Option<Vec<Grant>>) -> Claims {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    Claims {
        sub: Identity::parse(sub).unwrap(),
        name: None,
        room: room.into(),
        role,
        exp,
        nbf: None,
        grants,
    }
}

pub fn token(c: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        c,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

pub fn kiosk_token(sub: &str, room: &str) -> String {
    token(&claims(sub, room, Role::Kiosk, None))
}

pub fn room(r: &str) -> RoomId {
    RoomId::parse(r).unwrap()
}

pub struct Server {
    pub sidecar: Sidecar,
    pub rx: mpsc::Receiver<SinkItem>,
    pub sink: ChannelSink,
    /// Items skipped by `next_matching`, returned first by `collect_for`.
    pub skipped: Vec<SinkItem>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut SidecarConfig)) -> Server {
        let mut config = SidecarConfig::new("127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let (sink, rx) = ChannelSink::new(100_000);
        let sidecar = Sidecar::start(
            config,
            Arc::new(Hs256(DecodingKey::from_secret(SECRET))),
            Arc::new(sink.clone()),
        )
        .await
        .unwrap();
        Server {
            sidecar,
            rx,
            sink,
            skipped: Vec::new(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sidecar.local_addr()
    }

    pub fn verification(&self) -> ServerVerification {
        ServerVerification::Pinned(self.sidecar.certificate().clone())
    }

    pub fn client_config(&self, token: String, r: &str) -> ClientConfig {
        let mut c = ClientConfig::new(self.addr(), token, room(r), self.verification());
        c.clock = KioskClock::system();
        c
    }

    /// Waits for the next delivered frame matching `f`, up to `timeout`.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&SinkItem) -> bool,
    ) -> Option<SinkItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if f(&item) {
                return Some(item);
            }
            self.skipped.push(item);
        }
    }

    /// Everything delivered within `wait`.
    pub async fn collect_for(&mut self, wait: Duration) -> Vec<SinkItem> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = std::mem::take(&mut self.skipped);
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(item);
        }
        out
    }
}

pub fn measurement_channel(id: u32) -> ChannelDecl {
    ChannelDecl {
        channel_id: id,
        kind: ChannelKind::Measurement as i32,
        device_kind: DeviceKind::PulseOximeter as i32,
        loinc: "59408-5".into(),
        mdc_code: 150456,
        unit: "%".into(),
        label: "SpO2".into(),
        ..Default::default()
    }
}

pub fn waveform_channel(id: u32) -> ChannelDecl {
    ChannelDecl {
        channel_id: id,
        kind: ChannelKind::Waveform as i32,
        device_kind: DeviceKind::Ecg as i32,
        unit: "mV".into(),
        sample_rate_hz: 500.0,
        leads: vec!["II".into()],
        ..Default::default()
    }
}

pub async fn client(_server: &Server, cfg: ClientConfig) -> Client {
    Client::connect(cfg).await.unwrap()
}

/// A raw QUIC connection speaking the ALPN, for hand-made frames.
pub struct Raw {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl Raw {
    pub async fn connect(server: &Server) -> Raw {
        let cfg = client::quinn_client_config(
            &server.verification(),
            Duration::from_secs(1),
            Duration::from_secs(10),
        )
        .unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(cfg);
        let conn = endpoint
            .connect(server.addr(), "localhost")
            .unwrap()
            .await
            .unwrap();
        Raw { endpoint, conn }
    }

    /// Opens the control stream and sends a hello.
    pub async fn hello(&self, token: &str, r: &str) -> Control {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        let hello = ClientFrame {
            body: Some(Body::Hello(ClientHello {
                version: PROTOCOL_VERSION,
                token: token.into(),
                room: r.into(),
                kiosk_clock_us: 0,
                instance_id: 1,
                software: "raw".into(),
            })),
        };
        send.write_all(&encode_frame(&hello).unwrap())
            .await
            .unwrap();
        Control {
            send,
            recv,
            decoder: FrameDecoder::new(),
        }
    }

    /// The application error code the server closed the connection with.
    pub async fn closed_code(&self) -> u64 {
        match tokio::time::timeout(Duration::from_secs(5), self.conn.closed())
            .await
            .expect("the server closes the connection")
        {
            quinn::ConnectionError::ApplicationClosed(a) => a.error_code.into_inner(),
            other => panic!("closed otherwise: {other:?}"),
        }
    }

    /// Opens a unidirectional stream, writes `bytes` (leaving it open, so a stop is always
    /// reported), and returns the code the server stopped it with.
    pub async fn uni(&self, bytes: &[u8]) -> Option<u64> {
        self.uni_with(bytes, false).await
    }

    /// Like [`uni`](Self::uni), finishing the stream when `finish`: `None` if the server read
    /// it all.
    pub async fn uni_with(&self, bytes: &[u8], finish: bool) -> Option<u64> {
        let mut s = self.conn.open_uni().await.unwrap();
        let _ = s.write_all(bytes).await;
        if finish {
            let _ = s.finish();
        }
        tokio::time::timeout(Duration::from_secs(5), s.stopped())
            .await
            .expect("the server answers the stream")
            .ok()
            .flatten()
            .map(|c| c.into_inner())
    }
}

pub struct Control {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub decoder: FrameDecoder,
}

impl Control {
    pub async fn send(&mut self, body: Body) {
        let bytes = encode_frame(&ClientFrame { body: Some(body) }).unwrap();
        self.send.write_all(&bytes).await.unwrap();
    }

    pub async fn next(&mut self) -> ServerFrame {
        loop {
            if let Some(f) = self.decoder.next_frame::<ServerFrame>().unwrap() {
                return f;
            }
            let chunk =
                tokio::time::timeout(Duration::from_secs(5), self.recv.read_chunk(4096, true))
                    .await
                    .expect("a server frame")
                    .unwrap()
                    .expect("stream open");
            self.decoder.push(&chunk.bytes).unwrap();
        }
    }

    /// Waits for the frame matching `f`, skipping pings and others.
    pub async fn until(&mut self, mut f: impl FnMut(&ServerFrame) -> bool) -> ServerFrame {
        loop {
            let frame = self.next().await;
            if f(&frame) {
                return frame;
            }
        }
    }
}

pub fn is_measurement(d: &Delivered) -> Option<u64> {
    match &d.frame {
        Some(cabine_proto::telemetry::delivered::Frame::Measurement(m)) => Some(m.seq),
        _ => None,
    }
}
