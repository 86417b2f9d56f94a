//! Test-side clients of a Marquee server, built from the same parts a real client uses: the
//! protocol types of `marquee_protocol::wire` over a WebSocket, and the async `webrtc` crate.
//!
//! Layers, from the wire up:
//! - [`WsClient`] speaks the JSON protocol: `send`, `send_raw` for malformed input, and `recv*`
//!   that never wait longer than a bound ([`RECV_TIMEOUT`] by default).
//! - [`Publisher`] and [`Subscriber`] are WebRTC peers with no signaling attached, so a test can
//!   connect them to each other in-process. The publisher sends synthetic VP8 and Opus (see
//!   [`crate::media`]) through static RTP tracks and answers keyframe requests like an encoder;
//!   the subscriber records every RTP packet it receives.
//! - [`Host`] and [`Viewer`] join a room over the WebSocket and drive a publisher or subscriber
//!   through the server's offer/answer flow, trickling their own ICE candidates. They deref to
//!   the peer they drive, so `viewer.packets(MediaKind::Video)` and `host.plis_received()` work.
//!
//! Both peers use the default interceptors of `webrtc` 0.21 (NACK generator and responder,
//! RTCP reports, TWCC receiver): the subscriber NACKs lost video and the publisher answers NACKs
//! by retransmission, as a browser would. Nothing here sleeps to reach a deadline: waits are
//! driven by events (`watch` channels) and bounded by timeouts.
//!
//! Tests using these clients talk to real sockets, so they must not run on paused Tokio time
//! (`start_paused` would auto-advance the clock while the runtime waits for the network and
//! fire every timeout early).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

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
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceConnectionState, RTCIceGatheringState, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::runtime::Runtime;

use marquee_protocol::wire::{
    ClientMessage, ErrorBody, ErrorCode, IceCandidate, Limits, MediaKind, PROTOCOL_VERSION, Role,
    RoomMessage, ServerMessage,
};

use crate::media::{
    OPUS_TICKS_PER_PACKET, PayloadTag, VP8_CLOCK_RATE, is_vp8_keyframe_start, opus_payload,
    vp8_frame_payloads,
};
use crate::relay::{LossyRelay, rewrite_candidates};

/// How long any `recv`, connect or negotiation step waits by default before failing. Generous
/// for loopback (everything normally takes milliseconds) so a slow CI machine does not flake,
/// yet bounded so a bug fails the test instead of hanging it.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Payload type the publisher offers for VP8 (the common browser choice).
pub const VP8_PAYLOAD_TYPE: u8 = 96;
/// Payload type the publisher offers for Opus (the common browser choice).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Pace of ICE connectivity checks. webrtc-rs defaults to 200 ms between checks, which alone
/// would cost a viewer up to 200 ms of join time; browsers pace checks at about 50 ms (RFC 8445
/// §14.2 Ta). With 28 attempts a candidate pair is still tried for 1.4 s, as by default.
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);

// ── WebSocket ────────────────────────────────────────────────────────────────────────────────

/// A server `error` message, as an error value: `recv_until` and `join` fail with it when the
/// server reports an error the caller was not waiting for. Get the code back with
/// [`server_error_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError(pub ErrorBody);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The wire code (`room_not_found`), which is what users look up in docs/protocol.md.
        let code = serde_json::to_value(self.0.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", self.0.code));
        write!(f, "server error {code}: {}", self.0.message)
    }
}

impl std::error::Error for ServerError {}

/// The code of the [`ServerError`] inside `err`, if that is what it is.
pub fn server_error_code(err: &anyhow::Error) -> Option<ErrorCode> {
    err.downcast_ref::<ServerError>().map(|e| e.0.code)
}

/// The answer to a successful `join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub room: String,
    pub peer_id: String,
    pub role: Role,
    pub host_key: Option<String>,
    pub limits: Limits,
    /// STUN/TURN servers the server handed out (with TURN credentials).
    pub ice_servers: Vec<marquee_protocol::ice::IceServer>,
}

