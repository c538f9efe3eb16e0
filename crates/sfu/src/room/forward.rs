//! The packet path: an RTP packet from a publisher rewritten into every subscriber that receives
//! its track, and keyframe requests back to the publisher.

use std::sync::Arc;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{KeyframeRequestKind, MediaKind};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc, Vp8Descriptor};

use super::{Layer, Output, Progress, Room, Stage, DATA_IN_LIMIT};
use crate::forwarder::InPacket;
use crate::simulcast::{BitrateMeter, MAX_LAYERS};
use crate::stats::{IngressStats, Jitter};
use crate::temporal::TemporalMeters;
use crate::{codec, temporal};

impl Room {
    pub(super) fn on_rtp(&mut self, i: usize, now: Instant, pkt: RtpPacket) {
        self.reached(i, Stage::FirstMedia);
        let ssrc = pkt.header.ssrc;
        let Some((track_id, layer)) = self.locate(i, ssrc) else {
            self.dropped.unknown_ssrc += 1;
            return;
        };
        let Some(ti) = self.tracks.iter().position(|t| t.id == track_id) else {
            return;
        };
        let pt = *pkt.header.payload_type;
        let (codec, clock, red) = match &self.tracks[ti].codec {
            Some((p, c, clock, params)) if *p == pt => {
                (*c, *clock, params.red().is_some_and(|r| *r == pt))
            }
            _ => {
                let Some(params) = self.sessions_codec_params(i, pt) else {
                    self.dropped.unmapped_payload_type += 1;
                    return;
                };
                let spec = params.spec();
                let (c, clock) = (spec.codec, spec.clock_rate.get());
                self.tracks[ti].codec = Some((pt, c, clock, params));
                (c, clock, params.red().is_some_and(|r| *r == pt))
            }
        };
        let track = &mut self.tracks[ti];
        let kind = track.kind;
        // The VP8 descriptor is parsed once per packet and shared by every subscriber's patch.
        let descriptor = if codec == Codec::Vp8 {
            Vp8Descriptor::parse(&pkt.payload).ok()
        } else {
            None
        };
        let keyframe = kind == MediaKind::Audio
            || match (&descriptor, codec) {
                (Some(d), _) => d.starts_keyframe(&pkt.payload),
                (None, Codec::Vp8) => false,
                (None, _) => codec::starts_keyframe(codec, &pkt.payload),
            };
        let vp8 = descriptor.and_then(|d| d.picture_id().map(|p| (p, d.tl0_pic_idx())));
        let temporal = descriptor.and_then(|_| temporal::vp8_temporal(&pkt.payload));
        let arrival = pkt.timestamp;
        {
            let l = &mut track.layers[usize::from(layer)];
            l.stats.packets += 1;
            l.stats.bytes += pkt.payload.len() as u64;
            if keyframe && kind == MediaKind::Video {
                l.stats.keyframes += 1;
            }
            l.meter.add(now, pkt.payload.len());
            if let Some(t) = temporal {
                l.temporal.add(now, t.tid, pkt.payload.len());
            }
            l.jitter.update(arrival, pkt.header.timestamp, clock);
        }
        let input = InPacket {
            layer,
            seq: *pkt.seq_no,
            ts: pkt.header.timestamp,
            keyframe,
            vp8,
            temporal,
            arrival,
        };
        let ext = &pkt.header.ext_vals;

        // The track's buffers for stripping RED, out of it while it is borrowed below (a move,
        // no allocation; put back after the loop).
        let mut primaries = std::mem::take(&mut self.tracks[ti].primaries);
        let track = &self.tracks[ti];
        let rid = track.layers.get(usize::from(layer)).and_then(|l| l.rid);
        let mut keyframe_wanted = false;
        let mut forwarded = false;
        // RED reduced to its primary block, made once for the subscribers without RED (in a
        // reused buffer: no allocation in steady state, see `red::PrimaryBuffers`).
        let mut primary: Option<Option<Arc<[u8]>>> = None;
        for (j, sub) in self.sessions.iter_mut().enumerate() {
            if j == i {
                continue;
            }
            for out in sub.outs.iter_mut().filter(|o| o.track == Some(track_id)) {
                if out.pause.is_paused() {
                    out.stats.skipped += 1;
                    continue;
                }
                let slot = usize::from(pt & 0x7f);
                if out.pt_map[slot] == 0 {
                    // First packet with this payload type: find the subscriber's equivalent.
                    // RED goes out as the subscriber's RED payload type when it negotiated
                    // RED, else as its primary codec with the redundancy stripped.
                    out.pt_map[slot] = track
                        .codec
                        .as_ref()
                        .and_then(|(_, _, _, params)| sub.rtc.codec_config().match_params(*params))
                        .map(|p| match (red, p.red()) {
                            (true, Some(r)) => *r,
                            (true, None) => *p.pt() | PT_STRIP_RED,
                            (false, _) => *p.pt(),
                        })
                        .unwrap_or(PT_NONE);
                }
                let out_pt = out.pt_map[slot];
                if out_pt == PT_NONE {
                    self.dropped.unmapped_payload_type += 1;
                    continue;
                }
                let payload = if out_pt & PT_STRIP_RED != 0 {
                    let stripped = primary.get_or_insert_with(|| primaries.strip(&pkt.payload));
                    match stripped {
                        Some(p) => Arc::clone(p),
                        None => {
                            self.dropped.unmapped_payload_type += 1;
                            continue;
                        }
                    }
                } else {
                    Arc::clone(&pkt.payload)
                };
                let out_pt = out_pt & !PT_STRIP_RED;
                let before = out.forwarder.current_layer();
                match out.forwarder.forward(&input) {
                    Ok(o) => {
                        if o.switched {
                            if before.is_some() && before != Some(layer) {
                                out.stats.layer_switches += 1;
                            }
                            out.stats.layer = rid.map(|r| r.to_string());
                        }
                        let mut write = RtpWrite::new(
                            out_pt.into(),
                            SeqNo::from(o.seq),
                            o.ts,
                            arrival,
                            payload,
                        )
                        .marker(pkt.header.marker)
                        .ext_vals(forwarded_extensions(ext))
                        .nackable(kind == MediaKind::Video);
                        if let (Some((pic, tl0)), Some(d)) = (o.vp8, descriptor) {
                            let mut b = d.patch().picture_id(pic);
                            if let Some(t) = tl0 {
                                b = b.tl0_pic_idx(t);
                            }
                            if let Ok(patch) = b.build() {
                                write = write.vp8_patch(patch);
                            }
                        }
                        if let Some(tx) = sub.rtc.direct_api().stream_tx_by_mid(out.mid, None) {
                            // Forwarded media is not paced: the publisher already paced it, and
                            // a pacer below the estimate only makes video late (congestion is
                            // answered by layer choice and pausing instead). Set once, when the
                            // slot's stream is first written.
                            if out.stats.packets == 0 {
                                tx.set_unpaced(true);
                            }
                            tx.write_rtp(write);
                            if out.stats.packets == 0
                                && sub.stages & (1 << Stage::FirstMedia as u8) == 0
                            {
                                sub.stages |= 1 << Stage::FirstMedia as u8;
                                if self.outputs.len() < DATA_IN_LIMIT {
                                    self.outputs.push_back(Output::Progress(Progress {
                                        session: sub.id,
                                        stage: Stage::FirstMedia,
                                    }));
                                }
                            }
                            out.stats.packets += 1;
                            out.stats.bytes += pkt.payload.len() as u64;
                            sub.dirty = true;
                            forwarded = true;
                        }
                    }
                    Err(_) => {
                        out.stats.skipped += 1;
                    }
                }
                if out.forwarder.wants_keyframe() {
                    keyframe_wanted = true;
                }
            }
        }
        self.tracks[ti].primaries = primaries;
        // The time the datagram waited before the room forwarded it (arrival given by the shell).
        if let (true, Some(at)) = (forwarded, self.arrival) {
            let d = now.saturating_duration_since(at);
            self.tracks[ti].delay.record(d);
            self.forwarding_delay.record(d);
        }
        if keyframe_wanted && kind == MediaKind::Video {
            // Ask for a keyframe on every layer someone waits for.
            let targets: Vec<u8> = self
                .sessions
                .iter()
                .flat_map(|s| s.outs.iter())
                .filter(|o| o.track == Some(track_id) && o.forwarder.wants_keyframe())
                .map(|o| o.forwarder.target_layer())
                .collect();
            for t in targets {
                self.request_keyframe(now, track_id, t, KeyframeRequestKind::Pli);
            }
        }
    }

