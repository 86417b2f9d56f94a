//! Tests of the sans-IO core on virtual time (no sockets, no sleeps): see `harness`.

mod harness;

use std::time::Duration;

use bytes::BytesMut;
use harness::*;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sfu::srtp::SrtpProfile;
use sfu::{Datagram, RoomId, SfuConfig, SfuError};

const FRAME: Duration = Duration::from_millis(33);

fn connected_room(viewers: usize) -> (Harness, usize, Vec<usize>) {
    connected_room_with("video/VP8", viewers)
}

fn connected_room_with(video_mime: &'static str, viewers: usize) -> (Harness, usize, Vec<usize>) {
    let mut h = Harness::new(SfuConfig::default());
    h.video_mime = video_mime;
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
        assert!(
            video.len() >= 30,
            "viewer {v} got {} video packets",
            video.len()
        );
        for pair in video.windows(2) {
            assert_eq!(
                pair[1].0,
                pair[0].0.wrapping_add(1),
                "contiguous sequence numbers"
            );
            assert!(pair[1].1 > pair[0].1, "increasing timestamps");
        }
        let sent_seq = u16::from_be_bytes([video[0].2[2], video[0].2[3]]);
        for (i, (_, _, payload)) in video.iter().enumerate() {
            assert_eq!(
                payload,
                &vp8_payload(sent_seq + i as u16, payload[1] == 0),
                "byte-identical"
            );
        }
        let (_, audio) = c.audio();
        assert!(
            audio.len() >= 55,
            "audio flows from the start: {}",
            audio.len()
        );
        assert!(audio.windows(2).all(|p| p[1].0 == p[0].0.wrapping_add(1)));
    }
    // Viewers get distinct SSRCs; the host's own SSRC is never exposed.
    let host_ssrc = h.clients[host].video.unwrap().1;
    let ssrcs: Vec<u32> = viewers.iter().map(|&v| h.clients[v].video().0).collect();
    assert!(!ssrcs.contains(&host_ssrc));
    assert_ne!(ssrcs[0], ssrcs[1]);
    let stats = h.sfu.stats();
    assert_eq!(stats.datagrams_dropped, 0);
    // Every viewer's media moved to the fast path after its keys reproduced rtc's output,
    // and what the viewers' real rtc stacks decrypted above came (mostly) from it.
    assert_eq!(stats.fast_path_viewers, 3, "{stats:?}");
    assert_eq!(stats.rtc_path_viewers, 0);
}

#[test]
fn keyframe_requests_are_coalesced_and_throttled() {
    let (mut h, host, _viewers) = connected_room(3);
    // Three viewers connected within one interval: their requests coalesce.
    let plis_after_join = h.clients[host].plis;
    assert!(
        plis_after_join >= 1,
        "joining viewers trigger a keyframe request"
    );
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
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: ssrc,
        };
        c.pc.rtp_receiver(receiver)
            .unwrap()
            .write_rtcp(now, vec![Box::new(pli)])
            .unwrap();
        h.run_for(Duration::from_millis(10));
    }
    h.run_for(Duration::from_millis(1000));
    let extra = h.clients[host].plis - before;
    assert!(
        (1..=2).contains(&extra),
        "10 viewer PLIs became {extra} host PLIs"
    );
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
    assert_eq!(
        got, 1,
        "the dropped packet arrived exactly once, by retransmission"
    );
    assert!(h.sfu.stats().nacks_received >= 1);
    assert!(h.sfu.stats().retransmissions >= 1);
}

#[test]
fn host_reconnect_is_seamless_for_viewers() {
    let (mut h, host, viewers) = connected_room(1);
    h.reconnect_host_seamlessly(host, viewers[0], |_| {});
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
    assert!(
        h.sfu.tracks(&room).iter().all(|t| !t.active),
        "orphaned, not yet removed"
    );
    h.run_for(SfuConfig::default().track_grace);
    assert!(h.sfu.tracks(&room).is_empty());
    assert!(
        h.clients[v].offers > offers_before,
        "the viewer renegotiated the tracks away"
    );
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let (mut h, host, viewers) = connected_room(1);
    let viewer_addr = h.clients[viewers[0]].addr;
    let now = h.now;
    let server = h.server;
    for junk in [
        &b""[..],
        &[0x00, 0x01, 0x00],
        &[0x80; 40],
        &[22; 13],
        &[0xff; 1200],
    ] {
        for remote in [viewer_addr, "127.0.0.9:9".parse().unwrap()] {
            h.sfu.handle_datagram(
                now,
                Datagram {
                    local: server,
                    remote,
                    payload: BytesMut::from(junk),
                },
            );
        }
    }
    for seq in 2..=40u16 {
        h.send_frame(host, seq, seq == 2 || seq == 30, FRAME);
    }
    assert!(h.sfu.stats().datagrams_unroutable >= 5);
    assert!(
        h.clients[viewers[0]].video().1.len() >= 10,
        "media still flows"
    );
}