impl Joined {
    /// The fields of a `joined` message; `None` for any other message.
    pub fn from_message(message: ServerMessage) -> Option<Self> {
        match message {
            ServerMessage::Joined {
                version: _,
                room,
                peer_id,
                role,
                host_key,
                limits,
                ice_servers,
            } => Some(Self {
                room,
                peer_id,
                role,
                host_key,
                limits,
                ice_servers,
            }),
            _ => None,
        }
    }
}

/// The sending half of a WebSocket connection; cheap to clone. Messages are queued to a writer
/// task in order, so `send` does not wait for the network.
#[derive(Clone)]
pub struct WsSender {
    tx: mpsc::UnboundedSender<Message>,
}

impl WsSender {
    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.send_raw(serde_json::to_string(message)?)
    }

    /// Sends any text frame, e.g. malformed JSON for error-path tests.
    pub fn send_raw(&self, text: impl Into<String>) -> Result<()> {
        self.send_frame(Message::text(text.into()))
    }

    /// Sends any WebSocket frame (binary, close, …).
    pub fn send_frame(&self, frame: Message) -> Result<()> {
        self.tx
            .send(frame)
            .map_err(|_| anyhow!("the WebSocket writer has stopped (connection closed)"))
    }
}

/// The receiving half: server messages in arrival order. Every wait is bounded.
pub struct WsReceiver {
    rx: mpsc::UnboundedReceiver<Result<ServerMessage>>,
}

impl WsReceiver {
    /// The next message, within [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Result<ServerMessage> {
        self.recv_within(RECV_TIMEOUT).await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Result<ServerMessage> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(item)) => item,
            Ok(None) => bail!("WebSocket closed"),
            Err(_) => bail!("no server message within {timeout:?}"),
        }
    }

    /// The first message matching `pred` within [`RECV_TIMEOUT`], skipping others (such as
    /// `roomState`, which the server sends at any time). An `error` message that `pred` does not
    /// match fails the wait with a [`ServerError`] rather than being skipped.
    pub async fn recv_until(
        &mut self,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.recv_until_within(RECV_TIMEOUT, pred).await
    }

    pub async fn recv_until_within(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(message))) if pred(&message) => return Ok(message),
                Ok(Some(Ok(ServerMessage::Error(body)))) => {
                    return Err(anyhow::Error::new(ServerError(body)))
                        .with_context(|| format!("while waiting; skipped {skipped:?}"));
                }
                Ok(Some(Ok(other))) => skipped.push(message_type(&other)),
                Ok(Some(Err(err))) => return Err(err),
                Ok(None) => bail!("WebSocket closed while waiting; skipped {skipped:?}"),
                Err(_) => bail!("no matching message within {timeout:?}; skipped {skipped:?}"),
            }
        }
    }

    /// Waits for an `error` message (skipping others) and checks its code.
    pub async fn expect_error(&mut self, code: ErrorCode) -> Result<ErrorBody> {
        match self
            .recv_until(|m| matches!(m, ServerMessage::Error(_)))
            .await?
        {
            ServerMessage::Error(body) if body.code == code => Ok(body),
            ServerMessage::Error(body) => bail!("expected error {code:?}, got {body:?}"),
            _ => unreachable!("recv_until returned a non-error"),
        }
    }

    /// A message already received, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<ServerMessage>> {
        self.rx.try_recv().ok()
    }

    /// Waits until the server closes the connection, skipping any messages before that.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(_) => bail!("connection still open after {timeout:?}"),
            }
        }
    }
}

/// A WebSocket client of `ws://ADDR/ws` speaking [`ClientMessage`] / [`ServerMessage`].
/// Dropping it closes the connection abruptly (both tasks aborted, TCP closed); [`close`]
/// sends a close frame first.
///
/// [`close`]: WsClient::close
pub struct WsClient {
    sender: WsSender,
    receiver: WsReceiver,
    tasks: TaskGuard,
}

