//! Watch-party state. For now: the playback timeline, a sans-IO value type whose position at
//! any instant is computed, never stored, so every device derives the same answer from the
//! same tuple. Parties, stores (memory and Redis) and clock sync build on it.

mod timeline;

pub use timeline::{Timeline, UnixMillis};
