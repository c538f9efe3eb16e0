//! Turning the RTCP a publisher receives into [`Feedback`] for its rate controller, once per
//! packet even when webrtc-rs hands the same compound packet to the readers of several
//! streams.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use webrtc::rtcp;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
};
use webrtc::rtp::extension::abs_send_time_extension::unix2ntp;

use crate::congestion::Feedback;
use crate::send_times::SendLog;

/// Feedback kept for the controller before it is taken; older entries are dropped (the
/// controller only needs recent ones).
const CAPACITY: usize = 1024;

/// Receiver report blocks remembered to drop repeats.
const RECENT_REPORTS: usize = 16;

/// The feedback of one publisher, shared by its RTCP readers.
#[derive(Debug)]
pub(crate) struct FeedbackLog {
    inner: Mutex<Inner>,
    sent: Arc<SendLog>,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Feedback>,
    last_twcc: Option<(u32, u8)>,
    recent_reports: VecDeque<(u32, u32, u32, u8)>,
}

impl FeedbackLog {
    /// A log that matches transport-wide feedback against the send times in `sent`.
    pub(crate) fn new(sent: Arc<SendLog>) -> Self {
        FeedbackLog {
            inner: Mutex::default(),
            sent,
        }
    }

    /// Records what `packet` says about congestion, if anything.
    pub(crate) fn record(&self, packet: &(dyn rtcp::packet::Packet + Send + Sync)) {
        let any = packet.as_any();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tcc) = any.downcast_ref::<TransportLayerCc>() {
            let key = (tcc.sender_ssrc, tcc.fb_pkt_count);
            if inner.last_twcc == Some(key) {
                return;
            }
            inner.last_twcc = Some(key);
            let reported = u32::from(tcc.packet_status_count);
            let received = u32::try_from(tcc.recv_deltas.len()).unwrap_or(u32::MAX);
            inner.push(Feedback::Transport {
                reported,
                lost: reported.saturating_sub(received),
            });
            if let Some(micros) = mean_one_way_delay(tcc, &self.sent) {
                inner.push(Feedback::OneWayDelay { micros });
            }
        } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            for block in &rr.reports {
                let key = (
                    block.ssrc,
                    block.last_sender_report,
                    block.delay,
                    block.fraction_lost,
                );
                if inner.recent_reports.contains(&key) {
                    continue;
                }
                if inner.recent_reports.len() == RECENT_REPORTS {
                    inner.recent_reports.pop_front();
                }
                inner.recent_reports.push_back(key);
                inner.push(Feedback::Report {
                    fraction_lost: f32::from(block.fraction_lost) / 256.0,
                    rtt: rtt(SystemTime::now(), block.last_sender_report, block.delay),
                });
            }
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            if remb.bitrate.is_finite() && remb.bitrate >= 0.0 {
                // Saturating float-to-int conversion is the intent.
                inner.push(Feedback::Remb {
                    bps: remb.bitrate as u64,
                });
            }
        }
    }

    /// Takes everything recorded so far.
    pub(crate) fn take(&self) -> Vec<Feedback> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.queue.drain(..).collect()
    }
}

impl Inner {
    fn push(&mut self, f: Feedback) {
        if self.queue.len() == CAPACITY {
            self.queue.pop_front();
        }
        self.queue.push_back(f);
    }
}

/// The mean one-way delay (arrival at the server minus departure, µs, with the clocks'
/// unknown offset) of the packets a transport-wide feedback reports as received and whose
/// send time is known.
fn mean_one_way_delay(tcc: &TransportLayerCc, sent: &SendLog) -> Option<i64> {
    let mut statuses = Vec::with_capacity(usize::from(tcc.packet_status_count));
    for chunk in &tcc.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(run) => {
                statuses.extend(std::iter::repeat_n(
                    run.packet_status_symbol,
                    usize::from(run.run_length),
                ));
            }
            PacketStatusChunk::StatusVectorChunk(vector) => {
                statuses.extend(vector.symbol_list.iter().copied());
            }
        }
    }
    statuses.truncate(usize::from(tcc.packet_status_count));
    // Arrival times: the reference time (64 ms units) plus each received packet's delta.
    let mut arrival = i64::from(tcc.reference_time) * 64_000;
    let mut deltas = tcc.recv_deltas.iter();
    let (mut sum, mut count) = (0i64, 0i64);
    for (i, status) in statuses.iter().enumerate() {
        if matches!(
            status,
            SymbolTypeTcc::PacketNotReceived | SymbolTypeTcc::PacketReceivedWithoutDelta
        ) {
            continue;
        }
        let Some(delta) = deltas.next() else {
            break;
        };
        arrival += delta.delta;
        // The status count fits u16; so does the offset.
        let seq = tcc.base_sequence_number.wrapping_add(i as u16);
        if let Some(departure) = sent.sent_at(seq) {
            sum += arrival - departure;
            count += 1;
        }
    }
    (count > 0).then(|| sum / count)
}

