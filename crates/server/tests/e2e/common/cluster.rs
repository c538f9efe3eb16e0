//! Cluster tests' helpers: a real `redis-server` on a free loopback port (stopped, resumed,
//! killed and restarted by the tests) and `cabine serve` processes sharing it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cabine_proto::jwt::Tokens;
use cabine_proto::{Identity, Role};

/// The token secret of every node of a test cluster.
pub const SECRET: &str = "cluster-test-secret-0123456789abcdef";

/// A free TCP port on 127.0.0.1 (also free for UDP in practice: the tests bind it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` on a loopback port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port (kept across restarts).
    pub port: u16,
}

impl Redis {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> Redis {
        Self::start_on(free_port()).await
    }

    /// Starts one on `port` and waits until it answers.
    pub async fn start_on(port: u16) -> Redis {
        let mut r = Redis { child: None, port };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.connection().await.is_none() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A fresh connection, if it answers.
    pub async fn connection(&self) -> Option<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()?;
        let pong: Option<String> = tokio::time::timeout(
            Duration::from_millis(500),
            redis::cmd("PING").query_async(&mut c),
        )
        .await
        .ok()?
        .ok();
        pong.map(|_| c)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing answers.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// Resumes it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills it (SIGKILL): connections are refused until [`Self::restart_empty`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it (if running) and starts an empty one on the same port.
    pub async fn restart_empty(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// `PTTL key`: milliseconds left, -1 without expiry, -2 when absent.
    pub async fn pttl(&self, key: &str) -> i64 {
        let mut c = self.connection().await.expect("redis answers");
        redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap()
    }

    /// The owner of `room`'s lease, read from the store.
    pub async fn owner(&self, room: &str) -> Option<String> {
        let key = cabine_server::cluster::RoomKeyer::new(SECRET.as_bytes())
            .key(&cabine_proto::RoomId::parse(room).unwrap());
        let mut c = self.connection().await?;
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("cabine:room:{}", key.as_str()))
            .query_async(&mut c)
            .await
            .ok()?;
        v.and_then(|v| v.split_once(' ').map(|(o, _)| o.to_owned()))
    }

    /// Places `room` on `node` directly in the store (as if `node` had placed it).
    pub async fn place(&self, room: &str, node: &str) {
        let key = cabine_server::cluster::RoomKeyer::new(SECRET.as_bytes())
            .key(&cabine_proto::RoomId::parse(room).unwrap());
        let mut c = self.connection().await.expect("redis answers");
        redis::cmd("SET")
            .arg(format!("cabine:room:{}", key.as_str()))
            .arg(format!("{node} 0"))
            .arg("PX")
            .arg(30_000)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            // A stopped server must be resumed to die of SIGKILL promptly everywhere.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `cabine serve` process of a test cluster, killed on drop.
pub struct Node {
    child: Child,
    /// Its node id.
    pub id: String,
    /// Its base URL (also its `http.public_url`).
    pub base: String,
    /// Its process log (stdout).
    pub log: std::path::PathBuf,
}

impl Node {
    /// Starts node `id` on `redis` and waits for `/healthz`.
    pub async fn start(id: &str, redis: &Redis) -> Node {
        Self::start_with(id, &redis.url(), &[]).await
    }

    /// Starts node `id` on the store at `redis_url`, with more environment, and waits for
    /// `/healthz`.
    pub async fn start_with(id: &str, redis_url: &str, env: &[(&str, String)]) -> Node {
        let http = free_port();
        let base = format!("http://127.0.0.1:{http}");
        let dir = std::env::temp_dir().join(format!("cabine-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{id}-{http}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_cabine"))
            .arg("serve")
            .env("CABINE_HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("CABINE_HTTP__PUBLIC_URL", &base)
            .env("CABINE_MEDIA__BIND", format!("127.0.0.1:{}", free_port()))
            .env("CABINE_MEDIA__WORKERS", "1")
            // The tests' offers never connect: their sessions must outlive the test.
            .env("CABINE_MEDIA__CONNECT_TIMEOUT", "120s")
            .env("CABINE_ADMIN__LISTEN", "")
            .env("CABINE_TELEMETRY__LISTEN", "127.0.0.1:0")
            .env("CABINE_AUTH__SECRET", SECRET)
            .env("CABINE_CLUSTER__REDIS_URL", redis_url)
            .env("CABINE_CLUSTER__NODE_ID", id)
            .env("CABINE_LOG__FILTER", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("RUST_LOG")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut node = Node {
            child,
            id: id.to_owned(),
            base,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/healthz", node.base))
            .await
            .is_err()
        {
            if let Some(exit) = node.child.try_wait().unwrap() {
                panic!("node {id} exited before serving: {exit:?}");
            }
            assert!(Instant::now() < deadline, "node {id} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node
    }

    /// Its process id (for a driver that kills it at a moment of its choosing).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL (no goodbye to the registry).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET /api/rooms` here with an operator token for every room.
    pub async fn rooms(&self) -> serde_json::Value {
        super::rooms_at(&self.base, &token("*", Role::Operator, "ops")).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A token of the test cluster.
pub fn token(room: &str, role: Role, identity: &str) -> String {
    Tokens::new(SECRET.as_bytes())
        .mint(
            room,
            role,
            Identity::parse(identity).unwrap(),
            Duration::from_secs(600),
            None,
        )
        .unwrap()
}

/// Three nodes `node-a`, `node-b`, `node-c` on `redis`, each seeing the three in its registry.
pub async fn three_nodes(redis: &Redis) -> [Node; 3] {
    let (a, b, c) = tokio::join!(
        Node::start("node-a", redis),
        Node::start("node-b", redis),
        Node::start("node-c", redis)
    );
    let nodes = [a, b, c];
    for n in &nodes {
        until(&format!("{} sees three nodes", n.id), || async {
            n.rooms().await["nodes"].as_array().map_or(0, Vec::len) == 3
        })
        .await;
    }
    nodes
}

/// Polls `done` every 50 ms until it holds, for up to 20 s; panics naming `what`.
pub async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs a (never connecting) WHIP offer for `room` to `base`, following redirects by hand
/// with the token; returns the final status and the base URL that answered.
pub async fn publish(base: &str, room: &str, identity: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut url = format!("{base}/whip/{room}");
    for _ in 0..4 {
        let r = client
            .post(&url)
            .bearer_auth(token(room, Role::Kiosk, identity))
            .header("content-type", "application/sdp")
            .body(super::sdp_offer("sendonly"))
            .send()
            .await
            .unwrap();
        if r.status() != 307 {
            let u = reqwest::Url::parse(&url).unwrap();
            return (
                r.status().as_u16(),
                format!("http://{}:{}", u.host_str().unwrap(), u.port().unwrap()),
            );
        }
        url = r.headers()["location"].to_str().unwrap().to_owned();
    }
    panic!("more than 4 redirects for {room}");
}
