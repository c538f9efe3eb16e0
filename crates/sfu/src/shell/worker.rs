//! A worker: a shard of the rooms and their drive loop. It gives each datagram, timeout and
//! command to its room under the room's panic guard, drains the room's outputs (datagrams into
//! a send batch, events to the server) and keeps its rooms' timers in a [`Deadlines`] queue.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cabine_proto::{Redacted, RoomId};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tracing::{error, info, warn};

use super::tcp::TcpOutlet;
use super::telemetry::{Telemetry, DATA_PER_TURN};
#[cfg(feature = "fault-injection")]
use super::Fault;
use super::{Batch, Control, Msg, SfuEvent, ShellCounters};
use crate::deadlines::Deadlines;
use crate::demux::{outgoing_check, Challenge};
use crate::room::{
    EndCause, JoinError, NegotiationError, Offer, Output, Room, RoomConfig, SessionId,
};
use crate::stats::DelayHistogram;
use crate::udp::{SendBatch, Waker};
use str0m::net::Protocol;

/// A shard of the rooms, driven by one thread.
pub(super) struct Worker {
    pub(super) cfg: RoomConfig,
    /// The advertised media address (the rooms' host candidate): the destination given to the
    /// rooms for every datagram and frame received.
    pub(super) local: SocketAddr,
    /// Rooms by slot (a closed room's slot is reused).
    pub(super) rooms: Vec<Option<Room>>,
    pub(super) free: Vec<usize>,
    pub(super) by_id: HashMap<RoomId, usize>,
    /// When each room's timer is due.
    pub(super) deadlines: Deadlines,
    pub(super) out: Outlet,
    pub(super) last_now: Instant,
    /// Forwarding delay of the rooms this worker closed (live rooms keep their own).
    pub(super) closed_delay: DelayHistogram,
}

/// Where a worker's rooms' outputs go: the socket (batched), the I/O thread's routing table
/// and the server's event queue.
pub(super) struct Outlet {
    pub(super) index: usize,
    pub(super) socket: Arc<UdpSocket>,
    pub(super) send: SendBatch,
    pub(super) counters: Arc<ShellCounters>,
    pub(super) control: Sender<Control>,
    /// Wakes the I/O thread after a routing change (`None` on the I/O thread itself).
    pub(super) waker: Option<Waker>,
    pub(super) events: Sender<SfuEvent>,
    /// Which room slot holds each session of this worker.
    pub(super) sessions: HashMap<SessionId, usize>,
    /// Each session's current server ufrag, and back: the server's own checks name it.
    pub(super) ufrags: HashMap<String, SessionId>,
    pub(super) ufrag_of: HashMap<SessionId, String>,
    /// The binding request from an unproven address being handled, and its session: answered
    /// with a success, the address is learned (before the answer leaves).
    pub(super) challenge: Option<(Challenge, SessionId)>,
    /// TCP transmits go here (`None`: no ICE-TCP listener).
    pub(super) tcp: Option<TcpOutlet>,
}

/// Messages a worker takes from its queue before its timers and its send batch get their turn.
const MSGS_PER_TURN: usize = 65;

/// Longest park of a worker with no timer (it then checks that its queue still has senders).
const IDLE_PARK: Duration = Duration::from_secs(1);

/// What draining a room produced that the worker acts on.
#[derive(Default)]
struct Drained {
    /// The offer made to the session the caller claimed (returned, not reported).
    claimed: Option<Offer>,
    /// Whether the room removed a session by itself (it may now be empty).
    ended: bool,
}

