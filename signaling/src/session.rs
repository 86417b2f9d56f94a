//! One WebSocket session: parses client messages, talks to the rooms task and the SFU, and
//! writes server messages. Bad input gets an error with a stable code; the session goes on.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use sfu::{ConnectionState, PeerId, SfuEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::AppState;
use crate::auth::{Grant, Grants};
use crate::codes::RoomCode;
use crate::errors::Failure;
use crate::join_trace::{JoinTrace, Stage};
use crate::limits::Limiter;
use crate::mailbox::{OUTBOX_CAPACITY, Outbox, SFU_EVENTS_CAPACITY, SessionEvent, SessionId};
use crate::protocol::{
    ClientMessage, ErrorBody, ErrorCode, IceCandidate, Limits, MediaState, PROTOCOL_VERSION, Role,
    RoomMessage, ServerMessage, decode_client_message,
};
use crate::rooms::JoinRequest;
use crate::telemetry::JoinKind;
use crate::wall_clock;

mod party;

use party::{EventDelivery, PartyMembership};

/// The server pings an idle client this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// ...and closes the session when it has heard nothing for this long (a phone that slept,
/// a TV that lost Wi-Fi), so dead viewers do not count as watching.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest display name kept; longer names are cut.
const MAX_NAME_CHARS: usize = 64;

struct Membership {
    room: RoomCode,
    role: Role,
    peer: Option<PeerId>,
}

struct Session {
    id: SessionId,
    state: AppState,
    outbox: Outbox,
    sfu_events: mpsc::Sender<SfuEvent>,
    membership: Option<Membership>,
    party: Option<PartyMembership>,
    /// When the message being handled arrived (server wall clock, ms): a clock probe's t1.
    received_ms: f64,
    /// This connection's message budget.
    messages: Limiter,
    /// The trace of the live-room join in progress, until media connects.
    join_trace: Option<JoinTrace>,
    /// What the party token granted (everything in dev mode).
    party_grants: Grants,
}

