//! A userspace UDP relay that impairs the paths between WebRTC clients and one server: seeded
//! loss, delay, jitter and a bandwidth cap for load tests, chosen drops for retransmission
//! tests.
//!
//! Kernel `netem` is not available here (GUIDE §3), so impairment comes from this relay. It is
//! split the usual way (a core that is told the time, a driver that reads it):
//!
//! - [`Link`] (`relay/link.rs`) is one direction of one client's path: a deterministic model
//!   with no sockets, tasks or clock reads, holding every impairment.
//! - [`ImpairedRelay`] is the tokio driver. Clients send to [`ImpairedRelay::addr`]; each
//!   client has an `up` (client→server) and a `down` (server→client) [`Link`], seeded with
//!   [`link_seed`]. How the server reaches a client is the [`Upstream`] choice: through the
//!   relay's own socket (one client; either end may speak first) or through a socket per
//!   client (many clients, each seen by the server as its own 4-tuple).
//!
//! A WebRTC client is routed through the relay by rewriting the server's candidate in the SDP
//! it receives ([`ImpairedRelay::rewrite_offer`], or [`rewrite_candidates`] when the server's
//! address is already known).

mod link;

pub use link::*;

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::util::{lock, tokio_now};

/// A client silent for this long in both directions is forgotten (a socket of its own
/// closed), so a churn test that keeps creating clients does not leak sockets.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Datagrams held for later release, per direction, over all clients. At ~50k datagrams/s a
/// 200 ms delay holds ~10k; the cap only bounds memory when a configuration asks for more.
/// Beyond it a datagram is dropped and counted in [`RelayStats::dropped_overflow`].
pub const MAX_QUEUED: usize = 65_536;

/// Receive buffer size: the largest UDP payload, so nothing is ever truncated.
const MAX_DATAGRAM: usize = 65_536;

/// How server→client datagrams reach the relay, which decides how many clients it serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Upstream {
    /// The relay's own socket faces both ends: a datagram from the server goes to the client,
    /// anything else comes from the client and goes to the server. One client, whose address
    /// is learned from its latest datagram (or set with [`ImpairedRelay::set_client`] when
    /// the server speaks first, as a full-ICE peer does); the server sees [`ImpairedRelay::addr`].
    /// The default: a retransmission test routes one viewer and needs nothing more.
    #[default]
    Shared,
    /// Every client source address gets its own socket towards the server, so the server sees
    /// one 4-tuple per client (as it would without the relay) and its replies need no parsing
    /// to be routed; each client's down link runs on its own task, so the heavy direction
    /// (media) spreads over tasks and never waits behind another client.
    PerClient,
}

/// What an [`ImpairedRelay`] does; [`Default`] forwards everything unchanged through one
/// shared socket, to a server learned later.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where client datagrams go; `None` until [`ImpairedRelay::set_server`] or
    /// [`ImpairedRelay::rewrite_offer`] names it (datagrams before that are unroutable).
    pub server: Option<SocketAddr>,
    pub upstream: Upstream,
    /// Applied to both directions of every client's path.
    pub impairment: Impairment,
    /// Applied to server→client links only: retransmission tests lose media on its way to the
    /// client, whose NACK the server answers.
    pub drop_rule: DropRule,
    /// How long a silent client is kept; [`IDLE_TIMEOUT`] by default.
    pub idle_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            server: None,
            upstream: Upstream::default(),
            impairment: Impairment::default(),
            drop_rule: DropRule::Nothing,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Counts of an [`ImpairedRelay`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Clients currently known (not yet forgotten after the idle timeout).
    pub clients: usize,
    /// Clients ever seen; a client that comes back after being forgotten counts again.
    pub clients_total: u64,
    /// Client → server, summed over all clients.
    pub up: LinkStats,
    /// Server → client, summed over all clients.
    pub down: LinkStats,
    /// Datagrams that arrived before the address to forward them to was known.
    pub unroutable: u64,
    /// Datagrams the model passed but the relay dropped because [`MAX_QUEUED`] were already
    /// waiting, or because no upstream socket could be opened for a new client. Not part of
    /// any impairment: a non-zero value means the relay itself was overloaded.
    pub dropped_overflow: u64,
    /// Sends that failed (e.g. the server's port was closed).
    pub send_errors: u64,
}

