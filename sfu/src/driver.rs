//! The thin async driver: one task owns the [`Sfu`] core, the UDP socket(s) and the clock.
//!
//! Other tasks talk to it through a cloneable [`SfuHandle`] over a bounded channel with
//! oneshot replies (GUIDE §2.4). Events for a peer go to the channel registered with that
//! peer; room-level events (tracks changed) go to one channel given at start.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rtc::peer_connection::transport::RTCIceCandidateInit;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::load::{Ingress, LoadMeter, OVERLOAD_DEFERRED_HANDSHAKES};
use crate::shard::{MAX_SHARDS, Shard};
use crate::udp::{Batch, EgressPool, HOLD_LIMIT, MAX_DATAGRAM, SEND_BATCH, Sockets, read_socket};
use crate::{Datagram, PeerId, Relay, Role, RoomId, Sfu, SfuConfig, SfuError, SfuEvent, SfuStats};

/// Commands queued to the driver. Sized for a join spike: 1024 pending signaling operations
/// before callers wait (they are backpressured, not dropped).
pub const COMMAND_QUEUE: usize = 1024;
/// Datagrams read from the sockets but not yet handed to the core. When full, reader tasks
/// stop reading and the kernel's socket buffer absorbs (or drops) the excess. What waits here
/// too long is dropped by age anyway (`SfuConfig::max_ingress_delay`).
pub const DATAGRAM_QUEUE: usize = 8192;
/// Media packets another shard relayed to this one (one per packet of a track this shard has
/// viewers of) but not yet handled. When full, the sending shard drops them (counted as
/// dropped datagrams): this shard is behind, and the packets would arrive stale. Other
/// relayed messages (catalogs, watches, keyframe requests) are rare and never dropped.
pub const RELAY_QUEUE: usize = 8192;

/// A viewer joins its room's home shard unless that shard holds more than this many peers
/// above the least loaded one; then it joins the least loaded one, which mirrors the room.
/// Small rooms stay whole on one shard (no relay cost); a large event spreads over all.
pub const VIEWER_HOME_SLACK: usize = 16;

/// A media socket and the address clients reach it at (its candidate).
pub struct MediaSocket {
    pub socket: UdpSocket,
    /// Advertised in SDP; differs from the bound address behind 1:1 NAT or on a wildcard bind.
    pub advertised: SocketAddr,
}

/// Handle to a running SFU: its shards' command queues. Cheap to clone. A new host goes to
/// its room's home shard, a new viewer to a shard chosen by load (see [`VIEWER_HOME_SLACK`]),
/// and every later command to the shard of its peer (an id names its shard).
#[derive(Clone)]
pub struct SfuHandle {
    shards: Arc<[mpsc::Sender<Command>]>,
    /// Peers placed on each shard by this handle and its clones, and not removed.
    placed: Arc<[AtomicUsize]>,
}

/// Where a shard sends what it relays to another shard.
#[derive(Clone)]
struct RelayLink {
    media: mpsc::Sender<(Instant, Relay)>,
    control: mpsc::UnboundedSender<Relay>,
}