impl Worker {
    /// A worker fed by the I/O thread: batches of datagrams and commands on `rx`, telemetry on
    /// `data`. Between turns it sleeps parked until a sender of either wakes it
    /// ([`WorkerTx`](super::WorkerTx)) or its earliest timer is due.
    pub(super) fn run(mut self, rx: Receiver<Msg>, data: Receiver<Telemetry>, pool: Sender<Batch>) {
        loop {
            // Take what is queued (bounded, so timers are not starved).
            let mut taken = 0;
            while taken < MSGS_PER_TURN {
                match rx.try_recv() {
                    Ok(msg) => {
                        taken += 1;
                        if !self.handle_fed(msg, &pool) {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            // Then telemetry, bounded too: a burst of datagrams does not hold it up for more
            // than a turn, nor a burst of telemetry the datagrams.
            let data_taken = self.take_telemetry(&data);
            self.run_due();
            self.out.flush();
            if taken == MSGS_PER_TURN || data_taken == DATA_PER_TURN {
                continue;
            }
            // A wake-up between the empty queues and here is not lost: the thread's token makes
            // the park return at once. Without a timer the park is still bounded, so that a
            // handle dropped without `Sfu::shutdown` (the queue disconnected) ends the thread.
            let now = Instant::now();
            match self.deadlines.earliest() {
                Some(d) if d <= now => {}
                Some(d) => thread::park_timeout(d - now),
                None => thread::park_timeout(IDLE_PARK),
            }
        }
    }

    /// Gives up to [`DATA_PER_TURN`] telemetry messages from `data` to their rooms; returns how
    /// many it took.
    pub(super) fn take_telemetry(&mut self, data: &Receiver<Telemetry>) -> usize {
        let mut taken = 0;
        while taken < DATA_PER_TURN {
            let Ok(t) = data.try_recv() else {
                break;
            };
            taken += 1;
            self.telemetry(t);
        }
        taken
    }

    /// Writes one telemetry message on its room's `telemetry` channels.
    fn telemetry(&mut self, t: Telemetry) {
        let Telemetry {
            room,
            to,
            data,
            reliable,
        } = t;
        let now = self.now();
        if let Some(slot) = self.slot(&room) {
            self.in_room(slot, None, |r, _| match to {
                None => {
                    r.send_data(now, &data, reliable);
                }
                Some(session) => {
                    r.send_data_to(now, session, &data, reliable);
                }
            });
        }
    }

    fn handle_fed(&mut self, msg: Msg, pool: &Sender<Batch>) -> bool {
        let Msg::Batch(mut batch) = msg else {
            return self.handle(msg);
        };
        let mut start = 0;
        for item in &batch.items {
            let data = &batch.data[start..item.end];
            start = item.end;
            self.datagram(item.session, item.source, data, batch.at, item.challenge);
        }
        batch.data.clear();
        batch.items.clear();
        let _ = pool.try_send(batch);
        true
    }

    fn now(&mut self) -> Instant {
        // str0m needs time that never goes backwards across calls.
        let now = Instant::now().max(self.last_now);
        self.last_now = now;
        now
    }

    /// Gives one datagram to its session's room and queues what that produces.
    pub(super) fn datagram(
        &mut self,
        session: SessionId,
        source: SocketAddr,
        data: &[u8],
        at: Instant,
        challenge: Option<Challenge>,
    ) {
        self.receive(Protocol::Udp, session, source, data, at, challenge);
    }

    /// Gives one datagram (UDP) or frame (ICE-TCP) to its session's room.
    pub(super) fn receive(
        &mut self,
        proto: Protocol,
        session: SessionId,
        source: SocketAddr,
        data: &[u8],
        at: Instant,
        challenge: Option<Challenge>,
    ) {
        let Some(&slot) = self.out.sessions.get(&session) else {
            return;
        };
        let now = self.now();
        let Some(room) = self.rooms.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let local = self.local;
        self.out.challenge = challenge.map(|c| (c, session));
        let ended = isolated(room, &mut self.out, |r, out| {
            r.handle_receive(now, at, session, proto, source, local, data);
            out.drain(r, None).ended
        });
        self.out.challenge = None;
        self.deadlines.schedule(slot, room.poll_timeout());
        if ended != Some(false) && room.is_empty() {
            self.close(slot);
        }
    }

    /// Advances the rooms whose timers are due.
    pub(super) fn run_due(&mut self) {
        let now = self.now();
        while let Some(slot) = self.deadlines.pop_due(now) {
            let Some(room) = self.rooms.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let mut ended = Some(false);
            if room.poll_timeout().is_some_and(|t| t <= now) {
                ended = isolated(room, &mut self.out, |r, out| {
                    r.handle_timeout(now);
                    out.drain(r, None).ended
                });
            }
            self.deadlines.schedule(slot, room.poll_timeout());
            if ended != Some(false) && room.is_empty() {
                self.close(slot);
            }
        }
    }

    fn slot(&self, room: &RoomId) -> Option<usize> {
        self.by_id.get(room).copied()
    }

    /// Handles one command; false means stop. Everything a room does runs under its panic
    /// guard ([`isolated`]); a room that panics is closed here.
    pub(super) fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Batch(batch) => {
                // Only fed workers receive batches (see `handle_fed`); nothing to recycle here.
                let mut start = 0;
                for item in &batch.items {
                    let data = &batch.data[start..item.end];
                    start = item.end;
                    self.datagram(item.session, item.source, data, batch.at, item.challenge);
                }
            }
            Msg::Frames(frames) => self.frames(frames),
            Msg::Join { room, req, reply } => {
                let (session, ufrag) = (req.session, req.ice_ufrag.clone());
                let result = self.join(room, session, ufrag, |r, now| r.join(now, *req));
                let _ = reply.send(result);
            }
            Msg::JoinOffering { room, req, reply } => {
                let (session, ufrag) = (req.session, req.ice_ufrag.clone());
                let result = self.join(room, session, ufrag, |r, now| r.join_offering(now, *req));
                let _ = reply.send(result);
            }
            Msg::Answer {
                room,
                session,
                offer,
                sdp,
                reply,
            } => {
                let now = self.now();
                let result = self
                    .slot(&room)
                    .and_then(|slot| {
                        self.in_room(slot, Some(now), |r, _| {
                            r.accept_answer(now, session, offer, &sdp)
                        })
                    })
                    .unwrap_or(Err(NegotiationError::UnknownSession(session)));
                let _ = reply.send(result);
            }
            Msg::Outstanding {
                room,
                session,
                restart_ice,
                reply,
            } => {
                let result = self
                    .slot(&room)
                    .and_then(|slot| {
                        self.in_room(slot, None, |r, out| {
                            let asked = if restart_ice {
                                r.restart_ice_offer(session)
                            } else {
                                Ok(())
                            };
                            // A restart offer made at once is returned here, not reported
                            // twice.
                            let pending = out.drain(r, Some(session)).claimed;
                            asked.map(|()| pending.or_else(|| r.outstanding_offer(session)))
                        })
                    })
                    .unwrap_or(Err(NegotiationError::UnknownSession(session)));
                if let Ok(Some(o)) = &result {
                    self.out.register(o.ice_ufrag.clone(), session);
                }
                let _ = reply.send(result);
            }
            Msg::Republish {
                room,
                session,
                offer,
                reply,
            } => {
                let now = self.now();
                let result = self
                    .slot(&room)
                    .and_then(|slot| {
                        self.in_room(slot, Some(now), |r, out| {
                            let result = r.republish(now, session, &offer);
                            // The ufrag (new on an ICE restart) is registered before the
                            // checks that name it leave.
                            if let Some(ufrag) = r.local_ufrag(session) {
                                out.register(ufrag, session);
                            }
                            result
                        })
                    })
                    .unwrap_or(Err(JoinError::UnknownSession(session)));
                let _ = reply.send(result);
            }
            Msg::Leave {
                room,
                session,
                reply,
            } => {
                let mut found = false;
                if let Some(slot) = self.slot(&room) {
                    // Subscribers of its tracks get new offers (drained by `in_room`).
                    found = self
                        .in_room(slot, None, |r, _| r.leave(session))
                        .unwrap_or(false);
                    if found {
                        self.out.forget(session);
                        self.close(slot);
                    }
                }
                let _ = reply.send(found);
            }
            Msg::Snapshot { reply } => {
                let now = self.now();
                let mut rooms = Vec::with_capacity(self.by_id.len());
                let mut failed = Vec::new();
                for (slot, entry) in self.rooms.iter_mut().enumerate() {
                    let Some(r) = entry else {
                        continue;
                    };
                    match isolated(r, &mut self.out, |r, _| r.snapshot(now)) {
                        Some(snapshot) => rooms.push(snapshot),
                        None => failed.push(slot),
                    }
                }
                for slot in failed {
                    self.close(slot);
                }
                let mut delay = self.closed_delay.clone();
                for r in self.rooms.iter().flatten() {
                    delay.merge(r.forwarding_delay());
                }
                let _ = reply.send((rooms, delay));
            }
            Msg::RelayProtocol {
                room,
                session,
                protocol,
                require_relayed,
                reply,
            } => {
                let found = self
                    .slot(&room)
                    .and_then(|slot| {
                        self.in_room(slot, None, |r, _| {
                            r.report_relay_protocol(session, protocol, require_relayed)
                        })
                    })
                    .unwrap_or(Err(crate::room::RelayReportError::UnknownSession));
                let _ = reply.send(found);
            }
            Msg::Candidate {
                room,
                session,
                candidate,
                reply,
            } => {
                let found = self
                    .slot(&room)
                    .and_then(|slot| {
                        self.in_room(slot, None, |r, _| r.learn_candidate(session, &candidate))
                    })
                    .unwrap_or(false);
                let _ = reply.send(found);
            }
            Msg::IceRestart {
                room,
                session,
                remote,
                local,
                reply,
            } => {
                let ufrag = local.ufrag.clone();
                let now = self.now();
                let found = self
                    .slot(&room)
                    .and_then(|slot| {
                        self.in_room(slot, Some(now), |r, out| {
                            let found = r.ice_restart(session, remote, local);
                            if found {
                                out.register(ufrag, session);
                            }
                            found
                        })
                    })
                    .unwrap_or(false);
                let _ = reply.send(found);
            }
            #[cfg(feature = "fault-injection")]
            Msg::Fault { room, fault } => match fault {
                Fault::RoomPanic => {
                    if let Some(slot) = self.slot(&room) {
                        self.in_room(slot, None, |r, _| r.inject_panic());
                    }
                }
                Fault::KillWorker => panic!("fault injection: worker killed"),
                // Returns once the hold is dropped (the channel disconnects).
                Fault::Hold(held) => while held.recv().is_ok() {},
            },
            Msg::Stop => {
                self.out.flush();
                return false;
            }
        }
        true
    }

    /// Runs `f` on the room in `slot` under its panic guard ([`isolated`]), then (with
    /// `flush_at`) advances the room to that time, drains its outputs and queues its timer. A
    /// room that panicked is closed. `None`: no room there, or it panicked.
    fn in_room<T>(
        &mut self,
        slot: usize,
        flush_at: Option<Instant>,
        f: impl FnOnce(&mut Room, &mut Outlet) -> T,
    ) -> Option<T> {
        let Worker {
            rooms,
            out,
            deadlines,
            ..
        } = self;
        let r = rooms.get_mut(slot).and_then(Option::as_mut)?;
        let result = isolated(r, out, |r, out| {
            let result = f(r, out);
            if let Some(now) = flush_at {
                r.handle_timeout(now);
            }
            out.drain(r, None);
            result
        });
        deadlines.schedule(slot, r.poll_timeout());
        if result.is_none() {
            self.close(slot);
        }
        result
    }

    /// Adds `session` to `room` (created if needed) with `join`; on success registers its ufrag
    /// with the I/O thread and sends what the session has to send at once; a room left empty by
    /// a refused join (or closed by a panic) is dropped.
    fn join<T>(
        &mut self,
        room: RoomId,
        session: SessionId,
        ufrag: String,
        join: impl FnOnce(&mut Room, Instant) -> Result<T, JoinError>,
    ) -> Result<T, JoinError> {
        let now = self.now();
        let slot = match self.slot(&room) {
            Some(slot) => slot,
            None => {
                let r = Room::new(room.clone(), self.cfg.clone());
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.rooms[slot] = Some(r);
                        slot
                    }
                    None => {
                        self.rooms.push(Some(r));
                        self.rooms.len() - 1
                    }
                };
                self.by_id.insert(room, slot);
                slot
            }
        };
        let result = self.in_room(slot, Some(now), |r, out| {
            let result = join(r, now);
            if result.is_ok() {
                // Registered before anything is sent (the drain after this closure): the
                // session's first connectivity checks name this ufrag, and their answers must
                // find the session.
                out.sessions.insert(session, slot);
                out.register(ufrag, session);
            }
            result
        });
        self.close(slot);
        result.unwrap_or(Err(JoinError::RoomFailed))
    }

