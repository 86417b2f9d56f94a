//! One WebSocket session: parses client messages, talks to the rooms task and the SFU, and
//! writes server messages. Bad input gets an error with a stable code; the session goes on.

use std::fmt;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use sfu::{ConnectionState, PeerId, SfuError, SfuEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::AppState;
use crate::protocol::{
    ClientMessage, ErrorBody, ErrorCode, IceCandidate, Limits, MediaState, PROTOCOL_VERSION,
    PartyState, Role, RoomState, ServerMessage, decode_client_message,
};
use crate::rooms::JoinRequest;
use crate::wall_clock;

mod party;

use party::PartyMembership;

/// Messages queued for one session by other tasks (room and party state, party events).
/// When full the sender skips the message: snapshots are retried later, and a skipped party
/// event shows up as a gap that the session fills from the store. No task ever waits on a
/// slow session.
const OUTBOX_CAPACITY: usize = 256;
/// SFU events (offers, connection state) queued for one session.
const SFU_EVENTS_CAPACITY: usize = 32;
/// The server pings an idle client this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// ...and closes the session when it has heard nothing for this long (a phone that slept,
/// a TV that lost Wi-Fi), so dead viewers do not count as watching.
const IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// Longest display name kept; longer names are cut.
const MAX_NAME_CHARS: usize = 64;

/// Identifies a WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// What other tasks may tell a session.
#[derive(Debug)]
pub enum SessionEvent {
    RoomState(RoomState),
    /// The same host joined from a new connection; this one is stale.
    Replaced,
    PartyEvent(sync::Event),
    PartyState(PartyState),
    /// The same party member joined from a new connection; this one is stale.
    PartyReplaced,
}

/// The sending side of a session's mailbox.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::Sender<SessionEvent>);

impl Outbox {
    /// Queues a room snapshot; false if the session's mailbox is full.
    pub fn room_state(&self, state: RoomState) -> bool {
        self.offer(SessionEvent::RoomState(state))
    }

    pub fn replaced(&self) {
        let _ = self.0.try_send(SessionEvent::Replaced);
    }

    /// Queues a party event; false if the mailbox is full (the session fills the gap).
    pub fn party_event(&self, event: sync::Event) -> bool {
        self.offer(SessionEvent::PartyEvent(event))
    }

    /// Queues a party snapshot; false if the mailbox is full.
    pub fn party_state(&self, state: PartyState) -> bool {
        self.offer(SessionEvent::PartyState(state))
    }

    pub fn party_replaced(&self) {
        let _ = self.0.try_send(SessionEvent::PartyReplaced);
    }

    fn offer(&self, event: SessionEvent) -> bool {
        match self.0.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
        }
    }
}

struct Membership {
    room: String,
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
}

