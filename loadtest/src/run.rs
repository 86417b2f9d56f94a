//! Runs a validated [`Scenario`] against a server and builds its [`Report`].
//!
//! The parts of a scenario (spike, party, churn, signaling) run side by side, each in its own
//! task, recording into one set of histograms and counters. Beside them run the probes: the
//! generator's 10 ms lag ticker and a 1 s sampler of `/proc` and of the viewers' taps, which
//! feeds the progress line and the report's time series. Whatever happens, a report comes
//! back: a part that fails adds its error and the rest carries on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use marquee_client::relay::{ImpairedRelay, RelayConfig, Upstream};
use marquee_client::{Host, HostOptions, MediaConfig, PartyClient, WsClient};
use marquee_protocol::wire::{ClientMessage, PartyMessage, Role, RoomMessage};
use sync::{ClockSync, EventBody, PlaybackCommand, ProbeSample, UnixMillis};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::access::{ClientRole, Tokens};
use crate::metrics::{Histograms, Metric};
use crate::probe::{self, LagMeter, ProcSample};
use crate::progress::{Progress, Snapshot};
use crate::report::{
    Counts, GeneratorUsage, MetricReport, Report, SeriesPoint, ServerUsage, Verdict,
};
use crate::scenario::{Churn, PartyLoad, Scenario, SecondWave, SignalingLoad, Spike};
use crate::schedule::Schedule;
use crate::tap::{Tap, TapNetwork};
use crate::viewer::{self, SharedHistograms, ViewerOutcome, ViewerSetup, WavePhase};

/// The generator's lag ticker period.
const LAG_TICK: Duration = Duration::from_millis(10);
/// A run whose generator's scheduling lag p99 is above this measured the generator.
const LAG_LIMIT: Duration = Duration::from_millis(50);
/// A run whose generator used this share of the machine's cores for a whole second (and more
/// than once) was starved for CPU.
const CPU_LIMIT_PCT_OF_CORES: f64 = 95.0;

/// Counters the parts update as they go; the sampler reads them every second.
#[derive(Default)]
struct Live {
    planned: AtomicU64,
    joined: AtomicU64,
    failed: AtomicU64,
    active: AtomicU64,
    taps: Mutex<Vec<Arc<Tap>>>,
    counts: Mutex<Counts>,
    errors: Mutex<Vec<String>>,
    /// Churn: the server's RSS growth per 1,000 cycles after the warm-up.
    churn_growth_kb: Mutex<Option<f64>>,
}

impl Live {
    fn error(&self, message: String) {
        let mut errors = lock(&self.errors);
        if !errors.contains(&message) && errors.len() < 20 {
            errors.push(message);
        }
    }

    fn packets(&self) -> u64 {
        lock(&self.taps)
            .iter()
            .map(|t| t.state().streams.iter().map(|s| s.packets).sum::<u64>())
            .sum()
    }
}

/// Resolves `host:port`, `http://host:port[/…]` or `ws://host:port[/…]`.
pub async fn resolve_server(server: &str) -> Result<SocketAddr> {
    let rest = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("ws://"))
        .unwrap_or(server);
    if rest.starts_with("https://") || rest.starts_with("wss://") || server.contains("s://") {
        bail!("{server}: TLS is not supported by loadtest; target the plain HTTP port");
    }
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut addrs = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolving server address {authority:?}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("server address {authority:?} resolves to nothing"))
}

