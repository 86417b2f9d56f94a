//! Operating a public server: access tokens on the WebSocket (rooms and parties), rate
//! limits that throttle a flooding client while others go on, admission control, and the
//! `/metrics` and `/readyz` endpoints moving during a session.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;
use reqwest::{Method, StatusCode};
use signaling::ServerConfig;
use signaling::auth::Grant;
use signaling::config::LimitsConfig;
use signaling::limits::Rate;
use signaling::protocol::{
    ClientMessage, ErrorCode, MediaKind, PROTOCOL_VERSION, PartyMessage, Role, RoomMessage,
    ServerMessage,
};
use support::server::TestServer;
use support::tokens::SECRET;
use support::*;

const SETTLE: Duration = Duration::from_secs(10);
fn token(room: &str, grants: &[Grant], exp_in: i64) -> String {
    let sub = format!("user-{room}-{}", grants.len());
    tokens::mint(SECRET, &sub, room, grants, exp_in)
}

fn join(role: Role, room: Option<&str>, token: Option<String>) -> ClientMessage {
    ClientMessage::Room(RoomMessage::Join {
        version: PROTOCOL_VERSION,
        room: room.map(str::to_owned),
        name: "n".into(),
        role,
        host_key: None,
        token,
    })
}

fn party_join(party: Option<&str>, token: Option<String>) -> ClientMessage {
    ClientMessage::Party(PartyMessage::PartyJoin {
        version: PROTOCOL_VERSION,
        party: party.map(str::to_owned),
        name: "member".into(),
        member_id: None,
        member_key: None,
        last_seq: None,
        token,
    })
}

fn chat(op: &str) -> ClientMessage {
    ClientMessage::Party(PartyMessage::Chat {
        op_id: op.into(),
        text: "hello".into(),
    })
}

