//! # Sync-accuracy benchmark
//!
//! A deterministic, seeded discrete-event **simulation** of the watch-party sync pipeline
//! (not a wall-clock timing): simulated devices on jittered, asymmetric 20–200 ms round
//! trips synchronize their clocks with the crate's real [`ClockSync`], receive [`Timeline`]s
//! scheduled ahead like `Party::lead_ms` schedules them, start at the anchor converted to their
//! own clock, and steer their players with the drift controller of `web-demo/js/drift.js`
//! (its Rust twin [`sync::drift`], which golden vectors keep identical to it).
//! It reports the p50/p95/p99/max **inter-device error**: at an instant, the largest minus
//! the smallest true media position among a party's devices. Target: steady-state p99 ≤ 40 ms.
//!
//! Run: `cargo bench -p sync --bench sync_accuracy` (optionally `SYNC_BENCH_SEED=<u64 or 0x…>`).
//! The same seed gives the same output, bit for bit.
//!
//! ## Model (every assumption the numbers rest on)
//!
//! Time is true time `t` in f64 milliseconds from the start of a party's session. The server
//! clock *is* true time (plus a Unix epoch); only devices have clock error.
//!
//! - **Parties.** [`PARTIES`] parties of 2–8 devices (uniform), each simulated for
//!   [`SESSION_MS`]. Devices join at a uniform time in the first second; the party already
//!   has media loaded, paused at 0. No device leaves or joins later.
//! - **Device clock.** A monotonic local clock (like `performance.now()`): a random start
//!   within 6 hours (so the server-minus-local offset is ~1.75e12 ms and differs by hours
//!   between devices) and a constant rate error uniform in ±50 ppm. All device timers (probe
//!   spacing, the 250 ms controller) run on this clock.
//! - **Network.** Per device a base RTT uniform in 20–200 ms, split into uplink and downlink
//!   with an uplink share uniform in 0.35–0.65 (so the path is asymmetric by up to 30 % of
//!   the RTT, which NTP cannot observe). Every packet, in each direction, adds exponential
//!   jitter with mean 10–25 % (per device) of that direction's base, and with probability 2 %
//!   a spike of 50–300 ms (Wi-Fi retransmission, a queue). Nothing is lost or reordered
//!   in a way that matters (a WebSocket is TCP: loss shows up as delay). The share range
//!   sets the clock term of the result: even a jitter-free probe is off by (uplink −
//!   downlink) / 2 = RTT × (share − ½), up to ±30 ms here, and that term scales with the range.
//! - **Clock sync, as the client does it.** On join a burst of [`JOIN_BURST`] probes 50 ms
//!   apart, then one every 3 s. The server stamps `t1` on arrival and `t2` after 0.1–1 ms of
//!   processing (f64 ms, as `signaling` does). The device feeds each [`ProbeSample`] to its
//!   estimator on arrival. The RTT the server schedules with is the estimator's `rtt()`,
//!   assumed known to the server when a command is issued (presence reports carry it).
//! - **Commands.** A first command 3–5 s in is *play*; then one every 5–20 s: from pause,
//!   play (75 %) or seek (25 %); while playing, pause (40 %) or seek (60 %) to a uniform
//!   position in an hour of media. The server builds the new timeline with the crate's
//!   `Timeline::{play, pause, seek}` at `wall + lead`, where `lead` is computed like
//!   `Party::lead_ms` (slowest member RTT, clamped to `PartyConfig`'s 150–1000 ms), and
//!   fans it out after 0.5–5 ms (store commit) over each device's jittered downlink.
//! - **Applying a change** (the rules `drift.js::continuesPlayback` describes). A change that
//!   continues playback (pause while playing) is applied at the anchor, the player following
//!   the current timeline until then. Any other (play from pause, seek) pauses the player at
//!   once, seeks it to the new position during the lead (unless already within 1 ms) and
//!   plays at the anchor. The anchor is converted to the local clock with the offset
//!   estimate at receipt. A message that arrives after its anchor is applied at once, so the
//!   device starts late and catches up through the drift controller, as does a device whose
//!   seek has not completed by the anchor. A paused device more than 1 ms off the paused
//!   position seeks to it (invisible while paused). The second row instead uses the start
//!   rule of `web-demo/js/synced-video.js` (see [`StartRule::SeekAhead`]). `play()` takes
//!   effect at once: the player start latency that `synced-video.js` measures and starts
//!   ahead of is not modelled.
//! - **Player.** While playing and not seeking, the media position advances at
//!   `playbackRate × (device clock rate)`: the media clock shares the device's crystal. A seek
//!   freezes the position at its target for the real seek latency: per device a base uniform
//!   in 30–120 ms, per seek ±25 % uniform noise. The device measures each seek on its own
//!   clock and keeps an EWMA (α 0.3, prior 50 ms), as `drift.js` does.
//! - **Drift controller** (`drift.js`, as [`sync::drift`]), every 250 ms local while the
//!   timeline plays: error = actual position − `Timeline::position_at(estimated server now)`;
//!   |error| ≤ 40 ms: the timeline's rate (dead band; once correcting, until ≤ 8 ms); up to
//!   1.5 s: rate nudged by −error × 0.05 %/ms, capped at ±5 %; beyond: seek to expected +
//!   estimated seek latency × rate.
//! - **Measurement.** Every 100 ms of true time, once every device of the party has completed
//!   its join burst. *All samples* is every such instant except two kinds, both counted: the
//!   lead window of a seek (between the command and its anchor devices deliberately show
//!   different frames: some already hold the new position, others still play the old one;
//!   that is a scheduled hand-over, not a sync error) and a pause older than 1 s (every device
//!   holds the same frame by construction, which would only dilute the percentiles).
//!   Transitions are *in*: late starts, unfinished seeks and catch-up after every anchor.
//!   *Steady state* is the timeline playing and at least 1 s past its anchor. Each second the
//!   per-device clock error |estimated − true server time| is also sampled, and at each
//!   steady sample the party's *clock spread* (max − min of the devices' clock errors): the
//!   inter-device error that the clocks alone would cause with perfect players.
//!
//! ## Scenarios
//!
//! The first row is Marquee as the brief describes the client; the second is the same with
//! the late-start rule of `synced-video.js`. The others change one thing each from the first
//! so a reader sees what each part buys or costs: a naive clock (mean offset of the window instead of the lowest-delay
//! sample), no drift correction (scheduled starts only), and two diagnostics that remove
//! an error source the real system cannot remove: an oracle clock (perfect offset, real lead)
//! and symmetric paths (uplink share 0.5, jitter still asymmetric per packet). Two what-if
//! rows try an algorithm change that is *not* implemented: a lead that covers each device's
//! round trip plus its seek latency (devices would report it with their RTT), alone and with
//! an oracle clock (what the player side still costs then). The same seed gives
//! every scenario the same parties, devices, paths and command times.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync::drift::{
    self, CONTROL_INTERVAL_MS, DEAD_BAND_MS, Ewma, MAX_NUDGE, SEEK_LATENCY_ALPHA,
    SEEK_LATENCY_PRIOR_MS, SEEK_THRESHOLD_MS, SETTLE_MS, continues_playback, position_at,
};
use sync::{ClockSync, JOIN_BURST, PartyConfig, ProbeSample, Timeline, UnixMillis, WINDOW};

