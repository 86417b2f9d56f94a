//! The fan-out hot path: one inbound SRTP video packet from the host → N viewer datagrams,
//! SRTP decrypt and N encrypts included, socket send excluded. Reported per forwarded packet
//! (criterion "elements" = N).
//!
//! `cargo bench -p sfu --bench fanout`
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use harness::Harness;
use sfu::SfuConfig;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for viewers in [1usize, 100, 1000] {
        let mut h = Harness::new(SfuConfig {
            // Room for one packet to every viewer, so nothing is dropped at N = 1000.
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
        for _ in 0..20 {
            h.run_for(Duration::from_millis(500));
            h.send_frame(host, seq, true, Duration::from_millis(100));
            seq += 1;
            let now = h.now;
            for d in h.host_video_datagrams(host, seq) {
                h.sfu.handle_datagram(now, d);
            }
            seq += 1;
            let mut buf = Vec::with_capacity(1500);
            reached = std::iter::from_fn(|| h.sfu.poll_transmit(&mut buf)).count();
            if reached >= viewers {
                break;
            }
        }
        // Throughput counts the copies really sent. At N = 1000 an in-memory viewer or two
        // may not have finished its handshake; the figure is per forwarded packet either way.
        assert!(
            reached * 100 >= viewers * 99,
            "only {reached}/{viewers} viewers forwarding"
        );
        eprintln!("{reached}/{viewers} viewers forwarding");
        group.throughput(Throughput::Elements(reached as u64));
        let mut buf = Vec::with_capacity(1500);
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
