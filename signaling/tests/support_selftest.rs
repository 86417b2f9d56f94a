//! Self-test of `tests/support`: needs no Marquee server. The pure helpers are checked
//! directly, the relay with plain UDP sockets, the WebRTC clients by connecting a `Publisher`
//! to a `Subscriber` in-process through a lossy relay, and `Host` and `Viewer` against a fake
//! signaling server whose media side is the other kind of peer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use signaling::protocol::{
    ClientMessage, DEFAULT_MAX_MESSAGE_BYTES, Limits, MediaKind, PROTOCOL_VERSION, Role,
    RoomMessage, RoomState, ServerMessage, decode_client_message,
};
use support::*;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(8);

#[test]
fn vp8_payloads_mark_keyframes_as_rfc_7741_says() {
    let key = vp8_frame_payloads(7, true, 3, 200);
    assert_eq!(key.len(), 3);
    assert!(key.iter().all(|p| p.len() == 200));
    assert_eq!(key[0][0], 0x10, "S=1, PID=0 on the first packet");
    assert_eq!(key[0][1] & 0x01, 0, "P=0: keyframe");
    assert_eq!(&key[0][4..7], &[0x9d, 0x01, 0x2a], "keyframe start code");
    assert!(is_vp8_keyframe_start(&key[0]));
    assert!(!is_vp8_keyframe_start(&key[1]), "continuation packet (S=0)");

    let delta = vp8_frame_payloads(8, false, 1, 100);
    assert_eq!(delta[0][1] & 0x01, 1, "P=1: interframe");
    assert!(!is_vp8_keyframe_start(&delta[0]));

    // Deterministic: the same frame always has the same bytes; another frame differs.
    assert_eq!(vp8_frame_payloads(7, true, 3, 200), key);
    assert_ne!(vp8_frame_payloads(9, true, 3, 200), key);
}

#[test]
fn vp8_descriptor_extensions_are_skipped() {
    // X=1, S=1; I=1 with a 15-bit PictureID (M=1), L=1, T=1: 6 descriptor bytes.
    let mut payload = vec![0x90, 0xe0, 0x80, 0x01, 0x05, 0x20];
    payload.extend_from_slice(&[0x10, 0x02, 0x00]); // frame tag, P=0
    assert_eq!(vp8_descriptor_len(&payload), Some(6));
    assert!(is_vp8_keyframe_start(&payload));
    payload[6] |= 0x01; // P=1
    assert!(!is_vp8_keyframe_start(&payload));
    // A 7-bit PictureID only (I=1, M=0): 3 descriptor bytes.
    assert_eq!(vp8_descriptor_len(&[0x90, 0x80, 0x05, 0x00]), Some(3));
    // S=1 but PID=1 does not start the frame.
    assert!(!is_vp8_keyframe_start(&[0x11, 0x00, 0x00, 0x00]));
    // Truncated descriptors are not keyframes, nor panics.
    assert_eq!(vp8_descriptor_len(&[0x90, 0x80]), None);
    assert!(!is_vp8_keyframe_start(&[0x10]));
    assert!(!is_vp8_keyframe_start(&[]));
}

#[test]
fn payload_tags_round_trip() {
    let video = vp8_frame_payloads(42, true, 2, 64);
    let tag = PayloadTag::parse(&video[1]).unwrap();
    assert_eq!(
        tag,
        PayloadTag {
            kind: MediaKind::Video,
            frame: 42,
            index: 1,
            count: 2,
            keyframe: true
        }
    );
    let audio = opus_payload(9, 80);
    assert_eq!(audio.len(), 80);
    assert_eq!(audio[0], 0xf8, "Opus TOC: config 31, mono, one frame");
    let tag = PayloadTag::parse(&audio).unwrap();
    assert_eq!(
        (tag.kind, tag.frame, tag.keyframe),
        (MediaKind::Audio, 9, false)
    );
    assert_eq!(PayloadTag::parse(b"not a tagged payload"), None);
    assert_eq!(PayloadTag::parse(b"MQ"), None);
}

