//! An in-memory world for the SFU core: real `rtc` client peers (full ICE, DTLS, SRTP)
//! exchange datagrams with an `Sfu` without sockets. Time is virtual: the harness advances
//! a clock to the earliest deadline whenever nothing is in flight (quinn-proto's
//! `Pair::drive`, str0m's `progress`). Shared by the core tests and the fan-out benchmark.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{Interceptor, Packet, Registry, Slot, StreamInfo, TaggedPacket};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::demux::RtpHeader;
use sfu::{Datagram, PeerId, Role, RoomId, Sfu, SfuConfig, SfuEvent};

pub const SERVER: &str = "127.0.0.1:7882";

/// One in-memory client peer.
pub struct Client {
    pub pc: RTCPeerConnection,
    pub addr: SocketAddr,
    pub sfu_peer: PeerId,
    /// Received RTP per SSRC: (sequence number, timestamp, payload).
    pub rtp: HashMap<u32, Vec<(u16, u32, Bytes)>>,
    pub plis: usize,
    /// Sender reports received (a viewer's, from the SFU).
    pub sender_reports: Vec<SenderReport>,
    /// Sender reports this client's own stack sent (a host's, to the SFU).
    pub sent_reports: Arc<Mutex<Vec<SenderReport>>>,
    pub offers: usize,
    pub video: Option<(RTCRtpSenderId, u32)>,
    pub audio: Option<(RTCRtpSenderId, u32)>,
    /// Drop the next server→client datagram that carries RTP with this sequence number.
    pub drop_seq: Option<u16>,
    /// A silent client neither sends nor receives (its network vanished).
    pub silent: bool,
    /// Connection states the SFU reported for this client's peer.
    pub states: Vec<sfu::ConnectionState>,
    pub dropped: Vec<u16>,
}

pub struct Harness {
    /// The video codec hosts publish: `video/VP8` (default) or `video/H264`.
    pub video_mime: &'static str,
    /// The core hosts join: with several shards ([`Harness::sharded`]), the home shard of
    /// the room `"room"`.
    pub sfu: Sfu,
    /// The other shards' cores, if any; their relays are routed in memory.
    pub others: Vec<Sfu>,
    /// Media packets relayed between shards so far.
    pub media_relayed: usize,
    pub now: Instant,
    pub clients: Vec<Client>,
    pub server: SocketAddr,
    /// The SRTP profiles clients offer, in their order of preference (`rtc`'s default:
    /// AES-128-GCM first). Chrome lists AES-CM-HMAC-SHA1-80 first.
    pub client_srtp_profiles: Option<Vec<SrtpProtectionProfile>>,
    /// The next video sequence number `fanout_room` and `next_host_video` use.
    pub next_seq: u16,
}

impl Harness {
    #[allow(clippy::disallowed_methods)] // the virtual clock starts somewhere real
    pub fn new(config: SfuConfig) -> Self {
        let server: SocketAddr = SERVER.parse().unwrap();
        Self {
            sfu: Sfu::new(SfuConfig {
                candidates: vec![server],
                ..config
            }),
            others: Vec::new(),
            media_relayed: 0,
            now: Instant::now(),
            clients: Vec::new(),
            server,
            video_mime: "video/VP8",
            client_srtp_profiles: None,
            next_seq: 2,
        }
    }

    /// `count` shard cores, as `run_driver` makes them: `sfu` is the home shard of the room
    /// `"room"` (where its host joins), `others` the rest.
    pub fn sharded(config: SfuConfig, count: usize) -> Self {
        let home = sfu::shard::Shard::of_room(&RoomId::new("room"), count);
        let shard = |index| sfu::shard::Shard { index, count };
        let mut h = Self::new(config.clone());
        // One certificate for every shard, as `run_driver` does.
        let certificate = sfu::Certificate::generate();
        let server = h.server;
        let mut cores: Vec<Sfu> = (0..count)
            .map(|index| {
                let config = SfuConfig {
                    shard: shard(index),
                    candidates: vec![server],
                    ..config.clone()
                };
                Sfu::with_certificate(config, certificate.clone())
            })
            .collect();
        h.sfu = cores.remove(home);
        h.others = cores;
        h
    }

