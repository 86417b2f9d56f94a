//! Real processes for multi-node tests: `marquee` nodes (the binary under test) and a
//! `redis-server` the test owns (so it may kill and restart it). Both are killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A free loopback TCP port (bound and released: a tiny window in which another process
/// could take it, acceptable for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) -> Result<()> {
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited during startup: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not listen on {addr} within 10 s")
}

/// A `marquee` process.
pub struct Node {
    pub http: SocketAddr,
    child: Child,
}

impl Node {
    /// Starts `marquee` on loopback ports with `--redis redis_url`.
    pub async fn start(redis_url: &str) -> Result<Self> {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_marquee"))
            .args(["--http", &http.to_string(), "--udp", "127.0.0.1:0"])
            .args(["--redis", redis_url, "--dev"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("spawning marquee")?;
        wait_listening(http, "marquee", &mut child).await?;
        Ok(Self { http, child })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` of the test's own, persisting every write (append-only file, fsync
/// always) so that a restart keeps what it acknowledged, as a production Redis for Marquee
/// is configured (docs/sync.md).
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Result<Self> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("marquee-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server abruptly (SIGKILL): only what it had fsynced survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(redis_server_binary())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .context("spawning redis-server (scripts/test.sh installs it when missing)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        wait_listening(addr, "redis-server", &mut child).await?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` from PATH, or Debian's location.
fn redis_server_binary() -> PathBuf {
    let debian = Path::new("/usr/bin/redis-server");
    if debian.exists() {
        debian.to_path_buf()
    } else {
        PathBuf::from("redis-server")
    }
}

/// The shared test Redis (the one `scripts/test.sh` makes sure is running).
pub fn shared_redis_url() -> String {
    std::env::var("MARQUEE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