#[test]
fn datagrams_are_classified_by_first_byte() {
    assert_eq!(classify_datagram(&[0x00, 0x01, 0, 0]), Datagram::Stun);
    assert_eq!(classify_datagram(&[22, 0xfe, 0xfd]), Datagram::Dtls);
    assert_eq!(
        classify_datagram(&rtp(96, 0x0102, 0xdead_beef, true)),
        Datagram::Rtp(RtpHeader {
            ssrc: 0xdead_beef,
            seq: 0x0102,
            timestamp: 1234,
            payload_type: 96,
            marker: true
        })
    );
    // RTCP receiver report (packet type 201): byte 1 & 0x7f = 73.
    let mut rr = rtp(0, 0, 1, false);
    rr[1] = 201;
    assert_eq!(classify_datagram(&rr), Datagram::Rtcp);
    assert_eq!(
        classify_datagram(&[0x80, 96]),
        Datagram::Other,
        "too short for RTP"
    );
    assert_eq!(classify_datagram(&[]), Datagram::Other);
}

#[test]
fn drop_policy_drops_only_first_transmissions() {
    let mut policy = DropPolicy::new(DropRule::EveryNthVideo(3));
    policy.set_video_payload_types([96]);
    let decisions: Vec<bool> = (1..=6)
        .map(|seq| policy.should_drop(&rtp(96, seq, 7, false)))
        .collect();
    assert_eq!(decisions, [false, false, true, false, false, true]);
    assert_eq!(policy.dropped(), &[(7, 3), (7, 6)]);
    // Retransmissions of dropped packets pass, and do not advance the count.
    assert!(!policy.should_drop(&rtp(96, 3, 7, false)));
    assert!(!policy.should_drop(&rtp(96, 7, 7, false)));
    assert!(!policy.should_drop(&rtp(96, 8, 7, false)));
    assert!(policy.should_drop(&rtp(96, 9, 7, false)));
    // Audio, RTCP, STUN and DTLS are never dropped.
    for seq in 100..110 {
        assert!(!policy.should_drop(&rtp(111, seq, 8, false)));
    }
    let mut rtcp = rtp(0, 0, 7, false);
    rtcp[1] = 205;
    assert!(!policy.should_drop(&rtcp));
    assert!(!policy.should_drop(&[0, 1, 0, 0]));

    let mut custom = DropPolicy::new(DropRule::Custom(Arc::new(|view| view.marker)));
    assert!(!custom.should_drop(&rtp(96, 1, 1, false)));
    assert!(custom.should_drop(&rtp(96, 2, 1, true)));
    assert!(!custom.should_drop(&rtp(96, 2, 1, true)), "never twice");
}

#[test]
fn candidates_are_rewritten_to_the_relay() {
    let sdp = "v=0\r\n\
               m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
               a=mid:0\r\n\
               a=rtpmap:96 VP8/90000\r\n\
               a=rtpmap:97 rtx/90000\r\n\
               a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n\
               a=candidate:2 1 udp 2130706431 ::1 5001 typ host\r\n\
               a=candidate:3 1 tcp 1518280447 127.0.0.1 5002 typ host tcptype passive\r\n\
               a=end-of-candidates\r\n\
               m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
               a=mid:1\r\n\
               a=rtpmap:111 opus/48000/2\r\n\
               a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n";
    let relay: std::net::SocketAddr = "127.0.0.1:6000".parse().unwrap();
    let (rewritten, server) = rewrite_candidates(sdp, relay);
    assert_eq!(server, Some("127.0.0.1:5000".parse().unwrap()));
    let candidates: Vec<&str> = rewritten
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert_eq!(
        candidates,
        [
            "a=candidate:1 1 udp 2130706431 127.0.0.1 6000 typ host",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 6000 typ host"
        ]
    );
    assert!(rewritten.contains("a=end-of-candidates\r\n"));
    assert!(rewritten.ends_with("\r\n"));
    assert_eq!(video_payload_types(sdp), [96]);
    assert_eq!(first_mid(sdp).as_deref(), Some("0"));
}