    /// The core of shard `index`.
    pub fn core(&mut self, index: usize) -> &mut Sfu {
        std::iter::once(&mut self.sfu)
            .chain(self.others.iter_mut())
            .find(|core| core.config().shard.index == index)
            .expect("no such shard")
    }

    /// The core that holds `peer` (an id names its shard).
    fn core_of(&mut self, peer: PeerId) -> &mut Sfu {
        let count = self.sfu.config().shard.count;
        self.core(sfu::shard::Shard::of_id(peer.0, count))
    }

    pub fn client_pc(&self, addr: SocketAddr) -> RTCPeerConnection {
        self.client_pc_recording(addr, Arc::default())
    }

    /// A client peer whose sent sender reports are copied into `reports`.
    pub fn client_pc_recording(
        &self,
        addr: SocketAddr,
        reports: Arc<Mutex<Vec<SenderReport>>>,
    ) -> RTCPeerConnection {
        let mut engine = MediaEngine::default();
        engine.register_default_codecs().unwrap();
        // The SFU's own feedback marker, so the host sees the keyframe requests it is sent.
        let registry = register_default_interceptors(Registry::new(), &mut engine)
            .unwrap()
            .with(
                sfu::codecs::FEEDBACK_SLOT,
                sfu::feedback::DeliverFeedback::default(),
            )
            .with(
                Slot::Custom(1),
                RecordSenderReports {
                    reports,
                    reads: VecDeque::new(),
                    writes: VecDeque::new(),
                },
            );
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(match &self.client_srtp_profiles {
                Some(profiles) => SettingEngineBuilder::new()
                    .with_srtp_protection_profiles(profiles.clone())
                    .build(),
                None => SettingEngineBuilder::new().build(),
            })
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(self.now)
            .unwrap();
        pc.add_local_candidate(sfu::host_candidate(addr).unwrap())
            .unwrap();
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .unwrap();
        pc
    }

    /// A host publishing one VP8 and one Opus track; returns the client index.
    pub fn add_host(&mut self, room: &str) -> usize {
        let addr: SocketAddr = format!("127.0.0.2:{}", 5000 + self.clients.len())
            .parse()
            .unwrap();
        let sent_reports: Arc<Mutex<Vec<SenderReport>>> = Arc::default();
        let mut pc = self.client_pc_recording(addr, sent_reports.clone());
        let video_ssrc = rand::random();
        let audio_ssrc = rand::random();
        let mut video_track = track(RtpCodecKind::Video, self.video_mime, 90000, 0, video_ssrc);
        if self.video_mime == "video/H264" {
            video_track = h264_track(video_ssrc);
        }
        let video = pc.add_track(video_track).unwrap();
        let audio = pc
            .add_track(track(
                RtpCodecKind::Audio,
                "audio/opus",
                48000,
                2,
                audio_ssrc,
            ))
            .unwrap();
        let offer = pc.create_offer(None).unwrap();
        pc.set_local_description(self.now, offer).unwrap();
        let sdp = pc.local_description().unwrap().sdp;
        let peer = self
            .sfu
            .add_peer(self.now, &RoomId::new(room), Role::Publisher)
            .unwrap();
        let answer = self.sfu.handle_offer(self.now, peer, &sdp).unwrap();
        pc.set_remote_description(self.now, RTCSessionDescription::answer(answer).unwrap())
            .unwrap();
        self.clients.push(Client {
            video: Some((video, video_ssrc)),
            audio: Some((audio, audio_ssrc)),
            sent_reports,
            ..Client::new(pc, addr, peer)
        });
        self.clients.len() - 1
    }

