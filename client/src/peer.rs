//! The WebRTC peer under the publisher and the subscriber ([`Peer`]): the async `webrtc`
//! peer connection, its events, trickled candidates and connection times.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, Registry, SettingEngineBuilder,
};
use webrtc::runtime::Runtime;

use crate::util::{lock, now};
use crate::ws::{RECV_TIMEOUT, WsSender};
use marquee_protocol::wire::{ClientMessage, IceCandidate, RoomMessage};

/// Pace of ICE connectivity checks. webrtc-rs defaults to 200 ms between checks, which alone
/// would cost a viewer up to 200 ms of join time; browsers pace checks at about 50 ms (RFC 8445
/// §14.2 Ta). With 28 attempts a candidate pair is still tried for 1.4 s, as by default.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

// ── WebRTC peer ──────────────────────────────────────────────────────────────────────────────

/// A webrtc peer connection bound to 127.0.0.1 with its events turned into channels. The
/// connection is closed when this is dropped.
pub struct Peer {
    pub(crate) pc: Arc<dyn PeerConnection>,
    times: Arc<PeerTimes>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathering: watch::Receiver<RTCIceGatheringState>,
    candidates: Mutex<Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>>>,
}

/// Called with each remote track as it arrives, on the connection's driver: it must hand the
/// track to a task and return.
pub type TrackHandler = Arc<dyn Fn(Arc<dyn TrackRemote>) + Send + Sync>;

/// When a peer's connection reached its milestones (the join stages a load test reports).
#[derive(Debug, Default)]
struct PeerTimes {
    ice_connected: OnceLock<Instant>,
    connected: OnceLock<Instant>,
}

impl Peer {
    pub(crate) async fn build(
        media_engine: MediaEngine,
        registry: Registry,
        settings: SettingEngineBuilder,
        on_track: Option<TrackHandler>,
        runtime: Option<Arc<dyn Runtime>>,
    ) -> Result<Self> {
        let (candidate_tx, candidate_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathering_tx, gathering) = watch::channel(RTCIceGatheringState::New);
        let times = Arc::new(PeerTimes::default());
        let handler = Arc::new(PeerHandler {
            candidates: candidate_tx,
            state: state_tx,
            gathering: gathering_tx,
            times: Arc::clone(&times),
            on_track,
        });
        let builder = match runtime {
            Some(runtime) => PeerConnectionBuilder::new().with_runtime(runtime),
            None => PeerConnectionBuilder::new(),
        };
        let pc = builder
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(
                settings
                    .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(28))
                    .build(),
            )
            .with_handler(handler)
            // A concrete loopback address: a wildcard skips loopback interfaces.
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .context("building peer connection")?;
        Ok(Self {
            pc: Arc::new(pc),
            times,
            state,
            gathering,
            candidates: Mutex::new(Some(candidate_rx)),
        })
    }

    /// The underlying connection, for anything this toolkit does not wrap.
    pub fn pc(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }

    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// When ICE first reported `connected`.
    pub fn ice_connected_at(&self) -> Option<Instant> {
        self.times.ice_connected.get().copied()
    }

    /// When the connection first reported `connected` (ICE and DTLS done, SRTP keyed).
    pub fn connected_at(&self) -> Option<Instant> {
        self.times.connected.get().copied()
    }

    /// Waits until the connection is `connected` (ICE and DTLS done); fails on `failed` or
    /// `closed` or after `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.wait_state(timeout, RTCPeerConnectionState::Connected)
            .await
    }

    /// Waits until the connection reaches `target`.
    pub async fn wait_state(
        &self,
        timeout: Duration,
        target: RTCPeerConnectionState,
    ) -> Result<()> {
        let mut state = self.state.clone();
        let reached = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                *s == target
                    || matches!(
                        s,
                        RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                    )
            }),
        )
        .await
        .with_context(|| {
            format!(
                "peer connection not {target} within {timeout:?} (state {})",
                self.connection_state()
            )
        })?
        .map(|s| *s)
        .map_err(|_| anyhow!("peer connection dropped"))?;
        if reached != target {
            bail!("peer connection is {reached}, expected {target}");
        }
        Ok(())
    }

    /// The local description once ICE gathering is complete, so that it lists every candidate
    /// (for peers connected without trickle, as in the self-test).
    pub async fn local_description_after_gathering(&self) -> Result<String> {
        let mut gathering = self.gathering.clone();
        tokio::time::timeout(
            RECV_TIMEOUT,
            gathering.wait_for(|s| *s == RTCIceGatheringState::Complete),
        )
        .await
        .context("ICE gathering did not complete")?
        .map_err(|_| anyhow!("peer connection dropped"))?;
        self.local_description().await
    }

    pub async fn local_description(&self) -> Result<String> {
        Ok(self
            .pc
            .local_description()
            .await
            .context("no local description")?
            .sdp)
    }

    /// The stream of local candidates, each once; `None` after the first call. Gathering
    /// completion arrives as a candidate with an empty `candidate` string (end of candidates).
    pub fn take_candidates(&self) -> Option<mpsc::UnboundedReceiver<RTCIceCandidateInit>> {
        lock(&self.candidates).take()
    }

    pub async fn add_remote_candidate(&self, candidate: &IceCandidate) -> Result<()> {
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: candidate.candidate.clone(),
                sdp_mid: candidate.sdp_mid.clone(),
                sdp_mline_index: candidate.sdp_m_line_index,
                username_fragment: candidate.username_fragment.clone(),
                url: None,
            })
            .await
            .context("adding remote candidate")
    }

    pub async fn close(&self) -> Result<()> {
        self.pc.close().await.context("closing peer connection")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A connection dropped without `close` keeps its driver task (and sockets) alive until
        // the runtime shuts down; close it so the server sees the peer leave.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pc = Arc::clone(&self.pc);
            runtime.spawn(async move {
                let _ = pc.close().await;
            });
        }
    }
}

struct PeerHandler {
    candidates: mpsc::UnboundedSender<RTCIceCandidateInit>,
    state: watch::Sender<RTCPeerConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
    times: Arc<PeerTimes>,
    on_track: Option<TrackHandler>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PeerHandler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(candidate) = event.candidate.to_json() {
            let _ = self.candidates.send(candidate);
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.candidates.send(RTCIceCandidateInit::default());
        }
        self.gathering.send_replace(state);
    }

    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            let _ = self.times.ice_connected.set(now());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            let _ = self.times.connected.set(now());
        }
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Runs inside the connection's driver: hand the track to a task, never block here.
        if let Some(on_track) = &self.on_track {
            on_track(track);
        }
    }
}

/// Forwards local candidates as `candidate` messages, in gathering order. Started only after
/// the offer or answer is sent, because a candidate before any description is an error.
pub(crate) fn spawn_candidate_trickle(
    mut candidates: mpsc::UnboundedReceiver<RTCIceCandidateInit>,
    sender: WsSender,
    sdp_mid: Option<String>,
    end_of_candidates: bool,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(init) = candidates.recv().await {
            if init.candidate.is_empty() && !end_of_candidates {
                continue;
            }
            let candidate = IceCandidate {
                candidate: init.candidate,
                sdp_mid: sdp_mid.clone(),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            };
            if sender
                .send(&ClientMessage::Room(RoomMessage::Candidate { candidate }))
                .is_err()
            {
                break;
            }
        }
    })
}

/// The first `a=mid:` of an SDP: the BUNDLE transport's media section, which candidates name.
pub fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|line| line.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}