/// Round-trip time from a report block's LSR (the middle 32 bits of the NTP time of our last
/// sender report, which webrtc-rs takes from the system clock) and DLSR (1/65536 s), as RFC
/// 3550 6.4.1 computes it. `None` when the block echoes no sender report or the result is
/// absurd (over 10 s: a stale or foreign LSR).
fn rtt(now: SystemTime, lsr: u32, dlsr: u32) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    let now_mid = (unix2ntp(now) >> 16) as u32;
    let units = now_mid.wrapping_sub(lsr).wrapping_sub(dlsr);
    (units < 10 * 65_536).then(|| Duration::from_secs_f64(f64::from(units) / 65_536.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc::rtcp::reception_report::ReceptionReport;

    #[test]
    fn a_report_gives_the_round_trip_once_even_if_delivered_twice() {
        let now = SystemTime::now();
        // Our sender report left 300 ms ago; the server held it 100 ms: RTT 200 ms.
        let sent = (unix2ntp(now - Duration::from_millis(300)) >> 16) as u32;
        let rr = ReceiverReport {
            ssrc: 1,
            reports: vec![ReceptionReport {
                ssrc: 42,
                fraction_lost: 64,
                last_sender_report: sent,
                delay: 65_536 / 10,
                ..Default::default()
            }],
            ..Default::default()
        };
        let log = FeedbackLog::new(Arc::default());
        log.record(&rr);
        log.record(&rr);
        let got = log.take();
        assert_eq!(got.len(), 1);
        let Feedback::Report { fraction_lost, rtt } = got[0] else {
            panic!("not a report: {got:?}")
        };
        assert_eq!(fraction_lost, 0.25);
        let rtt = rtt.expect("an RTT");
        assert!((rtt.as_secs_f64() - 0.2).abs() < 0.01, "rtt {rtt:?}");
        assert!(log.take().is_empty());
        assert_eq!(super::rtt(now, 0, 0), None);
    }

    #[test]
    fn transport_feedback_gives_loss_and_the_mean_one_way_delay() {
        use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{
            RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
        };
        let sent = Arc::new(SendLog::default());
        sent.record(10, sent.epoch() + Duration::from_micros(500));
        sent.record(12, sent.epoch() + Duration::from_micros(1_500));
        let delta = |us| RecvDelta {
            type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
            delta: us,
        };
        let tcc = TransportLayerCc {
            base_sequence_number: 10,
            packet_status_count: 3,
            reference_time: 1,
            fb_pkt_count: 5,
            packet_chunks: vec![PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
                type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
                symbol_size: SymbolSizeTypeTcc::TwoBit,
                symbol_list: vec![
                    SymbolTypeTcc::PacketReceivedSmallDelta,
                    SymbolTypeTcc::PacketNotReceived,
                    SymbolTypeTcc::PacketReceivedSmallDelta,
                    // Padding beyond the status count.
                    SymbolTypeTcc::PacketNotReceived,
                ],
            })],
            recv_deltas: vec![delta(1_000), delta(2_000)],
            ..Default::default()
        };
        let log = FeedbackLog::new(Arc::clone(&sent));
        log.record(&tcc);
        log.record(&tcc);
        // Arrivals 64 ms + 1 ms and + 3 ms; departures 0.5 ms and 1.5 ms: 64.5 and 65.5 ms.
        assert_eq!(
            log.take(),
            vec![
                Feedback::Transport {
                    reported: 3,
                    lost: 1
                },
                Feedback::OneWayDelay { micros: 65_000 },
            ]
        );
    }
}
