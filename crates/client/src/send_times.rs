//! When each packet left: a webrtc-rs interceptor placed next to the transport (after the
//! TWCC interceptor has numbered the packet) records the transport-wide sequence number and
//! send time of every RTP packet, retransmissions included, so that transport-wide feedback
//! (arrival times at the server) becomes one-way delay samples.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtp;

/// The TWCC header extension's URI.
const TRANSPORT_CC_URI: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Send times remembered (a power of two): ~4 s of a 1 Mbit/s kiosk; feedback arrives
/// within a few hundred milliseconds.
const SLOTS: usize = 4096;

/// Send times by transport-wide sequence number, shared by the interceptor (writer) and the
/// feedback reader.
#[derive(Debug)]
pub(crate) struct SendLog {
    epoch: Instant,
    slots: Mutex<Vec<Option<(u16, i64)>>>,
}

impl Default for SendLog {
    fn default() -> Self {
        SendLog {
            epoch: Instant::now(),
            slots: Mutex::new(vec![None; SLOTS]),
        }
    }
}

impl SendLog {
    /// Records that packet `seq` left at `at`.
    pub(crate) fn record(&self, seq: u16, at: Instant) {
        let micros =
            i64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots[usize::from(seq) % SLOTS] = Some((seq, micros));
    }

    /// The instant send times are counted from.
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// When packet `seq` left, in microseconds since this log was created, if remembered.
    pub(crate) fn sent_at(&self, seq: u16) -> Option<i64> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots[usize::from(seq) % SLOTS] {
            Some((s, at)) if s == seq => Some(at),
            _ => None,
        }
    }
}

/// Builds the interceptor for one peer connection.
pub(crate) struct SendTimesBuilder {
    pub log: Arc<SendLog>,
}

impl InterceptorBuilder for SendTimesBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(SendTimes {
            log: Arc::clone(&self.log),
        }))
    }
}

struct SendTimes {
    log: Arc<SendLog>,
}

#[async_trait::async_trait]
impl Interceptor for SendTimes {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        reader
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        let Some(id) = info
            .rtp_header_extensions
            .iter()
            .find(|e| e.uri == TRANSPORT_CC_URI)
            .and_then(|e| u8::try_from(e.id).ok())
            .filter(|id| *id != 0)
        else {
            return writer;
        };
        Arc::new(Recorder {
            next: writer,
            id,
            log: Arc::clone(&self.log),
        })
    }

    async fn unbind_local_stream(&self, _info: &StreamInfo) {}

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        Ok(())
    }
}

/// The writer of one local stream: records, then passes the packet on unchanged.
struct Recorder {
    next: Arc<dyn RTPWriter + Send + Sync>,
    id: u8,
    log: Arc<SendLog>,
}

#[async_trait::async_trait]
impl RTPWriter for Recorder {
    async fn write(
        &self,
        pkt: &rtp::packet::Packet,
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        if let Some(ext) = pkt.header.get_extension(self.id) {
            if let [hi, lo, ..] = ext[..] {
                self.log
                    .record(u16::from_be_bytes([hi, lo]), Instant::now());
            }
        }
        self.next.write(pkt, attributes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn send_times_are_found_by_sequence_number_until_overwritten() {
        let log = SendLog::default();
        let t = log.epoch + Duration::from_millis(5);
        log.record(7, t);
        assert_eq!(log.sent_at(7), Some(5_000));
        assert_eq!(log.sent_at(8), None);
        log.record(7 + SLOTS as u16, t);
        assert_eq!(log.sent_at(7), None, "the slot now holds a newer packet");
    }
}
