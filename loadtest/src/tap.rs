//! Cheap viewers: a `webrtc` runtime whose UDP sockets look at every datagram before the
//! WebRTC stack does, and hand the stack only what it needs.
//!
//! A stock `webrtc` receiver spends about 12 µs of CPU per packet (SRTP authentication and
//! decryption, interceptors, the track channel), so a thousand viewers of a 1.5 Mbit/s stream
//! would need two cores just to listen. But SRTP leaves the RTP header in clear (RFC 3711
//! §3.1), and that is all a load test needs to count, order-check and time packets. So the
//! [`TapSocket`] parses each RTP header into the viewer's [`StreamStats`] and passes to the
//! stack: every non-RTP datagram (STUN, DTLS, RTCP), every RTP packet until the stack has
//! delivered the first keyframe, then one packet in `sample_every` per stream. The sampled
//! packets are fully authenticated and decrypted by the real SRTP stack: they prove the media
//! is genuine and carry the payload tags used for end-to-end latency.
//!
//! The stack runs without interceptors (its NACK generator would ask for every packet the tap
//! kept from it); the viewer sends its own NACKs from the tap's loss tracking.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use quinn_udp::{BATCH_SIZE, UdpSocketState};
use tokio::sync::Notify;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

use crate::stream::{Arrival, RtpHeader, StreamStats};

/// What the tap has seen, shared between the socket (writer) and the viewer (reader).
pub struct Tap {
    sample_every: u64,
    sampling: AtomicBool,
    /// Set when the viewer is about to leave: media is still counted but no longer handed to
    /// the stack, so what was handed over can be waited for and every sample accounted.
    closing: AtomicBool,
    state: Mutex<TapState>,
    nacks: Notify,
}

/// The per-viewer counters behind the [`Tap`]'s lock.
#[derive(Default)]
pub struct TapState {
    pub streams: Vec<StreamStats>,
    pub first_rtp: Option<Instant>,
    /// RTP packets handed to the WebRTC stack.
    pub passed: u64,
}

impl TapState {
    pub fn stream(&self, ssrc: u32) -> Option<&StreamStats> {
        self.streams.iter().find(|s| s.ssrc == ssrc)
    }

    pub fn stream_mut(&mut self, ssrc: u32) -> Option<&mut StreamStats> {
        self.streams.iter_mut().find(|s| s.ssrc == ssrc)
    }
}

impl Tap {
    /// `sample_every` = 1 passes everything (a full-cost viewer).
    pub fn new(sample_every: u32) -> Arc<Self> {
        Arc::new(Self {
            sample_every: u64::from(sample_every.max(1)),
            sampling: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            state: Mutex::default(),
            nacks: Notify::new(),
        })
    }

    /// From now on pass only a sample of RTP to the stack (called once the stack delivered a
    /// keyframe: until then the viewer needs every packet of it).
    pub fn start_sampling(&self) {
        self.sampling.store(true, Ordering::Relaxed);
    }

    /// Stops handing RTP to the stack (see `closing`).
    pub fn stop_passing(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    pub fn state(&self) -> MutexGuard<'_, TapState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes when a gap appeared in some stream (a NACK may be due).
    pub async fn gap_detected(&self) {
        self.nacks.notified().await;
    }

    /// Accounts one received datagram; true when the stack should see it.
    fn inspect(&self, datagram: &[u8], now: Instant) -> bool {
        let Some(header) = RtpHeader::parse(datagram) else {
            return true;
        };
        let sampling = self.sampling.load(Ordering::Relaxed);
        let mut state = self.state();
        state.first_rtp.get_or_insert(now);
        let (arrival, count, gap) = match state.stream_mut(header.ssrc) {
            Some(stream) => {
                let lost_before = stream.lost();
                let arrival = stream.handle_packet(now, &header, datagram.len());
                (arrival, stream.packets, stream.lost() > lost_before)
            }
            None => {
                let stream = StreamStats::new(now, &header, datagram.len());
                state.streams.push(stream);
                (Arrival::InOrder, 1, false)
            }
        };
        let pass = match arrival {
            Arrival::InOrder | Arrival::Late { .. } => {
                !self.closing.load(Ordering::Relaxed)
                    && (!sampling || count % self.sample_every == 0)
            }
            Arrival::Duplicate | Arrival::TooOld => false,
        };
        if pass {
            state.passed += 1;
        }
        drop(state);
        if gap {
            self.nacks.notify_one();
        }
        pass
    }
}

/// Tokio's `webrtc` runtime in every respect but its UDP sockets, which feed one viewer's
/// [`Tap`]: a viewer's address on a [`TapNetwork`] socket shared with other viewers, or
/// (without a network) a [`TapSocket`] of its own.
pub struct TapRuntime {
    inner: TokioRuntime,
    tap: Arc<Tap>,
    network: Option<Arc<TapNetwork>>,
}

impl TapRuntime {
    pub fn new(tap: Arc<Tap>, network: Option<Arc<TapNetwork>>) -> Arc<Self> {
        Arc::new(Self {
            inner: TokioRuntime,
            tap,
            network,
        })
    }
}

impl fmt::Debug for TapRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TapRuntime")
    }
}

