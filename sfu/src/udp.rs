//! Batched UDP I/O for the media port.
//!
//! **Receive.** [`read_socket`] takes up to [`quinn_udp::BATCH_SIZE`] datagrams per
//! `recvmmsg(2)` (and GRO-coalesced runs where the kernel offers them) into one receive area
//! allocated and zeroed once, then copies each datagram out into a buffer of its exact size
//! for the core: no zeroing and one syscall per burst instead of per datagram.
//!
//! **Send.** One `sendmmsg(2)` per burst of datagrams leaving the same socket, on send
//! threads of their own ([`EgressPool`]).
//!
//! A fan-out turns one inbound packet into N datagrams to N addresses; one `sendto` each was
//! a syscall per viewer, the largest single cost of an SFU after SRTP (pion#3503 measured
//! `sendto` at 21–25 % of CPU). The driver pulls up to [`SEND_BATCH`] datagrams from the core
//! into a reused [`Batch`] and hands it to a send thread; consecutive datagrams for the same
//! local socket go out in one `sendmmsg`. A batch is handed over as soon as the core has
//! nothing more queued: the driver never waits to fill one.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
use tokio::sync::mpsc;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::shard::Router;
use crate::{Datagram, Transmit};

/// Reads datagrams from `socket` (bound at `local`) and hands each to its shard's queue
/// ([`Router`]) until the drivers stop. When a queue is full this waits, and the kernel's socket buffer absorbs
/// (or drops) the excess: the reader never grows memory.
pub async fn read_socket(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    shards: Vec<mpsc::Sender<(Instant, Datagram)>>,
) {
    let mut router = Router::new(shards.len());
    let state = match UdpSocketState::new((&*socket).into()) {
        Ok(state) => state,
        Err(err) => {
            tracing::error!(%err, %local, "cannot set up the media socket for batched reads");
            return;
        }
    };
    // One slot per datagram of a batch, each large enough for a GRO run.
    let slot = MAX_DATAGRAM * state.gro_segments().max(1);
    let mut area = vec![0u8; slot * BATCH_SIZE];
    let mut meta = [RecvMeta::default(); BATCH_SIZE];
    loop {
        let received = {
            let mut chunks = area.chunks_mut(slot);
            let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots")));
            socket
                .async_io(Interest::READABLE, || {
                    state.recv((&*socket).into(), &mut bufs, &mut meta)
                })
                .await
        };
        // When the burst was read: the driver drops what waited too long after it.
        let at = crate::driver::now();
        let count = match received {
            Ok(count) => count,
            // ICMP errors from a departed peer surface here; they concern one peer, never
            // the socket.
            Err(err) => {
                tracing::trace!(%err, "udp recv error");
                continue;
            }
        };
        for (m, start) in meta[..count].iter().zip((0..).step_by(slot)) {
            let stride = m.stride.max(1);
            for datagram in area[start..start + m.len].chunks(stride) {
                let shard = router.route(at, m.addr, datagram);
                let datagram = Datagram {
                    local,
                    remote: m.addr,
                    payload: BytesMut::from(datagram),
                };
                if shards[shard].send((at, datagram)).await.is_err() {
                    return; // driver stopped
                }
            }
        }
    }
}

/// Datagrams pulled from the core per batch. 32 covers a 1.2 KB packet fanned out to 32
/// viewers in one syscall; larger batches buy little once the syscall is amortized, and the
/// buffers stay in L1/L2 (32 × 1.5 KB).
pub const SEND_BATCH: usize = 32;

/// Largest datagram written (Ethernet MTU; WebRTC stacks keep packets under ~1200 bytes).
pub const MAX_DATAGRAM: usize = 1500;

/// Batches queued per send thread. 64 × 32 datagrams is about 10 ms of a 200,000 packets/s
/// fan-out; beyond it the driver holds batches back (see [`EgressPool::submit`]).
pub const EGRESS_QUEUE: usize = 64;

/// How long a send thread waits for a full socket buffer to drain before it drops the rest
/// of a batch: longer would only deliver stale media.
const SEND_WAIT: Duration = Duration::from_millis(20);