    /// The codec of payload type `pt` on session `i`: its own, or the one it protects with RED.
    pub(super) fn sessions_codec_params(
        &self,
        i: usize,
        pt: u8,
    ) -> Option<str0m::format::PayloadParams> {
        self.sessions[i]
            .rtc
            .codec_config()
            .find(|p| *p.pt() == pt || p.red().is_some_and(|r| *r == pt))
            .cloned()
    }

    /// Finds (track, layer) for an SSRC of publisher session `i`, learning new SSRCs from the
    /// engine's stream table.
    pub(super) fn locate(&mut self, i: usize, ssrc: Ssrc) -> Option<(u64, u8)> {
        let s = &mut self.sessions[i];
        if let Some(&(_, t, l)) = s.ssrc_map.iter().find(|(x, _, _)| *x == ssrc) {
            return Some((t, l));
        }
        let (mid, rid) = {
            let mut api = s.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let publisher = s.id;
        let track = self
            .tracks
            .iter_mut()
            .find(|t| t.publisher == publisher && t.mid == mid)?;
        let layer = match track.layers.iter().position(|l| l.rid == rid) {
            Some(l) => l,
            None => {
                if track.layers.len() >= MAX_LAYERS {
                    return None;
                }
                track.layers.push(Layer {
                    rid,
                    meter: BitrateMeter::default(),
                    jitter: Jitter::default(),
                    temporal: TemporalMeters::default(),
                    stats: IngressStats {
                        rid: rid.map(|r| r.to_string()),
                        ..IngressStats::default()
                    },
                    last_keyframe_request: None,
                });
                track.layers.len() - 1
            }
        } as u8;
        let id = track.id;
        if s.ssrc_map.len() < 16 {
            s.ssrc_map.push((ssrc, id, layer));
        }
        Some((id, layer))
    }

    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        track: u64,
        layer: u8,
        kind: KeyframeRequestKind,
    ) {
        let interval = self.cfg.keyframe_interval;
        let Some(t) = self.tracks.iter_mut().find(|t| t.id == track) else {
            return;
        };
        let Some(l) = t.layers.get_mut(usize::from(layer)) else {
            return;
        };
        if l.last_keyframe_request
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        l.last_keyframe_request = Some(now);
        let (publisher, mid, rid) = (t.publisher, t.mid, l.rid);
        if let Some(p) = self.sessions.iter_mut().find(|s| s.id == publisher) {
            if let Some(rx) = p.rtc.direct_api().stream_rx_by_mid(mid, rid) {
                rx.request_keyframe(kind);
                p.dirty = true;
            }
        }
    }
}

/// The header extensions a forwarded packet keeps from the publisher's (audio level, voice
/// activity, video orientation): plain values copied, nothing cloned or allocated.
/// A subscriber's payload-type slot that maps to nothing it negotiated (see `Out::pt_map`).
const PT_NONE: u8 = 255;

/// Set on a mapped payload type (which is below 128): the packet is RED and the subscriber did
/// not negotiate RED, so it gets the primary block under that payload type.
const PT_STRIP_RED: u8 = 0x80;

fn forwarded_extensions(from: &ExtensionValues) -> ExtensionValues {
    ExtensionValues {
        audio_level: from.audio_level,
        voice_activity: from.voice_activity,
        video_orientation: from.video_orientation,
        ..ExtensionValues::default()
    }
}
