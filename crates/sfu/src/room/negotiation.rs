//! Server-made offers to subscribers (WebSocket signalling), their answers, and publishers'
//! renegotiations.

use std::time::{Duration, Instant};

use cabine_proto::{Identity, Role};
use serde::Serialize;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::RtcConfig;

use super::{
    bound_rtx_history, clock_rate, first_rtx_history, usable_media, JoinError, Joined,
    NegotiationError, Out, Output, Room, Session, SessionId, SessionKind, Telemetry, Track,
    TrackClass, TrackInfo,
};
use crate::forwarder::Forwarder;
use crate::pause::Pauser;
use crate::sdp::Label;
use crate::stats::{DelayHistogram, EgressStats};

/// What a subscriber starting a server-negotiated session (WebSocket signalling) asks for.
#[derive(Debug)]
pub struct OfferRequest {
    /// The id the shell chose for the session (unique on the node).
    pub session: SessionId,
    /// Who joins.
    pub identity: Identity,
    /// With which role.
    pub role: Role,
    /// Receive only the tracks of this participant.
    pub from: Option<Identity>,
    /// Open the `telemetry` data channels (reliable and lossy) in the first offer.
    pub telemetry: bool,
    /// The ICE credentials the server uses for this session (the shell demultiplexes by ufrag).
    pub ice_ufrag: String,
    /// ICE password matching `ice_ufrag`.
    pub ice_pwd: String,
}

/// An SDP offer the server made to a subscriber: the first one, or a renegotiation because
/// tracks appeared or went away (or an ICE restart). At most one is outstanding per session;
/// changes made meanwhile go into the next one, made when this one is answered.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The subscriber session.
    pub session: SessionId,
    /// Increases by one per offer of the session; the answer must name it.
    pub id: u64,
    /// The SDP offer.
    pub sdp: String,
    /// Tracks this offer adds, each on its own m-line.
    pub added: Vec<OfferedTrack>,
    /// Tracks this offer stops (their publisher unpublished or left).
    pub removed: Vec<OfferedTrack>,
    /// The server's ICE ufrag for the session once this offer is answered (changes on an ICE
    /// restart; the shell routes STUN by it).
    pub ice_ufrag: String,
}

/// A track in an [`Offer`], with the m-line that carries it.
#[derive(Debug, Clone, Serialize)]
pub struct OfferedTrack {
    /// The `a=mid` of its m-line in the offer.
    pub mid: String,
    /// Its publisher.
    pub from: Identity,
    /// Its publisher's role (pages key their tiles by identity and role).
    pub role: Role,
    /// The track.
    pub track: TrackInfo,
}

impl Room {
    /// Adds a subscriber session that the server negotiates with (WebSocket signalling): the
    /// server makes the offer, with one send-only m-line per track the subscriber may receive
    /// (labelled with the publisher's msid) and the `telemetry` data channels if asked; later
    /// publishes and unpublishes produce new offers ([`Output::Offer`] from
    /// [`Room::poll_output`]). The session connects once the client's answer is given to
    /// [`Room::accept_answer`].
    pub fn join_offering(&mut self, now: Instant, req: OfferRequest) -> Result<Offer, JoinError> {
        if self.sessions.len() >= self.cfg.max_sessions {
            return Err(JoinError::RoomFull(self.cfg.max_sessions));
        }
        let mut config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .enable_h265(false)
            // Opus with RFC 2198 RED where the client offers or accepts it (browsers do): a
            // subscriber with RED recovers a lost audio packet from the next one.
            .enable_opus(true, true)
            .set_local_ice_credentials(str0m::IceCreds {
                ufrag: req.ice_ufrag.clone(),
                pass: req.ice_pwd.clone(),
            })
            .set_stats_interval(Some(Duration::from_secs(1)))
            .enable_bwe(Some(self.cfg.initial_bitrate));
        if let Some(cert) = &self.cfg.dtls_certificate {
            config = config.set_dtls_cert(cert.to_str0m());
        }
        let mut rtc = config.build(now);
        self.add_local_candidates(&mut rtc)?;
        self.sessions.push(Session {
            id: req.session,
            identity: req.identity,
            role: req.role,
            kind: SessionKind::Subscribe,
            rtc,
            from: req.from,
            dirty: true,
            timeout: now,
            connected: false,
            connect_by: Some(now + self.cfg.connect_timeout),
            disconnected_since: None,
            ssrc_map: Vec::new(),
            outs: Vec::new(),
            bwe: None,
            telemetry: None,
            negotiation: Some(Negotiation {
                next_id: 1,
                pending: None,
                to_stop: Vec::new(),
                restart_ice: false,
            }),
            stages: 0,
            path: super::transport::Path::default(),
        });
        let i = self.sessions.len() - 1;
        match self.offer_changes(i, Some(req.telemetry)) {
            Some(offer) => Ok(offer),
            None => {
                self.sessions.pop();
                Err(JoinError::NothingToOffer)
            }
        }
    }

