//! What Marquee's server and its clients share, and nothing else: the JSON wire messages and
//! their error codes ([`wire`]), access-token claims, grants and keys ([`auth`]), ICE servers as
//! clients receive them ([`ice`]), and the RTCP feedback interceptor both the SFU and the
//! synthetic host put in `rtc`'s chain ([`feedback`]), and what both sides read from packets
//! without keys: datagram classification on a shared port ([`demux`], RFC 7983) and keyframe
//! detection ([`keyframe`]). The watch-party data its messages carry lives here too:
//! [`timeline`] (the playback tuple and server time) and [`model`] (shared state, events,
//! presence), so that the party core (`sync`) and the media plane (`sfu`) both build on this
//! crate without depending on each other.
//!
//! Clients (`marquee-client`, `loadtest`) depend on this crate, not on the server's.

pub mod auth;
pub mod demux;
#[cfg(feature = "rtc")]
pub mod feedback;
pub mod ice;
pub mod keyframe;
pub mod model;
pub mod timeline;
pub mod wire;
