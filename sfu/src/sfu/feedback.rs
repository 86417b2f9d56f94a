//! Viewer feedback (NACK → retransmission from the ring, PLI/FIR → a coalesced keyframe
//! request to the host) and sender reports: the host's, kept as the track's clock, and the
//! viewers', written by the SFU because forwarded media bypasses `rtc`.

use super::*;

impl Sfu {
    pub(super) fn on_viewer_rtcp(&mut self, now: Instant, peer: PeerId, packet: &dyn rtcp::Packet) {
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

    pub(super) fn track_of_viewer_ssrc(&self, peer: PeerId, ssrc: u32) -> Option<TrackId> {
        self.peers
            .get(&peer)?
            .subscriptions
            .iter()
            .find(|s| s.ssrc == ssrc)
            .map(|s| s.track)
    }

    /// Asks the track's host for a keyframe, at most once per `keyframe_request_interval`;
    /// requests in between are coalesced into one at the end of the interval.
    pub(super) fn request_keyframe(&mut self, now: Instant, track_id: TrackId) {
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
        let (host, receiver, ssrc) = match *source {
            Source::Host {
                peer,
                receiver,
                ssrc,
            } => (peer, receiver, ssrc),
            Source::Home => {
                // A mirror: the home shard asks the host (and coalesces all shards' asks).
                let home = self.home_of(track_id);
                self.relay(home, RelayBody::KeyframeRequest { track: track_id });
                return;
            }
        };
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

    /// Keeps the host's NTP ↔ RTP correspondence of a track, in the track's timestamp
    /// space, for the viewers' sender reports.
    pub(super) fn on_host_sender_report(&mut self, now: Instant, peer: PeerId, sr: &SenderReport) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let mut relays = Vec::new();
        for id in p.sources.values() {
            let Some(track) = self.tracks.get_mut(id) else {
                continue;
            };
            if track
                .source
                .as_ref()
                .is_some_and(|s| s.is_host_stream(peer, sr.ssrc))
                && let Some(rtp) = track.rewriter.to_track_timestamp(sr.rtp_time)
            {
                let clock = HostClock {
                    ntp: sr.ntp_time,
                    rtp,
                    at: now,
                };
                track.clock = Some(clock);
                relays.extend(track.mirrors.iter().map(|&to| (to, *id, clock)));
            }
        }
        for (to, track, clock) in relays {
            self.relay(to, RelayBody::Clock { track, clock });
        }
    }

    /// Sends every connected viewer a sender report per track it has been sent media of
    /// (RFC 3550 §6.4.1). Forwarded media bypasses `rtc`, so its report interceptor would
    /// know neither the counts nor the timing; these reports carry the host's clock mapped
    /// into each track's space, which is what keeps audio and video in lip sync.
    pub(super) fn send_sender_reports(&mut self, now: Instant) {
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
}

/// An NTP ↔ RTP correspondence from a host's sender report (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy)]
pub(super) struct HostClock {
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
