//! [`Subscriber`]: a WebRTC peer with no signaling attached that records every RTP packet it
//! receives (and NACKs lost video, as a browser would).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::runtime::Runtime;

use marquee_protocol::wire::MediaKind;

use crate::media::{PayloadTag, is_vp8_keyframe_start};
use crate::peer::{Peer, TrackHandler};
use crate::util::{lock, now, wait_until};

// ── Subscriber ───────────────────────────────────────────────────────────────────────────────

/// One RTP packet a subscriber received (after SRTP and the interceptors, so a NACK-recovered
/// packet appears when its retransmission arrives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub kind: MediaKind,
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Bytes,
    pub at: Instant,
}

impl Received {
    /// Whether this packet starts a VP8 keyframe (descriptor S=1, PID=0, frame tag P=0).
    pub fn is_keyframe_start(&self) -> bool {
        self.kind == MediaKind::Video && is_vp8_keyframe_start(&self.payload)
    }

    /// The synthetic trailer naming the host's frame and packet, if the payload has one.
    pub fn tag(&self) -> Option<PayloadTag> {
        PayloadTag::parse(&self.payload)
    }
}

/// A WebRTC peer that answers offers (receive-only) and records every RTP packet it receives,
/// per media kind. Handles any number of re-offers; tracks added by a renegotiation are
/// recorded too.
pub struct Subscriber {
    pub(crate) peer: Peer,
    recorder: Arc<Recorder>,
}