// ----- Simulation size -----------------------------------------------------------------------

const DEFAULT_SEED: u64 = 20_260_401;
const PARTIES: usize = 500;
const DEVICES_PER_PARTY: (usize, usize) = (2, 8);
const SESSION_MS: f64 = 120_000.0;
/// Server wall clock at `t = 0` (an integer, so anchors convert exactly).
const EPOCH_MS: f64 = 1_750_000_000_000.0;
const JOIN_WINDOW_MS: (f64, f64) = (0.0, 1_000.0);

// ----- Network -------------------------------------------------------------------------------

const RTT_MS: (f64, f64) = (20.0, 200.0);
const UPLINK_SHARE: (f64, f64) = (0.35, 0.65);
const JITTER_FRACTION: (f64, f64) = (0.10, 0.25);
const SPIKE_PROBABILITY: f64 = 0.02;
const SPIKE_MS: (f64, f64) = (50.0, 300.0);
const SERVER_PROCESSING_MS: (f64, f64) = (0.1, 1.0);
const FANOUT_MS: (f64, f64) = (0.5, 5.0);

// ----- Device clocks and the client's probing (web-demo/js/clock.js) --------------------------

const CLOCK_START_MS: (f64, f64) = (0.0, 6.0 * 3_600_000.0);
const DRIFT_PPM: f64 = 50.0;
const BURST_SPACING_MS: f64 = 50.0;
const PROBE_INTERVAL_MS: f64 = 3_000.0;

// ----- Player ----------------------------------------------------------------------------------

const SEEK_LATENCY_MS: (f64, f64) = (30.0, 120.0);
const SEEK_NOISE: f64 = 0.25;
const MEDIA_LENGTH_MS: f64 = 3_600_000.0;

// ----- Player control (web-demo/js/synced-video.js; the drift controller is sync::drift) -----

/// A paused player off by more than this seeks (`synced-video.js` `PAUSED_TOLERANCE_MS`).
const PAUSED_TOLERANCE_MS: f64 = 1.0;
/// `synced-video.js` start rule: a paused player waits at most this long for the timeline...
const MAX_HOLD_MS: f64 = 2_000.0;
/// ...and, when it must seek to start, aims at least this far ahead of the timeline.
const MIN_SEEK_AHEAD_MS: f64 = 150.0;

// ----- Commands --------------------------------------------------------------------------------

const FIRST_COMMAND_MS: (f64, f64) = (3_000.0, 5_000.0);
const COMMAND_GAP_MS: (f64, f64) = (5_000.0, 20_000.0);
const PLAY_FROM_PAUSE: f64 = 0.75;
const PAUSE_WHILE_PLAYING: f64 = 0.40;

// ----- Measurement ---------------------------------------------------------------------------

const SAMPLE_MS: f64 = 100.0;
const STEADY_AFTER_MS: f64 = 1_000.0;
/// Clock errors are sampled every this many inter-device samples (once a second).
const OFFSET_SAMPLE_EVERY: u64 = 10;
const TARGET_P99_MS: f64 = 40.0;

// ----- Scenarios -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClockKind {
    /// `sync::ClockSync`: the offset of the lowest-delay sample in the window.
    MinDelay,
    /// The mean offset (and mean delay) of the same window: what the filter buys.
    Mean,
    /// The true offset; the lead still comes from `ClockSync`'s RTT.
    Oracle,
}

/// What a device does when it reaches a start (play from pause, seek) late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StartRule {
    /// Play as soon as it can and let the drift controller catch up (the brief's model).
    CatchUp,
    /// `web-demo/js/synced-video.js` `#start`: late by up to the dead band, play and let the
    /// controller finish; later than that, seek ahead of the timeline (2 × seek latency, at
    /// least 150 ms) and wait, paused, for the timeline to arrive there.
    SeekAhead,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    clock: ClockKind,
    start: StartRule,
    drift_correction: bool,
    symmetric: bool,
    /// What-if: the lead covers each device's round trip *plus* its seek latency.
    lead_covers_seek: bool,
}

