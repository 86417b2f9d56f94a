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
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
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
    peers: HashMap<PeerId, Peer>,
    rooms: HashMap<RoomId, Room>,
    tracks: HashMap<TrackId, Track>,
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// Peers with queued datagrams, served round-robin so one busy peer cannot starve others.
    ready: VecDeque<PeerId>,
    /// Peer deadlines; an entry is stale unless it equals the peer's current `deadline`.
    timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    /// Track deadlines (deferred keyframe request, orphan expiry), pushed when set; an
    /// entry is stale unless it is still one of the track's [`Track::deadlines`]. Keeps
    /// `poll_timeout` from scanning every track on each driver iteration.
    track_timers: BinaryHeap<Reverse<(Instant, TrackId)>>,
    events: VecDeque<SfuEvent>,
    stats: SfuStats,
    /// When connected peers are next checked for silence (see [`SfuConfig::peer_timeout`]).
    next_liveness_sweep: Option<Instant>,
    /// The one DTLS certificate every peer presents, generated at start: one ECDSA key
    /// generation and self-signing per process instead of per join (a join spike's cost).
    /// `None` if generating it failed; `rtc` then makes one per peer.
    certificate: Option<RTCCertificate>,
}

/// How long after a host's first track its other tracks may still be starting (audio and
/// video start within milliseconds of each other) before a WHEP viewer is given what exists:
/// see [`Sfu::watchable`].
const HOST_TRACKS_SETTLE: Duration = Duration::from_secs(2);

/// How often connected peers are checked for silence and viewers are sent sender reports
/// (RFC 3550 §6.2's usual 1 s for a session of few senders). One pass over all peers per
/// second is cheap even with thousands, and avoids touching a timer per packet.
const PERIODIC_SWEEP: Duration = Duration::from_secs(1);

/// Forwarded packets a viewer is sent through `rtc` while the fast path checks its keys; if
/// none of them matched, the viewer stays on `rtc`'s path (see [`FastPath`]).
const VERIFY_ATTEMPTS: u8 = 3;

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

/// How forwarded media is protected for one viewer.
///
/// `rtc` has no public accessor for SRTP keys. The fast path learns candidates through the
/// peer's crypto provider ([`KeyTap`]) and takes over only once its output for a real packet
/// was byte-identical to what `rtc` produced for the same packet; until then, and for good
/// if no candidate matches, packets take `rtc`'s own path (`RTCRtpSender::write_rtp`).
enum FastPath {
    /// Packets go through `rtc`; each is also protected with every candidate key and compared.
    Verifying { attempts: u8 },
    /// Packets are written and sealed in place at send time, with no `rtc` involvement.
    Active(SrtpSender),
    /// No candidate matched `rtc`'s output: `rtc`'s path for the peer's lifetime.
    Unavailable,
}

/// One datagram in a peer's queue.
enum Outgoing {
    /// Made by `rtc`: STUN, DTLS, RTCP, or media on `rtc`'s path.
    Made {
        local: SocketAddr,
        remote: SocketAddr,
        payload: BytesMut,
    },
    /// A forwarded packet on the fast path: written and protected only when polled, so a
    /// packet dropped from a full queue costs no encryption, and the payload is shared (a
    /// refcount, not a copy) until then.
    Media(MediaOut),
}

/// The header fields of one forwarded packet as one viewer receives it, and its payload.
struct MediaOut {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    payload_type: u8,
    marker: bool,
    /// SRTP rollover counter of `seq` (RFC 3711 §3.3.1).
    roc: u32,
    payload: Bytes,
}

impl MediaOut {
    /// Writes the plain RTP packet (RFC 3550 §5.1: fixed 12-byte header, no CSRC, no
    /// extension) into `buf`.
    fn write(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(&[0x80, (u8::from(self.marker) << 7) | self.payload_type]);
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&self.timestamp.to_be_bytes());
        buf.extend_from_slice(&self.ssrc.to_be_bytes());
        buf.extend_from_slice(&self.payload);
    }
}

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
}

/// An NTP ↔ RTP correspondence from a host's sender report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy)]
struct HostClock {
    /// NTP timestamp (64-bit fixed point, seconds since 1900) of the report.
    ntp: u64,
    /// The RTP timestamp of the same instant, mapped into the track's space.
    rtp: u32,
    /// When the report arrived.
    at: Instant,
}

impl HostClock {
    /// The (NTP, RTP) pair for `now`, advanced from the report by the time since it arrived.
    fn at(&self, now: Instant, clock_rate: u32) -> (u64, u32) {
        let elapsed = now.saturating_duration_since(self.at);
        let ntp_elapsed =
            (elapsed.as_secs() << 32) + ((u64::from(elapsed.subsec_nanos()) << 32) / 1_000_000_000);
        let ticks = (elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000) as u32;
        (
            self.ntp.wrapping_add(ntp_elapsed),
            self.rtp.wrapping_add(ticks),
        )
    }
}

struct Source {
    peer: PeerId,
    receiver: RTCRtpReceiverId,
    ssrc: u32,
}