impl Runtime for TapRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        if let Some(network) = &self.network {
            return Ok(Arc::new(network.attach(Arc::clone(&self.tap), socket)?));
        }
        socket.set_nonblocking(true)?;
        Ok(Arc::new(TapSocket::new(
            tokio::net::UdpSocket::from_std(socket)?,
            Arc::clone(&self.tap),
        )))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "loadtest-tap"
    }
}

/// A plain (no GSO/GRO) UDP socket with its own reader task: the reader shows each datagram
/// to the [`Tap`] and queues for the stack only those it should see. The stack's driver (a
/// far heavier task) is woken only for those, not for every media packet.
pub struct TapSocket {
    io: Arc<tokio::net::UdpSocket>,
    inbox: Arc<Mutex<Inbox>>,
    reader: tokio::task::JoinHandle<()>,
}

/// Datagrams for the stack, and the stack's waker while it waits for one.
#[derive(Default)]
struct Inbox {
    queue: std::collections::VecDeque<(Vec<u8>, SocketAddr)>,
    waker: Option<std::task::Waker>,
    error: Option<io::ErrorKind>,
}

/// Datagrams for the stack that may wait in the inbox; more means the stack stalled, and
/// dropping is what the network would do.
const INBOX_LIMIT: usize = 1024;

impl TapSocket {
    fn new(io: tokio::net::UdpSocket, tap: Arc<Tap>) -> Self {
        let io = Arc::new(io);
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let reader = tokio::spawn(read_datagrams(Arc::clone(&io), tap, Arc::clone(&inbox)));
        Self { io, inbox, reader }
    }
}

impl Drop for TapSocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The reader: drain the socket whenever it is readable, one tap lookup per datagram.
async fn read_datagrams(io: Arc<tokio::net::UdpSocket>, tap: Arc<Tap>, inbox: Arc<Mutex<Inbox>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        if let Err(e) = io.readable().await {
            let mut inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
            inbox.error = Some(e.kind());
            if let Some(waker) = inbox.waker.take() {
                waker.wake();
            }
            return;
        }
        loop {
            match io.try_recv_from(&mut buf) {
                Ok((len, addr)) => {
                    let now = tap_now();
                    receive(&tap, &inbox, &buf[..len], addr, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ICMP errors (a closed peer port) surface here; they are per-datagram.
                Err(_) => continue,
            }
        }
    }
}

impl fmt::Debug for TapSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapSocket").field("io", &self.io).finish()
    }
}

impl AsyncUdpSocket for TapSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        // `max_gso_segments` is 1, so every transmit is one datagram.
        self.io
            .poll_send_to(cx, transmit.contents, transmit.destination)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        poll_inbox(&self.inbox, cx, bufs, meta)
    }
}

/// One received datagram: shown to the viewer's tap, and queued for its stack (waking it) if
/// the stack should see it.
fn receive(tap: &Tap, inbox: &Mutex<Inbox>, datagram: &[u8], from: SocketAddr, now: Instant) {
    if tap.inspect(datagram, now) {
        let mut inbox = lock(inbox);
        if inbox.queue.len() < INBOX_LIMIT {
            inbox.queue.push_back((datagram.to_vec(), from));
        }
        if let Some(waker) = inbox.waker.take() {
            waker.wake();
        }
    }
}

/// Hands the stack what its inbox holds, or parks its waker there.
fn poll_inbox(
    inbox: &Mutex<Inbox>,
    cx: &mut Context<'_>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
) -> Poll<io::Result<usize>> {
    let mut inbox = lock(inbox);
    let mut n = 0;
    for (buf, out) in bufs.iter_mut().zip(meta.iter_mut()) {
        let Some((datagram, addr)) = inbox.queue.pop_front() else {
            break;
        };
        let len = datagram.len().min(buf.len());
        buf[..len].copy_from_slice(&datagram[..len]);
        out.addr = addr;
        out.len = len;
        out.stride = len.max(1);
        out.ecn = None;
        out.dst_ip = None;
        n += 1;
    }
    if n > 0 {
        return Poll::Ready(Ok(n));
    }
    if let Some(kind) = inbox.error.take() {
        return Poll::Ready(Err(kind.into()));
    }
    inbox.waker = Some(cx.waker().clone());
    Poll::Pending
}

