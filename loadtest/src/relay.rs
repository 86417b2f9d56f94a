//! A userspace UDP impairment relay between many WebRTC clients and one server.
//!
//! Kernel `netem` is not available here, so loss, delay, jitter and a bandwidth cap are applied
//! by this relay instead. It is split the usual way (a core that is told the time, a driver
//! that reads it):
//!
//! - [`Link`] is one direction of one client's path: a deterministic model with no sockets,
//!   tasks or clock reads. It decides, for a datagram entering at a given instant, whether it
//!   is dropped and otherwise when it leaves. Randomness comes from a seeded
//!   [`ChaCha8Rng`], so the same seed gives the same drops and delays on every run.
//! - [`ImpairedRelay`] is the tokio driver. Clients send to [`ImpairedRelay::addr`]; every
//!   distinct client source address gets its own upstream socket towards the server, so the
//!   server sees one 4-tuple per client (as it would without the relay) and routes replies
//!   back without the relay having to parse anything. Each client has an `up`
//!   (client→server) and a `down` (server→client) [`Link`].
//!
//! A WebRTC client is routed through the relay by rewriting the server's candidate in the SDP
//! it receives ([`ImpairedRelay::route_sdp`]), as the single-client relay of
//! `marquee_client` does.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Upper bound of every duration the model handles (delay, jitter, queue, one datagram's
/// serialization): larger values are configuration mistakes, and bounding them keeps instant
/// arithmetic far from overflow.
const MAX_MS: f64 = 3_600_000.0;

/// A client silent for this long in both directions is forgotten (its upstream socket
/// closed), so a churn test that keeps creating clients does not leak sockets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Datagrams held for later release, per direction, over all clients. At ~50k datagrams/s a
/// 200 ms delay holds ~10k; the cap only bounds memory when a configuration asks for more.
pub const MAX_QUEUED: usize = 65_536;

/// Receive buffer size: the largest UDP payload, so nothing is ever truncated.
const MAX_DATAGRAM: usize = 65_536;

/// What one path does to the datagrams crossing it, in each direction separately.
///
/// Deserializable from the load-test configuration; missing fields take their defaults.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Impairment {
    /// Probability in percent (0..=100) that a datagram is lost, independently of the others.
    pub loss_pct: f64,
    /// Fixed one-way delay added to every datagram.
    pub delay_ms: f64,
    /// Each datagram's delay varies uniformly within ±`jitter_ms` around `delay_ms` (never
    /// below zero); as with netem, datagrams may then be reordered.
    pub jitter_ms: f64,
    /// Link rate: datagrams are serialized one after another at this rate. `None`: no cap.
    pub bandwidth_kbps: Option<f64>,
    /// Longest time a datagram may wait for the link behind earlier ones before it is dropped
    /// (tail drop); only meaningful with `bandwidth_kbps`.
    pub queue_ms: f64,
    /// Base seed of the random choices; each link derives its own with [`link_seed`].
    pub seed: u64,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            loss_pct: 0.0,
            delay_ms: 0.0,
            jitter_ms: 0.0,
            bandwidth_kbps: None,
            queue_ms: 200.0,
            seed: 1,
        }
    }
}

impl Impairment {
    /// Checks every field, so a bad configuration fails at start with a message naming the
    /// field rather than silently behaving as something else.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=100.0).contains(&self.loss_pct) {
            return Err(format!(
                "loss_pct must be between 0 and 100, got {}",
                self.loss_pct
            ));
        }
        for (name, value) in [
            ("delay_ms", self.delay_ms),
            ("jitter_ms", self.jitter_ms),
            ("queue_ms", self.queue_ms),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!("{name} must be a finite number >= 0, got {value}"));
            }
            if value > MAX_MS {
                return Err(format!(
                    "{name} must be at most {MAX_MS} (one hour), got {value}"
                ));
            }
        }
        if let Some(kbps) = self.bandwidth_kbps
            && !(kbps.is_finite() && kbps > 0.0)
        {
            return Err(format!(
                "bandwidth_kbps must be a finite number > 0 (omit it for no cap), got {kbps}"
            ));
        }
        Ok(())
    }

    /// Whether the relay would forward everything at once, unchanged.
    pub fn is_noop(&self) -> bool {
        self.loss_pct == 0.0
            && self.delay_ms == 0.0
            && self.jitter_ms == 0.0
            && self.bandwidth_kbps.is_none()
    }
}

/// Datagram counts of one [`Link`], or summed over the links of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Datagrams the model let through.
    pub passed: u64,
    /// Datagrams dropped by random loss.
    pub dropped_loss: u64,
    /// Datagrams dropped because the bandwidth queue was full (tail drop).
    pub dropped_queue: u64,
}

impl LinkStats {
    /// Every datagram that entered.
    pub fn total(&self) -> u64 {
        self.passed + self.dropped_loss + self.dropped_queue
    }
}

/// What a [`Link`] decided for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass(Instant),
    Loss,
    QueueFull,
}

/// One direction of one client's path; see the module docs.
///
/// The model, in the order a datagram meets it: random loss (it never reaches the link, as
/// with netem's loss at enqueue); then the bandwidth queue, where it starts serializing once
/// the previous datagram has finished, or is dropped if that wait would exceed `queue_ms`;
/// then the propagation delay with its jitter, counted from the end of serialization.
#[derive(Debug, Clone)]
pub struct Link {
    /// Loss probability in 0..=1.
    loss: f64,
    delay_ms: f64,
    jitter_ms: f64,
    /// Nanoseconds per byte on the link, with a bandwidth cap.
    ns_per_byte: Option<f64>,
    queue: Duration,
    /// Draws loss decisions only, so the drop pattern of a seed does not change with the
    /// delay settings.
    loss_rng: ChaCha8Rng,
    /// Draws jitter: the same seed on another ChaCha stream.
    jitter_rng: ChaCha8Rng,
    /// When the link finishes serializing the last datagram it accepted.
    busy_until: Option<Instant>,
    stats: LinkStats,
}