/// The next `ack` for `op`, or the error that came instead.
async fn chat_result(ws: &mut WsClient, op: &str) -> Result<(), ErrorCode> {
    loop {
        match ws.recv().await.expect("a reply") {
            ServerMessage::Ack { op_id, .. } if op_id == op => return Ok(()),
            ServerMessage::Error(body) if body.op_id.as_deref() == Some(op) => {
                return Err(body.code);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn websocket_joins_need_tokens_with_the_right_room_and_grant() {
    let server = TestServer::start_with(ServerConfig {
        auth_secret: Some(SECRET.into()),
        ..ServerConfig::default()
    })
    .await;
    let mut ws = WsClient::connect(server.http).await.unwrap();
    let refusals = [
        (
            join(Role::Host, Some("LIVE"), None),
            ErrorCode::TokenMissing,
        ),
        (
            join(Role::Host, Some("LIVE"), Some("garbage".into())),
            ErrorCode::TokenMalformed,
        ),
        (
            join(
                Role::Host,
                Some("LIVE"),
                Some(token("LIVE", &[Grant::Publish], -3600)),
            ),
            ErrorCode::TokenExpired,
        ),
        (
            join(
                Role::Host,
                Some("LIVE"),
                Some(token("OTHER", &[Grant::Publish], 3600)),
            ),
            ErrorCode::TokenWrongRoom,
        ),
        (
            join(
                Role::Host,
                Some("LIVE"),
                Some(token("LIVE", &[Grant::Subscribe], 3600)),
            ),
            ErrorCode::GrantMissing,
        ),
        // A fresh room code needs a token for any room.
        (
            join(
                Role::Host,
                None,
                Some(token("LIVE", &[Grant::Publish], 3600)),
            ),
            ErrorCode::TokenWrongRoom,
        ),
    ];
    for (message, code) in refusals {
        ws.send(&message).unwrap();
        ws.expect_error(code).await.unwrap();
    }
    // The connection survived every refusal; valid tokens join.
    let joined = ws
        .join_with(join(
            Role::Host,
            Some("live"),
            Some(token("LIVE", &[Grant::Publish], 3600)),
        ))
        .await
        .unwrap();
    assert_eq!(joined.room, "LIVE");
    let mut viewer = WsClient::connect(server.http).await.unwrap();
    viewer
        .join_with(join(
            Role::Viewer,
            Some("LIVE"),
            Some(token("*", &[Grant::Subscribe], 60)),
        ))
        .await
        .unwrap();

    // Parties: creating needs `moderate` on `*`; chatting needs `chat`.
    let mut creator = WsClient::connect(server.http).await.unwrap();
    creator
        .send(&party_join(None, Some(token("*", &[Grant::Chat], 60))))
        .unwrap();
    creator.expect_error(ErrorCode::GrantMissing).await.unwrap();
    creator
        .send(&party_join(
            None,
            Some(token(
                "*",
                &[Grant::Moderate, Grant::Chat, Grant::Control],
                60,
            )),
        ))
        .unwrap();
    let ServerMessage::PartyJoined { party, .. } = creator
        .recv_until(|m| matches!(m, ServerMessage::PartyJoined { .. }))
        .await
        .unwrap()
    else {
        unreachable!()
    };
    creator.send(&chat("c1")).unwrap();
    assert_eq!(chat_result(&mut creator, "c1").await, Ok(()));

    let mut silent = WsClient::connect(server.http).await.unwrap();
    silent
        .send(&party_join(
            Some(&party),
            Some(token(&party, &[Grant::Subscribe], 60)),
        ))
        .unwrap();
    silent
        .recv_until(|m| matches!(m, ServerMessage::PartyJoined { .. }))
        .await
        .unwrap();
    silent.send(&chat("s1")).unwrap();
    assert_eq!(
        chat_result(&mut silent, "s1").await,
        Err(ErrorCode::GrantMissing)
    );
    silent
        .send(&ClientMessage::Party(PartyMessage::Playback {
            op_id: "p1".into(),
            command: serde_json::from_str(r#"{"action":"pause"}"#).unwrap(),
            base_version: None,
        }))
        .unwrap();
    let error = silent.expect_error(ErrorCode::GrantMissing).await.unwrap();
    assert_eq!(error.op_id.as_deref(), Some("p1"));
    server.stop().await;
}

fn tight_limits() -> LimitsConfig {
    LimitsConfig {
        ws_upgrades_per_ip: Rate {
            per_second: 0.2,
            burst: 5,
        },
        http_per_ip: Rate {
            per_second: 0.2,
            burst: 3,
        },
        messages_per_connection: Rate {
            per_second: 2.0,
            burst: 10,
        },
        chat_per_party: Rate {
            per_second: 0.2,
            burst: 3,
        },
        ..LimitsConfig::default()
    }
}

/// `name value` of a Prometheus sample line.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(http: &WhipHttp) -> String {
    let reply = http
        .request(Method::GET, "/metrics", &[], "")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    reply.body
}

/// A client flooding connections, messages, chat and WHIP requests is throttled with
/// `429`/`rate_limited`, keeps its open connection, and a second client (another IP) joins
/// and chats unaffected.
#[tokio::test]
async fn a_flooding_client_is_throttled_while_another_goes_on() {
    let server = TestServer::start_with(ServerConfig {
        limits: tight_limits(),
        ..ServerConfig::default()
    })
    .await;
    let flooder: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();

    // Connection flood: the burst gets through, the rest is refused with 429.
    let mut open = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..12 {
        match WsClient::connect_from(server.http, flooder).await {
            Ok(ws) => open.push(ws),
            Err(err) => refused.push(format!("{err:#}")),
        }
    }
    assert!(
        (5..=6).contains(&open.len()),
        "{} upgrades accepted",
        open.len()
    );
    assert!(
        refused.iter().all(|e| e.contains("429")),
        "refusals: {refused:?}"
    );

    // The other client connects and chats in its own party meanwhile.
    let mut calm = WsClient::connect_from(server.http, other).await.unwrap();
    calm.send(&party_join(None, None)).unwrap();
    calm.recv_until(|m| matches!(m, ServerMessage::PartyJoined { .. }))
        .await
        .unwrap();

    // Message flood on one open connection: most are refused, the connection stays.
    let mut flood = open.pop().unwrap();
    for id in 0..60 {
        flood
            .send(&ClientMessage::Room(RoomMessage::Ping { id }))
            .unwrap();
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 60 {
        match flood.recv().await.unwrap() {
            ServerMessage::Pong { .. } => pongs += 1,
            ServerMessage::Error(body) if body.code == ErrorCode::RateLimited => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((10..=12).contains(&pongs), "{pongs} pings answered");
    assert_eq!(limited, 60 - pongs);
    calm.send(&chat("calm-1")).unwrap();
    assert_eq!(chat_result(&mut calm, "calm-1").await, Ok(()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    flood
        .send(&ClientMessage::Room(RoomMessage::Ping { id: 99 }))
        .unwrap();
    flood
        .recv_until(|m| matches!(m, ServerMessage::Pong { id: 99 }))
        .await
        .expect("the flooding connection is throttled, not closed");

    // Chat flood in one party: the party's budget runs out; the other party is unaffected.
    let mut chatter = open.pop().unwrap();
    chatter.send(&party_join(None, None)).unwrap();
    chatter
        .recv_until(|m| matches!(m, ServerMessage::PartyJoined { .. }))
        .await
        .unwrap();
    let mut results = Vec::new();
    for n in 0..6 {
        let op = format!("f{n}");
        chatter.send(&chat(&op)).unwrap();
        results.push(chat_result(&mut chatter, &op).await);
    }
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
    assert!(
        results[3..]
            .iter()
            .all(|r| *r == Err(ErrorCode::RateLimited))
    );
    calm.send(&chat("calm-2")).unwrap();
    assert_eq!(chat_result(&mut calm, "calm-2").await, Ok(()));

    // WHIP/WHEP request flood: 429 with Retry-After; the other IP still gets answers.
    let http = WhipHttp::from_ip(server.http, Some(flooder));
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let reply = http.post_offer("/whip/ROOM", "v=0", None).await.unwrap();
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = reply.header("retry-after").map(str::to_owned);
            assert_eq!(reply.error_code().as_deref(), Some("rate_limited"));
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [400, 400, 400, 429, 429]);
    assert!(
        retry_after
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    let reply = WhipHttp::from_ip(server.http, Some(other))
        .post_offer("/whip/ROOM", "v=0", None)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Every kind of rejection is counted.
    let text = scrape(&WhipHttp::from_ip(server.http, Some(other))).await;
    for limit in ["ws_upgrade", "message", "chat", "http"] {
        let value = sample(
            &text,
            &format!("marquee_rate_limited_total{{limit=\"{limit}\"}}"),
        );
        assert!(value.is_some_and(|v| v >= 1.0), "{limit}: {value:?}");
    }
    server.stop().await;
}

fn admission(max_rooms: usize, max_peers_per_room: usize, max_peers: usize) -> ServerConfig {
    ServerConfig {
        limits: LimitsConfig {
            admission: signaling::config::Admission {
                max_rooms,
                max_peers_per_room,
                max_peers,
            },
            ..LimitsConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test]
async fn admission_control_answers_full_instead_of_degrading() {
    let server = TestServer::start_with(admission(1, 2, 100)).await;
    let host = Host::join_with(
        server.http,
        HostOptions {
            room: Some("ONE".into()),
            ..HostOptions::default()
        },
    )
    .await
    .unwrap();
    let viewer = Viewer::join(server.http, "ONE").await.unwrap();
    let mut late = WsClient::connect(server.http).await.unwrap();
    late.send(&join(Role::Viewer, Some("ONE"), None)).unwrap();
    let error = late.expect_error(ErrorCode::Full).await.unwrap();
    assert!(error.message.contains("ONE is full"), "{}", error.message);
    late.send(&join(Role::Host, Some("TWO"), None)).unwrap();
    let error = late.expect_error(ErrorCode::Full).await.unwrap();
    assert!(error.message.contains("rooms"), "{}", error.message);
    // WHEP gets 503 with Retry-After.
    let player = Subscriber::new().await.unwrap();
    let offer = player.offer_recvonly().await.unwrap();
    let reply = WhipHttp::new(server.http)
        .post_offer("/whep/ONE", &offer, None)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code().as_deref(), Some("full"));
    assert!(reply.header("retry-after").is_some());
    // Those admitted are unaffected.
    viewer
        .wait_for(SETTLE, |v| v.packet_count(MediaKind::Video) > 20)
        .await
        .unwrap();
    drop(host);
    server.stop().await;

    // The node-wide peer limit.
    let server = TestServer::start_with(admission(10, 10, 2)).await;
    let mut a = WsClient::connect(server.http).await.unwrap();
    a.join(Role::Host, Some("A"), "a").await.unwrap();
    let mut b = WsClient::connect(server.http).await.unwrap();
    b.join(Role::Viewer, Some("A"), "b").await.unwrap();
    let mut c = WsClient::connect(server.http).await.unwrap();
    c.send(&join(Role::Host, Some("B"), None)).unwrap();
    let error = c.expect_error(ErrorCode::Full).await.unwrap();
    assert!(error.message.contains("server"), "{}", error.message);
    // A seat frees up when someone leaves (asynchronously: ask again until it has).
    b.send(&ClientMessage::Room(RoomMessage::Leave {})).unwrap();
    let mut attempts = 0;
    loop {
        match c.join(Role::Host, Some("B"), "c").await {
            Ok(_) => break,
            Err(err) if attempts < 50 && format!("{err:#}").contains("server error full") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the freed seat was not given: {err:#}"),
        }
    }
    server.stop().await;
}

/// `/metrics` during a live session shows the counters moving; `/readyz` says ready.
#[tokio::test]
async fn metrics_move_during_a_session() {
    let server = TestServer::start().await;
    let http = WhipHttp::new(server.http);
    let publisher = Publisher::new(MediaConfig::default()).await.unwrap();
    let whip = publisher.publish_whip(&http, "M", None).await.unwrap();
    publisher.wait_connected(SETTLE).await.unwrap();
    publisher.start_media();
    let viewer = Viewer::join(server.http, "M").await.unwrap();
    viewer
        .wait_for(SETTLE, |v| v.packet_count(MediaKind::Video) > 20)
        .await
        .unwrap();

    let first = scrape(&http).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = scrape(&http).await;
    let forwarded = |text: &str| sample(text, "marquee_forwarded_packets_total").unwrap();
    assert!(forwarded(&first) > 0.0);
    assert!(
        forwarded(&second) > forwarded(&first),
        "forwarding counter did not move"
    );
    assert!(
        sample(&second, "marquee_forwarded_bytes_total").unwrap()
            > sample(&first, "marquee_forwarded_bytes_total").unwrap()
    );
    assert_eq!(sample(&second, "marquee_peers"), Some(2.0));
    assert_eq!(sample(&second, "marquee_rooms"), Some(1.0));
    assert_eq!(sample(&second, "marquee_tracks"), Some(2.0));
    assert_eq!(
        sample(&second, r#"marquee_sessions{transport="whip"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &second,
            r#"marquee_join_duration_seconds_count{kind="whip"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &second,
            r#"marquee_join_duration_seconds_count{kind="ws_viewer"}"#
        ),
        Some(1.0)
    );

    let ready = http.request(Method::GET, "/readyz", &[], "").await.unwrap();
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (StatusCode::OK, "ready")
    );
    whip.delete(&http).await.unwrap();
    server.stop().await;
}