    pub fn add_viewer(&mut self, room: &str) -> usize {
        let home = self.sfu.config().shard.index;
        self.add_viewer_on(room, home)
    }

    /// A viewer that joins on shard `shard` (see [`Harness::sharded`]).
    pub fn add_viewer_on(&mut self, room: &str, shard: usize) -> usize {
        let addr: SocketAddr = format!("127.0.0.3:{}", 5000 + self.clients.len())
            .parse()
            .unwrap();
        let pc = self.client_pc(addr);
        let now = self.now;
        let peer = self
            .core(shard)
            .add_peer(now, &RoomId::new(room), Role::Subscriber)
            .unwrap();
        self.clients.push(Client::new(pc, addr, peer));
        self.clients.len() - 1
    }

    /// A room whose host sends video and `viewers` viewers that all connected and receive it
    /// (checked by counting one probe packet's copies; a viewer starts at a keyframe), spread
    /// round-robin over every shard's core. Returns the host and the number of viewers
    /// forwarding: at N ≥ 1000 an in-memory viewer or two may not finish its handshake. For
    /// the benchmarks.
    pub fn fanout_room(&mut self, viewers: usize) -> (usize, usize) {
        let host = self.add_host("room");
        self.run_for(Duration::from_millis(500));
        self.send_frame(host, 1, true, Duration::from_millis(100));
        let shards: Vec<usize> = std::iter::once(&self.sfu)
            .chain(&self.others)
            .map(|core| core.config().shard.index)
            .collect();
        for i in 0..viewers {
            self.add_viewer_on("room", shards[i % shards.len()]);
        }
        let mut reached = 0;
        let mut buf = Vec::with_capacity(1500);
        for _ in 0..20 {
            self.run_for(Duration::from_millis(500));
            let seq = self.next_seq;
            self.send_frame(host, seq, true, Duration::from_millis(100));
            let datagrams = self.host_video_datagrams(host, seq + 1);
            self.next_seq = seq + 2;
            reached = self.forward(datagrams, &mut buf);
            let fast: u64 = std::iter::once(&self.sfu)
                .chain(&self.others)
                .map(|core| core.stats().fast_path_viewers)
                .sum();
            if reached >= viewers && fast as usize >= viewers {
                break;
            }
        }
        assert!(
            reached * 100 >= viewers * 99,
            "only {reached}/{viewers} viewers forwarding"
        );
        (host, reached)
    }

    /// Hands the host's datagrams to the home core, its relays to the other cores, and writes
    /// every core's datagrams into `buf` one after the other (not delivered); returns how
    /// many. Allocation-free once queues have their capacity: the benchmarks' measured step.
    pub fn forward(&mut self, datagrams: Vec<Datagram>, buf: &mut Vec<u8>) -> usize {
        let now = self.now;
        for d in datagrams {
            self.sfu.handle_datagram(now, d);
        }
        while let Some(relay) = self.sfu.poll_relay() {
            self.core(relay.to).handle_relay(now, relay);
        }
        let mut sent = 0;
        for core in std::iter::once(&mut self.sfu).chain(self.others.iter_mut()) {
            while let Some(t) = core.poll_transmit(buf) {
                std::hint::black_box((&t, &*buf));
                sent += 1;
            }
        }
        sent
    }

    /// The host's next video packet as datagrams for the SFU (the benchmarks' input).
    pub fn next_host_video(&mut self, host: usize) -> Vec<Datagram> {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.host_video_datagrams(host, seq)
    }

