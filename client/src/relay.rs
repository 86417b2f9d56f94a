//! A userspace UDP relay that loses chosen media packets, for retransmission tests.
//!
//! Kernel `netem` is not available here (GUIDE §3), so loss comes from this relay. It sits
//! between one WebRTC client and the SFU on a single loopback socket: a datagram from the
//! server's address goes to the client, anything else comes from the client (whose address is
//! learned from its latest datagram) and goes to the server. A client is routed through it by
//! rewriting the server's candidate in the SDP offer it receives ([`LossyRelay::rewrite_offer`]).
//!
//! Only server→client SRTP media may be dropped. SRTP leaves the RTP header in clear
//! (RFC 3711 §3.1), so the relay sees SSRC, sequence number and payload type without keys, and
//! it tells media from STUN, DTLS and RTCP by the first bytes (RFC 7983 §7; RFC 5761 §4).
//! Each (SSRC, sequence number) is dropped at most once, on its first transmission, so the
//! retransmission the client's NACK asks for passes.

use marquee_protocol::demux::{DatagramKind, classify};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Which first transmissions of server→client RTP packets the relay drops.
pub enum DropRule {
    /// Forward everything.
    Nothing,
    /// Drop every `n`th video packet (the `n`th, `2n`th, … first transmissions of packets whose
    /// payload type is a video codec of the rewritten offer; see [`LossyRelay::rewrite_offer`]).
    EveryNthVideo(u32),
    /// Drop the first transmissions for which the closure returns true.
    Custom(Box<dyn FnMut(&RtpView) -> bool + Send>),
}

/// The clear-text RTP header fields of a relayed SRTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView {
    pub ssrc: u32,
    pub seq: u16,
    pub payload_type: u8,
    pub marker: bool,
    /// Datagram length in bytes.
    pub len: usize,
    /// Whether `payload_type` is one of the video payload types the relay knows.
    pub is_video: bool,
}

/// What a UDP datagram of a WebRTC 5-tuple carries, by its first bytes (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    Stun,
    Dtls,
    /// RTP (SRTP); the payload-type byte is outside the RTCP range (RFC 5761 §4).
    Rtp(RtpHeader),
    Rtcp,
    Other,
}

/// The fields of an RTP header, which SRTP leaves in clear (RFC 3711 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// The header of an RTP datagram; `None` for STUN, DTLS, RTCP or anything else.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        match classify_datagram(buf) {
            Datagram::Rtp(header) => Some(header),
            _ => None,
        }
    }
}

/// Classifies one datagram without any keys: RFC 7983's first-byte ranges (shared with the
/// SFU), then RTCP told from RTP by its packet type.
pub fn classify_datagram(buf: &[u8]) -> Datagram {
    match classify(buf) {
        DatagramKind::Stun => Datagram::Stun,
        DatagramKind::Dtls => Datagram::Dtls,
        DatagramKind::Rtp if buf.len() >= 12 => {
            let payload_type = buf[1] & 0x7f;
            if (64..=95).contains(&payload_type) {
                // Packet types 192..=223 with the marker bit folded in: RTCP.
                Datagram::Rtcp
            } else {
                Datagram::Rtp(RtpHeader {
                    payload_type,
                    marker: buf[1] & 0x80 != 0,
                    seq: u16::from_be_bytes([buf[2], buf[3]]),
                    timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                    ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                })
            }
        }
        DatagramKind::Rtp | DatagramKind::Unknown => Datagram::Other,
    }
}

/// The relay's drop decisions, apart from its socket so they can be tested directly.
pub struct DropPolicy {
    rule: DropRule,
    video_payload_types: HashSet<u8>,
    /// Every (SSRC, seq) already seen once: later copies are retransmissions and always pass.
    seen: HashSet<(u32, u16)>,
    /// Video first transmissions since the last `EveryNthVideo` drop.
    video_since_drop: u32,
    dropped: Vec<(u32, u16)>,
}

impl DropPolicy {
    pub fn new(rule: DropRule) -> Self {
        Self {
            rule,
            video_payload_types: HashSet::new(),
            seen: HashSet::new(),
            video_since_drop: 0,
            dropped: Vec::new(),
        }
    }

    pub fn set_rule(&mut self, rule: DropRule) {
        self.rule = rule;
    }

    pub fn set_video_payload_types(&mut self, payload_types: impl IntoIterator<Item = u8>) {
        self.video_payload_types = payload_types.into_iter().collect();
    }

