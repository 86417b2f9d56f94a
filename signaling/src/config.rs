//! Server configuration: what the server needs to run, with the defaults of the embedded
//! single-node demo. The binary composes it from a TOML file, environment variables and
//! flags (see `docs/configuration.md`).

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
    /// on each of the machine's interface addresses (see [`bind_media`](crate::bind_media)).
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
    /// Development mode: no access tokens are required (anyone may host, watch and
    /// moderate). For the demo on a trusted network only; logged loudly at start.
    pub dev: bool,
    /// The HS256 secret access tokens are signed with (at least 32 bytes). Required unless
    /// `dev`.
    pub auth_secret: Option<String>,
    /// TURN servers handed to clients with time-limited credentials (coturn REST scheme).
    pub turn: Vec<crate::turn::TurnConfig>,
    /// Rate limits and capacity limits.
    pub limits: LimitsConfig,
    /// Metrics and traces.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// On SIGTERM: how long sessions get to finish before the process exits anyway.
    pub shutdown_grace: Duration,
    /// Origins allowed to call WHIP/WHEP from a browser (CORS); `*` allows any.
    pub cors_origins: Vec<String>,
    /// DTLS-SRTP profiles offered to viewers (see `sfu::SfuConfig::viewer_srtp_profiles`:
    /// AES-128-GCM only by default, because Chrome would otherwise pick AES-CM).
    pub viewer_srtp_profiles: Vec<sfu::srtp::SrtpProfile>,
    /// Forwarding shards of the media plane (`sfu::SfuConfig::workers`): one per core.
    pub workers: usize,
}

/// Rate limits (per IP, per connection, per party) and admission control.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// WebSocket upgrades per client IP.
    pub ws_upgrades_per_ip: crate::limits::Rate,
    /// WHIP/WHEP requests (POST, PATCH, DELETE) per client IP.
    pub http_per_ip: crate::limits::Rate,
    /// Messages per WebSocket connection.
    pub messages_per_connection: crate::limits::Rate,
    /// Chat messages and reactions per watch party, all members together.
    pub chat_per_party: crate::limits::Rate,
    /// Rooms and peers admitted.
    pub admission: crate::rooms::Admission,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        use crate::limits::Rate;
        Self {
            // A page load opens one or two sockets; reconnect loops and a household behind
            // one NAT stay well inside 20 at once and 2 per second.
            ws_upgrades_per_ip: Rate {
                per_second: 2.0,
                burst: 20,
            },
            // An encoder or player makes a POST, a few PATCHes and a DELETE per session.
            http_per_ip: Rate {
                per_second: 5.0,
                burst: 30,
            },
            // Sync reports (1/s), clock probes (a burst of 8 at join), chat and commands:
            // real clients stay far below 20 per second.
            messages_per_connection: Rate {
                per_second: 20.0,
                burst: 60,
            },
            // Every member also has a per-member budget (sync::PartyConfig); this caps a
            // whole party so a large one cannot flood its members' screens.
            chat_per_party: Rate {
                per_second: 10.0,
                burst: 30,
            },
            admission: crate::rooms::Admission::default(),
        }
    }
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
            dev: false,
            auth_secret: None,
            turn: Vec::new(),
            limits: LimitsConfig::default(),
            telemetry: crate::telemetry::TelemetryConfig::default(),
            shutdown_grace: Duration::from_secs(10),
            cors_origins: vec!["*".to_owned()],
            viewer_srtp_profiles: sfu::SfuConfig::default().viewer_srtp_profiles,
            workers: sfu::SfuConfig::default().workers,
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
pub use crate::rooms::Admission;