const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "marquee: min-delay clock + drift ctl",
        clock: ClockKind::MinDelay,
        start: StartRule::CatchUp,
        drift_correction: true,
        symmetric: false,
        lead_covers_seek: false,
    },
    Scenario {
        name: "marquee + synced-video.js start rule",
        clock: ClockKind::MinDelay,
        start: StartRule::SeekAhead,
        drift_correction: true,
        symmetric: false,
        lead_covers_seek: false,
    },
    Scenario {
        name: "naive clock (window mean)",
        clock: ClockKind::Mean,
        start: StartRule::CatchUp,
        drift_correction: true,
        symmetric: false,
        lead_covers_seek: false,
    },
    Scenario {
        name: "no drift correction",
        clock: ClockKind::MinDelay,
        start: StartRule::CatchUp,
        drift_correction: false,
        symmetric: false,
        lead_covers_seek: false,
    },
    Scenario {
        name: "diag: oracle clock",
        clock: ClockKind::Oracle,
        start: StartRule::CatchUp,
        drift_correction: true,
        symmetric: false,
        lead_covers_seek: false,
    },
    Scenario {
        name: "diag: symmetric base paths",
        clock: ClockKind::MinDelay,
        start: StartRule::CatchUp,
        drift_correction: true,
        symmetric: true,
        lead_covers_seek: false,
    },
    Scenario {
        name: "what-if: lead covers seek latency",
        clock: ClockKind::MinDelay,
        start: StartRule::CatchUp,
        drift_correction: true,
        symmetric: false,
        lead_covers_seek: true,
    },
    Scenario {
        name: "what-if: that + oracle clock",
        clock: ClockKind::Oracle,
        start: StartRule::CatchUp,
        drift_correction: true,
        symmetric: false,
        lead_covers_seek: true,
    },
];

// ----- Randomness ----------------------------------------------------------------------------

/// Independent random streams of one party. Separate streams keep the world (devices, paths,
/// command times) identical across scenarios even where behaviour differs.
#[derive(Clone, Copy)]
enum Stream {
    World = 1,
    Network = 2,
    Player = 3,
    Commands = 4,
}

/// SplitMix64 finalizer: decorrelates (seed, party, stream) into a seed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn stream(seed: u64, party: usize, which: Stream) -> StdRng {
    StdRng::seed_from_u64(mix(mix(seed) ^ mix((party as u64) << 8 | which as u64)))
}

fn uniform(rng: &mut StdRng, (lo, hi): (f64, f64)) -> f64 {
    rng.random_range(lo..hi)
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    // 1 − U is in (0, 1], so the logarithm is finite.
    -mean * (1.0 - rng.random::<f64>()).ln()
}

// ----- Device clock and network path ---------------------------------------------------------

/// A device's monotonic clock: reads `start + t × rate` at true time `t`.
struct LocalClock {
    start: f64,
    rate: f64,
}

impl LocalClock {
    fn draw(rng: &mut StdRng) -> Self {
        let ppm = uniform(rng, (-DRIFT_PPM, DRIFT_PPM));
        Self {
            start: uniform(rng, CLOCK_START_MS),
            rate: 1.0 + ppm * 1e-6,
        }
    }

    fn read(&self, t: f64) -> f64 {
        self.start + t * self.rate
    }

    /// The true time at which this clock reads `local`.
    fn true_time(&self, local: f64) -> f64 {
        (local - self.start) / self.rate
    }

    /// True duration of a timer set for `local_ms` on this clock.
    fn span(&self, local_ms: f64) -> f64 {
        local_ms / self.rate
    }

    /// The exact server-minus-local offset at `t`: what the estimators try to find.
    fn true_offset(&self, t: f64) -> f64 {
        EPOCH_MS + t - self.read(t)
    }
}

/// One device's path to the server: fixed base one-way delays plus per-packet jitter.
struct Path {
    up: f64,
    down: f64,
    up_jitter: f64,
    down_jitter: f64,
}

impl Path {
    fn draw(rng: &mut StdRng, symmetric: bool) -> Self {
        let rtt = uniform(rng, RTT_MS);
        let drawn_share = uniform(rng, UPLINK_SHARE);
        // Draw the share either way, so that both variants see the same world.
        let share = if symmetric { 0.5 } else { drawn_share };
        let jitter = uniform(rng, JITTER_FRACTION);
        Self {
            up: rtt * share,
            down: rtt * (1.0 - share),
            up_jitter: rtt * share * jitter,
            down_jitter: rtt * (1.0 - share) * jitter,
        }
    }

    fn uplink(&self, rng: &mut StdRng) -> f64 {
        one_way(rng, self.up, self.up_jitter)
    }

    fn downlink(&self, rng: &mut StdRng) -> f64 {
        one_way(rng, self.down, self.down_jitter)
    }
}

/// One packet's delay: the base, exponential queueing, occasionally a spike.
fn one_way(rng: &mut StdRng, base: f64, jitter_mean: f64) -> f64 {
    let mut delay = base + exponential(rng, jitter_mean);
    if rng.random_bool(SPIKE_PROBABILITY) {
        delay += uniform(rng, SPIKE_MS);
    }
    delay
}

// ----- Clock estimators ------------------------------------------------------------------------

/// The naive alternative: the mean of the window's offsets and delays.
#[derive(Default)]
struct MeanClock {
    samples: VecDeque<ProbeSample>,
}

impl MeanClock {
    fn add(&mut self, sample: ProbeSample) {
        if self.samples.len() == WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    fn mean(&self, f: fn(&ProbeSample) -> f64) -> Option<f64> {
        let n = self.samples.len();
        (n > 0).then(|| self.samples.iter().map(f).sum::<f64>() / n as f64)
    }
}

enum Estimator {
    MinDelay(ClockSync),
    Mean(MeanClock),
    /// Knows the true offset; keeps a `ClockSync` for the RTT the server schedules with.
    Oracle(ClockSync),
}

impl Estimator {
    fn new(kind: ClockKind) -> Self {
        match kind {
            ClockKind::MinDelay => Self::MinDelay(ClockSync::new()),
            ClockKind::Mean => Self::Mean(MeanClock::default()),
            ClockKind::Oracle => Self::Oracle(ClockSync::new()),
        }
    }

