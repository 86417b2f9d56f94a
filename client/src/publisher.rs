//! [`Publisher`]: a WebRTC peer with no signaling attached that sends synthetic VP8 and Opus
//! (see [`crate::media`]) through static RTP tracks and answers keyframe requests and NACKs
//! like an encoder.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

use marquee_protocol::wire::MediaKind;

use crate::media::{
    OPUS_TICKS_PER_PACKET, PayloadTag, VP8_CLOCK_RATE, opus_payload, vp8_frame_payloads,
};
use crate::peer::Peer;
use crate::util::{TaskGuard, lock, now, random_u32, wait_until};

/// Payload type the publisher offers for VP8 (the common browser choice).
pub const VP8_PAYLOAD_TYPE: u8 = 96;
/// Payload type the publisher offers for Opus (the common browser choice).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

// ── Publisher ────────────────────────────────────────────────────────────────────────────────

/// How a [`Publisher`] generates media.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub video: bool,
    pub audio: bool,
    /// Video frames per second of the generator.
    pub video_fps: u32,
    /// A keyframe every this many frames; 0 = only the first frame and on request (PLI/FIR).
    pub keyframe_interval: u32,
    /// RTP packets per keyframe (keyframes are bigger, as with a real encoder).
    pub packets_per_keyframe: u16,
    /// RTP packets per interframe.
    pub packets_per_frame: u16,
    /// Bytes of each video RTP payload.
    pub video_payload_size: usize,
    /// Bytes of each Opus RTP payload.
    pub audio_payload_size: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            video: true,
            audio: true,
            video_fps: 30,
            // Two seconds at 30 fps, as OBS and browsers commonly do.
            keyframe_interval: 60,
            packets_per_keyframe: 3,
            packets_per_frame: 1,
            video_payload_size: 1000,
            audio_payload_size: 80,
        }
    }
}

/// One RTP packet the publisher sent (first transmission; retransmissions are the NACK
/// responder's and are not logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentPacket {
    pub kind: MediaKind,
    pub ssrc: u32,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub tag: PayloadTag,
    pub at: Instant,
}

/// One video frame the publisher sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentFrame {
    pub frame: u32,
    pub keyframe: bool,
    pub timestamp: u32,
    pub first_seq: u16,
    pub packets: u16,
}

/// A WebRTC peer sending one VP8 and one Opus track of synthetic media through
/// `TrackLocalStaticRTP`, so the test controls every payload, sequence number and timestamp.
/// It behaves like an encoder towards the network: the first frame is a keyframe, and a PLI or
/// FIR makes it send a keyframe at once.
pub struct Publisher {
    pub(crate) peer: Peer,
    shared: Arc<PublisherShared>,
    generator: Mutex<Option<JoinHandle<()>>>,
    _rtcp_reader: TaskGuard,
}

struct PublisherShared {
    video: Arc<TrackLocalStaticRTP>,
    audio: Arc<TrackLocalStaticRTP>,
    video_ssrc: u32,
    audio_ssrc: u32,
    video_pt: AtomicU8,
    audio_pt: AtomicU8,
    config: Mutex<MediaConfig>,
    video_state: Mutex<VideoState>,
    audio_state: Mutex<AudioState>,
    /// Wall-clock origin of video timestamps (a camera stamps frames by capture time).
    clock_origin: Instant,
    keyframe_requested: AtomicBool,
    keyframe_notify: Notify,
    plis: AtomicU64,
    firs: AtomicU64,
    keyframe_requests: Mutex<Vec<Instant>>,
    sent: Mutex<Vec<SentPacket>>,
    changes: watch::Sender<u64>,
}

struct VideoState {
    next_seq: u16,
    next_frame: u32,
    frames_since_keyframe: u32,
    timestamp_base: u32,
    last_timestamp: Option<u32>,
}

struct AudioState {
    next_seq: u16,
    next_packet: u32,
    next_timestamp: u32,
}

impl Publisher {
    /// Builds the peer connection and its two tracks. Media starts with [`start_media`] or
    /// the `send_*` methods once connected.
    ///
    /// [`start_media`]: Publisher::start_media
    pub async fn new(config: MediaConfig) -> Result<Self> {
        Self::build(config, SettingEngineBuilder::new()).await
    }