impl WsClient {
    pub async fn connect(server: SocketAddr) -> Result<Self> {
        Self::connect_url(&format!("ws://{server}/ws")).await
    }

    pub async fn connect_url(url: &str) -> Result<Self> {
        let (stream, _response) =
            tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .with_context(|| format!("connecting to {url} timed out"))?
                .with_context(|| format!("connecting to {url}"))?;
        Ok(Self::from_stream(stream))
    }

    /// Connects from a chosen local address (another loopback IP, 127.0.0.2, is another
    /// client to the server's per-IP limits). Fails with the server's HTTP status, e.g. a
    /// `429` from the upgrade limit.
    pub async fn connect_from(server: SocketAddr, local: std::net::IpAddr) -> Result<Self> {
        let url = format!("ws://{server}/ws");
        let socket = match local {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let connect = async {
            let tcp = socket.connect(server).await?;
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
            anyhow::Ok(tokio_tungstenite::client_async(url.as_str(), stream).await?)
        };
        let (stream, _response) = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .with_context(|| format!("connecting to {url} timed out"))?
            .with_context(|| format!("connecting to {url} from {local}"))?;
        Ok(Self::from_stream(stream))
    }

    fn from_stream(
        stream: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Self {
        let (mut sink, mut stream) = stream.split();

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                let is_close = matches!(frame, Message::Close(_));
                if sink.send(frame).await.is_err() || is_close {
                    break;
                }
            }
            let _ = sink.close().await;
        });

        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(frame) = stream.next().await {
                let item = match frame {
                    Ok(Message::Text(text)) => serde_json::from_str::<ServerMessage>(&text)
                        .with_context(|| format!("undecodable server message: {}", text.as_str())),
                    Ok(Message::Binary(data)) => {
                        Err(anyhow!("unexpected binary frame of {} bytes", data.len()))
                    }
                    Ok(Message::Close(_)) => break,
                    // Pings are answered by tungstenite itself.
                    Ok(_) => continue,
                    Err(err) => Err(anyhow!("WebSocket read failed: {err}")),
                };
                let failed = item.is_err();
                if in_tx.send(item).is_err() || failed {
                    break;
                }
            }
        });

        Self {
            sender: WsSender { tx: out_tx },
            receiver: WsReceiver { rx: in_rx },
            tasks: TaskGuard(vec![writer, reader]),
        }
    }

    /// A clone of the sending half, e.g. for a task that trickles candidates.
    pub fn sender(&self) -> WsSender {
        self.sender.clone()
    }

    pub fn receiver(&mut self) -> &mut WsReceiver {
        &mut self.receiver
    }

    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.sender.send(message)
    }

    pub fn send_raw(&self, text: impl Into<String>) -> Result<()> {
        self.sender.send_raw(text)
    }

    pub async fn recv(&mut self) -> Result<ServerMessage> {
        self.receiver.recv().await
    }

    pub async fn recv_within(&mut self, timeout: Duration) -> Result<ServerMessage> {
        self.receiver.recv_within(timeout).await
    }

    pub async fn recv_until(
        &mut self,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.receiver.recv_until(pred).await
    }

    pub async fn recv_until_within(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.receiver.recv_until_within(timeout, pred).await
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> Result<ErrorBody> {
        self.receiver.expect_error(code).await
    }

    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<()> {
        self.receiver.wait_closed(timeout).await
    }

    /// Sends `join` with this protocol version and waits for `joined`; an `error` instead fails
    /// with a [`ServerError`].
    pub async fn join(&mut self, role: Role, room: Option<&str>, name: &str) -> Result<Joined> {
        self.join_authorized(role, room, name, None).await
    }

    /// [`join`](Self::join) with an access token (`None` against a `--dev` server).
    pub async fn join_authorized(
        &mut self,
        role: Role,
        room: Option<&str>,
        name: &str,
        token: Option<&str>,
    ) -> Result<Joined> {
        self.join_with(ClientMessage::Room(RoomMessage::Join {
            version: PROTOCOL_VERSION,
            room: room.map(str::to_owned),
            name: name.to_owned(),
            role,
            host_key: None,
            token: token.map(str::to_owned),
        }))
        .await
    }

    /// Sends any `join` message and waits for `joined`.
    pub async fn join_with(&mut self, join: ClientMessage) -> Result<Joined> {
        self.send(&join)?;
        let joined = self
            .recv_until(|m| matches!(m, ServerMessage::Joined { .. }))
            .await
            .context("waiting for joined")?;
        Ok(Joined::from_message(joined).expect("recv_until returned another message"))
    }

    /// Sends a close frame and waits (bounded) for the writer to flush it.
    pub async fn close(mut self) {
        let _ = self.sender.send_frame(Message::Close(None));
        let writer = self.tasks.0.remove(0);
        let _ = tokio::time::timeout(RECV_TIMEOUT, writer).await;
    }

    fn into_parts(self) -> (WsSender, WsReceiver, TaskGuard) {
        (self.sender, self.receiver, self.tasks)
    }
}

