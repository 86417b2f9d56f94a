//! Rust clients of a Marquee server, built from the same parts a real client uses: the
//! protocol types of `marquee_protocol::wire` over a WebSocket, and the async `webrtc` crate.
//!
//! - [`ws`]: the JSON protocol over a WebSocket ([`WsClient`]).
//! - [`peer`], [`publisher`], [`subscriber`]: WebRTC peers with no signaling attached.
//! - [`live`]: a room's [`Host`] and [`Viewer`], which drive a publisher or subscriber through
//!   the server's offer/answer flow over the WebSocket.
//! - [`media`]: synthetic VP8/Opus payloads and keyframe detection.
//! - [`relay`]: datagram classification and the impairment relay (seeded loss, delay, jitter,
//!   bandwidth cap; chosen drops for retransmission tests), shared with `loadtest`.
//! - [`party`]: a watch-party member that checks it sees every event once and in order.
//! - [`whip`]: WHIP publishing and WHEP viewing over HTTP (RFC 9725).
//!
//! The integration tests of `signaling` and the `loadtest` tool both drive servers through
//! this crate, so a protocol change breaks one build, not two copies.

pub mod live;
pub mod media;
pub mod party;
pub mod peer;
pub mod publisher;
pub mod relay;
pub mod subscriber;
mod util;
pub mod whip;
pub mod ws;

pub use live::*;
pub use media::*;
pub use party::*;
pub use peer::*;
pub use publisher::*;
pub use relay::*;
pub use subscriber::*;
pub use whip::*;
pub use ws::*;
