//! The binary's settings: [`ServerConfig`] composed from four layers, each overriding the one
//! before it:
//!
//! 1. the defaults of [`ServerConfig::default`] (the embedded single-node demo);
//! 2. a TOML file (given by `--config PATH` or `MARQUEE_CONFIG`);
//! 3. environment variables (`MARQUEE_*`, and OpenTelemetry's standard `OTEL_*` names);
//! 4. command-line flags.
//!
//! Every setting is declared once, as a field of [`Settings`] or of one of its sections
//! ([`TurnSettings`], [`LimitsSettings`], [`MediaSettings`], [`TelemetrySettings`]): the
//! field's doc is its `--help`, its clap attributes name the flag and the environment
//! variable, its name is the file key. The same structs are deserialized from the file and
//! parsed from the command line, where clap fills an absent flag from its environment
//! variable, so layers 3 and 4 arrive together. Every value is an `Option` (or a list that is
//! empty when absent) without a default: `None` means "not set in this layer" and falls
//! through, so no layer can mistake another layer's default for an explicit choice.
//!
//! `each_setting` pairs every setting with its field of [`ServerConfig`] and the codec that
//! checks and converts it; applying a layer and printing the [`effective`] configuration walk
//! that one list. Errors name where the bad value came from: the file and its key (TOML syntax
//! and type errors carry line and column), or the flag and its environment variable. Secrets
//! never appear in errors or in [`effective`]. `docs/configuration.md` is the operator's guide.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::{ArgMatches, Args, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::auth::TokenKey;
use crate::config::ServerConfig;
use crate::limits::Rate;
use crate::telemetry::{
    EXPORT_INTERVAL_ENV, OTLP_ENDPOINT_ENV, SERVICE_NAME_ENV, check_otlp_endpoint,
};
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

/// The options of `marquee serve` (also accepted by `marquee` alone, and by `check-config`):
/// where the configuration file is, and the flags of every setting; see [`load`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see docs/configuration.md and marquee.example.toml).
    ///
    /// Environment variables and flags override its values; its unknown keys are refused.
    /// Default: none, every setting comes from its default, environment or flag.
    #[arg(long, env = CONFIG_ENV, value_name = "PATH", help_heading = "Configuration")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,
}

/// One layer's settings: the configuration file's root table, or the flags (and environment
/// variables) of `marquee serve`. Field names are both the file keys and the clap ids, so
/// errors can name either. The file refuses unknown keys: a typo must not silently fall back to
/// a default.
///
/// Fields are in the order of `--help` (which groups flags by heading, in the order the
/// headings first appear), so serde lists and `check-config` prints the keys in that order
/// too. The defaults, and why, are documented with [`ServerConfig`]'s fields and `Default`,
/// and repeated in each flag's help. A few settings are file-only (`#[arg(skip)]`); where a
/// flag differs from its key, the field says how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
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
    // In the file, relative to the file's directory.
    #[arg(
        long,
        env = "MARQUEE_AUTH_SECRET_FILE",
        value_name = "PATH",
        help_heading = "Access"
    )]
    pub auth_secret_file: Option<PathBuf>,

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
    pub public_ips: Option<Vec<IpAddr>>,

    /// Do not offer loopback candidates on a wildcard media bind.
    ///
    /// Default: loopback is offered, so a browser on the server machine connects without
    /// touching the LAN. `--no-loopback=false` turns it back on over a file's setting.
    // The one flag that says the opposite of its file key: its parser inverts the value, so
    // in every layer this field means "include loopback".
    #[arg(
        long = "no-loopback",
        env = "MARQUEE_NO_LOOPBACK",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new().map(|no_loopback: bool| !no_loopback),
        value_name = "BOOL",
        help_heading = "Network"
    )]
    pub include_loopback: Option<bool>,

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
    pub cors_origins: Option<Vec<String>>,

    /// Directory of the web demo served at `/`.
    ///
    /// Default: ./web-demo when run from the repository root, else the copy next to the
    /// source of this binary.
    // In the file, relative to the file's directory.
    #[arg(
        long,
        env = "MARQUEE_WEB_ROOT",
        value_name = "DIR",
        help_heading = "Network"
    )]
    pub web_root: Option<PathBuf>,

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

    // The TURN server the flags describe; the file lists servers in `turn` instead.
    #[command(flatten)]
    #[serde(skip)]
    pub turn_flags: TurnSettings,

    /// `[[turn]]`: one entry per TURN deployment.
    #[arg(skip)]
    pub turn: Option<Vec<TurnSettings>>,

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

    #[command(flatten)]
    pub limits: Option<LimitsSettings>,

    #[command(flatten)]
    pub media: Option<MediaSettings>,

    #[command(flatten)]
    pub telemetry: Option<TelemetrySettings>,

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

