//! Support shared by the integration tests (`mod support;` in each test file).
//!
//! - the clients of the `marquee-client` crate (WebSocket, WebRTC host and viewer, impairment
//!   relay, watch-party member), re-exported;
//! - [`server`]: an in-process server;
//! - [`process`]: `marquee` and `redis-server` as child processes (multi-node tests).

// Each test binary uses a different subset of this module.
#![allow(dead_code, unused_imports)]

pub mod otlp;
pub mod process;
pub mod server;
pub mod tokens;

pub use marquee_client::*;
pub use process::*;
