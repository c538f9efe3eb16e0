//! [`InviteStore`]: where a room's invite links live, so that a link is redeemed once across
//! every node of a cluster ([`RedisInviteStore`]) or of the one node ([`MemoryInviteStore`]).
//!
//! An invite is kept under its room's [`RoomKey`] (never the room name) and its public id; the
//! store holds a keyed hash of the link's secret, never the secret, and no identity. Each
//! check-and-set (create under the room's cap, redeem, revoke) is atomic: one Lua script on
//! Redis, one critical section in memory. A record is kept [`RETAIN_AFTER_EXPIRY`] past its
//! expiry so a late redemption is told "expired" (410) rather than "unknown" (404), then
//! dropped.
//!
//! ```text
//! create(room, invite, cap) ─► Created | Full(live)        (live: pending and unexpired)
//! redeem(room, id, hash, now) ─► Redeemed(invite) | Unknown | Used | Expired | Revoked
//! revoke(room, id, now) ─► Revoked | Unknown | Used | Expired
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cabine_proto::Grant;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::redis_conn::{self, bounded};
use super::room_key::RoomKey;
use super::store::StoreError;

/// How long a record outlives its expiry (to answer "expired" rather than "unknown").
pub const RETAIN_AFTER_EXPIRY: Duration = Duration::from_secs(3600);

/// Records (any state, within their retention) a room may hold, per unit of its cap of live
/// invites: minting and revoking in a loop cannot grow a room's records without bound.
pub const RECORDS_PER_LIVE: usize = 4;

/// Where an invite stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteState {
    /// Not used yet (may have expired: see `expires_at`).
    Pending,
    /// Exchanged for a token, once.
    Redeemed,
    /// Withdrawn by a doctor of the room.
    Revoked,
}

/// An invite as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInvite {
    /// Public id (lists, revocation, audit).
    pub id: String,
    /// Keyed hash of the link's secret (hex).
    pub secret_hash: String,
    /// Who is invited: `specialist`, `interpreter`, `orthoptist`.
    pub kind: String,
    /// The grants the invitee's token carries.
    pub grants: Vec<Grant>,
    /// When the link stops working, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Where it stands.
    pub state: InviteState,
}

impl StoredInvite {
    /// Whether it still counts against the room's cap at `now` (pending and unexpired).
    pub fn is_live(&self, now: u64) -> bool {
        self.state == InviteState::Pending && self.expires_at > now
    }
}

/// The outcome of [`InviteStore::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Stored.
    Created,
    /// The room already has this many live invites (the cap), or too many records: not
    /// stored.
    Full(usize),
}

/// The outcome of [`InviteStore::redeem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redemption {
    /// This call redeemed it (no other call ever will).
    Redeemed(StoredInvite),
    /// No such invite in the room, or the secret does not match.
    Unknown,
    /// Redeemed before.
    Used,
    /// Past its expiry.
    Expired,
    /// Withdrawn.
    Revoked,
}

/// The outcome of [`InviteStore::revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// This call revoked it.
    Revoked,
    /// No such invite in the room.
    Unknown,
    /// Redeemed already (the token is out).
    Used,
    /// Past its expiry, or revoked before: nothing left to withdraw.
    Expired,
}

/// The store of invite links.
pub trait InviteStore: Send + Sync + 'static {
    /// Stores `invite` for `room` unless the room holds `cap` live invites at `now` already
    /// (or `cap` × [`RECORDS_PER_LIVE`] records in any state); drops the room's records past
    /// their retention on the way.
    fn create(
        &self,
        room: &RoomKey,
        invite: &StoredInvite,
        cap: usize,
        now: u64,
    ) -> BoxFuture<'_, Result<Created, StoreError>>;

    /// The room's invites (every state), oldest expiry first.
    fn list(&self, room: &RoomKey) -> BoxFuture<'_, Result<Vec<StoredInvite>, StoreError>>;

    /// Redeems invite `id` of `room` whose secret hashes to `secret_hash`, atomically: of
    /// concurrent calls on any node, at most one gets [`Redemption::Redeemed`].
    fn redeem(
        &self,
        room: &RoomKey,
        id: &str,
        secret_hash: &str,
        now: u64,
    ) -> BoxFuture<'_, Result<Redemption, StoreError>>;

    /// Revokes invite `id` of `room` if it is pending and unexpired at `now`.
    fn revoke(
        &self,
        room: &RoomKey,
        id: &str,
        now: u64,
    ) -> BoxFuture<'_, Result<Revocation, StoreError>>;
}

/// An in-memory [`InviteStore`] (one node, and the tests).
#[derive(Debug, Default)]
pub struct MemoryInviteStore {
    rooms: Mutex<HashMap<RoomKey, HashMap<String, StoredInvite>>>,
}