/// One TURN deployment: an entry of the file's `[[turn]]` list, or the one server that
/// `--turn-url` describes. Without `--turn-url`, `--turn-secret` and `--turn-ttl-secs` apply to
/// every server of the file instead, so the URLs can live in the file and the secret in the
/// environment.
// The flags' docs name the file's `[[turn]]` table, which rustdoc would read as a link to
// `turn`. clap shows doc comments verbatim, so an escape or backticks would show in `--help`.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "TURN")]
pub struct TurnSettings {
    /// A TURN or STUN URL handed to clients (turn:host:3478?transport=udp, turns:…, stun:…).
    ///
    /// Repeat, or separate with commas, for several. These flags describe one TURN server and
    /// replace the file's [[turn]] list. Default: none, clients get no TURN server and only
    /// connect where a direct UDP path exists.
    // Required in a [[turn]] entry (no serde default); empty when the flag is absent.
    #[arg(
        long = "turn-url",
        env = "MARQUEE_TURN_URL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub urls: Vec<String>,

    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    ///
    /// Required when there are turn: or turns: URLs. Without --turn-url it sets the secret of
    /// every [[turn]] of the file (keep secrets out of files). Default: none.
    #[arg(
        long = "turn-secret",
        env = "MARQUEE_TURN_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,

    /// How long handed-out TURN credentials stay valid, in seconds.
    ///
    /// Without --turn-url it sets the TTL of every [[turn]] of the file. Default: 86400 (a
    /// day): credentials are made at join and must last the whole event.
    #[arg(
        long = "turn-ttl-secs",
        env = "MARQUEE_TURN_TTL_SECS",
        value_name = "SECS"
    )]
    pub ttl_secs: Option<u64>,
}

/// `[limits]`: admission as plain keys (and flags), rates as `[limits.<name>]` tables. Rates
/// are file-only: they are tuned once per deployment, not per run. Their defaults, and why:
/// [`crate::config::LimitsConfig`] and [`crate::config::Admission`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Limits")]
pub struct LimitsSettings {
    /// Live rooms this node admits; joins that would open more are refused.
    ///
    /// Default: 1000, sized from one node's measured capacity, so only a real overload is
    /// refused.
    #[arg(long, env = "MARQUEE_MAX_ROOMS", value_name = "N")]
    pub max_rooms: Option<usize>,

    /// Members (host and viewers) of one room; later joins are refused with the `full` error.
    ///
    /// Default: 2000.
    #[arg(long, env = "MARQUEE_MAX_PEERS_PER_ROOM", value_name = "N")]
    pub max_peers_per_room: Option<usize>,

    /// Members of all rooms of this node together.
    ///
    /// Default: 5000, the most one node should carry before a deployment adds nodes.
    #[arg(long, env = "MARQUEE_MAX_PEERS", value_name = "N")]
    pub max_peers: Option<usize>,

    /// WebSocket upgrades per client IP.
    #[arg(skip)]
    pub ws_upgrades_per_ip: Option<RateSettings>,

    /// WHIP/WHEP requests per client IP.
    #[arg(skip)]
    pub http_per_ip: Option<RateSettings>,

    /// Messages per WebSocket connection.
    #[arg(skip)]
    pub messages_per_connection: Option<RateSettings>,

    /// Chat messages and reactions per watch party.
    #[arg(skip)]
    pub chat_per_party: Option<RateSettings>,
}

/// A rate (see [`Rate`]); a missing half keeps the value below.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    pub per_second: Option<f64>,
    pub burst: Option<u32>,
}

/// `[media]`: the SFU's media plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Media")]
pub struct MediaSettings {
    /// DTLS-SRTP profiles offered to viewers, by IANA name (`SRTP_AEAD_AES_128_GCM`,
    /// `SRTP_AES128_CM_HMAC_SHA1_80`, `SRTP_AES128_CM_HMAC_SHA1_32`). File-only.
    #[arg(skip)]
    pub viewer_srtp_profiles: Option<Vec<String>>,

    /// Forwarding shards of the media plane, a core each (at most 62).
    ///
    /// A room's host lives on the shard its code hashes to; a large room's viewers spread over
    /// every shard. Default: the number of cores, so the media plane uses every core.
    #[arg(long, env = "MARQUEE_WORKERS", value_name = "N")]
    pub workers: Option<usize>,
}

