//! [`RedisQueueStore`]: the [`QueueStore`] on Redis 7 or Valkey, on the same connection
//! settings as the cluster store ([`super::redis_conn`]: lazy, reconnecting, every call
//! bounded by [`redis_conn::OP_TIMEOUT`]).
//!
//! Keys (prefix `cabine:q:`): `t:<id>` (a ticket, a hash, expiring), `waiting` (a sorted set of
//! waiting ticket ids), `k:<kiosk key>` (a kiosk's waiting ticket id), `handling` (a list of
//! recent handling times), `fleet:<kiosk key>` (a kiosk's presence, a hash, expiring) and
//! `fleet` (a set of kiosk keys). Creating a ticket and moving it out of the queue are Lua
//! scripts, so each is atomic: two takes of one ticket on two nodes cannot both succeed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::queue_store::{Created, Leave, QueueStore, TicketRecord, TicketState, Transition};
use super::redis_conn::{self, bounded, millis};
use super::store::StoreError;

const PREFIX: &str = "cabine:q:";

/// Create: the kiosk's live waiting ticket if any; else its previous ticket (taken,
/// cancelled, expired) is deleted, and the new one refused when `max_waiting` wait or
/// `max_records` records are kept (KEYS[4]: every record by its latest expiry), else queued.
const CREATE: &str = r"
local cur = redis.call('GET', KEYS[2])
if cur then
  local st = redis.call('HGET', 'cabine:q:t:' .. cur, 'state')
  if st == 'waiting' then return {'exists', cur} end
  redis.call('DEL', 'cabine:q:t:' .. cur)
  redis.call('ZREM', KEYS[4], cur)
end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return {'full'} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[4])
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[5]) then return {'records'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
return {'new'}
";

/// Transition: only a waiting ticket leaves the queue, once.
const TRANSITION: &str = r"
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 'unknown' end
if st ~= 'waiting' then return 'not_waiting' end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'ended_ms', ARGV[3], 'room', ARGV[4], 'doctor', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', tonumber(ARGV[3]) + tonumber(ARGV[6]), ARGV[1])
return 'done'
";

/// Flag: a waiting ticket not flagged yet.
const FLAG: &str = r"
if redis.call('HGET', KEYS[1], 'state') == 'waiting' and redis.call('HGET', KEYS[1], 'flagged') == '0' then
  redis.call('HSET', KEYS[1], 'flagged', '1')
  return 1
end
return 0
";

/// The Redis (or Valkey) queue store.
#[derive(Clone)]
pub struct RedisQueueStore {
    conn: ConnectionManager,
    create: Script,
    transition: Script,
    flag: Script,
}

impl std::fmt::Debug for RedisQueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisQueueStore")
    }
}

impl RedisQueueStore {
    /// A store on `url`, connected lazily (a malformed URL is an error, an unreachable server
    /// is not: calls fail until it answers). Must be called inside a tokio runtime.
    pub fn new(url: &str) -> Result<RedisQueueStore, String> {
        let conn = redis_conn::connect(url)?;
        Ok(RedisQueueStore {
            conn,
            create: Script::new(CREATE),
            transition: Script::new(TRANSITION),
            flag: Script::new(FLAG),
        })
    }
}

fn ticket_key(id: &str) -> String {
    format!("{PREFIX}t:{id}")
}

fn waiting_key() -> String {
    format!("{PREFIX}waiting")
}

fn records_key() -> String {
    format!("{PREFIX}records")
}

fn fleet_key(key: &str) -> String {
    format!("{PREFIX}fleet:{key}")
}

fn room_subject_key(room: &str) -> String {
    format!("{PREFIX}rs:{room}")
}

impl RedisQueueStore {
    async fn record(&self, id: &str) -> Result<Option<TicketRecord>, StoreError> {
        let mut c = self.conn.clone();
        let f: HashMap<String, String> = bounded(c.hgetall(ticket_key(id))).await?;
        if f.is_empty() {
            return Ok(None);
        }
        TicketRecord::from_fields(&f)
            .map(Some)
            .ok_or_else(|| StoreError::Protocol("a ticket record does not parse".into()))
    }
}

