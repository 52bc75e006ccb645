//! Broadcast channels in one process: every subscriber sees every frame, both overflow
//! policies, history for late joiners, zero-copy and batches, and what closing a subscriber
//! does to a blocked producer. Crashes are tested with processes in `tests/`.

#![cfg(not(loom))]

use shmring::{ChannelConfig, Error, Overflow, Segment, WaitStrategy};
use std::time::Duration;

mod common;
use common::watchdog;

/// Frame `i`: its index in the first 8 bytes, then a pattern of `i`, 8 to 100 bytes long.
fn frame(i: u64) -> Vec<u8> {
    let len = 8 + (i * 37 % 93) as usize;
    let mut f = i.to_le_bytes().to_vec();
    f.extend((8..len).map(|j| (i as usize * 7 + j * 13) as u8));
    f
}

/// The index of a frame, after checking that it is intact.
fn check(bytes: &[u8]) -> u64 {
    let i = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(bytes, &frame(i)[..], "frame {i} arrived damaged");
    i
}

fn config(slots: u64) -> ChannelConfig {
    ChannelConfig::broadcast()
        .capacity(slots * 128)
        .max_frame_size(128)
        .max_consumers(4)
}

#[test]
fn every_subscriber_gets_every_frame_in_order_under_block() {
    let _dog = watchdog("block fan-out", 120);
    const N: u64 = 200_000;
    let seg = Segment::anonymous(&config(64)).unwrap();
    let mut tx = seg.producer().unwrap();
    let subs: Vec<_> = (0..3).map(|_| seg.consumer().unwrap()).collect();
    let readers: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(k, mut rx)| {
            std::thread::spawn(move || {
                rx.set_wait_strategy(WaitStrategy::Yield);
                let mut buf = [0u8; 128];
                let mut next = 0;
                while next < N {
                    // Each subscriber receives its own way: copy, in place, in batches.
                    match k {
                        0 => {
                            let got = rx.recv(&mut buf).unwrap();
                            assert_eq!(check(&buf[..got.len]), next);
                            next += 1;
                        }
                        1 => {
                            let f = rx.read().unwrap();
                            assert_eq!(check(&f), next);
                            next += 1;
                        }
                        _ => {
                            rx.drain(17, |bytes, _| {
                                assert_eq!(check(bytes), next);
                                next += 1;
                            })
                            .unwrap();
                        }
                    }
                }
                assert_eq!(rx.missed(), 0);
            })
        })
        .collect();
    tx.set_wait_strategy(WaitStrategy::Yield);
    for i in 0..N {
        if i % 3 == 0 {
            let f = frame(i);
            let mut c = tx.claim(f.len()).unwrap();
            c.copy_from_slice(&f);
            c.commit();
        } else {
            tx.send(&frame(i)).unwrap();
        }
    }
    for r in readers {
        r.join().unwrap();
    }
    let stats = seg.stats();
    assert_eq!(stats.frames_in, N);
    // The totals add every entry that was ever held: three subscribers' worth.
    assert_eq!(stats.frames_out, 3 * N);
}