    /// Moves datagrams, events and relays between shards until nothing is in flight, then
    /// stops (time unchanged).
    pub fn pump(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            let cores = std::iter::once(&mut self.sfu).chain(self.others.iter_mut());
            let mut relays = Vec::new();
            for core in cores {
                moved |= deliver_transmits(core, &mut self.clients, now);
                moved |= handle_events(core, &mut self.clients, now);
                relays.extend(std::iter::from_fn(|| core.poll_relay()));
            }
            for relay in relays {
                moved = true;
                self.media_relayed += usize::from(relay.is_media());
                self.core(relay.to).handle_relay(now, relay);
            }
            let mut datagrams = Vec::new();
            for c in self.clients.iter_mut().filter(|c| !c.silent) {
                while c.pc.poll_event().is_some() {}
                while let Some(TaggedRTCMessage { message, .. }) = c.pc.poll_read() {
                    match message {
                        RTCMessage::RtpPacket(_, p) => c
                            .rtp
                            .entry(p.header.ssrc)
                            .or_default()
                            .push((p.header.sequence_number, p.header.timestamp, p.payload)),
                        RTCMessage::RtcpPacket(_, packets) => {
                            c.plis += packets
                                .iter()
                                .filter(|p| p.as_any().is::<PictureLossIndication>())
                                .count();
                            c.sender_reports.extend(
                                packets
                                    .iter()
                                    .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                                    .cloned(),
                            );
                        }
                        _ => {}
                    }
                }
                while let Some(out) = c.pc.poll_write() {
                    let datagram = Datagram {
                        local: self.server,
                        remote: c.addr,
                        payload: out.message,
                    };
                    datagrams.push((c.sfu_peer, datagram));
                }
            }
            for (peer, datagram) in datagrams {
                moved = true;
                self.core_of(peer).handle_datagram(now, datagram);
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs until `deadline` (virtual), firing every timer on the way.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.pump();
            let next = self
                .clients
                .iter_mut()
                .filter_map(|c| c.pc.poll_timeout())
                .chain(self.sfu.poll_timeout())
                .chain(
                    self.others
                        .iter_mut()
                        .filter_map(|core| core.poll_timeout()),
                )
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.handle_timeouts();
                    for c in &mut self.clients {
                        if c.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                            let _ = c.pc.handle_timeout(self.now);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    self.handle_timeouts();
                    self.pump();
                    return;
                }
            }
        }
    }

    fn handle_timeouts(&mut self) {
        let now = self.now;
        self.sfu.handle_timeout(now);
        for core in &mut self.others {
            core.handle_timeout(now);
        }
    }

    /// The host sends one RTP packet per track and the world runs for `gap`.
    pub fn send_frame(&mut self, host: usize, seq: u16, keyframe: bool, gap: Duration) {
        self.write_video(host, seq, keyframe);
        self.write_audio(host, seq);
        self.run_for(gap);
    }

    /// The host writes one video packet (nothing moves until the next pump).
    pub fn write_video(&mut self, host: usize, seq: u16, keyframe: bool) {
        let now = self.now;
        let c = &mut self.clients[host];
        let (video, video_ssrc) = c.video.unwrap();
        let mime = self.video_mime;
        let payload = video_payload(mime, seq, keyframe);
        let mut sender = c.pc.rtp_sender(video).unwrap();
        let pt = payload_type(&mut sender, mime);
        sender
            .write_rtp(
                now,
                rtp_packet(pt, seq, u32::from(seq) * 3000, video_ssrc, payload),
            )
            .unwrap();
    }

    /// The host writes one audio packet (nothing moves until the next pump).
    pub fn write_audio(&mut self, host: usize, seq: u16) {
        let now = self.now;
        let c = &mut self.clients[host];
        let (audio, audio_ssrc) = c.audio.unwrap();
        let mut sender = c.pc.rtp_sender(audio).unwrap();
        let pt = payload_type(&mut sender, "audio/opus");
        let opus = Bytes::from(format!("opus-{seq}").into_bytes());
        sender
            .write_rtp(
                now,
                rtp_packet(pt, seq, u32::from(seq) * 960, audio_ssrc, opus),
            )
            .unwrap();
    }

    /// A WHEP-style viewer: its receive-only offer (audio + video) is answered by
    /// `Sfu::add_peer_with_offer`; the SFU's refusal is returned as is.
    pub fn add_offering_viewer(&mut self, room: &str) -> Result<usize, sfu::SfuError> {
        let home = self.sfu.config().shard.index;
        self.add_offering_viewer_on(room, home)
    }

    /// A WHEP-style viewer that joins on shard `shard` (see [`Harness::sharded`]).
    pub fn add_offering_viewer_on(
        &mut self,
        room: &str,
        shard: usize,
    ) -> Result<usize, sfu::SfuError> {
        let addr: SocketAddr = format!("127.0.0.4:{}", 5000 + self.clients.len())
            .parse()
            .unwrap();
        let mut pc = self.client_pc(addr);
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: Vec::new(),
                    send_encodings: Vec::new(),
                }),
            )
            .unwrap();
        }
        let offer = pc.create_offer(None).unwrap();
        pc.set_local_description(self.now, offer).unwrap();
        let sdp = pc.local_description().unwrap().sdp;
        let now = self.now;
        let (peer, answer) = self.core(shard).add_peer_with_offer(
            now,
            &RoomId::new(room),
            Role::Subscriber,
            &sdp,
        )?;
        pc.set_remote_description(self.now, RTCSessionDescription::answer(answer).unwrap())
            .unwrap();
        self.clients.push(Client::new(pc, addr, peer));
        Ok(self.clients.len() - 1)
    }
}

