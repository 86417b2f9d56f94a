//! The WebSocket JSON protocol, version [`PROTOCOL_VERSION`].
//!
//! These types are the source of truth: `docs/protocol.md` shows one example of each, the
//! web demo speaks them, and test clients (and later `loadtest`) use them directly.
//!
//! Conventions (GUIDE §5): every message is an object with a `"type"` tag; fields are
//! camelCase; unknown fields are ignored; an unknown `type` gets an [`ErrorCode::UnknownType`]
//! error and the connection stays open.

use crate::model::{
    Control, Event, MemberStatus, MemberView, PlaybackCommand, SharedState, Spread,
};
use serde::{Deserialize, Serialize};

/// The protocol version this server speaks. A `join` carrying another version is refused
/// with [`ErrorCode::UnsupportedVersion`] so that old clients fail loudly, not subtly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest text message the server accepts, in bytes. A larger message is answered
/// with [`ErrorCode::MessageTooLarge`] and dropped; the connection stays open.
/// 64 KiB holds the largest realistic SDP (a dozen m-lines with simulcast) several times over.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What a participant does in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Publishes camera, microphone or screen. One per room.
    Host,
    /// Receives everything the host publishes.
    Viewer,
}

/// Kind of a media track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// A trickled ICE candidate, shaped like the browser's `RTCIceCandidateInit`.
/// An empty `candidate` string means end of candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// Messages a client sends: the live room's (and the connection's) or the watch party's. On
/// the wire both are one flat JSON object tagged by `type`; the split only tells the server,
/// exhaustively, which part handles a message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ClientMessage {
    Room(RoomMessage),
    Party(PartyMessage),
}

/// A live room's messages, and the connection's own (`leave`, `ping`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum RoomMessage {
    /// First message of a session. A host without `room` creates a new room with a fresh
    /// short code; a host with `room` creates that room or takes it over when it has no host
    /// (or when `hostKey` matches, which evicts a stale session of the same host).
    /// A viewer must name an existing room.
    Join {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        #[serde(default)]
        name: String,
        role: Role,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_key: Option<String>,
        /// An access token (JWT) granting `publish` (host) or `subscribe` (viewer) for this
        /// room; required unless the server runs with `--dev`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// An SDP offer from the client: how a host publishes (and republishes) its tracks.
    Offer { sdp: String },
    /// The client's SDP answer to a server [`ServerMessage::Offer`].
    Answer { sdp: String },
    /// A trickled ICE candidate of the client.
    Candidate { candidate: IceCandidate },
    /// Leave the room; the WebSocket stays open and may `join` again.
    Leave {},
    /// Liveness probe; answered by `pong` with the same `id`.
    Ping {
        #[serde(default)]
        id: u64,
    },
}

/// A watch party's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum PartyMessage {
    /// Join a watch party, or create one (without `party`). A member resuming after a
    /// reconnect (to any node) presents `memberId` and `memberKey` to stay the same member,
    /// and `lastSeq` to receive every event after it, exactly once and in order.
    PartyJoin {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        party: Option<String>,
        #[serde(default)]
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        member_key: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        /// An access token (JWT) for this party; its grants decide who may chat (`chat`),
        /// control playback (`control`) and set who controls (`moderate`). Creating a party
        /// needs a token for room `*`. Required unless the server runs with `--dev`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// A playback command. `opId` makes a retry idempotent; `baseVersion`, when given, is
    /// the state version the client saw: a command based on an older one is refused.
    Playback {
        op_id: String,
        command: PlaybackCommand,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_version: Option<u64>,
    },
    /// The host sets who may control playback.
    SetControl {
        op_id: String,
        control: Control,
    },
    Chat {
        op_id: String,
        text: String,
    },
    React {
        op_id: String,
        emoji: String,
    },
    Typing {
        typing: bool,
    },
    /// The member's camera is on (published to the live room `PARTY-memberId`) or off.
    Camera {
        on: bool,
    },
    /// A member's periodic report: player status, playback position at a server time under a
    /// state version, and its clock-sync quality.
    SyncReport {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<MemberStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position_ms: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_ms: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_ms: Option<f64>,
    },
    /// A clock probe: `t0` is the client's clock (ms). Allowed before any join.
    TimeProbe {
        t0: f64,
    },
}

/// The `type`s of [`PartyMessage`]; every other `type` is read as a [`RoomMessage`] (whose
/// error then names the unknown variant). A test keeps the list and the enum together.
const PARTY_TYPES: &[&str] = &[
    "partyJoin",
    "playback",
    "setControl",
    "chat",
    "react",
    "typing",
    "camera",
    "syncReport",
    "timeProbe",
];

