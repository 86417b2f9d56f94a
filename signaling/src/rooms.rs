//! Room membership: who hosts, who watches, and the room state everyone is shown.
//!
//! One task owns all rooms (GUIDE §2.4); sessions talk to it through [`RoomsHandle`].
//! Room state is pushed coalesced, at most once per `room_state_interval` per room, so a
//! spike of N joins costs O(N) messages per interval instead of O(N²).

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::{ErrorCode, MediaKind, Participant, Role, RoomState, TrackInfo};
use crate::session::{Outbox, SessionId};

/// Pending requests to the rooms task before callers wait.
const ROOMS_QUEUE: usize = 1024;
/// Room codes: 6 characters from an alphabet without look-alikes (0/O, 1/I/L), easy to read
/// off a TV and type on a phone. 31^6 ≈ 887 million codes.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
pub(crate) const CODE_LEN: usize = 6;
/// Secret keys (host keys, party member keys): 32 characters of the same alphabet, about
/// 158 bits.
pub(crate) const KEY_LEN: usize = 32;
/// Longest room code a client may choose.
pub const MAX_ROOM_CODE: usize = 32;

/// A session asking to join a room (the fields of a protocol `join`, checked).
#[derive(Debug)]
pub struct JoinRequest {
    pub session: SessionId,
    /// `None`: a host asking for a fresh room.
    pub room: Option<String>,
    pub name: String,
    pub role: Role,
    pub host_key: Option<String>,
    /// Where room state for this session goes.
    pub outbox: Outbox,
}

/// A granted join.
#[derive(Debug)]
pub struct Grant {
    pub room: String,
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
        room: String,
    },
    Tracks {
        room: String,
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

    pub async fn leave(&self, session: SessionId, room: String) {
        let _ = self.tx.send(Command::Leave { session, room }).await;
    }

    /// Records the tracks the SFU reports for a room.
    pub async fn set_tracks(&self, room: String, tracks: Vec<TrackInfo>) {
        let _ = self.tx.send(Command::Tracks { room, tracks }).await;
    }
}

fn stopped() -> Refusal {
    Refusal {
        code: ErrorCode::ShuttingDown,
        message: "the server is shutting down".into(),
    }
}

/// Spawns the rooms task.
pub fn spawn_rooms(room_state_interval: Duration) -> RoomsHandle {
    let (tx, rx) = mpsc::channel(ROOMS_QUEUE);
    tokio::spawn(Rooms::default().run(rx, room_state_interval));
    RoomsHandle { tx }
}

#[derive(Default)]
struct Rooms {
    rooms: HashMap<String, Room>,
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
    outbox: Outbox,
}

impl Rooms {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                _ = tick.tick() => self.publish_dirty(),
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
            outbox,
        } = request;
        let member = Member {
            session,
            name,
            outbox,
        };
        match role {
            Role::Viewer => {
                let Some(code) = room else {
                    return Err(refusal(ErrorCode::InvalidRoom, "a viewer must name a room"));
                };
                let code = normalize_code(&code)?;
                let Some(r) = self.rooms.get_mut(&code) else {
                    return Err(refusal(
                        ErrorCode::RoomNotFound,
                        format!("room {code} does not exist"),
                    ));
                };
                r.viewers.insert(session, member);
                r.dirty = true;
                Ok(Grant {
                    room: code,
                    host_key: None,
                })
            }
            Role::Host => {
                let code = match room {
                    Some(code) => normalize_code(&code)?,
                    None => self.unused_code(),
                };
                let r = self.rooms.entry(code.clone()).or_insert_with(|| Room {
                    host_key: random_code(KEY_LEN),
                    ..Room::default()
                });
                if r.host.is_some() {
                    let key_matches = host_key.as_deref() == Some(r.host_key.as_str());
                    if !key_matches {
                        return Err(refusal(
                            ErrorCode::HostAlreadyPresent,
                            format!("room {code} already has a host"),
                        ));
                    }
                    // The same host from a new connection: the stale session is told and
                    // dropped from the room; the SFU hands its tracks to the new session.
                    if let Some(old) = r.host.take() {
                        old.outbox.replaced();
                    }
                }
                r.host = Some(member);
                r.dirty = true;
                Ok(Grant {
                    room: code,
                    host_key: Some(r.host_key.clone()),
                })
            }
        }
    }

    fn leave(&mut self, session: SessionId, code: &str) {
        let Some(r) = self.rooms.get_mut(code) else {
            return;
        };
        if r.host.as_ref().is_some_and(|h| h.session == session) {
            r.host = None;
        }
        r.viewers.remove(&session);
        r.dirty = true;
        if r.host.is_none() && r.viewers.is_empty() {
            self.rooms.remove(code);
        }
    }

    fn publish_dirty(&mut self) {
        for (code, room) in &mut self.rooms {
            if !std::mem::take(&mut room.dirty) {
                continue;
            }
            let state = room.snapshot(code);
            let mut all_delivered = true;
            for member in room.host.iter().chain(room.viewers.values()) {
                all_delivered &= member.outbox.room_state(state.clone());
            }
            // A full outbox missed this snapshot: try again next interval so every member
            // ends up with the latest state.
            room.dirty = !all_delivered;
        }
    }

    fn unused_code(&self) -> String {
        loop {
            let code = random_code(CODE_LEN);
            if !self.rooms.contains_key(&code) {
                return code;
            }
        }
    }
}

impl Room {
    /// Viewers are counted, not listed: a live event can have thousands.
    fn snapshot(&self, code: &str) -> RoomState {
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
            room: code.to_owned(),
            live: self.host.is_some() && self.tracks.iter().any(|t| t.active),
            participants,
            tracks: self.tracks.clone(),
            viewer_count: self.viewers.len(),
        }
    }
}

fn refusal(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Room codes are case-insensitive (typed on phones and TV remotes): stored upper-case.
/// Allowed: 1–32 ASCII letters, digits, `-` and `_`.
pub fn normalize_code(code: &str) -> Result<String, Refusal> {
    let valid = !code.is_empty()
        && code.len() <= MAX_ROOM_CODE
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(refusal(
            ErrorCode::InvalidRoom,
            format!("a room code is 1 to {MAX_ROOM_CODE} letters, digits, '-' or '_'"),
        ));
    }
    Ok(code.to_ascii_uppercase())
}

/// `len` characters of [`CODE_ALPHABET`], uniformly random.
pub(crate) fn random_code(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
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

    #[test]
    fn room_codes_are_validated_and_case_folded() {
        assert_eq!(normalize_code("abc-12").unwrap(), "ABC-12");
        for bad in ["", "has space", "ünï", &"x".repeat(33), "a/b"] {
            assert_eq!(
                normalize_code(bad).unwrap_err().code,
                ErrorCode::InvalidRoom
            );
        }
    }
}
