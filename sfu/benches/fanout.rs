//! The fan-out hot path: one inbound SRTP video packet from the host → N viewer datagrams,
//! SRTP decrypt and N encrypts included, socket send excluded. Reported per forwarded packet
//! (criterion "elements" = N).
//!
//! A counting global allocator also reports heap allocations per inbound packet: the
//! inbound side (`rtc`'s SRTP decrypt and interceptors) allocates per packet; forwarding to
//! each viewer must not, so allocations per *forwarded* packet are
//! `(allocations at N − allocations at 1) / (N − 1)`, printed for each N.
//!
//! `cargo bench -p sfu --bench fanout`
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harness::Harness;
use sfu::SfuConfig;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// Counts every allocation (and reallocation) made by the process.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations so far.
fn allocations() -> u64 {
    let stats = GLOBAL.stats();
    (stats.allocations + stats.reallocations) as u64
}

const VIEWERS: [usize; 4] = [1, 100, 1000, 2000];

/// A room with `viewers` connected viewers that all receive video, and the next sequence
/// number the host sends.
fn room(viewers: usize) -> (Harness, usize, u16, usize) {
    let mut h = Harness::new(SfuConfig {
        // Room for one packet to every viewer, so nothing is dropped at N = 2000.
        max_queued_datagrams: 4096,
        ..SfuConfig::default()
    });
    let host = h.add_host("room");
    h.run_for(Duration::from_millis(500));
    h.send_frame(host, 1, true, Duration::from_millis(100));
    for _ in 0..viewers {
        h.add_viewer("room");
    }
    // Keyframes until every viewer is connected and forwarding (a viewer starts at a
    // keyframe), checked by counting one probe packet's copies.
    let mut seq = 2u16;
    let mut reached = 0;
    let mut buf = Vec::with_capacity(1500);
    for _ in 0..20 {
        h.run_for(Duration::from_millis(500));
        h.send_frame(host, seq, true, Duration::from_millis(100));
        seq += 1;
        let now = h.now;
        for d in h.host_video_datagrams(host, seq) {
            h.sfu.handle_datagram(now, d);
        }
        seq += 1;
        reached = std::iter::from_fn(|| h.sfu.poll_transmit(&mut buf)).count();
        if reached >= viewers && h.sfu.stats().fast_path_viewers as usize >= viewers {
            break;
        }
    }
    // At N ≥ 1000 an in-memory viewer or two may not have finished its handshake; the
    // figure is per forwarded packet either way.
    assert!(
        reached * 100 >= viewers * 99,
        "only {reached}/{viewers} viewers forwarding"
    );
    let stats = h.sfu.stats();
    eprintln!(
        "{reached}/{viewers} viewers forwarding, {} on the fast path, {} on rtc's path",
        stats.fast_path_viewers, stats.rtc_path_viewers
    );
    (h, host, seq, reached)
}

/// Forwards one inbound packet and sends every copy into one reused buffer; returns the
/// allocations made.
fn forward_one(h: &mut Harness, host: usize, seq: u16, buf: &mut Vec<u8>) -> u64 {
    let datagrams = h.host_video_datagrams(host, seq);
    let now = h.now;
    let before = allocations();
    for d in datagrams {
        h.sfu.handle_datagram(now, d);
    }
    while let Some(t) = h.sfu.poll_transmit(buf) {
        black_box((&t, &*buf));
    }
    allocations() - before
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    let mut per_inbound_at_one = None;
    for viewers in VIEWERS {
        let (mut h, host, mut seq, reached) = room(viewers);
        let mut buf = Vec::with_capacity(1500);
        // Warm up the queues' capacity, then count allocations over 200 packets.
        for _ in 0..50 {
            forward_one(&mut h, host, seq, &mut buf);
            seq = seq.wrapping_add(1);
        }
        let mut allocations = 0;
        for _ in 0..200 {
            allocations += forward_one(&mut h, host, seq, &mut buf);
            seq = seq.wrapping_add(1);
        }
        let per_inbound = allocations as f64 / 200.0;
        let baseline = *per_inbound_at_one.get_or_insert(per_inbound);
        let per_forwarded = if reached > 1 {
            (per_inbound - baseline) / (reached - 1) as f64
        } else {
            0.0
        };
        eprintln!(
            "allocations at N = {viewers}: {per_inbound:.2} per inbound packet, \
             {per_forwarded:.4} per forwarded packet beyond the first"
        );
        group.throughput(Throughput::Elements(reached as u64));
        group.bench_function(format!("{viewers}_viewers"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let datagrams = h.host_video_datagrams(host, seq);
                    seq = seq.wrapping_add(1);
                    let now = h.now;
                    let start = Instant::now();
                    for d in datagrams {
                        h.sfu.handle_datagram(now, d);
                    }
                    while let Some(t) = h.sfu.poll_transmit(&mut buf) {
                        black_box((&t, &buf));
                    }
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
