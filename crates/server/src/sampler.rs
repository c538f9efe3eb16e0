//! The one sampler of the media plane: every [`crate::ops::PERIOD`] it snapshots every worker
//! once and feeds both the operators' view (history and the view published to dashboards) and
//! the metrics summary, and notes the codecs publishers use in the session table (for WHEP
//! codec checks). It ends when the server state is dropped or the media plane stops.
//!
//! ```text
//! every PERIOD: sfu.snapshot_with_delay() → ops view + history → publish to dashboards
//!                                          → metrics summary (Prometheus / OTLP)
//! ```

use std::sync::{Arc, Mutex};
use std::time::Instant;

use cabine_sfu::SfuError;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::ops::{History, OpsView, ProcSample};
use crate::state::AppState;

/// The operators' view as last sampled, and the history behind its sparklines.
pub struct OpsSampler {
    /// Per-series history (sparklines, rates).
    pub(crate) history: Mutex<History>,
    /// The last sampled view, shared by every open dashboard.
    pub(crate) latest: tokio::sync::watch::Sender<Option<Arc<OpsView>>>,
    /// The last sampled view as JSON, serialised once per period for every dashboard that
    /// sees all rooms (set before `latest` changes; empty while no dashboard is open).
    pub(crate) latest_json: Mutex<Arc<str>>,
}

impl Default for OpsSampler {
    fn default() -> Self {
        OpsSampler {
            history: Mutex::new(History::new()),
            latest: tokio::sync::watch::Sender::new(None),
            latest_json: Mutex::new(Arc::from("")),
        }
    }
}

impl OpsSampler {
    /// The history, even if a panicking holder poisoned the lock (each update is one call that
    /// leaves it consistent).
    pub(crate) fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the sampler; the task ends when `state` is dropped or the media plane stops.
pub fn spawn(state: &Arc<AppState>, metrics: Arc<Metrics>) -> JoinHandle<()> {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::ops::PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let (rooms, delay) = match st.sfu.snapshot_with_delay().await {
                Ok(r) => r,
                Err(SfuError::Stopped) => return,
                Err(_) => continue,
            };
            st.note_codecs(&rooms);
            let shell = st.sfu.stats();
            metrics.update(
                &rooms,
                delay,
                shell,
                st.sfu.tcp_stats(),
                st.refused_counts(),
            );
            let proc = ProcSample::read();
            let mut view = crate::ops::view(&rooms, shell, proc, crate::ops::unix_ms());
            st.ops.history().observe(&mut view, proc, Instant::now());
            if st.ops.latest.receiver_count() > 0 {
                let json = serde_json::to_string(&view).unwrap_or_default();
                *st.ops.latest_json.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(json);
            }
            st.ops.latest.send_replace(Some(Arc::new(view)));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cabine_sfu::{RoomConfig, Sfu, SfuConfig};

    use super::*;
    use crate::audit::{Audit, AuditConfig};
    use crate::config::Config;

    #[tokio::test]
    async fn samples_into_both_views_and_stops_with_the_media_plane() {
        let mut cfg = Config::defaults();
        cfg.media.bind = "127.0.0.1:0".parse().unwrap();
        let sfu = Sfu::start(SfuConfig {
            bind: cfg.media.bind,
            advertise: None,
            workers: 1,
            socket_buffer: 0,
            room: RoomConfig::default(),
            tcp: None,
        })
        .unwrap();
        let audit = Audit::open(&AuditConfig {
            path: Default::default(),
            ..cfg.audit.clone()
        })
        .unwrap();
        let cluster = crate::cluster::Cluster::new(&cfg.cluster, "", String::new(), b"k").unwrap();
        let state = Arc::new(AppState::new(&cfg, sfu.clone(), audit, Arc::new(cluster)));
        let metrics = Arc::new(Metrics::new(None, None, None).unwrap());
        let task = spawn(&state, Arc::clone(&metrics));

        // One sample reaches the dashboards' view and the metrics.
        let mut latest = state.ops.latest.subscribe();
        tokio::time::timeout(Duration::from_secs(10), latest.wait_for(Option::is_some))
            .await
            .expect("a view within 10 s")
            .unwrap();
        assert!(metrics.render().contains("cabine_rooms 0"));

        // The media plane stops: so does the sampler, though the server state lives on.
        tokio::task::spawn_blocking(move || sfu.shutdown())
            .await
            .unwrap();
        tokio::time::timeout(crate::ops::PERIOD * 5, task)
            .await
            .expect("the sampler ends with the media plane")
            .unwrap();
        drop(state);
    }
}