/// How long the driver holds a batch a full send queue refused before it drops it (see
/// [`EgressPool::submit`]); the same bound as a full socket buffer's.
pub const HOLD_LIMIT: Duration = SEND_WAIT;

/// One batch of outgoing datagrams: reused buffers and where each goes.
pub struct Batch {
    /// One buffer per slot, each with [`MAX_DATAGRAM`] capacity, never shrunk.
    pub bufs: Vec<Vec<u8>>,
    /// Where each filled slot goes; its length is the number of filled slots.
    pub dests: Vec<Transmit>,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            bufs: (0..SEND_BATCH)
                .map(|_| Vec::with_capacity(MAX_DATAGRAM))
                .collect(),
            dests: Vec::with_capacity(SEND_BATCH),
        }
    }
}

/// What sending cost and achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendCount {
    pub syscalls: u64,
    pub datagrams: u64,
    /// Datagrams the kernel refused or that found the socket buffer full for too long.
    pub lost: u64,
}

/// The media sockets the send threads write to, by local address, and whether the kernel
/// takes GSO sends on them.
pub struct Sockets {
    by_local: HashMap<SocketAddr, Arc<StdUdpSocket>>,
    /// UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18): consecutive datagrams to one destination leave
    /// as one message, which crosses the kernel's send path once and is cut into datagrams
    /// at the end (by the NIC, or the device layer). Turned off for good if the kernel
    /// refuses a GSO send (a route without checksum offload).
    gso: AtomicBool,
}

impl Sockets {
    /// `by_local`, with GSO where the kernel supports it (probed by `quinn-udp`).
    pub fn new(by_local: HashMap<SocketAddr, Arc<StdUdpSocket>>) -> Self {
        let gso = by_local.values().next().is_some_and(|socket| {
            UdpSocketState::new((&**socket).into()).is_ok_and(|s| s.max_gso_segments() > 1)
        });
        Self {
            by_local,
            gso: AtomicBool::new(gso),
        }
    }

    /// `by_local`, one datagram per message (for comparisons).
    pub fn without_gso(by_local: HashMap<SocketAddr, Arc<StdUdpSocket>>) -> Self {
        Self {
            by_local,
            gso: AtomicBool::new(false),
        }
    }

    /// Whether sends use GSO.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }
}

/// At most this many datagrams to one destination leave as one GSO message: a video frame
/// at a few Mbit/s, far below the kernel's limit (64 segments, 64 KB).
pub const MAX_SEGMENTS: usize = 16;

/// Sends a batch, one `sendmmsg` per run of datagrams leaving the same local socket (and
/// sharing one GSO segment size). A full socket buffer is waited for (at most
/// [`SEND_WAIT`]); a datagram the kernel refuses (unreachable peer) is lost, like on the
/// network, and the rest still goes.
pub fn send_batch(sockets: &Sockets, batch: &Batch) -> SendCount {
    let mut count = SendCount::default();
    let n = batch.dests.len();
    let mut start = 0;
    while start < n {
        let end = run_end(&batch.dests, start);
        match sockets.by_local.get(&batch.dests[start].local) {
            Some(socket) => send_run(socket, sockets, batch, start, end, &mut count),
            None => count.lost += (end - start) as u64,
        }
        start = end;
    }
    count
}