impl MemoryInviteStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomKey, HashMap<String, StoredInvite>>> {
        // Every operation is one map update: a poisoned lock is still consistent.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl InviteStore for MemoryInviteStore {
    fn create(
        &self,
        room: &RoomKey,
        invite: &StoredInvite,
        cap: usize,
        now: u64,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        let mut rooms = self.lock();
        // Rooms whose records are all past retention go too, so the map stays bounded.
        let retain = RETAIN_AFTER_EXPIRY.as_secs();
        rooms.retain(|_, invites| {
            invites.retain(|_, i| i.expires_at + retain > now);
            !invites.is_empty()
        });
        let invites = rooms.entry(room.clone()).or_default();
        let live = invites.values().filter(|i| i.is_live(now)).count();
        let r = if live >= cap || invites.len() >= cap.saturating_mul(RECORDS_PER_LIVE) {
            Created::Full(live)
        } else {
            invites.insert(invite.id.clone(), invite.clone());
            Created::Created
        };
        async { Ok(r) }.boxed()
    }

    fn list(&self, room: &RoomKey) -> BoxFuture<'_, Result<Vec<StoredInvite>, StoreError>> {
        let mut v: Vec<StoredInvite> = self
            .lock()
            .get(room)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
        async { Ok(v) }.boxed()
    }

    fn redeem(
        &self,
        room: &RoomKey,
        id: &str,
        secret_hash: &str,
        now: u64,
    ) -> BoxFuture<'_, Result<Redemption, StoreError>> {
        let mut rooms = self.lock();
        let r = match rooms.get_mut(room).and_then(|m| m.get_mut(id)) {
            Some(i) if i.secret_hash == secret_hash => match i.state {
                InviteState::Revoked => Redemption::Revoked,
                InviteState::Redeemed => Redemption::Used,
                InviteState::Pending if i.expires_at <= now => Redemption::Expired,
                InviteState::Pending => {
                    i.state = InviteState::Redeemed;
                    Redemption::Redeemed(i.clone())
                }
            },
            _ => Redemption::Unknown,
        };
        async { Ok(r) }.boxed()
    }

    fn revoke(
        &self,
        room: &RoomKey,
        id: &str,
        now: u64,
    ) -> BoxFuture<'_, Result<Revocation, StoreError>> {
        let mut rooms = self.lock();
        let r = match rooms.get_mut(room).and_then(|m| m.get_mut(id)) {
            None => Revocation::Unknown,
            Some(i) => match i.state {
                InviteState::Redeemed => Revocation::Used,
                InviteState::Revoked => Revocation::Expired,
                InviteState::Pending if i.expires_at <= now => Revocation::Expired,
                InviteState::Pending => {
                    i.state = InviteState::Revoked;
                    Revocation::Revoked
                }
            },
        };
        async { Ok(r) }.boxed()
    }
}

/// Create: prune records past retention (ARGV[4]), count live ones, store under the cap.
/// KEYS[1] the room's hash; ARGV: id, record JSON, cap, now, retention (s), record expiry,
/// most records.
const CREATE: &str = r"
local now, retain = tonumber(ARGV[4]), tonumber(ARGV[5])
local live, total = 0, 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, r = pcall(cjson.decode, all[i + 1])
  if not ok or type(r) ~= 'table' or type(r.expires_at) ~= 'number'
     or r.expires_at + retain <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    total = total + 1
    if r.state == 'pending' and r.expires_at > now then live = live + 1 end
  end
end
if live >= tonumber(ARGV[3]) or total >= tonumber(ARGV[7]) then return live end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
local want = (tonumber(ARGV[6]) + retain - now) * 1000
if ttl < want then redis.call('PEXPIRE', KEYS[1], want) end
return -1
";

/// Redeem: check the secret's hash, the state and the expiry; mark redeemed.
/// KEYS[1] the room's hash; ARGV: id, secret hash, now. Returns a status, and the record.
const REDEEM: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {'unknown', ''} end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' or r.secret_hash ~= ARGV[2] then return {'unknown', ''} end
if r.state == 'revoked' then return {'revoked', ''} end
if r.state == 'redeemed' then return {'used', ''} end
if r.expires_at <= tonumber(ARGV[3]) then return {'expired', ''} end
r.state = 'redeemed'
local out = cjson.encode(r)
redis.call('HSET', KEYS[1], ARGV[1], out)
return {'redeemed', out}
";

/// Revoke: only a pending, unexpired invite. KEYS[1] the room's hash; ARGV: id, now.
const REVOKE: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 'unknown' end
local ok, r = pcall(cjson.decode, v)
if not ok or type(r) ~= 'table' then return 'unknown' end
if r.state == 'redeemed' then return 'used' end
if r.state == 'revoked' or r.expires_at <= tonumber(ARGV[2]) then return 'expired' end
r.state = 'revoked'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
return 'revoked'
";