/// Routed by `type` to the sub-enum that has it, so a malformed message gets that enum's
/// precise error ("missing field `sdp`"), not an untagged enum's "did not match any variant".
impl<'de> Deserialize<'de> for ClientMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let party =
            (value.get("type").and_then(|t| t.as_str())).is_some_and(|t| PARTY_TYPES.contains(&t));
        if party {
            PartyMessage::deserialize(value)
                .map(ClientMessage::Party)
                .map_err(D::Error::custom)
        } else {
            RoomMessage::deserialize(value)
                .map(ClientMessage::Room)
                .map_err(D::Error::custom)
        }
    }
}

/// Messages the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    /// Answer to `join`.
    Joined {
        version: u32,
        room: String,
        peer_id: String,
        role: Role,
        /// Only to the host: present it on a later `join` to take the room over from a stale
        /// session (a host whose old connection has not timed out yet).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host_key: Option<String>,
        /// Documented limits the client must respect.
        limits: Limits,
        /// STUN/TURN servers for the client's RTCPeerConnection (RTCIceServer shape), with
        /// time-limited TURN credentials. Empty when none are configured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<crate::ice::IceServer>,
    },
    /// A server-made offer: sent to viewers on join and whenever the room's tracks change.
    Offer { sdp: String },
    /// The server's answer to a client `offer`.
    Answer { sdp: String },
    /// Snapshot of the room, sent on join and whenever it changes.
    RoomState(RoomState),
    /// Media connection progress of this session's own peer connection.
    MediaState { state: MediaState },
    /// Answer to `ping`.
    Pong { id: u64 },
    /// Something went wrong; see [`ErrorCode`].
    Error(ErrorBody),
    /// Answer to `partyJoin`. Followed by the missed (or recent) events and a `partyState`.
    PartyJoined {
        version: u32,
        party: String,
        member_id: String,
        /// Present with `memberId` on a later `partyJoin` to resume as this member.
        member_key: String,
        /// True when `memberId`/`memberKey` were recognized.
        resumed: bool,
        /// False when the events after `lastSeq` were no longer all kept (history is
        /// bounded); the client then shows what follows as a fresh start.
        history_complete: bool,
        limits: PartyLimits,
    },
    /// One event of the party log, in `seq` order, each once per session.
    PartyEvent(Event),
    /// A snapshot of the party: shared state, members, sync spread. Sent after join and,
    /// coalesced, whenever it changes.
    PartyState(PartyState),
    /// A command or chat message was committed as `seq` (or had been: `duplicate`).
    Ack {
        op_id: String,
        seq: u64,
        duplicate: bool,
    },
    /// Answer to `timeProbe`: `t1` when the probe arrived and `t2` when this left, both
    /// server wall-clock milliseconds since the Unix epoch.
    TimeReply { t0: f64, t1: f64, t2: f64 },
}

/// Limits of a party session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartyLimits {
    pub max_chat_chars: usize,
    pub max_reaction_chars: usize,
    pub chat_burst: f64,
    pub chat_per_second: f64,
    pub history: usize,
    pub max_op_id_chars: usize,
}

/// Snapshot of a watch party.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartyState {
    pub party: String,
    pub state: SharedState,
    pub members: Vec<MemberView>,
    pub spread: Spread,
    pub last_seq: u64,
    /// The lead with which changes are scheduled now, in ms.
    pub lead_ms: i64,
    /// False while the sync storage is unreachable: commands and chat are refused with
    /// `sync_unavailable` until it returns (nothing acknowledged is lost).
    pub sync_available: bool,
}

/// The documented limits of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_message_bytes: usize,
}

/// Snapshot of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomState {
    pub room: String,
    /// True while the host is connected and publishing at least one track.
    pub live: bool,
    pub participants: Vec<Participant>,
    pub tracks: Vec<TrackInfo>,
    pub viewer_count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub peer_id: String,
    pub name: String,
    pub role: Role,
}

/// One published track, as viewers see it (stable across host reconnects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    pub id: String,
    pub kind: MediaKind,
    /// True while a host source feeds this track.
    pub active: bool,
}

