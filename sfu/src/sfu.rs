//! The sans-IO SFU core: rooms, peers and tracks, no sockets, tasks or clock reads.
//!
//! Data flows one way. The driver pushes datagrams ([`Sfu::handle_datagram`]) and deadlines
//! ([`Sfu::handle_timeout`]); signaling pushes peers and SDP ([`Sfu::add_peer`],
//! [`Sfu::handle_offer`], ...). The driver then pulls datagrams to send
//! ([`Sfu::poll_transmit`]), events for signaling ([`Sfu::poll_event`]) and the next deadline
//! ([`Sfu::poll_timeout`]).
//!
//! Each peer is an `rtc` peer connection in ICE-lite mode with credentials chosen here, so an
//! inbound STUN check is routed by its USERNAME and everything after it by remote address.
//!
//! Media model: a room has *tracks* (stable outbound streams) fed by the host's *sources*. A
//! track keeps its identity, SSRCs and a continuous sequence/timestamp space when its source
//! changes (host reconnect, camera→screen via a new track), so viewers never renegotiate for
//! that. Each inbound packet is rewritten once into the track's space, stored once in the
//! track's ring, and sent to each viewer with only the viewer's SSRC and payload type changed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use crate::codecs::{Codec, engine_for};
use crate::demux::{DatagramKind, classify, parse_binding_request};
use crate::keyframe::starts_keyframe;
use crate::keytap::KeyTap;
use crate::rewrite::SourceRewriter;
use crate::ring::{PacketRing, SeqExtender, StoredPacket};
use crate::srtp::{SrtpProfile, SrtpSender};
use crate::{
    ConnectionState, MediaKind, PeerId, Role, RoomId, SfuConfig, SfuError, SfuStats, TrackId,
    TrackInfo,
};

// The core's parts, each an `impl Sfu` block over the state defined here.
/// Viewer feedback (NACK, PLI, FIR) and sender reports in both directions.
mod feedback;
/// The hot path: one inbound packet rewritten, stored and queued for every viewer, and the
/// fast path that protects it at send time.
mod forwarding;
/// One room over several shards: track catalogs, relayed packets, keyframe requests.
mod mirror;
/// Peers, SDP and ICE: creating peer connections, offers and answers, subscriptions.
mod negotiation;
/// Track deadlines and the once-a-second sweep.
mod timers;
/// Host sources bound to room tracks, orphaned and expired.
mod tracks;

use feedback::HostClock;
use forwarding::{FastPath, Outgoing, enqueue_writes};
pub use mirror::Relay;
use mirror::RelayBody;
pub use negotiation::Certificate;
pub use negotiation::host_candidate;

/// A datagram received on the media port.
#[derive(Debug)]
pub struct Datagram {
    /// The advertised address it was received on (one of [`SfuConfig::candidates`]).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: BytesMut,
}

/// Where to send the datagram [`Sfu::poll_transmit`] wrote into the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Something signaling must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum SfuEvent {
    /// Deliver this server-made offer to a viewer; its answer goes to [`Sfu::handle_answer`].
    Offer { peer: PeerId, sdp: String },
    /// A peer's media connection changed state.
    Connection {
        peer: PeerId,
        state: ConnectionState,
    },
    /// The tracks of a room changed (added, removed, source bound or lost).
    Tracks {
        room: RoomId,
        tracks: Vec<TrackInfo>,
    },
}

/// The SFU core. See the module documentation.
pub struct Sfu {
    config: SfuConfig,
    next_id: u64,
    /// Boxed: a `Peer` is ~9 KB (mostly `rtc`'s peer connection), and the map's spare
    /// slots and rehashes during a join spike would hold and move that much per slot.
    peers: HashMap<PeerId, Box<Peer>>,
    rooms: HashMap<RoomId, Room>,
    tracks: HashMap<TrackId, Track>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Peers with queued datagrams, served round-robin so one busy peer cannot starve others.
    ready: VecDeque<PeerId>,
    /// Datagrams the front of `ready` has had in its current turn (see [`PEER_TURN`]).
    turn: usize,
    /// Peer deadlines; an entry is stale unless it equals the peer's current `deadline`.
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Track deadlines (deferred keyframe request, orphan expiry), pushed when set; an
    /// entry is stale unless it is still one of the track's [`Track::deadlines`]. Keeps
    /// `poll_timeout` from scanning every track on each driver iteration.
    track_timers: BinaryHeap<Reverse<(Instant, TrackId)>>,
    events: VecDeque<SfuEvent>,
    /// Messages for other shards (see [`Sfu::poll_relay`]).
    relays: VecDeque<Relay>,
    stats: SfuStats,
    /// When connected peers are next checked for silence (see [`SfuConfig::peer_timeout`]).
    next_liveness_sweep: Option<Instant>,
    /// The one DTLS certificate every peer presents (see [`Certificate`]); `None` if
    /// generating it failed, and `rtc` then makes one per peer.
    certificate: Option<Certificate>,
}

