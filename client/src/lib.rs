//! Rust clients of a Marquee server, built from the same parts a real client uses: the
//! protocol types of `marquee_protocol::wire` over a WebSocket, and the async `webrtc` crate.
//! Of the workspace it uses only `marquee-protocol` and `sync`, none of the server's crates.
//!
//! By layer, each building on the ones above it:
//!
//! - [`ws`]: the JSON protocol over a WebSocket ([`WsClient`]).
//! - [`peer`]: the `webrtc` peer connection ([`Peer`]); [`publisher`], [`subscriber`]: peers
//!   with no signaling attached that send synthetic media or record what they receive.
//! - [`live`]: a room's [`Host`] and [`Viewer`], which drive a publisher or subscriber through
//!   the server's offer/answer flow over the WebSocket.
//! - [`whip`]: WHIP publishing and WHEP viewing over HTTP (RFC 9725).
//! - [`party`]: a watch-party member that checks it sees every event once and in order.
//! - [`media`]: synthetic VP8/Opus payloads and their tags (keyframe detection is
//!   `marquee_protocol::keyframe`'s).
//! - [`relay`]: the one impairment relay, shared with `loadtest`: the sans-IO [`Link`] per
//!   direction (`relay/link`: seeded loss, delay, jitter, bandwidth cap, chosen drops for
//!   retransmission tests; keyless datagram classification) and the [`ImpairedRelay`] driver.
//! - `util`: bounded waits, the one clock read, locks, identifiers, tasks aborted on drop.
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
