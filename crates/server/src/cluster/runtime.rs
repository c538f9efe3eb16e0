//! [`Cluster`]: this node's side of the cluster: routing a room's requests, the periodic
//! refresh (registry record, registry view, leases), and the degraded mode while the store is
//! away.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cabine_proto::RoomId;
use tracing::{info, warn};

use super::placement::choose;
use super::record::NodeRecord;
use super::room_key::{RoomKey, RoomKeyer};
use super::store::{ClusterStore, Renewal, StoreError};
use super::{ClusterConfig, MemoryStore, RedisStore, NODE_TTL, ROOM_LEASE};

/// Where a room's request is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Here.
    Local,
    /// On another node: its public base URL.
    Redirect(String),
    /// No node has room for a new room (every one draining or at `cluster.max_rooms`).
    Full,
    /// The store did not answer for a room this node knows nothing of, while it still
    /// counts as reachable: placing the room here could split it from a node that holds it,
    /// so the client is asked to retry (503 with `Retry-After`). Once refreshes confirm the
    /// outage ([`DEGRADED_AFTER`] in a row), new rooms are placed here instead.
    Unavailable,
}

/// Refreshes that must fail in a row before the node counts its store as away (the degraded
/// mode: new rooms placed on itself). One slow answer is not an outage.
pub const DEGRADED_AFTER: u32 = 2;

/// Owners of rooms held elsewhere that this node remembers (each for [`ROOM_LEASE`]), so it
/// still redirects to them while the store is away; more are not remembered.
pub const MAX_SEEN: usize = 4096;

/// Node origins remembered for [`Cluster::is_node_origin`] (a cluster has a few nodes; the
/// bound only stops a registry full of garbage from growing the set).
pub const MAX_NODE_ORIGINS: usize = 1024;

/// `scheme://host[:port]` of a base URL (a path after it dropped).
pub fn origin_of(url: &str) -> &str {
    let Some(at) = url.find("://") else {
        return url;
    };
    match url[at + 3..].find('/') {
        Some(end) => &url[..at + 3 + end],
        None => url,
    }
}

/// This node's figures for its registry record and its leases.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Media sessions (and signalling members) by live room.
    pub rooms: HashMap<RoomId, u32>,
    /// Media sessions.
    pub sessions: u32,
    /// Media packets sent per second.
    pub egress_pps: u64,
    /// CPU, percent of one core.
    pub cpu_percent: f64,
    /// Whether the node is draining.
    pub draining: bool,
}

/// Counters of the cluster side (exported as `cabine_cluster_*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Store operations that failed.
    pub store_errors: AtomicU64,
    /// Registry records that did not parse (ignored).
    pub invalid_records: AtomicU64,
    /// Rooms placed on this node without the store (it was unreachable).
    pub local_placements: AtomicU64,
    /// Requests redirected to another node.
    pub redirects: AtomicU64,
    /// Rooms this node gave up to another after both held them.
    pub conflicts_lost: AtomicU64,
    /// New rooms refused because no node had room.
    pub full: AtomicU64,
}

/// A room this node placed on itself.
#[derive(Debug, Clone)]
struct Owned {
    placed: Instant,
    /// Set when another node kept it (the conflict rule): requests go there.
    lost_to: Option<String>,
    /// A lost room whose lease was found gone at the last refresh: taken back if it still is
    /// at the next one (by then the winner has re-asserted it, had the store only lost it).
    vacant: bool,
}

/// A room placed here but not live yet (its first client is on its way) keeps its lease this
/// long.
const UNUSED_GRACE: Duration = Duration::from_secs(10);

/// This node's side of the cluster.
pub struct Cluster {
    store: Arc<dyn ClusterStore>,
    clustered: bool,
    me: String,
    url: String,
    region: String,
    max_rooms: u32,
    keyer: RoomKeyer,
    media: String,
    telemetry: Mutex<String>,
    view: Mutex<View>,
    owned: Mutex<HashMap<RoomKey, Owned>>,
    /// Whether the store counts as reachable (false after [`DEGRADED_AFTER`] failed
    /// refreshes in a row, true again at the first refresh that succeeds).
    reachable: AtomicBool,
    /// Refreshes failed in a row.
    failed_refreshes: AtomicU32,
    /// Rooms seen held by another node, with when: redirected to it while the store is away.
    seen: Mutex<HashMap<RoomKey, (String, Instant)>>,
    /// This node's last figures.
    load: Mutex<Load>,
    stats: ClusterStats,
    /// The public origins of the nodes seen in the registry since this node started (at most
    /// [`MAX_NODE_ORIGINS`]): a page served by a node that died since calls this one.
    origins: Mutex<HashSet<String>>,
}

