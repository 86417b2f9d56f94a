//! A live room's clients: [`Host`] and [`Viewer`] join a room over the WebSocket
//! ([`crate::ws`]) and drive a [`Publisher`] or [`Subscriber`] through the server's
//! offer/answer flow, trickling their own ICE candidates. They deref to the peer they drive, so
//! `viewer.packets(MediaKind::Video)` and `host.plis_received()` work.
//!
//! Both peers use the default interceptors of `webrtc` 0.21 (NACK generator and responder,
//! RTCP reports, TWCC receiver): the subscriber NACKs lost video and the publisher answers NACKs
//! by retransmission, as a browser would. Nothing here sleeps to reach a deadline: waits are
//! driven by events (`watch` channels) and bounded by timeouts.
//!
//! Tests using these clients talk to real sockets, so they must not run on paused Tokio time
//! (`start_paused` would auto-advance the clock while the runtime waits for the network and
//! fire every timeout early).

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use marquee_protocol::wire::{ClientMessage, PROTOCOL_VERSION, Role, RoomMessage, ServerMessage};

use crate::peer::{first_mid, spawn_candidate_trickle};
use crate::publisher::{MediaConfig, Publisher};
use crate::relay::{ImpairedRelay, rewrite_candidates};
use crate::subscriber::{Subscriber, SubscriberOptions};
use crate::util::{TaskGuard, now};
use crate::ws::{Joined, RECV_TIMEOUT, ServerError, WsClient, WsReceiver, WsSender};

// ── Host ─────────────────────────────────────────────────────────────────────────────────────

/// How a [`Host`] joins and publishes.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// `None` creates a room with a fresh code.
    pub room: Option<String>,
    pub name: String,
    pub host_key: Option<String>,
    /// Access token (JWT) sent with `join`; `None` against a `--dev` server.
    pub token: Option<String>,
    pub media: MediaConfig,
    /// Start the generator once connected (otherwise call `start_media` or `send_*`).
    pub start_media: bool,
    /// Send an empty `candidate` (end of candidates) when gathering completes.
    pub end_of_candidates: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            room: None,
            name: "host".to_owned(),
            host_key: None,
            token: None,
            media: MediaConfig::default(),
            start_media: true,
            end_of_candidates: true,
        }
    }
}

/// A host publishing over a Marquee server: joins as host, offers its VP8 and Opus tracks,
/// applies the server's answer, trickles its candidates, and (by default) streams synthetic
/// media. Derefs to its [`Publisher`].
pub struct Host {
    publisher: Publisher,
    ws: WsClient,
    joined: Joined,
    _trickle: TaskGuard,
}

impl Host {
    /// Joins a fresh room with default options; returns once media is connected, with the
    /// generator started (the server learns the tracks from the first packets, just after).
    pub async fn join(server: SocketAddr) -> Result<Self> {
        Self::join_with(server, HostOptions::default()).await
    }

    pub async fn join_with(server: SocketAddr, options: HostOptions) -> Result<Self> {
        let publisher = Publisher::new(options.media.clone()).await?;
        let mut ws = WsClient::connect(server).await?;
        let joined = ws
            .join_with(ClientMessage::Room(RoomMessage::Join {
                version: PROTOCOL_VERSION,
                room: options.room.clone(),
                name: options.name.clone(),
                role: Role::Host,
                host_key: options.host_key.clone(),
                token: options.token.clone(),
            }))
            .await
            .context("host join")?;

        let offer = publisher.create_offer().await?;
        ws.send(&ClientMessage::Room(RoomMessage::Offer {
            sdp: offer.clone(),
        }))?;
        let candidates = publisher
            .peer
            .take_candidates()
            .context("candidates already taken")?;
        let trickle = spawn_candidate_trickle(
            candidates,
            ws.sender(),
            first_mid(&offer),
            options.end_of_candidates,
        );
        let answer = match ws
            .recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
            .await
            .context("waiting for the server's answer")?
        {
            ServerMessage::Answer { sdp } => sdp,
            _ => unreachable!("recv_until returned another message"),
        };
        publisher.apply_answer(&answer).await?;
        publisher
            .wait_connected(RECV_TIMEOUT)
            .await
            .context("host media connection")?;
        if options.start_media {
            publisher.start_media();
        }
        Ok(Self {
            publisher,
            ws,
            joined,
            _trickle: TaskGuard(vec![trickle]),
        })
    }

    pub fn room(&self) -> &str {
        &self.joined.room
    }

    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// The host's WebSocket, e.g. to wait for `roomState` or send `leave`.
    pub fn ws(&mut self) -> &mut WsClient {
        &mut self.ws
    }

