//! The watch-party data model: what is stored, fanned out between nodes and sent to clients.
//! Serialized as camelCase JSON, the same shape in Redis and on the WebSocket.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timeline::{Timeline, UnixMillis};

/// A party's short code, canonical (upper-case).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartyId(pub String);

/// A member's identity inside one party, stable across reconnects (to any node).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub String);

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who may control playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Control {
    /// Only the host plays, pauses, seeks and loads.
    Host,
    /// Every member does.
    Everyone,
}

/// The part of a party every node must agree on, changed only by compare-and-set on
/// `version` so that of two concurrent changes exactly one wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedState {
    /// Incremented by every change.
    pub version: u64,
    pub timeline: Timeline,
    pub host: MemberId,
    pub control: Control,
}

impl SharedState {
    /// A new party: nothing loaded, `host` in charge, everyone may control playback.
    pub fn new(host: MemberId, now: UnixMillis) -> Self {
        Self {
            version: 1,
            timeline: Timeline::new(now),
            host,
            control: Control::Everyone,
        }
    }
}

/// A playback command from a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum PlaybackCommand {
    /// Load a video (an `http(s)` URL or a path on this server), paused at its start.
    Load {
        url: String,
    },
    Play,
    Pause,
    Seek {
        position_ms: f64,
    },
    /// Playback rate, 0.25 to 4.
    Rate {
        rate: f64,
    },
}

/// Why the shared state changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    Load,
    Play,
    Pause,
    Seek,
    Rate,
    /// The host changed who may control playback.
    Control,
    /// The host left; the longest-present member became host.
    HandOff,
    /// Playback paused for a buffering member (parties of up to 8).
    Wait,
    /// Playback resumed after a group wait: the member became ready, or the wait hit its cap.
    Resume,
}

/// What happened, as stored in the party log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum EventBody {
    Chat {
        text: String,
    },
    Reaction {
        emoji: String,
    },
    /// The shared state changed; `state` is the complete new state.
    State {
        state: SharedState,
        cause: Cause,
    },
}

/// An event before the store gave it a sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    /// Server time the event was made.
    pub at: UnixMillis,
    /// The member who caused it.
    pub from: MemberId,
    /// The member's display name then, so history reads well after they left.
    pub name: String,
    /// The client's operation id: a retried operation with the same id is applied once.
    /// Server-made events carry a fresh server id.
    pub op_id: String,
    pub body: EventBody,
}

/// An event of the party log: a per-party, strictly increasing `seq` with no gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub seq: u64,
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Whether a member's player can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MemberStatus {
    Ready,
    Buffering,
}

/// A member's presence as every node sees it: refreshed while connected, gone after a TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence {
    pub member_id: MemberId,
    pub name: String,
    /// When the member first joined the party; the longest-present member inherits the host.
    pub joined_at: UnixMillis,
    pub status: MemberStatus,
    pub typing: bool,
    /// The member publishes a camera/microphone through the SFU (live room `CODE-memberId`).
    #[serde(default)]
    pub camera: bool,
    /// False once the member's connection dropped, until it resumes or its presence lapses.
    #[serde(default = "yes")]
    pub online: bool,
    /// The member's clock-probe round trip, the basis of the scheduling lead time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The member's playback position minus the shared timeline's, at its last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviation_ms: Option<f64>,
    /// The member's bound on its own clock error at that report (half its best round trip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_ms: Option<f64>,
    /// Server time of the last report.
    pub reported_at: UnixMillis,
}

fn yes() -> bool {
    true
}

/// A member's identity record: kept for the party's lifetime so a member can resume on any
/// node by presenting its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRecord {
    pub member_id: MemberId,
    pub key: String,
    pub joined_at: UnixMillis,
}

/// The inter-device spread of a party: percentiles over recent samples, each sample being
/// the largest minus the smallest deviation among members' fresh reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

/// A member as shown in the party state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    #[serde(flatten)]
    pub presence: Presence,
    pub host: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_are_camel_case() {
        let cmd: PlaybackCommand =
            serde_json::from_str(r#"{"action":"seek","positionMs":1500}"#).unwrap();
        assert_eq!(
            cmd,
            PlaybackCommand::Seek {
                position_ms: 1500.0
            }
        );
        let pause: PlaybackCommand = serde_json::from_str(r#"{"action":"pause"}"#).unwrap();
        assert_eq!(pause, PlaybackCommand::Pause);
        let event = Event {
            seq: 7,
            event: NewEvent {
                at: UnixMillis(5),
                from: MemberId("m1".into()),
                name: "Ann".into(),
                op_id: "o1".into(),
                body: EventBody::Chat { text: "hi".into() },
            },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"seq":7,"at":5,"from":"m1","name":"Ann","opId":"o1","body":{"kind":"chat","text":"hi"}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
    }
}