/// A UDP relay on `127.0.0.1:0` in front of one server, impairing each client's path on its
/// own; see the module docs. Its tasks stop when this value is dropped.
pub struct ImpairedRelay {
    addr: SocketAddr,
    routes: watch::Sender<Routes>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl ImpairedRelay {
    /// Binds the relay's socket and starts forwarding; fails on an invalid impairment.
    pub async fn start(config: RelayConfig) -> Result<Self> {
        if let Err(message) = config.impairment.validate() {
            bail!("invalid impairment: {message}");
        }
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the relay's socket")?;
        let addr = socket.local_addr()?;
        let (routes, routes_rx) = watch::channel(Routes {
            server: config.server,
            ..Routes::default()
        });
        let counters = Arc::new(Counters::default());
        let listener = Listener::new(Arc::new(socket), config, routes_rx, &counters);
        let task = tokio::spawn(listener.run());
        Ok(Self {
            addr,
            routes,
            counters,
            task,
        })
    }

    /// Where clients (and, with [`Upstream::Shared`], the server) send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points the relay at `server`. Clients with a socket of their own are forgotten (their
    /// sockets face the old server) and start afresh with their next datagram.
    pub fn set_server(&self, server: SocketAddr) {
        self.routes
            .send_modify(|routes| routes.server = Some(server));
    }

    pub fn server(&self) -> Option<SocketAddr> {
        self.routes.borrow().server
    }

    /// With [`Upstream::Shared`], the client the server's datagrams go to, before the client
    /// has sent anything (otherwise it is learned from its datagrams). Ignored otherwise.
    pub fn set_client(&self, client: SocketAddr) {
        *lock(&self.counters.client) = Some(client);
        self.routes
            .send_modify(|routes| routes.client = Some(client));
    }

    /// The latest client: set with [`set_client`](Self::set_client) or learned from a
    /// datagram.
    pub fn client(&self) -> Option<SocketAddr> {
        *lock(&self.counters.client)
    }

    /// The payload types [`DropRule::EveryNthVideo`] counts as video.
    pub fn set_video_payload_types(&self, payload_types: impl IntoIterator<Item = u8>) {
        let payload_types: Vec<u8> = payload_types.into_iter().collect();
        self.routes
            .send_modify(|routes| routes.video_payload_types = payload_types);
    }

    /// Routes the receiver of `sdp` through this relay: learns the server address from the
    /// first UDP candidate and the video payload types from the `m=video` sections, and
    /// returns the SDP with that candidate pointing at the relay (other candidates, which
    /// would bypass it, removed). Call it on every offer; later calls refresh what was learned.
    pub fn rewrite_offer(&self, sdp: &str) -> Result<String> {
        let (rewritten, server) = rewrite_candidates(sdp, self.addr);
        let Some(server) = server else {
            bail!("no UDP candidate in the SDP to route through the relay:\n{sdp}");
        };
        let video = video_payload_types(sdp);
        // One change, so the relay never sees the new server with the old payload types.
        self.routes.send_if_modified(|routes| {
            let changed = routes.server != Some(server) || routes.video_payload_types != video;
            routes.server = Some(server);
            routes.video_payload_types = video;
            changed
        });
        Ok(rewritten)
    }

    /// The (SSRC, seq) of every packet the drop rule dropped, over all clients, in drop order.
    pub fn dropped(&self) -> Vec<(u32, u16)> {
        lock(&self.counters.dropped).clone()
    }

    /// Counts since start, summed over all clients (forgotten ones included).
    pub fn stats(&self) -> RelayStats {
        let counters = &self.counters;
        let load = |counter: &AtomicU64| counter.load(AtomicOrdering::Relaxed);
        RelayStats {
            clients: counters.clients.load(AtomicOrdering::Relaxed),
            clients_total: load(&counters.clients_total),
            up: counters.up.load(),
            down: counters.down.load(),
            unroutable: load(&counters.unroutable),
            dropped_overflow: load(&counters.dropped_overflow),
            send_errors: load(&counters.send_errors),
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

/// Rewrites the candidates of `sdp` so the peer reaches `to` instead: the first UDP candidate's
/// address (and every candidate line naming the same address and port, as BUNDLE repeats it)
/// becomes `to`; candidate lines naming another address are removed. Returns the new SDP and
/// the original address of the first UDP candidate.
pub fn rewrite_candidates(sdp: &str, to: SocketAddr) -> (String, Option<SocketAddr>) {
    let mut original: Option<(String, String)> = None;
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        let Some(candidate) = body.strip_prefix("a=candidate:") else {
            out.push_str(line);
            continue;
        };
        // foundation component transport priority address port "typ" type ...
        let fields: Vec<&str> = candidate.split_whitespace().collect();
        if fields.len() < 8 || !fields[2].eq_ignore_ascii_case("udp") {
            continue;
        }
        let here = (fields[4].to_owned(), fields[5].to_owned());
        match &original {
            None => original = Some(here),
            Some(first) if *first == here => {}
            Some(_) => continue,
        }
        let mut rewritten = fields.clone();
        let ip = to.ip().to_string();
        let port = to.port().to_string();
        rewritten[4] = &ip;
        rewritten[5] = &port;
        out.push_str("a=candidate:");
        out.push_str(&rewritten.join(" "));
        out.push_str(ending);
    }
    let server = original.and_then(|(ip, port)| format!("{ip}:{port}").parse().ok());
    (out, server)
}

/// Payload types of the media codecs (not RTX, RED or FEC) in the `m=video` sections of `sdp`.
pub fn video_payload_types(sdp: &str) -> Vec<u8> {
    let mut in_video = false;
    let mut payload_types = Vec::new();
    for line in sdp.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            in_video = media.starts_with("video");
        } else if let Some(rtpmap) = line.strip_prefix("a=rtpmap:").filter(|_| in_video) {
            let mut parts = rtpmap.split_whitespace();
            let (Some(pt), Some(codec)) = (parts.next(), parts.next()) else {
                continue;
            };
            let name = codec
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if matches!(name.as_str(), "rtx" | "red" | "ulpfec" | "flexfec-03") {
                continue;
            }
            if let Ok(pt) = pt.parse() {
                payload_types.push(pt);
            }
        }
    }
    payload_types
}

// ── The driver ───────────────────────────────────────────────────────────────────────────────

/// What the handle tells the tasks, as state: each task applies the latest before it handles
/// its next datagram, so a change made before a datagram arrives is never missed.
#[derive(Debug, Clone, Default, PartialEq)]
struct Routes {
    server: Option<SocketAddr>,
    /// The [`Upstream::Shared`] client named by [`ImpairedRelay::set_client`].
    client: Option<SocketAddr>,
    video_payload_types: Vec<u8>,
}

/// What the tasks tell the handle: counts (atomics, as every datagram updates them), the
/// latest client and the drop rule's choices (locked only when they change).
#[derive(Default)]
struct Counters {
    clients: AtomicUsize,
    clients_total: AtomicU64,
    up: AtomicLinkStats,
    down: AtomicLinkStats,
    unroutable: AtomicU64,
    dropped_overflow: AtomicU64,
    send_errors: AtomicU64,
    /// Datagrams waiting in the down queues of all clients, against [`MAX_QUEUED`].
    queued_down: Arc<AtomicUsize>,
    /// See [`ImpairedRelay::client`].
    client: Mutex<Option<SocketAddr>>,
    /// One entry per chosen drop. A link drops each (SSRC, seq) once at most, so this stays
    /// under 65,536 entries per SSRC and client (see [`DropPolicy`]).
    dropped: Mutex<Vec<(u32, u16)>>,
}

impl Counters {
    fn new_client(&self, addr: SocketAddr, known: usize) {
        bump(&self.clients_total);
        self.clients.store(known, AtomicOrdering::Relaxed);
        *lock(&self.client) = Some(addr);
    }
}

#[derive(Default)]
struct AtomicLinkStats {
    passed: AtomicU64,
    dropped_rule: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
}

impl AtomicLinkStats {
    fn count(&self, verdict: Verdict) {
        bump(match verdict {
            Verdict::Pass(_) => &self.passed,
            Verdict::Chosen { .. } => &self.dropped_rule,
            Verdict::Loss => &self.dropped_loss,
            Verdict::QueueFull => &self.dropped_queue,
        });
    }