/// State of a session's media connection, as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MediaState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// The `opId` of the refused operation, when the message had one, so a client with
    /// several operations in flight knows which one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// Stable, machine-readable error codes. Clients branch on these; the text is for humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message was not valid JSON, or a known type had missing or mistyped fields.
    BadMessage,
    /// The `type` is not one this server knows.
    UnknownType,
    /// The message exceeded `limits.maxMessageBytes`; it was dropped.
    MessageTooLarge,
    /// `join.version` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// A message other than `join`/`ping` arrived before `join`.
    NotJoined,
    /// `join` arrived while already in a room; send `leave` first.
    AlreadyJoined,
    /// The room code is malformed.
    InvalidRoom,
    /// A viewer asked for a room that does not exist.
    RoomNotFound,
    /// A host joined a room that already has a connected host.
    HostAlreadyPresent,
    /// The SDP could not be parsed or negotiated.
    InvalidSdp,
    /// The message is not allowed for this role (e.g. a viewer sending an offer).
    NotAllowed,
    /// A candidate arrived before any offer/answer was exchanged.
    CandidateBeforeOffer,
    /// The candidate string could not be parsed or applied.
    InvalidCandidate,
    /// An `answer` arrived with no server offer outstanding.
    NoOfferPending,
    /// The same host joined again from another connection; this session left the room.
    SessionReplaced,
    /// A configured capacity limit was reached (rooms on the node, peers in the room,
    /// peers on the node); the message says which. Nothing else is degraded.
    Full,
    /// No access token was presented and the server requires one.
    TokenMissing,
    /// The token is not a well-formed HS256 JWT.
    TokenMalformed,
    /// The token's signature does not match the server's secret.
    TokenInvalidSignature,
    /// The token's `exp` is in the past.
    TokenExpired,
    /// The token's `iat` is in the future.
    TokenNotYetValid,
    /// The token is for another room.
    TokenWrongRoom,
    /// The token does not grant what was attempted (publish, subscribe, control, chat,
    /// moderate).
    GrantMissing,
    /// WHEP: the room exists but is not live yet (no tracks, or its host is still starting
    /// them); retry.
    RoomNotLive,
    /// WHIP/WHEP: no such session resource (ended, or never existed).
    UnknownSession,
    /// WHIP/WHEP: the request's Content-Type is not the one the method takes.
    UnsupportedMediaType,
    /// WHIP/WHEP: `If-Match` does not match the session's current ETag.
    PreconditionFailed,
    /// The server is shutting down; reconnect elsewhere or later.
    ShuttingDown,
    /// `partyJoin` named a party that does not exist (or expired).
    PartyNotFound,
    /// The member may not do this (playback in a host-controlled party, settings).
    PermissionDenied,
    /// The command's `baseVersion` is not the party's version, or another command won a
    /// race for the same version. The client has (or will get) the winning state.
    StaleVersion,
    /// A seek position that is negative, not a number or beyond 48 hours.
    InvalidPosition,
    /// A playback rate outside 0.25–4.
    InvalidRate,
    /// A video URL that is not `http(s)://…` or a path on this server.
    InvalidUrl,
    /// Play, pause, seek or rate before any video was loaded.
    NothingLoaded,
    /// An empty chat message, or one longer than `limits.maxChatChars`.
    ChatTooLong,
    /// A reaction that is empty, has spaces or is longer than `limits.maxReactionChars`.
    InvalidReaction,
    /// Too many requests, messages, chat messages or reactions; the message (and over
    /// HTTP the `Retry-After` header) says when to retry. The connection stays open.
    RateLimited,
    /// A sync report with numbers that are not finite.
    InvalidReport,
    /// An `opId` that is empty or longer than `limits.maxOpIdChars`.
    InvalidOpId,
    /// The sync storage (Redis) is unreachable; nothing was changed. Retry with the same
    /// `opId`: it is applied once.
    SyncUnavailable,
    /// A bug or an unexpected internal failure; the session continues where possible.
    Internal,
}

impl ServerMessage {
    /// Convenience constructor for [`ServerMessage::Error`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error(ErrorBody {
            code,
            message: message.into(),
            op_id: None,
        })
    }
}

impl ClientMessage {
    /// The operation id of an operation message.
    pub fn op_id(&self) -> Option<&str> {
        match self {
            ClientMessage::Party(
                PartyMessage::Playback { op_id, .. }
                | PartyMessage::SetControl { op_id, .. }
                | PartyMessage::Chat { op_id, .. }
                | PartyMessage::React { op_id, .. },
            ) => Some(op_id),
            _ => None,
        }
    }
}

/// Why an incoming text frame could not become a [`ClientMessage`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            DecodeError::Malformed(_) => ErrorCode::BadMessage,
        }
    }
}

/// Parses one text frame, telling an unknown `type` apart from a malformed known one so the
/// client gets the precise error code.
pub fn decode_client_message(text: &str, limit: usize) -> Result<ClientMessage, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(message) => Ok(message),
        Err(err) => {
            // Re-parse loosely only on the error path to classify the failure.
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))?;
            match value.get("type").and_then(|t| t.as_str()) {
                Some(t) if !known_client_type(t) => Err(DecodeError::UnknownType(truncate(t, 64))),
                None => Err(DecodeError::Malformed(
                    "expected an object with a string \"type\"".into(),
                )),
                Some(_) => Err(DecodeError::Malformed(err.to_string())),
            }
        }
    }
}

/// The `type`s of [`RoomMessage`] (see [`PARTY_TYPES`] for the rest).
const ROOM_TYPES: &[&str] = &["join", "offer", "answer", "candidate", "leave", "ping"];

