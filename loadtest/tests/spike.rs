//! The tool as a user runs it, against a real in-process `marquee`: a 60-viewer spike of real
//! WebRTC viewers plus three watch parties, checked against what the report says happened.

mod support;

use support::{Server, loadtest, read_json, report_of, samples};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_and_parties_are_measured_and_an_impossible_slo_fails_the_run() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let pid = std::process::id().to_string();
    let addr = server.http.to_string();
    let out = loadtest(&[
        "--server",
        &addr,
        "--server-pid",
        &pid,
        "--viewers",
        "60",
        "--arrival",
        "ramp:3",
        "--hold",
        "3",
        "--bitrate-kbps",
        "500",
        "--join-timeout",
        "20",
        "--parties",
        "3",
        "--members",
        "3",
        "--party-duration",
        "6",
        "--command-every",
        "1.5",
        "--chat-rate",
        "0.5",
        // Nobody joins in a microsecond.
        "--slo",
        "join_p99_ms=0.001",
        "--slo",
        "loss_pct=5",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ])
    .await;
    let r = read_json(&json);
    let c = &r["counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("count {k} in {c}"));

    // Every viewer joined and received media, and the counts add up.
    assert_eq!(n("viewers_planned"), 60);
    assert_eq!(n("viewers_started"), 60);
    assert_eq!(n("viewers_joined"), 60, "{c}");
    assert_eq!(n("viewers_with_media"), 60, "{:?}", r["errors"]);
    // Joins are counted as they happen: while all 60 viewers are still watching (before
    // anyone left; `active` also counts the 9 party members), the per-second series already
    // says 60 joined.
    let series = r["series"].as_array().unwrap();
    assert!(
        series
            .iter()
            .any(|p| p["joined"] == 60 && p["active"].as_u64().unwrap() >= 60),
        "no second shows 60 joined while they watch: {series:?}"
    );
    assert_eq!(n("joins_failed"), 0);
    assert!(n("packets_received") > 60 * 100, "{c}");
    assert!(n("packets_expected") > 0 && n("packets_lost") * 100 <= n("packets_expected"));
    // The sampled packets really went through SRTP: each was authenticated and decrypted.
    assert!(n("packets_sampled") > 60, "{c}");
    assert_eq!(n("packets_authenticated"), n("packets_sampled"), "{c}");
    // Three parties of three: each chat reached the three members, each command applied.
    assert_eq!(n("parties"), 3);
    assert_eq!(n("members_joined"), 9);
    assert!(n("chats_sent") > 0, "{c}");
    assert_eq!(n("chats_delivered"), 3 * n("chats_sent"), "{c}");
    assert!(n("commands_sent") >= 6, "{c}");
    assert_eq!(n("commands_applied"), n("commands_sent"), "{c}");

    let metric = |name: &str| {
        r["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("metric {name} in report"))
            .clone()
    };
    for stage in [
        "join_ws_open",
        "join_joined",
        "join_ice",
        "join_dtls",
        "join_first_rtp",
        "join",
    ] {
        assert_eq!(metric(stage)["summary"]["count"], 60, "{stage}");
    }
    let join = &metric("join")["summary"];
    assert!(join["p50"].as_f64().unwrap() > 0.0);
    assert!(
        join["p50"].as_f64().unwrap()
            <= metric("join_first_rtp")["summary"]["max"].as_f64().unwrap()
                + join["max"].as_f64().unwrap()
    );
    assert!(metric("e2e_latency")["summary"]["count"].as_u64().unwrap() > 0);
    assert_eq!(
        metric("control_fanout")["summary"]["count"].as_u64(),
        Some(n("commands_applied"))
    );
    assert!(metric("chat_fanout")["summary"]["count"].as_u64().unwrap() > 0);
    assert!(metric("sync_error")["summary"]["count"].as_u64().unwrap() > 0);
    assert!(r["server_usage"]["rss_peak_mb"].as_f64().unwrap() > 0.0);

    // The impossible SLO fails the run (exit 1); the reachable one passes.
    let slos = r["slos"].as_array().unwrap();
    let slo = |k: &str| slos.iter().find(|s| s["key"] == k).unwrap().clone();
    assert_eq!(slo("join_p99_ms")["pass"], false);
    assert_eq!(slo("loss_pct")["pass"], true);
    assert_eq!(r["verdict"], "FAIL");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL") && stdout.contains("join_p99_ms"),
        "{stdout}"
    );

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("FAIL") && !page.contains("NaN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_met_slo_passes_with_exit_code_0() {
    let server = Server::start().await;
    let addr = server.http.to_string();
    let out = loadtest(&[
        "--server",
        &addr,
        "--signaling",
        "20",
        "--arrival",
        "step",
        "--hold",
        "1",
        "--slo",
        "joins_failed=0",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASS"), "{stdout}");
}

/// A second wave joins an audience that watches: everyone is counted, and the first wave's
/// latency is reported apart before and during the second wave's arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wave_is_measured_against_the_audience_it_joins() {
    let server = Server::start().await;
    let r = report_of(
        &server,
        &[
            "--viewers",
            "15",
            "--second-wave",
            "15@6",
            "--arrival",
            "ramp:2",
            "--hold",
            "1",
            "--bitrate-kbps",
            "400",
            "--sample-every",
            "4",
            "--join-timeout",
            "20",
        ],
    )
    .await;
    let c = &r["counts"];
    assert_eq!(c["viewers_planned"], 30, "{c}");
    assert_eq!(c["viewers_with_media"], 30, "{:?}", r["errors"]);
    let count = |name| samples(&r, name).unwrap_or_else(|| panic!("metric {name} in report"));
    let (steady, during, all) = (
        count("e2e_steady"),
        count("e2e_second_wave"),
        count("e2e_latency"),
    );
    assert!(steady > 0 && during > 0, "steady {steady}, during {during}");
    // Both are first-wave samples of the e2e series, in two disjoint windows.
    assert!(steady + during < all, "{steady} + {during} of {all}");
}

/// Viewers that join over WHEP (as they would on any WHEP server) get media and are
/// measured like WebSocket viewers, without the WebSocket stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_viewers_join_and_are_measured() {
    let server = Server::start().await;
    let whep = format!("http://{}/whep/{{room}}", server.http);
    let r = report_of(
        &server,
        &[
            "--whep",
            &whep,
            "--viewers",
            "12",
            "--arrival",
            "ramp:2",
            "--hold",
            "2",
            "--bitrate-kbps",
            "400",
            "--join-timeout",
            "20",
        ],
    )
    .await;
    let c = &r["counts"];
    assert_eq!(c["viewers_with_media"], 12, "{c} {:?}", r["errors"]);
    assert_eq!(c["joins_failed"], 0, "{c}");
    // A WHEP viewer offers, so the server answers as DTLS server and the `webrtc` stack is the
    // DTLS client, which installs its SRTP keys a step after its Finished: a packet that
    // arrives in between is dropped by the stack. At most one such packet per viewer.
    let (authenticated, sampled) = (
        c["packets_authenticated"].as_u64().unwrap(),
        c["packets_sampled"].as_u64().unwrap(),
    );
    assert!(
        authenticated <= sampled && authenticated + 12 >= sampled,
        "{c}"
    );
    assert_eq!(
        samples(&r, "join_joined"),
        Some(12),
        "the WHEP answer is the joined stage"
    );
    assert_eq!(samples(&r, "join"), Some(12));
    assert!(samples(&r, "e2e_latency").unwrap_or(0) > 0);
    assert_eq!(samples(&r, "join_ws_open").unwrap_or(0), 0, "no WebSocket");
}
