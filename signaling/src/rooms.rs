//! Room membership: who hosts, who watches, and the room state everyone is shown.
//!
//! One task owns all rooms (GUIDE §2.4); sessions talk to it through [`RoomsHandle`].
//! Room state is pushed coalesced, at most once per `room_state_interval` per room, so a
//! spike of N joins costs O(N) messages per interval instead of O(N²).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::codes::{InvalidCode, KEY_LEN, RoomCode, random_code};
use crate::mailbox::{Outbox, SessionId};
use crate::protocol::{ErrorCode, MediaKind, Participant, Role, RoomState, TrackInfo};

/// Pending requests to the rooms task before callers wait.
const ROOMS_QUEUE: usize = 1024;
/// A session asking to join a room (the fields of a protocol `join`, checked).
#[derive(Debug)]
pub struct JoinRequest {
    pub session: SessionId,
    /// `None`: a host asking for a fresh room.
    pub room: Option<RoomCode>,
    pub name: String,
    pub role: Role,
    pub host_key: Option<String>,
    /// The token's identity, when tokens are on: a host with the same identity takes the
    /// room over from its own stale session (a WHIP encoder reconnecting), like `host_key`.
    pub identity: Option<String>,
    /// Where room state (and a host's replacement) for this session goes.
    pub outbox: Outbox,
    /// Whether the session shows room state. WHIP/WHEP sessions have no channel to show it
    /// on; skipping them keeps a large WHEP audience from costing a snapshot each.
    pub wants_room_state: bool,
}

/// Capacity limits: past them a join is refused with `full` instead of every member of the
/// node getting worse service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// Live rooms on this node.
    pub max_rooms: usize,
    /// Members (host and viewers) of one room.
    pub max_peers_per_room: usize,
    /// Members of all rooms of this node.
    pub max_peers: usize,
}

impl Default for Admission {
    fn default() -> Self {
        // Sized from the measured capacity of one node (README: ~200 viewers joining in
        // 10 s at 1.5 Mbit/s on 2 cores); generous so that only a real overload is refused.
        Self {
            max_rooms: 1_000,
            max_peers_per_room: 2_000,
            max_peers: 5_000,
        }
    }
}

/// A granted join.
#[derive(Debug)]
pub struct Grant {
    pub room: RoomCode,
    /// For hosts: the key that lets this host take the room over from a stale session.
    pub host_key: Option<String>,
}

/// A refused join, with the protocol error to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Clone)]
pub struct RoomsHandle {
    tx: mpsc::Sender<Command>,
}

enum Command {
    Join {
        request: JoinRequest,
        reply: oneshot::Sender<Result<Grant, Refusal>>,
    },
    Leave {
        session: SessionId,
        room: RoomCode,
    },
    Tracks {
        room: RoomCode,
        tracks: Vec<TrackInfo>,
    },
}

