//! Support shared by the integration tests (`mod support;` in each test file).
//!
//! - [`client`]: WebSocket client, WebRTC host (publisher) and viewer (subscriber).
//! - [`media`]: synthetic VP8/Opus payloads and keyframe detection.
//! - [`relay`]: a lossy UDP relay for retransmission tests.

// Each test binary uses a different subset of this module.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod media;
pub mod relay;
pub mod server;

pub use client::*;
pub use media::*;
pub use relay::*;
