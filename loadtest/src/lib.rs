//! `loadtest`: spike traffic with real WebRTC viewers against a Marquee server.
//!
//! Cores without I/O (arrival [`schedule`]s, [`metrics`], [`slo`] evaluation, the
//! [`relay`]'s impairment model) are unit-tested on their own; the drivers (viewers, hosts,
//! party members, the `/proc` [`probe`]) talk to a real server.

pub mod access;
pub mod cli;
pub mod metrics;
pub mod probe;
pub mod progress;
pub mod relay;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod slo;
pub mod stream;
pub mod tap;
pub mod viewer;
