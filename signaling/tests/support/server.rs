//! An in-process `marquee` for integration tests: HTTP and media on loopback, ephemeral ports.

use std::net::SocketAddr;
use std::time::Duration;

use signaling::{AppState, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub http: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ServerConfig::default()).await
    }

    /// Starts with `config`, overriding the addresses with loopback ephemeral ports and
    /// pushing room state quickly so tests do not wait.
    pub async fn start_with(config: ServerConfig) -> TestServer {
        let config = ServerConfig {
            http: "127.0.0.1:0".parse().unwrap(),
            udp: "127.0.0.1:0".parse().unwrap(),
            room_state_interval: Duration::from_millis(50),
            // Tests that are not about tokens run without them (a config with a secret
            // keeps them on).
            dev: config.dev || config.auth_secret.is_none(),
            ..config
        };
        let listener = TcpListener::bind(config.http).await.expect("bind http");
        let http = listener.local_addr().unwrap();
        let state = AppState::start(config).await.expect("start server");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(signaling::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        TestServer {
            http,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}