    /// Applies a subscriber's answer to the server's offer number `offer`. Tracks the offer
    /// added start flowing (from their next keyframe); if tracks changed while the offer was
    /// out, the next offer is ready as an [`Output::Offer`].
    pub fn accept_answer(
        &mut self,
        _now: Instant,
        session: SessionId,
        offer: u64,
        answer: &str,
    ) -> Result<(), NegotiationError> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.id == session)
            .ok_or(NegotiationError::UnknownSession(session))?;
        let s = &mut self.sessions[i];
        let n = s
            .negotiation
            .as_mut()
            .ok_or(NegotiationError::NotNegotiated(session))?;
        let outstanding = n.pending.as_ref().map(|p| p.offer.id);
        if outstanding != Some(offer) {
            return Err(NegotiationError::NoSuchOffer {
                got: offer,
                outstanding,
            });
        }
        let parsed = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| NegotiationError::BadSdp(e.to_string()))?;
        s.path.learn_sdp(answer);
        let Some(pending) = n.pending.take() else {
            return Err(NegotiationError::NoSuchOffer {
                got: offer,
                outstanding,
            });
        };
        if let Err(e) = s.rtc.sdp_api().accept_answer(pending.token, parsed) {
            // The offer is void; its changes are made again in a fresh one.
            n.to_stop.extend(
                pending
                    .offer
                    .removed
                    .iter()
                    .map(|t| (Mid::from(t.mid.as_str()), t.clone())),
            );
            self.renegotiate(i);
            return Err(NegotiationError::AnswerMismatch {
                offer,
                reason: e.to_string(),
            });
        }
        s.dirty = true;
        for (mid, kind, track) in pending.adds {
            let history = bound_rtx_history(
                &mut s.rtc,
                mid,
                kind,
                first_rtx_history(self.cfg.rtx_history),
            );
            let mut forwarder = Forwarder::new(clock_rate(kind), 0);
            forwarder.set_target(0);
            s.outs.push(Out {
                mid,
                kind,
                track: Some(track),
                forwarder,
                pt_map: [0; 128],
                stats: EgressStats {
                    rtx_history_ms: history.as_millis() as u64,
                    ..EgressStats::default()
                },
                pause: Pauser::default(),
                idle: None,
            });
        }
        // Whatever changed while the offer was out (or tracks that appeared) goes next.
        self.renegotiate(i);
        Ok(())
    }

    /// Asks for an ICE restart on a server-negotiated subscriber: the next offer carries new
    /// server credentials (see [`Offer::ice_ufrag`]).
    pub fn restart_ice_offer(&mut self, session: SessionId) -> Result<(), NegotiationError> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.id == session)
            .ok_or(NegotiationError::UnknownSession(session))?;
        let n = self.sessions[i]
            .negotiation
            .as_mut()
            .ok_or(NegotiationError::NotNegotiated(session))?;
        n.restart_ice = true;
        self.renegotiate(i);
        Ok(())
    }

    /// The offer a server-negotiated subscriber has not answered yet (to send it again after
    /// the signalling connection was re-established).
    pub fn outstanding_offer(&self, session: SessionId) -> Option<Offer> {
        self.sessions
            .iter()
            .find(|s| s.id == session)?
            .negotiation
            .as_ref()?
            .pending
            .as_ref()
            .map(|p| p.offer.clone())
    }

    /// A publisher's new offer on its existing session (it added, removed or restarted
    /// something): m-lines new in the offer become tracks, m-lines no longer sending end
    /// theirs, and subscribers are renegotiated. Returns the answer and the publisher's tracks.
    pub fn republish(
        &mut self,
        now: Instant,
        session: SessionId,
        offer: &str,
    ) -> Result<Joined, JoinError> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.id == session && s.kind == SessionKind::Publish)
            .ok_or(JoinError::UnknownSession(session))?;
        let parsed =
            SdpOffer::from_sdp_string(offer).map_err(|e| JoinError::BadSdp(e.to_string()))?;
        let s = &mut self.sessions[i];
        s.path.learn_sdp(offer);
        let answer = s
            .rtc
            .sdp_api()
            .accept_offer(parsed)
            .map_err(|e| JoinError::Refused(e.to_string()))?
            .to_sdp_string();
        s.dirty = true;
        let usable = usable_media(&s.rtc, &answer, Direction::RecvOnly);
        let identity = s.identity.clone();
        let role = s.role;
        // Tracks whose m-line no longer sends end.
        let gone: Vec<u64> = self
            .tracks
            .iter()
            .filter(|t| t.publisher == session && !usable.iter().any(|u| u.0 == t.mid))
            .map(|t| t.id)
            .collect();
        self.remove_tracks(&gone);
        for (mid, kind, label, _) in usable {
            if self
                .tracks
                .iter()
                .any(|t| t.publisher == session && t.mid == mid)
            {
                continue;
            }
            let id = self.next_track;
            self.next_track += 1;
            self.tracks.push(Track {
                id,
                publisher: session,
                publisher_identity: identity.clone(),
                publisher_role: role,
                mid,
                kind,
                class: TrackClass::from_label(kind, &label.track),
                label,
                codec: None,
                layers: Vec::new(),
                delay: DelayHistogram::default(),
                primaries: Default::default(),
            });
        }
        self.sessions[i].ssrc_map.clear();
        self.bind_free_slots();
        self.renegotiate_all();
        let _ = now;
        let tracks = self
            .tracks
            .iter()
            .filter(|t| t.publisher == session)
            .map(Track::info)
            .collect();
        Ok(Joined { answer, tracks })
    }

    /// Renegotiates every server-negotiated subscriber that has something new.
    pub(super) fn renegotiate_all(&mut self) {
        for i in 0..self.sessions.len() {
            self.renegotiate(i);
        }
    }

    /// Makes a new offer for session `i` if it is server-negotiated and tracks changed (or
    /// marks it for later when an offer is already out).
    pub(super) fn renegotiate(&mut self, i: usize) {
        let Some(n) = self.sessions[i].negotiation.as_ref() else {
            return;
        };
        // One offer out at a time: what changes meanwhile goes into the next one, made when
        // the outstanding one is answered.
        if n.pending.is_some() {
            return;
        }
        if let Some(offer) = self.offer_changes(i, None) {
            self.outputs.push_back(Output::Offer(offer));
        }
    }

    /// Builds an offer of session `i`'s pending changes: new tracks it may receive, tracks to
    /// stop, an ICE restart. `first`: the first offer (made even without tracks), with the
    /// `telemetry` data channels if `Some(true)`.
    pub(super) fn offer_changes(&mut self, i: usize, first: Option<bool>) -> Option<Offer> {
        let adds: Vec<u64> = {
            let s = &self.sessions[i];
            let pending_adds: &[(Mid, MediaKind, u64)] = s
                .negotiation
                .as_ref()
                .and_then(|n| n.pending.as_ref())
                .map_or(&[], |p| &p.adds);
            self.tracks
                .iter()
                .filter(|t| {
                    t.publisher_identity != s.identity
                        && s.from.as_ref().is_none_or(|f| *f == t.publisher_identity)
                        && !s.outs.iter().any(|o| o.track == Some(t.id))
                        && !pending_adds.iter().any(|(_, _, id)| *id == t.id)
                })
                .map(|t| t.id)
                .collect()
        };
        // Track id, kind, label, publisher (identity and role), what it is.
        type Adding = (u64, MediaKind, Label, (Identity, Role), TrackInfo);
        let tracks: Vec<Adding> = adds
            .iter()
            .filter_map(|id| self.track(*id))
            .map(|t| {
                (
                    t.id,
                    t.kind,
                    t.label.clone(),
                    (t.publisher_identity.clone(), t.publisher_role),
                    t.info(),
                )
            })
            .collect();
        let s = &mut self.sessions[i];
        let n = s.negotiation.as_mut()?;
        let stops = std::mem::take(&mut n.to_stop);
        let restart = std::mem::take(&mut n.restart_ice);
        if first.is_none() && tracks.is_empty() && stops.is_empty() && !restart {
            return None;
        }
        let id = n.next_id;
        let mut api = s.rtc.sdp_api();
        if first == Some(true) {
            let (reliable, lossy) = Telemetry::declare(&mut api);
            s.telemetry = Some(Telemetry::new(reliable, lossy));
        }
        let mut added = Vec::new();
        let mut pending_adds = Vec::new();
        for (track, kind, label, (from, role), info) in tracks {
            let mid = api.add_media(
                kind,
                Direction::SendOnly,
                Some(label.stream.clone()),
                Some(label.track.clone()),
                None,
            );
            added.push(OfferedTrack {
                mid: mid.to_string(),
                from,
                role,
                track: info,
            });
            pending_adds.push((mid, kind, track));
        }
        for (mid, _) in &stops {
            api.stop_media(*mid);
        }
        let new_creds = restart.then(|| api.ice_restart(true));
        let (sdp, token) = api.apply()?;
        let n = s.negotiation.as_mut()?;
        n.next_id += 1;
        let ice_ufrag = match new_creds {
            Some(c) => c.ufrag,
            None => s.rtc.direct_api().local_ice_credentials().ufrag,
        };
        let offer = Offer {
            session: s.id,
            id,
            sdp: sdp.to_sdp_string(),
            added,
            removed: stops.into_iter().map(|(_, t)| t).collect(),
            ice_ufrag,
        };
        let n = s.negotiation.as_mut()?;
        n.pending = Some(Pending {
            offer: offer.clone(),
            token,
            adds: pending_adds,
        });
        Some(offer)
    }
}

pub(super) struct Negotiation {
    pub(super) next_id: u64,
    pub(super) pending: Option<Pending>,
    /// m-lines of tracks that went away, to stop in the next offer.
    pub(super) to_stop: Vec<(Mid, OfferedTrack)>,
    /// An ICE restart was asked for: the next offer carries new credentials.
    pub(super) restart_ice: bool,
}

pub(super) struct Pending {
    pub(super) offer: Offer,
    pub(super) token: SdpPendingOffer,
    pub(super) adds: Vec<(Mid, MediaKind, u64)>,
}
