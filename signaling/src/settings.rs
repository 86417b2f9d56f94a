//! The binary's settings: [`ServerConfig`] composed from four layers, each overriding the one
//! before it:
//!
//! 1. the defaults of [`ServerConfig::default`] (the embedded single-node demo);
//! 2. a TOML file ([`FileSettings`], given by `--config PATH` or `MARQUEE_CONFIG`);
//! 3. environment variables (`MARQUEE_*`, and OpenTelemetry's standard `OTEL_*` names);
//! 4. command-line flags.
//!
//! Layers 3 and 4 both arrive through [`ServeArgs`]: every argument is an `Option` (or a
//! list that is empty when absent) without a clap default, and clap fills it from the
//! argument's environment variable when the flag is absent. So `Some` means "set by flag or
//! environment, flag first", `None` means "fall through to the file, then the default", and
//! no layer can mistake another layer's default for an explicit choice.
//!
//! Errors name where the bad value came from: the file and its key (TOML syntax and type
//! errors carry line and column), or the flag and its environment variable. Secrets never
//! appear in errors or in [`effective`]. `docs/configuration.md` is the operator's guide.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::BoolishValueParser;
use serde::{Deserialize, Serialize};

use crate::auth::TokenKey;
use crate::config::{LimitsConfig, ServerConfig};
use crate::limits::Rate;
use crate::telemetry::TelemetryConfig;
use crate::turn::TurnConfig;
use sfu::srtp::SrtpProfile;

/// Environment variable of the configuration file's path.
pub const CONFIG_ENV: &str = "MARQUEE_CONFIG";

/// How long TURN credentials stay valid when neither `ttl_secs` nor `--turn-ttl-secs` says:
/// a day, the value of the TURN REST draft's example. A viewer keeps the credentials of its
/// join for the whole event, and coturn keeps an allocation it already granted, so a shorter
/// TTL would mostly limit how long a leaked credential works, at the cost of breaking long
/// sessions that re-allocate (ICE restarts).
pub const DEFAULT_TURN_TTL: Duration = Duration::from_secs(86_400);

/// What [`effective`] shows instead of a secret.
const REDACTED: &str = "<redacted>";

/// Options that both `marquee serve` and `marquee token` take: where the configuration file
/// is, and the secret access tokens are signed with.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML configuration file (see docs/configuration.md and marquee.example.toml).
    ///
    /// Environment variables and flags override its values; its unknown keys are refused.
    /// Default: none, every setting comes from its default, environment or flag.
    #[arg(long, env = CONFIG_ENV, value_name = "PATH", help_heading = "Configuration")]
    pub config: Option<PathBuf>,

    /// The secret access tokens are signed with (HS256, at least 32 bytes).
    ///
    /// Required unless --dev. Prefer MARQUEE_AUTH_SECRET or --auth-secret-file: a flag's
    /// value is visible to every user of the machine in the process list. Generate one with
    /// `openssl rand -base64 48`. Default: none.
    #[arg(
        long,
        env = "MARQUEE_AUTH_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "Access"
    )]
    pub auth_secret: Option<String>,

    /// A file holding the token secret (a trailing newline is ignored).
    ///
    /// For secrets mounted as files (Docker and Kubernetes secrets, systemd credentials).
    /// Setting both this and --auth-secret is refused. Default: none.
    #[arg(
        long,
        env = "MARQUEE_AUTH_SECRET_FILE",
        value_name = "PATH",
        help_heading = "Access"
    )]
    pub auth_secret_file: Option<PathBuf>,
}