impl RoomsHandle {
    pub async fn join(&self, request: JoinRequest) -> Result<Grant, Refusal> {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Command::Join { request, reply })
            .await
            .is_err()
        {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub async fn leave(&self, session: SessionId, room: RoomCode) {
        let _ = self.tx.send(Command::Leave { session, room }).await;
    }

    /// Records the tracks the SFU reports for a room.
    pub async fn set_tracks(&self, room: RoomCode, tracks: Vec<TrackInfo>) {
        let _ = self.tx.send(Command::Tracks { room, tracks }).await;
    }
}

fn stopped() -> Refusal {
    Refusal {
        code: ErrorCode::ShuttingDown,
        message: "the server is shutting down".into(),
    }
}

/// The rooms task's one clock read (tokio's, so paused-time tests drive it).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Spawns the rooms task.
pub fn spawn_rooms(room_state_interval: Duration, admission: Admission) -> RoomsHandle {
    let (tx, rx) = mpsc::channel(ROOMS_QUEUE);
    let rooms = Rooms {
        rooms: HashMap::new(),
        members: 0,
        admission,
    };
    tokio::spawn(rooms.run(rx, room_state_interval));
    RoomsHandle { tx }
}

struct Rooms {
    rooms: HashMap<RoomCode, Room>,
    /// Members of all rooms (kept in step with every insert and removal).
    members: usize,
    admission: Admission,
}

#[derive(Default)]
struct Room {
    host: Option<Member>,
    host_key: String,
    viewers: HashMap<SessionId, Member>,
    tracks: Vec<TrackInfo>,
    dirty: bool,
}

struct Member {
    session: SessionId,
    name: String,
    identity: Option<String>,
    outbox: Outbox,
    wants_room_state: bool,
}

impl Room {
    fn members(&self) -> usize {
        self.viewers.len() + usize::from(self.host.is_some())
    }
}

impl Rooms {
    /// A driver: room state is published `interval` after the first change that made it
    /// stale (so a join spike of N viewers costs each member one snapshot, not N), and the
    /// task sleeps while nothing changed.
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, interval: Duration) {
        let mut publish_at: Option<Instant> = None;
        loop {
            let publish = async {
                match publish_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => {
                        self.handle(command);
                        publish_at.get_or_insert_with(|| now() + interval);
                    }
                    None => return,
                },
                _ = publish => {
                    // A snapshot a full mailbox missed is retried next interval.
                    publish_at = self.publish_dirty().then(|| now() + interval);
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Join { request, reply } => {
                let _ = reply.send(self.join(request));
            }
            Command::Leave { session, room } => self.leave(session, &room),
            Command::Tracks { room, tracks } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.tracks = tracks;
                    r.dirty = true;
                }
            }
        }
    }

    fn join(&mut self, request: JoinRequest) -> Result<Grant, Refusal> {
        let JoinRequest {
            session,
            room,
            name,
            role,
            host_key,
            identity,
            outbox,
            wants_room_state,
        } = request;
        let member = Member {
            session,
            name,
            identity,
            outbox,
            wants_room_state,
        };
        let node_full = self.members >= self.admission.max_peers;
        match role {
            Role::Viewer => {
                let Some(code) = room else {
                    return Err(refusal(ErrorCode::InvalidRoom, "a viewer must name a room"));
                };
                let Some(r) = self.rooms.get_mut(&code) else {
                    return Err(refusal(
                        ErrorCode::RoomNotFound,
                        format!("room {code} does not exist"),
                    ));
                };
                if r.members() >= self.admission.max_peers_per_room {
                    return Err(refusal(
                        ErrorCode::Full,
                        format!(
                            "room {code} is full ({} members)",
                            self.admission.max_peers_per_room
                        ),
                    ));
                }
                if node_full {
                    return Err(server_full());
                }
                if r.viewers.insert(session, member).is_none() {
                    self.members += 1;
                }
                r.dirty = true;
                Ok(Grant {
                    room: code,
                    host_key: None,
                })
            }
            Role::Host => {
                let code = match room {
                    Some(code) => code,
                    None => self.unused_code(),
                };
                // Admission first, so a refused host leaves no empty room behind. A host
                // taking its own room back replaces a member and needs no new seat.
                match self.rooms.get(&code) {
                    Some(r) if r.host.is_some() => {
                        let key_matches = host_key.as_deref() == Some(r.host_key.as_str());
                        let same_identity = member.identity.is_some()
                            && r.host.as_ref().and_then(|h| h.identity.as_ref())
                                == member.identity.as_ref();
                        if !key_matches && !same_identity {
                            return Err(refusal(
                                ErrorCode::HostAlreadyPresent,
                                format!("room {code} already has a host"),
                            ));
                        }
                    }
                    existing => {
                        if existing.is_none() && self.rooms.len() >= self.admission.max_rooms {
                            return Err(refusal(
                                ErrorCode::Full,
                                format!(
                                    "this server has its maximum of {} rooms",
                                    self.admission.max_rooms
                                ),
                            ));
                        }
                        if node_full {
                            return Err(server_full());
                        }
                        if existing
                            .is_some_and(|r| r.members() >= self.admission.max_peers_per_room)
                        {
                            return Err(refusal(ErrorCode::Full, format!("room {code} is full")));
                        }
                    }
                }
                let r = self.rooms.entry(code.clone()).or_insert_with(|| Room {
                    host_key: random_code(KEY_LEN),
                    ..Room::default()
                });
                // The same host from a new connection: the stale session is told and dropped
                // from the room; the SFU hands its tracks to the new session.
                if let Some(old) = r.host.take() {
                    old.outbox.replaced();
                    self.members -= 1;
                }
                r.host = Some(member);
                self.members += 1;
                r.dirty = true;
                Ok(Grant {
                    room: code,
                    host_key: Some(r.host_key.clone()),
                })
            }
        }
    }

    fn leave(&mut self, session: SessionId, code: &RoomCode) {
        let Some(r) = self.rooms.get_mut(code) else {
            return;
        };
        if r.host.as_ref().is_some_and(|h| h.session == session) {
            r.host = None;
            self.members -= 1;
        }
        if r.viewers.remove(&session).is_some() {
            self.members -= 1;
        }
        r.dirty = true;
        if r.host.is_none() && r.viewers.is_empty() {
            self.rooms.remove(code);
        }
    }

    /// Sends every changed room's state to its members; whether one is still to be sent.
    fn publish_dirty(&mut self) -> bool {
        let mut pending = false;
        for (code, room) in &mut self.rooms {
            if !std::mem::take(&mut room.dirty) {
                continue;
            }
            let state = Arc::new(room.snapshot(code));
            let mut all_delivered = true;
            let members = room.host.iter().chain(room.viewers.values());
            for member in members.filter(|m| m.wants_room_state) {
                all_delivered &= member.outbox.room_state(state.clone());
            }
            // A full outbox missed this snapshot: try again next interval so every member
            // ends up with the latest state.
            room.dirty = !all_delivered;
            pending |= room.dirty;
        }
        pending
    }

    fn unused_code(&self) -> RoomCode {
        loop {
            let code = RoomCode::random();
            if !self.rooms.contains_key(&code) {
                return code;
            }
        }
    }
}