/// `[telemetry]`: where traces and metrics go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetrySettings {
    /// Base URL of an OTLP/HTTP collector for traces and metrics (http://127.0.0.1:4318).
    ///
    /// Default: none, nothing is pushed and metrics are served on /metrics only.
    #[arg(long, env = OTLP_ENDPOINT_ENV, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of exported telemetry.
    ///
    /// Default: marquee.
    #[arg(long, env = SERVICE_NAME_ENV, value_name = "NAME")]
    pub service_name: Option<String>,

    /// How often metrics (and waiting spans) are pushed, in milliseconds.
    ///
    /// Default: 10000, fresh enough for dashboards at one request per signal per node.
    #[arg(
        long = "otlp-export-interval-ms",
        env = EXPORT_INTERVAL_ENV,
        value_name = "MS"
    )]
    pub export_interval_ms: Option<u64>,
}

/// The options `marquee token` shares with `serve`: `--config`, `--auth-secret` and
/// `--auth-secret-file`, as [`ServeArgs`] declares them (they are copied from its arguments
/// by id). The secret's keys sit at the file's root among the server's other keys, so they
/// cannot be a struct of their own that both commands flatten: serde cannot flatten a struct
/// into a table that refuses unknown keys.
#[derive(Debug, Clone, Default)]
pub struct TokenSecretArgs(ServeArgs);

/// The clap ids of [`TokenSecretArgs`]' arguments.
const TOKEN_SECRET_ARGS: [&str; 3] = ["config", "auth_secret", "auth_secret_file"];

impl Args for TokenSecretArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        let serve = ServeArgs::augment_args(clap::Command::new("serve"));
        let shared = serve
            .get_arguments()
            .filter(|arg| TOKEN_SECRET_ARGS.contains(&arg.get_id().as_str()));
        command.args(shared.cloned())
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for TokenSecretArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs {
            config: matches.get_one("config").cloned(),
            settings: Settings::default(),
        };
        args.settings.auth_secret = matches.get_one("auth_secret").cloned();
        args.settings.auth_secret_file = matches.get_one("auth_secret_file").cloned();
        Ok(Self(args))
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
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
    let file = read_config_file(cli.config.as_deref())?;
    build(file.as_ref(), cli)
}

/// The key `marquee token` signs with: the secret from the flags or environment, else from
/// the configuration file.
pub fn token_key(args: &TokenSecretArgs) -> Result<TokenKey, SettingsError> {
    let file = read_config_file(args.0.config.as_deref())?;
    let secret =
        resolve_secret(file.as_ref(), &args.0.settings)?.ok_or(SettingsError::NoTokenSecret)?;
    // `resolve_secret` has checked the length; this cannot fail, but report rather than
    // panic if it ever does.
    TokenKey::new(secret.value.as_bytes()).map_err(|err| invalid(secret.origin, err.to_string()))
}

/// `config` in the file's schema, secrets (and passwords in URLs) replaced by
/// `<redacted>`: what `marquee check-config` prints and the startup log shows.
pub fn effective(config: &ServerConfig) -> Settings {
    let mut settings = Settings::default();
    // The walk takes the config mutably (applying a layer writes it); rendering only reads.
    let Ok(()) = each_setting(&mut Render, &mut settings, &mut config.clone());
    settings.auth_secret = config.auth_secret.as_ref().map(|_| REDACTED.to_owned());
    let turn = config.turn.iter().map(|turn| TurnSettings {
        urls: turn.urls.clone(),
        secret: (!turn.secret.is_empty()).then(|| REDACTED.to_owned()),
        ttl_secs: Some(turn.ttl.as_secs()),
    });
    settings.turn = Some(turn.collect());
    settings
}

/// Parses a configuration file's text.
pub fn parse_file(text: &str) -> Result<Settings, toml::de::Error> {
    toml::from_str(text)
}

/// A parsed configuration file and where it is (for error messages and relative paths).
struct LoadedFile {
    path: PathBuf,
    settings: Settings,
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

fn read_config_file(path: Option<&Path>) -> Result<Option<LoadedFile>, SettingsError> {
    let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|error| SettingsError::Read {
        what: "configuration file",
        path: path.to_owned(),
        error,
    })?;
    let settings = parse_file(&text).map_err(|error| SettingsError::Parse {
        path: path.to_owned(),
        error: Box::new(error),
    })?;
    Ok(Some(LoadedFile {
        path: path.to_owned(),
        settings,
    }))
}