fn send_run(
    socket: &StdUdpSocket,
    sockets: &Sockets,
    batch: &Batch,
    first: usize,
    end: usize,
    count: &mut SendCount,
) {
    let msgs = messages(batch, first, end, sockets.gso());
    let datagrams = |msgs: &[Range<usize>]| msgs.iter().map(|m| m.len() as u64).sum::<u64>();
    let mut next = 0;
    while next < msgs.len() {
        let (last, segment) = call_end(batch, &msgs, next);
        let call = &msgs[next..last];
        let addrs: Vec<Option<SockaddrStorage>> = call
            .iter()
            .map(|m| Some(SockaddrStorage::from(batch.dests[m.start].remote)))
            .collect();
        let slices: Vec<Vec<IoSlice<'_>>> = call
            .iter()
            .map(|m| {
                batch.bufs[m.clone()]
                    .iter()
                    .map(|b| IoSlice::new(b))
                    .collect()
            })
            .collect();
        // Small allocations per syscall (headers, slices, addresses), never per packet.
        let result = match segment {
            Some(size) => {
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(
                    slices.len(),
                    Some(nix::cmsg_space!(u16)),
                );
                sendmmsg(
                    socket.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs,
                    [ControlMessage::UdpGsoSegments(&size)],
                    MsgFlags::empty(),
                )
                .map(|sent| sent.count())
            }
            None => {
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
                sendmmsg(
                    socket.as_raw_fd(),
                    &mut headers,
                    &slices,
                    &addrs,
                    [],
                    MsgFlags::empty(),
                )
                .map(|sent| sent.count())
            }
        };
        count.syscalls += 1;
        match result {
            Ok(0) => {
                count.lost += datagrams(&msgs[next..next + 1]);
                next += 1;
            }
            Ok(sent) => {
                count.datagrams += datagrams(&call[..sent]);
                next += sent;
            }
            Err(Errno::EAGAIN) => {
                // The socket buffer is full: wait for room, or give the run up.
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
                let ready = poll(&mut fds, PollTimeout::from(SEND_WAIT.as_millis() as u16));
                if !matches!(ready, Ok(n) if n > 0) {
                    count.lost += datagrams(&msgs[next..]);
                    return;
                }
            }
            Err(err @ (Errno::EIO | Errno::EINVAL)) if segment.is_some() => {
                // The kernel cannot segment on this route: one datagram per message from now
                // on, starting with the rest of this run.
                if sockets.gso.swap(false, Ordering::Relaxed) {
                    tracing::warn!(%err, "UDP GSO refused by the kernel; sending datagrams one by one");
                }
                send_run(socket, sockets, batch, msgs[next].start, end, count);
                return;
            }
            Err(err) => {
                // The first message was refused: drop it, send the rest.
                tracing::trace!(%err, remote = %batch.dests[msgs[next].start].remote, "send failed");
                count.lost += datagrams(&msgs[next..next + 1]);
                next += 1;
            }
        }
    }
}

/// Splits datagrams `first..end` of a batch (one local socket) into messages. With GSO, a
/// message is a run of up to [`MAX_SEGMENTS`] datagrams to one destination in which every
/// datagram but the last has the first one's length (the kernel cuts at that length);
/// without, one datagram each.
fn messages(batch: &Batch, first: usize, end: usize, gso: bool) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = first;
    while i < end {
        let remote = batch.dests[i].remote;
        let segment = batch.bufs[i].len();
        let mut j = i + 1;
        while gso
            && j < end
            && j - i < MAX_SEGMENTS
            && batch.dests[j].remote == remote
            && batch.bufs[j - 1].len() == segment
            && batch.bufs[j].len() <= segment
        {
            j += 1;
        }
        out.push(i..j);
        i = j;
    }
    out
}

/// The end of the messages from `start` one `sendmmsg` can carry, and their GSO segment
/// size: a `UDP_SEGMENT` control message applies to every message of the call, so the
/// multi-datagram messages must share a segment size, and no single datagram may be longer
/// than it (the kernel would cut it).
fn call_end(batch: &Batch, msgs: &[Range<usize>], start: usize) -> (usize, Option<u16>) {
    let mut segment: Option<usize> = None;
    let mut longest_single = 0;
    for (m, k) in msgs[start..].iter().zip(start..) {
        let len = batch.bufs[m.start].len();
        if m.len() > 1 {
            match segment {
                Some(size) if size != len => return (k, segment.map(|s| s as u16)),
                None if longest_single > len => return (k, None),
                _ => segment = Some(len),
            }
        } else if segment.is_some_and(|size| len > size) {
            return (k, segment.map(|s| s as u16));
        } else {
            longest_single = longest_single.max(len);
        }
    }
    (msgs.len(), segment.map(|s| s as u16))
}

