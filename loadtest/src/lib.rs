//! `loadtest`: spike traffic with real WebRTC viewers against a Marquee server. It speaks to
//! the server through `marquee-client` and `marquee-protocol` only, as a browser would; the
//! server itself appears only in this crate's tests.
//!
//! - [`cli`]: the command line and exit codes; [`scenario`]: what to run (a TOML file and/or
//!   flags), validated before anything connects; [`slo`]: the objectives a run must meet.
//! - [`run`]: runs a scenario's parts (spike, party, churn, signaling) side by side and builds
//!   the report; network impairment comes from `marquee_client::relay`, the relay the
//!   retransmission tests use too.
//! - [`schedule`]: seeded arrival and departure curves (sans-IO).
//! - [`viewer`]: one viewer, a real WebRTC peer made cheap by [`tap`] (a UDP socket that reads
//!   clear RTP headers into [`stream`] statistics and hands the stack only a sample).
//! - [`access`]: access tokens for the simulated clients.
//! - [`metrics`] (HDR histograms), [`probe`] (`/proc` and the generator's own lag),
//!   [`progress`] (the live line), [`report`] (table, JSON, HTML).
//!
//! The cores without I/O (schedules, stream statistics, metrics, SLO evaluation, `/proc`
//! parsing) are unit-tested on their own; the drivers talk to a real server.

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