/// The layering itself: defaults, then `file`, then flags and environment (`cli`). Each
/// layer's values are checked even where a higher layer overrides them, so a bad file is
/// reported whatever the flags say.
fn build(file: Option<&LoadedFile>, cli: &ServeArgs) -> Result<ServerConfig, SettingsError> {
    let mut config = ServerConfig::default();
    if let Some(file) = file {
        apply(Layer::File(file), &file.settings, &mut config)?;
    }
    apply(Layer::Flags, &cli.settings, &mut config)?;
    config.turn = turn_servers(file, &cli.settings.turn_flags)?;
    if let Some(secret) = resolve_secret(file, &cli.settings)? {
        config.auth_secret = Some(secret.value);
    }
    if !config.dev && config.auth_secret.is_none() {
        return Err(SettingsError::NoAccessControl);
    }
    Ok(config)
}

/// Sets every field of `config` that `settings` sets, checking each value.
fn apply(
    layer: Layer<'_>,
    settings: &Settings,
    config: &mut ServerConfig,
) -> Result<(), SettingsError> {
    // The walk takes each value out of the layer; the caller's copy stays as it is.
    each_setting(&mut Apply(layer), &mut settings.clone(), config)
}

/// Every setting that is one field of [`ServerConfig`]: its file key (whose last part is its
/// clap id, so errors can name the flag), its place in a layer's [`Settings`], its place in
/// the config, and the codec between the two. Applying a layer ([`Apply`]) and rendering the
/// effective configuration ([`Render`]) both walk this list, so they cannot disagree. Not
/// here: the token secret and the TURN servers, which the layers spell differently (see
/// [`resolve_secret`] and [`turn_servers`]).
fn each_setting<V: Visit>(
    v: &mut V,
    s: &mut Settings,
    c: &mut ServerConfig,
) -> Result<(), V::Error> {
    // One line per setting: "file key": place in the layer => place in the config, codec.
    macro_rules! settings {
        ($($key:literal: $value:expr => $config:expr, $codec:expr;)*) => {
            $(v.setting($key, &mut $value, &mut $config, $codec)?;)*
        };
    }
    let limits = s.limits.get_or_insert_default();
    let media = s.media.get_or_insert_default();
    let telemetry = s.telemetry.get_or_insert_default();
    settings! {
        "http": s.http => c.http, same();
        "udp": s.udp => c.udp, same();
        "public_ips": s.public_ips => c.public_ips, same();
        "include_loopback": s.include_loopback => c.include_loopback, same();
        "web_root": s.web_root => c.web_root, path();
        "max_message_bytes": s.max_message_bytes => c.max_message_bytes, positive();
        "redis_url": s.redis_url => c.redis_url, redis_url();
        "dev": s.dev => c.dev, same();
        "cors_origins": s.cors_origins => c.cors_origins, origins();
        "shutdown_grace_secs": s.shutdown_grace_secs => c.shutdown_grace, secs();
        "limits.ws_upgrades_per_ip": limits.ws_upgrades_per_ip
            => c.limits.ws_upgrades_per_ip, rate();
        "limits.http_per_ip": limits.http_per_ip => c.limits.http_per_ip, rate();
        "limits.messages_per_connection": limits.messages_per_connection
            => c.limits.messages_per_connection, rate();
        "limits.chat_per_party": limits.chat_per_party => c.limits.chat_per_party, rate();
        "limits.max_rooms": limits.max_rooms => c.limits.admission.max_rooms, positive();
        "limits.max_peers_per_room": limits.max_peers_per_room
            => c.limits.admission.max_peers_per_room, positive();
        "limits.max_peers": limits.max_peers => c.limits.admission.max_peers, positive();
        "telemetry.otlp_endpoint": telemetry.otlp_endpoint
            => c.telemetry.otlp_endpoint, otlp_endpoint();
        "telemetry.service_name": telemetry.service_name => c.telemetry.service_name, text();
        "telemetry.export_interval_ms": telemetry.export_interval_ms
            => c.telemetry.export_interval, millis();
        "media.workers": media.workers => c.workers, workers();
        "media.viewer_srtp_profiles": media.viewer_srtp_profiles
            => c.viewer_srtp_profiles, srtp();
    }
    Ok(())
}

/// What a walk over the settings (`each_setting`) does with each one.
trait Visit {
    type Error;

    /// One setting: `key` is its file key, `value` its place in a layer, `config` its place in
    /// the [`ServerConfig`].
    fn setting<T, U>(
        &mut self,
        key: &'static str,
        value: &mut Option<T>,
        config: &mut U,
        codec: Codec<T, U>,
    ) -> Result<(), Self::Error>;
}

/// Applies one layer: each value it sets is checked, named after the layer, and replaces the
/// config's.
struct Apply<'a>(Layer<'a>);