    fn load(&self) -> LinkStats {
        LinkStats {
            passed: self.passed.load(AtomicOrdering::Relaxed),
            dropped_rule: self.dropped_rule.load(AtomicOrdering::Relaxed),
            dropped_loss: self.dropped_loss.load(AtomicOrdering::Relaxed),
            dropped_queue: self.dropped_queue.load(AtomicOrdering::Relaxed),
        }
    }
}

/// Counts one event; relaxed, as the counters order nothing and are read only as totals.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, AtomicOrdering::Relaxed);
}

/// The relay's clock: read once per wake-up, through tokio so a paused test clock would
/// apply; `into_std` because the model works in std instants.
fn clock_now() -> Instant {
    tokio_now().into_std()
}

/// The listening task: every datagram at the relay's socket, the client table and idle
/// expiry; with [`Upstream::Shared`] also the server→client direction.
struct Listener {
    socket: Arc<UdpSocket>,
    upstream: Upstream,
    template: LinkTemplate,
    idle_timeout: Duration,
    routes: watch::Receiver<Routes>,
    /// What of `routes` was applied last.
    applied: Routes,
    counters: Arc<Counters>,
    /// The next client's index, for [`link_seed`].
    next_index: u64,
    /// Subtracted from instants the down tasks store as nanoseconds.
    epoch: Instant,
    up: Outbox,
    /// Server→client datagrams of the shared client.
    down: Outbox,
    /// [`Upstream::Shared`]: the one client.
    shared_client: Option<SharedClient>,
    /// [`Upstream::PerClient`]: every client, by source address.
    clients: HashMap<SocketAddr, Client>,
}