    /// Sends a new offer on the same connection and applies the server's answer (republish).
    pub async fn renegotiate(&mut self) -> Result<()> {
        let offer = self.publisher.create_offer().await?;
        self.ws
            .send(&ClientMessage::Room(RoomMessage::Offer { sdp: offer }))?;
        let answer = match self
            .ws
            .recv_until(|m| matches!(m, ServerMessage::Answer { .. }))
            .await?
        {
            ServerMessage::Answer { sdp } => sdp,
            _ => unreachable!("recv_until returned another message"),
        };
        self.publisher.apply_answer(&answer).await
    }

    /// Stops media, closes the peer connection and the WebSocket (gracefully: a close frame).
    /// Dropping a `Host` instead is an abrupt disconnect.
    pub async fn close(self) -> Result<()> {
        let Self { publisher, ws, .. } = self;
        let closed = publisher.close().await;
        ws.close().await;
        closed
    }
}

impl Deref for Host {
    type Target = Publisher;

    fn deref(&self) -> &Publisher {
        &self.publisher
    }
}

// ── Viewer ───────────────────────────────────────────────────────────────────────────────────

/// The signaling milestones of a viewer's join; the media ones are on its [`Peer`](crate::peer::Peer).
#[derive(Debug, Clone, Copy)]
pub struct JoinTimes {
    /// Before the subscriber was built and the WebSocket dialed.
    pub started: Instant,
    /// The WebSocket handshake completed (`join` is sent right after).
    pub ws_open: Instant,
    /// `joined` arrived.
    pub joined: Instant,
}

/// How a [`Viewer`] joins.
#[derive(Clone)]
pub struct ViewerOptions {
    pub name: String,
    /// Route media through this relay: every server offer's candidate is rewritten to it.
    pub relay: Option<Arc<ImpairedRelay>>,
    /// Route media through this address (a relay of the caller's): every server offer's
    /// candidates are rewritten to it.
    pub route_via: Option<SocketAddr>,
    pub subscriber: SubscriberOptions,
    /// Send an empty `candidate` (end of candidates) when gathering completes.
    pub end_of_candidates: bool,
    /// Access token (JWT) sent with `join`; `None` against a `--dev` server.
    pub token: Option<String>,
}

impl Default for ViewerOptions {
    fn default() -> Self {
        Self {
            token: None,
            name: "viewer".to_owned(),
            relay: None,
            route_via: None,
            subscriber: SubscriberOptions::default(),
            end_of_candidates: true,
        }
    }
}

/// A viewer over a Marquee server: joins a room, answers every server `offer` (the first and
/// any renegotiation) with a receive-only answer, trickles its candidates, and records what it
/// receives. Derefs to its [`Subscriber`]. Server messages other than offers (and offers too,
/// after they are answered) are readable with [`recv`](Viewer::recv) and friends; a failure to
/// answer an offer surfaces there as an error.
pub struct Viewer {
    subscriber: Arc<Subscriber>,
    sender: WsSender,
    messages: WsReceiver,
    joined: Joined,
    times: JoinTimes,
    _tasks: TaskGuard,
    _ws_tasks: TaskGuard,
}

impl Viewer {
    pub async fn join(server: SocketAddr, room: &str) -> Result<Self> {
        Self::join_with(server, room, ViewerOptions::default()).await
    }

    /// Joins with media routed through `relay` (for loss and retransmission tests).
    pub async fn join_via_relay(
        server: SocketAddr,
        room: &str,
        relay: Arc<ImpairedRelay>,
    ) -> Result<Self> {
        Self::join_with(
            server,
            room,
            ViewerOptions {
                relay: Some(relay),
                ..ViewerOptions::default()
            },
        )
        .await
    }