impl Track {
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
    pub fn new(config: SfuConfig) -> Self {
        Self {
            config,
            next_id: 1,
            peers: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            track_timers: BinaryHeap::new(),
            events: VecDeque::new(),
            stats: SfuStats::default(),
            next_liveness_sweep: None,
            certificate: shared_certificate(),
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
        SfuStats {
            rooms: self.rooms.len() as u64,
            peers: self.peers.len() as u64,
            tracks: self.tracks.len() as u64,
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

    /// Whether a client-offering (WHEP) viewer can be answered now: the room has tracks and
    /// its host is not still starting them. Such a viewer keeps the tracks it was answered
    /// with, so one answered between a host's first and last track (a few milliseconds, but
    /// a crowd of players retrying while the host goes live hits it) would never get the
    /// rest; it is told "not live yet" and retries. The host's expected tracks are the
    /// sections its offer sends on; one that never starts (an unsupported codec, a muted
    /// camera) stops counting after [`HOST_TRACKS_SETTLE`]. Tracks left by a host that has
    /// gone, or that is reconnecting, are watchable as they are: its new tracks rebind them.
    fn watchable(&self, now: Instant, room: &RoomId) -> bool {
        let Some(r) = self.rooms.get(room).filter(|r| !r.tracks.is_empty()) else {
            return false;
        };
        let Some(host) = r.publisher.and_then(|id| self.peers.get(&id)) else {
            return true;
        };
        let Some(first) = host.first_source_at else {
            return true;
        };
        host.sources.len() >= host.pc.get_receivers().count()
            || now.saturating_duration_since(first) >= HOST_TRACKS_SETTLE
    }

    fn answer_viewer_offer(
        &mut self,
        now: Instant,
        id: PeerId,
        room: &RoomId,
        offer: &str,
    ) -> Result<String, SfuError> {
        let description =
            RTCSessionDescription::offer(offer.to_owned()).map_err(SfuError::invalid_sdp)?;
        let p = self.peers.get_mut(&id).ok_or(SfuError::UnknownPeer)?;
        p.pc.set_remote_description(now, description)
            .map_err(SfuError::invalid_sdp)?;
        p.has_remote_description = true;
        let tracks = self
            .rooms
            .get(room)
            .map(|r| r.tracks.clone())
            .unwrap_or_default();
        for track in tracks {
            // No free `m=` section of this kind: the viewer does not get this track.
            let _ = self.subscribe(id, track);
        }
        let p = self.peers.get_mut(&id).ok_or(SfuError::UnknownPeer)?;
        if p.subscriptions.is_empty() {
            return Err(SfuError::InvalidSdp(
                "the offer has no audio or video section the room's tracks could use".into(),
            ));
        }
        let answer = p.pc.create_answer(None).map_err(SfuError::invalid_sdp)?;
        let sdp = apply_local_description(now, &mut p.pc, answer).map_err(SfuError::invalid_sdp)?;
        self.replay_early(now, id);
        self.process(now, id);
        Ok(sdp)
    }

    /// Restarts ICE for a peer whose client offers (RFC 9725 §4.3.2): the client's new
    /// credentials replace the old ones in its last offer, which is applied again; nothing
    /// else is renegotiated. Returns the new local description (its ICE credentials and
    /// candidates are what the client needs).
    pub fn restart_ice(
        &mut self,
        now: Instant,
        peer: PeerId,
        ufrag: &str,
        pwd: &str,
    ) -> Result<String, SfuError> {
        let valid = |v: &str| {
            !v.is_empty()
                && v.len() <= 256
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        };
        if !valid(ufrag) || !valid(pwd) {
            return Err(SfuError::InvalidCandidate(
                "ICE credentials must be ice-chars (letters, digits, '+', '/')".into(),
            ));
        }
        let p = self.peers.get_mut(&peer).ok_or(SfuError::UnknownPeer)?;
        if p.role == Role::Subscriber && !p.client_offers {
            return Err(SfuError::WrongRole("this viewer answers server offers"));
        }
        let previous =
            p.pc.remote_description()
                .map(|d| d.sdp.clone())
                .ok_or(SfuError::NoOfferPending)?;
        let sdp = replace_ice_credentials(&previous, ufrag, pwd);
        let offer = RTCSessionDescription::offer(sdp).map_err(SfuError::invalid_sdp)?;
        p.pc.set_remote_description(now, offer)
            .map_err(SfuError::invalid_sdp)?;
        let answer = p.pc.create_answer(None).map_err(SfuError::invalid_sdp)?;
        let sdp = apply_local_description(now, &mut p.pc, answer).map_err(SfuError::invalid_sdp)?;
        self.process(now, peer);
        Ok(sdp)
    }

    /// Creates a peer connection and registers it in its room, without subscriptions.
    fn create_peer(
        &mut self,
        now: Instant,
        room: &RoomId,
        role: Role,
        client_offers: bool,
    ) -> Result<PeerId, SfuError> {
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let ufrag = random_token(16);
        let keys = KeyTap::new().map_err(SfuError::internal)?;
        let setting_engine = SettingEngineBuilder::new()
            // Learns the SRTP master keys for the forwarding fast path (see `FastPath`).
            .with_crypto_provider(keys.clone())
            // AES-128-GCM first: one AES-GCM pass per packet instead of AES-CTR plus
            // HMAC-SHA1 (RFC 7714). AES-256 is not offered: the fast path does not implement
            // it, and it buys nothing for a live stream.
            .with_srtp_protection_profiles(vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
            ])
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), random_token(32))
            // Hosts offer actpass; answering as DTLS server lets the browser start the
            // handshake as soon as ICE succeeds.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            // `rtc`'s ICE agent judges liveness by STUN on the first selected pair only, and
            // declares a client that moved to another pair disconnected after 5 s. The SFU
            // judges liveness itself from all of a peer's traffic (`SfuConfig::peer_timeout`).
            .with_ice_timeouts(Some(Duration::ZERO), Some(Duration::ZERO), None)
            .build();
        let (engine, registry) = engine_for(role).map_err(SfuError::internal)?;
        let configuration = match &self.certificate {
            Some(certificate) => {
                RTCConfigurationBuilder::new().with_certificates(vec![certificate.clone()])
            }
            None => RTCConfigurationBuilder::new(),
        };
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(configuration.build())
            .with_setting_engine(setting_engine)
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(SfuError::internal)?;
        for addr in &self.config.candidates {
            pc.add_local_candidate(host_candidate(*addr)?)
                .map_err(SfuError::internal)?;
        }
        // End of candidates: an ICE-lite server knows all of its candidates up front.
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(SfuError::internal)?;

        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(
            id,
            Peer {
                room: room.clone(),
                role,
                pc,
                ufrag,
                remotes: Vec::new(),
                queue: VecDeque::new(),
                keys,
                fast: FastPath::Verifying { attempts: 0 },
                local: None,
                in_ready: false,
                deadline: None,
                state: ConnectionState::New,
                sources: HashMap::new(),
                first_source_at: None,
                subscriptions: Vec::new(),
                client_offers,
                offer_outstanding: false,
                needs_offer: false,
                has_remote_description: false,
                nominated: None,
                last_heard: now,
                early: Vec::new(),
            },
        );
        let r = self.rooms.entry(room.clone()).or_default();
        match role {
            Role::Publisher => {
                if let Some(old) = r.publisher.replace(id) {
                    self.orphan_sources(now, old);
                }
            }
            Role::Subscriber => r.subscribers.push(id),
        }
        Ok(id)
    }