/// The client of an [`Upstream::Shared`] relay; both its links run on the listening task.
struct SharedClient {
    addr: SocketAddr,
    up: Link,
    down: Link,
    last_seen: Instant,
}

/// A client of an [`Upstream::PerClient`] relay, owned by the listening task.
struct Client {
    upstream: Arc<UdpSocket>,
    up: Link,
    last_up: Instant,
    /// Nanoseconds after the listener's epoch of the last server→client datagram, written by
    /// the client's down task.
    last_down_ns: Arc<AtomicU64>,
    down_task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.down_task.abort();
    }
}

impl Listener {
    fn new(
        socket: Arc<UdpSocket>,
        config: RelayConfig,
        routes: watch::Receiver<Routes>,
        counters: &Arc<Counters>,
    ) -> Self {
        let applied = routes.borrow().clone();
        let queued_down = Arc::clone(&counters.queued_down);
        Self {
            socket,
            upstream: config.upstream,
            template: LinkTemplate {
                impairment: config.impairment,
                drop_rule: config.drop_rule,
            },
            idle_timeout: config.idle_timeout,
            routes,
            applied,
            counters: Arc::clone(counters),
            next_index: 0,
            epoch: clock_now(),
            up: Outbox::new(Direction::Up, Arc::new(AtomicUsize::new(0)), counters),
            down: Outbox::new(Direction::Down, queued_down, counters),
            shared_client: None,
            clients: HashMap::new(),
        }
    }

