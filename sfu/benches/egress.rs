//! Egress with real sockets: frames of host packets → N viewer datagrams each, SRTP decrypt
//! and N encrypts included, sent with `sendmmsg` (the send threads' `udp::send_batch`, here
//! on the measuring thread itself) to UDP sockets on loopback, with and without UDP GSO
//! (a viewer's packets of one frame as one message). Reports the forwarding thread's CPU
//! time (user + sys, `getrusage`) per datagram sent and the datagrams per send syscall. Not a
//! criterion benchmark: CPU time, not wall time, is the figure, and it is read from the
//! kernel.
//!
//! On loopback the sending thread also pays the receiving side's IP/UDP processing (softirq
//! in the sender's context), so this over-states what a NIC would cost.
//!
//! `cargo bench -p sfu --bench egress`
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use harness::Harness;
use nix::sys::resource::{UsageWho, getrusage};
use sfu::SfuConfig;
use sfu::udp::{Batch, SEND_BATCH, SendCount, Sockets, send_batch};

/// Distinct destination sockets (viewers); datagrams go round-robin across them.
const SINKS: usize = 64;
/// Frames forwarded per measurement.
const FRAMES: usize = 400;

fn cpu_micros() -> f64 {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e6 + t.tv_usec() as f64;
    micros(usage.user_time()) + micros(usage.system_time())
}

/// Packets per video frame: 1.5 Mbit/s at 30 frames/s is about 6 KB, five packets, which
/// arrive together and go to each viewer back to back.
const FRAME_PACKETS: usize = 5;

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    for viewers in [100usize, 1000] {
        for gso in [false, true] {
            run(viewers, gso);
        }
    }
}

fn run(viewers: usize, gso: bool) {
    let mut h = Harness::new(SfuConfig {
        max_queued_datagrams: 4096,
        ..SfuConfig::default()
    });
    let (host, reached) = h.fanout_room(viewers);
    let sender = Arc::new(StdUdpSocket::bind("127.0.0.1:0").unwrap());
    let local = sender.local_addr().unwrap();
    let by_local = HashMap::from([(local, sender.clone())]);
    let sockets = if gso {
        Sockets::new(by_local)
    } else {
        Sockets::without_gso(by_local)
    };
    if gso && !sockets.gso() {
        println!("egress N = {viewers}: this kernel does not take UDP GSO; skipped");
        return;
    }
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
    let mut batch = Batch::default();
    let mut out = Egress {
        sockets: &sockets,
        local,
        addrs: &addrs,
        sinks_of: HashMap::new(),
    };
    forward(&mut h, host, &mut out, &mut batch, 10); // warm-up
    let cpu = cpu_micros();
    let count = forward(&mut h, host, &mut out, &mut batch, FRAMES);
    let cpu = cpu_micros() - cpu;
    // The same sends without the core: what the kernel alone costs per datagram (one
    // datagram per viewer and call, the cost GSO saves).
    let kernel = cpu_micros();
    let mut kernel_count = SendCount::default();
    let plain = Sockets::without_gso(HashMap::from([(local, sender)]));
    for round in 0..(count.datagrams as usize / SEND_BATCH) {
        batch.dests.clear();
        for slot in 0..SEND_BATCH {
            let buf = &mut batch.bufs[slot];
            buf.clear();
            buf.resize(1200, round as u8);
            batch.dests.push(sfu::Transmit {
                local,
                remote: addrs[(round + slot) % SINKS],
            });
        }
        add(&mut kernel_count, send_batch(&plain, &batch));
    }
    let kernel = (cpu_micros() - kernel) / kernel_count.datagrams as f64;
    stop.store(true, Ordering::Relaxed);
    drain.join().unwrap();
    println!(
        "egress N = {viewers} ({reached} forwarding), GSO {}: {} datagrams in frames of \
         {FRAME_PACKETS}, {:.3} µs CPU (user+sys) per datagram, {:.1} datagrams per send \
         syscall, {} lost; the kernel alone: {kernel:.3} µs per 1200-byte datagram sent one \
         by one in batches of {SEND_BATCH}; {} datagrams received by the sinks",
        if gso { "on" } else { "off" },
        count.datagrams,
        cpu / count.datagrams as f64,
        count.datagrams as f64 / count.syscalls as f64,
        count.lost,
        received.load(Ordering::Relaxed),
    );
}

fn add(total: &mut SendCount, more: SendCount) {
    total.syscalls += more.syscalls;
    total.datagrams += more.datagrams;
    total.lost += more.lost;
}

/// Where the benchmark's datagrams go: from `local` through `sockets` to the sinks at
/// `addrs`, each viewer to the sink it was given first (so its datagrams stay back to back).
struct Egress<'a> {
    sockets: &'a Sockets,
    local: SocketAddr,
    addrs: &'a [SocketAddr],
    sinks_of: HashMap<SocketAddr, SocketAddr>,
}

/// Forwards `frames` frames of [`FRAME_PACKETS`] inbound packets and sends every copy on
/// this thread.
fn forward(
    h: &mut Harness,
    host: usize,
    out: &mut Egress<'_>,
    batch: &mut Batch,
    frames: usize,
) -> SendCount {
    let mut count = SendCount::default();
    for _ in 0..frames {
        let now = h.now;
        for _ in 0..FRAME_PACKETS {
            for d in h.next_host_video(host) {
                h.sfu.handle_datagram(now, d);
            }
        }
        loop {
            batch.dests.clear();
            while batch.dests.len() < SEND_BATCH {
                let slot = batch.dests.len();
                match h.sfu.poll_transmit(&mut batch.bufs[slot]) {
                    Some(mut t) => {
                        let next = out.addrs[out.sinks_of.len() % out.addrs.len()];
                        t.remote = *out.sinks_of.entry(t.remote).or_insert(next);
                        t.local = out.local;
                        batch.dests.push(t);
                    }
                    None => break,
                }
            }
            if batch.dests.is_empty() {
                break;
            }
            add(&mut count, send_batch(out.sockets, batch));
        }
    }
    count
}