/// The invites on Redis 7 or Valkey: one hash per room, `cabine:invites:<room key>`, field
/// = invite id, value = the record as JSON; the hash expires with its last record's
/// retention.
#[derive(Clone)]
pub struct RedisInviteStore {
    conn: ConnectionManager,
    create: Script,
    redeem: Script,
    revoke: Script,
}

impl std::fmt::Debug for RedisInviteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisInviteStore")
    }
}

impl RedisInviteStore {
    /// A store on `url`, connected lazily (like [`super::RedisStore::new`]). Must be called
    /// inside a tokio runtime.
    pub fn new(url: &str) -> Result<RedisInviteStore, String> {
        let conn = redis_conn::connect(url)?;
        Ok(RedisInviteStore {
            conn,
            create: Script::new(CREATE),
            redeem: Script::new(REDEEM),
            revoke: Script::new(REVOKE),
        })
    }
}

fn key(room: &RoomKey) -> String {
    format!("cabine:invites:{}", room.as_str())
}

fn parse(raw: &str) -> Result<StoredInvite, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Protocol(format!("invite record: {e}")))
}

impl InviteStore for RedisInviteStore {
    fn create(
        &self,
        room: &RoomKey,
        invite: &StoredInvite,
        cap: usize,
        now: u64,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        let mut c = self.conn.clone();
        let (k, id, expires) = (key(room), invite.id.clone(), invite.expires_at);
        let json = serde_json::to_string(invite).unwrap_or_default();
        async move {
            let live: i64 = bounded(
                self.create
                    .key(&k)
                    .arg(&id)
                    .arg(&json)
                    .arg(cap)
                    .arg(now)
                    .arg(RETAIN_AFTER_EXPIRY.as_secs())
                    .arg(expires)
                    .arg(cap.saturating_mul(RECORDS_PER_LIVE))
                    .invoke_async(&mut c),
            )
            .await?;
            Ok(match usize::try_from(live) {
                Ok(n) => Created::Full(n),
                Err(_) => Created::Created,
            })
        }
        .boxed()
    }

