//! Watch parties on one in-process node (the embedded memory store): sharing playback and
//! chat, resuming after a drop, and bad input.

mod support;

use signaling::protocol::{ClientMessage, ErrorCode, PartyMessage, RoomMessage, ServerMessage};
use support::server::TestServer;
use support::{PartyClient, server_error_code};
use sync::{Cause, EventBody, PlaybackCommand};

const SAMPLE: &str = "/media/sample.webm";

fn ws_url(server: &TestServer) -> String {
    format!("ws://{}/ws", server.http)
}

fn load() -> PlaybackCommand {
    PlaybackCommand::Load { url: SAMPLE.into() }
}

#[tokio::test]
async fn members_share_playback_and_chat_scheduled_ahead() {
    let server = TestServer::start().await;
    let url = ws_url(&server);
    let mut ann = PartyClient::create(&url, "Ann").await.unwrap();
    // Codes are case-insensitive, as typed on a TV remote.
    let mut bob = PartyClient::join(&url, &ann.party.to_lowercase(), "Bob")
        .await
        .unwrap();
    assert_eq!(bob.party, ann.party);

    ann.playback(load(), None).await.unwrap();
    let play_seq = ann.playback(PlaybackCommand::Play, None).await.unwrap();
    bob.wait_for(|c| c.last_seq() >= play_seq).await.unwrap();
    let played = bob.events.last().unwrap().clone();
    let EventBody::State { state, cause } = &played.event.body else {
        panic!("expected a state event, got {played:?}")
    };
    assert_eq!(*cause, Cause::Play);
    assert!(!state.timeline.paused);
    assert_eq!(state.timeline.url.as_deref(), Some(SAMPLE));
    let lead = state.timeline.anchor.0 - played.event.at.0;
    assert!(
        (150..=1000).contains(&lead),
        "play is scheduled a lead ahead: {lead} ms"
    );

    let seq = bob.chat("hello from Bob").await.unwrap();
    // The ack answers the sender at once; the event reaches everyone (sender too) through
    // the store's feed.
    ann.wait_for(|c| c.last_seq() >= seq).await.unwrap();
    bob.wait_for(|c| c.last_seq() >= seq).await.unwrap();
    assert_eq!(ann.chats(), vec!["hello from Bob"]);
    assert_eq!(
        ann.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        bob.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        "both saw the same log"
    );
    // The snapshot lists both members, Ann as host.
    ann.wait_for(|c| c.state.as_ref().is_some_and(|s| s.members.len() == 2))
        .await
        .unwrap();
    let members = &ann.state.as_ref().unwrap().members;
    let host: Vec<_> = members.iter().filter(|m| m.host).collect();
    assert_eq!(host.len(), 1);
    assert_eq!(host[0].presence.name, "Ann");

    server.stop().await;
}

#[tokio::test]
async fn clock_probes_are_answered_before_and_after_joining() {
    let server = TestServer::start().await;
    let mut ws = support::WsClient::connect(server.http).await.unwrap();
    ws.send(&ClientMessage::Party(PartyMessage::TimeProbe { t0: 42.25 }))
        .unwrap();
    let reply = ws
        .recv_until(|m| matches!(m, ServerMessage::TimeReply { .. }))
        .await
        .unwrap();
    let ServerMessage::TimeReply { t0, t1, t2 } = reply else {
        unreachable!()
    };
    assert_eq!(t0, 42.25, "t0 is echoed");
    assert!(t1 > 1.6e12, "server wall-clock milliseconds: {t1}");
    assert!(t2 >= t1, "sent after received");
    server.stop().await;
}

