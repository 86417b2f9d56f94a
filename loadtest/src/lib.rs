//! `loadtest`: spike traffic with real WebRTC viewers against a Marquee server.
//!
//! Cores without I/O (arrival [`schedule`]s, [`metrics`], [`slo`] evaluation) are unit-tested
//! on their own; the drivers (viewers, hosts, party members, the `/proc` [`probe`]) talk to a
//! real server. Network impairment comes from `marquee_client::relay`, the relay the
//! retransmission tests use too.

pub mod access;
pub mod cli;
pub mod metrics;
pub mod probe;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod slo;
pub mod stream;
pub mod tap;
pub mod viewer;