impl Visit for Apply<'_> {
    type Error = SettingsError;

    fn setting<T, U>(
        &mut self,
        key: &'static str,
        value: &mut Option<T>,
        config: &mut U,
        codec: Codec<T, U>,
    ) -> Result<(), SettingsError> {
        let Some(value) = value.take() else {
            return Ok(());
        };
        match (codec.decode)(value, config, self.0) {
            Ok(Some(decoded)) => *config = decoded,
            Ok(None) => {}
            Err(reason) => return Err(invalid(self.0.name(key), reason)),
        }
        Ok(())
    }
}

/// Writes the config's values into a [`Settings`] in the file's schema.
struct Render;

impl Visit for Render {
    type Error = Infallible;

    fn setting<T, U>(
        &mut self,
        _key: &'static str,
        value: &mut Option<T>,
        config: &mut U,
        codec: Codec<T, U>,
    ) -> Result<(), Infallible> {
        *value = (codec.encode)(config);
        Ok(())
    }
}

/// How a setting's value in a layer (`T`, as the file and the flags spell it) and its value in
/// the config (`U`) convert into each other.
struct Codec<T, U> {
    /// Checks a layer's value and converts it, or says why it cannot be used; `None` when it
    /// counts as unset (see [`is_set`]). The `&U` is the value of the layers below, the
    /// layer resolves relative paths.
    decode: fn(T, &U, Layer<'_>) -> Result<Option<U>, String>,
    /// The config's value as the file spells it, secrets redacted.
    encode: fn(&U) -> Option<T>,
}

/// Taken as given.
fn same<T: Clone>() -> Codec<T, T> {
    Codec {
        decode: |value, _, _| Ok(Some(value)),
        encode: |value| Some(value.clone()),
    }
}

/// A number above 0.
fn positive<N: PartialOrd + Default + Copy + fmt::Display>() -> Codec<N, N> {
    Codec {
        decode: |n, _, _| above_zero(n).map(Some),
        encode: |n| Some(*n),
    }
}

/// Whole seconds; 0 is allowed (no grace at all).
fn secs() -> Codec<u64, Duration> {
    Codec {
        decode: |secs, _, _| Ok(Some(Duration::from_secs(secs))),
        encode: |duration| Some(duration.as_secs()),
    }
}

/// Milliseconds above 0: an interval of 0 would never pass.
fn millis() -> Codec<u64, Duration> {
    Codec {
        decode: |ms, _, _| above_zero(ms).map(|ms| Some(Duration::from_millis(ms))),
        encode: |duration| Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)),
    }
}

/// Free text; blank counts as unset.
fn text() -> Codec<String, String> {
    Codec {
        decode: |text, _, _| Ok(is_set(&text).then_some(text)),
        encode: |text| Some(text.clone()),
    }
}

/// A path; in the file, relative to the file's directory. Empty counts as unset.
fn path() -> Codec<PathBuf, PathBuf> {
    Codec {
        decode: |path, _, layer| Ok((!path.as_os_str().is_empty()).then(|| layer.path(&path))),
        encode: |path| Some(path.clone()),
    }
}

/// A Redis URL; blank counts as unset, a password is redacted when shown.
fn redis_url() -> Codec<String, Option<String>> {
    Codec {
        decode: |url, _, _| {
            if !is_set(&url) {
                return Ok(None);
            }
            check_redis_url(&url).map(|url| Some(Some(url)))
        },
        encode: |url| url.as_deref().map(redact_url),
    }
}

/// An OTLP/HTTP base URL (see [`check_otlp_endpoint`]), trimmed; blank counts as unset, a
/// password is redacted when shown.
fn otlp_endpoint() -> Codec<String, Option<String>> {
    Codec {
        decode: |endpoint, _, _| {
            let endpoint = endpoint.trim();
            if endpoint.is_empty() {
                return Ok(None);
            }
            check_otlp_endpoint(endpoint)?;
            Ok(Some(Some(endpoint.to_owned())))
        },
        encode: |endpoint| endpoint.as_deref().map(redact_url),
    }
}

/// CORS origins (see [`check_origins`]).
fn origins() -> Codec<Vec<String>, Vec<String>> {
    Codec {
        decode: |origins, _, _| check_origins(&origins).map(|()| Some(origins)),
        encode: |origins| Some(origins.clone()),
    }
}

/// A number of forwarding shards (see [`check_workers`]).
fn workers() -> Codec<usize, usize> {
    Codec {
        decode: |n, _, _| check_workers(n).map(Some),
        encode: |n| Some(*n),
    }
}

/// SRTP profiles by IANA name.
fn srtp() -> Codec<Vec<String>, Vec<SrtpProfile>> {
    Codec {
        decode: |names, _, _| srtp_profiles(&names).map(Some),
        encode: |profiles| Some(profiles.iter().map(|p| p.iana_name().to_owned()).collect()),
    }
}

