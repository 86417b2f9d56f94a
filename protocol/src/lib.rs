//! What Marquee's server and its clients share, and nothing else: the JSON wire messages and
//! their error codes ([`wire`]), access-token claims, grants and keys ([`auth`]), ICE servers as
//! clients receive them ([`ice`]), and the RTCP feedback interceptor both the SFU and the
//! synthetic host put in `rtc`'s chain ([`feedback`]).
//!
//! Clients (`marquee-client`, `loadtest`) depend on this crate, not on the server's.

pub mod auth;
pub mod feedback;
pub mod ice;
pub mod wire;
