//! Peers and their sessions: creating peer connections (ICE-lite credentials, the shared
//! certificate, the key tap), offers and answers in both directions, trickled candidates,
//! ICE restarts, and the senders that subscribe a viewer to a track.

use super::*;

impl Sfu {
    /// Whether a client-offering (WHEP) viewer can be answered now: the room has tracks and
    /// its host is not still starting them. Such a viewer keeps the tracks it was answered
    /// with, so one answered between a host's first and last track (a few milliseconds, but
    /// a crowd of players retrying while the host goes live hits it) would never get the
    /// rest; it is told "not live yet" and retries. The host's expected tracks are the
    /// sections its offer sends on; one that never starts (an unsupported codec, a muted
    /// camera) stops counting after [`HOST_TRACKS_SETTLE`]. Tracks left by a host that has
    /// gone, or that is reconnecting, are watchable as they are: its new tracks rebind them.
    pub(super) fn watchable(&self, now: Instant, room: &RoomId) -> bool {
        self.rooms.get(room).is_some_and(|r| !r.tracks.is_empty())
            && self
                .host_starting_since(room)
                .is_none_or(|first| now.saturating_duration_since(first) >= HOST_TRACKS_SETTLE)
    }

    /// When the room's host started its first track, while it has not started all of them
    /// (see [`Sfu::watchable`]). A mirrored room has it from its home shard's catalog.
    pub(super) fn host_starting_since(&self, room: &RoomId) -> Option<Instant> {
        let r = self.rooms.get(room)?;
        if !self.is_home(room) {
            return r.starting_since;
        }
        let host = r.publisher.and_then(|id| self.peers.get(&id))?;
        let first = host.first_source_at?;
        (host.sources.len() < host.pc.get_receivers().count()).then_some(first)
    }

    pub(super) fn answer_viewer_offer(
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
    pub(super) fn create_peer(
        &mut self,
        now: Instant,
        room: &RoomId,
        role: Role,
        client_offers: bool,
    ) -> Result<PeerId, SfuError> {
        let id = PeerId(self.config.shard.id(self.next_id));
        self.next_id += 1;
        // The first letter names the shard, so the socket reader routes ICE checks to it.
        let ufrag = format!("{}{}", self.config.shard.ufrag_letter(), random_token(15));
        let keys = KeyTap::new().map_err(SfuError::internal)?;
        let setting_engine = SettingEngineBuilder::new()
            // Learns the SRTP master keys for the forwarding fast path (see `FastPath`).
            .with_crypto_provider(keys.clone())
            // Which profiles each role is offered, and why, is `SfuConfig`'s to say. AES-256
            // is never offered: the fast path does not implement it, and it buys nothing
            // for a live stream.
            .with_srtp_protection_profiles(
                match role {
                    Role::Publisher => &self.config.host_srtp_profiles,
                    Role::Subscriber => &self.config.viewer_srtp_profiles,
                }
                .iter()
                .map(|p| p.dtls())
                .collect(),
            )
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
            Some(Certificate(certificate)) => {
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
            Box::new(Peer {
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
            }),
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

    /// Adds a sender for `track` to a viewer's peer connection (negotiation comes after).
    pub(super) fn subscribe(&mut self, viewer: PeerId, track_id: TrackId) -> Result<(), SfuError> {
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
        if track.subscribers.len() == 1 {
            self.watch(track_id, true);
        }
        Ok(())
    }

    /// Sends a viewer a fresh offer, or remembers to once its outstanding offer is answered.
    pub(super) fn renegotiate(&mut self, now: Instant, viewer: PeerId) -> Result<(), SfuError> {
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
}

/// The DTLS certificate all peers share (ECDSA P-256, as `rtc` makes per peer by default; its
/// validity runs to rcgen's default far-future date, so it never expires under a running
/// server).
/// The DTLS certificate every peer of a node presents (ECDSA P-256, as `rtc` makes per peer
/// by default; its validity runs to rcgen's default far-future date, so it never expires
/// under a running server). Generated once at start and shared by every shard: one key
/// generation and self-signing per process instead of per join (a join spike's cost).
#[derive(Clone)]
pub struct Certificate(pub(super) RTCCertificate);

impl Certificate {
    /// A new key pair and self-signed certificate; `None` (logged) if that failed, and then
    /// `rtc` makes one per peer.
    pub fn generate() -> Option<Self> {
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
            .map(Self)
    }
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
pub(super) fn replace_ice_credentials(sdp: &str, ufrag: &str, pwd: &str) -> String {
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

pub(super) fn apply_local_description(
    now: Instant,
    pc: &mut RTCPeerConnection,
    description: RTCSessionDescription,
) -> rtc::shared::error::Result<String> {
    let fallback = description.sdp.clone();
    pc.set_local_description(now, description)?;
    Ok(pc.local_description().map_or(fallback, |d| d.sdp))
}

/// ICE credentials: RFC 8445 §5.3 wants at least 24 bits of randomness in the ufrag and 128 in
/// the password; alphanumerics keep them SDP-safe.
pub(super) fn random_token(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
