//! Marquee's edge: the HTTP server, the WebSocket signaling protocol and the composition of
//! the SFU, the rooms registry and the watch-party replicas. The `marquee` binary (`main.rs`)
//! only loads settings, sets up tracing, binds and calls [`run`].
//!
//! - [`protocol`] and [`auth`]: `marquee_protocol`'s wire types and access tokens, re-exported
//!   (the source of truth for every client).
//! - [`settings`]: every setting declared once (flag, environment variable, file key, doc),
//!   layered into a [`ServerConfig`] ([`config`], with the defaults and why).
//! - `media`: binding the UDP media port ([`bind_media`]).
//! - `rooms`: room membership and coalesced room state (one task).
//! - `parties`: this node's watch-party replicas, fed by the sync store (one task).
//! - `session`: one WebSocket session (live rooms; `session/party` its watch-party half).
//! - `whip`: WHIP ingest and WHEP playback sessions over HTTP.
//! - What those four share, so that no two of them import each other: the leaves `mailbox`
//!   (what other tasks queue for a session) and `codes` (the `RoomCode` newtype, fresh codes
//!   and keys), and `errors` (every core error as a client sees it, wire code and HTTP status,
//!   mapped once; above `rooms`, whose refusals it maps). `scripts/check-layers.sh` keeps
//!   the modules free of import circles.
//! - [`turn`]: TURN credentials; [`limits`]: rate limiters; [`telemetry`]: traces and metrics
//!   (`setup`, `metrics`, and `exposition` for `/metrics`); `join_trace`: one trace per join.
//! - `wall_clock`: the one place the edge reads the wall clock.

pub use marquee_protocol::auth;
mod codes;
pub mod config;
mod errors;
mod join_trace;
pub mod limits;
mod mailbox;
mod media;
mod parties;
pub use marquee_protocol::wire as protocol;
mod rooms;
mod session;
pub mod settings;
pub mod telemetry;
pub mod turn;
mod wall_clock;
mod whip;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sfu::{SfuConfig, SfuEvent, SfuHandle};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

pub use config::ServerConfig;
pub use media::bind_media;

use auth::{Access, TokenKey};
use limits::{KeyedLimiter, Rate};
use mailbox::SessionId;
use parties::PartiesHandle;
use rooms::RoomsHandle;
use sync::{MemoryStore, RedisStore, Store, StoreConfig};
use telemetry::Metrics;
use turn::IceServer;

/// Hard cap on a WebSocket message before the library closes the connection. Messages above
/// `ServerConfig::max_message_bytes` but below this get a `message_too_large` error and the
/// session continues; only absurd frames end it.
const WS_HARD_LIMIT: usize = 1024 * 1024;

/// Bytes a WebSocket reads per call (the buffer grows for a longer message). tungstenite's
/// default, 128 KiB, is allocated up front per connection and was half of a viewer's memory
/// (massif, 60 viewers). Signaling messages are a few hundred bytes; an SDP answer of a few
/// KB makes tungstenite reserve its whole length once it has read the frame header, so a
/// small buffer costs it no extra reads. 1 KiB instead of 4 KiB saved 3 KB per viewer
/// (heaptrack).
const WS_READ_BUFFER: usize = 1024;
/// Room-level SFU events (tracks changed) waiting for the rooms task.
const ROOM_EVENTS_QUEUE: usize = 1024;

/// Shared state of a running server: handles to its tasks. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub sfu: SfuHandle,
    rooms: RoomsHandle,
    parties: PartiesHandle,
    /// Cancelled on shutdown: sessions say goodbye, the SFU driver stops.
    pub shutdown: CancellationToken,
    next_session: Arc<AtomicU64>,
    /// The media addresses advertised to clients.
    pub media_addrs: Arc<Vec<SocketAddr>>,
    /// Who may do what: tokens, or everyone in `--dev` mode.
    pub access: Arc<Access>,
    pub(crate) limits: Arc<Limiters>,
    pub metrics: Metrics,
    /// Live WHIP/WHEP sessions.
    pub(crate) resources: whip::Resources,
    /// Every session task (WebSocket and WHIP/WHEP), so shutdown can wait for them to say
    /// goodbye and leave their rooms: an upgraded WebSocket outlives its HTTP connection.
    pub(crate) sessions: tokio_util::task::TaskTracker,
}

/// The rate limiters shared by all sessions (per-connection limiters live in the session).
pub(crate) struct Limiters {
    pub ws_upgrades: KeyedLimiter<IpAddr>,
    pub http: KeyedLimiter<IpAddr>,
    pub chat: KeyedLimiter<String>,
    pub messages: Rate,
}