/// A rate whose missing half keeps the value below.
fn rate() -> Codec<RateSettings, Rate> {
    Codec {
        decode: |given, below, _| {
            let rate = Rate {
                per_second: given.per_second.unwrap_or(below.per_second),
                burst: given.burst.unwrap_or(below.burst),
            };
            // The limiter's own check, so the file is refused for exactly what the server
            // would refuse.
            rate.quota()?;
            Ok(Some(rate))
        },
        encode: |rate| {
            Some(RateSettings {
                per_second: Some(rate.per_second),
                burst: Some(rate.burst),
            })
        },
    }
}

/// One layer above the defaults, as errors name its settings.
#[derive(Clone, Copy)]
enum Layer<'a> {
    /// The configuration file: its path names keys, and relative paths start at its
    /// directory.
    File(&'a LoadedFile),
    /// The flags and their environment variables (clap does not say which gave a value).
    Flags,
}

impl Layer<'_> {
    /// How errors name the setting of file key `key` (`limits.max_rooms`) in this layer.
    fn name(self, key: &str) -> String {
        match self {
            Layer::File(file) => file.key(key),
            Layer::Flags => flag_name(key.rsplit('.').next().unwrap_or(key)),
        }
    }

    /// `path` as this layer means it (see [`LoadedFile::resolve`]).
    fn path(self, path: &Path) -> PathBuf {
        match self {
            Layer::File(file) => file.resolve(path),
            Layer::Flags => path.to_owned(),
        }
    }
}

/// How errors name the flag of clap id `id` and its environment variable, as declared:
/// `--max-rooms (or MARQUEE_MAX_ROOMS)`.
fn flag_name(id: &str) -> String {
    let command = ServeArgs::augment_args(clap::Command::new("marquee"));
    let Some(arg) = command
        .get_arguments()
        .find(|arg| arg.get_id().as_str() == id)
    else {
        return id.to_owned();
    };
    let long = arg.get_long().unwrap_or(id);
    match arg.get_env() {
        Some(env) => format!("--{long} (or {})", env.to_string_lossy()),
        None => format!("--{long}"),
    }
}

fn invalid(setting: String, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        reason: reason.into(),
    }
}

/// Whether a text value counts as set. A blank one counts as unset in every layer, so
/// `redis_url = ""` or `--redis ""` means "not set" rather than "an empty URL", as
/// OpenTelemetry reads its variables (`main` unhooks empty environment variables before clap
/// sees them).
fn is_set(text: &str) -> bool {
    !text.trim().is_empty()
}

/// The TURN servers, each checked: the file's `[[turn]]` list, then the flags. With
/// `--turn-url` the flags describe one server that replaces the file's list; without it,
/// `--turn-secret` and `--turn-ttl-secs` apply to every server of the file, so the URLs can
/// live in the file and the secret in the environment. The checks come after both layers,
/// since a server's URLs and its secret may come from different ones.
fn turn_servers(
    file: Option<&LoadedFile>,
    flags: &TurnSettings,
) -> Result<Vec<TurnConfig>, SettingsError> {
    // Each server with how errors name it.
    let mut servers: Vec<(TurnConfig, String)> = Vec::new();
    let file_entries = file.into_iter().flat_map(|file| {
        let entries = file.settings.turn.iter().flatten().enumerate();
        entries.map(move |(i, entry)| (entry, file.key(&format!("[[turn]] #{}", i + 1))))
    });
    for (entry, origin) in file_entries {
        let ttl = match entry.ttl_secs {
            Some(secs) => Duration::from_secs(
                above_zero(secs).map_err(|r| invalid(format!("ttl_secs of {origin}"), r))?,
            ),
            None => DEFAULT_TURN_TTL,
        };
        let secret = entry.secret.clone().filter(|s| is_set(s));
        let server = TurnConfig {
            urls: entry.urls.clone(),
            secret: secret.unwrap_or_default(),
            ttl,
        };
        servers.push((server, origin));
    }

    let secret = flags.secret.as_deref().filter(|s| is_set(s));
    let ttl = match flags.ttl_secs {
        Some(secs) => Some(Duration::from_secs(
            above_zero(secs).map_err(|r| invalid(flag_name("ttl_secs"), r))?,
        )),
        None => None,
    };
    if !flags.urls.is_empty() {
        let server = TurnConfig {
            urls: flags.urls.clone(),
            secret: secret.unwrap_or_default().to_owned(),
            ttl: ttl.unwrap_or(DEFAULT_TURN_TTL),
        };
        servers = vec![(server, flag_name("urls"))];
    } else if servers.is_empty() && (secret.is_some() || ttl.is_some()) {
        return Err(invalid(
            flag_name("secret"),
            "a TURN secret or TTL was given but no TURN server: add --turn-url \
             (MARQUEE_TURN_URL) or a [[turn]] entry to the configuration file",
        ));
    } else {
        for (server, _) in &mut servers {
            if let Some(secret) = secret {
                server.secret = secret.to_owned();
            }
            if let Some(ttl) = ttl {
                server.ttl = ttl;
            }
        }
    }

    let mut checked = Vec::with_capacity(servers.len());
    for (server, origin) in servers {
        check_turn(&server).map_err(|reason| invalid(origin, reason))?;
        checked.push(server);
    }
    Ok(checked)
}