/// How long after a host's first track its other tracks may still be starting (audio and
/// video start within milliseconds of each other) before a WHEP viewer is given what exists:
/// see [`Sfu::watchable`].
const HOST_TRACKS_SETTLE: Duration = Duration::from_secs(2);

/// How often connected peers are checked for silence and viewers are sent sender reports
/// (RFC 3550 §6.2's usual 1 s for a session of few senders). One pass over all peers per
/// second is cheap even with thousands, and avoids touching a timer per packet.
const PERIODIC_SWEEP: Duration = Duration::from_secs(1);

struct Peer {
    room: RoomId,
    role: Role,
    pc: RTCPeerConnection,
    ufrag: String,
    remotes: Vec<SocketAddr>,
    /// Datagrams waiting for [`Sfu::poll_transmit`], at most
    /// [`SfuConfig::max_queued_datagrams`].
    queue: VecDeque<Outgoing>,
    /// The crypto provider of `pc`, which learns its SRTP master keys.
    keys: Arc<KeyTap>,
    /// How forwarded media reaches this peer.
    fast: FastPath,
    /// The local address of the latest nominated pair (where `nominated` sent its check to).
    local: Option<SocketAddr>,
    in_ready: bool,
    deadline: Option<Instant>,
    state: ConnectionState,
    /// Publisher: the host's track id (from `rtc`) → the room track it feeds.
    sources: HashMap<String, TrackId>,
    /// Publisher: when its first track started.
    first_source_at: Option<Instant>,
    /// Subscriber: one per room track, in the order they were added.
    subscriptions: Vec<Subscription>,
    /// Subscriber whose client makes the offers (WHEP): the server never offers, so it
    /// subscribes only to tracks the client's offer left room for and never renegotiates.
    client_offers: bool,
    /// Subscriber: a server offer awaits its answer.
    offer_outstanding: bool,
    /// Subscriber: tracks changed while an offer was outstanding; offer again after the answer.
    needs_offer: bool,
    /// Whether any remote description was applied (candidates need one).
    has_remote_description: bool,
    /// The remote address of the latest nominated pair. A controlling client may nominate
    /// several pairs (two interfaces, Wi-Fi and cellular) and uses the last; `rtc`'s ICE-lite
    /// agent keeps the first (rtc-ice `handle_binding_request` selects only when none is),
    /// so DTLS and media are sent here instead.
    nominated: Option<SocketAddr>,
    /// When the last datagram from any of the peer's addresses arrived.
    last_heard: Instant,
    /// Connectivity checks that arrived before the remote description (a client starts
    /// checking the moment it has *its* description, one signaling hop before we have it).
    /// Replayed once the description is applied instead of costing a STUN retransmission
    /// (~250 ms in browsers). Bounded by [`MAX_EARLY_DATAGRAMS`].
    early: Vec<Datagram>,
}

/// Early connectivity checks held per peer; more are dropped (the client retransmits).
const MAX_EARLY_DATAGRAMS: usize = 8;

/// Datagrams a peer may send in a row before the next peer's turn: a video frame at a few
/// Mbit/s, which then leaves as one GSO message ([`crate::udp::MAX_SEGMENTS`]), while a peer
/// with a long queue (a retransmission burst) still cannot hold the others up for long.
const PEER_TURN: usize = crate::udp::MAX_SEGMENTS;

