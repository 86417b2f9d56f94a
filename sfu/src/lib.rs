//! Marquee's selective forwarding unit.
//!
//! - [`Sfu`]: the sans-IO core (rooms, peers, tracks; `handle_*` in, `poll_*` out), in parts:
//!   negotiation, forwarding (the hot path and its SRTP fast path), tracks, feedback (RTCP),
//!   timers, mirror (one room over several shards, through [`Relay`]s). Its data plane is
//!   described in `docs/sfu.md`.
//! - [`driver`]: one async task per shard that owns a core and the clock, the socket readers
//!   that route datagrams to shards, and the [`SfuHandle`] other tasks use to talk to them;
//!   [`shard`]: which shard owns a room, a peer, a datagram; [`udp`]: batched I/O
//!   (`recvmmsg`, `sendmmsg`).
//! - Building blocks, each unit-tested on its own: [`demux`] (routing datagrams on the shared
//!   port), [`ring`] (the per-track packet store), [`rewrite`] (continuous numbering across
//!   source changes), [`keyframe`] (keyframe detection), [`codecs`] (what peers negotiate),
//!   [`srtp`] (in-place SRTP protection), [`keytap`] (learning SRTP keys through `rtc`'s
//!   crypto-provider API), [`feedback`] (getting RTCP out of `rtc`'s interceptor chain).
//!
//! The crate knows nothing of WebSockets or signaling messages (GUIDE §1).

pub mod codecs;
pub mod config;
pub use marquee_protocol::demux;
pub mod driver;
pub use marquee_protocol::feedback;
pub mod ids;
pub use marquee_protocol::keyframe;
pub mod keytap;
pub mod load;
pub mod rewrite;
pub mod ring;
mod sfu;
pub mod shard;
pub mod srtp;
pub mod udp;

pub use config::SfuConfig;
pub use driver::{SfuHandle, run_driver};
pub use ids::{PeerId, RoomId, TrackId};
pub use sfu::{Certificate, Datagram, Relay, Sfu, SfuEvent, Transmit, host_candidate};

/// A trickled ICE candidate, as `rtc` takes it.
pub use rtc::peer_connection::transport::RTCIceCandidateInit as IceCandidateInit;

/// Which side of a room a peer is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends media into the room (the host).
    Publisher,
    /// Receives the room's tracks (a viewer).
    Subscriber,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
}

/// A room track as signaling reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    /// A host source currently feeds it.
    pub active: bool,
}

/// Media connection state of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    New,
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// Counters, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SfuStats {
    pub datagrams_in: u64,
    /// Datagrams from an address no peer has proven (by ICE) to own.
    pub datagrams_unroutable: u64,
    /// Datagrams a peer connection refused (bad SRTP auth, replays, garbage).
    pub datagrams_rejected: u64,
    /// Datagrams dropped because a peer's queue was full.
    pub datagrams_dropped: u64,
    pub packets_in: u64,
    pub packets_forwarded: u64,
    pub bytes_forwarded: u64,
    pub nacks_received: u64,
    pub retransmissions: u64,
    /// NACKed packets no longer in the ring.
    pub retransmissions_missed: u64,
    pub keyframe_requests_received: u64,
    pub keyframe_requests_sent: u64,
    /// Gauges: rooms, peers and tracks held now.
    pub rooms: u64,
    pub peers: u64,
    pub tracks: u64,
    /// Gauge: viewers whose media takes the forwarding fast path (keys verified).
    pub fast_path_viewers: u64,
    /// Gauge: viewers left on `rtc`'s path because the fast path could not reproduce its
    /// output (see the warning logged for each).
    pub rtc_path_viewers: u64,
    /// Datagrams dropped because they waited too long for the driver (overload shown as loss;
    /// see `SfuConfig::max_ingress_delay`). Filled by the driver.
    pub datagrams_late: u64,
    /// Gauge: share of wall time the driver spent working, in percent. Filled by the driver.
    pub busy_pct: u64,
    /// Gauge: DTLS handshake records waiting for an idle moment. Filled by the driver.
    pub handshakes_waiting: u64,
}

impl SfuStats {
    /// Adds another shard's counters and gauges; the busy share is the busiest shard's.
    pub fn merge(&mut self, other: &SfuStats) {
        let SfuStats {
            datagrams_in,
            datagrams_unroutable,
            datagrams_rejected,
            datagrams_dropped,
            packets_in,
            packets_forwarded,
            bytes_forwarded,
            nacks_received,
            retransmissions,
            retransmissions_missed,
            keyframe_requests_received,
            keyframe_requests_sent,
            rooms,
            peers,
            tracks,
            fast_path_viewers,
            rtc_path_viewers,
            datagrams_late,
            busy_pct,
            handshakes_waiting,
        } = other;
        self.datagrams_in += datagrams_in;
        self.datagrams_unroutable += datagrams_unroutable;
        self.datagrams_rejected += datagrams_rejected;
        self.datagrams_dropped += datagrams_dropped;
        self.packets_in += packets_in;
        self.packets_forwarded += packets_forwarded;
        self.bytes_forwarded += bytes_forwarded;
        self.nacks_received += nacks_received;
        self.retransmissions += retransmissions;
        self.retransmissions_missed += retransmissions_missed;
        self.keyframe_requests_received += keyframe_requests_received;
        self.keyframe_requests_sent += keyframe_requests_sent;
        self.rooms += rooms;
        self.peers += peers;
        self.tracks += tracks;
        self.fast_path_viewers += fast_path_viewers;
        self.rtc_path_viewers += rtc_path_viewers;
        self.datagrams_late += datagrams_late;
        self.busy_pct = self.busy_pct.max(*busy_pct);
        self.handshakes_waiting += handshakes_waiting;
    }
}

/// Why an SFU operation failed. Each variant is a distinct failure a caller may report.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SfuError {
    #[error("the media session has ended (no such peer)")]
    UnknownPeer,
    #[error("not allowed: {0}")]
    WrongRole(&'static str),
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    #[error("no offer is awaiting an answer")]
    NoOfferPending,
    #[error("a candidate arrived before any session description")]
    CandidateBeforeDescription,
    #[error("invalid candidate: {0}")]
    InvalidCandidate(String),
    #[error("the room is not live yet (no tracks, or its host is still starting them); retry")]
    NothingToWatch,
    #[error("the media server is shutting down")]
    Stopped,
    /// The media plane is falling behind (see `SfuConfig::overload_ingress_wait`) or has a
    /// backlog of handshakes; new peers are refused so current viewers keep quality.
    #[error("the media server is overloaded; retry shortly")]
    Overloaded,
    #[error("internal error: {0}")]
    Internal(String),
}

impl SfuError {
    fn invalid_sdp(err: impl std::fmt::Display) -> Self {
        SfuError::InvalidSdp(err.to_string())
    }

    fn internal(err: impl std::fmt::Display) -> Self {
        SfuError::Internal(err.to_string())
    }
}
