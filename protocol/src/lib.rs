//! What Marquee's server and its clients share, and nothing else: the JSON wire messages and
//! their error codes ([`wire`]), access-token claims, grants and keys ([`auth`]), ICE servers as
//! clients receive them ([`ice`]), and the RTCP feedback interceptor both the SFU and the
//! synthetic host put in `rtc`'s chain ([`feedback`]), and what both sides read from packets
//! without keys: datagram classification on a shared port ([`demux`], RFC 7983) and keyframe
//! detection ([`keyframe`]).
//!
//! Clients (`marquee-client`, `loadtest`) depend on this crate, not on the server's.

pub mod auth;
pub mod demux;
pub mod feedback;
pub mod ice;
pub mod keyframe;
pub mod wire;
