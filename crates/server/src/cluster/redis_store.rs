//! [`RedisStore`]: the cluster store on Redis 7 or Valkey (only commands both have: `SET` with
//! `PX`/`NX`, `GET`, `DEL`, `MGET`, `SADD`, `SREM`, `SMEMBERS`, `EVALSHA`/`EVAL`).
//!
//! Keys (prefix `cabine:`): `node:<id>` (the record, JSON, with a TTL), `nodes` (a set of ids,
//! pruned of those whose record expired), `room:<key>` (a lease `<node> <weight>`, with a
//! TTL). Every check-and-set is one Lua script, so it is atomic.
//!
//! The connection is lazy and reconnects by itself: a node starts (degraded) with its Redis
//! down, and every call is bounded by [`OP_TIMEOUT`](super::redis_conn::OP_TIMEOUT), so a
//! stalled Redis never stalls a request (both in [`super::redis_conn`], shared with the other
//! Redis-backed stores).

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::record::{NodeList, NodeRecord};
use super::redis_conn::{self, bounded, millis};
use super::room_key::RoomKey;
use super::store::{ClusterStore, Renewal, StoreError};

const PREFIX: &str = "cabine:";

/// Place: keep a live lease (unless held by ARGV[3], a dead node), else take it.
const PLACE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local owner = string.match(v, '^(%S+) %d+$')
  if owner and owner ~= ARGV[3] then return owner end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' 0', 'PX', ARGV[2])
return ARGV[1]
";

/// Renew: own lease or none: (re)set; another's: the higher weight, then the smaller id wins.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local owner, w = string.match(v, '^(%S+) (%d+)$')
  if owner and owner ~= ARGV[1] then
    local mine, theirs = tonumber(ARGV[2]), tonumber(w)
    if not (mine > theirs or (mine == theirs and ARGV[1] < owner)) then return owner end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3])
return ''
";

/// Release: only one's own lease.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^(%S+) %d+$') == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// The Redis (or Valkey) store.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    place: Script,
    renew: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore")
    }
}

impl RedisStore {
    /// A store on `url`, connected lazily (the URL is checked now: a malformed one is an
    /// error; an unreachable server is not, calls fail until it answers). Must be called
    /// inside a tokio runtime.
    pub fn new(url: &str) -> Result<RedisStore, String> {
        let conn = redis_conn::connect(url)?;
        Ok(RedisStore {
            conn,
            place: Script::new(PLACE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        })
    }
}

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}

fn room_key(room: &RoomKey) -> String {
    format!("{PREFIX}room:{}", room.as_str())
}

impl ClusterStore for RedisStore {
    fn register(&self, node: &NodeRecord, ttl: Duration) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut c = self.conn.clone();
        let (key, value, id) = (node_key(&node.id), node.to_json(), node.id.clone());
        async move {
            bounded(async {
                redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("PX")
                    .arg(millis(ttl))
                    .ignore()
                    .sadd(format!("{PREFIX}nodes"), &id)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
        }
        .boxed()
    }

    fn deregister(&self, node: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut c = self.conn.clone();
        let (key, id) = (node_key(node), node.to_owned());
        async move {
            bounded(async {
                redis::pipe()
                    .del(&key)
                    .ignore()
                    .srem(format!("{PREFIX}nodes"), &id)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
        }
        .boxed()
    }

    fn nodes(&self) -> BoxFuture<'_, Result<NodeList, StoreError>> {
        let mut c = self.conn.clone();
        async move {
            let ids: Vec<String> = bounded(c.smembers(format!("{PREFIX}nodes"))).await?;
            let mut list = NodeList::default();
            if ids.is_empty() {
                return Ok(list);
            }
            let keys: Vec<String> = ids.iter().map(|i| node_key(i)).collect();
            let raws: Vec<Option<Vec<u8>>> =
                bounded(redis::cmd("MGET").arg(&keys).query_async(&mut c)).await?;
            let mut gone = Vec::new();
            for (id, raw) in ids.iter().zip(raws) {
                match raw {
                    None => gone.push(id.clone()),
                    Some(raw) => match NodeRecord::parse(&raw) {
                        Some(r) if r.id == *id => list.nodes.push(r),
                        _ => list.invalid += 1,
                    },
                }
            }
            if !gone.is_empty() {
                // Records that expired (dead nodes): prune the set. Best effort; the next
                // read prunes what this one did not.
                let _ = bounded(c.srem::<_, _, ()>(format!("{PREFIX}nodes"), &gone)).await;
            }
            list.nodes.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(list)
        }
        .boxed()
    }

    fn place(
        &self,
        room: &RoomKey,
        node: &str,
        lease: Duration,
        replace: Option<&str>,
    ) -> BoxFuture<'_, Result<String, StoreError>> {
        let mut c = self.conn.clone();
        let (key, node, replace) = (
            room_key(room),
            node.to_owned(),
            replace.unwrap_or("").to_owned(),
        );
        async move {
            bounded(
                self.place
                    .key(&key)
                    .arg(&node)
                    .arg(millis(lease))
                    .arg(&replace)
                    .invoke_async(&mut c),
            )
            .await
        }
        .boxed()
    }

    fn renew(
        &self,
        room: &RoomKey,
        node: &str,
        weight: u32,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Renewal, StoreError>> {
        let mut c = self.conn.clone();
        let (key, node) = (room_key(room), node.to_owned());
        async move {
            let owner: String = bounded(
                self.renew
                    .key(&key)
                    .arg(&node)
                    .arg(weight)
                    .arg(millis(lease))
                    .invoke_async(&mut c),
            )
            .await?;
            Ok(if owner.is_empty() {
                Renewal::Held
            } else {
                Renewal::Lost { owner }
            })
        }
        .boxed()
    }

    fn release(&self, room: &RoomKey, node: &str) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut c = self.conn.clone();
        let (key, node) = (room_key(room), node.to_owned());
        async move { bounded(self.release.key(&key).arg(&node).invoke_async::<()>(&mut c)).await }
            .boxed()
    }

    fn owner(&self, room: &RoomKey) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let mut c = self.conn.clone();
        let key = room_key(room);
        async move {
            let v: Option<String> = bounded(c.get(&key)).await?;
            Ok(v.as_deref()
                .and_then(super::store::parse_lease)
                .map(|(o, _)| o.to_owned()))
        }
        .boxed()
    }
}