#[tokio::test]
async fn relay_forwards_both_ways_and_drops_media_to_the_client() -> Result<()> {
    let relay = ImpairedRelay::start(dropping(DropRule::EveryNthVideo(2))).await?;
    let server = UdpSocket::bind("127.0.0.1:0").await?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    relay.set_server(server.local_addr()?);
    relay.set_video_payload_types([96]);

    // Client → server: forwarded from the relay's address; teaches the relay the client.
    let stun = [0x00, 0x01, 0x00, 0x00];
    client.send_to(&stun, relay.addr()).await?;
    let (data, from) = recv(&server).await?;
    assert_eq!((data.as_slice(), from), (&stun[..], relay.addr()));
    assert_eq!(relay.client(), Some(client.local_addr()?));

    // Server → client: the 2nd video packet is dropped, its retransmission passes, and
    // audio and RTCP are untouched. Loopback UDP keeps order, so arrival order shows it.
    let mut rtcp = rtp(0, 0, 5, false);
    rtcp[1] = 200;
    let sent = [
        rtp(96, 1, 5, false),
        rtp(96, 2, 5, true),
        rtp(111, 50, 6, false),
        rtp(96, 3, 5, false),
        rtp(96, 2, 5, true),
        rtcp.clone(),
    ];
    for datagram in &sent {
        server.send_to(datagram, relay.addr()).await?;
    }
    let mut received = Vec::new();
    for _ in 0..5 {
        received.push(recv(&client).await?.0);
    }
    assert_eq!(
        received,
        [
            sent[0].clone(),
            sent[2].clone(),
            sent[3].clone(),
            sent[4].clone(),
            rtcp
        ]
    );
    assert_eq!(relay.dropped(), [(5, 2)]);
    let stats = relay.stats();
    assert_eq!(
        (stats.up.passed, stats.down.passed, stats.down.dropped_rule),
        (1, 5, 1)
    );
    Ok(())
}

/// The whole client stack against itself: a publisher offers, a subscriber answers, and both
/// talk through a relay that drops every 7th video packet. Checks that media flows with the
/// exact payloads sent, that keyframes are recognised, that a PLI makes the publisher send a
/// keyframe at once, and that every dropped packet is recovered by NACK and retransmission.
#[tokio::test]
async fn publisher_and_subscriber_through_a_lossy_relay() -> Result<()> {
    let relay = Arc::new(ImpairedRelay::start(dropping(DropRule::EveryNthVideo(7))).await?);
    let publisher = Publisher::new(MediaConfig {
        // Keyframes only first and on request, so the PLI's effect is unambiguous.
        keyframe_interval: 0,
        ..MediaConfig::default()
    })
    .await?;
    let subscriber = Subscriber::new().await?;

    // Non-trickle offer/answer, each side's candidates rewritten to the relay.
    publisher.create_offer().await?;
    let offer = publisher.peer().local_description_after_gathering().await?;
    let offer = relay.rewrite_offer(&offer)?;
    subscriber.answer(&offer).await?;
    let answer = subscriber
        .peer()
        .local_description_after_gathering()
        .await?;
    let (answer, subscriber_addr) = rewrite_candidates(&answer, relay.addr());
    relay.set_client(subscriber_addr.context("no candidate in the answer")?);
    publisher.apply_answer(&answer).await?;
    tokio::try_join!(
        publisher.wait_connected(WAIT),
        subscriber.wait_connected(WAIT)
    )?;

    publisher.start_media();
    subscriber
        .wait_for(WAIT, |s| {
            s.first_keyframe_at().is_some()
                && s.packet_count(MediaKind::Video) >= 30
                && s.packet_count(MediaKind::Audio) >= 10
        })
        .await
        .context("media through the relay")?;
    assert!(relay.stats().down.passed > 0, "media bypassed the relay");
    assert_eq!(subscriber.offers_answered(), 1);

    // What arrives is exactly what was sent (the peers rewrite nothing).
    let sent = publisher.sent(MediaKind::Video);
    for packet in subscriber.packets(MediaKind::Video) {
        let original = sent
            .iter()
            .find(|s| s.seq == packet.seq)
            .context("received a packet that was never sent")?;
        assert_eq!(packet.ssrc, publisher.video_ssrc());
        assert_eq!(packet.tag(), Some(original.tag));
        assert_eq!(packet.timestamp, original.timestamp);
        assert_eq!(packet.marker, original.marker);
        assert_eq!(
            packet.is_keyframe_start(),
            original.tag.keyframe && original.tag.index == 0
        );
    }
    let audio = subscriber.packets(MediaKind::Audio);
    assert!(
        audio
            .iter()
            .all(|p| p.tag().is_some_and(|t| t.kind == MediaKind::Audio))
    );
    assert_eq!(publisher.keyframes_sent(), 1, "only the first frame so far");

    // A PLI is answered with a keyframe right away.
    subscriber.request_keyframe().await?;
    publisher
        .wait_for(WAIT, |p| p.plis_received() >= 1 && p.keyframes_sent() >= 2)
        .await
        .context("PLI → keyframe")?;
    subscriber
        .wait_for(WAIT, |s| s.keyframe_starts() >= 2)
        .await
        .context("second keyframe at the subscriber")?;

    // Every dropped packet arrives eventually: NACK (subscriber) → retransmission (publisher).
    subscriber
        .wait_for(WAIT, |_| relay.dropped().len() >= 4)
        .await
        .context("relay drops")?;
    let dropped = relay.dropped();
    subscriber
        .wait_for(WAIT, |s| {
            dropped.iter().all(|&(ssrc, seq)| s.has_packet(ssrc, seq))
        })
        .await
        .with_context(|| format!("retransmissions of {dropped:?}"))?;

    publisher.close().await?;
    subscriber.close().await?;
    Ok(())
}

