//! A session's mailbox: what other tasks (rooms, parties, WHIP/WHEP resources) may queue
//! for a session, and how. A leaf module, so those tasks and the session depend on it
//! rather than on each other.

use std::fmt;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;

use tokio::sync::mpsc;

use crate::protocol::{PartyState, RoomState, ServerMessage};

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
///
/// Snapshots are shared (`Arc`): a room's or party's state is built once per publish and
/// every member's mailbox holds a reference, not a deep copy. It also keeps the enum at two
/// words: a tokio channel allocates its slots in blocks of 32, so a slot the size of a
/// whole `PartyState` cost every session ~8 KB of mailbox before any message was queued.
#[derive(Debug)]
pub enum SessionEvent {
    RoomState(Arc<RoomState>),
    /// The same host joined from a new connection; this one is stale.
    Replaced,
    PartyEvent(Arc<SharedEvent>),
    PartyState(Arc<PartyState>),
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
    pub fn room_state(&self, state: Arc<RoomState>) -> bool {
        self.offer(SessionEvent::RoomState(state))
    }

    pub fn replaced(&self) {
        let _ = self.0.try_send(SessionEvent::Replaced);
    }

    /// Queues a party event; false if the mailbox is full (the session fills the gap).
    pub fn party_event(&self, event: &Arc<SharedEvent>) -> bool {
        self.offer(SessionEvent::PartyEvent(event.clone()))
    }

    /// Queues a party snapshot; false if the mailbox is full.
    pub fn party_state(&self, state: Arc<PartyState>) -> bool {
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

/// A party event as every member's session sends it: the event (for ordering) and its
/// `partyEvent` message, serialized once for all members into a refcounted buffer that each
/// session hands to its WebSocket as it is.
#[derive(Debug)]
pub struct SharedEvent {
    pub event: sync::Event,
    pub text: Utf8Bytes,
}

impl SharedEvent {
    pub fn new(event: sync::Event) -> Arc<Self> {
        // One clone and one serialization per event, whatever the number of members.
        let message = ServerMessage::PartyEvent(event.clone());
        let text = serde_json::to_string(&message).expect("server messages always serialize");
        Arc::new(Self {
            event,
            text: text.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync::{EventBody, MemberId, NewEvent, UnixMillis};

    /// The text every member's session sends is exactly the `partyEvent` message a session
    /// would have serialized for itself, and the members share one buffer.
    #[test]
    fn a_shared_event_is_the_party_event_message_serialized_once() {
        let event = sync::Event {
            seq: 7,
            event: NewEvent {
                at: UnixMillis(5),
                from: MemberId("m1".into()),
                name: "Ann".into(),
                op_id: "o1".into(),
                body: EventBody::Chat { text: "hi".into() },
            },
        };
        let shared = SharedEvent::new(event.clone());
        let decoded: ServerMessage = serde_json::from_str(shared.text.as_str()).unwrap();
        assert_eq!(decoded, ServerMessage::PartyEvent(event));
        let (a, b) = (shared.text.clone(), shared.text.clone());
        assert_eq!(
            a.as_str().as_ptr(),
            b.as_str().as_ptr(),
            "one buffer, refcounted"
        );
    }
}
