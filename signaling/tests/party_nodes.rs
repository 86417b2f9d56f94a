//! Two `marquee` processes sharing one Redis: one party, members on both nodes.
//! Also: Redis killed and restarted under a running party.

mod support;

use std::time::Duration;

use signaling::protocol::ErrorCode;
use support::{Node, PartyClient, RedisServer, server_error_code, shared_redis_url};
use sync::{PlaybackCommand, SharedState};

fn load() -> PlaybackCommand {
    PlaybackCommand::Load {
        url: "/media/sample.webm".into(),
    }
}

/// Waits until both clients hold the same, newest shared state, and returns it.
async fn converge(a: &mut PartyClient, b: &mut PartyClient, at_least: u64) -> SharedState {
    a.wait_for(|c| c.version() >= at_least).await.unwrap();
    b.wait_for(|c| c.version() >= at_least).await.unwrap();
    // Whoever is behind catches up to the other.
    let target = a.version().max(b.version());
    a.wait_for(|c| c.version() >= target).await.unwrap();
    b.wait_for(|c| c.version() >= target).await.unwrap();
    let (sa, sb) = (a.shared.clone().unwrap(), b.shared.clone().unwrap());
    assert_eq!(sa, sb, "both nodes' members hold the same state");
    sa
}

#[tokio::test]
async fn two_nodes_share_one_party_through_redis() {
    let redis = shared_redis_url();
    let node_a = Node::start(&redis).await.unwrap();
    let node_b = Node::start(&redis).await.unwrap();
    let mut ann = PartyClient::create(&node_a.ws_url(), "Ann").await.unwrap();
    let mut bob = PartyClient::join(&node_b.ws_url(), &ann.party, "Bob")
        .await
        .unwrap();

    // Seek and pause on A; B applies the same timeline.
    ann.playback(load(), None).await.unwrap();
    ann.playback(PlaybackCommand::Play, None).await.unwrap();
    #[allow(clippy::disallowed_methods)] // a test measuring real propagation
    let seek_sent = tokio::time::Instant::now();
    ann.playback(
        PlaybackCommand::Seek {
            position_ms: 12_000.0,
        },
        None,
    )
    .await
    .unwrap();
    ann.playback(PlaybackCommand::Pause, None).await.unwrap();
    let seek_to_pause_ack = seek_sent.elapsed().as_secs_f64() * 1000.0;
    let state = converge(&mut ann, &mut bob, 5).await;
    assert!(state.timeline.paused);
    // Paused where playback from the seek had got to when the pause took effect: at most
    // the time from sending the seek to the pause's acknowledgement (plus rounding) later.
    let position = state.timeline.position_ms;
    assert!(
        (12_000.0..=12_000.0 + seek_to_pause_ack + 50.0).contains(&position),
        "{position} (seek → pause ack {seek_to_pause_ack:.0} ms)"
    );

    // Members on both nodes show in both snapshots.
    for c in [&mut ann, &mut bob] {
        c.wait_for(|c| c.state.as_ref().is_some_and(|s| s.members.len() == 2))
            .await
            .unwrap();
    }

    // Conflicting commands at once from both nodes: one winner, the same on every client.
    for round in 0..8u64 {
        let base = converge(&mut ann, &mut bob, 0).await.version;
        let a_pos = 1_000.0 + round as f64;
        let b_pos = 2_000.0 + round as f64;
        let (ra, rb) = tokio::join!(
            ann.playback(PlaybackCommand::Seek { position_ms: a_pos }, Some(base)),
            bob.playback(PlaybackCommand::Seek { position_ms: b_pos }, Some(base)),
        );
        let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: exactly one wins ({ra:?}, {rb:?})");
        let lost = if ra.is_err() { ra } else { rb };
        assert_eq!(
            server_error_code(&lost.unwrap_err()),
            Some(ErrorCode::StaleVersion)
        );
        let state = converge(&mut ann, &mut bob, base + 1).await;
        assert_eq!(state.version, base + 1);
        assert!([a_pos, b_pos].contains(&state.timeline.position_ms));
    }

    // Chat from A arrives at B in order.
    let texts: Vec<String> = (0..20).map(|i| format!("A says {i}")).collect();
    let mut last = 0;
    for text in &texts {
        last = ann.chat_patiently(text).await.unwrap();
    }
    bob.wait_for(|c| c.last_seq() >= last).await.unwrap();
    assert_eq!(bob.chats(), texts);

    // B drops, misses messages, and resumes on the other node: nothing lost, nothing twice.
    let identity = bob.identity();
    let seen: Vec<u64> = bob.events.iter().map(|e| e.seq).collect();
    bob.drop_connection();
    for i in 0..5 {
        last = ann
            .chat_patiently(&format!("while Bob is away {i}"))
            .await
            .unwrap();
    }
    ann.wait_for(|c| c.last_seq() >= last).await.unwrap();
    let mut bob = PartyClient::resume(&node_a.ws_url(), &identity, "Bob")
        .await
        .unwrap();
    assert!(bob.resumed);
    bob.wait_for(|c| c.last_seq() >= last).await.unwrap();
    let mut all = seen;
    all.extend(bob.events.iter().map(|e| e.seq));
    assert_eq!(all, ann.events.iter().map(|e| e.seq).collect::<Vec<_>>());
    assert_eq!(
        bob.chats(),
        (0..5)
            .map(|i| format!("while Bob is away {i}"))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_party_survives_a_redis_restart_without_losing_acknowledged_chat() {
    let mut redis = RedisServer::start().await.unwrap();
    let node = Node::start(&redis.url()).await.unwrap();
    let mut ann = PartyClient::create(&node.ws_url(), "Ann").await.unwrap();
    let mut bob = PartyClient::join(&node.ws_url(), &ann.party, "Bob")
        .await
        .unwrap();
    ann.playback(load(), None).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..5 {
        let text = format!("before the restart {i}");
        ann.chat(&text).await.unwrap();
        acked.push(text);
    }

    redis.kill();
    // Refused while Redis is away, with a code that says so; nothing is acknowledged.
    let err = ann
        .chat_with_op("during the outage", "outage-1")
        .await
        .unwrap_err();
    assert_eq!(server_error_code(&err), Some(ErrorCode::SyncUnavailable));
    bob.wait_for(|c| c.state.as_ref().is_some_and(|s| !s.sync_available))
        .await
        .unwrap();

    redis.restart().await.unwrap();
    // The node recovers by itself.
    bob.wait_for(|c| c.state.as_ref().is_some_and(|s| s.sync_available))
        .await
        .unwrap();
    // The client retries its refused message with the same op id: applied once.
    let mut retried = None;
    for _ in 0..40 {
        match ann.chat_with_op("during the outage", "outage-1").await {
            Ok(seq) => {
                retried = Some(seq);
                break;
            }
            Err(err) if server_error_code(&err) == Some(ErrorCode::SyncUnavailable) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => panic!("{err:#}"),
        }
    }
    let retried = retried.expect("chat works again after Redis returned");
    acked.push("during the outage".into());
    bob.wait_for(|c| c.last_seq() >= retried).await.unwrap();
    assert_eq!(bob.chats(), acked);

    // A newcomer's history has every acknowledged message, and playback still works.
    let mut cat = PartyClient::join(&node.ws_url(), &ann.party, "Cat")
        .await
        .unwrap();
    cat.wait_for(|c| c.last_seq() >= retried).await.unwrap();
    assert_eq!(cat.chats(), acked);
    let seq = cat.playback(PlaybackCommand::Play, None).await.unwrap();
    ann.wait_for(|c| c.last_seq() >= seq).await.unwrap();
    assert!(!ann.shared.as_ref().unwrap().timeline.paused);
}
