//! The driver as signaling uses it, over a real UDP socket.

use std::time::Duration;

use sfu::driver::MediaSocket;
use sfu::{Role, RoomId, SfuConfig, run_driver};
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

/// The driver adds peers while it keeps up, and reports its load with the core's counters.
/// (When it cannot keep up it answers `Overloaded` instead: the rule is unit-tested in
/// `sfu::load` on virtual time, and shown by `loadtest` runs, since no socket test can make a
/// real driver fall behind deterministically.)
#[tokio::test]
async fn a_driver_that_keeps_up_adds_peers_and_reports_its_load() {
    let (events, _rx) = mpsc::channel(16);
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
    assert_eq!((stats.handshakes_waiting, stats.datagrams_late), (0, 0));
}

/// With two shards, rooms are placed by their code: each small room's peers live on its home
/// shard (the id names it), and the handle's counters are every shard's together. A room
/// whose audience outgrows the slack spreads its viewers over both shards (the other one
/// mirrors it), and the two stay within the slack of each other.
#[tokio::test]
async fn shards_own_whole_rooms_and_report_together() {
    let (handle, _stop) = driver(SfuConfig {
        workers: 2,
        ..SfuConfig::default()
    })
    .await;
    assert_eq!(handle.shards(), 2);
    let mut shards_used = std::collections::HashSet::new();
    for i in 0..12 {
        let room = RoomId::new(&format!("ROOM{i}"));
        let shard = sfu::shard::Shard::of_room(&room, 2);
        for role in [Role::Publisher, Role::Subscriber] {
            let (events, _rx) = mpsc::channel(16);
            let peer = handle.add_peer(room.clone(), role, events).await.unwrap();
            assert_eq!(sfu::shard::Shard::of_id(peer.0, 2), shard, "{room:?}");
            shards_used.insert(shard);
        }
    }
    assert_eq!(shards_used.len(), 2, "rooms spread over both shards");
    let stats = handle.stats().await.unwrap();
    assert_eq!((stats.peers, stats.rooms), (24, 12));

    let big = RoomId::new("BIG");
    let home = sfu::shard::Shard::of_room(&big, 2);
    let (events, _rx) = mpsc::channel(16);
    let host = handle.add_peer(big.clone(), Role::Publisher, events).await;
    assert_eq!(sfu::shard::Shard::of_id(host.unwrap().0, 2), home);
    let mut per_shard = [0usize; 2];
    for _ in 0..60 {
        let (events, _rx) = mpsc::channel(16);
        let viewer = handle.add_peer(big.clone(), Role::Subscriber, events).await;
        per_shard[sfu::shard::Shard::of_id(viewer.unwrap().0, 2)] += 1;
    }
    // The small rooms put 12 peers on each shard; the big room's first viewers stay home.
    let (home_peers, other_peers) = (12 + 1 + per_shard[home], 12 + per_shard[1 - home]);
    assert!(per_shard[1 - home] > 0, "{per_shard:?}");
    assert!(
        home_peers.abs_diff(other_peers) <= sfu::driver::VIEWER_HOME_SLACK + 1,
        "{home_peers} vs {other_peers}"
    );
    let stats = handle.stats().await.unwrap();
    assert_eq!(
        (stats.peers, stats.rooms),
        (85, 13),
        "the big room counted once"
    );
}
