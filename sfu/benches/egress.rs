//! Egress with real sockets: each inbound host packet → N viewer datagrams, SRTP decrypt and
//! N encrypts included, sent with `sendmmsg` (the driver's `udp::Egress`) to UDP sockets on
//! loopback. Reports the forwarding thread's CPU time (user + sys, `getrusage`) per datagram
//! sent and the send syscalls per datagram. Not a criterion benchmark: CPU time, not wall
//! time, is the figure, and it is read from the kernel.
//!
//! On loopback the sending thread also pays the receiving side's IP/UDP processing (softirq
//! in the sender's context), so this over-states what a NIC would cost.
//!
//! `cargo bench -p sfu --bench egress`
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use harness::Harness;
use nix::sys::resource::{UsageWho, getrusage};
use sfu::SfuConfig;
use sfu::udp::{Egress, SEND_BATCH};
use tokio::net::UdpSocket;

/// Distinct destination sockets (viewers); datagrams go round-robin across them.
const SINKS: usize = 64;
/// Inbound packets forwarded per measurement.
const PACKETS: usize = 2_000;

fn cpu_micros() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    micros(usage.user_time()) + micros(usage.system_time())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    for viewers in [100usize, 1000] {
        let mut h = Harness::new(SfuConfig {
            max_queued_datagrams: 4096,
            ..SfuConfig::default()
        });
        let (host, reached) = h.fanout_room(viewers);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        runtime.block_on(async {
            let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let sinks: Vec<StdUdpSocket> = (0..SINKS)
                .map(|_| {
                    let s = StdUdpSocket::bind("127.0.0.1:0").unwrap();
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            let addrs: Vec<SocketAddr> = sinks.iter().map(|s| s.local_addr().unwrap()).collect();
            let stop = Arc::new(AtomicBool::new(false));
            let received = Arc::new(AtomicU64::new(0));
            let drain = {
                let (stop, received) = (stop.clone(), received.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let mut any = false;
                        for s in &sinks {
                            while s.recv(&mut buf).is_ok() {
                                received.fetch_add(1, Ordering::Relaxed);
                                any = true;
                            }
                        }
                        if !any {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                    }
                })
            };
            let mut egress = Egress::default();
            forward(&mut h, host, &sender, &addrs, &mut egress, 50).await; // warm-up
            let (syscalls, datagrams) = (egress.syscalls, egress.datagrams);
            let cpu = cpu_micros();
            let sent = forward(&mut h, host, &sender, &addrs, &mut egress, PACKETS).await;
            let cpu = cpu_micros() - cpu;
            let syscalls = egress.syscalls - syscalls;
            let datagrams = egress.datagrams - datagrams;
            // The same sends without the core: what the kernel alone costs per datagram.
            let kernel = cpu_micros();
            let mut kernel_sent = 0;
            for round in 0..sent / SEND_BATCH {
                egress.dests.clear();
                for slot in 0..SEND_BATCH {
                    let buf = &mut egress.bufs[slot];
                    buf.clear();
                    buf.resize(1200, round as u8);
                    egress.dests.push(sfu::Transmit {
                        local: sender.local_addr().unwrap(),
                        remote: addrs[(round + slot) % SINKS],
                    });
                }
                egress.send_all(&sender, 0, SEND_BATCH).await;
                kernel_sent += SEND_BATCH;
            }
            let kernel = (cpu_micros() - kernel) / kernel_sent as f64;
            stop.store(true, Ordering::Relaxed);
            drain.join().unwrap();
            println!(
                "egress N = {viewers} ({reached} forwarding): {sent} datagrams, \
                 {:.3} µs CPU (user+sys) per datagram, {:.1} datagrams per send syscall, \
                 {} of {} received by the sinks; the kernel alone: {kernel:.3} µs per \
                 1200-byte datagram in batches of {SEND_BATCH}",
                cpu / sent as f64,
                datagrams as f64 / syscalls as f64,
                received.load(Ordering::Relaxed),
                datagrams + 50 * reached as u64 + kernel_sent as u64,
            );
        });
    }
}

/// Forwards `packets` inbound packets and sends every copy, destinations spread over `addrs`;
/// returns the datagrams sent.
async fn forward(
    h: &mut Harness,
    host: usize,
    sender: &UdpSocket,
    addrs: &[SocketAddr],
    egress: &mut Egress,
    packets: usize,
) -> usize {
    let mut sent = 0usize;
    for _ in 0..packets {
        let now = h.now;
        for d in h.next_host_video(host) {
            h.sfu.handle_datagram(now, d);
        }
        loop {
            egress.dests.clear();
            while egress.dests.len() < SEND_BATCH {
                let slot = egress.dests.len();
                match h.sfu.poll_transmit(&mut egress.bufs[slot]) {
                    Some(mut t) => {
                        t.remote = addrs[sent % addrs.len()];
                        sent += 1;
                        egress.dests.push(t);
                    }
                    None => break,
                }
            }
            let n = egress.dests.len();
            if n == 0 {
                break;
            }
            egress.send_all(sender, 0, n).await;
        }
    }
    sent
}