#[test]
fn a_peer_that_goes_silent_is_reported_failed() {
    let (mut h, _host, viewers) = connected_room(2);
    let (gone, stays) = (viewers[0], viewers[1]);
    assert_eq!(
        h.clients[gone].states.last(),
        Some(&sfu::ConnectionState::Connected)
    );
    h.clients[gone].silent = true;
    h.run_for(SfuConfig::default().peer_timeout - Duration::from_secs(2));
    assert_eq!(
        h.clients[gone].states.last(),
        Some(&sfu::ConnectionState::Connected),
        "not before the timeout"
    );
    h.run_for(Duration::from_secs(4));
    assert_eq!(
        h.clients[gone].states.last(),
        Some(&sfu::ConnectionState::Failed)
    );
    // A live viewer keeps its consent checks and RTCP flowing and stays connected.
    assert_eq!(
        h.clients[stays].states.last(),
        Some(&sfu::ConnectionState::Connected)
    );
}

#[test]
fn h264_is_forwarded_from_an_idr_on() {
    let (mut h, host, viewers) = connected_room_with("video/H264", 2);
    for seq in 2..=40u16 {
        h.send_frame(host, seq, seq == 20, FRAME);
    }
    h.run_for(Duration::from_millis(200));
    for &v in &viewers {
        let (_, video) = h.clients[v].video();
        assert_eq!(video.len(), 21, "from the IDR at 20 through 40");
        assert_eq!(
            video[0].2,
            video_payload("video/H264", 20, true),
            "starts at the IDR"
        );
        for (i, (_, _, payload)) in video.iter().enumerate() {
            assert_eq!(payload, &video_payload("video/H264", 20 + i as u16, i == 0));
        }
        assert!(video.windows(2).all(|p| p[1].0 == p[0].0.wrapping_add(1)));
    }
}

/// A WHEP viewer keeps the tracks it is answered with (no server offer can add one), so it
/// is not answered while its host's tracks are still starting: only once all have started.
#[test]
fn offering_viewers_are_answered_once_all_the_hosts_tracks_have_started() {
    let mut h = Harness::new(SfuConfig::default());
    let home = h.sfu.config().shard.index;
    h.offering_viewer_waits_for_all_tracks(home);
}

/// A host section that never starts (a muted camera, a codec it cannot send) holds WHEP
/// viewers back only for a moment; then they get what there is.
#[test]
fn a_host_track_that_never_starts_stops_holding_offering_viewers_back() {
    let mut h = Harness::new(SfuConfig::default());
    let host = h.add_host("room");
    h.run_for(Duration::from_millis(500));
    h.write_audio(host, 1);
    h.run_for(Duration::from_millis(500));
    assert!(matches!(
        h.add_offering_viewer("room"),
        Err(SfuError::NothingToWatch)
    ));
    let mut seq = 2u16;
    let mut answered = None;
    for _ in 0..100 {
        h.write_audio(host, seq);
        seq += 1;
        h.run_for(FRAME);
        if let Ok(v) = h.add_offering_viewer("room") {
            answered = Some(v);
            break;
        }
    }
    let v = answered.expect("answered with the audio after the settle time");
    for _ in 0..30 {
        h.write_audio(host, seq);
        seq += 1;
        h.run_for(FRAME);
    }
    assert!(h.clients[v].audio().1.len() > 10);
}

