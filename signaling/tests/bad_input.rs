//! Bad input gets an error with a stable code; the connection and the server stay up and
//! other peers are unaffected.

mod support;

use std::time::Duration;

use signaling::protocol::{
    ClientMessage, DEFAULT_MAX_MESSAGE_BYTES, ErrorCode, IceCandidate, PROTOCOL_VERSION, Role,
    RoomMessage, ServerMessage,
};
use support::server::TestServer;
use support::{WsClient, server_error_code};

/// The connection still works: a ping is answered.
async fn assert_alive(client: &mut WsClient, id: u64) {
    client
        .send(&ClientMessage::Room(RoomMessage::Ping { id }))
        .unwrap();
    let pong = client
        .recv_until(|m| matches!(m, ServerMessage::Pong { .. }))
        .await
        .expect("connection still answers");
    assert_eq!(pong, ServerMessage::Pong { id });
}

#[tokio::test]
async fn every_bad_message_gets_a_stable_code_and_the_session_survives() {
    let server = TestServer::start().await;
    // A bystander host and viewer in a room of their own.
    let mut host = WsClient::connect(server.http).await.unwrap();
    let room = host.join(Role::Host, None, "Hostess").await.unwrap().room;
    let mut bystander = WsClient::connect(server.http).await.unwrap();
    bystander
        .join(Role::Viewer, Some(&room), "Bea")
        .await
        .unwrap();

    let mut c = WsClient::connect(server.http).await.unwrap();
    let mut ping = 0;
    let mut check = async |c: &mut WsClient, raw: String, code: ErrorCode| {
        c.send_raw(raw.clone()).unwrap();
        let body = c
            .expect_error(code)
            .await
            .unwrap_or_else(|e| panic!("{raw:.80}: {e:#}"));
        assert!(!body.message.is_empty(), "a human-readable message");
        ping += 1;
        assert_alive(c, ping).await;
    };

    check(&mut c, "{not json".into(), ErrorCode::BadMessage).await;
    check(
        &mut c,
        r#"{"type":"dance","steps":3}"#.into(),
        ErrorCode::UnknownType,
    )
    .await;
    check(&mut c, r#"{"type":"offer"}"#.into(), ErrorCode::BadMessage).await;
    check(&mut c, r#"["join"]"#.into(), ErrorCode::BadMessage).await;
    let huge = format!(
        r#"{{"type":"ping","id":1,"pad":"{}"}}"#,
        "x".repeat(DEFAULT_MAX_MESSAGE_BYTES)
    );
    check(&mut c, huge, ErrorCode::MessageTooLarge).await;
    check(
        &mut c,
        r#"{"type":"offer","sdp":"v=0"}"#.into(),
        ErrorCode::NotJoined,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"join","version":99,"role":"viewer","room":"X"}"#.into(),
        ErrorCode::UnsupportedVersion,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"join","version":1,"role":"viewer","room":"NOSUCHROOM"}"#.into(),
        ErrorCode::RoomNotFound,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"join","version":1,"role":"viewer","room":"bad room!"}"#.into(),
        ErrorCode::InvalidRoom,
    )
    .await;
    let second_host = format!(r#"{{"type":"join","version":1,"role":"host","room":"{room}"}}"#);
    check(&mut c, second_host, ErrorCode::HostAlreadyPresent).await;

    // Now as a host of a room of its own.
    let own = c.join(Role::Host, None, "Other host").await.unwrap();
    assert_ne!(own.room, room);
    let candidate = ClientMessage::Room(RoomMessage::Candidate {
        candidate: IceCandidate {
            candidate: "candidate:1 1 udp 2130706431 127.0.0.1 9 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        },
    });
    check(
        &mut c,
        serde_json::to_string(&candidate).unwrap(),
        ErrorCode::CandidateBeforeOffer,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"offer","sdp":"this is not SDP"}"#.into(),
        ErrorCode::InvalidSdp,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"offer","sdp":"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}"#.into(),
        ErrorCode::InvalidSdp,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"answer","sdp":"v=0"}"#.into(),
        ErrorCode::NotAllowed,
    )
    .await;
    check(
        &mut c,
        format!(
            r#"{{"type":"join","version":{PROTOCOL_VERSION},"role":"viewer","room":"{room}"}}"#
        ),
        ErrorCode::AlreadyJoined,
    )
    .await;

    // A viewer may not offer, nor answer before being offered anything.
    c.send(&ClientMessage::Room(RoomMessage::Leave {})).unwrap();
    let joined = c.join(Role::Viewer, Some(&room), "Vic").await.unwrap();
    assert_eq!(joined.room, room);
    check(
        &mut c,
        r#"{"type":"offer","sdp":"v=0"}"#.into(),
        ErrorCode::NotAllowed,
    )
    .await;
    check(
        &mut c,
        r#"{"type":"answer","sdp":"v=0"}"#.into(),
        ErrorCode::NoOfferPending,
    )
    .await;

    // Bystanders never saw any of it and still work. (Room state first: waiting for a pong
    // skips the snapshots queued before it.)
    let state = bystander
        .recv_until(|m| matches!(m, ServerMessage::RoomState(s) if s.viewer_count == 2))
        .await
        .unwrap();
    let ServerMessage::RoomState(state) = state else {
        unreachable!()
    };
    assert_eq!(state.participants.len(), 1, "the host is still the host");
    assert_alive(&mut host, 1000).await;
    assert_alive(&mut bystander, 1001).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_frames_and_floods_do_not_end_the_session() {
    let server = TestServer::start().await;
    let mut c = WsClient::connect(server.http).await.unwrap();
    c.sender()
        .send_frame(tokio_tungstenite::tungstenite::Message::Binary(
            vec![1, 2, 3].into(),
        ))
        .unwrap();
    c.expect_error(ErrorCode::BadMessage).await.unwrap();
    // A burst of garbage: every message answered, in order, nothing lost. Past the
    // connection's message budget the answer is `rate_limited` instead of `bad_message`.
    for i in 0..200 {
        c.send_raw(format!("garbage {i}")).unwrap();
    }
    let burst = signaling::config::LimitsConfig::default()
        .messages_per_connection
        .burst as usize;
    let mut codes = Vec::new();
    for _ in 0..200 {
        match c.recv().await.unwrap() {
            ServerMessage::Error(body) => codes.push(body.code),
            other => panic!("unexpected {other:?}"),
        }
    }
    let bad = codes
        .iter()
        .take_while(|c| **c == ErrorCode::BadMessage)
        .count();
    assert!(bad >= burst, "{bad} bad_message answers before throttling");
    assert!(
        codes[bad..]
            .iter()
            .all(|c| matches!(c, ErrorCode::RateLimited | ErrorCode::BadMessage)),
        "{codes:?}"
    );
    assert!(
        codes.contains(&ErrorCode::RateLimited),
        "a flood is throttled"
    );
    // The budget refills; the connection was never closed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_alive(&mut c, 7).await;
    // A viewer of a room that does not exist is refused by join, not by closing the socket.
    let err = c
        .join(Role::Viewer, Some("GONE"), "late")
        .await
        .unwrap_err();
    assert_eq!(server_error_code(&err), Some(ErrorCode::RoomNotFound));
    assert_alive(&mut c, 8).await;
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(server.http),
    )
    .await;
    assert!(
        matches!(health, Ok(Ok(_))),
        "server still accepts connections"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients() {
    let server = TestServer::start().await;
    let mut c = WsClient::connect(server.http).await.unwrap();
    c.join(Role::Host, None, "h").await.unwrap();
    server.state.shutdown.cancel();
    c.expect_error(ErrorCode::ShuttingDown).await.unwrap();
    c.wait_closed(Duration::from_secs(5)).await.unwrap();
    server.stop().await;
}
