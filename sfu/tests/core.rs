//! Tests of the sans-IO core on virtual time: real `rtc` client peers (full ICE, DTLS, SRTP)
//! exchange datagrams with an `Sfu` in memory. No sockets, no sleeps: the harness advances
//! a virtual clock to the earliest deadline whenever nothing is in flight (quinn-proto's
//! `Pair::drive`, str0m's `progress`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::interceptor::Registry;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu::{Datagram, PeerId, Role, RoomId, Sfu, SfuConfig, SfuEvent};

const SERVER: &str = "127.0.0.1:7882";

/// One in-memory client peer.
struct Client {
    pc: RTCPeerConnection,
    addr: SocketAddr,
    sfu_peer: PeerId,
    /// Received RTP per SSRC: (sequence number, timestamp, payload).
    rtp: HashMap<u32, Vec<(u16, u32, Bytes)>>,
    plis: usize,
    offers: usize,
    video: Option<(RTCRtpSenderId, u32)>,
    audio: Option<(RTCRtpSenderId, u32)>,
    /// Drop the next server→client datagram that carries RTP with this sequence number.
    drop_seq: Option<u16>,
    dropped: Vec<u16>,
}

struct Harness {
    sfu: Sfu,
    now: Instant,
    clients: Vec<Client>,
    server: SocketAddr,
}

impl Harness {
    fn new(config: SfuConfig) -> Self {
        let server: SocketAddr = SERVER.parse().unwrap();
        Self {
            sfu: Sfu::new(SfuConfig {
                candidates: vec![server],
                ..config
            }),
            now: Instant::now(),
            clients: Vec::new(),
            server,
        }
    }