    async fn run(mut self) {
        let socket = Arc::clone(&self.socket);
        let mut alarm = Alarm::new();
        let mut sweep = tokio::time::interval(
            (self.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = clock_now();
            self.up.flush(now).await;
            self.down.flush(now).await;
            let deadlines = [self.up.next_deadline(), self.down.next_deadline()];
            alarm.set(deadlines.into_iter().flatten().min());
            tokio::select! {
                () = alarm.ring(), if alarm.is_armed() => {}
                received = socket.recv_from(&mut buf) => {
                    // Errors on an unconnected UDP socket (ICMP port unreachable on some
                    // platforms) are transient; keep relaying.
                    let Ok((len, from)) = received else { continue };
                    self.handle_datagram(clock_now(), from, &buf[..len]).await;
                }
                _ = sweep.tick() => self.forget_idle(clock_now()),
            }
        }
    }

    async fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.apply_routes(now);
        let server = self.applied.server;
        if server == Some(from) {
            // Server → client through the relay's own socket: only a shared client is reached
            // that way.
            let Some(client) = &mut self.shared_client else {
                bump(&self.counters.unroutable);
                return;
            };
            client.last_seen = now;
            let verdict = client.down.judge(now, datagram);
            let to = client.addr;
            self.down
                .handle(now, verdict, datagram, &self.socket, to)
                .await;
            return;
        }
        let Some(server) = server else {
            if self.upstream == Upstream::Shared {
                // Learned all the same, so the server's first datagrams reach the client.
                self.learn_shared_client(from, now);
            }
            bump(&self.counters.unroutable);
            return;
        };
        let (verdict, socket) = match self.upstream {
            Upstream::Shared => {
                let socket = Arc::clone(&self.socket);
                let client = self.learn_shared_client(from, now);
                (client.up.judge(now, datagram), socket)
            }
            Upstream::PerClient => {
                let Some(client) = self.per_client(from, server, now) else {
                    bump(&self.counters.dropped_overflow);
                    return;
                };
                client.last_up = now;
                (client.up.judge(now, datagram), Arc::clone(&client.upstream))
            }
        };
        self.up
            .handle(now, verdict, datagram, &socket, server)
            .await;
    }

    /// Applies what the handle changed since the last datagram.
    fn apply_routes(&mut self, now: Instant) {
        if !self.routes.has_changed().unwrap_or(false) {
            return;
        }
        let routes = self.routes.borrow_and_update().clone();
        let previous = mem::replace(&mut self.applied, routes);
        if self.applied.server != previous.server && !self.clients.is_empty() {
            // Their sockets are connected to the old server.
            self.clients.clear();
            self.counters.clients.store(0, AtomicOrdering::Relaxed);
        }
        if self.applied.video_payload_types != previous.video_payload_types
            && let Some(client) = &mut self.shared_client
        {
            let payload_types = self.applied.video_payload_types.iter().copied();
            client.down.set_video_payload_types(payload_types);
        }
        if self.applied.client != previous.client
            && let Some(client) = self.applied.client
            && self.upstream == Upstream::Shared
        {
            self.learn_shared_client(client, now);
        }
    }

    /// The shared client is at `addr` now: a client moving to another address (an ICE agent
    /// switching local candidates) keeps its links, as the path is the same one.
    fn learn_shared_client(&mut self, addr: SocketAddr, now: Instant) -> &mut SharedClient {
        let client = self.shared_client.get_or_insert_with(|| {
            let video = &self.applied.video_payload_types;
            let (up, down) = self.template.links(self.next_index, video);
            self.next_index += 1;
            self.counters.new_client(addr, 1);
            SharedClient {
                addr,
                up,
                down,
                last_seen: now,
            }
        });
        if client.addr != addr {
            client.addr = addr;
            *lock(&self.counters.client) = Some(addr);
        }
        client.last_seen = now;
        client
    }