#[tokio::test]
async fn a_member_that_drops_resumes_with_everything_it_missed_exactly_once() {
    let server = TestServer::start().await;
    let url = ws_url(&server);
    let mut ann = PartyClient::create(&url, "Ann").await.unwrap();
    let mut bob = PartyClient::join(&url, &ann.party, "Bob").await.unwrap();
    for i in 0..3 {
        ann.chat(&format!("before {i}")).await.unwrap();
    }
    bob.wait_for(|c| c.chats().len() == 3).await.unwrap();
    let identity = bob.identity();
    let seen_before = bob.events.clone();
    bob.drop_connection();

    ann.playback(load(), None).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = ann.chat(&format!("while away {i}")).await.unwrap();
    }
    ann.wait_for(|c| c.last_seq() >= last).await.unwrap();
    let mut bob = PartyClient::resume(&url, &identity, "Bob").await.unwrap();
    assert!(bob.resumed, "same member");
    assert!(bob.history_complete);
    assert_eq!(bob.member_id, identity.member_id);
    bob.wait_for(|c| c.last_seq() >= last).await.unwrap();
    let mut all: Vec<u64> = seen_before.iter().map(|e| e.seq).collect();
    all.extend(bob.events.iter().map(|e| e.seq));
    assert_eq!(
        all,
        ann.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        "nothing missed, nothing twice"
    );
    assert_eq!(
        bob.chats(),
        (0..5)
            .map(|i| format!("while away {i}"))
            .collect::<Vec<_>>()
    );
    // ...then the current state.
    assert_eq!(
        bob.state.as_ref().unwrap().state.timeline.url.as_deref(),
        Some(SAMPLE)
    );
    // A wrong key is a new member, not an impersonation.
    let forged = support::Identity {
        member_key: "not-the-key".into(),
        ..bob.identity()
    };
    let other = PartyClient::resume(&url, &forged, "Mallory").await.unwrap();
    assert!(!other.resumed);
    assert_ne!(other.member_id, bob.member_id);
    server.stop().await;
}