/// The `type` tag of a server message, for error reports.
fn message_type(message: &ServerMessage) -> &'static str {
    match message {
        ServerMessage::Joined { .. } => "joined",
        ServerMessage::Offer { .. } => "offer",
        ServerMessage::Answer { .. } => "answer",
        ServerMessage::RoomState(_) => "roomState",
        ServerMessage::MediaState { .. } => "mediaState",
        ServerMessage::Pong { .. } => "pong",
        ServerMessage::Error(_) => "error",
        ServerMessage::PartyJoined { .. } => "partyJoined",
        ServerMessage::PartyEvent(_) => "partyEvent",
        ServerMessage::PartyState(_) => "partyState",
        ServerMessage::Ack { .. } => "ack",
        ServerMessage::TimeReply { .. } => "timeReply",
    }
}

// ── WebRTC peer ──────────────────────────────────────────────────────────────────────────────

/// A webrtc peer connection bound to 127.0.0.1 with its events turned into channels. The
/// connection is closed when this is dropped.
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
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
    async fn build(
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
fn spawn_candidate_trickle(
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
    peer: Peer,
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

    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.peer.wait_connected(timeout).await
    }

    pub fn connection_state(&self) -> RTCPeerConnectionState {
        self.peer.connection_state()
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
    peer: Peer,
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

    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        self.peer.wait_connected(timeout).await
    }

    pub fn connection_state(&self) -> RTCPeerConnectionState {
        self.peer.connection_state()
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

impl Drop for Subscriber {
    fn drop(&mut self) {
        for task in lock(&self.recorder.tasks).drain(..) {
            task.abort();
        }
    }
}

// ── Host ─────────────────────────────────────────────────────────────────────────────────────

/// How a [`Host`] joins and publishes.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// `None` creates a room with a fresh code.
    pub room: Option<String>,
    pub name: String,
    pub host_key: Option<String>,
    /// Access token (JWT) sent with `join`; `None` against a `--dev` server.
    pub token: Option<String>,
    pub media: MediaConfig,
    /// Start the generator once connected (otherwise call `start_media` or `send_*`).
    pub start_media: bool,
    /// Send an empty `candidate` (end of candidates) when gathering completes.
    pub end_of_candidates: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            room: None,
            name: "host".to_owned(),
            host_key: None,
            token: None,
            media: MediaConfig::default(),
            start_media: true,
            end_of_candidates: true,
        }
    }
}

/// A host publishing over a Marquee server: joins as host, offers its VP8 and Opus tracks,
/// applies the server's answer, trickles its candidates, and (by default) streams synthetic
/// media. Derefs to its [`Publisher`].
pub struct Host {
    publisher: Publisher,
    ws: WsClient,
    joined: Joined,
    _trickle: TaskGuard,
}