    /// Applies a host's offer and returns the SDP answer.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        sdp: &str,
    ) -> Result<String, SfuError> {
        let p = self.peers.get_mut(&peer).ok_or(SfuError::UnknownPeer)?;
        if p.role != Role::Publisher {
            return Err(SfuError::WrongRole("only a host sends offers"));
        }
        let offer = RTCSessionDescription::offer(sdp.to_owned()).map_err(SfuError::invalid_sdp)?;
        p.pc.set_remote_description(now, offer)
            .map_err(SfuError::invalid_sdp)?;
        p.has_remote_description = true;
        let answer = p.pc.create_answer(None).map_err(SfuError::invalid_sdp)?;
        let sdp = apply_local_description(now, &mut p.pc, answer).map_err(SfuError::invalid_sdp)?;
        self.replay_early(now, peer);
        self.process(now, peer);
        Ok(sdp)
    }

    /// Applies a viewer's answer to the last server offer.
    pub fn handle_answer(&mut self, now: Instant, peer: PeerId, sdp: &str) -> Result<(), SfuError> {
        let p = self.peers.get_mut(&peer).ok_or(SfuError::UnknownPeer)?;
        if p.role != Role::Subscriber {
            return Err(SfuError::WrongRole("only a viewer answers server offers"));
        }
        if !p.offer_outstanding {
            return Err(SfuError::NoOfferPending);
        }
        let answer =
            RTCSessionDescription::answer(sdp.to_owned()).map_err(SfuError::invalid_sdp)?;
        p.pc.set_remote_description(now, answer)
            .map_err(SfuError::invalid_sdp)?;
        p.has_remote_description = true;
        p.offer_outstanding = false;
        // Payload types are the viewer's choice; relearn them after every negotiation.
        for sub in &mut p.subscriptions {
            sub.payload_type = None;
        }
        if std::mem::take(&mut p.needs_offer) {
            self.renegotiate(now, peer)?;
        }
        self.replay_early(now, peer);
        self.process(now, peer);
        Ok(())
    }

    /// Adds a trickled remote candidate. An empty candidate string (end of candidates) is
    /// accepted and ignored: an ICE-lite server needs no remote candidates at all, it learns
    /// the client's address from its connectivity checks.
    pub fn handle_candidate(
        &mut self,
        now: Instant,
        peer: PeerId,
        candidate: RTCIceCandidateInit,
    ) -> Result<(), SfuError> {
        let p = self.peers.get_mut(&peer).ok_or(SfuError::UnknownPeer)?;
        if !p.has_remote_description && !p.offer_outstanding {
            return Err(SfuError::CandidateBeforeDescription);
        }
        if candidate.candidate.is_empty() {
            return Ok(());
        }
        if !p.has_remote_description {
            // A viewer trickling before its answer: nothing to apply yet, and nothing lost
            // either (ICE-lite learns addresses from the checks themselves).
            return Ok(());
        }
        p.pc.add_remote_candidate(candidate)
            .map_err(|e| SfuError::InvalidCandidate(e.to_string()))?;
        self.process(now, peer);
        Ok(())
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

    /// Once a second: reports connected peers that went silent as failed (signaling decides
    /// what follows: the client is told and reconnects, or its session ends and removes the
    /// peer), and sends viewers their sender reports.
    fn periodic_sweep(&mut self, now: Instant) {
        let timeout = self.config.peer_timeout;
        let mut any_connected = false;
        for (id, p) in &mut self.peers {
            if p.state != ConnectionState::Connected {
                continue;
            }
            if now.saturating_duration_since(p.last_heard) > timeout {
                p.state = ConnectionState::Failed;
                tracing::debug!(peer = %id, "peer silent for {timeout:?}: failed");
                self.events.push_back(SfuEvent::Connection {
                    peer: *id,
                    state: ConnectionState::Failed,
                });
            } else {
                any_connected = true;
            }
        }
        self.next_liveness_sweep = any_connected.then(|| now + PERIODIC_SWEEP);
        self.send_sender_reports(now);
    }

    /// Writes the next datagram to send into `buf` (cleared first) and says where it goes;
    /// round-robin across peers, so one busy peer cannot starve the others.
    ///
    /// Forwarded media is written and SRTP-protected here, in `buf`: a driver that reuses its
    /// buffers makes the fast path allocation-free. Reserve 1500 bytes.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> Option<Transmit> {
        while let Some(peer) = self.ready.pop_front() {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let Some(outgoing) = p.queue.pop_front() else {
                p.in_ready = false;
                continue;
            };
            if p.queue.is_empty() {
                p.in_ready = false;
            } else {
                self.ready.push_back(peer);
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
                    // Only queued once the fast path is active and a pair was nominated.
                    let (FastPath::Active(srtp), Some(local), Some(remote)) =
                        (&p.fast, p.local, p.nominated)
                    else {
                        continue;
                    };
                    out.write(buf);
                    srtp.protect_rtp(buf, 12, out.roc);
                    return Some(Transmit { local, remote });
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

    // ---- internals -------------------------------------------------------------------------

    /// Detaches a (replaced) publisher's sources from the room's tracks.
    fn orphan_sources(&mut self, now: Instant, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let sources = std::mem::take(&mut p.sources);
        let room = p.room.clone();
        self.orphan(now, peer, &room, sources.into_values());
    }

    /// Marks the tracks among `ids` that `peer` feeds as orphaned (kept for `track_grace`),
    /// and tells signaling if any was.
    fn orphan(
        &mut self,
        now: Instant,
        peer: PeerId,
        room: &RoomId,
        ids: impl IntoIterator<Item = TrackId>,
    ) {
        let mut changed = false;
        for id in ids {
            if let Some(track) = self.tracks.get_mut(&id)
                && track.source.as_ref().is_some_and(|s| s.peer == peer)
            {
                track.source = None;
                track.orphaned_at = Some(now);
                self.schedule_track(id);
                changed = true;
            }
        }
        if changed {
            self.emit_tracks(room);
        }
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

    /// Keeps the host's NTP ↔ RTP correspondence of a track, in the track's timestamp
    /// space, for the viewers' sender reports.
    fn on_host_sender_report(&mut self, now: Instant, peer: PeerId, sr: &SenderReport) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        for id in p.sources.values() {
            let Some(track) = self.tracks.get_mut(id) else {
                continue;
            };
            if track
                .source
                .as_ref()
                .is_some_and(|s| s.peer == peer && s.ssrc == sr.ssrc)
                && let Some(rtp) = track.rewriter.to_track_timestamp(sr.rtp_time)
            {
                track.clock = Some(HostClock {
                    ntp: sr.ntp_time,
                    rtp,
                    at: now,
                });
            }
        }
    }

    /// Sends every connected viewer a sender report per track it has been sent media of
    /// (RFC 3550 §6.4.1). Forwarded media bypasses `rtc`, so its report interceptor would
    /// know neither the counts nor the timing; these reports carry the host's clock mapped
    /// into each track's space, which is what keeps audio and video in lip sync.
    fn send_sender_reports(&mut self, now: Instant) {
        let Self {
            peers,
            tracks,
            ready,
            stats,
            config,
            ..
        } = self;
        for (id, p) in peers.iter_mut() {
            if p.role != Role::Subscriber || p.state != ConnectionState::Connected {
                continue;
            }
            for sub in &p.subscriptions {
                let Some(track) = tracks.get(&sub.track) else {
                    continue;
                };
                let Some(clock) = track.clock.filter(|_| sub.packets_sent > 0) else {
                    continue;
                };
                let (ntp_time, rtp_time) = clock.at(now, track.codec.rtp.clock_rate);
                let report = SenderReport {
                    ssrc: sub.ssrc,
                    ntp_time,
                    rtp_time,
                    packet_count: sub.packets_sent,
                    octet_count: sub.octets_sent,
                    ..Default::default()
                };
                if let Some(mut sender) = p.pc.rtp_sender(sub.sender) {
                    let _ = sender.write_rtcp(now, vec![Box::new(report)]);
                }
            }
            enqueue_writes(*id, p, config.max_queued_datagrams, ready, stats);
        }
    }

    /// A host track started sending: bind it to a compatible orphaned track of the room, or
    /// create a new track (and renegotiate every viewer).
    fn on_source_open(&mut self, now: Instant, peer: PeerId, init: RTCTrackEventInit) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.role != Role::Publisher {
            return;
        }
        let Some(codec) =
            p.pc.rtp_receiver(init.receiver_id)
                .and_then(|r| r.track().codec(init.ssrc).cloned())
                .and_then(Codec::from_rtp)
        else {
            tracing::debug!(%peer, "ignoring host track with an unsupported codec");
            return;
        };
        let room_id = p.room.clone();
        let source = Source {
            peer,
            receiver: init.receiver_id,
            ssrc: init.ssrc,
        };
        let room = self.rooms.entry(room_id.clone()).or_default();
        let reusable = room.tracks.iter().copied().find(|id| {
            self.tracks
                .get(id)
                .is_some_and(|t| t.source.is_none() && t.codec.compatible(&codec))
        });
        let track_id = match reusable {
            Some(id) => {
                let track = self.tracks.get_mut(&id).expect("room track exists");
                track.source = Some(source);
                track.orphaned_at = None;
                track.rewriter.rebase();
                id
            }
            None => {
                let id = TrackId(self.next_id);
                self.next_id += 1;
                room.tracks.push(id);
                self.tracks.insert(
                    id,
                    Track {
                        room: room_id.clone(),
                        codec,
                        source: Some(source),
                        rewriter: SourceRewriter::default(),
                        ring: PacketRing::new(self.config.ring_capacity),
                        extender: SeqExtender::default(),
                        subscribers: Vec::new(),
                        last_keyframe_request: None,
                        keyframe_request_pending: false,
                        orphaned_at: None,
                        clock: None,
                    },
                );
                let viewers = room.subscribers.clone();
                for viewer in viewers {
                    if self.subscribe(viewer, id).is_ok() {
                        let _ = self.renegotiate(now, viewer);
                        self.flush_peer(viewer);
                    }
                }
                id
            }
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            p.first_source_at.get_or_insert(now);
            p.sources.insert(init.track_id, track_id);
        }
        // Viewers already watching need a keyframe from the new source right away.
        if self.tracks[&track_id].codec.kind == MediaKind::Video {
            self.request_keyframe(now, track_id);
        }
        self.emit_tracks(&room_id);
    }

    fn on_source_closed(&mut self, now: Instant, peer: PeerId, track_id: &str) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(track) = p.sources.remove(track_id) else {
            return;
        };
        let room = p.room.clone();
        self.orphan(now, peer, &room, [track]);
    }

    /// The hot path: one inbound packet, rewritten and stored once, sent to every viewer.
    fn forward(&mut self, now: Instant, from: PeerId, track_id: TrackId, packet: rtp::Packet) {
        if self.fan_out(now, from, track_id, packet) {
            // Someone is still waiting for a keyframe (joined, or the one it was sent was
            // lost): keep asking, throttled by `request_keyframe`.
            self.request_keyframe(now, track_id);
        }
    }

    /// Rewrites, stores and sends one packet; true if a connected viewer awaits a keyframe.
    fn fan_out(
        &mut self,
        now: Instant,
        from: PeerId,
        track_id: TrackId,
        packet: rtp::Packet,
    ) -> bool {
        let Self {
            tracks,
            peers,
            stats,
            ready,
            config,
            ..
        } = self;
        let Some(track) = tracks.get_mut(&track_id) else {
            return false;
        };
        if track
            .source
            .as_ref()
            .is_none_or(|s| s.peer != from || s.ssrc != packet.header.ssrc)
        {
            return false; // a replaced source's stragglers after a switch
        }
        stats.packets_in += 1;
        let clock_rate = track.codec.rtp.clock_rate;
        let Some((seq, timestamp)) = track.rewriter.rewrite(
            now,
            packet.header.sequence_number,
            packet.header.timestamp,
            clock_rate,
        ) else {
            return false;
        };
        let keyframe = track
            .codec
            .video
            .is_some_and(|codec| starts_keyframe(codec, &packet.payload));
        let stored = StoredPacket {
            seq: track.extender.extend(seq),
            timestamp,
            marker: packet.header.marker,
            payload: packet.payload,
        };
        let mut awaiting = false;
        for viewer in &track.subscribers {
            let Some(p) = peers.get_mut(viewer) else {
                continue;
            };
            if p.state != ConnectionState::Connected {
                continue;
            }
            let Some(sub) = p.subscriptions.iter().position(|s| s.track == track_id) else {
                continue;
            };
            if p.subscriptions[sub].awaiting_keyframe && !keyframe {
                awaiting = true;
                continue;
            }
            let max_queued = config.max_queued_datagrams;
            if deliver(
                now,
                *viewer,
                p,
                sub,
                &track.codec,
                &stored,
                max_queued,
                ready,
                stats,
            ) {
                // The viewer starts only once its first keyframe packet is really on its way.
                p.subscriptions[sub].awaiting_keyframe = false;
                stats.packets_forwarded += 1;
                stats.bytes_forwarded += stored.payload.len() as u64;
            }
        }
        track.ring.insert(stored);
        awaiting
    }

    fn on_viewer_rtcp(&mut self, now: Instant, peer: PeerId, packet: &dyn rtcp::Packet) {
        let any = packet.as_any();
        if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
            self.stats.nacks_received += 1;
            self.retransmit(now, peer, nack);
        } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
            if let Some(track) = self.track_of_viewer_ssrc(peer, pli.media_ssrc) {
                self.stats.keyframe_requests_received += 1;
                self.request_keyframe(now, track);
            }
        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
            let ssrc = fir.fir.first().map_or(fir.media_ssrc, |e| e.ssrc);
            if let Some(track) = self.track_of_viewer_ssrc(peer, ssrc) {
                self.stats.keyframe_requests_received += 1;
                self.request_keyframe(now, track);
            }
        }
    }

    fn track_of_viewer_ssrc(&self, peer: PeerId, ssrc: u32) -> Option<TrackId> {
        self.peers
            .get(&peer)?
            .subscriptions
            .iter()
            .find(|s| s.ssrc == ssrc)
            .map(|s| s.track)
    }

    /// Answers a viewer's NACK from the track's ring (RFC 4585 §6.2.1).
    fn retransmit(&mut self, now: Instant, peer: PeerId, nack: &TransportLayerNack) {
        let Self {
            tracks,
            peers,
            stats,
            ready,
            config,
            ..
        } = self;
        let Some(p) = peers.get_mut(&peer) else {
            return;
        };
        let Some(sub) = p
            .subscriptions
            .iter()
            .position(|s| s.ssrc == nack.media_ssrc)
        else {
            return;
        };
        let Some(track) = tracks.get(&p.subscriptions[sub].track) else {
            return;
        };
        let mut budget = config.max_retransmissions_per_nack;
        'pairs: for pair in &nack.nacks {
            for seq in pair.packet_list() {
                if budget == 0 {
                    break 'pairs;
                }
                budget -= 1;
                let extended = track.extender.peek(seq);
                match track.ring.get(extended) {
                    Some(stored) => {
                        let max_queued = config.max_queued_datagrams;
                        if deliver(
                            now,
                            peer,
                            p,
                            sub,
                            &track.codec,
                            stored,
                            max_queued,
                            ready,
                            stats,
                        ) {
                            stats.retransmissions += 1;
                        }
                    }
                    None => stats.retransmissions_missed += 1,
                }
            }
        }
    }

    /// Asks the track's host for a keyframe, at most once per `keyframe_request_interval`;
    /// requests in between are coalesced into one at the end of the interval.
    fn request_keyframe(&mut self, now: Instant, track_id: TrackId) {
        let interval = self.config.keyframe_request_interval;
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        if track.codec.kind != MediaKind::Video {
            return;
        }
        let due = track
            .last_keyframe_request
            .is_none_or(|last| now.duration_since(last) >= interval);
        if !due {
            track.keyframe_request_pending = true;
            self.schedule_track(track_id);
            return;
        }
        let Some(source) = &track.source else {
            // Asked of the next source as soon as one is bound (`on_source_open`).
            track.keyframe_request_pending = true;
            return;
        };
        track.last_keyframe_request = Some(now);
        track.keyframe_request_pending = false;
        let (host, receiver, ssrc) = (source.peer, source.receiver, source.ssrc);
        let Some(p) = self.peers.get_mut(&host) else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Some(mut r) = p.pc.rtp_receiver(receiver)
            && r.write_rtcp(now, vec![Box::new(pli)]).is_ok()
        {
            self.stats.keyframe_requests_sent += 1;
        }
        self.flush_peer(host);
    }

    fn track_timer_is_live(&self, at: Instant, id: TrackId) -> bool {
        self.tracks
            .get(&id)
            .is_some_and(|t| t.deadlines(&self.config).contains(&Some(at)))
    }

    /// Queues the track's current deadlines; called whenever one is set.
    fn schedule_track(&mut self, id: TrackId) {
        if let Some(t) = self.tracks.get(&id) {
            for at in t.deadlines(&self.config).into_iter().flatten() {
                self.track_timers.push(Reverse((at, id)));
            }
        }
    }

    fn handle_track_timers(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.track_timers.peek().copied() {
            if at > now {
                break;
            }
            self.track_timers.pop();
            if self.track_timer_is_live(at, id) && !due.contains(&id) {
                due.push(id);
            }
        }
        for id in due {
            let expired = self
                .tracks
                .get(&id)
                .and_then(|t| t.deadlines(&self.config)[1])
                .is_some_and(|at| at <= now);
            if expired {
                self.remove_track(now, id);
            } else {
                self.request_keyframe(now, id);
            }
        }
    }

    /// Removes a track whose source never came back, renegotiating its viewers.
    fn remove_track(&mut self, now: Instant, id: TrackId) {
        let Some(track) = self.tracks.remove(&id) else {
            return;
        };
        if let Some(room) = self.rooms.get_mut(&track.room) {
            room.tracks.retain(|t| *t != id);
        }
        for viewer in &track.subscribers {
            let Some(p) = self.peers.get_mut(viewer) else {
                continue;
            };
            if let Some(index) = p.subscriptions.iter().position(|s| s.track == id) {
                let sub = p.subscriptions.remove(index);
                let _ = p.pc.remove_track(sub.sender);
                let _ = self.renegotiate(now, *viewer);
                self.flush_peer(*viewer);
            }
        }
        self.emit_tracks(&track.room);
        self.remove_room_if_empty(&track.room);
    }

    /// Adds a sender for `track` to a viewer's peer connection (negotiation comes after).
    fn subscribe(&mut self, viewer: PeerId, track_id: TrackId) -> Result<(), SfuError> {
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or_else(|| SfuError::Internal(format!("no track {track_id}")))?;
        let p = self.peers.get_mut(&viewer).ok_or(SfuError::UnknownPeer)?;
        let ssrc = rand::random::<u32>();
        let kind = match track.codec.kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        // One stream per room for all of its tracks, so browsers lip-sync audio and video.
        let stream_id = format!("marquee-{}", track.room);
        let local = MediaStreamTrack::new(
            stream_id,
            track_id.to_string(),
            track_id.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: track.codec.rtp.clone(),
                ..Default::default()
            }],
        );
        let transceivers = p.pc.get_transceivers().count();
        let sender = p.pc.add_track(local).map_err(SfuError::internal)?;
        if p.client_offers && p.pc.get_transceivers().count() > transceivers {
            // A new transceiver: the client's offer had no free section of this kind, and
            // only an offer from the client could add one.
            let _ = p.pc.remove_track(sender);
            return Err(SfuError::NothingToWatch);
        }
        p.subscriptions.push(Subscription {
            track: track_id,
            sender,
            ssrc,
            payload_type: None,
            awaiting_keyframe: track.codec.kind == MediaKind::Video,
            roc_base: None,
            packets_sent: 0,
            octets_sent: 0,
        });
        track.subscribers.push(viewer);
        Ok(())
    }

    /// Sends a viewer a fresh offer, or remembers to once its outstanding offer is answered.
    fn renegotiate(&mut self, now: Instant, viewer: PeerId) -> Result<(), SfuError> {
        let p = self.peers.get_mut(&viewer).ok_or(SfuError::UnknownPeer)?;
        if p.client_offers {
            // WHEP: nothing to offer to; the viewer keeps the tracks it negotiated.
            return Ok(());
        }
        if p.offer_outstanding {
            p.needs_offer = true;
            return Ok(());
        }
        let offer = p.pc.create_offer(None).map_err(SfuError::internal)?;
        let sdp = apply_local_description(now, &mut p.pc, offer).map_err(SfuError::internal)?;
        p.offer_outstanding = true;
        self.events.push_back(SfuEvent::Offer { peer: viewer, sdp });
        Ok(())
    }

    fn emit_tracks(&mut self, room: &RoomId) {
        let tracks = self.tracks(room);
        self.events.push_back(SfuEvent::Tracks {
            room: room.clone(),
            tracks,
        });
    }

    fn remove_room_if_empty(&mut self, room: &RoomId) {
        if self.rooms.get(room).is_some_and(|r| {
            r.publisher.is_none() && r.subscribers.is_empty() && r.tracks.is_empty()
        }) {
            self.rooms.remove(room);
        }
    }
}