enum Command {
    AddPeer {
        room: RoomId,
        role: Role,
        events: mpsc::Sender<SfuEvent>,
        reply: oneshot::Sender<Result<PeerId, SfuError>>,
    },
    AddPeerWithOffer {
        room: RoomId,
        role: Role,
        offer: String,
        events: mpsc::Sender<SfuEvent>,
        reply: oneshot::Sender<Result<(PeerId, String), SfuError>>,
    },
    Offer {
        peer: PeerId,
        sdp: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    RestartIce {
        peer: PeerId,
        ufrag: String,
        pwd: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Answer {
        peer: PeerId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Candidate {
        peer: PeerId,
        candidate: RTCIceCandidateInit,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    RemovePeer {
        peer: PeerId,
    },
    Stats {
        reply: oneshot::Sender<SfuStats>,
    },
}

impl SfuHandle {
    /// Adds a peer; `events` receives its [`SfuEvent::Offer`] and [`SfuEvent::Connection`]
    /// events (sent with `try_send`: a session that stops reading misses events, it does not
    /// stall the SFU).
    pub async fn add_peer(
        &self,
        room: RoomId,
        role: Role,
        events: mpsc::Sender<SfuEvent>,
    ) -> Result<PeerId, SfuError> {
        self.add(&room.clone(), role, |reply| Command::AddPeer {
            room,
            role,
            events,
            reply,
        })
        .await
    }

    /// Adds a peer from a client's offer (WHIP, WHEP) and returns it with the answer; see
    /// [`Sfu::add_peer_with_offer`].
    pub async fn add_peer_with_offer(
        &self,
        room: RoomId,
        role: Role,
        offer: String,
        events: mpsc::Sender<SfuEvent>,
    ) -> Result<(PeerId, String), SfuError> {
        self.add(&room.clone(), role, |reply| Command::AddPeerWithOffer {
            room,
            role,
            offer,
            events,
            reply,
        })
        .await
    }

    /// Restarts ICE with the client's new credentials; see [`Sfu::restart_ice`].
    pub async fn restart_ice(
        &self,
        peer: PeerId,
        ufrag: String,
        pwd: String,
    ) -> Result<String, SfuError> {
        self.call(self.shard_of(peer), |reply| Command::RestartIce {
            peer,
            ufrag,
            pwd,
            reply,
        })
        .await?
    }

    pub async fn offer(&self, peer: PeerId, sdp: String) -> Result<String, SfuError> {
        self.call(self.shard_of(peer), |reply| Command::Offer {
            peer,
            sdp,
            reply,
        })
        .await?
    }

    pub async fn answer(&self, peer: PeerId, sdp: String) -> Result<(), SfuError> {
        self.call(self.shard_of(peer), |reply| Command::Answer {
            peer,
            sdp,
            reply,
        })
        .await?
    }

    pub async fn candidate(
        &self,
        peer: PeerId,
        candidate: RTCIceCandidateInit,
    ) -> Result<(), SfuError> {
        self.call(self.shard_of(peer), |reply| Command::Candidate {
            peer,
            candidate,
            reply,
        })
        .await?
    }

    pub async fn remove_peer(&self, peer: PeerId) {
        let shard = self.shard_of(peer);
        if self.shards[shard]
            .send(Command::RemovePeer { peer })
            .await
            .is_ok()
        {
            let _ = self.placed[shard]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Every shard's counters together (see [`SfuStats::merge`]).
    pub async fn stats(&self) -> Result<SfuStats, SfuError> {
        let mut total = self.call(0, |reply| Command::Stats { reply }).await?;
        for shard in 1..self.shards.len() {
            let stats = self.call(shard, |reply| Command::Stats { reply }).await?;
            total.merge(&stats);
        }
        Ok(total)
    }

    /// The number of forwarding shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    fn shard_of(&self, peer: PeerId) -> usize {
        Shard::of_id(peer.0, self.shards.len())
    }

    /// The shard a new peer of `room` joins: a host its room's home; a viewer the home too
    /// unless that shard holds [`VIEWER_HOME_SLACK`] more peers than the least loaded one.
    /// Counted here, as peers are placed, so a burst of joins spreads before any shard has
    /// handled them.
    fn place(&self, room: &RoomId, role: Role) -> usize {
        let home = Shard::of_room(room, self.shards.len());
        let load = |shard: usize| self.placed[shard].load(Ordering::Relaxed);
        let shard = match role {
            Role::Publisher => home,
            Role::Subscriber => {
                let least = (0..self.shards.len())
                    .min_by_key(|&s| load(s))
                    .unwrap_or(home);
                if load(home) <= load(least) + VIEWER_HOME_SLACK {
                    home
                } else {
                    least
                }
            }
        };
        self.placed[shard].fetch_add(1, Ordering::Relaxed);
        shard
    }

    /// Sends a new peer's command to the shard [`place`](Self::place) picks; a placement
    /// that did not add a peer is un-counted.
    async fn add<T>(
        &self,
        room: &RoomId,
        role: Role,
        make: impl FnOnce(oneshot::Sender<Result<T, SfuError>>) -> Command,
    ) -> Result<T, SfuError> {
        let shard = self.place(room, role);
        let added = self.call(shard, make).await.and_then(|added| added);
        if added.is_err() {
            self.placed[shard].fetch_sub(1, Ordering::Relaxed);
        }
        added
    }

    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SfuError> {
        let (tx, rx) = oneshot::channel();
        self.shards[shard]
            .send(make(tx))
            .await
            .map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)
    }
}

/// Starts the SFU on the current runtime: `config.workers` shards, each a core with a driver
/// task of its own and its own send threads, behind one reader per socket that routes each
/// datagram to its shard ([`crate::shard::Router`]). `config.candidates` is replaced by the
/// sockets' advertised addresses. The tasks end when `shutdown` completes.
pub fn run_driver(
    mut config: SfuConfig,
    sockets: Vec<MediaSocket>,
    room_events: mpsc::Sender<SfuEvent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> SfuHandle {
    config.candidates = sockets.iter().map(|s| s.advertised).collect();
    let count = config.workers.clamp(1, MAX_SHARDS);
    // One stop signal for every shard.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (commands, command_queues): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::channel(COMMAND_QUEUE)).unzip();
    let (datagrams, datagram_queues): (Vec<_>, Vec<_>) =
        (0..count).map(|_| mpsc::channel(DATAGRAM_QUEUE)).unzip();
    let (relay_links, relay_queues): (Vec<_>, Vec<_>) = (0..count)
        .map(|_| {
            let (media, media_rx) = mpsc::channel(RELAY_QUEUE);
            let (control, control_rx) = mpsc::unbounded_channel();
            (
                RelayLink { media, control },
                RelayQueues {
                    media: media_rx,
                    control: control_rx,
                },
            )
        })
        .unzip();
    let relay_links: Arc<[RelayLink]> = relay_links.into();
    let mut senders = HashMap::new();
    for s in sockets {
        // The send threads use a blocking-API handle to the same socket (one port).
        match s
            .socket
            .into_std()
            .and_then(|std| Ok((std.try_clone()?, std)))
        {
            Ok((send, receive)) => {
                senders.insert(s.advertised, Arc::new(send));
                match UdpSocket::from_std(receive) {
                    Ok(socket) => {
                        let reader = read_socket(Arc::new(socket), s.advertised, datagrams.clone());
                        tokio::spawn(reader);
                    }
                    Err(err) => tracing::error!(%err, "cannot read the media socket"),
                }
            }
            Err(err) => tracing::error!(%err, "cannot share the media socket"),
        }
    }
    let sockets = Arc::new(Sockets::new(senders));
    let certificate = crate::Certificate::generate();
    tracing::info!(gso = sockets.gso(), shards = count, "media egress");
    let queues = command_queues
        .into_iter()
        .zip(datagram_queues)
        .zip(relay_queues);
    for (index, ((commands, datagrams), relays)) in queues.enumerate() {
        // The node's send threads are shared out among the shards; a shard without one sends
        // on its driver thread (see `EgressPool`).
        let send_threads = config.node_send_threads();
        let send_threads = send_threads / count + usize::from(index < send_threads % count);
        let config = SfuConfig {
            shard: Shard { index, count },
            send_threads: Some(send_threads),
            ..config.clone()
        };
        tracing::info!(shard = index, send_threads, "media shard");
        let egress = EgressPool::start(sockets.clone(), send_threads);
        let driver = Driver {
            open: (0..egress.lanes()).map(|_| None).collect(),
            held: (0..egress.lanes()).map(|_| None).collect(),
            held_since: None,
            scratch: Vec::with_capacity(MAX_DATAGRAM),
            egress,
            ingress: Ingress::new(&config),
            load: LoadMeter::default(),
            sfu: Sfu::with_certificate(config, certificate.clone()),
            peer_events: HashMap::new(),
            room_events: room_events.clone(),
            relay_links: relay_links.clone(),
            relays_dropped: 0,
            relays_late: 0,
            more_to_send: false,
        };
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        tokio::spawn(driver.run(commands, datagrams, relays, stopped));
    }
    SfuHandle {
        shards: commands.into(),
        placed: (0..count).map(|_| AtomicUsize::new(0)).collect(),
    }
}

/// What other shards relay to one shard.
struct RelayQueues {
    media: mpsc::Receiver<(Instant, Relay)>,
    control: mpsc::UnboundedReceiver<Relay>,
}

struct Driver {
    sfu: Sfu,
    peer_events: HashMap<PeerId, mpsc::Sender<SfuEvent>>,
    room_events: mpsc::Sender<SfuEvent>,
    /// The send threads and their reused batches.
    egress: EgressPool,
    /// The batch being filled for each send thread.
    open: Vec<Option<Batch>>,
    /// A full batch each send thread had no room for, and since when the driver holds any.
    /// While one is held, media waits in the core's per-viewer queues (bounded, and cheap:
    /// descriptors, not sealed datagrams) and the driver keeps reading; past
    /// [`HOLD_LIMIT`] the held batches are dropped.
    held: Vec<Option<Batch>>,
    held_since: Option<Instant>,
    /// Where the core writes the next datagram before it joins its batch.
    scratch: Vec<u8>,
    /// Received datagrams: handled now, deferred (handshakes) or dropped (stale).
    ingress: Ingress,
    /// How long datagrams wait for the driver (admission) and how busy it is (metrics).
    load: LoadMeter,
    /// Every shard's relay queues, by index (this shard's own is never used).
    relay_links: Arc<[RelayLink]>,
    /// Relayed media packets the receiving shard had no room for (sender side), and those
    /// that waited too long here (receiver side).
    relays_dropped: u64,
    relays_late: u64,
    /// A driver that sends its own datagrams stopped after [`INLINE_SEND_TURN`] batches with
    /// more queued in the core; it reads what arrived, then goes on sending.
    more_to_send: bool,
}

/// Batches a driver that sends its own datagrams (no send threads) sends before it looks at
/// its inputs again: 256 datagrams, a few hundred microseconds. A keyframe fanned out to
/// hundreds of viewers is thousands of datagrams, tens of milliseconds of `sendmmsg`; sent in
/// one go, the host's next packets would wait that long, and past `max_ingress_delay` they
/// are dropped (a lost host packet is lost for every viewer).
const INLINE_SEND_TURN: usize = 8;

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut datagrams: mpsc::Receiver<(Instant, Datagram)>,
        mut relays: RelayQueues,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut woke = None;
        loop {
            self.flush();
            if let Some(at) = woke.take() {
                self.load.record_busy(at, now());
            }
            let deadline = self.sfu.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Held batches are offered again soon: a send thread drains its queue (64
            // batches) in milliseconds, and 1 ms is the timer's resolution.
            let holding = self.held_since.is_some();
            let retry = async {
                match holding {
                    true => tokio::time::sleep(Duration::from_millis(1)).await,
                    false => std::future::pending().await,
                }
            };
            // More of a fan-out to send on this thread: after the inputs, before commands.
            let more_to_send = self.more_to_send;
            let resume = async {
                if !more_to_send {
                    std::future::pending::<()>().await;
                }
            };
            let handshakes_waiting = self.ingress.deferred() > 0;
            let idle = async {
                if !handshakes_waiting {
                    std::future::pending::<()>().await;
                }
            };
            // Forwarding first: datagrams, then deadlines, then signaling's commands; deferred
            // handshake records one per burst of datagrams, and freely when nothing waits.
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((received, datagram)) = datagrams.recv() => {
                    let now = now();
                    woke = Some(now);
                    self.receive(now, received, datagram);
                    // Drain a burst without re-arming the select, bounded to keep timers
                    // and commands responsive during a flood.
                    for _ in 0..64 {
                        match datagrams.try_recv() {
                            Ok((received, datagram)) => self.receive(now, received, datagram),
                            Err(_) => break,
                        }
                    }
                    if deadline.is_some_and(|at| at <= now) {
                        self.sfu.handle_timeout(now);
                    }
                    // One handshake record per burst, so joins progress under steady load
                    // (idle moments can be rare) while forwarding keeps the first turn.
                    self.handle_deferred(now);
                }
                // Another shard's catalogs, watches and keyframe requests: rare, and what
                // the media relayed next may depend on.
                Some(relay) = relays.control.recv() => {
                    let now = now();
                    woke = Some(now);
                    self.sfu.handle_relay(now, relay);
                }
                // Packets of rooms whose home is another shard: forwarding, like datagrams.
                Some((sent, relay)) = relays.media.recv() => {
                    let now = now();
                    woke = Some(now);
                    self.receive_relay(now, sent, relay);
                    for _ in 0..64 {
                        match relays.media.try_recv() {
                            Ok((sent, relay)) => self.receive_relay(now, sent, relay),
                            Err(_) => break,
                        }
                    }
                }
                _ = sleep => {
                    let now = now();
                    woke = Some(now);
                    self.sfu.handle_timeout(now);
                }
                _ = resume => woke = Some(now()),
                Some(command) = commands.recv() => {
                    let now = now();
                    woke = Some(now);
                    self.handle_command(now, command);
                }
                _ = retry => woke = Some(now()),
                // Not counted as busy: it only fills idle time.
                _ = idle => self.handle_deferred(now()),
            }
        }
        tracing::debug!("sfu driver stopped");
    }

    /// One received datagram: to the core now, deferred, or dropped (see [`Ingress`]).
    fn receive(&mut self, now: Instant, received: Instant, datagram: Datagram) {
        self.load
            .record_wait(now.saturating_duration_since(received));
        if let Some(datagram) = self.ingress.handle(now, received, datagram) {
            self.sfu.handle_datagram(now, datagram);
        }
    }

    /// One relayed media packet: to the core, or dropped if it waited longer than a
    /// datagram may (see [`SfuConfig::max_ingress_delay`]).
    fn receive_relay(&mut self, now: Instant, sent: Instant, relay: Relay) {
        let waited = now.saturating_duration_since(sent);
        self.load.record_wait(waited);
        if waited > self.sfu.config().max_ingress_delay {
            self.relays_late += 1;
            return;
        }
        self.sfu.handle_relay(now, relay);
    }

    /// The next deferred handshake record still worth handling, if any.
    fn handle_deferred(&mut self, now: Instant) {
        if let Some(datagram) = self.ingress.poll_deferred(now) {
            self.sfu.handle_datagram(now, datagram);
        }
    }

    /// Whether new peers are refused: datagrams wait longer than the limit for the driver, or
    /// so many handshakes wait that a new one would time out in the queue.
    fn overloaded(&mut self, now: Instant) -> bool {
        let limit = self.sfu.config().overload_ingress_wait;
        self.load.falling_behind(now, limit)
            || self.ingress.deferred() >= OVERLOAD_DEFERRED_HANDSHAKES
    }

    fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::AddPeer {
                room,
                role,
                events,
                reply,
            } => {
                if self.overloaded(now) {
                    let _ = reply.send(Err(SfuError::Overloaded));
                    return;
                }
                let result = self.sfu.add_peer(now, &room, role);
                if let Ok(peer) = &result {
                    self.peer_events.insert(*peer, events);
                }
                let _ = reply.send(result);
            }
            Command::AddPeerWithOffer {
                room,
                role,
                offer,
                events,
                reply,
            } => {
                if self.overloaded(now) {
                    let _ = reply.send(Err(SfuError::Overloaded));
                    return;
                }
                let result = self.sfu.add_peer_with_offer(now, &room, role, &offer);
                if let Ok((peer, _)) = &result {
                    self.peer_events.insert(*peer, events);
                }
                let _ = reply.send(result);
            }
            Command::RestartIce {
                peer,
                ufrag,
                pwd,
                reply,
            } => {
                let _ = reply.send(self.sfu.restart_ice(now, peer, &ufrag, &pwd));
            }
            Command::Offer { peer, sdp, reply } => {
                let _ = reply.send(self.sfu.handle_offer(now, peer, &sdp));
            }
            Command::Answer { peer, sdp, reply } => {
                let _ = reply.send(self.sfu.handle_answer(now, peer, &sdp));
            }
            Command::Candidate {
                peer,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.sfu.handle_candidate(now, peer, candidate));
            }
            Command::RemovePeer { peer } => {
                self.sfu.remove_peer(now, peer);
                self.peer_events.remove(&peer);
            }
            Command::Stats { reply } => {
                let ingress = self.ingress.stats();
                let core = self.sfu.stats();
                let send_lost = self.egress.counters().dropped.load(Ordering::Relaxed);
                let _ = reply.send(SfuStats {
                    datagrams_late: ingress.late + ingress.deferred_overflow + self.relays_late,
                    datagrams_dropped: core.datagrams_dropped + send_lost + self.relays_dropped,
                    busy_pct: (self.load.busy_fraction() * 100.0).round() as u64,
                    handshakes_waiting: self.ingress.deferred() as u64,
                    ..core
                });
            }
        }
    }