impl Host {
    /// Joins a fresh room with default options; returns once media is connected, with the
    /// generator started (the server learns the tracks from the first packets, just after).
    pub async fn join(server: SocketAddr) -> Result<Self> {
        Self::join_with(server, HostOptions::default()).await
    }

    pub async fn join_with(server: SocketAddr, options: HostOptions) -> Result<Self> {
        let publisher = Publisher::new(options.media.clone()).await?;
        let mut ws = WsClient::connect(server).await?;
        let joined = ws
            .join_with(ClientMessage::Room(RoomMessage::Join {
                version: PROTOCOL_VERSION,
                room: options.room.clone(),
                name: options.name.clone(),
                role: Role::Host,
                host_key: options.host_key.clone(),
                token: options.token.clone(),
            }))
            .await
            .context("host join")?;

        let offer = publisher.create_offer().await?;
        ws.send(&ClientMessage::Room(RoomMessage::Offer {
            sdp: offer.clone(),
        }))?;
        let candidates = publisher
            .peer
            .take_candidates()
            .context("candidates already taken")?;
        let trickle = spawn_candidate_trickle(
            candidates,
            ws.sender(),
            first_mid(&offer),
            options.end_of_candidates,
        );
        let answer = match ws
            .recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
            .await
            .context("waiting for the server's answer")?
        {
            ServerMessage::Answer { sdp } => sdp,
            _ => unreachable!("recv_until returned another message"),
        };
        publisher.apply_answer(&answer).await?;
        publisher
            .wait_connected(RECV_TIMEOUT)
            .await
            .context("host media connection")?;
        if options.start_media {
            publisher.start_media();
        }
        Ok(Self {
            publisher,
            ws,
            joined,
            _trickle: TaskGuard(vec![trickle]),
        })
    }

    pub fn room(&self) -> &str {
        &self.joined.room
    }

    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// The host's WebSocket, e.g. to wait for `roomState` or send `leave`.
    pub fn ws(&mut self) -> &mut WsClient {
        &mut self.ws
    }

    /// Sends a new offer on the same connection and applies the server's answer (republish).
    pub async fn renegotiate(&mut self) -> Result<()> {
        let offer = self.publisher.create_offer().await?;
        self.ws
            .send(&ClientMessage::Room(RoomMessage::Offer { sdp: offer }))?;
        let answer = match self
            .ws
            .recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
            .await?
        {
            ServerMessage::Answer { sdp } => sdp,
            _ => unreachable!("recv_until returned another message"),
        };
        self.publisher.apply_answer(&answer).await
    }

    /// Stops media, closes the peer connection and the WebSocket (gracefully: a close frame).
    /// Dropping a `Host` instead is an abrupt disconnect.
    pub async fn close(self) -> Result<()> {
        let Self { publisher, ws, .. } = self;
        let closed = publisher.close().await;
        ws.close().await;
        closed
    }
}

impl Deref for Host {
    type Target = Publisher;

    fn deref(&self) -> &Publisher {
        &self.publisher
    }
}

// ── Viewer ───────────────────────────────────────────────────────────────────────────────────

/// The signaling milestones of a viewer's join; the media ones are on its [`Peer`].
#[derive(Debug, Clone, Copy)]
pub struct JoinTimes {
    /// Before the subscriber was built and the WebSocket dialed.
    pub started: Instant,
    /// The WebSocket handshake completed (`join` is sent right after).
    pub ws_open: Instant,
    /// `joined` arrived.
    pub joined: Instant,
}

/// How a [`Viewer`] joins.
#[derive(Clone)]
pub struct ViewerOptions {
    pub name: String,
    /// Route media through this relay: every server offer's candidate is rewritten to it.
    pub relay: Option<Arc<LossyRelay>>,
    /// Route media through this address (a relay of the caller's): every server offer's
    /// candidates are rewritten to it.
    pub route_via: Option<SocketAddr>,
    pub subscriber: SubscriberOptions,
    /// Send an empty `candidate` (end of candidates) when gathering completes.
    pub end_of_candidates: bool,
    /// Access token (JWT) sent with `join`; `None` against a `--dev` server.
    pub token: Option<String>,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        Self {
            token: None,
            name: "viewer".to_owned(),
            relay: None,
            route_via: None,
            subscriber: SubscriberOptions::default(),
            end_of_candidates: true,
        }
    }
}