/// `Host` over the WebSocket protocol: join, offer, answer, trickled candidates (which the
/// fake server applies to its subscriber), media, and a PLI answered with a keyframe.
#[tokio::test]
async fn host_joins_and_publishes_through_a_fake_server() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let subscriber = Arc::new(Subscriber::new().await?);
    let (end_of_candidates_tx, end_of_candidates_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn({
        let subscriber = Arc::clone(&subscriber);
        let mut end_of_candidates_tx = Some(end_of_candidates_tx);
        async move {
            let mut ws = accept(&listener).await?;
            let mut log = Vec::new();
            while let Some(message) = next_client_message(&mut ws).await? {
                match &message {
                    ClientMessage::Room(RoomMessage::Join {
                        role: Role::Host, ..
                    }) => {
                        send(&mut ws, &room_state()).await?;
                        send(&mut ws, &joined(Role::Host)).await?;
                    }
                    ClientMessage::Room(RoomMessage::Offer { sdp }) => {
                        subscriber.answer(sdp).await?;
                        let sdp = subscriber
                            .peer()
                            .local_description_after_gathering()
                            .await?;
                        send(&mut ws, &ServerMessage::Answer { sdp }).await?;
                    }
                    ClientMessage::Room(RoomMessage::Candidate { candidate }) => {
                        subscriber.peer().add_remote_candidate(candidate).await?;
                        if candidate.candidate.is_empty() {
                            end_of_candidates_tx.take().map(|tx| tx.send(()));
                        }
                    }
                    other => bail!("unexpected {other:?}"),
                }
                log.push(message);
            }
            anyhow::Ok(log)
        }
    });

    let host = Host::join_with(
        server_addr,
        HostOptions {
            media: MediaConfig {
                keyframe_interval: 0,
                ..MediaConfig::default()
            },
            ..HostOptions::default()
        },
    )
    .await?;
    assert_eq!(host.room(), "ROOM1");
    assert_eq!(host.joined().host_key.as_deref(), Some("key"));
    subscriber
        .wait_for(WAIT, |s| {
            s.first_keyframe_at().is_some() && s.packet_count(MediaKind::Audio) >= 5
        })
        .await
        .context("host media at the fake server")?;
    subscriber.request_keyframe().await?;
    host.wait_for(WAIT, |h| h.plis_received() == 1 && h.keyframes_sent() == 2)
        .await
        .context("PLI → keyframe")?;
    subscriber
        .wait_for(WAIT, |s| s.keyframe_starts() >= 2)
        .await?;
    // The end of candidates is trickled last, once gathering completes.
    tokio::time::timeout(WAIT, end_of_candidates_rx)
        .await?
        .context("no end of candidates")?;
    host.close().await?;

    let log = tokio::time::timeout(WAIT, server).await???;
    assert!(matches!(
        log[0],
        ClientMessage::Room(RoomMessage::Join {
            version: PROTOCOL_VERSION,
            room: None,
            ..
        })
    ));
    assert!(
        matches!(log[1], ClientMessage::Room(RoomMessage::Offer { .. })),
        "offer before any candidate"
    );
    let candidates: Vec<_> = log[2..]
        .iter()
        .map(|m| match m {
            ClientMessage::Room(RoomMessage::Candidate { candidate }) => candidate,
            other => panic!("expected only candidates after the offer, got {other:?}"),
        })
        .collect();
    assert!(candidates.iter().any(|c| c.candidate.contains("127.0.0.1")));
    assert_eq!(candidates.last().map(|c| c.candidate.as_str()), Some(""));
    assert!(candidates.iter().all(|c| c.sdp_mid.as_deref() == Some("0")));
    Ok(())
}