/// A token secret and where it came from.
struct Secret {
    value: String,
    origin: String,
}

/// The token secret of the highest layer that has one (flags and environment, then the
/// file), checked for length.
fn resolve_secret(
    file: Option<&LoadedFile>,
    cli: &Settings,
) -> Result<Option<Secret>, SettingsError> {
    let mut secret = layer_secret(Layer::Flags, cli)?;
    if secret.is_none()
        && let Some(file) = file
    {
        secret = layer_secret(Layer::File(file), &file.settings)?;
    }
    if let Some(secret) = &secret {
        TokenKey::new(secret.value.as_bytes())
            .map_err(|err| invalid(secret.origin.clone(), err.to_string()))?;
    }
    Ok(secret)
}

/// One layer's token secret, given inline or read from a file. Both is refused: two
/// spellings of one setting that disagree would leave the operator guessing which won.
fn layer_secret(layer: Layer<'_>, settings: &Settings) -> Result<Option<Secret>, SettingsError> {
    let inline = settings.auth_secret.as_deref().filter(|s| is_set(s));
    let file = settings
        .auth_secret_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            layer.name("auth_secret"),
            format!(
                "the token secret is also given by {}; set only one",
                layer.name("auth_secret_file")
            ),
        )),
        (Some(inline), None) => Ok(Some(Secret {
            value: inline.to_owned(),
            origin: layer.name("auth_secret"),
        })),
        (None, Some(path)) => {
            let path = layer.path(path);
            let origin = layer.name("auth_secret_file");
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
fn check_turn(server: &TurnConfig) -> Result<(), String> {
    if server.urls.is_empty() {
        return Err("no urls".into());
    }
    for url in &server.urls {
        if !["turn:", "turns:", "stun:"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(format!("`{url}` is not a turn:, turns: or stun: URL"));
        }
    }
    let needs_secret = server
        .urls
        .iter()
        .any(|url| url.starts_with("turn:") || url.starts_with("turns:"));
    if needs_secret && server.secret.is_empty() {
        return Err(
            "turn: and turns: URLs need the secret shared with the TURN server (coturn \
                    static-auth-secret): set `secret` in [[turn]], --turn-secret or \
                    MARQUEE_TURN_SECRET"
                .into(),
        );
    }
    if server.ttl.is_zero() {
        return Err("the credential TTL must be above 0".into());
    }
    Ok(())
}

/// A number of forwarding shards: 1 to [`sfu::shard::MAX_SHARDS`].
fn check_workers(n: usize) -> Result<usize, String> {
    if (1..=sfu::shard::MAX_SHARDS).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n}: between 1 and {} shards",
            sfu::shard::MAX_SHARDS
        ))
    }
}