/// The DTLS certificate all peers share (ECDSA P-256, as `rtc` makes per peer by default; its
/// validity runs to rcgen's default far-future date, so it never expires under a running
/// server).
fn shared_certificate() -> Option<RTCCertificate> {
    let generate = || -> Result<RTCCertificate, String> {
        let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        let params =
            CertificateParams::new(vec!["marquee".to_owned()]).map_err(|e| e.to_string())?;
        RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )
        .map_err(|e| e.to_string())
    };
    generate()
        .inspect_err(|err| {
            tracing::warn!(%err, "no shared DTLS certificate: each peer will generate its own")
        })
        .ok()
}

/// A UDP host candidate for `addr`, as `rtc` takes local candidates.
pub fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, SfuError> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(SfuError::internal)?;
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(SfuError::internal)
}

/// Sets `description` as the local one and returns the SDP to send, which `rtc` completes
/// (candidates, fingerprints) when applying it.
/// `sdp` with every `a=ice-ufrag`/`a=ice-pwd` value replaced.
fn replace_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.lines() {
        if line.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
        } else if line.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

fn apply_local_description(
    now: Instant,
    pc: &mut RTCPeerConnection,
    description: RTCSessionDescription,
) -> rtc::shared::error::Result<String> {
    let fallback = description.sdp.clone();
    pc.set_local_description(now, description)?;
    Ok(pc.local_description().map_or(fallback, |d| d.sdp))
}

