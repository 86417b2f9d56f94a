//! Batched UDP I/O for the media port.
//!
//! **Receive.** [`read_socket`] takes up to [`quinn_udp::BATCH_SIZE`] datagrams per
//! `recvmmsg(2)` (and GRO-coalesced runs where the kernel offers them) into one receive area
//! allocated and zeroed once, then copies each datagram out into a buffer of its exact size
//! for the core: no zeroing and one syscall per burst instead of per datagram.
//!
//! **Send.** One `sendmmsg(2)` per burst of datagrams leaving the same socket.
//!
//! A fan-out turns one inbound packet into N datagrams to N addresses; one `sendto` each was
//! a syscall per viewer, the largest single cost of an SFU after SRTP (pion#3503 measured
//! `sendto` at 21–25 % of CPU). The driver pulls up to [`SEND_BATCH`] datagrams from the core
//! into reused buffers and hands them here; consecutive datagrams for the same local socket go
//! out in one `sendmmsg`. A batch is sent as soon as the core has nothing more queued: the
//! driver never waits to fill one.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
use tokio::sync::mpsc;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::{Datagram, Transmit};

/// Reads datagrams from `socket` (bound at `local`) and hands them to the core's queue until
/// the driver stops. When the queue is full this waits, and the kernel's socket buffer absorbs
/// (or drops) the excess: the reader never grows memory.
pub async fn read_socket(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    out: mpsc::Sender<(Instant, Datagram)>,
) {
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
                let datagram = Datagram {
                    local,
                    remote: m.addr,
                    payload: BytesMut::from(datagram),
                };
                if out.send((at, datagram)).await.is_err() {
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

/// Reused buffers and headers for batched sends.
pub struct Egress {
    /// One buffer per batch slot, each with [`MAX_DATAGRAM`] capacity, never shrunk.
    pub bufs: Vec<Vec<u8>>,
    /// Where each filled slot goes.
    pub dests: Vec<Transmit>,
    addrs: Vec<Option<SockaddrStorage>>,
    /// Counters: `sendmmsg` calls made and datagrams they sent.
    pub syscalls: u64,
    pub datagrams: u64,
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            bufs: (0..SEND_BATCH)
                .map(|_| Vec::with_capacity(MAX_DATAGRAM))
                .collect(),
            dests: Vec::with_capacity(SEND_BATCH),
            addrs: Vec::with_capacity(SEND_BATCH),
            syscalls: 0,
            datagrams: 0,
        }
    }
}

impl Egress {
    /// Sends `bufs[..dests.len()]` from `socket`, all of whose `dests` leave from it. Waits
    /// while the socket buffer is full; a datagram the kernel refuses (unreachable peer) is
    /// lost, like on the network, and the rest of the batch still goes.
    pub async fn send_all(&mut self, socket: &UdpSocket, first: usize, end: usize) {
        let mut next = first;
        while next < end {
            self.addrs.clear();
            self.addrs.extend(
                self.dests[next..end]
                    .iter()
                    .map(|t| Some(SockaddrStorage::from(t.remote))),
            );
            let slices: Vec<[IoSlice<'_>; 1]> = self.bufs[next..end]
                .iter()
                .map(|b| [IoSlice::new(b)])
                .collect();
            let addrs = &self.addrs;
            let result = socket
                .async_io(Interest::WRITABLE, || {
                    // nix's headers hold raw pointers (not `Send`), so they live only inside
                    // this synchronous call: two small allocations per batch, not per packet.
                    let mut headers =
                        MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
                    sendmmsg(
                        socket.as_raw_fd(),
                        &mut headers,
                        &slices,
                        addrs,
                        [],
                        MsgFlags::empty(),
                    )
                    .map(|sent| sent.count())
                    .map_err(io::Error::from)
                })
                .await;
            self.syscalls += 1;
            match result {
                Ok(sent) => {
                    self.datagrams += sent as u64;
                    next += sent.max(1);
                }
                Err(err) => {
                    // The first datagram was refused: drop it, send the rest.
                    tracing::trace!(%err, remote = %self.dests[next].remote, "send failed");
                    next += 1;
                }
            }
        }
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
    use std::net::SocketAddr;

    #[tokio::test]
    async fn a_batch_reaches_every_destination_in_few_syscalls() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut viewers = Vec::new();
        for _ in 0..40 {
            viewers.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        }
        let local = server.local_addr().unwrap();
        let mut egress = Egress::default();
        let mut sent = 0;
        for chunk in viewers.chunks(SEND_BATCH) {
            egress.dests.clear();
            for (i, v) in chunk.iter().enumerate() {
                egress.bufs[i].clear();
                egress.bufs[i].extend_from_slice(&[sent as u8; 100]);
                egress.dests.push(Transmit {
                    local,
                    remote: v.local_addr().unwrap(),
                });
                sent += 1;
            }
            let n = egress.dests.len();
            egress.send_all(&server, 0, n).await;
        }
        assert_eq!(egress.datagrams, 40);
        assert_eq!(
            egress.syscalls, 2,
            "40 datagrams in batches of {SEND_BATCH}"
        );
        for (i, v) in viewers.iter().enumerate() {
            let mut buf = [0u8; 200];
            let (len, from) = v.recv_from(&mut buf).await.unwrap();
            assert_eq!((len, from, buf[0]), (100, local, i as u8));
        }
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