    /// The client at `from`, opened on its first datagram; `None` when no socket could be
    /// opened for it.
    fn per_client(
        &mut self,
        from: SocketAddr,
        server: SocketAddr,
        now: Instant,
    ) -> Option<&mut Client> {
        let known = self.clients.len();
        let entry = match self.clients.entry(from) {
            Entry::Occupied(entry) => return Some(entry.into_mut()),
            Entry::Vacant(entry) => entry,
        };
        let video = &self.applied.video_payload_types;
        let (up, down) = self.template.links(self.next_index, video);
        let opened = open_upstream(server).map(|upstream| {
            let last_down_ns = Arc::new(AtomicU64::new(0));
            let down = DownTask {
                upstream: Arc::clone(&upstream),
                listener: Arc::clone(&self.socket),
                client: from,
                link: down,
                routes: self.routes.clone(),
                epoch: self.epoch,
                last_down_ns: Arc::clone(&last_down_ns),
                outbox: Outbox::new(
                    Direction::Down,
                    Arc::clone(&self.counters.queued_down),
                    &self.counters,
                ),
            };
            Client {
                upstream,
                up,
                last_up: now,
                last_down_ns,
                down_task: tokio::spawn(down.run()),
            }
        });
        match opened {
            Ok(client) => {
                self.next_index += 1;
                self.counters.new_client(from, known + 1);
                Some(entry.insert(client))
            }
            Err(error) => {
                tracing::warn!(%from, %error, "relay: no upstream socket for a new client");
                None
            }
        }
    }

    fn forget_idle(&mut self, now: Instant) {
        let timeout = self.idle_timeout;
        let idle = |last: Instant| now.saturating_duration_since(last) >= timeout;
        if self
            .shared_client
            .as_ref()
            .is_some_and(|c| idle(c.last_seen))
        {
            self.shared_client = None;
        }
        let epoch = self.epoch;
        self.clients.retain(|_, client| {
            let last_down_ns = client.last_down_ns.load(AtomicOrdering::Relaxed);
            !idle(
                client
                    .last_up
                    .max(epoch + Duration::from_nanos(last_down_ns)),
            )
        });
        let known = self.clients.len() + usize::from(self.shared_client.is_some());
        self.counters.clients.store(known, AtomicOrdering::Relaxed);
    }
}

/// What every client's links start from.
struct LinkTemplate {
    impairment: Impairment,
    /// Server→client only; see [`RelayConfig::drop_rule`].
    drop_rule: DropRule,
}

impl LinkTemplate {
    /// The up and down links of the client with this index (in order of first datagram).
    fn links(&self, index: u64, video_payload_types: &[u8]) -> (Link, Link) {
        let seed = self.impairment.seed;
        let up = Link::new(&self.impairment, link_seed(seed, index, Direction::Up));
        let mut down = Link::new(&self.impairment, link_seed(seed, index, Direction::Down))
            .with_drop_rule(self.drop_rule.clone());
        down.set_video_payload_types(video_payload_types.iter().copied());
        (up, down)
    }
}

/// Opens a client's socket towards `server`. Synchronous (std socket calls do not block for
/// UDP) so the listener never awaits while holding a table entry.
fn open_upstream(server: SocketAddr) -> std::io::Result<Arc<UdpSocket>> {
    let ip = match (server.ip(), server.ip().is_loopback()) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = std::net::UdpSocket::bind((ip, 0))?;
    // Connected: only the server's datagrams are received.
    socket.connect(server)?;
    socket.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(socket)?))
}