    fn list(&self, room: &RoomKey) -> BoxFuture<'_, Result<Vec<StoredInvite>, StoreError>> {
        let mut c = self.conn.clone();
        let k = key(room);
        async move {
            let all: HashMap<String, String> =
                bounded(redis::cmd("HGETALL").arg(&k).query_async(&mut c)).await?;
            // A record that does not parse is left out (the next create prunes it).
            let mut v: Vec<StoredInvite> = all.values().filter_map(|r| parse(r).ok()).collect();
            v.sort_by(|a, b| (a.expires_at, &a.id).cmp(&(b.expires_at, &b.id)));
            Ok(v)
        }
        .boxed()
    }

    fn redeem(
        &self,
        room: &RoomKey,
        id: &str,
        secret_hash: &str,
        now: u64,
    ) -> BoxFuture<'_, Result<Redemption, StoreError>> {
        let mut c = self.conn.clone();
        let (k, id, hash) = (key(room), id.to_owned(), secret_hash.to_owned());
        async move {
            let (status, raw): (String, String) = bounded(
                self.redeem
                    .key(&k)
                    .arg(&id)
                    .arg(&hash)
                    .arg(now)
                    .invoke_async(&mut c),
            )
            .await?;
            Ok(match status.as_str() {
                "redeemed" => Redemption::Redeemed(parse(&raw)?),
                "used" => Redemption::Used,
                "expired" => Redemption::Expired,
                "revoked" => Redemption::Revoked,
                _ => Redemption::Unknown,
            })
        }
        .boxed()
    }

    fn revoke(
        &self,
        room: &RoomKey,
        id: &str,
        now: u64,
    ) -> BoxFuture<'_, Result<Revocation, StoreError>> {
        let mut c = self.conn.clone();
        let (k, id) = (key(room), id.to_owned());
        async move {
            let status: String =
                bounded(self.revoke.key(&k).arg(&id).arg(now).invoke_async(&mut c)).await?;
            Ok(match status.as_str() {
                "revoked" => Revocation::Revoked,
                "used" => Revocation::Used,
                "expired" => Revocation::Expired,
                _ => Revocation::Unknown,
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cabine_proto::RoomId;

    use super::super::conformance::TestRedis;
    use super::super::RoomKeyer;
    use super::*;

    fn invite(id: &str, expires_at: u64) -> StoredInvite {
        StoredInvite {
            id: id.into(),
            secret_hash: format!("h-{id}"),
            kind: "specialist".into(),
            grants: vec![Grant::Subscribe, Grant::Commands],
            expires_at,
            state: InviteState::Pending,
        }
    }

    /// The semantics every store keeps.
    async fn suite(store: Arc<dyn InviteStore>) {
        let keyer = RoomKeyer::new(b"invites");
        let r1 = keyer.key(&RoomId::parse("room-1").unwrap());
        let r2 = keyer.key(&RoomId::parse("room-2").unwrap());
        let now = 1_000_000;
        // Under the cap per room, live invites only.
        assert_eq!(
            store
                .create(&r1, &invite("a", now + 60), 2, now)
                .await
                .unwrap(),
            Created::Created
        );
        assert_eq!(
            store
                .create(&r1, &invite("b", now + 30), 2, now)
                .await
                .unwrap(),
            Created::Created
        );
        assert_eq!(
            store
                .create(&r1, &invite("c", now + 60), 2, now)
                .await
                .unwrap(),
            Created::Full(2)
        );
        assert_eq!(
            store
                .create(&r2, &invite("c", now + 60), 2, now)
                .await
                .unwrap(),
            Created::Created
        );
        let ids = |v: Vec<StoredInvite>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list(&r1).await.unwrap()), ["b", "a"]);

        // Redeemed once; a wrong secret or another room is unknown.
        assert_eq!(
            store.redeem(&r1, "a", "wrong", now).await.unwrap(),
            Redemption::Unknown
        );
        assert_eq!(
            store.redeem(&r2, "a", "h-a", now).await.unwrap(),
            Redemption::Unknown
        );
        let Redemption::Redeemed(got) = store.redeem(&r1, "a", "h-a", now).await.unwrap() else {
            panic!("first redemption")
        };
        assert_eq!((got.state, got.grants.len()), (InviteState::Redeemed, 2));
        assert_eq!(
            store.redeem(&r1, "a", "h-a", now).await.unwrap(),
            Redemption::Used
        );
        // A redeemed invite no longer counts against the cap.
        assert_eq!(
            store
                .create(&r1, &invite("d", now + 60), 2, now)
                .await
                .unwrap(),
            Created::Created
        );
        // Expired: refused as such, cannot be revoked; revoked: refused as such.
        assert_eq!(
            store.redeem(&r1, "b", "h-b", now + 30).await.unwrap(),
            Redemption::Expired
        );
        assert_eq!(
            store.revoke(&r1, "b", now + 30).await.unwrap(),
            Revocation::Expired
        );
        assert_eq!(
            store.revoke(&r1, "d", now).await.unwrap(),
            Revocation::Revoked
        );
        assert_eq!(
            store.redeem(&r1, "d", "h-d", now).await.unwrap(),
            Redemption::Revoked
        );
        assert_eq!(store.revoke(&r1, "a", now).await.unwrap(), Revocation::Used);
        assert_eq!(
            store.revoke(&r1, "zz", now).await.unwrap(),
            Revocation::Unknown
        );
        // Past retention, records are dropped at the next create.
        let later = now + 60 + RETAIN_AFTER_EXPIRY.as_secs();
        assert_eq!(
            store
                .create(&r1, &invite("e", later + 60), 2, later)
                .await
                .unwrap(),
            Created::Created
        );
        assert_eq!(ids(store.list(&r1).await.unwrap()), ["e"]);

        // Revoked and redeemed records do not count as live, but their number is bounded too.
        let r3 = keyer.key(&RoomId::parse("room-3").unwrap());
        let mut created = 0;
        for n in 0..20 {
            let id = format!("r{n}");
            if store
                .create(&r3, &invite(&id, now + 60), 2, now)
                .await
                .unwrap()
                == Created::Created
            {
                created += 1;
                assert_eq!(
                    store.revoke(&r3, &id, now).await.unwrap(),
                    Revocation::Revoked
                );
            }
        }
        assert_eq!(created, 2 * RECORDS_PER_LIVE);

        // Concurrent redemptions: exactly one wins.
        assert_eq!(
            store
                .create(&r2, &invite("f", now + 60), 9, now)
                .await
                .unwrap(),
            Created::Created
        );
        let tries = (0..8).map(|_| {
            let s = Arc::clone(&store);
            let r2 = r2.clone();
            tokio::spawn(async move { s.redeem(&r2, "f", "h-f", now).await.unwrap() })
        });
        let mut won = 0;
        for t in tries {
            match t.await.unwrap() {
                Redemption::Redeemed(_) => won += 1,
                Redemption::Used => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_keeps_the_semantics() {
        suite(Arc::new(MemoryInviteStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_keeps_the_semantics_and_hides_the_room() {
        let redis = TestRedis::start();
        let store = Arc::new(RedisInviteStore::new(&redis.url()).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store
            .list(&RoomKeyer::new(b"x").key(&RoomId::parse("r").unwrap()))
            .await
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "redis-server answers");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        suite(Arc::clone(&store) as Arc<dyn InviteStore>).await;
        // Keys name the room's hash, never the room; records hold no secret.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("cabine:invites:*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        assert!(keys.iter().all(|k| !k.contains("room")), "{keys:?}");
    }
}