    /// Drops the room in `slot` if it has no session left, keeping its forwarding-delay
    /// histogram for the node's total.
    fn close(&mut self, slot: usize) {
        let Some(entry) = self.rooms.get_mut(slot) else {
            return;
        };
        if !entry.as_ref().is_some_and(Room::is_empty) {
            return;
        }
        if let Some(r) = entry.take() {
            self.closed_delay.merge(r.forwarding_delay());
            self.by_id.remove(r.id());
            self.deadlines.remove(slot);
            self.free.push(slot);
        }
    }
}

/// Runs `f` on `room` under the room's panic guard ([`Room::run_isolated`]). A room that panics
/// is closed: each of its sessions is reported ended to the server (which tells the clients),
/// the panic is counted (`room_panics`) and logged with the room's pseudonym; the worker and its
/// other rooms carry on. `None` after a panic (the room is then empty).
pub(super) fn isolated<R>(
    room: &mut Room,
    out: &mut Outlet,
    f: impl FnOnce(&mut Room, &mut Outlet) -> R,
) -> Option<R> {
    match room.run_isolated(|r| f(r, out)) {
        Ok(r) => Some(r),
        Err(panicked) => {
            out.counters.room_panics.fetch_add(1, Ordering::Relaxed);
            error!(
                room = %Redacted(room.id()),
                sessions = panicked.sessions,
                "a room panicked and was closed, its sessions ended; other rooms carry on"
            );
            out.drain(room, None);
            None
        }
    }
}

