//! The drive loop: datagrams and timeouts in, str0m's outputs drained, its events applied to the
//! room.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::media::KeyframeRequestKind;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output as RtcOutput};

use super::{
    clock_rate, flush_backlog, EndCause, Output, Progress, Removed, Room, SessionId, Stage,
    DATA_IN_LIMIT,
};

/// A session timeout due at most this long after `now` is handled at once, at its own time
/// (str0m's "immediate" pacer timeout is 1 µs after the last one it handled).
const IMMEDIATE: Duration = Duration::from_micros(1);

/// Whether a drive handles the sessions' timeouts that are due (or 1 µs ahead) itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Handle,
    Defer,
}

/// Most timeouts handled at once per poll of a session (a bound, never reached in practice: after
/// the pacer's follow-up str0m asks for a later time).
const MAX_IMMEDIATE: usize = 16;

impl Room {
    /// Feeds one datagram that the shell routed to `session`; `arrival` is when the shell read
    /// it from the socket (the room records the time until it is forwarded, see
    /// [`PublishedSnapshot::forwarding_delay`](super::PublishedSnapshot)). What it produces is
    /// then drained with [`Room::poll_output`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        arrival: Instant,
        session: SessionId,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.handle_receive(
            now,
            arrival,
            session,
            Protocol::Udp,
            source,
            destination,
            data,
        );
    }

    /// Feeds one datagram that arrived over `proto`: UDP, or one RFC 4571 frame of an ICE-TCP
    /// connection ([`Protocol::Tcp`], `source` the connection's peer). Otherwise as
    /// [`Room::handle_datagram`]; the session's engine answers over the same protocol
    /// ([`Output::Transmit`] carries it).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_receive(
        &mut self,
        now: Instant,
        arrival: Instant,
        session: SessionId,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        let Some(i) = self.sessions.iter().position(|s| s.id == session) else {
            return;
        };
        self.arrival = Some(arrival);
        let accepted = match Receive::new(proto, source, destination, data) {
            Ok(receive) => {
                let s = &mut self.sessions[i];
                let input = Input::Receive(now, receive);
                // Only traffic from the ICE-validated address (or STUN with this session's
                // ufrag) reaches the engine; anything else is someone else's garbage.
                if s.rtc.accepts(&input) {
                    s.dirty = true;
                    s.rtc.handle_input(input).is_ok()
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if !accepted {
            self.dropped.rejected_datagrams += 1;
        }
        self.drive_with(now, Due::Defer);
        self.arrival = None;
    }

    /// The next time [`Room::handle_timeout`] must be called (also given by
    /// [`Output::Timeout`] once the outputs are drained).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .iter()
            .map(|s| s.connect_by.map_or(s.timeout, |by| by.min(s.timeout)))
            .min()
    }

    /// Advances time: timers of every session due at `now`, and removal of dead sessions. What
    /// it produces is then drained with [`Room::poll_output`].
    pub fn handle_timeout(&mut self, now: Instant) {
        for s in &mut self.sessions {
            if s.timeout <= now {
                s.dirty = true;
                if s.rtc.handle_input(Input::Timeout(now)).is_err() {
                    s.rtc.disconnect();
                }
            }
        }
        self.drive(now);
    }

    /// Removes the sessions that are over at `now`: closed, disconnected past the grace period,
    /// or never connected within the connect timeout; each is reported as [`Output::Ended`].
    pub(super) fn reap(&mut self, now: Instant) {
        let grace = self.cfg.disconnect_grace;
        let now_dead: Vec<(SessionId, EndCause)> = self
            .sessions
            .iter()
            .filter_map(|s| {
                let cause = if !s.rtc.is_alive() {
                    EndCause::Closed
                } else if s.connect_by.is_some_and(|by| by <= now) {
                    EndCause::ConnectTimeout
                } else if s
                    .disconnected_since
                    .is_some_and(|since| s.timeout.saturating_duration_since(since) > grace)
                {
                    EndCause::Disconnected
                } else {
                    return None;
                };
                Some((s.id, cause))
            })
            .collect();
        for (id, cause) in now_dead {
            if let Some(s) = self.sessions.iter().find(|s| s.id == id) {
                self.outputs.push_back(Output::Ended(Removed {
                    session: s.id,
                    identity: s.identity.clone(),
                    role: s.role,
                    kind: s.kind,
                    reason: cause.reason(),
                    cause,
                }));
            }
            self.leave(id);
        }
    }

    /// Polls every session with something new until none has, queueing what they produce.
    pub(super) fn drive(&mut self, now: Instant) {
        self.drive_with(now, Due::Handle);
    }

    fn drive_with(&mut self, now: Instant, due: Due) {
        while let Some(i) = self.sessions.iter().position(|s| s.dirty) {
            self.sessions[i].dirty = false;
            self.poll_session(i, now, due);
        }
        if self.sessions.iter().any(|s| {
            !s.rtc.is_alive()
                || s.disconnected_since.is_some()
                || s.connect_by.is_some_and(|by| by <= now)
        }) {
            self.reap(now);
        }
    }

    fn poll_session(&mut self, i: usize, now: Instant, due: Due) {
        let mut immediate = 0;
        loop {
            let s = &mut self.sessions[i];
            if !s.rtc.is_alive() {
                return;
            }
            match s.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    // Acknowledgements may have made room for held telemetry: write it and
                    // poll again for the datagrams it makes.
                    if flush_backlog(s) {
                        continue;
                    }
                    // str0m wants a timeout before each datagram its pacer sends (due at once,
                    // or 1 µs after the last one) and for send-stream housekeeping. Left to
                    // the shell, the pacer's follow-up cost a wake-up of its own (1 µs rounds up
                    // to the shell's 1 ms timer resolution): handled here instead. Not while a
                    // datagram is handled (`Due::Defer`): the shell reads a batch, forwards each
                    // datagram, then runs the due timers once, which send them all.
                    if due == Due::Handle && t <= now + IMMEDIATE && immediate < MAX_IMMEDIATE {
                        immediate += 1;
                        if s.rtc.handle_input(Input::Timeout(t.max(now))).is_err() {
                            s.rtc.disconnect();
                            return;
                        }
                        continue;
                    }
                    s.timeout = t;
                    return;
                }
                // Moved into a queue whose capacity is kept: no allocation per packet.
                Ok(RtcOutput::Transmit(t)) => {
                    let id = self.sessions[i].id;
                    self.transmits.push_back((id, t));
                }
                Ok(RtcOutput::Event(e)) => self.on_event(i, now, e),
                Err(_) => {
                    s.rtc.disconnect();
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, i: usize, now: Instant, e: Event) {
        match e {
            Event::Connected => {
                self.sessions[i].connected = true;
                self.sessions[i].connect_by = None;
                self.reached(i, Stage::DtlsConnected);
            }
            Event::IceConnectionStateChange(state) => {
                let s = &mut self.sessions[i];
                match state {
                    IceConnectionState::Disconnected => {
                        s.disconnected_since.get_or_insert(now);
                    }
                    IceConnectionState::Connected | IceConnectionState::Completed => {
                        s.disconnected_since = None;
                        self.reached(i, Stage::IceConnected);
                    }
                    _ => {}
                }
            }
            Event::PeerStats(st) => {
                if let Some(pair) = st.selected_candidate_pair {
                    let s = &mut self.sessions[i];
                    s.path.select(pair.protocol, pair.remote.addr);
                }
                // Once a second, layers are chosen again with the last estimate: an estimate
                // that does not move (str0m reports only changes) would otherwise keep the
                // choice made before the track's layers were measured (the lowest), and the
                // desired rate that lets str0m probe for more would never be raised. Pausing
                // stays with the estimate's own updates.
                self.select_layers(i, now, false);
            }
            Event::RtpPacket(pkt) => self.on_rtp(i, now, pkt),
            Event::ChannelOpen(id, _) => self.on_channel_open(i, id),
            Event::ChannelClose(id) => self.on_channel_close(i, id),
            Event::ChannelData(d) => self.on_channel_data(i, d),
            Event::KeyframeRequest(req) => {
                let s = &mut self.sessions[i];
                let Some(out) = s.outs.iter_mut().find(|o| o.mid == req.mid) else {
                    return;
                };
                match req.kind {
                    KeyframeRequestKind::Pli => out.stats.plis += 1,
                    KeyframeRequestKind::Fir => out.stats.firs += 1,
                }
                let (Some(track), Some(layer)) = (out.track, out.forwarder.current_layer()) else {
                    return;
                };
                self.request_keyframe(now, track, layer, req.kind);
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.sessions[i].bwe = Some(estimate.as_u64());
                self.select_layers(i, now, true);
            }
            Event::MediaEgressStats(st) => {
                let max = self.cfg.rtx_history;
                let s = &mut self.sessions[i];
                if let Some(out) = s.outs.iter_mut().find(|o| o.mid == st.mid) {
                    out.stats.nacks = st.nacks;
                    out.stats.loss = st.loss.unwrap_or(out.stats.loss);
                    out.stats.rtt_ms = st.rtt.map(|d| d.as_secs_f64() * 1000.0);
                    // The retransmission history follows the path. Each change empties it,
                    // so it changes only for a clear difference: shortened to half or less
                    // once a short round trip is measured, lengthened once the round trip has
                    // grown past what it covers by a margin (a third, at least 100 ms).
                    if let (Some(rtt), true) = (st.rtt, out.stats.rtx_history_ms > 0) {
                        let have = out.stats.rtx_history_ms;
                        let want = super::rtx_history_for(rtt, max);
                        let want_ms = want.as_millis() as u64;
                        if want_ms * 2 <= have || want_ms > have + (have / 3).max(100) {
                            let set = super::bound_rtx_history(&mut s.rtc, out.mid, out.kind, want);
                            out.stats.rtx_history_ms = set.as_millis() as u64;
                        }
                    }
                    if let Some(remote) = st.remote {
                        let clock = f64::from(clock_rate(out.kind));
                        out.stats.jitter_ms = Some(f64::from(remote.jitter) * 1000.0 / clock);
                    }
                }
            }
            Event::MediaIngressStats(st) => {
                let publisher = self.sessions[i].id;
                if let Some(track) = self
                    .tracks
                    .iter_mut()
                    .find(|t| t.publisher == publisher && t.mid == st.mid)
                {
                    if let Some(layer) = track.layers.iter_mut().find(|l| l.rid == st.rid) {
                        layer.stats.nacks = st.nacks;
                        layer.stats.plis = st.plis;
                        layer.stats.firs = st.firs;
                        layer.stats.loss = st.loss.unwrap_or(layer.stats.loss);
                        layer.stats.rtt_ms = st.rtt.map(|d| d.as_secs_f64() * 1000.0);
                    }
                }
            }
            _ => {}
        }
    }

    /// Records that session `i` reached `stage` (once per stage).
    pub(super) fn reached(&mut self, i: usize, stage: Stage) {
        let bit = 1u8 << (stage as u8);
        let s = &mut self.sessions[i];
        if s.stages & bit == 0 {
            s.stages |= bit;
            if self.outputs.len() < DATA_IN_LIMIT {
                self.outputs.push_back(Output::Progress(Progress {
                    session: s.id,
                    stage,
                }));
            }
        }
    }
}