impl QueueStore for RedisQueueStore {
    fn create(
        &self,
        ticket: &TicketRecord,
        max_waiting: usize,
        max_records: usize,
        life: Duration,
    ) -> BoxFuture<'_, Result<Created, StoreError>> {
        let ticket = ticket.clone();
        async move {
            let mut c = self.conn.clone();
            let mut inv = self.create.prepare_invoke();
            inv.key(ticket_key(&ticket.id))
                .key(format!("{PREFIX}k:{}", ticket.kiosk_key))
                .key(waiting_key())
                .key(records_key())
                .arg(&ticket.id)
                .arg(max_waiting)
                .arg(millis(life))
                .arg(ticket.created_ms)
                .arg(max_records);
            for (k, v) in ticket.to_fields() {
                inv.arg(k).arg(v);
            }
            let answer: Vec<String> = bounded(inv.invoke_async(&mut c)).await?;
            match answer.first().map(String::as_str) {
                Some("new") => Ok(Created::New),
                Some("full") => Ok(Created::Full),
                Some("records") => Ok(Created::TooManyRecords),
                Some("exists") => {
                    let id = answer.get(1).cloned().unwrap_or_default();
                    match self.record(&id).await? {
                        Some(t) => Ok(Created::Exists(Box::new(t))),
                        // Gone between the two calls: the kiosk may queue again.
                        None => Err(StoreError::Unreachable("the ticket just expired".into())),
                    }
                }
                _ => Err(StoreError::Protocol("unexpected create answer".into())),
            }
        }
        .boxed()
    }

    fn get(&self, id: &str) -> BoxFuture<'_, Result<Option<TicketRecord>, StoreError>> {
        let id = id.to_owned();
        async move { self.record(&id).await }.boxed()
    }

    fn waiting(&self) -> BoxFuture<'_, Result<Vec<TicketRecord>, StoreError>> {
        async move {
            let mut c = self.conn.clone();
            let ids: Vec<String> = bounded(c.zrange(waiting_key(), 0, -1)).await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(ticket_key(id));
            }
            let all: Vec<HashMap<String, String>> = bounded(pipe.query_async(&mut c)).await?;
            let mut out = Vec::with_capacity(ids.len());
            let mut stale = Vec::new();
            for (id, f) in ids.iter().zip(all) {
                match TicketRecord::from_fields(&f) {
                    Some(t) if t.state == TicketState::Waiting => out.push(t),
                    _ => stale.push(id.clone()),
                }
            }
            if !stale.is_empty() {
                // Records that expired or do not parse: out of the queue (best effort).
                let _ = bounded(c.zrem::<_, _, ()>(waiting_key(), &stale)).await;
            }
            Ok(out)
        }
        .boxed()
    }

    fn transition(
        &self,
        id: &str,
        leave: &Leave,
        keep: Duration,
    ) -> BoxFuture<'_, Result<Transition, StoreError>> {
        let (id, leave) = (id.to_owned(), leave.clone());
        async move {
            let mut c = self.conn.clone();
            let answer: String = bounded(
                self.transition
                    .key(ticket_key(&id))
                    .key(waiting_key())
                    .key(records_key())
                    .arg(&id)
                    .arg(leave.state.as_str())
                    .arg(leave.at_ms)
                    .arg(&leave.room)
                    .arg(&leave.doctor)
                    .arg(millis(keep))
                    .invoke_async(&mut c),
            )
            .await?;
            if answer == "unknown" {
                return Ok(Transition::Unknown);
            }
            let Some(t) = self.record(&id).await? else {
                return Ok(Transition::Unknown);
            };
            Ok(match answer.as_str() {
                "done" => Transition::Done(Box::new(t)),
                _ => Transition::NotWaiting(Box::new(t)),
            })
        }
        .boxed()
    }

    fn flag(&self, id: &str) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = ticket_key(id);
        async move {
            let mut c = self.conn.clone();
            let set: i64 = bounded(self.flag.key(&key).invoke_async(&mut c)).await?;
            Ok(set == 1)
        }
        .boxed()
    }

    fn push_handling(&self, ms: u64, window: usize) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let mut c = self.conn.clone();
            let key = format!("{PREFIX}handling");
            let last = isize::try_from(window.max(1)).unwrap_or(isize::MAX) - 1;
            bounded(
                redis::pipe()
                    .lpush(&key, ms)
                    .ignore()
                    .ltrim(&key, 0, last)
                    .ignore()
                    .query_async::<()>(&mut c),
            )
            .await
        }
        .boxed()
    }

    fn handling(&self) -> BoxFuture<'_, Result<Vec<u64>, StoreError>> {
        async move {
            let mut c = self.conn.clone();
            bounded(c.lrange(format!("{PREFIX}handling"), 0, -1)).await
        }
        .boxed()
    }

    fn touch_kiosk(
        &self,
        key: &str,
        fields: &[(&'static str, String)],
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (key, fields) = (key.to_owned(), fields.to_vec());
        async move {
            let mut c = self.conn.clone();
            let hash = fleet_key(&key);
            let mut pipe = redis::pipe();
            if !fields.is_empty() {
                pipe.hset_multiple(&hash, &fields).ignore();
            }
            pipe.pexpire(&hash, i64::try_from(millis(ttl)).unwrap_or(i64::MAX))
                .ignore()
                .sadd(format!("{PREFIX}fleet"), &key)
                .ignore();
            bounded(pipe.query_async::<()>(&mut c)).await
        }
        .boxed()
    }

    fn kiosks(&self) -> BoxFuture<'_, Result<Vec<HashMap<String, String>>, StoreError>> {
        async move {
            let mut c = self.conn.clone();
            let keys: Vec<String> = bounded(c.smembers(format!("{PREFIX}fleet"))).await?;
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.hgetall(fleet_key(k));
            }
            let all: Vec<HashMap<String, String>> = bounded(pipe.query_async(&mut c)).await?;
            let mut out = Vec::with_capacity(keys.len());
            let mut gone = Vec::new();
            for (k, f) in keys.iter().zip(all) {
                if f.is_empty() {
                    gone.push(k.clone());
                } else {
                    out.push(f);
                }
            }
            if !gone.is_empty() {
                let _ = bounded(c.srem::<_, _, ()>(format!("{PREFIX}fleet"), &gone)).await;
            }
            Ok(out)
        }
        .boxed()
    }

    fn set_room_subject(
        &self,
        room: &str,
        subject: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let (key, subject) = (room_subject_key(room), subject.to_owned());
        async move {
            let mut c = self.conn.clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg(&subject).arg("PX").arg(millis(ttl));
            let _: () = bounded(cmd.query_async(&mut c)).await?;
            Ok(())
        }
        .boxed()
    }

    fn room_subject(&self, room: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let key = room_subject_key(room);
        async move {
            let mut c = self.conn.clone();
            let v: Option<String> = bounded(c.get(&key)).await?;
            Ok(v)
        }
        .boxed()
    }
}