/// Counters of the send threads, read for the SFU's stats.
#[derive(Debug, Default)]
pub struct EgressCounters {
    pub syscalls: AtomicU64,
    pub datagrams: AtomicU64,
    /// Datagrams lost in sending, or in batches dropped because a queue stayed full.
    pub dropped: AtomicU64,
}

impl EgressCounters {
    fn add(&self, sent: &SendCount) {
        self.syscalls.fetch_add(sent.syscalls, Ordering::Relaxed);
        self.datagrams.fetch_add(sent.datagrams, Ordering::Relaxed);
        self.dropped.fetch_add(sent.lost, Ordering::Relaxed);
    }
}

/// Where a shard's datagrams are sent from: its own driver thread, or send threads.
///
/// The kernel's per-datagram send path is most of an SFU's CPU (measured with `perf`: two
/// thirds of the driver's time was `sendmmsg` on loopback). A core that runs no shard is
/// best used sending for the shards: batches go to send threads by destination (one viewer,
/// one thread: order kept) over bounded queues and come back empty for reuse, so the steady
/// state allocates nothing. When every core runs a shard, a send thread only shares a core
/// with a driver, and every batch handed over costs a wake-up and two context switches:
/// with two shards on two cores, sending on the driver thread itself took the server from
/// 3.1–3.4 to 2.7–2.8 µs of CPU per forwarded packet and host→viewer p99 from 21–24 to
/// 16–18 ms (`loadtest`, 500 viewers of 1.5 Mbit/s, three interleaved runs each), and fewer
/// batches in flight cost 14 KB less memory per viewer. Such a pool has no threads and
/// sends each batch as it is submitted ([`EgressPool::inline`]).
pub struct EgressPool {
    /// Send threads' queues; none for a pool that sends on the caller's thread.
    queues: Vec<SyncSender<Batch>>,
    /// The sockets, kept by a pool without send threads to send from.
    inline: Option<Arc<Sockets>>,
    returned: Receiver<Batch>,
    free: Vec<Batch>,
    counters: Arc<EgressCounters>,
}

impl EgressPool {
    /// Starts `threads` send threads over `sockets` (shared by every shard's pool, so a kernel
    /// that refuses GSO turns it off for all); with 0, [`EgressPool::submit`] sends on the
    /// caller's thread.
    pub fn start(sockets: Arc<Sockets>, threads: usize) -> Self {
        let counters = Arc::new(EgressCounters::default());
        let (give_back, returned) = std::sync::mpsc::channel();
        let queues = (0..threads)
            .map(|i| {
                let (queue, batches) = sync_channel::<Batch>(EGRESS_QUEUE);
                let (sockets, counters, give_back) =
                    (sockets.clone(), counters.clone(), give_back.clone());
                std::thread::Builder::new()
                    .name(format!("sfu-send-{i}"))
                    .spawn(move || {
                        // Ends when the pool (every queue's sender) is dropped.
                        for mut batch in batches {
                            counters.add(&send_batch(&sockets, &batch));
                            batch.dests.clear();
                            if give_back.send(batch).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawning a send thread");
                queue
            })
            .collect();
        Self {
            inline: (threads == 0).then_some(sockets),
            queues,
            returned,
            free: Vec::new(),
            counters,
        }
    }

    /// An empty batch: a returned one, or a new one while the pool warms up.
    pub fn batch(&mut self) -> Batch {
        self.free.extend(self.returned.try_iter());
        self.free.pop().unwrap_or_default()
    }

    /// Keeps an unused batch for later.
    pub fn recycle(&mut self, mut batch: Batch) {
        batch.dests.clear();
        self.free.push(batch);
    }

    /// The number of lanes a driver fills batches for: one per send thread, or the one of
    /// a pool that sends on the caller's thread.
    pub fn lanes(&self) -> usize {
        self.queues.len().max(1)
    }

    /// Whether [`EgressPool::submit`] sends on the caller's thread (no send threads).
    pub fn inline(&self) -> bool {
        self.inline.is_some()
    }

    /// The send thread for datagrams to `remote`: always the same one, so one viewer's
    /// datagrams leave in the order the core wrote them (threads racing each other would
    /// reorder a viewer's packets, and a reordered keyframe costs a viewer its first picture).
    pub fn thread_for(&self, remote: SocketAddr) -> usize {
        let ip = match remote.ip() {
            std::net::IpAddr::V4(ip) => u64::from(ip.to_bits()),
            std::net::IpAddr::V6(ip) => ip.to_bits() as u64,
        };
        let mixed = (ip << 16 | u64::from(remote.port())).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) as usize % self.lanes()
    }

    /// Hands a batch to send thread `thread`, or gives it back if the thread's queue is full:
    /// a keyframe fanned out to a thousand viewers is hundreds of batches made faster than the
    /// kernel sends them, and the driver holds such a batch (and leaves the rest of the media
    /// in the core's per-viewer queues) until there is room, see [`crate::driver`].
    /// A pool without send threads sends the batch at once, on the caller's thread.
    pub fn submit(&mut self, thread: usize, batch: Batch) -> Result<(), Batch> {
        if let Some(sockets) = &self.inline {
            let sent = send_batch(sockets, &batch);
            self.counters.add(&sent);
            self.recycle(batch);
            return Ok(());
        }
        match self.queues[thread].try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(batch)) => Err(batch),
            Err(TrySendError::Disconnected(batch)) => {
                self.drop_batch(batch);
                Ok(())
            }
        }
    }