impl Room {
    /// Viewers are counted, not listed: a live event can have thousands.
    fn snapshot(&self, code: &RoomCode) -> RoomState {
        let participants = self
            .host
            .iter()
            .map(|h| Participant {
                peer_id: h.session.to_string(),
                name: h.name.clone(),
                role: Role::Host,
            })
            .collect();
        RoomState {
            room: code.to_string(),
            live: self.host.is_some() && self.tracks.iter().any(|t| t.active),
            participants,
            tracks: self.tracks.clone(),
            viewer_count: self.viewers.len(),
        }
    }
}

fn server_full() -> Refusal {
    refusal(
        ErrorCode::Full,
        "this server is at its maximum number of peers; try again shortly",
    )
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl From<InvalidCode> for Refusal {
    fn from(err: InvalidCode) -> Self {
        refusal(ErrorCode::InvalidRoom, err.to_string())
    }
}

/// Converts the SFU's view of a track into the protocol's.
pub fn track_info(track: &sfu::TrackInfo) -> TrackInfo {
    TrackInfo {
        id: track.id.to_string(),
        kind: match track.kind {
            sfu::MediaKind::Audio => MediaKind::Audio,
            sfu::MediaKind::Video => MediaKind::Video,
        },
        active: track.active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::SessionEvent;

    const INTERVAL: Duration = Duration::from_millis(200);

    /// A member of `room`, joined as `role`; returns its mailbox.
    async fn join(
        rooms: &RoomsHandle,
        session: u64,
        room: Option<&RoomCode>,
        role: Role,
    ) -> (Grant, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(64);
        let grant = rooms
            .join(JoinRequest {
                session: SessionId(session),
                room: room.cloned(),
                name: format!("member {session}"),
                role,
                host_key: None,
                identity: None,
                outbox: Outbox::new(tx),
                wants_room_state: true,
            })
            .await
            .expect("admitted");
        (grant, rx)
    }

    /// A join spike costs each member one room snapshot, sent one interval after the first
    /// change, with every newcomer counted; a room nobody joins or leaves sends nothing more.
    #[tokio::test(start_paused = true)]
    async fn a_join_spike_costs_each_member_one_snapshot_and_a_quiet_room_none() {
        let rooms = spawn_rooms(INTERVAL, Admission::default());
        let started = now();
        let (grant, mut host) = join(&rooms, 1, None, Role::Host).await;
        let mut viewers = Vec::new();
        for session in 2..=41 {
            viewers.push(
                join(&rooms, session, Some(&grant.room), Role::Viewer)
                    .await
                    .1,
            );
        }
        let state = match host.recv().await {
            Some(SessionEvent::RoomState(state)) => state,
            other => panic!("expected room state, got {other:?}"),
        };
        assert_eq!(
            now() - started,
            INTERVAL,
            "one interval after the first change"
        );
        assert_eq!(state.viewer_count, 40, "{state:?}");
        for mailbox in &mut viewers {
            assert!(matches!(mailbox.try_recv(), Ok(SessionEvent::RoomState(_))));
            assert!(mailbox.try_recv().is_err(), "one snapshot per member");
        }
        let quiet = tokio::time::timeout(INTERVAL * 10, host.recv()).await;
        assert!(quiet.is_err(), "an unchanged room sent {quiet:?}");
    }
}