/// `Viewer` over the WebSocket protocol, routed through a lossy relay: messages before
/// `joined` are kept, the server's offer and a renegotiation offer are answered, and lost
/// video is recovered by NACK. The fake server's peer is ICE-lite like the SFU: its candidate
/// is in the offer, it ignores the viewer's trickled candidates and answers the viewer's
/// connectivity checks, which the relay forwards.
#[tokio::test]
async fn viewer_answers_offers_through_a_fake_server_and_a_lossy_relay() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = listener.local_addr()?;
    let publisher = Arc::new(Publisher::new_ice_lite(MediaConfig::default()).await?);
    let server = tokio::spawn({
        let publisher = Arc::clone(&publisher);
        async move {
            let mut ws = accept(&listener).await?;
            let mut log = vec![next_client_message(&mut ws).await?.context("no join")?];
            send(&mut ws, &room_state()).await?;
            send(&mut ws, &joined(Role::Viewer)).await?;
            for renegotiation in [false, true] {
                publisher.create_offer().await?;
                let sdp = publisher.peer().local_description_after_gathering().await?;
                send(&mut ws, &ServerMessage::Offer { sdp }).await?;
                loop {
                    let message = next_client_message(&mut ws).await?.context("closed")?;
                    let answer = match &message {
                        ClientMessage::Room(RoomMessage::Answer { sdp }) => Some(sdp.clone()),
                        _ => None,
                    };
                    log.push(message);
                    if let Some(sdp) = answer {
                        publisher.apply_answer(&sdp).await?;
                        break;
                    }
                }
                if !renegotiation {
                    publisher.wait_connected(WAIT).await?;
                    publisher.start_media();
                }
            }
            while let Some(message) = next_client_message(&mut ws).await? {
                log.push(message);
            }
            anyhow::Ok(log)
        }
    });

    let relay = Arc::new(ImpairedRelay::start(dropping(DropRule::EveryNthVideo(5))).await?);
    let mut viewer = Viewer::join_via_relay(server_addr, "ROOM1", Arc::clone(&relay)).await?;
    assert_eq!(viewer.joined().room, "ROOM1");
    let early = viewer
        .recv_until(|m| matches!(m, ServerMessage::RoomState(_)))
        .await?;
    assert_eq!(
        early,
        room_state(),
        "the roomState sent before joined is kept"
    );
    viewer.wait_connected(WAIT).await?;
    viewer
        .wait_for(WAIT, |v| {
            v.offers_answered() == 2
                && v.first_keyframe_at().is_some()
                && v.packet_count(MediaKind::Video) >= 30
                && relay.dropped().len() >= 3
        })
        .await
        .context("viewer media")?;
    assert!(viewer.first_keyframe_at() >= viewer.first_packet_at(MediaKind::Video));
    assert!(viewer.join_sent_at() < viewer.first_packet_at(MediaKind::Video).unwrap());
    assert_eq!(relay.server(), Some(publisher_addr(&publisher).await?));
    let dropped = relay.dropped();
    viewer
        .wait_for(WAIT, |v| {
            dropped.iter().all(|&(ssrc, seq)| v.has_packet(ssrc, seq))
        })
        .await
        .with_context(|| format!("retransmissions of {dropped:?}"))?;
    // Offers are forwarded to the test too, after being answered.
    viewer
        .recv_until(|m| matches!(m, ServerMessage::Offer { .. }))
        .await?;
    viewer.close().await?;

    let log = tokio::time::timeout(WAIT, server).await???;
    assert!(matches!(
        &log[0],
        ClientMessage::Room(RoomMessage::Join { role: Role::Viewer, room: Some(room), .. }) if room == "ROOM1"
    ));
    let answers = log
        .iter()
        .filter(|m| matches!(m, ClientMessage::Room(RoomMessage::Answer { .. })))
        .count();
    assert_eq!(answers, 2);
    assert!(
        log.iter()
            .any(|m| matches!(m, ClientMessage::Room(RoomMessage::Candidate { .. })))
    );
    publisher.close().await?;
    Ok(())
}