/// A non-empty list of SRTP profiles the fast path implements, by IANA name.
fn srtp_profiles(names: &[String]) -> Result<Vec<SrtpProfile>, String> {
    let known = || {
        SrtpProfile::ALL
            .iter()
            .map(|p| p.iana_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if names.is_empty() {
        return Err(format!("list at least one of {}", known()));
    }
    let mut profiles = Vec::new();
    for name in names {
        let profile = SrtpProfile::from_iana_name(name).ok_or_else(|| {
            format!(
                "unknown SRTP profile {name:?}; the SFU implements {}",
                known()
            )
        })?;
        if !profiles.contains(&profile) {
            profiles.push(profile);
        }
    }
    Ok(profiles)
}

/// Catches the common mistake of a bare `host:port`, which the Redis client would only
/// report once the server is starting.
fn check_redis_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
    if known.iter().any(|scheme| url.starts_with(scheme)) {
        Ok(url.to_owned())
    } else {
        Err(format!(
            "`{}` is not a Redis URL; expected redis://host:6379/0 (or rediss://, unix://)",
            redact_url(url)
        ))
    }
}

/// CORS origins as the browser sends them: `*`, or `scheme://host[:port]` without a path.
/// Anything else would never match, silently.
fn check_origins(origins: &[String]) -> Result<(), String> {
    for origin in origins {
        let plausible = origin == "*"
            || ((origin.starts_with("http://") || origin.starts_with("https://"))
                && !origin
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/')));
        if !plausible {
            return Err(format!(
                "`{origin}` is not an origin; expected `*` or https://host[:port] (no path)"
            ));
        }
    }
    Ok(())
}

/// `n` if above zero: zero would refuse everything (rooms, messages) or never expire.
fn above_zero<N: PartialOrd + Default + Copy + fmt::Display>(n: N) -> Result<N, String> {
    if n > N::default() {
        Ok(n)
    } else {
        Err(format!("must be above 0, not {n}"))
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
    use super::*;
    use crate::config::LimitsConfig;

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
        let err = build_err(&base, &["--otlp-export-interval-ms", "0"]);
        assert!(err.contains("MARQUEE_OTLP_EXPORT_INTERVAL_MS"), "{err}");
        let err = build_err(&format!("{base}max_message_bytes = 0\n"), &[]);
        assert!(err.contains("`max_message_bytes`"), "{err}");
    }

    #[test]
    fn empty_strings_count_as_unset() {
        let text = format!("redis_url = \"redis://cache:6379/0\"\nauth_secret = \"{SECRET}\"\n");
        let config = build(
            Some(&file(&text)),
            &args(&[
                "--redis",
                "",
                "--auth-secret",
                "",
                "--otlp-endpoint",
                " ",
                "--service-name",
                "",
            ]),
        )
        .unwrap();
        assert_eq!(config.redis_url.as_deref(), Some("redis://cache:6379/0"));
        assert_eq!(config.auth_secret.as_deref(), Some(SECRET));
        // As the OpenTelemetry specification reads its own variables.
        assert_eq!(
            config.telemetry,
            crate::telemetry::TelemetryConfig::default()
        );
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

    /// Collects the keys `each_setting` walks.
    struct Keys(Vec<&'static str>);

    impl Visit for Keys {
        type Error = Infallible;

        fn setting<T, U>(
            &mut self,
            key: &'static str,
            _: &mut Option<T>,
            _: &mut U,
            _: Codec<T, U>,
        ) -> Result<(), Infallible> {
            self.0.push(key);
            Ok(())
        }
    }

    #[test]
    fn the_walk_names_each_setting_by_its_file_key_and_clap_id() {
        let mut keys = Keys(Vec::new());
        let Ok(()) = each_setting(
            &mut keys,
            &mut Settings::default(),
            &mut ServerConfig::default(),
        );
        // Each key is a key of the file (shown with every optional value set)...
        let mut config = ServerConfig {
            redis_url: Some("redis://cache:6379/0".to_owned()),
            ..ServerConfig::default()
        };
        config.telemetry.otlp_endpoint = Some("http://127.0.0.1:4318".to_owned());
        let shown: toml::Value = toml::from_str(&toml::to_string(&effective(&config)).unwrap())
            .expect("the effective config is TOML");
        for key in &keys.0 {
            let mut node = Some(&shown);
            for part in key.split('.') {
                node = node.and_then(|table| table.get(part));
            }
            assert!(node.is_some(), "`{key}` is not a key of the file:\n{shown}");
        }
        // ...and each flag is one of them, but for the secret's and TURN's (which the layers
        // spell differently) and --config.
        let special = [
            "config",
            "auth_secret",
            "auth_secret_file",
            "urls",
            "secret",
            "ttl_secs",
        ];
        let command = ServeArgs::augment_args(clap::Command::new("marquee"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            let walked = keys.0.iter().any(|key| key.rsplit('.').next() == Some(id));
            assert!(walked || special.contains(&id), "{id} is not walked");
        }
    }

    #[test]
    fn token_takes_the_config_and_secret_options_of_serve_and_no_others() {
        let mut command = TokenSecretArgs::augment_args(clap::Command::new("token"))
            .mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command
            .try_get_matches_from_mut(["token", "--config", "m.toml", "--auth-secret-file", "s"])
            .unwrap();
        let args = TokenSecretArgs::from_arg_matches(&matches).unwrap();
        assert_eq!(args.0.config, Some(PathBuf::from("m.toml")));
        assert_eq!(args.0.settings.auth_secret_file, Some(PathBuf::from("s")));
        let matches = command
            .try_get_matches_from_mut(["token", "--auth-secret", SECRET])
            .unwrap();
        let args = TokenSecretArgs::from_arg_matches(&matches).unwrap();
        assert_eq!(args.0.settings.auth_secret.as_deref(), Some(SECRET));
        assert!(
            command
                .try_get_matches_from_mut(["token", "--http", "127.0.0.1:1"])
                .is_err()
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