/// Receive buffer of a shared socket: 32 MB holds ~25,000 datagrams, a burst to every viewer
/// of a large run, and is asked for with `SO_RCVBUFFORCE` (root) so `rmem_max` does not cap
/// it; without the privilege the kernel caps `SO_RCVBUF` at `net.core.rmem_max`.
const SHARED_RECEIVE_BUFFER: usize = 32 << 20;

/// Viewers' UDP, shared: one socket per core bound to the wildcard address, each serving many
/// viewers, every viewer at an address of its own in 127.1.0.0/16 on its socket's port.
///
/// A socket per viewer costs a readiness wake-up and a `recvfrom` per packet, since one
/// viewer's packets arrive one by one (~7 µs on this VM, so two cores could not absorb the
/// stream of a fast server). Sharing a socket lets one reader take up to 32 packets of many
/// viewers per `recvmmsg` and tell them apart by destination address (`IP_PKTINFO`); each
/// viewer sends from its own address through the same socket. The server still sees one
/// address per viewer, as with real viewers.
pub struct TapNetwork {
    sockets: Vec<Arc<SharedSocket>>,
    next_socket: AtomicUsize,
    next_ip: AtomicU32,
}

struct SharedSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    viewers: Mutex<HashMap<Ipv4Addr, Attached>>,
}

/// What the reader needs of one viewer.
struct Attached {
    tap: Arc<Tap>,
    inbox: Arc<Mutex<Inbox>>,
}

impl TapNetwork {
    /// Binds `readers` shared sockets (at least one) and starts their readers on the current
    /// runtime.
    pub fn new(readers: usize) -> io::Result<Arc<Self>> {
        let mut sockets = Vec::new();
        for _ in 0..readers.max(1) {
            let std = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            std.set_nonblocking(true)?;
            // One socket takes the fan-out bursts of hundreds of viewers at once (a host
            // packet becomes one datagram per viewer within microseconds): the default
            // ~200 KB buffer would drop most of a burst before the reader runs.
            let buffer = SHARED_RECEIVE_BUFFER;
            if setsockopt(&std, sockopt::RcvBufForce, &buffer).is_err() {
                let _ = setsockopt(&std, sockopt::RcvBuf, &buffer);
            }
            let state = UdpSocketState::new((&std).into())?;
            let shared = Arc::new(SharedSocket {
                io: tokio::net::UdpSocket::from_std(std)?,
                state,
                viewers: Mutex::default(),
            });
            tokio::spawn(read_shared(Arc::downgrade(&shared)));
            sockets.push(shared);
        }
        Ok(Arc::new(Self {
            sockets,
            next_socket: AtomicUsize::new(0),
            next_ip: AtomicU32::new(0),
        }))
    }

