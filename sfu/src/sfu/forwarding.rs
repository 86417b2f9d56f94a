//! The hot path. One inbound packet is rewritten into its track's space and stored once;
//! every viewer gets a queue entry (a refcount, no copy), which `poll_transmit` writes and
//! seals in place once the viewer's fast path is verified. Until then, and for viewers whose
//! keys do not verify, packets go through `rtc`'s sender, whose output checks the keys.

use super::*;

impl Sfu {
    /// The hot path: one inbound packet, rewritten and stored once, sent to every viewer.
    pub(super) fn forward(
        &mut self,
        now: Instant,
        from: PeerId,
        track_id: TrackId,
        packet: rtp::Packet,
    ) {
        if self.fan_out(now, from, track_id, packet) {
            // Someone is still waiting for a keyframe (joined, or the one it was sent was
            // lost): keep asking, throttled by `request_keyframe`.
            self.request_keyframe(now, track_id);
        }
    }

    /// Rewrites, stores and sends one host packet (to this shard's viewers, and as the same
    /// payload to every shard with viewers of the track); true if a connected viewer here
    /// awaits a keyframe.
    pub(super) fn fan_out(
        &mut self,
        now: Instant,
        from: PeerId,
        track_id: TrackId,
        packet: rtp::Packet,
    ) -> bool {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return false;
        };
        if !track
            .source
            .as_ref()
            .is_some_and(|s| s.is_host_stream(from, packet.header.ssrc))
        {
            return false; // a replaced source's stragglers after a switch
        }
        self.stats.packets_in += 1;
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
        let from = self.config.shard.index;
        for &to in &track.mirrors {
            self.relays.push_back(Relay {
                to,
                from,
                body: RelayBody::Media {
                    track: track_id,
                    packet: stored.clone(),
                    keyframe,
                },
            });
        }
        self.deliver_packet(now, track_id, stored, keyframe)
    }

    /// Sends one stored packet to this shard's viewers of the track and keeps it in the
    /// track's ring; true if a connected viewer awaits a keyframe.
    pub(super) fn deliver_packet(
        &mut self,
        now: Instant,
        track_id: TrackId,
        stored: StoredPacket,
        keyframe: bool,
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

    /// Answers a viewer's NACK from the track's ring (RFC 4585 §6.2.1).
    pub(super) fn retransmit(&mut self, now: Instant, peer: PeerId, nack: &TransportLayerNack) {
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
}

/// Forwarded packets a viewer is sent through `rtc` while the fast path checks its keys; if
/// none of them matched, the viewer stays on `rtc`'s path (see [`FastPath`]).
pub(super) const VERIFY_ATTEMPTS: u8 = 3;

/// How forwarded media is protected for one viewer.
///
/// `rtc` has no public accessor for SRTP keys. The fast path learns candidates through the
/// peer's crypto provider ([`KeyTap`]) and takes over only once its output for a real packet
/// was byte-identical to what `rtc` produced for the same packet; until then, and for good
/// if no candidate matches, packets take `rtc`'s own path (`RTCRtpSender::write_rtp`).
pub(super) enum FastPath {
    /// Packets go through `rtc`; each is also protected with every candidate key and compared.
    Verifying { attempts: u8 },
    /// Packets are written and sealed in place at send time, with no `rtc` involvement.
    /// Boxed: the expanded keys are most of a kilobyte, the other states a byte.
    Active(Box<SrtpSender>),
    /// No candidate matched `rtc`'s output: `rtc`'s path for the peer's lifetime.
    Unavailable,
}

/// One datagram in a peer's queue.
pub(super) enum Outgoing {
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
pub(super) struct MediaOut {
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
    /// Writes the packet into `buf`, protects it there with the peer's fast-path keys, and
    /// says where it goes. `None` without a verified fast path or a nominated pair (a packet
    /// is queued as `Media` only with both).
    pub(super) fn seal(&self, p: &Peer, buf: &mut Vec<u8>) -> Option<Transmit> {
        let (FastPath::Active(srtp), Some(local), Some(remote)) = (&p.fast, p.local, p.nominated)
        else {
            return None;
        };
        self.write(buf);
        srtp.protect_rtp(buf, 12, self.roc);
        Some(Transmit { local, remote })
    }

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

/// The viewer's payload type for the track's codec, learned once per negotiation.
pub(super) fn viewer_payload_type(
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
pub(super) fn deliver(
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
pub(super) fn send_through_rtc(
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
pub(super) fn is_rtp_of(datagram: &[u8], out: &MediaOut) -> bool {
    datagram.len() >= 12
        && datagram[0] >> 6 == 2
        && datagram[1] & 0x7f == out.payload_type
        && datagram[2..4] == out.seq.to_be_bytes()
        && datagram[8..12] == out.ssrc.to_be_bytes()
}

/// Tries every candidate master key under every profile on `out`; the one that reproduces
/// `rtc`'s bytes exactly becomes the peer's fast path.
pub(super) fn verify_fast_path(
    id: PeerId,
    keys: &KeyTap,
    fast: &mut FastPath,
    made: &[u8],
    out: &MediaOut,
) {
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
                *fast = FastPath::Active(Box::new(sender));
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
pub(super) fn push_made(
    p: &mut Peer,
    made: TaggedBytesMut,
    max_queued: usize,
    stats: &mut SfuStats,
) {
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
pub(super) fn mark_ready(id: PeerId, p: &mut Peer, ready: &mut VecDeque<PeerId>) {
    if !p.queue.is_empty() && !p.in_ready {
        p.in_ready = true;
        ready.push_back(id);
    }
}

/// Moves a peer connection's pending writes into the peer's bounded queue.
pub(super) fn enqueue_writes(
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