impl Outlet {
    /// Drains `room`'s outputs until its timeout: queues the datagrams and reports offers,
    /// progress, data-channel messages and ended sessions to the server. An offer to `claim`
    /// is returned instead of reported.
    fn drain(&mut self, room: &mut Room, claim: Option<SessionId>) -> Drained {
        let mut drained = Drained::default();
        loop {
            match room.poll_output() {
                Output::TransmitTcp { session, transmit } => {
                    if let Some(tcp) = &mut self.tcp {
                        tcp.push((self.index, session), transmit);
                    }
                }
                Output::Transmit(t) => {
                    if let Some((c, session)) = self.challenge {
                        if c.is_answered_by(t.destination, &t.contents) {
                            // Learned before the answer leaves: the client's next packet
                            // from that address finds it.
                            self.control(Control::Learn(c.source, (self.index, session)));
                        }
                    }
                    if let Some((transaction, local)) = outgoing_check(&t.contents) {
                        if let Some(&session) = self.ufrags.get(local) {
                            let key = (self.index, session);
                            self.control(Control::Expect(transaction, t.destination, key));
                        }
                    }
                    self.send.push(t);
                    if self.send.is_full() {
                        self.flush();
                    }
                }
                Output::Offer(offer)
                    if drained.claimed.is_none() && claim == Some(offer.session) =>
                {
                    drained.claimed = Some(offer);
                }
                Output::Offer(offer) => self.report_offer(room.id().clone(), offer),
                Output::Progress(progress) => {
                    let _ = self.events.try_send(SfuEvent::Progress {
                        room: room.id().clone(),
                        progress,
                    });
                }
                Output::Data(data) => {
                    let event = SfuEvent::Data {
                        room: room.id().clone(),
                        data,
                    };
                    if self.events.try_send(event).is_err() {
                        warn!("media plane event queue full, a data channel message was dropped");
                    }
                }
                Output::Ended(removed) => {
                    drained.ended = true;
                    if removed.cause == EndCause::ConnectTimeout {
                        self.counters
                            .connect_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    self.forget(removed.session);
                    info!(session = %removed.session, reason = removed.reason, "session ended");
                    let event = SfuEvent::SessionEnded {
                        room: room.id().clone(),
                        removed,
                    };
                    if self.events.try_send(event).is_err() {
                        warn!("media plane event queue full, an ended session was not reported");
                    }
                }
                Output::Timeout(_) => return drained,
            }
        }
    }

    /// Sends the queued datagrams in one batch.
    pub(super) fn flush(&mut self) {
        if let Some(tcp) = &mut self.tcp {
            tcp.flush();
        }
        if self.send.is_empty() {
            return;
        }
        let sent = self.send.flush(&self.socket);
        let c = &self.counters;
        c.datagrams_out.fetch_add(sent.datagrams, Ordering::Relaxed);
        c.bytes_out.fetch_add(sent.bytes, Ordering::Relaxed);
        if sent.errors > 0 {
            c.send_errors.fetch_add(sent.errors, Ordering::Relaxed);
        }
    }

    /// Tells the I/O thread to route STUN with `ufrag` to `session` on this worker (its
    /// previous ufrag is forgotten).
    fn register(&mut self, ufrag: String, session: SessionId) {
        if self.ufrag_of.get(&session) != Some(&ufrag) {
            if let Some(old) = self.ufrag_of.insert(session, ufrag.clone()) {
                self.ufrags.remove(&old);
            }
            self.ufrags.insert(ufrag.clone(), session);
            if let Some(tcp) = &self.tcp {
                tcp.register(&ufrag, (self.index, session));
            }
        }
        self.control(Control::Register(ufrag, (self.index, session)));
    }

    /// Registers the ufrag of a server offer (it changes on an ICE restart) and reports the
    /// offer.
    fn report_offer(&mut self, room: RoomId, offer: Offer) {
        self.register(offer.ice_ufrag.clone(), offer.session);
        if self
            .events
            .try_send(SfuEvent::Offer { room, offer })
            .is_err()
        {
            warn!("media plane event queue full, a renegotiation offer was dropped");
        }
    }

    fn forget(&mut self, session: SessionId) {
        self.sessions.remove(&session);
        if let Some(old) = self.ufrag_of.remove(&session) {
            self.ufrags.remove(&old);
        }
        if let Some(tcp) = &self.tcp {
            tcp.forget((self.index, session));
        }
        self.control(Control::Unregister((self.index, session)));
    }

    fn control(&self, c: Control) {
        let _ = self.control.send(c);
        if let Some(w) = &self.waker {
            w.wake();
        }
    }
}
