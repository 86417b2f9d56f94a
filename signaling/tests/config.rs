//! The `marquee` binary's configuration surface, run as a real process:
//!
//! - `--help` documents every option with its environment variable;
//! - `marquee token` prints a token the server's own key accepts, with the claims asked for;
//! - a bad configuration file stops the server with a message naming the key;
//! - environment variables override the file and flags override the environment (observed
//!   through `marquee check-config`, so the test process's environment is never touched);
//! - a server configured by file serves `/healthz`, and SIGTERM makes it say `shutting_down`
//!   to its WebSocket sessions and exit 0; a connection that never finishes cannot hold the
//!   exit past the grace period.
//!
//! Every child starts from an empty environment (`env_clear`), so variables of the machine
//! running the tests cannot change what is tested.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use signaling::auth::{Grant, TokenKey};
use signaling::settings::{Settings, parse_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "config-test-secret-0123456789abcdef0123456789";

/// Longest a server gets to start listening, or to exit, before the test fails; the waits
/// end as soon as it happens.
const PROCESS_WAIT: Duration = Duration::from_secs(20);

fn marquee() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_marquee"));
    command
        .env_clear()
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

fn run(command: &mut Command) -> Result<Output> {
    command.output().context("running marquee")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A directory of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("marquee-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn help_describes_every_option() -> Result<()> {
    let output = run(marquee().arg("--help"))?;
    assert!(output.status.success(), "{}", stderr(&output));
    let help = stdout(&output);
    let options = [
        ("--config", Some("MARQUEE_CONFIG")),
        ("--http", Some("MARQUEE_HTTP")),
        ("--udp", Some("MARQUEE_UDP")),
        ("--public-ip", Some("MARQUEE_PUBLIC_IP")),
        ("--no-loopback", Some("MARQUEE_NO_LOOPBACK")),
        ("--web-root", Some("MARQUEE_WEB_ROOT")),
        ("--redis", Some("MARQUEE_REDIS_URL")),
        ("--max-message-bytes", Some("MARQUEE_MAX_MESSAGE_BYTES")),
        ("--dev", Some("MARQUEE_DEV")),
        ("--auth-secret", Some("MARQUEE_AUTH_SECRET")),
        ("--auth-secret-file", Some("MARQUEE_AUTH_SECRET_FILE")),
        ("--turn-url", Some("MARQUEE_TURN_URL")),
        ("--turn-secret", Some("MARQUEE_TURN_SECRET")),
        ("--turn-ttl-secs", Some("MARQUEE_TURN_TTL_SECS")),
        ("--otlp-endpoint", Some("OTEL_EXPORTER_OTLP_ENDPOINT")),
        ("--service-name", Some("OTEL_SERVICE_NAME")),
        (
            "--otlp-export-interval-ms",
            Some("MARQUEE_OTLP_EXPORT_INTERVAL_MS"),
        ),
        ("--max-rooms", Some("MARQUEE_MAX_ROOMS")),
        ("--max-peers-per-room", Some("MARQUEE_MAX_PEERS_PER_ROOM")),
        ("--max-peers", Some("MARQUEE_MAX_PEERS")),
        ("--cors-origin", Some("MARQUEE_CORS_ORIGIN")),
        ("--shutdown-grace-secs", Some("MARQUEE_SHUTDOWN_GRACE_SECS")),
        ("token", None),
        ("serve", None),
        ("check-config", None),
    ];
    for (option, env) in options {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
        if let Some(env) = env {
            assert!(
                help.contains(&format!("[env: {env}")),
                "--help lacks {env}:\n{help}"
            );
        }
    }
    // Every option says its default.
    let defaults = help.matches("Default:").count();
    assert!(
        defaults >= 22,
        "only {defaults} options state their default:\n{help}"
    );

    let output = run(marquee().args(["token", "--help"]))?;
    let help = stdout(&output);
    for option in [
        "--room",
        "--identity",
        "--grant",
        "--name",
        "--ttl-secs",
        "--auth-secret",
    ] {
        assert!(
            help.contains(option),
            "token --help lacks {option}:\n{help}"
        );
    }
    Ok(())
}

#[test]
fn a_secret_in_the_environment_is_never_shown_in_help() -> Result<()> {
    let output = run(marquee().arg("--help").env("MARQUEE_AUTH_SECRET", SECRET))?;
    assert!(!stdout(&output).contains(SECRET));
    Ok(())
}

#[test]
fn token_prints_a_token_the_server_key_accepts() -> Result<()> {
    let output = run(marquee()
        .args([
            "token",
            "--room",
            "ABCD",
            "--identity",
            "alice",
            "--name",
            "Alice",
        ])
        .args([
            "--grant",
            "publish",
            "--grant",
            "chat,moderate",
            "--ttl-secs",
            "600",
        ])
        .env("MARQUEE_AUTH_SECRET", SECRET))?;
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output);
    let token = token.trim();
    assert_eq!(
        token.split('.').count(),
        3,
        "a compact JWT alone on stdout: {token:?}"
    );

    let now = now_unix_secs();
    let claims = TokenKey::new(SECRET.as_bytes())?.verify(token, now)?;
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.room, "ABCD");
    assert_eq!(claims.name.as_deref(), Some("Alice"));
    for grant in Grant::ALL {
        let expected = matches!(grant, Grant::Publish | Grant::Chat | Grant::Moderate);
        assert_eq!(claims.grants.has(grant), expected, "{grant}");
    }
    assert_eq!(claims.exp - claims.iat, 600);
    assert!(
        claims.iat.abs_diff(now) <= 60,
        "iat {} is now ({now})",
        claims.iat
    );

    // Another key refuses it: the token is really signed with the configured secret.
    let other = TokenKey::new(b"another-secret-another-secret-another-secret")?;
    assert!(other.verify(token, now).is_err());
    Ok(())
}

