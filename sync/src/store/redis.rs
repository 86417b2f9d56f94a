//! The shared store: several nodes on one Redis. Key schema and guarantees: `docs/sync.md`.
//!
//! - State changes are a Lua script: compare the version, write the state, take the next
//!   sequence number, append to the party's log stream and remember the op id, atomically.
//!   Of two nodes' concurrent commands on the same version exactly one wins.
//! - The log is one stream per party whose entry ids are the sequence numbers (`seq-0`), so
//!   resuming after `seq` is one `XRANGE`.
//! - One reader task per node follows the logs and presence streams of the parties it
//!   watches (`XREAD BLOCK` on its own connection) and feeds what it reads to the node.
//! - When Redis goes away every call fails fast with [`StoreError::Unavailable`], the feed
//!   says so once, and the reader retries until Redis is back, then continues from its
//!   cursors: nothing committed is skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, RedisError, Script};
use tokio::sync::{Notify, mpsc};

use super::{Committed, Feed, Store, StoreConfig, StoreError, Stored};
use crate::model::{
    Event, EventBody, MemberId, MemberRecord, NewEvent, PartyId, Presence, SharedState,
};

/// A command waits this long for Redis before the caller is told sync is unavailable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The reader blocks this long per `XREAD`: the delay before a newly watched party is read.
/// Events are not lost meanwhile; the cursor starts where the caller's load ended.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// Entries per `XREAD` and per stream.
const READ_COUNT: usize = 256;
/// Pause between reconnection attempts of the reader while Redis is away.
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// Presence-stream entries kept: only the latest matter, they are refreshed continually.
const PRESENCE_STREAM_LEN: usize = 128;

const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
-- A party re-created after Redis lost its data continues its sequence, never repeats it.
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq < tonumber(ARGV[3]) then redis.call('SET', KEYS[2], ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"#;

/// KEYS: state, seq, log, op. ARGV: expected version ('' to append without compare), new
/// version, state json, event json, log length, op ttl, party ttl.
const WRITE: &str = r#"
local dup = redis.call('GET', KEYS[4])
if dup then return {'dup', tonumber(dup)} end
local version = redis.call('HGET', KEYS[1], 'version')
if not version then return {'missing', 0} end
if ARGV[1] ~= '' then
  if tonumber(version) ~= tonumber(ARGV[1]) then return {'conflict', tonumber(version)} end
  redis.call('HSET', KEYS[1], 'version', ARGV[2], 'json', ARGV[3])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'e', ARGV[4])
redis.call('SET', KEYS[4], seq, 'EX', ARGV[6])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[7]) end
return {'ok', seq}
"#;

pub struct RedisStore {
    config: StoreConfig,
    conn: ConnectionManager,
    shared: Arc<Shared>,
    create: Script,
    write: Script,
    feed: Mutex<Option<mpsc::UnboundedReceiver<Feed>>>,
    reader: tokio::task::JoinHandle<()>,
}

struct Shared {
    watched: Mutex<HashMap<PartyId, Cursor>>,
    wake: Notify,
    available: AtomicBool,
    feed: mpsc::UnboundedSender<Feed>,
}

