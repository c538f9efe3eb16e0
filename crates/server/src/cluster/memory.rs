//! [`MemoryStore`]: the store of a single node (and of the store-logic tests), in memory, with
//! the same semantics as the Redis store. Expiry follows tokio's clock, so tests can pause it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::time::Instant;

use super::record::{NodeList, NodeRecord};
use super::room_key::RoomKey;
use super::store::{lease_value, parse_lease, wins, ClusterStore, Renewal, StoreError};

/// An in-memory [`ClusterStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Raw records by node id (raw, so tests can plant bad ones), with their expiry.
    nodes: HashMap<String, (Vec<u8>, Instant)>,
    leases: HashMap<RoomKey, (String, Instant)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a raw registry value (tests: a record that does not parse).
    pub fn put_raw_node(&self, id: &str, raw: &[u8], ttl: Duration) {
        self.lock()
            .nodes
            .insert(id.to_owned(), (raw.to_vec(), Instant::now() + ttl));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every operation is one map update: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live lease of `room`, dropping an expired one.
    fn live<'a>(inner: &'a mut Inner, room: &RoomKey) -> Option<&'a str> {
        let now = Instant::now();
        if inner.leases.get(room).is_some_and(|(_, exp)| *exp <= now) {
            inner.leases.remove(room);
        }
        inner.leases.get(room).map(|(v, _)| v.as_str())
    }
}

impl ClusterStore for MemoryStore {
    fn register(&self, node: &NodeRecord, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        self.put_raw_node(&node.id, node.to_json().as_bytes(), ttl);
        async { Ok(()) }.boxed()
    }

    fn deregister(&self, node: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        self.lock().nodes.remove(node);
        async { Ok(()) }.boxed()
    }

    fn nodes(&self) -> BoxFuture<'_, Result<NodeList, StoreError>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.nodes.retain(|_, (_, exp)| *exp > now);
        let mut list = NodeList::default();
        for (raw, _) in inner.nodes.values() {
            match NodeRecord::parse(raw) {
                Some(r) => list.nodes.push(r),
                None => list.invalid += 1,
            }
        }
        list.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        async { Ok(list) }.boxed()
    }

    fn place(
        &self,
        room: &RoomKey,
        node: &str,
        lease: Duration,
        replace: Option<&str>,
    ) -> BoxFuture<'_, Result<String, StoreError>> {
        let mut inner = self.lock();
        let current = Self::live(&mut inner, room)
            .and_then(parse_lease)
            .map(|(o, _)| o.to_owned());
        let owner = match current {
            Some(o) if Some(o.as_str()) != replace => o,
            _ => {
                inner
                    .leases
                    .insert(room.clone(), (lease_value(node, 0), Instant::now() + lease));
                node.to_owned()
            }
        };
        async { Ok(owner) }.boxed()
    }

    fn renew(
        &self,
        room: &RoomKey,
        node: &str,
        weight: u32,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Renewal, StoreError>> {
        let mut inner = self.lock();
        let current = Self::live(&mut inner, room)
            .and_then(parse_lease)
            .map(|(o, w)| (o.to_owned(), w));
        let r = match current {
            Some((owner, w)) if owner != node && !wins(node, weight, &owner, w) => {
                Renewal::Lost { owner }
            }
            _ => {
                inner.leases.insert(
                    room.clone(),
                    (lease_value(node, weight), Instant::now() + lease),
                );
                Renewal::Held
            }
        };
        async { Ok(r) }.boxed()
    }

    fn release(&self, room: &RoomKey, node: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.lock();
        if Self::live(&mut inner, room)
            .and_then(parse_lease)
            .is_some_and(|(o, _)| o == node)
        {
            inner.leases.remove(room);
        }
        async { Ok(()) }.boxed()
    }

    fn owner(&self, room: &RoomKey) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let mut inner = self.lock();
        let o = Self::live(&mut inner, room)
            .and_then(parse_lease)
            .map(|(o, _)| o.to_owned());
        async { Ok(o) }.boxed()
    }
}
