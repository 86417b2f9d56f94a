//! ICE servers as clients receive them.

use serde::{Deserialize, Serialize};

/// A STUN/TURN server as the browser's `RTCIceServer` dictionary (W3C WebRTC §4.2.2), so the
/// web client passes it to `new RTCPeerConnection({iceServers})` unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}
