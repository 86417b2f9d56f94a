//! One load-test viewer: a real WebRTC peer (ICE, DTLS, SRTP by the `webrtc` crate) joining a
//! live event through Marquee's protocol, or through WHEP on any server, made cheap by the
//! [`tap`](crate::tap).
//!
//! The viewer joins, waits for its first keyframe, then watches until told to leave, sending
//! NACKs for the gaps its tap sees. Join stages are measured from the moment it started.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use marquee_client::{
    Host, PayloadTag, Subscriber, SubscriberOptions, TrackHandler, Viewer, ViewerOptions, WhipHttp,
    WhipSession, is_vp8_keyframe_start,
};
use marquee_protocol::wire::MediaKind;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::RTCPeerConnectionState;

use crate::metrics::{Histograms, Metric};
use crate::tap::{Tap, TapNetwork, TapRuntime};

/// Shared by every recorder of a run; recorded at sample rate, so the lock is cold.
pub type SharedHistograms = Arc<Mutex<Histograms>>;

/// How a NACK is repeated while the packet stays missing.
const NACK_RETRY: Duration = Duration::from_millis(100);

/// What a viewer needs to know to join.
#[derive(Clone)]
pub struct ViewerSetup {
    pub server: std::net::SocketAddr,
    pub room: String,
    pub name: String,
    /// The viewer's access token (`None` against a `--dev` server).
    pub token: Option<String>,
    /// Pass one RTP packet in this many to the WebRTC stack once media flows.
    pub sample_every: u32,
    /// Send media through this relay instead of straight to the server.
    pub route_via: Option<std::net::SocketAddr>,
    /// Give up on a join that has not shown a keyframe by then.
    pub join_timeout: Duration,
    /// The synthetic host, to look up when a sampled packet was sent (end-to-end latency).
    pub host: Option<Arc<Host>>,
    pub histograms: SharedHistograms,
    /// Shared viewer sockets (`None`: a socket of its own per viewer).
    pub network: Option<Arc<TapNetwork>>,
    /// For a first-wave viewer of a spike with a second wave: the run's phase, to record
    /// its latency samples apart by phase as well.
    pub wave: Option<Arc<WavePhase>>,
    /// Join over WHEP at this `http://` endpoint instead of Marquee's WebSocket protocol.
    pub whep: Option<String>,
}

/// A joined viewer: over Marquee's WebSocket protocol, or a WHEP session (any server).
enum Session {
    Ws(Viewer),
    Whep {
        subscriber: Subscriber,
        http: WhipHttp,
        session: WhipSession,
    },
}

/// When a join's signaling milestones happened: the WebSocket opened (none for WHEP), and
/// `joined` (or the WHEP answer) arrived.
struct Signaled {
    ws_open: Option<Instant>,
    joined: Instant,
}

impl Session {
    /// Joins as `setup` says; the peer connects in the background.
    async fn join(setup: &ViewerSetup, options: ViewerOptions) -> Result<(Self, Signaled)> {
        let Some(url) = &setup.whep else {
            let viewer = Viewer::join_with(setup.server, &setup.room, options).await?;
            let times = viewer.join_times();
            let signaled = Signaled {
                ws_open: Some(times.ws_open),
                joined: times.joined,
            };
            return Ok((Self::Ws(viewer), signaled));
        };
        let subscriber = Subscriber::with_options(options.subscriber).await?;
        let (http, path) = WhipHttp::from_url(url)?;
        let session = subscriber
            .watch_whep_at(&http, &path, setup.token.as_deref())
            .await
            .with_context(|| format!("WHEP {url}"))?;
        let signaled = Signaled {
            ws_open: None,
            joined: now(),
        };
        let session = Self::Whep {
            subscriber,
            http,
            session,
        };
        Ok((session, signaled))
    }

    fn subscriber(&self) -> &Subscriber {
        match self {
            Self::Ws(viewer) => viewer,
            Self::Whep { subscriber, .. } => subscriber,
        }
    }

    /// Leaves as a client of the protocol does: closes the WebSocket, or `DELETE`s the WHEP
    /// session; then closes the peer connection.
    async fn close(self) {
        match self {
            Self::Ws(viewer) => {
                let _ = viewer.close().await;
            }
            Self::Whep {
                subscriber,
                http,
                session,
            } => {
                let _ = session.delete(&http).await;
                let _ = subscriber.close().await;
            }
        }
    }
}

