//! Layer allocation: the simulcast layer each subscriber receives and which single-layer videos its
//! link can carry (pausing).

use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaKind};

use super::{Room, TrackClass};
use crate::pause::{Change, Link};
use crate::simulcast::{self};

impl Room {
    /// Re-picks the simulcast layer of each video track subscriber `i` receives.
    pub(super) fn select_layers(&mut self, i: usize, now: Instant) {
        let Some(bwe) = self.sessions[i].bwe else {
            return;
        };
        // Audio first: its measured rate (or a floor) comes off the budget.
        let mut audio = 0u64;
        for out in &self.sessions[i].outs {
            if out.kind == MediaKind::Audio {
                if let Some(t) = out.track.and_then(|id| self.track(id)) {
                    let rate = t.layers.first().and_then(|l| l.meter.bps(now));
                    audio += rate.unwrap_or(64_000);
                }
            }
        }
        let mut video_outs = 0u64;
        for out in &self.sessions[i].outs {
            if out.kind == MediaKind::Video && out.track.is_some() {
                video_outs += 1;
            }
        }
        let budget_total = bwe.saturating_sub(audio);
        let per_video = budget_total.checked_div(video_outs).unwrap_or(budget_total);
        let mut desired = audio;
        let mut minimum = audio;
        let mut changes = Vec::new();
        for (k, out) in self.sessions[i].outs.iter().enumerate() {
            if out.kind != MediaKind::Video {
                continue;
            }
            let Some(t) = out.track.and_then(|id| self.track(id)) else {
                continue;
            };
            if t.layers.len() <= 1 {
                if let Some(rate) = t.layers.first().and_then(|l| l.meter.bps(now)) {
                    desired += rate;
                    minimum += rate;
                }
                continue;
            }
            // Quality order: by measured bitrate.
            let mut order: Vec<(u64, u8)> = t
                .layers
                .iter()
                .enumerate()
                .filter_map(|(idx, l)| l.meter.bps(now).map(|b| (b, idx as u8)))
                .collect();
            order.sort_unstable();
            let rates: Vec<Option<u64>> = order.iter().map(|(b, _)| Some(*b)).collect();
            let current_rank = order
                .iter()
                .position(|(_, idx)| Some(*idx) == out.forwarder.current_layer())
                .map(|r| r as u8);
            if let Some(top) = order.last() {
                desired += top.0;
            }
            if let Some(low) = order.first() {
                minimum += low.0;
            }
            if let Some(rank) = simulcast::choose_layer(&rates, per_video, current_rank) {
                let layer = order[usize::from(rank)].1;
                if layer != out.forwarder.target_layer() {
                    changes.push((k, layer));
                }
            }
        }
        // Single-layer video the link cannot carry is paused rather than left to queue in the
        // pacer for seconds; device cameras are served first.
        let mut resumed = Vec::new();
        let mut video: Vec<(usize, bool, bool, Option<u64>)> = Vec::new();
        for (k, out) in self.sessions[i].outs.iter().enumerate() {
            if out.kind != MediaKind::Video {
                continue;
            }
            let Some(t) = out.track.and_then(|id| self.track(id)) else {
                continue;
            };
            let layer = changes
                .iter()
                .find(|(c, _)| *c == k)
                .map_or(out.forwarder.target_layer(), |(_, l)| *l);
            let rate = t
                .layers
                .get(usize::from(layer))
                .and_then(|l| l.meter.bps(now));
            video.push((
                k,
                t.class == TrackClass::DeviceCamera,
                t.layers.len() > 1,
                rate,
            ));
        }
        video.sort_by_key(|(_, device, _, _)| !device);
        // str0m paces at 1.1 × the estimate.
        let mut left = (bwe + bwe / 10).saturating_sub(audio);
        let s = &mut self.sessions[i];
        // The loss the subscriber reports on what still flows: a shortfall counts only with it.
        let loss =
            (s.outs.iter().filter(|o| !o.pause.is_paused())).fold(0f32, |m, o| m.max(o.stats.loss));
        let link = Link {
            estimate: bwe,
            loss,
        };
        for (k, _, simulcast, rate) in video {
            let Some(rate) = rate else { continue };
            let out = &mut s.outs[k];
            if simulcast {
                left = left.saturating_sub(rate);
                continue;
            }
            let (change, forwarded) = out.pause.update(now, rate, left, link);
            if forwarded {
                left = left.saturating_sub(rate);
            }
            match change {
                Change::Paused => out.stats.pauses += 1,
                Change::Resumed => {
                    out.forwarder.reset_source();
                    if let Some(track) = out.track {
                        resumed.push(track);
                    }
                }
                Change::None => {}
            }
            out.stats.paused = out.pause.is_paused();
        }
        for (k, layer) in &changes {
            s.outs[*k].forwarder.set_target(*layer);
        }
        s.rtc.bwe().set_bitrate(
            Bitrate::bps(minimum.max(1)),
            Bitrate::bps(desired.max(minimum) + 200_000),
        );
        let requests: Vec<(u64, u8)> = changes
            .iter()
            .filter_map(|(k, layer)| s.outs[*k].track.map(|t| (t, *layer)))
            .collect();
        for (track, layer) in requests {
            self.request_keyframe(now, track, layer, KeyframeRequestKind::Pli);
        }
        for track in resumed {
            self.request_keyframe(now, track, 0, KeyframeRequestKind::Pli);
        }
    }
}
