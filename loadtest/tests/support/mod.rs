//! An in-process `marquee` to load, and the `loadtest` binary run as a user runs it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use signaling::{AppState, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct Server {
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    /// A `--dev` server: no tokens.
    pub async fn start() -> Server {
        Self::start_with_secret(None).await
    }

    /// With a token secret every join needs a token signed with it; without, `--dev`.
    pub async fn start_with_secret(auth_secret: Option<&str>) -> Server {
        let config = ServerConfig {
            http: "127.0.0.1:0".parse().unwrap(),
            udp: "127.0.0.1:0".parse().unwrap(),
            room_state_interval: Duration::from_millis(200),
            dev: auth_secret.is_none(),
            auth_secret: auth_secret.map(str::to_owned),
            // A load generator is one client IP opening hundreds of sessions: raise the
            // per-IP and per-connection limits as an operator would for a load test.
            limits: loadtest_limits(),
            // Two forwarding shards whatever the machine: a room of more than
            // `sfu::driver::VIEWER_HOME_SLACK` viewers then spans both (the second-wave
            // test's 30 do), so the cross-shard relay is exercised with real peers.
            workers: 2,
            ..ServerConfig::default()
        };
        let listener = TcpListener::bind(config.http).await.expect("bind http");
        let http = listener.local_addr().unwrap();
        let state = AppState::start(config).await.expect("start server");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(signaling::run(listener, state, async move {
            let _ = stopped.await;
        }));
        Server {
            http,
            stop: Some(stop),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs the `loadtest` binary with `args` (bounded in time) and returns its output.
pub async fn loadtest(args: &[&str]) -> Output {
    loadtest_with_env(args, &[]).await
}

/// [`loadtest`] with extra environment variables.
pub async fn loadtest_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
    command
        .args(args)
        .arg("--no-progress")
        // Only what a test sets: not a secret of the environment running the tests.
        .env_remove("MARQUEE_AUTH_SECRET")
        .env_remove("MARQUEE_AUTH_SECRET_FILE")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("loadtest finished within 180 s")
        .expect("loadtest ran");
    eprintln!(
        "loadtest {args:?} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("report written");
    serde_json::from_str(&text).expect("report is JSON")
}

/// Runs `loadtest` against `server` with `args` and returns its JSON report.
pub async fn report_of(server: &Server, args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let addr = server.http.to_string();
    let mut all = vec!["--server", &addr, "--json", json.to_str().unwrap()];
    all.extend_from_slice(args);
    loadtest(&all).await;
    read_json(&json)
}

/// How many samples a report's metric has (`None`: the metric is absent).
pub fn samples(report: &serde_json::Value, metric: &str) -> Option<u64> {
    report["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == metric)?["summary"]["count"]
        .as_u64()
}

fn loadtest_limits() -> signaling::config::LimitsConfig {
    use signaling::limits::Rate;
    let generous = Rate {
        per_second: 10_000.0,
        burst: 10_000,
    };
    signaling::config::LimitsConfig {
        ws_upgrades_per_ip: generous,
        http_per_ip: generous,
        messages_per_connection: generous,
        chat_per_party: generous,
        ..Default::default()
    }
}
