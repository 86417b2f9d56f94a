//! The embedded store: one node, in process memory, never unavailable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Committed, Feed, Store, StoreConfig, StoreError, Stored};
use crate::model::{Event, EventBody, MemberId, MemberRecord, NewEvent, PartyId, Presence};

/// Op ids remembered per party for idempotent retries. The memory store bounds them by count
/// rather than time: 4096 covers minutes of a busy party.
const OPS_KEPT: usize = 4096;

pub struct MemoryStore {
    config: StoreConfig,
    inner: Mutex<Inner>,
    feed: Mutex<Option<mpsc::UnboundedReceiver<Feed>>>,
}

struct Inner {
    parties: HashMap<PartyId, PartyData>,
    watched: HashSet<PartyId>,
    feed: mpsc::UnboundedSender<Feed>,
}

struct PartyData {
    stored: Stored,
    log: VecDeque<Event>,
    ops: HashMap<(MemberId, String), u64>,
    op_order: VecDeque<(MemberId, String)>,
    members: HashMap<MemberId, MemberRecord>,
    presence: HashMap<MemberId, (Presence, Instant)>,
    touched: Instant,
}

impl MemoryStore {
    pub fn new(config: StoreConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            config,
            inner: Mutex::new(Inner {
                parties: HashMap::new(),
                watched: HashSet::new(),
                feed: tx,
            }),
            feed: Mutex::new(Some(rx)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut inner = self.inner.lock().expect("memory store lock poisoned");
        f(&mut inner)
    }

    /// Writes `event` as the next log entry, unless its op id was seen.
    fn write(&self, party: &PartyId, event: &NewEvent, expected: Option<u64>) -> WriteResult {
        let history = self.config.history;
        self.with(|inner| {
            let data = inner.parties.get_mut(party).ok_or(StoreError::NotFound)?;
            let op = (event.from.clone(), event.op_id.clone());
            if let Some(&seq) = data.ops.get(&op) {
                return Ok(Committed::Duplicate(seq));
            }
            if let Some(expected) = expected {
                if data.stored.state.version != expected {
                    return Err(StoreError::Conflict {
                        current: data.stored.state.version,
                    });
                }
                if let EventBody::State { state, .. } = &event.body {
                    data.stored.state = state.clone();
                }
            }
            data.stored.last_seq += 1;
            let seq = data.stored.last_seq;
            let entry = Event {
                seq,
                event: event.clone(),
            };
            if data.log.len() == history {
                data.log.pop_front();
            }
            data.log.push_back(entry.clone());
            if data.op_order.len() == OPS_KEPT
                && let Some(old) = data.op_order.pop_front()
            {
                data.ops.remove(&old);
            }
            data.ops.insert(op.clone(), seq);
            data.op_order.push_back(op);
            data.touched = now();
            if inner.watched.contains(party) {
                let _ = inner.feed.send(Feed::Event(party.clone(), entry));
            }
            Ok(Committed::Applied(seq))
        })
    }
}

type WriteResult = Result<Committed, StoreError>;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(&self, party: &PartyId, stored: &Stored) -> Result<bool, StoreError> {
        let party_ttl = self.config.party_ttl;
        Ok(self.with(|inner| {
            // Forget parties nobody watched or wrote for a day.
            let now = now();
            let watched = &inner.watched;
            inner
                .parties
                .retain(|id, p| watched.contains(id) || now - p.touched < party_ttl);
            if inner.parties.contains_key(party) {
                return false;
            }
            inner.parties.insert(
                party.clone(),
                PartyData {
                    stored: stored.clone(),
                    log: VecDeque::new(),
                    ops: HashMap::new(),
                    op_order: VecDeque::new(),
                    members: HashMap::new(),
                    presence: HashMap::new(),
                    touched: now,
                },
            );
            true
        }))
    }

    async fn load(&self, party: &PartyId) -> Result<Option<Stored>, StoreError> {
        Ok(self.with(|inner| inner.parties.get(party).map(|p| p.stored.clone())))
    }