/// Runs `scenario` (already validated) against `server`; the clients present `tokens`
/// (none against a `--dev` server).
pub async fn run(
    scenario: &Scenario,
    server: SocketAddr,
    tokens: Tokens,
    show_progress: bool,
) -> Report {
    let target = Target {
        server,
        tokens: Arc::new(tokens),
    };
    let started = now();
    let started_unix_ms = sync_unix_ms().0.max(0) as u64;
    let live = Arc::new(Live::default());
    let histograms: SharedHistograms = Arc::new(Mutex::new(Histograms::new()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let lag_meter = Arc::new(Mutex::new(LagMeter::new(LAG_TICK)));
    let lag = tokio::spawn(measure_lag(
        stop_rx.clone(),
        Arc::clone(&histograms),
        Arc::clone(&lag_meter),
    ));
    let sampler = tokio::spawn(sample(
        lag_meter,
        scenario.server_pid,
        Arc::clone(&live),
        stop_rx.clone(),
        show_progress,
        started,
    ));

    let mut parts = JoinSet::new();
    let needs_host =
        scenario.spike.as_ref().is_some_and(|s| s.room.is_none()) || scenario.churn.is_some();
    let media = Media::start(needs_host, scenario, target.clone()).await;
    match media {
        Err(err) => live.error(format!("starting the synthetic host: {err:#}")),
        Ok(media) => {
            let media = Arc::new(media);
            if let Some(spike) = scenario.spike.clone() {
                let (media, live, h) = (
                    Arc::clone(&media),
                    Arc::clone(&live),
                    Arc::clone(&histograms),
                );
                let seed = scenario.seed;
                parts.spawn(async move { run_spike(&spike, seed, &media, &live, &h).await });
            }
            if let Some(churn) = scenario.churn.clone() {
                let (media, live, h) = (
                    Arc::clone(&media),
                    Arc::clone(&live),
                    Arc::clone(&histograms),
                );
                let pid = scenario.server_pid;
                parts.spawn(async move { run_churn(&churn, pid, &media, &live, &h).await });
            }
            if let Some(signaling) = scenario.signaling.clone() {
                let (target, live, h) =
                    (target.clone(), Arc::clone(&live), Arc::clone(&histograms));
                let seed = scenario.seed;
                parts.spawn(
                    async move { run_signaling(&signaling, seed, &target, &live, &h).await },
                );
            }
            if let Some(party) = scenario.party.clone() {
                let (target, live, h) =
                    (target.clone(), Arc::clone(&live), Arc::clone(&histograms));
                let seed = scenario.seed;
                parts.spawn(async move { run_parties(&party, seed, &target, &live, &h).await });
            }
            while let Some(result) = parts.join_next().await {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => live.error(format!("{err:#}")),
                    Err(err) => live.error(format!("a scenario part panicked: {err}")),
                }
            }
            if let Ok(media) = Arc::try_unwrap(media) {
                media.close().await;
            }
        }
    }

    let _ = stop_tx.send(true);
    let _ = lag.await;
    let samples = sampler.await.unwrap_or_default();
    let duration = now().saturating_duration_since(started);
    let histograms = lock(&histograms).clone();
    let counts = lock(&live.counts).clone();
    let errors = lock(&live.errors).clone();
    let churn_growth = *lock(&live.churn_growth_kb);
    build_report(
        scenario,
        server,
        started_unix_ms,
        duration,
        counts,
        &histograms,
        samples,
        errors,
        churn_growth,
    )
}

/// The server under test, and the tokens its clients present.
#[derive(Clone)]
struct Target {
    server: SocketAddr,
    tokens: Arc<Tokens>,
}

/// The synthetic host and the optional impairment relay the media parts share.
struct Media {
    target: Target,
    room: Option<String>,
    host: Option<Arc<Host>>,
    relay: Option<ImpairedRelay>,
    /// The viewers' shared sockets, one reader per core (see `tap::TapNetwork`).
    network: Option<Arc<TapNetwork>>,
}

impl Media {
    async fn start(needs_host: bool, scenario: &Scenario, target: Target) -> Result<Self> {
        let server = target.server;
        let room = scenario.spike.as_ref().and_then(|s| s.room.clone());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let network = match TapNetwork::new(cores) {
            Ok(network) => Some(network),
            Err(err) => {
                eprintln!("loadtest: viewers get a socket each (no shared sockets: {err})");
                None
            }
        };
        let mut media = Media {
            target,
            room,
            host: None,
            relay: None,
            network,
        };
        if !needs_host && scenario.spike.is_none() {
            return Ok(media);
        }
        if needs_host {
            let bitrate = scenario.spike.as_ref().map_or(1500.0, |s| s.bitrate_kbps);
            let host = Host::join_with(
                server,
                HostOptions {
                    name: "loadtest host".to_owned(),
                    token: media.target.tokens.mint(ClientRole::Host, "host"),
                    media: media_config(bitrate),
                    start_media: true,
                    ..HostOptions::default()
                },
            )
            .await?;
            host.wait_connected(Duration::from_secs(10))
                .await
                .context("host media connection")?;
            media.room = Some(host.room().to_owned());
            media.host = Some(Arc::new(host));
        }
        if let Some(impairment) = scenario.impairment.clone().filter(|i| !i.is_noop()) {
            // The relay forwards to the server's media address, which its answer to the host
            // names; without a host of ours the address is not known.
            let host = media
                .host
                .as_ref()
                .ok_or_else(|| anyhow!("impairment needs the synthetic host (no spike.room)"))?;
            let answer = host
                .peer()
                .pc()
                .remote_description()
                .await
                .ok_or_else(|| anyhow!("the host has no remote description"))?;
            let (_, udp) = marquee_client::rewrite_candidates(&answer.sdp, server);
            let udp = udp.ok_or_else(|| anyhow!("the server's answer names no candidate"))?;
            // A socket per viewer, so the server tells the viewers apart as without the relay.
            let relay = ImpairedRelay::start(RelayConfig {
                server: Some(udp),
                upstream: Upstream::PerClient,
                impairment,
                ..RelayConfig::default()
            })
            .await?;
            media.relay = Some(relay);
        }
        Ok(media)
    }

    fn setup(
        &self,
        spike: &Spike,
        name: String,
        histograms: &SharedHistograms,
    ) -> Result<ViewerSetup> {
        let room = self
            .room
            .clone()
            .ok_or_else(|| anyhow!("no room to join"))?;
        Ok(ViewerSetup {
            server: self.target.server,
            whep: spike.whep.as_ref().map(|url| url.replace("{room}", &room)),
            room,
            token: self.target.tokens.mint(ClientRole::Viewer, &name),
            name,
            sample_every: spike.sample_every,
            route_via: self.relay.as_ref().map(ImpairedRelay::addr),
            join_timeout: Duration::from_secs_f64(spike.join_timeout_s),
            host: self.host.clone(),
            histograms: Arc::clone(histograms),
            network: self.network.clone(),
            wave: None,
        })
    }

    async fn close(self) {
        if let Some(host) = self.host
            && let Ok(host) = Arc::try_unwrap(host)
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), host.close()).await;
        }
    }
}

