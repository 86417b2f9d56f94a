//! Support shared by the integration tests (`mod support;` in each test file).
//!
//! - [`client`]: WebSocket client, WebRTC host (publisher) and viewer (subscriber).
//! - [`media`]: synthetic VP8/Opus payloads and keyframe detection.
//! - [`relay`]: a lossy UDP relay for retransmission tests.
//! - [`party`]: a watch-party member that checks it sees every event once and in order.
//! - [`process`]: `marquee` and `redis-server` as child processes (multi-node tests).

// Each test binary uses a different subset of this module.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod media;
pub mod party;
pub mod process;
pub mod relay;
pub mod server;

pub use client::*;
pub use media::*;
pub use party::*;
pub use process::*;
pub use relay::*;