impl Harness {
    /// The host of `"room"` drops its connection and comes back with a new one, new SSRCs
    /// and numbering from scratch; `viewer` must see one stream: no renegotiation, the same
    /// SSRC, sequence numbers and timestamps continuing across the switch. `while_away` runs
    /// while the host is gone. Returns the new host. Shared by the one-core and two-shard
    /// tests.
    pub fn reconnect_host_seamlessly(
        &mut self,
        host: usize,
        viewer: usize,
        while_away: impl FnOnce(&mut Harness),
    ) -> usize {
        let frame = Duration::from_millis(33);
        for seq in 2..=20u16 {
            self.send_frame(host, seq, seq == 2, frame);
        }
        let offers_before = self.clients[viewer].offers;
        let (ssrc_before, video) = self.clients[viewer].video();
        let last_before = video.last().unwrap().0;
        let sfu_peer = self.clients[host].sfu_peer;
        self.sfu.remove_peer(self.now, sfu_peer);
        self.run_for(Duration::from_millis(300));
        while_away(self);
        let host2 = self.add_host("room");
        self.run_for(Duration::from_millis(500));
        for seq in 5000..5030u16 {
            self.send_frame(host2, seq, seq == 5000, frame);
        }
        self.run_for(Duration::from_millis(300));
        let c = &self.clients[viewer];
        assert_eq!(c.offers, offers_before, "no renegotiation for the viewer");
        let (ssrc_after, video) = c.video();
        assert_eq!(ssrc_after, ssrc_before, "same SSRC");
        let resumed = video
            .iter()
            .position(|(s, _, _)| *s == last_before)
            .unwrap()
            + 1;
        assert!(
            video.len() > resumed + 10,
            "video resumed after the reconnect"
        );
        for pair in video[resumed - 1..].windows(2) {
            assert_eq!(pair[1].0, pair[0].0.wrapping_add(1), "sequence continues");
            assert!(pair[1].1 > pair[0].1, "timestamps move forward");
        }
        host2
    }