    fn add(&mut self, sample: ProbeSample) {
        match self {
            Self::MinDelay(c) | Self::Oracle(c) => c.add(sample),
            Self::Mean(c) => c.add(sample),
        }
    }

    /// Estimated server-minus-local offset. `truth` is read by the oracle only.
    fn offset(&self, truth: f64) -> Option<f64> {
        match self {
            Self::MinDelay(c) => c.offset(),
            Self::Mean(c) => c.mean(ProbeSample::offset),
            Self::Oracle(c) => (!c.is_empty()).then_some(truth),
        }
    }

    /// The round trip the device reports and the server schedules with.
    fn rtt(&self) -> Option<f64> {
        match self {
            Self::MinDelay(c) | Self::Oracle(c) => c.rtt(),
            Self::Mean(c) => c.mean(ProbeSample::delay),
        }
    }
}

// ----- Player ----------------------------------------------------------------------------------

struct Seek {
    id: u64,
    target: f64,
    started_local: f64,
}

/// A media element: position `pos` at true time `since`, advancing while playing and not
/// seeking at `rate × clock_rate` media ms per true ms.
struct Player {
    pos: f64,
    since: f64,
    playing: bool,
    rate: f64,
    clock_rate: f64,
    seek: Option<Seek>,
    seeks_started: u64,
}

impl Player {
    fn new(clock_rate: f64) -> Self {
        Self {
            pos: 0.0,
            since: 0.0,
            playing: false,
            rate: 1.0,
            clock_rate,
            seek: None,
            seeks_started: 0,
        }
    }

    fn running(&self) -> bool {
        self.playing && self.seek.is_none()
    }

    /// The true media position at `t` (the seek target while seeking: the frame is frozen).
    fn position(&self, t: f64) -> f64 {
        if self.running() {
            self.pos + (t - self.since) * self.rate * self.clock_rate
        } else {
            self.pos
        }
    }

    /// Folds the elapsed playback into `pos`, before any change of speed.
    fn settle(&mut self, t: f64) {
        self.pos = self.position(t);
        self.since = t;
    }

    fn set_playing(&mut self, t: f64, playing: bool) {
        self.settle(t);
        self.playing = playing;
    }

    fn set_rate(&mut self, t: f64, rate: f64) {
        self.settle(t);
        self.rate = rate;
    }

    /// Starts a seek (superseding one in progress) and returns its id.
    fn start_seek(&mut self, t: f64, local: f64, target: f64) -> u64 {
        self.settle(t);
        self.seeks_started += 1;
        self.pos = target;
        self.seek = Some(Seek {
            id: self.seeks_started,
            target,
            started_local: local,
        });
        self.seeks_started
    }

    /// Completes seek `id` if it is still the current one; returns its latency as the device
    /// measured it (local clock).
    fn finish_seek(&mut self, t: f64, local: f64, id: u64) -> Option<f64> {
        let seek = self.seek.take_if(|s| s.id == id)?;
        self.pos = seek.target;
        self.since = t;
        Some(local - seek.started_local)
    }
}

// ----- Devices and the server ----------------------------------------------------------------

struct Pending {
    timeline: Timeline,
    version: u64,
    continues: bool,
    arrived_late: bool,
}

struct Device {
    clock: LocalClock,
    path: Path,
    seek_base: f64,
    estimator: Estimator,
    player: Player,
    /// The timeline in effect on this device.
    current: Timeline,
    /// A change received, waiting for its anchor.
    pending: Option<Pending>,
    correcting: bool,
    /// The seek-latency estimate (`Ewma::seek_latency`).
    seek_latency: Ewma,
    /// `SeekAhead`: a start waits for a seek to complete.
    start_after_seek: bool,
    /// `SeekAhead`: identifies the latest planned start (older `StartAt`s are stale).
    start_plan: u64,
    probes_sent: usize,
    replies: usize,
}

impl Device {
    fn draw(rng: &mut StdRng, scenario: &Scenario, loaded: &Timeline) -> Self {
        let clock = LocalClock::draw(rng);
        let path = Path::draw(rng, scenario.symmetric);
        let seek_base = uniform(rng, SEEK_LATENCY_MS);
        let player = Player::new(clock.rate);
        Self {
            clock,
            path,
            seek_base,
            estimator: Estimator::new(scenario.clock),
            player,
            current: loaded.clone(),
            pending: None,
            correcting: false,
            seek_latency: Ewma::seek_latency(),
            start_after_seek: false,
            start_plan: 0,
            probes_sent: 0,
            replies: 0,
        }
    }

    /// Whether the join burst has completed.
    fn ready(&self) -> bool {
        self.replies >= JOIN_BURST
    }

    fn offset(&self, t: f64) -> Option<f64> {
        self.estimator.offset(self.clock.true_offset(t))
    }

    /// The device's estimate of the server clock at true time `t`.
    fn server_now(&self, t: f64) -> Option<f64> {
        self.offset(t).map(|o| self.clock.read(t) + o)
    }
}

/// The server's view of the party.
struct Server {
    timeline: Timeline,
    version: u64,
    commands: u64,
    /// True time of the last command and of its anchor.
    issued_t: f64,
    anchor_t: f64,
    /// Whether the last change jumps (a seek): its lead window is a deliberate hand-over.
    jump: bool,
}

// ----- Events --------------------------------------------------------------------------------

enum Action {
    Probe(usize),
    ProbeReply(usize, ProbeSample),
    Command,
    Deliver(usize, Timeline, u64),
    Anchor(usize, u64),
    SeekDone(usize, u64),
    StartAt(usize, u64),
    Tick(usize),
    Sample,
}

struct Event {
    t: f64,
    seq: u64,
    action: Action,
}

// Ordered by time, then by insertion: equal times run in a deterministic order.
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        self.t.total_cmp(&other.t).then(self.seq.cmp(&other.seq))
    }
}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Event {}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Event>>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, t: f64, action: Action) {
        self.seq += 1;
        self.heap.push(Reverse(Event {
            t,
            seq: self.seq,
            action,
        }));
    }

    fn pop(&mut self) -> Option<Event> {
        self.heap.pop().map(|Reverse(e)| e)
    }
}