struct Subscription {
    track: TrackId,
    sender: RTCRtpSenderId,
    ssrc: u32,
    /// The viewer's payload type for the track's codec, learned after negotiation.
    payload_type: Option<u8>,
    /// Video only: forward nothing until a keyframe starts, so the first frame decodes.
    awaiting_keyframe: bool,
    /// The track's extended sequence number >> 16 at the first packet sent: the viewer's
    /// SRTP rollover counter is 0 there (RFC 3711 §3.3.1) and counts wraps from it.
    roc_base: Option<u64>,
    /// RTP packets and payload octets sent, for sender reports (RFC 3550 §6.4.1; wrapping).
    packets_sent: u32,
    octets_sent: u32,
}

#[derive(Default)]
struct Room {
    publisher: Option<PeerId>,
    subscribers: Vec<PeerId>,
    tracks: Vec<TrackId>,
    /// A mirrored room: what the home shard's last catalog said of its host's start (see
    /// [`Sfu::host_starting_since`]).
    starting_since: Option<Instant>,
}

struct Track {
    room: RoomId,
    codec: Codec,
    source: Option<Source>,
    rewriter: SourceRewriter,
    ring: PacketRing,
    /// Extends the unified 16-bit numbers viewers NACK back to ring indices.
    extender: SeqExtender,
    subscribers: Vec<PeerId>,
    last_keyframe_request: Option<Instant>,
    keyframe_request_pending: bool,
    /// When the source went away; the track is removed after `track_grace`.
    orphaned_at: Option<Instant>,
    /// The current source's clock as its last sender report gave it, in the track's
    /// timestamp space: what viewers' sender reports are computed from, so audio and video
    /// keep the host's lip sync.
    clock: Option<HostClock>,
    /// Home shard: the shards with viewers of this track, which are sent every packet.
    mirrors: Vec<usize>,
}

/// What feeds a track.
enum Source {
    /// A host on this shard (the room's home).
    Host {
        peer: PeerId,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
    },
    /// The room's home shard relays the packets of its track of the same id (a mirror).
    Home,
}

impl Source {
    /// Whether it is `peer`'s stream `ssrc` (a replaced source's stragglers are not).
    fn is_host_stream(&self, peer: PeerId, ssrc: u32) -> bool {
        matches!(self, Source::Host { peer: p, ssrc: s, .. } if *p == peer && *s == ssrc)
    }

    fn is_host(&self, peer: PeerId) -> bool {
        matches!(self, Source::Host { peer: p, .. } if *p == peer)
    }
}

impl Track {
    fn new(room: RoomId, codec: Codec, source: Option<Source>, config: &SfuConfig) -> Self {
        Self {
            room,
            codec,
            source,
            rewriter: SourceRewriter::default(),
            ring: PacketRing::new(config.ring_capacity),
            extender: SeqExtender::default(),
            subscribers: Vec::new(),
            last_keyframe_request: None,
            keyframe_request_pending: false,
            orphaned_at: None,
            clock: None,
            mirrors: Vec::new(),
        }
    }

    /// `[deferred keyframe request, orphan expiry]`, each when set.
    fn deadlines(&self, config: &SfuConfig) -> [Option<Instant>; 2] {
        let keyframe = self
            .last_keyframe_request
            .filter(|_| self.keyframe_request_pending && self.source.is_some())
            .map(|last| last + config.keyframe_request_interval);
        let expiry = self.orphaned_at.map(|at| at + config.track_grace);
        [keyframe, expiry]
    }
}

impl Sfu {
    /// A core with a certificate of its own.
    pub fn new(config: SfuConfig) -> Self {
        Self::with_certificate(config, Certificate::generate())
    }

    /// A core whose peers present `certificate`: the shards of one node share one, so a
    /// client sees the same fingerprint whichever shard it lands on.
    pub fn with_certificate(config: SfuConfig, certificate: Option<Certificate>) -> Self {
        Self {
            config,
            next_id: 1,
            peers: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            ready: VecDeque::new(),
            turn: 0,
            timers: BinaryHeap::new(),
            track_timers: BinaryHeap::new(),
            events: VecDeque::new(),
            relays: VecDeque::new(),
            stats: SfuStats::default(),
            next_liveness_sweep: None,
            certificate,
        }
    }

    pub fn config(&self) -> &SfuConfig {
        &self.config
    }