impl Link {
    /// A link with `config`'s impairment and its own `seed` (not `config.seed`; see
    /// [`link_seed`]). `config` should be [validated](Impairment::validate); out-of-range
    /// values are clamped rather than trusted, so the model never panics.
    pub fn new(config: &Impairment, seed: u64) -> Self {
        let loss = (config.loss_pct / 100.0).clamp(0.0, 1.0);
        let loss_rng = ChaCha8Rng::seed_from_u64(seed);
        let mut jitter_rng = ChaCha8Rng::seed_from_u64(seed);
        jitter_rng.set_stream(1);
        Self {
            loss: if loss.is_nan() { 0.0 } else { loss },
            delay_ms: clamp_ms(config.delay_ms),
            jitter_ms: clamp_ms(config.jitter_ms),
            ns_per_byte: config
                .bandwidth_kbps
                .filter(|kbps| *kbps > 0.0)
                // bits / (kbit/s · 1000) seconds = bytes · 8e6 / kbps nanoseconds.
                .map(|kbps| 8e6 / kbps),
            queue: duration_ms(config.queue_ms),
            loss_rng,
            jitter_rng,
            busy_until: None,
            stats: LinkStats::default(),
        }
    }

    /// A datagram of `len` bytes enters at `now`: returns `None` when it is dropped (random
    /// loss, or the bandwidth queue would exceed `queue_ms` = tail drop), else the instant it
    /// leaves. Calls must come in non-decreasing `now`, as a driver reading one clock does.
    pub fn handle_datagram(&mut self, now: Instant, len: usize) -> Option<Instant> {
        match self.judge(now, len) {
            Verdict::Pass(at) => Some(at),
            Verdict::Loss | Verdict::QueueFull => None,
        }
    }

    /// Counts of everything this link decided.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    fn judge(&mut self, now: Instant, len: usize) -> Verdict {
        if self.loss > 0.0 && self.loss_rng.random::<f64>() < self.loss {
            self.stats.dropped_loss += 1;
            return Verdict::Loss;
        }
        let mut leaves = now;
        if let Some(ns_per_byte) = self.ns_per_byte {
            let start = self.busy_until.map_or(now, |busy| busy.max(now));
            if start - now > self.queue {
                self.stats.dropped_queue += 1;
                return Verdict::QueueFull;
            }
            let serialization = duration_ms(len as f64 * ns_per_byte / 1e6);
            leaves = start + serialization;
            self.busy_until = Some(leaves);
        }
        let mut delay_ms = self.delay_ms;
        if self.jitter_ms > 0.0 {
            delay_ms += self
                .jitter_rng
                .random_range(-self.jitter_ms..=self.jitter_ms);
        }
        self.stats.passed += 1;
        Verdict::Pass(leaves + duration_ms(delay_ms))
    }
}

/// A millisecond value clamped into `0..=MAX_MS` (NaN counts as 0).
fn clamp_ms(ms: f64) -> f64 {
    if ms.is_nan() {
        0.0
    } else {
        ms.clamp(0.0, MAX_MS)
    }
}

/// Milliseconds to a duration, clamped like [`clamp_ms`]; rounded to whole nanoseconds so
/// that e.g. a 10 ms serialization time is exactly 10 ms and queues add up without drift.
fn duration_ms(ms: f64) -> Duration {
    Duration::from_nanos((clamp_ms(ms) * 1e6).round() as u64)
}

/// A direction of a client's path through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

/// The seed of one link: a mix of the relay's base seed, the client's index (in order of
/// first datagram) and the direction, so every link draws an independent sequence and a run
/// with the same clients in the same order is reproducible.
pub fn link_seed(seed: u64, client: u64, direction: Direction) -> u64 {
    let lane = client.wrapping_mul(2) + u64::from(direction == Direction::Down);
    splitmix64(seed ^ splitmix64(lane))
}

/// SplitMix64's finalizer: a bijective mix in which nearby inputs give unrelated outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counts of an [`ImpairedRelay`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStats {
    /// Clients currently known (not yet forgotten after [`IDLE_TIMEOUT`]).
    pub clients: usize,
    /// Clients ever seen; a client that comes back after being forgotten counts again.
    pub clients_total: u64,
    /// Client → server, summed over all clients.
    pub up: LinkStats,
    /// Server → client, summed over all clients.
    pub down: LinkStats,
    /// Datagrams the model passed but the relay dropped because [`MAX_QUEUED`] were already
    /// waiting, or because no upstream socket could be opened for a new client. Not part of
    /// any impairment: a non-zero value means the relay itself was overloaded.
    pub dropped_overflow: u64,
    /// Sends that failed (e.g. the server's port was closed).
    pub send_errors: u64,
}

/// The driver's counters, shared by its tasks and read by [`ImpairedRelay::stats`].
#[derive(Default)]
struct Counters {
    clients: AtomicUsize,
    clients_total: AtomicU64,
    up: AtomicLinkStats,
    down: AtomicLinkStats,
    dropped_overflow: AtomicU64,
    send_errors: AtomicU64,
    /// Datagrams waiting in the down queues of all clients (the up queue is a single one).
    queued_down: Arc<AtomicUsize>,
}

