//! Rust clients of a Marquee server, built from the same parts a real client uses: the
//! protocol types of `marquee_protocol::wire` over a WebSocket, and the async `webrtc` crate.
//!
//! - [`live`]: WebSocket client, WebRTC host (publisher) and viewer (subscriber).
//! - [`media`]: synthetic VP8/Opus payloads and keyframe detection.
//! - [`relay`]: datagram classification and a lossy UDP relay for retransmission tests.
//! - [`party`]: a watch-party member that checks it sees every event once and in order.
//! - [`whip`]: WHIP publishing and WHEP viewing over HTTP (RFC 9725).
//!
//! The integration tests of `signaling` and the `loadtest` tool both drive servers through
//! this crate, so a protocol change breaks one build, not two copies.

pub mod live;
pub mod media;
pub mod party;
pub mod relay;
pub mod whip;

pub use live::*;
pub use media::*;
pub use party::*;
pub use relay::*;
pub use whip::*;