/// Whether `t` is the `type` of a message this server knows.
fn known_client_type(t: &str) -> bool {
    ROOM_TYPES.contains(&t) || PARTY_TYPES.contains(&t)
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `PARTY_TYPES` is exactly the `type`s of `PartyMessage`, and every other known type is
    /// a `RoomMessage`: a type in the wrong list would be decoded by the wrong enum.
    #[test]
    fn message_types_are_routed_to_the_enum_that_has_them() {
        let unknown_variant = |err: serde_json::Error| err.to_string().contains("unknown variant");
        for t in ROOM_TYPES.iter().chain(PARTY_TYPES) {
            let bare = format!(r#"{{"type":"{t}"}}"#);
            let as_party = serde_json::from_str::<PartyMessage>(&bare);
            let as_room = serde_json::from_str::<RoomMessage>(&bare);
            let in_party = as_party.map_or_else(|e| !unknown_variant(e), |_| true);
            let in_room = as_room.map_or_else(|e| !unknown_variant(e), |_| true);
            assert_eq!(in_party, PARTY_TYPES.contains(t), "{t}: a PartyMessage?");
            assert_eq!(in_room, ROOM_TYPES.contains(t), "{t}: a RoomMessage?");
            assert_ne!(in_room, in_party, "{t}: exactly one enum has it");
        }
    }

    #[test]
    fn join_round_trips_in_camel_case() {
        let text = r#"{"type":"join","version":1,"room":"ABCD","name":"Ann","role":"viewer","extra":true,"token":"t.k.n"}"#;
        let msg = decode_client_message(text, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Room(RoomMessage::Join {
                version: 1,
                room: Some("ABCD".into()),
                name: "Ann".into(),
                role: Role::Viewer,
                host_key: None,
                token: Some("t.k.n".into()),
            })
        );
        let candidate = ClientMessage::Room(RoomMessage::Candidate {
            candidate: IceCandidate {
                candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            },
        });
        let json = serde_json::to_string(&candidate).unwrap();
        assert!(json.contains("\"sdpMLineIndex\":0"), "{json}");
    }

    #[test]
    fn errors_are_classified() {
        let limit = DEFAULT_MAX_MESSAGE_BYTES;
        assert!(matches!(
            decode_client_message("{nope", limit),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_client_message(r#"{"type":"dance"}"#, limit),
            Err(DecodeError::UnknownType(t)) if t == "dance"
        ));
        assert!(matches!(
            decode_client_message(r#"{"type":"offer"}"#, limit),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_client_message("[1,2]", limit),
            Err(DecodeError::Malformed(_))
        ));
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(limit));
        assert_eq!(
            decode_client_message(&big, limit).unwrap_err().code(),
            ErrorCode::MessageTooLarge
        );
    }

    #[test]
    fn server_error_serializes_flat() {
        let json =
            serde_json::to_string(&ServerMessage::error(ErrorCode::RoomNotFound, "nope")).unwrap();
        assert_eq!(
            json,
            r#"{"type":"error","code":"room_not_found","message":"nope"}"#
        );
        let state = ServerMessage::RoomState(RoomState {
            room: "AB".into(),
            live: false,
            participants: vec![],
            tracks: vec![],
            viewer_count: 0,
        });
        let json = serde_json::to_string(&state).unwrap();
        assert!(
            json.starts_with(r#"{"type":"roomState","room":"AB""#),
            "{json}"
        );
    }

    /// Every JSON example in docs/protocol.md is a message these types accept: the doc cannot
    /// drift from the source of truth unnoticed.
    #[test]
    fn every_documented_example_decodes() {
        let doc = include_str!("../../docs/protocol.md");
        let mut checked = 0;
        for block in doc.split("```json").skip(1) {
            let block = block.split("```").next().unwrap();
            for value in serde_json::Deserializer::from_str(block).into_iter::<serde_json::Value>()
            {
                let value = value.unwrap_or_else(|e| panic!("invalid JSON in doc: {e}\n{block}"));
                let kind = value["type"].as_str().expect("examples have a type");
                let text = value.to_string();
                if known_client_type(kind) && !matches!(kind, "offer" | "answer") {
                    decode_client_message(&text, DEFAULT_MAX_MESSAGE_BYTES)
                        .unwrap_or_else(|e| panic!("client example {text}: {e}"));
                } else if serde_json::from_str::<ServerMessage>(&text).is_err() {
                    // offer/answer exist in both directions.
                    decode_client_message(&text, DEFAULT_MAX_MESSAGE_BYTES)
                        .unwrap_or_else(|e| panic!("example {text}: {e}"));
                }
                checked += 1;
            }
        }
        assert!(checked > 30, "found only {checked} examples");
    }
}
