//! The one sampler of the media plane: every [`crate::ops::PERIOD`] it snapshots every worker
//! once and feeds both the operators' view (history and the view published to dashboards) and
//! the metrics summary. It ends when the server state is dropped or the media plane stops.
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
}

impl Default for OpsSampler {
    fn default() -> Self {
        OpsSampler {
            history: Mutex::new(History::new()),
            latest: tokio::sync::watch::Sender::new(None),
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
            let shell = st.sfu.stats();
            metrics.update(&rooms, delay, shell, st.refused_counts());
            let proc = ProcSample::read();
            let mut view = crate::ops::view(&rooms, shell, proc, crate::ops::unix_ms());
            st.ops.history().observe(&mut view, proc, Instant::now());
            st.ops.latest.send_replace(Some(Arc::new(view)));
        }
    })
}