/// Runs a session until the client goes away or the server shuts down.
pub async fn run_session(mut socket: WebSocket, state: AppState, id: SessionId) {
    let (outbox_tx, mut outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let (sfu_tx, mut sfu_rx) = mpsc::channel(SFU_EVENTS_CAPACITY);
    let shutdown = state.shutdown.clone();
    let limits_rate = state.limits.messages;
    let metrics = state.metrics.clone();
    let mut session = Session {
        id,
        state,
        outbox: Outbox::new(outbox_tx),
        sfu_events: sfu_tx,
        membership: None,
        party: None,
        received_ms: 0.0,
        messages: Limiter::new(limits_rate),
        join_trace: None,
        party_grants: Grants::default(),
    };
    metrics.session_opened("ws");
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    let mut last_heard = now();
    loop {
        let replies: Vec<ServerMessage> = tokio::select! {
            frame = socket.recv() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = now();
                session.received_ms = wall_clock::now_ms();
                match frame {
                    // Boxed: the handlers' futures (joins, party commands over the store)
                    // are kilobytes, and inline they would make every idle session's task
                    // that large; a message is rare enough to pay one allocation.
                    Message::Text(text) => Box::pin(session.handle_text(&text)).await,
                    Message::Binary(_) => vec![ServerMessage::error(
                        ErrorCode::BadMessage,
                        "binary frames are not part of the protocol; send JSON text",
                    )],
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => vec![],
                }
            }
            Some(event) = outbox_rx.recv() => match event {
                SessionEvent::RoomState(state) => {
                    vec![ServerMessage::RoomState(Arc::unwrap_or_clone(state))]
                }
                SessionEvent::Replaced => {
                    Box::pin(session.leave_room()).await;
                    vec![ServerMessage::error(
                        ErrorCode::SessionReplaced,
                        "this host joined again from another connection",
                    )]
                }
                SessionEvent::PartyEvent(shared) => match Box::pin(session.on_party_event(&shared.event)).await {
                    EventDelivery::Shared => {
                        // Serialized once for every member of the party.
                        if socket.send(Message::Text(shared.text.clone())).await.is_err() {
                            break;
                        }
                        vec![]
                    }
                    EventDelivery::Instead(replies) => replies,
                },
                SessionEvent::PartyState(state) => {
                    Box::pin(session.on_party_state(Arc::unwrap_or_clone(state))).await
                }
                SessionEvent::PartyReplaced => {
                    // The successor owns the member now: leave without telling the party.
                    session.party = None;
                    vec![ServerMessage::error(
                        ErrorCode::SessionReplaced,
                        "this member joined again from another connection",
                    )]
                }
            },
            Some(event) = sfu_rx.recv() => session.handle_sfu_event(event),
            _ = keepalive.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT {
                    tracing::debug!(session = %id, "closing idle session");
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                vec![]
            }
            _ = shutdown.cancelled() => {
                let bye = ServerMessage::error(ErrorCode::ShuttingDown, "the server is shutting down");
                let _ = send(&mut socket, &bye).await;
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
        };
        for reply in &replies {
            if send(&mut socket, reply).await.is_err() {
                break;
            }
        }
    }
    Box::pin(session.leave_room()).await;
    Box::pin(session.leave_party(false)).await;
    metrics.session_closed("ws");
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("server messages always serialize");
    socket.send(Message::Text(text.into())).await
}

impl Session {
    async fn handle_text(&mut self, text: &str) -> Vec<ServerMessage> {
        if let Err(retry) = self.messages.check() {
            // The message is dropped, the connection stays: a buggy client loop recovers
            // once it slows down, and other sessions never notice.
            self.state.metrics.rate_limited("message");
            return vec![ServerMessage::error(
                ErrorCode::RateLimited,
                format!(
                    "too many messages on this connection; retry in {} ms",
                    retry.0.as_millis().max(1)
                ),
            )];
        }
        let message = match decode_client_message(text, self.state.config.max_message_bytes) {
            Ok(message) => message,
            Err(err) => return vec![ServerMessage::error(err.code(), err.to_string())],
        };
        let op_id = message.op_id().map(str::to_owned);
        match self.handle(message).await {
            Ok(replies) => replies,
            Err(Failure { code, message }) => {
                if code == ErrorCode::SyncUnavailable {
                    self.state.metrics.redis_error();
                }
                vec![ServerMessage::Error(ErrorBody {
                    code,
                    message,
                    op_id,
                })]
            }
        }
    }

    /// Every message goes to the part that handles it: the split is the wire type's own, so
    /// a new message type must be handled (a compile error otherwise, never a panic).
    async fn handle(&mut self, message: ClientMessage) -> Result<Vec<ServerMessage>, Failure> {
        match message {
            ClientMessage::Room(message) => self.handle_room(message).await,
            ClientMessage::Party(message) => self.handle_party(message).await,
        }
    }

    async fn handle_room(&mut self, message: RoomMessage) -> Result<Vec<ServerMessage>, Failure> {
        match message {
            RoomMessage::Ping { id } => Ok(vec![ServerMessage::Pong { id }]),
            RoomMessage::Join {
                version,
                room,
                name,
                role,
                host_key,
                token,
            } => {
                let kind = match role {
                    Role::Host => JoinKind::WsHost,
                    Role::Viewer => JoinKind::WsViewer,
                };
                let mut trace = JoinTrace::start(kind, room.as_deref());
                match self
                    .join(version, room, name, role, host_key, token, &trace)
                    .await
                {
                    Ok(replies) => {
                        if role == Role::Viewer {
                            trace.begin_negotiate();
                        }
                        self.join_trace = Some(trace);
                        Ok(replies)
                    }
                    Err(failure) => {
                        trace.refused(&self.state.metrics, failure.code);
                        Err(failure)
                    }
                }
            }
            RoomMessage::Offer { sdp } => {
                let membership = self.membership()?;
                if membership.role != Role::Host {
                    return Err(Failure::new(
                        ErrorCode::NotAllowed,
                        "viewers do not send offers; answer the server's offer".into(),
                    ));
                }
                let room = membership.room.clone();
                let stage = |stage| JoinTrace::stage_of(self.join_trace.as_ref(), stage);
                let peer = match membership.peer {
                    Some(peer) => peer,
                    None => {
                        let peer = self
                            .state
                            .sfu
                            .add_peer(
                                sfu::RoomId::new(room.as_str()),
                                sfu::Role::Publisher,
                                self.sfu_events.clone(),
                            )
                            .instrument(stage(Stage::SfuPeer))
                            .await
                            .map_err(Failure::from)?;
                        if let Some(m) = &mut self.membership {
                            m.peer = Some(peer);
                        }
                        peer
                    }
                };
                let answer = self
                    .state
                    .sfu
                    .offer(peer, sdp)
                    .instrument(stage(Stage::Negotiate))
                    .await
                    .map_err(Failure::from)?;
                if let Some(trace) = &mut self.join_trace {
                    trace.negotiated();
                }
                Ok(vec![ServerMessage::Answer { sdp: answer }])
            }
            RoomMessage::Answer { sdp } => {
                let membership = self.membership()?;
                if membership.role != Role::Viewer {
                    return Err(Failure::new(
                        ErrorCode::NotAllowed,
                        "the server never sends a host an offer".into(),
                    ));
                }
                let peer = membership.peer.ok_or_else(|| {
                    Failure::new(ErrorCode::NoOfferPending, "no offer was sent".to_owned())
                })?;
                self.state
                    .sfu
                    .answer(peer, sdp)
                    .await
                    .map_err(Failure::from)?;
                if let Some(trace) = &mut self.join_trace {
                    trace.negotiated();
                }
                Ok(vec![])
            }
            RoomMessage::Candidate { candidate } => {
                let membership = self.membership()?;
                let peer = membership.peer.ok_or_else(|| {
                    Failure::new(
                        ErrorCode::CandidateBeforeOffer,
                        "send the offer (or answer) before candidates".to_owned(),
                    )
                })?;
                self.state
                    .sfu
                    .candidate(peer, candidate_init(candidate))
                    .await
                    .map_err(Failure::from)?;
                Ok(vec![])
            }
            RoomMessage::Leave {} => {
                if self.membership.is_none() && self.party.is_none() {
                    return Err(Failure::new(
                        ErrorCode::NotJoined,
                        "not in a room or party".into(),
                    ));
                }
                self.leave_room().await;
                self.leave_party(true).await;
                Ok(vec![])
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn join(
        &mut self,
        version: u32,
        room: Option<String>,
        name: String,
        role: Role,
        host_key: Option<String>,
        token: Option<String>,
        trace: &JoinTrace,
    ) -> Result<Vec<ServerMessage>, Failure> {
        if version != PROTOCOL_VERSION {
            return Err(Failure::new(
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}"),
            ));
        }
        if self.membership.is_some() {
            return Err(Failure::new(
                ErrorCode::AlreadyJoined,
                "already in a room; send leave first".into(),
            ));
        }
        let room = (room.as_deref().map(RoomCode::parse).transpose()).map_err(Failure::from)?;
        let identity = {
            let _stage = trace.stage(Stage::Authorize).entered();
            let grant = match role {
                Role::Host => Grant::Publish,
                Role::Viewer => Grant::Subscribe,
            };
            // A host without a room asks for a fresh code: only a token for any room (`*`)
            // may do that.
            let scope = room.as_ref().map_or("", RoomCode::as_str);
            self.authorize(token.as_deref(), scope, grant)?
        };
        let name = clean_name(&name);
        let grant = self
            .state
            .rooms
            .join(JoinRequest {
                session: self.id,
                room,
                name,
                role,
                host_key,
                identity: identity.identity.clone(),
                outbox: self.outbox.clone(),
                wants_room_state: true,
            })
            .instrument(trace.stage(Stage::Admit))
            .await
            .map_err(Failure::from)?;
        let mut membership = Membership {
            room: grant.room.clone(),
            role,
            peer: None,
        };
        if role == Role::Viewer {
            // The viewer's peer exists from the start; the SFU offers as soon as there are
            // tracks, and again whenever they change.
            match self
                .state
                .sfu
                .add_peer(
                    sfu::RoomId::new(grant.room.as_str()),
                    sfu::Role::Subscriber,
                    self.sfu_events.clone(),
                )
                .instrument(trace.stage(Stage::SfuPeer))
                .await
            {
                Ok(peer) => membership.peer = Some(peer),
                Err(err) => {
                    self.state.rooms.leave(self.id, grant.room).await;
                    return Err(Failure::from(err));
                }
            }
        }
        self.membership = Some(membership);
        Ok(vec![ServerMessage::Joined {
            version: PROTOCOL_VERSION,
            room: grant.room.into_string(),
            peer_id: self.id.to_string(),
            role,
            host_key: grant.host_key,
            limits: Limits {
                max_message_bytes: self.state.config.max_message_bytes,
            },
            ice_servers: self
                .state
                .ice_servers(identity.identity.as_deref().unwrap_or(&self.id.to_string())),
        }])
    }

    /// Checks `token` for `grant` on `room` (`""` = a room not named yet, which only a
    /// token for `*` covers).
    pub(crate) fn authorize(
        &self,
        token: Option<&str>,
        room: &str,
        grant: Grant,
    ) -> Result<crate::auth::Identity, Failure> {
        let room = if room.is_empty() { "*" } else { room };
        self.state
            .access
            .check(token, room, grant, wall_clock::now_unix_secs())
            .map_err(|err| Failure::from(&err))
    }

    fn handle_sfu_event(&mut self, event: SfuEvent) -> Vec<ServerMessage> {
        let own_peer = self.membership.as_ref().and_then(|m| m.peer);
        match event {
            SfuEvent::Offer { peer, sdp } if Some(peer) == own_peer => {
                vec![ServerMessage::Offer { sdp }]
            }
            SfuEvent::Connection { peer, state } if Some(peer) == own_peer => {
                if state == ConnectionState::Connected
                    && let Some(trace) = self.join_trace.take()
                {
                    trace.connected(&self.state.metrics);
                }
                let state = match state {
                    ConnectionState::New | ConnectionState::Connecting => MediaState::Connecting,
                    ConnectionState::Connected => MediaState::Connected,
                    ConnectionState::Disconnected => MediaState::Disconnected,
                    ConnectionState::Failed | ConnectionState::Closed => MediaState::Failed,
                };
                vec![ServerMessage::MediaState { state }]
            }
            // An event for a peer this session already left.
            _ => vec![],
        }
    }

    fn membership(&self) -> Result<&Membership, Failure> {
        self.membership
            .as_ref()
            .ok_or_else(|| Failure::new(ErrorCode::NotJoined, "send join first".to_owned()))
    }

    /// Leaves the room and drops the media peer, if any.
    async fn leave_room(&mut self) {
        // A join still connecting ends its trace here (dropped: the spans close).
        self.join_trace = None;
        if let Some(m) = self.membership.take() {
            if let Some(peer) = m.peer {
                self.state.sfu.remove_peer(peer).await;
            }
            self.state.rooms.leave(self.id, m.room).await;
        }
    }
}

/// The session task's clock, for its keepalive and idle timeout (tokio's, so paused-time tests
/// drive it): the one marked read.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// A display name: trimmed, at most [`MAX_NAME_CHARS`] characters.
fn clean_name(name: &str) -> String {
    name.trim().chars().take(MAX_NAME_CHARS).collect()
}

fn candidate_init(c: IceCandidate) -> sfu::IceCandidateInit {
    sfu::IceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_m_line_index,
        username_fragment: c.username_fragment,
        ..Default::default()
    }
}
