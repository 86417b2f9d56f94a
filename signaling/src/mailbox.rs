//! A session's mailbox: what other tasks (rooms, parties, WHIP/WHEP resources) may queue
//! for a session, and how. A leaf module, so those tasks and the session depend on it
//! rather than on each other.

use std::fmt;

use tokio::sync::mpsc;

use crate::protocol::{PartyState, RoomState};

/// Messages queued for one session by other tasks (room and party state, party events).
/// When full the sender skips the message: snapshots are retried later, and a skipped party
/// event shows up as a gap that the session fills from the store. No task ever waits on a
/// slow session.
pub(crate) const OUTBOX_CAPACITY: usize = 256;
/// SFU events (offers, connection state) queued for one session.
pub(crate) const SFU_EVENTS_CAPACITY: usize = 32;

/// Identifies a WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// What other tasks may tell a session.
#[derive(Debug)]
pub enum SessionEvent {
    RoomState(RoomState),
    /// The same host joined from a new connection; this one is stale.
    Replaced,
    PartyEvent(sync::Event),
    PartyState(PartyState),
    /// The same party member joined from a new connection; this one is stale.
    PartyReplaced,
}

/// The sending side of a session's mailbox.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<SessionEvent>);

impl Outbox {
    pub fn new(tx: mpsc::Sender<SessionEvent>) -> Self {
        Self(tx)
    }

    /// Queues a room snapshot; false if the session's mailbox is full.
    pub fn room_state(&self, state: RoomState) -> bool {
        self.offer(SessionEvent::RoomState(state))
    }

    pub fn replaced(&self) {
        let _ = self.0.try_send(SessionEvent::Replaced);
    }

    /// Queues a party event; false if the mailbox is full (the session fills the gap).
    pub fn party_event(&self, event: sync::Event) -> bool {
        self.offer(SessionEvent::PartyEvent(event))
    }

    /// Queues a party snapshot; false if the mailbox is full.
    pub fn party_state(&self, state: PartyState) -> bool {
        self.offer(SessionEvent::PartyState(state))
    }

    pub fn party_replaced(&self) {
        let _ = self.0.try_send(SessionEvent::PartyReplaced);
    }

    fn offer(&self, event: SessionEvent) -> bool {
        match self.0.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
        }
    }
}