    /// Counters since start, and the current number of rooms, peers and tracks.
    pub fn stats(&self) -> SfuStats {
        let count = |f: fn(&FastPath) -> bool| {
            self.peers
                .values()
                .filter(|p| p.role == Role::Subscriber && f(&p.fast))
                .count() as u64
        };
        // Rooms and tracks are counted by their home shard only, so shards' stats add up.
        SfuStats {
            rooms: self.rooms.keys().filter(|r| self.is_home(r)).count() as u64,
            peers: self.peers.len() as u64,
            tracks: (self.tracks.keys())
                .filter(|t| self.home_of(**t) == self.config.shard.index)
                .count() as u64,
            fast_path_viewers: count(|f| matches!(f, FastPath::Active(_))),
            rtc_path_viewers: count(|f| matches!(f, FastPath::Unavailable)),
            ..self.stats.clone()
        }
    }

    /// Number of peers currently held.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The tracks of `room` as viewers see them.
    pub fn tracks(&self, room: &RoomId) -> Vec<TrackInfo> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        r.tracks
            .iter()
            .filter_map(|id| {
                self.tracks.get(id).map(|t| TrackInfo {
                    id: *id,
                    kind: t.codec.kind,
                    active: t.source.is_some(),
                })
            })
            .collect()
    }

    /// Creates a peer connection for a host (`Publisher`) or viewer (`Subscriber`) of `room`.
    ///
    /// A viewer is sent an offer ([`SfuEvent::Offer`]) as soon as the room has tracks.
    /// A new publisher replaces the room's current one (signaling decides who may host): the
    /// old one's tracks are orphaned and rebound to the new host's sources, so a host
    /// taking over from its own stale session never races that session's cleanup.
    pub fn add_peer(
        &mut self,
        now: Instant,
        room: &RoomId,
        role: Role,
    ) -> Result<PeerId, SfuError> {
        let id = self.create_peer(now, room, role, false)?;
        if role == Role::Subscriber {
            let tracks = self.rooms[room].tracks.clone();
            for track in tracks {
                self.subscribe(id, track)?;
            }
            if !self.peers[&id].subscriptions.is_empty() {
                self.renegotiate(now, id)?;
            }
        }
        self.process(now, id);
        Ok(id)
    }

    /// Creates a peer from a client's offer and returns it with the SDP answer: how WHIP
    /// hosts publish and WHEP viewers watch (RFC 9725), where the client always offers.
    ///
    /// A viewer is given the room's current tracks, one per `m=` section of the matching
    /// kind its offer made (extra tracks are not sent: there is no server offer to add
    /// them). A room that is not [`watchable`](Self::watchable) yet is refused with
    /// [`SfuError::NothingToWatch`]. On any error nothing is left behind.
    pub fn add_peer_with_offer(
        &mut self,
        now: Instant,
        room: &RoomId,
        role: Role,
        offer: &str,
    ) -> Result<(PeerId, String), SfuError> {
        if role == Role::Subscriber && !self.watchable(now, room) {
            return Err(SfuError::NothingToWatch);
        }
        let id = self.create_peer(now, room, role, role == Role::Subscriber)?;
        let result = match role {
            Role::Publisher => self.handle_offer(now, id, offer),
            Role::Subscriber => self.answer_viewer_offer(now, id, room, offer),
        };
        match result {
            Ok(answer) => Ok((id, answer)),
            Err(err) => {
                self.remove_peer(now, id);
                Err(err)
            }
        }
    }

    /// Removes a peer. A host's tracks stay in the room for [`SfuConfig::track_grace`], so
    /// a reconnecting host is rebound to them without disturbing viewers.
    pub fn remove_peer(&mut self, now: Instant, peer: PeerId) {
        let Some(mut p) = self.peers.remove(&peer) else {
            return;
        };
        let _ = p.pc.close();
        self.by_ufrag.remove(&p.ufrag);
        for addr in &p.remotes {
            if self.by_addr.get(addr) == Some(&peer) {
                self.by_addr.remove(addr);
            }
        }
        let room_id = p.room.clone();
        if let Some(room) = self.rooms.get_mut(&room_id) {
            match p.role {
                Role::Publisher => {
                    if room.publisher == Some(peer) {
                        room.publisher = None;
                    }
                    self.orphan(now, peer, &room_id, p.sources.into_values());
                }
                Role::Subscriber => {
                    room.subscribers.retain(|id| *id != peer);
                    for sub in &p.subscriptions {
                        if let Some(track) = self.tracks.get_mut(&sub.track) {
                            track.subscribers.retain(|id| *id != peer);
                            if track.subscribers.is_empty() {
                                self.watch(sub.track, false);
                            }
                        }
                    }
                }
            }
        }
        self.remove_room_if_empty(&room_id);
    }

    /// Feeds one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Datagram) {
        self.stats.datagrams_in += 1;
        let kind = classify(&datagram.payload);
        let peer = match kind {
            DatagramKind::Stun => match parse_binding_request(&datagram.payload) {
                Some(check) => {
                    let peer = self.by_ufrag.get(check.local_ufrag).copied();
                    if let Some(peer) = peer {
                        self.learn_address(
                            peer,
                            datagram.local,
                            datagram.remote,
                            check.use_candidate,
                        );
                    }
                    peer
                }
                None => self.by_addr.get(&datagram.remote).copied(),
            },
            DatagramKind::Dtls | DatagramKind::Rtp => self.by_addr.get(&datagram.remote).copied(),
            DatagramKind::Unknown => None,
        };
        let Some(peer) = peer else {
            self.stats.datagrams_unroutable += 1;
            return;
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.last_heard = now;
        if !p.has_remote_description {
            if kind == DatagramKind::Stun && p.early.len() < MAX_EARLY_DATAGRAMS {
                p.early.push(datagram);
            }
            return;
        }
        self.read_datagram(now, peer, datagram);
    }

    /// Hands a routed datagram to its peer connection.
    fn read_datagram(&mut self, now: Instant, peer: PeerId, datagram: Datagram) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let result = p.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: datagram.local,
                peer_addr: datagram.remote,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: datagram.payload,
        });
        if let Err(err) = result {
            // Garbage or replayed packets: count and carry on; never fatal for the peer.
            self.stats.datagrams_rejected += 1;
            tracing::trace!(%peer, %err, "datagram rejected");
        }
        self.process(now, peer);
    }

    fn replay_early(&mut self, now: Instant, peer: PeerId) {
        let early = self
            .peers
            .get_mut(&peer)
            .map(|p| std::mem::take(&mut p.early))
            .unwrap_or_default();
        for datagram in early {
            self.read_datagram(now, peer, datagram);
        }
    }

    /// Advances every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            if p.deadline != Some(at) {
                continue; // stale entry
            }
            p.deadline = None;
            if let Err(err) = p.pc.handle_timeout(now) {
                tracing::debug!(%peer, %err, "peer timeout handling failed");
            }
            self.process(now, peer);
        }
        self.handle_track_timers(now);
        if self.next_liveness_sweep.is_some_and(|at| at <= now) {
            self.periodic_sweep(now);
        }
    }

    /// Writes the next datagram to send into `buf` (cleared first) and says where it goes;
    /// round-robin across peers, a turn of up to [`PEER_TURN`] datagrams each, so one busy
    /// peer cannot starve the others while a viewer's packets of one frame still leave back
    /// to back (the send threads turn such a run into one GSO message).
    ///
    /// Forwarded media is written and SRTP-protected here, in `buf`: a driver that reuses its
    /// buffers makes the fast path allocation-free. Reserve 1500 bytes.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        while let Some(&peer) = self.ready.front() {
            let Some(p) = self.peers.get_mut(&peer) else {
                self.ready.pop_front();
                self.turn = 0;
                continue;
            };
            let Some(outgoing) = p.queue.pop_front() else {
                p.in_ready = false;
                self.ready.pop_front();
                self.turn = 0;
                continue;
            };
            self.turn += 1;
            if p.queue.is_empty() {
                p.in_ready = false;
                self.ready.pop_front();
                self.turn = 0;
            } else if self.turn == PEER_TURN {
                self.ready.rotate_left(1);
                self.turn = 0;
            }
            match outgoing {
                Outgoing::Made {
                    local,
                    remote,
                    payload,
                } => {
                    buf.clear();
                    buf.extend_from_slice(&payload);
                    return Some(Transmit { local, remote });
                }
                Outgoing::Media(out) => {
                    if let Some(transmit) = out.seal(p, buf) {
                        return Some(transmit);
                    }
                }
            }
        }
        None
    }

    /// The next event for signaling.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`Sfu::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Drop stale heap entries so the head is a live deadline.
        while let Some(Reverse((at, peer))) = self.timers.peek().copied() {
            if self
                .peers
                .get(&peer)
                .is_some_and(|p| p.deadline == Some(at))
            {
                break;
            }
            self.timers.pop();
        }
        while let Some(Reverse((at, id))) = self.track_timers.peek().copied() {
            if self.track_timer_is_live(at, id) {
                break;
            }
            self.track_timers.pop();
        }
        let peer_deadline = self.timers.peek().map(|Reverse((at, _))| *at);
        let track_deadline = self.track_timers.peek().map(|Reverse((at, _))| *at);
        [peer_deadline, track_deadline, self.next_liveness_sweep]
            .into_iter()
            .flatten()
            .min()
    }

    /// Records that `remote` proved (by a check with the peer's credentials) to be `peer`.
    fn learn_address(
        &mut self,
        peer: PeerId,
        local: SocketAddr,
        remote: SocketAddr,
        nominated: bool,
    ) {
        self.by_addr.insert(remote, peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            if !p.remotes.contains(&remote) {
                p.remotes.push(remote);
            }
            if nominated && (p.nominated, p.local) != (Some(remote), Some(local)) {
                tracing::debug!(%peer, %remote, "client nominated a pair");
                p.nominated = Some(remote);
                p.local = Some(local);
            }
        }
    }

    /// Drains everything a peer connection produced: events, inbound messages (forwarding
    /// media), outbound datagrams. Then refreshes its deadline.
    fn process(&mut self, now: Instant, peer: PeerId) {
        loop {
            let Some(p) = self.peers.get_mut(&peer) else {
                return;
            };
            if let Some(event) = p.pc.poll_event() {
                self.on_pc_event(now, peer, event);
                continue;
            }
            if let Some(message) = p.pc.poll_read() {
                self.on_pc_message(peer, message);
                continue;
            }
            break;
        }
        self.flush_peer(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let deadline = p.pc.poll_timeout();
        if deadline != p.deadline {
            p.deadline = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, peer)));
            }
        }
    }

    /// Moves a peer connection's outbound datagrams into its bounded queue.
    fn flush_peer(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            let max = self.config.max_queued_datagrams;
            enqueue_writes(peer, p, max, &mut self.ready, &mut self.stats);
        }
    }

    fn on_pc_event(&mut self, now: Instant, peer: PeerId, event: RTCPeerConnectionEvent) {
        tracing::debug!(%peer, ?event, "peer connection event");
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let state = match state {
                    RTCPeerConnectionState::Connecting => ConnectionState::Connecting,
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed => ConnectionState::Failed,
                    RTCPeerConnectionState::Closed => ConnectionState::Closed,
                    _ => return,
                };
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                if p.state == state {
                    return;
                }
                p.state = state;
                if state == ConnectionState::Connected && self.next_liveness_sweep.is_none() {
                    self.next_liveness_sweep = Some(now + PERIODIC_SWEEP);
                }
                let Some(p) = self.peers.get(&peer) else {
                    return;
                };
                if state == ConnectionState::Connected && p.role == Role::Subscriber {
                    // A viewer that just connected needs a keyframe to show anything.
                    let video: Vec<TrackId> = p
                        .subscriptions
                        .iter()
                        .filter(|s| s.awaiting_keyframe)
                        .map(|s| s.track)
                        .collect();
                    for track in video {
                        self.request_keyframe(now, track);
                    }
                }
                self.events.push_back(SfuEvent::Connection { peer, state });
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_source_open(now, peer, init);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                self.on_source_closed(now, peer, &track_id);
            }
            _ => {}
        }
    }

    fn on_pc_message(&mut self, peer: PeerId, message: TaggedRTCMessage) {
        let now = message.now;
        match message.message {
            RTCMessage::RtpPacket(track_id, packet) => {
                let Some(track) = self
                    .peers
                    .get(&peer)
                    .and_then(|p| p.sources.get(&track_id))
                    .copied()
                else {
                    return;
                };
                self.forward(now, peer, track, packet);
            }
            RTCMessage::RtcpPacket(_, packets) => {
                let Some(role) = self.peers.get(&peer).map(|p| p.role) else {
                    return;
                };
                for packet in &packets {
                    match role {
                        Role::Subscriber => self.on_viewer_rtcp(now, peer, packet.as_ref()),
                        Role::Publisher => {
                            if let Some(sr) = packet.as_any().downcast_ref::<SenderReport>() {
                                self.on_host_sender_report(now, peer, sr);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
