//! Watch-party state, shared by every device of a party and every node serving it.
//!
//! - [`Timeline`]: the playback tuple (media, position at an anchor server time, rate,
//!   paused). A position is computed from it, never stored, so every device derives the
//!   same answer.
//! - [`model`]: what is stored, fanned out and sent: [`SharedState`], events, presence
//!   (with [`Timeline`], defined in `marquee-protocol`, since clients read them too).
//! - [`Party`]: the sans-IO core of one party on one node: validation, permissions,
//!   scheduling ahead, group wait, host hand-off, presence and the sync spread.
//! - [`ClockSync`]: the NTP-style clock estimate clients (and the benchmark) use.
//! - [`drift`]: the web client's drift controller (dead band, nudge, seek), as pure functions.
//! - [`Store`]: where parties live, [`MemoryStore`] (one node) or [`RedisStore`] (many).

mod clock;
pub mod drift;
mod party;
mod store;

/// The party data the wire carries, defined with the protocol (clients read it too).
pub use marquee_protocol::{model, timeline};

pub use clock::{ClockSync, JOIN_BURST, ProbeSample, WINDOW};
pub use model::{
    Cause, Control, Event, EventBody, MemberId, MemberRecord, MemberStatus, MemberView, NewEvent,
    PartyId, PlaybackCommand, Presence, SharedState, Spread,
};
pub use party::{Party, PartyConfig, PartyError, Proposal, Snapshot, SyncReport};
pub use store::{Committed, Feed, MemoryStore, RedisStore, Store, StoreConfig, StoreError, Stored};
pub use timeline::{Timeline, UnixMillis, UtcDateTime};