/// A viewer over a Marquee server: joins a room, answers every server `offer` (the first and
/// any renegotiation) with a receive-only answer, trickles its candidates, and records what it
/// receives. Derefs to its [`Subscriber`]. Server messages other than offers (and offers too,
/// after they are answered) are readable with [`recv`](Viewer::recv) and friends; a failure to
/// answer an offer surfaces there as an error.
pub struct Viewer {
    subscriber: Arc<Subscriber>,
    sender: WsSender,
    messages: WsReceiver,
    joined: Joined,
    times: JoinTimes,
    _tasks: TaskGuard,
    _ws_tasks: TaskGuard,
}

impl Viewer {
    pub async fn join(server: SocketAddr, room: &str) -> Result<Self> {
        Self::join_with(server, room, ViewerOptions::default()).await
    }

    /// Joins with media routed through `relay` (for loss and retransmission tests).
    pub async fn join_via_relay(
        server: SocketAddr,
        room: &str,
        relay: Arc<LossyRelay>,
    ) -> Result<Self> {
        Self::join_with(
            server,
            room,
            ViewerOptions {
                relay: Some(relay),
                ..ViewerOptions::default()
            },
        )
        .await
    }

    /// Joins and returns at `joined`; media negotiation continues in the background (wait for
    /// it with `wait_connected` or `wait_for`).
    pub async fn join_with(server: SocketAddr, room: &str, options: ViewerOptions) -> Result<Self> {
        let started = now();
        let subscriber = Arc::new(Subscriber::with_options(options.subscriber.clone()).await?);
        let mut ws = WsClient::connect(server).await?;
        let ws_open = now();
        ws.send(&ClientMessage::Room(RoomMessage::Join {
            version: PROTOCOL_VERSION,
            room: Some(room.to_owned()),
            name: options.name.clone(),
            role: Role::Viewer,
            host_key: None,
            token: options.token.clone(),
        }))?;
        // Whatever arrives before `joined` (an early offer or roomState) is kept for the
        // negotiation loop rather than skipped.
        let mut early = Vec::new();
        let joined = loop {
            match ws.recv().await.context("viewer join")? {
                ServerMessage::Error(body) => {
                    return Err(anyhow::Error::new(ServerError(body))).context("viewer join");
                }
                message => match Joined::from_message(message.clone()) {
                    Some(joined) => break joined,
                    None => early.push(message),
                },
            }
        };
        let times = JoinTimes {
            started,
            ws_open,
            joined: now(),
        };
        let (sender, receiver, ws_tasks) = ws.into_parts();
        let (forward_tx, forward_rx) = mpsc::unbounded_channel();
        let negotiation = tokio::spawn(answer_offers(
            early,
            receiver,
            sender.clone(),
            Arc::clone(&subscriber),
            options,
            forward_tx,
        ));
        Ok(Self {
            subscriber,
            sender,
            messages: WsReceiver { rx: forward_rx },
            joined,
            times,
            _tasks: TaskGuard(vec![negotiation]),
            _ws_tasks: ws_tasks,
        })
    }

    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// When `join` was sent: the start of join-to-first-frame measurements.
    pub fn join_sent_at(&self) -> Instant {
        self.times.ws_open
    }

    /// When the join started, the WebSocket opened and `joined` arrived.
    pub fn join_times(&self) -> JoinTimes {
        self.times
    }