    /// A WHEP-style viewer joining on shard `shard` is refused while the host of `"room"`
    /// is still starting its tracks (audio before video), answered once both have started,
    /// and then receives both. Shared by the one-core and the two-shard tests.
    pub fn offering_viewer_waits_for_all_tracks(&mut self, shard: usize) {
        let room = RoomId::new("room");
        let host = self.add_host("room");
        self.run_for(Duration::from_millis(500));
        assert!(matches!(
            self.add_offering_viewer_on("room", shard),
            Err(sfu::SfuError::NothingToWatch)
        ));
        // The host's audio starts first: one of its two tracks.
        self.write_audio(host, 1);
        self.run_for(Duration::from_millis(20));
        assert_eq!(self.sfu.tracks(&room).len(), 1);
        assert!(
            matches!(
                self.add_offering_viewer_on("room", shard),
                Err(sfu::SfuError::NothingToWatch)
            ),
            "answered with audio only, the viewer would never get the video"
        );
        self.write_video(host, 1, true);
        self.run_for(Duration::from_millis(20));
        assert_eq!(self.sfu.tracks(&room).len(), 2);
        let v = self
            .add_offering_viewer_on("room", shard)
            .expect("both tracks live");
        self.run_for(Duration::from_millis(500));
        for seq in 2..=30u16 {
            self.send_frame(host, seq, seq == 2, Duration::from_millis(33));
        }
        let c = &self.clients[v];
        assert!(c.video().1.len() > 10, "video: {}", c.video().1.len());
        assert!(c.audio().1.len() > 10, "audio: {}", c.audio().1.len());
    }

    /// The host's encrypted datagram(s) for one video packet, taken off its wire instead of
    /// delivered, so a benchmark can time only what the SFU does with them.
    pub fn host_video_datagrams(&mut self, host: usize, seq: u16) -> Vec<Datagram> {
        let now = self.now;
        let server = self.server;
        let c = &mut self.clients[host];
        let (video, ssrc) = c.video.unwrap();
        let mut sender = c.pc.rtp_sender(video).unwrap();
        let pt = payload_type(&mut sender, "video/VP8");
        let mut payload = vec![0x10, 0x01];
        payload.resize(1100, 0xAB);
        sender
            .write_rtp(
                now,
                rtp_packet(pt, seq, u32::from(seq) * 3000, ssrc, Bytes::from(payload)),
            )
            .unwrap();
        let mut out = Vec::new();
        while let Some(t) = c.pc.poll_write() {
            out.push(Datagram {
                local: server,
                remote: c.addr,
                payload: t.message,
            });
        }
        out
    }
}

/// Delivers a core's datagrams to the clients they are for; whether any moved.
fn deliver_transmits(core: &mut Sfu, clients: &mut [Client], now: Instant) -> bool {
    let mut moved = false;
    let mut buf = Vec::with_capacity(1500);
    while let Some(t) = core.poll_transmit(&mut buf) {
        let payload = BytesMut::from(&buf[..]);
        moved = true;
        let Some(c) = clients.iter_mut().find(|c| c.addr == t.remote && !c.silent) else {
            continue;
        };
        if let Some(seq) = c.drop_seq
            && RtpHeader::parse(&payload).map(|h| h.seq) == Some(seq)
        {
            c.drop_seq = None;
            c.dropped.push(seq);
            continue;
        }
        let _ = c.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: c.addr,
                peer_addr: t.local,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: payload,
        });
    }
    moved
}

/// Records a core's connection states and answers its offers; whether any event came.
fn handle_events(core: &mut Sfu, clients: &mut [Client], now: Instant) -> bool {
    let mut moved = false;
    while let Some(event) = core.poll_event() {
        moved = true;
        if let SfuEvent::Connection { peer, state } = event
            && let Some(c) = clients.iter_mut().find(|c| c.sfu_peer == peer)
        {
            c.states.push(state);
        }
        if let SfuEvent::Offer { peer, sdp } = event {
            let c = clients.iter_mut().find(|c| c.sfu_peer == peer).unwrap();
            c.offers += 1;
            c.pc.set_remote_description(now, RTCSessionDescription::offer(sdp).unwrap())
                .unwrap();
            let answer = c.pc.create_answer(None).unwrap();
            c.pc.set_local_description(now, answer).unwrap();
            let sdp = c.pc.local_description().unwrap().sdp;
            core.handle_answer(now, peer, &sdp).unwrap();
        }
    }
    moved
}

