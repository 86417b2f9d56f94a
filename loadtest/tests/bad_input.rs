//! Bad input gets a clear message and a non-zero exit; a run that started still writes its
//! (partial) report.

mod support;

use support::{Server, loadtest, read_json};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn an_unreachable_server_is_named() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let out = loadtest(&["--server", &server, "--viewers", "5"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("cannot reach the server"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_joins_end_in_error_with_a_partial_report() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let addr = server.http.to_string();
    let out = loadtest(&[
        "--server",
        &addr,
        "--viewers",
        "5",
        "--arrival",
        "step",
        "--hold",
        "0",
        "--room",
        "NOSUCH",
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("room_not_found"), "{}", stderr(&out));
    let r = read_json(&json);
    assert_eq!(r["verdict"], "ERROR");
    assert_eq!(r["counts"]["viewers_started"], 5);
    assert_eq!(r["counts"]["joins_failed"], 5);
    assert!(!r["errors"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_malformed_scenario_file_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[spike]\nviewers = \"many\"\n").unwrap();
    let out = loadtest(&["--scenario", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(err.contains("bad.toml") && err.contains("viewers"), "{err}");

    std::fs::write(&path, "[spike\nviewers = 3\n").unwrap();
    let out = loadtest(&["--scenario", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));

    let out = loadtest(&["--scenario", "/nonexistent/scenario.toml"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("reading scenario file"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn impossible_parameters_are_refused_before_connecting() {
    for (args, expect) in [
        (
            vec!["--viewers", "0"],
            "spike.viewers must be at least 1, got 0",
        ),
        (
            vec!["--viewers", "5", "--arrival", "poisson:-2"],
            "rate_per_s must be a positive number",
        ),
        (vec!["--viewers", "-5"], "--viewers"),
        (vec!["--viewers", "5", "--loss", "150"], "loss_pct"),
        (
            vec!["--viewers", "5", "--slo", "join_p99=1"],
            "unknown SLO key",
        ),
        (vec![], "nothing to run"),
    ] {
        // The server address is unreachable on purpose: validation must come first.
        let mut full = vec!["--server", "127.0.0.1:1"];
        full.extend(args.iter().copied());
        let out = loadtest(&full).await;
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
}
