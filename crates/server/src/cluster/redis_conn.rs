//! The connection every Redis-backed store shares ([`super::RedisStore`],
//! [`super::RedisQueueStore`], [`super::invite_store::RedisInviteStore`]): lazy and
//! reconnecting ([`connect`]), every call bounded by [`OP_TIMEOUT`] with its error mapped to a
//! [`StoreError`] ([`bounded`]).
//!
//! A node starts (degraded) with its Redis down: [`connect`] checks only the URL, and calls
//! fail as [`StoreError::Unreachable`] until the server answers. Errors carry the Redis error's
//! category, never the URL (which may hold a password).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::store::StoreError;

/// Longest wait for one store operation.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// A connection to `url`, made lazily (the URL is checked now: a malformed one is an error;
/// an unreachable server is not, calls fail until it answers), reconnecting by itself. Must
/// be called inside a tokio runtime.
pub fn connect(url: &str) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url.trim()).map_err(|e| e.category().to_owned())?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(OP_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.category().to_owned())
}

/// Runs `f` within [`OP_TIMEOUT`], mapping Redis errors: no answer in time, I/O, timeout and
/// dropped connection are [`StoreError::Unreachable`], anything else [`StoreError::Protocol`].
pub async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Err(_) => Err(StoreError::Unreachable("no answer in time".into())),
        Ok(Err(e)) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
            Err(StoreError::Unreachable(e.category().to_owned()))
        }
        Ok(Err(e)) => Err(StoreError::Protocol(format!(
            "{}: {}",
            e.category(),
            e.detail().unwrap_or("")
        ))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// `d` as the whole milliseconds of a Redis `PX`/`PEXPIRE` argument, at least 1 (Redis refuses
/// 0).
pub fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}