    /// A publisher whose ICE agent is ICE-lite (RFC 8445 §2.5) like the SFU's: it never sends
    /// connectivity checks and makes the remote full agent controlling. For self-tests that
    /// put a publisher where the SFU would be.
    pub async fn new_ice_lite(config: MediaConfig) -> Result<Self> {
        Self::build(config, SettingEngineBuilder::new().with_lite(true)).await
    }

    async fn build(config: MediaConfig, settings: SettingEngineBuilder) -> Result<Self> {
        let mut media_engine = MediaEngine::default();
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: vp8_codec(),
                payload_type: VP8_PAYLOAD_TYPE,
            },
            RtpCodecKind::Video,
        )?;
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: opus_codec(),
                payload_type: OPUS_PAYLOAD_TYPE,
            },
            RtpCodecKind::Audio,
        )?;
        // The SFU's own marker hands PLI/FIR (and NACK, which the publisher ignores: the
        // default NACK responder has already answered it) to the application.
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?.with(
            marquee_protocol::feedback::FEEDBACK_SLOT,
            marquee_protocol::feedback::DeliverFeedback::default(),
        );
        let peer = Peer::build(media_engine, registry, settings, None, None).await?;

        let video_ssrc = random_u32();
        let audio_ssrc = random_u32().wrapping_add(1);
        let stream_id = format!("marquee-test-{video_ssrc:08x}");
        let video = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            stream_id.clone(),
            format!("video-{video_ssrc:08x}"),
            "synthetic VP8".to_owned(),
            RtpCodecKind::Video,
            vec![encoding(video_ssrc, vp8_codec())],
        )));
        let audio = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            stream_id,
            format!("audio-{audio_ssrc:08x}"),
            "synthetic Opus".to_owned(),
            RtpCodecKind::Audio,
            vec![encoding(audio_ssrc, opus_codec())],
        )));
        // Adding a track binds it, which is what lets `poll` deliver RTCP about it.
        peer.pc
            .add_track(Arc::clone(&video) as Arc<dyn TrackLocal>)
            .await?;
        peer.pc
            .add_track(Arc::clone(&audio) as Arc<dyn TrackLocal>)
            .await?;

        let (changes, _) = watch::channel(0);
        let shared = Arc::new(PublisherShared {
            video,
            audio,
            video_ssrc,
            audio_ssrc,
            video_pt: AtomicU8::new(VP8_PAYLOAD_TYPE),
            audio_pt: AtomicU8::new(OPUS_PAYLOAD_TYPE),
            config: Mutex::new(config),
            video_state: Mutex::new(VideoState {
                next_seq: random_u32() as u16,
                next_frame: 0,
                frames_since_keyframe: 0,
                timestamp_base: random_u32(),
                last_timestamp: None,
            }),
            audio_state: Mutex::new(AudioState {
                next_seq: random_u32() as u16,
                next_packet: 0,
                next_timestamp: random_u32(),
            }),
            clock_origin: now(),
            keyframe_requested: AtomicBool::new(false),
            keyframe_notify: Notify::new(),
            plis: AtomicU64::new(0),
            firs: AtomicU64::new(0),
            keyframe_requests: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            changes,
        });
        let rtcp_reader = tokio::spawn(read_keyframe_requests(Arc::clone(&shared)));
        Ok(Self {
            peer,
            shared,
            generator: Mutex::new(None),
            _rtcp_reader: TaskGuard(vec![rtcp_reader]),
        })
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Creates an offer and sets it as the local description; returns its SDP (candidates
    /// trickle separately; see [`Peer::take_candidates`]).
    pub async fn create_offer(&self) -> Result<String> {
        let offer = self.peer.pc.create_offer(None).await?;
        self.peer.pc.set_local_description(offer).await?;
        self.peer.local_description().await
    }

    /// Applies the remote answer and adopts the payload types it negotiated.
    pub async fn apply_answer(&self, sdp: &str) -> Result<()> {
        self.peer
            .pc
            .set_remote_description(RTCSessionDescription::answer(sdp.to_owned())?)
            .await
            .context("applying remote answer")?;
        for sender in self.peer.pc.get_senders().await {
            let parameters = sender.get_parameters().await?;
            let Some(codec) = parameters.rtp_parameters.codecs.first() else {
                continue;
            };
            match sender.track().kind().await {
                RtpCodecKind::Video => self
                    .shared
                    .video_pt
                    .store(codec.payload_type, Ordering::Relaxed),
                RtpCodecKind::Audio => self
                    .shared
                    .audio_pt
                    .store(codec.payload_type, Ordering::Relaxed),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn video_ssrc(&self) -> u32 {
        self.shared.video_ssrc
    }

    pub fn audio_ssrc(&self) -> u32 {
        self.shared.audio_ssrc
    }

    pub fn media_config(&self) -> MediaConfig {
        lock(&self.shared.config).clone()
    }

    /// Starts (or restarts with `config`) the background generator: video at `video_fps`
    /// and Opus at 50 packets/s, a keyframe at once on every PLI/FIR.
    pub fn start_media_with(&self, config: MediaConfig) {
        *lock(&self.shared.config) = config;
        self.start_media();
    }

    /// Starts (or restarts) the background generator with the current [`MediaConfig`].
    pub fn start_media(&self) {
        let task = tokio::spawn(generate_media(Arc::clone(&self.shared)));
        if let Some(previous) = lock(&self.generator).replace(task) {
            previous.abort();
        }
    }

    /// Stops the background generator; the connection stays up.
    pub fn stop_media(&self) {
        if let Some(task) = lock(&self.generator).take() {
            task.abort();
        }
    }

    /// Sends one synthetic video frame now, a keyframe or not, with a capture-clock timestamp
    /// and the next sequence numbers; the last packet has the marker bit.
    pub async fn send_video_frame(&self, keyframe: bool) -> Result<SentFrame> {
        self.shared.send_video_frame(Some(keyframe)).await
    }

    /// Sends the next video frame as the generator would: a keyframe if one was requested,
    /// if it is the first, or if the keyframe interval is due.
    pub async fn send_next_video_frame(&self) -> Result<SentFrame> {
        self.shared.send_video_frame(None).await
    }

    /// Sends one synthetic 20 ms Opus packet now.
    pub async fn send_audio_packet(&self) -> Result<SentPacket> {
        self.shared.send_audio_packet().await
    }

    /// Sends a raw video RTP payload with the next sequence number.
    pub async fn write_video_rtp(
        &self,
        payload: Bytes,
        marker: bool,
        timestamp: u32,
    ) -> Result<u16> {
        self.write_raw(MediaKind::Video, payload, marker, timestamp)
            .await
    }

    /// Sends a raw audio RTP payload with the next sequence number.
    pub async fn write_audio_rtp(
        &self,
        payload: Bytes,
        marker: bool,
        timestamp: u32,
    ) -> Result<u16> {
        self.write_raw(MediaKind::Audio, payload, marker, timestamp)
            .await
    }

    async fn write_raw(
        &self,
        kind: MediaKind,
        payload: Bytes,
        marker: bool,
        timestamp: u32,
    ) -> Result<u16> {
        let seq = {
            let mut video;
            let mut audio;
            let next_seq = match kind {
                MediaKind::Video => {
                    video = lock(&self.shared.video_state);
                    &mut video.next_seq
                }
                MediaKind::Audio => {
                    audio = lock(&self.shared.audio_state);
                    &mut audio.next_seq
                }
            };
            let seq = *next_seq;
            *next_seq = seq.wrapping_add(1);
            seq
        };
        self.shared
            .write(kind, seq, timestamp, marker, payload)
            .await?;
        Ok(seq)
    }

    /// PLIs received about the video track.
    pub fn plis_received(&self) -> u64 {
        self.shared.plis.load(Ordering::Relaxed)
    }

    /// FIRs received about the video track.
    pub fn firs_received(&self) -> u64 {
        self.shared.firs.load(Ordering::Relaxed)
    }

    /// When each keyframe request (PLI or FIR batch) arrived.
    pub fn keyframe_request_times(&self) -> Vec<Instant> {
        lock(&self.shared.keyframe_requests).clone()
    }

    /// Every packet sent so far (first transmissions), in order.
    pub fn sent(&self, kind: MediaKind) -> Vec<SentPacket> {
        lock(&self.shared.sent)
            .iter()
            .filter(|p| p.kind == kind)
            .cloned()
            .collect()
    }

    /// When the first transmission of the synthetic payload `(kind, frame, index)` was sent
    /// (see [`PayloadTag`]), looking back over the last few thousand packets only: a receiver
    /// asks about packets that are milliseconds old, and the lookup runs under the log's lock.
    pub fn sent_at(&self, kind: MediaKind, frame: u32, index: u16) -> Option<Instant> {
        lock(&self.shared.sent)
            .iter()
            .rev()
            .take(4096)
            .find(|p| p.kind == kind && p.tag.frame == frame && p.tag.index == index)
            .map(|p| p.at)
    }

    /// Keyframes sent so far.
    pub fn keyframes_sent(&self) -> usize {
        lock(&self.shared.sent)
            .iter()
            .filter(|p| p.kind == MediaKind::Video && p.tag.keyframe && p.tag.index == 0)
            .count()
    }

    /// Waits until `pred` holds, re-checking whenever a packet is sent or a keyframe request
    /// arrives.
    pub async fn wait_for(&self, timeout: Duration, pred: impl FnMut(&Self) -> bool) -> Result<()> {
        wait_until(&self.shared.changes, timeout, self, pred).await
    }

    pub async fn close(&self) -> Result<()> {
        self.stop_media();
        self.peer.close().await
    }
}

/// Reaches the peer's own methods (`wait_connected`, `connection_state`, ...), as [`Host`] and
/// [`Viewer`] reach the publisher's.
///
/// [`Host`]: crate::live::Host
/// [`Viewer`]: crate::live::Viewer
impl std::ops::Deref for Publisher {
    type Target = Peer;

    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop_media();
    }
}

impl PublisherShared {
    async fn send_video_frame(&self, keyframe: Option<bool>) -> Result<SentFrame> {
        let (frame, keyframe, timestamp, first_seq, payloads) = {
            let config = lock(&self.config).clone();
            let mut state = lock(&self.video_state);
            let requested = self.keyframe_requested.swap(false, Ordering::Relaxed);
            let keyframe = keyframe.unwrap_or_else(|| {
                requested
                    || state.next_frame == 0
                    || (config.keyframe_interval > 0
                        && state.frames_since_keyframe + 1 >= config.keyframe_interval)
            });
            if !keyframe && requested {
                // A forced interframe does not answer the request; keep it pending.
                self.keyframe_requested.store(true, Ordering::Relaxed);
            }
            let elapsed = self.clock_origin.elapsed();
            let clock = state.timestamp_base.wrapping_add(
                (elapsed.as_micros() * u128::from(VP8_CLOCK_RATE) / 1_000_000) as u32,
            );
            // Strictly increasing even for two frames in the same tick (a PLI right after one).
            let timestamp = match state.last_timestamp {
                Some(last) if clock.wrapping_sub(last) as i32 <= 0 => last.wrapping_add(1),
                _ => clock,
            };
            state.last_timestamp = Some(timestamp);
            let count = if keyframe {
                config.packets_per_keyframe
            } else {
                config.packets_per_frame
            }
            .max(1);
            let frame = state.next_frame;
            state.next_frame += 1;
            state.frames_since_keyframe = if keyframe {
                0
            } else {
                state.frames_since_keyframe + 1
            };
            let first_seq = state.next_seq;
            state.next_seq = first_seq.wrapping_add(count);
            let payloads = vp8_frame_payloads(frame, keyframe, count, config.video_payload_size);
            (frame, keyframe, timestamp, first_seq, payloads)
        };
        let packets = payloads.len() as u16;
        for (i, payload) in payloads.into_iter().enumerate() {
            let marker = i + 1 == usize::from(packets);
            self.write(
                MediaKind::Video,
                first_seq.wrapping_add(i as u16),
                timestamp,
                marker,
                payload,
            )
            .await?;
        }
        Ok(SentFrame {
            frame,
            keyframe,
            timestamp,
            first_seq,
            packets,
        })
    }

    async fn send_audio_packet(&self) -> Result<SentPacket> {
        let (seq, packet, timestamp, size) = {
            let size = lock(&self.config).audio_payload_size;
            let mut state = lock(&self.audio_state);
            let seq = state.next_seq;
            let packet = state.next_packet;
            let timestamp = state.next_timestamp;
            state.next_seq = seq.wrapping_add(1);
            state.next_packet += 1;
            state.next_timestamp = timestamp.wrapping_add(OPUS_TICKS_PER_PACKET);
            (seq, packet, timestamp, size)
        };
        // RFC 3551 §4.1: the marker flags the first packet of a talkspurt.
        self.write(
            MediaKind::Audio,
            seq,
            timestamp,
            packet == 0,
            opus_payload(packet, size),
        )
        .await
    }

    async fn write(
        &self,
        kind: MediaKind,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
    ) -> Result<SentPacket> {
        let (track, ssrc, payload_type) = match kind {
            MediaKind::Video => (
                &self.video,
                self.video_ssrc,
                self.video_pt.load(Ordering::Relaxed),
            ),
            MediaKind::Audio => (
                &self.audio,
                self.audio_ssrc,
                self.audio_pt.load(Ordering::Relaxed),
            ),
        };
        let tag = PayloadTag::parse(&payload).unwrap_or(PayloadTag {
            kind,
            frame: u32::MAX,
            index: 0,
            count: 1,
            keyframe: false,
        });
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker,
                payload_type,
                sequence_number: seq,
                timestamp,
                ssrc,
                ..Default::default()
            },
            payload,
        };
        track
            .write_rtp(packet)
            .await
            .with_context(|| format!("writing {kind:?} RTP seq {seq}"))?;
        let sent = SentPacket {
            kind,
            ssrc,
            seq,
            timestamp,
            marker,
            tag,
            at: now(),
        };
        lock(&self.sent).push(sent.clone());
        self.changes.send_modify(|v| *v += 1);
        Ok(sent)
    }
}

