//! Media-plane events: sessions that ended by themselves, setup progress, data-channel
//! messages and renegotiation offers, routed to the session table, the audit log, the
//! WebSocket hub and the telemetry bridge.

use std::sync::Arc;

use cabine_proto::RoomId;
use cabine_sfu::shell::SfuEvent;
use tracing::warn;

use crate::state::{AppState, COMMANDS_LABEL};

/// Reads media-plane events (sessions that ended by themselves) into the session table and the
/// audit log, on a blocking thread.
pub fn spawn_event_reader(state: Arc<AppState>) {
    let events = state.sfu.events();
    std::thread::Builder::new()
        .name("cabine-events".into())
        .spawn(move || {
            for ev in events.iter() {
                match ev {
                    SfuEvent::Progress { progress, .. } => state.on_progress(progress),
                    SfuEvent::SessionEnded { room, removed } => {
                        state.ws.on_session_ended(&removed);
                        state.sessions_lock().remove(&removed.session);
                        state.end_spans(removed.session);
                        state.audit(
                            "leave",
                            &room,
                            &removed.identity,
                            Some(removed.role),
                            None,
                            removed.reason,
                        );
                    }
                    SfuEvent::Data { room, data } => state.on_data(&room, data),
                    SfuEvent::Offer { offer, .. } => state.ws.on_offer(offer),
                }
            }
        })
        .map(|_| ())
        .unwrap_or_else(|e| warn!(error = %e, "cannot start the media event reader"));
}

impl AppState {
    /// A message from a subscriber's `commands` data channel: a telemetry sync or a device
    /// command (see [`crate::telemetry`]). Commands are audited, refusals counted and audited.
    pub(crate) fn on_data(&self, room: &RoomId, data: cabine_sfu::room::DataIn) {
        let Some(t) = self.telemetry.get() else {
            self.count_refusal("telemetry_disabled");
            return;
        };
        if data.label != COMMANDS_LABEL {
            self.count_refusal("unknown_data_channel");
            return;
        }
        let rate = self.limits.data_requests_per_second;
        let (claims, identity, role) = {
            let mut sessions = self.sessions_lock();
            let Some(entry) = sessions.get_mut(&data.session) else {
                drop(sessions);
                self.count_refusal("unknown_session");
                return;
            };
            let now = std::time::Instant::now();
            let bucket = entry
                .data_requests
                .get_or_insert_with(|| crate::limits::TokenBucket::new(rate, rate, now));
            if !bucket.take(now) {
                drop(sessions);
                // Beyond the rate: neither answered nor audited, so a flood costs the server
                // one counter.
                self.refusals.count(crate::limits::Limit::DataRequestRate);
                return;
            }
            (entry.claims.clone(), entry.identity.clone(), entry.role)
        };
        match t.on_request(room, data.session, &claims, &data.data) {
            Ok(None) => {}
            Ok(Some(command_id)) => self.audit(
                "command",
                room,
                &identity,
                Some(role),
                None,
                &format!("command {command_id} sent to the kiosk"),
            ),
            Err(reason) => {
                self.count_refusal("telemetry_request_refused");
                self.audit(
                    "refused",
                    room,
                    &identity,
                    Some(role),
                    None,
                    &format!("telemetry request: {reason}"),
                );
            }
        }
    }

    pub(crate) fn on_progress(&self, p: cabine_sfu::room::Progress) {
        use cabine_sfu::room::Stage;
        let mut spans = self.spans_lock();
        let Some(s) = spans.get_mut(&p.session) else {
            return;
        };
        // Closing the previous stage's span ends it now; the next one starts now.
        s.stage = None;
        s.stage = match p.stage {
            Stage::IceConnected => Some(tracing::info_span!(parent: &s._session, "dtls")),
            Stage::DtlsConnected => Some(tracing::info_span!(parent: &s._session, "first_media")),
            Stage::FirstMedia => None,
        };
    }
}
