//! `marquee`: the live-events and watch-party server.
//!
//! `marquee` (or `marquee serve`) runs the server, `marquee token` mints an access token and
//! `marquee check-config` prints the effective configuration. Settings are layered by
//! `signaling::settings`: defaults, the `--config` file, environment, flags.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use signaling::auth::{Claims, Grant, Grants};
use signaling::settings::{self, ServeArgs, TokenSecretArgs};
use signaling::{AppState, ServerConfig};

/// Marquee: low-latency live events and watch parties over WebRTC.
///
/// Serves the web demo, the WebSocket signaling endpoint (/ws) and WHIP/WHEP over HTTP, and
/// all media over one UDP port. One process runs every role with in-memory state; nodes that
/// share a Redis share watch parties.
///
/// Settings come from the defaults, then the --config file, then environment variables, then
/// flags: each overrides the ones before. See docs/configuration.md.
#[derive(Debug, Parser)]
#[command(name = "marquee", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server (what `marquee` without a command does).
    Serve(Box<ServeArgs>),
    /// Prints an access token (an HS256 JWT) to stdout.
    ///
    /// Signs with the server's secret: --auth-secret, MARQUEE_AUTH_SECRET, --auth-secret-file
    /// or the --config file's auth_secret. For development and scripts; applications mint
    /// their own tokens with the same secret (docs/configuration.md).
    Token(Box<TokenArgs>),
    /// Checks the configuration and prints the effective settings as TOML, secrets redacted.
    ///
    /// Takes the same options as `serve`; exits non-zero with the reason when the server
    /// would refuse to start.
    CheckConfig(Box<ServeArgs>),
}

/// The options of `marquee token`.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    secret: TokenSecretArgs,

    /// The room code the token is for, or `*` for every room (compared case-insensitively).
    #[arg(long, value_name = "CODE")]
    room: String,

    /// Who the holder is (the token's `sub`): your application's id for the user.
    #[arg(long, value_name = "ID")]
    identity: String,

    /// What the holder may do: publish, subscribe, control, chat or moderate.
    ///
    /// Repeat, or separate with commas; at least one.
    #[arg(
        long = "grant",
        required = true,
        value_delimiter = ',',
        value_name = "GRANT"
    )]
    grants: Vec<Grant>,

    /// Display name shown to others. Default: the identity.
    #[arg(long)]
    name: Option<String>,

    /// How long the token stays valid, in seconds.
    ///
    /// The server checks it when a client joins, so it only needs to outlive the time
    /// between minting and joining. Default: 3600, an hour: a shared link stops working soon.
    #[arg(
        long,
        visible_alias = "ttl",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..),
        value_name = "SECS"
    )]
    ttl_secs: u64,
}