/// Where a spike with a second wave stands, set by the runner and read per sampled packet.
#[derive(Debug, Default)]
pub struct WavePhase(AtomicU8);

impl WavePhase {
    /// The first wave arrives and settles: nothing recorded apart.
    pub const ARRIVING: u8 = 0;
    /// The first wave watches, before the second: the baseline ([`Metric::E2eSteady`]).
    pub const STEADY: u8 = 1;
    /// The second wave arrives and settles ([`Metric::E2eSecondWave`]).
    pub const SECOND_WAVE: u8 = 2;
    /// Everyone watches: nothing recorded apart.
    pub const AFTER: u8 = 3;

    pub fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed);
    }

    /// The metric a first-wave latency sample also goes to now, if any.
    fn metric(&self) -> Option<Metric> {
        match self.0.load(Ordering::Relaxed) {
            Self::STEADY => Some(Metric::E2eSteady),
            Self::SECOND_WAVE => Some(Metric::E2eSecondWave),
            _ => None,
        }
    }
}

/// The join stages, each measured from the viewer's start.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JoinStages {
    pub ws_open: Option<Duration>,
    pub joined: Option<Duration>,
    pub ice: Option<Duration>,
    pub dtls: Option<Duration>,
    pub first_rtp: Option<Duration>,
    pub first_keyframe: Option<Duration>,
}

impl JoinStages {
    pub fn record(&self, h: &mut Histograms) {
        for (metric, value) in [
            (Metric::JoinWsOpen, self.ws_open),
            (Metric::JoinJoined, self.joined),
            (Metric::JoinIce, self.ice),
            (Metric::JoinDtls, self.dtls),
            (Metric::JoinFirstRtp, self.first_rtp),
            (Metric::Join, self.first_keyframe),
        ] {
            if let Some(value) = value {
                h.record_duration(metric, value);
            }
        }
    }
}

/// What one viewer saw, reported when it is done.
#[derive(Debug, Clone, Default)]
pub struct ViewerOutcome {
    pub stages: JoinStages,
    /// Why the join failed (or the viewer broke off), naming the stage.
    pub failure: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub passed: u64,
    pub authenticated: u64,
    pub video_expected: u64,
    pub video_lost: u64,
    pub recovered: u64,
    pub freezes: u64,
    pub nacks_sent: u64,
    pub jitter_ms: Option<f64>,
    pub bitrate_kbps: Option<f64>,
}

impl ViewerOutcome {
    pub fn joined(&self) -> bool {
        self.stages.joined.is_some()
    }

    pub fn has_media(&self) -> bool {
        self.stages.first_keyframe.is_some()
    }
}

/// What the track readers learn, shared with the viewer task.
#[derive(Default)]
struct Tracks {
    video: Option<(u32, Arc<dyn TrackRemote>)>,
    first_keyframe: Option<Instant>,
    authenticated: u64,
}

