//! Producers and consumers in separate processes (spawned helpers, never `fork` inside the
//! multi-threaded test harness), each test under a watchdog.

use shmring::{ChannelConfig, Segment};
use shmring_tests::{SegmentGuard, Watchdog, field, serial, unique_name};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

fn peer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmring-peer"))
}

fn spsc_pair(
    dog: &Watchdog,
    seg: &SegmentGuard,
    count: u64,
    seed: u64,
    wait: &str,
    env: &[(&str, &str)],
) -> (String, String) {
    let mut c = peer();
    c.args([
        "spsc-consume",
        &seg.name,
        &count.to_string(),
        &seed.to_string(),
        wait,
    ]);
    let mut p = peer();
    p.args([
        "spsc-produce",
        &seg.name,
        &count.to_string(),
        &seed.to_string(),
        wait,
    ]);
    for (k, v) in env {
        c.env(k, v);
        p.env(k, v);
    }
    let consumer = dog.spawn(&mut c);
    let producer = dog.spawn(&mut p);
    let sent = producer.success();
    let received = consumer.success();
    dog.check();
    (sent, received)
}

fn assert_same_stream(sent: &str, received: &str, count: u64) {
    assert_eq!(field(sent, "frames"), Some(count), "{sent}");
    assert_eq!(field(received, "frames"), Some(count), "{received}");
    assert_eq!(
        field(sent, "bytes"),
        field(received, "bytes"),
        "{sent} / {received}"
    );
    assert_eq!(
        field(sent, "checksum"),
        field(received, "checksum"),
        "{sent} / {received}"
    );
}

/// One million frames of random sizes (0 to 2 KiB) through a 64 KiB ring: both processes spin,
/// the ring wraps about 7000 times, every frame is checked byte for byte and checksummed.
#[test]
fn spsc_one_million_frames_across_processes() {
    let _serial = serial();
    let dog = Watchdog::new(
        "spsc_one_million_frames_across_processes",
        Duration::from_secs(300),
    );
    let name = unique_name("spsc-1m");
    let seg = dog.segment(
        &name,
        &ChannelConfig::spsc()
            .capacity(64 << 10)
            .max_frame_size(2048),
    );
    let (sent, received) = spsc_pair(&dog, &seg, 1_000_000, 7, "spin", &[]);
    assert_same_stream(&sent, &received, 1_000_000);
}

/// The same exchange with both sides parking on futexes, so consumer and producer sleep and
/// wake each other constantly; a lost wake-up would stall a side until its 60 s timeout.
/// Run with and without `membarrier` (the fallback fences and bounds every sleep).
#[test]
fn spsc_parking_sides_wake_each_other() {
    let _serial = serial();
    for env in [&[][..], &[("SHMRING_MEMBARRIER", "0")][..]] {
        let dog = Watchdog::new(
            "spsc_parking_sides_wake_each_other",
            Duration::from_secs(300),
        );
        let name = unique_name("spsc-park");
        let seg = dog.segment(
            &name,
            &ChannelConfig::spsc().capacity(4096).max_frame_size(512),
        );
        let (sent, received) = spsc_pair(&dog, &seg, 200_000, 11, "park", env);
        assert_same_stream(&sent, &received, 200_000);
    }
}