/// A synthetic host's media for a target bitrate: 30 fps VP8 in ~1,100-byte packets with
/// keyframes three times the size of a delta frame every 2 s, and 20 ms Opus at 64 kbit/s.
pub fn media_config(bitrate_kbps: f64) -> MediaConfig {
    let audio_kbps = 64.0;
    let video_bytes_per_s = ((bitrate_kbps - audio_kbps).max(30.0) * 1000.0 / 8.0) as usize;
    let bytes_per_frame = video_bytes_per_s / 30;
    let packets_per_frame = bytes_per_frame.div_ceil(1100).max(1);
    MediaConfig {
        video: true,
        audio: true,
        video_fps: 30,
        keyframe_interval: 60,
        packets_per_keyframe: (packets_per_frame * 3) as u16,
        packets_per_frame: packets_per_frame as u16,
        video_payload_size: (bytes_per_frame / packets_per_frame).max(64),
        audio_payload_size: 160,
    }
}

async fn run_spike(
    spike: &Spike,
    seed: u64,
    media: &Media,
    live: &Arc<Live>,
    histograms: &SharedHistograms,
) -> Result<()> {
    let second = spike.second_wave.as_ref();
    let total = spike.viewers + second.map_or(0, |w| w.viewers);
    live.planned.fetch_add(total, Ordering::Relaxed);
    lock(&live.counts).viewers_planned += total;
    // Only a spike with a second wave tells its first wave's latency apart by phase.
    let wave = second.map(|_| Arc::new(WavePhase::default()));
    let mut waves = Waves {
        spike,
        media,
        live,
        histograms,
        leaves: Vec::new(),
        viewers: JoinSet::new(),
    };
    waves
        .arrive(spike.viewers as usize, seed, wave.clone())
        .await?;
    if let (Some(second), Some(wave)) = (second, &wave) {
        let settle = Duration::from_secs_f64(SecondWave::SETTLE_S);
        tokio::time::sleep(settle).await;
        wave.set(WavePhase::STEADY);
        tokio::time::sleep(Duration::from_secs_f64(second.after_s).saturating_sub(settle)).await;
        wave.set(WavePhase::SECOND_WAVE);
        waves
            .arrive(second.viewers as usize, seed ^ 0x2, None)
            .await?;
        tokio::time::sleep(settle).await;
        wave.set(WavePhase::AFTER);
    }
    let Waves {
        leaves,
        mut viewers,
        ..
    } = waves;
    tokio::time::sleep(Duration::from_secs_f64(spike.hold_s)).await;
    let mut departures = Schedule::new(now(), spike.departure.offsets(leaves.len(), seed ^ 0x5eed));
    while let Some(at) = departures.poll_timeout() {
        tokio::time::sleep_until(at.into()).await;
        while let Some(i) = departures.poll_due(now()) {
            let _ = leaves[i].send(true);
        }
    }
    while viewers.join_next().await.is_some() {}
    Ok(())
}

/// A spike's viewers as they arrive, wave after wave.
struct Waves<'a> {
    spike: &'a Spike,
    media: &'a Media,
    live: &'a Arc<Live>,
    histograms: &'a SharedHistograms,
    /// One sender per viewer started: `true` tells it to leave.
    leaves: Vec<watch::Sender<bool>>,
    viewers: JoinSet<ViewerOutcome>,
}

impl Waves<'_> {
    /// Starts `n` viewers on the spike's arrival curve; returns after the last one started.
    async fn arrive(&mut self, n: usize, seed: u64, wave: Option<Arc<WavePhase>>) -> Result<()> {
        let mut arrivals = Schedule::new(now(), self.spike.arrival.offsets(n, seed));
        while let Some(at) = arrivals.poll_timeout() {
            tokio::time::sleep_until(at.into()).await;
            while arrivals.poll_due(now()).is_some() {
                let name = format!("viewer {}", self.leaves.len());
                let mut setup = self.media.setup(self.spike, name, self.histograms)?;
                setup.wave = wave.clone();
                let (tx, rx) = watch::channel(false);
                self.leaves.push(tx);
                lock(&self.live.counts).viewers_started += 1;
                self.viewers.spawn(watch_one(
                    setup,
                    rx,
                    Arc::clone(self.live),
                    Arc::clone(self.histograms),
                ));
            }
        }
        Ok(())
    }
}