/// Reads RTCP about the video track (only PLI and FIR reach it, see
/// [`marquee_protocol::feedback::DeliverFeedback`]) and asks the generator for a keyframe.
async fn read_keyframe_requests(shared: Arc<PublisherShared>) {
    while let Some(event) = shared.video.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        let mut requested = false;
        for packet in &packets {
            let packet = packet.as_any();
            if packet.is::<PictureLossIndication>() {
                shared.plis.fetch_add(1, Ordering::Relaxed);
                requested = true;
            } else if packet.is::<FullIntraRequest>() {
                shared.firs.fetch_add(1, Ordering::Relaxed);
                requested = true;
            }
        }
        if requested {
            lock(&shared.keyframe_requests).push(now());
            shared.keyframe_requested.store(true, Ordering::Relaxed);
            shared.keyframe_notify.notify_one();
            shared.changes.send_modify(|v| *v += 1);
        }
    }
}

/// The generator: paced video and audio, plus an immediate keyframe on request.
async fn generate_media(shared: Arc<PublisherShared>) {
    let config = lock(&shared.config).clone();
    let mut video_tick = tokio::time::interval(Duration::from_secs(1) / config.video_fps.max(1));
    video_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    audio_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // Send failures (e.g. before the transport is up) are dropped packets, as for an
        // encoder whose output has nowhere to go.
        tokio::select! {
            _ = video_tick.tick(), if config.video => {
                let _ = shared.send_video_frame(None).await;
            }
            _ = audio_tick.tick(), if config.audio => {
                let _ = shared.send_audio_packet().await;
            }
            _ = shared.keyframe_notify.notified(), if config.video => {
                // The request may already have been served by a tick in between.
                if shared.keyframe_requested.load(Ordering::Relaxed) {
                    let _ = shared.send_video_frame(None).await;
                    video_tick.reset();
                }
            }
            else => break,
        }
    }
}

fn vp8_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.to_owned(),
        clock_rate: VP8_CLOCK_RATE,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![],
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn encoding(ssrc: u32, codec: RTCRtpCodec) -> RTCRtpEncodingParameters {
    RTCRtpEncodingParameters {
        rtp_coding_parameters: RTCRtpCodingParameters {
            ssrc: Some(ssrc),
            ..Default::default()
        },
        codec,
        ..Default::default()
    }
}
