//! Where parties live: a [`Store`] orders every change of a party (compare-and-set on the
//! state's version, a gap-free sequence number for the log), keeps the recent log for
//! history and resume, keeps presence with a TTL, and feeds every committed event and
//! presence change to every node watching the party.
//!
//! - [`MemoryStore`]: the embedded default, one node, nothing to run.
//! - [`RedisStore`]: several nodes sharing one Redis; the key schema is in `docs/sync.md`.
//!
//! Both pass the same contract suite (`sync/tests/store_contract.rs`).

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::model::{Event, MemberId, MemberRecord, NewEvent, PartyId, Presence, SharedState};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// Bounds and lifetimes of stored data.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Log entries kept per party (Redis trims approximately, keeping at least this many).
    pub history: usize,
    /// A member's presence lapses this long after its last refresh.
    pub presence_ttl: Duration,
    /// How long a client op id is remembered, so a retry within it is applied once.
    pub op_ttl: Duration,
    /// A party untouched for this long is forgotten.
    pub party_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            history: 500,
            presence_ttl: Duration::from_secs(15),
            op_ttl: Duration::from_secs(600),
            party_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A party as stored: its shared state and the last sequence number of its log.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub state: SharedState,
    pub last_seq: u64,
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Written as this sequence number.
    Applied(u64),
    /// The op id was already written, as this sequence number; nothing changed.
    Duplicate(u64),
}

impl Committed {
    pub fn seq(self) -> u64 {
        match self {
            Committed::Applied(seq) | Committed::Duplicate(seq) => seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// Compare-and-set lost: the state is no longer at the expected version.
    #[error("the party changed meanwhile (now at version {current})")]
    Conflict { current: u64 },
    #[error("no such party")]
    NotFound,
    /// The backing store cannot be reached; nothing was written.
    #[error("sync storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (a bug, or foreign data under our keys).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// What a node hears about the parties it watches.
#[derive(Debug, Clone, PartialEq)]
pub enum Feed {
    /// A committed event; per party in sequence order, each once.
    Event(PartyId, Event),
    Presence(PartyId, Presence),
    /// A member left on purpose.
    Gone(PartyId, MemberId),
    /// The store became unreachable (false) or reachable again (true).
    Available(bool),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the party if it does not exist; false if it did (nothing changed then).
    async fn create(&self, party: &PartyId, stored: &Stored) -> Result<bool, StoreError>;

    async fn load(&self, party: &PartyId) -> Result<Option<Stored>, StoreError>;

    /// Writes a state event if the stored state is at `expected_version`, giving it the next
    /// sequence number. A repeated op id (per member) is not applied again.
    async fn commit(
        &self,
        party: &PartyId,
        expected_version: u64,
        event: &NewEvent,
    ) -> Result<Committed, StoreError>;

    /// Appends a chat or reaction event with the next sequence number, once per op id.
    async fn append(&self, party: &PartyId, event: &NewEvent) -> Result<Committed, StoreError>;

    /// Kept events with a sequence number above `after`, in order.
    async fn events_after(&self, party: &PartyId, after: u64) -> Result<Vec<Event>, StoreError>;

    /// The latest `limit` events, in order.
    async fn recent(&self, party: &PartyId, limit: usize) -> Result<Vec<Event>, StoreError>;

    async fn put_member(&self, party: &PartyId, record: &MemberRecord) -> Result<(), StoreError>;

    async fn member(
        &self,
        party: &PartyId,
        member: &MemberId,
    ) -> Result<Option<MemberRecord>, StoreError>;

    /// Sets a member's presence (refreshing its TTL) and tells every watching node.
    async fn put_presence(&self, party: &PartyId, presence: &Presence) -> Result<(), StoreError>;

    /// Removes a member's presence and tells every watching node it left.
    async fn remove_presence(&self, party: &PartyId, member: &MemberId) -> Result<(), StoreError>;

    /// Presence of every member whose TTL has not lapsed.
    async fn presence(&self, party: &PartyId) -> Result<Vec<Presence>, StoreError>;

    /// Starts feeding this node the party's events after `after_seq` and its presence.
    fn watch(&self, party: &PartyId, after_seq: u64);

    fn unwatch(&self, party: &PartyId);

    /// The feed; there is one per store, and only the first call gets it.
    fn take_feed(&self) -> Option<mpsc::UnboundedReceiver<Feed>>;
}