/// The options of `marquee serve` (also accepted by `marquee` alone). Each one overrides the
/// file's key of the same meaning; see [`load`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// HTTP and WebSocket listen address.
    ///
    /// Default: 0.0.0.0:8080, so phones and TVs on the LAN can open the demo.
    #[arg(
        long,
        env = "MARQUEE_HTTP",
        value_name = "ADDR",
        help_heading = "Network"
    )]
    pub http: Option<SocketAddr>,

    /// The UDP media port, shared by every WebRTC peer.
    ///
    /// With 0.0.0.0 the port is opened on every interface address and each one is offered as
    /// an ICE candidate. Port 0 picks a free port. Default: 0.0.0.0:7882.
    #[arg(
        long,
        env = "MARQUEE_UDP",
        value_name = "ADDR",
        help_heading = "Network"
    )]
    pub udp: Option<SocketAddr>,

    /// Public IP to advertise as the media candidate (behind 1:1 NAT, on a cloud VM).
    ///
    /// Repeat the flag, or separate with commas, for several. Advertised instead of the
    /// interface addresses. Default: none, the interface addresses are advertised.
    #[arg(
        long = "public-ip",
        env = "MARQUEE_PUBLIC_IP",
        value_delimiter = ',',
        value_name = "IP",
        help_heading = "Network"
    )]
    pub public_ips: Vec<IpAddr>,

    /// Do not offer loopback candidates on a wildcard media bind.
    ///
    /// Default: loopback is offered, so a browser on the server machine connects without
    /// touching the LAN. `--no-loopback=false` turns it back on over a file's setting.
    #[arg(
        long,
        env = "MARQUEE_NO_LOOPBACK",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        value_name = "BOOL",
        help_heading = "Network"
    )]
    pub no_loopback: Option<bool>,

    /// Origin allowed to call WHIP/WHEP from a browser (CORS); `*` allows any.
    ///
    /// Repeat, or separate with commas, for several. Default: `*`, since every WHIP/WHEP
    /// request carries its token and no cookies are used, so other origins gain nothing a
    /// token does not already grant.
    #[arg(
        long = "cors-origin",
        env = "MARQUEE_CORS_ORIGIN",
        value_delimiter = ',',
        value_name = "ORIGIN",
        help_heading = "Network"
    )]
    pub cors_origins: Vec<String>,

    /// Directory of the web demo served at `/`.
    ///
    /// Default: ./web-demo when run from the repository root, else the copy next to the
    /// source of this binary.
    #[arg(
        long,
        env = "MARQUEE_WEB_ROOT",
        value_name = "DIR",
        help_heading = "Network"
    )]
    pub web_root: Option<PathBuf>,

    /// Development mode: no access tokens; anyone who reaches the server may host, watch
    /// and moderate.
    ///
    /// For the demo on a trusted network only; never on the internet. Logged loudly at
    /// start. Default: off.
    #[arg(
        long,
        env = "MARQUEE_DEV",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        value_name = "BOOL",
        help_heading = "Access"
    )]
    pub dev: Option<bool>,

    /// Redis URL shared by the nodes of a deployment (redis://host:6379/0).
    ///
    /// Default: none, watch parties live in this process (one node, nothing else to run).
    #[arg(
        long = "redis",
        visible_alias = "redis-url",
        env = "MARQUEE_REDIS_URL",
        value_name = "URL",
        help_heading = "Cluster"
    )]
    pub redis_url: Option<String>,

    /// A TURN or STUN URL handed to clients (turn:host:3478?transport=udp, turns:…, stun:…).
    ///
    /// Repeat, or separate with commas, for several. These flags describe one TURN server and
    /// replace the file's [[turn]] list. Default: none, clients get no TURN server and only
    /// connect where a direct UDP path exists.
    #[arg(
        long = "turn-url",
        env = "MARQUEE_TURN_URL",
        value_delimiter = ',',
        value_name = "URL",
        help_heading = "TURN"
    )]
    pub turn_urls: Vec<String>,

    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    ///
    /// Required when there are turn: or turns: URLs. Without --turn-url it sets the secret of
    /// every [[turn]] of the file (keep secrets out of files). Default: none.
    #[arg(
        long,
        env = "MARQUEE_TURN_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        help_heading = "TURN"
    )]
    pub turn_secret: Option<String>,

    /// How long handed-out TURN credentials stay valid, in seconds.
    ///
    /// Without --turn-url it sets the TTL of every [[turn]] of the file. Default: 86400 (a
    /// day): credentials are made at join and must last the whole event.
    #[arg(
        long,
        env = "MARQUEE_TURN_TTL_SECS",
        value_name = "SECS",
        help_heading = "TURN"
    )]
    pub turn_ttl_secs: Option<u64>,

    /// Largest WebSocket message accepted, in bytes; larger ones get `message_too_large`.
    ///
    /// Default: the protocol's limit (docs/protocol.md), far above any real message.
    #[arg(
        long,
        env = "MARQUEE_MAX_MESSAGE_BYTES",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub max_message_bytes: Option<usize>,

    /// Live rooms this node admits; joins that would open more are refused.
    ///
    /// Default: 1000, sized from one node's measured capacity, so only a real overload is
    /// refused.
    #[arg(
        long,
        env = "MARQUEE_MAX_ROOMS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_rooms: Option<usize>,

    /// Members (host and viewers) of one room; later joins are refused with the `full` error.
    ///
    /// Default: 2000.
    #[arg(
        long,
        env = "MARQUEE_MAX_PEERS_PER_ROOM",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_peers_per_room: Option<usize>,

    /// Members of all rooms of this node together.
    ///
    /// Default: 5000, the most one node should carry before a deployment adds nodes.
    #[arg(
        long,
        env = "MARQUEE_MAX_PEERS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_peers: Option<usize>,

    /// Forwarding shards of the media plane, each owning whole rooms (at most 62).
    ///
    /// Default: the number of cores, so a node with many rooms uses every core.
    #[arg(
        long,
        env = "MARQUEE_WORKERS",
        value_name = "N",
        help_heading = "Media"
    )]
    pub workers: Option<usize>,

    /// Base URL of an OTLP/HTTP collector for traces and metrics (http://127.0.0.1:4318).
    ///
    /// Default: none, nothing is pushed and metrics are served on /metrics only.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL",
        help_heading = "Telemetry"
    )]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of exported telemetry.
    ///
    /// Default: marquee.
    #[arg(
        long,
        env = "OTEL_SERVICE_NAME",
        value_name = "NAME",
        help_heading = "Telemetry"
    )]
    pub service_name: Option<String>,

    /// How often metrics (and waiting spans) are pushed, in milliseconds.
    ///
    /// Default: 10000, fresh enough for dashboards at one request per signal per node.
    #[arg(
        long,
        env = "MARQUEE_OTLP_EXPORT_INTERVAL_MS",
        value_name = "MS",
        help_heading = "Telemetry"
    )]
    pub otlp_export_interval_ms: Option<u64>,

    /// On SIGTERM or Ctrl-C: seconds sessions get to say goodbye before the process exits
    /// anyway.
    ///
    /// Default: 10, below the 30 s after which Kubernetes and `docker stop` kill the process.
    #[arg(
        long,
        env = "MARQUEE_SHUTDOWN_GRACE_SECS",
        value_name = "SECS",
        help_heading = "Shutdown"
    )]
    pub shutdown_grace_secs: Option<u64>,
}

/// The configuration file's schema. Every key is optional; unknown keys are refused (a typo
/// must not silently fall back to a default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub http: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    pub public_ips: Option<Vec<IpAddr>>,
    pub include_loopback: Option<bool>,
    /// Relative paths are relative to the file's directory.
    pub web_root: Option<PathBuf>,
    pub max_message_bytes: Option<usize>,
    pub redis_url: Option<String>,
    pub dev: Option<bool>,
    pub auth_secret: Option<String>,
    /// Relative paths are relative to the file's directory.
    pub auth_secret_file: Option<PathBuf>,
    pub cors_origins: Option<Vec<String>>,
    pub shutdown_grace_secs: Option<u64>,
    /// `[[turn]]`: one entry per TURN deployment.
    pub turn: Option<Vec<TurnFile>>,
    pub limits: Option<LimitsFile>,
    pub telemetry: Option<TelemetryFile>,
    pub media: Option<MediaFile>,
}

/// `[media]`: the SFU's media plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaFile {
    /// DTLS-SRTP profiles offered to viewers, by IANA name (`SRTP_AEAD_AES_128_GCM`,
    /// `SRTP_AES128_CM_HMAC_SHA1_80`, `SRTP_AES128_CM_HMAC_SHA1_32`).
    pub viewer_srtp_profiles: Option<Vec<String>>,
    /// Forwarding shards (`--workers`).
    pub workers: Option<usize>,
}

/// One `[[turn]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnFile {
    pub urls: Vec<String>,
    pub secret: Option<String>,
    pub ttl_secs: Option<u64>,
}

/// `[limits]`: rates as `[limits.<name>]` tables, admission as plain keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_rooms: Option<usize>,
    pub max_peers_per_room: Option<usize>,
    pub max_peers: Option<usize>,
    pub ws_upgrades_per_ip: Option<RateFile>,
    pub http_per_ip: Option<RateFile>,
    pub messages_per_connection: Option<RateFile>,
    pub chat_per_party: Option<RateFile>,
}

/// A rate; a missing half keeps its default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub per_second: Option<f64>,
    pub burst: Option<u32>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub export_interval_ms: Option<u64>,
}

/// Why the settings cannot be used. Every message says where the value came from.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration file (or the token secret file) cannot be read. (The messages of
    /// these errors include their cause, so the cause is not also a `source`: `{:#}` would
    /// print it twice.)
    #[error("cannot read {what} {}: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The configuration file is not valid TOML or does not fit the schema (unknown key,
    /// wrong type); toml's message shows the line, the column and the key.
    #[error("configuration file {}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    /// A value that parses but cannot be used. `setting` names the key and file, or the flag
    /// and its environment variable.
    #[error("invalid {setting}: {reason}")]
    Invalid { setting: String, reason: String },
    /// The server would start without access control: no token secret and no `--dev`.
    #[error(
        "no token secret: set auth_secret or auth_secret_file in the configuration file, \
         MARQUEE_AUTH_SECRET or MARQUEE_AUTH_SECRET_FILE, or --auth-secret or \
         --auth-secret-file (generate one with `openssl rand -base64 48`); or run with --dev \
         to turn access tokens off on a trusted network"
    )]
    NoAccessControl,
    /// `marquee token` has no secret to sign with.
    #[error(
        "no token secret to sign with: pass --auth-secret-file PATH, set MARQUEE_AUTH_SECRET, \
         or point --config at the server's configuration file"
    )]
    NoTokenSecret,
}