/// One [`Upstream::PerClient`] client's server→client task: reads the client's own socket.
struct DownTask {
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    link: Link,
    routes: watch::Receiver<Routes>,
    epoch: Instant,
    last_down_ns: Arc<AtomicU64>,
    outbox: Outbox,
}

impl DownTask {
    async fn run(mut self) {
        let mut alarm = Alarm::new();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let now = clock_now();
            self.outbox.flush(now).await;
            alarm.set(self.outbox.next_deadline());
            tokio::select! {
                () = alarm.ring(), if alarm.is_armed() => {}
                received = self.upstream.recv(&mut buf) => {
                    // A connected socket reports an ICMP error (server port closed) once;
                    // the relay carries on like the network would.
                    let Ok(len) = received else { continue };
                    let now = clock_now();
                    if self.routes.has_changed().unwrap_or(false) {
                        let routes = self.routes.borrow_and_update();
                        let payload_types = routes.video_payload_types.iter().copied();
                        self.link.set_video_payload_types(payload_types);
                    }
                    let since_epoch = now.saturating_duration_since(self.epoch).as_nanos();
                    self.last_down_ns.store(
                        u64::try_from(since_epoch).unwrap_or(u64::MAX),
                        AtomicOrdering::Relaxed,
                    );
                    let verdict = self.link.judge(now, &buf[..len]);
                    self.outbox
                        .handle(now, verdict, &buf[..len], &self.listener, self.client)
                        .await;
                }
            }
        }
    }
}

/// One direction's output in one task: carries out a link's verdicts, sending a datagram at
/// once, holding it until its release instant, or recording why it was dropped.
struct Outbox {
    direction: Direction,
    pending: TimerQueue<Outgoing>,
    counters: Arc<Counters>,
}

/// A datagram held for later, and where it goes.
struct Outgoing {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl Outbox {
    fn new(direction: Direction, queued: Arc<AtomicUsize>, counters: &Arc<Counters>) -> Self {
        Self {
            direction,
            pending: TimerQueue::new(queued, MAX_QUEUED),
            counters: Arc::clone(counters),
        }
    }

    async fn handle(
        &mut self,
        now: Instant,
        verdict: Verdict,
        datagram: &[u8],
        socket: &Arc<UdpSocket>,
        to: SocketAddr,
    ) {
        let stats = match self.direction {
            Direction::Up => &self.counters.up,
            Direction::Down => &self.counters.down,
        };
        stats.count(verdict);
        match verdict {
            Verdict::Pass(at) if at <= now => self.send(socket, to, datagram).await,
            Verdict::Pass(at) => {
                let held = Outgoing {
                    socket: Arc::clone(socket),
                    to,
                    data: datagram.to_vec(),
                };
                if self.pending.try_push(at, held).is_err() {
                    bump(&self.counters.dropped_overflow);
                }
            }
            Verdict::Chosen { ssrc, seq } => lock(&self.counters.dropped).push((ssrc, seq)),
            Verdict::Loss | Verdict::QueueFull => {}
        }
    }