#[test]
fn token_takes_the_secret_from_the_config_file_or_says_it_has_none() -> Result<()> {
    let dir = TempDir::new("token")?;
    dir.write("secret", &format!("{SECRET}\n"))?;
    // A relative path in the file is relative to the file.
    let config = dir.write("marquee.toml", "auth_secret_file = \"secret\"\n")?;
    let output = run(marquee()
        .args([
            "token",
            "--room",
            "*",
            "--identity",
            "ops",
            "--grant",
            "subscribe",
        ])
        .arg("--config")
        .arg(&config))?;
    assert!(output.status.success(), "{}", stderr(&output));
    let claims =
        TokenKey::new(SECRET.as_bytes())?.verify(stdout(&output).trim(), now_unix_secs())?;
    assert_eq!(claims.room, "*");
    assert_eq!(claims.exp - claims.iat, 3600, "the default lifetime");

    let output =
        run(marquee().args(["token", "--room", "R", "--identity", "i", "--grant", "chat"]))?;
    assert!(!output.status.success());
    assert!(
        stdout(&output).is_empty(),
        "nothing a script could take for a token"
    );
    assert!(
        stderr(&output).contains("no token secret"),
        "{}",
        stderr(&output)
    );

    let output = run(marquee()
        .args(["token", "--room", "R", "--identity", "i", "--grant", "fly"])
        .env("MARQUEE_AUTH_SECRET", SECRET))?;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("fly"), "{}", stderr(&output));
    Ok(())
}

#[test]
fn a_bad_config_file_stops_the_server_naming_the_key() -> Result<()> {
    let dir = TempDir::new("bad")?;
    let unknown = dir.write("unknown.toml", "dev = true\n[limits]\nmax_romms = 3\n")?;
    let output = run(marquee().arg("--config").arg(&unknown))?;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("max_romms"), "{err}");
    assert!(err.contains("unknown.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");

    let zero = dir.write("zero.toml", "dev = true\n[limits]\nmax_rooms = 0\n")?;
    let output = run(marquee().arg("--config").arg(&zero))?;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("`limits.max_rooms`") && err.contains("zero.toml"),
        "{err}"
    );

    let short = dir.write("short.toml", "auth_secret = \"too-short\"\n")?;
    let output = run(marquee().arg("--config").arg(&short))?;
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("`auth_secret`") && err.contains("at least 32"),
        "{err}"
    );
    assert!(
        !err.contains("too-short"),
        "the secret is never printed: {err}"
    );

    let output = run(marquee().arg("--config").arg(dir.0.join("missing.toml")))?;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing.toml"),
        "{}",
        stderr(&output)
    );
    Ok(())
}