/// The server's configuration: defaults, overridden by the file named by `--config` /
/// `MARQUEE_CONFIG`, overridden by environment variables, overridden by flags. Validates
/// everything the server would otherwise refuse later (or worse, accept silently).
pub fn load(cli: &ServeArgs) -> Result<ServerConfig, SettingsError> {
    let file = read_config_file(&cli.common)?;
    build(file.as_ref(), cli)
}

/// The key `marquee token` signs with: the secret from the flags or environment, else from
/// the configuration file.
pub fn token_key(common: &CommonArgs) -> Result<TokenKey, SettingsError> {
    let file = read_config_file(common)?;
    let secret = resolve_secret(file.as_ref(), common)?.ok_or(SettingsError::NoTokenSecret)?;
    // `resolve_secret` has checked the length; this cannot fail, but report rather than
    // panic if it ever does.
    TokenKey::new(secret.value.as_bytes()).map_err(|err| SettingsError::Invalid {
        setting: secret.origin,
        reason: err.to_string(),
    })
}

/// `config` in the file's schema, secrets (and passwords in URLs) replaced by
/// `<redacted>`: what `marquee check-config` prints and the startup log shows.
pub fn effective(config: &ServerConfig) -> FileSettings {
    let l = &config.limits;
    let rate = |rate: Rate| {
        Some(RateFile {
            per_second: Some(rate.per_second),
            burst: Some(rate.burst),
        })
    };
    FileSettings {
        http: Some(config.http),
        udp: Some(config.udp),
        public_ips: Some(config.public_ips.clone()),
        include_loopback: Some(config.include_loopback),
        web_root: Some(config.web_root.clone()),
        max_message_bytes: Some(config.max_message_bytes),
        redis_url: config.redis_url.as_deref().map(redact_url),
        dev: Some(config.dev),
        auth_secret: config.auth_secret.as_ref().map(|_| REDACTED.to_owned()),
        auth_secret_file: None,
        cors_origins: Some(config.cors_origins.clone()),
        shutdown_grace_secs: Some(config.shutdown_grace.as_secs()),
        turn: Some(
            config
                .turn
                .iter()
                .map(|turn| TurnFile {
                    urls: turn.urls.clone(),
                    secret: (!turn.secret.is_empty()).then(|| REDACTED.to_owned()),
                    ttl_secs: Some(turn.ttl.as_secs()),
                })
                .collect(),
        ),
        limits: Some(LimitsFile {
            max_rooms: Some(l.admission.max_rooms),
            max_peers_per_room: Some(l.admission.max_peers_per_room),
            max_peers: Some(l.admission.max_peers),
            ws_upgrades_per_ip: rate(l.ws_upgrades_per_ip),
            http_per_ip: rate(l.http_per_ip),
            messages_per_connection: rate(l.messages_per_connection),
            chat_per_party: rate(l.chat_per_party),
        }),
        telemetry: Some(TelemetryFile {
            otlp_endpoint: config.telemetry.otlp_endpoint.as_deref().map(redact_url),
            service_name: Some(config.telemetry.service_name.clone()),
            export_interval_ms: Some(
                u64::try_from(config.telemetry.export_interval.as_millis()).unwrap_or(u64::MAX),
            ),
        }),
        media: Some(MediaFile {
            viewer_srtp_profiles: Some(
                config
                    .viewer_srtp_profiles
                    .iter()
                    .map(|p| p.iana_name().to_owned())
                    .collect(),
            ),
            workers: Some(config.workers),
        }),
    }
}

/// A parsed configuration file and where it is (for error messages and relative paths).
struct LoadedFile {
    path: PathBuf,
    settings: FileSettings,
}

impl LoadedFile {
    /// How errors name `key` of this file.
    fn key(&self, key: &str) -> String {
        format!("`{key}` in {}", self.path.display())
    }

    /// `path` as written in the file: relative paths are taken from the file's directory, so
    /// the file works wherever the server is started (systemd starts it in `/`).
    fn resolve(&self, path: &Path) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        }
    }
}

/// How errors name a flag and its environment variable.
fn flag(name: &str, env: &str) -> String {
    format!("--{name} (or {env})")
}

fn invalid(setting: String, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// An empty string counts as unset in every layer, so `MARQUEE_REDIS_URL=` in a compose file
/// means "not set" rather than "an empty URL" (as OpenTelemetry's variables are read).
fn non_empty(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|v| !v.trim().is_empty())
}

fn read_config_file(common: &CommonArgs) -> Result<Option<LoadedFile>, SettingsError> {
    let Some(path) = common.config.as_ref().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|error| SettingsError::Read {
        what: "configuration file",
        path: path.clone(),
        error,
    })?;
    let settings = parse_file(&text).map_err(|error| SettingsError::Parse {
        path: path.clone(),
        error: Box::new(error),
    })?;
    Ok(Some(LoadedFile {
        path: path.clone(),
        settings,
    }))
}

/// Parses a configuration file's text.
pub fn parse_file(text: &str) -> Result<FileSettings, toml::de::Error> {
    toml::from_str(text)
}

/// The layering itself: defaults, then `file`, then flags and environment (`cli`).
fn build(file: Option<&LoadedFile>, cli: &ServeArgs) -> Result<ServerConfig, SettingsError> {
    let mut config = ServerConfig::default();
    // TURN servers with where each came from, for the checks after all layers are applied
    // (the URLs may come from the file and the secret from the environment).
    let mut turn: Vec<(TurnConfig, String)> = Vec::new();
    if let Some(file) = file {
        apply_file(&mut config, &mut turn, file)?;
    }
    apply_cli(&mut config, &mut turn, cli)?;
    for (server, origin) in &turn {
        check_turn(server, origin)?;
    }
    config.turn = turn.into_iter().map(|(server, _)| server).collect();
    if let Some(secret) = resolve_secret(file, &cli.common)? {
        config.auth_secret = Some(secret.value);
    }
    if !config.dev && config.auth_secret.is_none() {
        return Err(SettingsError::NoAccessControl);
    }
    Ok(config)
}