/// Ping-pong between two processes that both park while waiting. Each side sleeps 200 us
/// before answering, longer than the other's spin phase, so every round needs two futex
/// wake-ups to arrive; one lost wake-up and the round times out.
#[test]
fn park_ping_pong_never_loses_a_wake_up() {
    let _serial = serial();
    for env in [&[][..], &[("SHMRING_MEMBARRIER", "0")][..]] {
        let dog = Watchdog::new(
            "park_ping_pong_never_loses_a_wake_up",
            Duration::from_secs(300),
        );
        let cfg = ChannelConfig::spsc().capacity(4096).max_frame_size(64);
        let ping = dog.segment(&unique_name("ping"), &cfg);
        let pong = dog.segment(&unique_name("pong"), &cfg);
        const ROUNDS: u64 = 3_000;
        let mut cmd = peer();
        cmd.args([
            "pingpong",
            &ping.name,
            &pong.name,
            &ROUNDS.to_string(),
            "park",
            "200",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let echo = dog.spawn(&mut cmd);
        let mut tx = ping.seg.producer().unwrap();
        let mut rx = pong.seg.consumer().unwrap();
        let mut buf = [0u8; 64];
        for i in 0..ROUNDS {
            std::thread::sleep(Duration::from_micros(200));
            tx.send(&i.to_le_bytes()).unwrap();
            let r = rx
                .recv_timeout(&mut buf, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("round {i}: no pong: {e}"));
            assert_eq!(&buf[..r.len], &i.to_le_bytes());
        }
        echo.success();
        dog.check();
    }
}

/// MPMC: 4 producer and 4 consumer processes, one million frames in all. Every frame arrives
/// exactly once, intact, and each consumer sees each producer's frames in order.
#[test]
fn mpmc_four_by_four_exactly_once() {
    let _serial = serial();
    let dog = Watchdog::new("mpmc_four_by_four_exactly_once", Duration::from_secs(300));
    let name = unique_name("mpmc-4x4");
    let cfg = ChannelConfig::mpmc()
        .capacity(256 * 128)
        .max_frame_size(128)
        .max_producers(5)
        .max_consumers(4);
    let seg = dog.segment(&name, &cfg);
    const PER_PRODUCER: u64 = 250_000;
    let dir = std::env::temp_dir();
    let logs: Vec<_> = (0..4)
        .map(|i| dir.join(format!("{name}-c{i}.log")))
        .collect();
    // Attached throughout, so that the stream ends with its finish, after every producer's:
    // the stream of an MPMC channel ends with the finish of the last producer attached.
    let last = seg.seg.producer().unwrap();
    let consumers: Vec<_> = logs
        .iter()
        .map(|log| dog.spawn(peer().args(["mpmc-consume", &name, log.to_str().unwrap(), "yield"])))
        .collect();
    let producers: Vec<_> = (0..4u32)
        .map(|id| {
            dog.spawn(peer().args([
                "mpmc-produce",
                &name,
                &id.to_string(),
                &PER_PRODUCER.to_string(),
                "yield",
            ]))
        })
        .collect();
    for p in producers {
        p.success();
    }
    // Every producer finished; `last` is the one left attached, and its finish ends the
    // stream (a consumer that got `Closed` at an earlier finish would miss frames below).
    last.finish().unwrap();
    let mut seen: HashMap<u32, Vec<bool>> = (0..4)
        .map(|id| (id, vec![false; PER_PRODUCER as usize]))
        .collect();
    let mut total = 0u64;
    for (c, log) in consumers.into_iter().zip(&logs) {
        let out = c.success();
        let bytes = std::fs::read(log).unwrap();
        let _ = std::fs::remove_file(log);
        assert_eq!(field(&out, "frames"), Some(bytes.len() as u64 / 12));
        let mut last: HashMap<u32, u64> = HashMap::new();
        for rec in bytes.chunks_exact(12) {
            let id = u32::from_le_bytes(rec[..4].try_into().unwrap());
            let seq = u64::from_le_bytes(rec[4..].try_into().unwrap());
            let slot = &mut seen.get_mut(&id).expect("known producer")[seq as usize];
            assert!(!*slot, "frame {seq} of producer {id} delivered twice");
            *slot = true;
            if let Some(prev) = last.insert(id, seq) {
                assert!(
                    prev < seq,
                    "producer {id}: {seq} after {prev} at one consumer"
                );
            }
            total += 1;
        }
    }
    dog.check();
    assert_eq!(total, 4 * PER_PRODUCER);
    for (id, s) in &seen {
        assert!(
            s.iter().all(|&b| b),
            "producer {id}: a frame was never delivered"
        );
    }
    assert_eq!(seg.seg.stats().depth, 0);
}

/// A segment opened by name in another process has the creator's geometry, and the opener can
/// be refused: a second SPSC producer process gets `Busy`.
#[test]
fn spsc_admission_across_processes() {
    let _serial = serial();
    let dog = Watchdog::new("spsc_admission_across_processes", Duration::from_secs(60));
    let name = unique_name("admit");
    let seg = dog.segment(
        &name,
        &ChannelConfig::spsc().capacity(4096).max_frame_size(64),
    );
    let _tx = seg.seg.producer().unwrap();
    let out = dog
        .spawn(peer().args(["spsc-produce", &name, "1", "1", "spin"]))
        .wait();
    assert!(!out.status.success());
    assert!(out.stderr.contains("busy"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&std::process::id().to_string()),
        "{}",
        out.stderr
    );
    drop(seg);
    assert!(
        Segment::open(&name).is_err(),
        "the guard unlinked the segment"
    );
}