/// The viewer's payload type for the track's codec, learned once per negotiation.
fn viewer_payload_type(
    pc: &mut RTCPeerConnection,
    sub: &mut Subscription,
    codec: &Codec,
) -> Option<u8> {
    if sub.payload_type.is_none() {
        let mut sender = pc.rtp_sender(sub.sender)?;
        sub.payload_type = sender
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| Codec::from_rtp(c.rtp_codec.clone()).is_some_and(|c| codec.compatible(&c)))
            .map(|c| c.payload_type);
    }
    sub.payload_type
}

/// Sends one stored packet to one viewer; only SSRC and payload type differ per viewer. On
/// the fast path the packet is queued as it is (a refcount) and protected when polled;
/// otherwise it goes through `rtc`, whose output also verifies the fast path's keys. Returns
/// whether it was sent (not dropped from a full queue or refused).
#[allow(clippy::too_many_arguments)] // the disjoint parts of `Sfu` the hot path borrows
fn deliver(
    now: Instant,
    id: PeerId,
    p: &mut Peer,
    sub: usize,
    codec: &Codec,
    stored: &StoredPacket,
    max_queued: usize,
    ready: &mut VecDeque<PeerId>,
    stats: &mut SfuStats,
) -> bool {
    let s = &mut p.subscriptions[sub];
    let Some(payload_type) = viewer_payload_type(&mut p.pc, s, codec) else {
        return false; // the viewer did not negotiate the track's codec
    };
    let roc_base = *s.roc_base.get_or_insert(stored.seq >> 16);
    let out = MediaOut {
        ssrc: s.ssrc,
        seq: stored.seq as u16,
        timestamp: stored.timestamp,
        payload_type,
        marker: stored.marker,
        roc: (stored.seq >> 16).saturating_sub(roc_base) as u32,
        payload: stored.payload.clone(),
    };
    let sent = if matches!(p.fast, FastPath::Active(_)) {
        if p.queue.len() < max_queued {
            p.queue.push_back(Outgoing::Media(out));
            true
        } else {
            stats.datagrams_dropped += 1;
            false
        }
    } else {
        send_through_rtc(now, id, p, sub, &out, max_queued, stats)
    };
    if sent {
        let s = &mut p.subscriptions[sub];
        s.packets_sent = s.packets_sent.wrapping_add(1);
        s.octets_sent = s.octets_sent.wrapping_add(stored.payload.len() as u32);
    }
    mark_ready(id, p, ready);
    sent
}

