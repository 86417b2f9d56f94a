//! Tunables of the SFU core. Every bound is named and says what happens when it is hit.

use std::net::SocketAddr;
use std::time::Duration;

use crate::shard::Shard;
use crate::srtp::SrtpProfile;

/// Configuration of an [`crate::Sfu`].
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Host candidates offered to every peer: the addresses clients send media to. All share
    /// one UDP port. The driver fills this from the bound socket(s) and any public IP.
    pub candidates: Vec<SocketAddr>,
    /// Packets kept per track for NACK retransmission and fan-out. 1024 packets hold about
    /// one second of 8 Mbit/s video or twenty seconds of Opus; a NACK for an older packet is
    /// ignored (the viewer then asks for a keyframe).
    pub ring_capacity: usize,
    /// Datagrams queued for one peer between driver flushes. When full, further datagrams to
    /// that peer are dropped and counted: a slow or flooded peer loses packets, it never holds
    /// up the host or other viewers.
    pub max_queued_datagrams: usize,
    /// Minimum spacing of keyframe requests (PLI) sent to a host per track. Viewer requests in
    /// between are coalesced into one request at the end of the interval.
    pub keyframe_request_interval: Duration,
    /// How long a track stays in a room after its host source went away, so a host that
    /// reconnects or switches source is rebound to the same track: viewers see no
    /// renegotiation and no new SSRC, only a short pause.
    pub track_grace: Duration,
    /// A connected peer from which nothing at all arrived for this long is reported
    /// [`crate::ConnectionState::Failed`]. Browsers send consent checks every ~5 s
    /// (RFC 7675) and RTCP every second, so 15 s is three missed consent checks.
    pub peer_timeout: Duration,
    /// Retransmissions served for one NACK packet; the rest of a huge NACK is ignored so a
    /// malicious or broken viewer cannot turn one small RTCP packet into a flood.
    pub max_retransmissions_per_nack: usize,
    /// A received datagram that waited longer than this for the driver is dropped and counted
    /// (`datagrams_late`). 50 ms is what a live viewer tolerates on top of the network: past
    /// it, overload shows as loss (repaired by NACK and keyframes), never as a queue.
    pub max_ingress_delay: Duration,
    /// A DTLS handshake record waits at most this long for an idle moment (handshakes yield
    /// to forwarding); older ones are dropped, as the client retransmits its flight after 1 s.
    pub max_handshake_delay: Duration,
    /// While received datagrams wait longer than this for the driver on average (over half a
    /// second), it refuses new peers (`SfuError::Overloaded`, answered `full`): the node cannot
    /// keep up, and a newcomer would only make every viewer's stream later. 10 ms is a fifth
    /// of the latency budget above network delay; a driver with room to spare handles a
    /// datagram within microseconds.
    pub overload_ingress_wait: Duration,
    /// Threads that send the shards' datagrams (`sendmmsg`), for the whole node, shared out
    /// among the shards; a shard without one sends on its own driver thread. `None`, the
    /// default: one per core that runs no shard ([`SfuConfig::node_send_threads`]), so one
    /// shard on a 2-core machine forwards on one core and sends on the other, and two shards
    /// each send their own. A send thread on a core that also runs a shard only adds a
    /// wake-up and two context switches per batch (measured in `crate::udp::EgressPool`).
    pub send_threads: Option<usize>,
    /// SRTP profiles offered to viewers. Every forwarded packet is sealed once per viewer,
    /// so the profile is the largest per-viewer cost the SFU controls: AES-128-GCM is one
    /// AES-GCM pass (0.5 µs for 1.2 KB here), AES-CM-HMAC-SHA1 an AES-CTR pass plus an
    /// HMAC-SHA1 (1.2 µs). `rtc`'s DTLS server picks the first profile of the *client's* list
    /// that it offers too, and Chrome lists AES-CM-HMAC-SHA1-80 before AES-GCM, so offering
    /// both would put every Chrome viewer on the slow profile. The default offers GCM only:
    /// Chrome, Firefox, Safari, libwebrtc, webrtc-rs, Pion and GStreamer (≥ 1.18) all
    /// support it. Add AES-CM for a player that does not; its handshake otherwise fails
    /// with "no matching SRTP profile".
    pub viewer_srtp_profiles: Vec<SrtpProfile>,
    /// SRTP profiles offered to hosts (WebSocket and WHIP publishers). A host's packet is
    /// decrypted once whatever the audience, so every profile is offered: publishers such
    /// as FFmpeg's WHIP muxer only speak AES-CM-HMAC-SHA1-80.
    pub host_srtp_profiles: Vec<SrtpProfile>,
    /// Forwarding shards the driver runs (see [`crate::shard`]): one per core by default, so
    /// the media plane uses every core. A room's host and tracks live on its home shard; its
    /// viewers spread over every shard once it has more than a few (see `driver::place`).
    pub workers: usize,
    /// The shard this core is (set by the driver for each of its cores).
    pub shard: Shard,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            candidates: Vec::new(),
            ring_capacity: 1024,
            max_queued_datagrams: 512,
            keyframe_request_interval: Duration::from_millis(500),
            track_grace: Duration::from_secs(15),
            max_retransmissions_per_nack: 64,
            peer_timeout: Duration::from_secs(15),
            max_ingress_delay: Duration::from_millis(50),
            max_handshake_delay: Duration::from_secs(1),
            overload_ingress_wait: Duration::from_millis(10),
            send_threads: None,
            viewer_srtp_profiles: vec![SrtpProfile::AeadAes128Gcm],
            host_srtp_profiles: SrtpProfile::ALL.to_vec(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shard: Shard::default(),
        }
    }
}

impl SfuConfig {
    /// The node's send threads: [`SfuConfig::send_threads`], or by default one per core that
    /// runs no shard (none when there are as many shards as cores, or more).
    pub fn node_send_threads(&self) -> usize {
        self.send_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            cores.saturating_sub(self.workers.max(1))
        })
    }
}
