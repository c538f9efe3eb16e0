//! The cluster: many nodes share a store ([`ClusterStore`]: Redis, or in memory for one node)
//! holding a node registry and room leases; any node answers for any room by redirecting to
//! its owner.
//!
//! ```text
//! request for room R on node A ──► A owns R (lease)?            ── yes ─► served here
//!                                  └ store: place R (atomic) ─► owner A ─► served here
//!                                                              owner B ─► 307 to B's URL
//!                                  └ no answer, owner seen on B lately ─► 307 to B
//!                                  └ no answer, unknown room ─► 503 Retry-After (one slow
//!                                    answer is not an outage) or, in the degraded mode
//!                                    (DEGRADED_AFTER failed refreshes), served here
//! every REFRESH: register A's record (TTL NODE_TTL), read the registry, renew the leases of
//!                A's live rooms (re-asserting lost ones), release the ended ones
//! ```
//!
//! The store is never on the media path nor on `/healthz`: a node whose store is away keeps
//! its rooms and places new ones on itself; when the store returns, its renewals re-assert
//! its rooms, and a room two nodes placed meanwhile goes to one of them by a fixed rule
//! ([`store::wins`]), the other redirecting its clients' next requests.

pub mod config;
#[cfg(test)]
mod conformance;
pub mod invite_store;
pub mod memory;
pub mod placement;
#[cfg(test)]
mod queue_conformance;
pub mod queue_redis;
pub mod queue_store;
pub mod record;
pub mod redis_conn;
pub mod redis_store;
pub mod room_key;
pub mod runtime;
pub mod store;

pub use config::ClusterConfig;
pub use memory::MemoryStore;
pub use queue_redis::RedisQueueStore;
pub use queue_store::{MemoryQueueStore, QueueStore};
pub use record::{NodeList, NodeRecord};
pub use redis_store::RedisStore;
pub use room_key::{RoomKey, RoomKeyer};
pub use runtime::{Cluster, ClusterStats, Load, Route};
pub use store::{ClusterStore, Renewal, StoreError};

use std::time::Duration;

/// How often a node writes its record, reads the registry and renews its leases.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A node record expires this long after its last refresh: a dead node leaves the registry
/// within it (three refreshes missed), and its rooms are placed again at their clients' next
/// request (a lease whose owner is not in the registry is replaced): prompt enough for the
/// clients that noticed the death (~3 s) to find their room again at once.
pub const NODE_TTL: Duration = Duration::from_secs(3);
/// A room lease expires this long after its last renewal (five refreshes missed).
pub const ROOM_LEASE: Duration = Duration::from_secs(10);