#[derive(Default)]
struct AtomicLinkStats {
    passed: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
}

impl AtomicLinkStats {
    fn count(&self, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Pass(_) => &self.passed,
            Verdict::Loss => &self.dropped_loss,
            Verdict::QueueFull => &self.dropped_queue,
        };
        counter.fetch_add(1, AtomicOrdering::Relaxed);
    }

    fn load(&self) -> LinkStats {
        LinkStats {
            passed: self.passed.load(AtomicOrdering::Relaxed),
            dropped_loss: self.dropped_loss.load(AtomicOrdering::Relaxed),
            dropped_queue: self.dropped_queue.load(AtomicOrdering::Relaxed),
        }
    }
}

/// The relay's clock: the one place it reads the time. Through tokio so a paused test clock
/// would apply; `into_std` because the model works in std instants.
#[allow(clippy::disallowed_methods)]
fn clock_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Datagrams waiting for their release instant, earliest first (arrival order among equal
/// instants), with a slot count shared by every queue of one direction so the direction's
/// total stays under a cap.
struct TimerQueue<T> {
    heap: BinaryHeap<Pending<T>>,
    next_seq: u64,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

struct Pending<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for Pending<T> {}

impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Pending<T> {
    /// Reversed, so the max-heap's top is the earliest release.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl<T> TimerQueue<T> {
    fn new(queued: Arc<AtomicUsize>, cap: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            queued,
            cap,
        }
    }

    /// Queues `item` for `at`, or hands it back when the direction's cap is reached.
    fn try_push(&mut self, at: Instant, item: T) -> Result<(), T> {
        if self.queued.fetch_add(1, AtomicOrdering::Relaxed) >= self.cap {
            self.queued.fetch_sub(1, AtomicOrdering::Relaxed);
            return Err(item);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Pending { at, seq, item });
        Ok(())
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|pending| pending.at)
    }

    /// The earliest item whose instant is not after `now`.
    fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.at > now {
            return None;
        }
        let pending = self.heap.pop()?;
        self.queued.fetch_sub(1, AtomicOrdering::Relaxed);
        Some(pending.item)
    }
}

impl<T> Drop for TimerQueue<T> {
    /// Gives the slots of never-released items back (a forgotten client's task is aborted
    /// with its queue).
    fn drop(&mut self) {
        self.queued
            .fetch_sub(self.heap.len(), AtomicOrdering::Relaxed);
    }
}

/// A sleep re-armed only when the earliest deadline changes, so a busy loop does not touch
/// the timer wheel on every datagram.
struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
}

impl Alarm {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    fn set(&mut self, deadline: Option<Instant>) {
        match deadline {
            Some(at) if self.armed != Some(at) => {
                self.sleep
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(at));
                self.armed = Some(at);
            }
            Some(_) => {}
            None => self.armed = None,
        }
    }

    fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Waits for the armed deadline, then disarms so the next [`set`](Self::set) re-arms even
    /// for the same instant.
    async fn ring(&mut self) {
        (&mut self.sleep).await;
        self.armed = None;
    }
}

/// A UDP relay on `127.0.0.1:0` in front of one server, impairing each client's path on its
/// own; see the module docs. Its tasks stop when this value is dropped.
pub struct ImpairedRelay {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl ImpairedRelay {
    /// Listens on 127.0.0.1:0. Each distinct client source address gets its own upstream UDP
    /// socket towards `server`, so the server sees one 4-tuple per client; datagrams
    /// client→server go through that client's `up` [`Link`] and server→client through its
    /// `down` one, each seeded with [`link_seed`] from `config.seed`, the client's index in
    /// order of first datagram, and the direction.
    pub async fn start(server: SocketAddr, config: Impairment) -> anyhow::Result<Self> {
        Self::start_with_idle_timeout(server, config, IDLE_TIMEOUT).await
    }