fn apply_file(
    config: &mut ServerConfig,
    turn: &mut Vec<(TurnConfig, String)>,
    file: &LoadedFile,
) -> Result<(), SettingsError> {
    let s = &file.settings;
    if let Some(http) = s.http {
        config.http = http;
    }
    if let Some(udp) = s.udp {
        config.udp = udp;
    }
    if let Some(ips) = &s.public_ips {
        config.public_ips = ips.clone();
    }
    if let Some(include) = s.include_loopback {
        config.include_loopback = include;
    }
    if let Some(root) = &s.web_root {
        config.web_root = file.resolve(root);
    }
    if let Some(bytes) = s.max_message_bytes {
        config.max_message_bytes = positive(bytes, || file.key("max_message_bytes"))?;
    }
    if let Some(url) = non_empty(s.redis_url.as_ref()) {
        config.redis_url = Some(check_redis_url(url, || file.key("redis_url"))?);
    }
    if let Some(dev) = s.dev {
        config.dev = dev;
    }
    if let Some(origins) = &s.cors_origins {
        config.cors_origins = check_origins(origins, || file.key("cors_origins"))?;
    }
    if let Some(secs) = s.shutdown_grace_secs {
        config.shutdown_grace = Duration::from_secs(secs);
    }
    for (i, entry) in s.turn.iter().flatten().enumerate() {
        let origin = file.key(&format!("[[turn]] #{}", i + 1));
        let ttl = match entry.ttl_secs {
            Some(secs) => Duration::from_secs(positive(secs, || format!("ttl_secs of {origin}"))?),
            None => DEFAULT_TURN_TTL,
        };
        let server = TurnConfig {
            urls: entry.urls.clone(),
            secret: non_empty(entry.secret.as_ref())
                .unwrap_or_default()
                .to_owned(),
            ttl,
        };
        turn.push((server, origin));
    }
    if let Some(limits) = &s.limits {
        apply_limits_file(&mut config.limits, limits, file)?;
    }
    if let Some(t) = &s.telemetry {
        apply_telemetry(
            &mut config.telemetry,
            non_empty(t.otlp_endpoint.as_ref()),
            non_empty(t.service_name.as_ref()),
            t.export_interval_ms,
            |key| file.key(&format!("telemetry.{key}")),
        )?;
    }
    if let Some(n) = s.media.as_ref().and_then(|m| m.workers) {
        config.workers = workers(n, || file.key("media.workers"))?;
    }
    if let Some(names) = s
        .media
        .as_ref()
        .and_then(|m| m.viewer_srtp_profiles.as_ref())
    {
        config.viewer_srtp_profiles =
            srtp_profiles(names, || file.key("media.viewer_srtp_profiles"))?;
    }
    Ok(())
}

/// A number of forwarding shards: 1 to [`sfu::shard::MAX_SHARDS`].
fn workers(n: usize, setting: impl Fn() -> String) -> Result<usize, SettingsError> {
    if (1..=sfu::shard::MAX_SHARDS).contains(&n) {
        Ok(n)
    } else {
        Err(invalid(
            setting(),
            format!("{n}: between 1 and {} shards", sfu::shard::MAX_SHARDS),
        ))
    }
}

