//! `loadtest` against a server that requires access tokens, as in production: with the
//! server's secret every kind of simulated client gets in; without it, or with another
//! secret, the joins are refused and the run says why.

mod support;

use marquee_client::WsClient;
use marquee_protocol::auth::{Claims, Grant, Grants, TokenKey};
use marquee_protocol::wire::Role;
use support::{Server, loadtest, loadtest_with_env, read_json};

const SECRET: &str = "the-load-tested-servers-secret-0123456789";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every part that joins: a spike with the synthetic host, a party, signaling clients.
fn every_part(addr: &str, json: &str) -> Vec<String> {
    [
        "--server",
        addr,
        "--viewers",
        "4",
        "--arrival",
        "step",
        "--hold",
        "1",
        "--parties",
        "1",
        "--members",
        "3",
        "--party-duration",
        "3",
        "--command-every",
        "1",
        "--chat-rate",
        "1",
        "--signaling",
        "4",
        "--json",
        json,
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_servers_secret_every_client_presents_a_token_and_gets_in() {
    let server = Server::start_with_secret(Some(SECRET)).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut args = every_part(&server.http.to_string(), json.to_str().unwrap());
    args.extend(["--slo".to_owned(), "joins_failed=0".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = loadtest_with_env(&args, &[("MARQUEE_AUTH_SECRET", SECRET)]).await;
    let r = read_json(&json);
    assert_eq!(out.status.code(), Some(0), "{}", r["errors"]);
    let c = &r["counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("count {k} in {c}"));
    assert_eq!(n("viewers_with_media"), 4, "{c}");
    assert_eq!(n("signaling_joined"), 4, "{c}");
    assert_eq!(n("members_joined"), 3, "{c}");
    // The creator's token carries `control` and the members' `chat`: both went through.
    assert!(n("commands_sent") > 0, "{c}");
    assert_eq!(n("commands_applied"), n("commands_sent"), "{c}");
    assert!(n("chats_sent") > 0, "{c}");
    assert_eq!(n("chats_delivered"), 3 * n("chats_sent"), "{c}");
    assert!(
        r["errors"].as_array().unwrap().is_empty(),
        "{}",
        r["errors"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_or_with_another_secret_the_joins_are_refused_and_named() {
    let server = Server::start_with_secret(Some(SECRET)).await;
    // A real event, hosted with a good token, so the viewers' own joins are what is refused.
    let mut host = WsClient::connect(server.http).await.unwrap();
    let room = host
        .join_authorized(Role::Host, None, "host", Some(&host_token()))
        .await
        .unwrap()
        .room;
    let dir = tempfile::tempdir().unwrap();
    let addr = server.http.to_string();
    let other = "another-secret-that-is-long-enough-0123456789";
    let viewers: &[&str] = &[
        "--room",
        &room,
        "--viewers",
        "4",
        "--arrival",
        "step",
        "--hold",
        "0",
    ];
    // Signaling clients and parties: their room's host and the party's creator are refused.
    let others: &[&str] = &["--signaling", "4", "--hold", "0", "--parties", "1"];
    for (secret, code) in [
        (None, "token_missing"),
        (Some(other), "token_invalid_signature"),
    ] {
        for parts in [viewers, others] {
            let json = dir.path().join("report.json");
            let mut args = vec!["--server", &addr, "--json", json.to_str().unwrap()];
            args.extend_from_slice(parts);
            if let Some(secret) = secret {
                args.extend(["--auth-secret", secret]);
            }
            let out = loadtest(&args).await;
            assert_eq!(out.status.code(), Some(3), "{code} {parts:?}");
            assert!(stderr(&out).contains(code), "{code}: {}", stderr(&out));
            let r = read_json(&json);
            assert_eq!(r["verdict"], "ERROR");
            let c = &r["counts"];
            assert_eq!(c["viewers_joined"], 0, "{c}");
            assert_eq!(c["signaling_joined"], 0, "{c}");
            assert_eq!(c["members_joined"], 0, "{c}");
            if parts == viewers {
                assert_eq!(c["joins_failed"], 4, "{c}");
            }
        }
    }
}

/// A `publish` token for any room, signed with the server's secret.
fn host_token() -> String {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    TokenKey::new(SECRET.as_bytes()).unwrap().mint(&Claims {
        sub: "test-host".to_owned(),
        room: "*".to_owned(),
        grants: Grants::from_list(&[Grant::Publish]),
        exp: now + 600,
        iat: now,
        name: None,
    })
}

#[tokio::test]
async fn an_unusable_secret_is_bad_input_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--auth-secret", "short"], "at least 32"),
        (
            &["--auth-secret-file", "/nonexistent/marquee-secret"],
            "--auth-secret-file /nonexistent/marquee-secret",
        ),
        (
            &[
                "--auth-secret",
                SECRET,
                "--auth-secret-file",
                file.to_str().unwrap(),
            ],
            "cannot be used with",
        ),
    ];
    for (flags, says) in cases {
        // A port nothing listens on: bad input is reported before any connection.
        let mut args = vec!["--server", "127.0.0.1:9", "--signaling", "1"];
        args.extend_from_slice(flags);
        let out = loadtest(&args).await;
        assert_eq!(out.status.code(), Some(4), "{flags:?}");
        assert!(stderr(&out).contains(says), "{flags:?}: {}", stderr(&out));
    }
}