impl Client {
    pub fn new(pc: RTCPeerConnection, addr: SocketAddr, sfu_peer: PeerId) -> Self {
        Self {
            pc,
            addr,
            sfu_peer,
            rtp: HashMap::new(),
            plis: 0,
            sender_reports: Vec::new(),
            sent_reports: Arc::default(),
            offers: 0,
            video: None,
            audio: None,
            drop_seq: None,
            dropped: Vec::new(),
            silent: false,
            states: Vec::new(),
        }
    }

    /// The received stream whose payloads look like video test frames (VP8 or H.264).
    pub fn video(&self) -> (u32, &[(u16, u32, Bytes)]) {
        self.rtp
            .iter()
            .find(|(_, v)| {
                v.iter()
                    .any(|(_, _, p)| p.starts_with(&[0x10]) || p.starts_with(&[0x65]))
            })
            .map(|(ssrc, v)| (*ssrc, v.as_slice()))
            .unwrap_or((0, &[]))
    }

    pub fn audio(&self) -> (u32, &[(u16, u32, Bytes)]) {
        self.rtp
            .iter()
            .find(|(_, v)| v.iter().any(|(_, _, p)| p.starts_with(b"opus-")))
            .map(|(ssrc, v)| (*ssrc, v.as_slice()))
            .unwrap_or((0, &[]))
    }
}

pub fn track(
    kind: RtpCodecKind,
    mime: &str,
    clock_rate: u32,
    channels: u16,
    ssrc: u32,
) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "host".into(),
        format!("{mime}-{ssrc}"),
        mime.into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: mime.into(),
                clock_rate,
                channels,
                ..Default::default()
            },
            ..Default::default()
        }],
    )
}

pub fn payload_type(
    sender: &mut rtc::rtp_transceiver::rtp_sender::RTCRtpSender<'_>,
    mime: &str,
) -> u8 {
    sender
        .get_parameters()
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
        .expect("codec negotiated")
}

/// An H.264 track (constrained baseline, packetization mode 1, as browsers offer).
pub fn h264_track(ssrc: u32) -> MediaStreamTrack {
    MediaStreamTrack::new(
        "host".into(),
        format!("h264-{ssrc}"),
        "video/H264".into(),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: "video/H264".into(),
                clock_rate: 90000,
                sdp_fmtp_line:
                    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".into(),
                ..Default::default()
            },
            ..Default::default()
        }],
    )
}

/// A video test payload for `mime`: VP8 as [`vp8_payload`], H.264 as one NAL unit (IDR slice
/// for keyframes, non-IDR slice otherwise) followed by the sequence number.
pub fn video_payload(mime: &str, seq: u16, keyframe: bool) -> Bytes {
    if mime != "video/H264" {
        return vp8_payload(seq, keyframe);
    }
    let mut p = vec![if keyframe { 0x65 } else { 0x41 }, 0x88];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xCD; 100]);
    Bytes::from(p)
}

/// A VP8 test payload: descriptor with S=1/PID=0, a frame tag whose P bit marks keyframes,
/// then the sequence number so every payload is distinct.
pub fn vp8_payload(seq: u16, keyframe: bool) -> Bytes {
    let mut p = vec![0x10, if keyframe { 0x00 } else { 0x01 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xAB; 100]);
    Bytes::from(p)
}

pub fn rtp_packet(
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    payload: Bytes,
) -> rtp::Packet {
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: true,
            payload_type,
            sequence_number: seq,
            timestamp,
            ssrc,
            ..Default::default()
        },
        payload,
    }
}

/// Copies the sender reports a client's stack sends (wire-most slot, after the report
/// interceptor made them); everything passes through unchanged.
pub struct RecordSenderReports {
    reports: Arc<Mutex<Vec<SenderReport>>>,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RecordSenderReports {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let mut reports = self.reports.lock().unwrap();
            reports.extend(
                packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<SenderReport>())
                    .cloned(),
            );
        }
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for RecordSenderReports {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
