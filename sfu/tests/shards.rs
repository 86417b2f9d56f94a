//! One room over several shards, on virtual time: the room's home shard decrypts and stores
//! each host packet once and relays it to the shards with viewers of the room, which keep
//! mirror tracks (see `sfu/src/sfu/mirror.rs`). The harness runs the cores side by side and
//! routes their relays in memory, as the driver does over channels.

mod harness;

use std::time::Duration;

use harness::*;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use sfu::{RoomId, SfuConfig, SfuStats};

const FRAME: Duration = Duration::from_millis(33);

/// Two shards; the host and `home` viewers on the room's home shard, `mirrored` viewers on
/// the other one. Returns the harness, the host, the home viewers, the mirrored viewers and
/// the other shard's index.
fn split_room(home: usize, mirrored: usize) -> (Harness, usize, Vec<usize>, Vec<usize>, usize) {
    let mut h = Harness::sharded(SfuConfig::default(), 2);
    let other = h.others[0].config().shard.index;
    let host = h.add_host("room");
    h.run_for(Duration::from_millis(500));
    h.send_frame(host, 1, true, Duration::from_millis(100));
    let at_home = (0..home).map(|_| h.add_viewer("room")).collect();
    let away = (0..mirrored)
        .map(|_| h.add_viewer_on("room", other))
        .collect();
    h.run_for(Duration::from_millis(1000));
    (h, host, at_home, away, other)
}

fn merged(h: &Harness) -> SfuStats {
    let mut total = h.sfu.stats();
    for core in &h.others {
        total.merge(&core.stats());
    }
    total
}