/// Runs one viewer: join, watch until `leave` turns true (or the connection fails), leave.
/// `live` receives the tap as soon as it exists; `watching` is called the moment the viewer
/// has its first keyframe (joined with media), so progress counts joins as they happen.
pub async fn run(
    setup: ViewerSetup,
    mut leave: watch::Receiver<bool>,
    live: impl FnOnce(Arc<Tap>),
    watching: impl FnOnce(),
) -> ViewerOutcome {
    let started = now();
    let tap = Tap::new(setup.sample_every);
    live(Arc::clone(&tap));
    let tracks = Arc::new(Mutex::new(Tracks::default()));
    let keyframe = Arc::new(tokio::sync::Notify::new());
    let on_track: TrackHandler = {
        let (tap, tracks, keyframe) =
            (Arc::clone(&tap), Arc::clone(&tracks), Arc::clone(&keyframe));
        let latency = Latency {
            host: setup.host.clone(),
            histograms: Arc::clone(&setup.histograms),
            wave: setup.wave.clone(),
        };
        Arc::new(move |track| {
            tokio::spawn(read_track(
                track,
                Arc::clone(&tap),
                Arc::clone(&tracks),
                Arc::clone(&keyframe),
                latency.clone(),
            ));
        })
    };
    let options = ViewerOptions {
        name: setup.name.clone(),
        token: setup.token.clone(),
        route_via: setup.route_via,
        subscriber: SubscriberOptions {
            runtime: Some(TapRuntime::new(Arc::clone(&tap), setup.network.clone())),
            default_interceptors: false,
            on_track: Some(on_track),
        },
        ..ViewerOptions::default()
    };
    let mut outcome = ViewerOutcome::default();
    let since = |at: Instant| at.saturating_duration_since(started);
    let joined = tokio::time::timeout(setup.join_timeout, Session::join(&setup, options)).await;
    let (viewer, signaled) = match joined {
        Ok(Ok(joined)) => joined,
        Ok(Err(err)) => {
            outcome.failure = Some(format!("join: {err:#}"));
            return outcome;
        }
        Err(_) => {
            outcome.failure = Some(format!(
                "join: no `joined` (or WHEP answer) within {:?}",
                setup.join_timeout
            ));
            return outcome;
        }
    };
    outcome.stages.ws_open = signaled.ws_open.map(since);
    outcome.stages.joined = Some(since(signaled.joined));

    // Media: wait for the first keyframe, bounded by what is left of the join timeout.
    let deadline = started + setup.join_timeout;
    let got_keyframe = tokio::select! {
        _ = wait_keyframe(&tracks, &keyframe) => true,
        _ = tokio::time::sleep_until(deadline.into()) => false,
        _ = leave.wait_for(|l| *l) => false,
    };
    let subscriber = viewer.subscriber();
    outcome.stages.ice = subscriber.peer().ice_connected_at().map(since);
    outcome.stages.dtls = subscriber.peer().connected_at().map(since);
    outcome.stages.first_rtp = tap.state().first_rtp.map(since);
    if got_keyframe {
        watching();
        outcome.stages.first_keyframe = lock(&tracks).first_keyframe.map(since);
        watch_until_leave(subscriber, &tap, &tracks, &mut leave, &mut outcome).await;
    } else if *leave.borrow() {
        outcome.failure = Some(format!(
            "told to leave {:?} after starting, before its first keyframe",
            now().saturating_duration_since(started)
        ));
    } else {
        let reached = match (
            outcome.stages.ice,
            outcome.stages.dtls,
            outcome.stages.first_rtp,
        ) {
            (None, _, _) => "ICE connected",
            (_, None, _) => "DTLS connected",
            (_, _, None) => "first RTP",
            _ => "first keyframe",
        };
        outcome.failure = Some(format!(
            "no {reached} within {:?} (connection {})",
            setup.join_timeout,
            subscriber.connection_state()
        ));
    }
    // Every packet handed to the stack is read before the count is taken: the samples the
    // report says were authenticated are then exactly those it says were sampled.
    tap.stop_passing();
    let _ = tokio::time::timeout(DRAIN_WAIT, drained(&tap, &tracks)).await;
    collect(&tap, &tracks, &mut outcome);
    let _ = tokio::time::timeout(Duration::from_secs(2), viewer.close()).await;
    outcome
}

/// How long a leaving viewer waits for its stack to deliver what it was handed.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Until the stack has delivered every RTP packet the tap handed it.
async fn drained(tap: &Tap, tracks: &Mutex<Tracks>) {
    while lock(tracks).authenticated < tap.state().passed {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_keyframe(tracks: &Mutex<Tracks>, keyframe: &tokio::sync::Notify) {
    loop {
        let notified = keyframe.notified();
        if lock(tracks).first_keyframe.is_some() {
            return;
        }
        notified.await;
    }
}

/// The watching phase: NACK what is missing until told to leave or the connection ends.
async fn watch_until_leave(
    viewer: &Subscriber,
    tap: &Tap,
    tracks: &Mutex<Tracks>,
    leave: &mut watch::Receiver<bool>,
    outcome: &mut ViewerOutcome,
) {
    loop {
        let next = {
            let video = lock(tracks).video.as_ref().map(|(ssrc, _)| *ssrc);
            video.and_then(|ssrc| tap.state().stream(ssrc).and_then(|s| s.poll_timeout()))
        };
        let wake = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = leave.wait_for(|l| *l) => return,
            ended = viewer.peer().wait_state(Duration::from_secs(7 * 86_400), RTCPeerConnectionState::Closed) => {
                outcome.failure = Some(format!("connection ended while watching: {}", match ended {
                    Ok(()) => "closed".to_owned(),
                    Err(err) => format!("{err:#}"),
                }));
                return;
            }
            _ = tap.gap_detected() => {}
            _ = wake => {}
        }
        if let Err(err) = send_nacks(tap, tracks, outcome).await {
            outcome.failure = Some(format!("watching: {err:#}"));
            return;
        }
    }
}

async fn send_nacks(tap: &Tap, tracks: &Mutex<Tracks>, outcome: &mut ViewerOutcome) -> Result<()> {
    let Some((ssrc, track)) = lock(tracks).video.clone() else {
        return Ok(());
    };
    let seqs = match tap.state().stream_mut(ssrc) {
        Some(stream) => stream.poll_nacks(now(), NACK_RETRY),
        None => return Ok(()),
    };
    if seqs.is_empty() {
        return Ok(());
    }
    outcome.nacks_sent += 1;
    track
        .write_rtcp(vec![Box::new(TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: nack_pairs_from_sequence_numbers(&seqs),
        })])
        .await
        .context("sending NACK")
}