/// Runs a session until the client goes away or the server shuts down.
pub async fn run_session(mut socket: WebSocket, state: AppState, id: SessionId) {
    let (outbox_tx, mut outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let (sfu_tx, mut sfu_rx) = mpsc::channel(SFU_EVENTS_CAPACITY);
    let shutdown = state.shutdown.clone();
    let mut session = Session {
        id,
        state,
        outbox: Outbox(outbox_tx),
        sfu_events: sfu_tx,
        membership: None,
        party: None,
        received_ms: 0.0,
    };
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        let replies: Vec<ServerMessage> = tokio::select! {
            frame = socket.recv() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = Instant::now();
                session.received_ms = wall_clock::now_ms();
                match frame {
                    Message::Text(text) => session.handle_text(&text).await,
                    Message::Binary(_) => vec![ServerMessage::error(
                        ErrorCode::BadMessage,
                        "binary frames are not part of the protocol; send JSON text",
                    )],
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => vec![],
                }
            }
            Some(event) = outbox_rx.recv() => match event {
                SessionEvent::RoomState(state) => vec![ServerMessage::RoomState(state)],
                SessionEvent::Replaced => {
                    session.leave_room().await;
                    vec![ServerMessage::error(
                        ErrorCode::SessionReplaced,
                        "this host joined again from another connection",
                    )]
                }
                SessionEvent::PartyEvent(event) => session.on_party_event(event).await,
                SessionEvent::PartyState(state) => session.on_party_state(state).await,
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
    session.leave_room().await;
    session.leave_party(false).await;
}

async fn send(socket: &mut WebSocket, message: &ServerMessage) -> Result<(), axum::Error> {
    let text = serde_json::to_string(message).expect("server messages always serialize");
    socket.send(Message::Text(text.into())).await
}

impl Session {
    async fn handle_text(&mut self, text: &str) -> Vec<ServerMessage> {
        let message = match decode_client_message(text, self.state.config.max_message_bytes) {
            Ok(message) => message,
            Err(err) => return vec![ServerMessage::error(err.code(), err.to_string())],
        };
        let op_id = message.op_id().map(str::to_owned);
        match self.handle(message).await {
            Ok(replies) => replies,
            Err((code, message)) => vec![ServerMessage::Error(ErrorBody {
                code,
                message,
                op_id,
            })],
        }
    }

    async fn handle(&mut self, message: ClientMessage) -> Result<Vec<ServerMessage>, Failure> {
        match message {
            ClientMessage::Ping { id } => Ok(vec![ServerMessage::Pong { id }]),
            ClientMessage::Join {
                version,
                room,
                name,
                role,
                host_key,
            } => self.join(version, room, name, role, host_key).await,
            ClientMessage::Offer { sdp } => {
                let membership = self.membership()?;
                if membership.role != Role::Host {
                    return Err((
                        ErrorCode::NotAllowed,
                        "viewers do not send offers; answer the server's offer".into(),
                    ));
                }
                let room = membership.room.clone();
                let peer = match membership.peer {
                    Some(peer) => peer,
                    None => {
                        let peer = self
                            .state
                            .sfu
                            .add_peer(
                                sfu::RoomId::new(&room),
                                sfu::Role::Publisher,
                                self.sfu_events.clone(),
                            )
                            .await
                            .map_err(sfu_failure)?;
                        if let Some(m) = &mut self.membership {
                            m.peer = Some(peer);
                        }
                        peer
                    }
                };
                let answer = self.state.sfu.offer(peer, sdp).await.map_err(sfu_failure)?;
                Ok(vec![ServerMessage::Answer { sdp: answer }])
            }
            ClientMessage::Answer { sdp } => {
                let membership = self.membership()?;
                if membership.role != Role::Viewer {
                    return Err((
                        ErrorCode::NotAllowed,
                        "the server never sends a host an offer".into(),
                    ));
                }
                let peer = membership
                    .peer
                    .ok_or((ErrorCode::NoOfferPending, "no offer was sent".to_owned()))?;
                self.state
                    .sfu
                    .answer(peer, sdp)
                    .await
                    .map_err(sfu_failure)?;
                Ok(vec![])
            }
            ClientMessage::Candidate { candidate } => {
                let membership = self.membership()?;
                let peer = membership.peer.ok_or((
                    ErrorCode::CandidateBeforeOffer,
                    "send the offer (or answer) before candidates".to_owned(),
                ))?;
                self.state
                    .sfu
                    .candidate(peer, candidate_init(candidate))
                    .await
                    .map_err(sfu_failure)?;
                Ok(vec![])
            }
            ClientMessage::Leave {} => {
                if self.membership.is_none() && self.party.is_none() {
                    return Err((ErrorCode::NotJoined, "not in a room or party".into()));
                }
                self.leave_room().await;
                self.leave_party(true).await;
                Ok(vec![])
            }
            party_message => self.handle_party(party_message).await,
        }
    }

    async fn join(
        &mut self,
        version: u32,
        room: Option<String>,
        name: String,
        role: Role,
        host_key: Option<String>,
    ) -> Result<Vec<ServerMessage>, Failure> {
        if version != PROTOCOL_VERSION {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!("this server speaks protocol version {PROTOCOL_VERSION}"),
            ));
        }
        if self.membership.is_some() {
            return Err((
                ErrorCode::AlreadyJoined,
                "already in a room; send leave first".into(),
            ));
        }
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
                outbox: self.outbox.clone(),
            })
            .await
            .map_err(|r| (r.code, r.message))?;
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
                    sfu::RoomId::new(&grant.room),
                    sfu::Role::Subscriber,
                    self.sfu_events.clone(),
                )
                .await
            {
                Ok(peer) => membership.peer = Some(peer),
                Err(err) => {
                    self.state.rooms.leave(self.id, grant.room).await;
                    return Err(sfu_failure(err));
                }
            }
        }
        self.membership = Some(membership);
        Ok(vec![ServerMessage::Joined {
            version: PROTOCOL_VERSION,
            room: grant.room,
            peer_id: self.id.to_string(),
            role,
            host_key: grant.host_key,
            limits: Limits {
                max_message_bytes: self.state.config.max_message_bytes,
            },
        }])
    }

    fn handle_sfu_event(&mut self, event: SfuEvent) -> Vec<ServerMessage> {
        let own_peer = self.membership.as_ref().and_then(|m| m.peer);
        match event {
            SfuEvent::Offer { peer, sdp } if Some(peer) == own_peer => {
                vec![ServerMessage::Offer { sdp }]
            }
            SfuEvent::Connection { peer, state } if Some(peer) == own_peer => {
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
            .ok_or((ErrorCode::NotJoined, "send join first".to_owned()))
    }

    /// Leaves the room and drops the media peer, if any.
    async fn leave_room(&mut self) {
        if let Some(m) = self.membership.take() {
            if let Some(peer) = m.peer {
                self.state.sfu.remove_peer(peer).await;
            }
            self.state.rooms.leave(self.id, m.room).await;
        }
    }
}

/// An error to report to the client.
type Failure = (ErrorCode, String);

/// A display name: trimmed, at most [`MAX_NAME_CHARS`] characters.
fn clean_name(name: &str) -> String {
    name.trim().chars().take(MAX_NAME_CHARS).collect()
}

fn sfu_failure(err: SfuError) -> Failure {
    let code = match &err {
        SfuError::InvalidSdp(_) => ErrorCode::InvalidSdp,
        SfuError::NoOfferPending => ErrorCode::NoOfferPending,
        SfuError::CandidateBeforeDescription => ErrorCode::CandidateBeforeOffer,
        SfuError::InvalidCandidate(_) => ErrorCode::InvalidCandidate,
        SfuError::WrongRole(_) => ErrorCode::NotAllowed,
        SfuError::Stopped => ErrorCode::ShuttingDown,
        SfuError::UnknownPeer | SfuError::Internal(_) => ErrorCode::Internal,
    };
    (code, err.to_string())
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
