//! The driver as signaling uses it, over a real UDP socket.

use std::time::Duration;

use sfu::driver::MediaSocket;
use sfu::{Role, RoomId, SfuConfig, SfuError, run_driver};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

async fn driver(config: SfuConfig) -> (sfu::SfuHandle, tokio::sync::oneshot::Sender<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let advertised = socket.local_addr().unwrap();
    let (events, _rx) = mpsc::channel(16);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = run_driver(
        config,
        vec![MediaSocket { socket, advertised }],
        events,
        async move {
            let _ = stopped.await;
        },
    );
    (handle, stop)
}

/// Above its busy limit the driver refuses new peers with `Overloaded` (signaling answers
/// `full`) instead of taking joins it cannot serve; below it, peers are added.
#[tokio::test]
async fn an_overloaded_driver_refuses_new_peers() {
    // A limit of 0 % is always exceeded.
    let (busy, _stop) = driver(SfuConfig {
        overload_busy_fraction: 0.0,
        ..SfuConfig::default()
    })
    .await;
    let (events, _rx) = mpsc::channel(16);
    let refused = busy
        .add_peer(RoomId::new("ROOM"), Role::Publisher, events.clone())
        .await;
    assert_eq!(refused, Err(SfuError::Overloaded));
    let stats = busy.stats().await.unwrap();
    assert_eq!(stats.peers, 0, "nothing was created");

    let (idle, _stop) = driver(SfuConfig::default()).await;
    let added = tokio::time::timeout(
        Duration::from_secs(10),
        idle.add_peer(RoomId::new("ROOM"), Role::Publisher, events),
    )
    .await
    .unwrap();
    assert!(added.is_ok(), "{added:?}");
    let stats = idle.stats().await.unwrap();
    assert_eq!(stats.peers, 1);
    assert!(stats.busy_pct <= 100);
}