fn main() -> ExitCode {
    let matches = unset_empty_env(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let result = match &cli.command {
        None => serve(&cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Token(args)) => token(args),
        Some(Command::CheckConfig(args)) => check_config(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("marquee: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `command` with the environment variables that are set but empty unhooked from their
/// arguments. Clap reads `MARQUEE_HTTP=` as an empty address (an error); here an empty
/// variable counts as unset, as OpenTelemetry's own variables do, so a compose file's
/// `MARQUEE_HTTP=${HTTP:-}` falls through to the file and the default.
fn unset_empty_env(command: clap::Command) -> clap::Command {
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    let mut command = command.mut_args(|arg| {
        let empty = arg
            .get_env()
            .and_then(std::env::var_os)
            .is_some_and(|value| value.is_empty());
        if empty {
            arg.env(None::<&'static str>)
        } else {
            arg
        }
    });
    for name in subcommands {
        command = command.mut_subcommand(name, unset_empty_env);
    }
    command
}

/// Runs the server until SIGTERM or Ctrl-C and its grace period.
fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    // Settings first: a bad file is reported before anything starts.
    let config = settings::load(args)?;
    // Console logs (RUST_LOG overrides the default) and, with an OTLP endpoint, spans over
    // OTLP. rtc's DTLS and ICE log routine protocol noise (unknown TLS extensions, checks for
    // a peer not yet configured) at warn level.
    let mut tracing =
        signaling::telemetry::init_tracing(&config.telemetry, "info,rtc_dtls=error,rtc_ice=error")?;
    let shown = serde_json::to_string(&settings::effective(&config))?;
    tracing::info!(config = %shown, "configuration (secrets redacted)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run_server(config));
    // Whatever still runs (connections kept past the grace period) is dropped, not awaited:
    // the deadline is the deadline.
    runtime.shutdown_background();
    // Outside the runtime: the flush blocks until the last spans are sent or time out.
    tracing.shutdown();
    result
}

async fn run_server(config: ServerConfig) -> anyhow::Result<()> {
    let grace = config.shutdown_grace;
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
    if !config.web_root.join("index.html").exists() {
        tracing::warn!(web_root = %config.web_root.display(), "no index.html in the web root: `/` will answer 404");
    }
    tracing::info!(
        %http,
        media = ?state.media_addrs,
        web_root = %config.web_root.display(),
        parties = if config.redis_url.is_some() { "redis" } else { "memory" },
        "marquee is up: open {open}"
    );
    let metrics = state.metrics.clone();
    let result = serve_until_shutdown(listener, state, grace).await;
    // Pushes the last metric values when exporting; blocking, so off the runtime's threads.
    let _ = tokio::task::spawn_blocking(move || metrics.shutdown()).await;
    result
}

/// Serves until SIGTERM or Ctrl-C; then sessions are told to leave (`signaling::run` cancels
/// the server's shutdown token) and get `grace` to do so. After it, or on a second signal,
/// this returns anyway, and the caller drops what still runs.
async fn serve_until_shutdown(
    listener: tokio::net::TcpListener,
    state: AppState,
    grace: Duration,
) -> anyhow::Result<()> {
    let (signalled, on_signal) = tokio::sync::oneshot::channel();
    let server = signaling::run(listener, state, async move {
        shutdown_signal().await;
        let _ = signalled.send(());
    });
    tokio::pin!(server);
    tokio::select! {
        // The signal first: once it has come, `run` completes soon after, and taking that
        // branch instead would skip the drain.
        biased;
        _ = on_signal => {}
        // Before any signal, `run` returns only on an I/O error.
        result = &mut server => return result.context("serving HTTP"),
    }
    tracing::info!(
        grace_secs = grace.as_secs_f64(),
        "shutting down: sessions are told to leave"
    );
    // `run` returns once every session has said goodbye and left its room.
    tokio::select! {
        result = server => {
            result.context("serving HTTP")?;
            tracing::info!("marquee stopped");
        }
        () = tokio::time::sleep(grace) => tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            "shutdown grace period over with connections still open; exiting anyway"
        ),
        () = shutdown_signal() => tracing::warn!("second signal: exiting without waiting"),
    }
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
}

/// `marquee token`: prints a token and nothing else on stdout, so scripts can capture it.
fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let room = args.room.trim();
    let identity = args.identity.trim();
    anyhow::ensure!(!room.is_empty(), "--room is empty");
    anyhow::ensure!(!identity.is_empty(), "--identity is empty");
    let key = settings::token_key(&args.secret)?;
    let now = now_unix_secs()?;
    let claims = Claims {
        sub: identity.to_owned(),
        room: room.to_owned(),
        grants: Grants::from_list(&args.grants),
        exp: now.saturating_add(args.ttl_secs),
        iat: now,
        name: args.name.clone().filter(|name| !name.trim().is_empty()),
    };
    println!("{}", key.mint(&claims));
    Ok(())
}

/// `marquee check-config`.
fn check_config(args: &ServeArgs) -> anyhow::Result<()> {
    let config = settings::load(args)?;
    let text =
        toml::to_string(&settings::effective(&config)).context("rendering the configuration")?;
    print!("{text}");
    Ok(())
}

/// The binary's one reading of the wall clock (GUIDE §2.2), for token times.
#[allow(clippy::disallowed_methods)]
fn now_unix_secs() -> anyhow::Result<u64> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is set before 1970")?;
    Ok(since_epoch.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