/// How often limiter entries of clients that went quiet are dropped.
const LIMITER_SWEEP: Duration = Duration::from_secs(60);
/// How often the SFU's counters are copied into the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

impl AppState {
    /// Binds the media port, connects the party store, and starts the SFU driver and the
    /// rooms and parties tasks.
    pub async fn start(config: ServerConfig) -> std::io::Result<Self> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let access = match (&config.auth_secret, config.dev) {
            (_, true) => Access::Dev,
            (Some(secret), false) => Access::Tokens(
                TokenKey::new(secret.as_bytes()).map_err(|e| invalid(e.to_string()))?,
            ),
            (None, false) => {
                return Err(invalid(
                    "no token secret: set auth_secret (--auth-secret, MARQUEE_AUTH_SECRET) \
                     or run with --dev to turn access tokens off"
                        .into(),
                ));
            }
        };
        let l = &config.limits;
        for (name, rate) in [
            ("ws_upgrades_per_ip", l.ws_upgrades_per_ip),
            ("http_per_ip", l.http_per_ip),
            ("messages_per_connection", l.messages_per_connection),
            ("chat_per_party", l.chat_per_party),
        ] {
            rate.quota()
                .map_err(|e| invalid(format!("limits.{name}: {e}")))?;
        }
        let limiters = Arc::new(Limiters {
            ws_upgrades: KeyedLimiter::new(l.ws_upgrades_per_ip),
            http: KeyedLimiter::new(l.http_per_ip),
            chat: KeyedLimiter::new(l.chat_per_party),
            messages: l.messages_per_connection,
        });
        let metrics = Metrics::new(&config.telemetry);
        let store_config = StoreConfig {
            history: config.party.history,
            presence_ttl: config.party.presence_ttl,
            ..StoreConfig::default()
        };
        let store: Arc<dyn Store> = match &config.redis_url {
            Some(url) => Arc::new(
                RedisStore::connect(url, store_config)
                    .await
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            ),
            None => Arc::new(MemoryStore::new(store_config)),
        };
        let parties = parties::spawn_parties(store, config.party.clone());
        let sockets = bind_media(&config).await?;
        let media_addrs = sockets.iter().map(|s| s.advertised).collect();
        let shutdown = CancellationToken::new();
        let (room_events_tx, mut room_events_rx) = mpsc::channel(ROOM_EVENTS_QUEUE);
        let stop = shutdown.clone();
        let sfu_config = SfuConfig {
            viewer_srtp_profiles: config.viewer_srtp_profiles.clone(),
            workers: config.workers,
            ..SfuConfig::default()
        };
        let sfu = sfu::run_driver(sfu_config, sockets, room_events_tx, async move {
            stop.cancelled().await
        });
        let rooms = rooms::spawn_rooms(config.room_state_interval, config.limits.admission);
        let rooms_for_events = rooms.clone();
        tokio::spawn(async move {
            while let Some(event) = room_events_rx.recv().await {
                if let SfuEvent::Tracks { room, tracks } = event {
                    let tracks = tracks.iter().map(rooms::track_info).collect();
                    if let Ok(room) = codes::RoomCode::parse(room.as_str()) {
                        rooms_for_events.set_tracks(room, tracks).await;
                    }
                }
            }
        });
        if access.is_dev() {
            tracing::warn!(
                "DEV MODE: access tokens are OFF; anyone who can reach this server may host, \
                 watch and moderate. Use --auth-secret for anything but a trusted network."
            );
        }
        let state = Self {
            config: Arc::new(config),
            sfu,
            rooms,
            parties,
            shutdown,
            next_session: Arc::new(AtomicU64::new(1)),
            media_addrs: Arc::new(media_addrs),
            access: Arc::new(access),
            limits: limiters,
            metrics,
            resources: whip::Resources::default(),
            sessions: tokio_util::task::TaskTracker::new(),
        };
        tokio::spawn(state.clone().housekeeping());
        Ok(state)
    }

    pub(crate) fn next_session_id(&self) -> SessionId {
        SessionId(self.next_session.fetch_add(1, Ordering::Relaxed))
    }

    /// The configured TURN servers with credentials for `identity`, valid for their TTL.
    pub fn ice_servers(&self, identity: &str) -> Vec<IceServer> {
        turn::ice_servers(&self.config.turn, identity, wall_clock::now_unix_secs())
    }

    /// Periodic chores until shutdown: SFU counters into the metrics, idle limiter entries
    /// out of memory.
    async fn housekeeping(self) {
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        let mut sweep = tokio::time::interval(LIMITER_SWEEP);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = stats.tick() => {
                    if let Ok(stats) = self.sfu.stats().await {
                        self.metrics.record_sfu(&stats);
                    }
                }
                _ = sweep.tick() => {
                    self.limits.ws_upgrades.forget_idle();
                    self.limits.http.forget_idle();
                    self.limits.chat.forget_idle();
                }
            }
        }
    }

    /// Ready to take sessions: not shutting down, the SFU answers, the party store answers.
    async fn readiness(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        let stats = tokio::time::timeout(Duration::from_secs(2), self.sfu.stats()).await;
        match stats {
            Ok(Ok(stats)) => self.metrics.record_sfu(&stats),
            _ => return Err("the SFU does not answer".into()),
        }
        let probe = sync::PartyId("READYZ".into());
        match tokio::time::timeout(Duration::from_secs(2), self.parties.store.load(&probe)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => {
                self.metrics.redis_error();
                Err(format!("the party store fails: {err}"))
            }
            Err(_) => Err("the party store does not answer".into()),
        }
    }
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` completes, then stops every
/// session and the SFU, and returns once every session has finished (the caller bounds
/// that with its grace period).
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
    let sessions = state.sessions.clone();
    let app = router(state);
    tokio::spawn({
        let token = token.clone();
        async move {
            shutdown.await;
            token.cancel();
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { token.cancelled().await })
    .await?;
    sessions.close();
    sessions.wait().await;
    Ok(())
}

/// The HTTP routes: `/ws` for signaling, WHIP/WHEP, `/healthz`, `/readyz`, `/metrics`, and
/// the web demo at `/`.
pub fn router(state: AppState) -> Router {
    let web = ServeDir::new(&state.config.web_root).append_index_html_on_directories(true);
    let media = whip::routes(state.clone(), cors(&state.config.cors_origins));
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/qr.svg", get(qr_svg))
        .merge(media)
        .fallback_service(web)
        .with_state(state)
}

/// CORS for WHIP/WHEP: browsers on other origins may POST offers, PATCH and DELETE, send
/// tokens, and read the headers the protocol puts its answers in.
fn cors(origins: &[String]) -> CorsLayer {
    use axum::http::{HeaderName, Method};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
        ])
        .expose_headers([
            header::LOCATION,
            header::ETAG,
            header::LINK,
            header::RETRY_AFTER,
            HeaderName::from_static("accept-patch"),
            HeaderName::from_static("accept-post"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// `GET /readyz`: 200 when this node should get traffic, 503 with the reason otherwise
/// (shutting down, SFU or party store not answering). `/healthz` only says the process
/// serves HTTP.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness().await {
        Ok(()) => "ready".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// `GET /metrics`: Prometheus text format (`telemetry::exposition`), with the SFU's counters
/// as of now.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(stats) = state.sfu.stats().await {
        state.metrics.record_sfu(&stats);
    }
    (
        [(header::CONTENT_TYPE, telemetry::PROMETHEUS_CONTENT_TYPE)],
        state.metrics.render_prometheus(),
    )
        .into_response()
}

async fn ws_upgrade(
    upgrade: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> Response {
    if let Err(retry) = state.limits.ws_upgrades.check(&remote.ip()) {
        state.metrics.rate_limited("ws_upgrade");
        return whip::HttpError::rate_limited(retry).into_response();
    }
    let id = state.next_session_id();
    tracing::debug!(session = %id, %remote, "websocket session");
    upgrade
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| {
            let sessions = state.sessions.clone();
            sessions.track_future(session::run_session(socket, state, id))
        })
        .into_response()
}

/// Longest text `/qr.svg` encodes: a join link with room for a host name.
const QR_MAX_TEXT: usize = 512;

#[derive(serde::Deserialize)]
struct QrQuery {
    text: String,
}

/// `GET /qr.svg?text=…`: the text as a QR code, so a TV shows a link a phone can scan.
async fn qr_svg(Query(query): Query<QrQuery>) -> axum::response::Response {
    if query.text.is_empty() || query.text.len() > QR_MAX_TEXT {
        return (
            StatusCode::BAD_REQUEST,
            format!("text must be 1 to {QR_MAX_TEXT} bytes"),
        )
            .into_response();
    }
    match qrcode::QrCode::new(query.text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(256, 256)
                .build();
            (
                [
                    (header::CONTENT_TYPE, "image/svg+xml"),
                    (header::CACHE_CONTROL, "public, max-age=3600"),
                ],
                svg,
            )
                .into_response()
        }
        Err(err) => (StatusCode::BAD_REQUEST, err.to_string()).into_response(),
    }
}