// ----- Statistics ----------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    /// Inter-device error, ms.
    all: Vec<f64>,
    steady: Vec<f64>,
    /// Max − min of the devices' clock errors at steady samples.
    clock_spread: Vec<f64>,
    /// |estimated − true server time| per device, once a second.
    clock_error: Vec<f64>,
    handover_skipped: usize,
    paused_skipped: usize,
    deliveries: usize,
    late_deliveries: usize,
    starts: usize,
    late_starts: usize,
    controller_seeks: usize,
    devices: usize,
    pairs: usize,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.all.extend(other.all);
        self.steady.extend(other.steady);
        self.clock_spread.extend(other.clock_spread);
        self.clock_error.extend(other.clock_error);
        self.handover_skipped += other.handover_skipped;
        self.paused_skipped += other.paused_skipped;
        self.deliveries += other.deliveries;
        self.late_deliveries += other.late_deliveries;
        self.starts += other.starts;
        self.late_starts += other.late_starts;
        self.controller_seeks += other.controller_seeks;
        self.devices += other.devices;
        self.pairs += other.pairs;
    }
}

/// Percentiles by nearest rank (as `Party::spread`).
struct Summary {
    n: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn summarize(samples: &mut [f64]) -> Summary {
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if samples.is_empty() {
            f64::NAN
        } else {
            samples[((samples.len() - 1) as f64 * q).round() as usize]
        }
    };
    Summary {
        n: samples.len(),
        p50: pick(0.5),
        p95: pick(0.95),
        p99: pick(0.99),
        max: pick(1.0),
    }
}

/// Max − min.
fn range(values: impl Iterator<Item = f64>) -> f64 {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    hi - lo
}

// ----- One party -----------------------------------------------------------------------------

struct PartySim {
    scenario: Scenario,
    devices: Vec<Device>,
    server: Server,
    queue: Queue,
    network: StdRng,
    player_rng: StdRng,
    commands: StdRng,
    min_lead: f64,
    max_lead: f64,
    samples_taken: u64,
    stats: Stats,
}

impl PartySim {
    fn new(scenario: Scenario, seed: u64, index: usize) -> Self {
        let mut world = stream(seed, index, Stream::World);
        let start = UnixMillis(EPOCH_MS as i64);
        let loaded = Timeline::new(start).load(start, "/media/feature.webm".into());
        let count = world.random_range(DEVICES_PER_PARTY.0..=DEVICES_PER_PARTY.1);
        let devices: Vec<Device> = (0..count)
            .map(|_| Device::draw(&mut world, &scenario, &loaded))
            .collect();
        let config = PartyConfig::default();
        let mut sim = Self {
            scenario,
            server: Server {
                timeline: loaded,
                version: 0,
                commands: 0,
                issued_t: 0.0,
                anchor_t: 0.0,
                jump: false,
            },
            queue: Queue::default(),
            network: stream(seed, index, Stream::Network),
            player_rng: stream(seed, index, Stream::Player),
            commands: stream(seed, index, Stream::Commands),
            min_lead: config.min_lead.as_millis() as f64,
            max_lead: config.max_lead.as_millis() as f64,
            samples_taken: 0,
            stats: Stats {
                devices: count,
                pairs: count * (count - 1) / 2,
                ..Stats::default()
            },
            devices,
        };
        for d in 0..count {
            let join = uniform(&mut world, JOIN_WINDOW_MS);
            let tick_phase = uniform(&mut world, (0.0, CONTROL_INTERVAL_MS));
            sim.queue.push(join, Action::Probe(d));
            sim.queue.push(join + tick_phase, Action::Tick(d));
        }
        let first = uniform(&mut sim.commands, FIRST_COMMAND_MS);
        sim.queue.push(first, Action::Command);
        sim.queue.push(SAMPLE_MS, Action::Sample);
        sim
    }

    fn run(mut self) -> Stats {
        while let Some(event) = self.queue.pop() {
            if event.t > SESSION_MS {
                break;
            }
            let t = event.t;
            match event.action {
                Action::Probe(d) => self.probe(t, d),
                Action::ProbeReply(d, sample) => self.probe_reply(d, sample),
                Action::Command => self.command(t),
                Action::Deliver(d, timeline, version) => self.deliver(t, d, timeline, version),
                Action::Anchor(d, version) => self.anchor(t, d, version),
                Action::SeekDone(d, id) => self.seek_done(t, d, id),
                Action::StartAt(d, plan) => {
                    if self.devices[d].start_plan == plan {
                        self.try_start(t, d);
                    }
                }
                Action::Tick(d) => self.tick(t, d),
                Action::Sample => self.sample(t),
            }
        }
        self.stats
    }

    // --- clock sync ---

    /// A probe's whole exchange is decided when it leaves; the device sees it on arrival.
    fn probe(&mut self, t: f64, d: usize) {
        let dev = &mut self.devices[d];
        let t0 = dev.clock.read(t);
        let t1 = EPOCH_MS + t + dev.path.uplink(&mut self.network);
        let t2 = t1 + uniform(&mut self.network, SERVER_PROCESSING_MS);
        let arrival = t2 - EPOCH_MS + dev.path.downlink(&mut self.network);
        let t3 = dev.clock.read(arrival);
        self.queue.push(
            arrival,
            Action::ProbeReply(d, ProbeSample { t0, t1, t2, t3 }),
        );
        dev.probes_sent += 1;
        let gap = if dev.probes_sent < JOIN_BURST {
            BURST_SPACING_MS
        } else {
            PROBE_INTERVAL_MS
        };
        self.queue.push(t + dev.clock.span(gap), Action::Probe(d));
    }

