//! Marquee's edge: the HTTP server, the WebSocket signaling protocol and the composition of
//! the SFU and the rooms registry. The `marquee` binary (`main.rs`) only parses flags, sets up
//! tracing, binds and calls [`run`].
//!
//! - [`protocol`]: the wire types, the source of truth for every client.
//! - [`config`]: [`ServerConfig`] and its defaults.
//! - `media`: binding the UDP media port.
//! - `rooms`: room membership and coalesced room state.
//! - `parties`: watch-party replicas of this node, fed by the sync store.
//! - `session`: one WebSocket session (live rooms and parties).
//! - `wall_clock`: the one place the edge reads the wall clock.

pub mod config;
mod media;
mod parties;
pub mod protocol;
mod rooms;
mod session;
mod wall_clock;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Query, State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sfu::{SfuConfig, SfuEvent, SfuHandle};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

pub use config::ServerConfig;
pub use media::bind_media;

use parties::PartiesHandle;
use rooms::RoomsHandle;
use session::SessionId;
use sync::{MemoryStore, RedisStore, Store, StoreConfig};

/// Hard cap on a WebSocket message before the library closes the connection. Messages above
/// `ServerConfig::max_message_bytes` but below this get a `message_too_large` error and the
/// session continues; only absurd frames end it.
const WS_HARD_LIMIT: usize = 1024 * 1024;
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
}

impl AppState {
    /// Binds the media port, connects the party store, and starts the SFU driver and the
    /// rooms and parties tasks.
    pub async fn start(config: ServerConfig) -> std::io::Result<Self> {
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
        let sfu = sfu::run_driver(SfuConfig::default(), sockets, room_events_tx, async move {
            stop.cancelled().await
        });
        let rooms = rooms::spawn_rooms(config.room_state_interval);
        let rooms_for_events = rooms.clone();
        tokio::spawn(async move {
            while let Some(event) = room_events_rx.recv().await {
                if let SfuEvent::Tracks { room, tracks } = event {
                    let tracks = tracks.iter().map(rooms::track_info).collect();
                    rooms_for_events.set_tracks(room.to_string(), tracks).await;
                }
            }
        });
        Ok(Self {
            config: Arc::new(config),
            sfu,
            rooms,
            parties,
            shutdown,
            next_session: Arc::new(AtomicU64::new(1)),
            media_addrs: Arc::new(media_addrs),
        })
    }
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` completes, then stops every
/// session and the SFU.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let token = state.shutdown.clone();
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
    .await
}

/// The HTTP routes: `/ws` for signaling, `/healthz`, and the web demo at `/`.
pub fn router(state: AppState) -> Router {
    let web = ServeDir::new(&state.config.web_root).append_index_html_on_directories(true);
    Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/qr.svg", get(qr_svg))
        .fallback_service(web)
        .with_state(state)
}

async fn ws_upgrade(
    upgrade: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
) -> impl IntoResponse {
    let id = SessionId(state.next_session.fetch_add(1, Ordering::Relaxed));
    tracing::debug!(session = %id, %remote, "websocket session");
    upgrade
        .max_message_size(WS_HARD_LIMIT)
        .max_frame_size(WS_HARD_LIMIT)
        .on_upgrade(move |socket| session::run_session(socket, state, id))
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