    fn client_pc(&self, addr: SocketAddr) -> RTCPeerConnection {
        let mut engine = MediaEngine::default();
        engine.register_default_codecs().unwrap();
        // The SFU's own feedback marker, so the host sees the keyframe requests it is sent.
        let registry = register_default_interceptors(Registry::new(), &mut engine)
            .unwrap()
            .with(sfu::codecs::FEEDBACK_SLOT, sfu::feedback::DeliverFeedback::default());
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(SettingEngineBuilder::new().build())
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(self.now)
            .unwrap();
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .unwrap();
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json().unwrap())
            .unwrap();
        pc.add_local_candidate(RTCIceCandidateInit::default()).unwrap();
        pc
    }

    /// A host publishing one VP8 and one Opus track; returns the client index.
    fn add_host(&mut self, room: &str) -> usize {
        let addr: SocketAddr = format!("127.0.0.2:{}", 5000 + self.clients.len())
            .parse()
            .unwrap();
        let mut pc = self.client_pc(addr);
        let video_ssrc = rand::random();
        let audio_ssrc = rand::random();
        let video = pc.add_track(track(RtpCodecKind::Video, "video/VP8", 90000, 0, video_ssrc)).unwrap();
        let audio = pc.add_track(track(RtpCodecKind::Audio, "audio/opus", 48000, 2, audio_ssrc)).unwrap();
        let offer = pc.create_offer(None).unwrap();
        pc.set_local_description(self.now, offer).unwrap();
        let sdp = pc.local_description().unwrap().sdp;
        let peer = self.sfu.add_peer(self.now, &RoomId::new(room), Role::Publisher).unwrap();
        let answer = self.sfu.handle_offer(self.now, peer, &sdp).unwrap();
        pc.set_remote_description(self.now, RTCSessionDescription::answer(answer).unwrap())
            .unwrap();
        self.clients.push(Client {
            video: Some((video, video_ssrc)),
            audio: Some((audio, audio_ssrc)),
            ..Client::new(pc, addr, peer)
        });
        self.clients.len() - 1
    }

    fn add_viewer(&mut self, room: &str) -> usize {
        let addr: SocketAddr = format!("127.0.0.3:{}", 5000 + self.clients.len())
            .parse()
            .unwrap();
        let pc = self.client_pc(addr);
        let peer = self.sfu.add_peer(self.now, &RoomId::new(room), Role::Subscriber).unwrap();
        self.clients.push(Client::new(pc, addr, peer));
        self.clients.len() - 1
    }

    /// Moves datagrams and events until nothing is in flight, then stops (time unchanged).
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.remote) else {
                    continue;
                };
                if let Some(seq) = c.drop_seq
                    && rtp_seq(&t.payload) == Some(seq)
                {
                    c.drop_seq = None;
                    c.dropped.push(seq);
                    continue;
                }
                let _ = c.pc.handle_read(TaggedBytesMut {
                    now: self.now,
                    transport: TransportContext {
                        local_addr: c.addr,
                        peer_addr: t.local,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: t.payload,
                });
            }
            while let Some(event) = self.sfu.poll_event() {
                moved = true;
                if let SfuEvent::Offer { peer, sdp } = event {
                    let c = self.clients.iter_mut().find(|c| c.sfu_peer == peer).unwrap();
                    c.offers += 1;
                    c.pc.set_remote_description(self.now, RTCSessionDescription::offer(sdp).unwrap())
                        .unwrap();
                    let answer = c.pc.create_answer(None).unwrap();
                    c.pc.set_local_description(self.now, answer).unwrap();
                    let sdp = c.pc.local_description().unwrap().sdp;
                    self.sfu.handle_answer(self.now, peer, &sdp).unwrap();
                }
            }
            for c in &mut self.clients {
                while c.pc.poll_event().is_some() {}
                while let Some(TaggedRTCMessage { message, .. }) = c.pc.poll_read() {
                    match message {
                        RTCMessage::RtpPacket(_, p) => c.rtp.entry(p.header.ssrc).or_default().push((
                            p.header.sequence_number,
                            p.header.timestamp,
                            p.payload,
                        )),
                        RTCMessage::RtcpPacket(_, packets) => {
                            c.plis += packets
                                .iter()
                                .filter(|p| p.as_any().is::<PictureLossIndication>())
                                .count();
                        }
                        _ => {}
                    }
                }
                while let Some(out) = c.pc.poll_write() {
                    moved = true;
                    self.sfu.handle_datagram(
                        self.now,
                        Datagram {
                            local: self.server,
                            remote: c.addr,
                            payload: out.message,
                        },
                    );
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs until `deadline` (virtual), firing every timer on the way.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.pump();
            let next = self
                .clients
                .iter_mut()
                .filter_map(|c| c.pc.poll_timeout())
                .chain(self.sfu.poll_timeout())
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.sfu.handle_timeout(self.now);
                    for c in &mut self.clients {
                        if c.pc.poll_timeout().is_some_and(|t| t <= self.now) {
                            let _ = c.pc.handle_timeout(self.now);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    self.sfu.handle_timeout(self.now);
                    self.pump();
                    return;
                }
            }
        }
    }

    /// The host sends one RTP packet per track and the world runs for `gap`.
    fn send_frame(&mut self, host: usize, seq: u16, keyframe: bool, gap: Duration) {
        let now = self.now;
        let c = &mut self.clients[host];
        let (video, video_ssrc) = c.video.unwrap();
        let (audio, audio_ssrc) = c.audio.unwrap();
        let vp8 = vp8_payload(seq, keyframe);
        let mut sender = c.pc.rtp_sender(video).unwrap();
        let pt = payload_type(&mut sender, "video/VP8");
        sender
            .write_rtp(now, rtp_packet(pt, seq, u32::from(seq) * 3000, video_ssrc, vp8))
            .unwrap();
        let mut sender = c.pc.rtp_sender(audio).unwrap();
        let pt = payload_type(&mut sender, "audio/opus");
        let opus = Bytes::from(format!("opus-{seq}").into_bytes());
        sender
            .write_rtp(now, rtp_packet(pt, seq, u32::from(seq) * 960, audio_ssrc, opus))
            .unwrap();
        self.run_for(gap);
    }
}

impl Client {
    fn new(pc: RTCPeerConnection, addr: SocketAddr, sfu_peer: PeerId) -> Self {
        Self {
            pc,
            addr,
            sfu_peer,
            rtp: HashMap::new(),
            plis: 0,
            offers: 0,
            video: None,
            audio: None,
            drop_seq: None,
            dropped: Vec::new(),
        }
    }

    /// The received stream whose payloads look like VP8 test frames.
    fn video(&self) -> (u32, &[(u16, u32, Bytes)]) {
        self.rtp
            .iter()
            .find(|(_, v)| v.iter().any(|(_, _, p)| p.starts_with(&[0x10])))
            .map(|(ssrc, v)| (*ssrc, v.as_slice()))
            .unwrap_or((0, &[]))
    }

    fn audio(&self) -> (u32, &[(u16, u32, Bytes)]) {
        self.rtp
            .iter()
            .find(|(_, v)| v.iter().any(|(_, _, p)| p.starts_with(b"opus-")))
            .map(|(ssrc, v)| (*ssrc, v.as_slice()))
            .unwrap_or((0, &[]))
    }
}

