//! In-process criterion benchmarks: streaming throughput between two threads, and the cost of
//! one operation without a second core involved. Cross-process round trips are measured by
//! `shmring bench` and the `ring-probe` binary.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shmring::{ChannelConfig, Segment, WaitStrategy};
use std::hint::black_box;
use std::time::{Duration, Instant};

const FRAMES: u64 = 200_000;

fn config(kind: &str, payload: usize) -> ChannelConfig {
    match kind {
        "spsc" => ChannelConfig::spsc().capacity(1 << 20).max_frame_size(4096),
        _ => ChannelConfig::mpmc()
            .capacity(1 << 20)
            .max_frame_size(payload.max(8) as u32),
    }
}

/// One producer thread and one consumer thread move `frames` frames of `payload` bytes;
/// returns the time until the consumer has them all.
fn stream(kind: &str, payload: usize, zero_copy: bool, frames: u64) -> Duration {
    let seg = Segment::anonymous(&config(kind, payload)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    tx.set_wait_strategy(WaitStrategy::Spin);
    rx.set_wait_strategy(WaitStrategy::Spin);
    let consumer = std::thread::spawn(move || {
        let mut left = frames;
        let mut buf = vec![0u8; payload];
        while left > 0 {
            if zero_copy {
                left -= rx
                    .drain(256, |f, _| {
                        black_box(f);
                    })
                    .unwrap() as u64;
            } else {
                black_box(rx.recv(&mut buf).unwrap());
                left -= 1;
            }
        }
    });
    let frame = vec![0x5au8; payload];
    let start = Instant::now();
    for _ in 0..frames {
        if zero_copy {
            let mut c = tx.claim(payload).unwrap();
            c.copy_from_slice(&frame);
            c.commit();
        } else {
            tx.send(&frame).unwrap();
        }
    }
    consumer.join().unwrap();
    start.elapsed()
}

fn throughput(c: &mut Criterion) {
    for kind in ["spsc", "mpmc"] {
        let mut g = c.benchmark_group(format!("{kind}_throughput"));
        g.throughput(Throughput::Elements(FRAMES));
        g.sample_size(10);
        for payload in [8usize, 64, 1024] {
            for (api, zero_copy) in [("copy", false), ("zero_copy", true)] {
                g.bench_with_input(BenchmarkId::new(api, payload), &payload, |b, &p| {
                    b.iter_custom(|iters| {
                        (0..iters).map(|_| stream(kind, p, zero_copy, FRAMES)).sum()
                    })
                });
            }
        }
        g.finish();
    }
}

/// A send and a receive on one thread: the instruction cost of the data path, no cache line
/// crossing cores.
fn op_cost(c: &mut Criterion) {
    for kind in ["spsc", "mpmc"] {
        let mut g = c.benchmark_group(format!("{kind}_send_recv_one_thread"));
        for payload in [8usize, 64] {
            let seg = Segment::anonymous(&config(kind, payload)).unwrap();
            let mut tx = seg.producer().unwrap();
            let mut rx = seg.consumer().unwrap();
            let frame = vec![1u8; payload];
            let mut buf = vec![0u8; payload];
            g.throughput(Throughput::Elements(1));
            g.bench_function(BenchmarkId::from_parameter(payload), |b| {
                b.iter(|| {
                    tx.try_send(black_box(&frame)).unwrap();
                    black_box(rx.try_recv(&mut buf).unwrap());
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, throughput, op_cost);
criterion_main!(benches);
