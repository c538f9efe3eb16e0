//! The store semantics every [`ClusterStore`] keeps, checked on the memory store and on a real
//! `redis-server` (started on a free loopback port).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cabine_proto::RoomId;

use super::record::NodeRecord;
use super::{ClusterStore, MemoryStore, RedisStore, Renewal, RoomKeyer};

fn record(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        url: format!("http://{id}.example:8080"),
        region: String::new(),
        media: String::new(),
        telemetry: String::new(),
        max_rooms: 10,
        rooms: 0,
        sessions: 0,
        egress_pps: 0,
        cpu_percent: 0.0,
        draining: false,
        renewed_ms: 0,
    }
}

/// Polls `done` until it holds, for up to 5 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn suite(store: Arc<dyn ClusterStore>) {
    let keyer = RoomKeyer::new(b"conformance");
    let r1 = keyer.key(&RoomId::parse("room-1").unwrap());
    let r2 = keyer.key(&RoomId::parse("room-2").unwrap());
    let lease = Duration::from_secs(30);

    // Registry: records expire; a clean leave removes at once.
    store
        .register(&record("a"), Duration::from_secs(30))
        .await
        .unwrap();
    store
        .register(&record("b"), Duration::from_millis(300))
        .await
        .unwrap();
    let ids = |l: super::NodeList| l.nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(ids(store.nodes().await.unwrap()), ["a", "b"]);
    eventually("b's record expires", || {
        let s = Arc::clone(&store);
        async move { ids(s.nodes().await.unwrap()) == ["a"] }
    })
    .await;
    store.deregister("a").await.unwrap();
    assert!(store.nodes().await.unwrap().nodes.is_empty());

    // Placement is first come; a room stays where it is; a dead owner's lease is replaced.
    assert_eq!(store.place(&r1, "a", lease, None).await.unwrap(), "a");
    assert_eq!(store.place(&r1, "b", lease, None).await.unwrap(), "a");
    assert_eq!(store.place(&r1, "b", lease, Some("c")).await.unwrap(), "a");
    assert_eq!(store.place(&r1, "b", lease, Some("a")).await.unwrap(), "b");
    assert_eq!(store.owner(&r1).await.unwrap().as_deref(), Some("b"));

    // Renewal keeps one's own lease; release drops only one's own.
    assert_eq!(
        store.renew(&r1, "b", 2, lease).await.unwrap(),
        Renewal::Held
    );
    store.release(&r1, "a").await.unwrap();
    assert_eq!(store.owner(&r1).await.unwrap().as_deref(), Some("b"));
    store.release(&r1, "b").await.unwrap();
    assert_eq!(store.owner(&r1).await.unwrap(), None);

    // A missing lease is re-asserted by its holder's renewal (the store lost its data).
    assert_eq!(
        store.renew(&r2, "c", 1, lease).await.unwrap(),
        Renewal::Held
    );
    assert_eq!(store.owner(&r2).await.unwrap().as_deref(), Some("c"));
    // Two holders: the higher weight keeps it, then the smaller id; the loser is told who.
    assert_eq!(
        store.renew(&r2, "d", 1, lease).await.unwrap(),
        Renewal::Lost { owner: "c".into() }
    );
    assert_eq!(
        store.renew(&r2, "b", 1, lease).await.unwrap(),
        Renewal::Held
    );
    assert_eq!(
        store.renew(&r2, "c", 1, lease).await.unwrap(),
        Renewal::Lost { owner: "b".into() }
    );
    assert_eq!(
        store.renew(&r2, "z", 5, lease).await.unwrap(),
        Renewal::Held
    );
    assert_eq!(store.owner(&r2).await.unwrap().as_deref(), Some("z"));

    // Leases expire unless renewed.
    assert_eq!(
        store
            .place(&r1, "a", Duration::from_millis(200), None)
            .await
            .unwrap(),
        "a"
    );
    eventually("the lease expires", || {
        let s = Arc::clone(&store);
        let r = r1.clone();
        async move { s.owner(&r).await.unwrap().is_none() }
    })
    .await;
}

#[tokio::test]
async fn memory_store_keeps_the_semantics() {
    let store = Arc::new(MemoryStore::new());
    // A record that does not parse is left out and counted, never a panic.
    store.put_raw_node("x", b"{not json", Duration::from_secs(30));
    let list = store.nodes().await.unwrap();
    assert_eq!((list.nodes.len(), list.invalid), (0, 1));
    store.deregister("x").await.unwrap();
    suite(store).await;
}

/// A `redis-server` on a free loopback port, killed on drop.
pub(crate) struct TestRedis {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
}

impl TestRedis {
    pub(crate) fn start() -> TestRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        TestRedis { child, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_store_keeps_the_semantics() {
    let redis = TestRedis::start();
    let store = Arc::new(RedisStore::new(&redis.url()).unwrap());
    eventually("redis-server answers", || {
        let s = Arc::clone(&store);
        async move { s.nodes().await.is_ok() }
    })
    .await;
    // A record that does not parse is left out and counted, never a panic.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::pipe()
        .set("cabine:node:x", "{not json")
        .sadd("cabine:nodes", "x")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    let list = store.nodes().await.unwrap();
    assert_eq!((list.nodes.len(), list.invalid), (0, 1));
    store.deregister("x").await.unwrap();
    // A garbage lease is overwritten by a placement.
    let key = RoomKeyer::new(b"conformance").key(&RoomId::parse("room-9").unwrap());
    redis::cmd("SET")
        .arg(format!("cabine:room:{}", key.as_str()))
        .arg("garbage")
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    assert_eq!(store.owner(&key).await.unwrap(), None);
    assert_eq!(
        store
            .place(&key, "a", Duration::from_secs(5), None)
            .await
            .unwrap(),
        "a"
    );
    suite(store).await;
}

#[tokio::test]
async fn unreachable_redis_is_an_error_per_call_not_at_construction() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there.
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}")).unwrap();
    assert!(matches!(
        store.nodes().await,
        Err(super::StoreError::Unreachable(_))
    ));
    assert!(RedisStore::new("http://not-redis").is_err());
}