/// A one-client relay (through its own socket, as these tests' peers expect) that drops by
/// `rule` on the way to the client.
fn dropping(rule: DropRule) -> RelayConfig {
    RelayConfig {
        drop_rule: rule,
        ..RelayConfig::default()
    }
}

fn joined(role: Role) -> ServerMessage {
    ServerMessage::Joined {
        version: PROTOCOL_VERSION,
        room: "ROOM1".to_owned(),
        peer_id: "peer1".to_owned(),
        role,
        host_key: (role == Role::Host).then(|| "key".to_owned()),
        limits: Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        },
        ice_servers: vec![],
    }
}

fn room_state() -> ServerMessage {
    ServerMessage::RoomState(RoomState {
        room: "ROOM1".to_owned(),
        live: false,
        participants: vec![],
        tracks: vec![],
        viewer_count: 0,
    })
}

/// The publisher's own host candidate, from its local description.
async fn publisher_addr(publisher: &Publisher) -> Result<std::net::SocketAddr> {
    let sdp = publisher.peer().local_description().await?;
    rewrite_candidates(&sdp, "127.0.0.1:9".parse()?)
        .1
        .context("no candidate")
}

async fn accept(listener: &TcpListener) -> Result<WebSocketStream<TcpStream>> {
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept()).await??;
    Ok(tokio_tungstenite::accept_async(stream).await?)
}

/// The next client message; `None` once the client closes.
async fn next_client_message(ws: &mut WebSocketStream<TcpStream>) -> Result<Option<ClientMessage>> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(Message::Text(text))) => {
                return Ok(Some(decode_client_message(
                    &text,
                    DEFAULT_MAX_MESSAGE_BYTES,
                )?));
            }
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

async fn send(ws: &mut WebSocketStream<TcpStream>, message: &ServerMessage) -> Result<()> {
    ws.send(Message::text(serde_json::to_string(message)?))
        .await?;
    Ok(())
}

/// A minimal RTP header (RFC 3550 §5.1) with a 4-byte payload.
fn rtp(payload_type: u8, seq: u16, ssrc: u32, marker: bool) -> Vec<u8> {
    let mut packet = vec![0x80, payload_type | if marker { 0x80 } else { 0 }];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&1234u32.to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend_from_slice(&[1, 2, 3, 4]);
    packet
}

async fn recv(socket: &UdpSocket) -> Result<(Vec<u8>, std::net::SocketAddr)> {
    let mut buf = vec![0; 2048];
    let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .context("no datagram")??;
    buf.truncate(len);
    Ok((buf, from))
}