    async fn commit(
        &self,
        party: &PartyId,
        expected_version: u64,
        event: &NewEvent,
    ) -> Result<Committed, StoreError> {
        if !matches!(event.body, EventBody::State { .. }) {
            return Err(StoreError::Corrupt("commit takes state events".into()));
        }
        self.write(party, event, Some(expected_version))
    }

    async fn append(&self, party: &PartyId, event: &NewEvent) -> Result<Committed, StoreError> {
        if matches!(event.body, EventBody::State { .. }) {
            return Err(StoreError::Corrupt("state events need commit".into()));
        }
        self.write(party, event, None)
    }

    async fn events_after(&self, party: &PartyId, after: u64) -> Result<Vec<Event>, StoreError> {
        self.with(|inner| {
            let data = inner.parties.get(party).ok_or(StoreError::NotFound)?;
            Ok(data.log.iter().filter(|e| e.seq > after).cloned().collect())
        })
    }

    async fn recent(&self, party: &PartyId, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.with(|inner| {
            let data = inner.parties.get(party).ok_or(StoreError::NotFound)?;
            let skip = data.log.len().saturating_sub(limit);
            Ok(data.log.iter().skip(skip).cloned().collect())
        })
    }

    async fn put_member(&self, party: &PartyId, record: &MemberRecord) -> Result<(), StoreError> {
        self.with(|inner| {
            let data = inner.parties.get_mut(party).ok_or(StoreError::NotFound)?;
            data.members
                .insert(record.member_id.clone(), record.clone());
            Ok(())
        })
    }

    async fn member(
        &self,
        party: &PartyId,
        member: &MemberId,
    ) -> Result<Option<MemberRecord>, StoreError> {
        self.with(|inner| {
            let data = inner.parties.get(party).ok_or(StoreError::NotFound)?;
            Ok(data.members.get(member).cloned())
        })
    }

    async fn put_presence(&self, party: &PartyId, presence: &Presence) -> Result<(), StoreError> {
        let ttl = self.config.presence_ttl;
        self.with(|inner| {
            let data = inner.parties.get_mut(party).ok_or(StoreError::NotFound)?;
            data.presence
                .insert(presence.member_id.clone(), (presence.clone(), now() + ttl));
            if inner.watched.contains(party) {
                let _ = inner
                    .feed
                    .send(Feed::Presence(party.clone(), presence.clone()));
            }
            Ok(())
        })
    }

    async fn remove_presence(&self, party: &PartyId, member: &MemberId) -> Result<(), StoreError> {
        self.with(|inner| {
            let data = inner.parties.get_mut(party).ok_or(StoreError::NotFound)?;
            data.presence.remove(member);
            if inner.watched.contains(party) {
                let _ = inner.feed.send(Feed::Gone(party.clone(), member.clone()));
            }
            Ok(())
        })
    }

    async fn presence(&self, party: &PartyId) -> Result<Vec<Presence>, StoreError> {
        self.with(|inner| {
            let data = inner.parties.get_mut(party).ok_or(StoreError::NotFound)?;
            let now = now();
            data.presence.retain(|_, (_, expires)| *expires > now);
            let mut all: Vec<Presence> = data.presence.values().map(|(p, _)| p.clone()).collect();
            all.sort_by(|a, b| a.member_id.cmp(&b.member_id));
            Ok(all)
        })
    }

    fn watch(&self, party: &PartyId, after_seq: u64) {
        self.with(|inner| {
            if !inner.watched.insert(party.clone()) {
                return;
            }
            // Events committed between the caller's load and this watch are fed now, in order.
            if let Some(data) = inner.parties.get(party) {
                for event in data.log.iter().filter(|e| e.seq > after_seq) {
                    let _ = inner.feed.send(Feed::Event(party.clone(), event.clone()));
                }
            }
        })
    }

    fn unwatch(&self, party: &PartyId) {
        self.with(|inner| inner.watched.remove(party));
    }

    fn take_feed(&self) -> Option<mpsc::UnboundedReceiver<Feed>> {
        self.feed.lock().expect("feed lock poisoned").take()
    }
}

/// The in-memory store's clock for TTLs (a Redis server keeps its own): tokio's, so
/// paused-time tests drive it.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}