#[test]
fn a_room_spans_shards_and_each_host_packet_is_decrypted_once() {
    let (mut h, host, at_home, away, other) = split_room(2, 2);
    for seq in 2..=60u16 {
        h.send_frame(host, seq, seq % 30 == 0, FRAME);
    }
    h.run_for(Duration::from_millis(200));
    for &v in at_home.iter().chain(&away) {
        let c = &h.clients[v];
        let (_, video) = c.video();
        assert!(
            video.len() >= 30,
            "viewer {v}: {} video packets",
            video.len()
        );
        assert!(video.windows(2).all(|p| p[1].0 == p[0].0.wrapping_add(1)));
        let first = u16::from_be_bytes([video[0].2[2], video[0].2[3]]);
        for (i, (_, _, payload)) in video.iter().enumerate() {
            assert_eq!(payload, &vp8_payload(first + i as u16, payload[1] == 0));
        }
        let (_, audio) = c.audio();
        assert!(
            audio.len() >= 55,
            "viewer {v}: {} audio packets",
            audio.len()
        );
    }
    let home = h.sfu.stats();
    let mirror = h.core(other).stats();
    // Every host packet entered (and was decrypted) on the home shard only; the mirror
    // forwarded its viewers' copies of the relayed packets.
    assert_eq!(mirror.packets_in, 0, "{mirror:?}");
    assert!(home.packets_in >= 118, "{home:?}");
    assert!(h.media_relayed as u64 >= home.packets_in - 4);
    assert!(mirror.packets_forwarded >= 2 * 85, "{mirror:?}");
    // The room and its tracks are counted once; the peers where they are.
    let total = merged(&h);
    assert_eq!((total.rooms, total.tracks, total.peers), (1, 2, 5));
    assert_eq!((mirror.peers, mirror.fast_path_viewers), (2, 2));
    assert_eq!(total.datagrams_dropped, 0);
    // Whichever shard a viewer lands on, it sees the node's one certificate.
    let fingerprints: std::collections::HashSet<String> = at_home
        .iter()
        .chain(&away)
        .map(|&v| {
            let sdp = h.clients[v].pc.remote_description().unwrap().sdp.clone();
            sdp.lines()
                .find(|l| l.starts_with("a=fingerprint:"))
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(fingerprints.len(), 1, "{fingerprints:?}");
}

#[test]
fn mirrored_viewers_get_retransmissions_keyframes_and_sender_reports() {
    let (mut h, host, _, away, other) = split_room(1, 2);
    let v = away[0];
    for seq in 2..=10u16 {
        h.send_frame(host, seq, seq == 2, FRAME);
    }
    // A NACK from a mirrored viewer is answered from the mirror's own ring.
    let next_out = h.clients[v].video().1.last().unwrap().0.wrapping_add(1);
    h.clients[v].drop_seq = Some(next_out);
    for seq in 11..=120u16 {
        h.send_frame(host, seq, seq % 60 == 0, FRAME);
    }
    h.run_for(Duration::from_millis(500));
    let c = &h.clients[v];
    assert_eq!(c.dropped, vec![next_out]);
    let got = c
        .video()
        .1
        .iter()
        .filter(|(s, _, _)| *s == next_out)
        .count();
    assert_eq!(got, 1, "the dropped packet came back once");
    let mirror = h.core(other).stats();
    assert!(mirror.retransmissions >= 1, "{mirror:?}");
    assert_eq!(h.sfu.stats().retransmissions, 0);

    // Sender reports on the host's clock reach the mirrored viewers' SSRCs.
    let host_reports = h.clients[host].sent_reports.lock().unwrap().clone();
    let (_, host_video) = h.clients[host].video.unwrap();
    for &v in &away {
        let (ssrc, _) = h.clients[v].video();
        let reports: Vec<&SenderReport> = (h.clients[v].sender_reports.iter())
            .filter(|r| r.ssrc == ssrc)
            .collect();
        assert!(reports.len() >= 2, "viewer {v}: {} reports", reports.len());
        let on_host_clock = |report: &SenderReport| {
            host_reports
                .iter()
                .filter(|r| r.ssrc == host_video)
                .any(|r| {
                    let ntp = report.ntp_time.wrapping_sub(r.ntp_time);
                    let ticks = ((u128::from(ntp) * 90_000) >> 32) as i64;
                    let advanced = i64::from(report.rtp_time.wrapping_sub(r.rtp_time));
                    ntp < 10 << 32 && (advanced - ticks).abs() <= 2
                })
        };
        assert!(reports.iter().all(|r| on_host_clock(r)), "{reports:?}");
    }

    // Picture loss reported by mirrored viewers reaches the host, coalesced.
    let before = h.clients[host].plis;
    for &v in away.iter().cycle().take(6) {
        send_pli(&mut h, v);
        h.run_for(Duration::from_millis(10));
    }
    h.run_for(Duration::from_millis(1000));
    let extra = h.clients[host].plis - before;
    assert!((1..=2).contains(&extra), "6 viewer PLIs became {extra}");
    // Counted once, where the viewers sent them (the merged stats must not count a relayed
    // request again at home).
    assert!(h.core(other).stats().keyframe_requests_received >= 6);
    assert_eq!(h.sfu.stats().keyframe_requests_received, 0);
}

#[test]
fn a_host_reconnect_and_the_tracks_end_reach_mirrored_viewers() {
    let (mut h, host, _, away, other) = split_room(0, 1);
    let v = away[0];
    let offers_before = h.clients[v].offers;
    let room = RoomId::new("room");
    // Back with new SSRCs and numbering: the mirrored viewer sees one continuous stream.
    let host2 = h.reconnect_host_seamlessly(host, v, |h| {
        assert!(h.core(other).tracks(&room).iter().all(|t| !t.active));
    });

    // The host leaves for good: after the grace the mirror drops the tracks too, and the
    // viewer is renegotiated (no track left to watch).
    let host2_peer = h.clients[host2].sfu_peer;
    h.sfu.remove_peer(h.now, host2_peer);
    h.run_for(SfuConfig::default().track_grace + Duration::from_secs(1));
    assert!(h.sfu.tracks(&room).is_empty());
    assert!(h.core(other).tracks(&room).is_empty());
    assert!(h.clients[v].offers > offers_before);
}

/// The mirror answers from the home shard's catalog, which says whether the host is still
/// starting its tracks.
#[test]
fn an_offering_viewer_on_another_shard_is_answered_from_the_catalog() {
    let mut h = Harness::sharded(SfuConfig::default(), 2);
    let other = h.others[0].config().shard.index;
    h.offering_viewer_waits_for_all_tracks(other);
}

#[test]
fn a_shard_without_viewers_of_the_room_is_sent_nothing() {
    let (mut h, host, _, away, other) = split_room(1, 1);
    h.send_frame(host, 2, true, FRAME);
    let relayed = h.media_relayed;
    h.send_frame(host, 3, false, FRAME);
    assert_eq!(
        h.media_relayed - relayed,
        2,
        "one video and one audio packet"
    );
    let peer = h.clients[away[0]].sfu_peer;
    let now = h.now;
    h.core(other).remove_peer(now, peer);
    h.run_for(FRAME);
    let relayed = h.media_relayed;
    for seq in 4..=10u16 {
        h.send_frame(host, seq, false, FRAME);
    }
    assert_eq!(h.media_relayed, relayed, "unwatched: nothing relayed");
    // The mirror keeps the room's catalog (a later viewer is offered the tracks at once),
    // but no viewers.
    assert_eq!(h.core(other).stats().peers, 0);
    assert_eq!(h.core(other).tracks(&RoomId::new("room")).len(), 2);
    let late = h.add_viewer_on("room", other);
    h.run_for(Duration::from_millis(1000));
    for seq in 11..=40u16 {
        h.send_frame(host, seq, seq == 11, FRAME);
    }
    assert!(h.clients[late].video().1.len() > 10);
}

/// A viewer's picture-loss report for its video SSRC.
fn send_pli(h: &mut Harness, v: usize) {
    let now = h.now;
    let c = &mut h.clients[v];
    let (receiver, ssrc) =
        c.pc.get_receivers()
            .collect::<Vec<_>>()
            .into_iter()
            .find_map(|id| {
                let r = c.pc.rtp_receiver(id)?;
                let track = r.track();
                (track.kind() == RtpCodecKind::Video).then(|| (id, track.ssrcs().next()))
            })
            .unwrap();
    let pli = PictureLossIndication {
        sender_ssrc: 1,
        media_ssrc: ssrc.unwrap(),
    };
    c.pc.rtp_receiver(receiver)
        .unwrap()
        .write_rtcp(now, vec![Box::new(pli)])
        .unwrap();
}
