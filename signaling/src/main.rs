//! `marquee`: the live-events and watch-party server.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use signaling::{AppState, ServerConfig};
use tracing_subscriber::EnvFilter;

/// Marquee: low-latency live events and watch parties over WebRTC.
///
/// Serves the web demo and the WebSocket signaling endpoint (`/ws`) over HTTP, and all media
/// over one UDP port. Runs every role in one process with in-memory state; no Redis needed.
#[derive(Debug, Parser)]
#[command(name = "marquee", version)]
struct Cli {
    /// HTTP and WebSocket listen address. The default accepts phones and TVs on the LAN.
    #[arg(long, env = "MARQUEE_HTTP", default_value = "0.0.0.0:8080")]
    http: SocketAddr,

    /// The UDP media port (all WebRTC peers share it). With 0.0.0.0 the port is opened on
    /// every interface address and each is offered as an ICE candidate.
    #[arg(long, env = "MARQUEE_UDP", default_value = "0.0.0.0:7882")]
    udp: SocketAddr,

    /// Public IP to advertise as the media candidate (behind 1:1 NAT or on a cloud VM).
    /// Repeat for several.
    #[arg(long = "public-ip", env = "MARQUEE_PUBLIC_IP", value_delimiter = ',')]
    public_ips: Vec<IpAddr>,

    /// Do not offer loopback candidates on a wildcard media bind.
    #[arg(long)]
    no_loopback: bool,

    /// Directory of the web demo served at `/`.
    #[arg(long, env = "MARQUEE_WEB_ROOT")]
    web_root: Option<PathBuf>,

    /// Redis URL for watch-party state shared by several nodes (for example
    /// redis://127.0.0.1:6379/0). Without it, parties live in this process (one node).
    #[arg(long = "redis", env = "MARQUEE_REDIS_URL")]
    redis_url: Option<String>,

    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, default_value_t = signaling::protocol::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // rtc's DTLS and ICE log routine protocol noise (unknown TLS extensions,
            // checks for a peer not yet configured) at warn level.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rtc_dtls=error,rtc_ice=error")),
        )
        .init();
    let cli = Cli::parse();
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        http: cli.http,
        udp: cli.udp,
        public_ips: cli.public_ips,
        include_loopback: !cli.no_loopback,
        web_root: cli.web_root.unwrap_or(defaults.web_root.clone()),
        max_message_bytes: cli.max_message_bytes,
        redis_url: cli.redis_url,
        ..defaults
    };
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http))?;
    let state = AppState::start(config.clone())
        .await
        .with_context(|| format!("starting (media on {})", config.udp))?;
    let http = listener.local_addr()?;
    // A wildcard address is not something to type into a browser; localhost is.
    let open = if http.ip().is_unspecified() {
        format!("http://localhost:{}/", http.port())
    } else {
        format!("http://{http}/")
    };
    tracing::info!(
        %http,
        media = ?state.media_addrs,
        web_root = %config.web_root.display(),
        parties = if config.redis_url.is_some() { "redis" } else { "memory" },
        "marquee is up: open {open}"
    );
    signaling::run(listener, state, shutdown_signal()).await?;
    tracing::info!("marquee stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