    fn probe_reply(&mut self, d: usize, sample: ProbeSample) {
        let dev = &mut self.devices[d];
        dev.estimator.add(sample);
        dev.replies += 1;
    }

    // --- server ---

    /// `Party::lead_ms`: the slowest member's round trip, clamped to the configured range.
    /// The what-if variant adds each device's seek-latency estimate to its round trip: a
    /// seek during the lead must complete by the anchor, not just the message arrive.
    fn lead_ms(&self) -> i64 {
        let covers_seek = self.scenario.lead_covers_seek;
        let need = |d: &Device| {
            let seek = if covers_seek {
                d.seek_latency.value()
            } else {
                0.0
            };
            d.estimator.rtt().map(|rtt| rtt + seek)
        };
        let slowest = self.devices.iter().filter_map(need).fold(0.0, f64::max);
        slowest.clamp(self.min_lead, self.max_lead).round() as i64
    }

    fn command(&mut self, t: f64) {
        let wall = UnixMillis((EPOCH_MS + t).floor() as i64);
        let at = wall.plus_ms(self.lead_ms());
        // Draw everything every time, so the command stream does not depend on outcomes.
        let choice: f64 = self.commands.random();
        let target = uniform(&mut self.commands, (0.0, MEDIA_LENGTH_MS));
        let gap = uniform(&mut self.commands, COMMAND_GAP_MS);
        let current = &self.server.timeline;
        let first = self.server.commands == 0;
        let (next, jump) = if current.paused {
            if first || choice < PLAY_FROM_PAUSE {
                (current.play(at), false)
            } else {
                (current.seek(at, target), true)
            }
        } else if choice < PAUSE_WHILE_PLAYING {
            (current.pause(at), false)
        } else {
            (current.seek(at, target), true)
        };
        self.server = Server {
            timeline: next.clone(),
            version: self.server.version + 1,
            commands: self.server.commands + 1,
            issued_t: t,
            anchor_t: at.0 as f64 - EPOCH_MS,
            jump,
        };
        let fanout = t + uniform(&mut self.network, FANOUT_MS);
        for d in 0..self.devices.len() {
            let arrival = fanout + self.devices[d].path.downlink(&mut self.network);
            self.queue.push(
                arrival,
                Action::Deliver(d, next.clone(), self.server.version),
            );
        }
        self.queue.push(t + gap, Action::Command);
    }

    // --- device: applying changes ---

    fn deliver(&mut self, t: f64, d: usize, timeline: Timeline, version: u64) {
        let arrived_late = EPOCH_MS + t >= timeline.anchor.0 as f64;
        self.stats.deliveries += 1;
        self.stats.late_deliveries += usize::from(arrived_late);
        let dev = &mut self.devices[d];
        let continues = continues_playback(&dev.current, &timeline);
        dev.start_plan += 1;
        dev.start_after_seek = false;
        if !continues {
            // Hold, and do the seek during the lead so that it is done by the anchor.
            dev.player.set_playing(t, false);
            if (dev.player.position(t) - timeline.position_ms).abs() > PAUSED_TOLERANCE_MS {
                self.start_seek(t, d, timeline.position_ms);
            }
        }
        let dev = &mut self.devices[d];
        // The anchor on the local clock, with the estimate at receipt; without one, now.
        let when = dev
            .offset(t)
            .map(|o| dev.clock.true_time(timeline.anchor.0 as f64 - o))
            .unwrap_or(t)
            .max(t);
        dev.pending = Some(Pending {
            timeline,
            version,
            continues,
            arrived_late,
        });
        self.queue.push(when, Action::Anchor(d, version));
    }

    fn anchor(&mut self, t: f64, d: usize, version: u64) {
        let dev = &mut self.devices[d];
        let Some(pending) = dev.pending.take_if(|p| p.version == version) else {
            return;
        };
        dev.current = pending.timeline;
        dev.correcting = false;
        dev.start_after_seek = false;
        dev.start_plan += 1;
        dev.player.set_rate(t, dev.current.rate);
        if dev.current.paused {
            dev.player.set_playing(t, false);
            let target = dev.current.position_ms;
            if (dev.player.position(t) - target).abs() > PAUSED_TOLERANCE_MS {
                self.start_seek(t, d, target);
            }
        } else {
            self.stats.starts += 1;
            let behind = pending.arrived_late || dev.player.seek.is_some();
            self.stats.late_starts += usize::from(behind);
            match self.scenario.start {
                // Plays from the moment any seek completes.
                StartRule::CatchUp => dev.player.set_playing(t, true),
                StartRule::SeekAhead => self.try_start(t, d),
            }
        }
    }