#[derive(Debug, Default)]
struct View {
    nodes: Vec<NodeRecord>,
    /// Rooms this node placed on others since their records were read.
    recent: HashMap<String, u32>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.me)
            .field("clustered", &self.clustered)
            .finish()
    }
}

impl Cluster {
    /// The cluster side of a node: on Redis when `cfg.redis_url` is set (connected lazily: an
    /// unreachable Redis is the degraded mode, not an error), else alone on a memory store.
    /// `public_url` is `http.public_url`; `secret` keys the room hashes. Must run inside a
    /// tokio runtime.
    pub fn new(
        cfg: &ClusterConfig,
        public_url: &str,
        media: String,
        secret: &[u8],
    ) -> Result<Cluster, String> {
        let store: Arc<dyn ClusterStore> = if cfg.clustered() {
            Arc::new(
                RedisStore::new(&cfg.redis_url)
                    .map_err(|e| format!("cluster.redis_url is not a usable Redis URL: {e}"))?,
            )
        } else {
            Arc::new(MemoryStore::new())
        };
        Ok(Self::with_store(
            cfg,
            public_url,
            media,
            secret,
            store,
            cfg.clustered(),
        ))
    }

    /// Same on a given store (tests).
    pub fn with_store(
        cfg: &ClusterConfig,
        public_url: &str,
        media: String,
        secret: &[u8],
        store: Arc<dyn ClusterStore>,
        clustered: bool,
    ) -> Cluster {
        Cluster {
            store,
            clustered,
            me: cfg.resolved_node_id(),
            url: public_url.trim_end_matches('/').to_owned(),
            region: cfg.region.clone(),
            max_rooms: u32::try_from(cfg.max_rooms).unwrap_or(u32::MAX),
            keyer: RoomKeyer::new(secret),
            media,
            telemetry: Mutex::new(String::new()),
            view: Mutex::new(View::default()),
            owned: Mutex::new(HashMap::new()),
            reachable: AtomicBool::new(true),
            failed_refreshes: AtomicU32::new(0),
            seen: Mutex::new(HashMap::new()),
            load: Mutex::new(Load::default()),
            stats: ClusterStats::default(),
            origins: Mutex::new(HashSet::from([origin_of(public_url).to_owned()])),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.me
    }

    /// This node's public base URL (`http.public_url`, no trailing `/`).
    pub fn public_url(&self) -> &str {
        &self.url
    }

    /// Whether this node shares a store with others.
    pub fn clustered(&self) -> bool {
        self.clustered
    }

    /// Whether the store counts as reachable (not in the degraded mode).
    pub fn store_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The store key of `room`.
    pub fn key(&self, room: &RoomId) -> RoomKey {
        self.keyer.key(room)
    }

    /// Marks this node draining at once (it takes no new rooms; the registry hears of it at
    /// the next refresh).
    pub fn set_draining(&self, draining: bool) {
        lock(&self.load).draining = draining;
    }

    /// Hands `room`, held here, over to another node (placement, draining nodes excluded):
    /// its lease goes to that node in the store at once, so the clients told to move land
    /// there and are not sent back; this node's requests for it are redirected there from now
    /// on. Returns the new node's public URL; `None` when not clustered, not held here, or no
    /// other node can take it.
    pub async fn hand_over(&self, room: &RoomId) -> Option<String> {
        if !self.clustered {
            return None;
        }
        let key = self.key(room);
        if !matches!(
            lock(&self.owned).get(&key),
            Some(Owned { lost_to: None, .. })
        ) {
            return None;
        }
        let target = self.candidate().filter(|t| *t != self.me)?;
        let owner = match self
            .store
            .place(&key, &target, ROOM_LEASE, Some(&self.me))
            .await
        {
            Ok(o) => o,
            Err(e) => {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                warn!(error = %e, "a draining node could not hand a room over");
                return None;
            }
        };
        if owner == self.me {
            return None;
        }
        let url = self.url_of(&owner)?;
        *lock(&self.view).recent.entry(owner.clone()).or_default() += 1;
        if let Some(o) = lock(&self.owned).get_mut(&key) {
            o.lost_to = Some(owner.clone());
            o.vacant = false;
        }
        self.remember(&key, &owner);
        info!(room_key = &key.as_str()[..8], to = %owner, "room handed over (drain)");
        Some(url)
    }

    /// Writes this node's record now (a drain: others stop placing rooms here at once).
    pub async fn publish_record(&self) {
        if self.clustered {
            let _ = self.store.register(&self.record(), NODE_TTL).await;
        }
    }

    /// Sets the telemetry address published in the registry.
    pub fn set_telemetry(&self, addr: String) {
        *lock(&self.telemetry) = addr;
    }

    /// Whether `origin` (`scheme://host[:port]`, a request's `Origin`) is the public origin of
    /// a node of this cluster seen in the registry since this node started: its pages may
    /// call this node's APIs (their session moved here).
    pub fn is_node_origin(&self, origin: &str) -> bool {
        self.clustered && lock(&self.origins).contains(origin)
    }

    /// The registry as last read (this node's own record current).
    pub fn nodes(&self) -> Vec<NodeRecord> {
        let mut nodes = lock(&self.view).nodes.clone();
        let me = self.record();
        match nodes.iter_mut().find(|n| n.id == self.me) {
            Some(n) => *n = me,
            None => nodes.push(me),
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// Where `room`'s requests are served; places a new room. Never waits on the store for a
    /// room this node holds, nor for long ([`super::redis_conn::OP_TIMEOUT`]) otherwise.
    pub async fn route(&self, room: &RoomId) -> Route {
        if !self.clustered {
            return Route::Local;
        }
        let key = self.key(room);
        let held = lock(&self.owned).get(&key).cloned();
        match held {
            Some(Owned { lost_to: None, .. }) => return Route::Local,
            Some(Owned {
                lost_to: Some(owner),
                ..
            }) => {
                if let Some(url) = self.url_of(&owner) {
                    self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                    return Route::Redirect(url);
                }
            }
            None => {}
        }
        if !self.store_reachable() {
            if let Some(url) = self.seen_elsewhere(&key) {
                self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                return Route::Redirect(url);
            }
            return self.place_here(key);
        }
        let Some(candidate) = self.candidate() else {
            // No node takes a new room, but this may be an existing one: ask who holds it.
            return match self.store.owner(&key).await {
                Ok(Some(owner)) if owner == self.me => {
                    lock(&self.owned).insert(
                        key,
                        Owned {
                            placed: Instant::now(),
                            lost_to: None,
                            vacant: false,
                        },
                    );
                    Route::Local
                }
                Ok(Some(owner)) => match self.url_of(&owner) {
                    Some(url) => {
                        self.remember(&key, &owner);
                        self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                        Route::Redirect(url)
                    }
                    None => {
                        self.stats.full.fetch_add(1, Ordering::Relaxed);
                        Route::Full
                    }
                },
                Ok(None) => {
                    self.stats.full.fetch_add(1, Ordering::Relaxed);
                    Route::Full
                }
                Err(_) => self.store_slow(&key),
            };
        };
        let mut replace = None;
        for _ in 0..2 {
            let owner = match self
                .store
                .place(&key, &candidate, ROOM_LEASE, replace.as_deref())
                .await
            {
                Ok(o) => o,
                Err(_) => return self.store_slow(&key),
            };
            if owner == self.me {
                lock(&self.owned).insert(
                    key,
                    Owned {
                        placed: Instant::now(),
                        lost_to: None,
                        vacant: false,
                    },
                );
                return Route::Local;
            }
            if owner == candidate {
                *lock(&self.view).recent.entry(owner.clone()).or_default() += 1;
            }
            if let Some(url) = self.url_of(&owner) {
                self.remember(&key, &owner);
                self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                return Route::Redirect(url);
            }
            // The owner is not in the registry as last read: read it again before taking
            // the room from a node that may only be new.
            if let Ok(list) = self.store.nodes().await {
                self.set_view(list);
                if let Some(url) = self.url_of(&owner) {
                    self.remember(&key, &owner);
                    self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                    return Route::Redirect(url);
                }
            }
            // A dead node's lease: place the room again.
            replace = Some(owner);
        }
        // Two owners in a row not in the registry: serve here rather than loop.
        self.place_here(key)
    }

    /// One refresh: write this node's record, read the registry, renew the leases of the
    /// live rooms and release those of ended ones. [`DEGRADED_AFTER`] failed refreshes in a
    /// row switch to the degraded mode (logged once); nothing here waits long.
    pub async fn refresh(&self, load: Load) {
        let live: HashMap<RoomKey, u32> =
            load.rooms.iter().map(|(r, n)| (self.key(r), *n)).collect();
        *lock(&self.load) = load;
        if !self.clustered {
            return;
        }
        let now = Instant::now();
        lock(&self.seen).retain(|_, (_, at)| now.duration_since(*at) < ROOM_LEASE);
        // Local bookkeeping first, so it goes on while the store is away: live rooms are
        // held, unused ones forgotten (their leases released below, or left to expire).
        let ended = self.prune(&live);
        match self.refresh_store(&live, &ended).await {
            Ok(renewed) => {
                self.failed_refreshes.store(0, Ordering::Relaxed);
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    info!(
                        rooms = renewed,
                        "cluster store reachable again: this node's rooms re-asserted"
                    );
                }
            }
            Err(e) => {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                let failed = self.failed_refreshes.fetch_add(1, Ordering::Relaxed) + 1;
                if failed >= DEGRADED_AFTER && self.reachable.swap(false, Ordering::Relaxed) {
                    warn!(
                        error = %e,
                        "cluster store unreachable: this node keeps its rooms and places new \
                         rooms on itself until it returns (cabine_cluster_local_placements_total)"
                    );
                }
            }
        }
    }

    /// The store side of a refresh; the leases renewed.
    async fn refresh_store(
        &self,
        live: &HashMap<RoomKey, u32>,
        ended: &[RoomKey],
    ) -> Result<usize, StoreError> {
        self.store.register(&self.record(), NODE_TTL).await?;
        let list = self.store.nodes().await?;
        self.set_view(list);
        for key in ended {
            self.store.release(key, &self.me).await?;
        }
        let rooms: Vec<(RoomKey, Owned)> = lock(&self.owned)
            .iter()
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        let mut renewed = 0usize;
        for (key, o) in rooms {
            let weight = live.get(&key).copied();
            if let Some(lost_to) = &o.lost_to {
                if weight.is_none() {
                    continue;
                }
                // This node still has clients in a room it lost: if the room was placed
                // back here, or the winner's lease stays gone (its room ended) for two
                // refreshes in a row, take it again, or this node and the next owner would
                // redirect to each other. (One refresh is not enough: after the store lost
                // its data, the winner re-asserts its lease at its next refresh.)
                let owner = self.store.owner(&key).await?;
                let mut owned = lock(&self.owned);
                let Some(x) = owned.get_mut(&key) else {
                    continue;
                };
                match owner {
                    Some(owner) if owner == self.me => x.lost_to = None,
                    Some(owner) => {
                        if owner != *lost_to {
                            x.lost_to = Some(owner);
                        }
                        x.vacant = false;
                        continue;
                    }
                    None if x.vacant => x.lost_to = None,
                    None => {
                        x.vacant = true;
                        continue;
                    }
                }
                x.vacant = false;
            }
            match self
                .store
                .renew(&key, &self.me, weight.unwrap_or(0), ROOM_LEASE)
                .await
            {
                Ok(Renewal::Held) => renewed += 1,
                Ok(Renewal::Lost { owner }) => {
                    self.stats.conflicts_lost.fetch_add(1, Ordering::Relaxed);
                    info!(
                        room_key = &key.as_str()[..8],
                        owner = %owner,
                        "a room this node held is kept by another node: its clients' next \
                         requests are redirected there"
                    );
                    if let Some(x) = lock(&self.owned).get_mut(&key) {
                        x.lost_to = Some(owner);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(renewed)
    }

    /// A clean stop: leave the registry and release this node's leases (best effort).
    pub async fn leave(&self) {
        if !self.clustered {
            return;
        }
        let keys: Vec<RoomKey> = lock(&self.owned)
            .iter()
            .filter(|(_, o)| o.lost_to.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if self.store.release(&k, &self.me).await.is_err() {
                break;
            }
        }
        let _ = self.store.deregister(&self.me).await;
    }

    /// The base URL of `node`, from the registry as last read.
    fn url_of(&self, node: &str) -> Option<String> {
        lock(&self.view)
            .nodes
            .iter()
            .find(|n| n.id == node)
            .map(|n| n.url.clone())
    }

    fn candidate(&self) -> Option<String> {
        let nodes = self.nodes();
        let view = lock(&self.view);
        choose(&nodes, &self.region, &view.recent, unix_ms()).map(|n| n.id.clone())
    }

    fn set_view(&self, list: super::NodeList) {
        self.stats
            .invalid_records
            .fetch_add(list.invalid, Ordering::Relaxed);
        {
            let mut origins = lock(&self.origins);
            for n in &list.nodes {
                if origins.len() >= MAX_NODE_ORIGINS {
                    break;
                }
                let o = origin_of(&n.url);
                if !o.is_empty() && !origins.contains(o) {
                    origins.insert(o.to_owned());
                }
            }
        }
        let mut v = lock(&self.view);
        v.nodes = list.nodes;
        v.recent.clear();
    }

    /// Places `key` here without the store, within `cluster.max_rooms` (else [`Route::Full`]).
    fn place_here(&self, key: RoomKey) -> Route {
        let mut owned = lock(&self.owned);
        let held = owned.values().filter(|o| o.lost_to.is_none()).count();
        if held >= self.max_rooms as usize {
            drop(owned);
            self.stats.full.fetch_add(1, Ordering::Relaxed);
            return Route::Full;
        }
        self.stats.local_placements.fetch_add(1, Ordering::Relaxed);
        owned.insert(
            key,
            Owned {
                placed: Instant::now(),
                lost_to: None,
                vacant: false,
            },
        );
        Route::Local
    }

    /// Holds the `live` rooms and forgets the unused ones (not live, placed over
    /// [`UNUSED_GRACE`] ago); returns those whose leases are this node's to release.
    fn prune(&self, live: &HashMap<RoomKey, u32>) -> Vec<RoomKey> {
        let mut owned = lock(&self.owned);
        for k in live.keys() {
            owned.entry(k.clone()).or_insert(Owned {
                placed: Instant::now(),
                lost_to: None,
                vacant: false,
            });
        }
        let mut ended = Vec::new();
        owned.retain(|k, o| {
            let unused = !live.contains_key(k) && o.placed.elapsed() >= UNUSED_GRACE;
            if unused && o.lost_to.is_none() {
                ended.push(k.clone());
            }
            !unused
        });
        ended
    }

    /// A store call of `route` failed while the store counts as reachable: redirect to an
    /// owner seen recently, else ask the client to retry (never the degraded mode on one
    /// slow answer: the refreshes decide that).
    fn store_slow(&self, key: &RoomKey) -> Route {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        match self.seen_elsewhere(key) {
            Some(url) => {
                self.stats.redirects.fetch_add(1, Ordering::Relaxed);
                Route::Redirect(url)
            }
            None => Route::Unavailable,
        }
    }

    /// Remembers that `owner` holds `key` (for [`ROOM_LEASE`]).
    fn remember(&self, key: &RoomKey, owner: &str) {
        let mut seen = lock(&self.seen);
        if seen.len() < MAX_SEEN || seen.contains_key(key) {
            seen.insert(key.clone(), (owner.to_owned(), Instant::now()));
        }
    }

    /// The URL of the node seen holding `key` within [`ROOM_LEASE`], if any.
    fn seen_elsewhere(&self, key: &RoomKey) -> Option<String> {
        let owner = {
            let seen = lock(&self.seen);
            let (owner, at) = seen.get(key)?;
            if at.elapsed() >= ROOM_LEASE {
                return None;
            }
            owner.clone()
        };
        self.url_of(&owner)
    }

    fn record(&self) -> NodeRecord {
        let load = lock(&self.load);
        let owned = lock(&self.owned)
            .values()
            .filter(|o| o.lost_to.is_none())
            .count();
        NodeRecord {
            id: self.me.clone(),
            url: self.url.clone(),
            region: self.region.clone(),
            media: self.media.clone(),
            telemetry: lock(&self.telemetry).clone(),
            max_rooms: self.max_rooms,
            rooms: u32::try_from(owned.max(load.rooms.len())).unwrap_or(u32::MAX),
            sessions: load.sessions,
            egress_pps: load.egress_pps,
            cpu_percent: if load.cpu_percent.is_finite() {
                load.cpu_percent
            } else {
                0.0
            },
            draining: load.draining,
            renewed_ms: unix_ms(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or field update: a poisoned lock is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now, ms since the Unix epoch (the records' renewal times).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_urls_origin_drops_its_path() {
        assert_eq!(
            origin_of("https://a.example:8443"),
            "https://a.example:8443"
        );
        assert_eq!(origin_of("https://a.example/cabine/"), "https://a.example");
        assert_eq!(origin_of("http://127.0.0.1:9000/"), "http://127.0.0.1:9000");
    }

    fn config(id: &str, max_rooms: usize) -> ClusterConfig {
        ClusterConfig {
            redis_url: String::new(),
            node_id: id.into(),
            region: String::new(),
            max_rooms,
        }
    }

    /// Node `id` on `store`, clustered.
    fn node(id: &str, store: &Arc<MemoryStore>, max_rooms: usize) -> Cluster {
        let store: Arc<dyn ClusterStore> = store.clone();
        Cluster::with_store(
            &config(id, max_rooms),
            &format!("http://{id}.example:8080"),
            String::new(),
            b"runtime-tests",
            store,
            true,
        )
    }

    /// The memory store behind a switch: while `down`, every call fails as an unreachable
    /// Redis does.
    struct Switched {
        inner: Arc<MemoryStore>,
        down: AtomicBool,
    }

    impl Switched {
        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::Relaxed) {
                Err(StoreError::Unreachable("switched off".into()))
            } else {
                Ok(())
            }
        }
    }

    impl ClusterStore for Switched {
        fn register(
            &self,
            node: &NodeRecord,
            ttl: Duration,
        ) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
            let r = self.check().map(|()| self.inner.register(node, ttl));
            Box::pin(async move { r?.await })
        }
        fn deregister(
            &self,
            node: &str,
        ) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
            let r = self.check().map(|()| self.inner.deregister(node));
            Box::pin(async move { r?.await })
        }
        fn nodes(
            &self,
        ) -> futures_util::future::BoxFuture<'_, Result<super::super::NodeList, StoreError>>
        {
            let r = self.check().map(|()| self.inner.nodes());
            Box::pin(async move { r?.await })
        }
        fn place(
            &self,
            room: &RoomKey,
            node: &str,
            lease: Duration,
            replace: Option<&str>,
        ) -> futures_util::future::BoxFuture<'_, Result<String, StoreError>> {
            let r = self
                .check()
                .map(|()| self.inner.place(room, node, lease, replace));
            Box::pin(async move { r?.await })
        }
        fn renew(
            &self,
            room: &RoomKey,
            node: &str,
            weight: u32,
            lease: Duration,
        ) -> futures_util::future::BoxFuture<'_, Result<Renewal, StoreError>> {
            let r = self
                .check()
                .map(|()| self.inner.renew(room, node, weight, lease));
            Box::pin(async move { r?.await })
        }
        fn release(
            &self,
            room: &RoomKey,
            node: &str,
        ) -> futures_util::future::BoxFuture<'_, Result<(), StoreError>> {
            let r = self.check().map(|()| self.inner.release(room, node));
            Box::pin(async move { r?.await })
        }
        fn owner(
            &self,
            room: &RoomKey,
        ) -> futures_util::future::BoxFuture<'_, Result<Option<String>, StoreError>> {
            let r = self.check().map(|()| self.inner.owner(room));
            Box::pin(async move { r?.await })
        }
    }

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).unwrap()
    }

    fn live(rooms: &[(&str, u32)]) -> Load {
        Load {
            rooms: rooms.iter().map(|(r, n)| (room(r), *n)).collect(),
            ..Load::default()
        }
    }

    #[tokio::test]
    async fn a_draining_node_hands_its_room_to_another_which_serves_it_and_is_not_sent_back() {
        let store = Arc::new(MemoryStore::new());
        let (a, b) = (node("a", &store, 10), node("b", &store, 10));
        a.refresh(live(&[("moving", 2)])).await;
        b.refresh(Load::default()).await;
        assert_eq!(a.route(&room("moving")).await, Route::Local);
        // Not draining yet: placement may pick A itself, which is no hand-over.
        let mut draining = live(&[("moving", 2)]);
        draining.draining = true;
        a.refresh(draining.clone()).await;
        assert_eq!(
            a.hand_over(&room("moving")).await.as_deref(),
            Some("http://b.example:8080")
        );
        let key = a.key(&room("moving"));
        assert_eq!(store.owner(&key).await.unwrap().as_deref(), Some("b"));
        // The moved clients land on B, which serves the room; A sends latecomers there, and its
        // refreshes (its old sessions still live) do not take the room back.
        assert_eq!(b.route(&room("moving")).await, Route::Local);
        a.refresh(draining.clone()).await;
        a.refresh(draining).await;
        assert_eq!(store.owner(&key).await.unwrap().as_deref(), Some("b"));
        assert_eq!(
            a.route(&room("moving")).await,
            Route::Redirect("http://b.example:8080".into())
        );
        // A room it does not hold is not A's to hand over.
        assert_eq!(a.hand_over(&room("elsewhere")).await, None);
    }

    #[tokio::test]
    async fn a_join_to_a_room_held_elsewhere_is_redirected_when_no_node_takes_new_rooms() {
        let store = Arc::new(MemoryStore::new());
        let (a, b) = (node("a", &store, 10), node("b", &store, 10));
        // B holds a live room (its renewal leases it).
        b.refresh(live(&[("on-b", 2)])).await;
        a.refresh(Load::default()).await;
        assert_eq!(
            a.route(&room("on-b")).await,
            Route::Redirect("http://b.example:8080".into())
        );
        // Both nodes drain: no node takes a new room.
        let draining = |mut l: Load| {
            l.draining = true;
            l
        };
        b.refresh(draining(live(&[("on-b", 2)]))).await;
        a.refresh(draining(Load::default())).await;
        assert_eq!(
            a.route(&room("on-b")).await,
            Route::Redirect("http://b.example:8080".into())
        );
        assert_eq!(a.route(&room("new-room")).await, Route::Full);
    }

    #[tokio::test]
    async fn a_node_that_lost_a_room_takes_it_back_when_the_winners_lease_is_gone() {
        let store = Arc::new(MemoryStore::new());
        let (a, b) = (node("a", &store, 10), node("b", &store, 10));
        // Both hold "split" with one session (as after an outage): the smaller id keeps it.
        a.refresh(live(&[("split", 1)])).await;
        b.refresh(live(&[("split", 1)])).await;
        let a_url = Route::Redirect("http://a.example:8080".into());
        assert_eq!(b.route(&room("split")).await, a_url);
        // The store loses its data: the winner re-asserts first, the loser stays redirected.
        let split = a.key(&room("split"));
        store.release(&split, "a").await.unwrap();
        b.refresh(live(&[("split", 1)])).await;
        a.refresh(live(&[("split", 1)])).await;
        b.refresh(live(&[("split", 1)])).await;
        assert_eq!(b.route(&room("split")).await, a_url);
        assert_eq!(store.owner(&split).await.unwrap().as_deref(), Some("a"));
        // A's room ends (its lease released) while B still has a client there: B re-asserts
        // it at its next refresh instead of redirecting to A for ever.
        let key = a.key(&room("split"));
        store.release(&key, "a").await.unwrap();
        b.refresh(live(&[("split", 1)])).await;
        assert_eq!(
            b.route(&room("split")).await,
            a_url,
            "one refresh without a lease is not enough (the store may have lost it)"
        );
        b.refresh(live(&[("split", 1)])).await;
        assert_eq!(b.route(&room("split")).await, Route::Local);
        assert_eq!(store.owner(&key).await.unwrap().as_deref(), Some("b"));
        // A room placed back on its loser by another node is served there too.
        a.refresh(live(&[("other", 5)])).await;
        b.refresh(live(&[("other", 1)])).await;
        assert_eq!(b.route(&room("other")).await, a_url);
        let other = a.key(&room("other"));
        store.release(&other, "a").await.unwrap();
        store.place(&other, "b", ROOM_LEASE, None).await.unwrap();
        b.refresh(live(&[("other", 1)])).await;
        assert_eq!(b.route(&room("other")).await, Route::Local);
        // While the winner holds it, the loser keeps redirecting.
        a.refresh(live(&[("third", 3)])).await;
        b.refresh(live(&[("third", 1)])).await;
        b.refresh(live(&[("third", 1)])).await;
        assert_eq!(b.route(&room("third")).await, a_url);
    }

    #[tokio::test]
    async fn one_slow_answer_does_not_place_here_and_known_rooms_stay_redirected_in_an_outage() {
        let memory = Arc::new(MemoryStore::new());
        let switched = Arc::new(Switched {
            inner: Arc::clone(&memory),
            down: AtomicBool::new(false),
        });
        let a = Cluster::with_store(
            &config("a", 10),
            "http://a.example:8080",
            String::new(),
            b"runtime-tests",
            switched.clone(),
            true,
        );
        let b = node("b", &memory, 10);
        b.refresh(live(&[("on-b", 1)])).await;
        a.refresh(Load::default()).await;
        let b_url = Route::Redirect("http://b.example:8080".into());
        assert_eq!(a.route(&room("on-b")).await, b_url);

        // The store stops answering: a room seen on B is still sent there; an unknown room
        // is not placed here on one failure (the client retries), and the node is not
        // degraded yet.
        switched.down.store(true, Ordering::Relaxed);
        assert_eq!(a.route(&room("on-b")).await, b_url);
        assert_eq!(a.route(&room("unknown")).await, Route::Unavailable);
        assert!(a.store_reachable());
        a.refresh(Load::default()).await;
        assert!(a.store_reachable(), "one failed refresh is not an outage");
        a.refresh(Load::default()).await;
        assert!(!a.store_reachable(), "{DEGRADED_AFTER} in a row are");
        // Degraded: new rooms are placed here, known ones still redirected.
        assert_eq!(a.route(&room("unknown")).await, Route::Local);
        assert_eq!(a.route(&room("on-b")).await, b_url);

        switched.down.store(false, Ordering::Relaxed);
        a.refresh(live(&[("unknown", 1)])).await;
        assert!(a.store_reachable());
        assert_eq!(
            memory
                .owner(&a.key(&room("unknown")))
                .await
                .unwrap()
                .as_deref(),
            Some("a")
        );
    }

    #[tokio::test]
    async fn the_degraded_mode_keeps_max_rooms_and_forgets_unused_rooms() {
        let switched = Arc::new(Switched {
            inner: Arc::new(MemoryStore::new()),
            down: AtomicBool::new(true),
        });
        let a = Cluster::with_store(
            &config("a", 2),
            "http://a.example:8080",
            String::new(),
            b"runtime-tests",
            switched.clone(),
            true,
        );
        for _ in 0..DEGRADED_AFTER {
            a.refresh(Load::default()).await;
        }
        assert!(!a.store_reachable());
        assert_eq!(a.route(&room("r1")).await, Route::Local);
        assert_eq!(a.route(&room("r2")).await, Route::Local);
        assert_eq!(a.route(&room("r3")).await, Route::Full, "cluster.max_rooms");
        assert_eq!(a.stats().full.load(Ordering::Relaxed), 1);
        // r1 and r2 never went live: past the grace they are forgotten, store or not.
        for o in lock(&a.owned).values_mut() {
            o.placed -= UNUSED_GRACE;
        }
        a.refresh(Load::default()).await;
        assert!(lock(&a.owned).is_empty());
        assert_eq!(a.route(&room("r3")).await, Route::Local);
    }
}