    /// Gives a viewer an address on one of the shared sockets. `stack_socket` is the socket
    /// the WebRTC stack bound; the stack keys its sockets by that address, so it stays the
    /// viewer's `local_addr` (the server learns the real one from the viewer's checks).
    fn attach(
        &self,
        tap: Arc<Tap>,
        stack_socket: std::net::UdpSocket,
    ) -> io::Result<SharedTapSocket> {
        let shared = Arc::clone(
            &self.sockets[self.next_socket.fetch_add(1, Ordering::Relaxed) % self.sockets.len()],
        );
        // 127.1.0.1, 127.1.0.2, …: 250 per /24, never .0 or .255.
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(
            127,
            1 + (n / 64_000) as u8,
            ((n / 250) % 256) as u8,
            (n % 250 + 1) as u8,
        );
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        lock(&shared.viewers).insert(
            ip,
            Attached {
                tap,
                inbox: Arc::clone(&inbox),
            },
        );
        Ok(SharedTapSocket {
            local: stack_socket.local_addr()?,
            shared,
            ip,
            inbox,
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reader of one shared socket: a batch of datagrams per `recvmmsg`, each shown to its
/// viewer's tap (by destination address) and queued for that viewer's stack if it should see
/// it. Ends when the network is dropped.
async fn read_shared(shared: std::sync::Weak<SharedSocket>) {
    const SLOT: usize = 2048;
    let Some(gro) = shared.upgrade().map(|s| s.state.gro_segments().max(1)) else {
        return;
    };
    let slot = SLOT * gro;
    let mut area = vec![0u8; slot * BATCH_SIZE];
    let mut meta = [quinn_udp::RecvMeta::default(); BATCH_SIZE];
    loop {
        let Some(socket) = shared.upgrade() else {
            return;
        };
        let received = {
            let mut chunks = area.chunks_mut(slot);
            let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("slots")));
            socket
                .io
                .async_io(tokio::io::Interest::READABLE, || {
                    socket.state.recv((&socket.io).into(), &mut bufs, &mut meta)
                })
                .await
        };
        let Ok(count) = received else {
            continue; // ICMP errors (a closed peer port) surface here, per datagram
        };
        let now = tap_now();
        let viewers = lock(&socket.viewers);
        for (m, start) in meta[..count].iter().zip((0..).step_by(slot)) {
            let Some(IpAddr::V4(dst)) = m.dst_ip else {
                continue;
            };
            let Some(viewer) = viewers.get(&dst) else {
                continue; // a viewer that left
            };
            for datagram in area[start..start + m.len].chunks(m.stride.max(1)) {
                receive(&viewer.tap, &viewer.inbox, datagram, m.addr, now);
            }
        }
    }
}

/// One viewer's socket on a [`TapNetwork`].
pub struct SharedTapSocket {
    local: SocketAddr,
    shared: Arc<SharedSocket>,
    ip: Ipv4Addr,
    inbox: Arc<Mutex<Inbox>>,
}

impl Drop for SharedTapSocket {
    fn drop(&mut self) {
        lock(&self.shared.viewers).remove(&self.ip);
    }
}

impl fmt::Debug for SharedTapSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTapSocket")
            .field("ip", &self.ip)
            .finish()
    }
}

impl AsyncUdpSocket for SharedTapSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let datagram = quinn_udp::Transmit {
            destination: transmit.destination,
            ecn: None,
            contents: transmit.contents,
            segment_size: None,
            src_ip: Some(IpAddr::V4(self.ip)),
        };
        let io = &self.shared.io;
        loop {
            if let Err(e) = std::task::ready!(io.poll_send_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            match io.try_io(tokio::io::Interest::WRITABLE, || {
                self.shared.state.try_send(io.into(), &datagram)
            }) {
                Ok(()) => return Poll::Ready(Ok(transmit.contents.len())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        poll_inbox(&self.inbox, cx, bufs, meta)
    }
}

/// The tap's clock, stamping each received datagram (tokio's, so a paused test clock would
/// apply; std instants for the stream model): its one marked read.
#[allow(clippy::disallowed_methods)]
fn tap_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn recv(socket: &SharedTapSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 64];
        let mut meta = [RecvMeta::default()];
        std::future::poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .unwrap();
        (buf[..meta[0].len].to_vec(), meta[0].addr)
    }

    /// Viewers on one shared socket each send from an address of their own, and get exactly
    /// the datagrams sent to that address.
    #[tokio::test]
    async fn shared_sockets_keep_viewers_apart_by_address() {
        let network = TapNetwork::new(1).unwrap();
        let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = server.local_addr().unwrap();
        let stack = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = network.attach(Tap::new(1), stack()).unwrap();
        let b = network.attach(Tap::new(1), stack()).unwrap();
        a.send_to(b"from a", to).await.unwrap();
        b.send_to(b"from b", to).await.unwrap();
        let mut buf = [0u8; 64];
        let mut addr = HashMap::new();
        for _ in 0..2 {
            let (len, from) = server.recv_from(&mut buf).await.unwrap();
            addr.insert(buf[..len].to_vec(), from);
        }
        let (addr_a, addr_b) = (addr[&b"from a"[..]], addr[&b"from b"[..]]);
        assert_ne!(addr_a.ip(), addr_b.ip(), "one address per viewer");
        assert!(addr_a.ip().is_loopback() && addr_b.ip().is_loopback());
        // Replies reach the right viewer, and only it.
        server.send_to(b"to b", addr_b).await.unwrap();
        server.send_to(b"to a", addr_a).await.unwrap();
        assert_eq!(recv(&a).await, (b"to a".to_vec(), to));
        assert_eq!(recv(&b).await, (b"to b".to_vec(), to));
        // A viewer that left gets nothing more; the others still do.
        drop(a);
        server.send_to(b"late", addr_a).await.unwrap();
        server.send_to(b"to b again", addr_b).await.unwrap();
        assert_eq!(recv(&b).await, (b"to b again".to_vec(), to));
    }
}