    /// Hands everything the core has to send to the send threads, in batches, delivers its
    /// events, and passes what it relays to other shards.
    fn flush(&mut self) {
        // Relays first: the other shards seal their viewers' copies while this one seals
        // its own.
        let mut sent = None;
        while let Some(relay) = self.sfu.poll_relay() {
            let Some(link) = self.relay_links.get(relay.to) else {
                continue;
            };
            if relay.is_media() {
                let sent = *sent.get_or_insert_with(now);
                if link.media.try_send((sent, relay)).is_err() {
                    self.relays_dropped += 1;
                }
            } else {
                let _ = link.control.send(relay);
            }
        }
        if self.hand_over_held() {
            self.send_queued();
        }
        while let Some(event) = self.sfu.poll_event() {
            match &event {
                SfuEvent::Offer { peer, .. } | SfuEvent::Connection { peer, .. } => {
                    if let Some(tx) = self.peer_events.get(peer) {
                        let _ = tx.try_send(event);
                    }
                }
                SfuEvent::Tracks { .. } => {
                    let _ = self.room_events.try_send(event);
                }
            }
        }
    }

    /// One open batch per send thread; each datagram goes to its destination's thread (order
    /// per viewer kept). A full batch is handed over at once, the rest when the core has
    /// nothing more: never waiting to fill one, so a lone datagram leaves at once. The
    /// datagram is written into `scratch`, then swapped (not copied) into its batch. A batch
    /// a full queue refuses is held, and the rest of the media stays in the core.
    fn send_queued(&mut self) {
        // Full batches handed over; a driver that sends them itself stops at its turn.
        let mut handed = 0;
        let turn = if self.egress.inline() {
            INLINE_SEND_TURN
        } else {
            usize::MAX
        };
        self.more_to_send = false;
        while let Some(transmit) = self.sfu.poll_transmit(&mut self.scratch) {
            let thread = self.egress.thread_for(transmit.remote);
            let batch = match &mut self.open[thread] {
                Some(batch) => batch,
                empty => empty.insert(self.egress.batch()),
            };
            let slot = batch.dests.len();
            std::mem::swap(&mut batch.bufs[slot], &mut self.scratch);
            batch.dests.push(transmit);
            if batch.dests.len() == SEND_BATCH
                && let Some(full) = self.open[thread].take()
            {
                if let Err(full) = self.egress.submit(thread, full) {
                    self.hold(thread, full);
                    break;
                }
                handed += 1;
                if handed == turn {
                    self.more_to_send = true;
                    break;
                }
            }
        }
        for thread in 0..self.open.len() {
            // A thread with a held batch keeps its open one: it goes after the held one.
            if self.held[thread].is_some() {
                continue;
            }
            if let Some(batch) = self.open[thread].take()
                && let Err(batch) = self.egress.submit(thread, batch)
            {
                self.hold(thread, batch);
            }
        }
    }

    fn hold(&mut self, thread: usize, batch: Batch) {
        self.held[thread] = Some(batch);
        self.held_since.get_or_insert_with(now);
    }

    /// Hands held batches over; whether none is held any more (so more media may go). Held
    /// longer than [`HOLD_LIMIT`], they are dropped (counted): the send threads are not
    /// keeping up, and the media would only arrive stale.
    fn hand_over_held(&mut self) -> bool {
        let Some(since) = self.held_since else {
            return true;
        };
        for thread in 0..self.held.len() {
            if let Some(batch) = self.held[thread].take()
                && let Err(batch) = self.egress.submit(thread, batch)
            {
                self.held[thread] = Some(batch);
            }
        }
        if self.held.iter().any(Option::is_some) {
            if now().saturating_duration_since(since) < HOLD_LIMIT {
                return false;
            }
            for thread in 0..self.held.len() {
                if let Some(batch) = self.held[thread].take() {
                    self.egress.drop_batch(batch);
                }
            }
        }
        self.held_since = None;
        true
    }
}

/// The driver's one clock read. Tokio's clock, so `start_paused` tests control it.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