    /// `synced-video.js` `#start` for a paused player of a playing timeline: wait (paused)
    /// until the timeline reaches the player's position, then play; if that position is
    /// behind the timeline by more than the dead band, first seek ahead of it.
    fn try_start(&mut self, t: f64, d: usize) {
        let dev = &mut self.devices[d];
        if dev.player.playing || dev.current.paused {
            return;
        }
        if dev.player.seek.is_some() {
            dev.start_after_seek = true;
            return;
        }
        dev.start_after_seek = false;
        let Some(now) = dev.server_now(t) else {
            return;
        };
        let tl = &dev.current;
        let actual = dev.player.position(t);
        // Server time at which the timeline is at the player's position (it holds at
        // `position_ms` until the anchor, so a position behind that is never reached).
        let reachable = actual >= tl.position_ms - PAUSED_TOLERANCE_MS;
        let reach_at = tl.anchor.0 as f64 + (actual - tl.position_ms).max(0.0) / tl.rate;
        let wait = reach_at - now;
        if reachable && wait > 1.0 && wait <= MAX_HOLD_MS {
            dev.start_plan += 1;
            let at = t + dev.clock.span(wait);
            self.queue.push(at, Action::StartAt(d, dev.start_plan));
        } else if !reachable || wait > MAX_HOLD_MS || -wait * tl.rate > DEAD_BAND_MS {
            let ahead =
                (2.0 * dev.seek_latency.value()).clamp(MIN_SEEK_AHEAD_MS, MAX_HOLD_MS / 2.0);
            let target = position_at(tl, now + ahead);
            dev.start_after_seek = true;
            self.start_seek(t, d, target);
        } else {
            // On time, or late by less than the dead band: the controller takes it from here.
            dev.player.set_playing(t, true);
        }
    }

    fn start_seek(&mut self, t: f64, d: usize, target: f64) {
        let dev = &mut self.devices[d];
        let noise = uniform(&mut self.player_rng, (1.0 - SEEK_NOISE, 1.0 + SEEK_NOISE));
        let id = dev.player.start_seek(t, dev.clock.read(t), target);
        self.queue
            .push(t + dev.seek_base * noise, Action::SeekDone(d, id));
    }

    fn seek_done(&mut self, t: f64, d: usize, id: u64) {
        let dev = &mut self.devices[d];
        if let Some(latency) = dev.player.finish_seek(t, dev.clock.read(t), id) {
            dev.seek_latency.update(latency);
            if dev.start_after_seek {
                self.try_start(t, d);
            }
        }
    }

    // --- device: drift controller ---

    fn tick(&mut self, t: f64, d: usize) {
        let dev = &mut self.devices[d];
        self.queue
            .push(t + dev.clock.span(CONTROL_INTERVAL_MS), Action::Tick(d));
        let holding = dev.pending.as_ref().is_some_and(|p| !p.continues);
        if !self.scenario.drift_correction
            || dev.current.paused
            || !dev.player.playing
            || dev.player.seek.is_some()
            || holding
        {
            return;
        }
        let Some(now) = dev.server_now(t) else {
            return;
        };
        let rate = dev.current.rate;
        let step = drift::correct(
            position_at(&dev.current, now),
            dev.player.position(t),
            rate,
            dev.seek_latency.value(),
            dev.correcting,
        );
        dev.correcting = step.correcting;
        // `Action::None` plays at the timeline's rate, `Action::Nudge` at the nudged one.
        match step.seek_to_ms {
            Some(to) => {
                self.stats.controller_seeks += 1;
                self.start_seek(t, d, to);
            }
            None => dev.player.set_rate(t, step.playback_rate),
        }
    }

    // --- measurement ---

    fn sample(&mut self, t: f64) {
        self.queue.push(t + SAMPLE_MS, Action::Sample);
        if !self.devices.iter().all(Device::ready) {
            return;
        }
        self.samples_taken += 1;
        let truth = EPOCH_MS + t;
        let clock_errors: Vec<f64> = self
            .devices
            .iter()
            .map(|d| d.server_now(t).expect("ready devices have an estimate") - truth)
            .collect();
        if self.samples_taken.is_multiple_of(OFFSET_SAMPLE_EVERY) {
            self.stats
                .clock_error
                .extend(clock_errors.iter().map(|e| e.abs()));
        }
        let server = &self.server;
        if server.jump && (server.issued_t..server.anchor_t).contains(&t) {
            self.stats.handover_skipped += 1;
            return;
        }
        let since_anchor = t - server.anchor_t;
        if server.timeline.paused && since_anchor >= STEADY_AFTER_MS {
            self.stats.paused_skipped += 1;
            return;
        }
        let error = range(self.devices.iter().map(|d| d.player.position(t)));
        self.stats.all.push(error);
        if !server.timeline.paused && since_anchor >= STEADY_AFTER_MS {
            self.stats.steady.push(error);
            self.stats
                .clock_spread
                .push(range(clock_errors.into_iter()));
        }
    }
}

fn run_scenario(scenario: Scenario, seed: u64) -> Stats {
    let mut total = Stats::default();
    for index in 0..PARTIES {
        total.merge(PartySim::new(scenario, seed, index).run());
    }
    total
}

// ----- Report --------------------------------------------------------------------------------

fn seed_from_env() -> u64 {
    let Ok(raw) = std::env::var("SYNC_BENCH_SEED") else {
        return DEFAULT_SEED;
    };
    let raw = raw.trim();
    let parsed = match raw.strip_prefix("0x").or_else(|| raw.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => raw.parse(),
    };
    parsed.unwrap_or_else(|e| panic!("SYNC_BENCH_SEED={raw:?} is not a u64: {e}"))
}