    pub fn sender(&self) -> WsSender {
        self.sender.clone()
    }

    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.sender.send(message)
    }

    /// Server messages other than those consumed by negotiation; see the type docs.
    pub fn messages(&mut self) -> &mut WsReceiver {
        &mut self.messages
    }

    pub async fn recv(&mut self) -> Result<ServerMessage> {
        self.messages.recv().await
    }

    pub async fn recv_until(
        &mut self,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.messages.recv_until(pred).await
    }

    pub async fn recv_until_within(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.messages.recv_until_within(timeout, pred).await
    }

    pub fn leave(&self) -> Result<()> {
        self.sender
            .send(&ClientMessage::Room(RoomMessage::Leave {}))
    }

    /// Closes the peer connection and the WebSocket (a close frame). Dropping a `Viewer`
    /// instead is an abrupt disconnect.
    pub async fn close(self) -> Result<()> {
        let closed = self.subscriber.close().await;
        let _ = self.sender.send_frame(Message::Close(None));
        // The writer flushes the close frame on its own; give it a moment bounded by the
        // server's reply (the reader ending).
        let Self { mut messages, .. } = self;
        let _ = messages.wait_closed(Duration::from_secs(1)).await;
        closed
    }
}

impl Deref for Viewer {
    type Target = Subscriber;

    fn deref(&self) -> &Subscriber {
        &self.subscriber
    }
}

/// The viewer's negotiation loop: answers each server offer, starts trickling after the first
/// answer, and forwards every message to the test.
async fn answer_offers(
    early: Vec<ServerMessage>,
    mut incoming: WsReceiver,
    sender: WsSender,
    subscriber: Arc<Subscriber>,
    options: ViewerOptions,
    forward: mpsc::UnboundedSender<Result<ServerMessage>>,
) {
    let mut candidates = subscriber.peer.take_candidates();
    let mut trickle = TaskGuard(Vec::new());
    let mut early = early.into_iter();
    loop {
        let item = match early.next() {
            Some(message) => Ok(message),
            None => match incoming.rx.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        if let Ok(ServerMessage::Offer { sdp }) = &item {
            let answered = async {
                let offer = match (&options.relay, options.route_via) {
                    (Some(relay), _) => relay.rewrite_offer(sdp)?,
                    (None, Some(via)) => rewrite_candidates(sdp, via).0,
                    (None, None) => sdp.clone(),
                };
                let answer = subscriber.answer(&offer).await?;
                sender.send(&ClientMessage::Room(RoomMessage::Answer {
                    sdp: answer.clone(),
                }))?;
                anyhow::Ok(answer)
            }
            .await;
            match answered {
                Ok(answer) => {
                    if let Some(candidates) = candidates.take() {
                        trickle.0.push(spawn_candidate_trickle(
                            candidates,
                            sender.clone(),
                            first_mid(&answer),
                            options.end_of_candidates,
                        ));
                    }
                }
                Err(err) => {
                    let _ = forward.send(Err(err.context("answering the server's offer")));
                    continue;
                }
            }
        }
        let _ = forward.send(item);
    }
}

// ── Helpers ──────────────────────────────────────────────────────────────────────────────────

/// Aborts its tasks when dropped, so no test leaves work running behind it.
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Re-checks `pred` each time `changes` moves, until it holds or `timeout` passes.
async fn wait_until<T: ?Sized>(
    changes: &watch::Sender<u64>,
    timeout: Duration,
    target: &T,
    mut pred: impl FnMut(&T) -> bool,
) -> Result<()> {
    let mut changed = changes.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        changed.borrow_and_update();
        if pred(target) {
            return Ok(());
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => bail!("the peer went away while waiting"),
            Err(_) => bail!("condition not met within {timeout:?}"),
        }
    }
}

/// The clock, read at this one marked place (GUIDE §2.2): these clients are drivers that
/// timestamp real network events, as a browser would.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the original failure behind a poison error.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A random 32-bit value (SSRCs, initial sequence numbers and timestamps, as RFC 3550 §5.1
/// asks), from the standard library's per-process random hasher keys.
fn random_u32() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) as u32
}
