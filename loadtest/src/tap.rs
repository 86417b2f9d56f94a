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

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
            state: Mutex::default(),
            nacks: Notify::new(),
        })
    }

    /// From now on pass only a sample of RTP to the stack (called once the stack delivered a
    /// keyframe: until then the viewer needs every packet of it).
    pub fn start_sampling(&self) {
        self.sampling.store(true, Ordering::Relaxed);
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
            Arrival::InOrder | Arrival::Late { .. } => !sampling || count % self.sample_every == 0,
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

/// Tokio's `webrtc` runtime in every respect but its UDP sockets, which are [`TapSocket`]s
/// feeding one viewer's [`Tap`].
pub struct TapRuntime {
    inner: TokioRuntime,
    tap: Arc<Tap>,
}

impl TapRuntime {
    pub fn new(tap: Arc<Tap>) -> Arc<Self> {
        Arc::new(Self {
            inner: TokioRuntime,
            tap,
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

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
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
                    let now = tokio::time::Instant::now().into_std();
                    if tap.inspect(&buf[..len], now) {
                        let mut inbox = inbox.lock().unwrap_or_else(|e| e.into_inner());
                        if inbox.queue.len() < INBOX_LIMIT {
                            inbox.queue.push_back((buf[..len].to_vec(), addr));
                        }
                        if let Some(waker) = inbox.waker.take() {
                            waker.wake();
                        }
                    }
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
        let mut inbox = self.inbox();
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
}