/// `rtc`'s path for one forwarded packet: its sender, interceptors and SRTP context. While
/// the fast path is being verified, `rtc`'s protected packet is compared with the fast
/// path's own protection of the same packet under each candidate key.
fn send_through_rtc(
    now: Instant,
    id: PeerId,
    p: &mut Peer,
    sub: usize,
    out: &MediaOut,
    max_queued: usize,
    stats: &mut SfuStats,
) -> bool {
    let packet = rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: out.marker,
            payload_type: out.payload_type,
            sequence_number: out.seq,
            timestamp: out.timestamp,
            ssrc: out.ssrc,
            ..Default::default()
        },
        payload: out.payload.clone(),
    };
    let Some(mut sender) = p.pc.rtp_sender(p.subscriptions[sub].sender) else {
        return false;
    };
    if let Err(err) = sender.write_rtp(now, packet) {
        tracing::trace!(peer = %id, %err, "rtp write refused");
        return false;
    }
    while let Some(made) = p.pc.poll_write() {
        if matches!(p.fast, FastPath::Verifying { .. }) && is_rtp_of(&made.message, out) {
            verify_fast_path(id, &p.keys, &mut p.fast, &made.message, out);
        }
        push_made(p, made, max_queued, stats);
    }
    true
}

/// Whether `datagram` is the SRTP form of `out` (same payload type, sequence number, SSRC).
fn is_rtp_of(datagram: &[u8], out: &MediaOut) -> bool {
    datagram.len() >= 12
        && datagram[0] >> 6 == 2
        && datagram[1] & 0x7f == out.payload_type
        && datagram[2..4] == out.seq.to_be_bytes()
        && datagram[8..12] == out.ssrc.to_be_bytes()
}