/// A non-empty list of SRTP profiles the fast path implements, by IANA name.
fn srtp_profiles(
    names: &[String],
    setting: impl Fn() -> String,
) -> Result<Vec<SrtpProfile>, SettingsError> {
    let known = || {
        SrtpProfile::ALL
            .iter()
            .map(|p| p.iana_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() {
        return Err(invalid(
            setting(),
            format!("list at least one of {}", known()),
        ));
    }
    let mut profiles = Vec::new();
    for name in names {
        let profile = SrtpProfile::from_iana_name(name).ok_or_else(|| {
            invalid(
                setting(),
                format!(
                    "unknown SRTP profile {name:?}; the SFU implements {}",
                    known()
                ),
            )
        })?;
        if !profiles.contains(&profile) {
            profiles.push(profile);
        }
    }
    Ok(profiles)
}

fn apply_limits_file(
    limits: &mut LimitsConfig,
    file_limits: &LimitsFile,
    file: &LoadedFile,
) -> Result<(), SettingsError> {
    let key = |name: &str| file.key(&format!("limits.{name}"));
    let rates = [
        (
            "ws_upgrades_per_ip",
            &mut limits.ws_upgrades_per_ip,
            file_limits.ws_upgrades_per_ip,
        ),
        (
            "http_per_ip",
            &mut limits.http_per_ip,
            file_limits.http_per_ip,
        ),
        (
            "messages_per_connection",
            &mut limits.messages_per_connection,
            file_limits.messages_per_connection,
        ),
        (
            "chat_per_party",
            &mut limits.chat_per_party,
            file_limits.chat_per_party,
        ),
    ];
    for (name, rate, entry) in rates {
        let Some(entry) = entry else { continue };
        let merged = Rate {
            per_second: entry.per_second.unwrap_or(rate.per_second),
            burst: entry.burst.unwrap_or(rate.burst),
        };
        // The limiter's own check, so the file is refused for exactly what the server
        // would refuse.
        merged
            .quota()
            .map_err(|reason| invalid(key(name), reason))?;
        *rate = merged;
    }
    let admission = &mut limits.admission;
    if let Some(n) = file_limits.max_rooms {
        admission.max_rooms = positive(n, || key("max_rooms"))?;
    }
    if let Some(n) = file_limits.max_peers_per_room {
        admission.max_peers_per_room = positive(n, || key("max_peers_per_room"))?;
    }
    if let Some(n) = file_limits.max_peers {
        admission.max_peers = positive(n, || key("max_peers"))?;
    }
    Ok(())
}

fn apply_cli(
    config: &mut ServerConfig,
    turn: &mut Vec<(TurnConfig, String)>,
    cli: &ServeArgs,
) -> Result<(), SettingsError> {
    if let Some(http) = cli.http {
        config.http = http;
    }
    if let Some(udp) = cli.udp {
        config.udp = udp;
    }
    if !cli.public_ips.is_empty() {
        config.public_ips = cli.public_ips.clone();
    }
    if let Some(no_loopback) = cli.no_loopback {
        config.include_loopback = !no_loopback;
    }
    if let Some(root) = cli.web_root.as_ref().filter(|p| !p.as_os_str().is_empty()) {
        config.web_root = root.clone();
    }
    if let Some(bytes) = cli.max_message_bytes {
        config.max_message_bytes = positive(bytes, || {
            flag("max-message-bytes", "MARQUEE_MAX_MESSAGE_BYTES")
        })?;
    }
    if let Some(url) = non_empty(cli.redis_url.as_ref()) {
        config.redis_url = Some(check_redis_url(url, || flag("redis", "MARQUEE_REDIS_URL"))?);
    }
    if let Some(dev) = cli.dev {
        config.dev = dev;
    }
    if !cli.cors_origins.is_empty() {
        config.cors_origins = check_origins(&cli.cors_origins, || {
            flag("cors-origin", "MARQUEE_CORS_ORIGIN")
        })?;
    }
    if let Some(secs) = cli.shutdown_grace_secs {
        config.shutdown_grace = Duration::from_secs(secs);
    }
    apply_turn_cli(turn, cli)?;
    let admission = &mut config.limits.admission;
    if let Some(n) = cli.max_rooms {
        admission.max_rooms = positive(n, || flag("max-rooms", "MARQUEE_MAX_ROOMS"))?;
    }
    if let Some(n) = cli.max_peers_per_room {
        admission.max_peers_per_room = positive(n, || {
            flag("max-peers-per-room", "MARQUEE_MAX_PEERS_PER_ROOM")
        })?;
    }
    if let Some(n) = cli.workers {
        config.workers = workers(n, || flag("workers", "MARQUEE_WORKERS"))?;
    }
    if let Some(n) = cli.max_peers {
        admission.max_peers = positive(n, || flag("max-peers", "MARQUEE_MAX_PEERS"))?;
    }
    apply_telemetry(
        &mut config.telemetry,
        non_empty(cli.otlp_endpoint.as_ref()),
        non_empty(cli.service_name.as_ref()),
        cli.otlp_export_interval_ms,
        |key| match key {
            "otlp_endpoint" => flag("otlp-endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            "service_name" => flag("service-name", "OTEL_SERVICE_NAME"),
            _ => flag("otlp-export-interval-ms", "MARQUEE_OTLP_EXPORT_INTERVAL_MS"),
        },
    )
}

/// The TURN flags: with `--turn-url` they describe one server that replaces the file's list;
/// without it, `--turn-secret` and `--turn-ttl-secs` apply to every server of the file, so
/// the URLs can live in the file and the secret in the environment.
fn apply_turn_cli(
    turn: &mut Vec<(TurnConfig, String)>,
    cli: &ServeArgs,
) -> Result<(), SettingsError> {
    let secret = non_empty(cli.turn_secret.as_ref());
    let ttl = match cli.turn_ttl_secs {
        Some(secs) => Some(Duration::from_secs(positive(secs, || {
            flag("turn-ttl-secs", "MARQUEE_TURN_TTL_SECS")
        })?)),
        None => None,
    };
    if !cli.turn_urls.is_empty() {
        *turn = vec![(
            TurnConfig {
                urls: cli.turn_urls.clone(),
                secret: secret.unwrap_or_default().to_owned(),
                ttl: ttl.unwrap_or(DEFAULT_TURN_TTL),
            },
            flag("turn-url", "MARQUEE_TURN_URL"),
        )];
        return Ok(());
    }
    if turn.is_empty() && (secret.is_some() || ttl.is_some()) {
        return Err(invalid(
            flag("turn-secret", "MARQUEE_TURN_SECRET"),
            "a TURN secret or TTL was given but no TURN server: add --turn-url \
             (MARQUEE_TURN_URL) or a [[turn]] entry to the configuration file",
        ));
    }
    for (server, _) in turn.iter_mut() {
        if let Some(secret) = secret {
            server.secret = secret.to_owned();
        }
        if let Some(ttl) = ttl {
            server.ttl = ttl;
        }
    }
    Ok(())
}

fn apply_telemetry(
    telemetry: &mut TelemetryConfig,
    endpoint: Option<&str>,
    service_name: Option<&str>,
    export_interval_ms: Option<u64>,
    setting: impl Fn(&str) -> String,
) -> Result<(), SettingsError> {
    if let Some(endpoint) = endpoint {
        let endpoint = endpoint.trim();
        check_otlp_endpoint(endpoint)
            .map_err(|reason| invalid(setting("otlp_endpoint"), reason))?;
        telemetry.otlp_endpoint = Some(endpoint.to_owned());
    }
    if let Some(name) = service_name {
        telemetry.service_name = name.to_owned();
    }
    if let Some(ms) = export_interval_ms {
        telemetry.export_interval =
            Duration::from_millis(positive(ms, || setting("export_interval_ms"))?);
    }
    Ok(())
}

/// A token secret and where it came from.
struct Secret {
    value: String,
    origin: String,
}

/// The token secret of the highest layer that has one (flags and environment, then the
/// file), checked for length. Each layer may give the secret inline or as a file, not both:
/// two spellings of one setting that disagree would leave the operator guessing which won.
fn resolve_secret(
    file: Option<&LoadedFile>,
    common: &CommonArgs,
) -> Result<Option<Secret>, SettingsError> {
    let cli_inline = non_empty(common.auth_secret.as_ref()).map(|value| Secret {
        value: value.to_owned(),
        origin: flag("auth-secret", "MARQUEE_AUTH_SECRET"),
    });
    let cli_file = common
        .auth_secret_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|path| {
            (
                path.clone(),
                flag("auth-secret-file", "MARQUEE_AUTH_SECRET_FILE"),
            )
        });
    let secret = match pick_secret(cli_inline, cli_file)? {
        Some(secret) => Some(secret),
        None => match file {
            Some(file) => {
                let inline = non_empty(file.settings.auth_secret.as_ref()).map(|value| Secret {
                    value: value.to_owned(),
                    origin: file.key("auth_secret"),
                });
                let from_file = file
                    .settings
                    .auth_secret_file
                    .as_ref()
                    .map(|path| (file.resolve(path), file.key("auth_secret_file")));
                pick_secret(inline, from_file)?
            }
            None => None,
        },
    };
    if let Some(secret) = &secret {
        TokenKey::new(secret.value.as_bytes())
            .map_err(|err| invalid(secret.origin.clone(), err.to_string()))?;
    }
    Ok(secret)
}

/// One layer's secret: inline, or read from a file; both is an error.
fn pick_secret(
    inline: Option<Secret>,
    file: Option<(PathBuf, String)>,
) -> Result<Option<Secret>, SettingsError> {
    match (inline, file) {
        (Some(inline), Some((_, file_origin))) => Err(invalid(
            inline.origin,
            format!("the token secret is also given by {file_origin}; set only one"),
        )),
        (Some(inline), None) => Ok(Some(inline)),
        (None, Some((path, origin))) => {
            let text = std::fs::read_to_string(&path).map_err(|error| SettingsError::Read {
                what: "token secret file",
                path: path.clone(),
                error,
            })?;
            // `echo` and `openssl rand` end the file with a newline that is not part of the
            // secret; other whitespace is kept, as it may be.
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                return Err(invalid(origin, format!("{} is empty", path.display())));
            }
            Ok(Some(Secret { value, origin }))
        }
        (None, None) => Ok(None),
    }
}

/// A TURN server clients can use: URLs of a known scheme, a secret when any URL needs
/// credentials (browsers refuse a `turn:` URL without them), a TTL above zero.
fn check_turn(server: &TurnConfig, origin: &str) -> Result<(), SettingsError> {
    if server.urls.is_empty() {
        return Err(invalid(origin.to_owned(), "no urls"));
    }
    for url in &server.urls {
        if !["turn:", "turns:", "stun:"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(invalid(
                origin.to_owned(),
                format!("`{url}` is not a turn:, turns: or stun: URL"),
            ));
        }
    }
    let needs_secret = server
        .urls
        .iter()
        .any(|url| url.starts_with("turn:") || url.starts_with("turns:"));
    if needs_secret && server.secret.is_empty() {
        return Err(invalid(
            origin.to_owned(),
            "turn: and turns: URLs need the secret shared with the TURN server (coturn \
             static-auth-secret): set `secret` in [[turn]], --turn-secret or \
             MARQUEE_TURN_SECRET",
        ));
    }
    if server.ttl.is_zero() {
        return Err(invalid(
            origin.to_owned(),
            "the credential TTL must be above 0",
        ));
    }
    Ok(())
}

/// Catches the common mistake of a bare `host:port`, which the Redis client would only
/// report once the server is starting.
fn check_redis_url(url: &str, setting: impl Fn() -> String) -> Result<String, SettingsError> {
    let url = url.trim();
    let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if known.iter().any(|scheme| url.starts_with(scheme)) {
        Ok(url.to_owned())
    } else {
        Err(invalid(
            setting(),
            format!(
                "`{}` is not a Redis URL; expected redis://host:6379/0 (or rediss://, unix://)",
                redact_url(url)
            ),
        ))
    }
}

/// CORS origins as the browser sends them: `*`, or `scheme://host[:port]` without a path.
/// Anything else would never match, silently.
fn check_origins(
    origins: &[String],
    setting: impl Fn() -> String,
) -> Result<Vec<String>, SettingsError> {
    for origin in origins {
        let plausible = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/')));
        if !plausible {
            return Err(invalid(
                setting(),
                format!(
                    "`{origin}` is not an origin; expected `*` or https://host[:port] (no path)"
                ),
            ));
        }
    }
    Ok(origins.to_vec())
}

/// The checks `telemetry` applies to `OTEL_EXPORTER_OTLP_ENDPOINT` (private there), so a
/// typo in the file or a flag fails at startup, not as a warning on every export.
fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: axum::http::Uri = endpoint
        .parse()
        .map_err(|_| format!("`{endpoint}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err("https is not supported (no TLS client built in)".into()),
        _ => return Err(format!("`{endpoint}` is not an http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{endpoint}` has no host"));
    }
    if uri.query().is_some() {
        return Err("a query string cannot take the /v1/<signal> suffix".into());
    }
    Ok(())
}

/// `n` if above zero: zero would refuse everything (rooms, messages) or never expire.
fn positive<N: PartialOrd + Default + Copy + fmt::Display>(
    n: N,
    setting: impl Fn() -> String,
) -> Result<N, SettingsError> {
    if n > N::default() {
        Ok(n)
    } else {
        Err(invalid(setting(), format!("must be above 0, not {n}")))
    }
}

/// `url` with any `user:password@` replaced, for logs and errors.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, FromArgMatches};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    /// Parses `args` (after the program name) as `marquee serve` would, with every argument's
    /// environment variable unhooked so that the test's own environment cannot leak in.
    /// `tests/config.rs` covers the environment layer through the real binary.
    fn args(args: &[&str]) -> ServeArgs {
        let command = ServeArgs::augment_args(clap::Command::new("marquee"))
            .mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command
            .try_get_matches_from(std::iter::once("marquee").chain(args.iter().copied()))
            .expect("valid arguments");
        ServeArgs::from_arg_matches(&matches).expect("matches of ServeArgs")
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    fn file(text: &str) -> LoadedFile {
        LoadedFile {
            path: PathBuf::from("/etc/marquee/marquee.toml"),
            settings: parse_file(text).expect("valid file"),
        }
    }

    fn build_err(text: &str, cli: &[&str]) -> String {
        match build(Some(&file(text)), &args(cli)) {
            Ok(_) => panic!("expected an error for {text:?} {cli:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn every_section_of_the_file_is_read() {
        let text = format!(
            r#"
            http = "127.0.0.1:9000"
            udp = "127.0.0.1:9001"
            public_ips = ["203.0.113.7"]
            include_loopback = false
            web_root = "site"
            max_message_bytes = 4096
            redis_url = "redis://cache:6379/1"
            auth_secret = "{SECRET}"
            cors_origins = ["https://watch.example.com"]
            shutdown_grace_secs = 3

            [[turn]]
            urls = ["turn:turn.example.com:3478?transport=udp", "stun:turn.example.com:3478"]
            secret = "coturn-secret"
            ttl_secs = 600

            [[turn]]
            urls = ["stun:stun.example.net"]

            [limits]
            max_rooms = 10
            max_peers_per_room = 20
            max_peers = 30

            [limits.ws_upgrades_per_ip]
            per_second = 1
            burst = 5

            [limits.chat_per_party]
            burst = 7

            [telemetry]
            otlp_endpoint = "http://127.0.0.1:4318"
            service_name = "edge-1"
            export_interval_ms = 500

            [media]
            viewer_srtp_profiles = ["srtp_aead_aes_128_gcm", "SRTP_AES128_CM_HMAC_SHA1_80"]
            workers = 3
            "#
        );
        let config = build(Some(&file(&text)), &ServeArgs::default()).unwrap();
        assert_eq!(config.http, addr("127.0.0.1:9000"));
        assert_eq!(config.udp, addr("127.0.0.1:9001"));
        assert_eq!(
            config.public_ips,
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
        assert!(!config.include_loopback);
        assert_eq!(
            config.web_root,
            PathBuf::from("/etc/marquee/site"),
            "relative to the file"
        );
        assert_eq!(config.max_message_bytes, 4096);
        assert_eq!(config.redis_url.as_deref(), Some("redis://cache:6379/1"));
        assert!(!config.dev);
        assert_eq!(config.auth_secret.as_deref(), Some(SECRET));
        assert_eq!(config.cors_origins, vec!["https://watch.example.com"]);
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.turn.len(), 2);
        assert_eq!(config.turn[0].secret, "coturn-secret");
        assert_eq!(config.turn[0].ttl, Duration::from_secs(600));
        assert_eq!(config.turn[1].secret, "");
        assert_eq!(config.turn[1].ttl, DEFAULT_TURN_TTL);
        let limits = &config.limits;
        assert_eq!(limits.admission.max_rooms, 10);
        assert_eq!(limits.admission.max_peers_per_room, 20);
        assert_eq!(limits.admission.max_peers, 30);
        assert_eq!(
            limits.ws_upgrades_per_ip,
            Rate {
                per_second: 1.0,
                burst: 5
            }
        );
        let default_chat = LimitsConfig::default().chat_per_party;
        assert_eq!(
            limits.chat_per_party.per_second, default_chat.per_second,
            "half a rate keeps the other half"
        );
        assert_eq!(limits.chat_per_party.burst, 7);
        assert_eq!(limits.http_per_ip, LimitsConfig::default().http_per_ip);
        assert_eq!(
            config.telemetry.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(config.telemetry.service_name, "edge-1");
        assert_eq!(config.telemetry.export_interval, Duration::from_millis(500));
        assert_eq!(
            config.viewer_srtp_profiles,
            vec![SrtpProfile::AeadAes128Gcm, SrtpProfile::Aes128CmHmacSha1_80]
        );
        assert_eq!(config.workers, 3);
    }

    #[test]
    fn workers_come_from_the_file_or_the_flag_within_bounds() {
        let config = build(
            Some(&file("dev = true\n[media]\nworkers = 2\n")),
            &args(&["--workers", "4"]),
        )
        .unwrap();
        assert_eq!(config.workers, 4, "the flag over the file");
        let err = build_err("dev = true\n[media]\nworkers = 0\n", &[]);
        assert!(
            err.contains("`media.workers`") && err.contains("between 1 and 62"),
            "{err}"
        );
        let err = build_err("dev = true\n", &["--workers", "63"]);
        assert!(
            err.contains("--workers") && err.contains("MARQUEE_WORKERS"),
            "{err}"
        );
    }

    #[test]
    fn viewer_srtp_profiles_must_name_profiles_the_sfu_implements() {
        let err = build_err(
            "dev = true\n[media]\nviewer_srtp_profiles = [\"SRTP_AEAD_AES_256_GCM\"]\n",
            &[],
        );
        assert!(
            err.contains("`media.viewer_srtp_profiles`")
                && err.contains("unknown SRTP profile \"SRTP_AEAD_AES_256_GCM\"")
                && err.contains("SRTP_AES128_CM_HMAC_SHA1_80"),
            "{err}"
        );
        let err = build_err("dev = true\n[media]\nviewer_srtp_profiles = []\n", &[]);
        assert!(err.contains("list at least one of"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse_file("htttp = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("htttp"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        let err = parse_file("[limits]\nmax_room = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_room"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = parse_file("[limits.http_per_ip]\nrate = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rate"), "{err}");
        let err = parse_file("[[turn]]\nurls = []\npassword = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("password"), "{err}");
    }

    #[test]
    fn wrong_types_say_where() {
        let err = parse_file("dev = true\nhttp = 8080\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = parse_file("udp = \"nowhere\"\n").unwrap_err().to_string();
        assert!(err.contains("socket address"), "{err}");
    }

    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        let text = format!(
            "http = \"127.0.0.1:9000\"\nudp = \"127.0.0.1:9001\"\nauth_secret = \"{SECRET}\"\n\
             cors_origins = [\"https://a.example\"]\nshutdown_grace_secs = 3\n\
             include_loopback = false\n[limits]\nmax_rooms = 10\nmax_peers = 30\n"
        );
        let cli = args(&[
            "--http",
            "127.0.0.1:7000",
            "--cors-origin",
            "https://b.example,https://c.example",
            "--max-rooms",
            "11",
            "--no-loopback=false",
        ]);
        let config = build(Some(&file(&text)), &cli).unwrap();
        assert_eq!(config.http, addr("127.0.0.1:7000"), "flag over file");
        assert_eq!(config.udp, addr("127.0.0.1:9001"), "file over default");
        assert_eq!(
            config.cors_origins,
            vec!["https://b.example", "https://c.example"]
        );
        assert_eq!(config.limits.admission.max_rooms, 11, "flag over file");
        assert_eq!(config.limits.admission.max_peers, 30, "file over default");
        assert_eq!(
            config.limits.admission.max_peers_per_room,
            crate::rooms::Admission::default().max_peers_per_room,
            "default where nobody says"
        );
        assert!(
            config.include_loopback,
            "--no-loopback=false over the file's false"
        );
        assert_eq!(config.shutdown_grace, Duration::from_secs(3));
        assert_eq!(config.auth_secret.as_deref(), Some(SECRET));
    }

    #[test]
    fn without_a_file_the_defaults_hold() {
        let config = build(None, &args(&["--dev"])).unwrap();
        let defaults = ServerConfig::default();
        assert!(config.dev);
        assert_eq!(config.http, defaults.http);
        assert_eq!(config.udp, defaults.udp);
        assert_eq!(config.shutdown_grace, defaults.shutdown_grace);
        assert_eq!(config.limits, defaults.limits);
        assert_eq!(config.telemetry, defaults.telemetry);
        assert_eq!(config.cors_origins, defaults.cors_origins);
        assert!(config.turn.is_empty());
    }

    #[test]
    fn a_flag_secret_overrides_the_files_and_dev_can_be_turned_off() {
        let other = "another-secret-that-is-long-enough-0123";
        let text = format!("dev = true\nauth_secret = \"{SECRET}\"\n");
        let config = build(
            Some(&file(&text)),
            &args(&["--auth-secret", other, "--dev=false"]),
        )
        .unwrap();
        assert_eq!(config.auth_secret.as_deref(), Some(other));
        assert!(!config.dev);
    }

    #[test]
    fn the_server_refuses_to_start_without_access_control() {
        let err = build(None, &ServeArgs::default()).unwrap_err();
        assert!(matches!(err, SettingsError::NoAccessControl), "{err}");
        assert!(err.to_string().contains("--dev"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused_naming_their_source() {
        let err = build_err("auth_secret = \"short\"\n", &[]);
        assert!(
            err.contains("`auth_secret` in /etc/marquee/marquee.toml"),
            "{err}"
        );
        assert!(err.contains("at least 32"), "{err}");
        assert!(
            !err.contains("short\""),
            "the secret itself is never shown: {err}"
        );
        let err = build(None, &args(&["--auth-secret", "tiny"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--auth-secret (or MARQUEE_AUTH_SECRET)"),
            "{err}"
        );
    }

    #[test]
    fn secret_files_are_read_and_both_spellings_at_once_are_refused() {
        let dir = std::env::temp_dir().join(format!("marquee-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let path_arg = path.to_str().unwrap();
        let config = build(None, &args(&["--auth-secret-file", path_arg])).unwrap();
        assert_eq!(
            config.auth_secret.as_deref(),
            Some(SECRET),
            "the trailing newline is dropped"
        );

        let both = args(&["--auth-secret-file", path_arg, "--auth-secret", SECRET]);
        let err = build(None, &both).unwrap_err().to_string();
        assert!(err.contains("set only one"), "{err}");

        // Relative to the file's directory.
        let loaded = LoadedFile {
            path: dir.join("marquee.toml"),
            settings: parse_file("auth_secret_file = \"secret\"\n").unwrap(),
        };
        let config = build(Some(&loaded), &ServeArgs::default()).unwrap();
        assert_eq!(config.auth_secret.as_deref(), Some(SECRET));

        let missing = args(&["--auth-secret-file", "/nonexistent/marquee-secret"]);
        let err = build(None, &missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/marquee-secret"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rates_must_be_positive() {
        let base = format!("auth_secret = \"{SECRET}\"\n");
        let err = build_err(
            &format!("{base}[limits.http_per_ip]\nper_second = 0\n"),
            &[],
        );
        assert!(err.contains("`limits.http_per_ip`"), "{err}");
        assert!(err.contains("per_second"), "{err}");
        let err = build_err(
            &format!("{base}[limits.messages_per_connection]\nper_second = -1.5\n"),
            &[],
        );
        assert!(err.contains("`limits.messages_per_connection`"), "{err}");
        let err = build_err(&format!("{base}[limits.chat_per_party]\nburst = 0\n"), &[]);
        assert!(
            err.contains("`limits.chat_per_party`") && err.contains("burst"),
            "{err}"
        );
        let err = build_err(&format!("{base}[limits]\nmax_peers = 0\n"), &[]);
        assert!(err.contains("`limits.max_peers`"), "{err}");
        let err = build_err(&base, &["--max-rooms", "0"]);
        assert!(err.contains("--max-rooms (or MARQUEE_MAX_ROOMS)"), "{err}");
    }

    #[test]
    fn turn_servers_are_checked_after_all_layers() {
        let base = format!("auth_secret = \"{SECRET}\"\n");
        let err = build_err(
            &format!("{base}[[turn]]\nurls = [\"turn:t.example:3478\"]\n"),
            &[],
        );
        assert!(
            err.contains("[[turn]] #1") && err.contains("secret"),
            "{err}"
        );
        let err = build_err(
            &format!("{base}[[turn]]\nurls = [\"http://t.example\"]\nsecret = \"s\"\n"),
            &[],
        );
        assert!(
            err.contains("http://t.example") && err.contains("turn:, turns: or stun:"),
            "{err}"
        );
        let err = build_err(&format!("{base}[[turn]]\nurls = []\n"), &[]);
        assert!(err.contains("no urls"), "{err}");
        let err = build_err(
            &format!("{base}[[turn]]\nurls = [\"stun:s.example\"]\nttl_secs = 0\n"),
            &[],
        );
        assert!(err.contains("ttl_secs"), "{err}");

        // The URLs from the file, the secret from the environment or a flag.
        let text = format!("{base}[[turn]]\nurls = [\"turn:t.example:3478\"]\n");
        let config = build(
            Some(&file(&text)),
            &args(&["--turn-secret", "s3", "--turn-ttl-secs", "60"]),
        )
        .unwrap();
        assert_eq!(config.turn[0].secret, "s3");
        assert_eq!(config.turn[0].ttl, Duration::from_secs(60));

        // --turn-url replaces the file's list.
        let config = build(
            Some(&file(&text)),
            &args(&[
                "--turn-url",
                "turns:u.example:5349",
                "--turn-url",
                "stun:u.example",
                "--turn-secret",
                "s4",
            ]),
        )
        .unwrap();
        assert_eq!(config.turn.len(), 1);
        assert_eq!(
            config.turn[0].urls,
            vec!["turns:u.example:5349", "stun:u.example"]
        );
        assert_eq!(config.turn[0].ttl, DEFAULT_TURN_TTL);

        let err = build(None, &args(&["--dev", "--turn-url", "turn:u.example"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--turn-url (or MARQUEE_TURN_URL)") && err.contains("secret"),
            "{err}"
        );
        let err = build(None, &args(&["--dev", "--turn-secret", "s"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no TURN server"), "{err}");
        // STUN needs no secret.
        build(None, &args(&["--dev", "--turn-url", "stun:u.example"])).unwrap();
    }

    #[test]
    fn other_values_are_checked_where_they_come_from() {
        let base = format!("auth_secret = \"{SECRET}\"\n");
        let err = build_err(&format!("{base}redis_url = \"127.0.0.1:6379\"\n"), &[]);
        assert!(
            err.contains("`redis_url`") && err.contains("redis://"),
            "{err}"
        );
        let err = build_err(&base, &["--redis", "cache:6379"]);
        assert!(err.contains("--redis (or MARQUEE_REDIS_URL)"), "{err}");
        let err = build_err(
            &format!("{base}cors_origins = [\"https://a.example/app\"]\n"),
            &[],
        );
        assert!(err.contains("`cors_origins`"), "{err}");
        let err = build_err(
            &format!("{base}[telemetry]\notlp_endpoint = \"https://c.example\"\n"),
            &[],
        );
        assert!(
            err.contains("`telemetry.otlp_endpoint`") && err.contains("https"),
            "{err}"
        );
        let err = build_err(&format!("{base}[telemetry]\nexport_interval_ms = 0\n"), &[]);
        assert!(err.contains("`telemetry.export_interval_ms`"), "{err}");
        let err = build_err(&base, &["--otlp-endpoint", "collector:4318"]);
        assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
        let err = build_err(&format!("{base}max_message_bytes = 0\n"), &[]);
        assert!(err.contains("`max_message_bytes`"), "{err}");
    }

    #[test]
    fn empty_strings_count_as_unset() {
        let text = format!("redis_url = \"redis://cache:6379/0\"\nauth_secret = \"{SECRET}\"\n");
        let config = build(
            Some(&file(&text)),
            &args(&["--redis", "", "--auth-secret", ""]),
        )
        .unwrap();
        assert_eq!(config.redis_url.as_deref(), Some("redis://cache:6379/0"));
        assert_eq!(config.auth_secret.as_deref(), Some(SECRET));
    }

    #[test]
    fn the_effective_config_hides_secrets_and_reads_back() {
        let text = format!(
            "auth_secret = \"{SECRET}\"\nredis_url = \"redis://user:hunter2@cache:6379/0\"\n\
             [[turn]]\nurls = [\"turn:t.example\"]\nsecret = \"coturn-secret\"\n"
        );
        let config = build(Some(&file(&text)), &ServeArgs::default()).unwrap();
        let shown = effective(&config);
        let toml_text = toml::to_string(&shown).unwrap();
        let json = serde_json::to_string(&shown).unwrap();
        for rendered in [&toml_text, &json] {
            assert!(!rendered.contains(SECRET), "{rendered}");
            assert!(!rendered.contains("hunter2"), "{rendered}");
            assert!(!rendered.contains("coturn-secret"), "{rendered}");
            assert!(rendered.contains("cache:6379"), "{rendered}");
        }
        // What check-config prints is a valid file of the same schema.
        assert_eq!(parse_file(&toml_text).unwrap(), shown);
    }

    #[test]
    fn the_example_file_parses_and_states_the_defaults() {
        let example = include_str!("../../marquee.example.toml");
        let settings = parse_file(example).expect("marquee.example.toml parses");
        let loaded = LoadedFile {
            path: PathBuf::from("marquee.example.toml"),
            settings,
        };
        // The example keeps the secret out of the file, as operators should.
        let mut config = build(Some(&loaded), &args(&["--auth-secret", SECRET])).unwrap();
        let defaults = ServerConfig::default();
        config.web_root = defaults.web_root.clone();
        config.auth_secret = None;
        assert_eq!(
            effective(&config),
            effective(&defaults),
            "the example's values are the documented defaults"
        );
    }

    #[test]
    fn the_load_test_config_parses_and_opens_the_limits() {
        let text = include_str!("../../loadtest/marquee-loadtest.toml");
        let settings = parse_file(text).expect("loadtest/marquee-loadtest.toml parses");
        let loaded = LoadedFile {
            path: PathBuf::from("loadtest/marquee-loadtest.toml"),
            settings,
        };
        let config = build(Some(&loaded), &args(&[])).unwrap();
        assert!(config.dev);
        assert!(config.limits.ws_upgrades_per_ip.burst >= 1000);
        assert!(config.limits.admission.max_peers >= 10_000);
    }

    #[test]
    fn the_guide_shows_the_example_file() {
        let example = include_str!("../../marquee.example.toml");
        let guide = include_str!("../../docs/configuration.md");
        assert!(
            guide.contains(example.trim()),
            "docs/configuration.md must embed marquee.example.toml"
        );
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://:pw@h:6379/0"),
            "redis://<redacted>@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(
            redact_url("http://u:p@c:4318/x@y"),
            "http://<redacted>@c:4318/x@y"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