/// Forwarded media bypasses `rtc`, so the SFU writes each viewer's sender reports itself:
/// every viewer SSRC gets them about once a second, counting what that viewer was sent, and
/// each carries the host's NTP ↔ RTP correspondence for that track (one of the host's own
/// reports, advanced by the time since it arrived), which is what keeps lip sync.
#[test]
fn every_viewer_ssrc_receives_sender_reports_on_the_hosts_clock() {
    let (mut h, host, viewers) = connected_room(2);
    for seq in 2..=120u16 {
        h.send_frame(host, seq, seq % 30 == 0, FRAME);
    }
    let host_reports = h.clients[host].sent_reports.lock().unwrap().clone();
    let (_, host_video) = h.clients[host].video.unwrap();
    let (_, host_audio) = h.clients[host].audio.unwrap();
    for &v in &viewers {
        let c = &h.clients[v];
        for ((ssrc, received), host_ssrc, rate) in [
            (c.video(), host_video, 90_000u128),
            (c.audio(), host_audio, 48_000),
        ] {
            let reports: Vec<&SenderReport> =
                c.sender_reports.iter().filter(|r| r.ssrc == ssrc).collect();
            assert!(
                reports.len() >= 2,
                "viewer {v} ssrc {ssrc}: {} reports",
                reports.len()
            );
            let last = reports.last().unwrap();
            assert!(last.packet_count > 0 && last.packet_count as usize <= received.len());
            assert!(last.octet_count >= last.packet_count);
            for report in reports {
                let on_host_clock = host_reports
                    .iter()
                    .filter(|r| r.ssrc == host_ssrc)
                    .any(|r| {
                        let ntp = report.ntp_time.wrapping_sub(r.ntp_time);
                        let ticks = ((u128::from(ntp) * rate) >> 32) as i64;
                        let advanced = i64::from(report.rtp_time.wrapping_sub(r.rtp_time));
                        ntp < 10 << 32 && (advanced - ticks).abs() <= 2
                    });
                assert!(on_host_clock, "{report:?} follows none of {host_reports:?}");
            }
        }
    }
}

/// Every peer presents the one DTLS certificate generated at start (no key generation and
/// signing per join), so every answer carries the same fingerprint.
#[test]
fn every_peer_presents_the_shared_certificate() {
    let mut h = Harness::new(SfuConfig::default());
    let fingerprint = |h: &mut Harness, room: &str, port: u16| {
        let mut pc = h.client_pc(format!("127.0.0.2:{port}").parse().unwrap());
        pc.add_track(track(RtpCodecKind::Audio, "audio/opus", 48000, 2, 1234))
            .unwrap();
        let offer = pc.create_offer(None).unwrap();
        pc.set_local_description(h.now, offer).unwrap();
        let sdp = pc.local_description().unwrap().sdp;
        let (_, answer) = h
            .sfu
            .add_peer_with_offer(h.now, &RoomId::new(room), sfu::Role::Publisher, &sdp)
            .unwrap();
        answer
            .lines()
            .find(|l| l.starts_with("a=fingerprint:"))
            .map(str::to_owned)
            .unwrap()
    };
    let a = fingerprint(&mut h, "one", 6000);
    let b = fingerprint(&mut h, "two", 6001);
    assert_eq!(a, b);
    // Each Sfu has its own.
    let mut other = Harness::new(SfuConfig::default());
    assert_ne!(a, fingerprint(&mut other, "one", 6000));
}

/// Viewers are offered AES-128-GCM only by default: `rtc`'s DTLS server takes the client's
/// first common profile, and Chrome lists AES-CM first. A client that lists AES-CM first
/// and GCM second (Chrome's order) therefore watches on GCM; one without GCM cannot
/// connect unless the operator adds AES-CM. Hosts are offered every profile.
#[test]
fn viewers_get_aes_gcm_unless_aes_cm_is_configured() {
    use SrtpProtectionProfile::{Srtp_Aead_Aes_128_Gcm as Gcm, Srtp_Aes128_Cm_Hmac_Sha1_80 as Cm};
    let cases = [
        (vec![Cm, Gcm], SfuConfig::default(), true),
        (vec![Cm], SfuConfig::default(), false),
        (
            vec![Cm],
            SfuConfig {
                viewer_srtp_profiles: vec![
                    SrtpProfile::AeadAes128Gcm,
                    SrtpProfile::Aes128CmHmacSha1_80,
                ],
                ..SfuConfig::default()
            },
            true,
        ),
    ];
    for (client_profiles, config, watches) in cases {
        let label = format!(
            "client {client_profiles:?}, viewers offered {:?}",
            config.viewer_srtp_profiles
        );
        let mut h = Harness::new(config);
        h.client_srtp_profiles = Some(client_profiles);
        let host = h.add_host("room");
        h.run_for(Duration::from_millis(500));
        h.send_frame(host, 1, true, Duration::from_millis(100));
        let viewer = h.add_viewer("room");
        h.run_for(Duration::from_millis(1000));
        for seq in 2..=40u16 {
            h.send_frame(host, seq, seq % 10 == 0, FRAME);
        }
        h.run_for(Duration::from_millis(200));
        let stats = h.sfu.stats();
        assert_eq!(
            stats.tracks, 2,
            "{label}: the host's media arrived: {stats:?}"
        );
        let (_, video) = h.clients[viewer].video();
        assert_eq!(
            !video.is_empty(),
            watches,
            "{label}: {} video packets",
            video.len()
        );
        assert_eq!(
            stats.fast_path_viewers,
            u64::from(watches),
            "{label}: {stats:?}"
        );
    }
}
