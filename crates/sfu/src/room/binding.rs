//! Which subscriber slot carries which published track: binding tracks to free slots and ending
//! tracks.

use cabine_proto::{Identity, Role};

use super::{OfferedTrack, Room, SessionId, SessionKind, TrackInfo};

impl Room {
    /// Ends tracks: unbinds them from subscribers' slots (stopping the m-lines of
    /// server-negotiated subscribers in their next offer) and rebinds free WHEP slots.
    pub(super) fn remove_tracks(&mut self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        let infos: Vec<(u64, (Identity, Role), TrackInfo)> = self
            .tracks
            .iter()
            .filter(|t| gone.contains(&t.id))
            .map(|t| {
                (
                    t.id,
                    (t.publisher_identity.clone(), t.publisher_role),
                    t.info(),
                )
            })
            .collect();
        self.tracks.retain(|t| !gone.contains(&t.id));
        for s in &mut self.sessions {
            if let Some(n) = &mut s.negotiation {
                // Tracks still waiting in an unanswered offer are stopped after it.
                if let Some(p) = &mut n.pending {
                    for (mid, _, track) in &p.adds {
                        if let Some((_, (from, role), info)) = infos.iter().find(|x| x.0 == *track)
                        {
                            n.to_stop.push((
                                *mid,
                                OfferedTrack {
                                    mid: mid.to_string(),
                                    from: from.clone(),
                                    role: *role,
                                    track: info.clone(),
                                },
                            ));
                        }
                    }
                    p.adds.retain(|(_, _, t)| !gone.contains(t));
                }
                let mut k = 0;
                while k < s.outs.len() {
                    let out = &s.outs[k];
                    if let Some((_, (from, role), info)) =
                        out.track.and_then(|t| infos.iter().find(|x| x.0 == t))
                    {
                        n.to_stop.push((
                            out.mid,
                            OfferedTrack {
                                mid: out.mid.to_string(),
                                from: from.clone(),
                                role: *role,
                                track: info.clone(),
                            },
                        ));
                        s.outs.remove(k);
                    } else {
                        k += 1;
                    }
                }
                continue;
            }
            for out in &mut s.outs {
                if out.track.is_some_and(|t| gone.contains(&t)) {
                    out.track = None;
                    out.forwarder.reset_source();
                }
            }
        }
        self.bind_free_slots();
        self.renegotiate_all();
    }

    /// Binds tracks to subscribers' free slots of the same kind, in publish order.
    pub(super) fn bind_free_slots(&mut self) {
        for s in 0..self.sessions.len() {
            if self.sessions[s].kind != SessionKind::Subscribe {
                continue;
            }
            if self.sessions[s].negotiation.is_some() {
                continue;
            }
            for t in 0..self.tracks.len() {
                let track = &self.tracks[t];
                let sub = &self.sessions[s];
                if track.publisher_identity == sub.identity
                    || sub
                        .from
                        .as_ref()
                        .is_some_and(|f| *f != track.publisher_identity)
                    || sub.outs.iter().any(|o| o.track == Some(track.id))
                {
                    continue;
                }
                let (id, kind) = (track.id, track.kind);
                let sub = &mut self.sessions[s];
                if let Some(out) = sub
                    .outs
                    .iter_mut()
                    .find(|o| o.track.is_none() && o.kind == kind)
                {
                    out.track = Some(id);
                    out.forwarder.reset_source();
                    out.forwarder.set_target(0);
                    out.pt_map = [0; 128];
                }
            }
        }
        self.park_idle_streams();
    }

    /// Takes the send streams of subscriber slots that have no track out of str0m, and gives
    /// back those of slots that have one again (same SSRCs as the SDP announced).
    ///
    /// With bandwidth estimation on, str0m pads up to at least 50 kbit/s on any stream with
    /// RTX whenever its queues are empty: a subscriber whose video slot has nothing to forward
    /// (an audio-only publisher) would receive ~70 padding-only packets per second on it.
    /// Without a stream there is no padding source; the estimate then rests on the media
    /// actually forwarded.
    pub(super) fn park_idle_streams(&mut self) {
        for s in &mut self.sessions {
            if s.kind != SessionKind::Subscribe {
                continue;
            }
            for out in &mut s.outs {
                match (out.track, out.idle) {
                    (None, None) => {
                        let mut api = s.rtc.direct_api();
                        let Some(tx) = api.stream_tx_by_mid(out.mid, None) else {
                            continue;
                        };
                        let ssrcs = (tx.ssrc(), tx.rtx());
                        api.remove_stream_tx(ssrcs.0);
                        out.idle = Some(ssrcs);
                    }
                    (Some(_), Some((ssrc, rtx))) => {
                        s.rtc
                            .direct_api()
                            .declare_stream_tx(ssrc, rtx, out.mid, None);
                        out.idle = None;
                        s.dirty = true;
                    }
                    _ => {}
                }
            }
        }
    }

    pub(super) fn forget_tracks_of(&mut self, session: SessionId) {
        let gone: Vec<u64> = self
            .tracks
            .iter()
            .filter(|t| t.publisher == session)
            .map(|t| t.id)
            .collect();
        self.remove_tracks(&gone);
    }
}
