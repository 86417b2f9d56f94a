//! Server configuration, composed by the binary from flags (later also file and environment).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::DEFAULT_MAX_MESSAGE_BYTES;

/// Everything the edge needs to run. Defaults are for the embedded single-node demo.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The HTTP/WebSocket listen address. `0.0.0.0:8080` so phones and TVs on the LAN can
    /// open the demo.
    pub http: SocketAddr,
    /// The one UDP media port. With an unspecified IP (`0.0.0.0`) the server binds the port
    /// on each of the machine's interface addresses (see [`ServerConfig::candidate_ips`]).
    pub udp: SocketAddr,
    /// Public IPs to advertise as host candidates (1:1 NAT, cloud VMs). When set, these are
    /// advertised instead of the interface addresses; media still arrives on `udp`.
    pub public_ips: Vec<IpAddr>,
    /// Also advertise loopback addresses on a wildcard bind, so a browser on the same
    /// machine connects without touching the LAN. On by default for the demo.
    pub include_loopback: bool,
    /// Directory of the web demo served at `/`.
    pub web_root: PathBuf,
    /// Largest accepted WebSocket text message; larger ones get `message_too_large`.
    pub max_message_bytes: usize,
    /// How often a room's state is pushed to its members at most. Coalescing keeps a join
    /// spike of N viewers from costing N² messages.
    pub room_state_interval: Duration,
    /// Redis URL shared by the nodes of a deployment (`redis://host:6379/0`). `None`: watch
    /// parties live in this process's memory (one node, nothing to run).
    pub redis_url: Option<String>,
    /// Watch-party tunables.
    pub party: sync::PartyConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            udp: SocketAddr::from(([0, 0, 0, 0], 7882)),
            public_ips: Vec::new(),
            include_loopback: true,
            web_root: default_web_root(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            room_state_interval: Duration::from_millis(250),
            redis_url: None,
            party: sync::PartyConfig::default(),
        }
    }
}

/// `./web-demo` when run from the repository root, else the copy next to this crate.
pub fn default_web_root() -> PathBuf {
    let local = PathBuf::from("web-demo");
    if local.join("index.html").exists() {
        local
    } else {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../web-demo"))
    }
}