fn track(kind: RtpCodecKind, mime: &str, clock_rate: u32, channels: u16, ssrc: u32) -> MediaStreamTrack {
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

fn payload_type(sender: &mut rtc::rtp_transceiver::rtp_sender::RTCRtpSender<'_>, mime: &str) -> u8 {
    sender
        .get_parameters()
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
        .expect("codec negotiated")
}

/// A VP8 test payload: descriptor with S=1/PID=0, a frame tag whose P bit marks keyframes,
/// then the sequence number so every payload is distinct.
fn vp8_payload(seq: u16, keyframe: bool) -> Bytes {
    let mut p = vec![0x10, if keyframe { 0x00 } else { 0x01 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xAB; 100]);
    Bytes::from(p)
}

fn rtp_packet(payload_type: u8, seq: u16, timestamp: u32, ssrc: u32, payload: Bytes) -> rtp::Packet {
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

/// The sequence number of an SRTP datagram (the RTP header is sent in clear), if it is RTP.
fn rtp_seq(datagram: &BytesMut) -> Option<u16> {
    let is_rtp = datagram.len() >= 12
        && (128..=191).contains(&datagram[0])
        && !(64..=95).contains(&(datagram[1] & 0x7f));
    is_rtp.then(|| u16::from_be_bytes([datagram[2], datagram[3]]))
}

const FRAME: Duration = Duration::from_millis(33);

fn connected_room(viewers: usize) -> (Harness, usize, Vec<usize>) {
    let mut h = Harness::new(SfuConfig::default());
    let host = h.add_host("room");
    h.run_for(Duration::from_millis(500));
    // The first packets create the room's tracks; viewers arriving later get offers.
    h.send_frame(host, 1, true, Duration::from_millis(100));
    let viewers: Vec<usize> = (0..viewers).map(|_| h.add_viewer("room")).collect();
    h.run_for(Duration::from_millis(1000));
    (h, host, viewers)
}

#[test]
fn viewers_receive_identical_payloads_in_order() {
    let (mut h, host, viewers) = connected_room(3);
    for seq in 2..=60u16 {
        h.send_frame(host, seq, seq % 30 == 0, FRAME);
    }
    h.run_for(Duration::from_millis(200));
    for &v in &viewers {
        let c = &h.clients[v];
        let (_, video) = c.video();
        // The viewer starts at the first keyframe after it connected (the one its own
        // keyframe request produced, here the periodic one at 30 or the answer to the PLI).
        assert!(video.len() >= 30, "viewer {v} got {} video packets", video.len());
        for pair in video.windows(2) {
            assert_eq!(pair[1].0, pair[0].0.wrapping_add(1), "contiguous sequence numbers");
            assert!(pair[1].1 > pair[0].1, "increasing timestamps");
        }
        let sent_seq = u16::from_be_bytes([video[0].2[2], video[0].2[3]]);
        for (i, (_, _, payload)) in video.iter().enumerate() {
            assert_eq!(payload, &vp8_payload(sent_seq + i as u16, payload[1] == 0), "byte-identical");
        }
        let (_, audio) = c.audio();
        assert!(audio.len() >= 55, "audio flows from the start: {}", audio.len());
        assert!(audio.windows(2).all(|p| p[1].0 == p[0].0.wrapping_add(1)));
    }
    // Viewers get distinct SSRCs; the host's own SSRC is never exposed.
    let host_ssrc = h.clients[host].video.unwrap().1;
    let ssrcs: Vec<u32> = viewers.iter().map(|&v| h.clients[v].video().0).collect();
    assert!(!ssrcs.contains(&host_ssrc));
    assert_ne!(ssrcs[0], ssrcs[1]);
    assert_eq!(h.sfu.stats().datagrams_dropped, 0);
}

#[test]
fn keyframe_requests_are_coalesced_and_throttled() {
    let (mut h, host, _viewers) = connected_room(3);
    // Three viewers connected within one interval: their requests coalesce.
    let plis_after_join = h.clients[host].plis;
    assert!(plis_after_join >= 1, "joining viewers trigger a keyframe request");
    assert!(
        plis_after_join <= 3,
        "at most one request per 500 ms over the ~1.5 s of setup, got {plis_after_join}"
    );
    // Ten viewer PLIs in 100 ms yield at most one immediate and one deferred request.
    let before = h.clients[host].plis;
    let viewer_ids: Vec<usize> = (1..h.clients.len()).collect();
    for &v in viewer_ids.iter().cycle().take(10) {
        let now = h.now;
        let c = &mut h.clients[v];
        let receivers: Vec<_> = c.pc.get_receivers().collect();
        let (receiver, ssrc) = receivers
            .into_iter()
            .find_map(|id| {
                let r = c.pc.rtp_receiver(id)?;
                let track = r.track();
                (track.kind() == RtpCodecKind::Video).then(|| (id, track.ssrcs().next()))
            })
            .unwrap();
        let ssrc = ssrc.expect("the offer announced the video SSRC");
        let pli = PictureLossIndication { sender_ssrc: 1, media_ssrc: ssrc };
        c.pc.rtp_receiver(receiver).unwrap().write_rtcp(now, vec![Box::new(pli)]).unwrap();
        h.run_for(Duration::from_millis(10));
    }
    h.run_for(Duration::from_millis(1000));
    let extra = h.clients[host].plis - before;
    assert!((1..=2).contains(&extra), "10 viewer PLIs became {extra} host PLIs");
    assert!(h.sfu.stats().keyframe_requests_received >= 10);
}

#[test]
fn nacked_packets_are_retransmitted_from_the_ring() {
    let (mut h, host, viewers) = connected_room(1);
    let v = viewers[0];
    for seq in 2..=10u16 {
        h.send_frame(host, seq, seq == 2, FRAME);
    }
    // Drop the viewer's next video packet on the way; its NACK must bring it back.
    let next_out = h.clients[v].video().1.last().unwrap().0.wrapping_add(1);
    h.clients[v].drop_seq = Some(next_out);
    for seq in 11..=40u16 {
        h.send_frame(host, seq, false, FRAME);
    }
    h.run_for(Duration::from_millis(500));
    let c = &h.clients[v];
    assert_eq!(c.dropped, vec![next_out], "the packet was dropped once");
    let (_, video) = c.video();
    let got = video.iter().filter(|(s, _, _)| *s == next_out).count();
    assert_eq!(got, 1, "the dropped packet arrived exactly once, by retransmission");
    assert!(h.sfu.stats().nacks_received >= 1);
    assert!(h.sfu.stats().retransmissions >= 1);
}

#[test]
fn host_reconnect_is_seamless_for_viewers() {
    let (mut h, host, viewers) = connected_room(1);
    let v = viewers[0];
    for seq in 2..=20u16 {
        h.send_frame(host, seq, seq == 2, FRAME);
    }
    let offers_before = h.clients[v].offers;
    let (ssrc_before, video) = h.clients[v].video();
    let last_before = video.last().unwrap().0;
    let sfu_peer = h.clients[host].sfu_peer;
    h.sfu.remove_peer(h.now, sfu_peer);
    h.run_for(Duration::from_millis(300));
    // The host comes back with a new connection and new SSRCs, numbering from scratch.
    let host2 = h.add_host("room");
    h.run_for(Duration::from_millis(500));
    for seq in 5000..5030u16 {
        h.send_frame(host2, seq, seq == 5000, FRAME);
    }
    h.run_for(Duration::from_millis(300));
    let c = &h.clients[v];
    assert_eq!(c.offers, offers_before, "no renegotiation for the viewer");
    let (ssrc_after, video) = c.video();
    assert_eq!(ssrc_after, ssrc_before, "same SSRC");
    let resumed = video.iter().position(|(s, _, _)| *s == last_before).unwrap() + 1;
    assert!(video.len() > resumed + 10, "video resumed after the reconnect");
    for pair in video[resumed - 1..].windows(2) {
        assert_eq!(pair[1].0, pair[0].0.wrapping_add(1), "sequence continues across the switch");
        assert!(pair[1].1 > pair[0].1, "timestamps move forward across the switch");
    }
}

#[test]
fn tracks_of_a_host_that_never_returns_are_removed_after_the_grace() {
    let (mut h, host, viewers) = connected_room(1);
    let v = viewers[0];
    let offers_before = h.clients[v].offers;
    let room = RoomId::new("room");
    assert_eq!(h.sfu.tracks(&room).len(), 2);
    let sfu_peer = h.clients[host].sfu_peer;
    h.sfu.remove_peer(h.now, sfu_peer);
    h.run_for(Duration::from_secs(5));
    assert!(h.sfu.tracks(&room).iter().all(|t| !t.active), "orphaned, not yet removed");
    h.run_for(SfuConfig::default().track_grace);
    assert!(h.sfu.tracks(&room).is_empty());
    assert!(h.clients[v].offers > offers_before, "the viewer renegotiated the tracks away");
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let (mut h, host, viewers) = connected_room(1);
    let viewer_addr = h.clients[viewers[0]].addr;
    let now = h.now;
    let server = h.server;
    for junk in [&b""[..], &[0x00, 0x01, 0x00], &[0x80; 40], &[22; 13], &[0xff; 1200]] {
        for remote in [viewer_addr, "127.0.0.9:9".parse().unwrap()] {
            h.sfu.handle_datagram(now, Datagram { local: server, remote, payload: BytesMut::from(junk) });
        }
    }
    for seq in 2..=40u16 {
        h.send_frame(host, seq, seq == 2 || seq == 30, FRAME);
    }
    assert!(h.sfu.stats().datagrams_unroutable >= 5);
    assert!(h.clients[viewers[0]].video().1.len() >= 10, "media still flows");
}