#[tokio::test]
async fn a_retried_command_is_applied_once() {
    let server = TestServer::start().await;
    let url = ws_url(&server);
    let mut ann = PartyClient::create(&url, "Ann").await.unwrap();
    let first = ann.chat_with_op("only once", "retry-1").await.unwrap();
    let again = ann.chat_with_op("only once", "retry-1").await.unwrap();
    assert_eq!(first, again);
    // Events arrive in order: had the retry been applied, it would show before the marker.
    ann.chat("marker").await.unwrap();
    ann.wait_for(|c| c.chats().last().is_some_and(|t| t == "marker"))
        .await
        .unwrap();
    assert_eq!(ann.chats(), vec!["only once", "marker"]);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_stable_codes_and_harms_no_one() {
    let server = TestServer::start().await;
    let url = ws_url(&server);

    // Before joining, and for parties that do not exist.
    let mut ws = support::WsClient::connect(server.http).await.unwrap();
    ws.send(&ClientMessage::Party(PartyMessage::Chat {
        op_id: "x".into(),
        text: "hi".into(),
    }))
    .unwrap();
    ws.expect_error(ErrorCode::NotJoined).await.unwrap();
    let err = PartyClient::join(&url, "NOPE42", "Eve")
        .await
        .err()
        .unwrap();
    assert_eq!(server_error_code(&err), Some(ErrorCode::PartyNotFound));
    let err = PartyClient::join(&url, "bad code!", "Eve")
        .await
        .err()
        .unwrap();
    assert_eq!(server_error_code(&err), Some(ErrorCode::InvalidRoom));

    let mut ann = PartyClient::create(&url, "Ann").await.unwrap();
    let mut bob = PartyClient::join(&url, &ann.party, "Bob").await.unwrap();
    let mut cat = PartyClient::join(&url, &ann.party, "Cat").await.unwrap();
    ann.playback(load(), None).await.unwrap();
    let op = ann.op();
    ann.request(
        ClientMessage::Party(PartyMessage::SetControl {
            op_id: op.clone(),
            control: sync::Control::Host,
        }),
        &op,
    )
    .await
    .unwrap();
    ann.wait_for(|c| c.version() == 3).await.unwrap();
    let version = ann.version();

    let playback = |op: &str, command: PlaybackCommand, base: Option<u64>| {
        ClientMessage::Party(PartyMessage::Playback {
            op_id: op.into(),
            command,
            base_version: base,
        })
    };
    // Without permission.
    bob.expect_refusal(
        playback("b1", PlaybackCommand::Play, None),
        ErrorCode::PermissionDenied,
    )
    .await
    .unwrap();
    let op = bob.op();
    bob.expect_refusal(
        ClientMessage::Party(PartyMessage::SetControl {
            op_id: op,
            control: sync::Control::Everyone,
        }),
        ErrorCode::PermissionDenied,
    )
    .await
    .unwrap();
    // Stale versions.
    ann.expect_refusal(
        playback("a1", PlaybackCommand::Play, Some(version - 1)),
        ErrorCode::StaleVersion,
    )
    .await
    .unwrap();
    // Negative, huge and non-numeric positions; bad rates and URLs.
    for position_ms in [-5.0, 1e300] {
        ann.expect_refusal(
            playback("a2", PlaybackCommand::Seek { position_ms }, None),
            ErrorCode::InvalidPosition,
        )
        .await
        .unwrap();
    }
    ann.send_raw(r#"{"type":"playback","opId":"a3","command":{"action":"seek","positionMs":NaN}}"#)
        .unwrap();
    ann.expect_refusal(
        ClientMessage::Room(RoomMessage::Ping { id: 0 }),
        ErrorCode::BadMessage,
    )
    .await
    .unwrap();
    ann.send_raw(
        r#"{"type":"playback","opId":"a3","command":{"action":"seek","positionMs":"soon"}}"#,
    )
    .unwrap();
    ann.expect_refusal(
        ClientMessage::Room(RoomMessage::Ping { id: 0 }),
        ErrorCode::BadMessage,
    )
    .await
    .unwrap();
    ann.expect_refusal(
        playback("a4", PlaybackCommand::Rate { rate: 100.0 }, None),
        ErrorCode::InvalidRate,
    )
    .await
    .unwrap();
    ann.expect_refusal(
        playback(
            "a5",
            PlaybackCommand::Load {
                url: "javascript:alert(1)".into(),
            },
            None,
        ),
        ErrorCode::InvalidUrl,
    )
    .await
    .unwrap();
    ann.expect_refusal(
        playback(&"o".repeat(65), PlaybackCommand::Play, None),
        ErrorCode::InvalidOpId,
    )
    .await
    .unwrap();
    // Chat over the size limit, then a flood.
    ann.expect_refusal(
        ClientMessage::Party(PartyMessage::Chat {
            op_id: "c0".into(),
            text: "x".repeat(501),
        }),
        ErrorCode::ChatTooLong,
    )
    .await
    .unwrap();
    let mut limited = false;
    for i in 0..30 {
        match ann.chat(&format!("flood {i}")).await {
            Ok(_) => {}
            Err(err) if server_error_code(&err) == Some(ErrorCode::RateLimited) => {
                limited = true;
                break;
            }
            Err(err) => panic!("{err:#}"),
        }
    }
    assert!(limited, "a chat flood is rate limited");
    // Reports with nonsense.
    ann.send_raw(r#"{"type":"syncReport","positionMs":1e999}"#)
        .unwrap();
    ann.expect_refusal(
        ClientMessage::Room(RoomMessage::Ping { id: 0 }),
        ErrorCode::BadMessage,
    )
    .await
    .unwrap();

    // Nothing was corrupted, and the others carry on: Cat chats, Ann still controls.
    assert_eq!(ann.version(), version);
    let seq = cat.chat("still fine").await.unwrap();
    bob.wait_for(|c| c.last_seq() >= seq).await.unwrap();
    assert_eq!(bob.chats().last().map(String::as_str), Some("still fine"));
    ann.playback(PlaybackCommand::Play, Some(version))
        .await
        .unwrap();
    bob.wait_for(|c| c.version() == version + 1).await.unwrap();
    server.stop().await;
}