/// Tries every candidate master key under every profile on `out`; the one that reproduces
/// `rtc`'s bytes exactly becomes the peer's fast path.
fn verify_fast_path(id: PeerId, keys: &KeyTap, fast: &mut FastPath, made: &[u8], out: &MediaOut) {
    let FastPath::Verifying { attempts } = fast else {
        return;
    };
    let mut ours = Vec::with_capacity(made.len());
    for master in keys.candidates() {
        for profile in SrtpProfile::ALL {
            out.write(&mut ours);
            if ours.len() + profile.rtp_overhead() != made.len() {
                continue;
            }
            let sender = SrtpSender::new(profile, &master);
            sender.protect_rtp(&mut ours, 12, out.roc);
            if ours == made {
                tracing::debug!(
                    peer = %id,
                    profile = profile.name(),
                    "SRTP fast path matches rtc's output: forwarding takes it"
                );
                *fast = FastPath::Active(sender);
                return;
            }
        }
    }
    *attempts += 1;
    if *attempts >= VERIFY_ATTEMPTS {
        tracing::warn!(
            peer = %id,
            "the SRTP fast path did not reproduce rtc's output for {VERIFY_ATTEMPTS} packets: \
             this viewer stays on rtc's slower forwarding path"
        );
        *fast = FastPath::Unavailable;
    }
}