    /// Whether to drop this server→client datagram. Only the first transmission of an RTP
    /// packet can be dropped; STUN, DTLS and RTCP always pass.
    pub fn should_drop(&mut self, datagram: &[u8]) -> bool {
        let Datagram::Rtp(RtpHeader {
            ssrc,
            seq,
            payload_type,
            marker,
            ..
        }) = classify_datagram(datagram)
        else {
            return false;
        };
        if !self.seen.insert((ssrc, seq)) {
            return false;
        }
        let view = RtpView {
            ssrc,
            seq,
            payload_type,
            marker,
            len: datagram.len(),
            is_video: self.video_payload_types.contains(&payload_type),
        };
        if view.is_video {
            self.video_since_drop = self.video_since_drop.saturating_add(1);
        }
        let drop = match &mut self.rule {
            DropRule::Nothing => false,
            DropRule::EveryNthVideo(n) => {
                let due = view.is_video && *n > 0 && self.video_since_drop >= *n;
                if due {
                    self.video_since_drop = 0;
                }
                due
            }
            DropRule::Custom(decide) => decide(&view),
        };
        if drop {
            self.dropped.push((ssrc, seq));
        }
        drop
    }

    /// The (SSRC, seq) of every dropped packet, in drop order.
    pub fn dropped(&self) -> &[(u32, u16)] {
        &self.dropped
    }
}

/// Datagram counts of a [`LossyRelay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub to_server: u64,
    pub to_client: u64,
    pub dropped: u64,
    /// Datagrams that arrived before the address to forward them to was known.
    pub unroutable: u64,
}

/// A UDP relay on `127.0.0.1:0` between one client and one server; see the module docs.
/// The relay task stops when this value is dropped.
pub struct LossyRelay {
    addr: SocketAddr,
    state: Arc<Mutex<RelayState>>,
    task: JoinHandle<()>,
}

struct RelayState {
    server: Option<SocketAddr>,
    client: Option<SocketAddr>,
    policy: DropPolicy,
    stats: RelayStats,
}

impl LossyRelay {
    /// Binds the relay socket and starts forwarding. The server address comes later, from
    /// [`rewrite_offer`](Self::rewrite_offer) or [`set_server`](Self::set_server).
    pub async fn start(rule: DropRule) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .context("binding relay socket")?;
        let addr = socket.local_addr()?;
        let state = Arc::new(Mutex::new(RelayState {
            server: None,
            client: None,
            policy: DropPolicy::new(rule),
            stats: RelayStats::default(),
        }));
        let task = tokio::spawn(relay_loop(socket, Arc::clone(&state)));
        Ok(Self { addr, state, task })
    }

    /// The address clients and servers send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_server(&self, server: SocketAddr) {
        self.lock().server = Some(server);
    }

    pub fn server(&self) -> Option<SocketAddr> {
        self.lock().server
    }

    /// Normally learned from the client's first datagram; set it when the server may speak
    /// first (a full-ICE peer in place of the ICE-lite SFU).
    pub fn set_client(&self, client: SocketAddr) {
        self.lock().client = Some(client);
    }

    pub fn client(&self) -> Option<SocketAddr> {
        self.lock().client
    }

    pub fn set_rule(&self, rule: DropRule) {
        self.lock().policy.set_rule(rule);
    }

    pub fn set_video_payload_types(&self, payload_types: impl IntoIterator<Item = u8>) {
        self.lock().policy.set_video_payload_types(payload_types);
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
        let mut state = self.lock();
        state.server = Some(server);
        state.policy.set_video_payload_types(video);
        Ok(rewritten)
    }

    /// The (SSRC, seq) of every dropped packet, in drop order.
    pub fn dropped(&self) -> Vec<(u32, u16)> {
        self.lock().policy.dropped().to_vec()
    }

    pub fn stats(&self) -> RelayStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RelayState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_loop(socket: UdpSocket, state: Arc<Mutex<RelayState>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            // ICMP port unreachable surfaces as an error on some platforms; keep relaying.
            continue;
        };
        let datagram = &buf[..len];
        let target = {
            let mut state = state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if Some(from) == state.server {
                if state.policy.should_drop(datagram) {
                    state.stats.dropped += 1;
                    None
                } else if state.client.is_some() {
                    state.stats.to_client += 1;
                    state.client
                } else {
                    state.stats.unroutable += 1;
                    None
                }
            } else {
                state.client = Some(from);
                if state.server.is_some() {
                    state.stats.to_server += 1;
                } else {
                    state.stats.unroutable += 1;
                }
                state.server
            }
        };
        if let Some(target) = target {
            // Loss on a send is what UDP does anyway; the test sees it as loss.
            let _ = socket.send_to(datagram, target).await;
        }
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