#[test]
fn the_environment_overrides_the_file_and_flags_override_the_environment() -> Result<()> {
    let dir = TempDir::new("layers")?;
    let config = dir.write(
        "marquee.toml",
        "dev = true\nhttp = \"127.0.0.1:1001\"\nudp = \"127.0.0.1:2001\"\n\
         shutdown_grace_secs = 4\n[limits]\nmax_rooms = 10\nmax_peers = 30\n",
    )?;
    // `marquee check-config [flags]` with `env` and the file named by MARQUEE_CONFIG.
    let check = |flags: &[&str], env: &[(&str, &str)]| -> Result<Settings> {
        let output = run(marquee()
            .env("MARQUEE_CONFIG", &config)
            .envs(env.iter().copied())
            .arg("check-config")
            .args(flags))?;
        assert!(output.status.success(), "{}", stderr(&output));
        Ok(parse_file(&stdout(&output))?)
    };

    let file_only = check(&[], &[])?;
    assert_eq!(file_only.http, Some(addr("127.0.0.1:1001")));
    assert_eq!(file_only.shutdown_grace_secs, Some(4));

    let env = [
        ("MARQUEE_HTTP", "127.0.0.1:1002"),
        ("MARQUEE_MAX_ROOMS", "20"),
        ("MARQUEE_DEV", "false"),
        ("MARQUEE_AUTH_SECRET", SECRET),
        // Set but empty: unset, so the file's value holds.
        ("MARQUEE_UDP", ""),
    ];
    let from_env = check(&[], &env)?;
    assert_eq!(from_env.http, Some(addr("127.0.0.1:1002")), "env over file");
    assert_eq!(
        from_env.udp,
        Some(addr("127.0.0.1:2001")),
        "file where env is silent"
    );
    let limits = from_env.limits.clone().context("limits")?;
    assert_eq!(limits.max_rooms, Some(20), "env over file");
    assert_eq!(limits.max_peers, Some(30));
    assert_eq!(
        from_env.dev,
        Some(false),
        "env turns the file's dev mode off"
    );
    assert_eq!(from_env.auth_secret.as_deref(), Some("<redacted>"));

    let from_flags = check(
        &["--http", "127.0.0.1:1003", "--max-rooms", "40", "--dev"],
        &env,
    )?;
    assert_eq!(
        from_flags.http,
        Some(addr("127.0.0.1:1003")),
        "flag over env"
    );
    let limits = from_flags.limits.clone().context("limits")?;
    assert_eq!(limits.max_rooms, Some(40), "flag over env");
    assert_eq!(from_flags.dev, Some(true), "flag over env");
    assert_eq!(
        from_flags.shutdown_grace_secs,
        Some(4),
        "file where nobody else says"
    );

    // Bad values from the environment name their variable.
    let output = run(marquee()
        .arg("check-config")
        .env("MARQUEE_DEV", "true")
        .env("MARQUEE_REDIS_URL", "cache:6379"))?;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("MARQUEE_REDIS_URL"),
        "{}",
        stderr(&output)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_configured_by_file_serves_and_stops_on_sigterm() -> Result<()> {
    let dir = TempDir::new("serve")?;
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = dir.write(
        "marquee.toml",
        &format!(
            "http = \"{http}\"\nudp = \"127.0.0.1:0\"\nauth_secret = \"{SECRET}\"\n\
             shutdown_grace_secs = 10\n"
        ),
    )?;
    let mut server =
        Server::spawn(marquee().args(["serve", "--config"]).arg(&config), http).await?;
    assert_eq!(http_get(http, "/healthz").await?, "ok");

    // A WebSocket session, to see the goodbye.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/ws")).await?;
    // The shutdown waits for sessions by this series; if it were renamed, the wait would
    // silently stop waiting.
    // (The session is counted by its own task, which may start just after the handshake.)
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http_get(http, "/metrics").await?;
        if metrics.contains("marquee_sessions{transport=\"ws\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("marquee_sessions{transport=\"ws\"} 1"),
        "{metrics}"
    );
    server.terminate()?;
    let goodbye = tokio::time::timeout(PROCESS_WAIT, async {
        while let Some(message) = ws.next().await {
            match message? {
                Message::Text(text) => return Ok::<_, anyhow::Error>(Some(text.to_string())),
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    })
    .await
    .context("no goodbye before the timeout")??;
    let goodbye = goodbye.context("the session closed without a message")?;
    assert!(goodbye.contains("shutting_down"), "{goodbye}");

    let status = server.wait_exit(PROCESS_WAIT).await?;
    assert!(status.success(), "exit status {status}");
    let log = server.log();
    assert!(
        log.contains("shutting down") && log.contains("marquee stopped"),
        "{log}"
    );
    // The effective configuration is logged, its secret redacted.
    assert!(log.contains("<redacted>") && !log.contains(SECRET), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_cannot_hold_the_exit_past_the_grace_period() -> Result<()>
{
    let grace = Duration::from_secs(1);
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server = Server::spawn(
        marquee()
            .args(["--dev", "--http", &http.to_string(), "--udp", "127.0.0.1:0"])
            .args(["--shutdown-grace-secs", &grace.as_secs().to_string()]),
        http,
    )
    .await?;
    // A WHEP offer whose body never completes: the request stays in flight, and graceful
    // shutdown waits for in-flight requests.
    let mut stuck = tokio::net::TcpStream::connect(http).await?;
    stuck
        .write_all(
            b"POST /whep/ABCD HTTP/1.1\r\nHost: marquee\r\nContent-Type: application/sdp\r\n\
              Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await?;
    stuck.flush().await?;
    // `100 Continue` comes once the handler reads the body: the request is surely in flight
    // before the signal.
    let mut head = Vec::new();
    tokio::time::timeout(PROCESS_WAIT, async {
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&head).contains("100 Continue") {
            let n = stuck.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "closed before 100 Continue");
            head.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(())
    })
    .await
    .context("waiting for 100 Continue")??;
    stuck.write_all(b"v=0\r\n").await?;
    stuck.flush().await?;

    let started = Stopwatch::start();
    server.terminate()?;
    let status = server.wait_exit(PROCESS_WAIT).await?;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    let log = server.log();
    assert!(
        log.contains("grace period over"),
        "the deadline, not the client, ended it:\n{log}"
    );
    assert!(
        took >= grace - Duration::from_millis(100),
        "exited after {took:?}, before the grace period"
    );
    drop(stuck);
    Ok(())
}

/// A `marquee` server process; killed on drop if still running.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `command` (logs to a file, so a full pipe never blocks the server) and waits
    /// until it listens on `http`.
    async fn spawn(command: &mut Command, http: SocketAddr) -> Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "marquee-config-{}-{}.log",
            std::process::id(),
            http.port()
        ));
        let file = std::fs::File::create(&log)?;
        let child = command
            .env("RUST_LOG", "info")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawning marquee")?;
        let mut server = Self { child, log };
        let deadline = Stopwatch::start();
        while tokio::net::TcpStream::connect(http).await.is_err() {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "marquee exited during startup ({status}):\n{}",
                    server.log()
                );
            }
            if deadline.elapsed() > PROCESS_WAIT {
                bail!("marquee did not listen on {http}:\n{}", server.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// Sends SIGTERM, as a service manager does.
    fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill -TERM failed: {status}");
        Ok(())
    }

    async fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let waited = Stopwatch::start();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if waited.elapsed() > limit {
                bail!(
                    "marquee still running {limit:?} after SIGTERM:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `GET path` over a fresh connection; the response body.
async fn http_get(http: SocketAddr, path: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: marquee\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP response")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(body.to_owned())
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a socket address")
}

/// A free loopback TCP port (bound and released: a tiny window in which another process
/// could take it, acceptable for tests).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Wall-clock time of these tests, which drive real processes (GUIDE §2.2 keeps clock reads
/// out of cores; a test of a process's deadline has to read one).
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)]
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

#[allow(clippy::disallowed_methods)]
fn now_unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