struct Recorder {
    video: Mutex<Vec<Received>>,
    audio: Mutex<Vec<Received>>,
    tracks: Mutex<Vec<(MediaKind, Arc<dyn TrackRemote>)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    offers_answered: AtomicU64,
    changes: watch::Sender<u64>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            video: Mutex::default(),
            audio: Mutex::default(),
            tracks: Mutex::default(),
            tasks: Mutex::default(),
            offers_answered: AtomicU64::new(0),
            changes: watch::channel(0).0,
        }
    }

    fn spawn_recording(self: &Arc<Self>, track: Arc<dyn TrackRemote>) {
        let recorder = Arc::clone(self);
        let task = tokio::spawn(async move {
            let kind = match track.kind().await {
                RtpCodecKind::Audio => MediaKind::Audio,
                RtpCodecKind::Video => MediaKind::Video,
                _ => return,
            };
            lock(&recorder.tracks).push((kind, Arc::clone(&track)));
            recorder.changes.send_modify(|v| *v += 1);
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        let received = Received {
                            kind,
                            ssrc: packet.header.ssrc,
                            seq: packet.header.sequence_number,
                            timestamp: packet.header.timestamp,
                            marker: packet.header.marker,
                            payload_type: packet.header.payload_type,
                            payload: packet.payload,
                            at: now(),
                        };
                        lock(recorder.packets(kind)).push(received);
                        recorder.changes.send_modify(|v| *v += 1);
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
        lock(&self.tasks).push(task);
    }

    fn packets(&self, kind: MediaKind) -> &Mutex<Vec<Received>> {
        match kind {
            MediaKind::Video => &self.video,
            MediaKind::Audio => &self.audio,
        }
    }
}

/// How a [`Subscriber`] is built; the default is a browser-like receiver that records every
/// packet.
#[derive(Clone)]
pub struct SubscriberOptions {
    /// The `webrtc` runtime for the connection (tokio's by default). A load-test viewer passes
    /// one whose sockets inspect packets before the stack sees them.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// webrtc's default interceptors (NACK generator, RTCP reports, TWCC). Without them the
    /// owner sends its own feedback with `TrackRemote::write_rtcp`.
    pub default_interceptors: bool,
    /// Receives each remote track instead of the built-in recorder (whose `packets` then stay
    /// empty).
    pub on_track: Option<TrackHandler>,
}

impl Default for SubscriberOptions {
    fn default() -> Self {
        Self {
            runtime: None,
            default_interceptors: true,
            on_track: None,
        }
    }
}

impl Subscriber {
    /// Builds a receive-only peer with webrtc's default codecs and interceptors.
    pub async fn new() -> Result<Self> {
        Self::with_options(SubscriberOptions::default()).await
    }

    pub async fn with_options(options: SubscriberOptions) -> Result<Self> {
        let mut media_engine = MediaEngine::default();
        media_engine.register_default_codecs()?;
        let registry = if options.default_interceptors {
            register_default_interceptors(Registry::new(), &mut media_engine)?
        } else {
            Registry::new()
        };
        let recorder = Arc::new(Recorder::new());
        let on_track = options.on_track.unwrap_or_else(|| {
            let recorder = Arc::clone(&recorder);
            Arc::new(move |track| recorder.spawn_recording(track))
        });
        // webrtc's default answer is `a=setup:passive`. Answering `active` (as browsers do) is
        // faster, but this stack installs its SRTP keys a step after its DTLS Finished and
        // drops the SFU's first packets (the keyframe). As DTLS server it finishes first.
        let settings = SettingEngineBuilder::new();
        let peer = Peer::build(
            media_engine,
            registry,
            settings,
            Some(on_track),
            options.runtime,
        )
        .await?;
        Ok(Self { peer, recorder })
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Applies a remote offer (first or renegotiation) and returns the local answer's SDP.
    pub async fn answer(&self, offer_sdp: &str) -> Result<String> {
        let pc = &self.peer.pc;
        pc.set_remote_description(RTCSessionDescription::offer(offer_sdp.to_owned())?)
            .await
            .context("applying remote offer")?;
        let answer = pc.create_answer(None).await.context("creating answer")?;
        pc.set_local_description(answer)
            .await
            .context("setting local answer")?;
        self.recorder
            .offers_answered
            .fetch_add(1, Ordering::Relaxed);
        self.recorder.changes.send_modify(|v| *v += 1);
        self.peer.local_description().await
    }

    /// Offers answered so far (1 after the initial negotiation).
    pub fn offers_answered(&self) -> u64 {
        self.recorder.offers_answered.load(Ordering::Relaxed)
    }

    /// Every packet received so far of `kind`, in arrival order.
    pub fn packets(&self, kind: MediaKind) -> Vec<Received> {
        lock(self.recorder.packets(kind)).clone()
    }

    pub fn packet_count(&self, kind: MediaKind) -> usize {
        lock(self.recorder.packets(kind)).len()
    }

    pub fn first_packet_at(&self, kind: MediaKind) -> Option<Instant> {
        lock(self.recorder.packets(kind)).first().map(|p| p.at)
    }

    /// When the first packet starting a VP8 keyframe arrived.
    pub fn first_keyframe_at(&self) -> Option<Instant> {
        lock(&self.recorder.video)
            .iter()
            .find(|p| p.is_keyframe_start())
            .map(|p| p.at)
    }

    /// Packets received that start a VP8 keyframe (a retransmitted start counts again).
    pub fn keyframe_starts(&self) -> usize {
        lock(&self.recorder.video)
            .iter()
            .filter(|p| p.is_keyframe_start())
            .count()
    }

    /// Whether a packet with this SSRC and sequence number arrived (of either kind).
    pub fn has_packet(&self, ssrc: u32, seq: u16) -> bool {
        let has = |packets: &Mutex<Vec<Received>>| {
            lock(packets).iter().any(|p| p.ssrc == ssrc && p.seq == seq)
        };
        has(&self.recorder.video) || has(&self.recorder.audio)
    }

    /// Remote tracks announced so far, by kind.
    pub fn track_count(&self, kind: MediaKind) -> usize {
        lock(&self.recorder.tracks)
            .iter()
            .filter(|(k, _)| *k == kind)
            .count()
    }

    /// Sends a PLI for every video track received, as a decoder that lost its reference would.
    pub async fn request_keyframe(&self) -> Result<()> {
        let tracks: Vec<_> = lock(&self.recorder.tracks)
            .iter()
            .filter(|(kind, _)| *kind == MediaKind::Video)
            .map(|(_, track)| Arc::clone(track))
            .collect();
        if tracks.is_empty() {
            bail!("no video track to request a keyframe on");
        }
        let last_ssrc = lock(&self.recorder.video).last().map(|p| p.ssrc);
        for track in tracks {
            let Some(media_ssrc) = track.ssrcs().await.first().copied().or(last_ssrc) else {
                continue;
            };
            track
                .write_rtcp(vec![Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                })])
                .await
                .context("sending PLI")?;
        }
        Ok(())
    }

    /// Waits until `pred` holds, re-checking on every received packet, track and answer.
    pub async fn wait_for(&self, timeout: Duration, pred: impl FnMut(&Self) -> bool) -> Result<()> {
        wait_until(&self.recorder.changes, timeout, self, pred).await
    }

    pub async fn close(&self) -> Result<()> {
        self.peer.close().await
    }
}

/// Reaches the peer's own methods (`wait_connected`, `connection_state`, ...), as [`Host`] and
/// [`Viewer`] reach the subscriber's.
///
/// [`Host`]: crate::live::Host
/// [`Viewer`]: crate::live::Viewer
impl std::ops::Deref for Subscriber {
    type Target = Peer;

    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        for task in lock(&self.recorder.tasks).drain(..) {
            task.abort();
        }
    }
}
