//! The fan-out hot path: one inbound SRTP video packet from the host → N viewer datagrams,
//! SRTP decrypt and N encrypts included, socket send excluded. Reported per forwarded packet
//! (criterion "elements" = N).
//!
//! A counting global allocator also reports heap allocations per inbound packet: the
//! inbound side (`rtc`'s SRTP decrypt and interceptors) allocates per packet; forwarding to
//! each viewer must not, so allocations per *forwarded* packet are
//! `(allocations at N − allocations at 1) / (N − 1)`, printed for each N.
//!
//! The `fanout_two_shards` group splits the viewers over two shard cores (the home shard
//! decrypts and relays each packet to the other, which seals its viewers' copies), run one
//! after the other on one thread: its time per forwarded packet is the CPU both cores spend
//! together, so comparing it with `fanout` shows what relaying costs.
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
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use sfu::SfuConfig;
use sfu::srtp::SrtpProfile;
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

/// A harness of `shards` cores whose clients offer `profiles` (None: `rtc`'s default,
/// AES-128-GCM first).
fn harness(shards: usize, profiles: Option<Vec<SrtpProtectionProfile>>) -> Harness {
    let config = SfuConfig {
        // Room for one packet to every viewer, so nothing is dropped at N = 2000.
        max_queued_datagrams: 4096,
        // Viewers may land on any profile the clients offer (the default is GCM only).
        viewer_srtp_profiles: SrtpProfile::ALL.to_vec(),
        ..SfuConfig::default()
    };
    let mut h = match shards {
        1 => Harness::new(config),
        n => Harness::sharded(config, n),
    };
    h.client_srtp_profiles = profiles;
    h
}

/// Forwards one inbound packet and sends every copy into one reused buffer; returns the
/// allocations made.
fn forward_one(h: &mut Harness, host: usize, buf: &mut Vec<u8>) -> u64 {
    let datagrams = h.next_host_video(host);
    let before = allocations();
    black_box(h.forward(datagrams, buf));
    allocations() - before
}

fn bench(
    c: &mut Criterion,
    group: &str,
    shards: usize,
    viewers: &[usize],
    profiles: Option<Vec<SrtpProtectionProfile>>,
) {
    let mut group = c.benchmark_group(group);
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    let mut per_inbound_at_first = None;
    for &viewers in viewers {
        let mut h = harness(shards, profiles.clone());
        let (host, reached) = h.fanout_room(viewers);
        let mut stats = h.sfu.stats();
        for core in &h.others {
            stats.merge(&core.stats());
        }
        eprintln!(
            "{reached}/{viewers} viewers forwarding, {} on the fast path, {} on rtc's path",
            stats.fast_path_viewers, stats.rtc_path_viewers
        );
        let mut buf = Vec::with_capacity(1500);
        // Warm up the queues' capacity, then count allocations over 200 packets.
        for _ in 0..50 {
            forward_one(&mut h, host, &mut buf);
        }
        let mut allocations = 0;
        for _ in 0..200 {
            allocations += forward_one(&mut h, host, &mut buf);
        }
        let per_inbound = allocations as f64 / 200.0;
        // The group's first (smallest) N is the baseline: what an inbound packet costs
        // whatever the audience.
        let (baseline, first) = *per_inbound_at_first.get_or_insert((per_inbound, reached));
        let per_forwarded = if reached > first {
            (per_inbound - baseline) / (reached - first) as f64
        } else {
            0.0
        };
        eprintln!(
            "allocations at N = {viewers}: {per_inbound:.2} per inbound packet, \
             {per_forwarded:.4} per forwarded packet beyond the first {first}"
        );
        group.throughput(Throughput::Elements(reached as u64));
        group.bench_function(format!("{viewers}_viewers"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let datagrams = h.next_host_video(host);
                    let start = Instant::now();
                    black_box(h.forward(datagrams, &mut buf));
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn fanout(c: &mut Criterion) {
    // Viewers on AES-128-GCM (what `rtc` and Firefox prefer).
    bench(c, "fanout", 1, &VIEWERS, None);
    // One room over two shards: the relay's cost on top of the fan-out.
    bench(c, "fanout_two_shards", 2, &[2, 1000, 2000], None);
    // Viewers on AES-CM-HMAC-SHA1-80, which Chrome lists first (see docs/sfu.md).
    bench(
        c,
        "fanout_aes_cm_sha1_80",
        1,
        &[1000],
        Some(vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80]),
    );
}

criterion_group!(benches, fanout);
criterion_main!(benches);