/// Queues one datagram `rtc` produced; a full queue drops (and counts) it instead of growing.
fn push_made(p: &mut Peer, made: TaggedBytesMut, max_queued: usize, stats: &mut SfuStats) {
    if p.queue.len() >= max_queued {
        stats.datagrams_dropped += 1;
        return;
    }
    // STUN answers go back where the check came from; everything else follows the client's
    // latest nomination (see `Peer::nominated`).
    let remote = match p.nominated {
        Some(nominated) if classify(&made.message) != DatagramKind::Stun => nominated,
        _ => made.transport.peer_addr,
    };
    p.queue.push_back(Outgoing::Made {
        local: made.transport.local_addr,
        remote,
        payload: made.message,
    });
}

/// Puts a peer with queued datagrams in the round-robin of [`Sfu::poll_transmit`].
fn mark_ready(id: PeerId, p: &mut Peer, ready: &mut VecDeque<PeerId>) {
    if !p.queue.is_empty() && !p.in_ready {
        p.in_ready = true;
        ready.push_back(id);
    }
}

/// Moves a peer connection's pending writes into the peer's bounded queue.
fn enqueue_writes(
    peer: PeerId,
    p: &mut Peer,
    max_queued: usize,
    ready: &mut VecDeque<PeerId>,
    stats: &mut SfuStats,
) {
    while let Some(made) = p.pc.poll_write() {
        push_made(p, made, max_queued, stats);
    }
    mark_ready(peer, p, ready);
}

/// ICE credentials: RFC 8445 §5.3 wants at least 24 bits of randomness in the ufrag and 128 in
/// the password; alphanumerics keep them SDP-safe.
fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