#[derive(Debug, Clone)]
struct Cursor {
    /// Last log sequence number fed.
    log: u64,
    /// Last presence-stream id read; `None` until the reader looked up the stream's end.
    presence: Option<String>,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`). Only a malformed URL fails: an unreachable
    /// Redis makes the store start unavailable and recover when Redis appears.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            watched: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            available: AtomicBool::new(true),
            feed: tx,
        });
        let reader = tokio::spawn(read_feeds(client, shared.clone()));
        let store = Self {
            config,
            conn,
            shared,
            create: Script::new(CREATE),
            write: Script::new(WRITE),
            feed: Mutex::new(Some(rx)),
            reader,
        };
        let mut conn = store.conn.clone();
        if let Err(err) = redis::cmd("PING").query_async::<String>(&mut conn).await {
            tracing::warn!(%err, "redis is not reachable yet; sync is unavailable until it is");
            store.shared.mark(false);
        }
        Ok(store)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Maps a Redis result, keeping the availability flag current.
    fn check<T>(&self, result: Result<T, RedisError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.shared.mark(true);
                Ok(value)
            }
            Err(err) => {
                self.shared.mark(false);
                Err(StoreError::Unavailable(err.to_string()))
            }
        }
    }

    async fn write(
        &self,
        party: &PartyId,
        event: &NewEvent,
        expected: Option<(u64, &SharedState)>,
    ) -> Result<Committed, StoreError> {
        let keys = Keys::new(party);
        let (expected, version, state) = match expected {
            Some((expected, state)) => (expected.to_string(), state.version, to_json(state)),
            None => (String::new(), 0, String::new()),
        };
        let op_key = keys.op(&event.from, &event.op_id);
        let mut invocation = self.write.prepare_invoke();
        invocation
            .key(&keys.state)
            .key(&keys.seq)
            .key(&keys.log)
            .key(op_key)
            .arg(expected)
            .arg(version)
            .arg(state)
            .arg(to_json(event))
            .arg(self.config.history)
            .arg(self.config.op_ttl.as_secs().max(1))
            .arg(self.config.party_ttl.as_secs().max(1));
        let (outcome, n): (String, u64) =
            self.check(invocation.invoke_async(&mut self.conn()).await)?;
        match outcome.as_str() {
            "ok" => Ok(Committed::Applied(n)),
            "dup" => Ok(Committed::Duplicate(n)),
            "conflict" => Err(StoreError::Conflict { current: n }),
            "missing" => Err(StoreError::NotFound),
            other => Err(StoreError::Corrupt(format!("write script said {other:?}"))),
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn create(&self, party: &PartyId, stored: &Stored) -> Result<bool, StoreError> {
        let keys = Keys::new(party);
        let mut invocation = self.create.prepare_invoke();
        invocation
            .key(&keys.state)
            .key(&keys.seq)
            .arg(stored.state.version)
            .arg(to_json(&stored.state))
            .arg(stored.last_seq)
            .arg(self.config.party_ttl.as_secs().max(1));
        let created: i64 = self.check(invocation.invoke_async(&mut self.conn()).await)?;
        Ok(created == 1)
    }

    async fn load(&self, party: &PartyId) -> Result<Option<Stored>, StoreError> {
        let keys = Keys::new(party);
        let (json, seq): (Option<String>, Option<u64>) = self.check(
            redis::pipe()
                .atomic()
                .hget(&keys.state, "json")
                .get(&keys.seq)
                .query_async(&mut self.conn())
                .await,
        )?;
        let Some(json) = json else { return Ok(None) };
        Ok(Some(Stored {
            state: from_json(&json)?,
            last_seq: seq.unwrap_or(0),
        }))
    }

    async fn commit(
        &self,
        party: &PartyId,
        expected_version: u64,
        event: &NewEvent,
    ) -> Result<Committed, StoreError> {
        let EventBody::State { state, .. } = &event.body else {
            return Err(StoreError::Corrupt("commit takes state events".into()));
        };
        self.write(party, event, Some((expected_version, state)))
            .await
    }

    async fn append(&self, party: &PartyId, event: &NewEvent) -> Result<Committed, StoreError> {
        if matches!(event.body, EventBody::State { .. }) {
            return Err(StoreError::Corrupt("state events need commit".into()));
        }
        self.write(party, event, None).await
    }

    async fn events_after(&self, party: &PartyId, after: u64) -> Result<Vec<Event>, StoreError> {
        let keys = Keys::new(party);
        let start = format!("{}-0", after + 1);
        let reply: StreamRangeReply = self.check(
            self.conn()
                .xrange_count(&keys.log, start, "+", self.config.history * 2)
                .await,
        )?;
        reply.ids.iter().map(parse_event).collect()
    }

    async fn recent(&self, party: &PartyId, limit: usize) -> Result<Vec<Event>, StoreError> {
        let keys = Keys::new(party);
        let reply: StreamRangeReply = self.check(
            self.conn()
                .xrevrange_count(&keys.log, "+", "-", limit)
                .await,
        )?;
        reply.ids.iter().rev().map(parse_event).collect()
    }

    async fn put_member(&self, party: &PartyId, record: &MemberRecord) -> Result<(), StoreError> {
        let keys = Keys::new(party);
        let ttl = self.config.party_ttl.as_secs().max(1) as i64;
        let _: () = self.check(
            redis::pipe()
                .atomic()
                .hset(&keys.members, &record.member_id.0, to_json(record))
                .ignore()
                .expire(&keys.members, ttl)
                .ignore()
                .query_async(&mut self.conn())
                .await,
        )?;
        Ok(())
    }

    async fn member(
        &self,
        party: &PartyId,
        member: &MemberId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        let keys = Keys::new(party);
        let json: Option<String> = self.check(self.conn().hget(&keys.members, &member.0).await)?;
        json.map(|j| from_json(&j)).transpose()
    }

    async fn put_presence(&self, party: &PartyId, presence: &Presence) -> Result<(), StoreError> {
        let keys = Keys::new(party);
        let json = to_json(presence);
        let ttl = self.config.presence_ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set_ex(keys.presence(&presence.member_id), &json, ttl)
            .ignore()
            .sadd(&keys.present, &presence.member_id.0)
            .ignore()
            .expire(&keys.present, self.config.party_ttl.as_secs().max(1) as i64)
            .ignore();
        announce(&mut pipe, &keys, "p", &json);
        let _: () = self.check(pipe.query_async(&mut self.conn()).await)?;
        Ok(())
    }

    async fn remove_presence(&self, party: &PartyId, member: &MemberId) -> Result<(), StoreError> {
        let keys = Keys::new(party);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(keys.presence(member))
            .ignore()
            .srem(&keys.present, &member.0)
            .ignore();
        announce(&mut pipe, &keys, "gone", &member.0);
        let _: () = self.check(pipe.query_async(&mut self.conn()).await)?;
        Ok(())
    }

    async fn presence(&self, party: &PartyId) -> Result<Vec<Presence>, StoreError> {
        let keys = Keys::new(party);
        let mut ids: Vec<String> = self.check(self.conn().smembers(&keys.present).await)?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let presence_keys: Vec<String> = ids
            .iter()
            .map(|id| keys.presence(&MemberId(id.clone())))
            .collect();
        let values: Vec<Option<String>> = self.check(self.conn().mget(&presence_keys).await)?;
        let mut lapsed = Vec::new();
        let mut all = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value {
                Some(json) => all.push(from_json(&json)?),
                None => lapsed.push(id.clone()),
            }
        }
        if !lapsed.is_empty() {
            // The index outlives lapsed presence keys; tidy it.
            let _: () = self.check(self.conn().srem(&keys.present, &lapsed).await)?;
        }
        Ok(all)
    }

    fn watch(&self, party: &PartyId, after_seq: u64) {
        let mut watched = self.shared.watched.lock().expect("watch lock poisoned");
        watched.entry(party.clone()).or_insert(Cursor {
            log: after_seq,
            presence: None,
        });
        self.shared.wake.notify_one();
    }

    fn unwatch(&self, party: &PartyId) {
        let mut watched = self.shared.watched.lock().expect("watch lock poisoned");
        watched.remove(party);
    }

    fn take_feed(&self) -> Option<mpsc::UnboundedReceiver<Feed>> {
        self.feed.lock().expect("feed lock poisoned").take()
    }
}

impl Shared {
    /// Records reachability; tells the node on a change.
    fn mark(&self, available: bool) {
        if self.available.swap(available, Ordering::SeqCst) != available {
            if available {
                tracing::info!("redis is reachable again; sync resumes");
            } else {
                tracing::warn!("redis is unreachable; sync is unavailable until it returns");
            }
            let _ = self.feed.send(Feed::Available(available));
        }
    }
}

/// The reader task: follows every watched party's log and presence streams.
async fn read_feeds(client: Client, shared: Arc<Shared>) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(READ_BLOCK + RESPONSE_TIMEOUT));
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        let cursors: Vec<(PartyId, Cursor)> = {
            let watched = shared.watched.lock().expect("watch lock poisoned");
            watched
                .iter()
                .map(|(p, c)| (p.clone(), c.clone()))
                .collect()
        };
        if cursors.is_empty() {
            shared.wake.notified().await;
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    shared.mark(false);
                    tokio::time::sleep(RETRY_DELAY).await;
                    continue;
                }
            },
        };
        match read_once(c, &shared, cursors).await {
            Ok(()) => shared.mark(true),
            Err(err) => {
                tracing::debug!(%err, "redis feed read failed");
                shared.mark(false);
                conn = None;
                tokio::time::sleep(RETRY_DELAY).await;
            }
        }
    }
}

async fn read_once(
    conn: &mut MultiplexedConnection,
    shared: &Shared,
    mut cursors: Vec<(PartyId, Cursor)>,
) -> Result<(), RedisError> {
    // A newly watched party's presence stream is read from its current end.
    for (party, cursor) in cursors.iter_mut().filter(|(_, c)| c.presence.is_none()) {
        let keys = Keys::new(party);
        let last: StreamRangeReply = conn
            .xrevrange_count(&keys.presence_log, "+", "-", 1)
            .await?;
        let id = last
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone());
        cursor.presence = Some(id);
    }
    let mut stream_keys = Vec::with_capacity(cursors.len() * 2);
    let mut ids = Vec::with_capacity(cursors.len() * 2);
    let mut owners = HashMap::with_capacity(cursors.len() * 2);
    for (party, cursor) in &cursors {
        let keys = Keys::new(party);
        owners.insert(keys.log.clone(), (party.clone(), true));
        owners.insert(keys.presence_log.clone(), (party.clone(), false));
        stream_keys.push(keys.log);
        ids.push(format!("{}-0", cursor.log));
        stream_keys.push(keys.presence_log);
        ids.push(cursor.presence.clone().expect("set above"));
    }
    let options = StreamReadOptions::default()
        .count(READ_COUNT)
        .block(READ_BLOCK.as_millis() as usize);
    let reply: Option<StreamReadReply> = conn.xread_options(&stream_keys, &ids, &options).await?;
    let mut advanced: HashMap<PartyId, Cursor> =
        cursors.into_iter().collect::<HashMap<PartyId, Cursor>>();
    for stream in reply.map(|r| r.keys).unwrap_or_default() {
        let Some((party, is_log)) = owners.get(&stream.key) else {
            continue;
        };
        let cursor = advanced.get_mut(party).expect("read for a cursor");
        for entry in &stream.ids {
            if *is_log {
                match parse_event(entry) {
                    Ok(event) => {
                        cursor.log = event.seq;
                        let _ = shared.feed.send(Feed::Event(party.clone(), event));
                    }
                    Err(err) => {
                        tracing::error!(%party, id = %entry.id, %err, "skipping corrupt log entry")
                    }
                }
            } else {
                cursor.presence = Some(entry.id.clone());
                if let Some(json) = entry.get::<String>("p") {
                    match from_json::<Presence>(&json) {
                        Ok(p) => {
                            let _ = shared.feed.send(Feed::Presence(party.clone(), p));
                        }
                        Err(err) => tracing::error!(%party, %err, "skipping corrupt presence"),
                    }
                } else if let Some(member) = entry.get::<String>("gone") {
                    let _ = shared
                        .feed
                        .send(Feed::Gone(party.clone(), MemberId(member)));
                }
            }
        }
    }
    // Keep the cursors of parties still watched (one may have been unwatched meanwhile).
    let mut watched = shared.watched.lock().expect("watch lock poisoned");
    for (party, cursor) in advanced {
        if let Some(current) = watched.get_mut(&party) {
            *current = cursor;
        }
    }
    Ok(())
}

/// The keys of one party. The `{CODE}` hash tag puts them in one Redis Cluster slot, so the
/// Lua scripts may touch several of them.
struct Keys {
    prefix: String,
    state: String,
    seq: String,
    log: String,
    members: String,
    present: String,
    presence_log: String,
}

impl Keys {
    fn new(party: &PartyId) -> Self {
        let prefix = format!("marquee:party:{{{}}}", party.0);
        Self {
            state: format!("{prefix}:state"),
            seq: format!("{prefix}:seq"),
            log: format!("{prefix}:log"),
            members: format!("{prefix}:members"),
            present: format!("{prefix}:present"),
            presence_log: format!("{prefix}:presence-log"),
            prefix,
        }
    }

    fn op(&self, member: &MemberId, op_id: &str) -> String {
        format!("{}:op:{}:{}", self.prefix, member.0, op_id)
    }

    fn presence(&self, member: &MemberId) -> String {
        format!("{}:presence:{}", self.prefix, member.0)
    }
}

/// Adds a presence change (`field` = value) to the party's presence stream, for the feeds.
fn announce(pipe: &mut redis::Pipeline, keys: &Keys, field: &str, value: &str) {
    pipe.cmd("XADD")
        .arg(&keys.presence_log)
        .arg("MAXLEN")
        .arg("~")
        .arg(PRESENCE_STREAM_LEN)
        .arg("*")
        .arg(field)
        .arg(value)
        .ignore();
}

fn parse_event(entry: &StreamId) -> Result<Event, StoreError> {
    let seq = entry
        .id
        .split('-')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("log entry id {}", entry.id)))?;
    let json: String = entry
        .get("e")
        .ok_or_else(|| StoreError::Corrupt(format!("log entry {} has no event", entry.id)))?;
    Ok(Event {
        seq,
        event: from_json(&json)?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("model types always serialize")
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}