    /// [`start`](Self::start) with another idle timeout, so tests need not wait 30 s.
    async fn start_with_idle_timeout(
        server: SocketAddr,
        config: Impairment,
        idle_timeout: Duration,
    ) -> anyhow::Result<Self> {
        if let Err(message) = config.validate() {
            bail!("invalid impairment: {message}");
        }
        let listener = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the impairment relay's socket")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let up = UpDirection {
            listener: Arc::new(listener),
            server,
            config,
            idle_timeout,
            counters: Arc::clone(&counters),
        };
        let task = tokio::spawn(up.run());
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts since start, summed over all clients (forgotten ones included).
    pub fn stats(&self) -> RelayStats {
        let counters = &self.counters;
        RelayStats {
            clients: counters.clients.load(AtomicOrdering::Relaxed),
            clients_total: counters.clients_total.load(AtomicOrdering::Relaxed),
            up: counters.up.load(),
            down: counters.down.load(),
            dropped_overflow: counters.dropped_overflow.load(AtomicOrdering::Relaxed),
            send_errors: counters.send_errors.load(AtomicOrdering::Relaxed),
        }
    }
}

impl Drop for ImpairedRelay {
    /// Aborting the listening task drops its client table, whose entries abort their own
    /// tasks in turn, so no socket outlives the relay.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The listening task: client→server traffic, the client table and idle expiry.
struct UpDirection {
    listener: Arc<UdpSocket>,
    server: SocketAddr,
    config: Impairment,
    idle_timeout: Duration,
    counters: Arc<Counters>,
}

/// One known client, owned by the listening task.
struct Client {
    upstream: Arc<UdpSocket>,
    up: Link,
    last_up: Instant,
    /// Nanoseconds after the relay's epoch of the last server→client datagram, written by
    /// the client's down task.
    last_down_ns: Arc<AtomicU64>,
    down_task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.down_task.abort();
    }
}

/// A delayed client→server datagram and the client's socket it leaves from.
struct UpDatagram {
    upstream: Arc<UdpSocket>,
    data: Vec<u8>,
}

impl UpDirection {
    async fn run(self) {
        let epoch = clock_now();
        let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
        let mut next_index: u64 = 0;
        let mut pending = TimerQueue::new(Arc::new(AtomicUsize::new(0)), MAX_QUEUED);
        let mut alarm = Alarm::new();
        let mut sweep = tokio::time::interval(
            (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = clock_now();
            while let Some(datagram) = pending.pop_due(now) {
                let UpDatagram { upstream, data } = datagram;
                self.send_up(&upstream, &data).await;
            }
            alarm.set(pending.next_deadline());
            tokio::select! {
                () = alarm.ring(), if alarm.is_armed() => {}
                received = self.listener.recv_from(&mut buf) => {
                    // Errors on an unconnected UDP socket are transient; keep relaying.
                    let Ok((len, from)) = received else { continue };
                    let now = clock_now();
                    let client = match clients.entry(from) {
                        Entry::Occupied(entry) => entry.into_mut(),
                        Entry::Vacant(entry) => {
                            match self.new_client(from, next_index, epoch, now) {
                                Ok(client) => {
                                    next_index += 1;
                                    let counters = &self.counters;
                                    counters.clients_total.fetch_add(1, AtomicOrdering::Relaxed);
                                    counters.clients.fetch_add(1, AtomicOrdering::Relaxed);
                                    entry.insert(client)
                                }
                                Err(error) => {
                                    tracing::warn!(
                                        %from, %error, "relay: no upstream socket for a new client"
                                    );
                                    self.count_overflow();
                                    continue;
                                }
                            }
                        }
                    };
                    client.last_up = now;
                    let verdict = client.up.judge(now, len);
                    self.counters.up.count(verdict);
                    match verdict {
                        Verdict::Pass(at) if at <= now => {
                            let upstream = Arc::clone(&client.upstream);
                            self.send_up(&upstream, &buf[..len]).await;
                        }
                        Verdict::Pass(at) => {
                            let datagram = UpDatagram {
                                upstream: Arc::clone(&client.upstream),
                                data: buf[..len].to_vec(),
                            };
                            if pending.try_push(at, datagram).is_err() {
                                self.count_overflow();
                            }
                        }
                        Verdict::Loss | Verdict::QueueFull => {}
                    }
                }
                _ = sweep.tick() => {
                    let now = clock_now();
                    clients.retain(|_, client| {
                        let last_down_ns = client.last_down_ns.load(AtomicOrdering::Relaxed);
                        let last = client.last_up.max(epoch + Duration::from_nanos(last_down_ns));
                        now.saturating_duration_since(last) < self.idle_timeout
                    });
                    self.counters.clients.store(clients.len(), AtomicOrdering::Relaxed);
                }
            }
        }
    }

    /// Opens the client's upstream socket and starts its down task. Synchronous (std socket
    /// calls do not block for UDP) so the loop never awaits while holding a table entry.
    fn new_client(
        &self,
        from: SocketAddr,
        index: u64,
        epoch: Instant,
        now: Instant,
    ) -> std::io::Result<Client> {
        let ip = match (self.server.ip(), self.server.ip().is_loopback()) {
            (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = std::net::UdpSocket::bind((ip, 0))?;
        // Connected: only the server's datagrams are received, and sends need no address.
        socket.connect(self.server)?;
        socket.set_nonblocking(true)?;
        let upstream = Arc::new(UdpSocket::from_std(socket)?);
        let last_down_ns = Arc::new(AtomicU64::new(0));
        let down = DownDirection {
            upstream: Arc::clone(&upstream),
            listener: Arc::clone(&self.listener),
            client: from,
            link: Link::new(
                &self.config,
                link_seed(self.config.seed, index, Direction::Down),
            ),
            epoch,
            last_down_ns: Arc::clone(&last_down_ns),
            counters: Arc::clone(&self.counters),
        };
        Ok(Client {
            upstream,
            up: Link::new(
                &self.config,
                link_seed(self.config.seed, index, Direction::Up),
            ),
            last_up: now,
            last_down_ns,
            down_task: tokio::spawn(down.run()),
        })
    }

    fn count_overflow(&self) {
        self.counters
            .dropped_overflow
            .fetch_add(1, AtomicOrdering::Relaxed);
    }

    /// Awaits writability rather than `try_send`, which tokio refuses on a socket the
    /// reactor has not yet reported writable (every new client's first datagram).
    async fn send_up(&self, upstream: &UdpSocket, data: &[u8]) {
        if upstream.send(data).await.is_err() {
            self.counters
                .send_errors
                .fetch_add(1, AtomicOrdering::Relaxed);
        }
    }
}

/// One client's server→client task: reads its upstream socket, so the heavy direction
/// (media) spreads over tasks and never waits behind another client.
struct DownDirection {
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    link: Link,
    epoch: Instant,
    last_down_ns: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl DownDirection {
    async fn run(mut self) {
        let mut pending: TimerQueue<Vec<u8>> =
            TimerQueue::new(Arc::clone(&self.counters.queued_down), MAX_QUEUED);
        let mut alarm = Alarm::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = clock_now();
            while let Some(data) = pending.pop_due(now) {
                self.send_down(&data).await;
            }
            alarm.set(pending.next_deadline());
            tokio::select! {
                () = alarm.ring(), if alarm.is_armed() => {}
                received = self.upstream.recv(&mut buf) => {
                    // A connected socket reports an ICMP error (server port closed) once;
                    // the relay carries on like the network would.
                    let Ok(len) = received else { continue };
                    let now = clock_now();
                    let since_epoch = now.saturating_duration_since(self.epoch).as_nanos();
                    self.last_down_ns.store(
                        u64::try_from(since_epoch).unwrap_or(u64::MAX),
                        AtomicOrdering::Relaxed,
                    );
                    let verdict = self.link.judge(now, len);
                    self.counters.down.count(verdict);
                    match verdict {
                        Verdict::Pass(at) if at <= now => self.send_down(&buf[..len]).await,
                        Verdict::Pass(at) => {
                            if pending.try_push(at, buf[..len].to_vec()).is_err() {
                                let overflow = &self.counters.dropped_overflow;
                                overflow.fetch_add(1, AtomicOrdering::Relaxed);
                            }
                        }
                        Verdict::Loss | Verdict::QueueFull => {}
                    }
                }
            }
        }
    }

    async fn send_down(&self, data: &[u8]) {
        if self.listener.send_to(data, self.client).await.is_err() {
            self.counters
                .send_errors
                .fetch_add(1, AtomicOrdering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn as_ms(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1000.0
    }

    fn loss_pattern(seed: u64, count: usize) -> Vec<bool> {
        let config = Impairment {
            loss_pct: 10.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, seed);
        let t0 = clock_now();
        (0..count)
            .map(|i| {
                link.handle_datagram(t0 + Duration::from_micros(i as u64), 1200)
                    .is_none()
            })
            .collect()
    }

    #[test]
    fn loss_rate_and_reproducibility() {
        const N: usize = 100_000;
        let pattern = loss_pattern(7, N);
        let dropped = pattern.iter().filter(|dropped| **dropped).count();
        let pct = dropped as f64 * 100.0 / N as f64;
        println!("measured loss: {pct:.3} %");
        assert!((9.5..=10.5).contains(&pct), "loss {pct} %");
        assert_eq!(pattern, loss_pattern(7, N), "same seed, same drops");
        let other = loss_pattern(8, N);
        assert_ne!(pattern, other, "another seed, other drops");
        let differing = pattern.iter().zip(&other).filter(|(a, b)| a != b).count();
        // Independent 10 % patterns differ in ~18 % of places.
        assert!(differing > N / 10, "only {differing} differences");
    }

    #[test]
    fn loss_pattern_does_not_depend_on_delay() {
        let lossy = Impairment {
            loss_pct: 30.0,
            ..Impairment::default()
        };
        let jittery = Impairment {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            ..lossy.clone()
        };
        let mut a = Link::new(&lossy, 3);
        let mut b = Link::new(&jittery, 3);
        let t0 = clock_now();
        for i in 0..1000 {
            let at = t0 + ms(i);
            assert_eq!(
                a.handle_datagram(at, 100).is_none(),
                b.handle_datagram(at, 100).is_none()
            );
        }
        assert_eq!(a.stats().dropped_loss, b.stats().dropped_loss);
    }

    #[test]
    fn delay_with_jitter_stays_in_range_and_reorders() {
        let config = Impairment {
            delay_ms: 50.0,
            jitter_ms: 10.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 11);
        let t0 = clock_now();
        let mut delays = Vec::new();
        let mut reordered = 0;
        let mut previous: Option<Instant> = None;
        for i in 0..10_000 {
            let entry = t0 + ms(i);
            let release = link
                .handle_datagram(entry, 1200)
                .expect("no loss configured");
            let delay = as_ms(release - entry);
            assert!((40.0..=60.0).contains(&delay), "delay {delay} ms");
            if previous.is_some_and(|previous| release < previous) {
                reordered += 1;
            }
            previous = Some(release);
            delays.push(delay);
        }
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let min = delays.iter().copied().fold(f64::INFINITY, f64::min);
        let max = delays.iter().copied().fold(0.0, f64::max);
        println!("delay mean {mean:.3} ms, min {min:.3}, max {max:.3}, reordered {reordered}");
        assert!((mean - 50.0).abs() <= 1.0, "mean {mean} ms");
        // The spread reaches both ends, so jitter is really applied.
        assert!(min < 41.0 && max > 59.0, "range {min}..{max}");
        // Entries 1 ms apart with ±10 ms jitter overtake each other often.
        assert!(reordered > 1000, "reordered {reordered}");
        assert_eq!(link.stats().passed, 10_000);
    }

    #[test]
    fn jitter_never_makes_a_negative_delay() {
        let config = Impairment {
            delay_ms: 2.0,
            jitter_ms: 10.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 5);
        let t0 = clock_now();
        let mut zero = 0;
        for i in 0..1000 {
            let entry = t0 + ms(i);
            let release = link.handle_datagram(entry, 100).unwrap();
            assert!(release >= entry);
            if release == entry {
                zero += 1;
            }
        }
        // Jitter below -2 ms (40 % of draws) is clamped to no delay at all.
        assert!((300..500).contains(&zero), "{zero} undelayed");
    }

    #[test]
    fn bandwidth_serializes_and_tail_drops() {
        let config = Impairment {
            bandwidth_kbps: Some(1000.0),
            ..Impairment::default()
        };
        assert_eq!(config.queue_ms, 200.0);
        let mut link = Link::new(&config, 1);
        let t0 = clock_now();
        let releases: Vec<Option<Instant>> =
            (0..50).map(|_| link.handle_datagram(t0, 1250)).collect();
        // 1250 bytes at 1 Mbit/s take 10 ms. Datagram i waits i·10 ms before it starts, so
        // waits 0..=200 ms pass (21 datagrams) and the other 29 are dropped.
        for (i, release) in releases.iter().enumerate() {
            if i <= 20 {
                assert_eq!(*release, Some(t0 + ms(10 * (i as u64 + 1))), "datagram {i}");
            } else {
                assert_eq!(*release, None, "datagram {i}");
            }
        }
        assert_eq!(
            link.stats(),
            LinkStats {
                passed: 21,
                dropped_loss: 0,
                dropped_queue: 29
            }
        );
        // Once the queue has drained, a datagram leaves after its own serialization only.
        let later = t0 + ms(1000);
        assert_eq!(link.handle_datagram(later, 1250), Some(later + ms(10)));
        // Half-way through it, the next one waits for the rest.
        let mid = later + ms(5);
        assert_eq!(link.handle_datagram(mid, 125), Some(later + ms(11)));
    }

    #[test]
    fn bandwidth_then_delay() {
        let config = Impairment {
            delay_ms: 30.0,
            bandwidth_kbps: Some(8000.0),
            queue_ms: 5.0,
            ..Impairment::default()
        };
        let mut link = Link::new(&config, 1);
        let t0 = clock_now();
        // 1000 bytes at 8 Mbit/s: 1 ms each; waits of 0..=5 ms pass.
        let releases: Vec<_> = (0..10).map(|_| link.handle_datagram(t0, 1000)).collect();
        for (i, release) in releases.iter().enumerate() {
            let expected = (i <= 5).then(|| t0 + ms(30 + i as u64 + 1));
            assert_eq!(*release, expected, "datagram {i}");
        }
    }

    #[test]
    fn validate_names_each_bad_field() {
        assert_eq!(Impairment::default().validate(), Ok(()));
        let good = Impairment {
            loss_pct: 100.0,
            delay_ms: 10.0,
            jitter_ms: 0.0,
            bandwidth_kbps: Some(0.5),
            queue_ms: 0.0,
            seed: 0,
        };
        assert_eq!(good.validate(), Ok(()));
        let cases: Vec<(&str, Impairment)> = vec![
            (
                "loss_pct",
                Impairment {
                    loss_pct: -1.0,
                    ..Impairment::default()
                },
            ),
            (
                "loss_pct",
                Impairment {
                    loss_pct: 100.5,
                    ..Impairment::default()
                },
            ),
            (
                "loss_pct",
                Impairment {
                    loss_pct: f64::NAN,
                    ..Impairment::default()
                },
            ),
            (
                "delay_ms",
                Impairment {
                    delay_ms: -0.1,
                    ..Impairment::default()
                },
            ),
            (
                "delay_ms",
                Impairment {
                    delay_ms: f64::INFINITY,
                    ..Impairment::default()
                },
            ),
            (
                "delay_ms",
                Impairment {
                    delay_ms: 1e12,
                    ..Impairment::default()
                },
            ),
            (
                "jitter_ms",
                Impairment {
                    jitter_ms: -5.0,
                    ..Impairment::default()
                },
            ),
            (
                "jitter_ms",
                Impairment {
                    jitter_ms: f64::NAN,
                    ..Impairment::default()
                },
            ),
            (
                "queue_ms",
                Impairment {
                    queue_ms: -1.0,
                    ..Impairment::default()
                },
            ),
            (
                "queue_ms",
                Impairment {
                    queue_ms: f64::NEG_INFINITY,
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(0.0),
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(-10.0),
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(f64::NAN),
                    ..Impairment::default()
                },
            ),
            (
                "bandwidth_kbps",
                Impairment {
                    bandwidth_kbps: Some(f64::INFINITY),
                    ..Impairment::default()
                },
            ),
        ];
        for (field, config) in cases {
            let message = config
                .validate()
                .expect_err(&format!("{config:?} should be rejected"));
            assert!(message.contains(field), "{message:?} does not name {field}");
            for other in [
                "loss_pct",
                "delay_ms",
                "jitter_ms",
                "queue_ms",
                "bandwidth_kbps",
            ] {
                if other != field {
                    assert!(!message.contains(other), "{message:?} names {other}");
                }
            }
        }
    }

    #[test]
    fn noop_and_config_parsing() {
        assert!(Impairment::default().is_noop());
        assert!(
            Impairment {
                queue_ms: 5.0,
                seed: 9,
                ..Impairment::default()
            }
            .is_noop()
        );
        for config in [
            Impairment {
                loss_pct: 1.0,
                ..Impairment::default()
            },
            Impairment {
                delay_ms: 1.0,
                ..Impairment::default()
            },
            Impairment {
                jitter_ms: 1.0,
                ..Impairment::default()
            },
            Impairment {
                bandwidth_kbps: Some(100.0),
                ..Impairment::default()
            },
        ] {
            assert!(!config.is_noop(), "{config:?}");
        }
        let parsed: Impairment = toml::from_str("loss_pct = 5.0\nbandwidth_kbps = 2500.0").unwrap();
        assert_eq!(
            parsed,
            Impairment {
                loss_pct: 5.0,
                bandwidth_kbps: Some(2500.0),
                ..Impairment::default()
            }
        );
        assert!(toml::from_str::<Impairment>("los_pct = 5.0").is_err());
        // A no-op link passes everything at once.
        let mut link = Link::new(&Impairment::default(), 1);
        let t0 = clock_now();
        assert_eq!(link.handle_datagram(t0, 1500), Some(t0));
    }

    #[test]
    fn link_seeds_differ_per_client_and_direction() {
        let seeds: HashSet<u64> = (0..100)
            .flat_map(|client| {
                [Direction::Up, Direction::Down].map(|direction| link_seed(1, client, direction))
            })
            .collect();
        assert_eq!(seeds.len(), 200);
        assert_eq!(
            link_seed(1, 3, Direction::Up),
            link_seed(1, 3, Direction::Up)
        );
        assert_ne!(
            link_seed(1, 3, Direction::Up),
            link_seed(2, 3, Direction::Up)
        );
    }

    #[test]
    fn timer_queue_orders_caps_and_returns_slots() {
        let queued = Arc::new(AtomicUsize::new(0));
        let t0 = clock_now();
        let mut queue = TimerQueue::new(Arc::clone(&queued), 3);
        assert!(queue.try_push(t0 + ms(20), "late").is_ok());
        assert!(queue.try_push(t0 + ms(10), "early").is_ok());
        assert!(queue.try_push(t0 + ms(10), "early, second").is_ok());
        assert_eq!(
            queue.try_push(t0 + ms(5), "over the cap"),
            Err("over the cap")
        );
        assert_eq!(queued.load(AtomicOrdering::Relaxed), 3);
        assert_eq!(queue.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(queue.pop_due(t0 + ms(9)), None);
        assert_eq!(queue.pop_due(t0 + ms(10)), Some("early"));
        assert_eq!(queue.pop_due(t0 + ms(10)), Some("early, second"));
        assert_eq!(queue.pop_due(t0 + ms(10)), None);
        assert_eq!(queued.load(AtomicOrdering::Relaxed), 1);
        // Another queue of the same direction shares the cap.
        let mut other = TimerQueue::new(Arc::clone(&queued), 3);
        assert!(other.try_push(t0, "a").is_ok());
        assert!(other.try_push(t0, "b").is_ok());
        assert!(other.try_push(t0, "c").is_err());
        drop(queue);
        drop(other);
        assert_eq!(queued.load(AtomicOrdering::Relaxed), 0);
    }

    /// A UDP echo server on loopback that records every source address it sees.
    async fn echo_server() -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>, JoinHandle<()>) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(HashSet::new()));
        let seen = Arc::clone(&sources);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                seen.lock().unwrap().insert(from);
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        (addr, sources, task)
    }

    async fn client_socket(relay: &ImpairedRelay) -> Arc<UdpSocket> {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        socket.connect(relay.addr()).await.unwrap();
        Arc::new(socket)
    }

    /// Sends one datagram and waits (bounded) for the echo; returns the round-trip time.
    #[allow(clippy::disallowed_methods)] // measures a real round trip
    async fn ping(socket: &UdpSocket, payload: &[u8]) -> Option<Duration> {
        let start = tokio::time::Instant::now();
        socket.send(payload).await.unwrap();
        let mut buf = [0u8; 64];
        let reply = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
            .await
            .ok()?;
        let len = reply.ok()?;
        assert_eq!(&buf[..len], payload);
        Some(start.elapsed())
    }

    const ROUND_TRIPS: u32 = 1000;

    /// Sends `ROUND_TRIPS` numbered datagrams, paced so no kernel buffer overflows (which
    /// would add loss the relay did not decide), and collects the echoes until 500 ms of
    /// silence. Returns the (client id, sequence number) of every echo.
    async fn exchange(socket: Arc<UdpSocket>, id: u8) -> Vec<(u8, u32)> {
        let receiver = {
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                let mut replies = Vec::new();
                let mut buf = [0u8; 64];
                while let Ok(Ok(len)) = tokio::time::timeout(ms(500), socket.recv(&mut buf)).await {
                    assert_eq!(len, 5);
                    let seq = u32::from_be_bytes(buf[1..5].try_into().unwrap());
                    replies.push((buf[0], seq));
                }
                replies
            })
        };
        for seq in 0..ROUND_TRIPS {
            let mut payload = [id; 5];
            payload[1..].copy_from_slice(&seq.to_be_bytes());
            socket.send(&payload).await.unwrap();
            if seq % 20 == 19 {
                tokio::time::sleep(ms(2)).await;
            }
        }
        receiver.await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_keeps_clients_apart_and_loses_on_both_hops() {
        let (server, sources, _server_task) = echo_server().await;
        let config = Impairment {
            loss_pct: 20.0,
            seed: 42,
            ..Impairment::default()
        };
        let relay = ImpairedRelay::start(server, config).await.unwrap();
        let a = client_socket(&relay).await;
        let b = client_socket(&relay).await;
        let own = [a.local_addr().unwrap(), b.local_addr().unwrap()];
        // Client a first, so it is client index 0.
        a.send(&[9]).await.unwrap();
        let mut buf = [0u8; 8];
        // Lost on either hop 36 % of the time; counted below either way.
        let probe_echoed = matches!(
            tokio::time::timeout(ms(300), a.recv(&mut buf)).await,
            Ok(Ok(1))
        );

        let (replies_a, replies_b) =
            tokio::join!(exchange(Arc::clone(&a), 1), exchange(Arc::clone(&b), 2));
        for (id, replies) in [(1, &replies_a), (2, &replies_b)] {
            assert!(
                replies.iter().all(|(from, _)| *from == id),
                "client {id} got another's echo"
            );
            let distinct: HashSet<_> = replies.iter().collect();
            assert_eq!(distinct.len(), replies.len(), "client {id} got duplicates");
        }
        let sent = 2 * ROUND_TRIPS as usize;
        let received = replies_a.len() + replies_b.len();
        let loss = 100.0 * (sent - received) as f64 / sent as f64;
        let stats = relay.stats();
        println!(
            "end-to-end loss {loss:.2} % ({} + {} of {sent} echoed); {stats:?}",
            replies_a.len(),
            replies_b.len()
        );
        assert!((30.0..=42.0).contains(&loss), "end-to-end loss {loss} %");

        let sources = sources.lock().unwrap().clone();
        assert_eq!(sources.len(), 2, "server saw {sources:?}");
        for source in &sources {
            assert!(!own.contains(source), "the server saw a client directly");
            assert_eq!(source.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        }

        assert_eq!(stats.clients, 2);
        assert_eq!(stats.clients_total, 2);
        // The probe datagram too.
        assert_eq!(stats.up.total(), sent as u64 + 1);
        assert_eq!(stats.down.total(), stats.up.passed);
        // Nothing lost outside the model: every echo the down links passed arrived.
        assert_eq!(
            stats.down.passed as usize,
            received + usize::from(probe_echoed)
        );
        assert_eq!((stats.dropped_overflow, stats.send_errors), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_delays_each_direction() {
        let (server, _sources, _server_task) = echo_server().await;
        let config = Impairment {
            delay_ms: 30.0,
            ..Impairment::default()
        };
        let relay = ImpairedRelay::start(server, config).await.unwrap();
        let socket = client_socket(&relay).await;
        for i in 0..5u8 {
            let rtt = ping(&socket, &[i]).await.expect("no loss configured");
            println!("round trip with 30 ms each way: {:.2} ms", as_ms(rtt));
            assert!(rtt >= ms(60), "round trip {rtt:?}");
            assert!(rtt < ms(560), "round trip {rtt:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_without_impairment_forwards_at_once() {
        let (server, _sources, _server_task) = echo_server().await;
        let relay = ImpairedRelay::start(server, Impairment::default())
            .await
            .unwrap();
        let socket = client_socket(&relay).await;
        let mut rtts = Vec::new();
        for i in 0..20u8 {
            rtts.push(ping(&socket, &[i]).await.expect("nothing is lost"));
        }
        rtts.sort();
        println!("no-op relay round trip: median {:.3} ms", as_ms(rtts[10]));
        // Far below the 1 ms timer granularity a queued datagram would wait for, on a quiet
        // machine; generous so a busy one passes.
        assert!(rtts[10] < ms(20), "median round trip {:?}", rtts[10]);
        assert_eq!(relay.stats().up.passed, 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_forgets_idle_clients_and_stops_when_dropped() {
        let (server, sources, _server_task) = echo_server().await;
        let relay = ImpairedRelay::start_with_idle_timeout(server, Impairment::default(), ms(150))
            .await
            .unwrap();
        let socket = client_socket(&relay).await;
        assert!(ping(&socket, b"one").await.is_some());
        assert_eq!(relay.stats().clients, 1);
        tokio::time::sleep(ms(500)).await;
        assert_eq!(relay.stats().clients, 0, "idle client kept");
        // Coming back, it is a new client with a new upstream socket.
        assert!(ping(&socket, b"two").await.is_some());
        let stats = relay.stats();
        assert_eq!((stats.clients, stats.clients_total), (1, 2));
        assert_eq!(sources.lock().unwrap().len(), 2);
        let addr = relay.addr();
        drop(relay);
        tokio::time::sleep(ms(50)).await;
        socket.send(b"three").await.unwrap();
        let mut buf = [0u8; 16];
        let reply = tokio::time::timeout(ms(300), socket.recv(&mut buf)).await;
        assert!(
            !matches!(reply, Ok(Ok(_))),
            "relay at {addr} still forwarding after drop"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn server_traffic_keeps_a_client_alive() {
        // A "server" that keeps sending to whoever wrote to it, as a media server does.
        let server_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let server = server_socket.local_addr().unwrap();
        let relay = ImpairedRelay::start_with_idle_timeout(server, Impairment::default(), ms(150))
            .await
            .unwrap();
        let socket = client_socket(&relay).await;
        socket.send(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        let (_, upstream) = server_socket.recv_from(&mut buf).await.unwrap();
        for _ in 0..25 {
            server_socket.send_to(b"media", upstream).await.unwrap();
            let len = tokio::time::timeout(ms(1000), socket.recv(&mut buf))
                .await
                .expect("media forwarded")
                .unwrap();
            assert_eq!(&buf[..len], b"media");
            tokio::time::sleep(ms(20)).await;
        }
        // 500 ms of media only, well past the 150 ms idle timeout.
        assert_eq!(relay.stats().clients, 1);
        assert_eq!(relay.stats().clients_total, 1);
    }

    #[tokio::test]
    async fn start_rejects_a_bad_config() {
        let server: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let bad = Impairment {
            loss_pct: 150.0,
            ..Impairment::default()
        };
        let error = ImpairedRelay::start(server, bad).await.err().unwrap();
        assert!(error.to_string().contains("loss_pct"), "{error}");
    }
}