    /// Joins and returns at `joined`; media negotiation continues in the background (wait for
    /// it with `wait_connected` or `wait_for`).
    pub async fn join_with(server: SocketAddr, room: &str, options: ViewerOptions) -> Result<Self> {
        let started = now();
        let subscriber = Arc::new(Subscriber::with_options(options.subscriber.clone()).await?);
        let mut ws = WsClient::connect(server).await?;
        let ws_open = now();
        ws.send(&ClientMessage::Room(RoomMessage::Join {
            version: PROTOCOL_VERSION,
            room: Some(room.to_owned()),
            name: options.name.clone(),
            role: Role::Viewer,
            host_key: None,
            token: options.token.clone(),
        }))?;
        // Whatever arrives before `joined` (an early offer or roomState) is kept for the
        // negotiation loop rather than skipped.
        let mut early = Vec::new();
        let joined = loop {
            match ws.recv().await.context("viewer join")? {
                ServerMessage::Error(body) => {
                    return Err(anyhow::Error::new(ServerError(body))).context("viewer join");
                }
                message => match Joined::from_message(message.clone()) {
                    Some(joined) => break joined,
                    None => early.push(message),
                },
            }
        };
        let times = JoinTimes {
            started,
            ws_open,
            joined: now(),
        };
        let (sender, receiver, ws_tasks) = ws.into_parts();
        let (forward_tx, forward_rx) = mpsc::unbounded_channel();
        let negotiation = tokio::spawn(answer_offers(
            early,
            receiver,
            sender.clone(),
            Arc::clone(&subscriber),
            options,
            forward_tx,
        ));
        Ok(Self {
            subscriber,
            sender,
            messages: WsReceiver { rx: forward_rx },
            joined,
            times,
            _tasks: TaskGuard(vec![negotiation]),
            _ws_tasks: ws_tasks,
        })
    }

    pub fn joined(&self) -> &Joined {
        &self.joined
    }

    /// When `join` was sent: the start of join-to-first-frame measurements.
    pub fn join_sent_at(&self) -> Instant {
        self.times.ws_open
    }

    /// When the join started, the WebSocket opened and `joined` arrived.
    pub fn join_times(&self) -> JoinTimes {
        self.times
    }

    pub fn sender(&self) -> WsSender {
        self.sender.clone()
    }

    pub fn send(&self, message: &ClientMessage) -> Result<()> {
        self.sender.send(message)
    }

    /// Server messages other than those consumed by negotiation; see the type docs.
    pub fn messages(&mut self) -> &mut WsReceiver {
        &mut self.messages
    }

    pub async fn recv(&mut self) -> Result<ServerMessage> {
        self.messages.recv().await
    }

    pub async fn recv_until(
        &mut self,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.messages.recv_until(pred).await
    }

    pub async fn recv_until_within(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&ServerMessage) -> bool,
    ) -> Result<ServerMessage> {
        self.messages.recv_until_within(timeout, pred).await
    }

    pub fn leave(&self) -> Result<()> {
        self.sender
            .send(&ClientMessage::Room(RoomMessage::Leave {}))
    }

    /// Closes the peer connection and the WebSocket (a close frame). Dropping a `Viewer`
    /// instead is an abrupt disconnect.
    pub async fn close(self) -> Result<()> {
        let closed = self.subscriber.close().await;
        let _ = self.sender.send_frame(Message::Close(None));
        // The writer flushes the close frame on its own; give it a moment bounded by the
        // server's reply (the reader ending).
        let Self { mut messages, .. } = self;
        let _ = messages.wait_closed(Duration::from_secs(1)).await;
        closed
    }
}

impl Deref for Viewer {
    type Target = Subscriber;

    fn deref(&self) -> &Subscriber {
        &self.subscriber
    }
}

/// The viewer's negotiation loop: answers each server offer, starts trickling after the first
/// answer, and forwards every message to the test.
async fn answer_offers(
    early: Vec<ServerMessage>,
    mut incoming: WsReceiver,
    sender: WsSender,
    subscriber: Arc<Subscriber>,
    options: ViewerOptions,
    forward: mpsc::UnboundedSender<Result<ServerMessage>>,
) {
    let mut candidates = subscriber.peer.take_candidates();
    let mut trickle = TaskGuard(Vec::new());
    let mut early = early.into_iter();
    loop {
        let item = match early.next() {
            Some(message) => Ok(message),
            None => match incoming.rx.recv().await {
                Some(item) => item,
                None => break,
            },
        };
        if let Ok(ServerMessage::Offer { sdp }) = &item {
            let answered = async {
                let offer = match (&options.relay, options.route_via) {
                    (Some(relay), _) => relay.rewrite_offer(sdp)?,
                    (None, Some(via)) => rewrite_candidates(sdp, via).0,
                    (None, None) => sdp.clone(),
                };
                let answer = subscriber.answer(&offer).await?;
                sender.send(&ClientMessage::Room(RoomMessage::Answer {
                    sdp: answer.clone(),
                }))?;
                anyhow::Ok(answer)
            }
            .await;
            match answered {
                Ok(answer) => {
                    if let Some(candidates) = candidates.take() {
                        trickle.0.push(spawn_candidate_trickle(
                            candidates,
                            sender.clone(),
                            first_mid(&answer),
                            options.end_of_candidates,
                        ));
                    }
                }
                Err(err) => {
                    let _ = forward.send(Err(err.context("answering the server's offer")));
                    continue;
                }
            }
        }
        let _ = forward.send(item);
    }
}
