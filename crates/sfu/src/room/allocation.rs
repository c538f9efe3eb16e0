//! Layer allocation: the simulcast layer and the VP8 temporal layers each subscriber receives, and
//! which single-layer videos its link can carry (pausing). Temporal layers go first (a lower
//! frame rate, no keyframe needed) when [`RoomConfig::temporal_first`](super::RoomConfig) is on.

use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaKind};

use super::{Room, TrackClass};
use crate::pause::{Change, Link};
use crate::simulcast::{self};
use crate::temporal::{self, LayerOption, MAX_TEMPORAL_LAYERS};

impl Room {
    /// Re-picks the simulcast and temporal layers of each video track subscriber `i` receives.
    /// With `pausing`, also pauses and resumes its single-layer videos: only on a new estimate,
    /// whose rises and dips the [`Pauser`](crate::pause::Pauser) reads, not on the periodic
    /// re-pick with an unchanged one.
    pub(super) fn select_layers(&mut self, i: usize, now: Instant, pausing: bool) {
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
        let temporal_first = self.cfg.temporal_first;
        let mut desired = audio;
        let mut minimum = audio;
        // (out, spatial layer, temporal layer) to aim at.
        let mut changes: Vec<(usize, u8, u8)> = Vec::new();
        // Per video out: its serving options (quality order) and the current one's rank.
        let mut choices: Vec<(usize, Vec<LayerOption>, Option<u8>)> = Vec::new();
        for (k, out) in self.sessions[i].outs.iter().enumerate() {
            if out.kind != MediaKind::Video {
                continue;
            }
            let Some(t) = out.track.and_then(|id| self.track(id)) else {
                continue;
            };
            // Quality order: by measured bitrate.
            let mut order: Vec<(u64, u8)> = t
                .layers
                .iter()
                .enumerate()
                .filter_map(|(idx, l)| l.meter.bps(now).map(|b| (b, idx as u8)))
                .collect();
            order.sort_unstable();
            let cumulative: Vec<([u64; MAX_TEMPORAL_LAYERS], usize)> = order
                .iter()
                .map(|(_, idx)| t.layers[usize::from(*idx)].temporal.cumulative(now))
                .collect();
            let layers: Vec<(u8, u64, &[u64])> = order
                .iter()
                .zip(&cumulative)
                .map(|((rate, idx), (cum, n))| (*idx, *rate, &cum[..*n]))
                .collect();
            let mut opts = Vec::new();
            temporal::options(&layers, temporal_first, &mut opts);
            let spatial = if t.layers.len() > 1 {
                out.forwarder.current_layer()
            } else {
                Some(0)
            };
            let current = opts
                .iter()
                .position(|o| {
                    Some(o.spatial) == spatial && o.max_tid == out.forwarder.temporal_target()
                })
                .map(|r| r as u8);
            if let Some(top) = opts.last() {
                desired += top.rate;
            }
            if let Some(low) = opts.first() {
                minimum += low.rate;
            }
            choices.push((k, opts, current));
        }
        // Simulcast video: the best option within an equal share of the budget.
        for (k, opts, current) in &choices {
            let out = &self.sessions[i].outs[*k];
            let simulcast = out
                .track
                .and_then(|id| self.track(id))
                .is_some_and(|t| t.layers.len() > 1);
            if !simulcast {
                continue;
            }
            let rates: Vec<Option<u64>> = opts.iter().map(|o| Some(o.rate)).collect();
            if let Some(rank) = simulcast::choose_layer(&rates, per_video, *current) {
                let o = opts[usize::from(rank)];
                if o.spatial != out.forwarder.target_layer()
                    || o.max_tid != out.forwarder.temporal_target()
                {
                    changes.push((*k, o.spatial, o.max_tid));
                }
            }
        }
        // Single-layer video the link cannot carry is paused rather than left to queue in the
        // pacer for seconds (after its temporal layers, if any, were dropped); device cameras
        // are served first.
        let mut resumed = Vec::new();
        let mut video: Vec<(usize, bool, bool)> = Vec::new();
        for (k, out) in self.sessions[i].outs.iter().enumerate() {
            if out.kind != MediaKind::Video {
                continue;
            }
            let Some(t) = out.track.and_then(|id| self.track(id)) else {
                continue;
            };
            video.push((k, t.class == TrackClass::DeviceCamera, t.layers.len() > 1));
        }
        video.sort_by_key(|(_, device, _)| !device);
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
        for (k, _, simulcast) in video {
            let Some((_, opts, current)) = choices.iter().find(|c| c.0 == k) else {
                continue;
            };
            let out = &mut s.outs[k];
            if simulcast {
                let (layer, tid) = changes.iter().find(|c| c.0 == k).map_or(
                    (
                        out.forwarder.target_layer(),
                        out.forwarder.temporal_target(),
                    ),
                    |c| (c.1, c.2),
                );
                if let Some(o) = opts.iter().find(|o| o.spatial == layer && o.max_tid == tid) {
                    left = left.saturating_sub(o.rate);
                }
                continue;
            }
            if opts.is_empty() {
                continue;
            }
            // The frame rate that fits what is left; the lowest when none does (the pause
            // decides on that one).
            let rates: Vec<Option<u64>> = opts.iter().map(|o| Some(o.rate)).collect();
            let rank = simulcast::choose_layer(&rates, left, *current).unwrap_or(0);
            let chosen = opts[usize::from(rank)];
            if chosen.max_tid != out.forwarder.temporal_target() {
                out.forwarder.set_temporal_target(chosen.max_tid);
            }
            let (change, forwarded) = if pausing {
                out.pause.update(now, chosen.rate, left, link)
            } else {
                (Change::None, !out.pause.is_paused())
            };
            if forwarded {
                left = left.saturating_sub(chosen.rate);
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
        let mut requests: Vec<(u64, u8)> = Vec::new();
        for (k, layer, tid) in &changes {
            // Only a new spatial layer needs a keyframe; temporal layers change on the fly.
            if *layer != s.outs[*k].forwarder.target_layer() {
                if let Some(track) = s.outs[*k].track {
                    requests.push((track, *layer));
                }
            }
            let f = &mut s.outs[*k].forwarder;
            f.set_target(*layer);
            f.set_temporal_target(*tid);
        }
        s.rtc.bwe().set_bitrate(
            Bitrate::bps(minimum.max(1)),
            Bitrate::bps(desired.max(minimum) + 200_000),
        );
        for (track, layer) in requests {
            self.request_keyframe(now, track, layer, KeyframeRequestKind::Pli);
        }
        for track in resumed {
            self.request_keyframe(now, track, 0, KeyframeRequestKind::Pli);
        }
    }
}