/// Where a viewer's end-to-end latency samples go.
#[derive(Clone)]
struct Latency {
    /// The synthetic host, which knows when each tagged packet was sent.
    host: Option<Arc<Host>>,
    histograms: SharedHistograms,
    wave: Option<Arc<WavePhase>>,
}

/// Reads what the stack delivers of one track: the sampled, authenticated packets.
async fn read_track(
    track: Arc<dyn TrackRemote>,
    tap: Arc<Tap>,
    tracks: Arc<Mutex<Tracks>>,
    keyframe: Arc<tokio::sync::Notify>,
    latency: Latency,
) {
    let kind = match track.kind().await {
        RtpCodecKind::Video => MediaKind::Video,
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => return,
    };
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            if matches!(event, TrackRemoteEvent::OnEnded) {
                break;
            }
            continue;
        };
        let at = now();
        let ssrc = packet.header.ssrc;
        {
            let mut t = lock(&tracks);
            t.authenticated += 1;
            if kind == MediaKind::Video && t.video.is_none() {
                t.video = Some((ssrc, Arc::clone(&track)));
                if let Some(stream) = tap.state().stream_mut(ssrc) {
                    stream.set_clock_rate(90_000);
                }
            }
            if kind == MediaKind::Video
                && t.first_keyframe.is_none()
                && is_vp8_keyframe_start(&packet.payload)
            {
                t.first_keyframe = Some(at);
                tap.start_sampling();
                keyframe.notify_waiters();
            }
        }
        if let (Some(host), Some(tag)) = (&latency.host, PayloadTag::parse(&packet.payload))
            && let Some(sent) = host.sent_at(tag.kind, tag.frame, tag.index)
        {
            let e2e = at.saturating_duration_since(sent);
            let mut histograms = lock(&latency.histograms);
            histograms.record_duration(Metric::E2eLatency, e2e);
            if let Some(metric) = latency.wave.as_ref().and_then(|w| w.metric()) {
                histograms.record_duration(metric, e2e);
            }
        }
    }
}

fn collect(tap: &Tap, tracks: &Mutex<Tracks>, outcome: &mut ViewerOutcome) {
    let t = lock(tracks);
    outcome.authenticated = t.authenticated;
    let video_ssrc = t.video.as_ref().map(|(ssrc, _)| *ssrc);
    drop(t);
    let state = tap.state();
    outcome.passed = state.passed;
    for stream in &state.streams {
        outcome.packets += stream.packets;
        outcome.bytes += stream.bytes;
        if Some(stream.ssrc) == video_ssrc {
            outcome.video_expected = stream.expected();
            outcome.video_lost = stream.lost();
            outcome.recovered = stream.recovered;
            outcome.freezes = stream.freezes;
            outcome.jitter_ms = stream.jitter_ms();
        }
    }
    let span = state
        .streams
        .iter()
        .map(|s| s.last_at().saturating_duration_since(s.first_at()))
        .max()
        .unwrap_or_default();
    outcome.bitrate_kbps =
        (span > Duration::ZERO).then(|| outcome.bytes as f64 * 8.0 / span.as_secs_f64() / 1000.0);
}

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
