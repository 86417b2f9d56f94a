//! WHIP ingest and WHEP playback through an in-process server with real WebRTC peers (the
//! `webrtc` crate), and every way a request can be wrong: the right 4xx, nothing leaks,
//! nothing else is affected.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use signaling::ServerConfig;
use signaling::auth::Grant;
use signaling::protocol::{MediaKind, Role};
use support::server::TestServer;
use support::tokens::SECRET;
use support::*;

const SETTLE: Duration = Duration::from_secs(10);
fn token(secret: &str, room: &str, grants: &[Grant], exp_in: i64) -> String {
    tokens::mint(secret, "alice", room, grants, exp_in)
}

async fn publish(server: &TestServer, room: &str, token: Option<&str>) -> (Publisher, WhipSession) {
    let publisher = Publisher::new(MediaConfig::default()).await.unwrap();
    let http = WhipHttp::new(server.http);
    let session = publisher.publish_whip(&http, room, token).await.unwrap();
    publisher.wait_connected(SETTLE).await.unwrap();
    publisher.start_media();
    wait_live(server).await;
    (publisher, session)
}

async fn peers(server: &TestServer) -> u64 {
    server.state.sfu.stats().await.unwrap().peers
}

/// Polls until the SFU's stats satisfy `pred` (joins and cleanup are asynchronous).
async fn wait_stats(server: &TestServer, what: &str, pred: impl Fn(&sfu::SfuStats) -> bool) {
    for _ in 0..200 {
        if pred(&server.state.sfu.stats().await.unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {:?}", server.state.sfu.stats().await.unwrap());
}

/// Polls until the server holds `expected` peers.
async fn wait_peers(server: &TestServer, expected: u64) {
    wait_stats(server, &format!("expected {expected} peers"), |s| {
        s.peers == expected
    })
    .await;
}

/// Waits until a just-connected host's audio and video tracks are live (the SFU learns a
/// track from its first packet); a WHEP offer before that is rightly `404 room_not_live`.
async fn wait_live(server: &TestServer) {
    wait_stats(server, "the host's two tracks", |s| s.tracks >= 2).await;
}

#[tokio::test]
async fn whip_host_is_watched_over_websocket_and_whep() {
    let server = TestServer::start().await;
    let http = WhipHttp::new(server.http);
    let (publisher, whip) = publish(&server, "show", None).await;
    assert!(
        whip.location.starts_with("/whip/SHOW/"),
        "{}",
        whip.location
    );
    assert_eq!(whip.created.header("content-type"), Some("application/sdp"));

    // A browser-style viewer over the WebSocket sees the WHIP host's tracks.
    let viewer = Viewer::join(server.http, "SHOW").await.unwrap();
    viewer.wait_connected(SETTLE).await.unwrap();
    viewer
        .wait_for(SETTLE, |v| {
            v.keyframe_starts() > 0 && v.packet_count(MediaKind::Audio) > 10
        })
        .await
        .unwrap();

    // So does a WHEP player.
    let player = Subscriber::new().await.unwrap();
    let whep = player.watch_whep(&http, "SHOW", None).await.unwrap();
    player.wait_connected(SETTLE).await.unwrap();
    player
        .wait_for(SETTLE, |p| {
            p.keyframe_starts() > 0 && p.packet_count(MediaKind::Audio) > 10
        })
        .await
        .unwrap();
    assert_eq!(player.track_count(MediaKind::Video), 1);
    assert_eq!(player.track_count(MediaKind::Audio), 1);

    // Trickle: a candidate with the current ETag is taken; a stale ETag is refused.
    let fragment = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let reply = whep.patch(&http, fragment, Some(&whep.etag)).await.unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    let reply = whep
        .patch(&http, fragment, Some("\"stale\""))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(reply.error_code().as_deref(), Some("precondition_failed"));

    // DELETE ends the session once; the peer is gone.
    assert_eq!(peers(&server).await, 3);
    assert_eq!(whep.delete(&http).await.unwrap().status, StatusCode::OK);
    let again = whep.delete(&http).await.unwrap();
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.error_code().as_deref(), Some("unknown_session"));
    wait_peers(&server, 2).await;
    // The WebSocket viewer kept receiving throughout.
    let before = viewer.packet_count(MediaKind::Video);
    viewer
        .wait_for(SETTLE, |v| v.packet_count(MediaKind::Video) > before + 20)
        .await
        .unwrap();

    assert_eq!(whip.delete(&http).await.unwrap().status, StatusCode::OK);
    wait_peers(&server, 1).await;
    publisher.close().await.unwrap();
    server.stop().await;
}

/// RFC 9725 §4.3.2: new ICE credentials in a PATCH restart ICE; media keeps flowing.
#[tokio::test]
async fn whip_ice_restart_keeps_media_flowing() {
    let server = TestServer::start().await;
    let http = WhipHttp::new(server.http);
    let (publisher, whip) = publish(&server, "restart", None).await;
    let viewer = Viewer::join(server.http, "RESTART").await.unwrap();
    viewer
        .wait_for(SETTLE, |v| v.packet_count(MediaKind::Video) > 10)
        .await
        .unwrap();

    // The client restarts ICE: new credentials, sent in a fragment with If-Match: *.
    let pc = publisher.peer().pc();
    pc.restart_ice().await.unwrap();
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let local = publisher
        .peer()
        .local_description_after_gathering()
        .await
        .unwrap();
    let attr = |sdp: &str, name: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(&format!("a={name}:")).map(str::to_owned))
            .unwrap()
    };
    let (ufrag, pwd) = (attr(&local, "ice-ufrag"), attr(&local, "ice-pwd"));
    let mut fragment = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\na=mid:0\r\n");
    for line in local.lines().filter(|l| l.starts_with("a=candidate:")) {
        fragment.push_str(line);
        fragment.push_str("\r\n");
    }
    // Without If-Match: * it is refused.
    let refused = whip.patch(&http, &fragment, None).await.unwrap();
    assert_eq!(refused.status, StatusCode::PRECONDITION_REQUIRED);
    let reply = whip.patch(&http, &fragment, Some("*")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/trickle-ice-sdpfrag")
    );
    let new_etag = reply.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, whip.etag);
    let server_ufrag = attr(&reply.body, "ice-ufrag");
    let server_pwd = attr(&reply.body, "ice-pwd");
    assert!(reply.body.contains("a=candidate:"), "{}", reply.body);

    // The client completes its restart with the server's credentials.
    let previous = pc.remote_description().await.unwrap().sdp;
    let answer: String = previous
        .lines()
        .map(|l| {
            if l.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{server_ufrag}\r\n")
            } else if l.starts_with("a=ice-pwd:") {
                format!("a=ice-pwd:{server_pwd}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    publisher.apply_answer(&answer).await.unwrap();

    // Media still reaches the viewer after the restart.
    let before = viewer.packet_count(MediaKind::Video);
    viewer
        .wait_for(SETTLE, |v| v.packet_count(MediaKind::Video) > before + 50)
        .await
        .unwrap();
    // The old ETag no longer matches.
    let stale = whip
        .patch(&http, "a=end-of-candidates\r\n", Some(&whip.etag))
        .await
        .unwrap();
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let fresh = whip
        .patch(&http, "a=end-of-candidates\r\n", Some(&new_etag))
        .await
        .unwrap();
    assert_eq!(fresh.status, StatusCode::NO_CONTENT);
    server.stop().await;
}

/// Bad requests get the right 4xx with a stable code; nothing is left behind and a good
/// request right after works.
#[tokio::test]
async fn bad_whip_and_whep_requests_get_clear_errors() {
    let server = TestServer::start().await;
    let http = WhipHttp::new(server.http);
    let sdp = [("content-type", "application/sdp")];

    let wrong_type = http
        .request(
            Method::POST,
            "/whip/ROOM",
            &[("content-type", "text/plain")],
            "v=0",
        )
        .await
        .unwrap();
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        wrong_type.error_code().as_deref(),
        Some("unsupported_media_type")
    );

    for body in ["", "hello", "v=0\r\no=garbage\r\n", "\u{0}\u{1}binary"] {
        let reply = http
            .request(Method::POST, "/whip/ROOM", &sdp, body)
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body:?}: {}",
            reply.body
        );
        assert_eq!(
            reply.error_code().as_deref(),
            Some("invalid_sdp"),
            "{body:?}"
        );
    }
    let huge = "a".repeat(200 * 1024);
    let reply = http
        .request(Method::POST, "/whip/ROOM", &sdp, huge)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code().as_deref(), Some("message_too_large"));

    let reply = http
        .request(Method::POST, "/whip/bad%20room!", &sdp, "v=0")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code().as_deref(), Some("invalid_room"));

    // WHEP: no such room; a room whose host has no tracks yet.
    let player = Subscriber::new().await.unwrap();
    let offer = player.offer_recvonly().await.unwrap();
    let reply = http.post_offer("/whep/NOSUCH", &offer, None).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code().as_deref(), Some("room_not_found"));
    let mut host_ws = WsClient::connect(server.http).await.unwrap();
    host_ws
        .join(Role::Host, Some("EMPTY"), "host")
        .await
        .unwrap();
    let reply = http.post_offer("/whep/EMPTY", &offer, None).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code().as_deref(), Some("room_not_live"));

    // Unknown session resources.
    for method in [Method::PATCH, Method::DELETE] {
        let reply = http
            .request(
                method.clone(),
                "/whip/ROOM/nosuchsession",
                &[("content-type", "application/trickle-ice-sdpfrag")],
                "a=end-of-candidates\r\n",
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{method}");
        assert_eq!(reply.error_code().as_deref(), Some("unknown_session"));
    }

    // Nothing leaked: only the WebSocket host's room seat exists, no peer.
    assert_eq!(peers(&server).await, 0);

    // A good session right after works, and rejects a malformed fragment or wrong type.
    let (_publisher, whip) = publish(&server, "ROOM", None).await;
    let reply = whip.patch(&http, "garbage line", None).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code().as_deref(), Some("invalid_candidate"));
    let reply = http
        .request(
            Method::PATCH,
            &whip.location,
            &[("content-type", "application/sdp")],
            "v=0",
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // OPTIONS says what the endpoint takes.
    let reply = http
        .request(Method::OPTIONS, "/whip/ROOM", &[], "")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("accept-post"), Some("application/sdp"));
    // A CORS preflight from another origin is allowed.
    let reply = http
        .request(
            Method::OPTIONS,
            "/whep/ROOM",
            &[
                ("origin", "https://player.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            "",
        )
        .await
        .unwrap();
    assert!(reply.status.is_success());
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    server.stop().await;
}

/// Tokens on WHIP and WHEP: each wrong token gets its status and code; a valid one works.
#[tokio::test]
async fn whip_and_whep_require_valid_tokens() {
    let server = TestServer::start_with(ServerConfig {
        auth_secret: Some(SECRET.into()),
        turn: vec![signaling::turn::TurnConfig {
            urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
            secret: "turn-secret".into(),
            ttl: Duration::from_secs(600),
        }],
        ..ServerConfig::default()
    })
    .await;
    let http = WhipHttp::new(server.http);
    // TURN credentials only for a caller with an acceptable token.
    let options = |token: Option<String>| {
        let http = http.clone();
        async move {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("authorization", b)])
                .unwrap_or_default();
            http.request(Method::OPTIONS, "/whip/LIVE", &headers, "")
                .await
                .unwrap()
        }
    };
    assert!(options(None).await.header_all("link").is_empty());
    let links = options(Some(token(SECRET, "LIVE", &[Grant::Publish], 60)))
        .await
        .header_all("link");
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].starts_with("<turn:127.0.0.1:3478?transport=udp>; rel=\"ice-server\""));
    assert!(links[0].contains(":alice\""), "{}", links[0]);
    let publisher = Publisher::new(MediaConfig::default()).await.unwrap();
    publisher.create_offer().await.unwrap();
    let offer = publisher
        .peer()
        .local_description_after_gathering()
        .await
        .unwrap();
    let other_secret = "another-secret-another-secret-another-42";
    let cases: Vec<(Option<String>, StatusCode, &str)> = vec![
        (None, StatusCode::UNAUTHORIZED, "token_missing"),
        (
            Some("not.a.jwt".into()),
            StatusCode::UNAUTHORIZED,
            "token_malformed",
        ),
        (
            Some(token(other_secret, "LIVE", &[Grant::Publish], 3600)),
            StatusCode::UNAUTHORIZED,
            "token_invalid_signature",
        ),
        (
            Some(token(SECRET, "LIVE", &[Grant::Publish], -3600)),
            StatusCode::UNAUTHORIZED,
            "token_expired",
        ),
        (
            Some(token(SECRET, "OTHER", &[Grant::Publish], 3600)),
            StatusCode::FORBIDDEN,
            "token_wrong_room",
        ),
        (
            Some(token(SECRET, "LIVE", &[Grant::Subscribe], 3600)),
            StatusCode::FORBIDDEN,
            "grant_missing",
        ),
    ];
    for (token, status, code) in &cases {
        let reply = http
            .post_offer("/whip/LIVE", &offer, token.as_deref())
            .await
            .unwrap();
        assert_eq!(reply.status, *status, "{code}: {}", reply.body);
        assert_eq!(reply.error_code().as_deref(), Some(*code));
        if *status == StatusCode::UNAUTHORIZED {
            assert!(
                reply
                    .header("www-authenticate")
                    .is_some_and(|v| v.starts_with("Bearer"))
            );
        }
    }
    assert_eq!(peers(&server).await, 0, "refused requests leave nothing");

    // Valid tokens: publish with `publish`, watch with `subscribe` (a room-wide `*` too).
    let host_token = token(SECRET, "LIVE", &[Grant::Publish], 3600);
    let whip = publisher
        .publish_whip(&http, "LIVE", Some(&host_token))
        .await
        .unwrap();
    publisher.wait_connected(SETTLE).await.unwrap();
    publisher.start_media();
    wait_live(&server).await;
    let player = Subscriber::new().await.unwrap();
    let viewer_token = token(SECRET, "*", &[Grant::Subscribe], 3600);
    let reply = http
        .post_offer("/whep/LIVE", "v=0", Some(&host_token))
        .await
        .unwrap();
    assert_eq!(reply.error_code().as_deref(), Some("grant_missing"));
    let whep = player
        .watch_whep(&http, "LIVE", Some(&viewer_token))
        .await
        .unwrap();
    player
        .wait_for(SETTLE, |p| p.packet_count(MediaKind::Video) > 10)
        .await
        .unwrap();
    // DELETE needs the token too.
    let anonymous = WhipSession {
        token: None,
        ..whep.clone()
    };
    assert_eq!(
        anonymous.delete(&http).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(whep.delete(&http).await.unwrap().status, StatusCode::OK);
    assert_eq!(whip.delete(&http).await.unwrap().status, StatusCode::OK);
    server.stop().await;
}
