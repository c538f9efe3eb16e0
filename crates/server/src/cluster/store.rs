//! The [`ClusterStore`] trait: what nodes share (the registry and the room leases), with the
//! semantics every implementation keeps.
//!
//! Rooms are keyed by [`RoomKey`] (a keyed hash, never the name). A room's lease holds its
//! owner and a weight (the owner's sessions in the room at its last renewal), and expires
//! unless renewed.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::record::{NodeList, NodeRecord};
use super::room_key::RoomKey;

/// A store operation failed: the store is unreachable, slow, or answered something else.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No answer in time, or no connection.
    #[error("cluster store unreachable: {0}")]
    Unreachable(String),
    /// An answer that does not fit the protocol.
    #[error("cluster store answered unexpectedly: {0}")]
    Protocol(String),
}

/// The outcome of a lease renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The lease is this node's (renewed, or re-asserted when it was missing).
    Held,
    /// Another node holds it and keeps it (the conflict rule chose it).
    Lost {
        /// The owner.
        owner: String,
    },
}

/// The store behind the cluster: a node registry and room leases.
pub trait ClusterStore: Send + Sync + 'static {
    /// Writes `node`'s record, expiring after `ttl` unless written again.
    fn register(&self, node: &NodeRecord, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes `node`'s record (a clean shutdown).
    fn deregister(&self, node: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The live nodes' records; records that do not parse are left out and counted.
    fn nodes(&self) -> BoxFuture<'_, Result<NodeList, StoreError>>;

    /// Places `room` on `node` unless it has a lease already, atomically; returns the owner.
    /// With `replace`, a lease held by that (dead) node is replaced too.
    fn place(
        &self,
        room: &RoomKey,
        node: &str,
        lease: Duration,
        replace: Option<&str>,
    ) -> BoxFuture<'_, Result<String, StoreError>>;

    /// Renews `node`'s lease on `room` with its `weight` (sessions there), or re-asserts it
    /// when missing (the store lost it). When another node holds it (both placed the room
    /// while the store was away), exactly one keeps it: the higher weight, then the smaller
    /// node id.
    fn renew(
        &self,
        room: &RoomKey,
        node: &str,
        weight: u32,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Renewal, StoreError>>;

    /// Drops `node`'s lease on `room` (the room ended); another node's lease is left alone.
    fn release(&self, room: &RoomKey, node: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The owner of `room`, if leased.
    fn owner(&self, room: &RoomKey) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
}

/// The conflict rule of [`ClusterStore::renew`]: whether `(node, weight)` takes the room
/// from `(owner, owner_weight)`.
pub fn wins(node: &str, weight: u32, owner: &str, owner_weight: u32) -> bool {
    weight > owner_weight || (weight == owner_weight && node < owner)
}

/// A lease value: `<node> <weight>`.
pub(crate) fn lease_value(node: &str, weight: u32) -> String {
    format!("{node} {weight}")
}

/// Parses a lease value; `None` for anything else (left to be overwritten).
pub(crate) fn parse_lease(v: &str) -> Option<(&str, u32)> {
    let (node, w) = v.split_once(' ')?;
    if node.is_empty() {
        return None;
    }
    Some((node, w.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_rule_is_deterministic_and_antisymmetric() {
        assert!(wins("b", 3, "a", 2));
        assert!(!wins("a", 2, "b", 3));
        assert!(wins("a", 2, "b", 2));
        assert!(!wins("b", 2, "a", 2));
    }

    #[test]
    fn lease_values_round_trip_and_garbage_is_none() {
        assert_eq!(parse_lease(&lease_value("n-1", 4)), Some(("n-1", 4)));
        assert_eq!(parse_lease("garbage"), None);
        assert_eq!(parse_lease("n x"), None);
        assert_eq!(parse_lease(" 3"), None);
    }
}