/// One viewer from start to leave, accounted in `live`.
async fn watch_one(
    setup: ViewerSetup,
    leave: watch::Receiver<bool>,
    live: Arc<Live>,
    histograms: SharedHistograms,
) -> ViewerOutcome {
    let tap_slot: Arc<Mutex<Option<Arc<Tap>>>> = Arc::default();
    let outcome = {
        let (on_tap, on_watching) = (Arc::clone(&live), Arc::clone(&live));
        let slot = Arc::clone(&tap_slot);
        viewer::run(
            setup,
            leave,
            move |tap| {
                *lock(&slot) = Some(Arc::clone(&tap));
                lock(&on_tap.taps).push(tap);
                on_tap.active.fetch_add(1, Ordering::Relaxed);
            },
            // Counted when it happens, so the progress line and the report's "joined"
            // series follow the arrivals instead of jumping when viewers leave.
            move || {
                on_watching.joined.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await
    };
    live.active.fetch_sub(1, Ordering::Relaxed);
    if let Some(tap) = lock(&tap_slot).take() {
        lock(&live.taps).retain(|t| !Arc::ptr_eq(t, &tap));
    }
    account(&live, &histograms, &outcome);
    outcome
}

/// Adds a finished viewer's outcome to the run's counts (its join was counted when it got
/// media; a failure is counted here, when the viewer gave up).
fn account(live: &Live, histograms: &SharedHistograms, o: &ViewerOutcome) {
    if !o.has_media() {
        live.failed.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(failure) = &o.failure {
        live.error(failure.clone());
    }
    {
        let mut c = lock(&live.counts);
        c.viewers_joined += u64::from(o.joined());
        c.joins_failed += u64::from(!o.has_media());
        c.viewers_with_media += u64::from(o.has_media());
        c.packets_received += o.packets;
        c.bytes_received += o.bytes;
        c.packets_sampled += o.passed;
        c.packets_authenticated += o.authenticated;
        c.packets_lost += o.video_lost;
        c.packets_expected += o.video_expected;
        c.packets_recovered += o.recovered;
        c.nacks_sent += o.nacks_sent;
        c.freezes += o.freezes;
    }
    let mut h = lock(histograms);
    o.stages.record(&mut h);
    if o.has_media() {
        if let Some(j) = o.jitter_ms {
            h.record(Metric::Jitter, j);
        }
        if let Some(b) = o.bitrate_kbps {
            h.record(Metric::ViewerBitrate, b);
        }
        if o.video_expected > 0 {
            h.record(
                Metric::ViewerLoss,
                100.0 * o.video_lost as f64 / o.video_expected as f64,
            );
        }
        h.record(Metric::ViewerFreezes, o.freezes as f64);
    }
}

async fn run_churn(
    churn: &Churn,
    server_pid: Option<u32>,
    media: &Media,
    live: &Arc<Live>,
    histograms: &SharedHistograms,
) -> Result<()> {
    let spike = Spike {
        sample_every: 32,
        ..Spike::default()
    };
    let next = Arc::new(AtomicU64::new(0));
    // The server's RSS once the first `warmup` cycles are done (allocator pools filled).
    let warmup = (churn.cycles / 10)
        .max(churn.concurrency)
        .min(churn.cycles.saturating_sub(1));
    let baseline: Arc<Mutex<Option<(u64, u64)>>> = Arc::default();
    lock(&live.counts).viewers_planned += churn.cycles;
    live.planned.fetch_add(churn.cycles, Ordering::Relaxed);
    let mut workers = JoinSet::new();
    for _ in 0..churn.concurrency.min(churn.cycles) {
        let (next, live, histograms, baseline) = (
            Arc::clone(&next),
            Arc::clone(live),
            Arc::clone(histograms),
            Arc::clone(&baseline),
        );
        let setup = media.setup(&spike, "churn".to_owned(), &histograms)?;
        let (cycles, media_for) = (churn.cycles, Duration::from_secs_f64(churn.media_s));
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cycles {
                    break;
                }
                lock(&live.counts).viewers_started += 1;
                let (tx, rx) = watch::channel(false);
                let leave_after = async move {
                    tokio::time::sleep(media_for).await;
                    let _ = tx.send(true);
                    // Keep the sender alive until the viewer is done.
                    std::future::pending::<()>().await;
                };
                let mut setup = setup.clone();
                setup.name = format!("churn {i}");
                let watch = watch_one(setup, rx, Arc::clone(&live), Arc::clone(&histograms));
                tokio::select! {
                    _ = watch => {}
                    _ = leave_after => {}
                }
                let done = {
                    let mut counts = lock(&live.counts);
                    counts.cycles += 1;
                    counts.cycles
                };
                if done == warmup
                    && let Some(pid) = server_pid
                    && let Ok(s) = probe::sample(pid)
                {
                    *lock(&baseline) = Some((done, s.rss_bytes));
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let baseline = *lock(&baseline);
    if let (Some(pid), Some((at, rss))) = (server_pid, baseline) {
        // Let the server finish tearing down the last sessions before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let end = probe::sample(pid).context("sampling the server after churn")?;
        let done = lock(&live.counts).cycles;
        if done > at {
            let growth_kb = (end.rss_bytes as f64 - rss as f64) / 1024.0;
            *lock(&live.churn_growth_kb) = Some(growth_kb / (done - at) as f64 * 1000.0);
        }
    }
    Ok(())
}

async fn run_signaling(
    load: &SignalingLoad,
    seed: u64,
    target: &Target,
    live: &Arc<Live>,
    histograms: &SharedHistograms,
) -> Result<()> {
    let server = target.server;
    // A host with no media owns the room the clients join.
    let mut host = WsClient::connect(server)
        .await
        .context("signaling host connect")?;
    let host_token = target.tokens.mint(ClientRole::Host, "signaling host");
    let room = host
        .join_authorized(
            Role::Host,
            None,
            "loadtest signaling host",
            host_token.as_deref(),
        )
        .await
        .context("signaling host join")?
        .room;
    lock(&live.counts).signaling_planned += load.clients;
    live.planned.fetch_add(load.clients, Ordering::Relaxed);
    let n = load.clients as usize;
    let mut arrivals = Schedule::new(now(), load.arrival.offsets(n, seed ^ 0x51));
    let (leave_tx, leave_rx) = watch::channel(false);
    let mut clients = JoinSet::new();
    while let Some(at) = arrivals.poll_timeout() {
        tokio::time::sleep_until(at.into()).await;
        while let Some(i) = arrivals.poll_due(now()) {
            let token = target
                .tokens
                .mint(ClientRole::Viewer, &format!("client {i}"));
            let (room, live, histograms, mut leave) = (
                room.clone(),
                Arc::clone(live),
                Arc::clone(histograms),
                leave_rx.clone(),
            );
            clients.spawn(async move {
                let started = now();
                let joined = async {
                    let mut ws = WsClient::connect(server).await?;
                    let open = now();
                    ws.join_authorized(
                        Role::Viewer,
                        Some(&room),
                        &format!("client {i}"),
                        token.as_deref(),
                    )
                    .await?;
                    anyhow::Ok((ws, open, now()))
                }
                .await;
                match joined {
                    Ok((ws, open, joined)) => {
                        live.joined.fetch_add(1, Ordering::Relaxed);
                        live.active.fetch_add(1, Ordering::Relaxed);
                        lock(&live.counts).signaling_joined += 1;
                        {
                            let mut h = lock(&histograms);
                            h.record_duration(Metric::JoinWsOpen, open - started);
                            h.record_duration(Metric::JoinJoined, joined - started);
                        }
                        let _ = leave.wait_for(|l| *l).await;
                        ws.close().await;
                        live.active.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        lock(&live.counts).signaling_failed += 1;
                        live.error(format!("signaling client join: {err:#}"));
                    }
                }
            });
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(load.hold_s)).await;
    let _ = leave_tx.send(true);
    while clients.join_next().await.is_some() {}
    let _ = host.send(&ClientMessage::Room(RoomMessage::Leave {}));
    host.close().await;
    Ok(())
}

async fn run_parties(
    load: &PartyLoad,
    seed: u64,
    target: &Target,
    live: &Arc<Live>,
    histograms: &SharedHistograms,
) -> Result<()> {
    lock(&live.counts).parties += load.parties;
    let mut parties = JoinSet::new();
    for p in 0..load.parties {
        let (load, target, live, histograms) = (
            load.clone(),
            target.clone(),
            Arc::clone(live),
            Arc::clone(histograms),
        );
        parties.spawn(async move {
            if let Err(err) = run_party(&load, seed, p, &target, &live, &histograms).await {
                live.error(format!("party {p}: {err:#}"));
            }
        });
    }
    while parties.join_next().await.is_some() {}
    Ok(())
}

/// What one member did, for the party's fan-out and sync figures.
struct MemberLog {
    events: Vec<sync::Event>,
    times: Vec<Instant>,
    clock: ClockSync,
    /// (seq, sent) of the commands (host) and chats this member sent.
    commands: Vec<(u64, Instant)>,
    chats: Vec<(u64, Instant)>,
    refused: u64,
}

/// Party number `p` of the run (its members' token identities name it).
async fn run_party(
    load: &PartyLoad,
    seed: u64,
    p: u64,
    target: &Target,
    live: &Live,
    histograms: &SharedHistograms,
) -> Result<()> {
    let seed = seed ^ p;
    let ws_url = &format!("ws://{}/ws", target.server);
    let token = target
        .tokens
        .mint(ClientRole::PartyCreator, &format!("party {p} host"));
    let host = PartyClient::join_authorized(ws_url, None, "party host", token.as_deref())
        .await
        .context("creating a party")?;
    let code = host.party.clone();
    let mut members = vec![host];
    for m in 1..load.members {
        let token = target
            .tokens
            .mint(ClientRole::PartyMember, &format!("party {p} member {m}"));
        let name = format!("member {m}");
        match PartyClient::join_authorized(ws_url, Some(&code), &name, token.as_deref()).await {
            Ok(member) => members.push(member),
            Err(err) => {
                lock(&live.counts).members_failed += 1;
                live.error(format!("party member join: {err:#}"));
            }
        }
    }
    lock(&live.counts).members_joined += members.len() as u64;
    live.active
        .fetch_add(members.len() as u64, Ordering::Relaxed);
    let end = tokio_now() + Duration::from_secs_f64(load.duration_s);
    let finish = Arc::new(PartyFinish {
        members: members.len() as u64,
        ..PartyFinish::default()
    });
    let mut tasks = JoinSet::new();
    for (i, member) in members.into_iter().enumerate() {
        let load = load.clone();
        tasks.spawn(member_loop(
            member,
            i == 0,
            load,
            seed.wrapping_add(i as u64),
            end,
            Arc::clone(&finish),
        ));
    }
    let mut logs = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(log)) => logs.push(log),
            Ok(Err(err)) => {
                live.error(format!("party member: {err:#}"));
                lock(&live.counts).members_failed += 1;
            }
            Err(err) => live.error(format!("party member task: {err}")),
        }
    }
    live.active.fetch_sub(logs.len() as u64, Ordering::Relaxed);
    account_party(&logs, live, histograms);
    Ok(())
}

/// How a party's members end together: once every member has stopped sending, each reads
/// on until it holds the highest sequence number any member's chat or command was
/// acknowledged with, so the fan-out counts compare complete logs (a fixed wait after the
/// end is too short on a loaded machine).
#[derive(Default)]
struct PartyFinish {
    members: u64,
    stopped: AtomicU64,
    highest_ack: AtomicU64,
}

/// Counts its member as stopped when dropped: at the end of sending, or on an early error.
struct Stopped(Arc<PartyFinish>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.stopped.fetch_add(1, Ordering::AcqRel);
    }
}

/// The longest a member reads on after the end for the others' last events.
const PARTY_DRAIN_LIMIT: Duration = Duration::from_secs(10);

async fn member_loop(
    mut client: PartyClient,
    is_host: bool,
    load: PartyLoad,
    seed: u64,
    end: tokio::time::Instant,
    finish: Arc<PartyFinish>,
) -> Result<MemberLog> {
    use rand::{Rng, SeedableRng};
    let stopped = Stopped(Arc::clone(&finish));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut log = MemberLog {
        events: Vec::new(),
        times: Vec::new(),
        clock: ClockSync::new(),
        commands: Vec::new(),
        chats: Vec::new(),
        refused: 0,
    };
    let t0 = tokio_now();
    let exp = |rng: &mut rand_chacha::ChaCha8Rng, rate: f64| {
        Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() / rate)
    };
    let mut next_probe = t0;
    let mut probes = 0;
    let mut next_chat = if load.chat_per_member_per_s > 0.0 {
        t0 + exp(&mut rng, load.chat_per_member_per_s)
    } else {
        end
    };
    let mut next_command = t0 + Duration::from_secs_f64(load.command_every_s.min(1.0));
    let mut step = 0u32;
    if is_host {
        // Something to play: every member then holds a timeline.
        let load_cmd = PlaybackCommand::Load {
            url: "/media/sample.webm".to_owned(),
        };
        client
            .playback(load_cmd, None)
            .await
            .context("loading media")?;
    }
    while tokio_now() < end {
        let next = next_probe
            .min(next_chat)
            .min(if is_host { next_command } else { end })
            .min(end);
        client.pump_until_instant(next).await?;
        let now_t = tokio_now();
        if now_t >= next_probe {
            // A join burst like the web client's, then one probe every 2 s.
            client.send(&ClientMessage::Party(PartyMessage::TimeProbe {
                t0: unix_ms_f64(),
            }))?;
            probes += 1;
            next_probe = now_t
                + if probes < sync::JOIN_BURST {
                    Duration::from_millis(50)
                } else {
                    Duration::from_secs(2)
                };
        }
        if now_t >= next_chat {
            let sent = now();
            match client
                .chat_patiently(&format!("hello {}", rng.random::<u32>()))
                .await
            {
                Ok(seq) => {
                    finish.highest_ack.fetch_max(seq, Ordering::AcqRel);
                    log.chats.push((seq, sent));
                }
                Err(_) => log.refused += 1,
            }
            next_chat = tokio_now() + exp(&mut rng, load.chat_per_member_per_s);
            if rng.random_bool(0.5) {
                let op = client.op();
                client.send(&ClientMessage::Party(PartyMessage::React {
                    op_id: op,
                    emoji: "👏".to_owned(),
                }))?;
            }
        }
        if is_host && now_t >= next_command {
            let command = match step % 4 {
                0 => PlaybackCommand::Play,
                1 => PlaybackCommand::Seek {
                    position_ms: f64::from(rng.random_range(0..30_000u32)),
                },
                2 => PlaybackCommand::Pause,
                _ => PlaybackCommand::Play,
            };
            step += 1;
            let base = Some(client.version());
            let sent = now();
            match client.playback(command, base).await {
                Ok(seq) => {
                    finish.highest_ack.fetch_max(seq, Ordering::AcqRel);
                    log.commands.push((seq, sent));
                }
                Err(_) => log.refused += 1,
            }
            next_command = tokio_now() + Duration::from_secs_f64(load.command_every_s);
        }
    }
    // Let the last events reach everyone.
    drop(stopped);
    let drain_until = tokio_now() + PARTY_DRAIN_LIMIT;
    loop {
        let all_stopped = finish.stopped.load(Ordering::Acquire) >= finish.members;
        let complete = client.last_seq() >= finish.highest_ack.load(Ordering::Acquire);
        let now_t = tokio_now();
        if (all_stopped && complete) || now_t >= drain_until {
            break;
        }
        client
            .pump_until_instant(now_t + Duration::from_millis(50))
            .await?;
    }
    for (t0, t1, t2, at) in &client.time_replies {
        let t3 = unix_ms_f64() - now().saturating_duration_since(*at).as_secs_f64() * 1000.0;
        log.clock.add(ProbeSample {
            t0: *t0,
            t1: *t1,
            t2: *t2,
            t3,
        });
    }
    log.events = std::mem::take(&mut client.events);
    log.times = std::mem::take(&mut client.event_times);
    client.close().await;
    Ok(log)
}

/// Fan-out: for each chat and command, send → the last member's receipt. Sync: for each
/// state event, the spread of the positions the members compute for one instant with their
/// own clock estimates.
fn account_party(logs: &[MemberLog], live: &Live, histograms: &SharedHistograms) {
    let receipts: Vec<std::collections::HashMap<u64, Instant>> = logs
        .iter()
        .map(|l| {
            l.events
                .iter()
                .map(|e| e.seq)
                .zip(l.times.iter().copied())
                .collect()
        })
        .collect();
    let received_by_all = |seq: u64| -> Option<Instant> {
        receipts
            .iter()
            .map(|r| r.get(&seq).copied())
            .try_fold(None::<Instant>, |latest, t| {
                t.map(|t| Some(latest.map_or(t, |l| l.max(t))))
            })
            .flatten()
    };
    let mut c = lock(&live.counts);
    let mut h = lock(histograms);
    for log in logs {
        c.commands_refused += log.refused;
        for (seq, sent) in &log.chats {
            c.chats_sent += 1;
            if let Some(last) = received_by_all(*seq) {
                h.record_duration(Metric::ChatFanout, last.saturating_duration_since(*sent));
            }
        }
        for (seq, sent) in &log.commands {
            c.commands_sent += 1;
            if let Some(last) = received_by_all(*seq) {
                c.commands_applied += 1;
                h.record_duration(Metric::ControlFanout, last.saturating_duration_since(*sent));
            }
        }
    }
    c.chats_delivered += logs
        .iter()
        .map(|l| {
            l.events
                .iter()
                .filter(|e| matches!(e.event.body, EventBody::Chat { .. }))
                .count() as u64
        })
        .sum::<u64>();
    // Sync error: every state event of a playing timeline, evaluated 1 s after its anchor.
    let Some(first) = logs.first() else { return };
    for event in &first.events {
        let EventBody::State { state, .. } = &event.event.body else {
            continue;
        };
        if state.timeline.paused {
            continue;
        }
        let at_local = state.timeline.anchor.0 as f64 + 1000.0;
        let positions: Vec<f64> = logs
            .iter()
            .filter_map(|l| {
                let offset = l.clock.offset()?;
                let server_ms = at_local + offset;
                Some(
                    state
                        .timeline
                        .position_at(UnixMillis(server_ms.round() as i64)),
                )
            })
            .collect();
        if positions.len() >= 2 {
            let max = positions.iter().cloned().fold(f64::MIN, f64::max);
            let min = positions.iter().cloned().fold(f64::MAX, f64::min);
            h.record(Metric::SyncError, max - min);
        }
    }
}

/// Samples once a second until `stop`: server and generator `/proc`, viewers' packets, and
/// the progress line. Returns the series.
async fn sample(
    lag_meter: Arc<Mutex<LagMeter>>,
    server_pid: Option<u32>,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
    show_progress: bool,
    started: Instant,
) -> Samples {
    let mut progress = Progress::new(show_progress);
    let mut out = Samples::default();
    let mut last_self = probe::sample_self().ok();
    let mut last_server = server_pid.and_then(|p| probe::sample(p).ok());
    out.server_first = last_server;
    let mut last_packets = 0;
    let mut last_at = now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let at = now();
        let elapsed = at.saturating_duration_since(last_at);
        last_at = at;
        let packets = live.packets() + live.counts_packets();
        let pps = packets.saturating_sub(last_packets) as f64 / elapsed.as_secs_f64().max(1e-3);
        last_packets = packets;
        let me = probe::sample_self().ok();
        let generator_cpu = match (&last_self, &me) {
            (Some(a), Some(b)) => probe::cpu_pct(a, b, elapsed),
            _ => 0.0,
        };
        last_self = me;
        let server = server_pid.and_then(|p| probe::sample(p).ok());
        let server_cpu = match (&last_server, &server) {
            (Some(a), Some(b)) => Some(probe::cpu_pct(a, b, elapsed)),
            _ => None,
        };
        if server.is_some() {
            last_server = server;
            out.server_last = server;
        }
        let point = SeriesPoint {
            t_s: at.saturating_duration_since(started).as_secs_f64(),
            joined: live.joined.load(Ordering::Relaxed),
            failed: live.failed.load(Ordering::Relaxed),
            active: live.active.load(Ordering::Relaxed),
            packets_per_s: pps,
            server_cpu_pct: server_cpu,
            server_rss_mb: server.map(|s| s.rss_bytes as f64 / 1048576.0),
            generator_cpu_pct: generator_cpu,
            sched_lag_ms: lock(&lag_meter).take_max().as_secs_f64() * 1000.0,
        };
        progress.update(&Snapshot {
            elapsed: at.saturating_duration_since(started),
            planned: live.planned.load(Ordering::Relaxed),
            joined: point.joined,
            failed: point.failed,
            active: point.active,
            packets_per_s: pps,
            phase: "run",
        });
        out.series.push(point);
        if stopping {
            break;
        }
    }
    progress.finish();
    out.self_last = last_self;
    out
}