fn print_parameters(seed: u64) {
    let config = PartyConfig::default();
    println!("Marquee sync-accuracy benchmark (discrete-event simulation, deterministic per seed)");
    println!("command : cargo bench -p sync --bench sync_accuracy");
    println!("seed    : {seed} (override with SYNC_BENCH_SEED=<u64 or 0x...>)");
    println!(
        "parties : {PARTIES} x {}-{} devices, {:.0} s each, joined within {:.0} s; \
         inter-device error sampled every {SAMPLE_MS:.0} ms",
        DEVICES_PER_PARTY.0,
        DEVICES_PER_PARTY.1,
        SESSION_MS / 1000.0,
        JOIN_WINDOW_MS.1 / 1000.0
    );
    println!(
        "network : base RTT U({:.0},{:.0}) ms, uplink share U({},{}), per-packet exp jitter \
         mean U({},{}) x direction base, {:.0}% spikes +U({:.0},{:.0}) ms",
        RTT_MS.0,
        RTT_MS.1,
        UPLINK_SHARE.0,
        UPLINK_SHARE.1,
        JITTER_FRACTION.0,
        JITTER_FRACTION.1,
        SPIKE_PROBABILITY * 100.0,
        SPIKE_MS.0,
        SPIKE_MS.1
    );
    println!(
        "clocks  : start U(0,{:.0} h), drift U(+-{DRIFT_PPM:.0}) ppm; probes: burst of \
         {JOIN_BURST} x {BURST_SPACING_MS:.0} ms, then every {:.0} s, window {WINDOW}; \
         server processing U({},{}) ms",
        CLOCK_START_MS.1 / 3_600_000.0,
        PROBE_INTERVAL_MS / 1000.0,
        SERVER_PROCESSING_MS.0,
        SERVER_PROCESSING_MS.1
    );
    println!(
        "server  : lead = slowest best RTT clamped {}-{} ms, fan-out U({},{}) ms; commands \
         every U({:.0},{:.0}) s (play/pause/seek)",
        config.min_lead.as_millis(),
        config.max_lead.as_millis(),
        FANOUT_MS.0,
        FANOUT_MS.1,
        COMMAND_GAP_MS.0 / 1000.0,
        COMMAND_GAP_MS.1 / 1000.0
    );
    println!(
        "player  : seek latency U({:.0},{:.0}) ms per device x U(1+-{SEEK_NOISE}) per seek, \
         EWMA a={SEEK_LATENCY_ALPHA} prior {SEEK_LATENCY_PRIOR_MS:.0} ms; controller every \
         {CONTROL_INTERVAL_MS:.0} ms: dead band {DEAD_BAND_MS:.0} ms (settle \
         {SETTLE_MS:.0}), nudge <= {:.0}% up to {SEEK_THRESHOLD_MS:.0} ms, seek beyond",
        SEEK_LATENCY_MS.0,
        SEEK_LATENCY_MS.1,
        MAX_NUDGE * 100.0
    );
    println!(
        "samples : 'all' = after every join burst, except seek lead windows (hand-over) and \
         pauses older than {STEADY_AFTER_MS:.0} ms; 'steady' = playing and >= \
         {STEADY_AFTER_MS:.0} ms past the anchor"
    );
}

fn percent(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn print_results(results: &mut [(Scenario, Stats)]) {
    let first = &results[0].1;
    println!(
        "\nworld   : {} devices, {} device pairs",
        first.devices, first.pairs
    );
    println!("\nInter-device error (max - min of a party's true media positions), ms");
    println!(
        "{:<38} | {:>8} {:>6} {:>6} {:>6} {:>7} | {:>8} {:>6} {:>6} {:>6} {:>7}",
        "scenario", "steady n", "p50", "p95", "p99", "max", "all n", "p50", "p95", "p99", "max"
    );
    println!("{}", "-".repeat(121));
    for (scenario, stats) in results.iter_mut() {
        let s = summarize(&mut stats.steady);
        let a = summarize(&mut stats.all);
        println!(
            "{:<38} | {:>8} {:>6.1} {:>6.1} {:>6.1} {:>7.0} | {:>8} {:>6.1} {:>6.1} {:>6.1} {:>7.0}",
            scenario.name, s.n, s.p50, s.p95, s.p99, s.max, a.n, a.p50, a.p95, a.p99, a.max
        );
    }
    println!("\nWhere it comes from, ms / %");
    println!(
        "{:<38} | {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>9}",
        "scenario",
        "clk p50",
        "clk p99",
        "sprd p50",
        "sprd p99",
        "late msg",
        "late st",
        "ctl seek",
        "skipped"
    );
    println!("{}", "-".repeat(121));
    for (scenario, stats) in results.iter_mut() {
        let clock = summarize(&mut stats.clock_error);
        let spread = summarize(&mut stats.clock_spread);
        println!(
            "{:<38} | {:>9.2} {:>9.2} | {:>9.1} {:>9.1} | {:>7.2}% {:>7.2}% {:>8} | {:>4}/{:<4}",
            scenario.name,
            clock.p50,
            clock.p99,
            spread.p50,
            spread.p99,
            percent(stats.late_deliveries, stats.deliveries),
            percent(stats.late_starts, stats.starts),
            stats.controller_seeks,
            stats.handover_skipped,
            stats.paused_skipped,
        );
    }
    println!(
        "\nclk = |estimated - true server time| per device (sampled each second); sprd = \
         max - min of a party's clock errors at steady samples (the error perfect players \
         would show); late msg = timeline delivered after its anchor; late st = playback \
         began behind (late message or seek unfinished at the anchor); ctl seek = seeks by \
         the drift controller; skipped = samples in seek hand-over windows / settled pauses. \
         The 'all' maximum is a seek whose message arrived after its anchor: that device shows \
         the old position until it does."
    );
}

fn main() {
    let seed = seed_from_env();
    print_parameters(seed);
    let mut results: Vec<(Scenario, Stats)> = SCENARIOS
        .iter()
        .map(|&scenario| (scenario, run_scenario(scenario, seed)))
        .collect();
    print_results(&mut results);
    println!();
    // The verdict is for the two Marquee rows; the others are comparisons.
    for (scenario, stats) in results.iter_mut().take(2) {
        let steady_p99 = summarize(&mut stats.steady).p99;
        let verdict = if steady_p99 <= TARGET_P99_MS {
            "PASS"
        } else {
            "MISS"
        };
        println!(
            "{verdict}: steady-state p99 inter-device error {steady_p99:.1} ms \
             (target <= {TARGET_P99_MS:.0} ms), '{}'",
            scenario.name
        );
    }
}