    /// Drops a batch the send threads could not take in time (counted): the node is not
    /// keeping up, and holding it longer would only deliver stale media.
    pub fn drop_batch(&mut self, batch: Batch) {
        self.counters
            .dropped
            .fetch_add(batch.dests.len() as u64, Ordering::Relaxed);
        self.recycle(batch);
    }

    pub fn counters(&self) -> &EgressCounters {
        &self.counters
    }
}

/// The end of the run of datagrams from `start` that leave from the same local address.
pub fn run_end(dests: &[Transmit], start: usize) -> usize {
    let local = dests[start].local;
    dests[start..]
        .iter()
        .position(|t| t.local != local)
        .map_or(dests.len(), |n| start + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches handed to the send threads reach every destination, one `sendmmsg` per
    /// batch, and come back for reuse.
    #[test]
    fn batches_reach_every_destination_in_one_syscall_each() {
        let server = Arc::new(StdUdpSocket::bind("127.0.0.1:0").unwrap());
        let local = server.local_addr().unwrap();
        let viewers: Vec<StdUdpSocket> = (0..40)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut pool =
            EgressPool::start(Arc::new(Sockets::new(HashMap::from([(local, server)]))), 2);
        let mut sent = 0;
        // Both batches exist before either is sent: taking the second from the pool could
        // otherwise reuse the first, already back.
        let batches: Vec<Batch> = (0..2).map(|_| pool.batch()).collect();
        for (chunk, mut batch) in viewers.chunks(SEND_BATCH).zip(batches) {
            for (i, v) in chunk.iter().enumerate() {
                batch.bufs[i].clear();
                batch.bufs[i].extend_from_slice(&[sent as u8; 100]);
                batch.dests.push(Transmit {
                    local,
                    remote: v.local_addr().unwrap(),
                });
                sent += 1;
            }
            assert!(pool.submit(0, batch).is_ok());
        }
        for (i, v) in viewers.iter().enumerate() {
            v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 200];
            let (len, from) = v.recv_from(&mut buf).unwrap();
            assert_eq!((len, from, buf[0]), (100, local, i as u8));
        }
        // Both batches come back empty, to be reused (after their counts were added).
        let mut back = 0;
        for _ in 0..10_000 {
            pool.free.extend(pool.returned.try_iter());
            back = pool.free.len();
            if back == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(back, 2);
        let counters = pool.counters();
        assert_eq!(counters.datagrams.load(Ordering::Relaxed), 40);
        assert_eq!(
            counters.syscalls.load(Ordering::Relaxed),
            2,
            "40 datagrams in batches of {SEND_BATCH}"
        );
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert!(pool.free.iter().all(|b| b.dests.is_empty()));
    }

    /// A pool without send threads sends each batch on the caller's thread as it is
    /// submitted: the datagrams are out when `submit` returns, and the batch is free again.
    #[test]
    fn a_pool_without_threads_sends_on_submit() {
        let server = Arc::new(StdUdpSocket::bind("127.0.0.1:0").unwrap());
        let local = server.local_addr().unwrap();
        let viewers: Vec<StdUdpSocket> = (0..3)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut pool =
            EgressPool::start(Arc::new(Sockets::new(HashMap::from([(local, server)]))), 0);
        assert!(pool.inline());
        assert_eq!(pool.lanes(), 1);
        let mut batch = pool.batch();
        for (i, v) in viewers.iter().enumerate() {
            batch.bufs[i].clear();
            batch.bufs[i].extend_from_slice(&[i as u8; 50]);
            batch.dests.push(Transmit {
                local,
                remote: v.local_addr().unwrap(),
            });
        }
        let lane = pool.thread_for(viewers[0].local_addr().unwrap());
        assert!(pool.submit(lane, batch).is_ok());
        assert_eq!(
            pool.free.len(),
            1,
            "the batch is back as soon as it was sent"
        );
        assert!(pool.free[0].dests.is_empty());
        assert_eq!(pool.counters().datagrams.load(Ordering::Relaxed), 3);
        for (i, v) in viewers.iter().enumerate() {
            // Already in the socket's queue: a non-blocking read finds it.
            v.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 100];
            let (len, from) = v.recv_from(&mut buf).unwrap();
            assert_eq!((len, from, buf[0]), (50, local, i as u8));
        }
    }

    fn batch_of(datagrams: &[(SocketAddr, usize, u8)], local: SocketAddr) -> Batch {
        let mut batch = Batch::default();
        for (slot, &(remote, len, fill)) in datagrams.iter().enumerate() {
            batch.bufs[slot].clear();
            batch.bufs[slot].resize(len, fill);
            batch.dests.push(Transmit { local, remote });
        }
        batch
    }

    /// A viewer's run of datagrams becomes one GSO message when only its last datagram is
    /// shorter; a call shares one segment size, and a single datagram longer than it starts
    /// the next call (the kernel would cut it).
    #[test]
    fn runs_to_one_destination_become_gso_messages() {
        let local: SocketAddr = "127.0.0.1:7882".parse().unwrap();
        let v = |n: u8| -> SocketAddr { format!("127.0.0.{n}:5000").parse().unwrap() };
        let batch = batch_of(
            &[
                (v(1), 1000, 0),
                (v(1), 1000, 0),
                (v(1), 300, 0),  // last of v1's frame: shorter is fine
                (v(1), 1000, 0), // after a short one: a new message
                (v(2), 1000, 0),
                (v(2), 1000, 0),
                (v(3), 200, 0),
                (v(4), 900, 0),
                (v(4), 900, 0), // another segment size: another call
                (v(5), 1200, 0),
            ],
            local,
        );
        let msgs = messages(&batch, 0, 10, true);
        assert_eq!(msgs, vec![0..3, 3..4, 4..6, 6..7, 7..9, 9..10]);
        assert_eq!(call_end(&batch, &msgs, 0), (4, Some(1000)));
        assert_eq!(
            call_end(&batch, &msgs, 4),
            (5, Some(900)),
            "1200 bytes would be cut at 900"
        );
        assert_eq!(
            call_end(&batch, &msgs, 5),
            (6, None),
            "1200 alone needs no GSO"
        );
        assert_eq!(
            messages(&batch, 0, 10, false).len(),
            10,
            "without GSO, one datagram per message"
        );
    }

    /// Through the kernel: each viewer receives its datagrams one by one, whole and in
    /// order, whether or not they left as GSO messages; with GSO the batch is one syscall.
    #[test]
    fn gso_messages_arrive_as_separate_datagrams_in_order() {
        let server = Arc::new(StdUdpSocket::bind("127.0.0.1:0").unwrap());
        let local = server.local_addr().unwrap();
        let viewers: Vec<StdUdpSocket> = (0..3)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let addr = |i: usize| viewers[i].local_addr().unwrap();
        // A frame of four packets to viewer 0, two to viewer 1, one short one to viewer 2.
        let plan = [
            (addr(0), 1100, 1),
            (addr(0), 1100, 2),
            (addr(0), 1100, 3),
            (addr(0), 400, 4),
            (addr(1), 1100, 5),
            (addr(1), 1100, 6),
            (addr(2), 90, 7),
        ];
        let batch = batch_of(&plan, local);
        for gso in [true, false] {
            let by_local = HashMap::from([(local, server.clone())]);
            let sockets = if gso {
                Sockets::new(by_local)
            } else {
                Sockets::without_gso(by_local)
            };
            let count = send_batch(&sockets, &batch);
            assert_eq!((count.datagrams, count.lost), (7, 0), "gso {gso}");
            if sockets.gso() {
                assert_eq!(count.syscalls, 1, "one call: segment size 1100 for all");
            }
            for (remote, len, fill) in plan {
                let v = viewers
                    .iter()
                    .find(|v| v.local_addr().unwrap() == remote)
                    .unwrap();
                v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 2048];
                let (got, from) = v.recv_from(&mut buf).unwrap();
                assert_eq!(
                    (got, from, buf[0], buf[got - 1]),
                    (len, local, fill, fill),
                    "gso {gso}"
                );
            }
        }
    }

    /// A burst faster than the kernel sends (a keyframe to many viewers): a full queue gives
    /// the batch back whole, to be handed over again; nothing is dropped or lost.
    #[test]
    fn a_full_send_queue_gives_the_batch_back() {
        let server = Arc::new(StdUdpSocket::bind("127.0.0.1:0").unwrap());
        let local = server.local_addr().unwrap();
        let sink = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let remote = sink.local_addr().unwrap();
        let mut pool = EgressPool::start(
            Arc::new(Sockets::without_gso(HashMap::from([(local, server)]))),
            1,
        );
        let batches = EGRESS_QUEUE * 4;
        // Made first, then handed over as fast as a fan-out makes them.
        let made: Vec<Batch> = (0..batches)
            .map(|_| {
                let mut batch = Batch::default();
                for slot in 0..SEND_BATCH {
                    batch.bufs[slot].resize(1000, 7);
                    batch.dests.push(Transmit { local, remote });
                }
                batch
            })
            .collect();
        let mut given_back = 0;
        for mut batch in made {
            loop {
                match pool.submit(0, batch) {
                    Ok(()) => break,
                    Err(back) => {
                        assert_eq!(back.dests.len(), SEND_BATCH, "given back whole");
                        given_back += 1;
                        batch = back;
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
            }
        }
        assert!(given_back > 0, "the queue filled up");
        drop(pool.queues.drain(..)); // the thread ends once its queue is drained
        let counters = Arc::clone(&pool.counters);
        for _ in 0..10_000 {
            if counters.datagrams.load(Ordering::Relaxed) == (batches * SEND_BATCH) as u64 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        assert_eq!(
            counters.datagrams.load(Ordering::Relaxed),
            (batches * SEND_BATCH) as u64
        );
    }

    /// One destination always goes to one send thread (its datagrams keep their order), and
    /// many destinations spread over all threads.
    #[test]
    fn a_destination_keeps_its_send_thread() {
        let pool = EgressPool::start(Arc::new(Sockets::new(HashMap::new())), 4);
        let mut used = [0usize; 4];
        for port in 5000..5400u16 {
            let remote: SocketAddr = format!("127.1.0.{}:{port}", port % 250 + 1)
                .parse()
                .unwrap();
            let thread = pool.thread_for(remote);
            assert_eq!(thread, pool.thread_for(remote));
            used[thread] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "{used:?}");
    }

    #[test]
    fn runs_group_consecutive_local_addresses() {
        let a: SocketAddr = "127.0.0.1:7882".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:7882".parse().unwrap();
        let r: SocketAddr = "127.0.0.3:5000".parse().unwrap();
        let t = |local| Transmit { local, remote: r };
        let dests = [t(a), t(a), t(b), t(a)];
        assert_eq!(
            [run_end(&dests, 0), run_end(&dests, 2), run_end(&dests, 3)],
            [2, 3, 4]
        );
    }
}