#[test]
fn a_full_block_ring_waits_for_the_slowest_subscriber_only() {
    let seg = Segment::anonymous(&config(8)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut fast = seg.consumer().unwrap();
    let mut slow = seg.consumer().unwrap();
    let mut buf = [0u8; 128];
    for i in 0..8 {
        tx.try_send(&frame(i)).unwrap();
        fast.try_recv(&mut buf).unwrap();
    }
    assert!(matches!(
        tx.try_send(&frame(8)),
        Err(Error::WouldBlock("full"))
    ));
    let e = tx
        .send_timeout(&frame(8), Duration::from_millis(5))
        .unwrap_err();
    assert!(matches!(e, Error::TimedOut(_)), "{e}");
    // The slow one catches up; its release is published when it finds the ring empty.
    for i in 0..8 {
        assert_eq!(
            check(
                &slow
                    .try_recv(&mut buf)
                    .map(|r| buf[..r.len].to_vec())
                    .unwrap()
            ),
            i
        );
    }
    assert!(matches!(slow.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    tx.try_send(&frame(8)).unwrap();
    // A subscriber that closes holds nobody back.
    drop(slow);
    for i in 9..16 {
        tx.try_send(&frame(i)).unwrap();
    }
    for i in 8..16 {
        let got = fast.try_recv(&mut buf).unwrap();
        assert_eq!(check(&buf[..got.len]), i);
    }
}

#[test]
fn a_producer_blocked_on_a_subscriber_wakes_when_it_closes() {
    let _dog = watchdog("wake on close", 60);
    let seg = Segment::anonymous(&config(4)).unwrap();
    let mut tx = seg.producer().unwrap();
    let rx = seg.consumer().unwrap();
    for i in 0..4 {
        tx.try_send(&frame(i)).unwrap();
    }
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
    });
    tx.set_wait_strategy(WaitStrategy::Park);
    tx.send_timeout(&frame(4), Duration::from_secs(30)).unwrap();
    closer.join().unwrap();
}

#[test]
fn drop_oldest_never_waits_and_counts_every_miss() {
    let seg = Segment::anonymous(&config(16).overflow(Overflow::DropOldest)).unwrap();
    let mut tx = seg.producer().unwrap();
    let mut rx = seg.consumer().unwrap();
    let mut buf = [0u8; 128];
    let mut received = Vec::new();
    let mut sent = 0u64;
    for round in 0..50u64 {
        // Bursts larger and smaller than the ring; the producer never waits.
        for _ in 0..(round * 7 % 40) {
            tx.try_send(&frame(sent)).unwrap();
            sent += 1;
        }
        for _ in 0..(round % 5) {
            match round % 3 {
                0 => match rx.try_recv(&mut buf) {
                    Ok(got) => received.push(check(&buf[..got.len])),
                    Err(Error::WouldBlock(_)) => break,
                    Err(e) => panic!("{e}"),
                },
                1 => match rx.try_read() {
                    Ok(f) => received.push(check(&f)),
                    Err(Error::WouldBlock(_)) => break,
                    Err(e) => panic!("{e}"),
                },
                _ => match rx.try_drain(3, |b, _| received.push(check(b))) {
                    Ok(_) => {}
                    Err(Error::WouldBlock(_)) => break,
                    Err(e) => panic!("{e}"),
                },
            }
        }
    }
    loop {
        match rx.try_recv(&mut buf) {
            Ok(got) => received.push(check(&buf[..got.len])),
            Err(Error::WouldBlock(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(received.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(rx.missed() > 0);
    assert_eq!(received.len() as u64 + rx.missed(), sent);
    assert_eq!(*received.last().unwrap(), sent - 1);
    let stats = seg.stats();
    assert_eq!(stats.consumers[0].missed, rx.missed());
}

#[test]
fn drop_oldest_under_a_concurrent_producer_delivers_nothing_torn() {
    let _dog = watchdog("drop-oldest race", 120);
    const N: u64 = 300_000;
    let seg = Segment::anonymous(&config(8).overflow(Overflow::DropOldest)).unwrap();
    let mut tx = seg.producer().unwrap();
    let readers: Vec<_> = (0..2)
        .map(|k| {
            let mut rx = seg.consumer().unwrap();
            std::thread::spawn(move || {
                rx.set_wait_strategy(WaitStrategy::Spin);
                let mut buf = [0u8; 128];
                let (mut got, mut last) = (0u64, None::<u64>);
                loop {
                    let i = if k == 0 {
                        match rx.recv_timeout(&mut buf, Duration::from_millis(200)) {
                            Ok(r) => check(&buf[..r.len]),
                            Err(Error::TimedOut(_)) => break,
                            Err(e) => panic!("{e}"),
                        }
                    } else {
                        match rx.read_timeout(Duration::from_millis(200)) {
                            Ok(f) => check(&f),
                            Err(Error::TimedOut(_)) => break,
                            Err(e) => panic!("{e}"),
                        }
                    };
                    assert!(last.is_none_or(|l| l < i), "{last:?} then {i}");
                    last = Some(i);
                    got += 1;
                }
                (got, rx.missed())
            })
        })
        .collect();
    for i in 0..N {
        tx.try_send(&frame(i)).unwrap();
    }
    for r in readers {
        let (got, missed) = r.join().unwrap();
        assert_eq!(got + missed, N, "received {got}, missed {missed}");
    }
}

#[test]
fn late_joiners_get_the_history_still_in_the_ring() {
    let seg = Segment::anonymous(&config(16).history(4)).unwrap();
    let mut tx = seg.producer().unwrap();
    for i in 0..10 {
        tx.try_send(&frame(i)).unwrap();
    }
    let mut rx = seg.consumer().unwrap();
    let mut buf = [0u8; 128];
    for i in 6..10 {
        let f = rx.try_read().unwrap();
        assert_eq!(check(&f), i);
    }
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    tx.try_send(&frame(10)).unwrap();
    let got = rx.try_recv(&mut buf).unwrap();
    assert_eq!(check(&buf[..got.len]), 10);
    assert_eq!(rx.missed(), 0);
    // Without history a joiner starts with the next frame.
    let seg = Segment::anonymous(&config(16)).unwrap();
    let mut tx = seg.producer().unwrap();
    tx.try_send(&frame(0)).unwrap();
    let mut rx = seg.consumer().unwrap();
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
    tx.try_send(&frame(1)).unwrap();
    let got = rx.try_recv(&mut buf).unwrap();
    assert_eq!(check(&buf[..got.len]), 1);
}

#[test]
fn history_overwritten_before_it_is_read_is_skipped_not_counted() {
    let seg = Segment::anonymous(&config(8).history(7)).unwrap();
    let mut tx = seg.producer().unwrap();
    for i in 0..20 {
        tx.try_send(&frame(i)).unwrap();
    }
    let mut rx = seg.consumer().unwrap();
    // Nobody held the producer back: it may overwrite the history at once.
    for i in 20..24 {
        tx.try_send(&frame(i)).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 128];
    while let Ok(r) = rx.try_recv(&mut buf) {
        got.push(check(&buf[..r.len]));
    }
    assert_eq!(got, (17..24).collect::<Vec<_>>());
    assert_eq!(rx.missed(), 0);
}

#[test]
fn a_successor_producer_continues_the_stream() {
    let seg = Segment::anonymous(&config(16)).unwrap();
    let mut rx = seg.consumer().unwrap();
    let mut tx = seg.producer().unwrap();
    tx.try_send(&frame(0)).unwrap();
    // A claim left open by a producer that goes away: the slot is never delivered.
    let c = tx.try_claim(50).unwrap();
    std::mem::forget(c);
    drop(tx);
    let mut tx = seg.producer().unwrap();
    tx.try_send(&frame(1)).unwrap();
    let mut buf = [0u8; 128];
    for i in 0..2 {
        let r = rx.try_recv(&mut buf).unwrap();
        assert_eq!(check(&buf[..r.len]), i);
    }
    assert!(matches!(rx.try_recv(&mut buf), Err(Error::WouldBlock(_))));
}

#[test]
fn configurations_that_make_no_sense_are_refused() {
    for (cfg, what) in [
        (ChannelConfig::broadcast().max_producers(2), "one producer"),
        (
            ChannelConfig::broadcast().capacity(8 << 10).history(8),
            "history",
        ),
        (
            ChannelConfig::spsc().overflow(Overflow::DropOldest),
            "broadcast channels only",
        ),
        (ChannelConfig::mpmc().history(3), "broadcast channels only"),
    ] {
        let e = Segment::anonymous(&cfg).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[test]
fn subscribers_beyond_max_consumers_are_busy() {
    let seg = Segment::anonymous(&config(8).max_consumers(2)).unwrap();
    let _a = seg.consumer().unwrap();
    let _b = seg.consumer().unwrap();
    assert!(matches!(seg.consumer(), Err(Error::Busy(_))));
    let _p = seg.producer().unwrap();
    assert!(matches!(seg.producer(), Err(Error::Busy(_))));
}