    /// Sends every held datagram that is due.
    async fn flush(&mut self, now: Instant) {
        while let Some(held) = self.pending.pop_due(now) {
            self.send(&held.socket, held.to, &held.data).await;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending.next_deadline()
    }

    /// Awaits writability rather than `try_send_to`, which tokio refuses on a socket the
    /// reactor has not yet reported writable (every new client's first datagram). A failed
    /// send is loss, as UDP has anyway; it is counted.
    async fn send(&self, socket: &UdpSocket, to: SocketAddr, data: &[u8]) {
        if socket.send_to(data, to).await.is_err() {
            bump(&self.counters.send_errors);
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    // Shared with the core's tests in `link`.
    pub(super) fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    pub(super) fn as_ms(duration: Duration) -> f64 {
        duration.as_secs_f64() * 1000.0
    }

    /// A minimal RTP header (RFC 3550 §5.1) with a 4-byte payload.
    pub(super) fn rtp(payload_type: u8, seq: u16, ssrc: u32) -> Vec<u8> {
        let mut packet = vec![0x80, payload_type];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&1234u32.to_be_bytes());
        packet.extend_from_slice(&ssrc.to_be_bytes());
        packet.extend_from_slice(&[1, 2, 3, 4]);
        packet
    }

    /// A relay with a socket per client in front of `server`.
    async fn per_client_relay(server: SocketAddr, impairment: Impairment) -> ImpairedRelay {
        per_client_relay_with_idle_timeout(server, impairment, IDLE_TIMEOUT).await
    }

    async fn per_client_relay_with_idle_timeout(
        server: SocketAddr,
        impairment: Impairment,
        idle_timeout: Duration,
    ) -> ImpairedRelay {
        ImpairedRelay::start(RelayConfig {
            server: Some(server),
            upstream: Upstream::PerClient,
            impairment,
            idle_timeout,
            ..RelayConfig::default()
        })
        .await
        .unwrap()
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
        let relay = per_client_relay(server, config).await;
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
        let relay = per_client_relay(server, config).await;
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
        let relay = per_client_relay(server, Impairment::default()).await;
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
        let relay =
            per_client_relay_with_idle_timeout(server, Impairment::default(), ms(150)).await;
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
        let relay =
            per_client_relay_with_idle_timeout(server, Impairment::default(), ms(150)).await;
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

    /// The shared socket runs the same links as a socket per client: a server that speaks
    /// first reaches the client named by `set_client`, delayed, with chosen drops; the
    /// client's reply reaches the server from the relay's own address, delayed too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::disallowed_methods)] // measures a real delay
    async fn shared_relay_delays_and_drops_like_the_others() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let relay = ImpairedRelay::start(RelayConfig {
            server: Some(server.local_addr().unwrap()),
            impairment: Impairment {
                delay_ms: 30.0,
                ..Impairment::default()
            },
            drop_rule: DropRule::EveryNthVideo(2),
            ..RelayConfig::default()
        })
        .await
        .unwrap();
        relay.set_video_payload_types([96]);
        relay.set_client(client.local_addr().unwrap());
        let sent = tokio::time::Instant::now();
        for seq in 1..=4 {
            server
                .send_to(&rtp(96, seq, 7), relay.addr())
                .await
                .unwrap();
        }
        let mut buf = [0u8; 64];
        for expected in [1, 3] {
            let len = tokio::time::timeout(ms(2000), client.recv(&mut buf))
                .await
                .expect("media forwarded")
                .unwrap();
            assert_eq!(&buf[..len], rtp(96, expected, 7));
        }
        assert!(
            sent.elapsed() >= ms(30),
            "not delayed: {:?}",
            sent.elapsed()
        );
        assert_eq!(relay.dropped(), [(7, 2), (7, 4)]);

        client.send_to(b"reply", relay.addr()).await.unwrap();
        let (len, from) = tokio::time::timeout(ms(2000), server.recv_from(&mut buf))
            .await
            .expect("reply forwarded")
            .unwrap();
        assert_eq!((&buf[..len], from), (&b"reply"[..], relay.addr()));
        let stats = relay.stats();
        assert_eq!((stats.up.passed, stats.down.passed), (1, 2));
        assert_eq!((stats.down.dropped_rule, stats.clients_total), (2, 1));
        assert_eq!(relay.client(), Some(client.local_addr().unwrap()));
    }

    #[tokio::test]
    async fn start_rejects_a_bad_config() {
        let server: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let bad = Impairment {
            loss_pct: 150.0,
            ..Impairment::default()
        };
        let error = ImpairedRelay::start(RelayConfig {
            server: Some(server),
            impairment: bad,
            ..RelayConfig::default()
        })
        .await
        .err()
        .unwrap();
        assert!(error.to_string().contains("loss_pct"), "{error}");
    }
}