impl Live {
    /// Packets of viewers that already finished (their taps are gone).
    fn counts_packets(&self) -> u64 {
        lock(&self.counts).packets_received
    }
}

#[derive(Default)]
struct Samples {
    series: Vec<SeriesPoint>,
    server_first: Option<ProcSample>,
    server_last: Option<ProcSample>,
    self_last: Option<ProcSample>,
}

/// The generator's 10 ms ticker: how late each tick ran is the scheduling lag.
async fn measure_lag(
    mut stop: watch::Receiver<bool>,
    histograms: SharedHistograms,
    meter: Arc<Mutex<LagMeter>>,
) {
    let period = LAG_TICK;
    let mut due = tokio_now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let ran = tokio_now();
        lock(&meter).handle_tick(due.into_std(), ran.into_std());
        lock(&histograms).record_duration(Metric::SchedLag, ran.saturating_duration_since(due));
        due += period;
        if due < ran {
            due = ran + period;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_report(
    scenario: &Scenario,
    server: SocketAddr,
    started_unix_ms: u64,
    duration: Duration,
    counts: Counts,
    histograms: &Histograms,
    samples: Samples,
    errors: Vec<String>,
    churn_growth_kb: Option<f64>,
) -> Report {
    let cores = probe::cpu_cores();
    let secs = duration.as_secs_f64().max(1e-3);
    let series = samples.series;
    let gen_avg =
        series.iter().map(|p| p.generator_cpu_pct).sum::<f64>() / series.len().max(1) as f64;
    let gen_max = series
        .iter()
        .map(|p| p.generator_cpu_pct)
        .fold(0.0, f64::max);
    let lag = histograms.summary(Metric::SchedLag);
    let self_cpu = samples.self_last.map(|s| s.cpu.as_secs_f64());
    let generator = GeneratorUsage {
        cores,
        cpu_pct_avg: gen_avg,
        cpu_pct_max: gen_max,
        sched_lag_p99_ms: lag.map_or(0.0, |l| l.p99),
        sched_lag_max_ms: lag.map_or(0.0, |l| l.max),
        packets_per_cpu_second: self_cpu
            .filter(|c| *c > 0.0 && counts.packets_received > 0)
            .map(|c| counts.packets_received as f64 / c),
    };
    let server_usage = match (
        samples.server_first,
        samples.server_last,
        scenario.server_pid,
    ) {
        (Some(first), Some(last), Some(pid)) => {
            let cpu: Vec<f64> = series.iter().filter_map(|p| p.server_cpu_pct).collect();
            let rss: Vec<f64> = series.iter().filter_map(|p| p.server_rss_mb).collect();
            let cpu_s = last.cpu.saturating_sub(first.cpu).as_secs_f64();
            let peak = rss
                .iter()
                .cloned()
                .fold(first.rss_bytes as f64 / 1048576.0, f64::max);
            let start_mb = first.rss_bytes as f64 / 1048576.0;
            Some(ServerUsage {
                pid,
                cpu_pct_avg: 100.0 * cpu_s / secs,
                cpu_pct_max: cpu.iter().cloned().fold(0.0, f64::max),
                rss_start_mb: start_mb,
                rss_peak_mb: peak,
                rss_end_mb: last.rss_bytes as f64 / 1048576.0,
                cpu_us_per_forwarded_packet: (counts.packets_received > 0)
                    .then(|| cpu_s * 1e6 / counts.packets_received as f64),
                rss_kb_per_viewer: (counts.viewers_joined + counts.signaling_joined > 0).then(
                    || {
                        (peak - start_mb) * 1024.0
                            / (counts.viewers_joined + counts.signaling_joined) as f64
                    },
                ),
                rss_growth_kb_per_1000_cycles: churn_growth_kb,
            })
        }
        _ => None,
    };
    let mut invalid = Vec::new();
    if let Some(l) = lag
        && l.p99 > LAG_LIMIT.as_secs_f64() * 1000.0
    {
        invalid.push(format!(
            "the generator's scheduling lag p99 was {:.0} ms (limit {} ms): it could not keep up",
            l.p99,
            LAG_LIMIT.as_millis()
        ));
    }
    let limit = CPU_LIMIT_PCT_OF_CORES * cores as f64;
    let saturated_seconds = series
        .iter()
        .filter(|p| p.generator_cpu_pct >= limit)
        .count();
    if saturated_seconds >= 2 {
        invalid.push(format!(
            "the generator used ≥ {CPU_LIMIT_PCT_OF_CORES:.0} % of its {cores} cores for {saturated_seconds} s"
        ));
    }
    let mut report = Report {
        scenario: scenario.describe(),
        kind: scenario.kind(),
        server: server.to_string(),
        seed: scenario.seed,
        started_unix_ms,
        duration_s: secs,
        verdict: Verdict::Pass,
        invalid,
        errors,
        counts,
        metrics: MetricReport::all(histograms),
        series,
        server_usage,
        generator,
        slos: Vec::new(),
    };
    report.slos = crate::slo::evaluate(&report, &scenario.slo);
    report.verdict = verdict(&report);
    report
}

/// ERROR when nothing could be measured (every join failed, or a part could not start);
/// then INVALID; then FAIL on a breached SLO.
pub fn verdict(report: &Report) -> Verdict {
    let c = &report.counts;
    let planned = c.viewers_planned + c.signaling_planned;
    let succeeded = c.viewers_with_media + c.signaling_joined + c.members_joined;
    let nothing_worked = succeeded == 0 && (planned > 0 || c.parties > 0);
    if nothing_worked || (succeeded == 0 && !report.errors.is_empty()) {
        return Verdict::Error;
    }
    if !report.invalid.is_empty() {
        return Verdict::Invalid;
    }
    if report.slos.iter().any(|s| !s.pass) {
        return Verdict::Fail;
    }
    Verdict::Pass
}

fn sync_unix_ms() -> UnixMillis {
    UnixMillis(unix_ms_f64() as i64)
}

/// Unix time in milliseconds: the wall clock, read at this one marked place (GUIDE §2.2).
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tokio's clock, for the generator's own pacing (`sleep_until`, deadlines): it is a driver,
/// and this is its one marked read of that clock.
#[allow(clippy::disallowed_methods)]
fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
